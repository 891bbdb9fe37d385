//! A partition worker: one job of the host's worker pool (see
//! [`crate::pool`]) and one plugin instance per assigned partition, so
//! partitions are handled concurrently while each keeps its order, on as
//! many threads as the pool has, whatever the number of plugins and
//! partitions. It reads its partition's own librdkafka queue (split from
//! the consumer's), settles the messages in batches straight from
//! librdkafka's buffers and reports the last settled offset back; the
//! poll loop alone stores offsets and serves the group.
//!
//! The job is scheduled when its queue becomes non-empty (librdkafka's
//! callback) and takes one batch per step, so every partition gets its
//! turn. A partition that holds (a sink down, a backoff, a dead letter
//! not written yet) keeps its unsettled messages (copied out of
//! librdkafka's buffers then) and waits on a timer of the pool, not on a
//! thread: its token yields (see [`Shutdown::yielding`]).
//!
//! Flow control is librdkafka's: a worker that is busy (or holding) does
//! not read its queue, and the fetcher stops fetching a partition whose
//! queue holds its share of the fetch budget. Other partitions keep
//! flowing.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};

use super::ahead::{self, Ahead, Skip};
use super::batch::Settle;
use super::lanes::{LaneSetup, Lanes};
use super::panic_hook;
use crate::catalog::LivePlugin;
use crate::commit::Settled;
use crate::decode::DecodeError;
use crate::dispatch::Dispatcher;
use crate::event::BookingEvent;
use crate::hold::ALL_PARTITIONS;
use crate::locks::Lock;
use crate::pool::{Handle, Job, Next, Pool};
use crate::runtime::convert::Envelope;
use crate::shutdown::Shutdown;

/// Whether the brokers answer, shared by the poll loop (which learns of
/// trouble) and the workers (whose messages prove they answer again).
pub struct Broker {
    plugin: String,
    down: AtomicBool,
}

impl Broker {
    pub fn new(plugin: &str) -> Self {
        Broker {
            plugin: plugin.to_string(),
            down: AtomicBool::new(false),
        }
    }

    /// The brokers cannot be reached (the consumer holds meanwhile).
    pub fn lost(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// A message or statistics came: the brokers answer. Called per batch,
    /// so it only reads the flag unless they were down.
    pub fn answers(&self, live: &LivePlugin) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::SeqCst) {
            let metrics = live.current().metrics().clone();
            if let Some(lasted) = metrics.holds.release(&self.plugin, ALL_PARTITIONS) {
                tracing::info!(
                    plugin = self.plugin,
                    "the broker answers again after {lasted:.1?}"
                );
            }
        }
    }
}

/// What a worker needs besides its partition.
#[derive(Clone)]
pub struct WorkerSetup {
    /// The plugin version to serve, read again before every batch.
    pub live: Arc<LivePlugin>,
    /// How a batch of the partition is settled (decode, dispatch, dead
    /// letters): the pipeline's stage, handed in by whoever starts the
    /// consumer.
    pub settle: Settle,
    pub settled: Sender<Settled>,
    pub broker: Arc<Broker>,
    /// Set while an operator has the plugin paused: no batch is taken.
    pub paused: Arc<AtomicBool>,
    /// The threads that run the batches.
    pub pool: Pool,
}

/// No offset known yet.
const UNKNOWN: i64 = -1;

/// How often a paused partition looks whether it was resumed.
const PAUSED_CHECK: Duration = Duration::from_millis(100);

/// The poll loop's handle on a running worker.
pub struct Worker {
    /// The first offset the worker took and has not settled: where a
    /// replacement must read again from if it dies.
    next: Arc<AtomicI64>,
    /// The offsets settled past `next` (by lanes, or by a previous owner
    /// and not reached yet), as last reported.
    ahead: Arc<Mutex<Ahead>>,
    /// How many lanes it has; 1 without.
    lanes: usize,
    stop: Shutdown,
    dead: Arc<AtomicBool>,
    job: Arc<dyn Job>,
    handle: Arc<Handle>,
}

