//! Throughput of the audit trail (issue 8): events appended per second with chaining, and
//! `audit verify` in events per second over a large log.
//!
//! Not criterion: these are throughput runs of seconds each, on a real database file (or a real
//! PostgreSQL database), with the process's CPU time per event beside the rate because the machine
//! is shared and the rate moves with its neighbours. Three paths, each on a fresh database, in
//! rounds whose order rotates (medians reported):
//!
//! - `grouped ×32`: 32 concurrent writers, each appending one event at a time through the
//!   group-commit writer (`App::record_audit`, the path of a failed login): the issue's figure.
//! - `grouped ×1`: one writer on the same path, so every event is a transaction of its own: what
//!   group commit gains.
//! - `own tx ×32`: 32 concurrent writers, each event in its own transaction (`App::commit_audited`,
//!   the path every state change takes, with no change besides the event).
//!
//! Then a log of 1,000,000 events (SQLite; 200,000 on PostgreSQL) is filled through the writer, with
//! a checkpoint signed whenever one is due (as `serve` does), and `App::verify_audit_chain` is timed
//! over it, with the peak resident memory of the process during verification.
//!
//! Beside events per second: this process's CPU per event (/proc/self/stat, all threads, so on
//! SQLite the database engine too), on SQLite the CPU of the writer connection's thread (the serial
//! part of every append) and how busy it was, on a local PostgreSQL the server's CPU (its
//! postmaster's process tree), call latency, and events per committed append (PostgreSQL's row
//! statistics of the head row; on SQLite one extra run with a trigger counting the head's moves).
//!
//! `cargo bench -p portcullis-app --bench audit`. SQLite always (production options, a file under
//! `AUDIT_BENCH_DIR` or the temporary directory); PostgreSQL when `PORTCULLIS_TEST_POSTGRES_URL`
//! names a server where that user may create databases (`scripts/bench/audit.sh` starts one).
//! `AUDIT_BENCH_QUICK=1` shrinks every size for a smoke run; `AUDIT_BENCH_ROUNDS=n` sets the rounds;
//! `AUDIT_BENCH_BACKENDS=sqlite` or `=postgres` runs one backend only; `AUDIT_BENCH_NO_VERIFY=1`
//! skips the verification part, `AUDIT_BENCH_VERIFY_ROUNDS=n` sets its rounds (5), and
//! `AUDIT_BENCH_NO_COUNT=1` skips the extra SQLite run that counts events per commit.

#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use portcullis_app::mail::{MailError, Mailer, OutgoingEmail};
use portcullis_app::{App, AppSettings, HashAlgorithm, HashPoolSize, KekSet, SystemClock, benchmarking};
use portcullis_store::Store;
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_store_sqlite::{SqliteOptions, SqliteStore};
use secrecy::SecretSlice;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

type BoxError = Box<dyn Error + Send + Sync>;

const POSTGRES_URL_VAR: &str = "PORTCULLIS_TEST_POSTGRES_URL";
/// Concurrent writers in the issue's measurement.
const WRITERS: usize = 32;
/// Events per `record_audit` call while filling the log for verification.
const FILL_CHUNK: usize = 100;

/// Drops every email: nothing in this benchmark sends one.
#[derive(Debug)]
struct NoMail;

#[async_trait]
impl Mailer for NoMail {
    async fn send(&self, _email: &OutgoingEmail) -> Result<(), MailError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through the group-commit writer.
    Grouped,
    /// One transaction per event.
    OwnTransaction,
}

#[derive(Debug, Clone, Copy)]
struct Target {
    name: &'static str,
    route: Route,
    writers: usize,
    events: usize,
}

/// Sizes for one backend.
#[derive(Debug, Clone)]
struct Plan {
    targets: Vec<Target>,
    rounds: usize,
    verify_events: usize,
    verify_rounds: usize,
    /// SQLite: one more `grouped ×32` run with the commit-counting trigger.
    count_sqlite: bool,
}

/// What the environment asks for (see the module's documentation).
#[derive(Debug, Clone)]
struct Knobs {
    rounds: Option<usize>,
    verify: bool,
    verify_rounds: Option<usize>,
    count_sqlite: bool,
}

