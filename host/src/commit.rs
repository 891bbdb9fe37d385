//! Commit: what a settled prefix of a partition becomes. Under Kafka, an
//! offset: stored once its records are settled, committed by librdkafka
//! every `commit_interval_ms`, on revoke and at a stop; [`Offsets`] keeps
//! what was stored and what the broker acknowledged, to say what a stop
//! without the broker leaves uncommitted. For a file, the run's
//! [`crate::summary::Summary`] and its dead-letter file.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::locks::Lock;

/// A settled prefix of a partition: every offset up to and including
/// `offset` has its final outcome.
pub struct Settled {
    pub partition: i32,
    pub offset: i64,
    /// Kept with the commit: what was settled past it (see
    /// [`crate::source::kafka`]'s lanes); empty without lanes.
    pub metadata: String,
}

/// Offsets stored and offsets the broker acknowledged as committed, per
/// partition (each the next offset to read).
#[derive(Default)]
pub struct Offsets {
    /// With the metadata stored beside each.
    stored: Mutex<BTreeMap<i32, (i64, String)>>,
    committed: Mutex<BTreeMap<i32, i64>>,
}

impl Offsets {
    /// `settled` was stored for librdkafka to commit.
    pub fn stored(&self, settled: &Settled) {
        self.stored.locked().insert(
            settled.partition,
            (settled.offset + 1, settled.metadata.clone()),
        );
    }

    /// Forgets `partition`: it is assigned anew, and what was stored for it
    /// before (another member may have committed past it since) is never
    /// committed again.
    pub fn forget(&self, partition: i32) {
        self.stored.locked().remove(&partition);
        self.committed.locked().remove(&partition);
    }

    /// The last offset stored for `partition` (the next to read) and its
    /// metadata: what a revoke commits.
    pub fn last_stored(&self, partition: i32) -> Option<(i64, String)> {
        self.stored.locked().get(&partition).cloned()
    }

    /// The broker acknowledged `next` as `partition`'s committed offset.
    pub fn committed(&self, partition: i32, next: i64) {
        self.committed.locked().insert(partition, next);
    }

    /// Per partition, the settled offsets the broker has not acknowledged:
    /// their events are delivered again after a restart.
    pub fn uncommitted(&self) -> Vec<String> {
        let stored = self.stored.locked();
        let committed = self.committed.locked();
        stored
            .iter()
            .filter_map(|(p, (next, _))| {
                let done = committed.get(p).copied().unwrap_or(-1);
                (*next > done).then(|| {
                    if done < 0 {
                        format!("partition {p}: up to offset {}", next - 1)
                    } else {
                        format!("partition {p}: offsets {done}..={}", next - 1)
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_stored_and_not_acknowledged_is_reported() {
        let offsets = Offsets::default();
        assert!(offsets.uncommitted().is_empty());
        offsets.stored(&Settled {
            partition: 0,
            offset: 9,
            metadata: String::new(),
        });
        offsets.stored(&Settled {
            partition: 1,
            offset: 4,
            metadata: String::new(),
        });
        offsets.committed(1, 5);
        assert_eq!(offsets.uncommitted(), ["partition 0: up to offset 9"]);
        offsets.stored(&Settled {
            partition: 1,
            offset: 7,
            metadata: String::new(),
        });
        assert_eq!(
            offsets.uncommitted(),
            ["partition 0: up to offset 9", "partition 1: offsets 5..=7"]
        );
        offsets.committed(0, 10);
        offsets.committed(1, 8);
        assert!(offsets.uncommitted().is_empty());
    }

    #[test]
    fn a_partition_assigned_anew_commits_nothing_stored_before() {
        let offsets = Offsets::default();
        offsets.stored(&Settled {
            partition: 3,
            offset: 99,
            metadata: "plugboard.ahead=2".into(),
        });
        assert_eq!(
            offsets.last_stored(3),
            Some((100, "plugboard.ahead=2".to_string()))
        );
        offsets.forget(3);
        assert_eq!(offsets.last_stored(3), None);
        assert!(offsets.uncommitted().is_empty());
    }
}
