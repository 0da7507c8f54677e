#!/usr/bin/env bash
# Build and start `tidings serve` on embedded backends, then show a message reaching a
# WebSocket client. Leaves the server running on 127.0.0.1:8080 (data in ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TIDINGS_CACHE:-$HOME/.cache/tidings}/target}"
export TIDINGS_ADMIN_TOKEN="${TIDINGS_ADMIN_TOKEN:-demo-admin-token}"
cargo build --release -p tidings -p tidings-benches
BIN="$CARGO_TARGET_DIR/release"
"$BIN/tidings" serve > tidings.log 2>&1 &
echo "tidings serve: pid $! (logs in tidings.log)"
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.1; done
# one WebSocket client, 5 messages sent over HTTP, each timed from send to receipt
"$BIN/tidings-loadgen" --url http://127.0.0.1:8080 --admin-token "$TIDINGS_ADMIN_TOKEN" --users 1 --rate 5 --concurrency 1 --seconds 1
echo
echo "metrics: curl -s http://127.0.0.1:8080/metrics | grep ^tidings_"
