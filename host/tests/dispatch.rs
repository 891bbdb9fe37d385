//! Every disposition of a call, through the library as the sources use it:
//! a real component (the `faulty` fixture) in the real runtime, delivered
//! to by `Dispatcher::deliver` and settled by `settle` into the file sink.
//! Each test names the plugin's answer and checks the final outcome of
//! every event, its failure class and attempts, and the counts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard::config::{Limits, PluginSpec};
use plugboard::dead_letter::file::Collected;
use plugboard::dispatch::{Dispatcher, FailureClass, Outcome};
use plugboard::metrics::Metrics;
use plugboard::runtime::Runtime;
use plugboard::runtime::bindings::wit;
use plugboard::settle::settle;
use plugboard::shutdown::Shutdown;
use plugboard::source::file::{Line, read_lines};

/// The `faulty` fixture with `config`, fast backoff, and `max_attempts`.
fn dispatcher(config: &[(&str, &str)], tune: impl FnOnce(&mut Limits)) -> Dispatcher {
    let mut limits = Limits::resolve(&Default::default(), &Default::default());
    limits.backoff_initial = Duration::from_millis(1);
    limits.backoff_max = Duration::from_millis(2);
    limits.max_attempts = 2;
    limits.timeout = Duration::from_millis(300);
    tune(&mut limits);
    let spec = PluginSpec {
        name: "faulty".into(),
        component: common::plugin_wasm("faulty"),
        manifest: None,
        allow_hosts: vec![],
        folder: None,
        limits,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        payload: false,
        extensions: false,
        concurrency: 1,
    };
    let cache = common::target_dir().join("test-cache");
    let runtime = Runtime::new(Some(&cache), Arc::new(Metrics::new())).unwrap();
    let prepared = Arc::new(runtime.prepare(spec).unwrap());
    let instance = prepared.instantiate(Some(0)).unwrap();
    Dispatcher::new(prepared, instance)
}

/// The sample's first `n` lines that decode, and their events.
fn lines(n: usize) -> (Vec<Line>, Vec<wit::Event>) {
    let lines: Vec<Line> = read_lines(&common::sample_events())
        .unwrap()
        .into_iter()
        .filter(|l| plugboard::decode::from_json(&l.text).is_ok())
        .take(n)
        .collect();
    let events = lines
        .iter()
        .map(|l| {
            let event = plugboard::decode::from_json(&l.text).unwrap();
            plugboard::settle::to_wit(l, event, false)
        })
        .collect();
    (lines, events)
}

fn id(event: &wit::Event) -> &str {
    &event.booking.event_id
}

fn class_of(outcome: &Outcome) -> Option<(FailureClass, u32)> {
    match outcome {
        Outcome::Handled => None,
        Outcome::DeadLetter(f) => Some((f.class, f.attempts)),
    }
}

#[test]
fn all_handled_settles_every_event_as_handled() {
    let (_, events) = lines(12);
    let mut d = dispatcher(&[], |_| {});
    let outcomes = d.deliver(&events, &Shutdown::new());
    assert_eq!(outcomes, vec![Outcome::Handled; 12]);
    assert_eq!(d.stats.handled, 12);
}

#[test]
fn a_reject_parks_that_event_alone_on_its_first_delivery() {
    let (_, events) = lines(10);
    let victim = id(&events[4]).to_string();
    let mut d = dispatcher(&[("reject", &victim)], |_| {});
    let outcomes = d.deliver(&events, &Shutdown::new());
    for (i, o) in outcomes.iter().enumerate() {
        let want = (i == 4).then_some((FailureClass::Rejected, 1));
        assert_eq!(class_of(o), want, "event {i}");
    }
    assert_eq!((d.stats.handled, d.stats.dead_lettered), (9, 1));
}

#[test]
fn a_trap_is_found_alone_and_parked_after_max_attempts_its_neighbours_handled() {
    let (_, events) = lines(10);
    let victim = id(&events[6]).to_string();
    let mut d = dispatcher(&[("trap", &victim)], |l| l.max_attempts = 3);
    let outcomes = d.deliver(&events, &Shutdown::new());
    for (i, o) in outcomes.iter().enumerate() {
        let want = (i == 6).then_some((FailureClass::Trap, 3));
        assert_eq!(class_of(o), want, "event {i}");
    }
    let Outcome::DeadLetter(f) = &outcomes[6] else {
        unreachable!()
    };
    assert!(f.reason.contains("trapping on event"), "{}", f.reason);
}

