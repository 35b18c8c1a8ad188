//! Login, sessions and tokens: proving who you are once, then being trusted until the session ends.
//!
//! A login opens a session. API clients hold it as a short-lived access JWT plus a refresh token that
//! rotates on every use; browsers hold it as an HttpOnly cookie plus a CSRF token. Revoking a session
//! ends both at once on this node, and on other nodes within [`REVOCATION_SYNC_SECS`].

use std::collections::HashMap;
use std::sync::Mutex;

use portcullis_domain::{
    Actor, ActorKind, AuthMethods, Email, Outcome, RevokeReason, SecurityEvent, SecurityEventId,
    SecurityEventKind, Session, SessionId, SessionKind, Timestamp, User, UserId, UserStatus,
    normalize_password,
};
use portcullis_store::{RefreshSpend, StoreTx};
use secrecy::{ExposeSecret, SecretString};

use crate::audit::AuditEntry;
use crate::passwords::Verified;
use crate::secret_token::{SecretToken, hash_token, random_id_bytes};
use crate::tokens::{AccessClaims, AccessGrant};
use crate::{App, AppError};

/// How often other nodes' revocations are picked up; also the worst-case delay before a session
/// revoked elsewhere stops working here.
pub const REVOCATION_SYNC_SECS: u64 = 2;

/// Presented passwords longer than this are refused before hashing, so a huge body cannot buy a
/// huge hash computation. Far above the policy's 128-character maximum in any encoding.
const MAX_PRESENTED_PASSWORD_BYTES: usize = 1024;

/// A browser session's `last_seen_at` is written at most this often, not on every request.
const TOUCH_INTERVAL_MILLIS: i64 = 60_000;

/// Which kind of session a login opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMode {
    /// Access token + refresh token in the response body.
    Bearer,
    /// A session cookie + a CSRF token.
    Cookie,
}

/// Facts about the client recorded with a session, for its owner's session list.
#[derive(Debug, Clone, Default)]
pub struct ClientContext {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What a client gets back from a login or a refresh. Its `Debug` names the kind only.
pub enum IssuedCredentials {
    Bearer {
        access_token: String,
        /// Seconds until the access token expires.
        expires_in: i64,
        refresh_token: SecretToken,
    },
    Cookie {
        cookie: SecretToken,
        csrf_token: String,
        /// The session's absolute end.
        expires_at: Timestamp,
        /// Seconds until then, for the cookie's `Max-Age`.
        max_age_secs: i64,
    },
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuedCredentials::Bearer { expires_in, .. } => {
                f.debug_struct("Bearer").field("expires_in", expires_in).finish_non_exhaustive()
            }
            IssuedCredentials::Cookie { expires_at, .. } => {
                f.debug_struct("Cookie").field("expires_at", expires_at).finish_non_exhaustive()
            }
        }
    }
}

/// The result of a login whose password was right.
#[derive(Debug)]
pub enum LoginOutcome {
    Authenticated {
        session_id: SessionId,
        user_id: UserId,
        credentials: IssuedCredentials,
    },
    /// The account has a second factor: no session yet, a challenge to answer with it.
    MfaRequired(crate::mfa::MfaChallenge),
}

/// What a new session's login proved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proof {
    pub amr: AuthMethods,
    /// The account must enroll a second factor before anything else.
    pub enrollment_required: bool,
}

/// How the current request proved its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTransport {
    Bearer,
    Cookie,
}

/// What the caller of a request proved itself with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An access token of a login session.
    Bearer(SessionId),
    /// The cookie of a browser session.
    Cookie(SessionId),
    /// An API key: its rights are its owner's, narrowed to its scopes.
    ApiKey(portcullis_domain::ApiKeyId),
}

/// Whether the caller is a person or a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Person,
    ServiceAccount,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The account acting: a person's, or a service account's (the two share one id space).
    pub user_id: UserId,
    pub kind: PrincipalKind,
    pub credential: Credential,
    /// The account must use a second factor and its session has none yet: it may only enroll one
    /// (the web layer's `Authenticated` refuses everything else).
    pub mfa_enrollment_required: bool,
}

impl Principal {
    /// The login session behind the request; `None` for an API key.
    pub fn session_id(&self) -> Option<SessionId> {
        match self.credential {
            Credential::Bearer(id) | Credential::Cookie(id) => Some(id),
            Credential::ApiKey(_) => None,
        }
    }