impl Worker {
    /// Starts the worker of `partition`, reading `queue`, the partition's
    /// own queue of fetched messages. The offsets in `skip` were settled
    /// by a previous owner and are not delivered again.
    pub fn spawn<C: ConsumerContext + 'static>(
        setup: WorkerSetup,
        partition: i32,
        mut queue: PartitionQueue<C>,
        skip: Ahead,
    ) -> Worker {
        let next = Arc::new(AtomicI64::new(UNKNOWN));
        let ahead = Arc::new(Mutex::new(skip.clone()));
        let skip = Skip::new(skip);
        let stop = Shutdown::yielding();
        let dead = Arc::new(AtomicBool::new(false));
        // The queue wakes its job; the job is known once the pool has it.
        let waker: Arc<OnceLock<Weak<Handle>>> = Arc::new(OnceLock::new());
        {
            let waker = waker.clone();
            // librdkafka calls this with the queue locked, when a message
            // comes to it empty: only scheduling happens here.
            queue.set_nonempty_callback(move || {
                if let Some(handle) = waker.get().and_then(Weak::upgrade) {
                    handle.wake();
                }
            });
        }
        let pool = setup.pool.clone();
        let name = setup.live.current().name.clone();
        // Read when the worker starts: a reload that changes it replaces
        // the worker (`Partitions::tend`).
        let concurrency = setup.live.current().spec.concurrency.max(1);
        let mut skip = Some(skip);
        let lanes = (concurrency > 1).then(|| {
            let lane_setup = LaneSetup {
                name: name.clone(),
                partition,
                live: setup.live.clone(),
                settle: setup.settle.clone(),
                paused: setup.paused.clone(),
                dead: dead.clone(),
                worker: waker.clone(),
            };
            Lanes::new(
                concurrency,
                &lane_setup,
                &pool,
                skip.take().unwrap_or_default(),
            )
        });
        let job: Arc<dyn Job> = Arc::new(PartitionJob {
            name,
            partition,
            next: next.clone(),
            ahead: ahead.clone(),
            stop: stop.clone(),
            dead: dead.clone(),
            state: Mutex::new(Some(State {
                dispatcher: Dispatcher::lazy(setup.live.clone(), partition),
                queue,
                kept: Vec::new(),
                kept_upto: UNKNOWN,
                warm: false,
                lanes,
                skip: skip.unwrap_or_default(),
            })),
            setup,
        });
        let handle = pool.add(Arc::downgrade(&job));
        let _ = waker.set(Arc::downgrade(&handle));
        Worker {
            next,
            ahead,
            lanes: concurrency,
            stop,
            dead,
            job,
            handle,
        }
    }

    /// The first offset taken and not settled, if the worker took any.
    pub fn unsettled_from(&self) -> Option<i64> {
        Some(self.next.load(Ordering::SeqCst)).filter(|&o| o != UNKNOWN)
    }

    /// What was settled past [`Worker::unsettled_from`], as last
    /// reported: a replacement does not deliver it again.
    pub fn settled_ahead(&self) -> Ahead {
        self.ahead.locked().clone()
    }

    /// How many lanes it has (1 without): the plugin's `concurrency` when
    /// it started.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Whether the worker ended without being asked to: it panicked.
    pub fn died(&self) -> bool {
        self.dead.load(Ordering::SeqCst) && !self.stop.is_requested()
    }

    /// Schedules the worker as if its queue had said it holds messages: a
    /// wake librdkafka did not give (its callback fires only when a queue
    /// goes from empty to not) costs one look at the queue.
    pub fn nudge(&self) {
        self.handle.wake();
    }

    /// Asks the worker to stop after its batch in flight, without waiting.
    pub fn request_stop(&self) {
        self.stop.request();
        self.handle.wake_now();
    }

    /// Lets the batch in flight finish (a hold ends at once, its batch
    /// left unsettled) and waits. Messages still queued are not settled:
    /// the partition's next owner gets them again from the last commit.
    pub fn stop(self) {
        self.halt();
    }

    /// [`Worker::stop`], leaving the handle (a dead worker is halted
    /// before its replacement takes its queue).
    pub fn halt(&self) {
        self.request_stop();
        if self.handle.finish_unless_running() {
            // No worker runs it, and none will: its instance and queue go
            // now.
            self.job.finish();
        } else {
            self.handle.wait_done();
        }
    }
}

/// One partition of one plugin, as a job of the pool.
struct PartitionJob<C: ConsumerContext> {
    name: Arc<str>,
    partition: i32,
    setup: WorkerSetup,
    next: Arc<AtomicI64>,
    ahead: Arc<Mutex<Ahead>>,
    /// Yielding: a hold returns and is resumed by a timer.
    stop: Shutdown,
    dead: Arc<AtomicBool>,
    /// None once finished.
    state: Mutex<Option<State<C>>>,
}

