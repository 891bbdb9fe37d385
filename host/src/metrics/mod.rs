//! The Prometheus registry: the host's own metrics, and the metrics plugins
//! report through the `metrics` import ([`plugin`]: kept per plugin, each
//! series with a `plugin` label).
//!
//! Rendered in the text exposition format, for `--metrics-out` (as
//! node_exporter's textfile collector reads it) and the admin endpoint.

pub mod plugin;

use crate::locks::Lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

pub use plugin::{Kind, Update};

/// Why a plugin's metric call was ignored.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("`{0}` is not a valid metric name: use [a-zA-Z_:][a-zA-Z0-9_:]*")]
    BadName(String),
    #[error(
        "`{name}` has an invalid label name `{label}`: use [a-zA-Z_][a-zA-Z0-9_]*, not `plugin`"
    )]
    BadLabel { name: String, label: String },
    #[error("`{name}` is a {}, not a {}", existing.as_str(), wanted.as_str())]
    KindMismatch {
        name: String,
        existing: Kind,
        wanted: Kind,
    },
    #[error("`{name}` was first used with labels {expected:?}, now with {got:?}")]
    LabelMismatch {
        name: String,
        expected: Vec<String>,
        got: Vec<String>,
    },
    #[error("counter `{0}` cannot decrease: add a value >= 0")]
    NegativeCounter(String),
    #[error(
        "`{name}`: the plugin has {max} metric series, its `max_series`; new series are dropped and counted in plugboard_plugin_series_dropped_total"
    )]
    OverBudget { name: String, max: usize },
}

/// All metrics of one host process.
pub struct Metrics {
    registry: Registry,
    /// Events settled per plugin: `outcome` is `handled` or `dead_lettered`.
    pub events: IntCounterVec,
    /// Deliveries that were tried again (retry asked, trap, timeout).
    pub retries: IntCounterVec,
    /// Events parked in the dead-letter path, by failure class.
    pub dead_letters: IntCounterVec,
    /// Messages that failed decoding or validation, by source.
    pub decode_failures: IntCounterVec,
    /// Events each plugin settled, by source and writer's schema id
    /// (`compiled` for the compiled-in schema, `file:<sha>` for a
    /// descriptor set).
    pub events_by_schema: IntCounterVec,
    /// Wall time of one `handle` call.
    pub batch_seconds: HistogramVec,
    /// Instances discarded and rebuilt, by reason (`trap`, `timeout`,
    /// `state-dropped`, `state-unsaved`).
    pub instance_restarts: IntCounterVec,
    /// Lines plugins logged, by level.
    pub plugin_log_lines: IntCounterVec,
    /// Outgoing requests refused by the egress policy, by origin: at most
    /// `MAX_DENIED_ORIGINS` per plugin, the rest as `other`.
    pub egress_denied: IntCounterVec,
    denied_origins: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// Plugin versions loaded or rejected by a (re)load.
    pub plugin_loads: IntCounterVec,
    /// Plugin log and output lines dropped over the plugin's budget.
    pub plugin_log_dropped: IntCounterVec,
    /// Rewinds of a plugin's group this host carried out.
    pub rewinds: IntCounterVec,
    /// Dead letters a redrive took, by outcome (`handled`,
    /// `dead_lettered` again, `skipped` as superseded).
    pub redriven: IntCounterVec,
    /// New versions swapped back by the rollback watch.
    pub rollbacks: IntCounterVec,
    /// Partitions that wait for a sink or for the host, and why.
    pub holds: crate::hold::Holds,
    /// Events not yet settled in the partitions this host owns, per
    /// plugin, from the consumer's own statistics (no broker round trip).
    consumer_lag: prometheus::IntGaugeVec,
    /// 1 while a new version of the plugin waits for an operator's
    /// approval of its grants.
    pub pending_approval: prometheus::IntGaugeVec,
    /// Events a shadow run compared, by whether the two versions agreed.
    pub shadow_events: IntCounterVec,
    /// 1 while an operator has a plugin paused.
    paused: prometheus::IntGaugeVec,
    /// The same, for `/plugins`: absent until the first statistics.
    lags: Mutex<HashMap<String, BTreeMap<i32, i64>>>,
    /// Series plugins wanted over their `max_series`.
    series_dropped: IntCounterVec,
    /// Every plugin's own metrics, by plugin name.
    plugins: Mutex<BTreeMap<String, plugin::PluginFamilies>>,
}

