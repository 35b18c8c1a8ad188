//! Backups as an operator relies on them: a backup restores to the same content, proves itself by
//! being restored (checksums, counts, the audit chain), is consistent though taken while the server
//! writes, and every kind of damage (a changed byte, a cut file, the wrong key, a swapped table) is
//! caught by verify with a reason that says what. And as an attacker who can write to the backup
//! target would try it: an archive forged to the public recipient, one of another installation, one
//! renamed, one cut down, one crafted to exhaust memory, a target that goes away.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use portcullis_store::{Cell, DumpInfo, DumpSink, StoreError, TableHeader};

use super::*;
use crate::backup::archive::{MAX_LINE, manifest_mac};
use crate::backup::{BackupTarget, Manifest, StoredObject, archive_name, sidecar_name};
use crate::{AppSettings, BackupSettings, Backups, FolderTarget};

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
    scene_with(testing::settings()).await
}

/// A scene whose app runs with `settings` (its KEKs, in the tests that change them).
async fn scene_with(settings: AppSettings) -> Scene {
    scene_at(settings, None).await
}

/// A scene whose database is migrated to `schema` (every migration when `None`).
async fn scene_at(settings: AppSettings, schema: Option<i64>) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir.path().join("portcullis.db")).await;
    match schema {
        Some(version) => drop(store.migrate_to(version).await.unwrap()),
        None => drop(store.migrate().await.unwrap()),
    }
    let t = testing::app_with(store, settings);
    t.app.load_keys().await.unwrap();
    #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
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

/// The drill verifies the newest backup, which after an upgrade was taken under the previous
/// schema: verify loads it at its own schema version and migrates the scratch database after.
#[tokio::test]
async fn a_backup_taken_before_an_upgrade_still_verifies_and_restores() {
    let latest = {
        let dir = tempfile::tempdir().unwrap();
        let probe = file_store(&dir.path().join("probe.db")).await;
        let status = probe.migration_status().await.unwrap();
        status.pending.iter().chain(&status.applied).copied().max().unwrap()
    };
    let s = scene_at(testing::settings(), Some(latest - 1)).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    assert_eq!(created.manifest.header.schema_version, latest - 1);

    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
    let target = file_store(&s.dir.path().join("restored.db")).await;
    s.backups.restore(&created.id, &target, false, &no_progress).await.unwrap();
    let status = target.migration_status().await.unwrap();
    assert!(status.pending.is_empty() && status.applied.contains(&latest), "{status:?}");
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
    #[expect(deprecated, reason = "X25519 recipients, as backups use (ADR 0012)")]
    let identity = age::x25519::Identity::generate();
    write_identity(&other, &identity);
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

    // Two tables without foreign keys, their sections exchanged whole: refused where the second
    // comes, against the fixed table order.
    let (keyring, events) = (section("keyring"), section("security_events"));
    assert!(keyring.end == events.start, "adjacent in the fixed order");
    let mut swapped: Vec<String> = lines[..keyring.start].to_vec();
    swapped.extend_from_slice(&lines[events.clone()]);
    swapped.extend_from_slice(&lines[keyring.clone()]);
    swapped.extend_from_slice(&lines[events.end..]);
    seal(&path, &s.identity, &swapped);
    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("table keyring comes after table security_events"), "{why}");

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

    // Objects under a nested prefix are not backups of this one, whatever their file names.
    let nested = crate::S3Target::new(crate::S3Settings {
        bucket: "backups".to_owned(),
        prefix: "portcullis/old".to_owned(),
        endpoint: Some(moto.endpoint.clone()),
        region: "us-east-1".to_owned(),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some(secrecy::SecretString::from("test".to_owned())),
    })
    .unwrap();
    nested.put_bytes(&archive_name(&created.id), b"not this one".to_vec()).await.unwrap();
    nested.put_bytes("portcullis-20990101T000000Z-00000000.age", b"nor this".to_vec()).await.unwrap();
    let listed = backups.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|b| (b.id.as_str(), b.size)).collect::<Vec<_>>(),
        vec![(created.id.as_str(), created.size)]
    );
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

