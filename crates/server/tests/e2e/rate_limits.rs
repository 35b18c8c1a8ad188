//! Rate limits over real HTTP: the 429 answer and its headers, the stricter budget of the login
//! routes, forwarding headers that cannot dodge a budget, two servers sharing one budget through Redis
//! (when `PORTCULLIS_TEST_REDIS_URL` is set), and Redis failing open or closed.

use portcullis::config::{Config, FailureModeName, Secret};
use serde_json::json;

use crate::support::{Go, TestApp, register, spawn_with};

/// Small budgets: 5 requests a minute per address, 3 on the login routes, 2 per account identifier.
fn tight(config: &mut Config) {
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.auth_ip_per_minute, r.account_per_minute) = (5, 3, 2);
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn redis_url() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // CI starts a Redis and says so: there, a missing one is a failure, not a skip.
            assert!(
                std::env::var_os("PORTCULLIS_REQUIRE_REDIS").is_none(),
                "PORTCULLIS_REQUIRE_REDIS is set but PORTCULLIS_TEST_REDIS_URL is not"
            );
            eprintln!("skipped the Redis part: PORTCULLIS_TEST_REDIS_URL is not set");
            None
        }
    }
}

/// A key prefix of its own, so runs and tests never share budgets.
fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("e2e-{nanos}-{}:", std::process::id())
}

#[tokio::test]
async fn the_request_over_the_budget_gets_a_429_problem_with_retry_after_and_ratelimit_headers() {
    let app = spawn_with(tight).await;
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for _ in 0..7 {
        let response = app.get("/v1/me").await;
        statuses.push(response.status().as_u16());
        remaining.push(header(&response, "ratelimit-remaining"));
        if response.status() == 429 {
            assert_eq!(header(&response, "content-type").as_deref(), Some("application/problem+json"));
            let retry_after: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
            assert!((1..=12).contains(&retry_after), "{retry_after}");
            assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("5"));
            assert_eq!(header(&response, "ratelimit-remaining").as_deref(), Some("0"));
            assert!(header(&response, "ratelimit-reset").is_some());
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["status"], 429);
            assert_eq!(body["type"], "urn:portcullis:problem:too-many-requests");
        }
    }
    // Refused before authentication: the first five get the route's own answer (401, no token).
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let first: Vec<_> = remaining.iter().take(5).map(|r| r.clone().unwrap()).collect();
    assert_eq!(first, ["4", "3", "2", "1", "0"]);
    // Probes are exempt: the orchestrator still sees a live server.
    for _ in 0..10 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
}

#[tokio::test]
async fn login_attempts_spend_a_stricter_budget_per_address_and_per_account_identifier() {
    let app = spawn_with(|c| {
        tight(c);
        c.rate_limits.ip_per_minute = 100;
    })
    .await;
    let login = |email: &'static str| {
        let app = &app;
        async move {
            app.post_json("/v1/auth/login", &json!({ "email": email, "password": "not the password" }))
                .await
                .status()
                .as_u16()
        }
    };
    // Per account identifier: two attempts, then 429 for that address only.
    assert_eq!([login("a@example.com").await, login("a@example.com").await], [401, 401]);
    assert_eq!(login("A@Example.com").await, 429, "the same account in other case");
    // The address's login budget (3) is now spent too: another account is refused from here.
    assert_eq!(login("b@example.com").await, 429);
    // Routes outside the login family still answer.
    assert_eq!(app.get("/v1/me").await.status(), 401);
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_cannot_dodge_a_budget() {
    let app = spawn_with(tight).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let response = app
            .call(reqwest::Method::GET, "/v1/me")
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("forwarded", format!("for=198.51.100.{i}"))
            .go()
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = spawn_with(|c| {
        tight(c);
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let response =
                app.call(reqwest::Method::GET, "/v1/me").header("x-forwarded-for", client).go().await;
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "{client}");
    }
}

