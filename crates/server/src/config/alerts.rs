//! The configuration of alerts: `[alerts]` with its `[[alerts.webhooks]]` and `[[alerts.emails]]`
//! sinks, their validation, and their translation into the use cases' [`AlertSettings`].
//!
//! A webhook's signing secret is `secret` (inline) or `secret_file` (a file holding it, the `*_FILE`
//! convention for entries of a list, which environment variables cannot address). Both are masked in
//! `config check`, and so is the path of a webhook URL, which for chat webhooks is a credential.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_app::{AlertSettings, EmailSink, RetryPolicy, WebhookSink};
use portcullis_domain::{Email, SecurityEventKind, Severity};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

use super::{Config, ConfigError, Mode, Secret};

/// A severity as configured (`alerts.min_severity`, `alerts.severity.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeverityName {
    Low,
    Medium,
    High,
    Critical,
}

impl From<SeverityName> for Severity {
    fn from(name: SeverityName) -> Self {
        match name {
            SeverityName::Low => Severity::Low,
            SeverityName::Medium => Severity::Medium,
            SeverityName::High => Severity::High,
            SeverityName::Critical => Severity::Critical,
        }
    }
}

/// `[alerts]`: which security events alert, how repeats coalesce, and the sinks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Events below this severity do not alert.
    pub min_severity: SeverityName,
    /// Repeats of one kind and cause within this many seconds after an alert are counted, not sent.
    pub cooldown_secs: u64,
    /// Alerts waiting for delivery; beyond it new ones are dropped and counted.
    pub queue_capacity: usize,
    /// Severity overrides by event kind: `{ login_failed = "high" }`.
    pub severity: BTreeMap<String, SeverityName>,
    pub webhooks: Vec<WebhookConfig>,
    pub emails: Vec<EmailAlertConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        let d = AlertSettings::default();
        Self {
            min_severity: SeverityName::High,
            cooldown_secs: d.cooldown.as_secs(),
            queue_capacity: d.queue_capacity,
            severity: BTreeMap::new(),
            webhooks: Vec::new(),
            emails: Vec::new(),
        }
    }
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Names the sink in logs and dead letters.
    pub name: String,
    /// `https://…`; plain `http://` only to a loopback address.
    #[serde(serialize_with = "masked_url")]
    pub url: String,
    /// The HMAC-SHA256 key of the `Portcullis-Signature` header; or `secret_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        Self {
            name: String::new(),
            url: String::new(),
            secret: None,
            secret_file: None,
            timeout_secs: 5,
            max_attempts: retry.max_attempts,
            backoff_base_ms: u64::try_from(retry.backoff_base.as_millis()).unwrap_or(1000),
            backoff_max_secs: retry.backoff_max.as_secs(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    // A derived Debug would print the URL, whose path may be a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &mask_url(&self.url))
            .field("secret", &self.secret)
            .field("secret_file", &self.secret_file)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("backoff_max_secs", &self.backoff_max_secs)
            .finish()
    }
}

/// One `[[alerts.emails]]` entry: operators who get alerts through `[email]`'s transport.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailAlertConfig {
    pub name: String,
    pub recipients: Vec<String>,
}

/// `scheme://host[:port]` and a mask for whatever followed: the path and query may hold a token,
/// and user info a password.
fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.is_empty() { String::new() } else { "********".into() };
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let hidden = authority.contains('@') || rest.len() > authority.len();
    format!("{scheme}://{host}{}", if hidden { "/********" } else { "" })
}

fn masked_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_url(url))
}

impl Config {
    /// Problems with `[alerts]` in any mode: each names its key (`alerts.webhooks[0].url`).
    pub(super) fn alert_problems(&self) -> Vec<String> {
        match self.alert_settings() {
            Ok(_) => Vec::new(),
            Err(error) => error.problems,
        }
    }

