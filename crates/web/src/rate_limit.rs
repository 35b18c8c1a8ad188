//! The guard in front of every route: the IP rules, then the client address's rate limit budgets,
//! both before any authentication, database or hashing work, and the budgets' `RateLimit-*` headers.
//!
//! The health probes pass the guard untouched, IP rules included: orchestrators and load balancers
//! call them from inside the network, often from addresses an allowlist does not name, and a node
//! that stops answering its probes is taken out of service (a deny rule is not meant to restart the
//! fleet). They reveal nothing but liveness and readiness.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, header};
use portcullis_app::{Allowance, Refusal};

use crate::AppState;
use crate::error::ApiError;
use crate::middleware::edge::ClientInfo;

/// Routes with no budget and no IP rule: the orchestrator's probes must keep answering under a flood
/// and whatever the network policy.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The routes that prove who someone is (POST): the stricter per-address budget applies to them.
/// Changing the password proves the current one, so a stolen session guesses at the same pace; a
/// second factor and a re-authentication are guesses too.
const AUTH_ROUTES: [&str; 13] = [
    "/v1/auth/passkey/options",
    "/v1/me/password",
    "/v1/auth/login",
    "/v1/auth/mfa/verify",
    "/v1/auth/mfa/passkey-options",
    "/v1/auth/reauthenticate",
    "/v1/auth/reauthenticate/passkey-options",
    "/v1/me/mfa/totp/{id}/confirm",
    "/v1/auth/signup",
    "/v1/auth/password/forgot",
    "/v1/auth/password/reset",
    "/v1/auth/verify-email",
    "/v1/auth/setup",
];

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The administration API, which the admin allowlist restricts further.
const ADMIN_PREFIX: &str = "/v1/admin/";

/// Judges the client address by the IP rules (a refusal is 403 and spends no budget), then spends its
/// budgets; a refusal is answered at once (403 or 429), nothing else runs.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    if route.as_deref().is_some_and(|r| PROBES.contains(&r)) {
        return next.run(request).await;
    }
    // No client info means the edge layer is missing: a wiring bug, and no reason to go unmetered.
    let Some(client) = request.extensions().get::<ClientInfo>().copied() else {
        return next.run(request).await;
    };
    // The route template when one matched, else the raw path (an unknown or wrong-method path under
    // /v1/admin/ is refused as the admin routes are, so it cannot map the admin API either).
    let admin_route = route.as_deref().unwrap_or(request.uri().path()).starts_with(ADMIN_PREFIX);
    if let Err(error) = state.app.ip_allowed(client.ip, admin_route) {
        return ApiError::from(error).into_response();
    }
    let auth_route =
        request.method() == Method::POST && route.as_deref().is_some_and(|r| AUTH_ROUTES.contains(&r));
    let slot = PrincipalSlot::default();
    let mut request = request;
    request.extensions_mut().insert(slot.clone());
    // What audit records made while serving this request name as its client.
    let context = portcullis_app::audit::RequestContext {
        ip: Some(client.ip.to_string()),
        user_agent: request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        request_id: request
            .extensions()
            .get::<portcullis_domain::RequestId>()
            .map(|id| id.as_str().to_owned()),
    };
    match state.app.spend_client_budget(client.ip, auth_route).await {
        Ok(standing) => {
            let mut response = portcullis_app::audit::within_request(context, next.run(request)).await;
            let status = response.status().as_u16();
            if matches!(status, 403 | 404) {
                // Bursts of these are probing or scanning; a failure to record is logged, and the
                // answer goes out as it is.
                let principal = slot.0.get().copied();
                if let Err(error) = state.app.observe_answer(client.ip, principal, status).await {
                    tracing::warn!(error = %portcullis_domain::error_chain(&error), "detection failed");
                }
            }
            if let Some((_, allowance)) = standing {
                for (name, value) in allowance_headers(&allowance) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// Where the `Authenticated` extractor leaves the principal, so the guard can tell whose answers
/// the 403s and 404s were.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrincipalSlot(pub(crate) std::sync::Arc<std::sync::OnceLock<portcullis_app::Principal>>);

/// Whole seconds, rounded up: a client that waits exactly this long is not refused again.
fn seconds(duration: std::time::Duration) -> HeaderValue {
    let secs = duration.as_millis().div_ceil(1000);
    HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX))
}

/// The headers of a request that was let through.
pub(crate) fn allowance_headers(allowance: &Allowance) -> [(HeaderName, HeaderValue); 3] {
    [
        (LIMIT, HeaderValue::from(allowance.limit)),
        (REMAINING, HeaderValue::from(allowance.remaining)),
        (RESET, seconds(allowance.reset)),
    ]
}

/// The headers of a refused request: when to retry, and the budget that refused it.
pub(crate) fn refusal_headers(refusal: &Refusal) -> Vec<(HeaderName, HeaderValue)> {
    let retry_after = seconds(refusal.retry_after.max(std::time::Duration::from_secs(1)));
    vec![
        (header::RETRY_AFTER, retry_after),
        (LIMIT, HeaderValue::from(refusal.limit)),
        (REMAINING, HeaderValue::from(0u32)),
        (RESET, seconds(refusal.reset)),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seconds_round_up_so_a_client_that_waits_is_not_refused_again() {
        assert_eq!(seconds(Duration::from_millis(1)), HeaderValue::from(1u64));
        assert_eq!(seconds(Duration::from_millis(1000)), HeaderValue::from(1u64));
        assert_eq!(seconds(Duration::from_millis(1001)), HeaderValue::from(2u64));
        assert_eq!(seconds(Duration::ZERO), HeaderValue::from(0u64));
    }

    #[test]
    fn a_refusal_says_retry_after_at_least_a_second_and_nothing_remains() {
        let refusal = Refusal {
            policy: portcullis_app::RatePolicyKind::Ip,
            limit: 100,
            retry_after: Duration::from_millis(200),
            reset: Duration::from_secs(60),
        };
        let headers = refusal_headers(&refusal);
        let get = |name: &HeaderName| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(get(&header::RETRY_AFTER), Some(HeaderValue::from(1u64)));
        assert_eq!(get(&REMAINING), Some(HeaderValue::from(0u32)));
        assert_eq!(get(&LIMIT), Some(HeaderValue::from(100u32)));
        assert_eq!(get(&RESET), Some(HeaderValue::from(60u64)));
    }
}
