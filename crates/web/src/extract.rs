//! Extractors whose every rejection is a problem document.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::problem::{FieldError, Problem, ProblemType};

/// A JSON request body. Unlike axum's own, every failure is an RFC 9457 problem:
/// wrong media type 415, too large 413, unparseable 400, wrong shape 422 with a JSON pointer per field.
/// Target types are expected to use `#[serde(deny_unknown_fields)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(Problem::new(
                ProblemType::UNSUPPORTED_MEDIA_TYPE,
                "Send the body as application/json.",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ProblemType::PAYLOAD_TOO_LARGE, "The request body is larger than allowed.")
            } else {
                Problem::new(ProblemType::MALFORMED_REQUEST, "The request body could not be read.")
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// `application/json`, or any `application/*+json`, with optional parameters.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The [`Json`] extractor's parser: the body's bytes to a value, or the problem the extractor rejects
/// the request with. Public for fuzzing and tests; handlers use [`Json`].
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    parse(bytes)
}

/// Deserializes a body, classifying errors into "not JSON" (400) and "JSON of the wrong shape" (422).
/// Every request body is a JSON object: serde would otherwise read a struct from an array by
/// position (`["a@example.com", 3]` as `{email, age}`), a second spelling no schema describes.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Problem::validation(vec![FieldError {
                field: String::new(),
                message: "has the wrong type; expected an object".into(),
            }]),
            Err(_) => Problem::new(ProblemType::MALFORMED_REQUEST, "The request body is not valid JSON."),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().clone();
        let inner = error.into_inner();
        match inner.classify() {
            Category::Data => Problem::validation(vec![describe(&path, &inner.to_string())]),
            // serde_json reports some valid JSON of the wrong shape as a syntax error (an empty
            // object where an enum is expected: it wants the variant's name as a key), so only a
            // body that is not JSON at all is malformed (found by fuzz/fuzz_targets/json_body.rs).
            Category::Syntax | Category::Eof
                if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() =>
            {
                Problem::validation(vec![FieldError {
                    field: json_pointer(&path),
                    message: "is invalid".into(),
                }])
            }
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::new(ProblemType::MALFORMED_REQUEST, "The request body is not valid JSON.")
            }
        }
    })?;
    deserializer.end().map_err(|_| {
        Problem::new(
            ProblemType::MALFORMED_REQUEST,
            "The request body has trailing data after the JSON value.",
        )
    })?;
    Ok(value)
}

/// RFC 6901 pointer for a serde path.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&pointer_segment(key)),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// Longest key echoed in a field pointer: keys come from the client, and a reply must not repeat
/// whatever the body limit allows.
const MAX_KEY_CHARS: usize = 64;

/// One RFC 6901 reference token: the key cut to [`MAX_KEY_CHARS`], `~` and `/` escaped.
fn pointer_segment(key: &str) -> String {
    let key: String = key.chars().take(MAX_KEY_CHARS).collect();
    key.replace('~', "~0").replace('/', "~1")
}

/// The key named by serde's "unknown field `KEY`, expected ..." (the key may itself hold backticks).
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.rfind("`, expected").or_else(|| rest.rfind('`'))?;
    Some(&rest[..end])
}

