//! One plugin's dead-letter topic: the original message, unchanged, with
//! the failure in `plugboard.*` headers. Written with acks=all and retried
//! until the broker takes it, because the offset is stored only after.

use std::time::Duration;

use anyhow::{Context, Result};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{client_config, dead_letter_topic};
use crate::config::KafkaConfig;
use crate::dispatch::Failure;
use crate::shutdown::Shutdown;

/// One plugin's dead-letter topic.
pub struct DeadLetters {
    producer: FutureProducer,
    pub topic: String,
    plugin: String,
    /// Drives the producer's futures; every partition worker of the plugin
    /// blocks on it, so it is multi-threaded.
    runtime: tokio::runtime::Runtime,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConfig, plugin: &str) -> Result<Self> {
        let producer: FutureProducer = client_config(kafka)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("client.id", format!("plugboard-{plugin}-dlq"))
            .create()
            .context("cannot create the dead-letter producer")?;
        Ok(DeadLetters {
            producer,
            topic: dead_letter_topic(kafka, plugin),
            plugin: plugin.to_string(),
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
        })
    }

    /// Writes the original message with the failure in `plugboard.*`
    /// headers (`sha256`: the plugin version that failed), retrying until
    /// the broker acknowledges it. Returns false if shutdown came first.
    pub fn write(
        &self,
        original: &OwnedMessage,
        failure: &Failure,
        sha256: &str,
        shutdown: &Shutdown,
    ) -> bool {
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
            ("plugboard.component-sha256", sha256),
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
