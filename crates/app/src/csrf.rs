//! CSRF tokens for cookie sessions (ASVS 3.5.1): an HMAC of the session id under a key derived from
//! the instance secret, so the token is bound to one session, needs no storage, and cannot be made
//! by anyone without the secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use portcullis_domain::SessionId;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::AppError;

/// The key CSRF tokens are made with.
pub(crate) struct CsrfKey([u8; 32]);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl Drop for CsrfKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl CsrfKey {
    pub(crate) fn derive(instance_secret: &SecretSlice<u8>) -> Result<Self, AppError> {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, instance_secret.expose_secret())
            .expand(b"portcullis/csrf/v1", &mut key)
            .map_err(|e| AppError::Internal(format!("hkdf: {e}").into()))?;
        Ok(Self(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail for a 32-byte key.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_mac())
    }

    /// The token for a session.
    pub(crate) fn token_for(&self, session: SessionId) -> String {
        let mut mac = self.mac();
        mac.update(b"csrf:");
        mac.update(session.to_string().as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `presented` is the token for `session`, compared in constant time.
    pub(crate) fn verify(&self, session: SessionId, presented: &str) -> bool {
        self.token_for(session).as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

#[allow(clippy::panic, reason = "HMAC-SHA256 takes keys of every length; this is never reached")]
fn unreachable_mac() -> Hmac<Sha256> {
    panic!("HMAC rejected a 32-byte key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_bound_to_its_session_and_its_secret() {
        let key = CsrfKey::derive(&SecretSlice::from(vec![1u8; 32])).unwrap();
        let other_key = CsrfKey::derive(&SecretSlice::from(vec![2u8; 32])).unwrap();
        let (a, b) = (SessionId::from_random_bytes([1; 16]), SessionId::from_random_bytes([2; 16]));
        let token = key.token_for(a);
        assert!(key.verify(a, &token));
        assert!(!key.verify(b, &token), "another session's token");
        assert!(!other_key.verify(a, &token), "a token made with another secret");
        assert!(!key.verify(a, ""));
        assert!(!key.verify(a, &token[..token.len() - 1]));
    }
}
