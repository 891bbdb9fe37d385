//! Changing a plugin safely on live traffic, against the real broker and
//! the counting plugin (which counts every delivery, so a lost or repeated
//! event shows): a version that asks for new grants waits for an operator,
//! and a version that fails more than the one it replaced is swapped back
//! by itself, what it parked delivered again to the good version.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Setup;
use common::kafka::*;

const TOKEN: &str = "rollout-s3cret";

/// `plugboard ctl` with the token; exit code, stdout, stderr.
fn ctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    ctl_with(admin, TOKEN, args)
}

fn start(setup: &Setup) -> (Host, String) {
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    if !text.contains("admin_token") {
        text.insert_str(0, "admin_token = \"${TEST_ADMIN_TOKEN}\"\n");
        std::fs::write(&setup.config, &text).unwrap();
    }
    start_on(setup, &setup.config, "metrics.prom")
}

/// A host on `config` with the admin token, metrics written to `metrics`.
fn start_on(setup: &Setup, config: &Path, metrics: &str) -> (Host, String) {
    start_with_token(setup, config, metrics, TOKEN)
}

/// The versions the counting plugin wrote in its delivery lines for `ids`.
fn delivered_by(out: &Path, ids: &[String]) -> std::collections::BTreeSet<String> {
    let mut versions = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if ids.iter().any(|id| id == fields[0]) {
                versions.insert(fields[3].to_string());
            }
        }
    }
    versions
}

