//! Dispatch: hands ordered batches to one plugin and settles every event.
//!
//! In: a batch of events of one partition, in order. Out: one [`Outcome`]
//! per event, each final: handled, or to be dead-lettered with its
//! [`Failure`]. Order is kept: an event is never handled before the events
//! ahead of it are settled, and a retry holds the batch (with backoff) rather
//! than skipping ahead. A trap or timeout discards the instance; the rest of
//! the batch is then delivered one event at a time, so the event that trapped
//! is the one dead-lettered and its neighbours are still handled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::runtime::bindings::{Failure as PluginFailure, wit};
use crate::runtime::{CallError, Instance, Prepared};
use crate::shutdown::Shutdown;

/// Why an event ends in the dead-letter path. The names are part of the
/// dead-letter format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Not decodable or not valid: never reached a plugin.
    Decode,
    /// The plugin rejected it as permanently unprocessable.
    Rejected,
    /// The plugin asked for retries until the attempt budget ran out.
    RetriesExhausted,
    /// The plugin trapped on it on every attempt.
    Trap,
    /// The plugin ran past its time budget on every attempt.
    Timeout,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Decode => "decode",
            FailureClass::Rejected => "rejected",
            FailureClass::RetriesExhausted => "retries-exhausted",
            FailureClass::Trap => "trap",
            FailureClass::Timeout => "timeout",
        }
    }
}

/// A final failure: the event goes to the dead-letter path with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub reason: String,
    pub attempts: u32,
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    DeadLetter(Failure),
}

/// Counts for the run summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub handled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

/// Delivers batches to one plugin, owning its live instance.
pub struct Dispatcher {
    prepared: Arc<Prepared>,
    /// `None` after a trap: rebuilt lazily before the next call.
    instance: Option<Instance>,
    /// Which share of the plugin's gauges its instances set.
    slot: i32,
    pub stats: Stats,
}

impl Dispatcher {
    /// Wraps an instance already made (and `init`-ed) from `prepared`.
    pub fn new(prepared: Arc<Prepared>, instance: Instance) -> Self {
        Dispatcher {
            prepared,
            instance: Some(instance),
            slot: 0,
            stats: Stats::default(),
        }
    }

    /// A dispatcher for `slot` (a partition) whose instance is made on
    /// first delivery, on the thread that delivers.
    pub fn lazy(prepared: Arc<Prepared>, slot: i32) -> Self {
        Dispatcher {
            prepared,
            instance: None,
            slot,
            stats: Stats::default(),
        }
    }

    pub fn prepared(&self) -> &Arc<Prepared> {
        &self.prepared
    }

    /// Moves to `current` if it is another version than the one in use:
    /// the next batch goes to a fresh instance of it. Called between
    /// batches, so no batch is split across versions.
    pub fn follow(&mut self, current: &Arc<Prepared>) {
        if !Arc::ptr_eq(&self.prepared, current) {
            self.prepared = current.clone();
            self.instance = None;
        }
    }

