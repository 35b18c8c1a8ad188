//! Fixtures for use-case tests: an app on in-memory SQLite with a fixed clock, fast password
//! hashing and a mailer that keeps what it is given.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use portcullis_domain::Timestamp;
use portcullis_store::Store;
use portcullis_store_sqlite::SqliteStore;
use secrecy::SecretSlice;

use crate::mail::{MailError, Mailer, OutgoingEmail};
use crate::{App, AppSettings, FixedClock, HashAlgorithm, HashPoolSize, KekSet, SignupPolicy};

/// The fixed clock's starting time.
pub const START: i64 = 1_700_000_000_000;

/// Keeps every email instead of sending it.
#[derive(Debug, Default)]
pub struct RecordingMailer(pub Mutex<Vec<OutgoingEmail>>);

#[async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        self.0.lock().unwrap().push(email.clone());
        Ok(())
    }
}

/// An app and the handles a test needs to steer it.
pub struct TestApp {
    pub app: App,
    pub clock: Arc<FixedClock>,
    pub mail: Arc<RecordingMailer>,
}

/// Test settings: open signup, no verification required, cheap argon2id.
pub fn settings() -> AppSettings {
    let mut settings =
        AppSettings::new(SecretSlice::from(vec![7u8; 32]), test_keks(), "test", "https://id.example.com");
    settings.accounts.signup = SignupPolicy::Open;
    settings.accounts.require_verified_email = false;
    settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
    settings.hash_pool = HashPoolSize { workers: 2, queue: 8 };
    // Use-case tests log in as the same few people again and again: budgets are out of their way,
    // except in the rate limit tests, which set their own.
    let generous = crate::RatePolicy::per_minute(1_000_000);
    let r = &mut settings.rate_limits;
    (r.ip, r.auth_ip, r.account, r.principal, r.api_key) = (generous, generous, generous, generous, generous);
    settings.detection.stuffing_accounts = 100_000;
    r.reset_mail = generous;
    settings
}

/// The KEKs tests run with: `test` (active) and `old` (a previous one).
pub fn test_keks() -> KekSet {
    KekSet::parse(&kek_entries(&[("test", 5), ("old", 6)])).unwrap()
}

/// A KEK list of `id:key` entries whose 32 key bytes all equal the given byte.
pub fn kek_entries(entries: &[(&str, u8)]) -> String {
    use base64::Engine;
    entries
        .iter()
        .map(|(id, byte)| {
            format!("{id}:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([*byte; 32]))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An app on `store` (not migrated by this function).
pub fn app_on(store: SqliteStore) -> TestApp {
    app_with(store, settings())
}

/// An app on `store` with `settings`.
pub fn app_with(store: SqliteStore, settings: AppSettings) -> TestApp {
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_millis(START)));
    let mail = Arc::new(RecordingMailer::default());
    let app = App::new(Arc::new(store), clock.clone(), settings, mail.clone()).unwrap();
    TestApp { app, clock, mail }
}

/// An app on `store` with `settings`, reading time from `clock`: two apps given one clock are two
/// server nodes whose clocks agree.
pub fn app_with_clock(store: SqliteStore, settings: AppSettings, clock: Arc<FixedClock>) -> TestApp {
    let mail = Arc::new(RecordingMailer::default());
    let app = App::new(Arc::new(store), clock.clone(), settings, mail.clone()).unwrap();
    TestApp { app, clock, mail }
}

/// An app on a migrated in-memory database with its signing key loaded.
pub async fn app() -> TestApp {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let test = app_on(store);
    test.app.load_keys().await.unwrap();
    test
}

/// The stored security events of one kind, newest first (at most 200).
pub async fn security_events(
    app: &App,
    kind: portcullis_domain::SecurityEventKind,
) -> Vec<portcullis_domain::SecurityEvent> {
    let mut tx = app.store().begin_read().await.unwrap();
    let query = portcullis_store::SecurityEventQuery { kinds: vec![kind], limit: 200, ..Default::default() };
    let page = tx.list_security_events(&query).await.unwrap();
    tx.rollback().await.unwrap();
    page.events.into_iter().map(|stored| stored.event).collect()
}
