//! `GET /metrics`: the Prometheus scrape, behind the access rules of `[metrics]`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::middleware::edge::ClientInfo;

/// The Prometheus text exposition format's media type.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric, for a scraper the `[metrics]` rules admit: an address outside `metrics.allow`
/// gets the same 404 as a path that does not exist; a missing or wrong `metrics.token`, 401.
/// Not in the OpenAPI document: it is an operator's endpoint, not part of the API.
pub(crate) async fn scrape(
    State(state): State<AppState>,
    axum::Extension(client): axum::Extension<ClientInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()));
    state.app.authorize_metrics_scrape(client.ip, bearer)?;
    let body = state.app.render_metrics().await;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(EXPOSITION))], body).into_response())
}
