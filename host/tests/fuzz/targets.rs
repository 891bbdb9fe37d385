//! Fuzz targets: every parser that takes input from outside, fed inputs
//! made from raw bytes by `arbitrary`. Structure-aware: a target starts
//! from a real booking event (or a real config) and mutates its fields,
//! then maybe its encoding, so inputs reach deep into the parsers instead
//! of stopping at the first byte. A target passes if it does not panic;
//! a decoded event must also convert to the plugin record and round-trip.
//!
//! Shared by the short run in the suite (`tests/fuzz.rs`) and the long one
//! (`cargo bench -p plugboard --bench fuzz`).

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use plugboard::event as pb;
use prost::Message;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: [(&str, Target); 8] = [
    ("protobuf", protobuf),
    ("framing", framing),
    ("dynamic", dynamic),
    ("json", json),
    ("host-config", host_config),
    ("manifest", manifest),
    ("template", template),
    ("dead-letter", dead_letter),
];

/// Real events to start from.
fn seeds() -> &'static [pb::BookingEvent] {
    static SEEDS: OnceLock<Vec<pb::BookingEvent>> = OnceLock::new();
    SEEDS.get_or_init(|| plugboard::generate::lifecycles(20, 7, plugboard::generate::DEFAULT_START))
}

fn text(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => String::new(),
        1 => "ü".repeat(u.int_in_range(1..=6000)?),
        2 => "\u{0}\u{feff}\u{10ffff}".into(),
        _ => u.arbitrary()?,
    })
}

/// A real event with some fields changed.
fn event(u: &mut Unstructured) -> Result<pb::BookingEvent> {
    let mut e = u.choose(seeds())?.clone();
    for _ in 0..u.int_in_range(0..=6)? {
        match u.int_in_range(0..=11)? {
            0 => e.event_id = text(u)?,
            1 => e.booking_id = text(u)?,
            2 => e.version = u.arbitrary()?,
            3 => e.state = u.arbitrary()?,
            4 => e.occurred_at = None,
            5 => {
                if let Some(t) = e.occurred_at.as_mut() {
                    t.seconds = u.arbitrary()?;
                    t.nanos = u.arbitrary()?;
                }
            }
            6 => e.customer = None,
            7 => {
                if let Some(s) = e.service.as_mut() {
                    s.category = u.arbitrary()?;
                }
            }
            8 => {
                if let Some(p) = e.payment.as_mut() {
                    p.method = u.arbitrary()?;
                    p.paid_at = None;
                }
            }
            9 => {
                if let Some(m) = e.price.as_mut() {
                    m.amount_minor = u.arbitrary()?;
                    m.currency_code = text(u)?;
                }
            }
            10 => {
                if let Some(c) = e.customer.as_mut() {
                    c.name = text(u)?;
                    c.email = text(u)?;
                }
            }
            _ => e.appointment_start = None,
        }
    }
    Ok(e)
}

/// Flips, cuts, splices and inserts bytes.
fn mutate(u: &mut Unstructured, mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    for _ in 0..u.int_in_range(0..=4)? {
        if bytes.is_empty() {
            bytes.push(u.arbitrary()?);
            continue;
        }
        let at = u.choose_index(bytes.len())?;
        match u.int_in_range(0..=3)? {
            0 => bytes[at] ^= 1 << u.int_in_range(0..=7)?,
            1 => bytes.truncate(at),
            2 => {
                let insert: Vec<u8> = u.arbitrary()?;
                bytes.splice(at..at, insert);
            }
            _ => bytes[at] = u.arbitrary()?,
        }
    }
    Ok(bytes)
}

/// Protobuf from Kafka: plain or in a schema-registry frame, whole or
/// damaged, or just bytes.
pub fn protobuf(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = protobuf_input(&mut u) else {
        return;
    };
    if let Ok(event) = plugboard::decode::from_protobuf(&bytes) {
        check_decoded(&event, &bytes);
    }
}

fn protobuf_input(u: &mut Unstructured) -> Result<Vec<u8>> {
    let body = match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => event(u)?.encode_to_vec(),
        _ => {
            let encoded = event(u)?.encode_to_vec();
            mutate(u, encoded)?
        }
    };
    Ok(match u.int_in_range(0..=3)? {
        // Confluent's wire format: magic 0, schema id, message indexes.
        0 => {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u.arbitrary::<[u8; 4]>()?);
            let indexes: Vec<u8> = u.arbitrary()?;
            framed.extend(indexes.into_iter().take(4));
            framed.extend(body);
            framed
        }
        _ => body,
    })
}

/// The schema-registry wire format alone: a frame that splits says what
/// it held, and the short form of `[0]` round-trips.
pub fn framing(data: &[u8]) {
    if let Ok(framed) = plugboard::framing::split(data) {
        assert!(framed.body.len() <= data.len());
        if let (Some(id), true) = (
            framed.id,
            framed.index.is_empty() && data.get(5) == Some(&0),
        ) {
            assert_eq!(plugboard::framing::header(id)[..], data[..6]);
        }
    }
}