struct State<C: ConsumerContext> {
    dispatcher: Dispatcher,
    queue: PartitionQueue<C>,
    /// Messages taken and not settled while the partition holds, in order.
    kept: Vec<OwnedMessage>,
    /// The last offset taken with them: past the last one kept if the
    /// messages after it were settled before (see `skip`).
    kept_upto: i64,
    /// Whether the instance was made (before the first batch, so it
    /// reports its partition's state even before events come).
    warm: bool,
    /// With `concurrency` > 1: the lanes the messages go to (see
    /// [`super::lanes`]); the instance above then stays unused.
    lanes: Option<Lanes>,
    /// Without lanes: what a previous owner settled ahead (the lanes keep
    /// their own).
    skip: Skip,
}

impl<C: ConsumerContext + 'static> Job for PartitionJob<C> {
    fn step(&self) -> Next {
        let mut slot = self.state.locked();
        let Some(state) = slot.as_mut() else {
            return Next::Done;
        };
        if self.stop.is_requested() {
            self.close(&mut slot);
            return Next::Done;
        }
        // Paused: the batch before was settled; take none until resumed.
        if self.setup.paused.load(Ordering::Relaxed) {
            return Next::At(Instant::now() + PAUSED_CHECK);
        }
        if state.lanes.is_some() {
            return self.step_lanes(&mut slot);
        }
        let State {
            dispatcher,
            queue,
            kept,
            kept_upto,
            warm,
            skip,
            ..
        } = state;
        if !std::mem::replace(warm, true) {
            dispatcher.warm();
        }
        // A reload swaps the version between batches, never within one.
        dispatcher.follow();
        if !kept.is_empty() {
            let done = self.setup.settle.owned(dispatcher, kept, &self.stop);
            let upto = if done == kept.len() {
                (*kept_upto).max(kept[done - 1].offset())
            } else {
                kept.get(done.wrapping_sub(1))
                    .map_or(UNKNOWN, Message::offset)
            };
            if upto != UNKNOWN && !self.report(upto, skip) {
                self.close(&mut slot);
                return Next::Done;
            }
            kept.drain(..done);
            if !kept.is_empty() {
                return self.cut_short(&mut *slot);
            }
        }
        let batch_size = dispatcher.prepared().spec.limits.batch_size;
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(batch_size.min(1024));
        while batch.len() < batch_size {
            match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => partition_error(&self.setup.live, self.partition, &e),
                None => break,
            }
        }
        if batch.is_empty() {
            return Next::Idle;
        }
        let full = batch.len() == batch_size;
        let last = batch[batch.len() - 1].offset();
        if !skip.is_empty() {
            // Settled before: passed over, and reported with what comes
            // before them.
            batch.retain(|m| !skip.covers(m.offset()));
            if batch.is_empty() {
                if !self.report(last, skip) {
                    self.close(&mut slot);
                    return Next::Done;
                }
                return if full { Next::Again } else { Next::Idle };
            }
        }
        let _ = self.next.compare_exchange(
            UNKNOWN,
            batch[0].offset(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.setup.broker.answers(&self.setup.live);
        panic_hook::check(&self.name, self.partition, &batch);
        let done = self.setup.settle.borrowed(dispatcher, &batch, &self.stop);
        // The settled prefix may be committed, even if the rest of the
        // batch is not settled (a stop came while it held).
        let upto = if done == batch.len() {
            last
        } else {
            batch
                .get(done.wrapping_sub(1))
                .map_or(UNKNOWN, Message::offset)
        };
        if upto != UNKNOWN && !self.report(upto, skip) {
            drop(batch);
            self.close(&mut slot);
            return Next::Done;
        }
        if done < batch.len() {
            // Kept, copied out of librdkafka's buffers: they are read from
            // the queue only once.
            let rest: Vec<OwnedMessage> = batch[done..].iter().map(|m| m.detach()).collect();
            drop(batch);
            *kept = rest;
            *kept_upto = last;
            return self.cut_short(&mut *slot);
        }
        if full { Next::Again } else { Next::Idle }
    }

    fn died(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.finish();
    }

    fn finish(&self) {
        // The queue goes back to librdkafka and the instance is dropped
        // here, not whenever the pool lets go of the job.
        self.close(&mut self.state.locked());
    }

    fn name(&self) -> String {
        format!("{}-p{}", self.name, self.partition)
    }
}

impl<C: ConsumerContext> PartitionJob<C> {
    /// Reports `offset` settled, with what a previous owner settled past
    /// it and is not reached yet; false if the poll loop is gone.
    fn report(&self, offset: i64, skip: &Skip) -> bool {
        self.next.store(offset + 1, Ordering::SeqCst);
        let mut metadata = String::new();
        if !skip.is_empty() {
            let ahead: Ahead = skip.from(offset + 1).collect();
            metadata = ahead::encode(offset + 1, &ahead);
            *self.ahead.locked() = ahead;
        }
        self.setup
            .settled
            .send(Settled {
                partition: self.partition,
                offset,
                metadata,
            })
            .is_ok()
    }

