//! The partitions a consumer owns right now, each with its worker.
//!
//! On assign, each partition's queue is split off the consumer's before
//! librdkafka starts fetching it, so its messages go to its worker alone,
//! in order, and the poll loop never touches them. On revoke the workers of
//! the revoked partitions are stopped and what they settled is stored and
//! committed before the partitions go, so their next owner starts right
//! after the last settled event.

use crate::locks::Lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::ahead::{self, Ahead};
use super::client_log::ClientLog;
use super::worker::{Worker, WorkerSetup};
use crate::commit::{Offsets, Settled};
use crate::hold::{ALL_PARTITIONS, Cause};

/// One owned partition.
struct Owned {
    worker: Worker,
    /// Workers of this partition that died, for the restart backoff.
    deaths: u32,
    /// When the replacement of a dead worker may start.
    restart_at: Option<std::time::Instant>,
}

/// The consumer context: it owns the workers, so rebalance callbacks (which
/// librdkafka runs inside `poll`) can start and stop them and commit.
pub struct Partitions {
    topic: String,
    plugin: String,
    setup: WorkerSetup,
    /// The consumer this is the context of, to split partition queues
    /// off it (weak: the consumer owns its context).
    consumer: OnceLock<Weak<GroupConsumer>>,
    owned: Mutex<BTreeMap<i32, Owned>>,
    settled: Mutex<Receiver<Settled>>,
    /// Set at shutdown: the revoke that leaving the group brings keeps the
    /// gauges, which the final metrics still report.
    closing: AtomicBool,
    /// What was stored and committed: what a stop without the broker
    /// leaves uncommitted.
    offsets: Offsets,
    log: ClientLog,
    /// When the workers were last nudged (see [`Worker::nudge`]).
    nudged: Mutex<std::time::Instant>,
}

/// How often every worker looks at its queue whether or not librdkafka
/// said it has messages: a bound on how long a missed wake-up can delay a
/// partition.
const NUDGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub type GroupConsumer = BaseConsumer<Partitions>;

/// How long an assignment waits for the committed offsets' metadata.
const COMMITTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Each partition of `list` with a committed offset, and its metadata.
/// rust-rdkafka's `metadata()` panics on bytes that are not UTF-8, which
/// another tool may have committed: such metadata reads as none.
fn committed_metadata(list: &TopicPartitionList) -> Vec<(i32, i64, String)> {
    list.elements()
        .iter()
        .filter_map(|e| {
            let next = e.offset().to_raw().filter(|&o| o >= 0)?;
            let metadata =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.metadata().to_owned()))
                    .unwrap_or_default();
            Some((e.partition(), next, metadata))
        })
        .collect()
}

impl Partitions {
    pub fn new(topic: &str, plugin: &str, setup: WorkerSetup, settled: Receiver<Settled>) -> Self {
        Partitions {
            topic: topic.to_string(),
            plugin: plugin.to_string(),
            offsets: Offsets::default(),
            log: ClientLog::new(plugin.to_string()),
            setup,
            consumer: OnceLock::new(),
            owned: Mutex::new(BTreeMap::new()),
            settled: Mutex::new(settled),
            closing: AtomicBool::new(false),
            nudged: Mutex::new(std::time::Instant::now()),
        }
    }

