//! The engine: one per process, with epoch interruption (time budgets),
//! the compiled-code cache, the epoch ticker, and the linker every import
//! adds itself to.
//!
//! The pooling allocator is left out: an instance is made in tens of
//! microseconds on demand (once per partition, and after a trap), and
//! pooling would reserve the largest memory budget of any plugin for every
//! slot up front.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Linker;

use super::kv;
use super::observer::Observer;
use super::state::PluginState;
use crate::metrics::Metrics;

/// How often the epoch ticks; deadlines are whole ticks, so a call runs at
/// most its timeout plus one tick past it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process-wide engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<PluginState>>,
    pub(super) metrics: Arc<Metrics>,
    /// Where plugins' `wasi:keyvalue` state lives; none: they have none.
    pub(super) state: Option<Arc<kv::StateDb>>,
    /// The source events come from (a topic, `file:<name>`): plugins get
    /// it as `plugboard.source`, and their state is scoped to it.
    pub(super) source: Arc<str>,
    /// Whether time and memory budgets are enforced (always, but in the
    /// benchmark that measures their cost).
    pub(super) budgets: bool,
    /// Set by `plugboard replay`: record what plugins do, capture egress.
    pub(super) observer: Option<Arc<dyn Observer>>,
    /// How records are decoded: with the writer's schema.
    pub(super) schemas: Arc<crate::schema::Schemas>,
}

impl Runtime {
    /// Builds the engine with epoch interruption and, if `cache_dir` is
    /// given, wasmtime's compiled-code cache there (a warm hit loads in
    /// about a millisecond instead of compiling for seconds).
    pub fn new(cache_dir: Option<&Path>, metrics: Arc<Metrics>) -> Result<Self> {
        Self::build(cache_dir, metrics, true)
    }

    /// A runtime that enforces no time or memory budget, only to measure
    /// what the budgets cost (`cargo bench --bench dispatch`). Plugins are
    /// never run on it.
    pub fn without_budgets(metrics: Arc<Metrics>) -> Result<Self> {
        Self::build(None, metrics, false)
    }

    fn build(cache_dir: Option<&Path>, metrics: Arc<Metrics>, budgets: bool) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(budgets);
        config.wasm_component_model(true);
        // The map from native code back to wasm offsets only refines trap
        // backtraces (function names stay): it is a tenth of a component's
        // compiled size, resident for as long as the plugin serves.
        config.generate_address_map(false);
        if let Some(profiler) = profiler()? {
            config.profiler(profiler);
        }
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            config.cache(Some(wasmtime::Cache::new(cache)?));
        }
        let engine = Engine::new(&config)?;
        start_epoch_ticker(&engine);

        let mut linker = Linker::<PluginState>::new(&engine);
        super::imports::add_to_linker(&mut linker)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            metrics,
            state: None,
            source: Arc::from(""),
            budgets,
            observer: None,
            schemas: crate::schema::Schemas::compiled(),
        })
    }

    /// Lets `observer` watch what plugins do (`plugboard replay`).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Keeps plugins' state in `db`, scoped to `source`: the topic or
    /// `file:<name>` the events come from.
    pub fn with_state(mut self, db: Arc<kv::StateDb>, source: &str) -> Self {
        self.state = Some(db);
        self.source = Arc::from(source);
        self
    }

    /// Reads records with `schemas` instead of the compiled-in schema.
    pub fn with_schemas(mut self, schemas: Arc<crate::schema::Schemas>) -> Self {
        self.schemas = schemas;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<PluginState> {
        &self.linker
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from a thread of its
/// own, for the life of the process. One ticker per engine.
fn start_epoch_ticker(engine: &Engine) {
    // The thread holds only a weak reference: it ends with the engine.
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugboard-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// The environment variable that names a profiler for plugins' compiled
/// code: `perfmap` writes `/tmp/perf-PID.map`, so `perf report` names the
/// guest's functions instead of showing `[JIT]` addresses.
pub const PROFILE_ENV: &str = "PLUGBOARD_WASM_PROFILE";

/// The profiler [`PROFILE_ENV`] asks for; none when it is unset or empty.
fn profiler() -> Result<Option<wasmtime::ProfilingStrategy>> {
    profiler_named(std::env::var(PROFILE_ENV).ok().as_deref())
}

fn profiler_named(name: Option<&str>) -> Result<Option<wasmtime::ProfilingStrategy>> {
    match name {
        None | Some("") | Some("none") => Ok(None),
        Some("perfmap") => Ok(Some(wasmtime::ProfilingStrategy::PerfMap)),
        Some(other) => anyhow::bail!(
            "{PROFILE_ENV}={other:?} is not a profiler plugboard knows: set it to perfmap (for perf), or unset it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_variable_takes_perfmap_or_nothing_and_names_itself_otherwise() {
        assert!(profiler_named(None).unwrap().is_none());
        assert!(profiler_named(Some("")).unwrap().is_none());
        assert!(matches!(
            profiler_named(Some("perfmap")).unwrap(),
            Some(wasmtime::ProfilingStrategy::PerfMap)
        ));
        let err = profiler_named(Some("jitdump")).unwrap_err().to_string();
        assert!(err.contains("PLUGBOARD_WASM_PROFILE=\"jitdump\""), "{err}");
        assert!(err.contains("perfmap"), "{err}");
    }
}
