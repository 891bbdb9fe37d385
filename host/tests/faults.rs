//! The fault matrix: faults injected mid-stream on the real broker, with the
//! three demo plugins (crm-sync against the example CRM, data-lake, metrics)
//! in one host. Every case is judged by the same check, written once
//! ([`Scenario::check`]): every produced event ends in its sinks or, only if
//! it can never be handled, in that plugin's dead-letter topic; the CRM, the
//! lake and the business gauges equal what the events say (computed here,
//! without the plugins' code); no healthy event is dead-lettered; no lake
//! row is written twice. Recovery times are printed, not asserted.
//! crm-sync runs with `concurrency = 4` (four batches of a partition in
//! flight, by booking), as the demo ships it, and so does the counting
//! plugin, which shows an event counted twice or handled after a later
//! event of its booking; the others run one batch at a time.
//!
//! Faults are real where this machine can make them: the CRM process is
//! killed and restarted; 503, 429 and a CRM that never answers come from a
//! proxy in front of the real CRM; folders are made unwritable with
//! `chattr +i` and full with a small `tmpfs` (both need root, which CI has);
//! poison is raw bytes on the topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{Crm, STATES, Setup, read_lake};
use prost::Message as _;
use serde_json::Value;

/// How long each fault lasts while events keep arriving.
const FAULT: Duration = Duration::from_secs(5);

/// The plugins of every scenario: the demo's three, and `counting`, which
/// keeps no dedupe, so that an event counted twice shows.
const PLUGINS: [&str; 4] = ["crm-sync", "data-lake", "metrics", "counting"];

/// The business truth of a set of events, computed without the plugins.
struct Oracle {
    /// event_id of every event a sink must have.
    events: BTreeSet<String>,
    /// booking_id -> (version, state) of its newest event.
    latest: BTreeMap<String, (u64, String)>,
    /// The metrics plugin's gauges and counters, as "name{label}" -> value.
    business: BTreeMap<String, f64>,
}

impl Oracle {
    fn of(events: &[plugboard::event::BookingEvent]) -> Oracle {
        let mut latest: BTreeMap<String, &plugboard::event::BookingEvent> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut business: BTreeMap<String, f64> = BTreeMap::new();
        for e in events {
            if seen.insert((e.booking_id.clone(), e.version)) {
                *business
                    .entry(format!("booking_events_total{{{}}}", state_name(e.state)))
                    .or_default() += 1.0;
            }
            let slot = latest.entry(e.booking_id.clone()).or_insert(e);
            if e.version > slot.version {
                *slot = e;
            }
            if let Some(price) = &e.price {
                business
                    .entry(format!("bookings_revenue_minor{{{}}}", price.currency_code))
                    .or_default();
            }
        }
        for state in STATES {
            business
                .entry(format!("bookings_current{{{state}}}"))
                .or_default();
        }
        for e in latest.values() {
            let state = state_name(e.state);
            *business
                .entry(format!("bookings_current{{{state}}}"))
                .or_default() += 1.0;
            if let (Some(price), "paid" | "upcoming" | "finalized") = (&e.price, state) {
                *business
                    .entry(format!("bookings_revenue_minor{{{}}}", price.currency_code))
                    .or_default() += price.amount_minor as f64;
            }
        }
        Oracle {
            events: events.iter().map(|e| e.event_id.clone()).collect(),
            latest: latest
                .into_iter()
                .map(|(id, e)| (id, (e.version, state_name(e.state).to_string())))
                .collect(),
            business,
        }
    }
}

fn state_name(state: i32) -> &'static str {
    match state {
        1 => "created",
        2 => "paid",
        3 => "upcoming",
        4 => "finalized",
        5 => "cancelled",
        6 => "refunded",
        _ => "unknown",
    }
}

/// What the metrics plugin reports, in the oracle's terms.
fn business_of(prom: &common::Prom, want: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    want.keys()
        .map(|key| {
            let (name, label) = key.trim_end_matches('}').split_once('{').unwrap();
            let label_name = if name == "bookings_revenue_minor" {
                "currency"
            } else {
                "state"
            };
            let value = prom
                .get(name, &[(label_name, label), ("plugin", "metrics")])
                .unwrap_or(0.0);
            (key.clone(), value)
        })
        .collect()
}

/// A proxy in front of the real CRM that passes requests through or, while
/// told to, answers with a status (and `Retry-After`) or never answers.
#[derive(Clone)]
struct Proxy {
    url: String,
    mode: Arc<Mutex<Mode>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Pass,
    Status(u16, u32),
    Hang,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let shared = mode.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(client) = stream else { continue };
                let (mode, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || serve(client, &upstream, &mode));
            }
        });
        Proxy { url, mode }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