    /// Gives the context its consumer, before it subscribes.
    pub fn attach(consumer: &Arc<GroupConsumer>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    /// A worker for `partition`, reading the partition's own queue; `None`
    /// if the queue cannot be split (the consumer is going away). `skip`:
    /// offsets settled before past the committed one, for lanes.
    fn start_worker(&self, partition: i32, skip: Ahead) -> Option<Worker> {
        let consumer = self.consumer.get()?.upgrade()?;
        let Some(queue) = consumer.split_partition_queue(&self.topic, partition) else {
            tracing::error!(
                plugin = self.plugin,
                partition,
                "cannot split the partition's queue off the consumer"
            );
            return None;
        };
        Some(Worker::spawn(self.setup.clone(), partition, queue, skip))
    }

    /// Starts the workers of newly assigned partitions; none once the
    /// consumer is closing.
    fn assign(&self, partitions: &[i32]) {
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let mut ahead = self.settled_ahead(partitions);
        let mut owned = self.owned.locked();
        for &partition in partitions {
            if owned.contains_key(&partition) {
                continue;
            }
            self.offsets.forget(partition);
            let skip = ahead.remove(&partition).unwrap_or_default();
            if let Some(worker) = self.start_worker(partition, skip) {
                owned.insert(
                    partition,
                    Owned {
                        worker,
                        deaths: 0,
                        restart_at: None,
                    },
                );
            }
        }
    }

    /// What the lanes of the partitions' previous owners settled past the
    /// committed offsets, from the commits' metadata (read whatever this
    /// plugin's `concurrency` is now: it may have been higher). If it
    /// cannot be read, those events are delivered again.
    fn settled_ahead(&self, partitions: &[i32]) -> BTreeMap<i32, Ahead> {
        if partitions.is_empty() {
            return BTreeMap::new();
        }
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return BTreeMap::new();
        };
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        let committed = match consumer.committed_offsets(list, COMMITTED_TIMEOUT) {
            Ok(committed) => committed,
            Err(e) => {
                tracing::warn!(
                    plugin = self.plugin,
                    ?partitions,
                    "cannot read the committed offsets' metadata ({e}): events lanes \
                     settled past them are delivered again"
                );
                return BTreeMap::new();
            }
        };
        let mut out = BTreeMap::new();
        for (partition, next, metadata) in committed_metadata(&committed) {
            let settled = ahead::decode(next, &metadata);
            if settled.is_empty() {
                continue;
            }
            let events: i64 = settled.iter().map(|(from, to)| to - from + 1).sum();
            tracing::info!(
                plugin = self.plugin,
                partition,
                "{events} offsets past the committed {next} were settled by lanes before: \
                 their events are not delivered again"
            );
            out.insert(partition, settled);
        }
        out
    }

    /// A message on the consumer's own queue: its partition's queue was not
    /// split in time. It is read again from that offset, through the
    /// partition's worker, so order holds.
    pub fn stray(&self, consumer: &GroupConsumer, message: &BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        tracing::warn!(
            plugin = self.plugin,
            partition,
            offset,
            "a message came outside its partition's queue; reading the partition again from it"
        );
        if !self.owned.locked().contains_key(&partition) {
            self.assign(&[partition]);
        }
        self.read_again(consumer, partition, offset);
    }

    /// Seeks `partition` back to `offset`: its queue is emptied and
    /// fetched again from there.
    fn read_again(&self, consumer: &GroupConsumer, partition: i32, offset: i64) {
        let timeout = std::time::Duration::from_secs(5);
        if let Err(e) = consumer.seek(&self.topic, partition, Offset::Offset(offset), timeout) {
            tracing::error!(
                plugin = self.plugin,
                partition,
                "cannot read the partition again from offset {offset}: {e}"
            );
        }
    }

    /// A worker that ended without being asked to (a panic in the host)
    /// would leave its partition unread for good. It is replaced, after a
    /// backoff that grows with each death, and the partition is read again
    /// from the first offset it had not settled, so nothing is skipped.
    fn revive(&self, consumer: &GroupConsumer, partition: i32, entry: &mut Owned) {
        if !entry.worker.died() || self.closing.load(Ordering::SeqCst) {
            return;
        }
        let now = std::time::Instant::now();
        let from = entry.worker.unsettled_from();
        let Some(at) = entry.restart_at else {
            entry.deaths += 1;
            let wait = std::time::Duration::from_millis(100 << entry.deaths.min(8));
            entry.restart_at = Some(now + wait);
            tracing::error!(
                plugin = self.plugin,
                partition,
                "the partition worker panicked (a bug of the host: its message is above); \
                 restarting it in {wait:?} from offset {}",
                from.map_or("the last commit".to_string(), |o| o.to_string())
            );
            self.setup.live.current().metrics().holds.hold(
                &self.plugin,
                partition,
                Cause::Host,
                "the partition worker stopped; restarting it",
            );
            return;
        };
        if now < at {
            return;
        }
        if self.replace_worker(consumer, partition, entry) {
            entry.restart_at = None;
        }
    }

