//! The plugin runtime: one wasmtime [`Engine`] for the process, each plugin
//! compiled once into a [`Prepared`] plugin, and sandboxed [`Instance`]s
//! made from it.
//!
//! In: a [`PluginSpec`] (component file + grants). Out: an initialised
//! instance whose `handle` ends in exactly one [`Disposition`]. A trap or
//! timeout poisons only that instance: drop it and make another from the
//! same [`Prepared`].

pub mod bindings;
pub mod convert;
mod egress;
pub mod journal;
pub mod kv;
mod log_budget;
mod output;
mod state;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::config::PluginSpec;
use crate::metrics::Metrics;
use bindings::{BatchOutcome, Failure, InitError, Plugin, PluginPre, Stop, wit};
use egress::Egress;
use output::GuestOutput;
pub use state::PluginState;

/// The gauge share of an instance made only to check a version.
const PROBE_SLOT: i32 = -1;

/// How often the epoch ticks; deadlines are whole ticks, so a call runs at
/// most its timeout plus one tick past it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why an instance could not be made and initialised.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The instance is poisoned: it trapped or ran out of time.
    #[error("{0}")]
    Poisoned(Poison),
    /// `init` refused this config for good: this version cannot serve.
    #[error("plugin init failed: {0}")]
    InitRejected(String),
    /// `init` failed for now (a service it needs is down): try again.
    #[error("plugin init failed for now: {0}")]
    InitRetry(String),
    /// A part of the host failed (the state store, a granted folder).
    #[error("{0}")]
    Host(String),
}

/// How an instance was poisoned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    /// A panic, an out-of-bounds access, memory over budget.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past the plugin's time budget and was interrupted.
    #[error("plugin ran past its {0:?} time budget and was interrupted")]
    Timeout(Duration),
}

/// How one `handle` call ended: exactly one of these.
#[derive(Debug)]
pub enum Disposition {
    /// Every event of the batch is handled; the call's state writes and
    /// metric updates count.
    All,
    /// The plugin handled the first `handled` events and said why the next
    /// one failed.
    Stopped {
        handled: usize,
        failure: Failure,
        /// The call had written state or metrics, which were dropped: even
        /// its handled prefix has not counted yet.
        dropped: bool,
        /// State writes were among them: the instance's memory may be ahead
        /// of its store, so it must be rebuilt before the next call.
        state_dropped: bool,
    },
    /// The instance trapped or timed out; nothing of the call counts.
    Poisoned(Poison),
    /// A part of the host failed under the call (the state store); nothing
    /// of it counts, and the batch is delivered again.
    HostFailed(String),
    /// The answer breaks the contract; nothing of it counts.
    Contract(String),
}

impl std::fmt::Display for Disposition {
    /// How `plugboard replay` and the logs say it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disposition::All => write!(f, "ok"),
            Disposition::Stopped {
                failure: Failure::Retry(info),
                ..
            } => match info.after_ms {
                Some(ms) => write!(f, "retry after {ms} ms: {}", info.reason),
                None => write!(f, "retry: {}", info.reason),
            },
            Disposition::Stopped {
                failure: Failure::Reject(reason),
                ..
            } => write!(f, "reject: {reason}"),
            Disposition::Poisoned(poison) => write!(f, "{poison}"),
            Disposition::HostFailed(reason) => write!(f, "host failure: {reason}"),
            Disposition::Contract(reason) => {
                write!(f, "plugin broke the handler contract: {reason}")
            }
        }
    }
}

/// The process-wide engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<PluginState>>,
    metrics: Arc<Metrics>,
    /// Where plugins' `wasi:keyvalue` state lives; none: they have none.
    state: Option<Arc<kv::StateDb>>,
    /// The source events come from (a topic, `file:<name>`): plugins get
    /// it as `plugboard.source`, and their state is scoped to it.
    source: Arc<str>,
    /// Whether time and memory budgets are enforced (always, but in the
    /// benchmark that measures their cost).
    budgets: bool,
    /// Set by `plugboard replay`: record what plugins do, capture egress.
    journal: Option<journal::Journal>,
}

