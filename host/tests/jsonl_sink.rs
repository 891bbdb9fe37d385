//! The jsonl-sink plugin on the real component: one JSON line per event,
//! in order, and no line twice whatever is replayed or torn by a crash.

mod common;

use common::{Setup, read_sample, sample_events};
use serde_json::Value;

#[test]
fn every_event_once_as_a_json_line_through_replays_and_a_torn_write() {
    let setup = Setup::new();
    let out = setup.path("out");
    setup.plugin(
        "jsonl-sink",
        "jsonl-sink",
        &format!(
            "[folder]\npath = \"{}\"\n[limits]\nbatch_size = 37\n[config]\ndir = \"/data\"\n",
            out.display()
        ),
    );
    let events = sample_events();
    let run = |what: &str| {
        let result = setup.run(&events);
        assert!(
            result.status.success(),
            "{what}: plugboard run failed:\n{}",
            String::from_utf8_lossy(&result.stdout)
        );
    };
    run("first run");

    // One file for the file source's one partition, `:` made safe.
    let name = events.file_name().unwrap().to_string_lossy().to_string();
    let file = out.join(format!("file_{name}-0.jsonl"));
    let written = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let lines: Vec<Value> = String::from_utf8(written.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (valid, _) = read_sample(&events);
    assert_eq!(lines.len(), valid.len(), "one line per valid event");
    for (line, event) in lines.iter().zip(&valid) {
        assert_eq!(line["source"], format!("file:{name}").as_str());
        assert_eq!(line["offset"], event.number as i64, "in input order");
        assert_eq!(line["event_id"], event.event_id.as_str());
        assert_eq!(line["booking_id"], event.booking_id.as_str());
        assert_eq!(line["version"], event.version);
        assert_eq!(line["state"], event.state.as_str());
        if let Some((currency, amount)) = &event.price {
            assert_eq!(line["price"]["currency_code"], currency.as_str());
            assert_eq!(line["price"]["amount_minor"], *amount);
        }
    }
    assert!(
        lines
            .iter()
            .all(|l| l["occurred_at"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "timestamps in RFC 3339, UTC"
    );

    // A replay of the same events adds nothing.
    run("replay");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "a replay adds no line"
    );

    // A crash that tore the write: the last 20 lines lost, half of the one
    // before cut. The next run cuts the torn line and writes the rest once.
    let keep = written
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .nth_back(20)
        .unwrap();
    let torn = keep + (written[keep..].iter().position(|b| *b == b'\n').unwrap() / 2);
    std::fs::write(&file, &written[..torn]).unwrap();
    run("after a torn write");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        written,
        "the torn line cut, the missing lines written once"
    );
}
