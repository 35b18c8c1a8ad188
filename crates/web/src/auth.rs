//! Authentication as extractors (CONVENTIONS.md): a handler that takes [`Authenticated`] cannot run
//! without a valid access token, API key or session cookie, and a cookie-authenticated request that
//! changes state cannot run without its CSRF token and a same-origin `Origin`/`Sec-Fetch-Site`.

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, Method, header};
use portcullis_app::{AppError, ClientContext, Principal};

use crate::AppState;
use crate::error::ApiError;
use crate::middleware::edge::ClientInfo;

/// The browser session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and no
/// `Domain`, so no sibling subdomain can set or shadow it (RFC 6265bis section 4.1.3.2).
pub const SESSION_COOKIE: &str = "__Host-portcullis_session";

/// The header that carries the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The header an API key may come in, instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The authenticated caller of a request. A session that must enroll a second factor first is
/// refused here (403 `mfa-enrollment-required`); the few routes it may use take [`Enrolling`].
#[derive(Debug, Clone, Copy)]
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Enrolling(principal) = Enrolling::from_request_parts(parts, state).await?;
        if principal.mfa_enrollment_required {
            return Err(AppError::MfaEnrollmentRequired.into());
        }
        Ok(Authenticated(principal))
    }
}

/// The authenticated caller, even one whose session must enroll a second factor before anything
/// else: for enrolling it, seeing one's own account, and logging out.
#[derive(Debug, Clone, Copy)]
pub struct Enrolling(pub Principal);

impl FromRequestParts<AppState> for Enrolling {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        if let Some(slot) = parts.extensions.get::<crate::rate_limit::PrincipalSlot>() {
            let _ = slot.0.set(principal);
        }
        // The caller's own budget, from any address: a stolen token or key spread over many
        // addresses still spends one budget.
        state.app.spend_principal_budget(&principal).await?;
        Ok(Enrolling(principal))
    }
}

/// Proves who the caller is: an API key, a bearer access token, or a session cookie with its CSRF
/// token for state changes.
async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
    {
        let app = &state.app;
        let authorization = parts.headers.get(header::AUTHORIZATION);
        if let Some(value) = parts.headers.get(API_KEY_HEADER) {
            // Two credentials in one request: refuse rather than pick one.
            if authorization.is_some() || parts.headers.get_all(API_KEY_HEADER).iter().count() > 1 {
                return Err(AppError::Unauthenticated.into());
            }
            let key = value.to_str().map_err(|_| AppError::Unauthenticated)?;
            return Ok(app.authenticate_api_key(key, &client_context(parts)).await?);
        }
        if let Some(value) = authorization {
            // A malformed Authorization header is an error, not a reason to look at cookies.
            let token = bearer_token(value.as_bytes()).ok_or(AppError::Unauthenticated)?;
            if portcullis_domain::looks_like_api_key(token) {
                return Ok(app.authenticate_api_key(token, &client_context(parts)).await?);
            }
            return Ok(app.authenticate_bearer(token)?);
        }
        let cookie = session_cookie(&parts.headers).ok_or(AppError::Unauthenticated)?;
        let principal = app.authenticate_cookie(&cookie).await?;
        if !is_safe(&parts.method) {
            let client = client_context(parts);
            if !same_origin(&parts.headers, authority(parts), is_https(parts), &state.trusted_origins) {
                app.reject_csrf(Some(&principal), &client).await?;
            }
            let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            app.check_csrf(&principal, presented, &client).await?;
        }
        Ok(principal)
    }
}

/// `Bearer <token>`, scheme case-insensitive (RFC 9110 section 11.1), one space, token68 characters.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)).then_some(token)
}

/// The session cookie's value, if exactly one is sent. Two cookies of the same name mean someone
/// planted one (cookie tossing): refuse both rather than guess.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for cookie in cookie::Cookie::split_parse(value).flatten() {
            if cookie.name() == SESSION_COOKIE {
                if found.is_some() {
                    return None;
                }
                found = Some(cookie.value().to_owned());
            }
        }
    }
    found
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a browser says the request comes from our own origin or an allow-listed one (OWASP CSRF
/// cheat sheet: Fetch Metadata, then Origin). Clients that send neither header (not browsers) pass
/// here and still need the CSRF token.
pub(crate) fn same_origin(
    headers: &HeaderMap,
    authority: Option<&str>,
    https: bool,
    trusted: &[String],
) -> bool {
    // A header that is there but not text, or there twice, is refused, not read as missing or as its
    // first copy: browsers send each once, in ASCII, so only a forger sends anything else, and a
    // missing Origin is the lenient case.
    let text = |name: &str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => value.to_str().map(Some).map_err(drop),
            (Some(_), Some(_)) => Err(()),
        }
    };
    let (Ok(origin), Ok(site)) = (text(header::ORIGIN.as_str()), text("sec-fetch-site")) else {
        return false;
    };
    // An opaque origin (sandboxed frame, data: URL) is never ours, whatever the allowlist says.
    if origin == Some("null") {
        return false;
    }
    let allow_listed = origin.is_some_and(|o| trusted.iter().any(|t| t == o));
    if let Some(site) = site
        && !matches!(site, "same-origin" | "none")
        && !allow_listed
    {
        return false;
    }
    match origin {
        None => true,
        Some(_) if allow_listed => true,
        // An origin is scheme, host and port (RFC 6454): ours is the scheme the client used to reach
        // us (directly or through a trusted proxy) and the authority it asked for. The configured
        // public URL's origin is in `trusted` too (see `routes::router`).
        Some(origin) => {
            let ours = authority.map(|a| format!("{}://{a}", if https { "https" } else { "http" }));
            ours.is_some_and(|ours| origin.eq_ignore_ascii_case(&ours))
        }
    }
}

