#!/usr/bin/env bash
# crm-sync against a slow CRM: crm-example answering every objects request
# N ms late (--latency-ms, default 50), the topic backfilled by a plugin
# dropped in fresh. Measures crm-sync's events/s and checks the CRM after.
#
#   scripts/kafka.sh start
#   scripts/bench-slow-sink.sh [--latency-ms 50] [--events N] [--partitions 6]
#                              [--concurrency 1,4,16] [--workers W]
#
# It produces N generated booking lifecycles (default 3,000, about 10k
# events) into a fresh P-partition topic (default 6); for each concurrency
# C it starts a fresh crm-example and `plugboard run` with crm-sync alone
# (its manifest says `concurrency = C` when C > 1), from the earliest
# offset, until every event is handled. Reports events/s (from the first
# handled event to the last), the threads the host peaked at, and whether
# the CRM is exact: one record per booking, each at the state and version
# of the booking's last event. --workers sets the host's `workers` (default:
# the cores). Writes target/bench/slow-sink.json. Not part of CI.
# PLUGBOARD_BIN picks another plugboard binary.
set -euo pipefail
cd "$(dirname "$0")/.."
latency=50
lifecycles=3000
partitions=6
concurrency=1,4,16
workers=""
while [ $# -gt 0 ]; do
  case "$1" in
    --latency-ms) latency=$2; shift 2 ;;
    --events) lifecycles=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source scripts/bench-lib.sh
bench_brokers
bench_build crm-sync crm-example

python3 - "$brokers" "$bin" "$lifecycles" "$partitions" "$concurrency" "$latency" "$workers" <<'EOF'
import json, os, shutil, sqlite3, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, "bench/peers")
from harness import free_port, http_get, proc_status, prom_value, stop  # the peer benchmark's helpers

brokers, binary = sys.argv[1], os.path.abspath(sys.argv[2])
lifecycles, partitions = int(sys.argv[3]), int(sys.argv[4])
levels = [int(c) for c in sys.argv[5].split(",")]
latency, workers = int(sys.argv[6]), sys.argv[7]
repo = Path.cwd()
work = Path(tempfile.mkdtemp(prefix="plugboard-slow-sink-"))
topic = f"plugboard-slow-sink-{os.getpid()}"

events_file = work / "events.ndjson"
subprocess.run([binary, "generate", "--bookings", str(lifecycles), "--seed", "3", "--out",
                str(events_file)], check=True)
last = {}
count = 0
for line in events_file.read_text().splitlines():
    e = json.loads(line)
    count += 1
    version = int(e["version"])
    if e["bookingId"] not in last or version > last[e["bookingId"]][0]:
        last[e["bookingId"]] = (version, e["state"])
print(f"==> producing {count} events ({lifecycles} bookings) into {topic} ({partitions} partitions)",
      flush=True)
subprocess.run([binary, "produce", "--brokers", brokers, "--topic", topic, "--events",
                str(events_file), "--partitions", str(partitions)], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def threads(pid):
    return proc_status(pid)["Threads"]

def crm_exact(db):
    """Whether the CRM holds each booking once, at its last event."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT properties FROM objects").fetchall()
    held = {}
    for (props,) in rows:
        p = json.loads(props)
        if p["booking_id"] in held:
            return False, f"booking {p['booking_id']} twice"
        held[p["booking_id"]] = (int(p["booking_version"]), p["booking_state"])
    if set(held) != set(last):
        return False, f"{len(held)} bookings in the CRM, {len(last)} produced"
    for booking, (version, state) in last.items():
        want = state.removeprefix("BOOKING_STATE_").lower().replace("_", "-")
        if held[booking] != (version, want):
            return False, f"{booking}: {held[booking]} instead of {(version, want)}"
    return True, "every booking at its last event"

results = []
for level in levels:
    d = work / f"c{level}"
    (d / "plugins").mkdir(parents=True)
    crm_port, admin = free_port(), free_port()
    crm = subprocess.Popen([str(repo / "target/release/crm-example"), "--listen",
                            f"127.0.0.1:{crm_port}", "--db", str(d / "crm.db"),
                            "--latency-ms", str(latency)],
                           stdout=subprocess.DEVNULL, stderr=open(d / "crm.log", "w"))
    base = f"http://127.0.0.1:{crm_port}"
    for _ in range(200):
        if http_get(f"{base}/stats") is not None:
            break
        time.sleep(0.05)
    shutil.copy(repo / "target/plugins/crm-sync.wasm", d / "plugins" / "crm-sync.wasm")
    manifest = f'allow_hosts = ["{base}"]\n'
    if level > 1:
        manifest += f"concurrency = {level}\n"
    manifest += f'[limits]\nbatch_size = 100\n[config]\nbase_url = "{base}"\n'
    (d / "plugins" / "crm-sync.toml").write_text(manifest)
    workers_line = f"workers = {workers}\n" if workers else ""
    (d / "host.toml").write_text(
        f'plugins_dir = "plugins"\ndata_dir = "state"\nadmin_addr = "127.0.0.1:{admin}"\n'
        f'{workers_line}[kafka]\nbrokers = "{brokers}"\ntopic = "{topic}"\n'
        f'group_prefix = "{topic}.c{level}."\nstart_from = "earliest"\n')
    print(f"==> crm-sync, concurrency {level}, CRM {latency} ms late", flush=True)
    host = subprocess.Popen([binary, "run", "--config", str(d / "host.toml")],
                            env=dict(os.environ, PLUGBOARD_LOG="warn"),
                            stdout=subprocess.DEVNULL, stderr=open(d / "run.log", "w"))
    first = None
    most = 0
    started = time.time()
    try:
        while True:
            if host.poll() is not None:
                sys.exit(f"plugboard exited with {host.returncode}; see {d / 'run.log'}")
            if time.time() - started > 1800:
                sys.exit("not done in 30 minutes")
            most = max(most, threads(host.pid))
            text = http_get(f"http://127.0.0.1:{admin}/metrics", timeout=1)
            done = prom_value(text, "plugboard_events_total", {"outcome": "handled"}) if text else 0
            now = time.time()
            if done and first is None:
                first = now
            if done and done >= count:
                break
            time.sleep(0.1)
    finally:
        stop(host)
        stop(crm)
    # Too few events to time (all in one sample): no rate.
    rate = count / (now - first) if now > first else None
    exact, why = crm_exact(d / "crm.db")
    row = {"concurrency": level, "events": count, "latency_ms": latency,
           "events_per_s": round(rate) if rate else None, "threads": most, "crm_exact": exact, "crm": why}
    print("    " + json.dumps(row), flush=True)
    results.append(row)

Path("target/bench/slow-sink.json").write_text(json.dumps(results, indent=2) + "\n")
base_rate = results[0]["events_per_s"]
print(f"\n{'concurrency':>11} {'events/s':>9} {'x':>6} {'threads':>8}  CRM")
for r in results:
    rate = r["events_per_s"]
    times = f"{rate / base_rate:.1f}" if rate and base_rate else "-"
    print(f"{r['concurrency']:>11} {rate or '-':>9} {times:>6} "
          f"{r['threads']:>8}  {'exact' if r['crm_exact'] else 'NOT exact: ' + r['crm']}")
print("written to target/bench/slow-sink.json")
shutil.rmtree(work, ignore_errors=True)
EOF