/// The evolved schema of the tests (a new state, payment method and
/// enum, new fields, one nested, the vehicle dropped), read dynamically.
fn evolved() -> &'static plugboard::schema::Schemas {
    static SCHEMAS: OnceLock<std::sync::Arc<plugboard::schema::Schemas>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema/booking_v2.proto");
        plugboard::schema::Schemas::file(&path).expect("the v2 fixture loads")
    })
}

/// Events of a newer producer, read with its schema: its new states and
/// fields, whole or damaged, plain or framed.
pub fn dynamic(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = dynamic_input(&mut u) else {
        return;
    };
    let schemas = evolved();
    if let Ok(decoded) = schemas.decode_protobuf(&bytes, true) {
        if let Some(json) = &decoded.extensions {
            serde_json::from_str::<serde_json::Value>(json).expect("extensions are JSON");
        }
        let booking_id = decoded.event.booking_id.clone();
        let record = plugboard::runtime::convert::from_decoded(
            decoded,
            plugboard::runtime::convert::Envelope::default(),
            None,
        );
        assert_eq!(record.booking.booking_id, booking_id);
    }
}

fn dynamic_input(u: &mut Unstructured) -> Result<Vec<u8>> {
    let writer = evolved().current();
    let mut json =
        serde_json::to_value(event(u)?).map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let map = json
        .as_object_mut()
        .ok_or(arbitrary::Error::IncorrectFormat)?;
    map.remove("vehicle");
    if u.arbitrary()? {
        map.insert("state".into(), "BOOKING_STATE_NO_SHOW".into());
    }
    if u.arbitrary()? {
        map.insert("loyaltyTier".into(), text(u)?.into());
    }
    if u.arbitrary()? {
        map.insert(
            "channel".into(),
            u.choose(&["CHANNEL_WEB", "CHANNEL_PHONE"])?
                .to_string()
                .into(),
        );
    }
    if let Some(customer) = map.get_mut("customer").and_then(|c| c.as_object_mut()) {
        customer.insert("segment".into(), text(u)?.into());
    }
    let body = plugboard::schema::from_json(&writer.message, &json.to_string())
        .map(|m| m.encode_to_vec())
        .or_else(|_| u.arbitrary())?;
    let body = if u.arbitrary()? {
        mutate(u, body)?
    } else {
        body
    };
    Ok(if u.arbitrary()? {
        let mut framed = plugboard::framing::header(u.arbitrary()?).to_vec();
        framed.extend(body);
        framed
    } else {
        body
    })
}

/// What every decoded event must survive: the conversion to the plugin's
/// record, and an encode/decode round trip.
fn check_decoded(event: &pb::BookingEvent, payload: &[u8]) {
    let envelope = plugboard::runtime::convert::Envelope {
        source: "fuzz".into(),
        partition: 0,
        offset: 0,
        key: Some(event.booking_id.clone().into_bytes()),
        timestamp_ms: None,
        headers: Vec::new(),
    };
    let record =
        plugboard::runtime::convert::to_wit(event.clone(), envelope, Some(payload.to_vec()));
    assert_eq!(record.booking.booking_id, event.booking_id);
    let again = pb::BookingEvent::decode(event.encode_to_vec().as_slice()).expect("round trip");
    assert_eq!(&again, event);
}

/// NDJSON lines from a file: proto3 JSON, whole or damaged.
pub fn json(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(line) = json_input(&mut u) else {
        return;
    };
    if let Ok(event) = plugboard::decode::from_json(&line) {
        check_decoded(&event, &event.encode_to_vec());
    }
}

fn json_input(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        // An event with an enum number it does not know has no JSON form:
        // then the line is whatever the generator gives.
        1 => serde_json::to_string(&event(u)?).or_else(|_| u.arbitrary())?,
        _ => {
            let line = serde_json::to_string(&event(u)?).or_else(|_| u.arbitrary())?;
            String::from_utf8_lossy(&mutate(u, line.into_bytes())?).into_owned()
        }
    })
}