fn plan(postgres: bool, quick: bool, knobs: &Knobs) -> Plan {
    // (grouped ×32, grouped ×1, own tx ×32, verify log)
    let (grouped, single, own, verify_events) = match (postgres, quick) {
        (false, false) => (200_000, 4_000, 9_600, 1_000_000),
        (true, false) => (64_000, 4_000, 9_600, 200_000),
        (false, true) => (16_000, 200, 640, 50_000),
        (true, true) => (6_400, 200, 640, 20_000),
    };
    Plan {
        targets: vec![
            Target { name: "grouped ×32", route: Route::Grouped, writers: WRITERS, events: grouped },
            Target { name: "grouped ×1", route: Route::Grouped, writers: 1, events: single },
            Target { name: "own tx ×32", route: Route::OwnTransaction, writers: WRITERS, events: own },
        ],
        rounds: knobs.rounds.unwrap_or(if quick { 1 } else { 3 }),
        verify_events: if knobs.verify { verify_events } else { 0 },
        verify_rounds: knobs.verify_rounds.unwrap_or(if quick { 1 } else { 5 }),
        count_sqlite: knobs.count_sqlite,
    }
}

// ---------------------------------------------------------------------------------------------
// Databases

enum Backend {
    Sqlite { dir: PathBuf },
    Postgres { url: String, admin: tokio::sync::Mutex<PgConnection>, cluster: Option<Cluster> },
}

/// A fresh database and what must be cleaned up after it.
struct Database {
    store: Arc<dyn Store>,
    /// SQLite: the directory holding the file (removed on drop).
    dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the database's name (dropped by `Backend::dispose`).
    name: Option<String>,
}

