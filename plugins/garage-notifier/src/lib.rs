//! garage-notifier: for each booking that becomes `upcoming`, POSTs a JSON
//! reminder `{booking_id, garage_id, appointment_start, customer_name}` to
//! the configured `webhook_url` (its origin must be granted in
//! `allow_hosts`). Other states are skipped; an upcoming booking without an
//! appointment is rejected. The event id goes along as `idempotency-key`,
//! so a receiver can drop the duplicates a replay sends.
//!
//! The same plugin exists in JavaScript, Python and Go under
//! `examples/plugins/`; all four send identical requests.

use std::cell::RefCell;

use plugboard_guest::http::{self, Method, Origin};
use plugboard_guest::{BatchOutcome, BookingState, Event, Failure, Guest, InitError, RetryInfo};

struct Webhook {
    origin: Origin,
    path: String,
}

thread_local! {
    static WEBHOOK: RefCell<Option<Webhook>> = const { RefCell::new(None) };
}

/// `2026-03-16T08:00:00Z`: whole seconds, UTC.
fn rfc3339(seconds: i64) -> String {
    plugboard_guest::Timestamp { seconds, nanos: 0 }.to_rfc3339()
}

struct Notifier;

impl Guest for Notifier {
    fn init(config: Vec<(String, String)>) -> Result<(), InitError> {
        let url = config
            .iter()
            .find(|(k, _)| k == "webhook_url")
            .map(|(_, v)| v.clone())
            .ok_or("config `webhook_url` is required")?;
        // The origin carries the path prefix; requests go to it as is.
        let origin = Origin::parse(&url)?;
        WEBHOOK.with(|w| {
            *w.borrow_mut() = Some(Webhook {
                origin,
                path: String::new(),
            })
        });
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        WEBHOOK.with(|w| {
            let w = w.borrow();
            let webhook = w.as_ref().expect("init ran");
            for (i, event) in batch.iter().enumerate() {
                if let Err(failure) = notify(webhook, event) {
                    return BatchOutcome::stop(i, failure);
                }
            }
            BatchOutcome::All
        })
    }
}

fn notify(webhook: &Webhook, event: &Event) -> Result<(), Failure> {
    let b = &event.booking;
    if b.state != BookingState::Upcoming {
        return Ok(());
    }
    let Some(start) = b.appointment_start else {
        return Err(Failure::Reject(format!(
            "booking {} is upcoming but has no appointment",
            b.booking_id
        )));
    };
    let body = serde_json::json!({
        "booking_id": b.booking_id,
        "garage_id": b.garage.as_ref().map(|g| g.garage_id.as_str()).unwrap_or(""),
        "appointment_start": rfc3339(start.seconds),
        "customer_name": b.customer.as_ref().map(|c| c.name.as_str()).unwrap_or(""),
    });
    let body = serde_json::to_vec(&body).expect("json");
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", b.event_id.as_str()),
    ];
    let response = http::send(
        &webhook.origin,
        Method::Post,
        &webhook.path,
        &headers,
        &body,
    )
    .map_err(|e| {
        if e.is_denied() {
            Failure::Reject(format!("webhook refused: {}", e.0))
        } else {
            Failure::Retry(RetryInfo {
                reason: format!("webhook unreachable: {}", e.0),
                after_ms: None,
            })
        }
    })?;
    match response.status {
        200..=299 => Ok(()),
        429 | 500..=599 => Err(Failure::Retry(RetryInfo {
            reason: format!("webhook answered {}", response.status),
            after_ms: response.retry_after_secs.map(|s| s * 1000),
        })),
        status => Err(Failure::Reject(format!(
            "webhook answered {status}: {}",
            String::from_utf8_lossy(&response.body)
        ))),
    }
}

plugboard_guest::export_plugin!(Notifier);
