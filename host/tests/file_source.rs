//! The file source end to end, on the real plugins: the sample file through
//! crm-sync (against the example CRM), data-lake (real Parquet files) and
//! metrics, checked against what the test computes from the file itself.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Crm, STATES, Setup, read_lake, read_sample, sample_events};
use serde_json::Value;

#[test]
fn sample_file_end_to_end_and_replay_changes_nothing() {
    let setup = Setup::new();
    let crm = Crm::start(&setup.path("crm.db"));
    let lake = setup.path("lake");
    setup.demo_plugins(&crm, &lake);

    let out = setup.run(&sample_events());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "plugboard run failed:\n{stdout}");
    println!("{stdout}");

    let (valid, invalid) = read_sample(&sample_events());
    assert!(
        valid.len() > 500 && invalid.len() >= 5,
        "the sample has {} valid, {} invalid lines",
        valid.len(),
        invalid.len()
    );

    // Newest version per booking, as the CRM and the gauges must see it.
    let latest = common::latest_per_booking(&valid);

    // CRM: every booking, at the state and version of its newest event.
    let crm_objects = crm.all();
    assert_eq!(crm_objects.len(), latest.len());
    for (booking, line) in &latest {
        let props = &crm_objects[*booking]["properties"];
        assert_eq!(
            props["booking_state"],
            line.state.as_str(),
            "booking {booking}"
        );
        assert_eq!(
            props["booking_version"],
            line.version.to_string().as_str(),
            "booking {booking}"
        );
        assert_eq!(
            props["last_event_id"],
            line.event_id.as_str(),
            "booking {booking}"
        );
    }

    // Lake: one row per valid line, at its line number.
    let (files, rows) = read_lake(&lake.join("bookings"));
    let mut got: Vec<(String, i64)> = rows.clone();
    got.sort();
    let mut want: Vec<(String, i64)> = valid
        .iter()
        .map(|l| (l.event_id.clone(), l.number as i64))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // The files are readable by the tools analysts use. scripts/test.sh
    // sets PLUGBOARD_TEST_PYTHON to a Python with DuckDB and pyarrow.
    match std::env::var_os("PLUGBOARD_TEST_PYTHON") {
        Some(python) => {
            let out = std::process::Command::new(python)
                .arg(common::repo().join("scripts/read-lake.py"))
                .arg(&lake)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
            let distinct: BTreeSet<&str> = valid.iter().map(|l| l.event_id.as_str()).collect();
            assert_eq!(seen["duckdb"]["rows"], valid.len());
            assert_eq!(seen["duckdb"]["distinct_event_ids"], distinct.len());
            assert_eq!(seen["pyarrow"]["rows"], valid.len());
        }
        None => common::skip(
            "the DuckDB/pyarrow check",
            "PLUGBOARD_TEST_PYTHON is not set (scripts/test.sh sets it)",
        ),
    }

    // Metrics: gauges from the newest versions, events counted once each.
    let prom = setup.metrics();
    for state in STATES {
        let want = latest.values().filter(|l| l.state == state).count() as f64;
        let got = prom.get(
            "bookings_current",
            &[("state", state), ("plugin", "metrics")],
        );
        assert_eq!(got, Some(want), "bookings_current{{state={state}}}");
        let distinct: BTreeSet<&str> = valid
            .iter()
            .filter(|l| l.state == state)
            .map(|l| l.event_id.as_str())
            .collect();
        let got = prom.get(
            "booking_events_total",
            &[("state", state), ("plugin", "metrics")],
        );
        assert_eq!(
            got.unwrap_or(0.0),
            distinct.len() as f64,
            "booking_events_total{{state={state}}}"
        );
    }
    let revenue: i64 = latest
        .values()
        .filter(|l| ["paid", "upcoming", "finalized"].contains(&l.state.as_str()))
        .filter_map(|l| l.price.as_ref().map(|p| p.1))
        .sum();
    assert_eq!(
        prom.get(
            "bookings_revenue_minor",
            &[("currency", "EUR"), ("plugin", "metrics")]
        ),
        Some(revenue as f64)
    );

    // Dead letters: exactly the malformed lines, each with a reason.
    let dead = setup.dead_letters();
    let dead_lines: Vec<u64> = dead.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(dead_lines, invalid);
    for record in &dead {
        assert_eq!(record["plugin"], "decode");
        assert_eq!(record["class"], "decode");
        assert!(!record["reason"].as_str().unwrap().is_empty());
    }
    let reasons: Vec<&str> = dead.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("`version`")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("`event_id`")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("state")), "{reasons:?}");

    // The same file again: the CRM and the lake do not change at all.
    let out = setup.run(&sample_events());
    assert!(out.status.success());
    assert_eq!(crm.all(), crm_objects, "a replay changed the CRM");
    let (files_again, _) = read_lake(&lake.join("bookings"));
    assert_eq!(
        files_again.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    assert!(
        files_again == files,
        "a replay changed Parquet file contents"
    );
}

