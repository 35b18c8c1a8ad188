//! The contract of second factors (`MfaStore`): TOTP authenticators and their replay counter,
//! recovery codes, passkeys, the challenges that join a password to a second factor, organizations
//! that require one, what a session proved, an administrator's reset, and how TOTP seeds take part
//! in re-encryption. Every conditional write (a code accepted once, a recovery code or a challenge
//! spent once) is also raced across two transactions, as `StoreTx`'s isolation note asks.

use std::slice;

use portcullis_domain::{
    AuthMethods, BuiltinRole, ChallengePurpose, MfaDeviceId, MfaMethod, RevokeReason, Session, SessionKind,
    Timestamp, TokenHash, UserId,
};
use portcullis_store::{
    PiiRow, PiiTable, Sealed, Store, StoreError, StoredMfaChallenge, StoredPasskey, StoredTotpDevice,
    StoredUser,
};

use super::{
    Outcome, PII_KEY, Step, at, committed_session, ensure_conflict, ensure_eq, every_byte, migrated,
    open_two_connections, organization, organization_id, resealed, sealed, session, session_id, token,
    unsealed, user, write_organizations, write_sessions, write_users,
};

// ---------------------------------------------------------------------------------------------
// TOTP authenticators
// ---------------------------------------------------------------------------------------------

/// Authenticators come back whole, the owner's only, oldest first (ties by id); confirming one
/// records the time and its first step, only for its owner and only once.
pub async fn a_totp_device_round_trips_oldest_first_and_is_confirmed_once_by_its_owner(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let pending = totp(1, alice.id, 5);
    let phone = StoredTotpDevice {
        name: "Téléphone \"perso\" ✓".to_owned(),
        secret: Sealed(every_byte()),
        confirmed_at: Some(at(2)),
        last_used_at: Some(at(3)),
        last_step: Some(1_000),
        ..totp(2, alice.id, 1)
    };
    let same_instant = totp(3, alice.id, 5);
    let bobs = totp(4, bob.id, 0);
    write_totp_devices(store, &[pending.clone(), phone.clone(), same_instant.clone(), bobs.clone()]).await?;
    let listed = committed_totp_devices_of(store, alice.id).await?;

    let mut tx = store.begin().await.step("begin the confirmations")?;
    let by_bob = tx.confirm_totp_device(bob.id, pending.id, 7, at(10)).await.step("bob confirms")?;
    let by_alice = tx.confirm_totp_device(alice.id, pending.id, 8, at(11)).await.step("alice confirms")?;
    let again = tx.confirm_totp_device(alice.id, pending.id, 9, at(12)).await.step("confirm again")?;
    let confirmed_one =
        tx.confirm_totp_device(alice.id, phone.id, 9, at(12)).await.step("confirm a confirmed one")?;
    let unknown = tx.confirm_totp_device(alice.id, device_id(9), 9, at(12)).await.step("confirm unknown")?;
    tx.commit().await.step("commit the confirmations")?;
    let after = committed_totp_devices_of(store, alice.id).await?;
    let bobs_after = committed_totp_devices_of(store, bob.id).await?;

    ensure_eq("alice's devices", &listed, &vec![phone.clone(), pending.clone(), same_instant.clone()])?;
    ensure_eq("confirmed by another account", &by_bob, &false)?;
    ensure_eq("confirmed by its owner", &by_alice, &true)?;
    ensure_eq("confirmed a second time", &again, &false)?;
    ensure_eq("a device confirmed at insertion", &confirmed_one, &false)?;
    ensure_eq("an unknown device", &unknown, &false)?;
    let now_confirmed = StoredTotpDevice { confirmed_at: Some(at(11)), last_step: Some(8), ..pending };
    ensure_eq("alice's devices after", &after, &vec![phone, now_confirmed, same_instant])?;
    ensure_eq("bob's devices", &bobs_after, &vec![bobs])
}

/// A code is accepted only for a step newer than every step accepted before on a confirmed device
/// of its owner: the same step twice, an older step, an unconfirmed device and another account's
/// device all say false and change nothing.
pub async fn a_totp_step_is_accepted_only_when_newer_than_every_step_before(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let fresh = StoredTotpDevice { confirmed_at: Some(at(1)), ..totp(1, alice.id, 0) };
    let used = StoredTotpDevice { confirmed_at: Some(at(1)), last_step: Some(100), ..totp(2, alice.id, 1) };
    let pending = totp(3, alice.id, 2);
    write_totp_devices(store, &[fresh.clone(), used.clone(), pending.clone()]).await?;

    let mut tx = store.begin().await.step("begin the logins")?;
    let mut accepted = Vec::new();
    for (who, device, step, offset) in [
        (alice.id, used.id, 101, 10),
        (alice.id, used.id, 101, 11),
        (alice.id, used.id, 100, 12),
        (alice.id, used.id, 99, 13),
        (bob.id, used.id, 150, 14),
        (alice.id, pending.id, 1, 15),
        (alice.id, device_id(9), 1, 16),
        (alice.id, used.id, 102, 17),
        (alice.id, fresh.id, 1, 18),
    ] {
        accepted.push(tx.accept_totp_step(who, device, step, at(offset)).await.step("accept a step")?);
    }
    tx.commit().await.step("commit the logins")?;
    let after = committed_totp_devices_of(store, alice.id).await?;

    ensure_eq(
        "accepted: 101, 101 again, 100, 99, bob's, unconfirmed, unknown, 102, first step of a fresh one",
        &accepted,
        &vec![true, false, false, false, false, false, false, true, true],
    )?;
    ensure_eq(
        "alice's devices after",
        &after,
        &vec![
            StoredTotpDevice { last_step: Some(1), last_used_at: Some(at(18)), ..fresh },
            StoredTotpDevice { last_step: Some(102), last_used_at: Some(at(17)), ..used },
            pending,
        ],
    )
}

