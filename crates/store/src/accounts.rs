//! The account aggregate: users, their password credential, and the single-use tokens that act on
//! them (email verification, password reset, invites, first-admin setup).

use async_trait::async_trait;
use portcullis_domain::{BuiltinRole, OneTimePurpose, Timestamp, TokenHash, UserId, UserStatus};

use crate::pii::{BlindIndex, StoredOneTimeToken, StoredUser};

use crate::StoreError;

/// Users, password credentials and single-use tokens.
#[async_trait]
pub trait AccountStore {
    /// Creates an account. An account with the same email blind index already existing is
    /// [`StoreError::Conflict`] with entity `"user"`.
    async fn insert_user(&mut self, user: &StoredUser) -> Result<(), StoreError>;

    /// The account with this id.
    async fn user_by_id(&mut self, id: UserId) -> Result<Option<StoredUser>, StoreError>;

    /// The account whose email has this blind index.
    async fn user_by_email_index(&mut self, index: &BlindIndex) -> Result<Option<StoredUser>, StoreError>;

    /// How many accounts exist (to decide whether a first-admin setup token is needed).
    async fn count_users(&mut self) -> Result<u64, StoreError>;

    /// Serializes transactions that create an account depending on how many exist (the first
    /// owner): until this transaction ends, another that takes the lock waits, then sees its
    /// accounts. SQLite's write transactions already run one at a time; PostgreSQL's READ COMMITTED
    /// would otherwise let two of them both count zero.
    async fn lock_users(&mut self) -> Result<(), StoreError>;

    /// Up to `limit` accounts with an id greater than `after` (all when `None`), in id order, of the
    /// given status if one is given: keyset pagination, stable under concurrent inserts.
    async fn list_users(
        &mut self,
        after: Option<UserId>,
        status: Option<UserStatus>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError>;

    /// How many accounts hold `role` with status `active` (the last-owner guard reads this under
    /// [`AccountStore::lock_users`]).
    /// Up to `limit` accounts in creation order (oldest first, or newest first when `newest_first`)
    /// that come after `after` (an account's creation time and id) in that order, of the given status
    /// if one is given. Ties in time are broken by id, so the order is total and pages are stable.
    async fn list_users_by_creation(
        &mut self,
        after: Option<(Timestamp, UserId)>,
        newest_first: bool,
        status: Option<UserStatus>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError>;

    async fn count_active_with_role(&mut self, role: BuiltinRole) -> Result<u64, StoreError>;

    /// Sets an account's status; returns false if it does not exist.
    async fn set_user_status(
        &mut self,
        id: UserId,
        status: UserStatus,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Sets an account's built-in role; returns false if it does not exist.
    async fn set_user_role(
        &mut self,
        id: UserId,
        role: BuiltinRole,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Replaces an account's address (sealed, with its blind index and the index key), name, the key
    /// that sealed them, `email_verified_at` and `updated_at`; returns false if it does not exist.
    /// Another account holding the index is [`StoreError::Conflict`] with entity `"user"`.
    async fn update_user_details(&mut self, user: &crate::StoredUser) -> Result<bool, StoreError>;

    /// Deletes an account and erases what is kept about the person; returns false if it did not
    /// exist. Gone with the row: credentials, single-use tokens, memberships, API keys, MFA
    /// factors and the person's own data key (so the audit events sealed under it no longer open).
    /// Its sessions stay, revoked at `at` (if they were not already) and with their client details
    /// erased, so other nodes learn of the revocation; its security events stay under its id
    /// without their client address; the digests of the addresses it logged in from are deleted.
    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;

    /// The person's own data key (sealed), if one was made.
    async fn person_key(&mut self, user: UserId) -> Result<Option<crate::StoredPersonKey>, StoreError>;

    /// Stores a person's data key unless they already have one or their account does not exist
    /// (never an error: two nodes may race to make the first one, and an erased account gets none);
    /// returns whether it did.
    async fn insert_person_key(&mut self, key: &crate::StoredPersonKey) -> Result<bool, StoreError>;

    /// Records that the owner proved the address; returns false if the account does not exist.
    async fn mark_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;

    /// Records a successful login.
    ///
    /// Only an `active` account's login is recorded; returns false otherwise (missing, disabled or
    /// locked): the login must then be refused. The condition is in the write, so a disable that
    /// commits between the login's read and its write can never leave a session behind.
    async fn record_login(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;

    /// The account's password hash (a PHC or modular-crypt string), if it has a password.
    async fn password_hash(&mut self, user: UserId) -> Result<Option<String>, StoreError>;

    /// Sets (creating or replacing) the account's password hash.
    async fn set_password_hash(&mut self, user: UserId, hash: &str, at: Timestamp) -> Result<(), StoreError>;

    /// Replaces the password hash only if it is still `expected`; returns whether it did. Used for the
    /// transparent re-hash on login, which must never overwrite a password changed meanwhile.
    async fn replace_password_hash(
        &mut self,
        user: UserId,
        expected: &str,
        new: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Stores a new single-use token (only its hash).
    async fn insert_one_time_token(&mut self, token: &StoredOneTimeToken) -> Result<(), StoreError>;

    /// Spends a token of `purpose`: marks it used if it exists, is unused and has not expired at `now`,
    /// and returns it; otherwise `None`. The write is conditional, so of two concurrent callers on any
    /// engine at most one gets the token.
    async fn spend_one_time_token(
        &mut self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        now: Timestamp,
    ) -> Result<Option<StoredOneTimeToken>, StoreError>;

    /// Marks every unused token of `purpose` for `user` as used (a reset link is void once the
    /// password changes); returns how many.
    async fn void_one_time_tokens(
        &mut self,
        user: UserId,
        purpose: OneTimePurpose,
        at: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Whether an unused, unexpired token of `purpose` exists (a setup token is issued only once).
    async fn has_live_one_time_token(
        &mut self,
        purpose: OneTimePurpose,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}
