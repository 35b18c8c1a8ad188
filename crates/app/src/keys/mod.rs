//! The keyring: loading and creating keys at start, the signing-key rotation schedule, manual and
//! emergency rotation, KEK rotation, and the background re-encryption of personal data.
//!
//! Every key lives in the store wrapped under a key-encryption key ([`KekSet`]) from configuration.
//! Nodes agree through the store alone: at most one `active` and one `next` key per purpose (unique
//! indexes) and conditional state moves, so two nodes running the schedule at once make one move.

mod fields;
mod kek;

use std::sync::Arc;

use portcullis_domain::{RevokeReason, Timestamp};
use portcullis_store::{KeyPurpose, KeyState, PiiTable, StoreError, StoreTx, StoredKey};
use zeroize::Zeroizing;

pub(crate) use fields::{FieldKeys, Place, key_bytes, open_with, seal_with};
pub use kek::{KEK_BYTES, KekSet};

use crate::audit::AuditEntry;
use crate::tokens::{Keyring, generate_signing_key};
use crate::{App, AppError};

/// Algorithm names recorded in the keyring.
const PII_ALGORITHM: &str = "XChaCha20-Poly1305";
const INDEX_ALGORITHM: &str = "HMAC-SHA256";

/// A retired personal-data or blind-index key is destroyed once no row uses it and it has been
/// retired this long: every node reloads its keys far more often (see [`KEY_SYNC_SECS`]), so none is
/// still writing under it.
pub const RETIRED_KEY_GRACE_MILLIS: i64 = 10 * 60 * 1000;

/// How often the server reloads keys written by other nodes and runs the schedule.
pub const KEY_SYNC_SECS: u64 = 10;

/// A node whose last successful keyring read is older than this reports itself not ready: it may be
/// signing with a destroyed key or sealing under one about to be destroyed.
pub const KEY_SYNC_STALE_MILLIS: i64 = 6 * 10 * 1000;

/// How long a new blind-index key waits as `next` before it indexes new accounts: three key syncs,
/// so every node is already looking accounts up under it.
pub const BLIND_INDEX_PUBLISH_AHEAD_MILLIS: i64 = 3 * 10 * 1000;

/// When keys rotate, chosen by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySettings {
    /// How long a signing key signs before the next one takes over (30 days by default).
    pub signing_rotation_millis: i64,
    /// How long a new signing key is published in the JWKS before it signs (1 day by default), so
    /// verifiers that cache the JWKS know it before they see a token it signed.
    pub signing_publish_ahead_millis: i64,
    /// Rows re-encrypted per transaction by the background job.
    pub reencrypt_batch: u32,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            signing_rotation_millis: 30 * 24 * 3_600_000,
            signing_publish_ahead_millis: 24 * 3_600_000,
            reencrypt_batch: 500,
        }
    }
}

/// The keys this node holds, replaced whole when the keyring changes.
#[derive(Debug)]
pub(crate) struct LoadedKeys {
    pub signing: Keyring,
    pub fields: FieldKeys,
    /// Signs and verifies audit checkpoints.
    pub audit: crate::audit::AuditKeys,
    /// What was loaded: (id, state, kek) of every key, to notice changes made by other nodes.
    fingerprint: Vec<(String, KeyState, String)>,
}

impl LoadedKeys {
    pub(crate) fn empty() -> Self {
        Self {
            signing: Keyring::empty(),
            fields: FieldKeys::default(),
            audit: crate::audit::AuditKeys::default(),
            fingerprint: Vec::new(),
        }
    }
}

/// One key as `portcullis keys list` shows it: never any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub purpose: KeyPurpose,
    pub algorithm: String,
    pub state: KeyState,
    pub kek_id: String,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub retired_at: Option<Timestamp>,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new key.
    pub new_key: String,
    /// The key it replaces (retired, or destroyed in an emergency), if there was one.
    pub old_key: Option<String>,
    /// When the new key starts signing or encrypting.
    pub active_from: Timestamp,
    /// Sessions revoked (emergency signing rotation only).
    pub revoked_sessions: u64,
}

