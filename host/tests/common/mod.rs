//! Shared test harness: real plugin components from `target/plugins/`
//! (built by `scripts/build-plugins.sh`), a real example CRM server, the real
//! `plugboard` binary, and readers for what they leave behind.
#![allow(dead_code)]

pub mod kafka;

use std::collections::BTreeMap;

use arrow_array::{Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Whether the suite runs in CI (`CI=true`), where every prerequisite must
/// be there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A prerequisite of `what` is missing: in CI the test fails, since a skip
/// would pass for nothing; elsewhere it says what is skipped and why.
pub fn skip(what: &str, why: &str) {
    assert!(!in_ci(), "{what} cannot run: {why}");
    eprintln!("skipped {what}: {why}");
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

/// The `plugboard` binary, quiet, with the tests' shared component cache.
pub fn plugboard_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugboard"));
    command.env("PLUGBOARD_LOG", "warn").env(
        "PLUGBOARD_CACHE_DIR",
        target_dir().join("test-state/component-cache"),
    );
    command
}

/// A built plugin component; fails with the command to build it.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = repo().join("target/plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        path.display()
    );
    path
}

pub fn sample_events() -> PathBuf {
    repo().join("examples/data/bookings.ndjson")
}

/// A host config and plugins folder in a temporary directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub plugins: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let config = dir.path().join("plugboard.toml");
        // The compiled-component cache is shared by all tests, so each
        // component is compiled once per test run, not once per test; plugin
        // state stays in the test's own data folder.
        let cache = target_dir().join("test-state/component-cache");
        std::fs::write(
            &config,
            format!(
                "plugins_dir = \"plugins\"\ncache_dir = \"{}\"\n",
                cache.display()
            ),
        )
        .unwrap();
        Setup {
            dir,
            plugins,
            config,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Drops `component` in as `name`, with `manifest` beside it.
    pub fn plugin(&self, name: &str, component: &str, manifest: &str) -> &Self {
        std::fs::copy(
            plugin_wasm(component),
            self.plugins.join(format!("{name}.wasm")),
        )
        .unwrap();
        std::fs::write(self.plugins.join(format!("{name}.toml")), manifest).unwrap();
        self
    }

    /// The demo's three plugins: crm-sync against `crm`, data-lake writing
    /// into `lake`, metrics.
    pub fn demo_plugins(&self, crm: &Crm, lake: &Path) -> &Self {
        self.plugin("crm-sync", "crm-sync", &crm.manifest())
            .plugin(
                "data-lake",
                "data-lake",
                &format!(
                    "[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\n",
                    lake.display()
                ),
            )
            .plugin("metrics", "metrics", "")
    }

    /// Runs `plugboard run` over `events`; dead letters and metrics go to
    /// `dead-letter.ndjson` and `metrics.prom` in the temp dir.
    pub fn run(&self, events: &Path) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--events")
            .arg(events)
            .arg("--dead-letter")
            .arg(self.path("dead-letter.ndjson"))
            .arg("--metrics-out")
            .arg(self.path("metrics.prom"))
            .env("PLUGBOARD_LOG", "warn")
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("dead-letter.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn metrics(&self) -> Prom {
        Prom(std::fs::read_to_string(self.path("metrics.prom")).unwrap())
    }
}

/// A Prometheus text-format file.
pub struct Prom(pub String);

impl Prom {
    /// The value of the series `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (n, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                if n != name {
                    return None;
                }
                let got: BTreeMap<String, String> = labels
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (got == want).then(|| value.parse().unwrap())
            })
    }
}

/// The example CRM, started on a free port with its own database.
pub struct Crm {
    child: Child,
    pub url: String,
    pub token: String,
}

impl Crm {
    pub fn start(db: &Path) -> Self {
        Self::start_on(db, "127.0.0.1:0")
    }

