//! data-lake: writes every event as one row of a Parquet file (snappy) in
//! the granted folder, Hive-partitioned by event date:
//! `<dir>/bookings/event_date=YYYY-MM-DD/<source>-<partition>-<first>-<last>.parquet`.
//!
//! Replay-safe: a file's name derives from the source, partition and the
//! first and last offsets it holds, and it is written to a temporary name and
//! renamed, so replaying the same input rewrites the same files and never
//! adds duplicate rows. Readable by DuckDB, pyarrow and Spark.
//!
//! Config: `dir` (default `/data`, the folder granted in the manifest).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use plugboard_guest::metrics::counter_add;
use plugboard_guest::{BatchOutcome, Event, Failure, Guest, RetryInfo};

/// Hive's name for a partition whose value is missing.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

thread_local! {
    static ROOT: RefCell<PathBuf> = RefCell::new(PathBuf::from("/data"));
}

struct DataLake;

impl Guest for DataLake {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let dir = config
            .into_iter()
            .find(|(k, _)| k == "dir")
            .map(|(_, v)| v)
            .unwrap_or_else(|| "/data".into());
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
                BatchOutcome {
                    handled: batch.len() as u32,
                    failure: None,
                }
            }
            // A full disk or a vanished folder may recover: nothing of this
            // batch counts as written until every file is renamed in place.
            Err(reason) => BatchOutcome {
                handled: 0,
                failure: Some(Failure::Retry(RetryInfo {
                    reason,
                    after_ms: None,
                })),
            },
        }
    }
}

/// One file's worth of rows: same date partition, source and partition.
type Group<'a> = BTreeMap<(String, &'a str, i32), Vec<&'a Event>>;

fn write_batch(root: &std::path::Path, batch: &[Event]) -> Result<usize, String> {
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
            ))
            .or_default()
            .push(event);
    }
    let schema = schema();
    for ((date, source, partition), rows) in &groups {
        let dir = root.join(format!("event_date={date}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let first = rows
            .iter()
            .map(|e| e.envelope.offset)
            .min()
            .unwrap_or_default();
        let last = rows
            .iter()
            .map(|e| e.envelope.offset)
            .max()
            .unwrap_or_default();
        let name = format!(
            "{}-{partition}-{first:012}-{last:012}.parquet",
            safe(source)
        );
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        writer
            .write(&record_batch(&schema, rows)?)
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        writer
            .close()
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    }
    Ok(groups.len())
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
        strings(&|e| Some(e.booking.state.as_str().to_string())),
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
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

plugboard_guest::export_plugin!(DataLake);
