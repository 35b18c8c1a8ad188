//! Encrypted, verified backups (issue 9; docs/decisions/0012-backups.md): `create` streams one
//! snapshot of the database into an age-encrypted archive and stores it in a target; `verify`
//! restores it into a scratch database and proves it (checksums, row counts, the audit chain);
//! `restore` loads it into any empty database of either engine; `prune` applies retention.
//!
//! The whole path is streaming: the store hands rows to a bounded channel, a blocking thread
//! encodes, compresses and encrypts them into a file, and the reverse on the way back, so memory
//! stays flat whatever the size of a table, and bounded whatever a crafted archive holds.
//!
//! An archive's manifest is authenticated under the installation's KEK (`archive.rs`): verify and
//! restore refuse an archive this installation did not make before anything of it is kept.

pub(crate) mod archive;
mod s3;
mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use portcullis_domain::Timestamp;
use portcullis_store::{Cell, DumpInfo, DumpSink, Loader, Store, StoreError, StoreTx, TableHeader};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use archive::{
    ArchiveReader, ArchiveWriter, ChainPoint, CheckpointInfo, FORMAT, FORMAT_VERSION, Header, Item, Manifest,
    hex, parse_recipients, read_identities,
};
pub use s3::{S3Settings, S3Target};
pub use target::{BackupTarget, FolderTarget, StoredObject};

use crate::audit::AuditEntry;
use crate::{App, AppError};

/// Rows sent between the database side and the file side at a time, at most...
const BATCH: usize = 256;
/// ...and at most this many bytes of them (as decoded, [`archive::row_bytes`]), unless one row alone
/// is larger (it is then a batch of its own, at most [`archive::MAX_LINE`] and its cells).
pub(crate) const BATCH_BYTES: usize = 4 << 20;
/// Batches in flight from the database to the file (`create`).
const CHANNEL: usize = 8;
/// Batches in flight from the file to the database (verify, restore): with the one being filled and
/// the one being inserted, what a crafted archive can make a reader hold in rows is at most
/// `(READ_CHANNEL + 2) × (BATCH_BYTES or one row)`, about 24 MiB (ASVS V5.2.3).
pub(crate) const READ_CHANNEL: usize = 4;
/// The most a sidecar may be (its verification history is some hundred bytes a verification).
const MAX_SIDECAR: usize = 1 << 20;
/// What an audited `backup.failed` was: the target could not be reached (says nothing of a backup)...
const KIND_TARGET_UNAVAILABLE: &str = "target_unavailable";
/// ...or a backup was read and found defective.
const KIND_VERIFICATION_FAILED: &str = "verification_failed";
const DAY_MILLIS: i64 = 86_400_000;
const ARCHIVE_SUFFIX: &str = ".age";
const SIDECAR_SUFFIX: &str = ".json";

/// How backups are made and kept, already validated by the configuration loader.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// `age1…` X25519 public keys; every archive is encrypted to all of them.
    pub recipients: Vec<String>,
    /// The age identity file that decrypts for `verify`, `restore` and the drill. A secret: its path
    /// may be shown, its content never.
    pub identity_file: Option<PathBuf>,
    /// Instead of recipients, a passphrase (age's scrypt recipient, which must be the only one); it
    /// also decrypts, so `verify`, `restore` and the drill need no identity file.
    pub passphrase: Option<secrecy::SecretString>,
    /// Backups older than this are pruned (0: never)...
    pub retention_days: u32,
    /// ...but always the newest this many are kept, and the newest verified-good one.
    pub keep_min: u32,
    /// A local folder for archives on their way to or from the target (and scratch databases).
    pub staging_dir: PathBuf,
}

/// What a verification found, kept beside the archive in its sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub at_ms: i64,
    pub ok: bool,
    /// The defect, when not ok.
    pub reason: Option<String>,
}

/// The clear-text record kept next to each archive: nothing secret, nothing personal; enough to list
/// and prune without the key, and the history of its verifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub id: String,
    pub created_at_ms: i64,
    pub app_version: String,
    pub schema_version: i64,
    pub backend: String,
    /// Size and SHA-256 of the encrypted file as stored.
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub verifications: Vec<Verification>,
}

impl Sidecar {
    /// The outcome of the latest verification, if any.
    pub fn last_verification(&self) -> Option<&Verification> {
        self.verifications.last()
    }
}

/// One backup as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub size: u64,
    /// Absent for an archive whose sidecar is missing (copied in by hand, or its write failed).
    pub sidecar: Option<Sidecar>,
}

/// What `create` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub size: u64,
    pub manifest: Manifest,
}

/// What a successful `verify` or `restore` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub id: String,
    pub manifest: Manifest,
    /// Audit events whose hashes were recomputed (verify only).
    pub audit_events_verified: u64,
}

/// What `prune` removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: Vec<String>,
    pub kept: usize,
}

/// Progress of long work: a table's name and the rows done in it so far.
pub type Progress<'a> = &'a (dyn Fn(&str, u64) + Send + Sync);

/// Backups of one installation: the app (for its store, clock, audit, metrics and KEKs), where
/// archives go, and how they are encrypted and kept.
#[derive(Debug, Clone)]
pub struct Backups {
    app: App,
    target: Arc<dyn BackupTarget>,
    settings: BackupSettings,
    meter: Arc<Meter>,
    /// Who this node is when it claims a scheduled run (informative only).
    node: String,
}

