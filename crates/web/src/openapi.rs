//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::problem::{FieldError, ProblemDocument};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis",
        description = "Identity, access and audit server. Every error is an RFC 9457 problem document \
                       (application/problem+json) with a stable `type` URI and the request id.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(openapi_json),
    components(schemas(ProblemDocument, FieldError)),
    modifiers(&ProblemResponses, &SecuritySchemes),
    tags((name = "health", description = "Probes for load balancers"),
         (name = "meta", description = "Describing the API itself"),
         (name = "auth", description = "Signing up, logging in, tokens and sessions"),
         (name = "me", description = "The caller's own account"),
         (name = "admin", description = "Administration"),
         (name = "audit", description = "The tamper-evident audit trail")),
)]
pub(crate) struct ApiDoc;

/// The ways to authenticate: an access token (RFC 6750), an API key (`Authorization: Bearer pcs_…` or
/// `X-API-Key: pcs_…`), or the browser session cookie, which also needs the `X-CSRF-Token` header on
/// state-changing requests. Every operation that takes a bearer credential takes an API key too.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "Browser session; state-changing requests also need the X-CSRF-Token header.",
            ))),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key (pcs_...); it may also be sent as Authorization: Bearer.",
            ))),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch]
                .into_iter()
                .flatten()
            {
                let Some(security) = operation.security.as_mut() else { continue };
                let names = |r: &utoipa::openapi::security::SecurityRequirement| {
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                };
                let bearer =
                    security.iter().any(|r| names(r).is_some_and(|n| n.iter().any(|k| k == "bearer")));
                let listed =
                    security.iter().any(|r| names(r).is_some_and(|n| n.iter().any(|k| k == "api_key")));
                if bearer && !listed {
                    security.push(utoipa::openapi::security::SecurityRequirement::new(
                        "api_key",
                        Vec::<String>::new(),
                    ));
                }
            }
        }
    }
}

/// Adds a `default` problem response to every operation: any route can answer 400, 404, 405, 408, 413,
/// 415, 429, 431, 500 or 503 through the shared middleware, and the document must say so.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut Document) {
        let response = ResponseBuilder::new()
            .description("An RFC 9457 problem document.")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ProblemDocument"))))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch]
                .into_iter()
                .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(|| RefOr::T(response.clone()));
            }
        }
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"))
)]
pub(crate) async fn openapi_json(State(document): State<Rendered>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document.0)
}

/// The document serialized once at start.
#[derive(Debug, Clone)]
pub(crate) struct Rendered(pub(crate) Bytes);

/// The finished document: the annotated routes merged with the base.
pub(crate) fn document(routes: Document) -> Document {
    let mut document = ApiDoc::openapi();
    document.merge(routes);
    ProblemResponses.modify(&mut document);
    SecuritySchemes.modify(&mut document);
    document
}