    /// Reports what lanes settled: everything before `first`, and `ahead`
    /// past it (kept in the commit's metadata).
    fn report_lanes(&self, first: i64, ahead: Ahead) -> bool {
        self.next.store(first, Ordering::SeqCst);
        let metadata = ahead::encode(first, &ahead);
        *self.ahead.locked() = ahead;
        self.setup
            .settled
            .send(Settled {
                partition: self.partition,
                offset: first - 1,
                metadata,
            })
            .is_ok()
    }

    /// The step ended with messages unsettled: a hold, resumed when its
    /// backoff ends, or a stop, which finishes the job.
    fn cut_short(&self, slot: &mut Option<State<C>>) -> Next {
        match self.stop.take_resume_at() {
            Some(at) if !self.stop.is_requested() => Next::At(at),
            _ => {
                self.close(slot);
                Next::Done
            }
        }
    }

    /// Finishes the job: its lanes stop (their batches in flight end) and
    /// what they settled is reported; the queue and instances go.
    fn close(&self, slot: &mut Option<State<C>>) {
        let Some(mut state) = slot.take() else {
            return;
        };
        if let Some(lanes) = state.lanes.as_mut() {
            lanes.stop();
            if let Some((first, ahead)) = lanes.progress() {
                self.report_lanes(first, ahead);
            }
            if let Some(from) = lanes.unsettled_from() {
                self.next.store(from, Ordering::SeqCst);
            }
        }
    }

    /// A step of a partition with lanes: reports what they settled and
    /// gives them more messages.
    fn step_lanes(&self, slot: &mut Option<State<C>>) -> Next {
        let state = slot.as_mut().expect("checked by the caller");
        let batch_size = self.setup.live.current().spec.limits.batch_size;
        let State { queue, lanes, .. } = state;
        let lanes = lanes.as_mut().expect("checked by the caller");
        if let Some((first, ahead)) = lanes.progress()
            && !self.report_lanes(first, ahead)
        {
            self.close(slot);
            return Next::Done;
        }
        let most = batch_size * lanes.count();
        let taken = lanes.fill(batch_size, most, || {
            loop {
                match queue.poll(Duration::ZERO) {
                    Some(Ok(message)) => return Some(message.detach()),
                    Some(Err(e)) => partition_error(&self.setup.live, self.partition, &e),
                    None => return None,
                }
            }
        });
        if let Some(from) = lanes.unsettled_from() {
            self.next.store(from, Ordering::SeqCst);
        }
        if taken > 0 {
            self.setup.broker.answers(&self.setup.live);
        }
        // Full: a lane that settles wakes this worker again.
        if taken == most && !lanes.is_full() {
            Next::Again
        } else {
            Next::Idle
        }
    }
}

/// An error librdkafka reports on one partition (the brokers' trouble comes
/// to the poll loop).
fn partition_error(live: &LivePlugin, partition: i32, error: &rdkafka::error::KafkaError) {
    tracing::warn!(
        plugin = &*live.current().name,
        partition,
        "Kafka reports on the partition: {error}"
    );
}

/// A Kafka message is a record: protobuf, with its topic, partition,
/// offset, key, timestamp and headers. So is one a redrive took out of a
/// dead-letter topic, made with its original topic, partition and offset.
macro_rules! kafka_record {
    ($($message:ty),*) => {$(
        impl crate::source::Record for $message {
            fn source(&self) -> &str {
                self.topic()
            }

            fn decode(
                &self,
                schemas: &crate::schema::Schemas,
                extensions: bool,
            ) -> Result<crate::schema::Decoded, DecodeError> {
                schemas.decode_protobuf(Message::payload(self).unwrap_or_default(), extensions)
            }

            fn envelope(&self, _event: &BookingEvent) -> Envelope {
                envelope_of(self)
            }

            fn payload(&self, _event: &BookingEvent) -> Vec<u8> {
                // The bytes as produced, not a re-encoding.
                Message::payload(self).unwrap_or_default().to_vec()
            }
        }
    )*};
}

kafka_record!(BorrowedMessage<'_>, rdkafka::message::OwnedMessage);

fn envelope_of<M: Message>(message: &M) -> Envelope {
    Envelope {
        source: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
