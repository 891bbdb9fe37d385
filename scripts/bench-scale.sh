#!/usr/bin/env bash
# How plugboard scales with the number of plugins and partitions: N no-op
# plugins (each in its own consumer group) on a P-partition topic, measured
# from /proc and the admin endpoint.
#
#   scripts/kafka.sh start
#   scripts/bench-scale.sh [--plugins 1,5,20] [--partitions 6,24] [--events N]
#                          [--seconds S] [--config-extra 'workers = 4']
#                          [--kafka-extra 'fetch_budget_mb = 64']
#
# For each P it produces N generated booking lifecycles (default 20,000,
# about 60k events) into a fresh topic; for each plugin count it starts
# `plugboard run` with that many copies of the no-op fixture (noop-1 ...),
# fresh groups from the earliest offset, and reports:
#   threads      the process's threads, highest sample
#   peak MiB     VmHWM through the catch-up (every plugin at its end)
#   steady MiB   RSS after S seconds (default 20) with nothing to consume
#   events/s     events handled by all plugins together / catch-up time
#                (from the first handled event to the last)
#   and, in the JSON, the threads by name once steady (where they go)
# Samples every 100 ms. Writes target/bench/scale.json. Not part of CI.
# PLUGBOARD_BIN picks another plugboard binary (an older build, to compare);
# --config-extra adds top-level lines to the host config (e.g. `workers`),
# --kafka-extra lines to its [kafka] table.
set -euo pipefail
cd "$(dirname "$0")/.."
plugin_counts=1,5,20
partition_counts=6,24
lifecycles=20000
seconds=20
extra=""
kafka_extra=""
while [ $# -gt 0 ]; do
  case "$1" in
    --plugins) plugin_counts=$2; shift 2 ;;
    --partitions) partition_counts=$2; shift 2 ;;
    --events) lifecycles=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --config-extra) extra=$2; shift 2 ;;
    --kafka-extra) kafka_extra=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source scripts/bench-lib.sh
bench_brokers
bench_build noop

python3 - "$brokers" "$bin" "$lifecycles" "$plugin_counts" "$partition_counts" "$seconds" "$extra" "$kafka_extra" <<'EOF'
import json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, "bench/peers")
from harness import free_port, http_get, prom_value, stop  # the peer benchmark's helpers
from harness import proc_status as status

brokers, binary = sys.argv[1], os.path.abspath(sys.argv[2])
lifecycles = int(sys.argv[3])
plugin_counts = [int(n) for n in sys.argv[4].split(",")]
partition_counts = [int(n) for n in sys.argv[5].split(",")]
seconds, extra, kafka_extra = int(sys.argv[6]), sys.argv[7], sys.argv[8]
repo = Path.cwd()
work = Path(tempfile.mkdtemp(prefix="plugboard-scale-"))

def handled(admin):
    text = http_get(f"http://127.0.0.1:{admin}/metrics", timeout=1)
    if not text:
        return 0
    return prom_value(text, "plugboard_events_total", {"outcome": "handled"}) or 0

def thread_names(pid):
    """The process's threads by name, digits folded (rdk:broker1 -> rdk:broker#)."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = re.sub(r"\d+", "#", (task / "comm").read_text().strip())
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items(), key=lambda kv: -kv[1]))

runs = []

def run(topic, events, plugins, partitions):
    runs.append(None)
    d = work / f"run-{len(runs)}"
    (d / "plugins").mkdir(parents=True)
    for i in range(1, plugins + 1):
        shutil.copy(repo / "target/plugins/noop.wasm", d / "plugins" / f"noop-{i}.wasm")
    admin = free_port()
    group = f"{topic}.{plugins}.{int(time.time())}."
    (d / "host.toml").write_text(
        f'plugins_dir = "plugins"\ndata_dir = "state"\nadmin_addr = "127.0.0.1:{admin}"\n{extra}\n'
        f'[kafka]\nbrokers = "{brokers}"\ntopic = "{topic}"\ngroup_prefix = "{group}"\n'
        f'start_from = "earliest"\n{kafka_extra}\n')
    env = dict(os.environ, PLUGBOARD_LOG="warn")
    log = open(d / "run.log", "w")
    host = subprocess.Popen([binary, "run", "--config", str(d / "host.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    want = events * plugins
    threads = 0
    first = last = None
    started = time.time()
    try:
        while True:
            if host.poll() is not None:
                sys.exit(f"plugboard exited with {host.returncode}; see {d / 'run.log'}")
            if time.time() - started > 900:
                sys.exit(f"{plugins} plugins x {partitions} partitions: not caught up in 15 minutes")
            s = status(host.pid)
            threads = max(threads, s["Threads"])
            done = handled(admin)
            now = time.time()
            if done > 0 and first is None:
                first = now
            if done >= want:
                last = now
                break
            time.sleep(0.1)
        peak = status(host.pid)["VmHWM"]
        end = time.time() + seconds
        while time.time() < end:
            threads = max(threads, status(host.pid)["Threads"])
            time.sleep(0.1)
        steady = status(host.pid)["VmRSS"]
        names = thread_names(host.pid)
    finally:
        stop(host)
        log.close()
    rate = want / (last - first) if last > first else None
    return {"plugins": plugins, "partitions": partitions, "events": events,
            "threads": threads, "catch_up_peak_mib": round(peak / 1024, 1),
            "steady_rss_mib": round(steady / 1024, 1),
            "events_per_s": round(rate) if rate else None,
            "catch_up_s": round(last - started, 1), "steady_threads_by_name": names}

# The component cache is warmed once, so no row pays a compile.
results = []
for partitions in partition_counts:
    topic = f"plugboard-scale-{os.getpid()}-p{partitions}"
    print(f"==> producing {lifecycles} booking lifecycles into {topic} ({partitions} partitions)",
          flush=True)
    out = subprocess.run([binary, "produce", "--brokers", brokers, "--topic", topic, "--generate",
                          str(lifecycles), "--seed", "1", "--partitions", str(partitions)],
                         check=True, capture_output=True, text=True)
    found = re.search(r"published (\d+) messages", out.stdout + out.stderr)
    events = int(found.group(1)) if found else None
    if events is None:
        sys.exit(f"cannot tell how many events were produced: {out.stdout} {out.stderr}")
    if not results:
        run(topic, events, 1, partitions)  # warms the component cache
    for plugins in plugin_counts:
        print(f"==> {plugins} no-op plugins x {partitions} partitions ({events} events each)",
              flush=True)
        row = run(topic, events, plugins, partitions)
        print("    " + json.dumps(row), flush=True)
        results.append(row)

Path("target/bench/scale.json").write_text(json.dumps(results, indent=2) + "\n")
print(f"\n{'plugins':>7} {'partitions':>10} {'threads':>8} {'peak MiB':>9} {'steady MiB':>11} "
      f"{'events/s':>9}")
for r in results:
    print(f"{r['plugins']:>7} {r['partitions']:>10} {r['threads']:>8} {r['catch_up_peak_mib']:>9} "
          f"{r['steady_rss_mib']:>11} {r['events_per_s'] or '-':>9}")
print("written to target/bench/scale.json")
shutil.rmtree(work, ignore_errors=True)
EOF
