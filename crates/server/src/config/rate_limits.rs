//! `[rate_limits]`, `[lockout]` and `[redis]`: the budgets every client, account identifier,
//! principal and key spends, the failed-login lockout, and the Redis that several nodes share budgets
//! through.

use std::time::Duration;

use ipnet::IpNet;
use portcullis_app::{FailureMode, RateLimitBackendSettings, RatePolicy};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{Config, Secret};

/// `[rate_limits]`: requests per minute for each budget (GCRA, all usable as a burst).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Off only for benchmarks of other things; production refuses `false`.
    pub enabled: bool,
    /// Every route, per client address (health probes are exempt).
    pub ip_per_minute: u32,
    /// Login, signup, password reset, email verification and setup, per client address.
    pub auth_ip_per_minute: u32,
    /// Login, signup and password reset attempts per account identifier (the address tried).
    pub account_per_minute: u32,
    /// Per signed-in person or service account (bearer token or session cookie).
    pub principal_per_minute: u32,
    /// Per API key.
    pub api_key_per_minute: u32,
    /// Password-reset mails per address and hour; past it the answer is the same and nothing is
    /// sent (the reset itself is never refused).
    pub reset_mails_per_hour: u32,
    /// Client networks exempt from the per-address budgets (an application's own servers).
    pub exempt_networks: Vec<IpNet>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        let d = portcullis_app::RateLimitSettings::default();
        Self {
            enabled: d.enabled,
            ip_per_minute: d.ip.limit,
            auth_ip_per_minute: d.auth_ip.limit,
            account_per_minute: d.account.limit,
            principal_per_minute: d.principal.limit,
            api_key_per_minute: d.api_key.limit,
            reset_mails_per_hour: d.reset_mail.limit,
            exempt_networks: d.exempt_networks,
        }
    }
}

/// `[lockout]`: failed logins per account identifier that lock its password path (never the reset by
/// email), doubling with each lockout up to a cap.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window_minutes: u32,
    pub lock_minutes: u32,
    pub max_lock_minutes: u32,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        let d = portcullis_domain::LockoutPolicy::default();
        let minutes = |millis: i64| u32::try_from(millis / 60_000).unwrap_or(u32::MAX);
        Self {
            max_failures: d.max_failures,
            window_minutes: minutes(d.window_millis),
            lock_minutes: minutes(d.lock_millis),
            max_lock_minutes: minutes(d.max_lock_millis),
        }
    }
}

/// `[detection]`: detection rules (per node, in fixed windows) and their automatic responses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Distinct account identifiers failing to log in from one address within the window.
    pub stuffing_accounts: u32,
    pub stuffing_window_minutes: u32,
    /// How long a credential-stuffing address is blocked (0: the event only).
    pub stuffing_block_minutes: u32,
    /// 403 answers to one principal (or address) within the window: privilege probing.
    pub probing_forbidden: u32,
    pub probing_window_seconds: u32,
    /// `none`, `revoke_session`, `lock_account` (owners are only signed out) or `block_ip`.
    pub probing_response: ProbeResponseName,
    /// How long `probing_response = "block_ip"` blocks the address.
    pub probing_block_minutes: u32,
    /// 404 answers to one address within the window: scanning.
    pub scanning_not_found: u32,
    pub scanning_window_seconds: u32,
    /// How long a scanning address is blocked (0: the event only).
    pub scanning_block_minutes: u32,
    /// Whether an owner's or admin's login from an address not seen for them raises an event.
    pub admin_new_ip: bool,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        let d = portcullis_app::DetectionSettings::default();
        let minutes = |d: Duration| u32::try_from(d.as_secs() / 60).unwrap_or(u32::MAX);
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Self {
            stuffing_accounts: d.stuffing_accounts,
            stuffing_window_minutes: minutes(d.stuffing_window),
            stuffing_block_minutes: minutes(d.stuffing_block),
            probing_forbidden: d.probing_forbidden,
            probing_window_seconds: seconds(d.probing_window),
            probing_response: ProbeResponseName::None,
            probing_block_minutes: minutes(d.block_for),
            scanning_not_found: d.scanning_not_found,
            scanning_window_seconds: seconds(d.scanning_window),
            scanning_block_minutes: minutes(d.scanning_block),
            admin_new_ip: d.admin_new_ip,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeResponseName {
    #[default]
    None,
    RevokeSession,
    LockAccount,
    BlockIp,
}

/// `[redis]`: shared state for many nodes. Unset, every budget lives in this process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` (a secret: it may hold a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    /// Prepended to every key, so several installations can share one Redis.
    pub key_prefix: String,
    /// When Redis cannot be reached: `open` serves requests unmetered (logged, counted), `closed`
    /// refuses them with 503.
    pub on_failure: FailureModeName,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: None, key_prefix: "portcullis:".into(), on_failure: FailureModeName::Open }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureModeName {
    #[default]
    Open,
    Closed,
}

