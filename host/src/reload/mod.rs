//! Hot reload: the plugins folder is watched, and the running set of
//! plugins is made to match it without a restart.
//!
//! - a new `<name>.wasm` starts consuming in its own group;
//! - a changed component or manifest is compiled, checked against the
//!   world, instantiated and `init`-ed off the hot path, then swapped in
//!   between batches; if any step fails the old version keeps serving and
//!   the failure is logged, counted and shown by `/plugins`;
//! - a removed plugin finishes its batches, commits and stops.
//!
//! A changed version whose manifest asks for more than the running one
//! (see [`grants`]) waits as pending-approval until an operator approves
//! it (`plugboard ctl approve`), unless `[reload] approve_new_grants` is
//! `auto`; and a swapped version is watched by [`rollback`] for a window,
//! and swapped back if it fails more than the version it replaced.
//!
//! A half-written file fails to compile and is retried when it changes
//! again (a plain `cp` ends with a close-after-write event; a rename is one
//! event), so both ways of deploying work.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

pub mod grants;
mod kept;
pub mod rollback;
mod shadows;

use crate::catalog::{Catalog, LivePlugin, PendingApproval};
use crate::config::{Approval, HostConfig, KafkaConfig, PluginSpec, scan_plugins};
use crate::observe::HostEvent;
use crate::pool::Pool;
use crate::runtime::{Prepared, Runtime, sha256_hex};
use crate::shutdown::Shutdown;
use crate::source::kafka::budget::FetchBudget;

/// Quiet time after the last file event before the folder is rescanned:
/// a copy of a large component raises many writes.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Quiet time after an event that says a file is complete (closed after
/// writing, or renamed into place): only to gather the manifest written
/// beside it. Waiting the full [`DEBOUNCE`] here was a fifth of a reload.
const SETTLED: Duration = Duration::from_millis(20);

/// What identifies a plugin version: its component and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    component: String,
    manifest: Option<String>,
}

impl Fingerprint {
    /// The version's name in `/plugins`, approvals and dead letters: the
    /// component's sha256, and the manifest's after a `+` (a changed
    /// manifest is a new version of the same component).
    fn id(&self) -> String {
        match &self.manifest {
            Some(m) => format!("{}+{}", &self.component[..16], &m[..16]),
            None => self.component[..16].to_string(),
        }
    }
}

/// A version that asks for more grants than the one it would replace,
/// loaded and checked, waiting for an operator.
struct Pending {
    fingerprint: Fingerprint,
    prepared: Arc<Prepared>,
    files: Files,
}

/// A version's files as they were read for its fingerprint.
pub struct Files {
    pub component: Vec<u8>,
    pub manifest: Option<Vec<u8>>,
}

/// The fingerprint of `spec`, and the files it was taken from: those very
/// bytes are compiled, so the version's sha256 and its fingerprint never
/// disagree.
fn fingerprint(spec: &PluginSpec) -> Result<(Fingerprint, Files)> {
    let read = |path: &Path| -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let component = read(&spec.component)?;
    let manifest = match spec.manifest.as_deref() {
        Some(path) => Some(read(path)?),
        None => None,
    };
    let fingerprint = Fingerprint {
        component: sha256_hex(&component),
        manifest: manifest.as_deref().map(sha256_hex),
    };
    Ok((
        fingerprint,
        Files {
            component,
            manifest,
        },
    ))
}

/// A plugin consuming on a thread of its own.
struct Running {
    live: Arc<LivePlugin>,
    fingerprint: Fingerprint,
    stop: Shutdown,
    thread: JoinHandle<Result<()>>,
}

