//! The admin HTTP endpoint (loopback by default): `/`, the status page
//! ([`page`]), `/plugins` (what each
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

mod page;
mod redrive;
mod rollout;

use crate::catalog::{Catalog, PluginState, PluginStatus};
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
    /// What an operator switched: pauses, rewinds, redrives.
    pub control: crate::control::Control,
    /// The redrives this host runs (Kafka only).
    pub redrives: Option<crate::redrive::runs::Runs>,
    /// Required by the write endpoints, which are served only with one.
    pub token: Option<crate::config::AdminToken>,
    /// When the host started, for the status page.
    pub started: std::time::Instant,
    /// Counts sampled for the status page's rates.
    pub rates: Arc<page::Rates>,
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
            .route("/plugins/{name}/resume", post(resume))
            .route("/plugins/{name}/rewind", post(rewind))
            .route("/plugins/{name}/redrive", post(redrive::start))
            .route("/plugins/{name}/approve", post(rollout::approve))
            .route("/plugins/{name}/promote", post(rollout::promote));
    }
    let sampling = admin.clone();
    let app = app
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}/offsets", get(offsets))
        .route("/plugins/{name}/redrive", get(redrive::status))
        .route("/plugins/{name}/shadow", get(rollout::shadow))
        .with_state(admin);
    std::thread::Builder::new()
        .name("plugboard-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            runtime.block_on(async move {
                // Rates per minute need counts from before the page is asked.
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
                    loop {
                        every.tick().await;
                        statuses(&sampling);
                    }
                });
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
    let (ready, text) = readiness(&admin);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text)
}

/// Whether the host is ready, and `/readyz`'s text.
fn readiness(admin: &Admin) -> (bool, String) {
    if !admin.ready.load(Ordering::SeqCst) {
        return (false, "starting\n".to_string());
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
        (false, format!("not ready\n{text}"))
    } else {
        (true, format!("ready\n{text}"))
    }
}

/// Every plugin the host knows, as JSON. The lag is the consumer's own
/// statistic (at most a second old; null before the first), so the answer
/// never waits for the broker.
async fn plugins(State(admin): State<Admin>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "plugins": statuses(&admin) }))
}

/// Every plugin the host knows with its counts, lag, holds, pause and
/// redrive; the counts are sampled for the status page's rates.
fn statuses(admin: &Admin) -> Vec<PluginStatus> {
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
        admin
            .rates
            .sample(name, status.handled, status.dead_lettered);
        if let (Some(_), PluginState::Running) = (&admin.kafka, status.state) {
            status.lag = admin.metrics.lag(name);
        }
        status.waiting = holds.iter().filter(|h| h.plugin == name).cloned().collect();
        status.schemas = admin.metrics.schemas_of(name);
        status.paused = admin.control.pauses.is_paused(name);
        status.redrive = admin.control.redrive(name);
        status.shadow = admin
            .catalog
            .live(name)
            .and_then(|l| l.shadow())
            .map(|shadow| {
                let counts = shadow.counts();
                serde_json::json!({
                    "version": shadow.prepared.version,
                    "sha256": shadow.prepared.sha256,
                    "compared": counts.compared,
                    "agreed": counts.agreed,
                })
            });
    }
    statuses
}

/// The status page: HTML rendered here, reloaded by the browser.
async fn status_page(State(admin): State<Admin>) -> impl IntoResponse {
    let plugins = statuses(&admin);
    let (ready, readiness) = readiness(&admin);
    let mut lags = std::collections::BTreeMap::new();
    let mut retries = std::collections::BTreeMap::new();
    for p in &plugins {
        if p.state == PluginState::Running {
            lags.insert(p.name.clone(), admin.metrics.lag_by_partition(&p.name));
        }
        retries.insert(
            p.name.clone(),
            admin.metrics.retries.with_label_values(&[&p.name]).get(),
        );
    }
    let topic = admin.kafka.as_ref().map_or("", |k| k.topic.0.as_str());
    let html = page::render(&page::View {
        topic,
        ready,
        readiness: readiness
            .trim_start_matches("ready\n")
            .trim_start_matches("not ready\n"),
        uptime: admin.started.elapsed(),
        plugins: &plugins,
        lags: &lags,
        retries: &retries,
        rates: &admin.rates,
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
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

/// A request's JSON body (`{}` if empty); 400 if it is not JSON.
fn json_body(body: &[u8]) -> Result<serde_json::Value, Answer> {
    if body.is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
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
    set_paused(&admin, &name, &headers, true).await
}

async fn resume(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    set_paused(&admin, &name, &headers, false).await
}

/// Writes `record` under `key` to the control topic (every host applies
/// it); 503 if the topic does not take it.
async fn publish(admin: &Admin, key: &str, record: serde_json::Value) -> Result<(), Answer> {
    admin
        .control
        .publish(key, record)
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))
}

/// Refuses a request for a plugin this host does not know.
fn known(admin: &Admin, name: &str) -> Result<(), Answer> {
    if admin.catalog.snapshot().iter().any(|p| p.name == name) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no plugin {name} on this host (see /plugins)"),
        ))
    }
}

/// Pauses or resumes a plugin on every host of its group (through the
/// control topic), kept across restarts.
async fn set_paused(admin: &Admin, name: &str, headers: &HeaderMap, paused: bool) -> Answer {
    if let Err(refused) = authorize(admin, headers).and_then(|()| known(admin, name)) {
        return refused;
    }
    let record = serde_json::json!({ "paused": paused, "at_ms": crate::control::now_ms() });
    if let Err(refused) = publish(admin, &format!("pause/{name}"), record).await {
        return refused;
    }
    tracing::info!(
        plugin = name,
        "{} by the admin endpoint",
        if paused { "paused" } else { "resumed" }
    );
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "plugin": name,
            "paused": paused,
            "every_host": admin.control.shared(),
        })),
    )
}

