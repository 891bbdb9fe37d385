//! One plugin's dead-letter topic: the original message, unchanged, with
//! the failure in `plugboard.*` headers. Written with acks=all and retried
//! until the broker takes it, because the offset is stored only after; while
//! it cannot be written the partition holds (a host failure, never a reason
//! to drop the event) and the host is not ready.

use std::time::Duration;

use std::sync::OnceLock;

use anyhow::Result;
use rdkafka::config::ClientConfig;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::dispatch::Failure;
use crate::hold::Cause;
use crate::observe::HostEvent;
use crate::runtime::Prepared;
use crate::shutdown::Shutdown;
use crate::source::kafka::client::{Role, client_config, dead_letter_topic};
use crate::source::kafka::client_log::{ClientLog, ProducerContext};

/// One plugin's dead-letter topic.
pub struct Topic {
    config: ClientConfig,
    /// Made at the first dead letter: a producer polls on a thread of its
    /// own (4% of the host's CPU in a no-op run, with nothing to send).
    producer: OnceLock<FutureProducer<ProducerContext>>,
    pub topic: String,
    plugin: String,
}

impl Topic {
    pub fn new(kafka: &KafkaConfig, plugin: &str) -> Result<Self> {
        let mut config = client_config(kafka, Role::Producer);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("client.id", format!("plugboard-{plugin}-dlq"));
        Ok(Topic {
            config,
            producer: OnceLock::new(),
            topic: dead_letter_topic(kafka, plugin),
            plugin: plugin.to_string(),
        })
    }

    /// The producer, made now if this is the first dead letter. A producer
    /// that cannot be made is a failure of the host: the partition holds.
    fn producer(&self) -> Result<&FutureProducer<ProducerContext>, String> {
        if let Some(producer) = self.producer.get() {
            return Ok(producer);
        }
        let made = self
            .config
            .create_with_context(ProducerContext(ClientLog::new(format!(
                "{} dead letters",
                self.plugin
            ))))
            .map_err(|e| format!("cannot create the dead-letter producer: {e}"))?;
        // Two partitions' first dead letters may race: one producer stays.
        Ok(self.producer.get_or_init(|| made))
    }
}

impl<M: Message> super::DeadLetters<M> for Topic {
    /// Writes the original message with the failure in `plugboard.*`
    /// headers (`sha256` of `version`, the plugin version that failed),
    /// retrying until the broker acknowledges it, then counts it.
    fn park(
        &self,
        original: &M,
        failure: &Failure,
        version: &Prepared,
        shutdown: &Shutdown,
    ) -> bool {
        let sha256 = version.sha256.as_str();
        let metrics = version.metrics();
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers.clone());
            if let Some(key) = original.key() {
                record = record.key(key);
            }
            if let Some(payload) = original.payload() {
                record = record.payload(payload);
            }
            // The producer's own thread completes the delivery report: the
            // worker just waits for it, no async runtime needed.
            let delivered = match self.producer() {
                Err(e) => Err(e),
                Ok(producer) => match producer.send_result(record) {
                    Ok(report) => match futures::executor::block_on(report) {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("the producer dropped the delivery report".to_string()),
                    },
                    Err((e, _)) => Err(e.to_string()),
                },
            };
            match delivered {
                Ok(()) => {
                    HostEvent::DeadLettered {
                        plugin: &self.plugin,
                        partition: original.partition(),
                        offset: original.offset(),
                        class: failure.class.as_str(),
                        reason: &failure.reason,
                        sink: &self.topic,
                    }
                    .emit(metrics);
                    if let Some(lasted) = metrics.holds.release(&self.plugin, original.partition())
                    {
                        tracing::info!(
                            plugin = self.plugin,
                            partition = original.partition(),
                            "dead-letter topic {} writable again after {lasted:.1?}",
                            self.topic
                        );
                    }
                    return true;
                }
                Err(e) => {
                    let reason =
                        format!("cannot write to the dead-letter topic {}: {e}", self.topic);
                    if metrics
                        .holds
                        .hold(&self.plugin, original.partition(), Cause::Host, &reason)
                    {
                        tracing::error!(
                            plugin = self.plugin,
                            partition = original.partition(),
                            "{reason}; the partition holds and retries"
                        );
                    }
                    let delay = crate::dispatch::jittered_backoff(
                        Duration::from_millis(100),
                        Duration::from_secs(10),
                        attempt,
                    );
                    if !shutdown.sleep(delay) {
                        return false;
                    }
                }
            }
        }
    }
}
