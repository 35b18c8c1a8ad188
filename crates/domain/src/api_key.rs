//! API keys and service accounts: the key's text format (recognisable, self-checking), what a key is
//! allowed, and the non-human accounts that own keys.
//!
//! A key reads `pcs_<id>_<secret><checksum>`: `id` (22 base62 characters, 128 random bits) names
//! the row; `secret` (43 base62 characters, 256 random bits) is never stored, only its SHA-256;
//! `checksum` (6 base62 characters) is the CRC-32 of everything before it, so a secret scanner, and
//! the server before any database read, can tell a mistyped or made-up key from a real one.

use std::fmt;

use crate::{BuiltinRole, DisplayName, OrganizationId, Permission, Timestamp, TokenHash, UserId};

/// Every key starts with this, so scanners (and people) recognise one.
pub const API_KEY_PREFIX: &str = "pcs_";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_CHARS: usize = 22;
const SECRET_CHARS: usize = 43;
const CHECKSUM_CHARS: usize = 6;
/// The length of every key.
pub const API_KEY_LEN: usize = API_KEY_PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS + CHECKSUM_CHARS;

/// Most scopes and allowed networks one key lists.
pub const MAX_KEY_SCOPES: usize = 32;
pub const MAX_KEY_CIDRS: usize = 16;

/// `bytes` (big-endian) in base62, left-padded with `0` to exactly `width` characters; `width` must
/// be enough for the value (callers pass fixed sizes).
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while digits.len() < width {
        // One long division of `number` by 62; the remainder is the next digit.
        let mut remainder = 0u32;
        for byte in &mut number {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = u8::try_from(value / 62).unwrap_or(u8::MAX);
            remainder = value % 62;
        }
        digits.push(ALPHABET[remainder as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn checksum(body: &str) -> String {
    base62(&crc32fast::hash(body.as_bytes()).to_be_bytes(), CHECKSUM_CHARS)
}

/// The public identifier of a key: shown in lists and logs, and the lookup key of its row. Kept as
/// its 22 ASCII characters, so that it is `Copy` like the other identifiers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyId([u8; ID_CHARS]);

impl ApiKeyId {
    /// A new identifier from 16 random bytes supplied by the caller.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        let mut id = [b'0'; ID_CHARS];
        id.copy_from_slice(base62(&bytes, ID_CHARS).as_bytes());
        Self(id)
    }

    /// Parses an identifier: exactly 22 base62 characters.
    pub fn parse(text: &str) -> Result<Self, InvalidApiKey> {
        if !is_base62(text) {
            return Err(InvalidApiKey);
        }
        <[u8; ID_CHARS]>::try_from(text.as_bytes()).map(Self).map_err(|_| InvalidApiKey)
    }

    pub fn as_str(&self) -> &str {
        // Only base62 ASCII is ever stored (see the constructors).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyId({})", self.as_str())
    }
}

/// Text that is not a well-formed key (wrong prefix, length, alphabet or checksum). One error for
/// every reason: the caller learns nothing about how close a guess came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid API key")]
pub struct InvalidApiKey;

/// The full text of a new key, from its identifier and 32 random bytes.
pub fn format_api_key(id: &ApiKeyId, secret: [u8; 32]) -> String {
    let body = format!("{API_KEY_PREFIX}{id}_{}", base62(&secret, SECRET_CHARS));
    let sum = checksum(&body);
    body + &sum
}

/// Whether a bearer credential is meant as an API key (rather than an access token).
pub fn looks_like_api_key(text: &str) -> bool {
    text.starts_with(API_KEY_PREFIX)
}

/// A key as presented: its identifier, and the digest of its secret (the secret itself is not kept).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresentedApiKey {
    pub id: ApiKeyId,
    pub secret_hash: TokenHash,
}

impl fmt::Debug for PresentedApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedApiKey({})", self.id)
    }
}

/// Checks a key's shape and checksum, without any lookup, and splits it. `hash` is the digest the
/// store keeps (SHA-256), passed in so that this crate stays free of hashing.
pub fn parse_api_key(text: &str, hash: impl Fn(&[u8]) -> [u8; 32]) -> Result<PresentedApiKey, InvalidApiKey> {
    if text.len() != API_KEY_LEN || !text.is_ascii() || !text.starts_with(API_KEY_PREFIX) {
        return Err(InvalidApiKey);
    }
    let (body, sum) = text.split_at(API_KEY_LEN - CHECKSUM_CHARS);
    let rest = &body[API_KEY_PREFIX.len()..];
    let (id, secret) = rest.split_at(ID_CHARS);
    let secret = secret.strip_prefix('_').ok_or(InvalidApiKey)?;
    if !is_base62(secret) || !is_base62(sum) || checksum(body) != sum {
        return Err(InvalidApiKey);
    }
    Ok(PresentedApiKey { id: ApiKeyId::parse(id)?, secret_hash: TokenHash(hash(secret.as_bytes())) })
}

/// Who a key acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwner {
    /// A person's account.
    User(UserId),
    /// A service account (its id shares the account id space; see [`ServiceAccount`]).
    ServiceAccount(UserId),
}

