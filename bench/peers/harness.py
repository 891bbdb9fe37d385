#!/usr/bin/env python3
"""Runs each system of the peer benchmark on each job and measures it.

Called by scripts/bench-peers.sh, which builds and fetches everything and
produces the topic; this file only runs and measures. Per run: a fresh
consumer group reading the topic from the earliest offset, a fresh sink
(output folder, crm-example database), and these figures:

- wall_s: from starting the process to the last event in its sink;
- steady_events_per_s: events / (last event - first event in the sink);
- cpu_s: user + system CPU of the process (/proc/PID/stat, children
  included) when the last event arrived;
- peak_rss_mb: the kernel's high-water mark of the process (VmHWM), which
  sampling could miss.

"In its sink": a line in the output files (file), an input upserted at
crm-example (http), or the system's own count of events it finished
(decode: plugboard's handled-events metric, Benthos' output_sent, the bare
consumer's report; http rows that read versions, which upsert a booking
once per batch and skip what the CRM holds: plugboard's handled-events
metric, BookingSyncTask's count of finished records, a Benthos counter
after the upsert). Progress is sampled every 20 ms.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def stop(proc):
    """Stops a helper process (crm-example), if one was started."""
    if proc:
        proc.terminate()
        proc.wait()


def proc_status(pid):
    """VmRSS and VmHWM (kB) and Threads of process `pid`, from /proc."""
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            fields[k] = int(v.split()[0])
    return fields


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except Exception:
        return None


def prom_value(text, name, labels=None):
    """Sum of the series of metric `name` whose labels include `labels`."""
    if text is None:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(3))
    return total


def cpu_seconds(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime stime cutime cstime are fields 14-17 of stat (1-based).
        return sum(int(x) for x in fields[11:15]) / TICKS
    except OSError:
        return None


def hwm_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class LineCounter:
    """Counts newline-terminated lines in the files under a folder, reading
    only what was appended since the last call."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.read = {}
        self.lines = 0

    def __call__(self):
        for path in self.folder.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            done = self.read.get(path, 0)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size <= done:
                continue
            with path.open("rb") as f:
                f.seek(done)
                chunk = f.read(size - done)
            self.lines += chunk.count(b"\n")
            self.read[path] = done + len(chunk)
        return self.lines


