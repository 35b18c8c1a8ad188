//! Configuration: typed, layered (defaults < TOML file < environment < flags), validated at start.
//!
//! Every key can be set as `PORTCULLIS_SECTION__KEY`; every secret also as
//! `PORTCULLIS_SECTION__KEY_FILE`, a file holding it. Secrets are [`Secret`]s: they never print, not
//! even in `config check`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::cli::GlobalArgs;

mod accounts;
mod alerts;
mod audit;
mod backup;
mod ip_rules;
mod keys;
mod metrics;
mod mfa;
mod rate_limits;
mod retention;
mod sentry;

pub use self::sentry::SentryConfig;
pub use accounts::{
    AccountsConfig, ApiKeysConfig, AuthzConfig, EmailConfig, EmailTransport, PasswordAlgorithmName,
    PasswordConfig, SignupPolicyName, SmtpSecurityName, TokenAlgorithm, TokensConfig,
};
pub use alerts::{AlertsConfig, EmailAlertConfig, SeverityName, WebhookConfig};
pub use audit::AuditConfig;
pub use backup::{BackupConfig, TargetKind, parse_schedule};
pub use ip_rules::IpRulesConfig;
pub use keys::KeysConfig;
pub use metrics::{MetricsConfig, MetricsExposure};
pub use mfa::MfaConfig;
pub use rate_limits::{
    DetectionConfig, FailureModeName, LockoutConfig, ProbeResponseName, RateLimitsConfig, RedisConfig,
};
pub use retention::RetentionConfig;

/// The environment prefix of every configuration variable.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// Keys that hold secrets: readable from `*_FILE` variables, never printed.
pub const SECRET_KEYS: &[&str] = &[
    "secrets.instance_secret",
    "database.url",
    "email.smtp_password",
    "keys.kek",
    "redis.url",
    "sentry.dsn",
    "metrics.token",
    "backup.s3_access_key_id",
    "backup.s3_secret_access_key",
    "backup.passphrase",
];

/// Secret values printed in config/example.toml and the docs. A production server refuses them:
/// a secret that is published is not a secret.
pub const EXAMPLE_SECRETS: &[&str] =
    &["change-me-to-32-or-more-random-bytes-0000", "0123456789abcdef0123456789abcdef"];

/// The shortest secret a production server accepts, in bytes (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Whether the server runs for a developer or for real users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Convenient defaults: generated secrets, plain http on loopback, readable logs.
    #[default]
    Development,
    /// Refuses to start with any insecure setting.
    Production,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Development => "development",
            Mode::Production => "production",
        })
    }
}

/// A secret from the configuration. Serializes and debug-prints as a mask, so no code path that
/// prints configuration can leak it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("********")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// The whole configuration. See config/example.toml for each key's meaning and default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub cors: CorsConfig,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
    pub accounts: AccountsConfig,
    pub password: PasswordConfig,
    pub tokens: TokensConfig,
    pub email: EmailConfig,
    pub keys: KeysConfig,
    pub api_keys: ApiKeysConfig,
    pub authz: AuthzConfig,
    pub alerts: AlertsConfig,
    pub rate_limits: RateLimitsConfig,
    pub ip_rules: IpRulesConfig,
    pub lockout: LockoutConfig,
    pub detection: DetectionConfig,
    pub redis: RedisConfig,
    pub audit: AuditConfig,
    pub mfa: MfaConfig,
    pub sentry: SentryConfig,
    pub metrics: MetricsConfig,
    pub retention: RetentionConfig,
    pub backup: BackupConfig,
    /// Files that secrets were read from (for the permission checks); not a configuration key.
    #[serde(skip)]
    pub secret_files: Vec<(String, PathBuf)>,
    /// The configuration file, if any, and whether it holds secrets itself.
    #[serde(skip)]
    pub config_file: Option<(PathBuf, bool)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Development,
            data_dir: PathBuf::from("./portcullis-data"),
            http: HttpConfig::default(),
            cors: CorsConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            secrets: SecretsConfig::default(),
            log: LogConfig::default(),
            accounts: AccountsConfig::default(),
            password: PasswordConfig::default(),
            tokens: TokensConfig::default(),
            email: EmailConfig::default(),
            keys: KeysConfig::default(),
            api_keys: ApiKeysConfig::default(),
            authz: AuthzConfig::default(),
            alerts: AlertsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            ip_rules: IpRulesConfig::default(),
            lockout: LockoutConfig::default(),
            detection: DetectionConfig::default(),
            redis: RedisConfig::default(),
            audit: AuditConfig::default(),
            mfa: MfaConfig::default(),
            sentry: SentryConfig::default(),
            metrics: MetricsConfig::default(),
            retention: RetentionConfig::default(),
            backup: BackupConfig::default(),
            secret_files: Vec::new(),
            config_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeaderName,
    pub max_connections: usize,
    pub body_limit_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub request_timeout_secs: u64,
    pub header_read_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
    /// The externally visible base URL: the access tokens' issuer and the base of emailed links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeaderName::XForwardedFor,
            max_connections: 1000,
            body_limit_bytes: 64 * 1024,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            shutdown_grace_secs: 20,
            public_host: None,
            public_url: None,
        }
    }
}

/// Which forwarding header the trusted proxies maintain; only that one is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderName {
    /// `X-Forwarded-For` and `X-Forwarded-Proto` (nginx, HAProxy, AWS ALB, Caddy, Traefik).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self { allowed_origins: Vec::new(), allow_credentials: false, max_age_secs: 600 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<SocketAddr>,
    pub hsts_max_age_secs: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            redirect_listen: None,
            hsts_max_age_secs: 63_072_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
    pub busy_timeout_ms: u64,
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            acquire_timeout_secs: 10,
            busy_timeout_ms: 5000,
            migrate_on_start: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_secret: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON in production, readable text in development.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, level: "info".into() }
    }
}

