//! Multi-factor login as a client and an attacker meet it: TOTP (codes computed independently with
//! totp-rs from the secret the enrollment showed), recovery codes, passkeys through webauthn-rs's
//! software authenticator, the login challenge, lockout, policy and step-up.

use portcullis_domain::mfa::RECOVERY_CODE_ALPHABET;
use portcullis_domain::{BuiltinRole, MfaMethod, SecurityEventKind};
use secrecy::ExposeSecret;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use super::*;
use crate::{Clock, MfaChallenge, SecondFactor, TotpEnrollment};

/// The public URL of the test settings: the origin passkeys are bound to.
const ORIGIN: &str = "https://id.example.com";

fn code_at(enrollment: &TotpEnrollment, at_millis: i64) -> SecretString {
    let seed = totp_rs::Secret::try_from_base32(enrollment.secret.expose_secret()).unwrap();
    let totp = totp_rs::Builder::new().with_secret(seed.as_bytes().to_vec()).build().unwrap();
    secret(&totp.generate(u64::try_from(at_millis / 1000).unwrap()).to_string())
}

fn now(t: &TestApp) -> i64 {
    t.clock.now().as_unix_millis()
}

/// Alice, logged in with a confirmed authenticator (and her recovery codes), the clock one step on
/// so the confirming code is not the next login's.
struct Enrolled {
    t: TestApp,
    alice: Principal,
    totp: TotpEnrollment,
    codes: Vec<String>,
}

async fn enrolled() -> Enrolled {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&alice.access).unwrap();
    let totp = t.app.enroll_totp(&alice, "Phone").await.unwrap();
    let codes = t
        .app
        .confirm_totp(&alice, &totp.id.to_string(), &code_at(&totp, now(&t)))
        .await
        .unwrap()
        .expect("the first factor comes with recovery codes");
    let codes: Vec<String> = codes.codes().map(str::to_owned).collect();
    t.clock.advance_millis(30 * SECOND);
    Enrolled { t, alice, totp, codes }
}

async fn challenge(app: &App, mode: LoginMode) -> MfaChallenge {
    match app.login(ALICE, secret(PASSWORD), mode, &client()).await.unwrap() {
        LoginOutcome::MfaRequired(challenge) => challenge,
        other => panic!("expected a second-factor challenge, got {other:?}"),
    }
}

async fn verify(
    e: &Enrolled,
    challenge: &MfaChallenge,
    factor: SecondFactor,
) -> Result<LoginOutcome, AppError> {
    e.t.app.complete_login_mfa(challenge.token.expose(), factor, true, &client()).await
}