#[test]
fn a_call_past_its_time_budget_is_a_timeout() {
    let (_, events) = lines(3);
    let victim = id(&events[1]).to_string();
    let mut d = dispatcher(&[("loop", &victim)], |_| {});
    let outcomes = d.deliver(&events, &Shutdown::new());
    assert_eq!(class_of(&outcomes[0]), None);
    assert_eq!(class_of(&outcomes[1]), Some((FailureClass::Timeout, 2)));
    assert_eq!(class_of(&outcomes[2]), None);
}

#[test]
fn an_answer_that_breaks_the_contract_is_its_own_class_and_marks_the_version() {
    let (_, events) = lines(5);
    let victim = id(&events[2]).to_string();
    let mut d = dispatcher(&[("overclaim", &victim)], |_| {});
    let outcomes = d.deliver(&events, &Shutdown::new());
    assert_eq!(class_of(&outcomes[2]), Some((FailureClass::Contract, 2)));
    assert_eq!(outcomes.iter().filter(|o| class_of(o).is_none()).count(), 4);
    let faulty = d.prepared().faulty.lock().unwrap().clone();
    assert!(faulty.is_some_and(|r| r.contains("answer `all`")));
}

#[test]
fn a_retry_holds_until_retry_timeout_then_parks_only_that_event() {
    let (_, events) = lines(6);
    let victim = id(&events[3]).to_string();
    let mut d = dispatcher(&[("retry", &victim)], |l| {
        l.retry_timeout = Some(Duration::from_millis(150));
    });
    let began = Instant::now();
    let outcomes = d.deliver(&events, &Shutdown::new());
    assert!(began.elapsed() >= Duration::from_millis(150));
    for (i, o) in outcomes.iter().enumerate() {
        let class = class_of(o).map(|(c, _)| c);
        let want = (i == 3).then_some(FailureClass::RetriesExhausted);
        assert_eq!(class, want, "event {i}");
    }
    assert!(d.stats.retried > 1);
}

#[test]
fn a_retry_without_a_timeout_holds_until_stopped_and_settles_only_what_came_before() {
    let (_, events) = lines(6);
    let victim = id(&events[2]).to_string();
    let mut d = dispatcher(&[("retry", &victim)], |_| {});
    let stop = Shutdown::new();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stopper.request();
    });
    let outcomes = d.deliver(&events, &stop);
    assert_eq!(outcomes, vec![Outcome::Handled; 2], "nothing past the hold");
    let holds = d.prepared().metrics().holds.snapshot();
    assert!(holds.is_empty(), "the hold ends with the stop: {holds:?}");
}

#[test]
fn settle_parks_undecodable_lines_once_and_counts_the_settled_prefix() {
    let (mut good, _) = lines(4);
    // A line that does not decode, between good ones.
    good.insert(
        2,
        Line {
            number: 999,
            text: "{not json".into(),
            source: good[0].source.clone(),
        },
    );
    let victim = plugboard::decode::from_json(&good[3].text)
        .unwrap()
        .event_id;
    let sink = Collected::default();
    let mut d = dispatcher(&[("reject", &victim)], |_| {});
    let settled = settle(&mut d, &good, &sink, &Shutdown::new());
    assert_eq!(settled, 5);
    // A second plugin meets the same bad line: still recorded once.
    let mut other = dispatcher(&[], |_| {});
    assert_eq!(settle(&mut other, &good, &sink, &Shutdown::new()), 5);
    assert_eq!(sink.decode_failures(), 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dead.ndjson");
    sink.write(&file).unwrap();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["plugin"].as_str().unwrap(),
                r["class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (good[3].number, "faulty", "rejected"),
            (999, "decode", "decode")
        ]
    );
}

/// The `counting` fixture with `config`, its state in `dir`, its
/// deliveries logged to `dir/out`; `payload` as its manifest would say.
fn counting(
    dir: &std::path::Path,
    config: &[(&str, &str)],
    payload: bool,
    tune: impl FnOnce(&mut Limits),
) -> Arc<plugboard::runtime::Prepared> {
    let mut limits = Limits::resolve(&Default::default(), &Default::default());
    limits.backoff_initial = Duration::from_millis(1);
    limits.backoff_max = Duration::from_millis(5);
    limits.max_attempts = 2;
    tune(&mut limits);
    let mut config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.insert("dir".into(), "/out".into());
    let spec = PluginSpec {
        name: "counting".into(),
        component: common::plugin_wasm("counting"),
        manifest: None,
        allow_hosts: vec![],
        folder: Some(plugboard::config::FolderGrant {
            host_path: dir.join("out"),
            guest_path: "/out".into(),
            read_only: false,
        }),
        limits,
        config,
        payload,
        extensions: false,
        concurrency: 1,
    };
    let cache = common::target_dir().join("test-cache");
    let db = plugboard::runtime::kv::StateDb::open(&dir.join("state.sqlite")).unwrap();
    let runtime = Runtime::new(Some(&cache), Arc::new(Metrics::new()))
        .unwrap()
        .with_state(db, "file:test");
    Arc::new(runtime.prepare(spec).unwrap())
}

