#!/usr/bin/env bash
# A real schema registry for development and tests: Apicurio Registry with
# its Confluent-compatible API under /apis/ccompat/v7, on 127.0.0.1, its
# schemas kept in an H2 file under the data folder across restarts.
#
#   scripts/registry.sh start | stop | status
#
# The app (io.apicurio:apicurio-registry-app, classifier all, a tar.gz of
# 142 MB) comes from Maven Central through Maven and is cached outside the
# source tree, in $PLUGBOARD_REGISTRY_CACHE (default ~/.cache/plugboard).
# Needs Java 17+ and Maven (Apicurio 3.x needs Java 21). It starts in about
# 4 s on the 2-core development machine.
#
#   REGISTRY_PORT        HTTP port (default 18081)
#   REGISTRY_VERSION     default 2.6.13.Final
#   PLUGBOARD_REGISTRY_DATA  pid, log and H2 folder (default target/registry)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=service.sh
. scripts/service.sh

version=${REGISTRY_VERSION:-2.6.13.Final}
port=${REGISTRY_PORT:-18081}
cache=${PLUGBOARD_REGISTRY_CACHE:-$HOME/.cache/plugboard}/apicurio-$version
data=${PLUGBOARD_REGISTRY_DATA:-$PWD/target/registry}
pidfile=$data/registry.pid
log=$data/registry.log
url=http://127.0.0.1:$port/apis/ccompat/v7

fetch() {
  [ -f "$cache/.complete" ] && return
  command -v mvn >/dev/null || { echo "registry.sh: Maven (mvn) is needed to fetch Apicurio: apt-get install maven" >&2; exit 1; }
  echo "==> fetching Apicurio Registry $version from Maven Central into $cache"
  rm -rf "$cache" && mkdir -p "$cache"
  mvn -q -B dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
    -DoutputDirectory="$cache"
  tar -xzf "$cache/apicurio-registry-app-$version-all.tar.gz" -C "$cache"
  rm "$cache/apicurio-registry-app-$version-all.tar.gz"
  touch "$cache/.complete"
}


answers() {
  curl -sf -o /dev/null "$url/subjects"
}

start() {
  if running; then
    echo "registry already running (pid $(cat "$pidfile")) on $url"
    return
  fi
  fetch
  mkdir -p "$data"
  echo "==> starting Apicurio Registry $version on 127.0.0.1:$port"
  # H2 in a file, so a restarted registry still knows every schema, as a
  # real one does.
  REGISTRY_DATASOURCE_URL="jdbc:h2:file:$data/db/registry;DB_CLOSE_ON_EXIT=FALSE" \
    nohup java -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -jar "$cache/apicurio-registry-app-$version-runner.jar" >"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    if ! running; then
      echo "registry.sh: the registry exited during start-up; see $log" >&2
      exit 1
    fi
    if answers; then
      echo "registry ready on $url (pid $(cat "$pidfile"))"
      return
    fi
    sleep 0.5
  done
  echo "registry.sh: the registry did not answer within a minute; see $log" >&2
  exit 1
}

stop() {
  stop_service registry
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "registry running (pid $(cat "$pidfile")) on $url"; else echo "registry not running"; exit 3; fi ;;
  *) echo "usage: scripts/registry.sh start|stop|status" >&2; exit 2 ;;
esac
