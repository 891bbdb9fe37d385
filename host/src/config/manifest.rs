//! Plugin manifests: `<name>.toml` beside `<name>.wasm` in the plugins folder
//! says what the plugin is granted (hosts, one folder, budgets) and its config.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{HostConfig, LimitsFile, parse_toml, resolve, template::Text};

/// One plugin found in the plugins folder, ready to load.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// From the file name: `crm-sync.wasm` is `crm-sync`.
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// The manifest, if there was one (a bare `.wasm` gets no grants).
    pub manifest: Option<PathBuf>,
    /// Outgoing HTTP is allowed only to these origins (`scheme://host:port`).
    pub allow_hosts: Vec<String>,
    /// The one folder the plugin may see, if any.
    pub folder: Option<FolderGrant>,
    /// Budgets, with defaults applied.
    pub limits: Limits,
    /// Config values handed to `init`, environment references expanded.
    pub config: BTreeMap<String, String>,
    /// Whether events carry their protobuf encoding (`event.payload`).
    pub payload: bool,
    /// Whether events carry the fields the contract does not have, as
    /// JSON (`event.extensions`).
    pub extensions: bool,
    /// Batches of one partition in flight at once, its events split by
    /// key so that each key's stay in one batch and in order; 1 (the
    /// default): one batch at a time.
    pub concurrency: usize,
}

/// A host folder made visible to the plugin at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderGrant {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Per-plugin budgets with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub batch_size: usize,
    /// Deliveries of one event that trapped, timed out or broke the
    /// contract before it is dead-lettered. `retry` answers do not count:
    /// they hold the partition for up to `retry_timeout`.
    pub max_attempts: u32,
    /// How long one event may be held by `retry` answers before it is
    /// dead-lettered; none: as long as it takes.
    pub retry_timeout: Option<Duration>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub memory_limit_bytes: usize,
    pub timeout: Duration,
    pub log_lines_per_second: u32,
    pub max_series: usize,
}

impl Limits {
    /// Events per `handle` call: large enough to amortise the call cost (a
    /// few µs per event), small enough that a retry redoes little work.
    pub const DEFAULT_BATCH_SIZE: u32 = 100;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 200;
    pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
    pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 256;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    /// Log and output lines a plugin may write per second (bursts of as
    /// many); the rest are dropped and counted, so a log flood cannot
    /// drown the host's log or its disk.
    pub const DEFAULT_LOG_LINES_PER_SECOND: u64 = 100;
    /// Metric series a plugin may create: a label fed from event data (a
    /// booking id, say) would otherwise grow the host's memory and every
    /// scrape without bound.
    pub const DEFAULT_MAX_SERIES: u64 = 1000;

    /// Applies `plugin`'s values over `host`'s over the defaults.
    pub fn resolve(host: &LimitsFile, plugin: &LimitsFile) -> Self {
        let pick = |p: Option<u64>, h: Option<u64>, d: u64| p.or(h).unwrap_or(d);
        let batch_size = plugin
            .batch_size
            .or(host.batch_size)
            .map_or(Self::DEFAULT_BATCH_SIZE, NonZeroU32::get);
        let max_attempts = plugin
            .max_attempts
            .or(host.max_attempts)
            .map_or(Self::DEFAULT_MAX_ATTEMPTS, NonZeroU32::get);
        Limits {
            batch_size: batch_size as usize,
            max_attempts,
            // 0 is "no limit", so a plugin can lift a host-wide timeout.
            retry_timeout: plugin
                .retry_timeout_ms
                .or(host.retry_timeout_ms)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            backoff_initial: Duration::from_millis(pick(
                plugin.backoff_initial_ms,
                host.backoff_initial_ms,
                Self::DEFAULT_BACKOFF_INITIAL_MS,
            )),
            backoff_max: Duration::from_millis(pick(
                plugin.backoff_max_ms,
                host.backoff_max_ms,
                Self::DEFAULT_BACKOFF_MAX_MS,
            )),
            memory_limit_bytes: (pick(
                plugin.memory_limit_mb,
                host.memory_limit_mb,
                Self::DEFAULT_MEMORY_LIMIT_MB,
            ) as usize)
                .saturating_mul(1 << 20),
            timeout: Duration::from_millis(pick(
                plugin.timeout_ms,
                host.timeout_ms,
                Self::DEFAULT_TIMEOUT_MS,
            )),
            log_lines_per_second: pick(
                plugin.log_lines_per_second,
                host.log_lines_per_second,
                Self::DEFAULT_LOG_LINES_PER_SECOND,
            )
            .min(u32::MAX as u64) as u32,
            max_series: pick(plugin.max_series, host.max_series, Self::DEFAULT_MAX_SERIES) as usize,
        }
    }
}

