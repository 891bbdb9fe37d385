//! What a new version asks for beyond the version it would replace: the
//! grants an operator approves before it goes live.

use crate::config::PluginSpec;

/// Each grant `next` has that `running` has not, as a sentence; empty if
/// `next` asks for the same or less.
pub fn added(running: &PluginSpec, next: &PluginSpec) -> Vec<String> {
    let mut more = Vec::new();
    for origin in &next.allow_hosts {
        if !running.allow_hosts.contains(origin) {
            more.push(format!("outgoing HTTP to {origin}"));
        }
    }
    match (&running.folder, &next.folder) {
        (_, None) => {}
        (None, Some(new)) => more.push(format!(
            "the folder {} ({})",
            new.host_path.display(),
            access(new.read_only)
        )),
        (Some(old), Some(new)) if old.host_path != new.host_path => more.push(format!(
            "the folder {} ({}) instead of {}",
            new.host_path.display(),
            access(new.read_only),
            old.host_path.display()
        )),
        (Some(old), Some(new)) if old.read_only && !new.read_only => more.push(format!(
            "write access to {} (read-only now)",
            new.host_path.display()
        )),
        _ => {}
    }
    let (old, new) = (&running.limits, &next.limits);
    if new.memory_limit_bytes > old.memory_limit_bytes {
        more.push(format!(
            "memory_limit_mb {} (now {})",
            new.memory_limit_bytes >> 20,
            old.memory_limit_bytes >> 20
        ));
    }
    if new.timeout > old.timeout {
        more.push(format!(
            "timeout_ms {} (now {})",
            new.timeout.as_millis(),
            old.timeout.as_millis()
        ));
    }
    more
}

fn access(read_only: bool) -> &'static str {
    if read_only { "read-only" } else { "read-write" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsFile, manifest_from_text};
    use std::path::Path;

    fn spec(text: &str) -> PluginSpec {
        manifest_from_text(
            "p",
            Path::new("/plugins/p.wasm"),
            Some(Path::new("/plugins/p.toml")),
            Some(text),
            &LimitsFile::default(),
        )
        .unwrap()
    }

    #[test]
    fn more_is_named_and_less_or_the_same_is_not() {
        let running = spec(
            "allow_hosts = [\"http://a:1\"]\n[folder]\npath = \"d\"\nread_only = true\n[limits]\nmemory_limit_mb = 64\n",
        );
        assert!(added(&running, &running).is_empty());
        let less = spec("[limits]\nmemory_limit_mb = 32\ntimeout_ms = 10\n");
        assert!(added(&running, &less).is_empty());
        let more = spec(
            "allow_hosts = [\"http://a:1\", \"http://b:2\"]\n[folder]\npath = \"d\"\n[limits]\nmemory_limit_mb = 128\ntimeout_ms = 60000\n",
        );
        assert_eq!(
            added(&running, &more),
            vec![
                "outgoing HTTP to http://b:2".to_string(),
                "write access to /plugins/d (read-only now)".into(),
                "memory_limit_mb 128 (now 64)".into(),
                "timeout_ms 60000 (now 30000)".into(),
            ]
        );
    }
}
