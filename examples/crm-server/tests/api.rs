//! The example CRM over real HTTP: the HubSpot-shaped subset crm-sync uses,
//! and HubSpot-shaped errors for bad requests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::blocking::Client;
use serde_json::{Value, json};

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    // Port 0 and the address the server prints: no race for a free port.
    let mut child = Command::new(env!("CARGO_BIN_EXE_crm-example"))
        .args(["--listen", "127.0.0.1:0", "--token", "secret", "--db"])
        .arg(dir.path().join("crm.db"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("crm-example did not start: {line:?}"));
    Server {
        child,
        url: format!("{base}/crm/v3/objects/bookings"),
        _dir: dir,
    }
}

fn upsert(client: &Client, url: &str, id: &str, version: u32) -> reqwest::blocking::Response {
    client
        .post(format!("{url}/batch/upsert"))
        .bearer_auth("secret")
        .json(&json!({"inputs": [{"idProperty": "booking_id", "id": id,
            "properties": {"booking_state": "paid", "booking_version": version}}]}))
        .send()
        .unwrap()
}

#[test]
fn upsert_read_and_page_like_hubspot() {
    let server = start();
    let client = Client::new();
    for i in 0..25 {
        assert_eq!(
            upsert(&client, &server.url, &format!("b-{i:02}"), 1).status(),
            200
        );
    }
    // An upsert of an existing id updates it in place.
    let updated: Value = upsert(&client, &server.url, "b-03", 2).json().unwrap();
    assert_eq!(updated["results"][0]["properties"]["booking_version"], "2");

    let one: Value = client
        .get(format!("{}/b-03?idProperty=booking_id", server.url))
        .bearer_auth("secret")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(one["properties"]["booking_id"], "b-03");
    assert_eq!(one["properties"]["booking_version"], "2");

    let read = client
        .post(format!("{}/batch/read", server.url))
        .bearer_auth("secret")
        .json(&json!({"idProperty": "booking_id", "inputs": [{"id": "b-01"}, {"id": "nope"}]}))
        .send()
        .unwrap();
    assert_eq!(read.status(), 207, "some ids missing");
    let read: Value = read.json().unwrap();
    assert_eq!(read["results"].as_array().unwrap().len(), 1);
    assert!(
        read["results"][0]["properties"]["booking_state"].is_string(),
        "no property list: every property"
    );

    assert_eq!(read["errors"][0]["context"]["ids"][0], "nope");
    let only: Value = client
        .post(format!("{}/batch/read", server.url))
        .bearer_auth("secret")
        .json(
            &json!({"idProperty": "booking_id", "properties": ["booking_version"],
            "inputs": [{"id": "b-03"}]}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        only["results"][0]["properties"],
        json!({"booking_version": "2"}),
        "only the properties asked for"
    );

    // What it was asked, counted: 26 single-input upserts and two reads.
    let base = server.url.trim_end_matches("/crm/v3/objects/bookings");
    let stats: Value = client
        .get(format!("{base}/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        stats,
        json!({"upsert_requests": 26, "upsert_inputs": 26, "read_requests": 2})
    );

    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = client
            .get(format!("{}?limit=10{after}", server.url))
            .bearer_auth("secret")
            .send()
            .unwrap()
            .json()
            .unwrap();
        for o in page["results"].as_array().unwrap() {
            seen.push(o["properties"]["booking_id"].as_str().unwrap().to_string());
        }
        match page["paging"]["next"]["after"].as_str() {
            Some(a) => after = format!("&after={a}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("b-{i:02}")).collect();
    assert_eq!(seen, want, "every object once, in creation order");
}

#[test]
fn bad_requests_get_hubspot_style_errors() {
    let server = start();
    let client = Client::new();
    let error = |r: reqwest::blocking::Response, status: u16| {
        assert_eq!(r.status(), status);
        let body: Value = r.json().unwrap();
        assert_eq!(body["status"], "error");
        body["message"].as_str().unwrap().to_string()
    };
    let r = client
        .post(format!("{}/batch/upsert", server.url))
        .bearer_auth("secret")
        .body("{oops")
        .send()
        .unwrap();
    assert!(error(r, 400).contains("Invalid input JSON"));
    let r = client
        .post(format!("{}/batch/upsert", server.url))
        .bearer_auth("secret")
        .json(&json!({"inputs": [{"id": "x", "properties": {}}]}))
        .send()
        .unwrap();
    assert!(error(r, 400).contains("idProperty is required"));
    let r = client
        .get(format!("{}?limit=1000", server.url))
        .bearer_auth("secret")
        .send()
        .unwrap();
    assert!(error(r, 400).contains("limit"));
    let r = client
        .get(format!("{}/missing?idProperty=booking_id", server.url))
        .bearer_auth("secret")
        .send()
        .unwrap();
    error(r, 404);
    let r = client.get(server.url.clone()).send().unwrap();
    assert!(error(r, 401).contains("Bearer"));
}

#[test]
fn a_slow_crm_answers_its_objects_api_late_and_right() {
    let server = start_with(&["--latency-ms", "300"]);
    let client = Client::new();
    let began = std::time::Instant::now();
    assert_eq!(upsert(&client, &server.url, "bk-1", 2).status(), 200);
    assert!(
        began.elapsed() >= std::time::Duration::from_millis(300),
        "answered after {:?}",
        began.elapsed()
    );
    let read: Value = client
        .post(format!("{}/batch/read", server.url))
        .bearer_auth("secret")
        .json(
            &json!({"idProperty": "booking_id", "properties": ["booking_version"],
            "inputs": [{"id": "bk-1"}]}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        read["results"][0]["properties"]["booking_version"], "2",
        "{read}"
    );
}
