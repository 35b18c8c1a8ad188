//! `[ip_rules]`: the fixed allow and deny networks of the configuration file. Administrators add
//! their own rules through `/v1/admin/ip-rules`; these are listed there as read-only `config` rules.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Config;

/// `[ip_rules]`: networks in CIDR notation (IPv4 or IPv6). Deny wins over allow; when `allow` is
/// non-empty only those networks get in; `admin_allow` restricts `/v1/admin/*` further. Judged on
/// the client address as resolved through `http.trusted_proxies`; the health probes are exempt.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRulesConfig {
    /// When non-empty, only these networks reach any route.
    pub allow: Vec<IpNet>,
    /// These networks reach no route.
    pub deny: Vec<IpNet>,
    /// When non-empty, only these networks reach `/v1/admin/*`.
    pub admin_allow: Vec<IpNet>,
}

impl Config {
    /// Problems with the IP rules in any mode.
    pub(super) fn ip_rule_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let r = &self.ip_rules;
        if r.deny.iter().any(|net| net.prefix_len() == 0) {
            problems.push(
                "ip_rules.deny: a /0 network refuses every client of its address family; list the networks to admit in ip_rules.allow instead"
                    .into(),
            );
        }
        let total = r.allow.len() + r.deny.len() + r.admin_allow.len();
        if total > portcullis_domain::MAX_ADMIN_IP_RULES {
            problems.push(format!(
                "ip_rules: at most {} networks in allow, deny and admin_allow together",
                portcullis_domain::MAX_ADMIN_IP_RULES
            ));
        }
        problems
    }

    /// Copies the IP rules into the app's settings.
    pub fn apply_ip_rule_settings(&self, settings: &mut portcullis_app::AppSettings) {
        let r = &self.ip_rules;
        settings.ip_rules = portcullis_app::IpRuleSettings {
            allow: r.allow.clone(),
            deny: r.deny.clone(),
            admin_allow: r.admin_allow.clone(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_rules_are_read_from_toml_and_a_deny_of_everything_is_a_problem() {
        let config: Config = toml::from_str(
            "[ip_rules]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndeny = [\"0.0.0.0/0\"]\nadmin_allow = [\"10.1.0.0/16\"]\n",
        )
        .unwrap();
        assert_eq!(config.ip_rules.allow.len(), 2);
        assert_eq!(config.ip_rules.admin_allow[0].to_string(), "10.1.0.0/16");
        assert!(config.ip_rule_problems().iter().any(|p| p.starts_with("ip_rules.deny")));
        let mut settings = portcullis_app::AppSettings::new(
            secrecy::SecretSlice::from(vec![7u8; 32]),
            portcullis_app::KekSet::parse(&format!("k:{}", "A".repeat(43))).unwrap(),
            "test",
            "https://id.example.com",
        );
        config.apply_ip_rule_settings(&mut settings);
        assert_eq!(settings.ip_rules.deny.len(), 1);
    }
}
