//! data-lake: writes every event as one row of a Parquet file (snappy) in
//! the granted folder, Hive-partitioned by event date:
//! `<dir>/bookings/event_date=YYYY-MM-DD/<source>-<partition>-<window>.parquet`.
//!
//! Replay-safe whatever the batch boundaries: a file holds the rows of one
//! window of offsets (`offsets_per_file`) of one partition, keyed by offset.
//! A batch merges its rows into the window's file (rows already there are
//! kept, not added again), written to a temporary name and renamed. So
//! replaying, redelivering after a crash, or batching differently never adds
//! a duplicate row. Readable by DuckDB, pyarrow and Spark.
//!
//! A state a newer producer added is written by its name (`no-show`); the
//! fields the contract does not have go to the `extensions` column as JSON
//! (with `extensions = true` in the manifest), which DuckDB queries with
//! `extensions->>'$.loyaltyTier'`. Files written before that column existed
//! read as if it were null.
//!
//! Safe under `concurrency = N`: each of a partition's lanes (each booking
//! always in one) merges into files of its own,
//! `<source>-<partition>-<window>-lane<i>of<N>.parquet`, so two instances
//! never write one file, and a redelivered event lands in the file that
//! holds it. A change of N starts new files: events redelivered across
//! that change may then show twice.
//!
//! Config: `dir` (default `/data`, the folder granted in the manifest),
//! `offsets_per_file` (default 1000); `plugboard.lane` and
//! `plugboard.lanes` come from the host.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use arrow_select::concat::concat_batches;
use arrow_select::take::take_record_batch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use plugboard_guest::metrics::counter_add;
use plugboard_guest::{BatchOutcome, Event, Failure, Guest, InitError, RetryInfo};

/// Hive's name for a partition whose value is missing.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Offsets per file unless configured.
const DEFAULT_WINDOW: i64 = 1000;

thread_local! {
    static ROOT: RefCell<PathBuf> = RefCell::new(PathBuf::from("/data"));
    static WINDOW: RefCell<i64> = const { RefCell::new(DEFAULT_WINDOW) };
    /// `-lane<i>of<N>` for an instance of one lane of its partition.
    static LANE: RefCell<String> = const { RefCell::new(String::new()) };
}

struct DataLake;

impl Guest for DataLake {
    fn init(config: Vec<(String, String)>) -> Result<(), InitError> {
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let window =
            match get("offsets_per_file") {
                None => DEFAULT_WINDOW,
                Some(v) => v.parse::<i64>().ok().filter(|w| *w > 0).ok_or_else(|| {
                    format!("offsets_per_file must be a positive number, got `{v}`")
                })?,
            };
        WINDOW.with(|w| *w.borrow_mut() = window);
        let lane = match (get("plugboard.lane"), get("plugboard.lanes")) {
            (Some(i), Some(n)) if n != "1" => format!("-lane{i}of{n}"),
            _ => String::new(),
        };
        LANE.with(|l| *l.borrow_mut() = lane);
        let dir = get("dir").unwrap_or_else(|| "/data".into());
        let root = PathBuf::from(dir).join("bookings");
        std::fs::create_dir_all(&root).map_err(|e| {
            format!(
                "cannot create {}: {e} (is a folder granted in the manifest's [folder]?)",
                root.display()
            )
        })?;
        ROOT.with(|r| *r.borrow_mut() = root);
        Ok(())
    }

    fn handle(batch: Vec<Event>) -> BatchOutcome {
        let root = ROOT.with(|r| r.borrow().clone());
        match write_batch(&root, &batch) {
            Ok(files) => {
                counter_add("lake_rows_written_total", &[], batch.len() as f64);
                counter_add("lake_files_written_total", &[], files as f64);
                BatchOutcome::All
            }
            // A full disk or a vanished folder may recover: nothing of this
            // batch counts as written until every file is renamed in place.
            Err(reason) => BatchOutcome::stop(
                0,
                Failure::Retry(RetryInfo {
                    reason,
                    after_ms: None,
                }),
            ),
        }
    }
}

/// One file's worth of rows: same date, source, partition and offset window.
type Group<'a> = BTreeMap<(String, &'a str, i32, i64), Vec<&'a Event>>;

