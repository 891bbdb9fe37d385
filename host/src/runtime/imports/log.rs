//! `plugboard:plugin/log`: a plugin's log lines, written to the host's log
//! with the plugin's name, within its log budget, and counted.

use wasmtime::component::{HasSelf, Linker};

use crate::runtime::bindings::plugboard::plugin::log;
use crate::runtime::state::PluginState;

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    log::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        let level_name = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.metrics
            .plugin_log_lines
            .with_label_values(&[plugin, level_name])
            .inc();
        if let Some(observer) = &self.observer {
            observer.record(format!("log {level_name}: {message}"));
            return;
        }
        if !self.log_budget.admit() {
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }
}