    /// The CRM on `listen`: a CRM restarted on the address it had, with
    /// the database it had, is the same CRM back from an outage.
    pub fn start_on(db: &Path, listen: &str) -> Self {
        let token = "test-token".to_string();
        let bin = target_dir().join("release/crm-example");
        assert!(
            bin.exists(),
            "{} is missing: run cargo build --release --workspace --bins",
            bin.display()
        );
        // Port 0 and the address the server prints: no race for a port.
        let mut child = Command::new(bin)
            .arg("--listen")
            .arg(listen)
            .arg("--db")
            .arg(db)
            .arg("--token")
            .arg(&token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("crm-example did not start: {line:?}"))
            .to_string();
        Crm { child, url, token }
    }

    /// crm-sync's manifest for this CRM: its origin granted, its token.
    pub fn manifest(&self) -> String {
        format!(
            "allow_hosts = [\"{url}\"]\n[config]\nbase_url = \"{url}\"\ntoken = \"{token}\"\n",
            url = self.url,
            token = self.token
        )
    }

    /// The properties of every object, by booking id: what two CRMs fed
    /// the same events must agree on (ids and timestamps aside).
    pub fn properties(&self) -> BTreeMap<String, serde_json::Value> {
        self.all()
            .into_iter()
            .map(|(k, v)| (k, v["properties"].clone()))
            .collect()
    }

    /// Every object, through the paged list API.
    pub fn all(&self) -> BTreeMap<String, serde_json::Value> {
        let client = reqwest::blocking::Client::new();
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/crm/v3/objects/bookings?limit=100", self.url);
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page: serde_json::Value = client
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .unwrap();
            for object in page["results"].as_array().unwrap() {
                let id = object["properties"]["booking_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                out.insert(id, object.clone());
            }
            match page["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => return out,
            }
        }
    }
}

impl Crm {
    /// Kills the server (its database stays); `start_on` with the same
    /// address brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Crm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Events of `n` generated bookings, written as NDJSON into `dir`.
pub fn generated_events(dir: &Path, bookings: usize, seed: u64) -> PathBuf {
    let path = dir.join(format!("generated-{bookings}-{seed}.ndjson"));
    let lines: Vec<String> =
        plugboard::generate::lifecycles(bookings, seed, plugboard::generate::DEFAULT_START)
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The event ids of an NDJSON events file, in order.
pub fn event_ids(events: &Path) -> Vec<String> {
    std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["eventId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// One HTTP/1.1 request off `stream`, head and body, as sent.
pub fn read_request(stream: &mut impl std::io::Read) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return request;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let complete = if head.contains("transfer-encoding: chunked") {
            text[end..].contains("\r\n0\r\n\r\n")
        } else {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
            request.len() >= end + 4 + length
        };
        if complete {
            return request;
        }
    }
}

pub const STATES: [&str; 6] = [
    "created",
    "paid",
    "upcoming",
    "finalized",
    "cancelled",
    "refunded",
];

/// One line of the sample file, as this test reads it without the host's
/// decoder.
pub struct Line {
    pub number: u64,
    pub event_id: String,
    pub booking_id: String,
    pub version: u64,
    pub state: String,
    pub price: Option<(String, i64)>,
}

fn num(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// The lines a correct host must accept, and the numbers of those it must
/// dead-letter.
pub fn read_sample(path: &Path) -> (Vec<Line>, Vec<u64>) {
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    for (i, text) in std::fs::read_to_string(path).unwrap().lines().enumerate() {
        let number = i as u64 + 1;
        let parsed = serde_json::from_str::<Value>(text).ok().and_then(|v| {
            let state = v["state"]
                .as_str()?
                .strip_prefix("BOOKING_STATE_")?
                .to_lowercase();
            let line = Line {
                number,
                event_id: v["eventId"].as_str().filter(|s| !s.is_empty())?.to_string(),
                booking_id: v["bookingId"]
                    .as_str()
                    .filter(|s| !s.is_empty())?
                    .to_string(),
                version: num(&v["version"]).filter(|v| *v >= 1)? as u64,
                state: STATES.contains(&state.as_str()).then_some(state)?,
                price: v["price"]["currencyCode"]
                    .as_str()
                    .map(|c| (c.to_string(), num(&v["price"]["amountMinor"]).unwrap_or(0))),
            };
            Some(line)
        });
        match parsed {
            Some(line) => valid.push(line),
            None => invalid.push(number),
        }
    }
    (valid, invalid)
}

/// Every Parquet file under `root`, by relative path, with its bytes, and
/// every (event_id, offset) row in them.
/// Parquet files by path relative to the lake, with their bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

pub fn read_lake(root: &Path) -> (Files, Vec<(String, i64)>) {
    let mut files = BTreeMap::new();
    let mut rows = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            assert!(
                rel.ends_with(".parquet"),
                "unexpected file in the lake: {rel}"
            );
            files.insert(rel, std::fs::read(&path).unwrap());
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let ids = batch.column_by_name("event_id").unwrap();
                let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
                let offsets = batch.column_by_name("offset").unwrap();
                let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..batch.num_rows() {
                    rows.push((ids.value(i).to_string(), offsets.value(i)));
                }
            }
        }
    }
    (files, rows)
}

