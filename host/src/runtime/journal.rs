//! What a plugin did during one call — log lines, output, metrics, outgoing
//! requests — recorded for `plugboard replay`, which prints it per event.
//! Outgoing HTTP is captured by default: answered by a stub and never sent.

use crate::locks::Lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where a plugin's outgoing requests go during a replay.
#[derive(Clone)]
pub enum EgressMode {
    /// Answered by [`Stubs`]; nothing leaves the machine.
    Capture(Arc<Stubs>),
    /// Sent for real, to granted origins only.
    Send,
}

/// Canned answers per origin (`scheme://host:port`).
#[derive(Debug, Clone)]
pub struct Stubs {
    pub by_origin: BTreeMap<String, (u16, String)>,
    pub default: (u16, String),
}

impl Default for Stubs {
    fn default() -> Self {
        Stubs {
            by_origin: BTreeMap::new(),
            default: (200, "{}".into()),
        }
    }
}

impl Stubs {
    pub fn answer(&self, origin: &str) -> (u16, String) {
        self.by_origin
            .get(origin)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// The record of a replay, shared by every instance it makes.
#[derive(Clone)]
pub struct Journal {
    lines: Arc<Mutex<Vec<String>>>,
    pub egress: EgressMode,
}

impl Journal {
    pub fn new(egress: EgressMode) -> Self {
        Journal {
            lines: Arc::default(),
            egress,
        }
    }

    pub fn record(&self, line: impl Into<String>) {
        self.lines.locked().push(line.into());
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.locked())
    }
}

/// `name{a="1",b="2"}` as Prometheus writes a series.
pub fn series(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}
