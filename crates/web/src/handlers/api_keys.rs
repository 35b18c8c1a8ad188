//! API keys: the caller's own (`/v1/me/api-keys`) and service accounts' (`/v1/admin/service-accounts/
//! {id}/api-keys`). A key's full text appears exactly once, in the answer that issues or rotates it;
//! lists carry metadata and the public id only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::{ApiKeySummary, IssuedApiKey, NewApiKey};
use portcullis_domain::{ApiKey, KeyOwner};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Json;

/// A key's metadata (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiKeyResponse {
    /// The public id: the part of the key after `pcs_` and before the next `_`.
    id: String,
    name: String,
    /// `user` or `service_account`.
    owner_type: &'static str,
    owner_id: String,
    scopes: Vec<String>,
    allowed_cidrs: Vec<String>,
    created_at: String,
    expires_at: String,
    revoked_at: Option<String>,
    /// While a rotation's grace period lasts: until when the previous secret still works.
    previous_secret_valid_until: Option<String>,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
}

impl ApiKeyResponse {
    fn new(key: ApiKey, last_used_ip: Option<String>) -> Self {
        let (owner_type, owner_id) = match key.owner {
            KeyOwner::User(id) => ("user", id),
            KeyOwner::ServiceAccount(id) => ("service_account", id),
        };
        Self {
            id: key.id.to_string(),
            name: key.name.as_str().to_owned(),
            owner_type,
            owner_id: owner_id.to_string(),
            scopes: key.scopes.iter().map(ToString::to_string).collect(),
            allowed_cidrs: key.allowed_cidrs.iter().map(ToString::to_string).collect(),
            created_at: key.created_at.to_rfc3339(),
            expires_at: key.expires_at.to_rfc3339(),
            revoked_at: key.revoked_at.map(|t| t.to_rfc3339()),
            previous_secret_valid_until: key.previous.map(|(_, until)| until.to_rfc3339()),
            last_used_at: key.last_used_at.map(|t| t.to_rfc3339()),
            last_used_ip,
        }
    }
}

impl From<ApiKeySummary> for ApiKeyResponse {
    fn from(summary: ApiKeySummary) -> Self {
        Self::new(summary.key, summary.last_used_ip)
    }
}

/// A key just issued or rotated.
#[derive(Serialize, ToSchema)]
pub(crate) struct IssuedApiKeyResponse {
    /// The full key, `pcs_…`: shown this once and never again. Store it now.
    key: String,
    api_key: ApiKeyResponse,
}

/// The key text stays out of any `{:?}`.
impl std::fmt::Debug for IssuedApiKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedApiKeyResponse").field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

impl From<IssuedApiKey> for IssuedApiKeyResponse {
    fn from(issued: IssuedApiKey) -> Self {
        Self { key: issued.secret.expose_secret().to_owned(), api_key: ApiKeyResponse::new(issued.key, None) }
    }
}

/// Keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiKeyListResponse {
    api_keys: Vec<ApiKeyResponse>,
}

/// A key to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKeyBody {
    #[schema(max_length = 64)]
    name: String,
    /// `resource:action` permissions (`*` allowed), each held by the key's owner; 1 to 32. The key
    /// can do what its owner can do at each use, within these.
    #[schema(min_items = 1, max_items = 32, value_type = Vec<crate::handlers::roles::PermissionText>)]
    scopes: Vec<String>,
    /// Days until the key stops working: 1 to `api_keys.max_lifetime_days` (365 unless configured).
    #[schema(minimum = 1, maximum = 365)]
    expires_in_days: u32,
    /// IPv4/IPv6 networks or addresses the key may be used from; empty or absent means anywhere.
    #[schema(max_items = 16)]
    #[serde(default)]
    allowed_cidrs: Vec<String>,
}

impl From<CreateApiKeyBody> for NewApiKey {
    fn from(body: CreateApiKeyBody) -> Self {
        NewApiKey {
            name: body.name,
            scopes: body.scopes,
            expires_in_days: body.expires_in_days,
            allowed_cidrs: body.allowed_cidrs,
        }
    }
}

