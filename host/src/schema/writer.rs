//! One writer's schema, read against the contract: whether the contract can
//! read its events at all, which of its enum values the contract does not
//! name, and which of its fields the contract does not have.
//!
//! The check is made once per schema, by field number as protobuf reads
//! the wire: every field the contract has must be of the same type in the
//! writer's schema (a message field recursively), or absent if the contract
//! can do without it. Events of a schema that passes decode with the
//! compiled types (prost skips the fields it does not know), so only the
//! fields the contract lacks need the writer's descriptor at run time.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};

use crate::decode::{self, DecodeError};
use crate::event::BookingEvent;

/// `booking.v1` as compiled into the host, the contract's reading.
static COMPILED: LazyLock<MessageDescriptor> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/booking_descriptor.bin"))[..])
        .expect("the compiled descriptor decodes")
        .get_message_by_name(COMPILED_MESSAGE)
        .expect("booking.v1.BookingEvent is compiled in")
});

static COMPILED_WRITER: LazyLock<Arc<Writer>> =
    LazyLock::new(|| Arc::new(Writer::new(SchemaId::Compiled, COMPILED.clone())));

/// The message the host is compiled for.
pub const COMPILED_MESSAGE: &str = crate::event::MESSAGE;

/// Fields no booking event goes without: a writer's schema lacking one is
/// not a booking event the contract can read.
const REQUIRED: [&str; 4] = ["event_id", "booking_id", "version", "state"];

/// The enum fields plugins get as typed enums, by path.
pub const ENUM_FIELDS: [&str; 3] = ["state", "service.category", "payment.method"];

/// What the writer's schema is called in logs, metrics and dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SchemaId {
    /// The compiled-in `booking.v1`.
    Compiled,
    /// A schema-registry id.
    Registry(u32),
    /// A descriptor set, by the first 12 hex digits of its sha256.
    File(String),
}

impl std::fmt::Display for SchemaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaId::Compiled => f.write_str("compiled"),
            SchemaId::Registry(id) => write!(f, "{id}"),
            SchemaId::File(sha) => write!(f, "file:{sha}"),
        }
    }
}

/// A writer's schema as the host reads its events.
pub struct Writer {
    pub id: SchemaId,
    /// Label value of the metrics: `id` as text, made once.
    pub label: Arc<str>,
    /// The writer's message.
    pub message: MessageDescriptor,
    /// Why the contract cannot read it, if it cannot.
    pub incompatible: Option<String>,
    /// Names of enum values the contract does not have, per
    /// [`ENUM_FIELDS`] path, in the contract's style (`no-show`).
    pub enum_names: HashMap<&'static str, HashMap<i32, String>>,
    /// Fields the contract does not have, by path (`loyalty_tier`,
    /// `customer.segment`): what plugins asking get as extensions.
    pub extra_fields: Vec<String>,
}

impl Writer {
    /// The compiled-in schema: the fast path, nothing to look up.
    pub fn compiled() -> Arc<Writer> {
        COMPILED_WRITER.clone()
    }