    /// How the request proved its session; `None` for an API key.
    pub fn transport(&self) -> Option<SessionTransport> {
        match self.credential {
            Credential::Bearer(_) => Some(SessionTransport::Bearer),
            Credential::Cookie(_) => Some(SessionTransport::Cookie),
            Credential::ApiKey(_) => None,
        }
    }

    /// The login session behind the request, for what only a person who logged in may do (their
    /// password, their sessions, their API keys): an API key, however scoped, is refused.
    pub fn require_session(&self) -> Result<SessionId, AppError> {
        self.session_id()
            .ok_or_else(|| AppError::Forbidden("this needs a login session; an API key cannot do it".into()))
    }
}

/// One session as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: SessionId,
    pub kind: SessionKind,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session the request came with.
    pub current: bool,
}

/// Sessions revoked recently, so access tokens (which are not looked up) stop at once. An entry can
/// be dropped once every access token of its session has expired.
#[derive(Debug, Default)]
pub(crate) struct RevokedSessions {
    entries: Mutex<HashMap<SessionId, Timestamp>>,
}

impl RevokedSessions {
    fn contains(&self, id: SessionId) -> bool {
        self.entries.lock().map(|e| e.contains_key(&id)).unwrap_or(true)
    }

    fn insert(&self, id: SessionId, at: Timestamp) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(id, at);
        }
    }
}

impl App {
    /// Logs in with email and password. Every failure is [`AppError::InvalidCredentials`], after the
    /// same amount of hashing work, whether or not the account exists (ASVS 6.3.8).
    #[tracing::instrument(skip_all, fields(mode = ?mode))]
    pub async fn login(
        &self,
        email: &str,
        password: SecretString,
        mode: LoginMode,
        client: &ClientContext,
    ) -> Result<LoginOutcome, AppError> {
        let result = self.password_login(email, password, mode, client).await;
        if let Some(counted) = crate::LoginResult::of(&result) {
            self.inner.metrics.login(counted);
        }
        result
    }

