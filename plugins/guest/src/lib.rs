//! The `plugboard:plugin/plugin` world for Rust plugins, generated once from
//! `wit/`, with the helpers every plugin needs. A plugin implements
//! [`Guest`] and calls [`export_plugin!`]:
//!
//! ```ignore
//! use plugboard_guest::{BatchOutcome, Event, Guest, InitError};
//!
//! struct MyPlugin;
//!
//! impl Guest for MyPlugin {
//!     fn init(_config: Vec<(String, String)>) -> Result<(), InitError> { Ok(()) }
//!     fn handle(_batch: Vec<Event>) -> BatchOutcome { BatchOutcome::All }
//! }
//!
//! plugboard_guest::export_plugin!(MyPlugin);
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugboard:plugin/plugin",
    pub_export_macro: true,
    export_macro_name: "export_plugin",
    default_bindings_module: "plugboard_guest",
    generate_all,
});

pub mod http;

pub use exports::plugboard::plugin::handler::{
    BatchOutcome, Failure, Guest, InitError, RetryInfo, Stop,
};
pub use plugboard::plugin::log::{self, Level};
pub use plugboard::plugin::metrics;
pub use plugboard::plugin::types::*;
/// Durable state the host keeps for this plugin (`wasi:keyvalue`): what a
/// call writes is saved when it returns and dropped if it traps.
pub use wasi::keyvalue::{atomics, batch, store};

impl BookingState {
    /// The lowercase name used in CRM fields, metric labels and columns;
    /// `unknown` for a state a newer producer added (see
    /// [`BookingEvent::state_name`]).
    pub fn as_str(self) -> &'static str {
        match self {
            BookingState::Created => "created",
            BookingState::Paid => "paid",
            BookingState::Upcoming => "upcoming",
            BookingState::Finalized => "finalized",
            BookingState::Cancelled => "cancelled",
            BookingState::Refunded => "refunded",
            BookingState::Unknown => "unknown",
        }
    }
}

impl BookingEvent {
    /// The state's name: as [`BookingState::as_str`], and a state a newer
    /// producer added by its own name (`no-show`).
    pub fn state_name(&self) -> &str {
        match (&self.state, &self.unknown_state) {
            (BookingState::Unknown, Some(value)) => &value.name,
            (state, _) => state.as_str(),
        }
    }
}

impl ServiceCategory {
    /// The lowercase name, as the contract writes the case.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceCategory::Unspecified => "unspecified",
            ServiceCategory::OilChange => "oil-change",
            ServiceCategory::WheelChange => "wheel-change",
            ServiceCategory::Inspection => "inspection",
            ServiceCategory::Other => "other",
            ServiceCategory::Unknown => "unknown",
        }
    }
}

impl Service {
    /// The category's name, a category a newer producer added by its own.
    pub fn category_name(&self) -> &str {
        match (&self.category, &self.unknown_category) {
            (ServiceCategory::Unknown, Some(value)) => &value.name,
            (category, _) => category.as_str(),
        }
    }
}

impl PaymentMethod {
    /// The lowercase name, as the contract writes the case.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Unspecified => "unspecified",
            PaymentMethod::Card => "card",
            PaymentMethod::Paypal => "paypal",
            PaymentMethod::Invoice => "invoice",
            PaymentMethod::Unknown => "unknown",
        }
    }
}

impl Payment {
    /// The method's name, a method a newer producer added by its own.
    pub fn method_name(&self) -> &str {
        match (&self.method, &self.unknown_method) {
            (PaymentMethod::Unknown, Some(value)) => &value.name,
            (method, _) => method.as_str(),
        }
    }
}

impl Timestamp {
    /// As a UTC date-time; `None` if out of chrono's range.
    pub fn to_utc(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp(self.seconds, self.nanos)
    }

    /// RFC 3339 in UTC, e.g. `2026-03-16T08:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_utc()
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_default()
    }
}

impl BatchOutcome {
    /// The first `handled` events are done; the next one failed.
    pub fn stop(handled: usize, failure: Failure) -> Self {
        BatchOutcome::Stopped(Stop {
            handled: handled as u32,
            failure,
        })
    }
}

/// A config error is permanent: `?` on a `String` or `&str` error in `init`
/// rejects the config. Say [`InitError::Retry`] for a transient failure.
impl From<String> for InitError {
    fn from(reason: String) -> Self {
        InitError::Reject(reason)
    }
}

impl From<&str> for InitError {
    fn from(reason: &str) -> Self {
        InitError::Reject(reason.to_string())
    }
}
