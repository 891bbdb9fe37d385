//! Moving a plugin's group to other offsets while the host runs.
//!
//! Kafka takes a commit from outside a group only while the group is
//! empty, and that is also the one moment no member can commit over the
//! move or keep reading from where it was. So a rewind goes: every host's
//! member of the group finishes its batches, commits and leaves (told
//! through the control topic); the group is empty; the new offsets are
//! committed; the members join again and start from them. Other plugins
//! and their groups go on meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::client::{Role, client_config};
use crate::config::KafkaConfig;

/// Where a rewind moves a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindTo {
    /// Every partition to its first event still kept.
    Earliest,
    /// Every partition to its end: what is there now is skipped.
    Latest,
    /// Every partition to its first event at or after this time (ms since
    /// the epoch), found through the broker's time index.
    Time(i64),
    /// The partitions named to the offsets given; the others stay.
    Offsets(BTreeMap<i32, i64>),
}

impl RewindTo {
    /// Reads the `to` of a rewind request: `"earliest"`, `"latest"`, an
    /// RFC 3339 time, or `{"<partition>": <offset>}`.
    pub fn parse(to: &serde_json::Value) -> Result<Self, String> {
        const HOW: &str = r#"`to` is "earliest", "latest", an RFC 3339 time such as "2026-12-01T00:00:00Z", or {"<partition>": <offset>, ...}"#;
        match to {
            serde_json::Value::String(s) if s == "earliest" => Ok(RewindTo::Earliest),
            serde_json::Value::String(s) if s == "latest" => Ok(RewindTo::Latest),
            serde_json::Value::String(s) => time_ms(s)
                .map(RewindTo::Time)
                .ok_or_else(|| format!("`{s}` is not a time: {HOW}")),
            serde_json::Value::Object(map) if !map.is_empty() => {
                let mut offsets = BTreeMap::new();
                for (partition, offset) in map {
                    let p: i32 = partition
                        .parse()
                        .ok()
                        .filter(|p| *p >= 0)
                        .ok_or_else(|| format!("`{partition}` is not a partition: {HOW}"))?;
                    let o = offset
                        .as_i64()
                        .filter(|o| *o >= 0)
                        .ok_or_else(|| format!("`{offset}` is not an offset: {HOW}"))?;
                    offsets.insert(p, o);
                }
                Ok(RewindTo::Offsets(offsets))
            }
            _ => Err(HOW.to_string()),
        }
    }
}

/// An RFC 3339 time (any offset) in ms since the epoch, as Kafka's
/// timestamps are.
pub fn time_ms(text: &str) -> Option<i64> {
    let t = text.parse::<prost_types::Timestamp>().ok()?;
    Some(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A consumer of `plugin`'s group that never joins it: for asking about
/// the group and committing for it while it is empty.
fn outsider(kafka: &KafkaConfig, plugin: &str) -> Result<BaseConsumer> {
    let group = format!("{}{}", kafka.group_prefix, plugin);
    client_config(kafka, Role::Consumer)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a client for the group")
}

/// The members of `plugin`'s group now, as `client-id@host`.
pub fn members(kafka: &KafkaConfig, plugin: &str, timeout: Duration) -> Result<Vec<String>> {
    let group = format!("{}{}", kafka.group_prefix, plugin);
    let consumer = outsider(kafka, plugin)?;
    let list = consumer
        .fetch_group_list(Some(&group), timeout)
        .with_context(|| format!("cannot describe the group {group}"))?;
    Ok(list
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
        .collect())
}

/// The session timeout the members use: how long a member that left
/// without saying so (static membership) stays in the group.
pub fn session_timeout(kafka: &KafkaConfig) -> Duration {
    kafka
        .librdkafka
        .get("session.timeout.ms")
        .and_then(|v| v.0.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Checks what can be checked before the group is asked to leave: the
/// partitions named exist and their offsets are within what is kept.
pub fn check(kafka: &KafkaConfig, plugin: &str, to: &RewindTo, timeout: Duration) -> Result<()> {
    let RewindTo::Offsets(wanted) = to else {
        return Ok(());
    };
    let consumer = outsider(kafka, plugin)?;
    let topic = &kafka.topic.0;
    let partitions = partitions(&consumer, topic, timeout)?;
    for (&partition, &offset) in wanted {
        if !partitions.contains(&partition) {
            bail!(
                "{topic} has no partition {partition} (it has {})",
                partitions.len()
            );
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        if offset < low || offset > high {
            bail!(
                "partition {partition} keeps offsets {low} to {high}: {offset} is not among them"
            );
        }
    }
    Ok(())
}

fn partitions(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let list: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if list.is_empty() {
        bail!("{topic} has no partitions (does it exist?)");
    }
    Ok(list)
}

/// Where `to` puts each partition now, through the watermarks and the
/// broker's time index.
pub fn resolve(
    kafka: &KafkaConfig,
    plugin: &str,
    to: &RewindTo,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let consumer = outsider(kafka, plugin)?;
    let topic = &kafka.topic.0;
    let mut out = BTreeMap::new();
    if let RewindTo::Offsets(wanted) = to {
        return Ok(wanted.clone());
    }
    let partitions = partitions(&consumer, topic, timeout)?;
    let by_time = match to {
        RewindTo::Time(ms) => {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(topic, p, Offset::Offset(*ms))?;
            }
            Some(
                consumer
                    .offsets_for_times(tpl, timeout)
                    .context("cannot look the time up in the broker's time index")?,
            )
        }
        _ => None,
    };
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let offset = match to {
            RewindTo::Earliest => low,
            RewindTo::Latest => high,
            RewindTo::Time(_) => match by_time
                .as_ref()
                .and_then(|t| t.find_partition(topic, p))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o.clamp(low, high),
                // No event at or after that time: the end.
                _ => high,
            },
            RewindTo::Offsets(_) => unreachable!("returned above"),
        };
        out.insert(p, offset);
    }
    Ok(out)
}

/// Commits `offsets` for `plugin`'s group, which must be empty (Kafka
/// refuses it otherwise).
pub fn commit(kafka: &KafkaConfig, plugin: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
    let consumer = outsider(kafka, plugin)?;
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in offsets {
        tpl.add_partition_offset(&kafka.topic.0, p, Offset::Offset(o))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .context("the broker refused the new offsets")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rewind_target_is_read_or_refused_with_what_it_may_be() {
        assert_eq!(RewindTo::parse(&json!("earliest")), Ok(RewindTo::Earliest));
        assert_eq!(RewindTo::parse(&json!("latest")), Ok(RewindTo::Latest));
        assert_eq!(
            RewindTo::parse(&json!("2026-12-01T10:00:00Z")),
            Ok(RewindTo::Time(1_796_119_200_000))
        );
        assert_eq!(
            RewindTo::parse(&json!({"0": 5, "3": 0})),
            Ok(RewindTo::Offsets(BTreeMap::from([(0, 5), (3, 0)])))
        );
        for bad in [
            json!("yesterday"),
            json!({"x": 1}),
            json!({"0": -1}),
            json!(3),
            json!({}),
        ] {
            let err = RewindTo::parse(&bad).unwrap_err();
            assert!(err.contains("earliest"), "{bad}: {err}");
        }
    }
}
