//! The Kafka source: one consumer group per plugin, partitions handled
//! concurrently, offsets stored only when an event's outcome is final, dead
//! letters to a topic per plugin.
//!
//! In: the `[kafka]` config and a compiled plugin. Out: every message of the
//! topic handled by the plugin, or parked in its dead-letter topic
//! (acknowledged by the broker, acks=all) with the reason in headers. An
//! offset is stored only after that; stored offsets are committed
//! periodically, on revoke and on shutdown. Fails on host errors (no broker,
//! bad settings); a plugin's failures are outcomes.
//!
//! One thread polls the consumer (serving rebalances and heartbeats, so a
//! long retry never trips `max.poll.interval.ms`); each partition's
//! messages go from its own librdkafka queue to its `worker`, a job of the
//! host's [`crate::pool::Pool`], with no copy; `partitions` starts and
//! stops workers as partitions come and go.

mod ahead;
mod batch;
pub mod budget;
pub mod client;
pub(crate) mod client_log;
mod lanes;
mod panic_hook;
mod partitions;
pub mod rewind;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::catalog::LivePlugin;
use crate::config::KafkaConfig;
use crate::pool::Pool;
use crate::shutdown::Shutdown;
pub use batch::{Settle, SettleBatch};
use budget::FetchBudget;
use client::{Role, client_config};
use partitions::{GroupConsumer, Partitions};
use worker::{Broker, WorkerSetup};

/// Consumer settings plugboard changes from librdkafka's defaults; the
/// `[kafka.librdkafka]` table overrides them.
const CONSUMER_DEFAULTS: [(&str, &str); 4] = [
    // The poll thread never blocks on a plugin, so heartbeats are steady: a
    // host that died is noticed in 10 s rather than 45, and its partitions
    // move on (a restart with `instance_id` gets them back at once).
    ("session.timeout.ms", "10000"),
    // A partition whose queue was full waits for the fetch request in
    // flight: 500 ms by default, which made a backlog 2-3x slower to drain.
    ("fetch.wait.max.ms", "50"),
    // How long the fetcher leaves a partition whose queue holds
    // `partition_buffer` messages (1 s by default): a plugin drains 2,000
    // messages in milliseconds, then would wait for the rest of the second.
    ("fetch.queue.backoff.ms", "10"),
    // The lag `/plugins` and `plugboard_consumer_lag` show, and whether a
    // broker is back, come from these statistics: no extra round trip.
    ("statistics.interval.ms", "1000"),
];

/// What every plugin's consumer on this host shares: the threads that run
/// batches and the budget for fetched data.
#[derive(Clone)]
pub struct Shared {
    pub pool: Pool,
    pub budget: Arc<FetchBudget>,
}

/// What an operator switched, as a plugin's consumer reads it: the
/// host's [`crate::control::Control`], shared by every host of the group.
pub trait Switches: Send + Sync {
    /// The flag the plugin's workers and consumer read (true: paused).
    fn paused(&self, plugin: &str) -> Arc<AtomicBool>;
    /// The id of the rewind of the plugin's group that keeps its members
    /// out now, if one does.
    fn rewind_under_way(&self, plugin: &str) -> Option<String>;
    /// The id of the latest rewind of the group, whatever its phase.
    fn latest_rewind(&self, plugin: &str) -> Option<String>;
    /// Waits while a rewind keeps the group's members out, or until
    /// `shutdown`.
    fn wait_out_rewind(&self, plugin: &str, shutdown: &Shutdown);
}

/// Consumes the topic for one plugin until `shutdown`, each batch with the
/// version `live` holds at that moment, settled by `settle`. A rewind of
/// the plugin's group takes it out of the group until the group's offsets
/// are moved (see [`rewind`]), then it joins again.
pub fn consume(
    kafka: &KafkaConfig,
    live: Arc<LivePlugin>,
    settle: Settle,
    switches: &dyn Switches,
    shared: &Shared,
    shutdown: &Shutdown,
) -> Result<()> {
    let plugin = live.current().name.to_string();
    loop {
        switches.wait_out_rewind(&plugin, shutdown);
        if shutdown.is_requested() {
            return Ok(());
        }
        // Rewinds asked before this membership are history.
        let seen = switches.latest_rewind(&plugin);
        match member(kafka, &live, &settle, switches, shared, seen, shutdown)? {
            Left::Shutdown => return Ok(()),
            Left::ForRewind => continue,
        }
    }
}

/// Why a consumer left its group.
enum Left {
    Shutdown,
    /// A rewind of the group was asked: every member leaves while the
    /// group's offsets are moved.
    ForRewind,
}

