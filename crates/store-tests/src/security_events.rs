//! The contract of the security-event listing (`SecurityEventStore::list_security_events`): the
//! newest-first order `(at DESC, seq DESC)`, every filter alone and together, keyset pages that
//! neither repeat nor skip an event (several in one millisecond included, and while new events are
//! recorded), and events that come back whole.
//!
//! Within one millisecond the order is the order of recording (seq), never the order of ids: the
//! fixtures give events recorded later smaller ids, so an engine that breaks ties by id fails here.

use std::collections::BTreeMap;

use portcullis_domain::{SecurityEventId, SecurityEventKind};
use portcullis_store::{
    SecurityEventCursor, SecurityEventPage, SecurityEventQuery, Store, StoredSecurityEvent,
};

use super::{Failure, Outcome, PII_KEY, Step, at, ensure_eq, event, migrated, sealed, session_id, user_id};

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Every event, newest first, read one page at a time at several page sizes: each event exactly once
/// and in order, five recorded in one millisecond included; every page but the last says where the
/// next starts, the last (even one that is exactly full) says nothing follows, and a page of 0 is
/// empty.
pub async fn security_events_are_listed_newest_first_a_page_at_a_time_without_repeats_or_gaps(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let recorded = timeline();
    write_events(store, &recorded).await?;
    let newest_first = ids(&expected_order(&recorded));

    let everything = list(store, &query(100)).await?;
    ensure_eq("every event, newest first", &ids(&everything.events), &newest_first)?;
    ensure_eq("the cursor after a page that holds everything", &everything.next, &None)?;
    for limit in [1, 2, 3, 4, 5, 6, 11, 12, 13] {
        let (events, pages) = every_page(store, &query(limit)).await?;
        ensure_eq(&format!("the events read {limit} at a time"), &ids(&events), &newest_first)?;
        ensure_eq(
            &format!("the number of pages of {limit}"),
            &pages,
            &recorded.len().div_ceil(limit as usize),
        )?;
    }
    let empty = list(store, &query(0)).await?;
    ensure_eq("a page of 0", &empty, &SecurityEventPage { events: Vec::new(), next: None })
}

/// A cursor is a position, not an event: it names the last event of its page (its time and seq), a
/// page after it starts with the next older event, and a position made up between two events (the
/// largest seq of a millisecond) starts with the newest event of that millisecond.
pub async fn a_security_event_cursor_is_the_position_of_the_last_event_of_its_page(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let recorded = timeline();
    write_events(store, &recorded).await?;
    let newest_first = expected_order(&recorded);

    let first = list(store, &query(2)).await?;
    let Some(next) = first.next else { return Err(Failure("a page of 2 of 12 events has no next".into())) };
    ensure_eq("the cursor's time", &next.at, &newest_first[1].event.at)?;
    let second = list(store, &SecurityEventQuery { after: Some(next), ..query(1) }).await?;
    ensure_eq("the page after the cursor", &ids(&second.events), &ids(&newest_first[2..3]))?;

    // Between the events at +5 and those at +4: everything at +4 and before.
    let between = SecurityEventCursor { at: at(5), seq: 0 };
    let from_four = list(store, &SecurityEventQuery { after: Some(between), ..query(100) }).await?;
    let expected: Vec<_> = newest_first.iter().filter(|e| e.event.at < at(5)).cloned().collect();
    ensure_eq("the events after (+5, seq 0)", &ids(&from_four.events), &ids(&expected))?;
    let at_most_five = SecurityEventCursor { at: at(5), seq: i64::MAX };
    let from_five = list(store, &SecurityEventQuery { after: Some(at_most_five), ..query(100) }).await?;
    let expected: Vec<_> = newest_first.iter().filter(|e| e.event.at <= at(5)).cloned().collect();
    ensure_eq("the events after (+5, the largest seq)", &ids(&from_five.events), &ids(&expected))?;
    let before_everything = SecurityEventCursor { at: at(-1), seq: i64::MAX };
    let none = list(store, &SecurityEventQuery { after: Some(before_everything), ..query(100) }).await?;
    ensure_eq("the events after the oldest", &none, &SecurityEventPage { events: Vec::new(), next: None })
}

