//! Settings of the HTTP layer, validated by the server before they get here.

use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

/// Everything the middleware stack needs to know.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Peers whose `Forwarded` / `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Which forwarding header those proxies maintain (only that one is read).
    pub forwarded_header: crate::ForwardedHeader,
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
    /// Most request header fields accepted (431 beyond).
    pub max_headers: usize,
    /// Largest total size of request header names and values (431 beyond).
    pub max_header_bytes: usize,
    /// Longest time a request may take from headers to response (408 beyond).
    pub request_timeout: Duration,
    /// Cross-origin resource sharing.
    pub cors: CorsConfig,
    /// Strict-Transport-Security, sent when the request arrived over https.
    pub hsts: HstsConfig,
    /// Whether the main router serves `GET /metrics` (only when its access is restricted and it
    /// has no listener of its own).
    pub metrics_route: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            forwarded_header: crate::ForwardedHeader::default(),
            body_limit_bytes: 64 * 1024,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(30),
            cors: CorsConfig::default(),
            hsts: HstsConfig::default(),
            metrics_route: false,
        }
    }
}

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, Default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`); empty means no cross-origin access at all.
    pub allowed_origins: Vec<String>,
    /// Whether cookies and `Authorization` may ride along; only ever with explicit origins.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
}

/// The `Strict-Transport-Security` policy.
#[derive(Debug, Clone)]
pub struct HstsConfig {
    pub max_age_secs: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Default for HstsConfig {
    fn default() -> Self {
        // Two years, the figure the HSTS preload list asks for.
        Self { max_age_secs: 63_072_000, include_subdomains: true, preload: false }
    }
}

impl HstsConfig {
    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut value = format!("max-age={}", self.max_age_secs);
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("max-age=63072000"))
    }
}

/// A web setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebConfigError {
    #[error("cors.allowed_origins: {0:?} is not an origin (scheme://host[:port], no path)")]
    BadOrigin(String),
    #[error("cors.allowed_origins: \"*\" cannot be combined with cors.allow_credentials = true")]
    WildcardWithCredentials,
}

impl CorsConfig {
    /// Checks every origin; `*` is accepted only without credentials.
    pub fn validate(&self) -> Result<(), WebConfigError> {
        for origin in &self.allowed_origins {
            if origin == "*" {
                if self.allow_credentials {
                    return Err(WebConfigError::WildcardWithCredentials);
                }
                continue;
            }
            if !is_origin(origin) {
                return Err(WebConfigError::BadOrigin(origin.clone()));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after the authority (RFC 6454).
fn is_origin(text: &str) -> bool {
    let Ok(uri) = text.parse::<http::Uri>() else { return false };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/")
        && !text.ends_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn explicit_origins_are_accepted_with_or_without_credentials() {
        assert_eq!(cors(&["https://app.example.com", "http://localhost:3000"], true).validate(), Ok(()));
    }

    #[test]
    fn a_wildcard_with_credentials_is_refused() {
        assert_eq!(cors(&["*"], true).validate(), Err(WebConfigError::WildcardWithCredentials));
        assert_eq!(cors(&["*"], false).validate(), Ok(()));
    }

    #[test]
    fn things_that_are_not_origins_are_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com/",
            "ftp://x",
            "https://user@x.com",
            "",
        ] {
            assert!(cors(&[bad], false).validate().is_err(), "{bad} should be refused");
        }
    }
}
