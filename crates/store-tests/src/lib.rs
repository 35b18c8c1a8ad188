//! The storage contract as executable checks: what every backend must do, proven on a fresh database.
//!
//! Each check takes a freshly created, unmigrated database behind `&dyn Store`, so it says nothing
//! about any one engine; `tests/contract.rs` runs every check in [`CHECKS`] on SQLite and on
//! PostgreSQL, which is what keeps the two hand-written dialects from drifting apart
//! (CONVENTIONS.md, "Why these choices").
//!
//! Checks return a [`Failure`] instead of panicking, so the runner can finish every check, drop the
//! databases it created, and only then report; a panic would leave a PostgreSQL database behind.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use portcullis_domain::{InstanceId, InstanceMeta, Timestamp, error_chain};
use portcullis_store::{Store, StoreError, StoreTx};

/// Why a check failed, in words that name the step and the engine's error chain.
#[derive(Debug)]
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// The result of one check.
pub type Outcome = Result<(), Failure>;

/// The future a check returns, boxed so that all checks fit in one table.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One named contract check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The check's function name, a sentence, as shown in a failure report.
    pub name: &'static str,
    /// Runs the check on a fresh, unmigrated database.
    pub run: for<'a> fn(&'a dyn Store) -> CheckFuture<'a>,
}

/// Every check that needs nothing but the store itself. A check added here runs on every backend
/// without further wiring; [`a_database_migrated_by_a_newer_binary_is_refused`] is separate because
/// it must write behind the store's back.
pub const CHECKS: &[Check] = &[
    Check {
        name: "a_fresh_database_has_every_migration_pending",
        run: |s| Box::pin(a_fresh_database_has_every_migration_pending(s)),
    },
    Check {
        name: "migrate_applies_everything_and_is_idempotent",
        run: |s| Box::pin(migrate_applies_everything_and_is_idempotent(s)),
    },
    Check {
        name: "instance_is_absent_before_bootstrap",
        run: |s| Box::pin(instance_is_absent_before_bootstrap(s)),
    },
    Check { name: "instance_round_trips", run: |s| Box::pin(instance_round_trips(s)) },
    Check {
        name: "a_second_instance_row_is_a_conflict",
        run: |s| Box::pin(a_second_instance_row_is_a_conflict(s)),
    },
    Check {
        name: "a_transaction_in_which_a_statement_failed_refuses_to_commit",
        run: |s| Box::pin(a_transaction_in_which_a_statement_failed_refuses_to_commit(s)),
    },
    Check {
        name: "two_nodes_bootstrapping_at_once_agree_on_one_instance",
        run: |s| Box::pin(two_nodes_bootstrapping_at_once_agree_on_one_instance(s)),
    },
    Check {
        name: "a_transaction_sees_its_own_writes",
        run: |s| Box::pin(a_transaction_sees_its_own_writes(s)),
    },
    Check {
        name: "uncommitted_writes_are_invisible_to_other_transactions",
        run: |s| Box::pin(uncommitted_writes_are_invisible_to_other_transactions(s)),
    },
    Check {
        name: "an_uncommitted_transaction_leaves_nothing",
        run: |s| Box::pin(an_uncommitted_transaction_leaves_nothing(s)),
    },
    Check {
        name: "an_explicit_rollback_leaves_nothing",
        run: |s| Box::pin(an_explicit_rollback_leaves_nothing(s)),
    },
    Check {
        name: "a_read_transaction_sees_committed_data",
        run: |s| Box::pin(a_read_transaction_sees_committed_data(s)),
    },
    Check {
        name: "a_read_transaction_keeps_one_snapshot",
        run: |s| Box::pin(a_read_transaction_keeps_one_snapshot(s)),
    },
    Check {
        name: "a_read_transaction_refuses_writes",
        run: |s| Box::pin(a_read_transaction_refuses_writes(s)),
    },
    Check { name: "ping_answers", run: |s| Box::pin(ping_answers(s)) },
    Check { name: "close_is_clean", run: |s| Box::pin(close_is_clean(s)) },
];

/// The migration version [`a_database_migrated_by_a_newer_binary_is_refused`] expects the runner to
/// record, standing for a schema change made by a later Portcullis.
pub const FUTURE_MIGRATION_VERSION: i64 = 99_990_101_000_000;

// ---------------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------------

