//! IP rules as an administrator sets them and as a request meets them: deny wins, allowlists, the
//! administration allowlist, expiry, IPv6, canonical networks, the self-lockout guard, who may
//! change rules, and a second node following a change.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_domain::{BuiltinRole, IpRule, IpRuleSource, SecurityEventKind, Timestamp};
use portcullis_store_sqlite::SqliteStore;

use super::admin::{ADMIN, forbidden, principal};
use super::*;
use crate::{IpRuleSettings, NewIpRule};

const AUDITOR: &str = "auditor@example.com";

/// The caller's own address in these tests (an administrator's workstation).
const DESK: &str = "192.0.2.10";

struct Cast {
    t: TestApp,
    admin: Principal,
    auditor: Principal,
    alice: Principal,
}

async fn cast_with(config: IpRuleSettings) -> Cast {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let mut settings = testing::settings();
    settings.ip_rules = config;
    let t = testing::app_with(store, settings);
    t.app.load_keys().await.unwrap();
    cast_on(t).await
}

async fn cast_on(t: TestApp) -> Cast {
    for (email, role) in
        [(ADMIN, BuiltinRole::Admin), (AUDITOR, BuiltinRole::Auditor), (ALICE, BuiltinRole::Member)]
    {
        t.app.create_user_as_operator(email, None, secret(PASSWORD), role).await.unwrap();
    }
    let admin = principal(&t.app, ADMIN).await;
    let auditor = principal(&t.app, AUDITOR).await;
    let alice = principal(&t.app, ALICE).await;
    Cast { t, admin, auditor, alice }
}

async fn cast() -> Cast {
    cast_with(IpRuleSettings::default()).await
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn rule<'a>(network: &'a str, action: &'a str, scope: &'a str) -> NewIpRule<'a> {
    NewIpRule { network, action, scope, ..NewIpRule::default() }
}

async fn create(c: &Cast, new: NewIpRule<'_>) -> IpRule {
    c.t.app.admin_create_ip_rule(&c.admin, Some(ip(DESK)), &new).await.unwrap()
}

fn allowed(c: &Cast, address: &str, admin_route: bool) -> bool {
    match c.t.app.ip_allowed(ip(address), admin_route) {
        Ok(()) => true,
        Err(AppError::IpDenied) => false,
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn invalid_fields<T: std::fmt::Debug>(result: Result<T, AppError>) -> Vec<String> {
    match result {
        Err(AppError::Validation(issues)) => issues.into_iter().map(|i| i.field.into_owned()).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn invalid_message<T: std::fmt::Debug>(result: Result<T, AppError>) -> String {
    match result {
        Err(AppError::Validation(issues)) => issues.iter().map(|i| i.message.clone()).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn with_no_rules_every_address_gets_in() {
    let c = cast().await;
    assert!(allowed(&c, "203.0.113.5", false));
    assert!(allowed(&c, "2001:db8::5", true));
}

#[tokio::test]
async fn a_deny_rule_wins_over_an_allow_rule_that_covers_the_same_address() {
    let c = cast().await;
    create(&c, rule("192.0.2.0/24", "allow", "global")).await;
    create(&c, rule("203.0.113.0/24", "allow", "global")).await;
    create(&c, rule("203.0.113.66", "deny", "global")).await;

    assert!(allowed(&c, "203.0.113.5", false));
    assert!(!allowed(&c, "203.0.113.66", false));
    assert!(!allowed(&c, "203.0.113.66", true));
}

#[tokio::test]
async fn once_a_global_allow_rule_exists_only_allowed_networks_get_in() {
    let c = cast().await;
    assert!(allowed(&c, "198.51.100.1", false));
    create(&c, rule("192.0.2.0/24", "allow", "global")).await;

    assert!(allowed(&c, "192.0.2.200", false));
    assert!(!allowed(&c, "198.51.100.1", false));
    assert!(!allowed(&c, "2001:db8::1", false));
}

#[tokio::test]
async fn the_admin_allowlist_restricts_admin_routes_only() {
    let c = cast().await;
    create(&c, rule("192.0.2.0/24", "allow", "admin")).await;

    assert!(allowed(&c, "198.51.100.1", false), "other routes stay open");
    assert!(!allowed(&c, "198.51.100.1", true));
    assert!(allowed(&c, DESK, true));
}

#[tokio::test]
async fn the_configuration_rules_apply_from_the_start_and_are_listed_read_only() {
    let c = cast_with(IpRuleSettings {
        allow: vec![],
        deny: vec![net("198.51.100.0/24")],
        admin_allow: vec![net("192.0.2.0/24")],
    })
    .await;
    assert!(!allowed(&c, "198.51.100.7", false));
    assert!(!allowed(&c, "203.0.113.1", true));
    assert!(allowed(&c, "203.0.113.1", false));

    let listed = c.t.app.admin_list_ip_rules(&c.auditor).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| r.source == IpRuleSource::Config));
    let deny = listed.iter().find(|r| r.network == net("198.51.100.0/24")).unwrap();
    let refused = c.t.app.admin_delete_ip_rule(&c.admin, Some(ip(DESK)), &deny.id.to_string()).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_))), "{refused:?}");
    assert!(!allowed(&c, "198.51.100.7", false));
}

