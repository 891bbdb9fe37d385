//! One sandboxed plugin instance: its own Store with a resource limiter
//! (memory, tables, instances), a deadline per call, the granted WASI, and
//! how a call ends ([`Disposition`]).

use std::time::Duration;

use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::{BatchOutcome, Failure, InitError, Plugin, Stop, wit};
use super::engine::EPOCH_TICK;
use super::imports::egress::Egress;
use super::kv;
use super::output::GuestOutput;
use super::plugin::Prepared;
use super::state::PluginState;
use crate::shutdown::Shutdown;

/// The gauge share of an instance made only to check a version.
const PROBE_SLOT: i32 = -1;

/// Core instances, and so tables and memories, one plugin instance may
/// hold: the no-op Rust plugin has 17, the Go notifier 31, the JavaScript
/// one 39 and the Python one 75 (`wasm-tools print | grep -c '(core
/// instance'`); the rest of the budget is slack for a growing toolchain,
/// not for a plugin that instantiates without end.
const MAX_CORE_INSTANCES: usize = 200;

/// Elements a table may grow to: Python's and JavaScript's function tables
/// hold tens of thousands; a plugin that grows one without end traps.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

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
    /// The call held more of the host's memory (pending state writes or
    /// metric updates) than its budget allows; what it held is dropped.
    #[error("plugin went over its budget: {0}")]
    Budget(String),
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

impl Prepared {
    /// Makes a fresh sandboxed instance and runs `init` with the manifest's
    /// config. The instance serves `partition` (it gets the number as
    /// `plugboard.partition`, and its gauges are that partition's share of
    /// the plugin's gauges, which the host sums); `None` makes one only to
    /// check that the version initialises, whose gauges are dropped.
    pub fn instantiate(&self, partition: Option<i32>) -> Result<Instance, CallError> {
        self.instantiate_lane(partition, None)
    }

    /// [`Prepared::instantiate`] for lane `index` of `of` of its partition
    /// (see [`crate::source::kafka`]'s lanes): the instance also gets
    /// `plugboard.lane` and `plugboard.lanes`, so what it writes can be
    /// its lane's alone.
    pub fn instantiate_lane(
        &self,
        partition: Option<i32>,
        lane: Option<(usize, usize)>,
    ) -> Result<Instance, CallError> {
        // A probe's metric updates and state writes are dropped after its
        // `init`, so its slot never shows.
        self.instantiate_in(partition.unwrap_or(PROBE_SLOT), partition, lane)
    }

    fn instantiate_in(
        &self,
        slot: i32,
        partition: Option<i32>,
        lane: Option<(usize, usize)>,
    ) -> Result<Instance, CallError> {
        let spec = &self.spec;
        let output = GuestOutput::new(
            self.name.clone(),
            self.log_budget.clone(),
            self.observer.clone(),
        );
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output.clone());
        // A plugin runs on a partition thread of its own, which may block:
        // its file operations run right there instead of hopping to tokio's
        // blocking pool and back (a pool that had grown to 20 threads under
        // data-lake's writes).
        wasi.allow_blocking_current_thread(true);
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
        // A shadow's calls do not show in the plugin's `waiting`.
        let call = if self.detached {
            std::sync::Arc::new(crate::hold::CallSlot::unlisted(self.name.clone()))
        } else {
            self.metrics.holds.call_slot(&self.name, slot)
        };
        let effects = super::observer::EffectsLog::default();
        let state = PluginState {
            plugin: self.name.clone(),
            wasi: wasi.build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(spec.limits.memory_limit_bytes)
                .table_elements(MAX_TABLE_ELEMENTS)
                .instances(MAX_CORE_INSTANCES)
                .tables(MAX_CORE_INSTANCES)
                .memories(MAX_CORE_INSTANCES)
                .trap_on_grow_failure(true)
                .build(),
            egress: Egress {
                plugin: self.name.clone(),
                allowed: self.allowed.clone(),
                metrics: self.metrics.clone(),
                observer: self.observer.clone(),
                budget: spec.limits.timeout,
                deadline: None,
                stop: None,
                call: call.clone(),
                tap: self.tap.clone(),
                effects: effects.clone(),
            },
            metrics: self.metrics.clone(),
            slot,
            kv: kv::KvState::new(
                self.state.clone(),
                kv::Scope {
                    plugin: self.state_name.clone(),
                    source: self.source.clone(),
                },
                spec.limits.memory_limit_bytes,
            ),
            log_budget: self.log_budget.clone(),
            observer: self.observer.clone(),
            pending_metrics: Vec::new(),
            pending_metric_bytes: 0,
            max_pending_metric_bytes: spec.limits.memory_limit_bytes / 4,
            metrics_overrun: None,
            max_series: spec.limits.max_series,
            tap: self.tap.clone(),
            effects: effects.clone(),
            detached: self.detached,
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
        if let Some((index, of)) = lane {
            config.push(("plugboard.lane".into(), index.to_string()));
            config.push(("plugboard.lanes".into(), of.to_string()));
        }
        store.data_mut().egress.deadline = Some(std::time::Instant::now() + timeout);
        let init = plugin
            .plugboard_plugin_handler()
            .call_init(&mut store, &config)
            .map_err(|e| CallError::Poisoned(classify(e, timeout, &output)))?;
        let data = store.data_mut();
        if let Some(reason) = data.kv.take_failure() {
            // `init` failed because the store did: the host's failure.
            return Err(CallError::Host(reason));
        }
        if let Some(reason) = data.take_overrun() {
            return Err(CallError::Poisoned(Poison::Budget(reason)));
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
            call,
            effects,
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
    /// Its call in progress, for `waiting` (shared with its egress).
    call: std::sync::Arc<crate::hold::CallSlot>,
    /// What it did while tapped, until taken.
    effects: super::observer::EffectsLog,
}

impl Instance {
    /// The requests and metric updates of its calls since the last take
    /// (only while its version is tapped).
    pub fn take_effects(&self) -> super::observer::Effects {
        use crate::locks::Lock;
        std::mem::take(&mut *self.effects.locked())
    }

    /// Calls `handle` with a fresh deadline and sorts how it ended.
    ///
    /// What the call wrote to its state and its metric updates count only
    /// if it handled its whole batch: a call that stops early may have
    /// written for events it did not handle, and those are delivered again.
    /// So a stopped call drops them (see [`Disposition::Stopped`]), and the
    /// caller delivers the handled prefix again on its own to have them
    /// counted once.
    /// Outgoing requests of the call end by its deadline, and at once when
    /// `stop` is raised (the batch is delivered again later).
    pub fn handle(&mut self, batch: &[wit::Event], stop: &Shutdown) -> Disposition {
        self.store.set_epoch_deadline(self.ticks);
        let egress = &mut self.store.data_mut().egress;
        egress.deadline = Some(std::time::Instant::now() + self.timeout);
        if egress.stop.is_none() {
            egress.stop = Some(stop.clone());
        }
        // Only what this call prints may explain its trap.
        self.output.take_tail();
        // A call that lasts shows in `waiting`, with what it waits on.
        self.call.begin();
        let outcome = self
            .plugin
            .plugboard_plugin_handler()
            .call_handle(&mut self.store, batch);
        self.call.end();
        let data = self.store.data_mut();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                data.discard_call();
                data.kv.take_failure();
                data.take_overrun();
                return Disposition::Poisoned(classify(e, self.timeout, &self.output));
            }
        };
        if let Some(reason) = data.take_overrun() {
            // Over budget: nothing of the call counts, whatever it answered.
            data.discard_call();
            data.kv.take_failure();
            return Disposition::Poisoned(Poison::Budget(reason));
        }
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