impl Runtime {
    /// Builds the engine with epoch interruption and, if `cache_dir` is
    /// given, wasmtime's compiled-code cache there (a warm hit loads in
    /// about a millisecond instead of compiling for seconds).
    pub fn new(cache_dir: Option<&Path>, metrics: Arc<Metrics>) -> Result<Self> {
        Self::build(cache_dir, metrics, true)
    }

    /// A runtime that enforces no time or memory budget, only to measure
    /// what the budgets cost (`cargo bench --bench dispatch`). Plugins are
    /// never run on it.
    pub fn without_budgets(metrics: Arc<Metrics>) -> Result<Self> {
        Self::build(None, metrics, false)
    }

    fn build(cache_dir: Option<&Path>, metrics: Arc<Metrics>, budgets: bool) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(budgets);
        config.wasm_component_model(true);
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache)?));
        }
        let engine = Engine::new(&config)?;
        start_epoch_ticker(&engine);

        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            metrics,
            state: None,
            source: Arc::from(""),
            budgets,
            journal: None,
        })
    }

    /// Records what plugins do in `journal` (for `plugboard replay`).
    pub fn with_journal(mut self, journal: journal::Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Keeps plugins' state in `db`, scoped to `source`: the topic or
    /// `file:<name>` the events come from.
    pub fn with_state(mut self, db: Arc<kv::StateDb>, source: &str) -> Self {
        self.state = Some(db);
        self.source = Arc::from(source);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles `spec`'s component and links it against the world, once.
    pub fn prepare(&self, spec: PluginSpec) -> Result<Prepared> {
        let bytes = std::fs::read(&spec.component).with_context(|| {
            format!("cannot read plugin component {}", spec.component.display())
        })?;
        self.prepare_bytes(spec, &bytes)
    }

    /// [`Runtime::prepare`] of `bytes`, read from `spec.component` by the
    /// caller: the version's sha256 is of the very bytes compiled, even if
    /// the file changes meanwhile.
    pub fn prepare_bytes(&self, spec: PluginSpec, bytes: &[u8]) -> Result<Prepared> {
        let sha256 = sha256_hex(bytes);
        let component = Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a valid component", spec.component.display()))?;
        let ty = component.component_type();
        let names: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .chain(ty.exports(&self.engine).map(|(n, _)| n.to_string()))
            .collect();
        if let Some(problem) = bindings::other_contract(names.iter().map(String::as_str)) {
            anyhow::bail!(
                "{} is not a plugin for this host: {problem}",
                spec.component.display()
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} needs imports this host does not provide",
                    spec.component.display()
                )
            })?;
        let pre = PluginPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} does not implement the plugboard:plugin/plugin world",
                    spec.component.display()
                )
            })?;
        if let Some(folder) = &spec.folder {
            std::fs::create_dir_all(&folder.host_path).with_context(|| {
                format!(
                    "cannot create the folder granted to {}: {}",
                    spec.name,
                    folder.host_path.display()
                )
            })?;
        }
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let log_budget = Arc::new(log_budget::LogBudget::new(
            name.clone(),
            spec.limits.log_lines_per_second,
            self.metrics.clone(),
        ));
        let allowed: Arc<[String]> = spec.allow_hosts.clone().into();
        Ok(Prepared {
            name,
            allowed,
            sha256,
            spec: Arc::new(spec),
            pre,
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            source: self.source.clone(),
            budgets: self.budgets,
            journal: self.journal.clone(),
            log_budget,
            handled: Arc::default(),
            faulty: Arc::default(),
        })
    }
}

