#!/usr/bin/env bash
# The peer benchmark: plugboard beside a bare consumer, Kafka Connect and
# Benthos, on the same topic and the same jobs. Not part of CI (it takes
# minutes and downloads the peers); rerun it on any machine:
#
#   scripts/kafka.sh start
#   scripts/bench-peers.sh [--events N] [--systems bare,plugboard,connect,benthos] [--jobs decode,file,http]
#                          [--scaling-events M] [--registry URL]
#
# It produces N booking events (default 1,000,000) once, as protobuf, into a
# fresh 6-partition topic, then runs every system on every job it can do,
# each in a fresh consumer group from the earliest offset:
#   decode  consume, decode, discard
#   file    one JSON line per event to a file
#   http    batched POSTs to crm-example's batch upsert (HubSpot's shape)
# and prints a table and writes target/bench/peers.json (see
# bench/peers/harness.py for how each figure is measured).
#
# Then it measures how plugboard scales: events/s against partitions (1, 2,
# 6, 12; topics of M events, default N/5, beside the bare consumer) and
# against plugins (1, 3, 10 no-op plugins on the N-event topic), written to
# target/bench/scaling.json and drawn in target/bench/scaling.svg.
#
# The systems:
#   bare rdkafka+prost  the limit: host/examples/bare_consumer.rs
#   plugboard           noop (decode), plugins/jsonl-sink (file), crm-sync (http)
#   Kafka Connect 4.1.2 standalone, from Maven Central (bench/peers/connect/pom.xml):
#                       FileStreamSinkConnector (file), the HTTP sink in
#                       bench/peers/connect/src (http), both on raw bytes
#                       (ByteArrayConverter); the decode job with
#                       BookingConverter (the booking parsed by
#                       protoc-generated classes) into a discarding sink;
#                       the file job again with
#                       BookingJsonConverter (bench/peers/connect/src: the
#                       booking decoded by protoc-generated classes and
#                       printed as proto3 JSON by protobuf-java-util), the
#                       same work as plugboard's and Benthos' file jobs,
#                       and the http job again with BookingSyncTask
#                       (the same classes): crm-sync's work, the newest
#                       version of each booking read from the CRM
#                       (batch/read) before the newer ones are upserted
#   Benthos 4.27.0      the MIT core of Redpanda Connect, built from
#                       bench/peers/benthos/main.go: kafka_franz, protobuf
#                       to JSON, drop / file / http_client; and the http
#                       job again with crm-sync's work, a batch/read in a
#                       branch before the upsert (one pipeline thread:
#                       --systems benthos_sync_6threads runs it with six,
#                       which leaves older versions in the CRM)
#
# After the http job it compares the CRMs the rows that read versions left
# behind (plugboard, Connect and Benthos): the same bookings with the same
# properties, or what differs.
#
# With --registry (scripts/registry.sh start), plugboard's decode job also
# runs on the same events framed with the registry id of booking.v1 (the
# fast path behind a schema lookup) and with the id of the evolved schema
# host/tests/schema/booking_v2.proto, for a plugin asking for extensions
# (every event decoded dynamically with the writer's descriptor).
#
# The peers are cached outside the source tree, in
# ${PLUGBOARD_PEERS_CACHE:-~/.cache/plugboard/peers}; needs java and mvn
# (Connect), go (Benthos) and python3 (the harness).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

events=1000000
scaling=
systems=bare,plugboard,connect,benthos
jobs=decode,file,http
registry=
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --scaling-events) scaling=$2; shift 2 ;;
    --registry) registry=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

brokers=${PLUGBOARD_BENCH_BROKERS:-127.0.0.1:19092}
cache=${PLUGBOARD_PEERS_CACHE:-$HOME/.cache/plugboard/peers}
mkdir -p "$cache" target/bench

if ! (exec 3<>"/dev/tcp/${brokers%:*}/${brokers#*:}") 2>/dev/null; then
  echo "no Kafka broker at $brokers: run scripts/kafka.sh start (or set PLUGBOARD_BENCH_BROKERS)" >&2
  exit 1
fi

echo "==> building plugboard, the bare consumer and crm-example (release)"
cargo build --release --locked -p plugboard -p crm-example --example bare_consumer --example plot_scaling --bins -q
if [ ! -f target/plugins/jsonl-sink.wasm ] || [ ! -f target/plugins/crm-sync.wasm ]; then
  PLUGBOARD_SKIP_JS=1 scripts/build-plugins.sh >/dev/null
