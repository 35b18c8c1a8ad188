//! The metrics as an operator reads them: each series moves when the thing it counts happens, and
//! the scrape rules admit only who they name.

use std::net::IpAddr;

use super::*;
use crate::{Clock, MetricsAccess, RatePolicy};

/// The value of one series in the rendered exposition, matched by name and label set (in any
/// order); `None` when the series is absent.
pub(super) async fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = app.render_metrics().await;
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, mut found) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}').split(',').map(str::to_owned).collect()),
            None => (series, Vec::new()),
        };
        found.sort();
        (series_name == name && found == wanted).then(|| value.parse().ok()).flatten()
    })
}

/// [`metric`], absent counted as zero (a counter nothing has moved yet).
pub(super) async fn count(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(app, name, labels).await.unwrap_or(0.0)
}

#[tokio::test]
async fn logins_are_counted_by_result_and_failures_as_security_events() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    login_bearer(&t.app, ALICE, PASSWORD).await;
    let wrong = t.app.login(ALICE, secret("not the password"), LoginMode::Bearer, &client()).await;
    assert!(matches!(wrong, Err(AppError::InvalidCredentials)), "{wrong:?}");
    let unknown = t.app.login("nobody@example.com", secret(PASSWORD), LoginMode::Bearer, &client()).await;
    assert!(matches!(unknown, Err(AppError::InvalidCredentials)), "{unknown:?}");

    assert_eq!(count(&t.app, "portcullis_logins_total", &[("result", "success")]).await, 1.0);
    assert_eq!(count(&t.app, "portcullis_logins_total", &[("result", "failure")]).await, 2.0);
    let failed = [("kind", "login_failed"), ("severity", "low")];
    assert_eq!(count(&t.app, "portcullis_security_events_total", &failed).await, 2.0);
}

#[tokio::test]
async fn a_lockout_and_refused_logins_are_counted() {
    let mut settings = testing::settings();
    settings.lockout.max_failures = 2;
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    for _ in 0..2 {
        let _ = t.app.login(ALICE, secret("wrong"), LoginMode::Bearer, &ClientContext::default()).await;
    }
    let locked = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &ClientContext::default()).await;
    assert!(matches!(locked, Err(AppError::LoginLocked { .. })), "{locked:?}");
    assert_eq!(count(&t.app, "portcullis_lockouts_total", &[]).await, 1.0);
    assert_eq!(count(&t.app, "portcullis_logins_total", &[("result", "failure")]).await, 3.0);
    let locked_out = [("kind", "account_locked_out"), ("severity", "medium")];
    assert_eq!(count(&t.app, "portcullis_security_events_total", &locked_out).await, 1.0);
}

#[tokio::test]
async fn requests_refused_by_a_rate_limit_are_counted_by_policy() {
    let mut settings = testing::settings();
    settings.rate_limits.auth_ip = RatePolicy::per_minute(1);
    settings.rate_limits.account = RatePolicy::per_minute(1);
    let t = app_with_settings(settings).await;
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    t.app.spend_client_budget(ip, true).await.unwrap();
    let refused = t.app.spend_client_budget(ip, true).await;
    assert!(matches!(refused, Err(AppError::RateLimited(_))), "{refused:?}");
    assert_eq!(count(&t.app, "portcullis_rate_limited_requests_total", &[("policy", "auth_ip")]).await, 1.0);
    // The identifier's budget, through a login: refused before any work, counted as refused.
    let _ = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
    let refused = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
    assert!(matches!(refused, Err(AppError::RateLimited(_))), "{refused:?}");
    assert_eq!(count(&t.app, "portcullis_rate_limited_requests_total", &[("policy", "account")]).await, 1.0);
    assert_eq!(count(&t.app, "portcullis_logins_total", &[("result", "refused")]).await, 1.0);
    assert_eq!(count(&t.app, "portcullis_rate_limited_requests_total", &[("policy", "ip")]).await, 0.0);
}