/// The sha256 of `bytes` in hex: how plugin versions are named in logs,
/// `/plugins` and dead-letter records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from a thread of its
/// own, for the life of the process. One ticker per engine.
fn start_epoch_ticker(engine: &Engine) {
    // The thread holds only a weak reference: it ends with the engine.
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugboard-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// One plugin version, compiled and linked: everything needed to make
/// instances quickly (tens of microseconds each).
pub struct Prepared {
    pub name: Arc<str>,
    allowed: Arc<[String]>,
    /// sha256 of the component file, to tell versions apart in logs and
    /// dead-letter records.
    pub sha256: String,
    pub spec: Arc<PluginSpec>,
    pre: PluginPre<PluginState>,
    engine: Engine,
    metrics: Arc<Metrics>,
    state: Option<Arc<kv::StateDb>>,
    source: Arc<str>,
    budgets: bool,
    journal: Option<journal::Journal>,
    log_budget: Arc<log_budget::LogBudget>,
    /// Events this version handled, for `/plugins` during a rollout.
    pub handled: Arc<std::sync::atomic::AtomicU64>,
    /// How this version last broke the contract, if it did: `/plugins`
    /// shows it as faulty.
    pub faulty: Arc<std::sync::Mutex<Option<String>>>,
}

impl Prepared {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This version broke the contract: `/plugins` says so.
    pub fn mark_faulty(&self, reason: &str) {
        use crate::locks::Lock;
        *self.faulty.locked() = Some(reason.to_string());
    }

    /// Makes a fresh sandboxed instance and runs `init` with the manifest's
    /// config. The instance serves `partition` (it gets the number as
    /// `plugboard.partition`, and its gauges are that partition's share of
    /// the plugin's gauges, which the host sums); `None` makes one only to
    /// check that the version initialises, whose gauges are dropped.
    pub fn instantiate(&self, partition: Option<i32>) -> Result<Instance, CallError> {
        let instance = self.instantiate_in(partition.unwrap_or(PROBE_SLOT), partition);
        if partition.is_none() {
            self.metrics.forget_gauge_slot(&self.name, PROBE_SLOT);
        }
        instance
    }

    fn instantiate_in(&self, slot: i32, partition: Option<i32>) -> Result<Instance, CallError> {
        let spec = &self.spec;
        let output = GuestOutput::new(
            self.name.clone(),
            self.log_budget.clone(),
            self.journal.clone(),
        );
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output.clone());
        if let Some(folder) = &spec.folder {
            let perms = if folder.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&folder.host_path, &folder.guest_path, perms)
                .map_err(|e| {
                    CallError::Host(format!(
                        "cannot open granted folder {}: {e}",
                        folder.host_path.display()
                    ))
                })?;
        }
        let state = PluginState {
            plugin: self.name.clone(),
            wasi: wasi.build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(spec.limits.memory_limit_bytes)
                .trap_on_grow_failure(true)
                .build(),
            egress: Egress {
                plugin: self.name.clone(),
                allowed: self.allowed.clone(),
                metrics: self.metrics.clone(),
                journal: self.journal.clone(),
            },
            metrics: self.metrics.clone(),
            slot,
            kv: kv::KvState::new(
                self.state.clone(),
                kv::Scope {
                    plugin: self.name.clone(),
                    source: self.source.clone(),
                },
            ),
            log_budget: self.log_budget.clone(),
            journal: self.journal.clone(),
            pending_metrics: Vec::new(),
            max_series: spec.limits.max_series,
        };
        let mut store = Store::new(&self.engine, state);
        if self.budgets {
            store.limiter(|s| &mut s.limits);
        }
        let timeout = spec.limits.timeout;
        let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::Poisoned(classify(e, timeout, &output)))?;
        let mut config: Vec<(String, String)> = spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.source.is_empty() {
            config.push(("plugboard.source".into(), self.source.to_string()));
        }
        if let Some(p) = partition {
            config.push(("plugboard.partition".into(), p.to_string()));
        }
        let init = plugin
            .plugboard_plugin_handler()
            .call_init(&mut store, &config)
            .map_err(|e| CallError::Poisoned(classify(e, timeout, &output)))?;
        let data = store.data_mut();
        if let Some(reason) = data.kv.take_failure() {
            // `init` failed because the store did: the host's failure.
            return Err(CallError::Host(reason));
        }
        init.map_err(|e| match e {
            InitError::Reject(reason) => CallError::InitRejected(reason),
            InitError::Retry(reason) => CallError::InitRetry(reason),
        })?;
        if partition.is_none() {
            // A probe only checks that the version starts: what its `init`
            // wrote is not state of any partition.
            data.discard_call();
        } else {
            data.kv
                .commit()
                .map_err(|e| CallError::Host(format!("plugin state could not be saved: {e:#}")))?;
            data.apply_metrics();
        }
        Ok(Instance {
            store,
            plugin,
            ticks,
            timeout,
            output,
        })
    }
}