    /// The same, borrowed for the life of the process.
    pub fn compiled_ref() -> &'static Writer {
        &COMPILED_WRITER
    }

    /// Reads `message` (the writer's) against the contract.
    pub fn new(id: SchemaId, message: MessageDescriptor) -> Writer {
        let mut writer = Writer {
            label: Arc::from(id.to_string()),
            id,
            message: message.clone(),
            incompatible: None,
            enum_names: HashMap::new(),
            extra_fields: Vec::new(),
        };
        if let Err(problem) = compare(&COMPILED, &message, "", &mut writer) {
            writer.incompatible = Some(format!(
                "schema {} ({}) cannot be read as a booking event: {problem}",
                writer.id,
                message.full_name()
            ));
        }
        writer
    }

    /// Whether it is, field for field, the compiled schema.
    pub fn is_compiled_shape(&self) -> bool {
        self.incompatible.is_none() && self.enum_names.is_empty() && self.extra_fields.is_empty()
    }

    /// One line on how it differs from the contract, for the log.
    pub fn describe(&self) -> String {
        if let Some(why) = &self.incompatible {
            return format!("{why}; its events are dead-lettered as `schema`");
        }
        if self.is_compiled_shape() {
            return "the contract's own fields".into();
        }
        let mut parts = Vec::new();
        for (path, names) in &self.enum_names {
            let mut names: Vec<&str> = names.values().map(String::as_str).collect();
            names.sort_unstable();
            parts.push(format!(
                "{path} values the contract does not name: {}",
                names.join(", ")
            ));
        }
        if !self.extra_fields.is_empty() {
            parts.push(format!(
                "fields the contract does not have (delivered as extensions to plugins that ask): {}",
                self.extra_fields.join(", ")
            ));
        }
        parts.sort();
        parts.join("; ")
    }

    /// Decodes `body`, a message of this schema, to a validated event.
    pub fn decode(&self, body: &[u8]) -> Result<BookingEvent, DecodeError> {
        if let Some(why) = &self.incompatible {
            return Err(DecodeError::Schema(why.clone()));
        }
        let event = BookingEvent::decode(body).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        decode::validate_named(&event, &|path, value| {
            self.enum_names
                .get(path)
                .is_some_and(|names| names.contains_key(&value))
        })?;
        Ok(event)
    }

    /// [`Writer::decode`], with [`Writer::extensions`] if `extensions`.
    pub fn read(
        &self,
        body: &[u8],
        extensions: bool,
    ) -> Result<(BookingEvent, Option<String>), DecodeError> {
        let event = self.decode(body)?;
        let extensions = if extensions {
            self.extensions(body)?
        } else {
            None
        };
        Ok((event, extensions))
    }

    /// The fields of `body` the contract does not have, as proto3 JSON
    /// (`{"loyaltyTier":"GOLD","customer":{"segment":"fleet"}}`); `None`
    /// if the schema has none or the event sets none.
    pub fn extensions(&self, body: &[u8]) -> Result<Option<String>, DecodeError> {
        if self.extra_fields.is_empty() {
            return Ok(None);
        }
        // Only the fields the contract lacks are decoded dynamically: a
        // walk over the wire format picks them out (most events of a newer
        // schema set none, and a whole dynamic decode costs ~12 µs).
        let mut unknown = Vec::new();
        unknown_parts(body, &COMPILED, &mut unknown).map_err(DecodeError::Protobuf)?;
        if unknown.is_empty() {
            return Ok(None);
        }
        let message = DynamicMessage::decode(self.message.clone(), &unknown[..])
            .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        if message.fields().next().is_none() {
            // Fields neither schema knows: nothing to say by name.
            return Ok(None);
        }
        serde_json::to_string(&message)
            .map(Some)
            .map_err(|e| DecodeError::Protobuf(format!("extension fields as JSON: {e}")))
    }
}

/// Appends to `out` the fields of `body` (a message the contract reads as
/// `reader`) that the contract does not have, as protobuf: unknown fields
/// as they are, a known message field with just its own unknown fields.
fn unknown_parts(
    mut body: &[u8],
    reader: &MessageDescriptor,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
    while !body.is_empty() {
        let start = body;
        let (number, wire_type) = decode_key(&mut body).map_err(|e| e.to_string())?;
        let value_start = body;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut body).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => body = body.get(8..).ok_or_else(cut_short)?,
            WireType::ThirtyTwoBit => body = body.get(4..).ok_or_else(cut_short)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut body).map_err(|e| e.to_string())?;
                let len = usize::try_from(len).map_err(|_| cut_short())?;
                body = body.get(len..).ok_or_else(cut_short)?;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("groups are not supported".into());
            }
        }
        let whole = &start[..start.len() - body.len()];
        match reader.get_field(number) {
            None => out.extend_from_slice(whole),
            Some(field) => {
                if let (Kind::Message(inner), WireType::LengthDelimited) = (field.kind(), wire_type)
                    && !is_timestamp(&inner)
                {
                    let mut value = value_start;
                    let len = decode_varint(&mut value).map_err(|e| e.to_string())? as usize;
                    let value = value.get(..len).ok_or_else(cut_short)?;
                    let mut nested = Vec::new();
                    unknown_parts(value, &inner, &mut nested)?;
                    if !nested.is_empty() {
                        encode_key(number, WireType::LengthDelimited, out);
                        encode_varint(nested.len() as u64, out);
                        out.extend_from_slice(&nested);
                    }
                }
            }
        }
    }
    Ok(())
}

