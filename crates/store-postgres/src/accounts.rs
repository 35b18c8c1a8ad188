//! PostgreSQL implementation of the account aggregate: users, password credentials, single-use tokens.

use async_trait::async_trait;
use portcullis_domain::{
    BuiltinRole, OneTimePurpose, OneTimeToken, Timestamp, TokenHash, UserId, UserStatus,
};
use portcullis_store::{
    AccountStore, BlindIndex, Sealed, StoreError, StoredOneTimeToken, StoredPersonKey, StoredUser,
};

use crate::{PostgresTx, corrupt};

/// The only credential kind so far; the MFA issue adds others to the same table.
const PASSWORD: &str = "password";

pub(crate) const USER_COLUMNS: &str = "id, email, email_index, index_key, email_verified_at, display_name, \
                                       pii_key, status, role, created_at, updated_at, last_login_at";

/// A `users` row as stored, before its text is parsed back into domain types.
#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    email: Vec<u8>,
    email_index: Vec<u8>,
    index_key: String,
    email_verified_at: Option<i64>,
    display_name: Option<Vec<u8>>,
    pii_key: String,
    status: String,
    role: String,
    created_at: i64,
    updated_at: i64,
    last_login_at: Option<i64>,
}

impl UserRow {
    /// Stored text goes back through the domain parsers, so a row written around this code (or by a
    /// future version with other rules) is reported as corrupt rather than trusted.
    pub(crate) fn into_user(self) -> Result<StoredUser, StoreError> {
        Ok(StoredUser {
            id: UserId::parse(&self.id).map_err(|_| corrupt("users.id is not a uuid"))?,
            email: Sealed(self.email),
            email_index: BlindIndex(
                self.email_index.try_into().map_err(|_| corrupt("users.email_index is not 32 bytes"))?,
            ),
            index_key: self.index_key,
            email_verified_at: self.email_verified_at.map(Timestamp::from_unix_millis),
            display_name: self.display_name.map(Sealed),
            pii_key: self.pii_key,
            status: UserStatus::parse(&self.status).ok_or_else(|| corrupt("users.status is unknown"))?,
            role: BuiltinRole::parse(&self.role).ok_or_else(|| corrupt("users.role is unknown"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            updated_at: Timestamp::from_unix_millis(self.updated_at),
            last_login_at: self.last_login_at.map(Timestamp::from_unix_millis),
        })
    }
}

impl PostgresTx {
    /// The user matching `condition`, a constant predicate on `$1` (never built from input).
    async fn user_where<T>(
        &mut self,
        condition: &'static str,
        value: T,
    ) -> Result<Option<StoredUser>, StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}");
        let row: Option<UserRow> = match sqlx::query_as(&sql).bind(value).fetch_optional(&mut *self.tx).await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(UserRow::into_user).transpose()
    }
}

#[async_trait]
impl AccountStore for PostgresTx {
    async fn insert_user(&mut self, user: &StoredUser) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO users (id, email, email_index, index_key, email_verified_at, display_name, \
             pii_key, status, role, created_at, updated_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(user.id.to_string())
        .bind(user.email.0.as_slice())
        .bind(user.email_index.0.as_slice())
        .bind(&user.index_key)
        .bind(user.email_verified_at.map(Timestamp::as_unix_millis))
        .bind(user.display_name.as_ref().map(|name| name.0.as_slice()))
        .bind(&user.pii_key)
        .bind(user.status.as_str())
        .bind(user.role.as_str())
        .bind(user.created_at.as_unix_millis())
        .bind(user.updated_at.as_unix_millis())
        .bind(user.last_login_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            // The unique blind index is what makes a second spelling of an address a conflict.
            Err(e) => Err(self.fail(e).conflict_on("user")),
        }
    }

    async fn user_by_id(&mut self, id: UserId) -> Result<Option<StoredUser>, StoreError> {
        self.user_where("id = $1", id.to_string()).await
    }

    async fn user_by_email_index(&mut self, index: &BlindIndex) -> Result<Option<StoredUser>, StoreError> {
        self.user_where("email_index = $1", index.0.to_vec()).await
    }

