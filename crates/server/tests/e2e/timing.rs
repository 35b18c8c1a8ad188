//! Login timing does not reveal which accounts exist (ASVS 6.3.8, CONVENTIONS.md "Errors"): a login
//! for an unknown address verifies a dummy hash, so it costs what a wrong password costs.

use std::time::{Duration, Instant};

use crate::support::spawn_with;

/// One login attempt's wall time, with its status.
async fn timed_login(app: &crate::support::TestApp, email: &str) -> Duration {
    let body = serde_json::json!({ "email": email, "password": "not the password at all 123" });
    let started = Instant::now();
    let response = app.client.post(app.url("/v1/auth/login")).json(&body).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 401);
    elapsed
}

#[tokio::test]
async fn a_login_for_an_unknown_account_takes_as_long_as_a_wrong_password() {
    // The production hashing cost, so the hash dominates as it does for a real attacker.
    let app = spawn_with(|c| {
        c.password.argon2_memory_kib = 19 * 1024;
        c.password.argon2_iterations = 2;
    })
    .await;
    let signup =
        serde_json::json!({ "email": "known@example.com", "password": "correct horse battery staple" });
    let response = app.client.post(app.url("/v1/auth/signup")).json(&signup).send().await.unwrap();
    assert_eq!(response.status(), 202);

    // Warm up both paths. Then measure in back-to-back pairs, alternating which goes first, so that
    // the machine's noise (other tests share these cores) falls on both members of a pair alike; the
    // median of the per-pair ratios is then robust to bursts.
    for _ in 0..2 {
        timed_login(&app, "known@example.com").await;
        timed_login(&app, "unknown@example.com").await;
    }
    let mut ratios = Vec::new();
    for round in 0..31 {
        let (known, unknown) = if round % 2 == 0 {
            let k = timed_login(&app, "known@example.com").await;
            (k, timed_login(&app, "unknown@example.com").await)
        } else {
            let u = timed_login(&app, "unknown@example.com").await;
            (timed_login(&app, "known@example.com").await, u)
        };
        ratios.push(unknown.as_secs_f64() / known.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    assert!(
        (0.9..=1.1).contains(&ratio),
        "median unknown-account / wrong-password login time: {ratio:.3} (all: {ratios:.3?})"
    );
    app.stop().await;
}