#[test]
fn a_trapping_plugin_is_contained_and_its_event_dead_lettered() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 30, 3);
    let lines: Vec<Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let victim = lines[7]["eventId"].as_str().unwrap().to_string();
    setup
        .plugin(
            "faulty",
            "faulty",
            &format!("[limits]\nbatch_size = 10\nmax_attempts = 2\nbackoff_initial_ms = 1\n[config]\ntrap = \"{victim}\"\n"),
        )
        .plugin("metrics", "metrics", "");

    let out = setup.run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dead = setup.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], 8);
    assert_eq!(dead[0]["plugin"], "faulty");
    assert_eq!(dead[0]["class"], "trap");
    assert_eq!(dead[0]["attempts"], 2);
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("trapping on event {victim}"))
    );

    let prom = setup.metrics();
    let total = lines.len() as f64;
    let handled = |p| {
        prom.get(
            "plugboard_events_total",
            &[("plugin", p), ("outcome", "handled")],
        )
    };
    assert_eq!(handled("faulty"), Some(total - 1.0));
    assert_eq!(
        handled("metrics"),
        Some(total),
        "a trap in one plugin must not touch another"
    );
    // Once for the batch, then twice for the event alone (max_attempts = 2).
    assert_eq!(
        prom.get(
            "plugboard_instance_restarts_total",
            &[("plugin", "faulty"), ("reason", "trap")]
        ),
        Some(3.0)
    );
}

#[test]
fn rejects_and_retries_follow_the_plugin_outcome() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 10, 4);
    let ids = common::event_ids(&events);
    setup.plugin(
        "faulty",
        "faulty",
        &format!(
            "[limits]\nmax_attempts = 3\nretry_timeout_ms = 100\nbackoff_initial_ms = 1\nbackoff_max_ms = 5\n[config]\nreject = \"{}\"\nretry = \"{}\"\nretry_once = \"{}\"\n",
            ids[2], ids[4], ids[6]
        ),
    );
    let out = setup.run(&events);
    assert!(out.status.success());
    let dead = setup.dead_letters();
    let summary: Vec<(u64, &str, u64)> = dead
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["class"].as_str().unwrap(),
                r["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    // The event that always asks to retry is held for retry_timeout, then
    // parked alone; the one that asks once is handled.
    assert_eq!(summary.len(), 2, "{summary:?}");
    assert_eq!(summary[0], (3, "rejected", 1));
    assert_eq!((summary[1].0, summary[1].1), (5, "retries-exhausted"));
    assert!(summary[1].2 >= 2, "{summary:?}");
    assert!(
        dead[1]["reason"]
            .as_str()
            .unwrap()
            .contains("retry_timeout"),
        "{}",
        dead[1]["reason"]
    );
    let prom = setup.metrics();
    assert_eq!(
        prom.get(
            "plugboard_events_total",
            &[("plugin", "faulty"), ("outcome", "handled")]
        ),
        Some(ids.len() as f64 - 2.0),
        "the event retried once must end handled"
    );
    assert!(
        prom.get("plugboard_retries_total", &[("plugin", "faulty")])
            .is_some_and(|n| n >= 3.0)
    );
}

/// An HTTP server that answers every request with 503 and counts them.
fn unavailable_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            common::read_request(&mut stream);
            counter.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"status":"error","message":"maintenance","category":"UNAVAILABLE"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, count)
}

#[test]
fn crm_unavailable_is_held_for_retry_timeout_then_dead_lettered_one_by_one() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 2, 5);
    let total = std::fs::read_to_string(&events).unwrap().lines().count();
    let (url, requests) = unavailable_server();
    // A second CRM that is not there at all: connection refused.
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    for (name, target) in [("crm-503", &url), ("crm-down", &nowhere)] {
        setup.plugin(
            name,
            "crm-sync",
            &format!(
                "allow_hosts = [\"{target}\"]\n[limits]\nretry_timeout_ms = 150\nbackoff_initial_ms = 5\nbackoff_max_ms = 20\n[config]\nbase_url = \"{target}\"\n"
            ),
        );
    }
    let out = setup.run(&events);
    assert!(out.status.success());
    let dead = setup.dead_letters();
    for plugin in ["crm-503", "crm-down"] {
        let mine: Vec<&Value> = dead.iter().filter(|r| r["plugin"] == plugin).collect();
        assert_eq!(
            mine.len(),
            total,
            "{plugin}: every event parked, none dropped"
        );
        for r in mine {
            assert_eq!(r["class"], "retries-exhausted");
            assert!(r["attempts"].as_u64().unwrap() >= 2, "{r}");
            let reason = r["reason"].as_str().unwrap();
            if plugin == "crm-503" {
                assert!(
                    reason.contains("HTTP 503") && reason.contains("maintenance"),
                    "{reason}"
                );
            } else {
                assert!(reason.contains("connection refused"), "{reason}");
            }
        }
    }
    // Each event was tried on its own at least twice before it was parked.
    assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= total * 2);
}

