//! Operating a running group of hosts through the control API and
//! `plugboard ctl`, against the real broker and the counting plugin (which
//! counts every delivery, so a lost or repeated event shows): a pause asked
//! of one host holds on the other, a redrive delivers dead letters again
//! exactly once each, and rewinds by time and to the start move the group
//! on both hosts while they run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::Setup;
use common::kafka::*;

const TOKEN: &str = "op-s3cret";

/// `plugboard ctl` with the token; exit code, stdout, stderr.
fn ctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    ctl_with(admin, TOKEN, args)
}

/// A host on `config` with the admin token, metrics written to `metrics`.
fn start(setup: &Setup, config: &Path, metrics: &str) -> (Host, String) {
    start_with_token(setup, config, metrics, TOKEN)
}

/// `n/<id>` of the counting plugin, added up over the hosts' state files.
fn counted(data_dirs: &[&Path], topic: &str, id: &str) -> u64 {
    data_dirs
        .iter()
        .filter_map(|dir| {
            let db = rusqlite::Connection::open(dir.join("state.sqlite")).ok()?;
            db.query_row(
                "SELECT value FROM state WHERE plugin = 'counting' AND scope = ?1 AND bucket = 'counting' AND key = ?2",
                [topic, &format!("n/{id}")],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .ok()
            .map(|v| String::from_utf8(v).unwrap().parse::<u64>().unwrap())
        })
        .sum()
}

fn metric(admin: &str, line: &str) -> bool {
    reqwest::blocking::get(format!("{admin}/metrics"))
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .any(|l| l == line)
}

#[test]
fn pause_redrive_and_rewind_one_plugin_of_a_group_spread_over_two_hosts() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 4, 15, 61);
    let first_ids = common::event_ids(&first);
    let rejected = [first_ids[3].clone(), first_ids[11].clone()];
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = |reject: &str| {
        format!(
            "[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\nreject = \"{reject}\"\n",
            out.display()
        )
    };
    setup
        .plugin("counting", "counting", &manifest(&rejected.join(",")))
        .plugin("noop", "noop", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "operate");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "admin_token = \"${TEST_ADMIN_TOKEN}\"\n");
    std::fs::write(&setup.config, &text).unwrap();
    // Host b keeps its own data folder: it learns of a pause only
    // through the control topic.
    let config_b = setup.path("plugboard-b.toml");
    std::fs::write(&config_b, format!("data_dir = \"b-data\"\n{text}")).unwrap();
    let (dir_a, dir_b) = (setup.path(".plugboard"), setup.path("b-data"));
    let dirs = [dir_a.as_path(), dir_b.as_path()];

    let (a, a_admin) = start(&setup, &setup.config, "a.prom");
    let (b, b_admin) = start(&setup, &config_b, "b.prom");
    wait_for_zero_lag(&kafka, &["counting", "noop"]);
    let dlq = format!("{topic}.dlq.counting");
    assert_eq!(
        read_topic(&brokers, &dlq, 2).len(),
        2,
        "the two rejects parked"
    );

    // A pause asked of a holds on b too; noop goes on meanwhile.
    let (code, said, err) = ctl(&a_admin, &["pause", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    wait_until("b sees the pause", || {
        plugin_status(&b_admin, "counting")["paused"] == true
    });
    std::thread::sleep(Duration::from_millis(1500));
    let since = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let second = common::generated_events(setup.dir.path(), 8, 62);
    let second_ids = common::event_ids(&second);
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["noop"]);
    std::thread::sleep(Duration::from_secs(2));
    let behind = plugboard::source::kafka::group_lag(&kafka, "counting").unwrap();
    assert_eq!(
        behind,
        second_ids.len() as i64,
        "a paused plugin took events"
    );
    let (code, said, err) = ctl(&b_admin, &["resume", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    wait_for_zero_lag(&kafka, &["counting"]);
    for id in first_ids.iter().chain(&second_ids) {
        let want = u64::from(!rejected.contains(id));
        assert_eq!(counted(&dirs, &topic, id), want, "{id} before any replay");
    }

    // A redrive while the plugin still rejects them: both parked again,
    // their attempts added up, naming the record they came from.
    let (code, said, err) = ctl(&b_admin, &["redrive", "counting", "--class", "rejected"]);
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains("handled 0, parked again 2"), "{said}");
    assert!(err.contains("read 2"), "progress is shown: {err}");
    let letters = read_topic(&brokers, &dlq, 4);
    assert_eq!(letters.len(), 4, "{letters:?}");
    for again in &letters[2..] {
        assert!(again["plugboard.redrive-of"].contains('/'), "{again:?}");
        assert_eq!(again["plugboard.attempts"], "2", "{again:?}");
        assert_eq!(again["plugboard.redrives"], "1");
    }
    // A filter that matches nothing takes nothing.
    let (code, said, _) = ctl(&a_admin, &["redrive", "counting", "--class", "trap"]);
    assert_eq!(code, 0);
    assert!(said.contains("read 0"), "{said}");

    // Fixed: the next redrive takes only what is still parked, once.
    std::fs::write(setup.plugins.join("counting.toml"), manifest("")).unwrap();
    wait_until("the fixed version serves", || {
        plugin_status(&a_admin, "counting")["reloads"].as_u64() >= Some(1)
            && plugin_status(&b_admin, "counting")["reloads"].as_u64() >= Some(1)
    });
    let (code, said, err) = ctl(&a_admin, &["redrive", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains("read 2, handled 2, parked again 0"), "{said}");
    for id in &rejected {
        assert_eq!(counted(&dirs, &topic, id), 1, "{id} redriven once");
    }
    let (code, said, _) = ctl(&a_admin, &["redrive", "counting"]);
    assert_eq!(code, 0);
    assert!(said.contains("read 0"), "nothing is redriven twice: {said}");
    assert!(metric(
        &a_admin,
        "plugboard_redriven_total{outcome=\"handled\",plugin=\"counting\"} 2"
    ));

    // Rewound by time: the second batch again, on both hosts.
    let (code, said, err) = ctl(&a_admin, &["rewind", "counting", "--to", &since]);
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains("rewound to"), "{said}");
    wait_for_zero_lag(&kafka, &["counting"]);
    wait_until("the second batch is counted again", || {
        second_ids.iter().all(|id| counted(&dirs, &topic, id) == 2)
    });
    for id in &first_ids {
        assert_eq!(counted(&dirs, &topic, id), 1, "{id} is before the time");
    }
    // To the start: everything once more, noop untouched.
    let noop_before =
        plugboard::source::kafka::group_offsets(&kafka, "noop", Duration::from_secs(5)).unwrap();
    let (code, said, err) = ctl(
        &b_admin,
        &["--json", "rewind", "counting", "--to", "earliest"],
    );
    assert_eq!(code, 0, "{said}{err}");
    let moved: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(moved["partitions"].as_array().unwrap().len(), 4);
    assert!(
        moved["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["after"] == 0)
    );
    wait_for_zero_lag(&kafka, &["counting"]);
    wait_until("everything is counted once more", || {
        first_ids.iter().all(|id| counted(&dirs, &topic, id) == 2)
            && second_ids.iter().all(|id| counted(&dirs, &topic, id) == 3)
    });
    let noop_after =
        plugboard::source::kafka::group_offsets(&kafka, "noop", Duration::from_secs(5)).unwrap();
    assert_eq!(
        noop_before.iter().map(|p| p.committed).collect::<Vec<_>>(),
        noop_after.iter().map(|p| p.committed).collect::<Vec<_>>(),
        "another plugin's group is not moved"
    );
    let rewinds = |admin: &str| metric(admin, "plugboard_rewinds_total{plugin=\"counting\"} 1");
    assert!(
        rewinds(&a_admin) && rewinds(&b_admin),
        "each host counts the rewind it carried out"
    );

    // What cannot be done is refused, and nothing moves.
    let (code, _, err) = ctl(&a_admin, &["rewind", "counting", "--to", "0=100000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("keeps offsets"), "{err}");
    let (code, _, err) = ctl(&a_admin, &["rewind", "counting", "--to", "0=x"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ctl(&a_admin, &["rewind", "counting", "--to", "last tuesday"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = ctl(&a_admin, &["redrive", "counting", "--class", "oops"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("retries-exhausted"), "{err}");

    a.stop();
    b.stop();
    let delivered: usize = std::fs::read_dir(&out)
        .unwrap()
        .map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    let counts: BTreeMap<&str, u64> = first_ids
        .iter()
        .chain(&second_ids)
        .map(|id| (id.as_str(), counted(&dirs, &topic, id)))
        .collect();
    eprintln!("{delivered} deliveries; counts {counts:?}");
}

/// The latest redrive of `plugin` as the host at `admin` sees it.
fn redrive_progress(admin: &str, plugin: &str) -> serde_json::Value {
    reqwest::blocking::get(format!("{admin}/plugins/{plugin}/redrive"))
        .ok()
        .and_then(|r| r.json().ok())
        .unwrap_or_default()
}

/// Starts a redrive of counting without waiting; its id.
fn start_redrive(admin: &str) -> serde_json::Value {
    let (code, said, err) = ctl(admin, &["--json", "redrive", "counting", "--no-wait"]);
    assert_eq!(code, 0, "{said}{err}");
    let started: serde_json::Value = serde_json::from_str(&said).unwrap();
    started["id"].clone()
}

#[test]
fn a_redrive_stopped_or_killed_midway_goes_on_after_a_restart_without_losing_or_parking_twice() {
    let Some(brokers) = brokers() else { return };
    let (topic, setup, first) = stream(&brokers, 2, 6, 71);
    let first_ids = common::event_ids(&first);
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = |reject: &[String], sleep_ms: u32| {
        format!(
            "[folder]\npath = \"{}\"\n[config]\ndir = \"/data\"\nreject = \"{}\"\nsleep_ms = \"{sleep_ms}\"\n",
            out.display(),
            reject.join(",")
        )
    };
    setup.plugin("counting", "counting", &manifest(&first_ids, 0));
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "redrive");
    // Its versions reject on purpose, more than the ones they replace:
    // no rollback here, so their dead letters stay for the redrives.
    append_config(&setup, "\n[reload]\nrollback = false\n");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "admin_token = \"${TEST_ADMIN_TOKEN}\"\n");
    std::fs::write(&setup.config, &text).unwrap();
    let dirs = [setup.path(".plugboard")];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let dlq = format!("{topic}.dlq.counting");
    let manifest_file = setup.plugins.join("counting.toml");

    let (host, admin) = start(&setup, &setup.config, "a.prom");
    wait_for_zero_lag(&kafka, &["counting"]);
    assert_eq!(
        read_topic(&brokers, &dlq, first_ids.len()).len(),
        first_ids.len()
    );
    // Fixed, and slow: 150 ms an event.
    std::fs::write(&manifest_file, manifest(&[], 150)).unwrap();
    wait_until("the fixed version serves", || {
        plugin_status(&admin, "counting")["reloads"].as_u64() >= Some(1)
    });
    let id = start_redrive(&admin);
    wait_until("a few are redriven", || {
        let p = redrive_progress(&admin, "counting");
        p["id"] == id && p["handled"].as_u64() >= Some(3)
    });
    // SIGTERM: the record in flight ends, the rest waits for the restart.
    host.stop();
    let (host, admin) = start(&setup, &setup.config, "b.prom");
    wait_until("the redrive goes on and ends", || {
        let p = redrive_progress(&admin, "counting");
        p["id"] == id && p["state"] == "done"
    });
    let progress = redrive_progress(&admin, "counting");
    assert_eq!(progress["read"], first_ids.len(), "{progress}");
    assert_eq!(progress["handled"], first_ids.len(), "{progress}");
    assert_eq!(progress["remaining"], 0, "{progress}");
    for id in &first_ids {
        assert_eq!(counted(&dirs, &topic, id), 1, "{id}: once, across the stop");
    }

    // Killed: nothing lost, nothing parked twice, at most one delivered twice.
    let second = common::generated_events(setup.dir.path(), 6, 72);
    let second_ids = common::event_ids(&second);
    let reloads = |admin: &str| plugin_status(admin, "counting")["reloads"].as_u64();
    let before = reloads(&admin);
    std::fs::write(&manifest_file, manifest(&second_ids, 0)).unwrap();
    wait_until("the rejecting version serves", || reloads(&admin) > before);
    produce(&brokers, &topic, &second);
    wait_for_zero_lag(&kafka, &["counting"]);
    let parked = first_ids.len() + second_ids.len();
    assert_eq!(read_topic(&brokers, &dlq, parked).len(), parked);
    // Half of them fail again: they are parked again, once each.
    let still: Vec<String> = second_ids.iter().step_by(2).cloned().collect();
    let before = reloads(&admin);
    std::fs::write(&manifest_file, manifest(&still, 150)).unwrap();
    wait_until("the half-fixed version serves", || reloads(&admin) > before);
    let id = start_redrive(&admin);
    wait_until("a few are redriven", || {
        let p = redrive_progress(&admin, "counting");
        p["id"] == id
            && p["handled"].as_u64().unwrap_or(0) + p["parked_again"].as_u64().unwrap_or(0) >= 3
    });
    host.kill();
    let (host, admin) = start(&setup, &setup.config, "c.prom");
    wait_until("the redrive goes on and ends", || {
        let p = redrive_progress(&admin, "counting");
        p["id"] == id && p["state"] == "done"
    });
    let progress = redrive_progress(&admin, "counting");
    assert_eq!(progress["read"], second_ids.len(), "{progress}");
    assert_eq!(progress["parked_again"], still.len(), "{progress}");
    let letters = read_topic(&brokers, &dlq, parked + still.len());
    assert_eq!(
        letters.len(),
        parked + still.len(),
        "parked again once each"
    );
    let mut twice = 0;
    for id in second_ids.iter().filter(|id| !still.contains(id)) {
        let n = counted(&dirs, &topic, id);
        assert!(n >= 1, "{id} lost");
        twice += n - 1;
    }
    assert!(twice <= 1, "{twice} delivered twice");
    eprintln!("after SIGKILL mid-redrive: {twice} delivered twice");

    // A dead letter a later version made obsolete is skipped, and counted.
    let line = std::fs::read_to_string(common::generated_events(setup.dir.path(), 1, 73)).unwrap();
    let event = plugboard::decode::from_json(line.lines().next().unwrap()).unwrap();
    let mut headers = rdkafka::message::OwnedHeaders::new();
    for (key, value) in [
        ("plugboard.failure-class", "rejected"),
        ("plugboard.original-topic", topic.as_str()),
        ("plugboard.original-partition", "0"),
        ("plugboard.original-offset", "0"),
        ("plugboard.superseded", "by version 2"),
    ] {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: Some(value),
        });
    }
    {
        use prost::Message as _;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let payload = event.encode_to_vec();
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&dlq)
                    .payload(&payload)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }
    let (code, said, err) = ctl(&admin, &["redrive", "counting"]);
    assert_eq!(code, 0, "{said}{err}");
    // What still fails was parked again and is taken again; the letters
    // it came from are not.
    let n = still.len();
    assert!(
        said.contains(&format!("read {n}, handled 0, parked again {n}, skipped 1")),
        "{said}"
    );
    assert_eq!(
        counted(&dirs, &topic, &event.event_id),
        0,
        "a superseded letter is not delivered"
    );
    host.stop();
}