fn claims_of(outcome: &LoginOutcome) -> AccessClaims {
    let LoginOutcome::Authenticated { credentials: IssuedCredentials::Bearer { access_token, .. }, .. } =
        outcome
    else {
        panic!("expected bearer credentials, got {outcome:?}")
    };
    let payload = access_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_password_alone_opens_no_session_for_an_account_with_an_authenticator() {
    let e = enrolled().await;
    let challenge = challenge(&e.t.app, LoginMode::Bearer).await;
    assert_eq!(challenge.methods, vec![MfaMethod::Totp, MfaMethod::RecoveryCode]);
    assert_eq!(challenge.expires_in_secs, 300);
    let outcome = verify(&e, &challenge, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await.unwrap();
    let claims = claims_of(&outcome);
    assert_eq!(claims.amr, vec!["otp", "pwd", "mfa"]);
    assert_eq!(claims.auth_time, Some(now(&e.t) / 1000));
    assert!(!claims.mfa_enrollment_required);
}

#[tokio::test]
async fn a_totp_code_is_accepted_once_and_only_within_one_step_of_skew() {
    let e = enrolled().await;
    let at = now(&e.t);
    let first = challenge(&e.t.app, LoginMode::Bearer).await;
    verify(&e, &first, SecondFactor::Totp(code_at(&e.totp, at))).await.unwrap();
    // The same code again, on a fresh challenge, inside its window: a replay.
    let second = challenge(&e.t.app, LoginMode::Bearer).await;
    let replay = verify(&e, &second, SecondFactor::Totp(code_at(&e.totp, at))).await;
    assert!(matches!(replay, Err(AppError::InvalidSecondFactor)), "{replay:?}");
    // An older step than one already accepted is a replay too, even if within the skew.
    let older = verify(&e, &second, SecondFactor::Totp(code_at(&e.totp, at - 30 * SECOND))).await;
    assert!(matches!(older, Err(AppError::InvalidSecondFactor)), "{older:?}");
    // Two steps ahead is outside the skew; one step ahead is inside it.
    let far = verify(&e, &second, SecondFactor::Totp(code_at(&e.totp, at + 60 * SECOND))).await;
    assert!(matches!(far, Err(AppError::InvalidSecondFactor)), "{far:?}");
    verify(&e, &second, SecondFactor::Totp(code_at(&e.totp, at + 30 * SECOND))).await.unwrap();
    for shape in ["12345", "1234567", "abcdef", ""] {
        let third = challenge(&e.t.app, LoginMode::Bearer).await;
        let refused = verify(&e, &third, SecondFactor::Totp(secret(shape))).await;
        assert!(matches!(refused, Err(AppError::InvalidSecondFactor)), "{shape:?}: {refused:?}");
    }
}

#[tokio::test]
async fn a_challenge_is_single_use_expires_and_closes_after_five_wrong_answers() {
    let e = enrolled().await;
    let used = challenge(&e.t.app, LoginMode::Bearer).await;
    verify(&e, &used, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await.unwrap();
    e.t.clock.advance_millis(30 * SECOND);
    let reuse = verify(&e, &used, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await;
    assert!(matches!(reuse, Err(AppError::InvalidToken)), "{reuse:?}");

    let expiring = challenge(&e.t.app, LoginMode::Bearer).await;
    e.t.clock.advance_millis(5 * MINUTE);
    let late = verify(&e, &expiring, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await;
    assert!(matches!(late, Err(AppError::InvalidToken)), "{late:?}");
    // Expired challenges are swept (the server does so each minute).
    assert!(e.t.app.purge_mfa_challenges().await.unwrap() >= 1);

    let guessed = challenge(&e.t.app, LoginMode::Bearer).await;
    for _ in 0..5 {
        let wrong = verify(&e, &guessed, SecondFactor::Totp(secret("000000"))).await;
        assert!(matches!(wrong, Err(AppError::InvalidSecondFactor)), "{wrong:?}");
    }
    let closed = verify(&e, &guessed, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await;
    assert!(matches!(closed, Err(AppError::InvalidToken)), "{closed:?}");
    let forged =
        e.t.app.complete_login_mfa("not-a-challenge", SecondFactor::Totp(secret("1")), true, &client()).await;
    assert!(matches!(forged, Err(AppError::InvalidToken)));
}

#[tokio::test]
async fn wrong_second_factors_count_toward_the_lockout_and_raise_security_events() {
    let mut settings = testing::settings();
    settings.lockout.max_failures = 3;
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let totp = t.app.enroll_totp(&alice, "Phone").await.unwrap();
    t.app.confirm_totp(&alice, &totp.id.to_string(), &code_at(&totp, now(&t))).await.unwrap();
    t.clock.advance_millis(30 * SECOND);
    let e = Enrolled { t, alice, totp, codes: Vec::new() };
    for _ in 0..3 {
        let c = challenge(&e.t.app, LoginMode::Bearer).await;
        let wrong = verify(&e, &c, SecondFactor::Totp(secret("000000"))).await;
        assert!(matches!(wrong, Err(AppError::InvalidSecondFactor)), "{wrong:?}");
    }
    // Locked now: the right password and the right code are refused alike, from a new address.
    let locked = e.t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &ClientContext::default()).await;
    assert!(matches!(locked, Err(AppError::LoginLocked { .. })), "{locked:?}");
    let kinds = event_kinds_of(&e.t.app, e.alice.user_id).await;
    assert_eq!(kinds.iter().filter(|k| **k == SecurityEventKind::MfaFailed).count(), 3, "{kinds:?}");
    assert!(kinds.contains(&SecurityEventKind::AccountLockedOut), "{kinds:?}");
    // And in the metrics: three wrong codes, one lockout, three passwords that asked for a factor
    // (and the setup login), one refused login.
    use super::metrics::count;
    let app = &e.t.app;
    assert_eq!(count(app, "portcullis_mfa_failures_total", &[("method", "totp")]).await, 3.0);
    assert_eq!(count(app, "portcullis_mfa_failures_total", &[("method", "recovery_code")]).await, 0.0);
    assert_eq!(count(app, "portcullis_lockouts_total", &[]).await, 1.0);
    assert_eq!(count(app, "portcullis_logins_total", &[("result", "mfa_required")]).await, 3.0);
    assert_eq!(count(app, "portcullis_logins_total", &[("result", "failure")]).await, 1.0);
    assert_eq!(count(app, "portcullis_logins_total", &[("result", "success")]).await, 1.0);
}

#[tokio::test]
async fn a_recovery_code_logs_in_once_tells_the_owner_and_regenerating_voids_the_old_set() {
    let e = enrolled().await;
    assert_eq!(e.codes.len(), 10);
    // Seven groups of four symbols of the 32-symbol alphabet: 140 random bits each, all distinct.
    for code in &e.codes {
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.len(), 7, "{code}");
        assert!(groups.iter().all(|g| g.len() == 4), "{code}");
        assert!(code.bytes().filter(|b| *b != b'-').all(|b| RECOVERY_CODE_ALPHABET.contains(&b)), "{code}");
    }
    let distinct: std::collections::BTreeSet<&String> = e.codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    let first = challenge(&e.t.app, LoginMode::Bearer).await;
    // Typed in lower case and without dashes still counts.
    let typed = e.codes[0].to_lowercase().replace('-', "");
    let outcome = verify(&e, &first, SecondFactor::RecoveryCode(secret(&typed))).await.unwrap();
    assert_eq!(claims_of(&outcome).amr, vec!["otp", "pwd", "mfa"]);
    let again = challenge(&e.t.app, LoginMode::Bearer).await;
    let spent = verify(&e, &again, SecondFactor::RecoveryCode(secret(&e.codes[0]))).await;
    assert!(matches!(spent, Err(AppError::InvalidSecondFactor)), "{spent:?}");
    let mail = sent_mail(&e.t.mail).await;
    assert!(mail.iter().any(|m| m.subject == "A recovery code was used" && m.to.as_str() == ALICE));
    assert!(event_kinds_of(&e.t.app, e.alice.user_id).await.contains(&SecurityEventKind::RecoveryCodeUsed));

    let fresh = e.t.app.regenerate_recovery_codes(&e.alice).await.unwrap();
    assert!(sent_mail(&e.t.mail).await.iter().any(|m| m.subject == "New recovery codes were made"));
    let fresh: Vec<String> = fresh.codes().map(str::to_owned).collect();
    let old = verify(&e, &again, SecondFactor::RecoveryCode(secret(&e.codes[1]))).await;
    assert!(matches!(old, Err(AppError::InvalidSecondFactor)), "{old:?}");
    verify(&e, &again, SecondFactor::RecoveryCode(secret(&fresh[0]))).await.unwrap();
}

#[tokio::test]
async fn an_unconfirmed_authenticator_is_no_factor_and_a_wrong_first_code_confirms_nothing() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let totp = t.app.enroll_totp(&alice, "Phone").await.unwrap();
    assert!(totp.otpauth_uri.expose_secret().starts_with("otpauth://totp/Portcullis:alice%40example.com?"));
    assert!(totp.qr_svg.expose_secret().contains("<svg"));
    // Unconfirmed: the password alone still logs in.
    login_bearer(&t.app, ALICE, PASSWORD).await;
    let wrong = t.app.confirm_totp(&alice, &totp.id.to_string(), &secret("000000")).await;
    assert!(
        matches!(wrong, Err(AppError::Validation(ref issues)) if issues[0].field == "/code"),
        "{wrong:?}"
    );
    // Another account cannot confirm (or see) it.
    signup(&t.app, BOB, PASSWORD).await;
    let bob = login_bearer(&t.app, BOB, PASSWORD).await;
    let bob = t.app.authenticate_bearer(&bob.access).unwrap();
    let theirs = t.app.confirm_totp(&bob, &totp.id.to_string(), &code_at(&totp, now(&t))).await;
    assert!(matches!(theirs, Err(AppError::NotFound)), "{theirs:?}");
    assert!(t.app.mfa_factors(&bob).await.unwrap().devices.is_empty());
    let removed = t.app.remove_totp(&bob, &totp.id.to_string()).await;
    assert!(matches!(removed, Err(AppError::NotFound)), "{removed:?}");
}

#[tokio::test]
async fn the_totp_seed_is_stored_sealed() {
    let e = enrolled().await;
    let mut tx = read_tx(&e.t.app).await;
    let devices = tx.totp_devices_of(e.alice.user_id).await.unwrap();
    tx.rollback().await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.totp.secret.expose_secret()).unwrap();
    let stored = &devices[0].secret.0;
    assert!(!stored.windows(seed.as_bytes().len()).any(|w| w == seed.as_bytes()));
    assert!(!String::from_utf8_lossy(stored).contains(e.totp.secret.expose_secret()));
}

#[tokio::test]
async fn sensitive_actions_need_a_recent_authentication_at_the_accounts_level() {
    let e = enrolled().await;
    // Enrolling made the session multi-factor: it may manage factors for 10 minutes.
    e.t.app.regenerate_recovery_codes(&e.alice).await.unwrap();
    e.t.clock.advance_millis(11 * MINUTE);
    let stale = e.t.app.enroll_totp(&e.alice, "Tablet").await;
    assert!(matches!(stale, Err(AppError::ReauthenticationRequired { max_age_secs: 600 })), "{stale:?}");
    let stale = e.t.app.create_my_api_key(&e.alice, &api_key_request()).await;
    assert!(matches!(stale, Err(AppError::ReauthenticationRequired { .. })), "{stale:?}");
    // The password alone is not the account's level any more.
    let alone = e.t.app.reauthenticate(&e.alice, Some(secret(PASSWORD)), None, None, &client()).await;
    assert!(matches!(alone, Err(AppError::Validation(ref i)) if i[0].field == "/method"), "{alone:?}");
    let wrong = e.t.app.reauthenticate(&e.alice, Some(secret(NEW_PASSWORD)), None, None, &client()).await;
    assert!(matches!(wrong, Err(AppError::InvalidCredentials)), "{wrong:?}");
    let bad_code = SecondFactor::Totp(secret("000000"));
    let wrong =
        e.t.app.reauthenticate(&e.alice, Some(secret(PASSWORD)), Some(bad_code), None, &client()).await;
    assert!(matches!(wrong, Err(AppError::InvalidSecondFactor)), "{wrong:?}");
    let code = SecondFactor::Totp(code_at(&e.totp, now(&e.t)));
    e.t.app.reauthenticate(&e.alice, Some(secret(PASSWORD)), Some(code), None, &client()).await.unwrap();
    e.t.app.enroll_totp(&e.alice, "Tablet").await.unwrap();
    e.t.app.create_my_api_key(&e.alice, &api_key_request()).await.unwrap();
}

fn api_key_request() -> crate::NewApiKey {
    crate::NewApiKey {
        name: "ci".into(),
        scopes: vec!["profile:read".into()],
        expires_in_days: 30,
        allowed_cidrs: Vec::new(),
    }
}

#[tokio::test]
async fn a_role_under_policy_may_only_enroll_until_it_has_a_second_factor() {
    let mut settings = testing::settings();
    settings.mfa.policy.required_roles = vec![BuiltinRole::Admin];
    let t = app_with_settings(settings).await;
    t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Admin).await.unwrap();
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    assert!(alice.mfa_enrollment_required, "the web layer refuses such a principal everywhere else");
    assert!(t.app.mfa_factors(&alice).await.unwrap().required);
    let totp = t.app.enroll_totp(&alice, "Phone").await.unwrap();
    t.app.confirm_totp(&alice, &totp.id.to_string(), &code_at(&totp, now(&t))).await.unwrap();
    // The session proved the factor: its next token carries no restriction.
    let refreshed = t.app.refresh(&login.refresh, &client()).await.unwrap();
    let (access, _) = bearer_tokens(refreshed);
    let alice = t.app.authenticate_bearer(&access).unwrap();
    assert!(!alice.mfa_enrollment_required);
    // A member is not under the policy.
    t.app.create_user_as_operator(BOB, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let bob = login_bearer(&t.app, BOB, PASSWORD).await;
    assert!(!t.app.authenticate_bearer(&bob.access).unwrap().mfa_enrollment_required);
}

#[tokio::test]
async fn an_organization_can_require_a_second_factor_of_its_members() {
    let t = testing::app().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let owner = login_bearer(&t.app, OWNER, PASSWORD).await;
    let owner = t.app.authenticate_bearer(&owner.access).unwrap();
    let org = t.app.admin_create_organization(&owner, "acme", "Acme").await.unwrap();
    let alice = user_id_of(&t.app, ALICE).await;
    t.app
        .admin_set_member(&owner, &org.id.to_string(), &alice.to_string(), BuiltinRole::Member, None)
        .await
        .unwrap();
    assert!(!t.app.admin_organization_mfa(&owner, &org.id.to_string()).await.unwrap());
    let before = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert!(!t.app.authenticate_bearer(&before.access).unwrap().mfa_enrollment_required);
    t.app.admin_set_organization_mfa(&owner, &org.id.to_string(), true).await.unwrap();
    // A session opened before the policy is held to it from its next refresh.
    let (access, _) = bearer_tokens(t.app.refresh(&before.refresh, &client()).await.unwrap());
    assert!(t.app.authenticate_bearer(&access).unwrap().mfa_enrollment_required);
    assert!(t.app.admin_organization_mfa(&owner, &org.id.to_string()).await.unwrap());
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    assert!(t.app.authenticate_bearer(&login.access).unwrap().mfa_enrollment_required);
    // A member may not change the policy.
    let member = t.app.authenticate_bearer(&login.access).unwrap();
    let refused = t.app.admin_set_organization_mfa(&member, &org.id.to_string(), false).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_) | AppError::NotFound)), "{refused:?}");
}

