//! A run: one source, through decode, dispatch, settle and commit, to
//! every plugin. [`run`] is the one entry point (tests and benchmarks call
//! it); `main` alone prints and picks the exit code.
//!
//! - A file is read to its end: each plugin on a thread of its own goes
//!   through the lines in batches of its size, and the dead letters are
//!   written to one file at the end. A plugin whose sink is down holds (as
//!   under Kafka) until it is back or the run is stopped; events not
//!   settled then are reported, not parked.
//! - Kafka is consumed until shutdown, each plugin in its own consumer
//!   group (so a slow plugin never holds back another), with the plugins
//!   folder watched: plugins are added, replaced and removed without a
//!   restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::catalog::Catalog;
use crate::config::{HostConfig, load_plugins};
use crate::dead_letter::file::Collected;
use crate::dispatch::{Dispatcher, Stats};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtime::{Prepared, Runtime};
use crate::settle::settle;
use crate::shutdown::Shutdown;
use crate::source::{Source, file};
use crate::summary::{PluginReport, Summary};

/// Runs `source` through every plugin of `config` until it ends (a file)
/// or `shutdown` (Kafka).
pub fn run(config: &HostConfig, source: &Source, shutdown: &Shutdown) -> Result<Summary> {
    Run::start(config, source)?.finish(shutdown)
}

/// A run that has started: its admin endpoint, if the config has one, is
/// up (so a caller can say where) before it consumes.
pub struct Run<'a> {
    config: &'a HostConfig,
    source: &'a Source,
    metrics: Arc<Metrics>,
    catalog: Catalog,
    /// What `/readyz` reports.
    serving: Arc<AtomicBool>,
    admin: Option<SocketAddr>,
    /// What an operator switched (Kafka only).
    control: Option<crate::control::Control>,
    /// The redrives this host runs (Kafka only).
    redrives: Option<crate::redrive::runs::Runs>,
    started: Instant,
}

impl<'a> Run<'a> {
    /// Checks `source` against `config` and serves the admin endpoint (for
    /// Kafka, if `admin_addr` is set).
    pub fn start(config: &'a HostConfig, source: &'a Source) -> Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let catalog = Catalog::default();
        let serving = Arc::new(AtomicBool::new(false));
        let mut admin = None;
        let mut control = None;
        let mut redrives = None;
        if let Source::Kafka = source {
            let kafka = kafka_config(config)?;
            let switched = crate::control::Control::load(&config.data_dir, metrics.clone())?;
            control = Some(switched.clone());
            let runs =
                crate::redrive::runs::Runs::new(kafka.clone(), &config.data_dir, switched.clone());
            redrives = Some(runs.clone());
            if let Some(addr) = config.admin_addr {
                let bound = crate::admin::serve(
                    addr,
                    crate::admin::Admin {
                        metrics: metrics.clone(),
                        ready: serving.clone(),
                        catalog: catalog.clone(),
                        kafka: Some(kafka.clone()),
                        control: switched,
                        redrives: Some(runs),
                        started: Instant::now(),
                        rates: Default::default(),
                        token: config.admin_token.clone(),
                    },
                )?;
                tracing::info!(
                    "admin endpoint on http://{bound} (/plugins, /metrics, /healthz, /readyz)"
                );
                admin = Some(bound);
            }
        }
        Ok(Run {
            config,
            source,
            metrics,
            catalog,
            serving,
            admin,
            control,
            redrives,
            started: Instant::now(),
        })
    }

    /// Where the admin endpoint listens (port 0 in the config picks one).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Consumes to the end of the source or to `shutdown`.
    pub fn finish(self, shutdown: &Shutdown) -> Result<Summary> {
        match self.source {
            Source::File {
                events,
                dead_letter,
            } => self.file(events, dead_letter.as_deref(), shutdown),
            Source::Kafka => self.kafka(shutdown),
        }
    }

    fn file(
        self,
        events: &Path,
        dead_letter: Option<&Path>,
        shutdown: &Shutdown,
    ) -> Result<Summary> {
        let config = self.config;
        let source = file::source_name(events);
        let runtime = runtime_for(config, &source, self.metrics.clone())?;
        let specs = load_plugins(config)?;
        if specs.is_empty() {
            anyhow::bail!(
                "no plugins in {}: drop a <name>.wasm (and its <name>.toml manifest) there",
                config.plugins_dir.display()
            );
        }
        let (ready, mut reports) = load(&runtime, specs);
        let lines = file::read_lines(events)?;
        let dead_letters = Collected::default();
        let per_plugin: Vec<PluginReport> = std::thread::scope(|scope| {
            let handles: Vec<_> = ready
                .into_iter()
                .map(|dispatcher| {
                    let (lines, dead_letters) = (&lines, &dead_letters);
                    scope.spawn(move || file_plugin(dispatcher, lines, dead_letters, shutdown))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(report) => report,
                    Err(panic) => PluginReport {
                        name: "?".into(),
                        sha256: String::new(),
                        stats: None,
                        error: Some(format!(
                            "its thread panicked: {}",
                            crate::reload::panic_message(&*panic)
                        )),
                    },
                })
                .collect()
        });
        reports.extend(per_plugin);
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        let dead_letter_file = dead_letter
            .map(Path::to_path_buf)
            .unwrap_or_else(|| default_dead_letter(events));
        dead_letters.write(&dead_letter_file)?;
        Ok(Summary {
            source,
            read: Some(lines.len() as u64),
            decode_failures: dead_letters.decode_failures(),
            plugins: reports,
            elapsed: self.started.elapsed(),
            dead_letters: dead_letter_file.display().to_string(),
            metrics: self.metrics.render(),
        })
    }

    fn kafka(self, shutdown: &Shutdown) -> Result<Summary> {
        let config = self.config;
        let kafka = kafka_config(config)?;
        let runtime = runtime_for(config, &kafka.topic.0, self.metrics.clone())?;
        let control = self.control.clone().expect("loaded for Kafka");
        control.follow(kafka, shutdown)?;
        let (changed_tx, changed) = std::sync::mpsc::channel();
        let _watcher = crate::reload::watch(&config.plugins_dir, changed_tx)?;
        let redrives = self.redrives.clone().expect("made for Kafka");
        let pool = crate::pool::Pool::new(config.workers)
            .context("cannot start the threads of the worker pool")?;
        tracing::info!(workers = pool.workers(), "worker pool started");
        let mut reloader = Reloader::new(
            config,
            kafka,
            runtime,
            self.catalog.clone(),
            shutdown.clone(),
            control,
            pool,
        )
        .with_redrives(redrives.clone());
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
        redrives.resume(
            self.catalog
                .snapshot()
                .into_iter()
                .filter_map(|p| self.catalog.live(&p.name).map(|live| (p.name, live))),
        );
        self.serving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        while !shutdown.is_requested() {
            // A failed load is looked at again now and then, in case the
            // write that completes it raised no event.
            let wait = if reloader.has_failures() { 2_000 } else { 200 };
            match changed.recv_timeout(Duration::from_millis(wait)) {
                Ok(()) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if reloader.has_failures() => {}
                Err(_) => {
                    reloader.tick();
                    continue;
                }
            }
            reloader.tick();
            if let Err(e) = reloader.reconcile() {
                tracing::error!("cannot rescan the plugins folder: {e:#}");
            }
        }
        redrives.stop();
        let stopped = reloader.stop_all();
        let plugins = self
            .catalog
            .snapshot()
            .into_iter()
            .map(|status| PluginReport {
                stats: Some(Stats {
                    handled: self
                        .metrics
                        .events
                        .with_label_values(&[&status.name, "handled"])
                        .get(),
                    retried: self
                        .metrics
                        .retries
                        .with_label_values(&[&status.name])
                        .get(),
                    dead_lettered: self
                        .metrics
                        .events
                        .with_label_values(&[&status.name, "dead_lettered"])
                        .get(),
                    unsettled: 0,
                }),
                error: status.last_error.clone(),
                sha256: status.sha256.clone().unwrap_or_default(),
                name: status.name,
            })
            .collect();
        stopped?;
        Ok(Summary {
            source: kafka.topic.0.clone(),
            read: None,
            decode_failures: 0,
            plugins,
            elapsed: self.started.elapsed(),
            dead_letters: crate::source::kafka::client::dead_letter_topic(kafka, "<plugin>"),
            metrics: self.metrics.render(),
        })
    }
}