/// Lines a host config or manifest may have, right and wrong.
fn toml_text(u: &mut Unstructured, keys: &[&str]) -> Result<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=12)? {
        let line = match u.int_in_range(0..=9)? {
            0 => format!(
                "[{}]",
                u.choose(&[
                    "limits",
                    "kafka",
                    "kafka.librdkafka",
                    "folder",
                    "config",
                    "x"
                ])?
            ),
            1 => u.arbitrary::<String>()?,
            2 => format!("{} = {}", u.choose(keys)?, u.arbitrary::<i64>()?),
            3 => format!(
                "{} = \"${{{}:-{}}}\"",
                u.choose(keys)?,
                u.arbitrary::<String>()?,
                u.arbitrary::<String>()?
            ),
            4 => format!("{} = \"${{UNCLOSED", u.choose(keys)?),
            5 => format!("{} = [\"{}\"]", u.choose(keys)?, u.arbitrary::<String>()?),
            6 => format!("{} = true", u.choose(keys)?),
            _ => format!("{} = {:?}", u.choose(keys)?, u.arbitrary::<String>()?),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

pub fn host_config(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let keys = [
        "plugins_dir",
        "data_dir",
        "cache_dir",
        "admin_addr",
        "brokers",
        "topic",
        "group_prefix",
        "start_from",
        "dead_letter_topic",
        "commit_interval_ms",
        "instance_id",
        "partition_buffer",
        "shutdown_timeout_ms",
        "batch_size",
        "max_attempts",
        "retry_timeout_ms",
        "backoff_initial_ms",
        "backoff_max_ms",
        "memory_limit_mb",
        "timeout_ms",
        "log_lines_per_second",
        "max_series",
        "security.protocol",
    ];
    let Ok(mut text) = toml_text(&mut u, &keys) else {
        return;
    };
    if u.arbitrary::<bool>().unwrap_or(false) {
        text.insert_str(0, "plugins_dir = \"plugins\"\n");
    }
    let _ = plugboard::config::HostConfig::from_text(Path::new("/fuzz/plugboard.toml"), &text);
}

pub fn manifest(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let keys = [
        "component",
        "allow_hosts",
        "path",
        "guest_path",
        "read_only",
        "batch_size",
        "max_attempts",
        "retry_timeout_ms",
        "timeout_ms",
        "memory_limit_mb",
        "base_url",
        "token",
    ];
    let Ok(text) = toml_text(&mut u, &keys) else {
        return;
    };
    let _ = plugboard::config::manifest_from_text(
        "fuzz",
        Path::new("/fuzz/plugins/fuzz.wasm"),
        Some(Path::new("/fuzz/plugins/fuzz.toml")),
        Some(&text),
        &Default::default(),
    );
}

pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = plugboard::config::template::expand_with(&text, |name| {
        (name.len() % 2 == 0).then(|| name.repeat(2))
    });
}

/// The headers of a dead letter, from a plugin's reason of any size and
/// content: the reason header stays within its bound, whole characters.
pub fn dead_letter(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(reason) = text(&mut u) else { return };
    let reason = match u.int_in_range(0..=2u8) {
        Ok(0) => reason.repeat(u.int_in_range(1..=2000usize).unwrap_or(1)),
        _ => reason,
    };
    let class = *u
        .choose(&[
            plugboard::dispatch::FailureClass::Rejected,
            plugboard::dispatch::FailureClass::Trap,
            plugboard::dispatch::FailureClass::Budget,
        ])
        .unwrap_or(&plugboard::dispatch::FailureClass::Decode);
    let failure = plugboard::dispatch::Failure::new(class, &reason, u.arbitrary().unwrap_or(0));
    let max = plugboard::dead_letter::MAX_REASON_BYTES;
    assert!(failure.reason.len() <= max, "{}", failure.reason.len());
    let omitted = u.arbitrary::<Option<String>>().unwrap_or(None);
    let letter = plugboard::dead_letter::Letter {
        plugin: "fuzz",
        sha256: "00",
        version: "00",
        failure: &failure,
        topic: "bookings",
        partition: u.arbitrary().unwrap_or(0),
        offset: u.arbitrary().unwrap_or(0),
        omitted: omitted.as_deref(),
    };
    for (key, value) in letter.headers() {
        assert!(key.starts_with("plugboard."));
        assert!(value.len() <= max, "{key}: {} bytes", value.len());
    }
    if reason.len() <= max {
        assert_eq!(failure.reason, reason, "a short reason is kept whole");
    } else {
        let kept = failure.reason.split(" [cut: ").next().unwrap_or_default();
        assert!(reason.starts_with(kept));
    }
}

/// Runs `target` on `inputs` inputs made from a seeded generator; returns
/// the inputs that panicked, written to `crashes` (named by target and
/// number) so they can be replayed.
pub fn run(
    name: &str,
    target: Target,
    inputs: u64,
    seed: u64,
    crashes: &Path,
) -> Vec<std::path::PathBuf> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut found = Vec::new();
    let mut data = Vec::with_capacity(8192);
    for i in 0..inputs {
        data.clear();
        let len = rng.random_range(0..4096);
        data.resize(len, 0);
        rng.fill(&mut data[..]);
        let input = data.clone();
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            std::fs::create_dir_all(crashes).expect("crash folder");
            let path = crashes.join(format!("{name}-{seed}-{i}.bin"));
            std::fs::write(&path, &input).expect("crash file");
            found.push(path);
        }
    }
    found
}
