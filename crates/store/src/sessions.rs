//! The session aggregate: sessions and the refresh tokens of bearer sessions.

use async_trait::async_trait;
use portcullis_domain::{RevokeReason, Session, SessionId, Timestamp, TokenHash, UserId};

use crate::StoreError;
use crate::pii::StoredSession;

/// What spending a refresh token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshSpend {
    /// No such token.
    Unknown,
    /// The token was unspent and this caller spent it.
    Spent(SessionId),
    /// The token had already been spent: someone is replaying it.
    AlreadySpent(SessionId),
}

/// One session as its history keeps it, whatever its state, with why it ended early (for the
/// person's data export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub stored: StoredSession,
    /// The stored spelling of why it was revoked ([`RevokeReason::as_str`], or `user_deleted`);
    /// `None` while it is not revoked, or when it was stored revoked without a reason.
    pub revoked_reason: Option<String>,
}

/// Sessions and refresh tokens.
#[async_trait]
pub trait SessionStore {
    /// Creates a session; `cookie` is the hash of a browser session's cookie value.
    async fn insert_session(
        &mut self,
        session: &StoredSession,
        cookie: Option<&TokenHash>,
    ) -> Result<(), StoreError>;

    /// The session with this id, revoked or not.
    async fn session(&mut self, id: SessionId) -> Result<Option<Session>, StoreError>;

    /// The browser session whose cookie hashes to `cookie`.
    async fn session_by_cookie(&mut self, cookie: &TokenHash) -> Result<Option<Session>, StoreError>;

    /// The user's sessions that are not revoked and not past their absolute expiry at `now`, newest
    /// first, with their sealed client details (for the owner's session list).
    async fn sessions_of(&mut self, user: UserId, now: Timestamp) -> Result<Vec<StoredSession>, StoreError>;

    /// Up to `limit` of the user's sessions whatever their state (live, revoked, expired), newest
    /// first (by creation, then id, both descending), starting after `before`: the creation time and
    /// id of the last session of the previous page. For the person's data export.
    async fn session_history(
        &mut self,
        user: UserId,
        before: Option<(Timestamp, SessionId)>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// How many sessions of anyone are neither revoked nor past their absolute expiry at `now` (a
    /// metric).
    async fn count_active_sessions(&mut self, now: Timestamp) -> Result<u64, StoreError>;

    /// Moves `last_seen_at` forward to `at` (never back).
    async fn touch_session(&mut self, id: SessionId, at: Timestamp) -> Result<(), StoreError>;

    /// Revokes one of `user`'s sessions; false when it does not exist, belongs to someone else, or
    /// was already revoked (the three look the same to the caller).
    async fn revoke_session(
        &mut self,
        user: UserId,
        id: SessionId,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<bool, StoreError>;

    /// Revokes every live session of `user` except `keep`; returns how many.
    async fn revoke_sessions_of(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<u64, StoreError>;

    /// Revokes every live bearer session (of any user) last seen at or after `since`: the sessions
    /// that may hold an access token signed by a key active since then (a bearer session is touched
    /// whenever it is issued a token). Returns their ids.
    async fn revoke_sessions_seen_since(
        &mut self,
        since: Timestamp,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<Vec<SessionId>, StoreError>;

    /// Ids of sessions revoked at or after `since`, so other nodes can drop cached access grants.
    async fn sessions_revoked_since(&mut self, since: Timestamp) -> Result<Vec<SessionId>, StoreError>;

    /// Stores a refresh token (its hash) for a bearer session.
    async fn insert_refresh_token(
        &mut self,
        session: SessionId,
        token: &TokenHash,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Spends a refresh token. The write is conditional (`UPDATE ... WHERE spent_at IS NULL`), so of
    /// two concurrent callers on any engine exactly one gets [`RefreshSpend::Spent`] and the other
    /// [`RefreshSpend::AlreadySpent`].
    async fn spend_refresh_token(
        &mut self,
        token: &TokenHash,
        at: Timestamp,
    ) -> Result<RefreshSpend, StoreError>;
}