/// Which database a URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres,
}

/// A configuration that cannot be used, with every reason (each naming its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self { problems: vec![problem.into()] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads the configuration from the layers, reading the process environment.
pub fn load(flags: &GlobalArgs) -> Result<Config, ConfigError> {
    let mut env = BTreeMap::new();
    for (name, value) in std::env::vars_os() {
        // Only our own variables must be text; anyone else's may hold any bytes.
        let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)).map(str::to_owned) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => {
                env.insert(name, value);
            }
            Err(_) => return Err(ConfigError::one(format!("{name}: the value is not valid UTF-8"))),
        }
    }
    load_from(flags, env)
}

/// Loads the configuration from the layers with an explicit environment (testable).
pub fn load_from(flags: &GlobalArgs, env: BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    let mut config_file = None;
    if let Some(path) = &flags.config {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(format!("--config / PORTCULLIS_CONFIG: cannot read {}: {e}", path.display()))
        })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::one(format!("{}: not valid TOML: {}", path.display(), e.message())))?;
        let holds_secret = SECRET_KEYS.iter().any(|key| {
            let (section, name) = key.split_once('.').unwrap_or(("", key));
            table.get(section).and_then(|s| s.get(name)).is_some()
        });
        config_file = Some((path.clone(), holds_secret));
        figment = figment.merge(Toml::string(&text));
    }

    let (secrets, secret_files) = secret_layer(&env)?;
    let plain: Vec<(String, String)> = env
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_owned(), v.clone())))
        .filter(|(k, _)| {
            let key = k.to_ascii_lowercase().replace("__", ".");
            (k.contains("__") || key == "mode")
                && !SECRET_KEYS.contains(&key.as_str())
                && !key.strip_suffix("_file").is_some_and(|k| SECRET_KEYS.contains(&k))
        })
        .collect();
    figment = figment.merge(EnvSnapshot { env: plain });
    figment = figment.merge(Serialized::defaults(secrets));

    let mut overrides = Dict::new();
    if let Some(dir) = &flags.data_dir {
        overrides.insert("data_dir".into(), Value::from(dir.display().to_string()));
    }
    if let Some(listen) = flags.listen {
        overrides.insert(
            "http".into(),
            Value::from(Map::from([("listen".to_owned(), Value::from(listen.to_string()))])),
        );
    }
    if let Some(url) = &flags.database_url {
        overrides.insert(
            "database".into(),
            Value::from(Map::from([("url".to_owned(), Value::from(url.clone()))])),
        );
    }
    figment = figment.merge(Serialized::defaults(overrides));

    let mut config: Config = figment
        .extract()
        .map_err(|error| ConfigError { problems: error.into_iter().map(describe_figment_error).collect() })?;
    config.secret_files = secret_files;
    config.config_file = config_file;
    config.validate()?;
    Ok(config)
}

/// A figment provider over a fixed list of `PORTCULLIS_SECTION__KEY` variables (prefix removed), so
/// loading is a function of its inputs. Values are parsed like figment's `Env` (numbers, booleans,
/// `[lists]`); secrets never pass through here (see [`secret_layer`]).
struct EnvSnapshot {
    env: Vec<(String, String)>,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(&self) -> Result<Map<figment::Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.env {
            let path: Vec<String> = key.to_ascii_lowercase().split("__").map(str::to_owned).collect();
            let parsed: Value = value.parse().unwrap_or_else(|_| Value::from(value.clone()));
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// Secrets from `PORTCULLIS_SECTION__KEY` (taken verbatim, never parsed as numbers or lists) and from
/// `PORTCULLIS_SECTION__KEY_FILE`.
fn secret_layer(env: &BTreeMap<String, String>) -> Result<(Dict, Vec<(String, PathBuf)>), ConfigError> {
    let mut dict = Dict::new();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
        let Some(file_key) = key.strip_suffix("_FILE") else { continue };
        if !file_key.contains("__") {
            continue;
        }
        let dotted = file_key.to_ascii_lowercase().replace("__", ".");
        if !SECRET_KEYS.contains(&dotted.as_str()) {
            // Not an indirection: an ordinary key that ends in `_file` (tls.cert_file), or an
            // unknown key that the environment layer reports by name.
            continue;
        } else if env.contains_key(&format!("{ENV_PREFIX}{file_key}")) {
            problems.push(format!("{name} and {ENV_PREFIX}{file_key} are both set; set one of them"));
        } else {
            match std::fs::read_to_string(value) {
                Ok(text) => {
                    let secret = text.strip_suffix('\n').unwrap_or(&text);
                    let secret = secret.strip_suffix('\r').unwrap_or(secret).to_owned();
                    let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
                    insert_path(&mut dict, &path, Value::from(secret));
                    files.push((dotted, PathBuf::from(value)));
                }
                Err(e) => problems.push(format!("{name}: cannot read {value}: {e}")),
            }
        }
    }
    for key in SECRET_KEYS {
        let name = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"));
        if let Some(value) = env.get(&name) {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            insert_path(&mut dict, &path, Value::from(value.clone()));
        }
    }
    if problems.is_empty() { Ok((dict, files)) } else { Err(ConfigError { problems }) }
}

/// A figment error in the words an operator needs: the key, what was wrong, where it came from.
fn describe_figment_error(error: figment::Error) -> String {
    let key = if error.path.is_empty() { "(top level)".to_owned() } else { error.path.join(".") };
    let source = error
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (from {source})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    let env_name = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"));
    format!("{key} / {env_name}: {}{source}", error.kind)
}

impl Config {
    /// Checks that work in every mode; the production checks are [`Config::production_problems`].
    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = self.database_target() {
            problems.push(e);
        }
        if let Err(e) = self.web().cors.validate() {
            problems.push(e.to_string());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push("tls.cert_file and tls.key_file: set both or neither".into());
        }
        if self.tls.redirect_listen.is_some() && self.tls.cert_file.is_none() {
            problems.push("tls.redirect_listen: needs tls.cert_file and tls.key_file".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.body_limit_bytes) {
            problems.push("http.body_limit_bytes: must be between 1024 and 67108864".into());
        }
        if !(8..=100).contains(&self.http.max_headers) {
            problems.push("http.max_headers: must be between 8 and 100".into());
        }
        if !(1024..=1024 * 1024).contains(&self.http.max_header_bytes) {
            problems.push("http.max_header_bytes: must be between 1024 and 1048576".into());
        }
        // Upper bounds too: a huge duration overflows `Instant + Duration` inside hyper and sqlx.
        for (key, value, max) in [
            ("http.request_timeout_secs", self.http.request_timeout_secs, 3600),
            ("http.header_read_timeout_secs", self.http.header_read_timeout_secs, 600),
            ("http.shutdown_grace_secs", self.http.shutdown_grace_secs, 3600),
            ("database.acquire_timeout_secs", self.database.acquire_timeout_secs, 600),
            ("database.busy_timeout_ms", self.database.busy_timeout_ms, 600_000),
            ("cors.max_age_secs", self.cors.max_age_secs, 86_400),
        ] {
            let min = u64::from(key != "http.shutdown_grace_secs" && key != "cors.max_age_secs");
            if !(min..=max).contains(&value) {
                problems.push(format!("{key}: must be between {min} and {max}"));
            }
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            problems.push("http.max_connections: must be between 1 and 1000000".into());
        }
        if let Some(host) = &self.http.public_host
            && host.parse::<http::uri::Authority>().map_or(true, |a| a.as_str().contains('@'))
        {
            problems.push(
                "http.public_host: must be a host name with an optional port, like id.example.com:8443"
                    .into(),
            );
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be at least 1".into());
        }
        problems.extend(self.account_problems());
        problems.extend(self.rate_limit_problems());
        problems.extend(self.alert_problems());
        problems.extend(self.ip_rule_problems());
        problems.extend(self.key_problems());
        problems.extend(self.audit_problems());
        problems.extend(self.mfa_problems());
        problems.extend(self.sentry_problems());
        problems.extend(self.metrics_problems());
        problems.extend(self.retention_problems());
        problems.extend(self.backup_problems());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: {e} (use a level such as info, debug, or a filter like portcullis=debug,info)"
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }

