//! Bearer secrets: 256 random bits handed out once, stored only as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_domain::TokenHash;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::AppError;

/// A freshly minted bearer secret (refresh token, session cookie, emailed link token, setup token).
#[derive(Debug)]
pub struct SecretToken(SecretString);

impl SecretToken {
    /// 32 bytes from the operating system's CSPRNG, base64url without padding (43 characters).
    pub fn generate() -> Result<Self, AppError> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
        Ok(Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref()))))
    }

    /// The secret, to hand to its holder exactly once.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What the store keeps.
    pub fn hash(&self) -> TokenHash {
        hash_token(self.expose())
    }
}

/// The stored form of a presented secret. Presented text of any shape is hashed as is: a malformed
/// token simply matches nothing, with no parsing on the way (and no timing difference to learn from).
pub fn hash_token(presented: &str) -> TokenHash {
    TokenHash(Sha256::digest(presented.as_bytes()).into())
}

/// 16 random bytes for a new identifier.
pub fn random_id_bytes() -> Result<[u8; 16], AppError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| AppError::Internal(Box::new(e)))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_never_repeat() {
        let a = SecretToken::generate().unwrap();
        let b = SecretToken::generate().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash(), hash_token(a.expose()));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn a_token_does_not_show_in_debug_output() {
        let token = SecretToken::generate().unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
