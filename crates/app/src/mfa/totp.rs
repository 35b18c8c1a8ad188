//! TOTP authenticators (RFC 6238): enrolled with a secret shown once (text, `otpauth://` URI and QR
//! code), confirmed only by a valid code, stored sealed, and each code accepted once.

use portcullis_domain::{MfaDeviceId, MfaMethod, Timestamp, UserId, parse_device_name};
use portcullis_store::PiiTable;
use portcullis_store::{StoreTx, StoredTotpDevice};
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use super::RecoveryCodes;
use crate::audit::AuditEntry;
use crate::keys::Place;
use crate::secret_token::random_id_bytes;
use crate::{App, AppError, Principal};

/// Bytes of a TOTP seed: 160 bits, the HMAC-SHA-1 block RFC 4226 section 4 recommends.
const SEED_BYTES: usize = 20;

/// Most authenticators (confirmed or waiting) one account may hold.
const MAX_TOTP_DEVICES: usize = 10;

/// An enrollment started but never confirmed is dropped after this long.
const UNCONFIRMED_TTL_MILLIS: i64 = 3_600_000;

/// A TOTP enrollment as its owner sees it once: the secret in every form an app takes. Its `Debug`
/// shows the device id only.
pub struct TotpEnrollment {
    pub id: MfaDeviceId,
    /// The seed in base 32 (RFC 4648), for typing into an app.
    pub secret: SecretString,
    /// `otpauth://totp/...` (the Key Uri Format authenticator apps read).
    pub otpauth_uri: SecretString,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: SecretString,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment").field("id", &self.id).finish_non_exhaustive()
    }
}

fn place(row: &str) -> Place<'_> {
    Place { table: PiiTable::TotpDevices.name(), column: "secret", row }
}

impl App {
    /// The RFC 6238 generator of a seed, with the configured parameters.
    fn totp(&self, seed: &[u8], account: &str) -> Result<Totp, AppError> {
        let params = self.inner.settings.mfa.totp;
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(params.digits)
            .with_skew(u16::from(params.skew_steps))
            .with_step_duration(u64::from(params.period_secs))
            .with_secret(seed.to_vec())
            .with_issuer(Some(self.inner.settings.mfa.issuer.as_str()))
            .with_account_name(account)
            .build()
            .map_err(|e| AppError::Internal(format!("totp: {e}").into()))
    }

    /// Starts enrolling an authenticator app: a fresh seed, shown once. It logs nobody in until
    /// [`App::confirm_totp`] sees a code from it. Needs a recent authentication.
    pub async fn enroll_totp(&self, principal: &Principal, name: &str) -> Result<TotpEnrollment, AppError> {
        principal.require_session()?;
        self.require_recent_auth(principal).await?;
        let name = parse_device_name(name).map_err(|e| AppError::invalid("/name", e))?;
        let mut seed = Zeroizing::new([0u8; SEED_BYTES]);
        getrandom::fill(seed.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
        let id = MfaDeviceId::from_random_bytes(random_id_bytes()?);
        let row = id.to_string();
        let keys = self.loaded_keys();
        let sealed = keys.fields.seal(seed.as_ref(), place(&row))?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        tx.delete_unconfirmed_totp_devices(user.id, now.plus_millis(-UNCONFIRMED_TTL_MILLIS)).await?;
        if tx.totp_devices_of(user.id).await?.len() >= MAX_TOTP_DEVICES {
            return Err(AppError::invalid(
                "/name",
                "this account already has 10 authenticators; remove one first",
            ));
        }
        tx.insert_totp_device(&StoredTotpDevice {
            id,
            user_id: user.id,
            name: name.clone(),
            secret: sealed,
            pii_key: keys.fields.active_pii_id()?.to_owned(),
            created_at: now,
            confirmed_at: None,
            last_used_at: None,
            last_step: None,
        })
        .await?;
        let entry = AuditEntry::by(principal, "mfa.totp.enrollment_started").target("mfa_device", id);
        self.commit_audited(tx, [entry]).await?;
        let totp = self.totp(seed.as_ref(), user.email.as_str())?;
        let uri = totp.to_url().map_err(|e| AppError::Internal(format!("otpauth: {e}").into()))?;
        let qr = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| AppError::Internal(Box::new(e)))?;
        let svg = qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(200, 200).build();
        Ok(TotpEnrollment {
            id,
            secret: SecretString::from(totp_rs::Secret::from(seed.to_vec()).to_base32()),
            otpauth_uri: SecretString::from(uri),
            qr_svg: SecretString::from(svg),
        })
    }

