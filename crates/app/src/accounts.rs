//! Accounts: signing up, proving an email address, passwords (change, forgot, reset), the first
//! administrator, and invites.
//!
//! No answer here reveals whether an address has an account (ASVS 6.3.8): signup with a taken
//! address and a reset for an unknown one answer exactly like the other case, do the same hashing
//! and one write each, and send their email from a background task so mail latency shows nowhere.

use portcullis_domain::{
    BuiltinRole, DisplayName, Email, OneTimePurpose, OneTimeToken, Outcome, PasswordRule, RevokeReason,
    SecurityEventId, SecurityEventKind, Timestamp, User, UserId, UserStatus, normalize_password,
};
use portcullis_store::StoreTx;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::AuditEntry;
use crate::error::FieldIssue;
use crate::mail::OutgoingEmail;
use crate::passwords::{BCRYPT_MAX_BYTES, HashAlgorithm, Verified};
use crate::secret_token::{SecretToken, hash_token, random_id_bytes};
use crate::sessions::{ClientContext, revoke_sessions_in};
use crate::{App, AppError, Principal};

/// How long a node serves a profile from its cache before reading it again.
pub const PROFILE_CACHE_MILLIS: i64 = 2_000;

/// Profiles recently read, per node (see [`App::profile`]), each with the grants it resolves to, so
/// that a permission check on a warm entry computes nothing. Bounded like the verified-token cache.
#[derive(Debug, Default)]
pub(crate) struct ProfileCache {
    entries: std::sync::Mutex<std::collections::HashMap<UserId, CachedProfile>>,
}

#[derive(Debug)]
struct CachedProfile {
    profile: Profile,
    grants: std::sync::Arc<[portcullis_domain::Grant]>,
    read_at: Timestamp,
}

/// A node serving more distinct users than this within the cache time reads some profiles twice.
const PROFILE_CACHE_MAX: usize = 10_000;

impl ProfileCache {
    fn get(&self, user: UserId, now: Timestamp) -> Option<Profile> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&user)?;
        let fresh = now.as_unix_millis() - entry.read_at.as_unix_millis() < PROFILE_CACHE_MILLIS;
        fresh.then(|| entry.profile.clone())
    }

    /// A fresh entry's account status and grants, without copying the profile.
    pub(crate) fn grants(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Option<(UserStatus, std::sync::Arc<[portcullis_domain::Grant]>)> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&user)?;
        let fresh = now.as_unix_millis() - entry.read_at.as_unix_millis() < PROFILE_CACHE_MILLIS;
        fresh.then(|| (entry.profile.status, entry.grants.clone()))
    }

    pub(crate) fn insert(
        &self,
        profile: Profile,
        grants: std::sync::Arc<[portcullis_domain::Grant]>,
        now: Timestamp,
    ) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= PROFILE_CACHE_MAX {
            entries.retain(|_, e| now.as_unix_millis() - e.read_at.as_unix_millis() < PROFILE_CACHE_MILLIS);
            if entries.len() >= PROFILE_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(profile.id, CachedProfile { profile, grants, read_at: now });
    }

    /// Drops a user's entry after a change on this node.
    pub(crate) fn forget(&self, user: UserId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&user);
        }
    }

    /// Drops every entry (a change that touches many accounts, such as deleting an organization).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

/// Who may create an account by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupPolicy {
    /// Anyone (the development default).
    Open,
    /// Only holders of an administrator's single-use invite.
    Invite,
    /// Nobody; administrators create accounts.
    Closed,
}

/// A signup as submitted.
#[derive(Debug)]
pub struct SignupRequest {
    pub email: String,
    pub password: SecretString,
    pub display_name: Option<String>,
    /// Required while signup is invite-only.
    pub invite_token: Option<SecretString>,
}

