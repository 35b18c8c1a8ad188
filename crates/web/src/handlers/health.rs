//! Liveness and readiness probes for load balancers and orchestrators.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use portcullis_app::CheckState;
use serde::Serialize;
use serde_json::json;

use crate::AppState;
use crate::problem::{Problem, ProblemType};

/// The body of a passing probe.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    /// `ok` for liveness, `ready` for readiness.
    status: &'static str,
    /// Each readiness check and its state (`ok` or the reason it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    checks: Option<serde_json::Value>,
}

/// Liveness: the process answers. Touches no database, so a slow database never gets a healthy
/// node killed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The process is alive.", body = Status))
)]
pub(crate) async fn healthz() -> axum::Json<Status> {
    axum::Json(Status { status: "ok", checks: None })
}

/// Readiness: the database answers and its schema is current. 503 with the failing checks otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "Ready to serve traffic.", body = Status),
        (status = 503, description = "Not ready; `checks` says which check failed.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.app.readiness().await;
    let describe = |check: &CheckState| match check {
        CheckState::Ok => "ok".to_owned(),
        CheckState::Failed(reason) => reason.clone(),
    };
    let checks = json!({
        "database": describe(&readiness.database),
        "migrations": describe(&readiness.migrations),
        "keys": describe(&readiness.keys),
    });
    if readiness.is_ready() {
        axum::Json(Status { status: "ready", checks: Some(checks) }).into_response()
    } else {
        Problem::new(ProblemType::NOT_READY, "One or more readiness checks failed.")
            .with_extension("checks", checks)
            .into_response()
    }
}
