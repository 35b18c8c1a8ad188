//! `GET /metrics` over HTTP: who may scrape it (nobody by default, an allowlist, a bearer token, a
//! listener of its own), and what the HTTP series look like to Prometheus.

use crate::support::{Go, TestApp, expect_problem, login, register, spawn_with};

const TOKEN: &str = "canary-scrape-token-7f3a9c1e5b2d8f4a6c0e";

/// The value of one series, matched by name and label set in any order; `None` when absent.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, mut found): (&str, Vec<String>) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}').split(',').map(str::to_owned).collect()),
            None => (series, Vec::new()),
        };
        found.sort();
        (series_name == name && found == wanted).then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).bearer_auth(TOKEN).go().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.unwrap()
}

async fn with_token() -> TestApp {
    spawn_with(|c| c.metrics.token = Some(portcullis::config::Secret::new(TOKEN.into()))).await
}

#[tokio::test]
async fn metrics_are_not_served_on_the_main_listener_without_an_access_rule() {
    let app = spawn_with(|_| {}).await;
    expect_problem(app.get("/metrics").await, 404, "not-found").await;
    let off = spawn_with(|c| {
        c.metrics.enabled = false;
        c.metrics.allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    expect_problem(off.get("/metrics").await, 404, "not-found").await;
}

#[tokio::test]
async fn the_allowlist_admits_only_the_listed_addresses() {
    let outside = spawn_with(|c| c.metrics.allow = vec!["10.0.0.0/8".parse().unwrap()]).await;
    // The same answer as a path that does not exist: an outsider learns nothing.
    expect_problem(outside.get("/metrics").await, 404, "not-found").await;
    let inside = spawn_with(|c| c.metrics.allow = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let response = inside.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("portcullis_build_info"));
}

#[tokio::test]
async fn a_scrape_token_is_required_when_configured_and_must_match_exactly() {
    let app = with_token().await;
    let unauthorized = app.get("/metrics").await;
    assert!(unauthorized.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    expect_problem(unauthorized, 401, "unauthorized").await;
    for wrong in [&TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}0"), "Zm9v"] {
        let response = app.client.get(app.url("/metrics")).bearer_auth(wrong).go().await;
        expect_problem(response, 401, "unauthorized").await;
    }
    let basic = app.client.get(app.url("/metrics")).basic_auth("prometheus", Some(TOKEN)).go().await;
    expect_problem(basic, 401, "unauthorized").await;
    let text = scrape(&app).await;
    assert!(!text.contains(TOKEN), "the token is never echoed");
    assert!(!crate::support::log_text().contains(TOKEN), "nor logged");
}

#[tokio::test]
async fn a_listener_of_its_own_serves_metrics_and_nothing_else() {
    let app = spawn_with(|c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let own = app.server.metrics_addr().expect("the metrics listener is bound");
    assert_ne!(own, app.addr);
    let response = app.client.get(format!("http://{own}/metrics")).go().await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("portcullis_http_requests_in_flight"));
    expect_problem(app.client.get(format!("http://{own}/healthz")).go().await, 404, "not-found").await;
    expect_problem(app.client.get(format!("http://{own}/v1/me")).go().await, 404, "not-found").await;
    // And the API's listener does not serve them.
    expect_problem(app.get("/metrics").await, 404, "not-found").await;
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_status_class_never_by_path() {
    let app = with_token().await;
    let id = "0f9e5c1e-7a53-4b9a-9d53-3c8f2a1b6e70";
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/v1/admin/users/{id}")).await.status(), 401);
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    for n in 0..5 {
        assert_eq!(app.get(&format!("/probe-{n}-{id}")).await.status(), 404);
    }
    let text = scrape(&app).await;
    let user = [("method", "GET"), ("route", "/v1/admin/users/{id}"), ("status", "4xx")];
    assert_eq!(series(&text, "portcullis_http_requests_total", &user), Some(3.0));
    let health = [("method", "GET"), ("route", "/healthz"), ("status", "2xx")];
    assert_eq!(series(&text, "portcullis_http_requests_total", &health), Some(1.0));
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "4xx")];
    assert_eq!(series(&text, "portcullis_http_requests_total", &unmatched), Some(5.0));
    assert!(!text.contains(id), "no raw path or id is a label value");
    // Latency: a histogram whose count matches the requests, with a +Inf bucket.
    assert_eq!(series(&text, "portcullis_http_request_duration_seconds_count", &user), Some(3.0));
    let mut inf = user.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(series(&text, "portcullis_http_request_duration_seconds_bucket", &inf), Some(3.0));
    // The scrape itself is in flight while it renders.
    assert_eq!(series(&text, "portcullis_http_requests_in_flight", &[]), Some(1.0));
    let scrapes = [("method", "GET"), ("route", "/metrics"), ("status", "2xx")];
    let next = scrape(&app).await;
    assert_eq!(series(&next, "portcullis_http_requests_total", &scrapes), Some(1.0));
}

#[tokio::test]
async fn logins_sessions_and_security_events_move_their_series() {
    let app = with_token().await;
    register(&app, "metrics@example.com", "amber falcon crosses the weir").await;
    let before = scrape(&app).await;
    let tokens = login(&app, "metrics@example.com", "amber falcon crosses the weir").await;
    let wrong = app
        .post_json(
            "/v1/auth/login",
            &serde_json::json!({"email": "metrics@example.com", "password": "nope nope"}),
        )
        .await;
    expect_problem(wrong, 401, "invalid-credentials").await;
    let after = scrape(&app).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        series(&after, name, labels).unwrap_or(0.0) - series(&before, name, labels).unwrap_or(0.0)
    };
    assert_eq!(moved("portcullis_logins_total", &[("result", "success")]), 1.0);
    assert_eq!(moved("portcullis_logins_total", &[("result", "failure")]), 1.0);
    assert_eq!(
        moved("portcullis_security_events_total", &[("kind", "login_failed"), ("severity", "low")]),
        1.0
    );
    assert_eq!(moved("portcullis_active_sessions", &[]), 1.0);
    assert!(moved("portcullis_audit_chain_head_seq", &[]) >= 2.0, "the login and its failure are audited");

    let logout = app.client.post(app.url("/v1/auth/logout")).bearer_auth(&tokens.access).go().await;
    assert_eq!(logout.status(), 204);
    assert_eq!(
        series(&scrape(&app).await, "portcullis_active_sessions", &[]),
        series(&before, "portcullis_active_sessions", &[])
    );
}
