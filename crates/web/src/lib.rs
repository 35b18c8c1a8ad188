//! The HTTP layer: the route table, thin handlers, extractors, the middleware stack and the one place
//! where errors become RFC 9457 problem documents.
//!
//! Nothing here decides anything about security policy beyond HTTP hygiene; handlers parse, call one
//! use case on [`portcullis_app::App`], and shape the response.

mod auth;
mod config;
mod error;
mod extract;
mod forwarded;
mod handlers;
mod middleware;
mod openapi;
mod problem;
mod rate_limit;
mod redirect;
mod routes;

pub use auth::{CSRF_HEADER, SESSION_COOKIE};
pub use config::{CorsConfig, HstsConfig, WebConfig, WebConfigError};
pub use error::ApiError;
pub use extract::{Json, parse_json_body};
pub use forwarded::{ForwardedHeader, ForwardedInfo, resolve_client};
pub use middleware::edge::{ClientInfo, ConnectionInfo};
pub use middleware::headers::apply as apply_security_headers;
pub use problem::{FieldError, Problem, ProblemType};
pub use redirect::https_redirect_router;
pub use routes::{metrics_router, router, with_middleware};

/// The private header parsers of the authentication extractor, reachable for the fuzz targets in
/// `fuzz/` and for tests. Not part of the API: handlers authenticate with the extractors.
#[doc(hidden)]
pub mod fuzzing {
    /// The token of an `Authorization: Bearer <token>` value, as the `Authenticated` extractor reads it.
    pub fn bearer_token(value: &[u8]) -> Option<&str> {
        crate::auth::bearer_token(value)
    }

    /// The value of the session cookie across every `Cookie` header, if it is sent exactly once.
    pub fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
        crate::auth::session_cookie(headers)
    }

    /// Whether a state-changing browser request is same-origin (or from a trusted origin), as the
    /// cookie session's CSRF defence and the login's origin check decide it.
    pub fn same_origin(
        headers: &http::HeaderMap,
        authority: Option<&str>,
        https: bool,
        trusted: &[String],
    ) -> bool {
        crate::auth::same_origin(headers, authority, https, trusted)
    }
}

/// State shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The use-case façade.
    pub app: portcullis_app::App,
    /// Origins allowed to send cookie-authenticated state-changing requests besides our own (the CORS
    /// allowlist); filled in by [`router`] from the web configuration.
    pub(crate) trusted_origins: std::sync::Arc<[String]>,
}

impl AppState {
    /// State around the use-case façade.
    pub fn new(app: portcullis_app::App) -> Self {
        Self { app, trusted_origins: std::sync::Arc::from(Vec::new()) }
    }
}