    /// Stops the partition's worker and starts another from the first
    /// offset it had not settled, skipping what it settled past that.
    fn replace_worker(&self, consumer: &GroupConsumer, partition: i32, entry: &mut Owned) -> bool {
        // What is left of the old worker (lanes that did not die) stops
        // first, so its queue is let go and its lanes' progress known;
        // then the queue is moved back, so the replacement never takes a
        // message past the first unsettled offset.
        entry.worker.halt();
        if let Some(next) = entry.worker.unsettled_from() {
            self.read_again(consumer, partition, next);
        }
        let Some(worker) = self.start_worker(partition, entry.worker.settled_ahead()) else {
            return false;
        };
        std::mem::replace(&mut entry.worker, worker).stop();
        self.setup
            .live
            .current()
            .metrics()
            .holds
            .release(&self.plugin, partition);
        true
    }

    /// A reload changed the plugin's `concurrency`: each partition's
    /// worker is replaced by one with as many lanes, between batches.
    fn follow_concurrency(&self, consumer: &GroupConsumer, partition: i32, entry: &mut Owned) {
        let wanted = self.setup.live.current().spec.concurrency.max(1);
        let had = entry.worker.lanes();
        if had == wanted || entry.worker.died() || self.closing.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!(
            plugin = self.plugin,
            partition,
            "concurrency {had} -> {wanted}: the partition goes on with {wanted} batches in flight"
        );
        self.replace_worker(consumer, partition, entry);
    }

    /// Replaces workers that died, and nudges the others now and then.
    pub fn tend(&self, consumer: &GroupConsumer) {
        let nudge = {
            let mut nudged = self.nudged.locked();
            let due = nudged.elapsed() >= NUDGE_EVERY;
            if due {
                *nudged = std::time::Instant::now();
            }
            due
        };
        let mut owned = self.owned.locked();
        for (&partition, entry) in owned.iter_mut() {
            self.revive(consumer, partition, entry);
            self.follow_concurrency(consumer, partition, entry);
            if nudge {
                entry.worker.nudge();
            }
        }
    }

    /// Stores the offsets workers have settled; librdkafka commits stored
    /// offsets every `commit_interval_ms`.
    pub fn store_settled(&self, consumer: &GroupConsumer) {
        let settled = self.settled.locked();
        while let Ok(done) = settled.try_recv() {
            self.offsets.stored(&done);
            let (partition, offset) = (done.partition, done.offset);
            if let Err(e) = self.store(consumer, &done) {
                tracing::warn!(
                    plugin = &*self.setup.live.current().name,
                    partition,
                    offset,
                    "offset not stored ({e}); the partition's next owner redelivers"
                );
            }
        }
    }

    /// Stores `settled` for librdkafka to commit, with its metadata.
    fn store(&self, consumer: &GroupConsumer, settled: &Settled) -> KafkaResult<()> {
        if settled.metadata.is_empty() {
            return consumer.store_offset(&self.topic, settled.partition, settled.offset);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.topic,
            settled.partition,
            Offset::Offset(settled.offset + 1),
        )?;
        if let Some(mut element) = list.find_partition(&self.topic, settled.partition) {
            element.set_metadata(&settled.metadata);
        }
        consumer.store_offsets(&list)
    }

