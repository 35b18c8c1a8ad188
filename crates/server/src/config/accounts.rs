//! The configuration of accounts, passwords, tokens and email: `[accounts]`, `[password]`, `[tokens]`
//! and `[email]`, their validation, and their translation into the use cases' settings.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_app::mail::{FileOutbox, Mailer, SmtpMailer, SmtpSecurity, SmtpSettings};
use portcullis_app::{HashAlgorithm, HashPoolSize, SigningAlgorithm, SignupPolicy};
use portcullis_domain::{PasswordPolicy, SessionLifetimes};
use serde::{Deserialize, Serialize};

use super::{Config, Mode, Secret};

/// Who may sign up (`accounts.signup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignupPolicyName {
    Open,
    Invite,
    Closed,
}

/// `[authz]`: how the check API's decisions are logged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// One in how many allowed decisions is logged (0: none); every denial is.
    pub log_allowed_one_in: u32,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self { log_allowed_one_in: 100 }
    }
}

/// `[api_keys]`: limits on API keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// The longest lifetime a new key may have, in days.
    pub max_lifetime_days: u32,
    /// How long a rotated key's previous secret keeps working, in hours.
    pub rotation_grace_hours: u32,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        let defaults = portcullis_app::ApiKeySettings::default();
        Self {
            max_lifetime_days: defaults.max_lifetime_days,
            rotation_grace_hours: defaults.rotation_grace_secs / 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Default: `open` in development, `closed` in production.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signup: Option<SignupPolicyName>,
    /// Default: false in development, true in production.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_verified_email: Option<bool>,
    pub password_min_length: usize,
    pub session_lifetime_hours: u64,
    pub session_idle_timeout_minutes: u64,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            signup: None,
            require_verified_email: None,
            password_min_length: 8,
            session_lifetime_hours: 7 * 24,
            session_idle_timeout_minutes: 24 * 60,
        }
    }
}

/// The algorithm for new password hashes (`password.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordAlgorithmName {
    Argon2id,
    Bcrypt,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub algorithm: PasswordAlgorithmName,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub bcrypt_cost: u32,
    /// Hashes computed at once; 0 = one per core.
    pub hash_workers: usize,
    /// Hash requests that may wait; 0 = four per worker. Beyond it, logins get 503 + Retry-After.
    pub max_queued_hashes: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        Self {
            algorithm: PasswordAlgorithmName::Argon2id,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            bcrypt_cost: 12,
            hash_workers: 0,
            max_queued_hashes: 0,
        }
    }
}

/// The JWS algorithm of access tokens (`tokens.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TokenAlgorithm {
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "ES256")]
    Es256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub algorithm: TokenAlgorithm,
    pub access_ttl_secs: i64,
    pub audience: String,
    pub leeway_secs: i64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            algorithm: TokenAlgorithm::EdDsa,
            access_ttl_secs: 900,
            audience: "portcullis".into(),
            leeway_secs: 30,
        }
    }
}

/// How account email leaves (`email.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTransport {
    /// One `.eml` file per message in `email.outbox_dir` (development).
    Outbox,
    /// An SMTP relay.
    Smtp,
}

/// Transport security towards the SMTP relay (`email.smtp_security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurityName {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Default: `outbox` in development, `smtp` in production.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<EmailTransport>,
    pub from: String,
    /// Default: `<data_dir>/outbox`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    pub smtp_security: SmtpSecurityName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_password: Option<Secret>,
    pub smtp_timeout_secs: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            transport: None,
            from: "Portcullis <portcullis@localhost>".into(),
            outbox_dir: None,
            smtp_host: None,
            smtp_port: 587,
            smtp_security: SmtpSecurityName::Starttls,
            smtp_username: None,
            smtp_password: None,
            smtp_timeout_secs: 10,
        }
    }
}

