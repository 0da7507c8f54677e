#!/usr/bin/env bash
# Build and run Centrifugo v5.4.9, the peer server the benchmarks compare tidings against.
#
#   centrifugo.sh build                      ensure the binary exists; print its path
#   centrifugo.sh start PORT SECRET APIKEY   start it on 127.0.0.1:PORT, wait for /health,
#                                            print its PID (only the PID) on stdout
#   centrifugo.sh stop PID                   stop a server started by `start`
#
# SECRET is the HS256 key for client connection JWTs (claim `sub`); APIKEY is for the HTTP API
# (`POST /api/publish` etc. with header `X-API-Key`). Clients may subscribe to any channel
# without a namespace (allow_subscribe_for_client). Any other Centrifugo v5 option can be set
# through its environment variable, e.g. CENTRIFUGO_HISTORY_SIZE=100 CENTRIFUGO_HISTORY_TTL=300s.
#
# Everything is cached under ${TIDINGS_CACHE:-$HOME/.cache/tidings}/peers/: the binary
# (centrifugo-5.4.9) and the Go module and build caches it was built from (go/). A cold build
# takes about 2.5 minutes on a 2-core machine.
#
# Why not `go install ...@v5.4.9`: the Go module proxy used here refuses that route (and v6
# entirely). `go mod download` of the module followed by `go build` inside its directory in the
# module cache works, because the module's own go.mod/go.sum then pin every dependency.
set -euo pipefail
shopt -s inherit_errexit  # so that `bin=$(ensure_binary)` stops at the first failure too

VERSION=5.4.9
MODULE=github.com/centrifugal/centrifugo/v5
PEERS_DIR="${TIDINGS_CACHE:-$HOME/.cache/tidings}/peers"
BIN="$PEERS_DIR/centrifugo-$VERSION"
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15

die() {
    echo "centrifugo.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Print the path of the binary, building it first when it is missing.
ensure_binary() {
    if [[ -x "$BIN" ]]; then
        echo "$BIN"
        return
    fi
    command -v go >/dev/null || die "go is not installed (needed once, to build Centrifugo)"
    mkdir -p "$PEERS_DIR/go"

    # One build at a time; a second caller waits and then finds the binary.
    exec 9>"$PEERS_DIR/.centrifugo-build.lock"
    if command -v flock >/dev/null; then
        flock 9
        if [[ -x "$BIN" ]]; then
            exec 9>&-
            echo "$BIN"
            return
        fi
    fi

    # Keep the module and build caches next to the binary. -modcacherw leaves the module cache
    # writable so that `rm -rf "$PEERS_DIR"` works; the build itself only writes to -o.
    export GOMODCACHE="$PEERS_DIR/go/mod"
    export GOCACHE="$PEERS_DIR/go/build"
    export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw -buildvcs=false"

    echo "centrifugo.sh: downloading $MODULE@v$VERSION" >&2
    local info dir
    info="$(go mod download -json "$MODULE@v$VERSION")" ||
        die "go mod download $MODULE@v$VERSION failed: $info"
    dir="$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -n "$dir" && -f "$dir/main.go" ]] || die "no module directory in: $info"

    echo "centrifugo.sh: building Centrifugo $VERSION in $dir (a few minutes when cold)" >&2
    local tmp="$BIN.tmp.$$"
    local started=$SECONDS
    if ! (cd "$dir" && go build -trimpath \
        -ldflags "-X $MODULE/internal/build.Version=$VERSION" -o "$tmp" .); then
        rm -f "$tmp"
        die "go build failed"
    fi
    mv -f "$tmp" "$BIN"
    exec 9>&-
    echo "centrifugo.sh: built $BIN in $((SECONDS - started)) s" >&2
    echo "$BIN"
}

# A JSON string literal for $1 (rejects control characters rather than escaping them).
json_string() {
    local s=$1
    [[ "$s" != *[[:cntrl:]]* ]] || die "control characters are not allowed in secrets"
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

health_ok() {
    curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/health" 2>/dev/null
}

cmd_start() {
    [[ $# -eq 3 ]] || usage
    local port=$1 secret=$2 apikey=$3
    [[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || die "bad port: $port"
    [[ -n "$secret" && -n "$apikey" ]] || die "SECRET and APIKEY must not be empty"
    command -v curl >/dev/null || die "curl is needed for the readiness check"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "something already listens on 127.0.0.1:$port"
    fi

    local bin
    bin="$(ensure_binary)"

    local run_dir
    run_dir="$(mktemp -d "/tmp/centrifugo-$port.XXXXXX")"
    # v5 config: flat keys; the channel options at top level apply to channels without a
    # namespace (there is no namespace here).
    cat >"$run_dir/config.json" <<EOF
{
  "address": "127.0.0.1",
  "port": $port,
  "token_hmac_secret_key": $(json_string "$secret"),
  "api_key": $(json_string "$apikey"),
  "health": true,
  "prometheus": true,
  "usage_stats_disable": true,
  "allow_subscribe_for_client": true,
  "client_channel_limit": 10000,
  "shutdown_timeout": "10s",
  "log_level": "info"
}
EOF
    chmod 600 "$run_dir/config.json"

    # Many connections: raise the open-file limit to the hard limit (inherited by the server).
    local hard
    hard="$(ulimit -Hn)"
    ulimit -n "$hard" 2>/dev/null || echo "centrifugo.sh: could not raise ulimit -n to $hard" >&2

    # stdout/stderr go to the log, so `pid=$(centrifugo.sh start ...)` returns at once.
    nohup "$bin" --config "$run_dir/config.json" >"$run_dir/centrifugo.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$run_dir/pid"

    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until health_ok "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "centrifugo.sh: Centrifugo exited during startup; log $run_dir/centrifugo.log:" >&2
            tail -n 20 "$run_dir/centrifugo.log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "centrifugo.sh: /health did not answer within ${READY_TIMEOUT_S} s; log:" >&2
            tail -n 20 "$run_dir/centrifugo.log" >&2 || true
            kill "$pid" 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
    echo "centrifugo.sh: Centrifugo $VERSION on 127.0.0.1:$port, pid $pid," \
        "open files $(ulimit -n), run dir $run_dir" >&2
    echo "$pid"
}

# True while PID runs; an exited process not yet reaped (a zombie) counts as gone.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local pid=$1
    [[ "$pid" =~ ^[0-9]+$ ]] || die "bad pid: $pid"
    if ! alive "$pid"; then
        echo "centrifugo.sh: pid $pid is not running" >&2
        return 0
    fi
    # Refuse to signal a process that is not a Centrifugo we could have started.
    local exe
    exe="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$exe" == *centrifugo* ]] || die "pid $pid is not Centrifugo ($exe)"

    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "centrifugo.sh: pid $pid ignored SIGTERM for ${STOP_TIMEOUT_S} s; killing" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    echo "centrifugo.sh: stopped pid $pid" >&2
}

case "${1:-}" in
    build)
        shift
        [[ $# -eq 0 ]] || usage
        ensure_binary
        ;;
    start)
        shift
        cmd_start "$@"
        ;;
    stop)
        shift
        cmd_stop "$@"
        ;;
    *)
        usage
        ;;
esac
