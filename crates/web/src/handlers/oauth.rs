//! OAuth 2 endpoints. Today: token introspection (RFC 7662) for the applications behind Portcullis,
//! which is how they verify the access tokens and API keys they receive.

use axum::extract::State;
use portcullis_app::Introspection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Form;

/// RFC 7662 section 2.1.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntrospectionForm {
    /// The access token or API key to describe.
    #[schema(max_length = 4096)]
    token: String,
    /// `access_token` or `api_key`; a hint only (every token is recognised by its shape).
    token_type_hint: Option<String>,
}

/// The token stays out of any `{:?}`.
impl std::fmt::Debug for IntrospectionForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionForm")
            .field("token_type_hint", &self.token_type_hint)
            .finish_non_exhaustive()
    }
}

/// RFC 7662 section 2.2: `active` only, unless the token is active.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IntrospectionResponse {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// Space-separated scopes (API keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    /// The API key's public id.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// `Bearer` (an access token) or `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

impl From<Introspection> for IntrospectionResponse {
    fn from(i: Introspection) -> Self {
        Self {
            active: i.active,
            sub: i.sub,
            scope: i.scope,
            exp: i.exp,
            iat: i.iat,
            client_id: i.client_id,
            token_type: i.token_type,
            iss: i.iss,
            aud: i.aud,
        }
    }
}

/// Describes a token for a service account holding `tokens:introspect` in its organization,
/// authenticated with one of its API keys. A revoked, expired, malformed or unknown token, or one
/// whose owner is disabled, is only `{"active": false}`.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "auth", operation_id = "introspect",
    security(("bearer" = []), ("api_key" = [])),
    request_body(content = IntrospectionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "What the token is.", body = IntrospectionResponse)))]
pub(crate) async fn introspect(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Form(form): Form<IntrospectionForm>,
) -> Result<axum::Json<IntrospectionResponse>, ApiError> {
    let _ = form.token_type_hint;
    Ok(axum::Json(state.app.introspect(&principal, &form.token).await?.into()))
}
