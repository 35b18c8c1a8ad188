//! Backups as an operator relies on them: a backup restores to the same content, proves itself by
//! being restored (checksums, counts, the audit chain), is consistent though taken while the server
//! writes, and every kind of damage (a changed byte, a cut file, the wrong key, a swapped table) is
//! caught by verify with a reason that says what.

// age 0.13 marks classic X25519 recipients deprecated in favour of its post-quantum hybrid; they are
// what `age-keygen` and the age 1.1 tool that operators decrypt with (Debian's) produce and read, so
// backups use them on purpose (docs/decisions/0012-backups.md).
#![allow(deprecated)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use portcullis_store::{Cell, DumpInfo, DumpSink, StoreError, TableHeader};

use super::*;
use crate::backup::{archive_name, sidecar_name};
use crate::{BackupSettings, Backups, FolderTarget};

/// A file database in its own folder, with an app on it; the folder also holds the backups.
struct Scene {
    t: TestApp,
    dir: tempfile::TempDir,
    backups: Backups,
    identity: age::x25519::Identity,
}

impl Scene {
    fn folder(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    fn archive(&self, id: &str) -> PathBuf {
        self.folder().join(archive_name(id))
    }
}

async fn file_store(path: &Path) -> SqliteStore {
    SqliteStore::open(&SqliteOptions::new(path)).await.unwrap()
}

fn write_identity(path: &Path, identity: &age::x25519::Identity) {
    std::fs::write(path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
}

async fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir.path().join("portcullis.db")).await;
    store.migrate().await.unwrap();
    let t = testing::app_on(store);
    t.app.load_keys().await.unwrap();
    let identity = age::x25519::Identity::generate();
    let key_file = dir.path().join("backup-key.txt");
    write_identity(&key_file, &identity);
    let settings = BackupSettings {
        recipients: vec![identity.to_public().to_string()],
        identity_file: Some(key_file),
        passphrase: None,
        retention_days: 30,
        keep_min: 1,
        staging_dir: dir.path().join("staging"),
    };
    let target = Arc::new(FolderTarget::new(dir.path().join("backups")));
    let backups = Backups::new(t.app.clone(), target, settings).unwrap();
    Scene { t, dir, backups, identity }
}

/// Some of everything: accounts, sessions, a failed login's security event, audit events.
async fn activity(app: &App) {
    signup(app, ALICE, PASSWORD).await;
    signup(app, BOB, PASSWORD).await;
    login_bearer(app, ALICE, PASSWORD).await;
    let _ = app.login(BOB, secret("not it"), LoginMode::Bearer, &client()).await;
}

fn no_progress(_: &str, _: u64) {}

/// A dump held whole (test data is small), as column name → value per row.
#[derive(Default)]
struct Whole(Vec<(String, Vec<std::collections::BTreeMap<String, Cell>>)>, Vec<String>);

#[async_trait::async_trait]
impl DumpSink for Whole {
    async fn start(&mut self, _: DumpInfo, _: &mut dyn StoreTx) -> Result<(), StoreError> {
        Ok(())
    }
    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        self.0.push((table.name.clone(), Vec::new()));
        self.1 = table.columns.clone();
        Ok(())
    }
    async fn row(&mut self, row: Vec<Cell>) -> Result<(), StoreError> {
        let named = self.1.iter().cloned().zip(row).collect();
        self.0.last_mut().unwrap().1.push(named);
        Ok(())
    }
    async fn end_table(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

async fn whole(store: &dyn Store) -> Whole {
    let mut whole = Whole::default();
    store.dump(&mut whole).await.unwrap();
    whole
}

fn backup_error<T: std::fmt::Debug>(result: Result<T, AppError>) -> String {
    match result {
        Err(AppError::Backup(why)) => why,
        other => panic!("expected a backup defect, got {other:?}"),
    }
}

/// Decrypts and decompresses an archive into its lines.
fn plaintext(path: &Path, identity: &age::x25519::Identity) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let decryptor = age::Decryptor::new(file).unwrap();
    let plain = decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).unwrap();
    let mut text = String::new();
    zstd::Decoder::new(plain).unwrap().read_to_string(&mut text).unwrap();
    text.lines().map(str::to_owned).collect()
}

/// Compresses and encrypts lines as an archive (for tampering that only a key holder could do).
fn seal(path: &Path, identity: &age::x25519::Identity, lines: &[String]) {
    let recipient = identity.to_public();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut sealed = encryptor.wrap_output(file).unwrap();
    {
        let mut zstd = zstd::Encoder::new(&mut sealed, 3).unwrap();
        for line in lines {
            zstd.write_all(line.as_bytes()).unwrap();
            zstd.write_all(b"\n").unwrap();
        }
        zstd.finish().unwrap();
    }
    sealed.finish().unwrap();
}

