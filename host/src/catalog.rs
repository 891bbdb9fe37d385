//! The plugins a running host knows: the version each one serves now, the
//! versions it served before, and why a load failed. Workers read the
//! current version between batches; `/plugins` shows the rest.

use crate::locks::{Lock, ReadWrite};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::runtime::Prepared;
use crate::shadow::Shadow;

/// The version of one plugin that its workers serve; swapped by a reload.
pub struct LivePlugin {
    current: RwLock<Arc<Prepared>>,
    /// A candidate version run beside it, if one is dropped in.
    shadow: RwLock<Option<Arc<Shadow>>>,
}

impl LivePlugin {
    pub fn new(prepared: Arc<Prepared>) -> Self {
        LivePlugin {
            current: RwLock::new(prepared),
            shadow: RwLock::new(None),
        }
    }

    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.reading().clone()
    }

    /// Runs `shadow` beside the serving version from the next batch on
    /// (`None` ends it); the serving version's effects are tapped only
    /// while one runs.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        let mut slot = self.shadow.writing();
        self.current()
            .tap
            .store(shadow.is_some(), std::sync::atomic::Ordering::Relaxed);
        *slot = shadow;
    }

    pub fn current(&self) -> Arc<Prepared> {
        self.current.reading().clone()
    }

    /// Makes `next` the version the next batches go to.
    pub fn swap(&self, next: Arc<Prepared>) {
        let shadowed = self.shadow.reading().is_some();
        next.tap
            .store(shadowed, std::sync::atomic::Ordering::Relaxed);
        let previous = std::mem::replace(&mut *self.current.writing(), next);
        previous
            .tap
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Serving events.
    Running,
    /// The last load failed and no version of it serves.
    Failed,
    /// Removed from the folder; drained and stopped.
    Stopped,
}

/// One version a plugin served (or serves).
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    pub sha256: String,
    pub loaded_at: String,
    #[serde(serialize_with = "load_counter")]
    pub handled: Arc<AtomicU64>,
    /// How this version broke the plugin contract, if it did.
    #[serde(serialize_with = "faulty")]
    pub faulty: Arc<Mutex<Option<String>>>,
}

fn faulty<S: serde::Serializer>(c: &Arc<Mutex<Option<String>>>, s: S) -> Result<S::Ok, S::Error> {
    c.locked().serialize(s)
}

fn load_counter<S: serde::Serializer>(c: &Arc<AtomicU64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(c.load(Ordering::Relaxed))
}

/// What `/plugins` says of one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub state: PluginState,
    /// The version serving now, if any.
    pub sha256: Option<String>,
    pub loaded_at: Option<String>,
    /// Why the last load or reload failed; a failed reload leaves the
    /// previous version serving.
    pub last_error: Option<String>,
    pub reloads: u64,
    pub failed_loads: u64,
    /// Every version loaded since the host started, oldest first.
    pub versions: Vec<VersionStatus>,
    /// Filled in by the admin endpoint.
    pub handled: u64,
    pub dead_lettered: u64,
    /// Events not yet settled in the partitions this host owns.
    pub lag: Option<i64>,
    /// The partitions that wait for the plugin's sink or for the host.
    pub waiting: Vec<crate::hold::Hold>,
    /// Events settled per writer's schema id (`compiled`, a registry id,
    /// `file:<sha>`).
    pub schemas: std::collections::BTreeMap<String, u64>,
    /// Paused by an operator: it takes no events until resumed.
    pub paused: bool,
    /// The latest redrive of its dead letters, as every host sees it.
    pub redrive: Option<serde_json::Value>,
    /// A shadow run beside it, if one runs: its version and counts.
    pub shadow: Option<serde_json::Value>,
    /// A new version waiting for an operator's approval, if one does.
    pub pending_approval: Option<PendingApproval>,
    /// Automatic rollbacks since the host started, and the last one.
    pub rollbacks: u64,
    pub rollback: Option<RollbackStatus>,
}

