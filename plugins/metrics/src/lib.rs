//! Business metrics for the product team, reported through the host's
//! `metrics` import:
//!
//! - `bookings_current{state}`: bookings whose latest version is in `state`;
//! - `bookings_revenue_minor{currency}`: price of bookings whose latest state
//!   is paid, upcoming or finalized;
//! - `booking_events_total{state}`: distinct events seen, by their state (a
//!   state a newer producer added counts under its name, e.g. `no-show`);
//! - `booking_minutes_to_pay`: minutes from created to paid, once per booking.
//!
//! Replay-safe: the latest version per booking decides (an older version
//! arriving late changes nothing) and each version of a booking is counted
//! once, so duplicates and out-of-order delivery do not skew anything.
//!
//! State is durable, in the host's key-value store: one record per booking
//! (bucket `bookings`) and the totals of each partition (bucket `totals`),
//! written with the batch that changed them. So after a restart the gauges
//! are right at the first event, without replaying the topic. A partition's
//! events all go to one instance, which reports that partition's share of
//! each gauge; the host adds the shares up.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use plugboard_guest::metrics::{self as m, Label};
use plugboard_guest::store::{self, Bucket};
use plugboard_guest::{BatchOutcome, BookingState, Event, Failure, Guest, InitError, RetryInfo};
use serde::{Deserialize, Serialize};

const STATES: [BookingState; 6] = [
    BookingState::Created,
    BookingState::Paid,
    BookingState::Upcoming,
    BookingState::Finalized,
    BookingState::Cancelled,
    BookingState::Refunded,
];

fn earns(state: &str) -> bool {
    matches!(state, "paid" | "upcoming" | "finalized")
}

/// The latest version of a booking: number, state, and price (currency,
/// minor units).
type Latest = (u64, String, Option<(String, i64)>);

/// What is kept of one booking.
#[derive(Default, Serialize, Deserialize)]
struct Booking {
    latest: Option<Latest>,
    created_at: Option<i64>,
    paid_at: Option<i64>,
    observed_time_to_pay: bool,
    /// Versions already counted, so a redelivery is not counted again.
    seen: Vec<u64>,
}

/// A partition's share of the gauges.
#[derive(Default, Serialize, Deserialize)]
struct Totals {
    by_state: BTreeMap<String, i64>,
    /// Every currency ever seen keeps a series, so one whose bookings were
    /// all refunded drops to 0 instead of keeping a stale value.
    revenue: BTreeMap<String, i64>,
}

impl Totals {
    fn add(&mut self, latest: &Latest, sign: i64) {
        *self.by_state.entry(latest.1.clone()).or_default() += sign;
        if let Some((currency, amount)) = &latest.2 {
            let total = self.revenue.entry(currency.clone()).or_default();
            if earns(&latest.1) {
                *total += sign * amount;
            }
        }
    }
}

struct Buckets {
    bookings: Bucket,
    totals: Bucket,
}

thread_local! {
    static BUCKETS: RefCell<Option<Buckets>> = const { RefCell::new(None) };
    /// Totals of the partitions this instance has seen, loaded once.
    static TOTALS: RefCell<HashMap<i32, Totals>> = RefCell::new(HashMap::new());
}

fn label(name: &str, value: &str) -> Vec<Label> {
    vec![Label {
        name: name.to_string(),
        value: value.to_string(),
    }]
}

fn get<T: for<'de> Deserialize<'de> + Default>(bucket: &Bucket, key: &str) -> Result<T, String> {
    match bucket.get(key).map_err(|e| format!("reading {key}: {e}"))? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("reading {key}: {e}")),
    }
}

fn set<T: Serialize>(bucket: &Bucket, key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    bucket
        .set(key, &bytes)
        .map_err(|e| format!("saving {}: {e}", short(key)))
}

struct Metrics;

impl Guest for Metrics {
    fn init(config: Vec<(String, String)>) -> Result<(), InitError> {
        let open = |name: &str| {
            store::open(name).map_err(|e| format!("cannot open state bucket {name}: {e}"))
        };
        let buckets = Buckets {
            bookings: open("bookings")?,
            totals: open("totals")?,
        };
        BUCKETS.with(|b| *b.borrow_mut() = Some(buckets));
        m::describe(
            "bookings_current",
            "Bookings whose latest version is in this state",
            &[],
        );
        m::describe(
            "bookings_revenue_minor",
            "Price, in minor units, of bookings whose latest state is paid, upcoming or finalized",
            &[],
        );
        m::describe(
            "booking_events_total",
            "Distinct booking events seen, by state",
            &[],
        );
        m::describe(
            "booking_minutes_to_pay",
            "Minutes from a booking's creation to its payment",
            &[1.0, 5.0, 15.0, 60.0, 240.0, 1440.0, 10080.0],
        );
        // The partition this instance serves: report its totals now, so the
        // gauges are right after a restart even before new events come.
        let partition = config
            .iter()
            .find(|(k, _)| k == "plugboard.partition")
            .and_then(|(_, v)| v.parse::<i32>().ok());
        if let Some(partition) = partition {
            BUCKETS.with(|b| {
                let buckets = b.borrow();
                let buckets = buckets.as_ref().expect("just opened");
                let totals: Totals = get(&buckets.totals, &partition.to_string())?;
                TOTALS.with(|t| {
                    let mut t = t.borrow_mut();
                    t.insert(partition, totals);
                    publish(&t);
                });
                Ok::<(), String>(())
            })?;
        }
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        let result = BUCKETS.with(|b| {
            let buckets = b.borrow();
            let buckets = buckets.as_ref().expect("init opened the buckets");
            TOTALS.with(|t| apply(buckets, &mut t.borrow_mut(), &batch))
        });
        match result {
            Ok(()) => BatchOutcome::All,
            // The host keeps nothing this call wrote unless it handled the
            // whole batch; it delivers the events ahead of `at` again.
            Err(Stop::Reject { at, reason }) => BatchOutcome::stop(at, Failure::Reject(reason)),
            Err(Stop::Retry { at, reason }) => BatchOutcome::stop(
                at,
                Failure::Retry(RetryInfo {
                    reason,
                    after_ms: None,
                }),
            ),
        }
    }
}

