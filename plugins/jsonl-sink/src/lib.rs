//! jsonl-sink: writes every event as one JSON line (NDJSON) to a file per
//! source partition in the granted folder: `<dir>/<source>-<partition>.jsonl`
//! (a `file:` source's colon becomes `_`). Each line carries the envelope
//! (`source`, `partition`, `offset`) and the whole booking in snake_case,
//! timestamps in RFC 3339, enums as lowercase names (a value a newer
//! producer added by its name), and `extensions` when the manifest asks for
//! them and the event has any.
//!
//! Replay-safe: a file is appended in offset order, and an event whose
//! offset is not above the file's last line is skipped, so a redelivery
//! after a crash or a replay never writes a line twice. A line torn by a
//! crash mid-write is cut off before the file is appended again. A write
//! that fails (disk full, say) is retried by the host, with the partition
//! holding.
//!
//! Config: `dir` (default `/data`, the folder granted in the manifest);
//! `fsync` (`false` by default: `true` syncs each batch to disk before it
//! counts as handled, so a power loss loses nothing committed).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use plugboard_guest::metrics::counter_add;
use plugboard_guest::{
    BatchOutcome, BookingEvent, Event, Failure, Guest, InitError, RetryInfo, ServiceCategory,
    Timestamp,
};
use serde::Serialize;
use serde_json::Value;

/// An open file and the offset of its last line.
struct Sink {
    file: File,
    last: Option<i64>,
}

struct Settings {
    dir: PathBuf,
    fsync: bool,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings {
        dir: PathBuf::from("/data"),
        fsync: false,
    });
    static SINKS: RefCell<HashMap<PathBuf, Sink>> = RefCell::new(HashMap::new());
}

struct JsonlSink;

impl Guest for JsonlSink {
    fn init(config: Vec<(String, String)>) -> Result<(), InitError> {
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let dir = PathBuf::from(get("dir").unwrap_or_else(|| "/data".into()));
        let fsync = match get("fsync").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("fsync must be true or false, got `{other}`").into()),
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create {}: {e} (is a folder granted in the manifest's [folder]?)",
                dir.display()
            )
        })?;
        SETTINGS.with(|s| *s.borrow_mut() = Settings { dir, fsync });
        SINKS.with(|s| s.borrow_mut().clear());
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        // A batch is one partition's, in order: one file.
        let Some(first) = batch.first() else {
            return BatchOutcome::All;
        };
        let path = SETTINGS.with(|s| {
            s.borrow()
                .dir
                .join(file_name(&first.envelope.source, first.envelope.partition))
        });
        match append(&path, &batch) {
            Ok(written) => {
                counter_add("jsonl_lines_written_total", &[], written as f64);
                BatchOutcome::All
            }
            Err(e) => {
                // Read the file's end again next time: part of the batch may
                // be on disk.
                SINKS.with(|s| s.borrow_mut().remove(&path));
                BatchOutcome::stop(
                    0,
                    Failure::Retry(RetryInfo {
                        reason: format!("cannot write {}: {e}", path.display()),
                        after_ms: None,
                    }),
                )
            }
        }
    }
}

/// `<source>-<partition>.jsonl`, with characters unsafe in a file name as `_`.
fn file_name(source: &str, partition: i32) -> String {
    let safe: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{partition}.jsonl")
}

/// Appends the events of `batch` the file does not hold yet; returns how
/// many lines were written.
fn append(path: &PathBuf, batch: &[Event]) -> std::io::Result<usize> {
    let fsync = SETTINGS.with(|s| s.borrow().fsync);
    SINKS.with(|sinks| {
        let mut sinks = sinks.borrow_mut();
        if !sinks.contains_key(path) {
            sinks.insert(path.clone(), open(path)?);
        }
        let sink = sinks.get_mut(path).expect("inserted above");
        let mut out = Vec::with_capacity(batch.len() * 768);
        let mut written = 0;
        let mut last = sink.last;
        for event in batch {
            let offset = event.envelope.offset;
            if last.is_some_and(|l| offset <= l) {
                continue;
            }
            serde_json::to_writer(&mut out, &line(event)).map_err(std::io::Error::other)?;
            out.push(b'\n');
            last = Some(offset);
            written += 1;
        }
        if written > 0 {
            sink.file.write_all(&out)?;
            if fsync {
                sink.file.sync_data()?;
            }
            sink.last = last;
        }
        Ok(written)
    })
}

/// Opens `path` for appending, cuts off a torn last line, and reads the
/// offset of the last whole one.
fn open(path: &PathBuf) -> std::io::Result<Sink> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = file.metadata()?.len();
    let (end, last) = tail(&mut file, len)?;
    if end < len {
        file.set_len(end)?;
    }
    file.seek(SeekFrom::Start(end))?;
    Ok(Sink { file, last })
}

