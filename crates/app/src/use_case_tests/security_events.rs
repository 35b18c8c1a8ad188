//! Use-case tests of the security-event reader: who may read (`security:read` system-wide, by login
//! or by an API key scoped to it), what an event carries (the ip opened, the severity, the details),
//! the filters and pages, and every malformed filter refused with a 422 naming it, without echoing it.

use std::collections::BTreeMap;

use portcullis_domain::{BuiltinRole, Severity};
use secrecy::ExposeSecret;

use super::admin::{ADMIN, forbidden, principal, tenants};
use super::*;
use crate::{AdminSecurityEvent, Clock, NewApiKey, SecurityEventFilter, SecurityEventList};

const AUDITOR: &str = "auditor@example.com";

/// An app with an owner, an admin, an auditor and a member, each logged in.
struct Readers {
    t: TestApp,
    owner: Principal,
    admin: Principal,
    auditor: Principal,
    alice: Principal,
}

async fn readers() -> Readers {
    let t = testing::app().await;
    for (email, role) in [
        (OWNER, BuiltinRole::Owner),
        (ADMIN, BuiltinRole::Admin),
        (AUDITOR, BuiltinRole::Auditor),
        (ALICE, BuiltinRole::Member),
    ] {
        t.app.create_user_as_operator(email, None, secret(PASSWORD), role).await.unwrap();
    }
    let owner = principal(&t.app, OWNER).await;
    let admin = principal(&t.app, ADMIN).await;
    let auditor = principal(&t.app, AUDITOR).await;
    let alice = principal(&t.app, ALICE).await;
    Readers { t, owner, admin, auditor, alice }
}

/// Records an event at the clock's time and moves the clock on by `then_millis`.
async fn record(
    t: &TestApp,
    kind: SecurityEventKind,
    user: Option<UserId>,
    ip: Option<&str>,
    details: &[(&str, &str)],
    then_millis: i64,
) {
    let details: BTreeMap<String, String> =
        details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    t.app.record_security_event_with(kind, user, None, ip, details).await.unwrap();
    t.clock.advance_millis(then_millis);
}

async fn list(app: &App, who: &Principal, filter: &SecurityEventFilter<'_>) -> SecurityEventList {
    app.admin_list_security_events(who, filter).await.unwrap()
}

