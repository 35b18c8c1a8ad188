//! The personal-data export (issue 9): a person's document holds every kind of their data and
//! nobody else's, no secret in any form, needs a recent authentication, is recorded, and only a
//! system-wide reader of every part may pull someone else's.

use portcullis_domain::mfa::normalize_recovery_code;
use portcullis_domain::{ApiKeyId, BuiltinRole, SessionKind};
use portcullis_store::AuditQuery;
use secrecy::ExposeSecret;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use super::admin::{forbidden, principal, tenants};
use super::*;
use crate::audit::{RequestContext, within_request};
use crate::secret_token::hash_token;
use crate::{Clock, NewApiKey, PersonalData, SessionState, UserChange};

const CAROL: &str = "carol@example.com";
const FOUR_READS: [&str; 4] = ["users:read", "sessions:read", "apikeys:read", "audit:read"];

fn key_request(name: &str, scopes: &[&str]) -> NewApiKey {
    NewApiKey {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 30,
        allowed_cidrs: vec!["203.0.113.0/24".into()],
    }
}

fn code_at(secret_b32: &str, at_millis: i64) -> SecretString {
    let seed = totp_rs::Secret::try_from_base32(secret_b32).unwrap();
    let totp = totp_rs::Builder::new().with_secret(seed.as_bytes().to_vec()).build().unwrap();
    secret(&totp.generate(u64::try_from(at_millis / 1000).unwrap()).to_string())
}

/// Alice with one of each kind of data, Bob with his own beside it, and every secret either of them
/// was ever given or that the database keeps for them.
struct Scene {
    t: TestApp,
    owner: Principal,
    alice: Principal,
    alice_id: UserId,
    bob_id: UserId,
    /// Ids of Bob's that must never show in Alice's export.
    bobs_ids: Vec<String>,
    /// Every secret (and digest of one) of either account.
    secrets: Vec<String>,
    live_key: ApiKeyId,
    revoked_key: ApiKeyId,
    organization: String,
    role: String,
}

async fn scene() -> Scene {
    let t = testing::app().await;
    t.app.finish_bootstrap().await.unwrap();
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let mut secrets = vec![PASSWORD.to_owned()];
    let request =
        SignupRequest { display_name: Some("Alice Liddell".into()), ..signup_request(ALICE, PASSWORD) };
    t.app.signup(request, &client()).await.unwrap();
    signup(&t.app, BOB, PASSWORD).await;
    let alice_id = user_id_of(&t.app, ALICE).await;
    let bob_id = user_id_of(&t.app, BOB).await;
    secrets.push(stored_hash(&t.app, alice_id).await);
    secrets.push(stored_hash(&t.app, bob_id).await);

    // A session left idle past its timeout, one logged out of, and the one she exports with.
    let idle = login_bearer(&t.app, ALICE, PASSWORD).await;
    t.clock.advance_millis(25 * HOUR);
    let browser = login_cookie(&t.app, ALICE, PASSWORD).await;
    t.app.logout(&browser.principal).await.unwrap();
    t.clock.advance_millis(SECOND);
    let current = login_bearer(&t.app, ALICE, PASSWORD).await;
    let owner = principal(&t.app, OWNER).await;
    let alice = t.app.authenticate_bearer(&current.access).unwrap();
    for login in [&idle, &current] {
        secrets.extend([login.access.clone(), login.refresh.clone(), hash_token(&login.refresh).to_hex()]);
    }
    secrets.extend([browser.cookie.clone(), browser.csrf.clone(), hash_token(&browser.cookie).to_hex()]);

    // Two keys, one of them revoked; a key's text, its secret part and its stored digest are secrets.
    let live = t.app.create_my_api_key(&alice, &key_request("deploy", &["profile:read"])).await.unwrap();
    t.clock.advance_millis(SECOND);
    let revoked = t.app.create_my_api_key(&alice, &key_request("old", &["profile:*"])).await.unwrap();
    t.app.revoke_my_api_key(&alice, &revoked.key.id.to_string()).await.unwrap();
    for issued in [&live, &revoked] {
        secrets.push(issued.secret.expose_secret().to_owned());
        secrets.push(issued.secret.expose_secret()[27..].to_owned());
        secrets.push(issued.key.secret_hash.to_hex());
    }

    // An authenticator (its seed and recovery codes are secrets) and a passkey (its public key is
    // left out of the export).
    let totp = t.app.enroll_totp(&alice, "Phone").await.unwrap();
    let seed = totp.secret.expose_secret().to_owned();
    let now = t.clock.now().as_unix_millis();
    let codes =
        t.app.confirm_totp(&alice, &totp.id.to_string(), &code_at(&seed, now)).await.unwrap().unwrap();
    secrets.push(seed);
    for code in codes.codes() {
        let canonical = normalize_recovery_code(code).unwrap();
        secrets.extend([code.to_owned(), hash_token(&canonical).to_hex(), canonical]);
    }
    let mut authenticator = SoftPasskey::new(true);
    super::mfa::register_passkey(&t, &alice, &mut authenticator).await;
    let mut tx = read_tx(&t.app).await;
    for passkey in tx.passkeys_of(alice_id).await.unwrap() {
        secrets.push(passkey.credential);
    }
    tx.rollback().await.unwrap();

    // A membership with a custom role.
    let organization = t.app.admin_create_organization(&owner, "acme", "Acme").await.unwrap().id.to_string();
    let role = t
        .app
        .admin_create_role(&owner, &organization, "billing", &["invoices:read".to_owned()])
        .await
        .unwrap()
        .id
        .to_string();
    t.app
        .admin_set_member(
            &owner,
            &organization,
            &alice_id.to_string(),
            BuiltinRole::Member,
            Some(std::slice::from_ref(&role)),
        )
        .await
        .unwrap();

    // Bob's session and key.
    let bobs = login_bearer(&t.app, BOB, PASSWORD).await;
    let bob = t.app.authenticate_bearer(&bobs.access).unwrap();
    let bobs_key = t.app.create_my_api_key(&bob, &key_request("bobs", &["profile:read"])).await.unwrap();
    secrets.extend([bobs.access, bobs.refresh, bobs_key.secret.expose_secret().to_owned()]);
    let bobs_ids =
        vec![bob_id.to_string(), bobs.session.to_string(), bobs_key.key.id.to_string(), BOB.to_owned()];

    Scene {
        t,
        owner,
        alice,
        alice_id,
        bob_id,
        bobs_ids,
        secrets,
        live_key: live.key.id,
        revoked_key: revoked.key.id,
        organization,
        role,
    }
}

