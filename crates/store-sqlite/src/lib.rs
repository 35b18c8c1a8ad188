//! The SQLite store: the default, embedded backend.
//!
//! One writer connection (SQLite serialises writers anyway; a single connection turns lock contention
//! into a queue in the pool instead of `SQLITE_BUSY` errors) and a small pool of read-only connections
//! that read concurrently thanks to WAL. `synchronous=FULL` so that a transaction reported committed
//! survives power loss, not only a process crash.

mod accounts;
mod api_keys;
mod audit;
mod dump;
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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use portcullis_store::{Backend, MigrationStatus, Store, StoreError, StoreTx};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How to open a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// How long a connection waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// Size of the read-only pool.
    pub read_connections: u32,
    /// How long a caller waits for a free connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
}

impl SqliteOptions {
    /// Defaults suited to a small server: 5 s busy timeout, 4 readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// A SQLite database behind one writer and a pool of readers.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file.
    ///
    /// The caller is expected to have created the file's directory with restrictive permissions;
    /// SQLite creates the `-wal` and `-shm` files with the same mode as the database file.
    pub async fn open(options: &SqliteOptions) -> Result<Self, StoreError> {
        create_private_file(&options.path)?;
        let base = SqliteConnectOptions::new()
            .filename(&options.path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            // Deleted rows are overwritten, so erased personal data does not linger in free pages.
            .pragma("secure_delete", "ON")
            // Schema objects may not call functions with side effects (defence in depth).
            .pragma("trusted_schema", "OFF");
        // The writer opens first: it creates the file and switches it to WAL before any reader looks.
        // No ping before each use (`test_before_acquire`): a local file connection does not go stale,
        // and with sqlx's one thread per SQLite connection the ping is a full extra round trip
        // (scripts/bench/me.sh measured ~14 µs of CPU per round trip).
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(map_err)?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.read_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        Ok(Self { writer, reader, path: Some(options.path.clone()) })
    }

    /// A private in-memory database on a single connection, for use-case tests.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(map_err)?.foreign_keys(true);
        // One connection shared by readers and the writer: an in-memory database is per connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(Self { writer: pool.clone(), reader: pool, path: None })
    }

    /// The database file, if this store has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn pool_usage(&self) -> Vec<portcullis_store::PoolUsage> {
        vec![pool_usage("write", &self.writer), pool_usage("read", &self.reader)]
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(map_err)?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        let applied = if table.is_some() {
            let mut conn = self.reader.acquire().await.map_err(map_err)?;
            conn.list_applied_migrations()
                .await
                .map_err(|e| StoreError::Migration(Box::new(e)))?
                .into_iter()
                .map(|m| m.version)
                .collect()
        } else {
            Vec::new()
        };
        Ok(status_of(&MIGRATOR, applied))
    }

    async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.migration_status().await?;
        MIGRATOR.run(&self.writer).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        Ok(before.pending)
    }

    async fn migrate_to(&self, version: i64) -> Result<Vec<i64>, StoreError> {
        let before = self.migration_status().await?;
        migrator_to(version).run(&self.writer).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        Ok(before.pending.into_iter().filter(|v| *v <= version).collect())
    }

    async fn dump(&self, sink: &mut dyn portcullis_store::DumpSink) -> Result<(), StoreError> {
        self.dump_tables(sink).await
    }

    async fn load(&self, force: bool) -> Result<Box<dyn portcullis_store::Loader>, StoreError> {
        self.start_load(force).await
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads, then writes,
        // fails at once with SQLITE_BUSY_SNAPSHOT if another process (`portcullis migrate`) wrote in
        // between, and the busy timeout cannot help it.
        let tx = if self.path.is_some() {
            self.writer.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.writer.begin().await
        }
        .map_err(map_err)?;
        Ok(Box::new(SqliteTx { tx, failed: false }))
    }

    async fn begin_read(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let tx = self.reader.begin().await.map_err(map_err)?;
        Ok(Box::new(SqliteTx { tx, failed: false }))
    }

    async fn close(&self) {
        self.reader.close().await;
        // Fold the write-ahead log into the database file before the last connection goes, so a
        // stopped server leaves one self-contained file (a copy of it is a complete backup). SQLite's
        // own checkpoint-on-close is passive and is skipped if a reader is still finishing.
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::warn!(%error, "final WAL checkpoint failed; the log will be replayed on next open");
        }
        self.writer.close().await;
    }
}

/// Creates the database file owner-only (0600) before SQLite opens it; SQLite gives its `-wal` and
/// `-shm` files the same mode, so no file of the database is readable by other users.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // Permission denied or a missing directory will not fix itself on retry.
        Err(e) => Err(StoreError::Database(Box::new(e))),
    }
}

/// A SQLite transaction; rolled back by sqlx when dropped uncommitted.
#[derive(Debug)]
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    /// Set when a statement failed. SQLite would let the transaction go on and commit the earlier
    /// statements; PostgreSQL would not. The store contract follows PostgreSQL, so code written
    /// against SQLite cannot come to rely on committing after an error.
    failed: bool,
}

impl SqliteTx {
    /// Maps a statement's error and marks the transaction as no longer committable.
    pub(crate) fn fail(&mut self, error: sqlx::Error) -> StoreError {
        self.failed = true;
        map_err(error)
    }

    /// Maps a write's error: a foreign-key or uniqueness violation is a conflict on `entity` (the
    /// referenced row is missing, or the value is taken), and the transaction can no longer commit.
    pub(crate) fn write_conflict(&mut self, error: sqlx::Error, entity: &'static str) -> StoreError {
        if let sqlx::Error::Database(db) = &error
            && db.is_foreign_key_violation()
        {
            self.failed = true;
            return StoreError::Conflict { entity };
        }
        self.fail(error).conflict_on(entity)
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.failed {
            self.tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::Database(
                "an earlier statement failed; the transaction was rolled back".into(),
            ));
        }
        self.tx.commit().await.map_err(map_err)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(map_err)
    }
}

/// The embedded migrations up to and including `version`.
fn migrator_to(version: i64) -> Migrator {
    Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR.iter().filter(|m| m.version <= version).cloned().collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// Where the database stands against the migrations embedded in this binary.
fn status_of(migrator: &Migrator, applied: Vec<i64>) -> MigrationStatus {
    let known = migrator.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version);
    MigrationStatus::compare(known, applied)
}

/// Stored data that does not parse back into its domain type; `what` names the column and the fault.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// Classifies an engine error at the storage edge (CONVENTIONS.md, "Errors").
pub(crate) fn map_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(Box::new(error))
        }
        sqlx::Error::Database(ref db) if db.is_unique_violation() => {
            StoreError::Conflict { entity: "record" }
        }
        sqlx::Error::Database(ref db)
            if matches!(db.code().as_deref(), Some("5" | "6" | "261" | "262" | "517")) =>
        {
            // SQLITE_BUSY / SQLITE_LOCKED and their extended codes: another process holds the lock
            // past the busy timeout.
            StoreError::Unavailable(Box::new(error))
        }
        other => StoreError::Database(Box::new(other)),
    }
}

/// One pool's use, as the metrics report it.
fn pool_usage<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> portcullis_store::PoolUsage {
    portcullis_store::PoolUsage {
        name,
        size: pool.size(),
        idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        max: pool.options().get_max_connections(),
    }
}
