//! The contract of the audit trail (`AuditStore`): events appended at the locked chain head come
//! back byte for byte in chain order; an append from a head that has moved is refused whole; any
//! number of transactions appending at once still form one unbroken chain; the listing filters,
//! orders by seq (newest first) and pages; checkpoints are one per seq, and retention cuts only at
//! one whose event is old enough.
//!
//! The chain hashes every field exactly as written (`portcullis_domain::audit::encode`), so a store
//! that reformats the details, turns an empty value into a missing one or drops a byte of the sealed
//! client details breaks verification of the whole trail: round trips here compare whole events.

use std::slice;

use portcullis_domain::audit::{GENESIS_HASH, event_hash};
use portcullis_domain::{
    Actor, ActorKind, AuditCheckpoint, AuditEvent, AuditRecord, ChainHead, Outcome as Ending,
};
use portcullis_store::{AuditQuery, Store};

use super::{Failure, Outcome, PII_KEY, Step, at, ensure, ensure_conflict, ensure_eq, migrated, sealed};

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// An empty trail has the genesis head and no bounds. Three events linked after the locked head
/// (one with every field set, sealed bytes and details with unusual spacing; one with nothing
/// optional; one whose optional fields are present but empty) come back equal in seq order, the
/// head is the last of them, the bounds count them, and reads after a seq start past it and stop
/// at the limit.
pub async fn audit_events_append_at_the_head_and_read_back_in_chain_order(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    ensure_eq("the head of an empty trail", &committed_head(store).await?, &ChainHead::GENESIS)?;
    ensure_eq("the bounds of an empty trail", &committed_bounds(store).await?, &None)?;
    ensure_eq("the events of an empty trail", &events_after(store, 0, 10).await?, &Vec::new())?;

    let mut tx = store.begin().await.step("begin an append")?;
    let from = tx.lock_audit_head().await.step("lock the head of an empty trail")?;
    ensure_eq("the locked head of an empty trail", &from, &ChainHead { seq: 0, hash: GENESIS_HASH })?;
    let (written, last) = linked(from, vec![full(1), bare(2, 5), empty_but_present(3)]);
    tx.append_audit_events(from, &written).await.step("append three events")?;
    tx.commit().await.step("commit the events")?;

    let read = events_after(store, 0, 10).await?;
    ensure_eq("the events read back", &read, &written)?;
    let details: Vec<&str> = read.iter().map(|e| e.record.details.as_str()).collect();
    ensure_eq("the details, verbatim", &details, &vec![UNUSUAL_DETAILS, "{}", "[]"])?;
    ensure_eq("the head after the append", &committed_head(store).await?, &last)?;
    ensure_eq("the bounds after the append", &committed_bounds(store).await?, &Some((1, 3, 3)))?;

    let mut tx = store.begin().await.step("begin a second append")?;
    let locked = tx.lock_audit_head().await.step("lock the head again")?;
    tx.rollback().await.step("roll back the second append")?;
    ensure_eq("the head a later append locks", &locked, &last)?;

    ensure_eq(
        "the events after seq 1, one of them",
        &events_after(store, 1, 1).await?,
        &part(&written, 1..2),
    )?;
    ensure_eq("the events after seq 1", &events_after(store, 1, 10).await?, &part(&written, 1..3))?;
    ensure_eq("the events after the last", &events_after(store, 3, 10).await?, &Vec::new())?;
    ensure_eq("no events at all (a limit of 0)", &events_after(store, 0, 0).await?, &Vec::new())
}

