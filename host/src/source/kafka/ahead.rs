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

/// Offsets settled past the first unsettled one: inclusive, in order,
/// neither overlapping nor touching.
pub type Ahead = Vec<(i64, i64)>;

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
    fn touching_ranges_merge() {
        assert_eq!(
            merge(vec![(1, 2), (3, 4), (4, 9), (11, 11)]),
            vec![(1, 9), (11, 11)]
        );
    }
}
