//! Multi-factor login: a second factor after the password (TOTP, a recovery code, a passkey), the
//! policy that makes one mandatory, and step-up (recent authentication) for sensitive actions.
//!
//! A login whose password is right, for an account with a second factor, opens no session: it
//! answers with a short-lived challenge (a random token, stored as its SHA-256) that
//! [`App::complete_login_mfa`] exchanges for a session once a factor is proven. Wrong factors count
//! toward the account identifier's lockout like wrong passwords, and close the challenge after
//! [`MfaSettings::max_challenge_failures`].

mod passkeys;
mod recovery;
mod totp;

use portcullis_domain::{
    AuthMethods, ChallengePurpose, MfaDeviceId, MfaMethod, MfaPolicy, OrganizationId, Outcome, Resource,
    SecurityEventKind, SessionId, Timestamp, TotpParams, User, UserId, UserStatus,
};
use portcullis_store::{StoreTx, StoredMfaChallenge};
use secrecy::SecretString;

pub(crate) use passkeys::{Assertion, relying_party};
pub use passkeys::{PasskeyOptions, PasskeySettings};
pub use recovery::RecoveryCodes;
pub use totp::TotpEnrollment;

use crate::audit::AuditEntry;
use crate::secret_token::{SecretToken, hash_token};
use crate::sessions::{LoginMode, LoginOutcome, user_actor};
use crate::{App, AppError, ClientContext, Principal};

/// Second-factor rules chosen by configuration.
#[derive(Debug, Clone)]
pub struct MfaSettings {
    pub totp: TotpParams,
    /// The issuer authenticator apps show beside the account (`otpauth://` `issuer`).
    pub issuer: String,
    /// Who must use a second factor (organizations add theirs through the API).
    pub policy: MfaPolicy,
    /// How long a login's second-factor challenge stays open (5 minutes).
    pub challenge_ttl_secs: i64,
    /// Wrong answers after which a challenge closes (the password must be entered again).
    pub max_challenge_failures: u32,
    /// How recent a session's last authentication must be for sensitive actions (10 minutes).
    pub reauthentication_max_age_secs: i64,
    pub passkeys: PasskeySettings,
    /// Whether a passkey alone may log in (no password): `POST /v1/auth/passkey/options`.
    pub passkey_login: bool,
}

impl Default for MfaSettings {
    fn default() -> Self {
        Self {
            totp: TotpParams::default(),
            issuer: "Portcullis".to_owned(),
            policy: MfaPolicy::default(),
            challenge_ttl_secs: 300,
            max_challenge_failures: 5,
            reauthentication_max_age_secs: 600,
            passkeys: PasskeySettings::default(),
            passkey_login: false,
        }
    }
}

/// A second factor as presented.
pub enum SecondFactor {
    /// A TOTP code.
    Totp(SecretString),
    /// A recovery code.
    RecoveryCode(SecretString),
    /// A WebAuthn assertion (the browser's `PublicKeyCredential`, as JSON).
    Passkey(serde_json::Value),
}

impl std::fmt::Debug for SecondFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method().as_str())
    }
}

impl SecondFactor {
    pub fn method(&self) -> MfaMethod {
        match self {
            SecondFactor::Totp(_) => MfaMethod::Totp,
            SecondFactor::RecoveryCode(_) => MfaMethod::RecoveryCode,
            SecondFactor::Passkey(_) => MfaMethod::Passkey,
        }
    }
}

/// A login that needs a second factor: the challenge to answer it with.
#[derive(Debug)]
pub struct MfaChallenge {
    /// Single use; send back to `POST /v1/auth/mfa/verify`.
    pub token: SecretToken,
    /// The factors the account can answer with.
    pub methods: Vec<MfaMethod>,
    pub expires_in_secs: i64,
}

/// One second-factor device as its owner sees it (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaDevice {
    pub id: MfaDeviceId,
    pub method: MfaMethod,
    pub name: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// TOTP authenticators are confirmed by their first code; passkeys always are.
    pub confirmed: bool,
}

impl From<portcullis_store::StoredTotpDevice> for MfaDevice {
    fn from(d: portcullis_store::StoredTotpDevice) -> Self {
        MfaDevice {
            id: d.id,
            method: MfaMethod::Totp,
            name: d.name,
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            confirmed: d.confirmed_at.is_some(),
        }
    }
}

