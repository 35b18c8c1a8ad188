//! Runs the store contract (`src/lib.rs`) on every backend: SQLite always, PostgreSQL when
//! `PORTCULLIS_TEST_POSTGRES_URL` names a server on which that user may create databases
//! (`scripts/test-postgres` starts a throwaway one; `.ci/run` does the same in CI).
//!
//! Every check gets a fresh database (a temporary directory, or a uniquely named PostgreSQL
//! database that is dropped right after the check, pass or fail). Failures are collected and
//! reported together once everything is cleaned up.

// Fixture helpers outside the #[test] functions may unwrap and panic too: a broken fixture (say, an
// unreachable PostgreSQL) should stop the run loudly, and clippy.toml's test allowances only cover
// the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_store::{Backend, Store};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::{SqliteOptions, SqliteStore};
use portcullis_store_tests::dump::{Dumped, dump_all, load_all, seed};
use portcullis_store_tests::{
    CHECKS, FUTURE_MIGRATION_VERSION, a_database_migrated_by_a_newer_binary_is_refused,
};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tempfile::TempDir;

const POSTGRES_URL_VAR: &str = "PORTCULLIS_TEST_POSTGRES_URL";

/// Written with the engine's own connection: the same statement on both engines, as sqlx keeps the
/// same `_sqlx_migrations` columns on each.
const RECORD_FUTURE_MIGRATION: &str = "INSERT INTO _sqlx_migrations \
     (version, description, success, checksum, execution_time) \
     VALUES ($1, 'from a newer Portcullis', TRUE, $2, 0)";

#[tokio::test]
async fn the_sqlite_store_passes_the_contract() {
    let failures = run_contract(&SqliteEngine).await;

    assert_passed(Backend::Sqlite, &failures);
}

#[tokio::test]
async fn the_postgresql_store_passes_the_contract() {
    let Some(url) = std::env::var(POSTGRES_URL_VAR).ok().filter(|u| !u.is_empty()) else {
        // Straight to stderr rather than eprintln!, which the test harness swallows for a passing
        // test: a skipped suite should be visible in every run. One write keeps the line whole.
        let line =
            format!("store-tests: {POSTGRES_URL_VAR} not set; skipped the PostgreSQL contract suite\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    let engine = PostgresEngine::connect(url).await;

    let failures = run_contract(&engine).await;
    engine.admin.close().await;

    assert_passed(Backend::Postgres, &failures);
}

/// What the runner needs from an engine: fresh databases, a way to write behind the store's back,
/// and cleanup.
trait Engine {
    const BACKEND: Backend;
    /// Whatever must live as long as the database and be handed back to dispose of it.
    type Database;

    /// A new, empty database and a store opened on it.
    async fn create(&self) -> Result<(Self::Database, Box<dyn Store>), String>;

    /// Records [`FUTURE_MIGRATION_VERSION`] as applied, as a newer Portcullis would have.
    async fn record_future_migration(&self, database: &Self::Database) -> Result<(), String>;

    /// Removes the database.
    async fn dispose(&self, database: Self::Database) -> Result<(), String>;
}

/// Runs every check, each on its own fresh database, and returns the failures, one line each.
async fn run_contract<E: Engine>(engine: &E) -> Vec<String> {
    let mut failures = Vec::new();
    for check in CHECKS {
        let outcome = match fresh(engine).await {
            Ok((database, store)) => {
                let outcome = (check.run)(store.as_ref()).await.map_err(|f| f.to_string());
                finish(engine, database, store.as_ref(), outcome).await
            }
            Err(e) => Err(e),
        };
        record(&mut failures, E::BACKEND, check.name, outcome);
    }

    let name = "a_database_migrated_by_a_newer_binary_is_refused";
    let outcome = match fresh(engine).await {
        Ok((database, store)) => {
            let outcome = a_database_migrated_by_a_newer_binary_is_refused(
                store.as_ref(),
                engine.record_future_migration(&database),
            )
            .await
            .map_err(|f| f.to_string());
            finish(engine, database, store.as_ref(), outcome).await
        }
        Err(e) => Err(e),
    };
    record(&mut failures, E::BACKEND, name, outcome);
    failures
}

/// A fresh database whose store says it runs on the engine under test.
async fn fresh<E: Engine>(engine: &E) -> Result<(E::Database, Box<dyn Store>), String> {
    let (database, store) = engine.create().await.map_err(|e| format!("create a database: {e}"))?;
    if store.backend() == E::BACKEND {
        Ok((database, store))
    } else {
        let reported = store.backend().name();
        store.close().await;
        engine.dispose(database).await?;
        Err(format!("the store reports {reported} as its backend"))
    }
}

/// Closes the store and drops its database, whatever the check's outcome; a failed cleanup is a
/// failure too, since it would leave databases behind.
async fn finish<E: Engine>(
    engine: &E,
    database: E::Database,
    store: &dyn Store,
    outcome: Result<(), String>,
) -> Result<(), String> {
    store.close().await;
    let disposed = engine.dispose(database).await.map_err(|e| format!("drop the database: {e}"));
    outcome.and(disposed)
}

/// Notes the outcome; the log line shows in the report of a failing test (or with --nocapture).
fn record(failures: &mut Vec<String>, backend: Backend, name: &str, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => eprintln!("{}: {name} ... ok", backend.name()),
        Err(e) => {
            eprintln!("{}: {name} ... FAILED: {e}", backend.name());
            failures.push(format!("{name}: {e}"));
        }
    }
}

fn assert_passed(backend: Backend, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {} contract checks failed on {}:\n  {}",
        failures.len(),
        CHECKS.len() + 1,
        backend.name(),
        failures.join("\n  ")
    );
}

