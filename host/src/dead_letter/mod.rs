//! The dead-letter path: where an event that will never be handled is
//! parked with the reason, so nothing is dropped silently. One interface,
//! [`DeadLetters`], with a sink per source: an NDJSON `file` for the file
//! source, a Kafka `topic` per plugin for the Kafka source.

pub mod file;
pub mod topic;

use std::borrow::Cow;

use crate::dispatch::Failure;
use crate::runtime::Prepared;
use crate::shutdown::Shutdown;

/// A sink for records of type `R` that will never be handled.
pub trait DeadLetters<R>: Send + Sync {
    /// Parks `record` with `failure`; `version` is the plugin version that
    /// gave up on it (for a decode failure, the one that would have got
    /// it). Returns once the sink holds it for good (a topic: the broker
    /// acknowledged it), counted; false if `stop` came first, and then the
    /// record is not settled.
    fn park(&self, record: &R, failure: &Failure, version: &Prepared, stop: &Shutdown) -> bool;
}

/// The most bytes of a failure's reason that a dead letter (and a log
/// line) carries: a plugin may give a reason of any size, and a dead-letter
/// record must fit what the broker accepts. A longer reason is cut at a
/// character boundary and says how much was left out.
pub const MAX_REASON_BYTES: usize = 4096;

/// `reason`, at most [`MAX_REASON_BYTES`] long.
pub fn truncate_reason(reason: &str) -> Cow<'_, str> {
    truncate(reason, MAX_REASON_BYTES)
}

/// `text` cut to at most `max` bytes (at least the marker's worth), at a
/// character boundary, ending with how many bytes were cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker names at most 20 digits: reserve room for the longest.
    const MARKER: usize = " [cut: 18446744073709551615 more bytes]".len();
    let mut end = max.saturating_sub(MARKER);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{} [cut: {} more bytes]",
        &text[..end],
        text.len() - end
    ))
}

/// Where a dead letter came from and why it is parked: the `plugboard.*`
/// headers of a dead-letter record, which are part of its format.
pub struct Letter<'a> {
    pub plugin: &'a str,
    /// The plugin version that failed on it.
    pub sha256: &'a str,
    pub failure: &'a Failure,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Why the record carries no payload, key or original headers, if it
    /// does not: the original was too large for the dead-letter topic,
    /// and is fetched from its topic, partition and offset.
    pub omitted: Option<&'a str>,
}

impl Letter<'_> {
    /// The headers, in order; the reason cut to [`MAX_REASON_BYTES`].
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("plugboard.plugin", self.plugin.to_string()),
            ("plugboard.component-sha256", self.sha256.to_string()),
            (
                "plugboard.failure-class",
                self.failure.class.as_str().into(),
            ),
            (
                "plugboard.reason",
                truncate_reason(&self.failure.reason).into_owned(),
            ),
            ("plugboard.attempts", self.failure.attempts.to_string()),
            ("plugboard.original-topic", self.topic.to_string()),
            ("plugboard.original-partition", self.partition.to_string()),
            ("plugboard.original-offset", self.offset.to_string()),
        ];
        if let Some(why) = self.omitted {
            headers.push((
                "plugboard.payload-omitted",
                truncate_reason(why).into_owned(),
            ));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary_and_says_so() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "ü".repeat(10_000);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.starts_with("üü"));
        let kept = cut.split(" [cut: ").next().unwrap().len();
        assert!(cut.ends_with(&format!("[cut: {} more bytes]", long.len() - kept)));
        assert_eq!(truncate("abcdef", 3), " [cut: 6 more bytes]");
    }
}
