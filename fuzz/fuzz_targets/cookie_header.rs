//! Fuzzes how a request names its caller before any credential is checked: `bearer_token` (the
//! `Authorization` value) and `session_cookie` (every `Cookie` header), reached through
//! `portcullis_web::fuzzing`.
//!
//! The input is the `Authorization` value as sent, and also, split at `\n`, a list of `Cookie` header
//! values (those `HeaderValue` accepts; hyper refuses the rest before we see them).
//!
//! Invariants: no panic. A bearer token is returned exactly when the value is `Bearer` in any case, one
//! space and one or more token68 characters (RFC 9110 section 11.6.2; `=` is allowed anywhere, not only
//! at the end), and it is that tail of the value: never empty, never a space. A session cookie value
//! is returned exactly when one `__Host-portcullis_session` pair is sent across all the headers
//! that are text (two mean a planted cookie), and it is that pair's trimmed value: never holding `;`
//! (so never another cookie) or surrounding whitespace.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use portcullis_web::SESSION_COOKIE;
use portcullis_web::fuzzing::{bearer_token, session_cookie};

fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

/// The rule, written from the RFC rather than from the implementation.
fn expected_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    let token_ok = !rest.is_empty() && rest.iter().copied().all(is_token68);
    (scheme.eq_ignore_ascii_case(b"bearer ") && token_ok).then_some(rest)
}

/// Every `name=value` pair of the `Cookie` headers that are text (RFC 6265 section 5.4: pairs split at
/// `;`, name and value trimmed), and the values of those named `name`.
fn expected_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((n, v)) = pair.split_once('=')
                && n.trim() == name
            {
                values.push(v.trim().to_owned());
            }
        }
    }
    if values.len() == 1 { values.pop() } else { None }
}

fuzz_target!(|data: &[u8]| {
    let token = bearer_token(data);
    assert_eq!(
        token.map(str::as_bytes),
        expected_bearer(data),
        "bearer_token({:?})",
        String::from_utf8_lossy(data)
    );
    if let Some(token) = token {
        assert!(!token.is_empty() && !token.contains(' '), "bad token {token:?}");
        assert!(token.bytes().all(is_token68), "non-token68 character in {token:?}");
        assert!(data.ends_with(token.as_bytes()), "the token is not the tail of the value");
    }

    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::COOKIE, value);
        }
    }
    let cookie = session_cookie(&headers);
    assert_eq!(cookie, expected_cookie(&headers, SESSION_COOKIE), "session_cookie({headers:?})");
    if let Some(value) = cookie {
        assert!(!value.contains(';'), "the cookie value {value:?} holds a ;");
        assert_eq!(value, value.trim(), "the cookie value {value:?} is not trimmed");
        let sent =
            headers.get_all(header::COOKIE).iter().any(|h| h.to_str().is_ok_and(|h| h.contains(&value)));
        assert!(sent, "the cookie value {value:?} was not sent");
    }
});
