//! Signing keys for access tokens, stored with the private half encrypted.

use async_trait::async_trait;
use portcullis_domain::Timestamp;

use crate::StoreError;

/// One signing key as stored. The private key is ciphertext produced by `app`; the store never sees
/// it in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// The JWS `kid`.
    pub kid: String,
    /// The JWS `alg` (`EdDSA`, `ES256`).
    pub algorithm: String,
    /// The encrypted private key (nonce and ciphertext).
    pub private_key: Vec<u8>,
    /// The public key, in the algorithm's raw encoding.
    pub public_key: Vec<u8>,
    pub created_at: Timestamp,
    /// `current` (signs new tokens; at most one) or `retired` (verifies only).
    pub state: String,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The signing keyring.
#[async_trait]
pub trait KeyStore {
    /// Every signing key, oldest first.
    async fn signing_keys(&mut self) -> Result<Vec<StoredSigningKey>, StoreError>;

    /// Adds a key. A second `current` key, or a duplicate `kid`, is [`StoreError::Conflict`] with
    /// entity `"signing key"`: that is how nodes starting together agree on one key.
    async fn insert_signing_key(&mut self, key: &StoredSigningKey) -> Result<(), StoreError>;
}
