//! Bearer secrets as stored: only their SHA-256, never the secret itself.

use crate::{Timestamp, UserId};

/// The SHA-256 digest of a bearer secret (refresh token, cookie, emailed link, invite, setup token).
///
/// A database leak yields digests of 256-bit random values, which cannot be turned back into secrets;
/// a plain hash (not a password hash) is enough because the input has full entropy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The lowercase hex spelling: how a stored token's row is named where a text identity is needed
    /// (the associated data of its sealed address, the re-encryption job's row ids).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`TokenHash::to_hex`]'s spelling (64 hex digits, either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not secret, but it is a lookup key for one: keep it out of logs all the same.
        f.write_str("TokenHash(..)")
    }
}

/// What a single-use emailed or logged token is for. One table holds them all; the purpose is part
/// of every lookup so a token minted for one purpose is useless for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneTimePurpose {
    /// Proves the account owner receives mail at its address (24 h).
    VerifyEmail,
    /// Lets the owner set a new password (30 min).
    PasswordReset,
    /// Lets one person sign up while signups are invite-only.
    Invite,
    /// Creates the first administrator on a fresh installation (1 h).
    Setup,
}

impl OneTimePurpose {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OneTimePurpose::VerifyEmail => "verify_email",
            OneTimePurpose::PasswordReset => "password_reset",
            OneTimePurpose::Invite => "invite",
            OneTimePurpose::Setup => "setup",
        }
    }

    /// How long a token of this purpose stays valid.
    pub fn lifetime_millis(self) -> i64 {
        match self {
            OneTimePurpose::VerifyEmail => 24 * 3_600_000,
            OneTimePurpose::PasswordReset => 30 * 60_000,
            OneTimePurpose::Invite => 7 * 24 * 3_600_000,
            OneTimePurpose::Setup => 3_600_000,
        }
    }
}

/// A single-use token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeToken {
    pub hash: TokenHash,
    pub purpose: OneTimePurpose,
    /// The account it acts on (verify, reset); `None` for invites and setup.
    pub user_id: Option<UserId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hash_round_trips_through_its_hex_spelling_and_nothing_else_parses() {
        let hash = TokenHash([0xab; 32]);
        assert_eq!(hash.to_hex(), "ab".repeat(32));
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32), &format!("{}é", "a".repeat(62))] {
            assert_eq!(TokenHash::from_hex(bad), None, "{bad:?}");
        }
    }
}
