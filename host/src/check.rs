//! `plugboard check`: is this component a plugin, and what will it need?
//!
//! In: a component file. Out: a [`Report`] of what it imports (mapped to the
//! grants it needs in its manifest) and exports, and, if it cannot run here,
//! what is wrong in plain words.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::runtime::Runtime;
use crate::runtime::bindings::PluginPre;

/// What `check` found.
#[derive(Debug)]
pub struct Report {
    pub size: u64,
    pub sha256: String,
    pub imports: Vec<(String, &'static str)>,
    pub exports: Vec<String>,
    /// Empty when the component is a valid plugin for this host.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a plugin importing `name` needs granted, in a manifest's words.
fn capability(name: &str) -> &'static str {
    let iface = name.split('@').next().unwrap_or(name);
    match iface {
        "wasi:http/outgoing-handler" | "wasi:http/types" => {
            "outgoing HTTP: grant origins with `allow_hosts` in the manifest"
        }
        "wasi:filesystem/preopens" | "wasi:filesystem/types" => {
            "files: grant one folder with `[folder]` in the manifest"
        }
        i if i.starts_with("wasi:sockets/") => "raw sockets: always denied (use wasi:http)",
        i if i.starts_with("wasi:keyvalue/") => {
            "durable state: provided, private to the plugin (data_dir/state.sqlite)"
        }
        "plugboard:plugin/log" => "logging: provided",
        "plugboard:plugin/metrics" => "metrics: provided",
        "plugboard:plugin/types" => "event types: provided",
        i if i.starts_with("wasi:") => "standard WASI: provided",
        _ => "unknown to this host",
    }
}

/// Inspects the component at `path` against `runtime`'s linker and world.
pub fn check(runtime: &Runtime, path: &Path) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut report = Report {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        imports: Vec::new(),
        exports: Vec::new(),
        problems: Vec::new(),
    };
    let component = match Component::new(runtime.engine(), &bytes) {
        Ok(c) => c,
        Err(err) => {
            let hint = if bytes.starts_with(b"\0asm\x01\0\0\0") {
                "it is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
            } else {
                "it is not a WebAssembly component"
            };
            report.problems.push(format!("{hint} ({err:#})"));
            return Ok(report);
        }
    };
    let ty = component.component_type();
    for (name, _) in ty.imports(runtime.engine()) {
        report.imports.push((name.to_string(), capability(name)));
    }
    for (name, _) in ty.exports(runtime.engine()) {
        report.exports.push(name.to_string());
    }
    match runtime.linker().instantiate_pre(&component) {
        Err(err) => report.problems.push(format!(
            "it imports something this host does not provide: {err:#}"
        )),
        Ok(pre) => {
            if let Err(err) = PluginPre::new(pre) {
                let has_handler = report
                    .exports
                    .iter()
                    .any(|e| e.starts_with("plugboard:plugin/handler"));
                report.problems.push(if has_handler {
                    format!(
                        "it exports plugboard:plugin/handler, but not in the shape this host expects ({err:#}); rebuild it against this host's wit/"
                    )
                } else {
                    format!(
                        "it does not export plugboard:plugin/handler (init and handle): it exports {:?}",
                        report.exports
                    )
                });
            }
        }
    }
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "size: {} bytes, sha256: {}", self.size, self.sha256)?;
        writeln!(f, "imports:")?;
        for (name, cap) in &self.imports {
            writeln!(f, "  {name:<45} {cap}")?;
        }
        writeln!(f, "exports:")?;
        for name in &self.exports {
            writeln!(f, "  {name}")?;
        }
        if self.problems.is_empty() {
            write!(f, "ok: implements plugboard:plugin/plugin")
        } else {
            for p in &self.problems {
                writeln!(f, "problem: {p}")?;
            }
            write!(f, "not a valid plugin for this host")
        }
    }
}