/// Two logins with the same code at once (two nodes, or two requests): the first accepts it and is
/// still finishing its login when the second tries; the second is refused. An implementation that
/// read `last_step` and then wrote would accept the code twice on PostgreSQL.
pub async fn two_transactions_accepting_one_totp_code_at_once_accept_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let device = StoredTotpDevice { confirmed_at: Some(at(1)), last_step: Some(10), ..totp(1, alice.id, 0) };
    write_totp_devices(store, slice::from_ref(&device)).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first login")?;
    let first_accept =
        first.accept_totp_step(alice.id, device.id, 11, at(5)).await.step("the first login's accept")?;
    let rest_of_first = async move {
        first.totp_devices_of(alice.id).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(accept_totp_step_alone(store, alice.id, device.id, 11, at(6)), rest_of_first);
    first_commit.step("finish the first login")?;
    let second = second.step("the second login")?;
    let after = committed_totp_devices_of(store, alice.id).await?;

    ensure_eq("the first login", &first_accept, &true)?;
    ensure_eq("the second login", &second, &false)?;
    ensure_eq(
        "the device after",
        &after,
        &vec![StoredTotpDevice { last_step: Some(11), last_used_at: Some(at(5)), ..device }],
    )
}

/// Deleting an authenticator takes only the owner's (another account's id looks missing), once;
/// the sweep of abandoned enrollments takes the owner's unconfirmed devices created strictly
/// before the instant and nothing else.
pub async fn deleting_totp_devices_takes_only_the_owners_and_sweeps_old_unconfirmed_ones(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let doomed = StoredTotpDevice { confirmed_at: Some(at(1)), ..totp(1, alice.id, 0) };
    let confirmed_old = StoredTotpDevice { confirmed_at: Some(at(1)), ..totp(2, alice.id, 0) };
    let abandoned = totp(3, alice.id, 4);
    let at_the_instant = totp(4, alice.id, 5);
    let bobs_abandoned = totp(5, bob.id, 0);
    write_totp_devices(
        store,
        &[doomed.clone(), confirmed_old.clone(), abandoned, at_the_instant.clone(), bobs_abandoned.clone()],
    )
    .await?;

    let mut tx = store.begin().await.step("begin the deletes")?;
    let by_bob = tx.delete_totp_device(bob.id, doomed.id).await.step("bob deletes alice's device")?;
    let by_alice = tx.delete_totp_device(alice.id, doomed.id).await.step("alice deletes it")?;
    let again = tx.delete_totp_device(alice.id, doomed.id).await.step("delete it again")?;
    let swept = tx.delete_unconfirmed_totp_devices(alice.id, at(5)).await.step("sweep")?;
    let swept_again = tx.delete_unconfirmed_totp_devices(alice.id, at(5)).await.step("sweep again")?;
    tx.commit().await.step("commit the deletes")?;
    let alices = committed_totp_devices_of(store, alice.id).await?;
    let bobs = committed_totp_devices_of(store, bob.id).await?;

    ensure_eq("deleted by another account", &by_bob, &false)?;
    ensure_eq("deleted by its owner", &by_alice, &true)?;
    ensure_eq("deleted again", &again, &false)?;
    ensure_eq("swept", &swept, &1)?;
    ensure_eq("swept again", &swept_again, &0)?;
    ensure_eq("alice's devices", &alices, &vec![confirmed_old, at_the_instant])?;
    ensure_eq("bob's devices", &bobs, &vec![bobs_abandoned])
}

/// TOTP seeds are re-encrypted with the personal data: found under other keys in id order up to the
/// limit, resealed only while still under the key they were read under, counted per key, and read
/// back resealed with every other field unchanged.
pub async fn a_totp_seed_is_found_resealed_and_counted_like_personal_data(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    // The account's own sealed fields are under a key of their own, so only seeds are counted below.
    let alice = StoredUser { pii_key: "pii-users".to_owned(), ..user(1, "alice@example.com") };
    write_users(store, slice::from_ref(&alice)).await?;
    let under = |device: StoredTotpDevice, key: &str| StoredTotpDevice { pii_key: key.to_owned(), ..device };
    let one = under(
        StoredTotpDevice {
            confirmed_at: Some(at(2)),
            last_used_at: Some(at(3)),
            last_step: Some(7),
            ..totp(1, alice.id, 1)
        },
        "pii-1",
    );
    let two = under(totp(2, alice.id, 2), "pii-2");
    let three = under(totp(3, alice.id, 3), "pii-1");
    // Written out of id order.
    write_totp_devices(store, &[three.clone(), one.clone(), two.clone()]).await?;
    let row = |device: &StoredTotpDevice| PiiRow {
        id: device.id.to_string(),
        key: device.pii_key.clone(),
        fields: vec![Some(device.secret.clone())],
    };

    let mut tx = store.begin_read().await.step("begin the finding")?;
    let mut found = Vec::new();
    for (key, limit) in [("pii-2", 10), ("pii-2", 1), ("pii-1", 10), ("pii-3", 10), ("pii-2", 0)] {
        found.push(tx.pii_rows_not_under(PiiTable::TotpDevices, key, limit).await.step("find rows")?);
    }
    let mut before = Vec::new();
    for key in ["pii-1", "pii-2"] {
        before.push(tx.count_pii_rows_under(key).await.step("count rows before the reseal")?);
    }
    tx.commit().await.step("end the finding")?;

    let mut tx = store.begin().await.step("begin the reseal")?;
    let read = tx.pii_rows_not_under(PiiTable::TotpDevices, "pii-2", 10).await.step("read a batch")?;
    let mut resealed_rows = Vec::new();
    for r in &read {
        let new = PiiRow { fields: r.fields.iter().map(resealed).collect(), ..r.clone() };
        resealed_rows.push(tx.reseal_pii_row(PiiTable::TotpDevices, &new, "pii-2").await.step("reseal")?);
    }
    tx.commit().await.step("commit the reseal")?;
    let mut tx = store.begin().await.step("begin the stale reseal")?;
    let mut stale = Vec::new();
    for r in &read {
        let other = PiiRow { fields: vec![Some(sealed("stale"))], ..r.clone() };
        stale.push(tx.reseal_pii_row(PiiTable::TotpDevices, &other, "pii-3").await.step("stale reseal")?);
    }
    tx.commit().await.step("commit the stale reseal")?;

    let mut tx = store.begin_read().await.step("begin the reads")?;
    let left = tx.pii_rows_not_under(PiiTable::TotpDevices, "pii-2", 10).await.step("find rows left")?;
    let mut after = Vec::new();
    for key in ["pii-1", "pii-2", "pii-3"] {
        after.push(tx.count_pii_rows_under(key).await.step("count rows after the reseal")?);
    }
    let devices = tx.totp_devices_of(alice.id).await.step("list the devices")?;
    tx.commit().await.step("end the reads")?;

    let expected_found = vec![
        vec![row(&one), row(&three)],
        vec![row(&one)],
        vec![row(&two)],
        vec![row(&one), row(&two), row(&three)],
        Vec::new(),
    ];
    ensure_eq("rows not under pii-2, pii-2 (one), pii-1, pii-3, pii-2 (none)", &found, &expected_found)?;
    ensure_eq("rows under pii-1 and pii-2 before", &before, &vec![2, 1])?;
    ensure_eq("the batch read for the reseal", &read, &expected_found[0])?;
    ensure_eq("rows resealed", &resealed_rows, &vec![true; 2])?;
    ensure_eq("rows resealed from a stale read", &stale, &vec![false; 2])?;
    ensure_eq("rows left under other keys", &left, &Vec::new())?;
    ensure_eq("rows under pii-1, pii-2 and pii-3 after", &after, &vec![0, 3, 0])?;
    let moved = |device: &StoredTotpDevice| StoredTotpDevice {
        secret: Sealed([b"re:".as_slice(), &device.secret.0].concat()),
        pii_key: "pii-2".to_owned(),
        ..device.clone()
    };
    ensure_eq("the devices after", &devices, &vec![moved(&one), two, moved(&three)])
}