/// A passphrase archive asks for its scrypt work factor in clear; one rewritten to ask 2^23 (8 GiB,
/// a quarter of a minute before anything is authenticated) is refused without doing the work.
#[tokio::test]
async fn a_passphrase_archive_asking_for_excessive_scrypt_work_is_refused_before_the_work() {
    let mut s = scene().await;
    let mut settings = s.backups.settings().clone();
    settings.recipients.clear();
    settings.identity_file = None;
    settings.passphrase = Some(secret("correct horse battery staple, backups"));
    s.backups = Backups::new(s.t.app.clone(), s.backups.target().clone(), settings).unwrap();
    let created = s.backups.create(&no_progress).await.unwrap();
    let path = s.archive(&created.id);
    let mut bytes = std::fs::read(&path).unwrap();
    let stanza = bytes.windows(10).position(|w| w == b"-> scrypt ").unwrap();
    let end = stanza + bytes[stanza..].iter().position(|b| *b == b'\n').unwrap();
    assert_eq!(&bytes[end - 3..end], b" 18", "written at the fixed work factor");
    bytes[end - 2..end].copy_from_slice(b"23");
    std::fs::write(&path, bytes).unwrap();
    // The sidecar's checksum would catch the change first; whoever rewrote the file removes it.
    std::fs::remove_file(s.folder().join(sidecar_name(&created.id))).unwrap();

    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("xcessive work"), "{why}");
}

/// age reads its header without a bound; an archive must show the header's end early.
#[tokio::test]
async fn an_archive_whose_age_header_does_not_end_early_is_refused() {
    let s = scene().await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let mut endless = b"age-encryption.org/v1\n-> X25519 ".to_vec();
    endless.extend(std::iter::repeat_n(b'A', 200 << 10));
    std::fs::write(s.archive(&created.id), endless).unwrap();
    std::fs::remove_file(s.folder().join(sidecar_name(&created.id))).unwrap();

    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("no age header within its first 64 KiB"), "{why}");
}

/// Whoever can write the target can name a file for any date and write any sidecar: the drill never
/// picks a backup dated in the future, and prune takes ages from the ids, so a sidecar claiming a
/// backup is old, or a flood of future-dated files, makes prune delete nothing it should keep.
#[tokio::test]
async fn future_dated_files_and_rewritten_sidecars_neither_steer_the_drill_nor_make_prune_delete() {
    let s = scene().await;
    let genuine = s.backups.create(&no_progress).await.unwrap();
    for n in 0..3 {
        let fake = format!("portcullis-99991231T23595{n}Z-ffffffff");
        std::fs::copy(s.archive(&genuine.id), s.archive(&fake)).unwrap();
        let mut sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.folder().join(sidecar_name(&genuine.id))).unwrap())
                .unwrap();
        sidecar["id"] = serde_json::json!(fake);
        std::fs::write(s.folder().join(sidecar_name(&fake)), serde_json::to_vec(&sidecar).unwrap()).unwrap();
    }
    // The genuine sidecar now says the backup is from 1970.
    let sidecar_path = s.folder().join(sidecar_name(&genuine.id));
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar_path).unwrap()).unwrap();
    sidecar["created_at_ms"] = serde_json::json!(0);
    std::fs::write(&sidecar_path, serde_json::to_vec(&sidecar).unwrap()).unwrap();

    assert_eq!(s.backups.newest().await.unwrap(), Some(genuine.id.clone()));
    let pruned = s.backups.prune().await.unwrap();
    assert!(pruned.deleted.is_empty(), "{:?}", pruned.deleted);
    assert!(s.archive(&genuine.id).exists());
}

/// A FIFO (or a symbolic link) planted under a backup's name would block `open` forever, and with
/// it list, prune and the scheduler: the folder target opens without blocking or following links,
/// and reads regular files only.
#[tokio::test]
async fn a_fifo_or_a_link_planted_under_a_backups_name_is_refused_without_blocking() {
    let s = scene().await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let sidecar = s.folder().join(sidecar_name(&created.id));
    std::fs::remove_file(&sidecar).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &sidecar,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let listed = s.backups.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].sidecar.is_none(), "the FIFO is not read as a sidecar");
    assert!(s.backups.prune().await.is_ok());

    let archive = s.archive(&created.id);
    let moved = s.dir.path().join("elsewhere.age");
    std::fs::rename(&archive, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &archive).unwrap();
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    let why = backup_error(s.backups.verify(&created.id, &scratch, &no_progress).await);
    assert!(why.contains("not a regular file"), "a symbolic link is not followed: {why}");
}

// ---------------------------------------------------------------------------------------------
// An attacker who can write to the backup target (ADR 0012, "authenticated manifests").
// ---------------------------------------------------------------------------------------------