    /// Delivers `batch` and returns one outcome per event, in order. If
    /// `stop` is raised during a retry backoff, returns early with the
    /// outcomes of the events settled so far: the rest are not settled.
    pub fn deliver(&mut self, batch: &[wit::Event], stop: &Shutdown) -> Vec<Outcome> {
        let limits = self.prepared.spec.limits.clone();
        let plugin = self.prepared.name.clone();
        let metrics = self.prepared.metrics().clone();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Failed attempts of the event at `outcomes.len()`.
        let mut attempts = 0u32;
        // After a trap, deliver one event at a time to find the culprit.
        let mut one_by_one = false;

        while outcomes.len() < batch.len() {
            let start = outcomes.len();
            let end = if one_by_one { start + 1 } else { batch.len() };
            let slice = &batch[start..end];

            let result = match self.instance() {
                Ok(instance) => {
                    let began = Instant::now();
                    let r = instance.handle(slice);
                    metrics
                        .batch_seconds
                        .with_label_values(&[&*plugin])
                        .observe(began.elapsed().as_secs_f64());
                    r
                }
                Err(e) => Err(e),
            };

            let (class, reason, retry_after) = match result {
                Ok(outcome) => {
                    let handled = outcome.handled as usize;
                    outcomes.extend(std::iter::repeat_n(Outcome::Handled, handled));
                    if handled > 0 {
                        attempts = 0;
                    }
                    match outcome.failure {
                        None if handled == slice.len() => continue,
                        None => (
                            FailureClass::RetriesExhausted,
                            format!(
                                "plugin handled {handled} of {} events without saying why it stopped",
                                slice.len()
                            ),
                            None,
                        ),
                        Some(_) if handled == slice.len() => continue,
                        Some(PluginFailure::Reject(reason)) => {
                            outcomes.push(Outcome::DeadLetter(Failure {
                                class: FailureClass::Rejected,
                                reason,
                                attempts: attempts + 1,
                            }));
                            attempts = 0;
                            continue;
                        }
                        Some(PluginFailure::Retry(info)) => (
                            FailureClass::RetriesExhausted,
                            info.reason,
                            info.after_ms.map(|ms| Duration::from_millis(ms.into())),
                        ),
                    }
                }
                Err(err) => {
                    let class = match &err {
                        CallError::Timeout(_) => FailureClass::Timeout,
                        _ => FailureClass::Trap,
                    };
                    if matches!(err, CallError::Trap(_) | CallError::Timeout(_)) {
                        metrics
                            .instance_restarts
                            .with_label_values(&[&*plugin, class.as_str()])
                            .inc();
                        one_by_one = true;
                    }
                    tracing::warn!(plugin = &*plugin, "{err}; the instance is rebuilt");
                    self.instance = None;
                    (class, err.to_string(), None)
                }
            };

            attempts += 1;
            if attempts >= limits.max_attempts {
                outcomes.push(Outcome::DeadLetter(Failure {
                    class,
                    reason,
                    attempts,
                }));
                attempts = 0;
                continue;
            }
            self.stats.retried += 1;
            metrics.retries.with_label_values(&[&*plugin]).inc();
            let delay = retry_after.unwrap_or_else(|| backoff(&limits, attempts));
            tracing::debug!(plugin = &*plugin, ?delay, attempts, "retrying: {reason}");
            if !stop.sleep(delay) {
                break;
            }
        }

        for outcome in &outcomes {
            match outcome {
                Outcome::Handled => {
                    self.stats.handled += 1;
                    self.prepared
                        .handled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics
                        .events
                        .with_label_values(&[&*plugin, "handled"])
                        .inc();
                }
                Outcome::DeadLetter(f) => {
                    self.stats.dead_lettered += 1;
                    metrics
                        .events
                        .with_label_values(&[&*plugin, "dead_lettered"])
                        .inc();
                    metrics
                        .dead_letters
                        .with_label_values(&[&*plugin, f.class.as_str()])
                        .inc();
                }
            }
        }
        outcomes
    }

    /// Makes the instance now rather than at the first delivery, so it
    /// can report its state (gauges) before any event arrives.
    pub fn warm(&mut self) {
        if let Err(e) = self.instance() {
            tracing::warn!(
                plugin = &*self.prepared.name,
                "{e}; retried at the first event"
            );
        }
    }

    fn instance(&mut self) -> Result<&mut Instance, CallError> {
        if self.instance.is_none() {
            self.instance = Some(self.prepared.instantiate(Some(self.slot))?);
        }
        Ok(self.instance.as_mut().expect("just set"))
    }
}

/// Exponential backoff with "equal jitter": half the step fixed, half
/// random, so retries of many partitions do not hit a recovering service in
/// lock-step.
pub fn backoff(limits: &crate::config::Limits, attempt: u32) -> Duration {
    let step = limits
        .backoff_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(limits.backoff_max);
    let half = step / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let limits = crate::config::Limits::resolve(&Default::default(), &Default::default());
        for attempt in 1..30 {
            let d = backoff(&limits, attempt);
            let step =
                (limits.backoff_initial * (1 << (attempt - 1).min(20))).min(limits.backoff_max);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} vs {step:?}"
            );
        }
    }
}
