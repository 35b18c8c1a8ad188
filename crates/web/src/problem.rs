//! RFC 9457 problem documents: the one shape of every error Portcullis sends.
//!
//! Handlers and extractors return a [`Problem`] as a response *extension*; the edge middleware renders
//! it (adding the request id), and turns any other error response (a 404 from the router, a 413 from
//! the body limit, a panic) into a problem document too. So there is exactly one serializer, and no
//! error leaves without the request id that ties it to the logs.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A stable kind of problem: its `type` URI never changes once published, so clients can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    /// The last segment of the type URI (`urn:portcullis:problem:<slug>`).
    pub slug: &'static str,
    /// A short human summary that does not change between occurrences.
    pub title: &'static str,
    /// The HTTP status this kind of problem is sent with.
    pub status: StatusCode,
}

macro_rules! problem_types {
    ($($name:ident = ($slug:literal, $status:ident, $title:literal);)*) => {
        impl ProblemType {
            $(pub const $name: ProblemType =
                ProblemType { slug: $slug, title: $title, status: StatusCode::$status };)*

            /// Every problem type, for documentation and tests.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$name),*];
        }
    };
}

problem_types! {
    MALFORMED_REQUEST = ("malformed-request", BAD_REQUEST, "The request could not be parsed");
    HTTPS_REQUIRED = ("https-required", BAD_REQUEST, "https is required");
    VALIDATION = ("validation", UNPROCESSABLE_ENTITY, "The request has invalid fields");
    UNAUTHORIZED = ("unauthorized", UNAUTHORIZED, "Authentication is required");
    FORBIDDEN = ("forbidden", FORBIDDEN, "This action is not allowed");
    NOT_FOUND = ("not-found", NOT_FOUND, "Not found");
    METHOD_NOT_ALLOWED = ("method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed");
    NOT_ACCEPTABLE = ("not-acceptable", NOT_ACCEPTABLE, "Not acceptable");
    REQUEST_TIMEOUT = ("request-timeout", REQUEST_TIMEOUT, "The request took too long");
    CONFLICT = ("conflict", CONFLICT, "Conflict");
    ROLE_IN_USE = ("role-in-use", CONFLICT, "The role is held by members");
    PAYLOAD_TOO_LARGE = ("payload-too-large", PAYLOAD_TOO_LARGE, "The request body is too large");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type");
    TOO_MANY_REQUESTS = ("too-many-requests", TOO_MANY_REQUESTS, "Too many requests");
    LOGIN_LOCKED = ("login-locked", TOO_MANY_REQUESTS, "Login temporarily locked");
    HEADERS_TOO_LARGE = ("headers-too-large", REQUEST_HEADER_FIELDS_TOO_LARGE, "The request headers are too large");
    INTERNAL = ("internal", INTERNAL_SERVER_ERROR, "Internal server error");
    NOT_IMPLEMENTED = ("not-implemented", NOT_IMPLEMENTED, "Not implemented");
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "Service unavailable");
    NOT_READY = ("not-ready", SERVICE_UNAVAILABLE, "Not ready");
    INVALID_CREDENTIALS = ("invalid-credentials", UNAUTHORIZED, "Invalid email or password");
    INVALID_TOKEN = ("invalid-token", BAD_REQUEST, "The token is invalid or expired");
    SIGNUP_NOT_ALLOWED = ("signup-not-allowed", FORBIDDEN, "Signup is not open");
    CSRF_REJECTED = ("csrf-rejected", FORBIDDEN, "Cross-site request refused");
    IP_DENIED = ("ip-denied", FORBIDDEN, "Address not allowed");
    INVALID_SECOND_FACTOR = ("invalid-second-factor", UNAUTHORIZED, "The second factor is wrong");
    REAUTHENTICATION_REQUIRED = ("reauthentication-required", UNAUTHORIZED, "Recent authentication required");
    MFA_ENROLLMENT_REQUIRED = ("mfa-enrollment-required", FORBIDDEN, "A second factor must be enrolled first");
}

impl ProblemType {
    /// The `type` member: a URN, because it must stay stable and Portcullis has no fixed host to
    /// serve documentation pages from (RFC 9457 section 3.1.1 allows non-resolvable URIs).
    pub fn uri(&self) -> String {
        format!("urn:portcullis:problem:{}", self.slug)
    }

    /// The generic problem type for an error status that carries no problem of its own.
    pub fn for_status(status: StatusCode) -> ProblemType {
        ProblemType::ALL.iter().copied().find(|t| t.status == status && t.slug != "not-ready").unwrap_or(
            if status.is_server_error() { ProblemType::INTERNAL } else { ProblemType::MALFORMED_REQUEST },
        )
    }
}

