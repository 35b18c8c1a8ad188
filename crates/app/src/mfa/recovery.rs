//! Recovery codes: ten single-use codes shown once, stored as SHA-256 digests (each has 140 bits,
//! so a password hash would add nothing; ASVS 6.5.2), regenerated as a set.

use portcullis_domain::{
    RECOVERY_CODE_CHARS, RECOVERY_CODE_COUNT, Timestamp, UserId, format_recovery_code,
    normalize_recovery_code,
};
use portcullis_store::StoreTx;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::audit::AuditEntry;
use crate::secret_token::hash_token;
use crate::{App, AppError, Principal};

/// A fresh set of recovery codes, to show once. Its `Debug` shows how many.
pub struct RecoveryCodes(Vec<SecretString>);

impl RecoveryCodes {
    /// The codes as shown to their owner (groups of four, dashed).
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|c| c.expose_secret())
    }
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes({})", self.0.len())
    }
}

/// The stored digest of a code in its canonical form.
fn digest(canonical: &str) -> portcullis_domain::TokenHash {
    hash_token(canonical)
}

impl App {
    /// Replaces the account's recovery codes inside `tx` with a fresh set, and returns it.
    pub(crate) async fn replace_recovery_codes(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        now: Timestamp,
    ) -> Result<RecoveryCodes, AppError> {
        let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
        let mut hashes = Vec::with_capacity(RECOVERY_CODE_COUNT);
        for _ in 0..RECOVERY_CODE_COUNT {
            let mut random = Zeroizing::new([0u8; RECOVERY_CODE_CHARS]);
            getrandom::fill(random.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
            let code = format_recovery_code(&random);
            let canonical = normalize_recovery_code(&code)
                .ok_or_else(|| AppError::Internal("a generated recovery code does not parse".into()))?;
            hashes.push(digest(&canonical));
            codes.push(SecretString::from(code));
        }
        tx.replace_recovery_codes(user, &hashes, now).await?;
        Ok(RecoveryCodes(codes))
    }

    /// Spends a recovery code of the account inside `tx`; whether one matched.
    pub(crate) async fn spend_recovery_code(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        code: &SecretString,
    ) -> Result<bool, AppError> {
        let Some(canonical) = normalize_recovery_code(code.expose_secret()) else { return Ok(false) };
        Ok(tx.spend_recovery_code(user, &digest(&canonical), self.now()).await?)
    }

    /// A new set of recovery codes for the caller; the old set stops working. Needs a recent
    /// authentication and a second factor for the codes to back up.
    pub async fn regenerate_recovery_codes(&self, principal: &Principal) -> Result<RecoveryCodes, AppError> {
        principal.require_session()?;
        self.require_recent_auth(principal).await?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        if !self.mfa_inventory(tx.as_mut(), principal.user_id).await?.any() {
            return Err(AppError::invalid(
                "",
                "recovery codes back up an authenticator or a passkey: enroll one first",
            ));
        }
        let codes = self.replace_recovery_codes(tx.as_mut(), principal.user_id, now).await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let entry =
            AuditEntry::by(principal, "mfa.recovery_codes.regenerated").target("user", principal.user_id);
        self.commit_audited(tx, [entry]).await?;
        self.send_later(crate::mail::OutgoingEmail {
            to: user.email,
            subject: "New recovery codes were made".into(),
            text: "A new set of recovery codes was just made for your account; the old codes no longer \
                   work. If you did not do this, reset your password and contact your administrator now.\n"
                .into(),
        });
        Ok(codes)
    }
}