fn defect(why: impl Into<String>) -> AppError {
    AppError::Backup(why.into())
}

/// Why a backup step failed, as it is recorded: the target being unreachable says nothing about a
/// backup, so it is never written down as a failed verification.
#[derive(Debug)]
enum Failure {
    /// Listing, reading or writing the target failed (an outage, permissions, a missing object).
    Target(String),
    App(AppError),
}

impl From<AppError> for Failure {
    fn from(error: AppError) -> Self {
        Failure::App(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::App(error.into())
    }
}

impl Failure {
    fn target(why: impl std::fmt::Display) -> Self {
        Failure::Target(format!("the backup target is unavailable: {why}"))
    }

    /// What callers get: a [`AppError::Backup`] saying which, or the database's error.
    fn into_error(self) -> AppError {
        match self {
            Failure::Target(why) => AppError::Backup(why),
            Failure::App(error) => error,
        }
    }
}

/// Decoded rows between the archive reader and the database: held now, the most ever held, and
/// all that passed (ASVS V5.2.3: what a crafted archive can make verify or restore hold).
#[derive(Debug, Default)]
struct Meter {
    held: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicU64,
}

impl Meter {
    fn add(&self, bytes: usize) {
        let now = self.held.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(bytes as u64, Ordering::SeqCst);
    }

    fn sub(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::SeqCst);
    }
}

impl Backups {
    /// Checks the recipients now, so a wrong key fails at start, not at the first backup.
    pub fn new(app: App, target: Arc<dyn BackupTarget>, settings: BackupSettings) -> Result<Self, AppError> {
        parse_recipients(&settings.recipients).map_err(defect)?;
        if settings.passphrase.is_some() && !settings.recipients.is_empty() {
            return Err(defect("age encrypts to recipients or to one passphrase, not both"));
        }
        let node = format!("pid-{}", std::process::id());
        Ok(Self { app, target, settings, meter: Arc::default(), node })
    }

