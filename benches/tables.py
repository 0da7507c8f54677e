#!/usr/bin/env python3
"""Print the Markdown tables of docs/benchmarks.md from load-generator results.

Usage:
    python3 benches/tables.py docs/benchmarks/results/*.json

Reads the JSON files `tidings-loadgen --json` writes and prints one table per group:
connections (memory per connection, tidings next to Centrifugo), topic fan-out (time until
every subscriber had the message), unicast latency against load, and the other patterns
(mixed priorities, bursts, broadcast, urgent under a low backlog).
"""

import json
import sys


def load(paths):
    out = []
    for p in paths:
        try:
            with open(p) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            print(f"skipping {p}: {e}", file=sys.stderr)
            continue
        d["_file"] = p.rsplit("/", 1)[-1]
        out.append(d)
    return out


def num(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def lat(d, key="latency_ms"):
    l = d.get(key) or {}
    return " | ".join(num(l.get(k), 1) for k in ("p50", "p90", "p99", "p999", "max"))


def by(results, scenario, target=None, labelled=False):
    return sorted(
        (d for d in results
         if d.get("scenario") == scenario
         and (target is None or d.get("target") == target)
         and bool(d.get("label")) == labelled),
        key=lambda d: (d.get("clients", 0), d.get("target_rate", 0)),
    )


def connections(results):
    t = {d["clients"]: d for d in by(results, "connections", "tidings")}
    c = {d["clients"]: d for d in by(results, "connections", "centrifugo")}
    print("| connections | tidings RSS | tidings per connection | Centrifugo RSS | Centrifugo per connection | Centrifugo / tidings |")
    print("|---|---|---|---|---|---|")
    for n in sorted(set(t) | set(c)):
        ts, cs = (t.get(n) or {}).get("server", {}), (c.get(n) or {}).get("server", {})
        tk, ck = ts.get("rss_kib_per_connection"), cs.get("rss_kib_per_connection")
        ratio = f"{ck / tk:.1f}x" if tk and ck else "-"
        print(f"| {n:,} | {num(ts.get('rss_mib_connected'), 1)} MiB | {num(tk, 1)} KiB "
              f"| {num(cs.get('rss_mib_connected'), 1)} MiB | {num(ck, 1)} KiB | {ratio} |")


def fanout(results):
    t = {d["clients"]: d for d in by(results, "topic", "tidings")}
    c = {d["clients"]: d for d in by(results, "topic", "centrifugo")}
    print("| subscribers | tidings: all have it, p50 / max of 5 | tidings CPU | Centrifugo: p50 / max | Centrifugo CPU | tidings / Centrifugo (p50) | lost, dup (both) |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted(set(t) | set(c)):
        td, cd = t.get(n) or {}, c.get(n) or {}
        ta = (td.get("fanout") or {}).get("all_delivered_ms", {})
        ca = (cd.get("fanout") or {}).get("all_delivered_ms", {})
        ratio = f"{ta['p50'] / ca['p50']:.1f}x" if ta.get("p50") and ca.get("p50") else "-"
        lost = f"{td.get('lost', '-')}, {td.get('duplicates', '-')} / {cd.get('lost', '-')}, {cd.get('duplicates', '-')}"
        print(f"| {n:,} | {num(ta.get('p50'))} / {num(ta.get('max'))} ms "
              f"| {num((td.get('server') or {}).get('cpu_percent_avg'))}% "
              f"| {num(ca.get('p50'))} / {num(ca.get('max'))} ms "
              f"| {num((cd.get('server') or {}).get('cpu_percent_avg'))}% | {ratio} | {lost} |")


def unicast(results):
    print("| offered | sent | delivered | p50 | p90 | p99 | p99.9 | max (ms) | lost | dup | server CPU | load generator CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = by(results, "unicast", "tidings")
    rows.sort(key=lambda d: d.get("target_rate") or 10**9)
    for d in rows:
        rate = d.get("target_rate")
        offered = f"{rate:,}/s" if rate else "max (64 senders)"
        print(f"| {offered} | {num(d.get('throughput_per_s'))}/s | {num(d.get('deliveries_per_s'))}/s "
              f"| {lat(d)} | {d.get('lost')} | {d.get('duplicates')} "
              f"| {num((d.get('server') or {}).get('cpu_percent_avg'))}% "
              f"| {num(d.get('loadgen_cpu_percent'))}% |")


def others(results):
    print("| run | clients | sent | deliveries | delivered/s | lost | dup | priority | p50 | p90 | p99 | p99.9 | max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in results:
        if d.get("scenario") in ("connections",) or (
                d.get("scenario") in ("unicast", "topic") and not d.get("label")):
            continue
        name = d["_file"].removesuffix(".json")
        head = (f"| {name} | {num(d.get('clients'))} | {num(d.get('sent'))} | {num(d.get('received'))} "
                f"| {num(d.get('deliveries_per_s'))} | {d.get('lost')} | {d.get('duplicates')}")
        prios = d.get("by_priority") or {}
        if len(prios) > 1:
            for p in ("urgent", "high", "normal", "low"):
                if p in prios:
                    print(f"{head} | {p} | {lat(d | {'x': prios[p]}, 'x')} |")
        else:
            print(f"{head} | all | {lat(d)} |")


def main(paths):
    results = load(paths)
    for title, f in (("Connections", connections), ("Topic fan-out", fanout),
                     ("Unicast", unicast), ("Other patterns", others)):
        print(f"\n### {title}\n")
        f(results)


if __name__ == "__main__":
    main(sys.argv[1:])
