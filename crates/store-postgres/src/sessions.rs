//! PostgreSQL implementation of the session aggregate: sessions and the refresh tokens of bearer sessions.

use async_trait::async_trait;
use portcullis_domain::{
    AuthMethods, RevokeReason, Session, SessionId, SessionKind, Timestamp, TokenHash, UserId,
};
use portcullis_store::{RefreshSpend, Sealed, SessionRecord, SessionStore, StoreError, StoredSession};

use crate::{PostgresTx, corrupt};

// A session from before migration 0008 has no `authenticated_at`: its login, at creation, is the
// last time its holder proved who they are.
const SESSION_COLUMNS: &str = "id, user_id, kind, created_at, last_seen_at, expires_at, mfa_level, amr, \
                               COALESCE(authenticated_at, created_at) AS authenticated_at, \
                               mfa_enrollment_required, ip, user_agent, pii_key, revoked_at";

/// A `sessions` row as stored, before its text is parsed back into domain types.
#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    user_id: String,
    kind: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    mfa_level: i32,
    amr: String,
    authenticated_at: i64,
    mfa_enrollment_required: bool,
    ip: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    pii_key: Option<String>,
    revoked_at: Option<i64>,
}

impl SessionRow {
    fn into_session(self) -> Result<StoredSession, StoreError> {
        let session = Session {
            id: session_id(&self.id)?,
            user_id: UserId::parse(&self.user_id).map_err(|_| corrupt("sessions.user_id is not a uuid"))?,
            kind: SessionKind::parse(&self.kind).ok_or_else(|| corrupt("sessions.kind is unknown"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            last_seen_at: Timestamp::from_unix_millis(self.last_seen_at),
            expires_at: Timestamp::from_unix_millis(self.expires_at),
            mfa_level: u8::try_from(self.mfa_level)
                .map_err(|_| corrupt("sessions.mfa_level is out of range"))?,
            amr: AuthMethods::parse(&self.amr)
                .ok_or_else(|| corrupt("sessions.amr holds an unknown method"))?,
            authenticated_at: Timestamp::from_unix_millis(self.authenticated_at),
            mfa_enrollment_required: self.mfa_enrollment_required,
            revoked_at: self.revoked_at.map(Timestamp::from_unix_millis),
        };
        Ok(StoredSession {
            session,
            ip: self.ip.map(Sealed),
            user_agent: self.user_agent.map(Sealed),
            pii_key: self.pii_key,
        })
    }
}

/// A `sessions` row with why it was revoked, for the session history.
#[derive(sqlx::FromRow)]
struct HistoryRow {
    #[sqlx(flatten)]
    row: SessionRow,
    revoked_reason: Option<String>,
}

fn session_id(text: &str) -> Result<SessionId, StoreError> {
    SessionId::parse(text).map_err(|_| corrupt("a stored session id is not a uuid"))
}

impl PostgresTx {
    /// The session matching `condition`, a constant predicate on `$1` (never built from input).
    async fn session_where<T>(
        &mut self,
        condition: &'static str,
        value: T,
    ) -> Result<Option<StoredSession>, StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE {condition}");
        let row: Option<SessionRow> =
            match sqlx::query_as(&sql).bind(value).fetch_optional(&mut *self.tx).await {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        row.map(SessionRow::into_session).transpose()
    }
}

#[async_trait]
impl SessionStore for PostgresTx {
    async fn insert_session(
        &mut self,
        stored: &StoredSession,
        cookie: Option<&TokenHash>,
    ) -> Result<(), StoreError> {
        let session = &stored.session;
        let result = sqlx::query(
            "INSERT INTO sessions (id, user_id, kind, cookie_hash, created_at, last_seen_at, expires_at, \
             mfa_level, amr, authenticated_at, mfa_enrollment_required, ip, user_agent, pii_key, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(session.id.to_string())
        .bind(session.user_id.to_string())
        .bind(session.kind.as_str())
        .bind(cookie.map(|hash| hash.0.as_slice()))
        .bind(session.created_at.as_unix_millis())
        .bind(session.last_seen_at.as_unix_millis())
        .bind(session.expires_at.as_unix_millis())
        .bind(i32::from(session.mfa_level))
        .bind(session.amr.as_stored())
        .bind(session.authenticated_at.as_unix_millis())
        .bind(session.mfa_enrollment_required)
        .bind(stored.ip.as_ref().map(|ip| ip.0.as_slice()))
        .bind(stored.user_agent.as_ref().map(|ua| ua.0.as_slice()))
        .bind(stored.pii_key.as_deref())
        .bind(session.revoked_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("session")),
        }
    }

    async fn session(&mut self, id: SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.session_where("id = $1", id.to_string()).await?.map(|s| s.session))
    }

    async fn session_by_cookie(&mut self, cookie: &TokenHash) -> Result<Option<Session>, StoreError> {
        Ok(self.session_where("cookie_hash = $1", cookie.0.to_vec()).await?.map(|s| s.session))
    }

    async fn sessions_of(&mut self, user: UserId, now: Timestamp) -> Result<Vec<StoredSession>, StoreError> {
        // COLLATE "C" breaks ties byte-wise, as SQLite's BINARY collation does, whatever the
        // database's locale, so both engines list sessions in the same order.
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY created_at DESC, id COLLATE \"C\" DESC"
        );
        let rows: Vec<SessionRow> = match sqlx::query_as(&sql)
            .bind(user.to_string())
            .bind(now.as_unix_millis())
            .fetch_all(&mut *self.tx)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(SessionRow::into_session).collect()
    }

