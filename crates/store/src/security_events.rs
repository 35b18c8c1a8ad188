//! Security events, recorded in the same transaction as the change that caused them, and read back
//! by defenders a page at a time.

use async_trait::async_trait;
use portcullis_domain::{SecurityEventKind, Timestamp, UserId};

use crate::StoreError;
use crate::pii::StoredSecurityEvent;

/// A position in the newest-first order of security events: an event's time and its `seq`, the
/// number the database gave it when it was recorded.
///
/// The order is `(at DESC, seq DESC)`, which is total (seq is unique), so a page that starts after a
/// position neither repeats nor skips an event however many share a millisecond. The position is the
/// pair rather than an event id so that it stays valid when that event is purged, and rather than
/// seq alone because times come from the nodes' clocks and need not grow with seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecurityEventCursor {
    pub at: Timestamp,
    pub seq: i64,
}

/// Which security events to list and where the page starts. Every filter is optional; together
/// they all apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityEventQuery {
    /// Only events of these kinds; empty for every kind.
    pub kinds: Vec<SecurityEventKind>,
    /// Only events about this account.
    pub user_id: Option<UserId>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time: with `since`, the half-open interval `[since, until)`.
    pub until: Option<Timestamp>,
    /// Only events after this position in the newest-first order (the `next` of the previous page).
    pub after: Option<SecurityEventCursor>,
    /// The most events in the page; 0 gives an empty page.
    pub limit: u32,
}

/// One page of security events, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEventPage {
    pub events: Vec<StoredSecurityEvent>,
    /// Where the next page starts (the position of the last event here), if any event follows it.
    pub next: Option<SecurityEventCursor>,
}

/// Security events.
#[async_trait]
pub trait SecurityEventStore {
    /// Records one event.
    async fn insert_security_event(&mut self, event: &StoredSecurityEvent) -> Result<(), StoreError>;

    /// The newest `limit` events concerning `user`, newest first.
    async fn security_events_of(
        &mut self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError>;

    /// Up to `query.limit` events matching every filter of `query`, in `(at DESC, seq DESC)` order,
    /// starting after `query.after`: keyset pagination, so pages neither repeat nor skip events
    /// while new ones are recorded (a new event lands before the cursor, on a new listing's first
    /// page, unless its node's clock puts it behind).
    async fn list_security_events(
        &mut self,
        query: &SecurityEventQuery,
    ) -> Result<SecurityEventPage, StoreError>;
}
