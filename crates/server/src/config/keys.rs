//! The configuration of the keyring: `[keys]`, its validation, and its translation into the use
//! cases' settings.

use portcullis_app::{KekSet, KeySettings};
use serde::{Deserialize, Serialize};

use super::{Config, Mode, Secret};

/// The KEK shown in config/example.toml (base64url of "example-only-kek-never-use-this!"), refused in
/// production.
const EXAMPLE_KEK: &str = "ZXhhbXBsZS1vbmx5LWtlay1uZXZlci11c2UtdGhpcyE";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The key-encryption keys, `id:base64` entries, the active one first. A secret; generated into
    /// the data dir in development.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kek: Option<Secret>,
    pub signing_rotation_days: u32,
    pub signing_publish_ahead_hours: u32,
    pub reencrypt_batch_size: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        let defaults = KeySettings::default();
        Self {
            kek: None,
            signing_rotation_days: u32::try_from(defaults.signing_rotation_millis / 86_400_000).unwrap_or(30),
            signing_publish_ahead_hours: u32::try_from(defaults.signing_publish_ahead_millis / 3_600_000)
                .unwrap_or(24),
            reencrypt_batch_size: defaults.reencrypt_batch,
        }
    }
}

impl Config {
    /// Problems with `[keys]` in any mode.
    pub(super) fn key_problems(&self) -> Vec<String> {
        let k = &self.keys;
        let mut problems = Vec::new();
        if let Some(kek) = &k.kek
            && let Err(e) = KekSet::parse(kek.expose())
        {
            problems.push(format!("keys.kek: {e}"));
        }
        if !(1..=365).contains(&k.signing_rotation_days) {
            problems.push("keys.signing_rotation_days: must be 1 to 365".into());
        }
        if u64::from(k.signing_publish_ahead_hours) >= u64::from(k.signing_rotation_days) * 24 {
            problems.push(
                "keys.signing_publish_ahead_hours: must be shorter than keys.signing_rotation_days".into(),
            );
        }
        if !(1..=10_000).contains(&k.reencrypt_batch_size) {
            problems.push("keys.reencrypt_batch_size: must be 1 to 10000".into());
        }
        problems
    }

    /// Problems with `[keys]` that only production refuses.
    pub(super) fn key_production_problems(&self) -> Vec<String> {
        if self.mode != Mode::Production {
            return Vec::new();
        }
        match &self.keys.kek {
            None => vec![
                "keys.kek / PORTCULLIS_KEYS__KEK(_FILE): missing; production does not generate the \
                 key-encryption key (`portcullis keys generate-kek` prints one)"
                    .into(),
            ],
            Some(kek) if kek.expose().contains(EXAMPLE_KEK) => vec![
                "keys.kek: holds the example key from the documentation; generate your own \
                 (`portcullis keys generate-kek --id ID`)"
                    .into(),
            ],
            Some(_) => Vec::new(),
        }
    }

    /// The rotation settings.
    pub fn key_settings(&self) -> KeySettings {
        let k = &self.keys;
        KeySettings {
            signing_rotation_millis: i64::from(k.signing_rotation_days) * 86_400_000,
            signing_publish_ahead_millis: i64::from(k.signing_publish_ahead_hours) * 3_600_000,
            reencrypt_batch: k.reencrypt_batch_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_settings_are_named_and_the_kek_is_never_echoed() {
        let mut config = Config::default();
        config.keys.kek = Some(Secret::new("k1:c2hvcnQ".into()));
        config.keys.signing_rotation_days = 1;
        config.keys.signing_publish_ahead_hours = 24;
        config.keys.reencrypt_batch_size = 0;
        let problems = config.key_problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("keys.kek:") && !problems[0].contains("c2hvcnQ"));
        assert!(problems[1].starts_with("keys.signing_publish_ahead_hours"));
        assert!(problems[2].starts_with("keys.reencrypt_batch_size"));
    }

    #[test]
    fn production_needs_a_configured_kek() {
        let mut config = Config { mode: Mode::Production, ..Config::default() };
        assert_eq!(config.key_production_problems().len(), 1);
        config.keys.kek = Some(Secret::new(format!("k1:{}", "A".repeat(43))));
        assert!(config.key_production_problems().is_empty());
        config.keys.kek = Some(Secret::new(format!("k2:{}, k1:{EXAMPLE_KEK}", "A".repeat(43))));
        assert!(config.key_production_problems()[0].contains("example key"));
    }
}
