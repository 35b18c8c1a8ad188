//! The storage contract: one trait per aggregate, transactions as part of the contract, one error type.
//!
//! Nothing above this crate writes SQL. `store-sqlite` and `store-postgres` implement these traits in
//! their own dialect, and `store-tests` holds the contract suite that both must pass, so the two cannot
//! drift apart unnoticed.

mod accounts;
mod api_keys;
mod audit;
mod dump;
mod error;
mod instance;
mod ip_rules;
mod keys;
mod login_throttle;
mod mfa;
mod organizations;
mod pii;
mod retention;
mod roles;
mod scheduler;
mod security_events;
mod sessions;

use async_trait::async_trait;

pub use accounts::AccountStore;
pub use api_keys::ApiKeyStore;
pub use audit::{AuditQuery, AuditStore};
pub use dump::{
    Cell, DumpInfo, DumpSink, Loader, SEEDED_TABLES, TABLES, TableHeader, interrupted, quote_ident,
};
pub use error::StoreError;
pub use instance::InstanceStore;
pub use ip_rules::IpRuleStore;
pub use keys::{KeyPurpose, KeyState, KeyStore, StoredKey};
pub use login_throttle::LoginThrottleStore;
pub use mfa::{MfaStore, StoredMfaChallenge, StoredPasskey, StoredTotpDevice};
pub use organizations::OrganizationStore;
pub use pii::{
    BlindIndex, PiiRow, PiiStore, PiiTable, Sealed, StoredOneTimeToken, StoredPersonKey, StoredSecurityEvent,
    StoredSession, StoredUser,
};
pub use retention::RetentionStore;
pub use roles::RoleStore;
pub use scheduler::{SCHEDULED_RUN_CLAIMS_KEPT_MILLIS, SchedulerStore};
pub use security_events::{SecurityEventCursor, SecurityEventPage, SecurityEventQuery, SecurityEventStore};
pub use sessions::{RefreshSpend, SessionRecord, SessionStore};

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in the data directory: the default.
    Sqlite,
    /// PostgreSQL, for several nodes sharing one database.
    Postgres,
}

impl Backend {
    /// The engine's name as shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// Where the schema stands relative to the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied to the database, in order.
    pub applied: Vec<i64>,
    /// Versions embedded in this binary and not yet applied.
    pub pending: Vec<i64>,
    /// Versions recorded in the database that this binary does not know: the database was migrated
    /// by a newer Portcullis, so this one must not serve it.
    pub unknown: Vec<i64>,
}

impl MigrationStatus {
    /// Compares the versions a binary carries (`known`) with those recorded in the database.
    pub fn compare(known: impl IntoIterator<Item = i64>, applied: Vec<i64>) -> Self {
        let known: Vec<i64> = known.into_iter().collect();
        let pending = known.iter().copied().filter(|v| !applied.contains(v)).collect();
        let unknown = applied.iter().copied().filter(|v| !known.contains(v)).collect();
        Self { applied, pending, unknown }
    }

    /// True when the database has exactly the schema this binary expects.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty()
    }

    /// The newest applied version, or 0 for an empty database.
    pub fn schema_version(&self) -> i64 {
        self.applied.last().copied().unwrap_or(0)
    }
}

/// One connection pool's use at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Which pool: `main` on PostgreSQL; `write` and `read` on SQLite.
    pub name: &'static str,
    /// Connections open now.
    pub size: u32,
    /// Of those, connections waiting for work.
    pub idle: u32,
    /// Most connections the pool may open.
    pub max: u32,
}

/// A database: the entry point to transactions and to operational checks.
///
/// Held as `Arc<dyn Store>` behind the `App` façade (see docs/decisions/0001-crate-layout.md).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The engine behind this store.
    fn backend(&self) -> Backend;

    /// How each connection pool is used right now (for the metrics).
    fn pool_usage(&self) -> Vec<PoolUsage>;

    /// A cheap round trip proving the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applied, pending and unknown migrations.
    async fn migration_status(&self) -> Result<MigrationStatus, StoreError>;

    /// Applies every pending migration, each in its own transaction; returns the versions applied.
    async fn migrate(&self) -> Result<Vec<i64>, StoreError>;

    /// Applies the pending migrations up to and including `version`, no further (a restore brings an
    /// empty database to the backup's schema first); returns the versions applied.
    async fn migrate_to(&self, version: i64) -> Result<Vec<i64>, StoreError>;

    /// Streams every table of [`TABLES`] that exists, in that order and each in primary-key order,
    /// from one read-only snapshot, while other connections keep reading and writing. A table in
    /// the database but not in [`TABLES`] is refused with [`StoreError::Corrupt`].
    async fn dump(&self, sink: &mut dyn DumpSink) -> Result<(), StoreError>;

    /// Starts loading into this database, which must be migrated and empty (only [`SEEDED_TABLES`]
    /// may hold rows, which the load replaces); with `force`, whatever it holds is deleted first.
    /// A non-empty database without `force` is [`StoreError::Conflict`] with entity `"database"`.
    async fn load(&self, force: bool) -> Result<Box<dyn Loader>, StoreError>;

    /// Starts a read-write transaction. Dropping it without `commit` rolls it back.
    ///
    /// Isolation differs by engine: SQLite runs write transactions one at a time (one writer,
    /// `BEGIN IMMEDIATE`), PostgreSQL at READ COMMITTED. An operation that reads and then writes
    /// depending on what it read (spend a refresh token once, keep the last owner) must therefore
    /// make the write itself conditional (`UPDATE ... WHERE <expected state>`, `INSERT ... ON
    /// CONFLICT`) or lock the row (`SELECT ... FOR UPDATE`), and its contract check must race two
    /// transactions on both engines.
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError>;

    /// Starts a read-only transaction (a consistent snapshot on both engines).
    async fn begin_read(&self) -> Result<Box<dyn StoreTx>, StoreError>;

    /// Waits for connections in use to be returned, then closes them (on SQLite this checkpoints the
    /// write-ahead log into the database file).
    async fn close(&self);
}

/// One transaction, with every aggregate's operations available on it, so that a change and its
/// audit record always commit together or not at all.
///
/// After any operation returns an error the transaction is finished: PostgreSQL aborts it, so callers
/// must roll it back (or drop it) and, if they want to read on, start a new one. Implementations
/// refuse to commit a transaction in which an operation failed, so both engines behave alike.
#[async_trait]
pub trait StoreTx:
    InstanceStore
    + AccountStore
    + SessionStore
    + KeyStore
    + SecurityEventStore
    + PiiStore
    + OrganizationStore
    + RoleStore
    + ApiKeyStore
    + IpRuleStore
    + LoginThrottleStore
    + AuditStore
    + MfaStore
    + RetentionStore
    + SchedulerStore
    + Send
{
    /// Makes every change in the transaction durable.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Discards every change in the transaction.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}
