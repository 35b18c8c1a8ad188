//! Use cases: every security decision of Portcullis lives here, behind the one façade [`App`].
//!
//! `app` knows nothing of HTTP or SQL: the web layer and the CLI both call these functions, and
//! storage goes through the `store` traits. Time comes from a [`Clock`], so rules are testable with
//! a fixed clock.

mod abuse;
mod accounts;
mod admin;
mod api_keys;
pub mod audit;
mod authz;
mod backup;
#[doc(hidden)]
pub mod benchmarking;
mod clock;
mod csrf;
mod erasure;
mod error;
mod export;
#[doc(hidden)]
pub mod fuzzing;
mod instance;
mod keys;
pub mod mail;
mod metrics;
mod mfa;
mod organizations;
mod passwords;
mod pii;
mod readiness;
mod retention;
mod roles;
mod secret_token;
mod security_events;
mod sessions;
#[cfg(test)]
mod testing;
mod tokens;
#[cfg(test)]
mod use_case_tests;

use std::sync::{Arc, RwLock};

use portcullis_domain::{PasswordPolicy, SessionLifetimes};
use portcullis_store::Store;
use secrecy::SecretSlice;

pub use keys::{KEK_BYTES, KEY_SYNC_SECS, KekSet, KeyInfo, KeySettings, Reencryption, Rotation};
pub use portcullis_store::{KeyPurpose, KeyState};

pub use abuse::RateStanding;
pub use abuse::alerts::{
    AlertCounters, AlertSettings, AlertSinkError, EmailSink, RetryPolicy, SIGNATURE_HEADER, SignatureError,
    WebhookSink, signature_header, verify_signature,
};
pub use abuse::detection::{DetectionSettings, ProbeResponse};
pub use abuse::ip_rules::{IP_RULE_SYNC_SECS, IpRuleSettings, MAX_IP_RULE_EXPIRY_SECS, NewIpRule};
pub use abuse::rate_limit::{
    Allowance, FailureMode, RateLimitBackendSettings, RateLimitSettings, RatePolicy, RatePolicyKind, Refusal,
    redis_url_is_valid,
};
pub use accounts::{PROFILE_CACHE_MILLIS, Profile, SignupPolicy, SignupRequest};
pub use admin::{
    AdminUser, DEFAULT_PAGE, MAX_PAGE, StatusChange, USER_SCAN_BUDGET, UserChange, UserPage, UserQuery,
};
pub use api_keys::{
    ApiKeySettings, ApiKeySummary, Introspection, IssuedApiKey, KEY_CACHE_MILLIS, KEY_USE_RECORD_MILLIS,
    NewApiKey, ServiceAccountChange, ServiceAccountDetails,
};
pub use authz::{CheckRequest, MAX_CHECK_BATCH};
pub use backup::{
    BackupInfo, BackupSettings, BackupTarget, Backups, Created, FolderTarget, Manifest, Pruned, Restored,
    S3Settings, S3Target, Sidecar, StoredObject, Verification, parse_recipients as backup_recipients,
};
/// The archive format on its own (docs/decisions/0012-backups.md), for tools that read or write
/// archives outside a `Backups` (the fuzz targets).
pub mod backup_format {
    pub use crate::backup::{ArchiveReader, ArchiveWriter, ChainPoint, FORMAT, FORMAT_VERSION, Header, Item};
}
pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{AppError, FieldIssue};
pub use export::{
    EXPORT_FORMAT, ExportedApiKey, ExportedSession, Factors, MAX_EXPORTED_AUDIT_EVENTS,
    MAX_EXPORTED_SESSIONS, Membership, PersonalData, SessionState, Truncated,
};
pub use metrics::{InFlight, LoginResult, Metrics, MetricsAccess};
pub use mfa::{
    MfaChallenge, MfaDevice, MfaFactors, MfaSettings, PasskeyOptions, PasskeySettings, RecoveryCodes,
    SecondFactor, TotpEnrollment,
};
pub use organizations::Member;
pub use passwords::{BCRYPT_MAX_BYTES, HashAlgorithm, HashPoolSize, HashSlot, PasswordHasher, Verified};
pub use readiness::{CheckState, Readiness};
pub use retention::{RetentionReport, RetentionSettings};
pub use roles::{MAX_HOLDERS_LISTED, OrganizationRoles, RoleChange};
pub use secret_token::SecretToken;
pub use security_events::{AdminSecurityEvent, SecurityEventFilter, SecurityEventList, parse_rfc3339};
pub use sessions::{
    ClientContext, Credential, IssuedCredentials, LoginMode, LoginOutcome, Principal, PrincipalKind,
    REVOCATION_SYNC_SECS, SessionSummary, SessionTransport,
};
pub use tokens::{AccessClaims, SigningAlgorithm, TokenSettings};

