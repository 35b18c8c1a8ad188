//! The outermost middleware: request id, client address, the request span and access log, header
//! limits, security headers, and rendering of every error as a problem document.
//!
//! These run on every request, so they are one hand-written service with one allocation for the
//! future instead of a chain of `from_fn` layers (see scripts/bench for what this costs).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Request, header};
use ipnet::IpNet;
use portcullis_app::Metrics;
use portcullis_domain::RequestId;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::WebConfig;
use crate::forwarded::{ForwardedHeader, resolve_client};
use crate::middleware::headers;
use crate::problem::{PROBLEM_JSON, Problem, ProblemType};

/// The header carrying the request id, in both directions.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts about the connection a request arrived on, inserted by the server's accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Who the client is, as far as this server can tell; inserted for handlers and later middleware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client address (the peer, or what a trusted proxy reported).
    pub ip: IpAddr,
    /// Whether the client reached us over https (directly or through a trusted proxy).
    pub https: bool,
}

#[derive(Debug)]
struct EdgeSettings {
    trusted_proxies: Vec<IpNet>,
    forwarded_header: ForwardedHeader,
    max_headers: usize,
    max_header_bytes: usize,
    hsts: HeaderValue,
    /// Where requests are counted; `None` for routers whose requests are not traffic (the redirect
    /// and metrics listeners, test probes).
    metrics: Option<Metrics>,
}

/// Layer producing [`Edge`].
#[derive(Debug, Clone)]
pub(crate) struct EdgeLayer {
    settings: Arc<EdgeSettings>,
}

impl EdgeLayer {
    pub(crate) fn new(config: &WebConfig, metrics: Option<Metrics>) -> Self {
        Self {
            settings: Arc::new(EdgeSettings {
                trusted_proxies: config.trusted_proxies.clone(),
                forwarded_header: config.forwarded_header,
                max_headers: config.max_headers,
                max_header_bytes: config.max_header_bytes,
                hsts: config.hsts.header_value(),
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge { inner, settings: self.settings.clone() }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    settings: Arc<EdgeSettings>,
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let settings = self.settings.clone();

        // A well-formed incoming id is kept (its header value reused as is); otherwise one is made.
        let incoming = request
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| Some((v.clone(), RequestId::parse(v.to_str().ok()?).ok()?)));
        let (request_id_header, request_id) = incoming.unwrap_or_else(|| {
            let id = RequestId::from_random_bytes(uuid::Uuid::new_v4().into_bytes());
            let header = HeaderValue::from_str(id.as_str()).unwrap_or(HeaderValue::from_static("-"));
            (header, id)
        });

        let connection = connection_of(&request);
        let forwarded = resolve_client(
            connection.peer.ip(),
            request.headers(),
            &settings.trusted_proxies,
            settings.forwarded_header,
        );
        let client = ClientInfo {
            ip: forwarded.client_ip,
            https: connection.tls || forwarded.forwarded_https == Some(true),
        };

        // The route template, never the raw path: paths carry ids and tokens (CONVENTIONS.md, "Logging").
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_for_log(request.method());
        let span = tracing::info_span!(
            "request",
            method,
            route = route.as_ref().map_or("-", MatchedPath::as_str),
            request_id = %request_id,
            client_ip = %client.ip,
        );

        let oversized = headers_too_large(&request, &settings);
        request.extensions_mut().insert(request_id.clone());
        request.extensions_mut().insert(client);

        // Standard tower practice: call the clone that was driven ready, keep a fresh one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let in_flight = settings.metrics.as_ref().map(Metrics::request_started);
        Box::pin(async move {
            let mut response = match oversized {
                Some(problem) => problem.into_response(),
                None => inner.call(request).instrument(span.clone()).await?,
            };
            finish(&mut response, &request_id, request_id_header, client.https.then_some(&settings.hsts));
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            if let Some(metrics) = &settings.metrics {
                // The template (bounded by the route table), never the path: `unmatched` for 404s
                // outside it, so scanners cannot grow the label set.
                metrics.request_finished(
                    method,
                    route.as_ref().map_or("unmatched", MatchedPath::as_str),
                    status,
                    elapsed,
                );
            }
            drop(in_flight);
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            if response.status().is_server_error() {
                tracing::warn!(parent: &span, status, latency_ms, "request completed");
            } else {
                tracing::info!(parent: &span, status, latency_ms, "request completed");
            }
            Ok(response)
        })
    }
}

/// The connection facts from the server, or from axum's `ConnectInfo` when served another way.
fn connection_of(request: &Request<Body>) -> ConnectionInfo {
    if let Some(info) = request.extensions().get::<ConnectionInfo>() {
        return *info;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    ConnectionInfo { peer, tls: false }
}

/// The method as logged: extension methods can be up to ~64 KiB of client text, so anything but the
/// standard methods is logged as `OTHER`.
fn method_for_log(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// Header count and size limits (431), checked before any handler runs. Hyper enforces a hard ceiling
/// above these at the connection level; this check makes the common case a proper problem document.
fn headers_too_large(request: &Request<Body>, settings: &EdgeSettings) -> Option<Problem> {
    let headers = request.headers();
    // HTTP/2 clients may send each cookie as its own field (RFC 9113 section 8.2.3); they count as
    // one field, as they would over HTTP/1.1.
    let cookies = headers.get_all(header::COOKIE).iter().count();
    let fields = headers.len() - cookies + usize::from(cookies > 0);
    if fields > settings.max_headers {
        return Some(Problem::new(ProblemType::HEADERS_TOO_LARGE, "Too many request header fields."));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    (bytes > settings.max_header_bytes)
        .then(|| Problem::new(ProblemType::HEADERS_TOO_LARGE, "The request header fields are too large."))
}

/// Renders problems, adds the request id and the security headers.
fn finish(
    response: &mut Response,
    request_id: &RequestId,
    request_id_header: HeaderValue,
    hsts: Option<&HeaderValue>,
) {
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let problem = response.extensions_mut().remove::<Problem>();
        let is_problem_already = problem.is_none()
            && response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == PROBLEM_JSON);
        if !is_problem_already {
            let problem = problem.unwrap_or_else(|| generic_problem(status));
            *response.body_mut() = Body::from(problem.to_json(Some(request_id.as_str())));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
    }
    response.headers_mut().insert(X_REQUEST_ID, request_id_header);
    headers::apply(response.headers_mut(), hsts);
}

/// A problem for an error response that carried none (router 404/405, body limit 413, timeout 408).
fn generic_problem(status: http::StatusCode) -> Problem {
    let ty = ProblemType::for_status(status);
    let detail = match ty.slug {
        "not-found" => "No resource exists at this path.",
        "method-not-allowed" => "This path does not accept this method; see the Allow header.",
        "payload-too-large" => "The request body is larger than allowed.",
        "request-timeout" => "The request took too long to complete.",
        "unsupported-media-type" => "The request body's media type is not accepted here.",
        _ => ty.title,
    };
    Problem::new(ty, detail)
}
