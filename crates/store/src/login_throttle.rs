//! Failed-login records per account identifier (its blind index), for the lockout rule in
//! `portcullis_domain::lockout`, and the addresses (as keyed digests) administrators log in from.

use async_trait::async_trait;
use portcullis_domain::{LoginThrottle, Timestamp, UserId};

use crate::StoreError;

/// Failed-login records.
#[async_trait]
pub trait LoginThrottleStore {
    /// The record of `subject`, if it has one.
    async fn login_throttle(&mut self, subject: &[u8; 32]) -> Result<Option<LoginThrottle>, StoreError>;

    /// The record of `subject`, locked against concurrent writers until the transaction ends where
    /// the engine needs it (SQLite's write transactions are serialized already).
    async fn login_throttle_for_update(
        &mut self,
        subject: &[u8; 32],
    ) -> Result<Option<LoginThrottle>, StoreError> {
        self.login_throttle(subject).await
    }

    /// Writes `record`, replacing the subject's previous one.
    async fn save_login_throttle(&mut self, record: &LoginThrottle) -> Result<(), StoreError>;

    /// Forgets the subject's record (a successful login, a password reset, an administrator's unlock);
    /// whether there was one.
    async fn clear_login_throttle(&mut self, subject: &[u8; 32]) -> Result<bool, StoreError>;

    /// Forgets records whose last failure is older than `before` and that are not locked at `now`;
    /// how many.
    async fn purge_login_throttles(&mut self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError>;

    /// Whether `user` has logged in from the address with this digest before.
    async fn login_ip_known(&mut self, user: UserId, digest: &[u8; 32]) -> Result<bool, StoreError>;

    /// How many login addresses are known for `user`.
    async fn known_login_ip_count(&mut self, user: UserId) -> Result<u64, StoreError>;

    /// Records that `user` logged in from the address with this digest at `now`; whether it was
    /// known already.
    async fn remember_login_ip(
        &mut self,
        user: UserId,
        digest: &[u8; 32],
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}
