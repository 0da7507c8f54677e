#!/usr/bin/env python3
"""Turn load-generator result JSON files into SVG plots (standard library only).

Usage:
    python3 benches/plot.py OUTDIR result1.json result2.json ...

Each result file is one JSON object as written by the load generator, e.g.:

    {"scenario": "unicast" | "topic" | "broadcast" | "mixed" | "burst" | "connections",
     "target": "tidings" | "centrifugo",
     "clients": 200, "target_rate": 2000, "throughput_per_s": 1949.3,
     "latency_ms": {"p50": 1.2, "p90": 2.0, "p99": 5.1, "p999": 7.0, "max": 9.0},
     "server": {"rss_mib_connected": 123.4, "rss_kib_per_connection": 10.2,
                "rss_mib_peak": 130, "cpu_percent_avg": 80.1}}      # "server" may be absent

A file only contributes to a plot when it has every field that plot reads and no "label"
(labelled runs are variants, e.g. "no-ack"); anything else is ignored. Plots written to OUTDIR (a plot without data is skipped with a message):

  latency-vs-load.svg        scenario "unicast", target "tidings": x = target_rate
                             (offered msg/s; runs at "as fast as possible" are left out), y = latency p50 / p99 / p99.9 in ms (log scale).
  memory-vs-connections.svg  scenario "connections": x = clients, y = server.rss_mib_connected,
                             one line per target.
  fanout-vs-subscribers.svg  scenario "topic": x = clients (subscribers), y = latency_ms.max
                             (until the last subscriber got the message) and latency_ms.p50,
                             one colour per target, solid = max, dashed = p50.
"""

from __future__ import annotations

import json
import math
import os
import sys
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 170, 44, 56
PLOT_W = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
PLOT_H = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

TARGET_COLOURS = {"tidings": "#1f6fb4", "centrifugo": "#d9541e"}
PALETTE = ["#1f6fb4", "#d9541e", "#2e9e44", "#8a4fbf", "#c9a000", "#17a2b8", "#7f7f7f"]
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""


# --------------------------------------------------------------------------- data access

def field(doc, *path):
    """The number at doc[path[0]][path[1]]..., or None when missing or not a number."""
    cur = doc
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)):
        return None
    if math.isnan(cur) or math.isinf(cur):
        return None
    return float(cur)


def load_results(paths):
    results = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as err:
            print(f"plot.py: skipping {path}: {err}", file=sys.stderr)
            continue
        if not isinstance(doc, dict):
            print(f"plot.py: skipping {path}: not a JSON object", file=sys.stderr)
            continue
        doc["_path"] = path
        results.append(doc)
    return results


def points(results, xpath, ypath):
    """(x, y) pairs from the results having both fields, sorted by x."""
    pts = []
    for doc in results:
        x, y = field(doc, *xpath), field(doc, *ypath)
        if x is not None and y is not None:
            pts.append((x, y))
    pts.sort()
    return pts


def select(results, scenario, target=None):
    """Results of one scenario (and target); variants run with a label (e.g. "no-ack") are
    left to the tables, so that each line compares like with like."""
    return [
        d for d in results
        if d.get("scenario") == scenario and (target is None or d.get("target") == target)
        and not d.get("label")
    ]


def targets_of(results):
    seen = []
    for doc in results:
        t = doc.get("target")
        if isinstance(t, str) and t not in seen:
            seen.append(t)
    # tidings first, then the peers in a stable order
    return sorted(seen, key=lambda t: (t != "tidings", t))


def target_colour(target, index):
    return TARGET_COLOURS.get(target, PALETTE[(index + 2) % len(PALETTE)])


# --------------------------------------------------------------------------- axes and ticks

