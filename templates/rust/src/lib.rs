//! {{name}}: a plugboard plugin. The host calls `init` once per instance
//! with the manifest's `[config]`, then `handle` with batches of booking
//! events, in order; see wit/plugin.wit for the whole contract.

wit_bindgen::generate!({
    path: "wit",
    world: "plugboard:plugin/plugin",
    generate_all,
});

use exports::plugboard::plugin::handler::{BatchOutcome, Guest, InitError};
use plugboard::plugin::log::{Level, log};
use plugboard::plugin::types::{BookingEvent, BookingState, Event};

struct Plugin;

impl Guest for Plugin {
    fn init(_config: Vec<(String, String)>) -> Result<(), InitError> {
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        for event in &batch {
            let b = &event.booking;
            log(
                Level::Info,
                &format!("{} v{} {}", b.booking_id, b.version, state_name(b)),
            );
        }
        BatchOutcome::All
    }
}

/// A state as the contract writes it; one a newer producer added (the
/// contract does not name it) by its name, e.g. `no-show`.
fn state_name(b: &BookingEvent) -> String {
    match (b.state, &b.unknown_state) {
        (BookingState::Unknown, Some(value)) => value.name.clone(),
        (known, _) => format!("{known:?}").to_lowercase(),
    }
}

export!(Plugin);
