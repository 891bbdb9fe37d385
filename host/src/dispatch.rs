//! Dispatch: hands ordered batches to one plugin and settles every event.
//!
//! In: a batch of events of one partition, in order. Out: one [`Outcome`]
//! per event, each final: handled, or to be dead-lettered with its
//! [`Failure`]. Order is kept: an event is never handled before the events
//! ahead of it are settled.
//!
//! Four kinds of failure stay apart:
//! - the plugin's answer: `reject` parks that one event; `retry` *holds* the
//!   partition (capped, jittered backoff, `Retry-After` capped too) until the
//!   plugin succeeds or `retry_timeout` runs out, and after a few retries of
//!   a batch its events go one at a time, so the neighbours ahead of the one
//!   that fails are handled and only that one waits or is parked;
//! - a trap or timeout poisons the instance: it is rebuilt, the batch goes
//!   one event at a time, and an event that keeps failing for
//!   `max_attempts` deliveries is parked;
//! - a failure of the host's own parts (the state store, an instance that
//!   cannot start) holds the partition until it heals and never parks an
//!   event;
//! - an outcome that breaks the contract counts like a trap.
//!
//! A call's state writes and metric updates count only when it handled its
//! whole batch (see [`Instance::handle`]); the handled prefix of a call
//! that stopped early is delivered again on its own, so state never runs
//! ahead of what was handled and nothing is counted twice. An event that
//! fails for good is parked (by [`Park`]) before any event after it is
//! handled: if the park cannot finish (a stop, a revoke), nothing past it
//! has touched state, and the committed prefix ends right before it.
//!
//! Every attempt goes to the version the plugin serves at that moment: a
//! fix dropped in while a partition holds or an event keeps trapping ends
//! the loop, and a new version's failures count from zero.
//!
//! On a worker of the pool the `stop` token yields (see
//! [`Shutdown::yielding`]): a backoff returns at once, as a stop does, and
//! the dispatcher keeps where the head event stands (its attempts, its
//! hold clock, a park that was cut short), so the next call with the same
//! events goes on from there instead of starting over.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::catalog::LivePlugin;
pub use crate::cut::truncate;
use crate::hold::Cause;
use crate::observe::HostEvent;
use crate::runtime::bindings::{Failure as PluginFailure, wit};
use crate::runtime::{CallError, Disposition, Instance, Poison, Prepared};
use crate::shutdown::Shutdown;

/// `retry` answers to a batch of several events before its events go one
/// at a time, so the events ahead of the one that fails are not held.
const ISOLATE_AFTER_RETRIES: u32 = 3;

/// Why an event ends in the dead-letter path. The names are part of the
/// dead-letter format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Not decodable or not valid: never reached a plugin.
    Decode,
    /// Written with a schema the contract cannot read (a field it needs
    /// changed type, another message), or one the registry does not have.
    Schema,
    /// The plugin rejected it as permanently unprocessable.
    Rejected,
    /// The plugin asked for retries until `retry_timeout` ran out.
    RetriesExhausted,
    /// The plugin trapped on it on every attempt.
    Trap,
    /// The plugin ran past its time budget on every attempt.
    Timeout,
    /// The plugin's answer broke the handler contract on every attempt.
    Contract,
    /// The plugin held more of the host's memory (pending state writes,
    /// metric updates) than its budget on every attempt.
    Budget,
}

impl FailureClass {
    /// Every class, by name.
    pub const NAMES: [&'static str; 8] = [
        "decode",
        "schema",
        "rejected",
        "retries-exhausted",
        "trap",
        "timeout",
        "contract",
        "budget",
    ];

    /// Whether `name` names a class.
    pub fn is_name(name: &str) -> bool {
        Self::NAMES.contains(&name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Decode => "decode",
            FailureClass::Schema => "schema",
            FailureClass::Rejected => "rejected",
            FailureClass::RetriesExhausted => "retries-exhausted",
            FailureClass::Trap => "trap",
            FailureClass::Timeout => "timeout",
            FailureClass::Contract => "contract",
            FailureClass::Budget => "budget",
        }
    }
}

