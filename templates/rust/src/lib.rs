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
use plugboard::plugin::types::Event;

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
                &format!("{} v{} {:?}", b.booking_id, b.version, b.state),
            );
        }
        BatchOutcome::All
    }
}

export!(Plugin);