    /// Confirms an enrollment with a code from the new authenticator. The account's first second
    /// factor comes with its recovery codes (shown once, here). A wrong code is a typo more often
    /// than an attack, and the session is already authenticated: it is refused, not counted.
    pub async fn confirm_totp(
        &self,
        principal: &Principal,
        id: &str,
        code: &SecretString,
    ) -> Result<Option<RecoveryCodes>, AppError> {
        principal.require_session()?;
        let id = MfaDeviceId::parse(id).map_err(|_| AppError::NotFound)?;
        // Again, not only when the enrollment started: a password-only session that started one
        // before the owner enrolled their own factor must not finish it now (it would plant its
        // own authenticator and turn itself multi-factor).
        self.require_recent_auth(principal).await?;
        let params = self.inner.settings.mfa.totp;
        let code = params
            .normalize_code(code.expose_secret())
            .ok_or_else(|| AppError::invalid("/code", format!("must be {} digits", params.digits)))?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let devices = tx.totp_devices_of(principal.user_id).await?;
        let device = devices
            .iter()
            .find(|d| d.id == id && d.confirmed_at.is_none())
            // An enrollment left waiting longer than an hour is gone, whether or not swept yet.
            .filter(|d| d.created_at.as_unix_millis() >= now.as_unix_millis() - UNCONFIRMED_TTL_MILLIS)
            .ok_or(AppError::NotFound)?;
        let step = self.matching_step(tx.as_mut(), device, &code, now).await?;
        let Some(step) = step else {
            return Err(AppError::invalid("/code", "is not the current code of this authenticator"));
        };
        let had_factor = self.mfa_inventory(tx.as_mut(), principal.user_id).await?.any();
        if !tx.confirm_totp_device(principal.user_id, id, step, now).await? {
            return Err(AppError::NotFound);
        }
        let codes = self.after_enrollment(tx.as_mut(), principal, MfaMethod::Totp, had_factor).await?;
        let entry = AuditEntry::by(principal, "mfa.totp.enrolled")
            .target("mfa_device", id)
            .detail("recovery_codes_issued", codes.is_some());
        self.commit_audited(tx, [entry]).await?;
        self.factor_added(principal).await?;
        Ok(codes)
    }

    /// Tells the owner a sign-in method was added: if it was not them, someone holding their session
    /// just bound a device of their own to the account.
    pub(crate) async fn factor_added(&self, principal: &Principal) -> Result<(), AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?;
        tx.rollback().await?;
        if let Some(user) = user {
            self.send_later(crate::mail::OutgoingEmail {
                to: user.email,
                subject: "A sign-in method was added".into(),
                text: "An authenticator or passkey was just added to your account. If you did not do \
                       this, reset your password and contact your administrator now.\n"
                    .into(),
            });
        }
        Ok(())
    }

    /// Removes an authenticator. Needs a recent authentication; the owner is told by email.
    pub async fn remove_totp(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        self.remove_factor(principal, id, MfaMethod::Totp).await
    }

    /// Removes a TOTP authenticator or a passkey of the caller. When the last one goes, the recovery
    /// codes (which only back a device up) go with it.
    pub(crate) async fn remove_factor(
        &self,
        principal: &Principal,
        id: &str,
        method: MfaMethod,
    ) -> Result<(), AppError> {
        principal.require_session()?;
        let id = MfaDeviceId::parse(id).map_err(|_| AppError::NotFound)?;
        self.require_recent_auth(principal).await?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let removed = match method {
            MfaMethod::Totp => tx.delete_totp_device(user.id, id).await?,
            MfaMethod::Passkey => tx.delete_passkey(user.id, id).await?,
            MfaMethod::RecoveryCode => false,
        };
        if !removed {
            return Err(AppError::NotFound);
        }
        let left = self.mfa_inventory(tx.as_mut(), user.id).await?;
        if !left.any() {
            tx.replace_recovery_codes(user.id, &[], now).await?;
        }
        let action = match method {
            MfaMethod::Passkey => "mfa.passkey.removed",
            _ => "mfa.totp.removed",
        };
        let entry =
            AuditEntry::by(principal, action).target("mfa_device", id).detail("factors_left", left.any());
        self.commit_audited(tx, [entry]).await?;
        self.send_later(crate::mail::OutgoingEmail {
            to: user.email,
            subject: "A sign-in method was removed".into(),
            text: "An authenticator or passkey was just removed from your account. If you did not do \
                   this, reset your password and contact your administrator now.\n"
                .into(),
        });
        Ok(())
    }

    /// The step a code matches on a device, if any (within the configured skew).
    async fn matching_step(
        &self,
        tx: &mut dyn StoreTx,
        device: &StoredTotpDevice,
        code: &str,
        now: Timestamp,
    ) -> Result<Option<i64>, AppError> {
        let keys = self.keys_holding(tx, Some(&device.pii_key)).await?;
        let seed = keys.fields.open(&device.secret, place(&device.id.to_string()))?;
        let totp = self.totp(&seed, "")?;
        let seconds = u64::try_from(now.as_unix_millis().div_euclid(1000)).unwrap_or(0);
        Ok(totp.check(code, seconds).and_then(|step| i64::try_from(step).ok()))
    }

    /// Accepts a TOTP code of one of the account's confirmed authenticators, once: the step it
    /// matches must be newer than any accepted before on that authenticator (RFC 6238 section 5.2),
    /// and the write that records it is conditional, so a replay races and loses on every node.
    pub(crate) async fn accept_totp_code(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        code: &SecretString,
    ) -> Result<bool, AppError> {
        let Some(code) = self.inner.settings.mfa.totp.normalize_code(code.expose_secret()) else {
            return Ok(false);
        };
        let now = self.now();
        for device in tx.totp_devices_of(user).await?.iter().filter(|d| d.confirmed_at.is_some()) {
            if let Some(step) = self.matching_step(tx, device, &code, now).await?
                && tx.accept_totp_step(user, device.id, step, now).await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
