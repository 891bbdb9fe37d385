//! The rollout endpoints: `POST /plugins/{name}/approve` lets a version
//! that asks for new grants go live on every host that holds it; `GET
//! /plugins/{name}/shadow` compares a shadow with the serving version, and
//! `POST /plugins/{name}/promote` makes the shadow serve.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::{Admin, Answer, authorize, known, publish, refuse};

/// How long an approval waits to see the version serve here.
const LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Approves the version of the plugin that waits as pending-approval on
/// this host (the approval goes through the control topic, so every host
/// that holds the same version swaps it in). 200 once it serves here.
pub async fn approve(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    if let Err(refused) = authorize(&admin, &headers).and_then(|()| known(&admin, &name)) {
        return refused;
    }
    let pending = admin
        .catalog
        .snapshot()
        .into_iter()
        .find(|p| p.name == name)
        .and_then(|p| p.pending_approval);
    let Some(pending) = pending else {
        return refuse(
            StatusCode::CONFLICT,
            format!("no version of {name} waits for approval on this host (see /plugins)"),
        );
    };
    let record = serde_json::json!({
        "version": pending.version,
        "asks": pending.asks,
        "at_ms": crate::control::now_ms(),
    });
    if let Err(refused) = publish(&admin, &format!("approve/{name}"), record).await {
        return refused;
    }
    tracing::info!(
        plugin = name,
        version = pending.version,
        "approved by the admin endpoint: {}",
        pending.asks.join("; ")
    );
    let began = std::time::Instant::now();
    let live = loop {
        let serving = admin
            .catalog
            .snapshot()
            .into_iter()
            .find(|p| p.name == name)
            .is_some_and(|p| {
                p.pending_approval.is_none() && p.sha256.as_deref() == Some(&pending.sha256)
            });
        if serving || began.elapsed() > LIVE_WAIT {
            break serving;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "plugin": name,
            "version": pending.version,
            "granted": pending.asks,
            "serving": live,
        })),
    )
}

/// How the shadow of the plugin compares with its serving version.
pub async fn shadow(State(admin): State<Admin>, Path(name): Path<String>) -> Answer {
    match admin.catalog.live(&name).and_then(|l| l.shadow()) {
        Some(shadow) => {
            let report = tokio::task::spawn_blocking(move || shadow.report())
                .await
                .unwrap_or_default();
            (StatusCode::OK, axum::Json(report))
        }
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("no shadow of {name} runs on this host: drop in {name}.shadow.wasm"),
        ),
    }
}

/// Makes the shadow of the plugin its serving version, on every host that
/// runs the same shadow: its files take the serving ones' place and are
/// swapped in between batches, as a reload (a version asking for new
/// grants waits for approval). 200 once it serves here or waits.
pub async fn promote(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    if let Err(refused) = authorize(&admin, &headers).and_then(|()| known(&admin, &name)) {
        return refused;
    }
    let Some(shadow) = admin.catalog.live(&name).and_then(|l| l.shadow()) else {
        return refuse(
            StatusCode::CONFLICT,
            format!("no shadow of {name} runs on this host (drop in {name}.shadow.wasm)"),
        );
    };
    let counts = shadow.counts();
    let record = serde_json::json!({
        "version": shadow.prepared.version,
        "at_ms": crate::control::now_ms(),
    });
    if let Err(refused) = publish(&admin, &format!("promote/{name}"), record).await {
        return refused;
    }
    tracing::info!(
        plugin = name,
        version = shadow.prepared.version,
        compared = counts.compared,
        agreed = counts.agreed,
        "shadow promoted by the admin endpoint"
    );
    let began = std::time::Instant::now();
    let (serving, pending) = loop {
        let status = admin
            .catalog
            .snapshot()
            .into_iter()
            .find(|p| p.name == name);
        let serving = status.as_ref().is_some_and(|p| {
            p.sha256.as_deref() == Some(&shadow.prepared.sha256)
                && admin
                    .catalog
                    .live(&name)
                    .is_some_and(|l| l.shadow().is_none())
        });
        let pending = status
            .as_ref()
            .and_then(|p| p.pending_approval.as_ref())
            .is_some_and(|p| p.version == shadow.prepared.version);
        if serving || pending || began.elapsed() > LIVE_WAIT * 2 {
            break (serving, pending);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "plugin": name,
            "version": shadow.prepared.version,
            "compared": counts.compared,
            "agreed": counts.agreed,
            "serving": serving,
            "pending_approval": pending,
        })),
    )
}
