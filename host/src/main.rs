//! The `plugboard` command: parses the CLI, sets up logging, loads config and
//! hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use plugboard::config::{HostConfig, LogFormat};
use plugboard::metrics::Metrics;
use plugboard::run::{Run, write_metrics};
use plugboard::runtime::Runtime;

use plugboard::shutdown::Shutdown;
use plugboard::source::Source;

/// jemalloc rather than glibc's malloc: every event allocates and frees its
/// decoded strings on a partition worker, and glibc's allocator was a
/// quarter of the consume path's CPU (`perf record` of `plugboard run`).
/// librdkafka's C allocations go to it too (see host/Cargo.toml), and its
/// defaults (`.cargo/config.toml`) keep an idle host's memory small.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Consumes booking events and dispatches them to sandboxed WebAssembly
/// plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every plugin in the config's plugins folder over a source: the
    /// config's Kafka topic until SIGINT/SIGTERM, or an events file to its end.
    Run {
        /// The host config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Reads events from this NDJSON file (one BookingEvent per line, proto3
        /// JSON) instead of Kafka, dispatches them all and exits.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Where dead-lettered events go (NDJSON). Default:
        /// `<events>.dead-letter.ndjson` beside the input.
        #[arg(long)]
        dead_letter: Option<PathBuf>,
        /// At exit, writes every metric here in the Prometheus text format.
        #[arg(long)]
        metrics_out: Option<PathBuf>,
    },
    /// Publishes booking events to a Kafka topic, as protobuf keyed by
    /// booking id.
    Produce {
        /// Bootstrap servers.
        #[arg(long, env = "PLUGBOARD_BROKERS", default_value = "127.0.0.1:19092")]
        brokers: String,
        /// The topic.
        #[arg(long, env = "PLUGBOARD_TOPIC", default_value = "bookings")]
        topic: String,
        /// Publishes N generated booking lifecycles (2 to 4 events each).
        #[arg(long, conflicts_with = "events", required_unless_present = "events")]
        generate: Option<usize>,
        /// Seed of the generated events: the same seed, the same events.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Publishes the lines of this NDJSON file; lines that are not valid
        /// events go out as raw bytes.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Writes the events with this schema (a .proto file or a
        /// FileDescriptorSet) instead of the compiled booking.v1: the
        /// lines of --events are read in its JSON mapping.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// Registers the schema (--schema, or the project's booking.proto)
        /// at this Confluent-compatible registry and frames every message
        /// with its id.
        #[arg(long, value_name = "URL", env = "PLUGBOARD_SCHEMA_REGISTRY")]
        registry: Option<String>,
        /// The registry subject (default: <topic>-value).
        #[arg(long, requires = "registry")]
        subject: Option<String>,
        /// Frames every message with this registry id, registered before,
        /// without asking the registry (as a producer that cached its id).
        #[arg(long, conflicts_with = "registry")]
        schema_id: Option<u32>,
        /// Creates the topic with this many partitions first, unless it
        /// exists (otherwise the broker's auto-creation picks the count).
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Writes realistic booking lifecycles as NDJSON (proto3 JSON), the input
    /// format of `run --events`.
    Generate {
        /// How many bookings; each has 2 to 4 events.
        #[arg(long, default_value_t = 300)]
        bookings: usize,
        /// The same seed gives the same events, ids included.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Add what real streams contain: out-of-order versions, a replayed
        /// duplicate and malformed lines.
        #[arg(long)]
        faults: bool,
        /// Writes the events as a producer with this schema (a .proto file
        /// or FileDescriptorSet) writes them: fields it removed are left
        /// out.
        #[arg(long, value_name = "FILE", conflicts_with = "faults")]
        schema: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Says whether a component is a valid plugin and what it needs granted.
    Check {
        /// The component file.
        plugin: PathBuf,
    },
    /// Makes a plugin project: bindings set up against the plugin WIT, a
    /// handler that logs and returns ok, sample events, a manifest, a
    /// README and the build recipe (`plugin.toml`).
    New {
        /// The language of the project.
        #[arg(long, value_enum)]
        lang: plugboard::scaffold::Lang,
        /// The plugin's name: a-z, 0-9, `-`, `_`.
        name: String,
        /// Where to make it. Default: a folder named after the plugin.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Builds the plugin project in DIR with the command its `plugin.toml`
    /// names, and prints the path of the component. A missing tool is
    /// reported with the command that installs it.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Runs one plugin over an events file and prints, per event, its
    /// answer, log lines, metrics and requests. Outgoing HTTP is answered by
    /// a stub and never sent, unless --allow-egress.
    Replay {
        #[command(flatten)]
        options: plugboard::replay::ReplayOptions,
        /// Compares the printout with this golden file; exits 1 on a
        /// difference. Make one with `plugboard replay ... > FILE`.
        #[arg(long)]
        expect: Option<PathBuf>,
    },
    /// Asks a running host through its admin endpoint. Exit codes: 0 done,
    /// 1 the host refused or failed the request, 2 a usage error, 3 no
    /// host answered.
    Ctl {
        /// The host's admin endpoint (its admin_addr).
        #[arg(
            long,
            env = "PLUGBOARD_ADMIN_URL",
            default_value = "http://127.0.0.1:9464"
        )]
        admin: String,
        /// The admin token, sent as a bearer token (never printed).
        #[arg(long, env = "PLUGBOARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Prints the endpoint's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        verb: CtlVerb,
    },
}