impl From<portcullis_store::StoredPasskey> for MfaDevice {
    fn from(p: portcullis_store::StoredPasskey) -> Self {
        MfaDevice {
            id: p.id,
            method: MfaMethod::Passkey,
            name: p.name,
            created_at: p.created_at,
            last_used_at: p.last_used_at,
            confirmed: true,
        }
    }
}

/// The account's second factors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaFactors {
    pub devices: Vec<MfaDevice>,
    pub recovery_codes_left: u64,
    /// Whether the account must use a second factor (by role or organization).
    pub required: bool,
}

/// A refused second factor, as [`App::second_factor_failed`] records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure {
    pub method: MfaMethod,
    pub checked: Assertion,
    pub session: Option<SessionId>,
    /// Whether it counts toward the identifier's lockout (not for a passwordless passkey login).
    pub count: bool,
}

/// What an account holds, as the login needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Inventory {
    pub totp: usize,
    pub passkeys: usize,
    pub recovery_codes: u64,
}

impl Inventory {
    /// Whether the account has a second factor. Recovery codes alone are not one: they back up a
    /// device, and an account whose devices are all removed is back to a password.
    pub fn any(&self) -> bool {
        self.totp > 0 || self.passkeys > 0
    }

    pub fn methods(&self) -> Vec<MfaMethod> {
        let mut methods = Vec::new();
        if self.totp > 0 {
            methods.push(MfaMethod::Totp);
        }
        if self.passkeys > 0 {
            methods.push(MfaMethod::Passkey);
        }
        if self.any() && self.recovery_codes > 0 {
            methods.push(MfaMethod::RecoveryCode);
        }
        methods
    }
}

impl App {
    /// The account's confirmed second factors.
    pub(crate) async fn mfa_inventory(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
    ) -> Result<Inventory, AppError> {
        let totp = tx.totp_devices_of(user).await?.iter().filter(|d| d.confirmed_at.is_some()).count();
        let passkeys = tx.passkeys_of(user).await?.len();
        let recovery_codes = tx.recovery_codes_left(user).await?;
        Ok(Inventory { totp, passkeys, recovery_codes })
    }

    /// Whether `user` must use a second factor: by its built-in role, or an organization it belongs to.
    pub(crate) async fn mfa_required_for(&self, tx: &mut dyn StoreTx, user: &User) -> Result<bool, AppError> {
        let policy = &self.inner.settings.mfa.policy;
        if policy.requires(user.role, false) {
            return Ok(true);
        }
        Ok(tx.member_of_mfa_organization(user.id).await?)
    }

    /// Opens a second-factor challenge inside `tx` (the caller commits it).
    pub(crate) async fn open_challenge(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        purpose: ChallengePurpose,
        proven: AuthMethods,
    ) -> Result<(SecretToken, i64), AppError> {
        let now = self.now();
        let ttl = self.inner.settings.mfa.challenge_ttl_secs;
        let token = SecretToken::generate()?;
        tx.insert_mfa_challenge(&StoredMfaChallenge {
            hash: token.hash(),
            user_id: user,
            purpose: purpose.as_str().to_owned(),
            session_id: purpose.session(),
            amr: proven.as_stored(),
            ceremony: None,
            created_at: now,
            expires_at: now.plus_millis(ttl * 1000),
            failures: 0,
        })
        .await?;
        Ok((token, ttl))
    }