    /// Names this node in the claims it makes on scheduled runs (`serve`: host name and process
    /// id). Only informative: which node ran a slot is in `scheduled_runs`.
    #[must_use]
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// Claims the run of `task` (`backup`, `drill`) that its schedule named for `slot`, for this
    /// node: whether this node runs it. With several nodes on one database each slot is run by the
    /// first node to claim it; the others are told no (docs/decisions/0012-backups.md,
    /// "Scheduling"). Needs: the scheduler in `serve`; an operator's `portcullis backup create`
    /// never claims, it always runs.
    pub async fn claim_scheduled_run(&self, task: &str, slot: Timestamp) -> Result<bool, AppError> {
        let mut tx = self.app.inner.store.begin().await?;
        let claimed = tx.claim_scheduled_run(task, slot, &self.node, self.app.now()).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// The most bytes of decoded rows held at once between an archive and a database, and all that
    /// passed, since these `Backups` were made (tests prove the memory bound with it).
    #[cfg(test)]
    pub(crate) fn rows_buffered(&self) -> (usize, u64) {
        (self.meter.peak.load(Ordering::SeqCst), self.meter.total.load(Ordering::SeqCst))
    }

    /// Who can decrypt what `create` writes: the configured X25519 keys, or the passphrase.
    fn recipients(&self) -> Result<Vec<Box<dyn age::Recipient + Send>>, AppError> {
        if let Some(passphrase) = &self.settings.passphrase {
            let passphrase = age::secrecy::SecretString::from(passphrase.expose_secret().to_owned());
            let mut recipient = age::scrypt::Recipient::new(passphrase);
            recipient.set_work_factor(SCRYPT_LOG_N);
            return Ok(vec![Box::new(recipient)]);
        }
        let recipients = parse_recipients(&self.settings.recipients).map_err(defect)?;
        if recipients.is_empty() {
            return Err(defect("no backup recipient or passphrase is configured ([backup] recipients)"));
        }
        Ok(recipients.into_iter().map(|r| Box::new(r) as Box<dyn age::Recipient + Send>).collect())
    }

    pub fn settings(&self) -> &BackupSettings {
        &self.settings
    }

    pub fn target(&self) -> &Arc<dyn BackupTarget> {
        &self.target
    }

    fn staging(&self, name: &str) -> Result<tempfile::TempPath, AppError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.settings.staging_dir)
            .map_err(|e| defect(format!("create {}: {e}", self.settings.staging_dir.display())))?;
        tempfile::Builder::new()
            .prefix(name)
            .tempfile_in(&self.settings.staging_dir)
            .map(|f| f.into_temp_path())
            .map_err(|e| defect(format!("a staging file in {}: {e}", self.settings.staging_dir.display())))
    }

    /// Takes a backup now (`portcullis backup create`, and the schedule in `serve`): one snapshot,
    /// streamed into an encrypted archive, stored in the target with its sidecar; recorded as a
    /// `backup.created` audit event. Needs: the operator (CLI) or the scheduler.
    /// A failure is audited as `backup.failed` and raised as a `backup_failed` security event.
    pub async fn create(&self, progress: Progress<'_>) -> Result<Created, AppError> {
        let result = self.create_inner(progress).await;
        let (kind, error) = match result {
            Ok(created) => return Ok(created),
            Err(Failure::Target(why)) => (Some(KIND_TARGET_UNAVAILABLE), AppError::Backup(why)),
            Err(Failure::App(error)) => (None, error),
        };
        let why = portcullis_domain::error_chain(&error);
        if let Err(unrecorded) = self.record_failure_as("create", None, kind, &why).await {
            tracing::warn!(error = %portcullis_domain::error_chain(&unrecorded), "a backup failure was not recorded");
        }
        Err(error)
    }

    async fn create_inner(&self, progress: Progress<'_>) -> Result<Created, Failure> {
        let recipients = self.recipients()?;
        let now = self.app.now();
        let id = new_id(now)?;
        let staged = self.staging(&id)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&staged)
            .map_err(|e| defect(format!("open {}: {e}", staged.display())))?;

        let (tx, rx) = mpsc::channel::<ToFile>(CHANNEL);
        let app = self.app.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_archive(file, &recipients, &app.inner.settings.keks, rx)
        });
        let mut sink = ArchiveSink {
            to_file: tx,
            batch: Batch::default(),
            id: id.clone(),
            table: String::new(),
            rows: 0,
            progress,
            app_version: self.app.inner.settings.version.to_owned(),
            now,
        };
        let dumped = self.app.inner.store.dump(&mut sink).await;
        let ArchiveSink { to_file, .. } = sink;
        drop(to_file);
        let written = writer.await.map_err(|e| defect(format!("the archive writer stopped: {e}")))?;
        // The writer's own error says more than the store's "interrupted".
        let manifest = match (dumped, written) {
            (_, Err(why)) => return Err(defect(format!("writing the archive: {why}")).into()),
            (Err(error), Ok(_)) => return Err(error.into()),
            (Ok(()), Ok(manifest)) => manifest,
        };
        let (size, sha256) = file_digest(staged.to_path_buf()).await?;
        let name = format!("{id}{ARCHIVE_SUFFIX}");
        self.target.put(&name, &staged).await.map_err(Failure::target)?;
        let sidecar = Sidecar {
            id: id.clone(),
            created_at_ms: now.as_unix_millis(),
            app_version: manifest.header.app_version.clone(),
            schema_version: manifest.header.schema_version,
            backend: manifest.header.backend.clone(),
            size,
            sha256,
            verifications: Vec::new(),
        };
        self.write_sidecar(&sidecar).await.map_err(Failure::target)?;
        let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
        self.app
            .record_audit([AuditEntry::system("backup.created")
                .target("backup", &id)
                .detail("size", size)
                .detail("rows", rows)
                .detail("target", self.target.describe())])
            .await?;
        self.app.inner.metrics.backup_succeeded(now);
        tracing::info!(id = %id, size, rows, target = %self.target.describe(), "backup created");
        Ok(Created { id, size, manifest })
    }

    /// Every backup in the target, oldest first.
    pub async fn list(&self) -> Result<Vec<BackupInfo>, AppError> {
        let unavailable = |e| Failure::target(e).into_error();
        let objects = self.target.list().await.map_err(unavailable)?;
        let mut backups = Vec::new();
        for object in &objects {
            let Some(id) = object.name.strip_suffix(ARCHIVE_SUFFIX) else { continue };
            let sidecar = self.read_sidecar(id).await.map_err(unavailable)?;
            backups.push(BackupInfo { id: id.to_owned(), size: object.size, sidecar });
        }
        // Ids begin with the UTC time, so their order is the order they were made in.
        backups.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(backups)
    }

    /// The sidecar of backup `id`, read up to [`MAX_SIDECAR`] bytes; an error is the target's.
    async fn read_sidecar(&self, id: &str) -> Result<Option<Sidecar>, String> {
        let name = format!("{id}{SIDECAR_SUFFIX}");
        let Some(bytes) = self.target.get_bytes(&name, MAX_SIDECAR).await? else {
            return Ok(None);
        };
        // A sidecar that is too large or does not parse, or names another backup, is as good as
        // none: it is clear text anyone with write access to the target can change, and holds no
        // evidence the archive needs (the archive authenticates itself).
        if bytes.len() > MAX_SIDECAR {
            tracing::warn!(id, "the sidecar is larger than {MAX_SIDECAR} bytes; ignored");
            return Ok(None);
        }
        Ok(serde_json::from_slice::<Sidecar>(&bytes).ok().filter(|s| s.id == id))
    }

    async fn write_sidecar(&self, sidecar: &Sidecar) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(sidecar).map_err(|e| format!("sidecar: {e}"))?;
        self.target.put_bytes(&format!("{}{SIDECAR_SUFFIX}", sidecar.id), bytes).await
    }

    fn identities(&self) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, AppError> {
        let mut identities = match self.settings.identity_file.as_deref() {
            Some(path) => read_identities(path).map_err(defect)?,
            None => Vec::new(),
        };
        if let Some(passphrase) = &self.settings.passphrase {
            let passphrase = age::secrecy::SecretString::from(passphrase.expose_secret().to_owned());
            let mut identity = age::scrypt::Identity::new(passphrase);
            // age would accept up to 16 times its own calibration (gigabytes, tens of seconds) from
            // a file someone else wrote; ours are always made at SCRYPT_LOG_N.
            identity.set_max_work_factor(SCRYPT_LOG_N);
            identities.push(Box::new(identity));
        }
        if identities.is_empty() {
            return Err(defect("no identity file or passphrase is configured ([backup] identity_file)"));
        }
        Ok(identities)
    }

    /// Proves a backup (`portcullis backup verify ID`, the weekly drill): decrypts it, authenticates
    /// its manifest and checks every table's row count and SHA-256 against it (a first read that
    /// writes nothing), then restores it into `scratch` (an empty
    /// database the caller opened, SQLite in a temporary folder), verifies the audit chain there and
    /// compares the row counts and the chain head with the manifest. Nothing is believed before the
    /// manifest's MAC verified under a configured KEK. The outcome is kept in the backup's sidecar,
    /// audited (`backup.verified` or `backup.failed`), and a failure raises a `backup_failed`
    /// security event. Any defect is [`AppError::Backup`] saying what and where; a target that
    /// cannot be read is too, but it is audited as `target_unavailable` and never recorded as a
    /// failed verification of the backup.
    pub async fn verify(
        &self,
        id: &str,
        scratch: &dyn Store,
        progress: Progress<'_>,
    ) -> Result<Restored, AppError> {
        let outcome = self.verify_inner(id, scratch, progress).await;
        let now = self.app.now();
        match outcome {
            Ok(restored) => {
                self.note_verification(id, now, None).await;
                self.app.record_audit([AuditEntry::system("backup.verified").target("backup", id)]).await?;
                self.app.inner.metrics.backup_verified(now);
                Ok(restored)
            }
            Err(Failure::App(AppError::Backup(why))) => {
                self.note_verification(id, now, Some(why.clone())).await;
                self.record_failure_as("verify", Some(id), Some(KIND_VERIFICATION_FAILED), &why).await?;
                Err(AppError::Backup(why))
            }
            // Not the backup's fault: audited and alerted on, never written down as its verification.
            Err(Failure::Target(why)) => {
                self.record_failure_as("verify", Some(id), Some(KIND_TARGET_UNAVAILABLE), &why).await?;
                Err(AppError::Backup(why))
            }
            // The database being unreachable says nothing about the backup either.
            Err(Failure::App(error)) => Err(error),
        }
    }

    /// Adds a verification's outcome to the backup's sidecar, if it has one (best effort: the audit
    /// trail is the record; the sidecar is what `list` and `prune` read).
    async fn note_verification(&self, id: &str, now: Timestamp, reason: Option<String>) {
        if let Ok(Some(mut sidecar)) = self.read_sidecar(id).await {
            sidecar.verifications.push(Verification {
                at_ms: now.as_unix_millis(),
                ok: reason.is_none(),
                reason,
            });
            if let Err(error) = self.write_sidecar(&sidecar).await {
                tracing::warn!(id, error, "the verification was not recorded in the sidecar");
            }
        }
    }

    /// Audits a failed backup step and raises the `backup_failed` security event (which alerts).
    pub async fn record_failure(&self, step: &str, id: Option<&str>, why: &str) -> Result<(), AppError> {
        self.record_failure_as(step, id, None, why).await
    }

    /// [`Self::record_failure`], saying what kind of failure it was when that is known.
    async fn record_failure_as(
        &self,
        step: &str,
        id: Option<&str>,
        kind: Option<&str>,
        why: &str,
    ) -> Result<(), AppError> {
        // The reason may quote what a forged archive says (its version, a field name): it goes into
        // the audit trail and alerts bounded and without control characters.
        let why: String =
            why.chars().map(|c| if c.is_control() { '?' } else { c }).take(MAX_FAILURE_CHARS).collect();
        let why = why.as_str();
        tracing::error!(step, id, kind, reason = why, "backup failed");
        let mut entry = AuditEntry::system("backup.failed")
            .outcome(portcullis_domain::Outcome::Failure)
            .detail("step", step)
            .detail("reason", why);
        if let Some(id) = id {
            entry = entry.target("backup", id);
        }
        let mut details = vec![("step".to_owned(), step.to_owned()), ("reason".to_owned(), why.to_owned())];
        if let Some(kind) = kind {
            entry = entry.detail("kind", kind);
            details.push(("kind".to_owned(), kind.to_owned()));
        }
        self.app.record_audit([entry]).await?;
        self.app
            .record_security_event_with(
                portcullis_domain::SecurityEventKind::BackupFailed,
                None,
                None,
                None,
                details.into_iter().collect(),
            )
            .await
    }

    async fn verify_inner(
        &self,
        id: &str,
        scratch: &dyn Store,
        progress: Progress<'_>,
    ) -> Result<Restored, Failure> {
        let identities = self.identities()?;
        let staged = self.fetch(id).await?;
        // As restore: the whole archive is authenticated and checked before a row of it is written
        // anywhere, so a crafted archive (the drill verifies whatever is newest in the target) costs
        // a read, never the scratch database's disk.
        self.check_archive(id, staged.to_path_buf(), identities, progress).await?;
        // As restore does: the scratch database is migrated to the backup's schema before the load
        // and to this binary's after it, so a backup taken before an upgrade still verifies.
        let restored =
            self.load_archive(id, staged.to_path_buf(), self.identities()?, scratch, false, progress).await?;
        scratch.migrate().await?;
        let header = &restored.manifest.header;
        // The counts the scratch database holds, table by table, against the manifest.
        let mut counter = Counter::default();
        scratch.dump(&mut counter).await?;
        for table in &restored.manifest.tables {
            let held = counter.rows.iter().find(|(name, _)| *name == table.name).map_or(0, |(_, n)| *n);
            if held != table.rows {
                return Err(defect(format!(
                    "table {}: the restored database holds {held} rows, the manifest says {}",
                    table.name, table.rows
                ))
                .into());
            }
        }
        let report = self.app.verify_audit_chain_in(scratch).await?;
        if let Some(broken) = report.broken {
            return Err(defect(format!(
                "the audit chain in the backup is broken at seq {}: {}",
                broken.seq, broken.reason
            ))
            .into());
        }
        if report.last_seq != header.audit_head.seq
            || (report.last_seq > 0 && hex(&report.last_hash) != header.audit_head.hash)
        {
            return Err(defect(format!(
                "the restored audit chain ends at seq {} but the manifest's head is seq {}",
                report.last_seq, header.audit_head.seq
            ))
            .into());
        }
        Ok(Restored { audit_events_verified: report.events, ..restored })
    }

    /// Downloads the archive and, when its sidecar says what it was, checks size and SHA-256 first.
    /// A target that cannot be read is [`Failure::Target`].
    async fn fetch(&self, id: &str) -> Result<tempfile::TempPath, Failure> {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(defect(format!("{id:?} is not a backup id")).into());
        }
        let staged = self.staging(id)?;
        self.target.get(&format!("{id}{ARCHIVE_SUFFIX}"), &staged).await.map_err(|e| {
            Failure::target(format!("backup {id} cannot be read from {}: {e}", self.target.describe()))
        })?;
        if let Some(sidecar) = self.read_sidecar(id).await.map_err(Failure::target)? {
            let (size, sha256) = file_digest(staged.to_path_buf()).await?;
            if size != sidecar.size {
                return Err(defect(format!(
                    "backup {id} is {size} bytes but was {} when made: the file was truncated or extended",
                    sidecar.size
                ))
                .into());
            }
            if sha256 != sidecar.sha256 {
                return Err(defect(format!(
                    "backup {id}: the file's SHA-256 {sha256} is not the {} recorded when it was made: it was changed",
                    sidecar.sha256
                ))
                .into());
            }
        }
        Ok(staged)
    }

    /// Restores a backup into `to` (`portcullis backup restore ID --to URL`). Reads the archive twice:
    /// first to authenticate its manifest (its MAC under a configured KEK, its id) and check every
    /// table against it, touching no database; then, only if all of it checked out, to load it:
    /// refuses a database holding data unless `force`; migrates it to the backup's schema, loads
    /// every table in one transaction (committed only once the whole archive checked out again and
    /// every table of that schema was in it), then applies the migrations this binary has beyond
    /// the backup's. A forged archive therefore leaves the target database as it was.
    pub async fn restore(
        &self,
        id: &str,
        to: &dyn Store,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<Restored, AppError> {
        let staged = self.fetch(id).await.map_err(Failure::into_error)?;
        self.check_archive(id, staged.to_path_buf(), self.identities()?, progress).await?;
        let restored =
            self.load_archive(id, staged.to_path_buf(), self.identities()?, to, force, progress).await?;
        to.migrate().await?;
        tracing::info!(id, "backup restored");
        Ok(restored)
    }

    /// Applies retention (`portcullis backup prune`, and after each scheduled backup): deletes backups
    /// older than `retention_days`, but always keeps the newest `keep_min` and the newest one whose
    /// last verification passed. Audited as `backup.pruned` when anything went.
    pub async fn prune(&self) -> Result<Pruned, AppError> {
        let now = self.app.now().as_unix_millis();
        // Ages come from the ids (each archive's authenticated header binds its id), never from the
        // clear-text sidecars; an id dated in the future is no backup of ours and never takes the
        // place of a real one among the newest (it is kept, for the operator to look at).
        let (backups, future): (Vec<_>, Vec<_>) =
            self.list().await?.into_iter().partition(|b| plausible(&b.id, now));
        let keep_newest = self.settings.keep_min as usize;
        let newest_good = backups
            .iter()
            .rev()
            .find(|b| b.sidecar.as_ref().and_then(Sidecar::last_verification).is_some_and(|v| v.ok))
            .map(|b| b.id.clone());
        let mut pruned = Pruned { kept: future.len(), ..Pruned::default() };
        let total = backups.len();
        for (i, backup) in backups.into_iter().enumerate() {
            let among_newest = total - i <= keep_newest;
            let created = created_from_id(&backup.id);
            let expired = self.settings.retention_days > 0
                && created.is_some_and(|at| at < now - i64::from(self.settings.retention_days) * DAY_MILLIS);
            if !expired || among_newest || newest_good.as_deref() == Some(backup.id.as_str()) {
                pruned.kept += 1;
                continue;
            }
            let unavailable = |e| Failure::target(e).into_error();
            self.target.delete(&format!("{}{ARCHIVE_SUFFIX}", backup.id)).await.map_err(unavailable)?;
            self.target.delete(&format!("{}{SIDECAR_SUFFIX}", backup.id)).await.map_err(unavailable)?;
            pruned.deleted.push(backup.id);
        }
        if !pruned.deleted.is_empty() {
            self.app
                .record_audit([AuditEntry::system("backup.pruned")
                    .detail("deleted", pruned.deleted.len())
                    .detail("ids", pruned.deleted.join(","))
                    .detail("kept", pruned.kept)])
                .await?;
            tracing::info!(deleted = pruned.deleted.len(), kept = pruned.kept, "backups pruned");
        }
        Ok(pruned)
    }

    /// The newest backup's id, if any (the drill verifies it). An id dated in the future is skipped:
    /// sorting by name would otherwise let whoever can write the target choose what the drill reads.
    pub async fn newest(&self) -> Result<Option<String>, AppError> {
        let now = self.app.now().as_unix_millis();
        Ok(self.list().await?.into_iter().rev().find(|b| plausible(&b.id, now)).map(|b| b.id))
    }
}