/// The counting plugin's `n/<event_id>` values, from its state file.
fn counts(dir: &std::path::Path) -> BTreeMap<String, u64> {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT key, value FROM state WHERE plugin = 'counting' AND bucket = 'counting' AND key LIKE 'n/%'",
        )
        .unwrap();
    stmt.query_map([], |row| {
        let value: Vec<u8> = row.get(1)?;
        Ok((
            row.get::<_, String>(0)?,
            String::from_utf8(value).unwrap().parse().unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .filter_map(|(k, v)| Some((k.strip_prefix("n/")?.to_string(), v)))
    .collect()
}

/// Every delivery the counting plugin logged: (event id, version, payload).
fn deliveries(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for file in std::fs::read_dir(dir.join("out")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            all.push((f[0].to_string(), f[3].to_string(), f[4].to_string()));
        }
    }
    all
}

/// A dead-letter sink that refuses its first `refusals` records, as a
/// topic does while a revoke or a stop cuts its writes short.
#[derive(Default)]
struct Refusing {
    refusals: std::sync::atomic::AtomicUsize,
    parked: std::sync::Mutex<Vec<(u64, String, String)>>,
}

impl plugboard::dead_letter::DeadLetters<Line> for Refusing {
    fn park(
        &self,
        line: &Line,
        failure: &plugboard::dispatch::Failure,
        version: &plugboard::runtime::Prepared,
        _stop: &Shutdown,
    ) -> bool {
        use std::sync::atomic::Ordering;
        let left = self.refusals.load(Ordering::SeqCst);
        if left > 0 {
            self.refusals.store(left - 1, Ordering::SeqCst);
            return false;
        }
        self.parked.lock().unwrap().push((
            line.number,
            failure.class.as_str().to_string(),
            version.spec.config["version"].clone(),
        ));
        true
    }
}

#[test]
fn state_never_runs_past_a_dead_letter_that_could_not_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, events) = lines(10);
    let victim = id(&events[3]).to_string();
    let prepared = counting(
        dir.path(),
        &[("reject", &victim), ("version", "1")],
        false,
        |_| {},
    );
    let live = Arc::new(plugboard::catalog::LivePlugin::new(prepared.clone()));
    let mut d = Dispatcher::lazy(live, 0);
    let sink = Refusing::default();
    sink.refusals.store(1, std::sync::atomic::Ordering::SeqCst);
    // The dead letter of event 3 is cut short: only what came before it is
    // settled, and nothing after it has reached the plugin's state.
    assert_eq!(settle(&mut d, &lines, &sink, &Shutdown::new()), 3);
    let state = counts(dir.path());
    let handled: Vec<&str> = events[..3].iter().map(id).collect();
    assert_eq!(
        state.keys().map(String::as_str).collect::<Vec<_>>().len(),
        3
    );
    for id in &handled {
        assert_eq!(state.get(*id), Some(&1), "{id}");
    }
    // The next owner starts at the first unsettled record: every event ends
    // counted exactly once, the rejected one parked once.
    let mut next = Dispatcher::lazy(
        Arc::new(plugboard::catalog::LivePlugin::new(prepared.clone())),
        0,
    );
    assert_eq!(settle(&mut next, &lines[3..], &sink, &Shutdown::new()), 7);
    let state = counts(dir.path());
    for (i, event) in events.iter().enumerate() {
        let want = if i == 3 { None } else { Some(&1) };
        assert_eq!(state.get(id(event)), want, "event {i}");
    }
    let parked = sink.parked.lock().unwrap().clone();
    assert_eq!(
        parked,
        vec![(lines[3].number, "rejected".into(), "1".into())]
    );
    let prom = common::Prom(prepared.metrics().render());
    assert_eq!(
        prom.get("counting_handled_total", &[("plugin", "counting")]),
        Some(9.0),
        "counted once per handled event"
    );
}

