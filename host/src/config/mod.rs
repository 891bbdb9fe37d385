//! Configuration: the host's TOML file and the plugins folder it names.
//!
//! In: a path to the host config. Out: a [`HostConfig`] with every path
//! absolute and every `${ENV}` reference expanded, and the [`PluginSpec`]s
//! found in the plugins folder (`<name>.wasm` + `<name>.toml`). Fails with a
//! message naming the file, line and key, and what to write instead.

mod manifest;
pub mod template;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

pub use manifest::{
    FolderGrant, Limits, PluginSpec, check_plugin_name, load_plugins, manifest_from_text,
    normalise_origin, parse_manifest, scan_plugins, scan_shadows,
};
use template::Text;

/// The host's settings, resolved.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The config file itself, for messages.
    pub file: PathBuf,
    /// Where plugins are dropped in: `<name>.wasm` plus `<name>.toml`.
    pub plugins_dir: PathBuf,
    /// Where the host keeps what must outlive a run (plugin state); created
    /// on start.
    pub data_dir: PathBuf,
    /// The compiled-component cache; hosts on one machine may share it.
    pub cache_dir: PathBuf,
    /// Budgets every plugin gets unless its manifest says otherwise.
    pub limits: LimitsFile,
    /// The Kafka source, if configured; `run` without `--events` needs it.
    pub kafka: Option<KafkaConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served while
    /// consuming Kafka; none if unset.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
    /// The bearer token the admin endpoint's write endpoints (pause,
    /// resume) require; none: they are not served.
    pub admin_token: Option<AdminToken>,
    /// How new plugin versions go live: approval of new grants, and the
    /// window in which a regressing version is rolled back.
    pub reload: ReloadConfig,
    /// Where writers' schemas come from.
    pub schema: SchemaSource,
    /// Threads that run every plugin's batches (the worker pool).
    pub workers: usize,
}

/// Where the schema of the events comes from, resolved from `[schema]`;
/// see [`crate::schema`].
#[derive(Debug, Clone, Default)]
pub enum SchemaSource {
    /// The compiled-in `booking.v1`.
    #[default]
    Compiled,
    /// A Confluent-compatible registry.
    Registry {
        url: String,
        /// Basic auth (user, password).
        auth: Option<(String, String)>,
        timeout: std::time::Duration,
        /// The subject whose latest schema is fetched at start, `{topic}`
        /// replaced by the topic.
        subject: String,
    },
    /// A FileDescriptorSet or `.proto` file, watched.
    DescriptorSet { path: PathBuf, message: String },
}

/// The `[schema]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    /// Base URL of a Confluent-compatible schema registry, e.g.
    /// `http://127.0.0.1:18081/apis/ccompat/v7`.
    #[serde(default)]
    registry: Option<Text>,
    /// Basic auth for the registry, usually `"${REGISTRY_USER}"`.
    #[serde(default)]
    username: Option<Text>,
    #[serde(default)]
    password: Option<Text>,
    /// How long one request to the registry may take (default 5000).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// The subject of the topic's values, whose latest schema is fetched
    /// (and kept) at start; default `{topic}-value`.
    #[serde(default)]
    subject: Option<Text>,
    /// A FileDescriptorSet (or `.proto` file), relative to the config.
    #[serde(default)]
    descriptor_set: Option<Text>,
    /// The event message in the descriptor set (default
    /// `booking.v1.BookingEvent`, else its one `BookingEvent`).
    #[serde(default)]
    message: Option<Text>,
}

impl SchemaFile {
    fn resolve(self, file: &Path, base: &Path) -> Result<SchemaSource> {
        Ok(match (self.registry, self.descriptor_set) {
            (Some(_), Some(_)) => anyhow::bail!(
                "{}: [schema] sets both `registry` and `descriptor_set`: keep one (a registry names each message's schema by id; a descriptor set is the one schema of every message)",
                file.display()
            ),
            (Some(url), None) => {
                let url = url.0.trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!(
                        "{}: [schema] registry `{url}` is not an http(s) URL: write e.g. http://127.0.0.1:18081/apis/ccompat/v7",
                        file.display()
                    );
                }
                let auth = match (self.username, self.password) {
                    (Some(u), p) if !u.0.is_empty() => {
                        Some((u.0, p.map(|p| p.0).unwrap_or_default()))
                    }
                    _ => None,
                };
                SchemaSource::Registry {
                    url,
                    auth,
                    timeout: std::time::Duration::from_millis(
                        self.timeout_ms.unwrap_or(5_000).max(1),
                    ),
                    subject: self
                        .subject
                        .map_or_else(|| "{topic}-value".to_string(), |s| s.0),
                }
            }
            (None, Some(path)) => SchemaSource::DescriptorSet {
                path: resolve(base, &path.0),
                message: self
                    .message
                    .map(|m| m.0)
                    .unwrap_or_else(|| crate::event::MESSAGE.to_string()),
            },
            (None, None) => SchemaSource::Compiled,
        })
    }
}

