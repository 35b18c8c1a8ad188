//! The configuration of the audit trail: `[audit]`, its validation, and its translation into the
//! use cases' settings.

use std::path::PathBuf;

use portcullis_app::audit::AuditSettings;
use serde::{Deserialize, Serialize};

use super::Config;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A checkpoint is signed once this many events follow the last one.
    pub checkpoint_every: u64,
    /// ...or once this many seconds pass with any event after the last one.
    pub checkpoint_interval_secs: u64,
    /// A file each signed checkpoint is appended to (a JSON line): a copy outside the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_file: Option<PathBuf>,
    /// Events older than this many days are purged (0 keeps them forever).
    pub retention_days: u32,
    /// How often `serve` verifies the whole chain, in seconds (0 never).
    pub verify_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let defaults = AuditSettings::default();
        Self {
            checkpoint_every: defaults.checkpoint_every,
            checkpoint_interval_secs: u64::try_from(defaults.checkpoint_interval_millis / 1000)
                .unwrap_or(300),
            checkpoint_file: None,
            retention_days: defaults.retention_days,
            verify_interval_secs: defaults.verify_interval_secs,
        }
    }
}

impl Config {
    /// Problems with `[audit]`.
    pub(super) fn audit_problems(&self) -> Vec<String> {
        let a = &self.audit;
        let mut problems = Vec::new();
        if !(1..=1_000_000).contains(&a.checkpoint_every) {
            problems.push("audit.checkpoint_every: must be 1 to 1000000".into());
        }
        if !(1..=86_400).contains(&a.checkpoint_interval_secs) {
            problems.push("audit.checkpoint_interval_secs: must be 1 to 86400".into());
        }
        if a.retention_days > 36_500 {
            problems.push("audit.retention_days: must be 0 (keep forever) to 36500".into());
        }
        if a.verify_interval_secs != 0 && a.verify_interval_secs < 60 {
            problems.push("audit.verify_interval_secs: must be 0 (never) or at least 60".into());
        }
        if let Some(path) = &a.checkpoint_file
            && path.as_os_str().is_empty()
        {
            problems.push("audit.checkpoint_file: must be a path when given".into());
        }
        problems
    }

    /// The audit settings of the use cases.
    pub fn audit_settings(&self) -> AuditSettings {
        let a = &self.audit;
        AuditSettings {
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval_millis: i64::try_from(a.checkpoint_interval_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            retention_days: a.retention_days,
            verify_interval_secs: a.verify_interval_secs,
            checkpoint_file: a.checkpoint_file.clone(),
            ..AuditSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_audit_settings_are_named() {
        let mut config = Config::default();
        config.audit.checkpoint_every = 0;
        config.audit.checkpoint_interval_secs = 0;
        config.audit.retention_days = 40_000;
        config.audit.verify_interval_secs = 5;
        let problems = config.audit_problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(Config::default().audit_problems().is_empty());
    }
}
