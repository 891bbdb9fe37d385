//! The host side of what a plugin imports, each part with its own
//! `add_to_linker`: standard WASI (clocks, random, stdio, the granted
//! folder), [`log`], [`metrics`], [`keyvalue`] (durable state) and
//! outgoing HTTP behind the [`egress`] policy.

pub mod egress;
pub mod keyvalue;
pub mod log;
pub mod metrics;

use anyhow::Result;
use wasmtime::component::{HasSelf, Linker};

use super::bindings::plugboard::plugin::types;
use super::state::PluginState;

/// Adds every import of the plugin worlds to `linker`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    types::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    log::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    keyvalue::add_to_linker(linker, |s| keyvalue::KvView {
        kv: &mut s.kv,
        table: &mut s.table,
    })?;
    egress::add_to_linker(linker)?;
    Ok(())
}