/// Progress of the re-encryption job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reencryption {
    /// Rows re-sealed under the active personal-data key in this step.
    pub resealed: u64,
    /// Users whose blind index was recomputed with the active key in this step.
    pub reindexed: u64,
    /// Rows skipped because they do not open (logged with their ids); they stay under their key,
    /// which is then never destroyed.
    pub skipped: u64,
    /// Rows (and indexes) still under a retired key after this step.
    pub remaining: u64,
}

fn random_key_id(purpose: KeyPurpose) -> Result<String, AppError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| AppError::Internal(Box::new(e)))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{hex}", purpose.as_str()))
}

impl App {
    /// Loads the keyring, creating the first key of each purpose on a fresh installation. Every
    /// stored key is unwrapped before anything is written, so a wrong or missing KEK stops the start
    /// with [`AppError::Keyring`] and changes nothing. Safe when nodes start together: losers of the
    /// race to insert a key load the winner's.
    pub async fn load_keys(&self) -> Result<(), AppError> {
        let mut stored = self.read_keys().await?;
        self.build_keys(&stored)?;
        let mut created = false;
        for purpose in [KeyPurpose::Signing, KeyPurpose::Pii, KeyPurpose::BlindIndex, KeyPurpose::Audit] {
            if stored.iter().any(|k| k.purpose == purpose && k.state == KeyState::Active) {
                continue;
            }
            let key = self.new_key(purpose, KeyState::Active)?;
            let mut tx = self.inner.store.begin().await?;
            match tx.insert_key(&key).await {
                Ok(()) => {
                    self.commit_audited(tx, [key_created(&key)]).await?;
                    tracing::debug!(key = %key.id, purpose = purpose.as_str(), "created the first key");
                    created = true;
                }
                Err(StoreError::Conflict { .. }) => drop(tx),
                Err(other) => return Err(other.into()),
            }
        }
        if created {
            stored = self.read_keys().await?;
        }
        self.install_keys(&stored)
    }

    /// The start-up work that needs a current schema: the keyring (first, so a wrong KEK writes
    /// nothing) and the instance identity.
    pub async fn finish_bootstrap(&self) -> Result<(), AppError> {
        self.load_keys().await?;
        self.bootstrap_instance().await?;
        self.ensure_default_organization().await
    }

    /// Reloads the keyring if another node (or the CLI) changed it; returns whether it did.
    pub async fn reload_keys_if_changed(&self) -> Result<bool, AppError> {
        let stored = self.read_keys().await?;
        if fingerprint(&stored) == self.loaded_keys().fingerprint {
            self.mark_keys_synced();
            return Ok(false);
        }
        self.install_keys(&stored)?;
        Ok(true)
    }

    /// Whether this node's keyring is current enough to serve: loaded, and read successfully within
    /// [`KEY_SYNC_STALE_MILLIS`]; otherwise why not.
    pub(crate) fn keys_problem(&self) -> Option<String> {
        if !self.can_sign_tokens() {
            return Some("no token signing key is loaded".into());
        }
        let synced = self.inner.keys_synced_at.load(std::sync::atomic::Ordering::Relaxed);
        let age = self.now().as_unix_millis().saturating_sub(synced);
        (age > KEY_SYNC_STALE_MILLIS).then(|| {
            format!(
                "the keyring was last read {} s ago; key maintenance is failing (see the log)",
                age / 1000
            )
        })
    }

