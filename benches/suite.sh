#!/usr/bin/env bash
# Every scenario of docs/benchmarks.md, on this machine, one fresh server per run; results go
# to docs/benchmarks/results/ (one JSON per run) and the plots to docs/benchmarks/.
#
#   benches/suite.sh            everything (about 15 minutes on 2 cores)
#   benches/suite.sh unicast    one group: connections | fanout | audiences | unicast | patterns | backlog
#
# The server and the load generator share the machine, as they do in the figures we publish.
# Each process may hold at most `ulimit -Hn` descriptors (20,000 here), which caps connections.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks/results
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TIDINGS_CACHE:-$HOME/.cache/tidings}/target}"
cargo build --release -p tidings -p tidings-benches
max_clients=$(( $(ulimit -Hn) - 1000 ))
big=$(( max_clients < 19000 ? max_clients : 19000 ))
run() { echo "== $*" >&2; benches/run.sh "$@" 2>&1 | grep -vE '^ +[0-9]+s |^connecting|^draining' >&2; }
group=${1:-all}

if [[ $group == all || $group == connections ]]; then
  for n in 1000 5000 10000 "$big"; do
    run tidings "$out/connections-tidings-$n.json" --scenario connections --clients "$n" --connect-rate 5000 --seconds 3
    run centrifugo "$out/connections-centrifugo-$n.json" --scenario connections --clients "$n" --connect-rate 5000 --seconds 3
  done
fi

if [[ $group == all || $group == fanout ]]; then
  for n in 1000 5000 "$big"; do
    run tidings "$out/topic-tidings-$n.json" --scenario topic --clients "$n" --connect-rate 5000 --messages 5 --interval-ms 1000
    run centrifugo "$out/topic-centrifugo-$n.json" --scenario topic --clients "$n" --connect-rate 5000 --messages 5 --interval-ms 1000
  done
  run tidings "$out/topic-tidings-$big-no-ack.json" --scenario topic --clients "$big" --connect-rate 5000 --messages 5 --interval-ms 1000 --no-ack --label no-ack
  run tidings "$out/broadcast-tidings-$big.json" --scenario broadcast --clients "$big" --connect-rate 5000 --messages 5 --interval-ms 1000
fi

if [[ $group == all || $group == audiences ]]; then
  # issue 13: topic messages stored once and pushed once per connection, side by side with
  # Centrifugo in one run (its clients do not ack: compare it with no-ack); a broadcast to a
  # tenant of 1,000,000 known users, 10,000 of them connected, with the store's size before
  # and after. Labelled: the fanout group draws the plot.
  for n in 2000 "$big"; do
    run tidings "$out/audience-topic-tidings-$n.json" --scenario topic --clients "$n" --connect-rate 5000 --messages 5 --interval-ms 1000 --label audiences
    run tidings "$out/audience-topic-tidings-$n-no-ack.json" --scenario topic --clients "$n" --connect-rate 5000 --messages 5 --interval-ms 1000 --no-ack --label audiences-no-ack
    run centrifugo "$out/audience-topic-centrifugo-$n.json" --scenario topic --clients "$n" --connect-rate 5000 --messages 5 --interval-ms 1000 --label audiences
  done
  run tidings "$out/audience-broadcast-1m-no-ack.json" --scenario broadcast --clients 10000 --known-users 1000000 --connect-rate 5000 --messages 5 --interval-ms 1000 --no-ack --label audiences-no-ack
  run tidings "$out/audience-broadcast-1m.json" --scenario broadcast --clients 10000 --known-users 1000000 --connect-rate 5000 --messages 5 --interval-ms 1000 --label audiences
fi

if [[ $group == all || $group == unicast ]]; then
  for r in 500 1000 2000 3000 4000 5000 10000; do
    run tidings "$out/unicast-tidings-$r.json" --scenario unicast --clients 200 --rate "$r" --concurrency 64 --seconds 15
  done
  run tidings "$out/unicast-tidings-max.json" --scenario unicast --clients 200 --rate 0 --concurrency 64 --seconds 15 --drain-seconds 120
fi

if [[ $group == all || $group == patterns ]]; then
  run tidings "$out/mixed-tidings-2000.json" --scenario mixed --clients 200 --rate 2000 --concurrency 64 --seconds 15
  run tidings "$out/burst-tidings-5000.json" --scenario burst --clients 200 --burst 5000 --burst-every-ms 3000 --concurrency 64 --seconds 15
fi

if [[ $group == all || $group == backlog ]]; then
  # 500 low topic messages to 2,000 subscribers: 1,000,000 low deliveries queued, then urgent
  # unicast at 100/s while they drain
  run tidings "$out/backlog-tidings-1m.json" --scenario backlog --clients 2000 --backlog 500 --rate 100 --concurrency 8 --seconds 20 --drain-seconds 600
fi

python3 benches/plot.py docs/benchmarks "$out"/*.json
