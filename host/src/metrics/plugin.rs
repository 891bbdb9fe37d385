//! Metrics plugins report through the `metrics` import, kept per plugin.
//!
//! Each plugin has its own families, keyed by name, each of one [`Kind`]
//! and one set of label names: a plugin cannot break another's metric by
//! using its name with another kind or labels. Families of one name render
//! as one (with a `plugin` label) when the plugins agree on the kind; when
//! they do not, each plugin's is rendered as `<plugin>_<name>` instead, so
//! the exposition stays valid and no plugin's series depends on which
//! plugin came first.
//!
//! A plugin may create at most `max_series` series; further ones are
//! dropped and counted, since a label fed from event data would grow memory
//! and every scrape without bound. When a new version goes live, the
//! series it does not write again are no longer rendered; those it writes
//! come back with their value (a counter goes on counting).
//!
//! Gauges are the sum of shares: each partition's instance knows only its
//! partition's bookings and sets its share, and the series is their sum.
//! That is right for counts and amounts (bookings by state, revenue),
//! which is what these plugins report. A ratio is not a sum: report its
//! numerator and denominator as two gauges, or label the gauge with the
//! partition (then each series has one share and is that partition's value).

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::{self, MetricFamily, MetricType};

/// The kind of a plugin metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One update a plugin made.
#[derive(Debug, Clone, Copy)]
pub enum Update {
    Add(f64),
    /// The share of `slot` (the partition) of a gauge.
    Set {
        slot: i32,
        value: f64,
    },
    Observe(f64),
}

impl Update {
    fn kind(self) -> Kind {
        match self {
            Update::Add(_) => Kind::Counter,
            Update::Set { .. } => Kind::Gauge,
            Update::Observe(_) => Kind::Histogram,
        }
    }
}

/// Prometheus' default buckets, for a histogram described without any.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

enum Value {
    Counter(f64),
    /// Each slot's share.
    Gauge(BTreeMap<i32, f64>),
    Histogram {
        /// Per bucket, not cumulative.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

struct Series {
    value: Value,
    /// The plugin's version generation that last wrote it.
    generation: u64,
}

struct Family {
    kind: Kind,
    help: String,
    buckets: Vec<f64>,
    /// Label names, sorted.
    labels: Vec<String>,
    /// By label values, in the order of `labels`.
    series: BTreeMap<Vec<String>, Series>,
}

/// One plugin's metrics.
#[derive(Default)]
pub struct PluginFamilies {
    families: BTreeMap<String, Family>,
    /// Help and buckets from `describe`, used when a family is created.
    descriptions: HashMap<String, (String, Vec<f64>)>,
    series: usize,
    /// Raised when a new version goes live.
    generation: u64,
}

/// What became of an update that was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The plugin has `max_series` series already.
    OverBudget,
    Kind {
        existing: Kind,
        wanted: Kind,
    },
    Labels {
        expected: Vec<String>,
        got: Vec<String>,
    },
}

impl PluginFamilies {
    pub fn describe(&mut self, name: &str, help: String, buckets: Vec<f64>) {
        self.descriptions.insert(name.to_string(), (help, buckets));
    }

    /// Applies `update` to the series `labels` (sorted by name) of `name`.
    pub fn apply(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        update: Update,
        max_series: usize,
    ) -> Result<(), Refused> {
        let wanted = update.kind();
        if !self.families.contains_key(name) {
            let (help, buckets) = self
                .descriptions
                .get(name)
                .cloned()
                .unwrap_or_else(|| (format!("{name}, reported by a plugin"), Vec::new()));
            let mut buckets = if buckets.is_empty() {
                DEFAULT_BUCKETS.to_vec()
            } else {
                buckets
            };
            buckets.retain(|b| b.is_finite());
            buckets.sort_by(f64::total_cmp);
            buckets.dedup();
            self.families.insert(
                name.to_string(),
                Family {
                    kind: wanted,
                    help,
                    buckets,
                    labels: labels.iter().map(|(k, _)| k.to_string()).collect(),
                    series: BTreeMap::new(),
                },
            );
        }
        let family = self.families.get_mut(name).expect("just ensured");
        if family.kind != wanted {
            return Err(Refused::Kind {
                existing: family.kind,
                wanted,
            });
        }
        if !family
            .labels
            .iter()
            .map(String::as_str)
            .eq(labels.iter().map(|(k, _)| *k))
        {
            return Err(Refused::Labels {
                expected: family.labels.clone(),
                got: labels.iter().map(|(k, _)| k.to_string()).collect(),
            });
        }
        let values: Vec<String> = labels.iter().map(|(_, v)| v.to_string()).collect();
        let generation = self.generation;
        let series = match family.series.get_mut(&values) {
            Some(series) => series,
            None => {
                if self.series >= max_series {
                    return Err(Refused::OverBudget);
                }
                self.series += 1;
                let value = match wanted {
                    Kind::Counter => Value::Counter(0.0),
                    Kind::Gauge => Value::Gauge(BTreeMap::new()),
                    Kind::Histogram => Value::Histogram {
                        counts: vec![0; family.buckets.len() + 1],
                        sum: 0.0,
                        count: 0,
                    },
                };
                family
                    .series
                    .entry(values)
                    .or_insert(Series { value, generation })
            }
        };
        series.generation = generation;
        match (&mut series.value, update) {
            (Value::Counter(total), Update::Add(delta)) => *total += delta,
            (Value::Gauge(shares), Update::Set { slot, value }) => {
                shares.insert(slot, value);
            }
            (Value::Histogram { counts, sum, count }, Update::Observe(value)) => {
                let bucket = family.buckets.partition_point(|b| *b < value);
                counts[bucket] += 1;
                *sum += value;
                *count += 1;
            }
            _ => unreachable!("the family's kind was checked"),
        }
        Ok(())
    }

