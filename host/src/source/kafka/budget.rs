//! One host-wide budget for data fetched from Kafka and not handled yet,
//! shared by every plugin's consumer (`fetch_budget_mb` in `[kafka]`).
//!
//! librdkafka fetches each partition ahead of its worker into the
//! partition's queue, in fetch responses of up to `max.partition.fetch.bytes`
//! per partition. Both are set per consumer when it is made, so the budget
//! is split there: every (plugin, partition) gets an equal share, half for
//! its queue and half for a fetch response in flight. A plugin added later
//! is given the share of the plugins in the folder at that moment (the
//! others keep theirs until they join their group again), so the bound
//! holds within a factor of the plugins added since.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::{Role, client_config};
use crate::config::KafkaConfig;

/// The smallest share of a partition: below it fetches get so small that
/// the fetch requests cost more than the events (and a record batch larger
/// than the share still comes whole, so nothing gets stuck).
const MIN_SHARE: u64 = 64 * 1024;
/// librdkafka's own `max.partition.fetch.bytes`: a larger share goes to
/// the queue, not to larger fetches.
const MAX_FETCH: u64 = 1024 * 1024;
/// librdkafka's own `queued.max.messages.kbytes`.
const MAX_QUEUE: u64 = 64 * 1024 * 1024;
/// The partition count assumed while the topic's cannot be learned.
const PARTITIONS_UNKNOWN: usize = 12;

/// The budget and what it is divided among.
pub struct FetchBudget {
    bytes: u64,
    plugins: AtomicUsize,
    partitions: AtomicUsize,
}

impl FetchBudget {
    pub fn new(megabytes: u64) -> Self {
        FetchBudget {
            bytes: megabytes.max(1) * 1024 * 1024,
            plugins: AtomicUsize::new(1),
            partitions: AtomicUsize::new(0),
        }
    }

    /// How many plugins the folder holds now.
    pub fn set_plugins(&self, plugins: usize) {
        self.plugins.store(plugins.max(1), Ordering::Relaxed);
    }

    /// The bytes one partition of one plugin may have fetched ahead: its
    /// queue and its fetch in flight together.
    pub fn per_partition(&self, kafka: &KafkaConfig) -> u64 {
        let partitions = self.partitions(kafka);
        let plugins = self.plugins.load(Ordering::Relaxed) as u64;
        (self.bytes / plugins / partitions as u64).max(2 * MIN_SHARE)
    }

    /// The topic's partition count, learned once.
    fn partitions(&self, kafka: &KafkaConfig) -> usize {
        let known = self.partitions.load(Ordering::Relaxed);
        if known > 0 {
            return known;
        }
        match topic_partitions(kafka) {
            Ok(n) if n > 0 => {
                self.partitions.store(n, Ordering::Relaxed);
                n
            }
            Ok(_) | Err(_) => PARTITIONS_UNKNOWN,
        }
    }

    /// Sets the consumer's fetch sizes from the share of one partition,
    /// unless `[kafka.librdkafka]` sets them itself.
    pub fn apply(&self, config: &mut ClientConfig, kafka: &KafkaConfig) -> u64 {
        let share = self.per_partition(kafka);
        let half = share / 2;
        let fetch = half.min(MAX_FETCH);
        // The queue gets the rest of the share (up to librdkafka's cap).
        let queue = (share - fetch).min(MAX_QUEUE);
        let partitions = self.partitions(kafka) as u64;
        let settings = [
            ("max.partition.fetch.bytes", fetch.to_string()),
            // One fetch request covers the consumer's partitions.
            (
                "fetch.max.bytes",
                (fetch * partitions)
                    .clamp(MAX_FETCH, 50 * MAX_FETCH)
                    .to_string(),
            ),
            // Per partition queue: they are split off the consumer's.
            (
                "queued.max.messages.kbytes",
                (queue / 1024).max(1).to_string(),
            ),
        ];
        for (key, value) in settings {
            if !kafka.librdkafka.contains_key(key) {
                config.set(key, value);
            }
        }
        share
    }
}

/// The number of partitions of the topic, asked of the brokers.
fn topic_partitions(kafka: &KafkaConfig) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client_config(kafka, Role::Consumer).create()?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic.0), Duration::from_secs(2))?;
    Ok(metadata.topics().iter().map(|t| t.partitions().len()).sum())
}