/// The scrypt work factor (N = 2^18: 256 MiB, about a second) of passphrase backups, and the most a
/// reader accepts.
const SCRYPT_LOG_N: u8 = 18;

/// The longest failure reason recorded (audit detail, security event, alert).
const MAX_FAILURE_CHARS: usize = 500;

/// How far ahead of this node's clock a backup id may be dated (another node's clock may run ahead).
const CLOCK_SKEW_MILLIS: i64 = 5 * 60 * 1000;

/// Whether `id` names a time no later than `now` (give or take clock skew).
fn plausible(id: &str, now: i64) -> bool {
    created_from_id(id).is_some_and(|at| at <= now + CLOCK_SKEW_MILLIS)
}

/// `YYYYMMDDTHHMMSSZ-xxxxxxxx`: sortable by time, unique by its random tail.
fn new_id(now: Timestamp) -> Result<String, AppError> {
    let digits: String = now.to_rfc3339().chars().filter(char::is_ascii_digit).take(14).collect();
    let (date, time) = digits.split_at(8.min(digits.len()));
    let mut tail = [0u8; 4];
    getrandom::fill(&mut tail).map_err(|e| AppError::Internal(Box::new(e)))?;
    Ok(format!("portcullis-{date}T{time}Z-{}", hex(&tail)))
}

