//! `/.well-known/*`: public discovery documents.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

/// The public keys that verify access tokens (RFC 7517). Every key a live token may carry is listed.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", operation_id = "jwks", security(()),
    responses((status = 200, description = "The JSON Web Key Set.", content_type = "application/json")))]
pub(crate) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    // Public and cacheable for a short while; verifiers refetch on an unknown kid.
    ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(state.app.jwks()))
}
