//! `/v1/admin/*`: administration. Until the authorization issue lands, the use cases check the
//! caller's built-in role.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Json;

/// Whom to invite.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Emails a single-use signup invite (valid 7 days). Needs the owner or admin role.
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
