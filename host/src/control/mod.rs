//! What an operator switched: which plugins are paused, which group is
//! being rewound, how far a redrive got. Shared by every host of the
//! groups through the control [`topic`], and the pauses kept in
//! `<data_dir>/paused.json` too, so a restart keeps them even before the
//! topic is read.
//!
//! A paused plugin's workers finish the batch in flight, commit, and take
//! no more; its consumer stops fetching but stays in its group (no
//! rebalance), so a resume goes on where it stopped.

pub mod topic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::locks::Lock;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use topic::ControlTopic;

/// How long the members of a group wait for the host that asked for a
/// rewind to finish it: one that died meanwhile is not waited for longer.
pub const REWIND_EXPIRY: Duration = Duration::from_secs(120);

/// Where a rewind of a plugin's group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewindPhase {
    /// Every member leaves the group, committing what it settled.
    Leave,
    /// The group's offsets were moved: the members join again.
    Done,
    /// Nothing was moved (see `error`): the members join again.
    Cancelled,
}

/// A rewind as the control topic carries it, under `rewind/<plugin>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewindOrder {
    pub id: String,
    pub phase: RewindPhase,
    /// When it was asked, in ms since the epoch.
    pub at_ms: i64,
    /// What the operator asked for, as given.
    pub to: serde_json::Value,
    /// Where each partition was moved to (`done`).
    #[serde(default)]
    pub offsets: BTreeMap<i32, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RewindOrder {
    /// Whether the members of the group should be out of it now.
    pub fn holds_members_out(&self) -> bool {
        self.phase == RewindPhase::Leave
            && now_ms().saturating_sub(self.at_ms) < REWIND_EXPIRY.as_millis() as i64
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the control topic says, as this host last read it.
#[derive(Default)]
struct Known {
    /// The last record this host wrote, per key: its own older records,
    /// read back after it applied a newer one, are history.
    written: BTreeMap<String, u64>,
    rewinds: BTreeMap<String, RewindOrder>,
    redrives: BTreeMap<String, serde_json::Value>,
    /// The version of each plugin an operator approved last.
    approvals: BTreeMap<String, String>,
    /// The shadow version of each plugin an operator promoted last, and
    /// when.
    promotions: BTreeMap<String, (String, i64)>,
}

impl crate::source::kafka::Switches for Control {
    fn paused(&self, plugin: &str) -> Arc<AtomicBool> {
        self.pauses.flag(plugin)
    }

    fn rewind_under_way(&self, plugin: &str) -> Option<String> {
        self.rewind(plugin)
            .filter(RewindOrder::holds_members_out)
            .map(|o| o.id)
    }

    fn latest_rewind(&self, plugin: &str) -> Option<String> {
        self.rewind(plugin).map(|o| o.id)
    }

    fn wait_out_rewind(&self, plugin: &str, shutdown: &Shutdown) {
        Control::wait_out_rewind(self, plugin, shutdown);
    }
}

/// What an operator switched, as every host of the groups sees it.
#[derive(Clone)]
pub struct Control {
    pub pauses: Pauses,
    /// This process, in the records it writes.
    nonce: Arc<str>,
    /// The number of its next record.
    seq: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
    known: Arc<(Mutex<Known>, Condvar)>,
    topic: Arc<OnceLock<ControlTopic>>,
}

impl Control {
    /// The pauses kept in `data_dir`; nothing shared until [`Control::follow`].
    pub fn load(data_dir: &Path, metrics: Arc<Metrics>) -> Result<Self> {
        Ok(Control {
            pauses: Pauses::load(data_dir)?,
            nonce: format!("{:x}-{:x}", std::process::id(), now_ms()).into(),
            seq: Arc::default(),
            metrics,
            known: Arc::default(),
            topic: Arc::default(),
        })
    }

    /// Reads the control topic of `kafka` to its end and follows it until
    /// `shutdown`: from then on what any host switches applies here too.
    pub fn follow(&self, kafka: &KafkaConfig, shutdown: &Shutdown) -> Result<()> {
        let this = self.clone();
        let apply = Arc::new(move |key: &str, value: &[u8]| this.read(key, value));
        let topic = ControlTopic::open(kafka, apply, shutdown)?;
        tracing::info!(topic = topic.topic, "following the control topic");
        let _ = self.topic.set(topic);
        Ok(())
    }

    /// One record read from the control topic: applied unless it is one
    /// of this host's own, older than one it applied since (it applies
    /// what it writes at once, and reads it back later).
    fn read(&self, key: &str, value: &[u8]) {
        let record: serde_json::Value = match serde_json::from_slice(value) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key, "an unreadable control record is ignored: {e}");
                return;
            }
        };
        let superseded = record["by"] == *self.nonce
            && record["seq"].as_u64().is_some_and(|seq| {
                self.known
                    .0
                    .locked()
                    .written
                    .get(key)
                    .is_some_and(|&last| seq < last)
            });
        if !superseded {
            self.apply(key, record);
        }
    }

    /// One record of the control topic (or of this host, before it is
    /// written there).
    fn apply(&self, key: &str, parsed: serde_json::Value) {
        let Some((kind, plugin)) = key.split_once('/') else {
            return;
        };
        match kind {
            "pause" => {
                let paused = parsed["paused"].as_bool().unwrap_or(false);
                if self.pauses.is_paused(plugin) != paused {
                    if let Err(e) = self.pauses.set(plugin, paused) {
                        tracing::error!(plugin, "cannot keep the pause: {e:#}");
                    }
                    tracing::info!(plugin, "{}", if paused { "paused" } else { "resumed" });
                }
                self.metrics.set_paused(plugin, paused);
            }
            "rewind" => match serde_json::from_value::<RewindOrder>(parsed) {
                Ok(order) => {
                    let (known, changed) = &*self.known;
                    known.locked().rewinds.insert(plugin.to_string(), order);
                    changed.notify_all();
                }
                Err(e) => tracing::warn!(key, "an unreadable rewind is ignored: {e}"),
            },
            "approve" => {
                if let Some(version) = parsed["version"].as_str() {
                    tracing::info!(plugin, version, "new grants approved");
                    let (known, _) = &*self.known;
                    known
                        .locked()
                        .approvals
                        .insert(plugin.to_string(), version.to_string());
                }
            }
            "promote" => {
                if let Some(version) = parsed["version"].as_str() {
                    let at = parsed["at_ms"].as_i64().unwrap_or(0);
                    let (known, _) = &*self.known;
                    known
                        .locked()
                        .promotions
                        .insert(plugin.to_string(), (version.to_string(), at));
                }
            }
            "redrive" => {
                let (known, changed) = &*self.known;
                known.locked().redrives.insert(plugin.to_string(), parsed);
                changed.notify_all();
            }
            _ => {}
        }
    }

    /// Writes `value` under `key` to the control topic (every host applies
    /// it) and applies it here at once. Without a control topic (a file
    /// source) it applies here only.
    pub async fn publish(&self, key: &str, mut value: serde_json::Value) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        value["by"] = (*self.nonce).into();
        value["seq"] = seq.into();
        self.known.0.locked().written.insert(key.to_string(), seq);
        if let Some(topic) = self.topic.get() {
            topic.publish(key, &value).await?;
        }
        self.apply(key, value);
        Ok(())
    }

    /// Whether the control topic is followed (else switches are this
    /// host's alone).
    pub fn shared(&self) -> bool {
        self.topic.get().is_some()
    }

    /// The latest rewind of `plugin`'s group, if any.
    pub fn rewind(&self, plugin: &str) -> Option<RewindOrder> {
        self.known.0.locked().rewinds.get(plugin).cloned()
    }

    /// Whether an operator approved `version` of `plugin` (its new grants).
    pub fn approved(&self, plugin: &str, version: &str) -> bool {
        self.known
            .0
            .locked()
            .approvals
            .get(plugin)
            .map(String::as_str)
            == Some(version)
    }

    /// Whether an operator promoted the shadow `version` of `plugin` at
    /// or after `since_ms` (an older promotion was of another run).
    pub fn promoted(&self, plugin: &str, version: &str, since_ms: i64) -> bool {
        self.known
            .0
            .locked()
            .promotions
            .get(plugin)
            .is_some_and(|(v, at)| v == version && *at >= since_ms)
    }

    /// The latest redrive progress of `plugin`, if any.
    pub fn redrive(&self, plugin: &str) -> Option<serde_json::Value> {
        self.known.0.locked().redrives.get(plugin).cloned()
    }

    /// Waits while a rewind of `plugin`'s group keeps its members out (or
    /// until `shutdown`).
    pub fn wait_out_rewind(&self, plugin: &str, shutdown: &Shutdown) {
        let (known, changed) = &*self.known;
        let mut guard = known.locked();
        let mut told = false;
        while !shutdown.is_requested()
            && guard
                .rewinds
                .get(plugin)
                .is_some_and(RewindOrder::holds_members_out)
        {
            if !told {
                tracing::info!(plugin, "out of the group while its offsets are moved");
                told = true;
            }
            guard = changed
                .wait_timeout(guard, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// The plugins paused on this host, each with the flag its workers read.
#[derive(Clone)]
pub struct Pauses {
    file: PathBuf,
    flags: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
}

impl Pauses {
    /// The pauses kept in `data_dir` (none if it holds no file yet).
    pub fn load(data_dir: &Path) -> Result<Self> {
        let file = data_dir.join("paused.json");
        let names: Vec<String> = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a JSON list of plugin names: fix or delete it (then no plugin is paused)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let flags = names
            .into_iter()
            .map(|n| (n, Arc::new(AtomicBool::new(true))))
            .collect();
        Ok(Pauses {
            file,
            flags: Arc::new(Mutex::new(flags)),
        })
    }

    /// The flag `plugin`'s workers and consumer read (true: paused).
    pub fn flag(&self, plugin: &str) -> Arc<AtomicBool> {
        self.flags
            .locked()
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone()
    }

    pub fn is_paused(&self, plugin: &str) -> bool {
        self.flags
            .locked()
            .get(plugin)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Pauses or resumes `plugin`; kept on disk before it takes effect, so
    /// a restart keeps what was answered.
    pub fn set(&self, plugin: &str, paused: bool) -> Result<()> {
        let mut flags = self.flags.locked();
        let mut names: Vec<&str> = flags
            .iter()
            .filter(|(name, f)| name.as_str() != plugin && f.load(Ordering::SeqCst))
            .map(|(name, _)| name.as_str())
            .collect();
        if paused {
            names.push(plugin);
        }
        names.sort_unstable();
        let text = serde_json::to_string_pretty(&names)?;
        let tmp = self.file.with_extension("json.tmp");
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .with_context(|| format!("cannot write {}", self.file.display()))?;
        flags
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .store(paused, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_read_back_late_never_undoes_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::load(dir.path(), Arc::new(Metrics::new())).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Writes a record (applied here at once) and returns it as the
        // topic hands it back later.
        let write = |key: &str, value: serde_json::Value| {
            let seq = control.seq.load(Ordering::SeqCst);
            runtime
                .block_on(control.publish(key, value.clone()))
                .unwrap();
            let mut echo = value;
            echo["by"] = (*control.nonce).into();
            echo["seq"] = seq.into();
            echo.to_string()
        };
        let order = |phase: &str| serde_json::json!({"id": "r1", "phase": phase, "at_ms": now_ms(), "to": "earliest"});
        let leave = write("rewind/crm", order("leave"));
        let done = write("rewind/crm", order("done"));
        control.read("rewind/crm", leave.as_bytes());
        assert_eq!(control.rewind("crm").unwrap().phase, RewindPhase::Done);
        control.read("rewind/crm", done.as_bytes());
        let progress = |state: &str, at: i64| serde_json::json!({"id": "d1", "state": state, "updated_ms": at});
        let first = write("redrive/crm", progress("running", 1));
        write("redrive/crm", progress("running", 3));
        control.read("redrive/crm", first.as_bytes());
        assert_eq!(control.redrive("crm").unwrap()["updated_ms"], 3);
        let running = write("redrive/crm", progress("running", 3));
        write("redrive/crm", progress("done", 4));
        control.read("redrive/crm", running.as_bytes());
        assert_eq!(control.redrive("crm").unwrap()["state"], "done");
        // Its own pause read back after its newer resume is history;
        // another host's record applies in the topic's order.
        let paused = write("pause/crm", serde_json::json!({ "paused": true }));
        write("pause/crm", serde_json::json!({ "paused": false }));
        control.read("pause/crm", paused.as_bytes());
        assert!(!control.pauses.is_paused("crm"));
        control.read("pause/crm", br#"{"paused":true,"by":"another","seq":0}"#);
        assert!(control.pauses.is_paused("crm"));
        // A new redrive replaces the last one.
        control.read(
            "redrive/crm",
            br#"{"id":"d2","state":"running","updated_ms":0,"by":"another","seq":0}"#,
        );
        assert_eq!(control.redrive("crm").unwrap()["id"], "d2");
    }

    #[test]
    fn a_pause_outlives_a_restart_and_a_resume_too() {
        let dir = tempfile::tempdir().unwrap();
        let pauses = Pauses::load(dir.path()).unwrap();
        let crm = pauses.flag("crm");
        pauses.set("crm", true).unwrap();
        pauses.set("lake", true).unwrap();
        assert!(crm.load(Ordering::SeqCst), "the workers' flag follows");
        let again = Pauses::load(dir.path()).unwrap();
        assert!(again.is_paused("crm") && again.is_paused("lake"));
        again.set("crm", false).unwrap();
        let third = Pauses::load(dir.path()).unwrap();
        assert!(!third.is_paused("crm") && third.is_paused("lake"));
        std::fs::write(dir.path().join("paused.json"), "{").unwrap();
        let err = Pauses::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("fix or delete it"), "{err}");
    }
}