/// Each filter alone and all together: a set of kinds (repeats change nothing, an empty set is every
/// kind), one account (events of nobody and of others left out), and the half-open interval `[since,
/// until)`, in which an event at `since` is in, one at `until` out, and `since == until` is empty.
pub async fn security_events_are_filtered_by_kinds_account_and_half_open_time_range(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let recorded = timeline();
    write_events(store, &recorded).await?;
    let newest_first = expected_order(&recorded);
    let alice = user_id(1);
    let matching = |keep: &dyn Fn(&StoredSecurityEvent) -> bool| -> Vec<SecurityEventId> {
        newest_first.iter().filter(|e| keep(e)).map(|e| e.event.id).collect()
    };
    let cases: Vec<(&str, SecurityEventQuery, Vec<SecurityEventId>)> = vec![
        (
            "one kind",
            SecurityEventQuery { kinds: vec![SecurityEventKind::CsrfRejected], ..query(100) },
            matching(&|e| e.event.kind == SecurityEventKind::CsrfRejected),
        ),
        (
            "two kinds, one of them twice",
            SecurityEventQuery {
                kinds: vec![
                    SecurityEventKind::RateLimited,
                    SecurityEventKind::LoginFailed,
                    SecurityEventKind::RateLimited,
                ],
                ..query(100)
            },
            matching(&|e| {
                matches!(e.event.kind, SecurityEventKind::RateLimited | SecurityEventKind::LoginFailed)
            }),
        ),
        (
            "a kind nobody recorded",
            SecurityEventQuery { kinds: vec![SecurityEventKind::AlertDeliveryFailed], ..query(100) },
            Vec::new(),
        ),
        (
            "every kind",
            SecurityEventQuery { kinds: SecurityEventKind::ALL.to_vec(), ..query(100) },
            matching(&|_| true),
        ),
        (
            "alice's",
            SecurityEventQuery { user_id: Some(alice), ..query(100) },
            matching(&|e| e.event.user_id == Some(alice)),
        ),
        (
            "an account without events",
            SecurityEventQuery { user_id: Some(user_id(9)), ..query(100) },
            Vec::new(),
        ),
        (
            "since +4 (inclusive)",
            SecurityEventQuery { since: Some(at(4)), ..query(100) },
            matching(&|e| e.event.at >= at(4)),
        ),
        (
            "until +4 (exclusive)",
            SecurityEventQuery { until: Some(at(4)), ..query(100) },
            matching(&|e| e.event.at < at(4)),
        ),
        (
            "[+4, +5): the one crowded millisecond",
            SecurityEventQuery { since: Some(at(4)), until: Some(at(5)), ..query(100) },
            matching(&|e| e.event.at == at(4)),
        ),
        (
            "[+4, +4): empty",
            SecurityEventQuery { since: Some(at(4)), until: Some(at(4)), ..query(100) },
            Vec::new(),
        ),
        (
            "[+5, +4): empty",
            SecurityEventQuery { since: Some(at(5)), until: Some(at(4)), ..query(100) },
            Vec::new(),
        ),
        (
            "alice's login failures in [+1, +9)",
            SecurityEventQuery {
                kinds: vec![SecurityEventKind::LoginFailed],
                user_id: Some(alice),
                since: Some(at(1)),
                until: Some(at(9)),
                ..query(100)
            },
            matching(&|e| {
                e.event.kind == SecurityEventKind::LoginFailed
                    && e.event.user_id == Some(alice)
                    && e.event.at >= at(1)
                    && e.event.at < at(9)
            }),
        ),
    ];
    // How many each case matches, counted by hand from the timeline, so the oracle above cannot
    // quietly match nothing.
    let counts = [2, 9, 0, 12, 8, 0, 8, 4, 5, 0, 0, 4];
    ensure_eq("the number of cases", &cases.len(), &counts.len())?;
    for ((what, query, expected), count) in cases.into_iter().zip(counts) {
        ensure_eq(&format!("fixture: the events {what}"), &expected.len(), &count)?;
        let found = list(store, &query).await?;
        ensure_eq(what, &ids(&found.events), &expected)?;
        ensure_eq(&format!("{what}: the cursor"), &found.next, &None)?;
    }
    Ok(())
}

