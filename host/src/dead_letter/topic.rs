//! One plugin's dead-letter topic: the original message, unchanged, with
//! the failure in `plugboard.*` headers ([`super::Letter`]). Written with
//! acks=all, because the offset is stored only after the broker has it.
//!
//! Every write ends:
//! - an attempt waits at most `message.timeout.ms` (10 s here unless
//!   `[kafka.librdkafka]` says otherwise), and returns at once when the
//!   partition's worker is stopped (a revoke, a removal, SIGTERM): the
//!   event is not settled and its next owner parks it again, so a
//!   rebalance is never held up by a dead-letter write;
//! - a record the topic refuses as too large or invalid is written again
//!   at once without the original payload, key and headers, with
//!   `plugboard.payload-omitted` saying why (the original topic, partition
//!   and offset are there to fetch it): the event is still parked; if even
//!   that is refused (the topic's limit is below the headers), the
//!   partition holds, and each attempt tries the whole record first;
//! - a producer that failed fatally (its idempotence broken) is replaced;
//! - any other failure (the broker, authorization) holds the partition as
//!   a failure of the host, retried with backoff, never a reason to drop
//!   the event, and the host is not ready meanwhile.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::Letter;
use crate::config::KafkaConfig;
use crate::dispatch::Failure;
use crate::hold::Cause;
use crate::locks::Lock;
use crate::observe::HostEvent;
use crate::runtime::Prepared;
use crate::shutdown::Shutdown;
use crate::source::kafka::client::{Role, client_config, dead_letter_topic};
use crate::source::kafka::client_log::{ClientLog, ProducerContext};

/// How long one attempt to write a dead letter may take, unless the
/// librdkafka settings say otherwise (librdkafka's default is 300 s).
const ATTEMPT_TIMEOUT_MS: &str = "10000";

type DlqProducer = FutureProducer<ProducerContext>;

/// One plugin's dead-letter topic.
pub struct Topic {
    config: ClientConfig,
    /// Made at the first dead letter (a producer polls on a thread of its
    /// own: 4% of the host's CPU in a no-op run, with nothing to send),
    /// and made again after a fatal error.
    producer: Mutex<Option<Arc<DlqProducer>>>,
    pub topic: String,
    plugin: String,
}

/// How one attempt ended.
enum Sent {
    Delivered,
    /// The worker was stopped meanwhile.
    Stopped,
    /// The topic will never take this record as it is.
    Refused(String),
    /// Try again later.
    Failed(String),
}

impl Topic {
    pub fn new(kafka: &KafkaConfig, plugin: &str) -> Result<Self> {
        let mut config = client_config(kafka, Role::Producer);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("client.id", format!("plugboard-{plugin}-dlq"));
        let bounded = ["message.timeout.ms", "delivery.timeout.ms"];
        if !bounded.iter().any(|k| kafka.librdkafka.contains_key(*k)) {
            config.set("message.timeout.ms", ATTEMPT_TIMEOUT_MS);
        }
        Ok(Topic {
            config,
            producer: Mutex::new(None),
            topic: dead_letter_topic(kafka, plugin),
            plugin: plugin.to_string(),
        })
    }

    /// The producer, made now if there is none. A producer that cannot be
    /// made is a failure of the host: the partition holds.
    fn producer(&self) -> Result<Arc<DlqProducer>, String> {
        let mut slot = self.producer.locked();
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let made: DlqProducer = self
            .config
            .create_with_context(ProducerContext(ClientLog::new(format!(
                "{} dead letters",
                self.plugin
            ))))
            .map_err(|e| format!("cannot create the dead-letter producer: {e}"))?;
        Ok(slot.insert(Arc::new(made)).clone())
    }

    /// Drops `producer` if it failed fatally: the next attempt makes a new
    /// one (an idempotent producer that lost a message's sequence refuses
    /// everything after).
    fn replace_if_fatal(&self, producer: &DlqProducer, error: &KafkaError) {
        let fatal = error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
            || producer.client().fatal_error().is_some();
        if fatal {
            tracing::error!(
                plugin = self.plugin,
                "the dead-letter producer failed fatally ({error}); making a new one"
            );
            let mut slot = self.producer.locked();
            if slot.as_ref().is_some_and(|p| std::ptr::eq(&**p, producer)) {
                *slot = None;
            }
        }
    }