/// Every value of the document as text: every field of every type in it is a derived `Debug`.
fn text_of(data: &PersonalData) -> String {
    format!("{data:?}")
}

#[tokio::test]
async fn an_export_holds_every_kind_of_the_persons_data_and_nobody_elses() {
    let s = scene().await;

    let data = s.t.app.export_my_data(&s.alice).await.unwrap();

    assert_eq!(data.exported_at, s.t.clock.now());
    assert_eq!(data.user.id, s.alice_id);
    assert_eq!(data.user.email, ALICE);
    assert_eq!(data.user.display_name.as_deref(), Some("Alice Liddell"));
    // The default organization every account joins, and Acme.
    let mut memberships: Vec<(&str, BuiltinRole)> =
        data.organizations.iter().map(|m| (m.organization.slug.as_str(), m.role)).collect();
    memberships.sort_by_key(|(slug, _)| *slug);
    assert_eq!(memberships, vec![("acme", BuiltinRole::Member), ("default", BuiltinRole::Member)]);
    assert!(data.organizations.iter().any(|m| m.organization.id.to_string() == s.organization));
    let roles: Vec<String> = data.roles.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(roles, vec![s.role.clone()]);

    // Every session, newest first, each in its state, its client details opened.
    let sessions: Vec<(SessionKind, SessionState, Option<&str>)> =
        data.sessions.iter().map(|x| (x.session.kind, x.state, x.revoked_reason.as_deref())).collect();
    assert_eq!(
        sessions,
        vec![
            (SessionKind::Bearer, SessionState::Active, None),
            (SessionKind::Cookie, SessionState::Revoked, Some("logout")),
            (SessionKind::Bearer, SessionState::Expired, None),
        ]
    );
    assert!(data.sessions.iter().all(|x| x.ip.as_deref() == Some("203.0.113.7")));
    assert!(data.sessions.iter().all(|x| x.user_agent.as_deref() == Some("use-case-test")));
    assert_eq!(data.sessions[0].session.id, s.alice.session_id().unwrap());

    let keys: Vec<(String, bool)> =
        data.api_keys.iter().map(|k| (k.id.clone(), k.revoked_at.is_some())).collect();
    assert_eq!(keys, vec![(s.revoked_key.to_string(), true), (s.live_key.to_string(), false)]);
    assert_eq!(data.api_keys[1].scopes, vec!["profile:read"]);
    assert_eq!(data.api_keys[1].allowed_cidrs, vec!["203.0.113.0/24"]);

    let totp: Vec<(&str, bool)> = data.mfa.totp.iter().map(|d| (d.name.as_str(), d.confirmed)).collect();
    assert_eq!(totp, vec![("Phone", true)]);
    assert_eq!(data.mfa.passkeys.len(), 1);
    assert_eq!(data.mfa.recovery_codes_left, 10);

    // Her audit events: as the actor (logins, keys, factors), and as the target of others' actions
    // (her signup, the owner's membership change); each involves her.
    let actions: Vec<&str> = data.audit_events.iter().map(|e| e.action.as_str()).collect();
    for expected in [
        "user.signed_up",
        "user.login.succeeded",
        "session.logged_out",
        "api_key.created",
        "api_key.revoked",
        "mfa.totp.enrolled",
        "mfa.passkey.registered",
        "membership.added",
        "role.assigned",
    ] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    let alice = s.alice_id.to_string();
    for event in &data.audit_events {
        let involved = [
            event.actor.id.as_ref(),
            event.actor.on_behalf_of.as_ref(),
            event.target.as_ref().and_then(|t| t.id.as_ref()),
        ];
        assert!(involved.contains(&Some(&alice)), "{event:?}");
    }
    let seqs: Vec<i64> = data.audit_events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    assert_eq!(data.truncated, crate::Truncated::default());

    let text = text_of(&data);
    for id in &s.bobs_ids {
        assert!(!text.contains(id.as_str()), "Bob's {id} is in Alice's export");
    }
    let bobs = s.t.app.admin_export_user(&s.owner, &s.bob_id.to_string()).await.unwrap();
    assert!(!text_of(&bobs).contains(&alice), "and Alice is not in Bob's");
}