/// Origins a plugin's denied requests are counted under, each its own
/// series; past this they count as `other`.
pub const MAX_DENIED_ORIGINS: usize = 100;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "plugboard_batch_duration_seconds",
                "Wall time of one handle call into a plugin",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10).expect("valid buckets")),
            &["plugin"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_seconds.clone()))
            .expect("unique metric");
        Metrics {
            events: counter(
                &registry,
                "plugboard_events_total",
                "Events settled per plugin, by outcome (handled or dead_lettered)",
                &["plugin", "outcome"],
            ),
            retries: counter(
                &registry,
                "plugboard_retries_total",
                "Deliveries tried again after a retry answer, a trap or a timeout",
                &["plugin"],
            ),
            dead_letters: counter(
                &registry,
                "plugboard_dead_letters_total",
                "Events parked in the dead-letter path, by failure class",
                &["plugin", "class"],
            ),
            decode_failures: counter(
                &registry,
                "plugboard_decode_failures_total",
                "Messages that failed decoding or validation (under Kafka, counted by each plugin's consumer)",
                &["source"],
            ),
            events_by_schema: counter(
                &registry,
                "plugboard_events_by_schema_total",
                "Events each plugin settled, by topic and the writer's schema id (compiled: the compiled-in schema; file:<sha>: a descriptor set)",
                &["plugin", "topic", "schema_id"],
            ),
            batch_seconds,
            instance_restarts: counter(
                &registry,
                "plugboard_instance_restarts_total",
                "Plugin instances discarded and rebuilt: after a trap or timeout, after their state writes were dropped or could not be saved",
                &["plugin", "reason"],
            ),
            plugin_log_lines: counter(
                &registry,
                "plugboard_plugin_log_lines_total",
                "Log lines written by plugins",
                &["plugin", "level"],
            ),
            egress_denied: counter(
                &registry,
                "plugboard_egress_denied_total",
                "Outgoing HTTP requests refused because the origin was not granted",
                &["plugin", "origin"],
            ),
            plugin_log_dropped: counter(
                &registry,
                "plugboard_plugin_log_dropped_total",
                "Plugin log and output lines dropped because the plugin wrote more than its budget",
                &["plugin"],
            ),
            rewinds: counter(
                &registry,
                "plugboard_rewinds_total",
                "Rewinds of a plugin's consumer group carried out by this host",
                &["plugin"],
            ),
            redriven: counter(
                &registry,
                "plugboard_redriven_total",
                "Dead letters delivered again by a redrive, by outcome (handled, dead_lettered again, skipped as superseded)",
                &["plugin", "outcome"],
            ),
            rollbacks: counter(
                &registry,
                "plugboard_rollbacks_total",
                "New plugin versions swapped back automatically because they failed more than the version they replaced",
                &["plugin"],
            ),
            plugin_loads: counter(
                &registry,
                "plugboard_plugin_loads_total",
                "Plugin versions loaded (result=loaded) or rejected (result=failed), at start and by hot reload",
                &["plugin", "result"],
            ),
            holds: crate::hold::Holds::new(&registry),
            pending_approval: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "plugboard_plugin_pending_approval",
                        "1 while a new version of the plugin asks for more grants and waits for plugboard ctl approve",
                    ),
                    &["plugin"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            shadow_events: counter(
                &registry,
                "plugboard_shadow_events_total",
                "Events a shadow version got beside the serving one, by result (agreed, differed)",
                &["plugin", "result"],
            ),
            paused: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "plugboard_plugin_paused",
                        "1 while an operator has the plugin paused (plugboard ctl pause)",
                    ),
                    &["plugin"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            consumer_lag: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "plugboard_consumer_lag",
                        "Events not yet settled in each partition this host owns, per plugin (from the consumer's statistics, refreshed every second); sum by plugin for a plugin's lag",
                    ),
                    &["plugin", "partition"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            lags: Mutex::default(),
            denied_origins: Mutex::default(),
            series_dropped: counter(
                &registry,
                "plugboard_plugin_series_dropped_total",
                "Metric updates dropped because they would create a series over the plugin's max_series",
                &["plugin"],
            ),
            registry,
            plugins: Mutex::default(),
        }
    }

    /// Events `plugin` settled per writer's schema id, summed over topics.
    pub fn schemas_of(&self, plugin: &str) -> BTreeMap<String, u64> {
        use prometheus::core::Collector;
        let mut out = BTreeMap::new();
        for family in self.events_by_schema.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if label("plugin").as_deref() == Some(plugin)
                    && let Some(id) = label("schema_id")
                {
                    *out.entry(id).or_default() += metric.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// Counts one outgoing request of `plugin` to `origin` refused by the
    /// egress policy. A plugin that tries endless origins gets at most
    /// [`MAX_DENIED_ORIGINS`] series; the rest count as `other`.
    pub fn egress_denied(&self, plugin: &str, origin: &str) {
        let label = {
            let mut all = self.denied_origins.locked();
            let seen = all.entry(plugin.to_string()).or_default();
            if seen.contains(origin) || seen.len() < MAX_DENIED_ORIGINS {
                seen.insert(origin.to_string());
                origin
            } else {
                "other"
            }
        };
        self.egress_denied.with_label_values(&[plugin, label]).inc();
    }

    /// `plugin`'s consumer lag on this host, from its latest statistics.
    pub fn set_lag(&self, plugin: &str, partitions: BTreeMap<i32, i64>) {
        let mut lags = self.lags.locked();
        if let Some(before) = lags.get(plugin) {
            // Partitions this host no longer owns leave the metric.
            for gone in before.keys().filter(|p| !partitions.contains_key(p)) {
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[plugin, &gone.to_string()]);
            }
        }
        for (partition, lag) in &partitions {
            self.consumer_lag
                .with_label_values(&[plugin, &partition.to_string()])
                .set(*lag);
        }
        lags.insert(plugin.to_string(), partitions);
    }

    /// `plugin`'s consumer lag over the partitions this host owns, once
    /// its statistics came.
    /// The lag of each partition of `plugin` this host owns (empty before
    /// the first statistics).
    pub fn lag_by_partition(&self, plugin: &str) -> BTreeMap<i32, i64> {
        self.lags.locked().get(plugin).cloned().unwrap_or_default()
    }

    pub fn lag(&self, plugin: &str) -> Option<i64> {
        // None too while no partition's end is known.
        self.lags
            .locked()
            .get(plugin)
            .filter(|p| !p.is_empty())
            .map(|p| p.values().sum())
    }

    /// Counts one event of `plugin` parked in the dead-letter path, when
    /// the dead-letter write is acknowledged.
    pub fn dead_lettered(&self, plugin: &str, class: &str) {
        self.events
            .with_label_values(&[plugin, "dead_lettered"])
            .inc();
        self.dead_letters.with_label_values(&[plugin, class]).inc();
    }

    /// Every metric in the Prometheus text format: the host's, then the
    /// plugins'.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(plugin::render(&self.plugins.locked()));
        TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }

    /// Help and histogram buckets `plugin` gives its metric `name`, used
    /// when the family is created.
    pub fn describe(
        &self,
        plugin: &str,
        name: &str,
        help: String,
        buckets: Vec<f64>,
    ) -> Result<(), MetricError> {
        check_name(name)?;
        self.plugins
            .locked()
            .entry(plugin.to_string())
            .or_default()
            .describe(name, help, buckets);
        Ok(())
    }

    /// Applies one of `plugin`'s metric updates. A gauge's series shows the
    /// sum of every slot's (partition's) share; see [`plugin`].
    pub fn plugin_update(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        update: Update,
        max_series: usize,
    ) -> Result<(), MetricError> {
        check_name(name)?;
        if let Update::Add(delta) = update
            && (delta < 0.0 || delta.is_nan())
        {
            return Err(MetricError::NegativeCounter(name.to_string()));
        }
        let mut sorted: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        sorted.sort();
        for (label, _) in &sorted {
            if !valid_label(label) {
                return Err(MetricError::BadLabel {
                    name: name.to_string(),
                    label: label.to_string(),
                });
            }
        }
        let mut plugins = self.plugins.locked();
        let families = plugins.entry(plugin.to_string()).or_default();
        match families.apply(name, &sorted, update, max_series) {
            Ok(()) => Ok(()),
            Err(plugin::Refused::OverBudget) => {
                let dropped = self.series_dropped.with_label_values(&[plugin]);
                dropped.inc();
                // Said once; the counter tells the rest.
                if dropped.get() == 1 {
                    return Err(MetricError::OverBudget {
                        name: name.to_string(),
                        max: max_series,
                    });
                }
                Ok(())
            }
            Err(plugin::Refused::Kind { existing, wanted }) => Err(MetricError::KindMismatch {
                name: name.to_string(),
                existing,
                wanted,
            }),
            Err(plugin::Refused::Labels { expected, got }) => Err(MetricError::LabelMismatch {
                name: name.to_string(),
                expected,
                got,
            }),
        }
    }

    /// Drops `slot`'s shares of every gauge of `plugin`: its partition went
    /// to another consumer, which reports it from now on.
    pub fn forget_gauge_slot(&self, plugin: &str, slot: i32) {
        if let Some(families) = self.plugins.locked().get_mut(plugin) {
            families.forget_slot(slot);
        }
    }

    /// `plugin` was removed: its holds end, and its lag and gauges are no
    /// longer this host's to report (added again, it reports them afresh
    /// from its state, not from the shares of its former partitions). Its
    /// counters stay, as counters do.
    /// `plugin` is paused (or resumed).
    pub fn set_paused(&self, plugin: &str, paused: bool) {
        self.paused
            .with_label_values(&[plugin])
            .set(i64::from(paused));
    }

    pub fn plugin_removed(&self, plugin: &str) {
        self.holds.release_plugin(plugin);
        let _ = self.paused.remove_label_values(&[plugin]);
        let _ = self.pending_approval.remove_label_values(&[plugin]);
        if let Some(partitions) = self.lags.locked().remove(plugin) {
            for partition in partitions.keys() {
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[plugin, &partition.to_string()]);
            }
        }
        if let Some(families) = self.plugins.locked().get_mut(plugin) {
            families.forget_gauges();
        }
    }

    /// A new version of `plugin` was rolled back.
    pub fn rolled_back(&self, plugin: &str) {
        self.rollbacks.with_label_values(&[plugin]).inc();
        self.new_plugin_version(plugin);
    }

    /// A new version of `plugin` goes live: the series the old one wrote
    /// are shown again only once the new one writes them.
    pub fn new_plugin_version(&self, plugin: &str) {
        if let Some(families) = self.plugins.locked().get_mut(plugin) {
            families.new_version();
        }
    }
}