/// Keeps the running plugins in step with the folder.
pub struct Reloader {
    config: HostConfig,
    kafka: KafkaConfig,
    runtime: Runtime,
    catalog: Catalog,
    /// Raised when a consumer fails for good: the host stops.
    host_shutdown: Shutdown,
    running: BTreeMap<String, Running>,
    /// Versions that failed to load, so unchanged bytes are not retried.
    failed: BTreeMap<String, Fingerprint>,
    /// Plugins whose `init` said to try again later: loaded again at the
    /// next rescan, whether or not their files change.
    retry_init: std::collections::BTreeSet<String>,
    /// What an operator switched (pauses, rewinds, approvals).
    control: crate::control::Control,
    /// The threads every plugin's partitions are run on, and what all
    /// consumers together may have fetched and not handled.
    shared: crate::source::kafka::Shared,
    /// Versions waiting for an operator's approval, per plugin.
    pending: BTreeMap<String, Pending>,
    /// Swapped versions under watch, per plugin.
    watched: BTreeMap<String, rollback::Watch>,
    /// Where a rolled-back version's dead letters are delivered again.
    redrives: Option<crate::redrive::runs::Runs>,
    /// Rolled-back versions whose dead letters wait to be delivered again.
    redeliver: Vec<rollback::Redeliver>,
    /// Shadows running beside plugins, and shadow files that failed.
    shadows: BTreeMap<String, shadows::Attached>,
    failed_shadows: BTreeMap<String, Fingerprint>,
    /// The versions that served well and those rolled back, across
    /// restarts.
    kept: kept::Kept,
}

impl Reloader {
    pub fn new(
        config: &HostConfig,
        kafka: &KafkaConfig,
        runtime: Runtime,
        catalog: Catalog,
        host_shutdown: Shutdown,
        control: crate::control::Control,
        pool: Pool,
    ) -> Self {
        Reloader {
            shared: crate::source::kafka::Shared {
                pool,
                budget: Arc::new(FetchBudget::new(kafka.fetch_budget_mb)),
            },
            config: config.clone(),
            kafka: kafka.clone(),
            runtime,
            catalog,
            host_shutdown,
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            retry_init: Default::default(),
            control,
            pending: BTreeMap::new(),
            watched: BTreeMap::new(),
            redrives: None,
            redeliver: Vec::new(),
            shadows: BTreeMap::new(),
            failed_shadows: BTreeMap::new(),
            kept: kept::Kept::new(&config.data_dir),
        }
    }

    /// Delivers the dead letters of a rolled-back version through `runs`.
    pub fn with_redrives(mut self, runs: crate::redrive::runs::Runs) -> Self {
        self.redrives = Some(runs);
        self
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether some plugin failed to load for good (not just "later").
    pub fn has_rejections(&self) -> bool {
        !self.failed.is_empty()
    }

    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty() || !self.retry_init.is_empty()
    }

