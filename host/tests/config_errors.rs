//! Golden tests of invalid configs: each folder under `tests/config/` holds a
//! `plugboard.toml` (and plugins) that must fail to load with exactly the
//! message in its `expected.err`. Set `UPDATE_GOLDEN=1` to rewrite them.

use std::path::Path;

use plugboard::config::{HostConfig, load_plugins};

fn load(case: &Path) -> anyhow::Result<()> {
    let config = HostConfig::load(&case.join("plugboard.toml"))?;
    load_plugins(&config)?;
    Ok(())
}

#[test]
fn invalid_configs_fail_with_the_expected_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 6);
    let mut failures = Vec::new();
    for case in cases {
        let err = match load(&case) {
            Ok(()) => {
                failures.push(format!("{}: loaded, but must fail", case.display()));
                continue;
            }
            Err(err) => format!("{err:#}\n").replace(&format!("{}/", case.display()), ""),
        };
        let golden = case.join("expected.err");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &err).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if err != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{err}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_demo_config_loads() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let config = HostConfig::load(&repo.join("examples/demo/plugboard.toml")).unwrap();
    let plugins = load_plugins(&config).unwrap();
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["crm-sync", "data-lake", "metrics"]);
    let crm = &plugins[0];
    assert_eq!(crm.allow_hosts, ["http://127.0.0.1:8088"]);
    assert_eq!(
        crm.limits.batch_size, 100,
        "the manifest overrides the host's limit"
    );
    assert_eq!(
        plugins[2].limits.max_attempts, 5,
        "the host's limit applies"
    );
    assert!(
        plugins[1]
            .folder
            .as_ref()
            .unwrap()
            .host_path
            .ends_with("target/demo/lake")
    );
}
