//! `/v1/admin/*`: administration. Every use case checks its own permission in `app` (deny by
//! default); these handlers only shape requests and responses.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::{AdminUser, StatusChange};
use portcullis_domain::BuiltinRole;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// Whom to invite.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Emails a single-use signup invite (valid 7 days). Needs `invites:create`.
#[utoipa::path(post, path = "/v1/admin/invites", tag = "admin", operation_id = "create_invite",
    security(("bearer" = []), ("session_cookie" = [])), request_body = InviteBody,
    responses((status = 202, description = "The invite is on its way.")))]
pub(crate) async fn create_invite(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<InviteBody>,
) -> Result<StatusCode, ApiError> {
    state.app.invite(&principal, &body.email).await?;
    Ok(StatusCode::ACCEPTED)
}

/// An account as an administrator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AdminUserResponse {
    id: String,
    email: String,
    email_verified: bool,
    display_name: Option<String>,
    /// `active`, `locked` or `disabled`.
    status: &'static str,
    /// `owner`, `admin`, `auditor` or `member`.
    role: &'static str,
    created_at: String,
    updated_at: String,
    last_login_at: Option<String>,
}

impl From<AdminUser> for AdminUserResponse {
    fn from(u: AdminUser) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email,
            email_verified: u.email_verified,
            display_name: u.display_name,
            status: u.status.as_str(),
            role: u.role.as_str(),
            created_at: u.created_at.to_rfc3339(),
            updated_at: u.updated_at.to_rfc3339(),
            last_login_at: u.last_login_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// Filters and the page of the user list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListUsersParams {
    /// The `next` cursor of the previous page (an id, or `<millis>_<id>` when sorted by creation).
    #[param(pattern = "^([0-9]{1,19}_)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    after: Option<String>,
    /// Only accounts with this status: `active`, `locked` or `disabled`.
    #[param(pattern = "^(active|locked|disabled)$")]
    status: Option<String>,
    /// Only members of this organization (its administrators may list them).
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    organization: Option<String>,
    /// `id` (default), `created` (oldest first) or `-created` (newest first); organization lists
    /// are in id order.
    #[param(pattern = "^(id|created|-created)$")]
    sort: Option<String>,
    /// Only addresses starting with this (case-insensitive). Addresses are encrypted at rest, so a
    /// request examines at most 5000 accounts: a page may hold fewer matches and a `next` cursor.
    #[param(min_length = 1, max_length = 254)]
    email_prefix: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// One page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserPageResponse {
    users: Vec<AdminUserResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

/// Lists accounts in a stable order, a page at a time, filtered by status, organization and address
/// prefix. Needs `users:read` system-wide, or in the organization filtered by.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", operation_id = "list_users",
    security(("bearer" = []), ("session_cookie" = [])), params(ListUsersParams),
    responses((status = 200, description = "A page of accounts.", body = UserPageResponse)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(params): Query<ListUsersParams>,
) -> Result<axum::Json<UserPageResponse>, ApiError> {
    let limit = params
        .limit
        .as_deref()
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| portcullis_app::AppError::invalid("/limit", "must be a number from 1 to 200"))
        })
        .transpose()?;
    let query = portcullis_app::UserQuery {
        after: params.after.as_deref(),
        status: params.status.as_deref(),
        organization: params.organization.as_deref(),
        email_prefix: params.email_prefix.as_deref(),
        sort: params.sort.as_deref(),
        limit,
    };
    let page = state.app.admin_search_users(&principal, &query).await?;
    Ok(axum::Json(UserPageResponse {
        users: page.users.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

/// A new account with a password set by the administrator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUserBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(max_length = 64)]
    display_name: Option<String>,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    password: SecretString,
    /// `owner`, `admin`, `auditor` or `member` (default `member`).
    #[schema(pattern = "^(owner|admin|auditor|member)$")]
    role: Option<String>,
}

fn parse_role(role: Option<&str>) -> Result<BuiltinRole, portcullis_app::AppError> {
    match role {
        None => Ok(BuiltinRole::Member),
        Some(text) => BuiltinRole::parse(text).ok_or_else(|| {
            portcullis_app::AppError::invalid("/role", "must be owner, admin, auditor or member")
        }),
    }
}

/// Creates an account (its address counts as verified). Needs `users:create` and every permission
/// of the role given.
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", operation_id = "create_user",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateUserBody,
    responses((status = 201, description = "Created.", body = AdminUserResponse)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CreateUserBody>,
) -> Result<(StatusCode, axum::Json<AdminUserResponse>), ApiError> {
    let role = parse_role(body.role.as_deref())?;
    let user = state
        .app
        .admin_create_user(&principal, &body.email, body.display_name.as_deref(), body.password, role)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(user.into())))
}