fn kafka_config(config: &HostConfig) -> Result<&crate::config::KafkaConfig> {
    config.kafka.as_ref().with_context(|| {
        format!(
            "{} has no [kafka] section: add one (brokers, topic), or read a file with --events",
            config.file.display()
        )
    })
}

/// Feeds one plugin every line of the file in batches of its size, until
/// the end or `shutdown`.
fn file_plugin(
    mut dispatcher: Dispatcher,
    lines: &[file::Line],
    dead_letters: &Collected,
    shutdown: &Shutdown,
) -> PluginReport {
    let prepared: Arc<Prepared> = dispatcher.prepared().clone();
    let batch_size = prepared.spec.limits.batch_size;
    let mut settled = 0;
    for chunk in lines.chunks(batch_size) {
        let done = settle(&mut dispatcher, chunk, dead_letters, shutdown);
        settled += done;
        if done < chunk.len() {
            break;
        }
    }
    dispatcher.stats.unsettled = (lines.len() - settled) as u64;
    if dispatcher.stats.unsettled > 0 {
        tracing::warn!(
            plugin = &*prepared.name,
            "stopped with {} events not settled (neither handled nor dead-lettered)",
            dispatcher.stats.unsettled
        );
    }
    PluginReport {
        name: prepared.name.to_string(),
        sha256: prepared.sha256.clone(),
        stats: Some(dispatcher.stats),
        error: None,
    }
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
    let schemas = crate::schema::Schemas::from_config(&config.schema, &config.data_dir, source)
        .with_context(|| format!("{}: [schema]", config.file.display()))?;
    Ok(Runtime::new(Some(&config.cache_dir), metrics)?
        .with_state(state, source)
        .with_schemas(schemas))
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

/// Writes `metrics` (the text format) to `path` atomically: the textfile
/// collector may read at any moment.
pub fn write_metrics(path: &Path, metrics: &str) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, metrics)
        .with_context(|| format!("cannot write metrics to {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write metrics to {}", path.display()))
}