/// Settings whose only KEK is `id` with every key byte `byte`.
fn with_kek(entries: &[(&str, u8)]) -> AppSettings {
    let mut settings = testing::settings();
    settings.keks = crate::KekSet::parse(&testing::kek_entries(entries)).unwrap();
    settings
}

/// Another installation whose backups are encrypted to `victim`'s public recipient and written into
/// `victim`'s folder: what anyone holding the public key and write access to the target can make.
/// Returns the attacker's scene (to keep its database) and what it made.
async fn forge(victim: &Scene, keks: &[(&str, u8)]) -> (Scene, crate::Created) {
    let attacker = scene_with(with_kek(keks)).await;
    activity(&attacker.t.app).await;
    let mut settings = victim.backups.settings().clone();
    settings.staging_dir = attacker.dir.path().join("staging");
    let backups = Backups::new(attacker.t.app.clone(), victim.backups.target().clone(), settings).unwrap();
    let created = backups.create(&no_progress).await.unwrap();
    (attacker, created)
}

/// The manifest of archive lines, and the lines with the manifest replaced.
fn manifest_of(lines: &[String]) -> Manifest {
    let mut value: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    serde_json::from_value(value["manifest"].take()).unwrap()
}

fn with_manifest(lines: &mut [String], manifest: &Manifest) {
    *lines.last_mut().unwrap() = serde_json::json!({ "manifest": manifest }).to_string();
}

/// Recomputes every table's row count and SHA-256 in the manifest from the lines, as a forger does
/// to make a changed archive self-consistent (the MAC is left as it was).
fn recount(lines: &mut [String]) {
    use sha2::Digest;
    let mut manifest = manifest_of(lines);
    let mut tables: Vec<crate::backup::archive::TableEntry> = Vec::new();
    let mut hasher: Option<sha2::Sha256> = None;
    let finish = |tables: &mut Vec<crate::backup::archive::TableEntry>, hasher: Option<sha2::Sha256>| {
        if let (Some(entry), Some(h)) = (tables.last_mut(), hasher) {
            entry.sha256 = crate::backup::hex(&h.finalize());
        }
    };
    for line in &lines[1..lines.len() - 1] {
        if line.starts_with('[') {
            let entry = tables.last_mut().unwrap();
            entry.rows += 1;
            let h = hasher.as_mut().unwrap();
            h.update(line.as_bytes());
            h.update(b"\n");
        } else {
            finish(&mut tables, hasher.take());
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            tables.push(crate::backup::archive::TableEntry {
                name: value["table"].as_str().unwrap().to_owned(),
                columns: serde_json::from_value(value["columns"].clone()).unwrap(),
                rows: 0,
                sha256: String::new(),
            });
            hasher = Some(sha2::Sha256::new());
        }
    }
    finish(&mut tables, hasher);
    manifest.tables = tables;
    with_manifest(lines, &manifest);
}

/// Signs the manifest again with the installation's own key: what only a holder of the KEK (or a
/// defect of our writer) could do; the tests of checks behind the MAC use it.
fn resign(lines: &mut [String], keks: &crate::KekSet) {
    let mut manifest = manifest_of(lines);
    let key = keks.backup_mac_key(&manifest.header.mac_kek_id).unwrap();
    manifest.mac = Some(manifest_mac(&key, lines[0].as_bytes(), &manifest).unwrap());
    with_manifest(lines, &manifest);
}

/// The archive's lines, its sidecar removed (so what is checked is the archive, not the sidecar).
fn open_up(s: &Scene, id: &str) -> Vec<String> {
    let _ = std::fs::remove_file(s.folder().join(sidecar_name(id)));
    plaintext(&s.archive(id), &s.identity)
}

fn assert_untouched(status: portcullis_store::MigrationStatus) {
    assert!(status.applied.is_empty(), "the target database was not even migrated: {:?}", status.applied);
}

#[tokio::test]
async fn a_forged_archive_encrypted_to_the_public_recipient_is_refused_by_verify_and_restore_which_leaves_the_target_empty()
 {
    let s = scene().await;
    activity(&s.t.app).await;
    // The attacker's own installation, with a KEK under the same (guessable) id as the victim's.
    let (_attacker, forged) = forge(&s, &[("test", 99)]).await;
    assert!(s.backups.list().await.unwrap().iter().any(|b| b.id == forged.id), "it looks like ours");

    let why = verify_fails(&s, &forged.id, 1).await;
    assert!(why.contains("MAC does not verify under KEK `test`"), "{why}");
    assert!(why.contains("not made by this installation"), "{why}");

    let target = file_store(&s.dir.path().join("restored.db")).await;
    let refused = backup_error(s.backups.restore(&forged.id, &target, false, &no_progress).await);
    assert!(refused.contains("MAC does not verify"), "{refused}");
    assert_untouched(target.migration_status().await.unwrap());
}