#[tokio::test]
async fn a_backup_restores_into_an_empty_sqlite_database_with_identical_content() {
    let s = scene().await;
    activity(&s.t.app).await;
    let before = whole(s.t.app.store().as_ref()).await;

    let created = s.backups.create(&no_progress).await.unwrap();
    let target = file_store(&s.dir.path().join("restored.db")).await;
    let restored = s.backups.restore(&created.id, &target, false, &no_progress).await.unwrap();

    assert_eq!(restored.manifest, created.manifest);
    let after = whole(&target).await;
    assert_eq!(after.0, before.0, "the restored database holds exactly what the snapshot held");
    assert!(target.migration_status().await.unwrap().is_current(), "migrated to this binary's schema after");
    let users = created.manifest.tables.iter().find(|t| t.name == "users").unwrap();
    assert_eq!(users.rows, 2);
}

#[tokio::test]
async fn a_restore_refuses_a_database_that_holds_data_unless_forced() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let target = file_store(&s.dir.path().join("other.db")).await;
    target.migrate().await.unwrap();
    let other = testing::app_on(target.clone());
    other.app.load_keys().await.unwrap();
    signup(&other.app, OWNER, PASSWORD).await;

    let refused = backup_error(s.backups.restore(&created.id, &target, false, &no_progress).await);
    assert!(refused.contains("--force"), "{refused}");

    s.backups.restore(&created.id, &target, true, &no_progress).await.unwrap();
    let users = whole(&target).await.0.into_iter().find(|(t, _)| t == "users").unwrap().1;
    assert_eq!(users.len(), 2, "the forced restore replaced what was there");
}

#[tokio::test]
async fn verify_restores_a_good_backup_proves_its_audit_chain_and_records_the_result() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;

    let verified = s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();

    assert!(verified.audit_events_verified > 0);
    assert_eq!(verified.audit_events_verified as i64, created.manifest.header.audit_head.seq);
    let listed = s.backups.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let sidecar = listed[0].sidecar.clone().unwrap();
    assert!(sidecar.last_verification().unwrap().ok);
    let actions: Vec<String> = audit_records(&s.t.app).await.into_iter().map(|r| r.action).collect();
    assert!(actions.contains(&"backup.created".to_owned()), "{actions:?}");
    assert!(actions.contains(&"backup.verified".to_owned()), "{actions:?}");
}

async fn audit_records(app: &App) -> Vec<portcullis_domain::AuditRecord> {
    let mut tx = app.store().begin_read().await.unwrap();
    let events = tx.audit_events_after(0, 100_000).await.unwrap();
    tx.rollback().await.unwrap();
    events.into_iter().map(|e| e.record).collect()
}

/// Verify against damage, into a fresh scratch database each time.
async fn verify_fails(s: &Scene, id: &str, n: u32) -> String {
    let scratch = file_store(&s.dir.path().join(format!("scratch-{n}.db"))).await;
    backup_error(s.backups.verify(id, &scratch, &no_progress).await)
}

#[tokio::test]
async fn a_changed_byte_is_caught_by_verify_with_or_without_the_sidecar() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let path = s.archive(&created.id);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() - 40;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let with_sidecar = verify_fails(&s, &created.id, 1).await;
    assert!(with_sidecar.contains("SHA-256") && with_sidecar.contains("was changed"), "{with_sidecar}");

    std::fs::remove_file(s.folder().join(sidecar_name(&created.id))).unwrap();
    let without = verify_fails(&s, &created.id, 2).await;
    assert!(without.contains("fails authentication"), "{without}");

    let failures =
        testing::security_events(&s.t.app, portcullis_domain::SecurityEventKind::BackupFailed).await;
    assert_eq!(failures.len(), 2, "each failed verification raised a backup_failed event");
}

#[tokio::test]
async fn a_truncated_file_is_caught_by_verify() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let path = s.archive(&created.id);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();

    let with_sidecar = verify_fails(&s, &created.id, 1).await;
    assert!(with_sidecar.contains("truncated"), "{with_sidecar}");

    std::fs::remove_file(s.folder().join(sidecar_name(&created.id))).unwrap();
    let without = verify_fails(&s, &created.id, 2).await;
    assert!(without.contains("truncated") || without.contains("fails authentication"), "{without}");
}

