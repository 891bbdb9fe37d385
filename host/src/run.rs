//! A run over the file source: read, decode, dispatch to every plugin, park
//! failures, report. The decode and dispatch steps are the ones every source
//! uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::catalog::Catalog;
use crate::config::{HostConfig, load_plugins};
use crate::dead_letter::{self, FileRecord};
use crate::decode;
use crate::dispatch::{Dispatcher, Outcome};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtime::bindings::wit;
use crate::runtime::{Prepared, Runtime};
use crate::shutdown::Shutdown;
use crate::source::file;
use crate::summary::{PluginReport, Summary};

/// What `plugboard run --events` was asked to do.
#[derive(Debug, Clone)]
pub struct FileRunOptions {
    pub events: PathBuf,
    /// Default: `<events>.dead-letter.ndjson` beside the input.
    pub dead_letter: Option<PathBuf>,
    pub metrics_out: Option<PathBuf>,
}

/// The default dead-letter file for an input file.
pub fn default_dead_letter(events: &Path) -> PathBuf {
    let stem = events
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "events".into());
    events.with_file_name(format!("{stem}.dead-letter.ndjson"))
}

/// Builds the runtime for `config`: one engine, with the compiled-component
/// cache and the plugins' state in the host's data folder, scoped to
/// `source` (the topic, or `file:<name>`).
pub fn runtime_for(config: &HostConfig, source: &str, metrics: Arc<Metrics>) -> Result<Runtime> {
    let path = config.data_dir.join("state.sqlite");
    let state = crate::runtime::kv::StateDb::open(&path)?;
    if let Some(kafka) = &config.kafka {
        let moved = state
            .adopt_unscoped(&kafka.topic.0)
            .with_context(|| format!("cannot move old plugin state in {}", path.display()))?;
        if moved > 0 {
            tracing::info!(
                "{moved} plugin state entries of an earlier version now belong to topic {}",
                kafka.topic.0
            );
        }
    }
    Ok(Runtime::new(Some(&config.cache_dir), metrics)?.with_state(state, source))
}

/// Runs every plugin over the events file to its end, or until `shutdown`:
/// a plugin whose sink is down holds (as under Kafka) until it is back or
/// the run is stopped; events not settled then are reported, not parked.
pub fn run_file(
    config: &HostConfig,
    options: &FileRunOptions,
    shutdown: &Shutdown,
) -> Result<Summary> {
    let metrics = Arc::new(Metrics::new());
    let source = file::source_name(&options.events);
    let runtime = runtime_for(config, &source, metrics.clone())?;
    let specs = load_plugins(config)?;
    if specs.is_empty() {
        anyhow::bail!(
            "no plugins in {}: drop a <name>.wasm (and its <name>.toml manifest) there",
            config.plugins_dir.display()
        );
    }

    let (ready, mut reports) = load(&runtime, specs);
    let started = Instant::now();
    let lines = file::read_lines(&options.events)?;
    let (decoded, originals, mut dead_letters) = decode_lines(&lines, &source, &metrics);
    let events: Vec<wit::Event> = decoded
        .iter()
        .zip(&originals)
        .map(|(event, line)| file::to_wit(event, &source, line.number, false))
        .collect();
    // Plugins that asked for the protobuf encoding get their own copy.
    let with_payload: Vec<wit::Event> = if ready.iter().any(|d| d.prepared().spec.payload) {
        decoded
            .iter()
            .zip(&originals)
            .map(|(event, line)| file::to_wit(event, &source, line.number, true))
            .collect()
    } else {
        Vec::new()
    };
    let decode_failures = dead_letters.len() as u64;

    let per_plugin: Vec<(PluginReport, Vec<FileRecord>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ready
            .into_iter()
            .map(|dispatcher| {
                let events = if dispatcher.prepared().spec.payload {
                    &with_payload
                } else {
                    &events
                };
                let originals = &originals;
                scope.spawn(move || dispatch_all(dispatcher, events, originals, shutdown))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a dispatch thread panicked"))
            .collect()
    });
    for (report, records) in per_plugin {
        reports.push(report);
        dead_letters.extend(records);
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));

    let dead_letter_file = options
        .dead_letter
        .clone()
        .unwrap_or_else(|| default_dead_letter(&options.events));
    dead_letter::write_file(&dead_letter_file, &mut dead_letters)?;
    let summary = Summary {
        lines: lines.len() as u64,
        decode_failures,
        plugins: reports,
        elapsed: started.elapsed(),
        dead_letter_file,
    };
    if let Some(path) = &options.metrics_out {
        write_metrics(path, &metrics)?;
    }
    Ok(summary)
}

