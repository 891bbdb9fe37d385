//! Decode and validate: bytes (protobuf) or a JSON line to a
//! [`BookingEvent`] the plugins can trust.
//!
//! In: one message payload. Out: a validated event, or a [`DecodeError`]
//! naming the field at fault. A failure never reaches a plugin: the caller
//! dead-letters the message and goes on.

use prost::Message;

use crate::event::{BookingEvent, BookingState, PaymentMethod, ServiceCategory};

/// Why a message is not a usable booking event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid protobuf for booking.v1.BookingEvent: {0}")]
    Protobuf(String),
    #[error("not valid JSON for booking.v1.BookingEvent: {0}")]
    Json(String),
    /// The writer's schema is one the contract cannot read (or the
    /// registry does not have): the event is parked as `schema`.
    #[error("{0}")]
    Schema(String),
    /// The writer's schema cannot be had now (the registry is down): not
    /// the event's fault, so its partition holds until it can.
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl From<crate::framing::FramingError> for DecodeError {
    fn from(e: crate::framing::FramingError) -> Self {
        DecodeError::Protobuf(e.to_string())
    }
}

/// Decodes a Kafka message value with the compiled schema: plain protobuf,
/// or schema-registry framed (the id not looked at; see [`crate::schema`]
/// for reading it with the writer's schema).
pub fn from_protobuf(bytes: &[u8]) -> Result<BookingEvent, DecodeError> {
    let body = crate::framing::split(bytes)?.body;
    let event = BookingEvent::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    validate(&event)?;
    Ok(event)
}

/// Decodes one NDJSON line in the proto3 canonical JSON mapping.
pub fn from_json(line: &str) -> Result<BookingEvent, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(line);
    let event: BookingEvent = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() {
            DecodeError::Json(inner.to_string())
        } else {
            DecodeError::Json(format!("at `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| DecodeError::Json(e.to_string()))?;
    validate(&event)?;
    Ok(event)
}

/// Checks what every plugin may rely on. Enum numbers no schema names are
/// rejected rather than guessed.
pub fn validate(event: &BookingEvent) -> Result<(), DecodeError> {
    validate_named(event, &|_, _| false)
}

/// [`validate`], with enum numbers the contract does not name accepted if
/// `named(path, number)` says the writer's schema names them (they reach
/// plugins as `unknown` with that name).
pub fn validate_named(
    event: &BookingEvent,
    named: &dyn Fn(&str, i32) -> bool,
) -> Result<(), DecodeError> {
    let invalid = |field, problem: &str| {
        Err(DecodeError::Invalid {
            field,
            problem: problem.to_string(),
        })
    };
    if event.event_id.is_empty() {
        return invalid("event_id", "must not be empty");
    }
    if event.booking_id.is_empty() {
        return invalid("booking_id", "must not be empty");
    }
    if event.version == 0 {
        return invalid("version", "must be at least 1");
    }
    match BookingState::try_from(event.state) {
        Ok(BookingState::Unspecified) => {
            return invalid(
                "state",
                "must be set (BOOKING_STATE_UNSPECIFIED is not a state)",
            );
        }
        Ok(_) => {}
        Err(_) if named("state", event.state) => {}
        Err(_) => {
            return Err(DecodeError::Invalid {
                field: "state",
                problem: format!(
                    "unknown value {} (the writer's schema does not name it)",
                    event.state
                ),
            });
        }
    }
    if let Some(service) = &event.service
        && ServiceCategory::try_from(service.category).is_err()
        && !named("service.category", service.category)
    {
        return Err(DecodeError::Invalid {
            field: "service.category",
            problem: format!("unknown value {}", service.category),
        });
    }
    if let Some(payment) = &event.payment
        && PaymentMethod::try_from(payment.method).is_err()
        && !named("payment.method", payment.method)
    {
        return Err(DecodeError::Invalid {
            field: "payment.method",
            problem: format!("unknown value {}", payment.method),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"eventId":"e1","bookingId":"b1","version":"1","state":"BOOKING_STATE_CREATED","occurredAt":"2026-03-01T10:00:00Z","price":{"currencyCode":"EUR","amountMinor":"4990"}}"#;

    #[test]
    fn json_in_canonical_mapping_decodes() {
        let e = from_json(GOOD).unwrap();
        assert_eq!(e.booking_id, "b1");
        assert_eq!(e.version, 1);
        assert_eq!(e.state, BookingState::Created as i32);
        assert_eq!(e.price.unwrap().amount_minor, 4990);
        assert_eq!(e.occurred_at.unwrap().seconds, 1_772_359_200);
    }

    #[test]
    fn failures_name_the_field() {
        let err = from_json(&GOOD.replace(r#""version":"1""#, r#""version":"0""#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid field `version`: must be at least 1"
        );
        let err = from_json(&GOOD.replace(r#""eventId":"e1""#, r#""eventId":"""#)).unwrap_err();
        assert!(err.to_string().contains("`event_id`"), "{err}");
        let err = from_json(&GOOD.replace("\"BOOKING_STATE_CREATED\"", "99")).unwrap_err();
        assert!(err.to_string().contains("state"), "{err}");
        let err = from_json(&GOOD.replace("\"BOOKING_STATE_CREATED\"", "\"BOOKING_STATE_LOST\""))
            .unwrap_err();
        assert!(err.to_string().contains("state"), "{err}");
        assert!(matches!(from_json("{not json"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn protobuf_plain_and_schema_registry_framed() {
        let event = from_json(GOOD).unwrap();
        let plain = event.encode_to_vec();
        assert_eq!(from_protobuf(&plain).unwrap(), event);
        let mut framed = vec![0, 0, 0, 0, 42, 0];
        framed.extend_from_slice(&plain);
        assert_eq!(from_protobuf(&framed).unwrap(), event);
        let unknown_state = BookingEvent { state: 99, ..event };
        let err = from_protobuf(&unknown_state.encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid field `state`: unknown value 99 (the writer's schema does not name it)"
        );
        assert!(matches!(
            from_protobuf(b"\xff\xff garbage"),
            Err(DecodeError::Protobuf(_))
        ));
    }
}
