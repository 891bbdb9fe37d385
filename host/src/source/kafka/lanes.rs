//! Per-key concurrency: a plugin whose manifest says `concurrency = N` has
//! up to N batches of one partition in flight at once, one per *lane*.
//!
//! The partition's worker takes messages off the partition's queue and
//! gives each to the lane of its key (a hash of the key, so every event of
//! one booking goes to one lane, in order); each lane is a job of the
//! pool with its own plugin instance, and settles its messages in batches
//! as a partition without lanes does: holds, retries and dead letters
//! keep their meaning, for the keys of that lane. A lane that holds keeps
//! its messages and takes the new ones of its keys behind them, up to
//! [`LANE_BACKLOG`] batches; then the worker stops taking from the queue
//! (the whole partition waits) until it has room again.
//!
//! The partition's offset is committed up to the first message no lane
//! has settled, so it never passes an event that is not final; what lanes
//! settled past it goes with the commit (see [`super::ahead`]), and the
//! partition's next owner skips those events instead of delivering them
//! again. Only after a crash, or past what the commit's metadata holds,
//! does a plugin see them twice, so plugins that opt in must be idempotent
//! as every plugin is (crm-sync upserts by booking id and version).

use std::collections::{BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};

use super::ahead::{self, Ahead, Skip};
use super::batch::Settle;
use crate::catalog::LivePlugin;
use crate::dispatch::Dispatcher;
use crate::locks::Lock;
use crate::pool::{Handle, Job, Next, Pool};
use crate::shutdown::Shutdown;

/// How many batches a lane may hold waiting before the partition stops
/// taking messages.
pub const LANE_BACKLOG: usize = 2;

/// How often a lane of a paused plugin looks whether it was resumed.
const PAUSED_CHECK: Duration = Duration::from_millis(100);

/// The offsets taken off the partition's queue and not settled yet.
#[derive(Default)]
pub struct InFlight(Mutex<BTreeSet<i64>>);

impl InFlight {
    fn first(&self) -> Option<i64> {
        self.0.locked().first().copied()
    }
}

/// The lanes of one partition.
pub struct Lanes {
    lanes: Vec<Lane>,
    in_flight: Arc<InFlight>,
    /// The offset after the last message taken; none before the first.
    taken_upto: Option<i64>,
    /// The first offset not settled, and what was settled past it, as
    /// last reported.
    reported: Option<i64>,
    reported_ahead: Ahead,
    /// Offsets not taken yet that the partition's previous owner settled:
    /// taken off the queue without being delivered.
    skip: Skip,
    /// A message taken whose lane was full: the next one given out.
    waiting: Option<OwnedMessage>,
}

struct Lane {
    job: Arc<LaneJob>,
    handle: Arc<Handle>,
}

/// What the lanes of a partition share with its worker.
pub struct LaneSetup {
    pub name: Arc<str>,
    pub partition: i32,
    pub live: Arc<LivePlugin>,
    pub settle: Settle,
    pub paused: Arc<AtomicBool>,
    /// Set if a lane panicked: the worker counts as dead.
    pub dead: Arc<AtomicBool>,
    /// Wakes the partition's worker (a lane settled something).
    pub worker: Arc<OnceLock<Weak<Handle>>>,
}

impl Lanes {
    /// `n` lanes, each a job of `pool` with its own instance; `skip`: the
    /// offsets a previous owner settled past the committed one.
    pub fn new(n: usize, setup: &LaneSetup, pool: &Pool, skip: Skip) -> Lanes {
        let in_flight = Arc::new(InFlight::default());
        let lanes = (0..n)
            .map(|index| {
                let job = Arc::new(LaneJob {
                    name: format!("{}-p{}-lane{index}", setup.name, setup.partition),
                    plugin: setup.name.clone(),
                    partition: setup.partition,
                    dispatcher: Mutex::new(Some(Dispatcher::lazy_lane(
                        setup.live.clone(),
                        setup.partition,
                        index,
                        n,
                    ))),
                    inbox: Mutex::new(VecDeque::new()),
                    in_flight: in_flight.clone(),
                    stop: Shutdown::yielding(),
                    settle: setup.settle.clone(),
                    paused: setup.paused.clone(),
                    dead: setup.dead.clone(),
                    worker: setup.worker.clone(),
                });
                let as_job: Arc<dyn Job> = job.clone();
                let handle = pool.add(Arc::downgrade(&as_job));
                Lane { job, handle }
            })
            .collect();
        Lanes {
            lanes,
            in_flight,
            taken_upto: None,
            reported: None,
            reported_ahead: Ahead::new(),
            skip,
            waiting: None,
        }
    }

    /// Gives the lanes messages from `take` (the partition's queue) until
    /// `most` are taken, the queue is empty or a lane is full. Returns how
    /// many were taken.
    pub fn fill(
        &mut self,
        batch_size: usize,
        most: usize,
        mut take: impl FnMut() -> Option<OwnedMessage>,
    ) -> usize {
        let n = self.lanes.len();
        let mut woken = vec![false; n];
        let mut taken = 0;
        while taken < most {
            let Some(message) = self.waiting.take().or_else(&mut take) else {
                break;
            };
            if self.skip.covers(message.offset()) {
                self.taken_upto = Some(message.offset() + 1);
                self.reported.get_or_insert(message.offset());
                taken += 1;
                continue;
            }
            let lane = lane_of(message.key(), n);
            let mut inbox = self.lanes[lane].job.inbox.locked();
            if inbox.len() >= LANE_BACKLOG * batch_size {
                drop(inbox);
                self.waiting = Some(message);
                break;
            }
            self.in_flight.0.locked().insert(message.offset());
            self.taken_upto = Some(message.offset() + 1);
            // Nothing before the first message taken is this worker's.
            self.reported.get_or_insert(message.offset());
            inbox.push_back(message);
            woken[lane] = true;
            taken += 1;
        }
        for (lane, woken) in self.lanes.iter().zip(woken) {
            if woken {
                lane.handle.wake();
            }
        }
        taken
    }

