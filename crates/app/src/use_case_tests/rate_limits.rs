//! Rate limits as a client, a guesser and a flood would meet them, on the in-process backend and, when
//! `PORTCULLIS_TEST_REDIS_URL` is set, on Redis with the same assertions.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_domain::{ApiKeyId, SecurityEventKind, SessionId, Timestamp, UserId};
use portcullis_store::Store;
use portcullis_store_sqlite::SqliteStore;
use secrecy::SecretString;

use super::{ALICE, PASSWORD, SECOND, client, event_kinds_of, secret, signup, user_id_of};
use crate::testing::{self, TestApp};
use crate::{
    AppError, ClientContext, Credential, FailureMode, FixedClock, LoginMode, Principal, PrincipalKind,
    RateLimitBackendSettings, RateLimitSettings, RatePolicy, RatePolicyKind,
};

/// Where budgets live in a test.
#[derive(Debug, Clone)]
enum Backend {
    Local,
    Redis(String),
}

/// The in-process backend, and Redis when the environment names one.
fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Local];
    match std::env::var("PORTCULLIS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => backends.push(Backend::Redis(url)),
        _ => {
            // CI starts a Redis and says so: there, a missing one is a failure, not a skip.
            assert!(
                std::env::var_os("PORTCULLIS_REQUIRE_REDIS").is_none(),
                "PORTCULLIS_REQUIRE_REDIS is set but PORTCULLIS_TEST_REDIS_URL is not"
            );
            eprintln!("rate limit tests on Redis skipped: PORTCULLIS_TEST_REDIS_URL is not set")
        }
    }
    backends
}

/// A key prefix no other test run shares (Redis keys outlive a test by up to a period).
fn fresh_prefix() -> String {
    format!("test-{}:", uuid_like())
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Settings with every budget at `per_minute` (tight ones set by the test) on `backend`.
fn limits(backend: &Backend, prefix: &str, adjust: impl FnOnce(&mut RateLimitSettings)) -> RateLimitSettings {
    let backend = match backend {
        Backend::Local => RateLimitBackendSettings::Local,
        Backend::Redis(url) => RateLimitBackendSettings::Redis {
            url: SecretString::from(url.clone()),
            prefix: prefix.to_owned(),
            on_failure: FailureMode::Closed,
        },
    };
    let mut settings = RateLimitSettings { backend, ..RateLimitSettings::default() };
    adjust(&mut settings);
    settings
}

/// An app on a fresh database with these rate limits, on a fixed clock.
async fn app_with_limits(settings: RateLimitSettings) -> TestApp {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let mut app_settings = testing::settings();
    app_settings.rate_limits = settings;
    let test = testing::app_with(store, app_settings);
    test.app.load_keys().await.unwrap();
    test
}

/// Two nodes on one database and one clock (as two servers behind a load balancer).
async fn two_nodes(settings: RateLimitSettings) -> (TestApp, TestApp) {
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_millis(testing::START)));
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let node_settings = || {
        let mut app_settings = testing::settings();
        app_settings.rate_limits = settings.clone();
        app_settings
    };
    let a = testing::app_with_clock(store.clone(), node_settings(), clock.clone());
    let b = testing::app_with_clock(store, node_settings(), clock);
    a.app.load_keys().await.unwrap();
    b.app.load_keys().await.unwrap();
    (a, b)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn client_at(address: &str) -> ClientContext {
    ClientContext { ip: Some(address.into()), user_agent: Some("rate-limit-test".into()) }
}

