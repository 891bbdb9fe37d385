//! A short fuzz run of every parser that takes outside input (protobuf and
//! schema-registry frames from Kafka, proto3 JSON lines, the host config,
//! plugin manifests, `${ENV}` templates) and of the conversion to plugin
//! records: no input may panic. The long run is
//! `cargo bench -p plugboard --bench fuzz` (see the README).

mod fuzz {
    pub mod targets;
}

use fuzz::targets::{TARGETS, run};

/// Inputs per target here: seconds in all, a fresh seed every run.
const INPUTS: u64 = 50_000;

#[test]
fn no_outside_input_makes_a_parser_panic() {
    let seed: u64 = rand::random();
    let crashes = std::env::temp_dir().join("plugboard-fuzz-crashes");
    // Panics are expected and caught; keep their messages out of the log.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut found = Vec::new();
    for (name, target) in TARGETS {
        found.extend(run(name, target, INPUTS, seed, &crashes));
    }
    std::panic::set_hook(hook);
    assert!(
        found.is_empty(),
        "{} inputs panic (seed {seed}); the first ones, to replay with their target: {:?}",
        found.len(),
        &found[..found.len().min(5)]
    );
}