#[tokio::test]
async fn a_signed_in_caller_has_a_budget_of_their_own() {
    let app = spawn_with(|c| {
        c.rate_limits.principal_per_minute = 3;
    })
    .await;
    register(&app, "pat@example.com", "velvet otter migrates at dusk").await;
    let tokens = crate::support::login(&app, "pat@example.com", "velvet otter migrates at dusk").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            app.call(reqwest::Method::GET, "/v1/me").bearer_auth(&tokens.access).go().await.status().as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn two_servers_sharing_redis_share_one_budget() {
    let Some(url) = redis_url() else { return };
    let prefix = fresh_prefix();
    let shared = |c: &mut Config| {
        tight(c);
        c.redis.url = Some(Secret::new(url.clone()));
        c.redis.key_prefix = prefix.clone();
    };
    let a = spawn_with(shared).await;
    let b = spawn_with(shared).await;
    let mut statuses = Vec::new();
    for round in 0..8 {
        let node: &TestApp = if round % 2 == 0 { &a } else { &b };
        statuses.push(node.get("/v1/me").await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3, "{statuses:?}");
}

#[tokio::test]
async fn an_unreachable_redis_fails_open_or_closed_as_configured() {
    for (mode, expected) in [(FailureModeName::Open, 401), (FailureModeName::Closed, 503)] {
        let app = spawn_with(|c| {
            tight(c);
            c.redis.url = Some(Secret::new("redis://127.0.0.1:1/0".into()));
            c.redis.on_failure = mode;
        })
        .await;
        for _ in 0..7 {
            let response = app.get("/v1/me").await;
            assert_eq!(response.status(), expected, "{mode:?}");
            if expected == 503 {
                assert_eq!(header(&response, "retry-after").as_deref(), Some("1"));
            }
        }
        assert_eq!(app.server.app().rate_limit_backend_failures(), 7, "{mode:?}");
        assert_eq!(app.get("/healthz").await.status(), 200, "{mode:?}: probes do not need Redis");
    }
}

#[tokio::test]
async fn failed_logins_lock_the_account_identifier_with_a_login_locked_problem_and_the_reset_still_works() {
    let app = spawn_with(|c| {
        c.lockout.max_failures = 3;
        c.lockout.lock_minutes = 15;
    })
    .await;
    register(&app, "lee@example.com", "velvet otter migrates at dusk").await;
    for _ in 0..3 {
        let response =
            app.post_json("/v1/auth/login", &json!({ "email": "lee@example.com", "password": "nope" })).await;
        assert_eq!(response.status(), 401);
    }
    let response = app
        .post_json(
            "/v1/auth/login",
            &json!({ "email": "lee@example.com", "password": "velvet otter migrates at dusk" }),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after").as_deref(), Some("900"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:login-locked");
    // The reset by email is not locked.
    let response = app.post_json("/v1/auth/password/forgot", &json!({ "email": "lee@example.com" })).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_burst_of_404_from_one_address_blocks_it_when_configured_and_the_probes_still_answer() {
    let app = spawn_with(|c| {
        c.detection.scanning_not_found = 5;
        c.detection.scanning_block_minutes = 10;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(app.get(&format!("/wp-admin/{i}.php")).await.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 403, 403]);
    let response = app.get("/v1/me").await;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:ip-denied");
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_burst_of_403_from_a_signed_in_member_ends_their_session_when_configured() {
    let app = spawn_with(|c| {
        c.detection.probing_forbidden = 3;
        c.detection.probing_response = portcullis::config::ProbeResponseName::RevokeSession;
    })
    .await;
    register(&app, "mo@example.com", "velvet otter migrates at dusk").await;
    let tokens = crate::support::login(&app, "mo@example.com", "velvet otter migrates at dusk").await;
    let me = || app.call(reqwest::Method::GET, "/v1/me").bearer_auth(&tokens.access).go();
    assert_eq!(me().await.status(), 200);
    for _ in 0..3 {
        let response =
            app.call(reqwest::Method::GET, "/v1/admin/users").bearer_auth(&tokens.access).go().await;
        assert_eq!(response.status(), 403);
    }
    assert_eq!(me().await.status(), 401, "the probing session is over");
}
