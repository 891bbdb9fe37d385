//! `booking.v1` protobuf types to the WIT records plugins receive. Done once
//! per event, shared by every plugin.

use super::bindings::wit;
use crate::event as pb;

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

/// Builds the record handed to plugins, moving `event`'s strings rather
/// than copying them (a copy and a free per string showed in the consume
/// profile). `event` must have passed [`crate::decode::validate`], which
/// guarantees the enums are known. `payload` (the protobuf encoding) only
/// for plugins that asked for it.
pub fn to_wit(event: pb::BookingEvent, envelope: Envelope, payload: Option<Vec<u8>>) -> wit::Event {
    wit::Event {
        booking: booking(event),
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
    }
}

fn booking(e: pb::BookingEvent) -> wit::BookingEvent {
    wit::BookingEvent {
        event_id: e.event_id,
        booking_id: e.booking_id,
        version: e.version,
        state: state(e.state),
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
        service: e.service.map(|s| wit::Service {
            service_code: s.service_code,
            name: s.name,
            category: category(s.category),
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
        payment: e.payment.map(|p| wit::Payment {
            payment_id: p.payment_id,
            method: method(p.method),
            paid_at: p.paid_at.as_ref().map(timestamp),
        }),
    }
}

fn timestamp(t: &pbjson_types::Timestamp) -> wit::Timestamp {
    wit::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos.clamp(0, 999_999_999) as u32,
    }
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
        Ok(S::Unspecified) | Err(_) => unreachable!("validated before conversion"),
    }
}

fn category(value: i32) -> wit::ServiceCategory {
    use pb::ServiceCategory as C;
    match C::try_from(value) {
        Ok(C::OilChange) => wit::ServiceCategory::OilChange,
        Ok(C::WheelChange) => wit::ServiceCategory::WheelChange,
        Ok(C::Inspection) => wit::ServiceCategory::Inspection,
        Ok(C::Other) => wit::ServiceCategory::Other,
        Ok(C::Unspecified) | Err(_) => wit::ServiceCategory::Unspecified,
    }
}

fn method(value: i32) -> wit::PaymentMethod {
    use pb::PaymentMethod as M;
    match M::try_from(value) {
        Ok(M::Card) => wit::PaymentMethod::Card,
        Ok(M::Paypal) => wit::PaymentMethod::Paypal,
        Ok(M::Invoice) => wit::PaymentMethod::Invoice,
        Ok(M::Unspecified) | Err(_) => wit::PaymentMethod::Unspecified,
    }
}
