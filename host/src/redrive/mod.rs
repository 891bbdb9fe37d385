//! Redrive: a plugin's dead letters delivered again to that plugin alone,
//! after a fix, through the same settle and dispatch as the topic's events
//! (budgets, retries, holds). An event that fails again is parked again,
//! with its attempts added up and `plugboard.redrive-of` naming the record
//! it came from.
//!
//! In: the plugin's dead-letter topic up to its end when the redrive
//! started, less what earlier redrives settled, what a filter leaves out
//! (`class`, `since`) and records marked superseded
//! (`plugboard.superseded`). Out: each of them handled or parked again, in
//! the original order of its partition; the progress under
//! `redrive/<plugin>` in the control topic after every record, so every
//! host shows it and a host that crashed goes on where it stopped (a
//! record it parked again before the crash is found by its
//! `plugboard.redrive-of` and not parked twice).
//!
//! The records of one redrive are held in memory while it runs: redrive a
//! very large dead-letter topic in parts, by `class` or `since`.

pub mod runs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::catalog::LivePlugin;
use crate::config::KafkaConfig;
use crate::control::{Control, now_ms};
use crate::dead_letter::DeadLetters;
use crate::dead_letter::topic::Topic;
use crate::dispatch::{Dispatcher, Failure};
use crate::runtime::Prepared;
use crate::shutdown::Shutdown;
use crate::source::kafka::client::{Role, client_config, dead_letter_topic};

/// The header that marks a dead letter a later version made obsolete: a
/// redrive skips it.
pub const SUPERSEDED: &str = "plugboard.superseded";
/// The header of a superseded marker: `<partition>/<offset>` of the dead
/// letter (in the same dead-letter partition) it supersedes.
pub const SUPERSEDES: &str = "plugboard.supersedes";
/// The header of a dead letter parked again by a redrive: `<redrive
/// id>/<partition>/<offset>` of the record it came from.
pub const REDRIVE_OF: &str = "plugboard.redrive-of";

/// How long each question to the broker may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a redrive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedriveState {
    Running,
    /// Every record it took is handled or parked again.
    Done,
    /// Stopped by a host failure (see `error`); a new redrive goes on.
    Failed,
}

