//! Sources of events: each yields ordered records per partition, with their
//! position and their bytes; decoding, dispatch, settling and dead letters
//! are the same whatever the source ([`crate::settle`]).

pub mod file;
pub mod kafka;

use std::path::PathBuf;

use crate::decode::DecodeError;
use crate::event::BookingEvent;
use crate::runtime::convert::Envelope;
use crate::schema::{Decoded, Schemas};

/// What a run reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// An NDJSON file, to its end: see [`mod@file`].
    File {
        events: PathBuf,
        /// Default: `<events>.dead-letter.ndjson` beside the input.
        dead_letter: Option<PathBuf>,
    },
    /// The `[kafka]` topic of the config, until shutdown: see [`kafka`].
    Kafka,
}

/// One record as its source delivers it, not yet decoded.
pub trait Record {
    /// The topic, or `file:<name>`.
    fn source(&self) -> &str;
    /// The event it holds, validated, read with its writer's schema from
    /// `schemas`; with the fields the contract lacks if `extensions`.
    fn decode(&self, schemas: &Schemas, extensions: bool) -> Result<Decoded, DecodeError>;
    /// Where it came from, for the plugin (`event` is what it decoded to).
    fn envelope(&self, event: &BookingEvent) -> Envelope;
    /// Its protobuf encoding, for plugins that ask for the payload.
    fn payload(&self, event: &BookingEvent) -> Vec<u8>;
}
