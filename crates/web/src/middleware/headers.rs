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
const DEFAULTS: &[(&str, &str)] = &[
    ("content-security-policy", API_CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", PERMISSIONS_POLICY),
    ("origin-agent-cluster", "?1"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-permitted-cross-domain-policies", "none"),
    // The legacy XSS auditor is itself exploitable; "0" turns it off (OWASP, helmet).
    ("x-xss-protection", "0"),
    // Responses carry personal data and tokens: no shared or private cache may keep them (ASVS 14.3.2).
    ("cache-control", "no-store"),
];

/// Adds the security headers, HSTS when the request came over https, and strips server banners.
pub(crate) fn apply(headers: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    for (name, value) in DEFAULTS {
        if !headers.contains_key(*name) {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
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
    let cors: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("access-control-")).cloned().collect();
    for name in cors {
        headers.remove(name);
    }
}
