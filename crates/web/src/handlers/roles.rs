//! `/v1/admin/organizations/{id}/roles/*`: the built-in and custom roles an organization offers.
//! Every use case checks its own permission in `app`; another organization's role answers 404, as a
//! missing one does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::{AppError, OrganizationRoles, RoleChange};
use portcullis_domain::{BuiltinRole, CustomRole, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// A permission as granted: `resource:action`, lowercase, `*` allowed for either side (schema only).
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^([a-z][a-z0-9_-]{0,31}|[*]):([a-z][a-z0-9_-]{0,30}|[*])$")]
pub(crate) struct PermissionText(#[allow(dead_code, reason = "documents the schema only")] String);

/// A role as offered in an organization.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoleResponse {
    /// The custom role's id; `null` for a built-in role.
    id: Option<String>,
    name: String,
    builtin: bool,
    /// What the role grants in the organization (`resource:action`, `*` as a wildcard).
    permissions: Vec<String>,
    /// What the role grants over the holder's own resources only (built-in roles).
    own_permissions: Vec<String>,
    /// `null` for a built-in role.
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl From<CustomRole> for RoleResponse {
    fn from(role: CustomRole) -> Self {
        Self {
            id: Some(role.id.to_string()),
            name: role.name.as_str().to_owned(),
            builtin: false,
            permissions: role.permissions.iter().map(ToString::to_string).collect(),
            own_permissions: Vec::new(),
            created_at: Some(role.created_at.to_rfc3339()),
            updated_at: Some(role.updated_at.to_rfc3339()),
        }
    }
}

impl From<BuiltinRole> for RoleResponse {
    fn from(role: BuiltinRole) -> Self {
        let grants = role.grants();
        let of = |own: bool| {
            grants
                .iter()
                .filter(|g| (g.scope == Scope::Own) == own)
                .map(|g| g.permission.to_string())
                .collect()
        };
        Self {
            id: None,
            name: role.as_str().to_owned(),
            builtin: true,
            permissions: of(false),
            own_permissions: of(true),
            created_at: None,
            updated_at: None,
        }
    }
}

/// Every role an organization offers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoleListResponse {
    /// The built-in roles first, then the custom roles in name order.
    roles: Vec<RoleResponse>,
}

impl From<OrganizationRoles> for RoleListResponse {
    fn from(roles: OrganizationRoles) -> Self {
        let builtin = roles.builtin.into_iter().map(RoleResponse::from);
        Self { roles: builtin.chain(roles.custom.into_iter().map(RoleResponse::from)).collect() }
    }
}

/// The built-in and custom roles of an organization. Needs `roles:read` in it.
#[utoipa::path(get, path = "/v1/admin/organizations/{id}/roles", tag = "admin", operation_id = "list_roles",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 200, description = "The roles.", body = RoleListResponse)))]
pub(crate) async fn list_roles(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<RoleListResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_list_roles(&principal, &id).await?.into()))
}

/// A new custom role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRoleBody {
    /// 1 to 32 lowercase letters, digits and single hyphens, starting with a letter; not a built-in
    /// role's name; unique in the organization.
    #[schema(max_length = 32, pattern = "^[a-z](-?[a-z0-9])*$")]
    name: String,
    /// `resource:action` strings, `*` allowed for either side; 1 to 64.
    #[schema(min_items = 1, max_items = 64, value_type = Vec<PermissionText>)]
    permissions: Vec<String>,
}

/// Creates a custom role. Needs `roles:write` in the organization and every permission it lists.
#[utoipa::path(post, path = "/v1/admin/organizations/{id}/roles", tag = "admin", operation_id = "create_role",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateRoleBody,
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 201, description = "Created.", body = RoleResponse)))]
pub(crate) async fn create_role(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<CreateRoleBody>,
) -> Result<(StatusCode, axum::Json<RoleResponse>), ApiError> {
    let role = state.app.admin_create_role(&principal, &id, &body.name, &body.permissions).await?;
    Ok((StatusCode::CREATED, axum::Json(role.into())))
}

/// One custom role. Needs `roles:read` in its organization.
#[utoipa::path(get, path = "/v1/admin/organizations/{id}/roles/{role_id}", tag = "admin", operation_id = "get_role",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id."), ("role_id" = String, Path, description = "The role id.")),
    responses((status = 200, description = "The role.", body = RoleResponse)))]
pub(crate) async fn get_role(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, role_id)): Path<(String, String)>,
) -> Result<axum::Json<RoleResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_get_role(&principal, &id, &role_id).await?.into()))
}

/// A change to a custom role; a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateRoleBody {
    #[schema(max_length = 32, pattern = "^[a-z](-?[a-z0-9])*$")]
    name: Option<String>,
    /// Replaces the whole list.
    #[schema(min_items = 1, max_items = 64, value_type = Option<Vec<PermissionText>>)]
    permissions: Option<Vec<String>>,
}

/// Renames a custom role or replaces its permissions. Needs `roles:write` in the organization and
/// every permission of the role before and after the change.
#[utoipa::path(patch, path = "/v1/admin/organizations/{id}/roles/{role_id}", tag = "admin", operation_id = "update_role",
    security(("bearer" = []), ("session_cookie" = [])), request_body = UpdateRoleBody,
    params(("id" = String, Path, description = "The organization id."), ("role_id" = String, Path, description = "The role id.")),
    responses((status = 200, description = "The role.", body = RoleResponse)))]
pub(crate) async fn update_role(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, role_id)): Path<(String, String)>,
    Json(body): Json<UpdateRoleBody>,
) -> Result<axum::Json<RoleResponse>, ApiError> {
    let change = RoleChange { name: body.name, permissions: body.permissions };
    Ok(axum::Json(state.app.admin_update_role(&principal, &id, &role_id, &change).await?.into()))
}

/// Whether to take the role from its holders.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteRoleParams {
    /// `true` deletes a role that members hold, taking it from them.
    #[param(value_type = Option<bool>)]
    force: Option<String>,
}

/// Deletes a custom role. Needs `roles:write` in the organization and every permission of the role.
/// A role that members hold is refused (409, `role-in-use`, with `holders`) unless `force=true`.
#[utoipa::path(delete, path = "/v1/admin/organizations/{id}/roles/{role_id}", tag = "admin", operation_id = "delete_role",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id."), ("role_id" = String, Path, description = "The role id."), DeleteRoleParams),
    responses((status = 204, description = "Deleted.")))]
pub(crate) async fn delete_role(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, role_id)): Path<(String, String)>,
    Query(params): Query<DeleteRoleParams>,
) -> Result<StatusCode, ApiError> {
    let force = match params.force.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(AppError::invalid("/force", "must be true or false").into()),
    };
    state.app.admin_delete_role(&principal, &id, &role_id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}