#[tokio::test]
async fn a_changed_row_with_recomputed_checksums_or_a_changed_mac_is_refused() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let lines = open_up(&s, &created.id);

    // A user's status changed, and every count and checksum made to agree with it.
    let mut changed = lines.clone();
    let user = changed.iter().position(|l| l.starts_with('[') && l.contains("\"active\"")).unwrap();
    changed[user] = changed[user].replacen("\"active\"", "\"disabled\"", 1);
    recount(&mut changed);
    seal(&s.archive(&created.id), &s.identity, &changed);
    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("MAC does not verify"), "{why}");
    let target = file_store(&s.dir.path().join("restored.db")).await;
    backup_error(s.backups.restore(&created.id, &target, false, &no_progress).await);
    assert_untouched(target.migration_status().await.unwrap());

    // The genuine archive with one digit of its MAC changed.
    let mut manifest = manifest_of(&lines);
    let mac = manifest.mac.clone().unwrap();
    let flipped = if mac.starts_with('0') { "1" } else { "0" };
    manifest.mac = Some(format!("{flipped}{}", &mac[1..]));
    let mut tampered = lines.clone();
    with_manifest(&mut tampered, &manifest);
    seal(&s.archive(&created.id), &s.identity, &tampered);
    let why = verify_fails(&s, &created.id, 2).await;
    assert!(why.contains("MAC does not verify"), "{why}");

    // And the genuine lines, sealed again, still verify: the MAC is over content, not the file.
    seal(&s.archive(&created.id), &s.identity, &lines);
    let scratch = file_store(&s.dir.path().join("scratch-3.db")).await;
    s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
}

#[tokio::test]
async fn a_backup_of_another_installation_is_refused_naming_the_kek_it_needs() {
    let s = scene().await;
    activity(&s.t.app).await;
    let (_attacker, theirs) = forge(&s, &[("theirs", 9)]).await;

    let why = verify_fails(&s, &theirs.id, 1).await;

    assert!(why.contains("authenticated under KEK `theirs`, which keys.kek does not list"), "{why}");
    let target = file_store(&s.dir.path().join("restored.db")).await;
    let refused = backup_error(s.backups.restore(&theirs.id, &target, false, &no_progress).await);
    assert!(refused.contains("KEK `theirs`"), "{refused}");
    assert_untouched(target.migration_status().await.unwrap());
}

#[tokio::test]
async fn an_old_archive_put_under_a_newer_backups_name_is_refused() {
    let s = scene().await;
    activity(&s.t.app).await;
    let old = s.backups.create(&no_progress).await.unwrap();
    s.t.clock.advance_millis(DAY);
    signup(&s.t.app, OWNER, PASSWORD).await;
    let new = s.backups.create(&no_progress).await.unwrap();
    // The old archive and a sidecar made to match it, under the new backup's name.
    std::fs::copy(s.archive(&old.id), s.archive(&new.id)).unwrap();
    let mut sidecar: crate::Sidecar =
        serde_json::from_slice(&std::fs::read(s.folder().join(sidecar_name(&old.id))).unwrap()).unwrap();
    sidecar.id = new.id.clone();
    std::fs::write(s.folder().join(sidecar_name(&new.id)), serde_json::to_vec(&sidecar).unwrap()).unwrap();

    let why = verify_fails(&s, &new.id, 1).await;

    assert!(
        why.contains(&format!("the archive stored as backup {} is backup \"{}\"", new.id, old.id)),
        "{why}"
    );
    let target = file_store(&s.dir.path().join("restored.db")).await;
    backup_error(s.backups.restore(&new.id, &target, false, &no_progress).await);
    assert_untouched(target.migration_status().await.unwrap());
}

