//! Schemas: which writer's schema a message was written with, and how the
//! contract reads it. Between the source and the plugins: a record's bytes
//! become a [`Decoded`] event with the schema it came with.
//!
//! Three places a schema comes from (`[schema]` in the host config):
//! - none: the `booking.v1` compiled into the host, as the fast path;
//! - `registry`: a message in the registry wire format ([`crate::framing`]) is read
//!   with the schema its id names, fetched once and kept on disk
//!   ([`registry`]); a plain message with the compiled schema;
//! - `descriptor_set`: a FileDescriptorSet (or a `.proto` file) every
//!   message is read with, watched and swapped live when it changes.
//!
//! How the contract reads a writer's schema is decided once per schema
//! ([`writer`]): compatible schemas decode with the compiled types, the
//! values and fields the contract lacks travel by name and as JSON; an
//! incompatible one parks its events as `schema`.

pub mod registry;
pub mod writer;

use crate::locks::{Lock, ReadWrite};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::config::SchemaSource;
use crate::decode::{self, DecodeError};
use crate::event::BookingEvent;
pub use registry::Registry;
pub use writer::{SchemaId, Writer};

/// An event decoded, with the schema its writer used.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub event: BookingEvent,
    /// The writer's schema; none: the compiled one. The fast path holds
    /// no reference: a count shared by every worker thread, raised and
    /// dropped per event, showed in the consume benchmark.
    pub(crate) writer: Option<Arc<Writer>>,
    /// The fields the contract does not have, as proto3 JSON, when asked
    /// for and set.
    pub extensions: Option<String>,
}

impl Decoded {
    /// An event of the compiled schema, without extensions.
    pub fn compiled(event: BookingEvent) -> Decoded {
        Decoded {
            event,
            writer: None,
            extensions: None,
        }
    }

    /// The writer's schema.
    pub fn writer(&self) -> &Writer {
        self.writer
            .as_deref()
            .unwrap_or_else(|| Writer::compiled_ref())
    }

    /// Whether `self` and `other` were written with the same schema.
    pub fn same_writer(&self, other: &Writer) -> bool {
        std::ptr::eq(self.writer(), other)
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", self.id)
    }
}

/// The schemas one host reads with.
pub struct Schemas {
    /// What a message without a registry id is read with.
    current: Current,
    registry: Option<Registry>,
    /// Registry schemas read so far, by id and message index.
    by_id: RwLock<HashMap<MessageKey, Arc<Writer>>>,
    /// Keeps the descriptor set watched while the host runs.
    _watcher: Option<notify::RecommendedWatcher>,
}

/// A registry schema id and the index of the message in its file.
type MessageKey = (u32, Vec<i32>);

enum Current {
    Compiled,
    /// A descriptor set, swapped when its file changes.
    File(Arc<RwLock<Arc<Writer>>>),
}

impl Schemas {
    /// Only the compiled-in schema.
    pub fn compiled() -> Arc<Schemas> {
        Arc::new(Schemas {
            current: Current::Compiled,
            registry: None,
            by_id: RwLock::default(),
            _watcher: None,
        })
    }

    /// The schema in the `.proto` file or descriptor set at `path`, for
    /// every event, not watched (`replay --schema`).
    pub fn file(path: &Path) -> Result<Arc<Schemas>> {
        let writer = load_file(path, writer::COMPILED_MESSAGE)?;
        Ok(Arc::new(Schemas {
            current: Current::File(Arc::new(RwLock::new(Arc::new(writer)))),
            registry: None,
            by_id: RwLock::default(),
            _watcher: None,
        }))
    }

