//! Business metrics for the product team, reported through the host's
//! `metrics` import:
//!
//! - `bookings_current{state}`: bookings whose latest version is in `state`;
//! - `bookings_revenue_minor{currency}`: price of bookings whose latest state
//!   is paid, upcoming or finalized;
//! - `booking_events_total{state}`: distinct events seen, by their state;
//! - `booking_minutes_to_pay`: minutes from created to paid, once per booking.
//!
//! Replay-safe: the latest version per booking decides (an older version
//! arriving late changes nothing) and events are counted once per event id,
//! so duplicates and out-of-order delivery do not skew anything. The state
//! is kept in memory, so a restarted host rebuilds it from the events it
//! reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use plugboard_guest::metrics::{self as m, Label};
use plugboard_guest::{BatchOutcome, BookingState, Event, Guest};

const STATES: [BookingState; 6] = [
    BookingState::Created,
    BookingState::Paid,
    BookingState::Upcoming,
    BookingState::Finalized,
    BookingState::Cancelled,
    BookingState::Refunded,
];

fn earns(s: BookingState) -> bool {
    matches!(
        s,
        BookingState::Paid | BookingState::Upcoming | BookingState::Finalized
    )
}

/// The latest known version of one booking.
struct Latest {
    version: u64,
    state: BookingState,
    /// (currency, amount in minor units)
    price: Option<(String, i64)>,
}

#[derive(Default)]
struct Booking {
    latest: Option<Latest>,
    created_at: Option<i64>,
    paid_at: Option<i64>,
    observed_time_to_pay: bool,
}

#[derive(Default)]
struct State {
    bookings: HashMap<String, Booking>,
    seen_events: HashSet<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn label(name: &str, value: &str) -> Vec<Label> {
    vec![Label {
        name: name.to_string(),
        value: value.to_string(),
    }]
}

struct Metrics;

impl Guest for Metrics {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
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
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            for event in &batch {
                state.apply(event);
            }
            state.publish();
        });
        BatchOutcome::all(&batch)
    }
}

impl State {
    fn apply(&mut self, event: &Event) {
        let b = &event.booking;
        if !self.seen_events.insert(b.event_id.clone()) {
            return; // a duplicate delivery
        }
        m::counter_add(
            "booking_events_total",
            &label("state", b.state.as_str()),
            1.0,
        );

        let booking = self.bookings.entry(b.booking_id.clone()).or_default();
        let at = b.occurred_at.map(|t| t.seconds);
        match b.state {
            BookingState::Created => booking.created_at = booking.created_at.or(at),
            BookingState::Paid => {
                let paid = b
                    .payment
                    .as_ref()
                    .and_then(|p| p.paid_at)
                    .map(|t| t.seconds);
                booking.paid_at = booking.paid_at.or(paid).or(at);
            }
            _ => {}
        }
        if let (Some(created), Some(paid), false) = (
            booking.created_at,
            booking.paid_at,
            booking.observed_time_to_pay,
        ) {
            booking.observed_time_to_pay = true;
            m::histogram_observe(
                "booking_minutes_to_pay",
                &[],
                (paid - created).max(0) as f64 / 60.0,
            );
        }
        if booking
            .latest
            .as_ref()
            .is_none_or(|l| b.version > l.version)
        {
            booking.latest = Some(Latest {
                version: b.version,
                state: b.state,
                price: b
                    .price
                    .as_ref()
                    .map(|p| (p.currency_code.clone(), p.amount_minor)),
            });
        }
    }

    /// Sets every gauge from the full state, so a gauge is always the truth
    /// and never drifts by a missed increment.
    fn publish(&self) {
        let mut by_state: BTreeMap<&str, u64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
        let mut revenue: BTreeMap<&str, i64> = BTreeMap::new();
        for latest in self.bookings.values().filter_map(|b| b.latest.as_ref()) {
            *by_state.entry(latest.state.as_str()).or_default() += 1;
            // Every currency ever seen gets a series, so one whose bookings
            // were all refunded drops to 0 instead of keeping a stale value.
            if let Some((currency, amount)) = &latest.price {
                let total = revenue.entry(currency.as_str()).or_default();
                if earns(latest.state) {
                    *total += amount;
                }
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
}

plugboard_guest::export_plugin!(Metrics);
