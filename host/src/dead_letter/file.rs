//! The file source's dead letters: an NDJSON file, one record per
//! (event, plugin) failure, with the original line.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::dispatch::{Failure, FailureClass};
use crate::locks::Lock;
use crate::observe::HostEvent;
use crate::runtime::Prepared;
use crate::shutdown::Shutdown;
use crate::source::file::Line;

use anyhow::{Context, Result};
use serde::Serialize;

/// One dead-lettered event. Field names are the file format.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Line number of the event in the input file.
    pub line: u64,
    /// The plugin that failed on it, or `decode` when no plugin saw it.
    pub plugin: String,
    /// decode, rejected, retries-exhausted, trap, timeout, contract or
    /// budget.
    pub class: String,
    /// Why, in the words of the decoder, the plugin or the runtime.
    pub reason: String,
    /// How many deliveries were made (0 for decode failures).
    pub attempts: u32,
    /// sha256 of the plugin component that failed on it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub component_sha256: Option<String>,
    /// The original input line, unchanged.
    pub event: String,
}

/// Writes `records` sorted by line then plugin, so the file is the same on
/// every run over the same input. Replaces any earlier file.
pub fn write_file(path: &Path, records: &mut [FileRecord]) -> Result<()> {
    records.sort_by(|a, b| (a.line, &a.plugin).cmp(&(b.line, &b.plugin)));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write dead-letter file {}", tmp.display()))?,
    );
    for record in records.iter() {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("cannot write dead-letter file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write dead-letter file {}", path.display()))?;
    Ok(())
}

/// The file source's dead letters: collected during the run and written
/// once at its end ([`write_file`]), sorted, so the file is the same on
/// every run. A line that does not decode fails for every plugin alike and
/// is recorded once, as `decode`.
#[derive(Default)]
pub struct Collected {
    records: Mutex<Vec<FileRecord>>,
    undecodable: Mutex<BTreeSet<u64>>,
}

impl Collected {
    /// Lines that did not decode.
    pub fn decode_failures(&self) -> u64 {
        self.undecodable.locked().len() as u64
    }

    /// Writes every record to `path` (see [`write_file`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_file(path, &mut self.records.locked())
    }
}

impl super::DeadLetters<Line> for Collected {
    fn park(&self, line: &Line, failure: &Failure, version: &Prepared, _stop: &Shutdown) -> bool {
        let decode = matches!(failure.class, FailureClass::Decode | FailureClass::Schema);
        if decode {
            // Every plugin meets a line that does not decode; it is parked
            // once, for no plugin (and counted by decode).
            if !self.undecodable.locked().insert(line.number) {
                return true;
            }
            tracing::warn!(line = line.number, "dead-lettered: {}", failure.reason);
        } else {
            HostEvent::DeadLettered {
                plugin: &version.name,
                partition: 0,
                offset: line.number as i64,
                class: failure.class.as_str(),
                reason: &failure.reason,
                sink: "the dead-letter file",
            }
            .emit(version.metrics());
        }
        self.records.locked().push(FileRecord {
            line: line.number,
            plugin: if decode {
                "decode".into()
            } else {
                version.name.to_string()
            },
            class: failure.class.as_str().into(),
            reason: failure.reason.clone(),
            attempts: failure.attempts,
            component_sha256: (!decode).then(|| version.sha256.clone()),
            event: line.text.clone(),
        });
        true
    }
}
