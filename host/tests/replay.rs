//! `plugboard replay`: one plugin over an events file, per-event printout,
//! outgoing HTTP captured unless allowed, files listed, golden comparison.

mod common;

use std::process::Output;

use common::{Crm, Setup, plugin_wasm};

fn replay(args: &[&str]) -> Output {
    let out = common::plugboard_command()
        .arg("replay")
        .args(args)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn egress_is_captured_unless_allowed_and_stubs_answer_for_the_crm() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 3, 5);
    let crm = Crm::start(&setup.path("crm.db"));
    let plugin = plugin_wasm("crm-sync");
    let (plugin, events) = (plugin.to_str().unwrap(), events.to_str().unwrap());
    let base = format!("base_url={}", crm.url);
    let token = format!("token={}", crm.token);
    let common_args = [
        "--plugin",
        plugin,
        "--events",
        events,
        "--config",
        &base,
        "--config",
        &token,
        "--allow-host",
        &crm.url,
    ];

    // Captured: the requests are printed with their bodies, nothing is sent.
    let out = replay(&common_args);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("init: ok\n"), "{text}");
    assert!(
        text.contains("/crm/v3/objects/bookings/batch/upsert -> 200 (stub, not sent)"),
        "{text}"
    );
    assert!(text.contains("body: {\"inputs\""), "{text}");
    assert!(
        text.contains("metric crm_sync_upserted_total += 1"),
        "{text}"
    );
    assert!(crm.all().is_empty(), "a captured request reached the CRM");

    // A stub that answers 503: the plugin asks for a retry.
    let stub = format!("{}=503", crm.url);
    let mut args = common_args.to_vec();
    args.extend(["--stub", &stub]);
    let text = String::from_utf8(replay(&args).stdout).unwrap();
    assert!(text.contains(": retry"), "{text}");
    assert!(text.contains("-> 503 (stub, not sent)"), "{text}");

    // Not granted: denied, and said so.
    let text = String::from_utf8(
        replay(&[
            "--plugin", plugin, "--events", events, "--config", &base, "--config", &token,
        ])
        .stdout,
    )
    .unwrap();
    assert!(text.contains("-> denied"), "{text}");

    // Allowed: sent for real.
    let mut args = common_args.to_vec();
    args.push("--allow-egress");
    let out = replay(&args);
    assert!(out.status.success());
    let lines = std::fs::read_to_string(events).unwrap().lines().count();
    assert!(!crm.all().is_empty() && crm.all().len() <= lines);
}

#[test]
fn the_printout_is_a_golden_file_and_files_written_are_listed() {
    let setup = Setup::new();
    let events = common::generated_events(setup.dir.path(), 4, 9);
    let manifest = setup.path("data-lake.toml");
    std::fs::write(
        &manifest,
        "[folder]\npath = \"lake\"\nguest_path = \"/data\"\n[config]\ndir = \"/data\"\n",
    )
    .unwrap();
    let plugin = plugin_wasm("data-lake");
    let args = [
        "--plugin",
        plugin.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ];
    let first = replay(&args);
    assert!(first.status.success());
    let text = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(
        text.contains("files written:\n  bookings/event_date="),
        "{text}"
    );
    assert!(
        !setup.path("lake").exists(),
        "replay writes to a scratch folder, not the granted one"
    );

    let golden = setup.path("golden.txt");
    std::fs::write(&golden, &first.stdout).unwrap();
    let mut with_expect = args.to_vec();
    with_expect.extend(["--expect", golden.to_str().unwrap()]);
    assert!(
        replay(&with_expect).status.success(),
        "same events, same printout"
    );

    std::fs::write(&golden, text.replacen(": ok", ": reject: nope", 1)).unwrap();
    let out = replay(&with_expect);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs from"));
}