    /// Rescans the folder and starts, swaps or stops plugins to match it.
    pub fn reconcile(&mut self) -> Result<()> {
        let scanned = scan_plugins(&self.config)?;
        self.shared.budget.set_plugins(scanned.len());
        for name in not_in(&self.running, &scanned) {
            self.stop(&name);
        }
        self.failed.retain(|name, _| scanned.contains_key(name));
        self.retry_init.retain(|name| scanned.contains_key(name));
        for name in not_in(&self.pending, &scanned) {
            self.pending.remove(&name);
            self.nothing_pending(&name);
        }
        for (name, spec) in scanned {
            let spec = match spec {
                Ok(spec) => spec,
                Err(err) => {
                    self.fail(&name, None, &format!("{err:#}"));
                    continue;
                }
            };
            let (fingerprint, files) = match fingerprint(&spec) {
                Ok(f) => f,
                Err(err) => {
                    self.fail(&name, None, &format!("{err:#}"));
                    continue;
                }
            };
            if self.running.get(&name).map(|r| &r.fingerprint) == Some(&fingerprint) {
                // Back to the serving version: nothing waits any more.
                if self.pending.remove(&name).is_some() {
                    self.nothing_pending(&name);
                }
                continue;
            }
            if self.failed.get(&name) == Some(&fingerprint)
                || self.pending.get(&name).map(|p| &p.fingerprint) == Some(&fingerprint)
            {
                continue;
            }
            if !self.running.contains_key(&name) && self.kept.refused(&name, &fingerprint.id()) {
                self.start_kept(name, fingerprint);
                continue;
            }
            let began = Instant::now();
            match load(&self.runtime, spec, &files.component) {
                Ok(mut prepared) => {
                    self.failed.remove(&name);
                    self.retry_init.remove(&name);
                    prepared.version = fingerprint.id();
                    let gate = self.config.reload.approve_new_grants == Approval::Operator;
                    let asks = match self.running.get(&name) {
                        Some(running) if gate => {
                            grants::added(&running.live.current().spec, &prepared.spec)
                        }
                        None if gate && !self.control.approved(&name, &prepared.version) => {
                            match self.kept_to_serve_first(&name, &prepared) {
                                Some((kept, kept_fingerprint, asks)) => {
                                    tracing::warn!(
                                        plugin = name,
                                        kept = kept.version,
                                        "the folder's version asks for more grants than the version that served before the restart, which serves until it is approved"
                                    );
                                    self.catalog.loaded(&kept);
                                    self.start(name.clone(), kept, kept_fingerprint);
                                    asks
                                }
                                None => Vec::new(),
                            }
                        }
                        _ => Vec::new(),
                    };
                    let prepared = Arc::new(prepared);
                    if !asks.is_empty() && !self.control.approved(&name, &prepared.version) {
                        tracing::warn!(
                            plugin = name,
                            version = prepared.version,
                            "the new version waits for approval (plugboard ctl approve {name}): it asks for {}",
                            asks.join("; ")
                        );
                        self.catalog.pending(
                            &name,
                            Some(PendingApproval {
                                state: "pending-approval",
                                version: prepared.version.clone(),
                                sha256: prepared.sha256.clone(),
                                asks,
                            }),
                        );
                        self.pending.insert(
                            name,
                            Pending {
                                fingerprint,
                                prepared,
                                files,
                            },
                        );
                        continue;
                    }
                    if self.pending.remove(&name).is_some() {
                        self.nothing_pending(&name);
                    }
                    HostEvent::PluginLoaded {
                        plugin: &name,
                        sha256: &prepared.sha256,
                        took: began.elapsed(),
                    }
                    .emit(self.runtime.metrics());
                    self.go_live(name, prepared, fingerprint, files);
                }
                Err(err) => {
                    // An `init` that will work later is tried again, the
                    // same files or not; any other failure waits for a
                    // change of them.
                    let later = matches!(
                        err.downcast_ref::<crate::runtime::CallError>(),
                        Some(crate::runtime::CallError::InitRetry(_))
                    );
                    if later {
                        self.retry_init.insert(name.clone());
                        self.fail(&name, None, &format!("{err:#}; trying again"));
                    } else {
                        self.fail(&name, Some(fingerprint), &format!("{err:#}"));
                    }
                }
            }
        }
        self.reconcile_shadows();
        Ok(())
    }

    /// Nothing of `name` waits for approval (any more).
    fn nothing_pending(&self, name: &str) {
        self.catalog.pending(name, None);
        self.runtime
            .metrics()
            .pending_approval
            .with_label_values(&[name])
            .set(0);
    }

    /// Makes `prepared` serve `name`: started, or swapped in between
    /// batches (and watched for the rollback window).
    fn go_live(
        &mut self,
        name: String,
        prepared: Arc<Prepared>,
        fingerprint: Fingerprint,
        files: Files,
    ) {
        self.catalog.loaded(&prepared);
        match self.running.get_mut(&name) {
            Some(running) => {
                let previous = running.live.current();
                running.live.swap(prepared.clone());
                self.runtime.metrics().new_plugin_version(&name);
                running.fingerprint = fingerprint;
                self.kept
                    .went_live(&name, &prepared.version, &prepared.spec, &files);
                if self.config.reload.rollback {
                    let watch = rollback::Watch::new(previous, prepared, &self.config.reload);
                    self.watched.insert(name, watch);
                } else {
                    self.kept.passed(&name);
                }
            }
            None => {
                self.kept
                    .went_live(&name, &prepared.version, &prepared.spec, &files);
                self.kept.passed(&name);
                self.start(name, prepared, fingerprint);
            }
        }
    }

