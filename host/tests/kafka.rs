//! The Kafka source against a real Apache Kafka (scripts/kafka.sh, started by
//! scripts/test.sh, which sets PLUGBOARD_TEST_BROKERS): the sample file
//! published to a fresh 6-partition topic reaches CRM, lake and metrics
//! exactly as the file source delivers it; poison messages end in every
//! plugin's dead-letter topic with the reason, and every offset is committed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{Crm, STATES, Setup, read_lake, read_sample, sample_events};

#[test]
fn kafka_delivers_what_the_file_source_delivers_and_parks_poison() {
    let Some(brokers) = brokers() else { return };
    let topic = create_topic(&brokers, 6);
    produce(&brokers, &topic, &sample_events());

    // The reference: the same events through the file source.
    let reference = Setup::new();
    let reference_crm = Crm::start(&reference.path("crm.db"));
    reference.demo_plugins(&reference_crm, &reference.path("lake"));
    assert!(reference.run(&sample_events()).status.success());

    let setup = Setup::new();
    let crm = Crm::start(&setup.path("crm.db"));
    let lake = setup.path("lake");
    setup.demo_plugins(&crm, &lake);
    let kafka = kafka_config(&setup, &brokers, &topic, "test");
    let started = Instant::now();
    let host = start_host(&setup);
    wait_for_zero_lag(&kafka, &["crm-sync", "data-lake", "metrics"]);
    eprintln!(
        "the sample file through 3 plugins over Kafka: lag 0 after {:.1?} (host start-up included)",
        started.elapsed()
    );
    stop(host);

    // CRM: the same records (ids and timestamps aside).
    let want = reference_crm.properties();
    assert!(!want.is_empty());
    assert_eq!(crm.properties(), want);

    // Lake: the same events, once each per delivery.
    let ids = |lake: &std::path::Path| {
        let mut ids: Vec<String> = read_lake(&lake.join("bookings"))
            .1
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&lake), ids(&reference.path("lake")));

    // Metrics: the same gauges.
    let (got, want) = (setup.metrics(), reference.metrics());
    for state in STATES {
        let labels = [("state", state), ("plugin", "metrics")];
        assert_eq!(
            got.get("bookings_current", &labels),
            want.get("bookings_current", &labels),
            "{state}"
        );
    }

    // Poison: every malformed line is in every plugin's dead-letter topic,
    // with the reason and where it came from.
    let (_, invalid) = read_sample(&sample_events());
    for plugin in ["crm-sync", "data-lake", "metrics"] {
        let dead = read_topic(&brokers, &format!("{topic}.dlq.{plugin}"), invalid.len());
        assert_eq!(dead.len(), invalid.len(), "{plugin}: {dead:?}");
        let topics: BTreeSet<&str> = dead
            .iter()
            .map(|h| h["plugboard.original-topic"].as_str())
            .collect();
        assert_eq!(topics, BTreeSet::from([topic.as_str()]));
        for h in &dead {
            assert_eq!(h["plugboard.plugin"], plugin);
            assert_eq!(h["plugboard.failure-class"], "decode");
            assert!(!h["plugboard.reason"].is_empty());
            assert!(h["plugboard.original-offset"].parse::<i64>().is_ok());
        }
    }
}

#[test]
fn a_host_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 6, 1500, 11);
    let (valid, _) = read_sample(&events);

    let crm = Crm::start(&setup.path("crm.db"));
    let lake = setup.path("lake");
    setup.demo_plugins(&crm, &lake);
    // Small batches, so the kill lands mid-stream.
    for plugin in ["crm-sync", "data-lake"] {
        let manifest = setup.plugins.join(format!("{plugin}.toml"));
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text}\n[limits]\nbatch_size = 20\n")).unwrap();
    }
    let kafka = kafka_config(&setup, &brokers, &topic, "crash");
    // Static membership: the restarted host takes its partitions back
    // without waiting for the killed one's session to time out.
    append_config(&setup, "instance_id = \"crash-test-host\"\n");

    let mut host = start_host(&setup);
    let deadline = Instant::now() + Duration::from_secs(60);
    while plugboard::source::kafka::group_lag(&kafka, "data-lake").unwrap_or(i64::MAX)
        > (valid.len() as i64) * 9 / 10
    {
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.kill().unwrap(); // SIGKILL: no final commit, a batch possibly half done
    host.wait().unwrap();
    let lag = plugboard::source::kafka::group_lag(&kafka, "data-lake").unwrap();
    assert!(lag > 0, "the kill came too late to test anything");

    let restarted = Instant::now();
    let host = start_host(&setup);
    wait_for_zero_lag(&kafka, &["crm-sync", "data-lake", "metrics"]);
    eprintln!(
        "recovery: restarted host caught up {lag} events of data-lake lag in {:.1?}",
        restarted.elapsed()
    );
    stop(host);

    // CRM: every booking at its newest version, as a clean run leaves it.
    let latest = common::latest_per_booking(&valid);
    let objects = crm.all();
    assert_eq!(objects.len(), latest.len());
    for (booking, line) in &latest {
        let props = &objects[*booking]["properties"];
        assert_eq!(
            props["booking_version"],
            line.version.to_string().as_str(),
            "{booking}"
        );
        assert_eq!(props["booking_state"], line.state.as_str(), "{booking}");
    }

    // Lake: every event exactly once, though batches were redone.
    let (_, rows) = read_lake(&lake.join("bookings"));
    let mut ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = valid.iter().map(|l| l.event_id.as_str()).collect();
    want.sort();
    assert_eq!(
        ids.len(),
        want.len(),
        "duplicate or missing rows in the lake"
    );
    assert_eq!(ids, want);
}