/// The creation time an id carries, for an archive without a sidecar.
fn created_from_id(id: &str) -> Option<i64> {
    let stamp = id.strip_prefix("portcullis-")?.get(..16)?;
    let n = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (n(0..4)?, n(4..6)?, n(6..8)?, n(9..11)?, n(11..13)?, n(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm), for a UTC time without a date library.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000)
}

async fn file_digest(path: PathBuf) -> Result<(u64, String), AppError> {
    target::blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let size =
            std::io::copy(&mut file, &mut hasher).map_err(|e| format!("read {}: {e}", path.display()))?;
        Ok((size, hex(&hasher.finalize())))
    })
    .await
    .map_err(defect)
}

/// Rows on their way between the database and the file, bounded by count and by bytes.
#[derive(Debug, Default)]
struct Batch {
    rows: Vec<Vec<Cell>>,
    bytes: usize,
}

impl Batch {
    /// Adds a row; when it would take the batch past [`BATCH`] rows or [`BATCH_BYTES`], first hands
    /// back the batch so far (rows and bytes), to be sent.
    fn push(&mut self, row: Vec<Cell>) -> Option<(Vec<Vec<Cell>>, usize)> {
        let size = archive::row_bytes(&row);
        let full = (!self.rows.is_empty()
            && (self.rows.len() >= BATCH || self.bytes.saturating_add(size) > BATCH_BYTES))
            .then(|| self.take());
        self.rows.push(row);
        self.bytes += size;
        full
    }

