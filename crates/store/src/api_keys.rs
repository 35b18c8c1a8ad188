//! Service accounts and API keys. A key's secret is never here: only the SHA-256 of the current
//! secret and, during a rotation's grace period, of the previous one.

use async_trait::async_trait;
use portcullis_domain::{
    ApiKey, ApiKeyId, KeyOwner, OrganizationId, ServiceAccount, Timestamp, TokenHash, UserId,
};

use crate::{Sealed, StoreError};

/// Service accounts and API keys.
#[async_trait]
pub trait ApiKeyStore {
    /// Creates a service account. A name taken in its organization, or a missing organization, is
    /// [`StoreError::Conflict`] with entity `"service_account"`.
    async fn insert_service_account(&mut self, account: &ServiceAccount) -> Result<(), StoreError>;

    /// The service account with this id.
    async fn service_account(&mut self, id: UserId) -> Result<Option<ServiceAccount>, StoreError>;

    /// Up to `limit` service accounts of `organization` (every organization when `None`) with an id
    /// greater than `after`, in id order.
    async fn service_accounts(
        &mut self,
        organization: Option<OrganizationId>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<ServiceAccount>, StoreError>;

    /// Replaces a service account's name, role, status and `updated_at`; returns false if it does not
    /// exist. A name taken in its organization is [`StoreError::Conflict`] with entity
    /// `"service_account"`.
    async fn update_service_account(&mut self, account: &ServiceAccount) -> Result<bool, StoreError>;

    /// Deletes a service account and its keys; returns false if it did not exist.
    async fn delete_service_account(&mut self, id: UserId) -> Result<bool, StoreError>;

    /// Stores a new key. A reused id, or an owner that does not exist, is [`StoreError::Conflict`]
    /// with entity `"api_key"`.
    async fn insert_api_key(&mut self, key: &ApiKey) -> Result<(), StoreError>;

    /// The key with this public id.
    async fn api_key(&mut self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError>;

    /// Every key of `owner`, revoked and expired ones included, newest first.
    async fn api_keys_of(&mut self, owner: KeyOwner) -> Result<Vec<ApiKey>, StoreError>;

    /// How many of `owner`'s keys are neither revoked nor expired at `now`.
    async fn count_live_api_keys_of(&mut self, owner: KeyOwner, now: Timestamp) -> Result<u64, StoreError>;

    /// Replaces a key's secret digest with `secret_hash`, keeping the old one as `previous` until
    /// `previous_until`; only while the key is not revoked. Returns whether it did.
    async fn rotate_api_key(
        &mut self,
        id: &ApiKeyId,
        secret_hash: &TokenHash,
        previous_until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Revokes a key at `at`, if it was not revoked already; returns whether it did.
    async fn revoke_api_key(&mut self, id: &ApiKeyId, at: Timestamp) -> Result<bool, StoreError>;

    /// Records a use: `last_used_at` and the client's ip (sealed under `pii_key`, bound to the key's id
    /// and the column `last_used_ip`), only moving `last_used_at` forward.
    async fn record_api_key_use(
        &mut self,
        id: &ApiKeyId,
        at: Timestamp,
        ip: Option<&Sealed>,
        pii_key: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The sealed ip of a key's last use, with the key that sealed it.
    async fn api_key_last_ip(&mut self, id: &ApiKeyId) -> Result<Option<(Sealed, String)>, StoreError>;
}
