//! Per-event cost of dispatching into a no-op WASM plugin, against a native
//! Rust handler given the same batch, for batches of 1, 100 and 1000 events;
//! the cost of the time and memory budgets, measured on a plugin that does
//! some work per event (formats and logs a line) with the budgets enforced
//! and not; what a shadow run of the same no-op costs on top (the serving
//! call, then the shadow's call and the comparison); and the memory one
//! more instance takes.
//!
//!     scripts/build-plugins.sh && cargo bench -p plugboard --bench dispatch
//!
//! Criterion reports time per batch and, through the throughput setting,
//! events per second; divide to get the per-event cost.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plugboard::config::{Limits, PluginSpec};
use plugboard::dispatch::Dispatcher;
use plugboard::metrics::Metrics;
use plugboard::runtime::Runtime;
use plugboard::runtime::bindings::{BatchOutcome, wit};
use plugboard::runtime::convert::{Envelope, to_wit};
use prost::Message;

fn events(n: usize) -> Vec<wit::Event> {
    let mut out = Vec::with_capacity(n);
    for (i, e) in plugboard::generate::lifecycles(n, 1, plugboard::generate::DEFAULT_START)
        .into_iter()
        .cycle()
        .take(n)
        .enumerate()
    {
        let payload = e.encode_to_vec();
        let envelope = Envelope {
            source: "bench".into(),
            partition: 0,
            offset: i as i64,
            key: Some(e.booking_id.clone().into_bytes()),
            ..Default::default()
        };
        // With the payload, as a plugin whose manifest asks for it gets
        // it (and as every plugin did before contract 0.2).
        out.push(to_wit(e, envelope, Some(payload)));
    }
    out
}

/// What a handler compiled into the host would do with the batch: look at
/// every event and say it is handled.
fn native_noop(batch: &[wit::Event]) -> BatchOutcome {
    for event in batch {
        black_box(&event.booking.booking_id);
    }
    BatchOutcome::All
}

/// A native handler that takes its own copy of every event, as crossing
/// into a sandbox must.
fn native_copy(batch: &[wit::Event]) -> BatchOutcome {
    let copy = black_box(batch.to_vec());
    black_box(copy.len());
    BatchOutcome::All
}

fn spec(name: &str) -> PluginSpec {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let component = repo.join(format!("target/plugins/{name}.wasm"));
    assert!(component.exists(), "run scripts/build-plugins.sh first");
    let mut limits = Limits::resolve(&Default::default(), &Default::default());
    // The logging plugin writes a line per event: measure the call, not
    // the log budget's drops.
    limits.log_lines_per_second = u32::MAX;
    PluginSpec {
        name: name.into(),
        component,
        manifest: None,
        allow_hosts: vec![],
        folder: None,
        limits,
        config: Default::default(),
        payload: true,
        extensions: false,
        concurrency: 1,
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Memory one more initialised instance takes, averaged over 200.
fn memory_per_instance(prepared: &plugboard::runtime::Prepared) {
    let before = rss();
    let instances: Vec<_> = (0..200)
        .map(|_| prepared.instantiate(Some(0)).unwrap())
        .collect();
    let after = rss();
    println!(
        "memory per {} instance: {:.0} KiB (200 instances, resident set)",
        prepared.name,
        (after.saturating_sub(before)) as f64 / 200.0 / 1024.0
    );
    drop(instances);
}

fn bench(c: &mut Criterion) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let runtime = Runtime::new(
        Some(&repo.join("target/bench-state")),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let prepared = Arc::new(runtime.prepare(spec("noop")).unwrap());
    let unbudgeted = Runtime::without_budgets(Arc::new(Metrics::new())).unwrap();
    let worker = runtime.prepare(spec("faulty")).unwrap();
    let worker_unbudgeted = unbudgeted.prepare(spec("faulty")).unwrap();
    memory_per_instance(&prepared);
    memory_per_instance(&worker);
    let mut dispatcher = Dispatcher::new(prepared.clone(), prepared.instantiate(Some(0)).unwrap());
    let never = plugboard::shutdown::Shutdown::new();
    let mut instance = prepared.instantiate(Some(0)).unwrap();
    let all = events(1000);
    let tap = Arc::new(plugboard::shadow::Tap::default());
    let shadow = plugboard::shadow::Shadow::new(
        "noop",
        Arc::new(
            runtime
                .prepare(spec("noop"))
                .unwrap()
                .into_shadow(tap.clone()),
        ),
        tap,
        None,
    );
    let mut shadowed = Dispatcher::new(prepared.clone(), prepared.instantiate(Some(0)).unwrap());

    let mut group = c.benchmark_group("dispatch");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut budgeted = worker.instantiate(Some(0)).unwrap();
    let mut free = worker_unbudgeted.instantiate(Some(0)).unwrap();
    group.throughput(Throughput::Elements(100));
    group.bench_with_input(
        BenchmarkId::new("wasm-logging/budgets-enforced", 100),
        &all[..100],
        |b, batch| b.iter(|| budgeted.handle(black_box(batch), &never)),
    );
    group.bench_with_input(
        BenchmarkId::new("wasm-logging/no-budgets", 100),
        &all[..100],
        |b, batch| b.iter(|| free.handle(black_box(batch), &never)),
    );
    for size in [1usize, 100, 1000] {
        let batch = &all[..size];
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(
            BenchmarkId::new("wasm-noop/dispatcher", size),
            batch,
            |b, batch| b.iter(|| dispatcher.deliver(black_box(batch), &never)),
        );
        if size == 100 {
            let served = vec![plugboard::shadow::Served::Handled; size];
            group.bench_with_input(
                BenchmarkId::new("wasm-noop/dispatcher-with-shadow", size),
                batch,
                |b, batch| {
                    b.iter(|| {
                        let outcomes = shadowed.deliver(black_box(batch), &never);
                        shadow.compare(0, batch, &served, Default::default(), &never);
                        outcomes
                    })
                },
            );
        }
        group.bench_with_input(
            BenchmarkId::new("wasm-noop/handle", size),
            batch,
            |b, batch| b.iter(|| instance.handle(black_box(batch), &never)),
        );
        group.bench_with_input(BenchmarkId::new("native-noop", size), batch, |b, batch| {
            b.iter(|| native_noop(black_box(batch)))
        });
        group.bench_with_input(BenchmarkId::new("native-copy", size), batch, |b, batch| {
            b.iter(|| native_copy(black_box(batch)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