// ---------------------------------------------------------------------------------------------
// Recovery codes
// ---------------------------------------------------------------------------------------------

/// A new set replaces the whole old one (spent codes too), each code is spent once and only by its
/// owner (the same digest held by another account is that account's own code), the unspent ones are
/// counted, and an empty set removes them all.
pub async fn recovery_codes_are_replaced_whole_and_each_is_spent_once_by_its_owner(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;

    let mut tx = store.begin().await.step("begin the first sets")?;
    tx.replace_recovery_codes(alice.id, &[token(1), token(2), token(3)], at(1)).await.step("alice's set")?;
    tx.replace_recovery_codes(bob.id, &[token(3), token(4)], at(1)).await.step("bob's set")?;
    tx.commit().await.step("commit the first sets")?;
    let mut tx = store.begin().await.step("begin the spends")?;
    let left_first = tx.recovery_codes_left(alice.id).await.step("count alice's codes")?;
    let spent = tx.spend_recovery_code(alice.id, &token(2), at(2)).await.step("spend a code")?;
    let spent_again = tx.spend_recovery_code(alice.id, &token(2), at(3)).await.step("spend it again")?;
    let alices_by_bob = tx.spend_recovery_code(bob.id, &token(1), at(3)).await.step("bob spends alice's")?;
    let unknown = tx.spend_recovery_code(alice.id, &token(9), at(3)).await.step("spend an unknown code")?;
    let shared = tx.spend_recovery_code(alice.id, &token(3), at(4)).await.step("alice spends her 3")?;
    let left_after_spends = tx.recovery_codes_left(alice.id).await.step("count alice's codes")?;
    let bobs_left = tx.recovery_codes_left(bob.id).await.step("count bob's codes")?;
    tx.commit().await.step("commit the spends")?;

    let mut tx = store.begin().await.step("begin the replacement")?;
    tx.replace_recovery_codes(alice.id, &[token(5), token(6)], at(10)).await.step("replace alice's set")?;
    let old_after_replace =
        tx.spend_recovery_code(alice.id, &token(1), at(11)).await.step("spend an old code")?;
    let new_code = tx.spend_recovery_code(alice.id, &token(5), at(11)).await.step("spend a new code")?;
    let left_after_replace = tx.recovery_codes_left(alice.id).await.step("count alice's codes")?;
    tx.replace_recovery_codes(bob.id, &[], at(12)).await.step("remove bob's codes")?;
    let bobs_after_removal = tx.recovery_codes_left(bob.id).await.step("count bob's codes")?;
    let bobs_old = tx.spend_recovery_code(bob.id, &token(4), at(12)).await.step("spend a removed code")?;
    tx.commit().await.step("commit the replacement")?;

    ensure_eq("alice's codes at first", &left_first, &3)?;
    ensure_eq("a code spent", &spent, &true)?;
    ensure_eq("the same code spent again", &spent_again, &false)?;
    ensure_eq("alice's code spent by bob", &alices_by_bob, &false)?;
    ensure_eq("an unknown code", &unknown, &false)?;
    ensure_eq("a digest bob also holds, spent by alice", &shared, &true)?;
    ensure_eq("alice's codes after the spends", &left_after_spends, &1)?;
    ensure_eq("bob's codes after alice's spends", &bobs_left, &2)?;
    ensure_eq("an old code after the replacement", &old_after_replace, &false)?;
    ensure_eq("a new code", &new_code, &true)?;
    ensure_eq("alice's codes after the replacement", &left_after_replace, &1)?;
    ensure_eq("bob's codes after an empty set", &bobs_after_removal, &0)?;
    ensure_eq("a removed code", &bobs_old, &false)
}

/// Two logins with the same recovery code at once: exactly one spends it.
pub async fn two_transactions_spending_one_recovery_code_at_once_spend_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let mut tx = store.begin().await.step("begin")?;
    tx.replace_recovery_codes(alice.id, &[token(1), token(2)], at(0)).await.step("set the codes")?;
    tx.commit().await.step("commit")?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first login")?;
    let first_spend = first.spend_recovery_code(alice.id, &token(1), at(5)).await.step("the first spend")?;
    let rest_of_first = async move {
        first.recovery_codes_left(alice.id).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(spend_recovery_code_alone(store, alice.id, token(1), at(6)), rest_of_first);
    first_commit.step("finish the first login")?;
    let second = second.step("the second login")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let left = tx.recovery_codes_left(alice.id).await.step("count the codes")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("the first spend", &first_spend, &true)?;
    ensure_eq("the second spend", &second, &false)?;
    ensure_eq("codes left", &left, &1)
}

