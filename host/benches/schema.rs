//! What reading events with the writer's schema costs, per event, beside
//! the compiled fast path: the decode, validation and conversion to the
//! plugin's record of 1,000 events each way, in-process (no broker noise).
//!
//!     cargo bench -p plugboard --bench schema
//!
//! - `compiled`: plain protobuf, the compiled schema (the path before
//!   schemas were read at run time).
//! - `framed-compiled-shape`: in the registry wire format, the writer's
//!   schema the compiled one field for field (the common case with a
//!   registry): the same decode after a frame split and a schema lookup.
//! - `evolved`: a newer producer's events (a new state, new fields): the
//!   same compiled decode, the new state by name.
//! - `evolved-extensions`: the same for a plugin whose manifest sets
//!   `extensions = true`: a dynamic decode with the writer's descriptor
//!   (prost-reflect) and the new fields as JSON.
//!
//! Criterion reports time per 1,000 events and events per second.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plugboard::framing;
use plugboard::runtime::convert::{Envelope, from_decoded};
use plugboard::schema::{Decoded, Schemas};
use prost::Message;

const EVENTS: usize = 1_000;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schema")
        .join(name)
}

/// `EVENTS` generated events, plain.
fn plain() -> Vec<Vec<u8>> {
    plugboard::generate::lifecycles(EVENTS, 1, plugboard::generate::DEFAULT_START)
        .into_iter()
        .take(EVENTS)
        .map(|e| e.encode_to_vec())
        .collect()
}

/// The same events as a v2 producer writes them: a tier, a segment, no
/// vehicle, and each upcoming one a no-show.
fn evolved(schemas: &Schemas) -> Vec<Vec<u8>> {
    let message = schemas.current().message.clone();
    plugboard::generate::lifecycles(EVENTS, 1, plugboard::generate::DEFAULT_START)
        .into_iter()
        .take(EVENTS)
        .map(|e| {
            let mut json = serde_json::to_value(&e).unwrap();
            let map = json.as_object_mut().unwrap();
            map.remove("vehicle");
            map.insert("loyaltyTier".into(), "GOLD".into());
            if map["state"] == "BOOKING_STATE_UPCOMING" {
                map.insert("state".into(), "BOOKING_STATE_NO_SHOW".into());
            }
            if let Some(c) = map.get_mut("customer") {
                c["segment"] = "fleet".into();
            }
            let body = plugboard::schema::from_json(&message, &json.to_string())
                .unwrap()
                .encode_to_vec();
            let mut framed = framing::header(2).to_vec();
            framed.extend(body);
            framed
        })
        .collect()
}

fn convert(decoded: Decoded) {
    black_box(from_decoded(decoded, Envelope::default(), None));
}

fn bench(c: &mut Criterion) {
    let compiled = Schemas::compiled();
    let v1: Arc<Schemas> = Schemas::file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/booking/v1/booking.proto"),
    )
    .unwrap();
    let v2 = Schemas::file(&fixture("booking_v2.proto")).unwrap();
    let plain = plain();
    let framed: Vec<Vec<u8>> = plain
        .iter()
        .map(|body| {
            let mut framed = framing::header(1).to_vec();
            framed.extend(body);
            framed
        })
        .collect();
    let evolved = evolved(&v2);

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("compiled", |b| {
        b.iter(|| {
            for bytes in &plain {
                convert(compiled.decode_protobuf(bytes, false).unwrap());
            }
        })
    });
    group.bench_function("framed-compiled-shape", |b| {
        b.iter(|| {
            for bytes in &framed {
                convert(v1.decode_protobuf(bytes, false).unwrap());
            }
        })
    });
    group.bench_function("evolved", |b| {
        b.iter(|| {
            for bytes in &evolved {
                convert(v2.decode_protobuf(bytes, false).unwrap());
            }
        })
    });
    group.bench_function("evolved-extensions", |b| {
        b.iter(|| {
            for bytes in &evolved {
                convert(v2.decode_protobuf(bytes, true).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