def nice_step(span, wanted=5):
    raw = span / max(wanted, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * mag:
            return mult * mag
    return 10 * mag


def linear_axis(values, from_zero):
    lo, hi = min(values), max(values)
    if from_zero and lo >= 0:
        lo = 0.0
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = (lo - pad if not (from_zero and lo == 0) else lo), hi + pad
    step = nice_step(hi - lo)
    lo = math.floor(lo / step + 1e-9) * step
    hi = math.ceil(hi / step - 1e-9) * step
    ticks = []
    t = lo
    while t <= hi + step * 1e-6:
        ticks.append(round(t, 10))
        t += step
    return lo, hi, ticks


def log_axis(values):
    positive = [v for v in values if v > 0]
    lo_exp = math.floor(math.log10(min(positive)) + 1e-9)
    hi_exp = math.ceil(math.log10(max(positive)) - 1e-9)
    if hi_exp == lo_exp:
        hi_exp += 1
    decades = hi_exp - lo_exp
    mults = (1, 2, 5) if decades <= 3 else (1,)
    ticks = []
    for e in range(lo_exp, hi_exp + 1):
        for m in mults:
            v = m * 10.0 ** e
            if v <= 10.0 ** hi_exp * 1.0000001:
                ticks.append(v)
    return 10.0 ** lo_exp, 10.0 ** hi_exp, ticks


def tick_formatter(ticks):
    """One label style for a whole axis: 0, 2,500, 5,000 ... or 0, 5k, 10k ... or 0.1, 0.2."""
    top = max(abs(t) for t in ticks)

    def fmt(v):
        if v == 0:
            return "0"
        # a value under 1,000 keeps its own digits (a log axis spans 0.001 .. 100k)
        if top >= 1e6 and abs(v) >= 1e6:
            return f"{v / 1e6:g}M"
        if top >= 1e4 and abs(v) >= 1e3:
            return f"{v / 1e3:g}k"
        if float(v).is_integer():
            return f"{v:,.0f}"
        return f"{v:.3g}"

    return fmt


def fmt_value(v):
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


# --------------------------------------------------------------------------- SVG chart

def line_chart(title, x_title, y_title, series, y_log=False, x_from_zero=True,
               y_from_zero=True, notes=()):
    """series: list of dicts {label, colour, dash (or None), points [(x, y)]}.

    notes: short lines of text printed under the legend."""
    xs = [x for s in series for x, _ in s["points"]]
    ys = [y for s in series for _, y in s["points"]]
    if y_log:
        ys = [y for y in ys if y > 0]
    x_lo, x_hi, x_ticks = linear_axis(xs, x_from_zero)
    if y_log:
        y_lo, y_hi, y_ticks = log_axis(ys)
    else:
        y_lo, y_hi, y_ticks = linear_axis(ys, y_from_zero)

    def sx(x):
        return MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * PLOT_W

    def sy(y):
        if y_log:
            frac = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            frac = (y - y_lo) / (y_hi - y_lo)
        return MARGIN_TOP + PLOT_H - frac * PLOT_H

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{MARGIN_LEFT + PLOT_W / 2:.1f}" y="26" text-anchor="middle" {FONT} '
        f'font-size="16" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]

    # grid and tick labels
    out.append('<g stroke="#e3e3e3" stroke-width="1">')
    for t in x_ticks:
        out.append(f'<line x1="{sx(t):.1f}" y1="{MARGIN_TOP}" x2="{sx(t):.1f}" '
                   f'y2="{MARGIN_TOP + PLOT_H}"/>')
    for t in y_ticks:
        out.append(f'<line x1="{MARGIN_LEFT}" y1="{sy(t):.1f}" x2="{MARGIN_LEFT + PLOT_W}" '
                   f'y2="{sy(t):.1f}"/>')
    out.append('</g>')
    fx, fy = tick_formatter(x_ticks), tick_formatter(y_ticks)
    out.append(f'<g {FONT} font-size="11" fill="#444">')
    for t in x_ticks:
        out.append(f'<text x="{sx(t):.1f}" y="{MARGIN_TOP + PLOT_H + 16}" '
                   f'text-anchor="middle">{escape(fx(t))}</text>')
    for t in y_ticks:
        out.append(f'<text x="{MARGIN_LEFT - 6}" y="{sy(t) + 4:.1f}" '
                   f'text-anchor="end">{escape(fy(t))}</text>')
    out.append('</g>')

    # axes
    out.append(f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{PLOT_W}" height="{PLOT_H}" '
               f'fill="none" stroke="#888" stroke-width="1"/>')
    out.append(f'<text x="{MARGIN_LEFT + PLOT_W / 2:.1f}" y="{HEIGHT - 14}" '
               f'text-anchor="middle" {FONT} font-size="13" fill="#222">'
               f'{escape(x_title)}</text>')
    cy = MARGIN_TOP + PLOT_H / 2
    out.append(f'<text x="18" y="{cy:.1f}" text-anchor="middle" {FONT} font-size="13" '
               f'fill="#222" transform="rotate(-90 18 {cy:.1f})">{escape(y_title)}</text>')

    # data
    for s in series:
        pts = [(x, y) for x, y in s["points"] if not y_log or y > 0]
        if not pts:
            continue
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{s["colour"]}" '
                       f'stroke-width="2" stroke-linejoin="round"{dash}/>')
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.2" '
                       f'fill="{s["colour"]}" stroke="#fff" stroke-width="0.8">'
                       f'<title>{escape(s["label"])}: x={fmt_value(x)}, '
                       f'y={fmt_value(y)}</title></circle>')

    # legend, in the right-hand margin
    lx = MARGIN_LEFT + PLOT_W + 16
    ly = MARGIN_TOP + 8
    out.append(f'<g {FONT} font-size="12" fill="#222">')
    for i, s in enumerate(series):
        y = ly + i * 20
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 26}" y2="{y}" stroke="{s["colour"]}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<circle cx="{lx + 13}" cy="{y}" r="3.2" fill="{s["colour"]}"/>')
        out.append(f'<text x="{lx + 34}" y="{y + 4}">{escape(s["label"])}</text>')
    for j, note in enumerate(notes):
        y = ly + len(series) * 20 + 8 + j * 16
        out.append(f'<text x="{lx}" y="{y}" font-size="11" fill="#555">{escape(note)}</text>')
    out.append('</g>')
    out.append('</svg>')
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the plots

