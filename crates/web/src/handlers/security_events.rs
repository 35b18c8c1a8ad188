//! `GET /v1/admin/security-events`: the stored security events, filtered and a page at a time. The
//! use case checks `security:read` (system-wide) and every filter; this handler reads the query
//! string and shapes the answer.

use std::collections::BTreeMap;

use axum::extract::State;
use portcullis_app::{AdminSecurityEvent, AppError, SecurityEventFilter};
use portcullis_domain::SecurityEventKind;
use serde::Serialize;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{Array, Object};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Query;
use crate::problem::{Problem, ProblemType};

/// Filters and the page of the security-event list. Every parameter but `kind` may appear once;
/// an unknown one is a 400.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SecurityEventParams {
    /// Only events of these kinds: repeat the parameter (`kind=login_failed&kind=ip_denied`) or
    /// separate kinds with commas (`kind=login_failed,ip_denied`). All kinds when absent.
    #[param(schema_with = kinds_schema, style = Form, explode, required = false)]
    kind: Vec<String>,
    /// Only events about this account (an account's id; a deleted account's events keep it).
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    user_id: Option<String>,
    /// Only events at or after this time (RFC 3339, such as `2026-01-31T09:30:00Z`; percent-encode
    /// a `+` offset as `%2B`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only events before this time (RFC 3339): with `since`, the half-open interval `[since,
    /// until)`. Must not be before `since`.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next` cursor of the previous page (opaque).
    #[param(pattern = "^[0-9a-f]{32}$")]
    after: Option<String>,
}

impl SecurityEventParams {
    /// The parameters from the query string's pairs, in order. `kind` may repeat; any other name
    /// twice is a 422 naming it, and a name not listed above a 400, as for every query string.
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut params = SecurityEventParams::default();
        for (name, value) in pairs {
            let (field, slot) = match name.as_str() {
                "kind" => {
                    params.kind.push(value);
                    continue;
                }
                "user_id" => ("/user_id", &mut params.user_id),
                "since" => ("/since", &mut params.since),
                "until" => ("/until", &mut params.until),
                "limit" => ("/limit", &mut params.limit),
                "after" => ("/after", &mut params.after),
                _ => {
                    return Err(Problem::new(
                        ProblemType::MALFORMED_REQUEST,
                        "The query string is malformed or names an unknown parameter.",
                    )
                    .into());
                }
            };
            if slot.replace(value).is_some() {
                return Err(AppError::invalid(field, "may be given only once").into());
            }
        }
        Ok(params)
    }
}

/// The stored spellings of every kind, the one list the schema and the use case share.
fn kind_schema() -> Object {
    let names: Vec<&str> = SecurityEventKind::ALL.iter().map(|k| k.as_str()).collect();
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).build()
}

/// The `kind` parameter's schema, which carries its description (utoipa drops a field's doc comment
/// when `schema_with` gives the schema).
fn kinds_schema() -> Array {
    ArrayBuilder::new()
        .items(kind_schema())
        .description(Some(
            "Only events of these kinds: repeat the parameter (`kind=login_failed&kind=ip_denied`) or \
             separate kinds with commas (`kind=login_failed,ip_denied`). All kinds when absent.",
        ))
        .build()
}

/// A security event as a defender sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SecurityEventResponse {
    id: String,
    /// When it happened (RFC 3339, UTC, milliseconds).
    #[schema(format = DateTime)]
    at: String,
    /// What happened.
    #[schema(schema_with = kind_schema)]
    kind: &'static str,
    /// The kind's default severity: `low`, `medium`, `high` or `critical`.
    #[schema(pattern = "^(low|medium|high|critical)$")]
    severity: &'static str,
    /// The account it concerns, if any.
    user_id: Option<String>,
    /// The session it concerns, if any.
    session_id: Option<String>,
    /// The client's address, if one was recorded.
    ip: Option<String>,
    /// What a defender needs to read it (policy, count, network, rule id); never a secret.
    details: BTreeMap<String, String>,
}

impl From<AdminSecurityEvent> for SecurityEventResponse {
    fn from(e: AdminSecurityEvent) -> Self {
        Self {
            id: e.id.to_string(),
            at: e.at.to_rfc3339(),
            kind: e.kind.as_str(),
            severity: e.severity.as_str(),
            user_id: e.user_id.map(|id| id.to_string()),
            session_id: e.session_id.map(|id| id.to_string()),
            ip: e.ip,
            details: e.details,
        }
    }
}

/// One page of security events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SecurityEventPageResponse {
    events: Vec<SecurityEventResponse>,
    /// Pass as `after` for the next page (with the same filters); null on the last page.
    next: Option<String>,
}

/// Lists the recorded security events, newest first (by time, then by the order they were recorded),
/// a page at a time, filtered by kinds, account and time. Needs `security:read` system-wide.
#[utoipa::path(get, path = "/v1/admin/security-events", tag = "admin", operation_id = "list_security_events",
    security(("bearer" = []), ("session_cookie" = [])), params(SecurityEventParams),
    responses(
        (status = 200, description = "A page of security events.", body = SecurityEventPageResponse),
        (status = 400, description = "The query string is malformed or names an unknown parameter.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "No valid credential came with the request.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "The caller does not hold `security:read` system-wide.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid (unknown kind, malformed account id or \
            time, `until` before `since`, a cursor not from a previous page, a limit out of range); \
            `errors` names each.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "The caller's rate limit is spent; retry after `Retry-After`.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_security_events(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<SecurityEventPageResponse>, ApiError> {
    let params = SecurityEventParams::from_pairs(pairs)?;
    let limit = params
        .limit
        .as_deref()
        .map(|l| l.parse::<u32>().map_err(|_| AppError::invalid("/limit", "must be a number from 1 to 200")))
        .transpose()?;
    let filter = SecurityEventFilter {
        kinds: params.kind.iter().flat_map(|k| k.split(',')).collect(),
        user_id: params.user_id.as_deref(),
        since: params.since.as_deref(),
        until: params.until.as_deref(),
        after: params.after.as_deref(),
        limit,
    };
    let list = state.app.admin_list_security_events(&principal, &filter).await?;
    Ok(axum::Json(SecurityEventPageResponse {
        events: list.events.into_iter().map(Into::into).collect(),
        next: list.next,
    }))
}
