//! The settings of the Kafka clients a plugin uses: its consumer and its
//! dead-letter producer, from the one `[kafka]` table.

use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

/// Which kind of client a config is for: `[kafka.librdkafka]` serves both,
/// and a setting only the other kind knows is left out, instead of making
/// librdkafka warn (CONFWARN) on every start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// Settings librdkafka's CONFIGURATION.md (2.12) marks consumer-only ("C").
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "offset.store.method",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.commit.enable",
    "auto.offset.reset",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "consume.callback.max.messages",
];

/// Settings it marks producer-only ("P").
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
    "compression.level",
];

pub fn client_config(kafka: &KafkaConfig, role: Role) -> ClientConfig {
    let other_only = match role {
        Role::Consumer => PRODUCER_ONLY,
        Role::Producer => CONSUMER_ONLY,
    };
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.librdkafka {
        if !other_only.contains(&key.as_str()) {
            config.set(key, &value.0);
        }
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
