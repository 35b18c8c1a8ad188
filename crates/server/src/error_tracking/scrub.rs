//! What leaves for Sentry, made safe: the `before_send` and `before_breadcrumb` hooks.
//!
//! Error events are read by people outside the operator's trust boundary (a SaaS vendor, a wider
//! team), so anything that could authenticate as a user or as the server is removed before an event
//! is queued (ASVS 16.2.5, 14.2.4): request cookies, query strings and bodies; credential headers and
//! any header named like a secret; the value of any field named like a secret, at any depth; and
//! text that looks like a credential wherever it appears (bearer and basic credentials, JWTs,
//! Portcullis API keys, long random tokens, URL passwords, `name=value` pairs with a secret name).
//! Personal data goes too: `send_default_pii` is off, no client address is ever sent, and email
//! addresses in text are masked.
//!
//! The patterns err toward masking: a masked error code costs a look at the log line (the event's
//! request id finds it); a leaked token costs an account.

use std::sync::LazyLock;

use regex::{Captures, Regex};
use sentry::protocol::{Breadcrumb, Context, Event, Map, Request, Stacktrace, User, Value};

/// What a removed value is replaced with (Sentry's own spelling, so its UI shows it as scrubbed).
pub const FILTERED: &str = "[Filtered]";

/// Header names that always carry credentials or session state.
const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-csrf-token", "x-api-key"];

/// Headers that carry the client's address: never sent (no user IP).
const ADDRESS_HEADERS: &[&str] = &["forwarded", "x-forwarded-for", "x-real-ip", "true-client-ip"];

/// Tags whose values are ours and already safe: the request id is the correlation key and is
/// validated to `[A-Za-z0-9._-]{1,64}` at the edge, so it must reach Sentry unmasked.
const TRUSTED_TAGS: &[&str] = &["request_id"];

/// Parts of a name that mark its value as a secret wherever they appear in it.
const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "session",
    "csrf",
    "xsrf",
    "dsn",
    "credential",
    "recovery",
    "private",
    "bearer",
];

/// Words too short or too common to match inside other words (`key` in `monkey`, `otp` in
/// `footprint`): they mark a name only as a whole word of it (`api_key`, `keyId`, `otp-code`).
const SECRET_WORDS: &[&str] = &["key", "keys", "code", "codes", "otp", "totp", "hotp", "pwd", "pin", "pass"];

/// Whether a field, header, tag or parameter name marks its value as a secret.
pub fn is_secret_name(name: &str) -> bool {
    let compact: String =
        name.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    SECRET_PARTS.iter().any(|part| compact.contains(part))
        || words(name).any(|w| SECRET_WORDS.contains(&w.as_str()))
}

/// The words of a name: split at anything not a letter or digit and at lower-to-upper case changes.
fn words(name: &str) -> impl Iterator<Item = String> + '_ {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            words.push(std::mem::take(&mut current));
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c.to_ascii_lowercase());
    }
    words.push(current);
    words.into_iter().filter(|w| !w.is_empty())
}

/// A credential after an HTTP authentication scheme (RFC 9110 section 11.4; token68 characters).
static AUTH_SCHEME: LazyLock<Regex> =
    LazyLock::new(|| compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/-]{8,}=*"));
/// A JWS or JWE in compact form: its header is base64url JSON, so it starts `eyJ` (RFC 7515, 7516).
static JWT: LazyLock<Regex> = LazyLock::new(|| compile(r"eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2,4}"));
/// A Portcullis API key (`pcs_<id>_<secret><checksum>`, see portcullis_domain::api_key), or any text
/// that starts like one.
static API_KEY: LazyLock<Regex> =
    LazyLock::new(|| compile(&format!(r"{}[A-Za-z0-9_]+", regex::escape(portcullis_domain::API_KEY_PREFIX))));