    fn take(&mut self) -> (Vec<Vec<Cell>>, usize) {
        (std::mem::take(&mut self.rows), std::mem::take(&mut self.bytes))
    }
}

/// What the database side sends the file side.
enum ToFile {
    Header(Box<Header>),
    Table(TableHeader),
    Rows(Vec<Vec<Cell>>),
}

/// The file side of `create`: encodes, compresses and encrypts what arrives, then syncs the file.
fn write_archive(
    file: std::fs::File,
    recipients: &[Box<dyn age::Recipient + Send>],
    keks: &crate::KekSet,
    mut rx: mpsc::Receiver<ToFile>,
) -> Result<Manifest, String> {
    let Some(ToFile::Header(header)) = rx.blocking_recv() else {
        return Err("the dump did not start".to_owned());
    };
    let mut writer = ArchiveWriter::new(std::io::BufWriter::new(file), recipients, *header, keks)?;
    while let Some(message) = rx.blocking_recv() {
        match message {
            ToFile::Header(_) => return Err("a second header".to_owned()),
            ToFile::Table(table) => writer.table(&table)?,
            ToFile::Rows(rows) => {
                for row in &rows {
                    writer.row(row)?;
                }
            }
        }
    }
    let (manifest, out) = writer.finish()?;
    let file = out.into_inner().map_err(|e| format!("flush: {e}"))?;
    file.sync_all().map_err(|e| format!("sync: {e}"))?;
    Ok(manifest)
}

/// The database side of `create`.
struct ArchiveSink<'a> {
    to_file: mpsc::Sender<ToFile>,
    batch: Batch,
    id: String,
    table: String,
    rows: u64,
    progress: Progress<'a>,
    app_version: String,
    now: Timestamp,
}

impl ArchiveSink<'_> {
    async fn send(&mut self, message: ToFile) -> Result<(), StoreError> {
        // A closed channel means the file side failed; its error is the one reported.
        self.to_file
            .send(message)
            .await
            .map_err(|_| portcullis_store::interrupted("the archive writer stopped"))
    }

    async fn send_rows(&mut self, rows: Vec<Vec<Cell>>) -> Result<(), StoreError> {
        self.send(ToFile::Rows(rows)).await?;
        (self.progress)(&self.table, self.rows);
        Ok(())
    }
}

