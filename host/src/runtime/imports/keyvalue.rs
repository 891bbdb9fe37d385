//! Durable plugin state: the host side of `wasi:keyvalue` (store, atomics,
//! batch), kept in one SQLite file in the host's data folder.
//!
//! Each plugin sees only its own keys, of the source it consumes: every
//! row carries the plugin name and the scope (the Kafka topic, or
//! `file:<name>`), so a plugin pointed at another topic starts afresh
//! instead of adding that topic's bookings to the old one's. Buckets are
//! named freely by the plugin, and the instances of all its partitions
//! share them.
//!
//! Writes of a call are held by the instance and applied in one
//! transaction when `init` or `handle` returns; a trap drops them. So state
//! and the outcome of a batch never disagree, and no database lock is held
//! while a plugin runs. An `increment` is kept as a delta and added to the
//! stored value inside that transaction: instances of several partitions
//! incrementing one key never lose an update.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::locks::Lock;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use wasmtime::component::{HasData, Linker, Resource};

use crate::runtime::bindings::Bucket;
use crate::runtime::bindings::wasi::keyvalue::{atomics, batch, store};

/// What the key-value imports see of an instance's Store: its view of the
/// state and the table its open buckets live in.
pub struct KvView<'a> {
    pub kv: &'a mut KvState,
    pub table: &'a mut wasmtime::component::ResourceTable,
}

/// The key-value imports' part of the Store data.
struct KeyValue;

