//! Realistic booking lifecycles for demos, tests and benchmarks:
//! created -> paid -> upcoming -> finalized, some cancelled or refunded,
//! across several garages and services. Deterministic for a seed: the same
//! seed gives the same events with the same ids.

use pbjson_types::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::event::{
    BookingEvent, BookingState, Customer, Garage, Money, Payment, PaymentMethod, Service,
    ServiceCategory, Vehicle,
};

const GARAGES: [(&str, &str, &str, &str); 5] = [
    ("g-berlin-01", "Autohaus Spree", "Berlin", "10115"),
    ("g-hamburg-01", "Hafen Garage", "Hamburg", "20095"),
    ("g-munich-01", "Isar KFZ", "München", "80331"),
    ("g-cologne-01", "Dom Werkstatt", "Köln", "50667"),
    ("g-leipzig-01", "Messe Motors", "Leipzig", "04109"),
];

const SERVICES: [(&str, &str, ServiceCategory, i64); 4] = [
    (
        "OIL-5W30",
        "Oil and filter change",
        ServiceCategory::OilChange,
        8_990,
    ),
    (
        "WHEEL-SWAP",
        "Seasonal wheel change",
        ServiceCategory::WheelChange,
        4_990,
    ),
    (
        "HU-AU",
        "Main inspection (HU/AU)",
        ServiceCategory::Inspection,
        13_900,
    ),
    (
        "BRAKE-PADS",
        "Brake pad replacement",
        ServiceCategory::Other,
        19_900,
    ),
];

const FIRST: [&str; 8] = [
    "Anna", "Ben", "Clara", "David", "Elif", "Finn", "Greta", "Hamza",
];
const LAST: [&str; 8] = [
    "Müller", "Schmidt", "Yilmaz", "Weber", "Nowak", "Fischer", "Rossi", "Becker",
];
const CARS: [(&str, &str); 5] = [
    ("Volkswagen", "Golf"),
    ("BMW", "3er"),
    ("Opel", "Corsa"),
    ("Škoda", "Octavia"),
    ("Tesla", "Model 3"),
];

/// 2026-03-02T08:00:00Z: the first booking of every generated set.
pub const DEFAULT_START: i64 = 1_772_438_400;

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// The events of `bookings` lifecycles, ordered by when they happened.
pub fn lifecycles(bookings: usize, seed: u64, start: i64) -> Vec<BookingEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::with_capacity(bookings * 4);
    let mut created_at = start;
    for n in 0..bookings {
        created_at += rng.random_range(60..900);
        let booking_id = format!("bk-{seed}-{n:05}");
        let garage = GARAGES[rng.random_range(0..GARAGES.len())];
        let service = SERVICES[rng.random_range(0..SERVICES.len())];
        let (first, last) = (FIRST[rng.random_range(0..8)], LAST[rng.random_range(0..8)]);
        let car = CARS[rng.random_range(0..CARS.len())];
        let appointment = created_at + rng.random_range(3..21) * 86_400;
        let base = BookingEvent {
            event_id: String::new(),
            booking_id: booking_id.clone(),
            version: 0,
            state: 0,
            occurred_at: None,
            customer: Some(Customer {
                customer_id: format!("c-{:04}", rng.random_range(0..2_000)),
                name: format!("{first} {last}"),
                email: format!("{}.{}@example.com", first.to_lowercase(), n),
                phone: format!("+49 30 {:07}", rng.random_range(0..10_000_000)),
            }),
            garage: Some(Garage {
                garage_id: garage.0.into(),
                name: garage.1.into(),
                city: garage.2.into(),
                postal_code: garage.3.into(),
            }),
            service: Some(Service {
                service_code: service.0.into(),
                name: service.1.into(),
                category: service.2 as i32,
            }),
            vehicle: Some(Vehicle {
                license_plate: format!(
                    "B-{}{} {}",
                    (b'A' + (n % 26) as u8) as char,
                    'K',
                    100 + n % 9_000
                ),
                make: car.0.into(),
                model: car.1.into(),
            }),
            price: Some(Money {
                currency_code: "EUR".into(),
                amount_minor: service.3,
            }),
            appointment_start: ts(appointment),
            payment: None,
        };
        let mut push = |state: BookingState, at: i64, event: &BookingEvent| {
            let mut e = event.clone();
            e.version += 1;
            e.state = state as i32;
            e.occurred_at = ts(at);
            e.event_id = format!("evt-{booking_id}-v{}", e.version);
            events.push(e.clone());
            e
        };
        let created = push(BookingState::Created, created_at, &base);
        if rng.random_bool(0.12) {
            push(
                BookingState::Cancelled,
                created_at + rng.random_range(300..86_400),
                &created,
            );
            continue;
        }
        let paid_at = created_at + rng.random_range(60..10_800);
        let mut paid = created.clone();
        paid.payment = Some(Payment {
            payment_id: format!("pay-{seed}-{n:05}"),
            method: [
                PaymentMethod::Card,
                PaymentMethod::Paypal,
                PaymentMethod::Invoice,
            ][rng.random_range(0..3)] as i32,
            paid_at: ts(paid_at),
        });
        let paid = push(BookingState::Paid, paid_at, &paid);
        if rng.random_bool(0.06) {
            push(
                BookingState::Refunded,
                paid_at + rng.random_range(3_600..172_800),
                &paid,
            );
            continue;
        }
        let upcoming = push(BookingState::Upcoming, appointment - 86_400, &paid);
        if rng.random_bool(0.9) {
            push(
                BookingState::Finalized,
                appointment + rng.random_range(3_600..14_400),
                &upcoming,
            );
        }
    }
    events.sort_by_key(|e| (e.occurred_at.as_ref().map(|t| t.seconds), e.version));
    events
}

