//! What the host reports about itself, as typed events. Each kind emits its
//! log line and counts its metric with the same labels, in one place, so
//! the log and `/metrics` never tell two stories, and a new kind of event
//! cannot forget either.

use std::time::Duration;

use crate::metrics::Metrics;

/// One observable thing the host did.
#[derive(Debug)]
pub enum HostEvent<'a> {
    /// An event was parked for good in `sink` (a file or a topic), counted
    /// when the sink has it.
    DeadLettered {
        plugin: &'a str,
        partition: i32,
        offset: i64,
        /// The failure class, as the dead-letter records name it.
        class: &'a str,
        reason: &'a str,
        sink: &'a str,
    },
    /// A delivery will be tried again: the plugin failed on the event
    /// itself (`attempt` of its budget) and backs off.
    Retried {
        plugin: &'a str,
        partition: i32,
        attempt: u32,
        reason: &'a str,
    },
    /// An instance was discarded; the next call gets a fresh one.
    InstanceRebuilt {
        plugin: &'a str,
        partition: i32,
        reason: &'a str,
    },
    /// A version was compiled, linked and initialised, at start or by a
    /// reload.
    PluginLoaded {
        plugin: &'a str,
        sha256: &'a str,
        took: Duration,
    },
    /// A version could not be loaded; `serving` says whether a previous one
    /// keeps serving.
    LoadFailed {
        plugin: &'a str,
        error: &'a str,
        serving: bool,
    },
}

impl HostEvent<'_> {
    /// Logs it and counts it.
    pub fn emit(self, metrics: &Metrics) {
        match self {
            HostEvent::DeadLettered {
                plugin,
                partition,
                offset,
                class,
                reason,
                sink,
            } => {
                tracing::warn!(
                    plugin,
                    partition,
                    offset,
                    class,
                    "dead-lettered to {sink}: {reason}"
                );
                metrics.dead_lettered(plugin, class);
            }
            HostEvent::Retried {
                plugin,
                partition,
                attempt,
                reason,
            } => {
                tracing::info!(
                    plugin,
                    partition,
                    attempt,
                    "delivering the event again after: {reason}"
                );
                metrics.retries.with_label_values(&[plugin]).inc();
            }
            HostEvent::InstanceRebuilt {
                plugin,
                partition,
                reason,
            } => {
                tracing::debug!(
                    plugin,
                    partition,
                    reason,
                    "instance discarded; rebuilt at the next call"
                );
                metrics
                    .instance_restarts
                    .with_label_values(&[plugin, reason])
                    .inc();
            }
            HostEvent::PluginLoaded {
                plugin,
                sha256,
                took,
            } => {
                tracing::info!(
                    plugin,
                    sha256 = &sha256[..sha256.len().min(12)],
                    "version loaded in {took:.0?}"
                );
                metrics
                    .plugin_loads
                    .with_label_values(&[plugin, "loaded"])
                    .inc();
            }
            HostEvent::LoadFailed {
                plugin,
                error,
                serving,
            } => {
                if serving {
                    tracing::error!(
                        plugin,
                        "new version rejected, the previous one keeps serving: {error}"
                    );
                } else {
                    tracing::error!(plugin, "cannot load: {error}");
                }
                metrics
                    .plugin_loads
                    .with_label_values(&[plugin, "failed"])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_counts_its_metric_with_its_labels() {
        let m = Metrics::new();
        HostEvent::DeadLettered {
            plugin: "crm",
            partition: 2,
            offset: 41,
            class: "rejected",
            reason: "bad",
            sink: "t.dlq.crm",
        }
        .emit(&m);
        HostEvent::Retried {
            plugin: "crm",
            partition: 2,
            attempt: 1,
            reason: "trap",
        }
        .emit(&m);
        HostEvent::InstanceRebuilt {
            plugin: "crm",
            partition: 2,
            reason: "trap",
        }
        .emit(&m);
        HostEvent::LoadFailed {
            plugin: "lake",
            error: "no",
            serving: false,
        }
        .emit(&m);
        let text = m.render();
        for series in [
            r#"plugboard_dead_letters_total{class="rejected",plugin="crm"} 1"#,
            r#"plugboard_events_total{outcome="dead_lettered",plugin="crm"} 1"#,
            r#"plugboard_retries_total{plugin="crm"} 1"#,
            r#"plugboard_instance_restarts_total{plugin="crm",reason="trap"} 1"#,
            r#"plugboard_plugin_loads_total{plugin="lake",result="failed"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing in\n{text}");
        }
    }
}
