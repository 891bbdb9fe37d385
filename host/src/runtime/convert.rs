//! `booking.v1` protobuf types to the WIT records plugins receive. Done once
//! per event, shared by every plugin.

use super::bindings::wit;
use crate::event as pb;
use crate::schema::{Decoded, Writer};

/// Envelope fields that come from the source, not from the event.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub source: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Builds the record handed to plugins from an event of the compiled
/// schema; see [`from_decoded`].
pub fn to_wit(event: pb::BookingEvent, envelope: Envelope, payload: Option<Vec<u8>>) -> wit::Event {
    from_decoded(Decoded::compiled(event), envelope, payload)
}

/// Builds the record handed to plugins, moving the event's strings rather
/// than copying them (a copy and a free per string showed in the consume
/// profile). The event must have passed validation against its writer's
/// schema, which guarantees every enum value is one the contract names or
/// one the writer names. `payload` (the protobuf encoding) only for
/// plugins that asked for it.
pub fn from_decoded(decoded: Decoded, envelope: Envelope, payload: Option<Vec<u8>>) -> wit::Event {
    let Decoded {
        event,
        writer,
        extensions,
    } = decoded;
    let writer = writer.as_deref().unwrap_or_else(|| Writer::compiled_ref());
    wit::Event {
        booking: booking(event, writer),
        envelope: wit::Envelope {
            source: envelope.source,
            partition: envelope.partition,
            offset: envelope.offset,
            key: envelope.key,
            timestamp_ms: envelope.timestamp_ms,
            headers: envelope
                .headers
                .into_iter()
                .map(|(key, value)| wit::Header { key, value })
                .collect(),
        },
        payload,
        extensions,
    }
}

fn booking(e: pb::BookingEvent, writer: &Writer) -> wit::BookingEvent {
    let state = state(e.state);
    wit::BookingEvent {
        event_id: e.event_id,
        booking_id: e.booking_id,
        version: e.version,
        state,
        unknown_state: unknown(writer, "state", e.state, state),
        occurred_at: e.occurred_at.as_ref().map(timestamp),
        customer: e.customer.map(|c| wit::Customer {
            customer_id: c.customer_id,
            name: c.name,
            email: c.email,
            phone: c.phone,
        }),
        garage: e.garage.map(|g| wit::Garage {
            garage_id: g.garage_id,
            name: g.name,
            city: g.city,
            postal_code: g.postal_code,
        }),
        service: e.service.map(|s| {
            let category = category(s.category);
            wit::Service {
                service_code: s.service_code,
                name: s.name,
                category,
                unknown_category: unknown(writer, "service.category", s.category, category),
            }
        }),
        vehicle: e.vehicle.map(|v| wit::Vehicle {
            license_plate: v.license_plate,
            make: v.make,
            model: v.model,
        }),
        price: e.price.map(|m| wit::Money {
            currency_code: m.currency_code,
            amount_minor: m.amount_minor,
        }),
        appointment_start: e.appointment_start.as_ref().map(timestamp),
        payment: e.payment.map(|p| {
            let method = method(p.method);
            wit::Payment {
                payment_id: p.payment_id,
                method,
                unknown_method: unknown(writer, "payment.method", p.method, method),
                paid_at: p.paid_at.as_ref().map(timestamp),
            }
        }),
    }
}

fn timestamp(t: &pbjson_types::Timestamp) -> wit::Timestamp {
    wit::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos.clamp(0, 999_999_999) as u32,
    }
}

/// The writer's name and number of a value the contract does not name
/// (`converted` is `unknown`); none for the ones it names.
fn unknown<E: PartialEq + Unknown>(
    writer: &Writer,
    path: &str,
    value: i32,
    converted: E,
) -> Option<wit::EnumValue> {
    if converted != E::UNKNOWN {
        return None;
    }
    Some(wit::EnumValue {
        name: writer
            .enum_names
            .get(path)
            .and_then(|names| names.get(&value))
            .cloned()
            .unwrap_or_else(|| value.to_string()),
        number: value,
    })
}

/// The `unknown` case of a contract enum.
trait Unknown {
    const UNKNOWN: Self;
}

impl Unknown for wit::BookingState {
    const UNKNOWN: Self = wit::BookingState::Unknown;
}

impl Unknown for wit::ServiceCategory {
    const UNKNOWN: Self = wit::ServiceCategory::Unknown;
}

impl Unknown for wit::PaymentMethod {
    const UNKNOWN: Self = wit::PaymentMethod::Unknown;
}

fn state(value: i32) -> wit::BookingState {
    use pb::BookingState as S;
    match S::try_from(value) {
        Ok(S::Created) => wit::BookingState::Created,
        Ok(S::Paid) => wit::BookingState::Paid,
        Ok(S::Upcoming) => wit::BookingState::Upcoming,
        Ok(S::Finalized) => wit::BookingState::Finalized,
        Ok(S::Cancelled) => wit::BookingState::Cancelled,
        Ok(S::Refunded) => wit::BookingState::Refunded,
        Ok(S::Unspecified) => unreachable!("validated before conversion"),
        Err(_) => wit::BookingState::Unknown,
    }
}

fn category(value: i32) -> wit::ServiceCategory {
    use pb::ServiceCategory as C;
    match C::try_from(value) {
        Ok(C::OilChange) => wit::ServiceCategory::OilChange,
        Ok(C::WheelChange) => wit::ServiceCategory::WheelChange,
        Ok(C::Inspection) => wit::ServiceCategory::Inspection,
        Ok(C::Other) => wit::ServiceCategory::Other,
        Ok(C::Unspecified) => wit::ServiceCategory::Unspecified,
        Err(_) => wit::ServiceCategory::Unknown,
    }
}

fn method(value: i32) -> wit::PaymentMethod {
    use pb::PaymentMethod as M;
    match M::try_from(value) {
        Ok(M::Card) => wit::PaymentMethod::Card,
        Ok(M::Paypal) => wit::PaymentMethod::Paypal,
        Ok(M::Invoice) => wit::PaymentMethod::Invoice,
        Ok(M::Unspecified) => wit::PaymentMethod::Unspecified,
        Err(_) => wit::PaymentMethod::Unknown,
    }
}