/// A field error in our own words. serde's messages quote the submitted value ("invalid type: string
/// \"hunter2\""), which could echo a secret back, so only the kind of error and the names from our own
/// schema are kept.
fn describe(path: &serde_path_to_error::Path, serde_message: &str) -> FieldError {
    let pointer = json_pointer(path);
    if serde_message.starts_with("unknown field") {
        // serde_path_to_error usually ends the path at the unknown key already; inside tagged enums
        // and flattened structs it stops at the parent, and the key comes from the message.
        let name = unknown_field_name(serde_message).unwrap_or("");
        let at_key =
            matches!(path.iter().next_back(), Some(serde_path_to_error::Segment::Map { key }) if key == name);
        let field =
            if at_key || name.is_empty() { pointer } else { format!("{pointer}/{}", pointer_segment(name)) };
        FieldError { field, message: "is not a known field".into() }
    } else if serde_message.starts_with("missing field") {
        // The name is one of our own fields, never client text.
        let name = serde_message.split('`').nth(1).unwrap_or_default();
        FieldError { field: format!("{pointer}/{}", pointer_segment(name)), message: "is required".into() }
    } else if serde_message.starts_with("invalid type") {
        let expected = serde_message.rsplit(", expected ").next().filter(|e| *e != serde_message);
        let message = match expected.map(|e| json_type(strip_position(e))) {
            Some(Some(kind)) => format!("has the wrong type; expected {kind}"),
            _ => "has the wrong type".into(),
        };
        FieldError { field: pointer, message }
    } else if serde_message.starts_with("unknown variant") {
        let expected = serde_message.rsplit(", expected ").next().filter(|e| *e != serde_message);
        let message = match expected {
            Some(expected) => format!("is not one of the allowed values: {}", strip_position(expected)),
            None => "is not one of the allowed values".into(),
        };
        FieldError { field: pointer, message }
    } else if serde_message.starts_with("duplicate field") {
        FieldError { field: pointer, message: "appears more than once".into() }
    } else {
        FieldError { field: pointer, message: "is invalid".into() }
    }
}

/// serde's expectation ("u32", "struct LoginRequest", "a sequence") in JSON's words, so a reply
/// never names an internal Rust type.
fn json_type(expected: &str) -> Option<&'static str> {
    let e = expected.trim();
    Some(match e {
        "a string" | "a borrowed string" | "a character" | "a string or bytes" => "a string",
        "a boolean" => "a boolean",
        "a sequence" | "a tuple" => "an array",
        _ if e.starts_with("struct ") || e.starts_with("a map") || e.starts_with("map") => "an object",
        _ if e.starts_with("enum ") => "one of the allowed values",
        _ if matches!(e, "u8" | "u16" | "u32" | "u64" | "u128" | "usize") => "a non-negative integer",
        _ if matches!(e, "i8" | "i16" | "i32" | "i64" | "i128" | "isize") => "an integer",
        _ if matches!(e, "f32" | "f64") => "a number",
        _ => return None,
    })
}

