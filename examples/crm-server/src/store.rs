//! Objects in SQLite: one row per object, its properties as a JSON map of
//! strings, as HubSpot returns them. Statements are prepared once and
//! cached: a batch of 100 upserts runs 300 of them, and parsing the SQL
//! each time made the CRM, not its `--latency-ms`, the slow part of a
//! slow-sink benchmark.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

/// A stored object, in HubSpot's response shape.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub id: String,
    pub properties: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    pub archived: bool,
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS objects (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 object_type TEXT NOT NULL,
                 properties TEXT NOT NULL,
                 created_at TEXT NOT NULL,
                 updated_at TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS objects_booking_id
                 ON objects(object_type, json_extract(properties, '$.booking_id'));",
        )?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Object> {
        let properties: String = row.get(1)?;
        Ok(Object {
            id: row.get::<_, i64>(0)?.to_string(),
            properties: serde_json::from_str(&properties).unwrap_or_default(),
            created_at: row.get(2)?,
            updated_at: row.get(3)?,
            archived: false,
        })
    }

    /// Finds an object by a unique property (`id_property` = `hs_object_id`
    /// or absent means the object id itself).
    pub fn find(
        &self,
        object_type: &str,
        id_property: Option<&str>,
        id: &str,
    ) -> Result<Option<Object>> {
        let conn = self.conn.lock().expect("db lock");
        find(&conn, object_type, id_property, id)
    }

    /// [`Store::find`] for many ids under one lock, in their order.
    pub fn find_many(
        &self,
        object_type: &str,
        id_property: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<Option<Object>>> {
        let conn = self.conn.lock().expect("db lock");
        ids.iter()
            .map(|id| find(&conn, object_type, id_property, id))
            .collect()
    }

    /// Creates or merges properties into the objects whose `id_property`
    /// equals each id, in one transaction.
    pub fn upsert(
        &self,
        object_type: &str,
        inputs: &[(String, String, Map<String, Value>)],
    ) -> Result<Vec<Object>> {
        let mut conn = self.conn.lock().expect("db lock");
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(inputs.len());
        for (id_property, id, properties) in inputs {
            let existing = find(&tx, object_type, Some(id_property), id)?;
            let object_id = match existing {
                Some(mut object) => {
                    object.properties.extend(properties.clone());
                    tx.prepare_cached(&format!(
                        "UPDATE objects SET properties = ?1, updated_at = {NOW} WHERE id = ?2"
                    ))?
                    .execute(params![
                        Value::Object(object.properties).to_string(),
                        object.id.parse::<i64>()?
                    ])?;
                    object.id
                }
                None => {
                    let mut all = properties.clone();
                    all.insert(id_property.clone(), Value::String(id.clone()));
                    tx.prepare_cached(&format!(
                        "INSERT INTO objects (object_type, properties, created_at, updated_at) VALUES (?1, ?2, {NOW}, {NOW})"
                    ))?
                    .execute(params![object_type, Value::Object(all).to_string()])?;
                    tx.last_insert_rowid().to_string()
                }
            };
            out.push(find(&tx, object_type, None, &object_id)?.context("object just written")?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Up to `limit` objects with an id greater than `after`, in id order.
    pub fn page(&self, object_type: &str, limit: usize, after: i64) -> Result<Vec<Object>> {
        let conn = self.conn.lock().expect("db lock");
        let mut stmt = conn.prepare_cached(
            "SELECT id, properties, created_at, updated_at FROM objects
             WHERE object_type = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![object_type, after, limit as i64], Self::row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

fn find(
    conn: &Connection,
    object_type: &str,
    id_property: Option<&str>,
    id: &str,
) -> Result<Option<Object>> {
    let object = match id_property.filter(|p| *p != "hs_object_id") {
        None => conn
            .prepare_cached(
                "SELECT id, properties, created_at, updated_at FROM objects WHERE object_type = ?1 AND id = ?2",
            )?
            .query_row(
                params![object_type, id.parse::<i64>().unwrap_or(-1)],
                Store::row,
            )
            .optional()?,
        Some(property) => {
            // Property names are checked to be plain identifiers, so the path
            // can be written into the SQL, where the index can match it.
            anyhow::ensure!(
                !property.is_empty()
                    && property.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "invalid property name `{property}`"
            );
            conn.prepare_cached(&format!(
                "SELECT id, properties, created_at, updated_at FROM objects
                 WHERE object_type = ?1 AND json_extract(properties, '$.{property}') = ?2"
            ))?
            .query_row(params![object_type, id], Store::row)
            .optional()?
        }
    };
    Ok(object)
}
