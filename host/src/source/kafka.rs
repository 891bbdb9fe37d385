//! The Kafka source: one consumer group per plugin, offsets stored only when
//! an event's outcome is final, dead letters to a topic per plugin.
//!
//! In: the `[kafka]` config and a ready [`Dispatcher`] per plugin. Out:
//! every message of the topic handled by each plugin, or parked in that
//! plugin's dead-letter topic (acknowledged by the broker, acks=all) with
//! the reason in headers. An offset is stored only after that; stored
//! offsets are committed periodically, on revoke and on shutdown. Fails on
//! host errors (no broker, bad settings); a plugin's failures are outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::decode;
use crate::dispatch::{Dispatcher, Failure, FailureClass, Outcome};
use crate::runtime::convert::{self, Envelope};
use crate::shutdown::Shutdown;

/// Commits what was stored when partitions are taken away, so the next
/// owner starts right after the last settled event. Batches are processed
/// between polls, so at a revoke no batch is in flight.
struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(count = partitions.count(), "partitions revoked; committing");
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!("commit on revoke: {e}");
            }
        }
    }
}

fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.librdkafka {
        config.set(key, &value.0);
    }
    config.set("bootstrap.servers", &kafka.brokers.0);
    config
}

/// The dead-letter topic of `plugin`.
pub fn dead_letter_topic(kafka: &KafkaConfig, plugin: &str) -> String {
    kafka
        .dead_letter_topic
        .replace("{topic}", &kafka.topic.0)
        .replace("{plugin}", plugin)
}