/// The account as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: UserId,
    pub email: String,
    pub email_verified: bool,
    pub display_name: Option<String>,
    pub role: BuiltinRole,
    /// Only an active account's profile is ever returned; the field is for the cache's check.
    pub status: UserStatus,
    /// The organizations the account belongs to, with its role in each, in organization id order.
    pub organizations: Vec<(portcullis_domain::OrganizationId, BuiltinRole)>,
    /// The custom roles the account holds, in organization then name order.
    pub custom_roles: Vec<portcullis_domain::CustomRole>,
    pub created_at: Timestamp,
    pub last_login_at: Option<Timestamp>,
}

impl From<User> for Profile {
    fn from(user: User) -> Self {
        Profile {
            id: user.id,
            email: user.email.as_str().to_owned(),
            email_verified: user.email_verified_at.is_some(),
            display_name: user.display_name.map(|d| d.as_str().to_owned()),
            role: user.role,
            status: user.status,
            organizations: Vec::new(),
            custom_roles: Vec::new(),
            created_at: user.created_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// Validated account details, before anything is stored.
pub(crate) struct NewAccount {
    pub(crate) email: Email,
    pub(crate) display_name: Option<DisplayName>,
    pub(crate) password: SecretString,
}

impl App {
    /// Checks every field of a new account at once, so the client sees all problems together.
    pub(crate) fn validate_new_account(
        &self,
        email: &str,
        display_name: Option<&str>,
        password: &SecretString,
    ) -> Result<NewAccount, AppError> {
        let mut issues = Vec::new();
        let email = Email::parse(email).map_err(|e| issues.push(FieldIssue::new("/email", e))).ok();
        let display_name = match display_name {
            Some(name) => {
                DisplayName::parse(name).map_err(|e| issues.push(FieldIssue::new("/display_name", e))).ok()
            }
            None => None,
        };
        let password = self.normalized_password(password, "/password");
        match &password {
            Ok(password) => {
                if let Err(rule) = self.check_password_rules(password, email.as_ref(), display_name.as_ref())
                {
                    issues.push(FieldIssue::new("/password", rule));
                }
            }
            Err(issue) => issues.push(issue.clone()),
        }
        match (email, password) {
            (Some(email), Ok(password)) if issues.is_empty() => {
                Ok(NewAccount { email, display_name, password })
            }
            _ => Err(AppError::Validation(issues)),
        }
    }

    /// NFKC-normalizes a submitted password, refusing first one so long that normalizing it would be
    /// work worth attacking (the policy's maximum is 128 characters; this is a cheap outer bound).
    pub(crate) fn normalized_password(
        &self,
        password: &SecretString,
        field: &'static str,
    ) -> Result<SecretString, FieldIssue> {
        let max = self.inner.settings.accounts.password_policy.max_chars;
        if password.expose_secret().len() > max * 4 {
            return Err(FieldIssue::new(field, PasswordRule::TooLong { max }));
        }
        Ok(SecretString::from(normalize_password(password.expose_secret())))
    }

    /// Every rule that does not need the account (length, bcrypt's limit, strength), checked before
    /// any hashing so that a refused password costs no hash.
    fn precheck_password(&self, password: &SecretString, field: &'static str) -> Result<(), AppError> {
        self.check_password_rules(password, None, None).map_err(|rule| AppError::invalid(field, rule))
    }

    /// Sends a fresh email-verification link to an account's registered address.
    pub(crate) async fn resend_verification(&self, user: &User) -> Result<(), AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let link = self.issue_link(tx.as_mut(), OneTimePurpose::VerifyEmail, Some(user), None, now).await?;
        tx.commit().await?;
        self.send_later(OutgoingEmail {
            to: user.email.clone(),
            subject: "Confirm your email address".into(),
            text: format!(
                "Someone tried to log in to your account, which cannot be used until this address is \
                 confirmed. If it was you, open this link within 24 hours, then log in again:\n\n{link}\n\n\
                 If it was not you, ignore this message.\n"
            ),
        });
        Ok(())
    }

    /// The password policy plus bcrypt's 72-byte input limit while bcrypt is configured.
    fn check_password_rules(
        &self,
        password: &SecretString,
        email: Option<&Email>,
        display_name: Option<&DisplayName>,
    ) -> Result<(), PasswordRule> {
        let password = password.expose_secret();
        self.inner.settings.accounts.password_policy.check_with(password, email, display_name)?;
        if matches!(self.inner.settings.password_hash, HashAlgorithm::Bcrypt { .. })
            && password.len() > BCRYPT_MAX_BYTES
        {
            return Err(PasswordRule::TooLongForBcrypt);
        }
        Ok(())
    }

    /// Signs up. Answers the same (`Ok`) whether the address is new or taken; the owner of a taken
    /// address is told by email that someone tried.
    #[tracing::instrument(skip_all)]
    pub async fn signup(&self, request: SignupRequest, client: &ClientContext) -> Result<(), AppError> {
        let policy = self.inner.settings.accounts.signup;
        if policy == SignupPolicy::Closed {
            return Err(AppError::SignupNotAllowed);
        }
        if policy == SignupPolicy::Invite && request.invite_token.is_none() {
            return Err(AppError::SignupNotAllowed);
        }
        let account =
            self.validate_new_account(&request.email, request.display_name.as_deref(), &request.password)?;
        self.spend_identifier_budget(&request.email).await?;
        // Hash first, on both paths: the expensive step must not tell a new address from a taken one.
        let hash = self.inner.hasher.hash(account.password).await?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let mut invited = false;
        if let Some(invite) = &request.invite_token {
            let spent = self
                .spend_one_time_token(
                    tx.as_mut(),
                    &hash_token(invite.expose_secret()),
                    OneTimePurpose::Invite,
                    now,
                )
                .await?;
            let matches =
                spent.is_some_and(|(_, email)| email.is_none_or(|e| e.key() == account.email.key()));
            if !matches {
                return Err(AppError::SignupNotAllowed);
            }
            invited = true;
        }
        let user = User {
            id: UserId::from_random_bytes(random_id_bytes()?),
            email: account.email.clone(),
            email_verified_at: None,
            display_name: account.display_name,
            status: UserStatus::Active,
            role: BuiltinRole::Member,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        };
        match self.insert_account(tx.as_mut(), &user, &hash, now).await {
            Ok(()) => {
                let link =
                    self.issue_link(tx.as_mut(), OneTimePurpose::VerifyEmail, Some(&user), None, now).await?;
                let mut entries = vec![
                    AuditEntry::anonymous("user.signed_up")
                        .target("user", user.id)
                        .detail("role", user.role.as_str())
                        .detail("via", if invited { "invite" } else { "open_signup" }),
                ];
                if invited {
                    entries.push(AuditEntry::anonymous("user.invite.accepted").target("user", user.id));
                }
                self.commit_audited(tx, entries).await?;
                tracing::info!(user = %user.id, "account created");
                self.send_later(OutgoingEmail {
                    to: user.email,
                    subject: "Confirm your email address".into(),
                    text: format!(
                        "Welcome. Confirm that this address is yours by opening the link below within 24 \
                         hours:\n\n{link}\n\nIf you did not sign up, ignore this message.\n"
                    ),
                });
            }
            Err(AppError::Validation(_)) => {
                // Taken (found, or lost a race to a concurrent signup). A fresh transaction: a failed
                // statement has finished the first one.
                drop(tx);
                let owner = self.user_by_email(&account.email).await?;
                // The refusal is recorded in the security event's transaction, so this path writes
                // once, as the other one does.
                let mut refused = AuditEntry::anonymous("user.signed_up")
                    .outcome(Outcome::Failure)
                    .detail("reason", "address_taken");
                if let Some(owner) = &owner {
                    refused = refused.target("user", owner.id);
                }
                self.record_security_event_audited(
                    SecurityEventKind::SignupForExistingAccount,
                    owner.as_ref().map(|u| u.id),
                    None,
                    client.ip.as_deref(),
                    Default::default(),
                    [refused],
                )
                .await?;
                // To the address the owner registered, not the spelling the stranger typed: mail servers
                // may treat local parts case-sensitively.
                self.send_later(OutgoingEmail {
                    to: owner.map_or(account.email, |o| o.email),
                    subject: "Someone tried to sign up with your address".into(),
                    text: "Someone tried to create an account with this email address, which already has \
                           one. If it was you, log in or reset your password instead. If not, you can \
                           ignore this message: nothing has changed.\n"
                        .into(),
                });
            }
            Err(other) => return Err(other),
        }
        Ok(())
    }

    /// Inserts a user and its password; a taken address is a `Validation` error for the caller to
    /// disguise or report.
    pub(crate) async fn insert_account(
        &self,
        tx: &mut dyn StoreTx,
        user: &User,
        hash: &str,
        now: Timestamp,
    ) -> Result<(), AppError> {
        // Every blind-index key is checked, not only the unique index: while the index is rebuilt
        // under a new key, the same address may be indexed under the previous one. Then two nodes
        // may index one address under different keys, which the unique index cannot catch, so
        // signups take the accounts lock and check against the keyring as it is now.
        if self.blind_index_in_rotation(tx).await? {
            tx.lock_users().await?;
            self.install_keys_from(tx).await?;
        }
        if self.find_user_by_email(tx, &user.email).await?.is_some() {
            return Err(AppError::invalid("/email", "an account with this address already exists"));
        }
        self.store_user(tx, user).await?;
        tx.set_password_hash(user.id, hash, now).await?;
        // Every account joins the default organization as a member (which grants nothing beyond the
        // account's own resources), so a single-tenant installation's service accounts, which live
        // in that organization, can introspect everyone's tokens.
        let slug = portcullis_domain::OrganizationSlug::parse(portcullis_domain::DEFAULT_ORGANIZATION_SLUG)
            .map_err(|_| AppError::Internal("the default slug does not parse".into()))?;
        if let Some(default) = tx.organization_by_slug(&slug).await? {
            tx.set_membership(default.id, user.id, BuiltinRole::Member, now).await?;
        }
        Ok(())
    }

    /// Mints a single-use token, stores its hash, and returns the link to send.
    async fn issue_link(
        &self,
        tx: &mut dyn StoreTx,
        purpose: OneTimePurpose,
        user: Option<&User>,
        email: Option<&Email>,
        now: Timestamp,
    ) -> Result<String, AppError> {
        let token = SecretToken::generate()?;
        let record = OneTimeToken {
            hash: token.hash(),
            purpose,
            user_id: user.map(|u| u.id),
            created_at: now,
            expires_at: now.plus_millis(purpose.lifetime_millis()),
        };
        self.store_one_time_token(tx, record, email).await?;
        let page = match purpose {
            OneTimePurpose::VerifyEmail => "verify-email",
            OneTimePurpose::PasswordReset => "reset-password",
            OneTimePurpose::Invite => "signup",
            OneTimePurpose::Setup => "setup",
        };
        // The token rides in the fragment, which browsers never send to servers or in Referer headers.
        Ok(format!("{}/ui/{page}#token={}", self.inner.settings.accounts.public_url, token.expose()))
    }

    /// Sends an email from a background task: delivery time and failures never show in the response.
    pub(crate) fn send_later(&self, email: OutgoingEmail) {
        let mailer = self.inner.mailer.clone();
        tokio::spawn(async move {
            if let Err(error) = mailer.send(&email).await {
                tracing::warn!(error = %portcullis_domain::error_chain(&error), "email was not sent");
            }
        });
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.find_user_by_email(tx.as_mut(), email).await?;
        tx.rollback().await?;
        Ok(user)
    }

    /// Confirms an email address with the token from the verification link.
    pub async fn verify_email(&self, token: &str) -> Result<(), AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let spent = self
            .spend_one_time_token(tx.as_mut(), &hash_token(token), OneTimePurpose::VerifyEmail, now)
            .await?;
        let user = spent.and_then(|(t, _)| t.user_id).ok_or(AppError::InvalidToken)?;
        if !tx.mark_email_verified(user, now).await? {
            return Err(AppError::InvalidToken);
        }
        // Whoever holds the link: proving the mailbox is what the link is for, not who opens it.
        self.commit_audited(tx, [AuditEntry::anonymous("user.email.verified").target("user", user)]).await?;
        self.inner.profiles.forget(user);
        Ok(())
    }

    /// An account with everything its rights come from (memberships and custom roles), read in `tx`.
    pub(crate) async fn read_profile(
        &self,
        tx: &mut dyn portcullis_store::StoreTx,
        user: UserId,
    ) -> Result<Option<Profile>, AppError> {
        let Some(account) = self.load_user(tx, user).await? else { return Ok(None) };
        let organizations = tx.memberships_of(user).await?;
        let custom_roles = tx.roles_of(user).await?;
        Ok(Some(Profile { organizations, custom_roles, ..Profile::from(account) }))
    }

    /// The caller's own profile (`GET /v1/me`): an API key must hold `profile:read`, like any other
    /// use of a key; a login session always may.
    pub async fn my_profile(&self, principal: &Principal) -> Result<Profile, AppError> {
        if matches!(principal.credential, crate::Credential::ApiKey(_))
            && principal.kind == crate::PrincipalKind::Person
        {
            let own = portcullis_domain::Resource { owner: Some(principal.user_id), organization: None };
            self.require(principal, "profile:read", own).await?;
        }
        self.profile(principal).await
    }

    /// The caller's profile. Served from a per-node cache for up to [`PROFILE_CACHE_MILLIS`]: the
    /// profile is read on most authenticated requests, and a database round trip costs several times
    /// the rest of such a request. Changes made on this node drop the entry at once; changes made on
    /// another node show within that time, as revocations do.
    pub async fn profile(&self, principal: &Principal) -> Result<Profile, AppError> {
        if principal.kind == crate::PrincipalKind::ServiceAccount {
            return Err(AppError::Forbidden("a service account has no profile".into()));
        }
        let now = self.now();
        let profile = match self.inner.profiles.get(principal.user_id, now) {
            Some(profile) => profile,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let profile = self.read_profile(tx.as_mut(), principal.user_id).await?;
                tx.rollback().await?;
                let profile = profile.ok_or(AppError::Unauthenticated)?;
                self.inner.profiles.insert(profile.clone(), self.grants_for(&profile), now);
                profile
            }
        };
        // A disabled or locked account's sessions are revoked when it changes; this also stops
        // every permission of one whose session survived a race, within the cache's lifetime.
        if profile.status != UserStatus::Active {
            return Err(AppError::Unauthenticated);
        }
        Ok(profile)
    }

