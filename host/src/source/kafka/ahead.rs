//! What a partition with lanes settled *ahead* of its committed offset,
//! kept in the commit's metadata.
//!
//! The committed offset stops at the first message no lane has settled,
//! while faster lanes go on past it. Their offsets are written beside the
//! commit (`plugboard.ahead=3-5,9`: the offsets 3 to 5 and 9 past it), as
//! Confluent's Parallel Consumer does, and the partition's next owner (after
//! a rebalance, a restart or a revived worker) reads them and does not
//! deliver those events again. The text is bounded: ranges that do not fit
//! are left out, and only their events are delivered again.

use std::collections::VecDeque;

/// Offsets settled past the first unsettled one: inclusive, in order,
/// neither overlapping nor touching.
pub type Ahead = Vec<(i64, i64)>;

/// What a partition's previous owner settled past the committed offset,
/// not reached yet: those messages are taken off the queue and not
/// delivered again.
#[derive(Default)]
pub struct Skip(VecDeque<(i64, i64)>);

impl Skip {
    pub fn new(ahead: Ahead) -> Self {
        Skip(ahead.into())
    }

    /// Whether `offset` was settled before. Offsets are asked in order.
    pub fn covers(&mut self, offset: i64) -> bool {
        while self.0.front().is_some_and(|&(_, to)| to < offset) {
            self.0.pop_front();
        }
        self.0.front().is_some_and(|&(from, _)| from <= offset)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges at or past `from`, cut to start there: still settled
    /// ahead, so they go with every commit until they are passed.
    pub fn from(&self, from: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0
            .iter()
            .filter(move |&&(_, to)| to >= from)
            .map(move |&(start, to)| (start.max(from), to))
    }
}

/// What the metadata starts with; anything else (another tool's) is
/// ignored.
const TAG: &str = "plugboard.ahead=";

/// The longest metadata written. Kafka refuses a commit whose metadata is
/// over `offset.metadata.max.bytes` (4096 by default) as a whole.
const MAX_LEN: usize = 2048;

/// The metadata of a commit at `next` (the first offset not settled) with
/// `ahead` settled past it; empty if nothing is.
pub fn encode(next: i64, ahead: &[(i64, i64)]) -> String {
    let mut text = String::new();
    for &(from, to) in ahead.iter().filter(|(_, to)| *to >= next) {
        let (from, to) = (from.max(next) - next, to - next);
        let range = if from == to {
            from.to_string()
        } else {
            format!("{from}-{to}")
        };
        if TAG.len() + text.len() + range.len() + 1 > MAX_LEN {
            break;
        }
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&range);
    }
    if text.is_empty() {
        text
    } else {
        format!("{TAG}{text}")
    }
}

/// The offsets settled past `next` that `metadata` names; none if it is
/// not plugboard's or does not parse.
pub fn decode(next: i64, metadata: &str) -> Ahead {
    let Some(ranges) = metadata.strip_prefix(TAG) else {
        return Ahead::new();
    };
    let parsed: Option<Ahead> = ranges
        .split(',')
        .map(|range| {
            let (from, to) = match range.split_once('-') {
                Some((from, to)) => (from.parse::<i64>().ok()?, to.parse::<i64>().ok()?),
                None => {
                    let at = range.parse::<i64>().ok()?;
                    (at, at)
                }
            };
            (0 <= from && from <= to).then_some((next + from, next + to))
        })
        .collect();
    let mut parsed = parsed.unwrap_or_default();
    parsed.sort_unstable();
    merge(parsed)
}

/// Joins ranges that overlap or touch; `ranges` in order of their start.
pub fn merge(ranges: Ahead) -> Ahead {
    let mut out: Ahead = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match out.last_mut() {
            Some(last) if from <= last.1 + 1 => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_past_the_commit_round_trip() {
        let ahead = vec![(1003, 1005), (1009, 1009), (1020, 1400)];
        let text = encode(1000, &ahead);
        assert_eq!(text, "plugboard.ahead=3-5,9,20-400");
        assert_eq!(decode(1000, &text), ahead);
        assert_eq!(encode(1000, &[]), "");
        assert!(decode(1000, "").is_empty());
    }

    #[test]
    fn other_metadata_and_garbage_name_nothing() {
        assert!(decode(0, "written by another tool").is_empty());
        assert!(decode(0, "plugboard.ahead=3-x").is_empty());
        assert!(decode(0, "plugboard.ahead=5-3").is_empty());
        assert!(decode(0, "plugboard.ahead=-3").is_empty());
    }

    #[test]
    fn what_does_not_fit_is_left_out_and_only_redelivered() {
        // Every other offset: the longest text there is.
        let ahead: Ahead = (0..2000).map(|i| (10 + 2 * i, 10 + 2 * i)).collect();
        let text = encode(0, &ahead);
        assert!(text.len() <= MAX_LEN, "{} bytes", text.len());
        let back = decode(0, &text);
        assert!(back.len() > 100 && back.len() < ahead.len());
        assert_eq!(back[..], ahead[..back.len()], "a prefix is kept");
    }

    #[test]
    fn ranges_below_the_commit_are_dropped_or_cut() {
        assert_eq!(encode(10, &[(2, 4), (8, 12)]), "plugboard.ahead=0-2");
    }

    #[test]
    fn a_skip_covers_its_ranges_once_passed_in_order() {
        let mut skip = Skip::new(vec![(5, 7), (10, 10)]);
        let covered: Vec<i64> = (0..12).filter(|&o| skip.covers(o)).collect();
        assert_eq!(covered, [5, 6, 7, 10]);
        let mut skip = Skip::new(vec![(5, 7), (10, 10)]);
        assert!(!skip.covers(4));
        assert_eq!(skip.from(6).collect::<Vec<_>>(), [(6, 7), (10, 10)]);
        assert_eq!(skip.from(8).collect::<Vec<_>>(), [(10, 10)]);
        assert!(skip.covers(10), "the ranges it jumped over are dropped");
        assert_eq!(skip.from(0).collect::<Vec<_>>(), [(10, 10)]);
    }

    #[test]
    fn touching_ranges_merge() {
        assert_eq!(
            merge(vec![(1, 2), (3, 4), (4, 9), (11, 11)]),
            vec![(1, 9), (11, 11)]
        );
    }
}
