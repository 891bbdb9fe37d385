//! The file source: NDJSON, one `booking.v1.BookingEvent` per line in the
//! proto3 JSON mapping. The line number (from 1) is the offset, so replaying
//! the same file gives every event the same identity.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

/// One non-blank line of the input.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number: the event's offset.
    pub number: u64,
    pub text: String,
    /// `file:<file name>`, the same for every line of a file.
    pub source: Arc<str>,
}

/// Reads every non-blank line. Blank lines are skipped, but still counted,
/// so numbers match what an editor shows.
pub fn read_lines(path: &Path) -> Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read events file {}", path.display()))?;
    let source: Arc<str> = Arc::from(source_name(path));
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Line {
            number: i as u64 + 1,
            text: l.to_string(),
            source: source.clone(),
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

/// A line of the file is a record: JSON, partition 0, the line number as
/// offset, the booking id as key.
impl super::Record for Line {
    fn source(&self) -> &str {
        &self.source
    }

    fn decode(
        &self,
        schemas: &crate::schema::Schemas,
        extensions: bool,
    ) -> Result<crate::schema::Decoded, crate::decode::DecodeError> {
        schemas.decode_json(&self.text, extensions)
    }

    fn envelope(&self, event: &crate::event::BookingEvent) -> crate::runtime::convert::Envelope {
        crate::runtime::convert::Envelope {
            source: self.source.to_string(),
            partition: 0,
            offset: self.number as i64,
            key: Some(event.booking_id.clone().into_bytes()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    fn payload(&self, event: &crate::event::BookingEvent) -> Vec<u8> {
        use prost::Message;
        event.encode_to_vec()
    }
}