impl HasData for KeyValue {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue` store, atomics and batch, served from the view
/// `view` takes of the Store data.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, KeyValue>(linker, view)?;
    atomics::add_to_linker::<T, KeyValue>(linker, view)?;
    batch::add_to_linker::<T, KeyValue>(linker, view)
}

/// Longest key a plugin may use, in bytes.
const MAX_KEY: usize = 1024;
/// Largest value a plugin may store, in bytes.
const MAX_VALUE: usize = 4 << 20;
/// Keys per page of `list-keys`.
const PAGE: usize = 1000;

/// The host's state file, shared by every instance of every plugin.
pub struct StateDb {
    /// One connection: a second one for reads was measured slower (its
    /// reads wait on the file lock in SQLite's busy loop instead of on
    /// this mutex).
    conn: Mutex<Connection>,
    /// Calls' writes waiting for the next transaction.
    queue: Mutex<Vec<Queued>>,
}

/// Where a plugin's rows live: its name and the source it consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub plugin: Arc<str>,
    pub source: Arc<str>,
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
        // stays up. It costs a sync per transaction, ~0.6-0.7 ms here:
        // calls that write state share ~1.5k transactions/s per host
        // (`cargo bench --bench state`), which group commit stretches when
        // several commit at once. Hosts on one machine may share the file:
        // writers wait for each other.
        //
        // `synchronous = NORMAL`: a power loss leaves every committed call
        // or none of it, but may undo the last ones, whose offsets the
        // broker may already have: then state misses their effect. It never
        // counts an event twice, since state is saved before the offset is
        // stored. FULL would close that gap at one more fsync per call.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .context("cannot set the state file's busy timeout")?;
        conn.execute_batch(
            "PRAGMA journal_mode = TRUNCATE;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS state (
                 plugin TEXT NOT NULL,
                 scope  TEXT NOT NULL,
                 bucket TEXT NOT NULL,
                 key    TEXT NOT NULL,
                 value  BLOB NOT NULL,
                 PRIMARY KEY (plugin, scope, bucket, key)
             ) WITHOUT ROWID;",
        )
        .with_context(|| format!("cannot set up the plugin state file {}", path.display()))?;
        Ok(Arc::new(StateDb {
            conn: Mutex::new(conn),
            queue: Mutex::default(),
        }))
    }

    /// Moves rows a host before 0.2 kept without a scope (table `kv`) to
    /// `source`, the topic they were consumed from, once.
    pub fn adopt_unscoped(&self, source: &str) -> Result<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let old: bool = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kv'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
        if !old {
            return Ok(0);
        }
        let moved = tx.execute(
            "INSERT OR IGNORE INTO state (plugin, scope, bucket, key, value)
             SELECT plugin, ?1, bucket, key, value FROM kv",
            params![source],
        )?;
        tx.execute("DROP TABLE kv", [])?;
        tx.commit()?;
        Ok(moved as u64)
    }

    /// The connection, even if a thread panicked holding it: SQLite's own
    /// transaction keeps the file consistent, so one panic must not stop
    /// every plugin's state.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.locked()
    }

    fn get(&self, scope: &Scope, bucket: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.lock()
            .prepare_cached(
                "SELECT value FROM state
                 WHERE plugin = ?1 AND scope = ?2 AND bucket = ?3 AND key = ?4",
            )?
            .query_row(
                params![&*scope.plugin, &*scope.source, bucket, key],
                |row| row.get(0),
            )
            .optional()
    }

    fn keys(&self, scope: &Scope, bucket: &str) -> rusqlite::Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key FROM state WHERE plugin = ?1 AND scope = ?2 AND bucket = ?3 ORDER BY key",
        )?;
        stmt.query_map(params![&*scope.plugin, &*scope.source, bucket], |row| {
            row.get(0)
        })?
        .collect()
    }

    /// Applies one call's writes atomically, with the writes of every other
    /// call that is waiting meanwhile (group commit): the file's cost is a
    /// sync per transaction, so instances committing at once share one
    /// instead of queueing for one each. The transaction takes the write
    /// lock first, so an increment's read and write are one step for every
    /// other instance and every other host sharing the file. Returns how
    /// long the call waited for the connection.
    fn apply(&self, scope: &Scope, writes: Writes) -> Result<Duration> {
        let done: Done = Arc::default();
        self.queue.locked().push(Queued {
            scope: scope.clone(),
            writes,
            done: done.clone(),
        });
        let asked = Instant::now();
        let mut conn = self.lock();
        let waited = asked.elapsed();
        // A call that committed while this one waited took it along.
        if let Some(result) = done.locked().take() {
            return result.map(|()| waited).map_err(anyhow::Error::msg);
        }
        let group = std::mem::take(&mut *self.queue.locked());
        let together = transaction(&mut conn, group.iter().map(|q| (&q.scope, &q.writes)));
        match together {
            Ok(()) => {
                for queued in &group {
                    *queued.done.locked() = Some(Ok(()));
                }
            }
            // One call's writes must not fail the others': each goes again
            // alone, and only a call that fails alone fails.
            Err(_) => {
                for queued in &group {
                    let alone = transaction(&mut conn, [(&queued.scope, &queued.writes)]);
                    *queued.done.locked() = Some(alone.map_err(|e| format!("{e:#}")));
                }
            }
        }
        // Only a call whose group was cut short by a panic finds nothing.
        let result = done
            .locked()
            .take()
            .unwrap_or_else(|| Err("the commit it was part of was interrupted".into()));
        result.map(|()| waited).map_err(anyhow::Error::msg)
    }
}

/// Where a queued call learns how its commit went.
type Done = Arc<Mutex<Option<Result<(), String>>>>;

/// One call's writes waiting for the next transaction.
struct Queued {
    scope: Scope,
    writes: Writes,
    done: Done,
}

/// Applies the writes of `calls` in one transaction.
fn transaction<'a>(
    conn: &mut Connection,
    calls: impl IntoIterator<Item = (&'a Scope, &'a Writes)>,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut set = tx.prepare_cached(
            "INSERT INTO state (plugin, scope, bucket, key, value) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (plugin, scope, bucket, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut delete = tx.prepare_cached(
            "DELETE FROM state WHERE plugin = ?1 AND scope = ?2 AND bucket = ?3 AND key = ?4",
        )?;
        let mut read = tx.prepare_cached(
            "SELECT value FROM state
             WHERE plugin = ?1 AND scope = ?2 AND bucket = ?3 AND key = ?4",
        )?;
        for (scope, writes) in calls {
            let (plugin, source) = (&*scope.plugin, &*scope.source);
            for ((bucket, key), write) in writes {
                match write {
                    Write::Set(value) => {
                        set.execute(params![plugin, source, bucket, key, value])?;
                    }
                    Write::Delete => {
                        delete.execute(params![plugin, source, bucket, key])?;
                    }
                    Write::Add(delta) => {
                        let stored: Option<Vec<u8>> = read
                            .query_row(params![plugin, source, bucket, key], |row| row.get(0))
                            .optional()?;
                        let next =
                            add(stored.as_deref(), *delta, key).map_err(anyhow::Error::msg)?;
                        let next = next.to_string().into_bytes();
                        set.execute(params![plugin, source, bucket, key, next])?;
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// `stored` (a decimal number, or nothing: 0) plus `delta`.
fn add(stored: Option<&[u8]>, delta: u64, key: &str) -> Result<u64, String> {
    let current = match stored {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("`{key}` does not hold a decimal number"))?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| format!("`{key}` would overflow"))
}

/// One pending write of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Set(Vec<u8>),
    Delete,
    /// Increments not yet applied: added to the stored value at commit.
    Add(u64),
}

/// Pending writes of a call, by (bucket, key).
type Writes = BTreeMap<(String, String), Write>;

/// One instance's view of the state.
pub struct KvState {
    db: Option<Arc<StateDb>>,
    scope: Scope,
    pending: Writes,
    /// Bytes `pending` holds (buckets, keys, values): host memory outside
    /// the plugin's own, bounded by `max_pending_bytes`.
    pending_bytes: usize,
    max_pending_bytes: usize,
    /// Set when a write went over `max_pending_bytes`: the call fails as
    /// over its budget, whatever it answers.
    overrun: Option<String>,
    /// Set when the store itself failed during the call: whatever the
    /// plugin answered then, the host failed, not the event.
    failed: Option<String>,
}

impl KvState {
    /// A view whose calls may hold up to `max_pending_bytes` of writes.
    pub fn new(db: Option<Arc<StateDb>>, scope: Scope, max_pending_bytes: usize) -> Self {
        KvState {
            db,
            scope,
            pending: Writes::new(),
            pending_bytes: 0,
            max_pending_bytes,
            overrun: None,
            failed: None,
        }
    }

    /// Why the call went over its budget of pending writes, if it did;
    /// cleared.
    pub fn take_overrun(&mut self) -> Option<String> {
        self.overrun.take()
    }

    /// Holds `write` for the call, unless the call's writes would then
    /// hold more than their budget.
    fn hold(&mut self, slot: (String, String), write: Write) -> Result<(), store::Error> {
        let size = |slot: &(String, String), write: &Write| {
            slot.0.len()
                + slot.1.len()
                + match write {
                    Write::Set(value) => value.len(),
                    Write::Delete | Write::Add(_) => 8,
                }
        };
        let before = self.pending.get(&slot).map_or(0, |w| size(&slot, w));
        let after = self.pending_bytes - before + size(&slot, &write);
        if after > self.max_pending_bytes {
            let reason = format!(
                "the call's pending state writes would hold {after} bytes, over its budget of {} (the plugin's memory_limit)",
                self.max_pending_bytes
            );
            self.overrun.get_or_insert_with(|| reason.clone());
            return Err(store::Error::Other(reason));
        }
        self.pending_bytes = after;
        self.pending.insert(slot, write);
        Ok(())
    }

    /// Makes the call's writes durable.
    pub fn commit(&mut self) -> Result<()> {
        self.commit_timed().map(drop)
    }

    /// [`KvState::commit`], saying how long it waited for the connection
    /// other instances were committing on.
    pub fn commit_timed(&mut self) -> Result<Duration> {
        if self.pending.is_empty() {
            return Ok(Duration::ZERO);
        }
        let writes = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        match &self.db {
            Some(db) => db
                .apply(&self.scope, writes)
                .with_context(|| format!("cannot save the state of {}", self.scope.plugin)),
            None => Ok(Duration::ZERO),
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
        self.pending_bytes = 0;
    }

    /// The value as the store has it, ignoring this call's writes.
    fn stored(&mut self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
        let result = self.db()?.get(&self.scope, bucket, key);
        result.map_err(|e| self.fail(e))
    }

    fn get(&mut self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, store::Error> {
        match self.pending.get(&(bucket.to_string(), key.to_string())) {
            Some(Write::Set(value)) => Ok(Some(value.clone())),
            Some(Write::Delete) => Ok(None),
            Some(Write::Add(delta)) => {
                let delta = *delta;
                let stored = self.stored(bucket, key)?;
                let value = add(stored.as_deref(), delta, key).map_err(store::Error::Other)?;
                Ok(Some(value.to_string().into_bytes()))
            }
            None => self.stored(bucket, key),
        }
    }

    /// Sets (`None`: deletes) `key` at commit.
    pub fn set(
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
        let write = match value {
            Some(value) => Write::Set(value),
            None => Write::Delete,
        };
        self.hold((bucket.to_string(), key), write)
    }

    /// Adds `delta` to `key` at commit, whatever other instances add
    /// meanwhile. Returns the value as this call sees it now.
    pub fn increment(
        &mut self,
        bucket: &str,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        check_key(&key)?;
        let slot = (bucket.to_string(), key);
        let pending = self.pending.get(&slot).cloned();
        let (write, seen) = match pending {
            // The call set the value itself: it stays an absolute write.
            Some(Write::Set(value)) => {
                let next = add(Some(&value), delta, &slot.1).map_err(store::Error::Other)?;
                (Write::Set(next.to_string().into_bytes()), next)
            }
            Some(Write::Delete) => (Write::Set(delta.to_string().into_bytes()), delta),
            Some(Write::Add(before)) => {
                let total = before
                    .checked_add(delta)
                    .ok_or_else(|| store::Error::Other(format!("`{}` would overflow", slot.1)))?;
                let stored = self.stored(&slot.0, &slot.1)?;
                let seen = add(stored.as_deref(), total, &slot.1).map_err(store::Error::Other)?;
                (Write::Add(total), seen)
            }
            None => {
                let stored = self.stored(&slot.0, &slot.1)?;
                let seen = add(stored.as_deref(), delta, &slot.1).map_err(store::Error::Other)?;
                (Write::Add(delta), seen)
            }
        };
        self.hold(slot, write)?;
        Ok(seen)
    }

    fn keys(&mut self, bucket: &str) -> Result<Vec<String>, store::Error> {
        let listed = self.db()?.keys(&self.scope, bucket);
        let mut keys: std::collections::BTreeSet<String> =
            listed.map_err(|e| self.fail(e))?.into_iter().collect();
        for ((b, key), write) in &self.pending {
            if b == bucket {
                match write {
                    Write::Delete => keys.remove(key),
                    Write::Set(_) | Write::Add(_) => keys.insert(key.clone()),
                };
            }
        }
        Ok(keys.into_iter().collect())
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

impl KvView<'_> {
    fn bucket_name(&self, bucket: &Resource<Bucket>) -> Result<String, store::Error> {
        self.table
            .get(bucket)
            .map(|b| b.name.clone())
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::Host for KvView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
        self.kv.db()?;
        check_key(&identifier)?;
        self.table
            .push(Bucket { name: identifier })
            .map_err(|e| store::Error::Other(e.to_string()))
    }
}

impl store::HostBucket for KvView<'_> {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.kv.get(&name, &key)
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
        let keys = self.kv.keys(&name)?;
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

impl atomics::Host for KvView<'_> {
    /// The value is a decimal number, as other `wasi:keyvalue` hosts keep it.
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        let name = self.bucket_name(&bucket)?;
        self.kv.increment(&name, key, delta)
    }
}

impl batch::Host for KvView<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let name = self.bucket_name(&bucket)?;
        keys.into_iter()
            .map(|key| {
                let value = self.kv.get(&name, &key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(plugin: &str, source: &str) -> Scope {
        Scope {
            plugin: Arc::from(plugin),
            source: Arc::from(source),
        }
    }

    fn number(kv: &mut KvState, bucket: &str, key: &str) -> Option<u64> {
        kv.get(bucket, key)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
    }

    #[test]
    fn increments_of_many_instances_on_one_key_all_count() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        let (instances, calls, per_call) = (6, 400, 5);
        std::thread::scope(|s| {
            for _ in 0..instances {
                let db = db.clone();
                s.spawn(move || {
                    let mut kv = KvState::new(Some(db), scope("p", "bookings"), usize::MAX);
                    for _ in 0..calls {
                        for _ in 0..per_call {
                            kv.increment("b", "total".into(), 1).unwrap();
                        }
                        kv.commit().unwrap();
                    }
                });
            }
        });
        let mut kv = KvState::new(Some(db), scope("p", "bookings"), usize::MAX);
        assert_eq!(
            number(&mut kv, "b", "total"),
            Some(instances * calls * per_call)
        );
    }

    #[test]
    fn a_call_sees_its_own_writes_and_increments() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        let mut kv = KvState::new(Some(db.clone()), scope("p", "t"), usize::MAX);
        assert_eq!(kv.increment("b", "n".into(), 2).unwrap(), 2);
        assert_eq!(kv.increment("b", "n".into(), 3).unwrap(), 5);
        assert_eq!(number(&mut kv, "b", "n"), Some(5));
        kv.commit().unwrap();
        // Another instance adds meanwhile: the next increment builds on it.
        let mut other = KvState::new(Some(db.clone()), scope("p", "t"), usize::MAX);
        other.increment("b", "n".into(), 10).unwrap();
        other.commit().unwrap();
        assert_eq!(kv.increment("b", "n".into(), 1).unwrap(), 16);
        // A set in the same call stays absolute; an increment after a
        // delete starts from 0.
        kv.set("b", "m".into(), Some(b"7".to_vec())).unwrap();
        assert_eq!(kv.increment("b", "m".into(), 1).unwrap(), 8);
        kv.set("b", "gone".into(), None).unwrap();
        assert_eq!(kv.increment("b", "gone".into(), 4).unwrap(), 4);
        assert_eq!(kv.keys("b").unwrap(), ["gone", "m", "n"]);
        kv.commit().unwrap();
        let mut fresh = KvState::new(Some(db), scope("p", "t"), usize::MAX);
        assert_eq!(number(&mut fresh, "b", "n"), Some(16));
        assert_eq!(number(&mut fresh, "b", "m"), Some(8));
        assert_eq!(number(&mut fresh, "b", "gone"), Some(4));
    }

    #[test]
    fn an_increment_of_a_value_that_is_no_number_fails_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        let mut kv = KvState::new(Some(db), scope("p", "t"), usize::MAX);
        kv.set("b", "word".into(), Some(b"seven".to_vec())).unwrap();
        kv.commit().unwrap();
        let err = kv.increment("b", "word".into(), 1).unwrap_err();
        assert!(format!("{err:?}").contains("decimal number"), "{err:?}");
        assert!(!kv.has_pending());
    }

    #[test]
    fn state_is_scoped_to_the_plugin_and_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        let mut a = KvState::new(Some(db.clone()), scope("metrics", "bookings"), usize::MAX);
        a.set("totals", "0".into(), Some(b"3".to_vec())).unwrap();
        a.commit().unwrap();
        let mut other_topic = KvState::new(
            Some(db.clone()),
            scope("metrics", "bookings-eu"),
            usize::MAX,
        );
        assert_eq!(other_topic.get("totals", "0").unwrap(), None);
        let mut other_plugin =
            KvState::new(Some(db.clone()), scope("lake", "bookings"), usize::MAX);
        assert_eq!(other_plugin.get("totals", "0").unwrap(), None);
        let mut same = KvState::new(Some(db), scope("metrics", "bookings"), usize::MAX);
        assert_eq!(same.get("totals", "0").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn state_of_a_host_before_scopes_moves_to_the_configured_topic_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE kv (plugin TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
                     value BLOB NOT NULL, PRIMARY KEY (plugin, bucket, key)) WITHOUT ROWID;
                 INSERT INTO kv VALUES ('metrics', 'totals', '0', x'33');",
            )
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.adopt_unscoped("bookings").unwrap(), 1);
        assert_eq!(db.adopt_unscoped("bookings").unwrap(), 0);
        let mut kv = KvState::new(Some(db), scope("metrics", "bookings"), usize::MAX);
        assert_eq!(kv.get("totals", "0").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn writes_past_the_budget_fail_and_mark_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
        let mut kv = KvState::new(Some(db), scope("p", "t"), 100);
        kv.set("b", "k".into(), Some(vec![0; 60])).unwrap();
        // Overwriting a key holds its new size, not both.
        kv.set("b", "k".into(), Some(vec![0; 90])).unwrap();
        assert!(kv.take_overrun().is_none());
        assert!(kv.set("b", "k2".into(), Some(vec![0; 20])).is_err());
        let why = kv.take_overrun().expect("over budget");
        assert!(why.contains("over its budget of 100"), "{why}");
        kv.discard();
        kv.set("b", "k2".into(), Some(vec![0; 20])).unwrap();
    }
}
