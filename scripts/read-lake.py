#!/usr/bin/env python3
"""Reads a plugboard data lake with DuckDB and with pyarrow, as an analyst
would, and prints what each saw as JSON. Used by the tests to prove the
Parquet files are readable by the tools people query lakes with.

    read-lake.py LAKE_DIR    (the folder holding bookings/event_date=.../)
"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

root = sys.argv[1].rstrip("/") + "/bookings"

con = duckdb.connect()
rows, distinct, dates, revenue = con.execute(
    f"""
    SELECT count(*), count(DISTINCT event_id), count(DISTINCT event_date),
           sum(price_amount_minor) FILTER (WHERE state = 'paid')
    FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)
    """
).fetchone()

table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
print(
    json.dumps(
        {
            "duckdb": {"rows": rows, "distinct_event_ids": distinct, "dates": dates, "paid_revenue": revenue},
            "pyarrow": {"rows": table.num_rows, "columns": table.column_names},
        }
    )
)