#[test]
fn a_version_asking_for_new_grants_waits_for_approval_and_one_asking_for_less_goes_in() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 2, 4, 71);
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = |version: u32, hosts: &str| {
        format!(
            "allow_hosts = [{hosts}]\n[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\nversion = \"{version}\"\n",
            out.display()
        )
    };
    setup.plugin("counting", "counting", &manifest(1, ""));
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "approve");
    let (host, admin) = start(&setup);
    wait_for_zero_lag(&kafka, &["counting"]);

    // Nothing waits yet: approve says so.
    let (code, _, err) = ctl(&admin, &["approve", "counting"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no version of counting waits"), "{err}");

    // Version 2 adds an origin: it waits, and version 1 goes on serving.
    std::fs::write(
        setup.plugins.join("counting.toml"),
        manifest(2, "\"http://127.0.0.1:9\""),
    )
    .unwrap();
    wait_until("version 2 waits for approval", || {
        plugin_status(&admin, "counting")["pending_approval"]["state"] == "pending-approval"
    });
    let status = plugin_status(&admin, "counting");
    assert_eq!(status["reloads"], 0, "{status}");
    assert_eq!(
        status["pending_approval"]["asks"],
        serde_json::json!(["outgoing HTTP to http://127.0.0.1:9"]),
        "{status}"
    );
    let (code, said, _) = ctl(&admin, &["status"]);
    assert_eq!(code, 0);
    eprintln!("{said}");
    assert!(said.contains("pending-approval"), "{said}");
    assert!(
        said.contains("it asks for outgoing HTTP to http://127.0.0.1:9"),
        "{said}"
    );
    let page = reqwest::blocking::get(format!("{admin}/"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("pending-approval"),
        "the status page shows it"
    );
    assert!(
        page.contains("asks for outgoing HTTP to http://127.0.0.1:9"),
        "with what it asks for"
    );
    let second = common::generated_events(setup.dir.path(), 3, 72);
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["counting"]);
    assert_eq!(
        delivered_by(&out, &common::event_ids(&second)),
        ["1".to_string()].into(),
        "version 1 served while version 2 waited"
    );

    // A wrong token approves nothing.
    let refused = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args([
            "ctl", "--admin", &admin, "--token", "wrong", "approve", "counting",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(plugin_status(&admin, "counting")["reloads"], 0);

    let (code, said, err) = ctl(&admin, &["approve", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    eprintln!("{said}");
    assert!(
        said.contains("approved, granted outgoing HTTP to http://127.0.0.1:9"),
        "{said}"
    );
    assert!(said.contains("serves on this host now"), "{said}");
    let status = plugin_status(&admin, "counting");
    assert_eq!(status["reloads"], 1, "{status}");
    assert!(status["pending_approval"].is_null(), "{status}");
    let third = common::generated_events(setup.dir.path(), 3, 73);
    produce(&brokers, &topic, &third);
    wait_for_zero_lag(&kafka, &["counting"]);
    assert_eq!(
        delivered_by(&out, &common::event_ids(&third)),
        ["2".to_string()].into()
    );

    // Version 3 drops the origin: less is never held.
    std::fs::write(setup.plugins.join("counting.toml"), manifest(3, "")).unwrap();
    wait_until("version 3 serves at once", || {
        plugin_status(&admin, "counting")["reloads"] == 2
    });
    assert!(plugin_status(&admin, "counting")["pending_approval"].is_null());
    let data = setup.path(".plugboard");
    for id in common::event_ids(&first)
        .iter()
        .chain(&common::event_ids(&second))
        .chain(&common::event_ids(&third))
    {
        assert_eq!(counted(&data, &topic, id), 1, "{id}");
    }
    host.stop();

    // Files changed while the host was down: a restart does not skip the
    // approval. The version that served before it serves meanwhile.
    std::fs::write(
        setup.plugins.join("counting.toml"),
        manifest(4, "\"http://127.0.0.1:10\""),
    )
    .unwrap();
    let (host, admin) = start(&setup);
    wait_until("version 4 waits for approval", || {
        plugin_status(&admin, "counting")["pending_approval"]["state"] == "pending-approval"
    });
    assert_eq!(
        plugin_status(&admin, "counting")["pending_approval"]["asks"],
        serde_json::json!(["outgoing HTTP to http://127.0.0.1:10"])
    );
    let fourth = common::generated_events(setup.dir.path(), 3, 74);
    produce(&brokers, &topic, &fourth);
    wait_for_zero_lag(&kafka, &["counting"]);
    assert_eq!(
        delivered_by(&out, &common::event_ids(&fourth)),
        ["3".to_string()].into(),
        "the version from before the restart served"
    );
    let (code, said, err) = ctl(&admin, &["approve", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    let fifth = common::generated_events(setup.dir.path(), 3, 75);
    produce(&brokers, &topic, &fifth);
    wait_for_zero_lag(&kafka, &["counting"]);
    assert_eq!(
        delivered_by(&out, &common::event_ids(&fifth)),
        ["4".to_string()].into()
    );
    host.stop();
}

#[test]
fn a_version_that_rejects_more_is_rolled_back_and_what_it_parked_is_delivered_again() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 3, 12, 81);
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let second = common::generated_events(setup.dir.path(), 12, 82);
    let second_ids = common::event_ids(&second);
    // Version 2 rejects every third event of the second batch and traps
    // on every third but one.
    let rejects: Vec<String> = second_ids.iter().step_by(3).cloned().collect();
    let traps: Vec<String> = second_ids.iter().skip(1).step_by(3).cloned().collect();
    let manifest = |version: u32, reject: &str, trap: &str| {
        format!(
            "[folder]\npath = \"{}\"\n[limits]\nmax_attempts = 2\nbackoff_initial_ms = 20\n[config]\ndir = \"/data\"\nversion = \"{version}\"\nreject = \"{reject}\"\ntrap = \"{trap}\"\n",
            out.display()
        )
    };
    setup.plugin("counting", "counting", &manifest(1, "", ""));
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "rollback");
    append_config(
        &setup,
        "\n[reload]\nrollback_window_events = 500\nrollback_min_failures = 5\n",
    );
    let (host, admin) = start(&setup);
    wait_for_zero_lag(&kafka, &["counting"]);

    std::fs::write(
        setup.plugins.join("counting.toml"),
        manifest(2, &rejects.join(","), &traps.join(",")),
    )
    .unwrap();
    wait_until("version 2 serves", || {
        plugin_status(&admin, "counting")["reloads"] == 1
    });
    let bad = plugin_status(&admin, "counting")["versions"][1]["sha256"].clone();
    produce(&brokers, &topic, &second);
    wait_until("version 2 is rolled back", || {
        plugin_status(&admin, "counting")["rollbacks"] == 1
    });
    let status = plugin_status(&admin, "counting");
    let reason = status["rollback"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("the previous version 0.0%"), "{status}");
    assert_ne!(status["rollback"]["from"], status["rollback"]["to"]);
    assert_eq!(status["versions"][1]["sha256"], bad);
    wait_for_zero_lag(&kafka, &["counting"]);
    wait_until("the rollback's redrive is done", || {
        let r = &plugin_status(&admin, "counting")["redrive"];
        r["state"] == "done" && r["version"] == status["rollback"]["from"]
    });

    // Every event counted exactly once; what version 2 parked was handled
    // by version 1.
    let data = setup.path(".plugboard");
    for id in common::event_ids(&first).iter().chain(&second_ids) {
        assert_eq!(counted(&data, &topic, id), 1, "{id}");
    }
    let redrive = plugin_status(&admin, "counting")["redrive"].clone();
    let parked = redrive["read"].as_u64().unwrap();
    assert!(parked >= 5, "{redrive}");
    assert_eq!(redrive["handled"].as_u64(), Some(parked), "{redrive}");

    // Each of its dead letters is marked superseded, so a later redrive
    // skips them all.
    let dlq = format!("{topic}.dlq.counting");
    let letters = read_topic(&brokers, &dlq, 2 * parked as usize);
    assert_eq!(letters.len(), 2 * parked as usize, "{letters:?}");
    let markers: Vec<_> = letters
        .iter()
        .filter(|l| l.contains_key("plugboard.superseded"))
        .collect();
    assert_eq!(markers.len(), parked as usize, "{letters:?}");
    assert!(markers[0]["plugboard.superseded"].contains("rolled back"));
    let classes: std::collections::BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| l.get("plugboard.failure-class").map(String::as_str))
        .collect();
    assert!(classes.contains("rejected"), "{classes:?}");
    let (code, said, err) = ctl(&admin, &["redrive", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains("read 0"), "{said}");
    assert!(said.contains(&format!("skipped {parked}")), "{said}");

    // The rolled-back files are not loaded again until they change.
    std::thread::sleep(Duration::from_secs(2));
    let status = plugin_status(&admin, "counting");
    assert_eq!(status["reloads"], 1, "{status}");
    let metrics = reqwest::blocking::get(format!("{admin}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("plugboard_rollbacks_total{plugin=\"counting\"} 1"),
        "{metrics}"
    );
    host.stop();

    // After a restart the folder's version is still refused: the version
    // kept in the data folder serves.
    let (host, admin) = start(&setup);
    wait_until("the kept version serves", || {
        plugin_status(&admin, "counting")["state"] == "running"
    });
    let status = plugin_status(&admin, "counting");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{status}"
    );
    let third = common::generated_events(setup.dir.path(), 4, 83);
    produce(&brokers, &topic, &third);
    wait_for_zero_lag(&kafka, &["counting"]);
    let third_ids = common::event_ids(&third);
    assert_eq!(delivered_by(&out, &third_ids), ["1".to_string()].into());
    for id in &third_ids {
        assert_eq!(counted(&data, &topic, id), 1, "{id}");
    }
    host.stop();
}

#[test]
fn a_shadow_that_changes_one_field_shows_it_per_event_sends_nothing_and_is_promoted() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _first) = stream(&brokers, 2, 5, 91);
    let crm = common::Crm::start(&setup.path("crm.sqlite"));
    let lake = setup.path("lake");
    setup.demo_plugins(&crm, &lake);
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "shadow");
    let (host, admin) = start(&setup);
    wait_for_zero_lag(&kafka, &["crm-sync"]);

    // The candidate: the same component, prices as decimals.
    std::fs::copy(
        setup.plugins.join("crm-sync.wasm"),
        setup.plugins.join("crm-sync.shadow.wasm"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(setup.plugins.join("crm-sync.toml")).unwrap();
    std::fs::write(
        setup.plugins.join("crm-sync.shadow.toml"),
        format!("{manifest}price_format = \"decimal\"\n"),
    )
    .unwrap();
    wait_until("the shadow runs", || {
        plugin_status(&admin, "crm-sync")["shadow"]["version"].is_string()
    });
    let second = common::generated_events(setup.dir.path(), 6, 92);
    let second_ids = common::event_ids(&second);
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["crm-sync"]);
    let report: serde_json::Value =
        reqwest::blocking::get(format!("{admin}/plugins/crm-sync/shadow"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(report["compared"], second_ids.len(), "{report:#}");
    assert_eq!(report["differences_by_kind"]["outcome"], 0, "{report:#}");
    assert_eq!(report["differences_by_kind"]["metrics"], 0, "{report:#}");
    let differences = report["differences"].as_array().unwrap();
    assert!(!differences.is_empty(), "{report:#}");
    for d in differences {
        let what = d["what"].as_str().unwrap();
        assert!(what.ends_with(".properties.price_amount_minor"), "{d}");
        assert!(what.starts_with("POST "), "{d}");
        let serving: String = serde_json::from_str(d["serving"].as_str().unwrap()).unwrap();
        let shadow: String = serde_json::from_str(d["shadow"].as_str().unwrap()).unwrap();
        let minor: i64 = serving.parse().unwrap();
        assert_eq!(shadow, format!("{}.{:02}", minor / 100, minor % 100), "{d}");
        assert!(second_ids.contains(&d["event"]["event_id"].as_str().unwrap().to_string()));
    }
    // Each differing event is about the booking whose field differs.
    let crm_now = crm.all();
    for d in differences {
        let booking = d["event"]["booking_id"].as_str().unwrap();
        let held = &crm_now[booking]["properties"]["price_amount_minor"];
        let serving: String = serde_json::from_str(d["serving"].as_str().unwrap()).unwrap();
        assert_eq!(held, &serde_json::Value::String(serving), "{d}");
    }
    // Nothing the shadow did reached the CRM, the offsets or the
    // dead-letter topic.
    for (id, record) in &crm_now {
        let price = record["properties"]["price_amount_minor"].as_str().unwrap();
        assert!(!price.contains('.'), "{id}: the shadow's request was sent");
    }
    let status = plugin_status(&admin, "crm-sync");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    // The same events again: the CRM holds them, so the serving version
    // writes nothing; the shadow, answered what the serving version was
    // answered, writes nothing either, and agrees.
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["crm-sync"]);
    let again: serde_json::Value =
        reqwest::blocking::get(format!("{admin}/plugins/crm-sync/shadow"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(again["compared"], 2 * second_ids.len(), "{again:#}");
    assert_eq!(
        again["agreed"].as_u64().unwrap(),
        report["agreed"].as_u64().unwrap() + second_ids.len() as u64,
        "{again:#}"
    );
    assert_eq!(
        again["differences_by_kind"], report["differences_by_kind"],
        "{again:#}"
    );
    let (code, said, err) = ctl(&admin, &["shadow", "crm-sync"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("{said}");
    assert!(
        said.contains(&format!("compared {} events", 2 * second_ids.len())),
        "{said}"
    );
    assert!(said.contains("price_amount_minor"), "{said}");

    // Promoted: it serves, its files took the serving ones' place.
    let (code, said, err) = ctl(&admin, &["promote", "crm-sync"]);
    assert_eq!(code, 0, "{said}{err}");
    eprintln!("{said}");
    assert!(said.contains("serves on this host now"), "{said}");
    assert!(!setup.plugins.join("crm-sync.shadow.wasm").exists());
    let status = plugin_status(&admin, "crm-sync");
    assert!(status["shadow"].is_null(), "{status}");
    let third = common::generated_events(setup.dir.path(), 3, 93);
    produce(&brokers, &topic, &third);
    wait_for_zero_lag(&kafka, &["crm-sync"]);
    let crm_now = crm.all();
    let third_bookings: std::collections::BTreeSet<String> = std::fs::read_to_string(&third)
        .unwrap()
        .lines()
        .map(|l| plugboard::decode::from_json(l).unwrap().booking_id)
        .collect();
    for booking in &third_bookings {
        let price = crm_now[booking]["properties"]["price_amount_minor"]
            .as_str()
            .unwrap();
        assert!(
            price.contains('.'),
            "{booking}: {price} after the promotion"
        );
    }
    host.stop();
}

#[test]
fn a_crm_sync_version_the_crm_refuses_is_rolled_back_and_the_crm_equals_a_clean_run() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 3, 6, 101);
    let crm = common::Crm::start(&setup.path("crm.sqlite"));
    setup.plugin("crm-sync", "crm-sync", &crm.manifest());
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "crm-rollback");
    let (host, admin) = start(&setup);
    wait_for_zero_lag(&kafka, &["crm-sync"]);

    // Version 2 sends a token the CRM refuses: every event rejected.
    let manifest = setup.plugins.join("crm-sync.toml");
    let good = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, good.replace(&crm.token, "expired-token")).unwrap();
    wait_until("version 2 serves", || {
        plugin_status(&admin, "crm-sync")["reloads"] == 1
    });
    let second = common::generated_events(setup.dir.path(), 12, 102);
    produce(&brokers, &topic, &second);
    wait_until("version 2 is rolled back", || {
        plugin_status(&admin, "crm-sync")["rollbacks"] == 1
    });
    wait_for_zero_lag(&kafka, &["crm-sync"]);
    wait_until("the rollback's redrive is done", || {
        plugin_status(&admin, "crm-sync")["redrive"]["state"] == "done"
    });
    let (code, said, _) = ctl(&admin, &["status"]);
    assert_eq!(code, 0);
    assert!(said.contains("rolled back"), "{said}");
    eprintln!("{said}");

    // The CRM holds the latest version of every booking, as a run
    // without version 2 would have left it.
    let mut latest = std::collections::BTreeMap::<String, (u64, String)>::new();
    for file in [&first, &second] {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let e = plugboard::decode::from_json(line).unwrap();
            let slot = latest.entry(e.booking_id.clone()).or_default();
            if e.version > slot.0 {
                *slot = (e.version, e.event_id.clone());
            }
        }
    }
    let held = crm.all();
    assert_eq!(held.len(), latest.len());
    for (booking, (version, event)) in &latest {
        let p = &held[booking]["properties"];
        assert_eq!(p["booking_version"], version.to_string(), "{booking}");
        assert_eq!(p["last_event_id"], *event, "{booking}");
    }
    host.stop();
}

#[test]
fn a_shadow_keeps_to_its_scratch_folder_and_own_state_and_its_rejects_are_only_shown() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _first) = stream(&brokers, 2, 3, 111);
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = |version: &str, reject: &str| {
        format!(
            "[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\nversion = \"{version}\"\nreject = \"{reject}\"\n",
            out.display()
        )
    };
    setup.plugin("counting", "counting", &manifest("1", ""));
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "shadow-state");
    let (host, admin) = start(&setup);
    wait_for_zero_lag(&kafka, &["counting"]);

    let second = common::generated_events(setup.dir.path(), 4, 112);
    let second_ids = common::event_ids(&second);
    let rejected = [second_ids[0].clone(), second_ids[5].clone()];
    std::fs::copy(
        setup.plugins.join("counting.wasm"),
        setup.plugins.join("counting.shadow.wasm"),
    )
    .unwrap();
    std::fs::write(
        setup.plugins.join("counting.shadow.toml"),
        manifest("shadow", &rejected.join(",")),
    )
    .unwrap();
    wait_until("the shadow runs", || {
        plugin_status(&admin, "counting")["shadow"]["version"].is_string()
    });
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["counting"]);
    let report: serde_json::Value =
        reqwest::blocking::get(format!("{admin}/plugins/counting/shadow"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(report["compared"], second_ids.len(), "{report:#}");
    assert_eq!(report["differences_by_kind"]["outcome"], 2, "{report:#}");
    let outcomes: Vec<&serde_json::Value> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "outcome")
        .collect();
    for (d, id) in outcomes.iter().zip(&rejected) {
        assert_eq!(d["event"]["event_id"], *id, "{d}");
        assert_eq!(d["serving"], "ok");
        assert_eq!(d["shadow"], format!("reject: counting rejects {id}"));
    }
    // Its rejects parked nothing, and the serving version counted all.
    let status = plugin_status(&admin, "counting");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    let data = setup.path(".plugboard");
    for id in &second_ids {
        assert_eq!(counted(&data, &topic, id), 1, "{id}");
    }
    // Its writes went to its scratch copy, its counts to its own state.
    assert_eq!(delivered_by(&out, &second_ids), ["1".to_string()].into());
    let scratch = data.join("shadow").join("counting");
    assert_eq!(
        delivered_by(&scratch, &second_ids),
        ["shadow".to_string()].into()
    );
    let db = rusqlite::Connection::open(data.join("state.sqlite")).unwrap();
    let shadow_total: Vec<u8> = db
        .query_row(
            "SELECT value FROM state WHERE plugin = 'counting.shadow' AND key = 'total'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8(shadow_total).unwrap(),
        (second_ids.len() - rejected.len()).to_string()
    );
    // The delivery logs differ (the version names differ); nothing else.
    let differing = report["files"]["differing"].as_array().unwrap();
    assert!(!differing.is_empty(), "{report:#}");
    for file in differing {
        assert!(
            file.as_str().unwrap().starts_with("deliveries-p"),
            "{report:#}"
        );
    }
    assert_eq!(report["files"]["serving_only"], serde_json::json!([]));
    assert_eq!(report["files"]["shadow_only"], serde_json::json!([]));

    // Removing its file ends it.
    std::fs::remove_file(setup.plugins.join("counting.shadow.wasm")).unwrap();
    wait_until("the shadow ends", || {
        plugin_status(&admin, "counting")["shadow"].is_null()
    });
    host.stop();
}

#[test]
fn an_approval_asked_of_one_host_lets_the_version_live_on_every_host_that_holds_it() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _first) = stream(&brokers, 4, 4, 121);
    setup.plugin("counting", "counting", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "approve-two");
    let (a, a_admin) = start(&setup);
    // Host b: the same folder, its own data folder.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let config_b = setup.path("plugboard-b.toml");
    std::fs::write(&config_b, format!("data_dir = \"b-data\"\n{text}")).unwrap();
    let (b, b_admin) = start_on(&setup, &config_b, "b.prom");
    wait_for_zero_lag(&kafka, &["counting"]);

    std::fs::write(
        setup.plugins.join("counting.toml"),
        "allow_hosts = [\"http://127.0.0.1:9\"]\n",
    )
    .unwrap();
    for admin in [&a_admin, &b_admin] {
        wait_until("the new version waits on both hosts", || {
            plugin_status(admin, "counting")["pending_approval"]["state"] == "pending-approval"
        });
    }
    let (code, said, err) = ctl(&a_admin, &["approve", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    wait_until("host b swaps it in too", || {
        let status = plugin_status(&b_admin, "counting");
        status["reloads"] == 1 && status["pending_approval"].is_null()
    });
    b.stop();
    a.stop();
}
