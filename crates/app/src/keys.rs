//! Loading the signing keyring, and creating the first key on a fresh installation.

use std::sync::Arc;

use portcullis_store::StoreError;

use crate::tokens::{Keyring, generate_signing_key};
use crate::{App, AppError};

impl App {
    /// Loads the signing keys, creating the first one if none exists. Safe when nodes start together:
    /// at most one `current` key can be stored, so losers of the race load the winner's key.
    pub async fn load_signing_keys(&self) -> Result<(), AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let mut stored = tx.signing_keys().await?;
        tx.rollback().await?;
        if !stored.iter().any(|k| k.state == "current") {
            let key = generate_signing_key(
                self.inner.settings.tokens.algorithm,
                &self.inner.wrapping_key,
                self.now(),
            )?;
            let mut tx = self.inner.store.begin().await?;
            match tx.insert_signing_key(&key).await {
                Ok(()) => {
                    tx.commit().await?;
                    tracing::debug!(kid = %key.kid, alg = %key.algorithm, "created the first token signing key");
                }
                Err(StoreError::Conflict { .. }) => drop(tx),
                Err(other) => return Err(other.into()),
            }
            let mut tx = self.inner.store.begin_read().await?;
            stored = tx.signing_keys().await?;
            tx.rollback().await?;
        }
        let keyring = Keyring::from_stored(&stored, &self.inner.wrapping_key)?;
        match self.inner.keyring.write() {
            Ok(mut guard) => *guard = Arc::new(keyring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keyring),
        }
        Ok(())
    }

    /// The start-up work that needs a current schema: the instance identity and the signing keys.
    pub async fn finish_bootstrap(&self) -> Result<(), AppError> {
        self.bootstrap_instance().await?;
        self.load_signing_keys().await
    }

    /// Whether a signing key is loaded (a readiness check).
    pub fn can_sign_tokens(&self) -> bool {
        self.keyring().can_sign()
    }

    /// The JSON Web Key Set of every key a live token may carry (RFC 7517).
    pub fn jwks(&self) -> serde_json::Value {
        self.keyring().jwks().clone()
    }
}