    /// Every reason this configuration is unfit for production (empty in development mode).
    pub fn production_problems(&self, dev_tls: bool) -> Vec<String> {
        if self.mode != Mode::Production {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if dev_tls {
            problems.push("serve --dev-tls: a self-signed development certificate is not for production; set tls.cert_file and tls.key_file".into());
        }
        if self.tls.cert_file.is_none() && self.http.trusted_proxies.is_empty() {
            problems.push("tls.cert_file / http.trusted_proxies: production needs TLS, either served here (tls.cert_file and tls.key_file) or terminated by a proxy listed in http.trusted_proxies".into());
        }
        match &self.secrets.instance_secret {
            None => problems.push("secrets.instance_secret / PORTCULLIS_SECRETS__INSTANCE_SECRET(_FILE): missing; production does not generate secrets".into()),
            Some(secret) => problems.extend(secret_problem("secrets.instance_secret", secret.expose())),
        }
        problems.extend(self.backup_production_problems());
        if self.http.trusted_proxies.iter().any(|net| net.prefix_len() == 0) {
            problems.push("http.trusted_proxies: a /0 range trusts every client's forwarding headers; list your proxies' addresses".into());
        }
        if let Some(problem) = self.postgres_tls_problem() {
            problems.push(problem);
        }
        problems.extend(self.account_production_problems());
        problems.extend(self.key_production_problems());
        problems.extend(self.rate_limit_production_problems());
        problems.extend(self.alert_production_problems());
        problems.extend(self.sentry_production_problems());
        problems.extend(self.metrics_production_problems());
        if let Some(secret) = &self.email.smtp_password {
            problems.extend(
                secret_problem("email.smtp_password", secret.expose()).filter(|p| p.contains("example")),
            );
        }
        if self.cors.allowed_origins.iter().any(|o| o == "*") && self.cors.allow_credentials {
            problems.push("cors.allowed_origins: \"*\" with cors.allow_credentials = true lets any site act as the user".into());
        }
        if let Some(mode) = mode_of(&self.data_dir)
            && mode & 0o077 != 0
        {
            problems.push(format!(
                "data_dir: {} has mode {:o}; it must not be accessible by other users (chmod 700)",
                self.data_dir.display(),
                mode & 0o777
            ));
        }
        let mut private_files: Vec<(String, PathBuf)> = self.secret_files.clone();
        if let Some(key) = &self.tls.key_file {
            private_files.push(("tls.key_file".into(), key.clone()));
        }
        if let Some((path, true)) = &self.config_file {
            private_files.push(("--config (holds secrets)".into(), path.clone()));
        }
        for (key, path) in private_files {
            if let Some(mode) = mode_of(&path)
                && mode & 0o077 != 0
            {
                problems.push(format!(
                    "{key}: {} has mode {:o}; it must not be readable by other users (chmod 600)",
                    path.display(),
                    mode & 0o777
                ));
            }
        }
        problems
    }

    /// Production refuses a PostgreSQL connection that an attacker on the network could downgrade to
    /// plaintext or intercept: off the loopback interface the URL must ask for a verified TLS
    /// connection (`sslmode=verify-full` or `verify-ca`).
    fn postgres_tls_problem(&self) -> Option<String> {
        if self.database_target() != Ok(DatabaseTarget::Postgres) {
            return None;
        }
        let url = self.database.url.as_ref()?.expose();
        let rest = url.split_once("://").map_or("", |(_, rest)| rest);
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).split(['/', '?']).next().unwrap_or("");
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host_port.split(':').next().unwrap_or(""),
        };
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let local = host.is_empty()
            || host == "localhost"
            || host.starts_with('/')
            || host.starts_with("%2F")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let verified = query.split('&').any(|p| p == "sslmode=verify-full" || p == "sslmode=verify-ca");
        (!local && !verified).then(|| {
            "database.url: off the loopback interface production needs sslmode=verify-full (or verify-ca) so the connection cannot be downgraded or intercepted".to_owned()
        })
    }

