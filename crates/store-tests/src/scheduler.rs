//! Contract checks for claims on scheduled runs: one node per (task, slot), even when every node
//! claims at the same instant.

use portcullis_domain::Timestamp;
use portcullis_store::{SCHEDULED_RUN_CLAIMS_KEPT_MILLIS, Store, StoreError};

use super::{Outcome, Step, at, ensure_eq, migrated};

const DAY: i64 = 86_400_000;

/// How many nodes race for one slot (listed one by one in the check's `tokio::join!`).
const NODES: usize = 8;

/// Claims in a transaction of its own, committed: what one node's scheduler does.
async fn claim(store: &dyn Store, task: &str, slot: Timestamp, node: &str) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    let claimed = tx.claim_scheduled_run(task, slot, node, slot).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// The first claim of a slot wins and a second, from another node or the same one, does not;
/// another slot of the task, and the same slot of another task, are claims of their own.
pub async fn a_scheduled_run_is_claimed_once_per_task_and_slot(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let slot = at(0);

    ensure_eq("the first claim", &claim(store, "backup", slot, "a").await.step("claim")?, &true)?;
    ensure_eq("another node's", &claim(store, "backup", slot, "b").await.step("claim again")?, &false)?;
    ensure_eq("the same node's", &claim(store, "backup", slot, "a").await.step("claim again")?, &false)?;
    let next = claim(store, "backup", at(DAY), "b").await.step("claim the next slot")?;
    ensure_eq("the next slot", &next, &true)?;
    ensure_eq("another task", &claim(store, "drill", slot, "b").await.step("claim a drill")?, &true)?;
    Ok(())
}

/// A winning claim deletes its task's claims older than [`SCHEDULED_RUN_CLAIMS_KEPT_MILLIS`] (their
/// slots could be claimed again), keeps younger ones and other tasks', and a losing claim deletes
/// nothing.
pub async fn a_winning_claim_forgets_its_tasks_claims_past_their_keeping(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (old, recent) = (at(0), at(10 * DAY));
    for (task, slot) in [("backup", old), ("backup", recent), ("drill", old)] {
        claim(store, task, slot, "a").await.step("claim")?;
    }
    let later = at(SCHEDULED_RUN_CLAIMS_KEPT_MILLIS + DAY);

    let mut tx = store.begin().await.step("begin")?;
    let lost = tx.claim_scheduled_run("backup", recent, "b", later).await.step("claim a claimed slot")?;
    tx.commit().await.step("commit")?;
    ensure_eq("a losing claim", &lost, &false)?;
    ensure_eq("after a losing claim", &claim(store, "backup", old, "b").await.step("claim")?, &false)?;

    let mut tx = store.begin().await.step("begin")?;
    let won = tx.claim_scheduled_run("backup", later, "b", later).await.step("claim a new slot")?;
    tx.commit().await.step("commit")?;
    ensure_eq("a winning claim", &won, &true)?;
    ensure_eq("the old slot", &claim(store, "backup", old, "b").await.step("claim the old slot")?, &true)?;
    let kept = claim(store, "backup", recent, "b").await.step("claim the recent slot")?;
    ensure_eq("the recent slot", &kept, &false)?;
    ensure_eq("another task's old slot", &claim(store, "drill", old, "b").await.step("claim")?, &false)
}

/// Eight nodes claim the same slot at once, each in its own transaction: exactly one wins, whatever
/// the engine's isolation (PostgreSQL: the losers' inserts wait on the winner's key; SQLite: one
/// writer). A claim left open while another is made does not let both win either.
pub async fn nodes_claiming_one_slot_at_once_have_exactly_one_winner(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let slot = at(0);
    let nodes: Vec<String> = (0..NODES).map(|n| format!("node-{n}")).collect();
    let race = |n: usize| claim(store, "backup", slot, &nodes[n]);

    let (a, b, c, d, e, f, g, h) =
        tokio::join!(race(0), race(1), race(2), race(3), race(4), race(5), race(6), race(7));
    let mut winners = 0;
    for result in [a, b, c, d, e, f, g, h] {
        winners += usize::from(result.step("a racing claim")?);
    }
    ensure_eq("the winners of one slot", &winners, &1)?;

    let next = at(DAY);
    let mut first = store.begin().await.step("begin the first claim")?;
    let first_won = first.claim_scheduled_run("drill", next, "a", next).await.step("the first claim")?;
    let (second, committed) = tokio::join!(claim(store, "drill", next, "b"), first.commit());
    committed.step("commit the first claim")?;
    ensure_eq("the first claim", &first_won, &true)?;
    ensure_eq("the claim made while the first was open", &second.step("the second claim")?, &false)
}
