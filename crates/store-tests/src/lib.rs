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
use std::slice;

use portcullis_domain::{
    BuiltinRole, DisplayName, Email, InstanceId, InstanceMeta, OneTimePurpose, OneTimeToken, RevokeReason,
    SecurityEvent, SecurityEventKind, Session, SessionId, SessionKind, Timestamp, TokenHash, User, UserId,
    UserStatus, error_chain,
};
use portcullis_store::{RefreshSpend, Store, StoreError, StoreTx, StoredSigningKey};

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
    Check {
        name: "a_user_round_trips_and_is_found_by_email_in_any_case",
        run: |s| Box::pin(a_user_round_trips_and_is_found_by_email_in_any_case(s)),
    },
    Check {
        name: "a_second_account_with_the_same_email_in_another_case_is_a_conflict",
        run: |s| Box::pin(a_second_account_with_the_same_email_in_another_case_is_a_conflict(s)),
    },
    Check {
        name: "verifying_an_email_and_logging_in_are_recorded",
        run: |s| Box::pin(verifying_an_email_and_logging_in_are_recorded(s)),
    },
    Check {
        name: "a_password_hash_is_set_replaced_and_only_swapped_while_still_expected",
        run: |s| Box::pin(a_password_hash_is_set_replaced_and_only_swapped_while_still_expected(s)),
    },
    Check {
        name: "a_one_time_token_is_spent_once_for_its_purpose_before_it_expires",
        run: |s| Box::pin(a_one_time_token_is_spent_once_for_its_purpose_before_it_expires(s)),
    },
    Check {
        name: "voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose",
        run: |s| Box::pin(voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose(s)),
    },
    Check {
        name: "a_live_one_time_token_is_unused_unexpired_and_of_the_purpose",
        run: |s| Box::pin(a_live_one_time_token_is_unused_unexpired_and_of_the_purpose(s)),
    },
    Check {
        name: "two_first_owner_setups_at_once_create_one_account",
        run: |s| Box::pin(two_first_owner_setups_at_once_create_one_account(s)),
    },
    Check {
        name: "two_transactions_spending_one_one_time_token_at_once_get_it_once",
        run: |s| Box::pin(two_transactions_spending_one_one_time_token_at_once_get_it_once(s)),
    },
    Check {
        name: "a_session_round_trips_and_is_found_by_its_cookie",
        run: |s| Box::pin(a_session_round_trips_and_is_found_by_its_cookie(s)),
    },
    Check {
        name: "sessions_of_lists_live_sessions_newest_first",
        run: |s| Box::pin(sessions_of_lists_live_sessions_newest_first(s)),
    },
    Check {
        name: "revoking_another_accounts_session_is_refused_and_changes_nothing",
        run: |s| Box::pin(revoking_another_accounts_session_is_refused_and_changes_nothing(s)),
    },
    Check {
        name: "revoking_all_sessions_of_an_account_keeps_the_one_asked_for",
        run: |s| Box::pin(revoking_all_sessions_of_an_account_keeps_the_one_asked_for(s)),
    },
    Check {
        name: "touching_a_session_moves_last_seen_forward_and_never_back",
        run: |s| Box::pin(touching_a_session_moves_last_seen_forward_and_never_back(s)),
    },
    Check {
        name: "sessions_revoked_since_lists_revocations_from_that_instant",
        run: |s| Box::pin(sessions_revoked_since_lists_revocations_from_that_instant(s)),
    },
    Check {
        name: "a_refresh_token_is_spent_once_then_reported_as_already_spent",
        run: |s| Box::pin(a_refresh_token_is_spent_once_then_reported_as_already_spent(s)),
    },
    Check {
        name: "two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent",
        run: |s| Box::pin(two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent(s)),
    },
    Check {
        name: "signing_keys_round_trip_oldest_first",
        run: |s| Box::pin(signing_keys_round_trip_oldest_first(s)),
    },
    Check {
        name: "a_second_current_signing_key_or_a_reused_kid_is_a_conflict",
        run: |s| Box::pin(a_second_current_signing_key_or_a_reused_kid_is_a_conflict(s)),
    },
    Check {
        name: "two_nodes_creating_the_first_signing_key_at_once_agree_on_one",
        run: |s| Box::pin(two_nodes_creating_the_first_signing_key_at_once_agree_on_one(s)),
    },
    Check {
        name: "security_events_round_trip_newest_first_up_to_the_limit",
        run: |s| Box::pin(security_events_round_trip_newest_first_up_to_the_limit(s)),
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
// The account aggregate
// ---------------------------------------------------------------------------------------------

/// Every field of an account comes back as written, the optional ones both empty and set, and the
/// account is found by its address whatever the case of the lookup (addresses are one identity
/// however they are typed).
pub async fn a_user_round_trips_and_is_found_by_email_in_any_case(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let bare = user(1, "bare@example.com")?;
    let full = User {
        email_verified_at: Some(at(5)),
        display_name: Some(display_name("Zoë d'Arc")?),
        status: UserStatus::Locked,
        role: BuiltinRole::Owner,
        updated_at: at(7),
        last_login_at: Some(at(9)),
        ..user(2, "Full.Name@Example.COM")?
    };

    write_users(store, &[bare.clone(), full.clone()]).await?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.user_by_id(full.id).await.step("read the full user by id")?;
    let bare_by_id = tx.user_by_id(bare.id).await.step("read the bare user by id")?;
    let by_lower = tx.user_by_email(&email("full.name@example.com")?).await.step("look up in lower case")?;
    let by_upper = tx.user_by_email(&email("FULL.NAME@EXAMPLE.COM")?).await.step("look up in upper case")?;
    let unknown_id = tx.user_by_id(user_id(3)).await.step("read an unknown id")?;
    let unknown_email =
        tx.user_by_email(&email("nobody@example.com")?).await.step("look up an unknown address")?;
    let count = tx.count_users().await.step("count the users")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("full user by id", &by_id, &Some(full.clone()))?;
    ensure_eq("bare user by id", &bare_by_id, &Some(bare))?;
    ensure_eq("user by lower-case address", &by_lower, &Some(full.clone()))?;
    ensure_eq("user by upper-case address", &by_upper, &Some(full))?;
    ensure_eq("unknown id", &unknown_id, &None)?;
    ensure_eq("unknown address", &unknown_email, &None)?;
    ensure_eq("number of users", &count, &2)
}

/// An address already taken in another case is `Conflict { entity: "user" }`, and the first
/// account is left alone: a sign-up cannot take over `Alice@` by registering `alice@`.
pub async fn a_second_account_with_the_same_email_in_another_case_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let first = user(1, "Alice@example.com")?;
    write_users(store, slice::from_ref(&first)).await?;

    let mut tx = store.begin().await.step("begin the second sign-up")?;
    let second = tx.insert_user(&user(2, "alice@EXAMPLE.com")?).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let found = committed_user(store, first.id).await?;
    let intruder = committed_user(store, user_id(2)).await?;

    ensure_conflict("the second sign-up", second, "user")?;
    ensure_eq("the first account", &found, &Some(first))?;
    ensure_eq("the second account", &intruder, &None)
}

