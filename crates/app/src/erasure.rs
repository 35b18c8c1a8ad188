//! Erasure of a person (GDPR art. 17, docs/decisions/0013-erasure.md): the account goes with
//! everything kept about the person, and the audit events that recorded their requests keep only
//! the account's id, a pseudonym that nothing maps to anyone any more, with the client address and
//! user agent sealed under the person's own key, which the erasure destroys (crypto-shredding). The
//! chain hashed the ciphertext, so it still verifies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_domain::{ActorKind, Email, RevokeReason, UserId};
use portcullis_store::{PiiTable, StoreTx, StoredPersonKey};
use zeroize::Zeroizing;

use crate::audit::AuditEntry;
use crate::keys::{Place, key_bytes};
use crate::sessions::revoke_sessions_in;
use crate::{App, AppError, Principal, PrincipalKind};

/// A person's own data key, opened.
pub(crate) type PersonKey = Arc<Zeroizing<[u8; 32]>>;

/// The person keys a batch of audit records is sealed with, by person.
pub(crate) type PersonKeyMap = HashMap<UserId, PersonKey>;

/// A node serving more distinct people than this opens some keys twice.
const PERSON_KEYS_MAX: usize = 10_000;

/// Person keys this node has opened, so that recording an event costs no read of the key. An entry
/// of an account erased on another node may linger: the events it seals then are sealed under a key
/// that no longer exists, which is what erasure wants anyway.
#[derive(Default)]
pub(crate) struct PersonKeys {
    entries: Mutex<HashMap<UserId, PersonKey>>,
}

impl std::fmt::Debug for PersonKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("PersonKeys").field("held", &held).finish_non_exhaustive()
    }
}

impl PersonKeys {
    fn get(&self, user: UserId) -> Option<PersonKey> {
        self.entries.lock().ok()?.get(&user).cloned()
    }

    fn insert(&self, user: UserId, key: PersonKey) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= PERSON_KEYS_MAX {
            entries.clear();
        }
        entries.insert(user, key);
    }

    fn forget(&self, user: UserId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&user);
        }
    }
}

/// The key id a value sealed under a person's key names, and the audit row's `pii_key`.
pub(crate) fn person_key_id(user: UserId) -> String {
    format!("person:{user}")
}

/// The person a value named `id` is sealed for, if `id` names a person key.
pub(crate) fn person_of_key_id(id: &str) -> Option<UserId> {
    id.strip_prefix("person:").and_then(|user| UserId::parse(user).ok())
}

/// The person whose client details an audit entry records: the user acting through a session or
/// one of their API keys, or, for a caller not yet known to be anyone (a signup, a login, a reset
/// by link), the account the request was about. That last one may be someone else trying the
/// person's account: their address goes too when the person is erased, which erasure accepts (the
/// security events keep the attempt itself). Service accounts, applications and the system are
/// nobody's personal data; their requests stay under the shared key and age out with the trail.
pub(crate) fn requester(entry: &AuditEntry) -> Option<UserId> {
    let actor = &entry.actor;
    let about_a_user = || match &entry.target {
        Some((kind, id)) if kind == "user" => Some(id.as_str()),
        _ => None,
    };
    let id = match actor.kind {
        ActorKind::User => actor.id.as_deref(),
        ActorKind::ApiKey => actor.on_behalf_of.as_deref(),
        ActorKind::Anonymous => about_a_user(),
        _ => None,
    }?;
    UserId::parse(id).ok()
}

fn place(row: &str) -> Place<'_> {
    Place { table: PiiTable::PersonKeys.name(), column: "secret", row }
}

