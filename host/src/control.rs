//! What an operator switched on a running host and what must outlive a
//! restart: which plugins are paused, kept in `<data_dir>/paused.json`.
//! A paused plugin's workers finish the batch in flight, commit, and take
//! no more; its consumer stops fetching but stays in its group (no
//! rebalance), so a resume goes on where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::locks::Lock;

/// The plugins paused on this host, each with the flag its workers read.
#[derive(Clone)]
pub struct Pauses {
    file: PathBuf,
    flags: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
}

impl Pauses {
    /// The pauses kept in `data_dir` (none if it holds no file yet).
    pub fn load(data_dir: &Path) -> Result<Self> {
        let file = data_dir.join("paused.json");
        let names: Vec<String> = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a JSON list of plugin names: fix or delete it (then no plugin is paused)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let flags = names
            .into_iter()
            .map(|n| (n, Arc::new(AtomicBool::new(true))))
            .collect();
        Ok(Pauses {
            file,
            flags: Arc::new(Mutex::new(flags)),
        })
    }

    /// The flag `plugin`'s workers and consumer read (true: paused).
    pub fn flag(&self, plugin: &str) -> Arc<AtomicBool> {
        self.flags
            .locked()
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone()
    }

    pub fn is_paused(&self, plugin: &str) -> bool {
        self.flags
            .locked()
            .get(plugin)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Pauses or resumes `plugin`; kept on disk before it takes effect, so
    /// a restart keeps what was answered.
    pub fn set(&self, plugin: &str, paused: bool) -> Result<()> {
        let mut flags = self.flags.locked();
        let mut names: Vec<&str> = flags
            .iter()
            .filter(|(name, f)| name.as_str() != plugin && f.load(Ordering::SeqCst))
            .map(|(name, _)| name.as_str())
            .collect();
        if paused {
            names.push(plugin);
        }
        names.sort_unstable();
        let text = serde_json::to_string_pretty(&names)?;
        let tmp = self.file.with_extension("json.tmp");
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .with_context(|| format!("cannot write {}", self.file.display()))?;
        flags
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .store(paused, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_outlives_a_restart_and_a_resume_too() {
        let dir = tempfile::tempdir().unwrap();
        let pauses = Pauses::load(dir.path()).unwrap();
        let crm = pauses.flag("crm");
        pauses.set("crm", true).unwrap();
        pauses.set("lake", true).unwrap();
        assert!(crm.load(Ordering::SeqCst), "the workers' flag follows");
        let again = Pauses::load(dir.path()).unwrap();
        assert!(again.is_paused("crm") && again.is_paused("lake"));
        again.set("crm", false).unwrap();
        let third = Pauses::load(dir.path()).unwrap();
        assert!(!third.is_paused("crm") && third.is_paused("lake"));
        std::fs::write(dir.path().join("paused.json"), "{").unwrap();
        let err = Pauses::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("fix or delete it"), "{err}");
    }
}
