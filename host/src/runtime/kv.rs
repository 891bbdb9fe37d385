//! Durable plugin state: the host side of `wasi:keyvalue` (store, atomics,
//! batch), kept in one SQLite file in the host's data folder.
//!
//! Each plugin sees only its own keys (every row carries the plugin name),
//! in buckets it names freely. Writes of a call are held by the instance
//! and applied in one transaction when `init` or `handle` returns; a trap
//! drops them. So state and the outcome of a batch never disagree, and no
//! database lock is held while a plugin runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::state::PluginState;

/// Longest key a plugin may use, in bytes.
const MAX_KEY: usize = 1024;
/// Largest value a plugin may store, in bytes.
const MAX_VALUE: usize = 4 << 20;
/// Keys per page of `list-keys`.
const PAGE: usize = 1000;

/// The host's state file, shared by every instance of every plugin.
pub struct StateDb {
    conn: Mutex<Connection>,
}

impl StateDb {
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the plugin state file {}", path.display()))?;
        // A rollback journal, not WAL: WAL maps its index file into memory,
        // and a write to that mapping once the folder turned read-only
        // (an immutable file, a filesystem remounted read-only after disk
        // errors) kills the process with SIGBUS instead of failing a call.
        // With a journal the write fails, the partition holds, and the host
        // stays up. It costs ~1.4 ms per call that writes state (the metrics
        // plugin: ~30k instead of ~50k events/s on the file source). Hosts
        // on one machine may share the file: writers wait for each other.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .context("cannot set the state file's busy timeout")?;
        conn.execute_batch(
            "PRAGMA journal_mode = TRUNCATE;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS kv (
                 plugin TEXT NOT NULL,
                 bucket TEXT NOT NULL,
                 key    TEXT NOT NULL,
                 value  BLOB NOT NULL,
                 PRIMARY KEY (plugin, bucket, key)
             ) WITHOUT ROWID;",
        )
        .with_context(|| format!("cannot set up the plugin state file {}", path.display()))?;
        Ok(Arc::new(StateDb {
            conn: Mutex::new(conn),
        }))
    }

    fn get(&self, plugin: &str, bucket: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .lock()
            .expect("state lock")
            .prepare_cached("SELECT value FROM kv WHERE plugin = ?1 AND bucket = ?2 AND key = ?3")?
            .query_row(params![plugin, bucket, key], |row| row.get(0))
            .optional()
    }

    fn keys(&self, plugin: &str, bucket: &str) -> rusqlite::Result<Vec<String>> {
        let conn = self.conn.lock().expect("state lock");
        let mut stmt = conn
            .prepare_cached("SELECT key FROM kv WHERE plugin = ?1 AND bucket = ?2 ORDER BY key")?;
        stmt.query_map(params![plugin, bucket], |row| row.get(0))?
            .collect()
    }

    /// Applies one call's writes atomically.
    fn apply(&self, plugin: &str, writes: &Writes) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock().expect("state lock");
        let tx = conn.transaction()?;
        {
            let mut set = tx.prepare_cached(
                "INSERT INTO kv (plugin, bucket, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plugin, bucket, key) DO UPDATE SET value = excluded.value",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM kv WHERE plugin = ?1 AND bucket = ?2 AND key = ?3")?;
            for ((bucket, key), value) in writes {
                match value {
                    Some(value) => set.execute(params![plugin, bucket, key, value])?,
                    None => delete.execute(params![plugin, bucket, key])?,
                };
            }
        }
        tx.commit()
    }
}

/// Pending writes of a call: `None` deletes.
type Writes = BTreeMap<(String, String), Option<Vec<u8>>>;

/// A bucket a plugin opened: just its name; the plugin is the instance's.
pub struct Bucket {
    name: String,
}

/// One instance's view of the state.
#[derive(Default)]
pub struct KvState {
    db: Option<Arc<StateDb>>,
    pending: Writes,
    /// Set when the store itself failed during the call: whatever the
    /// plugin answered then, the host failed, not the event.
    failed: Option<String>,
}

impl KvState {
    pub fn new(db: Option<Arc<StateDb>>) -> Self {
        KvState {
            db,
            pending: Writes::new(),
            failed: None,
        }
    }

