//! Personal data at rest: the sealed (encrypted) forms in which the store keeps email addresses,
//! display names, client ips and user agents, and the operations the re-encryption job needs.
//!
//! Sealing happens in `app`; here a sealed value is opaque bytes, and every row that holds any names
//! the keyring key that sealed it (`pii_key`), so rows still under a retired key can be found and
//! re-encrypted in batches.

use async_trait::async_trait;
use portcullis_domain::{BuiltinRole, OneTimeToken, SecurityEvent, Session, Timestamp, UserId, UserStatus};

use crate::StoreError;

/// An encrypted field as `app` produced it (it names its key id and is bound to its row and column).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// An HMAC-SHA256 blind index of a normalized value: equality lookups without the value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BlindIndex(pub [u8; 32]);

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndex(..)")
    }
}

/// A `users` row: the account with its address and name sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub id: UserId,
    pub email: Sealed,
    /// The blind index of the email's case-folded key; unique.
    pub email_index: BlindIndex,
    /// The blind-index key that computed `email_index`.
    pub index_key: String,
    pub display_name: Option<Sealed>,
    /// The keyring key that sealed `email` and `display_name`.
    pub pii_key: String,
    pub email_verified_at: Option<Timestamp>,
    pub status: UserStatus,
    pub role: BuiltinRole,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_login_at: Option<Timestamp>,
}

/// A session with the client's ip and user agent sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub session: Session,
    pub ip: Option<Sealed>,
    pub user_agent: Option<Sealed>,
    /// The key that sealed `ip` and `user_agent`; `None` when neither is present.
    pub pii_key: Option<String>,
}

/// A single-use token with the address an invite went to sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOneTimeToken {
    pub token: OneTimeToken,
    pub email: Option<Sealed>,
    /// The key that sealed `email`; `None` when it is absent.
    pub pii_key: Option<String>,
}

/// A security event with the client's ip sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecurityEvent {
    pub event: SecurityEvent,
    pub ip: Option<Sealed>,
    /// The key that sealed `ip`; `None` when it is absent.
    pub pii_key: Option<String>,
}

/// A person's own data key: 32 random bytes sealed under a keyring key, bound to the person's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPersonKey {
    pub user_id: UserId,
    pub secret: Sealed,
    pub pii_key: String,
    pub created_at: Timestamp,
}

/// The tables that hold sealed personal data, and their sealed columns in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PiiTable {
    Users,
    Sessions,
    OneTimeTokens,
    SecurityEvents,
    ApiKeys,
    /// TOTP seeds are not personal data, but they are secrets sealed under the same keys, and a
    /// retired key must not be destroyed while a seed still needs it.
    TotpDevices,
    /// Each person's own data key (for the audit trail's client details), sealed like the rest.
    PersonKeys,
}

impl PiiTable {
    pub const ALL: [PiiTable; 7] = [
        PiiTable::Users,
        PiiTable::Sessions,
        PiiTable::OneTimeTokens,
        PiiTable::SecurityEvents,
        PiiTable::ApiKeys,
        PiiTable::TotpDevices,
        PiiTable::PersonKeys,
    ];

    /// The table's name: with a column name and the row's id, the associated data a sealed value is
    /// bound to.
    pub const fn name(self) -> &'static str {
        match self {
            PiiTable::Users => "users",
            PiiTable::Sessions => "sessions",
            PiiTable::OneTimeTokens => "one_time_tokens",
            PiiTable::SecurityEvents => "security_events",
            PiiTable::ApiKeys => "api_keys",
            PiiTable::TotpDevices => "mfa_totp_devices",
            PiiTable::PersonKeys => "person_keys",
        }
    }

    /// The sealed columns, in the order of [`PiiRow::fields`].
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            PiiTable::Users => &["email", "display_name"],
            PiiTable::Sessions => &["ip", "user_agent"],
            PiiTable::OneTimeTokens => &["email"],
            PiiTable::SecurityEvents => &["ip"],
            PiiTable::ApiKeys => &["last_used_ip"],
            PiiTable::TotpDevices => &["secret"],
            PiiTable::PersonKeys => &["secret"],
        }
    }
}

/// The sealed fields of one row, for re-encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiRow {
    /// The row's identity as text: the uuid of a user, session or security event; the lowercase hex
    /// of a one-time token's hash; an API key's public id.
    pub id: String,
    /// The key the fields are sealed under.
    pub key: String,
    /// One entry per [`PiiTable::columns`], in that order.
    pub fields: Vec<Option<Sealed>>,
}

/// The re-encryption job's view of personal data.
#[async_trait]
pub trait PiiStore {
    /// Up to `limit` rows of `table` holding data sealed under a key other than `key`.
    async fn pii_rows_not_under(
        &mut self,
        table: PiiTable,
        key: &str,
        limit: u32,
    ) -> Result<Vec<PiiRow>, StoreError>;

    /// Replaces a row's sealed fields with `row.fields` sealed under `to_key`, only if the row is still
    /// sealed under `row.key` (a concurrent writer wins); returns whether it did.
    async fn reseal_pii_row(
        &mut self,
        table: PiiTable,
        row: &PiiRow,
        to_key: &str,
    ) -> Result<bool, StoreError>;

    /// How many rows of every table hold data sealed under `key`.
    async fn count_pii_rows_under(&mut self, key: &str) -> Result<u64, StoreError>;

    /// Up to `limit` users whose blind index was computed with a key other than `key`.
    async fn users_not_indexed_under(&mut self, key: &str, limit: u32)
    -> Result<Vec<StoredUser>, StoreError>;

    /// Replaces a user's blind index, only if it was still computed with `from_key`; returns whether it
    /// did. Another account holding `index` is [`StoreError::Conflict`] with entity `"user"`.
    async fn reindex_user(
        &mut self,
        id: UserId,
        from_key: &str,
        to_key: &str,
        index: &BlindIndex,
    ) -> Result<bool, StoreError>;

    /// How many users have a blind index computed with `key`.
    async fn count_users_indexed_under(&mut self, key: &str) -> Result<u64, StoreError>;
}