#[derive(Subcommand)]
enum CtlVerb {
    /// Every plugin: state, version, events handled and parked, lag, and
    /// the partitions that wait.
    Status,
    /// Committed offset, end and lag of each partition of a plugin's group.
    Offsets {
        /// The plugin.
        name: String,
    },
    /// Stops a plugin taking events (its batch in flight finishes and is
    /// committed), kept across restarts; the others go on. Needs the token.
    Pause {
        /// The plugin.
        name: String,
    },
    /// Lets a paused plugin take events again. Needs the token.
    Resume {
        /// The plugin.
        name: String,
    },
    /// Moves a plugin's consumer group, on every host, while they run:
    /// each member commits and leaves, the offsets move, they join again.
    /// State is not undone: the events are delivered again. Needs the token.
    Rewind {
        /// The plugin.
        name: String,
        /// earliest, latest, an RFC 3339 time (the first event at or after
        /// it, per partition), or <partition>=<offset>,...
        #[arg(long)]
        to: String,
    },
    /// Delivers the plugin's dead letters again to it alone, in their
    /// original order; what fails again is parked again. Follows it to its
    /// end unless --no-wait. Needs the token.
    Redrive {
        /// The plugin.
        name: String,
        /// Only dead letters of this failure class (e.g. retries-exhausted).
        #[arg(long)]
        class: Option<String>,
        /// Only dead letters parked at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Returns once it started.
        #[arg(long)]
        no_wait: bool,
    },
    /// How far the plugin's latest redrive got.
    RedriveStatus {
        /// The plugin.
        name: String,
    },
    /// Lets the version of a plugin that waits as pending-approval (its
    /// manifest asks for more grants than the serving one) go live, on
    /// every host that holds it. Needs the token.
    Approve {
        /// The plugin.
        name: String,
    },
    /// How the shadow of a plugin (<name>.shadow.wasm) compares with its
    /// serving version: events compared, agreement, and the first
    /// differences side by side with their event.
    Shadow {
        /// The plugin.
        name: String,
    },
    /// Makes the shadow of a plugin its serving version, on every host
    /// that runs it (swapped between batches, as a reload). Needs the token.
    Promote {
        /// The plugin.
        name: String,
    },
}