// ---------------------------------------------------------------------------------------------
// Passkeys
// ---------------------------------------------------------------------------------------------

/// Passkeys come back whole, the owner's only, oldest first; a credential id already registered,
/// to the same account or another, is `Conflict { entity: "passkey" }` and leaves nothing.
pub async fn a_passkey_round_trips_and_a_registered_credential_id_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let key = StoredPasskey {
        name: "YubiKey 5C \"NFC\" ✓".to_owned(),
        credential_id: every_byte(),
        last_used_at: Some(at(9)),
        ..passkey(1, alice.id, 3)
    };
    let older = passkey(2, alice.id, 1);
    let bobs = passkey(3, bob.id, 0);
    write_passkeys(store, &[key.clone(), older.clone(), bobs.clone()]).await?;

    let mut tx = store.begin().await.step("begin bob's copy")?;
    let copied =
        tx.insert_passkey(&StoredPasskey { credential_id: every_byte(), ..passkey(4, bob.id, 5) }).await;
    tx.rollback().await.step("roll back bob's copy")?;
    let mut tx = store.begin().await.step("begin alice's second registration")?;
    let twice = tx
        .insert_passkey(&StoredPasskey {
            credential_id: older.credential_id.clone(),
            ..passkey(5, alice.id, 5)
        })
        .await;
    tx.rollback().await.step("roll back the second registration")?;
    let alices = committed_passkeys_of(store, alice.id).await?;
    let bobs_listed = committed_passkeys_of(store, bob.id).await?;

    ensure_conflict("another account registering the credential id", copied, "passkey")?;
    ensure_conflict("the same credential id registered twice", twice, "passkey")?;
    ensure_eq("alice's passkeys", &alices, &vec![older, key])?;
    ensure_eq("bob's passkeys", &bobs_listed, &vec![bobs])
}

/// A passkey's credential is replaced and its use recorded only by its owner, and it is deleted only
/// by its owner, once; another account's id looks missing.
pub async fn a_passkey_is_updated_and_deleted_only_by_its_owner(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let (first, second) = (passkey(1, alice.id, 0), passkey(2, alice.id, 1));
    write_passkeys(store, &[first.clone(), second.clone()]).await?;
    let moved = r#"{"counter":42,"backup_state":true}"#;

    let mut tx = store.begin().await.step("begin the updates")?;
    let by_bob = tx.update_passkey(bob.id, first.id, "{}", at(5)).await.step("bob updates alice's")?;
    let by_alice = tx.update_passkey(alice.id, first.id, moved, at(6)).await.step("alice updates hers")?;
    let unknown = tx.update_passkey(alice.id, device_id(9), "{}", at(6)).await.step("update an unknown")?;
    let deleted_by_bob = tx.delete_passkey(bob.id, second.id).await.step("bob deletes alice's")?;
    let deleted = tx.delete_passkey(alice.id, second.id).await.step("alice deletes hers")?;
    let deleted_again = tx.delete_passkey(alice.id, second.id).await.step("delete it again")?;
    tx.commit().await.step("commit the updates")?;
    let after = committed_passkeys_of(store, alice.id).await?;

    ensure_eq("updated by another account", &by_bob, &false)?;
    ensure_eq("updated by its owner", &by_alice, &true)?;
    ensure_eq("an unknown passkey updated", &unknown, &false)?;
    ensure_eq("deleted by another account", &deleted_by_bob, &false)?;
    ensure_eq("deleted by its owner", &deleted, &true)?;
    ensure_eq("deleted again", &deleted_again, &false)?;
    let updated = StoredPasskey { credential: moved.to_owned(), last_used_at: Some(at(6)), ..first };
    ensure_eq("alice's passkeys after", &after, &vec![updated])
}

// ---------------------------------------------------------------------------------------------
// Challenges
// ---------------------------------------------------------------------------------------------

/// A challenge comes back whole while it is open and unexpired (not at its expiry instant), with or
/// without a session; a ceremony is recorded on an open one only; an unknown hash finds nothing.
pub async fn an_mfa_challenge_is_read_while_open_and_unexpired_and_records_its_ceremony(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let live = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&live)).await?;
    let login = StoredMfaChallenge {
        amr: AuthMethods::PASSWORD.as_stored(),
        failures: 2,
        ..challenge(1, alice.id, ChallengePurpose::LoginCookie, 10, 300_000)
    };
    let registration = StoredMfaChallenge {
        amr: AuthMethods::PASSWORD.with(MfaMethod::Totp).as_stored(),
        ..challenge(2, alice.id, ChallengePurpose::PasskeyRegistration(live.id), 10, 300_000)
    };
    let spent = challenge(3, alice.id, ChallengePurpose::LoginBearer, 10, 300_000);
    write_challenges(store, &[login.clone(), registration.clone(), spent.clone()]).await?;
    let ceremony = r#"{"rs":{"challenge":"3q2-7w","policy":"required"}}"#;

    let mut tx = store.begin().await.step("begin")?;
    tx.spend_mfa_challenge(&spent.hash, at(11)).await.step("spend one")?;
    let recorded = tx.set_mfa_challenge_ceremony(&registration.hash, ceremony).await.step("record")?;
    let on_spent =
        tx.set_mfa_challenge_ceremony(&spent.hash, ceremony).await.step("record on a spent one")?;
    let on_unknown = tx.set_mfa_challenge_ceremony(&token(9), ceremony).await.step("record on unknown")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin the reads")?;
    let login_read = tx.mfa_challenge(&login.hash, at(11)).await.step("read the login challenge")?;
    let registration_read =
        tx.mfa_challenge(&registration.hash, at(300_009)).await.step("read the registration")?;
    let at_expiry = tx.mfa_challenge(&login.hash, at(300_010)).await.step("read at the expiry")?;
    let spent_read = tx.mfa_challenge(&spent.hash, at(11)).await.step("read the spent one")?;
    let unknown = tx.mfa_challenge(&token(9), at(11)).await.step("read an unknown one")?;
    tx.commit().await.step("end the reads")?;

    ensure_eq("ceremony recorded", &recorded, &true)?;
    ensure_eq("ceremony on a spent challenge", &on_spent, &false)?;
    ensure_eq("ceremony on an unknown challenge", &on_unknown, &false)?;
    ensure_eq("the login challenge", &login_read, &Some(login))?;
    let with_ceremony = StoredMfaChallenge { ceremony: Some(ceremony.to_owned()), ..registration };
    ensure_eq("the registration challenge", &registration_read, &Some(with_ceremony))?;
    ensure_eq("at its expiry instant", &at_expiry, &None)?;
    ensure_eq("a spent challenge", &spent_read, &None)?;
    ensure_eq("an unknown challenge", &unknown, &None)
}

