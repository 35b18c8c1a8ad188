//! `/v1/me/*`: the caller's own profile, password and sessions, and the erasure of the account.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_app::{Profile, SessionSummary};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, Enrolling};
use crate::error::ApiError;
use crate::extract::Json;

/// The caller's account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProfileResponse {
    id: String,
    email: String,
    email_verified: bool,
    display_name: Option<String>,
    /// The built-in role (`owner`, `admin`, `auditor`, `member`).
    role: &'static str,
    /// The organizations the account belongs to, with its role in each.
    organizations: Vec<OrganizationRoleResponse>,
    created_at: String,
    last_login_at: Option<String>,
}

/// A membership as its holder sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrganizationRoleResponse {
    id: String,
    role: &'static str,
}

impl From<Profile> for ProfileResponse {
    fn from(p: Profile) -> Self {
        Self {
            id: p.id.to_string(),
            email: p.email,
            email_verified: p.email_verified,
            display_name: p.display_name,
            role: p.role.as_str(),
            organizations: p
                .organizations
                .iter()
                .map(|(id, role)| OrganizationRoleResponse { id: id.to_string(), role: role.as_str() })
                .collect(),
            created_at: p.created_at.to_rfc3339(),
            last_login_at: p.last_login_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// The caller's profile; takes a bearer access token or the session cookie.
#[utoipa::path(get, path = "/v1/me", tag = "me", operation_id = "me",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The profile.", body = ProfileResponse)))]
pub(crate) async fn me(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
) -> Result<axum::Json<ProfileResponse>, ApiError> {
    Ok(axum::Json(state.app.my_profile(&principal).await?.into()))
}

/// Erases the caller's account: it is deleted with everything kept about the person (credentials,
/// sessions, API keys, factors, memberships), and the audit trail keeps only the account's id, the
/// client details of the person's requests no longer readable. Needs a login session (not an API
/// key) that proved itself within the last 10 minutes with every factor the account has; otherwise
/// 401 `reauthentication-required`. The last active owner is refused (403). Backups taken before
/// keep the account until they age out of their retention.
#[utoipa::path(delete, path = "/v1/me", tag = "me", operation_id = "erase_me",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "Erased; the session cookie is cleared."),
        (status = 401, description = "No valid credential, or the session must re-authenticate first.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "An API key, a service account, or the last active owner.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn erase_me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    state.app.erase_own_account(&principal).await?;
    Ok(crate::handlers::auth::clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// The current and the new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    #[schema(value_type = String, format = Password)]
    current_password: SecretString,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    new_password: SecretString,
}

/// Changes the password; every other session of the account ends.
#[utoipa::path(post, path = "/v1/me/password", tag = "me", operation_id = "change_password",
    security(("bearer" = []), ("session_cookie" = [])), request_body = PasswordBody,
    responses((status = 204, description = "Changed.")))]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    state.app.change_password(&principal, body.current_password, body.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionResponse {
    id: String,
    /// `bearer` (an API client) or `cookie` (a browser).
    kind: &'static str,
    created_at: String,
    last_seen_at: String,
    expires_at: String,
    ip: Option<String>,
    user_agent: Option<String>,
    /// True for the session this request came with.
    current: bool,
}

impl From<SessionSummary> for SessionResponse {
    fn from(s: SessionSummary) -> Self {
        Self {
            id: s.id.to_string(),
            kind: s.kind.as_str(),
            created_at: s.created_at.to_rfc3339(),
            last_seen_at: s.last_seen_at.to_rfc3339(),
            expires_at: s.expires_at.to_rfc3339(),
            ip: s.ip,
            user_agent: s.user_agent,
            current: s.current,
        }
    }
}

/// The list of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionsResponse {
    sessions: Vec<SessionResponse>,
}

/// The caller's live sessions, newest first.
#[utoipa::path(get, path = "/v1/me/sessions", tag = "me", operation_id = "list_sessions",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "Live sessions.", body = SessionsResponse)))]
pub(crate) async fn sessions(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<axum::Json<SessionsResponse>, ApiError> {
    let sessions = state.app.list_sessions(&principal).await?;
    Ok(axum::Json(SessionsResponse { sessions: sessions.into_iter().map(Into::into).collect() }))
}

/// Ends one of the caller's sessions. Another account's session is 404, like one that never existed.
#[utoipa::path(delete, path = "/v1/me/sessions/{id}", tag = "me", operation_id = "revoke_session",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The session id.")),
    responses((status = 204, description = "Ended.")))]
pub(crate) async fn revoke_session(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_session(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