/// One invalid field: where it is (an RFC 6901 JSON pointer into the request body) and what is wrong,
/// in words that never repeat the submitted value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer to the field, `""` for the whole document.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// One occurrence of a problem.
#[derive(Debug, Clone)]
pub struct Problem {
    pub ty: ProblemType,
    /// An explanation for this occurrence, safe for the client: no internal detail, no echo of secrets.
    pub detail: Cow<'static, str>,
    /// Field-level errors (validation problems only).
    pub errors: Vec<FieldError>,
    /// Extra members (RFC 9457 section 3.2), such as readiness checks.
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with a detail message.
    pub fn new(ty: ProblemType, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { ty, detail: detail.into(), errors: Vec::new(), extensions: serde_json::Map::new() }
    }

    /// A validation problem listing every bad field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self { errors, ..Self::new(ProblemType::VALIDATION, "One or more fields are invalid.") }
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// The document body, with the request id that ties it to the logs.
    pub fn to_json(&self, request_id: Option<&str>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Document<'a> {
            #[serde(rename = "type")]
            ty: String,
            title: &'static str,
            status: u16,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_id: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            errors: &'a [FieldError],
            #[serde(flatten)]
            extensions: &'a serde_json::Map<String, serde_json::Value>,
        }
        let document = Document {
            ty: self.ty.uri(),
            title: self.ty.title,
            status: self.ty.status.as_u16(),
            detail: &self.detail,
            request_id,
            errors: &self.errors,
            extensions: &self.extensions,
        };
        // Serializing plain strings and numbers cannot fail; fall back to a fixed document anyway.
        serde_json::to_vec(&document).unwrap_or_else(|_| {
            br#"{"type":"urn:portcullis:problem:internal","title":"Internal server error","status":500}"#
                .to_vec()
        })
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = self.ty.status.into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        // Rendered by the edge middleware, which knows the request id.
        response.extensions_mut().insert(self);
        response
    }
}

/// The problem document as described in the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(title = "Problem")]
pub struct ProblemDocument {
    /// Stable URI naming the kind of problem, `urn:portcullis:problem:<slug>`.
    #[serde(rename = "type")]
    pub ty: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request id also sent in the `X-Request-Id` header.
    pub request_id: Option<String>,
    /// Field-level errors for validation problems.
    pub errors: Option<Vec<FieldError>>,
    /// For `role-in-use`: the ids of (up to 100 of) the members holding the role.
    pub holders: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_has_a_unique_slug_and_an_error_status() {
        let mut slugs: Vec<_> = ProblemType::ALL.iter().map(|t| t.slug).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemType::ALL.len());
        assert!(ProblemType::ALL.iter().all(|t| t.status.is_client_error() || t.status.is_server_error()));
    }

    #[test]
    fn a_rendered_problem_has_the_rfc_9457_members_and_the_request_id() {
        let body = Problem::new(ProblemType::NOT_FOUND, "No such thing.").to_json(Some("abc"));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:portcullis:problem:not-found");
        assert_eq!(json["title"], "Not found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["detail"], "No such thing.");
        assert_eq!(json["request_id"], "abc");
        assert!(json.get("errors").is_none());
    }

    /// From the problem_json fuzz target (crash-fba3668b): an extension object keyed by serde_json's
    /// raw-value token. The writer emits it as the plain JSON it is; only a serde_json `Value` read
    /// (with the `raw_value` feature) misreads it, which is why application audit details refuse the key.
    #[test]
    fn a_member_named_like_serde_jsons_raw_value_token_is_written_as_plain_json() {
        let inner: serde_json::Map<_, _> =
            [("$serde_json::private::RawValue".to_owned(), serde_json::json!(""))].into_iter().collect();
        let body = Problem::new(ProblemType::MALFORMED_REQUEST, "")
            .with_extension("\u{2})", serde_json::Value::Object(inner))
            .to_json(None);
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).expect("well-formed JSON");
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with(r#","\u0002)":{"$serde_json::private::RawValue":""}}"#), "{text}");
    }

    #[test]
    fn an_unknown_error_status_falls_back_to_a_generic_type_of_the_same_class() {
        assert_eq!(ProblemType::for_status(StatusCode::IM_A_TEAPOT), ProblemType::MALFORMED_REQUEST);
        assert_eq!(ProblemType::for_status(StatusCode::BAD_GATEWAY), ProblemType::INTERNAL);
        assert_eq!(ProblemType::for_status(StatusCode::SERVICE_UNAVAILABLE), ProblemType::UNAVAILABLE);
    }
}