static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);
/// Connections a closed pool left open, which the benchmark terminated (see `wait_for_disconnect`).
static STRAGGLERS: AtomicU64 = AtomicU64::new(0);

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite { .. } => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }

    async fn postgres(url: String) -> Result<Self, BoxError> {
        let mut admin = PgConnection::connect(&url).await?;
        let data_dir: String =
            sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
                .fetch_one(&mut admin)
                .await?;
        let cluster = Cluster::find(Path::new(&data_dir));
        Ok(Backend::Postgres { url, admin: tokio::sync::Mutex::new(admin), cluster })
    }

    /// A new, migrated database on production options.
    async fn create(&self) -> Result<Database, BoxError> {
        let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
        match self {
            Backend::Sqlite { dir } => {
                let dir = tempfile::Builder::new().prefix("portcullis-audit-bench").tempdir_in(dir)?;
                let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("portcullis.db"))).await?;
                store.migrate().await?;
                Ok(Database { store: Arc::new(store), dir: Some(dir), name: None })
            }
            Backend::Postgres { url, admin, .. } => {
                let name = format!("portcullis_audit_bench_{}_{n}", std::process::id());
                // The name is ours ([a-z0-9_]); DDL takes no bind parameters.
                sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
                    .execute(&mut *admin.lock().await)
                    .await?;
                let store = PostgresStore::connect(&PostgresOptions::new(with_database(url, &name))).await?;
                store.migrate().await?;
                Ok(Database { store: Arc::new(store), dir: None, name: Some(name) })
            }
        }
    }

    /// Opens the same database again (a new pool).
    async fn reopen(&self, database: &Database) -> Result<Arc<dyn Store>, BoxError> {
        match (self, &database.dir, &database.name) {
            (Backend::Sqlite { .. }, Some(dir), _) => {
                Ok(Arc::new(SqliteStore::open(&SqliteOptions::new(dir.path().join("portcullis.db"))).await?))
            }
            (Backend::Postgres { url, .. }, _, Some(name)) => {
                Ok(Arc::new(PostgresStore::connect(&PostgresOptions::new(with_database(url, name))).await?))
            }
            _ => Err("a database of another backend".into()),
        }
    }

    async fn dispose(&self, database: Database) -> Result<(), BoxError> {
        database.store.close().await;
        if let (Backend::Postgres { admin, .. }, Some(name)) = (self, &database.name) {
            sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                .execute(&mut *admin.lock().await)
                .await?;
        }
        drop(database.dir);
        Ok(())
    }

    /// Counts the transactions that append to the chain from now on, where the backend can: every
    /// one moves the head row once. PostgreSQL counts row updates itself; on SQLite a trigger
    /// counts them, which adds a row update to each transaction, so it is only installed when asked.
    async fn count_appends(&self, database: &Database, sqlite_trigger: bool) -> Result<(), BoxError> {
        if let (Backend::Sqlite { .. }, Some(dir), true) = (self, &database.dir, sqlite_trigger) {
            let mut conn = sqlite_connection(dir.path()).await?;
            for statement in [
                "CREATE TABLE bench_appends (n INTEGER NOT NULL) STRICT",
                "INSERT INTO bench_appends VALUES (0)",
                "CREATE TRIGGER bench_count_appends AFTER UPDATE ON audit_head \
                 BEGIN UPDATE bench_appends SET n = n + 1; END",
            ] {
                sqlx::query(statement).execute(&mut conn).await?;
            }
            conn.close().await?;
        }
        Ok(())
    }

    /// Waits until no connection to `database` is left on the PostgreSQL server: a backend flushes
    /// its statistics as it exits. `Pool::close` can return with a connection still open (sqlx
    /// issue 3217: one returned to the pool just after `close` drained it stays there for the life
    /// of the pool); such stragglers, ours and idle, are terminated after two seconds.
    async fn wait_for_disconnect(&self, database: &Database) -> Result<(), BoxError> {
        let (Backend::Postgres { admin, .. }, Some(name)) = (self, &database.name) else { return Ok(()) };
        let started = Instant::now();
        let mut terminated = false;
        loop {
            let left: i64 = sqlx::query_scalar(
                // Client connections only: an autovacuum worker may visit the new database.
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            )
            .bind(name)
            .fetch_one(&mut *admin.lock().await)
            .await?;
            if left == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(2) && !terminated {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND backend_type = 'client backend' AND state = 'idle'",
                )
                .bind(name)
                .execute(&mut *admin.lock().await)
                .await?;
                STRAGGLERS.fetch_add(u64::try_from(left)?, Ordering::Relaxed);
                terminated = true;
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("{left} connections to {name} are still open").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The backend's entry can leave pg_stat_activity a moment before its statistics land.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    /// Transactions that appended to the chain so far (see `count_appends`). On PostgreSQL, only
    /// what closed connections have flushed to the statistics: call between pools.
    async fn appends(&self, database: &Database) -> Result<Option<i64>, BoxError> {
        match (self, &database.dir, &database.name) {
            (Backend::Sqlite { .. }, Some(dir), _) => {
                let mut conn = sqlite_connection(dir.path()).await?;
                let exists: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'bench_appends'",
                )
                .fetch_one(&mut conn)
                .await?;
                let n = if exists == 1 {
                    Some(sqlx::query_scalar("SELECT n FROM bench_appends").fetch_one(&mut conn).await?)
                } else {
                    None
                };
                conn.close().await?;
                Ok(n)
            }
            (Backend::Postgres { url, .. }, _, Some(name)) => {
                // Table statistics are per database: read them from a connection to that one.
                let mut conn = PgConnection::connect(&with_database(url, name)).await?;
                let n: Option<i64> = sqlx::query_scalar(
                    "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'audit_head'",
                )
                .fetch_optional(&mut conn)
                .await?;
                conn.close().await?;
                Ok(n)
            }
            _ => Err("a database of another backend".into()),
        }
    }

    /// The database server's CPU time, when it is a local process this one may read.
    fn server_cpu(&self) -> Option<Duration> {
        match self {
            Backend::Postgres { cluster: Some(cluster), .. } => cluster.cpu(),
            _ => None,
        }
    }

    async fn size_bytes(&self, database: &Database) -> Result<u64, BoxError> {
        match (self, &database.dir, &database.name) {
            (Backend::Sqlite { .. }, Some(dir), _) => {
                let mut total = 0;
                for entry in std::fs::read_dir(dir.path())? {
                    total += entry?.metadata()?.len();
                }
                Ok(total)
            }
            (Backend::Postgres { admin, .. }, _, Some(name)) => {
                let size: i64 = sqlx::query_scalar("SELECT pg_database_size($1)")
                    .bind(name)
                    .fetch_one(&mut *admin.lock().await)
                    .await?;
                Ok(u64::try_from(size)?)
            }
            _ => Err("a database of another backend".into()),
        }
    }
}