def measure(name, job, cmd, progress, events, log, env=None, cwd=None, timeout=1800,
            report=None):
    """Starts `cmd`, samples `progress()` until it reaches `events`, then
    stops the process. `report(stdout)` may give first/last times itself."""
    print(f"==> {name} / {job}: {' '.join(map(str, cmd))[:160]}", flush=True)
    started = time.time()
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if report else out, stderr=out,
                            env=env, cwd=cwd, start_new_session=True)
    first = last = None
    cpu = peak = None
    done = 0
    try:
        while True:
            now = time.time()
            if now - started > timeout:
                raise RuntimeError(f"{name}/{job}: {done} of {events} events after {timeout} s")
            if report is None:
                done = progress()
                if done > 0 and first is None:
                    first = now
                if done >= events:
                    last = now
                    cpu, peak = cpu_seconds(proc.pid), hwm_mb(proc.pid)
                    break
            else:
                cpu_now, peak_now = cpu_seconds(proc.pid), hwm_mb(proc.pid)
                if proc.poll() is not None:
                    stdout = proc.stdout.read().decode()
                    first, last, done = report(stdout)
                    break
                cpu, peak = cpu_now or cpu, peak_now or peak
            if proc.poll() is not None and report is None:
                raise RuntimeError(f"{name}/{job} exited ({proc.returncode}) after {done} events; see {log}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
    steady = events / (last - first) if last and first and last > first else None
    result = {
        "system": name,
        "job": job,
        "events": events,
        "wall_s": round(last - started, 3),
        "steady_events_per_s": round(steady) if steady else None,
        "cpu_s": round(cpu, 2) if cpu is not None else None,
        "peak_rss_mb": round(peak, 1) if peak is not None else None,
    }
    print("    " + json.dumps(result), flush=True)
    return result


def benthos_metric(port, name):
    """A counter of Benthos' json_api metrics ({"name{label=...}": N, ...}),
    summed over its labels; 0 while Benthos does not answer."""
    text = http_get(f"http://127.0.0.1:{port}/metrics")
    try:
        values = json.loads(text) if text else {}
    except ValueError:
        return 0
    return sum(v for k, v in values.items()
               if k.split("{")[0] == name and isinstance(v, (int, float)))


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work).resolve()
        self.results = []
        # The CRM database of each http row that writes whole bookings
        # replay-safely, to compare what they left behind.
        self.crms = {}

    def run_dir(self, name):
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def group(self, system, job):
        return f"bench-{system}-{job}-{os.getpid()}-{int(time.time() * 1000) % 10**8}"

    # -- the CRM ---------------------------------------------------------

    def start_crm(self, d):
        port = free_port()
        proc = subprocess.Popen([self.a.crm, "--listen", f"127.0.0.1:{port}", "--db", str(d / "crm.db")],
                                stdout=subprocess.DEVNULL, stderr=open(d / "crm.log", "w"),
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if http_get(f"{base}/stats") is not None:
                return proc, base
            time.sleep(0.05)
        raise RuntimeError("crm-example did not start")

    @staticmethod
    def crm_inputs(base):
        text = http_get(f"{base}/stats")
        return json.loads(text)["upsert_inputs"] if text else 0

    # -- the limit -------------------------------------------------------

    def bare(self, job, topic=None, events=None):
        topic, events = topic or self.a.topic, events or self.a.events
        d = self.run_dir(f"bare-{job}")

        def report(stdout):
            r = json.loads(stdout.strip().splitlines()[-1])
            return r["first"], r["last"], r["events"]

        return measure("bare rdkafka+prost", job,
                       [self.a.bare, "--brokers", self.a.brokers, "--topic", topic,
                        "--events", str(events)],
                       None, events, d / "log", report=report)

    # -- plugboard -------------------------------------------------------

    def plugboard(self, job, topic=None, events=None, copies=1, schema="", extensions=False,
                  label=None):
        """`copies` of the job's plugin, each in its own group;
        `events` is then what they handle together. `schema`: a `[schema]`
        table for the host config; `extensions`: the plugin asks for the
        fields the contract lacks."""
        topic, events = topic or self.a.topic, events or self.a.events
        d = self.run_dir(f"plugboard-{job}")
        plugins = d / "plugins"
        plugins.mkdir()
        port = free_port()
        crm = None
        if job == "decode":
            plugin, manifest = "noop", "[limits]\nbatch_size = 500\n"
            if extensions:
                manifest = "extensions = true\n" + manifest
        elif job == "file":
            (d / "out").mkdir()
            plugin = "jsonl-sink"
            manifest = f'[folder]\npath = "{d / "out"}"\nguest_path = "/data"\n[limits]\nbatch_size = 500\n[config]\ndir = "/data"\n'
        else:
            crm, base = self.start_crm(d)
            self.crms[label or "plugboard (crm-sync)"] = d / "crm.db"
            plugin = "crm-sync"
            manifest = f'allow_hosts = ["{base}"]\n[limits]\nbatch_size = 100\n[config]\nbase_url = "{base}"\n'
        names = [plugin] if copies == 1 else [f"{plugin}-{i}" for i in range(1, copies + 1)]
        for name in names:
            shutil.copy(Path(self.a.plugins) / f"{plugin}.wasm", plugins / f"{name}.wasm")
            (plugins / f"{name}.toml").write_text(manifest)
        config = d / "plugboard.toml"
        config.write_text(
            f'plugins_dir = "plugins"\ndata_dir = "{self.a.state}"\nadmin_addr = "127.0.0.1:{port}"\n'
            f'[kafka]\nbrokers = "{self.a.brokers}"\ntopic = "{topic}"\n'
            f'group_prefix = "{self.group("plugboard", job)}."\n{schema}')
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        if job == "file":
            progress = LineCounter(d / "out")
        else:
            def progress():
                return prom_value(http_get(metrics_url), "plugboard_events_total",
                                  {"outcome": "handled"})
        env = dict(os.environ, PLUGBOARD_LOG="warn")
        name = label or {"decode": "plugboard (noop)", "file": "plugboard (jsonl-sink)",
                         "http": "plugboard (crm-sync)"}[job]
        try:
            return measure(name, job, [self.a.plugboard, "run", "--config", str(config)],
                           progress, events, d / "log", env=env)
        finally:
            stop(crm)

    # -- Kafka Connect ---------------------------------------------------

    def connect(self, job, json_values=False):
        """`json_values`: the bookings decoded, as the others do. The decode
        job parses them with BookingConverter and discards them
        (DiscardSinkConnector); the file job turns them into proto3 JSON
        lines with BookingJsonConverter (all in bench/peers/connect/src);
        the http job's BookingSyncTask decodes them and does crm-sync's
        work (batch/read of the versions the CRM holds, batch/upsert of the
        newer). Without it, values pass as raw bytes: the file job writes
        Java identities and the http job posts each record's position."""
        d = self.run_dir(f"connect-{job}{'-json' if json_values else ''}")
        name = ("Kafka Connect 4.1.2 (raw bytes)" if not json_values
                else {"decode": "Kafka Connect 4.1.2 (protobuf parsed)",
                      "file": "Kafka Connect 4.1.2 (protobuf to JSON)"}.get(
                          job, "Kafka Connect 4.1.2 (decoded, versions read)"))
        rest = free_port()
        worker = d / "worker.properties"
        # Fair tuning: offsets flushed every second, REST on loopback. The
        # consumer keeps its defaults (max.poll.records 500, fetch.min.bytes
        # 1) except for the http job, where a put is one POST and
        # crm-example takes at most 100 inputs per request.
        converter = {("decode", True): "plugboard.bench.BookingConverter",
                     ("file", True): "plugboard.bench.BookingJsonConverter"}.get(
            (job, json_values), "org.apache.kafka.connect.converters.ByteArrayConverter")
        worker.write_text("\n".join([
            f"bootstrap.servers={self.a.brokers}",
            "key.converter=org.apache.kafka.connect.storage.StringConverter",
            f"value.converter={converter}",
            f"offset.storage.file.filename={d / 'offsets'}",
            "offset.flush.interval.ms=1000",
            f"listeners=http://127.0.0.1:{rest}",
            "plugin.discovery=only_scan",
            "consumer.auto.offset.reset=earliest",
            f"consumer.group.id={self.group('connect-json' if json_values else 'connect', job)}",
            "consumer.max.poll.records=100" if job == "http" else "",
            "",
        ]))
        connector = d / "connector.properties"
        crm = None
        finished = d / "finished"

        def counted():
            # The sinks that count what they finished themselves.
            try:
                return int(finished.read_text() or 0)
            except (OSError, ValueError):
                return 0
        if job == "decode":
            connector.write_text("\n".join([
                f"name=bench-decode-{os.getpid()}",
                "connector.class=plugboard.bench.DiscardSinkConnector",
                "tasks.max=6",
                f"topics={self.a.topic}",
                f"progress.file={finished}",
                "",
            ]))
            progress = counted
        elif job == "file":
            (d / "out").mkdir()
            connector.write_text("\n".join([
                f"name=bench-file-{os.getpid()}",
                "connector.class=org.apache.kafka.connect.file.FileStreamSinkConnector",
                "tasks.max=6",
                f"topics={self.a.topic}",
                f"file={d / 'out' / 'out.txt'}",
                "",
            ]))
            progress = LineCounter(d / "out")
        else:
            crm, base = self.start_crm(d)
            if json_values:
                self.crms[name] = d / "crm.db"
            connector.write_text("\n".join([
                f"name=bench-http-{os.getpid()}",
                "connector.class=plugboard.bench.HttpSinkConnector",
                "tasks.max=6",
                f"topics={self.a.topic}",
                f"crm.url={base}/crm/v3/objects/bookings/batch/upsert",
                f"crm.sync={'true' if json_values else 'false'}",
                f"progress.file={finished}",
                "",
            ]))

            def progress():
                # BookingSyncTask writes a booking once per batch and skips
                # what the CRM holds, so it counts what it finished itself.
                return counted() if json_values else self.crm_inputs(base)
        log4j = d / "log4j2.properties"
        # Connect brings no logging binding; log4j2 at WARN. Kafka 4.1's
        # admin client logs "Rebootstrapping" in a loop unless its metadata
        # logger is at WARN too.
        log4j.write_text("\n".join([
            "rootLogger.level=WARN",
            "rootLogger.appenderRef.stdout.ref=STDOUT",
            "appender.stdout.type=Console",
            "appender.stdout.name=STDOUT",
            "appender.stdout.layout.type=PatternLayout",
            "appender.stdout.layout.pattern=[%d] %p %m (%c)%n",
            "logger.metadata.name=org.apache.kafka.clients.Metadata",
            "logger.metadata.level=WARN",
            "",
        ]))
        cp = f"{self.a.connect_libs}/*:{self.a.connect_classes}"
        # The JVM options Kafka's connect-standalone.sh starts it with
        # (KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS); without a heap
        # cap the JVM sizes itself to a quarter of the machine's memory.
        jvm = ["-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
               "-Djava.awt.headless=true"]
        cmd = [self.a.java, *jvm, f"-Dlog4j2.configurationFile={log4j}", "-cp", cp,
               "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)]
        try:
            return measure(name, job, cmd, progress, self.a.events, d / "log")
        finally:
            stop(crm)

    def connect_json(self, job):
        return self.connect(job, json_values=True)

    # -- Benthos ---------------------------------------------------------

    def benthos(self, job):
        d = self.run_dir(f"benthos-{job}")
        port = free_port()
        crm = None
        # Fair tuning: kafka_franz reads all partitions concurrently, two
        # pipeline threads (one per core) decode, and checkpoint_limit lets
        # it keep 1,024 messages per partition in flight. No batching at
        # the input: batches of 500 (period 50 ms) made decode 2.5x slower
        # (6.5 s against 2.6 s for 50k events), and the file output writes
        # message by message either way.
        lines = [
            "http:",
            f"  address: 127.0.0.1:{port}",
            "logger:",
            "  level: WARN",
            "metrics:",
            "  json_api: {}",
            "input:",
            "  kafka_franz:",
            f"    seed_brokers: [{self.a.brokers}]",
            f"    topics: [{self.a.topic}]",
            f"    consumer_group: {self.group('benthos', job)}",
            "    start_from_oldest: true",
            "    checkpoint_limit: 1024",
            "pipeline:",
            "  threads: 2",
            "  processors:",
            "    - protobuf:",
            "        operator: to_json",
            "        message: booking.v1.BookingEvent",
            f"        import_paths: [{self.a.proto}]",
            "output:",
        ]
        if job == "decode":
            lines += ["  drop: {}"]

            def progress():
                return benthos_metric(port, "output_sent")
        elif job == "file":
            (d / "out").mkdir()
            lines += ["  file:", f"    path: {d / 'out' / 'out.jsonl'}", "    codec: lines"]
            progress = LineCounter(d / "out")
        else:
            crm, base = self.start_crm(d)
            # One POST per batch of 100 (crm-example's limit), in HubSpot's
            # batch upsert shape, six requests in flight.
            lines += [
                "  http_client:",
                f"    url: {base}/crm/v3/objects/bookings/batch/upsert",
                "    verb: POST",
                "    headers:",
                "      Content-Type: application/json",
                "    max_in_flight: 6",
                "    batching:",
                "      count: 100",
                "      period: 50ms",
                "      processors:",
                "        - archive:",
                "            format: json_array",
                "        - mapping: |",
                "            root.inputs = this.map_each(e -> {",
                '              "idProperty": "booking_id",',
                '              "id": e.bookingId,',
                '              "properties": {',
                '                "booking_id": e.bookingId,',
                '                "booking_state": e.state.or(""),',
                '                "booking_version": e.version.or("").string(),',
                '                "customer_name": e.customer.name.or(""),',
                '                "customer_email": e.customer.email.or(""),',
                '                "garage_name": e.garage.name.or(""),',
                '                "service_code": e.service.serviceCode.or(""),',
                '                "price_amount_minor": e.price.amountMinor.or("").string(),',
                '                "price_currency": e.price.currencyCode.or(""),',
                '                "appointment_start": e.appointmentStart.or(""),',
                '                "last_event_id": e.eventId',
                "              }",
                "            })",
            ]

            def progress():
                return self.crm_inputs(base)
        config = d / "benthos.yaml"
        config.write_text("\n".join(lines) + "\n")
        try:
            return measure("Benthos 4.27.0", job, [self.a.benthos, "-c", str(config)],
                           progress, self.a.events, d / "log")
        finally:
            stop(crm)

    def benthos_sync_6threads(self, job):
        return self.benthos_sync(job, threads=6)

    def benthos_sync(self, job, threads=1):
        """crm-sync's work in Benthos: each batch of 100 decoded bookings
        keeps the newest version of each booking, asks the CRM which
        versions it holds (batch/read, in a branch), and upserts the newer
        ones; then the batch is split again and a counter after the upsert
        counts its events. One pipeline thread: with more, two batches of
        one partition are in flight at once, and an older version's upsert
        can land after a newer one's (`benthos_sync_6threads` shows it:
        the CRM is left with older versions)."""
        d = self.run_dir(f"benthos-sync{threads}-{job}")
        port = free_port()
        crm, base = self.start_crm(d)
        name = "Benthos 4.27.0 (versions read)" + ("" if threads == 1 else f", {threads} threads")
        self.crms[name] = d / "crm.db"
        objects = f"{base}/crm/v3/objects/bookings"
        config = d / "benthos.yaml"
        config.write_text(f"""http:
  address: 127.0.0.1:{port}
logger:
  level: WARN
metrics:
  json_api: {{}}
input:
  kafka_franz:
    seed_brokers: [{self.a.brokers}]
    topics: [{self.a.topic}]
    consumer_group: {self.group('benthos-sync', job)}
    start_from_oldest: true
    checkpoint_limit: 1024
    batching:
      count: 100
      period: 50ms
pipeline:
  threads: {threads}
  processors:
    - protobuf:
        operator: to_json
        message: booking.v1.BookingEvent
        import_paths: [{self.a.proto}]
    - archive:
        format: json_array
    - mapping: |
        root.all = this
        root.newest = this.fold({{}}, item -> item.tally.assign({{
          (item.value.bookingId): if item.tally.get(item.value.bookingId).version.or("0").number() >= item.value.version.or("0").number() {{
            item.tally.get(item.value.bookingId)
          }} else {{ item.value }}
        }})).values()
    - branch:
        request_map: |
          root.idProperty = "booking_id"
          root.properties = ["booking_id", "booking_version"]
          root.inputs = this.newest.map_each(e -> {{"id": e.bookingId}})
        processors:
          - http:
              url: {objects}/batch/read
              verb: POST
              headers:
                Content-Type: application/json
        result_map: |
          root.held = this.results.fold({{}}, item -> item.tally.assign({{
            (item.value.properties.booking_id): item.value.properties.booking_version.number()
          }}))
    - branch:
        request_map: |
          let held = this.held
          root.inputs = this.newest.filter(e -> $held.get(e.bookingId).or(-1) < e.version.or("0").number()).map_each(e -> {{
            "idProperty": "booking_id",
            "id": e.bookingId,
            "properties": {{
              "booking_id": e.bookingId,
              "booking_state": e.state.or("").trim_prefix("BOOKING_STATE_").lowercase(),
              "booking_version": e.version.or("").string(),
              "customer_name": e.customer.name.or(""),
              "customer_email": e.customer.email.or(""),
              "garage_name": e.garage.name.or(""),
              "service_code": e.service.serviceCode.or(""),
              "price_amount_minor": e.price.amountMinor.or("").string(),
              "price_currency": e.price.currencyCode.or(""),
              "appointment_start": e.appointmentStart.or(""),
              "last_event_id": e.eventId
            }}
          }})
          root = if root.inputs.length() == 0 {{ deleted() }}
        processors:
          - http:
              url: {objects}/batch/upsert
              verb: POST
              headers:
                Content-Type: application/json
    - mapping: root = this.all
    - unarchive:
        format: json_array
    - metric:
        type: counter
        name: events_done
output:
  drop: {{}}
""")

        def progress():
            # output_sent counts each split message once per message of
            # its batch; the counter after the split counts each event.
            return benthos_metric(port, "events_done")
        try:
            return measure(name, job, [self.a.benthos, "-c", str(config)],
                           progress, self.a.events, d / "log")
        finally:
            stop(crm)

    def same_crms(self):
        """Compares the CRM each replay-safe http row left behind with the
        first one's (plugboard's): the same bookings with the same
        properties, printed per row."""
        if len(self.crms) < 2:
            return
        held = {}
        for name, db in self.crms.items():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                rows = [json.loads(p) for (p,) in c.execute("SELECT properties FROM objects")]
            held[name] = {r.get("booking_id"): r for r in rows}
        (first, want), *rest = held.items()
        differ = {}
        for name, got in rest:
            keys = [k for k in want.keys() | got.keys() if want.get(k) != got.get(k)]
            differ[name] = len(keys)
            if keys:
                print(f"    e.g. {keys[0]} in {first}'s CRM: {want.get(keys[0])}; in {name}'s: "
                      f"{got.get(keys[0])}", file=sys.stderr, flush=True)
        print(f"\nthe CRM each http row that reads versions left, against {first}'s "
              f"({len(want):,} bookings):")
        for name, n in differ.items():
            print(f"  {name}: {'the same' if n == 0 else f'{n:,} bookings differ'}")

def schema_costs(bench, a):
    """The decode job on the same events three ways: plain protobuf (the
    compiled schema, as without a registry), framed with the registry id
    of booking.v1 (the compiled schema's shape: the fast path behind a
    lookup), and framed with the id of the evolved v2 schema for a plugin
    that asks for extensions (a dynamic decode of every event with the
    writer's descriptor)."""
    table = f'\n[schema]\nregistry = "{a.registry}"\n'
    return [
        bench.plugboard("decode", label="plugboard (noop), plain, compiled schema"),
        bench.plugboard("decode", topic=a.topic_v1, schema=table,
                        label="plugboard (noop), registry id of booking.v1"),
        bench.plugboard("decode", topic=a.topic_v2, schema=table, extensions=True,
                        label="plugboard (noop, extensions), registry id of v2"),
    ]


def scaling(bench, a):
    """events/s against partitions (1, 2, 6, 12: bare consumer and
    plugboard's no-op plugin, each on its own topic) and against plugins (1,
    3, 10 no-op plugins on the 6-partition topic, counted together)."""
    points = []
    n = a.scaling_events
    for p in [1, 2, 6, 12]:
        topic = f"{a.topic}-p{p}"
        made = subprocess.run([a.plugboard, "produce", "--brokers", a.brokers, "--topic", topic,
                               "--generate", str((n * 10 + 35) // 36), "--partitions", str(p)],
                              capture_output=True, text=True, check=True)
        count = int(re.search(r"published (\d+) messages", made.stdout).group(1))
        for system, run in [("bare rdkafka+prost", lambda: bench.bare("decode", topic, count)),
                            ("plugboard (noop)", lambda: bench.plugboard("decode", topic, count))]:
            r = run()
            points.append({"sweep": "partitions", "system": system, "x": p,
                           "events_per_s": r["steady_events_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                           "cpu_s": r["cpu_s"], "events": count})
    for k in [1, 3, 10]:
        r = bench.plugboard("decode", a.topic, a.events * k, copies=k)
        points.append({"sweep": "plugins", "system": "plugboard (noop), all plugins", "x": k,
                       "events_per_s": r["steady_events_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                       "cpu_s": r["cpu_s"], "events": a.events * k})
    return points


def table(results):
    rows = [("system", "job", "wall s", "steady ev/s", "CPU s", "CPU us/ev", "peak RSS MB")]
    for r in results:
        per = r["cpu_s"] / r["events"] * 1e6 if r.get("cpu_s") else None
        rows.append((r["system"], r["job"], f'{r["wall_s"]:.2f}',
                     f'{r["steady_events_per_s"]:,}' if r["steady_events_per_s"] else "-",
                     f'{r["cpu_s"]:.2f}' if r["cpu_s"] is not None else "-",
                     f"{per:.1f}" if per else "-",
                     f'{r["peak_rss_mb"]:.0f}' if r["peak_rss_mb"] is not None else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    for flag in ["brokers", "topic", "work", "out", "plugboard", "bare", "crm", "plugins", "state",
                 "java", "connect-libs", "connect-classes", "benthos", "proto"]:
        p.add_argument(f"--{flag}", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--systems", default="bare,plugboard,connect,benthos")
    p.add_argument("--jobs", default="decode,file,http")
    p.add_argument("--scaling-events", type=int, default=0,
                   help="also run the scaling sweeps, each topic this size; 0: skip them")
    p.add_argument("--plot", help="the plot_scaling binary, to draw scaling.svg")
    p.add_argument("--registry", help="also run the decode job with schemas from this registry")
    p.add_argument("--topic-v1", help="the events framed with booking.v1's registry id")
    p.add_argument("--topic-v2", help="the events framed with the v2 schema's registry id")
    a = p.parse_args()
    bench = Bench(a)
    plan = {
        "bare": ["decode"],
        "plugboard": ["decode", "file", "http"],
        # Connect on raw bytes (it ships no converter for plain protobuf),
        # and decoding the bookings as a user writes it: a parsing converter
        # and a discarding sink for the decode job, the JSON converter for
        # the file job, crm-sync's work for the http job.
        "connect": ["file", "http"],
        "connect_json": ["decode", "file", "http"],
        "benthos": ["decode", "file", "http"],
        "benthos_sync": ["http"],
        "benthos_sync_6threads": ["http"],
    }
    results = []
    jobs = a.jobs.split(",")
    for job in ["decode", "file", "http"]:
        if job not in jobs:
            continue
        # "connect" runs both Connect rows: the decoding one beside the raw
        # one; "benthos" its http job with and without reading versions.
        pairs = {"connect": ["connect", "connect_json"], "benthos": ["benthos", "benthos_sync"]}
        systems = [s for name in a.systems.split(",") for s in pairs.get(name, [name])]
        for system in systems:
            if job in plan[system]:
                try:
                    results.append(getattr(bench, system)(job))
                except Exception as e:  # one failed run must not lose the others
                    print(f"    FAILED: {e}", file=sys.stderr, flush=True)
    if a.registry:
        results.extend(schema_costs(bench, a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    bench.same_crms()
    print(f"\nwritten: {out / 'peers.json'}")
    if a.scaling_events:
        points = scaling(bench, a)
        (out / "scaling.json").write_text(json.dumps(points, indent=2) + "\n")
        print()
        for sweep in ["partitions", "plugins"]:
            for pt in points:
                if pt["sweep"] == sweep:
                    print(f"  {sweep:>10} {pt['x']:>3}  {pt['system']:<32} "
                          f"{pt['events_per_s'] or 0:>9,} events/s  {pt['peak_rss_mb']:>6.1f} MB peak")
        if a.plot:
            subprocess.run([a.plot, str(out / "scaling.json"), str(out / "scaling.svg")], check=True)


if __name__ == "__main__":
    main()
