//! Retention: deleting what has been kept long enough (sessions that ended, security events, accounts
//! whose address was never confirmed). Each purge takes a bounded batch, so one transaction never
//! holds the single SQLite writer for long.

use async_trait::async_trait;
use portcullis_domain::{Timestamp, UserId};

use crate::StoreError;

#[async_trait]
pub trait RetentionStore {
    /// Deletes up to `limit` sessions revoked or past their absolute expiry before `before` (their
    /// refresh tokens go with them); how many.
    async fn purge_ended_sessions(&mut self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Deletes up to `limit` security events recorded before `before`; how many.
    async fn purge_security_events(&mut self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Up to `limit` member accounts created before `before` that never confirmed their address and
    /// never logged in, oldest first.
    async fn unverified_accounts_before(
        &mut self,
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError>;
}