/// One live, initialised plugin instance with its own Store.
pub struct Instance {
    store: Store<PluginState>,
    plugin: Plugin,
    ticks: u64,
    timeout: Duration,
    /// The instance's stdout/stderr, whose last lines explain a trap.
    output: GuestOutput,
}

impl Instance {
    /// Calls `handle` with a fresh deadline and sorts how it ended.
    ///
    /// What the call wrote to its state and its metric updates count only
    /// if it handled its whole batch: a call that stops early may have
    /// written for events it did not handle, and those are delivered again.
    /// So a stopped call drops them (see [`Disposition::Stopped`]), and the
    /// caller delivers the handled prefix again on its own to have them
    /// counted once.
    pub fn handle(&mut self, batch: &[wit::Event]) -> Disposition {
        self.store.set_epoch_deadline(self.ticks);
        // Only what this call prints may explain its trap.
        self.output.take_tail();
        let outcome = self
            .plugin
            .plugboard_plugin_handler()
            .call_handle(&mut self.store, batch);
        let data = self.store.data_mut();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                data.discard_call();
                data.kv.take_failure();
                return Disposition::Poisoned(classify(e, self.timeout, &self.output));
            }
        };
        if let Some(reason) = data.kv.take_failure() {
            // The plugin answered about a store that failed under it.
            data.discard_call();
            return Disposition::HostFailed(reason);
        }
        match outcome {
            BatchOutcome::All => {
                if let Err(e) = data.kv.commit() {
                    data.discard_call();
                    return Disposition::HostFailed(format!(
                        "plugin state could not be saved: {e:#}"
                    ));
                }
                data.apply_metrics();
                Disposition::All
            }
            BatchOutcome::Stopped(Stop { handled, failure }) => {
                let handled = handled as usize;
                if handled >= batch.len() {
                    data.discard_call();
                    return Disposition::Contract(format!(
                        "stopped after {handled} handled events of a batch of {}: answer `all` when every event is handled",
                        batch.len()
                    ));
                }
                let state_dropped = data.kv.has_pending();
                let dropped = data.discard_call();
                Disposition::Stopped {
                    handled,
                    failure,
                    dropped,
                    state_dropped,
                }
            }
        }
    }
}

/// Sorts a wasmtime error into trap or timeout. A trap's message is the
/// trap itself plus what the plugin printed last (for a Rust plugin, the
/// panic message), which says far more than the wasm backtrace.
fn classify(err: wasmtime::Error, timeout: Duration, output: &GuestOutput) -> Poison {
    let trap = err.downcast_ref::<wasmtime::Trap>().copied();
    if trap == Some(wasmtime::Trap::Interrupt) {
        return Poison::Timeout(timeout);
    }
    tracing::debug!("plugin trap: {err:?}");
    let what = match trap {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    let mut printed = output.take_tail();
    printed.retain(|l| !l.starts_with("note: run with `RUST_BACKTRACE"));
    if printed.is_empty() {
        Poison::Trap(what)
    } else {
        Poison::Trap(format!(
            "{what}; the plugin printed: {}",
            printed.join(" | ")
        ))
    }
}
