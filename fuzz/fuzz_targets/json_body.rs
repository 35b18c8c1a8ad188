//! Fuzzes the `Json` extractor's parser (`parse_json_body`) and its field errors, for a body shaped
//! like the API's: `deny_unknown_fields` structs, nested arrays, and plain, data-carrying and
//! internally tagged enums.
//!
//! Invariants: no panic; a problem is a 400 "not JSON" or a 422 with at least one field error; each
//! field error is short (~200 characters) and worded by us, never echoing a submitted value (the only
//! names it may quote are the variants of our own enums); the pointer of an unknown field names that
//! field; the rendered problem document is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_web::{FieldError, Problem, ProblemType, parse_json_body};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "fields exist to be deserialized")]
struct Body {
    email: String,
    display_name: Option<String>,
    age: u32,
    admin: bool,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    grants: Vec<Grant>,
    limits: Option<Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    Admin,
    Auditor,
    User,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "fields exist to be deserialized")]
struct Grant {
    permission: String,
    scope: Scope,
    expires_in: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code, reason = "fields exist to be deserialized")]
enum Scope {
    Global,
    Tenant { id: u64 },
    Users(Vec<u64>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code, reason = "fields exist to be deserialized")]
enum Limits {
    Fixed { per_minute: u16 },
    Burst { rate: f64, burst: u8 },
}

/// The names a message may quote: our enums' variants.
const VARIANTS: &[&str] = &["admin", "auditor", "user", "global", "tenant", "users", "fixed", "burst"];

/// Field errors are at most this long (pointer and message each).
const MAX_LEN: usize = 200;

/// The messages `describe` may produce, apart from the list of allowed values.
const MESSAGES: &[&str] = &[
    "is not a known field",
    "is required",
    "appears more than once",
    "is invalid",
    "has the wrong type",
    "has the wrong type; expected a string",
    "has the wrong type; expected a boolean",
    "has the wrong type; expected an array",
    "has the wrong type; expected an object",
    "has the wrong type; expected one of the allowed values",
    "has the wrong type; expected a non-negative integer",
    "has the wrong type; expected an integer",
    "has the wrong type; expected a number",
    "is not one of the allowed values",
];

fn check_field_error(error: &FieldError, body: Option<&serde_json::Value>) {
    assert!(error.field.chars().count() <= MAX_LEN, "field pointer too long: {error:?}");
    assert!(error.message.chars().count() <= MAX_LEN, "message too long: {error:?}");
    assert!(error.field.is_empty() || error.field.starts_with('/'), "not a JSON pointer: {error:?}");
    if let Some(list) = error.message.strip_prefix("is not one of the allowed values: ") {
        // serde's wording: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
        for (i, piece) in list.split('`').enumerate() {
            if i % 2 == 1 {
                assert!(VARIANTS.contains(&piece), "quotes {piece:?}, not one of our names: {error:?}");
            } else {
                assert!(piece.chars().all(|c| "onef r,".contains(c)), "echoes {piece:?}: {error:?}");
            }
        }
    } else {
        assert!(MESSAGES.contains(&error.message.as_str()), "unexpected wording: {error:?}");
    }
    // The pointer of an unknown field names it (RFC 6901): its parent is an object holding that key,
    // or, for a long key cut to 64 characters, a key that starts with it.
    if error.message == "is not a known field"
        && let Some(body) = body
        && let Some((parent, last)) = error.field.rsplit_once('/')
    {
        let key = last.replace("~1", "/").replace("~0", "~");
        let names = |o: &serde_json::Map<String, serde_json::Value>| {
            o.contains_key(&key) || (key.chars().count() == 64 && o.keys().any(|k| k.starts_with(&key)))
        };
        let object = body.pointer(parent).and_then(serde_json::Value::as_object);
        assert!(object.is_some_and(names), "pointer does not name the field: {error:?}");
    }
}

fn check_problem(problem: &Problem, data: &[u8]) {
    if problem.ty == ProblemType::VALIDATION {
        assert!(!problem.errors.is_empty(), "a validation problem without field errors");
        let body = serde_json::from_slice::<serde_json::Value>(data).ok();
        problem.errors.iter().for_each(|error| check_field_error(error, body.as_ref()));
    } else {
        assert_eq!(problem.ty, ProblemType::MALFORMED_REQUEST, "unexpected problem type");
        assert!(problem.errors.is_empty(), "field errors on a malformed request");
        assert!(
            serde_json::from_slice::<serde_json::Value>(data).is_err(),
            "valid JSON was called malformed"
        );
    }
    let document = problem.to_json(Some("fuzz-request"));
    let json: serde_json::Value = match serde_json::from_slice(&document) {
        Ok(json) => json,
        Err(error) => {
            panic!("problem document is not JSON ({error}): {:?}", String::from_utf8_lossy(&document))
        }
    };
    assert_eq!(json["status"], problem.ty.status.as_u16());
    assert_eq!(json["type"], problem.ty.uri());
}

fuzz_target!(|data: &[u8]| {
    match parse_json_body::<Body>(data) {
        Ok(_) => assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok(), "accepted invalid JSON"),
        Err(problem) => check_problem(&problem, data),
    }
});