    /// Drops `slot`'s share of every gauge: the partition went elsewhere.
    pub fn forget_slot(&mut self, slot: i32) {
        for family in self.families.values_mut() {
            for series in family.series.values_mut() {
                if let Value::Gauge(shares) = &mut series.value {
                    shares.remove(&slot);
                }
            }
        }
    }

    /// Drops every share of every gauge: the plugin is gone from this host.
    pub fn forget_gauges(&mut self) {
        for family in self.families.values_mut() {
            for series in family.series.values_mut() {
                if let Value::Gauge(shares) = &mut series.value {
                    shares.clear();
                }
            }
        }
    }

    /// A new version goes live: what it does not write again is not shown.
    pub fn new_version(&mut self) {
        self.generation += 1;
    }

    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        self.families.get(name).map(|f| f.kind)
    }

    /// The families as Prometheus renders them, each series with the
    /// `plugin` label; `rename` renders them as `<plugin>_<name>`.
    pub fn render(&self, plugin: &str, rename: impl Fn(&str) -> bool) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        for (name, family) in &self.families {
            let mut metrics = Vec::new();
            for (values, series) in &family.series {
                if series.generation < self.generation {
                    continue;
                }
                if matches!(&series.value, Value::Gauge(shares) if shares.is_empty()) {
                    // No partition of this host reports it any more.
                    continue;
                }
                let mut pairs: Vec<(&str, &str)> = family
                    .labels
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str))
                    .collect();
                pairs.push(("plugin", plugin));
                pairs.sort();
                let mut metric = proto::Metric::from_label(
                    pairs
                        .into_iter()
                        .map(|(k, v)| {
                            let mut pair = proto::LabelPair::default();
                            pair.set_name(k.to_string());
                            pair.set_value(v.to_string());
                            pair
                        })
                        .collect(),
                );
                match &series.value {
                    Value::Counter(total) => {
                        let mut c = proto::Counter::default();
                        c.set_value(*total);
                        metric.set_counter(c);
                    }
                    Value::Gauge(shares) => {
                        let mut g = proto::Gauge::default();
                        g.set_value(shares.values().sum());
                        metric.set_gauge(g);
                    }
                    Value::Histogram { counts, sum, count } => {
                        let mut h = proto::Histogram::default();
                        let mut cumulative = 0;
                        let buckets = family
                            .buckets
                            .iter()
                            .zip(counts)
                            .map(|(bound, n)| {
                                cumulative += n;
                                let mut b = proto::Bucket::default();
                                b.set_upper_bound(*bound);
                                b.set_cumulative_count(cumulative);
                                b
                            })
                            .collect();
                        h.set_bucket(buckets);
                        h.set_sample_sum(*sum);
                        h.set_sample_count(*count);
                        metric.set_histogram(h);
                    }
                }
                metrics.push(metric);
            }
            if metrics.is_empty() {
                continue;
            }
            let mut mf = MetricFamily::default();
            mf.set_name(if rename(name) {
                format!("{}_{name}", sanitize(plugin))
            } else {
                name.clone()
            });
            mf.set_help(family.help.clone());
            mf.set_field_type(match family.kind {
                Kind::Counter => MetricType::COUNTER,
                Kind::Gauge => MetricType::GAUGE,
                Kind::Histogram => MetricType::HISTOGRAM,
            });
            mf.set_metric(metrics);
            out.push(mf);
        }
        out
    }
}

/// A plugin name as a metric name prefix.
fn sanitize(plugin: &str) -> String {
    plugin
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Renders every plugin's families: one family per name where the plugins
/// agree on its kind, `<plugin>_<name>` for each where they do not.
pub fn render(plugins: &BTreeMap<String, PluginFamilies>) -> Vec<MetricFamily> {
    let mut kinds: HashMap<&str, Vec<Kind>> = HashMap::new();
    for families in plugins.values() {
        for (name, family) in &families.families {
            kinds.entry(name).or_default().push(family.kind);
        }
    }
    let conflicting = |name: &str| {
        kinds
            .get(name)
            .is_some_and(|k| k.iter().any(|kind| *kind != k[0]))
    };
    let mut merged: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for (plugin, families) in plugins {
        for family in families.render(plugin, conflicting) {
            match merged.get_mut(family.name()) {
                Some(existing) => {
                    let mut all = existing.take_metric();
                    let mut more = family.get_metric().to_vec();
                    all.append(&mut more);
                    existing.set_metric(all);
                }
                None => {
                    merged.insert(family.name().to_string(), family);
                }
            }
        }
    }
    merged.into_values().collect()
}