/// A final failure: the event goes to the dead-letter path with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    /// At most [`MAX_REASON_BYTES`] long.
    pub reason: String,
    pub attempts: u32,
}

impl Failure {
    /// A failure whose reason is cut to the dead-letter bound.
    pub fn new(class: FailureClass, reason: &str, attempts: u32) -> Self {
        Failure {
            class,
            reason: truncate_reason(reason).into_owned(),
            attempts,
        }
    }
}

/// The most bytes of a failure's reason that a dead letter (and a log
/// line) carries: a plugin may give a reason of any size, and a dead-letter
/// record must fit what the broker accepts. A longer reason is cut at a
/// character boundary and says how much was left out.
pub const MAX_REASON_BYTES: usize = 4096;

/// `reason`, at most [`MAX_REASON_BYTES`] long.
pub fn truncate_reason(reason: &str) -> Cow<'_, str> {
    truncate(reason, MAX_REASON_BYTES)
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    DeadLetter(Failure),
}

/// Parks the event at this index of the batch with this failure, failed
/// by this version; true once the dead-letter sink holds it for good,
/// false if a stop or revoke came first (then it is not settled).
pub type Park<'a> = dyn FnMut(usize, &Failure, &Prepared) -> bool + 'a;

/// Why a delivery returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every event of the batch is settled.
    Settled,
    /// A stop or revoke came while the partition held or a dead letter
    /// was written: the events after the outcomes are not settled.
    Stopped,
    /// The plugin now serves a version that wants events in another shape
    /// (`payload`): the rest of the batch must be made again for it, so no
    /// event is offered to two versions with different settings.
    Reshaped,
}

/// Counts for the run summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub handled: u64,
    /// Deliveries tried again: retry answers, waits, traps.
    pub retried: u64,
    pub dead_lettered: u64,
    /// Events a stopped run left neither handled nor dead-lettered.
    pub unsettled: u64,
}

/// Delivers batches to one plugin, owning its live instance.
pub struct Dispatcher {
    prepared: Arc<Prepared>,
    /// `None` after a trap: rebuilt lazily before the next call.
    instance: Option<Instance>,
    /// Which share of the plugin's gauges its instances set: the
    /// partition it serves.
    slot: i32,
    /// The lane of the partition it serves (index, lanes), if it has lanes.
    lane: Option<(usize, usize)>,
    /// Whether the partition holds (see [`crate::hold`]).
    holding: bool,
    /// Where a new version comes from, if the plugin can be reloaded: a
    /// partition that holds moves to it between attempts, so a fixed
    /// version (a corrected CRM address, say) ends the wait.
    live: Option<Arc<LivePlugin>>,
    /// Where the head event stood when a yielding backoff cut the last
    /// call short; taken by the next call.
    cut_short: CutShort,
    pub stats: Stats,
}

/// What a call cut short by a yielding backoff leaves for the next one.
#[derive(Default)]
struct CutShort {
    head: Head,
    one_by_one: bool,
    /// The head event's final failure, whose park was cut short.
    park: Option<Failure>,
    /// Waits for a schema that cannot be had yet (see
    /// [`Dispatcher::hold_for_host`]).
    host_waits: u32,
}

impl Dispatcher {
    /// Wraps an instance already made (and `init`-ed) from `prepared`.
    pub fn new(prepared: Arc<Prepared>, instance: Instance) -> Self {
        Dispatcher {
            prepared,
            instance: Some(instance),
            slot: 0,
            lane: None,
            holding: false,
            live: None,
            cut_short: CutShort::default(),
            stats: Stats::default(),
        }
    }

    /// A dispatcher for `slot` (a partition) of the plugin `live` serves,
    /// whose instance is made on first delivery, on the thread that
    /// delivers.
    pub fn lazy(live: Arc<LivePlugin>, slot: i32) -> Self {
        Dispatcher {
            prepared: live.current(),
            instance: None,
            slot,
            lane: None,
            holding: false,
            live: Some(live),
            cut_short: CutShort::default(),
            stats: Stats::default(),
        }
    }

