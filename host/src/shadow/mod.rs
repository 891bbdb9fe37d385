//! Shadow runs: a candidate version dropped in as `<name>.shadow.wasm`
//! (with `<name>.shadow.toml`, or else the serving manifest) gets the same
//! events as the serving version, in the same host, right after the
//! serving version settled them, on the partition's own thread.
//!
//! Nothing it does leaves the sandbox: its outgoing requests are answered
//! here (with the answer the serving version got to the same request, or
//! to the same method and URL, else a stub `200 {}`), never sent; its
//! folder is a scratch copy in `<data_dir>/shadow/<name>`; its key-value
//! state is its own (`<name>.shadow`); its metric updates reach no
//! registry; its log lines stay out of the host's log; and its outcomes
//! never reach the dead-letter topic or the offsets.
//!
//! Per event the host compares the two: the outcome (ok, retry, reject and
//! reason, trap), the requests (method, URL, body; JSON bodies field by
//! field, each difference put on the event whose booking it is about),
//! and the metric updates. The files they wrote are compared when asked:
//! the scratch folder against the serving one. `GET /plugins/{name}/shadow`
//! and `plugboard ctl shadow NAME` show the counts and the first
//! differences; `plugboard ctl promote NAME` makes it the serving version.

pub mod diff;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use serde::Serialize;

use crate::locks::Lock;
use crate::runtime::bindings::wit;
use crate::runtime::observer::{Effects, Exchange, Observer, Responder};
use crate::runtime::{Disposition, Instance, Prepared};
use crate::shutdown::Shutdown;

/// How many differences a report keeps: the first ones, with their event.
const KEPT_DIFFERENCES: usize = 50;

/// Calls of the shadow that may run past its time budget before it is
/// switched off: each one held a serving partition that long.
const MAX_TIMEOUTS: u32 = 3;

/// What the serving version did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    Handled,
    /// Parked, with the failure's class and reason.
    Parked(&'static str, String),
}

impl Served {
    fn text(&self) -> String {
        match self {
            Served::Handled => "ok".into(),
            Served::Parked("rejected", reason) => format!("reject: {reason}"),
            // A trap's or timeout's reason is how the call ended, as the
            // shadow's is said.
            Served::Parked(_, reason) => reason.clone(),
        }
    }
}

/// The event a difference is about.
#[derive(Debug, Clone, Serialize)]
pub struct EventRef {
    pub event_id: String,
    pub booking_id: String,
    pub partition: i32,
    pub offset: i64,
}

impl EventRef {
    fn of(event: &wit::Event) -> Self {
        EventRef {
            event_id: event.booking.event_id.clone(),
            booking_id: event.booking.booking_id.clone(),
            partition: event.envelope.partition,
            offset: event.envelope.offset,
        }
    }
}

/// One thing the two versions did differently with an event.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub event: EventRef,
    /// `outcome`, `request` or `metrics`.
    pub kind: &'static str,
    /// What differs: the request (`POST <url>`) and the JSON field.
    pub what: String,
    pub serving: String,
    pub shadow: String,
}

/// What a shadow run found so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Events both versions got.
    pub compared: u64,
    /// Events on which they did the same.
    pub agreed: u64,
    /// Differences found, by kind.
    pub outcome: u64,
    pub request: u64,
    pub metrics: u64,
}

/// A candidate version running beside the serving one.
pub struct Shadow {
    pub plugin: String,
    pub prepared: Arc<Prepared>,
    tap: Arc<Tap>,
    /// Its instance per partition (each used by that partition's thread).
    instances: Mutex<HashMap<i32, Instance>>,
    counts: Mutex<Counts>,
    differences: Mutex<Vec<Difference>>,
    /// The serving version's folder and the shadow's scratch copy.
    pub folders: Option<(PathBuf, PathBuf)>,
    pub since: String,
    /// When it started, in ms since the epoch: a promotion must be newer.
    pub since_ms: i64,
    /// Calls that ran past its time budget; at [`MAX_TIMEOUTS`] it gets no
    /// more events.
    timeouts: std::sync::atomic::AtomicU32,
}

/// The shadow's [`Observer`]: keeps its requests in, answering each with
/// what the serving version was answered on the same thread's batch.
#[derive(Default)]
pub struct Tap {
    answers: Mutex<HashMap<ThreadId, Arc<Vec<Exchange>>>>,
}

