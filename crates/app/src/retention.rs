//! Retention: what is deleted once it has been kept long enough. `serve` runs the policies every
//! hour, `portcullis retention run` on demand (`--dry-run` counts without deleting). Each batch that
//! deletes anything commits with an audit event saying what went, so the trail shows every purge.
//! Audit events follow their own policy (`audit.retention_days`, cut at signed checkpoints).

use portcullis_domain::Timestamp;

use crate::audit::AuditEntry;
use crate::{App, AppError};

/// Rows deleted per transaction: bounded, so a first run over years of data never holds the single
/// SQLite writer for long.
const BATCH: u32 = 1000;

const DAY_MILLIS: i64 = 86_400_000;

/// How long each kind of record is kept, in days; 0 keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Sessions that were revoked or expired this long ago (with their refresh tokens).
    pub ended_sessions_days: u32,
    /// Security events older than this.
    pub security_events_days: u32,
    /// Member accounts created this long ago that never confirmed their address nor logged in.
    pub unverified_accounts_days: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { ended_sessions_days: 30, security_events_days: 365, unverified_accounts_days: 30 }
    }
}

/// What a run deleted (or, dry, would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub ended_sessions: u64,
    pub security_events: u64,
    pub unverified_accounts: u64,
}

/// One policy's purge: a batch at a time, in `tx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    EndedSessions,
    SecurityEvents,
    UnverifiedAccounts,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::EndedSessions => "ended_sessions",
            Policy::SecurityEvents => "security_events",
            Policy::UnverifiedAccounts => "unverified_accounts",
        }
    }
}

impl App {
    /// The retention policies in force.
    pub fn retention_settings(&self) -> RetentionSettings {
        self.inner.settings.retention
    }

    /// Applies every retention policy now. Dry, the same deletions run in one transaction that is
    /// rolled back, so the counts are exactly what a real run would delete and nothing changes.
    pub async fn run_retention(&self, dry_run: bool) -> Result<RetentionReport, AppError> {
        let settings = self.inner.settings.retention;
        let now = self.now();
        let cutoff = |days: u32| (days > 0).then(|| now.plus_millis(-(i64::from(days) * DAY_MILLIS)));
        let mut report = RetentionReport::default();
        for (policy, before) in [
            (Policy::EndedSessions, cutoff(settings.ended_sessions_days)),
            (Policy::SecurityEvents, cutoff(settings.security_events_days)),
            (Policy::UnverifiedAccounts, cutoff(settings.unverified_accounts_days)),
        ] {
            let Some(before) = before else { continue };
            let deleted = if dry_run {
                let mut tx = self.inner.store.begin().await?;
                let mut total = 0;
                loop {
                    let (n, _) = self.purge_batch(tx.as_mut(), policy, before, now).await?;
                    total += n;
                    if n < u64::from(BATCH) {
                        break;
                    }
                }
                tx.rollback().await?;
                total
            } else {
                self.purge(policy, before, now).await?
            };
            match policy {
                Policy::EndedSessions => report.ended_sessions = deleted,
                Policy::SecurityEvents => report.security_events = deleted,
                Policy::UnverifiedAccounts => report.unverified_accounts = deleted,
            }
        }
        Ok(report)
    }

    /// A policy's batches, each committed with its audit event, until one comes back short.
    async fn purge(&self, policy: Policy, before: Timestamp, now: Timestamp) -> Result<u64, AppError> {
        let mut total = 0;
        loop {
            let mut tx = self.inner.store.begin().await?;
            let (n, accounts) = self.purge_batch(tx.as_mut(), policy, before, now).await?;
            if n == 0 {
                tx.rollback().await?;
                break;
            }
            let purged = AuditEntry::system("retention.purged")
                .detail("policy", policy.as_str())
                .detail("deleted", n)
                .detail("before", before.to_rfc3339());
            // Each account by its id as well, as an administrator's deletion is recorded.
            let deleted = accounts.into_iter().map(|id| {
                AuditEntry::system("user.deleted").target("user", id).detail("reason", "retention_unverified")
            });
            self.commit_audited(tx, std::iter::once(purged).chain(deleted)).await?;
            total += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        if total > 0 {
            tracing::info!(policy = policy.as_str(), deleted = total, "retention purge");
        }
        Ok(total)
    }

    async fn purge_batch(
        &self,
        tx: &mut dyn portcullis_store::StoreTx,
        policy: Policy,
        before: Timestamp,
        now: Timestamp,
    ) -> Result<(u64, Vec<portcullis_domain::UserId>), AppError> {
        Ok(match policy {
            Policy::EndedSessions => (tx.purge_ended_sessions(before, BATCH).await?, Vec::new()),
            Policy::SecurityEvents => (tx.purge_security_events(before, BATCH).await?, Vec::new()),
            Policy::UnverifiedAccounts => {
                let mut deleted = Vec::new();
                for id in tx.unverified_accounts_before(before, BATCH).await? {
                    if tx.delete_user(id, now).await? {
                        deleted.push(id);
                    }
                }
                (deleted.len() as u64, deleted)
            }
        })
    }
}