    async fn password_login(
        &self,
        email: &str,
        password: SecretString,
        mode: LoginMode,
        client: &ClientContext,
    ) -> Result<LoginOutcome, AppError> {
        if password.expose_secret().len() > MAX_PRESENTED_PASSWORD_BYTES {
            return Err(AppError::InvalidCredentials);
        }
        // The identifier's budget before any work: guesses spread over many addresses still share it.
        self.spend_identifier_budget(email).await?;
        let subject = self.identifier_subject(email)?;
        // Queue for the hash before reading the account: a login the pool will shed costs nothing more.
        let slot = self.inner.hasher.reserve()?;
        let password = SecretString::from(normalize_password(password.expose_secret()));
        let address = client.ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let (user, stored, throttle, known_address) = match (Email::parse(email), subject) {
            (Ok(email), Some(subject)) => {
                let mut tx = self.inner.store.begin_read().await?;
                let throttle = tx.login_throttle(&subject).await?;
                let user = self.find_user_by_email(tx.as_mut(), &email).await?;
                let (stored, known_address) = match (&user, address) {
                    (Some(user), Some(ip)) => (
                        tx.password_hash(user.id).await?,
                        tx.login_ip_known(user.id, &self.login_ip_digest(user.id, ip)?).await?,
                    ),
                    (Some(user), None) => (tx.password_hash(user.id).await?, false),
                    (None, ip) => {
                        // The reads an existing account costs, on an id that names nobody: the
                        // answer's timing must not tell which addresses have accounts (ASVS 6.3.8).
                        let nobody = UserId::from_random_bytes(random_id_bytes()?);
                        tx.password_hash(nobody).await?;
                        if let Some(ip) = ip {
                            tx.login_ip_known(nobody, &self.login_ip_digest(nobody, ip)?).await?;
                        }
                        (None, false)
                    }
                };
                tx.rollback().await?;
                (user, stored, throttle, known_address)
            }
            _ => (None, None, None, false),
        };
        // A locked identifier is refused before its password is checked, known or not alike, except
        // from an address the account has logged in from before (OWASP's "device cookie" idea, by
        // address): a guesser elsewhere cannot keep the owner out of where they usually are.
        if !known_address && let Err(refusal) = self.refuse_if_locked(throttle.as_ref()) {
            // Known and unknown identifiers alike: the record names the account only for readers of
            // the trail, never in the answer.
            let failed = login_failed("locked", user.as_ref().map(|u| u.id));
            self.record_audit([failed]).await?;
            return Err(refusal);
        }
        let verified = slot.verify(password, stored.clone()).await?;
        let user = match (user, verified) {
            (Some(user), Verified::Yes { rehash }) if user.status == UserStatus::Active => (user, rehash),
            (user, verified) => {
                let reason = match (&user, verified) {
                    (None, _) => "unknown_account",
                    (Some(user), Verified::Yes { .. }) => match user.status {
                        UserStatus::Locked => "account_locked",
                        UserStatus::Disabled => "account_disabled",
                        UserStatus::Active => "account_inactive",
                    },
                    (Some(_), _) => "wrong_password",
                };
                let user = user.map(|u| u.id);
                // The audit record joins the security event's transaction: every failure, known
                // account or not, costs the same one write.
                self.record_security_event_audited(
                    SecurityEventKind::LoginFailed,
                    user,
                    None,
                    client.ip.as_deref(),
                    Default::default(),
                    [login_failed(reason, user)],
                )
                .await?;
                if let Some(subject) = subject {
                    self.count_login_failure(subject, user, client).await?;
                }
                return Err(AppError::InvalidCredentials);
            }
        };
        let (user, rehash) = user;
        if self.inner.settings.accounts.require_verified_email && user.email_verified_at.is_none() {
            // The same answer as a wrong password: a distinct one would tell an attacker who signed up
            // an address with a password of their choosing whether it already had an account. The
            // owner gets a fresh confirmation link instead, at the address only they read.
            self.record_security_event_audited(
                SecurityEventKind::LoginFailed,
                Some(user.id),
                None,
                client.ip.as_deref(),
                Default::default(),
                [login_failed("email_unverified", Some(user.id))],
            )
            .await?;
            self.resend_verification(&user).await?;
            return Err(AppError::InvalidCredentials);
        }
        let mut tx = self.inner.store.begin().await?;
        if let (Some(new), Some(old)) = (rehash, stored) {
            // Conditional: a password changed since we read it is never overwritten.
            tx.replace_password_hash(user.id, &old, &new, self.now()).await?;
        }
        // An account with a second factor gets a challenge, not a session: the password alone
        // proves nothing more than that it was typed (or guessed, or phished) right.
        let inventory = self.mfa_inventory(tx.as_mut(), user.id).await?;
        if inventory.any() {
            return self.challenge_login(tx, user.id, mode, inventory).await;
        }
        // A success forgets the failures, and the doubling starts again from the first lockout.
        let clear = subject.filter(|_| throttle.is_some());
        self.establish_login(tx, &user, mode, client, AuthMethods::PASSWORD, clear, Vec::new()).await
    }