/// Compiles and initialises every plugin. One that fails is reported (and
/// logged); the others still run.
fn load(
    runtime: &Runtime,
    specs: Vec<crate::config::PluginSpec>,
) -> (Vec<Dispatcher>, Vec<PluginReport>) {
    let mut reports = Vec::new();
    let mut ready = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        let loaded = runtime.prepare(spec).and_then(|p| {
            let instance = p.instantiate(Some(0))?;
            Ok((p, instance))
        });
        match loaded {
            Ok((prepared, instance)) => {
                tracing::info!(
                    plugin = name,
                    sha256 = &prepared.sha256[..12],
                    "plugin ready"
                );
                ready.push(Dispatcher::new(Arc::new(prepared), instance));
            }
            Err(err) => {
                tracing::error!(plugin = name, "plugin failed to load: {err:#}");
                reports.push(PluginReport {
                    name,
                    sha256: String::new(),
                    stats: None,
                    error: Some(format!("{err:#}")),
                });
            }
        }
    }
    (ready, reports)
}

/// Runs every plugin on the Kafka source until `shutdown`: each in its own
/// consumer group, so a slow plugin never holds back another, and the
/// plugins folder watched, so plugins are added, replaced and removed
/// without a restart. Returns when every consumer has committed and left
/// its group.
pub fn run_kafka(
    config: &HostConfig,
    shutdown: &Shutdown,
    metrics_out: Option<&Path>,
) -> Result<()> {
    let kafka = config.kafka.as_ref().with_context(|| {
        format!(
            "{} has no [kafka] section: add one (brokers, topic), or read a file with --events",
            config.file.display()
        )
    })?;
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let catalog = Catalog::default();
    if let Some(addr) = config.admin_addr {
        let bound = crate::admin::serve(
            addr,
            crate::admin::Admin {
                metrics: metrics.clone(),
                ready: serving.clone(),
                catalog: catalog.clone(),
                kafka: Some(kafka.clone()),
            },
        )?;
        tracing::info!("admin endpoint on http://{bound} (/plugins, /metrics, /healthz, /readyz)");
        // For scripts and tests that asked for port 0.
        println!("admin listening on http://{bound}");
    }
    let runtime = runtime_for(config, &kafka.topic.0, metrics.clone())?;
    let (changed_tx, changed) = std::sync::mpsc::channel();
    let _watcher = crate::reload::watch(&config.plugins_dir, changed_tx)?;
    let mut reloader = Reloader::new(config, kafka, runtime, catalog, shutdown.clone());
    reloader.reconcile()?;
    if reloader.running() == 0 && reloader.has_rejections() {
        anyhow::bail!(
            "no plugin could be started from {}",
            config.plugins_dir.display()
        );
    }
    if reloader.running() == 0 {
        tracing::warn!(
            "no plugins in {} yet: waiting for one to be dropped in",
            config.plugins_dir.display()
        );
    }
    // A stop must not hang on a plugin stuck in a long retry: past the
    // deadline the process exits, and uncommitted events are redelivered.
    let deadline = Duration::from_millis(kafka.shutdown_timeout_ms);
    let watchdog = shutdown.clone();
    std::thread::spawn(move || {
        while watchdog.sleep(Duration::from_secs(3600)) {}
        std::thread::sleep(deadline);
        tracing::error!("shutdown took longer than {deadline:?}; exiting without a final commit");
        std::process::exit(3);
    });
    serving.store(true, std::sync::atomic::Ordering::SeqCst);
    while !shutdown.is_requested() {
        // A failed load is looked at again now and then, in case the write
        // that completes it raised no event.
        let wait = if reloader.has_failures() { 2_000 } else { 200 };
        match changed.recv_timeout(Duration::from_millis(wait)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if reloader.has_failures() => {}
            Err(_) => continue,
        }
        if let Err(e) = reloader.reconcile() {
            tracing::error!("cannot rescan the plugins folder: {e:#}");
        }
    }
    let result = reloader.stop_all();
    if let Some(path) = metrics_out {
        write_metrics(path, &metrics)?;
    }
    result
}