    fn mark_keys_synced(&self) {
        self.inner.keys_synced_at.store(self.now().as_unix_millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a signing key is loaded (a readiness check).
    pub fn can_sign_tokens(&self) -> bool {
        self.loaded_keys().signing.can_sign()
    }

    /// The JSON Web Key Set of every key a live token may carry (RFC 7517): the next key, the
    /// active one, and retired ones until every token they signed has expired.
    pub fn jwks(&self) -> serde_json::Value {
        self.loaded_keys().signing.jwks().clone()
    }

    /// Every key, oldest first, without secrets (`portcullis keys list`).
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, AppError> {
        Ok(self
            .read_keys()
            .await?
            .into_iter()
            .map(|k| KeyInfo {
                id: k.id,
                purpose: k.purpose,
                algorithm: k.algorithm,
                state: k.state,
                kek_id: k.kek_id,
                created_at: k.created_at,
                activated_at: k.activated_at,
                retired_at: k.retired_at,
            })
            .collect())
    }

    /// Runs the rotation schedule once at the app's clock: publishes the next signing key ahead of
    /// its time, promotes next signing and blind-index keys when their time comes, destroys retired
    /// signing keys once every token they signed has expired, and destroys retired data keys that no
    /// row uses any more. Returns whether anything changed.
    pub async fn run_key_schedule(&self) -> Result<bool, AppError> {
        let now = self.now();
        let settings = self.inner.settings.keys;
        let stored = self.read_keys().await?;
        let mut changed = false;
        let signing: Vec<&StoredKey> = stored.iter().filter(|k| k.purpose == KeyPurpose::Signing).collect();
        let active = signing.iter().find(|k| k.state == KeyState::Active);
        let next = signing.iter().find(|k| k.state == KeyState::Next);
        match (active, next) {
            (Some(active), None) => {
                let since = active.activated_at.unwrap_or(active.created_at);
                let due = since
                    .plus_millis(settings.signing_rotation_millis - settings.signing_publish_ahead_millis);
                if now >= due {
                    changed |=
                        self.insert_key_once(self.new_key(KeyPurpose::Signing, KeyState::Next)?).await?;
                }
            }
            (Some(active), Some(next))
                if now >= next.created_at.plus_millis(settings.signing_publish_ahead_millis) =>
            {
                changed |= self.promote(active, next, now).await?;
            }
            _ => {}
        }
        // A new blind-index key waits as `next` until every node has loaded it (lookups try it from
        // then on), so no node can miss an account indexed under it or create a duplicate.
        let index_keys = stored.iter().filter(|k| k.purpose == KeyPurpose::BlindIndex);
        let active = index_keys.clone().find(|k| k.state == KeyState::Active);
        let next = index_keys.clone().find(|k| k.state == KeyState::Next);
        if let (Some(active), Some(next)) = (active, next)
            && now >= next.created_at.plus_millis(BLIND_INDEX_PUBLISH_AHEAD_MILLIS)
        {
            changed |= self.promote(active, next, now).await?;
        }
        // A node may sign with the old key until its next key sync after the promotion: a few syncs
        // of margin keep those tokens verifiable for their whole life.
        let verify_window = (self.inner.settings.tokens.access_ttl_secs
            + self.inner.settings.tokens.leeway_secs
            + 3 * KEY_SYNC_SECS as i64)
            * 1000;
        for key in stored.iter().filter(|k| k.state == KeyState::Retired) {
            let retired_at = key.retired_at.unwrap_or(key.created_at);
            let done = match key.purpose {
                KeyPurpose::Signing => now >= retired_at.plus_millis(verify_window),
                KeyPurpose::Pii | KeyPurpose::BlindIndex => {
                    now >= retired_at.plus_millis(RETIRED_KEY_GRACE_MILLIS)
                        && self.rows_under(key, Movable::AndAudit).await? == 0
                }
                KeyPurpose::Audit => false,
            };
            if done {
                let mut tx = self.inner.store.begin().await?;
                if tx.transition_key(&key.id, KeyState::Retired, KeyState::Destroyed, now).await? {
                    let destroyed = AuditEntry::system("key.destroyed")
                        .target("key", &key.id)
                        .detail("purpose", key.purpose.as_str())
                        .detail("reason", "retired_and_unused");
                    self.commit_audited(tx, [destroyed]).await?;
                    tracing::info!(key = %key.id, purpose = key.purpose.as_str(), "retired key destroyed");
                    changed = true;
                }
            }
        }
        if changed {
            self.install_keys(&self.read_keys().await?)?;
        }
        Ok(changed)
    }

    /// Starts a rotation of `purpose` now (`portcullis keys rotate`).
    ///
    /// - Signing: publishes a next key, which signs after the publish-ahead time. With `emergency`,
    ///   the new key signs at once, every other signing key (active, next, retired) is destroyed, so
    ///   tokens they signed stop verifying on every node within one key sync (each node's cache of
    ///   verified tokens is emptied when its keys change), and every bearer session that was issued
    ///   a token while one of them was active is revoked.
    /// - Personal data: a new key becomes active at once and the old one is retired; the
    ///   re-encryption job then moves every row to the new key (a node meeting a value sealed under a
    ///   key it has not loaded reloads the keyring first).
    /// - Blind index: a next key is published, used for lookups by every node from its next key sync,
    ///   and made active [`BLIND_INDEX_PUBLISH_AHEAD_MILLIS`] later by the schedule; the job then
    ///   re-indexes every account.
    pub async fn rotate_key(&self, purpose: KeyPurpose, emergency: bool) -> Result<Rotation, AppError> {
        let now = self.now();
        let stored = self.read_keys().await?;
        let active = stored.iter().find(|k| k.purpose == purpose && k.state == KeyState::Active);
        let rotation = match (purpose, emergency) {
            (KeyPurpose::Audit, true) => {
                return Err(AppError::invalid(
                    "/emergency",
                    "the audit key has no emergency rotation: checkpoints it signed must keep verifying",
                ));
            }
            (KeyPurpose::Signing, false) => {
                if let Some(next) = stored.iter().find(|k| k.purpose == purpose && k.state == KeyState::Next)
                {
                    return Err(AppError::invalid(
                        "/purpose",
                        format!("signing key {} is already published and waiting to sign", next.id),
                    ));
                }
                let key = self.new_key(purpose, KeyState::Next)?;
                let mut tx = self.inner.store.begin().await?;
                tx.insert_key(&key).await.map_err(|e| conflict_as_busy(e, purpose))?;
                let rotation = Rotation {
                    active_from: now.plus_millis(self.inner.settings.keys.signing_publish_ahead_millis),
                    new_key: key.id,
                    old_key: active.map(|k| k.id.clone()),
                    revoked_sessions: 0,
                };
                self.commit_audited(tx, [rotated(purpose, false, &rotation)]).await?;
                rotation
            }
            (KeyPurpose::Signing, true) => {
                // Whoever holds one signing key's secret may hold them all (they share the database
                // and the KEK): every signing key that is not yet destroyed goes, the next one too,
                // read and moved inside the one transaction so a concurrent promotion cannot slip in.
                let key = self.new_key(purpose, KeyState::Active)?;
                let mut tx = self.inner.store.begin().await?;
                let live: Vec<StoredKey> = tx
                    .keys()
                    .await?
                    .into_iter()
                    .filter(|k| k.purpose == KeyPurpose::Signing && k.state != KeyState::Destroyed)
                    .collect();
                for old in &live {
                    if !tx.transition_key(&old.id, old.state, KeyState::Destroyed, now).await? {
                        return Err(conflict_as_busy(StoreError::Conflict { entity: "key" }, purpose));
                    }
                }
                let since = live.iter().map(|k| k.activated_at.unwrap_or(k.created_at)).min();
                let revoked = match since {
                    Some(since) => {
                        tx.revoke_sessions_seen_since(since, now, RevokeReason::SigningKeyCompromised).await?
                    }
                    None => Vec::new(),
                };
                tx.insert_key(&key).await.map_err(|e| conflict_as_busy(e, purpose))?;
                let destroyed: Vec<&str> = live.iter().map(|k| k.id.as_str()).collect();
                let rotation = Rotation {
                    new_key: key.id.clone(),
                    old_key: active.map(|k| k.id.clone()),
                    active_from: now,
                    revoked_sessions: revoked.len() as u64,
                };
                let entry = rotated(purpose, true, &rotation).detail("destroyed", destroyed.clone());
                self.commit_audited(tx, [entry]).await?;
                self.forget_sessions(&revoked, now);
                tracing::warn!(new = %key.id, ?destroyed, revoked = revoked.len(), "emergency signing key rotation");
                rotation
            }
            (KeyPurpose::Pii | KeyPurpose::BlindIndex, true) => {
                return Err(AppError::invalid(
                    "/emergency",
                    "only signing keys have an emergency rotation; data keys are re-encrypted in place",
                ));
            }
            (KeyPurpose::Pii | KeyPurpose::Audit, false) => {
                let key = self.new_key(purpose, KeyState::Active)?;
                let mut tx = self.inner.store.begin().await?;
                if let Some(old) = active {
                    tx.transition_key(&old.id, KeyState::Active, KeyState::Retired, now).await?;
                }
                tx.insert_key(&key).await.map_err(|e| conflict_as_busy(e, purpose))?;
                let rotation = Rotation {
                    new_key: key.id.clone(),
                    old_key: active.map(|k| k.id.clone()),
                    active_from: now,
                    revoked_sessions: 0,
                };
                self.commit_audited(tx, [rotated(purpose, false, &rotation)]).await?;
                tracing::info!(new = %key.id, old = ?active.map(|k| &k.id), purpose = purpose.as_str(), "key rotated");
                rotation
            }
            (KeyPurpose::BlindIndex, false) => {
                if let Some(next) = stored.iter().find(|k| k.purpose == purpose && k.state == KeyState::Next)
                {
                    return Err(AppError::invalid(
                        "/purpose",
                        format!("blind-index key {} is already waiting to become active", next.id),
                    ));
                }
                let key = self.new_key(purpose, KeyState::Next)?;
                let mut tx = self.inner.store.begin().await?;
                tx.insert_key(&key).await.map_err(|e| conflict_as_busy(e, purpose))?;
                let rotation = Rotation {
                    new_key: key.id,
                    old_key: active.map(|k| k.id.clone()),
                    active_from: now.plus_millis(BLIND_INDEX_PUBLISH_AHEAD_MILLIS),
                    revoked_sessions: 0,
                };
                self.commit_audited(tx, [rotated(purpose, false, &rotation)]).await?;
                rotation
            }
        };
        self.install_keys(&self.read_keys().await?)?;
        Ok(rotation)
    }

    /// Re-wraps every keyring key under the active (first configured) KEK in one transaction, so the
    /// older KEKs can be removed from configuration; no data row changes. Returns how many keys it
    /// re-wrapped.
    pub async fn rotate_kek(&self) -> Result<u64, AppError> {
        let keks = &self.inner.settings.keks;
        let mut tx = self.inner.store.begin().await?;
        let stored = tx.keys().await?;
        let mut rewrapped = 0;
        for key in &stored {
            let Some(wrapped) = &key.wrapped else { continue };
            if key.kek_id == keks.active_id() {
                continue;
            }
            let secret = keks.unwrap(wrapped, &key.kek_id, &key.id, key.purpose)?;
            let (kek_id, wrapped) = keks.wrap(&secret, &key.id, key.purpose)?;
            if tx.rewrap_key(&key.id, &kek_id, &wrapped).await? {
                rewrapped += 1;
            }
        }
        let entry = AuditEntry::system("key.kek_rotated")
            .detail("kek_id", keks.active_id())
            .detail("rewrapped", rewrapped);
        self.commit_audited(tx, [entry]).await?;
        self.install_keys(&self.read_keys().await?)?;
        Ok(rewrapped)
    }

    /// How many rows (and blind indexes) still use a retired key and can move off it. Audit events
    /// never move (the chain hashes their ciphertext): they keep a retired key from being
    /// destroyed, not the re-encryption from finishing.
    pub async fn reencryption_remaining(&self) -> Result<u64, AppError> {
        let stored = self.read_keys().await?;
        let mut remaining = 0;
        for key in stored.iter().filter(|k| k.state == KeyState::Retired) {
            remaining += self.rows_under(key, Movable::Only).await?;
        }
        Ok(remaining)
    }

    /// One step of the re-encryption job: up to one batch per table re-sealed under the active
    /// personal-data key, and one batch of blind indexes recomputed with the active blind-index key,
    /// each batch in its own transaction. Reads keep working throughout: every sealed value names
    /// its key. Safe to run on several nodes at once (each row moves once, conditionally).
    pub async fn reencrypt_step(&self) -> Result<Reencryption, AppError> {
        self.reload_keys_if_changed().await?;
        let keys = self.loaded_keys();
        let batch = self.inner.settings.keys.reencrypt_batch.max(1);
        let active = keys.fields.active_pii_id()?.to_owned();
        let mut step = Reencryption::default();
        for table in PiiTable::ALL {
            let mut tx = self.inner.store.begin().await?;
            let rows = tx.pii_rows_not_under(table, &active, batch).await?;
            let mut resealed = 0u64;
            for mut row in rows {
                // One row that does not open (altered, or under a key that is gone) is reported and
                // skipped; it must not stop every other row from moving to the new key.
                match reseal_fields(&keys.fields, table, &row, &active) {
                    Ok(fields) => row.fields = fields,
                    Err(error) => {
                        tracing::error!(table = table.name(), row = %row.id, error = %error, "re-encryption skipped a row that does not open");
                        step.skipped += 1;
                        continue;
                    }
                }
                if tx.reseal_pii_row(table, &row, &active).await? {
                    resealed += 1;
                }
            }
            step.resealed += resealed;
            let entry = (resealed > 0).then(|| {
                AuditEntry::system("key.reencrypted")
                    .target("key", &active)
                    .detail("purpose", KeyPurpose::Pii.as_str())
                    .detail("table", table.name())
                    .detail("rows", resealed)
            });
            self.commit_audited(tx, entry).await?;
        }
        let index_key = keys.fields.active_index_id()?.to_owned();
        let mut tx = self.inner.store.begin().await?;
        let reindexed_before = step.reindexed;
        for user in tx.users_not_indexed_under(&index_key, batch).await? {
            let row = user.id.to_string();
            let index = match keys
                .fields
                .open_text(&user.email, Place { table: PiiTable::Users.name(), column: "email", row: &row })
                .and_then(|email| {
                    portcullis_domain::Email::parse(&email)
                        .map_err(|_| AppError::Internal("a stored email no longer parses".into()))
                })
                .and_then(|email| keys.fields.email_index_under(&index_key, &email))
            {
                Ok(index) => index,
                Err(error) => {
                    tracing::error!(user = %row, error = %error, "re-indexing skipped an account whose address does not open");
                    step.skipped += 1;
                    continue;
                }
            };
            // Another account already indexed under the new key with the same address: two accounts
            // were created for one address during a rotation. Reported for an operator to merge,
            // not written (it would be a conflict, and on PostgreSQL end the batch).
            if tx.user_by_email_index(&index).await?.is_some_and(|other| other.id != user.id) {
                tracing::error!(user = %row, "re-indexing skipped an account whose address another account holds");
                step.skipped += 1;
                continue;
            }
            if tx.reindex_user(user.id, &user.index_key, &index_key, &index).await? {
                step.reindexed += 1;
            }
        }
        let reindexed = step.reindexed - reindexed_before;
        let entry = (reindexed > 0).then(|| {
            AuditEntry::system("key.reencrypted")
                .target("key", &index_key)
                .detail("purpose", KeyPurpose::BlindIndex.as_str())
                .detail("table", PiiTable::Users.name())
                .detail("rows", reindexed)
        });
        self.commit_audited(tx, entry).await?;
        step.remaining = self.reencryption_remaining().await?;
        Ok(step)
    }

    /// The loaded keys.
    pub(crate) fn loaded_keys(&self) -> Arc<LoadedKeys> {
        match self.inner.keys.read() {
            Ok(guard) => guard.clone(),
            // A writer panicked mid-swap; the Arc inside is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether more than one blind-index key can be in use (a rotation is under way), as the
    /// transaction sees the keyring.
    pub(crate) async fn blind_index_in_rotation(&self, tx: &mut dyn StoreTx) -> Result<bool, AppError> {
        let keys = tx.keys().await?;
        Ok(keys.iter().filter(|k| k.purpose == KeyPurpose::BlindIndex && k.wrapped.is_some()).count() > 1)
    }

    /// Installs the keyring as `tx` sees it, if it differs from the loaded one.
    pub(crate) async fn install_keys_from(&self, tx: &mut dyn StoreTx) -> Result<(), AppError> {
        let stored = tx.keys().await?;
        if fingerprint(&stored) != self.loaded_keys().fingerprint {
            self.install_keys(&stored)?;
        }
        Ok(())
    }

    /// The loaded keys, reloaded first (through `tx`, the transaction that read the row) if `pii_key`
    /// is one this node does not hold yet: another node rotated a moment ago.
    pub(crate) async fn keys_holding(
        &self,
        tx: &mut dyn StoreTx,
        pii_key: Option<&str>,
    ) -> Result<Arc<LoadedKeys>, AppError> {
        let keys = self.loaded_keys();
        match pii_key {
            Some(id) if !keys.fields.has_pii(id) => {
                self.install_keys(&tx.keys().await?)?;
                Ok(self.loaded_keys())
            }
            _ => Ok(keys),
        }
    }

    async fn read_keys(&self) -> Result<Vec<StoredKey>, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let stored = tx.keys().await?;
        tx.rollback().await?;
        Ok(stored)
    }

    async fn rows_under(&self, key: &StoredKey, which: Movable) -> Result<u64, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let count = match key.purpose {
            // Audit events keep their sealed fields under the key that sealed them (the chain hashes
            // the ciphertext), so such a key stays until retention purges the events.
            KeyPurpose::Pii => {
                let audit = match which {
                    Movable::Only => 0,
                    Movable::AndAudit => tx.count_audit_rows_under(&key.id).await?,
                };
                tx.count_pii_rows_under(&key.id).await? + audit
            }
            KeyPurpose::BlindIndex => tx.count_users_indexed_under(&key.id).await?,
            KeyPurpose::Signing | KeyPurpose::Audit => 0,
        };
        tx.rollback().await?;
        Ok(count)
    }

    /// Retires `active` and makes `next` active in one transaction, unless another node did first;
    /// returns whether this one did.
    async fn promote(&self, active: &StoredKey, next: &StoredKey, now: Timestamp) -> Result<bool, AppError> {
        let mut tx = self.inner.store.begin().await?;
        if tx.transition_key(&active.id, KeyState::Active, KeyState::Retired, now).await?
            && tx.transition_key(&next.id, KeyState::Next, KeyState::Active, now).await?
        {
            let promoted = AuditEntry::system("key.promoted")
                .target("key", &next.id)
                .detail("purpose", next.purpose.as_str())
                .detail("old_key", active.id.as_str());
            self.commit_audited(tx, [promoted]).await?;
            tracing::info!(new = %next.id, old = %active.id, purpose = next.purpose.as_str(), "key rotated");
            return Ok(true);
        }
        Ok(false)
    }

    /// Inserts a key unless another node inserted its twin first; returns whether this one did.
    async fn insert_key_once(&self, key: StoredKey) -> Result<bool, AppError> {
        let mut tx = self.inner.store.begin().await?;
        match tx.insert_key(&key).await {
            Ok(()) => {
                self.commit_audited(tx, [key_created(&key)]).await?;
                tracing::info!(key = %key.id, purpose = key.purpose.as_str(), state = key.state.as_str(), "key created");
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(other) => Err(other.into()),
        }
    }

    /// A new key of `purpose`, its secret wrapped under the active KEK.
    fn new_key(&self, purpose: KeyPurpose, state: KeyState) -> Result<StoredKey, AppError> {
        let now = self.now();
        let keks = &self.inner.settings.keks;
        let (id, algorithm, secret, public_key) = match purpose {
            KeyPurpose::Signing => {
                let algorithm = self.inner.settings.tokens.algorithm;
                let key = generate_signing_key(algorithm)?;
                (key.kid, algorithm.jws_name().to_owned(), key.pkcs8, Some(key.public))
            }
            KeyPurpose::Pii | KeyPurpose::BlindIndex => {
                let mut secret = Zeroizing::new(vec![0u8; 32]);
                getrandom::fill(secret.as_mut_slice()).map_err(|e| AppError::Internal(Box::new(e)))?;
                let algorithm = if purpose == KeyPurpose::Pii { PII_ALGORITHM } else { INDEX_ALGORITHM };
                (random_key_id(purpose)?, algorithm.to_owned(), secret, None)
            }
            KeyPurpose::Audit => {
                let key = crate::audit::generate_audit_key()?;
                (
                    random_key_id(purpose)?,
                    crate::audit::AUDIT_KEY_ALGORITHM.to_owned(),
                    key.pkcs8,
                    Some(key.public),
                )
            }
        };
        let (kek_id, wrapped) = keks.wrap(&secret, &id, purpose)?;
        Ok(StoredKey {
            id,
            purpose,
            algorithm,
            state,
            kek_id,
            wrapped: Some(wrapped),
            public_key,
            created_at: now,
            activated_at: (state == KeyState::Active).then_some(now),
            retired_at: None,
        })
    }

    /// Unwraps every stored key and builds what this node holds, without installing it.
    fn build_keys(&self, stored: &[StoredKey]) -> Result<LoadedKeys, AppError> {
        let keks = &self.inner.settings.keks;
        let mut fields = FieldKeys::default();
        let mut audit = crate::audit::AuditKeys::default();
        let mut signing_keys: Vec<(&StoredKey, Zeroizing<Vec<u8>>)> = Vec::new();
        for key in stored {
            let Some(wrapped) = &key.wrapped else { continue };
            let secret = keks.unwrap(wrapped, &key.kek_id, &key.id, key.purpose)?;
            let active = key.state == KeyState::Active;
            match key.purpose {
                KeyPurpose::Signing => signing_keys.push((key, secret)),
                KeyPurpose::Pii => fields.add_pii(&key.id, fields::key_bytes(&secret, &key.id)?, active),
                KeyPurpose::BlindIndex => {
                    fields.add_index(&key.id, fields::key_bytes(&secret, &key.id)?, active)
                }
                KeyPurpose::Audit => audit.add(&key.id, &secret, active)?,
            }
        }
        let published: Vec<(&str, &str, &[u8])> = signing_keys
            .iter()
            .map(|(key, pkcs8)| (key.id.as_str(), key.algorithm.as_str(), pkcs8.as_slice()))
            .collect();
        let signer =
            signing_keys.iter().find(|(key, _)| key.state == KeyState::Active).map(|(k, _)| k.id.as_str());
        let signing = Keyring::build(&published, signer)?;
        Ok(LoadedKeys { signing, fields, audit, fingerprint: fingerprint(stored) })
    }

    fn install_keys(&self, stored: &[StoredKey]) -> Result<(), AppError> {
        let keys = Arc::new(self.build_keys(stored)?);
        let changed = keys.fingerprint != self.loaded_keys().fingerprint;
        match self.inner.keys.write() {
            Ok(mut guard) => *guard = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        self.mark_keys_synced();
        if changed {
            // Tokens are cached once verified; a key that stopped verifying must take its tokens
            // (forged ones included, whatever session they name) with it.
            self.inner.verified_tokens.clear();
        }
        Ok(())
    }
}

/// Which rows under a key [`App::rows_under`] counts: those re-encryption moves, or those and the
/// audit events sealed under it (which never move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Movable {
    Only,
    AndAudit,
}

/// `key.created`, by Portcullis itself: the first keys of an installation and the schedule's next
/// signing keys.
fn key_created(key: &StoredKey) -> AuditEntry {
    AuditEntry::system("key.created")
        .target("key", &key.id)
        .detail("purpose", key.purpose.as_str())
        .detail("state", key.state.as_str())
}

/// `key.rotated`: a rotation an operator started (`portcullis keys rotate`, the command line).
fn rotated(purpose: KeyPurpose, emergency: bool, rotation: &Rotation) -> AuditEntry {
    AuditEntry::system("key.rotated")
        .target("key", &rotation.new_key)
        .detail("purpose", purpose.as_str())
        .detail("emergency", emergency)
        .detail("new_key", rotation.new_key.as_str())
        .detail("old_key", rotation.old_key.clone())
        .detail("active_from", rotation.active_from.to_rfc3339())
        .detail("revoked_sessions", rotation.revoked_sessions)
}

/// A row's sealed fields opened and sealed again under `active`.
fn reseal_fields(
    keys: &FieldKeys,
    table: PiiTable,
    row: &portcullis_store::PiiRow,
    active: &str,
) -> Result<Vec<Option<portcullis_store::Sealed>>, AppError> {
    let mut fields = Vec::with_capacity(row.fields.len());
    for (column, field) in table.columns().iter().zip(&row.fields) {
        let place = Place { table: table.name(), column, row: &row.id };
        fields.push(match field {
            Some(sealed) => Some(keys.seal_under(active, &keys.open(sealed, place)?, place)?),
            None => None,
        });
    }
    Ok(fields)
}

fn fingerprint(stored: &[StoredKey]) -> Vec<(String, KeyState, String)> {
    stored.iter().map(|k| (k.id.clone(), k.state, k.kek_id.clone())).collect()
}

/// Another node rotated the same key at the same moment: the caller should look and retry.
fn conflict_as_busy(error: StoreError, purpose: KeyPurpose) -> AppError {
    match error {
        StoreError::Conflict { .. } => AppError::invalid(
            "/purpose",
            format!(
                "another {} rotation happened at the same time; list the keys and retry",
                purpose.as_str()
            ),
        ),
        other => other.into(),
    }
}
