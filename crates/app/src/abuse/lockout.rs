//! Account lockout: failed logins per account identifier lock its password path for a while
//! (`portcullis_domain::lockout` holds the rule). The password reset by email is never locked and
//! ends a lockout, as does an administrator's unlock or a successful login.

use std::collections::BTreeMap;

use portcullis_domain::{Email, LoginThrottle, SecurityEventKind, UserId};
use portcullis_store::StoreTx;

use crate::audit::AuditEntry;
use crate::{App, AppError, ClientContext};

impl App {
    /// The blind index of the identifier a login names: the key of its failure record and of its rate
    /// limit budget. `None` for text that is not an address (it names no account).
    pub(crate) fn identifier_subject(&self, identifier: &str) -> Result<Option<[u8; 32]>, AppError> {
        let Ok(email) = Email::parse(identifier) else { return Ok(None) };
        Ok(Some(self.email_subject(&email)?))
    }

    pub(crate) fn email_subject(&self, email: &Email) -> Result<[u8; 32], AppError> {
        Ok(self.loaded_keys().fields.email_index(email)?.1.0)
    }

    /// Refuses a login at once while its identifier is locked (before the password is checked).
    pub(crate) fn refuse_if_locked(&self, record: Option<&LoginThrottle>) -> Result<(), AppError> {
        match record.and_then(|r| r.locked_for(self.now())) {
            Some(millis) => Err(AppError::LoginLocked {
                retry_after_secs: u64::try_from(millis).unwrap_or(0).div_ceil(1000).max(1),
            }),
            None => Ok(()),
        }
    }

    /// Counts one failed login for `subject`; the failure that reaches the policy's count locks the
    /// identifier, records `user.login.locked` in the audit trail with the lock, and an
    /// `account_locked_out` security event (with the account, when the identifier names one).
    pub(crate) async fn count_login_failure(
        &self,
        subject: [u8; 32],
        user: Option<UserId>,
        client: &ClientContext,
    ) -> Result<(), AppError> {
        let policy = self.inner.settings.lockout;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let previous = tx.login_throttle_for_update(&subject).await?;
        let (record, locked) = LoginThrottle::after_failure(previous, subject, now, &policy);
        tx.save_login_throttle(&record).await?;
        // Known identifiers and unknown ones lock alike; only the record names the account.
        let locked_entry = locked.map(|millis| {
            let entry = AuditEntry::system("user.login.locked")
                .detail("locked_for_secs", millis / 1000)
                .detail("lockouts", record.lockouts)
                .detail("failures", policy.max_failures);
            match user {
                Some(user) => entry.target("user", user),
                None => entry.detail("account", "unknown"),
            }
        });
        self.commit_audited(tx, locked_entry).await?;
        self.observe_login_failure(client.ip.as_deref(), subject).await?;
        if let Some(millis) = locked {
            let details = BTreeMap::from([
                ("locked_for_secs".to_owned(), (millis / 1000).to_string()),
                ("lockouts".to_owned(), record.lockouts.to_string()),
                ("failures".to_owned(), policy.max_failures.to_string()),
            ]);
            self.record_security_event_with(
                SecurityEventKind::AccountLockedOut,
                user,
                None,
                client.ip.as_deref(),
                details,
            )
            .await?;
        }
        Ok(())
    }

    /// Forgets failure records that no longer count (quiet for longer than the window, and not
    /// locked), so the table holds only live records however many addresses are tried; how many.
    pub async fn purge_login_throttles(&self) -> Result<u64, AppError> {
        let now = self.now();
        let before = now.plus_millis(-self.inner.settings.lockout.window_millis);
        let mut tx = self.inner.store.begin().await?;
        let purged = tx.purge_login_throttles(before, now).await?;
        tx.commit().await?;
        Ok(purged)
    }

    /// Ends the lockout of an account's address inside `tx` (a password reset, an unlock); whether
    /// there was a failure record.
    pub(crate) async fn clear_lockout_in(
        &self,
        tx: &mut dyn StoreTx,
        email: &Email,
    ) -> Result<bool, AppError> {
        Ok(tx.clear_login_throttle(&self.email_subject(email)?).await?)
    }
}
