//! `portcullis backup`: create, list, verify, restore and prune from the command line, as an operator
//! runs them; a damaged backup fails `verify` with exit 1 and the reason; a restore refuses a database
//! holding data without `--force`; with PostgreSQL available, a SQLite backup restores into it and a
//! backup of that PostgreSQL database verifies (restored into a scratch SQLite database); a backup
//! another installation made with our public recipient fails verify and restore. Each slot of the
//! schedule is run by one node however many run it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A data dir with backups encrypted to a fresh age key, and that key's file.
struct Operator {
    dir: tempfile::TempDir,
    recipient: String,
    database_url: Option<String>,
}

impl Operator {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
        let identity = age::x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
        std::fs::write(dir.path().join("key.txt"), format!("{secret}\n")).unwrap();
        Self { recipient: identity.to_public().to_string(), dir, database_url: None }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("PORTCULLIS_PASSWORD__ARGON2_MEMORY_KIB", "1024")
            .env("PORTCULLIS_PASSWORD__ARGON2_ITERATIONS", "1")
            .env("PORTCULLIS_LOG__LEVEL", "warn")
            .env("PORTCULLIS_BACKUP__RECIPIENTS", format!("[\"{}\"]", self.recipient))
            .env("PORTCULLIS_BACKUP__IDENTITY_FILE", self.dir.path().join("key.txt"))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &self.database_url {
            command.env("PORTCULLIS_DATABASE__URL", url);
        }
        let mut child = command.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"correct horse battery staple\n").unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    }

    /// Runs a command that must fail with exit 1; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&output.stdout));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn backups(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join("backups")
    }
}

fn created_id(stdout: &str) -> String {
    stdout.strip_prefix("created ").and_then(|rest| rest.split_whitespace().next()).unwrap().to_owned()
}

fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_operator_creates_lists_verifies_restores_and_prunes_backups() {
    let op = Operator::new();
    op.ok(&["users", "create", "--email", "root@example.com", "--role", "owner"]);

    let id = created_id(&op.ok(&["backup", "create"]));
    assert!(op.ok(&["backup", "list"]).contains(&format!("{id}\t")));
    let verified = op.ok(&["backup", "verify", &id]);
    assert!(verified.contains("is good") && verified.contains("audit chain verified"), "{verified}");
    assert!(op.ok(&["backup", "list"]).contains("verified good"));

    let restored = op.dir.path().join("restored.db");
    let to = format!("sqlite:{}", restored.display());
    assert!(op.ok(&["backup", "restore", &id, "--to", &to]).contains("restored"));
    let refused = op.fails(&["backup", "restore", &id, "--to", &to]);
    assert!(refused.contains("--force"), "{refused}");
    op.ok(&["backup", "restore", &id, "--to", &to, "--force"]);

    let second = created_id(&op.ok(&["backup", "create"]));
    flip_a_byte(&op.backups().join(format!("{second}.age")));
    let why = op.fails(&["backup", "verify", &second]);
    assert!(why.contains(&second) && why.contains("SHA-256"), "{why}");
    assert!(op.ok(&["backup", "list"]).contains("FAILED verification"));

    let pruned = op.ok(&["backup", "prune"]);
    assert!(pruned.contains("0 deleted, 2 kept"), "nothing is 30 days old: {pruned}");
}

/// What anyone holding the public recipient and write access to the backup folder can do: make a
/// backup with an installation of their own, encrypted to our recipient, and drop it (with its
/// sidecar) beside ours. It lists like ours, but verify and restore refuse it (exit 1), and the
/// restore leaves the target database without so much as a table.
#[tokio::test]
async fn a_backup_forged_by_another_installation_fails_verify_and_restore_and_the_target_stays_empty() {
    let op = Operator::new();
    op.ok(&["users", "create", "--email", "root@example.com", "--role", "owner"]);
    op.ok(&["backup", "create"]);
    let mut attacker = Operator::new();
    attacker.recipient = op.recipient.clone();
    attacker.ok(&["users", "create", "--email", "mallory@example.com", "--role", "owner"]);
    let forged = created_id(&attacker.ok(&["backup", "create"]));
    for suffix in [".age", ".json"] {
        let name = format!("{forged}{suffix}");
        std::fs::copy(attacker.backups().join(&name), op.backups().join(&name)).unwrap();
    }
    assert!(op.ok(&["backup", "list"]).contains(&format!("{forged}\t")));

    let why = op.fails(&["backup", "verify", &forged]);
    assert!(why.contains("MAC does not verify under KEK `dev1`"), "{why}");
    let restored = op.dir.path().join("restored.db");
    let to = format!("sqlite:{}", restored.display());
    let why = op.fails(&["backup", "restore", &forged, "--to", &to]);
    assert!(why.contains("MAC does not verify"), "{why}");

    use sqlx::Connection;
    let mut db = sqlx::SqliteConnection::connect(&format!("{to}?mode=rwc")).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(tables, 0, "nothing of the forged archive reached the database, not even its schema");
}

