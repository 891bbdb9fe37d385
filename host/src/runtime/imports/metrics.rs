//! `plugboard:plugin/metrics`: a plugin's counters, gauges and histograms.
//! Updates are held with the call and applied only if it counts (see
//! `PluginState::apply_metrics`).

use wasmtime::component::{HasSelf, Linker};

use crate::metrics::Update;
use crate::runtime::bindings::plugboard::plugin::metrics as wit_metrics;
use crate::runtime::observer::series;
use crate::runtime::state::{MetricOp, PluginState};

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit_metrics::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

impl wit_metrics::Host for PluginState {
    fn describe(&mut self, name: String, help: String, buckets: Vec<f64>) {
        self.report(self.metrics.describe(&self.plugin, &name, help, buckets));
    }

    fn counter_add(&mut self, name: String, labels: Vec<wit_metrics::Label>, delta: f64) {
        self.hold_metric(name, labels, Update::Add(delta));
    }

    fn gauge_set(&mut self, name: String, labels: Vec<wit_metrics::Label>, value: f64) {
        let slot = self.slot;
        self.hold_metric(name, labels, Update::Set { slot, value });
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<wit_metrics::Label>, value: f64) {
        self.hold_metric(name, labels, Update::Observe(value));
    }
}

impl PluginState {
    /// Holds one update with the call (shown to an observer now).
    fn hold_metric(&mut self, name: String, labels: Vec<wit_metrics::Label>, update: Update) {
        let labels = pairs(labels);
        let tapped = self.tap.load(std::sync::atomic::Ordering::Relaxed);
        let mut shown = None;
        if self.observer.is_some() || tapped {
            let change = match update {
                Update::Add(delta) => format!("+= {delta}"),
                Update::Set { value, .. } => format!("= {value}"),
                Update::Observe(value) => format!("observe {value}"),
            };
            let line = format!("metric {} {change}", series(&name, &labels));
            if let Some(observer) = &self.observer {
                observer.record(line.clone());
            }
            // Kept for a shadow run once the call counts.
            shown = tapped.then_some(line);
        }
        // What the update holds of the host's memory until the call ends.
        let size = name.len()
            + labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + std::mem::size_of::<MetricOp>();
        let after = self.pending_metric_bytes + size;
        if after > self.max_pending_metric_bytes {
            let max = self.max_pending_metric_bytes;
            self.metrics_overrun.get_or_insert_with(|| {
                format!(
                    "the call's pending metric updates would hold {after} bytes, over its budget of {max} (a quarter of the plugin's memory_limit)"
                )
            });
            return;
        }
        self.pending_metric_bytes = after;
        self.pending_metrics.push(MetricOp {
            name,
            labels,
            update,
            shown,
        });
    }
}

impl PluginState {
    /// A misused metric is the plugin's bug, not a reason to trap it: log it
    /// once per call site and go on.
    pub(crate) fn report(&self, result: Result<(), crate::metrics::MetricError>) {
        if let Err(err) = result {
            tracing::warn!(plugin = &*self.plugin, "metric ignored: {err}");
        }
    }
}

fn pairs(labels: Vec<wit_metrics::Label>) -> Vec<(String, String)> {
    labels.into_iter().map(|l| (l.name, l.value)).collect()
}
