//! The Prometheus registry: the host's own metrics, and the metrics plugins
//! report through the `metrics` import (each series gets a `plugin` label).
//!
//! Rendered in the text exposition format, for `--metrics-out` (as
//! node_exporter's textfile collector reads it) and the admin endpoint.

use crate::locks::Lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Why a plugin's metric call was ignored.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("`{0}` is not a valid metric name: use [a-zA-Z_:][a-zA-Z0-9_:]*")]
    BadName(String),
    #[error(
        "`{name}` has an invalid label name `{label}`: use [a-zA-Z_][a-zA-Z0-9_]*, not `plugin`"
    )]
    BadLabel { name: String, label: String },
    #[error("`{name}` is a {existing}, not a {wanted}")]
    KindMismatch {
        name: String,
        existing: &'static str,
        wanted: &'static str,
    },
    #[error("`{name}` was first used with labels {expected:?}, now with {got:?}")]
    LabelMismatch {
        name: String,
        expected: Vec<String>,
        got: Vec<String>,
    },
    #[error("counter `{0}` cannot decrease: add a value >= 0")]
    NegativeCounter(String),
    #[error("`{name}`: {source}")]
    Prometheus {
        name: String,
        source: prometheus::Error,
    },
}

/// A metric family created by a plugin, with the label names (sorted,
/// `plugin` last) it was created with.
enum Family {
    Counter(CounterVec, Vec<String>),
    Gauge(GaugeVec, Vec<String>),
    Histogram(HistogramVec, Vec<String>),
}

impl Family {
    fn kind(&self) -> &'static str {
        match self {
            Family::Counter(..) => "counter",
            Family::Gauge(..) => "gauge",
            Family::Histogram(..) => "histogram",
        }
    }

    fn label_names(&self) -> &[String] {
        match self {
            Family::Counter(_, l) | Family::Gauge(_, l) | Family::Histogram(_, l) => l,
        }
    }
}