    /// The end of every successful login (a password alone, or with its second factor): records it,
    /// opens the session, remembers the address, and commits with `extra` audit entries.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per kind of login; a struct would only rename them"
    )]
    pub(crate) async fn establish_login(
        &self,
        mut tx: Box<dyn StoreTx>,
        user: &User,
        mode: LoginMode,
        client: &ClientContext,
        proven: AuthMethods,
        clear_throttle: Option<[u8; 32]>,
        extra: Vec<AuditEntry>,
    ) -> Result<LoginOutcome, AppError> {
        let now = self.now();
        if let Some(subject) = clear_throttle {
            tx.clear_login_throttle(&subject).await?;
        }
        if !tx.record_login(user.id, now).await? {
            // Disabled, locked or deleted since it was read (an administrator's change committed
            // while the password was being checked): no session for it.
            drop(tx);
            self.record_audit([login_failed("account_changed", Some(user.id))]).await?;
            return Err(AppError::InvalidCredentials);
        }
        // Under a policy that asks a second factor of an account that has none, the session may only
        // enroll one (ASVS 6.3.3 for the accounts that need it).
        let enrollment_required =
            !proven.is_multi_factor() && self.mfa_required_for(tx.as_mut(), user).await?;
        let proof = Proof { amr: proven, enrollment_required };
        let (session, credentials) =
            self.open_session(tx.as_mut(), user.id, mode, client, now, proof).await?;
        // The address joins the account's known ones (as a keyed digest): it may log in through a
        // lockout later, and an administrator's login from an unknown one is worth an event.
        let address = client.ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let remembered = match address {
            Some(ip) => {
                let digest = self.login_ip_digest(user.id, ip)?;
                let known = tx.known_login_ip_count(user.id).await?;
                Some((ip, known, tx.remember_login_ip(user.id, &digest, now).await?))
            }
            None => None,
        };
        let succeeded = AuditEntry::new("user.login.succeeded", user_actor(user.id))
            .target("user", user.id)
            .detail("method", if proven.hardware_key && !proven.password { "passkey" } else { "password" })
            .detail("amr", proven.as_stored())
            .detail(
                "mode",
                match mode {
                    LoginMode::Bearer => "bearer",
                    LoginMode::Cookie => "cookie",
                },
            )
            .detail("session_id", session.id.to_string());
        self.commit_audited(tx, std::iter::once(succeeded).chain(extra)).await?;
        self.inner.profiles.forget(user.id);
        tracing::info!(user = %user.id, session = %session.id, amr = %proven.as_stored(), "login");
        if let Some((ip, known, seen)) = remembered
            && matches!(
                user.role,
                portcullis_domain::BuiltinRole::Owner | portcullis_domain::BuiltinRole::Admin
            )
        {
            self.report_admin_login(user.id, ip, known, seen).await?;
        }
        self.inner.metrics.login(crate::LoginResult::Success);
        Ok(LoginOutcome::Authenticated { session_id: session.id, user_id: user.id, credentials })
    }

    /// Opens a session inside `tx` and mints its credentials.
    pub(crate) async fn open_session(
        &self,
        tx: &mut dyn StoreTx,
        user: UserId,
        mode: LoginMode,
        client: &ClientContext,
        now: Timestamp,
        proof: Proof,
    ) -> Result<(Session, IssuedCredentials), AppError> {
        let lifetimes = self.inner.settings.accounts.sessions;
        let session = Session {
            id: SessionId::from_random_bytes(random_id_bytes()?),
            user_id: user,
            kind: match mode {
                LoginMode::Bearer => SessionKind::Bearer,
                LoginMode::Cookie => SessionKind::Cookie,
            },
            created_at: now,
            last_seen_at: now,
            expires_at: now.plus_millis(lifetimes.absolute_millis),
            mfa_level: u8::from(proof.amr.is_multi_factor()),
            amr: proof.amr,
            authenticated_at: now,
            mfa_enrollment_required: proof.enrollment_required,
            revoked_at: None,
        };
        let user_agent = client.user_agent.as_ref().map(|ua| truncate(ua, 256));
        let (ip, user_agent) = (client.ip.as_deref(), user_agent.as_deref());
        let credentials = match mode {
            LoginMode::Bearer => {
                self.store_session(tx, &session, ip, user_agent, None).await?;
                let refresh_token = SecretToken::generate()?;
                tx.insert_refresh_token(session.id, &refresh_token.hash(), now).await?;
                let (access_token, expires_in) = self.access_token(&session, now)?;
                IssuedCredentials::Bearer { access_token, expires_in, refresh_token }
            }
            LoginMode::Cookie => {
                let cookie = SecretToken::generate()?;
                self.store_session(tx, &session, ip, user_agent, Some(&cookie.hash())).await?;
                let csrf_token = self.inner.csrf.token_for(session.id);
                IssuedCredentials::Cookie {
                    cookie,
                    csrf_token,
                    expires_at: session.expires_at,
                    max_age_secs: lifetimes.absolute_millis / 1000,
                }
            }
        };
        Ok((session, credentials))
    }

    /// A signed access token for `session`, never outliving the session's absolute expiry.
    fn access_token(&self, session: &Session, now: Timestamp) -> Result<(String, i64), AppError> {
        let settings = &self.inner.settings.tokens;
        let iat = now.as_unix_millis().div_euclid(1000);
        let exp = (iat + settings.access_ttl_secs).min(session.expires_at.as_unix_millis().div_euclid(1000));
        let jti = SessionId::from_random_bytes(random_id_bytes()?).to_string();
        let claims = AccessClaims {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: session.user_id.to_string(),
            sid: session.id.to_string(),
            iat,
            nbf: iat,
            exp,
            jti,
            amr: session.amr.amr().into_iter().map(str::to_owned).collect(),
            auth_time: Some(session.authenticated_at.as_unix_millis().div_euclid(1000)),
            mfa_enrollment_required: session.mfa_enrollment_required,
        };
        Ok((self.loaded_keys().signing.sign(&claims)?, exp - iat))
    }

    /// Exchanges a refresh token for a new access token and a new refresh token (ASVS 7.2.4: rotate on
    /// use). A token that was already spent revokes its whole session and raises a security event:
    /// either the client or a thief holds a copy, and the server cannot tell which.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        presented: &str,
        client: &ClientContext,
    ) -> Result<IssuedCredentials, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        match tx.spend_refresh_token(&hash_token(presented), now).await? {
            RefreshSpend::Unknown => Err(AppError::Unauthenticated),
            RefreshSpend::AlreadySpent(session_id) => {
                let session = tx.session(session_id).await?;
                if let Some(session) = &session {
                    tx.revoke_session(session.user_id, session.id, now, RevokeReason::RefreshReuse).await?;
                }
                let event = SecurityEvent {
                    id: SecurityEventId::from_random_bytes(random_id_bytes()?),
                    at: now,
                    kind: SecurityEventKind::RefreshTokenReuse,
                    user_id: session.as_ref().map(|s| s.user_id),
                    session_id: Some(session_id),
                    details: Default::default(),
                };
                tx.insert_security_event(&self.seal_security_event(event.clone(), client.ip.as_deref())?)
                    .await?;
                let mut reused = AuditEntry::system("session.refresh_reused")
                    .outcome(Outcome::Failure)
                    .target("session", session_id)
                    .detail("revoked", session.is_some());
                if let Some(session) = &session {
                    reused = reused.detail("user_id", session.user_id.to_string());
                }
                self.commit_audited(tx, [reused]).await?;
                self.log_security_event(&event, true);
                self.raise_alert(&event);
                self.forget_session(session_id, now);
                tracing::warn!(session = %session_id, "a spent refresh token was presented; session revoked");
                Err(AppError::Unauthenticated)
            }
            RefreshSpend::Spent(session_id) => {
                let mut session = tx.session(session_id).await?.ok_or(AppError::Unauthenticated)?;
                if !session.is_live(self.inner.settings.accounts.sessions, now)
                    || self.inner.revoked.contains(session.id)
                {
                    return Err(AppError::Unauthenticated);
                }
                self.recheck_enrollment(tx.as_mut(), &mut session).await?;
                let refresh_token = SecretToken::generate()?;
                tx.insert_refresh_token(session.id, &refresh_token.hash(), now).await?;
                tx.touch_session(session.id, now).await?;
                let (access_token, expires_in) = self.access_token(&session, now)?;
                tx.commit().await?;
                Ok(IssuedCredentials::Bearer { access_token, expires_in, refresh_token })
            }
        }
    }

    /// The caller behind an access token: signature, claims and time window checked (once per token
    /// per node, then cached), and the session not revoked.
    pub fn authenticate_bearer(&self, token: &str) -> Result<Principal, AppError> {
        let now = self.now();
        let grant = match self.inner.verified_tokens.get(token, now) {
            Some(grant) => grant,
            None => {
                let claims = self.loaded_keys().signing.verify(token, &self.inner.settings.tokens, now)?;
                let grant = AccessGrant {
                    user_id: UserId::parse(&claims.sub).map_err(|_| AppError::Unauthenticated)?,
                    session_id: SessionId::parse(&claims.sid).map_err(|_| AppError::Unauthenticated)?,
                    expires_at: Timestamp::from_unix_millis(
                        (claims.exp + self.inner.settings.tokens.leeway_secs).saturating_mul(1000),
                    ),
                    mfa_enrollment_required: claims.mfa_enrollment_required,
                };
                self.inner.verified_tokens.insert(token, grant, now);
                grant
            }
        };
        if self.inner.revoked.contains(grant.session_id) {
            return Err(AppError::Unauthenticated);
        }
        Ok(Principal {
            user_id: grant.user_id,
            kind: PrincipalKind::Person,
            credential: Credential::Bearer(grant.session_id),
            mfa_enrollment_required: grant.mfa_enrollment_required,
        })
    }

    /// The caller behind a session cookie: the session must exist, be a cookie session, and be live.
    pub async fn authenticate_cookie(&self, cookie: &str) -> Result<Principal, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin_read().await?;
        let session = tx.session_by_cookie(&hash_token(cookie)).await?;
        tx.rollback().await?;
        let session = session.ok_or(AppError::Unauthenticated)?;
        if session.kind != SessionKind::Cookie || !session.is_live(self.inner.settings.accounts.sessions, now)
        {
            return Err(AppError::Unauthenticated);
        }
        let mut session = session;
        if now.as_unix_millis() - session.last_seen_at.as_unix_millis() >= TOUCH_INTERVAL_MILLIS {
            let mut tx = self.inner.store.begin().await?;
            tx.touch_session(session.id, now).await?;
            self.recheck_enrollment(tx.as_mut(), &mut session).await?;
            tx.commit().await?;
        }
        Ok(Principal {
            user_id: session.user_id,
            kind: PrincipalKind::Person,
            credential: Credential::Cookie(session.id),
            mfa_enrollment_required: session.mfa_enrollment_required,
        })
    }

    /// Checks the CSRF token of a cookie-authenticated, state-changing request; records a security
    /// event when it fails. Bearer requests carry no ambient credential and need none.
    pub async fn check_csrf(
        &self,
        principal: &Principal,
        presented: Option<&str>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        // Only a cookie rides along with requests by itself; a bearer token or an API key is sent on
        // purpose and needs no CSRF token.
        let Credential::Cookie(session) = principal.credential else { return Ok(()) };
        if presented.is_some_and(|token| self.inner.csrf.verify(session, token)) {
            return Ok(());
        }
        self.reject_csrf(Some(principal), client).await
    }

    /// Records a request refused by the CSRF or origin checks and returns the refusal.
    pub async fn reject_csrf(
        &self,
        principal: Option<&Principal>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        if principal.is_none() {
            // Nobody's session is at stake (a cross-site login attempt): logged, not stored, so that
            // forged requests cannot be turned into writes on the single SQLite writer.
            let event = SecurityEvent {
                id: SecurityEventId::from_random_bytes(random_id_bytes()?),
                at: self.now(),
                kind: SecurityEventKind::CsrfRejected,
                user_id: None,
                session_id: None,
                details: Default::default(),
            };
            self.log_security_event(&event, false);
            return Err(AppError::CsrfRejected);
        }
        self.record_security_event(
            SecurityEventKind::CsrfRejected,
            principal.map(|p| p.user_id),
            principal.and_then(Principal::session_id),
            client,
        )
        .await?;
        Err(AppError::CsrfRejected)
    }

    /// The CSRF token of a cookie session (for pages that need it again).
    pub fn csrf_token(&self, principal: &Principal) -> Option<String> {
        match principal.credential {
            Credential::Cookie(session) => Some(self.inner.csrf.token_for(session)),
            Credential::Bearer(_) | Credential::ApiKey(_) => None,
        }
    }

    /// Ends the caller's own session.
    pub async fn logout(&self, principal: &Principal) -> Result<(), AppError> {
        let session = principal.require_session()?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        tx.revoke_session(principal.user_id, session, now, RevokeReason::Logout).await?;
        let entry = AuditEntry::by(principal, "session.logged_out").target("session", session);
        self.commit_audited(tx, [entry]).await?;
        self.forget_session(session, now);
        Ok(())
    }

    /// Ends the browser session a cookie names, if it is live: a new login in a browser replaces the
    /// session it already held (ASVS 7.2.4), so an old or planted cookie never outlives a login.
    pub async fn end_cookie_session(&self, cookie: &str) -> Result<(), AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let Some(session) = tx.session_by_cookie(&hash_token(cookie)).await? else { return Ok(()) };
        if session.revoked_at.is_none() {
            tx.revoke_session(session.user_id, session.id, now, RevokeReason::Logout).await?;
            // The browser holding the cookie acts for its session's account.
            let entry = AuditEntry::new("session.logged_out", user_actor(session.user_id))
                .target("session", session.id)
                .detail("reason", "replaced_by_login");
            self.commit_audited(tx, [entry]).await?;
            self.forget_session(session.id, now);
        }
        Ok(())
    }

    /// Ends every session of the caller, the current one included.
    pub async fn logout_all(&self, principal: &Principal) -> Result<u64, AppError> {
        principal.require_session()?;
        let entry = AuditEntry::by(principal, "session.revoked_all");
        self.revoke_all_sessions(principal.user_id, None, RevokeReason::UserRevoked, entry).await
    }

    /// Revokes a user's sessions (all, or all but `keep`) and forgets them locally at once. `audit`
    /// (its target, the reason and the count filled in here) is recorded with the revocation.
    pub(crate) async fn revoke_all_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        reason: RevokeReason,
        audit: AuditEntry,
    ) -> Result<u64, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let revoked = revoke_sessions_in(tx.as_mut(), user, keep, reason, now).await?;
        let audit =
            audit.target("user", user).detail("reason", reason.as_str()).detail("revoked", revoked.len());
        self.commit_audited(tx, [audit]).await?;
        self.forget_sessions(&revoked, now);
        Ok(revoked.len() as u64)
    }

    /// Forgets revoked sessions on this node, after the revocation committed.
    pub(crate) fn forget_sessions(&self, ids: &[SessionId], now: Timestamp) {
        for id in ids {
            self.forget_session(*id, now);
        }
    }

    /// The caller's live sessions, newest first, the current one marked.
    pub async fn list_sessions(&self, principal: &Principal) -> Result<Vec<SessionSummary>, AppError> {
        let current = principal.require_session()?;
        let now = self.now();
        let lifetimes = self.inner.settings.accounts.sessions;
        let mut tx = self.inner.store.begin_read().await?;
        let sessions = self.load_sessions_of(tx.as_mut(), principal.user_id, now).await?;
        tx.rollback().await?;
        Ok(sessions
            .into_iter()
            .filter(|s| s.session.is_live(lifetimes, now))
            .map(|opened| {
                let s = opened.session;
                SessionSummary {
                    current: s.id == current,
                    id: s.id,
                    kind: s.kind,
                    created_at: s.created_at,
                    last_seen_at: s.last_seen_at,
                    expires_at: s.expires_at,
                    ip: opened.ip,
                    user_agent: opened.user_agent,
                }
            })
            .collect())
    }

    /// Revokes one of the caller's sessions by id. Another user's session id, a malformed id and an
    /// unknown id all answer [`AppError::NotFound`].
    pub async fn revoke_session(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        principal.require_session()?;
        let id = SessionId::parse(id).map_err(|_| AppError::NotFound)?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        if !tx.revoke_session(principal.user_id, id, now, RevokeReason::UserRevoked).await? {
            return Err(AppError::NotFound);
        }
        let entry = AuditEntry::by(principal, "session.revoked")
            .target("session", id)
            .detail("reason", RevokeReason::UserRevoked.as_str());
        self.commit_audited(tx, [entry]).await?;
        self.forget_session(id, now);
        Ok(())
    }

    /// Picks up sessions revoked by any node within the lifetime of an access token that may still be
    /// live, so their tokens stop working here. The server calls this every [`REVOCATION_SYNC_SECS`].
    pub async fn sync_revocations(&self) -> Result<usize, AppError> {
        let now = self.now();
        let settings = &self.inner.settings.tokens;
        let horizon = now.plus_millis(-(settings.access_ttl_secs + settings.leeway_secs) * 1000);
        // Always the whole horizon, not "since the last sync": a revocation stamped before a slow
        // commit, or by a node whose clock runs behind, would otherwise fall between two windows and
        // its access tokens would live on here. The set is small (one access-token lifetime's worth).
        let since = horizon;
        let mut tx = self.inner.store.begin_read().await?;
        let revoked = tx.sessions_revoked_since(since).await?;
        tx.rollback().await?;
        for id in &revoked {
            // Only newly learned revocations purge the token cache; known ones just stay marked.
            if !self.inner.revoked.contains(*id) {
                self.inner.verified_tokens.forget_session(*id);
            }
            self.inner.revoked.insert(*id, now);
        }
        if let Ok(mut entries) = self.inner.revoked.entries.lock() {
            entries.retain(|_, at| *at >= horizon);
        }
        Ok(revoked.len())
    }

    fn forget_session(&self, id: SessionId, now: Timestamp) {
        self.inner.revoked.insert(id, now);
        self.inner.verified_tokens.forget_session(id);
    }

    pub(crate) async fn record_security_event(
        &self,
        kind: SecurityEventKind,
        user_id: Option<UserId>,
        session_id: Option<SessionId>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        self.record_security_event_with(kind, user_id, session_id, client.ip.as_deref(), Default::default())
            .await
    }

    /// Records one security event with its details in a transaction of its own, then logs it.
    pub(crate) async fn record_security_event_with(
        &self,
        kind: SecurityEventKind,
        user_id: Option<UserId>,
        session_id: Option<SessionId>,
        ip: Option<&str>,
        details: std::collections::BTreeMap<String, String>,
    ) -> Result<(), AppError> {
        self.record_security_event_audited(kind, user_id, session_id, ip, details, []).await
    }

    /// Records one security event and the audit entries `audit` in one transaction of its own,
    /// then logs the event: a refusal that has nothing else to commit (a failed login) costs one
    /// transaction, not two.
    pub(crate) async fn record_security_event_audited(
        &self,
        kind: SecurityEventKind,
        user_id: Option<UserId>,
        session_id: Option<SessionId>,
        ip: Option<&str>,
        details: std::collections::BTreeMap<String, String>,
        audit: impl IntoIterator<Item = AuditEntry>,
    ) -> Result<(), AppError> {
        let id = SecurityEventId::from_random_bytes(random_id_bytes()?);
        let details = crate::abuse::fit_details(details);
        let event = SecurityEvent { id, at: self.now(), kind, user_id, session_id, details };
        let sealed = self.seal_security_event(event.clone(), ip)?;
        let mut tx = self.inner.store.begin().await?;
        tx.insert_security_event(&sealed).await?;
        self.commit_audited(tx, audit).await?;
        self.log_security_event(&event, true);
        self.raise_alert(&event);
        Ok(())
    }
}

