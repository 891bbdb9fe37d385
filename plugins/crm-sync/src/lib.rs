//! crm-sync: keeps a CRM's booking records in step with the booking events,
//! through HubSpot's CRM v3 objects batch API (`batch/read`, then
//! `batch/upsert` with `idProperty = booking_id`).
//!
//! Replay-safe: a booking is written only when the event's version is newer
//! than the `booking_version` the CRM holds, so duplicates, replays and late
//! older versions change nothing. 5xx, 408, 429 (passing `Retry-After` on)
//! and connection errors ask the host to retry: it holds the partition until
//! the CRM is back. Other 4xx reject the event with the CRM's message, and
//! so does a request the host denies (the CRM's origin is not granted).
//!
//! Config: `base_url` (required), `token` (a bearer token, optional),
//! `object_type` (default `bookings`), `request_timeout_ms` (default 10000:
//! a CRM that does not answer within it is retried), `price_format`
//! (`minor`, the default: `price_amount_minor` in minor units, "12345";
//! `decimal`: in major units, "123.45"), `extra_properties` (a table from a
//! field the contract does not have, as the producer's schema names it, to
//! the CRM property it fills: `{ loyalty_tier = "loyalty_tier",
//! "customer.segment" = "customer_segment" }`; needs `extensions = true` in
//! the manifest). A state a newer producer added is written by its name.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use plugboard_guest::http::{self, Method};
use plugboard_guest::log::log;
use plugboard_guest::metrics::counter_add;
use plugboard_guest::{BatchOutcome, Event, Failure, Guest, InitError, Level, RetryInfo};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

// The request bodies are typed and borrow from the events: a tree of
// `serde_json::Value`s per booking cost more than the rest of the plugin.

/// `batch/read`'s body: the two properties crm-sync compares, per id.
#[derive(Serialize)]
struct ReadRequest<'a> {
    #[serde(rename = "idProperty")]
    id_property: &'static str,
    properties: [&'static str; 2],
    inputs: Vec<ReadId<'a>>,
}

#[derive(Serialize)]
struct ReadId<'a> {
    id: &'a str,
}

/// `batch/upsert`'s body.
#[derive(Serialize)]
struct UpsertRequest<'a> {
    inputs: Vec<UpsertInput<'a>>,
}

#[derive(Serialize)]
struct UpsertInput<'a> {
    #[serde(rename = "idProperty")]
    id_property: &'static str,
    id: &'a str,
    properties: Properties<'a>,
}

/// The CRM record of a booking. HubSpot property values are strings.
struct Properties<'a> {
    /// From the fields the contract has.
    base: [(&'static str, Cow<'a, str>); 11],
    /// From `extra_properties`: one of the same name replaces a base one.
    extra: Vec<(&'a str, String)>,
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in &self.base {
            if !self.extra.iter().any(|(extra, _)| extra == name) {
                map.serialize_entry(name, value)?;
            }
        }
        for (name, value) in &self.extra {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The part of a batch read's answer crm-sync uses.
#[derive(Deserialize, Default)]
struct ReadAnswer {
    #[serde(default)]
    results: Vec<ReadResult>,
}

#[derive(Deserialize)]
struct ReadResult {
    properties: ReadProperties,
}

#[derive(Deserialize)]
struct ReadProperties {
    booking_id: Option<String>,
    booking_version: Option<String>,
}

/// HubSpot accepts at most 100 inputs per batch call.
const BATCH_LIMIT: usize = 100;

struct Crm {
    origin: http::Origin,
    authorization: Option<String>,
    object_type: String,
    /// `price_amount_minor` as a decimal in major units.
    decimal_price: bool,
    /// Extension fields (path as in the producer's schema) to CRM
    /// properties.
    extra_properties: Vec<(Vec<String>, String)>,
}

thread_local! {
    static CRM: RefCell<Option<Crm>> = const { RefCell::new(None) };
}

/// Worth trying again later: the CRM is down, overloaded or rate-limits.
struct Transient {
    reason: String,
    after_ms: Option<u32>,
    /// The CRM answered (with a status that asks for a retry), rather than
    /// not being reached at all.
    answered: bool,
}

enum SyncError {
    Transient(Transient),
    /// The CRM refuses the data: trying again cannot help.
    Permanent(String),
}

struct CrmSync;

impl Guest for CrmSync {
    fn init(config: Vec<(String, String)>) -> Result<(), InitError> {
        let config: HashMap<String, String> = config.into_iter().collect();
        let base = config
            .get("base_url")
            .ok_or("config `base_url` is required, e.g. base_url = \"http://127.0.0.1:8088\"")?;
        let timeout = match config.get("request_timeout_ms") {
            None => http::DEFAULT_TIMEOUT_MS,
            Some(v) => v.parse::<u64>().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                format!("request_timeout_ms must be a positive number, got `{v}`")
            })?,
        };
        let extra_properties = config
            .iter()
            .filter_map(|(key, property)| {
                let path = key.strip_prefix("extra_properties.")?;
                Some((
                    path.split('.').map(str::to_string).collect(),
                    property.clone(),
                ))
            })
            .collect();
        let crm = Crm {
            extra_properties,
            origin: http::Origin::parse(base)?.with_timeout_ms(timeout),
            authorization: config
                .get("token")
                .filter(|t| !t.is_empty())
                .map(|t| format!("Bearer {t}")),
            object_type: config
                .get("object_type")
                .cloned()
                .unwrap_or_else(|| "bookings".to_string()),
            decimal_price: match config.get("price_format").map(String::as_str) {
                None | Some("minor") => false,
                Some("decimal") => true,
                Some(other) => {
                    return Err(InitError::Reject(format!(
                        "price_format must be minor or decimal, got `{other}`"
                    )));
                }
            },
        };
        CRM.with(|c| *c.borrow_mut() = Some(crm));
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        CRM.with(|crm| {
            let crm = crm.borrow();
            let crm = crm.as_ref().expect("init ran before handle");
            let all: Vec<&Event> = batch.iter().collect();
            match crm.sync(&all) {
                Ok(()) => BatchOutcome::All,
                Err(SyncError::Transient(t)) => retry(0, t),
                // One record spoils a whole batch call: find it by going one
                // event at a time, in order.
                Err(SyncError::Permanent(_)) => {
                    for (i, event) in all.iter().enumerate() {
                        match crm.sync(&[event]) {
                            Ok(()) => {}
                            Err(SyncError::Permanent(reason)) => {
                                return BatchOutcome::stop(i, Failure::Reject(reason));
                            }
                            Err(SyncError::Transient(t)) => {
                                return retry(i, t);
                            }
                        }
                    }
                    BatchOutcome::All
                }
            }
        })
    }
}

