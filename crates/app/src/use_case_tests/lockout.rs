//! Account lockout as a password guesser meets it: the Nth failure locks the identifier (known or not,
//! alike), the lock lifts with time and doubles when earned again, and neither a guesser nor the lock
//! keeps the owner from the reset by email; an administrator's unlock ends it and is recorded.

use portcullis_domain::{BuiltinRole, LockoutPolicy};

use super::admin::principal;
use super::*;
use crate::StatusChange;

/// Three failures lock for 15 minutes (doubling, at most an hour).
async fn app_locking_after_three() -> TestApp {
    let mut settings = testing::settings();
    settings.lockout = LockoutPolicy {
        max_failures: 3,
        window_millis: 15 * MINUTE,
        lock_millis: 15 * MINUTE,
        max_lock_millis: HOUR,
    };
    app_with_settings(settings).await
}

/// A login attempt from the guesser's address (never one the account logged in from).
async fn attempt(app: &App, email: &str, password: &str) -> Result<(), AppError> {
    app.login(email, secret(password), LoginMode::Bearer, &client_at(GUESSER)).await.map(|_| ())
}

/// The address the account's owner usually logs in from.
const HOME: &str = "192.0.2.50";
const GUESSER: &str = "198.51.100.9";

fn client_at(address: &str) -> ClientContext {
    ClientContext { ip: Some(address.into()), user_agent: Some("lockout-test".into()) }
}

async fn attempt_from_home(app: &App, email: &str, password: &str) -> Result<(), AppError> {
    app.login(email, secret(password), LoginMode::Bearer, &client_at(HOME)).await.map(|_| ())
}

fn locked_for(result: Result<(), AppError>) -> u64 {
    match result {
        Err(AppError::LoginLocked { retry_after_secs }) => retry_after_secs,
        other => panic!("expected a lockout, got {other:?}"),
    }
}