fi

connect_libs=$cache/connect-4.1.2/libs
if [[ ",$systems," == *,connect,* ]]; then
  if [ ! -f "$connect_libs/connect-runtime-4.1.2.jar" ]; then
    echo "==> fetching Kafka Connect 4.1.2 and its dependencies from Maven Central"
    (cd bench/peers/connect && mvn -B -q dependency:copy-dependencies -DoutputDirectory="$connect_libs")
  fi
  protoc=$cache/protoc-4.36.2/protoc-4.36.2-linux-x86_64.exe
  if [ ! -x "$protoc" ]; then
    echo "==> fetching protoc 4.36.2 from Maven Central"
    (cd bench/peers/connect && mvn -B -q dependency:copy \
      -Dartifact=com.google.protobuf:protoc:4.36.2:exe:linux-x86_64 -DoutputDirectory="$cache/protoc-4.36.2")
    chmod +x "$protoc"
  fi
  echo "==> generating the booking's Java classes; compiling the Connect sinks and converters"
  rm -rf "$cache/connect-classes" "$cache/connect-gen" && mkdir -p "$cache/connect-classes" "$cache/connect-gen/wkt"
  # The well-known types' .proto files travel in protobuf-java's jar.
  (cd "$cache/connect-gen/wkt" && unzip -o -q "$connect_libs/protobuf-java-4.36.2.jar" 'google/protobuf/*.proto')
  "$protoc" --java_out="$cache/connect-gen" -I proto -I "$cache/connect-gen/wkt" proto/booking/v1/booking.proto
  javac -nowarn -d "$cache/connect-classes" -cp "$connect_libs/*" \
    "$cache/connect-gen/booking/v1/Booking.java" bench/peers/connect/src/plugboard/bench/*.java
fi

benthos=$cache/benthos-4.27.0
if [[ ",$systems," == *,benthos,* ]] && [ ! -x "$benthos" ]; then
  echo "==> building Benthos 4.27.0 (github.com/benthosdev/benthos/v4, MIT)"
  # parquet-go, linked in by pure/extended, reaches into the runtime by
  # linkname; Go 1.26 refuses that unless told otherwise.
  (cd bench/peers/benthos && go build -ldflags=-checklinkname=0 -o "$benthos" .)
fi

# ~3.6 events per generated booking; produce whole lifecycles, then count.
topic=plugboard-peers-$(date +%s)
bookings=$(( (events * 10 + 35) / 36 ))
echo "==> producing ~$events events ($bookings bookings) into $topic (6 partitions)"
report=$(target/release/plugboard produce --brokers "$brokers" --topic "$topic" --generate "$bookings" --partitions 6)
echo "    $report"
count=$(echo "$report" | sed -n 's/^published \([0-9]*\) messages.*/\1/p')
scaling=${scaling:-$((events / 5))}
schema_args=()
if [ -n "$registry" ]; then
  for v in v1 v2; do
    schema=()
    [ $v = v2 ] && schema=(--schema host/tests/schema/booking_v2.proto)
    echo "==> producing the same events framed with the registry id of $v into $topic-$v"
    target/release/plugboard produce --brokers "$brokers" --topic "$topic-$v" --generate "$bookings" \
      --partitions 6 --registry "$registry" "${schema[@]}" >/dev/null
  done
  schema_args=(--registry "$registry" --topic-v1 "$topic-v1" --topic-v2 "$topic-v2")
fi

python3 bench/peers/harness.py \
  --brokers "$brokers" --topic "$topic" --events "$count" \
  --systems "$systems" --jobs "$jobs" \
  --scaling-events "$scaling" --plot target/release/examples/plot_scaling \
  --work target/bench/peers --out target/bench \
  --plugboard target/release/plugboard --bare target/release/examples/bare_consumer \
  --crm target/release/crm-example --plugins target/plugins --state target/bench/peers-state \
  --java "$(command -v java || echo java)" --connect-libs "$connect_libs" \
  --connect-classes "$cache/connect-classes" --benthos "$benthos" --proto "$repo/proto" \
  "${schema_args[@]}"