fn write_batch(root: &Path, batch: &[Event]) -> Result<usize, String> {
    let window = WINDOW.with(|w| *w.borrow());
    let mut groups: Group = BTreeMap::new();
    for event in batch {
        let date = event
            .booking
            .occurred_at
            .and_then(|t| t.to_utc())
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| NULL_PARTITION.to_string());
        groups
            .entry((
                date,
                event.envelope.source.as_str(),
                event.envelope.partition,
                event.envelope.offset.div_euclid(window) * window,
            ))
            .or_default()
            .push(event);
    }
    let schema = schema();
    let lane = LANE.with(|l| l.borrow().clone());
    let mut written = 0;
    for ((date, source, partition, start), rows) in &groups {
        let dir = root.join(format!("event_date={date}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = format!("{}-{partition}-{start:012}{lane}.parquet", safe(source));
        let path = dir.join(&name);
        let fresh = record_batch(&schema, rows)?;
        let rows = match read(&path, &schema)? {
            None => fresh,
            Some(existing) => match merge(&schema, existing, &fresh)? {
                Some(merged) => merged,
                None => continue, // every row is there already
            },
        };
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        writer
            .write(&rows)
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        writer
            .close()
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
        written += 1;
    }
    Ok(written)
}

/// The rows of an existing window file, if there is one.
fn read(path: &Path, schema: &Arc<Schema>) -> Result<Option<RecordBatch>, String> {
    // Read whole: parquet's reader for files needs File::try_clone, which
    // WASI does not offer. A window file is small.
    let bytes = match std::fs::read(path) {
        Ok(b) => bytes::Bytes::from(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The schema's columns, by name: the schema read back may differ
        // in metadata, and a file of an older version lacks the columns
        // added since (null in its rows).
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                batch
                    .column_by_name(field.name())
                    .cloned()
                    .unwrap_or_else(|| {
                        arrow_array::new_null_array(field.data_type(), batch.num_rows())
                    })
            })
            .collect();
        batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?);
    }
    concat_batches(schema, &batches)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn offsets(batch: &RecordBatch) -> &Int64Array {
    batch
        .column_by_name("offset")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .expect("the schema has an Int64 offset column")
}

/// `existing` plus the rows of `fresh` whose offsets it lacks, ordered by
/// offset; `None` when `fresh` adds nothing.
fn merge(
    schema: &Arc<Schema>,
    existing: RecordBatch,
    fresh: &RecordBatch,
) -> Result<Option<RecordBatch>, String> {
    let have: HashSet<i64> = offsets(&existing).values().iter().copied().collect();
    let new: Vec<u32> = (0..fresh.num_rows())
        .filter(|&i| !have.contains(&offsets(fresh).value(i)))
        .map(|i| i as u32)
        .collect();
    if new.is_empty() {
        return Ok(None);
    }
    let fresh = take_record_batch(fresh, &UInt32Array::from(new)).map_err(|e| e.to_string())?;
    let all = concat_batches(schema, [&existing, &fresh]).map_err(|e| e.to_string())?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    let column = offsets(&all);
    order.sort_by_key(|&i| column.value(i as usize));
    take_record_batch(&all, &UInt32Array::from(order))
        .map(Some)
        .map_err(|e| e.to_string())
}

/// File-name-safe form of a source name (`file:bookings.ndjson`).
fn safe(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("event_id"),
        text("booking_id"),
        Field::new("version", DataType::UInt64, false),
        text("state"),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("garage_id", DataType::Utf8, true),
        Field::new("garage_city", DataType::Utf8, true),
        Field::new("service_code", DataType::Utf8, true),
        Field::new("price_amount_minor", DataType::Int64, true),
        Field::new("price_currency", DataType::Utf8, true),
        text("source"),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        // Fields the contract does not have, as JSON.
        Field::new("extensions", DataType::Utf8, true),
    ]))
}

fn record_batch(schema: &Arc<Schema>, rows: &[&Event]) -> Result<RecordBatch, String> {
    let strings = |f: &dyn Fn(&Event) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|e| f(e)).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|e| Some(e.booking.event_id.clone())),
        strings(&|e| Some(e.booking.booking_id.clone())),
        Arc::new(
            rows.iter()
                .map(|e| e.booking.version)
                .collect::<UInt64Array>(),
        ),
        strings(&|e| Some(e.booking.state_name().to_string())),
        Arc::new(
            rows.iter()
                .map(|e| {
                    e.booking
                        .occurred_at
                        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        strings(&|e| e.booking.customer.as_ref().map(|c| c.customer_id.clone())),
        strings(&|e| e.booking.garage.as_ref().map(|g| g.garage_id.clone())),
        strings(&|e| e.booking.garage.as_ref().map(|g| g.city.clone())),
        strings(&|e| e.booking.service.as_ref().map(|s| s.service_code.clone())),
        Arc::new(
            rows.iter()
                .map(|e| e.booking.price.as_ref().map(|p| p.amount_minor))
                .collect::<Int64Array>(),
        ),
        strings(&|e| e.booking.price.as_ref().map(|p| p.currency_code.clone())),
        strings(&|e| Some(e.envelope.source.clone())),
        Arc::new(
            rows.iter()
                .map(|e| e.envelope.partition)
                .collect::<Int32Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|e| e.envelope.offset)
                .collect::<Int64Array>(),
        ),
        strings(&|e| e.extensions.clone()),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

plugboard_guest::export_plugin!(DataLake);