    /// The schemas `config` names, registry schemas kept under `data_dir`;
    /// `source` is the topic (or `file:<name>`) the events come from.
    pub fn from_config(
        config: &SchemaSource,
        data_dir: &Path,
        source: &str,
    ) -> Result<Arc<Schemas>> {
        match config {
            SchemaSource::Compiled => Ok(Schemas::compiled()),
            SchemaSource::Registry {
                url,
                auth,
                timeout,
                subject,
            } => {
                let registry =
                    Registry::new(url, auth.clone(), *timeout, Some(&data_dir.join("schemas")))?;
                tracing::info!(registry = %registry.url, "reading messages framed with a schema id with the registry's schema");
                // The subject's latest schema is kept before any event
                // needs it: a registry that goes away early holds nothing
                // written with it. Not fatal: events fetch what they need.
                let subject = subject.replace("{topic}", source);
                match registry.warm_up(&subject) {
                    Ok(id) => tracing::info!(
                        registry = %registry.url,
                        "schema id {id}, the latest of subject {subject}, is kept"
                    ),
                    Err(e) => tracing::warn!(
                        registry = %registry.url,
                        "cannot fetch the latest schema of subject {subject} at start: {e}; each schema is fetched when its first event comes"
                    ),
                }
                Ok(Arc::new(Schemas {
                    current: Current::Compiled,
                    registry: Some(registry),
                    by_id: RwLock::default(),
                    _watcher: None,
                }))
            }
            SchemaSource::DescriptorSet { path, message } => {
                // A file that is missing or does not load is waited for,
                // as a plugin file is: the compiled schema until it comes.
                let writer = match load_file(path, message) {
                    Ok(writer) => {
                        log_new(&writer, &format!("descriptor set {}", path.display()));
                        Arc::new(writer)
                    }
                    Err(e) if !path.exists() => {
                        tracing::warn!(
                            "{e:#}; reading events with the compiled schema until it is there"
                        );
                        Writer::compiled()
                    }
                    Err(e) => {
                        tracing::error!(
                            "{e:#}; reading events with the compiled schema until it is fixed"
                        );
                        Writer::compiled()
                    }
                };
                let current = Arc::new(RwLock::new(writer));
                let watcher = watch(path, message, current.clone())?;
                Ok(Arc::new(Schemas {
                    current: Current::File(current),
                    registry: None,
                    by_id: RwLock::default(),
                    _watcher: Some(watcher),
                }))
            }
        }
    }

    /// Decodes a message value: plain protobuf, or framed with a schema id.
    /// `extensions`: whether to gather the fields the contract lacks.
    ///
    /// Fails with [`DecodeError::Unavailable`] when the schema cannot be
    /// had now (the caller holds the partition) and
    /// [`DecodeError::Schema`] when the contract cannot read it.
    pub fn decode_protobuf(&self, bytes: &[u8], extensions: bool) -> Result<Decoded, DecodeError> {
        let framed = crate::framing::split(bytes)?;
        let writer = match (&self.registry, framed.id) {
            (Some(registry), Some(id)) => Some(self.by_registry(registry, id, &framed.index)?),
            _ => self.current_file(),
        };
        let read = writer.as_deref().unwrap_or_else(|| Writer::compiled_ref());
        let (event, extensions) = read.read(framed.body, extensions)?;
        Ok(Decoded {
            event,
            writer,
            extensions,
        })
    }

    /// Decodes one NDJSON line in the proto3 JSON mapping, with the
    /// descriptor set if one is configured.
    pub fn decode_json(&self, line: &str, extensions: bool) -> Result<Decoded, DecodeError> {
        let Some(writer) = self.current_file().filter(|w| w.id != SchemaId::Compiled) else {
            return Ok(Decoded::compiled(decode::from_json(line)?));
        };
        let body = from_json(&writer.message, line)
            .map_err(|e| DecodeError::Json(e.to_string()))?
            .encode_to_vec();
        let (event, extensions) = writer.read(&body, extensions)?;
        Ok(Decoded {
            event,
            writer: Some(writer),
            extensions,
        })
    }

    /// What unframed messages are read with now.
    pub fn current(&self) -> Arc<Writer> {
        self.current_file().unwrap_or_else(Writer::compiled)
    }