#[tokio::test]
async fn a_sqlite_backup_restores_into_postgresql_and_a_postgresql_backup_verifies() {
    let Some(url) = fresh_postgres_database("restore").await else {
        use std::io::Write;
        let _ = std::io::stderr()
            .write_all(b"e2e: PORTCULLIS_TEST_POSTGRES_URL not set; skipped the cross-engine backup test\n");
        return;
    };
    let lite = Operator::new();
    lite.ok(&["users", "create", "--email", "root@example.com", "--role", "owner"]);
    let id = created_id(&lite.ok(&["backup", "create"]));

    lite.ok(&["backup", "restore", &id, "--to", &url]);

    // The same installation (its KEK and secrets in the data dir), moved onto PostgreSQL.
    let mut pg = lite;
    pg.database_url = Some(url);
    // The restored PostgreSQL database serves as it is: its owner exists, its chain goes on.
    let refused = pg.run(&["users", "create", "--email", "root@example.com", "--role", "owner"]);
    assert!(!refused.status.success(), "the restored account is there");
    let from_pg = created_id(&pg.ok(&["backup", "create"]));
    let verified = pg.ok(&["backup", "verify", &from_pg]);
    assert!(verified.contains("is good"), "{verified}");
}

/// A new database on the server `PORTCULLIS_TEST_POSTGRES_URL` names, if set; `label` keeps the
/// databases of tests running at once apart.
async fn fresh_postgres_database(label: &str) -> Option<String> {
    use sqlx::Connection;
    let admin_url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty())?;
    let name = format!("portcullis_backup_e2e_{label}_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), ""), |(b, q)| (b, q));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    Some(format!("{}/{name}{query}", &base[..path]))
}

/// What `serve`'s schedule runs: a drill with nothing to verify raises `backup_failed` (which alerts);
/// a scheduled backup, then a drill that proves it, move both backup gauges and are audited.
#[tokio::test]
async fn the_scheduled_backup_and_the_drill_are_audited_alert_on_failure_and_move_the_gauges() {
    crate::support::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(&dir);
    #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
    let identity = age::x25519::Identity::generate();
    let key = dir.path().join("key.txt");
    std::fs::write(&key, format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&identity.to_string())))
        .unwrap();
    config.backup.recipients = vec![identity.to_public().to_string()];
    config.backup.identity_file = Some(key);
    let server = portcullis::start(&config, portcullis::StartOptions::default()).await.unwrap();
    let backups = portcullis::backups(&config, server.app()).unwrap();

    portcullis::run_drill(&backups, &config).await;
    portcullis::run_scheduled_backup(&backups).await;
    portcullis::run_drill(&backups, &config).await;

    let listed = backups.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].sidecar.as_ref().unwrap().last_verification().unwrap().ok);
    let metrics = server.app().render_metrics().await;
    for gauge in [
        "portcullis_backup_last_success_timestamp_seconds ",
        "portcullis_backup_last_verified_timestamp_seconds ",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(gauge)), "{gauge} in {metrics}");
    }
    let mut tx = server.app().store().begin_read().await.unwrap();
    let query = portcullis_store::SecurityEventQuery {
        kinds: vec![portcullis_domain::SecurityEventKind::BackupFailed],
        limit: 10,
        ..Default::default()
    };
    let failed = tx.list_security_events(&query).await.unwrap().events;
    let actions: Vec<String> =
        tx.audit_events_after(0, 10_000).await.unwrap().into_iter().map(|e| e.record.action).collect();
    tx.rollback().await.unwrap();
    assert_eq!(failed.len(), 1, "the first drill found nothing to verify");
    for action in ["backup.failed", "backup.created", "backup.verified"] {
        assert!(actions.iter().any(|a| a == action), "{action} in {actions:?}");
    }
    server.shutdown().await;
}

/// Backups to a fresh age key, in a folder of `dir` (which every node of a test shares).
fn with_backups(config: &mut portcullis::config::Config, dir: &Path) {
    #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
    let identity = age::x25519::Identity::generate();
    let key = dir.join("key.txt");
    std::fs::write(&key, format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&identity.to_string())))
        .unwrap();
    config.backup.recipients = vec![identity.to_public().to_string()];
    config.backup.identity_file = Some(key);
    config.backup.folder = Some(dir.join("shared-backups"));
}

/// A time no other test's schedule names, so the log lines about it are this test's.
fn slot(rfc3339: &str) -> portcullis_domain::Timestamp {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    portcullis_domain::Timestamp::from_unix_millis(at.timestamp_millis())
}

