//! The admin HTTP endpoint (loopback by default): `/plugins` (what each
//! plugin serves, its versions, last error, counts and lag), `/metrics` in
//! the Prometheus text format, `/healthz` (the process serves), `/readyz`
//! (the consumers are running).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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
    /// For each plugin group's lag in `/plugins`.
    pub kafka: Option<KafkaConfig>,
}

/// Starts serving on `addr` from a thread of its own and returns the address
/// bound (port 0 picks one).
pub fn serve(addr: SocketAddr, admin: Admin) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot serve the admin endpoint on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/plugins", get(plugins))
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

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Every plugin the host knows, as JSON. Lag is asked of the broker, so the
/// answer takes a round trip per running plugin.
async fn plugins(State(admin): State<Admin>) -> impl IntoResponse {
    let statuses = tokio::task::spawn_blocking(move || {
        let mut statuses = admin.catalog.snapshot();
        for status in &mut statuses {
            let count = |outcome: &str| {
                admin
                    .metrics
                    .events
                    .with_label_values(&[status.name.as_str(), outcome])
                    .get()
            };
            status.handled = count("handled");
            status.dead_lettered = count("dead_lettered");
            if let (Some(kafka), PluginState::Running) = (&admin.kafka, status.state) {
                status.lag = crate::source::kafka::group_lag(kafka, &status.name).ok();
            }
        }
        statuses
    })
    .await
    .unwrap_or_default();
    axum::Json(serde_json::json!({ "plugins": statuses }))
}
