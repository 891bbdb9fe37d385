//! What one plugin instance's Store holds: the granted WASI context, the
//! egress policy, the key-value view, the log budget and the metric updates
//! of the call in progress. The imports that use them are in
//! [`super::imports`].

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::plugboard::plugin::types;
use super::imports::egress::Egress;
use super::observer::Observer;
use crate::metrics::{Metrics, Update};

/// Per-instance host state. One per Store; never shared between plugins.
pub struct PluginState {
    pub(super) plugin: Arc<str>,
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    /// Enforces the memory budget; read by the Store's limiter.
    pub(super) limits: StoreLimits,
    pub(super) egress: Egress,
    pub(super) metrics: Arc<Metrics>,
    /// The share of the plugin's gauges this instance sets: its partition.
    pub(super) slot: i32,
    /// `wasi:keyvalue` state, with this call's writes pending.
    pub(super) kv: super::imports::keyvalue::KvState,
    pub(super) log_budget: Arc<super::log_budget::LogBudget>,
    /// Set by `plugboard replay`: log lines and metrics are recorded there.
    pub(super) observer: Option<Arc<dyn Observer>>,
    /// Metric updates of the call in progress: they count only if the call
    /// counts (like its state writes), so a batch delivered again is never
    /// counted twice.
    pub(super) pending_metrics: Vec<MetricOp>,
    /// Bytes `pending_metrics` holds (names and labels), and their bound:
    /// host memory outside the plugin's own.
    pub(super) pending_metric_bytes: usize,
    pub(super) max_pending_metric_bytes: usize,
    /// Set when an update went over that bound: the call fails as over
    /// its budget, whatever it answers.
    pub(super) metrics_overrun: Option<String>,
    /// Metric series the plugin may create.
    pub(super) max_series: usize,
    /// While set, metric updates are also kept in `effects` (a shadow run
    /// compares them).
    pub(super) tap: Arc<std::sync::atomic::AtomicBool>,
    pub(super) effects: super::observer::EffectsLog,
    /// A shadow's instance: its metric updates reach no registry.
    pub(super) detached: bool,
}

/// One metric update a plugin made during a call.
pub(super) struct MetricOp {
    pub(super) name: String,
    pub(super) labels: Vec<(String, String)>,
    pub(super) update: Update,
    /// The update as a line, while the instance is tapped: a shadow run
    /// compares the updates that counted.
    pub(super) shown: Option<String>,
}

impl PluginState {
    /// Applies the call's metric updates: the call's outcome counts.
    pub(super) fn apply_metrics(&mut self) {
        if self.pending_metrics.iter().any(|op| op.shown.is_some()) {
            use crate::locks::Lock;
            let mut effects = self.effects.locked();
            for op in &mut self.pending_metrics {
                effects.metrics.extend(op.shown.take());
            }
        }
        if self.detached {
            self.pending_metrics.clear();
            self.pending_metric_bytes = 0;
            return;
        }
        // Taken and given back, so the next call reuses the allocation.
        let mut ops = std::mem::take(&mut self.pending_metrics);
        for op in ops.drain(..) {
            let r = self.metrics.plugin_update(
                &self.plugin,
                &op.name,
                &op.labels,
                op.update,
                self.max_series,
            );
            self.report(r);
        }
        self.pending_metrics = ops;
        self.pending_metric_bytes = 0;
    }

    /// Why the call went over a budget of host memory (pending state
    /// writes or metric updates), if it did; cleared.
    pub(super) fn take_overrun(&mut self) -> Option<String> {
        let kv = self.kv.take_overrun();
        self.metrics_overrun.take().or(kv)
    }

    /// Drops the call's metric updates and state writes: the call does not
    /// count. True if anything was dropped.
    pub(super) fn discard_call(&mut self) -> bool {
        let dropped = !self.pending_metrics.is_empty() || self.kv.has_pending();
        self.pending_metrics.clear();
        self.pending_metric_bytes = 0;
        self.kv.discard();
        dropped
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

/// The types interface has no functions; the bindings still want a host.
impl types::Host for PluginState {}
