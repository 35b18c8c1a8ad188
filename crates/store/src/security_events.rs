//! Security events, recorded in the same transaction as the change that caused them.

use async_trait::async_trait;
use portcullis_domain::UserId;

use crate::StoreError;
use crate::pii::StoredSecurityEvent;

/// Security events.
#[async_trait]
pub trait SecurityEventStore {
    /// Records one event.
    async fn insert_security_event(&mut self, event: &StoredSecurityEvent) -> Result<(), StoreError>;

    /// The newest `limit` events concerning `user`, newest first.
    async fn security_events_of(
        &mut self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError>;
}
