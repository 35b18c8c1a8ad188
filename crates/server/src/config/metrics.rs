//! The configuration of `GET /metrics`: `[metrics]`, its validation, and who may scrape.

use std::net::SocketAddr;

use ipnet::IpNet;
use portcullis_app::MetricsAccess;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{Config, Mode, Secret, secret_problem};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served at all.
    pub enabled: bool,
    /// A listener of its own (plain http, for a network only the scraper reaches). Unset: the main
    /// listener serves `/metrics`, and only when `allow` or `token` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Client addresses (CIDRs, after trusted-proxy resolution) that may scrape.
    pub allow: Vec<IpNet>,
    /// A bearer token scrapers must present (`Authorization: Bearer ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, listen: None, allow: Vec::new(), token: None }
    }
}

/// Where `/metrics` is served, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExposure {
    /// Not at all.
    Off,
    /// On the main listener, behind `allow` and/or `token`.
    MainListener,
    /// On a listener of its own.
    OwnListener(SocketAddr),
}

impl Config {
    /// Where `/metrics` is served. With no listener of its own and no access rule, nowhere: the API's
    /// listener faces clients, and a proxy on the same host would make every client look local.
    pub fn metrics_exposure(&self) -> MetricsExposure {
        let m = &self.metrics;
        match (m.enabled, m.listen) {
            (false, _) => MetricsExposure::Off,
            (true, Some(addr)) => MetricsExposure::OwnListener(addr),
            (true, None) if !m.allow.is_empty() || m.token.is_some() => MetricsExposure::MainListener,
            (true, None) => MetricsExposure::Off,
        }
    }

    /// The scrape rules for the use cases.
    pub fn metrics_access(&self) -> MetricsAccess {
        MetricsAccess {
            allow: self.metrics.allow.clone(),
            token: self.metrics.token.as_ref().map(|t| SecretString::from(t.expose().to_owned())),
        }
    }

    /// Problems with `[metrics]`.
    pub(super) fn metrics_problems(&self) -> Vec<String> {
        let m = &self.metrics;
        let mut problems = Vec::new();
        if let Some(token) = &m.token
            && (token.expose().is_empty()
                || !token.expose().bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)))
        {
            // The characters of RFC 6750's b64token: anything else could never be presented.
            problems.push("metrics.token: must be letters, digits and -._~+/= only".into());
        }
        if let Some(listen) = m.listen
            && listen == self.http.listen
            && listen.port() != 0
        {
            problems.push("metrics.listen: must differ from http.listen".into());
        }
        problems
    }

    /// Reasons `[metrics]` is unfit for production.
    pub(super) fn metrics_production_problems(&self) -> Vec<String> {
        debug_assert_eq!(self.mode, Mode::Production);
        self.metrics
            .token
            .as_ref()
            .and_then(|t| secret_problem("metrics.token", t.expose()))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(adjust: impl FnOnce(&mut MetricsConfig)) -> Config {
        let mut config = Config::default();
        adjust(&mut config.metrics);
        config
    }

    #[test]
    fn the_main_listener_serves_metrics_only_behind_a_rule() {
        assert_eq!(config(|_| {}).metrics_exposure(), MetricsExposure::Off);
        let allowed = config(|m| m.allow = vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(allowed.metrics_exposure(), MetricsExposure::MainListener);
        let token = config(|m| m.token = Some(Secret::new("t".repeat(40))));
        assert_eq!(token.metrics_exposure(), MetricsExposure::MainListener);
        let off = config(|m| {
            m.enabled = false;
            m.token = Some(Secret::new("t".repeat(40)));
        });
        assert_eq!(off.metrics_exposure(), MetricsExposure::Off);
        let own = config(|m| m.listen = Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(own.metrics_exposure(), MetricsExposure::OwnListener("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn a_token_that_could_never_be_presented_or_is_weak_is_refused() {
        let bad = config(|m| m.token = Some(Secret::new("has space".into())));
        assert_eq!(bad.metrics_problems().len(), 1);
        let mut short = config(|m| m.token = Some(Secret::new("short".into())));
        short.mode = Mode::Production;
        assert!(
            short.metrics_production_problems()[0].contains("at least 32"),
            "{:?}",
            short.metrics_production_problems()
        );
        let same = config(|m| m.listen = Some(Config::default().http.listen));
        assert_eq!(same.metrics_problems(), vec!["metrics.listen: must differ from http.listen".to_owned()]);
    }

    #[test]
    fn the_token_is_never_rendered() {
        let config = config(|m| m.token = Some(Secret::new("canary-metrics-token-0123456789abcdef".into())));
        assert!(!config.to_masked_toml().contains("canary-metrics-token"));
        assert!(!format!("{:?}", config.metrics_access()).contains("canary-metrics-token"));
    }
}