/// A redrive's progress, as the control topic carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    /// The host running it.
    pub owner: String,
    pub state: RedriveState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Only dead letters parked at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only dead letters this version parked (`plugboard.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why each record taken is marked superseded once settled (a
    /// rollback's redrive), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersede: Option<String>,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The dead-letter topic's end per partition when it started: what is
    /// parked later (again, or anew) is for the next redrive.
    pub end: BTreeMap<i32, i64>,
    /// Records of the dead-letter topic settled by this and earlier
    /// redrives, as `[from, to)` ranges per partition.
    pub done: BTreeMap<i32, Vec<(i64, i64)>>,
    /// Records taken (matching, not yet settled by an earlier redrive).
    pub read: u64,
    pub handled: u64,
    pub parked_again: u64,
    /// Marked superseded, so not delivered.
    pub skipped: u64,
    /// Taken and not settled yet.
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Progress {
    /// A new redrive of what `filter` takes, owned by `owner`; `done` is
    /// what earlier redrives settled.
    pub fn new(owner: &str, filter: &Filter, done: BTreeMap<i32, Vec<(i64, i64)>>) -> Self {
        let now = now_ms();
        Progress {
            id: format!("{now:x}-{:x}", std::process::id()),
            owner: owner.to_string(),
            state: RedriveState::Running,
            class: filter.class.clone(),
            since: filter.since.clone(),
            version: filter.version.clone(),
            supersede: None,
            started_ms: now,
            updated_ms: now,
            end: BTreeMap::new(),
            done,
            read: 0,
            handled: 0,
            parked_again: 0,
            skipped: 0,
            remaining: 0,
            error: None,
        }
    }

    /// The filter this redrive was started with.
    pub fn filter(&self) -> Filter {
        Filter {
            class: self.class.clone(),
            since: self.since.clone(),
            version: self.version.clone(),
        }
    }

    fn settled(&mut self, partition: i32, offset: i64) {
        let ranges = self.done.entry(partition).or_default();
        ranges.push((offset, offset + 1));
        ranges.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for &(from, to) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        *ranges = merged;
        self.remaining = self.remaining.saturating_sub(1);
        self.updated_ms = now_ms();
    }

    fn is_done(&self, partition: i32, offset: i64) -> bool {
        self.done
            .get(&partition)
            .is_some_and(|r| r.iter().any(|&(from, to)| from <= offset && offset < to))
    }

    /// Whether the host running it has not been heard of for a while: it
    /// died, and another may go on with it.
    pub fn stale(&self) -> bool {
        now_ms().saturating_sub(self.updated_ms) > 60_000
    }
}

/// What to redrive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<String>,
    pub since: Option<String>,
    /// Only what this version parked.
    pub version: Option<String>,
}

impl Filter {
    fn since_ms(&self) -> Result<Option<i64>, String> {
        self.since
            .as_deref()
            .map(|s| {
                crate::source::kafka::rewind::time_ms(s)
                    .ok_or_else(|| format!("`since` must be an RFC 3339 time, not `{s}`"))
            })
            .transpose()
    }

    /// Checks the filter before a redrive starts.
    pub fn check(&self) -> Result<(), String> {
        if let Some(class) = &self.class
            && !crate::dispatch::FailureClass::is_name(class)
        {
            return Err(format!(
                "`{class}` is not a failure class (one of {})",
                crate::dispatch::FailureClass::NAMES.join(", ")
            ));
        }
        self.since_ms().map(|_| ())
    }
}

/// This host's name in a redrive's progress, the same after a restart:
/// its `instance_id`, else the machine's name and the data folder.
pub fn host_id(kafka: &KafkaConfig, data_dir: &std::path::Path) -> String {
    if let Some(id) = kafka.instance_id.as_ref().filter(|i| !i.0.is_empty()) {
        return id.0.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{host}:{}", dir.display())
}

/// One dead letter taken: the record as it is delivered again, and where
/// it sits in the dead-letter topic.
struct Taken {
    message: OwnedMessage,
    dlq_partition: i32,
    dlq_offset: i64,
    attempts: u32,
    /// The dead letter's key, for its superseded marker.
    dlq_key: Option<Vec<u8>>,
}

/// Runs (or goes on with) the redrive `progress` of `live`'s plugin until
/// it is done or `stop`, publishing its progress through `control`.
pub fn run(
    kafka: &KafkaConfig,
    live: Arc<LivePlugin>,
    control: &Control,
    mut progress: Progress,
    filter: &Filter,
    stop: &Shutdown,
) -> Progress {
    let plugin = live.current().name.to_string();
    // One runtime for the progress records of the whole redrive.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let key = format!("redrive/{plugin}");
    let publish = |progress: &Progress| {
        let value = serde_json::to_value(progress).expect("progress is JSON");
        let published = match &runtime {
            Ok(rt) => rt.block_on(control.publish(&key, value)),
            Err(e) => Err(anyhow::anyhow!("no runtime to write it with: {e}")),
        };
        if let Err(e) = published {
            tracing::warn!(plugin, "cannot record the redrive's progress: {e:#}");
        }
    };
    let outcome = (|| -> Result<()> {
        let skipped = progress.skipped;
        let mut taken = take(kafka, &plugin, &mut progress, filter)?;
        live.current()
            .metrics()
            .redriven
            .with_label_values(&[&plugin, "skipped"])
            .inc_by(progress.skipped - skipped);
        publish(&progress);
        tracing::info!(
            plugin,
            redrive = progress.id,
            records = taken.len(),
            skipped = progress.skipped,
            "redriving dead letters"
        );
        // The original order of each partition.
        taken.sort_by_key(|t| (t.message.partition(), t.message.offset()));
        let dead_letters = Topic::new(kafka, &plugin)?;
        let mut dispatchers: BTreeMap<i32, Dispatcher> = BTreeMap::new();
        for t in &taken {
            let partition = t.message.partition();
            let dispatcher = dispatchers
                .entry(partition)
                .or_insert_with(|| Dispatcher::lazy(live.clone(), partition));
            dispatcher.follow();
            let again = Again {
                topic: &dead_letters,
                attempts: t.attempts,
                parked: std::sync::atomic::AtomicBool::new(false),
            };
            let settled =
                crate::settle::settle(dispatcher, std::slice::from_ref(&t.message), &again, stop);
            if settled == 0 {
                anyhow::bail!("stopped before it ended");
            }
            let metrics = live.current().metrics().clone();
            if again.parked.load(std::sync::atomic::Ordering::Relaxed) {
                progress.parked_again += 1;
                metrics
                    .redriven
                    .with_label_values(&[&plugin, "dead_lettered"])
                    .inc();
            } else {
                progress.handled += 1;
                metrics
                    .redriven
                    .with_label_values(&[&plugin, "handled"])
                    .inc();
            }
            if let Some(why) = &progress.supersede {
                let headers = [
                    (SUPERSEDED, why.clone()),
                    (SUPERSEDES, format!("{}/{}", t.dlq_partition, t.dlq_offset)),
                    ("plugboard.plugin", plugin.clone()),
                    ("plugboard.redrive", progress.id.clone()),
                ];
                if !dead_letters.mark(t.dlq_partition, t.dlq_key.as_deref(), &headers, stop) {
                    anyhow::bail!("stopped before it ended");
                }
            }
            progress.settled(t.dlq_partition, t.dlq_offset);
            publish(&progress);
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            progress.state = RedriveState::Done;
            tracing::info!(
                plugin,
                redrive = progress.id,
                handled = progress.handled,
                parked_again = progress.parked_again,
                skipped = progress.skipped,
                "redrive done"
            );
        }
        Err(e) if stop.is_requested() => {
            // Left running: the host goes on with it when it starts again.
            tracing::info!(
                plugin,
                redrive = progress.id,
                "redrive stopped: {e:#}; it goes on after a restart"
            );
            return progress;
        }
        Err(e) => {
            progress.state = RedriveState::Failed;
            progress.error = Some(format!("{e:#}"));
            tracing::error!(plugin, redrive = progress.id, "redrive failed: {e:#}");
        }
    }
    progress.updated_ms = now_ms();
    publish(&progress);
    progress
}

/// The dead letters this redrive delivers, read from the dead-letter
/// topic up to `progress.end` (set now if it is a new one).
fn take(
    kafka: &KafkaConfig,
    plugin: &str,
    progress: &mut Progress,
    filter: &Filter,
) -> Result<Vec<Taken>> {
    let topic = dead_letter_topic(kafka, plugin);
    let consumer: BaseConsumer = client_config(kafka, Role::Consumer)
        .set("group.id", "plugboard-redrive-reader")
        .set("enable.auto.commit", "false")
        .set("client.id", format!("plugboard-{plugin}-redrive"))
        .create()
        .context("cannot create a reader of the dead-letter topic")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), TIMEOUT)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut bounds = BTreeMap::new();
    for &p in &partitions {
        bounds.insert(p, consumer.fetch_watermarks(&topic, p, TIMEOUT)?);
    }
    let resuming = !progress.end.is_empty();
    if !resuming {
        progress.end = bounds.iter().map(|(&p, &(_, high))| (p, high)).collect();
    }
    let since = filter.since_ms().map_err(anyhow::Error::msg)?;
    let mut taken = Vec::new();
    // Dead letters a marker says are superseded, per partition.
    let mut superseded = std::collections::HashSet::new();
    // Parked again by this redrive before a crash: settled already.
    let mut reparked = std::collections::HashSet::new();
    let mut tpl = TopicPartitionList::new();
    for (&p, &(low, high)) in &bounds {
        let start = progress
            .done
            .get(&p)
            .and_then(|r| r.first())
            .filter(|&&(from, _)| from <= low)
            .map_or(low, |&(_, to)| to.max(low));
        let until = if resuming { high } else { progress.end[&p] };
        if start < until {
            tpl.add_partition_offset(&topic, p, Offset::Offset(start))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(taken);
    }
    consumer.assign(&tpl)?;
    let mut open: BTreeMap<i32, i64> = tpl
        .elements()
        .iter()
        .map(|e| (e.partition(), bounds[&e.partition()].1))
        .collect();
    let mut quiet = std::time::Instant::now();
    while !open.is_empty() {
        let message = match consumer.poll(Duration::from_millis(200)) {
            None if quiet.elapsed() > TIMEOUT => {
                anyhow::bail!("the dead-letter topic {topic} stopped answering while being read")
            }
            None => continue,
            Some(Err(e)) => return Err(e).context(format!("cannot read {topic}")),
            Some(Ok(m)) => m,
        };
        quiet = std::time::Instant::now();
        let (p, o) = (message.partition(), message.offset());
        if open.get(&p).is_some_and(|&until| o + 1 >= until) {
            open.remove(&p);
        }
        let header = |name: &str| -> Option<String> {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if o >= progress.end.get(&p).copied().unwrap_or(0) {
            // Parked after the redrive started: only this redrive's own
            // records parked again matter, to not park them twice.
            if let Some(of) = header(REDRIVE_OF)
                && let Some(rest) = of.strip_prefix(&format!("{}/", progress.id))
                && let Some((rp, ro)) = rest.split_once('/')
                && let (Ok(rp), Ok(ro)) = (rp.parse::<i32>(), ro.parse::<i64>())
            {
                reparked.insert((rp, ro));
            }
            continue;
        }
        if progress.is_done(p, o) {
            continue;
        }
        if header(SUPERSEDED).is_some() {
            if let Some((sp, so)) = header(SUPERSEDES)
                .as_deref()
                .and_then(|s| s.split_once('/'))
                && let (Ok(sp), Ok(so)) = (sp.parse::<i32>(), so.parse::<i64>())
            {
                // A marker: its dead letter, read before it, is skipped.
                superseded.insert((sp, so));
            }
            progress.skipped += 1;
            progress.settled(p, o);
            continue;
        }
        let class = header("plugboard.failure-class").unwrap_or_default();
        if filter.class.as_ref().is_some_and(|c| *c != class) {
            continue;
        }
        if filter
            .version
            .as_ref()
            .is_some_and(|v| header("plugboard.version").as_ref() != Some(v))
        {
            continue;
        }
        if since.is_some_and(|since| message.timestamp().to_millis().unwrap_or(0) < since) {
            continue;
        }
        let (Some(topic), Some(partition), Some(offset)) = (
            header("plugboard.original-topic"),
            header("plugboard.original-partition").and_then(|v| v.parse().ok()),
            header("plugboard.original-offset").and_then(|v| v.parse().ok()),
        ) else {
            tracing::warn!(
                plugin,
                partition = p,
                offset = o,
                "a record of the dead-letter topic without plugboard headers is left alone"
            );
            continue;
        };
        let attempts = header("plugboard.attempts")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let redrives: u32 = header("plugboard.redrives")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let mut headers = OwnedHeaders::new();
        if let Some(h) = message.headers() {
            for h in h.iter().filter(|h| !h.key.starts_with("plugboard.")) {
                headers = headers.insert(h);
            }
        }
        let of = format!("{}/{p}/{o}", progress.id);
        let count = (redrives + 1).to_string();
        headers = headers
            .insert(Header {
                key: REDRIVE_OF,
                value: Some(of.as_bytes()),
            })
            .insert(Header {
                key: "plugboard.redrives",
                value: Some(count.as_bytes()),
            });
        let (payload, key) = if header("plugboard.payload-omitted").is_some() {
            original(kafka, &topic, partition, offset)?
        } else {
            (
                message.payload().map(<[u8]>::to_vec),
                message.key().map(<[u8]>::to_vec),
            )
        };
        taken.push(Taken {
            message: OwnedMessage::new(
                payload,
                key,
                topic,
                message.timestamp(),
                partition,
                offset,
                Some(headers),
            ),
            dlq_partition: p,
            dlq_offset: o,
            attempts,
            dlq_key: message.key().map(<[u8]>::to_vec),
        });
    }
    // What a marker superseded is settled, not delivered: the marker was
    // counted as skipped.
    taken.retain(|t| {
        let gone = superseded.contains(&(t.dlq_partition, t.dlq_offset));
        if gone {
            progress.settled(t.dlq_partition, t.dlq_offset);
        }
        !gone
    });
    if resuming {
        taken.retain(|t| {
            let again = reparked.contains(&(t.dlq_partition, t.dlq_offset));
            if again {
                progress.parked_again += 1;
                progress.settled(t.dlq_partition, t.dlq_offset);
            }
            !again
        });
    } else {
        progress.read = taken.len() as u64;
    }
    progress.remaining = taken.len() as u64;
    Ok(taken)
}

type PayloadAndKey = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The payload and key of a record of the source topic: for a dead letter
/// parked without them.
fn original(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<PayloadAndKey> {
    let consumer: BaseConsumer = client_config(kafka, Role::Consumer)
        .set("group.id", "plugboard-redrive-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            if m.offset() == offset {
                return Ok((m.payload().map(<[u8]>::to_vec), m.key().map(<[u8]>::to_vec)));
            }
            anyhow::bail!(
                "the dead letter's original ({topic} partition {partition} offset {offset}) is no longer kept"
            );
        }
    }
    anyhow::bail!(
        "cannot read the dead letter's original ({topic} partition {partition} offset {offset})"
    )
}

/// The dead-letter topic, for records a redrive parks again: their
/// attempts add up.
struct Again<'a> {
    topic: &'a Topic,
    attempts: u32,
    parked: std::sync::atomic::AtomicBool,
}

impl DeadLetters<OwnedMessage> for Again<'_> {
    fn park(
        &self,
        record: &OwnedMessage,
        failure: &Failure,
        version: &Prepared,
        stop: &Shutdown,
    ) -> bool {
        let mut failure = failure.clone();
        failure.attempts += self.attempts;
        let parked = self.topic.park(record, &failure, version, stop);
        self.parked
            .store(parked, std::sync::atomic::Ordering::Relaxed);
        parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_records_merge_into_ranges() {
        let mut p = Progress {
            id: "x".into(),
            owner: "h".into(),
            state: RedriveState::Running,
            class: None,
            since: None,
            version: None,
            supersede: None,
            started_ms: 0,
            updated_ms: 0,
            end: BTreeMap::new(),
            done: BTreeMap::new(),
            read: 4,
            handled: 0,
            parked_again: 0,
            skipped: 0,
            remaining: 4,
            error: None,
        };
        for o in [3, 1, 2, 7] {
            p.settled(0, o);
        }
        assert_eq!(p.done[&0], vec![(1, 4), (7, 8)]);
        assert!(p.is_done(0, 2) && !p.is_done(0, 4) && !p.is_done(1, 2));
        assert_eq!(p.remaining, 0);
    }
}