/// `<name>.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    /// The component file; default `<name>.wasm` beside the manifest.
    #[serde(default)]
    component: Option<Text>,
    /// Origins the plugin may call over HTTP, e.g. `http://127.0.0.1:8088`.
    /// Empty (the default) means none.
    #[serde(default)]
    allow_hosts: Vec<Origin>,
    /// Hand the plugin each event's protobuf encoding too.
    #[serde(default)]
    payload: bool,
    /// Hand the plugin the fields of each event the contract does not
    /// have (a newer producer's), as proto3 JSON.
    #[serde(default)]
    extensions: bool,
    /// Batches of one partition in flight at once, split by key (default
    /// 1); for plugins whose calls wait on a sink and whose state is safe
    /// under it.
    #[serde(default)]
    concurrency: Option<Concurrency>,
    /// The one folder the plugin may read and write.
    #[serde(default)]
    folder: Option<FolderFile>,
    /// Budgets for this plugin.
    #[serde(default)]
    limits: LimitsFile,
    /// Values handed to the plugin's `init`.
    #[serde(default)]
    config: BTreeMap<String, ConfigValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderFile {
    /// Host folder, relative to the manifest's folder; created if missing.
    path: Text,
    /// Where the plugin sees it; default `/data`.
    #[serde(default = "default_guest_path")]
    guest_path: String,
    /// Grant read access only.
    #[serde(default)]
    read_only: bool,
}

fn default_guest_path() -> String {
    "/data".to_string()
}

/// A config value: TOML strings, numbers and booleans all reach the plugin
/// as strings; a table's entries as `<key>.<entry>` (so
/// `extra_properties = { loyalty_tier = "tier" }` arrives as
/// `extra_properties.loyalty_tier` = `tier`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ConfigValue {
    Text(Text),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Table(BTreeMap<String, ConfigValue>),
}

impl ConfigValue {
    /// `key` and this value as the plugin gets them, tables flattened.
    fn flatten(self, key: String, out: &mut BTreeMap<String, String>) {
        let text = match self {
            ConfigValue::Text(t) => t.0,
            ConfigValue::Integer(i) => i.to_string(),
            ConfigValue::Float(f) => f.to_string(),
            ConfigValue::Bool(b) => b.to_string(),
            ConfigValue::Table(table) => {
                for (entry, value) in table {
                    value.flatten(format!("{key}.{entry}"), out);
                }
                return;
            }
        };
        out.insert(key, text);
    }
}

/// Reads one manifest (or none, for a bare component) into a spec.
pub fn parse_manifest(
    name: &str,
    component_default: &Path,
    manifest: Option<&Path>,
    host_limits: &LimitsFile,
) -> Result<PluginSpec> {
    let text = match manifest {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read manifest {}", path.display()))?,
        ),
        None => None,
    };
    manifest_from_text(
        name,
        component_default,
        manifest,
        text.as_deref(),
        host_limits,
    )
}

/// The most batches of one partition a plugin may have in flight.
pub const MAX_CONCURRENCY: usize = 64;

/// [`parse_manifest`] of a manifest's text, `manifest` naming the file in
/// messages.
pub fn manifest_from_text(
    name: &str,
    component_default: &Path,
    manifest: Option<&Path>,
    text: Option<&str>,
    host_limits: &LimitsFile,
) -> Result<PluginSpec> {
    let raw: ManifestFile = match (manifest, text) {
        (Some(path), Some(text)) => parse_toml(path, text)?,
        _ => ManifestFile::default(),
    };
    let base = manifest
        .unwrap_or(component_default)
        .parent()
        .unwrap_or(Path::new("."));
    let limits = Limits::resolve(host_limits, &raw.limits);
    let allow_hosts = raw.allow_hosts.into_iter().map(|o| o.0).collect();
    Ok(PluginSpec {
        name: name.to_string(),
        component: raw
            .component
            .map(|c| resolve(base, &c.0))
            .unwrap_or_else(|| component_default.to_path_buf()),
        manifest: manifest.map(Path::to_path_buf),
        allow_hosts,
        folder: raw.folder.map(|f| FolderGrant {
            host_path: resolve(base, &f.path.0),
            guest_path: f.guest_path,
            read_only: f.read_only,
        }),
        limits,
        config: {
            let mut config = BTreeMap::new();
            for (key, value) in raw.config {
                value.flatten(key, &mut config);
            }
            config
        },
        payload: raw.payload,
        extensions: raw.extensions,
        concurrency: raw.concurrency.map_or(1, |c| c.0),
    })
}