#[async_trait]
impl DumpSink for ArchiveSink<'_> {
    async fn start(&mut self, info: DumpInfo, snapshot: &mut dyn StoreTx) -> Result<(), StoreError> {
        let head = snapshot.read_audit_head().await?;
        let checkpoint = snapshot.latest_audit_checkpoint().await?;
        let header = Header {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            backup_id: self.id.clone(),
            // Set by the writer, from the KEKs.
            mac_kek_id: String::new(),
            app_version: self.app_version.clone(),
            schema_version: info.schema_version,
            created_at: self.now.to_rfc3339(),
            created_at_ms: self.now.as_unix_millis(),
            backend: match info.backend {
                portcullis_store::Backend::Sqlite => "sqlite",
                portcullis_store::Backend::Postgres => "postgresql",
            }
            .to_owned(),
            audit_head: ChainPoint { seq: head.seq, hash: hex(&head.hash) },
            latest_checkpoint: checkpoint.map(|c| CheckpointInfo {
                seq: c.seq,
                hash: hex(&c.hash),
                at_ms: c.at.as_unix_millis(),
                key_id: c.key_id,
                signature: hex(&c.signature),
            }),
        };
        self.send(ToFile::Header(Box::new(header))).await
    }

    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        self.table = table.name.clone();
        self.rows = 0;
        self.send(ToFile::Table(table.clone())).await
    }

    async fn row(&mut self, row: Vec<Cell>) -> Result<(), StoreError> {
        self.rows += 1;
        if let Some((full, _)) = self.batch.push(row) {
            self.send_rows(full).await?;
        }
        Ok(())
    }

    async fn end_table(&mut self) -> Result<(), StoreError> {
        let (rest, _) = self.batch.take();
        if !rest.is_empty() {
            self.send(ToFile::Rows(rest)).await?;
        }
        (self.progress)(&self.table, self.rows);
        Ok(())
    }
}

/// Counts each table's rows (verify compares them with the manifest; a load compares the tables a
/// schema has with an archive's).
#[derive(Debug, Default)]
struct Counter {
    rows: Vec<(String, u64)>,
}

#[async_trait]
impl DumpSink for Counter {
    async fn start(&mut self, _info: DumpInfo, _snapshot: &mut dyn StoreTx) -> Result<(), StoreError> {
        Ok(())
    }

    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError> {
        self.rows.push((table.name.clone(), 0));
        Ok(())
    }

    async fn row(&mut self, _row: Vec<Cell>) -> Result<(), StoreError> {
        if let Some((_, n)) = self.rows.last_mut() {
            *n += 1;
        }
        Ok(())
    }