    /// Stops the workers of `partitions` (all if `None`), stores what they
    /// settled and commits it.
    pub fn release(&self, consumer: &GroupConsumer, partitions: Option<&[i32]>) {
        let stopped: Vec<(i32, Owned)> = {
            let mut owned = self.owned.locked();
            match partitions {
                None => std::mem::take(&mut *owned).into_iter().collect(),
                Some(list) => list
                    .iter()
                    .filter_map(|p| owned.remove(p).map(|o| (*p, o)))
                    .collect(),
            }
        };
        if stopped.is_empty() {
            return;
        }
        // Stop them all first, then wait: their in-flight batches finish
        // side by side.
        let (partitions, workers): (Vec<i32>, Vec<Worker>) =
            stopped.into_iter().map(|(p, o)| (p, o.worker)).unzip();
        for worker in &workers {
            worker.request_stop();
        }
        for worker in workers {
            worker.stop();
        }
        // What these partitions waited for is their next owner's now.
        let metrics = self.setup.live.current().metrics().clone();
        for &partition in &partitions {
            metrics.holds.forget(&self.plugin, partition);
        }
        self.store_settled(consumer);
        // Their offsets as stored, committed explicitly: librdkafka's own
        // commit leaves out an offset already committed, even if what
        // lanes settled past it (the metadata) grew since.
        let mut list = TopicPartitionList::new();
        for &partition in &partitions {
            let Some((next, metadata)) = self.offsets.last_stored(partition) else {
                continue;
            };
            if list
                .add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .is_ok()
                && !metadata.is_empty()
                && let Some(mut element) = list.find_partition(&self.topic, partition)
            {
                element.set_metadata(&metadata);
            }
        }
        if list.count() == 0 {
            return;
        }
        if self.setup.broker.is_down() {
            // A synchronous commit would wait for the broker; ask for one
            // and say what may be delivered again.
            let _ = consumer.commit(&list, CommitMode::Async);
            self.report_uncommitted();
            return;
        }
        match consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                for (partition, next) in list
                    .elements()
                    .iter()
                    .filter_map(|e| Some((e.partition(), e.offset().to_raw()?)))
                {
                    self.offsets.committed(partition, next);
                }
            }
            Err(e) => tracing::warn!(
                plugin = &*self.setup.live.current().name,
                "commit failed: {e}; uncommitted events are delivered again"
            ),
        }
    }

    /// Stops every worker and commits, before the consumer leaves its
    /// group. False if the broker is unreachable: then what could not be
    /// committed is logged, and the consumer should not wait to leave.
    pub fn close(&self, consumer: &GroupConsumer) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        self.release(consumer, None);
        !self.setup.broker.is_down()
    }

    /// Logs, per partition, the settled offsets the broker has not
    /// acknowledged: their events are delivered again after a restart.
    fn report_uncommitted(&self) {
        let behind = self.offsets.uncommitted();
        if behind.is_empty() {
            tracing::warn!(
                plugin = self.plugin,
                "the broker is unreachable; every settled offset was committed before"
            );
        } else {
            tracing::warn!(
                plugin = self.plugin,
                "the broker is unreachable: settled but not committed, so delivered again after a restart: {}",
                behind.join(", ")
            );
        }
    }

    /// An error the poll loop got; connection trouble holds the consumer.
    pub fn consumer_error(&self, error: &KafkaError) {
        self.error(error.clone(), "");
    }
}

impl ClientContext for Partitions {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }

    /// Client-wide errors are about reaching the brokers: the consumer
    /// holds (the host is not ready) until statistics show one up again.
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
        if self.closing.load(Ordering::SeqCst) {
            // A consumer closing in the background holds nothing.
            return;
        }
        let reason = if reason.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {reason}")
        };
        let metrics = self.setup.live.current().metrics().clone();
        metrics.holds.hold(
            &self.plugin,
            ALL_PARTITIONS,
            Cause::Host,
            &format!("Kafka: {reason}"),
        );
        self.setup.broker.lost();
    }

    /// Lag of the owned partitions, and whether a broker is up again.
    fn stats(&self, statistics: Statistics) {
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let lag: BTreeMap<i32, i64> = statistics
            .topics
            .get(&self.topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    // A partition not fetched yet (paused from the start)
                    // has no known end: its lag is unknown, not 0.
                    .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
                    .map(|p| {
                        let lag = if p.consumer_lag_stored >= 0 {
                            p.consumer_lag_stored
                        } else if p.consumer_lag >= 0 {
                            p.consumer_lag
                        } else {
                            (p.hi_offset - p.lo_offset.max(0)).max(0)
                        };
                        (p.partition, lag)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let metrics = self.setup.live.current().metrics().clone();
        metrics.set_lag(&self.plugin, lag);
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        if up {
            self.setup.broker.answers(&self.setup.live);
        }
    }
}

impl ConsumerContext for Partitions {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_err() {
            return;
        }
        for element in offsets.elements() {
            if let Offset::Offset(o) = element.offset() {
                self.offsets.committed(element.partition(), o);
            }
        }
    }

    /// Assigned partitions get their worker before librdkafka starts
    /// fetching them: their queues are split off first (a split made after
    /// the fetch starts lets early messages through the consumer's queue),
    /// and each plugin instance reports its partition's state even before
    /// new events come.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            self.assign(&partitions);
        }
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(
                plugin = &*self.setup.live.current().name,
                ?partitions,
                "partitions revoked; finishing their batches and committing"
            );
            self.release(consumer, Some(&partitions));
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            // Their new owner reports their share of the plugin's gauges.
            let prepared = self.setup.live.current();
            for partition in partitions {
                prepared
                    .metrics()
                    .forget_gauge_slot(&prepared.name, partition);
            }
        }
    }
}
