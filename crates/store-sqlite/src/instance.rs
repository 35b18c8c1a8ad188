//! SQLite implementation of the instance aggregate.

use async_trait::async_trait;
use portcullis_domain::{InstanceId, InstanceMeta, Timestamp};
use portcullis_store::{InstanceStore, StoreError};

use crate::SqliteTx;

#[async_trait]
impl InstanceStore for SqliteTx {
    async fn instance(&mut self) -> Result<Option<InstanceMeta>, StoreError> {
        let row: Result<Option<(String, i64, String)>, _> =
            sqlx::query_as("SELECT id, created_at, created_by_version FROM instance WHERE singleton = 1")
                .fetch_optional(&mut *self.tx)
                .await;
        let row = match row {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(|(id, created_at, created_by_version)| {
            Ok(InstanceMeta {
                id: InstanceId::parse(&id)
                    .map_err(|_| StoreError::Corrupt("instance.id is not a uuid".into()))?,
                created_at: Timestamp::from_unix_millis(created_at),
                created_by_version,
            })
        })
        .transpose()
    }

    async fn insert_instance(&mut self, meta: &InstanceMeta) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO instance (singleton, id, created_at, created_by_version) VALUES (1, $1, $2, $3)",
        )
        .bind(meta.id.to_string())
        .bind(meta.created_at.as_unix_millis())
        .bind(&meta.created_by_version)
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("instance")),
        }
    }
}