/// The user information of a URL (`scheme://user:password@`): a DSN's key or a database password.
static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@"));
/// An email address: personal data, not needed to fix a bug (the request id finds the log line).
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"));
/// `name=value` (query strings, form bodies, key-value logs) and `name: value` (headers, `Debug`
/// output of structs), up to the value; the colon form needs a space after the colon so
/// `session::refresh` (a module path) is left alone.
static NAME_BEFORE_VALUE: LazyLock<Regex> =
    LazyLock::new(|| compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:\s*=\s*|:\s+)"));
/// `"name":`, a JSON member up to its value, also as escaped JSON inside a JSON string (`\"name\":`).
static JSON_NAME_BEFORE_VALUE: LazyLock<Regex> =
    LazyLock::new(|| compile(r#"\\?"(?P<name>[A-Za-z0-9_.-]+)\\?"\s*:\s*"#));
/// A long run of token characters: the bearer secrets Portcullis mints are 43 base64url characters
/// (refresh tokens, session cookies, emailed link tokens, the setup token), its KEKs 32 bytes in
/// base64. Masked only when it mixes upper case, lower case and digits, as random text does and hex
/// digests, UUIDs, request ids and identifiers do not.
static LONG_TOKEN: LazyLock<Regex> = LazyLock::new(|| compile(r"[A-Za-z0-9_+/-]{32,}={0,2}"));

#[allow(clippy::expect_used, reason = "the patterns are constants, each compiled by the tests below")]
fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a constant pattern compiles")
}

fn looks_random(token: &str) -> bool {
    token.bytes().any(|b| b.is_ascii_uppercase())
        && token.bytes().any(|b| b.is_ascii_lowercase())
        && token.bytes().any(|b| b.is_ascii_digit())
}

/// Free text with every credential-looking part replaced by [`FILTERED`].
pub fn mask_text(text: &str) -> String {
    let text = AUTH_SCHEME.replace_all(text, |c: &Captures<'_>| format!("{}{}{FILTERED}", &c[1], &c[2]));
    let text = JWT.replace_all(&text, FILTERED);
    let text = API_KEY.replace_all(&text, FILTERED);
    let text = URL_USERINFO.replace_all(&text, |c: &Captures<'_>| format!("{}{FILTERED}@", &c[1]));
    let text = EMAIL.replace_all(&text, FILTERED);
    let text = mask_named_values(&text, &JSON_NAME_BEFORE_VALUE);
    let text = mask_named_values(&text, &NAME_BEFORE_VALUE);
    let text = LONG_TOKEN.replace_all(&text, |c: &Captures<'_>| {
        if looks_random(&c[0]) { FILTERED.to_owned() } else { c[0].to_owned() }
    });
    text.into_owned()
}

/// The length of the value at the start of `rest`: a quoted string (plain, single or as escaped JSON)
/// with its quotes, else everything up to a character that ends a value in a query string, a header
/// list or a `Debug` rendering.
fn value_len(rest: &str) -> usize {
    let closing = |quote: &str| {
        let body = &rest[quote.len()..];
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            if quote == "\\\"" {
                if body[i..].starts_with(quote) {
                    return quote.len() + i + quote.len();
                }
            } else if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if body[i..].starts_with(quote) {
                return quote.len() + i + quote.len();
            }
        }
        // Unterminated: everything that follows may be the secret.
        rest.len()
    };
    if rest.starts_with("\\\"") {
        closing("\\\"")
    } else if rest.starts_with('"') {
        closing("\"")
    } else if rest.starts_with('\'') {
        closing("'")
    } else {
        rest.find(|c: char| c.is_whitespace() || "&;,)'\"]}".contains(c)).unwrap_or(rest.len())
    }
}

/// Masks the value after every secret-named `name` that `pattern` finds (ending where the value
/// starts). Matches are found on names alone, not name and value, so a value cannot hide the next
/// name from the search (`a: password=x` is two names, not one value).
fn mask_named_values(text: &str, pattern: &Regex) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for found in pattern.captures_iter(text) {
        let (Some(whole), Some(name)) = (found.get(0), found.name("name")) else { continue };
        if whole.start() < copied || !is_secret_name(name.as_str()) {
            continue;
        }
        let rest = &text[whole.end()..];
        let len = value_len(rest);
        let value = &rest[..len];
        if value.is_empty() || value.trim_start_matches(['\\', '"', '\'']).starts_with("[Filtered") {
            continue;
        }
        let quote = ["\\\"", "\"", "'"].into_iter().find(|q| value.starts_with(q)).unwrap_or_default();
        out.push_str(&text[copied..whole.end()]);
        out.push_str(quote);
        out.push_str(FILTERED);
        out.push_str(quote);
        copied = whole.end() + len;
    }
    out.push_str(&text[copied..]);
    out
}