fn kinds(events: &[AdminSecurityEvent]) -> Vec<SecurityEventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// The fields a validation error names.
fn invalid_fields<T: std::fmt::Debug>(result: Result<T, AppError>) -> Vec<String> {
    match result {
        Err(AppError::Validation(issues)) => issues.into_iter().map(|i| i.field.into_owned()).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn rfc3339(millis: i64) -> String {
    Timestamp::from_unix_millis(millis).to_rfc3339()
}

#[tokio::test]
async fn security_events_need_security_read_system_wide_whoever_asks() {
    let r = readers().await;
    let everything = SecurityEventFilter::default();
    for reader in [&r.owner, &r.admin, &r.auditor] {
        r.t.app.admin_list_security_events(reader, &everything).await.unwrap();
    }
    forbidden(r.t.app.admin_list_security_events(&r.alice, &everything).await);
    // Not even about herself: the events are the installation's, not a self-service record.
    let own = SecurityEventFilter { user_id: Some(&r.alice.user_id.to_string()), ..everything.clone() };
    forbidden(r.t.app.admin_list_security_events(&r.alice, &own).await);

    // An API key reads them only when one of its scopes grants security:read.
    let key = |scopes: &[&str]| NewApiKey {
        name: "siem".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 30,
        allowed_cidrs: Vec::new(),
    };
    let narrow = r.t.app.create_my_api_key(&r.admin, &key(&["users:read"])).await.unwrap();
    let siem = r.t.app.create_my_api_key(&r.admin, &key(&["security:read"])).await.unwrap();
    let narrow = r.t.app.authenticate_api_key(narrow.secret.expose_secret(), &client()).await.unwrap();
    let siem = r.t.app.authenticate_api_key(siem.secret.expose_secret(), &client()).await.unwrap();
    forbidden(r.t.app.admin_list_security_events(&narrow, &everything).await);
    r.t.app.admin_list_security_events(&siem, &everything).await.unwrap();
}

#[tokio::test]
async fn an_organizations_administrator_without_the_system_wide_permission_is_refused() {
    let (t, owner, _, _, org_admin, alice) = tenants().await;
    record(&t, SecurityEventKind::LoginFailed, Some(alice), Some("198.51.100.4"), &[], 1).await;
    let about_alice = alice.to_string();
    for filter in [
        SecurityEventFilter::default(),
        SecurityEventFilter { user_id: Some(&about_alice), ..SecurityEventFilter::default() },
    ] {
        forbidden(t.app.admin_list_security_events(&org_admin, &filter).await);
    }
    assert_eq!(list(&t.app, &owner, &SecurityEventFilter::default()).await.events.len(), 1);
}

#[tokio::test]
async fn a_listed_event_carries_its_opened_ip_severity_account_and_details() {
    let r = readers().await;
    let alice = r.alice.user_id;
    let before = r.t.clock.now();
    // A real failed login records its client's address sealed; the reader opens it.
    let refused = r.t.app.login(ALICE, secret("not her password at all"), LoginMode::Bearer, &client()).await;
    assert!(matches!(refused, Err(AppError::InvalidCredentials)), "{refused:?}");
    r.t.clock.advance_millis(5);
    record(
        &r.t,
        SecurityEventKind::CredentialStuffing,
        None,
        Some("2001:db8::42"),
        &[("accounts", "37"), ("window", "60s")],
        0,
    )
    .await;

    let page = list(&r.t.app, &r.auditor, &SecurityEventFilter::default()).await;
    // Logging in the readers recorded nothing; these two are all there is.
    assert_eq!(kinds(&page.events), [SecurityEventKind::CredentialStuffing, SecurityEventKind::LoginFailed]);
    let (stuffing, failure) = (&page.events[0], &page.events[1]);
    assert_eq!(stuffing.ip.as_deref(), Some("2001:db8::42"));
    assert_eq!(stuffing.severity, Severity::High);
    assert_eq!(stuffing.user_id, None);
    assert_eq!(stuffing.at, before.plus_millis(5));
    assert_eq!(stuffing.details.get("accounts").map(String::as_str), Some("37"));
    assert_eq!(stuffing.details.len(), 2);
    assert_eq!(failure.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(failure.severity, Severity::Low);
    assert_eq!(failure.user_id, Some(alice));
    assert_eq!(failure.at, before);
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn filters_combine_and_pages_follow_the_cursor_through_one_millisecond_without_repeats() {
    let r = readers().await;
    let (alice, admin) = (Some(r.alice.user_id), Some(r.admin.user_id));
    let start = r.t.clock.now().as_unix_millis();
    // +0: alice fails; +10: a rate limit; +20: five events in one millisecond; +30: admin fails.
    record(&r.t, SecurityEventKind::LoginFailed, alice, Some("203.0.113.1"), &[], 10).await;
    record(&r.t, SecurityEventKind::RateLimited, None, Some("203.0.113.2"), &[("count", "12")], 10).await;
    for n in 0..5 {
        let kind = if n % 2 == 0 { SecurityEventKind::LoginFailed } else { SecurityEventKind::CsrfRejected };
        record(&r.t, kind, alice, Some("203.0.113.3"), &[("n", &n.to_string())], 0).await;
    }
    r.t.clock.advance_millis(10);
    record(&r.t, SecurityEventKind::LoginFailed, admin, None, &[], 0).await;

    // Everything, two at a time: each event once, newest first, the crowded millisecond in reverse
    // order of recording.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let filter = SecurityEventFilter { after: after.as_deref(), limit: Some(2), ..Default::default() };
        let page = list(&r.t.app, &r.owner, &filter).await;
        assert!(page.events.len() <= 2);
        seen.extend(page.events);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let ns: Vec<Option<&str>> = seen.iter().map(|e| e.details.get("n").map(String::as_str)).collect();
    assert_eq!(&ns[1..6], [Some("4"), Some("3"), Some("2"), Some("1"), Some("0")]);
    assert_eq!(seen.first().and_then(|e| e.user_id), admin);
    assert_eq!(seen.last().and_then(|e| e.user_id), alice);

    // Alice's login failures in [+10, +30): the three in the crowded millisecond.
    let (since, until) = (rfc3339(start + 10), rfc3339(start + 30));
    let alice_id = r.alice.user_id.to_string();
    let filter = SecurityEventFilter {
        kinds: vec!["login_failed"],
        user_id: Some(&alice_id),
        since: Some(&since),
        until: Some(&until),
        ..Default::default()
    };
    let page = list(&r.t.app, &r.auditor, &filter).await;
    let ns: Vec<Option<&str>> = page.events.iter().map(|e| e.details.get("n").map(String::as_str)).collect();
    assert_eq!(ns, [Some("4"), Some("2"), Some("0")]);
    // Two kinds, one of them twice, and `since` inclusive: the rate limit at +10 is in.
    let filter = SecurityEventFilter {
        kinds: vec!["rate_limited", "csrf_rejected", "rate_limited"],
        since: Some(&since),
        ..Default::default()
    };
    let page = list(&r.t.app, &r.auditor, &filter).await;
    assert_eq!(
        kinds(&page.events),
        [SecurityEventKind::CsrfRejected, SecurityEventKind::CsrfRejected, SecurityEventKind::RateLimited]
    );
    // `until` exclusive: nothing before the first event; an empty window is empty, not an error.
    let first = rfc3339(start);
    let filter = SecurityEventFilter { until: Some(&first), ..Default::default() };
    assert!(list(&r.t.app, &r.auditor, &filter).await.events.is_empty());
    let filter = SecurityEventFilter { since: Some(&first), until: Some(&first), ..Default::default() };
    assert!(list(&r.t.app, &r.auditor, &filter).await.events.is_empty());
    // An account nobody has, or one that is gone, has no events (no 404: events outlive accounts).
    let nobody =
        SecurityEventFilter { user_id: Some("00000000-0000-4000-8000-000000000000"), ..Default::default() };
    assert!(list(&r.t.app, &r.auditor, &nobody).await.events.is_empty());
}

#[tokio::test]
async fn malformed_filters_are_refused_naming_each_field_without_echoing_it() {
    let r = readers().await;
    let app = &r.t.app;
    let canary = "kind-canary-7f3a";
    let (upper_hex, too_long) = ("F".repeat(32), "0".repeat(33));
    let cases: Vec<(SecurityEventFilter<'_>, &str)> = vec![
        (SecurityEventFilter { kinds: vec![canary], ..Default::default() }, "/kind"),
        (SecurityEventFilter { kinds: vec!["login_failed", ""], ..Default::default() }, "/kind"),
        (SecurityEventFilter { kinds: vec!["LOGIN_FAILED"], ..Default::default() }, "/kind"),
        (SecurityEventFilter { user_id: Some("alice"), ..Default::default() }, "/user_id"),
        (SecurityEventFilter { user_id: Some("' OR 1=1 --"), ..Default::default() }, "/user_id"),
        (SecurityEventFilter { since: Some("yesterday"), ..Default::default() }, "/since"),
        (SecurityEventFilter { since: Some("1700000000000"), ..Default::default() }, "/since"),
        (SecurityEventFilter { until: Some("2026-02-30T00:00:00Z"), ..Default::default() }, "/until"),
        (
            SecurityEventFilter {
                since: Some("2026-01-02T00:00:00Z"),
                until: Some("2026-01-01T23:59:59.999Z"),
                ..Default::default()
            },
            "/until",
        ),
        (SecurityEventFilter { after: Some("nope"), ..Default::default() }, "/after"),
        (SecurityEventFilter { after: Some(&upper_hex), ..Default::default() }, "/after"),
        (SecurityEventFilter { after: Some(&too_long), ..Default::default() }, "/after"),
        (SecurityEventFilter { limit: Some(0), ..Default::default() }, "/limit"),
        (SecurityEventFilter { limit: Some(201), ..Default::default() }, "/limit"),
    ];
    for (filter, field) in &cases {
        let result = app.admin_list_security_events(&r.auditor, filter).await;
        let Err(AppError::Validation(issues)) = result else { panic!("{filter:?}: {result:?}") };
        assert_eq!(issues.iter().map(|i| i.field.as_ref()).collect::<Vec<_>>(), [*field], "{filter:?}");
        assert!(issues.iter().all(|i| !i.message.contains(canary) && !i.message.contains("OR 1=1")));
        // Without the permission, the same requests learn only that they may not ask.
        forbidden(app.admin_list_security_events(&r.alice, filter).await);
    }
    // Every broken field at once, each named once.
    let all_wrong = SecurityEventFilter {
        kinds: vec!["nope", "also-nope"],
        user_id: Some("x"),
        since: Some("x"),
        until: Some("x"),
        after: Some("x"),
        limit: Some(0),
    };
    assert_eq!(
        invalid_fields(app.admin_list_security_events(&r.owner, &all_wrong).await),
        ["/kind", "/user_id", "/since", "/until", "/after", "/limit"]
    );
    // The edges that are allowed: 1 and 200, since == until, a made-up but well-formed cursor.
    for filter in [
        SecurityEventFilter { limit: Some(1), ..Default::default() },
        SecurityEventFilter { limit: Some(200), ..Default::default() },
        SecurityEventFilter {
            since: Some("2026-01-01T00:00:00Z"),
            until: Some("2026-01-01T01:00:00+01:00"),
            ..Default::default()
        },
        SecurityEventFilter { after: Some("ffffffffffffffff0000000000000000"), ..Default::default() },
    ] {
        app.admin_list_security_events(&r.auditor, &filter).await.unwrap();
    }
}
