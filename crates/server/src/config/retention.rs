//! `[retention]`: how long ended sessions, security events and never-confirmed accounts are kept
//! (audit events have their own `audit.retention_days`).

use portcullis_app::RetentionSettings;
use serde::{Deserialize, Serialize};

use super::Config;

/// Days to keep each kind of record; 0 keeps it forever.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Sessions revoked or expired this many days ago (and their refresh tokens).
    pub ended_sessions_days: u32,
    /// Security events older than this many days.
    pub security_events_days: u32,
    /// Member accounts created this many days ago that never confirmed their address nor logged in.
    pub unverified_accounts_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let d = RetentionSettings::default();
        Self {
            ended_sessions_days: d.ended_sessions_days,
            security_events_days: d.security_events_days,
            unverified_accounts_days: d.unverified_accounts_days,
        }
    }
}

impl Config {
    /// Problems with `[retention]`.
    pub(super) fn retention_problems(&self) -> Vec<String> {
        let r = &self.retention;
        [
            ("retention.ended_sessions_days", r.ended_sessions_days),
            ("retention.security_events_days", r.security_events_days),
            ("retention.unverified_accounts_days", r.unverified_accounts_days),
        ]
        .into_iter()
        .filter(|(_, days)| *days > 36_500)
        .map(|(key, _)| format!("{key}: must be 0 (keep forever) to 36500"))
        .collect()
    }

    /// The retention policies for the use cases.
    pub fn retention_settings(&self) -> RetentionSettings {
        let r = &self.retention;
        RetentionSettings {
            ended_sessions_days: r.ended_sessions_days,
            security_events_days: r.security_events_days,
            unverified_accounts_days: r.unverified_accounts_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_use_cases_and_absurd_periods_are_refused() {
        let config = Config::default();
        assert_eq!(config.retention_settings(), RetentionSettings::default());
        assert!(config.retention_problems().is_empty());
        let mut long = Config::default();
        long.retention.security_events_days = 40_000;
        assert_eq!(
            long.retention_problems(),
            vec!["retention.security_events_days: must be 0 (keep forever) to 36500"]
        );
    }
}
