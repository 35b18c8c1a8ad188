//! Security response headers: helmet's defaults as the floor, tightened for an API.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The `Content-Security-Policy` for responses that are not HTML pages: nothing may load, frame or be
/// framed. Pages set their own policy, which is then left alone.
pub(crate) const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Powerful browser features nobody needs on an identity server's origin.
const PERMISSIONS_POLICY: &str = "accelerometer=(), autoplay=(), browsing-topics=(), camera=(), \
display-capture=(), encrypted-media=(), fullscreen=(), geolocation=(), gyroscope=(), hid=(), \
magnetometer=(), microphone=(), midi=(), payment=(), picture-in-picture=(), serial=(), usb=(), \
xr-spatial-tracking=()";

/// Headers set on every response unless the handler chose its own value.
static DEFAULTS: [(HeaderName, HeaderValue); 13] = [
    (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(API_CSP)),
    (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    (HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin")),
    (HeaderName::from_static("permissions-policy"), HeaderValue::from_static(PERMISSIONS_POLICY)),
    (HeaderName::from_static("origin-agent-cluster"), HeaderValue::from_static("?1")),
    (header::X_DNS_PREFETCH_CONTROL, HeaderValue::from_static("off")),
    (HeaderName::from_static("x-download-options"), HeaderValue::from_static("noopen")),
    (HeaderName::from_static("x-permitted-cross-domain-policies"), HeaderValue::from_static("none")),
    // The legacy XSS auditor is itself exploitable; "0" turns it off (OWASP, helmet).
    (header::X_XSS_PROTECTION, HeaderValue::from_static("0")),
    // Responses carry personal data and tokens: no shared or private cache may keep them (ASVS 14.3.2).
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
];

/// CORS response headers other than `Access-Control-Allow-Origin`.
static CORS_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    HeaderName::from_static("access-control-allow-private-network"),
];

/// Adds the security headers, HSTS when the request came over https, and strips server banners.
/// Public so that the load benchmark's baseline can send exactly the same headers.
pub fn apply(headers: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    headers.reserve(DEFAULTS.len() + 2);
    for (name, value) in &DEFAULTS {
        headers.entry(name).or_insert_with(|| value.clone());
    }
    if let Some(hsts) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    headers.remove(header::SERVER);
    headers.remove("x-powered-by");
    strip_cors_without_origin(headers);
}

/// The CORS layer adds `Access-Control-Expose-Headers` and friends to every response; unless the
/// request's origin was allowed (so `Access-Control-Allow-Origin` is present) none of them is sent,
/// so a disallowed or absent origin learns nothing about the CORS policy.
fn strip_cors_without_origin(headers: &mut HeaderMap) {
    if headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    for name in &CORS_HEADERS {
        headers.remove(name);
    }
}
