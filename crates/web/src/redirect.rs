//! The optional plain-http listener: it serves nothing but a redirect to https.

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::any;
use http::uri::Authority;

use crate::problem::{Problem, ProblemType};
use crate::routes::with_middleware;
use crate::{WebConfig, WebConfigError};

/// A router that answers browser navigation (`GET`/`HEAD` outside the API) with 308 to the same path
/// on https, and everything else with a `https-required` problem.
///
/// API clients are not redirected (ASVS 4.1.2): a client that sent a token or a body over plain http
/// must fail loudly and be fixed, not be silently carried over to https after the secret is already
/// exposed.
///
/// The target host is `public_host` when configured; otherwise the request's `Host` (validated as an
/// authority) with the https port, so the redirect can never point at a different site than the one
/// the client asked for.
pub fn https_redirect_router(
    https_port: u16,
    public_host: Option<String>,
    config: &WebConfig,
) -> Result<Router, WebConfigError> {
    let handler = move |request: Request| {
        let public_host = public_host.clone();
        async move { redirect(&request, https_port, public_host.as_deref()) }
    };
    // Explicit catch-all routes: `with_middleware` installs its own 404 fallback.
    let router = Router::new().route("/", any(handler.clone())).route("/{*path}", any(handler));
    with_middleware(router, config, None)
}

fn redirect(request: &Request, https_port: u16, public_host: Option<&str>) -> Response {
    let navigation = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
    let path = request.uri().path();
    let api = path == "/v1" || path.starts_with("/v1/");
    // Whatever the path, a request that carries credentials is an API client that must be fixed.
    let credentials = request.headers().contains_key(http::header::AUTHORIZATION);
    if !navigation || api || credentials {
        return Problem::new(ProblemType::HTTPS_REQUIRED, "This endpoint is only served over https.")
            .into_response();
    }
    let host = match public_host {
        Some(host) => host.to_owned(),
        None => {
            // HTTP/1.1 names the host in `Host`; HTTP/2 in the `:authority` pseudo-header (the URI).
            let Some(authority) = request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
                .or_else(|| request.uri().authority().cloned())
                .filter(|a| !a.as_str().contains('@'))
            else {
                return Problem::new(ProblemType::MALFORMED_REQUEST, "A valid Host header is required.")
                    .into_response();
            };
            if https_port == 443 {
                authority.host().to_owned()
            } else if authority.host().contains(':') {
                format!("[{}]:{https_port}", authority.host().trim_matches(['[', ']']))
            } else {
                format!("{}:{https_port}", authority.host())
            }
        }
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    Redirect::permanent(&format!("https://{host}{path}")).into_response()
}