#[test]
fn outgoing_http_to_a_host_not_granted_is_denied() {
    let setup = Setup::new();
    let crm = Crm::start(&setup.path("crm.db"));
    let events = common::generated_events(setup.dir.path(), 2, 6);
    // The CRM is up, but the manifest grants another origin only.
    setup.plugin(
        "crm-sync",
        "crm-sync",
        &format!(
            "allow_hosts = [\"http://127.0.0.1:1\"]\n[limits]\nmax_attempts = 1\n[config]\nbase_url = \"{}\"\ntoken = \"{}\"\n",
            crm.url, crm.token
        ),
    );
    let out = setup.run(&events);
    assert!(out.status.success());
    let dead = setup.dead_letters();
    assert!(!dead.is_empty());
    for r in &dead {
        assert!(r["reason"].as_str().unwrap().contains("denied"), "{r}");
    }
    assert!(
        crm.all().is_empty(),
        "nothing may reach a host that was not granted"
    );
    let origin = crm.url.clone();
    assert!(
        setup
            .metrics()
            .get(
                "plugboard_egress_denied_total",
                &[("plugin", "crm-sync"), ("origin", &origin)]
            )
            .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn state_equals_handling_each_settled_event_once_whatever_the_plugin_answers() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 150, 8);
    let ids = common::event_ids(&events);
    // Stops mid-batch with a retry, traps after writing, rejects some events
    // for good; every stop leaves writes and counts of events it did not
    // handle behind, which must not be kept.
    setup.plugin(
        "chaos",
        "faulty",
        "[limits]\nbatch_size = 20\nmax_attempts = 3\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\n[config]\nchaos = \"8\"\n",
    );
    let out = setup.run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let parked: BTreeSet<String> = setup
        .dead_letters()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["event"].as_str().unwrap()).unwrap()["eventId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!parked.is_empty(), "the seed rejects some events");
    let prom = setup.metrics();
    let restarts: f64 = ["trap", "state-dropped"]
        .iter()
        .filter_map(|r| {
            prom.get(
                "plugboard_instance_restarts_total",
                &[("plugin", "chaos"), ("reason", r)],
            )
        })
        .sum();
    assert!(
        restarts >= 10.0,
        "the run should be erratic: {restarts} rebuilds"
    );

    // What the plugin's state says, straight from the host's state file.
    let db = rusqlite::Connection::open(setup.path(".plugboard/state.sqlite")).unwrap();
    let mut stmt = db
        .prepare("SELECT key, value FROM state WHERE plugin = 'chaos' AND bucket = 'chaos'")
        .unwrap();
    let state: BTreeMap<String, u64> = stmt
        .query_map([], |row| {
            let value: Vec<u8> = row.get(1)?;
            Ok((
                row.get(0)?,
                String::from_utf8(value).unwrap().parse().unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let handled = ids.len() - parked.len();
    for id in &ids {
        let seen = state.get(&format!("seen/{id}")).copied().unwrap_or(0);
        let want = u64::from(!parked.contains(id));
        assert_eq!(
            seen, want,
            "event {id}: seen {seen} times in state, want {want}"
        );
    }
    assert_eq!(state.get("total"), Some(&(handled as u64)));
    assert_eq!(
        state.get("drift"),
        None,
        "an instance's memory ran ahead of its store"
    );
    assert_eq!(
        prom.get("chaos_handled_total", &[("plugin", "chaos")]),
        Some(handled as f64),
        "counted once per handled event"
    );
    assert_eq!(
        prom.get(
            "plugboard_events_total",
            &[("plugin", "chaos"), ("outcome", "handled")]
        ),
        Some(handled as f64)
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_same_fields() {
    let setup = Setup::new();
    setup.plugin("metrics", "metrics", "");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "log_format = \"json\"\n");
    std::fs::write(&setup.config, text).unwrap();
    let run = |format: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"));
        command
            .arg("run")
            .arg("--config")
            .arg(&setup.config)
            .arg("--events")
            .arg(sample_events())
            .arg("--dead-letter")
            .arg(setup.path("dead.ndjson"))
            .env("PLUGBOARD_LOG", "info")
            .env_remove("PLUGBOARD_LOG_FORMAT");
        if let Some(format) = format {
            command.env("PLUGBOARD_LOG_FORMAT", format);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let lines: Vec<Value> = run(None)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    // An event's own fields are fields of the object, as in the text.
    let parked: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"].as_str().unwrap().starts_with("dead-lettered"))
        .collect();
    assert!(!parked.is_empty(), "{lines:?}");
    for line in parked {
        assert_eq!(line["level"], "WARN");
        assert!(line["line"].is_u64(), "the input line, a number: {line}");
    }
    // PLUGBOARD_LOG_FORMAT wins over the config; a wrong one is an error.
    let text = run(Some("text"));
    assert!(text.lines().all(|l| !l.starts_with('{')), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("run")
        .arg("--config")
        .arg(&setup.config)
        .arg("--events")
        .arg(sample_events())
        .env("PLUGBOARD_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PLUGBOARD_LOG_FORMAT") && err.contains("text or json"),
        "{err}"
    );
}
