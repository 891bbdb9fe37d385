//! A small blocking HTTP client over `wasi:http/outgoing-handler`, for
//! plugins built on the `plugin-with-http` world. Requests go only to the
//! origins granted in the plugin's manifest (`allow_hosts`).

use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Where requests go: parsed once from the configured base URL.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: Scheme,
    authority: String,
    /// Path prefix, without a trailing slash.
    prefix: String,
}

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
        })
    }
}

pub struct Response {
    pub status: u16,
    pub retry_after_secs: Option<u32>,
    pub body: Vec<u8>,
}

/// Why a request produced no response: always worth a retry.
#[derive(Debug)]
pub struct TransportError(pub String);

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
    let pending = outgoing_handler::handle(request, None).map_err(describe)?;
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
        ErrorCode::HttpRequestDenied => {
            "HTTP request denied by the host: grant the origin in allow_hosts".to_string()
        }
        ErrorCode::ConnectionRefused => "connection refused".to_string(),
        other => format!("{other:?}"),
    })
}
