//! Abuse protection: rate limits, IP rules, login throttling, detection rules and alerts.

pub mod alerts;
pub mod detection;
pub mod ip_rules;
mod lockout;
pub mod rate_limit;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_domain::{Email, MAX_SECURITY_EVENT_DETAILS_BYTES, SecurityEvent, SecurityEventKind};

use crate::{App, AppError, Clock, Credential, Principal};
use rate_limit::{
    Allowance, FailureMode, LocalBackend, RateDecision, RateKey, RateLimitBackend, RateLimitBackendSettings,
    RateLimitSettings, RatePolicyKind, RedisBackend,
};

/// The rate limits of one node: the settings, where the budgets live, and what was refused.
#[derive(Debug)]
pub(crate) struct RateLimits {
    settings: RateLimitSettings,
    backend: Arc<dyn RateLimitBackend>,
    failure_mode: FailureMode,
    trips: rate_limit::TripCounter,
    /// Requests that went unmetered (or were refused, failing closed) because Redis did not answer.
    backend_failures: AtomicU64,
    /// When a backend failure was last logged (unix millis), so a Redis outage logs once a minute
    /// rather than once a request.
    failure_logged_at: std::sync::atomic::AtomicI64,
}

impl RateLimits {
    pub(crate) fn new(settings: RateLimitSettings, clock: Arc<dyn Clock>) -> Result<Self, AppError> {
        let (backend, failure_mode): (Arc<dyn RateLimitBackend>, _) = match &settings.backend {
            RateLimitBackendSettings::Local => {
                (Arc::new(LocalBackend::new(&settings, clock)), FailureMode::Open)
            }
            RateLimitBackendSettings::Redis { url, prefix, on_failure } => (
                Arc::new(RedisBackend::new(url, prefix).map_err(|e| AppError::Internal(Box::new(e)))?),
                *on_failure,
            ),
        };
        Ok(Self {
            settings,
            backend,
            failure_mode,
            trips: Default::default(),
            backend_failures: AtomicU64::new(0),
            failure_logged_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }
}

/// Keeps a security event's details within the size the domain allows: entries are kept in key
/// order until the next would not fit, and a `truncated` marker says that some were dropped.
pub(crate) fn fit_details(details: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut size = 0;
    let mut kept = BTreeMap::new();
    let mut dropped = false;
    for (key, value) in details {
        size += key.len() + value.len();
        if size > MAX_SECURITY_EVENT_DETAILS_BYTES - 16 {
            dropped = true;
            break;
        }
        kept.insert(key, value);
    }
    if dropped {
        kept.insert("truncated".into(), "true".into());
    }
    kept
}

/// How a request stands against its budgets: the tightest allowance, to report in `RateLimit-*`
/// headers (`None` when no budget applied: limits off, an exempt network, or an unmetered request
/// while Redis is away and the failure mode is open).
pub type RateStanding = Option<(RatePolicyKind, Allowance)>;

impl App {
    /// The rate limit settings in force.
    pub fn rate_limit_settings(&self) -> &RateLimitSettings {
        &self.inner.rate_limits.settings
    }

    /// Spends one request of the client address's budget, and of the stricter budget of the routes
    /// that prove who someone is when `auth_route`. Cheap (no database); runs before anything else
    /// a request costs. Refused: [`AppError::RateLimited`].
    pub async fn spend_client_budget(&self, ip: IpAddr, auth_route: bool) -> Result<RateStanding, AppError> {
        let limits = &self.inner.rate_limits;
        if !limits.settings.enabled || limits.settings.exempt_networks.iter().any(|net| net.contains(&ip)) {
            return Ok(None);
        }
        let key = RateKey::Ip(client_prefix(ip));
        let mut standing = self.spend(RatePolicyKind::Ip, key).await?;
        if auth_route {
            standing = tighter(standing, self.spend(RatePolicyKind::AuthIp, key).await?);
        }
        Ok(standing)
    }

    /// Spends one request of an authenticated caller's budget: the key's for an API key, the
    /// person's or service account's otherwise.
    pub async fn spend_principal_budget(&self, principal: &Principal) -> Result<RateStanding, AppError> {
        if !self.inner.rate_limits.settings.enabled {
            return Ok(None);
        }
        match principal.credential {
            Credential::ApiKey(key) => self.spend(RatePolicyKind::ApiKey, RateKey::ApiKey(key)).await,
            Credential::Bearer(_) | Credential::Cookie(_) => {
                self.spend(RatePolicyKind::Principal, RateKey::User(principal.user_id)).await
            }
        }
    }

    /// Spends one attempt of the budget of the account identifier a login, signup or reset names,
    /// known or not (keyed by its blind index, so no address is held). An identifier that is not an
    /// address names no account and spends nothing here; the address budgets still apply.
    pub(crate) async fn spend_identifier_budget(&self, identifier: &str) -> Result<(), AppError> {
        if !self.inner.rate_limits.settings.enabled {
            return Ok(());
        }
        let Some(subject) = self.identifier_subject(identifier)? else { return Ok(()) };
        self.spend(RatePolicyKind::Account, RateKey::Subject(subject)).await.map(|_| ())
    }

    /// Spends one reset mail of the address's budget; `false` when it is spent (the caller then
    /// sends nothing and answers as usual). Keyed by blind index like the identifier budget.
    pub(crate) async fn spend_reset_mail_budget(&self, email: &Email) -> Result<bool, AppError> {
        if !self.inner.rate_limits.settings.enabled {
            return Ok(true);
        }
        match self.spend(RatePolicyKind::ResetMail, RateKey::Subject(self.email_subject(email)?)).await {
            Ok(_) => Ok(true),
            Err(AppError::RateLimited(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    async fn spend(&self, kind: RatePolicyKind, key: RateKey) -> Result<RateStanding, AppError> {
        let limits = &self.inner.rate_limits;
        let now = self.now();
        match limits.backend.check(kind, limits.settings.policy(kind), &key, now).await {
            Ok(RateDecision::Allowed(allowance)) => Ok(Some((kind, allowance))),
            Ok(RateDecision::Limited(refusal)) => {
                limits.trips.count(kind, key);
                self.inner.metrics.rate_limited(kind.as_str());
                Err(AppError::RateLimited(refusal))
            }
            Err(unavailable) => {
                limits.backend_failures.fetch_add(1, Ordering::Relaxed);
                let logged = limits.failure_logged_at.load(Ordering::Relaxed);
                if logged == i64::MIN || now.as_unix_millis().saturating_sub(logged) >= 60_000 {
                    limits.failure_logged_at.store(now.as_unix_millis(), Ordering::Relaxed);
                    tracing::error!(
                        error = %unavailable,
                        failures = limits.backend_failures.load(Ordering::Relaxed),
                        failure_mode = ?limits.failure_mode,
                        "rate limit store unavailable"
                    );
                }
                match limits.failure_mode {
                    FailureMode::Open => Ok(None),
                    FailureMode::Closed => Err(AppError::RateLimiterUnavailable),
                }
            }
        }
    }

    /// Requests that found the rate limit store unavailable since the start (a metric).
    pub fn rate_limit_backend_failures(&self) -> u64 {
        self.inner.rate_limits.backend_failures.load(Ordering::Relaxed)
    }

    /// How many budgets this node holds in memory (`None` when they live in Redis).
    pub fn rate_limit_keys_held(&self) -> Option<usize> {
        self.inner.rate_limits.backend.held_keys()
    }

    /// Forgets in-memory budgets that are full again (every few seconds: this is what bounds memory
    /// under a flood of distinct addresses).
    pub fn sweep_rate_limits(&self) {
        self.inner.rate_limits.backend.sweep();
    }

    /// Once a minute: records what was refused since the last run as one `rate_limited` security
    /// event per policy and key (with the count), plus one for keys beyond the counter's bound.
    pub async fn record_rate_limit_trips(&self) -> Result<usize, AppError> {
        let limits = &self.inner.rate_limits;
        let (trips, overflow) = limits.trips.take();
        let mut recorded = 0;
        for ((kind, key), count) in trips {
            let mut details = BTreeMap::from([
                ("policy".to_owned(), kind.as_str().to_owned()),
                ("count".to_owned(), count.to_string()),
            ]);
            let (ip, user) = match key {
                RateKey::Ip(ip) => (Some(ip.to_string()), None),
                RateKey::Subject(_) => {
                    details.insert("key".into(), "account identifier".into());
                    (None, None)
                }
                RateKey::ApiKey(id) => {
                    details.insert("api_key_id".into(), id.to_string());
                    (None, None)
                }
                RateKey::User(id) => (None, Some(id)),
            };
            self.record_security_event_with(
                SecurityEventKind::RateLimited,
                user,
                None,
                ip.as_deref(),
                details,
            )
            .await?;
            recorded += 1;
        }
        if overflow > 0 {
            let details = BTreeMap::from([
                ("policy".to_owned(), "any".to_owned()),
                ("count".to_owned(), overflow.to_string()),
                ("key".to_owned(), format!("more than {} distinct keys", rate_limit::MAX_TRIP_KEYS)),
            ]);
            self.record_security_event_with(SecurityEventKind::RateLimited, None, None, None, details)
                .await?;
            recorded += 1;
        }
        Ok(recorded)
    }

    /// Hands a recorded security event to the alert sinks (which decide by severity and cooldown).
    pub(crate) fn raise_alert(&self, event: &SecurityEvent) {
        self.inner.alerts.raise(event);
    }
}

/// The part of a client address that budgets and detection count by: the address for IPv4 (and
/// IPv4-mapped IPv6), the /64 for IPv6, since one subscriber or host usually holds a whole /64 and
/// could otherwise draw a fresh budget for every request.
pub(crate) fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The standing with fewer requests left (the one a client should pace itself by).
fn tighter(a: RateStanding, b: RateStanding) -> RateStanding {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.1.remaining < x.1.remaining { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_ipv4_ones_by_their_address() {
        let p = |s: &str| client_prefix(s.parse().unwrap()).to_string();
        assert_eq!(p("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:2:ffff::9"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:3::1"));
        assert_eq!(p("192.0.2.7"), "192.0.2.7");
        assert_eq!(p("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn details_beyond_the_limit_are_cut_and_marked() {
        let big: BTreeMap<String, String> =
            (0..100).map(|i| (format!("key{i:03}"), "x".repeat(100))).collect();
        let fitted = fit_details(big);
        let size: usize = fitted.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= MAX_SECURITY_EVENT_DETAILS_BYTES);
        assert_eq!(fitted.get("truncated").map(String::as_str), Some("true"));
        let small: BTreeMap<String, String> = [("policy".into(), "login_ip".into())].into_iter().collect();
        assert_eq!(fit_details(small.clone()), small);
    }
}