/// An append is conditional on the head it was linked after: from the genesis head once events
/// exist, from the right seq with the wrong hash, from a seq ahead of the head, and from a head that
/// another transaction moved since it was read, it is a conflict on `audit_head`; nothing is written
/// whether the transaction is then rolled back or committed anyway, and a fresh lock still appends.
pub async fn an_append_from_a_stale_head_is_refused_and_writes_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (first, _) = append(store, vec![bare(1, 0)]).await?;
    let read_before = committed_head(store).await?;
    let (second, _) = append(store, vec![bare(2, 1)]).await?;
    let stored: Vec<AuditEvent> = [first, second].concat();
    let head = committed_head(store).await?;

    let stale = [
        ("the genesis head", ChainHead::GENESIS),
        ("the right seq with a wrong hash", ChainHead { seq: head.seq, hash: [7; 32] }),
        ("a seq ahead of the head", ChainHead { seq: head.seq + 3, hash: head.hash }),
        ("the head as read before another transaction appended", read_before),
    ];
    for (what, from) in stale {
        for commit_anyway in [false, true] {
            let mut tx = store.begin().await.step("begin an append")?;
            tx.lock_audit_head().await.step("lock the head")?;
            let (events, _) = linked(from, vec![bare(10, 9), bare(11, 9)]);
            let appended = tx.append_audit_events(from, &events).await;
            if commit_anyway {
                // Refusing the commit is allowed (the append failed); writing anything is not.
                let _ = tx.commit().await;
            } else {
                tx.rollback().await.step("roll back the refused append")?;
            }
            ensure_conflict(&format!("an append from {what}"), appended, "audit_head")?;
            let after = if commit_anyway { "committed anyway" } else { "rolled back" };
            ensure_eq(
                &format!("the events after an append from {what}, {after}"),
                &events_after(store, 0, 10).await?,
                &stored,
            )?;
            ensure_eq(
                &format!("the head after an append from {what}, {after}"),
                &committed_head(store).await?,
                &head,
            )?;
            ensure_eq(
                &format!("the bounds after an append from {what}, {after}"),
                &committed_bounds(store).await?,
                &Some((1, 2, 2)),
            )?;
        }
    }

    let (third, last) = append(store, vec![bare(3, 2)]).await?;
    ensure_eq(
        "the events after a fresh append",
        &events_after(store, 0, 10).await?,
        &[stored, third].concat(),
    )?;
    ensure_eq("the head after a fresh append", &committed_head(store).await?, &last)
}

/// Eight writers append twenty events each, one per transaction (begin, lock the head, link, append,
/// commit), all at once. Every append succeeds, and the trail is one chain: seqs 1 to 160 without
/// gaps, each event linked to the one before and hashed over what is stored, every event once, each
/// writer's in the order it wrote them, and the head at the last. On PostgreSQL the head's row lock
/// is what orders the writers (without it, a writer that read a head another then moved would get a
/// conflict); on SQLite the single writer connection.
pub async fn two_transactions_appending_at_once_form_one_chain(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        append_one_at_a_time(store, 0),
        append_one_at_a_time(store, 1),
        append_one_at_a_time(store, 2),
        append_one_at_a_time(store, 3),
        append_one_at_a_time(store, 4),
        append_one_at_a_time(store, 5),
        append_one_at_a_time(store, 6),
        append_one_at_a_time(store, 7),
    );
    for result in [a, b, c, d, e, f, g, h] {
        result?;
    }

    let chain = events_after(store, 0, 1_000).await?;
    let total = i64::from(WRITERS) * i64::from(APPENDS_PER_WRITER);
    ensure_eq("the number of events", &(chain.len() as i64), &total)?;
    let mut prev = GENESIS_HASH;
    for (expected_seq, event) in (1..).zip(&chain) {
        ensure_eq("the next seq", &event.seq, &expected_seq)?;
        ensure(event.prev_hash == prev, || format!("event {} does not link to the one before", event.seq))?;
        ensure(event.hash == event_hash(&prev, event.seq, &event.record), || {
            format!("event {} is not hashed over what is stored", event.seq)
        })?;
        prev = event.hash;
    }
    for writer in 0..WRITERS {
        let own: Vec<&str> = chain
            .iter()
            .map(|e| e.record.id.as_str())
            .filter(|id| id.starts_with(&format!("race-{writer}-")))
            .collect();
        let expected: Vec<String> = (0..APPENDS_PER_WRITER).map(|n| race_id(writer, n)).collect();
        ensure_eq(
            &format!("writer {writer}'s events, in chain order"),
            &own,
            &expected.iter().map(String::as_str).collect(),
        )?;
    }
    ensure_eq(
        "the head after the race",
        &committed_head(store).await?,
        &ChainHead { seq: total, hash: prev },
    )?;
    ensure_eq("the bounds after the race", &committed_bounds(store).await?, &Some((1, total, total as u64)))
}

