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