fn prom(setup: &Setup, file: &str) -> common::Prom {
    common::Prom(std::fs::read_to_string(setup.path(file)).unwrap())
}

fn handled(prom: &common::Prom, plugin: &str) -> f64 {
    prom.get(
        "plugboard_events_total",
        &[("plugin", plugin), ("outcome", "handled")],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_rejected_event_is_parked_and_the_partition_goes_on() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 6, 50, 21);
    let (valid, _) = read_sample(&events);
    let victim = valid[10].event_id.clone();
    setup.plugin(
        "picky",
        "faulty",
        &format!("[config]\nreject = \"{victim}\"\n"),
    );
    let kafka = kafka_config(&setup, &brokers, &topic, "reject");
    // Settings of one kind of client only go to that kind: neither the
    // consumer nor the dead-letter producer warns about the other's.
    append_config(
        &setup,
        "[kafka.librdkafka]\n\"fetch.min.bytes\" = \"1\"\n\"linger.ms\" = \"5\"\n",
    );
    let log = std::fs::File::create(setup.path("host.log")).unwrap();
    let host = host_command(&setup, "metrics.prom")
        .env("PLUGBOARD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Lag 0: the offsets after the rejected event are committed too.
    wait_for_zero_lag(&kafka, &["picky"]);
    stop(host);
    let log = std::fs::read_to_string(setup.path("host.log")).unwrap();
    assert!(log.contains("dead-lettered"), "{log}");
    assert!(!log.contains("CONFWARN"), "{log}");
    let dead = read_topic(&brokers, &format!("{topic}.dlq.picky"), 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["plugboard.failure-class"], "rejected");
    assert_eq!(dead[0]["plugboard.attempts"], "1");
    assert!(dead[0]["plugboard.reason"].contains(&victim));
    assert_eq!(handled(&setup.metrics(), "picky"), valid.len() as f64 - 1.0);
}

#[test]
fn a_plugin_dropped_in_later_backfills_in_its_own_group() {
    let Some(brokers) = brokers() else { return };
    let topic = create_topic(&brokers, 6);
    let setup = Setup::new();
    let first = common::generated_events(setup.dir.path(), 60, 31);
    let second = common::generated_events(setup.dir.path(), 30, 32);
    let (first_n, second_n) = (read_sample(&first).0.len(), read_sample(&second).0.len());
    produce(&brokers, &topic, &first);
    setup.plugin("early", "faulty", "");
    let kafka = kafka_config(&setup, &brokers, &topic, "dropin");
    let host = start_host_with_metrics(&setup, "first.prom");
    wait_for_zero_lag(&kafka, &["early"]);
    stop(host);

    // More events arrive, and a new plugin is dropped in.
    produce(&brokers, &topic, &second);
    setup.plugin("late", "faulty", "");
    let host = start_host_with_metrics(&setup, "second.prom");
    wait_for_zero_lag(&kafka, &["early", "late"]);
    stop(host);

    assert_eq!(
        handled(&prom(&setup, "first.prom"), "early"),
        first_n as f64
    );
    let second_run = prom(&setup, "second.prom");
    assert_eq!(
        handled(&second_run, "early"),
        second_n as f64,
        "early continues at the head"
    );
    assert_eq!(
        handled(&second_run, "late"),
        (first_n + second_n) as f64,
        "late backfills everything"
    );
}

#[test]
fn a_slow_plugin_does_not_hold_back_the_others() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _) = stream(&brokers, 6, 150, 41);
    setup
        .plugin("fast", "faulty", "[limits]\nbatch_size = 50\n")
        .plugin(
            "slow",
            "faulty",
            "[limits]\nbatch_size = 5\n[config]\nsleep_ms = \"200\"\n",
        );
    let kafka = kafka_config(&setup, &brokers, &topic, "slow");
    let host = start_host(&setup);
    wait_for_zero_lag(&kafka, &["fast"]);
    let slow_lag = plugboard::source::kafka::group_lag(&kafka, "slow").unwrap();
    stop(host);
    assert!(
        slow_lag > 0,
        "the slow plugin should still be behind when the fast one is done"
    );
}

#[test]
fn two_hosts_share_the_partitions_and_one_takes_over_from_the_other() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 6, 300, 51);
    let (valid, _) = read_sample(&events);
    let lake = setup.path("lake");
    setup.plugin(
        "data-lake",
        "data-lake",
        &format!(
            "[folder]\npath = \"{}\"\n[limits]\nbatch_size = 10\n",
            lake.display()
        ),
    );
    // 100 ms per event: each partition takes ~18 s, so the stream is still
    // flowing when the second host has joined and when one is killed.
    setup.plugin(
        "pacer",
        "faulty",
        "[limits]\nbatch_size = 1\n[config]\nsleep_ms = \"100\"\n",
    );
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "scale");
    // A small buffer, so the pacer's partitions fill their queues and
    // wait; a killed member is noticed after the session timeout: keep it
    // short.
    append_config(
        &setup,
        "partition_buffer = 20\n[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    );

    let (a, a_admin) = start_host_with_admin(&setup, "a.prom");
    let (mut b, b_admin) = start_host_with_admin(&setup, "b.prom");
    let live = |admin: &str| {
        let text = reqwest::blocking::get(format!("{admin}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        handled(&common::Prom(text), "pacer")
    };
    // Both work on their share of the partitions...
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut a_before, mut b_before) = (0.0, 0.0);
    while a_before == 0.0 || b_before == 0.0 {
        assert!(Instant::now() < deadline, "the partitions were not shared");
        std::thread::sleep(Duration::from_millis(200));
        (a_before, b_before) = (live(&a_admin), live(&b_admin));
    }
    // ...until one dies without a goodbye; the other takes its partitions
    // over and redelivers what the dead one had not committed.
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    wait_for_zero_lag(&kafka, &["pacer", "data-lake"]);
    eprintln!(
        "host b killed after {b_before} pacer events; host a finished the topic {:.1?} later",
        killed.elapsed()
    );
    stop(a);

    let a = prom(&setup, "a.prom");
    assert!(
        handled(&a, "pacer") + b_before >= valid.len() as f64,
        "the survivor handled the rest: a {} + b {b_before} < {}",
        handled(&a, "pacer"),
        valid.len()
    );
    let mut ids: Vec<String> = read_lake(&lake.join("bookings"))
        .1
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut want: Vec<String> = valid.iter().map(|l| l.event_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "every event exactly once in the lake");
}

#[test]
fn the_admin_endpoint_serves_metrics_health_and_readiness() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 6, 20, 61);
    let total = read_sample(&events).0.len();
    setup.plugin("watched", "faulty", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "admin");

    let (host, base) = start_host_with_admin(&setup, "metrics.prom");
    let get = |path: &str| reqwest::blocking::get(format!("{base}{path}")).unwrap();

    let health = get("/healthz");
    assert_eq!(health.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/readyz").status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_zero_lag(&kafka, &["watched"]);
    let metrics = common::Prom(get("/metrics").text().unwrap());
    assert_eq!(handled(&metrics, "watched"), total as f64);
    stop(host);
}

