//! Signed checkpoints of the audit chain and the retention purge that cuts its start at one.
//!
//! A checkpoint states "event `seq` has hash `h`", signed with the audit key (Ed25519, wrapped under
//! the KEK like every key). Someone who can write the database but does not hold the KEK can
//! rewrite events and even recompute every hash after them, but cannot sign a checkpoint for the
//! rewritten chain; a copy of each checkpoint in a file outside the database also catches a tail
//! cut off after the newest one.

use std::collections::HashMap;
use std::io::Write;

use portcullis_domain::audit::{checkpoint_message, hex};
use portcullis_domain::{AuditCheckpoint, Timestamp};
use portcullis_store::StoreError;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use super::AuditEntry;
use crate::{App, AppError};

/// The algorithm recorded in the keyring for audit keys.
pub const AUDIT_KEY_ALGORITHM: &str = "Ed25519";

/// A new audit key pair: the PKCS#8 private key (wrapped before it is stored) and the public key.
pub struct NewAuditKey {
    pub pkcs8: Zeroizing<Vec<u8>>,
    pub public: Vec<u8>,
}

impl std::fmt::Debug for NewAuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAuditKey").finish_non_exhaustive()
    }
}

pub fn generate_audit_key() -> Result<NewAuditKey, AppError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| AppError::Internal("could not generate an audit key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| AppError::Internal("a generated audit key does not parse".into()))?;
    Ok(NewAuditKey {
        pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
        public: pair.public_key().as_ref().to_vec(),
    })
}

/// The audit keys this node holds: the active one signs, every one (retired included) verifies.
/// Public keys come from the unwrapped private keys, never from the stored public column, so a
/// key row planted in the database does not verify anything.
#[derive(Default)]
pub struct AuditKeys {
    signer: Option<(String, Ed25519KeyPair)>,
    public: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("signer", &self.signer.as_ref().map(|(id, _)| id))
            .field("keys", &self.public.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AuditKeys {
    pub(crate) fn add(&mut self, id: &str, pkcs8: &[u8], active: bool) -> Result<(), AppError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| AppError::Keyring(format!("audit key {id} is not an Ed25519 PKCS#8 key")))?;
        self.public.insert(id.to_owned(), pair.public_key().as_ref().to_vec());
        if active {
            self.signer = Some((id.to_owned(), pair));
        }
        Ok(())
    }

    fn sign(&self, seq: i64, hash: &[u8; 32], at: Timestamp) -> Result<AuditCheckpoint, AppError> {
        let (id, pair) =
            self.signer.as_ref().ok_or_else(|| AppError::Keyring("no audit key is active".into()))?;
        let signature = pair.sign(&checkpoint_message(seq, hash, at, id)).as_ref().to_vec();
        Ok(AuditCheckpoint { seq, hash: *hash, at, key_id: id.clone(), signature })
    }

    /// Whether the checkpoint's signature verifies under the audit key it names.
    pub(crate) fn verifies(&self, checkpoint: &AuditCheckpoint) -> bool {
        let Some(public) = self.public.get(&checkpoint.key_id) else { return false };
        let message = checkpoint_message(checkpoint.seq, &checkpoint.hash, checkpoint.at, &checkpoint.key_id);
        UnparsedPublicKey::new(&ED25519, public).verify(&message, &checkpoint.signature).is_ok()
    }
}

/// What a retention run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditPurge {
    /// Events deleted.
    pub deleted: u64,
    /// The chain now starts after this seq (a signed checkpoint), if anything was cut.
    pub through_seq: Option<i64>,
}

impl App {
    /// Signs a checkpoint of the chain head if one is due: `checkpoint_every` events since the last,
    /// or `checkpoint_interval` with any event since it. Two nodes doing it at once store one (one
    /// checkpoint per seq). Returns the checkpoint this call stored.
    pub async fn checkpoint_audit_if_due(&self) -> Result<Option<AuditCheckpoint>, AppError> {
        let settings = &self.inner.settings.audit;
        let now = self.now();
        let mut tx = self.inner.store.begin_read().await?;
        let head = tx.read_audit_head().await?;
        let last = tx.latest_audit_checkpoint().await?;
        tx.rollback().await?;
        let due = match &last {
            _ if head.seq == 0 => false,
            None => true,
            Some(last) if last.seq >= head.seq => false,
            Some(last) => {
                (head.seq - last.seq) as u64 >= settings.checkpoint_every
                    || now.as_unix_millis() - last.at.as_unix_millis() >= settings.checkpoint_interval_millis
            }
        };
        if !due {
            return Ok(None);
        }
        self.checkpoint_verified(true, now).await
    }

    /// Signs a checkpoint now, whatever the schedule says (a clean stop, `portcullis audit
    /// checkpoint`). With `coverage` false (only the operator's explicit command) events more than
    /// a day old without a checkpoint are accepted: how a gap left by a crash and a long outage is
    /// closed once the operator has read the verification's report.
    pub async fn checkpoint_audit_now(&self, coverage: bool) -> Result<Option<AuditCheckpoint>, AppError> {
        self.checkpoint_verified(coverage, self.now()).await
    }

