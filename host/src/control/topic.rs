//! The control topic: how the hosts of a plugin's group agree on what an
//! operator switched. One compacted partition, keyed `<kind>/<plugin>`
//! (`pause/crm-sync`, `rewind/crm-sync`, `redrive/crm-sync`), a JSON value
//! each. Every host reads it from the start when it starts, before any
//! plugin consumes, and follows it while it runs; an admin endpoint writes
//! to it (acknowledged by every in-sync replica) and every host, itself
//! included, applies what it reads.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::shutdown::Shutdown;
use crate::source::kafka::client::{Role, client_config};

/// How long a host waits at start for the topic to be read to its end.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The name of the control topic of `kafka`'s topic.
pub fn name(kafka: &KafkaConfig) -> String {
    kafka.control_topic.replace("{topic}", &kafka.topic.0)
}

/// What a host does with each record it reads: key, value.
pub type Apply = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// The writing end; the reading end runs on a thread of its own.
pub struct ControlTopic {
    pub topic: String,
    producer: FutureProducer,
}

impl ControlTopic {
    /// Makes the topic if missing, reads it to its end (each record handed
    /// to `apply`) and goes on following it until `shutdown`. A broker that
    /// does not answer at start is waited for [`CATCH_UP`] at most: then
    /// the host starts with the pauses kept in its data folder, and what
    /// the topic says applies as soon as it can be read.
    pub fn open(kafka: &KafkaConfig, apply: Apply, shutdown: &Shutdown) -> Result<Self> {
        let topic = name(kafka);
        let producer: FutureProducer = client_config(kafka, Role::Producer)
            .set("acks", "all")
            .set("client.id", "plugboard-control")
            .set("message.timeout.ms", "10000")
            .create()
            .context("cannot create the control topic's producer")?;
        let consumer: BaseConsumer = client_config(kafka, Role::Consumer)
            // No group: offsets are never committed, every host reads all.
            .set("group.id", "plugboard-control-reader")
            .set("enable.auto.commit", "false")
            .set("client.id", "plugboard-control")
            .create()
            .context("cannot create the control topic's reader")?;
        let (caught_up, wait) = std::sync::mpsc::sync_channel(1);
        let stop = shutdown.clone();
        let (kafka, name) = (kafka.clone(), topic.clone());
        std::thread::Builder::new()
            .name("plugboard-control".into())
            .spawn(move || {
                if let Err(e) = create(&kafka, &name) {
                    tracing::warn!("{e:#}");
                }
                // Where the topic ends now: read to there, the host knows
                // what was switched before it started.
                let end = loop {
                    match consumer.fetch_watermarks(&name, 0, Duration::from_secs(2)) {
                        Ok((_, high)) => break high,
                        Err(_) if !stop.sleep(Duration::from_secs(1)) => return,
                        Err(_) => {}
                    }
                };
                let mut assignment = rdkafka::TopicPartitionList::new();
                let assigned = assignment
                    .add_partition_offset(&name, 0, rdkafka::Offset::Beginning)
                    .and_then(|()| consumer.assign(&assignment));
                if let Err(e) = assigned {
                    tracing::error!("cannot read the control topic {name}: {e}");
                    return;
                }
                follow(consumer, end, apply, caught_up, stop);
            })?;
        if wait.recv_timeout(CATCH_UP).is_err() {
            tracing::warn!(
                "cannot read the control topic {topic} to its end in {CATCH_UP:?}: starting \
                 with the pauses kept here; what other hosts switched applies once it is read. \
                 Is the broker up, and may this host read and write {topic}?"
            );
        }
        Ok(ControlTopic { topic, producer })
    }

    /// Writes `value` under `key` and waits for the broker's acknowledgement.
    pub async fn publish(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        let payload = serde_json::to_vec(value)?;
        let record = FutureRecord::to(&self.topic).key(key).payload(&payload);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| {
                anyhow::anyhow!("cannot write to the control topic {}: {e}", self.topic)
            })?;
        Ok(())
    }
}

/// Reads the control topic until `stop`, telling `caught_up` once it
/// reached `end`, where it ended at start.
fn follow(
    consumer: BaseConsumer,
    end: i64,
    apply: Apply,
    caught_up: SyncSender<()>,
    stop: Shutdown,
) {
    let mut caught_up = Some(caught_up);
    let mut told = end == 0;
    // librdkafka queues one error per failed connection attempt: while the
    // broker is down they come in bursts of hundreds. One line per kind of
    // error every ten seconds says the same.
    let mut warned: Option<(String, std::time::Instant)> = None;
    if told && let Some(tx) = caught_up.take() {
        let _ = tx.try_send(());
    }
    while !stop.is_requested() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                if !told && message.offset() + 1 >= end {
                    told = true;
                    // Told after this record is applied, below.
                }
                let key = message
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if let Some(value) = message.payload() {
                    apply(&key, value);
                }
                if told && let Some(tx) = caught_up.take() {
                    let _ = tx.try_send(());
                }
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let again = warned.as_ref().is_some_and(|(last, at)| {
                    *last == text && at.elapsed() < Duration::from_secs(10)
                });
                if again {
                    tracing::debug!("reading the control topic: {text}");
                } else {
                    tracing::warn!("reading the control topic: {text}");
                    warned = Some((text, std::time::Instant::now()));
                }
            }
        }
    }
}

/// Creates the control topic (one partition, compacted, the broker's
/// replication factor) unless it exists.
fn create(kafka: &KafkaConfig, topic: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, Role::Producer)
        .create()
        .context("cannot create an admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = runtime
        .block_on(
            admin.create_topics(
                &[new],
                &AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(10)))
                    .request_timeout(Some(Duration::from_secs(10))),
            ),
        )
        .with_context(|| format!("cannot create the control topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => bail!(
                "cannot create the control topic {topic}: {code}; create it (one partition, \
                 cleanup.policy=compact) or allow this host to"
            ),
        }
    }
    Ok(())
}
