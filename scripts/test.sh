#!/usr/bin/env bash
# The whole test suite, from nothing: toolchain components, the real servers the tests talk
# to (Apache Kafka, fetched once into ~/.cache/tidings), format, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# one target dir outside the clone, reused by the next run on this machine
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TIDINGS_CACHE:-$HOME/.cache/tidings}/target}"
mkdir -p "$CARGO_TARGET_DIR"

if ! command -v cargo >/dev/null 2>&1; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Java 17 and Maven fetch and run Kafka (scripts/services/kafka.sh)
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  echo "== installing Java 17 and Maven"
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
fi

SERVICES="$(mktemp -d "${TMPDIR:-/tmp}/tidings-services.XXXXXX")"
stop_services() {
  scripts/services/kafka.sh stop "$SERVICES/kafka" || true
  rm -rf "$SERVICES"
}
trap stop_services EXIT
echo "== starting Kafka"
eval "$(scripts/services/kafka.sh start "$SERVICES/kafka")"
export TIDINGS_TEST_KAFKA
echo "Kafka on $TIDINGS_TEST_KAFKA"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features tidings/failpoints -- -D warnings
echo "== cargo test"
# `failpoints` compiles the crash points the loss-window tests use into the test build only
cargo test --workspace --features tidings/failpoints