#[tokio::test]
async fn an_expiring_rule_applies_until_its_expiry_and_is_then_purged() {
    let c = cast().await;
    let block =
        create(&c, NewIpRule { expires_in_secs: Some(60), ..rule("203.0.113.9", "deny", "global") }).await;
    assert_eq!(block.expires_at, Some(Timestamp::from_unix_millis(testing::START + 60_000)));
    assert!(!allowed(&c, "203.0.113.9", false));

    c.t.clock.advance_millis(59_999);
    assert!(!allowed(&c, "203.0.113.9", false));
    c.t.clock.advance_millis(1);
    assert!(allowed(&c, "203.0.113.9", false), "an expired rule never applies, purged or not");

    assert_eq!(c.t.app.purge_expired_ip_rules().await.unwrap(), 1);
    assert!(c.t.app.admin_list_ip_rules(&c.admin).await.unwrap().is_empty());
}

#[tokio::test]
async fn ipv6_rules_apply_to_ipv6_clients_and_ipv4_rules_to_ipv4_mapped_clients() {
    let c = cast().await;
    create(&c, rule("2001:db8:bad::/48", "deny", "global")).await;
    create(&c, rule("198.51.100.0/24", "deny", "global")).await;

    assert!(!allowed(&c, "2001:db8:bad:1::5", false));
    assert!(allowed(&c, "2001:db8:900d::5", false));
    assert!(!allowed(&c, "::ffff:198.51.100.3", false), "the mapped form is the same client");
}

#[tokio::test]
async fn networks_are_stored_in_canonical_form_and_malformed_fields_are_each_named() {
    let c = cast().await;
    let wide = create(&c, rule("10.1.2.3/8", "deny", "global")).await;
    assert_eq!(wide.network.to_string(), "10.0.0.0/8");
    let one = create(&c, rule("2001:DB8::1", "deny", "global")).await;
    assert_eq!(one.network.to_string(), "2001:db8::1/128");
    assert_eq!(one.created_by, Some(c.admin.user_id));
    assert_eq!(one.source, IpRuleSource::Admin);

    let bad = NewIpRule {
        network: "10.0.0.0/33",
        action: "block",
        scope: "everywhere",
        note: Some("tab\there"),
        expires_in_secs: Some(0),
    };
    assert_eq!(
        invalid_fields(c.t.app.admin_create_ip_rule(&c.admin, Some(ip(DESK)), &bad).await),
        vec!["/network", "/action", "/scope", "/note", "/expires_in_secs"]
    );
    for everything in ["0.0.0.0/0", "::/0"] {
        let result = c.t.app.admin_create_ip_rule(&c.admin, None, &rule(everything, "deny", "global")).await;
        assert_eq!(invalid_fields(result), vec!["/network"], "{everything}");
    }
}

#[tokio::test]
async fn a_rule_that_would_lock_the_callers_own_address_out_of_the_admin_api_is_refused() {
    let c = cast().await;
    let desk = Some(ip(DESK));
    for new in [
        rule("192.0.2.0/24", "deny", "global"),
        rule("192.0.2.10", "deny", "admin"),
        rule("198.51.100.0/24", "allow", "admin"),
        rule("198.51.100.0/24", "allow", "global"),
    ] {
        let result = c.t.app.admin_create_ip_rule(&c.admin, desk, &new).await;
        let message = invalid_message(result);
        assert!(message.contains("lock your own address (192.0.2.10)"), "{message}");
    }
    assert!(c.t.app.admin_list_ip_rules(&c.admin).await.unwrap().is_empty(), "nothing was stored");

    // With its own network allowed first, the same allowlist is accepted; deleting that allow rule
    // would then lock the caller out, and is refused too.
    let mine = create(&c, rule("192.0.2.0/28", "allow", "admin")).await;
    create(&c, rule("198.51.100.0/24", "allow", "admin")).await;
    let result = c.t.app.admin_delete_ip_rule(&c.admin, desk, &mine.id.to_string()).await;
    assert!(invalid_message(result).contains("lock your own address"));
    assert!(allowed(&c, DESK, true));
}