/// The authority the client asked for: the `Host` header (HTTP/1.1) or, over HTTP/2 where browsers
/// send `:authority` and no `Host`, the request URI's authority.
fn authority(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// Whether the client reached us over https (directly or through a trusted proxy).
fn is_https(parts: &Parts) -> bool {
    parts.extensions.get::<ClientInfo>().is_some_and(|c| c.https)
}

/// What the session list records about the client: the resolved client ip and the user agent.
pub(crate) fn client_context(parts: &Parts) -> ClientContext {
    ClientContext {
        ip: parts.extensions.get::<ClientInfo>().map(|c| c.ip.to_string()),
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
    }
}

/// The client context as an extractor, for handlers that do not authenticate.
#[derive(Debug, Clone)]
pub struct Client(pub ClientContext);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(client_context(parts)))
    }
}

/// The session cookie the request carries, if exactly one (for a login that replaces it).
#[derive(Debug, Clone)]
pub(crate) struct PresentedCookie(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for PresentedCookie {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PresentedCookie(session_cookie(&parts.headers)))
    }
}

/// Whether the request carries a browser's same-origin signals, for the login that sets a cookie
/// (login CSRF: a foreign page must not log a victim into the attacker's account).
pub(crate) struct SameOrigin(pub bool);

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(SameOrigin(same_origin(&parts.headers, authority(parts), is_https(parts), &state.trusted_origins)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(b"Bearer abc.def-_"), Some("abc.def-_"));
        assert_eq!(bearer_token(b"bearer abc"), Some("abc"));
        for bad in [&b"Bearer"[..], b"Bearer ", b"Basic abc", b"Bearer a b", b"Bearer a\"b", b"Bearerabc"] {
            assert_eq!(bearer_token(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_doubled_session_cookie_is_refused() {
        let one = headers(&[("cookie", "a=1; __Host-portcullis_session=xyz")]);
        assert_eq!(session_cookie(&one).as_deref(), Some("xyz"));
        let two = headers(&[("cookie", "__Host-portcullis_session=xyz; __Host-portcullis_session=evil")]);
        assert_eq!(session_cookie(&two), None);
        let split = headers(&[
            ("cookie", "__Host-portcullis_session=xyz"),
            ("cookie", "__Host-portcullis_session=e"),
        ]);
        assert_eq!(session_cookie(&split), None);
    }

    #[test]
    fn only_same_origin_or_allow_listed_browser_requests_pass_the_origin_check() {
        let trusted = vec!["https://app.example.com".to_owned()];
        let host = ("host", "id.example.com");
        let same_origin = |h: &HeaderMap, t: &[String]| {
            let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
            same_origin(h, host, true, t)
        };
        assert!(same_origin(&headers(&[host]), &trusted), "no browser headers");
        assert!(
            !same_origin(&headers(&[host, ("origin", "http://id.example.com")]), &trusted),
            "another scheme"
        );
        assert!(same_origin(&headers(&[host, ("origin", "https://id.example.com")]), &trusted));
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")]), &trusted));
        assert!(same_origin(
            &headers(&[host, ("origin", "https://app.example.com"), ("sec-fetch-site", "same-site")]),
            &trusted
        ));
        assert!(!same_origin(&headers(&[host, ("origin", "https://evil.example")]), &trusted));
        assert!(!same_origin(&headers(&[host, ("origin", "null")]), &trusted));
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "cross-site")]), &trusted));
        assert!(
            !same_origin(&headers(&[host, ("sec-fetch-site", "same-site")]), &trusted),
            "a sibling subdomain"
        );
        assert!(!same_origin(&headers(&[host, ("origin", "https://id.example.com.evil.example")]), &trusted));
    }

    /// Found while writing the csrf fuzz target: an Origin (or Sec-Fetch-Site) header holding a byte
    /// that is not visible ASCII was read as no header at all, the lenient case.
    #[test]
    fn an_origin_or_fetch_site_header_that_is_not_text_or_sent_twice_is_refused() {
        let host = http::HeaderValue::from_static("id.example.com");
        for name in [header::ORIGIN.as_str(), "sec-fetch-site"] {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, host.clone());
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(b"https://id.example.com\xff").unwrap(),
            );
            assert!(!same_origin(&map, Some("id.example.com"), true, &[]), "{name}");
        }
        let ours = http::HeaderValue::from_static("https://id.example.com");
        let mut twice = HeaderMap::new();
        twice.append(header::ORIGIN, ours.clone());
        twice.append(header::ORIGIN, http::HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&twice, Some("id.example.com"), true, &[]), "two origins");
        let mut null = HeaderMap::new();
        null.insert(header::ORIGIN, http::HeaderValue::from_static("null"));
        assert!(
            !same_origin(&null, Some("id.example.com"), true, &["null".to_owned()]),
            "null, allow-listed"
        );
    }
}