/// A plugin series: family name and label values, `plugin` last.
type SeriesKey = (String, Vec<String>);

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
    /// Wall time of one `handle` call.
    pub batch_seconds: HistogramVec,
    /// Instances discarded and rebuilt, by reason (`trap`, `timeout`,
    /// `state-dropped`, `state-unsaved`).
    pub instance_restarts: IntCounterVec,
    /// Lines plugins logged, by level.
    pub plugin_log_lines: IntCounterVec,
    /// Outgoing requests refused by the egress policy.
    pub egress_denied: IntCounterVec,
    /// Times a partition was paused because its plugin was behind.
    pub partition_pauses: IntCounterVec,
    /// Plugin versions loaded or rejected by a (re)load.
    pub plugin_loads: IntCounterVec,
    /// Plugin log and output lines dropped over the plugin's budget.
    pub plugin_log_dropped: IntCounterVec,
    /// Partitions that wait for a sink or for the host, and why.
    pub holds: crate::hold::Holds,
    /// Events not yet settled in the partitions this host owns, per
    /// plugin, from the consumer's own statistics (no broker round trip).
    consumer_lag: prometheus::IntGaugeVec,
    /// The same, for `/plugins`: absent until the first statistics.
    lags: Mutex<HashMap<String, i64>>,
    families: Mutex<HashMap<String, Family>>,
    /// Each slot's share of every plugin gauge series, keyed by family name
    /// and label values (`plugin` last).
    gauge_shares: Mutex<HashMap<SeriesKey, BTreeMap<i32, f64>>>,
    /// Help and buckets a plugin gave with `describe`, used when the family
    /// is created.
    descriptions: Mutex<HashMap<String, (String, Vec<f64>)>>,
}

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
            partition_pauses: counter(
                &registry,
                "plugboard_partition_pauses_total",
                "Times a partition was paused because its plugin was behind",
                &["plugin"],
            ),
            plugin_log_dropped: counter(
                &registry,
                "plugboard_plugin_log_dropped_total",
                "Plugin log and output lines dropped because the plugin wrote more than its budget",
                &["plugin"],
            ),
            plugin_loads: counter(
                &registry,
                "plugboard_plugin_loads_total",
                "Plugin versions loaded (result=loaded) or rejected (result=failed), at start and by hot reload",
                &["plugin", "result"],
            ),
            holds: crate::hold::Holds::new(&registry),
            consumer_lag: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "plugboard_consumer_lag",
                        "Events not yet settled in the partitions this host owns, per plugin (from the consumer's statistics, refreshed every second)",
                    ),
                    &["plugin"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            lags: Mutex::default(),
            registry,
            families: Mutex::default(),
            gauge_shares: Mutex::default(),
            descriptions: Mutex::default(),
        }
    }

    /// `plugin`'s consumer lag on this host, from its latest statistics.
    pub fn set_lag(&self, plugin: &str, lag: i64) {
        self.consumer_lag.with_label_values(&[plugin]).set(lag);
        self.lags.locked().insert(plugin.to_string(), lag);
    }

    /// `plugin`'s consumer lag, once its statistics came.
    pub fn lag(&self, plugin: &str) -> Option<i64> {
        self.lags.locked().get(plugin).copied()
    }

    /// Counts one event of `plugin` parked in the dead-letter path, when
    /// the dead-letter write is acknowledged.
    pub fn dead_lettered(&self, plugin: &str, class: &str) {
        self.events
            .with_label_values(&[plugin, "dead_lettered"])
            .inc();
        self.dead_letters.with_label_values(&[plugin, class]).inc();
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }

    pub fn describe(&self, name: &str, help: String, buckets: Vec<f64>) -> Result<(), MetricError> {
        check_name(name)?;
        self.descriptions
            .locked()
            .insert(name.to_string(), (help, buckets));
        Ok(())
    }

    pub fn plugin_counter_add(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        delta: f64,
    ) -> Result<(), MetricError> {
        if delta < 0.0 || delta.is_nan() {
            return Err(MetricError::NegativeCounter(name.to_string()));
        }
        self.with_family(plugin, name, labels, "counter", |family, values| {
            if let Family::Counter(c, _) = family {
                c.with_label_values(values).inc_by(delta);
            }
        })
    }

    /// Sets `slot`'s share of a plugin gauge; the series shows the sum of
    /// all shares. Each partition's instance knows only its partition's
    /// bookings, so a gauge it computes is a share of the whole.
    pub fn plugin_gauge_set(
        &self,
        plugin: &str,
        slot: i32,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), MetricError> {
        self.with_family(plugin, name, labels, "gauge", |family, values| {
            if let Family::Gauge(g, _) = family {
                let key = (
                    name.to_string(),
                    values.iter().map(|v| v.to_string()).collect(),
                );
                let mut shares = self.gauge_shares.locked();
                let parts = shares.entry(key).or_default();
                parts.insert(slot, value);
                g.with_label_values(values).set(parts.values().sum());
            }
        })
    }

    /// Drops `slot`'s shares of every gauge of `plugin`: its partition went
    /// to another consumer, which reports it from now on.
    pub fn forget_gauge_slot(&self, plugin: &str, slot: i32) {
        let families = self.families.locked();
        let mut shares = self.gauge_shares.locked();
        for ((name, values), parts) in shares.iter_mut() {
            if values.last().map(String::as_str) != Some(plugin) || parts.remove(&slot).is_none() {
                continue;
            }
            if let Some(Family::Gauge(g, _)) = families.get(name) {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                g.with_label_values(&values).set(parts.values().sum());
            }
        }
    }

    pub fn plugin_histogram_observe(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), MetricError> {
        self.with_family(plugin, name, labels, "histogram", |family, values| {
            if let Family::Histogram(h, _) = family {
                h.with_label_values(values).observe(value);
            }
        })
    }

    /// Finds or creates the family `name` and applies `f` to the series with
    /// `labels` plus `plugin`.
    fn with_family(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        wanted: &'static str,
        f: impl FnOnce(&Family, &[&str]),
    ) -> Result<(), MetricError> {
        check_name(name)?;
        let mut sorted: Vec<&(String, String)> = labels.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut names: Vec<String> = Vec::with_capacity(sorted.len() + 1);
        for (label, _) in &sorted {
            if !valid_label(label) {
                return Err(MetricError::BadLabel {
                    name: name.to_string(),
                    label: label.clone(),
                });
            }
            names.push(label.clone());
        }
        names.push("plugin".to_string());
        let mut values: Vec<&str> = sorted.iter().map(|(_, v)| v.as_str()).collect();
        values.push(plugin);

        let mut families = self.families.locked();
        if !families.contains_key(name) {
            let family = self.create_family(name, wanted, &names)?;
            families.insert(name.to_string(), family);
        }
        let family = &families[name];
        if family.kind() != wanted {
            return Err(MetricError::KindMismatch {
                name: name.to_string(),
                existing: family.kind(),
                wanted,
            });
        }
        if family.label_names() != names.as_slice() {
            return Err(MetricError::LabelMismatch {
                name: name.to_string(),
                expected: family.label_names().to_vec(),
                got: names,
            });
        }
        f(family, &values);
        Ok(())
    }

    fn create_family(
        &self,
        name: &str,
        kind: &str,
        labels: &[String],
    ) -> Result<Family, MetricError> {
        let (help, buckets) = self
            .descriptions
            .locked()
            .get(name)
            .cloned()
            .unwrap_or_else(|| (format!("{name}, reported by a plugin"), Vec::new()));
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let err = |source| MetricError::Prometheus {
            name: name.to_string(),
            source,
        };
        let family = match kind {
            "counter" => Family::Counter(
                CounterVec::new(Opts::new(name, help), &label_refs).map_err(err)?,
                labels.to_vec(),
            ),
            "gauge" => Family::Gauge(
                GaugeVec::new(Opts::new(name, help), &label_refs).map_err(err)?,
                labels.to_vec(),
            ),
            _ => {
                let mut opts = HistogramOpts::new(name, help);
                if !buckets.is_empty() {
                    opts = opts.buckets(buckets);
                }
                Family::Histogram(
                    HistogramVec::new(opts, &label_refs).map_err(err)?,
                    labels.to_vec(),
                )
            }
        };
        let collector: Box<dyn prometheus::core::Collector> = match &family {
            Family::Counter(c, _) => Box::new(c.clone()),
            Family::Gauge(g, _) => Box::new(g.clone()),
            Family::Histogram(h, _) => Box::new(h.clone()),
        };
        self.registry.register(collector).map_err(err)?;
        Ok(family)
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

    #[test]
    fn plugin_metrics_render_with_plugin_label() {
        let m = Metrics::new();
        let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        m.describe(
            "bookings_current",
            "Bookings by latest state".into(),
            vec![],
        )
        .unwrap();
        m.plugin_gauge_set("metrics", 0, "bookings_current", &l("state", "paid"), 3.0)
            .unwrap();
        m.plugin_counter_add("metrics", "x_total", &[], 2.0)
            .unwrap();
        let text = m.render();
        assert!(
            text.contains("# HELP bookings_current Bookings by latest state"),
            "{text}"
        );
        assert!(
            text.contains(r#"bookings_current{plugin="metrics",state="paid"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"x_total{plugin="metrics"} 2"#), "{text}");
        assert!(matches!(
            m.plugin_counter_add("metrics", "bookings_current", &l("state", "paid"), 1.0),
            Err(MetricError::KindMismatch { .. })
        ));
        assert!(matches!(
            m.plugin_gauge_set("metrics", 0, "bookings_current", &l("city", "x"), 1.0),
            Err(MetricError::LabelMismatch { .. })
        ));
        assert!(
            m.plugin_gauge_set("metrics", 0, "bad-name", &[], 1.0)
                .is_err()
        );
        assert!(
            m.plugin_gauge_set("metrics", 0, "plugboard_events_total", &[], 1.0)
                .is_err()
        );
    }

    #[test]
    fn a_gauge_is_the_sum_of_the_partitions_shares_until_one_is_revoked() {
        let m = Metrics::new();
        let paid = vec![("state".to_string(), "paid".to_string())];
        let series = r#"bookings_current{plugin="metrics",state="paid"}"#;
        m.plugin_gauge_set("metrics", 0, "bookings_current", &paid, 3.0)
            .unwrap();
        m.plugin_gauge_set("metrics", 1, "bookings_current", &paid, 4.0)
            .unwrap();
        m.plugin_gauge_set("metrics", 1, "bookings_current", &paid, 5.0)
            .unwrap();
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
