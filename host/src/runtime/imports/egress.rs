//! The outgoing-HTTP policy of one plugin: requests go out only to the
//! origins its manifest grants; anything else fails inside the plugin with
//! `HTTP-request-denied`, and is logged and counted.
//!
//! A request also ends within the call's time budget, whatever the guest
//! library asks for (wasi-http waits up to 600 s by default, and a host
//! call is not interrupted by the epoch deadline): its connect, first-byte
//! and between-bytes timeouts are capped at what is left of the budget,
//! and the whole exchange is cut there and at a stop or revoke. The guest
//! sees a timeout and answers retry, or the epoch deadline, passed by then,
//! ends the call as a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::locks::Lock;
use crate::metrics::Metrics;
use crate::runtime::observer::{EffectsLog, Exchange, Observer};
use crate::shutdown::Shutdown;

/// Adds `wasi:http/outgoing-handler`, every request checked by [`Egress`].
pub fn add_to_linker<T: wasmtime_wasi_http::WasiHttpView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)
}

/// Per-instance egress policy, consulted by wasi-http before every request.
pub struct Egress {
    pub(crate) plugin: Arc<str>,
    /// Normalised origins (`scheme://host:port`); empty grants nothing.
    pub(crate) allowed: Arc<[String]>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set by `plugboard replay`: requests are recorded, and answered by a
    /// stub unless sending is allowed.
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// The plugin's time budget per call.
    pub(crate) budget: Duration,
    /// When the call in progress must end: set before each call.
    pub(crate) deadline: Option<Instant>,
    /// The stop of the worker that calls: a request in flight ends with it.
    pub(crate) stop: Option<Shutdown>,
    /// The instance's call in progress: a request in flight shows in the
    /// partition's `waiting` once the call lasts.
    pub(crate) call: Arc<crate::hold::CallSlot>,
    /// While set (a shadow runs beside this version, or this is the
    /// shadow), each request is kept in `effects` with its body and answer.
    pub(crate) tap: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) effects: crate::runtime::observer::EffectsLog,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl Egress {
    /// The request's origin, normalised as grants are, so they compare
    /// equal.
    fn origin_of(request: &http::Request<WasiBody>) -> String {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or_default();
        let raw = match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        // A scheme that cannot be granted is never allowed anyway.
        crate::config::normalise_origin(&raw).unwrap_or(raw)
    }
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let origin = Self::origin_of(&request);
        let line = format!("http {} {}", request.method(), request.uri());
        if !self.allowed.contains(&origin) {
            if let Some(observer) = &self.observer {
                observer.record(format!(
                    "{line} -> denied: {origin} is not granted (allow_hosts, or --allow-host)"
                ));
            }
            tracing::warn!(
                plugin = &*self.plugin,
                %origin,
                "outgoing HTTP denied: origin not in the plugin's allow_hosts"
            );
            self.metrics.egress_denied(&self.plugin, &origin);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let left = self
            .deadline
            .map_or(self.budget, |d| d.saturating_duration_since(Instant::now()))
            .min(self.budget);
        let capped = |asked: Option<Duration>| Some(asked.map_or(left, |a| a.min(left)));
        let options = Some(RequestOptions {
            connect_timeout: capped(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: capped(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: capped(options.and_then(|o| o.between_bytes_timeout)),
        });
        let stop = self.stop.clone();
        _ = fut;
        let tapped = self
            .tap
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| self.effects.clone());
        if let Some(observer) = self.observer.clone() {
            match observer.answer(&origin) {
                Some(answer) => {
                    let respond = observer.responder();
                    return Box::new(capture(request, line, observer, respond, answer, tapped));
                }
                None => observer.record(format!("{line} (sent)")),
            }
        }
        let call = self.call.clone();
        call.waits_on(Some(format!("an outgoing request to {origin}")));
        Box::new(async move {
            use http_body_util::BodyExt;
            let _waited = CallWaited(call);
            let work = async {
                let Some(effects) = tapped else {
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, options).await?;
                    return Ok((
                        response.map(BodyExt::boxed_unsync),
                        Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ));
                };
                send_tapped(request, options, effects).await
            };
            tokio::select! {
                sent = tokio::time::timeout(left, work) => {
                    sent.map_err(|_| Error::ConnectionReadTimeout)?
                }
                () = stopped(stop) => {
                    Err(Error::InternalError(Some(
                        "the partition is stopping: the request was cut".into(),
                    )))
                }
            }
        })
    }
}

/// Says, when dropped, that the call no longer waits on the request
/// (answered, failed or cut).
struct CallWaited(Arc<crate::hold::CallSlot>);

impl Drop for CallWaited {
    fn drop(&mut self) {
        self.0.waits_on(None);
    }
}

/// Resolves once `stop` is raised; never without one.
async fn stopped(stop: Option<Shutdown>) {
    let Some(stop) = stop else {
        return std::future::pending().await;
    };
    while !stop.is_requested() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Answered = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// A whole body as bytes: what a tapped request or answer keeps.
fn full(bytes: bytes::Bytes) -> WasiBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Sends a request of a tapped instance: its body and the answer's are
/// read whole (the connection driven meanwhile) and kept in `effects`.
async fn send_tapped(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    effects: EffectsLog,
) -> Answered {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let sent = body.collect().await?.to_bytes();
    let mut exchange = Exchange {
        method: parts.method.to_string(),
        url: parts.uri.to_string(),
        body: String::from_utf8_lossy(&sent).into_owned(),
        ..Exchange::default()
    };
    let request = http::Request::from_parts(parts, full(sent));
    let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
    let (parts, body) = response.into_parts();
    let mut io = Box::pin(io);
    let mut io_result = None;
    let collect = body.collect();
    tokio::pin!(collect);
    let answer = loop {
        tokio::select! {
            body = &mut collect => break body?.to_bytes(),
            done = &mut io, if io_result.is_none() => io_result = Some(done),
        }
    };
    exchange.status = parts.status.as_u16();
    exchange.response = String::from_utf8_lossy(&answer).into_owned();
    effects.locked().requests.push(exchange);
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = match io_result {
        Some(done) => Box::new(async move { done }),
        None => Box::new(io),
    };
    Ok((http::Response::from_parts(parts, full(answer)), io))
}

/// Records a request with its body and answers it (with the stub, or what
/// the observer knows better), sending nothing; a tapped instance keeps it
/// in `effects` too.
async fn capture(
    request: http::Request<WasiBody>,
    line: String,
    observer: Arc<dyn Observer>,
    respond: crate::runtime::observer::Responder,
    stub: (u16, String),
    tapped: Option<EffectsLog>,
) -> Answered {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let sent = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut exchange = Exchange {
        method: parts.method.to_string(),
        url: parts.uri.to_string(),
        body: String::from_utf8_lossy(&sent).into_owned(),
        ..Exchange::default()
    };
    let (status, body) = respond(&exchange, stub);
    observer.record(format!("{line} -> {status} (stub, not sent)"));
    if !sent.is_empty() {
        observer.record(format!("  body: {}", exchange.body));
    }
    exchange.status = status;
    exchange.response = body.clone();
    if let Some(effects) = tapped {
        effects.locked().requests.push(exchange);
    }
    let response = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(bytes::Bytes::from(body)))
        .map_err(|e| Error::InternalError(Some(e.to_string())))?;
    Ok((
        response,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
    ))
}