/// Before anything runs, the store reports every embedded migration as pending and none applied,
/// including on an engine where the bookkeeping table does not exist yet.
pub async fn a_fresh_database_has_every_migration_pending(store: &dyn Store) -> Outcome {
    let status = store.migration_status().await.step("read the migration status")?;

    ensure_eq("applied migrations", &status.applied, &Vec::new())?;
    ensure(!status.pending.is_empty(), || "the binary embeds no migration at all".into())?;
    ensure(status.pending.windows(2).all(|w| w[0] < w[1]), || {
        format!("pending versions are not in ascending order: {:?}", status.pending)
    })?;
    ensure_eq("unknown migrations", &status.unknown, &Vec::new())?;
    ensure(!status.is_current(), || "a fresh database claims to be current".into())?;
    ensure_eq("schema version", &status.schema_version(), &0)
}

/// `migrate` applies exactly what was pending, leaves the schema current, and a second run is a
/// no-op: every node runs it at start, so it must be safe to repeat.
pub async fn migrate_applies_everything_and_is_idempotent(store: &dyn Store) -> Outcome {
    let before = store.migration_status().await.step("read the migration status")?;

    let applied = store.migrate().await.step("migrate a fresh database")?;
    let after = store.migration_status().await.step("read the status after migrating")?;
    let again = store.migrate().await.step("migrate a second time")?;
    let last = store.migration_status().await.step("read the status after migrating twice")?;

    ensure_eq("versions reported as applied", &applied, &before.pending)?;
    ensure_eq("versions recorded as applied", &after.applied, &before.pending)?;
    ensure(after.is_current(), || format!("the schema is not current after migrating: {after:?}"))?;
    ensure_eq("schema version", &after.schema_version(), &before.pending.last().copied().unwrap_or(0))?;
    ensure_eq("versions applied by the second run", &again, &Vec::new())?;
    ensure_eq("status after the second run", &last, &after)
}

