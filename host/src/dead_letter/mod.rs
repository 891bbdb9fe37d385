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