/// The audit actor of an account acting for itself outside an authenticated request (a login, the
/// browser whose cookie a new login replaces).
pub(crate) fn user_actor(user: UserId) -> Actor {
    Actor { kind: ActorKind::User, id: Some(user.to_string()), on_behalf_of: None }
}

/// A refused login as the audit trail records it: by nobody yet known, about the account when the
/// identifier names one, with why (never the identifier or the password).
fn login_failed(reason: &str, user: Option<UserId>) -> AuditEntry {
    let entry = AuditEntry::anonymous("user.login.failed").outcome(Outcome::Failure).detail("reason", reason);
    match user {
        Some(user) => entry.target("user", user),
        None => entry,
    }
}

/// Revokes a user's sessions inside `tx` (all, or all but `keep`); returns their ids so the caller
/// can forget them locally once the transaction commits.
pub(crate) async fn revoke_sessions_in(
    tx: &mut dyn StoreTx,
    user: UserId,
    keep: Option<SessionId>,
    reason: RevokeReason,
    now: Timestamp,
) -> Result<Vec<SessionId>, AppError> {
    let live = tx.sessions_of(user, now).await?;
    tx.revoke_sessions_of(user, keep, now, reason).await?;
    Ok(live.into_iter().map(|s| s.session.id).filter(|id| Some(*id) != keep).collect())
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl App {
    /// Every security event also goes to the log stream, once it is recorded (or when it is not stored
    /// at all), as one structured line with a stable `event.kind`, so a SIEM can follow them without the
    /// database. The client's ip is not in it: the request span that carries the line names the client.
    pub(crate) fn log_security_event(&self, event: &SecurityEvent, stored: bool) {
        self.inner.metrics.security_event(event);
        let user = event.user_id.map(|u| u.to_string());
        let session = event.session_id.map(|s| s.to_string());
        let details = (!event.details.is_empty()).then(|| format!("{:?}", event.details));
        tracing::info!(
            event.kind = event.kind.as_str(),
            event.severity = event.kind.severity().as_str(),
            event.id = %event.id,
            event.stored = stored,
            event.details = details.as_deref(),
            user = user.as_deref(),
            session = session.as_deref(),
            "security event"
        );
    }
}