/// Why `apply` stopped at the event `at`.
enum Stop {
    /// This event can never be stored (its booking id cannot be a key).
    Reject { at: usize, reason: String },
    /// The state could not be read: worth trying again.
    Retry { at: usize, reason: String },
}

fn apply(
    buckets: &Buckets,
    totals: &mut HashMap<i32, Totals>,
    batch: &[Event],
) -> Result<(), Stop> {
    let mut touched = Vec::new();
    for (at, event) in batch.iter().enumerate() {
        let retry = |reason| Stop::Retry { at, reason };
        let partition = event.envelope.partition;
        let share = match totals.entry(partition) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                e.insert(get(&buckets.totals, &partition.to_string()).map_err(retry)?)
            }
        };
        let b = &event.booking;
        let mut booking: Booking = get(&buckets.bookings, &b.booking_id).map_err(retry)?;
        if booking.seen.contains(&b.version) {
            continue; // a duplicate delivery
        }
        booking.seen.push(b.version);
        let at_time = b.occurred_at.map(|t| t.seconds);
        match b.state {
            BookingState::Created => booking.created_at = booking.created_at.or(at_time),
            BookingState::Paid => {
                let paid = b
                    .payment
                    .as_ref()
                    .and_then(|p| p.paid_at)
                    .map(|t| t.seconds);
                booking.paid_at = booking.paid_at.or(paid).or(at_time);
            }
            _ => {}
        }
        let time_to_pay = match (
            booking.created_at,
            booking.paid_at,
            booking.observed_time_to_pay,
        ) {
            (Some(created), Some(paid), false) => {
                booking.observed_time_to_pay = true;
                Some((paid - created).max(0) as f64 / 60.0)
            }
            _ => None,
        };
        let previous = booking.latest.clone();
        let newer = previous.as_ref().is_none_or(|l| b.version > l.0);
        if newer {
            booking.latest = Some((
                b.version,
                b.state_name().to_string(),
                b.price
                    .as_ref()
                    .map(|p| (p.currency_code.clone(), p.amount_minor)),
            ));
        }
        // Stored first: an event whose record cannot be stored changes
        // nothing, not even this instance's memory or its counters.
        set(&buckets.bookings, &b.booking_id, &booking).map_err(|reason| Stop::Reject {
            at,
            reason: format!("booking {}: {reason}", short(&b.booking_id)),
        })?;
        if newer {
            if let Some(old) = &previous {
                share.add(old, -1);
            }
            share.add(booking.latest.as_ref().expect("just set"), 1);
        }
        if !touched.contains(&partition) {
            touched.push(partition);
        }
        m::counter_add("booking_events_total", &label("state", b.state_name()), 1.0);
        if let Some(minutes) = time_to_pay {
            m::histogram_observe("booking_minutes_to_pay", &[], minutes);
        }
    }
    for partition in touched {
        set(&buckets.totals, &partition.to_string(), &totals[&partition])
            .map_err(|reason| Stop::Retry { at: 0, reason })?;
    }
    publish(totals);
    Ok(())
}

/// A booking id for a message: long ones cut.
fn short(id: &str) -> String {
    if id.len() <= 40 {
        return id.to_string();
    }
    let cut: String = id.chars().take(32).collect();
    format!("{cut}... ({} bytes)", id.len())
}

/// Sets every gauge from this instance's totals, so a gauge is always the
/// truth and never drifts by a missed increment.
fn publish(totals: &HashMap<i32, Totals>) {
    let mut by_state: BTreeMap<&str, i64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
    let mut revenue: BTreeMap<&str, i64> = BTreeMap::new();
    for share in totals.values() {
        for (state, n) in &share.by_state {
            *by_state.entry(state.as_str()).or_default() += n;
        }
        for (currency, amount) in &share.revenue {
            *revenue.entry(currency.as_str()).or_default() += amount;
        }
    }
    for (state, count) in by_state {
        m::gauge_set("bookings_current", &label("state", state), count as f64);
    }
    for (currency, amount) in revenue {
        m::gauge_set(
            "bookings_revenue_minor",
            &label("currency", currency),
            amount as f64,
        );
    }
}

plugboard_guest::export_plugin!(Metrics);
