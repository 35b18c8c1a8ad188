//! The contract of the administrators' account queries: editing an account's address and name
//! (`update_user_details`) and listing accounts in creation order (`list_users_by_creation`).

use portcullis_domain::{UserId, UserStatus};
use portcullis_store::{Store, StoreError, StoredUser};

use super::{Outcome, Step, at, ensure_eq, index, migrated, sealed, user, write_users};

/// An edit replaces the address, its index and key, the name, the sealing key, the verification time
/// and `updated_at`, and nothing else; a missing account is `false`; an address indexed for another
/// account is `Conflict { entity: "user" }` and leaves both accounts as they were.
pub async fn editing_an_accounts_details_replaces_them_and_a_taken_address_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let first = StoredUser { email_verified_at: Some(at(5)), ..user(1, "first@example.com") };
    let second = user(2, "second@example.com");
    write_users(store, &[first.clone(), second.clone()]).await?;

    let edited = StoredUser {
        email: sealed("renamed@example.com"),
        email_index: index(9),
        index_key: "index-2".into(),
        display_name: Some(sealed("Renamed")),
        pii_key: "pii-2".into(),
        email_verified_at: None,
        updated_at: at(50),
        // Fields an edit must not touch, set to other values to show they are ignored.
        status: UserStatus::Disabled,
        created_at: at(99),
        ..first.clone()
    };
    let mut tx = store.begin().await.step("begin a write")?;
    let found = tx.update_user_details(&edited).await.step("edit the first account")?;
    let missing = StoredUser { id: UserId::from_random_bytes([77; 16]), ..edited.clone() };
    let none = tx.update_user_details(&missing).await.step("edit a missing account")?;
    tx.commit().await.step("commit the edit")?;
    ensure_eq("the edit found its account", &(found, none), &(true, false))?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let stored = tx.user_by_id(first.id).await.step("read the edited account")?;
    let by_index = tx.user_by_email_index(&index(9)).await.step("find it by its new index")?;
    let by_old = tx.user_by_email_index(&index(1)).await.step("look up the old index")?;
    tx.commit().await.step("end the read")?;
    let expected = StoredUser { status: first.status, created_at: first.created_at, ..edited.clone() };
    ensure_eq("the edited account", &stored, &Some(expected.clone()))?;
    ensure_eq("found by the new index", &by_index.map(|u| u.id), &Some(first.id))?;
    ensure_eq("not by the old one", &by_old.map(|u| u.id), &None)?;

    // Taking the second account's address.
    let mut tx = store.begin().await.step("begin a write")?;
    let clash = StoredUser { email_index: index(2), ..expected.clone() };
    match tx.update_user_details(&clash).await {
        Err(StoreError::Conflict { entity: "user" }) => {}
        other => return Err(super::Failure(format!("a taken address gave {other:?}"))),
    }
    drop(tx);
    let mut tx = store.begin_read().await.step("begin a read")?;
    let first_now = tx.user_by_id(first.id).await.step("read the first account")?;
    let second_now = tx.user_by_id(second.id).await.step("read the second account")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("the first account is unchanged", &first_now, &Some(expected))?;
    ensure_eq("the second account is unchanged", &second_now, &Some(second))
}

/// Creation order pages through every account once, oldest or newest first, ties in time broken by
/// id (byte order), after a `(created_at, id)` cursor, filtered by status.
pub async fn accounts_are_listed_in_creation_order_either_way_with_ties_broken_by_id(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let mut users: Vec<StoredUser> = (1..=6)
        .map(|n| StoredUser {
            created_at: at(i64::from(n % 3) * 10),
            ..user(n, &format!("c{n}@example.com"))
        })
        .collect();
    users[4].status = UserStatus::Disabled;
    write_users(store, &users).await?;
    let mut expected: Vec<(i64, String)> =
        users.iter().map(|u| (u.created_at.as_unix_millis(), u.id.to_string())).collect();
    expected.sort();

    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut oldest_first = Vec::new();
    let mut after = None;
    loop {
        let page = tx.list_users_by_creation(after, false, None, 4).await.step("a page, oldest first")?;
        after = page.last().map(|u| (u.created_at, u.id));
        let done = page.len() < 4;
        oldest_first.extend(page.iter().map(|u| (u.created_at.as_unix_millis(), u.id.to_string())));
        if done {
            break;
        }
    }
    let mut newest_first = Vec::new();
    let mut after = None;
    loop {
        let page = tx.list_users_by_creation(after, true, None, 2).await.step("a page, newest first")?;
        after = page.last().map(|u| (u.created_at, u.id));
        let done = page.len() < 2;
        newest_first.extend(page.iter().map(|u| (u.created_at.as_unix_millis(), u.id.to_string())));
        if done {
            break;
        }
    }
    let disabled =
        tx.list_users_by_creation(None, false, Some(UserStatus::Disabled), 10).await.step("the disabled")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("oldest first, each once", &oldest_first, &expected)?;
    expected.reverse();
    ensure_eq("newest first, each once", &newest_first, &expected)?;
    ensure_eq("by status", &disabled.iter().map(|u| u.id).collect::<Vec<_>>(), &vec![users[4].id])
}