/// serde_json appends " at line L column C" to data errors; the pointer already says where.
fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Body {
        name: String,
        count: u32,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields exist to be deserialized")]
    struct Item {
        kind: Kind,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        A,
        B,
    }

    #[test]
    fn an_empty_object_where_a_value_of_an_enum_belongs_is_a_field_error_not_malformed_json() {
        // Found by the json_body fuzz target: serde_json calls this a syntax error.
        let problem = parse::<Body>(br#"{"name":"n","count":1,"items":[{"kind":{}}]}"#).unwrap_err();
        assert_eq!(problem.ty, ProblemType::VALIDATION);
        assert_eq!(
            problem.errors,
            vec![FieldError { field: "/items/0/kind".into(), message: "is invalid".into() }]
        );
    }

    fn field_errors(body: &str) -> Vec<FieldError> {
        let problem = parse::<Body>(body.as_bytes()).unwrap_err();
        assert_eq!(problem.ty, ProblemType::VALIDATION);
        problem.errors
    }

    #[test]
    fn an_unknown_field_is_named_by_its_pointer() {
        let errors = field_errors(r#"{"name":"x","count":1,"admin":true}"#);
        assert_eq!(
            errors,
            vec![FieldError { field: "/admin".into(), message: "is not a known field".into() }]
        );
    }

    #[test]
    fn a_long_unknown_key_is_named_once_and_cut_short() {
        let body = format!(r#"{{"name":"x","count":1,"{}":1}}"#, "k".repeat(140));
        let errors = field_errors(&body);
        assert_eq!(errors[0].field, format!("/{}", "k".repeat(64)));
    }

    #[test]
    fn unknown_keys_with_slashes_and_tildes_are_escaped_as_rfc_6901_says() {
        let errors = field_errors(r#"{"name":"x","count":1,"a/b~c":1}"#);
        assert_eq!(errors[0].field, "/a~1b~0c");
        let errors = field_errors(r#"{"name":"x","count":1,"items":[{"kind":"a","x/y":0}]}"#);
        assert_eq!(errors[0].field, "/items/0/x~1y");
        let errors = field_errors(r#"{"name":"x","count":1,"a`b":1}"#);
        assert_eq!(errors[0].field, "/a`b");
    }

    #[test]
    fn a_missing_field_is_required() {
        let errors = field_errors(r#"{"name":"x"}"#);
        assert_eq!(errors, vec![FieldError { field: "/count".into(), message: "is required".into() }]);
    }

    #[test]
    fn a_wrong_type_never_echoes_the_submitted_value() {
        let errors = field_errors(r#"{"name":"x","count":"hunter2-secret"}"#);
        assert_eq!(errors[0].field, "/count");
        assert!(!errors[0].message.contains("hunter2"), "{}", errors[0].message);
        assert!(errors[0].message.starts_with("has the wrong type"));
    }

    #[test]
    fn type_errors_speak_json_not_rust() {
        let errors = field_errors(r#"{"name":"x","count":"7"}"#);
        assert_eq!(errors[0].message, "has the wrong type; expected a non-negative integer");
        let errors = field_errors(r#"{"name":"x","count":1,"items":{}}"#);
        assert_eq!(errors[0].message, "has the wrong type; expected an array");
        let errors = field_errors(r#"{"name":"x","count":1,"items":[7]}"#);
        assert_eq!(errors[0].message, "has the wrong type; expected an object");
        assert!(!errors[0].message.contains("struct"));
    }

    #[test]
    fn a_nested_bad_value_points_into_the_array() {
        let errors = field_errors(r#"{"name":"x","count":1,"items":[{"kind":"a"},{"kind":"zzz-secret"}]}"#);
        assert_eq!(errors[0].field, "/items/1/kind");
        assert!(!errors[0].message.contains("zzz-secret"));
    }

    #[test]
    fn broken_json_and_trailing_garbage_are_malformed_requests() {
        for body in [r#"{"name":"x","#, "", "nul", r#"{"name":"x","count":1} {}"#] {
            let problem = parse::<Body>(body.as_bytes()).unwrap_err();
            assert_eq!(problem.ty, ProblemType::MALFORMED_REQUEST, "{body:?}");
        }
    }

    proptest! {
        #[test]
        fn no_input_makes_the_parser_panic_or_echo_long_values(s in "\\PC{0,200}") {
            if let Err(problem) = parse::<Body>(s.as_bytes()) {
                for error in &problem.errors {
                    prop_assert!(error.message.len() < 200);
                }
            }
        }
    }
}

/// Query-string parameters. Unlike axum's own, a malformed or unknown parameter is a 400 problem.
/// Target types are expected to use `#[serde(deny_unknown_fields)]` and `Option<String>` fields,
/// leaving the meaning of each value to the use case, which names the field in its 422.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(_) => Err(Problem::new(
                ProblemType::MALFORMED_REQUEST,
                "The query string is malformed or names an unknown parameter.",
            )),
        }
    }
}

/// An `application/x-www-form-urlencoded` body (OAuth 2 endpoints such as introspection use this
/// media type), with problem-document rejections like [`Json`]'s: wrong media type 415, too large
/// 413, anything unparseable or an unknown field 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Form<T>(pub T);

impl<S, T> FromRequest<S> for Form<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !form {
            return Err(Problem::new(
                ProblemType::UNSUPPORTED_MEDIA_TYPE,
                "Send the body as application/x-www-form-urlencoded.",
            ));
        }
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(value)) => Ok(Form(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Problem::new(ProblemType::PAYLOAD_TOO_LARGE, "The request body is larger than allowed."))
            }
            Err(_) => Err(Problem::new(
                ProblemType::MALFORMED_REQUEST,
                "The form body is malformed, lacks a field or names an unknown one.",
            )),
        }
    }
}