async fn sqlite_connection(dir: &Path) -> Result<sqlx::sqlite::SqliteConnection, BoxError> {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("portcullis.db"));
    Ok(sqlx::sqlite::SqliteConnection::connect_with(&options).await?)
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

/// A local PostgreSQL cluster's postmaster, whose processes' CPU time is the server's.
struct Cluster {
    postmaster: u32,
}

impl Cluster {
    fn find(data_dir: &Path) -> Option<Self> {
        let pid = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        let postmaster = pid.lines().next()?.trim().parse().ok()?;
        proc_stat(postmaster)?;
        Some(Self { postmaster })
    }

    /// The postmaster's CPU and its reaped children's, plus every live child's (backends,
    /// checkpointer, WAL writer). A backend that exits between two readings moves from the second
    /// sum to the first, so the total stays whole.
    fn cpu(&self) -> Option<Duration> {
        let main = proc_stat(self.postmaster)?;
        let mut ticks = main.own + main.children;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = proc_stat(pid).filter(|s| s.ppid == self.postmaster) {
                ticks += stat.own;
            }
        }
        Some(ticks_to_duration(ticks))
    }
}

// ---------------------------------------------------------------------------------------------
// Process measurements (Linux /proc)

struct ProcStat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: reaped children.
    children: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields are counted after the last ')'.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        ppid: u32::try_from(field(1)?).ok()?,
        own: field(11)? + field(12)?,
        children: field(13)? + field(14)?,
    })
}

/// `USER_HZ`: 100 on every Linux architecture this runs on.
const TICKS_PER_SECOND: u64 = 100;

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// This process's CPU time (all threads, user + system), at 10 ms resolution.
fn process_cpu() -> Duration {
    proc_stat(std::process::id()).map(|s| ticks_to_duration(s.own)).unwrap_or_default()
}

/// The CPU time of this process's threads whose name starts with `prefix`. sqlx runs each SQLite
/// connection on a thread of its own (`sqlx-sqlite-worker-N`, cut to 15 bytes by the kernel); during
/// a write run only the writer connection's thread works, so this is the serial path's CPU.
fn threads_cpu(prefix: &str) -> Duration {
    let mut ticks = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
            if !comm.starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let fields: Vec<&str> =
                stat.rfind(')').map(|i| stat[i + 1..].split_whitespace().collect()).unwrap_or_default();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            ticks += field(11) + field(12);
        }
    }
    ticks_to_duration(ticks)
}

const SQLITE_THREADS: &str = "sqlx-sqlite-wor";

/// A `Vm*` line of /proc/self/status, in KiB.
fn vm_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so the next reading is the peak from now on.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---------------------------------------------------------------------------------------------
// The app

async fn app_on(store: Arc<dyn Store>) -> Result<App, BoxError> {
    // One KEK for the whole run: a database is opened again by a second app, which must unwrap the
    // keys the first one made.
    static KEK: OnceLock<String> = OnceLock::new();
    // A failed generation leaves the entry empty, which `KekSet::parse` refuses.
    let entry =
        KEK.get_or_init(|| KekSet::generate_entry("bench").map(|e| e.to_string()).unwrap_or_default());
    let keks = KekSet::parse(entry)?;
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut settings = AppSettings::new(SecretSlice::from(secret), keks, "bench", "https://id.example.com");
    // Nothing here hashes a password; cheap parameters keep `App::new`'s dummy hash short.
    settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
    settings.hash_pool = HashPoolSize { workers: 1, queue: 1 };
    let app = App::new(store, Arc::new(SystemClock), settings, Arc::new(NoMail))?;
    app.load_keys().await?;
    Ok(app)
}