    async fn session_history(
        &mut self,
        user: UserId,
        before: Option<(Timestamp, SessionId)>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Keyset paging on (created_at, id), the order the owner's list uses; ids compare byte-wise
        // (COLLATE "C") as SQLite's BINARY collation does, so both engines page alike.
        let (created, id) = match before {
            Some((created, id)) => (Some(created.as_unix_millis()), Some(id.to_string())),
            None => (None, None),
        };
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, revoked_reason FROM sessions \
             WHERE user_id = $1 \
             AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND id COLLATE \"C\" < $3)) \
             ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $4"
        );
        let rows: Vec<HistoryRow> = match sqlx::query_as(&sql)
            .bind(user.to_string())
            .bind(created)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter()
            .map(|h| Ok(SessionRecord { stored: h.row.into_session()?, revoked_reason: h.revoked_reason }))
            .collect()
    }

    async fn count_active_sessions(&mut self, now: Timestamp) -> Result<u64, StoreError> {
        let count: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1")
                .bind(now.as_unix_millis())
                .fetch_one(&mut *self.tx)
                .await;
        match count {
            Ok(count) => Ok(u64::try_from(count).unwrap_or(0)),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn touch_session(&mut self, id: SessionId, at: Timestamp) -> Result<(), StoreError> {
        // The condition keeps a slow request that finishes late from moving activity backwards.
        let result = sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
            .bind(id.to_string())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn revoke_session(
        &mut self,
        user: UserId,
        id: SessionId,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<bool, StoreError> {
        // Scoped to the owner, so another user's session id looks exactly like a missing one.
        let result = sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .bind(at.as_unix_millis())
        .bind(reason.as_str())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn revoke_sessions_of(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<u64, StoreError> {
        // "Live" as in `sessions_of`: a session past its absolute expiry is already over, and
        // counting it would overstate how many were signed out.
        let result = sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $3 AND ($2 IS NULL OR id <> $2)",
        )
        .bind(user.to_string())
        .bind(keep.map(|id| id.to_string()))
        .bind(at.as_unix_millis())
        .bind(reason.as_str())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn revoke_sessions_seen_since(
        &mut self,
        since: Timestamp,
        at: Timestamp,
        reason: RevokeReason,
    ) -> Result<Vec<SessionId>, StoreError> {
        // One conditional statement: a session revoked meanwhile by another transaction is re-checked
        // after its row lock is released (READ COMMITTED) and keeps its first revocation.
        let ids: Vec<String> = match sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE kind = 'bearer' AND revoked_at IS NULL AND expires_at > $2 AND last_seen_at >= $1 \
             RETURNING id",
        )
        .bind(since.as_unix_millis())
        .bind(at.as_unix_millis())
        .bind(reason.as_str())
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(ids) => ids,
            Err(e) => return Err(self.fail(e)),
        };
        ids.iter().map(|id| session_id(id)).collect()
    }

    async fn sessions_revoked_since(&mut self, since: Timestamp) -> Result<Vec<SessionId>, StoreError> {
        let ids: Vec<String> = match sqlx::query_scalar(
            "SELECT id FROM sessions WHERE revoked_at >= $1 ORDER BY revoked_at, id COLLATE \"C\"",
        )
        .bind(since.as_unix_millis())
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(ids) => ids,
            Err(e) => return Err(self.fail(e)),
        };
        ids.iter().map(|id| session_id(id)).collect()
    }

    async fn insert_refresh_token(
        &mut self,
        session: SessionId,
        token: &TokenHash,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let result =
            sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)")
                .bind(token.0.as_slice())
                .bind(session.to_string())
                .bind(at.as_unix_millis())
                .execute(&mut *self.tx)
                .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("refresh token")),
        }
    }

    async fn spend_refresh_token(
        &mut self,
        token: &TokenHash,
        at: Timestamp,
    ) -> Result<RefreshSpend, StoreError> {
        // The spend is one conditional write, not a read then a write. At READ COMMITTED a second
        // spender blocks on the first one's row lock, then re-evaluates `spent_at IS NULL` against
        // the committed row (PostgreSQL manual, "Read Committed Isolation Level"), matches nothing
        // and falls through to AlreadySpent: exactly one caller gets Spent.
        let spent: Option<String> = match sqlx::query_scalar(
            "UPDATE refresh_tokens SET spent_at = $2 WHERE hash = $1 AND spent_at IS NULL \
             RETURNING session_id",
        )
        .bind(token.0.as_slice())
        .bind(at.as_unix_millis())
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(spent) => spent,
            Err(e) => return Err(self.fail(e)),
        };
        if let Some(session) = spent {
            return Ok(RefreshSpend::Spent(session_id(&session)?));
        }
        let known: Option<String> =
            match sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE hash = $1")
                .bind(token.0.as_slice())
                .fetch_optional(&mut *self.tx)
                .await
            {
                Ok(known) => known,
                Err(e) => return Err(self.fail(e)),
            };
        match known {
            Some(session) => Ok(RefreshSpend::AlreadySpent(session_id(&session)?)),
            None => Ok(RefreshSpend::Unknown),
        }
    }
}
