//! Contract checks for the failed-login records.

use portcullis_domain::LoginThrottle;
use portcullis_store::Store;

use super::{Outcome, Step, at, ensure_eq, migrated};

fn record(seed: u8, failures: u32, last: i64, locked_until: Option<i64>) -> LoginThrottle {
    LoginThrottle {
        subject: [seed; 32],
        failures,
        first_failure_at: at(last - 10),
        last_failure_at: at(last),
        locked_until: locked_until.map(at),
        lockouts: u32::from(seed),
    }
}

/// A record comes back as written, a second write replaces it whole (including a lock that is lifted),
/// a cleared one is gone (and clearing says whether there was one), and another subject's is separate.
pub async fn a_login_throttle_round_trips_is_replaced_whole_and_clears(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (first, other) = (record(3, 7, 1_000, Some(90_000)), record(4, 1, 2_000, None));
    let mut tx = store.begin().await.step("begin")?;
    ensure_eq("read before", &tx.login_throttle(&first.subject).await.step("read before")?, &None)?;
    tx.save_login_throttle(&first).await.step("save")?;
    tx.save_login_throttle(&other).await.step("save another")?;
    tx.commit().await.step("commit")?;

    let mut tx = store.begin().await.step("begin")?;
    ensure_eq("read", &tx.login_throttle(&first.subject).await.step("read")?, &Some(first.clone()))?;
    let replaced = LoginThrottle { failures: 0, locked_until: None, lockouts: 9, ..first.clone() };
    tx.save_login_throttle(&replaced).await.step("replace")?;
    ensure_eq(
        "read replaced",
        &tx.login_throttle(&first.subject).await.step("read replaced")?,
        &Some(replaced),
    )?;
    ensure_eq("clear", &tx.clear_login_throttle(&first.subject).await.step("clear")?, &true)?;
    ensure_eq("clear again", &tx.clear_login_throttle(&first.subject).await.step("clear again")?, &false)?;
    ensure_eq("read cleared", &tx.login_throttle(&first.subject).await.step("read cleared")?, &None)?;
    ensure_eq(
        "read the other",
        &tx.login_throttle(&other.subject).await.step("read the other")?,
        &Some(other),
    )?;
    tx.commit().await.step("commit")?;
    Ok(())
}

/// Purging forgets records idle since before the cut-off, but never one that is still locked.
pub async fn purging_forgets_idle_login_throttles_but_not_locked_ones(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let idle = record(1, 2, 1_000, None);
    let idle_lock_over = record(2, 0, 1_000, Some(5_000));
    let idle_but_locked = record(3, 0, 1_000, Some(50_000));
    let recent = record(5, 1, 20_000, None);
    let mut tx = store.begin().await.step("begin")?;
    for r in [&idle, &idle_lock_over, &idle_but_locked, &recent] {
        tx.save_login_throttle(r).await.step("save")?;
    }
    let purged = tx.purge_login_throttles(at(10_000), at(10_000)).await.step("purge")?;
    ensure_eq("purged count", &purged, &2)?;
    ensure_eq("read idle", &tx.login_throttle(&idle.subject).await.step("read idle")?, &None)?;
    ensure_eq(
        "read unlocked",
        &tx.login_throttle(&idle_lock_over.subject).await.step("read unlocked")?,
        &None,
    )?;
    ensure_eq(
        "read locked",
        &tx.login_throttle(&idle_but_locked.subject).await.step("read locked")?,
        &Some(idle_but_locked),
    )?;
    ensure_eq("read recent", &tx.login_throttle(&recent.subject).await.step("read recent")?, &Some(recent))?;
    tx.commit().await.step("commit")?;
    Ok(())
}

/// An address digest is new once and known after; addresses are counted per account.
pub async fn login_addresses_are_remembered_per_account(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (alice, bob) = (super::user_id(1), super::user_id(2));
    let mut tx = store.begin().await.step("begin")?;
    ensure_eq("none known", &tx.known_login_ip_count(alice).await.step("count")?, &0)?;
    ensure_eq("new", &tx.remember_login_ip(alice, &[1; 32], at(1)).await.step("remember")?, &false)?;
    ensure_eq("known", &tx.remember_login_ip(alice, &[1; 32], at(2)).await.step("remember again")?, &true)?;
    ensure_eq(
        "another",
        &tx.remember_login_ip(alice, &[2; 32], at(3)).await.step("remember another")?,
        &false,
    )?;
    ensure_eq("bob's is his own", &tx.remember_login_ip(bob, &[1; 32], at(4)).await.step("bob")?, &false)?;
    ensure_eq("two known", &tx.known_login_ip_count(alice).await.step("count")?, &2)?;
    ensure_eq("known", &tx.login_ip_known(alice, &[2; 32]).await.step("known")?, &true)?;
    ensure_eq("not known", &tx.login_ip_known(alice, &[3; 32]).await.step("unknown")?, &false)?;
    ensure_eq("not alice's", &tx.login_ip_known(super::user_id(3), &[1; 32]).await.step("other")?, &false)?;
    tx.commit().await.step("commit")?;
    Ok(())
}