/// Who lets a new version that asks for more grants go live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// An operator, with `plugboard ctl approve NAME`.
    #[default]
    Operator,
    /// Nobody: every version goes in at once (development).
    Auto,
}

/// The `[reload]` table: how a swapped version is watched, and whether new
/// grants wait for an operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// `operator` (default): a version whose manifest asks for more than
    /// the running one (an origin, a folder, write access, a larger
    /// budget) waits as pending-approval; `auto`: it goes in at once.
    #[serde(default)]
    pub approve_new_grants: Approval,
    /// Whether a version that fails more than the one it replaced is
    /// swapped back by itself.
    #[serde(default = "yes")]
    pub rollback: bool,
    /// How many events after a swap the new version is watched for ...
    #[serde(default = "default_window_events")]
    pub rollback_window_events: u64,
    /// ... or for how long, whichever ends first.
    #[serde(default = "default_window_secs")]
    pub rollback_window_secs: u64,
    /// How many percentage points more of its events the new version may
    /// fail (trap, time out, reject) than the previous one did ...
    #[serde(default = "default_rollback_points")]
    pub rollback_points: f64,
    /// ... once it failed at least this many; a contract violation rolls
    /// back at once.
    #[serde(default = "default_rollback_min_failures")]
    pub rollback_min_failures: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            approve_new_grants: Approval::default(),
            rollback: true,
            rollback_window_events: default_window_events(),
            rollback_window_secs: default_window_secs(),
            rollback_points: default_rollback_points(),
            rollback_min_failures: default_rollback_min_failures(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_window_events() -> u64 {
    1_000
}
fn default_window_secs() -> u64 {
    600
}
fn default_rollback_points() -> f64 {
    5.0
}
fn default_rollback_min_failures() -> u64 {
    10
}

/// The admin token: never shown, not even by `{:?}`, and compared in
/// constant time.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: String) -> Self {
        AdminToken(token)
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// they differ (both are hashed first, so not on the length either).
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        let (a, b) = (
            Sha256::digest(self.0.as_bytes()),
            Sha256::digest(given.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// How the host writes its log lines: `text` for people, `json` (one
/// object per line, the same fields) for log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format: write text or json")),
        }
    }
}

/// The `[kafka]` table: where events come from and how they are consumed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: Text,
    /// The topic of booking events.
    pub topic: Text,
    /// Each plugin consumes in its own group, `<group_prefix><plugin>`, so a
    /// slow plugin never holds back another and a new one backfills alone.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Where a new group starts: `earliest` (default: a plugin dropped in
    /// later backfills history) or `latest`.
    #[serde(default = "default_start")]
    pub start_from: String,
    /// Dead-letter topic per plugin; `{topic}` and `{plugin}` are replaced.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Where the hosts of the groups share what an operator switched
    /// (pauses, rewinds, redrive progress): a compacted topic, made at
    /// start if missing; `{topic}` is replaced.
    #[serde(default = "default_control_topic")]
    pub control_topic: String,
    /// How often stored offsets are committed; they are also committed on
    /// revoke and on shutdown.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// A stable name for this host process, e.g. `${HOSTNAME}` in a
    /// StatefulSet: static group membership (`group.instance.id`), so a
    /// restarted host gets its partitions back at once instead of waiting
    /// out the session timeout (45 s by default) of its previous life. Two
    /// live hosts must never share one.
    #[serde(default)]
    pub instance_id: Option<Text>,
    /// Messages fetched ahead of each partition's plugin (librdkafka's
    /// `queued.min.messages`, per partition queue): past this librdkafka
    /// stops fetching the partition until its plugin catches up, so a slow
    /// plugin bounds memory instead of piling up fetched messages. A cap
    /// in messages beside the byte budget below.
    #[serde(default = "default_partition_buffer")]
    pub partition_buffer: usize,
    /// Megabytes fetched from Kafka and not handled yet, for all plugins
    /// and partitions together (see [`crate::source::kafka::budget`]).
    #[serde(default = "default_fetch_budget_mb")]
    pub fetch_budget_mb: u64,
    /// How long a graceful shutdown may take to finish the batch in flight
    /// and commit.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// librdkafka settings passed through unchanged (security, SASL, TLS,
    /// tuning), e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub librdkafka: std::collections::BTreeMap<String, Text>,
}

fn default_group_prefix() -> String {
    "plugboard.".into()
}
fn default_start() -> String {
    "earliest".into()
}
fn default_dead_letter_topic() -> String {
    "{topic}.dlq.{plugin}".into()
}
fn default_control_topic() -> String {
    "{topic}.plugboard-control".into()
}
fn default_commit_interval_ms() -> u64 {
    5_000
}
fn default_partition_buffer() -> usize {
    2_000
}
fn default_fetch_budget_mb() -> u64 {
    64
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}

