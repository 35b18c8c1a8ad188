//! The route table, on one screen, grouped by who may call each route, and the middleware order.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderName, Method, StatusCode, header};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::handlers::{
    admin, api_keys, audit, auth, authz, export, health, ip_rules, me, mfa, oauth, organizations, roles,
    security_events, service_accounts, well_known,
};
use crate::middleware::edge::{EdgeLayer, X_REQUEST_ID};
use crate::middleware::panic::panic_response;
use crate::openapi;
use crate::problem::{Problem, ProblemType};
use crate::{AppState, WebConfig, WebConfigError};

/// Every route Portcullis serves, with the full middleware stack.
///
/// Deny by default: every operation declares who may call it in its OpenAPI `security` (`security(())`
/// for public routes, a scheme for authenticated ones), and a router test fails for any operation that
/// declares nothing.
pub fn router(mut state: AppState, config: &WebConfig) -> Result<Router, WebConfigError> {
    // The CORS allowlist, and our own public origin (behind a proxy that rewrites Host, the browser's
    // Origin still names the public URL).
    state.trusted_origins = config
        .cors
        .allowed_origins
        .iter()
        .filter(|o| *o != "*")
        .cloned()
        .chain(state.app.public_origin())
        .collect();
    let (routes, api) = OpenApiRouter::new()
        // Public: probes, discovery and the API description; no credentials, no personal data.
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(well_known::jwks))
        // Public: proving who you are. Each answers alike for known and unknown accounts.
        .routes(routes!(auth::signup))
        .routes(routes!(auth::verify_email))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::password_forgot))
        .routes(routes!(auth::password_reset))
        .routes(routes!(auth::setup))
        // Public: a login's second factor (its challenge token is the credential).
        .routes(routes!(auth::mfa_verify))
        .routes(routes!(auth::mfa_passkey_options))
        .routes(routes!(auth::passkey_login_options))
        // Authenticated (bearer token, or session cookie + CSRF token): the caller's own session.
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(me::me, me::erase_me))
        .routes(routes!(me::change_password))
        .routes(routes!(me::sessions))
        .routes(routes!(me::revoke_session))
        .routes(routes!(auth::reauthenticate))
        .routes(routes!(auth::reauthenticate_passkey_options))
        // Authenticated, and recently (step-up): everything kept about the caller, as a download.
        .routes(routes!(export::export_my_data))
        // Authenticated, even while a second factor must be enrolled: the caller's own factors.
        .routes(routes!(mfa::list_my_mfa))
        .routes(routes!(mfa::enroll_totp))
        .routes(routes!(mfa::confirm_totp))
        .routes(routes!(mfa::remove_totp))
        .routes(routes!(mfa::regenerate_recovery_codes))
        .routes(routes!(mfa::passkey_registration_options))
        .routes(routes!(mfa::register_passkey))
        .routes(routes!(mfa::remove_passkey))
        // Authenticated: the check API (deciding for someone else needs `authz:check`).
        .routes(routes!(authz::check))
        .routes(routes!(authz::check_batch))
        // Authenticated: the audit trail (reading needs `audit:read`; writing, a service account
        // with `audit:write`).
        .routes(routes!(audit::list_audit_events, audit::record_audit_events))
        // Administration: each use case requires its own permission (docs in each handler).
        .routes(routes!(admin::create_invite))
        .routes(routes!(admin::list_users, admin::create_user))
        .routes(routes!(admin::get_user, admin::update_user, admin::delete_user))
        .routes(routes!(admin::set_user_role))
        .routes(routes!(admin::disable_user))
        .routes(routes!(admin::enable_user))
        .routes(routes!(admin::unlock_user))
        .routes(routes!(admin::revoke_user_sessions))
        .routes(routes!(export::export_user))
        .routes(routes!(mfa::reset_user_mfa))
        .routes(routes!(mfa::get_organization_mfa_policy, mfa::set_organization_mfa_policy))
        .routes(routes!(organizations::list_organizations, organizations::create_organization))
        .routes(routes!(
            organizations::get_organization,
            organizations::rename_organization,
            organizations::delete_organization
        ))
        .routes(routes!(organizations::list_members))
        .routes(routes!(organizations::set_member, organizations::remove_member))
        .routes(routes!(roles::list_roles, roles::create_role))
        .routes(routes!(roles::get_role, roles::update_role, roles::delete_role))
        .routes(routes!(service_accounts::list_service_accounts, service_accounts::create_service_account))
        .routes(routes!(
            service_accounts::get_service_account,
            service_accounts::update_service_account,
            service_accounts::delete_service_account
        ))
        .routes(routes!(api_keys::list_service_account_keys, api_keys::create_service_account_key))
        .routes(routes!(api_keys::revoke_service_account_key))
        .routes(routes!(api_keys::rotate_service_account_key))
        .routes(routes!(security_events::list_security_events))
        .routes(routes!(ip_rules::list_ip_rules, ip_rules::create_ip_rule))
        .routes(routes!(ip_rules::delete_ip_rule))
        // The caller's own API keys.
        .routes(routes!(api_keys::list_my_api_keys, api_keys::create_my_api_key))
        .routes(routes!(api_keys::revoke_my_api_key))
        .routes(routes!(api_keys::rotate_my_api_key))
        // OAuth 2.
        .routes(routes!(oauth::introspect))
        .split_for_parts();
    let document = openapi::document(api);
    let document = openapi::Rendered(bytes::Bytes::from(serde_json::to_vec(&document).unwrap_or_default()));

    let guard = state.clone();
    let mut operations = Router::new();
    if config.metrics_route {
        // Operators only: outside the OpenAPI document, behind `[metrics]` rules.
        operations = operations.route("/metrics", get(crate::handlers::metrics::scrape));
    }
    let router = routes
        .merge(operations)
        .with_state(state)
        .merge(Router::new().route("/openapi.json", get(openapi::openapi_json)).with_state(document));
    with_middleware(router, config, Some(guard))
}