#[tokio::test]
async fn an_administrator_reset_removes_every_factor_and_ends_the_sessions() {
    let e = enrolled().await;
    e.t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = login_bearer(&e.t.app, OWNER, PASSWORD).await;
    let owner = e.t.app.authenticate_bearer(&owner.access).unwrap();
    let refused = e.t.app.admin_reset_mfa(&e.alice, &owner.user_id.to_string()).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_))), "{refused:?}");
    assert_eq!(e.t.app.admin_reset_mfa(&owner, &e.alice.user_id.to_string()).await.unwrap(), 1);
    assert!(sent_mail(&e.t.mail).await.iter().any(|m| m.subject == "Your sign-in methods were reset"));
    let session = e.alice.session_id().unwrap();
    let mut tx = read_tx(&e.t.app).await;
    assert!(tx.session(session).await.unwrap().unwrap().revoked_at.is_some());
    assert_eq!(tx.recovery_codes_left(e.alice.user_id).await.unwrap(), 0);
    tx.rollback().await.unwrap();
    // The password alone logs in again.
    login_bearer(&e.t.app, ALICE, PASSWORD).await;
}

#[tokio::test]
async fn removing_the_last_factor_removes_the_recovery_codes_and_tells_the_owner() {
    let e = enrolled().await;
    e.t.app.remove_totp(&e.alice, &e.totp.id.to_string()).await.unwrap();
    let factors = e.t.app.mfa_factors(&e.alice).await.unwrap();
    assert!(factors.devices.is_empty());
    assert_eq!(factors.recovery_codes_left, 0);
    assert!(sent_mail(&e.t.mail).await.iter().any(|m| m.subject == "A sign-in method was removed"));
    assert!(sent_mail(&e.t.mail).await.iter().any(|m| m.subject == "A sign-in method was added"));
    login_bearer(&e.t.app, ALICE, PASSWORD).await;
}

