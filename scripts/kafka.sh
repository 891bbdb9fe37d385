#!/usr/bin/env bash
# A real Apache Kafka for development and tests: a single KRaft node
# (broker + controller) on 127.0.0.1.
#
#   scripts/kafka.sh start | stop | status
#
# The jars come from Maven Central through Maven (org.apache.kafka:kafka_2.13
# and its runtime dependencies) and are cached outside the source tree, in
# $PLUGBOARD_KAFKA_CACHE (default ~/.cache/plugboard). Needs Java 17+ and Maven.
#
#   KAFKA_PORT        broker port (default 19092); the controller uses +1
#   KAFKA_VERSION     default 4.1.1
#   PLUGBOARD_KAFKA_DATA  log and state folder (default target/kafka)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=service.sh
. scripts/service.sh

version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-19092}
controller_port=$((port + 1))
cache=${PLUGBOARD_KAFKA_CACHE:-$HOME/.cache/plugboard}/kafka-$version
data=${PLUGBOARD_KAFKA_DATA:-$PWD/target/kafka}
pidfile=$data/kafka.pid
log=$data/server.log

fetch() {
  [ -f "$cache/.complete" ] && return
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka: apt-get install maven" >&2; exit 1; }
  echo "==> fetching Apache Kafka $version from Maven Central into $cache"
  rm -rf "$cache" && mkdir -p "$cache"
  cat >"$cache/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>plugboard</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <!-- Logging to a file: slf4j 2 (other dependencies would pull 1.7) with log4j2. -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.16</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -f "$cache/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$cache/libs" -DincludeScope=runtime
  touch "$cache/.complete"
}


java_cmd() {
  java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$data/log4j2.properties" -cp "$cache/libs/*" "$@"
}

start() {
  if running; then
    echo "kafka already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return
  fi
  fetch
  mkdir -p "$data"
  cat >"$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  cat >"$data/log4j2.properties" <<LOG
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
LOG
  if [ ! -f "$data/logs/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool format --ignore-formatted \
      -t "$(java_cmd kafka.tools.StorageTool random-uuid)" -c "$data/server.properties" >/dev/null
  fi
  echo "==> starting Kafka $version on 127.0.0.1:$port (data in $data)"
  nohup java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$data/log4j2.properties" \
    -cp "$cache/libs/*" kafka.Kafka "$data/server.properties" >"$data/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ! running; then
      echo "kafka.sh: Kafka exited during start-up; see $data/stdout.log and $log" >&2
      exit 1
    fi
    if java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1; then
      echo "kafka ready on 127.0.0.1:$port (pid $(cat "$pidfile"))"
      return
    fi
    sleep 1
  done
  echo "kafka.sh: Kafka did not answer metadata requests within 2 minutes; see $log" >&2
  exit 1
}

stop() {
  stop_service kafka
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "kafka running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "kafka not running"; exit 3; fi ;;
  *) echo "usage: scripts/kafka.sh start|stop|status" >&2; exit 2 ;;
esac
