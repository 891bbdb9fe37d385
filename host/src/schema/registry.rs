//! A schema registry's Confluent-compatible API (Confluent Schema Registry,
//! Apicurio's `/apis/ccompat/v7`, Redpanda's): schemas fetched by id, with
//! their references, kept on disk so that a registry outage after warm-up
//! changes nothing, and the project's schema registered for producers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// How a fetch ended, when it did not bring the schema.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry answered that it has no such schema: the message
    /// names a schema that does not exist there.
    #[error("the schema registry at {url} has no schema with id {id}")]
    Unknown { url: String, id: u32 },
    /// The registry could not be asked, or failed: the host's trouble.
    #[error("cannot fetch schema id {id} from the schema registry at {url}: {problem}")]
    Unavailable {
        url: String,
        id: u32,
        problem: String,
    },
}

/// A protobuf schema with the files it imports, as the registry gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchemaText {
    /// The schema's own `.proto` text.
    pub schema: String,
    /// `PROTOBUF`, `AVRO` or `JSON`.
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
    /// Imported files by import name, with their text.
    #[serde(default)]
    pub imports: BTreeMap<String, String>,
}

fn avro() -> String {
    // The Confluent API leaves the type out for Avro.
    "AVRO".into()
}

/// One registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Base URL, up to and without `/schemas/...`.
    pub url: String,
    auth: Option<(String, String)>,
    http: reqwest::blocking::Client,
    /// Where fetched schemas are kept, one file per id.
    cache: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Answer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<i64>,
}

/// Confluent's error code for a schema id the registry does not have.
const SCHEMA_NOT_FOUND: i64 = 40403;

/// How deep references may nest before a fetch gives up (a cycle).
const MAX_REFERENCE_DEPTH: usize = 16;

impl Registry {
    /// A client of the registry at `url`; `cache_root` keeps its schemas
    /// (in a folder named after the URL, as ids are per registry).
    pub fn new(
        url: &str,
        auth: Option<(String, String)>,
        timeout: Duration,
        cache_root: Option<&Path>,
    ) -> anyhow::Result<Registry> {
        let url = url.trim_end_matches('/').to_string();
        let key = hex::encode(&sha2::Sha256::digest(url.as_bytes())[..6]);
        Ok(Registry {
            cache: cache_root.map(|root| root.join(key)),
            auth,
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            url,
        })
    }

    /// The schema `id`: from the disk cache, else from the registry (and
    /// then kept).
    pub fn fetch(&self, id: u32) -> Result<SchemaText, FetchError> {
        if let Some(text) = self.cached(id) {
            return Ok(text);
        }
        let text = self.fetch_remote(id)?;
        self.keep(id, &text);
        Ok(text)
    }

    fn cached(&self, id: u32) -> Option<SchemaText> {
        let path = self.cache.as_ref()?.join(format!("{id}.json"));
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::warn!(
                    "ignoring the unreadable cached schema {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    fn keep(&self, id: u32, text: &SchemaText) {
        let Some(dir) = &self.cache else { return };
        let kept = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{id}.json.tmp"));
            std::fs::write(&tmp, serde_json::to_vec_pretty(text)?)?;
            std::fs::rename(&tmp, dir.join(format!("{id}.json")))
        })();
        if let Err(e) = kept {
            // Not fatal: the schema is in memory; only a restart during
            // an outage would miss it.
            tracing::warn!("cannot keep schema id {id} in {}: {e}", dir.display());
        }
    }

    fn get(&self, path: &str) -> Result<reqwest::blocking::Response, String> {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        request.send().map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })
    }

    fn fetch_remote(&self, id: u32) -> Result<SchemaText, FetchError> {
        let unavailable = |problem: String| FetchError::Unavailable {
            url: self.url.clone(),
            id,
            problem,
        };
        let response = self
            .get(&format!("/schemas/ids/{id}"))
            .map_err(unavailable)?;
        let status = response.status();
        let body = response.text().map_err(|e| unavailable(e.to_string()))?;
        if status == reqwest::StatusCode::NOT_FOUND
            && serde_json::from_str::<ErrorAnswer>(&body)
                .is_ok_and(|e| e.error_code == Some(SCHEMA_NOT_FOUND))
        {
            return Err(FetchError::Unknown {
                url: self.url.clone(),
                id,
            });
        }
        if !status.is_success() {
            return Err(unavailable(format!(
                "{status}: {}",
                crate::cut::truncate(&body, 300)
            )));
        }
        let answer: Answer = serde_json::from_str(&body)
            .map_err(|e| unavailable(format!("an answer that is not a schema: {e}")))?;
        let mut imports = BTreeMap::new();
        self.resolve(&answer.references, &mut imports, 0)
            .map_err(unavailable)?;
        Ok(SchemaText {
            schema: answer.schema,
            schema_type: answer.schema_type.unwrap_or_else(avro),
            imports,
        })
    }

    /// Fetches `references` and theirs into `imports`.
    fn resolve(
        &self,
        references: &[Reference],
        imports: &mut BTreeMap<String, String>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_REFERENCE_DEPTH {
            return Err("references nest too deep (a cycle?)".into());
        }
        for reference in references {
            if imports.contains_key(&reference.name) {
                continue;
            }
            let path = format!(
                "/subjects/{}/versions/{}",
                reference.subject, reference.version
            );
            let response = self.get(&path)?;
            let status = response.status();
            let body = response.text().map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "reference {} ({path}): {status}: {}",
                    reference.name,
                    crate::cut::truncate(&body, 300)
                ));
            }
            let answer: Answer = serde_json::from_str(&body)
                .map_err(|e| format!("reference {}: {e}", reference.name))?;
            imports.insert(reference.name.clone(), answer.schema);
            self.resolve(&answer.references, imports, depth + 1)?;
        }
        Ok(())
    }

    /// Fetches the latest schema of `subject` and keeps it; its id.
    pub fn warm_up(&self, subject: &str) -> Result<u32, String> {
        #[derive(Deserialize)]
        struct Latest {
            id: u32,
        }
        let response = self.get(&format!("/subjects/{subject}/versions/latest"))?;
        let status = response.status();
        let body = response.text().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", crate::cut::truncate(&body, 300)));
        }
        let id = serde_json::from_str::<Latest>(&body)
            .map_err(|e| format!("an answer without an id: {e}"))?
            .id;
        self.fetch(id).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Registers `schema` (protobuf text) under `subject`; its id. The
    /// registry answers with the existing id if it has the same schema.
    pub fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let mut request = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({"schemaType": "PROTOBUF", "schema": schema}));
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().map_err(|e| {
            anyhow::anyhow!("cannot reach the schema registry at {}: {e}", self.url)
        })?;
        let status = response.status();
        let body = response.text()?;
        if !status.is_success() {
            anyhow::bail!(
                "the schema registry at {} refused the schema for subject {subject}: {status}: {}",
                self.url,
                crate::cut::truncate(&body, 500)
            );
        }
        Ok(serde_json::from_str::<Registered>(&body)
            .map_err(|e| anyhow::anyhow!("unexpected answer from {}: {e}: {body}", self.url))?
            .id)
    }
}