    /// Verifies what the next checkpoint will cover (from the newest valid checkpoint on), then signs
    /// what verified. Never the head row alone: someone who can write the database could point it
    /// anywhere and have this node sign it. A chain that does not verify is not signed; it is an
    /// `audit_chain_broken` security event.
    async fn checkpoint_verified(
        &self,
        coverage: bool,
        now: Timestamp,
    ) -> Result<Option<AuditCheckpoint>, AppError> {
        let scope = super::verify::Scope { from_newest_checkpoint: true, coverage };
        let report = self.verify_scope(scope, &|_, _| {}).await?;
        if let Some(broken) = &report.broken {
            self.raise_chain_broken(broken).await?;
            return Err(AppError::Internal(
                format!("the audit chain does not verify at seq {}: {}", broken.seq, broken.reason).into(),
            ));
        }
        if report.last_seq == 0 {
            return Ok(None);
        }
        self.sign_checkpoint(report.last_seq, &report.last_hash, now).await
    }

    async fn sign_checkpoint(
        &self,
        seq: i64,
        hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<AuditCheckpoint>, AppError> {
        let checkpoint = self.loaded_keys().audit.sign(seq, hash, now)?;
        let mut tx = self.inner.store.begin().await?;
        match tx.insert_audit_checkpoint(&checkpoint).await {
            Ok(()) => tx.commit().await?,
            Err(StoreError::Conflict { .. }) => return Ok(None),
            Err(other) => return Err(other.into()),
        }
        tracing::info!(seq, hash = %hex(hash), key = %checkpoint.key_id, "audit checkpoint signed");
        self.inner.audit_writer.raise_high_water(seq, *hash);
        if let Some(path) = &self.inner.settings.audit.checkpoint_file
            && let Err(error) = append_checkpoint_line(path, &checkpoint)
        {
            // The checkpoint is in the database; only its outside copy is missing. Loud, not fatal.
            tracing::error!(path = %path.display(), error = %error, "could not copy the audit checkpoint to its file");
        }
        Ok(Some(checkpoint))
    }

    /// Deletes events older than the retention period, cutting only at a signed checkpoint (so the
    /// rest still verifies from it), one checkpoint span per transaction, and records the purge as
    /// an audit event in the last one.
    pub async fn purge_audit_events(&self) -> Result<AuditPurge, AppError> {
        let days = self.inner.settings.audit.retention_days;
        if days == 0 {
            return Ok(AuditPurge::default());
        }
        let before = self.now().plus_millis(-(i64::from(days) * 86_400_000));
        let mut tx = self.inner.store.begin_read().await?;
        let cut = tx.audit_purge_cut(before).await?;
        let bounds = tx.audit_bounds().await?;
        tx.rollback().await?;
        let (Some(cut), Some((min, _, _))) = (cut, bounds) else { return Ok(AuditPurge::default()) };
        if min > cut {
            return Ok(AuditPurge::default());
        }
        // Only a chain that verifies is cut: deleting a tampered span would delete the evidence.
        let report = self.verify_audit_chain(&|_, _| {}).await?;
        if let Some(broken) = &report.broken {
            self.raise_chain_broken(broken).await?;
            return Err(AppError::Internal(
                format!("the audit chain does not verify at seq {}; nothing was purged", broken.seq).into(),
            ));
        }
        let mut deleted = 0;
        let mut after = min - 1;
        loop {
            // The next checkpoint at or before the cut bounds this step.
            let mut tx = self.inner.store.begin().await?;
            let step_end = tx
                .audit_checkpoints_after(after, 1)
                .await?
                .first()
                .map(|c| c.seq)
                .filter(|seq| *seq <= cut)
                .unwrap_or(cut);
            // One checkpoint's span per transaction (`checkpoint_every` events at most), so the chain
            // starts at a checkpoint between any two of them.
            deleted += tx.purge_audit_events(step_end, u32::MAX).await?;
            if step_end >= cut {
                let entry = AuditEntry::system("audit.events.purged")
                    .detail("through_seq", cut)
                    .detail("deleted", deleted)
                    .detail("retention_days", days);
                self.commit_audited(tx, [entry]).await?;
                break;
            }
            tx.commit().await?;
            after = step_end;
        }
        tracing::info!(deleted, through_seq = cut, "audit events past retention purged");
        Ok(AuditPurge { deleted, through_seq: Some(cut) })
    }
}

/// Appends one JSON line and syncs it: the copy must survive the crash that a checkpoint guards.
fn append_checkpoint_line(path: &std::path::Path, checkpoint: &AuditCheckpoint) -> std::io::Result<()> {
    let line = serde_json::json!({
        "seq": checkpoint.seq,
        "hash": hex(&checkpoint.hash),
        "at": checkpoint.at.to_rfc3339(),
        "at_ms": checkpoint.at.as_unix_millis(),
        "key_id": checkpoint.key_id,
        "signature": hex(&checkpoint.signature),
    });
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")?;
    file.sync_data()
}
