# What the single-host benchmarks (bench-rss, bench-scale, bench-slow-sink)
# share, sourced from the repository's root: a broker that answers, and
# the binaries and plugins they run.

# Sets `brokers` (PLUGBOARD_BENCH_BROKERS, default the project's broker)
# and exits unless it accepts connections.
bench_brokers() {
  brokers=${PLUGBOARD_BENCH_BROKERS:-127.0.0.1:19092}
  if ! (exec 3<>"/dev/tcp/${brokers%:*}/${brokers#*:}") 2>/dev/null; then
    echo "no Kafka broker at $brokers: run scripts/kafka.sh start (or set PLUGBOARD_BENCH_BROKERS)" >&2
    exit 1
  fi
}

# Sets `bin` (PLUGBOARD_BIN, an older build to compare, or this tree's),
# builds this tree's plugboard unless PLUGBOARD_BIN is set, the other
# crates named after the first argument (crm-example), and the plugins if
# one named in the first argument (space-separated) is missing from
# target/plugins; makes target/bench.
bench_build() {
  local plugins=$1
  shift
  local crates=("$@")
  bin=${PLUGBOARD_BIN:-target/release/plugboard}
  [ -n "${PLUGBOARD_BIN:-}" ] || crates=(plugboard "${crates[@]}")
  if [ ${#crates[@]} -gt 0 ]; then
    echo "==> building ${crates[*]} (release)"
    cargo build --release --locked --bins -q "${crates[@]/#/--package=}"
  fi
  local plugin
  for plugin in $plugins; do
    [ -f "target/plugins/$plugin.wasm" ] || { PLUGBOARD_SKIP_JS=1 scripts/build-plugins.sh >/dev/null; break; }
  done
  mkdir -p target/bench
}
