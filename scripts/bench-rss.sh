#!/usr/bin/env bash
# How much memory plugboard holds with the three demo plugins (crm-sync,
# data-lake, metrics) on Kafka, measured from /proc: through a catch-up,
# once the topic is drained, and while events keep coming.
#
#   scripts/kafka.sh start
#   scripts/bench-rss.sh [--events N] [--partitions P] [--seconds S] [--rate R] [--cold]
#
# It produces N generated booking lifecycles (default 50,000, about 150k
# events) into a fresh P-partition topic (default 6), starts crm-example on
# a free port, and runs `plugboard run` with examples/demo/plugins in fresh
# consumer groups from the earliest offset. Phases:
#   catch-up  from start until all three plugins are at lag 0 (peak RSS)
#   drained   S seconds (default 30) with nothing to consume
#   flowing   S seconds while R booking lifecycles a second (default 100,
#             about 300 events/s) are produced
# RSS is sampled every 250 ms; each phase reports its last and its highest
# sample, and the process's peak (VmHWM). Prints a table and writes
# target/bench/rss.json. The component cache is warmed by a first short
# run unless --cold, so the figures are those of a host restarted with its
# cache (a cold start compiles, which costs memory of its own). Not part
# of CI. PLUGBOARD_BIN picks another plugboard binary (an older build, to
# compare).
set -euo pipefail
cd "$(dirname "$0")/.."
lifecycles=50000
partitions=6
seconds=30
rate=100
cold=0
while [ $# -gt 0 ]; do
  case "$1" in
    --events) lifecycles=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --cold) cold=1; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source scripts/bench-lib.sh
bench_brokers
bench_build "crm-sync data-lake metrics" crm-example

python3 - "$brokers" "$bin" "$lifecycles" "$partitions" "$seconds" "$rate" "$cold" <<'EOF'
import json, os, shutil, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, "bench/peers")
from harness import free_port, http_get, prom_value, stop  # the peer benchmark's helpers
from harness import proc_status as status

brokers, binary = sys.argv[1], os.path.abspath(sys.argv[2])
lifecycles, partitions, seconds, rate, cold = (int(a) for a in sys.argv[3:8])
repo = Path.cwd()
work = Path(tempfile.mkdtemp(prefix="plugboard-rss-"))
topic = f"plugboard-rss-{os.getpid()}"
PLUGINS = ("crm-sync", "data-lake", "metrics")

def produce(n, seed):
    subprocess.run([binary, "produce", "--brokers", brokers, "--topic", topic, "--generate",
                    str(n), "--seed", str(seed), "--partitions", str(partitions)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

print(f"==> producing {lifecycles} booking lifecycles into {topic} ({partitions} partitions)")
produce(lifecycles, 1)

crm_port = free_port()
crm = subprocess.Popen([str(repo / "target/release/crm-example"), "--listen", f"127.0.0.1:{crm_port}",
                        "--db", str(work / "crm.db")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
plugins = work / "plugins"
plugins.mkdir()
for p in PLUGINS:
    shutil.copy(repo / "examples/demo/plugins" / f"{p}.toml", plugins)
    shutil.copy(repo / "target/plugins" / f"{p}.wasm", plugins)
admin = free_port()
env = dict(os.environ, PLUGBOARD_LOG="warn", PLUGBOARD_CRM_URL=f"http://127.0.0.1:{crm_port}",
           PLUGBOARD_LAKE_DIR=str(work / "lake"))

def config(group):
    path = work / f"{group}.toml"
    path.write_text(f'plugins_dir = "plugins"\ndata_dir = "state"\nadmin_addr = "127.0.0.1:{admin}"\n'
                    f'[kafka]\nbrokers = "{brokers}"\ntopic = "{topic}"\ngroup_prefix = "{topic}.{group}."\n')
    return path

def lags():
    """Each plugin's consumer lag, once its first statistics are in."""
    text = http_get(f"http://127.0.0.1:{admin}/metrics", timeout=1)
    return {p: prom_value(text, "plugboard_consumer_lag", {"plugin": p})
            for p in PLUGINS if text and any(
                l.startswith("plugboard_consumer_lag{") and f'plugin="{p}"' in l
                for l in text.splitlines())}

warm = host = None
try:
    if not cold:
        print("==> warming the component cache")
        warm = subprocess.Popen([binary, "run", "--config", str(config("warm"))], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "warm.log", "w"))
        deadline = time.time() + 120
        while time.time() < deadline and len(lags()) < len(PLUGINS):
            time.sleep(0.2)
        stop(warm)
        shutil.rmtree(work / "lake", ignore_errors=True)

    print(f"==> running the three demo plugins")
    host = subprocess.Popen([binary, "run", "--config", str(config("run"))], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / "run.log", "w"))
    samples = []  # (phase, rss_kb, threads)
    def sample(phase):
        s = status(host.pid)
        samples.append((phase, s["VmRSS"], s["Threads"]))
        return s
    started = time.time()
    drained_at = None
    while drained_at is None:
        if host.poll() is not None:
            sys.exit(f"plugboard exited with {host.returncode}; see {work / 'run.log'}")
        if time.time() - started > 900:
            sys.exit("the topic did not drain in 15 minutes")
        sample("catch-up")
        lag = lags()
        if len(lag) == len(PLUGINS) and all(v == 0 for v in lag.values()) and time.time() - started > 2:
            drained_at = time.time()
        time.sleep(0.25)
    catch_up_hwm = status(host.pid)["VmHWM"]
    end = time.time() + seconds
    while time.time() < end:
        sample("drained")
        time.sleep(0.25)

    done = threading.Event()
    def trickle():
        seed = 2
        while not done.is_set():
            began = time.time()
            produce(rate, seed)
            seed += 1
            done.wait(max(0.0, 1.0 - (time.time() - began)))
    producer = threading.Thread(target=trickle)
    producer.start()
    end = time.time() + seconds
    while time.time() < end:
        sample("flowing")
        time.sleep(0.25)
    done.set()
    producer.join()
    final = status(host.pid)
    lag = lags()
finally:
    for proc in (warm, host, crm):
        stop(proc)

mb = lambda kb: round(kb / 1024, 1)
rows = []
for phase in ("catch-up", "drained", "flowing"):
    rss = [r for p, r, _ in samples if p == phase]
    threads = [t for p, _, t in samples if p == phase]
    rows.append({"phase": phase, "seconds": round(len(rss) * 0.25, 1), "last_rss_mib": mb(rss[-1]),
                 "max_rss_mib": mb(max(rss)), "median_rss_mib": mb(statistics.median(rss)),
                 "threads": threads[-1]})
result = {"partitions": partitions, "cache": "cold" if cold else "warm",
          "catch_up_s": round(drained_at - started, 1), "peak_rss_mib": mb(final["VmHWM"]),
          "catch_up_peak_rss_mib": mb(catch_up_hwm), "lag_at_end": lag, "phases": rows}
Path("target/bench/rss.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"\n{partitions} partitions, {'cold' if cold else 'warm'} component cache; "
      f"caught up in {result['catch_up_s']} s; peak RSS (VmHWM) {result['peak_rss_mib']} MiB")
print(f"{'phase':<10} {'seconds':>8} {'last MiB':>9} {'median MiB':>11} {'max MiB':>8} {'threads':>8}")
for r in rows:
    print(f"{r['phase']:<10} {r['seconds']:>8} {r['last_rss_mib']:>9} {r['median_rss_mib']:>11} "
          f"{r['max_rss_mib']:>8} {r['threads']:>8}")
print("written to target/bench/rss.json")
shutil.rmtree(work, ignore_errors=True)
EOF