#[tokio::test]
async fn no_secret_of_any_kind_is_in_an_export() {
    let s = scene().await;
    let own = s.t.app.export_my_data(&s.alice).await.unwrap();
    let by_admin = s.t.app.admin_export_user(&s.owner, &s.alice_id.to_string()).await.unwrap();

    assert!(s.secrets.len() > 30, "the scene gathered its secrets: {}", s.secrets.len());
    for data in [own, by_admin] {
        let text = text_of(&data);
        for secret in &s.secrets {
            assert!(!text.contains(secret.as_str()), "a secret is in the export: {secret}");
        }
        // Not even sealed bytes or a digest under another name.
        for word in ["Sealed", "secret_hash", "TokenHash", "pii_key"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
    }
}

#[tokio::test]
async fn exporting_ones_data_needs_a_recent_authentication_from_a_person_not_an_api_key() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let key =
        t.app.create_my_api_key(&alice, &key_request("ci", &["profile:*", "sessions:*"])).await.unwrap();
    let by_key = t.app.authenticate_api_key(key.secret.expose_secret(), &client()).await.unwrap();
    forbidden(t.app.export_my_data(&by_key).await);

    t.clock.advance_millis(11 * MINUTE);
    let stale = t.app.export_my_data(&alice).await;
    assert!(matches!(stale, Err(AppError::ReauthenticationRequired { max_age_secs: 600 })), "{stale:?}");
    t.app.reauthenticate(&alice, Some(secret(PASSWORD)), None, None, &client()).await.unwrap();
    let data = t.app.export_my_data(&alice).await.unwrap();
    assert_eq!(data.user.email, ALICE);
}