/// The router of a listener of its own for `GET /metrics` (`metrics.listen`): nothing else is
/// served there, and its requests are not counted in the HTTP metrics (scrapes are not traffic).
pub fn metrics_router(state: AppState, config: &WebConfig) -> Result<Router, WebConfigError> {
    let router = Router::new().route("/metrics", get(crate::handlers::metrics::scrape)).with_state(state);
    with_middleware(router, config, None)
}

/// Wraps a router in the stack every response passes through. Public so that tests can put probe
/// routes (a panicking handler, a slow one, a JSON echo) behind exactly the production stack.
///
/// Order, outermost first: edge (request id, client ip, span and access log, header limits, security
/// headers, problem rendering) → guard (the client address's rate limits, when `guard` is given) →
/// CORS → panic catcher → timeout → body limit → route.
pub fn with_middleware(
    router: Router,
    config: &WebConfig,
    guard: Option<AppState>,
) -> Result<Router, WebConfigError> {
    config.cors.validate()?;
    let fallback = || async { Problem::new(ProblemType::NOT_FOUND, "No resource exists at this path.") };
    // One ServiceBuilder, applied once: each separate `Router::layer` would wrap every route in
    // another boxed service, cloned per request (scripts/bench measured ~2 µs/request for six).
    let stack = ServiceBuilder::new()
        .layer(EdgeLayer::new(
            config,
            guard.as_ref().filter(|_| config.count_requests).map(|state| state.app.metrics().clone()),
        ))
        .map_response(IntoResponse::into_response)
        // Before CORS, authentication, the body and the route: a refused request costs the
        // budget check and nothing else.
        .option_layer(
            guard.map(|state| axum::middleware::from_fn_with_state(state, crate::rate_limit::guard)),
        )
        .map_response(IntoResponse::into_response)
        // CORS outside the panic catcher and the timeout, so an allowed origin can read those
        // errors too. No allowed origin, no CORS layer: nothing cross-origin is ever allowed, and
        // the layer would only add headers that the edge then strips.
        .option_layer(cors(config))
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout))
        .map_response(IntoResponse::into_response)
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .map_request(|request: http::Request<tower_http::body::Limited<axum::body::Body>>| {
            request.map(axum::body::Body::new)
        })
        .layer(axum::middleware::from_fn(read_whole_body));
    Ok(router.fallback(fallback).layer(stack))
}

/// Reads the whole request body (within the body limit and the request timeout) before the route
/// runs. A route may answer without reading it (a 401 from the authentication extractor, a 415 for
/// the wrong media type); closing a connection with unread bytes makes the kernel send a reset,
/// and the client loses that answer (the security scan met this with large form bodies).
async fn read_whole_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    match body.collect().await {
        Ok(collected) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(collected.to_bytes())))
                .await
        }
        Err(error) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            while let Some(current) = source {
                if current.is::<http_body_util::LengthLimitError>() {
                    return Problem::new(
                        ProblemType::PAYLOAD_TOO_LARGE,
                        "The request body is larger than allowed.",
                    )
                    .into_response();
                }
                source = current.source();
            }
            Problem::new(ProblemType::MALFORMED_REQUEST, "The request body could not be read.")
                .into_response()
        }
    }
}

/// CORS from the explicit allowlist. With no origins configured, no response carries CORS headers
/// that would let a browser read it cross-origin.
fn cors(config: &WebConfig) -> Option<CorsLayer> {
    let cors = &config.cors;
    if cors.allowed_origins.is_empty() {
        return None;
    }
    let origins: Vec<_> =
        cors.allowed_origins.iter().filter(|o| *o != "*").filter_map(|o| o.parse().ok()).collect();
    let allow_origin = if cors.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    let layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            X_REQUEST_ID,
            HeaderName::from_static("x-csrf-token"),
        ])
        .expose_headers([
            X_REQUEST_ID,
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .allow_credentials(cors.allow_credentials)
        .max_age(cors.max_age);
    Some(layer)
}