fn retry(handled: usize, t: Transient) -> BatchOutcome {
    let Transient {
        reason,
        after_ms,
        answered,
    } = t;
    // The host logs when the partition starts and stops waiting; this says
    // what each attempt met.
    let what = if answered {
        "the CRM is busy or failing"
    } else {
        "the CRM is not reachable"
    };
    let after = after_ms.map_or(String::new(), |ms| format!(" (it asks to wait {ms} ms)"));
    log(Level::Info, &format!("{what}, will retry{after}: {reason}"));
    BatchOutcome::stop(handled, Failure::Retry(RetryInfo { reason, after_ms }))
}

impl Crm {
    /// Writes the newest version of each booking in `events`, unless the
    /// CRM already holds that version or a newer one.
    fn sync(&self, events: &[&Event]) -> Result<(), SyncError> {
        let mut newest: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in events {
            let slot = newest.entry(e.booking.booking_id.as_str()).or_insert(e);
            if e.booking.version > slot.booking.version {
                *slot = e;
            }
        }
        let newest: Vec<&Event> = newest.into_values().collect();
        for chunk in newest.chunks(BATCH_LIMIT) {
            let held = self.read_versions(chunk)?;
            let stale = |e: &&&Event| {
                held.get(&e.booking.booking_id)
                    .is_some_and(|v| *v >= e.booking.version)
            };
            let (skip, write): (Vec<&&Event>, Vec<&&Event>) = chunk.iter().partition(stale);
            if !skip.is_empty() {
                counter_add("crm_sync_skipped_total", &[], skip.len() as f64);
            }
            if !write.is_empty() {
                self.upsert(&write)?;
                counter_add("crm_sync_upserted_total", &[], write.len() as f64);
            }
        }
        Ok(())
    }

    fn read_versions(&self, events: &[&Event]) -> Result<HashMap<String, u64>, SyncError> {
        let body = ReadRequest {
            id_property: "booking_id",
            properties: ["booking_id", "booking_version"],
            inputs: events
                .iter()
                .map(|e| ReadId {
                    id: &e.booking.booking_id,
                })
                .collect(),
        };
        let response = self.call("batch/read", &body)?;
        // Only the two properties are read; the rest of the answer is
        // skipped, not built into a JSON tree.
        let read: ReadAnswer = serde_json::from_slice(&response).unwrap_or_default();
        let mut held = HashMap::new();
        for result in read.results {
            if let (Some(id), Some(version)) = (
                result.properties.booking_id,
                result
                    .properties
                    .booking_version
                    .and_then(|v| v.parse().ok()),
            ) {
                held.insert(id, version);
            }
        }
        Ok(held)
    }

