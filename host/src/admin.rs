//! The admin HTTP endpoint (loopback by default): `/plugins` (what each
//! plugin serves, its versions, last error, counts, lag and the partitions
//! that wait), `/metrics` in the Prometheus text format, `/healthz` (the
//! process serves), `/readyz` (the consumers run and no part of the host
//! fails), and `/plugins/{name}/offsets` (committed offset, end and lag
//! per partition of the plugin's group). Everything but the offsets is
//! answered from what the host knows: only the offsets ask the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::catalog::{Catalog, PluginState};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// What the endpoint reports on.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// What `/readyz` reports.
    pub ready: Arc<AtomicBool>,
    pub catalog: Catalog,
    /// Set under Kafka: `/plugins` reports each plugin's lag.
    pub kafka: Option<KafkaConfig>,
    /// Which plugins are paused.
    pub pauses: crate::control::Pauses,
    /// Required by the write endpoints, which are served only with one.
    pub token: Option<crate::config::AdminToken>,
}

/// Starts serving on `addr` from a thread of its own and returns the address
/// bound (port 0 picks one).
pub fn serve(addr: SocketAddr, admin: Admin) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot serve the admin endpoint on {addr}: is another host on this machine using it? \
             Give each host its own admin_addr (e.g. PLUGBOARD_ADMIN_ADDR=127.0.0.1:9465), or port 0 for any free one"
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let mut app = Router::new();
    if admin.token.is_some() {
        app = app
            .route("/plugins/{name}/pause", post(pause))
            .route("/plugins/{name}/resume", post(resume));
    }
    let app = app
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}/offsets", get(offsets))
        .with_state(admin);
    std::thread::Builder::new()
        .name("plugboard-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("admin listener");
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("admin endpoint stopped: {e}");
                }
            });
        })?;
    Ok(bound)
}

async fn metrics_text(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
}

/// Ready once the consumers run, unless a part of the host fails (state
/// store, dead-letter topic, broker). Partitions waiting for a plugin's
/// sink are listed but keep the host ready: the host itself is fine.
async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if !admin.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string());
    }
    let holds = admin.metrics.holds.snapshot();
    let mut text = String::new();
    for h in &holds {
        let partition = match h.partition {
            crate::hold::ALL_PARTITIONS => "all partitions".to_string(),
            p => format!("partition {p}"),
        };
        text.push_str(&format!(
            "{} {partition} waits for the {} since {} ({} s): {}\n",
            h.plugin,
            h.cause.as_str(),
            h.since,
            h.seconds,
            h.reason
        ));
    }
    if admin.metrics.holds.host_failing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{text}"),
        )
    } else {
        (StatusCode::OK, format!("ready\n{text}"))
    }
}

/// Every plugin the host knows, as JSON. The lag is the consumer's own
/// statistic (at most a second old; null before the first), so the answer
/// never waits for the broker.
async fn plugins(State(admin): State<Admin>) -> impl IntoResponse {
    let mut statuses = admin.catalog.snapshot();
    let holds = admin.metrics.holds.snapshot();
    for status in &mut statuses {
        let name = status.name.as_str();
        let count = |outcome: &str| {
            admin
                .metrics
                .events
                .with_label_values(&[name, outcome])
                .get()
        };
        status.handled = count("handled");
        status.dead_lettered = count("dead_lettered");
        if let (Some(_), PluginState::Running) = (&admin.kafka, status.state) {
            status.lag = admin.metrics.lag(name);
        }
        status.waiting = holds.iter().filter(|h| h.plugin == name).cloned().collect();
        status.paused = admin.pauses.is_paused(name);
    }
    axum::Json(serde_json::json!({ "plugins": statuses }))
}

/// How long `/plugins/{name}/offsets` waits for each answer of the broker.
const OFFSETS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The plugin's group, per partition: committed offset, high watermark and
/// lag, asked of the broker. 404 for a plugin the host does not know or a
/// host without Kafka, 503 if the broker does not answer.
async fn offsets(State(admin): State<Admin>, Path(name): Path<String>) -> impl IntoResponse {
    let error = |status: StatusCode, error: String| {
        (status, axum::Json(serde_json::json!({ "error": error })))
    };
    let Some(kafka) = admin.kafka.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this host reads a file, not Kafka: there are no offsets".into(),
        );
    };
    if !admin.catalog.snapshot().iter().any(|p| p.name == name) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no plugin {name} on this host (see /plugins)"),
        );
    }
    let group = format!("{}{name}", kafka.group_prefix);
    let asked = tokio::task::spawn_blocking(move || {
        crate::source::kafka::group_offsets(&kafka, &name, OFFSETS_TIMEOUT)
    })
    .await;
    match asked {
        Ok(Ok(partitions)) => {
            let lag: i64 = partitions.iter().map(|p| p.lag).sum();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "group": group,
                    "lag": lag,
                    "partitions": partitions,
                })),
            )
        }
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the offsets of group {group}: {e:#}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An answer of a write endpoint: JSON, `error` saying why it failed.
type Answer = (StatusCode, axum::Json<serde_json::Value>);

fn refuse(status: StatusCode, error: impl Into<String>) -> Answer {
    (
        status,
        axum::Json(serde_json::json!({ "error": error.into() })),
    )
}

/// 401 without a bearer token, 403 with a wrong one; the token is never
/// logged or echoed.
fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), Answer> {
    let Some(token) = &admin.token else {
        return Err(refuse(StatusCode::NOT_FOUND, "write endpoints are off"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (plugboard ctl --token, or PLUGBOARD_ADMIN_TOKEN)",
        )),
        Some(given) if !token.matches(given) => {
            tracing::warn!("admin write refused: wrong token");
            Err(refuse(StatusCode::FORBIDDEN, "wrong admin token"))
        }
        Some(_) => Ok(()),
    }
}

async fn pause(State(admin): State<Admin>, Path(name): Path<String>, headers: HeaderMap) -> Answer {
    set_paused(&admin, &name, &headers, true)
}

async fn resume(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    set_paused(&admin, &name, &headers, false)
}

/// Pauses or resumes a plugin this host knows, kept across restarts.
fn set_paused(admin: &Admin, name: &str, headers: &HeaderMap, paused: bool) -> Answer {
    if let Err(refused) = authorize(admin, headers) {
        return refused;
    }
    if !admin.catalog.snapshot().iter().any(|p| p.name == name) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no plugin {name} on this host (see /plugins)"),
        );
    }
    if let Err(e) = admin.pauses.set(name, paused) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    admin.metrics.set_paused(name, paused);
    tracing::info!(
        plugin = name,
        "{} by the admin endpoint",
        if paused { "paused" } else { "resumed" }
    );
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "plugin": name, "paused": paused })),
    )
}
