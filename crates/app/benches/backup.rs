//! Backup and restore at scale (issue 9): a SQLite database of 100,000 accounts and 1,000,000 audit
//! events is backed up (one snapshot, streamed, zstd, age), restored into an empty database and
//! verified (restored into a scratch database, checksums, counts, the audit chain), each step timed
//! with this process's CPU and its peak resident memory, and the archive's size set against the
//! database's. Memory must stay flat: every step streams, none holds a table.
//!
//! Not criterion: each step runs for tens of seconds on real files. The accounts are written through
//! the store with random sealed fields (what the backup copies is bytes; hashing 100,000 passwords
//! would only slow the set-up), the audit events through the app's group-commit writer, chained and
//! with their client details sealed as a failed login's are.
//!
//! `cargo bench -p portcullis-app --bench backup` (or `scripts/bench/backup.sh`). `BACKUP_BENCH_USERS`
//! and `BACKUP_BENCH_EVENTS` set the sizes, `BACKUP_BENCH_QUICK=1` shrinks them for a smoke run,
//! `BACKUP_BENCH_DIR` is where the files go (the temporary directory by default).

#![allow(clippy::print_stdout, reason = "a benchmark's report is its output")]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use portcullis_app::mail::{MailError, Mailer, OutgoingEmail};
use portcullis_app::{
    App, AppSettings, BackupSettings, Backups, FolderTarget, HashAlgorithm, HashPoolSize, KekSet,
    SystemClock, benchmarking,
};
use portcullis_domain::{BuiltinRole, Timestamp, UserId, UserStatus};
use portcullis_store::{BlindIndex, Sealed, Store, StoredUser};
use portcullis_store_sqlite::{SqliteOptions, SqliteStore};
use secrecy::{ExposeSecret, SecretSlice};

type BoxError = Box<dyn Error + Send + Sync>;

/// Accounts written per transaction while filling.
const USER_BATCH: usize = 1000;
/// Events per `record_audit` call while filling, and calls in flight.
const EVENT_CHUNK: usize = 100;
const FILLERS: usize = 8;

#[derive(Debug)]
struct NoMail;

#[async_trait]
impl Mailer for NoMail {
    async fn send(&self, _email: &OutgoingEmail) -> Result<(), MailError> {
        Ok(())
    }
}

fn env_size(name: &str, full: usize, quick: usize) -> usize {
    if std::env::var("BACKUP_BENCH_QUICK").is_ok_and(|v| v == "1") {
        return quick;
    }
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(full)
}

