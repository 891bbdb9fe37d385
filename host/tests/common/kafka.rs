//! Helpers for tests against the real Apache Kafka that scripts/test.sh
//! starts (PLUGBOARD_TEST_BROKERS): fresh topics and groups with random
//! names so runs never collide, the `plugboard` host as a child process,
//! and readers for what it commits and dead-letters.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use super::Setup;

/// The brokers of the test Kafka; none (the test skips) outside CI.
pub fn brokers() -> Option<String> {
    let brokers = std::env::var("PLUGBOARD_TEST_BROKERS").ok();
    if brokers.is_none() {
        super::skip(
            "a Kafka test",
            "PLUGBOARD_TEST_BROKERS is not set: start Kafka with scripts/kafka.sh (scripts/test.sh does both)",
        );
    }
    brokers
}

/// A fresh topic with a random name, so runs never collide.
pub fn create_topic(brokers: &str, partitions: i32) -> String {
    let name = format!("plugboard-test-{:016x}", rand::random::<u64>());
    create_named_topic(brokers, &name, partitions, &[]);
    name
}

/// Creates `name` with topic settings `config` (e.g. `max.message.bytes`).
pub fn create_named_topic(brokers: &str, name: &str, partitions: i32, config: &[(&str, &str)]) {
    let (admin, runtime) = admin(brokers);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let results = runtime
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// An admin client of `brokers` and a runtime to wait for its answers.
pub fn admin(
    brokers: &str,
) -> (
    AdminClient<rdkafka::client::DefaultClientContext>,
    tokio::runtime::Runtime,
) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (admin, runtime)
}

/// A fresh topic of `partitions` holding `bookings` generated lifecycles,
/// and a setup to consume it; returns the topic, the setup and the events
/// file.
pub fn stream(
    brokers: &str,
    partitions: i32,
    bookings: usize,
    seed: u64,
) -> (String, Setup, std::path::PathBuf) {
    let topic = create_topic(brokers, partitions);
    let setup = Setup::new();
    let events = super::generated_events(setup.dir.path(), bookings, seed);
    produce(brokers, &topic, &events);
    (topic, setup, events)
}

pub fn produce(brokers: &str, topic: &str, events: &std::path::Path) {
    produce_with(brokers, topic, events, &[]);
}