// ---------------------------------------------------------------------------------------------
// Runs

#[derive(Debug, Clone, Copy)]
struct Run {
    events_per_sec: f64,
    /// This process's CPU per event (µs): the app, sqlx and, on SQLite, the database engine.
    cpu_us: f64,
    /// The PostgreSQL server's CPU per event (µs), when readable.
    server_cpu_us: Option<f64>,
    /// SQLite: the writer connection's thread, CPU per event (µs) and share of the wall time busy.
    sqlite_thread_us: Option<f64>,
    sqlite_thread_busy: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    /// Events per transaction that appended to the chain, where counted (see `count_appends`).
    per_commit: Option<f64>,
}

/// One run of `target` on a fresh database. `count_on_sqlite` installs the append-counting trigger
/// on SQLite (PostgreSQL always counts).
async fn measure(backend: &Backend, target: Target, count_on_sqlite: bool) -> Result<Run, BoxError> {
    // Migrations and the first keyring happen on a pool that is closed before the run, so the run's
    // pool starts with the keys in place and the append count excludes the setup.
    let database = backend.create().await?;
    let setup = app_on(database.store.clone()).await?;
    setup.shutdown().await;
    drop(setup);
    backend.count_appends(&database, count_on_sqlite).await?;
    backend.wait_for_disconnect(&database).await?;
    let appends_before = backend.appends(&database).await?;
    let store = backend.reopen(&database).await?;
    let app = app_on(store.clone()).await?;
    // One event before timing: starts the writer task and warms the connections.
    benchmarking::record_audit_events(&app, 0, 0, 1).await?;
    let mut run = drive(backend, &app, target).await?;
    app.shutdown().await;
    drop(app);
    store.close().await;
    backend.wait_for_disconnect(&database).await?;
    let appends_after = backend.appends(&database).await?;
    backend.dispose(database).await?;

    let events = (target.events / target.writers * target.writers) as f64;
    // Less the warm-up event's transaction.
    run.per_commit =
        appends_before.zip(appends_after).map(|(before, after)| events / (after - before - 1).max(1) as f64);
    Ok(run)
}

/// `target`'s writers on `app`, timed.
async fn drive(backend: &Backend, app: &App, target: Target) -> Result<Run, BoxError> {
    let per_writer = target.events / target.writers;
    let events = per_writer * target.writers;
    let server_before = backend.server_cpu();
    let sqlite_before = threads_cpu(SQLITE_THREADS);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(target.writers);
    for writer in 0..target.writers {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_writer);
            for n in 0..per_writer {
                let begun = Instant::now();
                match target.route {
                    Route::Grouped => benchmarking::record_audit_events(&app, writer, n, 1).await?,
                    Route::OwnTransaction => benchmarking::commit_audited_event(&app, writer, n).await?,
                }
                latencies.push(begun.elapsed());
            }
            Ok::<_, portcullis_app::AppError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(events);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let sqlite_cpu = threads_cpu(SQLITE_THREADS).saturating_sub(sqlite_before);
    let server_cpu =
        server_before.zip(backend.server_cpu()).map(|(before, after)| after.saturating_sub(before));

    latencies.sort_unstable();
    let quantile = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
    let is_sqlite = matches!(backend, Backend::Sqlite { .. });
    Ok(Run {
        events_per_sec: events as f64 / wall.as_secs_f64(),
        cpu_us: per_event(cpu),
        server_cpu_us: server_cpu.map(per_event),
        sqlite_thread_us: is_sqlite.then(|| per_event(sqlite_cpu)),
        sqlite_thread_busy: is_sqlite.then(|| sqlite_cpu.as_secs_f64() / wall.as_secs_f64()),
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        per_commit: None,
    })
}

#[derive(Debug, Clone, Copy)]
struct Verify {
    events: u64,
    checkpoints: u64,
    seconds: f64,
    events_per_sec: f64,
    cpu_us: f64,
    server_cpu_us: Option<f64>,
    rss_before_mib: f64,
    peak_rss_mib: f64,
}

