//! `[backup]`: encrypted backups on a schedule, where they go, who can decrypt them, how long they are
//! kept, and the weekly restore drill (docs/decisions/0012-backups.md).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use portcullis_app::{BackupSettings, BackupTarget, FolderTarget};
use serde::{Deserialize, Serialize};

use super::{Config, Mode, Secret};

/// Where backups go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Files in `backup.folder`.
    #[default]
    Folder,
    /// Objects in an S3-compatible bucket.
    S3,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Whether `serve` takes backups on `schedule` (and prunes and drills); the CLI works either way.
    pub enabled: bool,
    /// When to take a backup: cron syntax (minute hour day-of-month month day-of-week), UTC.
    pub schedule: String,
    /// When to verify the newest backup by restoring it (the restore drill), cron syntax, UTC.
    pub drill_schedule: String,
    pub target: TargetKind,
    /// The folder target's directory; unset: `<data_dir>/backups`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// A key prefix inside the bucket (`portcullis/`).
    pub s3_prefix: String,
    /// An S3-compatible endpoint (MinIO, moto, a provider's URL); unset: AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_access_key_id: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_secret_access_key: Option<Secret>,
    /// age X25519 public keys (`age1…`); every backup is encrypted to all of them.
    pub recipients: Vec<String>,
    /// The age identity file (`age-keygen -o`) that `verify`, `restore` and the drill decrypt with.
    /// Keep it away from the backups; its content is never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    /// Instead of recipients, a passphrase (age's scrypt): backups decrypt with `age -d` and the
    /// passphrase typed in, and verify, restore and the drill need no identity file. A secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<Secret>,
    /// Days a backup is kept (0: forever)...
    pub retention_days: u32,
    /// ...but the newest this many are always kept (and the newest verified-good one).
    pub keep_min: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: "0 3 * * *".to_owned(),
            drill_schedule: "0 4 * * 0".to_owned(),
            target: TargetKind::Folder,
            folder: None,
            s3_bucket: None,
            s3_prefix: "portcullis/".to_owned(),
            s3_endpoint: None,
            s3_region: "us-east-1".to_owned(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            recipients: Vec::new(),
            identity_file: None,
            passphrase: None,
            retention_days: 30,
            keep_min: 7,
        }
    }
}

/// The shortest backup passphrase accepted: scrypt slows guessing, it does not make a short
/// passphrase strong.
pub const MIN_PASSPHRASE_CHARS: usize = 16;

impl BackupConfig {
    /// Whether backups have someone to be encrypted to: recipients or a passphrase.
    pub fn can_encrypt(&self) -> bool {
        !self.recipients.is_empty() || self.passphrase.is_some()
    }
}

/// A parsed cron schedule.
pub fn parse_schedule(text: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(text).map_err(|e| e.to_string())
}

impl Config {
    /// Problems with `[backup]` in any mode.
    pub(super) fn backup_problems(&self) -> Vec<String> {
        let b = &self.backup;
        let mut problems = Vec::new();
        for (key, value) in [("backup.schedule", &b.schedule), ("backup.drill_schedule", &b.drill_schedule)] {
            if let Err(e) = parse_schedule(value) {
                problems.push(format!("{key}: not a cron schedule ({e})"));
            }
        }
        if let Err(e) = portcullis_app::backup_recipients(&b.recipients) {
            problems.push(format!("backup.recipients: {e}"));
        }
        if let Some(passphrase) = &b.passphrase {
            if !b.recipients.is_empty() {
                problems.push("backup.passphrase: set recipients or a passphrase, not both (age encrypts to one or the other)".into());
            }
            if passphrase.expose().chars().count() < MIN_PASSPHRASE_CHARS {
                problems.push(format!("backup.passphrase: at least {MIN_PASSPHRASE_CHARS} characters"));
            }
        }
        if b.retention_days > 36_500 {
            problems.push("backup.retention_days: must be 0 (keep forever) to 36500".into());
        }
        // With none kept whatever their age, a schedule that stopped making backups would see prune
        // delete the last one.
        if b.keep_min == 0 {
            problems.push("backup.keep_min: at least 1".into());
        }
        if b.target == TargetKind::S3 && b.s3_bucket.as_deref().is_none_or(str::is_empty) {
            problems.push("backup.s3_bucket: required when backup.target is s3".into());
        }
        problems
    }