/// `component` with a custom section appended: the same plugin, other
/// bytes, so another version to the host.
fn version_of(component: &[u8], version: u32) -> Vec<u8> {
    let name = b"plugboard-test-version";
    let payload = version.to_le_bytes();
    let mut out = component.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn plugins_are_replaced_under_load_and_a_broken_file_leaves_the_last_good_serving() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 1, 300, 77);
    let (valid, _) = read_sample(&events);
    // 80 ms per batch of 5: the stream lasts ~18 s, through every reload
    // even on a loaded machine.
    setup.plugin(
        "probe",
        "faulty",
        "[limits]\nbatch_size = 5\n[config]\nsleep_ms = \"80\"\n",
    );
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "reload");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    wait_for("the first version serves", || {
        plugin_status(&admin, "probe")["state"] == "running"
    });

    let original = std::fs::read(setup.plugins.join("probe.wasm")).unwrap();
    let target = setup.plugins.join("probe.wasm");
    let mut latencies = Vec::new();
    for version in 1..=10u32 {
        let bytes = version_of(&original, version);
        let sha = sha256_hex(&bytes);
        let written = Instant::now();
        if version % 2 == 0 {
            // temp file + rename, as deploy tools do
            let tmp = setup.plugins.join(".probe.wasm.tmp");
            std::fs::write(&tmp, &bytes).unwrap();
            std::fs::rename(&tmp, &target).unwrap();
        } else {
            // a plain copy over the file
            std::fs::write(&target, &bytes).unwrap();
        }
        wait_for("the new version serves", || {
            plugin_status(&admin, "probe")["sha256"] == sha.as_str()
        });
        latencies.push(written.elapsed());
    }
    let last_good = sha256_hex(&version_of(&original, 10));
    // The lag comes with the consumer's statistics, once a second: ten
    // reloads can be done before the first.
    wait_for("the consumer's first statistics", || {
        !plugin_status(&admin, "probe")["lag"].is_null()
    });
    let before = plugin_status(&admin, "probe");
    assert!(
        before["lag"].as_i64().unwrap() > 0,
        "the reloads should happen under load: {before}"
    );

    // A broken file: rejected, and the last good version keeps serving.
    let tmp = setup.plugins.join(".probe.wasm.tmp");
    std::fs::write(&tmp, b"\0asm this is not a component").unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    let failed_before = before["failed_loads"].as_u64().unwrap();
    wait_for("the broken file is rejected", || {
        plugin_status(&admin, "probe")["failed_loads"].as_u64() > Some(failed_before)
    });
    let after = plugin_status(&admin, "probe");
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["sha256"], last_good.as_str(), "{after}");
    assert!(
        after["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid component")),
        "{after}"
    );

    wait_for_zero_lag(&kafka, &["probe"]);
    let done = plugin_status(&admin, "probe");
    let versions = done["versions"].as_array().unwrap();
    assert_eq!(
        versions.len(),
        11,
        "the original and 10 replacements: {done}"
    );
    let handled: u64 = versions
        .iter()
        .map(|v| v["handled"].as_u64().unwrap())
        .sum();
    assert_eq!(
        handled,
        valid.len() as u64,
        "every event handled exactly once, by a fully loaded version: {done}"
    );
    assert!(
        versions
            .iter()
            .all(|v| v["sha256"] != sha256_hex(b"\0asm this is not a component").as_str()),
        "{done}"
    );

    // Removing the plugin drains and stops it.
    std::fs::remove_file(&target).unwrap();
    std::fs::remove_file(setup.plugins.join("probe.toml")).unwrap();
    wait_for("the removed plugin stops", || {
        plugin_status(&admin, "probe")["state"] == "stopped"
    });
    stop(host);

    latencies.sort();
    eprintln!(
        "reload latency, file written -> new version serving (10 reloads): p50 {:.0?}, max {:.0?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

/// The business gauges of the metrics plugin in `prom`.
fn business_gauges(prom: &common::Prom) -> Vec<(String, Option<f64>)> {
    let mut out: Vec<(String, Option<f64>)> = STATES
        .iter()
        .map(|s| {
            (
                format!("bookings_current{{state={s}}}"),
                prom.get("bookings_current", &[("state", s), ("plugin", "metrics")]),
            )
        })
        .collect();
    out.push((
        "bookings_revenue_minor{currency=EUR}".into(),
        prom.get(
            "bookings_revenue_minor",
            &[("currency", "EUR"), ("plugin", "metrics")],
        ),
    ));
    out
}

/// The metrics plugin's gauges after the file source ran `events` once.
fn reference_gauges(events: &std::path::Path) -> Vec<(String, Option<f64>)> {
    let reference = Setup::new();
    reference.plugin("metrics", "metrics", "");
    assert!(reference.run(events).status.success());
    business_gauges(&reference.metrics())
}

#[test]
fn metrics_gauges_are_right_after_a_restart_without_replaying() {
    let Some(brokers) = brokers() else { return };
    let topic = create_topic(&brokers, 6);
    let setup = Setup::new();
    let lines: Vec<String> = std::fs::read_to_string(sample_events())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let first = setup.path("first.ndjson");
    let rest = setup.path("rest.ndjson");
    std::fs::write(&first, lines[..800].join("\n") + "\n").unwrap();
    std::fs::write(&rest, lines[800..].join("\n") + "\n").unwrap();
    let everything = setup.path("all.ndjson");
    std::fs::write(&everything, lines.join("\n") + "\n").unwrap();

    setup.plugin("metrics", "metrics", "[limits]\nbatch_size = 10\n");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "state");

    // The first host sees the first 800 lines, then stops.
    produce(&brokers, &topic, &first);
    let (host, _) = start_host_with_admin(&setup, "first.prom");
    wait_for_zero_lag(&kafka, &["metrics"]);
    stop(host);

    // The second starts where the first committed: nothing is replayed,
    // yet its gauges are right before any new event arrives...
    let (host, admin) = start_host_with_admin(&setup, "second.prom");
    let want = reference_gauges(&first);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got != want {
        assert!(
            Instant::now() < deadline,
            "gauges after the restart: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let text = reqwest::blocking::get(format!("{admin}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        got = business_gauges(&common::Prom(text));
    }
    // ...and after the rest of the stream they equal an uninterrupted run.
    produce(&brokers, &topic, &rest);
    wait_for_zero_lag(&kafka, &["metrics"]);
    stop(host);
    assert_eq!(
        business_gauges(&prom(&setup, "second.prom")),
        reference_gauges(&everything)
    );
}

/// The number a plugin's state holds under `key`, from the host's state
/// file, for events of `topic`.
fn stored_number(setup: &Setup, plugin: &str, topic: &str, bucket: &str, key: &str) -> Option<u64> {
    let db = rusqlite::Connection::open(setup.path(".plugboard/state.sqlite")).unwrap();
    db.query_row(
        "SELECT value FROM state WHERE plugin = ?1 AND scope = ?2 AND bucket = ?3 AND key = ?4",
        [plugin, topic, bucket, key],
        |row| row.get::<_, Vec<u8>>(0),
    )
    .ok()
    .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
}

#[test]
fn increments_of_one_key_from_every_partition_add_up_exactly() {
    let Some(brokers) = brokers() else { return };
    let topic = create_topic(&brokers, 6);
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 1500, 21);
    let total = common::event_ids(&events).len() as u64;
    assert!(total > 5000, "{total} events");
    // Small batches: many commits of the one key, from six instances at once.
    setup.plugin(
        "counter",
        "faulty",
        "[limits]\nbatch_size = 7\n[config]\ncount = \"events\"\n",
    );
    let kafka = kafka_config(&setup, &brokers, &topic, "atomics");
    produce(&brokers, &topic, &events);
    let host = start_host(&setup);
    wait_for_zero_lag(&kafka, &["counter"]);
    stop(host);
    assert_eq!(
        stored_number(&setup, "counter", &topic, "count", "events"),
        Some(total),
        "six partitions' instances incremented one key once per event"
    );
}