/// Consumes the topic for one plugin until `shutdown`.
pub fn consume(kafka: &KafkaConfig, mut dispatcher: Dispatcher, shutdown: &Shutdown) -> Result<()> {
    let prepared = dispatcher.prepared().clone();
    let plugin = prepared.name.to_string();
    let group = format!("{}{}", kafka.group_prefix, plugin);
    let topic = kafka.topic.0.clone();
    let consumer: BaseConsumer<CommitOnRevoke> = client_config(kafka)
        .set("group.id", &group)
        .set("client.id", format!("plugboard-{plugin}"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            kafka.commit_interval_ms.to_string(),
        )
        .set("auto.offset.reset", &kafka.start_from)
        .create_with_context(CommitOnRevoke)
        .with_context(|| format!("cannot create the consumer of group {group}"))?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    let producer: FutureProducer = client_config(kafka)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("client.id", format!("plugboard-{plugin}-dlq"))
        .create()
        .context("cannot create the dead-letter producer")?;
    let dead_letters = DeadLetters {
        producer,
        topic: dead_letter_topic(kafka, &plugin),
        plugin: plugin.clone(),
        sha256: prepared.sha256.clone(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    tracing::info!(
        plugin,
        group,
        topic,
        dead_letters = dead_letters.topic,
        "consuming"
    );

    let batch_size = prepared.spec.limits.batch_size;
    while !shutdown.is_requested() {
        let batch = poll_batch(&consumer, batch_size)?;
        let mut by_partition: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
        for message in batch {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(message);
        }
        for (partition, messages) in by_partition {
            if !settle(&mut dispatcher, &dead_letters, &messages, shutdown)? {
                break; // shutdown while a dead letter could not be written
            }
            let last = messages.last().expect("non-empty").offset();
            // A partition revoked while this batch was settled cannot take
            // the offset; its new owner redelivers from the last commit,
            // which idempotent plugins absorb.
            if let Err(e) = consumer.store_offset(&topic, partition, last) {
                tracing::warn!(
                    plugin,
                    partition,
                    offset = last,
                    "offset not stored ({e}); the partition's new owner redelivers"
                );
            }
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => tracing::warn!(plugin, "final commit failed: {e}"),
    }
    tracing::info!(plugin, "stopped; offsets committed");
    Ok(())
}

/// Up to `max` messages: waits briefly for the first, then takes what is
/// already fetched.
fn poll_batch(consumer: &BaseConsumer<CommitOnRevoke>, max: usize) -> Result<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let mut timeout = Duration::from_millis(100);
    while batch.len() < max {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(message)) => batch.push(message.detach()),
            Some(Err(e)) => {
                tracing::warn!("consumer error: {e}");
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(batch)
}

/// Decodes, dispatches and dead-letters one partition's messages. Returns
/// false if shutdown came while a dead letter was still unwritten: then
/// nothing of this batch may be stored.
fn settle(
    dispatcher: &mut Dispatcher,
    dead_letters: &DeadLetters,
    messages: &[OwnedMessage],
    shutdown: &Shutdown,
) -> Result<bool> {
    let mut events = Vec::with_capacity(messages.len());
    let mut event_message = Vec::with_capacity(messages.len());
    let mut failed: Vec<(usize, Failure)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let payload = message.payload().unwrap_or_default();
        match decode::from_protobuf(payload) {
            Ok(event) => {
                events.push(convert::to_wit(&event, envelope(message), payload.to_vec()));
                event_message.push(i);
            }
            Err(err) => failed.push((
                i,
                Failure {
                    class: FailureClass::Decode,
                    reason: err.to_string(),
                    attempts: 0,
                },
            )),
        }
    }
    if !events.is_empty() {
        for (k, outcome) in dispatcher.deliver(&events).into_iter().enumerate() {
            if let Outcome::DeadLetter(failure) = outcome {
                failed.push((event_message[k], failure));
            }
        }
    }
    failed.sort_by_key(|(i, _)| *i);
    for (i, failure) in failed {
        if !dead_letters.write(&messages[i], &failure, shutdown) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn envelope(message: &OwnedMessage) -> Envelope {
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

/// One plugin's dead-letter topic.
struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    plugin: String,
    sha256: String,
    runtime: tokio::runtime::Runtime,
}

impl DeadLetters {
    /// Writes the original message with the failure in `plugboard.*`
    /// headers, retrying until the broker acknowledges it. Returns false if
    /// shutdown came first.
    fn write(&self, original: &OwnedMessage, failure: &Failure, shutdown: &Shutdown) -> bool {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = original.headers() {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let partition = original.partition().to_string();
        let offset = original.offset().to_string();
        let attempts = failure.attempts.to_string();
        for (key, value) in [
            ("plugboard.plugin", self.plugin.as_str()),
            ("plugboard.component-sha256", self.sha256.as_str()),
            ("plugboard.failure-class", failure.class.as_str()),
            ("plugboard.reason", failure.reason.as_str()),
            ("plugboard.attempts", attempts.as_str()),
            ("plugboard.original-topic", original.topic()),
            ("plugboard.original-partition", partition.as_str()),
            ("plugboard.original-offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers.clone());
            if let Some(key) = original.key() {
                record = record.key(key);
            }
            if let Some(payload) = original.payload() {
                record = record.payload(payload);
            }
            match self
                .runtime
                .block_on(self.producer.send(record, Duration::from_secs(30)))
            {
                Ok(_) => {
                    tracing::warn!(
                        plugin = self.plugin,
                        partition = original.partition(),
                        offset = original.offset(),
                        class = failure.class.as_str(),
                        "dead-lettered to {}: {}",
                        self.topic,
                        failure.reason
                    );
                    return true;
                }
                Err((e, _)) => {
                    tracing::error!(
                        plugin = self.plugin,
                        "cannot write to {}: {e}; retrying",
                        self.topic
                    );
                    if !shutdown.sleep(delay) {
                        return false;
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Counts of the consumer group of `plugin`: committed offset and end of
/// every partition, for tests and lag reports.
pub fn group_lag(kafka: &KafkaConfig, plugin: &str) -> Result<i64> {
    let group = format!("{}{}", kafka.group_prefix, plugin);
    let consumer: BaseConsumer = client_config(kafka).set("group.id", &group).create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&kafka.topic.0), timeout)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in metadata.topics() {
        for p in topic.partitions() {
            tpl.add_partition(topic.name(), p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for element in committed.elements() {
        let (_, high) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
        let done = match element.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Ok(lag)
}