    /// The kept version of `name`, compiled and checked, with the
    /// fingerprint its files would have in the folder.
    fn kept_version(&self, name: &str) -> Result<Option<(Arc<Prepared>, Fingerprint)>> {
        let Some((spec, files, version)) = self.kept.load(name, &self.config) else {
            return Ok(None);
        };
        let fingerprint = Fingerprint {
            component: sha256_hex(&files.component),
            manifest: files.manifest.as_deref().map(sha256_hex),
        };
        let mut prepared = load(&self.runtime, spec, &files.component)?;
        prepared.version = version;
        Ok(Some((Arc::new(prepared), fingerprint)))
    }

    /// The folder holds a version of `name` rolled back before: the kept
    /// version serves instead, until the files change.
    fn start_kept(&mut self, name: String, fingerprint: Fingerprint) {
        let refused = format!(
            "version {} was rolled back: refused until its files change",
            fingerprint.id()
        );
        match self.kept_version(&name) {
            Ok(Some((prepared, _))) => {
                tracing::error!(
                    plugin = name,
                    kept = prepared.version,
                    "{refused}: the kept version serves"
                );
                self.catalog.loaded(&prepared);
                self.catalog.failed(&name, &refused);
                // The folder's fingerprint: not loaded again until it changes.
                self.start(name, prepared, fingerprint);
            }
            Ok(None) => self.fail(
                &name,
                Some(fingerprint),
                &format!("{refused}; no earlier version is kept"),
            ),
            Err(e) => self.fail(
                &name,
                Some(fingerprint),
                &format!("{refused}; the kept version cannot serve either: {e:#}"),
            ),
        }
    }

    /// At start: the kept version of `name`, if `prepared` (the folder's)
    /// asks for more grants than it, with what it asks for. The folder's
    /// version then waits for approval while the kept one serves, as it
    /// would have had the host been running when the files changed.
    fn kept_to_serve_first(
        &self,
        name: &str,
        prepared: &Prepared,
    ) -> Option<(Arc<Prepared>, Fingerprint, Vec<String>)> {
        match self.kept_version(name) {
            Ok(Some((kept, fingerprint))) if kept.version != prepared.version => {
                let asks = grants::added(&kept.spec, &prepared.spec);
                (!asks.is_empty()).then_some((kept, fingerprint, asks))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(
                    plugin = name,
                    "the kept version cannot be loaded to compare grants with: {e:#}"
                );
                None
            }
        }
    }

    /// What is due between file changes: approved versions go live, and
    /// swapped versions are judged.
    pub fn tick(&mut self) {
        let approved: Vec<String> = self
            .pending
            .iter()
            .filter(|(name, p)| self.control.approved(name, &p.prepared.version))
            .map(|(name, _)| name.clone())
            .collect();
        for name in approved {
            let Some(pending) = self.pending.remove(&name) else {
                continue;
            };
            self.nothing_pending(&name);
            tracing::info!(
                plugin = name,
                version = pending.prepared.version,
                "approved: the new version goes live"
            );
            self.go_live(name, pending.prepared, pending.fingerprint, pending.files);
        }
        self.promote_shadows();
        self.judge();
    }