#[test]
fn a_plugin_pointed_at_another_topic_starts_from_its_own_state() {
    let Some(brokers) = brokers() else { return };
    let (first_topic, second_topic) = (create_topic(&brokers, 3), create_topic(&brokers, 3));
    let setup = Setup::new();
    let lines: Vec<String> = std::fs::read_to_string(sample_events())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (first, second) = (setup.path("first.ndjson"), setup.path("second.ndjson"));
    std::fs::write(&first, lines[..700].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[700..].join("\n") + "\n").unwrap();
    produce(&brokers, &first_topic, &first);
    produce(&brokers, &second_topic, &second);
    setup.plugin("metrics", "metrics", "[limits]\nbatch_size = 10\n");

    let kafka = kafka_config(&setup, &brokers, &first_topic, "topics");
    let host = start_host_with_metrics(&setup, "first.prom");
    wait_for_zero_lag(&kafka, &["metrics"]);
    stop(host);
    assert_eq!(
        business_gauges(&prom(&setup, "first.prom")),
        reference_gauges(&first)
    );

    // The same data folder, another topic: the gauges are that topic's
    // bookings alone, not both topics' added up.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        config.replace(
            &format!("topic = \"{first_topic}\""),
            &format!("topic = \"{second_topic}\""),
        ),
    )
    .unwrap();
    let kafka = plugboard::config::HostConfig::load(&setup.config)
        .unwrap()
        .kafka
        .unwrap();
    assert_eq!(kafka.topic.0, second_topic);
    let host = start_host_with_metrics(&setup, "second.prom");
    wait_for_zero_lag(&kafka, &["metrics"]);
    stop(host);
    assert_eq!(
        business_gauges(&prom(&setup, "second.prom")),
        reference_gauges(&second)
    );
}