/// Outcomes of `n` requests from one address: the remaining counts of those let through, and how
/// many were refused.
async fn spend_n(test: &TestApp, address: IpAddr, auth_route: bool, n: usize) -> (Vec<u32>, usize) {
    let (mut remaining, mut refused) = (Vec::new(), 0);
    for _ in 0..n {
        match test.app.spend_client_budget(address, auth_route).await {
            Ok(Some((_, allowance))) => remaining.push(allowance.remaining),
            Ok(None) => panic!("a budget should apply"),
            Err(AppError::RateLimited(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    (remaining, refused)
}

#[tokio::test]
async fn exactly_the_budget_passes_as_a_burst_and_one_more_fits_after_one_interval() {
    for backend in backends() {
        let settings = limits(&backend, &fresh_prefix(), |s| s.ip = RatePolicy::per_minute(5));
        let test = app_with_limits(settings).await;
        let client = ip("198.51.100.1");

        let (remaining, refused) = spend_n(&test, client, false, 8).await;
        assert_eq!(remaining, vec![4, 3, 2, 1, 0], "{backend:?}");
        assert_eq!(refused, 3, "{backend:?}");

        // The refusal says when one request fits again: one emission interval (60 s / 5).
        let Err(AppError::RateLimited(refusal)) = test.app.spend_client_budget(client, false).await else {
            panic!("still refused");
        };
        assert_eq!(refusal.policy, RatePolicyKind::Ip);
        assert_eq!(refusal.limit, 5);
        assert!(
            refusal.retry_after <= Duration::from_secs(12) && refusal.retry_after > Duration::from_secs(11),
            "{backend:?}: {refusal:?}"
        );

        test.clock.advance_millis(12 * SECOND);
        let (remaining, refused) = spend_n(&test, client, false, 2).await;
        assert_eq!((remaining, refused), (vec![0], 1), "{backend:?}: exactly one refilled");

        // Another address has its own budget.
        let (remaining, _) = spend_n(&test, ip("198.51.100.2"), false, 1).await;
        assert_eq!(remaining, vec![4], "{backend:?}");
    }
}

#[tokio::test]
async fn the_routes_that_prove_identity_spend_a_stricter_budget_besides_the_address_budget() {
    for backend in backends() {
        let settings = limits(&backend, &fresh_prefix(), |s| {
            s.ip = RatePolicy::per_minute(100);
            s.auth_ip = RatePolicy::per_minute(3);
        });
        let test = app_with_limits(settings).await;
        let client = ip("2001:db8::7");

        let (remaining, refused) = spend_n(&test, client, true, 5).await;
        // The tighter budget is the one reported.
        assert_eq!(remaining, vec![2, 1, 0], "{backend:?}");
        assert_eq!(refused, 2, "{backend:?}");
        // Other routes are still open to the address: its general budget is far from spent.
        let (remaining, refused) = spend_n(&test, client, false, 1).await;
        assert_eq!(refused, 0, "{backend:?}");
        assert!(remaining[0] >= 90, "{backend:?}: {remaining:?}");
    }
}

#[tokio::test]
async fn an_account_identifier_is_limited_across_addresses_known_or_unknown_alike_before_any_hashing() {
    for backend in backends() {
        let settings = limits(&backend, &fresh_prefix(), |s| s.account = RatePolicy::per_minute(3));
        let test = app_with_limits(settings).await;
        signup(&test.app, ALICE, PASSWORD).await;
        // Signing up spent one attempt of the address's budget; a minute later it is full again.
        test.clock.advance_millis(60 * SECOND);

        for target in [ALICE, "nobody@example.com"] {
            let mut outcomes = Vec::new();
            for attempt in 0..5 {
                // A distributed guesser: a new address every time, the same account; the case of the
                // address does not make it another account.
                let presented = if attempt % 2 == 0 { target.to_owned() } else { target.to_uppercase() };
                let result = test
                    .app
                    .login(
                        &presented,
                        secret("wrong guess"),
                        LoginMode::Bearer,
                        &client_at(&format!("203.0.113.{attempt}")),
                    )
                    .await;
                outcomes.push(match result {
                    Err(AppError::InvalidCredentials) => "invalid",
                    Err(AppError::RateLimited(refusal)) => {
                        assert_eq!(refusal.policy, RatePolicyKind::Account);
                        "limited"
                    }
                    other => panic!("unexpected {:?}", other.map(|_| ())),
                });
            }
            assert_eq!(
                outcomes,
                ["invalid", "invalid", "invalid", "limited", "limited"],
                "{backend:?}: {target}"
            );
        }

        // A refused attempt was refused before the account was read or a hash was run: only the three
        // that got through left a login failure behind.
        let alice = user_id_of(&test.app, ALICE).await;
        let failures = event_kinds_of(&test.app, alice)
            .await
            .into_iter()
            .filter(|kind| *kind == SecurityEventKind::LoginFailed)
            .count();
        assert_eq!(failures, 3, "{backend:?}");

        // Even the right password waits: the budget is the account's, not the guesser's.
        let right = test.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
        assert!(matches!(right, Err(AppError::RateLimited(_))), "{backend:?}");
        test.clock.advance_millis(20 * SECOND);
        assert!(
            test.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await.is_ok(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_person_and_an_api_key_each_have_a_budget_of_their_own_from_any_address() {
    for backend in backends() {
        let settings = limits(&backend, &fresh_prefix(), |s| {
            s.principal = RatePolicy::per_minute(2);
            s.api_key = RatePolicy::per_minute(3);
        });
        let test = app_with_limits(settings).await;
        let user = UserId::from_random_bytes([1; 16]);
        let person = Principal {
            user_id: user,
            kind: PrincipalKind::Person,
            credential: Credential::Bearer(SessionId::from_random_bytes([2; 16])),
            mfa_enrollment_required: false,
        };
        let key = Principal {
            user_id: user,
            kind: PrincipalKind::Person,
            credential: Credential::ApiKey(ApiKeyId::from_random_bytes([3; 16])),
            mfa_enrollment_required: false,
        };
        let spend = |p: Principal| {
            let app = test.app.clone();
            async move { app.spend_principal_budget(&p).await }
        };
        assert!(spend(person).await.is_ok() && spend(person).await.is_ok());
        assert!(
            matches!(spend(person).await, Err(AppError::RateLimited(r)) if r.policy == RatePolicyKind::Principal)
        );
        // The key spends its own budget, not its owner's.
        for _ in 0..3 {
            assert!(spend(key).await.is_ok(), "{backend:?}");
        }
        assert!(
            matches!(spend(key).await, Err(AppError::RateLimited(r)) if r.policy == RatePolicyKind::ApiKey)
        );
    }
}

#[tokio::test]
async fn refusals_become_one_security_event_per_key_and_minute_carrying_the_count() {
    let settings = limits(&Backend::Local, "", |s| s.ip = RatePolicy::per_minute(2));
    let test = app_with_limits(settings).await;
    let (_, refused) = spend_n(&test, ip("192.0.2.10"), false, 12).await;
    assert_eq!(refused, 10);
    spend_n(&test, ip("192.0.2.11"), false, 3).await;

    assert_eq!(test.app.record_rate_limit_trips().await.unwrap(), 2);
    let events = testing::security_events(&test.app, SecurityEventKind::RateLimited).await;
    assert_eq!(events.len(), 2);
    let mut counts: Vec<_> = events.iter().map(|e| e.details["count"].clone()).collect();
    counts.sort();
    assert_eq!(counts, ["1", "10"]);
    assert!(events.iter().all(|e| e.details["policy"] == "ip"));
    // Nothing twice: the counter starts again empty.
    assert_eq!(test.app.record_rate_limit_trips().await.unwrap(), 0);
}

#[tokio::test]
async fn a_flood_of_distinct_addresses_holds_memory_only_until_their_budgets_refill() {
    let settings = limits(&Backend::Local, "", |s| s.ip = RatePolicy::per_minute(100));
    let test = app_with_limits(settings).await;
    for i in 0..20_000u32 {
        let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | i));
        test.app.spend_client_budget(address, false).await.unwrap();
    }
    assert_eq!(test.app.rate_limit_keys_held(), Some(20_000));
    // One request's worth refills in 0.6 s; governor keeps a key one more interval to be safe, and
    // after that it holds nothing worth keeping.
    test.clock.advance_millis(600);
    test.app.sweep_rate_limits();
    assert_eq!(test.app.rate_limit_keys_held(), Some(20_000), "not before its budget is full");
    test.clock.advance_millis(700);
    test.app.sweep_rate_limits();
    assert_eq!(test.app.rate_limit_keys_held(), Some(0));
}

#[tokio::test]
async fn exempt_networks_spend_no_address_budget_but_limits_off_spend_nothing_at_all() {
    let settings = limits(&Backend::Local, "", |s| {
        s.ip = RatePolicy::per_minute(1);
        s.exempt_networks = vec!["10.1.0.0/16".parse().unwrap()];
    });
    let test = app_with_limits(settings).await;
    for _ in 0..5 {
        assert_eq!(test.app.spend_client_budget(ip("10.1.2.3"), true).await.unwrap(), None);
    }
    assert!(test.app.spend_client_budget(ip("10.2.0.1"), false).await.unwrap().is_some());
    assert!(test.app.spend_client_budget(ip("10.2.0.1"), false).await.is_err());
}

#[tokio::test]
async fn an_unreachable_redis_serves_unmetered_when_open_and_refuses_when_closed() {
    for (mode, refused) in [(FailureMode::Open, false), (FailureMode::Closed, true)] {
        // Nothing listens on port 1.
        let settings = RateLimitSettings {
            backend: RateLimitBackendSettings::Redis {
                url: SecretString::from("redis://127.0.0.1:1/0".to_owned()),
                prefix: fresh_prefix(),
                on_failure: mode,
            },
            ..RateLimitSettings::default()
        };
        let test = app_with_limits(settings).await;
        for _ in 0..3 {
            let result = test.app.spend_client_budget(ip("192.0.2.1"), false).await;
            if refused {
                assert!(matches!(result, Err(AppError::RateLimiterUnavailable)), "{mode:?}: {result:?}");
            } else {
                assert_eq!(result.unwrap(), None, "{mode:?}: served unmetered");
            }
        }
        // Counted either way, for the metric and the log.
        assert_eq!(test.app.rate_limit_backend_failures(), 3, "{mode:?}");
    }
}

#[tokio::test]
async fn two_nodes_sharing_redis_share_one_budget() {
    let Some(Backend::Redis(url)) = backends().into_iter().find(|b| matches!(b, Backend::Redis(_))) else {
        return;
    };
    let settings = limits(&Backend::Redis(url), &fresh_prefix(), |s| s.ip = RatePolicy::per_minute(6));
    let (a, b) = two_nodes(settings).await;
    let client = ip("198.51.100.77");
    let mut allowed = 0;
    for round in 0..10 {
        let node = if round % 2 == 0 { &a } else { &b };
        if node.app.spend_client_budget(client, false).await.is_ok() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 6, "one budget for both nodes");
    // Each node alone would have let six through: the in-process backend shares nothing.
    let local = limits(&Backend::Local, "", |s| s.ip = RatePolicy::per_minute(6));
    let (a, b) = two_nodes(local).await;
    let mut allowed = 0;
    for round in 0..10 {
        let node = if round % 2 == 0 { &a } else { &b };
        if node.app.spend_client_budget(client, false).await.is_ok() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
}
