//! What one plugin instance's Store holds, and the host side of the imports
//! it may call: the granted WASI context, outgoing HTTP behind the egress
//! policy, and the plugin's log and metrics.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::plugboard::plugin::{log, metrics as wit_metrics, types};
use super::egress::Egress;
use super::journal::{Journal, series};
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
    pub(super) kv: super::kv::KvState,
    pub(super) log_budget: Arc<super::log_budget::LogBudget>,
    /// Set by `plugboard replay`: log lines and metrics are recorded there.
    pub(super) journal: Option<Journal>,
    /// Metric updates of the call in progress: they count only if the call
    /// counts (like its state writes), so a batch delivered again is never
    /// counted twice.
    pub(super) pending_metrics: Vec<MetricOp>,
    /// Metric series the plugin may create.
    pub(super) max_series: usize,
}

/// One metric update a plugin made during a call.
pub(super) struct MetricOp {
    name: String,
    labels: Vec<(String, String)>,
    update: Update,
}

impl PluginState {
    /// Applies the call's metric updates: the call's outcome counts.
    pub(super) fn apply_metrics(&mut self) {
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
    }

    /// Drops the call's metric updates and state writes: the call does not
    /// count. True if anything was dropped.
    pub(super) fn discard_call(&mut self) -> bool {
        let dropped = !self.pending_metrics.is_empty() || self.kv.has_pending();
        self.pending_metrics.clear();
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

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        let level_name = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.metrics
            .plugin_log_lines
            .with_label_values(&[plugin, level_name])
            .inc();
        if let Some(journal) = &self.journal {
            journal.record(format!("log {level_name}: {message}"));
            return;
        }
        if !self.log_budget.admit() {
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }
}

impl wit_metrics::Host for PluginState {
    fn describe(&mut self, name: String, help: String, buckets: Vec<f64>) {
        self.report(self.metrics.describe(&self.plugin, &name, help, buckets));
    }

    fn counter_add(&mut self, name: String, labels: Vec<wit_metrics::Label>, delta: f64) {
        let labels = pairs(labels);
        if let Some(journal) = &self.journal {
            journal.record(format!("metric {} += {delta}", series(&name, &labels)));
        }
        self.pending_metrics.push(MetricOp {
            name,
            labels,
            update: Update::Add(delta),
        });
    }

    fn gauge_set(&mut self, name: String, labels: Vec<wit_metrics::Label>, value: f64) {
        let labels = pairs(labels);
        if let Some(journal) = &self.journal {
            journal.record(format!("metric {} = {value}", series(&name, &labels)));
        }
        self.pending_metrics.push(MetricOp {
            name,
            labels,
            update: Update::Set {
                slot: self.slot,
                value,
            },
        });
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<wit_metrics::Label>, value: f64) {
        let labels = pairs(labels);
        if let Some(journal) = &self.journal {
            journal.record(format!("metric {} observe {value}", series(&name, &labels)));
        }
        self.pending_metrics.push(MetricOp {
            name,
            labels,
            update: Update::Observe(value),
        });
    }
}

impl PluginState {
    /// A misused metric is the plugin's bug, not a reason to trap it: log it
    /// once per call site and go on.
    fn report(&self, result: Result<(), crate::metrics::MetricError>) {
        if let Err(err) = result {
            tracing::warn!(plugin = &*self.plugin, "metric ignored: {err}");
        }
    }
}

fn pairs(labels: Vec<wit_metrics::Label>) -> Vec<(String, String)> {
    labels.into_iter().map(|l| (l.name, l.value)).collect()
}
