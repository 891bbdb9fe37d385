//! The dead-letter path: where an event that will never be handled is parked
//! with the reason, so nothing is dropped silently. For the file source it is
//! an NDJSON file, one record per (event, plugin) failure.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One dead-lettered event. Field names are the file format.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Line number of the event in the input file.
    pub line: u64,
    /// The plugin that failed on it, or `decode` when no plugin saw it.
    pub plugin: String,
    /// decode, rejected, retries-exhausted, trap or timeout.
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
