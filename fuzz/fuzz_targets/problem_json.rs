//! Fuzzes `Problem::to_json`, the one serializer of RFC 9457 problem documents, with arbitrary detail,
//! field-error and request-id strings and extension values: the output is always a JSON object that
//! carries every member back exactly as given.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_web::{FieldError, Problem, ProblemType};
use serde_json::{Value, json};

/// The members `to_json` writes itself. Extensions are named by our code, never by a client, and one
/// of these names would be written twice, so they are left out here.
const MEMBERS: &[&str] = &["type", "title", "status", "detail", "request_id", "errors"];

/// serde_json (built here with `raw_value`, which a dependency turns on) reads an object whose first
/// key is this token as an embedded raw value, so a `Value` read of a correct document holding it
/// fails. The writer is not at fault (crash-fba3668b, and the regression test
/// `a_member_named_like_serde_jsons_raw_value_token_is_written_as_plain_json` in crates/web); the
/// oracle checks such documents with `IgnoredAny` and leaves the token out of the members it compares.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

#[derive(Debug, Arbitrary)]
enum Extension {
    Null,
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
    List(Vec<String>),
    Object(Vec<(String, String)>),
}

impl Extension {
    fn to_value(&self) -> Value {
        match self {
            Extension::Null => Value::Null,
            Extension::Bool(b) => json!(b),
            Extension::Integer(i) => json!(i),
            Extension::Float(f) => json!(f),
            Extension::Text(s) => json!(s),
            Extension::List(items) => json!(items),
            Extension::Object(pairs) => {
                Value::Object(
                    pairs.iter().filter(|(k, _)| k != RAW_VALUE_TOKEN).map(|(k, v)| (k.clone(), json!(v))).collect(),
                )
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    ty: u8,
    detail: String,
    errors: Vec<(String, String)>,
    request_id: Option<String>,
    extensions: Vec<(String, Extension)>,
}

fuzz_target!(|input: Input| {
    let ty = ProblemType::ALL[usize::from(input.ty) % ProblemType::ALL.len()];
    let mut problem = Problem::new(ty, input.detail.clone());
    problem.errors = input
        .errors
        .iter()
        .map(|(field, message)| FieldError { field: field.clone(), message: message.clone() })
        .collect();
    for (name, value) in &input.extensions {
        if !MEMBERS.contains(&name.as_str()) && name != RAW_VALUE_TOKEN {
            problem = problem.with_extension(name, value.to_value());
        }
    }

    let document = problem.to_json(input.request_id.as_deref());

    assert!(document.iter().all(|b| *b >= 0x20), "unescaped control character in {document:?}");
    // Well-formed JSON, read without serde_json's raw-value interpretation.
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&document) {
        panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(&document));
    }
    let json: Value = match serde_json::from_slice(&document) {
        Ok(json) => json,
        Err(error) => panic!("not JSON ({error}): {:?}", String::from_utf8_lossy(&document)),
    };
    let Some(members) = json.as_object() else { panic!("not a JSON object: {json}") };
    assert_eq!(json["type"], ty.uri());
    assert_eq!(json["title"], ty.title);
    assert_eq!(json["status"], ty.status.as_u16());
    assert_eq!(json["detail"], input.detail.as_str());
    assert_eq!(members.get("request_id").and_then(Value::as_str), input.request_id.as_deref());
    if problem.errors.is_empty() {
        assert!(!members.contains_key("errors"), "an empty error list is written");
    } else {
        let written: Vec<(&str, &str)> = json["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        (e["field"].as_str().unwrap_or("<none>"), e["message"].as_str().unwrap_or("<none>"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let given: Vec<(&str, &str)> = input.errors.iter().map(|(f, m)| (f.as_str(), m.as_str())).collect();
        assert_eq!(written, given, "field errors changed on the way out");
    }
    for (name, value) in &problem.extensions {
        // serde_json's default float parsing may be one unit in the last place off, so the expected
        // value takes the same trip through text.
        let expected: Option<Value> =
            serde_json::to_vec(value).ok().and_then(|t| serde_json::from_slice(&t).ok());
        assert_eq!(members.get(name), expected.as_ref(), "extension {name:?} changed on the way out");
    }
    let expected = 4
        + usize::from(input.request_id.is_some())
        + usize::from(!problem.errors.is_empty())
        + problem.extensions.len();
    assert_eq!(members.len(), expected, "unexpected members in {json}");
});