impl Config {
    /// Problems with the rate limit settings in any mode.
    pub(super) fn rate_limit_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let r = &self.rate_limits;
        for (key, value) in [
            ("rate_limits.ip_per_minute", r.ip_per_minute),
            ("rate_limits.auth_ip_per_minute", r.auth_ip_per_minute),
            ("rate_limits.account_per_minute", r.account_per_minute),
            ("rate_limits.principal_per_minute", r.principal_per_minute),
            ("rate_limits.api_key_per_minute", r.api_key_per_minute),
            ("rate_limits.reset_mails_per_hour", r.reset_mails_per_hour),
        ] {
            if !(1..=1_000_000).contains(&value) {
                problems.push(format!("{key}: must be between 1 and 1000000"));
            }
        }
        if let Some(url) = &self.redis.url {
            let text = url.expose();
            if !text.starts_with("redis://")
                && !text.starts_with("redis+unix://")
                && !text.starts_with("unix://")
            {
                // rediss:// (TLS) needs a TLS-enabled client, which this build does not carry yet.
                problems.push(
                    "redis.url: must be a redis:// or unix:// URL (rediss:// is not supported yet: reach Redis over a private network or a local TLS tunnel)"
                        .into(),
                );
            } else if redis_url_is_malformed(text) {
                problems.push("redis.url: is not a valid Redis URL".into());
            }
        }
        let l = &self.lockout;
        if !(3..=1000).contains(&l.max_failures) {
            problems.push("lockout.max_failures: must be between 3 and 1000".into());
        }
        if !(1..=1440).contains(&l.window_minutes) {
            problems.push("lockout.window_minutes: must be between 1 and 1440".into());
        }
        if !(1..=1440).contains(&l.lock_minutes)
            || l.max_lock_minutes < l.lock_minutes
            || l.max_lock_minutes > 43_200
        {
            problems.push("lockout.lock_minutes / lockout.max_lock_minutes: 1 to 1440, and a maximum of at least the first lockout and at most 30 days".into());
        }
        let d = &self.detection;
        for (key, value, max) in [
            ("detection.stuffing_accounts", d.stuffing_accounts, 100_000),
            ("detection.stuffing_window_minutes", d.stuffing_window_minutes, 1440),
            ("detection.probing_forbidden", d.probing_forbidden, 100_000),
            ("detection.probing_window_seconds", d.probing_window_seconds, 86_400),
            ("detection.scanning_not_found", d.scanning_not_found, 100_000),
            ("detection.scanning_window_seconds", d.scanning_window_seconds, 86_400),
            ("detection.probing_block_minutes", d.probing_block_minutes.max(1), 525_600),
        ] {
            if !(1..=max).contains(&value) {
                problems.push(format!("{key}: must be between 1 and {max}"));
            }
        }
        for (key, value) in [
            ("detection.stuffing_block_minutes", d.stuffing_block_minutes),
            ("detection.scanning_block_minutes", d.scanning_block_minutes),
        ] {
            if value > 525_600 {
                problems.push(format!("{key}: must be between 0 (no block) and 525600"));
            }
        }
        if self.redis.key_prefix.len() > 64 || self.redis.key_prefix.chars().any(|c| c.is_whitespace()) {
            problems.push("redis.key_prefix: at most 64 characters, no spaces".into());
        }
        problems
    }

    /// Problems that only production refuses.
    pub(super) fn rate_limit_production_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.rate_limits.enabled {
            problems.push("rate_limits.enabled: production does not run without rate limits".into());
        }
        if self.rate_limits.exempt_networks.iter().any(|net| net.prefix_len() == 0) {
            problems.push(
                "rate_limits.exempt_networks: a /0 range exempts every client; list your application servers"
                    .into(),
            );
        }
        problems
    }

    /// Copies the rate limit settings into the app's.
    pub fn apply_rate_limit_settings(&self, settings: &mut portcullis_app::AppSettings) {
        let r = &self.rate_limits;
        let minute = |limit| RatePolicy { limit, period: Duration::from_secs(60) };
        let d = &self.detection;
        let minutes = |m: u32| Duration::from_secs(u64::from(m) * 60);
        let seconds = |s: u32| Duration::from_secs(u64::from(s));
        settings.detection = portcullis_app::DetectionSettings {
            stuffing_accounts: d.stuffing_accounts,
            stuffing_window: minutes(d.stuffing_window_minutes),
            stuffing_block: minutes(d.stuffing_block_minutes),
            probing_forbidden: d.probing_forbidden,
            probing_window: seconds(d.probing_window_seconds),
            probing_response: match d.probing_response {
                ProbeResponseName::None => portcullis_app::ProbeResponse::None,
                ProbeResponseName::RevokeSession => portcullis_app::ProbeResponse::RevokeSession,
                ProbeResponseName::LockAccount => portcullis_app::ProbeResponse::LockAccount,
                ProbeResponseName::BlockIp => portcullis_app::ProbeResponse::BlockIp,
            },
            block_for: minutes(d.probing_block_minutes.max(1)),
            scanning_not_found: d.scanning_not_found,
            scanning_window: seconds(d.scanning_window_seconds),
            scanning_block: minutes(d.scanning_block_minutes),
            admin_new_ip: d.admin_new_ip,
        };
        let s = &mut settings.rate_limits;
        s.enabled = r.enabled;
        s.ip = minute(r.ip_per_minute);
        s.auth_ip = minute(r.auth_ip_per_minute);
        s.account = minute(r.account_per_minute);
        s.principal = minute(r.principal_per_minute);
        s.api_key = minute(r.api_key_per_minute);
        s.reset_mail = RatePolicy { limit: r.reset_mails_per_hour, period: Duration::from_secs(3600) };
        s.exempt_networks = r.exempt_networks.clone();
        let l = &self.lockout;
        let millis = |minutes: u32| i64::from(minutes) * 60_000;
        settings.lockout = portcullis_domain::LockoutPolicy {
            max_failures: l.max_failures,
            window_millis: millis(l.window_minutes),
            lock_millis: millis(l.lock_minutes),
            max_lock_millis: millis(l.max_lock_minutes),
        };
        let s = &mut settings.rate_limits;
        s.backend = match &self.redis.url {
            None => RateLimitBackendSettings::Local,
            Some(url) => RateLimitBackendSettings::Redis {
                url: SecretString::from(url.expose().to_owned()),
                prefix: self.redis.key_prefix.clone(),
                on_failure: match self.redis.on_failure {
                    FailureModeName::Open => FailureMode::Open,
                    FailureModeName::Closed => FailureMode::Closed,
                },
            },
        };
    }
}

/// Whether the Redis client would refuse the URL (checked at start, so a typo fails fast with the
/// key's name rather than on the first request).
fn redis_url_is_malformed(text: &str) -> bool {
    portcullis_app::redis_url_is_valid(text).is_err()
}
