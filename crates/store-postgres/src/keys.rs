//! PostgreSQL implementation of the signing keyring.

use async_trait::async_trait;
use portcullis_domain::Timestamp;
use portcullis_store::{KeyStore, StoreError, StoredSigningKey};

use crate::PostgresTx;

#[async_trait]
impl KeyStore for PostgresTx {
    async fn signing_keys(&mut self) -> Result<Vec<StoredSigningKey>, StoreError> {
        // COLLATE "C": keys made in the same millisecond come back in byte order of their kid, as on
        // SQLite, not in the order of the database's locale.
        let rows: Vec<(String, String, Vec<u8>, Vec<u8>, i64, String)> = match sqlx::query_as(
            "SELECT kid, algorithm, private_key, public_key, created_at, state FROM signing_keys \
             ORDER BY created_at, kid COLLATE \"C\"",
        )
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        Ok(rows
            .into_iter()
            .map(|(kid, algorithm, private_key, public_key, created_at, state)| StoredSigningKey {
                kid,
                algorithm,
                private_key,
                public_key,
                created_at: Timestamp::from_unix_millis(created_at),
                state,
            })
            .collect())
    }

    async fn insert_signing_key(&mut self, key: &StoredSigningKey) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, state) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(key.private_key.as_slice())
        .bind(key.public_key.as_slice())
        .bind(key.created_at.as_unix_millis())
        .bind(&key.state)
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            // Either the kid's primary key or the one-current-key partial index: both mean another
            // node got there first.
            Err(e) => Err(self.fail(e).conflict_on("signing key")),
        }
    }
}
