//! Host bindings of the `plugboard:plugin/plugin` world, generated from `wit/`.
//! Kept in one module so the rest of the host names WIT types in one way.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugboard:plugin/plugin",
    with: {
        "wasi:keyvalue/store.bucket": Bucket,
    },
});

pub use self::plugboard::plugin::types as wit;

/// A bucket a plugin opened: just its name; the plugin is the instance's.
pub struct Bucket {
    pub(crate) name: String,
}

pub use exports::plugboard::plugin::handler::{BatchOutcome, Failure, InitError, RetryInfo, Stop};

/// The contract this host implements, as components name it.
pub const CONTRACT: &str = "plugboard:plugin@0.3.0";

/// What changed from the contract versions before this one, for a plugin
/// built against one of them.
pub const CHANGES: &[(&str, &str)] = &[
    (
        "0.2.0",
        "`booking-state`, `service-category` and `payment-method` have a case `unknown` for a \
         value a newer producer's schema has (match it in your code), named by the new fields \
         `unknown-state`, `service.unknown-category` and `payment.unknown-method` \
         (`option<enum-value { name, number }>`); `event` has `extensions: option<string>`, the \
         fields the contract does not have as proto3 JSON, present only when the manifest sets \
         `extensions = true`",
    ),
    (
        "0.1.0",
        "`handle` returns `batch-outcome::all` or `batch-outcome::stopped(stop { handled, failure })` \
     instead of `record { handled, failure: option<failure> }`; `init` fails with \
     `init-error::retry(string)` (transient) or `init-error::reject(string)` instead of a string; \
     `event.payload` is `option<list<u8>>`, present only when the manifest sets `payload = true`; \
     and everything 0.3 changed from 0.2",
    ),
];

/// If the interface names (imports and exports) of a component show it was
/// built against another version of the contract: that version, and what
/// changed since, in a sentence.
pub fn other_contract<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<String> {
    let version = names.find_map(|name| {
        let rest = name.strip_prefix("plugboard:plugin/")?;
        let (_, version) = rest.split_once('@')?;
        (format!("plugboard:plugin@{version}") != CONTRACT).then(|| version.to_string())
    })?;
    let changes = CHANGES
        .iter()
        .find(|(v, _)| *v == version)
        .map_or("see wit/plugin.wit", |(_, c)| c);
    Some(format!(
        "it was built against plugboard:plugin@{version}, and this host implements {CONTRACT}. What changed: {changes}. Rebuild it against this host's wit/ (`plugboard new` makes a project of this version)"
    ))
}
