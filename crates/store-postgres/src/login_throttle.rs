//! PostgreSQL implementation of the failed-login records.

use async_trait::async_trait;
use portcullis_domain::{LoginThrottle, Timestamp, UserId};
use portcullis_store::{LoginThrottleStore, StoreError};

use crate::{PostgresTx, corrupt};

/// A `login_throttle` row as stored.
#[derive(sqlx::FromRow)]
struct ThrottleRow {
    subject: Vec<u8>,
    failures: i32,
    first_failure_at: i64,
    last_failure_at: i64,
    locked_until: Option<i64>,
    lockouts: i32,
}

impl ThrottleRow {
    fn into_record(self) -> Result<LoginThrottle, StoreError> {
        Ok(LoginThrottle {
            subject: self
                .subject
                .try_into()
                .map_err(|_| corrupt("login_throttle.subject is not 32 bytes"))?,
            failures: u32::try_from(self.failures).map_err(|_| corrupt("login_throttle.failures"))?,
            first_failure_at: Timestamp::from_unix_millis(self.first_failure_at),
            last_failure_at: Timestamp::from_unix_millis(self.last_failure_at),
            locked_until: self.locked_until.map(Timestamp::from_unix_millis),
            lockouts: u32::try_from(self.lockouts).map_err(|_| corrupt("login_throttle.lockouts"))?,
        })
    }
}

#[async_trait]
impl LoginThrottleStore for PostgresTx {
    async fn login_throttle(&mut self, subject: &[u8; 32]) -> Result<Option<LoginThrottle>, StoreError> {
        let row: Option<ThrottleRow> = match sqlx::query_as(
            "SELECT subject, failures, first_failure_at, last_failure_at, locked_until, lockouts \
             FROM login_throttle WHERE subject = $1",
        )
        .bind(subject.as_slice())
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(ThrottleRow::into_record).transpose()
    }

    async fn login_throttle_for_update(
        &mut self,
        subject: &[u8; 32],
    ) -> Result<Option<LoginThrottle>, StoreError> {
        // Two failures at once on two nodes: the second waits for the first's record, so neither
        // count nor lock is lost.
        let row: Option<ThrottleRow> = match sqlx::query_as(
            "SELECT subject, failures, first_failure_at, last_failure_at, locked_until, lockouts \
             FROM login_throttle WHERE subject = $1 FOR UPDATE",
        )
        .bind(subject.as_slice())
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(ThrottleRow::into_record).transpose()
    }

    async fn save_login_throttle(&mut self, record: &LoginThrottle) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO login_throttle \
             (subject, failures, first_failure_at, last_failure_at, locked_until, lockouts) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures, \
             first_failure_at = excluded.first_failure_at, last_failure_at = excluded.last_failure_at, \
             locked_until = excluded.locked_until, lockouts = excluded.lockouts",
        )
        .bind(record.subject.as_slice())
        .bind(i32::try_from(record.failures).unwrap_or(i32::MAX))
        .bind(record.first_failure_at.as_unix_millis())
        .bind(record.last_failure_at.as_unix_millis())
        .bind(record.locked_until.map(|t| t.as_unix_millis()))
        .bind(i32::try_from(record.lockouts).unwrap_or(i32::MAX))
        .execute(&mut *self.tx)
        .await;
        result.map(|_| ()).map_err(|e| self.fail(e))
    }

    async fn clear_login_throttle(&mut self, subject: &[u8; 32]) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM login_throttle WHERE subject = $1")
            .bind(subject.as_slice())
            .execute(&mut *self.tx)
            .await;
        result.map(|r| r.rows_affected() > 0).map_err(|e| self.fail(e))
    }

    async fn purge_login_throttles(&mut self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM login_throttle WHERE last_failure_at < $1 \
             AND (locked_until IS NULL OR locked_until <= $2)",
        )
        .bind(before.as_unix_millis())
        .bind(now.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        result.map(|r| r.rows_affected()).map_err(|e| self.fail(e))
    }

    async fn login_ip_known(&mut self, user: UserId, digest: &[u8; 32]) -> Result<bool, StoreError> {
        let found: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT 1::BIGINT FROM known_login_ips WHERE user_id = $1 AND digest = $2")
                .bind(user.to_string())
                .bind(digest.as_slice())
                .fetch_optional(&mut *self.tx)
                .await;
        match found {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn known_login_ip_count(&mut self, user: UserId) -> Result<u64, StoreError> {
        let count: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM known_login_ips WHERE user_id = $1")
                .bind(user.to_string())
                .fetch_one(&mut *self.tx)
                .await;
        match count {
            Ok(count) => Ok(u64::try_from(count).unwrap_or(0)),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn remember_login_ip(
        &mut self,
        user: UserId,
        digest: &[u8; 32],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let updated =
            sqlx::query("UPDATE known_login_ips SET last_seen_at = $3 WHERE user_id = $1 AND digest = $2")
                .bind(user.to_string())
                .bind(digest.as_slice())
                .bind(now.as_unix_millis())
                .execute(&mut *self.tx)
                .await;
        match updated {
            Ok(result) if result.rows_affected() > 0 => return Ok(true),
            Ok(_) => {}
            Err(e) => return Err(self.fail(e)),
        }
        // Two logins from a new address at once both insert; the second changes nothing.
        let inserted = sqlx::query(
            "INSERT INTO known_login_ips (user_id, digest, first_seen_at, last_seen_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (user_id, digest) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(digest.as_slice())
        .bind(now.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match inserted {
            Ok(result) => Ok(result.rows_affected() == 0),
            Err(e) => Err(self.fail(e)),
        }
    }
}
