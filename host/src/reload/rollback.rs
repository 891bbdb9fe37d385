//! Automatic rollback: after a swap the new version is watched for a
//! window (`[reload] rollback_window_events` or `rollback_window_secs`,
//! whichever ends first). If the share of its events it fails for good
//! (rejects, traps, timeouts, budgets; not a sink that is down) exceeds
//! the previous version's by more than `rollback_points` percentage
//! points, once it failed at least `rollback_min_failures`, or if it broke
//! the contract even once, the previous version is swapped back.
//!
//! What the bad version parked in its window is delivered again to the
//! restored one by a redrive of its dead letters (they carry the version
//! in `plugboard.version`), and each is marked superseded in the
//! dead-letter topic, so a later redrive skips it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::ReloadConfig;
use crate::locks::Lock;
use crate::runtime::Prepared;

/// A swapped version under watch, and the one it replaced.
pub struct Watch {
    pub previous: Arc<Prepared>,
    pub next: Arc<Prepared>,
    since: Instant,
    /// The previous version's failure rate over its life in this host.
    previous_rate: f64,
    events: u64,
    window: Duration,
    points: f64,
    min_failures: u64,
}

/// What the watch says now.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Watching,
    /// The window passed: the new version stays.
    Kept,
    /// Swap the previous version back, for this reason.
    RollBack(String),
}

/// Events a version handled and failed for good.
fn counts(version: &Prepared) -> (u64, u64) {
    (
        version.handled.load(Ordering::Relaxed),
        version.failed.load(Ordering::Relaxed),
    )
}

fn rate(handled: u64, failed: u64) -> f64 {
    match handled + failed {
        0 => 0.0,
        all => failed as f64 / all as f64,
    }
}

impl Watch {
    pub fn new(previous: Arc<Prepared>, next: Arc<Prepared>, config: &ReloadConfig) -> Self {
        let (handled, failed) = counts(&previous);
        Watch {
            previous_rate: rate(handled, failed),
            previous,
            next,
            since: Instant::now(),
            events: config.rollback_window_events,
            window: Duration::from_secs(config.rollback_window_secs),
            points: config.rollback_points,
            min_failures: config.rollback_min_failures,
        }
    }

    pub fn verdict(&self) -> Verdict {
        if let Some(contract) = self.next.faulty.locked().clone() {
            return Verdict::RollBack(format!("it broke the plugin contract: {contract}"));
        }
        let (handled, failed) = counts(&self.next);
        let now = rate(handled, failed);
        if failed >= self.min_failures && (now - self.previous_rate) * 100.0 > self.points {
            return Verdict::RollBack(format!(
                "it failed {failed} of {} events ({:.1}%), the previous version {:.1}% (threshold {} points)",
                handled + failed,
                now * 100.0,
                self.previous_rate * 100.0,
                self.points
            ));
        }
        if handled + failed >= self.events || self.since.elapsed() >= self.window {
            return Verdict::Kept;
        }
        Verdict::Watching
    }
}

/// A rolled-back version whose dead letters are to be delivered again to
/// the restored one, by a redrive, once its workers have moved off it.
pub struct Redeliver {
    plugin: String,
    live: Arc<crate::catalog::LivePlugin>,
    bad: Arc<Prepared>,
    reason: String,
    since: Instant,
}

/// How long the workers get to finish the batches they had begun with the
/// bad version (and park what it failed) before its dead letters are read.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

impl Redeliver {
    pub fn new(
        plugin: String,
        live: Arc<crate::catalog::LivePlugin>,
        bad: Arc<Prepared>,
        reason: String,
    ) -> Self {
        Redeliver {
            plugin,
            live,
            bad,
            reason,
            since: Instant::now(),
        }
    }

    /// Starts the redrive if it is time and no other redrive of the plugin
    /// runs; true once started (or given up for good).
    pub fn try_start(
        &mut self,
        runs: &crate::redrive::runs::Runs,
        control: &crate::control::Control,
    ) -> bool {
        use crate::redrive::{Filter, Progress, RedriveState};
        // Only this host's reference left: no worker delivers to it now.
        let moved_off = Arc::strong_count(&self.bad) == 1;
        if !moved_off && self.since.elapsed() < SETTLE_GRACE {
            return false;
        }
        let before = control
            .redrive(&self.plugin)
            .and_then(|v| serde_json::from_value::<Progress>(v).ok());
        let busy = runs.runs(&self.plugin)
            || before
                .as_ref()
                .is_some_and(|p| p.state == RedriveState::Running && !p.stale());
        if busy {
            return false;
        }
        let filter = Filter {
            version: Some(self.bad.version.clone()),
            ..Filter::default()
        };
        let mut progress = Progress::new(
            &runs.me,
            &filter,
            before.map(|p| p.done).unwrap_or_default(),
        );
        progress.supersede = Some(format!(
            "version {} rolled back: {}",
            self.bad.version, self.reason
        ));
        tracing::info!(
            plugin = self.plugin,
            redrive = progress.id,
            version = self.bad.version,
            "delivering what the rolled-back version dead-lettered to the restored one"
        );
        if let Err(e) = runs.start(&self.plugin, self.live.clone(), progress) {
            tracing::error!(
                plugin = self.plugin,
                "cannot start the rollback's redrive: {e}"
            );
            return false;
        }
        true
    }
}