/// This process's CPU time (all threads, so the database engine too).
fn process_cpu() -> Duration {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    // Fields are counted after the command name's closing parenthesis.
    let fields: Vec<&str> =
        text.get(text.rfind(')').unwrap_or(0) + 1..).unwrap_or("").split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux architecture this runs on.
    Duration::from_millis(ticks * 10)
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so the next reading is the peak of the next step.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn size_of(paths: &[PathBuf]) -> u64 {
    paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

fn database_files(path: &Path) -> Vec<PathBuf> {
    let name = path.to_string_lossy();
    vec![path.to_path_buf(), PathBuf::from(format!("{name}-wal"))]
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

async fn open(path: &Path) -> Result<Arc<dyn Store>, BoxError> {
    let store = SqliteStore::open(&SqliteOptions::new(path)).await?;
    store.migrate().await?;
    Ok(Arc::new(store))
}

fn settings(kek_entry: &str) -> Result<AppSettings, BoxError> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut settings = AppSettings::new(
        SecretSlice::from(secret),
        KekSet::parse(kek_entry)?,
        "bench",
        "https://id.example.com",
    );
    // Nothing here hashes a password; cheap parameters keep `App::new`'s dummy hash short.
    settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
    settings.hash_pool = HashPoolSize { workers: 1, queue: 1 };
    Ok(settings)
}

fn random<const N: usize>() -> Result<[u8; N], BoxError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

/// Accounts as the store keeps them: sealed address (~70 bytes) and name (~50), a blind index.
async fn fill_users(store: &dyn Store, count: usize) -> Result<(), BoxError> {
    let now = Timestamp::from_unix_millis(1_790_000_000_000);
    let mut written = 0;
    while written < count {
        let mut tx = store.begin().await?;
        for _ in 0..USER_BATCH.min(count - written) {
            let user = StoredUser {
                id: UserId::from_random_bytes(random()?),
                email: Sealed(random::<70>()?.to_vec()),
                email_index: BlindIndex(random()?),
                index_key: "blind-index-bench".into(),
                display_name: Some(Sealed(random::<50>()?.to_vec())),
                pii_key: "pii-bench".into(),
                email_verified_at: Some(now),
                status: UserStatus::Active,
                role: BuiltinRole::Member,
                created_at: now,
                updated_at: now,
                last_login_at: None,
            };
            tx.insert_user(&user).await?;
        }
        tx.commit().await?;
        written += USER_BATCH.min(count - written);
    }
    Ok(())
}

async fn fill_events(app: &App, count: usize) -> Result<(), BoxError> {
    let chunks = count.div_ceil(EVENT_CHUNK);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for writer in 0..FILLERS {
        let (app, next) = (app.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let chunk = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if chunk >= chunks {
                    return Ok::<(), portcullis_app::AppError>(());
                }
                let n = chunk * EVENT_CHUNK;
                benchmarking::record_audit_events(&app, writer, n, EVENT_CHUNK.min(count - n)).await?;
                // A checkpoint whenever one is due, as `serve` signs them.
                if chunk % 100 == 0 {
                    app.checkpoint_audit_if_due().await?;
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

struct Step {
    name: &'static str,
    wall: Duration,
    cpu: Duration,
    peak_kib: u64,
}

async fn measure<F, T>(name: &'static str, work: F) -> Result<(Step, T), BoxError>
where
    F: std::future::Future<Output = Result<T, BoxError>>,
{
    reset_peak_rss();
    let (cpu, started) = (process_cpu(), Instant::now());
    let value = work.await?;
    let step = Step { name, wall: started.elapsed(), cpu: process_cpu() - cpu, peak_kib: vm_kib("VmHWM:") };
    Ok((step, value))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run() -> Result<(), BoxError> {
    let users = env_size("BACKUP_BENCH_USERS", 100_000, 2_000);
    let events = env_size("BACKUP_BENCH_EVENTS", 1_000_000, 20_000);
    let base = std::env::var_os("BACKUP_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base)?;
    // One KEK for both apps on the database: the second must unwrap the keys the first made.
    let kek_entry = KekSet::generate_entry("bench")?;
    #[expect(
        deprecated,
        reason = "X25519 recipients are what the age tool packaged by Debian (1.1) reads; see ADR 0012"
    )]
    let identity = age::x25519::Identity::generate();
    let key_file = dir.path().join("backup-key.txt");
    std::fs::write(&key_file, format!("{}\n", identity.to_string().expose_secret()))?;

    let source = dir.path().join("source.db");
    let store = open(&source).await?;
    let app = App::new(store.clone(), Arc::new(SystemClock), settings(&kek_entry)?, Arc::new(NoMail))?;
    app.load_keys().await?;
    let filling = Instant::now();
    fill_users(store.as_ref(), users).await?;
    fill_events(&app, events).await?;
    app.shutdown().await;
    eprintln!("filled {users} accounts and {events} events in {:.1} s", filling.elapsed().as_secs_f64());

    // A fresh start on the filled file: the WAL checkpointed into it, caches cold.
    let store = open(&source).await?;
    let app = App::new(store.clone(), Arc::new(SystemClock), settings(&kek_entry)?, Arc::new(NoMail))?;
    app.load_keys().await?;
    let database_bytes = size_of(&database_files(&source));
    let folder = dir.path().join("backups");
    let backups = Backups::new(
        app.clone(),
        Arc::new(FolderTarget::new(folder.clone())),
        BackupSettings {
            recipients: vec![identity.to_public().to_string()],
            identity_file: Some(key_file),
            passphrase: None,
            retention_days: 30,
            keep_min: 1,
            staging_dir: dir.path().join("staging"),
        },
    )?;
    let quiet = |_: &str, _: u64| {};

    let (create, created) = measure("backup create", async { Ok(backups.create(&quiet).await?) }).await?;
    let archive_bytes = created.size;
    let restored_path = dir.path().join("restored.db");
    let target = SqliteStore::open(&SqliteOptions::new(&restored_path)).await?;
    let (restore, _) = measure("backup restore (into an empty SQLite)", async {
        Ok(backups.restore(&created.id, &target, false, &quiet).await?)
    })
    .await?;
    target.close().await;
    let scratch_dir = tempfile::tempdir_in(dir.path())?;
    let scratch = SqliteStore::open(&SqliteOptions::new(scratch_dir.path().join("scratch.db"))).await?;
    let (verify, verified) = measure("backup verify (restore + checks + chain)", async {
        Ok(backups.verify(&created.id, &scratch, &quiet).await?)
    })
    .await?;
    app.shutdown().await;

    println!("### Backup and restore: {users} accounts, {events} audit events (SQLite)\n");
    println!(
        "Database {:.1} MiB (file + WAL); archive {:.1} MiB ({:.1}% of the database; backups folder {:.1} MiB \
         with the sidecar); {} audit events re-verified.\n",
        mib(database_bytes),
        mib(archive_bytes),
        100.0 * archive_bytes as f64 / database_bytes.max(1) as f64,
        mib(folder_size(&folder)),
        verified.audit_events_verified,
    );
    println!("| step | wall (s) | CPU (s) | rows/s | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    let rows = (users + events) as f64;
    for step in [create, restore, verify] {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} |",
            step.name,
            step.wall.as_secs_f64(),
            step.cpu.as_secs_f64(),
            rows / step.wall.as_secs_f64(),
            step.peak_kib as f64 / 1024.0,
        );
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}