impl KeyOwner {
    pub fn id(self) -> UserId {
        match self {
            KeyOwner::User(id) | KeyOwner::ServiceAccount(id) => id,
        }
    }
}

/// An API key as stored (no secret, only digests).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub owner: KeyOwner,
    pub name: DisplayName,
    /// What the key may be used for, within what its owner holds at each use.
    pub scopes: Vec<Permission>,
    /// Networks the key may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub secret_hash: TokenHash,
    /// The secret before the last rotation, and until when it still works.
    pub previous: Option<(TokenHash, Timestamp)>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("scopes", &self.scopes.iter().map(ToString::to_string).collect::<Vec<_>>())
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// Why a presented key does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    WrongSecret,
    Revoked,
    Expired,
    /// The client's address is outside every allowed network.
    OutsideAllowedNetworks,
}

impl ApiKey {
    /// Whether `presented` (the digest of a presented secret) opens this key at `now` from `ip`:
    /// the current secret, or the previous one until its grace period ends; not revoked, not expired,
    /// and from an allowed network. `eq` compares digests in constant time.
    pub fn admits(
        &self,
        presented: &TokenHash,
        ip: Option<std::net::IpAddr>,
        now: Timestamp,
        eq: impl Fn(&TokenHash, &TokenHash) -> bool,
    ) -> Result<(), KeyRefusal> {
        let current = eq(&self.secret_hash, presented);
        let previous =
            self.previous.as_ref().is_some_and(|(hash, until)| eq(hash, presented) && now < *until);
        if !current && !previous {
            return Err(KeyRefusal::WrongSecret);
        }
        if self.revoked_at.is_some() {
            return Err(KeyRefusal::Revoked);
        }
        if now >= self.expires_at {
            return Err(KeyRefusal::Expired);
        }
        if !self.allowed_cidrs.is_empty()
            && !ip.is_some_and(|ip| self.allowed_cidrs.iter().any(|net| net.contains(&ip)))
        {
            return Err(KeyRefusal::OutsideAllowedNetworks);
        }
        Ok(())
    }
}

/// A non-human account: belongs to one organization, holds a built-in role there, authenticates
/// only with API keys. Its id is a [`UserId`] drawn from the same random space as people's, so that
/// `own` grants, the check API's subject and introspection's `sub` treat both alike; the two tables
/// never share an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: UserId,
    pub organization: OrganizationId,
    pub name: DisplayName,
    pub role: BuiltinRole,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn digest(bytes: &[u8]) -> [u8; 32] {
        // A stand-in digest for the tests: the app passes SHA-256.
        let mut out = [0u8; 32];
        for (i, b) in bytes.iter().enumerate() {
            out[i % 32] ^= b.rotate_left((i % 7) as u32);
        }
        out
    }

    fn key(seed: u8) -> (ApiKeyId, String) {
        let id = ApiKeyId::from_random_bytes([seed; 16]);
        let text = format_api_key(&id, [seed.wrapping_mul(7); 32]);
        (id, text)
    }

    #[test]
    fn a_key_has_the_prefix_fixed_length_and_parses_back_to_its_id() {
        for seed in [0u8, 1, 0xff] {
            let (id, text) = key(seed);
            assert_eq!(text.len(), API_KEY_LEN);
            assert!(text.starts_with("pcs_") && looks_like_api_key(&text));
            assert!(text[4..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert_eq!(parse_api_key(&text, digest).unwrap().id, id);
        }
        assert_eq!(base62(&[0xff; 32], SECRET_CHARS).len(), SECRET_CHARS, "256 bits fit in 43 characters");
        assert_eq!(base62(&[0xff; 16], ID_CHARS).len(), ID_CHARS);
        assert_eq!(base62(&[0xff; 4], CHECKSUM_CHARS).len(), CHECKSUM_CHARS);
        assert_eq!(base62(&[0, 0, 0, 61], 2), "0z");
        assert_eq!(base62(&[0, 0, 0, 62], 2), "10");
    }

    #[test]
    fn a_mistyped_forged_or_truncated_key_fails_the_checksum_or_shape() {
        let (_, text) = key(3);
        let mut flipped = text.clone().into_bytes();
        flipped[40] = if flipped[40] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            &text[..text.len() - 1],
            &format!("{text}0"),
            &text.replacen("pcs_", "pck_", 1),
            &text.replacen('_', "-", 2),
            "pcs_",
            "",
        ] {
            assert_eq!(parse_api_key(bad, digest), Err(InvalidApiKey), "{bad:?}");
        }
        // A made-up key of the right shape passes only if its checksum was computed, which a typo
        // or a random guess does not do.
        let body = &text[..API_KEY_LEN - CHECKSUM_CHARS];
        assert_eq!(parse_api_key(&format!("{body}000000"), digest), Err(InvalidApiKey));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,100}") {
            let _ = parse_api_key(&text, digest);
        }

        #[test]
        fn every_generated_key_parses(id in any::<[u8; 16]>(), secret in any::<[u8; 32]>()) {
            let id = ApiKeyId::from_random_bytes(id);
            let text = format_api_key(&id, secret);
            prop_assert_eq!(parse_api_key(&text, digest).unwrap().id, id);
        }
    }
}
