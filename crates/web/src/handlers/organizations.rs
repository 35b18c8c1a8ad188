//! `/v1/admin/organizations/*`: organizations and their members. Every use case checks its own
//! permission in `app`; another tenant's organization answers 404, as a missing one does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::{AppError, Member};
use portcullis_domain::{BuiltinRole, Organization};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// An organization.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrganizationResponse {
    id: String,
    slug: String,
    name: String,
    created_at: String,
}

impl From<Organization> for OrganizationResponse {
    fn from(o: Organization) -> Self {
        Self {
            id: o.id.to_string(),
            slug: o.slug.as_str().to_owned(),
            name: o.name.as_str().to_owned(),
            created_at: o.created_at.to_rfc3339(),
        }
    }
}

/// A page cursor and size.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// The `next` cursor of the previous page.
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

fn limit(text: Option<&str>) -> Result<Option<u32>, AppError> {
    text.map(|l| l.parse::<u32>().map_err(|_| AppError::invalid("/limit", "must be a number from 1 to 200")))
        .transpose()
}

/// One page of organizations.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrganizationPageResponse {
    organizations: Vec<OrganizationResponse>,
    next: Option<String>,
}

/// Every organization, a page at a time. Needs `orgs:read` system-wide.
#[utoipa::path(get, path = "/v1/admin/organizations", tag = "admin", operation_id = "list_organizations",
    security(("bearer" = []), ("session_cookie" = [])), params(PageParams),
    responses((status = 200, description = "A page of organizations.", body = OrganizationPageResponse)))]
pub(crate) async fn list_organizations(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<OrganizationPageResponse>, ApiError> {
    let (organizations, next) = state
        .app
        .admin_list_organizations(&principal, params.after.as_deref(), limit(params.limit.as_deref())?)
        .await?;
    Ok(axum::Json(OrganizationPageResponse {
        organizations: organizations.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// A new organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrganizationBody {
    /// 1 to 32 lowercase letters, digits and single hyphens, starting with a letter.
    #[schema(max_length = 32, pattern = "^[a-z](-?[a-z0-9])*$")]
    slug: String,
    #[schema(max_length = 64)]
    name: String,
}

/// Creates an organization. Needs `orgs:create`.
#[utoipa::path(post, path = "/v1/admin/organizations", tag = "admin", operation_id = "create_organization",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateOrganizationBody,
    responses((status = 201, description = "Created.", body = OrganizationResponse)))]
pub(crate) async fn create_organization(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CreateOrganizationBody>,
) -> Result<(StatusCode, axum::Json<OrganizationResponse>), ApiError> {
    let organization = state.app.admin_create_organization(&principal, &body.slug, &body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(organization.into())))
}

/// One organization. Needs `orgs:read` in it.
#[utoipa::path(get, path = "/v1/admin/organizations/{id}", tag = "admin", operation_id = "get_organization",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 200, description = "The organization.", body = OrganizationResponse)))]
pub(crate) async fn get_organization(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<OrganizationResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_get_organization(&principal, &id).await?.into()))
}

/// The new name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameBody {
    #[schema(max_length = 64)]
    name: String,
}

/// Renames an organization. Needs `orgs:write` in it.
#[utoipa::path(patch, path = "/v1/admin/organizations/{id}", tag = "admin", operation_id = "rename_organization",
    security(("bearer" = []), ("session_cookie" = [])), request_body = RenameBody,
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 200, description = "The organization.", body = OrganizationResponse)))]
pub(crate) async fn rename_organization(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<RenameBody>,
) -> Result<axum::Json<OrganizationResponse>, ApiError> {
    Ok(axum::Json(state.app.admin_rename_organization(&principal, &id, &body.name).await?.into()))
}

/// Deletes an organization and its memberships (not the accounts). Needs `orgs:delete`
/// system-wide; the default organization stays.
#[utoipa::path(delete, path = "/v1/admin/organizations/{id}", tag = "admin", operation_id = "delete_organization",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 204, description = "Deleted.")))]
pub(crate) async fn delete_organization(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.admin_delete_organization(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One member.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberResponse {
    user_id: String,
    email: String,
    display_name: Option<String>,
    /// `owner`, `admin`, `auditor` or `member` in this organization.
    role: &'static str,
    /// The organization's custom roles the member holds, in name order.
    roles: Vec<RoleRef>,
}

/// A custom role, named.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoleRef {
    id: String,
    name: String,
}

impl From<portcullis_domain::CustomRole> for RoleRef {
    fn from(role: portcullis_domain::CustomRole) -> Self {
        Self { id: role.id.to_string(), name: role.name.as_str().to_owned() }
    }
}

impl From<Member> for MemberResponse {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user_id.to_string(),
            email: m.email,
            display_name: m.display_name,
            role: m.role.as_str(),
            roles: m.custom_roles.into_iter().map(RoleRef::from).collect(),
        }
    }
}

/// One page of members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberPageResponse {
    members: Vec<MemberResponse>,
    next: Option<String>,
}

/// The members of an organization, a page at a time. Needs `memberships:read` in it.
#[utoipa::path(get, path = "/v1/admin/organizations/{id}/members", tag = "admin", operation_id = "list_members",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id."), PageParams),
    responses((status = 200, description = "A page of members.", body = MemberPageResponse)))]
pub(crate) async fn list_members(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<axum::Json<MemberPageResponse>, ApiError> {
    let (members, next) = state
        .app
        .admin_list_members(&principal, &id, params.after.as_deref(), limit(params.limit.as_deref())?)
        .await?;
    Ok(axum::Json(MemberPageResponse { members: members.into_iter().map(Into::into).collect(), next }))
}

/// The role to hold in the organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberRoleBody {
    /// `owner`, `admin`, `auditor` or `member`.
    #[schema(pattern = "^(owner|admin|auditor|member)$")]
    role: String,
    /// The ids of the organization's custom roles to hold, replacing those held; left out, they stay.
    #[schema(max_items = 16)]
    roles: Option<Vec<String>>,
}

fn role(text: &str) -> Result<BuiltinRole, AppError> {
    BuiltinRole::parse(text)
        .ok_or_else(|| AppError::invalid("/role", "must be owner, admin, auditor or member"))
}

/// Adds an account to the organization, or changes its built-in role and custom roles there. Needs
/// `memberships:write` in the organization and every permission of the roles given or taken there.
#[utoipa::path(put, path = "/v1/admin/organizations/{id}/members/{user_id}", tag = "admin", operation_id = "set_member",
    security(("bearer" = []), ("session_cookie" = [])), request_body = MemberRoleBody,
    params(("id" = String, Path, description = "The organization id."), ("user_id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "The membership.", body = MemberResponse)))]
pub(crate) async fn set_member(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, user_id)): Path<(String, String)>,
    Json(body): Json<MemberRoleBody>,
) -> Result<axum::Json<MemberResponse>, ApiError> {
    let role = role(&body.role)?;
    let member = state.app.admin_set_member(&principal, &id, &user_id, role, body.roles.as_deref()).await?;
    Ok(axum::Json(member.into()))
}

/// Removes an account from the organization. Needs `memberships:write` in it.
#[utoipa::path(delete, path = "/v1/admin/organizations/{id}/members/{user_id}", tag = "admin", operation_id = "remove_member",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id."), ("user_id" = String, Path, description = "The account id.")),
    responses((status = 204, description = "Removed.")))]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.app.admin_remove_member(&principal, &id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