/// A database file in its own temporary directory.
struct SqliteEngine;

impl Engine for SqliteEngine {
    const BACKEND: Backend = Backend::Sqlite;
    type Database = TempDir;

    async fn create(&self) -> Result<(TempDir, Box<dyn Store>), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("create a temporary directory: {e}"))?;
        let store = SqliteStore::open(&SqliteOptions::new(database_file(&dir)))
            .await
            .map_err(|e| format!("open the database: {e:?}"))?;
        Ok((dir, Box::new(store)))
    }

    async fn record_future_migration(&self, dir: &TempDir) -> Result<(), String> {
        let options = SqliteConnectOptions::new().filename(database_file(dir));
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(|e| e.to_string())?;
        sqlx::query(RECORD_FUTURE_MIGRATION)
            .bind(FUTURE_MIGRATION_VERSION)
            .bind(vec![0_u8; 48])
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    }

    async fn dispose(&self, dir: TempDir) -> Result<(), String> {
        dir.close().map_err(|e| e.to_string())
    }
}

fn database_file(dir: &TempDir) -> PathBuf {
    dir.path().join("portcullis.db")
}

/// Databases named `portcullis_test_<run>_<n>` on the server `PORTCULLIS_TEST_POSTGRES_URL` names.
struct PostgresEngine {
    /// Connected to the database the variable names; used only to create and drop databases.
    admin: PgPool,
    url: String,
    /// Random per run, so concurrent runs against one server never collide.
    run: String,
    next: AtomicUsize,
}

/// The PostgreSQL test database and the URL that reaches it.
struct PostgresDatabase {
    name: String,
    url: String,
}

impl PostgresEngine {
    async fn connect(url: String) -> Self {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}: cannot connect: {e}"));
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self { admin, url, run, next: AtomicUsize::new(0) }
    }
}

impl Engine for PostgresEngine {
    const BACKEND: Backend = Backend::Postgres;
    type Database = PostgresDatabase;

    async fn create(&self) -> Result<(PostgresDatabase, Box<dyn Store>), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("portcullis_test_{}_{n}", self.run);
        // The name is ours ([a-z0-9_]), so quoting it is enough; DDL takes no bind parameters.
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&self.admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let database = PostgresDatabase { url: with_database(&self.url, &name), name };
        match PostgresStore::connect(&PostgresOptions::new(database.url.clone())).await {
            Ok(store) => Ok((database, Box::new(store))),
            Err(e) => {
                let connect = format!("connect to {}: {e:?}", database.name);
                Err(match self.dispose(database).await {
                    Ok(()) => connect,
                    Err(drop) => format!("{connect}; then {drop}"),
                })
            }
        }
    }

    async fn record_future_migration(&self, database: &PostgresDatabase) -> Result<(), String> {
        let mut conn = PgConnection::connect(&database.url).await.map_err(|e| e.to_string())?;
        sqlx::query(RECORD_FUTURE_MIGRATION)
            .bind(FUTURE_MIGRATION_VERSION)
            .bind(vec![0_u8; 48])
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    }

    async fn dispose(&self, database: PostgresDatabase) -> Result<(), String> {
        // FORCE ends connections a failed check may have left open (PostgreSQL 13 and later).
        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, database.name))
            .execute(&self.admin)
            .await
            .map(|_| ())
            .map_err(|e| format!("DROP DATABASE {}: {e}", database.name))
    }
}

