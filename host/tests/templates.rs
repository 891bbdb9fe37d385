//! `plugboard new` + `plugboard build` + `plugboard replay` for each
//! language template: the project builds with its own toolchain and the
//! component it makes handles the project's sample events. Languages come
//! from PLUGBOARD_TEST_LANGS (scripts/test.sh sets rust,js,python,go); without
//! it only Rust is tried.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

fn plugboard(args: &[&str], dir: &Path) -> Output {
    let out = common::plugboard_command()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plugboard {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn languages() -> Vec<String> {
    std::env::var("PLUGBOARD_TEST_LANGS")
        .unwrap_or_else(|_| {
            common::skip(
                "the JavaScript, Python and Go templates",
                "PLUGBOARD_TEST_LANGS is not set (scripts/test.sh sets it): trying Rust only",
            );
            "rust".into()
        })
        .split(',')
        .map(str::to_string)
        .collect()
}

fn new_build_replay(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    plugboard(&["new", "--lang", lang, &name], dir.path());
    let project = dir.path().join(&name);
    let began = Instant::now();
    let built = plugboard(&["build"], &project);
    let component = String::from_utf8(built.stdout).unwrap().trim().to_string();
    assert!(Path::new(&component).exists(), "{component}");
    let build_time = began.elapsed();

    let began = Instant::now();
    let manifest = format!("{name}.toml");
    let out = plugboard(
        &[
            "replay",
            "--plugin",
            &component,
            "--manifest",
            &manifest,
            "--events",
            "events.ndjson",
        ],
        &project,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let events = std::fs::read_to_string(project.join("events.ndjson"))
        .unwrap()
        .lines()
        .count();
    assert!(text.starts_with("init: ok\n"), "{lang}: {text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("line ") && l.ends_with(": ok"))
            .count(),
        events,
        "{lang}: every sample event handled\n{text}"
    );
    assert_eq!(
        text.matches("    log info: ").count(),
        events,
        "{lang}: one log line per event\n{text}"
    );
    assert!(text.contains(&format!("{events} ok, 0 retry")), "{text}");
    eprintln!(
        "{lang}: build {build_time:.1?}, replay {:.1?}, {} bytes",
        began.elapsed(),
        std::fs::metadata(&component).unwrap().len()
    );
}

#[test]
fn every_template_builds_and_replays() {
    for lang in languages() {
        new_build_replay(&lang);
    }
}

#[test]
fn a_missing_toolchain_is_named_with_its_install_command() {
    let dir = tempfile::tempdir().unwrap();
    plugboard(&["new", "--lang", "python", "p"], dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(["build", "p"])
        .current_dir(dir.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pip install componentize-py==0.25.1"), "{err}");
}