#[test]
fn a_fixed_version_dropped_in_while_an_event_keeps_trapping_ends_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, events) = lines(8);
    let broken = counting(
        dir.path(),
        &[("trap_all", "yes"), ("version", "broken")],
        false,
        |l| {
            l.max_attempts = 1000;
            l.backoff_initial = Duration::from_millis(10);
            l.backoff_max = Duration::from_millis(10);
        },
    );
    // The fix also asks for the payload: no event may reach it without.
    let fixed = counting(dir.path(), &[("version", "fixed")], true, |_| {});
    let live = Arc::new(plugboard::catalog::LivePlugin::new(broken));
    let mut d = Dispatcher::lazy(live.clone(), 0);
    let swap = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        live.swap(fixed);
    });
    let sink = Refusing::default();
    let began = Instant::now();
    assert_eq!(settle(&mut d, &lines, &sink, &Shutdown::new()), 8);
    swap.join().unwrap();
    assert!(began.elapsed() < Duration::from_secs(20));
    assert!(sink.parked.lock().unwrap().is_empty(), "nothing parked");
    let state = counts(dir.path());
    for event in &events {
        assert_eq!(state.get(id(event)), Some(&1), "{}", id(event));
    }
    let seen = deliveries(dir.path());
    assert!(seen.iter().any(|(_, v, _)| v == "broken"));
    for (event, version, payload) in &seen {
        if version == "fixed" {
            assert_ne!(
                payload, "-",
                "{event} reached the fixed version without its payload"
            );
        } else {
            assert_eq!(payload, "-", "{event}");
        }
    }
}

#[test]
fn a_plugin_that_writes_state_without_end_fails_that_event_alone_as_budget() {
    let (lines, events) = lines(5);
    let victim = id(&events[2]).to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::resolve(&Default::default(), &Default::default());
    limits.memory_limit_bytes = 8 << 20;
    limits.max_attempts = 2;
    limits.backoff_initial = Duration::from_millis(1);
    limits.backoff_max = Duration::from_millis(2);
    let spec = PluginSpec {
        name: "faulty".into(),
        component: common::plugin_wasm("faulty"),
        manifest: None,
        allow_hosts: vec![],
        folder: None,
        limits,
        config: [("kv_flood".to_string(), victim.clone())].into(),
        payload: false,
        extensions: false,
        concurrency: 1,
    };
    let cache = common::target_dir().join("test-cache");
    let db = plugboard::runtime::kv::StateDb::open(&dir.path().join("state.sqlite")).unwrap();
    let runtime = Runtime::new(Some(&cache), Arc::new(Metrics::new()))
        .unwrap()
        .with_state(db, "file:test");
    let prepared = Arc::new(runtime.prepare(spec).unwrap());
    let instance = prepared.instantiate(Some(0)).unwrap();
    let mut d = Dispatcher::new(prepared, instance);
    let sink = Collected::default();
    assert_eq!(settle(&mut d, &lines, &sink, &Shutdown::new()), 5);
    let file = dir.path().join("dead.ndjson");
    sink.write(&file).unwrap();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["class"], "budget");
    assert_eq!(records[0]["line"], lines[2].number);
    let reason = records[0]["reason"].as_str().unwrap();
    assert!(reason.contains("over its budget"), "{reason}");
    assert_eq!(d.stats.handled, 4);
    // Nothing of the flood was kept.
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let kept: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM state WHERE bucket = 'flood'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 0);
}

#[test]
fn a_reason_of_any_size_is_cut_to_the_dead_letter_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, events) = lines(3);
    let victim = id(&events[1]).to_string();
    let prepared = counting(
        dir.path(),
        &[
            ("reject", &victim),
            ("reason_bytes", "3000000"),
            ("version", "1"),
        ],
        false,
        |_| {},
    );
    let instance = prepared.instantiate(Some(0)).unwrap();
    let mut d = Dispatcher::new(prepared, instance);
    let outcomes = d.deliver(
        &lines
            .iter()
            .map(|l| {
                plugboard::settle::to_wit(l, plugboard::decode::from_json(&l.text).unwrap(), false)
            })
            .collect::<Vec<_>>(),
        &Shutdown::new(),
    );
    let Outcome::DeadLetter(f) = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    assert!(f.reason.len() <= plugboard::dead_letter::MAX_REASON_BYTES);
    assert!(f.reason.starts_with(&format!("counting rejects {victim}")));
    assert!(f.reason.contains("more bytes]"), "says it was cut");
}