    /// The descriptor set's schema, if one is configured.
    fn current_file(&self) -> Option<Arc<Writer>> {
        match &self.current {
            Current::Compiled => None,
            Current::File(current) => Some(current.reading().clone()),
        }
    }

    fn by_registry(
        &self,
        registry: &Registry,
        id: u32,
        index: &[i32],
    ) -> Result<Arc<Writer>, DecodeError> {
        let key = (id, index.to_vec());
        if let Some(writer) = self.by_id.reading().get(&key) {
            return Ok(writer.clone());
        }
        let text = registry.fetch(id).map_err(|e| match e {
            registry::FetchError::Unknown { .. } => DecodeError::Schema(e.to_string()),
            registry::FetchError::Unavailable { .. } => DecodeError::Unavailable(e.to_string()),
        })?;
        let writer = match registry_message(id, &text, index) {
            Ok(message) => Writer::new(SchemaId::Registry(id), message),
            // Not readable as protobuf at all: the events are what cannot
            // be read, as with an incompatible schema.
            Err(problem) => {
                let mut writer =
                    Writer::new(SchemaId::Registry(id), Writer::compiled().message.clone());
                writer.incompatible = Some(format!(
                    "schema {id} cannot be read as a booking event: {problem}"
                ));
                writer
            }
        };
        let writer = Arc::new(writer);
        let mut by_id = self.by_id.writing();
        if let Some(first) = by_id.get(&key) {
            // Another partition read it meanwhile, and said so.
            return Ok(first.clone());
        }
        by_id.insert(key, writer.clone());
        drop(by_id);
        log_new(&writer, &format!("schema registry {}", registry.url));
        Ok(writer)
    }
}

/// One line of proto3 JSON read as a `message` of a writer's schema.
pub fn from_json(message: &MessageDescriptor, line: &str) -> serde_json::Result<DynamicMessage> {
    let mut de = serde_json::Deserializer::from_str(line);
    let dynamic = DynamicMessage::deserialize(message.clone(), &mut de)?;
    de.end()?;
    Ok(dynamic)
}

/// `event` (of the compiled schema) as proto3 JSON written with `message`,
/// another schema of it: what that schema lacks is left out.
pub fn as_writer_json(event: &BookingEvent, message: &MessageDescriptor) -> Result<String> {
    let dynamic = DynamicMessage::decode(message.clone(), &event.encode_to_vec()[..])
        .with_context(|| format!("the event does not decode as {}", message.full_name()))?;
    Ok(serde_json::to_string(&dynamic)?)
}

/// The first event of a writer's schema: one line saying how it reads.
fn log_new(writer: &Writer, from: &str) {
    if writer.incompatible.is_some() {
        tracing::warn!(schema = %writer.id, "first event of schema {} from the {from}: {}", writer.id, writer.describe());
    } else {
        tracing::info!(schema = %writer.id, "first event of schema {} ({}) from the {from}: {}", writer.id, writer.message.full_name(), writer.describe());
    }
}

/// The message `index` names in registry schema `id`.
fn registry_message(
    id: u32,
    text: &registry::SchemaText,
    index: &[i32],
) -> Result<MessageDescriptor, String> {
    if text.schema_type != "PROTOBUF" {
        return Err(format!("it is a {} schema, not PROTOBUF", text.schema_type));
    }
    let main = format!("registry-schema-{id}.proto");
    let mut files = text.imports.clone();
    files.insert(main.clone(), text.schema.clone());
    let pool = compile(files, &main)?;
    let file = pool
        .get_file_by_name(&main)
        .ok_or("the schema's file is missing once compiled")?;
    let mut messages: Vec<MessageDescriptor> = file.messages().collect();
    let path: &[i32] = if index.is_empty() { &[0] } else { index };
    let mut found = None;
    for i in path {
        let message = messages
            .get(*i as usize)
            .cloned()
            .ok_or_else(|| format!("it has no message at index {path:?}"))?;
        messages = message.child_messages().collect();
        found = Some(message);
    }
    found.ok_or_else(|| "it has no message".into())
}

