//! `plugboard replay`: the plugin author's loop. Runs one plugin alone, in
//! the same runtime as `run`, over an events file, and prints per event what
//! it answered, what it logged, the metrics it emitted and the requests it
//! made. Outgoing HTTP is captured (answered by a stub, never sent) unless
//! sending is allowed; a granted folder is replaced by a fresh temporary
//! one whose files are listed at the end; state starts empty. The printout
//! is deterministic, so it can be kept as a golden file and compared with
//! `--expect` in the plugin's own CI.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::config::{LimitsFile, PluginSpec, normalise_origin, parse_manifest};
use crate::metrics::Metrics;
use crate::runtime::bindings::Failure;
use crate::runtime::kv::StateDb;
use crate::runtime::observer::{EgressMode, Journal, Stubs};
use crate::runtime::{Disposition, Runtime};
use crate::source::file;

/// What `plugboard replay` was asked to do (its command-line flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayOptions {
    /// The component file.
    #[arg(long)]
    pub plugin: PathBuf,
    /// Events, one per line (proto3 JSON), as `run --events` reads them.
    #[arg(long)]
    pub events: PathBuf,
    /// The plugin's manifest (grants, limits, config). Default:
    /// `<plugin>.toml` beside the component, if present.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// A config value for `init`, over the manifest's; repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    pub config: Vec<(String, String)>,
    /// Grants an HTTP origin (`scheme://host[:port]`); repeatable.
    #[arg(long = "allow-host", value_name = "ORIGIN")]
    pub allow_hosts: Vec<String>,
    /// Sends requests to granted origins for real.
    #[arg(long)]
    pub allow_egress: bool,
    /// How the stub answers an origin; repeatable. Default for every
    /// origin: 200 with `{}`.
    #[arg(long = "stub", value_name = "ORIGIN=STATUS[:BODY]")]
    pub stubs: Vec<String>,
    /// Reads the events with this schema (a newer producer's `.proto` or
    /// FileDescriptorSet) instead of the compiled booking.v1: the plugin
    /// gets its new states and, if its manifest asks, its new fields.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// The compiled-component cache. Default: plugboard/component-cache in
    /// the user's cache folder.
    #[arg(long, env = "PLUGBOARD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}`: write KEY=VALUE"))
}

/// Where compiled components are cached when no host config says.
fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("plugboard/component-cache")
}

/// The printout, and where the plugin's files went.
pub struct Replay {
    pub text: String,
    pub folder: Option<PathBuf>,
    /// Events whose outcome was not ok.
    pub not_ok: usize,
}

fn parse_stub(stub: &str) -> Result<(String, (u16, String))> {
    let (origin, answer) = stub.split_once('=').with_context(|| {
        format!("--stub `{stub}`: write ORIGIN=STATUS[:BODY], e.g. http://127.0.0.1:8088=503")
    })?;
    let (status, body) = answer.split_once(':').unwrap_or((answer, "{}"));
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
        .with_context(|| format!("--stub `{stub}`: `{status}` is not an HTTP status"))?;
    Ok((normalise_origin(origin)?, (status, body.to_string())))
}

fn spec_for(options: &ReplayOptions) -> Result<PluginSpec> {
    let name = options
        .plugin
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{} has no file name", options.plugin.display()))?
        .to_string();
    let beside = options.plugin.with_extension("toml");
    let manifest = options
        .manifest
        .clone()
        .or_else(|| beside.exists().then_some(beside));
    let mut spec = parse_manifest(
        &name,
        &options.plugin,
        manifest.as_deref(),
        &LimitsFile::default(),
    )?;
    // The component is the one asked for, whatever the manifest names.
    spec.component = options.plugin.clone();
    for (key, value) in &options.config {
        spec.config.insert(key.clone(), value.clone());
    }
    for origin in &options.allow_hosts {
        spec.allow_hosts.push(normalise_origin(origin)?);
    }
    Ok(spec)
}