/// One membership of the plugin's group: from joining to leaving it.
fn member(
    kafka: &KafkaConfig,
    live: &Arc<LivePlugin>,
    settle: &Settle,
    switches: &dyn Switches,
    shared: &Shared,
    seen_rewind: Option<String>,
    shutdown: &Shutdown,
) -> Result<Left> {
    let prepared = live.current();
    let plugin = prepared.name.to_string();
    let paused = switches.paused(&plugin);
    let group = format!("{}{}", kafka.group_prefix, plugin);
    let topic = kafka.topic.0.clone();
    tracing::info!(
        plugin,
        group,
        topic,
        dead_letters = client::dead_letter_topic(kafka, &plugin),
        "consuming"
    );
    let (settled_tx, settled_rx) = std::sync::mpsc::channel();
    let setup = WorkerSetup {
        live: live.clone(),
        settle: settle.clone(),
        settled: settled_tx,
        broker: Arc::new(Broker::new(&plugin)),
        paused: paused.clone(),
        pool: shared.pool.clone(),
    };
    let mut config = client_config(kafka, Role::Consumer);
    for (key, value) in CONSUMER_DEFAULTS {
        if !kafka.librdkafka.contains_key(key) {
            config.set(key, value);
        }
    }
    if let Some(id) = kafka.instance_id.as_ref().filter(|id| !id.0.is_empty()) {
        config.set("group.instance.id", &id.0);
    }
    // Each partition's queue holds up to this many messages fetched ahead
    // of its worker, and its share of the host's fetch budget: a slow
    // plugin bounds memory, the others keep flowing.
    let buffer = kafka.partition_buffer.max(prepared.spec.limits.batch_size);
    if !kafka.librdkafka.contains_key("queued.min.messages") {
        config.set("queued.min.messages", buffer.to_string());
    }
    let share = shared.budget.apply(&mut config, kafka);
    tracing::debug!(plugin, share, "fetch budget per partition (bytes)");
    let consumer: GroupConsumer = config
        .set("group.id", &group)
        .set("client.id", format!("plugboard-{plugin}"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            kafka.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", &kafka.start_from)
        .create_with_context(Partitions::new(&topic, &plugin, setup, settled_rx))
        .with_context(|| format!("cannot create the consumer of group {group}"))?;
    drop(prepared);
    let consumer = Arc::new(consumer);
    Partitions::attach(&consumer);
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;

    let partitions = consumer.context();
    let mut fetching = Fetching::default();
    let mut left = Left::Shutdown;
    while !shutdown.is_requested() {
        partitions.store_settled(&consumer);
        partitions.tend(&consumer);
        fetching.follow(&consumer, &paused, &plugin);
        if let Some(id) = switches
            .rewind_under_way(&plugin)
            .filter(|id| seen_rewind.as_deref() != Some(id.as_str()))
        {
            tracing::info!(
                plugin,
                rewind = id,
                "a rewind of the group was asked: finishing the batches in flight, committing and leaving the group"
            );
            left = Left::ForRewind;
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(message)) => partitions.stray(&consumer, &message),
            Some(Err(e)) => partitions.consumer_error(&e),
        }
    }
    if partitions.close(&consumer) {
        consumer.unsubscribe();
        match left {
            Left::Shutdown => tracing::info!(plugin, "stopped; offsets committed"),
            Left::ForRewind => {
                // Leaving the group is what the rewind waits for: done
                // here, not in the background.
                drop(consumer);
                tracing::info!(plugin, "left the group for a rewind; offsets committed");
            }
        }
    } else {
        // Leaving the group needs the broker; so does closing the consumer
        // cleanly, which waits for it. The close goes on in the background
        // until the broker answers (this thread must not wait), so the
        // consumer leaves the group then instead of lingering in it as a
        // member that may be handed partitions nobody reads. What was not
        // committed is delivered again.
        let closing = std::thread::Builder::new()
            .name(format!("{plugin}-close"))
            .spawn(move || drop(consumer));
        if let Err(e) = closing {
            tracing::error!(plugin, "cannot close the consumer in the background: {e}");
        }
    }
    Ok(left)
}

/// Where one partition of a plugin's group stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The group's committed offset (the next event it handles); none
    /// before its first commit.
    pub committed: Option<i64>,
    /// The partition's end: the offset the next event produced gets.
    pub high_watermark: i64,
    /// Events between the two (from the start of the partition if nothing
    /// is committed).
    pub lag: i64,
}

/// The committed offset, end and lag of every partition of the topic for
/// the consumer group of `plugin`, asked of the broker (each request
/// bounded by `timeout`).
pub fn group_offsets(
    kafka: &KafkaConfig,
    plugin: &str,
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>> {
    let group = format!("{}{}", kafka.group_prefix, plugin);
    let consumer: BaseConsumer = client_config(kafka, Role::Consumer)
        .set("group.id", &group)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic.0), timeout)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in metadata.topics() {
        for p in topic.partitions() {
            tpl.add_partition(topic.name(), p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for element in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
        let committed = match element.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push(PartitionOffsets {
            partition: element.partition(),
            committed,
            high_watermark: high,
            lag: (high - committed.unwrap_or(low)).max(0),
        });
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

/// Whether the consumer fetches: a paused plugin's partitions are paused
/// in librdkafka (membership kept, no rebalance), again now and then so
/// partitions assigned meanwhile pause too.
#[derive(Default)]
struct Fetching {
    paused_at: Option<std::time::Instant>,
}

impl Fetching {
    fn follow(&mut self, consumer: &GroupConsumer, paused: &AtomicBool, plugin: &str) {
        let want = paused.load(Ordering::Relaxed);
        let due = self
            .paused_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(1));
        // Paused again now and then; resumed once.
        let act = if want { due } else { self.paused_at.is_some() };
        if !act {
            return;
        }
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let done = if want {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        match done {
            Ok(()) => {
                if want && self.paused_at.is_none() {
                    tracing::info!(plugin, "paused: fetching stopped, group membership kept");
                } else if !want {
                    tracing::info!(plugin, "resumed");
                }
                self.paused_at = want.then(std::time::Instant::now);
            }
            Err(e) => tracing::warn!(plugin, "cannot pause or resume fetching: {e}"),
        }
    }
}

/// Counts of the consumer group of `plugin`: committed offset and end of
/// every partition, for tests and lag reports.
pub fn group_lag(kafka: &KafkaConfig, plugin: &str) -> Result<i64> {
    let offsets = group_offsets(kafka, plugin, Duration::from_secs(10))?;
    Ok(offsets
        .iter()
        .map(|p| match p.committed {
            Some(_) => p.lag,
            // As before: nothing committed counts the whole partition.
            None => p.high_watermark,
        })
        .sum())
}
