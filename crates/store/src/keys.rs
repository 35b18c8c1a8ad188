//! The keyring: every key Portcullis holds (token signing, personal-data encryption, the blind index,
//! the audit checkpoint key), each wrapped by a key-encryption key that never reaches the database.

use async_trait::async_trait;
use portcullis_domain::Timestamp;

use crate::StoreError;

/// What a key is for. Each purpose has at most one `active` key and at most one `next` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Signs access tokens (the public halves are the JWKS).
    Signing,
    /// Encrypts personal data fields (a data-encryption key).
    Pii,
    /// Keys the HMAC blind index that equality lookups (login by email) use.
    BlindIndex,
    /// Signs audit-trail checkpoints.
    Audit,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 4] =
        [KeyPurpose::Signing, KeyPurpose::Pii, KeyPurpose::BlindIndex, KeyPurpose::Audit];

    /// The stored spelling, also used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Signing => "signing",
            KeyPurpose::Pii => "pii",
            KeyPurpose::BlindIndex => "blind-index",
            KeyPurpose::Audit => "audit",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        KeyPurpose::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Published ahead of use (a signing key in the JWKS before it signs); not used to write yet.
    Next,
    /// The one key of its purpose that signs or encrypts new data.
    Active,
    /// No longer writes; still reads (verifies tokens it signed, decrypts rows not yet re-encrypted).
    Retired,
    /// Its secret material is erased; the row stays as a record.
    Destroyed,
}

impl KeyState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [KeyState::Next, KeyState::Active, KeyState::Retired, KeyState::Destroyed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One keyring entry as stored. `wrapped` is ciphertext produced by `app` under the key-encryption key
/// named `kek_id`; the store never sees a key in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// For signing keys the JWS `kid`; otherwise a random id that ciphertexts name.
    pub id: String,
    pub purpose: KeyPurpose,
    /// `EdDSA`, `ES256`, `XChaCha20-Poly1305`, `HMAC-SHA256`, `Ed25519`.
    pub algorithm: String,
    pub state: KeyState,
    /// Which key-encryption key wrapped `wrapped`.
    pub kek_id: String,
    /// The wrapped secret (nonce and ciphertext); `None` once destroyed.
    pub wrapped: Option<Vec<u8>>,
    /// The public half of a signing key, in the algorithm's raw encoding.
    pub public_key: Option<Vec<u8>>,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub retired_at: Option<Timestamp>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .field("kek_id", &self.kek_id)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// The keyring.
#[async_trait]
pub trait KeyStore {
    /// Every key of every purpose and state, oldest first.
    async fn keys(&mut self) -> Result<Vec<StoredKey>, StoreError>;

    /// Adds a key. A duplicate id, or a second `active` or `next` key of one purpose, is
    /// [`StoreError::Conflict`] with entity `"key"`: that is how nodes starting or rotating together
    /// agree on one key.
    async fn insert_key(&mut self, key: &StoredKey) -> Result<(), StoreError>;

    /// Moves a key from state `from` to `to`, only if it is still in `from` (so two nodes cannot both
    /// make the move); returns whether it did. Entering `active` sets `activated_at`, entering
    /// `retired` sets `retired_at`, entering `destroyed` erases `wrapped` (and sets `retired_at` if it
    /// was unset).
    async fn transition_key(
        &mut self,
        id: &str,
        from: KeyState,
        to: KeyState,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Replaces a key's wrapped secret with one wrapped under another key-encryption key, only if it
    /// still has secret material; returns whether it did. No data row changes.
    async fn rewrap_key(&mut self, id: &str, kek_id: &str, wrapped: &[u8]) -> Result<bool, StoreError>;
}