/// The caller's own keys. Needs a login session.
#[utoipa::path(get, path = "/v1/me/api-keys", tag = "me", operation_id = "list_my_api_keys",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The caller's keys.", body = ApiKeyListResponse)))]
pub(crate) async fn list_my_api_keys(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<axum::Json<ApiKeyListResponse>, ApiError> {
    let keys = state.app.list_my_api_keys(&principal).await?;
    Ok(axum::Json(ApiKeyListResponse { api_keys: keys.into_iter().map(Into::into).collect() }))
}

/// Issues a key for the caller's own account. Needs a login session and `apikeys:create`.
#[utoipa::path(post, path = "/v1/me/api-keys", tag = "me", operation_id = "create_my_api_key",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateApiKeyBody,
    responses((status = 201, description = "Issued; `key` is shown only now.", body = IssuedApiKeyResponse)))]
pub(crate) async fn create_my_api_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CreateApiKeyBody>,
) -> Result<(StatusCode, axum::Json<IssuedApiKeyResponse>), ApiError> {
    let issued = state.app.create_my_api_key(&principal, &body.into()).await?;
    Ok((StatusCode::CREATED, axum::Json(issued.into())))
}

/// Revokes one of the caller's keys at once. Needs a login session.
#[utoipa::path(delete, path = "/v1/me/api-keys/{key_id}", tag = "me", operation_id = "revoke_my_api_key",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("key_id" = String, Path, description = "The key's public id.")),
    responses((status = 204, description = "Revoked.")))]
pub(crate) async fn revoke_my_api_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.revoke_my_api_key(&principal, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives one of the caller's keys a new secret; the old one keeps working for the grace period
/// (24 h by default). Needs a login session and `apikeys:create`.
#[utoipa::path(post, path = "/v1/me/api-keys/{key_id}/rotate", tag = "me", operation_id = "rotate_my_api_key",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("key_id" = String, Path, description = "The key's public id.")),
    responses((status = 200, description = "Rotated; `key` is shown only now.", body = IssuedApiKeyResponse)))]
pub(crate) async fn rotate_my_api_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(key_id): Path<String>,
) -> Result<axum::Json<IssuedApiKeyResponse>, ApiError> {
    Ok(axum::Json(state.app.rotate_my_api_key(&principal, &key_id).await?.into()))
}

/// A service account's keys. Needs `serviceaccounts:read` in its organization.
#[utoipa::path(get, path = "/v1/admin/service-accounts/{id}/api-keys", tag = "admin", operation_id = "list_service_account_keys",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The service account id.")),
    responses((status = 200, description = "Its keys.", body = ApiKeyListResponse)))]
pub(crate) async fn list_service_account_keys(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<ApiKeyListResponse>, ApiError> {
    let keys = state.app.admin_list_service_account_keys(&principal, &id).await?;
    Ok(axum::Json(ApiKeyListResponse { api_keys: keys.into_iter().map(Into::into).collect() }))
}

/// Issues a key for a service account. Needs `serviceaccounts:write` in its organization and every
/// permission the service account holds.
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/api-keys", tag = "admin", operation_id = "create_service_account_key",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateApiKeyBody,
    params(("id" = String, Path, description = "The service account id.")),
    responses((status = 201, description = "Issued; `key` is shown only now.", body = IssuedApiKeyResponse)))]
pub(crate) async fn create_service_account_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<CreateApiKeyBody>,
) -> Result<(StatusCode, axum::Json<IssuedApiKeyResponse>), ApiError> {
    let issued = state.app.admin_create_service_account_key(&principal, &id, &body.into()).await?;
    Ok((StatusCode::CREATED, axum::Json(issued.into())))
}

/// Revokes a service account's key. Needs `serviceaccounts:write` in its organization.
#[utoipa::path(delete, path = "/v1/admin/service-accounts/{id}/api-keys/{key_id}", tag = "admin", operation_id = "revoke_service_account_key",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The service account id."), ("key_id" = String, Path, description = "The key's public id.")),
    responses((status = 204, description = "Revoked.")))]
pub(crate) async fn revoke_service_account_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.app.admin_revoke_service_account_key(&principal, &id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a service account's key a new secret. Needs what issuing one needs.
#[utoipa::path(post, path = "/v1/admin/service-accounts/{id}/api-keys/{key_id}/rotate", tag = "admin", operation_id = "rotate_service_account_key",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The service account id."), ("key_id" = String, Path, description = "The key's public id.")),
    responses((status = 200, description = "Rotated; `key` is shown only now.", body = IssuedApiKeyResponse)))]
pub(crate) async fn rotate_service_account_key(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<axum::Json<IssuedApiKeyResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_rotate_service_account_key(&principal, &id, &key_id).await?.into()))
}