    /// One attempt to write `record`, bounded by `message.timeout.ms` and
    /// cut short by `stop`.
    fn send(&self, record: FutureRecord<'_, [u8], [u8]>, stop: &Shutdown) -> Sent {
        let producer = match self.producer() {
            Ok(p) => p,
            Err(e) => return Sent::Failed(e),
        };
        let error = match producer.send_result(record) {
            Err((e, _)) => e,
            // The producer's own thread completes the delivery report: the
            // worker waits for it here, no async runtime needed.
            Ok(report) => match stop.block_on(report) {
                None => return Sent::Stopped,
                Some(Ok(Ok(_))) => return Sent::Delivered,
                Some(Ok(Err((e, _)))) => e,
                Some(Err(_)) => {
                    return Sent::Failed("the producer dropped the delivery report".into());
                }
            },
        };
        self.replace_if_fatal(&producer, &error);
        if refuses_record(&error) {
            Sent::Refused(error.to_string())
        } else {
            Sent::Failed(error.to_string())
        }
    }
}

impl Topic {
    /// Writes a marker to partition `partition` of the dead-letter topic:
    /// a record without payload whose `headers` say which dead letter of
    /// that partition is superseded (see [`crate::redrive::SUPERSEDED`]).
    /// Tried until the broker has it or `stop`.
    pub fn mark(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        headers: &[(&str, String)],
        stop: &Shutdown,
    ) -> bool {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut owned = OwnedHeaders::new();
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .headers(owned);
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.send(record, stop) {
                Sent::Delivered => return true,
                Sent::Stopped => return false,
                Sent::Refused(e) | Sent::Failed(e) => tracing::warn!(
                    plugin = self.plugin,
                    "cannot mark a dead letter of {} superseded: {e}; trying again",
                    self.topic
                ),
            }
            if !back_off(attempt, stop) {
                return false;
            }
        }
    }
}

/// Waits before the next attempt to write (jittered, 100 ms doubling up
/// to 10 s); false if `stop` came meanwhile.
fn back_off(attempt: u32, stop: &Shutdown) -> bool {
    stop.sleep(crate::dispatch::jittered_backoff(
        Duration::from_millis(100),
        Duration::from_secs(10),
        attempt,
    ))
}

/// Whether the topic refuses this record as such (its size or form), so
/// writing it again the same way can never work.
fn refuses_record(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(MessageSizeTooLarge | InvalidMessageSize | InvalidRecord | InvalidMessage)
    )
}

impl<M: Message> super::DeadLetters<M> for Topic {
    /// Writes the original message with the failure in `plugboard.*`
    /// headers (`sha256` of `version`, the plugin version that failed),
    /// until the broker acknowledges it, then counts it.
    fn park(&self, original: &M, failure: &Failure, version: &Prepared, stop: &Shutdown) -> bool {
        let metrics = version.metrics();
        // Why the original is left out, once the topic refused it whole.
        let mut omitted: Option<String> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let letter = Letter {
                plugin: &self.plugin,
                sha256: &version.sha256,
                version: &version.version,
                failure,
                topic: original.topic(),
                partition: original.partition(),
                offset: original.offset(),
                omitted: omitted.as_deref(),
            };
            let mut headers = OwnedHeaders::new();
            if omitted.is_none()
                && let Some(h) = original.headers()
            {
                for h in h.iter() {
                    headers = headers.insert(h);
                }
            }
            let ours = letter.headers();
            for (key, value) in &ours {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if omitted.is_none() {
                if let Some(key) = original.key() {
                    record = record.key(key);
                }
                if let Some(payload) = original.payload() {
                    record = record.payload(payload);
                }
            }
            let error = match self.send(record, stop) {
                Sent::Delivered => {
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
                Sent::Stopped => return false,
                Sent::Refused(e) if omitted.is_none() => {
                    tracing::warn!(
                        plugin = self.plugin,
                        partition = original.partition(),
                        offset = original.offset(),
                        "the dead-letter topic {} refuses the record ({e}); parking it without its payload, key and headers",
                        self.topic
                    );
                    omitted = Some(format!(
                        "the dead-letter topic refused the whole record: {e}"
                    ));
                    attempt = 0;
                    continue;
                }
                Sent::Refused(e) | Sent::Failed(e) => {
                    // Refused even without the original, or failed for
                    // another reason: the next attempt, after the backoff,
                    // tries the whole record again (a topic whose limit was
                    // raised meanwhile takes it as it is).
                    omitted = None;
                    e
                }
            };
            let reason = format!(
                "cannot write to the dead-letter topic {}: {error}",
                self.topic
            );
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
            if !back_off(attempt, stop) {
                return false;
            }
        }
    }
}