/// Runs the replay; the caller prints [`Replay::text`].
pub fn replay(options: &ReplayOptions) -> Result<Replay> {
    let mut spec = spec_for(options)?;
    let scratch = std::env::temp_dir().join(format!(
        "plugboard-replay-{}-{}",
        spec.name,
        std::process::id()
    ));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let folder = spec.folder.as_mut().map(|f| {
        f.host_path = scratch.join("folder");
        f.host_path.clone()
    });

    let egress = if options.allow_egress {
        EgressMode::Send
    } else {
        let mut stubs = Stubs::default();
        for stub in &options.stubs {
            let (origin, answer) = parse_stub(stub)?;
            stubs.by_origin.insert(origin, answer);
        }
        EgressMode::Capture(Arc::new(stubs))
    };
    let journal = Arc::new(Journal::new(egress));
    let cache_dir = options.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let runtime = Runtime::new(Some(&cache_dir), Arc::new(Metrics::new()))?
        .with_state(
            StateDb::open(&scratch.join("state.sqlite"))?,
            &crate::source::file::source_name(&options.events),
        )
        .with_observer(journal.clone());
    let schemas = match &options.schema {
        Some(path) => crate::schema::Schemas::file(path)?,
        None => crate::schema::Schemas::compiled(),
    };
    let prepared = runtime.prepare(spec)?;

    let mut out = String::new();
    let mut instance = match prepared.instantiate(Some(0)) {
        Ok(instance) => {
            writeln!(out, "init: ok")?;
            instance
        }
        Err(e) => {
            writeln!(out, "init: {e}")?;
            print_journal(&mut out, &journal);
            bail!("{}\nthe plugin did not initialise: {e}", out.trim_end());
        }
    };
    print_journal(&mut out, &journal);

    let mut not_ok = 0;
    let mut counts = [0usize; 5];
    for line in file::read_lines(&options.events)? {
        let decoded = match schemas.decode_json(&line.text, prepared.spec.extensions) {
            Ok(decoded) => decoded,
            Err(e) => {
                writeln!(out, "line {}: not a valid event: {e}", line.number)?;
                counts[4] += 1;
                continue;
            }
        };
        let event = decoded.event.clone();
        let state = state_name(&decoded);
        let wit_event = crate::settle::decoded_to_wit(&line, decoded, prepared.spec.payload);
        let disposition = instance.handle(
            std::slice::from_ref(&wit_event),
            &crate::shutdown::Shutdown::new(),
        );
        let outcome = disposition.to_string();
        match disposition {
            Disposition::All => counts[0] += 1,
            Disposition::Stopped {
                failure: Failure::Retry(_),
                ..
            } => counts[1] += 1,
            Disposition::Stopped { .. } | Disposition::Contract(_) => counts[2] += 1,
            Disposition::HostFailed(_) => counts[3] += 1,
            Disposition::Poisoned(_) => {
                counts[3] += 1;
                instance = prepared
                    .instantiate(Some(0))
                    .with_context(|| format!("after: {outcome}"))?;
            }
        }
        if outcome != "ok" {
            not_ok += 1;
        }
        writeln!(
            out,
            "line {} {} {} v{} {}: {outcome}",
            line.number, event.event_id, event.booking_id, event.version, state,
        )?;
        print_journal(&mut out, &journal);
    }
    writeln!(
        out,
        "{} ok, {} retry, {} reject, {} trap or timeout, {} invalid lines",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    )?;
    if let Some(folder) = &folder {
        writeln!(out, "files written:")?;
        for (path, size) in list_files(folder)? {
            writeln!(out, "  {path} ({size} bytes)")?;
        }
    }
    Ok(Replay {
        text: out,
        folder,
        not_ok,
    })
}

/// `created`, `paid`, ... as the plugins name states; one the contract
/// does not name as the writer's schema does (`no-show`).
fn state_name(decoded: &crate::schema::Decoded) -> String {
    let state = decoded.event.state;
    crate::event::BookingState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("BOOKING_STATE_")
                .to_ascii_lowercase()
        })
        .ok()
        .or_else(|| {
            decoded
                .writer()
                .enum_names
                .get("state")?
                .get(&state)
                .cloned()
        })
        .unwrap_or_else(|| state.to_string())
}

fn print_journal(out: &mut String, journal: &Journal) {
    for line in journal.take() {
        let _ = writeln!(out, "    {line}");
    }
}

/// Every file under `dir`, relative, sorted, with its size.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                files.push((rel.display().to_string(), entry.metadata()?.len()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The first difference between a golden printout and this one, if any.
pub fn compare(expected: &str, got: &str) -> Option<String> {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    for i in 0..e.len().max(g.len()) {
        let (want, have) = (e.get(i), g.get(i));
        if want != have {
            return Some(format!(
                "line {}:\n  expected: {}\n  got:      {}",
                i + 1,
                want.unwrap_or(&"<end of file>"),
                have.unwrap_or(&"<end of output>")
            ));
        }
    }
    None
}