/// Registers a passkey for the principal with the software authenticator.
pub(super) async fn register_passkey(t: &TestApp, who: &Principal, authenticator: &mut SoftPasskey) {
    let started = t.app.start_passkey_registration(who).await.unwrap();
    let options: CreationChallengeResponse = serde_json::from_value(started.options).unwrap();
    let response = authenticator.do_registration(Url::parse(ORIGIN).unwrap(), options).unwrap();
    t.app
        .finish_passkey_registration(
            who,
            started.challenge.expose(),
            "Key",
            serde_json::to_value(response).unwrap(),
        )
        .await
        .unwrap();
}

async fn assert_with(
    t: &TestApp,
    challenge: &MfaChallenge,
    authenticator: &mut SoftPasskey,
    origin: &str,
) -> Result<LoginOutcome, AppError> {
    let options = t.app.login_passkey_options(challenge.token.expose()).await.unwrap();
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let assertion = authenticator.do_authentication(Url::parse(origin).unwrap(), options).unwrap();
    let factor = SecondFactor::Passkey(serde_json::to_value(assertion).unwrap());
    t.app.complete_login_mfa(challenge.token.expose(), factor, true, &client()).await
}

#[tokio::test]
async fn a_passkey_is_a_second_factor_bound_to_this_origin() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let mut authenticator = SoftPasskey::new(true);
    register_passkey(&t, &alice, &mut authenticator).await;
    let c = challenge(&t.app, LoginMode::Bearer).await;
    assert!(c.methods.contains(&MfaMethod::Passkey));
    let outcome = assert_with(&t, &c, &mut authenticator, ORIGIN).await.unwrap();
    assert_eq!(claims_of(&outcome).amr, vec!["hwk", "pwd", "mfa"]);
    // An assertion made for another origin (a phishing page relaying the ceremony) is refused, and
    // so is one whose signature was tampered with.
    for tamper in [phish as fn(&mut serde_json::Value), break_signature] {
        let c = challenge(&t.app, LoginMode::Bearer).await;
        let options = t.app.login_passkey_options(c.token.expose()).await.unwrap();
        let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let assertion = authenticator.do_authentication(Url::parse(ORIGIN).unwrap(), options).unwrap();
        let mut assertion = serde_json::to_value(assertion).unwrap();
        tamper(&mut assertion);
        let refused = t
            .app
            .complete_login_mfa(c.token.expose(), SecondFactor::Passkey(assertion), true, &client())
            .await;
        assert!(matches!(refused, Err(AppError::InvalidSecondFactor)), "{refused:?}");
    }
    // An assertion without a ceremony started for the challenge is refused.
    let c = challenge(&t.app, LoginMode::Bearer).await;
    let bare = SecondFactor::Passkey(serde_json::json!({}));
    let bare = t.app.complete_login_mfa(c.token.expose(), bare, true, &client()).await;
    assert!(matches!(bare, Err(AppError::InvalidSecondFactor)));
}

