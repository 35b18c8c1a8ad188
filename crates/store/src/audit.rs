//! The audit trail: events appended at the chain head in the same transaction as the change they
//! record, signed checkpoints, and the reads that verify, export and list them.

use async_trait::async_trait;
use portcullis_domain::{AuditCheckpoint, AuditEvent, ChainHead, Outcome, Timestamp};

use crate::StoreError;

/// Which events to list, newest first. Every filter is optional; together they all apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events whose actor id or acted-for account is this.
    pub actor_id: Option<String>,
    /// Events that concern this id at all: as the actor, as the account acted for, or as the target
    /// (whatever its type). A person's data export lists their events with it.
    pub involving: Option<String>,
    /// Events whose action starts with this (`user.` finds every user action).
    pub action_prefix: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub organization_id: Option<String>,
    pub outcome: Option<Outcome>,
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
    /// Only events with a smaller seq (the cursor: the last seq of the previous page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// The audit trail.
#[async_trait]
pub trait AuditStore {
    /// The chain head, locked until the transaction ends so that appends from any number of
    /// transactions and nodes form one chain. Take it last, just before appending and committing:
    /// every auditing transaction waits for it (on SQLite writers are serial anyway; on PostgreSQL
    /// it is a row lock).
    async fn lock_audit_head(&mut self) -> Result<ChainHead, StoreError>;

    /// The chain head as this transaction sees it, without locking it (verification, checkpoints).
    async fn read_audit_head(&mut self) -> Result<ChainHead, StoreError>;

    /// Appends `events` (already linked after `from`) and moves the head to the last of them. The
    /// move is conditional on the head still being `from`: otherwise [`StoreError::Conflict`] with
    /// entity `"audit_head"` and nothing is written.
    async fn append_audit_events(&mut self, from: ChainHead, events: &[AuditEvent])
    -> Result<(), StoreError>;

    /// Up to `limit` events with seq greater than `after_seq`, in seq order (verification, export).
    async fn audit_events_after(&mut self, after_seq: i64, limit: u32)
    -> Result<Vec<AuditEvent>, StoreError>;

    /// Events matching `query`, newest (highest seq) first.
    async fn list_audit_events(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// The smallest and largest seq stored and how many events there are, or `None` when empty.
    async fn audit_bounds(&mut self) -> Result<Option<(i64, i64, u64)>, StoreError>;

    /// Stores a checkpoint; one per seq ([`StoreError::Conflict`] with entity `"audit_checkpoint"`
    /// when another node stored one for the same seq first).
    async fn insert_audit_checkpoint(&mut self, checkpoint: &AuditCheckpoint) -> Result<(), StoreError>;

    /// The checkpoint with the largest seq, if any.
    async fn latest_audit_checkpoint(&mut self) -> Result<Option<AuditCheckpoint>, StoreError>;

    /// Up to `limit` checkpoints with seq greater than `after_seq`, in seq order.
    async fn audit_checkpoints_after(
        &mut self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditCheckpoint>, StoreError>;

    /// The checkpoint with exactly this seq.
    async fn audit_checkpoint_at(&mut self, seq: i64) -> Result<Option<AuditCheckpoint>, StoreError>;

    /// The largest seq of a checkpoint whose event is older than `before`: where retention may cut.
    async fn audit_purge_cut(&mut self, before: Timestamp) -> Result<Option<i64>, StoreError>;

    /// Deletes up to `limit` of the oldest events with seq at most `through_seq`; returns how many.
    async fn purge_audit_events(&mut self, through_seq: i64, limit: u32) -> Result<u64, StoreError>;

    /// How many events hold a field sealed under this personal-data key (which is then kept).
    async fn count_audit_rows_under(&mut self, pii_key: &str) -> Result<u64, StoreError>;
}