#[tokio::test]
async fn an_archive_missing_a_table_or_holding_an_unknown_one_is_refused_though_its_manifest_is_signed() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let lines = open_up(&s, &created.id);
    let keks = testing::test_keks();
    let table_line =
        |name: &str| lines.iter().position(|l| l.starts_with(&format!("{{\"table\":\"{name}\""))).unwrap();

    // ip_rules left out, and the manifest signed to match.
    let mut missing = lines.clone();
    let at = table_line("ip_rules");
    let rows = missing[at + 1..].iter().take_while(|l| l.starts_with('[')).count();
    missing.drain(at..=at + rows);
    let mut manifest = manifest_of(&missing);
    manifest.tables.retain(|t| t.name != "ip_rules");
    with_manifest(&mut missing, &manifest);
    resign(&mut missing, &keks);
    seal(&s.archive(&created.id), &s.identity, &missing);
    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("lacks table ip_rules, which its schema"), "{why}");
    let target = file_store(&s.dir.path().join("restored.db")).await;
    let refused = backup_error(s.backups.restore(&created.id, &target, false, &no_progress).await);
    assert!(refused.contains("lacks table ip_rules"), "{refused}");
    let held = whole(&target).await.0;
    assert!(held.iter().all(|(t, rows)| rows.is_empty() || t == "audit_head"), "nothing was committed");

    // A table this version does not have.
    let mut unknown = lines.clone();
    let at = table_line("ip_rules");
    unknown[at] = unknown[at].replacen("\"ip_rules\"", "\"ip_rulez\"", 1);
    recount(&mut unknown);
    resign(&mut unknown, &keks);
    seal(&s.archive(&created.id), &s.identity, &unknown);
    let why = verify_fails(&s, &created.id, 2).await;
    assert!(why.contains("table \"ip_rulez\" is not a table of this version's schema"), "{why}");
}

#[tokio::test]
async fn a_version_1_archive_is_refused_as_unauthenticated() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let mut lines = open_up(&s, &created.id);
    // What format 1 wrote: no backup id, no KEK id, no MAC.
    for (n, key) in [(0, "header"), (lines.len() - 1, "manifest")] {
        let mut value: serde_json::Value = serde_json::from_str(&lines[n]).unwrap();
        let body = value[key].as_object_mut().unwrap();
        body.insert("format_version".to_owned(), 1.into());
        for field in ["backup_id", "mac_kek_id", "mac"] {
            body.remove(field);
        }
        lines[n] = value.to_string();
    }
    seal(&s.archive(&created.id), &s.identity, &lines);

    let why = verify_fails(&s, &created.id, 1).await;

    assert!(why.contains("backup format version 1 is unauthenticated"), "{why}");
    assert!(why.contains("restore it with the release that wrote it"), "{why}");
    let target = file_store(&s.dir.path().join("restored.db")).await;
    backup_error(s.backups.restore(&created.id, &target, false, &no_progress).await);
    assert_untouched(target.migration_status().await.unwrap());
}

#[tokio::test]
async fn a_line_longer_than_the_cap_is_refused_before_it_is_held_whole() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let mut lines = open_up(&s, &created.id);
    let users = lines.iter().position(|l| l.starts_with("{\"table\":\"users\"")).unwrap();
    lines.insert(users + 1, format!("[\"{}\"]", "x".repeat(MAX_LINE)));
    seal(&s.archive(&created.id), &s.identity, &lines);

    let why = verify_fails(&s, &created.id, 1).await;

    assert!(why.contains(&format!("is longer than {MAX_LINE} bytes")), "{why}");
}

/// A decompression bomb (a few hundred KiB that unpack to gigabytes) costs time in proportion to
/// what it unpacks to: past 64 MiB, an archive may unpack to at most 256 times its size.
#[tokio::test]
async fn a_decompression_bomb_is_refused_once_it_unpacks_past_the_ratio() {
    let s = scene().await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let mut lines = open_up(&s, &created.id);
    // 100 rows of 1 MiB, alike but for their id, that fit their table: zstd packs them into a few
    // hundred KiB. (A real bomb would unpack to terabytes; past 64 MiB, the ratio is what counts.)
    let at = lines.iter().position(|l| l.starts_with("{\"table\":\"ip_rules\"")).unwrap();
    let columns: Vec<String> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&lines[at]).unwrap()["columns"].clone(),
    )
    .unwrap();
    let note = "n".repeat(1 << 20);
    for n in 0..100 {
        let row: Vec<serde_json::Value> = columns
            .iter()
            .map(|c| match c.as_str() {
                "id" => format!("rule-{n}").into(),
                "note" => note.clone().into(),
                "created_at" => 0.into(),
                _ => "x".into(),
            })
            .collect();
        lines.insert(at + 1, serde_json::to_string(&row).unwrap());
    }
    seal(&s.archive(&created.id), &s.identity, &lines);
    let size = std::fs::metadata(s.archive(&created.id)).unwrap().len();
    assert!(size < (64 << 20) / 256, "the bomb is small: {size} bytes");

    let why = verify_fails(&s, &created.id, 1).await;

    assert!(why.contains("refused as a decompression bomb"), "{why}");
}