/// The project folder of `new`: `--dir`, or the name in the current folder.
fn project_dir(name: &str, dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from(name))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match log_format(&cli) {
        Ok(format) => format,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(format);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `PLUGBOARD_LOG_FORMAT`, else `log_format` of the config `run` is given
/// (a config that does not load is reported by `run` itself), else text.
fn log_format(cli: &Cli) -> Result<LogFormat, String> {
    if let Ok(value) = std::env::var("PLUGBOARD_LOG_FORMAT") {
        return value
            .parse()
            .map_err(|e| format!("PLUGBOARD_LOG_FORMAT: {e}"));
    }
    Ok(match &cli.command {
        Command::Run { config, .. } => HostConfig::load(config)
            .map(|c| c.log_format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    })
}

/// Log lines to stderr, filtered by `PLUGBOARD_LOG`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLUGBOARD_LOG")
        // wasi-http logs each refused connection at WARN; the plugin gets
        // the error and the host logs the hold it causes.
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn,wasmtime_wasi_http=error".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One object per line: timestamp, level, target and the event's
        // fields (message, plugin, partition...) at the top level.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Ctl {
            admin,
            token,
            json,
            verb,
        } => {
            let answer = plugboard::ctl::Admin::new(&admin, token).and_then(|admin| match verb {
                CtlVerb::Status => admin.status(json),
                CtlVerb::Offsets { name } => admin.offsets(&name, json),
                CtlVerb::Pause { name } => admin.pause(&name, true, json),
                CtlVerb::Resume { name } => admin.pause(&name, false, json),
                CtlVerb::Rewind { name, to } => admin.rewind(&name, &to, json),
                CtlVerb::Redrive {
                    name,
                    class,
                    since,
                    no_wait,
                } => admin.redrive(&name, class.as_deref(), since.as_deref(), !no_wait, json),
                CtlVerb::RedriveStatus { name } => admin.redrive_status(&name, json),
                CtlVerb::Approve { name } => admin.approve(&name, json),
                CtlVerb::Shadow { name } => admin.shadow(&name, json),
                CtlVerb::Promote { name } => admin.promote(&name, json),
            });
            match answer {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(e.exit_code()))
                }
            }
        }
        Command::Run {
            config,
            events,
            dead_letter,
            metrics_out,
        } => {
            let config = HostConfig::load(&config)?;
            let source = match events {
                Some(events) => Source::File {
                    events,
                    dead_letter,
                },
                None => Source::Kafka,
            };
            let shutdown = Shutdown::on_signals()?;
            let run = Run::start(&config, &source)?;
            if let Some(addr) = run.admin_addr() {
                // For scripts and tests that asked for port 0.
                println!("admin listening on http://{addr}");
            }
            if let (Source::Kafka, Some(kafka)) = (&source, &config.kafka) {
                exit_if_stop_hangs(&shutdown, Duration::from_millis(kafka.shutdown_timeout_ms));
            }
            let summary = run.finish(&shutdown)?;
            if let Some(path) = &metrics_out {
                write_metrics(path, &summary.metrics)?;
            }
            if let Source::Kafka = source {
                tracing::info!("{summary}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{summary}");
            Ok(if summary.all_plugins_ran() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Produce {
            brokers,
            topic,
            generate,
            seed,
            events,
            partitions,
            schema,
            registry,
            subject,
            schema_id,
        } => {
            let subject = subject.unwrap_or_else(|| format!("{topic}-value"));
            let mut writing = plugboard::produce::Writing::new(
                schema.as_deref(),
                registry.as_deref().map(|url| (url, subject.as_str())),
            )?;
            writing.id = writing.id.or(schema_id);
            if let Some(partitions) = partitions {
                plugboard::produce::create_topic(&brokers, &topic, partitions)?;
            }
            let input = match (generate, events) {
                (Some(bookings), _) => plugboard::produce::Input::Generate { bookings, seed },
                (None, Some(path)) => plugboard::produce::Input::Events(path),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let report = plugboard::produce::produce(&brokers, &topic, &input, &writing)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            bookings,
            seed,
            faults,
            out,
            schema,
        } => {
            let lines = if faults {
                plugboard::generate::sample_lines(bookings, seed)
            } else if let Some(schema) = schema {
                let writer = plugboard::schema::load_file(
                    &schema,
                    plugboard::schema::writer::COMPILED_MESSAGE,
                )?;
                plugboard::generate::lifecycles(bookings, seed, plugboard::generate::DEFAULT_START)
                    .iter()
                    .map(|e| plugboard::schema::as_writer_json(e, &writer.message))
                    .collect::<anyhow::Result<_>>()?
            } else {
                plugboard::generate::lifecycles(bookings, seed, plugboard::generate::DEFAULT_START)
                    .iter()
                    .map(|e| serde_json::to_string(e).expect("events serialise"))
                    .collect()
            };
            let mut text = lines.join("\n");
            text.push('\n');
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { options, expect } => {
            let replay = plugboard::replay::replay(&options)?;
            print!("{}", replay.text);
            if let Some(folder) = &replay.folder {
                eprintln!("the plugin's folder is {}", folder.display());
            }
            let Some(expect) = expect else {
                return Ok(ExitCode::SUCCESS);
            };
            let golden = std::fs::read_to_string(&expect)
                .with_context(|| format!("cannot read {}", expect.display()))?;
            match plugboard::replay::compare(&golden, &replay.text) {
                None => {
                    eprintln!("matches {}", expect.display());
                    Ok(ExitCode::SUCCESS)
                }
                Some(diff) => {
                    eprintln!("differs from {} at {diff}", expect.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::New { lang, name, dir } => {
            let dir = project_dir(&name, dir);
            let files = plugboard::scaffold::new_plugin(lang, &name, &dir)?;
            println!(
                "{} files in {}; next: cd {} && plugboard build",
                files.len(),
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { dir } => {
            let component = plugboard::scaffold::build(&dir)?;
            println!("{}", component.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { plugin } => {
            let runtime = Runtime::new(None, Arc::new(Metrics::new()))?;
            let report = plugboard::check::check(&runtime, &plugin)?;
            println!("{report}");
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// A stop must not hang on a plugin stuck in a long call: past `deadline`
/// after the signal, the process exits (code 3), and what was not
/// committed is delivered again.
fn exit_if_stop_hangs(shutdown: &Shutdown, deadline: Duration) {
    let shutdown = shutdown.clone();
    std::thread::spawn(move || {
        shutdown.wait();
        std::thread::sleep(deadline);
        tracing::error!("shutdown took longer than {deadline:?}; exiting without a final commit");
        std::process::exit(3);
    });
}