def plot_latency_vs_load(results):
    # offered load on x: past saturation the delivered rate falls back while latency climbs
    docs = [d for d in select(results, "unicast", "tidings") if d.get("target_rate")]
    series = []
    for key, label, colour in (("p50", "p50", "#2e9e44"), ("p99", "p99", "#1f6fb4"),
                               ("p999", "p99.9", "#d9541e")):
        pts = points(docs, ("target_rate",), ("latency_ms", key))
        pts = [(x, y) for x, y in pts if y > 0]  # log axis
        if pts:
            series.append({"label": label, "colour": colour, "dash": None, "points": pts})
    if not series:
        return None
    return line_chart("tidings unicast: latency vs offered load", "offered load (msg/s)",
                      "latency (ms, log scale)", series, y_log=True)


def plot_memory_vs_connections(results):
    docs = select(results, "connections")
    series = []
    for i, target in enumerate(targets_of(docs)):
        pts = points(select(docs, "connections", target), ("clients",),
                     ("server", "rss_mib_connected"))
        if pts:
            series.append({"label": target, "colour": target_colour(target, i), "dash": None,
                           "points": pts})
    if not series:
        return None
    return line_chart("server memory vs open connections", "connected clients",
                      "server RSS (MiB)", series)


def plot_fanout_vs_subscribers(results):
    docs = select(results, "topic")
    series = []
    for i, target in enumerate(targets_of(docs)):
        mine = select(docs, "topic", target)
        colour = target_colour(target, i)
        for key, label, dash in (("max", "max", None), ("p50", "p50", "6 4")):
            pts = points(mine, ("clients",), ("latency_ms", key))
            if pts:
                series.append({"label": f"{target} {label}", "colour": colour, "dash": dash,
                               "points": pts})
    if not series:
        return None
    ys = [y for s in series for _, y in s["points"]]
    positive = [y for y in ys if y > 0]
    # A log axis when the values span more than ~1.5 decades, else linear from zero.
    use_log = (len(positive) == len(ys) and positive
               and max(positive) / min(positive) > 30)
    y_title = "delivery latency (ms, log scale)" if use_log else "delivery latency (ms)"
    return line_chart("topic fan-out: latency vs subscribers", "subscribers", y_title, series,
                      y_log=bool(use_log),
                      notes=("solid: max, i.e. until the", "last subscriber got it", "dashed: p50"))


PLOTS = [
    ("latency-vs-load.svg", plot_latency_vs_load,
     'no "unicast" results for target "tidings" with target_rate and latency_ms'),
    ("memory-vs-connections.svg", plot_memory_vs_connections,
     'no "connections" results with clients and server.rss_mib_connected'),
    ("fanout-vs-subscribers.svg", plot_fanout_vs_subscribers,
     'no "topic" results with clients and latency_ms.max/p50'),
]


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    outdir, paths = argv[1], argv[2:]
    results = load_results(paths)
    os.makedirs(outdir, exist_ok=True)
    for name, make, why in PLOTS:
        svg = make(results)
        if svg is None:
            print(f"skipping {name}: {why}")
            continue
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(svg)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