/// Lines of a sample file: the lifecycles in proto3 JSON, plus the faults a
/// real stream has: a few out-of-order versions, a replayed duplicate and
/// malformed lines. Returns the lines in file order.
pub fn sample_lines(bookings: usize, seed: u64) -> Vec<String> {
    let events = lifecycles(bookings, seed, DEFAULT_START);
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("events serialise"))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // Out of order: move a few bookings' later versions ahead of earlier ones.
    // With no bookings there is nothing to reorder or repeat: the faults
    // are the malformed lines alone.
    let reorders = if events.is_empty() {
        0
    } else {
        (bookings / 40).max(1)
    };
    for _ in 0..reorders {
        let i = rng.random_range(0..events.len());
        let later = (i + 1..events.len()).find(|&j| events[j].booking_id == events[i].booking_id);
        if let Some(j) = later {
            lines.swap(i, j);
        }
    }
    // A replayed duplicate, as a producer retry would cause.
    if !lines.is_empty() {
        let dup = rng.random_range(0..lines.len());
        lines.insert(rng.random_range(dup..lines.len()), lines[dup].clone());
    }
    let malformed = [
        r#"{"eventId": "evt-broken-1", "bookingId": "bk-broken", "version": "1", "state": "BOOKING_STATE_CREATED""#.to_string(),
        r#"{"eventId":"evt-bad-state","bookingId":"bk-bad-state","version":"1","state":"BOOKING_STATE_TELEPORTED"}"#.to_string(),
        r#"{"eventId":"evt-zero-version","bookingId":"bk-zero","version":"0","state":"BOOKING_STATE_CREATED"}"#.to_string(),
        r#"{"eventId":"","bookingId":"bk-no-event-id","version":"1","state":"BOOKING_STATE_PAID"}"#.to_string(),
        r#"{"eventId":"evt-future","bookingId":"bk-future","version":"2","state":99}"#.to_string(),
        "this is not json at all".to_string(),
    ];
    for line in malformed {
        let at = rng.random_range(0..=lines.len());
        lines.insert(at, line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_without_bookings_are_the_malformed_lines_alone() {
        let lines = sample_lines(0, 7);
        assert_eq!(lines.len(), 6);
        assert!(lines.iter().all(|l| crate::decode::from_json(l).is_err()));
    }

    #[test]
    fn faults_of_one_booking_keep_its_events_and_add_a_duplicate() {
        let events = lifecycles(1, 7, DEFAULT_START).len();
        assert_eq!(sample_lines(1, 7).len(), events + 1 + 6);
    }
}