struct Fill {
    events: usize,
    seconds: f64,
    bytes: u64,
}

/// Fills `app`'s log with `events` events through the writer, 32 writers of `FILL_CHUNK` events per
/// call, and a checkpoint whenever one is due (checked every 50 ms, as `serve` checks every 10 s).
async fn fill(app: &App, events: usize) -> Result<(usize, f64), BoxError> {
    let started = Instant::now();
    let chunks = events.div_ceil(FILL_CHUNK);
    let per_writer = chunks.div_ceil(WRITERS);
    let done = Arc::new(AtomicBool::new(false));
    let checkpointer = {
        let app = app.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                app.checkpoint_audit_if_due().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, portcullis_app::AppError>(())
        })
    };
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            for chunk in 0..per_writer {
                let index = writer * per_writer + chunk;
                if index >= chunks {
                    break;
                }
                benchmarking::record_audit_events(&app, writer, index * FILL_CHUNK, FILL_CHUNK).await?;
                written += FILL_CHUNK;
            }
            Ok::<_, portcullis_app::AppError>(written)
        }));
    }
    let mut written = 0;
    for task in tasks {
        written += task.await??;
    }
    done.store(true, Ordering::Relaxed);
    checkpointer.await??;
    app.checkpoint_audit_now(true).await?;
    Ok((written, started.elapsed().as_secs_f64()))
}