/// The audit actions recorded so far.
async fn audit_actions(app: &portcullis_app::App) -> Vec<String> {
    let mut tx = app.store().begin_read().await.unwrap();
    let actions =
        tx.audit_events_after(0, 10_000).await.unwrap().into_iter().map(|e| e.record.action).collect();
    tx.rollback().await.unwrap();
    actions
}

/// Whether a node logged that another had claimed `task` at `slot`.
fn skip_logged(task: &str, slot: portcullis_domain::Timestamp) -> bool {
    crate::support::log_lines().iter().any(|line| {
        line["message"] == "another node has claimed this scheduled run; skipped"
            && line["level"] == "INFO"
            && line["task"] == task
            && line["slot"] == slot.to_rfc3339()
    })
}

/// Two nodes whose schedules fire at the same instant claim the slot at once: one takes the backup
/// and one runs the drill, the other skips each and says so at info; the next slot is claimed anew.
/// The nodes here share one server's database (SQLite by default, where the data dir lock keeps a
/// second server off the file); the next test runs two servers on one PostgreSQL database.
#[tokio::test]
async fn two_nodes_running_the_same_scheduled_slot_take_one_backup_and_one_drill() {
    crate::support::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(&dir);
    with_backups(&mut config, dir.path());
    let server = portcullis::start(&config, portcullis::StartOptions::default()).await.unwrap();
    let a = portcullis::backups(&config, server.app()).unwrap().with_node("node-a");
    let b = portcullis::backups(&config, server.app()).unwrap().with_node("node-b");
    let (backup_slot, drill_slot) = (slot("2031-01-01T03:00:00Z"), slot("2031-01-05T04:00:00Z"));

    let ran = tokio::join!(
        portcullis::run_scheduled_backup_at(&a, backup_slot),
        portcullis::run_scheduled_backup_at(&b, backup_slot)
    );
    let drilled = tokio::join!(
        portcullis::run_drill_at(&a, &config, drill_slot),
        portcullis::run_drill_at(&b, &config, drill_slot)
    );

    assert!(ran.0 ^ ran.1, "exactly one node took the backup: {ran:?}");
    assert!(drilled.0 ^ drilled.1, "exactly one node ran the drill: {drilled:?}");
    let listed = a.list().await.unwrap();
    assert_eq!(listed.len(), 1, "one backup: {listed:?}");
    assert!(listed[0].sidecar.as_ref().unwrap().last_verification().unwrap().ok);
    let actions = audit_actions(server.app()).await;
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!((count("backup.created"), count("backup.verified")), (1, 1), "{actions:?}");
    assert!(skip_logged("backup", backup_slot) && skip_logged("drill", drill_slot));
    // The next day's slot is a claim of its own, whichever node makes it.
    assert!(portcullis::run_scheduled_backup_at(&b, slot("2031-01-02T03:00:00Z")).await);
    assert_eq!(a.list().await.unwrap().len(), 2);
    server.shutdown().await;
}

/// Two servers of one installation on one PostgreSQL database, backing up to one folder, both run
/// the same slot of the schedule and of the drill: one backup, one drill.
#[tokio::test]
async fn two_servers_on_one_postgresql_database_take_one_backup_per_scheduled_slot() {
    let Some(url) = fresh_postgres_database("two_nodes").await else {
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"e2e: PORTCULLIS_TEST_POSTGRES_URL not set; skipped the two-node backup schedule test\n",
        );
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let first = crate::support::spawn_with(|config| {
        config.database.url = Some(portcullis::config::Secret::new(url));
        with_backups(config, shared.path());
    })
    .await;
    let second = crate::support::spawn_beside(&first).await;
    let a = portcullis::backups(&first.config, first.server.app()).unwrap().with_node("first");
    let b = portcullis::backups(&second.config, second.server.app()).unwrap().with_node("second");
    let (backup_slot, drill_slot) = (slot("2031-02-01T03:00:00Z"), slot("2031-02-02T04:00:00Z"));

    let ran = tokio::join!(
        portcullis::run_scheduled_backup_at(&a, backup_slot),
        portcullis::run_scheduled_backup_at(&b, backup_slot)
    );
    let drilled = tokio::join!(
        portcullis::run_drill_at(&a, &first.config, drill_slot),
        portcullis::run_drill_at(&b, &second.config, drill_slot)
    );

    assert!(ran.0 ^ ran.1, "exactly one server took the backup: {ran:?}");
    assert!(drilled.0 ^ drilled.1, "exactly one server ran the drill: {drilled:?}");
    let listed = b.list().await.unwrap();
    assert_eq!(listed.len(), 1, "one backup in the shared folder: {listed:?}");
    assert!(listed[0].sidecar.as_ref().unwrap().last_verification().unwrap().ok);
    let actions = audit_actions(second.server.app()).await;
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!((count("backup.created"), count("backup.verified")), (1, 1), "{actions:?}");
    second.stop().await;
    first.stop().await;
}
