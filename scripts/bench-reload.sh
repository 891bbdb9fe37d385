#!/usr/bin/env bash
# How long a plugin file takes to serve after it lands in the plugins
# folder, measured from outside: a running `plugboard run` on Kafka, a new
# version of crm-sync written into the folder the way `cp` writes it, and
# `/plugins` polled every 2 ms until it reports the new sha256.
#
#   scripts/kafka.sh start
#   scripts/bench-reload.sh [--rounds N]
#
# "changed": a version never seen before (crm-sync with a custom section of
# random bytes appended, so the host compiles it). "cached": a version
# served before, whose compiled code is in the host's cache. Prints every
# round and the median of each; not part of CI. PLUGBOARD_BIN picks another
# plugboard binary (an older build, to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=7
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
brokers=${PLUGBOARD_BENCH_BROKERS:-127.0.0.1:19092}
bin=${PLUGBOARD_BIN:-target/release/plugboard}
[ -n "${PLUGBOARD_BIN:-}" ] || cargo build --release --locked -p plugboard -q
[ -f target/plugins/crm-sync.wasm ] || PLUGBOARD_SKIP_JS=1 scripts/build-plugins.sh >/dev/null

python3 - "$brokers" "$rounds" "$bin" <<'EOF'
import hashlib, json, os, random, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

brokers, rounds, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3]
work = Path(tempfile.mkdtemp(prefix="plugboard-reload-"))
plugins = work / "plugins"
plugins.mkdir()
original = Path("target/plugins/crm-sync.wasm").read_bytes()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
(plugins / "crm-sync.toml").write_text(
    'allow_hosts = ["http://127.0.0.1:9"]\n[config]\nbase_url = "http://127.0.0.1:9"\n')
(plugins / "crm-sync.wasm").write_bytes(original)
topic = f"plugboard-reload-{os.getpid()}"
(work / "plugboard.toml").write_text(
    f'plugins_dir = "plugins"\ndata_dir = "state"\nadmin_addr = "127.0.0.1:{port}"\n'
    f'[kafka]\nbrokers = "{brokers}"\ntopic = "{topic}"\n')
host = subprocess.Popen([binary, "run", "--config", str(work / "plugboard.toml")],
                        stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"),
                        env=dict(os.environ, PLUGBOARD_LOG="warn"))

def serving():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/plugins", timeout=1) as r:
            plugins = json.load(r)["plugins"]
        return next((p.get("sha256") for p in plugins if p["name"] == "crm-sync"), None)
    except Exception:
        return None

def variant():
    """crm-sync with a custom section of random bytes at the end: the same
    plugin, a new sha256, so the host compiles it."""
    name, payload = b"bench", os.urandom(32)
    body = bytes([len(name)]) + name + payload
    return original + b"\x00" + bytes([len(body)]) + body

def land(data, timeout=30):
    want = hashlib.sha256(data).hexdigest()
    started = time.perf_counter()
    with open(plugins / "crm-sync.wasm", "wb") as f:  # as cp writes it
        f.write(data)
    while serving() != want:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"version {want[:12]} not serving after {timeout} s; see {work / 'log'}")
        time.sleep(0.002)
    return (time.perf_counter() - started) * 1000

try:
    deadline = time.time() + 60
    while serving() != hashlib.sha256(original).hexdigest():
        if time.time() > deadline or host.poll() is not None:
            raise SystemExit(f"plugboard did not start; see {work / 'log'}")
        time.sleep(0.05)
    time.sleep(1)
    changed, cached, seen = [], [], [original]
    for i in range(rounds):
        data = variant()
        changed.append(land(data))
        seen.append(data)
        print(f"round {i + 1}: changed version serving after {changed[-1]:7.1f} ms", flush=True)
        time.sleep(0.5)
        old = random.choice(seen[:-1])
        cached.append(land(old))
        print(f"round {i + 1}: cached version serving after  {cached[-1]:7.1f} ms", flush=True)
        time.sleep(0.5)
    print(f"median over {rounds} rounds: changed {statistics.median(changed):.0f} ms, "
          f"cached {statistics.median(cached):.0f} ms "
          f"(min {min(changed):.0f}/{min(cached):.0f}, max {max(changed):.0f}/{max(cached):.0f})")
finally:
    host.terminate()
    host.wait()
    shutil.rmtree(work, ignore_errors=True)
EOF
