//! Claims on scheduled runs: with several nodes on one database, each slot of a schedule (the daily
//! backup, the weekly restore drill) is run by the one node that claims it first
//! (docs/decisions/0012-backups.md, "Scheduling").

use async_trait::async_trait;
use portcullis_domain::Timestamp;

use crate::StoreError;

/// How long a claim is kept: long past any slot still to be claimed, short enough that the table
/// stays a few hundred rows. The next winning claim of the same task deletes older ones.
pub const SCHEDULED_RUN_CLAIMS_KEPT_MILLIS: i64 = 90 * 86_400_000;

/// Claims on scheduled runs.
#[async_trait]
pub trait SchedulerStore {
    /// Claims the run of `task` at `slot` (the time its schedule named) for `node`; whether this
    /// claim won. The first claim of a slot wins and every later one, from any node, does not: the
    /// claim is an insert that does nothing on a conflicting key (never a read, then a write), so
    /// two transactions claiming at once cannot both win on either engine (PostgreSQL makes the
    /// second insert wait on the first's uncommitted key; SQLite has one writer). The claim holds
    /// once the transaction commits. A winning claim also deletes the task's claims made before
    /// `now` less [`SCHEDULED_RUN_CLAIMS_KEPT_MILLIS`].
    async fn claim_scheduled_run(
        &mut self,
        task: &str,
        slot: Timestamp,
        node: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}
