//! `/v1/admin/service-accounts/*`: non-human accounts of an organization, which authenticate only
//! with API keys. Another tenant's service account answers 404, as a missing one does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::{AppError, ServiceAccountChange, ServiceAccountDetails};
use portcullis_domain::{BuiltinRole, ServiceAccount};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::handlers::organizations::RoleRef;

/// A service account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ServiceAccountResponse {
    id: String,
    organization_id: String,
    name: String,
    /// Its built-in role in its organization.
    role: &'static str,
    active: bool,
    /// The organization's custom roles it holds, in name order (when reading or changing one
    /// account; lists leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<RoleRef>>,
    created_at: String,
    updated_at: String,
}

impl From<ServiceAccount> for ServiceAccountResponse {
    fn from(a: ServiceAccount) -> Self {
        Self {
            id: a.id.to_string(),
            organization_id: a.organization.to_string(),
            name: a.name.as_str().to_owned(),
            role: a.role.as_str(),
            active: a.active,
            roles: None,
            created_at: a.created_at.to_rfc3339(),
            updated_at: a.updated_at.to_rfc3339(),
        }
    }
}

impl From<ServiceAccountDetails> for ServiceAccountResponse {
    fn from(details: ServiceAccountDetails) -> Self {
        let roles = details.custom_roles.into_iter().map(RoleRef::from).collect();
        Self { roles: Some(roles), ..details.account.into() }
    }
}

/// One page of service accounts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ServiceAccountPageResponse {
    service_accounts: Vec<ServiceAccountResponse>,
    next: Option<String>,
}

/// Filter and page.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this organization's service accounts.
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    organization: Option<String>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

fn role(text: &str) -> Result<BuiltinRole, AppError> {
    BuiltinRole::parse(text)
        .ok_or_else(|| AppError::invalid("/role", "must be owner, admin, auditor or member"))
}

/// Service accounts, a page at a time: of one organization (`serviceaccounts:read` there) or of all
/// (`serviceaccounts:read` system-wide).
#[utoipa::path(get, path = "/v1/admin/service-accounts", tag = "admin", operation_id = "list_service_accounts",
    security(("bearer" = []), ("session_cookie" = [])), params(ListParams),
    responses((status = 200, description = "A page of service accounts.", body = ServiceAccountPageResponse)))]
pub(crate) async fn list_service_accounts(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<ServiceAccountPageResponse>, ApiError> {
    let limit = params
        .limit
        .as_deref()
        .map(|l| l.parse::<u32>().map_err(|_| AppError::invalid("/limit", "must be a number from 1 to 200")))
        .transpose()?;
    let (accounts, next) = state
        .app
        .admin_list_service_accounts(
            &principal,
            params.organization.as_deref(),
            params.after.as_deref(),
            limit,
        )
        .await?;
    Ok(axum::Json(ServiceAccountPageResponse {
        service_accounts: accounts.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// A new service account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateServiceAccountBody {
    /// The organization it belongs to.
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    organization_id: String,
    #[schema(max_length = 64)]
    name: String,
    /// `owner`, `admin`, `auditor` or `member` in its organization (default `member`).
    #[schema(pattern = "^(owner|admin|auditor|member)$")]
    role: Option<String>,
}

/// Creates a service account. Needs `serviceaccounts:write` in the organization and every permission
/// of the role there.
#[utoipa::path(post, path = "/v1/admin/service-accounts", tag = "admin", operation_id = "create_service_account",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateServiceAccountBody,
    responses((status = 201, description = "Created.", body = ServiceAccountResponse)))]
pub(crate) async fn create_service_account(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CreateServiceAccountBody>,
) -> Result<(StatusCode, axum::Json<ServiceAccountResponse>), ApiError> {
    let role = body.role.as_deref().map(role).transpose()?.unwrap_or(BuiltinRole::Member);
    let account =
        state.app.admin_create_service_account(&principal, &body.organization_id, &body.name, role).await?;
    Ok((StatusCode::CREATED, axum::Json(account.into())))
}

/// One service account. Needs `serviceaccounts:read` in its organization.
#[utoipa::path(get, path = "/v1/admin/service-accounts/{id}", tag = "admin", operation_id = "get_service_account",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The service account id.")),
    responses((status = 200, description = "The service account.", body = ServiceAccountResponse)))]
pub(crate) async fn get_service_account(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<ServiceAccountResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_get_service_account(&principal, &id).await?.into()))
}

/// A change; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateServiceAccountBody {
    #[schema(max_length = 64)]
    name: Option<String>,
    #[schema(pattern = "^(owner|admin|auditor|member)$")]
    role: Option<String>,
    /// `false` disables it: its keys stop working at once.
    active: Option<bool>,
    /// The ids of its organization's custom roles it is to hold, replacing those it holds.
    #[schema(max_items = 16)]
    roles: Option<Vec<String>>,
}

/// Renames, re-roles, disables or enables a service account. Needs `serviceaccounts:write` in its
/// organization and every permission of its old and new role there.
#[utoipa::path(patch, path = "/v1/admin/service-accounts/{id}", tag = "admin", operation_id = "update_service_account",
    security(("bearer" = []), ("session_cookie" = [])), request_body = UpdateServiceAccountBody,
    params(("id" = String, Path, description = "The service account id.")),
    responses((status = 200, description = "The service account.", body = ServiceAccountResponse)))]
pub(crate) async fn update_service_account(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<UpdateServiceAccountBody>,
) -> Result<axum::Json<ServiceAccountResponse>, ApiError> {
    let change = ServiceAccountChange {
        name: body.name,
        role: body.role.as_deref().map(role).transpose()?,
        active: body.active,
        custom_roles: body.roles,
    };
    Ok(axum::Json(state.app.admin_update_service_account(&principal, &id, &change).await?.into()))
}

/// Deletes a service account and its keys. Needs `serviceaccounts:write` in its organization and
/// every permission of its role there.
#[utoipa::path(delete, path = "/v1/admin/service-accounts/{id}", tag = "admin", operation_id = "delete_service_account",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The service account id.")),
    responses((status = 204, description = "Deleted.")))]
pub(crate) async fn delete_service_account(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.admin_delete_service_account(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