#[test]
fn an_answer_that_breaks_the_contract_parks_only_its_event_and_marks_the_version_faulty() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 3, 40, 31);
    let (valid, _) = read_sample(&events);
    let culprit = valid[7].event_id.clone();
    setup.plugin(
        "liar",
        "faulty",
        &format!(
            "[limits]\nmax_attempts = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\n[config]\noverclaim = \"{culprit}\"\n"
        ),
    );
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "contract");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    wait_for_zero_lag(&kafka, &["liar"]);
    let status = plugin_status(&admin, "liar");
    let faulty = status["versions"][0]["faulty"].as_str().unwrap_or_default();
    assert!(faulty.contains("broke the handler contract"), "{status}");
    stop(host);
    let dead = read_topic(&brokers, &format!("{topic}.dlq.liar"), 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["plugboard.failure-class"], "contract");
    assert_eq!(dead[0]["plugboard.attempts"], "2");
    assert!(
        dead[0]["plugboard.reason"].contains("answer `all`"),
        "{dead:?}"
    );
    assert_eq!(handled(&setup.metrics(), "liar"), valid.len() as f64 - 1.0);
}

#[test]
fn an_init_that_fails_for_now_holds_the_partitions_until_it_works() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 3, 30, 41);
    let (valid, _) = read_sample(&events);
    // `init` says something it needs is down for now.
    setup.plugin("later", "faulty", "[config]\ninit_retry = \"yes\"\n");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "init");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    // The load is tried again, every time failing "for now"; nothing is
    // dead-lettered and nothing handled.
    wait_for("the failed load to be reported", || {
        plugin_status(&admin, "later")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("init failed for now"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        plugboard::source::kafka::group_lag(&kafka, "later").unwrap_or(i64::MAX) > 0,
        "events were settled by a plugin whose init failed"
    );
    // Whatever it waited for is there now (here: its config is fixed).
    std::fs::write(setup.plugins.join("later.toml"), "").unwrap();
    wait_for_zero_lag(&kafka, &["later"]);
    stop(host);
    assert_eq!(handled(&setup.metrics(), "later"), valid.len() as f64);
    assert_eq!(
        setup
            .metrics()
            .get("plugboard_dead_letters_total", &[("plugin", "later")]),
        None
    );
}

#[test]
fn an_event_too_large_for_its_dead_letter_topic_is_parked_without_its_payload() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 3, 30, 23);
    // One event of 20 KB, far over what its dead-letter topic takes.
    let (valid, _) = read_sample(&events);
    let text = std::fs::read_to_string(&events).unwrap();
    let mut big = plugboard::decode::from_json(text.lines().next().unwrap()).unwrap();
    big.event_id = "too-big-to-park".into();
    if let Some(c) = big.customer.as_mut() {
        c.name = "n".repeat(20_000);
    }
    let file = setup.path("big.ndjson");
    std::fs::write(&file, serde_json::to_string(&big).unwrap() + "\n").unwrap();
    produce(&brokers, &topic, &file);
    let dlq = format!("{topic}.dlq.counting");
    create_named_topic(&brokers, &dlq, 1, &[("max.message.bytes", "8000")]);
    std::fs::create_dir_all(setup.path("out")).unwrap();
    // Its reason is 100 KB too: cut to the bound.
    setup.plugin(
        "counting",
        "counting",
        &format!(
            "[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\nreject = \"too-big-to-park\"\nreason_bytes = \"100000\"\n",
            setup.path("out").display()
        ),
    );
    let kafka = kafka_config(&setup, &brokers, &topic, "toobig");
    let host = start_host(&setup);
    // Lag 0: the event is parked and its partition went on.
    wait_for_zero_lag(&kafka, &["counting"]);
    stop(host);
    let dead = read_topic(&brokers, &dlq, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert!(
        letter["plugboard.payload-omitted"].contains("refused the whole record"),
        "{letter:?}"
    );
    assert_eq!(letter["value"], "", "the payload is left out");
    assert_eq!(letter["plugboard.original-topic"], topic);
    assert!(letter["plugboard.original-offset"].parse::<i64>().is_ok());
    let reason = &letter["plugboard.reason"];
    assert!(reason.len() <= plugboard::dead_letter::MAX_REASON_BYTES);
    assert!(reason.starts_with("counting rejects too-big-to-park"));
    // Every other event counted once.
    for event in &valid {
        assert_eq!(
            stored_number(
                &setup,
                "counting",
                &topic,
                "counting",
                &format!("n/{}", event.event_id)
            ),
            Some(1),
            "{}",
            event.event_id
        );
    }
    assert_eq!(
        stored_number(&setup, "counting", &topic, "counting", "total"),
        Some(valid.len() as u64)
    );
}

