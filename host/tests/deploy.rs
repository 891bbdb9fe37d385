//! The Grafana dashboard and the Prometheus alert rules in `deploy/`: the
//! rules pass `promtool check rules` and their unit tests
//! (`alerts_test.yml`), every dashboard query is valid PromQL (checked by
//! promtool as a recording rule), and both name only metrics the host
//! exports.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

/// `promtool`, or `None` (a failure under CI=true) if it is missing.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        common::skip(
            "the alert rules and dashboard checks",
            "promtool is not installed (Debian: apt-get install prometheus)",
        );
        return None;
    }
    Some("promtool")
}

fn run(promtool: &str, args: &[&str]) {
    let out = Command::new(promtool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names `text` uses (`_bucket`, `_sum`, `_count` of a
/// histogram as the histogram).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("plugboard_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        names.insert(name.to_string());
        i = end;
    }
    names
}

/// Every metric the host defines: the names registered in its source.
fn host_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![common::repo().join("host/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for quoted in text.split('"').skip(1).step_by(2) {
                    if quoted.starts_with("plugboard_")
                        && quoted.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        names.insert(quoted.to_string());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = common::repo().join("deploy/prometheus");
    run(
        promtool,
        &["check", "rules", dir.join("alerts.yml").to_str().unwrap()],
    );
    run(
        promtool,
        &[
            "test",
            "rules",
            dir.join("alerts_test.yml").to_str().unwrap(),
        ],
    );
}

#[test]
fn dashboard_and_alerts_name_only_metrics_the_host_exports() {
    let defined = host_metrics();
    assert!(defined.contains("plugboard_events_total"), "{defined:?}");
    let dashboard =
        std::fs::read_to_string(common::repo().join("deploy/grafana/plugboard.json")).unwrap();
    let alerts =
        std::fs::read_to_string(common::repo().join("deploy/prometheus/alerts.yml")).unwrap();
    for (file, text) in [("plugboard.json", &dashboard), ("alerts.yml", &alerts)] {
        let used = names_in(text);
        assert!(!used.is_empty());
        let unknown: Vec<_> = used.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the host does not export: {unknown:?}"
        );
    }
    // The dashboard shows the operator's metrics, not only the flow.
    for wanted in [
        "plugboard_consumer_lag",
        "plugboard_plugin_paused",
        "plugboard_partition_waiting",
        "plugboard_redriven_total",
        "plugboard_rewinds_total",
        "plugboard_dead_letters_total",
    ] {
        assert!(
            names_in(&dashboard).contains(wanted),
            "the dashboard lacks {wanted}"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let Some(promtool) = promtool() else { return };
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("deploy/grafana/plugboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's variables, as Grafana fills them in.
            exprs.push(
                expr.replace("$__rate_interval", "2m")
                    .replace("$plugin", ".*"),
            );
        }
    }
    assert!(exprs.len() >= 12, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.yml");
    std::fs::write(&file, rules).unwrap();
    run(promtool, &["check", "rules", file.to_str().unwrap()]);
}
