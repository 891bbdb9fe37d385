//! The outgoing-HTTP policy of one plugin: requests go out only to the
//! origins its manifest grants; anything else fails inside the plugin with
//! `HTTP-request-denied`, and is logged and counted.

use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::Metrics;

/// Per-instance egress policy, consulted by wasi-http before every request.
pub struct Egress {
    pub(super) plugin: Arc<str>,
    /// Normalised origins (`scheme://host:port`); empty grants nothing.
    pub(super) allowed: Arc<[String]>,
    pub(super) metrics: Arc<Metrics>,
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
    fn origin_of(request: &http::Request<WasiBody>) -> String {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        format!("{scheme}://{host}:{port}")
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
        if !self.allowed.contains(&origin) {
            tracing::warn!(
                plugin = &*self.plugin,
                %origin,
                "outgoing HTTP denied: origin not in the plugin's allow_hosts"
            );
            self.metrics
                .egress_denied
                .with_label_values(&[&*self.plugin, &origin])
                .inc();
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}