    async fn end_table(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What the file side of a load sends the database side.
enum FromFile {
    Header(Box<Header>),
    Table(TableHeader),
    /// Rows and their bytes (as metered).
    Rows(Vec<Vec<Cell>>, usize),
    /// Rows read and checked but not kept (the first pass of a restore).
    Counted(u64),
    End(Box<Manifest>),
}

/// Reads and checks the archive on a blocking thread; every item goes to the channel, a defect as
/// the channel's last message. With `keep_rows` false rows are only counted (and still hashed and
/// checked by the reader).
fn read_archive(
    path: PathBuf,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    id: String,
    app: App,
    meter: Arc<Meter>,
    keep_rows: bool,
    tx: mpsc::Sender<Result<FromFile, String>>,
) {
    let mut batch = Batch::default();
    let mut run = || -> Result<(), String> {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let mut reader =
            ArchiveReader::open(std::io::BufReader::new(file), &identities, &id, &app.inner.settings.keks)?;
        let send = |m: FromFile| tx.blocking_send(Ok(m)).map_err(|_| "the loader stopped".to_owned());
        let send_rows = |(rows, bytes): (Vec<Vec<Cell>>, usize)| {
            if rows.is_empty() {
                return Ok(());
            }
            let sent = send(FromFile::Rows(rows, bytes));
            if sent.is_err() {
                meter.sub(bytes);
            }
            sent
        };
        send(FromFile::Header(Box::new(reader.header().clone())))?;
        let mut counted = 0u64;
        loop {
            match reader.next_item()? {
                Item::Row(row) if keep_rows => {
                    meter.add(archive::row_bytes(&row));
                    if let Some(full) = batch.push(row) {
                        send_rows(full)?;
                    }
                }
                Item::Row(_) => {
                    counted += 1;
                    if counted.is_multiple_of(BATCH as u64) {
                        send(FromFile::Counted(counted))?;
                    }
                }
                Item::Table(table) => {
                    send_rows(batch.take())?;
                    counted = 0;
                    send(FromFile::Table(table))?;
                }
                Item::End(manifest) => {
                    send_rows(batch.take())?;
                    return send(FromFile::End(manifest));
                }
            }
        }
    };
    let outcome = run();
    // Rows read but never sent (the archive failed mid-batch) are no longer held.
    meter.sub(batch.bytes);
    if let Err(why) = outcome {
        let _ = tx.blocking_send(Err(why));
    }
}

impl Backups {
    /// Starts reading an archive on a blocking thread; the receiver gets its items.
    fn read(
        &self,
        id: &str,
        path: PathBuf,
        identities: Vec<Box<dyn age::Identity + Send + Sync>>,
        keep_rows: bool,
    ) -> (mpsc::Receiver<Result<FromFile, String>>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(READ_CHANNEL);
        let (id, app, meter) = (id.to_owned(), self.app.clone(), self.meter.clone());
        let reader = tokio::task::spawn_blocking(move || {
            read_archive(path, identities, id, app, meter, keep_rows, tx)
        });
        (rx, reader)
    }

    /// The first pass of a restore: reads the whole archive (MAC, id, tables, counts, checksums)
    /// without a database.
    async fn check_archive(
        &self,
        id: &str,
        path: PathBuf,
        identities: Vec<Box<dyn age::Identity + Send + Sync>>,
        progress: Progress<'_>,
    ) -> Result<(), AppError> {
        let (mut rx, reader) = self.read(id, path, identities, false);
        let mut table = String::new();
        let result = loop {
            match next_from_file(id, rx.recv().await) {
                Ok(FromFile::Table(header)) => {
                    table = format!("{} (checking)", header.name);
                    progress(&table, 0);
                }
                Ok(FromFile::Counted(rows)) => progress(&table, rows),
                Ok(FromFile::End(_)) => break Ok(()),
                Ok(FromFile::Header(_) | FromFile::Rows(..)) => {}
                Err(error) => break Err(error),
            }
        };
        drop(rx);
        let _ = reader.await;
        result
    }

    /// Streams an archive into `to`: migrated to the backup's schema first, loaded in one
    /// transaction that commits only after the manifest's MAC and checksums checked out and every
    /// table of the backup's schema was in the archive.
    async fn load_archive(
        &self,
        id: &str,
        path: PathBuf,
        identities: Vec<Box<dyn age::Identity + Send + Sync>>,
        to: &dyn Store,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<Restored, AppError> {
        let (mut rx, reader) = self.read(id, path, identities, true);
        let result = self.load_from(id, &mut rx, to, force, progress).await;
        // Whatever is still queued was metered: the reader stops when the channel closes.
        rx.close();
        while let Some(message) = rx.recv().await {
            if let Ok(FromFile::Rows(_, bytes)) = message {
                self.meter.sub(bytes);
            }
        }
        let _ = reader.await;
        result
    }

    async fn load_from(
        &self,
        id: &str,
        rx: &mut mpsc::Receiver<Result<FromFile, String>>,
        to: &dyn Store,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<Restored, AppError> {
        let FromFile::Header(header) = next_from_file(id, rx.recv().await)? else {
            return Err(defect(format!("backup {id}: no header")));
        };
        let status = to.migration_status().await?;
        if let Some(newer) = status.applied.iter().find(|v| **v > header.schema_version) {
            return Err(defect(format!(
                "the target database has migration {newer}, newer than the backup's schema {}: restore into an empty database",
                header.schema_version
            )));
        }
        if header.schema_version > status.applied.iter().chain(&status.pending).copied().max().unwrap_or(0) {
            return Err(defect(format!(
                "backup {id} has schema {}, newer than this binary knows: restore it with a newer Portcullis",
                header.schema_version
            )));
        }
        to.migrate_to(header.schema_version).await?;
        // The tables the backup's schema has, from the migrated database's catalog.
        let mut schema = Counter::default();
        to.dump(&mut schema).await?;
        let mut loader: Box<dyn Loader> = match to.load(force).await {
            Err(StoreError::Conflict { entity: "database" }) => {
                return Err(defect("the target database holds data; restore with --force to replace it"));
            }
            other => other?,
        };
        let (mut table, mut rows) = (String::new(), 0u64);
        let manifest = loop {
            match next_from_file(id, rx.recv().await)? {
                FromFile::Header(_) => return Err(defect(format!("backup {id}: a second header"))),
                FromFile::Table(header) => {
                    loader.table(&header).await.map_err(|e| load_error(id, e))?;
                    (table, rows) = (header.name, 0);
                    progress(&table, 0);
                }
                FromFile::Rows(batch, bytes) => {
                    rows += batch.len() as u64;
                    let loaded = loader.rows(batch).await;
                    self.meter.sub(bytes);
                    loaded.map_err(|e| load_error(id, e))?;
                    progress(&table, rows);
                }
                FromFile::Counted(_) => {}
                FromFile::End(manifest) => break manifest,
            }
        };
        if let Some((missing, _)) =
            schema.rows.iter().find(|(name, _)| !manifest.tables.iter().any(|t| t.name == *name))
        {
            return Err(defect(format!(
                "backup {id} lacks table {missing}, which its schema {} has: the archive is incomplete",
                header.schema_version
            )));
        }
        loader.finish().await?;
        Ok(Restored { id: id.to_owned(), manifest: *manifest, audit_events_verified: 0 })
    }
}

fn next_from_file(id: &str, message: Option<Result<FromFile, String>>) -> Result<FromFile, AppError> {
    match message {
        Some(Ok(item)) => Ok(item),
        Some(Err(why)) => Err(defect(format!("backup {id}: {why}"))),
        None => Err(defect(format!("backup {id}: the reader stopped"))),
    }
}

/// Rows that do not fit the schema are a defect of the backup; anything else is the database's.
fn load_error(id: &str, error: StoreError) -> AppError {
    match error {
        StoreError::Corrupt(why) => defect(format!("backup {id}: {why}")),
        other => other.into(),
    }
}

/// The sidecar's object name (tests).
#[cfg(test)]
pub(crate) fn sidecar_name(id: &str) -> String {
    format!("{id}{SIDECAR_SUFFIX}")
}

/// The archive's object name (tests).
#[cfg(test)]
pub(crate) fn archive_name(id: &str) -> String {
    format!("{id}{ARCHIVE_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_creation_time() {
        let at = Timestamp::from_unix_millis(1_796_612_345_000);
        let id = new_id(at).unwrap();
        assert!(id.starts_with("portcullis-2026"), "{id}");
        assert_eq!(created_from_id(&id), Some(1_796_612_345_000));
    }
}
