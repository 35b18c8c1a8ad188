//! PostgreSQL implementation of the keyring.

use async_trait::async_trait;
use portcullis_domain::Timestamp;
use portcullis_store::{KeyPurpose, KeyState, KeyStore, StoreError, StoredKey};

use crate::{PostgresTx, corrupt};

/// A `keyring` row as stored.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    purpose: String,
    algorithm: String,
    state: String,
    kek_id: String,
    wrapped: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    created_at: i64,
    activated_at: Option<i64>,
    retired_at: Option<i64>,
}

impl KeyRow {
    fn into_key(self) -> Result<StoredKey, StoreError> {
        Ok(StoredKey {
            purpose: KeyPurpose::parse(&self.purpose).ok_or_else(|| corrupt("keyring.purpose is unknown"))?,
            state: KeyState::parse(&self.state).ok_or_else(|| corrupt("keyring.state is unknown"))?,
            id: self.id,
            algorithm: self.algorithm,
            kek_id: self.kek_id,
            wrapped: self.wrapped,
            public_key: self.public_key,
            created_at: Timestamp::from_unix_millis(self.created_at),
            activated_at: self.activated_at.map(Timestamp::from_unix_millis),
            retired_at: self.retired_at.map(Timestamp::from_unix_millis),
        })
    }
}

#[async_trait]
impl KeyStore for PostgresTx {
    async fn keys(&mut self) -> Result<Vec<StoredKey>, StoreError> {
        // COLLATE "C": keys made in the same millisecond come back in byte order of their id, as on
        // SQLite, not in the order of the database's locale.
        let rows: Vec<KeyRow> = match sqlx::query_as(
            "SELECT id, purpose, algorithm, state, kek_id, wrapped, public_key, created_at, activated_at, \
             retired_at FROM keyring ORDER BY created_at, id COLLATE \"C\"",
        )
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    async fn insert_key(&mut self, key: &StoredKey) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO keyring (id, purpose, algorithm, state, kek_id, wrapped, public_key, created_at, \
             activated_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&key.id)
        .bind(key.purpose.as_str())
        .bind(&key.algorithm)
        .bind(key.state.as_str())
        .bind(&key.kek_id)
        .bind(key.wrapped.as_deref())
        .bind(key.public_key.as_deref())
        .bind(key.created_at.as_unix_millis())
        .bind(key.activated_at.map(Timestamp::as_unix_millis))
        .bind(key.retired_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            // The id's primary key or a one-active / one-next partial index: another node got there
            // first. At READ COMMITTED a racing insert waits for the first writer's transaction and
            // then fails the index, so the loser learns of the winner instead of adding a second key.
            Err(e) => Err(self.fail(e).conflict_on("key")),
        }
    }

    async fn transition_key(
        &mut self,
        id: &str,
        from: KeyState,
        to: KeyState,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        // Conditional on the from-state: a second node making the same move waits on the first one's
        // row lock, then re-evaluates `state = $2` against the committed row and matches nothing.
        let result = sqlx::query(
            "UPDATE keyring SET state = $3, \
             activated_at = CASE WHEN $3 = 'active' THEN $4 ELSE activated_at END, \
             retired_at = CASE WHEN $3 = 'retired' OR ($3 = 'destroyed' AND retired_at IS NULL) \
                          THEN $4 ELSE retired_at END, \
             wrapped = CASE WHEN $3 = 'destroyed' THEN NULL ELSE wrapped END \
             WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e).conflict_on("key")),
        }
    }

    async fn rewrap_key(&mut self, id: &str, kek_id: &str, wrapped: &[u8]) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE keyring SET kek_id = $2, wrapped = $3 WHERE id = $1 AND wrapped IS NOT NULL")
                .bind(id)
                .bind(kek_id)
                .bind(wrapped)
                .execute(&mut *self.tx)
                .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }
}