#[tokio::test]
async fn a_crafted_archive_of_many_large_rows_is_read_within_a_memory_bound() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let mut lines = open_up(&s, &created.id);
    // Rows of 3 MiB each (under the line cap, so each one is read), 48 MiB in all, into a table
    // whose columns take any text: they load, so the database side is as slow as it gets.
    let at = lines.iter().position(|l| l.starts_with("{\"table\":\"ip_rules\"")).unwrap();
    let columns: Vec<String> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&lines[at]).unwrap()["columns"].clone(),
    )
    .unwrap();
    let note = "n".repeat(3 << 20);
    let rows = 16;
    for n in 0..rows {
        let row: Vec<serde_json::Value> = columns
            .iter()
            .map(|c| match c.as_str() {
                "id" => format!("rule-{n}").into(),
                "network" => "10.0.0.0/8".into(),
                "action" => "deny".into(),
                "scope" => "global".into(),
                "source" => "admin".into(),
                "note" => note.clone().into(),
                "created_at" => 0.into(),
                _ => serde_json::Value::Null,
            })
            .collect();
        lines.insert(at + 1, serde_json::to_string(&row).unwrap());
    }
    recount(&mut lines);
    seal(&s.archive(&created.id), &s.identity, &lines);

    // Crafted by someone without the KEK: read to its end (a row at a time), refused, and not a row
    // of it was held for the database.
    let why = verify_fails(&s, &created.id, 1).await;
    assert!(why.contains("MAC does not verify"), "{why}");
    assert_eq!(s.backups.rows_buffered(), (0, 0));

    // Signed (as only the installation could), so that it loads: every row goes to the database
    // through the bounded batches.
    resign(&mut lines, &testing::test_keks());
    seal(&s.archive(&created.id), &s.identity, &lines);
    let scratch = file_store(&s.dir.path().join("scratch-2.db")).await;
    s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
    let (peak, total) = s.backups.rows_buffered();
    assert!(total >= (rows as u64) * (3 << 20), "every row went through: {total}");
    let batch = crate::backup::BATCH_BYTES.max(MAX_LINE) + (64 << 10);
    let bound = (crate::backup::READ_CHANNEL + 2) * batch;
    assert!(peak >= 3 << 20 && peak <= bound, "at most {bound} bytes of rows held at once, not {peak}");
    assert!(bound <= 32 << 20, "the bound is tens of MiB: {bound}");
}

#[tokio::test]
async fn a_kek_rotation_keeps_old_backups_verifiable_while_the_old_kek_is_configured() {
    let s = scene_with(with_kek(&[("old", 1)])).await;
    activity(&s.t.app).await;
    let before = s.backups.create(&no_progress).await.unwrap();
    assert_eq!(before.manifest.header.mac_kek_id, "old");
    let store = file_store(&s.dir.path().join("portcullis.db")).await;
    let rotated = |keks: &[(&str, u8)]| {
        let t = testing::app_with(store.clone(), with_kek(keks));
        Backups::new(t.app.clone(), s.backups.target().clone(), s.backups.settings().clone()).map(|b| (t, b))
    };

    let (both, backups) = rotated(&[("new", 2), ("old", 1)]).unwrap();
    both.app.load_keys().await.unwrap();
    both.app.rotate_kek().await.unwrap();
    let scratch = file_store(&s.dir.path().join("scratch-1.db")).await;
    backups.verify(&before.id, &scratch, &no_progress).await.unwrap();
    let after = backups.create(&no_progress).await.unwrap();
    assert_eq!(after.manifest.header.mac_kek_id, "new", "new backups are signed under the active KEK");

    let (only_new, backups) = rotated(&[("new", 2)]).unwrap();
    only_new.app.load_keys().await.unwrap();
    let scratch = file_store(&s.dir.path().join("scratch-2.db")).await;
    backups.verify(&after.id, &scratch, &no_progress).await.unwrap();
    let scratch = file_store(&s.dir.path().join("scratch-3.db")).await;
    let why = backup_error(backups.verify(&before.id, &scratch, &no_progress).await);
    assert!(why.contains("KEK `old`, which keys.kek does not list"), "{why}");
}

