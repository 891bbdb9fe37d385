//! The dead-letter path: where an event that will never be handled is
//! parked with the reason, so nothing is dropped silently. One interface,
//! [`DeadLetters`], with a sink per source: an NDJSON `file` for the file
//! source, a Kafka `topic` per plugin for the Kafka source.

pub mod file;
pub mod topic;

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

/// A failure's reason is bounded where the failure is made.
pub use crate::dispatch::{MAX_REASON_BYTES, truncate, truncate_reason};

/// Where a dead letter came from and why it is parked: the `plugboard.*`
/// headers of a dead-letter record, which are part of its format.
pub struct Letter<'a> {
    pub plugin: &'a str,
    /// The plugin version that failed on it: its component's sha256, and
    /// its version id (component and manifest, as `/plugins` names it).
    pub sha256: &'a str,
    pub version: &'a str,
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
            ("plugboard.version", self.version.to_string()),
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
