#!/usr/bin/env bash
# A soak: steady production into a fresh topic while one host runs the three
# demo plugins (crm-sync against the example CRM, data-lake, metrics); each
# plugin is reloaded once in the first half. Every 10 s the host's RSS, open
# files and threads, and its lag and handled count, go into a CSV; at the
# end a PNG chart, the slopes (per hour, over the second half, after
# warm-up) and a verdict. Needs the release build and the plugins
# (scripts/test.sh builds both) and Kafka (started here if not running).
#
#   scripts/soak.sh [--minutes M] [--rate R]     (default 10 min, 500 events/s)
#
# Output in target/soak/: soak.csv, soak.png, summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
rate=500
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--minutes M] [--rate R]" >&2; exit 2 ;;
  esac
done

bin=target/release/plugboard
crm_bin=target/release/crm-example
for f in "$bin" "$crm_bin" target/plugins/crm-sync.wasm target/plugins/metrics.wasm target/plugins/data-lake.wasm; do
  [ -e "$f" ] || { echo "soak.sh: $f is missing: run scripts/build-plugins.sh and cargo build --release --workspace --bins" >&2; exit 1; }
done
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/pip install --quiet --disable-pip-version-check matplotlib==3.10.7

port=${KAFKA_PORT:-19092}
brokers=127.0.0.1:$port
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
fi

out=target/soak
rm -rf "$out" && mkdir -p "$out/plugins" "$out/lake" "$out/chunks"
topic="soak-$(date +%s)"
crm_port=$((20000 + RANDOM % 20000))
admin_port=$((40000 + RANDOM % 20000))

"$crm_bin" --listen "127.0.0.1:$crm_port" --db "$out/crm.db" --token soak >"$out/crm.log" 2>&1 &
crm_pid=$!
cp target/plugins/{crm-sync,metrics,data-lake}.wasm "$out/plugins/"
cat >"$out/plugins/crm-sync.toml" <<EOF
allow_hosts = ["http://127.0.0.1:$crm_port"]
[config]
base_url = "http://127.0.0.1:$crm_port"
token = "soak"
EOF
cat >"$out/plugins/data-lake.toml" <<EOF
[folder]
path = "../lake"
[config]
dir = "/data"
EOF
: >"$out/plugins/metrics.toml"
cat >"$out/plugboard.toml" <<EOF
plugins_dir = "plugins"
data_dir = "state"
admin_addr = "127.0.0.1:$admin_port"
[limits]
batch_size = 200
[kafka]
brokers = "$brokers"
topic = "$topic"
group_prefix = "soak."
commit_interval_ms = 1000
EOF

# Events for the whole run, produced a second's worth at a time.
total=$((minutes * 60 * rate))
bookings=$((total / 3 + 1))
echo "==> generating ~$total events ($bookings bookings)"
"$bin" generate --bookings "$bookings" --seed 11 --out "$out/events.ndjson"
split -l "$rate" -d -a 6 "$out/events.ndjson" "$out/chunks/c"