impl Config {
    /// Problems with the account settings in any mode.
    pub(super) fn account_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=3650).contains(&self.api_keys.max_lifetime_days) {
            problems.push("api_keys.max_lifetime_days: must be 1 to 3650".into());
        }
        if self.authz.log_allowed_one_in > 1_000_000 {
            problems.push("authz.log_allowed_one_in: must be 0 to 1000000".into());
        }
        if self.api_keys.rotation_grace_hours > 720 {
            problems.push("api_keys.rotation_grace_hours: must be 0 to 720".into());
        }
        let a = &self.accounts;
        if !(8..=128).contains(&a.password_min_length) {
            problems.push("accounts.password_min_length: must be between 8 and 128 (NIST SP 800-63B asks at least 8; 15 is recommended)".into());
        }
        if !(1..=8760).contains(&a.session_lifetime_hours) {
            problems.push("accounts.session_lifetime_hours: must be between 1 and 8760".into());
        }
        if a.session_idle_timeout_minutes == 0
            || a.session_idle_timeout_minutes > a.session_lifetime_hours * 60
        {
            problems.push(
                "accounts.session_idle_timeout_minutes: must be at least 1 and at most the session lifetime"
                    .into(),
            );
        }
        let p = &self.password;
        if !(10..=31).contains(&p.bcrypt_cost) {
            problems.push("password.bcrypt_cost: must be between 10 and 31".into());
        }
        if !(1..=16).contains(&p.argon2_parallelism) {
            problems.push("password.argon2_parallelism: must be between 1 and 16".into());
        }
        if p.argon2_iterations == 0 || p.argon2_iterations > 100 {
            problems.push("password.argon2_iterations: must be between 1 and 100".into());
        }
        if !(8 * p.argon2_parallelism.max(1)..=4 * 1024 * 1024).contains(&p.argon2_memory_kib) {
            problems.push(
                "password.argon2_memory_kib: must be between 8 × argon2_parallelism and 4194304".into(),
            );
        }
        let t = &self.tokens;
        if !(60..=3600).contains(&t.access_ttl_secs) {
            problems.push("tokens.access_ttl_secs: must be between 60 and 3600".into());
        }
        if !(0..=300).contains(&t.leeway_secs) {
            problems.push("tokens.leeway_secs: must be between 0 and 300".into());
        }
        if t.audience.trim().is_empty() {
            problems.push("tokens.audience: must not be empty".into());
        }
        if let Some(url) = &self.http.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            problems.push(
                "http.public_url: must be an http:// or https:// URL, like https://id.example.com".into(),
            );
        }
        if self.email.transport == Some(EmailTransport::Smtp) && self.email.smtp_host.is_none() {
            problems.push("email.smtp_host: needed when email.transport is smtp".into());
        }
        if self.email.smtp_username.is_some() != self.email.smtp_password.is_some() {
            problems.push("email.smtp_username and email.smtp_password: set both or neither".into());
        }
        if !(1..=300).contains(&self.email.smtp_timeout_secs) {
            problems.push("email.smtp_timeout_secs: must be between 1 and 300".into());
        }
        problems
    }

    /// Account settings that production refuses.
    pub(super) fn account_production_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.http.public_url {
            None => problems.push("http.public_url: production needs the public https URL (the token issuer and the base of emailed links)".into()),
            Some(url) if !url.starts_with("https://") => problems.push("http.public_url: must be https in production".into()),
            Some(_) => {}
        }
        // OWASP's password storage cheat sheet: equivalent argon2id settings, memory (KiB) against
        // iterations; production must meet one of them.
        const OWASP_ARGON2ID: [(u32, u32); 5] =
            [(47_104, 1), (19_456, 2), (12_288, 3), (9_216, 4), (7_168, 5)];
        let p = &self.password;
        if p.algorithm == PasswordAlgorithmName::Argon2id
            && !OWASP_ARGON2ID.iter().any(|&(m, t)| p.argon2_memory_kib >= m && p.argon2_iterations >= t)
        {
            problems.push(
                "password.argon2_memory_kib / argon2_iterations: production needs one of OWASP's argon2id settings (at least 19456 KiB with 2 iterations, 47104 with 1, 12288 with 3, 9216 with 4 or 7168 with 5)".into(),
            );
        }
        match (self.email_transport(), &self.email.smtp_host) {
            (EmailTransport::Outbox, _) => problems
                .push("email.transport: the file outbox is for development; configure an SMTP relay".into()),
            (EmailTransport::Smtp, None) => {
                problems.push("email.smtp_host: production sends account email through an SMTP relay".into())
            }
            (EmailTransport::Smtp, Some(_)) => {}
        }
        if self.email.smtp_security == SmtpSecurityName::None {
            problems.push("email.smtp_security: production sends email over TLS (starttls or tls)".into());
        }
        problems
    }

    fn email_transport(&self) -> EmailTransport {
        self.email.transport.unwrap_or(match self.mode {
            Mode::Development => EmailTransport::Outbox,
            Mode::Production => EmailTransport::Smtp,
        })
    }

    /// The public base URL: configured, or in development the address the server listens on.
    pub fn public_url(&self, scheme_https: bool, bound: std::net::SocketAddr) -> String {
        match &self.http.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{}://{bound}", if scheme_https { "https" } else { "http" }),
        }
    }

    /// Applies `[accounts]`, `[password]`, `[tokens]` and `[api_keys]` to the use cases' settings.
    pub fn apply_account_settings(&self, settings: &mut portcullis_app::AppSettings) {
        let a = &self.accounts;
        let development = self.mode == Mode::Development;
        settings.accounts.signup = match a.signup {
            Some(SignupPolicyName::Open) => SignupPolicy::Open,
            Some(SignupPolicyName::Invite) => SignupPolicy::Invite,
            Some(SignupPolicyName::Closed) => SignupPolicy::Closed,
            None if development => SignupPolicy::Open,
            None => SignupPolicy::Closed,
        };
        settings.accounts.require_verified_email = a.require_verified_email.unwrap_or(!development);
        settings.accounts.password_policy =
            PasswordPolicy { min_chars: a.password_min_length, ..PasswordPolicy::default() };
        settings.accounts.sessions = SessionLifetimes {
            absolute_millis: i64::try_from(a.session_lifetime_hours * 3_600_000).unwrap_or(i64::MAX),
            idle_millis: i64::try_from(a.session_idle_timeout_minutes * 60_000).unwrap_or(i64::MAX),
        };
        let p = &self.password;
        settings.password_hash = match p.algorithm {
            PasswordAlgorithmName::Argon2id => HashAlgorithm::Argon2id {
                memory_kib: p.argon2_memory_kib,
                iterations: p.argon2_iterations,
                parallelism: p.argon2_parallelism,
            },
            PasswordAlgorithmName::Bcrypt => HashAlgorithm::Bcrypt { cost: p.bcrypt_cost },
        };
        let mut pool = HashPoolSize::for_this_machine();
        if p.hash_workers > 0 {
            pool.workers = p.hash_workers;
        }
        pool.queue = if p.max_queued_hashes > 0 { p.max_queued_hashes } else { pool.workers * 4 };
        settings.hash_pool = pool;
        settings.api_keys.max_lifetime_days = self.api_keys.max_lifetime_days;
        settings.api_keys.rotation_grace_secs = self.api_keys.rotation_grace_hours * 3600;
        settings.log_allowed_checks_one_in = self.authz.log_allowed_one_in;
        let t = &self.tokens;
        settings.tokens.algorithm = match t.algorithm {
            TokenAlgorithm::EdDsa => SigningAlgorithm::EdDsa,
            TokenAlgorithm::Es256 => SigningAlgorithm::Es256,
        };
        settings.tokens.access_ttl_secs = t.access_ttl_secs;
        settings.tokens.audience = t.audience.clone();
        settings.tokens.leeway_secs = t.leeway_secs;
    }

    /// The mailer `[email]` selects.
    pub fn mailer(&self) -> Result<std::sync::Arc<dyn Mailer>, String> {
        let email = &self.email;
        match self.email_transport() {
            EmailTransport::Outbox => {
                let dir = email.outbox_dir.clone().unwrap_or_else(|| self.data_dir.join("outbox"));
                let outbox =
                    FileOutbox::new(dir, &email.from).map_err(|e| format!("email.outbox_dir: {e}"))?;
                Ok(std::sync::Arc::new(outbox))
            }
            EmailTransport::Smtp => {
                let settings = SmtpSettings {
                    host: email.smtp_host.clone().unwrap_or_default(),
                    port: email.smtp_port,
                    security: match email.smtp_security {
                        SmtpSecurityName::Starttls => SmtpSecurity::StartTls,
                        SmtpSecurityName::Tls => SmtpSecurity::ImplicitTls,
                        SmtpSecurityName::None => SmtpSecurity::None,
                    },
                    username: email.smtp_username.clone(),
                    password: email
                        .smtp_password
                        .as_ref()
                        .map(|p| secrecy::SecretString::from(p.expose().to_owned())),
                    from: email.from.clone(),
                    timeout: Duration::from_secs(email.smtp_timeout_secs),
                };
                let mailer = SmtpMailer::new(settings)
                    .map_err(|e| format!("email: {}", portcullis_domain::error_chain(&e)))?;
                Ok(std::sync::Arc::new(mailer))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::SecretSlice;

    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::load_from;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let env: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        load_from(&GlobalArgs::default(), env)
    }

    fn keks() -> portcullis_app::KekSet {
        portcullis_app::KekSet::parse(&portcullis_app::KekSet::generate_entry("t").unwrap()).unwrap()
    }

    fn settings_of(config: &Config) -> portcullis_app::AppSettings {
        let mut settings =
            portcullis_app::AppSettings::new(SecretSlice::from(vec![0u8; 32]), keks(), "t", "https://x");
        config.apply_account_settings(&mut settings);
        settings
    }

    #[test]
    fn development_signs_up_openly_without_verification_and_production_the_opposite() {
        let dev = settings_of(&load(&[]).unwrap());
        assert_eq!(dev.accounts.signup, SignupPolicy::Open);
        assert!(!dev.accounts.require_verified_email);
        let prod = settings_of(&load(&[("PORTCULLIS_MODE", "production")]).unwrap());
        assert_eq!(prod.accounts.signup, SignupPolicy::Closed);
        assert!(prod.accounts.require_verified_email);
        let invite = settings_of(&load(&[("PORTCULLIS_ACCOUNTS__SIGNUP", "invite")]).unwrap());
        assert_eq!(invite.accounts.signup, SignupPolicy::Invite);
    }

    #[test]
    fn password_and_token_settings_reach_the_use_cases() {
        let config = load(&[
            ("PORTCULLIS_PASSWORD__ALGORITHM", "bcrypt"),
            ("PORTCULLIS_PASSWORD__BCRYPT_COST", "11"),
            ("PORTCULLIS_TOKENS__ALGORITHM", "ES256"),
            ("PORTCULLIS_ACCOUNTS__PASSWORD_MIN_LENGTH", "15"),
            ("PORTCULLIS_PASSWORD__HASH_WORKERS", "3"),
        ])
        .unwrap();
        let settings = settings_of(&config);
        assert_eq!(settings.password_hash, HashAlgorithm::Bcrypt { cost: 11 });
        assert_eq!(settings.tokens.algorithm, SigningAlgorithm::Es256);
        assert_eq!(settings.accounts.password_policy.min_chars, 15);
        assert_eq!(settings.hash_pool, HashPoolSize { workers: 3, queue: 12 });
    }

    #[test]
    fn unsafe_account_settings_are_refused_by_name() {
        for (key, value, named) in [
            ("PORTCULLIS_PASSWORD__BCRYPT_COST", "9", "password.bcrypt_cost"),
            ("PORTCULLIS_ACCOUNTS__PASSWORD_MIN_LENGTH", "6", "accounts.password_min_length"),
            ("PORTCULLIS_TOKENS__ACCESS_TTL_SECS", "86400", "tokens.access_ttl_secs"),
            ("PORTCULLIS_HTTP__PUBLIC_URL", "id.example.com", "http.public_url"),
            ("PORTCULLIS_EMAIL__TRANSPORT", "smtp", "email.smtp_host"),
            ("PORTCULLIS_TOKENS__ALGORITHM", "HS256", "tokens.algorithm"),
            ("PORTCULLIS_ACCOUNTS__SESSION_IDLE_TIMEOUT_MINUTES", "999999", "session_idle_timeout_minutes"),
        ] {
            let error = load(&[(key, value)]).unwrap_err().to_string();
            assert!(error.contains(named), "{key}={value}: {error}");
        }
    }

    #[test]
    fn production_needs_an_https_public_url_smtp_over_tls_and_owasp_argon2_parameters() {
        let problems = load(&[("PORTCULLIS_MODE", "production")]).unwrap().account_production_problems();
        assert!(problems.iter().any(|p| p.starts_with("http.public_url")), "{problems:?}");
        assert!(
            !problems.iter().any(|p| p.starts_with("password.")),
            "the defaults meet OWASP: {problems:?}"
        );
        let one_pass =
            load(&[("PORTCULLIS_MODE", "production"), ("PORTCULLIS_PASSWORD__ARGON2_ITERATIONS", "1")])
                .unwrap()
                .account_production_problems();
        assert!(
            one_pass.iter().any(|p| p.starts_with("password.argon2")),
            "19 MiB needs 2 passes: {one_pass:?}"
        );
        assert!(problems.iter().any(|p| p.starts_with("email.smtp_host")), "{problems:?}");
        let problems = load(&[
            ("PORTCULLIS_MODE", "production"),
            ("PORTCULLIS_HTTP__PUBLIC_URL", "http://id.example.com"),
            ("PORTCULLIS_EMAIL__TRANSPORT", "outbox"),
            ("PORTCULLIS_EMAIL__SMTP_SECURITY", "none"),
            ("PORTCULLIS_PASSWORD__ARGON2_MEMORY_KIB", "8192"),
            ("PORTCULLIS_PASSWORD__ARGON2_ITERATIONS", "3"),
        ])
        .unwrap()
        .account_production_problems();
        for key in ["http.public_url", "email.transport", "email.smtp_security", "password.argon2_memory_kib"]
        {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{key}: {problems:?}");
        }
    }

    #[test]
    fn the_smtp_password_is_a_secret_that_never_prints() {
        let config = load(&[
            ("PORTCULLIS_EMAIL__SMTP_USERNAME", "u"),
            ("PORTCULLIS_EMAIL__SMTP_PASSWORD", "smtp-canary-password"),
        ])
        .unwrap();
        let text = format!("{}{:?}", config.to_masked_toml(), config);
        assert!(!text.contains("smtp-canary-password"), "{text}");
    }
}