#[tokio::test]
async fn a_passkey_counter_going_backwards_is_refused_and_raises_a_security_event() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let mut authenticator = SoftPasskey::new(true);
    register_passkey(&t, &alice, &mut authenticator).await;
    let c = challenge(&t.app, LoginMode::Bearer).await;
    assert_with(&t, &c, &mut authenticator, ORIGIN).await.unwrap();
    // The server saw a higher count than this authenticator will send next: a clone was used.
    let mut tx = t.app.inner.store.begin().await.unwrap();
    let stored = tx.passkeys_of(alice.user_id).await.unwrap().remove(0);
    let mut credential: serde_json::Value = serde_json::from_str(&stored.credential).unwrap();
    bump_counters(&mut credential);
    tx.update_passkey(alice.user_id, stored.id, &credential.to_string(), testing_now(&t)).await.unwrap();
    tx.commit().await.unwrap();
    let c = challenge(&t.app, LoginMode::Bearer).await;
    let cloned = assert_with(&t, &c, &mut authenticator, ORIGIN).await;
    assert!(matches!(cloned, Err(AppError::InvalidSecondFactor)), "{cloned:?}");
    let kinds = event_kinds_of(&t.app, alice.user_id).await;
    assert!(kinds.contains(&SecurityEventKind::PasskeyCounterRegressed), "{kinds:?}");
}