/// Wrong answers are counted one by one, and the one that reaches the limit closes the challenge:
/// it can then be neither read, nor failed further (0), nor spent. An unknown hash counts 0.
pub async fn wrong_answers_are_counted_and_close_an_mfa_challenge_at_the_limit(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let target = challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 300_000);
    let other = challenge(2, alice.id, ChallengePurpose::LoginBearer, 0, 300_000);
    write_challenges(store, &[target.clone(), other.clone()]).await?;

    let mut tx = store.begin().await.step("begin the wrong answers")?;
    let mut counted = Vec::new();
    for _ in 0..2 {
        counted.push(tx.fail_mfa_challenge(&target.hash, 3).await.step("a wrong answer")?);
    }
    let open_after_two = tx.mfa_challenge(&target.hash, at(1)).await.step("read after two")?;
    counted.push(tx.fail_mfa_challenge(&target.hash, 3).await.step("the third wrong answer")?);
    counted.push(tx.fail_mfa_challenge(&target.hash, 3).await.step("a fourth wrong answer")?);
    let unknown = tx.fail_mfa_challenge(&token(9), 3).await.step("a wrong answer to an unknown one")?;
    let other_failed = tx.fail_mfa_challenge(&other.hash, 3).await.step("a wrong answer to the other")?;
    tx.commit().await.step("commit the wrong answers")?;
    let mut tx = store.begin().await.step("begin the reads")?;
    let closed_read = tx.mfa_challenge(&target.hash, at(2)).await.step("read the closed one")?;
    let closed_spend = tx.spend_mfa_challenge(&target.hash, at(2)).await.step("spend the closed one")?;
    let other_spend = tx.spend_mfa_challenge(&other.hash, at(2)).await.step("spend the other")?;
    tx.commit().await.step("commit the reads")?;

    ensure_eq("failures counted", &counted, &vec![1, 2, 3, 0])?;
    ensure_eq("open after two", &open_after_two, &Some(StoredMfaChallenge { failures: 2, ..target }))?;
    ensure_eq("an unknown challenge", &unknown, &0)?;
    ensure_eq("the other challenge's count", &other_failed, &1)?;
    ensure_eq("the closed challenge read", &closed_read, &None)?;
    ensure_eq("the closed challenge spent", &closed_spend, &None)?;
    ensure_eq("the other challenge spent", &other_spend, &Some(StoredMfaChallenge { failures: 1, ..other }))
}

/// Spending returns the challenge as it stood (with its count of wrong answers) and closes it, once;
/// an expired (at its expiry instant) or unknown challenge is not spent.
pub async fn an_mfa_challenge_is_spent_once_and_not_once_expired(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let live = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&live)).await?;
    let step_up = challenge(1, alice.id, ChallengePurpose::Reauthentication(live.id), 0, 1_000);
    let expiring = challenge(2, alice.id, ChallengePurpose::LoginCookie, 0, 1_000);
    write_challenges(store, &[step_up.clone(), expiring.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.fail_mfa_challenge(&step_up.hash, 5).await.step("a wrong answer")?;
    let spent = tx.spend_mfa_challenge(&step_up.hash, at(999)).await.step("spend")?;
    let spent_again = tx.spend_mfa_challenge(&step_up.hash, at(999)).await.step("spend again")?;
    let read_after = tx.mfa_challenge(&step_up.hash, at(999)).await.step("read after the spend")?;
    let failed_after = tx.fail_mfa_challenge(&step_up.hash, 5).await.step("a wrong answer after")?;
    let expired = tx.spend_mfa_challenge(&expiring.hash, at(1_000)).await.step("spend an expired one")?;
    let unknown = tx.spend_mfa_challenge(&token(9), at(1)).await.step("spend an unknown one")?;
    tx.commit().await.step("commit")?;

    ensure_eq("spent", &spent, &Some(StoredMfaChallenge { failures: 1, ..step_up }))?;
    ensure_eq("spent again", &spent_again, &None)?;
    ensure_eq("read after the spend", &read_after, &None)?;
    ensure_eq("a wrong answer after the spend", &failed_after, &0)?;
    ensure_eq("an expired challenge", &expired, &None)?;
    ensure_eq("an unknown challenge", &unknown, &None)
}

/// Two answers to one challenge at once: the first spends it and is still opening its session when
/// the second arrives; the second gets nothing.
pub async fn two_transactions_spending_one_mfa_challenge_at_once_get_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let target = challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 300_000);
    write_challenges(store, slice::from_ref(&target)).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first answer")?;
    let first_spend = first.spend_mfa_challenge(&target.hash, at(5)).await.step("the first spend")?;
    let rest_of_first = async move {
        first.insert_session(&unsealed(session(1, alice.id, 5)), None).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(spend_mfa_challenge_alone(store, target.hash, at(6)), rest_of_first);
    first_commit.step("finish the first answer")?;
    let second = second.step("the second answer")?;

    ensure_eq("the first answer", &first_spend, &Some(target))?;
    ensure_eq("the second answer", &second, &None)
}