/// A folder target whose reads and listings fail while `down` is set, as a target in an outage.
#[derive(Debug)]
struct Flaky {
    folder: FolderTarget,
    down: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("connection refused".to_owned());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl BackupTarget for Flaky {
    fn describe(&self) -> String {
        self.folder.describe()
    }
    async fn list(&self) -> Result<Vec<StoredObject>, String> {
        self.check()?;
        self.folder.list().await
    }
    async fn put(&self, name: &str, from: &Path) -> Result<(), String> {
        self.folder.put(name, from).await
    }
    async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.folder.put_bytes(name, bytes).await
    }
    async fn get(&self, name: &str, to: &Path) -> Result<(), String> {
        self.check()?;
        self.folder.get(name, to).await
    }
    async fn get_bytes(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        self.folder.get_bytes(name, max).await
    }
    async fn delete(&self, name: &str) -> Result<(), String> {
        self.folder.delete(name).await
    }
}

#[tokio::test]
async fn a_target_outage_during_verify_is_audited_as_an_outage_and_not_as_a_failed_verification() {
    let s = scene().await;
    activity(&s.t.app).await;
    let flaky = Arc::new(Flaky { folder: FolderTarget::new(s.folder()), down: false.into() });
    let backups = Backups::new(s.t.app.clone(), flaky.clone(), s.backups.settings().clone()).unwrap();
    let created = backups.create(&no_progress).await.unwrap();
    flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);

    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    let why = backup_error(backups.verify(&created.id, &scratch, &no_progress).await);

    assert!(
        why.starts_with("the backup target is unavailable: ") && why.contains("connection refused"),
        "{why}"
    );
    let failed: Vec<_> =
        audit_records(&s.t.app).await.into_iter().filter(|r| r.action == "backup.failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].details.contains("\"kind\":\"target_unavailable\""), "{}", failed[0].details);
    let raised = testing::security_events(&s.t.app, portcullis_domain::SecurityEventKind::BackupFailed).await;
    assert_eq!(raised.len(), 1, "an outage still alerts: no backup can be proven while it lasts");
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let sidecar = backups.list().await.unwrap()[0].sidecar.clone().unwrap();
    assert!(sidecar.verifications.is_empty(), "the backup was not found bad: {sidecar:?}");

    flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let listed = backup_error(backups.list().await);
    assert!(listed.starts_with("the backup target is unavailable: "), "{listed}");
}

#[tokio::test]
async fn an_oversized_sidecar_is_read_only_up_to_its_bound_and_ignored() {
    let s = scene().await;
    activity(&s.t.app).await;
    let created = s.backups.create(&no_progress).await.unwrap();
    let sidecar = s.folder().join(sidecar_name(&created.id));
    let mut big = std::fs::read(&sidecar).unwrap();
    big.resize(3 << 20, b' ');
    std::fs::write(&sidecar, &big).unwrap();

    let read = FolderTarget::new(s.folder()).get_bytes(&sidecar_name(&created.id), 1 << 20).await.unwrap();
    assert_eq!(read.unwrap().len(), (1 << 20) + 1, "one byte past the bound, no more");
    let listed = s.backups.list().await.unwrap();
    assert!(listed[0].sidecar.is_none(), "a sidecar over the bound is as good as none");
    let scratch = file_store(&s.dir.path().join("scratch.db")).await;
    s.backups.verify(&created.id, &scratch, &no_progress).await.unwrap();
}

#[tokio::test]
async fn the_folder_target_writes_through_a_fresh_private_file_never_a_planted_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = FolderTarget::new(dir.path().join("backups"));
    folder.put_bytes("first.json", b"{}".to_vec()).await.unwrap();
    // What a writer of the folder could plant under the name the temporary file once had.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"untouched").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.path().join("backups/.sidecar.json.partial")).unwrap();

    folder.put_bytes("sidecar.json", b"{\"a\":1}".to_vec()).await.unwrap();

    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
    let written = dir.path().join("backups/sidecar.json");
    assert_eq!(std::fs::read(&written).unwrap(), b"{\"a\":1}");
    assert_eq!(std::fs::symlink_metadata(&written).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".partial")).count(),
        1,
        "only the planted link: {names:?}"
    );
}