    /// Judges each swapped version under watch: kept once its window
    /// passed, swapped back if it fails more than the one it replaced.
    fn judge(&mut self) {
        let names: Vec<String> = self.watched.keys().cloned().collect();
        for name in names {
            let verdict = self.watched[&name].verdict();
            match verdict {
                rollback::Verdict::Watching => {}
                rollback::Verdict::Kept => {
                    let watch = self.watched.remove(&name).expect("listed");
                    self.kept.passed(&name);
                    tracing::info!(
                        plugin = name,
                        version = watch.next.version,
                        "the new version passed its rollback window"
                    );
                }
                rollback::Verdict::RollBack(reason) => {
                    let watch = self.watched.remove(&name).expect("listed");
                    let Some(running) = self.running.get(&name) else {
                        continue;
                    };
                    // The file's fingerprint stays the bad version's: it is
                    // not loaded again until the file changes.
                    running.live.swap(watch.previous.clone());
                    let (from, to) = (&watch.next.version, &watch.previous.version);
                    tracing::error!(
                        plugin = name,
                        from,
                        to,
                        "rolled back: {reason}; the version stays refused until its files change, and what it dead-lettered is delivered again"
                    );
                    self.runtime.metrics().rolled_back(&name);
                    self.kept.rolled_back(&name, from);
                    self.catalog.rolled_back(&watch.previous, from, &reason);
                    self.redeliver.push(rollback::Redeliver::new(
                        name.clone(),
                        running.live.clone(),
                        watch.next,
                        reason,
                    ));
                }
            }
        }
        let Some(runs) = self.redrives.clone() else {
            self.redeliver.clear();
            return;
        };
        self.redeliver
            .retain_mut(|r| !r.try_start(&runs, &self.control));
    }

    fn fail(&mut self, name: &str, fingerprint: Option<Fingerprint>, error: &str) {
        HostEvent::LoadFailed {
            plugin: name,
            error,
            serving: self.running.contains_key(name),
        }
        .emit(self.runtime.metrics());
        if let Some(f) = fingerprint {
            self.failed.insert(name.to_string(), f);
        }
        self.catalog.failed(name, error);
    }

    fn start(&mut self, name: String, prepared: Arc<Prepared>, fingerprint: Fingerprint) {
        tracing::info!(
            "{} -> {name} (group {}{name})",
            self.kafka.topic.0,
            self.kafka.group_prefix
        );
        let live = Arc::new(LivePlugin::new(prepared));
        self.catalog.serving(&name, live.clone());
        let stop = Shutdown::new();
        let is_paused = self.control.pauses.is_paused(&name);
        if is_paused {
            tracing::warn!(
                plugin = name,
                "paused (plugboard ctl resume {name} resumes it)"
            );
        }
        self.runtime.metrics().set_paused(&name, is_paused);
        let thread = {
            let (kafka, live, stop) = (self.kafka.clone(), live.clone(), stop.clone());
            let control = self.control.clone();
            let shared = self.shared.clone();
            let host_shutdown = self.host_shutdown.clone();
            std::thread::Builder::new()
                .name(format!("{name}-poll"))
                .spawn(move || {
                    let result = consume(&kafka, live, control, &shared, &stop);
                    if result.is_err() {
                        // A consumer that cannot go on stops the host.
                        host_shutdown.request();
                    }
                    result
                })
                .expect("cannot start a consumer thread")
        };
        self.running.insert(
            name,
            Running {
                live,
                fingerprint,
                stop,
                thread,
            },
        );
    }

    /// Drains and stops one plugin: its batches finish and it commits.
    fn stop(&mut self, name: &str) {
        self.watched.remove(name);
        self.shadows.remove(name);
        if let Some(running) = self.running.remove(name) {
            tracing::info!(plugin = name, "removed from the folder; draining");
            running.stop.request();
            join(name, running.thread);
            self.runtime.metrics().plugin_removed(name);
            self.catalog.stopped(name);
            tracing::info!(plugin = name, "stopped");
        }
    }

    /// Stops every plugin; returns the first consumer error.
    pub fn stop_all(&mut self) -> Result<()> {
        for running in self.running.values() {
            running.stop.request();
        }
        // Every consumer is waited for, whatever one of them did: a panic
        // of one must not keep the others from committing and leaving.
        let mut result = Ok(());
        for (name, running) in std::mem::take(&mut self.running) {
            let failure = match running.thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(panic) => {
                    anyhow::anyhow!("the consumer thread panicked: {}", panic_message(&panic))
                }
            };
            tracing::error!(plugin = name, "consumer failed: {failure:#}");
            if result.is_ok() {
                result = Err(failure.context(format!("the consumer of {name} failed")));
            }
        }
        result
    }
}

