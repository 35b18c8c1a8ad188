//! The configuration of error tracking: `[sentry]` (where error events go, how they are labelled, how
//! many are sent), its validation, and production's rule that events travel encrypted.

use std::borrow::Cow;

use ::sentry::types::{Dsn, Scheme};
use serde::{Deserialize, Serialize};

use super::{Config, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentryConfig {
    /// Where events go, `https://<public key>@<host>/<project id>`; error tracking is off when unset.
    /// A secret: whoever holds it can file events into the project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsn: Option<Secret>,
    /// The environment events are filed under; the mode (`production`, `development`) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The release events are filed under; `portcullis@<version>` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The share of error events sent, 0.0 to 1.0.
    pub sample_rate: f32,
    /// How many of a request's last info and warning lines ride along with its error event as
    /// breadcrumbs (0 to 100; 0 sends none).
    pub max_breadcrumbs: usize,
    /// The server name events carry; the host name when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// How long shutdown waits for queued events to be sent, in seconds (0 to 60).
    pub shutdown_timeout_secs: u64,
}

impl Default for SentryConfig {
    fn default() -> Self {
        Self {
            dsn: None,
            environment: None,
            release: None,
            sample_rate: 1.0,
            max_breadcrumbs: 20,
            server_name: None,
            shutdown_timeout_secs: 2,
        }
    }
}

/// Sentry's own rules for environment and release names (its "Environments" and "Releases" docs):
/// what it would refuse or file somewhere surprising is refused here, at start.
fn name_problem(key: &str, value: &str, max: usize, slash_allowed: bool) -> Option<String> {
    let bad_char = |c: char| c.is_control() || c == '\\' || (!slash_allowed && c == '/');
    if value.trim().is_empty() || value.len() > max || value.chars().any(bad_char) {
        let slash = if slash_allowed { "" } else { ", '/'" };
        Some(format!("{key}: must be 1 to {max} characters without control characters, '\\'{slash}"))
    } else if matches!(value, "." | ".." | "None") {
        Some(format!("{key}: {value:?} is reserved by Sentry"))
    } else {
        None
    }
}

impl Config {
    /// The DSN, parsed; `None` when error tracking is off. Its error names the key and the reason,
    /// never the value.
    pub fn sentry_dsn(&self) -> Result<Option<Dsn>, String> {
        let Some(dsn) = &self.sentry.dsn else { return Ok(None) };
        dsn.expose().trim().parse::<Dsn>().map(Some).map_err(|reason| {
            format!(
                "sentry.dsn: not a valid DSN ({reason}); expected https://<public key>@<host>/<project id>"
            )
        })
    }

    /// The environment events are filed under.
    pub fn sentry_environment(&self) -> Cow<'static, str> {
        match &self.sentry.environment {
            Some(environment) => Cow::Owned(environment.clone()),
            None => Cow::Owned(self.mode.to_string()),
        }
    }

    /// The release events are filed under.
    pub fn sentry_release(&self) -> Cow<'static, str> {
        match &self.sentry.release {
            Some(release) => Cow::Owned(release.clone()),
            None => Cow::Owned(format!("portcullis@{}", crate::VERSION)),
        }
    }

    /// Problems with `[sentry]`.
    pub(super) fn sentry_problems(&self) -> Vec<String> {
        let s = &self.sentry;
        let mut problems = Vec::new();
        if let Err(problem) = self.sentry_dsn() {
            problems.push(problem);
        }
        if let Some(environment) = &s.environment {
            problems.extend(name_problem("sentry.environment", environment, 64, false));
        }
        if let Some(release) = &s.release {
            problems.extend(name_problem("sentry.release", release, 200, false));
        }
        if let Some(server_name) = &s.server_name {
            problems.extend(name_problem("sentry.server_name", server_name, 255, true));
        }
        if !(0.0..=1.0).contains(&s.sample_rate) {
            problems.push("sentry.sample_rate: must be 0.0 to 1.0".into());
        }
        if s.max_breadcrumbs > 100 {
            problems.push("sentry.max_breadcrumbs: must be 0 to 100".into());
        }
        if s.shutdown_timeout_secs > 60 {
            problems.push("sentry.shutdown_timeout_secs: must be 0 to 60".into());
        }
        problems
    }

    /// Production sends events (error chains, stack traces) only over TLS, unless to a relay on
    /// this machine.
    pub(super) fn sentry_production_problems(&self) -> Vec<String> {
        let Ok(Some(dsn)) = self.sentry_dsn() else { return Vec::new() };
        let host = dsn.host().trim_start_matches('[').trim_end_matches(']');
        let local = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if dsn.scheme() == Scheme::Http && !local {
            vec!["sentry.dsn: production sends events over https only (plain http to a loopback relay is allowed)".into()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::{Mode, load_from};

    const DSN: &str = "https://canarypublickey0123456789@o1.ingest.example.com/42";

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn error_tracking_is_off_by_default_and_labelled_by_mode_and_version() {
        let config = Config::default();
        assert!(config.sentry_dsn().unwrap().is_none());
        assert_eq!(config.sentry_environment(), "development");
        assert_eq!(config.sentry_release(), format!("portcullis@{}", crate::VERSION));
        let config = Config { mode: Mode::Production, ..Config::default() };
        assert_eq!(config.sentry_environment(), "production");
        assert!(config.sentry_problems().is_empty());
    }

    #[test]
    fn the_dsn_is_a_secret_that_can_come_from_a_file_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dsn");
        std::fs::write(&file, format!("{DSN}\n")).unwrap();
        let config = load_from(
            &GlobalArgs::default(),
            env(&[("PORTCULLIS_SENTRY__DSN_FILE", file.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(config.sentry.dsn.as_ref().unwrap().expose(), DSN);
        assert_eq!(config.sentry_dsn().unwrap().unwrap().project_id().value(), "42");
        assert_eq!(config.secret_files, vec![("sentry.dsn".into(), file)]);
        let text = format!("{}{:?}", config.to_masked_toml(), config);
        assert!(!text.contains("canarypublickey"), "{text}");
    }

    #[test]
    fn a_dsn_that_does_not_parse_is_refused_without_echoing_it() {
        for bad in ["not a url canary", "https://o1.ingest.example.com/42", "ftp://canary@example.com/1"] {
            let err = load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_SENTRY__DSN", bad)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("sentry.dsn"), "{text}");
            assert!(!text.contains("canary") && !text.contains("o1.ingest"), "{text}");
        }
    }

    #[test]
    fn bad_sentry_settings_are_named() {
        let mut config = Config::default();
        config.sentry.sample_rate = 1.5;
        config.sentry.max_breadcrumbs = 101;
        config.sentry.shutdown_timeout_secs = 61;
        config.sentry.environment = Some("prod/eu".into());
        config.sentry.release = Some("..".into());
        config.sentry.server_name = Some("a\nb".into());
        let problems = config.sentry_problems();
        assert_eq!(problems.len(), 6, "{problems:?}");
        config.sentry.sample_rate = f32::NAN;
        assert!(config.sentry_problems().iter().any(|p| p.starts_with("sentry.sample_rate")));
    }

    #[test]
    fn production_sends_events_over_https_or_to_a_loopback_relay_only() {
        let mut config = Config { mode: Mode::Production, ..Config::default() };
        for (dsn, refused) in [
            (DSN, false),
            ("http://key@sentry.internal/1", true),
            ("http://key@127.0.0.1:9000/1", false),
            ("http://key@[::1]:9000/1", false),
            ("http://key@localhost/1", false),
        ] {
            config.sentry.dsn = Some(Secret::new(dsn.into()));
            assert_eq!(!config.sentry_production_problems().is_empty(), refused, "{dsn}");
        }
    }
}
