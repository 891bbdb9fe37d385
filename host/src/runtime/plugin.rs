//! One plugin version, compiled once: the component, its pre-instance
//! linked against the world, and the sha256 of the very bytes compiled.

use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::{self, PluginPre};
use super::engine::Runtime;
use super::observer::Observer;
use super::state::PluginState;
use super::{kv, log_budget};
use crate::config::PluginSpec;
use crate::metrics::Metrics;

impl Runtime {
    /// Compiles `spec`'s component and links it against the world, once.
    pub fn prepare(&self, spec: PluginSpec) -> Result<Prepared> {
        let bytes = std::fs::read(&spec.component).with_context(|| {
            format!("cannot read plugin component {}", spec.component.display())
        })?;
        self.prepare_bytes(spec, &bytes)
    }

    /// [`Runtime::prepare`] of `bytes`, read from `spec.component` by the
    /// caller: the version's sha256 is of the very bytes compiled, even if
    /// the file changes meanwhile.
    pub fn prepare_bytes(&self, spec: PluginSpec, bytes: &[u8]) -> Result<Prepared> {
        let sha256 = sha256_hex(bytes);
        let component = Component::new(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a valid component", spec.component.display()))?;
        let ty = component.component_type();
        let names: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .chain(ty.exports(&self.engine).map(|(n, _)| n.to_string()))
            .collect();
        if let Some(problem) = bindings::other_contract(names.iter().map(String::as_str)) {
            anyhow::bail!(
                "{} is not a plugin for this host: {problem}",
                spec.component.display()
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} needs imports this host does not provide",
                    spec.component.display()
                )
            })?;
        let pre = PluginPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} does not implement the plugboard:plugin/plugin world",
                    spec.component.display()
                )
            })?;
        if let Some(folder) = &spec.folder {
            std::fs::create_dir_all(&folder.host_path).with_context(|| {
                format!(
                    "cannot create the folder granted to {}: {}",
                    spec.name,
                    folder.host_path.display()
                )
            })?;
        }
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let log_budget = Arc::new(log_budget::LogBudget::new(
            name.clone(),
            spec.limits.log_lines_per_second,
            self.metrics.clone(),
        ));
        let allowed: Arc<[String]> = spec.allow_hosts.clone().into();
        Ok(Prepared {
            state_name: name.clone(),
            name,
            allowed,
            version: sha256.clone(),
            sha256,
            spec: Arc::new(spec),
            pre,
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            schemas: self.schemas.clone(),
            state: self.state.clone(),
            source: self.source.clone(),
            budgets: self.budgets,
            observer: self.observer.clone(),
            log_budget,
            handled: Arc::default(),
            failed: Arc::default(),
            faulty: Arc::default(),
            tap: Arc::default(),
            detached: false,
        })
    }
}

/// The sha256 of `bytes` in hex: how plugin versions are named in logs,
/// `/plugins` and dead-letter records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One plugin version, compiled and linked: everything needed to make
/// instances quickly (tens of microseconds each).
pub struct Prepared {
    pub name: Arc<str>,
    /// Whose key-value state its instances use: the plugin's, or a
    /// shadow's own.
    pub(super) state_name: Arc<str>,
    pub(super) allowed: Arc<[String]>,
    /// sha256 of the component file, to tell versions apart in logs and
    /// dead-letter records.
    pub sha256: String,
    /// The version's id: the component's sha256 unless a reload names it
    /// by its component and manifest.
    pub version: String,
    pub spec: Arc<PluginSpec>,
    pub(super) pre: PluginPre<PluginState>,
    pub(super) engine: Engine,
    pub(super) metrics: Arc<Metrics>,
    pub(super) schemas: Arc<crate::schema::Schemas>,
    pub(super) state: Option<Arc<kv::StateDb>>,
    pub(super) source: Arc<str>,
    pub(super) budgets: bool,
    pub(super) observer: Option<Arc<dyn Observer>>,
    pub(super) log_budget: Arc<log_budget::LogBudget>,
    /// Events this version handled, for `/plugins` during a rollout.
    pub handled: Arc<std::sync::atomic::AtomicU64>,
    /// Events this version failed for good (rejected, trapped, timed out,
    /// broke the contract or its budget): a rollback compares the rates.
    pub failed: Arc<std::sync::atomic::AtomicU64>,
    /// How this version last broke the contract, if it did: `/plugins`
    /// shows it as faulty.
    pub faulty: Arc<std::sync::Mutex<Option<String>>>,
    /// While set, its instances keep their requests (with bodies and
    /// answers) and metric updates for a shadow run to compare.
    pub tap: Arc<std::sync::atomic::AtomicBool>,
    /// A shadow: its metric updates go to no registry, only to its tap.
    pub(super) detached: bool,
}

impl Prepared {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What its records are decoded with.
    pub fn schemas(&self) -> &Arc<crate::schema::Schemas> {
        &self.schemas
    }

    /// This version as a shadow: watched by `observer` (which keeps its
    /// requests from going out and its log lines from the host's log),
    /// tapped, its metric updates kept from the registry and its state
    /// its own (`<name>.shadow`).
    pub fn into_shadow(mut self, observer: Arc<dyn Observer>) -> Prepared {
        self.observer = Some(observer);
        self.state_name = Arc::from(format!("{}.shadow", self.name));
        self.detached = true;
        self.tap = Arc::new(std::sync::atomic::AtomicBool::new(true));
        self
    }

    /// This version broke the contract: `/plugins` says so.
    pub fn mark_faulty(&self, reason: &str) {
        use crate::locks::Lock;
        *self.faulty.locked() = Some(reason.to_string());
    }
}