#[tokio::test]
async fn a_backup_that_cannot_be_made_is_audited_and_raises_backup_failed() {
    let s = scene().await;
    let mut settings = s.backups.settings().clone();
    settings.recipients.clear();
    let backups = Backups::new(s.t.app.clone(), s.backups.target().clone(), settings).unwrap();

    let why = backup_error(backups.create(&no_progress).await);

    assert!(why.contains("no backup recipient"), "{why}");
    let failed: Vec<_> =
        audit_records(&s.t.app).await.into_iter().filter(|r| r.action == "backup.failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].details.contains("create"), "{}", failed[0].details);
    let raised = testing::security_events(&s.t.app, portcullis_domain::SecurityEventKind::BackupFailed).await;
    assert_eq!(raised.len(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_caught_by_verify() {
    let mut s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let other = s.dir.path().join("other-key.txt");
    write_identity(&other, &age::x25519::Identity::generate());
    let mut settings = s.backups.settings().clone();
    settings.identity_file = Some(other);
    s.backups = Backups::new(s.t.app.clone(), s.backups.target().clone(), settings).unwrap();

    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("does not decrypt this backup"), "{why}");
}

#[tokio::test]
async fn a_swapped_table_or_a_changed_row_is_caught_by_verify() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let path = s.archive(&created.id);
    std::fs::remove_file(s.folder().join(sidecar_name(&created.id))).unwrap();
    let lines = plaintext(&path, &s.identity);
    let section = |name: &str| {
        let start = lines.iter().position(|l| l.starts_with(&format!("{{\"table\":\"{name}\""))).unwrap();
        let end = start + 1 + lines[start + 1..].iter().take_while(|l| l.starts_with('[')).count();
        start..end
    };

    // Two tables without foreign keys, their sections exchanged whole.
    let (keyring, events) = (section("keyring"), section("security_events"));
    assert!(keyring.end == events.start, "adjacent in the fixed order");
    let mut swapped: Vec<String> = lines[..keyring.start].to_vec();
    swapped.extend_from_slice(&lines[events.clone()]);
    swapped.extend_from_slice(&lines[keyring.clone()]);
    swapped.extend_from_slice(&lines[events.end..]);
    seal(&path, &s.identity, &swapped);
    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("security_events is where the manifest lists table keyring"), "{why}");

    // One row of a table changed (a user's status), everything else intact.
    let users = section("users");
    let mut changed = lines.clone();
    changed[users.start + 1] = changed[users.start + 1].replacen("\"active\"", "\"disabled\"", 1);
    assert_ne!(changed, lines, "the fixture has an active user to change");
    seal(&path, &s.identity, &changed);
    let why = verify_fails(&s, &created.id, 2).await;
    assert!(why.contains("table users: SHA-256") && why.contains("its rows were changed"), "{why}");
}

#[tokio::test]
async fn a_backup_taken_while_the_server_writes_is_consistent_and_its_audit_chain_verifies() {
    let s = scene().await;
    activity(&s.t.app).await;
    let app = s.t.app.clone();
    let writer = tokio::spawn(async move {
        for n in 0..40 {
            signup(&app, &format!("user{n}@example.com"), PASSWORD).await;
        }
    });

    let created = s.backups.create(&no_progress).await.unwrap();
    writer.await.unwrap();

    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    let verified = s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
    assert_eq!(verified.audit_events_verified as i64, created.manifest.header.audit_head.seq);
}

#[tokio::test]
async fn prune_keeps_the_newest_and_the_last_verified_backup_and_drops_what_aged_out() {
    let s = scene().await;
    activity(&s.t.app).await;
    let oldest = s.backups.create(&no_progress).await.unwrap();
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    s.backups.verify(&oldest.id, &scratch, &no_progress).await.unwrap();
    s.t.clock.advance_millis(DAY);
    let middle = s.backups.create(&no_progress).await.unwrap();
    s.t.clock.advance_millis(40 * DAY);
    let newest = s.backups.create(&no_progress).await.unwrap();

    let pruned = s.backups.prune().await.unwrap();

    assert_eq!(pruned.deleted, vec![middle.id.clone()], "aged out, not the newest, never verified");
    let left: Vec<String> = s.backups.list().await.unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(left, vec![oldest.id, newest.id]);
    assert!(!s.folder().join(sidecar_name(&middle.id)).exists(), "its sidecar went with it");
}

#[tokio::test]
async fn the_age_command_line_tool_decrypts_a_backup() {
    if std::process::Command::new("age").arg("--version").output().is_err() {
        let _ =
            std::io::stderr().write_all(b"backup: the age tool is not installed; skipped its interop test\n");
        return;
    }
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();

    let output = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(s.dir.path().join("backup-key.txt"))
        .arg(s.archive(&created.id))
        .output()
        .unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut text = String::new();
    zstd::Decoder::new(&output.stdout[..]).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.starts_with("{\"header\":{"), "{}", &text[..80.min(text.len())]);
    assert!(text.lines().last().unwrap().starts_with("{\"manifest\":"));
}