fn cut_short() -> String {
    "a field is cut short".into()
}

fn is_timestamp(message: &MessageDescriptor) -> bool {
    message.full_name() == "google.protobuf.Timestamp"
}

/// Compares the contract's `reader` message to the writer's, field by
/// field; records enum values and fields the contract lacks in `out`.
fn compare(
    reader: &MessageDescriptor,
    writer: &MessageDescriptor,
    path: &str,
    out: &mut Writer,
) -> Result<(), String> {
    let at = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    for field in reader.fields() {
        let name = at(field.name());
        let Some(theirs) = writer.get_field(field.number()) else {
            if path.is_empty() && REQUIRED.contains(&field.name()) {
                return Err(format!(
                    "it has no field {} (`{name}`), which every booking event needs",
                    field.number()
                ));
            }
            continue;
        };
        let shape = |f: &prost_reflect::FieldDescriptor| {
            if f.is_map() {
                "a map"
            } else if f.is_list() {
                "repeated"
            } else {
                "singular"
            }
        };
        if shape(&field) != shape(&theirs) {
            return Err(format!(
                "field {} (`{name}`) is {} in the writer's schema, {} in the contract",
                field.number(),
                shape(&theirs),
                shape(&field)
            ));
        }
        match (field.kind(), theirs.kind()) {
            (Kind::Message(ours), Kind::Message(their)) => {
                if is_timestamp(&ours) || is_timestamp(&their) {
                    if ours.full_name() != their.full_name() {
                        return Err(type_change(&field, &theirs, &name));
                    }
                } else {
                    compare(&ours, &their, &name, out)?;
                }
            }
            (Kind::Enum(ours), Kind::Enum(their)) => {
                let path = ENUM_FIELDS.iter().find(|p| **p == name);
                let prefix = screaming_snake(ours.name());
                let unknown: HashMap<i32, String> = their
                    .values()
                    .filter(|v| ours.get_value(v.number()).is_none())
                    .map(|v| (v.number(), contract_style(v.name(), &prefix)))
                    .collect();
                if let (Some(path), false) = (path, unknown.is_empty()) {
                    out.enum_names.insert(path, unknown);
                }
            }
            (ours, their) if kind_name(&ours) == kind_name(&their) => {}
            _ => return Err(type_change(&field, &theirs, &name)),
        }
    }
    for theirs in writer.fields() {
        if reader.get_field(theirs.number()).is_none() {
            out.extra_fields.push(at(theirs.name()));
        }
    }
    Ok(())
}

fn type_change(
    ours: &prost_reflect::FieldDescriptor,
    theirs: &prost_reflect::FieldDescriptor,
    name: &str,
) -> String {
    format!(
        "field {} (`{name}`) is {} in the writer's schema, {} in the contract",
        ours.number(),
        kind_name(&theirs.kind()),
        kind_name(&ours.kind())
    )
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `BookingState` to `BOOKING_STATE_`, the prefix its values carry.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

/// `BOOKING_STATE_NO_SHOW` to `no-show`, as the contract names its cases.
fn contract_style(value: &str, prefix: &str) -> String {
    value
        .strip_prefix(prefix)
        .unwrap_or(value)
        .to_lowercase()
        .replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_contracts_style() {
        assert_eq!(screaming_snake("BookingState"), "BOOKING_STATE_");
        assert_eq!(
            contract_style("BOOKING_STATE_NO_SHOW", "BOOKING_STATE_"),
            "no-show"
        );
        assert_eq!(contract_style("LOST", "BOOKING_STATE_"), "lost");
    }

    #[test]
    fn the_compiled_schema_reads_as_itself() {
        let compiled = Writer::compiled();
        assert!(compiled.is_compiled_shape(), "{}", compiled.describe());
    }
}