/// Compiles `.proto` texts by import name, the well-known types included.
fn compile(
    files: std::collections::BTreeMap<String, String>,
    main: &str,
) -> Result<DescriptorPool, String> {
    struct Memory(std::collections::BTreeMap<String, String>);
    impl protox::file::FileResolver for Memory {
        fn resolve_path(&self, path: &Path) -> Option<String> {
            let name = path.to_str()?;
            self.0.contains_key(name).then(|| name.to_string())
        }
        fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
            match self.0.get(name) {
                Some(text) => protox::file::File::from_source(name, text),
                None => Err(protox::Error::file_not_found(name)),
            }
        }
    }
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(Memory(files));
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(main).map_err(|e| e.to_string())?;
    Ok(compiler.descriptor_pool())
}

/// Reads the descriptor set (or `.proto` file) at `path` and finds the
/// event message in it: `message`, else the one message named
/// `BookingEvent`.
pub fn load_file(path: &Path, message: &str) -> Result<Writer> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the schema file {}", path.display()))?;
    let pool = if path.extension().is_some_and(|e| e == "proto") {
        let text = String::from_utf8(bytes.clone())
            .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("schema.proto");
        let mut files = std::collections::BTreeMap::new();
        files.insert(name.to_string(), text);
        // Imports beside it.
        if let Some(dir) = path.parent() {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "proto")
                    && let (Some(n), Ok(t)) = (
                        p.file_name().and_then(|n| n.to_str()),
                        std::fs::read_to_string(&p),
                    )
                {
                    files.entry(n.to_string()).or_insert(t);
                }
            }
        }
        compile(files, name).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        DescriptorPool::decode(&bytes[..]).with_context(|| {
            format!(
                "{} is not a protobuf FileDescriptorSet (make one with `protoc --include_imports -o FILE.desc booking.proto`, or name a .proto file)",
                path.display()
            )
        })?
    };
    let found = pool.get_message_by_name(message).or_else(|| {
        let mut named = pool.all_messages().filter(|m| m.name() == "BookingEvent");
        match (named.next(), named.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    });
    let found = found.with_context(|| {
        let names: Vec<String> = pool.all_messages().map(|m| m.full_name().to_string()).collect();
        format!(
            "{} has no message {message} (nor a single BookingEvent): set `message` in [schema] to one of {}",
            path.display(),
            names.join(", ")
        )
    })?;
    let sha = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)[..6]);
    Ok(Writer::new(SchemaId::File(sha), found))
}

