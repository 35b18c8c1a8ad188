//! Detection rules as an attacker trips them: credential stuffing from one address, bursts of 403
//! (privilege probing) and of 404 (scanning), and an administrator's login from a new address; each
//! automatic response is recorded and reversible.

use std::net::IpAddr;
use std::time::Duration;

use portcullis_domain::{BuiltinRole, IpRuleSource};

use super::admin::principal;
use super::*;
use crate::{DetectionSettings, ProbeResponse, StatusChange};

const STUFFER: &str = "198.51.100.66";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn client_at(address: &str) -> ClientContext {
    ClientContext { ip: Some(address.into()), user_agent: Some("detection-test".into()) }
}

/// Small thresholds: 3 accounts, 3 answers; the settings of each test adjust them.
async fn app_detecting(adjust: impl FnOnce(&mut DetectionSettings)) -> TestApp {
    let mut settings = testing::settings();
    let mut detection = DetectionSettings {
        stuffing_accounts: 3,
        probing_forbidden: 3,
        scanning_not_found: 3,
        ..DetectionSettings::default()
    };
    adjust(&mut detection);
    settings.detection = detection;
    let t = app_with_settings(settings).await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    t
}

#[tokio::test]
async fn many_accounts_failing_from_one_address_is_stuffing_and_blocks_it_until_an_admin_deletes_the_block() {
    let t = app_detecting(|_| {}).await;
    let owner = principal(&t.app, OWNER).await;
    // The same account three times is guessing, not stuffing.
    for _ in 0..3 {
        let _ = t.app.login(ALICE, secret("guess"), LoginMode::Bearer, &client_at(STUFFER)).await;
    }
    assert!(t.app.ip_allowed(ip(STUFFER), false).is_ok());
    for victim in ["v1@example.com", "v2@example.com"] {
        let _ = t.app.login(victim, secret("guess"), LoginMode::Bearer, &client_at(STUFFER)).await;
    }
    // Alice, v1 and v2: three distinct accounts.
    assert!(matches!(t.app.ip_allowed(ip(STUFFER), false), Err(AppError::IpDenied)));
    assert!(t.app.ip_allowed(ip("198.51.100.67"), false).is_ok(), "only that address");
    assert_eq!(testing::security_events(&t.app, SecurityEventKind::CredentialStuffing).await.len(), 1);
    assert_eq!(testing::security_events(&t.app, SecurityEventKind::IpBlocked).await.len(), 1);

    // Reversible: the block is a detection rule that an administrator deletes.
    let rules = t.app.admin_list_ip_rules(&owner).await.unwrap();
    let block = rules.iter().find(|r| r.source == IpRuleSource::Detection).expect("a detection rule");
    assert!(block.expires_at.is_some(), "an automatic block always expires");
    t.app.admin_delete_ip_rule(&owner, None, &block.id.to_string()).await.unwrap();
    assert!(t.app.ip_allowed(ip(STUFFER), false).is_ok());
}

#[tokio::test]
async fn stuffing_with_no_block_configured_is_recorded_and_blocks_nothing() {
    let t = app_detecting(|d| d.stuffing_block = Duration::ZERO).await;
    for victim in ["v1@example.com", "v2@example.com", "v3@example.com", "v4@example.com"] {
        let _ = t.app.login(victim, secret("guess"), LoginMode::Bearer, &client_at(STUFFER)).await;
    }
    assert!(t.app.ip_allowed(ip(STUFFER), false).is_ok());
    let events = testing::security_events(&t.app, SecurityEventKind::CredentialStuffing).await;
    assert_eq!(events.len(), 1, "once per window");
    assert!(testing::security_events(&t.app, SecurityEventKind::IpBlocked).await.is_empty());
}

