//! The same plugin (garage-notifier) in each language, side by side: size,
//! compile time from the `.wasm`, load time from the compiled cache, memory
//! the compiled plugin takes, and the cost of one `handle` call with one
//! event (a `created` one, which the notifier skips: the call itself).
//!
//!     scripts/build-plugins.sh && cargo bench -p plugboard --bench languages
//!
//! Components missing from target/plugins/ are left out of the table.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard::config::{Limits, PluginSpec};
use plugboard::metrics::Metrics;
use plugboard::runtime::Runtime;
use plugboard::runtime::convert::{Envelope, to_wit};

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn spec(component: &Path) -> PluginSpec {
    PluginSpec {
        name: "garage-notifier".into(),
        component: component.to_path_buf(),
        manifest: None,
        allow_hosts: vec!["http://127.0.0.1:9".into()],
        folder: None,
        limits: Limits::resolve(&Default::default(), &Default::default()),
        config: [(
            "webhook_url".to_string(),
            "http://127.0.0.1:9/hooks".to_string(),
        )]
        .into_iter()
        .collect(),
        payload: false,
        extensions: false,
        concurrency: 1,
    }
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let event = {
        let e = plugboard::generate::lifecycles(1, 1, plugboard::generate::DEFAULT_START)
            .into_iter()
            .next()
            .unwrap();
        to_wit(e, Envelope::default(), None)
    };
    println!(
        "{:<11} {:>9} {:>12} {:>11} {:>10} {:>12}",
        "language", "size", "compile", "from cache", "RSS +", "per call"
    );
    for (language, file) in [
        ("Rust", "garage-notifier"),
        ("JavaScript", "garage-notifier-js"),
        ("Python", "garage-notifier-py"),
        ("Go", "garage-notifier-go"),
    ] {
        let component = repo.join(format!("target/plugins/{file}.wasm"));
        if !component.exists() {
            println!("{language:<11} (no {} yet)", component.display());
            continue;
        }
        let size = std::fs::metadata(&component).unwrap().len();
        let cache = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());

        // Compile from the .wasm: an empty cache.
        let before = rss();
        let began = Instant::now();
        let runtime = Runtime::new(Some(cache.path()), metrics.clone()).unwrap();
        let prepared = runtime.prepare(spec(&component)).unwrap();
        let compile = began.elapsed();
        let memory = rss().saturating_sub(before);
        drop(prepared);

        // The same from the cache the first compile filled.
        let runtime = Runtime::new(Some(cache.path()), metrics).unwrap();
        let began = Instant::now();
        let prepared = runtime.prepare(spec(&component)).unwrap();
        let cached = began.elapsed();

        let mut instance = prepared.instantiate(Some(0)).unwrap();
        let batch = std::slice::from_ref(&event);
        for _ in 0..200 {
            let d = instance.handle(batch, &plugboard::shutdown::Shutdown::new());
            assert!(matches!(d, plugboard::runtime::Disposition::All), "{d}");
        }
        let calls = 2000;
        let began = Instant::now();
        for _ in 0..calls {
            let d = instance.handle(batch, &plugboard::shutdown::Shutdown::new());
            assert!(matches!(d, plugboard::runtime::Disposition::All), "{d}");
        }
        let per_call = began.elapsed() / calls;
        println!(
            "{language:<11} {:>7.1}MB {:>12} {:>11} {:>8}MB {:>12}",
            size as f64 / 1e6,
            format!("{:.2?}", compile),
            format!("{:.1?}", cached),
            memory / (1 << 20),
            format!("{:.1?}", per_call),
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