async fn verify_once(backend: &Backend, app: &App) -> Result<Verify, BoxError> {
    let rss_before = vm_kib("VmRSS:").unwrap_or(0);
    let reset = reset_peak_rss();
    let sampled_peak = Arc::new(AtomicU64::new(rss_before));
    let peak = sampled_peak.clone();
    let server_before = backend.server_cpu();
    let cpu_before = process_cpu();
    let started = Instant::now();
    let report = app
        .verify_audit_chain(&move |_, _| {
            if let Some(rss) = vm_kib("VmRSS:") {
                peak.fetch_max(rss, Ordering::Relaxed);
            }
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let server_cpu =
        server_before.zip(backend.server_cpu()).map(|(before, after)| after.saturating_sub(before));
    if let Some(broken) = report.broken {
        return Err(format!("the chain is broken at {}: {}", broken.seq, broken.reason).into());
    }
    // VmHWM since the reset when the kernel allowed it; else the peak sampled after every page.
    let peak_kib = if reset {
        vm_kib("VmHWM:").unwrap_or(0).max(sampled_peak.load(Ordering::Relaxed))
    } else {
        sampled_peak.load(Ordering::Relaxed)
    };
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / report.events.max(1) as f64;
    Ok(Verify {
        events: report.events,
        checkpoints: report.checkpoints,
        seconds,
        events_per_sec: report.events as f64 / seconds,
        cpu_us: per_event(cpu),
        server_cpu_us: server_cpu.map(per_event),
        rss_before_mib: rss_before as f64 / 1024.0,
        peak_rss_mib: peak_kib as f64 / 1024.0,
    })
}

/// Fills a log, verifies it `verify_rounds` times, then appends to the full log as `grouped ×32`
/// does to an empty one (a quarter as many events): what a log that has grown costs each append.
async fn verification(backend: &Backend, plan: &Plan) -> Result<(Fill, Vec<Verify>, Target, Run), BoxError> {
    let database = backend.create().await?;
    let app = app_on(database.store.clone()).await?;
    let (events, seconds) = fill(&app, plan.verify_events).await?;
    // Verification reads through a new pool, as `portcullis audit verify` does from the command line.
    app.shutdown().await;
    drop(app);
    let store = backend.reopen(&database).await?;
    let bytes = backend.size_bytes(&database).await?;
    let app = app_on(store.clone()).await?;
    let mut runs = Vec::new();
    for _ in 0..plan.verify_rounds {
        runs.push(verify_once(backend, &app).await?);
    }
    let target = Target { events: plan.targets[0].events / 4, ..plan.targets[0] };
    benchmarking::record_audit_events(&app, 0, 0, 1).await?;
    let appended = drive(backend, &app, target).await?;
    app.shutdown().await;
    drop(app);
    store.close().await;
    backend.dispose(database).await?;
    Ok((Fill { events, seconds, bytes }, runs, target, appended))
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

fn median_of(runs: &[Run], field: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(field).collect();
    (!values.is_empty()).then(|| median(values))
}

/// The database side of a run's CPU, for its one-line summary.
fn database_cpu(run: &Run) -> String {
    match (run.sqlite_thread_us, run.sqlite_thread_busy, run.server_cpu_us) {
        (Some(us), Some(busy), _) => format!(" (SQLite writer thread {us:.1}, busy {:.0} %)", busy * 100.0),
        (_, _, Some(server)) => format!(", PostgreSQL server {server:.1}"),
        _ => String::new(),
    }
}

fn show(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

async fn bench_backend(backend: &Backend, plan: &Plan) -> Result<(), BoxError> {
    let label = backend.label();
    println!("\n## {label}\n");
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); plan.targets.len()];
    for round in 0..plan.rounds {
        // The order rotates, so no target always runs first (cold) or after the same neighbour.
        for k in 0..plan.targets.len() {
            let index = (round + k) % plan.targets.len();
            let target = plan.targets[index];
            let run = measure(backend, target, false).await?;
            let database = database_cpu(&run);
            println!(
                "round {} {:<12} {:>7} events: {:>6.0} events/s; CPU µs/event {:.1}{database}; p50 {:.2} ms, p99 {:.2} ms; {} events/commit",
                round + 1,
                target.name,
                target.events,
                run.events_per_sec,
                run.cpu_us,
                run.p50_ms,
                run.p99_ms,
                show(run.per_commit, 1),
            );
            results[index].push(run);
        }
    }
    let baseline = median_of(&results[1], |r| Some(r.events_per_sec));
    println!("\n{label}: medians of {} rounds, fresh database per run.\n", plan.rounds);
    println!(
        "| path | writers | events/run | events/s | vs grouped ×1 | CPU µs/event (bench process) | SQLite writer thread µs/event (busy) | PostgreSQL server CPU µs/event | p50 ms | p99 ms | events/commit |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (target, runs) in plan.targets.iter().zip(&results) {
        let rate = median_of(runs, |r| Some(r.events_per_sec));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            target.name,
            target.writers,
            target.events,
            show(rate, 0),
            show(rate.zip(baseline).map(|(r, b)| r / b), 2),
            show(median_of(runs, |r| Some(r.cpu_us)), 1),
            match (median_of(runs, |r| r.sqlite_thread_us), median_of(runs, |r| r.sqlite_thread_busy)) {
                (Some(us), Some(busy)) => format!("{us:.1} ({:.0} %)", busy * 100.0),
                _ => "–".to_owned(),
            },
            show(median_of(runs, |r| r.server_cpu_us), 1),
            show(median_of(runs, |r| Some(r.p50_ms)), 2),
            show(median_of(runs, |r| Some(r.p99_ms)), 2),
            show(median_of(runs, |r| r.per_commit), 1),
        );
    }
    for (target, runs) in plan.targets.iter().zip(&results) {
        let rates: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.events_per_sec)).collect();
        let cpu: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.cpu_us)).collect();
        println!("- {} raw events/s: {}; CPU µs/event: {}", target.name, rates.join(" "), cpu.join(" "));
    }

    if plan.count_sqlite && matches!(backend, Backend::Sqlite { .. }) {
        // SQLite keeps no row statistics: one more run, with a trigger counting the head's moves.
        let target = plan.targets[0];
        let run = measure(backend, target, true).await?;
        println!(
            "\n{label}, {} counted once more with a trigger on the head row (which adds a row update to every commit): {:.1} events per commit, {:.0} events/s",
            target.name,
            run.per_commit.unwrap_or(f64::NAN),
            run.events_per_sec,
        );
    }

    if plan.verify_events == 0 {
        return Ok(());
    }
    println!("\n{label}: verification of a {}-event log\n", plan.verify_events);
    let (fill, runs, target, appended) = verification(backend, plan).await?;
    println!(
        "filled {} events in {:.1} s ({:.0} events/s, {} writers × {} events per call); database {:.1} MiB ({:.0} bytes/event)",
        fill.events,
        fill.seconds,
        fill.events as f64 / fill.seconds,
        WRITERS,
        FILL_CHUNK,
        fill.bytes as f64 / (1024.0 * 1024.0),
        fill.bytes as f64 / fill.events.max(1) as f64,
    );
    println!(
        "\n| round | events | checkpoints | seconds | events/s | CPU µs/event (bench process) | PostgreSQL server CPU µs/event | RSS before (MiB) | peak RSS during (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, v) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {} | {:.1} | {:.1} |",
            i + 1,
            v.events,
            v.checkpoints,
            v.seconds,
            v.events_per_sec,
            v.cpu_us,
            show(v.server_cpu_us, 2),
            v.rss_before_mib,
            v.peak_rss_mib,
        );
    }
    println!(
        "| median | | | {:.2} | {:.0} | {:.2} | {} | | {:.1} |",
        median(runs.iter().map(|v| v.seconds).collect()),
        median(runs.iter().map(|v| v.events_per_sec).collect()),
        median(runs.iter().map(|v| v.cpu_us).collect()),
        show(
            {
                let server: Vec<f64> = runs.iter().filter_map(|v| v.server_cpu_us).collect();
                (!server.is_empty()).then(|| median(server))
            },
            2
        ),
        median(runs.iter().map(|v| v.peak_rss_mib).collect()),
    );
    let database = database_cpu(&appended);
    println!(
        "\nThen {} on the {}-event log: {} events, {:.0} events/s; CPU µs/event {:.1}{database}; p50 {:.2} ms, p99 {:.2} ms.",
        target.name,
        fill.events,
        target.events,
        appended.events_per_sec,
        appended.cpu_us,
        appended.p50_ms,
        appended.p99_ms,
    );
    Ok(())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn host() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpus} CPUs, load average {}", load.join(" "))
}

