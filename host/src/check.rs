//! `plugboard check`: is this component a plugin, and what will it need?
//!
//! In: a component file. Out: a [`Report`] of what it imports (mapped to the
//! grants it needs in its manifest) and exports, and, if it cannot run here,
//! what is wrong in plain words.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};

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

/// The handler's functions as this host's WIT has them, in the notation
/// [`signature`] writes.
const EXPECTED: [(&str, &str); 2] = [
    (
        "init",
        "func(list<tuple<string, string>>) -> result<_, variant{retry, reject}>",
    ),
    (
        "handle",
        "func(list<record{booking, envelope, payload, extensions}>) -> variant{all, stopped}",
    ),
];

/// A function's shape, WIT-like: parameter types and result, with records
/// shown by their field names (component types carry no type names).
fn signature(func: &ComponentFunc) -> String {
    let params: Vec<String> = func.params().map(|(_, t)| shape(&t)).collect();
    let results: Vec<String> = func.results().map(|t| shape(&t)).collect();
    match results.as_slice() {
        [] => format!("func({})", params.join(", ")),
        [one] => format!("func({}) -> {one}", params.join(", ")),
        many => format!("func({}) -> ({})", params.join(", "), many.join(", ")),
    }
}

fn shape(ty: &Type) -> String {
    let inner = shape;
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", inner(&l.ty())),
        Type::Option(o) => format!("option<{}>", inner(&o.ty())),
        Type::Result(r) => format!(
            "result<{}, {}>",
            r.ok().map_or("_".into(), |t| inner(&t)),
            r.err().map_or("_".into(), |t| inner(&t))
        ),
        Type::Tuple(t) => format!(
            "tuple<{}>",
            t.types().map(|t| inner(&t)).collect::<Vec<_>>().join(", ")
        ),
        Type::Record(r) => format!(
            "record{{{}}}",
            r.fields()
                .map(|f| f.name.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Variant(v) => format!(
            "variant{{{}}}",
            v.cases()
                .map(|c| c.name.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Enum(e) => format!("enum{{{}}}", e.names().collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Inspects the component at `path` against `runtime`'s linker and world.
pub fn check(runtime: &Runtime, path: &Path) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut report = Report {
        size: bytes.len() as u64,
        sha256: crate::runtime::sha256_hex(&bytes),
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
    let names = report
        .imports
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(report.exports.iter().map(String::as_str));
    if let Some(problem) = crate::runtime::bindings::other_contract(names) {
        report.problems.push(problem);
        return Ok(report);
    }
    match runtime.linker().instantiate_pre(&component) {
        Err(err) => report.problems.push(format!(
            "it imports something this host does not provide: {err:#}"
        )),
        Ok(pre) => {
            let pre_error = PluginPre::new(pre).err();
            let handler = ty.exports(runtime.engine()).find_map(|(name, item)| {
                match (name.starts_with("plugboard:plugin/handler"), item.ty) {
                    (true, ComponentItem::ComponentInstance(i)) => Some((name.to_string(), i)),
                    _ => None,
                }
            });
            let problem = match handler {
                // The world's types are checked when a function is first
                // looked up, so compare the shapes here, before any run.
                Some((name, instance)) => {
                    let found: Vec<(String, String)> = instance
                        .exports(runtime.engine())
                        .filter_map(|(f, item)| match item.ty {
                            ComponentItem::ComponentFunc(func) => {
                                Some((f.to_string(), signature(&func)))
                            }
                            _ => None,
                        })
                        .collect();
                    let mut why = Vec::new();
                    for (func, expected) in EXPECTED {
                        match found.iter().find(|(f, _)| f == func) {
                            None => why.push(format!("`{func}` is missing: expected {expected}")),
                            Some((_, got)) if got != expected => why.push(format!(
                                "exports `{func}` with the wrong signature: expected {expected}, found {got}"
                            )),
                            Some(_) => {}
                        }
                    }
                    if let (true, Some(err)) = (why.is_empty(), pre_error) {
                        why.push(format!("its types differ from this host's ({err:#})"));
                    }
                    (!why.is_empty()).then(|| {
                        format!(
                            "it exports {name}, but not as this host expects: {}; rebuild it against this host's wit/",
                            why.join("; ")
                        )
                    })
                }
                None => Some(format!(
                    "it does not export plugboard:plugin/handler (init and handle): it exports {:?}",
                    report.exports
                )),
            };
            report.problems.extend(problem);
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
