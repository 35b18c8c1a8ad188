//! `/v1/audit/events`: reading the audit trail (`audit:read`, system-wide or for one organization)
//! and applications writing their own events into it (a service account with `audit:write`). The
//! use cases check permissions and every field; these handlers read the request and shape the answer.

use axum::extract::State;
use axum::http::StatusCode;
use portcullis_app::AppError;
use portcullis_app::audit::{ApplicationEvent, AuditEventFilter, AuditEventView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::problem::{Problem, ProblemType};

/// Filters and the page of the audit-event list. Each parameter may appear once; an unknown one is
/// a 400.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditEventParams {
    /// Events by this actor (an account, service account or API key id), or done for this account.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    actor: Option<String>,
    /// Events whose action starts with this (`user.` for every account action).
    #[param(max_length = 64, pattern = "^[a-z0-9_.]+$")]
    action: Option<String>,
    /// Events about targets of this type (`user`, `session`, `api_key`, ...).
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    target_type: Option<String>,
    /// Events about this target id.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    target_id: Option<String>,
    /// Events inside this organization. Required for a caller whose `audit:read` is only in it.
    #[param(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    organization_id: Option<String>,
    /// `success`, `failure` or `denied`.
    #[param(pattern = "^(success|failure|denied)$")]
    outcome: Option<String>,
    /// At or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The `next` cursor of the previous page (a positive event sequence number).
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    after: Option<String>,
}

