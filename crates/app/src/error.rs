//! The one error type of the use-case layer.

use portcullis_store::StoreError;

/// One invalid input field: where it is (a JSON pointer into the request) and which rule it broke,
/// in words that never repeat the submitted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: std::borrow::Cow<'static, str>,
    pub message: String,
}

impl FieldIssue {
    /// An issue with `field` (a JSON pointer such as `/password`, or `/events/3/action` built for
    /// an item of a batch).
    pub fn new(field: impl Into<std::borrow::Cow<'static, str>>, message: impl std::fmt::Display) -> Self {
        Self { field: field.into(), message: message.to_string() }
    }
}

/// Why a use case did not complete. The web layer maps each variant to one HTTP problem type
/// (crates/web/src/error.rs); the CLI maps them to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Input broke a rule; every broken field is listed. HTTP 422.
    #[error("invalid input")]
    Validation(Vec<FieldIssue>),

    /// A login failed. One variant, one message, whatever the reason (unknown account, wrong
    /// password, disabled account), so failures do not reveal which accounts exist (ASVS 6.3.8).
    /// HTTP 401.
    #[error("invalid email or password")]
    InvalidCredentials,

    /// A second factor was wrong, replayed or not one of the account's. HTTP 401.
    #[error("the second factor is wrong")]
    InvalidSecondFactor,

    /// This needs a recent authentication at the account's level (ASVS 7.5.3): the session's last
    /// proof is older than `max_age_secs`, or the account has a second factor the session did not
    /// prove. The client re-authenticates (`POST /v1/auth/reauthenticate`) and retries. HTTP 401
    /// with `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (RFC 9470).
    #[error("re-authentication required")]
    ReauthenticationRequired { max_age_secs: i64 },

    /// The account must use a second factor and has none: this session may only enroll one (or log
    /// out). HTTP 403.
    #[error("a second factor must be enrolled first")]
    MfaEnrollmentRequired,

    /// The server is not set up for this (passkeys without a usable relying-party id). HTTP 501.
    #[error("not available: {0}")]
    NotAvailable(&'static str),

    /// No valid credential came with the request (missing, malformed, expired, revoked). HTTP 401.
    #[error("authentication required")]
    Unauthenticated,

    /// A cookie-authenticated request came without its session's CSRF token, or from a foreign
    /// origin (ASVS 3.5.1). HTTP 403.
    #[error("the CSRF token or request origin is missing or wrong")]
    CsrfRejected,

    /// The caller is authenticated but may not do this; the message says what is missing (a
    /// permission's name, a guard rail), never anything about the target. HTTP 403.
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// A single-use link or token is unknown, spent, expired or meant for something else. HTTP 400.
    #[error("invalid or expired token")]
    InvalidToken,

    /// Signing up is closed or invite-only and no valid invite came with the request. HTTP 403.
    #[error("signup is not open")]
    SignupNotAllowed,

    /// The thing does not exist, or belongs to someone else (the two look the same). HTTP 404.
    #[error("not found")]
    NotFound,

    /// A custom role that members hold cannot be deleted without `force`; these are (up to
    /// [`crate::MAX_HOLDERS_LISTED`] of) its holders. HTTP 409.
    #[error("the role is held by {} members", holders.len())]
    RoleInUse { holders: Vec<portcullis_domain::UserId> },

    /// The server is at capacity for expensive work (password hashing); retry after the given
    /// seconds. HTTP 503 with `Retry-After`.
    #[error("overloaded; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u32 },

    /// A rate limit refused the request: nothing was done. HTTP 429 with `Retry-After` and the
    /// `RateLimit-*` headers of the budget that refused it.
    #[error("rate limited ({})", .0.policy.as_str())]
    RateLimited(crate::Refusal),

    /// Too many failed logins named this account identifier: its password path is locked for a while
    /// (the reset by email is not). The same for known and unknown addresses. HTTP 429 with
    /// `Retry-After`.
    #[error("login locked")]
    LoginLocked { retry_after_secs: u64 },

    /// An IP rule refuses the client's address (a deny rule covers it, or an allowlist does not):
    /// nothing was done, no authentication was tried. HTTP 403.
    #[error("the client address is not allowed")]
    IpDenied,

    /// The shared rate limit store is unreachable and the configured failure mode is closed: the
    /// request is refused unmetered rather than served so. HTTP 503 with `Retry-After`.
    #[error("rate limit store unavailable")]
    RateLimiterUnavailable,

    /// A dependency (database) is unavailable right now; the caller may retry. HTTP 503.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),

    /// The keyring cannot be opened or used: a key-encryption key is missing or wrong, or data names a
    /// key that no longer exists. The message is for the operator (it never holds key material).
    /// HTTP 500 with no detail.
    #[error("keyring: {0}")]
    Keyring(String),

    /// A backup cannot be made, read or restored, or is defective; the message says which backup and
    /// what is wrong (a table, a checksum, the audit chain), for the operator, never a secret. HTTP
    /// 500 with no detail; the CLI prints it and exits 1.
    #[error("backup: {0}")]
    Backup(String),

    /// Anything else: a bug or a broken invariant. HTTP 500 with no detail.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// A validation error about one field.
    pub fn invalid(field: &'static str, message: impl std::fmt::Display) -> Self {
        AppError::Validation(vec![FieldIssue::new(field, message)])
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => AppError::Unavailable(error),
            other => AppError::Internal(Box::new(other)),
        }
    }
}