/// `concurrency`, checked while parsing so that a bad one is reported
/// with its line.
#[derive(Debug)]
struct Concurrency(usize);

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Concurrency(n)),
            _ => Err(serde::de::Error::custom(format!(
                "concurrency = {n}: write a number from 1 (one batch of a partition at a time) to {MAX_CONCURRENCY}"
            ))),
        }
    }
}

/// A granted origin, checked and normalised while parsing so that a bad one
/// is reported with its line.
#[derive(Debug)]
struct Origin(String);

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Text::deserialize(d)?;
        normalise_origin(&text.0)
            .map(Origin)
            .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// `http://Host:8088/path` -> `http://host:8088`; the port is made explicit
/// so that a grant and a request compare equal.
pub fn normalise_origin(origin: &str) -> Result<String> {
    let (scheme, rest) = origin.split_once("://").with_context(|| {
        format!("`{origin}` is not an origin: write `http://host:port` or `https://host`")
    })?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => bail!("`{origin}`: only http and https origins can be granted"),
    };
    let authority = rest
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if authority.is_empty() {
        bail!("`{origin}` has no host: write `{scheme}://host:port`");
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']'));
    Ok(if has_port {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}:{default_port}")
    })
}

/// Finds every plugin in the host's plugins folder: each `<name>.toml`, and
/// each `<name>.wasm` without a manifest. Sorted by name.
pub fn load_plugins(host: &HostConfig) -> Result<Vec<PluginSpec>> {
    scan_plugins(host)?.into_values().collect()
}

/// Every plugin in the folder, each with its own result: one bad manifest
/// does not hide the others (a running host keeps serving them).
pub fn scan_plugins(host: &HostConfig) -> Result<BTreeMap<String, Result<PluginSpec>>> {
    let dir = &host.plugins_dir;
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the plugins folder {} (set by plugins_dir in {})",
            dir.display(),
            host.file.display()
        )
    })?;
    let mut names = BTreeMap::<String, (bool, bool)>::new();
    for entry in entries {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if stem.starts_with('.') || stem.ends_with(SHADOW) {
            continue; // temp files of an in-progress copy; shadows
        }
        let slot = names.entry(stem.to_string()).or_default();
        match ext {
            "toml" => slot.0 = true,
            "wasm" => slot.1 = true,
            _ => {}
        }
    }
    let mut specs = BTreeMap::new();
    for (name, (has_manifest, _)) in names.into_iter().filter(|(_, (m, w))| *m || *w) {
        let manifest = has_manifest.then(|| dir.join(format!("{name}.toml")));
        let spec = check_name(&name, dir).and_then(|()| {
            parse_manifest(
                &name,
                &dir.join(format!("{name}.wasm")),
                manifest.as_deref(),
                &host.limits,
            )
        });
        specs.insert(name, spec);
    }
    Ok(specs)
}

/// What a shadow's files add to the plugin's name: `<name>.shadow.wasm`.
const SHADOW: &str = ".shadow";

/// Every shadow in the plugins folder, by the plugin it shadows: each
/// `<name>.shadow.wasm`, with `<name>.shadow.toml` if there is one, else
/// the plugin's own manifest (whose `component` it replaces).
pub fn scan_shadows(host: &HostConfig) -> Result<BTreeMap<String, Result<PluginSpec>>> {
    let dir = &host.plugins_dir;
    let mut shadows = BTreeMap::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the plugins folder {}", dir.display()))?
    {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".shadow.wasm"))
        else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let own = dir.join(format!("{name}{SHADOW}.toml"));
        let base = dir.join(format!("{name}.toml"));
        let manifest = [own, base].into_iter().find(|m| m.exists());
        let spec = check_name(name, dir).and_then(|()| {
            let mut spec = parse_manifest(name, &path, manifest.as_deref(), &host.limits)?;
            spec.component = path.clone();
            Ok(spec)
        });
        shadows.insert(name.to_string(), spec);
    }
    Ok(shadows)
}

fn check_name(name: &str, dir: &Path) -> Result<()> {
    check_plugin_name(name).with_context(|| dir.display().to_string())
}

/// A plugin name names its consumer group, dead-letter topic and metrics:
/// only a-z, 0-9, `-` and `_`.
pub fn check_plugin_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "plugin name `{name}` must use only a-z, 0-9, `-` and `_` (it names the consumer group and metrics)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised() {
        assert_eq!(
            normalise_origin("http://Example.com").unwrap(),
            "http://example.com:80"
        );
        assert_eq!(
            normalise_origin("http://127.0.0.1:8088/crm").unwrap(),
            "http://127.0.0.1:8088"
        );
        assert_eq!(
            normalise_origin("https://x.io").unwrap(),
            "https://x.io:443"
        );
        assert!(normalise_origin("127.0.0.1:8088").is_err());
        assert!(normalise_origin("ftp://x").is_err());
    }
}