    /// Makes the call's writes durable.
    pub fn commit(&mut self, plugin: &str) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.pending);
        match &self.db {
            Some(db) => db
                .apply(plugin, &writes)
                .with_context(|| format!("cannot save the state of {plugin}")),
            None => Ok(()),
        }
    }

    /// Why the store failed during the call, if it did; cleared.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failed.take()
    }

    /// The store failed: remembered for the call, and told to the plugin.
    fn fail(&mut self, e: rusqlite::Error) -> store::Error {
        let reason = format!("state store error: {e}");
        tracing::debug!("plugin state: {e}");
        self.failed.get_or_insert_with(|| reason.clone());
        store::Error::Other(reason)
    }

    /// Whether the call in progress has written anything.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets the call's writes (it trapped or did not handle its batch).
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    fn get(
        &mut self,
        plugin: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        if let Some(pending) = self.pending.get(&(bucket.to_string(), key.to_string())) {
            return Ok(pending.clone());
        }
        let result = self.db()?.get(plugin, bucket, key);
        result.map_err(|e| self.fail(e))
    }

    fn set(
        &mut self,
        bucket: &str,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<(), store::Error> {
        check_key(&key)?;
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE) {
            return Err(store::Error::Other(format!(
                "value of `{key}` is larger than {MAX_VALUE} bytes"
            )));
        }
        self.pending.insert((bucket.to_string(), key), value);
        Ok(())
    }

    fn db(&self) -> Result<&StateDb, store::Error> {
        self.db.as_deref().ok_or_else(|| {
            store::Error::Other("this host keeps no plugin state (no data folder)".into())
        })
    }
}

fn check_key(key: &str) -> Result<(), store::Error> {
    if key.len() > MAX_KEY {
        return Err(store::Error::Other(format!(
            "key of {} bytes is longer than the {MAX_KEY} bytes a key may have: it can never be stored",
            key.len()
        )));
    }
    Ok(())
}

impl PluginState {
    fn bucket_name(&self, bucket: &Resource<Bucket>) -> Result<String, store::Error> {
        self.table
            .get(bucket)
            .map(|b| b.name.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::Host for PluginState {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
        self.kv.db()?;
        check_key(&identifier)?;
        self.table
            .push(Bucket { name: identifier })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::HostBucket for PluginState {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.kv.get(&self.plugin, &name, &key)
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.kv.set(&name, key, Some(value))
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.kv.set(&name, key, None)
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, store::Error> {
        Ok(self.get(bucket, key)?.is_some())
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, store::Error> {
        let name = self.bucket_name(&bucket)?;
        let listed = self.kv.db()?.keys(&self.plugin, &name);
        let mut keys: std::collections::BTreeSet<String> =
            listed.map_err(|e| self.kv.fail(e))?.into_iter().collect();
        for ((b, key), value) in &self.kv.pending {
            if *b == name {
                match value {
                    Some(_) => keys.insert(key.clone()),
                    None => keys.remove(key),
                };
            }
        }
        let start = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.into_iter().skip(start).take(PAGE + 1).collect();
        let more = page.len() > PAGE;
        Ok(store::KeyResponse {
            keys: page.into_iter().take(PAGE).collect(),
            cursor: more.then_some((start + PAGE) as u64),
        })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for PluginState {
    /// The value is a decimal number, as other `wasi:keyvalue` hosts keep it.
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        let name = self.bucket_name(&bucket)?;
        let current = match self.kv.get(&self.plugin, &name, &key)? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    store::Error::Other(format!("`{key}` does not hold a decimal number"))
                })?,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| store::Error::Other(format!("`{key}` would overflow")))?;
        self.kv
            .set(&name, key, Some(next.to_string().into_bytes()))?;
        Ok(next)
    }
}

impl batch::Host for PluginState {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        keys.into_iter()
            .map(|key| {
                let value = self.kv.get(&self.plugin, &name, &key)?;
                Ok(value.map(|v| (key, v)))
            })
            .collect()
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        for (key, value) in key_values {
            self.kv.set(&name, key, Some(value))?;
        }
        Ok(())
    }

    fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let name = self.bucket_name(&bucket)?;
        for key in keys {
            self.kv.set(&name, key, None)?;
        }
        Ok(())
    }
}
