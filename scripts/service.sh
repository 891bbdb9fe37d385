# What scripts/kafka.sh and scripts/registry.sh share: a Java service run
# in the background, its pid in $pidfile. Sourced, not run.

# Whether the service whose pid is in $pidfile runs.
running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Stops the service named $1: SIGTERM, then SIGKILL after 30 s.
stop_service() {
  local name=$1 pid
  if ! running; then
    echo "$name not running"
    rm -f "$pidfile"
    return
  fi
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "$name stopped"; return; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "$name killed after 30 s"
}