/// The purge deletes the challenges that expired strictly before the instant, spent or not, and
/// keeps the rest.
pub async fn purging_mfa_challenges_takes_those_expired_before_the_instant(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let early = challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 10);
    let spent_early = challenge(2, alice.id, ChallengePurpose::LoginBearer, 0, 15);
    let at_the_instant = challenge(3, alice.id, ChallengePurpose::LoginBearer, 0, 20);
    let late = challenge(4, alice.id, ChallengePurpose::LoginBearer, 0, 30);
    write_challenges(store, &[early, spent_early.clone(), at_the_instant.clone(), late.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.spend_mfa_challenge(&spent_early.hash, at(1)).await.step("spend one")?;
    let purged = tx.purge_mfa_challenges(at(20)).await.step("purge")?;
    let purged_again = tx.purge_mfa_challenges(at(20)).await.step("purge again")?;
    let kept_at = tx.mfa_challenge(&at_the_instant.hash, at(19)).await.step("read the one at the instant")?;
    let kept_late = tx.mfa_challenge(&late.hash, at(19)).await.step("read the late one")?;
    let purged_all = tx.purge_mfa_challenges(at(31)).await.step("purge the rest")?;
    tx.commit().await.step("commit")?;

    ensure_eq("purged", &purged, &2)?;
    ensure_eq("purged again", &purged_again, &0)?;
    ensure_eq("the one expiring at the instant", &kept_at, &Some(at_the_instant))?;
    ensure_eq("the late one", &kept_late, &Some(late))?;
    ensure_eq("purged later", &purged_all, &2)
}

/// A password change ends an account's pending login challenges, and only that account's.
pub async fn deleting_an_accounts_login_challenges_leaves_other_accounts_alone(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let bearer = challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 100);
    let cookie = challenge(2, alice.id, ChallengePurpose::LoginCookie, 0, 100);
    let theirs = challenge(3, bob.id, ChallengePurpose::LoginBearer, 0, 100);
    write_challenges(store, &[bearer.clone(), cookie.clone(), theirs.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let deleted = tx.delete_login_challenges_of(alice.id).await.step("delete alice's")?;
    let again = tx.delete_login_challenges_of(alice.id).await.step("delete again")?;
    let bearer_left = tx.mfa_challenge(&bearer.hash, at(1)).await.step("read the bearer one")?;
    let cookie_left = tx.mfa_challenge(&cookie.hash, at(1)).await.step("read the cookie one")?;
    let theirs_left = tx.mfa_challenge(&theirs.hash, at(1)).await.step("read bob's")?;
    tx.commit().await.step("commit")?;

    ensure_eq("deleted", &deleted, &2)?;
    ensure_eq("deleted again", &again, &0)?;
    ensure_eq("alice's bearer challenge", &bearer_left, &None)?;
    ensure_eq("alice's cookie challenge", &cookie_left, &None)?;
    ensure_eq("bob's challenge", &theirs_left, &Some(theirs))
}

// ---------------------------------------------------------------------------------------------
// Organizations, sessions, reset
// ---------------------------------------------------------------------------------------------

/// An organization requires no second factor until told to, the setting reads back (`None` for a
/// missing organization, and setting one says false), and an account is found as a member of an
/// organization that requires one exactly while it is.
pub async fn an_organization_requires_mfa_once_set_and_its_members_are_found(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let (alice, bob, carol) =
        (user(1, "alice@example.com"), user(2, "bob@example.com"), user(3, "carol@example.com"));
    write_users(store, &[alice.clone(), bob.clone(), carol.clone()]).await?;
    let mut tx = store.begin().await.step("begin the memberships")?;
    tx.set_membership(acme.id, alice.id, BuiltinRole::Member, at(1)).await.step("alice joins acme")?;
    tx.set_membership(globex.id, alice.id, BuiltinRole::Admin, at(1)).await.step("alice joins globex")?;
    tx.set_membership(globex.id, bob.id, BuiltinRole::Owner, at(1)).await.step("bob joins globex")?;
    tx.commit().await.step("commit the memberships")?;

    let mut tx = store.begin().await.step("begin the settings")?;
    let before = tx.organization_requires_mfa(acme.id).await.step("read acme's before")?;
    let alice_before = tx.member_of_mfa_organization(alice.id).await.step("alice before")?;
    let set = tx.set_organization_requires_mfa(acme.id, true).await.step("acme requires mfa")?;
    let set_missing =
        tx.set_organization_requires_mfa(organization_id(9), true).await.step("a missing one requires")?;
    tx.commit().await.step("commit the settings")?;
    let mut tx = store.begin_read().await.step("begin the reads")?;
    let acme_after = tx.organization_requires_mfa(acme.id).await.step("read acme's")?;
    let globex_after = tx.organization_requires_mfa(globex.id).await.step("read globex's")?;
    let missing = tx.organization_requires_mfa(organization_id(9)).await.step("read a missing one")?;
    let mut members = Vec::new();
    for who in [alice.id, bob.id, carol.id] {
        members.push(tx.member_of_mfa_organization(who).await.step("member of one requiring mfa")?);
    }
    tx.commit().await.step("end the reads")?;
    let mut tx = store.begin().await.step("begin the reversal")?;
    let unset = tx.set_organization_requires_mfa(acme.id, false).await.step("acme no longer requires")?;
    let alice_unset = tx.member_of_mfa_organization(alice.id).await.step("alice after the reversal")?;
    let acme_unset = tx.organization_requires_mfa(acme.id).await.step("read acme's after the reversal")?;
    tx.commit().await.step("commit the reversal")?;

    ensure_eq("acme before", &before, &Some(false))?;
    ensure_eq("alice before", &alice_before, &false)?;
    ensure_eq("set on acme", &set, &true)?;
    ensure_eq("set on a missing organization", &set_missing, &false)?;
    ensure_eq("acme after", &acme_after, &Some(true))?;
    ensure_eq("globex after", &globex_after, &Some(false))?;
    ensure_eq("a missing organization", &missing, &None)?;
    ensure_eq("alice, bob, carol in an organization requiring mfa", &members, &vec![true, false, false])?;
    ensure_eq("unset on acme", &unset, &true)?;
    ensure_eq("alice after the reversal", &alice_unset, &false)?;
    ensure_eq("acme after the reversal", &acme_unset, &Some(false))
}

/// A re-authentication replaces what a live session proved, its level, when, and whether it must
/// enroll, as every read of the session sees; a revoked or unknown session is refused and unchanged.
pub async fn a_sessions_authentication_is_recorded_only_while_it_is_live(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let bearer = Session { mfa_enrollment_required: true, ..session(1, alice.id, 0) };
    let cookie = Session { kind: SessionKind::Cookie, ..session(2, alice.id, 1) };
    let revoked = session(3, alice.id, 2);
    let mut tx = store.begin().await.step("begin the sessions")?;
    tx.insert_session(&unsealed(bearer.clone()), None).await.step("insert the bearer session")?;
    tx.insert_session(&unsealed(cookie.clone()), Some(&token(2))).await.step("insert the cookie session")?;
    tx.insert_session(&unsealed(revoked.clone()), None).await.step("insert the doomed session")?;
    tx.revoke_session(alice.id, revoked.id, at(3), RevokeReason::Logout).await.step("revoke it")?;
    tx.commit().await.step("commit the sessions")?;
    let otp = AuthMethods::PASSWORD.with(MfaMethod::Totp);
    let passkey_only = AuthMethods::default().with(MfaMethod::Passkey);

    let mut tx = store.begin().await.step("begin the re-authentications")?;
    let enrolled = tx
        .set_session_authentication(bearer.id, &otp.as_stored(), 1, at(50), false)
        .await
        .step("the bearer session enrolls")?;
    let stepped_up = tx
        .set_session_authentication(cookie.id, &passkey_only.as_stored(), 1, at(60), true)
        .await
        .step("the cookie session steps up")?;
    let on_revoked = tx
        .set_session_authentication(revoked.id, &otp.as_stored(), 1, at(70), false)
        .await
        .step("the revoked session")?;
    let on_unknown = tx
        .set_session_authentication(session_id(9), &otp.as_stored(), 1, at(70), false)
        .await
        .step("an unknown session")?;
    tx.commit().await.step("commit the re-authentications")?;
    let bearer_read = committed_session(store, bearer.id).await?;
    let revoked_read = committed_session(store, revoked.id).await?;
    let mut tx = store.begin_read().await.step("begin the other reads")?;
    let by_cookie = tx.session_by_cookie(&token(2)).await.step("look up by cookie")?;
    let listed: Vec<Session> = tx
        .sessions_of(alice.id, at(100))
        .await
        .step("list the sessions")?
        .into_iter()
        .map(|s| s.session)
        .collect();
    tx.commit().await.step("end the other reads")?;

    ensure_eq("the bearer session", &enrolled, &true)?;
    ensure_eq("the cookie session", &stepped_up, &true)?;
    ensure_eq("a revoked session", &on_revoked, &false)?;
    ensure_eq("an unknown session", &on_unknown, &false)?;
    let bearer_after = Session {
        amr: otp,
        mfa_level: 1,
        authenticated_at: at(50),
        mfa_enrollment_required: false,
        ..bearer
    };
    let cookie_after = Session {
        amr: passkey_only,
        mfa_level: 1,
        authenticated_at: at(60),
        mfa_enrollment_required: true,
        ..cookie
    };
    ensure_eq("the bearer session read back", &bearer_read, &Some(bearer_after.clone()))?;
    ensure_eq("the cookie session by its cookie", &by_cookie, &Some(cookie_after.clone()))?;
    ensure_eq(
        "the revoked session read back",
        &revoked_read,
        &Some(Session { revoked_at: Some(at(3)), ..revoked }),
    )?;
    ensure_eq("the session list", &listed, &vec![cookie_after, bearer_after])
}

/// An administrator's reset removes every authenticator, passkey, recovery code and pending
/// challenge of the account and counts the devices; another account keeps all of its own.
pub async fn deleting_all_factors_takes_every_factor_and_challenge_of_that_account_only(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let alices_session = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&alices_session)).await?;
    write_totp_devices(store, &[totp(1, alice.id, 0), totp(2, alice.id, 1), totp(3, bob.id, 0)]).await?;
    write_passkeys(store, &[passkey(1, alice.id, 0), passkey(2, bob.id, 0)]).await?;
    let alices_challenges = [
        challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 1_000),
        challenge(2, alice.id, ChallengePurpose::Reauthentication(alices_session.id), 0, 1_000),
    ];
    let bobs_challenge = challenge(3, bob.id, ChallengePurpose::LoginCookie, 0, 1_000);
    let mut all_challenges = alices_challenges.to_vec();
    all_challenges.push(bobs_challenge.clone());
    write_challenges(store, &all_challenges).await?;
    let mut tx = store.begin().await.step("begin the codes")?;
    tx.replace_recovery_codes(alice.id, &[token(1), token(2)], at(0)).await.step("alice's codes")?;
    tx.replace_recovery_codes(bob.id, &[token(3)], at(0)).await.step("bob's codes")?;
    tx.commit().await.step("commit the codes")?;
    let bobs_devices = committed_totp_devices_of(store, bob.id).await?;
    let bobs_passkeys = committed_passkeys_of(store, bob.id).await?;

    let mut tx = store.begin().await.step("begin the reset")?;
    let deleted = tx.delete_all_factors(alice.id).await.step("reset alice")?;
    let deleted_again = tx.delete_all_factors(alice.id).await.step("reset alice again")?;
    tx.commit().await.step("commit the reset")?;
    let mut tx = store.begin_read().await.step("begin the reads")?;
    let alices_devices = tx.totp_devices_of(alice.id).await.step("alice's devices")?;
    let alices_passkeys = tx.passkeys_of(alice.id).await.step("alice's passkeys")?;
    let alices_codes = tx.recovery_codes_left(alice.id).await.step("alice's codes")?;
    let mut alices_open = Vec::new();
    for c in &alices_challenges {
        alices_open.extend(tx.mfa_challenge(&c.hash, at(1)).await.step("alice's challenge")?);
    }
    let bobs_devices_after = tx.totp_devices_of(bob.id).await.step("bob's devices")?;
    let bobs_passkeys_after = tx.passkeys_of(bob.id).await.step("bob's passkeys")?;
    let bobs_codes = tx.recovery_codes_left(bob.id).await.step("bob's codes")?;
    let bobs_open = tx.mfa_challenge(&bobs_challenge.hash, at(1)).await.step("bob's challenge")?;
    tx.commit().await.step("end the reads")?;

    ensure_eq("devices and passkeys deleted", &deleted, &3)?;
    ensure_eq("deleted again", &deleted_again, &0)?;
    ensure_eq("alice's devices", &alices_devices, &Vec::new())?;
    ensure_eq("alice's passkeys", &alices_passkeys, &Vec::new())?;
    ensure_eq("alice's codes", &alices_codes, &0)?;
    ensure_eq("alice's challenges", &alices_open, &Vec::new())?;
    ensure_eq("bob's devices", &bobs_devices_after, &bobs_devices)?;
    ensure_eq("bob's passkeys", &bobs_passkeys_after, &bobs_passkeys)?;
    ensure_eq("bob's codes", &bobs_codes, &1)?;
    ensure_eq("bob's challenge", &bobs_open, &Some(bobs_challenge))
}