/// `plugboard.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    /// The plugins folder, relative to the config file's folder.
    plugins_dir: Text,
    /// The host's state folder; default `.plugboard` beside the config file.
    #[serde(default)]
    data_dir: Option<Text>,
    /// The compiled-component cache; default `component-cache` in the data
    /// folder.
    #[serde(default)]
    cache_dir: Option<Text>,
    /// Default budgets for all plugins.
    #[serde(default)]
    limits: LimitsFile,
    /// The Kafka source.
    #[serde(default)]
    kafka: Option<KafkaConfig>,
    /// `host:port` of the admin endpoint, e.g. `127.0.0.1:9464`.
    #[serde(default)]
    admin_addr: Option<Text>,
    /// `text` (default) or `json`.
    #[serde(default)]
    log_format: LogFormat,
    /// Usually `"${PLUGBOARD_ADMIN_TOKEN}"`.
    #[serde(default)]
    admin_token: Option<Text>,
    /// Approval of new grants and automatic rollback.
    #[serde(default)]
    reload: ReloadConfig,
    /// Where writers' schemas come from.
    #[serde(default)]
    schema: SchemaFile,
    /// Threads that run the batches of every plugin and partition; default
    /// the cores. A plugin call waiting on its sink lends its place to a
    /// spare thread (see [`crate::pool`]).
    #[serde(default)]
    workers: Option<std::num::NonZeroUsize>,
}

/// Budgets as written in a `[limits]` table; unset fields fall back to the
/// host's `[limits]`, then to the documented defaults in [`Limits`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Events per `handle` call.
    pub batch_size: Option<std::num::NonZeroU32>,
    /// Deliveries of one event that trap, time out or break the contract
    /// before it is dead-lettered (the plugin fails on this event itself).
    pub max_attempts: Option<std::num::NonZeroU32>,
    /// How long the plugin's `retry` answers may hold one event before it
    /// is dead-lettered as `retries-exhausted`; unset or 0: no limit, the
    /// partition waits for the sink as long as it is down.
    pub retry_timeout_ms: Option<u64>,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_initial_ms: Option<u64>,
    /// Upper bound of the retry delay, a `Retry-After` the plugin passes on
    /// included.
    pub backoff_max_ms: Option<u64>,
    /// Linear memory a plugin instance may grow to.
    pub memory_limit_mb: Option<u64>,
    /// Wall time one `handle` (or `init`) call may take before it is
    /// interrupted.
    pub timeout_ms: Option<u64>,
    /// Log and output lines a plugin may write per second; more are
    /// dropped and counted.
    pub log_lines_per_second: Option<u64>,
    /// Metric series (name and label values) a plugin may create; more are
    /// dropped and counted.
    pub max_series: Option<u64>,
}

impl HostConfig {
    /// Reads and resolves the host config at `file`.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read config file {}", file.display()))?;
        Self::from_text(file, &text)
    }

    /// [`HostConfig::load`] of a config's text, `file` naming it in messages
    /// and anchoring its relative paths.
    pub fn from_text(file: &Path, text: &str) -> Result<Self> {
        let raw: HostFile = parse_toml(file, text)?;
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, so paths stay right whatever the working directory.
        let base = &std::path::absolute(base)
            .with_context(|| format!("cannot resolve the folder of {}", file.display()))?;
        let data_dir = match raw.data_dir {
            Some(dir) => resolve(base, &dir.0),
            None => base.join(".plugboard"),
        };
        let cache_dir = match raw.cache_dir {
            Some(dir) => resolve(base, &dir.0),
            None => data_dir.join("component-cache"),
        };
        Ok(HostConfig {
            file: file.to_path_buf(),
            plugins_dir: resolve(base, &raw.plugins_dir.0),
            data_dir,
            cache_dir,
            limits: raw.limits,
            kafka: raw.kafka,
            log_format: raw.log_format,
            reload: raw.reload,
            schema: raw.schema.resolve(file, base)?,
            workers: raw.workers.map_or_else(default_workers, std::num::NonZeroUsize::get),
            admin_token: raw
                .admin_token
                .map(|t| t.0)
                .filter(|t| !t.is_empty())
                .map(AdminToken::new),
            admin_addr: match raw.admin_addr {
                None => None,
                Some(addr) => Some(addr.0.parse().with_context(|| {
                    format!(
                        "{}: admin_addr `{}` is not an address: write host:port, e.g. 127.0.0.1:9464",
                        file.display(),
                        addr.0
                    )
                })?),
            },
        })
    }
}

/// The worker pool's default size: the cores this process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Resolves `path` against `base` unless it is absolute.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Parses TOML into `T`, turning errors into `file:line:column: message` with
/// the offending line quoted.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|err| {
        let message = err.message().trim_end();
        let Some(span) = err.span() else {
            return anyhow::anyhow!("{}: {message}", file.display());
        };
        let before = &text[..span.start.min(text.len())];
        let line_no = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let line = text.lines().nth(line_no - 1).unwrap_or("");
        anyhow::anyhow!(
            "{}:{line_no}:{column}: {message}\n  {line_no} | {line}",
            file.display()
        )
    })
}
