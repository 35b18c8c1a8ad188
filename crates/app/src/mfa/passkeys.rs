//! Passkeys (WebAuthn Level 2, through kanidm's webauthn-rs): registration and assertion ceremonies,
//! their server state kept with a challenge in the database between the two requests of each, so
//! any node finishes what another started. User verification is required, so a passkey is two
//! factors on its own; a signature counter that goes backwards refuses the assertion and raises a
//! security event (a cloned authenticator).

use portcullis_domain::{
    AuthMethods, ChallengePurpose, Email, MfaDeviceId, MfaMethod, UserId, UserStatus, parse_device_name,
};
use portcullis_store::{StoreError, StoreTx, StoredPasskey};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    Url, Uuid, Webauthn, WebauthnBuilder, WebauthnError,
};

use super::RecoveryCodes;
use crate::audit::AuditEntry;
use crate::secret_token::{SecretToken, hash_token, random_id_bytes};
use crate::{App, AppError, LoginMode, Principal};

/// Most passkeys one account may hold.
const MAX_PASSKEYS: usize = 10;

/// The relying party passkeys are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeySettings {
    /// The relying-party id (a registrable domain suffix of the public URL's host); the host itself
    /// when `None`.
    pub rp_id: Option<String>,
    /// The name authenticators show.
    pub rp_name: String,
}

impl Default for PasskeySettings {
    fn default() -> Self {
        Self { rp_id: None, rp_name: "Portcullis".to_owned() }
    }
}

/// A ceremony's options for the browser (`navigator.credentials.create/get`), with the challenge
/// token that finishes it. Its `Debug` shows neither.
pub struct PasskeyOptions {
    pub challenge: SecretToken,
    pub options: serde_json::Value,
}

impl std::fmt::Debug for PasskeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasskeyOptions(..)")
    }
}

/// What an assertion proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assertion {
    Accepted,
    Refused,
    /// The signature counter went backwards: refused, and worth an alert.
    CounterRegressed,
}

/// The WebAuthn relying party for the public URL, or why there is none (an IP address has no
/// domain for passkeys to bind to).
pub(crate) fn relying_party(settings: &PasskeySettings, public_url: &str) -> Result<Webauthn, String> {
    let origin = Url::parse(public_url).map_err(|e| format!("public_url: {e}"))?;
    let host = origin.domain().ok_or("public_url names no domain (passkeys cannot bind to an IP address)")?;
    let rp_id = settings.rp_id.as_deref().unwrap_or(host);
    WebauthnBuilder::new(rp_id, &origin)
        .and_then(|b| b.rp_name(&settings.rp_name).build())
        .map_err(|e| format!("relying party {rp_id}: {e}"))
}

fn user_handle(user: UserId) -> Result<Uuid, AppError> {
    Uuid::parse_str(&user.to_string()).map_err(|e| AppError::Internal(Box::new(e)))
}

