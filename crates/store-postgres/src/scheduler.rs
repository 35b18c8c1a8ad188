//! PostgreSQL implementation of claims on scheduled runs.

use async_trait::async_trait;
use portcullis_domain::Timestamp;
use portcullis_store::{SCHEDULED_RUN_CLAIMS_KEPT_MILLIS, SchedulerStore, StoreError};

use crate::PostgresTx;

#[async_trait]
impl SchedulerStore for PostgresTx {
    async fn claim_scheduled_run(
        &mut self,
        task: &str,
        slot: Timestamp,
        node: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // A second claim of the slot while the first is uncommitted waits on its key, then does nothing
        // if it committed (or inserts if it rolled back): never two winners at READ COMMITTED.
        let claimed = sqlx::query(
            "INSERT INTO scheduled_runs (task, slot_at, node, claimed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (task, slot_at) DO NOTHING",
        )
        .bind(task)
        .bind(slot.as_unix_millis())
        .bind(node)
        .bind(now.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        let claimed = match claimed {
            Ok(result) => result.rows_affected() == 1,
            Err(e) => return Err(self.fail(e)),
        };
        if claimed {
            // Only the winner purges, so nodes claiming the same slot never contend for old rows.
            let purged = sqlx::query("DELETE FROM scheduled_runs WHERE task = $1 AND claimed_at < $2")
                .bind(task)
                .bind(now.as_unix_millis().saturating_sub(SCHEDULED_RUN_CLAIMS_KEPT_MILLIS))
                .execute(&mut *self.tx)
                .await;
            if let Err(e) = purged {
                return Err(self.fail(e));
            }
        }
        Ok(claimed)
    }
}
