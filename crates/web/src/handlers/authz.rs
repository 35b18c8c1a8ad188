//! `/v1/authz/*`: the check API applications ask before acting for a user.

use axum::extract::State;
use portcullis_app::{AppError, CheckRequest};
use portcullis_domain::{Decision, OrganizationId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Json;

/// What the resource asked about belongs to.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceBody {
    /// The organization the resource belongs to.
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    org: Option<String>,
    /// The account that owns the resource.
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    owner: Option<String>,
}

/// One question: may the caller (or `subject`) do `permission` to `resource`?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckBody {
    /// `resource:action`, for example `users:read`.
    #[schema(max_length = 64, pattern = "^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$")]
    permission: String,
    /// Absent for a system-wide resource or a collection. Taken as a JSON value and then read as an
    /// object, because serde would also read a struct from an array (`[null, null]`).
    #[schema(value_type = ResourceBody)]
    #[serde(default, deserialize_with = "present")]
    resource: Option<serde_json::Value>,
    /// Decide for this account instead of the caller (needs `authz:check`).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    subject: Option<String>,
}

/// A field that is present, even as `null` (`Some(Value::Null)`), as against absent (`None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

fn request(body: CheckBody) -> Result<CheckRequest, AppError> {
    let id = |field: &'static str, text: Option<String>| {
        text.map(|t| UserId::parse(&t).map_err(|_| AppError::invalid(field, "is not an account id")))
            .transpose()
    };
    let resource = match body.resource {
        None => ResourceBody::default(),
        Some(value @ serde_json::Value::Object(_)) => serde_json::from_value(value)
            .map_err(|_| AppError::invalid("/resource", "must be an object with only org and owner"))?,
        Some(_) => return Err(AppError::invalid("/resource", "must be an object")),
    };
    let (org, owner) = (resource.org, resource.owner);
    let organization = org
        .map(|o| {
            OrganizationId::parse(&o)
                .map_err(|_| AppError::invalid("/resource/org", "is not an organization id"))
        })
        .transpose()?;
    Ok(CheckRequest {
        permission: body.permission,
        owner: id("/resource/owner", owner)?,
        organization,
        subject: id("/subject", body.subject)?,
    })
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionResponse {
    allowed: bool,
    /// Which grant allowed it, or why nothing did.
    reason: String,
}

impl From<Decision> for DecisionResponse {
    fn from(d: Decision) -> Self {
        Self { allowed: d.allowed, reason: d.reason }
    }
}

/// Answers one authorization question for the caller, or for `subject` with `authz:check`.
#[utoipa::path(post, path = "/v1/authz/check", tag = "authz", operation_id = "authz_check",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CheckBody,
    responses((status = 200, description = "The decision.", body = DecisionResponse)))]
pub(crate) async fn check(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CheckBody>,
) -> Result<axum::Json<DecisionResponse>, ApiError> {
    Ok(axum::Json(state.app.check(&principal, &request(body)?).await?.into()))
}

/// Up to 100 questions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckBatchBody {
    #[schema(min_items = 1, max_items = 100)]
    checks: Vec<CheckBody>,
}

/// The answers, in the order asked.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionsResponse {
    decisions: Vec<DecisionResponse>,
}

/// Answers up to 100 authorization questions in one call.
#[utoipa::path(post, path = "/v1/authz/check-batch", tag = "authz", operation_id = "authz_check_batch",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CheckBatchBody,
    responses((status = 200, description = "The decisions.", body = DecisionsResponse)))]
pub(crate) async fn check_batch(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<CheckBatchBody>,
) -> Result<axum::Json<DecisionsResponse>, ApiError> {
    let requests = body.checks.into_iter().map(request).collect::<Result<Vec<_>, _>>()?;
    let decisions = state.app.check_batch(&principal, &requests).await?;
    Ok(axum::Json(DecisionsResponse { decisions: decisions.into_iter().map(Into::into).collect() }))
}
