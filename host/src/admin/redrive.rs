//! The redrive endpoints: `POST /plugins/{name}/redrive` starts one,
//! `GET` of the same path shows how far the latest got.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::{Admin, Answer, authorize, json_body, known, refuse};
use crate::redrive::{Filter, Progress, RedriveState};

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
    let body = match json_body(&body) {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let filter = Filter {
        class: body["class"].as_str().map(str::to_string),
        since: body["since"].as_str().map(str::to_string),
        version: body["version"].as_str().map(str::to_string),
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
    // What earlier redrives settled stays settled.
    let progress = Progress::new(
        &runs.me,
        &filter,
        before.map(|p| p.done).unwrap_or_default(),
    );
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