fn mask_in_place(text: &mut String) {
    let masked = mask_text(text);
    if masked != *text {
        *text = masked;
    }
}

fn mask_option(text: &mut Option<String>) {
    if let Some(text) = text {
        mask_in_place(text);
    }
}

/// A JSON value with every secret-named member replaced and every string masked, at any depth.
pub fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => mask_in_place(text),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                if is_secret_name(name) {
                    *member = Value::String(FILTERED.into());
                } else {
                    scrub_value(member);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn scrub_map(map: &mut Map<String, Value>) {
    for (name, value) in map.iter_mut() {
        if is_secret_name(name) {
            *value = Value::String(FILTERED.into());
        } else {
            scrub_value(value);
        }
    }
}

/// The request interface, were anything to fill it (nothing in Portcullis does: its events carry
/// the request's id, route template and method as tags). Cookies, the query string and the body go
/// whole; credential and address headers go; other header values are masked.
fn scrub_request(request: &mut Request) {
    request.data = None;
    request.query_string = None;
    request.cookies = None;
    if let Some(url) = &mut request.url {
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    let mut headers = std::mem::take(&mut request.headers);
    headers.retain(|name, _| {
        let name = name.to_ascii_lowercase();
        !CREDENTIAL_HEADERS.contains(&name.as_str())
            && !ADDRESS_HEADERS.contains(&name.as_str())
            && !is_secret_name(&name)
    });
    headers.values_mut().for_each(mask_in_place);
    request.headers = headers;
    request.env.retain(|name, _| name != "REMOTE_ADDR" && !is_secret_name(name));
    request.env.values_mut().for_each(mask_in_place);
}

/// No address, email or name: the id alone says how many users an error touches.
fn scrub_user(user: &mut User) {
    user.ip_address = None;
    user.email = None;
    user.username = None;
    scrub_map(&mut user.other);
}

fn scrub_stacktrace(stacktrace: &mut Stacktrace) {
    for frame in &mut stacktrace.frames {
        scrub_map(&mut frame.vars);
    }
}

/// A context, scrubbed through its JSON form (the typed ones, os or device, keep open-ended fields
/// too). One that does not survive the round trip is dropped rather than sent unscrubbed.
fn scrub_context(context: &Context) -> Option<Context> {
    let mut value = serde_json::to_value(context).ok()?;
    scrub_value(&mut value);
    serde_json::from_value(value).ok()
}

/// `before_send`: every event passes here last, after the integrations have added to it.
pub fn event(mut event: Event<'static>) -> Option<Event<'static>> {
    if let Some(request) = &mut event.request {
        scrub_request(request);
    }
    if let Some(user) = &mut event.user {
        scrub_user(user);
    }
    mask_option(&mut event.message);
    if let Some(entry) = &mut event.logentry {
        mask_in_place(&mut entry.message);
        entry.params.iter_mut().for_each(scrub_value);
    }
    mask_option(&mut event.culprit);
    mask_option(&mut event.transaction);
    for exception in &mut event.exception.values {
        mask_in_place(&mut exception.ty);
        mask_option(&mut exception.value);
        if let Some(mechanism) = &mut exception.mechanism {
            scrub_map(&mut mechanism.data);
        }
        exception.stacktrace.iter_mut().for_each(scrub_stacktrace);
        exception.raw_stacktrace.iter_mut().for_each(scrub_stacktrace);
    }
    event.stacktrace.iter_mut().for_each(scrub_stacktrace);
    for thread in &mut event.threads.values {
        thread.stacktrace.iter_mut().for_each(scrub_stacktrace);
        thread.raw_stacktrace.iter_mut().for_each(scrub_stacktrace);
    }
    scrub_map(&mut event.extra);
    for (name, value) in event.tags.iter_mut() {
        if is_secret_name(name) {
            *value = FILTERED.into();
        } else if !TRUSTED_TAGS.contains(&name.as_str()) {
            mask_in_place(value);
        }
    }
    let contexts = std::mem::take(&mut event.contexts);
    event.contexts = contexts
        .into_iter()
        .filter(|(name, _)| !is_secret_name(name))
        .filter_map(|(name, context)| Some((name, scrub_context(&context)?)))
        .collect();
    let breadcrumbs = std::mem::take(&mut event.breadcrumbs.values);
    event.breadcrumbs.values = breadcrumbs.into_iter().filter_map(breadcrumb).collect();
    Some(event)
}

/// `before_breadcrumb`, and the same for every breadcrumb an event carries.
pub fn breadcrumb(mut breadcrumb: Breadcrumb) -> Option<Breadcrumb> {
    mask_option(&mut breadcrumb.message);
    scrub_map(&mut breadcrumb.data);
    Some(breadcrumb)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sentry::protocol::{Exception, Level, LogEntry, Values};

    use super::*;

    fn base64url(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec(),
            ),
            len,
        )
        .prop_map(|bytes| String::from_utf8(bytes).unwrap_or_default())
    }

    /// The secrets Portcullis mints, in the shapes it mints them.
    fn minted_secret() -> impl Strategy<Value = String> {
        prop_oneof![
            // Bearer secrets: 43 base64url characters (refresh tokens, cookies, link tokens).
            base64url(43..=43).prop_filter("random text mixes cases and digits", |t| looks_random(t)),
            // API keys.
            (any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(id, secret)| {
                portcullis_domain::format_api_key(&portcullis_domain::ApiKeyId::from_random_bytes(id), secret)
            }),
            // Access tokens: compact JWS.
            (base64url(10..=60), base64url(10..=200), base64url(40..=90))
                .prop_map(|(header, claims, signature)| format!("eyJ{header}.{claims}.{signature}")),
            // Anything at all after a bearer scheme.
            base64url(8..=60).prop_map(|credential| format!("Bearer {credential}")),
            // Anything at all (that ends a query parameter's value where a URL would) as the value of
            // a secret-named parameter.
            "[!-~&&[^&;,)'\"\\]}\\[]]{8,40}".prop_map(|value| format!("password={value}")),
        ]
    }

    proptest! {
        /// Error text is partly the client's (an error can quote what it was sent): whatever
        /// surrounds a secret, the secret does not survive.
        #[test]
        fn a_minted_secret_never_survives_whatever_surrounds_it(
            before in "[ -~]{0,40}",
            secret in minted_secret(),
            after in "[ -~]{0,40}",
        ) {
            let masked = mask_text(&format!("{before} {secret} {after}"));
            let value = secret.trim_start_matches("Bearer ").trim_start_matches("password=");
            prop_assert!(!masked.contains(value), "{masked}");
        }
    }

    const API_KEY: &str = "pcs_0123456789abcdefABCDEF_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw012345";
    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU";
    const REFRESH: &str = "q7Xv3N0pL2m9Rk8sT1uW4yZ6aB5cD7eF9gH2jK4lM6n";

    #[test]
    fn names_that_mark_secrets_are_recognised_as_words_and_parts() {
        for name in [
            "password",
            "new_password",
            "Authorization",
            "proxy-authorization",
            "x-api-key",
            "apiKey",
            "apikey",
            "api_key_id",
            "set-cookie",
            "x-csrf-token",
            "refresh_token",
            "accessToken",
            "session_id",
            "client_secret",
            "sentry.dsn",
            "otp",
            "recovery_codes",
            "code",
            "credentials",
            "private_key",
            "keyId",
            "smtp_pass",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "request_id",
            "route",
            "method",
            "error",
            "message",
            "monkey",
            "footprint",
            "encode",
            "status",
            "panic.location",
            "keyring",
            "user_id",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn credentials_in_free_text_are_masked_and_the_rest_is_kept() {
        let cases = [
            (format!("upstream refused Bearer {REFRESH}"), "upstream refused Bearer [Filtered]"),
            ("authorization: Basic dXNlcjpodW50ZXIy".to_owned(), "authorization: [Filtered] [Filtered]"),
            (format!("bad token {JWT} presented"), "bad token [Filtered] presented"),
            (format!("key {API_KEY} refused"), "key [Filtered] refused"),
            (
                "connect to postgres://app:hunter2@db.internal/portcullis".into(),
                "connect to postgres://[Filtered]@db.internal/portcullis",
            ),
            (
                "GET https://x.example/cb?code=abc123&state=ok".into(),
                "GET https://x.example/cb?code=[Filtered]&state=ok",
            ),
            (
                r#"body {"password":"hunter2","email":"a@b.example"}"#.into(),
                r#"body {"password":"[Filtered]","email":"[Filtered]"}"#,
            ),
            (
                r#"Login { password: "hunter2", remember: true }"#.into(),
                r#"Login { password: "[Filtered]", remember: true }"#,
            ),
            (format!("cookie value {REFRESH}."), "cookie value [Filtered]."),
            (format!("password={API_KEY}"), "password=[Filtered]"),
            // A value never hides the next name from the search.
            ("note: password=hunter2x".into(), "note: password=[Filtered]"),
            // JSON inside a JSON string.
            (
                r#"{"note":"{\"password\":\"hunter2\"}"}"#.into(),
                r#"{"note":"{\"password\":\"[Filtered]\"}"}"#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_text(&input), expected, "{input}");
        }
        for kept in [
            "request failed: internal error: database: connection refused",
            "portcullis_app::session::refresh failed at crates/app/src/session.rs:42",
            "request 0123456789abcdef0123456789abcdef for user 9b2f3c1e-8d4a-4c6b-9e2f-1a2b3c4d5e6f",
            "digest e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert_eq!(mask_text(kept), kept);
        }
    }

    #[test]
    fn json_members_named_like_secrets_are_filtered_at_any_depth() {
        let mut value = serde_json::json!({
            "user": { "id": 7, "password": "hunter2", "nested": [{ "apiKey": "x" }, { "note": format!("Bearer {REFRESH}") }] },
            "session": { "anything": "inside" },
        });
        scrub_value(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "user": { "id": 7, "password": FILTERED, "nested": [{ "apiKey": FILTERED }, { "note": "Bearer [Filtered]" }] },
                "session": FILTERED,
            })
        );
    }

    #[test]
    fn before_send_drops_cookies_query_strings_bodies_credential_headers_and_the_ip() {
        let mut request = Request {
            url: "https://user:pw@id.example.com/v1/login?password=hunter2#frag".parse().ok(),
            method: Some("POST".into()),
            data: Some(r#"{"password":"hunter2"}"#.into()),
            query_string: Some("password=hunter2".into()),
            cookies: Some("__Host-portcullis_session=abc".into()),
            ..Request::default()
        };
        for (name, value) in [
            ("Authorization", "Bearer abcdefgh12345678"),
            ("Proxy-Authorization", "Basic abcdefgh"),
            ("Cookie", "a=b"),
            ("Set-Cookie", "a=b"),
            ("X-Csrf-Token", "t"),
            ("X-Api-Key", "k"),
            ("X-Auth-Token", "t"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Accept", "application/json"),
            ("X-Note", format!("see {JWT}").as_str()),
        ] {
            request.headers.insert(name.into(), value.into());
        }
        let mut extra = Map::new();
        extra.insert("password".into(), "hunter2".into());
        extra.insert("detail".into(), serde_json::json!({ "token": "t", "ok": format!("Bearer {REFRESH}") }));
        let mut tags = Map::new();
        tags.insert("request_id".into(), "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789".into());
        tags.insert("session".into(), "s".into());
        tags.insert("route".into(), "/v1/x".into());
        let mut other = Map::new();
        other.insert("secret".into(), "s".into());
        other.insert("fine".into(), "f".into());
        let mut contexts = Map::new();
        contexts.insert("app".into(), Context::Other(other));
        contexts.insert("credentials".into(), Context::Other(Map::new()));
        let breadcrumb = Breadcrumb {
            message: Some(format!("used {API_KEY}")),
            data: [("authorization".to_owned(), Value::from("Bearer x"))].into_iter().collect(),
            ..Breadcrumb::default()
        };
        let event = Event {
            level: Level::Error,
            message: Some(format!("failed with Bearer {REFRESH}")),
            logentry: Some(LogEntry { message: JWT.to_owned(), params: vec![Value::from(API_KEY)] }),
            request: Some(request),
            user: Some(User {
                id: Some("u1".into()),
                email: Some("a@b.c".into()),
                ip_address: Some(sentry::protocol::IpAddress::Auto),
                ..User::default()
            }),
            exception: Values::from(vec![Exception {
                ty: "panic".into(),
                value: Some(format!("called with password={REFRESH}")),
                ..Exception::default()
            }]),
            extra,
            tags,
            contexts,
            breadcrumbs: Values::from(vec![breadcrumb]),
            ..Event::default()
        };

        let event = super::event(event).unwrap();
        let request = event.request.as_ref().unwrap();
        assert_eq!((&request.data, &request.query_string, &request.cookies), (&None, &None, &None));
        assert_eq!(request.url.as_ref().unwrap().as_str(), "https://id.example.com/v1/login");
        let mut headers: Vec<&str> = request.headers.keys().map(String::as_str).collect();
        headers.sort_unstable();
        assert_eq!(headers, ["Accept", "X-Note"]);
        assert_eq!(request.headers["X-Note"], "see [Filtered]");
        let user = event.user.as_ref().unwrap();
        assert_eq!((user.id.as_deref(), &user.email, &user.ip_address), (Some("u1"), &None, &None));
        assert_eq!(event.tags["request_id"], "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789");
        assert_eq!(event.tags["session"], FILTERED);
        assert_eq!(event.tags["route"], "/v1/x");
        assert!(!event.contexts.contains_key("credentials"));
        let rendered = serde_json::to_string(&event).unwrap();
        for canary in ["hunter2", REFRESH, JWT, API_KEY, "203.0.113.9", "a@b.c", "__Host", "abcdefgh"] {
            assert!(!rendered.contains(canary), "{canary} survived: {rendered}");
        }
        assert!(rendered.contains(r#""fine":"f""#), "{rendered}");
    }

    #[test]
    fn before_breadcrumb_masks_messages_and_data() {
        let crumb = Breadcrumb {
            message: Some(format!("refresh with {REFRESH}")),
            data: [("csrf".to_owned(), Value::from("t")), ("status".to_owned(), Value::from(500))]
                .into_iter()
                .collect(),
            ..Breadcrumb::default()
        };
        let crumb = breadcrumb(crumb).unwrap();
        assert_eq!(crumb.message.as_deref(), Some("refresh with [Filtered]"));
        assert_eq!(crumb.data["csrf"], FILTERED);
        assert_eq!(crumb.data["status"], 500);
    }
}