    /// [`Dispatcher::lazy`] for lane `index` of `of` of the partition: its
    /// instances are told which (see [`Prepared::instantiate_lane`]).
    pub fn lazy_lane(live: Arc<LivePlugin>, slot: i32, index: usize, of: usize) -> Self {
        Dispatcher {
            lane: Some((index, of)),
            ..Self::lazy(live, slot)
        }
    }

    pub fn prepared(&self) -> &Arc<Prepared> {
        &self.prepared
    }

    /// The partition it serves.
    pub fn slot(&self) -> i32 {
        self.slot
    }

    /// The shadow running beside the plugin, if one does.
    pub fn shadow(&self) -> Option<Arc<crate::shadow::Shadow>> {
        self.live.as_ref().and_then(|l| l.shadow())
    }

    /// What the instance did while tapped since the last take.
    pub fn take_effects(&mut self) -> crate::runtime::observer::Effects {
        self.instance
            .as_ref()
            .map(Instance::take_effects)
            .unwrap_or_default()
    }

    /// Moves to the version the plugin serves now, if it is another one:
    /// the next call goes to a fresh instance of it. Called between
    /// batches, and before every attempt within one (the events already
    /// settled stay with the version that settled them). True if the
    /// version changed.
    pub fn follow(&mut self) -> bool {
        let Some(current) = self.live.as_ref().map(|l| l.current()) else {
            return false;
        };
        if Arc::ptr_eq(&self.prepared, &current) {
            return false;
        }
        self.prepared = current;
        self.instance = None;
        true
    }

    /// Delivers `batch` and returns one outcome per event, in order; the
    /// failures are only returned, parked nowhere. If `stop` is raised
    /// while the partition holds, returns early with the outcomes of the
    /// events settled so far: the rest are not settled.
    pub fn deliver(&mut self, batch: &[wit::Event], stop: &Shutdown) -> Vec<Outcome> {
        self.deliver_parking(batch, stop, &mut |_, _, _| true).0
    }