impl App {
    /// The person's own key, made on first use when `create` (which needs a write transaction);
    /// `None` when the person has none and none may be made, or no longer exists.
    pub(crate) async fn person_key_in(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        create: bool,
    ) -> Result<Option<PersonKey>, AppError> {
        if let Some(key) = self.inner.person_keys.get(user) {
            return Ok(Some(key));
        }
        let row = user.to_string();
        let stored = match tx.person_key(user).await? {
            Some(stored) => stored,
            None if !create => return Ok(None),
            None => {
                let mut secret = Zeroizing::new([0u8; 32]);
                getrandom::fill(secret.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
                let keys = self.loaded_keys();
                let stored = StoredPersonKey {
                    user_id: user,
                    secret: keys.fields.seal(secret.as_ref(), place(&row))?,
                    pii_key: keys.fields.active_pii_id()?.to_owned(),
                    created_at: self.now(),
                };
                if !tx.insert_person_key(&stored).await? {
                    // Another node made it first, or the account is gone.
                    return match tx.person_key(user).await? {
                        Some(theirs) => self.open_person_key(tx, user, &theirs).await.map(Some),
                        None => Ok(None),
                    };
                }
                stored
            }
        };
        self.open_person_key(tx, user, &stored).await.map(Some)
    }

    async fn open_person_key(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        stored: &StoredPersonKey,
    ) -> Result<PersonKey, AppError> {
        let keys = self.keys_holding(tx, Some(&stored.pii_key)).await?;
        let secret = keys.fields.open(&stored.secret, place(&user.to_string()))?;
        let key = Arc::new(key_bytes(&secret, "person key")?);
        self.inner.person_keys.insert(user, key.clone());
        Ok(key)
    }

    /// The keys of the people whose requests `entries` record, made where missing, inside `tx`.
    pub(crate) async fn person_keys_for(
        &self,
        tx: &mut dyn StoreTx,
        entries: &[AuditEntry],
    ) -> Result<PersonKeyMap, AppError> {
        let mut keys = PersonKeyMap::new();
        for user in entries.iter().filter_map(requester) {
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(user)
                && let Some(key) = self.person_key_in(tx, user, true).await?
            {
                slot.insert(key);
            }
        }
        Ok(keys)
    }

    /// The same for events recorded outside a transaction of the caller's: a read finds existing
    /// keys, and only a person's first event opens a write to make one.
    pub(crate) async fn person_keys_outside(&self, entries: &[AuditEntry]) -> Result<PersonKeyMap, AppError> {
        let mut keys = PersonKeyMap::new();
        for user in entries.iter().filter_map(requester) {
            if keys.contains_key(&user) {
                continue;
            }
            if let Some(key) = self.inner.person_keys.get(user) {
                keys.insert(user, key);
                continue;
            }
            let mut tx = self.inner.store.begin_read().await?;
            let found = self.person_key_in(tx.as_mut(), user, false).await?;
            tx.rollback().await?;
            let key = match found {
                Some(key) => Some(key),
                None => {
                    let mut tx = self.inner.store.begin().await?;
                    let made = self.person_key_in(tx.as_mut(), user, true).await?;
                    tx.commit().await?;
                    made
                }
            };
            if let Some(key) = key {
                keys.insert(user, key);
            }
        }
        Ok(keys)
    }

    /// The person's key as an opener of their audit events' client details: `None` once erased.
    /// The key's row is read every time (the cache serves sealing only): an erasure on another node
    /// deletes it there, and this node's cache must not go on opening what the erasure shredded.
    pub(crate) async fn person_key_to_open(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
    ) -> Result<Option<PersonKey>, AppError> {
        let Some(stored) = tx.person_key(user).await? else {
            self.inner.person_keys.forget(user);
            return Ok(None);
        };
        match self.inner.person_keys.get(user) {
            Some(key) => Ok(Some(key)),
            None => self.open_person_key(tx, user, &stored).await.map(Some),
        }
    }

    /// Erases the caller's own account (`DELETE /v1/me`): a person's login session that proved
    /// itself recently, as for the export; an API key cannot (a leaked key must not be able to
    /// destroy an account), nor a service account (it is no person). The last active owner cannot
    /// leave the installation without one.
    pub async fn erase_own_account(&self, principal: &Principal) -> Result<(), AppError> {
        principal.require_session()?;
        if principal.kind != PrincipalKind::Person {
            return Err(AppError::Forbidden("a service account is deleted by an administrator".into()));
        }
        self.require_recent_auth(principal).await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        if user.role == portcullis_domain::BuiltinRole::Owner {
            self.keep_an_owner(tx.as_mut(), &user).await?;
        }
        let entry = AuditEntry::by(principal, "user.deleted")
            .target("user", user.id)
            .detail("role", user.role.as_str())
            .detail("via", "self");
        self.erase_in(tx, &user.id, &user.email, entry).await?;
        tracing::info!(user = %user.id, "account erased by its owner");
        Ok(())
    }

    /// Deletes the account in `tx` with everything kept about the person (see
    /// `AccountStore::delete_user`), clears the lockout counters kept under its address's blind
    /// indexes, records `entry` and commits. The entry's own client details are sealed under the
    /// person's key when the person made the request, so they go with the rest.
    pub(crate) async fn erase_in(
        &self,
        mut tx: Box<dyn StoreTx>,
        id: &UserId,
        email: &Email,
        entry: AuditEntry,
    ) -> Result<(), AppError> {
        let id = *id;
        let now = self.now();
        // Before the delete: the key goes with the account, and the record must be sealed under it.
        let keys = self.person_keys_for(tx.as_mut(), std::slice::from_ref(&entry)).await?;
        let revoked = revoke_sessions_in(tx.as_mut(), id, None, RevokeReason::UserRevoked, now).await?;
        for index in self.loaded_keys().fields.email_indexes(email) {
            tx.clear_login_throttle(&index.0).await?;
        }
        tx.delete_user(id, now).await?;
        let entry = entry.detail("revoked_sessions", revoked.len());
        self.commit_records(tx, [entry], &keys).await?;
        self.forget_sessions(&revoked, now);
        self.inner.profiles.forget(id);
        self.inner.person_keys.forget(id);
        Ok(())
    }
}
