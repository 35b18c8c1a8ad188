//! The configuration of second factors: `[mfa]` (TOTP parameters, who must use a second factor,
//! challenge and step-up lifetimes, the passkey relying party), its validation, and its translation
//! into the use cases' settings.

use portcullis_app::{MfaSettings, PasskeySettings};
use portcullis_domain::{BuiltinRole, MfaPolicy, TotpParams};
use serde::{Deserialize, Serialize};

use super::Config;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// Built-in roles whose holders must use a second factor (`owner`, `admin`, `auditor`, `member`).
    pub required_roles: Vec<String>,
    /// The issuer authenticator apps show.
    pub totp_issuer: String,
    /// TOTP code length (6 to 8).
    pub totp_digits: u8,
    /// TOTP time step in seconds.
    pub totp_period_secs: u32,
    /// Steps of clock skew accepted either side (0 to 2).
    pub totp_skew_steps: u8,
    /// How long a login's second-factor challenge stays open, in seconds.
    pub challenge_ttl_secs: i64,
    /// Wrong answers that close a challenge.
    pub max_challenge_failures: u32,
    /// How recent an authentication sensitive actions need, in seconds.
    pub reauthentication_max_age_secs: i64,
    /// The WebAuthn relying-party id; the public URL's host when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey_rp_id: Option<String>,
    /// The name authenticators show for this server.
    pub passkey_rp_name: String,
    /// Whether a passkey alone may log in, without a password.
    pub passkey_login: bool,
}

impl Default for MfaConfig {
    fn default() -> Self {
        let defaults = MfaSettings::default();
        Self {
            required_roles: Vec::new(),
            totp_issuer: defaults.issuer,
            totp_digits: defaults.totp.digits,
            totp_period_secs: defaults.totp.period_secs,
            totp_skew_steps: defaults.totp.skew_steps,
            challenge_ttl_secs: defaults.challenge_ttl_secs,
            max_challenge_failures: defaults.max_challenge_failures,
            reauthentication_max_age_secs: defaults.reauthentication_max_age_secs,
            passkey_rp_id: None,
            passkey_rp_name: defaults.passkeys.rp_name,
            passkey_login: defaults.passkey_login,
        }
    }
}

/// The host of a URL (lower case), without scheme, port or path.
fn public_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    // An IPv6 literal keeps its brackets (and can never match a domain); otherwise the port goes.
    let host =
        if host.starts_with('[') { host.split_inclusive(']').next()? } else { host.split(':').next()? };
    Some(host.to_ascii_lowercase())
}

impl Config {
    /// Problems with `[mfa]`.
    pub(super) fn mfa_problems(&self) -> Vec<String> {
        let m = &self.mfa;
        let mut problems = Vec::new();
        for role in &m.required_roles {
            if BuiltinRole::parse(role).is_none() {
                problems.push(format!(
                    "mfa.required_roles: {role:?} is not a built-in role (owner, admin, auditor, member)"
                ));
            }
        }
        if m.totp_issuer.trim().is_empty() || m.totp_issuer.contains(':') || m.totp_issuer.len() > 64 {
            problems.push("mfa.totp_issuer: must be 1 to 64 characters without ':'".into());
        }
        if !(6..=8).contains(&m.totp_digits) {
            problems.push("mfa.totp_digits: must be 6 to 8".into());
        }
        if !(15..=120).contains(&m.totp_period_secs) {
            problems.push("mfa.totp_period_secs: must be 15 to 120".into());
        }
        if m.totp_skew_steps > 2 {
            problems.push("mfa.totp_skew_steps: must be 0 to 2".into());
        }
        if !(30..=3600).contains(&m.challenge_ttl_secs) {
            problems.push("mfa.challenge_ttl_secs: must be 30 to 3600".into());
        }
        if !(1..=20).contains(&m.max_challenge_failures) {
            problems.push("mfa.max_challenge_failures: must be 1 to 20".into());
        }
        if !(60..=86_400).contains(&m.reauthentication_max_age_secs) {
            problems.push("mfa.reauthentication_max_age_secs: must be 60 to 86400".into());
        }
        if let Some(id) = m.passkey_rp_id.as_deref() {
            if id.is_empty() || id.contains(['/', ':']) {
                problems.push("mfa.passkey_rp_id: must be a domain name".into());
            } else if let Some(host) = self.http.public_url.as_deref().and_then(public_host) {
                // WebAuthn binds a credential to a domain the page's origin belongs to (the host or a
                // parent domain of it); anything else makes every ceremony fail.
                if host != id && !host.ends_with(&format!(".{id}")) {
                    problems.push(format!(
                        "mfa.passkey_rp_id: {id:?} is neither the host of http.public_url ({host}) nor a parent domain of it"
                    ));
                }
            }
        }
        problems
    }

    /// The second-factor settings of the use cases.
    pub fn mfa_settings(&self) -> MfaSettings {
        let m = &self.mfa;
        MfaSettings {
            totp: TotpParams {
                digits: m.totp_digits,
                period_secs: m.totp_period_secs,
                skew_steps: m.totp_skew_steps,
            },
            issuer: m.totp_issuer.clone(),
            policy: MfaPolicy {
                required_roles: m.required_roles.iter().filter_map(|r| BuiltinRole::parse(r)).collect(),
            },
            challenge_ttl_secs: m.challenge_ttl_secs,
            max_challenge_failures: m.max_challenge_failures,
            reauthentication_max_age_secs: m.reauthentication_max_age_secs,
            passkeys: PasskeySettings { rp_id: m.passkey_rp_id.clone(), rp_name: m.passkey_rp_name.clone() },
            passkey_login: m.passkey_login,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passkey_relying_party_must_be_the_public_host_or_a_parent_domain_of_it() {
        let mut config = Config::default();
        config.http.public_url = Some("https://id.example.com:8443/base".into());
        for (rp_id, ok) in
            [("id.example.com", true), ("example.com", true), ("ample.com", false), ("other.test", false)]
        {
            config.mfa.passkey_rp_id = Some(rp_id.into());
            assert_eq!(config.mfa_problems().is_empty(), ok, "{rp_id}");
        }
        config.mfa.passkey_rp_id = Some("https://example.com".into());
        assert!(!config.mfa_problems().is_empty());
        assert_eq!(public_host("http://[::1]:8080/").as_deref(), Some("[::1]"));
        assert_eq!(public_host("https://user@Host.Example:1/").as_deref(), Some("host.example"));
    }

    #[test]
    fn mfa_settings_follow_the_configuration_and_refuse_unknown_roles() {
        let mut config = Config::default();
        config.mfa.required_roles = vec!["admin".into(), "root".into()];
        config.mfa.totp_digits = 9;
        let problems = config.mfa_problems();
        assert!(problems.iter().any(|p| p.contains("\"root\" is not a built-in role")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("mfa.totp_digits")), "{problems:?}");
        config.mfa.required_roles = vec!["admin".into()];
        config.mfa.passkey_login = true;
        let settings = config.mfa_settings();
        assert_eq!(settings.policy.required_roles, vec![BuiltinRole::Admin]);
        assert!(settings.passkey_login);
    }
}