use crate::csrf::CsrfKey;
use crate::keys::LoadedKeys;
use crate::mail::Mailer;
use crate::tokens::VerifiedTokens;

/// Account rules chosen by configuration.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub signup: SignupPolicy,
    /// Whether an account must verify its email address before it may log in.
    pub require_verified_email: bool,
    pub password_policy: PasswordPolicy,
    pub sessions: SessionLifetimes,
    /// The externally visible base URL (`https://id.example.com`), for links in emails.
    pub public_url: String,
}

/// Settings the use cases need, already validated by the server's configuration loader.
#[derive(Debug)]
pub struct AppSettings {
    /// The per-installation secret that keys derived secrets (CSRF tokens). At least 32 bytes; never
    /// logged.
    pub instance_secret: SecretSlice<u8>,
    /// The key-encryption keys that wrap the keyring; the first wraps new keys.
    pub keks: KekSet,
    pub keys: KeySettings,
    /// The version string recorded in the instance metadata.
    pub version: &'static str,
    pub accounts: AccountSettings,
    pub tokens: TokenSettings,
    pub password_hash: HashAlgorithm,
    pub hash_pool: HashPoolSize,
    pub api_keys: ApiKeySettings,
    /// One in how many allowed check-API decisions is logged (0: none); denials always are.
    pub log_allowed_checks_one_in: u32,
    /// Which security events alert, and the webhook and email sinks they go to.
    pub alerts: AlertSettings,
    pub rate_limits: RateLimitSettings,
    /// The configuration file's IP rules (fixed; administrators add theirs through the API).
    pub ip_rules: IpRuleSettings,
    pub detection: DetectionSettings,
    /// Failed logins per account identifier that lock its password path, and for how long.
    pub lockout: portcullis_domain::LockoutPolicy,
    /// Audit checkpoints, retention and verification.
    pub audit: audit::AuditSettings,
    /// Second factors, their policy, and step-up.
    pub mfa: MfaSettings,
    /// Who may read the metrics.
    pub metrics: MetricsAccess,
    /// How long ended sessions, security events and unconfirmed accounts are kept.
    pub retention: RetentionSettings,
}

impl AppSettings {
    /// Production defaults around an instance secret, the KEKs and the public URL.
    pub fn new(
        instance_secret: SecretSlice<u8>,
        keks: KekSet,
        version: &'static str,
        public_url: &str,
    ) -> Self {
        let public_url = public_url.trim_end_matches('/').to_owned();
        Self {
            instance_secret,
            keks,
            keys: KeySettings::default(),
            version,
            accounts: AccountSettings {
                signup: SignupPolicy::Closed,
                require_verified_email: true,
                password_policy: PasswordPolicy::default(),
                sessions: SessionLifetimes::default(),
                public_url: public_url.clone(),
            },
            tokens: TokenSettings {
                issuer: public_url,
                audience: "portcullis".to_owned(),
                algorithm: SigningAlgorithm::EdDsa,
                access_ttl_secs: 15 * 60,
                leeway_secs: 30,
            },
            password_hash: HashAlgorithm::default(),
            hash_pool: HashPoolSize::for_this_machine(),
            api_keys: ApiKeySettings::default(),
            log_allowed_checks_one_in: 100,
            alerts: AlertSettings::default(),
            rate_limits: RateLimitSettings::default(),
            ip_rules: IpRuleSettings::default(),
            detection: DetectionSettings::default(),
            lockout: portcullis_domain::LockoutPolicy::default(),
            audit: audit::AuditSettings::default(),
            mfa: MfaSettings::default(),
            metrics: MetricsAccess::default(),
            retention: RetentionSettings::default(),
        }
    }
}