    /// Alert settings that production refuses: short or example webhook secrets, and secret files
    /// (or a configuration file holding an inline secret) that other users can read.
    pub(super) fn alert_production_problems(&self) -> Vec<String> {
        if self.mode != Mode::Production {
            return Vec::new();
        }
        let mut problems = Vec::new();
        let mut inline = false;
        for (i, webhook) in self.alerts.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            if let Ok(secret) = read_secret(&key, webhook) {
                problems.extend(super::secret_problem(&format!("{key}.secret"), &secret));
            }
            inline |= webhook.secret.is_some();
            if let Some(path) = &webhook.secret_file {
                problems.extend(private_file_problem(&format!("{key}.secret_file"), path));
            }
        }
        // A file that holds one of the top-level secrets is checked with them already.
        if let (true, Some((path, false))) = (inline, &self.config_file) {
            problems.extend(private_file_problem("--config (holds alerts.webhooks secrets)", path));
        }
        problems
    }

    /// The use cases' alert settings; every problem is reported at once, each naming its key.
    /// Secret files are read here (and at validation), never logged.
    pub fn alert_settings(&self) -> Result<AlertSettings, ConfigError> {
        let a = &self.alerts;
        let mut problems = Vec::new();
        if a.cooldown_secs > 86_400 {
            problems.push("alerts.cooldown_secs: must be between 0 and 86400".into());
        }
        if !(1..=100_000).contains(&a.queue_capacity) {
            problems.push("alerts.queue_capacity: must be between 1 and 100000".into());
        }
        let mut severity_overrides = Vec::new();
        for (name, severity) in &a.severity {
            match SecurityEventKind::parse(name) {
                Some(kind) => severity_overrides.push((kind, Severity::from(*severity))),
                None => {
                    let kinds: Vec<&str> = SecurityEventKind::ALL.iter().map(|k| k.as_str()).collect();
                    problems.push(format!(
                        "alerts.severity.{name}: not a security event kind; use one of {}",
                        kinds.join(", ")
                    ));
                }
            }
        }
        let mut names = BTreeSet::new();
        let mut webhooks = Vec::new();
        for (i, webhook) in a.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            if !webhook.name.is_empty() && !names.insert(webhook.name.clone()) {
                problems.push(format!("{key}.name: \"{}\" names another sink too", webhook.name));
            }
            match webhook_sink(&key, webhook) {
                Ok(sink) => webhooks.push(sink),
                Err(mut more) => problems.append(&mut more),
            }
        }
        let mut emails = Vec::new();
        for (i, email) in a.emails.iter().enumerate() {
            let key = format!("alerts.emails[{i}]");
            if !email.name.is_empty() && !names.insert(email.name.clone()) {
                problems.push(format!("{key}.name: \"{}\" names another sink too", email.name));
            }
            let mut recipients = Vec::new();
            for recipient in &email.recipients {
                match Email::parse(recipient) {
                    Ok(address) => recipients.push(address),
                    Err(_) => {
                        problems.push(format!("{key}.recipients: \"{recipient}\" is not an email address"))
                    }
                }
            }
            match EmailSink::new(&email.name, recipients) {
                Ok(sink) => emails.push(sink),
                Err(portcullis_app::AlertSinkError::InvalidName) => {
                    problems.push(format!("{key}.name: {}", portcullis_app::AlertSinkError::InvalidName));
                }
                Err(e) if email.recipients.is_empty() => problems.push(format!("{key}.recipients: {e}")),
                // A recipient that did not parse is reported above.
                Err(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(AlertSettings {
            webhooks,
            emails,
            min_severity: a.min_severity.into(),
            severity_overrides,
            cooldown: Duration::from_secs(a.cooldown_secs),
            queue_capacity: a.queue_capacity,
        })
    }
}

/// The sink for one webhook entry, or every problem with it.
fn webhook_sink(key: &str, webhook: &WebhookConfig) -> Result<WebhookSink, Vec<String>> {
    let mut problems = Vec::new();
    for (field, value, range) in [
        ("timeout_secs", webhook.timeout_secs, 1..=60),
        ("max_attempts", u64::from(webhook.max_attempts), 1..=20),
        ("backoff_base_ms", webhook.backoff_base_ms, 1..=600_000),
        ("backoff_max_secs", webhook.backoff_max_secs, 1..=3600),
    ] {
        if !range.contains(&value) {
            problems.push(format!("{key}.{field}: must be between {} and {}", range.start(), range.end()));
        }
    }
    if webhook.backoff_base_ms > webhook.backoff_max_secs.saturating_mul(1000) {
        problems.push(format!("{key}.backoff_base_ms: must not exceed backoff_max_secs"));
    }
    let secret = read_secret(key, webhook).map_err(|problem| problems.push(problem)).ok();
    let sink =
        match WebhookSink::new(&webhook.name, &webhook.url, SecretString::from(secret.unwrap_or_default())) {
            Ok(sink) => Some(sink),
            Err(error @ portcullis_app::AlertSinkError::InvalidName) => {
                problems.push(format!("{key}.name: {error}"));
                None
            }
            Err(error @ portcullis_app::AlertSinkError::EmptySecret) => {
                // A missing or unreadable secret is reported by `read_secret` already.
                if !problems.iter().any(|p| p.contains(".secret")) {
                    problems.push(format!("{key}.secret: {error}"));
                }
                None
            }
            // The URL is not repeated: its path may be a credential.
            Err(error) => {
                problems.push(format!("{key}.url: {error}"));
                None
            }
        };
    match sink {
        Some(mut sink) if problems.is_empty() => {
            sink.timeout = Duration::from_secs(webhook.timeout_secs);
            sink.retry = RetryPolicy {
                max_attempts: webhook.max_attempts,
                backoff_base: Duration::from_millis(webhook.backoff_base_ms),
                backoff_max: Duration::from_secs(webhook.backoff_max_secs),
            };
            Ok(sink)
        }
        _ => Err(problems),
    }
}

/// The webhook's secret, from `secret` or from the file `secret_file` names (one trailing newline
/// dropped, as for the other `*_FILE` secrets).
fn read_secret(key: &str, webhook: &WebhookConfig) -> Result<String, String> {
    match (&webhook.secret, &webhook.secret_file) {
        (Some(secret), None) => Ok(secret.expose().to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{key}.secret_file: cannot read {}: {e}", path.display()))?;
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            Ok(secret.strip_suffix('\r').unwrap_or(secret).to_owned())
        }
        (Some(_), Some(_)) => Err(format!("{key}.secret and {key}.secret_file: set one of them, not both")),
        (None, None) => Err(format!(
            "{key}.secret / {key}.secret_file: missing; receivers verify alerts with it \
             (`openssl rand -base64 48` makes one)"
        )),
    }
}

/// Why a file holding a secret is unsafe: readable by other users, a symbolic link, or someone
/// else's.
fn private_file_problem(key: &str, path: &std::path::Path) -> Option<String> {
    if let Some(mode) = super::mode_of(path)
        && mode & 0o077 != 0
    {
        return Some(format!(
            "{key}: {} has mode {:o}; it must not be readable by other users (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    super::ownership_problem(key, path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::load_from;

    const SECRET: &str = "whsec-canary-0123456789abcdef0123456789";

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let flags = GlobalArgs { config: Some(file.path().into()), ..Default::default() };
        load_from(&flags, BTreeMap::new())
    }

    fn error_of(text: &str) -> String {
        load_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn with_nothing_set_no_sink_is_configured_and_high_events_would_alert() {
        let settings = load_from(&GlobalArgs::default(), BTreeMap::new()).unwrap().alert_settings().unwrap();
        assert!(settings.webhooks.is_empty() && settings.emails.is_empty());
        assert_eq!(settings.min_severity, Severity::High);
        assert_eq!(settings.cooldown, Duration::from_secs(600));
    }

    #[test]
    fn webhooks_emails_and_severities_reach_the_use_cases() {
        let config = load_toml(&format!(
            r#"
            [alerts]
            min_severity = "medium"
            cooldown_secs = 60
            severity = {{ login_failed = "critical" }}

            [[alerts.webhooks]]
            name = "pager"
            url = "https://hooks.example.com/portcullis"
            secret = "{SECRET}"
            max_attempts = 3
            backoff_base_ms = 250

            [[alerts.emails]]
            name = "ops"
            recipients = ["ops@example.com", "security@example.com"]
            "#
        ))
        .unwrap();
        let settings = config.alert_settings().unwrap();
        assert_eq!(settings.min_severity, Severity::Medium);
        assert_eq!(settings.cooldown, Duration::from_secs(60));
        assert_eq!(settings.severity_of(SecurityEventKind::LoginFailed), Severity::Critical);
        let [pager] = settings.webhooks.try_into().unwrap();
        assert_eq!((pager.name.as_str(), pager.timeout), ("pager", Duration::from_secs(5)));
        assert_eq!(pager.origin(), "https://hooks.example.com");
        assert_eq!(pager.retry.max_attempts, 3);
        assert_eq!(pager.retry.backoff_base, Duration::from_millis(250));
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pager.secret), SECRET);
        let [ops] = settings.emails.try_into().unwrap();
        assert_eq!(ops.recipients.len(), 2);
    }

    #[test]
    fn the_minimum_and_overrides_can_come_from_the_environment() {
        let env = [
            ("PORTCULLIS_ALERTS__MIN_SEVERITY".to_owned(), "critical".to_owned()),
            ("PORTCULLIS_ALERTS__SEVERITY__SCANNING".to_owned(), "critical".to_owned()),
        ]
        .into();
        let settings = load_from(&GlobalArgs::default(), env).unwrap().alert_settings().unwrap();
        assert_eq!(settings.min_severity, Severity::Critical);
        assert_eq!(settings.severity_of(SecurityEventKind::Scanning), Severity::Critical);
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{SECRET}").unwrap();
        let config = load_toml(&format!(
            "[[alerts.webhooks]]\nname = \"pager\"\nurl = \"https://h.example/x\"\nsecret_file = \"{}\"\n",
            file.path().display()
        ))
        .unwrap();
        let [pager] = config.alert_settings().unwrap().webhooks.try_into().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pager.secret), SECRET, "the newline is dropped");
    }

    #[test]
    fn bad_alert_settings_are_refused_by_key_without_echoing_the_url_or_secret() {
        for (toml, named) in [
            ("[alerts]\nmin_severity = \"urgent\"\n", "alerts.min_severity"),
            ("[alerts]\ncooldown_secs = 100000\n", "alerts.cooldown_secs"),
            ("[alerts]\nqueue_capacity = 0\n", "alerts.queue_capacity"),
            ("[alerts]\nseverity = { login_faild = \"high\" }\n", "alerts.severity.login_faild"),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"http://hooks.example.com/T0KEN-canary\"\nsecret = \"s\"\n",
                "alerts.webhooks[0].url: must be https",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\n",
                "alerts.webhooks[0].secret",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret = \"s\"\nsecret_file = \"/x\"\n",
                "set one of them",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret_file = \"/nonexistent/s\"\n",
                "alerts.webhooks[0].secret_file: cannot read",
            ),
            (
                "[[alerts.webhooks]]\nurl = \"https://h.example/\"\nsecret = \"s\"\n",
                "alerts.webhooks[0].name",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret = \"s\"\ntimeout_secs = 0\n",
                "alerts.webhooks[0].timeout_secs",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret = \"s\"\nmax_attempts = 0\n",
                "alerts.webhooks[0].max_attempts",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret = \"s\"\nbackoff_base_ms = 120000\nbackoff_max_secs = 60\n",
                "alerts.webhooks[0].backoff_base_ms",
            ),
            (
                "[[alerts.webhooks]]\nname = \"p\"\nurl = \"https://h.example/\"\nsecret = \"s\"\nsecrt = \"x\"\n",
                "secrt",
            ),
            (
                "[[alerts.emails]]\nname = \"ops\"\nrecipients = [\"not-an-address\"]\n",
                "alerts.emails[0].recipients",
            ),
            ("[[alerts.emails]]\nname = \"ops\"\n", "alerts.emails[0].recipients: needs at least one"),
            (
                "[[alerts.webhooks]]\nname = \"ops\"\nurl = \"https://h.example/\"\nsecret = \"s\"\n[[alerts.emails]]\nname = \"ops\"\nrecipients = [\"a@example.com\"]\n",
                "alerts.emails[0].name: \"ops\" names another sink too",
            ),
        ] {
            let error = error_of(toml);
            assert!(error.contains(named), "{toml}: {error}");
            assert!(!error.contains("T0KEN-canary"), "{error}");
        }
    }

    #[test]
    fn the_secret_and_the_url_path_never_print() {
        let config = load_toml(&format!(
            "[[alerts.webhooks]]\nname = \"chat\"\nurl = \"https://user:pw-canary@chat.example.com/services/T0KEN-canary?k=q-canary\"\nsecret = \"{SECRET}\"\n"
        ))
        .unwrap();
        let text = format!("{}{:?}", config.to_masked_toml(), config);
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("https://chat.example.com/********"), "{text}");
        assert_eq!(mask_url("https://h.example"), "https://h.example");
        assert_eq!(mask_url("not a url"), "********");
    }

    #[test]
    fn production_refuses_short_secrets_and_secret_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, SECRET).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = load_toml(&format!(
            "[[alerts.webhooks]]\nname = \"a\"\nurl = \"https://h.example/\"\nsecret = \"short\"\n\
             [[alerts.webhooks]]\nname = \"b\"\nurl = \"https://h.example/\"\nsecret_file = \"{}\"\n",
            path.display()
        ))
        .unwrap();
        assert!(config.alert_production_problems().is_empty(), "development accepts them");
        config.mode = Mode::Production;
        let config_file = dir.path().join("portcullis.toml");
        std::fs::write(&config_file, "").unwrap();
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        config.config_file = Some((config_file, false));
        let problems = config.alert_production_problems();
        assert!(
            problems.iter().any(|p| p.starts_with("alerts.webhooks[0].secret") && p.contains("at least 32"))
        );
        assert!(
            problems.iter().any(|p| p.starts_with("alerts.webhooks[1].secret_file") && p.contains("644"))
        );
        assert!(problems.iter().any(|p| p.starts_with("--config")), "{problems:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        config.alerts.webhooks.remove(0);
        assert_eq!(config.alert_production_problems(), Vec::<String>::new());
    }
}
