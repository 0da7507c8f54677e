#!/usr/bin/env bash
# A Confluent-compatible schema registry for tests (franz-go's in-memory srfake, built once
# with Go into the cache outside the clone; facts in ../shared/SERVICES.md).
#
#   scripts/services/registry.sh start <dir>   # prints `export TIDINGS_TEST_REGISTRY=http://...`
#   scripts/services/registry.sh stop <dir>
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${TIDINGS_CACHE:-$HOME/.cache/tidings}"
BIN="$CACHE/bin/tidings-test-registry"

build() {
  local stamp; stamp="$(sha256sum "$HERE/registry/main.go" "$HERE/registry/go.mod" | sha256sum | cut -c1-16)"
  if [ -x "$BIN" ] && [ "$(cat "$BIN.stamp" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  command -v go >/dev/null || { echo "registry.sh: Go is needed (apt-get install golang)" >&2; exit 1; }
  mkdir -p "$CACHE/bin"
  local work; work="$(mktemp -d)"
  cp "$HERE/registry/main.go" "$HERE/registry/go.mod" "$work/"
  (cd "$work" && go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -o "$BIN" .) >&2
  rm -rf "$work"
  echo "$stamp" > "$BIN.stamp"
}

start() {
  local dir="$1"; mkdir -p "$dir"
  build
  nohup "$BIN" -addr 127.0.0.1:0 >"$dir/addr" 2>"$dir/stderr.log" &
  echo $! > "$dir/pid"
  for _ in $(seq 1 100); do
    if [ -s "$dir/addr" ]; then
      local addr; addr="$(head -1 "$dir/addr")"
      if curl -sf "http://$addr/subjects" >/dev/null; then
        echo "export TIDINGS_TEST_REGISTRY=http://$addr"
        return 0
      fi
    fi
    sleep 0.1
  done
  echo "registry.sh: the registry did not start; see $dir/stderr.log" >&2
  exit 1
}

stop() {
  local dir="$1"
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  start) start "${2:?dir}" ;;
  stop) stop "${2:?dir}" ;;
  build) build ;;
  *) echo "usage: $0 start <dir> | stop <dir> | build" >&2; exit 2 ;;
esac
