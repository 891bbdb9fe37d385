//! What a run did: the report `main` prints at its end.

use std::fmt;
use std::time::Duration;

use crate::dispatch::Stats;

/// How one plugin fared.
#[derive(Debug, Clone)]
pub struct PluginReport {
    pub name: String,
    pub sha256: String,
    /// `None` when the plugin could not be loaded; then `error` says why.
    pub stats: Option<Stats>,
    pub error: Option<String>,
}

/// What a run did, for people and for tests.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `file:<name>` or the topic.
    pub source: String,
    /// Records read: the lines of a file. Kafka counts per plugin.
    pub read: Option<u64>,
    /// Lines of a file that did not decode (under Kafka they are counted by
    /// each plugin, in the metrics).
    pub decode_failures: u64,
    pub plugins: Vec<PluginReport>,
    pub elapsed: Duration,
    /// The dead-letter file, or the topics' name pattern.
    pub dead_letters: String,
    /// Every metric at the end, in the Prometheus text format.
    pub metrics: String,
}

impl Summary {
    /// Records per second through the whole pipeline, all plugins
    /// included (a file run).
    pub fn events_per_second(&self) -> f64 {
        self.read.unwrap_or(0) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// True when every plugin loaded and the run was not stopped; then
    /// every line was handled or dead-lettered.
    pub fn all_plugins_ran(&self) -> bool {
        self.plugins
            .iter()
            .all(|p| p.error.is_none() && p.stats.is_some_and(|s| s.unsettled == 0))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.read {
            Some(read) => writeln!(
                f,
                "{read} events read, {} failed decoding, in {:.2?} ({:.0} events/s)",
                self.decode_failures,
                self.elapsed,
                self.events_per_second()
            )?,
            None => writeln!(f, "consumed {} for {:.2?}", self.source, self.elapsed)?,
        }
        writeln!(
            f,
            "  {:<20} {:>9} {:>9} {:>13}  component",
            "plugin", "handled", "retried", "dead-lettered"
        )?;
        for p in &self.plugins {
            let short = &p.sha256[..p.sha256.len().min(12)];
            match (&p.stats, &p.error) {
                (Some(s), _) => {
                    writeln!(
                        f,
                        "  {:<20} {:>9} {:>9} {:>13}  sha256:{short}",
                        p.name, s.handled, s.retried, s.dead_lettered
                    )?;
                    if s.unsettled > 0 {
                        writeln!(
                            f,
                            "  {:<20} stopped: {} events not settled; run again to deliver them",
                            "", s.unsettled
                        )?;
                    }
                }
                (None, error) => writeln!(
                    f,
                    "  {:<20} FAILED: {}",
                    p.name,
                    error.as_deref().unwrap_or("unknown error")
                )?,
            }
        }
        write!(f, "dead letters: {}", self.dead_letters)
    }
}