/// Ten events listed newest (highest seq) first, even where a later event carries an earlier time:
/// each filter alone and several together; the actor filter also finds events done on the actor's
/// behalf; an action prefix is compared literally (`user.` finds neither `user_x.created` nor
/// `users.listed`; `user_` and `user%` are not wildcards; case counts); `[since, until)` is half-open;
/// `limit` cuts from the newest, and `before_seq` pages on with neither repeats nor gaps.
pub async fn audit_listing_filters_and_pages_newest_first(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (written, _) = append(store, listing_fixture()).await?;
    ensure_eq("fixture: the seqs written", &seqs(&written), &(1..=10).collect())?;

    let text = |s: &str| Some(s.to_owned());
    let cases: Vec<(&str, AuditQuery, Vec<i64>)> = vec![
        ("every event", query(100), vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
        (
            "alice's, as actor or acted for",
            AuditQuery { actor_id: text("alice"), ..query(100) },
            vec![9, 6, 2, 1],
        ),
        ("bob's, as actor or acted for", AuditQuery { actor_id: text("bob"), ..query(100) }, vec![8, 7, 3]),
        ("the key's", AuditQuery { actor_id: text("key-1"), ..query(100) }, vec![2]),
        ("an actor without events", AuditQuery { actor_id: text("mallory"), ..query(100) }, vec![]),
        (
            "actions under user.",
            AuditQuery { action_prefix: text("user."), ..query(100) },
            vec![10, 8, 7, 5, 2, 1],
        ),
        (
            "actions under user_ (not a wildcard)",
            AuditQuery { action_prefix: text("user_"), ..query(100) },
            vec![3],
        ),
        (
            "actions under user% (not a wildcard)",
            AuditQuery { action_prefix: text("user%"), ..query(100) },
            vec![],
        ),
        (
            "actions under USER. (case counts)",
            AuditQuery { action_prefix: text("USER."), ..query(100) },
            vec![],
        ),
        (
            "actions under user.password.",
            AuditQuery { action_prefix: text("user.password."), ..query(100) },
            vec![8, 5, 2],
        ),
        (
            "a whole action name as the prefix",
            AuditQuery { action_prefix: text("session.revoked"), ..query(100) },
            vec![6, 4],
        ),
        (
            "a prefix longer than any action",
            AuditQuery { action_prefix: text("session.revoked.by.admin"), ..query(100) },
            vec![],
        ),
        ("sessions as targets", AuditQuery { target_type: text("session"), ..query(100) }, vec![6, 4]),
        ("bob as the target", AuditQuery { target_id: text("bob"), ..query(100) }, vec![8, 5, 1]),
        (
            "the user bob as the target",
            AuditQuery { target_type: text("user"), target_id: text("bob"), ..query(100) },
            vec![8, 5, 1],
        ),
        ("in org-b", AuditQuery { organization_id: text("org-b"), ..query(100) }, vec![7, 6, 3]),
        ("failures", AuditQuery { outcome: Some(Ending::Failure), ..query(100) }, vec![5]),
        ("denials", AuditQuery { outcome: Some(Ending::Denied), ..query(100) }, vec![10, 6]),
        ("successes", AuditQuery { outcome: Some(Ending::Success), ..query(100) }, vec![9, 8, 7, 4, 3, 2, 1]),
        ("since +45 (inclusive)", AuditQuery { since: Some(at(45)), ..query(100) }, vec![10, 9, 8, 7]),
        ("until +20 (exclusive)", AuditQuery { until: Some(at(20)), ..query(100) }, vec![2, 1]),
        (
            "[+20, +30): the two events of one millisecond",
            AuditQuery { since: Some(at(20)), until: Some(at(30)), ..query(100) },
            vec![4, 3],
        ),
        ("[+20, +20): empty", AuditQuery { since: Some(at(20)), until: Some(at(20)), ..query(100) }, vec![]),
        ("[+30, +20): empty", AuditQuery { since: Some(at(30)), until: Some(at(20)), ..query(100) }, vec![]),
        (
            "bob's user. actions on himself",
            AuditQuery {
                actor_id: text("bob"),
                action_prefix: text("user."),
                target_id: text("bob"),
                ..query(100)
            },
            vec![8],
        ),
        (
            "alice's successes in org-a in [+10, +60)",
            AuditQuery {
                actor_id: text("alice"),
                organization_id: text("org-a"),
                outcome: Some(Ending::Success),
                since: Some(at(10)),
                until: Some(at(60)),
                ..query(100)
            },
            vec![2],
        ),
        ("the newest three", query(3), vec![10, 9, 8]),
        ("three before seq 8", AuditQuery { before_seq: Some(8), ..query(3) }, vec![7, 6, 5]),
        ("before seq 1", AuditQuery { before_seq: Some(1), ..query(100) }, vec![]),
        (
            "user. actions before seq 8, two of them",
            AuditQuery { action_prefix: text("user."), before_seq: Some(8), ..query(2) },
            vec![7, 5],
        ),
        (
            "org-a's since +10 before seq 10",
            AuditQuery {
                organization_id: text("org-a"),
                since: Some(at(10)),
                before_seq: Some(10),
                ..query(100)
            },
            vec![8, 5, 2],
        ),
        ("a limit of 0", query(0), vec![]),
    ];
    for (what, query, expected) in cases {
        ensure_eq(what, &seqs(&list(store, &query).await?), &expected)?;
    }

    let everything = list(store, &query(100)).await?;
    let newest_first: Vec<AuditEvent> = written.iter().rev().cloned().collect();
    ensure_eq("the listed events, whole", &everything, &newest_first)?;
    for filter in [query(0), AuditQuery { action_prefix: text("user."), ..query(0) }] {
        let all = seqs(&list(store, &AuditQuery { limit: 100, ..filter.clone() }).await?);
        for limit in 1..=4 {
            let paged = every_page(store, &AuditQuery { limit, ..filter.clone() }).await?;
            ensure_eq(&format!("{filter:?}, read {limit} at a time"), &paged, &all)?;
        }
    }
    Ok(())
}

/// The events involving an id are those it acted in, was acted for in, or was the target of
/// (whatever the target's type), newest first; they combine with the other filters and page like
/// any listing. This is how a person's data export finds their events.
pub async fn the_events_involving_an_id_are_those_it_acted_in_was_acted_for_in_or_was_the_target_of(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    append(store, listing_fixture()).await?;
    let involving = |id: &str| AuditQuery { involving: Some(id.to_owned()), ..query(100) };
    let cases: Vec<(&str, AuditQuery, Vec<i64>)> = vec![
        ("alice: actor of 1, 6 and 9, acted for and target in 2", involving("alice"), vec![9, 6, 2, 1]),
        (
            "bob: actor of 3 and 8, acted for in 7, target of 1, 5 and 8",
            involving("bob"),
            vec![8, 7, 5, 3, 1],
        ),
        ("the key: actor of 2", involving("key-1"), vec![2]),
        ("a session: target of 4", involving("s1"), vec![4]),
        ("carol: only ever a target", involving("carol"), vec![7]),
        ("an id in no event", involving("mallory"), vec![]),
        (
            "bob's, under user.",
            AuditQuery { action_prefix: Some("user.".into()), ..involving("bob") },
            vec![8, 7, 5, 1],
        ),
        ("bob's, before seq 7", AuditQuery { before_seq: Some(7), ..involving("bob") }, vec![5, 3, 1]),
        ("bob's, the newest two", AuditQuery { limit: 2, ..involving("bob") }, vec![8, 7]),
    ];
    for (what, query, expected) in cases {
        ensure_eq(what, &seqs(&list(store, &query).await?), &expected)?;
    }
    for limit in 1..=3 {
        let paged = every_page(store, &AuditQuery { limit, ..involving("bob") }).await?;
        ensure_eq(&format!("bob's events read {limit} at a time"), &paged, &vec![8, 7, 5, 3, 1])?;
    }
    Ok(())
}

/// Checkpoints come back whole, one per seq: a second for a seq is a conflict on `audit_checkpoint`,
/// also when two nodes store one at once, and the first stays. They are found as the latest, after
/// a seq (up to a limit) and at a seq. Retention may cut at the largest checkpoint whose event (not
/// the checkpoint) is strictly older than the cut-off; a purge deletes the oldest events up to a seq
/// and a limit, leaving the head and the checkpoints; rows are counted by personal-data key.
pub async fn checkpoints_are_one_per_seq_and_found_by_seq_and_cut(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    // Event n at +100·n; every one but the fourth sealed, under pii-1 except the second.
    let records = (1..=6u8)
        .map(|n| {
            let key = match n {
                2 => Some("pii-2"),
                4 => None,
                _ => Some(PII_KEY),
            };
            AuditRecord {
                ip: key.map(|_| sealed("203.0.113.9").0),
                pii_key: key.map(str::to_owned),
                ..bare(n, i64::from(n) * 100)
            }
        })
        .collect();
    let (events, head) = append(store, records).await?;
    let (Some(second), Some(fifth)) = (events.get(1), events.get(4)) else {
        return Err(Failure("fixture: fewer than five events".into()));
    };
    // Made after their events, so a store that cut by the checkpoint's own time would cut elsewhere.
    let cp2 = checkpoint(second, 250, 1);
    let cp5 = checkpoint(fifth, 650, 2);

    let mut tx = store.begin_read().await.step("begin a read")?;
    ensure_eq(
        "the latest of no checkpoints",
        &tx.latest_audit_checkpoint().await.step("read the latest")?,
        &None,
    )?;
    ensure_eq("no checkpoints after 0", &tx.audit_checkpoints_after(0, 10).await.step("list")?, &Vec::new())?;
    ensure_eq("no checkpoint at 2", &tx.audit_checkpoint_at(2).await.step("read at 2")?, &None)?;
    ensure_eq("the cut without checkpoints", &tx.audit_purge_cut(at(1_000_000)).await.step("cut")?, &None)?;
    tx.commit().await.step("end the read")?;

    let mut tx = store.begin().await.step("begin a checkpoint")?;
    tx.insert_audit_checkpoint(&cp2).await.step("insert the checkpoint at 2")?;
    tx.commit().await.step("commit the checkpoint at 2")?;

    // Two nodes checkpoint seq 5 at once: the second waits for the first and then conflicts.
    let mut first = store.begin().await.step("begin the first node's checkpoint")?;
    first.insert_audit_checkpoint(&cp5).await.step("insert the first node's checkpoint at 5")?;
    let rival = AuditCheckpoint { key_id: "audit-2".into(), signature: signature(9), ..cp5.clone() };
    let second_node = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_audit_checkpoint(&rival).await;
        drop(tx);
        inserted
    };
    let (second_node, first_commit) = tokio::join!(second_node, first.commit());
    first_commit.step("commit the first node's checkpoint at 5")?;
    ensure_conflict("the second node's checkpoint at 5", second_node, "audit_checkpoint")?;

    let mut tx = store.begin().await.step("begin a duplicate checkpoint")?;
    let duplicate =
        AuditCheckpoint { at: at(900), key_id: "audit-2".into(), signature: signature(8), ..cp2.clone() };
    let inserted = tx.insert_audit_checkpoint(&duplicate).await;
    tx.rollback().await.step("roll back the duplicate")?;
    ensure_conflict("a second checkpoint at 2", inserted, "audit_checkpoint")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    ensure_eq(
        "the latest checkpoint",
        &tx.latest_audit_checkpoint().await.step("read the latest")?,
        &Some(cp5.clone()),
    )?;
    let both = vec![cp2.clone(), cp5.clone()];
    ensure_eq("the checkpoints after 0", &tx.audit_checkpoints_after(0, 10).await.step("list")?, &both)?;
    ensure_eq(
        "the first checkpoint after 0",
        &tx.audit_checkpoints_after(0, 1).await.step("list")?,
        &vec![cp2.clone()],
    )?;
    ensure_eq("the checkpoints after 1", &tx.audit_checkpoints_after(1, 10).await.step("list")?, &both)?;
    ensure_eq(
        "the checkpoints after 2",
        &tx.audit_checkpoints_after(2, 10).await.step("list")?,
        &vec![cp5.clone()],
    )?;
    ensure_eq(
        "the checkpoints after 5",
        &tx.audit_checkpoints_after(5, 10).await.step("list")?,
        &Vec::new(),
    )?;
    ensure_eq(
        "the checkpoint at 2",
        &tx.audit_checkpoint_at(2).await.step("read at 2")?,
        &Some(cp2.clone()),
    )?;
    ensure_eq(
        "the checkpoint at 5",
        &tx.audit_checkpoint_at(5).await.step("read at 5")?,
        &Some(cp5.clone()),
    )?;
    ensure_eq("no checkpoint at 3", &tx.audit_checkpoint_at(3).await.step("read at 3")?, &None)?;
    // Event 2 is at +200 and event 5 at +500; the checkpoints were made at +250 and +650.
    for (before, cut) in [(200, None), (201, Some(2)), (500, Some(2)), (501, Some(5)), (1_000_000, Some(5))] {
        ensure_eq(
            &format!("the cut before +{before}"),
            &tx.audit_purge_cut(at(before)).await.step("find the cut")?,
            &cut,
        )?;
    }
    ensure_eq("rows under pii-1", &tx.count_audit_rows_under(PII_KEY).await.step("count")?, &4)?;
    ensure_eq("rows under pii-2", &tx.count_audit_rows_under("pii-2").await.step("count")?, &1)?;
    ensure_eq("rows under an unused key", &tx.count_audit_rows_under("pii-3").await.step("count")?, &0)?;
    tx.commit().await.step("end the read")?;

    ensure_eq("purged through 0", &purge(store, 0, 10).await?, &0)?;
    ensure_eq("purged through 5, two at most", &purge(store, 5, 2).await?, &2)?;
    ensure_eq("the bounds after purging two", &committed_bounds(store).await?, &Some((3, 6, 4)))?;
    ensure_eq("the events after purging two", &events_after(store, 0, 10).await?, &part(&events, 2..6))?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    ensure_eq(
        "rows under pii-1 after purging two",
        &tx.count_audit_rows_under(PII_KEY).await.step("count")?,
        &3,
    )?;
    ensure_eq(
        "rows under pii-2 after purging two",
        &tx.count_audit_rows_under("pii-2").await.step("count")?,
        &0,
    )?;
    tx.commit().await.step("end the read")?;

    ensure_eq("purged through 5", &purge(store, 5, 10).await?, &3)?;
    ensure_eq("purged through 5 again", &purge(store, 5, 10).await?, &0)?;
    ensure_eq("the bounds after purging through 5", &committed_bounds(store).await?, &Some((6, 6, 1)))?;
    ensure_eq(
        "the events after purging through 5",
        &events_after(store, 0, 10).await?,
        &part(&events, 5..6),
    )?;
    ensure_eq("the head after purging", &committed_head(store).await?, &head)?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    ensure_eq(
        "rows under pii-1 after purging",
        &tx.count_audit_rows_under(PII_KEY).await.step("count")?,
        &1,
    )?;
    ensure_eq(
        "the checkpoints after purging",
        &tx.audit_checkpoints_after(0, 10).await.step("list")?,
        &both,
    )?;
    tx.commit().await.step("end the read")
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// How many writers race (listed one by one in the check's `tokio::join!`), and how many events
/// each appends.
const WRITERS: u8 = 8;
const APPENDS_PER_WRITER: u8 = 20;

/// JSON text with spacing no serializer would produce: stored and hashed as given, never re-encoded.
const UNUSUAL_DETAILS: &str = "{\"b\": 1,\"a\":2 ,  \"note\":\"z\u{fc}rich \\u00e9 \\\"q\\\" \u{1f6ab}\"}";

/// An event with every field set: an API key acting for an account, sealed client details, a
/// request id, a failure and [`UNUSUAL_DETAILS`].
fn full(n: u8) -> AuditRecord {
    AuditRecord {
        id: record_id(n),
        at: at(0),
        actor: Actor {
            kind: ActorKind::ApiKey,
            id: Some("key-1".into()),
            on_behalf_of: Some("alice".into()),
        },
        action: "user.password.changed".into(),
        target_type: Some("user".into()),
        target_id: Some("alice".into()),
        organization_id: Some("org-a".into()),
        ip: Some(sealed("2001:db8::7").0),
        user_agent: Some(sealed("Mozilla/5.0 (X11; Linux x86_64)").0),
        pii_key: Some(PII_KEY.into()),
        request_id: Some("req-1".into()),
        outcome: Ending::Failure,
        details: UNUSUAL_DETAILS.into(),
    }
}

/// A system event at `offset` with nothing optional set.
fn bare(n: u8, offset: i64) -> AuditRecord {
    AuditRecord {
        id: record_id(n),
        at: at(offset),
        actor: Actor::system(),
        action: "audit.checkpoint.created".into(),
        target_type: None,
        target_id: None,
        organization_id: None,
        ip: None,
        user_agent: None,
        pii_key: None,
        request_id: None,
        outcome: Ending::Success,
        details: "{}".into(),
    }
}

/// An event whose optional fields are present but empty: the encoding tells them from absent ones,
/// so a store that returned `None` for them would break the chain.
fn empty_but_present(n: u8) -> AuditRecord {
    AuditRecord {
        actor: Actor {
            kind: ActorKind::Application,
            id: Some("svc-1".into()),
            on_behalf_of: Some(String::new()),
        },
        action: "app.invoice_2.paid".into(),
        target_type: Some(String::new()),
        target_id: Some(String::new()),
        organization_id: Some(String::new()),
        ip: Some(Vec::new()),
        user_agent: Some(Vec::new()),
        pii_key: Some(String::new()),
        request_id: Some(String::new()),
        outcome: Ending::Denied,
        details: "[]".into(),
        ..bare(n, 10)
    }
}

fn record_id(n: u8) -> String {
    format!("0b5e1c3a-9f0e-4d2c-8a7b-{n:012}")
}

fn race_id(writer: u8, n: u8) -> String {
    format!("race-{writer}-{n:02}")
}

/// The events the listing check filters, appended in this order (seq 1 to 10). Event 8 is older than
/// event 7 (a node whose clock is behind); events 3 and 4 share a millisecond.
fn listing_fixture() -> Vec<AuditRecord> {
    let actor = |kind, id: Option<&str>, on_behalf_of: Option<&str>| Actor {
        kind,
        id: id.map(str::to_owned),
        on_behalf_of: on_behalf_of.map(str::to_owned),
    };
    let rows = [
        (
            0,
            actor(ActorKind::User, Some("alice"), None),
            "user.created",
            Some(("user", "bob")),
            Some("org-a"),
            Ending::Success,
        ),
        (
            10,
            actor(ActorKind::ApiKey, Some("key-1"), Some("alice")),
            "user.password.changed",
            Some(("user", "alice")),
            Some("org-a"),
            Ending::Success,
        ),
        (
            20,
            actor(ActorKind::User, Some("bob"), None),
            "user_x.created",
            Some(("user_x", "x1")),
            Some("org-b"),
            Ending::Success,
        ),
        (20, Actor::system(), "session.revoked", Some(("session", "s1")), None, Ending::Success),
        (
            30,
            Actor::anonymous(),
            "user.password.changed",
            Some(("user", "bob")),
            Some("org-a"),
            Ending::Failure,
        ),
        (
            40,
            actor(ActorKind::User, Some("alice"), None),
            "session.revoked",
            Some(("session", "s2")),
            Some("org-b"),
            Ending::Denied,
        ),
        (
            50,
            actor(ActorKind::Application, Some("svc-1"), Some("bob")),
            "user.created",
            Some(("user", "carol")),
            Some("org-b"),
            Ending::Success,
        ),
        (
            45,
            actor(ActorKind::User, Some("bob"), None),
            "user.password.changed",
            Some(("user", "bob")),
            Some("org-a"),
            Ending::Success,
        ),
        (60, actor(ActorKind::User, Some("alice"), None), "users.listed", None, None, Ending::Success),
        (
            70,
            actor(ActorKind::ServiceAccount, Some("svc-1"), None),
            "user.created",
            Some(("user", "dave")),
            Some("org-a"),
            Ending::Denied,
        ),
    ];
    (1..)
        .zip(rows)
        .map(|(n, (offset, actor, action, target, organization, outcome))| AuditRecord {
            actor,
            action: action.into(),
            target_type: target.map(|(kind, _)| kind.to_owned()),
            target_id: target.map(|(_, id)| id.to_owned()),
            organization_id: organization.map(str::to_owned),
            outcome,
            ..bare(n, offset)
        })
        .collect()
}

/// A checkpoint of `event`, made `made` milliseconds after [`at`]'s base.
fn checkpoint(event: &AuditEvent, made: i64, seed: u8) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: event.seq,
        hash: event.hash,
        at: at(made),
        key_id: "audit-1".into(),
        signature: signature(seed),
    }
}

