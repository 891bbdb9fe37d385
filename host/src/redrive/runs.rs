//! The redrives this host runs: one per plugin at most, each on a thread
//! of its own; those running at a stop go on after the restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Progress, RedriveState, host_id};
use crate::catalog::LivePlugin;
use crate::config::KafkaConfig;
use crate::control::Control;
use crate::locks::Lock;
use crate::shutdown::Shutdown;

/// The redrives running on this host, one per plugin at most.
#[derive(Clone)]
pub struct Runs {
    kafka: KafkaConfig,
    /// This host, as a redrive's owner.
    pub me: String,
    control: Control,
    shutdown: Shutdown,
    running: Arc<Mutex<BTreeMap<String, JoinHandle<()>>>>,
}

impl Runs {
    pub fn new(kafka: KafkaConfig, data_dir: &std::path::Path, control: Control) -> Self {
        Runs {
            me: host_id(&kafka, data_dir),
            kafka,
            control,
            shutdown: Shutdown::new(),
            running: Arc::default(),
        }
    }

    /// Whether a redrive of `plugin` runs here now.
    pub fn runs(&self, plugin: &str) -> bool {
        self.running
            .locked()
            .get(plugin)
            .is_some_and(|t| !t.is_finished())
    }

    /// Starts (or goes on with) `progress` on a thread of its own.
    pub fn start(
        &self,
        plugin: &str,
        live: Arc<LivePlugin>,
        progress: Progress,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let filter = progress.filter();
        let thread = std::thread::Builder::new()
            .name(format!("{plugin}-redrive"))
            .spawn(move || {
                super::run(
                    &this.kafka,
                    live,
                    &this.control,
                    progress,
                    &filter,
                    &this.shutdown,
                );
            })?;
        self.running.locked().insert(plugin.to_string(), thread);
        Ok(())
    }

    /// Goes on with the redrives this host was running when it stopped.
    pub fn resume(&self, plugins: impl IntoIterator<Item = (String, Arc<LivePlugin>)>) {
        let me = self.me.clone();
        for (plugin, live) in plugins {
            let Some(progress) = self.control.redrive(&plugin) else {
                continue;
            };
            let Ok(progress) = serde_json::from_value::<Progress>(progress) else {
                continue;
            };
            if progress.state == RedriveState::Running && (progress.owner == me || progress.stale())
            {
                tracing::info!(
                    plugin,
                    redrive = progress.id,
                    "going on with the redrive that was running"
                );
                let mut progress = progress;
                progress.owner = me.clone();
                if let Err(e) = self.start(&plugin, live, progress) {
                    tracing::error!(plugin, "cannot go on with the redrive: {e}");
                }
            }
        }
    }

    /// Stops the redrives after the record in flight (each goes on after
    /// a restart) and waits for them.
    pub fn stop(&self) {
        self.shutdown.request();
        for (_, thread) in std::mem::take(&mut *self.running.locked()) {
            let _ = thread.join();
        }
    }
}