#[tokio::test]
async fn a_burst_of_403_is_probing_and_the_configured_response_ends_the_session() {
    let t = app_detecting(|d| d.probing_response = ProbeResponse::RevokeSession).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    for _ in 0..2 {
        t.app.observe_answer(ip(STUFFER), Some(alice), 403).await.unwrap();
    }
    assert!(t.app.authenticate_bearer(&login.access).is_ok(), "below the threshold nothing happens");
    t.app.observe_answer(ip(STUFFER), Some(alice), 403).await.unwrap();
    assert!(t.app.authenticate_bearer(&login.access).is_err(), "the session is over");
    let events = testing::security_events(&t.app, SecurityEventKind::PrivilegeProbing).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_id, Some(login.user));
    assert_eq!(events[0].details["response"], "session revoked");
    // The response is an event of its own.
    let responses = testing::security_events(&t.app, SecurityEventKind::AutomaticResponse).await;
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].details["response"], "session_revoked");
    assert_eq!(responses[0].session_id, Some(login.session));
}

#[tokio::test]
async fn locking_an_account_for_probing_is_undone_by_an_unlock_and_never_holds_an_owner() {
    let t = app_detecting(|d| d.probing_response = ProbeResponse::LockAccount).await;
    let owner = principal(&t.app, OWNER).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = principal(&t.app, ALICE).await;
    for _ in 0..3 {
        t.app.observe_answer(ip(STUFFER), Some(alice), 403).await.unwrap();
    }
    let refused = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
    assert!(matches!(refused, Err(AppError::InvalidCredentials)), "on hold");
    let responses = testing::security_events(&t.app, SecurityEventKind::AutomaticResponse).await;
    assert_eq!(responses[0].details["response"], "account_held");
    t.app.admin_set_status(&owner, &alice.user_id.to_string(), StatusChange::Unlock).await.unwrap();
    login_bearer(&t.app, ALICE, PASSWORD).await;

    // An owner who probes is signed out, not held: someone must remain who may unlock.
    for _ in 0..3 {
        t.app.observe_answer(ip(STUFFER), Some(owner), 403).await.unwrap();
    }
    login_bearer(&t.app, OWNER, PASSWORD).await;
    let responses = testing::security_events(&t.app, SecurityEventKind::AutomaticResponse).await;
    assert_eq!(responses[0].details["response"], "sessions_revoked", "newest first: the owner's");
}

#[tokio::test]
async fn a_burst_of_404_from_one_address_is_scanning_and_may_block_it() {
    let t = app_detecting(|d| d.scanning_block = Duration::from_secs(600)).await;
    for _ in 0..3 {
        t.app.observe_answer(ip(STUFFER), None, 404).await.unwrap();
    }
    assert!(matches!(t.app.ip_allowed(ip(STUFFER), false), Err(AppError::IpDenied)));
    assert_eq!(testing::security_events(&t.app, SecurityEventKind::Scanning).await.len(), 1);
    // Other statuses count for nothing.
    for _ in 0..10 {
        t.app.observe_answer(ip("198.51.100.70"), None, 401).await.unwrap();
    }
    assert!(t.app.ip_allowed(ip("198.51.100.70"), false).is_ok());
    // The block expires with its time.
    t.clock.advance_millis(601 * SECOND);
    t.app.reload_ip_rules().await.unwrap();
    assert!(t.app.ip_allowed(ip(STUFFER), false).is_ok());
}

#[tokio::test]
async fn an_administrators_login_from_a_new_address_is_an_event_but_a_first_login_or_a_known_address_is_not()
{
    let t = app_detecting(|_| {}).await;
    let at = |address: &str| {
        let app = t.app.clone();
        let client = client_at(address);
        async move { app.login(OWNER, secret(PASSWORD), LoginMode::Bearer, &client).await.unwrap() }
    };
    // The test app's fixture logged the owner in once from nowhere in particular (no address).
    at("192.0.2.1").await;
    at("192.0.2.1").await;
    assert!(testing::security_events(&t.app, SecurityEventKind::AdminLoginFromNewIp).await.is_empty());
    at("203.0.113.99").await;
    let events = testing::security_events(&t.app, SecurityEventKind::AdminLoginFromNewIp).await;
    assert_eq!(events.len(), 1);
    // A member's logins from anywhere are nobody's concern here.
    signup(&t.app, ALICE, PASSWORD).await;
    for address in ["192.0.2.7", "192.0.2.8"] {
        t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client_at(address)).await.unwrap();
    }
    assert_eq!(testing::security_events(&t.app, SecurityEventKind::AdminLoginFromNewIp).await.len(), 1);
}