    /// The database this configuration selects.
    pub fn database_target(&self) -> Result<DatabaseTarget, String> {
        let Some(url) = &self.database.url else {
            return Ok(DatabaseTarget::Sqlite(self.data_dir.join("portcullis.db")));
        };
        let url = url.expose();
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err("database.url: a sqlite URL needs a file path (sqlite://PATH)".into());
            }
            return Ok(DatabaseTarget::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseTarget::Postgres);
        }
        Err("database.url: must start with sqlite:// or postgres:// (or postgresql://)".into())
    }

    /// The database as shown in logs: engine and location, never credentials.
    pub fn database_description(&self) -> String {
        match self.database_target() {
            Ok(DatabaseTarget::Sqlite(path)) => format!("SQLite {}", path.display()),
            Ok(DatabaseTarget::Postgres) => {
                let url = self.database.url.as_ref().map(|u| u.expose()).unwrap_or_default();
                let rest = url.split_once("://").map_or("", |(_, rest)| rest);
                let host_and_db = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("PostgreSQL {}", host_and_db.split('?').next().unwrap_or(""))
            }
            Err(_) => "invalid database URL".into(),
        }
    }

    /// The HTTP layer's settings.
    pub fn web(&self) -> portcullis_web::WebConfig {
        portcullis_web::WebConfig {
            trusted_proxies: self.http.trusted_proxies.clone(),
            forwarded_header: match self.http.forwarded_header {
                ForwardedHeaderName::XForwardedFor => portcullis_web::ForwardedHeader::XForwardedFor,
                ForwardedHeaderName::Forwarded => portcullis_web::ForwardedHeader::Forwarded,
            },
            body_limit_bytes: self.http.body_limit_bytes,
            max_headers: self.http.max_headers,
            max_header_bytes: self.http.max_header_bytes,
            request_timeout: Duration::from_secs(self.http.request_timeout_secs),
            cors: portcullis_web::CorsConfig {
                allowed_origins: self.cors.allowed_origins.clone(),
                allow_credentials: self.cors.allow_credentials,
                max_age: Duration::from_secs(self.cors.max_age_secs),
            },
            hsts: portcullis_web::HstsConfig {
                max_age_secs: self.tls.hsts_max_age_secs,
                include_subdomains: self.tls.hsts_include_subdomains,
                preload: self.tls.hsts_preload,
            },
            metrics_route: self.metrics_exposure() == MetricsExposure::MainListener,
            count_requests: self.metrics.enabled,
        }
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Why a secret is unfit for production, if it is.
pub fn secret_problem(key: &str, value: &str) -> Option<String> {
    if EXAMPLE_SECRETS.contains(&value) {
        Some(format!(
            "{key}: is the example value from the documentation; generate your own (e.g. `openssl rand -base64 48`)"
        ))
    } else if value.len() < MIN_SECRET_BYTES {
        Some(format!("{key}: is {} bytes; at least {MIN_SECRET_BYTES} are required", value.len()))
    } else {
        None
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// Why a path that holds secrets cannot be trusted to stay ours: it is a symbolic link (which whoever
/// owns the link's directory can point elsewhere) or belongs to another user.
pub fn ownership_problem(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path).ok()?;
    if metadata.file_type().is_symlink() {
        return Some(format!(
            "{key}: {} is a symbolic link; point the setting at the real path",
            path.display()
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    (metadata.uid() != me).then(|| {
        format!(
            "{key}: {} belongs to user id {}, not to the user running Portcullis ({me})",
            path.display(),
            metadata.uid()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn with_nothing_set_the_defaults_apply() {
        let config = load_from(&GlobalArgs::default(), BTreeMap::new()).unwrap();
        assert_eq!(config.mode, Mode::Development);
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./portcullis-data"));
        assert_eq!(config.http.body_limit_bytes, 65536);
        assert_eq!(
            config.database_target(),
            Ok(DatabaseTarget::Sqlite("./portcullis-data/portcullis.db".into()))
        );
    }

    #[test]
    fn layers_apply_in_order_file_then_environment_then_flags() {
        let file =
            toml_file("[http]\nlisten = \"127.0.0.1:1000\"\nbody_limit_bytes = 2048\nmax_headers = 20\n");
        let env =
            env(&[("PORTCULLIS_HTTP__LISTEN", "127.0.0.1:2000"), ("PORTCULLIS_HTTP__MAX_HEADERS", "30")]);
        let flags = GlobalArgs { config: Some(file.path().into()), ..Default::default() };
        let config = load_from(&flags, env.clone()).unwrap();
        assert_eq!(config.http.body_limit_bytes, 2048, "file beats default");
        assert_eq!(config.http.max_headers, 30, "environment beats file");
        assert_eq!(config.http.listen, "127.0.0.1:2000".parse().unwrap(), "environment beats file");
        let flags = GlobalArgs { listen: Some("127.0.0.1:3000".parse().unwrap()), ..flags };
        assert_eq!(
            load_from(&flags, env).unwrap().http.listen,
            "127.0.0.1:3000".parse().unwrap(),
            "flag beats environment"
        );
    }

    #[test]
    fn lists_can_be_set_from_the_environment() {
        let env = env(&[("PORTCULLIS_HTTP__TRUSTED_PROXIES", r#"["10.0.0.0/8", "::1/128"]"#)]);
        let config = load_from(&GlobalArgs::default(), env).unwrap();
        assert_eq!(config.http.trusted_proxies.len(), 2);
    }

    #[test]
    fn an_invalid_value_names_the_key_and_the_allowed_values() {
        let err = load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_MODE", "prod")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mode") && text.contains("development") && text.contains("production"),
            "{text}"
        );
        let err = load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_LOG__FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("log.format"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error_not_silently_ignored() {
        let err = load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_HTTP__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let file = toml_file("[htp]\nlisten = \"127.0.0.1:1\"\n");
        let err = load_from(
            &GlobalArgs { config: Some(file.path().into()), ..Default::default() },
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
    }

    #[test]
    fn a_secret_is_taken_verbatim_even_when_it_looks_like_a_number() {
        let digits = "12345678901234567890123456789012345";
        let config =
            load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_SECRETS__INSTANCE_SECRET", digits)]))
                .unwrap();
        assert_eq!(config.secrets.instance_secret.unwrap().expose(), digits);
    }

    #[test]
    fn a_secret_can_come_from_a_file_and_is_remembered_for_the_permission_check() {
        let file = toml_file("a-secret-read-from-a-file-0123456789abcdef\n");
        let env = env(&[("PORTCULLIS_SECRETS__INSTANCE_SECRET_FILE", file.path().to_str().unwrap())]);
        let config = load_from(&GlobalArgs::default(), env).unwrap();
        assert_eq!(
            config.secrets.instance_secret.unwrap().expose(),
            "a-secret-read-from-a-file-0123456789abcdef"
        );
        assert_eq!(config.secret_files, vec![("secrets.instance_secret".into(), file.path().to_path_buf())]);
    }

    #[test]
    fn only_secrets_may_come_from_files_and_not_twice() {
        let file = toml_file("x");
        let path = file.path().to_str().unwrap();
        // Not a secret: `listen_file` is just an unknown key, reported by name.
        let err =
            load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_HTTP__LISTEN_FILE", path)])).unwrap_err();
        assert!(err.to_string().contains("listen_file"), "{err}");
        // An ordinary key that ends in _file is not mistaken for an indirection.
        let config = load_from(
            &GlobalArgs::default(),
            env(&[("PORTCULLIS_TLS__CERT_FILE", "/c.pem"), ("PORTCULLIS_TLS__KEY_FILE", "/k.pem")]),
        )
        .unwrap();
        assert_eq!(config.tls.cert_file, Some(PathBuf::from("/c.pem")));
        let err = load_from(
            &GlobalArgs::default(),
            env(&[
                ("PORTCULLIS_SECRETS__INSTANCE_SECRET_FILE", path),
                ("PORTCULLIS_SECRETS__INSTANCE_SECRET", "y"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("both set"), "{err}");
    }

    #[test]
    fn the_masked_rendering_never_contains_a_secret() {
        let vars = env(&[
            ("PORTCULLIS_SECRETS__INSTANCE_SECRET", "canary-secret-value-0123456789abcdef"),
            ("PORTCULLIS_DATABASE__URL", "postgres://u:canary-password@db.example/portcullis"),
        ]);
        let config = load_from(&GlobalArgs::default(), vars).unwrap();
        let text = format!("{}{:?}", config.to_masked_toml(), config);
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("********"));
        assert_eq!(config.database_description(), "PostgreSQL db.example/portcullis");

        // Every key in SECRET_KEYS (a new one included, untouched here), in each shape a secret takes
        // (a bare value, a URL's password, a KEK entry), from each source (variable, `_FILE`, the
        // configuration file), in both modes: nothing `config check` prints (the rendering, the
        // production problems, or the refusal), nor Debug, nor the database description, holds it.
        // Some secrets are only accepted beside another setting: those are the companions; a new
        // secret that needs one not listed fails the last assertion, not silently.
        use base64::Engine;
        let canary = "CanaryS3cretValue0123456789abcdefXYZ";
        let kek =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(b"canary-kek-bytes-0123456789abcde");
        let shapes = [
            (canary.to_owned(), canary),
            (format!("postgres://u:{canary}@db.example:5432/portcullis"), canary),
            (format!("redis://:{canary}@127.0.0.1:6379/0"), canary),
            (format!("k1:{kek}"), kek.as_str()),
            (format!("https://{canary}@sentry.example.com/42"), canary),
        ];
        let companions: [&[(&str, &str)]; 2] = [&[], &[("PORTCULLIS_EMAIL__SMTP_USERNAME", "u")]];
        for key in SECRET_KEYS {
            let (section, name) = key.split_once('.').unwrap();
            let variable = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"));
            let mut masked = false;
            for (value, secret) in &shapes {
                let file = toml_file(value);
                let path = file.path().to_str().unwrap().to_owned();
                let toml_line = format!("[{section}]\n{name} = {}\n", toml::Value::from(value.as_str()));
                let config_file = toml_file(&toml_line);
                for mode in ["development", "production"] {
                    let sources = [
                        (GlobalArgs::default(), (variable.clone(), value.clone())),
                        (GlobalArgs::default(), (format!("{variable}_FILE"), path.clone())),
                        (
                            GlobalArgs { config: Some(config_file.path().into()), ..Default::default() },
                            ("PORTCULLIS_LOG__LEVEL".into(), "info".into()),
                        ),
                    ];
                    for ((flags, (set, to)), companion) in
                        sources.into_iter().flat_map(|source| companions.map(|c| (source.clone(), c)))
                    {
                        let mut vars = env(companion);
                        vars.extend(env(&[("PORTCULLIS_MODE", mode), (&set, &to)]));
                        let printed = match load_from(&flags, vars) {
                            Ok(config) => {
                                let rendered = config.to_masked_toml();
                                let table: toml::Table = toml::from_str(&rendered).unwrap();
                                masked |= table.get(section).and_then(|s| s.get(name))
                                    == Some(&toml::Value::from("********"));
                                format!(
                                    "{rendered}\n{}\n{config:?}\n{}",
                                    config.production_problems(false).join("\n"),
                                    config.database_description()
                                )
                            }
                            Err(refused) => refused.to_string(),
                        };
                        assert!(!printed.contains(secret), "{key} from {set} ({mode}) printed: {printed}");
                    }
                }
            }
            assert!(masked, "{key}: no shape of secret was accepted, so its masking went untested");
        }
    }

    #[test]
    fn a_bad_database_url_is_refused_without_echoing_it() {
        let err = load_from(
            &GlobalArgs { database_url: Some("mysql://u:pw-canary@x/y".into()), ..Default::default() },
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("database.url"));
        assert!(!err.to_string().contains("pw-canary"));
    }

    /// Production mode with the account settings production needs, so each test sees only the
    /// problems it is about.
    fn production(extra: &[(&str, &str)]) -> Config {
        let mut pairs = vec![
            ("PORTCULLIS_MODE", "production"),
            ("PORTCULLIS_HTTP__PUBLIC_URL", "https://id.example.com"),
            ("PORTCULLIS_EMAIL__SMTP_HOST", "smtp.example.com"),
            ("PORTCULLIS_KEYS__KEK", "prod1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio"),
            // Backups have their own check (config/backup.rs); these tests are about the rest.
            ("PORTCULLIS_BACKUP__ENABLED", "false"),
        ];
        pairs.extend_from_slice(extra);
        load_from(&GlobalArgs::default(), env(&pairs)).unwrap()
    }

    const GOOD_SECRET: &str = "a-real-secret-that-is-long-enough-0123456789";

    #[test]
    fn production_refuses_plain_http_without_a_trusted_proxy() {
        let config = production(&[("PORTCULLIS_SECRETS__INSTANCE_SECRET", GOOD_SECRET)]);
        let problems = config.production_problems(false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("tls.cert_file"));
        let config = production(&[
            ("PORTCULLIS_SECRETS__INSTANCE_SECRET", GOOD_SECRET),
            ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"10.0.0.1/32\"]"),
        ]);
        assert_eq!(config.production_problems(false), Vec::<String>::new());
    }

    #[test]
    fn production_refuses_a_missing_short_or_example_secret() {
        let proxy = ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"10.0.0.1/32\"]");
        let missing = production(&[proxy]).production_problems(false);
        assert!(missing.iter().any(|p| p.contains("missing")), "{missing:?}");
        let short =
            production(&[proxy, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", "short")]).production_problems(false);
        assert!(short.iter().any(|p| p.contains("at least 32")), "{short:?}");
        for example in EXAMPLE_SECRETS {
            let problems = production(&[proxy, ("PORTCULLIS_SECRETS__INSTANCE_SECRET", example)])
                .production_problems(false);
            assert!(problems.iter().any(|p| p.contains("example value")), "{problems:?}");
        }
    }

    #[test]
    fn production_refuses_world_readable_data_dir_and_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, GOOD_SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = load_from(
            &GlobalArgs { data_dir: Some(dir.path().into()), ..Default::default() },
            env(&[
                ("PORTCULLIS_MODE", "production"),
                ("PORTCULLIS_HTTP__PUBLIC_URL", "https://id.example.com"),
                ("PORTCULLIS_EMAIL__SMTP_HOST", "smtp.example.com"),
                ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"10.0.0.1/32\"]"),
                ("PORTCULLIS_SECRETS__INSTANCE_SECRET_FILE", secret.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let problems = config.production_problems(false);
        assert!(problems.iter().any(|p| p.starts_with("data_dir") && p.contains("755")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("secrets.instance_secret") && p.contains("644")),
            "{problems:?}"
        );
    }

    #[test]
    fn production_refuses_trusting_every_address_as_a_proxy() {
        let config = production(&[
            ("PORTCULLIS_SECRETS__INSTANCE_SECRET", GOOD_SECRET),
            ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"0.0.0.0/0\"]"),
        ]);
        let problems = config.production_problems(false);
        assert!(problems.iter().any(|p| p.contains("/0")), "{problems:?}");
    }

    #[test]
    fn production_refuses_a_remote_postgresql_without_verified_tls() {
        let proxy = ("PORTCULLIS_HTTP__TRUSTED_PROXIES", "[\"10.0.0.1/32\"]");
        let secret = ("PORTCULLIS_SECRETS__INSTANCE_SECRET", GOOD_SECRET);
        for (url, refused) in [
            ("postgres://u:p@db.internal/portcullis", true),
            ("postgres://u:p@db.internal/portcullis?sslmode=require", true),
            ("postgres://u:p@db.internal:5432/portcullis?sslmode=verify-full", false),
            ("postgres://u:p@127.0.0.1:5432/portcullis", false),
            ("postgres://u:p@[::1]/portcullis", false),
            ("postgres://u:p@localhost/portcullis", false),
        ] {
            let config = production(&[proxy, secret, ("PORTCULLIS_DATABASE__URL", url)]);
            let problems = config.production_problems(false);
            assert_eq!(problems.iter().any(|p| p.contains("sslmode")), refused, "{url}: {problems:?}");
        }
    }

    #[test]
    fn production_refuses_a_data_dir_that_is_a_symbolic_link() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(ownership_problem("data_dir", &link).is_some_and(|p| p.contains("symbolic link")));
        assert_eq!(ownership_problem("data_dir", &real), None);
    }

    #[test]
    fn out_of_range_durations_are_refused_before_they_can_overflow() {
        let err = load_from(
            &GlobalArgs::default(),
            env(&[("PORTCULLIS_HTTP__HEADER_READ_TIMEOUT_SECS", "18446744073709551615")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("http.header_read_timeout_secs"), "{err}");
        let err = load_from(&GlobalArgs::default(), env(&[("PORTCULLIS_HTTP__PUBLIC_HOST", "evil@x")]))
            .unwrap_err();
        assert!(err.to_string().contains("http.public_host"), "{err}");
    }

    #[test]
    fn a_wildcard_origin_with_credentials_is_refused_in_every_mode() {
        let err = load_from(
            &GlobalArgs::default(),
            env(&[
                ("PORTCULLIS_CORS__ALLOWED_ORIGINS", "[\"*\"]"),
                ("PORTCULLIS_CORS__ALLOW_CREDENTIALS", "true"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cors.allowed_origins"), "{err}");
    }

    #[test]
    fn development_mode_has_no_production_problems() {
        let config = load_from(&GlobalArgs::default(), BTreeMap::new()).unwrap();
        assert!(config.production_problems(true).is_empty());
    }

    #[test]
    fn the_example_configuration_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every key is present (commented out, with its default) in the example file.
        let rendered = Config::default().to_masked_toml();
        let documented: toml::Table = toml::from_str(&uncomment(&text)).unwrap();
        let defaults: toml::Table = toml::from_str(&rendered).unwrap();
        for (section, value) in &defaults {
            match value {
                toml::Value::Table(keys) => {
                    for key in keys.keys() {
                        assert!(
                            documented.get(section).and_then(|s| s.get(key)).is_some(),
                            "example.toml lacks {section}.{key}"
                        );
                    }
                }
                _ => assert!(documented.contains_key(section), "example.toml lacks {section}"),
            }
        }
        for secret in SECRET_KEYS {
            let (section, key) = secret.split_once('.').unwrap();
            assert!(
                documented.get(section).and_then(|s| s.get(key)).is_some(),
                "example.toml lacks {secret}"
            );
        }
        // The uncommented example is itself a valid configuration, and its secret is refused in production.
        let file = toml_file(&uncomment(&text));
        let config = load_from(
            &GlobalArgs { config: Some(file.path().into()), ..Default::default() },
            BTreeMap::new(),
        )
        .unwrap();
        let example_secret = config.secrets.instance_secret.as_ref().unwrap().expose().to_owned();
        assert!(secret_problem("x", &example_secret).is_some_and(|p| p.contains("example value")));
        // Every environment name in the example matches the key it documents.
        for line in text.lines().filter(|l| l.contains("env: PORTCULLIS_")) {
            assert!(line.contains("PORTCULLIS_"), "{line}");
        }
    }

    /// Turns `# key = value` lines (the documented defaults) into live lines.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest.to_owned(),
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ----- every key, read off the configuration types themselves -----

    /// What a configuration key holds, as far as its documentation is concerned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Shape {
        /// One value: `PORTCULLIS_SECTION__KEY`.
        Value,
        /// Names to values (`alerts.severity`): one variable per name, `PORTCULLIS_SECTION__KEY__NAME`.
        Map,
        /// A list of tables (`[[alerts.webhooks]]`), in the file only; the fields of one entry.
        TableList(Vec<String>),
    }

    /// A field no table of the configuration has.
    const PROBE: &str = "__probe__";

    /// `value` at `path` in an otherwise empty configuration.
    fn at(path: &[String], value: serde_json::Value) -> serde_json::Value {
        path.iter().rev().fold(value, |inner, key| serde_json::json!({ key.as_str(): inner }))
    }

    /// Why `Config`'s deserializer refuses `value`, if it does.
    fn refusal(value: serde_json::Value) -> Option<String> {
        serde_json::from_value::<Config>(value).err().map(|e| e.to_string())
    }

    /// The fields of the table that `probe` (holding a [`PROBE`] field) reaches at `path`, if it is a
    /// table: every table denies unknown fields, and serde's refusal lists the real ones
    /// ("unknown field `__probe__`, expected one of `a`, `b`").
    fn fields_at(path: &[String], probe: serde_json::Value) -> Option<Vec<String>> {
        let refusal = refusal(at(path, probe))?;
        let listed = refusal.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
        Some(listed.split('`').skip(1).step_by(2).map(str::to_owned).collect())
    }

    /// Every key the configuration accepts (dotted) and its shape. Read off the deserializer, the one
    /// that loads real files, rather than a list kept by hand: a key added to any table, or a new
    /// table, is in it at once, `Option` keys (which the rendering of the defaults leaves out) too.
    fn every_key() -> Vec<(String, Shape)> {
        fn walk(path: &[String], keys: &mut Vec<(String, Shape)>) {
            let probe = serde_json::json!({ PROBE: 1 });
            let fields = fields_at(path, probe.clone())
                .unwrap_or_else(|| panic!("`{}` is not a table that denies unknown fields", path.join(".")));
            for field in fields {
                let mut path = path.to_vec();
                path.push(field);
                let dotted = path.join(".");
                if fields_at(&path, probe.clone()).is_some() {
                    walk(&path, keys);
                } else if refusal(at(&path, serde_json::json!({}))).is_none() {
                    keys.push((dotted, Shape::Map));
                } else if let Some(entry) = fields_at(&path, serde_json::json!([probe])) {
                    keys.push((dotted, Shape::TableList(entry)));
                } else {
                    keys.push((dotted, Shape::Value));
                }
            }
        }
        let mut keys = Vec::new();
        walk(&[], &mut keys);
        keys
    }

    fn repository_file(name: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)).unwrap()
    }

    /// A key's variable: `mode` is `PORTCULLIS_MODE`, `http.listen` is `PORTCULLIS_HTTP__LISTEN`.
    fn variable_of(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"))
    }

    /// The value at a dotted path of a TOML table.
    fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
        match key.split_once('.') {
            None => table.get(key),
            Some((first, rest)) => lookup(table.get(first)?.as_table()?, rest),
        }
    }

    /// The `# PORTCULLIS_NAME=value` lines of .env.example, as (name, value).
    fn env_example_entries(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# ")?.split_once('='))
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !name.contains(' '))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// Every `PORTCULLIS_…` name a text mentions, but the `PORTCULLIS_SECTION__KEY` pattern itself.
    fn variables_in(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with(ENV_PREFIX) && !w.starts_with("PORTCULLIS_SECTION"))
            .map(str::to_owned)
            .collect()
    }

    /// The lines of the commented example of one `[[key]]` entry in config/example.toml.
    fn entry_example<'t>(example: &'t str, key: &str) -> Vec<&'t str> {
        let header = format!("#   [[{key}]]");
        let mut lines = example.lines().skip_while(|line| line.trim_end() != header);
        lines.next();
        lines.take_while(|line| line.starts_with("#   ")).collect()
    }

    #[test]
    fn every_configuration_key_is_documented_in_the_example_file_and_the_environment_list() {
        let example = repository_file("config/example.toml");
        let documented: toml::Table = toml::from_str(&uncomment(&example)).unwrap();
        let env_example = repository_file(".env.example");
        let listed: Vec<String> =
            env_example_entries(&env_example).into_iter().map(|(name, _)| name).collect();
        let keys = every_key();
        assert!(keys.len() > 100 && keys.iter().any(|(k, _)| k == "http.listen"), "{keys:?}");

        let mut missing = Vec::new();
        // The command line's own variables (--config, --listen, …) set something too.
        use clap::CommandFactory;
        let mut settable: Vec<String> = crate::cli::Cli::command()
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        let mut prefixes = Vec::new();
        for (key, shape) in &keys {
            if lookup(&documented, key).is_none() {
                missing.push(format!("config/example.toml: {key}"));
            }
            let variable = variable_of(key);
            match shape {
                Shape::Value => {
                    if !listed.contains(&variable) {
                        missing.push(format!(".env.example: {variable}"));
                    }
                    settable.push(variable);
                }
                Shape::Map => {
                    let prefix = format!("{variable}__");
                    if !listed.iter().any(|name| name.starts_with(&prefix)) {
                        missing.push(format!(".env.example: {prefix}<NAME>"));
                    }
                    prefixes.push(prefix);
                }
                Shape::TableList(fields) => {
                    let lines = entry_example(&example, key);
                    for field in fields {
                        let shown = [format!("#   {field} = "), format!(" or {field} = ")];
                        if !lines.iter().any(|line| shown.iter().any(|s| line.contains(s.as_str()))) {
                            missing.push(format!(
                                "config/example.toml: {key}[].{field} in its [[{key}]] example"
                            ));
                        }
                    }
                }
            }
        }
        for secret in SECRET_KEYS {
            assert!(keys.iter().any(|(key, _)| key == secret), "SECRET_KEYS names {secret}, which is no key");
            let file = format!("{}_FILE", variable_of(secret));
            if !listed.contains(&file) {
                missing.push(format!(".env.example: {file}"));
            }
            settable.push(file);
        }
        assert!(missing.is_empty(), "undocumented: {missing:#?}");

        // The other way round: every variable either file names sets something.
        for (file, text) in [("config/example.toml", &example), (".env.example", &env_example)] {
            let stale: Vec<String> = variables_in(text)
                .into_iter()
                .filter(|name| !settable.contains(name) && !prefixes.iter().any(|p| name.starts_with(p)))
                .collect();
            assert!(stale.is_empty(), "{file} names variables that set nothing: {stale:?}");
        }
    }

    #[test]
    fn the_example_file_and_env_example_show_the_real_default_of_every_key() {
        let example = repository_file("config/example.toml");
        let documented: toml::Table = toml::from_str(&uncomment(&example)).unwrap();
        let defaults: toml::Table = toml::from_str(&Config::default().to_masked_toml()).unwrap();
        let keys = every_key();
        let mut wrong = Vec::new();
        for (key, _) in &keys {
            // A key without a default (unset) shows an example value instead, which is fine.
            if let (Some(default), Some(shown)) = (lookup(&defaults, key), lookup(&documented, key))
                && default != shown
            {
                wrong.push(format!("config/example.toml shows {key} = {shown}; the default is {default}"));
            }
        }
        // .env.example shows what config/example.toml shows (secrets: nothing), as the environment
        // layer reads it: TOML when it parses as a value (numbers, booleans, lists), else the text.
        for (name, value) in env_example_entries(&repository_file(".env.example")) {
            let Some((key, _)) =
                keys.iter().find(|(key, shape)| *shape == Shape::Value && variable_of(key) == name)
            else {
                continue;
            };
            let Some(shown) = lookup(&documented, key) else { continue };
            if SECRET_KEYS.contains(&key.as_str()) {
                if !value.is_empty() {
                    wrong.push(format!(".env.example gives the secret {name} a value"));
                }
                continue;
            }
            let read = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut table| table.remove("v"))
                .unwrap_or_else(|| toml::Value::from(value.as_str()));
            if &read != shown {
                wrong.push(format!(".env.example shows {name}={value}; config/example.toml shows {shown}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