PLUGBOARD_LOG=warn "$bin" run --config "$out/plugboard.toml" --metrics-out "$out/final.prom" >"$out/host.log" 2>&1 &
host_pid=$!
cleanup() {
  kill "$host_pid" "$crm_pid" 2>/dev/null || true
  [ -n "${producer_pid:-}" ] && kill "$producer_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

echo "==> producing $rate events/s for $minutes min into $topic"
(
  for chunk in "$out"/chunks/c*; do
    began=$(date +%s.%N)
    "$bin" produce --brokers "$brokers" --topic "$topic" --events "$chunk" >/dev/null
    left=$(echo "1 - ($(date +%s.%N) - $began)" | bc)
    if [ "$(echo "$left > 0" | bc)" = 1 ]; then sleep "$left"; fi
  done
) &
producer_pid=$!

metric() {
  curl -fs "http://127.0.0.1:$admin_port/metrics" | awk -v name="$1" -v plugin="$2" \
    'index($0, name "{") == 1 && index($0, "plugin=\"" plugin "\"") && (index($0, "outcome=\"handled\"") || name != "plugboard_events_total") {sum += $NF} END {print sum + 0}'
}

echo "seconds,rss_kb,open_files,threads,lag_crm,lag_lake,lag_metrics,handled_crm,handled_lake,handled_metrics" >"$out/soak.csv"
start=$(date +%s)
end=$((start + minutes * 60))
reloaded=0
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(($(date +%s) - start))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$host_pid/status")
  threads=$(awk '/Threads/ {print $2}' "/proc/$host_pid/status")
  files=$(ls "/proc/$host_pid/fd" | wc -l)
  echo "$now,$rss,$files,$threads,$(metric plugboard_consumer_lag crm-sync),$(metric plugboard_consumer_lag data-lake),$(metric plugboard_consumer_lag metrics),$(metric plugboard_events_total crm-sync),$(metric plugboard_events_total data-lake),$(metric plugboard_events_total metrics)" >>"$out/soak.csv"
  # One reload of each plugin in the first half (a changed manifest is a new
  # version), so the second half, where the slopes are taken, is steady.
  for i in 1 2 3; do
    plugin=$(echo crm-sync data-lake metrics | cut -d' ' -f$i)
    if [ "$reloaded" -lt "$i" ] && [ "$now" -ge $((minutes * 60 * i / 8)) ]; then
      echo "# reloaded at $now s" >>"$out/plugins/$plugin.toml"
      echo "==> $now s: reloaded $plugin"
      reloaded=$i
    fi
  done
  tail -n 1 "$out/soak.csv"
  sleep 10
done
wait "$producer_pid" 2>/dev/null || true
kill -TERM "$host_pid"
wait "$host_pid" || echo "soak.sh: the host exited with $?" >&2

target/pyenv/bin/python - "$out" "$minutes" "$rate" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, minutes, rate = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(f"{out}/soak.csv")))
t = [int(r["seconds"]) for r in rows]

def slope(key):
    half = [(x, float(r[key])) for x, r in zip(t, rows)][len(rows) // 2:]
    n = len(half)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in half) / n
    my = sum(y for _, y in half) / n
    den = sum((x - mx) ** 2 for x, _ in half) or 1
    return sum((x - mx) * (y - my) for x, y in half) / den * 3600

fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
axes[0].plot(t, [int(r["rss_kb"]) / 1024 for r in rows]); axes[0].set_ylabel("RSS (MB)")
axes[1].plot(t, [int(r["open_files"]) for r in rows], label="open files")
axes[1].plot(t, [int(r["threads"]) for r in rows], label="threads"); axes[1].legend()
for p in ["crm", "lake", "metrics"]:
    axes[2].plot(t, [int(float(r[f"lag_{p}"])) for r in rows], label=f"lag {p}")
axes[2].set_ylabel("lag (events)"); axes[2].legend(); axes[2].set_xlabel("seconds")
fig.suptitle(f"plugboard soak: {minutes} min at {rate} events/s, 3 plugins, 1 reload each")
fig.tight_layout(); fig.savefig(f"{out}/soak.png", dpi=90)

rss, files, threads = slope("rss_kb") / 1024, slope("open_files"), slope("threads")
last = rows[-1]
lines = [
    f"samples: {len(rows)} over {t[-1]} s",
    f"RSS: {int(rows[0]['rss_kb'])//1024} MB at start, {int(last['rss_kb'])//1024} MB at end; slope over the second half {rss:+.1f} MB/h",
    f"open files: slope {files:+.1f}/h; threads: slope {threads:+.1f}/h",
    f"handled: crm {last['handled_crm']}, lake {last['handled_lake']}, metrics {last['handled_metrics']}",
]
ok = abs(files) < 5 and abs(threads) < 5 and rss < 50
lines.append("verdict: " + ("steady (no growth in memory, files or threads)" if ok else "GROWING: look at the chart"))
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "chart: $out/soak.png, samples: $out/soak.csv"
