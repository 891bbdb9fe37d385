//! The status page (`GET /` of the admin endpoint) as a person sees it:
//! Debian's headless Chromium loads the page of a host under load on the
//! real broker, and the test reads what the browser rendered: readiness and
//! uptime, a plugin running, one paused, one holding on a CRM that is down
//! and why, the lag per partition and a redrive's progress.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::*;

/// Debian's `chromium`, or `None` (a failure under CI=true) if missing.
fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(name.to_string());
        }
    }
    common::skip(
        "the status page in a real browser",
        "no chromium (Debian: apt-get install chromium)",
    );
    None
}

/// The DOM Chromium built from `url`, after it loaded.
fn rendered(browser: &str, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,720",
        &format!("--user-data-dir={}", profile.path().display()),
    ]);
    match screenshot {
        Some(file) => command.arg(format!("--screenshot={}", file.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the first element of `class` inside the row of `plugin`.
fn cell(dom: &str, plugin: &str, class: &str) -> String {
    let row_start = dom
        .find(&format!("data-plugin=\"{plugin}\""))
        .unwrap_or_else(|| panic!("no row for {plugin}: {dom}"));
    let row = &dom[row_start..];
    let row = &row[..row.find("</tr>").unwrap()];
    let at = row
        .find(&format!("class=\"{class}"))
        .or_else(|| row.find(&format!(" {class}\"")))
        .unwrap_or_else(|| panic!("no {class} in the row of {plugin}: {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

/// The notes under the row of `plugin` (lag per partition, redrive, error).
fn notes(dom: &str, plugin: &str) -> String {
    let row_start = dom.find(&format!("data-plugin=\"{plugin}\"")).unwrap();
    let rest = &dom[row_start..];
    let next = rest[1..].find("data-plugin=").map_or(rest.len(), |n| n + 1);
    rest[..next].to_string()
}

#[test]
fn the_status_page_shows_a_person_what_each_plugin_does() {
    let Some(brokers) = brokers() else { return };
    let Some(browser) = chromium() else { return };
    let (topic, setup, _) = stream(&brokers, 3, 60, 81);
    // A CRM that is down: nothing listens on its port.
    let down = format!("http://127.0.0.1:{}", common::free_port());
    setup
        .plugin("metrics", "metrics", "")
        .plugin(
            "crm-sync",
            "crm-sync",
            &format!(
                "allow_hosts = [\"{down}\"]\n[config]\nbase_url = \"{down}\"\ntoken = \"t\"\n"
            ),
        )
        // Slow: a lag that goes down while the page is looked at.
        .plugin(
            "pacer",
            "faulty",
            "[limits]\nbatch_size = 1\n[config]\nsleep_ms = \"250\"\n",
        )
        .plugin("noop", "noop", "");
    enable_admin(&setup);
    let kafka = kafka_config(&setup, &brokers, &topic, "page");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.insert_str(0, "admin_token = \"${TEST_ADMIN_TOKEN}\"\n");
    std::fs::write(&setup.config, &text).unwrap();
    let mut command = host_command(&setup, "metrics.prom");
    command.env("TEST_ADMIN_TOKEN", "t0ken");
    let (host, admin) = start_with_admin(command);
    let host = Host(Some(host));
    let deadline = Instant::now() + Duration::from_secs(60);
    while plugin_status(&admin, "noop").is_null() {
        assert!(Instant::now() < deadline, "noop never loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args([
            "ctl", "--admin", &admin, "--token", "t0ken", "pause", "noop",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for_zero_lag(&kafka, &["metrics"]);
    // Wait for the CRM hold to show, and for a rate to be measured.
    let deadline = Instant::now() + Duration::from_secs(60);
    while plugin_status(&admin, "crm-sync")["waiting"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "crm-sync never held");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));

    let dom = rendered(&browser, &format!("{admin}/"), None);
    assert!(
        dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "it refreshes itself"
    );
    assert!(
        dom.contains(&format!("plugboard — <code>{topic}</code>")),
        "{dom}"
    );
    // A CRM that is down holds its partitions: the host itself is ready.
    assert!(
        dom.contains("id=\"readiness\" class=\"badge ok\">ready<"),
        "{dom}"
    );
    assert!(dom.contains("id=\"uptime\""), "{dom}");
    assert_eq!(cell(&dom, "metrics", "badge state"), "running");
    assert_eq!(cell(&dom, "noop", "badge state"), "paused");
    let crm = cell(&dom, "crm-sync", "badge state");
    assert!(crm.starts_with("holding — "), "{crm}");
    assert!(
        crm.contains("partitions 0, 1, 2 wait for the sink for "),
        "{crm}"
    );
    assert!(crm.contains("connection refused"), "{crm}");
    let pacer_rate: f64 = cell(&dom, "pacer", "num handled-rate").parse().unwrap();
    assert!(
        pacer_rate > 0.0,
        "the pacer handles events: {pacer_rate}/min"
    );
    let pacer_lag: i64 = cell(&dom, "pacer", "num lag").parse().unwrap();
    assert!(pacer_lag > 0, "the pacer is behind");
    let pacer_notes = notes(&dom, "pacer");
    for p in 0..3 {
        assert!(
            pacer_notes.contains(&format!("p{p} ")),
            "lag of partition {p}: {pacer_notes}"
        );
    }
    let version = cell(&dom, "metrics", "sub");
    assert!(version.starts_with("loaded "), "{version}");
    // Text from a plugin is shown, never run.
    assert!(!dom.contains("<script"), "no script on the page");

    // The README's picture.
    let shot = setup.path("status-page.png");
    rendered(&browser, &format!("{admin}/"), Some(&shot));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(dest) = std::env::var("PLUGBOARD_SCREENSHOT") {
        std::fs::copy(&shot, dest).unwrap();
    }
    host.stop();
}