/// `plugboard produce` of `events` with more `args` (a schema, a
/// registry); what it said.
pub fn produce_with(brokers: &str, topic: &str, events: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args([
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--events",
        ])
        .arg(events)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n/<id>` of the counting plugin in the state under `data_dir`: how
/// often it counted event `id` of `topic`.
pub fn counted(data_dir: &std::path::Path, topic: &str, id: &str) -> u64 {
    let db = rusqlite::Connection::open(data_dir.join("state.sqlite")).unwrap();
    db.query_row(
        "SELECT value FROM state WHERE plugin = 'counting' AND scope = ?1 AND bucket = 'counting' AND key = ?2",
        [topic, &format!("n/{id}")],
        |row| row.get::<_, Vec<u8>>(0),
    )
    .map(|v| String::from_utf8(v).unwrap().parse::<u64>().unwrap())
    .unwrap_or(0)
}

/// Appends the `[kafka]` table to the setup's host config, with groups named
/// `<label>-<random>.<plugin>` so runs never share a group.
pub fn kafka_config(
    setup: &Setup,
    brokers: &str,
    topic: &str,
    label: &str,
) -> plugboard::config::KafkaConfig {
    let group_prefix = format!("{label}-{:x}.", rand::random::<u32>());
    let table = format!(
        "\n[kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ngroup_prefix = \"{group_prefix}\"\ncommit_interval_ms = 200\n"
    );
    append_config(setup, &table);
    plugboard::config::HostConfig::load(&setup.config)
        .unwrap()
        .kafka
        .unwrap()
}

/// Serves the admin endpoint on a free port (see [`start_host_with_admin`]).
pub fn enable_admin(setup: &Setup) {
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "admin_addr = \"127.0.0.1:0\"\n");
    std::fs::write(&setup.config, text).unwrap();
}

/// Adds lines at the end of the host config (into `[kafka]` once
/// [`kafka_config`] has run).
pub fn append_config(setup: &Setup, lines: &str) {
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(lines);
    std::fs::write(&setup.config, text).unwrap();
}

pub fn start_host(setup: &Setup) -> Child {
    start_host_with_metrics(setup, "metrics.prom")
}

/// A host with its admin endpoint on a free port (the config must say
/// `admin_addr = "127.0.0.1:0"`); returns it and the endpoint's base URL.
pub fn start_host_with_admin(setup: &Setup, metrics: &str) -> (Child, String) {
    start_with_admin(host_command(setup, metrics))
}

/// Starts `command` (a [`host_command`]) and returns it with the base URL
/// of its admin endpoint.
pub fn start_with_admin(mut command: Command) -> (Child, String) {
    let mut host = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(host.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("admin listening on ")
        .expect("the admin address is printed")
        .to_string();
    (host, base)
}

/// A host whose metrics are written to `metrics` (in the temp dir) at exit.
pub fn start_host_with_metrics(setup: &Setup, metrics: &str) -> Child {
    host_command(setup, metrics)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// `plugboard run` on the setup's config, metrics written to `metrics` (in
/// the temp dir) at exit.
pub fn host_command(setup: &Setup, metrics: &str) -> Command {
    host_command_on(setup, &setup.config, metrics)
}

/// [`host_command`] on another config of the setup (a second host).
pub fn host_command_on(setup: &Setup, config: &std::path::Path, metrics: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugboard"));
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--metrics-out")
        .arg(setup.path(metrics))
        .env(
            "PLUGBOARD_LOG",
            // PLUGBOARD_TEST_LOG=info shows more of what the hosts do.
            std::env::var("PLUGBOARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    command
}

/// Waits until every plugin's group has committed every offset.
pub fn wait_for_zero_lag(kafka: &plugboard::config::KafkaConfig, plugins: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lags: Vec<i64> = plugins
            .iter()
            .map(|p| plugboard::source::kafka::group_lag(kafka, p).unwrap_or(i64::MAX))
            .collect();
        if lags.iter().all(|l| *l == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lag did not reach 0: {plugins:?} {lags:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn stop(mut host: Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(host.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = host.wait().unwrap();
    assert!(
        status.success(),
        "plugboard did not shut down cleanly: {status}"
    );
}

/// Every message of a dead-letter topic, with its headers.
pub fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<BTreeMap<String, String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{:x}", rand::random::<u64>()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    headers.insert(
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            headers.insert(
                "value".into(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            );
            out.push(headers);
        }
    }
    // Nothing more than expected arrives.
    if consumer.poll(Duration::from_millis(500)).is_some() {
        out.push(BTreeMap::new());
    }
    out
}

/// What `/plugins` of the admin endpoint at `admin` says of `plugin`;
/// null if it does not list it (yet).
pub fn plugin_status(admin: &str, plugin: &str) -> serde_json::Value {
    let all: serde_json::Value = reqwest::blocking::get(format!("{admin}/plugins"))
        .unwrap()
        .json()
        .unwrap();
    all["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A running host, killed if a failing test leaves it running.
pub struct Host(pub Option<Child>);

impl Host {
    /// SIGTERM, and a clean exit.
    pub fn stop(mut self) {
        stop(self.0.take().unwrap());
    }

    pub fn kill(mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `plugboard ctl ARGS` against the admin endpoint at `admin`, with
/// `token`: exit code, stdout, stderr.
pub fn ctl_with(admin: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("ctl")
        .args(args)
        .env("PLUGBOARD_ADMIN_URL", admin)
        .env("PLUGBOARD_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A host on `config` whose `admin_token = "${TEST_ADMIN_TOKEN}"` is
/// `token`; returns it and its admin endpoint's URL.
pub fn start_with_token(
    setup: &Setup,
    config: &std::path::Path,
    metrics: &str,
    token: &str,
) -> (Host, String) {
    let mut command = host_command_on(setup, config, metrics);
    command.env("TEST_ADMIN_TOKEN", token);
    let (child, admin) = start_with_admin(command);
    (Host(Some(child)), admin)
}

/// Polls `done` every 200 ms for up to 90 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
