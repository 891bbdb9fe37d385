//! The HTTP API, answering errors in HubSpot's JSON shape
//! (`{"status":"error","message":...,"category":...}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::store::Store;

#[derive(Clone)]
struct App {
    store: Store,
    token: Option<String>,
    stats: Arc<Stats>,
}

/// What the CRM was asked, since it started: how a benchmark or a test
/// knows every record arrived without reading them all back.
#[derive(Default)]
struct Stats {
    upsert_requests: AtomicU64,
    upsert_inputs: AtomicU64,
    read_requests: AtomicU64,
}

/// The API; objects requests answered `latency` late.
pub fn router(store: Store, token: Option<String>, latency: std::time::Duration) -> Router {
    let objects = Router::new()
        .route(
            "/crm/v3/objects/{object_type}/batch/upsert",
            post(batch_upsert),
        )
        .route("/crm/v3/objects/{object_type}/batch/read", post(batch_read))
        .route("/crm/v3/objects/{object_type}/{id}", get(get_one))
        .route("/crm/v3/objects/{object_type}", get(list));
    let objects = if latency.is_zero() {
        objects
    } else {
        objects.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                tokio::time::sleep(latency).await;
                next.run(request).await
            },
        ))
    };
    objects.route("/stats", get(stats)).with_state(App {
        store,
        token,
        stats: Arc::default(),
    })
}

/// An error response in HubSpot's shape.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "message": self.2, "category": self.1});
        (self.0, Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            format!("{e:#}"),
        )
    }
}

/// Runs a store call off the async threads: SQLite blocks, and a runtime
/// thread blocked on it would delay every other request's answer.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let result = tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| anyhow::anyhow!("the store call failed: {e}"))?;
    Ok(result?)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message.into())
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.token else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found or invalid: send Authorization: Bearer <token>"
                .into(),
        ))
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("Invalid input JSON: {e}")))
}

fn inputs(body: &Value) -> Result<&Vec<Value>, ApiError> {
    let inputs = body["inputs"]
        .as_array()
        .ok_or_else(|| bad_request("`inputs` must be an array"))?;
    if inputs.len() > 100 {
        return Err(bad_request(format!(
            "at most 100 inputs per batch, got {}",
            inputs.len()
        )));
    }
    Ok(inputs)
}

/// HubSpot stores property values as strings; numbers and booleans are
/// accepted and stored as their text.
fn string_properties(value: &Value, at: usize) -> Result<Map<String, Value>, ApiError> {
    let map = value
        .as_object()
        .ok_or_else(|| bad_request(format!("inputs[{at}].properties must be an object")))?;
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(bad_request(format!(
                        "inputs[{at}].properties.{k}: property values must be strings, numbers or booleans"
                    )));
                }
            };
            Ok((k.clone(), Value::String(text)))
        })
        .collect()
}

async fn batch_upsert(
    State(app): State<App>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let body = parse_body(&body)?;
    let mut parsed = Vec::new();
    for (i, input) in inputs(&body)?.iter().enumerate() {
        let id_property = input["idProperty"]
            .as_str()
            .ok_or_else(|| bad_request(format!("inputs[{i}].idProperty is required")))?;
        let id = input["id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad_request(format!("inputs[{i}].id is required")))?;
        let properties = string_properties(&input["properties"], i)?;
        parsed.push((id_property.to_string(), id.to_string(), properties));
    }
    let upserted = parsed.len() as u64;
    let store = app.store.clone();
    let results = blocking(move || store.upsert(&object_type, &parsed)).await?;
    app.stats.upsert_requests.fetch_add(1, Ordering::Relaxed);
    app.stats
        .upsert_inputs
        .fetch_add(upserted, Ordering::Relaxed);
    Ok(Json(json!({"status": "COMPLETE", "results": results})))
}

/// `GET /stats`: batch upserts and reads answered, and the inputs upserted
/// (not a HubSpot endpoint).
async fn stats(State(app): State<App>) -> Json<Value> {
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    Json(json!({
        "upsert_requests": get(&app.stats.upsert_requests),
        "upsert_inputs": get(&app.stats.upsert_inputs),
        "read_requests": get(&app.stats.read_requests),
    }))
}

async fn batch_read(
    State(app): State<App>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    app.stats.read_requests.fetch_add(1, Ordering::Relaxed);
    let body = parse_body(&body)?;
    let id_property = body["idProperty"].as_str().map(str::to_owned);
    let ids = inputs(&body)?
        .iter()
        .enumerate()
        .map(|(i, input)| {
            input["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad_request(format!("inputs[{i}].id is required")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let store = app.store.clone();
    let (ids, found) = blocking(move || {
        let found = store.find_many(&object_type, id_property.as_deref(), &ids)?;
        Ok((ids, found))
    })
    .await?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (id, found) in ids.into_iter().zip(found) {
        match found {
            Some(mut object) => {
                // Like HubSpot: only the properties asked for, if a list
                // was given.
                if let Some(wanted) = body["properties"].as_array() {
                    object
                        .properties
                        .retain(|name, _| wanted.iter().any(|w| w.as_str() == Some(name)));
                }
                results.push(object)
            }
            None => missing.push(id),
        }
    }
    let mut out = json!({"status": "COMPLETE", "results": results});
    if missing.is_empty() {
        return Ok(Json(out).into_response());
    }
    // Like HubSpot: 207 with the ids it could not find.
    out["errors"] = json!([{
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some objects, they may be deleted or not exist.",
        "context": {"ids": missing},
    }]);
    Ok((StatusCode::MULTI_STATUS, Json(out)).into_response())
}

async fn get_one(
    State(app): State<App>,
    Path((object_type, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let id_property = query.get("idProperty").cloned();
    let store = app.store.clone();
    let id_for_find = id.clone();
    let found =
        blocking(move || store.find(&object_type, id_property.as_deref(), &id_for_find)).await?;
    match found {
        Some(object) => Ok(Json(serde_json::to_value(object).expect("serialisable"))),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("Object not found. objectId are usually numeric. ({id})"),
        )),
    }
}

async fn list(
    State(app): State<App>,
    Path(object_type): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let limit = match query.get("limit") {
        None => 10,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                bad_request(format!("limit must be a number from 1 to 100, got `{l}`"))
            })?,
    };
    let after = match query.get("after") {
        None => 0,
        Some(a) => a.parse::<i64>().map_err(|_| {
            bad_request(format!(
                "after must be a cursor from paging.next.after, got `{a}`"
            ))
        })?,
    };
    let store = app.store.clone();
    let page = blocking(move || store.page(&object_type, limit + 1, after)).await?;
    let more = page.len() > limit;
    let results: Vec<_> = page.into_iter().take(limit).collect();
    let next = results.last().filter(|_| more).map(|last| last.id.clone());
    let mut out = json!({ "results": results });
    if let Some(after) = next {
        out["paging"] = json!({"next": {"after": after}});
    }
    Ok(Json(out))
}