impl Observer for Tap {
    /// The shadow's log and output lines are not the host's.
    fn record(&self, _line: String) {}

    fn answer(&self, _origin: &str) -> Option<(u16, String)> {
        Some((200, "{}".into()))
    }

    fn responder(&self) -> Responder {
        let served = self
            .answers
            .locked()
            .get(&std::thread::current().id())
            .cloned()
            .unwrap_or_default();
        // Shared, not copied: a responder is made per request.
        Box::new(move |request, stub| {
            let same = |e: &&Exchange| e.method == request.method && e.url == request.url;
            served
                .iter()
                .filter(same)
                .find(|e| e.body == request.body)
                .or_else(|| served.iter().find(same))
                .map_or(stub, |e| (e.status, e.response.clone()))
        })
    }
}

impl Shadow {
    /// `prepared` must have been made with `tap` as its observer (see
    /// [`Prepared::into_shadow`]).
    pub fn new(
        plugin: &str,
        prepared: Arc<Prepared>,
        tap: Arc<Tap>,
        folders: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        Shadow {
            plugin: plugin.to_string(),
            prepared,
            tap,
            instances: Mutex::default(),
            counts: Mutex::default(),
            differences: Mutex::default(),
            folders,
            since: prost_types::Timestamp::from(std::time::SystemTime::now()).to_string(),
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            timeouts: Default::default(),
        }
    }

