//! Failed-login records per account identifier (its blind index), for the lockout rule in
//! `portcullis_domain::lockout`.

use async_trait::async_trait;
use portcullis_domain::{LoginThrottle, Timestamp};

use crate::StoreError;

/// Failed-login records.
#[async_trait]
pub trait LoginThrottleStore {
    /// The record of `subject`, if it has one.
    async fn login_throttle(&mut self, subject: &[u8; 32]) -> Result<Option<LoginThrottle>, StoreError>;

    /// Writes `record`, replacing the subject's previous one.
    async fn save_login_throttle(&mut self, record: &LoginThrottle) -> Result<(), StoreError>;

    /// Forgets the subject's record (a successful login, a password reset, an administrator's unlock);
    /// whether there was one.
    async fn clear_login_throttle(&mut self, subject: &[u8; 32]) -> Result<bool, StoreError>;

    /// Forgets records whose last failure is older than `before` and that are not locked at `now`;
    /// how many.
    async fn purge_login_throttles(&mut self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError>;
}