#[tokio::test]
async fn members_and_auditors_may_not_change_rules_and_members_may_not_read_them() {
    let c = cast().await;
    let desk = Some(ip(DESK));
    let new = rule("203.0.113.0/24", "deny", "global");
    forbidden(c.t.app.admin_create_ip_rule(&c.alice, desk, &new).await);
    forbidden(c.t.app.admin_create_ip_rule(&c.auditor, desk, &new).await);
    forbidden(c.t.app.admin_list_ip_rules(&c.alice).await);

    let made = create(&c, new).await;
    assert_eq!(c.t.app.admin_list_ip_rules(&c.auditor).await.unwrap(), vec![made.clone()]);
    forbidden(c.t.app.admin_delete_ip_rule(&c.auditor, desk, &made.id.to_string()).await);
    forbidden(c.t.app.admin_delete_ip_rule(&c.alice, desk, &made.id.to_string()).await);

    c.t.app.admin_delete_ip_rule(&c.admin, desk, &made.id.to_string()).await.unwrap();
    assert!(allowed(&c, "203.0.113.1", false), "a deleted rule stops applying at once");
    let again = c.t.app.admin_delete_ip_rule(&c.admin, desk, &made.id.to_string()).await;
    assert!(matches!(again, Err(AppError::NotFound)), "{again:?}");
    let malformed = c.t.app.admin_delete_ip_rule(&c.admin, desk, "../etc").await;
    assert!(matches!(malformed, Err(AppError::NotFound)), "{malformed:?}");
}

#[tokio::test]
async fn another_node_applies_a_change_after_its_next_reload() {
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_millis(testing::START)));
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let a = testing::app_with_clock(store.clone(), testing::settings(), clock.clone());
    let b = testing::app_with_clock(store, testing::settings(), clock);
    a.app.load_keys().await.unwrap();
    b.app.load_keys().await.unwrap();
    let node_b = b.app.clone();
    let c = cast_on(a).await;

    let made = create(&c, rule("203.0.113.0/24", "deny", "global")).await;
    assert!(!allowed(&c, "203.0.113.1", false), "this node at once");
    assert!(node_b.ip_allowed(ip("203.0.113.1"), false).is_ok(), "the other node until it reloads");
    node_b.reload_ip_rules().await.unwrap();
    assert!(matches!(node_b.ip_allowed(ip("203.0.113.1"), false), Err(AppError::IpDenied)));

    c.t.app.admin_delete_ip_rule(&c.admin, Some(ip(DESK)), &made.id.to_string()).await.unwrap();
    node_b.reload_ip_rules().await.unwrap();
    assert!(node_b.ip_allowed(ip("203.0.113.1"), false).is_ok());
}

#[tokio::test]
async fn denials_become_one_security_event_per_address_and_minute_carrying_the_count() {
    let c = cast().await;
    create(&c, rule("203.0.113.0/24", "deny", "global")).await;
    for _ in 0..5 {
        assert!(!allowed(&c, "203.0.113.1", false));
    }
    assert!(!allowed(&c, "203.0.113.2", true));

    assert_eq!(c.t.app.record_ip_denials().await.unwrap(), 2);
    let events = testing::security_events(&c.t.app, SecurityEventKind::IpDenied).await;
    let mut counts: Vec<(String, String)> =
        events.iter().map(|e| (e.details["count"].clone(), e.details["reason"].clone())).collect();
    counts.sort();
    assert_eq!(counts, vec![("1".into(), "deny_rule".into()), ("5".into(), "deny_rule".into())]);
    assert_eq!(c.t.app.record_ip_denials().await.unwrap(), 0, "each denial is recorded once");
}

#[tokio::test]
async fn a_detection_block_always_expires_applies_at_once_and_is_recorded() {
    let c = cast().await;
    let block =
        c.t.app
            .block_ip(net("203.0.113.77/32"), Duration::from_secs(600), "credential stuffing")
            .await
            .unwrap();
    assert_eq!(block.source, IpRuleSource::Detection);
    assert_eq!(block.expires_at, Some(Timestamp::from_unix_millis(testing::START + 600_000)));
    assert!(!allowed(&c, "203.0.113.77", false));
    let events = testing::security_events(&c.t.app, SecurityEventKind::IpBlocked).await;
    assert_eq!(events.len(), 1);
    // One address is personal data: sealed in the event's ip column, never in its details.
    assert!(!events[0].details.contains_key("network"), "{:?}", events[0].details);
    assert!(!format!("{:?}", events[0].details).contains("203.0.113.77"));
    assert_eq!(events[0].details["rule_id"], block.id.to_string());

    assert!(c.t.app.block_ip(net("0.0.0.0/0"), Duration::from_secs(600), "x").await.is_err());
    assert!(c.t.app.block_ip(net("203.0.113.78/32"), Duration::ZERO, "x").await.is_err());
    c.t.clock.advance_millis(600_000);
    assert!(allowed(&c, "203.0.113.77", false));
}