    /// The login's answer when the password was right and the account has a second factor.
    pub(crate) async fn challenge_login(
        &self,
        mut tx: Box<dyn StoreTx>,
        user: UserId,
        mode: LoginMode,
        inventory: Inventory,
    ) -> Result<LoginOutcome, AppError> {
        let purpose = match mode {
            LoginMode::Bearer => ChallengePurpose::LoginBearer,
            LoginMode::Cookie => ChallengePurpose::LoginCookie,
        };
        let (token, ttl) = self.open_challenge(tx.as_mut(), user, purpose, AuthMethods::PASSWORD).await?;
        let entry = AuditEntry::new("user.login.mfa_challenged", user_actor(user))
            .target("user", user)
            .detail("methods", inventory.methods().iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","));
        self.commit_audited(tx, [entry]).await?;
        Ok(LoginOutcome::MfaRequired(MfaChallenge {
            token,
            methods: inventory.methods(),
            expires_in_secs: ttl,
        }))
    }

    /// Finishes a login with its second factor: the challenge from [`App::login`] and a factor of
    /// the account. A wrong factor counts toward the identifier's lockout and the challenge's own
    /// limit; an unknown, spent, expired or closed challenge is [`AppError::InvalidToken`].
    /// `same_origin` is whether the request came from this server's own pages (or no browser): a
    /// cookie login finished from a foreign page would plant the attacker's session in the victim's
    /// browser (login CSRF), so that is refused.
    #[tracing::instrument(skip_all, fields(method = factor.method().as_str()))]
    pub async fn complete_login_mfa(
        &self,
        challenge: &str,
        factor: SecondFactor,
        same_origin: bool,
        client: &ClientContext,
    ) -> Result<LoginOutcome, AppError> {
        let passkey = factor.method() == MfaMethod::Passkey;
        if passkey && !same_origin {
            // Refused before the challenge is looked up, whatever its mode: the answer must not
            // depend on whether the challenge is real (a passwordless one may be made up). An
            // assertion only verifies for this server's own origin anyway.
            self.reject_csrf(None, client).await?;
            return Err(AppError::CsrfRejected);
        }
        match self.answer_login_challenge(challenge, factor, same_origin, client).await {
            // A passkey answer to a challenge that is unknown, spent or closed reads as a refused
            // passkey: a passwordless login's made-up challenge (for an address without an account)
            // must answer exactly as a real one does.
            Err(AppError::InvalidToken) if passkey => Err(AppError::InvalidSecondFactor),
            other => other,
        }
    }

    async fn answer_login_challenge(
        &self,
        challenge: &str,
        factor: SecondFactor,
        same_origin: bool,
        client: &ClientContext,
    ) -> Result<LoginOutcome, AppError> {
        let hash = hash_token(challenge);
        let now = self.now();
        let mut tx = self.inner.store.begin_read().await?;
        let open = tx.mfa_challenge(&hash, now).await?.ok_or(AppError::InvalidToken)?;
        let purpose =
            ChallengePurpose::parse(&open.purpose, open.session_id).ok_or(AppError::InvalidToken)?;
        let mode = match purpose {
            ChallengePurpose::LoginBearer => LoginMode::Bearer,
            ChallengePurpose::LoginCookie => LoginMode::Cookie,
            _ => return Err(AppError::InvalidToken),
        };
        if mode == LoginMode::Cookie && !same_origin {
            drop(tx);
            self.reject_csrf(None, client).await?;
            return Err(AppError::CsrfRejected);
        }
        let user = self.load_user(tx.as_mut(), open.user_id).await?.ok_or(AppError::InvalidToken)?;
        let subject = self.email_subject(&user.email)?;
        let throttle = tx.login_throttle(&subject).await?;
        let address = client.ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let known_address = match address {
            Some(ip) => tx.login_ip_known(user.id, &self.login_ip_digest(user.id, ip)?).await?,
            None => false,
        };
        tx.rollback().await?;
        let method = factor.method();
        let before = AuthMethods::parse(&open.amr).ok_or(AppError::InvalidToken)?;
        // A passwordless login's challenge proves nothing yet: only a passkey (two factors by
        // itself) may answer it, never a code; a code gets what it gets for a made-up challenge.
        let passwordless = !before.password;
        if passwordless && method != MfaMethod::Passkey {
            return Err(AppError::InvalidToken);
        }
        // The same guessing limits as the password: the identifier's budget, and its lockout (with
        // the same exception for an address the account logged in from before). A passkey cannot be
        // guessed, so a passwordless login is not held by a lockout that guessers of the password
        // caused, nor counts toward one, nor spends the account's budget (its options did, and a
        // made-up challenge spends none: the two must answer alike).
        if !passwordless {
            self.spend_identifier_budget(user.email.as_str()).await?;
            if !known_address {
                self.refuse_if_locked(throttle.as_ref())?;
            }
        }
        if user.status != UserStatus::Active {
            return Err(AppError::InvalidToken);
        }
        // The password login's rule, for the passkey login too (a wrong passkey's answer).
        if passwordless
            && self.inner.settings.accounts.require_verified_email
            && user.email_verified_at.is_none()
        {
            return Err(AppError::InvalidSecondFactor);
        }
        let mut tx = self.inner.store.begin().await?;
        // Each answer reserves one of the challenge's tries before it is checked, in the transaction
        // that checks it: answers sent in parallel cannot all slip under the limit. The try stays
        // spent when the answer is wrong; a right one closes the challenge below.
        let max = self.inner.settings.mfa.max_challenge_failures;
        let tries = tx.fail_mfa_challenge(&hash, max + 1).await?;
        if tries == 0 || tries > max {
            tx.commit().await?;
            return Err(AppError::InvalidToken);
        }
        let checked = self.prove_factor(tx.as_mut(), &user, factor, open.ceremony.as_deref()).await?;
        if checked != Assertion::Accepted {
            tx.commit().await?;
            let failure = Failure { method, checked, session: None, count: !passwordless };
            self.second_factor_failed(&user, failure, client, "user.login.failed").await?;
            return Err(AppError::InvalidSecondFactor);
        }
        // Closing the challenge is the condition: of two answers racing, one opens a session.
        if tx.spend_mfa_challenge(&hash, now).await?.is_none() {
            return Err(AppError::InvalidToken);
        }
        let proven = before.with(method);
        let extra = self.factor_used_entries(&user, method);
        // A passkey login leaves the password's failure count alone: a guesser of the password
        // keeps the lockout they earned.
        let clear = (!passwordless).then_some(subject);
        let outcome = self.establish_login(tx, &user, mode, client, proven, clear, extra).await?;
        if method == MfaMethod::RecoveryCode
            && let LoginOutcome::Authenticated { session_id, .. } = &outcome
        {
            self.recovery_code_used(&user, Some(*session_id), client).await?;
        }
        Ok(outcome)
    }

    /// Checks a factor of `user` inside `tx` (a TOTP step or recovery code is consumed there, so it
    /// commits with what it unlocks). `ceremony` is the WebAuthn state of a passkey answer.
    pub(crate) async fn prove_factor(
        &self,
        tx: &mut dyn StoreTx,
        user: &User,
        factor: SecondFactor,
        ceremony: Option<&str>,
    ) -> Result<Assertion, AppError> {
        let accepted = match factor {
            SecondFactor::Totp(code) => self.accept_totp_code(tx, user.id, &code).await?,
            SecondFactor::RecoveryCode(code) => self.spend_recovery_code(tx, user.id, &code).await?,
            SecondFactor::Passkey(credential) => {
                // No ceremony was started for this challenge: nothing to check the assertion against.
                let Some(ceremony) = ceremony else { return Ok(Assertion::Refused) };
                return self.finish_passkey_assertion(tx, user.id, &credential, ceremony).await;
            }
        };
        Ok(if accepted { Assertion::Accepted } else { Assertion::Refused })
    }

    /// Records a wrong second factor: a security event, an audit record, and one failure toward the
    /// identifier's lockout. A passkey whose counter went backwards is its own, louder event.
    pub(crate) async fn second_factor_failed(
        &self,
        user: &User,
        failure: Failure,
        client: &ClientContext,
        action: &'static str,
    ) -> Result<(), AppError> {
        let Failure { method, checked, session, count } = failure;
        self.inner.metrics.mfa_failed(method);
        if checked == Assertion::CounterRegressed {
            self.record_security_event_with(
                SecurityEventKind::PasskeyCounterRegressed,
                Some(user.id),
                session,
                client.ip.as_deref(),
                Default::default(),
            )
            .await?;
        }
        let refused = AuditEntry::new(action, user_actor(user.id))
            .target("user", user.id)
            .outcome(Outcome::Failure)
            .detail("reason", "wrong_second_factor")
            .detail("method", method.as_str());
        let details = std::collections::BTreeMap::from([("method".to_owned(), method.as_str().to_owned())]);
        self.record_security_event_audited(
            SecurityEventKind::MfaFailed,
            Some(user.id),
            session,
            client.ip.as_deref(),
            details,
            [refused],
        )
        .await?;
        if !count {
            return Ok(());
        }
        let subject = self.email_subject(&user.email)?;
        self.count_login_failure(subject, Some(user.id), client).await
    }

    /// The audit record of a spent recovery code, committed with what it unlocked.
    fn factor_used_entries(&self, user: &User, method: MfaMethod) -> Vec<AuditEntry> {
        if method != MfaMethod::RecoveryCode {
            return Vec::new();
        }
        vec![AuditEntry::new("mfa.recovery_code.used", user_actor(user.id)).target("user", user.id)]
    }

    /// A spent recovery code is worth telling the owner and the defenders about: it is how someone
    /// holding the printed codes would get in.
    pub(crate) async fn recovery_code_used(
        &self,
        user: &User,
        session: Option<SessionId>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        self.record_security_event_with(
            SecurityEventKind::RecoveryCodeUsed,
            Some(user.id),
            session,
            client.ip.as_deref(),
            Default::default(),
        )
        .await?;
        self.send_later(crate::mail::OutgoingEmail {
            to: user.email.clone(),
            subject: "A recovery code was used".into(),
            text: "One of your account's recovery codes was just used to sign in. If it was you, \
                   consider setting up your authenticator again and generating new codes. If it was \
                   not you, reset your password and contact your administrator now.\n"
                .into(),
        });
        Ok(())
    }

    /// Refuses a sensitive action unless the caller's session proved itself recently enough, at the
    /// account's level (ASVS 7.5.3): within [`MfaSettings::reauthentication_max_age_secs`], and with
    /// a second factor if the account has one. API keys are machine credentials with no one to
    /// re-authenticate; they pass (their scopes bound them).
    pub(crate) async fn require_recent_auth(&self, principal: &Principal) -> Result<(), AppError> {
        let Some(session_id) = principal.session_id() else { return Ok(()) };
        let max_age_secs = self.inner.settings.mfa.reauthentication_max_age_secs;
        let now = self.now();
        let mut tx = self.inner.store.begin_read().await?;
        let session = tx.session(session_id).await?.ok_or(AppError::Unauthenticated)?;
        let inventory = self.mfa_inventory(tx.as_mut(), principal.user_id).await?;
        tx.rollback().await?;
        let fresh = now.as_unix_millis() - session.authenticated_at.as_unix_millis() <= max_age_secs * 1000;
        let level = !inventory.any() || session.amr.is_multi_factor();
        if fresh && level {
            return Ok(());
        }
        Err(AppError::ReauthenticationRequired { max_age_secs })
    }

    /// Re-authenticates the caller's session for sensitive actions: the password, and a second factor
    /// when the account has one; or a passkey alone (it is two factors by itself). Failures count
    /// toward the identifier's lockout like a login's.
    pub async fn reauthenticate(
        &self,
        principal: &Principal,
        password: Option<SecretString>,
        factor: Option<SecondFactor>,
        passkey_challenge: Option<&str>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        let session = principal.require_session()?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let stored = tx.password_hash(user.id).await?;
        let inventory = self.mfa_inventory(tx.as_mut(), user.id).await?;
        let ceremony = match passkey_challenge {
            Some(token) => {
                let open = tx.mfa_challenge(&hash_token(token), self.now()).await?;
                match open {
                    Some(c)
                        if c.user_id == user.id
                            && c.purpose == "reauthentication"
                            && c.session_id == Some(session) =>
                    {
                        Some((hash_token(token), c.ceremony))
                    }
                    _ => return Err(AppError::InvalidToken),
                }
            }
            None => None,
        };
        let throttle = tx.login_throttle(&self.email_subject(&user.email)?).await?;
        tx.rollback().await?;
        self.spend_identifier_budget(user.email.as_str()).await?;
        let passkey_alone = password.is_none() && matches!(factor, Some(SecondFactor::Passkey(_)));
        // A locked identifier is locked here too, from anywhere: a held session must not become a
        // way to keep guessing the password or the second factor. A passkey alone cannot be
        // guessed, and a guesser's lockout must not keep its owner from proving themselves.
        if !passkey_alone {
            self.refuse_if_locked(throttle.as_ref())?;
        }
        let mut proven = AuthMethods::default();
        if !passkey_alone {
            let password = password.ok_or_else(|| AppError::invalid("/password", "is required"))?;
            let password = self
                .normalized_password(&password, "/password")
                .map_err(|issue| AppError::Validation(vec![issue]))?;
            if !matches!(self.inner.hasher.verify(password, stored).await?, crate::Verified::Yes { .. }) {
                let refused = AuditEntry::by(principal, "session.reauthenticated")
                    .target("session", session)
                    .outcome(Outcome::Failure)
                    .detail("reason", "wrong_password");
                self.record_security_event_audited(
                    SecurityEventKind::LoginFailed,
                    Some(user.id),
                    Some(session),
                    client.ip.as_deref(),
                    Default::default(),
                    [refused],
                )
                .await?;
                let subject = self.email_subject(&user.email)?;
                self.count_login_failure(subject, Some(user.id), client).await?;
                return Err(AppError::InvalidCredentials);
            }
            proven.password = true;
            if inventory.any() && factor.is_none() {
                return Err(AppError::Validation(vec![crate::FieldIssue::new(
                    "/method",
                    format!(
                        "this account has a second factor: send one of {}",
                        inventory.methods().iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )]));
            }
        }
        let mut tx = self.inner.store.begin().await?;
        let mut extra = Vec::new();
        if let Some(factor) = factor {
            let method = factor.method();
            let ceremony_state = ceremony.as_ref().and_then(|(_, c)| c.as_deref());
            let checked = self.prove_factor(tx.as_mut(), &user, factor, ceremony_state).await?;
            if checked != Assertion::Accepted {
                drop(tx);
                if let Some((hash, _)) = &ceremony {
                    // A passkey challenge of a re-authentication has its tries like a login's.
                    let mut tx = self.inner.store.begin().await?;
                    tx.fail_mfa_challenge(hash, self.inner.settings.mfa.max_challenge_failures).await?;
                    tx.commit().await?;
                }
                let failure = Failure { method, checked, session: Some(session), count: !passkey_alone };
                self.second_factor_failed(&user, failure, client, "session.reauthenticated").await?;
                return Err(AppError::InvalidSecondFactor);
            }
            if let Some((hash, _)) = &ceremony
                && tx.spend_mfa_challenge(hash, self.now()).await?.is_none()
            {
                return Err(AppError::InvalidToken);
            }
            proven = proven.with(method);
            extra = self.factor_used_entries(&user, method);
        }
        let now = self.now();
        let level = u8::from(proven.is_multi_factor());
        // A session that had to enroll a factor and now proves one is done with that.
        let enrollment_required = principal.mfa_enrollment_required && !proven.is_multi_factor();
        if !tx
            .set_session_authentication(session, &proven.as_stored(), level, now, enrollment_required)
            .await?
        {
            return Err(AppError::Unauthenticated);
        }
        let entry = AuditEntry::by(principal, "session.reauthenticated")
            .target("session", session)
            .detail("amr", proven.as_stored());
        let used_recovery_code = !extra.is_empty();
        self.commit_audited(tx, std::iter::once(entry).chain(extra)).await?;
        if used_recovery_code {
            self.recovery_code_used(&user, Some(session), client).await?;
        }
        Ok(())
    }

    /// The caller's second factors.
    pub async fn mfa_factors(&self, principal: &Principal) -> Result<MfaFactors, AppError> {
        principal.require_session()?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let mut devices: Vec<MfaDevice> =
            tx.totp_devices_of(user.id).await?.into_iter().map(MfaDevice::from).collect();
        devices.extend(tx.passkeys_of(user.id).await?.into_iter().map(MfaDevice::from));
        let recovery_codes_left = tx.recovery_codes_left(user.id).await?;
        let required = self.mfa_required_for(tx.as_mut(), &user).await?;
        tx.rollback().await?;
        Ok(MfaFactors { devices, recovery_codes_left, required })
    }

    /// After a factor was enrolled in `tx`: a session that had to enroll one is now multi-factor
    /// (it just proved the factor), and the first factor comes with a fresh set of recovery codes.
    pub(crate) async fn after_enrollment(
        &self,
        tx: &mut dyn StoreTx,
        principal: &Principal,
        method: MfaMethod,
        had_factor: bool,
    ) -> Result<Option<RecoveryCodes>, AppError> {
        let now = self.now();
        if let Some(session) = principal.session_id() {
            let current = tx.session(session).await?.ok_or(AppError::Unauthenticated)?;
            let proven = current.amr.with(method);
            tx.set_session_authentication(
                session,
                &proven.as_stored(),
                u8::from(proven.is_multi_factor()),
                current.authenticated_at,
                false,
            )
            .await?;
        }
        if had_factor && tx.recovery_codes_left(principal.user_id).await? > 0 {
            return Ok(None);
        }
        Ok(Some(self.replace_recovery_codes(tx, principal.user_id, now).await?))
    }

    /// Brings a session's "must enroll a second factor" mark up to date inside `tx`: a policy
    /// switched on (a role given, an organization's policy, a membership) reaches sessions opened
    /// before it at their next refresh (bearer) or within a minute (cookie), not only at the next
    /// login. A multi-factor session is never marked.
    pub(crate) async fn recheck_enrollment(
        &self,
        tx: &mut dyn StoreTx,
        session: &mut portcullis_domain::Session,
    ) -> Result<(), AppError> {
        if session.amr.is_multi_factor() {
            return Ok(());
        }
        let Some(user) = self.load_user(tx, session.user_id).await? else { return Ok(()) };
        let required =
            self.mfa_required_for(tx, &user).await? && !self.mfa_inventory(tx, user.id).await?.any();
        // An account that has a factor but a password-only session (opened before the factor) is not
        // "without a factor": step-up covers it.
        if required != session.mfa_enrollment_required {
            tx.set_session_authentication(
                session.id,
                &session.amr.as_stored(),
                session.mfa_level,
                session.authenticated_at,
                required,
            )
            .await?;
            session.mfa_enrollment_required = required;
        }
        Ok(())
    }

    /// Deletes second-factor challenges that expired (they can no longer be answered); the server
    /// calls this each minute. Returns how many.
    pub async fn purge_mfa_challenges(&self) -> Result<u64, AppError> {
        let mut tx = self.inner.store.begin().await?;
        let purged = tx.purge_mfa_challenges(self.now()).await?;
        tx.commit().await?;
        Ok(purged)
    }

    /// Removes every second factor of an account (it lost its devices). Needs `users:write`; the
    /// account's sessions end, since one of them may be the person who took the devices.
    pub async fn admin_reset_mfa(&self, principal: &Principal, id: &str) -> Result<u64, AppError> {
        // A person who logged in, never an API key: this takes an account's second factor away.
        principal.require_session()?;
        let user_id = UserId::parse(id).map_err(|_| AppError::NotFound)?;
        let grants = self.require(principal, "users:write", Resource::default()).await?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let user = self.load_user(tx.as_mut(), user_id).await?.ok_or(AppError::NotFound)?;
        // An administrator cannot strip an owner's factors.
        self.outranks(&grants, &user)?;
        let removed = tx.delete_all_factors(user_id).await?;
        let revoked = crate::sessions::revoke_sessions_in(
            tx.as_mut(),
            user_id,
            None,
            portcullis_domain::RevokeReason::UserRevoked,
            now,
        )
        .await?;
        let entry = AuditEntry::by(principal, "mfa.reset")
            .target("user", user_id)
            .detail("removed", removed)
            .detail("revoked_sessions", revoked.len());
        self.commit_audited(tx, [entry]).await?;
        self.forget_sessions(&revoked, now);
        self.send_later(crate::mail::OutgoingEmail {
            to: user.email,
            subject: "Your sign-in methods were reset".into(),
            text: "An administrator just removed every authenticator, passkey and recovery code from your \
                   account and ended its sessions; you can log in with your password and set them up \
                   again. If you did not ask for this, contact your administrator now.\n"
                .into(),
        });
        Ok(removed)
    }

    /// Sets whether an organization's members must use a second factor. Needs `orgs:write` there.
    pub async fn admin_set_organization_mfa(
        &self,
        principal: &Principal,
        id: &str,
        required: bool,
    ) -> Result<(), AppError> {
        principal.require_session()?;
        let organization = OrganizationId::parse(id).map_err(|_| AppError::NotFound)?;
        self.require_in(principal, "orgs:write", organization).await?;
        let mut tx = self.inner.store.begin().await?;
        if !tx.set_organization_requires_mfa(organization, required).await? {
            return Err(AppError::NotFound);
        }
        let entry = AuditEntry::by(principal, "organization.mfa_policy.changed")
            .target("organization", organization)
            .organization(organization)
            .detail("required", required);
        self.commit_audited(tx, [entry]).await?;
        Ok(())
    }

    /// Whether an organization requires a second factor of its members. Needs `orgs:read` there.
    pub async fn admin_organization_mfa(&self, principal: &Principal, id: &str) -> Result<bool, AppError> {
        let organization = OrganizationId::parse(id).map_err(|_| AppError::NotFound)?;
        self.require_in(principal, "orgs:read", organization).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let required = tx.organization_requires_mfa(organization).await?;
        tx.rollback().await?;
        required.ok_or(AppError::NotFound)
    }
}