/// A moto S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `moto_server` (PORTCULLIS_TEST_MOTO_SERVER, or on the PATH) and creates `bucket`; `None`
/// when it is not installed (CI installs it: scripts/test-python).
async fn moto(bucket: &str) -> Option<Moto> {
    let program = std::env::var("PORTCULLIS_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = match std::process::Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            assert!(
                std::env::var_os("PORTCULLIS_REQUIRE_MOTO").is_none(),
                "PORTCULLIS_REQUIRE_MOTO: {program} is missing"
            );
            let _ =
                std::io::stderr().write_all(b"backup: moto_server is not installed; skipped the S3 test\n");
            return None;
        }
    };
    let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    // moto starts in a second or two; creating the bucket is the readiness probe. No credentials:
    // moto does not check them.
    for _ in 0..100 {
        if let Ok(response) = client.put(format!("{}/{bucket}", moto.endpoint)).send().await
            && response.status().is_success()
        {
            return Some(moto);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto_server did not come up on {}", moto.endpoint);
}

#[tokio::test]
async fn backups_round_trip_through_an_s3_compatible_store() {
    let Some(moto) = moto("backups").await else { return };
    let s = scene().await;
    activity(&s.t.app).await;
    let target = crate::S3Target::new(crate::S3Settings {
        bucket: "backups".to_owned(),
        prefix: "portcullis/".to_owned(),
        endpoint: Some(moto.endpoint.clone()),
        region: "us-east-1".to_owned(),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some(secrecy::SecretString::from("test".to_owned())),
    })
    .unwrap();
    let backups = Backups::new(s.t.app.clone(), Arc::new(target), s.backups.settings().clone()).unwrap();

    let created = backups.create(&no_progress).await.unwrap();
    let listed = backups.list().await.unwrap();
    assert_eq!(listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), vec![created.id.as_str()]);
    assert_eq!(listed[0].size, created.size);
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    let verified = backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
    assert_eq!(verified.manifest, created.manifest);
    assert!(backups.list().await.unwrap()[0].sidecar.as_ref().unwrap().last_verification().unwrap().ok);

    let target = file_store(&s.dir.path().join("restored.db")).await;
    backups.restore(&created.id, &target, false, &no_progress).await.unwrap();
    let users = whole(&target).await.0.into_iter().find(|(t, _)| t == "users").unwrap().1;
    assert_eq!(users.len(), 2);
}

#[tokio::test]
async fn a_passphrase_backup_verifies_and_restores_and_a_wrong_passphrase_is_caught() {
    let mut s = scene().await;
    activity(&s.t.app).await;
    let mut settings = s.backups.settings().clone();
    settings.recipients.clear();
    settings.identity_file = None;
    settings.passphrase = Some(secret("correct horse battery staple, backups"));
    s.backups = Backups::new(s.t.app.clone(), s.backups.target().clone(), settings.clone()).unwrap();
    let created = s.backups.create(&no_progress).await.unwrap();

    // An age file with one scrypt stanza: what `age -d` asks a passphrase for.
    let bytes = std::fs::read(s.archive(&created.id)).unwrap();
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    assert!(head.starts_with("age-encryption.org/v1\n-> scrypt "), "{head}");
    assert!(!head.contains("X25519"), "{head}");
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    let verified = s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
    assert_eq!(verified.audit_events_verified as i64, created.manifest.header.audit_head.seq);
    let target = file_store(&s.dir.path().join("restored.db")).await;
    s.backups.restore(&created.id, &target, false, &no_progress).await.unwrap();

    // Recipients and a passphrase together are refused (age takes one or the other).
    let mut both = settings.clone();
    both.recipients = vec![s.identity.to_public().to_string()];
    assert!(matches!(
        Backups::new(s.t.app.clone(), s.backups.target().clone(), both),
        Err(AppError::Backup(why)) if why.contains("not both")
    ));
    settings.passphrase = Some(secret("a different passphrase entirely"));
    s.backups = Backups::new(s.t.app.clone(), s.backups.target().clone(), settings).unwrap();
    let why = verify_fails(&s, &created.id, 1).await;
    assert_eq!(why, format!("backup {}: the passphrase does not decrypt this backup", created.id));
}