/// The newest line (highest version) of every booking: what the CRM and the
/// gauges must end up showing.
pub fn latest_per_booking(lines: &[Line]) -> BTreeMap<&str, &Line> {
    let mut latest: BTreeMap<&str, &Line> = BTreeMap::new();
    for line in lines {
        let slot = latest.entry(&line.booking_id).or_insert(line);
        if line.version > slot.version {
            *slot = line;
        }
    }
    latest
}

/// A server that accepts connections and reads requests, but never answers.
pub fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(std::io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// The schema registry of the tests (PLUGBOARD_TEST_REGISTRY, the
/// Confluent-compatible API of the Apicurio that scripts/registry.sh
/// starts); none (the test skips) outside CI.
pub fn registry() -> Option<String> {
    let url = std::env::var("PLUGBOARD_TEST_REGISTRY").ok();
    if url.is_none() {
        skip(
            "a schema-registry test",
            "PLUGBOARD_TEST_REGISTRY is not set: start Apicurio with scripts/registry.sh (scripts/test.sh does both)",
        );
    }
    url
}

/// A registry of the test's own on a free port, with its data in `dir`,
/// to stop and start again: scripts/registry.sh on another port.
pub struct OwnRegistry {
    pub url: String,
    port: u16,
    data: PathBuf,
}

impl OwnRegistry {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let registry = OwnRegistry {
            url: format!("http://127.0.0.1:{port}/apis/ccompat/v7"),
            port,
            data: dir.join("registry"),
        };
        registry.script("start");
        registry
    }

    fn script(&self, verb: &str) {
        let out = Command::new(repo().join("scripts/registry.sh"))
            .arg(verb)
            .env("REGISTRY_PORT", self.port.to_string())
            .env("PLUGBOARD_REGISTRY_DATA", &self.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "registry.sh {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.script("start");
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/registry.sh"))
            .arg("stop")
            .env("REGISTRY_PORT", self.port.to_string())
            .env("PLUGBOARD_REGISTRY_DATA", &self.data)
            .output();
    }
}

/// Registers `proto` (a file's text) under `subject`; its id.
pub fn register(registry: &str, subject: &str, proto: &Path) -> u32 {
    let text = std::fs::read_to_string(proto).unwrap();
    let answer: Value = reqwest::blocking::Client::new()
        .post(format!("{registry}/subjects/{subject}/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({"schemaType": "PROTOBUF", "schema": text}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    answer["id"].as_u64().unwrap_or_else(|| panic!("{answer}")) as u32
}

/// A booking-evolution fixture: `host/tests/schema/<name>`.
pub fn schema_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schema")
        .join(name)
}
