//! The PostgreSQL store: for several Portcullis nodes sharing one database.
//!
//! The twin of `store-sqlite`, with the same SQL shape (`$1` placeholders, timestamps as `BIGINT` unix
//! milliseconds) so that the `store-tests` contract suite can hold the two to the same behaviour.
//! Writes run at PostgreSQL's default READ COMMITTED, where a racing duplicate waits for the first
//! writer and then fails its unique index; reads run in a REPEATABLE READ, READ ONLY transaction so a
//! page built from several queries sees one snapshot, as a SQLite WAL reader does.

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

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use portcullis_store::{Backend, MigrationStatus, Store, StoreError, StoreTx};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a read transaction in one round trip. REPEATABLE READ takes one snapshot at the first query
/// and keeps it (PostgreSQL manual, "Transaction Isolation"); READ ONLY makes the server refuse any
/// write, so a bug that writes through a read transaction fails instead of committing.
const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Shown in `pg_stat_activity` so an operator can tell Portcullis's connections from others.
const APPLICATION_NAME: &str = "portcullis";

/// How to connect to a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// A `postgres://user:password@host:port/database?sslmode=...` URL. It usually carries a
    /// password: a secret type (zeroed on drop, never printed), and `Debug` shows it redacted.
    pub url: SecretString,
    /// Upper bound of the connection pool; keep the sum over all nodes below the server's
    /// `max_connections`.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
}

impl PostgresOptions {
    /// Defaults suited to a small server: 10 connections, 10 s to get one (as the SQLite store).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for PostgresOptions {
    // Written by hand so the password never reaches a log line (CONVENTIONS.md, "Secrets").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// A PostgreSQL database behind a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects, opening one connection now so that a wrong URL or an unreachable server fails at
    /// start rather than on the first request.
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(options.url.expose_secret()).map_err(map_err)?;
        if connect.get_application_name().is_none() {
            connect = connect.application_name(APPLICATION_NAME);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(map_err)?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn pool_usage(&self) -> Vec<portcullis_store::PoolUsage> {
        vec![pool_usage("main", &self.pool)]
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        // `to_regclass` resolves the name through `search_path` exactly as sqlx's unqualified
        // `_sqlx_migrations` does, and yields NULL instead of an error before the first migration.
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let applied = if exists {
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
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
        // sqlx holds a PostgreSQL advisory lock while it migrates, so nodes starting together apply
        // each migration once; it also refuses a database that carries versions this binary lacks.
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        Ok(before.pending)
    }

    async fn migrate_to(&self, version: i64) -> Result<Vec<i64>, StoreError> {
        let before = self.migration_status().await?;
        migrator_to(version).run(&self.pool).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        Ok(before.pending.into_iter().filter(|v| *v <= version).collect())
    }

    async fn dump(&self, sink: &mut dyn portcullis_store::DumpSink) -> Result<(), StoreError> {
        self.dump_tables(sink).await
    }

    async fn load(&self, force: bool) -> Result<Box<dyn portcullis_store::Loader>, StoreError> {
        self.start_load(force).await
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let tx = self.pool.begin().await.map_err(map_err)?;
        Ok(Box::new(PostgresTx { tx, failed: false }))
    }

    async fn begin_read(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let tx = self.pool.begin_with(BEGIN_READ).await.map_err(map_err)?;
        Ok(Box::new(PostgresTx { tx, failed: false }))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// A PostgreSQL transaction; rolled back by sqlx when dropped uncommitted.
#[derive(Debug)]
pub struct PostgresTx {
    tx: Transaction<'static, Postgres>,
    /// Set when a statement failed. PostgreSQL then aborts the whole transaction and answers a later
    /// `COMMIT` with a silent `ROLLBACK`, which sqlx reports as success; remembering the failure lets
    /// `commit` say what really happened instead.
    failed: bool,
}

impl PostgresTx {
    /// Maps a statement's error and remembers that the transaction is now aborted.
    fn fail(&mut self, error: sqlx::Error) -> StoreError {
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
impl StoreTx for PostgresTx {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.failed {
            self.tx.rollback().await.map_err(map_err)?;
            return Err(StoreError::Database(Box::new(AbortedTransaction)));
        }
        self.tx.commit().await.map_err(map_err)
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(map_err)
    }
}

/// `commit` was called on a transaction in which a statement had already failed.
#[derive(Debug)]
struct AbortedTransaction;

impl fmt::Display for AbortedTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an earlier statement failed, so the transaction was rolled back, not committed")
    }
}

impl std::error::Error for AbortedTransaction {}

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
        sqlx::Error::Database(ref db) if db.code().as_deref().is_some_and(is_transient) => {
            StoreError::Unavailable(Box::new(error))
        }
        other => StoreError::Database(Box::new(other)),
    }
}

/// SQLSTATEs (PostgreSQL manual, appendix A) after which the same request may succeed if retried.
fn is_transient(sqlstate: &str) -> bool {
    matches!(
        sqlstate,
        // serialization_failure, deadlock_detected: the server chose this transaction as the loser.
        "40001" | "40P01"
        // too_many_connections: the server is full, not broken.
        | "53300"
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is restarting or failing
        // over to a standby.
        | "57P01" | "57P02" | "57P03"
    )
}

/// The URL with its password replaced by `***`, for `Debug` output.
///
/// The password may sit in the user-info (`user:password@`) or, as libpq also accepts, in a
/// `password=` query parameter; both are masked. Text that is not a URL is hidden entirely, since
/// nothing can be said about where a secret in it might be.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL; hidden>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _value)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_masks_the_password_in_the_user_info() {
        let options = PostgresOptions::new("postgres://app:s3cr%40t@db.internal:5432/portcullis");
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("postgres://app:***@db.internal:5432/portcullis"), "{shown}");
    }

    #[test]
    fn debug_output_masks_a_password_query_parameter() {
        let shown = redact_url("postgres://app@db/portcullis?sslmode=require&password=hunter2");
        assert_eq!(shown, "postgres://app@db/portcullis?sslmode=require&password=***");
    }

    #[test]
    fn a_url_without_a_password_is_shown_unchanged() {
        let url = "postgres://postgres@127.0.0.1:55432/postgres";
        assert_eq!(redact_url(url), url);
    }

    #[test]
    fn text_that_is_not_a_url_is_hidden_entirely() {
        assert_eq!(redact_url("host=db password=hunter2"), "<not a URL; hidden>");
    }

    #[test]
    fn the_embedded_migrations_are_all_pending_on_an_empty_database() {
        let status = status_of(&MIGRATOR, Vec::new());
        assert_eq!(status.pending, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(status.unknown.is_empty());
    }

    #[test]
    fn versions_this_binary_lacks_are_reported_as_unknown() {
        let status = status_of(&MIGRATOR, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]);
        assert!(status.pending.is_empty());
        assert_eq!(status.unknown, vec![99]);
        assert!(!status.is_current());
    }
}