/// Filters hold across pages, and pages continue where they stopped while events are recorded:
/// alice's events in `[+2, +9)`, one per page. After the first page she fails twice more, at +8
/// (before the cursor: left for a new listing) and at +4 (behind it: listed in its place, as the
/// newest of its millisecond); once the cursor is inside +4, twice more, at +4 (recorded after the
/// events there, so before the cursor) and at +2 (behind it: listed last). No page repeats an event.
pub async fn filtered_pages_continue_where_they_stopped_while_new_events_are_recorded(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    write_events(store, &timeline()).await?;
    let alice = Some(user_id(1));
    let filtered = SecurityEventQuery { user_id: alice, since: Some(at(2)), until: Some(at(9)), ..query(1) };
    let late = [
        event(201, SecurityEventKind::LoginFailed, alice, 8),
        event(202, SecurityEventKind::LoginFailed, alice, 4),
        event(203, SecurityEventKind::LoginFailed, alice, 4),
        event(204, SecurityEventKind::LoginFailed, alice, 2),
    ];

    let mut seen = Vec::new();
    let mut after = None;
    for page_number in 1..=20 {
        let page = list(store, &SecurityEventQuery { after, ..filtered.clone() }).await?;
        seen.extend(ids(&page.events));
        match page_number {
            1 => write_events(store, &late[..2]).await?,
            4 => write_events(store, &late[2..]).await?,
            _ => {}
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<SecurityEventId> = [64, 65, 202, 56, 58, 59, 204]
        .into_iter()
        .map(|seed| SecurityEventId::from_random_bytes([seed; 16]))
        .collect();
    ensure_eq("alice's events in [+2, +9), one page at a time", &seen, &expected)
}

/// Every field of a listed event comes back as written: the kind, the account and session, the
/// sealed ip byte for byte with its key, and the details (none, several, non-ASCII, near the size
/// limit), the same as the per-account read gives them.
pub async fn a_listed_security_event_comes_back_whole_with_its_details(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut full = StoredSecurityEvent {
        ip: Some(sealed("2001:db8::7")),
        pii_key: Some(PII_KEY.to_owned()),
        ..event(1, SecurityEventKind::ApiKeyOutsideAllowedNetworks, Some(user_id(1)), 3)
    };
    full.event.session_id = Some(session_id(4));
    full.event.details = details(&[
        ("network", "198.51.100.0/24"),
        ("rule", "0b5e1c3a-9f0e-4d2c-8a7b-6c5d4e3f2a1b"),
        ("note", "zürich — ≠ \"quoted\" \\ {json} 🚫"),
        ("empty", ""),
    ]);
    let mut bare = event(2, SecurityEventKind::Scanning, None, 2);
    bare.event.details = BTreeMap::new();
    let mut large = event(3, SecurityEventKind::CredentialStuffing, None, 1);
    large.event.details = (0..16).map(|n| (format!("key{n:02}"), "v".repeat(120))).collect();
    write_events(store, &[full.clone(), bare.clone(), large.clone()]).await?;

    let listed = list(store, &query(10)).await?;
    ensure_eq("the listed events", &listed.events, &vec![full.clone(), bare, large])?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_user = tx.security_events_of(user_id(1), 10).await.step("read the account's events")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("the account's events", &of_user, &vec![full])
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Twelve events over nine milliseconds, recorded in this order: five at +4 (with ids that fall as
/// they are recorded), several kinds, alice's, bob's and nobody's, and one recorded after newer
/// ones (a node whose clock is behind).
fn timeline() -> Vec<StoredSecurityEvent> {
    let (alice, bob) = (Some(user_id(1)), Some(user_id(2)));
    vec![
        event(60, SecurityEventKind::LoginFailed, alice, 1),
        event(61, SecurityEventKind::RateLimited, None, 2),
        event(62, SecurityEventKind::LoginFailed, bob, 3),
        event(59, SecurityEventKind::LoginFailed, alice, 4),
        event(58, SecurityEventKind::CsrfRejected, alice, 4),
        event(57, SecurityEventKind::RateLimited, None, 4),
        event(56, SecurityEventKind::LoginFailed, alice, 4),
        event(55, SecurityEventKind::LoginFailed, bob, 4),
        event(63, SecurityEventKind::AccountLockedOut, alice, 9),
        event(64, SecurityEventKind::LoginFailed, alice, 7),
        // Recorded last, but older than the three before it.
        event(65, SecurityEventKind::CsrfRejected, alice, 5),
        event(66, SecurityEventKind::LoginFailed, alice, 0),
    ]
}

/// The events newest first: by time, then by the order of recording, the later first.
fn expected_order(recorded: &[StoredSecurityEvent]) -> Vec<StoredSecurityEvent> {
    let mut ordered: Vec<(usize, &StoredSecurityEvent)> = recorded.iter().enumerate().collect();
    ordered.sort_by(|(a_seq, a), (b_seq, b)| b.event.at.cmp(&a.event.at).then(b_seq.cmp(a_seq)));
    ordered.into_iter().map(|(_, e)| e.clone()).collect()
}

fn query(limit: u32) -> SecurityEventQuery {
    SecurityEventQuery { limit, ..SecurityEventQuery::default() }
}

fn ids(events: &[StoredSecurityEvent]) -> Vec<SecurityEventId> {
    events.iter().map(|e| e.event.id).collect()
}

fn details(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Records the events in one transaction, in order.
async fn write_events(store: &dyn Store, events: &[StoredSecurityEvent]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for e in events {
        tx.insert_security_event(e).await.step("insert a security event")?;
    }
    tx.commit().await.step("commit the security events")
}

/// One page, read in a transaction of its own.
async fn list(store: &dyn Store, query: &SecurityEventQuery) -> Result<SecurityEventPage, Failure> {
    let mut tx = store.begin_read().await.step("begin a read")?;
    let page = tx.list_security_events(query).await.step("list security events")?;
    tx.commit().await.step("end the read")?;
    Ok(page)
}

/// Every page of `query` from the start, following `next`; the events and the number of pages.
/// Refuses to follow more pages than there could be, so a cursor that never ends fails the check.
async fn every_page(
    store: &dyn Store,
    query: &SecurityEventQuery,
) -> Result<(Vec<StoredSecurityEvent>, usize), Failure> {
    let mut events = Vec::new();
    let mut after = None;
    for pages in 1..=64 {
        let page = list(store, &SecurityEventQuery { after, ..query.clone() }).await?;
        let empty = page.events.is_empty();
        events.extend(page.events);
        match page.next {
            Some(next) if !empty => after = Some(next),
            Some(_) => return Err(Failure("an empty page names a next page".into())),
            None => return Ok((events, pages)),
        }
    }
    Err(Failure(format!("more than 64 pages of {} events", query.limit)))
}
