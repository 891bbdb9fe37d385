//! Host bindings of the `plugboard:plugin/plugin` world, generated from `wit/`.
//! Kept in one module so the rest of the host names WIT types in one way.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugboard:plugin/plugin",
    with: {
        "wasi:keyvalue/store.bucket": super::kv::Bucket,
    },
});

pub use self::plugboard::plugin::types as wit;
pub use exports::plugboard::plugin::handler::{BatchOutcome, Failure, RetryInfo};