    /// [`Dispatcher::deliver`], each final failure handed to `park` the
    /// moment it is final, before any later event is delivered.
    pub fn deliver_parking(
        &mut self,
        batch: &[wit::Event],
        stop: &Shutdown,
        park: &mut Park<'_>,
    ) -> (Vec<Outcome>, Ended) {
        let mut outcomes = Vec::with_capacity(batch.len());
        let cut_short = std::mem::take(&mut self.cut_short);
        let mut head = cut_short.head;
        // Events go one at a time to find the one that fails.
        let mut one_by_one = cut_short.one_by_one;
        let mut pending_park = cut_short.park.filter(|_| !stop.is_requested());
        self.cut_short.host_waits = cut_short.host_waits;
        // The handled prefix of a call whose effects were dropped: it is
        // delivered again on its own.
        let mut prefix: Option<usize> = None;
        // The shape the events were made in.
        let shape = (self.prepared.spec.payload, self.prepared.spec.extensions);
        let mut ended = Ended::Settled;

        while outcomes.len() < batch.len() {
            if self.follow() {
                // A new version: its own attempts, the same hold clock.
                head.attempts = 0;
                if (self.prepared.spec.payload, self.prepared.spec.extensions) != shape {
                    ended = Ended::Reshaped;
                    break;
                }
            }
            if let Some(failure) = pending_park.take() {
                // The head event failed for good before a backoff of its
                // park: parked now, not delivered again.
                if !self.park_failure(&mut outcomes, &mut head, failure, park) {
                    ended = Ended::Stopped;
                    break;
                }
                continue;
            }
            let start = outcomes.len();
            let end = match prefix.take() {
                Some(n) => start + n,
                None if one_by_one => start + 1,
                None => batch.len(),
            };
            let slice = &batch[start..end];

            let batch_seconds = self
                .prepared
                .metrics()
                .batch_seconds
                .with_label_values(&[&*self.prepared.name]);
            let disposition = match self.instance() {
                Ok(instance) => {
                    let began = Instant::now();
                    let d = instance.handle(slice, stop);
                    batch_seconds.observe(began.elapsed().as_secs_f64());
                    d
                }
                Err(e) => {
                    // Not the event's fault: hold until an instance starts.
                    // An `init` that says it will work later waits for what
                    // the plugin needs; any other failure is the host's.
                    let cause = match e {
                        CallError::InitRetry(_) => Cause::Sink,
                        _ => Cause::Host,
                    };
                    let reason = format!("a plugin instance cannot start: {e}");
                    if !self.wait(cause, &reason, &mut head, None, stop) {
                        ended = Ended::Stopped;
                        break;
                    }
                    continue;
                }
            };

            let failure = match disposition {
                Disposition::All => {
                    self.handled(&mut outcomes, slice.len());
                    head = Head::default();
                    continue;
                }
                Disposition::Stopped {
                    handled,
                    failure,
                    dropped,
                    state_dropped,
                } => {
                    if state_dropped {
                        self.rebuild("state-dropped");
                    }
                    if handled > 0 {
                        if dropped {
                            prefix = Some(handled);
                            continue;
                        }
                        self.handled(&mut outcomes, handled);
                        head = Head::default();
                    }
                    failure
                }
                Disposition::HostFailed(reason) => {
                    // The state store failed: the host's fault, never the
                    // event's. The call's writes are lost, so its memory is
                    // ahead of the store: rebuild.
                    self.rebuild("state-unsaved");
                    if !self.wait(Cause::Host, &reason, &mut head, None, stop) {
                        ended = Ended::Stopped;
                        break;
                    }
                    continue;
                }
                poisoned_or_broken => {
                    let reason = poisoned_or_broken.to_string();
                    let class = match poisoned_or_broken {
                        Disposition::Poisoned(Poison::Timeout(_)) => FailureClass::Timeout,
                        Disposition::Poisoned(Poison::Budget(_)) => FailureClass::Budget,
                        Disposition::Contract(_) => {
                            self.prepared.mark_faulty(&reason);
                            FailureClass::Contract
                        }
                        _ => FailureClass::Trap,
                    };
                    self.rebuild(class.as_str());
                    tracing::warn!(
                        plugin = &*self.prepared.name,
                        partition = self.slot,
                        "{reason}"
                    );
                    if slice.len() > 1 {
                        // Which event made it fail is not known yet: no
                        // attempt counts against the head; find it alone.
                        one_by_one = true;
                        continue;
                    }
                    if !self.attempt_failed(&mut outcomes, &mut head, class, reason, stop, park) {
                        ended = Ended::Stopped;
                        break;
                    }
                    continue;
                }
            };

            let head_alone = outcomes.len() + 1 == end;
            match failure {
                PluginFailure::Reject(reason) => {
                    let class = FailureClass::Rejected;
                    if !self.park(&mut outcomes, &mut head, class, reason, park) {
                        ended = Ended::Stopped;
                        break;
                    }
                }
                PluginFailure::Retry(info) => {
                    let held = *head.held_since.get_or_insert_with(Instant::now);
                    head.retries += 1;
                    let timed_out = self
                        .prepared
                        .spec
                        .limits
                        .retry_timeout
                        .is_some_and(|timeout| held.elapsed() >= timeout);
                    if !head_alone && (timed_out || head.retries >= ISOLATE_AFTER_RETRIES) {
                        // The batch as a whole keeps failing: find the event
                        // that does, one at a time, each with its own clock.
                        one_by_one = true;
                        if timed_out {
                            head = Head::default();
                            continue;
                        }
                    } else if timed_out {
                        let reason = format!(
                            "{} (retried for {:.0?}, the plugin's retry_timeout)",
                            info.reason,
                            held.elapsed()
                        );
                        let class = FailureClass::RetriesExhausted;
                        if !self.park(&mut outcomes, &mut head, class, reason, park) {
                            ended = Ended::Stopped;
                            break;
                        }
                        continue;
                    }
                    let asked = info.after_ms.map(|ms| Duration::from_millis(ms.into()));
                    if !self.wait(Cause::Sink, &info.reason, &mut head, asked, stop) {
                        ended = Ended::Stopped;
                        break;
                    }
                }
            }
        }
        if ended == Ended::Stopped && !stop.is_requested() {
            // A yielding backoff: the partition still holds, and the next
            // call goes on with this head.
            self.cut_short.head = head;
            self.cut_short.one_by_one = one_by_one;
        } else {
            self.release();
        }
        (outcomes, ended)
    }