fn parse_passkey(stored: &StoredPasskey) -> Result<Passkey, AppError> {
    serde_json::from_str(&stored.credential)
        .map_err(|_| AppError::Internal(format!("passkey {} does not parse", stored.id).into()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, AppError> {
    serde_json::to_string(value).map_err(|e| AppError::Internal(Box::new(e)))
}

/// One or two made-up credentials, fixed by `seed` (a 32-byte digest).
fn decoy_credentials(seed: &[u8]) -> Vec<webauthn_rs_proto::AllowCredentials> {
    use webauthn_rs_proto::{AllowCredentials, AuthenticatorTransport as T};
    let count = 1 + usize::from(seed[0].is_multiple_of(4));
    (0..count)
        .map(|n| {
            let pick = seed[1 + n];
            let length = [16, 20, 32, 64][usize::from(pick % 4)];
            let id = Sha256::new_with_prefix(seed).chain_update([n as u8]).finalize();
            let id: Vec<u8> = id.iter().chain(Sha256::digest(id).iter()).copied().take(length).collect();
            let transports = match pick / 4 % 4 {
                0 => None,
                1 => Some(vec![T::Internal, T::Hybrid]),
                2 => Some(vec![T::Usb, T::Nfc]),
                _ => Some(vec![T::Hybrid, T::Internal]),
            };
            AllowCredentials { type_: "public-key".to_owned(), id, transports }
        })
        .collect()
}

impl App {
    /// The relying-party id passkeys are bound to (as the options name it).
    fn passkey_rp_id(&self) -> Result<String, AppError> {
        let settings = &self.inner.settings;
        if let Some(id) = &settings.mfa.passkeys.rp_id {
            return Ok(id.clone());
        }
        Url::parse(&settings.accounts.public_url)
            .ok()
            .and_then(|url| url.domain().map(str::to_owned))
            .ok_or(AppError::NotAvailable("passkeys need http.public_url to name a domain"))
    }

    fn webauthn(&self) -> Result<&Webauthn, AppError> {
        self.inner.webauthn.as_ref().ok_or(AppError::NotAvailable(
            "passkeys need http.public_url to name a domain (and mfa.passkey_rp_id, if set, to be one of its suffixes)",
        ))
    }

    /// Starts registering a passkey for the caller. Needs a recent authentication.
    pub async fn start_passkey_registration(
        &self,
        principal: &Principal,
    ) -> Result<PasskeyOptions, AppError> {
        let session = principal.require_session()?;
        let webauthn = self.webauthn()?;
        self.require_recent_auth(principal).await?;
        let mut tx = self.inner.store.begin().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let existing = tx.passkeys_of(user.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(AppError::invalid("", "this account already has 10 passkeys; remove one first"));
        }
        let exclude = existing.iter().map(|p| p.credential_id.clone()).collect::<Vec<_>>();
        let display = user.display_name.as_ref().map_or(user.email.as_str(), |n| n.as_str());
        let (options, state) = webauthn
            .start_passkey_registration(user_handle(user.id)?, user.email.as_str(), display, Some(exclude))
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        let proven = tx.session(session).await?.ok_or(AppError::Unauthenticated)?.amr;
        let (challenge, _) = self
            .open_challenge(tx.as_mut(), user.id, ChallengePurpose::PasskeyRegistration(session), proven)
            .await?;
        tx.set_mfa_challenge_ceremony(&challenge.hash(), &to_json(&state)?).await?;
        tx.commit().await?;
        let options = serde_json::to_value(&options).map_err(|e| AppError::Internal(Box::new(e)))?;
        Ok(PasskeyOptions { challenge, options })
    }

    /// Finishes a registration with the authenticator's response. The account's first second
    /// factor comes with its recovery codes.
    pub async fn finish_passkey_registration(
        &self,
        principal: &Principal,
        challenge: &str,
        name: &str,
        credential: serde_json::Value,
    ) -> Result<(MfaDeviceId, Option<RecoveryCodes>), AppError> {
        let session = principal.require_session()?;
        let webauthn = self.webauthn()?;
        // Again at the finish (see `confirm_totp`): the account may have gained a factor since.
        self.require_recent_auth(principal).await?;
        let name = parse_device_name(name).map_err(|e| AppError::invalid("/name", e))?;
        let response: RegisterPublicKeyCredential = serde_json::from_value(credential)
            .map_err(|_| AppError::invalid("/credential", "is not a WebAuthn registration response"))?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let spent =
            tx.spend_mfa_challenge(&hash_token(challenge), now).await?.ok_or(AppError::InvalidToken)?;
        if spent.user_id != principal.user_id
            || spent.purpose != ChallengePurpose::PasskeyRegistration(session).as_str()
            || spent.session_id != Some(session)
        {
            return Err(AppError::InvalidToken);
        }
        let state: PasskeyRegistration = spent
            .ceremony
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or(AppError::InvalidToken)?;
        let passkey = webauthn.finish_passkey_registration(&response, &state).map_err(|e| {
            tracing::info!(error = %e, "passkey registration refused");
            AppError::invalid("/credential", "the authenticator's response does not verify")
        })?;
        let had_factor = self.mfa_inventory(tx.as_mut(), principal.user_id).await?.any();
        // Again here: several registrations may have been started while under the limit.
        if tx.passkeys_of(principal.user_id).await?.len() >= MAX_PASSKEYS {
            return Err(AppError::invalid("", "this account already has 10 passkeys; remove one first"));
        }
        let id = MfaDeviceId::from_random_bytes(random_id_bytes()?);
        let stored = StoredPasskey {
            id,
            user_id: principal.user_id,
            name,
            credential_id: AsRef::<[u8]>::as_ref(passkey.cred_id()).to_vec(),
            credential: to_json(&passkey)?,
            created_at: now,
            last_used_at: None,
        };
        tx.insert_passkey(&stored).await.map_err(|e| match e {
            StoreError::Conflict { .. } => {
                AppError::invalid("/credential", "this passkey is already registered")
            }
            other => other.into(),
        })?;
        let codes = self.after_enrollment(tx.as_mut(), principal, MfaMethod::Passkey, had_factor).await?;
        let entry = AuditEntry::by(principal, "mfa.passkey.registered")
            .target("mfa_device", id)
            .detail("recovery_codes_issued", codes.is_some());
        self.commit_audited(tx, [entry]).await?;
        self.factor_added(principal).await?;
        Ok((id, codes))
    }

    /// Removes a passkey of the caller. Needs a recent authentication; the owner is told by email.
    pub async fn remove_passkey(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        self.remove_factor(principal, id, MfaMethod::Passkey).await
    }

    /// The assertion options for a login's passkey second factor: the ceremony is attached to the
    /// login's challenge, which `POST /v1/auth/mfa/verify` then answers.
    pub async fn login_passkey_options(&self, challenge: &str) -> Result<serde_json::Value, AppError> {
        let webauthn = self.webauthn()?;
        let hash = hash_token(challenge);
        // Read first: a caller with a made-up token must not take the (SQLite) writer.
        let mut tx = self.inner.store.begin_read().await?;
        let open = tx.mfa_challenge(&hash, self.now()).await?.ok_or(AppError::InvalidToken)?;
        tx.rollback().await?;
        let purpose = ChallengePurpose::parse(&open.purpose, open.session_id);
        if !matches!(purpose, Some(ChallengePurpose::LoginBearer | ChallengePurpose::LoginCookie)) {
            return Err(AppError::InvalidToken);
        }
        // A passwordless challenge came with its options; asking again for it must answer as for a
        // made-up one (nothing stored), or the pair would tell which addresses have a passkey.
        if !AuthMethods::parse(&open.amr).is_some_and(|proven| proven.password) {
            return Err(AppError::InvalidToken);
        }
        let mut tx = self.inner.store.begin().await?;
        let options = self.start_assertion(tx.as_mut(), webauthn, open.user_id, &hash).await?;
        tx.commit().await?;
        Ok(options)
    }

    /// Starts a passwordless login with a passkey (when `mfa.passkey_login` is on): assertion options
    /// over the account's passkeys and a login challenge with nothing proven yet, which
    /// `POST /v1/auth/mfa/verify` answers with the assertion (a passkey with user verification is two
    /// factors by itself). An address with no account, or with no passkey, gets options of the same
    /// shape for a made-up credential that no authenticator holds (stable per address), and a token
    /// that matches nothing: the answer never tells which addresses have accounts (ASVS 6.3.8).
    pub async fn start_passkey_login(
        &self,
        email: &str,
        mode: LoginMode,
    ) -> Result<PasskeyOptions, AppError> {
        if !self.inner.settings.mfa.passkey_login {
            return Err(AppError::NotAvailable("passwordless passkey login is off (mfa.passkey_login)"));
        }
        let webauthn = self.webauthn()?;
        let address = Email::parse(email).map_err(|e| AppError::invalid("/email", e))?;
        self.spend_identifier_budget(email).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.find_user_by_email(tx.as_mut(), &address).await?;
        let has_passkey = match &user {
            Some(user) if user.status == UserStatus::Active => !tx.passkeys_of(user.id).await?.is_empty(),
            _ => false,
        };
        tx.rollback().await?;
        let Some(user) = user.filter(|_| has_passkey) else { return self.decoy_passkey_options(&address) };
        let purpose = match mode {
            LoginMode::Bearer => ChallengePurpose::LoginBearer,
            LoginMode::Cookie => ChallengePurpose::LoginCookie,
        };
        let mut tx = self.inner.store.begin().await?;
        let (challenge, _) =
            self.open_challenge(tx.as_mut(), user.id, purpose, AuthMethods::default()).await?;
        let options = self.start_assertion(tx.as_mut(), webauthn, user.id, &challenge.hash()).await?;
        tx.commit().await?;
        Ok(PasskeyOptions { challenge, options })
    }

    /// Options shaped like a real account's, for an address without one (or without a passkey).
    fn decoy_passkey_options(&self, email: &Email) -> Result<PasskeyOptions, AppError> {
        use webauthn_rs_proto::{
            PublicKeyCredentialRequestOptions, RequestChallengeResponse, UserVerificationPolicy,
        };
        // The made-up credentials are the same every time for an address, as real ones would be, and
        // cannot be linked to the address without the blind-index key: how many (one or two), each
        // id's length (as different authenticators choose) and the transports a browser reported
        // are drawn from a digest of its blind index.
        let subject = self.email_subject(email)?;
        let seed = Sha256::new_with_prefix(b"portcullis/passkey-decoy/v1\0").chain_update(subject).finalize();
        let mut challenge = [0u8; 32];
        getrandom::fill(&mut challenge).map_err(|e| AppError::Internal(Box::new(e)))?;
        let options = RequestChallengeResponse {
            public_key: PublicKeyCredentialRequestOptions {
                challenge: challenge.to_vec(),
                timeout: Some(
                    u32::try_from(webauthn_rs::DEFAULT_AUTHENTICATOR_TIMEOUT.as_millis()).unwrap_or(300_000),
                ),
                rp_id: self.passkey_rp_id()?,
                allow_credentials: decoy_credentials(&seed),
                user_verification: UserVerificationPolicy::Required,
                hints: None,
                extensions: None,
            },
            mediation: None,
        };
        let options = serde_json::to_value(&options).map_err(|e| AppError::Internal(Box::new(e)))?;
        Ok(PasskeyOptions { challenge: SecretToken::generate()?, options })
    }

    /// Assertion options for re-authenticating the caller's session with a passkey.
    pub async fn reauthentication_passkey_options(
        &self,
        principal: &Principal,
    ) -> Result<PasskeyOptions, AppError> {
        let session = principal.require_session()?;
        let webauthn = self.webauthn()?;
        let mut tx = self.inner.store.begin().await?;
        let proven = tx.session(session).await?.ok_or(AppError::Unauthenticated)?.amr;
        let (challenge, _) = self
            .open_challenge(
                tx.as_mut(),
                principal.user_id,
                ChallengePurpose::Reauthentication(session),
                proven,
            )
            .await?;
        let options =
            self.start_assertion(tx.as_mut(), webauthn, principal.user_id, &challenge.hash()).await?;
        tx.commit().await?;
        Ok(PasskeyOptions { challenge, options })
    }

    /// Starts an assertion over the account's passkeys and keeps its state with the challenge.
    async fn start_assertion(
        &self,
        tx: &mut dyn StoreTx,
        webauthn: &Webauthn,
        user: UserId,
        challenge: &portcullis_domain::TokenHash,
    ) -> Result<serde_json::Value, AppError> {
        let passkeys =
            tx.passkeys_of(user).await?.iter().map(parse_passkey).collect::<Result<Vec<_>, _>>()?;
        if passkeys.is_empty() {
            return Err(AppError::invalid("/challenge_token", "this account has no passkey"));
        }
        let (options, state) =
            webauthn.start_passkey_authentication(&passkeys).map_err(|e| AppError::Internal(Box::new(e)))?;
        if !tx.set_mfa_challenge_ceremony(challenge, &to_json(&state)?).await? {
            return Err(AppError::InvalidToken);
        }
        serde_json::to_value(&options).map_err(|e| AppError::Internal(Box::new(e)))
    }

    /// Verifies an assertion against the ceremony started for it, and moves the passkey's counter.
    pub(crate) async fn finish_passkey_assertion(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        credential: &serde_json::Value,
        ceremony: &str,
    ) -> Result<Assertion, AppError> {
        let webauthn = self.webauthn()?;
        let Ok(state) = serde_json::from_str::<PasskeyAuthentication>(ceremony) else {
            return Ok(Assertion::Refused);
        };
        let Ok(response) = serde_json::from_value::<PublicKeyCredential>(credential.clone()) else {
            return Ok(Assertion::Refused);
        };
        let result = match webauthn.finish_passkey_authentication(&response, &state) {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => return Ok(Assertion::CounterRegressed),
            Err(error) => {
                tracing::info!(%error, "passkey assertion refused");
                return Ok(Assertion::Refused);
            }
        };
        for stored in tx.passkeys_of(user).await? {
            let mut passkey = parse_passkey(&stored)?;
            if passkey.update_credential(&result).is_some() {
                tx.update_passkey(user, stored.id, &to_json(&passkey)?, self.now()).await?;
                return Ok(Assertion::Accepted);
            }
        }
        // Verified against the ceremony's list, but gone from the account since: removed meanwhile.
        Ok(Assertion::Refused)
    }
}
