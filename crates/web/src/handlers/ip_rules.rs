//! `/v1/admin/ip-rules`: the global allow and deny lists and the administration API's allowlist.
//! Rules from the configuration file are listed (source `config`) but changed only there.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_app::NewIpRule;
use portcullis_domain::IpRule;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Json;
use crate::middleware::edge::ClientInfo;

/// One rule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IpRuleResponse {
    id: String,
    /// The network in canonical CIDR form (`10.0.0.0/8`; one address is a `/32` or `/128`).
    network: String,
    /// `allow` or `deny`.
    action: &'static str,
    /// `global` (every route) or `admin` (`/v1/admin/*`).
    scope: &'static str,
    /// `admin` (made through this API), `detection` (an automatic block, always expiring) or
    /// `config` (the configuration file's; read-only here).
    source: &'static str,
    note: String,
    /// The account that made it (none for detection and config rules).
    created_by: Option<String>,
    created_at: String,
    /// When it stops applying; none for a standing rule.
    expires_at: Option<String>,
}

impl From<IpRule> for IpRuleResponse {
    fn from(rule: IpRule) -> Self {
        Self {
            id: rule.id.to_string(),
            network: rule.network.to_string(),
            action: rule.action.as_str(),
            scope: rule.scope.as_str(),
            source: rule.source.as_str(),
            note: rule.note,
            created_by: rule.created_by.map(|id| id.to_string()),
            created_at: rule.created_at.to_rfc3339(),
            expires_at: rule.expires_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// Every rule: the configuration's first, then the stored ones, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IpRuleListResponse {
    rules: Vec<IpRuleResponse>,
}

/// Every IP rule. Needs `iprules:read` system-wide.
#[utoipa::path(get, path = "/v1/admin/ip-rules", tag = "admin", operation_id = "list_ip_rules",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "Every rule.", body = IpRuleListResponse)))]
pub(crate) async fn list_ip_rules(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<axum::Json<IpRuleListResponse>, ApiError> {
    let rules = state.app.admin_list_ip_rules(&principal).await?;
    Ok(axum::Json(IpRuleListResponse { rules: rules.into_iter().map(Into::into).collect() }))
}

/// A new rule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateIpRuleBody {
    /// An IPv4 or IPv6 address or CIDR network; stored in canonical form.
    #[schema(max_length = 64)]
    network: String,
    #[schema(pattern = "^(allow|deny)$")]
    action: String,
    /// `global` (every route) or `admin` (`/v1/admin/*` only).
    #[schema(pattern = "^(global|admin)$")]
    scope: String,
    /// Why the rule exists.
    #[schema(max_length = 200)]
    note: Option<String>,
    /// Seconds until the rule stops applying (at most a year); leave it out for a standing rule.
    #[schema(minimum = 1, maximum = 31_622_400)]
    expires_in_secs: Option<i64>,
}

/// Creates an IP rule, in force at once. Needs `iprules:write` system-wide. A rule that would lock
/// the caller's own address out of the administration API is refused (422).
#[utoipa::path(post, path = "/v1/admin/ip-rules", tag = "admin", operation_id = "create_ip_rule",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CreateIpRuleBody,
    responses((status = 201, description = "Created.", body = IpRuleResponse)))]
pub(crate) async fn create_ip_rule(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    client: Option<Extension<ClientInfo>>,
    Json(body): Json<CreateIpRuleBody>,
) -> Result<(StatusCode, axum::Json<IpRuleResponse>), ApiError> {
    let new = NewIpRule {
        network: &body.network,
        action: &body.action,
        scope: &body.scope,
        note: body.note.as_deref(),
        expires_in_secs: body.expires_in_secs,
    };
    let caller_ip = client.map(|Extension(c)| c.ip);
    let rule = state.app.admin_create_ip_rule(&principal, caller_ip, &new).await?;
    Ok((StatusCode::CREATED, axum::Json(rule.into())))
}

/// Deletes an IP rule, out of force at once. Needs `iprules:write` system-wide. A configuration
/// rule is refused (403); deleting the rule that lets the caller's own address reach the
/// administration API is refused (422).
#[utoipa::path(delete, path = "/v1/admin/ip-rules/{id}", tag = "admin", operation_id = "delete_ip_rule",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The rule id.")),
    responses((status = 204, description = "Deleted.")))]
pub(crate) async fn delete_ip_rule(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    client: Option<Extension<ClientInfo>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller_ip = client.map(|Extension(c)| c.ip);
    state.app.admin_delete_ip_rule(&principal, caller_ip, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