    async fn count_users(&mut self) -> Result<u64, StoreError> {
        let count: i64 = match sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *self.tx).await
        {
            Ok(count) => count,
            Err(e) => return Err(self.fail(e)),
        };
        u64::try_from(count).map_err(|_| corrupt("COUNT(*) of users is negative"))
    }

    async fn lock_users(&mut self) -> Result<(), StoreError> {
        // SHARE ROW EXCLUSIVE conflicts with itself and with every write to users (inserts, and the
        // UPDATE a login makes), not with plain reads: first-owner setups, signups during a
        // blind-index rotation and account administration queue behind each other, and a login's
        // write waits for them (it is short); lookups carry on.
        match sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE").execute(&mut *self.tx).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn list_users(
        &mut self,
        after: Option<UserId>,
        status: Option<UserStatus>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        // COLLATE "C": the same byte order of ids as SQLite, whatever the database's locale.
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users \
             WHERE ($1::text IS NULL OR id COLLATE \"C\" > $1::text) AND ($2::text IS NULL OR status = $2::text) \
             ORDER BY id COLLATE \"C\" LIMIT $3"
        );
        let rows: Vec<UserRow> = match sqlx::query_as(&sql)
            .bind(after.map(|id| id.to_string()))
            .bind(status.map(UserStatus::as_str))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(UserRow::into_user).collect()
    }

    async fn list_users_by_creation(
        &mut self,
        after: Option<(Timestamp, UserId)>,
        newest_first: bool,
        status: Option<UserStatus>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        // Two constant statements (never a direction spliced from input).
        let sql = if newest_first {
            format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE ($1::bigint IS NULL OR (created_at, id COLLATE \"C\") < ($1::bigint, $2::text)) \
                 AND ($3::text IS NULL OR status = $3::text) ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $4"
            )
        } else {
            format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE ($1::bigint IS NULL OR (created_at, id COLLATE \"C\") > ($1::bigint, $2::text)) \
                 AND ($3::text IS NULL OR status = $3::text) ORDER BY created_at, id COLLATE \"C\" LIMIT $4"
            )
        };
        let rows: Vec<UserRow> = match sqlx::query_as(&sql)
            .bind(after.map(|(at, _)| at.as_unix_millis()))
            .bind(after.map(|(_, id)| id.to_string()))
            .bind(status.map(UserStatus::as_str))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(UserRow::into_user).collect()
    }

    async fn count_active_with_role(&mut self, role: BuiltinRole) -> Result<u64, StoreError> {
        let result: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = $1 AND status = 'active'")
                .bind(role.as_str())
                .fetch_one(&mut *self.tx)
                .await;
        match result {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("COUNT(*) of users is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn set_user_status(
        &mut self,
        id: UserId,
        status: UserStatus,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE users SET status = $2, updated_at = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(status.as_str())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn set_user_role(
        &mut self,
        id: UserId,
        role: BuiltinRole,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(role.as_str())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn update_user_details(&mut self, user: &StoredUser) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE users SET email = $2, email_index = $3, index_key = $4, display_name = $5, pii_key = $6, \
             email_verified_at = $7, updated_at = $8 WHERE id = $1",
        )
        .bind(user.id.to_string())
        .bind(user.email.0.as_slice())
        .bind(user.email_index.0.as_slice())
        .bind(user.index_key.as_str())
        .bind(user.display_name.as_ref().map(|name| name.0.as_slice()))
        .bind(user.pii_key.as_str())
        .bind(user.email_verified_at.map(Timestamp::as_unix_millis))
        .bind(user.updated_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e).conflict_on("user")),
        }
    }

    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        // The sessions stay, revoked and without client details, so other nodes see the revocation.
        let sessions = sqlx::query(
            "UPDATE sessions SET ip = NULL, user_agent = NULL, pii_key = NULL, \
             revoked_at = COALESCE(revoked_at, $2), revoked_reason = COALESCE(revoked_reason, 'user_deleted') \
             WHERE user_id = $1",
        )
        .bind(id.to_string())
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        if let Err(e) = sessions {
            return Err(self.fail(e));
        }
        // Security events stay (an attack on the account is still evidence) under the account's id,
        // which nothing maps to a person any more, without the client address; the digests of the
        // addresses the person logged in from go.
        for statement in [
            "UPDATE security_events SET ip = NULL, pii_key = NULL WHERE user_id = $1",
            "DELETE FROM known_login_ips WHERE user_id = $1",
        ] {
            if let Err(e) = sqlx::query(statement).bind(id.to_string()).execute(&mut *self.tx).await {
                return Err(self.fail(e));
            }
        }
        // The cascade takes credentials, tokens, memberships, API keys, MFA factors and the person key.
        let result =
            sqlx::query("DELETE FROM users WHERE id = $1").bind(id.to_string()).execute(&mut *self.tx).await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn person_key(&mut self, user: UserId) -> Result<Option<StoredPersonKey>, StoreError> {
        let row: Result<Option<(Vec<u8>, String, i64)>, _> =
            sqlx::query_as("SELECT secret, pii_key, created_at FROM person_keys WHERE user_id = $1")
                .bind(user.to_string())
                .fetch_optional(&mut *self.tx)
                .await;
        match row {
            Ok(row) => Ok(row.map(|(secret, pii_key, created_at)| StoredPersonKey {
                user_id: user,
                secret: Sealed(secret),
                pii_key,
                created_at: Timestamp::from_unix_millis(created_at),
            })),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn insert_person_key(&mut self, key: &StoredPersonKey) -> Result<bool, StoreError> {
        // Conditional on the account, so an erased account never gets a key back (and the insert
        // never fails on the foreign key, which would abort a PostgreSQL transaction).
        let result = sqlx::query(
            "INSERT INTO person_keys (user_id, secret, pii_key, created_at)              SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)              ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(key.user_id.to_string())
        .bind(key.secret.0.as_slice())
        .bind(&key.pii_key)
        .bind(key.created_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        result.map(|r| r.rows_affected() == 1).map_err(|e| self.fail(e))
    }

    async fn mark_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE users SET email_verified_at = $2, updated_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn record_login(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        // A login is activity, not a change to the account, so updated_at stays.
        let result = sqlx::query("UPDATE users SET last_login_at = $2 WHERE id = $1 AND status = 'active'")
            .bind(id.to_string())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn password_hash(&mut self, user: UserId) -> Result<Option<String>, StoreError> {
        let result = sqlx::query_scalar("SELECT secret FROM credentials WHERE user_id = $1 AND kind = $2")
            .bind(user.to_string())
            .bind(PASSWORD)
            .fetch_optional(&mut *self.tx)
            .await;
        match result {
            Ok(secret) => Ok(secret),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn set_password_hash(&mut self, user: UserId, hash: &str, at: Timestamp) -> Result<(), StoreError> {
        // One statement either way, so two concurrent first-time sets cannot both try to insert.
        let result = sqlx::query(
            "INSERT INTO credentials (user_id, kind, secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (user_id, kind) \
             DO UPDATE SET secret = excluded.secret, updated_at = excluded.updated_at",
        )
        .bind(user.to_string())
        .bind(PASSWORD)
        .bind(hash)
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn replace_password_hash(
        &mut self,
        user: UserId,
        expected: &str,
        new: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        // Compare-and-set in the UPDATE itself: a password changed since `expected` was read is kept.
        let result = sqlx::query(
            "UPDATE credentials SET secret = $4, updated_at = $5 \
             WHERE user_id = $1 AND kind = $2 AND secret = $3",
        )
        .bind(user.to_string())
        .bind(PASSWORD)
        .bind(expected)
        .bind(new)
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn insert_one_time_token(&mut self, stored: &StoredOneTimeToken) -> Result<(), StoreError> {
        let token = &stored.token;
        let result = sqlx::query(
            "INSERT INTO one_time_tokens (hash, purpose, user_id, email, pii_key, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token.hash.0.as_slice())
        .bind(token.purpose.as_str())
        .bind(token.user_id.map(|id| id.to_string()))
        .bind(stored.email.as_ref().map(|email| email.0.as_slice()))
        .bind(stored.pii_key.as_deref())
        .bind(token.created_at.as_unix_millis())
        .bind(token.expires_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("one-time token")),
        }
    }

    async fn spend_one_time_token(
        &mut self,
        hash: &TokenHash,
        purpose: OneTimePurpose,
        now: Timestamp,
    ) -> Result<Option<StoredOneTimeToken>, StoreError> {
        // Check and spend in one conditional statement: at READ COMMITTED a second caller waits on
        // the first one's row lock, then finds used_at set and gets nothing.
        type Row = (Option<String>, Option<Vec<u8>>, Option<String>, i64, i64);
        let row: Option<Row> = match sqlx::query_as(
            "UPDATE one_time_tokens SET used_at = $3 \
             WHERE hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING user_id, email, pii_key, created_at, expires_at",
        )
        .bind(hash.0.as_slice())
        .bind(purpose.as_str())
        .bind(now.as_unix_millis())
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(|(user_id, email, pii_key, created_at, expires_at)| {
            Ok(StoredOneTimeToken {
                token: OneTimeToken {
                    hash: *hash,
                    purpose,
                    user_id: user_id
                        .map(|id| UserId::parse(&id))
                        .transpose()
                        .map_err(|_| corrupt("one_time_tokens.user_id is not a uuid"))?,
                    created_at: Timestamp::from_unix_millis(created_at),
                    expires_at: Timestamp::from_unix_millis(expires_at),
                },
                email: email.map(Sealed),
                pii_key,
            })
        })
        .transpose()
    }

    async fn void_one_time_tokens(
        &mut self,
        user: UserId,
        purpose: OneTimePurpose,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE one_time_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(user.to_string())
        .bind(purpose.as_str())
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn has_live_one_time_token(
        &mut self,
        purpose: OneTimePurpose,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM one_time_tokens \
             WHERE purpose = $1 AND used_at IS NULL AND expires_at > $2)",
        )
        .bind(purpose.as_str())
        .bind(now.as_unix_millis())
        .fetch_one(&mut *self.tx)
        .await;
        match result {
            Ok(live) => Ok(live),
            Err(e) => Err(self.fail(e)),
        }
    }
}