/// Swaps `current` when the file at `path` changes; a file that does not
/// load keeps the schema before it, as a broken plugin file does.
fn watch(
    path: &Path,
    message: &str,
    current: Arc<RwLock<Arc<Writer>>>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let path: PathBuf = path.to_path_buf();
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into());
    let message = message.to_string();
    let last = Mutex::new(Vec::<u8>::new());
    *last.locked() = std::fs::read(&path).unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|p| {
            p == &path || p.file_name() == path.file_name() && p.parent() == path.parent()
        });
        if !ours || event.kind.is_access() {
            return;
        }
        // Editors and `cp` write in steps: wait for the file to settle.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(bytes) = std::fs::read(&path) else { return };
        let mut last = last.locked();
        if *last == bytes {
            return;
        }
        *last = bytes;
        match load_file(&path, &message) {
            Ok(writer) => {
                tracing::info!(schema = %writer.id, "schema file {} changed: now reading events as {} ({}): {}", path.display(), writer.id, writer.message.full_name(), writer.describe());
                *current.writing() = Arc::new(writer);
            }
            Err(e) => tracing::error!("schema file {} changed but does not load, the schema before it stays: {e:#}", path.display()),
        }
    })
    .context("cannot watch the schema file")?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/schema")
            .join(name)
    }

    /// A v2 event (proto3 JSON) as the v2 writer encodes it.
    fn v2_bytes(writer: &Writer, json: &str) -> Vec<u8> {
        from_json(&writer.message, json).unwrap().encode_to_vec()
    }

    const V2: &str = r#"{"eventId":"e1","bookingId":"b1","version":"3","state":"BOOKING_STATE_NO_SHOW",
        "customer":{"customerId":"c1","name":"Ada","segment":"fleet"},"loyaltyTier":"GOLD",
        "payment":{"paymentId":"p1","method":"PAYMENT_METHOD_VOUCHER"}}"#;

    #[test]
    fn a_compatible_evolution_reads_with_names_and_extensions() {
        let v2 = load_file(&fixture("booking_v2.proto"), writer::COMPILED_MESSAGE).unwrap();
        assert_eq!(v2.incompatible, None);
        assert_eq!(v2.enum_names["state"][&7], "no-show");
        assert_eq!(v2.enum_names["payment.method"][&4], "voucher");
        let mut extra = v2.extra_fields.clone();
        extra.sort();
        assert_eq!(extra, ["channel", "customer.segment", "loyalty_tier"]);

        let bytes = v2_bytes(&v2, V2);
        // The contract's fields decode with the compiled types; the state
        // is kept by number for its name.
        let event = BookingEvent::decode(&bytes[..]).unwrap();
        assert_eq!(
            (event.state, event.customer.unwrap().name.as_str()),
            (7, "Ada")
        );
        let extensions: serde_json::Value =
            serde_json::from_str(&v2.extensions(&bytes).unwrap().unwrap()).unwrap();
        assert_eq!(
            extensions,
            serde_json::json!({"customer": {"segment": "fleet"}, "loyaltyTier": "GOLD"})
        );
        // An event that sets none of the new fields has no extensions.
        let plain = v2_bytes(
            &v2,
            r#"{"eventId":"e1","bookingId":"b1","version":"1","state":"BOOKING_STATE_CREATED","customer":{"name":"Ada"}}"#,
        );
        assert_eq!(v2.extensions(&plain).unwrap(), None);
    }

    #[test]
    fn an_incompatible_schema_names_the_field() {
        let v3 = load_file(&fixture("booking_v3.proto"), writer::COMPILED_MESSAGE).unwrap();
        let why = v3.incompatible.clone().unwrap();
        assert!(
            why.contains("`price.amount_minor`") && why.contains("string"),
            "{why}"
        );
        let err = v3.decode(b"\x0a\x01e").unwrap_err();
        assert!(matches!(err, DecodeError::Schema(_)), "{err:?}");
    }

    #[test]
    fn a_message_without_the_fields_every_event_needs_is_not_a_booking_event() {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "other.proto".to_string(),
            "syntax = \"proto3\"; package pay.v1; message Refund { string event_id = 1; string booking_id = 2; int64 amount = 5; }".to_string(),
        );
        let pool = compile(files, "other.proto").unwrap();
        let writer = Writer::new(
            SchemaId::Registry(9),
            pool.get_message_by_name("pay.v1.Refund").unwrap(),
        );
        let why = writer.incompatible.unwrap();
        assert!(
            why.contains("schema 9 (pay.v1.Refund)") && why.contains("`version`"),
            "{why}"
        );
    }

    #[test]
    fn a_descriptor_set_is_read_like_a_proto_file() {
        let set = protox::compile([fixture("booking_v2.proto")], [fixture("")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.desc");
        std::fs::write(&path, set.encode_to_vec()).unwrap();
        let v2 = load_file(&path, writer::COMPILED_MESSAGE).unwrap();
        assert_eq!(v2.enum_names["state"][&7], "no-show");
        let garbage = dir.path().join("garbage.desc");
        std::fs::write(&garbage, b"not a set").unwrap();
        let err = format!(
            "{:#}",
            load_file(&garbage, writer::COMPILED_MESSAGE).unwrap_err()
        );
        assert!(err.contains("FileDescriptorSet"), "{err}");
    }
}