    /// The first `n` events not yet settled are handled.
    fn handled(&mut self, outcomes: &mut Vec<Outcome>, n: usize) {
        outcomes.extend(std::iter::repeat_n(Outcome::Handled, n));
        self.stats.handled += n as u64;
        self.prepared
            .handled
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.prepared
            .metrics()
            .events
            .with_label_values(&[&*self.prepared.name, "handled"])
            .inc_by(n as u64);
        self.release();
    }

    /// The head event is final: to the dead-letter path, with the number
    /// of deliveries it got (`head` counts those that failed before), and
    /// parked by `park` before anything else happens. False if the park
    /// was cut short: the event is not settled.
    fn park(
        &mut self,
        outcomes: &mut Vec<Outcome>,
        head: &mut Head,
        class: FailureClass,
        reason: String,
        park: &mut Park<'_>,
    ) -> bool {
        let attempts = match class {
            FailureClass::Rejected => head.attempts + head.retries + 1,
            _ => head.attempts + head.retries,
        };
        let failure = Failure::new(class, &reason, attempts);
        self.park_failure(outcomes, head, failure, park)
    }

    /// Parks the head event with `failure`; false if the park was cut
    /// short (kept, so a call after a yielding backoff parks it then).
    fn park_failure(
        &mut self,
        outcomes: &mut Vec<Outcome>,
        head: &mut Head,
        failure: Failure,
        park: &mut Park<'_>,
    ) -> bool {
        if !park(outcomes.len(), &failure, &self.prepared) {
            self.cut_short.park = Some(failure);
            return false;
        }
        let class = failure.class;
        if class != FailureClass::RetriesExhausted {
            // The plugin's own failure, not its sink's: what a rollback
            // compares.
            self.prepared
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        outcomes.push(Outcome::DeadLetter(failure));
        self.stats.dead_lettered += 1;
        *head = Head::default();
        self.release();
        true
    }

    /// The plugin failed on the head event itself (trap, timeout, broken
    /// contract): park it once it has failed `max_attempts` times, else
    /// back off and try again. False if `stop` came meanwhile.
    fn attempt_failed(
        &mut self,
        outcomes: &mut Vec<Outcome>,
        head: &mut Head,
        class: FailureClass,
        reason: String,
        stop: &Shutdown,
        park: &mut Park<'_>,
    ) -> bool {
        head.attempts += 1;
        if head.attempts >= self.prepared.spec.limits.max_attempts {
            return self.park(outcomes, head, class, reason, park);
        }
        self.stats.retried += 1;
        HostEvent::Retried {
            plugin: &self.prepared.name,
            partition: self.slot,
            attempt: head.attempts,
            reason: &reason,
        }
        .emit(self.prepared.metrics());
        // The partition makes no progress meanwhile: it shows as waiting.
        self.holding = true;
        let max = self.prepared.spec.limits.max_attempts;
        self.prepared.metrics().holds.hold(
            &self.prepared.name,
            self.slot,
            Cause::Plugin,
            &format!("attempt {} of {max} failed: {reason}", head.attempts),
        );
        stop.sleep(backoff(&self.prepared.spec.limits, head.attempts))
    }

    /// Holds the partition: records why, backs off (a delay the plugin
    /// asked for is honoured up to `backoff_max`) and returns false if
    /// `stop` came meanwhile.
    fn wait(
        &mut self,
        cause: Cause,
        reason: &str,
        head: &mut Head,
        asked: Option<Duration>,
        stop: &Shutdown,
    ) -> bool {
        let plugin = &*self.prepared.name;
        let metrics = self.prepared.metrics();
        head.waits += 1;
        self.holding = true;
        if metrics.holds.hold(plugin, self.slot, cause, reason) {
            tracing::warn!(
                plugin,
                partition = self.slot,
                "waiting for the {}: {reason}; the partition holds and retries",
                match cause {
                    Cause::Sink => "plugin's sink",
                    Cause::Host => "host",
                    Cause::Plugin | Cause::Call => "plugin",
                }
            );
        } else {
            tracing::debug!(plugin, partition = self.slot, "still waiting: {reason}");
        }
        self.stats.retried += 1;
        metrics.retries.with_label_values(&[plugin]).inc();
        let limits = &self.prepared.spec.limits;
        let delay = match asked {
            Some(asked) => asked.min(limits.backoff_max),
            None => backoff(limits, head.waits),
        };
        // The next attempt follows a new version, if one came meanwhile.
        stop.sleep(delay)
    }

    /// The host cannot read the partition's next record yet (the schema it
    /// was written with cannot be fetched): hold, as the host's failure,
    /// and back off. False if `stop` came meanwhile (or a yielding
    /// backoff returned: the next call goes on with the next step).
    pub fn hold_for_host(&mut self, reason: &str, stop: &Shutdown) -> bool {
        let mut head = Head {
            waits: self.cut_short.host_waits,
            ..Head::default()
        };
        let go_on = self.wait(Cause::Host, reason, &mut head, None, stop);
        self.cut_short.host_waits = head.waits;
        go_on
    }

    /// Ends the hold for the host (a schema it could not read) if `over`
    /// and there is one.
    pub fn host_hold_over(&mut self, over: bool) {
        if over && self.cut_short.host_waits > 0 {
            self.cut_short.host_waits = 0;
            self.release();
        }
    }

    /// The partition goes on: end its hold, if it had one.
    pub fn release(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        if let Some(lasted) = self
            .prepared
            .metrics()
            .holds
            .release(&self.prepared.name, self.slot)
        {
            tracing::info!(
                plugin = &*self.prepared.name,
                partition = self.slot,
                "resumed after waiting {lasted:.1?}"
            );
        }
    }

    /// Discards the instance; the next call gets a fresh one.
    fn rebuild(&mut self, reason: &str) {
        HostEvent::InstanceRebuilt {
            plugin: &self.prepared.name,
            partition: self.slot,
            reason,
        }
        .emit(self.prepared.metrics());
        self.instance = None;
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
            self.instance = Some(self.prepared.instantiate_lane(Some(self.slot), self.lane)?);
        }
        Ok(self.instance.as_mut().expect("just set"))
    }
}

/// What the head event (the first not yet settled) went through.
#[derive(Default)]
struct Head {
    /// Traps, timeouts and broken contracts: counted against `max_attempts`.
    attempts: u32,
    /// `retry` answers.
    retries: u32,
    /// Waits for a sink or the host: the backoff step.
    waits: u32,
    /// When the first `retry` answer came: `retry_timeout` counts from it.
    held_since: Option<Instant>,
}

/// The plugin's backoff before its `attempt`-th retry (from 1).
pub fn backoff(limits: &crate::config::Limits, attempt: u32) -> Duration {
    jittered_backoff(limits.backoff_initial, limits.backoff_max, attempt)
}

/// Exponential backoff with "equal jitter": the step doubles from `initial`
/// up to `max`, half of it fixed, half random, so retries of many
/// partitions do not hit a recovering service in lock-step.
pub fn jittered_backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let step = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
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
