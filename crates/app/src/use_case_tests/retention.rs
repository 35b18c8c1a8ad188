//! Retention as an operator runs it: what has been kept long enough goes, each purge is in the
//! audit trail, a dry run changes nothing, and what is still in use stays.

use super::*;
use crate::{Clock, RetentionSettings};

const DAY: i64 = 24 * 60 * MINUTE;

async fn audit_actions(app: &App) -> Vec<(String, Option<String>, String)> {
    let mut tx = read_tx(app).await;
    let events = tx.audit_events_after(0, 100_000).await.unwrap();
    events.into_iter().map(|e| (e.record.action, e.record.target_id, e.record.details)).collect()
}

#[tokio::test]
async fn what_was_kept_long_enough_is_purged_dry_runs_change_nothing_and_each_purge_is_audited() {
    let mut settings = testing::settings();
    settings.retention =
        RetentionSettings { ended_sessions_days: 30, security_events_days: 60, unverified_accounts_days: 30 };
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    signup(&t.app, BOB, PASSWORD).await;
    let bob = user_id_of(&t.app, BOB).await;
    let ended = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&ended.access).unwrap();
    t.app.logout(&alice).await.unwrap();
    let wrong = t.app.login(ALICE, secret("not it"), LoginMode::Bearer, &client()).await;
    assert!(matches!(wrong, Err(AppError::InvalidCredentials)));
    let nothing = t.app.run_retention(false).await.unwrap();
    assert_eq!(nothing, crate::RetentionReport::default(), "nothing is old enough yet");

    t.clock.advance_millis(31 * DAY);
    // Alice is in use: she logs in again (a live session, a recent login).
    let live = login_bearer(&t.app, ALICE, PASSWORD).await;
    let dry = t.app.run_retention(true).await.unwrap();
    assert_eq!((dry.ended_sessions, dry.security_events, dry.unverified_accounts), (1, 0, 1), "{dry:?}");
    assert_eq!(t.app.run_retention(true).await.unwrap(), dry, "a dry run deletes nothing");
    assert!(stored_session_exists(&t.app, ended.session).await);

    let purged = t.app.run_retention(false).await.unwrap();
    assert_eq!(purged, dry, "a run deletes what the dry run counted");
    assert!(!stored_session_exists(&t.app, ended.session).await, "the ended session is gone");
    assert!(stored_session_exists(&t.app, live.session).await, "the live one stays");
    assert_eq!(count_users(&t.app).await, 1, "Bob never confirmed nor logged in: his account is gone");
    assert!(user_id_of_opt(&t.app, ALICE).await.is_some());
    assert_eq!(t.app.run_retention(false).await.unwrap(), crate::RetentionReport::default());

    // Security events follow their own period.
    t.clock.advance_millis(30 * DAY);
    assert_eq!(t.app.run_retention(false).await.unwrap().security_events, 1, "the failed login's event");

    let actions = audit_actions(&t.app).await;
    let purges: Vec<_> = actions.iter().filter(|(a, _, _)| a == "retention.purged").collect();
    assert_eq!(purges.len(), 3, "one per policy that deleted anything: {purges:?}");
    for policy in ["ended_sessions", "unverified_accounts", "security_events"] {
        assert!(purges.iter().any(|(_, _, d)| d.contains(policy)), "{policy} in {purges:?}");
    }
    let bob = bob.to_string();
    assert!(
        actions.iter().any(|(a, target, d)| a == "user.deleted"
            && target.as_deref() == Some(bob.as_str())
            && d.contains("retention_unverified")),
        "Bob's deletion is recorded by his id"
    );
}

#[tokio::test]
async fn zero_days_keeps_everything_and_administrators_are_never_purged_as_unconfirmed() {
    let mut settings = testing::settings();
    settings.retention =
        RetentionSettings { ended_sessions_days: 0, security_events_days: 0, unverified_accounts_days: 1 };
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    t.app.logout(&alice).await.unwrap();
    let _ = t.app.login(ALICE, secret("not it"), LoginMode::Bearer, &client()).await;
    // An administrator created unconfirmed (by an owner, say) who has not logged in yet.
    signup(&t.app, BOB, PASSWORD).await;
    let bob = user_id_of(&t.app, BOB).await;
    let mut tx = t.app.store().begin().await.unwrap();
    tx.set_user_role(bob, portcullis_domain::BuiltinRole::Admin, t.clock.now()).await.unwrap();
    tx.commit().await.unwrap();

    t.clock.advance_millis(400 * DAY);
    assert_eq!(t.app.run_retention(false).await.unwrap(), crate::RetentionReport::default());
    assert!(stored_session_exists(&t.app, login.session).await);
    assert_eq!(count_users(&t.app).await, 2);
}

async fn stored_session_exists(app: &App, id: SessionId) -> bool {
    read_tx(app).await.session(id).await.unwrap().is_some()
}

async fn user_id_of_opt(app: &App, email: &str) -> Option<UserId> {
    app.find_user_by_email(read_tx(app).await.as_mut(), &Email::parse(email).unwrap())
        .await
        .unwrap()
        .map(|u| u.id)
}
