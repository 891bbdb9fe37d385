//! A small blocking HTTP client over `wasi:http/outgoing-handler`, for
//! plugins built on the `plugin-with-http` world. Requests go only to the
//! origins granted in the plugin's manifest (`allow_hosts`).

use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// Where requests go: parsed once from the configured base URL.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: Scheme,
    authority: String,
    /// Path prefix, without a trailing slash.
    prefix: String,
    /// How long a request may wait to connect, and then for each part of
    /// the answer: a service that never answers becomes a retry instead
    /// of a call that runs into the plugin's time budget.
    timeout_ms: u64,
}

/// Unless [`Origin::with_timeout_ms`] says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

impl Origin {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("base_url `{url}` must start with http:// or https://"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("base_url `{url}`: unsupported scheme `{other}`")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("base_url `{url}` has no host"));
        }
        Ok(Origin {
            scheme,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        })
    }

    /// Requests give up after `ms` without progress (connect, first byte,
    /// between bytes). Keep it well below the plugin's `timeout_ms`.
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms.max(1);
        self
    }
}

pub struct Response {
    pub status: u16,
    pub retry_after_secs: Option<u32>,
    pub body: Vec<u8>,
}

/// Why a request produced no response: worth a retry, unless the host
/// denied it ([`TransportError::is_denied`]).
#[derive(Debug)]
pub struct TransportError(pub String);

const DENIED: &str = "HTTP request denied by the host";

impl TransportError {
    /// The host refused the request: the origin is not granted to this
    /// plugin, and no retry can change that.
    pub fn is_denied(&self) -> bool {
        self.0.starts_with(DENIED)
    }
}

pub fn send(
    origin: &Origin,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, TransportError> {
    let err = |what: &str| TransportError(what.to_string());
    let mut list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    list.push(("content-length".into(), body.len().to_string().into_bytes()));
    let fields =
        Fields::from_list(&list).map_err(|e| TransportError(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    request.set_method(&method).map_err(|_| err("bad method"))?;
    request
        .set_scheme(Some(&origin.scheme))
        .map_err(|_| err("bad scheme"))?;
    request
        .set_authority(Some(&origin.authority))
        .map_err(|_| err("bad authority"))?;
    request
        .set_path_with_query(Some(&format!("{}{path}", origin.prefix)))
        .map_err(|_| err("bad path"))?;
    let outgoing = request
        .body()
        .map_err(|_| err("request body taken twice"))?;
    // Send first, then stream the body: the host buffers little, so writing
    // a large body before sending would wait forever.
    let options = RequestOptions::new();
    let timeout = Some(origin.timeout_ms.saturating_mul(1_000_000));
    // A host may not support every timeout; what it supports applies.
    let _ = options.set_connect_timeout(timeout);
    let _ = options.set_first_byte_timeout(timeout);
    let _ = options.set_between_bytes_timeout(timeout);
    let pending = outgoing_handler::handle(request, Some(options)).map_err(describe)?;
    // If the body cannot be written, the response future says why (the
    // request was denied, the connection refused): prefer its answer.
    let mut write_error = None;
    {
        let stream = outgoing
            .write()
            .map_err(|_| err("request body stream taken twice"))?;
        for chunk in body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                write_error = Some(TransportError(format!("writing the request body: {e:?}")));
                break;
            }
        }
    }
    let finished = OutgoingBody::finish(outgoing, None);

    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| err("response not ready after waiting"))?
        .map_err(|_| err("response taken twice"))?
        .map_err(describe)?;
    if let Some(e) = write_error {
        return Err(e);
    }
    finished.map_err(describe)?;
    let status = response.status();
    let retry_after_secs = response
        .headers()
        .get("retry-after")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
    let incoming = response
        .consume()
        .map_err(|_| err("response body taken twice"))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|_| err("response stream taken twice"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(TransportError(format!("reading the response: {e:?}"))),
            }
        }
    }
    let _ = IncomingBody::finish(incoming);
    Ok(Response {
        status,
        retry_after_secs,
        body,
    })
}

fn describe(e: ErrorCode) -> TransportError {
    TransportError(match e {
        ErrorCode::HttpRequestDenied => format!("{DENIED}: grant the origin in allow_hosts"),
        ErrorCode::ConnectionRefused => "connection refused".to_string(),
        other => format!("{other:?}"),
    })
}