    /// Delivers `events` (settled by the serving version as `served`, with
    /// `serving` effects) to the shadow on `slot`'s instance and records
    /// how the two differ.
    pub fn compare(
        &self,
        slot: i32,
        events: &[wit::Event],
        served: &[Served],
        serving: Effects,
        stop: &Shutdown,
    ) {
        if events.is_empty() || self.switched_off() {
            return;
        }
        let me = std::thread::current().id();
        let served_requests = Arc::new(serving.requests);
        self.tap
            .answers
            .locked()
            .insert(me, served_requests.clone());
        let mut instance = self.instances.locked().remove(&slot);
        let (outcomes, effects) = self.run(&mut instance, slot, events, stop);
        if let Some(instance) = instance {
            self.instances.locked().insert(slot, instance);
        }
        self.tap.answers.locked().remove(&me);

        let mut found: Vec<(usize, Difference)> = Vec::new();
        let at = |i: usize| EventRef::of(&events[i]);
        for (i, (served, shadow)) in served.iter().zip(&outcomes).enumerate() {
            let serving = served.text();
            if serving != *shadow {
                found.push((
                    i,
                    Difference {
                        event: at(i),
                        kind: "outcome",
                        what: "outcome".into(),
                        serving,
                        shadow: shadow.clone(),
                    },
                ));
            }
        }
        let ids: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.booking.event_id.as_str(), e.booking.booking_id.as_str()))
            .collect();
        for d in diff::requests(&served_requests, &effects.requests) {
            let i = diff::event_of(&d.context, &ids).unwrap_or(0);
            found.push((
                i,
                Difference {
                    event: at(i),
                    kind: "request",
                    what: d.what,
                    serving: d.serving,
                    shadow: d.shadow,
                },
            ));
        }
        if let Some((serving, shadow)) = diff::metrics(&serving.metrics, &effects.metrics) {
            found.push((
                0,
                Difference {
                    event: at(0),
                    kind: "metrics",
                    what: "metric updates of the batch".into(),
                    serving,
                    shadow,
                },
            ));
        }

        let differing: std::collections::BTreeSet<usize> = found.iter().map(|(i, _)| *i).collect();
        let differed = differing.len().min(served.len()) as u64;
        let metric = &self.prepared.metrics().shadow_events;
        metric
            .with_label_values(&[&self.plugin, "agreed"])
            .inc_by(served.len() as u64 - differed);
        metric
            .with_label_values(&[&self.plugin, "differed"])
            .inc_by(differed);
        {
            let mut counts = self.counts.locked();
            counts.compared += served.len() as u64;
            counts.agreed += served.len() as u64 - differed;
            for (_, d) in &found {
                match d.kind {
                    "outcome" => counts.outcome += 1,
                    "request" => counts.request += 1,
                    _ => counts.metrics += 1,
                }
            }
        }
        let mut kept = self.differences.locked();
        for (_, d) in found {
            if kept.len() >= KEPT_DIFFERENCES {
                break;
            }
            kept.push(d);
        }
    }

    /// The shadow's outcome per event, as text, and what it did.
    fn run(
        &self,
        instance: &mut Option<Instance>,
        slot: i32,
        events: &[wit::Event],
        stop: &Shutdown,
    ) -> (Vec<String>, Effects) {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut effects = Effects::default();
        let mut one_by_one = false;
        // The handled prefix of a call whose effects were dropped: delivered
        // again on its own, as the serving version's is.
        let mut prefix: Option<usize> = None;
        while outcomes.len() < events.len() {
            let start = outcomes.len();
            let end = match prefix.take() {
                Some(n) => start + n,
                None if one_by_one => start + 1,
                None => events.len(),
            };
            if instance.is_none() {
                match self.prepared.instantiate(Some(slot)) {
                    Ok(made) => *instance = Some(made),
                    Err(e) => {
                        let text = format!("cannot start: {e}");
                        outcomes.resize(events.len(), text);
                        break;
                    }
                }
            }
            let made = instance.as_mut().expect("just made");
            let disposition = made.handle(&events[start..end], stop);
            let mut did = made.take_effects();
            effects.requests.append(&mut did.requests);
            effects.metrics.append(&mut did.metrics);
            match disposition {
                Disposition::All => outcomes.resize(end, "ok".into()),
                Disposition::Stopped {
                    handled,
                    failure,
                    dropped,
                    state_dropped,
                } => {
                    if state_dropped {
                        *instance = None;
                    }
                    if handled > 0 && dropped {
                        prefix = Some(handled);
                        continue;
                    }
                    outcomes.resize(start + handled, "ok".into());
                    outcomes.push(match failure {
                        crate::runtime::bindings::Failure::Reject(r) => format!("reject: {r}"),
                        crate::runtime::bindings::Failure::Retry(r) => {
                            format!("retry: {}", r.reason)
                        }
                    });
                }
                Disposition::HostFailed(reason) => {
                    outcomes.resize(events.len(), format!("host failure: {reason}"));
                }
                broken => {
                    if let Disposition::Poisoned(crate::runtime::Poison::Timeout(_)) = broken {
                        let n = self
                            .timeouts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n + 1 == MAX_TIMEOUTS {
                            tracing::error!(
                                plugin = self.plugin,
                                shadow = self.prepared.version,
                                "the shadow ran past its time budget {MAX_TIMEOUTS} times: it gets no more events"
                            );
                        }
                    }
                    *instance = None;
                    if end - start > 1 {
                        one_by_one = true;
                        continue;
                    }
                    outcomes.push(broken.to_string());
                }
            }
        }
        (outcomes, effects)
    }

    /// Whether it ran past its budget too often to get more events.
    pub fn switched_off(&self) -> bool {
        self.timeouts.load(std::sync::atomic::Ordering::Relaxed) >= MAX_TIMEOUTS
    }

    pub fn counts(&self) -> Counts {
        self.counts.locked().clone()
    }

    /// The report `GET /plugins/{name}/shadow` serves.
    pub fn report(&self) -> serde_json::Value {
        let counts = self.counts();
        let agreement = match counts.compared {
            0 => serde_json::Value::Null,
            n => (counts.agreed as f64 / n as f64).into(),
        };
        serde_json::json!({
            "plugin": self.plugin,
            "version": self.prepared.version,
            "sha256": self.prepared.sha256,
            "since": self.since,
            "switched_off": self.switched_off().then(|| format!(
                "it ran past its time budget {MAX_TIMEOUTS} times: it gets no more events"
            )),
            "compared": counts.compared,
            "agreed": counts.agreed,
            "differing": counts.compared - counts.agreed,
            "agreement": agreement,
            "differences_by_kind": {
                "outcome": counts.outcome,
                "request": counts.request,
                "metrics": counts.metrics,
            },
            "differences": *self.differences.locked(),
            "files": self.folders.as_ref().map(|(serving, scratch)| diff::folders(serving, scratch)),
        })
    }
}
