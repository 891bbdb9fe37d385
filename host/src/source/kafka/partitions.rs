//! The partitions a consumer owns right now, each with its worker.
//!
//! The poll loop routes every message to its partition's worker. When a
//! worker has `capacity` messages unsettled the partition is paused (other
//! partitions keep flowing) and further messages already fetched are held;
//! it is resumed once the worker is down to half, so the refetch overlaps
//! with the work left rather than stalling the plugin.
//! On revoke the workers of the revoked partitions are stopped and what they
//! settled is stored and committed before the partitions go, so their next
//! owner starts right after the last settled event.

use crate::locks::Lock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use super::client_log::ClientLog;
use super::worker::{Worker, WorkerSetup};
use crate::commit::{Offsets, Settled};
use crate::hold::{ALL_PARTITIONS, Cause};

/// One owned partition.
struct Owned {
    worker: Worker,
    /// Messages polled while the worker was full, in order.
    held: VecDeque<OwnedMessage>,
    paused: bool,
    /// The first offset not yet settled, once a message came: where a
    /// worker that dies is restarted from.
    next: Option<i64>,
    /// Workers of this partition that died, for the restart backoff.
    deaths: u32,
    /// When the replacement of a dead worker may start.
    restart_at: Option<std::time::Instant>,
}

/// The consumer context: it owns the workers, so rebalance callbacks (which
/// librdkafka runs inside `poll`) can stop them and commit.
pub struct Partitions {
    topic: String,
    plugin: String,
    setup: WorkerSetup,
    capacity: usize,
    owned: Mutex<BTreeMap<i32, Owned>>,
    settled: Mutex<Receiver<Settled>>,
    /// Set at shutdown: the revoke that leaving the group brings keeps the
    /// gauges, which the final metrics still report.
    closing: AtomicBool,
    /// What was stored and committed: what a stop without the broker
    /// leaves uncommitted.
    offsets: Offsets,
    /// Set while librdkafka reports the brokers unreachable.
    broker_down: AtomicBool,
    log: ClientLog,
}

pub type GroupConsumer = BaseConsumer<Partitions>;

impl Partitions {
    pub fn new(
        topic: &str,
        plugin: &str,
        setup: WorkerSetup,
        settled: Receiver<Settled>,
        capacity: usize,
    ) -> Self {
        Partitions {
            topic: topic.to_string(),
            plugin: plugin.to_string(),
            offsets: Offsets::default(),
            broker_down: AtomicBool::new(false),
            log: ClientLog::new(plugin.to_string()),
            setup,
            capacity,
            owned: Mutex::new(BTreeMap::new()),
            settled: Mutex::new(settled),
            closing: AtomicBool::new(false),
        }
    }

    /// Hands a polled message to its partition's worker, starting the
    /// worker on the partition's first message.
    pub fn route(&self, consumer: &GroupConsumer, message: OwnedMessage) {
        let partition = message.partition();
        let mut owned = self.owned.locked();
        let entry = self.own(&mut owned, partition);
        entry.next.get_or_insert(message.offset());
        if entry.held.is_empty() && entry.worker.queued() < self.capacity {
            entry.worker.send(message);
            return;
        }
        entry.held.push_back(message);
        if !entry.paused {
            entry.paused = self.pause(consumer, partition, true);
        }
    }

