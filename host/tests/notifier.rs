//! garage-notifier in each language (Rust, JavaScript, Python, Go) over the
//! same events, each posting to a real local HTTP
//! server: the requests must be identical, and exactly the reminders the
//! events call for. Languages come from PLUGBOARD_TEST_LANGS, like the
//! template test; Rust always runs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Setup, sample_events};
use serde_json::Value;

/// One request the webhook received.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    method: String,
    content_type: String,
    idempotency_key: String,
    body: Value,
}

/// A real HTTP server that records every request by path and answers 200.
struct Webhook {
    url: String,
    received: Arc<Mutex<BTreeMap<String, Vec<Received>>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use axum::extract::Request;
        let received: Arc<Mutex<BTreeMap<String, Vec<Received>>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let store = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(move |request: Request| {
                    let store = store.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                        let header = |name: &str| {
                            parts
                                .headers
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default()
                        };
                        store
                            .lock()
                            .unwrap()
                            .entry(parts.uri.path().to_string())
                            .or_default()
                            .push(Received {
                                method: parts.method.to_string(),
                                content_type: header("content-type"),
                                idempotency_key: header("idempotency-key"),
                                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                            });
                        "{}"
                    }
                });
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Webhook { url, received }
    }
}

/// Rust's notifier, then those of `others` that PLUGBOARD_TEST_LANGS lists:
/// (language, component).
fn languages(others: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    let mut languages = vec![("rust", "garage-notifier")];
    let listed = std::env::var("PLUGBOARD_TEST_LANGS").unwrap_or_default();
    for (lang, component) in [
        ("js", "garage-notifier-js"),
        ("python", "garage-notifier-py"),
        ("go", "garage-notifier-go"),
    ] {
        if !others.contains(&lang) {
            continue;
        }
        if listed.split(',').any(|l| l == lang) {
            languages.push((lang, component));
        } else {
            common::skip(
                &format!("the {lang} notifier"),
                "not in PLUGBOARD_TEST_LANGS (scripts/test.sh lists every language)",
            );
        }
    }
    languages
}

#[test]
fn the_notifier_sends_identical_requests_in_every_language() {
    let languages = languages(&["js", "python", "go"]);
    let webhook = Webhook::start();
    let setup = Setup::new();
    for (lang, component) in &languages {
        setup.plugin(
            &format!("notifier-{lang}"),
            component,
            &format!(
                "allow_hosts = [\"{url}\"]\n[config]\nwebhook_url = \"{url}/hooks/{lang}\"\n",
                url = webhook.url
            ),
        );
    }
    let out = setup.run(&sample_events());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // What the events call for: one reminder per upcoming event (a
    // replayed duplicate is sent again, with the same idempotency key).
    let text = std::fs::read_to_string(sample_events()).unwrap();
    let (valid, _) = common::read_sample(&sample_events());
    let upcoming: Vec<&common::Line> = valid.iter().filter(|l| l.state == "upcoming").collect();
    assert!(upcoming.len() > 10, "the sample has upcoming bookings");
    let lines: Vec<&str> = text.lines().collect();

    let received = webhook.received.lock().unwrap().clone();
    let reference = &received[&format!("/hooks/{}", languages[0].0)];
    assert_eq!(
        reference.len(),
        upcoming.len(),
        "one request per upcoming event"
    );
    for (got, line) in reference.iter().zip(&upcoming) {
        let event: Value = serde_json::from_str(lines[line.number as usize - 1]).unwrap();
        assert_eq!(got.method, "POST");
        assert_eq!(got.content_type, "application/json");
        assert_eq!(got.idempotency_key, line.event_id);
        assert_eq!(got.body["booking_id"], event["bookingId"]);
        assert_eq!(got.body["garage_id"], event["garage"]["garageId"]);
        assert_eq!(got.body["customer_name"], event["customer"]["name"]);
        let start = event["appointmentStart"].as_str().unwrap();
        // The file says +00:00; the reminder says Z, in whole seconds.
        assert_eq!(
            got.body["appointment_start"].as_str().unwrap(),
            format!("{}Z", &start[..19]),
        );
    }
    for (lang, _) in &languages[1..] {
        assert_eq!(
            &received[&format!("/hooks/{lang}")],
            reference,
            "{lang} sends what Rust sends"
        );
    }
}

/// Per language, the dead letters of its notifier, once it is checked
/// that each parked every reminder the events call for.
fn parked_reminders(
    setup: &Setup,
    events: &std::path::Path,
    languages: &[(&'static str, &'static str)],
) -> Vec<(&'static str, Vec<Value>)> {
    let (valid, _) = common::read_sample(events);
    let upcoming = valid.iter().filter(|l| l.state == "upcoming").count();
    assert!(upcoming > 0);
    let dead = setup.dead_letters();
    languages
        .iter()
        .map(|(lang, _)| {
            let mine: Vec<Value> = dead
                .iter()
                .filter(|r| r["plugin"] == format!("notifier-{lang}").as_str())
                .cloned()
                .collect();
            assert_eq!(mine.len(), upcoming, "{lang}: every reminder parked");
            (*lang, mine)
        })
        .collect()
}

#[test]
fn a_notifier_the_host_denies_rejects_instead_of_waiting_forever() {
    // A request to an origin not granted can never succeed: retrying would
    // hold the partition until someone grants it.
    let languages = languages(&["js", "python", "go"]);
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 20, 3);
    for (lang, component) in &languages {
        // Nothing granted; a regression parks as retries-exhausted quickly.
        setup.plugin(
            &format!("notifier-{lang}"),
            component,
            "[limits]\nretry_timeout_ms = 500\nbackoff_max_ms = 50\n[config]\nwebhook_url = \"http://127.0.0.1:9/hooks\"\n",
        );
    }
    let out = setup.run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (lang, mine) in parked_reminders(&setup, &events, &languages) {
        for r in &mine {
            assert_eq!(r["class"], "rejected", "{lang}: {r}");
            assert!(
                r["reason"].as_str().unwrap().contains("denied"),
                "{lang}: {r}"
            );
        }
    }
}

#[test]
fn a_notifier_whose_endpoint_never_answers_is_bounded_by_its_time_budget() {
    // The guest libraries ask for no timeout (wasi-http's default is 600 s):
    // the host's time budget must end every request, in every language.
    let languages = languages(&["js", "python", "go"]);
    let setup = Setup::new();
    let url = common::black_hole();
    let events = common::generated_events(setup.dir.path(), 6, 5);
    for (lang, component) in &languages {
        setup.plugin(
            &format!("notifier-{lang}"),
            component,
            &format!(
                "allow_hosts = [\"{url}\"]\n[limits]\ntimeout_ms = 400\nretry_timeout_ms = 1000\nbackoff_max_ms = 100\n[config]\nwebhook_url = \"{url}/hooks\"\n"
            ),
        );
    }
    let began = std::time::Instant::now();
    let out = setup.run(&events);
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("every reminder of every language ended in {took:.1?}");
    for (lang, mine) in parked_reminders(&setup, &events, &languages) {
        for r in &mine {
            // Either the request's own timeout (a retry, until
            // retry_timeout_ms) or the call's budget ended it.
            assert!(
                r["class"] == "retries-exhausted" || r["class"] == "timeout",
                "{lang}: {r}"
            );
        }
    }
}