#[test]
fn a_call_waiting_on_an_endpoint_that_never_answers_shows_and_ends_at_a_stop() {
    let Some(brokers) = brokers() else { return };
    let listed = std::env::var("PLUGBOARD_TEST_LANGS").unwrap_or_default();
    if !listed.split(',').any(|l| l == "js") {
        common::skip(
            "the JavaScript notifier",
            "js is not in PLUGBOARD_TEST_LANGS (scripts/test.sh lists every language)",
        );
        return;
    }
    let url = common::black_hole();
    let (topic, setup, _) = stream(&brokers, 2, 20, 31);
    // A budget of a minute: the call waits on the request all along.
    setup.plugin(
        "notifier",
        "garage-notifier-js",
        &format!(
            "allow_hosts = [\"{url}\"]\n[limits]\ntimeout_ms = 60000\n[config]\nwebhook_url = \"{url}/hooks\"\n"
        ),
    );
    enable_admin(&setup);
    kafka_config(&setup, &brokers, &topic, "blackhole");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let deadline = Instant::now() + Duration::from_secs(60);
    let origin = url.clone();
    loop {
        let status = plugin_status(&admin, "notifier");
        let shown = status["waiting"].as_array().into_iter().flatten().any(|w| {
            w["cause"] == "call"
                && w["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(&format!("an outgoing request to {origin}")))
        });
        if shown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting call never showed: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ready: the host itself is fine.
    let ready = reqwest::blocking::get(format!("{admin}/readyz")).unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    // SIGTERM cuts the request: the host ends long before the budget.
    let stopping = Instant::now();
    stop(host);
    let took = stopping.elapsed();
    eprintln!("SIGTERM with a request in flight: exited cleanly in {took:.1?}");
    assert!(
        took < Duration::from_secs(20),
        "the request held the stop for {took:?}"
    );
}

/// `plugboard ctl` with `args` against `admin`: (exit code, stdout, stderr).
fn ctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("ctl")
        .args(args)
        .env("PLUGBOARD_ADMIN_URL", admin)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn ctl_shows_the_plugins_and_the_offsets_of_each_group() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 3, 40, 41);
    setup
        .plugin("metrics", "metrics", "")
        .plugin("noop", "noop", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "ctl");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    wait_for_zero_lag(&kafka, &["metrics", "noop"]);
    let (valid, _) = read_sample(&events);

    // The offsets, as JSON: every partition committed up to its end.
    let (code, out, err) = ctl(&admin, &["offsets", "metrics", "--json"]);
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["group"], format!("{}metrics", kafka.group_prefix));
    assert_eq!(answer["lag"], 0);
    let partitions = answer["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    let mut ends = 0;
    for p in partitions {
        assert_eq!(p["committed"], p["high_watermark"], "{p}");
        ends += p["high_watermark"].as_i64().unwrap();
    }
    assert_eq!(ends as usize, valid.len(), "every event of the topic");

    // As a table.
    let (code, out, _) = ctl(&admin, &["offsets", "noop"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("group {}noop", kafka.group_prefix));
    assert!(lines[1].starts_with("PARTITION  COMMITTED  END"), "{out}");
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(lines[5], "total lag 0");

    // Status: one row per plugin, with what it handled.
    let (code, out, _) = ctl(&admin, &["status"]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("metrics "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "running", "{row}");
    assert_eq!(cells[3], valid.len().to_string(), "{row}");
    assert!(out.lines().any(|l| l.starts_with("noop ")), "{out}");

    // The lag per partition, in the metrics too (every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::blocking::get(format!("{admin}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("plugboard_consumer_lag{") && l.contains("plugin=\"metrics\"")
            })
            .collect();
        let settled = (0..3).all(|p| {
            series.contains(
                &format!("plugboard_consumer_lag{{partition=\"{p}\",plugin=\"metrics\"}} 0")
                    .as_str(),
            )
        });
        if settled && series.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{series:?}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // A plugin the host does not know: exit 1, and why.
    let (code, _, err) = ctl(&admin, &["offsets", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no plugin nosuch"), "{err}");
    stop(host);
    // No host: exit 3.
    let (code, _, err) = ctl(&admin, &["status"]);
    assert_eq!(code, 3, "{err}");
}

#[test]
fn a_paused_plugin_takes_nothing_stays_paused_after_a_restart_and_catches_up_on_resume() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _) = stream(&brokers, 3, 20, 43);
    setup
        .plugin("metrics", "metrics", "")
        .plugin("noop", "noop", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "pause");
    // The token comes from the environment, as in production.
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "admin_token = \"${TEST_ADMIN_TOKEN}\"\n");
    std::fs::write(&setup.config, text).unwrap();
    let start = || {
        let mut command = host_command(&setup, "metrics.prom");
        command.env("TEST_ADMIN_TOKEN", "s3cret");
        start_with_admin(command)
    };
    let (host, admin) = start();
    wait_for_zero_lag(&kafka, &["metrics", "noop"]);

    // The write endpoints want the token: none 401, a wrong one 403.
    let post = |admin: &str, path: &str, token: Option<&str>| {
        let mut request = reqwest::blocking::Client::new().post(format!("{admin}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(post(&admin, "/plugins/noop/pause", None), 401);
    assert_eq!(post(&admin, "/plugins/noop/pause", Some("guess")), 403);
    let (code, _, err) = ctl(&admin, &["pause", "noop"]);
    assert_eq!(code, 1, "no token: refused");
    assert!(err.contains("401"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args([
            "ctl", "--admin", &admin, "--token", "s3cret", "pause", "noop",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "noop paused\n");
    assert_eq!(plugin_status(&admin, "noop")["paused"], true);
    let (_, out, _) = ctl(&admin, &["status"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("noop ") && l.contains(" paused ")),
        "{out}"
    );

    // Paused: noop takes nothing while metrics keeps up.
    let more = setup.path("more.ndjson");
    std::fs::write(
        &more,
        std::fs::read_to_string(common::generated_events(setup.dir.path(), 10, 44)).unwrap(),
    )
    .unwrap();
    produce(&brokers, &topic, &more);
    wait_for_zero_lag(&kafka, &["metrics"]);
    let behind = plugboard::source::kafka::group_lag(&kafka, "noop").unwrap();
    assert!(behind > 0);

    // A restart keeps the pause.
    stop(host);
    let (host, admin) = start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(plugin_status(&admin, "noop")["paused"], true);
    assert_eq!(
        plugboard::source::kafka::group_lag(&kafka, "noop").unwrap(),
        behind,
        "a paused plugin took events after a restart"
    );
    let metrics = reqwest::blocking::get(format!("{admin}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("plugboard_plugin_paused{plugin=\"noop\"} 1"),
        "{metrics}"
    );

    // Resumed: it catches up.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(["ctl", "resume", "noop"])
        .env("PLUGBOARD_ADMIN_URL", &admin)
        .env("PLUGBOARD_ADMIN_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for_zero_lag(&kafka, &["metrics", "noop"]);
    assert_eq!(plugin_status(&admin, "noop")["paused"], false);
    stop(host);
}

#[test]
fn without_an_admin_token_there_are_no_write_endpoints() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, _) = stream(&brokers, 1, 2, 45);
    setup.plugin("noop", "noop", "");
    enable_admin(&setup);
    kafka_config(&setup, &brokers, &topic, "notoken");
    let (host, admin) = start_host_with_admin(&setup, "metrics.prom");
    let status = reqwest::blocking::Client::new()
        .post(format!("{admin}/plugins/noop/pause"))
        .bearer_auth("anything")
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
    let (code, _, err) = ctl(&admin, &["--token", "anything", "pause", "noop"]);
    assert_eq!(code, 1);
    assert!(err.contains("admin_token"), "{err}");
    stop(host);
}

/// Names of the threads of process `pid`, by name, from /proc.
fn thread_names(pid: u32) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return names;
    };
    for task in tasks.flatten() {
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            *names.entry(name.trim().to_string()).or_default() += 1;
        }
    }
    names
}

#[test]
fn twenty_plugins_on_twelve_partitions_share_a_bounded_pool_and_each_handles_every_event() {
    let Some(brokers) = brokers() else { return };
    const PLUGINS: usize = 20;
    const WORKERS: usize = 3;
    let (topic, setup, events) = stream(&brokers, 12, 150, 53);
    let names: Vec<String> = (1..=PLUGINS).map(|i| format!("counting-{i:02}")).collect();
    for name in &names {
        setup.plugin(name, "counting", "");
    }
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, &format!("workers = {WORKERS}\n"));
    std::fs::write(&setup.config, text).unwrap();
    let kafka = kafka_config(&setup, &brokers, &topic, "pool");
    let (valid, _) = read_sample(&events);

    let host = start_host(&setup);
    // Threads while it catches up: sampled until every group is at its end.
    let mut most = BTreeMap::new();
    let mut most_total = 0;
    let plugins: Vec<&str> = names.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let threads = thread_names(host.id());
        let total: usize = threads.values().sum();
        if total > most_total {
            most_total = total;
            most = threads;
        }
        let lags: Vec<i64> = plugins
            .iter()
            .map(|p| plugboard::source::kafka::group_lag(&kafka, p).unwrap_or(i64::MAX))
            .collect();
        if lags.iter().all(|l| *l == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag did not reach 0: {lags:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Spare threads, lent while steps waited (on the state store), end
    // once idle: the pool keeps `workers`.
    let pool_threads = |threads: &BTreeMap<String, usize>| {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with("plugboard-worke"))
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    let idle_by = Instant::now() + Duration::from_secs(30);
    while pool_threads(&thread_names(host.id())) != WORKERS {
        assert!(
            Instant::now() < idle_by,
            "spares did not end: {:?}",
            thread_names(host.id())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(host);

    // No thread per partition (240 of them before the pool).
    let per_partition = most
        .keys()
        .filter(|name| {
            name.starts_with("counting-")
                && name
                    .rsplit_once("-p")
                    .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
        })
        .count();
    assert_eq!(per_partition, 0, "threads per partition: {most:?}");
    // What is left grows with plugins (a consumer's own threads) and
    // the spares, not with plugins x partitions.
    assert!(
        most_total <= WORKERS + PLUGINS * 6 + 64,
        "{most_total} threads: {most:?}"
    );

    // Every plugin counted every event, once.
    let db = rusqlite::Connection::open(setup.path(".plugboard/state.sqlite")).unwrap();
    let mut query = db
        .prepare(
            "SELECT plugin, key, value FROM state WHERE scope = ?1 AND bucket = 'counting' AND key LIKE 'n/%'",
        )
        .unwrap();
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let rows = query
        .query_map([&topic], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (plugin, key, value) = row.unwrap();
        let n: u64 = String::from_utf8(value).unwrap().parse().unwrap();
        counts
            .entry(plugin)
            .or_default()
            .insert(key.trim_start_matches("n/").to_string(), n);
    }
    let want: BTreeSet<String> = valid.iter().map(|l| l.event_id.clone()).collect();
    assert_eq!(
        counts.len(),
        PLUGINS,
        "plugins with counts: {:?}",
        counts.keys()
    );
    for (plugin, seen) in &counts {
        let ids: BTreeSet<String> = seen.keys().cloned().collect();
        assert_eq!(ids, want, "{plugin}: events counted");
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "{plugin} counted these more than once: {twice:?}"
        );
    }
}

#[test]
fn with_concurrency_a_partition_has_batches_in_flight_per_key_and_the_result_is_the_same() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, events) = stream(&brokers, 6, 300, 61);
    let (valid, _) = read_sample(&events);

    // The reference: crm-sync over the same events through the file source.
    let reference = Setup::new();
    let reference_crm = Crm::start(&reference.path("crm.db"));
    reference.plugin("crm-sync", "crm-sync", &reference_crm.manifest());
    assert!(reference.run(&events).status.success());

    // crm-sync and the counting plugin with 4 batches of a partition in
    // flight; counting logs what it was offered, in the order it was.
    let crm = Crm::start(&setup.path("crm.db"));
    setup.plugin(
        "crm-sync",
        "crm-sync",
        &format!("concurrency = 4\n{}", crm.manifest()),
    );
    let log = setup.path("deliveries");
    std::fs::create_dir_all(&log).unwrap();
    setup.plugin(
        "counting",
        "counting",
        &format!(
            "concurrency = 4\n[folder]\npath = \"{}\"\nguest_path = \"/out\"\n[limits]\nbatch_size = 20\n[config]\ndir = \"/out\"\n",
            log.display()
        ),
    );
    // data-lake too: each lane merges into files of its own.
    let lake = setup.path("lake");
    setup.plugin(
        "data-lake",
        "data-lake",
        &format!(
            "concurrency = 4\n[folder]\npath = \"{}\"\n[limits]\nbatch_size = 20\n[config]\ndir = \"/data\"\noffsets_per_file = 100\n",
            lake.display()
        ),
    );
    let kafka = kafka_config(&setup, &brokers, &topic, "lanes");
    let host = start_host(&setup);
    wait_for_zero_lag(&kafka, &["crm-sync", "counting", "data-lake"]);
    stop(host);

    // The lake holds every event once, written by four lanes a partition.
    let (files, rows) = read_lake(&lake.join("bookings"));
    assert!(
        files.keys().any(|f| f.contains("-lane3of4.parquet")),
        "{:?}",
        files.keys()
    );
    let mut ids: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    let mut want_ids: Vec<String> = valid.iter().map(|l| l.event_id.clone()).collect();
    want_ids.sort();
    assert_eq!(ids, want_ids, "the lake's rows, once each");

    // The CRM is what one batch at a time makes of the same events.
    let want = reference_crm.properties();
    assert!(!want.is_empty());
    assert_eq!(crm.properties(), want);

    // Every event counted once.
    let data_dir = setup.path(".plugboard");
    for line in &valid {
        assert_eq!(
            counted(&data_dir, &topic, &line.event_id),
            1,
            "{}",
            line.event_id
        );
    }

    // Each booking's events were offered in their order; and batches of
    // one partition were in flight side by side (offsets out of order
    // across keys), which one batch at a time never does.
    let booking: BTreeMap<&str, &str> = valid
        .iter()
        .map(|l| (l.event_id.as_str(), l.booking_id.as_str()))
        .collect();
    let mut interleaved = 0;
    for file in std::fs::read_dir(&log).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        let offered: Vec<(String, i64)> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].to_string(), f[2].parse().unwrap())
            })
            .collect();
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        for (event, offset) in &offered {
            let key = booking[event.as_str()];
            if let Some(before) = last.insert(key, *offset) {
                assert!(
                    before < *offset,
                    "booking {key}: offset {offset} offered after {before}"
                );
            }
        }
        interleaved += offered.windows(2).filter(|w| w[1].1 < w[0].1).count();
    }
    assert!(
        interleaved > 0,
        "every partition's events were offered in offset order: no lanes"
    );
}

