#!/usr/bin/env bash
# The pipeline on Kafka against the bare broker, on one broker in one run (docs/benchmarks.md,
# "On Kafka"): Kafka's own producer and consumer perf tools at the pipeline's record size, then
# the load generator through `tidings serve` with TIDINGS_BUS=kafka (unicast at 1,000/s, at
# 5,000/s and as fast as it goes, and a topic fan-out). Results go to docs/benchmarks/results/kafka-*.
#
#   benches/kafka.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks/results
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${TIDINGS_CACHE:-$HOME/.cache/tidings}/target}"
cargo build --release -p tidings -p tidings-benches

# the broker runs with the tests' JVM flags (C1 only): on 2 shared cores the C2 JIT's own
# work made every figure worse in runs this short (KAFKA_JAVA_FLAGS overrides them)
dir=$(mktemp -d /tmp/tidings-kafka-bench.XXXXXX)
trap 'scripts/services/kafka.sh stop "$dir/kafka"; rm -rf "$dir"' EXIT
eval "$(scripts/services/kafka.sh start "$dir/kafka")"
brokers=$TIDINGS_TEST_KAFKA
echo "broker on $brokers"

# the pipeline's records: an encoded unicast request is ~190 B, its delivery ~330 B
size=256
records=1000000
kafka() { scripts/services/kafka.sh tool "$@"; }
kafka TopicCommand --bootstrap-server "$brokers" --create --topic perf --partitions 4 \
  --replication-factor 1 >/dev/null
echo "== kafka-producer-perf-test: $records records of $size B, acks=all, idempotent, lz4"
kafka ProducerPerformance --topic perf --num-records "$records" --record-size "$size" \
  --throughput -1 --producer-props bootstrap.servers="$brokers" acks=all \
  enable.idempotence=true compression.type=lz4 linger.ms=5 | tee "$out/kafka-producer-perf.txt" | tail -1
echo "== kafka-consumer-perf-test"
kafka ConsumerPerformance --bootstrap-server "$brokers" --topic perf --messages "$records" \
  | tee "$out/kafka-consumer-perf.txt" | tail -2

run() {
  echo "== tidings on Kafka: $*" >&2
  TIDINGS_BUS=kafka TIDINGS_KAFKA_BROKERS="$brokers" TIDINGS_TOPIC_PREFIX="bench$RANDOM" \
    benches/run.sh tidings "$@" 2>&1 | grep -vE '^ +[0-9]+s |^connecting|^draining' >&2
}
run "$out/kafka-unicast-1000.json" --scenario unicast --clients 200 --rate 1000 --concurrency 64 --seconds 15 --label kafka
run "$out/kafka-unicast-5000.json" --scenario unicast --clients 200 --rate 5000 --concurrency 64 --seconds 15 --label kafka
run "$out/kafka-unicast-max.json" --scenario unicast --clients 200 --rate 0 --concurrency 64 --seconds 15 --drain-seconds 120 --label kafka
run "$out/kafka-topic-5000.json" --scenario topic --clients 5000 --connect-rate 5000 --messages 5 --interval-ms 1000 --label kafka
