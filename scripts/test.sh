#!/usr/bin/env bash
# The whole test suite, from nothing: toolchain components, format, lints, every test.
# This version needs no outside services (every backend is embedded); the Kafka, Cassandra
# and Redis backends will add their start-up here.
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features tidings/failpoints -- -D warnings
echo "== cargo test"
# `failpoints` compiles the crash points the loss-window tests use into the test build only
cargo test --workspace --features tidings/failpoints