/// The façade every caller (HTTP handlers, the CLI, background jobs) goes through.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: AppSettings,
    mailer: Arc<dyn Mailer>,
    hasher: PasswordHasher,
    csrf: CsrfKey,
    /// Replaced whole when keys load or change; readers clone the `Arc` and never wait on a writer.
    keys: RwLock<Arc<LoadedKeys>>,
    /// When this node last read the keyring successfully (unix millis), for readiness: a node that
    /// cannot follow key changes must stop taking traffic.
    keys_synced_at: std::sync::atomic::AtomicI64,
    verified_tokens: VerifiedTokens,
    profiles: accounts::ProfileCache,
    person_keys: erasure::PersonKeys,
    api_keys: api_keys::KeyCache,
    role_grants: authz::RoleGrants,
    /// Allowed check-API decisions so far, for sampling them into the log.
    allowed_checks: std::sync::atomic::AtomicU64,
    revoked: sessions::RevokedSessions,
    alerts: abuse::alerts::Alerter,
    rate_limits: abuse::RateLimits,
    ip_rules: abuse::ip_rules::IpRules,
    detector: abuse::detection::Detector,
    audit_writer: audit::AuditWriter,
    /// The WebAuthn relying party; `None` when the public URL cannot carry passkeys.
    webauthn: Option<webauthn_rs::Webauthn>,
    metrics: metrics::Metrics,
    /// This node's last whole-chain verification, if any: when, and whether the chain was intact
    /// (for the metrics).
    audit_verified: std::sync::Mutex<Option<(portcullis_domain::Timestamp, bool)>>,
}

impl App {
    /// Wires the use cases to a store, a clock and a mailer. Computes the dummy password hash (one
    /// hash's worth of CPU); keys load in [`App::load_keys`].
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: AppSettings,
        mailer: Arc<dyn Mailer>,
    ) -> Result<Self, AppError> {
        let hasher = PasswordHasher::new(settings.password_hash, settings.hash_pool)?;
        let metrics = metrics::Metrics::new(settings.version)?;
        let csrf = CsrfKey::derive(&settings.instance_secret)?;
        let alerts = abuse::alerts::Alerter::new(&settings.alerts, settings.version);
        let rate_limits = abuse::RateLimits::new(settings.rate_limits.clone(), clock.clone())?;
        let ip_rules = abuse::ip_rules::IpRules::new(&settings.ip_rules, clock.now());
        let webauthn = match mfa::relying_party(&settings.mfa.passkeys, &settings.accounts.public_url) {
            Ok(webauthn) => Some(webauthn),
            Err(why) => {
                // Expected in development (the public URL is the bound address); the passkey routes
                // answer 501 with the reason, and a misconfigured relying-party id fails the config
                // check before this.
                tracing::debug!(%why, "passkeys are unavailable");
                None
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                clock,
                settings,
                mailer,
                hasher,
                csrf,
                keys: RwLock::new(Arc::new(LoadedKeys::empty())),
                keys_synced_at: std::sync::atomic::AtomicI64::new(i64::MIN),
                verified_tokens: VerifiedTokens::default(),
                profiles: accounts::ProfileCache::default(),
                person_keys: erasure::PersonKeys::default(),
                api_keys: api_keys::KeyCache::default(),
                role_grants: authz::RoleGrants::default(),
                allowed_checks: std::sync::atomic::AtomicU64::new(0),
                revoked: sessions::RevokedSessions::default(),
                alerts,
                rate_limits,
                ip_rules,
                detector: abuse::detection::Detector::default(),
                audit_writer: audit::AuditWriter::default(),
                webauthn,
                metrics,
                audit_verified: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The store, for operational commands (migrations) that the CLI runs.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Closes the database cleanly: in-flight transactions finish, SQLite checkpoints its log.
    pub async fn shutdown(&self) {
        // Events since the last checkpoint get one at every clean stop (the CLI's too), so only a
        // crash leaves any uncovered.
        if self.can_sign_tokens()
            && let Err(error) = self.checkpoint_audit_now(true).await
        {
            tracing::warn!(error = %portcullis_domain::error_chain(&error), "no audit checkpoint at shutdown");
        }
        self.inner.store.close().await;
    }

    /// The origin (scheme, host, port) of the public URL, as browsers send it in `Origin`.
    pub fn public_origin(&self) -> Option<String> {
        let url = &self.inner.settings.accounts.public_url;
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())?;
        Some(format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
    }

    fn now(&self) -> portcullis_domain::Timestamp {
        self.inner.clock.now()
    }
}
