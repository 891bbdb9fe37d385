//! The file source: NDJSON, one `booking.v1.BookingEvent` per line in the
//! proto3 JSON mapping. The line number (from 1) is the offset, so replaying
//! the same file gives every event the same identity.

use std::path::Path;

use anyhow::{Context, Result};

/// One non-blank line of the input.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number: the event's offset.
    pub number: u64,
    pub text: String,
}

/// Reads every non-blank line. Blank lines are skipped, but still counted,
/// so numbers match what an editor shows.
pub fn read_lines(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read events file {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Line {
            number: i as u64 + 1,
            text: l.to_string(),
        })
        .collect())
}

/// The envelope `source` of events read from `path`: `file:<file name>`.
pub fn source_name(path: &Path) -> String {
    format!(
        "file:{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    )
}

/// `event` as plugins get it from line `number` of a file: partition 0,
/// the line number as offset, the booking id as key; its protobuf encoding
/// if `payload`.
pub fn to_wit(
    event: &crate::event::BookingEvent,
    source: &str,
    number: u64,
    payload: bool,
) -> crate::runtime::bindings::wit::Event {
    use prost::Message;
    let envelope = crate::runtime::convert::Envelope {
        source: source.to_string(),
        partition: 0,
        offset: number as i64,
        key: Some(event.booking_id.clone().into_bytes()),
        timestamp_ms: None,
        headers: Vec::new(),
    };
    crate::runtime::convert::to_wit(event, envelope, payload.then(|| event.encode_to_vec()))
}