/// One account. Needs `users:read`; an unknown id is 404.
#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "admin", operation_id = "get_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_get_user(&principal, &id).await?.into()))
}

/// The role to give.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    /// `owner`, `admin`, `auditor` or `member`.
    #[schema(pattern = "^(owner|admin|auditor|member)$")]
    role: String,
}

/// Gives an account another role. Needs `users:write` and every permission of both roles; the last
/// active owner keeps the role.
#[utoipa::path(put, path = "/v1/admin/users/{id}/role", tag = "admin", operation_id = "set_user_role",
    security(("bearer" = []), ("session_cookie" = [])), request_body = RoleBody,
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn set_user_role(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<RoleBody>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    let role = parse_role(Some(&body.role))?;
    Ok(axum::Json(state.app.admin_set_role(&principal, &id, role).await?.into()))
}

async fn set_status(
    state: AppState,
    principal: portcullis_app::Principal,
    id: String,
    change: StatusChange,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_set_status(&principal, &id, change).await?.into()))
}

/// Disables an account and ends its sessions. Needs `users:write`.
#[utoipa::path(post, path = "/v1/admin/users/{id}/disable", tag = "admin", operation_id = "disable_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    set_status(state, principal, id, StatusChange::Disable).await
}

/// Enables a disabled account. Needs `users:write`.
#[utoipa::path(post, path = "/v1/admin/users/{id}/enable", tag = "admin", operation_id = "enable_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    set_status(state, principal, id, StatusChange::Enable).await
}

/// Unlocks a locked account. Needs `users:write`.
#[utoipa::path(post, path = "/v1/admin/users/{id}/unlock", tag = "admin", operation_id = "unlock_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn unlock_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    set_status(state, principal, id, StatusChange::Unlock).await
}

/// A change to an account's details; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUserBody {
    /// A new address: unverified until its owner follows the link sent there.
    #[schema(max_length = 254)]
    email: Option<String>,
    /// A new display name, or `null` to clear it.
    #[schema(max_length = 64)]
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
}

/// A field that is present (even as `null`) is `Some`, so `null` can clear it.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Changes another account's address or display name. Needs `users:write` over it and every
/// permission of its role.
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "admin", operation_id = "update_user",
    security(("bearer" = []), ("session_cookie" = [])), request_body = UpdateUserBody,
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The account.", body = AdminUserResponse)))]
pub(crate) async fn update_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<UpdateUserBody>,
) -> Result<axum::Json<AdminUserResponse>, ApiError> {
    let change = portcullis_app::UserChange { email: body.email, display_name: body.display_name };
    Ok(axum::Json(state.app.admin_update_user(&principal, &id, &change).await?.into()))
}

/// Erases an account, as `DELETE /v1/me` does for oneself: it is deleted with everything kept
/// about the person, and the audit trail keeps only its id, the client details of the person's
/// requests no longer readable. Needs `users:delete` over it and every grant of its role; the last
/// active owner and one's own account are refused.
#[utoipa::path(delete, path = "/v1/admin/users/{id}", tag = "admin", operation_id = "delete_user",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 204, description = "Erased.")))]
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.admin_delete_user(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many sessions ended.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RevokedResponse {
    revoked: u64,
}

/// Ends every session of an account. Needs `sessions:delete` over it.
#[utoipa::path(delete, path = "/v1/admin/users/{id}/sessions", tag = "admin", operation_id = "revoke_user_sessions",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "Ended.", body = RevokedResponse)))]
pub(crate) async fn revoke_user_sessions(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<RevokedResponse>, ApiError> {
    Ok(axum::Json(RevokedResponse { revoked: state.app.admin_revoke_sessions(&principal, &id).await? }))
}