fn serve(mut client: TcpStream, upstream: &str, mode: &Mutex<Mode>) {
    let request = read_request(&mut client);
    let now = *mode.lock().unwrap();
    match now {
        Mode::Pass => {
            // The CRM may be down: then the connection just closes.
            let Ok(mut server) = TcpStream::connect(upstream) else {
                return;
            };
            let _ = server.write_all(&request);
            let mut answer = Vec::new();
            let _ = server.read_to_end(&mut answer);
            let _ = client.write_all(&answer);
        }
        Mode::Status(status, retry_after) => {
            let body = r#"{"status":"error","message":"injected by the test proxy"}"#;
            let _ = write!(
                client,
                "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Mode::Hang => {
            let until = Instant::now() + Duration::from_secs(60);
            while *mode.lock().unwrap() == Mode::Hang && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One HTTP/1.1 request, head and body, asking the server to close after
/// answering (so the answer ends with the connection).
fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let request = common::read_request(stream);
    let text = String::from_utf8_lossy(&request);
    let Some(end) = text.find("\r\n\r\n") else {
        return request;
    };
    let head = text[..end]
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut out = format!("{head}\r\nconnection: close\r\n\r\n").into_bytes();
    out.extend_from_slice(&request[end + 4..]);
    out
}

/// One row of the matrix.
struct Row {
    fault: String,
    events: usize,
    lost: usize,
    wrongly_parked: usize,
    duplicates: usize,
    /// Events the counting plugin's state counts more than once.
    double_counted: usize,
    /// Events the counting plugin saw after a later event of their key.
    out_of_order: u64,
    recovery: Duration,
}

/// A topic, the example CRM behind a proxy, a lake folder and a state
/// folder, and a host running the three plugins over them.
struct Scenario {
    brokers: String,
    topic: String,
    setup: Setup,
    kafka: plugboard::config::KafkaConfig,
    crm: Crm,
    crm_addr: String,
    proxy: Proxy,
    lake: PathBuf,
    data: PathBuf,
    /// Whether `lake` and `data` are tmpfs mounts of this scenario.
    mounted: bool,
    /// Set once the host was restarted: its counters began again at 0, so
    /// only gauges are compared with all the events.
    restarted: bool,
    /// Set once the host stopped while the broker was away: what it had
    /// settled but could not commit may be delivered (and counted) again.
    uncommitted: bool,
    /// Per plugin, events it may park and must park, from the cases so far
    /// (a dead-letter topic keeps them for every later check).
    parks: BTreeMap<&'static str, (BTreeSet<String>, BTreeSet<String>)>,
    host: Option<Child>,
    admin: String,
    /// Events still to produce, in order.
    pending: Vec<plugboard::event::BookingEvent>,
    /// Events produced so far.
    produced: Vec<plugboard::event::BookingEvent>,
    rows: Vec<Row>,
}

impl Scenario {
    /// `bookings` generated lifecycles, not produced yet; `folders_on_tmpfs`
    /// mounts the lake and the state folders as small tmpfs, so a case can
    /// fill them.
    fn new(brokers: &str, label: &str, bookings: usize, seed: u64, folders_on_tmpfs: bool) -> Self {
        let topic = create_topic(brokers, 6);
        let setup = Setup::new();
        let crm_port = common::free_port();
        let crm_addr = format!("127.0.0.1:{crm_port}");
        let crm = Crm::start_on(&setup.path("crm.db"), &crm_addr);
        let proxy = Proxy::start(&crm.url);
        let lake = setup.path("lake");
        let data = setup.path("state");
        for dir in [&lake, &data] {
            std::fs::create_dir_all(dir).unwrap();
            if folders_on_tmpfs {
                mount_tmpfs(dir, "64m");
            }
        }
        let token = &crm.token;
        setup
            .plugin(
                "crm-sync",
                "crm-sync",
                &format!(
                    "allow_hosts = [\"{url}\"]\nconcurrency = 4\n[config]\nbase_url = \"{url}\"\ntoken = \"{token}\"\nrequest_timeout_ms = 1000\n",
                    url = proxy.url
                ),
            )
            .plugin(
                "data-lake",
                "data-lake",
                &format!("[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\n", lake.display()),
            )
            .plugin("metrics", "metrics", "")
            // Counts every delivery in its state, with no dedupe: a double
            // count of any event shows, and so does an event of a booking
            // handled after a later one. Four lanes per partition, as
            // crm-sync: settling out of offset order must not redeliver.
            .plugin("counting", "counting", "concurrency = 4\n");
        // Quick backoff, so recovery is measured in seconds; the cap also
        // bounds a Retry-After.
        let mut text = std::fs::read_to_string(&setup.config).unwrap();
        text.insert_str(
            0,
            &format!(
                "admin_addr = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
                data.display()
            ),
        );
        text.push_str(
            "[limits]\nbatch_size = 50\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n",
        );
        std::fs::write(&setup.config, text).unwrap();
        let kafka = kafka_config(&setup, brokers, &topic, label);
        // Its rows swap manifests to break and fix things (a CRM address
        // that moved is a new origin): no operator approves them here.
        append_config(&setup, "\n[reload]\napprove_new_grants = \"auto\"\n");
        let pending =
            plugboard::generate::lifecycles(bookings, seed, plugboard::generate::DEFAULT_START);
        let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
        Scenario {
            brokers: brokers.to_string(),
            topic,
            setup,
            kafka,
            crm,
            crm_addr,
            proxy,
            lake,
            data,
            mounted: folders_on_tmpfs,
            restarted: false,
            uncommitted: false,
            parks: BTreeMap::new(),
            host: Some(host),
            admin,
            pending,
            produced: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Produces the next `n` events, waits until they are settled and
    /// checks everything with no event allowed in a dead-letter topic: a
    /// row of the matrix.
    fn record(&mut self, fault: &str, n: usize) {
        self.produce(n);
        let recovery = self.settle();
        let row = self.check(fault, n, recovery, &BTreeMap::new());
        self.rows.push(row);
    }

    /// From now on `plugin` must park (and so may park) `events`.
    fn must_park(&mut self, plugin: &'static str, events: &[String]) {
        let (allowed, required) = self.parks.entry(plugin).or_default();
        allowed.extend(events.iter().cloned());
        required.extend(events.iter().cloned());
    }

    /// Event ids of the next `n` events to produce, picked `every` apart.
    fn upcoming_ids(&self, n: usize, every: usize) -> Vec<String> {
        self.pending
            .iter()
            .step_by(every)
            .take(n)
            .map(|e| e.event_id.clone())
            .collect()
    }

    /// Stops the host (SIGTERM; it must exit cleanly) and starts it again
    /// with `env`; returns how long the stop took.
    fn restart(&mut self, env: &[(&str, String)]) -> Duration {
        let stopping = Instant::now();
        stop(self.host.take().unwrap());
        let took = stopping.elapsed();
        let mut command = host_command(&self.setup, "metrics.prom");
        for (key, value) in env {
            command.env(key, value);
        }
        let (host, admin) = start_with_admin(command);
        self.host = Some(host);
        self.admin = admin;
        self.restarted = true;
        took
    }

    /// The first `n` events, before any fault: the baseline row.
    fn opening(&mut self, n: usize) {
        self.record("none (start)", n);
    }

    /// The rest of the events, after the faults; then stops the host and
    /// prints the matrix.
    fn closing(mut self) {
        let pending = self.pending.len();
        self.record("none (end)", pending);
        self.finish();
    }

    /// Publishes the next `n` events, as the booking service would.
    fn produce(&mut self, n: usize) {
        let n = n.min(self.pending.len());
        let chunk: Vec<_> = self.pending.drain(..n).collect();
        let file = self.setup.path("chunk.ndjson");
        let lines: Vec<String> = chunk
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        produce(&self.brokers, &self.topic, &file);
        self.produced.extend(chunk);
    }

    /// Publishes raw messages (poison) with these keys.
    fn produce_raw(&self, messages: &[(Option<Vec<u8>>, Vec<u8>)]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("message.max.bytes", "2000000")
            .create()
            .unwrap();
        for (key, payload) in messages {
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Waits until every plugin has committed every offset; returns how
    /// long that took.
    fn settle(&self) -> Duration {
        let began = Instant::now();
        wait_for_zero_lag(&self.kafka, &PLUGINS);
        began.elapsed()
    }

    /// `/plugins` of `plugin`.
    fn status(&self, plugin: &str) -> Value {
        plugin_status(&self.admin, plugin)
    }

    /// Waits until `/plugins` shows `plugin` waiting for `cause` with a
    /// reason containing `reason`, and returns `/readyz`'s status.
    fn wait_for_hold(&self, plugin: &str, cause: &str, reason: &str) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(plugin);
            let held = status["waiting"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["cause"] == cause && h["reason"].as_str().unwrap().contains(reason));
            if held {
                return reqwest::blocking::get(format!("{}/readyz", self.admin))
                    .unwrap()
                    .status()
                    .as_u16();
            }
            assert!(
                Instant::now() < deadline,
                "{plugin} never showed a {cause} hold for `{reason}`: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/plugins` shows `plugin` stopped, with nothing it
    /// waits for.
    fn wait_until_stopped(&self, plugin: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(plugin);
            if status["state"] == "stopped" {
                let waiting = status["waiting"].as_array().map_or(0, Vec::len);
                assert_eq!(waiting, 0, "a removed plugin waits: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{plugin} was not removed: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/plugins` says a load of `plugin` failed with
    /// `error`, while a version of it still runs.
    fn wait_for_failed_load(&self, plugin: &str, error: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(plugin);
            let failed = status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(error));
            if failed {
                assert_eq!(status["state"], "running", "{status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{plugin}: no failed load with `{error}`: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One case: `inject` the fault, produce `events` while it lasts,
    /// `observe` the host meanwhile, `heal`, then check everything.
    fn case(
        &mut self,
        fault: &str,
        events: usize,
        inject: impl FnOnce(&mut Self),
        observe: impl FnOnce(&mut Self),
        heal: impl FnOnce(&mut Self),
    ) {
        inject(self);
        self.produce(events);
        let began = Instant::now();
        observe(self);
        let rest = FAULT.saturating_sub(began.elapsed());
        std::thread::sleep(rest);
        heal(self);
        let recovery = self.settle();
        let row = self.check(fault, events, recovery, &BTreeMap::new());
        self.rows.push(row);
    }

    /// The check every case shares. `may_park` says, per plugin, which
    /// events (by event_id, or "decode" for undecodable messages) it may
    /// dead-letter and which it must: anything else in a dead-letter topic
    /// is a healthy event wrongly parked.
    fn check(
        &self,
        fault: &str,
        events: usize,
        recovery: Duration,
        may_park: &BTreeMap<&str, (BTreeSet<String>, BTreeSet<String>)>,
    ) -> Row {
        let mut wrongly_parked = 0;
        let mut parked_by: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for plugin in PLUGINS {
            let (mut allowed, mut required) = may_park.get(plugin).cloned().unwrap_or_default();
            if let Some((a, r)) = self.parks.get(plugin) {
                allowed.extend(a.iter().cloned());
                required.extend(r.iter().cloned());
            }
            let dead = read_all(&self.brokers, &format!("{}.dlq.{plugin}", self.topic));
            let mut parked = BTreeSet::new();
            for (payload, class, reason) in &dead {
                let id = plugboard::decode::from_protobuf(payload)
                    .map(|e| e.event_id)
                    .unwrap_or_else(|_| "decode".into());
                if !allowed.contains(&id) {
                    eprintln!("{fault}: {plugin} wrongly parked {id} as {class}: {reason}");
                    wrongly_parked += 1;
                }
                parked.insert(id);
            }
            for id in &required {
                assert!(parked.contains(id), "{fault}: {plugin} must park {id}");
            }
            parked_by.insert(plugin, parked);
        }
        let sink = |plugin: &str| {
            let parked = &parked_by[plugin];
            let kept: Vec<_> = self
                .produced
                .iter()
                .filter(|e| !parked.contains(&e.event_id))
                .cloned()
                .collect();
            Oracle::of(&kept)
        };

        // The lake: every event once.
        let want = sink("data-lake");
        let (_, rows) = read_lake(&self.lake.join("bookings"));
        let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &rows {
            *per_event.entry(id.as_str()).or_default() += 1;
        }
        let lost_rows = want
            .events
            .iter()
            .filter(|id| !per_event.contains_key(id.as_str()))
            .count();
        let duplicates: usize = per_event.values().map(|n| n - 1).sum();

        // The CRM: the newest version of every booking.
        let want_crm = sink("crm-sync");
        let crm: BTreeMap<String, (u64, String)> = self
            .crm
            .all()
            .into_iter()
            .map(|(id, o)| {
                let p = &o["properties"];
                let version = p["booking_version"].as_str().unwrap().parse().unwrap();
                (
                    id,
                    (version, p["booking_state"].as_str().unwrap().to_string()),
                )
            })
            .collect();
        let mut lost_crm = 0;
        let mut stale = Vec::new();
        for (id, want) in &want_crm.latest {
            match crm.get(id) {
                None => lost_crm += 1,
                Some(got) if got != want => stale.push((id.clone(), got.clone(), want.clone())),
                Some(_) => {}
            }
        }

        // The business metrics, live from the admin endpoint.
        let mut want_metrics = sink("metrics").business;
        if self.restarted {
            want_metrics.retain(|k, _| !k.starts_with("booking_events_total"));
        }
        let text = reqwest::blocking::get(format!("{}/metrics", self.admin))
            .unwrap()
            .text()
            .unwrap();
        let got_metrics = business_of(&common::Prom(text), &want_metrics);

        // The counting plugin: every event it did not park, once.
        let (counted, out_of_order) = self.counted();
        let want_counted = sink("counting").events;
        let lost_counts = want_counted
            .iter()
            .filter(|id| !counted.contains_key(*id))
            .count();
        let twice: Vec<(&String, &u64)> = counted.iter().filter(|(_, n)| **n > 1).collect();

        let row = Row {
            fault: fault.to_string(),
            events,
            lost: lost_rows + lost_crm + lost_counts,
            wrongly_parked,
            duplicates,
            double_counted: twice.len(),
            out_of_order,
            recovery,
        };
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1?} |",
            row.fault,
            row.events,
            row.lost,
            row.wrongly_parked,
            row.duplicates,
            row.double_counted,
            row.out_of_order,
            row.recovery
        );
        assert_eq!(
            lost_counts, 0,
            "{fault}: events the counting plugin never counted"
        );
        if !self.uncommitted {
            // Only a host that stopped without committing (the broker was
            // away) may deliver again, and only what it had not committed.
            assert!(twice.is_empty(), "{fault}: counted twice: {twice:?}");
        }
        assert_eq!(
            out_of_order, 0,
            "{fault}: events handled after a later event of their booking"
        );
        assert_eq!(lost_rows, 0, "{fault}: events missing from the lake");
        assert_eq!(lost_crm, 0, "{fault}: bookings missing from the CRM");
        assert!(stale.is_empty(), "{fault}: stale CRM records: {stale:?}");
        assert_eq!(duplicates, 0, "{fault}: duplicate lake rows");
        assert_eq!(wrongly_parked, 0, "{fault}: healthy events dead-lettered");
        assert_eq!(got_metrics, want_metrics, "{fault}: business metrics");
        row
    }

    /// The counting plugin's count of every event it handled, and of the
    /// events it saw out of order, from the host's state file.
    fn counted(&self) -> (BTreeMap<String, u64>, u64) {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("state.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = db
            .prepare(
                "SELECT key, value FROM state WHERE plugin = 'counting' AND bucket = 'counting'",
            )
            .unwrap();
        let rows: Vec<(String, Vec<u8>)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let number =
            |value: &[u8]| -> Option<u64> { std::str::from_utf8(value).ok()?.parse().ok() };
        let out_of_order = rows
            .iter()
            .find(|(key, _)| key == "out_of_order")
            .and_then(|(_, value)| number(value))
            .unwrap_or(0);
        let counted = rows
            .iter()
            .filter_map(|(key, value)| Some((key.strip_prefix("n/")?.to_string(), number(value)?)))
            .collect();
        (counted, out_of_order)
    }

    /// Stops the host (it must exit cleanly) and prints the matrix.
    fn finish(mut self) {
        stop(self.host.take().unwrap());
        eprintln!(
            "| fault | events | lost | wrongly parked | duplicates | double-counted | out of order | recovery |"
        );
        eprintln!("|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            eprintln!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.1?} |",
                r.fault,
                r.events,
                r.lost,
                r.wrongly_parked,
                r.duplicates,
                r.double_counted,
                r.out_of_order,
                r.recovery
            );
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if let Some(mut host) = self.host.take() {
            let _ = host.kill();
            let _ = host.wait();
        }
        for dir in [&self.lake, &self.data] {
            immutable(dir, false);
            if self.mounted {
                let _ = std::process::Command::new("umount").arg(dir).status();
            }
        }
    }
}

/// Replaces `path` as deploy tools do: a temporary file renamed over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every message in `topic` (none if it does not exist): payload, failure
/// class and reason.
fn read_all(brokers: &str, topic: &str) -> Vec<(Vec<u8>, String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{:x}", rand::random::<u64>()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).unwrap();
            if high > low {
                remaining += (high - low) as usize;
                assignment
                    .add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low))
                    .unwrap();
            }
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return out;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < remaining {
        assert!(Instant::now() < deadline, "cannot read {topic}");
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        // A record parked without its payload (the topic refused it whole
        // at that moment) names where the original is.
        let payload = if header("plugboard.payload-omitted").is_empty() {
            m.payload().unwrap_or_default().to_vec()
        } else {
            original(
                brokers,
                &header("plugboard.original-topic"),
                header("plugboard.original-partition").parse().unwrap(),
                header("plugboard.original-offset").parse().unwrap(),
            )
        };
        out.push((
            payload,
            header("plugboard.failure-class"),
            header("plugboard.reason"),
        ));
    }
    out
}

/// The payload of the record at `offset` of `partition` of `topic`.
fn original(brokers: &str, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{:x}", rand::random::<u64>()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "cannot read {topic}/{partition}@{offset}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            return m.payload().unwrap_or_default().to_vec();
        }
    }
}

/// Creates `topic` with `max.message.bytes` = `limit`, or (`None`) raises
/// its limit back to the broker's default.
fn topic_config(brokers: &str, topic: &str, limit: Option<&str>) {
    match limit {
        Some(limit) => create_named_topic(brokers, topic, 6, &[("max.message.bytes", limit)]),
        None => set_topic_limit(brokers, topic, "2000000"),
    }
}

/// Sets `max.message.bytes` of `topic`, which exists.
fn set_topic_limit(brokers: &str, topic: &str, limit: &str) {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let (admin, runtime) = admin(brokers);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", limit);
    for r in runtime
        .block_on(admin.alter_configs(&[alter], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// A broker of the test's own (scripts/kafka.sh on other ports and another
/// data folder), so it can be killed without touching the other tests.
struct OwnBroker {
    port: u16,
    data: tempfile::TempDir,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        // Two free ports in a row: the broker's and its controller's.
        let port = loop {
            let port = common::free_port();
            if port < 65000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let broker = OwnBroker {
            port,
            data: tempfile::tempdir().unwrap(),
        };
        broker.up();
        broker
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, verb: &str) {
        let out = std::process::Command::new(common::repo().join("scripts/kafka.sh"))
            .arg(verb)
            .env("KAFKA_PORT", self.port.to_string())
            .env("PLUGBOARD_KAFKA_DATA", self.data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up(&self) {
        self.script("start");
    }

    /// SIGKILL, as a crashed or fenced-off broker.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.data.path().join("kafka.pid")).unwrap();
        std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        while std::process::Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::repo().join("scripts/kafka.sh"))
            .arg("stop")
            .env("KAFKA_PORT", self.port.to_string())
            .env("PLUGBOARD_KAFKA_DATA", self.data.path())
            .output();
    }
}

fn root() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        common::skip("the fault matrix", "it needs root for chattr and mount");
    }
    root
}

fn mount_tmpfs(dir: &Path, size: &str) {
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot mount a tmpfs on {}", dir.display());
}

/// Makes every folder and file under `dir` (and `dir`) immutable, or
/// mutable again: nothing can be created, written, renamed or removed.
fn immutable(dir: &Path, on: bool) {
    let mut paths = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            paths.push(path);
        }
    }
    // A tmpfs does not keep the immutable flag: chmod cannot stop root, so
    // on tmpfs only "full" is made.
    let _ = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .args(&paths)
        .stderr(std::process::Stdio::null())
        .status();
}

/// The file that fills a folder's filesystem.
const FILLER: &str = ".filler";

/// Fills the filesystem of `dir` to the last byte, with [`FILLER`].
fn fill(dir: &Path) {
    let mut file = std::fs::File::create(dir.join(FILLER)).unwrap();
    let block = vec![0u8; 1 << 16];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn outages_of_the_crm_hold_the_partitions_and_heal_without_holes() {
    let Some(brokers) = brokers() else { return };
    let mut s = Scenario::new(&brokers, "crm-faults", 400, 91, false);
    s.opening(200);

    let addr = s.crm_addr.clone();
    let db = s.setup.path("crm.db");
    s.case(
        "CRM killed",
        150,
        |s| s.crm.kill(),
        |s| {
            let ready = s.wait_for_hold("crm-sync", "sink", "");
            assert_eq!(ready, 200, "a sink that is down keeps the host ready");
        },
        |s| s.crm = Crm::start_on(&db, &addr),
    );
    // The proxy's faults: a Retry-After of an hour must not freeze anything.
    for (fault, mode, reason) in [
        (
            "CRM 503, Retry-After: 3600",
            Mode::Status(503, 3600),
            "HTTP 503",
        ),
        ("CRM 429, Retry-After: 1", Mode::Status(429, 1), "HTTP 429"),
        ("CRM never answers", Mode::Hang, ""),
    ] {
        s.case(
            fault,
            150,
            |s| s.proxy.set(mode),
            |s| {
                s.wait_for_hold("crm-sync", "sink", reason);
            },
            |s| s.proxy.set(Mode::Pass),
        );
    }

    // A new version ends a wait: the CRM moved, and the manifest that
    // names its new address fixes what retrying could not.
    let crm_manifest = s.setup.plugins.join("crm-sync.toml");
    let right = std::fs::read_to_string(&crm_manifest).unwrap();
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let wrong = right.replace(&s.proxy.url, &nowhere);
    let (m1, m2) = (crm_manifest.clone(), crm_manifest.clone());
    s.case(
        "CRM address wrong until the manifest is fixed",
        150,
        move |_| replace(&m1, wrong.as_bytes()),
        |s| {
            s.wait_for_hold("crm-sync", "sink", "");
        },
        move |_| replace(&m2, right.as_bytes()),
    );

    // A version that traps on every event, replaced by a fixed one while
    // its events are tried again: the loop follows the fix, nothing is
    // parked and nothing counted twice.
    let counting_manifest = s.setup.plugins.join("counting.toml");
    let (k1, k2) = (counting_manifest.clone(), counting_manifest.clone());
    s.case(
        "counting traps on every event until a fixed version is dropped in",
        150,
        move |_| {
            replace(
                &k1,
                b"concurrency = 4\n[limits]\nmax_attempts = 1000\n[config]\ntrap_all = \"yes\"\nversion = \"broken\"\n",
            )
        },
        |s| {
            s.wait_for_hold("counting", "plugin", "traps on every event");
        },
        move |_| replace(&k2, b"concurrency = 4\n[config]\nversion = \"fixed\"\n"),
    );

    // Plugin files replaced mid-stream by ones that cannot serve: the
    // version in use goes on.
    let component = s.setup.plugins.join("metrics.wasm");
    let manifest = s.setup.plugins.join("metrics.toml");
    let original = std::fs::read(&component).unwrap();
    let (c1, c2) = (component.clone(), component.clone());
    let first_half = original[..original.len() / 2].to_vec();
    let good = original.clone();
    s.case(
        "metrics.wasm replaced by a truncated file",
        150,
        move |_| replace(&c1, &first_half),
        |s| s.wait_for_failed_load("metrics", "not a valid component"),
        move |_| replace(&c2, &good),
    );
    let (c1, c2, m1, m2) = (
        component.clone(),
        component.clone(),
        manifest.clone(),
        manifest.clone(),
    );
    s.case(
        "metrics replaced by a version whose init fails",
        150,
        move |_| {
            replace(&m1, b"[config]\nfail_init = \"1\"\n");
            replace(&c1, &std::fs::read(common::plugin_wasm("faulty")).unwrap());
        },
        |s| s.wait_for_failed_load("metrics", "init"),
        move |_| {
            replace(&c2, &original);
            replace(&m2, b"");
        },
    );
    let crm = s.status("crm-sync");
    assert!(crm["waiting"].as_array().unwrap().is_empty(), "{crm}");
    s.closing();
}

#[test]
fn unwritable_and_full_folders_hold_the_partitions_and_heal_without_holes() {
    let Some(brokers) = brokers() else { return };
    if !root() {
        return;
    }
    // Read-only on the machine's own filesystem (chattr), then full on
    // small tmpfs mounts. Who waits: the lake's plugin for its sink; the
    // state store is the host's, so the host is not ready meanwhile.
    for (label, tmpfs, seed) in [("folder-faults", false, 92), ("full-faults", true, 93)] {
        let mut s = Scenario::new(&brokers, label, 300, seed, tmpfs);
        s.opening(150);
        let (lake, data) = (s.lake.clone(), s.data.clone());
        for (folder, dir, plugin, cause, reason) in [
            ("lake", lake, "data-lake", "sink", ""),
            ("state", data, "metrics", "host", "state"),
        ] {
            let fault = match tmpfs {
                false => format!("{folder} folder unwritable"),
                true => format!("{folder} folder full"),
            };
            let (d1, d2) = (dir.clone(), dir.clone());
            s.case(
                &fault,
                150,
                move |_| match tmpfs {
                    false => immutable(&d1, true),
                    true => fill(&d1),
                },
                |s| {
                    let ready = s.wait_for_hold(plugin, cause, reason);
                    let want = if cause == "host" { 503 } else { 200 };
                    assert_eq!(ready, want, "/readyz while the {folder} folder fails");
                },
                move |_| match tmpfs {
                    false => immutable(&d2, false),
                    true => std::fs::remove_file(d2.join(FILLER)).unwrap(),
                },
            );
        }
        s.closing();
    }
}

#[test]
fn poison_is_parked_alone_and_its_neighbours_are_handled() {
    let Some(brokers) = brokers() else { return };
    let mut s = Scenario::new(&brokers, "poison", 200, 94, false);
    s.produce(100);
    s.settle();

    // Valid events that are hard to handle, as new bookings.
    let mut template = s.pending[0].clone();
    template.version = 1;
    template.state = 1;
    template.payment = None;
    let valid_poison = |id: &str, event_id: &str, name: String| {
        let mut e = template.clone();
        e.booking_id = id.to_string();
        e.event_id = event_id.to_string();
        if let Some(c) = e.customer.as_mut() {
            c.name = name;
        }
        e
    };
    let long_id: String = "ü".repeat(5_000);
    let long = valid_poison(&long_id, "poison-long-id", "Long Id".into());
    let big = valid_poison("poison-big-booking", "poison-1mb", "x".repeat(900_000));
    let no_key = valid_poison("poison-no-key", "poison-no-key", "No Key".into());
    let mut unknown_enum = valid_poison("poison-enum", "poison-enum", "Enum".into());
    unknown_enum.state = 42;
    let mut truncated = template.encode_to_vec();
    truncated.truncate(truncated.len() / 2);
    let frame = [&[0u8, 0, 0, 0, 7][..], b"\xff\xff not protobuf"].concat();
    let key = |e: &plugboard::event::BookingEvent| Some(e.booking_id.clone().into_bytes());
    let messages = vec![
        (
            Some(b"garbage".to_vec()),
            b"\x00\x01garbage, not an event".to_vec(),
        ),
        (key(&template), truncated),
        (key(&unknown_enum), unknown_enum.encode_to_vec()),
        (Some(b"framed".to_vec()), frame),
        (key(&long), long.encode_to_vec()),
        (None, no_key.encode_to_vec()),
        (key(&big), big.encode_to_vec()),
    ];
    // The lake's dead-letter topic takes no message this large until the
    // test raises its limit: a dead-letter topic the host cannot write.
    let lake_dlq = format!("{}.dlq.data-lake", s.topic);
    topic_config(&s.brokers, &lake_dlq, Some("64"));
    s.produce_raw(&messages);
    let ready = s.wait_for_hold("data-lake", "host", "dead-letter topic");
    assert_eq!(
        ready, 503,
        "a dead-letter topic that cannot be written makes the host not ready"
    );
    s.produce(50);
    topic_config(&s.brokers, &lake_dlq, None);
    s.produce_raw(&messages[..1]);
    let pending = s.pending.len();
    s.produce(pending);
    let recovery = s.settle();
    s.produced
        .extend([long.clone(), big.clone(), no_key.clone()]);

    // Undecodable messages are parked by every plugin (4 + the repeated
    // garbage); the metrics plugin parks the booking id that cannot be a
    // state key, and only it; the CRM may refuse the 1 MB record.
    let decode: BTreeSet<String> = ["decode".to_string()].into();
    let mut may_park = BTreeMap::new();
    for plugin in PLUGINS {
        may_park.insert(plugin, (decode.clone(), BTreeSet::new()));
    }
    may_park
        .get_mut("metrics")
        .unwrap()
        .0
        .insert(long.event_id.clone());
    may_park
        .get_mut("metrics")
        .unwrap()
        .1
        .insert(long.event_id.clone());
    may_park
        .get_mut("crm-sync")
        .unwrap()
        .0
        .insert(big.event_id.clone());
    may_park
        .get_mut("crm-sync")
        .unwrap()
        .0
        .insert(long.event_id.clone());
    for (_, required) in may_park.values_mut() {
        required.insert("decode".into());
    }
    let row = s.check(
        "poison (5 undecodable, a 10 kB booking id, no key, 1 MB); the lake's dead-letter topic refusing writes meanwhile",
        8,
        recovery,
        &may_park,
    );
    s.rows.push(row);

    // Every undecodable message is counted where it was found.
    let text = reqwest::blocking::get(format!("{}/metrics", s.admin))
        .unwrap()
        .text()
        .unwrap();
    let prom = common::Prom(text);
    for plugin in PLUGINS {
        assert_eq!(
            prom.get(
                "plugboard_dead_letters_total",
                &[("plugin", plugin), ("class", "decode")]
            ),
            Some(5.0),
            "{plugin}"
        );
    }
    assert_eq!(
        prom.get(
            "plugboard_decode_failures_total",
            &[("source", s.topic.as_str())]
        ),
        Some(20.0),
        "5 undecodable messages, seen by each of the 4 consumers"
    );
    assert_eq!(
        prom.get(
            "plugboard_dead_letters_total",
            &[("plugin", "metrics"), ("class", "rejected")]
        ),
        Some(1.0)
    );
    s.finish();
}

#[test]
fn broker_outages_hold_every_plugin_and_heal_without_holes() {
    let Some(_) = brokers() else { return };
    let broker = OwnBroker::start();
    let mut s = Scenario::new(&broker.addr(), "broker", 300, 95, false);
    s.opening(200);

    // Killed and restarted: the host waits, not ready, and answers
    // /plugins from what it knows.
    broker.kill();
    let down = Instant::now();
    s.wait_for_hold("metrics", "host", "Kafka");
    let asked = Instant::now();
    let status = s.status("crm-sync");
    let answered = asked.elapsed();
    assert!(
        answered < Duration::from_secs(2),
        "/plugins took {answered:?} without a broker"
    );
    assert!(status["lag"].is_i64(), "{status}");
    let ready = reqwest::blocking::get(format!("{}/readyz", s.admin)).unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    std::thread::sleep(FAULT.saturating_sub(down.elapsed()));
    broker.up();
    s.record("broker SIGKILLed, restarted", 150);

    // Stopped while the broker is away: a clean exit, at once.
    broker.kill();
    s.wait_for_hold("metrics", "host", "Kafka");
    let stopping = Instant::now();
    stop(s.host.take().unwrap());
    eprintln!(
        "SIGTERM without a broker: exited cleanly in {:.1?}",
        stopping.elapsed()
    );

    // Started while the broker is away: it waits, and goes on once it is back.
    let (host, admin) = start_host_with_admin(&s.setup, "metrics.prom");
    s.host = Some(host);
    s.admin = admin;
    s.restarted = true;
    s.uncommitted = true;
    s.wait_for_hold("metrics", "host", "Kafka");
    broker.up();
    s.record("host started without a broker", 150);
    s.closing();
}

/// Another member of `group` for `lasting`: it takes its share of the
/// partitions (every host's partitions are revoked, eagerly, as when a
/// second host joins), commits nothing, and leaves.
fn join_group(brokers: &str, group: &str, topic: &str, lasting: Duration) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let member: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .create()
        .unwrap();
    member.subscribe(&[topic]).unwrap();
    let until = Instant::now() + lasting;
    let mut took = false;
    while Instant::now() < until {
        let _ = member.poll(Duration::from_millis(100));
        took |= member.assignment().is_ok_and(|a| a.count() > 0);
    }
    assert!(took, "the second member of {group} never got a partition");
    member.unsubscribe();
}

/// The next offset of `partition` of `topic`.
fn high_watermark(brokers: &str, topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

#[test]
fn dead_letter_holds_revokes_stops_removals_and_panics_neither_lose_nor_count_twice() {
    let Some(brokers) = brokers() else { return };
    let mut s = Scenario::new(&brokers, "edges", 450, 96, false);
    s.opening(150);
    let dlq = format!("{}.dlq.counting", s.topic);
    let manifest = s.setup.plugins.join("counting.toml");
    let group = format!("{}counting", s.kafka.group_prefix);

    // The counting plugin rejects three events of the next ones, and its
    // dead-letter topic takes nothing (64 bytes): the partitions hold on
    // the write, then another member joins the group. The revoke ends the
    // write at once; nothing after a rejected event was counted.
    let rejected = s.upcoming_ids(3, 50);
    s.must_park("counting", &rejected);
    let reject = format!(
        "concurrency = 4\n[config]\nreject = \"{}\"\n",
        rejected.join(",")
    );
    let (m, r, b, t, g) = (
        manifest.clone(),
        reject.clone(),
        s.brokers.clone(),
        s.topic.clone(),
        group.clone(),
    );
    let (b2, d2) = (s.brokers.clone(), dlq.clone());
    s.case(
        "counting's dead-letter topic refusing writes while another member joins its group",
        150,
        move |_| {
            topic_config(&b, &d2, Some("64"));
            replace(&m, r.as_bytes());
        },
        move |s| {
            s.wait_for_hold("counting", "host", "dead-letter topic");
            join_group(&b2, &g, &t, Duration::from_secs(8));
            s.wait_for_hold("counting", "host", "dead-letter topic");
        },
        |s| topic_config(&s.brokers, &dlq, None),
    );

    // The same while SIGTERM arrives: the host exits at once and cleanly,
    // commits what it settled, and its restart counts nothing twice. It
    // comes back with a worker of the counting plugin set to panic (a test
    // hook) at the next message of partition 0, for the next case.
    let rejected = s.upcoming_ids(3, 50);
    s.must_park("counting", &rejected);
    let reject = format!(
        "concurrency = 4\n[config]\nreject = \"{}\"\n",
        rejected.join(",")
    );
    let (m, r) = (manifest.clone(), reject.clone());
    let dlq2 = format!("{}.dlq.counting", s.topic);
    let stop_took = Arc::new(Mutex::new(Duration::ZERO));
    let took = stop_took.clone();
    s.case(
        "counting's dead-letter topic refusing writes while SIGTERM arrives",
        150,
        move |s| {
            set_topic_limit(&s.brokers, &dlq2, "64");
            replace(&m, r.as_bytes());
        },
        move |s| {
            s.wait_for_hold("counting", "host", "dead-letter topic");
            let next = high_watermark(&s.brokers, &s.topic, 0);
            let stopped = s.restart(&[("PLUGBOARD_TEST_PANIC", format!("counting:0:{next}"))]);
            *took.lock().unwrap() = stopped;
            s.wait_for_hold("counting", "host", "dead-letter topic");
        },
        |s| topic_config(&s.brokers, &format!("{}.dlq.counting", s.topic), None),
    );
    let stopped = *stop_took.lock().unwrap();
    eprintln!("SIGTERM during a dead-letter hold: exited cleanly in {stopped:.1?}");
    assert!(
        stopped < Duration::from_secs(20),
        "a dead-letter write held up the stop for {stopped:?}"
    );

    // A worker panics (a bug of the host), and another member joins at
    // once: the revive and the revoke meet; nothing lost, nothing twice.
    let (b, t, g) = (s.brokers.clone(), s.topic.clone(), group.clone());
    s.case(
        "a counting worker panics (a test hook), another member joins right after",
        150,
        |_| {},
        move |_| join_group(&b, &g, &t, Duration::from_secs(6)),
        |_| {},
    );

    // Removed while its partitions hold, then added again: the removal
    // takes the holds and series along (the host is ready again), and the
    // plugin starts again from its state. The metrics plugin leaves and
    // comes back with it: its gauges must not count any share twice.
    let rejected = s.upcoming_ids(2, 60);
    s.must_park("counting", &rejected);
    let reject = format!(
        "concurrency = 4\n[config]\nreject = \"{}\"\n",
        rejected.join(",")
    );
    let parked = s.setup.path("parked");
    std::fs::create_dir_all(&parked).unwrap();
    let dlq3 = dlq.clone();
    s.case(
        "counting (holding) and metrics removed, then added again",
        150,
        move |s| {
            set_topic_limit(&s.brokers, &dlq3, "64");
            replace(&s.setup.plugins.join("counting.toml"), reject.as_bytes());
        },
        move |s| {
            s.wait_for_hold("counting", "host", "dead-letter topic");
            for plugin in ["counting", "metrics"] {
                for ext in ["wasm", "toml"] {
                    let name = format!("{plugin}.{ext}");
                    std::fs::rename(s.setup.plugins.join(&name), parked.join(&name)).unwrap();
                }
            }
            s.wait_until_stopped("counting");
            let ready = reqwest::blocking::get(format!("{}/readyz", s.admin)).unwrap();
            assert_eq!(
                ready.status().as_u16(),
                200,
                "a removed plugin's hold stays"
            );
            let text = reqwest::blocking::get(format!("{}/metrics", s.admin))
                .unwrap()
                .text()
                .unwrap();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let gone = ["plugboard_partition_waiting", "plugboard_consumer_lag"];
                assert!(
                    !(line.contains("plugin=\"counting\"")
                        && gone.iter().any(|g| line.starts_with(g))),
                    "a removed plugin's series stays: {line}"
                );
            }
            for plugin in ["counting", "metrics"] {
                for ext in ["toml", "wasm"] {
                    let name = format!("{plugin}.{ext}");
                    std::fs::rename(parked.join(&name), s.setup.plugins.join(&name)).unwrap();
                }
            }
            s.wait_for_hold("counting", "host", "dead-letter topic");
        },
        |s| topic_config(&s.brokers, &format!("{}.dlq.counting", s.topic), None),
    );

    // A plugin that writes key-value pairs until the host refuses: its
    // events fail as `budget`, alone; the host and the others go on.
    let victims = s.upcoming_ids(2, 40);
    let flood = s.setup.plugins.join("flood.toml");
    let flood_wasm = s.setup.plugins.join("flood.wasm");
    let (f1, w1, f2, w2) = (flood.clone(), flood_wasm.clone(), flood, flood_wasm);
    let kv_flood = victims.join(",");
    s.case(
        "a plugin writing state in a loop until its limit",
        150,
        move |_| {
            std::fs::write(
                &f1,
                format!("[limits]\nmemory_limit_mb = 16\nmax_attempts = 2\n[config]\nkv_flood = \"{kv_flood}\"\n"),
            )
            .unwrap();
            replace(&w1, &std::fs::read(common::plugin_wasm("faulty")).unwrap());
        },
        |_| {},
        move |s| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let dead = read_all(&s.brokers, &format!("{}.dlq.flood", s.topic));
                let budget: BTreeSet<String> = dead
                    .iter()
                    .filter(|(_, class, _)| class == "budget")
                    .map(|(p, _, _)| plugboard::decode::from_protobuf(p).unwrap().event_id)
                    .collect();
                if budget.len() == victims.len() {
                    assert_eq!(dead.len(), victims.len(), "only the flooding events");
                    assert_eq!(budget, victims.iter().cloned().collect());
                    break;
                }
                assert!(Instant::now() < deadline, "flood: {dead:?}");
                std::thread::sleep(Duration::from_millis(250));
            }
            std::fs::remove_file(&w2).unwrap();
            std::fs::remove_file(&f2).unwrap();
        },
    );
    s.closing();
}