#[tokio::test]
async fn only_a_system_wide_reader_of_every_part_exports_another_account() {
    let (t, owner, acme, globex, org_admin, alice) = tenants().await;
    t.app.create_user_as_operator(CAROL, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let carol = user_id_of(&t.app, CAROL).await;
    t.app.admin_set_member(&owner, &acme, &alice.to_string(), BuiltinRole::Member, None).await.unwrap();
    t.app.admin_set_member(&owner, &globex, &carol.to_string(), BuiltinRole::Member, None).await.unwrap();
    let missing = "00000000-0000-4000-8000-000000000000";

    // Acme's administrator manages Acme's memberships, but a person's data spans every organization
    // they belong to: its own member, another tenant's and nobody at all are refused alike.
    let org_admin_id = org_admin.user_id.to_string();
    for id in [alice.to_string(), carol.to_string(), missing.to_owned(), org_admin_id] {
        forbidden(t.app.admin_export_user(&org_admin, &id).await);
    }
    let member = principal(&t.app, CAROL).await;
    forbidden(t.app.admin_export_user(&member, &alice.to_string()).await);

    for id in [missing, "not-an-id"] {
        let result = t.app.admin_export_user(&owner, id).await;
        assert!(matches!(result, Err(AppError::NotFound)), "{id}: {result:?}");
    }
    let data = t.app.admin_export_user(&owner, &alice.to_string()).await.unwrap();
    assert_eq!(data.user.email, ALICE);
    assert!(data.organizations.iter().any(|m| m.organization.slug.as_str() == "acme"));

    // A key reads no more through the export than through each part on its own.
    let narrow = t.app.create_my_api_key(&owner, &key_request("users", &["users:read"])).await.unwrap();
    let narrow = t.app.authenticate_api_key(narrow.secret.expose_secret(), &client()).await.unwrap();
    forbidden(t.app.admin_export_user(&narrow, &alice.to_string()).await);
    let full = t.app.create_my_api_key(&owner, &key_request("dsar", &FOUR_READS)).await.unwrap();
    let full = t.app.authenticate_api_key(full.secret.expose_secret(), &client()).await.unwrap();
    assert_eq!(t.app.admin_export_user(&full, &alice.to_string()).await.unwrap().user.id, alice);

    // A session pulling someone else's data proves itself recently too.
    t.clock.advance_millis(11 * MINUTE);
    let stale = t.app.admin_export_user(&owner, &alice.to_string()).await;
    assert!(matches!(stale, Err(AppError::ReauthenticationRequired { .. })), "{stale:?}");
}

#[tokio::test]
async fn every_export_is_recorded_with_who_asked_and_whose_data() {
    let s = scene().await;
    s.t.app.export_my_data(&s.alice).await.unwrap();
    s.t.app.admin_export_user(&s.owner, &s.alice_id.to_string()).await.unwrap();
    forbidden(s.t.app.admin_export_user(&s.alice, &s.bob_id.to_string()).await);

    let mut tx = read_tx(&s.t.app).await;
    let query =
        AuditQuery { action_prefix: Some("user.data_exported".into()), limit: 10, ..AuditQuery::default() };
    let events = tx.list_audit_events(&query).await.unwrap();
    tx.rollback().await.unwrap();
    let recorded: Vec<(Option<String>, Option<String>)> =
        events.iter().map(|e| (e.record.actor.id.clone(), e.record.target_id.clone())).collect();
    let alice = Some(s.alice_id.to_string());
    assert_eq!(recorded, vec![(Some(s.owner.user_id.to_string()), alice.clone()), (alice.clone(), alice)]);
    let details: serde_json::Value = serde_json::from_str(&events[1].record.details).unwrap();
    assert_eq!(details["sessions"], 3);
    assert_eq!(details["truncated"], false);
    assert!(details["audit_events"].as_u64().unwrap() > 5, "{details}");
    // The next export shows the last one: it is about her.
    let again = s.t.app.export_my_data(&s.alice).await.unwrap();
    assert_eq!(again.audit_events[0].action, "user.data_exported");
}

#[tokio::test]
async fn an_audit_events_client_details_are_opened_only_where_the_person_made_the_request() {
    let s = scene().await;
    let from = |ip: &str, agent: &str| RequestContext {
        ip: Some(ip.into()),
        user_agent: Some(agent.into()),
        request_id: None,
    };
    let rename = UserChange { display_name: Some(Some("Alice L.".into())), ..UserChange::default() };
    within_request(
        from("198.51.100.9", "admin-console"),
        s.t.app.admin_update_user(&s.owner, &s.alice_id.to_string(), &rename),
    )
    .await
    .unwrap();
    within_request(
        from("203.0.113.50", "alices-laptop"),
        s.t.app.revoke_my_api_key(&s.alice, &s.live_key.to_string()),
    )
    .await
    .unwrap();

    let data = s.t.app.export_my_data(&s.alice).await.unwrap();

    let renamed = data.audit_events.iter().find(|e| e.action == "user.profile.updated").unwrap();
    assert_eq!((renamed.ip.as_deref(), renamed.user_agent.as_deref()), (None, None), "the owner's request");
    let revoked = data
        .audit_events
        .iter()
        .find(|e| {
            e.action == "api_key.revoked"
                && e.target.as_ref().and_then(|t| t.id.as_deref()) == Some(&s.live_key.to_string())
        })
        .unwrap();
    assert_eq!(
        (revoked.ip.as_deref(), revoked.user_agent.as_deref()),
        (Some("203.0.113.50"), Some("alices-laptop"))
    );
    assert!(!text_of(&data).contains("198.51.100.9") && !text_of(&data).contains("admin-console"));
    assert_eq!(data.user.display_name.as_deref(), Some("Alice L."));
}
