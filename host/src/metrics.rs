//! The Prometheus registry: the host's own metrics, and the metrics plugins
//! report through the `metrics` import (each series gets a `plugin` label).
//!
//! Rendered in the text exposition format, for `--metrics-out` (as
//! node_exporter's textfile collector reads it) and the admin endpoint.

use std::collections::HashMap;
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
    /// Instances lost to a trap or a timeout and rebuilt.
    pub instance_restarts: IntCounterVec,
    /// Lines plugins logged, by level.
    pub plugin_log_lines: IntCounterVec,
    /// Outgoing requests refused by the egress policy.
    pub egress_denied: IntCounterVec,
    families: Mutex<HashMap<String, Family>>,
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
                "Messages that failed decoding or validation",
                &["source"],
            ),
            batch_seconds,
            instance_restarts: counter(
                &registry,
                "plugboard_instance_restarts_total",
                "Plugin instances discarded after a trap or timeout and rebuilt",
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
            registry,
            families: Mutex::default(),
            descriptions: Mutex::default(),
        }
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
            .lock()
            .expect("metrics lock")
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

    pub fn plugin_gauge_set(
        &self,
        plugin: &str,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), MetricError> {
        self.with_family(plugin, name, labels, "gauge", |family, values| {
            if let Family::Gauge(g, _) = family {
                g.with_label_values(values).set(value);
            }
        })
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

        let mut families = self.families.lock().expect("metrics lock");
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
            .lock()
            .expect("metrics lock")
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
        m.plugin_gauge_set("metrics", "bookings_current", &l("state", "paid"), 3.0)
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
            m.plugin_gauge_set("metrics", "bookings_current", &l("city", "x"), 1.0),
            Err(MetricError::LabelMismatch { .. })
        ));
        assert!(m.plugin_gauge_set("metrics", "bad-name", &[], 1.0).is_err());
        assert!(
            m.plugin_gauge_set("metrics", "plugboard_events_total", &[], 1.0)
                .is_err()
        );
    }
}