    /// How many lanes there are.
    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    /// Whether a message waits for room in its lane.
    pub fn is_full(&self) -> bool {
        self.waiting.is_some()
    }

    /// The first offset not settled and the offsets settled past it, if
    /// either changed since the last call: everything before that offset
    /// is final.
    pub fn progress(&mut self) -> Option<(i64, Ahead)> {
        let (first, ahead) = {
            let in_flight = self.in_flight.0.locked();
            let first = in_flight.first().copied().or(self.taken_upto)?;
            let upto = self.taken_upto.unwrap_or(first);
            let mut ahead = Ahead::new();
            let mut from = first;
            for &offset in in_flight.range(first..upto) {
                if offset > from {
                    ahead.push((from, offset - 1));
                }
                from = offset + 1;
            }
            if upto > from {
                ahead.push((from, upto - 1));
            }
            ahead.extend(self.skip.from(upto));
            (first, ahead::merge(ahead))
        };
        let unchanged = self.reported == Some(first) && self.reported_ahead == ahead;
        if unchanged || self.reported.is_some_and(|r| r > first) {
            return None;
        }
        self.reported = Some(first);
        self.reported_ahead.clone_from(&ahead);
        Some((first, ahead))
    }

    /// The first offset taken and not settled (or the next to take).
    pub fn unsettled_from(&self) -> Option<i64> {
        self.in_flight.first().or(self.taken_upto)
    }

    /// Stops every lane after its batch in flight (a hold ends at once)
    /// and waits for them.
    pub fn stop(&self) {
        for lane in &self.lanes {
            lane.job.stop.request();
            lane.handle.wake_now();
        }
        for lane in &self.lanes {
            if lane.handle.finish_unless_running() {
                lane.job.finish();
            } else {
                lane.handle.wait_done();
            }
        }
    }
}

/// The lane of a message with `key`: messages without a key share lane 0.
fn lane_of(key: Option<&[u8]>, lanes: usize) -> usize {
    let Some(key) = key else { return 0 };
    // SipHash with fixed keys: the same key, the same lane, in every host.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

/// One lane: its instance and the messages given to it, in order.
struct LaneJob {
    name: String,
    plugin: Arc<str>,
    partition: i32,
    /// None once finished.
    dispatcher: Mutex<Option<Dispatcher>>,
    inbox: Mutex<VecDeque<OwnedMessage>>,
    in_flight: Arc<InFlight>,
    /// Yielding: a hold returns and is resumed by a timer.
    stop: Shutdown,
    settle: Settle,
    paused: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    worker: Arc<OnceLock<Weak<Handle>>>,
}

impl LaneJob {
    fn wake_worker(&self) {
        if let Some(handle) = self.worker.get().and_then(Weak::upgrade) {
            handle.wake();
        }
    }
}

impl Job for LaneJob {
    fn step(&self) -> Next {
        let mut slot = self.dispatcher.locked();
        let Some(dispatcher) = slot.as_mut() else {
            return Next::Done;
        };
        if self.stop.is_requested() {
            *slot = None;
            return Next::Done;
        }
        if self.paused.load(Ordering::Relaxed) {
            return Next::At(Instant::now() + PAUSED_CHECK);
        }
        dispatcher.follow();
        let batch_size = dispatcher.prepared().spec.limits.batch_size;
        let batch: Vec<OwnedMessage> = {
            let mut inbox = self.inbox.locked();
            let n = inbox.len().min(batch_size);
            inbox.drain(..n).collect()
        };
        if batch.is_empty() {
            return Next::Idle;
        }
        super::panic_hook::check(&self.plugin, self.partition, &batch);
        let done = self.settle.owned(dispatcher, &batch, &self.stop);
        {
            let mut in_flight = self.in_flight.0.locked();
            for message in &batch[..done] {
                in_flight.remove(&message.offset());
            }
        }
        if done > 0 {
            self.wake_worker();
        }
        if done < batch.len() {
            // Back in front, in order: the lane's keys wait behind them.
            let mut inbox = self.inbox.locked();
            for message in batch.into_iter().skip(done).rev() {
                inbox.push_front(message);
            }
            drop(inbox);
            return match self.stop.take_resume_at() {
                Some(at) if !self.stop.is_requested() => Next::At(at),
                _ => {
                    *slot = None;
                    Next::Done
                }
            };
        }
        if self.inbox.locked().is_empty() {
            Next::Idle
        } else {
            Next::Again
        }
    }

    fn died(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.finish();
        self.wake_worker();
    }

    fn finish(&self) {
        let dispatcher = self.dispatcher.locked().take();
        drop(dispatcher);
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_one_lane_and_keys_spread() {
        let mut used = BTreeSet::new();
        for i in 0..200 {
            let key = format!("booking-{i}");
            let lane = lane_of(Some(key.as_bytes()), 4);
            assert_eq!(lane, lane_of(Some(key.as_bytes()), 4));
            used.insert(lane);
        }
        assert_eq!(used.len(), 4, "200 keys use every lane");
        assert_eq!(lane_of(None, 4), 0);
    }
}
