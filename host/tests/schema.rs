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
/// the registry or the id).
fn produce_with(brokers: &str, topic: &str, events: &Path, args: &[&str]) {
    let out = common::plugboard_command()
        .args([
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--events",
        ])
        .arg(events)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
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

/// `n/<id>` of the counting plugin in the host's state.
fn counted(data_dir: &Path, topic: &str, id: &str) -> u64 {
    let db = rusqlite::Connection::open(data_dir.join("state.sqlite")).unwrap();
    db.query_row(
        "SELECT value FROM state WHERE plugin = 'counting' AND scope = ?1 AND bucket = 'counting' AND key = ?2",
        [topic, &format!("n/{id}")],
        |row| row.get::<_, Vec<u8>>(0),
    )
    .map(|v| String::from_utf8(v).unwrap().parse::<u64>().unwrap())
    .unwrap_or(0)
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
    produce_with(
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
    produce_with(&brokers, &topic, &v2, &v2_args);
    produce_with(
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
    produce_with(&brokers, &topic, &v2_after, &v2_args);
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
    let v2_id = register(&own.url, &subject, &schema_fixture("booking_v2.proto"));
    assert_ne!(v1_id, v2_id);
    setup.plugin("counting", "counting", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "outage");
    schema_table(
        &setup,
        &format!("registry = \"{}\"\ntimeout_ms = 1000", own.url),
    );
    let v1_arg = v1_id.to_string();
    let v2_arg = v2_id.to_string();
    let v2_proto = schema_fixture("booking_v2.proto");
    let v2_args = [
        "--schema",
        v2_proto.to_str().unwrap(),
        "--schema-id",
        &v2_arg,
    ];

    // Warm-up: the host has read v1 once.
    let warm = common::generated_events(dir, 3, 301);
    produce_with(&brokers, &topic, &warm, &["--schema-id", &v1_arg]);
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let host = Host(Some(host));
    wait_for_zero_lag(&kafka, &["counting"]);

    // Registry down after warm-up: v1 events flow as before.
    own.stop();
    let after_warm_up = common::generated_events(dir, 3, 302);
    produce_with(&brokers, &topic, &after_warm_up, &["--schema-id", &v1_arg]);
    wait_for_zero_lag(&kafka, &["counting"]);
    let data = dir.join(".plugboard");
    all_counted_once(&data, &topic, &[&warm, &after_warm_up]);

    // The first event of v2 while it is down: the partition holds as the
    // host's failure, and what follows waits behind it.
    let v2 = v2_events(dir, "v2.ndjson", 2, 303, |_| {});
    let behind = common::generated_events(dir, 2, 304);
    produce_with(&brokers, &topic, &v2, &v2_args);
    produce_with(&brokers, &topic, &behind, &["--schema-id", &v1_arg]);
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
    produce_with(&brokers, &topic, &later_v1, &["--schema-id", &v1_arg]);
    produce_with(&brokers, &topic, &later_v2, &v2_args);
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
    produce_with(&brokers, &topic, &before, &[]);
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
        produce_with(&brokers, &topic, &probe, &v2_args);
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

    // A broken file keeps the schema before it.
    std::fs::write(&set, b"not a descriptor set").unwrap();
    let after = v2_events(dir, "after.ndjson", 2, 402, |_| {});
    produce_with(&brokers, &topic, &after, &v2_args);
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