impl AuditEventParams {
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut params = AuditEventParams::default();
        for (name, value) in pairs {
            let (field, slot) = match name.as_str() {
                "actor" => ("/actor", &mut params.actor),
                "action" => ("/action", &mut params.action),
                "target_type" => ("/target_type", &mut params.target_type),
                "target_id" => ("/target_id", &mut params.target_id),
                "organization_id" => ("/organization_id", &mut params.organization_id),
                "outcome" => ("/outcome", &mut params.outcome),
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

/// Who acted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActorResponse {
    /// `user`, `service_account`, `api_key`, `system`, `application` or `anonymous`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The account, key or service that acted (none for the system or an anonymous caller).
    id: Option<String>,
    /// For a key or an application: the account it acted for.
    on_behalf_of: Option<String>,
}

/// What the action was done to.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TargetResponse {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// One event of the chain.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEventResponse {
    /// Its place in the chain (1, 2, 3, ... without gaps).
    seq: i64,
    id: String,
    #[schema(format = DateTime)]
    at: String,
    actor: ActorResponse,
    /// A stable dotted name such as `user.password.changed`.
    action: String,
    target: Option<TargetResponse>,
    organization_id: Option<String>,
    /// The client's address (stored sealed).
    ip: Option<String>,
    /// The client's user agent (stored sealed).
    user_agent: Option<String>,
    /// The request it came in on (`X-Request-Id`).
    request_id: Option<String>,
    /// `success`, `failure` or `denied`.
    outcome: &'static str,
    /// What else the action recorded (redacted: never a secret).
    #[schema(value_type = Object)]
    details: serde_json::Value,
    /// The previous event's hash (hex).
    prev_hash: String,
    /// SHA-256 of `prev_hash` and this event's canonical encoding (hex).
    hash: String,
}

impl From<AuditEventView> for AuditEventResponse {
    fn from(e: AuditEventView) -> Self {
        Self {
            seq: e.seq,
            id: e.id,
            at: e.at,
            actor: ActorResponse { kind: e.actor.kind, id: e.actor.id, on_behalf_of: e.actor.on_behalf_of },
            action: e.action,
            target: e.target.map(|t| TargetResponse { kind: t.kind, id: t.id }),
            organization_id: e.organization_id,
            ip: e.ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            outcome: e.outcome,
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// One page of audit events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEventPageResponse {
    events: Vec<AuditEventResponse>,
    /// Pass as `after` for the next page (with the same filters); null on the last page.
    next: Option<String>,
}

/// Lists audit events newest first, a page at a time, filtered by actor, action prefix, target,
/// organization, outcome and time. Needs `audit:read` system-wide, or in the organization named by
/// `organization_id`. The read is itself recorded in the trail.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", operation_id = "list_audit_events",
    security(("bearer" = []), ("session_cookie" = [])), params(AuditEventParams),
    responses(
        (status = 200, description = "A page of audit events.", body = AuditEventPageResponse),
        (status = 400, description = "The query string is malformed or names an unknown parameter.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "No valid credential came with the request.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "The caller does not hold `audit:read` for what it asked.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid; `errors` names each.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "The caller's rate limit is spent; retry after `Retry-After`.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_audit_events(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<axum::Json<AuditEventPageResponse>, ApiError> {
    let params = AuditEventParams::from_pairs(pairs)?;
    let limit = params
        .limit
        .as_deref()
        .map(|l| l.parse::<u32>().map_err(|_| AppError::invalid("/limit", "must be a number from 1 to 200")))
        .transpose()?;
    let filter = AuditEventFilter {
        actor: params.actor.as_deref(),
        action: params.action.as_deref(),
        target_type: params.target_type.as_deref(),
        target_id: params.target_id.as_deref(),
        organization_id: params.organization_id.as_deref(),
        outcome: params.outcome.as_deref(),
        since: params.since.as_deref(),
        until: params.until.as_deref(),
        after: params.after.as_deref(),
        limit,
    };
    let list = state.app.list_audit_events(&principal, &filter).await?;
    Ok(axum::Json(AuditEventPageResponse {
        events: list.events.into_iter().map(Into::into).collect(),
        next: list.next,
    }))
}

/// An application's event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationEventBody {
    /// A dotted name of two to eight lowercase words (`invoice.paid`).
    #[schema(max_length = 64, pattern = "^[a-z0-9_]+(\\.[a-z0-9_]+){1,7}$")]
    action: String,
    /// `success` (default), `failure` or `denied`.
    #[schema(pattern = "^(success|failure|denied)$")]
    outcome: Option<String>,
    /// 1 to 128 visible ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    target_type: Option<String>,
    /// 1 to 128 visible ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    target_id: Option<String>,
    /// The organization the event belongs to; `audit:write` must cover it.
    #[schema(pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    organization_id: Option<String>,
    /// The end user the application acted for.
    /// 1 to 128 visible ASCII characters.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    subject: Option<String>,
    /// Anything else worth keeping, as a JSON object of at most 4096 bytes. Values under secret
    /// names (password, token, secret, ...) and values shaped like credentials are redacted.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

/// A batch of an application's events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationEventsBody {
    /// 1 to 100 events, recorded in this order.
    #[schema(min_items = 1, max_items = 100)]
    events: Vec<ApplicationEventBody>,
}

/// Where an event landed in the chain.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecordedEventResponse {
    id: String,
    seq: i64,
    hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecordedEventsResponse {
    events: Vec<RecordedEventResponse>,
}

/// Records an application's own events in the same tamper-evident chain as Portcullis's. Needs a
/// service account holding `audit:write` (system-wide, or in each event's organization); the
/// events' actor is that service, acting for the `subject` it names. The whole batch is checked
/// before any event is written.
#[utoipa::path(post, path = "/v1/audit/events", tag = "audit", operation_id = "record_audit_events",
    security(("bearer" = []), ("session_cookie" = [])), request_body = ApplicationEventsBody,
    responses(
        (status = 201, description = "Recorded.", body = RecordedEventsResponse),
        (status = 401, description = "No valid credential came with the request.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "The caller is not a service account holding `audit:write` for \
            every event.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "An event is invalid; `errors` names each field by its index.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn record_audit_events(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Json(body): Json<ApplicationEventsBody>,
) -> Result<(StatusCode, axum::Json<RecordedEventsResponse>), ApiError> {
    let events = body
        .events
        .into_iter()
        .map(|e| ApplicationEvent {
            action: e.action,
            outcome: e.outcome,
            target_type: e.target_type,
            target_id: e.target_id,
            organization_id: e.organization_id,
            subject: e.subject,
            details: e.details,
        })
        .collect();
    let recorded = state.app.record_application_events(&principal, events).await?;
    let events =
        recorded.into_iter().map(|e| RecordedEventResponse { id: e.id, seq: e.seq, hash: e.hash }).collect();
    Ok((StatusCode::CREATED, axum::Json(RecordedEventsResponse { events })))
}
