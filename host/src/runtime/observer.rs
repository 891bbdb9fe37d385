//! Watching what plugins do. A runtime may be given one [`Observer`]: it
//! sees every log and output line, metric update and outgoing request of
//! the plugins the runtime runs, and is the one place that may step in: it
//! keeps the lines from the host's log, and may answer a request instead of
//! letting it go out. A host runs without one; `plugboard replay` uses the
//! [`Journal`], which records it all per event and captures outgoing HTTP
//! by default (answered by a stub, never sent).

use crate::locks::Lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a runtime's caller watches of its plugins.
pub trait Observer: Send + Sync {
    /// Something a plugin did, as a line: `log info: ...`, `output: ...`,
    /// `metric x += 1`, `http POST ... -> 200`. The host's log does not
    /// print the plugin's own log and output lines while it is watched.
    fn record(&self, line: String);

    /// How a request to a granted `origin` goes: `None` sends it; a status
    /// and body answer it here and nothing is sent.
    fn answer(&self, origin: &str) -> Option<(u16, String)>;

    /// How to answer a request [`Observer::answer`] kept from going out,
    /// once its body is read: `stub` unless the observer knows better (a
    /// shadow answers what the serving version was answered). Asked on
    /// the thread that calls the plugin; the answer is made wherever the
    /// request's future runs.
    fn responder(&self) -> Responder {
        Box::new(|_, stub| stub)
    }
}

/// Answers one captured request: `(request, stub) -> (status, body)`.
pub type Responder = Box<dyn FnOnce(&Exchange, (u16, String)) -> (u16, String) + Send>;

/// One outgoing request and its answer, as a shadow run compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Exchange {
    pub method: String,
    pub url: String,
    pub body: String,
    pub status: u16,
    pub response: String,
}

/// What one instance did beyond its answer while it was tapped: its
/// requests and its metric updates, in order.
#[derive(Debug, Default)]
pub struct Effects {
    pub requests: Vec<Exchange>,
    pub metrics: Vec<String>,
}

/// Where a tapped instance keeps its [`Effects`] until they are taken.
pub type EffectsLog = Arc<Mutex<Effects>>;

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

    /// Everything recorded since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.locked())
    }
}

impl Observer for Journal {
    fn record(&self, line: String) {
        self.lines.locked().push(line);
    }

    fn answer(&self, origin: &str) -> Option<(u16, String)> {
        match &self.egress {
            EgressMode::Capture(stubs) => Some(stubs.answer(origin)),
            EgressMode::Send => None,
        }
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