#[tokio::test]
async fn the_third_failure_locks_the_password_path_known_and_unknown_alike_until_its_time_is_up() {
    let t = app_locking_after_three().await;
    signup(&t.app, ALICE, PASSWORD).await;
    for target in [ALICE, "nobody@example.com"] {
        for _ in 0..3 {
            assert!(matches!(
                attempt(&t.app, target, "wrong guess").await,
                Err(AppError::InvalidCredentials)
            ));
        }
        // Even the right password is refused now, before it is checked, with the time left.
        assert_eq!(locked_for(attempt(&t.app, target, PASSWORD).await), 15 * 60, "{target}");
    }
    let alice = user_id_of(&t.app, ALICE).await;
    assert!(event_kinds_of(&t.app, alice).await.contains(&SecurityEventKind::AccountLockedOut));
    assert_eq!(testing::security_events(&t.app, SecurityEventKind::AccountLockedOut).await.len(), 2);

    t.clock.advance_millis(15 * MINUTE);
    attempt(&t.app, ALICE, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_second_lockout_lasts_twice_as_long_and_a_successful_login_starts_the_doubling_again() {
    let t = app_locking_after_three().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let lock = |t: &TestApp| {
        let app = t.app.clone();
        async move {
            for _ in 0..3 {
                let _ = attempt(&app, ALICE, "wrong guess").await;
            }
            locked_for(attempt(&app, ALICE, PASSWORD).await)
        }
    };
    assert_eq!(lock(&t).await, 15 * 60);
    t.clock.advance_millis(15 * MINUTE);
    assert_eq!(lock(&t).await, 30 * 60);
    t.clock.advance_millis(30 * MINUTE);
    assert_eq!(lock(&t).await, 60 * 60);
    t.clock.advance_millis(60 * MINUTE);
    assert_eq!(lock(&t).await, 60 * 60, "capped at the maximum");
    t.clock.advance_millis(60 * MINUTE);
    attempt_from_home(&t.app, ALICE, PASSWORD).await.unwrap();
    assert_eq!(lock(&t).await, 15 * 60, "a success forgot the earlier lockouts");
}

#[tokio::test]
async fn the_owner_logs_in_through_a_lockout_from_an_address_the_account_has_used_before() {
    let t = app_locking_after_three().await;
    signup(&t.app, ALICE, PASSWORD).await;
    attempt_from_home(&t.app, ALICE, PASSWORD).await.unwrap();
    for _ in 0..3 {
        let _ = attempt(&t.app, ALICE, "wrong guess").await;
    }
    // The guesser is locked out; the owner at home is not, and the guesser's address is not helped.
    locked_for(attempt(&t.app, ALICE, PASSWORD).await);
    attempt_from_home(&t.app, ALICE, PASSWORD).await.unwrap();
    // A wrong password from home is still only a wrong password (no lockout answer there).
    assert!(matches!(attempt_from_home(&t.app, ALICE, "wrong").await, Err(AppError::InvalidCredentials)));
    // An unknown account has no known address: the lockout answer stays the same for both.
    for _ in 0..3 {
        let _ = attempt(&t.app, "nobody@example.com", "guess").await;
    }
    locked_for(attempt(&t.app, "nobody@example.com", PASSWORD).await);
}

#[tokio::test]
async fn a_guesser_who_spends_the_identifiers_budget_cannot_keep_the_reset_mail_from_the_owner() {
    let mut settings = testing::settings();
    settings.rate_limits.account = crate::RatePolicy::per_minute(2);
    settings.rate_limits.reset_mail =
        crate::RatePolicy { limit: 2, period: std::time::Duration::from_secs(3600) };
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    t.clock.advance_millis(MINUTE);
    for _ in 0..5 {
        let _ = attempt(&t.app, ALICE, "wrong guess").await;
    }
    // The login budget is spent, yet the reset is never refused ...
    for _ in 0..4 {
        t.app.forgot_password(ALICE, &client_at(GUESSER)).await.unwrap();
    }
    // ... only its mail is capped: two sent, each with a working link; the newest still works.
    let resets: Vec<_> =
        sent_mail(&t.mail).await.into_iter().filter(|m| m.subject.starts_with("Reset")).collect();
    assert_eq!(resets.len(), 2);
    let token = link_token(resets.last().unwrap());
    t.app.reset_password(&token, secret(NEW_PASSWORD)).await.unwrap();
}

#[tokio::test]
async fn a_guesser_cannot_keep_the_owner_from_resetting_the_password_by_email_which_ends_the_lockout() {
    let t = app_locking_after_three().await;
    signup(&t.app, ALICE, PASSWORD).await;
    for _ in 0..3 {
        let _ = attempt(&t.app, ALICE, "wrong guess").await;
    }
    locked_for(attempt(&t.app, ALICE, PASSWORD).await);

    t.app.forgot_password(ALICE, &client()).await.unwrap();
    let token = link_token(&email_starting(&t.mail, "Reset").await);
    t.app.reset_password(&token, secret(NEW_PASSWORD)).await.unwrap();
    attempt(&t.app, ALICE, NEW_PASSWORD).await.unwrap();
}

#[tokio::test]
async fn an_administrators_unlock_ends_the_lockout_and_is_recorded_and_a_member_cannot_unlock() {
    let t = app_locking_after_three().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    t.app.create_user_as_operator(BOB, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    signup(&t.app, ALICE, PASSWORD).await;
    let owner = principal(&t.app, OWNER).await;
    let bob = principal(&t.app, BOB).await;
    let alice = user_id_of(&t.app, ALICE).await;
    for _ in 0..3 {
        let _ = attempt(&t.app, ALICE, "wrong guess").await;
    }
    locked_for(attempt(&t.app, ALICE, PASSWORD).await);

    let refused = t.app.admin_set_status(&bob, &alice.to_string(), StatusChange::Unlock).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_) | AppError::NotFound)), "{refused:?}");
    locked_for(attempt(&t.app, ALICE, PASSWORD).await);

    t.app.admin_set_status(&owner, &alice.to_string(), StatusChange::Unlock).await.unwrap();
    attempt(&t.app, ALICE, PASSWORD).await.unwrap();
    let cleared = testing::security_events(&t.app, SecurityEventKind::LockoutCleared).await;
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].user_id, Some(alice));
    assert_eq!(cleared[0].details["by"], owner.user_id.to_string());
}
