//! PostgreSQL implementation of retention purges.

use async_trait::async_trait;
use portcullis_domain::{Timestamp, UserId};
use portcullis_store::{RetentionStore, StoreError};

use crate::{PostgresTx, corrupt};

#[async_trait]
impl RetentionStore for PostgresTx {
    async fn purge_ended_sessions(&mut self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        // Refresh tokens go by the foreign key's cascade.
        let result = sqlx::query(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
             WHERE (revoked_at IS NOT NULL AND revoked_at < $1) OR expires_at < $1 LIMIT $2)",
        )
        .bind(before.as_unix_millis())
        .bind(i64::from(limit))
        .execute(&mut *self.tx)
        .await;
        result.map(|r| r.rows_affected()).map_err(|e| self.fail(e))
    }

    async fn purge_security_events(&mut self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM security_events WHERE seq IN \
             (SELECT seq FROM security_events WHERE at < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(before.as_unix_millis())
        .bind(i64::from(limit))
        .execute(&mut *self.tx)
        .await;
        result.map(|r| r.rows_affected()).map_err(|e| self.fail(e))
    }

    async fn unverified_accounts_before(
        &mut self,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        let ids: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT id FROM users WHERE email_verified_at IS NULL AND last_login_at IS NULL \
             AND role = 'member' AND created_at < $1 ORDER BY created_at, id LIMIT $2",
        )
        .bind(before.as_unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await;
        match ids {
            Ok(ids) => ids
                .iter()
                .map(|id| UserId::parse(id).map_err(|_| corrupt("users.id is not a uuid")))
                .collect(),
            Err(e) => Err(self.fail(e)),
        }
    }
}