/// Where the last whole line ends, and its offset.
fn tail(file: &mut File, len: u64) -> std::io::Result<(u64, Option<i64>)> {
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.take(len - start).read_to_end(&mut bytes)?;
        // The end of the last whole line: a newline, or the start of the file.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                return Ok((0, None));
            }
            window *= 4;
            continue;
        };
        let line_start = bytes[..end]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1);
        if line_start.is_none() && start > 0 {
            window *= 4;
            continue;
        }
        let line = &bytes[line_start.unwrap_or(0)..end];
        let offset = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v["offset"].as_i64())
            .ok_or_else(|| {
                std::io::Error::other("its last line is not a jsonl-sink line (no `offset`)")
            })?;
        return Ok((start + end as u64 + 1, Some(offset)));
    }
}

/// One event as a JSON line: serialised straight from the event, without
/// an intermediate JSON tree.
#[derive(Serialize)]
struct Line<'a> {
    source: &'a str,
    partition: i32,
    offset: i64,
    event_id: &'a str,
    booking_id: &'a str,
    version: u64,
    state: &'a str,
    occurred_at: Option<String>,
    customer: Option<CustomerLine<'a>>,
    garage: Option<GarageLine<'a>>,
    service: Option<ServiceLine<'a>>,
    vehicle: Option<VehicleLine<'a>>,
    price: Option<PriceLine<'a>>,
    appointment_start: Option<String>,
    payment: Option<PaymentLine<'a>>,
    /// The fields the contract does not have, as the host gave them (only
    /// if the manifest sets `extensions = true` and the event has any).
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
struct CustomerLine<'a> {
    customer_id: &'a str,
    name: &'a str,
    email: &'a str,
    phone: &'a str,
}

#[derive(Serialize)]
struct GarageLine<'a> {
    garage_id: &'a str,
    name: &'a str,
    city: &'a str,
    postal_code: &'a str,
}

#[derive(Serialize)]
struct ServiceLine<'a> {
    service_code: &'a str,
    name: &'a str,
    category: &'a str,
}

#[derive(Serialize)]
struct VehicleLine<'a> {
    license_plate: &'a str,
    make: &'a str,
    model: &'a str,
}

#[derive(Serialize)]
struct PriceLine<'a> {
    currency_code: &'a str,
    amount_minor: i64,
}

#[derive(Serialize)]
struct PaymentLine<'a> {
    payment_id: &'a str,
    method: &'a str,
    paid_at: Option<String>,
}

fn line(event: &Event) -> Line<'_> {
    let b: &BookingEvent = &event.booking;
    Line {
        source: &event.envelope.source,
        partition: event.envelope.partition,
        offset: event.envelope.offset,
        event_id: &b.event_id,
        booking_id: &b.booking_id,
        version: b.version,
        state: b.state_name(),
        occurred_at: b.occurred_at.map(Timestamp::to_rfc3339),
        customer: b.customer.as_ref().map(|c| CustomerLine {
            customer_id: &c.customer_id,
            name: &c.name,
            email: &c.email,
            phone: &c.phone,
        }),
        garage: b.garage.as_ref().map(|g| GarageLine {
            garage_id: &g.garage_id,
            name: &g.name,
            city: &g.city,
            postal_code: &g.postal_code,
        }),
        service: b.service.as_ref().map(|s| ServiceLine {
            service_code: &s.service_code,
            name: &s.name,
            category: match s.category {
                ServiceCategory::Unknown => s.category_name(),
                known => category(known),
            },
        }),
        vehicle: b.vehicle.as_ref().map(|v| VehicleLine {
            license_plate: &v.license_plate,
            make: &v.make,
            model: &v.model,
        }),
        price: b.price.as_ref().map(|p| PriceLine {
            currency_code: &p.currency_code,
            amount_minor: p.amount_minor,
        }),
        appointment_start: b.appointment_start.map(Timestamp::to_rfc3339),
        payment: b.payment.as_ref().map(|p| PaymentLine {
            payment_id: &p.payment_id,
            method: p.method_name(),
            paid_at: p.paid_at.map(Timestamp::to_rfc3339),
        }),
        extensions: event
            .extensions
            .as_deref()
            .and_then(|json| serde_json::value::RawValue::from_string(json.to_string()).ok()),
    }
}

fn category(c: ServiceCategory) -> &'static str {
    match c {
        ServiceCategory::Unspecified => "unspecified",
        ServiceCategory::OilChange => "oil_change",
        ServiceCategory::WheelChange => "wheel_change",
        ServiceCategory::Inspection => "inspection",
        ServiceCategory::Other => "other",
        ServiceCategory::Unknown => "unknown",
    }
}

plugboard_guest::export_plugin!(JsonlSink);
