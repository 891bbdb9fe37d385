//! Schema evolution on live traffic, against the real broker and the real
//! schema registry (Apicurio's Confluent-compatible API, which
//! scripts/registry.sh starts): a producer that moves to a newer
//! compatible schema keeps flowing, one the contract cannot read parks its
//! events as `schema`, a registry outage holds what needs it and heals,
//! and a descriptor set dropped in changes the schema live.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::kafka::*;
use common::{OwnRegistry, Setup, register, registry, schema_fixture};
use serde_json::Value;

/// `plugboard produce` of `events` to `topic` with `args` (the schema,
/// the registry or the id); every line must be an event.
fn produce_events(brokers: &str, topic: &str, events: &Path, args: &[&str]) {
    let said = produce_with(brokers, topic, events, args);
    assert!(
        !said.contains("raw bytes"),
        "every line is an event: {said}"
    );
}

/// Generated lifecycles as a v2 producer writes them: the vehicle gone,
/// a loyalty tier and a customer segment set, and `edit` applied.
fn v2_events(
    dir: &Path,
    name: &str,
    bookings: usize,
    seed: u64,
    edit: impl Fn(&mut Value),
) -> PathBuf {
    let v1 = common::generated_events(dir, bookings, seed);
    let lines: Vec<String> = std::fs::read_to_string(v1)
        .unwrap()
        .lines()
        .map(|line| {
            let mut event: Value = serde_json::from_str(line).unwrap();
            let map = event.as_object_mut().unwrap();
            map.remove("vehicle");
            map.insert("loyaltyTier".into(), "GOLD".into());
            if let Some(customer) = map.get_mut("customer") {
                customer["segment"] = "fleet".into();
            }
            edit(&mut event);
            event.to_string()
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn all_counted_once(data_dir: &Path, topic: &str, events: &[&Path]) {
    for file in events {
        for id in common::event_ids(file) {
            assert_eq!(
                counted(data_dir, topic, &id),
                1,
                "event {id} of {}",
                file.display()
            );
        }
    }
}

fn schema_table(setup: &Setup, lines: &str) {
    append_config(setup, &format!("\n[schema]\n{lines}\n"));
}

#[test]
fn a_compatible_writer_schema_flows_and_an_incompatible_one_parks_as_schema() {
    let Some(brokers) = brokers() else { return };
    let Some(registry) = registry() else { return };
    let topic = create_topic(&brokers, 2);
    let setup = Setup::new();
    let subject = format!("{topic}-value");
    let dir = setup.dir.path();
    setup.plugin("counting", "counting", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "schema");
    schema_table(&setup, &format!("registry = \"{registry}\""));

    // v1, as the project's schema registered by the producer.
    let v1 = common::generated_events(dir, 6, 201);
    produce_events(
        &brokers,
        &topic,
        &v1,
        &["--registry", &registry, "--subject", &subject],
    );
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    wait_for_zero_lag(&kafka, &["counting"]);

    // The producer moves to v2 mid-stream, then to an incompatible v3,
    // then back to v2.
    let v2 = v2_events(dir, "v2.ndjson", 5, 202, |_| {});
    let v3 = common::generated_events(dir, 2, 203);
    let v2_after = v2_events(dir, "v2-after.ndjson", 4, 204, |_| {});
    let v2_proto = schema_fixture("booking_v2.proto");
    let v3_proto = schema_fixture("booking_v3.proto");
    let v2_args = [
        "--registry",
        &registry,
        "--subject",
        &subject,
        "--schema",
        v2_proto.to_str().unwrap(),
    ];
    produce_events(&brokers, &topic, &v2, &v2_args);
    produce_events(
        &brokers,
        &topic,
        &v3,
        &[
            "--registry",
            &registry,
            "--subject",
            &subject,
            "--schema",
            v3_proto.to_str().unwrap(),
        ],
    );
    produce_events(&brokers, &topic, &v2_after, &v2_args);
    wait_for_zero_lag(&kafka, &["counting"]);

    let v1_id = register(
        &registry,
        &subject,
        &common::repo().join("proto/booking/v1/booking.proto"),
    );
    let v2_id = register(&registry, &subject, &v2_proto);
    let v3_id = register(&registry, &subject, &v3_proto);
    let data = setup.dir.path().join(".plugboard");
    all_counted_once(&data, &topic, &[&v1, &v2, &v2_after]);
    let v3_ids = common::event_ids(&v3);
    for id in &v3_ids {
        assert_eq!(
            counted(&data, &topic, id),
            0,
            "{id} of v3 never reaches the plugin"
        );
    }
    let parked = read_topic(&brokers, &format!("{topic}.dlq.counting"), v3_ids.len());
    assert_eq!(parked.len(), v3_ids.len(), "{parked:?}");
    for record in &parked {
        assert_eq!(record["plugboard.failure-class"], "schema", "{record:?}");
        let reason = &record["plugboard.reason"];
        assert!(
            reason.contains(&format!("schema {v3_id} ")) && reason.contains("`price.amount_minor`"),
            "the reason names the schema and the field: {reason}"
        );
    }

    // Seen from outside: events per writer schema, and the ids in /plugins.
    let status = plugin_status(&admin, "counting");
    host.stop();
    let metrics = common::Prom(std::fs::read_to_string(setup.path("metrics.prom")).unwrap());
    let by_schema = |id: u32| {
        metrics
            .get(
                "plugboard_events_by_schema_total",
                &[
                    ("plugin", "counting"),
                    ("topic", &topic),
                    ("schema_id", &id.to_string()),
                ],
            )
            .unwrap_or(0.0) as usize
    };
    assert_eq!(by_schema(v1_id), common::event_ids(&v1).len());
    assert_eq!(
        by_schema(v2_id),
        common::event_ids(&v2).len() + common::event_ids(&v2_after).len()
    );
    assert_eq!(
        by_schema(v3_id),
        0,
        "parked events are not counted as settled by a schema"
    );
    let schemas = &status["schemas"];
    assert_eq!(
        schemas[v1_id.to_string()],
        common::event_ids(&v1).len(),
        "{status}"
    );
    assert!(schemas.get(v2_id.to_string()).is_some(), "{status}");
    let _: BTreeMap<String, Value> = serde_json::from_value(schemas.clone()).unwrap();
}

#[test]
fn a_registry_outage_holds_only_what_needs_it_and_heals() {
    let Some(brokers) = brokers() else { return };
    if registry().is_none() {
        return;
    }
    let setup = Setup::new();
    let dir = setup.dir.path();
    // A registry of the test's own, to stop and start again.
    let own = OwnRegistry::start(dir);
    let topic = create_topic(&brokers, 1);
    let subject = format!("{topic}-value");
    let v1_id = register(
        &own.url,
        &subject,
        &common::repo().join("proto/booking/v1/booking.proto"),
    );
    setup.plugin("counting", "counting", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "outage");
    schema_table(
        &setup,
        &format!("registry = \"{}\"\ntimeout_ms = 1000", own.url),
    );
    let v1_arg = v1_id.to_string();

    // Warm-up: the host keeps the subject's latest schema at start, and
    // has read v1 once.
    let warm = common::generated_events(dir, 3, 301);
    produce_events(&brokers, &topic, &warm, &["--schema-id", &v1_arg]);
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    wait_for_zero_lag(&kafka, &["counting"]);
    let kept: Vec<_> = std::fs::read_dir(dir.join(".plugboard/schemas"))
        .unwrap()
        .flat_map(|registry| std::fs::read_dir(registry.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, [format!("{v1_id}.json")]);

    // The booking service registers v2 while the host runs.
    let v2_id = register(&own.url, &subject, &schema_fixture("booking_v2.proto"));
    assert_ne!(v1_id, v2_id);
    let v2_arg = v2_id.to_string();
    let v2_proto = schema_fixture("booking_v2.proto");
    let v2_args = [
        "--schema",
        v2_proto.to_str().unwrap(),
        "--schema-id",
        &v2_arg,
    ];

    // Registry down after warm-up: v1 events flow as before.
    own.stop();
    let after_warm_up = common::generated_events(dir, 3, 302);
    produce_events(&brokers, &topic, &after_warm_up, &["--schema-id", &v1_arg]);
    wait_for_zero_lag(&kafka, &["counting"]);
    let data = dir.join(".plugboard");
    all_counted_once(&data, &topic, &[&warm, &after_warm_up]);

    // The first event of v2 while it is down: the partition holds as the
    // host's failure, and what follows waits behind it.
    let v2 = v2_events(dir, "v2.ndjson", 2, 303, |_| {});
    let behind = common::generated_events(dir, 2, 304);
    produce_events(&brokers, &topic, &v2, &v2_args);
    produce_events(&brokers, &topic, &behind, &["--schema-id", &v1_arg]);
    wait_until("the partition holds for the registry", || {
        let status = plugin_status(&admin, "counting");
        status["waiting"].as_array().is_some_and(|w| {
            w.iter().any(|h| {
                h["cause"] == "host"
                    && h["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(&format!("schema id {v2_id}")))
            })
        })
    });
    let ready = reqwest::blocking::get(format!("{admin}/readyz")).unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().unwrap();
    assert!(
        why.contains(&format!("schema id {v2_id}")) && why.contains("registry"),
        "{why}"
    );
    for id in common::event_ids(&v2)
        .iter()
        .chain(&common::event_ids(&behind))
    {
        assert_eq!(counted(&data, &topic, id), 0, "{id} waits");
    }

    // The registry is back: it heals by itself, nothing parked.
    own.restart();
    wait_for_zero_lag(&kafka, &["counting"]);
    all_counted_once(&data, &topic, &[&warm, &after_warm_up, &v2, &behind]);
    assert!(
        plugin_status(&admin, "counting")["waiting"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(plugin_status(&admin, "counting")["dead_lettered"], 0);

    // Both schemas are on disk now: a host restarted while the registry
    // is down reads them.
    host.stop();
    own.stop();
    let later_v1 = common::generated_events(dir, 2, 305);
    let later_v2 = v2_events(dir, "later-v2.ndjson", 2, 306, |_| {});
    produce_events(&brokers, &topic, &later_v1, &["--schema-id", &v1_arg]);
    produce_events(&brokers, &topic, &later_v2, &v2_args);
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    wait_for_zero_lag(&kafka, &["counting"]);
    all_counted_once(&data, &topic, &[&later_v1, &later_v2]);
    assert_eq!(plugin_status(&admin, "counting")["dead_lettered"], 0);
    host.stop();
}

#[test]
fn a_descriptor_set_dropped_in_changes_the_schema_live() {
    let Some(brokers) = brokers() else { return };
    let topic = create_topic(&brokers, 1);
    let setup = Setup::new();
    let dir = setup.dir.path();
    setup.plugin("counting", "counting", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "descriptor");
    let schema_dir = dir.join("schema");
    std::fs::create_dir_all(&schema_dir).unwrap();
    let set = schema_dir.join("booking.desc");
    schema_table(&setup, &format!("descriptor_set = \"{}\"", set.display()));

    // No file yet: the compiled schema.
    let before = common::generated_events(dir, 3, 401);
    produce_events(&brokers, &topic, &before, &[]);
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    wait_for_zero_lag(&kafka, &["counting"]);

    // v2 as a FileDescriptorSet, dropped in while the host runs.
    let v2_set =
        protox::compile([schema_fixture("booking_v2.proto")], [schema_fixture("")]).unwrap();
    let bytes = prost::Message::encode_to_vec(&v2_set);
    let tmp = schema_dir.join(".booking.desc.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &set).unwrap();
    let v2_proto = schema_fixture("booking_v2.proto");
    let v2_args = ["--schema", v2_proto.to_str().unwrap()];
    let mut probes = Vec::new();
    wait_until("the host reads with the descriptor set", || {
        let probe = v2_events(
            dir,
            &format!("probe-{}.ndjson", probes.len()),
            1,
            1000 + probes.len() as u64,
            |_| {},
        );
        produce_events(&brokers, &topic, &probe, &v2_args);
        probes.push(probe);
        wait_for_zero_lag(&kafka, &["counting"]);
        let schemas = plugin_status(&admin, "counting")["schemas"].clone();
        schemas
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("file:"))
    });
    let status = plugin_status(&admin, "counting");
    let compiled = status["schemas"]["compiled"].as_u64().unwrap() as usize;
    assert!(compiled >= common::event_ids(&before).len(), "{status}");
    assert_eq!(status["dead_lettered"], 0, "{status}");

    // The state v2 added now reaches the plugin.
    let no_show = v2_events(dir, "no-show.ndjson", 3, 403, |_| {});
    assert!(!with_no_shows(&no_show).is_empty());
    produce_events(&brokers, &topic, &no_show, &v2_args);
    wait_for_zero_lag(&kafka, &["counting"]);
    all_counted_once(&dir.join(".plugboard"), &topic, &[&no_show]);
    assert_eq!(plugin_status(&admin, "counting")["dead_lettered"], 0);

    // A broken file keeps the schema before it.
    std::fs::write(&set, b"not a descriptor set").unwrap();
    let after = v2_events(dir, "after.ndjson", 2, 402, |_| {});
    produce_events(&brokers, &topic, &after, &v2_args);
    wait_for_zero_lag(&kafka, &["counting"]);
    let mut all: Vec<&Path> = vec![&before, &after];
    all.extend(probes.iter().map(PathBuf::as_path));
    all_counted_once(&dir.join(".plugboard"), &topic, &all);
    let status = plugin_status(&admin, "counting");
    assert!(
        status["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k == "compiled" || k.starts_with("file:"))
    );
    assert_eq!(status["dead_lettered"], 0, "{status}");
    host.stop();
}

/// Adds, after each v2 booking's `upcoming` event, one in the state v2
/// added (`BOOKING_STATE_NO_SHOW`): the bookings that end so.
fn with_no_shows(events: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(events).unwrap();
    let mut out = Vec::new();
    let mut no_shows = Vec::new();
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        out.push(line.to_string());
        if event["state"] == "BOOKING_STATE_UPCOMING" {
            let mut next = event.clone();
            let version: u64 = event["version"].as_str().unwrap().parse().unwrap();
            next["version"] = (version + 1).to_string().into();
            next["eventId"] = format!("{}-no-show", event["eventId"].as_str().unwrap()).into();
            next["state"] = "BOOKING_STATE_NO_SHOW".into();
            next["channel"] = "CHANNEL_PHONE".into();
            no_shows.push(event["bookingId"].as_str().unwrap().to_string());
            out.push(next.to_string());
        }
    }
    std::fs::write(events, out.join("\n") + "\n").unwrap();
    no_shows
}

#[test]
fn a_new_state_and_new_fields_reach_every_demo_plugin_without_a_redeploy() {
    let Some(brokers) = brokers() else { return };
    let Some(registry) = registry() else { return };
    let Some(python) = std::env::var_os("PLUGBOARD_TEST_PYTHON") else {
        common::skip(
            "the lake query",
            "PLUGBOARD_TEST_PYTHON is not set (scripts/test.sh sets it)",
        );
        return;
    };
    let topic = create_topic(&brokers, 2);
    let setup = Setup::new();
    let dir = setup.dir.path();
    let subject = format!("{topic}-value");
    let crm = common::Crm::start(&dir.join("crm.sqlite"));
    let lake = dir.join("lake");
    setup.demo_plugins(&crm, &lake);
    // crm-sync and data-lake ask for the fields the contract lacks.
    std::fs::write(
        setup.plugins.join("crm-sync.toml"),
        format!(
            "extensions = true\n{}extra_properties = {{ loyalty_tier = \"loyalty_tier\", \"customer.segment\" = \"customer_segment\" }}\n",
            crm.manifest()
        ),
    )
    .unwrap();
    std::fs::write(
        setup.plugins.join("data-lake.toml"),
        format!(
            "extensions = true\n[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\n",
            lake.display()
        ),
    )
    .unwrap();
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "evolve");
    schema_table(&setup, &format!("registry = \"{registry}\""));
    let registered = ["--registry", &registry, "--subject", &subject];

    let before = common::generated_events(dir, 8, 501);
    produce_events(&brokers, &topic, &before, &registered);
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    let plugins = ["crm-sync", "data-lake", "metrics"];
    wait_for_zero_lag(&kafka, &plugins);

    // The booking service moves to v2 mid-stream, then a v1 producer
    // writes again.
    let v2 = v2_events(dir, "v2.ndjson", 8, 502, |_| {});
    let no_shows = with_no_shows(&v2);
    assert!(!no_shows.is_empty(), "some v2 bookings end as no-shows");
    let v2_proto = schema_fixture("booking_v2.proto");
    let mut v2_args = registered.to_vec();
    v2_args.extend(["--schema", v2_proto.to_str().unwrap()]);
    produce_events(&brokers, &topic, &v2, &v2_args);
    let after = common::generated_events(dir, 6, 503);
    produce_events(&brokers, &topic, &after, &registered);
    wait_for_zero_lag(&kafka, &plugins);

    for plugin in plugins {
        assert_eq!(
            plugin_status(&admin, plugin)["dead_lettered"],
            0,
            "{plugin} parked nothing"
        );
    }
    let v2_id = register(&registry, &subject, &v2_proto).to_string();
    assert!(
        plugin_status(&admin, "metrics")["schemas"][&v2_id]
            .as_u64()
            .unwrap()
            > 0
    );
    host.stop();

    // Metrics: the new state has its own gauge.
    let prom = setup.metrics();
    assert_eq!(
        prom.get(
            "bookings_current",
            &[("state", "no-show"), ("plugin", "metrics")]
        ),
        Some(no_shows.len() as f64),
        "{}",
        prom.0
    );

    // CRM: v2 bookings carry the new state and properties; v1 ones are as
    // a v1 run leaves them.
    let records = crm.all();
    let v2_ids: std::collections::BTreeSet<String> = std::fs::read_to_string(&v2)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["bookingId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &v2_ids {
        let props = &records[id]["properties"];
        assert_eq!(props["loyalty_tier"], "GOLD", "{id}: {props}");
        assert_eq!(props["customer_segment"], "fleet", "{id}: {props}");
        if no_shows.contains(id) {
            assert_eq!(props["booking_state"], "no-show", "{id}: {props}");
        }
    }
    let (v1_lines, _) = common::read_sample(&before);
    let (after_lines, _) = common::read_sample(&after);
    for lines in [&v1_lines, &after_lines] {
        for (id, line) in common::latest_per_booking(lines) {
            let props = &records[id]["properties"];
            assert_eq!(props["booking_state"], line.state.as_str(), "{id}");
            assert_eq!(props["last_event_id"], line.event_id.as_str(), "{id}");
            assert_eq!(props["loyalty_tier"], "", "{id}: a v1 booking has no tier");
        }
    }

    // Lake: DuckDB sees the new state and the new field.
    let query = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"SELECT state, extensions->>'$.loyaltyTier' AS tier, extensions->>'$.customer.segment' AS segment, count(*) AS n \
         FROM read_parquet('{}/bookings/**/*.parquet', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\").fetchall()\n\
         print(json.dumps(rows))",
        lake.display()
    );
    let out = std::process::Command::new(python)
        .args(["-c", &query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, Option<String>, Option<String>, u64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    let count = |state: &str, tier: Option<&str>| {
        rows.iter()
            .filter(|r| r.0 == state && r.1.as_deref() == tier)
            .map(|r| r.3)
            .sum::<u64>()
    };
    assert_eq!(
        count("no-show", Some("GOLD")),
        no_shows.len() as u64,
        "{rows:?}"
    );
    let all_events = |f: &Path| common::event_ids(f).len() as u64;
    let total: u64 = rows.iter().map(|r| r.3).sum();
    assert_eq!(
        total,
        all_events(&before) + all_events(&v2) + all_events(&after),
        "{rows:?}"
    );
    let tiered: u64 = rows
        .iter()
        .filter(|r| r.1.as_deref() == Some("GOLD"))
        .map(|r| r.3)
        .sum();
    assert_eq!(
        tiered,
        all_events(&v2),
        "every v2 event, and only those, has a tier: {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.2.as_deref() == Some("fleet")),
        "{rows:?}"
    );
}

/// v2 events in proto3 JSON, with no-shows, and how many end so.
fn v2_file(dir: &Path, seed: u64) -> (PathBuf, usize) {
    let events = v2_events(dir, &format!("v2-{seed}.ndjson"), 6, seed, |e| {
        if e["payment"].is_object() {
            e["payment"]["method"] = "PAYMENT_METHOD_VOUCHER".into();
        }
    });
    let no_shows = with_no_shows(&events).len();
    assert!(no_shows > 0);
    (events, no_shows)
}

#[test]
fn an_events_file_is_read_with_the_descriptor_set_and_a_plugin_asking_gets_extensions() {
    let setup = Setup::new();
    let dir = setup.dir.path();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    setup.plugin(
        "jsonl-sink",
        "jsonl-sink",
        &format!(
            "extensions = true\n[folder]\npath = \"{}\"\n",
            out.display()
        ),
    );
    setup.plugin("metrics", "metrics", "");
    let (events, no_shows) = v2_file(dir, 601);
    // Without the schema, a line with fields booking.v1 lacks is not a
    // booking.v1 event in the JSON mapping: parked once each, as decode.
    setup.run(&events);
    assert_eq!(setup.dead_letters().len(), common::event_ids(&events).len());
    assert!(
        setup.dead_letters().iter().all(|d| d["class"] == "decode"),
        "{:?}",
        setup.dead_letters()
    );

    // With the v2 descriptor set, every line reaches the plugins.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::remove_file(setup.path("dead-letter.ndjson")).ok();
    std::fs::remove_dir_all(dir.join(".plugboard")).ok();
    let v2_set =
        protox::compile([schema_fixture("booking_v2.proto")], [schema_fixture("")]).unwrap();
    std::fs::write(dir.join("v2.desc"), prost::Message::encode_to_vec(&v2_set)).unwrap();
    schema_table(&setup, "descriptor_set = \"v2.desc\"");
    let run = setup.run(&events);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert!(
        !setup.path("dead-letter.ndjson").exists() || setup.dead_letters().is_empty(),
        "{:?}",
        setup.dead_letters()
    );
    let lines: Vec<Value> = std::fs::read_dir(&out)
        .unwrap()
        .flat_map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), common::event_ids(&events).len());
    assert_eq!(
        lines.iter().filter(|l| l["state"] == "no-show").count(),
        no_shows
    );
    for line in &lines {
        assert_eq!(line["extensions"]["loyaltyTier"], "GOLD", "{line}");
        assert!(
            line.get("vehicle").is_none_or(Value::is_null),
            "v2 has no vehicle: {line}"
        );
        if line["payment"].is_object() {
            assert_eq!(line["payment"]["method"], "voucher", "{line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l["extensions"]["channel"] == "CHANNEL_PHONE")
    );
    assert_eq!(
        setup.metrics().get(
            "bookings_current",
            &[("state", "no-show"), ("plugin", "metrics")]
        ),
        Some(no_shows as f64)
    );

    // replay --schema shows a plugin author the same.
    let replay = common::plugboard_command()
        .args(["replay", "--plugin"])
        .arg(setup.plugins.join("metrics.wasm"))
        .arg("--events")
        .arg(&events)
        .arg("--schema")
        .arg(schema_fixture("booking_v2.proto"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(said.matches("no-show: ok").count(), no_shows, "{said}");
    assert!(said.contains("0 invalid lines"), "{said}");
}
