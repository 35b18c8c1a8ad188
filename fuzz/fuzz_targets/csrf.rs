//! Fuzzes the two checks a state-changing cookie request passes before its handler runs: the origin
//! check (`same_origin`: `Origin`, `Sec-Fetch-Site`, the authority asked for and the trusted origins,
//! through `portcullis_web::fuzzing`) and the CSRF token (`X-CSRF-Token` against the session's HMAC,
//! through `portcullis_app::fuzzing`).
//!
//! Invariants: no panic. A request passes the origin check only if its `Origin`, when sent, is a
//! trusted origin or exactly (ASCII case aside) the scheme and authority it reached, and its
//! `Sec-Fetch-Site`, when sent, is `same-origin` or `none` (or the origin is trusted); a header that
//! is sent but is not text, or is sent twice, never passes; the opaque origin `null` never passes;
//! a genuine same-origin request always passes. A CSRF token
//! passes only if it is the session's token byte for byte: not another session's, not one made under
//! another secret, not any edit of it.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use portcullis_app::fuzzing::{csrf_token, csrf_token_matches};
use portcullis_domain::SessionId;
use portcullis_web::fuzzing::same_origin;

#[derive(Debug, Arbitrary)]
struct Input {
    origin: Option<Vec<u8>>,
    second_origin: Option<Vec<u8>>,
    fetch_site: Option<Vec<u8>>,
    authority: Option<String>,
    https: bool,
    trusted: Vec<String>,
    secret: [u8; 32],
    session: [u8; 16],
    other_session: [u8; 16],
    presented: String,
    edit_at: u8,
    edit_to: u8,
}

fuzz_target!(|input: Input| {
    check_origin(&input);
    check_token(&input);
});

fn check_origin(input: &Input) {
    let mut headers = HeaderMap::new();
    // Values hyper would refuse before we see them (NUL, CR, LF) cannot arrive; leave them out.
    let mut put = |name: HeaderName, bytes: &Option<Vec<u8>>| {
        bytes.as_deref().and_then(|b| HeaderValue::from_bytes(b).ok()).inspect(|v| {
            headers.insert(name, v.clone());
        })
    };
    let origin = put(header::ORIGIN, &input.origin);
    let site = put(HeaderName::from_static("sec-fetch-site"), &input.fetch_site);
    // A second Origin, as no browser sends: never passes, whatever the first says.
    if origin.is_some()
        && let Some(second) = input.second_origin.as_deref().and_then(|b| HeaderValue::from_bytes(b).ok())
    {
        let mut doubled = headers.clone();
        doubled.append(header::ORIGIN, second);
        assert!(
            !same_origin(&doubled, input.authority.as_deref(), input.https, &input.trusted),
            "two Origin headers passed: {doubled:?}"
        );
    }
    let authority = input.authority.as_deref();
    let passed = same_origin(&headers, authority, input.https, &input.trusted);

    let scheme = if input.https { "https" } else { "http" };
    fn text(v: &Option<HeaderValue>) -> Option<Option<&str>> {
        v.as_ref().map(|v| v.to_str().ok())
    }
    let (origin_text, site_text) = (text(&origin), text(&site));
    if origin_text == Some(None) || site_text == Some(None) {
        assert!(!passed, "a header that is not text passed: {headers:?}");
        return;
    }
    let (origin_text, site_text) = (origin_text.flatten(), site_text.flatten());
    let trusted = origin_text.is_some_and(|o| input.trusted.iter().any(|t| t == o));
    if passed {
        if let Some(origin) = origin_text {
            let ours = authority.is_some_and(|a| origin.eq_ignore_ascii_case(&format!("{scheme}://{a}")));
            assert!(origin != "null", "an opaque origin passed: {headers:?}");
            assert!(trusted || ours, "a foreign origin passed: {headers:?} {authority:?}");
        }
        if let Some(site) = site_text {
            assert!(trusted || matches!(site, "same-origin" | "none"), "a cross-site request passed: {headers:?}");
        }
    }

    // The genuine article: a browser's same-origin request to the authority it reached (browsers
    // serialize origins in ASCII, international names as punycode).
    if let Some(authority) = authority
        && authority.bytes().all(|b| b.is_ascii_graphic())
        && let Ok(ours) = HeaderValue::from_str(&format!("{scheme}://{authority}"))
    {
        let mut genuine = HeaderMap::new();
        genuine.insert(header::ORIGIN, ours);
        genuine.insert(HeaderName::from_static("sec-fetch-site"), HeaderValue::from_static("same-origin"));
        assert!(
            same_origin(&genuine, Some(authority), input.https, &input.trusted),
            "a same-origin request was refused: {genuine:?}"
        );
    }
}

fn check_token(input: &Input) {
    let session = SessionId::from_random_bytes(input.session);
    let token = csrf_token(&input.secret, session).expect("a 32-byte secret derives a key");
    let matches = |session, presented: &str| csrf_token_matches(&input.secret, session, presented).unwrap();
    assert!(matches(session, &token), "the session's own token was refused");
    assert_eq!(matches(session, &input.presented), input.presented == token, "{:?}", input.presented);

    let other = SessionId::from_random_bytes(input.other_session);
    // Compared as ids: the random bytes become a UUIDv4, whose version and variant bits are fixed.
    if other != session {
        assert!(!matches(other, &token), "another session's token passed");
    }
    let mut other_secret = input.secret;
    other_secret[0] ^= 1;
    assert!(!csrf_token_matches(&other_secret, session, &token).unwrap(), "a token under another secret passed");

    let mut edited = token.clone().into_bytes();
    let at = usize::from(input.edit_at) % (edited.len() + 1);
    if at == edited.len() {
        edited.push(input.edit_to);
    } else if edited[at] != input.edit_to {
        edited[at] = input.edit_to;
    } else {
        edited.remove(at);
    }
    if let Ok(edited) = String::from_utf8(edited) {
        assert!(!matches(session, &edited), "an edited token passed: {edited:?}");
    }
}
