//! The contract of IP rules (`IpRuleStore`): every field comes back as written, rules list oldest
//! first, a detection rule always expires, deletion reports what it did, and purging takes exactly
//! the rules whose expiry has passed.

use portcullis_domain::{IpRule, IpRuleAction, IpRuleId, IpRuleScope, IpRuleSource, parse_network};
use portcullis_store::Store;

use super::{Failure, Outcome, Step, at, ensure, ensure_conflict, ensure_eq, migrated, user, write_users};

fn rule_id(seed: u8) -> IpRuleId {
    IpRuleId::from_random_bytes([seed; 16])
}

/// A rule for `network` made at `created` (an offset from the fixture epoch).
fn rule(
    seed: u8,
    network: &str,
    action: IpRuleAction,
    scope: IpRuleScope,
    created: i64,
) -> Result<IpRule, Failure> {
    Ok(IpRule {
        id: rule_id(seed),
        network: parse_network(network).map_err(|e| Failure(format!("fixture network {network}: {e}")))?,
        action,
        scope,
        source: IpRuleSource::Admin,
        note: String::new(),
        created_by: None,
        created_at: at(created),
        expires_at: None,
    })
}

async fn write_rules(store: &dyn Store, rules: &[IpRule]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for rule in rules {
        tx.insert_ip_rule(rule).await.step("insert a rule")?;
    }
    tx.commit().await.step("commit the rules")
}

async fn committed_rules(store: &dyn Store) -> Result<Vec<IpRule>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.ip_rules(100).await.step("list the rules")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Every field of a rule comes back as written (IPv4 and IPv6 networks, a note with non-ASCII text,
/// the creator, an expiry or none, each source that is stored), read by id and in the listing,
/// which is oldest first with ties broken by id; an unknown id is `None`; `limit` caps the listing.
pub async fn an_ip_rule_round_trips_every_field_and_rules_are_listed_oldest_first(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, std::slice::from_ref(&alice)).await?;
    let office = IpRule {
        note: "Büro Zürich, VPN exit".into(),
        created_by: Some(alice.id),
        expires_at: Some(at(86_400_000)),
        ..rule(0x20, "192.0.2.0/24", IpRuleAction::Allow, IpRuleScope::Admin, 5)?
    };
    let v6 = rule(0x10, "2001:db8:abcd::/48", IpRuleAction::Deny, IpRuleScope::Global, 5)?;
    let block = IpRule {
        source: IpRuleSource::Detection,
        note: "credential stuffing".into(),
        expires_at: Some(at(3_600_000)),
        ..rule(0x30, "203.0.113.9/32", IpRuleAction::Deny, IpRuleScope::Global, 1)?
    };
    write_rules(store, &[office.clone(), v6.clone(), block.clone()]).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let found = tx.ip_rule(office.id).await.step("read the rule")?;
    let missing = tx.ip_rule(rule_id(0x99)).await.step("read an unknown rule")?;
    let first_two = tx.ip_rules(2).await.step("list two rules")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("the rule by id", &found, &Some(office.clone()))?;
    ensure_eq("an unknown rule", &missing, &None)?;
    ensure_eq(
        "every rule, oldest first, ties by id",
        &committed_rules(store).await?,
        &vec![block.clone(), v6.clone(), office],
    )?;
    ensure_eq("the first two", &first_two, &vec![block, v6])
}

/// A reused id is a conflict on `ip_rule`; a detection rule without an expiry is refused (the
/// schema's check) and the transaction cannot commit; nothing of either is stored.
pub async fn a_reused_ip_rule_id_conflicts_and_a_detection_rule_must_expire(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let first = rule(1, "10.0.0.0/8", IpRuleAction::Allow, IpRuleScope::Global, 0)?;
    write_rules(store, std::slice::from_ref(&first)).await?;

    let mut tx = store.begin().await.step("begin a write")?;
    let again = rule(1, "172.16.0.0/12", IpRuleAction::Deny, IpRuleScope::Global, 1)?;
    ensure_conflict("a reused id", tx.insert_ip_rule(&again).await, "ip_rule")?;
    tx.rollback().await.step("roll back")?;

    let mut tx = store.begin().await.step("begin a write")?;
    let standing_block = IpRule {
        source: IpRuleSource::Detection,
        ..rule(2, "198.51.100.1/32", IpRuleAction::Deny, IpRuleScope::Global, 2)?
    };
    let refused = tx.insert_ip_rule(&standing_block).await;
    ensure(refused.is_err(), || "a detection rule without an expiry was stored".into())?;
    ensure(tx.commit().await.is_err(), || "a transaction with a refused insert committed".into())?;

    ensure_eq("the rules", &committed_rules(store).await?, &vec![first])
}

/// Deleting a rule reports true, then false; other rules stay.
pub async fn deleting_an_ip_rule_reports_true_then_false(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let keep = rule(1, "10.0.0.0/8", IpRuleAction::Allow, IpRuleScope::Global, 0)?;
    let gone = rule(2, "::1/128", IpRuleAction::Deny, IpRuleScope::Admin, 1)?;
    write_rules(store, &[keep.clone(), gone.clone()]).await?;

    let mut tx = store.begin().await.step("begin a write")?;
    let first = tx.delete_ip_rule(gone.id).await.step("delete the rule")?;
    let second = tx.delete_ip_rule(gone.id).await.step("delete it again")?;
    tx.commit().await.step("commit the deletion")?;

    ensure_eq("the first deletion", &first, &true)?;
    ensure_eq("the second deletion", &second, &false)?;
    ensure_eq("the rules left", &committed_rules(store).await?, &vec![keep])
}

/// Purging takes exactly the rules whose expiry is at or before `now`, never a standing rule, and
/// says how many it took.
pub async fn purging_takes_exactly_the_ip_rules_expired_at_or_before_now(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let expiring = |seed: u8, expiry: i64| -> Result<IpRule, Failure> {
        Ok(IpRule {
            expires_at: Some(at(expiry)),
            ..rule(seed, &format!("198.51.100.{seed}"), IpRuleAction::Deny, IpRuleScope::Global, 0)?
        })
    };
    let standing = rule(1, "203.0.113.0/24", IpRuleAction::Deny, IpRuleScope::Global, 0)?;
    let (past, now, later) = (expiring(2, 999)?, expiring(3, 1_000)?, expiring(4, 1_001)?);
    write_rules(store, &[standing.clone(), past, now, later.clone()]).await?;

    let mut tx = store.begin().await.step("begin a write")?;
    let purged = tx.purge_expired_ip_rules(at(1_000)).await.step("purge")?;
    tx.commit().await.step("commit the purge")?;

    ensure_eq("rules purged", &purged, &2)?;
    ensure_eq("the rules left", &committed_rules(store).await?, &vec![standing, later])
}
