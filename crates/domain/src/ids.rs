//! Identifiers of accounts and sessions: random UUIDs, so they reveal neither order nor count.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Text that is not a valid identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid identifier")]
pub struct InvalidId;

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new identifier from 16 random bytes supplied by the caller (randomness is an input).
            pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
                Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }

            /// Parses the hyphenated text form (as stored, and as it appears in URLs).
            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                // Only the canonical hyphenated form: one id, one spelling (no braces, no urn:).
                if text.len() != 36 {
                    return Err(InvalidId);
                }
                Uuid::try_parse(text).map(Self).map_err(|_| InvalidId)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

random_id!(
    /// One account.
    UserId
);
random_id!(
    /// One login session (a browser cookie or a refresh-token family).
    SessionId
);
random_id!(
    /// One organization (tenant).
    OrganizationId
);
random_id!(
    /// One organization's custom role.
    RoleId
);
random_id!(
    /// One security event (its identity binds its sealed client address to its row).
    SecurityEventId
);
random_id!(
    /// One audit event (its identity binds its sealed client fields to its row).
    AuditEventId
);
random_id!(
    /// One second-factor device of an account: a TOTP authenticator or a passkey.
    MfaDeviceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_text_form_and_reject_other_spellings() {
        let id = UserId::from_random_bytes([7; 16]);
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
        assert_eq!(UserId::parse(&format!("{{{id}}}")), Err(InvalidId));
        assert_eq!(UserId::parse(&id.to_string().replace('-', "")), Err(InvalidId));
        assert_eq!(SessionId::parse("../../etc/passwd"), Err(InvalidId));
    }
}
