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

# Go builds the test schema registry (scripts/services/registry.sh)
if ! command -v go >/dev/null 2>&1; then
  echo "== installing Go"
  apt-get update -qq && apt-get install -y -qq golang-go >/dev/null
fi
# the Python producer of docs/examples runs in a venv of its own, kept in the cache
CACHE="${TIDINGS_CACHE:-$HOME/.cache/tidings}"
VENV="$CACHE/venv-test"
if ! "$VENV/bin/python" -c "import confluent_kafka, fastavro" >/dev/null 2>&1; then
  echo "== Python venv for the producer example"
  python3 -m venv "$VENV" || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q confluent-kafka fastavro
fi
export TIDINGS_TEST_PYTHON="$VENV/bin/python"

SERVICES="$(mktemp -d "${TMPDIR:-/tmp}/tidings-services.XXXXXX")"
stop_services() {
  scripts/services/kafka.sh stop "$SERVICES/kafka" || true
  scripts/services/registry.sh stop "$SERVICES/registry" || true
  rm -rf "$SERVICES"
}
trap stop_services EXIT
echo "== starting Kafka and a schema registry"
# a second try in a fresh dir if the first start fails (its reason is printed above)
kafka_env="$(scripts/services/kafka.sh start "$SERVICES/kafka")" \
  || { scripts/services/kafka.sh stop "$SERVICES/kafka"; rm -rf "$SERVICES/kafka";
       kafka_env="$(scripts/services/kafka.sh start "$SERVICES/kafka")"; } \
  || { echo "Kafka did not start" >&2; exit 1; }
registry_env="$(scripts/services/registry.sh start "$SERVICES/registry")" || { echo "the registry did not start" >&2; exit 1; }
eval "$kafka_env"
eval "$registry_env"
export TIDINGS_TEST_KAFKA TIDINGS_TEST_REGISTRY
echo "Kafka on $TIDINGS_TEST_KAFKA, registry on $TIDINGS_TEST_REGISTRY"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features tidings/failpoints -- -D warnings
echo "== cargo test"
# `failpoints` compiles the crash points the loss-window tests use into the test build only
cargo test --workspace --features tidings/failpoints
