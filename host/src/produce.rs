//! `plugboard produce`: publishes booking events to a topic as protobuf,
//! keyed by booking id (so one booking's events stay in order on one
//! partition): realistic generated lifecycles, or the lines of an NDJSON file.
//! A line that is not a valid event is published as its raw bytes, which is
//! how poison messages are made for tests.
//!
//! With `--schema` the lines are written with a newer (or older) writer's
//! schema; with `--registry` the schema is registered first and every
//! message framed with its id, as a producer using a registry does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{decode, generate};

/// The schema messages are written with.
#[derive(Default)]
pub struct Writing {
    /// The writer's message (`--schema`); none: the compiled `booking.v1`.
    pub message: Option<prost_reflect::MessageDescriptor>,
    /// The registry id every message is framed with (`--registry`).
    pub id: Option<u32>,
}

/// The project's own schema, as the registry gets it.
pub const BOOKING_PROTO: &str = include_str!("../../proto/booking/v1/booking.proto");

impl Writing {
    /// Reads `schema` (a `.proto` file or a descriptor set) if given, and
    /// registers it (or the project's schema) under `subject` at
    /// `registry` if given.
    pub fn new(
        schema: Option<&std::path::Path>,
        registry: Option<(&str, &str)>,
    ) -> Result<Writing> {
        let message = schema
            .map(|path| {
                crate::schema::load_file(path, crate::schema::writer::COMPILED_MESSAGE)
                    .map(|w| w.message)
            })
            .transpose()?;
        let id = match registry {
            None => None,
            Some((url, subject)) => {
                let text = match schema {
                    None => BOOKING_PROTO.to_string(),
                    Some(path) if path.extension().is_some_and(|e| e == "proto") => {
                        std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read {}", path.display()))?
                    }
                    Some(path) => anyhow::bail!(
                        "{}: a registry takes the schema as .proto text; give --schema the .proto file",
                        path.display()
                    ),
                };
                let registry =
                    crate::schema::Registry::new(url, None, Duration::from_secs(30), None)?;
                let id = registry.register(subject, &text)?;
                eprintln!("schema registered under subject {subject} at {url}: id {id}");
                Some(id)
            }
        };
        Ok(Writing { message, id })
    }

    /// `line` (proto3 JSON) as the writer's protobuf, if it is an event.
    fn encode_line(&self, line: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        match &self.message {
            None => {
                let e = decode::from_json(line).ok()?;
                Some((
                    e.booking_id.clone().into_bytes(),
                    self.frame(e.encode_to_vec()),
                ))
            }
            Some(message) => {
                let dynamic = crate::schema::from_json(message, line).ok()?;
                let key = dynamic
                    .get_field_by_name("booking_id")
                    .and_then(|v| v.as_str().map(|s| s.as_bytes().to_vec()))
                    .filter(|k| !k.is_empty())?;
                Some((key, self.frame(dynamic.encode_to_vec())))
            }
        }
    }

    fn frame(&self, body: Vec<u8>) -> Vec<u8> {
        match self.id {
            None => body,
            Some(id) => {
                let mut framed = crate::framing::header(id).to_vec();
                framed.extend_from_slice(&body);
                framed
            }
        }
    }
}

/// What to publish.
pub enum Input {
    Generate { bookings: usize, seed: u64 },
    Events(PathBuf),
}

/// Creates `topic` with `partitions` partitions (replication 1) unless it
/// exists; a topic made by the broker's auto-creation would get the
/// broker's default count instead.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create the admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .with_context(|| format!("cannot create {topic} at {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => anyhow::bail!("cannot create {topic} at {brokers}: {code}"),
        }
    }
    Ok(())
}

/// What was published.
#[derive(Debug)]
pub struct Report {
    pub events: u64,
    /// Lines that were not valid events, published as raw bytes.
    pub raw: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.events + self.raw;
        write!(
            f,
            "published {total} messages in {:.2?} ({:.0} messages/s)",
            self.elapsed,
            total as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        if self.raw > 0 {
            write!(
                f,
                "; {} lines were not valid events and went out as raw bytes",
                self.raw
            )?;
        }
        Ok(())
    }
}

/// A message to publish: key (the booking id) and value.
type Outgoing = (Option<Vec<u8>>, Vec<u8>);

/// Every message to publish, in order, and how many are raw lines.
fn messages(input: &Input, writing: &Writing) -> Result<(Vec<Outgoing>, u64)> {
    match input {
        Input::Generate { bookings, seed } => Ok((
            generate::lifecycles(*bookings, *seed, generate::DEFAULT_START)
                .into_iter()
                .map(|e| {
                    (
                        Some(e.booking_id.clone().into_bytes()),
                        writing.frame(e.encode_to_vec()),
                    )
                })
                .collect(),
            0,
        )),
        Input::Events(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read events file {}", path.display()))?;
            let mut raw = 0;
            let messages = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|line| match writing.encode_line(line) {
                    Some((key, value)) => (Some(key), value),
                    None => {
                        raw += 1;
                        (None, line.as_bytes().to_vec())
                    }
                })
                .collect();
            Ok((messages, raw))
        }
    }
}

/// Publishes `input` to `topic`, waiting for every acknowledgement.
pub fn produce(brokers: &str, topic: &str, input: &Input, writing: &Writing) -> Result<Report> {
    let (messages, raw) = messages(input, writing)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("cannot create the producer")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = ProgressBar::new(messages.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    runtime.block_on(async {
        // Bounded in flight: enough to keep batches full, not the whole file.
        for chunk in messages.chunks(1_000) {
            let sends = chunk.iter().map(|(key, value)| {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
                if let Some(key) = key {
                    record = record.key(key);
                }
                producer.send(record, Duration::from_secs(30))
            });
            for result in futures::future::join_all(sends).await {
                result
                    .map_err(|(e, _)| e)
                    .with_context(|| format!("cannot publish to {topic} at {brokers}"))?;
            }
            bar.inc(chunk.len() as u64);
        }
        anyhow::Ok(())
    })?;
    bar.finish_and_clear();
    Ok(Report {
        events: messages.len() as u64 - raw,
        raw,
        elapsed: started.elapsed(),
    })
}
