//! Fuzzes `RequestId::parse`, the check on the `X-Request-Id` a client sends: whatever it accepts is
//! exactly the input, 1–64 characters of `[A-Za-z0-9._-]`, and usable as a header value as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::RequestId;
use portcullis_domain::request_id::MAX_REQUEST_ID_LEN;

/// The rule from the type's documentation, written independently of its implementation.
fn well_formed(text: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&text.len())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fuzz_target!(|data: &[u8]| {
    // Header values arrive as bytes; only text can be a request id.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match RequestId::parse(text) {
        Ok(id) => {
            assert!(well_formed(text), "accepted a malformed id {text:?}");
            assert_eq!(id.as_str(), text, "an accepted id must be kept as sent");
            assert_eq!(id.to_string(), text);
            assert!(http::HeaderValue::from_str(id.as_str()).is_ok(), "an accepted id is not a header value");
        }
        Err(_) => assert!(!well_formed(text), "refused a well-formed id {text:?}"),
    }

    // Generated ids follow the same rule.
    if let Some(bytes) = data.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
        let id = RequestId::from_random_bytes(bytes);
        assert!(RequestId::parse(id.as_str()).is_ok(), "generated id {id:?} does not parse");
    }
});