/// Sixty-four signature bytes, with a NUL, a high byte and a byte that is not UTF-8 among them.
fn signature(seed: u8) -> Vec<u8> {
    [&[0x00, 0xff, 0x80][..], &[seed; 61][..]].concat()
}

fn query(limit: u32) -> AuditQuery {
    AuditQuery { limit, ..AuditQuery::default() }
}

fn seqs(events: &[AuditEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// The events in `range`, or none if the range is out of bounds (which fails the comparison).
fn part(events: &[AuditEvent], range: std::ops::Range<usize>) -> Vec<AuditEvent> {
    events.get(range).map(<[AuditEvent]>::to_vec).unwrap_or_default()
}

/// Links the records one after another from `from`: the events and the head after the last.
fn linked(from: ChainHead, records: Vec<AuditRecord>) -> (Vec<AuditEvent>, ChainHead) {
    let mut head = from;
    let events = records
        .into_iter()
        .map(|record| {
            let (event, next) = head.link(record);
            head = next;
            event
        })
        .collect();
    (events, head)
}

/// Appends the records at the head in one transaction of their own, as the audit writer does.
async fn append(
    store: &dyn Store,
    records: Vec<AuditRecord>,
) -> Result<(Vec<AuditEvent>, ChainHead), Failure> {
    let mut tx = store.begin().await.step("begin an append")?;
    let from = tx.lock_audit_head().await.step("lock the head")?;
    let (events, head) = linked(from, records);
    tx.append_audit_events(from, &events).await.step("append the events")?;
    tx.commit().await.step("commit the events")?;
    Ok((events, head))
}

/// One racing writer: its events one transaction each, times falling back and forth.
async fn append_one_at_a_time(store: &dyn Store, writer: u8) -> Outcome {
    for n in 0..APPENDS_PER_WRITER {
        let record = AuditRecord {
            id: race_id(writer, n),
            actor: Actor { kind: ActorKind::User, id: Some(format!("writer-{writer}")), on_behalf_of: None },
            details: format!("{{\"n\":{n}}}"),
            ..bare(n, i64::from(n % 3))
        };
        let mut tx = store.begin().await.step(&format!("writer {writer}: begin append {n}"))?;
        let from =
            tx.lock_audit_head().await.step(&format!("writer {writer}: lock the head for append {n}"))?;
        let (event, _) = from.link(record);
        tx.append_audit_events(from, slice::from_ref(&event))
            .await
            .step(&format!("writer {writer}: append {n} after seq {}", from.seq))?;
        tx.commit().await.step(&format!("writer {writer}: commit append {n}"))?;
    }
    Ok(())
}

/// Purges in a transaction of its own; how many events went.
async fn purge(store: &dyn Store, through_seq: i64, limit: u32) -> Result<u64, Failure> {
    let mut tx = store.begin().await.step("begin a purge")?;
    let purged = tx.purge_audit_events(through_seq, limit).await.step("purge events")?;
    tx.commit().await.step("commit the purge")?;
    Ok(purged)
}

/// Up to `limit` events after `after_seq`, read in a transaction of its own.
async fn events_after(store: &dyn Store, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, Failure> {
    let mut tx = store.begin_read().await.step("begin a read")?;
    let events = tx.audit_events_after(after_seq, limit).await.step("read events after a seq")?;
    tx.commit().await.step("end the read")?;
    Ok(events)
}

/// The head as a new read transaction sees it.
async fn committed_head(store: &dyn Store) -> Result<ChainHead, Failure> {
    let mut tx = store.begin_read().await.step("begin a read")?;
    let head = tx.read_audit_head().await.step("read the head")?;
    tx.commit().await.step("end the read")?;
    Ok(head)
}

/// The bounds as a new read transaction sees them.
async fn committed_bounds(store: &dyn Store) -> Result<Option<(i64, i64, u64)>, Failure> {
    let mut tx = store.begin_read().await.step("begin a read")?;
    let bounds = tx.audit_bounds().await.step("read the bounds")?;
    tx.commit().await.step("end the read")?;
    Ok(bounds)
}

/// One listing, read in a transaction of its own.
async fn list(store: &dyn Store, query: &AuditQuery) -> Result<Vec<AuditEvent>, Failure> {
    let mut tx = store.begin_read().await.step("begin a read")?;
    let events = tx.list_audit_events(query).await.step("list audit events")?;
    tx.commit().await.step("end the read")?;
    Ok(events)
}

/// Every page of `query`, each starting before the last seq of the one before, until a short page;
/// refuses to follow more pages than there could be.
async fn every_page(store: &dyn Store, query: &AuditQuery) -> Result<Vec<i64>, Failure> {
    let mut found = Vec::new();
    let mut before_seq = None;
    for _ in 0..=64 {
        let page = seqs(&list(store, &AuditQuery { before_seq, ..query.clone() }).await?);
        ensure(page.len() <= query.limit as usize, || {
            format!("a page of {} holds {}", query.limit, page.len())
        })?;
        let done = page.len() < query.limit as usize;
        before_seq = page.last().copied();
        found.extend(page);
        if done || before_seq.is_none() {
            return Ok(found);
        }
    }
    Err(Failure(format!("more than 64 pages of {}", query.limit)))
}
