//! The rollout endpoints: `POST /plugins/{name}/approve` lets a version
//! that asks for new grants go live on every host that holds it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::{Admin, Answer, authorize, known, refuse};

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
    if let Err(e) = admin
        .control
        .publish(&format!("approve/{name}"), record)
        .await
    {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"));
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