/// How long a rewind waits beyond the members' session timeout for the
/// group to empty.
const LEAVE_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Moves the plugin's group to `{"to": ...}` while the host runs (see
/// [`crate::source::kafka::rewind`]): every member leaves, the group's
/// offsets are committed, the members join again. Refused (nothing moved)
/// if the target is not one, another rewind of the plugin is under way,
/// or the group does not empty in time.
async fn rewind(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    use crate::control::{RewindOrder, RewindPhase, now_ms};
    use crate::source::kafka::rewind::{self as group, RewindTo};
    if let Err(refused) = authorize(&admin, &headers).and_then(|()| known(&admin, &name)) {
        return refused;
    }
    let Some(kafka) = admin.kafka.clone() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this host reads a file, not Kafka: run it again with --from-offset instead",
        );
    };
    let body = match json_body(&body) {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let to = match RewindTo::parse(&body["to"]) {
        Ok(to) => to,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    if let Some(order) = admin
        .control
        .rewind(&name)
        .filter(RewindOrder::holds_members_out)
    {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "a rewind of {name} is under way (id {}): wait for it to end",
                order.id
            ),
        );
    }
    let blocking = |f: Box<dyn FnOnce() -> anyhow::Result<serde_json::Value> + Send>| async {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|r| r)
    };
    {
        let (kafka, name, to) = (kafka.clone(), name.clone(), to.clone());
        let checked = blocking(Box::new(move || {
            group::check(&kafka, &name, &to, OFFSETS_TIMEOUT).map(|()| serde_json::Value::Null)
        }))
        .await;
        if let Err(e) = checked {
            return refuse(StatusCode::BAD_REQUEST, format!("{e:#}"));
        }
    }
    let started = std::time::Instant::now();
    let mut order = RewindOrder {
        id: format!("{:x}-{:x}", now_ms(), std::process::id()),
        phase: RewindPhase::Leave,
        at_ms: now_ms(),
        to: body["to"].clone(),
        offsets: Default::default(),
        error: None,
    };
    let key = format!("rewind/{name}");
    let publish = |order: &RewindOrder| {
        let value = serde_json::to_value(order).expect("an order is JSON");
        let control = admin.control.clone();
        let key = key.clone();
        async move { control.publish(&key, value).await }
    };
    if let Err(e) = publish(&order).await {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"));
    }
    tracing::info!(plugin = name, rewind = order.id, to = %body["to"], "rewind asked: every member of the group leaves");
    // Every member leaves; a static member that left without saying so
    // stays until its session times out.
    let deadline = started + group::session_timeout(&kafka) + LEAVE_GRACE;
    let moved: anyhow::Result<serde_json::Value> = loop {
        let (k, n) = (kafka.clone(), name.clone());
        let members = blocking(Box::new(move || {
            group::members(&k, &n, OFFSETS_TIMEOUT).map(|m| serde_json::json!(m))
        }))
        .await;
        match members {
            Ok(m) if m.as_array().is_some_and(Vec::is_empty) => {}
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            Ok(m) => {
                break Err(anyhow::anyhow!(
                    "the group still has members after {:.0?}: {}. Members that are not plugboard hosts                      following the control topic {} (another tool, an older host) must be stopped first;                      nothing was moved",
                    started.elapsed(),
                    m.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::control::topic::name(&kafka),
                ));
            }
            Err(e) => break Err(e),
        }
        let (k, n, t) = (kafka.clone(), name.clone(), to.clone());
        break blocking(Box::new(move || {
            let before = crate::source::kafka::group_offsets(&k, &n, OFFSETS_TIMEOUT)?;
            let after = group::resolve(&k, &n, &t, OFFSETS_TIMEOUT)?;
            group::commit(&k, &n, &after)?;
            let partitions: Vec<serde_json::Value> = before
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "partition": p.partition,
                        "before": p.committed,
                        "after": after.get(&p.partition).copied().or(p.committed),
                    })
                })
                .collect();
            Ok(serde_json::json!({ "offsets": after, "partitions": partitions }))
        }))
        .await;
    };
    match moved {
        Ok(moved) => {
            order.phase = RewindPhase::Done;
            order.offsets = serde_json::from_value(moved["offsets"].clone()).unwrap_or_default();
            if let Err(e) = publish(&order).await {
                // The members go back after REWIND_EXPIRY anyway.
                tracing::error!(
                    plugin = name,
                    "the rewind is done but cannot be told: {e:#}"
                );
            }
            admin.metrics.rewinds.with_label_values(&[&name]).inc();
            tracing::info!(
                plugin = name,
                rewind = order.id,
                "rewind done in {:.1?}",
                started.elapsed()
            );
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "plugin": name,
                    "group": format!("{}{name}", kafka.group_prefix),
                    "to": body["to"],
                    "partitions": moved["partitions"],
                    "seconds": started.elapsed().as_secs_f64(),
                })),
            )
        }
        Err(e) => {
            order.phase = RewindPhase::Cancelled;
            order.error = Some(format!("{e:#}"));
            let _ = publish(&order).await;
            tracing::warn!(plugin = name, rewind = order.id, "rewind cancelled: {e:#}");
            refuse(StatusCode::CONFLICT, format!("{e:#}"))
        }
    }
}