/// Verifying the address records when (and touches `updated_at`); an unknown account says false.
/// A login records its time without counting as a change to the account.
pub async fn verifying_an_email_and_logging_in_are_recorded(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;

    let mut tx = store.begin().await.step("begin")?;
    let verified = tx.mark_email_verified(alice.id, at(10)).await.step("mark the address verified")?;
    let unknown = tx.mark_email_verified(user_id(9), at(10)).await.step("mark an unknown account")?;
    tx.record_login(alice.id, at(20)).await.step("record a login")?;
    tx.commit().await.step("commit")?;
    let found = committed_user(store, alice.id).await?;

    ensure_eq("verifying an existing account", &verified, &true)?;
    ensure_eq("verifying an unknown account", &unknown, &false)?;
    let expected =
        User { email_verified_at: Some(at(10)), updated_at: at(10), last_login_at: Some(at(20)), ..alice };
    ensure_eq("the account afterwards", &found, &Some(expected))
}

/// A password hash is absent, then set, then replaced by a second set; the re-hash on login swaps it
/// only while it is still the hash that was verified, so it never undoes a password change.
pub async fn a_password_hash_is_set_replaced_and_only_swapped_while_still_expected(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    let bob = user(2, "bob@example.com")?;
    write_users(store, &[alice.clone(), bob.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let before = tx.password_hash(alice.id).await.step("read before any password")?;
    tx.set_password_hash(alice.id, "$argon2id$first", at(1)).await.step("set the first hash")?;
    let first = tx.password_hash(alice.id).await.step("read the first hash")?;
    tx.set_password_hash(alice.id, "$argon2id$second", at(2)).await.step("set the second hash")?;
    let stale = tx
        .replace_password_hash(alice.id, "$argon2id$first", "$argon2id$rehash", at(3))
        .await
        .step("swap from a stale hash")?;
    let after_stale = tx.password_hash(alice.id).await.step("read after the stale swap")?;
    let swapped = tx
        .replace_password_hash(alice.id, "$argon2id$second", "$argon2id$rehash", at(4))
        .await
        .step("swap from the current hash")?;
    let no_password = tx
        .replace_password_hash(bob.id, "", "$argon2id$rehash", at(4))
        .await
        .step("swap for an account without a password")?;
    tx.commit().await.step("commit")?;
    let mut reader = store.begin_read().await.step("begin a read")?;
    let committed = reader.password_hash(alice.id).await.step("read the committed hash")?;
    let bobs = reader.password_hash(bob.id).await.step("read the other account's hash")?;
    reader.commit().await.step("end the read")?;

    ensure_eq("hash before any password", &before, &None)?;
    ensure_eq("hash after the first set", &first, &Some("$argon2id$first".to_owned()))?;
    ensure_eq("swap from a stale hash", &stale, &false)?;
    ensure_eq("hash after the stale swap", &after_stale, &Some("$argon2id$second".to_owned()))?;
    ensure_eq("swap from the current hash", &swapped, &true)?;
    ensure_eq("swap without a password", &no_password, &false)?;
    ensure_eq("committed hash", &committed, &Some("$argon2id$rehash".to_owned()))?;
    ensure_eq("the other account's hash", &bobs, &None)
}

/// A single-use token comes back whole exactly once, only for the purpose it was minted for, and
/// not from the instant it expires.
pub async fn a_one_time_token_is_spent_once_for_its_purpose_before_it_expires(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let reset = one_time(1, OneTimePurpose::PasswordReset, Some(alice.id), 0);
    let invite = OneTimeToken {
        email: Some(email("Invitee@Example.com")?),
        ..one_time(2, OneTimePurpose::Invite, None, 0)
    };
    let expiring = one_time(3, OneTimePurpose::VerifyEmail, Some(alice.id), 0);
    write_tokens(store, &[reset.clone(), invite.clone(), expiring.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let wrong_purpose = tx
        .spend_one_time_token(&reset.hash, OneTimePurpose::VerifyEmail, at(1))
        .await
        .step("spend as another purpose")?;
    let spent =
        tx.spend_one_time_token(&reset.hash, reset.purpose, at(1)).await.step("spend the reset token")?;
    let again = tx.spend_one_time_token(&reset.hash, reset.purpose, at(2)).await.step("spend it again")?;
    let invited =
        tx.spend_one_time_token(&invite.hash, invite.purpose, at(1)).await.step("spend the invite")?;
    let expired = tx
        .spend_one_time_token(&expiring.hash, expiring.purpose, expiring.expires_at)
        .await
        .step("spend at the expiry instant")?;
    let unknown =
        tx.spend_one_time_token(&token(9), reset.purpose, at(1)).await.step("spend an unknown token")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin().await.step("begin a second transaction")?;
    let after_commit =
        tx.spend_one_time_token(&reset.hash, reset.purpose, at(3)).await.step("spend once more")?;
    tx.rollback().await.step("roll back")?;

    ensure_eq("spend as another purpose", &wrong_purpose, &None)?;
    ensure_eq("first spend", &spent, &Some(reset))?;
    ensure_eq("second spend in the same transaction", &again, &None)?;
    ensure_eq("spend of the invite", &invited, &Some(invite))?;
    ensure_eq("spend at the expiry instant", &expired, &None)?;
    ensure_eq("spend of an unknown token", &unknown, &None)?;
    ensure_eq("spend after the commit", &after_commit, &None)
}

/// Voiding spends every unused token of one purpose for one account, and nothing else: not the
/// account's tokens of other purposes, not other accounts' tokens.
pub async fn voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    let bob = user(2, "bob@example.com")?;
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let reset = OneTimePurpose::PasswordReset;
    let tokens = [
        one_time(1, reset, Some(alice.id), 0),
        one_time(2, reset, Some(alice.id), 1),
        one_time(3, reset, Some(alice.id), 2),
        one_time(4, OneTimePurpose::VerifyEmail, Some(alice.id), 0),
        one_time(5, reset, Some(bob.id), 0),
    ];
    write_tokens(store, &tokens).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.spend_one_time_token(&token(3), reset, at(3)).await.step("spend one of the resets")?;
    let voided = tx.void_one_time_tokens(alice.id, reset, at(4)).await.step("void the resets")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin().await.step("begin the spends")?;
    let mut spendable = Vec::new();
    for t in &tokens {
        let spent = tx.spend_one_time_token(&t.hash, t.purpose, at(5)).await.step("spend a token")?;
        spendable.push(spent.is_some());
    }
    tx.rollback().await.step("roll back")?;

    ensure_eq("tokens voided (the spent one does not count)", &voided, &2)?;
    ensure_eq("tokens still spendable", &spendable, &vec![false, false, false, true, true])
}

/// Only an unused, unexpired token of the asked purpose is live: that is what stops a second setup
/// token from being minted while the first still works.
pub async fn a_live_one_time_token_is_unused_unexpired_and_of_the_purpose(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let setup = one_time(1, OneTimePurpose::Setup, None, 0);
    write_tokens(store, &[one_time(2, OneTimePurpose::Invite, None, 0)]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let with_other_purpose =
        tx.has_live_one_time_token(setup.purpose, at(1)).await.step("ask before setup")?;
    tx.insert_one_time_token(&setup).await.step("insert the setup token")?;
    let live = tx.has_live_one_time_token(setup.purpose, at(1)).await.step("ask while live")?;
    let at_expiry =
        tx.has_live_one_time_token(setup.purpose, setup.expires_at).await.step("ask at its expiry")?;
    tx.spend_one_time_token(&setup.hash, setup.purpose, at(2)).await.step("spend the setup token")?;
    let spent = tx.has_live_one_time_token(setup.purpose, at(2)).await.step("ask once spent")?;
    tx.commit().await.step("commit")?;

    ensure_eq("live setup token with only an invite stored", &with_other_purpose, &false)?;
    ensure_eq("live setup token before its expiry", &live, &true)?;
    ensure_eq("live setup token at its expiry", &at_expiry, &false)?;
    ensure_eq("live setup token once spent", &spent, &false)
}

/// Two requests presenting the same password-reset link at once (a double click, or an attacker
/// racing the owner): exactly one gets the token.
///
/// As in the refresh-token race, the first is still at work (setting the password, signing out the
/// account's sessions) when the second arrives: SQLite queues it behind the single writer, and on
/// PostgreSQL its conditional `UPDATE` waits on the first one's row lock and then matches nothing.
pub async fn two_transactions_spending_one_one_time_token_at_once_get_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let reset = one_time(1, OneTimePurpose::PasswordReset, Some(alice.id), 0);
    write_tokens(store, slice::from_ref(&reset)).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first reset")?;
    let first_spend = first
        .spend_one_time_token(&reset.hash, reset.purpose, at(1))
        .await
        .step("the first reset's spend")?;
    let rest_of_first = async move {
        first.set_password_hash(alice.id, "$argon2id$reset", at(1)).await?;
        first.revoke_sessions_of(alice.id, None, at(1), RevokeReason::PasswordChanged).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(spend_one_time_token_alone(store, reset.hash, reset.purpose, at(2)), rest_of_first);
    first_commit.step("finish the first reset")?;
    let second = second.step("the second reset")?;

    ensure_eq("the first reset", &first_spend, &Some(reset))?;
    ensure_eq("the second reset", &second, &None)
}

/// Two first-owner setups at once (two live setup tokens): each locks the accounts, counts them and
/// creates one only if there is none. The second waits for the first to commit and then sees its
/// account, so exactly one is created. Without the lock, PostgreSQL's READ COMMITTED lets both
/// count zero.
pub async fn two_first_owner_setups_at_once_create_one_account(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    open_two_connections(store).await?;
    let alice = user(1, "alice@example.com")?;
    let bob = user(2, "bob@example.com")?;

    let mut first = store.begin().await.step("begin the first setup")?;
    first.lock_users().await.step("the first setup's lock")?;
    let first_count = first.count_users().await.step("the first setup's count")?;
    let second = async {
        let mut tx = store.begin().await?;
        tx.lock_users().await?;
        let count = tx.count_users().await?;
        if count == 0 {
            tx.insert_user(&bob).await?;
        }
        tx.commit().await?;
        Ok::<u64, StoreError>(count)
    };
    let rest_of_first = async move {
        // Give the second setup time to reach its count while the first is still open: a correct
        // store makes it wait on the lock whatever this delay; a store without one lets it count
        // zero now. (The delay decides nothing for a correct store, so it cannot make this flaky.)
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if first_count == 0 {
            first.insert_user(&alice).await?;
        }
        first.commit().await
    };
    let (second_count, first_commit) = tokio::join!(second, rest_of_first);
    first_commit.step("finish the first setup")?;
    let second_count = second_count.step("the second setup")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let total = tx.count_users().await.step("count the accounts")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("accounts the first setup saw", &first_count, &0)?;
    ensure_eq("accounts the second setup saw", &second_count, &1)?;
    ensure_eq("accounts after both", &total, &1)
}

// ---------------------------------------------------------------------------------------------
// The session aggregate
// ---------------------------------------------------------------------------------------------

/// Every field of a session comes back as written, the optional ones both empty and set; a cookie
/// session is found by its cookie's hash, and nothing is found by an unknown hash or id.
pub async fn a_session_round_trips_and_is_found_by_its_cookie(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let bearer = session(1, alice.id, 0);
    let cookie = Session {
        kind: SessionKind::Cookie,
        last_seen_at: at(3),
        mfa_level: 2,
        ip: Some("2001:db8::1".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) \"quoted\" ✓".into()),
        revoked_at: Some(at(4)),
        ..session(2, alice.id, 1)
    };

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_session(&bearer, None).await.step("insert the bearer session")?;
    tx.insert_session(&cookie, Some(&token(2))).await.step("insert the cookie session")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let bearer_read = tx.session(bearer.id).await.step("read the bearer session")?;
    let cookie_read = tx.session(cookie.id).await.step("read the cookie session")?;
    let by_cookie = tx.session_by_cookie(&token(2)).await.step("look up by cookie")?;
    let unknown_cookie = tx.session_by_cookie(&token(9)).await.step("look up an unknown cookie")?;
    let unknown_id = tx.session(session_id(9)).await.step("read an unknown session")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("bearer session", &bearer_read, &Some(bearer))?;
    ensure_eq("cookie session", &cookie_read, &Some(cookie.clone()))?;
    ensure_eq("session by cookie", &by_cookie, &Some(cookie))?;
    ensure_eq("session by unknown cookie", &unknown_cookie, &None)?;
    ensure_eq("unknown session", &unknown_id, &None)
}

/// The session list holds the account's own sessions that are neither revoked nor past their
/// absolute expiry, newest first, ties broken by id so both engines list them alike.
pub async fn sessions_of_lists_live_sessions_newest_first(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    let bob = user(2, "bob@example.com")?;
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let now = at(1_000);
    let oldest = session(1, alice.id, 10);
    let newest = session(2, alice.id, 30);
    let tie_low = session(3, alice.id, 20);
    let tie_high = session(4, alice.id, 20);
    let revoked = Session { revoked_at: Some(at(40)), ..session(5, alice.id, 40) };
    let expired = Session { expires_at: now, ..session(6, alice.id, 50) };
    let bobs = session(7, bob.id, 60);
    write_sessions(
        store,
        &[oldest.clone(), newest.clone(), tie_low.clone(), tie_high.clone(), revoked, expired, bobs],
    )
    .await?;

    let listed = committed_sessions_of(store, alice.id, now).await?;

    ensure_eq("alice's live sessions", &listed, &vec![newest, tie_high, tie_low, oldest])
}

/// Revoking is scoped to the owner: another account's session id is refused exactly as an unknown
/// or already revoked one is, and its session stays live.
pub async fn revoking_another_accounts_session_is_refused_and_changes_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    let mallory = user(2, "mallory@example.com")?;
    write_users(store, &[alice.clone(), mallory.clone()]).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    let by_other = tx
        .revoke_session(mallory.id, target.id, at(1), RevokeReason::UserRevoked)
        .await
        .step("revoke as another account")?;
    let unknown = tx
        .revoke_session(alice.id, session_id(9), at(1), RevokeReason::UserRevoked)
        .await
        .step("revoke an unknown session")?;
    tx.commit().await.step("commit")?;
    let untouched = committed_session(store, target.id).await?;
    let mut tx = store.begin().await.step("begin the owner's revocation")?;
    let by_owner = tx
        .revoke_session(alice.id, target.id, at(2), RevokeReason::Logout)
        .await
        .step("revoke as the owner")?;
    let twice = tx
        .revoke_session(alice.id, target.id, at(3), RevokeReason::Logout)
        .await
        .step("revoke a second time")?;
    tx.commit().await.step("commit the owner's revocation")?;
    let revoked = committed_session(store, target.id).await?;

    ensure_eq("revoking another account's session", &by_other, &false)?;
    ensure_eq("revoking an unknown session", &unknown, &false)?;
    ensure_eq("the session after the refused revocation", &untouched, &Some(target.clone()))?;
    ensure_eq("revoking as the owner", &by_owner, &true)?;
    ensure_eq("revoking a second time", &twice, &false)?;
    ensure_eq("the revoked session", &revoked, &Some(Session { revoked_at: Some(at(2)), ..target }))
}

/// "Sign out everywhere else" revokes every live session of the account but the one kept, leaves
/// earlier revocations, sessions already past their absolute expiry and other accounts alone, and
/// counts what it revoked ("live" as in `sessions_of`).
pub async fn revoking_all_sessions_of_an_account_keeps_the_one_asked_for(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    let bob = user(2, "bob@example.com")?;
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let keep = session(1, alice.id, 0);
    let other = session(2, alice.id, 1);
    let third = session(3, alice.id, 2);
    let earlier = Session { revoked_at: Some(at(3)), ..session(4, alice.id, 3) };
    let expired = Session { expires_at: at(10), ..session(6, alice.id, 4) };
    let bobs = session(5, bob.id, 0);
    write_sessions(
        store,
        &[keep.clone(), other.clone(), third, earlier.clone(), expired.clone(), bobs.clone()],
    )
    .await?;

    let mut tx = store.begin().await.step("begin")?;
    let revoked = tx
        .revoke_sessions_of(alice.id, Some(keep.id), at(10), RevokeReason::PasswordChanged)
        .await
        .step("revoke all but one")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let left = tx.sessions_of(alice.id, at(11)).await.step("list alice's sessions")?;
    let other_read = tx.session(other.id).await.step("read a revoked session")?;
    let earlier_read = tx.session(earlier.id).await.step("read the earlier revocation")?;
    let expired_read = tx.session(expired.id).await.step("read the expired session")?;
    let bobs_left = tx.sessions_of(bob.id, at(11)).await.step("list bob's sessions")?;
    tx.commit().await.step("end the read")?;
    let mut tx = store.begin().await.step("begin the second revocation")?;
    let rest = tx
        .revoke_sessions_of(alice.id, None, at(12), RevokeReason::UserRevoked)
        .await
        .step("revoke all without keeping one")?;
    tx.commit().await.step("commit the second revocation")?;
    let none_left = committed_sessions_of(store, alice.id, at(13)).await?;

    ensure_eq("sessions revoked", &revoked, &2)?;
    ensure_eq("alice's sessions left", &left, &vec![keep])?;
    ensure_eq("a revoked session", &other_read, &Some(Session { revoked_at: Some(at(10)), ..other }))?;
    ensure_eq("the earlier revocation", &earlier_read, &Some(earlier))?;
    ensure_eq("the expired session", &expired_read, &Some(expired))?;
    ensure_eq("bob's sessions", &bobs_left, &vec![bobs])?;
    ensure_eq("sessions revoked without keeping one", &rest, &1)?;
    ensure_eq("alice's sessions at the end", &none_left, &Vec::new())
}

/// Activity only moves forward: a late-finishing request with an older time cannot make a session
/// look idle sooner.
pub async fn touching_a_session_moves_last_seen_forward_and_never_back(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.touch_session(target.id, at(50)).await.step("touch forward")?;
    let forward = tx.session(target.id).await.step("read after touching forward")?;
    tx.touch_session(target.id, at(20)).await.step("touch backward")?;
    tx.commit().await.step("commit")?;
    let backward = committed_session(store, target.id).await?;

    let expected = Some(Session { last_seen_at: at(50), ..target });
    ensure_eq("session touched forward", &forward, &expected)?;
    ensure_eq("session touched backward", &backward, &expected)
}

/// Other nodes learn of revocations from this list: every session revoked at or after the instant,
/// and none revoked before it or not revoked at all.
pub async fn sessions_revoked_since_lists_revocations_from_that_instant(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let sessions =
        [session(1, alice.id, 0), session(2, alice.id, 0), session(3, alice.id, 0), session(4, alice.id, 0)];
    write_sessions(store, &sessions).await?;

    let mut tx = store.begin().await.step("begin")?;
    for (s, when) in sessions.iter().take(3).zip([100, 200, 300]) {
        tx.revoke_session(alice.id, s.id, at(when), RevokeReason::Logout).await.step("revoke a session")?;
    }
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut since_200 = tx.sessions_revoked_since(at(200)).await.step("list since the second")?;
    let after_all = tx.sessions_revoked_since(at(301)).await.step("list after the last")?;
    tx.commit().await.step("end the read")?;
    since_200.sort();

    let mut expected = vec![sessions[1].id, sessions[2].id];
    expected.sort();
    ensure_eq("sessions revoked since the second revocation", &since_200, &expected)?;
    ensure_eq("sessions revoked after the last revocation", &after_all, &Vec::new())
}

/// A refresh token is spent once; presenting it again reports `AlreadySpent` with its session (so
/// the theft can be answered by revoking that session), also after the spend committed; a token
/// never issued is `Unknown`.
pub async fn a_refresh_token_is_spent_once_then_reported_as_already_spent(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_refresh_token(target.id, &token(1), at(1)).await.step("insert the refresh token")?;
    let first = tx.spend_refresh_token(&token(1), at(2)).await.step("spend the token")?;
    let second = tx.spend_refresh_token(&token(1), at(3)).await.step("spend it again")?;
    let unknown = tx.spend_refresh_token(&token(9), at(3)).await.step("spend an unknown token")?;
    tx.commit().await.step("commit")?;
    let after_commit =
        spend_refresh_token_alone(store, token(1), at(4)).await.step("spend after the commit")?;

    ensure_eq("first spend", &first, &RefreshSpend::Spent(target.id))?;
    ensure_eq("second spend", &second, &RefreshSpend::AlreadySpent(target.id))?;
    ensure_eq("unknown token", &unknown, &RefreshSpend::Unknown)?;
    ensure_eq("spend after the commit", &after_commit, &RefreshSpend::AlreadySpent(target.id))
}

/// Two refreshes racing with one token (a thief and the owner): exactly one is `Spent` and the other
/// `AlreadySpent`, on every engine, so a stolen token cannot be turned into a second token family.
///
/// The first refresh spends the token and is still doing the rest of its work (read the session,
/// record activity, store the next token) when the second arrives. SQLite's single writer makes the
/// second wait for the first to commit; on PostgreSQL at READ COMMITTED the second's `UPDATE` waits
/// on the first one's row lock and then finds the token spent. An implementation that reads
/// `spent_at` and then writes would, on PostgreSQL, see the token unspent and hand out `Spent` twice.
pub async fn two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com")?;
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;
    let mut tx = store.begin().await.step("begin")?;
    tx.insert_refresh_token(target.id, &token(1), at(1)).await.step("insert the refresh token")?;
    tx.commit().await.step("commit")?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first refresh")?;
    let first_spend = first.spend_refresh_token(&token(1), at(2)).await.step("the first refresh's spend")?;
    let rest_of_first = async move {
        first.session(target.id).await?;
        first.touch_session(target.id, at(2)).await?;
        first.insert_refresh_token(target.id, &token(2), at(2)).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(spend_refresh_token_alone(store, token(1), at(3)), rest_of_first);
    first_commit.step("finish the first refresh")?;
    let second = second.step("the second refresh")?;

    ensure_eq("the first refresh", &first_spend, &RefreshSpend::Spent(target.id))?;
    ensure_eq("the second refresh", &second, &RefreshSpend::AlreadySpent(target.id))
}

// ---------------------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------------------

/// Keys come back whole (key material byte for byte), oldest first.
pub async fn signing_keys_round_trip_oldest_first(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let retired = signing_key("k-old", "retired", 0);
    let current = signing_key("k-new", "current", 10);

    let mut tx = store.begin().await.step("begin")?;
    let empty = tx.signing_keys().await.step("read the empty keyring")?;
    tx.insert_signing_key(&current).await.step("insert the current key")?;
    tx.insert_signing_key(&retired).await.step("insert the retired key")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let keys = tx.signing_keys().await.step("read the keyring")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("keyring before any key", &empty, &Vec::new())?;
    ensure_eq("keyring", &keys, &vec![retired, current])
}

/// There is at most one current key, and a kid names one key: either duplicate is
/// `Conflict { entity: "signing key" }` and leaves the keyring as it was.
pub async fn a_second_current_signing_key_or_a_reused_kid_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let current = signing_key("k-1", "current", 0);
    let mut tx = store.begin().await.step("begin")?;
    tx.insert_signing_key(&current).await.step("insert the current key")?;
    tx.commit().await.step("commit")?;

    let mut tx = store.begin().await.step("begin the second current key")?;
    let second_current = tx.insert_signing_key(&signing_key("k-2", "current", 1)).await;
    tx.rollback().await.step("roll back the second current key")?;
    let mut tx = store.begin().await.step("begin the reused kid")?;
    let reused_kid = tx.insert_signing_key(&signing_key("k-1", "retired", 2)).await;
    tx.rollback().await.step("roll back the reused kid")?;
    let retired = signing_key("k-3", "retired", 3);
    let mut tx = store.begin().await.step("begin the retired key")?;
    tx.insert_signing_key(&retired).await.step("insert a retired key beside the current one")?;
    let keys = tx.signing_keys().await.step("read the keyring")?;
    tx.commit().await.step("commit the retired key")?;

    ensure_conflict("a second current key", second_current, "signing key")?;
    ensure_conflict("a reused kid", reused_kid, "signing key")?;
    ensure_eq("keyring", &keys, &vec![current, retired])
}

/// Nodes starting together each try to create the first key; whichever commits first wins and the
/// other gets `Conflict`, then reads the winner's key (see `KeyStore::insert_signing_key`).
pub async fn two_nodes_creating_the_first_signing_key_at_once_agree_on_one(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let winner = signing_key("k-a", "current", 0);
    let mut first = store.begin().await.step("begin the first node's key")?;
    first.insert_signing_key(&winner).await.step("insert the first node's key")?;

    let second = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_signing_key(&signing_key("k-b", "current", 0)).await;
        drop(tx);
        inserted
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    let mut tx = store.begin_read().await.step("begin a read")?;
    let keys = tx.signing_keys().await.step("read the keyring")?;
    tx.commit().await.step("end the read")?;

    first_commit.step("commit the first node's key")?;
    ensure_conflict("the second node's key", second, "signing key")?;
    ensure_eq("keyring after the race", &keys, &vec![winner])
}

// ---------------------------------------------------------------------------------------------
// Security events
// ---------------------------------------------------------------------------------------------

/// An account's events come back whole, newest first (in recording order within one millisecond),
/// at most `limit` of them, and without other accounts' events.
pub async fn security_events_round_trip_newest_first_up_to_the_limit(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user_id(1);
    let bare = SecurityEvent {
        at: at(1),
        kind: SecurityEventKind::LoginFailed,
        user_id: Some(alice),
        session_id: None,
        ip: None,
    };
    let full = SecurityEvent {
        at: at(3),
        kind: SecurityEventKind::RefreshTokenReuse,
        user_id: Some(alice),
        session_id: Some(session_id(1)),
        ip: Some("192.0.2.7".into()),
    };
    let same_instant_first =
        SecurityEvent { kind: SecurityEventKind::CsrfRejected, at: at(2), ..bare.clone() };
    let same_instant_second = SecurityEvent { at: at(2), ..bare.clone() };
    let someone_else = SecurityEvent { user_id: Some(user_id(2)), at: at(9), ..bare.clone() };
    let anonymous = SecurityEvent { user_id: None, at: at(9), ..bare.clone() };

    let mut tx = store.begin().await.step("begin")?;
    for event in [&bare, &full, &same_instant_first, &same_instant_second, &someone_else, &anonymous] {
        tx.insert_security_event(event).await.step("insert an event")?;
    }
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let all = tx.security_events_of(alice, 10).await.step("read alice's events")?;
    let two = tx.security_events_of(alice, 2).await.step("read alice's two newest events")?;
    let none = tx.security_events_of(user_id(3), 10).await.step("read an account without events")?;
    tx.commit().await.step("end the read")?;

    ensure_eq(
        "alice's events",
        &all,
        &vec![full.clone(), same_instant_second.clone(), same_instant_first, bare],
    )?;
    ensure_eq("alice's two newest events", &two, &vec![full, same_instant_second])?;
    ensure_eq("events of an account without any", &none, &Vec::new())
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

/// The base of every fixture time: 2026-01-01, well past 32 bits of milliseconds.
const T0: i64 = 1_767_225_600_000;

/// `offset` milliseconds after [`T0`].
fn at(offset: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + offset)
}

fn user_id(seed: u8) -> UserId {
    UserId::from_random_bytes([seed; 16])
}

fn session_id(seed: u8) -> SessionId {
    SessionId::from_random_bytes([seed; 16])
}

/// A distinct token digest for each seed.
fn token(seed: u8) -> TokenHash {
    TokenHash([seed; 32])
}

fn email(text: &str) -> Result<Email, Failure> {
    Email::parse(text).map_err(|e| Failure(format!("fixture address {text:?} does not parse: {e}")))
}

fn display_name(text: &str) -> Result<DisplayName, Failure> {
    DisplayName::parse(text)
        .map_err(|e| Failure(format!("fixture display name {text:?} does not parse: {e}")))
}

/// An active member with nothing optional set, created at [`T0`].
fn user(seed: u8, address: &str) -> Result<User, Failure> {
    Ok(User {
        id: user_id(seed),
        email: email(address)?,
        email_verified_at: None,
        display_name: None,
        status: UserStatus::Active,
        role: BuiltinRole::Member,
        created_at: at(0),
        updated_at: at(0),
        last_login_at: None,
    })
}

/// A live bearer session created `created` milliseconds after [`T0`], good for a day.
fn session(seed: u8, owner: UserId, created: i64) -> Session {
    Session {
        id: session_id(seed),
        user_id: owner,
        kind: SessionKind::Bearer,
        created_at: at(created),
        last_seen_at: at(created),
        expires_at: at(created + 86_400_000),
        mfa_level: 0,
        ip: None,
        user_agent: None,
        revoked_at: None,
    }
}

/// A token of `purpose` minted `created` milliseconds after [`T0`], with the purpose's lifetime.
fn one_time(seed: u8, purpose: OneTimePurpose, owner: Option<UserId>, created: i64) -> OneTimeToken {
    OneTimeToken {
        hash: token(seed),
        purpose,
        user_id: owner,
        email: None,
        created_at: at(created),
        expires_at: at(created + purpose.lifetime_millis()),
    }
}

/// A key with material derived from its kid, so two keys never share bytes by accident.
fn signing_key(kid: &str, state: &str, created: i64) -> StoredSigningKey {
    StoredSigningKey {
        kid: kid.to_owned(),
        algorithm: "EdDSA".to_owned(),
        private_key: [kid.as_bytes(), &[0x00, 0xff, 0x80]].concat(),
        public_key: [&[0x00, 0x01], kid.as_bytes()].concat(),
        created_at: at(created),
        state: state.to_owned(),
    }
}

/// Inserts and commits the users in a transaction of their own.
async fn write_users(store: &dyn Store, users: &[User]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for user in users {
        tx.insert_user(user).await.step("insert a user")?;
    }
    tx.commit().await.step("commit the users")
}

/// Inserts and commits the sessions (without cookies) in a transaction of their own.
async fn write_sessions(store: &dyn Store, sessions: &[Session]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for session in sessions {
        tx.insert_session(session, None).await.step("insert a session")?;
    }
    tx.commit().await.step("commit the sessions")
}

/// Inserts and commits the single-use tokens in a transaction of their own.
async fn write_tokens(store: &dyn Store, tokens: &[OneTimeToken]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for token in tokens {
        tx.insert_one_time_token(token).await.step("insert a one-time token")?;
    }
    tx.commit().await.step("commit the one-time tokens")
}

/// The account as a new read transaction sees it.
async fn committed_user(store: &dyn Store, id: UserId) -> Result<Option<User>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.user_by_id(id).await.step("read the user")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The session as a new read transaction sees it.
async fn committed_session(store: &dyn Store, id: SessionId) -> Result<Option<Session>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.session(id).await.step("read the session")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The account's session list as a new read transaction sees it.
async fn committed_sessions_of(
    store: &dyn Store,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<Session>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.sessions_of(user, now).await.step("list the sessions")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Spends a refresh token in a write transaction of its own, as one refresh request does.
async fn spend_refresh_token_alone(
    store: &dyn Store,
    token: TokenHash,
    at: Timestamp,
) -> Result<RefreshSpend, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_refresh_token(&token, at).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Spends a single-use token in a write transaction of its own, as one request does.
async fn spend_one_time_token_alone(
    store: &dyn Store,
    token: TokenHash,
    purpose: OneTimePurpose,
    now: Timestamp,
) -> Result<Option<OneTimeToken>, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_one_time_token(&token, purpose, now).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Holds two read transactions open at once, so a pooled engine keeps two idle connections.
///
/// Without this, of two racing writers one would take the only idle connection and finish while
/// the other was still connecting, and the race would never reach the database's locking.
async fn open_two_connections(store: &dyn Store) -> Outcome {
    let (first, second) = tokio::join!(store.begin_read(), store.begin_read());
    first.step("open the first connection")?.commit().await.step("end the first read")?;
    second.step("open the second connection")?.commit().await.step("end the second read")
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