#[tokio::test]
async fn gauges_read_at_scrape_time_follow_the_database() {
    let t = testing::app().await;
    assert_eq!(metric(&t.app, "portcullis_active_sessions", &[]).await, Some(0.0));
    let head_before = metric(&t.app, "portcullis_audit_chain_head_seq", &[]).await.unwrap();
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let other = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert_eq!(metric(&t.app, "portcullis_active_sessions", &[]).await, Some(2.0));
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    t.app.logout(&alice).await.unwrap();
    assert_eq!(metric(&t.app, "portcullis_active_sessions", &[]).await, Some(1.0));
    // The last verification appears once one has run, with its result (before the clock jumps:
    // events a year old without a checkpoint are themselves a finding).
    assert_eq!(metric(&t.app, "portcullis_audit_last_verification_timestamp_seconds", &[]).await, None);
    t.app.run_audit_verification().await.unwrap();
    let at = metric(&t.app, "portcullis_audit_last_verification_timestamp_seconds", &[]).await.unwrap();
    assert_eq!(at, t.clock.now().as_unix_millis() as f64 / 1000.0);
    assert_eq!(metric(&t.app, "portcullis_audit_chain_intact", &[]).await, Some(1.0));

    // Past its absolute lifetime a session no longer counts, revoked or not.
    t.clock.advance_millis(400 * 24 * 60 * MINUTE);
    assert_eq!(metric(&t.app, "portcullis_active_sessions", &[]).await, Some(0.0));
    drop(other);
    let head_after = metric(&t.app, "portcullis_audit_chain_head_seq", &[]).await.unwrap();
    assert!(
        head_after >= head_before + 3.0,
        "signup and two logins and a logout are audited: {head_before} → {head_after}"
    );

    // What the process knows without the database.
    assert_eq!(metric(&t.app, "portcullis_password_hash_queue_depth", &[]).await, Some(0.0));
    assert_eq!(metric(&t.app, "portcullis_password_hash_shed_total", &[]).await, Some(0.0));
    assert_eq!(metric(&t.app, "portcullis_build_info", &[("version", "test")]).await, Some(1.0));
    for pool in ["write", "read"] {
        let max = metric(&t.app, "portcullis_db_pool_max_connections", &[("pool", pool)]).await;
        assert!(max.is_some_and(|m| m >= 1.0), "{pool}: {max:?}");
        let open = count(&t.app, "portcullis_db_pool_connections", &[("pool", pool), ("state", "idle")])
            .await
            + count(&t.app, "portcullis_db_pool_connections", &[("pool", pool), ("state", "in_use")]).await;
        assert!(open <= max.unwrap(), "{pool}: {open} open of {max:?}");
    }
}

fn access(allow: &[&str], token: Option<&str>) -> MetricsAccess {
    MetricsAccess {
        allow: allow.iter().map(|net| net.parse().unwrap()).collect(),
        token: token.map(|t| SecretString::from(t.to_owned())),
    }
}

#[tokio::test]
async fn the_scrape_rules_admit_only_the_named_addresses_and_the_exact_token() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let token = "scrape-token-0123456789abcdef0123456789";
    for (rules, from, bearer, expected) in [
        (access(&["10.0.0.0/8"], None), "10.1.2.3", None, Ok(())),
        (access(&["10.0.0.0/8"], None), "192.0.2.1", None, Err("not found")),
        (access(&[], Some(token)), "192.0.2.1", Some(token), Ok(())),
        (access(&[], Some(token)), "192.0.2.1", None, Err("unauthenticated")),
        (
            access(&[], Some(token)),
            "192.0.2.1",
            Some("scrape-token-0123456789abcdef012345678"),
            Err("unauthenticated"),
        ),
        (access(&[], Some(token)), "192.0.2.1", Some(&format!("{token}0")), Err("unauthenticated")),
        (access(&[], Some(token)), "192.0.2.1", Some(""), Err("unauthenticated")),
        // Both set: both must pass; the address is checked first so outsiders learn nothing.
        (access(&["10.0.0.0/8"], Some(token)), "10.1.2.3", Some(token), Ok(())),
        (access(&["10.0.0.0/8"], Some(token)), "10.1.2.3", None, Err("unauthenticated")),
        (access(&["10.0.0.0/8"], Some(token)), "192.0.2.1", Some(token), Err("not found")),
        (access(&[], None), "192.0.2.1", None, Ok(())),
    ] {
        let mut settings = testing::settings();
        settings.metrics = rules.clone();
        let t = app_with_settings(settings).await;
        let got = match t.app.authorize_metrics_scrape(ip(from), bearer) {
            Ok(()) => Ok(()),
            Err(AppError::NotFound) => Err("not found"),
            Err(AppError::Unauthenticated) => Err("unauthenticated"),
            Err(other) => panic!("unexpected {other:?}"),
        };
        assert_eq!(got, expected, "{rules:?} from {from} with {bearer:?}");
        assert!(!format!("{rules:?}").contains(token), "the token is never printed");
    }
}