    /// Problems with `[backup]` that only production refuses.
    pub(super) fn backup_production_problems(&self) -> Vec<String> {
        if self.mode == Mode::Production && self.backup.enabled && !self.backup.can_encrypt() {
            vec!["backup.recipients: backups are enabled but no age recipient is set (generate one with `age-keygen`, set backup.passphrase, or set backup.enabled = false)".into()]
        } else {
            Vec::new()
        }
    }

    /// The backup settings for the use cases.
    pub fn backup_settings(&self) -> BackupSettings {
        let b = &self.backup;
        BackupSettings {
            recipients: b.recipients.clone(),
            identity_file: b.identity_file.clone(),
            passphrase: b.passphrase.as_ref().map(|p| secrecy::SecretString::from(p.expose().to_owned())),
            retention_days: b.retention_days,
            keep_min: b.keep_min,
            staging_dir: self.data_dir.join("backup-staging"),
        }
    }

    /// The target `[backup]` names.
    pub fn backup_target(&self) -> Result<Arc<dyn BackupTarget>, String> {
        let b = &self.backup;
        match b.target {
            TargetKind::Folder => {
                let folder = b.folder.clone().unwrap_or_else(|| self.data_dir.join("backups"));
                Ok(Arc::new(FolderTarget::new(folder)))
            }
            TargetKind::S3 => {
                let bucket =
                    b.s3_bucket.clone().ok_or("backup.s3_bucket: required when backup.target is s3")?;
                let target = portcullis_app::S3Target::new(portcullis_app::S3Settings {
                    bucket,
                    prefix: b.s3_prefix.clone(),
                    endpoint: b.s3_endpoint.clone(),
                    region: b.s3_region.clone(),
                    access_key_id: b.s3_access_key_id.as_ref().map(|s| s.expose().to_owned()),
                    secret_access_key: b
                        .s3_secret_access_key
                        .as_ref()
                        .map(|s| secrecy::SecretString::from(s.expose().to_owned())),
                })?;
                Ok(Arc::new(target))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_production_needs_a_recipient_while_enabled() {
        let mut config = Config::default();
        assert!(config.backup_problems().is_empty(), "{:?}", config.backup_problems());
        config.mode = Mode::Production;
        assert_eq!(config.backup_production_problems().len(), 1);
        config.backup.enabled = false;
        assert!(config.backup_production_problems().is_empty());
    }

    #[test]
    fn a_passphrase_stands_in_for_recipients_but_not_beside_them_and_not_short() {
        let mut config = Config { mode: Mode::Production, ..Config::default() };
        config.backup.passphrase = Some(Secret::new("sixteen chars ok".into()));
        assert!(config.backup_problems().is_empty(), "{:?}", config.backup_problems());
        assert!(config.backup_production_problems().is_empty(), "a passphrase is enough");
        assert!(config.backup_settings().passphrase.is_some());

        config.backup.passphrase = Some(Secret::new("fifteen chars!!".into()));
        let short = config.backup_problems();
        assert_eq!(short, vec!["backup.passphrase: at least 16 characters".to_owned()]);
        assert!(!format!("{short:?}").contains("fifteen"), "never echoed");

        config.backup.keep_min = 0;
        assert!(config.backup_problems().contains(&"backup.keep_min: at least 1".to_owned()));
        config.backup.keep_min = 7;

        config.backup.passphrase = Some(Secret::new("sixteen chars ok".into()));
        // The example recipient of age's own documentation.
        config.backup.recipients =
            vec!["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into()];
        let both = config.backup_problems();
        assert!(
            both.iter().any(|p| p.starts_with("backup.passphrase: set recipients or a passphrase")),
            "{both:?}"
        );
    }

    #[test]
    fn the_default_schedules_fire_daily_at_three_and_on_sundays_at_four_utc() {
        let config = Config::default();
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&chrono::Utc);
        // 2026-12-07 is a Monday.
        let now = at("2026-12-07T02:59:59Z");
        let daily = parse_schedule(&config.backup.schedule).unwrap();
        assert_eq!(daily.find_next_occurrence(&now, false).unwrap(), at("2026-12-07T03:00:00Z"));
        let drill = parse_schedule(&config.backup.drill_schedule).unwrap();
        assert_eq!(drill.find_next_occurrence(&now, false).unwrap(), at("2026-12-13T04:00:00Z"));
    }

    #[test]
    fn a_wrong_schedule_or_recipient_is_named() {
        let mut config = Config::default();
        config.backup.schedule = "every day".into();
        config.backup.recipients = vec!["age1nope".into()];
        let problems = config.backup_problems();
        assert!(problems.iter().any(|p| p.starts_with("backup.schedule:")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("backup.recipients:")), "{problems:?}");
    }
}