/// Decodes every line once for all plugins. Returns the events, the line
/// each came from, and a dead-letter record per bad line.
fn decode_lines<'a>(
    lines: &'a [file::Line],
    source: &str,
    metrics: &Metrics,
) -> (
    Vec<crate::event::BookingEvent>,
    Vec<&'a file::Line>,
    Vec<FileRecord>,
) {
    let mut events = Vec::with_capacity(lines.len());
    let mut originals = Vec::with_capacity(lines.len());
    let mut failures = Vec::new();
    for line in lines {
        match decode::from_json(&line.text) {
            Ok(event) => {
                events.push(event);
                originals.push(line);
            }
            Err(err) => {
                tracing::warn!(line = line.number, "dead-lettered: {err}");
                metrics.decode_failures.with_label_values(&[source]).inc();
                failures.push(FileRecord {
                    line: line.number,
                    plugin: "decode".into(),
                    class: "decode".into(),
                    reason: err.to_string(),
                    attempts: 0,
                    component_sha256: None,
                    event: line.text.clone(),
                });
            }
        }
    }
    (events, originals, failures)
}

/// Feeds one plugin every event in batches of its configured size, until
/// `shutdown`.
fn dispatch_all(
    mut dispatcher: Dispatcher,
    events: &[wit::Event],
    originals: &[&file::Line],
    shutdown: &Shutdown,
) -> (PluginReport, Vec<FileRecord>) {
    let prepared: Arc<Prepared> = dispatcher.prepared().clone();
    let batch_size = prepared.spec.limits.batch_size;
    let mut records = Vec::new();
    let mut settled = 0;
    for (chunk_no, chunk) in events.chunks(batch_size).enumerate() {
        let outcomes = dispatcher.deliver(chunk, shutdown);
        settled += outcomes.len();
        let complete = outcomes.len() == chunk.len();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            if let Outcome::DeadLetter(failure) = outcome {
                prepared
                    .metrics()
                    .dead_lettered(&prepared.name, failure.class.as_str());
                let line = originals[chunk_no * batch_size + i];
                records.push(FileRecord {
                    line: line.number,
                    plugin: prepared.name.to_string(),
                    class: failure.class.as_str().into(),
                    reason: failure.reason,
                    attempts: failure.attempts,
                    component_sha256: Some(prepared.sha256.clone()),
                    event: line.text.clone(),
                });
            }
        }
        if !complete {
            break;
        }
    }
    dispatcher.stats.unsettled = (events.len() - settled) as u64;
    if dispatcher.stats.unsettled > 0 {
        tracing::warn!(
            plugin = &*prepared.name,
            "stopped with {} events not settled (neither handled nor dead-lettered)",
            dispatcher.stats.unsettled
        );
    }
    let report = PluginReport {
        name: prepared.name.to_string(),
        sha256: prepared.sha256.clone(),
        stats: Some(dispatcher.stats),
        error: None,
    };
    (report, records)
}

/// Writes all metrics in the text format, atomically (the textfile
/// collector may read at any moment).
pub fn write_metrics(path: &Path, metrics: &Metrics) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, metrics.render())
        .with_context(|| format!("cannot write metrics to {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write metrics to {}", path.display()))
}