    fn upsert(&self, events: &[&&Event]) -> Result<(), SyncError> {
        let inputs = events
            .iter()
            .map(|e| UpsertInput {
                id_property: "booking_id",
                id: &e.booking.booking_id,
                properties: self.properties(e),
            })
            .collect();
        self.call("batch/upsert", &UpsertRequest { inputs })?;
        Ok(())
    }

    /// POSTs `body` to `action`; the answer's body on success.
    fn call(&self, action: &str, body: &impl Serialize) -> Result<Vec<u8>, SyncError> {
        let path = format!("/crm/v3/objects/{}/{action}", self.object_type);
        let body = serde_json::to_vec(body).expect("request bodies serialise");
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ];
        if let Some(auth) = &self.authorization {
            headers.push(("authorization", auth));
        }
        let response =
            http::send(&self.origin, Method::Post, &path, &headers, &body).map_err(|e| {
                let reason = format!("POST {path}: {}", e.0);
                if e.is_denied() {
                    SyncError::Permanent(reason)
                } else {
                    SyncError::Transient(Transient {
                        reason,
                        after_ms: None,
                        answered: false,
                    })
                }
            })?;
        if (200..=299).contains(&response.status) {
            return Ok(response.body);
        }
        let text = String::from_utf8_lossy(&response.body);
        match response.status {
            408 | 429 | 500..=599 => Err(SyncError::Transient(Transient {
                reason: format!("POST {path}: HTTP {}: {}", response.status, message(&text)),
                after_ms: response.retry_after_secs.map(|s| s.saturating_mul(1000)),
                answered: true,
            })),
            status => Err(SyncError::Permanent(format!(
                "POST {path}: HTTP {status}: {}",
                message(&text)
            ))),
        }
    }
}

/// The CRM's error message, from a HubSpot-style `{"message": ...}` body.
fn message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(500).collect())
}

impl Crm {
    /// The CRM record of a booking.
    fn properties<'a>(&'a self, event: &'a Event) -> Properties<'a> {
        let mut properties = Properties {
            base: properties(&event.booking, self.decimal_price),
            extra: Vec::new(),
        };
        if self.extra_properties.is_empty() {
            return properties;
        }
        let extensions: Option<Value> = event
            .extensions
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok());
        for (path, property) in &self.extra_properties {
            // The newest version of a booking is written whole: a field it
            // does not set is written empty.
            let value = extensions
                .as_ref()
                .and_then(|x| lookup(x, path))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            match properties.extra.iter_mut().find(|(p, _)| p == property) {
                Some(slot) => slot.1 = value,
                None => properties.extra.push((property, value)),
            }
        }
        properties
    }
}

/// The value at `path` (field names as the schema writes them, or in the
/// JSON mapping's lowerCamelCase) in the extensions.
fn lookup<'a>(extensions: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(extensions, |value, field| {
        value.get(field).or_else(|| value.get(camel(field)))
    })
}

/// `loyalty_tier` as proto3 JSON names it: `loyaltyTier`.
fn camel(field: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The CRM record of a booking from the fields the contract has.
fn properties(
    e: &plugboard_guest::BookingEvent,
    decimal_price: bool,
) -> [(&'static str, Cow<'_, str>); 11] {
    let customer = e.customer.as_ref();
    let amount = e.price.as_ref().map(|p| {
        if decimal_price {
            format!(
                "{}.{:02}",
                p.amount_minor / 100,
                (p.amount_minor % 100).abs()
            )
        } else {
            p.amount_minor.to_string()
        }
    });
    fn text(s: Option<&str>) -> Cow<'_, str> {
        Cow::Borrowed(s.unwrap_or_default())
    }
    [
        ("booking_id", Cow::Borrowed(e.booking_id.as_str())),
        ("booking_state", Cow::Borrowed(e.state_name())),
        ("booking_version", Cow::Owned(e.version.to_string())),
        ("customer_name", text(customer.map(|c| c.name.as_str()))),
        ("customer_email", text(customer.map(|c| c.email.as_str()))),
        (
            "garage_name",
            text(e.garage.as_ref().map(|g| g.name.as_str())),
        ),
        (
            "service_code",
            text(e.service.as_ref().map(|s| s.service_code.as_str())),
        ),
        ("price_amount_minor", Cow::Owned(amount.unwrap_or_default())),
        (
            "price_currency",
            text(e.price.as_ref().map(|p| p.currency_code.as_str())),
        ),
        (
            "appointment_start",
            Cow::Owned(
                e.appointment_start
                    .as_ref()
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
            ),
        ),
        ("last_event_id", Cow::Borrowed(e.event_id.as_str())),
    ]
}

plugboard_guest::export_plugin!(CrmSync);
