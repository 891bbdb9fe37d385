//! The plugin runtime, in the parts wasmtime's own `serve` is made of:
//!
//! - [`engine`]: the process-wide [`Runtime`]: one wasmtime engine (epoch
//!   interruption, the compiled-code cache), its epoch ticker, and the
//!   linker every import adds itself to;
//! - [`plugin`]: one immutable compiled version ([`Prepared`]): component,
//!   pre-instance and the sha256 of the very bytes compiled;
//! - [`instance`]: one sandboxed [`Instance`] (its Store, limits, deadline,
//!   granted WASI), whose `handle` ends in exactly one [`Disposition`];
//! - [`imports`]: the host side of each import (log, metrics, key-value,
//!   outgoing HTTP), each with its own `add_to_linker`;
//! - `state`: what one instance's Store holds;
//! - [`observer`]: the one interface a caller watches plugins through
//!   (`plugboard replay` records and captures with it; a host has none).
//!
//! A trap or timeout poisons only its instance: drop it and make another
//! from the same [`Prepared`].

pub mod bindings;
pub mod convert;
pub mod engine;
pub mod imports;
pub mod instance;
mod log_budget;
pub mod observer;
mod output;
pub mod plugin;
mod state;

pub use engine::Runtime;
pub use imports::keyvalue as kv;
pub use instance::{CallError, Disposition, Instance, Poison};
pub use plugin::{Prepared, sha256_hex};
pub use state::PluginState;
