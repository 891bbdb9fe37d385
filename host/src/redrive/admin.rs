//! The redrives this host runs, and the admin endpoints that start one
//! (`POST /plugins/{name}/redrive`) and show how far it got
//! (`GET /plugins/{name}/redrive`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::{Filter, Progress, RedriveState, host_id};
use crate::admin::{Admin, Answer, authorize, known, refuse};
use crate::catalog::LivePlugin;
use crate::config::KafkaConfig;
use crate::control::{Control, now_ms};
use crate::locks::Lock;
use crate::shutdown::Shutdown;

/// The redrives running on this host, one per plugin at most.
#[derive(Clone)]
pub struct Runs {
    kafka: KafkaConfig,
    /// This host, as a redrive's owner.
    me: String,
    control: Control,
    shutdown: Shutdown,
    running: Arc<Mutex<BTreeMap<String, JoinHandle<()>>>>,
}

impl Runs {
    pub fn new(kafka: KafkaConfig, data_dir: &std::path::Path, control: Control) -> Self {
        Runs {
            me: host_id(&kafka, data_dir),
            kafka,
            control,
            shutdown: Shutdown::new(),
            running: Arc::default(),
        }
    }

    /// Whether a redrive of `plugin` runs here now.
    fn runs(&self, plugin: &str) -> bool {
        self.running
            .locked()
            .get(plugin)
            .is_some_and(|t| !t.is_finished())
    }

    /// Starts (or goes on with) `progress` on a thread of its own.
    fn start(
        &self,
        plugin: &str,
        live: Arc<LivePlugin>,
        progress: Progress,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let filter = Filter {
            class: progress.class.clone(),
            since: progress.since.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("{plugin}-redrive"))
            .spawn(move || {
                super::run(
                    &this.kafka,
                    live,
                    &this.control,
                    progress,
                    &filter,
                    &this.shutdown,
                );
            })?;
        self.running.locked().insert(plugin.to_string(), thread);
        Ok(())
    }

    /// Goes on with the redrives this host was running when it stopped.
    pub fn resume(&self, plugins: impl IntoIterator<Item = (String, Arc<LivePlugin>)>) {
        let me = self.me.clone();
        for (plugin, live) in plugins {
            let Some(progress) = self.control.redrive(&plugin) else {
                continue;
            };
            let Ok(progress) = serde_json::from_value::<Progress>(progress) else {
                continue;
            };
            if progress.state == RedriveState::Running && (progress.owner == me || progress.stale())
            {
                tracing::info!(
                    plugin,
                    redrive = progress.id,
                    "going on with the redrive that was running"
                );
                let mut progress = progress;
                progress.owner = me.clone();
                if let Err(e) = self.start(&plugin, live, progress) {
                    tracing::error!(plugin, "cannot go on with the redrive: {e}");
                }
            }
        }
    }

    /// Stops the redrives after the record in flight (each goes on after
    /// a restart) and waits for them.
    pub fn stop(&self) {
        self.shutdown.request();
        for (_, thread) in std::mem::take(&mut *self.running.locked()) {
            let _ = thread.join();
        }
    }
}

/// Starts a redrive of the plugin's dead letters: `{"class": "...",
/// "since": "<RFC 3339>"}`, both optional. 202 once it runs; the progress
/// is at `GET` of the same path.
pub async fn start(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    if let Err(refused) = authorize(&admin, &headers).and_then(|()| known(&admin, &name)) {
        return refused;
    }
    let (Some(runs), Some(_)) = (admin.redrives.clone(), admin.kafka.as_ref()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this host reads a file, whose dead letters are a file: replay it with plugboard replay",
        );
    };
    let body: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    let filter = Filter {
        class: body["class"].as_str().map(str::to_string),
        since: body["since"].as_str().map(str::to_string),
    };
    if let Err(e) = filter.check() {
        return refuse(StatusCode::BAD_REQUEST, e);
    }
    let Some(live) = admin.catalog.live(&name) else {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "{name} does not run on this host (see /plugins): a redrive needs a version to deliver to"
            ),
        );
    };
    if admin.control.pauses.is_paused(&name) {
        return refuse(
            StatusCode::CONFLICT,
            format!("{name} is paused: resume it first (plugboard ctl resume {name})"),
        );
    }
    let before = admin
        .control
        .redrive(&name)
        .and_then(|v| serde_json::from_value::<Progress>(v).ok());
    if runs.runs(&name) {
        return refuse(
            StatusCode::CONFLICT,
            format!("a redrive of {name} runs on this host already"),
        );
    }
    if let Some(p) = before
        .as_ref()
        .filter(|p| p.state == RedriveState::Running && !p.stale())
    {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "a redrive of {name} runs on {} ({} of {} left): wait for it to end",
                p.owner, p.remaining, p.read
            ),
        );
    }
    let now = now_ms();
    let progress = Progress {
        id: format!("{now:x}-{:x}", std::process::id()),
        owner: runs.me.clone(),
        state: RedriveState::Running,
        class: filter.class.clone(),
        since: filter.since.clone(),
        started_ms: now,
        updated_ms: now,
        end: BTreeMap::new(),
        // What earlier redrives settled stays settled.
        done: before.map(|p| p.done).unwrap_or_default(),
        read: 0,
        handled: 0,
        parked_again: 0,
        skipped: 0,
        remaining: 0,
        error: None,
    };
    let id = progress.id.clone();
    if let Err(e) = runs.start(&name, live, progress) {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start the redrive: {e}"),
        );
    }
    tracing::info!(plugin = name, redrive = id, class = ?filter.class, since = ?filter.since, "redrive asked");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "plugin": name, "id": id, "state": "running" })),
    )
}

/// How far the plugin's latest redrive got, as every host sees it.
pub async fn status(State(admin): State<Admin>, Path(name): Path<String>) -> Answer {
    match admin.control.redrive(&name) {
        Some(progress) => (StatusCode::OK, axum::Json(progress)),
        None => refuse(StatusCode::NOT_FOUND, format!("no redrive of {name} yet")),
    }
}
