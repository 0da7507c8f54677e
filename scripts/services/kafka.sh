#!/usr/bin/env bash
# Apache Kafka 4.3.1 for tests and benchmarks: one combined broker + controller (KRaft) on
# free loopback ports, fetched from Maven Central on first use and cached outside the clone.
#
#   scripts/services/kafka.sh fetch          # download the jars (idempotent)
#   scripts/services/kafka.sh start <dir>    # start in <dir>; prints `export TIDINGS_TEST_KAFKA=...`
#   scripts/services/kafka.sh stop <dir>     # SIGTERM, wait
#   scripts/services/kafka.sh launch <dir>   # start a stopped broker again, same ports and data
#   scripts/services/kafka.sh tool <class> <args...>   # run a kafka-tools class (perf tests, groups)
#
# Facts behind the settings (log binding, heap, cleaner buffer, heartbeat): ../shared/SERVICES.md.
set -euo pipefail

VERSION=4.3.1
CACHE="${TIDINGS_CACHE:-$HOME/.cache/tidings}"
LIB="$CACHE/kafka-$VERSION/lib"
M2="$CACHE/m2"

fetch() {
  if [ -f "$LIB/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) and Java 17 are needed" >&2; exit 1; }
  local work; work="$(mktemp -d)"
  cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tidings</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.4</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$LIB" && mkdir -p "$LIB"
  (cd "$work" && mvn -q -B -Dmaven.repo.local="$M2" dependency:copy-dependencies \
     -DoutputDirectory="$LIB" -DincludeScope=runtime -Dstyle.color=never) >&2
  rm -rf "$work"
  touch "$LIB/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# tests want a quick start (C1 only, small heap); benchmarks set KAFKA_JAVA_FLAGS for a full JIT
read -r -a JAVA_FLAGS <<< "${KAFKA_JAVA_FLAGS:--Xms128m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
JAVA_FLAGS+=(-Djava.awt.headless=true)

start() {
  local dir="$1"; mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  fetch
  local port cport; port="$(free_port)"; cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  cat > "$dir/log4j2.properties" <<L4J
status = error
appender.f.type = File
appender.f.name = f
appender.f.fileName = $dir/server.log
appender.f.layout.type = PatternLayout
appender.f.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.f.ref = f
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
L4J
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.network.threads=2
num.io.threads=2
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=1000
log.cleaner.dedupe.buffer.size=4194304
auto.create.topics.enable=false
PROPS
  echo "$port" > "$dir/port"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local id; id="$(python3 -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')"
    if ! java "${JAVA_FLAGS[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIB/*" \
      kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" --standalone >"$dir/format.log" 2>&1; then
      echo "kafka.sh: formatting the broker's storage failed:" >&2
      tail -30 "$dir/format.log" >&2
      exit 1
    fi
  fi
  launch "$dir"
  echo "export TIDINGS_TEST_KAFKA=127.0.0.1:$port"
}

# (re)launch a formatted broker in <dir> on its recorded ports, and wait until it serves
launch() {
  local dir="$1" port; port="$(cat "$dir/port")"
  nohup java "${JAVA_FLAGS[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -Dkafka.logs.dir="$dir" -cp "$LIB/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 1 600); do
    if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null \
       && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "kafka.sh: the broker exited; see $dir/server.log and $dir/stdout.log" >&2
      tail -20 "$dir/stdout.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  echo "kafka.sh: the broker did not start within 60 s; see $dir/server.log" >&2
  exit 1
}

stop() {
  local dir="$1"
  [ -f "$dir/pid" ] || return 0
  local pid; pid="$(cat "$dir/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

tool() {
  fetch
  local class="$1"; shift
  local conf="$CACHE/kafka-$VERSION/tools-log4j2.properties"
  printf 'status = error\nappender.e.type = Console\nappender.e.name = e\nappender.e.target = SYSTEM_ERR\nappender.e.layout.type = PatternLayout\nappender.e.layout.pattern = %%m%%n\nrootLogger.level = error\nrootLogger.appenderRef.e.ref = e\n' > "$conf"
  java -Xmx512m -Dlog4j2.configurationFile="$conf" -cp "$LIB/*" "org.apache.kafka.tools.$class" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start "${2:?dir}" ;;
  launch) launch "${2:?dir}" ;;
  stop) stop "${2:?dir}" ;;
  tool) shift; tool "$@" ;;
  *) echo "usage: $0 fetch | start <dir> | launch <dir> | stop <dir> | tool <class> <args...>" >&2; exit 2 ;;
esac