async fn run() -> Result<(), BoxError> {
    let quick = env_flag("AUDIT_BENCH_QUICK");
    let number = |name: &str| std::env::var(name).ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0);
    let knobs = Knobs {
        rounds: number("AUDIT_BENCH_ROUNDS"),
        verify: !env_flag("AUDIT_BENCH_NO_VERIFY"),
        verify_rounds: number("AUDIT_BENCH_VERIFY_ROUNDS"),
        count_sqlite: !env_flag("AUDIT_BENCH_NO_COUNT"),
    };
    let backends = std::env::var("AUDIT_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
    let wanted = |name: &str| backends.split(',').any(|b| b.trim().eq_ignore_ascii_case(name));
    println!("# Audit trail throughput{}", if quick { " (AUDIT_BENCH_QUICK)" } else { "" });
    println!("\nHost: {} at start.", host());

    if wanted("sqlite") {
        let dir = std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let backend = Backend::Sqlite { dir };
        bench_backend(&backend, &plan(false, quick, &knobs)).await?;
    }
    if wanted("postgres") {
        match std::env::var(POSTGRES_URL_VAR).ok().filter(|u| !u.is_empty()) {
            Some(url) => {
                let backend = Backend::postgres(url).await?;
                if backend.server_cpu().is_none() {
                    println!("\n(the PostgreSQL server's processes are not readable here: no server CPU)");
                }
                bench_backend(&backend, &plan(true, quick, &knobs)).await?;
            }
            None => println!("\n{POSTGRES_URL_VAR} is not set: PostgreSQL skipped."),
        }
    }
    let stragglers = STRAGGLERS.load(Ordering::Relaxed);
    if stragglers > 0 {
        println!("\n{stragglers} PostgreSQL connections outlived `Pool::close` and were terminated.");
    }
    println!("\nHost: {} at end.", host());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        println!("audit: a throughput benchmark; run it with `cargo bench -p portcullis-app --bench audit`");
        return Ok(());
    }
    // The server's runtime: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}