/// Rewrites the origin the browser recorded in an assertion's client data.
fn phish(assertion: &mut serde_json::Value) {
    let field = &mut assertion["response"]["clientDataJSON"];
    let data = URL_SAFE_NO_PAD.decode(field.as_str().unwrap()).unwrap();
    let data = String::from_utf8(data).unwrap().replace(ORIGIN, "https://id.example.co");
    *field = serde_json::Value::String(URL_SAFE_NO_PAD.encode(data));
}

/// Flips one bit of an assertion's signature.
fn break_signature(assertion: &mut serde_json::Value) {
    let field = &mut assertion["response"]["signature"];
    let mut signature = URL_SAFE_NO_PAD.decode(field.as_str().unwrap()).unwrap();
    let last = signature.len() - 1;
    signature[last] ^= 1;
    *field = serde_json::Value::String(URL_SAFE_NO_PAD.encode(signature));
}

fn testing_now(t: &TestApp) -> Timestamp {
    t.clock.now()
}

fn bump_counters(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key == "counter" {
                    *inner = serde_json::json!(1000);
                } else {
                    bump_counters(inner);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(bump_counters),
        _ => {}
    }
}

#[tokio::test]
async fn a_passkey_alone_reauthenticates_a_session() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let mut authenticator = SoftPasskey::new(true);
    register_passkey(&t, &alice, &mut authenticator).await;
    t.clock.advance_millis(11 * MINUTE);
    assert!(matches!(
        t.app.regenerate_recovery_codes(&alice).await,
        Err(AppError::ReauthenticationRequired { .. })
    ));
    let started = t.app.reauthentication_passkey_options(&alice).await.unwrap();
    let options: RequestChallengeResponse = serde_json::from_value(started.options).unwrap();
    let assertion = authenticator.do_authentication(Url::parse(ORIGIN).unwrap(), options).unwrap();
    let factor = SecondFactor::Passkey(serde_json::to_value(assertion).unwrap());
    t.app
        .reauthenticate(&alice, None, Some(factor), Some(started.challenge.expose()), &client())
        .await
        .unwrap();
    t.app.regenerate_recovery_codes(&alice).await.unwrap();
}

