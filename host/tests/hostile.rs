//! Hostile plugins next to a well-behaved one, all in one host: an endless
//! loop, a memory bomb, a trap on every 50th event, a read outside the
//! sandbox, a log flood and a call to a host not granted. Each is contained:
//! the well-behaved plugin handles every event, and each hostile plugin's
//! victims end in the dead-letter file with the right class.

mod common;

use std::collections::BTreeMap;

use common::{Crm, Setup, read_sample};
use serde_json::Value;

#[test]
fn hostile_plugins_are_contained_and_their_neighbour_is_untouched() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 60, 21);
    let (valid, _) = read_sample(&events);
    let victim = valid[10].event_id.clone();
    let crm = Crm::start(&setup.path("crm.db"));
    let fast_retries = "max_attempts = 2\nbackoff_initial_ms = 1\nbackoff_max_ms = 2\n";

    setup
        .plugin("metrics", "metrics", "")
        .plugin(
            "looper",
            "faulty",
            &format!("[limits]\ntimeout_ms = 100\n{fast_retries}[config]\nloop = \"{victim}\"\n"),
        )
        .plugin(
            "bomb",
            "faulty",
            &format!(
                "[limits]\nmemory_limit_mb = 32\n{fast_retries}[config]\nalloc = \"{victim}\"\n"
            ),
        )
        .plugin(
            "trapper",
            "faulty",
            &format!("[limits]\n{fast_retries}[config]\ntrap_every = \"50\"\n"),
        )
        .plugin(
            "snoop",
            "faulty",
            &format!("[config]\nescape = \"{victim}\"\nescape_path = \"/etc/hostname\"\n"),
        )
        .plugin(
            "flood",
            "faulty",
            "[limits]\nlog_lines_per_second = 20\n[config]\nlog_flood = \"50\"\n",
        )
        .plugin(
            "exfil",
            "crm-sync",
            &format!(
                "allow_hosts = [\"http://127.0.0.1:1\"]\n[limits]\n{fast_retries}[config]\nbase_url = \"{}\"\ntoken = \"{}\"\n",
                crm.url, crm.token
            ),
        );

    let out = setup.run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = setup.metrics();
    let handled = |p: &str| {
        prom.get(
            "plugboard_events_total",
            &[("plugin", p), ("outcome", "handled")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        handled("metrics"),
        valid.len() as f64,
        "the neighbour handles everything"
    );

    let mut dead: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in setup.dead_letters() {
        dead.entry(record["plugin"].as_str().unwrap().to_string())
            .or_default()
            .push(record);
    }
    let victim_line = valid[10].number;
    let only_victim = |plugin: &str, class: &str, reason: &str| {
        let records = &dead[plugin];
        assert_eq!(records.len(), 1, "{plugin}: {records:?}");
        assert_eq!(records[0]["line"], victim_line, "{plugin}");
        assert_eq!(records[0]["class"], class, "{plugin}");
        let got = records[0]["reason"].as_str().unwrap();
        assert!(got.contains(reason), "{plugin}: {got}");
        assert_eq!(handled(plugin), valid.len() as f64 - 1.0, "{plugin}");
    };
    only_victim("looper", "timeout", "time budget");
    only_victim("bomb", "trap", "growing memory");
    only_victim("snoop", "rejected", "cannot read /etc/hostname");

    // Every 50th line traps; the rest of each batch is still handled.
    let want: Vec<u64> = valid
        .iter()
        .map(|l| l.number)
        .filter(|n| n % 50 == 0)
        .collect();
    let got: Vec<u64> = dead["trapper"]
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(dead["trapper"].iter().all(|r| r["class"] == "trap"));
    assert_eq!(handled("trapper"), (valid.len() - want.len()) as f64);

    // The flood is cut to the budget and counted; its events are handled.
    assert_eq!(handled("flood"), valid.len() as f64);
    let dropped = prom
        .get("plugboard_plugin_log_dropped_total", &[("plugin", "flood")])
        .unwrap_or(0.0);
    // 50 log lines and 50 printed lines per event, 20 lines/s allowed.
    let written = (valid.len() * 100) as f64;
    assert!(
        dropped > written / 2.0,
        "lines over the budget are dropped: {dropped} of {written}"
    );

    // Nothing reached the CRM the exfil plugin was not granted.
    assert!(crm.all().is_empty());
    assert!(!dead["exfil"].is_empty());
    assert!(
        dead["exfil"]
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("denied"))
    );
}