/// Deleting an account takes its factors and challenges with it.
pub async fn deleting_an_account_takes_its_factors(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    write_totp_devices(store, &[totp(1, alice.id, 0)]).await?;
    write_passkeys(store, &[passkey(1, alice.id, 0)]).await?;
    let pending = challenge(1, alice.id, ChallengePurpose::LoginBearer, 0, 1_000);
    write_challenges(store, slice::from_ref(&pending)).await?;
    let mut tx = store.begin().await.step("begin")?;
    tx.replace_recovery_codes(alice.id, &[token(1)], at(0)).await.step("set the codes")?;
    let deleted = tx.delete_user(alice.id, at(5)).await.step("delete the account")?;
    tx.commit().await.step("commit")?;

    let mut tx = store.begin_read().await.step("begin the reads")?;
    let devices = tx.totp_devices_of(alice.id).await.step("its devices")?;
    let passkeys = tx.passkeys_of(alice.id).await.step("its passkeys")?;
    let codes = tx.recovery_codes_left(alice.id).await.step("its codes")?;
    let open = tx.mfa_challenge(&pending.hash, at(6)).await.step("its challenge")?;
    let sealed_left = tx.count_pii_rows_under(PII_KEY).await.step("count the sealed seeds")?;
    tx.commit().await.step("end the reads")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("its devices", &devices, &Vec::new())?;
    ensure_eq("its passkeys", &passkeys, &Vec::new())?;
    ensure_eq("its codes", &codes, &0)?;
    ensure_eq("its challenge", &open, &None)?;
    ensure_eq("rows sealed under its key", &sealed_left, &0)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn device_id(seed: u8) -> MfaDeviceId {
    MfaDeviceId::from_random_bytes([seed; 16])
}

/// An unconfirmed authenticator of `owner` created `created` ms after T0, its seed sealed under
/// [`PII_KEY`] (distinct bytes per seed).
pub(crate) fn totp(seed: u8, owner: UserId, created: i64) -> StoredTotpDevice {
    StoredTotpDevice {
        id: device_id(seed),
        user_id: owner,
        name: format!("Phone {seed}"),
        secret: Sealed([b"totp seed".as_slice(), &[seed, 0x00, 0xff, 0x80]].concat()),
        pii_key: PII_KEY.to_owned(),
        created_at: at(created),
        confirmed_at: None,
        last_used_at: None,
        last_step: None,
    }
}

/// A never-used passkey of `owner` with a credential id of its own.
fn passkey(seed: u8, owner: UserId, created: i64) -> StoredPasskey {
    StoredPasskey {
        id: device_id(seed),
        user_id: owner,
        name: format!("Key {seed}"),
        credential_id: vec![seed; 64],
        credential: format!(r#"{{"cred":{seed},"counter":0}}"#),
        created_at: at(created),
        last_used_at: None,
    }
}

/// An open challenge of `owner` for `purpose` (with its session), after a password, created
/// `created` ms after T0 and good for `lifetime` ms.
fn challenge(
    seed: u8,
    owner: UserId,
    purpose: ChallengePurpose,
    created: i64,
    lifetime: i64,
) -> StoredMfaChallenge {
    StoredMfaChallenge {
        hash: token(seed),
        user_id: owner,
        purpose: purpose.as_str().to_owned(),
        session_id: purpose.session(),
        amr: AuthMethods::PASSWORD.as_stored(),
        ceremony: None,
        created_at: at(created),
        expires_at: at(created + lifetime),
        failures: 0,
    }
}

async fn write_totp_devices(store: &dyn Store, devices: &[StoredTotpDevice]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for device in devices {
        tx.insert_totp_device(device).await.step("insert a totp device")?;
    }
    tx.commit().await.step("commit the totp devices")
}

async fn write_passkeys(store: &dyn Store, passkeys: &[StoredPasskey]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for passkey in passkeys {
        tx.insert_passkey(passkey).await.step("insert a passkey")?;
    }
    tx.commit().await.step("commit the passkeys")
}

async fn write_challenges(store: &dyn Store, challenges: &[StoredMfaChallenge]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for challenge in challenges {
        tx.insert_mfa_challenge(challenge).await.step("insert a challenge")?;
    }
    tx.commit().await.step("commit the challenges")
}

async fn committed_totp_devices_of(
    store: &dyn Store,
    user: UserId,
) -> Result<Vec<StoredTotpDevice>, super::Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.totp_devices_of(user).await.step("list the totp devices")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

async fn committed_passkeys_of(
    store: &dyn Store,
    user: UserId,
) -> Result<Vec<StoredPasskey>, super::Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.passkeys_of(user).await.step("list the passkeys")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

async fn accept_totp_step_alone(
    store: &dyn Store,
    user: UserId,
    id: MfaDeviceId,
    step: i64,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    let accepted = tx.accept_totp_step(user, id, step, at).await?;
    tx.commit().await?;
    Ok(accepted)
}

async fn spend_recovery_code_alone(
    store: &dyn Store,
    user: UserId,
    code: TokenHash,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_recovery_code(user, &code, at).await?;
    tx.commit().await?;
    Ok(spent)
}

async fn spend_mfa_challenge_alone(
    store: &dyn Store,
    hash: TokenHash,
    now: Timestamp,
) -> Result<Option<StoredMfaChallenge>, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_mfa_challenge(&hash, now).await?;
    tx.commit().await?;
    Ok(spent)
}