/// An app whose settings allow a passkey alone to log in.
async fn passwordless_app() -> TestApp {
    let mut settings = testing::settings();
    settings.mfa.passkey_login = true;
    app_with_settings(settings).await
}

/// Alice with a registered passkey (and her authenticator).
async fn alice_with_passkey(t: &TestApp) -> (Principal, SoftPasskey) {
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let mut authenticator = SoftPasskey::new(true);
    register_passkey(t, &alice, &mut authenticator).await;
    (alice, authenticator)
}

/// The authenticator's answer to passwordless options.
fn answer(authenticator: &mut SoftPasskey, options: serde_json::Value) -> SecondFactor {
    let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let assertion = authenticator.do_authentication(Url::parse(ORIGIN).unwrap(), options).unwrap();
    SecondFactor::Passkey(serde_json::to_value(assertion).unwrap())
}

#[tokio::test]
async fn a_passkey_alone_logs_in_when_passwordless_login_is_on() {
    let off = testing::app().await;
    let refused = off.app.start_passkey_login(ALICE, LoginMode::Bearer).await;
    assert!(matches!(refused, Err(AppError::NotAvailable(_))), "{refused:?}");

    let t = passwordless_app().await;
    let (alice, mut authenticator) = alice_with_passkey(&t).await;
    let started = t.app.start_passkey_login(ALICE, LoginMode::Bearer).await.unwrap();
    let factor = answer(&mut authenticator, started.options);
    let outcome =
        t.app.complete_login_mfa(started.challenge.expose(), factor, true, &client()).await.unwrap();
    let claims = claims_of(&outcome);
    assert_eq!(claims.amr, vec!["hwk", "mfa"]);
    assert_eq!(claims.sub, alice.user_id.to_string());
    // The challenge is spent: the same answer again is a refused passkey.
    let started = t.app.start_passkey_login(ALICE, LoginMode::Bearer).await.unwrap();
    let token = started.challenge.expose().to_owned();
    let factor = answer(&mut authenticator, started.options);
    t.app.complete_login_mfa(&token, factor, true, &client()).await.unwrap();
    let replay = SecondFactor::Passkey(serde_json::json!({}));
    let replay = t.app.complete_login_mfa(&token, replay, true, &client()).await;
    assert!(matches!(replay, Err(AppError::InvalidSecondFactor)), "{replay:?}");
}

#[tokio::test]
async fn a_passwordless_challenge_takes_no_code_and_ignores_the_password_lockout() {
    let mut settings = testing::settings();
    settings.mfa.passkey_login = true;
    settings.lockout.max_failures = 2;
    let t = app_with_settings(settings).await;
    let (alice, mut authenticator) = alice_with_passkey(&t).await;
    // She also has an authenticator app: its code must not open a passwordless login.
    enroll_confirmed_totp(&t, &alice).await;
    let started = t.app.start_passkey_login(ALICE, LoginMode::Bearer).await.unwrap();
    for code in [
        SecondFactor::Totp(secret("123456")),
        SecondFactor::RecoveryCode(secret("0000-0000-0000-0000-0000-0000-0000")),
    ] {
        let refused = t.app.complete_login_mfa(started.challenge.expose(), code, true, &client()).await;
        // As for a made-up challenge: nothing tells a real one apart.
        assert!(matches!(refused, Err(AppError::InvalidToken)), "{refused:?}");
    }
    // A guesser locks the password path; the owner's passkey still logs in.
    for _ in 0..2 {
        let _ = t.app.login(ALICE, secret(NEW_PASSWORD), LoginMode::Bearer, &ClientContext::default()).await;
    }
    let locked = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &ClientContext::default()).await;
    assert!(matches!(locked, Err(AppError::LoginLocked { .. })), "{locked:?}");
    let factor = answer(&mut authenticator, started.options);
    t.app
        .complete_login_mfa(started.challenge.expose(), factor, true, &ClientContext::default())
        .await
        .unwrap();
    // ...and leaves the guesser's lockout in place.
    let locked = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &ClientContext::default()).await;
    assert!(matches!(locked, Err(AppError::LoginLocked { .. })), "{locked:?}");
}