/// A new version that asks for more grants than the serving one, waiting
/// for `plugboard ctl approve`.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    /// Always `pending-approval`.
    pub state: &'static str,
    pub version: String,
    pub sha256: String,
    /// What it asks for beyond the serving version, one grant each.
    pub asks: Vec<String>,
}

/// The last automatic rollback of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackStatus {
    /// The version taken out, and the one serving again.
    pub from: String,
    pub to: String,
    pub at: String,
    pub reason: String,
}

/// Every plugin's status, shared by the reloader and the admin endpoint.
#[derive(Default, Clone)]
pub struct Catalog {
    statuses: Arc<Mutex<BTreeMap<String, PluginStatus>>>,
    /// The plugins running now, for what serves them besides their
    /// consumer (a redrive).
    serving: Arc<Mutex<BTreeMap<String, Arc<LivePlugin>>>>,
}

impl Catalog {
    /// `name` runs from now on, its version in `live`.
    pub fn serving(&self, name: &str, live: Arc<LivePlugin>) {
        self.serving.locked().insert(name.to_string(), live);
    }

    /// The running plugin `name`, if it runs.
    pub fn live(&self, name: &str) -> Option<Arc<LivePlugin>> {
        self.serving.locked().get(name).cloned()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut PluginStatus)) {
        let mut all = self.statuses.locked();
        let status = all.entry(name.to_string()).or_insert_with(|| PluginStatus {
            name: name.to_string(),
            state: PluginState::Failed,
            sha256: None,
            loaded_at: None,
            last_error: None,
            reloads: 0,
            failed_loads: 0,
            versions: Vec::new(),
            handled: 0,
            dead_lettered: 0,
            lag: None,
            waiting: Vec::new(),
            schemas: Default::default(),
            paused: false,
            redrive: None,
            shadow: None,
            pending_approval: None,
            rollbacks: 0,
            rollback: None,
        });
        f(status);
    }

    /// `prepared` serves `name` from now on.
    pub fn loaded(&self, prepared: &Prepared) {
        let loaded_at = now();
        self.update(&prepared.name, |s| {
            if s.sha256.is_some() {
                s.reloads += 1;
            }
            s.state = PluginState::Running;
            s.sha256 = Some(prepared.sha256.clone());
            s.loaded_at = Some(loaded_at.clone());
            s.last_error = None;
            s.versions.push(VersionStatus {
                sha256: prepared.sha256.clone(),
                loaded_at,
                handled: prepared.handled.clone(),
                faulty: prepared.faulty.clone(),
            });
        });
    }

    /// What waits for approval for `name` now, if anything.
    pub fn pending(&self, name: &str, pending: Option<PendingApproval>) {
        self.update(name, |s| s.pending_approval = pending);
    }

    /// `previous` serves `name` again: the version it replaced was rolled
    /// back.
    pub fn rolled_back(&self, previous: &Prepared, from: &str, reason: &str) {
        let at = now();
        self.update(&previous.name, |s| {
            s.sha256 = Some(previous.sha256.clone());
            s.loaded_at = Some(at.clone());
            s.rollbacks += 1;
            s.last_error = Some(format!("version {from} rolled back: {reason}"));
            s.rollback = Some(RollbackStatus {
                from: from.to_string(),
                to: previous.version.clone(),
                at,
                reason: reason.to_string(),
            });
        });
    }

    /// A load of `name` failed; what served before (if anything) goes on.
    pub fn failed(&self, name: &str, error: &str) {
        self.update(name, |s| {
            s.failed_loads += 1;
            s.last_error = Some(error.to_string());
            if s.state != PluginState::Running {
                s.state = PluginState::Failed;
            }
        });
    }

    pub fn stopped(&self, name: &str) {
        self.serving.locked().remove(name);
        self.update(name, |s| {
            s.state = PluginState::Stopped;
            s.sha256 = None;
        });
    }

    pub fn snapshot(&self) -> Vec<PluginStatus> {
        self.statuses.locked().values().cloned().collect()
    }
}

fn now() -> String {
    prost_types::Timestamp::from(SystemTime::now()).to_string()
}
