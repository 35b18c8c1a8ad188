//! The web layer's error type and its one mapping from use-case errors to problem documents.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use portcullis_app::AppError;
use portcullis_domain::error_chain;

use crate::problem::{FieldError, Problem, ProblemType};

/// The `WWW-Authenticate` challenge of 401 answers (RFC 6750 section 3).
const BEARER_CHALLENGE: &str = r#"Bearer realm="portcullis""#;

/// An error a handler returns. Each variant documents its HTTP mapping.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A use case failed; mapped by [`ApiError::into_response`].
    #[error(transparent)]
    App(#[from] AppError),
    /// The request itself is wrong; already a problem the client may see.
    #[error("{}", .0.detail)]
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError::Problem(problem)
    }
}

impl ApiError {
    /// What the client sees, and any header the problem needs. Internal causes are logged here, never
    /// sent (CONVENTIONS.md, "Errors").
    fn problem(self) -> (Problem, Vec<(header::HeaderName, HeaderValue)>) {
        let error = match self {
            ApiError::Problem(problem) => return (problem, Vec::new()),
            ApiError::App(error) => error,
        };
        let problem = match error {
            // 422 with one entry per broken field; messages name the rule, never the value.
            AppError::Validation(issues) => Problem::validation(
                issues
                    .into_iter()
                    .map(|i| FieldError { field: i.field.into_owned(), message: i.message })
                    .collect(),
            ),
            // 401, one type and one message for every way a login can fail (ASVS 6.3.8).
            AppError::InvalidCredentials => {
                Problem::new(ProblemType::INVALID_CREDENTIALS, "The email or password is wrong.")
            }
            // 401 with a Bearer challenge (RFC 6750 section 3).
            AppError::Unauthenticated => {
                let problem =
                    Problem::new(ProblemType::UNAUTHORIZED, "A valid access token or session is required.");
                return (
                    problem,
                    vec![(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE))],
                );
            }
            // 401 with its own type: the challenge stays open for another try (up to its limit).
            AppError::InvalidSecondFactor => {
                Problem::new(ProblemType::INVALID_SECOND_FACTOR, "The code or passkey is wrong.")
            }
            // 401 + the step-up challenge of RFC 9470 section 3: the client re-authenticates
            // (POST /v1/auth/reauthenticate) and retries.
            AppError::ReauthenticationRequired { max_age_secs } => {
                let problem = Problem::new(
                    ProblemType::REAUTHENTICATION_REQUIRED,
                    "This needs a recent authentication: re-authenticate, then retry.",
                )
                .with_extension("max_age", serde_json::Value::from(max_age_secs));
                let challenge = format!(
                    r#"Bearer realm="portcullis", error="insufficient_user_authentication", error_description="recent authentication required", max_age={max_age_secs}"#
                );
                let mut headers = Vec::new();
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.push((header::WWW_AUTHENTICATE, value));
                }
                return (problem, headers);
            }
            // 403: the only way forward is enrolling a second factor.
            AppError::MfaEnrollmentRequired => Problem::new(
                ProblemType::MFA_ENROLLMENT_REQUIRED,
                "This account must use a second factor: enroll one (under /v1/me/mfa) first.",
            ),
            // 501: the server is not set up for it; the reason names the setting.
            AppError::NotAvailable(reason) => Problem::new(ProblemType::NOT_IMPLEMENTED, reason),
            // 403 with its own type, so a client can tell a stale page from a missing right.
            AppError::CsrfRejected => Problem::new(
                ProblemType::CSRF_REJECTED,
                "The CSRF token or request origin is missing or wrong.",
            ),
            // 403 with the reason, which names the missing right and nothing else.
            AppError::Forbidden(reason) => Problem::new(ProblemType::FORBIDDEN, reason),
            // 400: unknown, spent, expired or for another purpose all look alike.
            AppError::InvalidToken => {
                Problem::new(ProblemType::INVALID_TOKEN, "The link or token is invalid, used or expired.")
            }
            AppError::SignupNotAllowed => Problem::new(
                ProblemType::SIGNUP_NOT_ALLOWED,
                "Accounts are created by invitation or by an administrator.",
            ),
            AppError::NotFound => Problem::new(ProblemType::NOT_FOUND, "No such resource."),
            // 409 naming the holders, so an administrator can reassign them or force the deletion.
            AppError::RoleInUse { holders } => Problem::new(
                ProblemType::ROLE_IN_USE,
                "Members hold this role; take it from them first, or delete with force=true.",
            )
            .with_extension(
                "holders",
                serde_json::Value::Array(
                    holders.iter().map(|id| serde_json::Value::String(id.to_string())).collect(),
                ),
            ),
            // 503 + Retry-After: shed at once rather than queue without bound.
            AppError::Overloaded { retry_after_secs } => {
                let problem = Problem::new(ProblemType::UNAVAILABLE, "The server is busy; retry shortly.");
                let value = HeaderValue::from(retry_after_secs);
                return (problem, vec![(header::RETRY_AFTER, value)]);
            }
            // 429 + Retry-After and the refusing budget's RateLimit-* headers (RFC 6585 section 4;
            // draft-ietf-httpapi-ratelimit-headers).
            AppError::RateLimited(refusal) => {
                let problem = Problem::new(
                    ProblemType::TOO_MANY_REQUESTS,
                    "Too many requests; retry after the time in Retry-After.",
                );
                return (problem, crate::rate_limit::refusal_headers(&refusal));
            }
            // 429 + Retry-After: too many failed logins for this address; the same for accounts that
            // exist and those that do not, and the reset by email still works.
            AppError::LoginLocked { retry_after_secs } => {
                let problem = Problem::new(
                    ProblemType::LOGIN_LOCKED,
                    "Too many failed logins for this account; try again later or reset the password by email.",
                );
                return (problem, vec![(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))]);
            }
            // 403 with its own type, before any authentication: the address, not the caller, is refused.
            AppError::IpDenied => {
                Problem::new(ProblemType::IP_DENIED, "Requests from this address are not allowed.")
            }
            // 503 + Retry-After: failing closed while the shared rate limit store is away.
            AppError::RateLimiterUnavailable => {
                let problem = Problem::new(
                    ProblemType::UNAVAILABLE,
                    "The service is temporarily unavailable; retry shortly.",
                );
                return (problem, vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))]);
            }
            // 503: the client may retry; the cause (which database, which error) stays in the log.
            error @ AppError::Unavailable(_) => {
                tracing::warn!(error = %error_chain(&error), "request failed: unavailable");
                Problem::new(ProblemType::UNAVAILABLE, "The service is temporarily unavailable; retry later.")
            }
            // 500: a bug, or a keyring that cannot open stored data (the operator's message names
            // keys, never key material, and still stays in the log); the client has the request id.
            error @ (AppError::Internal(_) | AppError::Keyring(_) | AppError::Backup(_)) => {
                tracing::error!(error = %error_chain(&error), "request failed: internal error");
                Problem::new(
                    ProblemType::INTERNAL,
                    "An internal error occurred; quote the request id when reporting it.",
                )
            }
        };
        (problem, Vec::new())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (problem, headers) = self.problem();
        let mut response = problem.into_response();
        for (name, value) in headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
