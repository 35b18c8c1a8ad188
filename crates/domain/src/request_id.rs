//! Request ids: the value that ties a client's error report to every log line of its request.

use std::fmt;

/// The longest request id accepted from a client.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A request id that is safe to log, echo in a header and store: 1–64 characters of
/// `[A-Za-z0-9._-]`, so it can carry no log-injection, header-splitting or markup.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

/// Why a client-supplied request id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    #[error("request id is empty")]
    Empty,
    #[error("request id is longer than {MAX_REQUEST_ID_LEN} characters")]
    TooLong,
    #[error("request id contains a character outside [A-Za-z0-9._-]")]
    BadCharacter,
}

impl RequestId {
    /// Accepts a client-supplied id if it is well formed.
    pub fn parse(text: &str) -> Result<Self, RequestIdError> {
        if text.is_empty() {
            return Err(RequestIdError::Empty);
        }
        if text.len() > MAX_REQUEST_ID_LEN {
            return Err(RequestIdError::TooLong);
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(RequestIdError::BadCharacter);
        }
        Ok(Self(text.to_owned()))
    }

    /// A fresh id from 16 random bytes supplied by the caller, as 32 lowercase hex characters.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_well_formed_id_is_kept_as_it_is() {
        assert_eq!(RequestId::parse("abc-DEF_1.2").map(|r| r.0), Ok("abc-DEF_1.2".into()));
    }

    #[test]
    fn an_empty_overlong_or_dirty_id_is_refused() {
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        assert_eq!(RequestId::parse(&"a".repeat(65)), Err(RequestIdError::TooLong));
        assert_eq!(RequestId::parse("a\r\nSet-Cookie: x"), Err(RequestIdError::BadCharacter));
        assert_eq!(RequestId::parse("<script>"), Err(RequestIdError::BadCharacter));
        assert_eq!(RequestId::parse("é"), Err(RequestIdError::BadCharacter));
    }

    #[test]
    fn a_generated_id_is_itself_well_formed() {
        let id = RequestId::from_random_bytes([0xab; 16]);
        assert_eq!(RequestId::parse(id.as_str()), Ok(id));
    }

    proptest! {
        #[test]
        fn whatever_is_accepted_is_short_and_from_the_safe_alphabet(s in "\\PC{0,80}") {
            if let Ok(id) = RequestId::parse(&s) {
                prop_assert!(id.as_str().len() <= MAX_REQUEST_ID_LEN);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }

        #[test]
        fn every_id_from_the_safe_alphabet_up_to_64_is_accepted(s in "[A-Za-z0-9._-]{1,64}") {
            prop_assert!(RequestId::parse(&s).is_ok());
        }
    }
}