/// Enrolls and confirms a TOTP authenticator for a principal whose session is fresh.
async fn enroll_confirmed_totp(t: &TestApp, who: &Principal) {
    let totp = t.app.enroll_totp(who, "Phone").await.unwrap();
    t.app.confirm_totp(who, &totp.id.to_string(), &code_at(&totp, now(t))).await.unwrap();
}

#[tokio::test]
async fn passwordless_options_look_alike_for_addresses_without_an_account_or_a_passkey() {
    let t = passwordless_app().await;
    let (_, mut authenticator) = alice_with_passkey(&t).await;
    signup(&t.app, BOB, PASSWORD).await;
    let real = t.app.start_passkey_login(ALICE, LoginMode::Bearer).await.unwrap();
    let shape = |v: &serde_json::Value| {
        let key = &v["publicKey"];
        let mut keys: Vec<String> = key.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        (keys, key["rpId"].clone(), key["userVerification"].clone(), key["timeout"].clone())
    };
    for address in ["nobody@example.com", BOB] {
        let decoy = t.app.start_passkey_login(address, LoginMode::Bearer).await.unwrap();
        assert_eq!(shape(&decoy.options), shape(&real.options), "{address}");
        assert_eq!(decoy.challenge.expose().len(), real.challenge.expose().len());
        // Stable per address, as a real credential id is.
        let again = t.app.start_passkey_login(address, LoginMode::Bearer).await.unwrap();
        assert_eq!(
            decoy.options["publicKey"]["allowCredentials"],
            again.options["publicKey"]["allowCredentials"]
        );
        assert_ne!(decoy.options["publicKey"]["challenge"], again.options["publicKey"]["challenge"]);
        let listed = decoy.options["publicKey"]["allowCredentials"].as_array().unwrap().clone();
        assert!((1..=2).contains(&listed.len()), "{listed:?}");
        assert!(listed.iter().all(|c| c["type"] == "public-key"), "{listed:?}");
    }
    // Every later request answers a made-up challenge exactly as a real one (which it is beside).
    let decoy = t.app.start_passkey_login("nobody@example.com", LoginMode::Bearer).await.unwrap();
    let real_again = t.app.start_passkey_login(ALICE, LoginMode::Bearer).await.unwrap();
    for token in [decoy.challenge.expose(), real_again.challenge.expose()] {
        let passkey = SecondFactor::Passkey(serde_json::json!({}));
        let refused = t.app.complete_login_mfa(token, passkey, true, &client()).await;
        assert!(matches!(refused, Err(AppError::InvalidSecondFactor)), "{refused:?}");
        let code =
            t.app.complete_login_mfa(token, SecondFactor::Totp(secret("123456")), true, &client()).await;
        assert!(matches!(code, Err(AppError::InvalidToken)), "{code:?}");
        let again = t.app.login_passkey_options(token).await;
        assert!(matches!(again, Err(AppError::InvalidToken)), "{again:?}");
        let cross_site = SecondFactor::Passkey(serde_json::json!({}));
        let cross_site = t.app.complete_login_mfa(token, cross_site, false, &client()).await;
        assert!(matches!(cross_site, Err(AppError::CsrfRejected)), "{cross_site:?}");
    }
    // The real one still works.
    let factor = answer(&mut authenticator, real.options);
    t.app.complete_login_mfa(real.challenge.expose(), factor, true, &client()).await.unwrap();
    let malformed = t.app.start_passkey_login("not an address", LoginMode::Bearer).await;
    assert!(matches!(malformed, Err(AppError::Validation(ref i)) if i[0].field == "/email"), "{malformed:?}");
}

#[tokio::test]
async fn a_password_change_ends_logins_waiting_for_their_second_factor() {
    let e = enrolled().await;
    // A phisher holds a challenge from the old password and waits for a code to relay.
    let waiting = challenge(&e.t.app, LoginMode::Bearer).await;
    e.t.app.change_password(&e.alice, secret(PASSWORD), secret(NEW_PASSWORD)).await.unwrap();
    let late = verify(&e, &waiting, SecondFactor::Totp(code_at(&e.totp, now(&e.t)))).await;
    assert!(matches!(late, Err(AppError::InvalidToken)), "{late:?}");
}
