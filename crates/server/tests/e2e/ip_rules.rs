//! IP rules over real HTTP: a denied address is refused with 403 `ip-denied` before any
//! authentication, forwarding headers from an untrusted peer cannot dodge a rule, behind a trusted
//! proxy the forwarded address is the one judged, the admin allowlist closes only `/v1/admin/*`, the
//! probes keep answering, and an administrator's rule applies at once and goes away with its
//! deletion.

use portcullis::config::Config;
use serde_json::json;

use crate::support::{
    Go, PASSWORD, expect_field_error, expect_problem, login, setup_owner, spawn_with, spawn_with_setup_token,
};

fn deny_loopback(config: &mut Config) {
    config.ip_rules.deny = vec!["127.0.0.1/32".parse().unwrap()];
}

fn behind_proxy(config: &mut Config) {
    config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

#[tokio::test]
async fn a_denied_address_gets_403_ip_denied_before_authentication_and_the_probes_still_answer() {
    let app = spawn_with(deny_loopback).await;

    // No 401: the address is refused before the credential is even looked at.
    expect_problem(app.get("/v1/me").await, 403, "ip-denied").await;
    let login = app.post_json("/v1/auth/login", &json!({ "email": "a@example.com", "password": "x" })).await;
    expect_problem(login, 403, "ip-denied").await;
    expect_problem(app.get("/v1/admin/users").await, 403, "ip-denied").await;
    expect_problem(app.get("/no/such/path").await, 403, "ip-denied").await;

    assert_eq!(app.get("/healthz").await.status(), 200, "orchestrators' probes are exempt");
    assert!(app.get("/readyz").await.status() != 403);
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_cannot_dodge_a_deny_rule() {
    let app = spawn_with(deny_loopback).await;
    let response = app
        .call(reqwest::Method::GET, "/v1/me")
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .go()
        .await;
    expect_problem(response, 403, "ip-denied").await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_is_the_one_judged() {
    let app = spawn_with(|c| {
        behind_proxy(c);
        c.ip_rules.deny = vec!["203.0.113.0/24".parse().unwrap()];
    })
    .await;
    let from = |client: &'static str| {
        app.call(reqwest::Method::GET, "/v1/me").header("x-forwarded-for", client).go()
    };
    expect_problem(from("203.0.113.9").await, 403, "ip-denied").await;
    assert_eq!(from("198.51.100.1").await.status(), 401, "another client reaches authentication");
    assert_eq!(app.get("/v1/me").await.status(), 401, "the proxy itself is not denied");
}

#[tokio::test]
async fn the_admin_allowlist_refuses_the_admin_api_but_not_the_rest() {
    let app = spawn_with(|c| c.ip_rules.admin_allow = vec!["10.0.0.0/8".parse().unwrap()]).await;
    expect_problem(app.get("/v1/admin/users").await, 403, "ip-denied").await;
    expect_problem(app.get("/v1/admin/ip-rules").await, 403, "ip-denied").await;
    assert_eq!(app.get("/v1/me").await.status(), 401, "the rest of the API still authenticates");
}

#[tokio::test]
async fn an_administrators_rule_applies_at_once_is_listed_and_stops_applying_when_deleted() {
    let (app, setup_token) = spawn_with_setup_token(|c| {
        behind_proxy(c);
        c.ip_rules.allow = vec!["0.0.0.0/0".parse().unwrap()];
    })
    .await;
    setup_owner(&app, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&app, "owner@example.com", PASSWORD).await;
    let from = |client: &'static str| {
        app.call(reqwest::Method::GET, "/v1/me")
            .header("x-forwarded-for", client)
            .bearer_auth(&owner.access)
            .go()
    };
    assert_eq!(from("203.0.113.9").await.status(), 200);

    let created = app
        .call(reqwest::Method::POST, "/v1/admin/ip-rules")
        .bearer_auth(&owner.access)
        .json(&json!({ "network": "203.0.113.1/24", "action": "deny", "scope": "global", "note": "abuse" }))
        .go()
        .await;
    assert_eq!(created.status(), 201);
    let rule: serde_json::Value = created.json().await.unwrap();
    assert_eq!(rule["network"], "203.0.113.0/24");
    assert_eq!(rule["source"], "admin");
    expect_problem(from("203.0.113.9").await, 403, "ip-denied").await;

    let listed: serde_json::Value = app
        .call(reqwest::Method::GET, "/v1/admin/ip-rules")
        .bearer_auth(&owner.access)
        .go()
        .await
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> =
        listed["rules"].as_array().unwrap().iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["config", "admin"]);
    let config_id = listed["rules"][0]["id"].as_str().unwrap();
    let refused = app
        .call(reqwest::Method::DELETE, &format!("/v1/admin/ip-rules/{config_id}"))
        .bearer_auth(&owner.access)
        .go()
        .await;
    expect_problem(refused, 403, "forbidden").await;

    // Locking one's own address (127.0.0.1, the peer) out of the admin API is refused, naming the field.
    let lockout = app
        .call(reqwest::Method::POST, "/v1/admin/ip-rules")
        .bearer_auth(&owner.access)
        .json(&json!({ "network": "10.0.0.0/8", "action": "allow", "scope": "admin" }))
        .go()
        .await;
    let message = expect_field_error(lockout, "/network", "10.0.0.0").await;
    assert!(message.contains("lock your own address"), "{message}");

    let id = rule["id"].as_str().unwrap();
    let deleted = app
        .call(reqwest::Method::DELETE, &format!("/v1/admin/ip-rules/{id}"))
        .bearer_auth(&owner.access)
        .go()
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(from("203.0.113.9").await.status(), 200);
}