    /// Changes the caller's password: the current one is required (ASVS 6.2.3), and every other
    /// session of the account ends (ASVS 7.4.3).
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: SecretString,
        new: SecretString,
    ) -> Result<(), AppError> {
        principal.require_session()?;
        self.require_recent_auth(principal).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        let stored = tx.password_hash(user.id).await?;
        tx.rollback().await?;
        // A stolen session must not become a way around the login's guessing limits: the same
        // identifier budget, and failures count toward the same lockout.
        self.spend_identifier_budget(user.email.as_str()).await?;
        let current = self
            .normalized_password(&current, "/current_password")
            .map_err(|i| AppError::Validation(vec![i]))?;
        if !matches!(self.inner.hasher.verify(current, stored).await?, Verified::Yes { .. }) {
            // Someone holding the session is guessing the password: worth a security event.
            let refused = AuditEntry::by(principal, "user.password.changed")
                .target("user", user.id)
                .outcome(Outcome::Failure)
                .detail("reason", "wrong_current_password");
            self.record_security_event_audited(
                SecurityEventKind::LoginFailed,
                Some(user.id),
                principal.session_id(),
                None,
                Default::default(),
                [refused],
            )
            .await?;
            let subject = self.email_subject(&user.email)?;
            self.count_login_failure(subject, Some(user.id), &ClientContext::default()).await?;
            return Err(AppError::invalid("/current_password", "is not the account's current password"));
        }
        let new =
            self.normalized_password(&new, "/new_password").map_err(|i| AppError::Validation(vec![i]))?;
        self.check_password_rules(&new, Some(&user.email), user.display_name.as_ref())
            .map_err(|rule| AppError::invalid("/new_password", rule))?;
        let hash = self.inner.hasher.hash(new).await?;
        let entry = AuditEntry::by(principal, "user.password.changed");
        self.replace_password(&user, &hash, principal.session_id(), RevokeReason::PasswordChanged, entry)
            .await?;
        self.send_later(OutgoingEmail {
            to: user.email,
            subject: "Your password was changed".into(),
            text: "The password of your account was just changed, and your other sessions were ended. \
                   If you did not do this, reset your password now.\n"
                .into(),
        });
        Ok(())
    }

    /// Stores a new password hash, voids outstanding reset links and ends the account's sessions
    /// (all but `keep`); `audit` is recorded with the change, about the account.
    async fn replace_password(
        &self,
        user: &User,
        hash: &str,
        keep: Option<portcullis_domain::SessionId>,
        reason: RevokeReason,
        audit: AuditEntry,
    ) -> Result<(), AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        tx.set_password_hash(user.id, hash, now).await?;
        tx.void_one_time_tokens(user.id, OneTimePurpose::PasswordReset, now).await?;
        // A login that proved the old password and waits for its second factor ends here too.
        tx.delete_login_challenges_of(user.id).await?;
        let revoked = revoke_sessions_in(tx.as_mut(), user.id, keep, reason, now).await?;
        let audit = audit.target("user", user.id).detail("revoked_sessions", revoked.len());
        self.commit_audited(tx, [audit]).await?;
        self.forget_sessions(&revoked, now);
        Ok(())
    }

    /// Starts a password reset. Answers the same for every address; only an active account's owner
    /// gets a link (valid 30 minutes).
    pub async fn forgot_password(&self, email: &str, client: &ClientContext) -> Result<(), AppError> {
        let Ok(email) = Email::parse(email) else {
            return Err(AppError::invalid("/email", "must be an email address like name@example.com"));
        };
        // Never refused for the account's sake: the reset by email is how an owner gets past a
        // lockout or a guesser. What is limited is the mail: past the address's reset-mail budget the
        // answer is the same 202, and no new link is issued or sent (the last one sent still works).
        if !self.spend_reset_mail_budget(&email).await? {
            tracing::info!("password reset mail not sent: the address's reset-mail budget is spent");
            return Ok(());
        }
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let user =
            self.find_user_by_email(tx.as_mut(), &email).await?.filter(|u| u.status == UserStatus::Active);
        match user {
            Some(user) => {
                let link = self
                    .issue_link(tx.as_mut(), OneTimePurpose::PasswordReset, Some(&user), None, now)
                    .await?;
                let requested =
                    AuditEntry::anonymous("user.password.reset_requested").target("user", user.id);
                self.commit_audited(tx, [requested]).await?;
                self.send_later(OutgoingEmail {
                    to: user.email,
                    subject: "Reset your password".into(),
                    text: format!(
                        "Someone asked to reset the password of your account. To choose a new password, \
                         open this link within 30 minutes:\n\n{link}\n\nIf it was not you, ignore this \
                         message: your password has not changed.\n"
                    ),
                });
            }
            None => {
                // One write on this path too, so both paths cost the same.
                let event = portcullis_domain::SecurityEvent {
                    id: SecurityEventId::from_random_bytes(random_id_bytes()?),
                    at: now,
                    kind: SecurityEventKind::PasswordResetForUnknownAccount,
                    user_id: None,
                    session_id: None,
                    details: Default::default(),
                };
                tx.insert_security_event(&self.seal_security_event(event.clone(), client.ip.as_deref())?)
                    .await?;
                // Recorded here too, so both paths append to the audit trail alike.
                let requested = AuditEntry::anonymous("user.password.reset_requested")
                    .outcome(Outcome::Failure)
                    .detail("reason", "no_active_account");
                self.commit_audited(tx, [requested]).await?;
                self.log_security_event(&event, true);
                self.raise_alert(&event);
            }
        }
        Ok(())
    }

    /// Sets a new password with a reset link's token; ends every session and tells the owner.
    pub async fn reset_password(&self, token: &str, new: SecretString) -> Result<(), AppError> {
        let now = self.now();
        let new =
            self.normalized_password(&new, "/new_password").map_err(|i| AppError::Validation(vec![i]))?;
        // The rules that need no account, before any hashing: a refused password costs no hash (and
        // one too long for bcrypt is a 422, never a 500).
        self.precheck_password(&new, "/new_password")?;
        // Hash before the write transaction: SQLite has one writer, and a hash must not hold it. A
        // full pool sheds the request here, before the link is spent.
        let hash = self.inner.hasher.hash(new.clone()).await?;
        let mut tx = self.inner.store.begin().await?;
        let spent = self
            .spend_one_time_token(tx.as_mut(), &hash_token(token), OneTimePurpose::PasswordReset, now)
            .await?;
        let user_id = spent.and_then(|(t, _)| t.user_id).ok_or(AppError::InvalidToken)?;
        let user = self.load_user(tx.as_mut(), user_id).await?.ok_or(AppError::InvalidToken)?;
        // A policy failure returns before commit: the spend rolls back and the link still works.
        self.check_password_rules(&new, Some(&user.email), user.display_name.as_ref())
            .map_err(|rule| AppError::invalid("/new_password", rule))?;
        tx.set_password_hash(user.id, &hash, now).await?;
        tx.delete_login_challenges_of(user.id).await?;
        tx.void_one_time_tokens(user.id, OneTimePurpose::PasswordReset, now).await?;
        // Proving control of the mailbox ends a lockout: guessing cannot keep the owner out.
        let lockout_cleared = self.clear_lockout_in(tx.as_mut(), &user.email).await?;
        let revoked =
            revoke_sessions_in(tx.as_mut(), user.id, None, RevokeReason::PasswordChanged, now).await?;
        let reset = AuditEntry::anonymous("user.password.reset")
            .target("user", user.id)
            .detail("revoked_sessions", revoked.len())
            .detail("lockout_cleared", lockout_cleared);
        self.commit_audited(tx, [reset]).await?;
        self.forget_sessions(&revoked, now);
        self.send_later(OutgoingEmail {
            to: user.email,
            subject: "Your password was reset".into(),
            text: "The password of your account was reset with an emailed link, and every session was \
                   ended. If you did not do this, contact your administrator now.\n"
                .into(),
        });
        Ok(())
    }

    /// On a fresh installation (no accounts), mints a setup token (1 h, single use) for
    /// `POST /v1/auth/setup`; `None` once any account exists.
    pub async fn issue_setup_token(&self) -> Result<Option<SecretToken>, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        if tx.count_users().await? > 0 {
            return Ok(None);
        }
        let token = SecretToken::generate()?;
        let record = OneTimeToken {
            hash: token.hash(),
            purpose: OneTimePurpose::Setup,
            user_id: None,
            created_at: now,
            expires_at: now.plus_millis(OneTimePurpose::Setup.lifetime_millis()),
        };
        self.store_one_time_token(tx.as_mut(), record, None).await?;
        let issued = AuditEntry::system("instance.setup_token.issued")
            .detail("expires_in_secs", OneTimePurpose::Setup.lifetime_millis() / 1000);
        self.commit_audited(tx, [issued]).await?;
        Ok(Some(token))
    }

    /// Creates the first account, an owner, with the setup token. Refused once any account exists.
    pub async fn setup_first_owner(
        &self,
        token: &str,
        email: &str,
        display_name: Option<&str>,
        password: SecretString,
    ) -> Result<Profile, AppError> {
        // Cheap checks first: this endpoint stays reachable for the installation's whole life, and
        // once an owner exists (or no setup token is live) it must cost no validation and no hash.
        let mut tx = self.inner.store.begin_read().await?;
        let open = tx.count_users().await? == 0
            && tx.has_live_one_time_token(OneTimePurpose::Setup, self.now()).await?;
        tx.rollback().await?;
        if !open {
            return Err(AppError::InvalidToken);
        }
        let account = self.validate_new_account(email, display_name, &password)?;
        let hash = self.inner.hasher.hash(account.password.clone()).await?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        // Two setups at once (two live tokens, after a restart or on two nodes) must not both see
        // no account and both create an owner.
        tx.lock_users().await?;
        let spent =
            self.spend_one_time_token(tx.as_mut(), &hash_token(token), OneTimePurpose::Setup, now).await?;
        if spent.is_none() || tx.count_users().await? > 0 {
            return Err(AppError::InvalidToken);
        }
        let user = self.new_operator_account(account, BuiltinRole::Owner, now)?;
        self.insert_account(tx.as_mut(), &user, &hash, now).await?;
        // Whoever holds the setup token, before any account exists to name.
        let setup = AuditEntry::anonymous("instance.setup")
            .target("user", user.id)
            .detail("role", BuiltinRole::Owner.as_str());
        self.commit_audited(tx, [setup]).await?;
        tracing::info!(user = %user.id, "first owner account created with the setup token");
        Ok(user.into())
    }

    /// Creates an account from the command line (`portcullis users create`). The operator vouches for
    /// the address, so it counts as verified.
    pub async fn create_user_as_operator(
        &self,
        email: &str,
        display_name: Option<&str>,
        password: SecretString,
        role: BuiltinRole,
    ) -> Result<Profile, AppError> {
        let account = self.validate_new_account(email, display_name, &password)?;
        let hash = self.inner.hasher.hash(account.password.clone()).await?;
        let now = self.now();
        let user = self.new_operator_account(account, role, now)?;
        let mut tx = self.inner.store.begin().await?;
        self.insert_account(tx.as_mut(), &user, &hash, now).await?;
        let created = AuditEntry::system("user.created")
            .target("user", user.id)
            .detail("role", role.as_str())
            .detail("via", "command_line");
        self.commit_audited(tx, [created]).await?;
        Ok(user.into())
    }

    pub(crate) fn new_operator_account(
        &self,
        account: NewAccount,
        role: BuiltinRole,
        now: Timestamp,
    ) -> Result<User, AppError> {
        Ok(User {
            id: UserId::from_random_bytes(random_id_bytes()?),
            email: account.email,
            email_verified_at: Some(now),
            display_name: account.display_name,
            status: UserStatus::Active,
            role,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        })
    }

    /// Sends a single-use signup invite (7 days) to `email`. Needs `invites:create`.
    pub async fn invite(&self, principal: &Principal, email: &str) -> Result<(), AppError> {
        // An invite opens a new account: a credential an API key must not be able to mint.
        principal.require_session()?;
        self.require(principal, "invites:create", portcullis_domain::Resource::default()).await?;
        let email = Email::parse(email).map_err(|e| AppError::invalid("/email", e))?;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let link = self.issue_link(tx.as_mut(), OneTimePurpose::Invite, None, Some(&email), now).await?;
        // The address is the invitee's personal data: the record says an invite went out, not where.
        let invited = AuditEntry::by(principal, "user.invited")
            .detail("expires_in_secs", OneTimePurpose::Invite.lifetime_millis() / 1000);
        self.commit_audited(tx, [invited]).await?;
        self.send_later(OutgoingEmail {
            to: email,
            subject: "You are invited".into(),
            text: format!(
                "You have been invited to create an account. The invite is valid for 7 days:\n\n{link}\n"
            ),
        });
        Ok(())
    }
}