fn check_name(name: &str) -> Result<(), MetricError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with("plugboard_");
    if ok {
        Ok(())
    } else {
        Err(MetricError::BadName(name.to_string()))
    }
}

fn valid_label(label: &str) -> bool {
    let mut chars = label.chars();
    label != "plugin"
        && !label.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    fn set(slot: i32, value: f64) -> Update {
        Update::Set { slot, value }
    }

    #[test]
    fn lag_is_per_partition_and_a_partition_that_leaves_takes_its_series() {
        let m = Metrics::new();
        m.set_lag("crm", [(0, 5), (1, 7)].into());
        assert_eq!(m.lag("crm"), Some(12));
        assert!(
            m.render()
                .contains("plugboard_consumer_lag{partition=\"1\",plugin=\"crm\"} 7")
        );
        m.set_lag("crm", [(0, 2)].into());
        assert_eq!(m.lag("crm"), Some(2));
        assert!(!m.render().contains("partition=\"1\",plugin=\"crm\""));
        m.plugin_removed("crm");
        assert_eq!(m.lag("crm"), None);
        assert!(!m.render().contains("plugboard_consumer_lag{"));
    }

    #[test]
    fn plugin_metrics_render_with_plugin_label() {
        let m = Metrics::new();
        m.describe(
            "metrics",
            "bookings_current",
            "Bookings by latest state".into(),
            vec![],
        )
        .unwrap();
        let up = |name, labels: &[(String, String)], u| {
            m.plugin_update("metrics", name, labels, u, 1000)
        };
        up("bookings_current", &l("state", "paid"), set(0, 3.0)).unwrap();
        up("x_total", &[], Update::Add(2.0)).unwrap();
        up("took_seconds", &[], Update::Observe(0.2)).unwrap();
        let text = m.render();
        assert!(
            text.contains("# HELP bookings_current Bookings by latest state"),
            "{text}"
        );
        assert!(text.contains("# TYPE bookings_current gauge"), "{text}");
        assert!(
            text.contains(r#"bookings_current{plugin="metrics",state="paid"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"x_total{plugin="metrics"} 2"#), "{text}");
        assert!(
            text.contains(r#"took_seconds_bucket{plugin="metrics",le="0.25"} 1"#),
            "{text}"
        );
        assert!(matches!(
            up("bookings_current", &l("state", "paid"), Update::Add(1.0)),
            Err(MetricError::KindMismatch { .. })
        ));
        assert!(matches!(
            up("bookings_current", &l("city", "x"), set(0, 1.0)),
            Err(MetricError::LabelMismatch { .. })
        ));
        assert!(up("bad-name", &[], set(0, 1.0)).is_err());
        assert!(up("plugboard_events_total", &[], set(0, 1.0)).is_err());
        assert!(up("x_total", &[], Update::Add(-1.0)).is_err());
    }

    #[test]
    fn plugins_using_one_name_never_break_each_other() {
        let m = Metrics::new();
        // Same kind: one family, a series per plugin.
        m.plugin_update("a", "seen_total", &[], Update::Add(1.0), 1000)
            .unwrap();
        m.plugin_update("b", "seen_total", &l("kind", "x"), Update::Add(2.0), 1000)
            .unwrap();
        // Another kind under the same name: both are kept, each as its own.
        m.plugin_update("a", "level", &[], set(0, 1.0), 1000)
            .unwrap();
        m.plugin_update("b-2", "level", &[], Update::Add(5.0), 1000)
            .unwrap();
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE seen_total counter").count(),
            1,
            "{text}"
        );
        assert!(text.contains(r#"seen_total{plugin="a"} 1"#), "{text}");
        assert!(
            text.contains(r#"seen_total{kind="x",plugin="b"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"a_level{plugin="a"} 1"#), "{text}");
        assert!(text.contains(r#"b_2_level{plugin="b-2"} 5"#), "{text}");
        assert!(!text.contains("\nlevel{"), "{text}");
    }

    #[test]
    fn series_over_a_plugins_budget_are_dropped_and_counted() {
        let m = Metrics::new();
        for i in 0..5 {
            let r = m.plugin_update("p", "by_id", &l("id", &i.to_string()), set(0, 1.0), 3);
            assert_eq!(r.is_ok(), i != 3, "update {i}: {r:?}");
        }
        // Series that exist still take updates.
        m.plugin_update("p", "by_id", &l("id", "0"), set(0, 7.0), 3)
            .unwrap();
        // Another plugin has a budget of its own.
        m.plugin_update("q", "by_id", &l("id", "9"), set(0, 1.0), 3)
            .unwrap();
        let text = m.render();
        assert!(text.contains(r#"by_id{id="0",plugin="p"} 7"#), "{text}");
        assert!(!text.contains(r#"id="3""#), "{text}");
        assert!(
            text.contains(r#"plugboard_plugin_series_dropped_total{plugin="p"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_new_version_shows_only_the_series_it_writes() {
        let m = Metrics::new();
        m.plugin_update("p", "old_total", &[], Update::Add(4.0), 1000)
            .unwrap();
        m.plugin_update("p", "kept_total", &[], Update::Add(1.0), 1000)
            .unwrap();
        m.new_plugin_version("p");
        m.plugin_update("p", "kept_total", &[], Update::Add(1.0), 1000)
            .unwrap();
        let text = m.render();
        assert!(!text.contains("old_total"), "{text}");
        assert!(text.contains(r#"kept_total{plugin="p"} 2"#), "{text}");
    }

    #[test]
    fn a_gauge_is_the_sum_of_the_partitions_shares_until_one_is_revoked() {
        let m = Metrics::new();
        let paid = l("state", "paid");
        let series = r#"bookings_current{plugin="metrics",state="paid"}"#;
        for (slot, value) in [(0, 3.0), (1, 4.0), (1, 5.0)] {
            m.plugin_update("metrics", "bookings_current", &paid, set(slot, value), 1000)
                .unwrap();
        }
        assert!(
            m.render().contains(&format!("{series} 8")),
            "{}",
            m.render()
        );
        m.forget_gauge_slot("other-plugin", 1);
        assert!(m.render().contains(&format!("{series} 8")));
        m.forget_gauge_slot("metrics", 1);
        assert!(
            m.render().contains(&format!("{series} 3")),
            "{}",
            m.render()
        );
    }
}