/// The same server URL pointing at another database: `scheme://authority/<name>?query`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{name}{query}", &base[..path_start])
}

#[test]
fn a_test_database_url_keeps_the_server_and_the_query() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:55432/postgres?sslmode=disable", "t1"),
        "postgres://u:p@127.0.0.1:55432/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@localhost", "t2"), "postgres://u@localhost/t2");
}

/// A dump of one engine loads into the other with identical logical content, both ways (a SQLite
/// backup restores into PostgreSQL, which is how an installation moves to several nodes, and back).
#[tokio::test]
async fn a_dump_loads_into_the_other_engine_with_identical_content_both_ways() {
    let Some(url) = std::env::var(POSTGRES_URL_VAR).ok().filter(|u| !u.is_empty()) else {
        let line = format!("store-tests: {POSTGRES_URL_VAR} not set; skipped the cross-engine dump test\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    let postgres = PostgresEngine::connect(url).await;
    let (lite_source_dir, lite_source) = SqliteEngine.create().await.unwrap();
    let (lite_target_dir, lite_target) = SqliteEngine.create().await.unwrap();
    let (pg_target_db, pg_target) = postgres.create().await.unwrap();
    let (pg_source_db, pg_source) = postgres.create().await.unwrap();

    let outcome = async {
        // SQLite → PostgreSQL
        seed(lite_source.as_ref()).await.map_err(|f| f.to_string())?;
        let from_lite = dump_all(lite_source.as_ref()).await.map_err(|f| f.to_string())?;
        pg_target.migrate().await.map_err(|e| format!("migrate: {e}"))?;
        load_all(pg_target.as_ref(), &from_lite, false)
            .await
            .map_err(|e| format!("load into PostgreSQL: {e:?}"))?;
        let in_pg = dump_all(pg_target.as_ref()).await.map_err(|f| f.to_string())?;
        if in_pg.logical() != from_lite.logical() {
            return Err(first_difference("SQLite → PostgreSQL", &from_lite, &in_pg));
        }
        // PostgreSQL → SQLite
        seed(pg_source.as_ref()).await.map_err(|f| f.to_string())?;
        let from_pg = dump_all(pg_source.as_ref()).await.map_err(|f| f.to_string())?;
        lite_target.migrate().await.map_err(|e| format!("migrate: {e}"))?;
        load_all(lite_target.as_ref(), &from_pg, false)
            .await
            .map_err(|e| format!("load into SQLite: {e:?}"))?;
        let in_lite = dump_all(lite_target.as_ref()).await.map_err(|f| f.to_string())?;
        if in_lite.logical() != from_pg.logical() {
            return Err(first_difference("PostgreSQL → SQLite", &from_pg, &in_lite));
        }
        Ok::<(), String>(())
    }
    .await;

    for store in [&lite_source, &lite_target, &pg_target, &pg_source] {
        store.close().await;
    }
    postgres.dispose(pg_target_db).await.unwrap();
    postgres.dispose(pg_source_db).await.unwrap();
    SqliteEngine.dispose(lite_source_dir).await.unwrap();
    SqliteEngine.dispose(lite_target_dir).await.unwrap();
    postgres.admin.close().await;
    outcome.unwrap();
}

/// The first table whose rows differ, for a readable failure.
fn first_difference(what: &str, expected: &Dumped, actual: &Dumped) -> String {
    let (expected, actual) = (expected.logical(), actual.logical());
    for ((name, want), (got_name, got)) in expected.iter().zip(&actual) {
        if name != got_name || want != got {
            return format!("{what}: table {name} differs:\n  expected {want:?}\n  got      {got:?}");
        }
    }
    format!("{what}: the tables differ: {} vs {}", expected.len(), actual.len())
}
