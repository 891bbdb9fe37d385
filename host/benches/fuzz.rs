//! The long fuzz run: every target of `tests/fuzz/targets.rs` on many
//! generated inputs, printing inputs/s; inputs that panic are written to
//! `target/fuzz-crashes/`.
//!
//!   cargo bench -p plugboard --bench fuzz -- [INPUTS_PER_TARGET] [SEED]
//!
//! Default: 10,000,000 inputs per target (50 million in all), seed 1.

#[path = "../tests/fuzz/targets.rs"]
mod targets;

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let inputs: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let crashes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
    std::panic::set_hook(Box::new(|_| {}));
    let mut total = 0u64;
    let mut found = Vec::new();
    let began = Instant::now();
    println!(
        "{:<12} {:>12} {:>10} {:>12} {:>8}",
        "target", "inputs", "seconds", "inputs/s", "panics"
    );
    for (name, target) in targets::TARGETS {
        let start = Instant::now();
        let crashed = targets::run(name, target, inputs, seed, &crashes);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<12} {inputs:>12} {secs:>10.1} {:>12.0} {:>8}",
            inputs as f64 / secs,
            crashed.len()
        );
        total += inputs;
        found.extend(crashed);
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "all          {total:>12} {secs:>10.1} {:>12.0} {:>8}",
        total as f64 / secs,
        found.len()
    );
    for path in &found {
        println!("panicked: {}", path.display());
    }
    if !found.is_empty() {
        std::process::exit(1);
    }
}
