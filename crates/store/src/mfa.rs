//! Second factors: TOTP authenticators (their seeds sealed), recovery codes (only their hashes),
//! passkeys (their public keys), the short-lived challenges that join a password to a second factor,
//! and the organizations that require one.

use async_trait::async_trait;
use portcullis_domain::{MfaDeviceId, OrganizationId, SessionId, Timestamp, TokenHash, UserId};

use crate::{Sealed, StoreError};

/// A TOTP authenticator of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTotpDevice {
    pub id: MfaDeviceId,
    pub user_id: UserId,
    /// The owner's name for it, in clear (it is not personal data: "Phone", "YubiKey OTP").
    pub name: String,
    /// The RFC 6238 seed, sealed by `app` under the keyring key `pii_key`, bound to this row.
    pub secret: Sealed,
    pub pii_key: String,
    pub created_at: Timestamp,
    /// `None` until a valid code confirmed the enrollment; an unconfirmed device never logs in.
    pub confirmed_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// The newest time step a code was accepted for: a code of that step or an older one is a replay.
    pub last_step: Option<i64>,
}

/// A passkey (WebAuthn credential) of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    pub id: MfaDeviceId,
    pub user_id: UserId,
    pub name: String,
    /// The credential id the authenticator chose (unique across accounts).
    pub credential_id: Vec<u8>,
    /// The credential as the WebAuthn library serializes it (public key, counter, flags): JSON.
    pub credential: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// A pending second-factor challenge: only the hash of its token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMfaChallenge {
    pub hash: TokenHash,
    pub user_id: UserId,
    /// `ChallengePurpose::as_str`.
    pub purpose: String,
    /// The session a step-up or a registration belongs to.
    pub session_id: Option<SessionId>,
    /// What was already proven (`AuthMethods::as_stored`).
    pub amr: String,
    /// A WebAuthn ceremony's server state (JSON), once one was started for this challenge.
    pub ceremony: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Wrong answers so far.
    pub failures: u32,
}

/// Second factors and their challenges.
#[async_trait]
pub trait MfaStore {
    /// Adds a TOTP authenticator (unconfirmed or confirmed as given).
    async fn insert_totp_device(&mut self, device: &StoredTotpDevice) -> Result<(), StoreError>;

    /// The account's TOTP authenticators, confirmed or not, oldest first.
    async fn totp_devices_of(&mut self, user: UserId) -> Result<Vec<StoredTotpDevice>, StoreError>;

    /// Marks an unconfirmed authenticator of `user` confirmed with its first accepted step; returns
    /// false if it does not exist, belongs to someone else or is already confirmed.
    async fn confirm_totp_device(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        step: i64,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Records that a code of `step` was accepted, only if `step` is newer than every step accepted
    /// before on this confirmed authenticator; returns whether it did. The condition is in the write,
    /// so of two requests racing with the same code on any engine and any node, one wins (RFC 6238
    /// section 5.2: a code is accepted once).
    async fn accept_totp_step(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        step: i64,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Removes an authenticator of `user`; returns false if there was none with that id.
    async fn delete_totp_device(&mut self, user: UserId, id: MfaDeviceId) -> Result<bool, StoreError>;

    /// Removes `user`'s authenticators never confirmed and created before `before`; returns how many.
    async fn delete_unconfirmed_totp_devices(
        &mut self,
        user: UserId,
        before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Replaces the account's recovery codes with these hashes (an empty slice removes them all).
    async fn replace_recovery_codes(
        &mut self,
        user: UserId,
        hashes: &[TokenHash],
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Spends an unused recovery code of `user`; returns whether one matched. Conditional, so a code
    /// is spent once whatever races.
    async fn spend_recovery_code(
        &mut self,
        user: UserId,
        hash: &TokenHash,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// How many unused recovery codes the account has.
    async fn recovery_codes_left(&mut self, user: UserId) -> Result<u64, StoreError>;

    /// Adds a passkey. A credential id already registered (to anyone) is [`StoreError::Conflict`]
    /// with entity `"passkey"`.
    async fn insert_passkey(&mut self, passkey: &StoredPasskey) -> Result<(), StoreError>;

    /// The account's passkeys, oldest first.
    async fn passkeys_of(&mut self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError>;

    /// Replaces a passkey's stored credential (its counter moved) and marks it used; returns false if
    /// `user` has no passkey with that id.
    async fn update_passkey(
        &mut self,
        user: UserId,
        id: MfaDeviceId,
        credential: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Removes a passkey of `user`; returns false if there was none with that id.
    async fn delete_passkey(&mut self, user: UserId, id: MfaDeviceId) -> Result<bool, StoreError>;

    /// Removes every factor of the account (authenticators, passkeys, recovery codes) and its pending
    /// challenges: an administrator's reset for someone who lost their devices. Returns how many
    /// authenticators and passkeys went.
    async fn delete_all_factors(&mut self, user: UserId) -> Result<u64, StoreError>;

    /// Stores a new challenge.
    async fn insert_mfa_challenge(&mut self, challenge: &StoredMfaChallenge) -> Result<(), StoreError>;

    /// The unexpired challenge with this hash, if it is still open at `now`.
    async fn mfa_challenge(
        &mut self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<StoredMfaChallenge>, StoreError>;

    /// Records the WebAuthn ceremony started for an open challenge; returns false if it is gone.
    async fn set_mfa_challenge_ceremony(
        &mut self,
        hash: &TokenHash,
        ceremony: &str,
    ) -> Result<bool, StoreError>;

    /// Counts a wrong answer against an open challenge; the challenge closes when `failures` reaches
    /// `max_failures`. Returns the failures now counted (0 if the challenge is gone).
    async fn fail_mfa_challenge(&mut self, hash: &TokenHash, max_failures: u32) -> Result<u32, StoreError>;

    /// Closes an open, unexpired challenge and returns it; `None` if it is unknown, closed or expired.
    /// Conditional, so of two concurrent callers at most one gets it.
    async fn spend_mfa_challenge(
        &mut self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Option<StoredMfaChallenge>, StoreError>;

    /// Deletes challenges that expired before `before`; returns how many.
    async fn purge_mfa_challenges(&mut self, before: Timestamp) -> Result<u64, StoreError>;

    /// Deletes `user`'s pending login challenges (their password just changed: a login that proved the
    /// old one must not finish); returns how many.
    async fn delete_login_challenges_of(&mut self, user: UserId) -> Result<u64, StoreError>;

    /// Sets whether an organization requires its members to use a second factor; returns false if it
    /// does not exist.
    async fn set_organization_requires_mfa(
        &mut self,
        organization: OrganizationId,
        required: bool,
    ) -> Result<bool, StoreError>;

    /// Whether an organization requires a second factor (`None` if it does not exist).
    async fn organization_requires_mfa(
        &mut self,
        organization: OrganizationId,
    ) -> Result<Option<bool>, StoreError>;

    /// Whether `user` is a member of any organization that requires a second factor.
    async fn member_of_mfa_organization(&mut self, user: UserId) -> Result<bool, StoreError>;

    /// Records a re-authentication (or a login's second factor proven later, or a factor enrolled by
    /// a session that had to): the session's proven methods, its MFA level, when it was proven, and
    /// whether it still must enroll a factor. Only a live (unrevoked) session changes; returns
    /// whether it did.
    async fn set_session_authentication(
        &mut self,
        session: SessionId,
        amr: &str,
        mfa_level: u8,
        authenticated_at: Timestamp,
        enrollment_required: bool,
    ) -> Result<bool, StoreError>;
}