/// A store must notice a schema written by a newer Portcullis, report the versions it does not
/// know, and refuse to migrate, so an older binary never serves (or damages) newer data.
///
/// `record_future_migration` must record [`FUTURE_MIGRATION_VERSION`] as applied in the engine's
/// migration table; it is awaited after this check has migrated the database.
pub async fn a_database_migrated_by_a_newer_binary_is_refused(
    store: &dyn Store,
    record_future_migration: impl Future<Output = Result<(), String>>,
) -> Outcome {
    migrated(store).await?;
    record_future_migration.await.map_err(|e| Failure(format!("record a migration from the future: {e}")))?;

    let status = store.migration_status().await.step("read the migration status")?;
    let migrate = store.migrate().await;

    ensure_eq("unknown migrations", &status.unknown, &vec![FUTURE_MIGRATION_VERSION])?;
    ensure(!status.is_current(), || "a database from a newer binary claims to be current".into())?;
    match migrate {
        Err(StoreError::Migration(_)) => Ok(()),
        Err(other) => Err(Failure(format!(
            "migrate failed, but not with StoreError::Migration: {}",
            error_chain(&other)
        ))),
        Ok(applied) => {
            Err(Failure(format!("migrate accepted a database from a newer binary (applied {applied:?})")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The instance aggregate
// ---------------------------------------------------------------------------------------------

/// A migrated database has no instance row until the first start writes one.
pub async fn instance_is_absent_before_bootstrap(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let found = committed_instance(store).await?;

    ensure_eq("instance before bootstrap", &found, &None)
}

/// What is written comes back unchanged: the id, the timestamp to the millisecond (beyond 32 bits),
/// and the version text.
pub async fn instance_round_trips(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let meta = InstanceMeta {
        id: InstanceId::from_random_bytes([0xa5; 16]),
        created_at: Timestamp::from_unix_millis(1_767_225_600_123),
        created_by_version: "0.1.0-rc.1+build.7".into(),
    };

    write_instance(store, &meta).await?;
    let found = committed_instance(store).await?;

    ensure_eq("instance read back", &found, &Some(meta))
}

/// There is one instance row: a second insert fails with `Conflict { entity: "instance" }` and the
/// first row is left untouched.
pub async fn a_second_instance_row_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;

    let mut tx = store.begin().await.step("begin the second insert")?;
    let second = tx.insert_instance(&instance(2)).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let found = committed_instance(store).await?;

    ensure_conflict("the second insert", second, "instance")?;
    ensure_eq("instance after the conflict", &found, &Some(instance(1)))
}

/// After a failed statement the transaction cannot commit on either engine (PostgreSQL aborts it;
/// SQLite would carry on), so code tested on SQLite cannot rely on committing past an error.
pub async fn a_transaction_in_which_a_statement_failed_refuses_to_commit(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;
    let mut tx = store.begin().await.step("begin")?;
    let second = tx.insert_instance(&instance(2)).await;
    ensure_conflict("the conflicting insert", second, "instance")?;
    match tx.commit().await {
        Err(StoreError::Database(_)) => {}
        other => {
            return Err(Failure(format!(
                "commit after a failed statement: expected Database error, got {other:?}"
            )));
        }
    }
    let found = committed_instance(store).await?;
    ensure_eq("instance after the refused commit", &found, &Some(instance(1)))
}

/// Two nodes starting together both try to create the instance; whichever commits first wins and
/// the other gets `Conflict`, which is how they agree on one identity (see `InstanceStore`).
///
/// The second transaction starts while the first is still open: SQLite makes it wait for the
/// single writer, PostgreSQL makes its insert wait on the first one's uncommitted key. Either way
/// it must end in `Conflict`, not in a second row, a deadlock or a timeout.
pub async fn two_nodes_bootstrapping_at_once_agree_on_one_instance(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut first = store.begin().await.step("begin the first node's bootstrap")?;
    first.insert_instance(&instance(1)).await.step("insert the first node's instance")?;

    let second = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_instance(&instance(2)).await;
        // Dropping the transaction rolls it back; nothing to keep either way.
        drop(tx);
        inserted
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    let found = committed_instance(store).await?;

    first_commit.step("commit the first node's bootstrap")?;
    ensure_conflict("the second node's insert", second, "instance")?;
    ensure_eq("instance after the race", &found, &Some(instance(1)))
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

/// Inside one transaction, a read after a write sees the write (a use case checks what it did
/// before it writes the audit record).
pub async fn a_transaction_sees_its_own_writes(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    let seen = tx.instance().await.step("read the instance in the same transaction")?;
    tx.rollback().await.step("roll back")?;

    ensure_eq("instance seen by its own transaction", &seen, &Some(instance(1)))
}

/// Until a transaction commits, no other transaction sees its changes (no dirty reads).
pub async fn uncommitted_writes_are_invisible_to_other_transactions(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut writer = store.begin().await.step("begin the writer")?;
    writer.insert_instance(&instance(1)).await.step("insert the instance")?;
    let seen_meanwhile = committed_instance(store).await?;
    writer.commit().await.step("commit the writer")?;
    let seen_after = committed_instance(store).await?;

    ensure_eq("instance seen before the commit", &seen_meanwhile, &None)?;
    ensure_eq("instance seen after the commit", &seen_after, &Some(instance(1)))
}

/// Dropping a transaction without `commit` discards its changes, and the store stays writable:
/// an early `?` return in a use case must not leave a half-written change or a held lock.
pub async fn an_uncommitted_transaction_leaves_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    drop(tx);
    let found = committed_instance(store).await?;
    write_instance(store, &instance(2)).await?;
    let after = committed_instance(store).await?;

    ensure_eq("instance after a dropped transaction", &found, &None)?;
    ensure_eq("instance written after the dropped transaction", &after, &Some(instance(2)))
}

/// `rollback` discards every change in the transaction, and the store stays writable.
pub async fn an_explicit_rollback_leaves_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    tx.rollback().await.step("roll back")?;
    let found = committed_instance(store).await?;
    write_instance(store, &instance(2)).await?;
    let after = committed_instance(store).await?;

    ensure_eq("instance after a rollback", &found, &None)?;
    ensure_eq("instance written after the rollback", &after, &Some(instance(2)))
}

/// A read transaction begun after a commit sees it (the readers are not stale copies).
pub async fn a_read_transaction_sees_committed_data(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    write_instance(store, &instance(1)).await?;
    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let seen = reader.instance().await.step("read the instance")?;
    reader.commit().await.step("end the read transaction")?;

    ensure_eq("instance seen by the reader", &seen, &Some(instance(1)))
}

/// A read transaction is one consistent snapshot: a commit made after its first read does not
/// appear in its later reads, so a page assembled from several queries never mixes two states.
pub async fn a_read_transaction_keeps_one_snapshot(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let first_read = reader.instance().await.step("read before the commit")?;
    write_instance(store, &instance(1)).await?;
    let second_read = reader.instance().await.step("read again after the commit")?;
    reader.commit().await.step("end the read transaction")?;
    let fresh_read = committed_instance(store).await?;

    ensure_eq("first read in the snapshot", &first_read, &None)?;
    ensure_eq("second read in the snapshot", &second_read, &None)?;
    ensure_eq("read in a new transaction", &fresh_read, &Some(instance(1)))
}

/// A read transaction refuses to write, with `StoreError::Database`, and nothing is stored: a use
/// case that writes through `begin_read` by mistake fails in tests on every engine instead of
/// writing on one of them.
pub async fn a_read_transaction_refuses_writes(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let attempt = reader.insert_instance(&instance(1)).await;
    reader.rollback().await.step("roll back the read transaction")?;
    let found = committed_instance(store).await?;

    match attempt {
        Err(StoreError::Database(_)) => {}
        Err(other) => {
            return Err(Failure(format!(
                "the write failed, but not with StoreError::Database: {}",
                error_chain(&other)
            )));
        }
        Ok(()) => return Err(Failure("a read transaction accepted an insert".into())),
    }
    ensure_eq("instance after the refused write", &found, &None)
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// The health check's round trip answers on a working database, migrated or not.
pub async fn ping_answers(store: &dyn Store) -> Outcome {
    store.ping().await.step("ping before migrating")?;
    migrated(store).await?;
    store.ping().await.step("ping after migrating")
}

/// `close` returns once every connection is closed, and afterwards the store answers
/// `Unavailable` instead of hanging or panicking, so shutdown can close the store before the last
/// request has finished with it.
pub async fn close_is_clean(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;

    store.close().await;
    let ping = store.ping().await;
    let begin = store.begin().await.map(|_| ());
    let begin_read = store.begin_read().await.map(|_| ());

    ensure_unavailable("ping after close", ping)?;
    ensure_unavailable("begin after close", begin)?;
    ensure_unavailable("begin_read after close", begin_read)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A distinct, valid instance for each seed.
fn instance(seed: u8) -> InstanceMeta {
    InstanceMeta {
        id: InstanceId::from_random_bytes([seed; 16]),
        created_at: Timestamp::from_unix_millis(1_767_225_600_000 + i64::from(seed)),
        created_by_version: format!("0.{seed}.0"),
    }
}

/// Brings the fresh database to the current schema, as every start does.
async fn migrated(store: &dyn Store) -> Outcome {
    store.migrate().await.step("migrate")?;
    Ok(())
}

/// Inserts and commits the instance in a transaction of its own.
async fn write_instance(store: &dyn Store, meta: &InstanceMeta) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    tx.insert_instance(meta).await.step("insert the instance")?;
    tx.commit().await.step("commit the instance")
}

/// The instance as a new read transaction sees it.
async fn committed_instance(store: &dyn Store) -> Result<Option<InstanceMeta>, Failure> {
    let mut reader: Box<dyn StoreTx> = store.begin_read().await.step("begin a read")?;
    let found = reader.instance().await.step("read the instance")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(Failure(message())) }
}

fn ensure_eq<T: PartialEq + fmt::Debug>(what: &str, actual: &T, expected: &T) -> Outcome {
    ensure(actual == expected, || format!("{what}: expected {expected:?}, got {actual:?}"))
}

fn ensure_conflict(what: &str, result: Result<(), StoreError>, entity: &str) -> Outcome {
    match result {
        Err(StoreError::Conflict { entity: e }) if e == entity => Ok(()),
        Err(other) => Err(Failure(format!(
            "{what}: expected Conflict {{ entity: {entity:?} }}, got {}",
            error_chain(&other)
        ))),
        Ok(()) => Err(Failure(format!("{what}: expected Conflict {{ entity: {entity:?} }}, got Ok"))),
    }
}

fn ensure_unavailable(what: &str, result: Result<(), StoreError>) -> Outcome {
    match result {
        Err(StoreError::Unavailable(_)) => Ok(()),
        Err(other) => Err(Failure(format!("{what}: expected Unavailable, got {}", error_chain(&other)))),
        Ok(()) => Err(Failure(format!("{what}: expected Unavailable, got Ok"))),
    }
}

/// Attaches the step that failed to a store error, with its whole cause chain, because the top
/// level of a `StoreError` ("database error") alone says nothing about what went wrong.
trait Step<T> {
    fn step(self, what: &str) -> Result<T, Failure>;
}

impl<T> Step<T> for Result<T, StoreError> {
    fn step(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {}", error_chain(&e))))
    }
}