    /// The entry of `partition`, with a worker started if it had none.
    fn own<'a>(&self, owned: &'a mut BTreeMap<i32, Owned>, partition: i32) -> &'a mut Owned {
        owned.entry(partition).or_insert_with(|| Owned {
            worker: Worker::spawn(self.setup.clone(), partition),
            held: VecDeque::new(),
            paused: false,
            next: None,
            deaths: 0,
            restart_at: None,
        })
    }

    /// A worker that ended without being asked to (a panic in the host)
    /// would leave its partition paused for good. It is replaced, after a
    /// backoff that grows with each death, and the partition is read again
    /// from its first unsettled offset, so nothing is skipped.
    fn revive(&self, consumer: &GroupConsumer, partition: i32, entry: &mut Owned) {
        if !entry.worker.died() || self.closing.load(Ordering::SeqCst) {
            return;
        }
        let now = std::time::Instant::now();
        let Some(at) = entry.restart_at else {
            entry.deaths += 1;
            let wait = std::time::Duration::from_millis(100 << entry.deaths.min(8));
            entry.restart_at = Some(now + wait);
            tracing::error!(
                plugin = self.plugin,
                partition,
                "the partition worker panicked (a bug of the host: its message is above); \
                 restarting it in {wait:?} from offset {}",
                entry
                    .next
                    .map_or("the last commit".to_string(), |o| o.to_string())
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
        entry.restart_at = None;
        let dead = std::mem::replace(
            &mut entry.worker,
            Worker::spawn(self.setup.clone(), partition),
        );
        dead.stop();
        entry.held.clear();
        if let Some(next) = entry.next {
            let timeout = std::time::Duration::from_secs(5);
            if let Err(e) = consumer.seek(&self.topic, partition, Offset::Offset(next), timeout) {
                tracing::error!(
                    plugin = self.plugin,
                    partition,
                    "cannot read the partition again from offset {next}: {e}"
                );
            }
        }
        if entry.paused {
            entry.paused = !self.pause(consumer, partition, false);
        }
        self.setup
            .live
            .current()
            .metrics()
            .holds
            .release(&self.plugin, partition);
    }

    /// Moves held messages on to workers that have room again, and resumes
    /// a paused partition once nothing is held and its worker is down to
    /// half its capacity.
    pub fn drain_held(&self, consumer: &GroupConsumer) {
        let mut owned = self.owned.locked();
        for (&partition, entry) in owned.iter_mut() {
            self.revive(consumer, partition, entry);
            if entry.restart_at.is_some() {
                continue;
            }
            while !entry.held.is_empty() && entry.worker.queued() < self.capacity {
                let message = entry.held.pop_front().expect("not empty");
                entry.worker.send(message);
            }
            if entry.paused && entry.held.is_empty() && entry.worker.queued() <= self.capacity / 2 {
                entry.paused = !self.pause(consumer, partition, false);
            }
        }
    }

    /// Whether some partition waits for its worker; the poll loop then
    /// polls briefly, so a resume is not late by a whole poll timeout.
    pub fn any_paused(&self) -> bool {
        self.owned.locked().values().any(|o| o.paused)
    }

    /// Stores the offsets workers have settled; librdkafka commits stored
    /// offsets every `commit_interval_ms`.
    pub fn store_settled(&self, consumer: &GroupConsumer) {
        let settled = self.settled.locked();
        while let Ok(Settled { partition, offset }) = settled.try_recv() {
            if let Some(entry) = self.owned.locked().get_mut(&partition) {
                entry.next = Some(offset + 1);
            }
            self.offsets.stored(&Settled { partition, offset });
            if let Err(e) = consumer.store_offset(&self.topic, partition, offset) {
                tracing::warn!(
                    plugin = &*self.setup.live.current().name,
                    partition,
                    offset,
                    "offset not stored ({e}); the partition's next owner redelivers"
                );
            }
        }
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
        // A paused partition stays paused across a reassignment in
        // librdkafka: resume it while it is still ours.
        for (partition, _) in stopped.iter().filter(|(_, o)| o.paused) {
            self.pause(consumer, *partition, false);
        }
        // Stop them all first, then wait: their in-flight batches finish
        // side by side.
        let workers: Vec<Worker> = stopped.into_iter().map(|(_, o)| o.worker).collect();
        for worker in &workers {
            worker.request_stop();
        }
        for worker in workers {
            worker.stop();
        }
        self.store_settled(consumer);
        if self.broker_down.load(Ordering::SeqCst) {
            // A synchronous commit would wait for the broker; ask for one
            // and say what may be delivered again.
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            self.report_uncommitted();
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
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
        !self.broker_down.load(Ordering::SeqCst)
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

    /// A message came: the broker answers. Called per message, so it only
    /// reads the flag unless the broker was down.
    pub fn broker_answers(&self) {
        if self.broker_down.load(Ordering::Relaxed)
            && self.broker_down.swap(false, Ordering::SeqCst)
        {
            self.broker_back();
        }
    }

    fn broker_back(&self) {
        let metrics = self.setup.live.current().metrics().clone();
        if let Some(lasted) = metrics.holds.release(&self.plugin, ALL_PARTITIONS) {
            tracing::info!(
                plugin = self.plugin,
                "the broker answers again after {lasted:.1?}"
            );
        }
    }

    /// An error the poll loop got; connection trouble holds the consumer.
    pub fn consumer_error(&self, error: &KafkaError) {
        self.error(error.clone(), "");
    }

    /// Pauses (or resumes) `partition`; true if that took effect.
    fn pause(&self, consumer: &GroupConsumer, partition: i32, pause: bool) -> bool {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.topic, partition, Offset::Invalid)
            .is_err()
        {
            return false;
        }
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        let current = self.setup.live.current();
        let plugin = &*current.name;
        match result {
            Ok(()) if pause => {
                tracing::debug!(plugin, partition, "plugin behind: partition paused");
                current
                    .metrics()
                    .partition_pauses
                    .with_label_values(&[plugin])
                    .inc();
                true
            }
            Ok(()) => {
                tracing::debug!(plugin, partition, "partition resumed");
                true
            }
            Err(e) => {
                tracing::warn!(plugin, partition, "cannot pause/resume: {e}");
                false
            }
        }
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
        self.broker_down.store(true, Ordering::SeqCst);
    }

    /// Lag of the owned partitions, and whether a broker is up again.
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired)
                    .map(|p| {
                        if p.consumer_lag_stored >= 0 {
                            p.consumer_lag_stored
                        } else if p.consumer_lag >= 0 {
                            p.consumer_lag
                        } else {
                            (p.hi_offset - p.lo_offset.max(0)).max(0)
                        }
                    })
                    .sum()
            })
            .unwrap_or(0);
        let metrics = self.setup.live.current().metrics().clone();
        metrics.set_lag(&self.plugin, lag);
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        if up {
            self.broker_answers();
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

    /// Starts a worker for every partition assigned, so each plugin
    /// instance reports its partition's state even before new events come.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut owned = self.owned.locked();
            for element in list.elements() {
                self.own(&mut owned, element.partition());
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