#[test]
fn a_reload_that_changes_concurrency_takes_effect_at_once_and_counts_nothing_twice() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 4, 150, 71);
    let log = setup.path("deliveries");
    std::fs::create_dir_all(&log).unwrap();
    let manifest = |concurrency: usize, version: &str| {
        format!(
            "concurrency = {concurrency}\n[folder]\npath = \"{}\"\nguest_path = \"/out\"\n[limits]\nbatch_size = 20\n[config]\ndir = \"/out\"\nversion = \"{version}\"\n",
            log.display()
        )
    };
    setup.plugin("counting", "counting", &manifest(1, "one"));
    let kafka = kafka_config(&setup, &brokers, &topic, "relanes");
    enable_admin(&setup);
    let (host, admin) = start_host_with_admin(&setup, "relanes.prom");
    wait_for_zero_lag(&kafka, &["counting"]);

    // Four lanes from the next batch on, without a rebalance or a restart.
    let reloads = |admin: &str| plugin_status(admin, "counting")["reloads"].as_u64();
    let before = reloads(&admin);
    let toml = setup.plugins.join("counting.toml");
    std::fs::write(&toml, manifest(4, "four")).unwrap();
    wait_until("the new manifest is loaded", || reloads(&admin) > before);
    let second = common::generated_events(setup.dir.path(), 300, 72);
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["counting"]);

    // And back to one while events flow: the lanes' progress carries over.
    let third = common::generated_events(setup.dir.path(), 300, 73);
    produce(&brokers, &topic, &third);
    let before = reloads(&admin);
    std::fs::write(&toml, manifest(1, "one-again")).unwrap();
    wait_until("the manifest is loaded again", || reloads(&admin) > before);
    wait_for_zero_lag(&kafka, &["counting"]);
    stop(host);

    let data_dir = setup.path(".plugboard");
    let mut events = 0;
    for file in [&first, &second, &third] {
        let (valid, _) = read_sample(file);
        for line in &valid {
            assert_eq!(
                counted(&data_dir, &topic, &line.event_id),
                1,
                "{}",
                line.event_id
            );
        }
        events += valid.len();
    }
    assert!(events > 2000, "{events} events");
    assert_eq!(
        stored_number(&setup, "counting", &topic, "counting", "out_of_order"),
        None,
        "no event came after a later one of its booking"
    );

    // The version with four lanes had batches of a partition side by side
    // (offsets out of order), the first one never.
    let mut interleaved: BTreeMap<String, usize> = BTreeMap::new();
    for file in std::fs::read_dir(&log).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (offset, version) = (f[2].parse::<i64>().unwrap(), f[3].to_string());
            if let Some(before) = last.insert(version.clone(), offset)
                && offset < before
            {
                *interleaved.entry(version).or_default() += 1;
            }
        }
    }
    assert_eq!(interleaved.get("one"), None, "{interleaved:?}");
    assert!(
        interleaved.get("four").is_some_and(|n| *n > 0),
        "four lanes never had two batches in flight: {interleaved:?}"
    );
}
