//! The personal-data export as JSON: `GET /v1/me/export` for the person, `GET
//! /v1/admin/users/{id}/export` for an administrator answering their request. Both answer the same
//! versioned document (`format`: `portcullis-export/1`) as a download; `app::export` decides who may
//! have it and what is in it.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use portcullis_app::{EXPORT_FORMAT, ExportedApiKey, ExportedSession, PersonalData};
use portcullis_domain::{API_KEY_PREFIX, Timestamp};
use serde::Serialize;
use utoipa::ToSchema;

use super::admin::AdminUserResponse;
use super::audit::AuditEventResponse;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

/// Everything Portcullis keeps about one person. Never a password hash, a token, an API key secret,
/// a TOTP seed, a recovery code or a digest of any of them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportResponse {
    /// The document's format and version: `portcullis-export/1`.
    format: &'static str,
    #[schema(format = DateTime)]
    exported_at: String,
    user: AdminUserResponse,
    /// The organizations the person belongs to, with the built-in role held in each.
    organizations: Vec<ExportMembership>,
    /// The custom roles the person holds, each in its organization.
    roles: Vec<ExportRole>,
    /// Every session, live or not, newest first.
    sessions: Vec<ExportSession>,
    /// Every API key of the person, revoked and expired ones included, newest first: metadata only.
    api_keys: Vec<ExportApiKey>,
    mfa: ExportMfa,
    /// The audit events the person acted in, was acted for in, or was the target of, newest first.
    /// Client address and user agent only where the person made the request.
    audit_events: Vec<AuditEventResponse>,
    /// Which lists reached their cap (5000 sessions, 10000 audit events) and hold only the newest.
    truncated: ExportTruncated,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportMembership {
    id: String,
    slug: String,
    name: String,
    /// `owner`, `admin`, `auditor` or `member`.
    role: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportRole {
    id: String,
    organization_id: String,
    name: String,
    permissions: Vec<String>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportSession {
    id: String,
    /// `bearer` (an API client) or `cookie` (a browser).
    kind: &'static str,
    /// `active`, `revoked` or `expired`.
    state: &'static str,
    created_at: String,
    last_seen_at: String,
    expires_at: String,
    /// When its holder last proved who they are (the login, or a later re-authentication).
    authenticated_at: String,
    /// What that proved (RFC 8176 `amr` values: `pwd`, `otp`, `hwk`, `mfa`).
    methods: Vec<&'static str>,
    revoked_at: Option<String>,
    /// Why it was revoked: `logout`, `user_revoked`, `password_changed`, `refresh_reuse`,
    /// `signing_key_compromised`.
    revoked_reason: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportApiKey {
    id: String,
    /// How the key starts (`pcs_<id>_`): what a secret scanner or a log shows of it.
    prefix: String,
    name: String,
    scopes: Vec<String>,
    allowed_cidrs: Vec<String>,
    created_at: String,
    expires_at: String,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportMfa {
    /// TOTP authenticators by name (never their seeds).
    totp: Vec<ExportDevice>,
    /// Passkeys by name (not their public keys).
    passkeys: Vec<ExportDevice>,
    recovery_codes: ExportRecoveryCodes,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportDevice {
    id: String,
    name: String,
    /// A TOTP authenticator counts once its first code confirmed it; a passkey always does.
    confirmed: bool,
    created_at: String,
    last_used_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportRecoveryCodes {
    /// Unused recovery codes left (the codes themselves are kept only as digests).
    remaining: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExportTruncated {
    sessions: bool,
    audit_events: bool,
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

impl From<ExportedSession> for ExportSession {
    fn from(s: ExportedSession) -> Self {
        let session = s.session;
        Self {
            id: session.id.to_string(),
            kind: session.kind.as_str(),
            state: s.state.as_str(),
            created_at: time(session.created_at),
            last_seen_at: time(session.last_seen_at),
            expires_at: time(session.expires_at),
            authenticated_at: time(session.authenticated_at),
            methods: session.amr.amr(),
            revoked_at: session.revoked_at.map(time),
            revoked_reason: s.revoked_reason,
            ip: s.ip,
            user_agent: s.user_agent,
        }
    }
}

impl From<ExportedApiKey> for ExportApiKey {
    fn from(k: ExportedApiKey) -> Self {
        Self {
            prefix: format!("{API_KEY_PREFIX}{}_", k.id),
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            allowed_cidrs: k.allowed_cidrs,
            created_at: time(k.created_at),
            expires_at: time(k.expires_at),
            revoked_at: k.revoked_at.map(time),
            last_used_at: k.last_used_at.map(time),
            last_used_ip: k.last_used_ip,
        }
    }
}

fn device(d: portcullis_app::MfaDevice) -> ExportDevice {
    ExportDevice {
        id: d.id.to_string(),
        name: d.name,
        confirmed: d.confirmed,
        created_at: time(d.created_at),
        last_used_at: d.last_used_at.map(time),
    }
}

impl From<PersonalData> for ExportResponse {
    fn from(data: PersonalData) -> Self {
        Self {
            format: EXPORT_FORMAT,
            exported_at: time(data.exported_at),
            user: data.user.into(),
            organizations: data
                .organizations
                .into_iter()
                .map(|m| ExportMembership {
                    id: m.organization.id.to_string(),
                    slug: m.organization.slug.as_str().to_owned(),
                    name: m.organization.name.as_str().to_owned(),
                    role: m.role.as_str(),
                })
                .collect(),
            roles: data
                .roles
                .into_iter()
                .map(|r| ExportRole {
                    id: r.id.to_string(),
                    organization_id: r.organization.to_string(),
                    name: r.name.as_str().to_owned(),
                    permissions: r.permissions.iter().map(ToString::to_string).collect(),
                    created_at: time(r.created_at),
                    updated_at: time(r.updated_at),
                })
                .collect(),
            sessions: data.sessions.into_iter().map(Into::into).collect(),
            api_keys: data.api_keys.into_iter().map(Into::into).collect(),
            mfa: ExportMfa {
                totp: data.mfa.totp.into_iter().map(device).collect(),
                passkeys: data.mfa.passkeys.into_iter().map(device).collect(),
                recovery_codes: ExportRecoveryCodes { remaining: data.mfa.recovery_codes_left },
            },
            audit_events: data.audit_events.into_iter().map(Into::into).collect(),
            truncated: ExportTruncated {
                sessions: data.truncated.sessions,
                audit_events: data.truncated.audit_events,
            },
        }
    }
}

/// The document as a download named after the account: `no-store` is set here as well as by the
/// security headers, so that no cache between keeps a copy whatever the middleware does
/// (ASVS 14.3.2).
fn download(data: PersonalData) -> Response {
    let disposition = format!(r#"attachment; filename="portcullis-export-{}.json""#, data.user.id);
    let mut response = axum::Json(ExportResponse::from(data)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A user id is a hyphenated UUID: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Downloads everything kept about the caller. Needs a login session (not an API key) that proved
/// itself within the last 10 minutes, with every factor the account has; otherwise 401
/// `reauthentication-required`. Recorded in the audit trail.
#[utoipa::path(get, path = "/v1/me/export", tag = "me", operation_id = "export_my_data",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The caller's data, as an attachment.", body = ExportResponse,
            headers(("Content-Disposition" = String, description = "attachment; filename=\"portcullis-export-<id>.json\""))),
        (status = 401, description = "No valid credential, or the session must re-authenticate first.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "An API key or a service account: only a person's session exports.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn export_my_data(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    Ok(download(state.app.export_my_data(&principal).await?))
}

/// Downloads everything kept about an account, to answer its owner's request. Needs `users:read`,
/// `sessions:read`, `apikeys:read` and `audit:read` system-wide (an organization's administrator
/// cannot: the data spans every organization), and a recent authentication for a session.
/// Recorded in the audit trail.
#[utoipa::path(get, path = "/v1/admin/users/{id}/export", tag = "admin", operation_id = "export_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses(
        (status = 200, description = "The account's data, as an attachment.", body = ExportResponse,
            headers(("Content-Disposition" = String, description = "attachment; filename=\"portcullis-export-<id>.json\""))),
        (status = 401, description = "No valid credential, or the session must re-authenticate first.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "The caller lacks one of the four read permissions system-wide.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No person has this id.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn export_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(download(state.app.admin_export_user(&principal, &id).await?))
}
