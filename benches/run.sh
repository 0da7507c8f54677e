#!/usr/bin/env bash
# Run one load-generator scenario against a fresh server on this machine, then stop it.
#
#   benches/run.sh tidings    OUT.json [tidings-loadgen args...]
#   benches/run.sh centrifugo OUT.json [tidings-loadgen args...]
#
# tidings: a release `tidings serve` on embedded backends with an empty data dir;
# centrifugo: Centrifugo v5.4.9 from benches/peers/centrifugo.sh. The server's PID is handed to
# the load generator, which samples its RSS and CPU. Binaries come from the release build in
# $CARGO_TARGET_DIR (built here when missing); TIDINGS_BIN names another server binary (to
# measure a change before and after).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?tidings or centrifugo}
out=${2:?result file}
shift 2

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TIDINGS_CACHE:-$HOME/.cache/tidings}/target}"
bin="$CARGO_TARGET_DIR/release"
if [[ ! -x "$bin/tidings" || ! -x "$bin/tidings-loadgen" ]]; then
  cargo build --release -p tidings -p tidings-benches
fi
# each WebSocket is a file descriptor on both sides
ulimit -n "$(ulimit -Hn)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
run=$(mktemp -d /tmp/tidings-bench.XXXXXX)
pid=""
stop() {
  if [[ -n "$pid" ]]; then
    if [[ "$target" == centrifugo ]]; then
      benches/peers/centrifugo.sh stop "$pid" || true
    else
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$run"
}
trap stop EXIT

case "$target" in
  tidings)
    TIDINGS_DATA_DIR="$run/data" TIDINGS_ADMIN_TOKEN=bench TIDINGS_HTTP_ADDR="127.0.0.1:$port" \
      RUST_LOG=warn "${TIDINGS_BIN:-$bin/tidings}" serve >"$run/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
      sleep 0.1
    done
    "$bin/tidings-loadgen" --url "http://127.0.0.1:$port" --admin-token bench \
      --server-pid "$pid" --data-dir "$run/data" --json "$out" "$@"
    ;;
  centrifugo)
    pid=$(benches/peers/centrifugo.sh start "$port" bench-secret bench-key)
    "$bin/tidings-loadgen" --target centrifugo --url "http://127.0.0.1:$port" \
      --centrifugo-secret bench-secret --centrifugo-api-key bench-key \
      --server-pid "$pid" --json "$out" "$@"
    ;;
  *)
    echo "run.sh: unknown target $target (tidings or centrifugo)" >&2
    exit 2
    ;;
esac