/// The names of `map` that `scanned` does not hold (any more).
fn not_in<V, W>(map: &BTreeMap<String, V>, scanned: &BTreeMap<String, W>) -> Vec<String> {
    map.keys()
        .filter(|name| !scanned.contains_key(*name))
        .cloned()
        .collect()
}

fn join(name: &str, thread: JoinHandle<Result<()>>) {
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(plugin = name, "consumer failed: {e:#}"),
        Err(panic) => tracing::error!(
            plugin = name,
            "consumer thread panicked: {}",
            panic_message(&panic)
        ),
    }
}

/// Consumes the topic for the plugin `live` serves, its batches settled
/// through the pipeline into its dead-letter topic.
fn consume(
    kafka: &KafkaConfig,
    live: Arc<LivePlugin>,
    control: crate::control::Control,
    shared: &crate::source::kafka::Shared,
    stop: &Shutdown,
) -> Result<()> {
    let topic = crate::dead_letter::topic::Topic::new(kafka, &live.current().name)?;
    let settle: crate::source::kafka::Settle = Arc::new(IntoTopic(topic));
    crate::source::kafka::consume(kafka, live, settle, &control, shared, stop)
}

/// Batches settled through the pipeline, dead letters to the plugin's
/// topic.
struct IntoTopic(crate::dead_letter::topic::Topic);

impl crate::source::kafka::SettleBatch for IntoTopic {
    fn borrowed(
        &self,
        dispatcher: &mut crate::dispatch::Dispatcher,
        batch: &[rdkafka::message::BorrowedMessage<'_>],
        stop: &Shutdown,
    ) -> usize {
        crate::settle::settle(dispatcher, batch, &self.0, stop)
    }

    fn owned(
        &self,
        dispatcher: &mut crate::dispatch::Dispatcher,
        batch: &[rdkafka::message::OwnedMessage],
        stop: &Shutdown,
    ) -> usize {
        crate::settle::settle(dispatcher, batch, &self.0, stop)
    }
}

/// What a panic said, if it said it as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Compiles and checks a version (`bytes`, read from its component file),
/// and proves that an instance of it initialises with its config, before
/// anything is swapped.
pub fn load(runtime: &Runtime, spec: PluginSpec, bytes: &[u8]) -> Result<Prepared> {
    let prepared = runtime.prepare_bytes(spec, bytes)?;
    prepared.instantiate(None)?;
    Ok(prepared)
}

/// Watches `dir` and sends a unit on `changed` after each burst of changes
/// to it, once it has been quiet for `DEBOUNCE`. The watcher lives as
/// long as the returned value.
pub fn watch(dir: &Path, changed: Sender<()>) -> Result<notify::RecommendedWatcher> {
    let (events_tx, events) = std::sync::mpsc::channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = events_tx.send(event);
        }
    })
    .context("cannot start watching the plugins folder")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch the plugins folder {}", dir.display()))?;
    std::thread::Builder::new()
        .name("plugboard-watch".into())
        .spawn(move || debounce(events, changed))?;
    Ok(watcher)
}

/// Only events that mean "the content may have changed": the host's own
/// reads of the files raise open/close-read events, which must not loop.
fn relevant(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Remove(_)
    )
}

/// Whether `event` says a file is complete: nothing more will be written
/// to it by whoever dropped it in.
fn complete(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

fn debounce(events: Receiver<notify::Event>, changed: Sender<()>) {
    loop {
        // Wait for the first relevant event of a burst...
        let mut last = match events.recv() {
            Ok(event) if relevant(&event) => event,
            Ok(_) => continue,
            Err(_) => return,
        };
        // ...then for quiet: short once the last event said its file is
        // complete, long while writes may still come.
        loop {
            let quiet = if complete(&last) { SETTLED } else { DEBOUNCE };
            match events.recv_timeout(quiet) {
                Ok(event) if relevant(&event) => last = event,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if changed.send(()).is_err() {
            return;
        }
    }
}
