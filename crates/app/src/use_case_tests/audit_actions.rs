//! Use-case tests of the audit trail as the use cases write it: each change is recorded in its own
//! transaction with who acted, on what and in which organization; failures that matter are recorded
//! as failures; a refused change records nothing; and no record holds a secret, an address or a name.

use std::time::Duration;

use portcullis_domain::{Actor, ActorKind, AuditRecord, BuiltinRole, LockoutPolicy, Outcome};
use portcullis_store::{KeyPurpose, KeyState};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::admin::{ADMIN, forbidden, principal, tenants};
use super::*;
use crate::audit::{RequestContext, within_request};
use crate::{DetectionSettings, NewApiKey, NewIpRule, ProbeResponse, SecurityEventFilter, StatusChange};

/// Every event recorded so far, oldest first.
async fn audit_records(app: &App) -> Vec<AuditRecord> {
    let mut tx = app.store().begin_read().await.unwrap();
    let events = tx.audit_events_after(0, 1000).await.unwrap();
    tx.rollback().await.unwrap();
    events.into_iter().map(|e| e.record).collect()
}

/// The events recorded for `action`, oldest first.
async fn recorded(app: &App, action: &str) -> Vec<AuditRecord> {
    audit_records(app).await.into_iter().filter(|r| r.action == action).collect()
}

/// The one event recorded for `action`.
async fn only(app: &App, action: &str) -> AuditRecord {
    let mut found = recorded(app, action).await;
    assert_eq!(found.len(), 1, "{action}: {found:?}");
    found.remove(0)
}

fn details(record: &AuditRecord) -> Value {
    serde_json::from_str(&record.details).unwrap()
}

fn target(record: &AuditRecord) -> (Option<&str>, Option<&str>) {
    (record.target_type.as_deref(), record.target_id.as_deref())
}

fn user_actor(id: UserId) -> Actor {
    Actor { kind: ActorKind::User, id: Some(id.to_string()), on_behalf_of: None }
}

/// Everything a record says in clear: actor, action, target, organization, request id, details.
fn clear_text(record: &AuditRecord) -> String {
    format!(
        "{:?} {} {:?} {:?} {:?} {:?} {}",
        record.actor,
        record.action,
        record.target_type,
        record.target_id,
        record.organization_id,
        record.request_id,
        record.details
    )
}

fn key_request(scopes: &[&str]) -> NewApiKey {
    NewApiKey {
        name: "deploy-bot".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 30,
        allowed_cidrs: Vec::new(),
    }
}

async fn key_in(app: &App, purpose: KeyPurpose, state: KeyState) -> Option<String> {
    app.list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.purpose == purpose && k.state == state)
        .map(|k| k.id)
}

#[tokio::test]
async fn a_password_change_is_recorded_with_its_actor_and_target() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let other = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();

    t.app.change_password(&alice, secret(PASSWORD), secret(NEW_PASSWORD)).await.unwrap();

    let changed = only(&t.app, "user.password.changed").await;
    assert_eq!(changed.actor, user_actor(login.user));
    assert_eq!(target(&changed), (Some("user"), Some(&*login.user.to_string())));
    assert_eq!(changed.outcome, Outcome::Success);
    assert_eq!(details(&changed)["revoked_sessions"], 1, "the other session ended with the change");
    assert!(t.app.authenticate_bearer(&other.access).is_err());
    let text = clear_text(&changed);
    assert!(!text.contains(PASSWORD) && !text.contains(NEW_PASSWORD), "{text}");
}

#[tokio::test]
async fn a_wrong_current_password_is_recorded_as_a_failed_change_and_changes_nothing() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();

    let refused = t.app.change_password(&alice, secret("not my password at all"), secret(NEW_PASSWORD)).await;

    assert!(matches!(refused, Err(AppError::Validation(_))), "{refused:?}");
    let failed = only(&t.app, "user.password.changed").await;
    assert_eq!((failed.outcome, failed.actor.clone()), (Outcome::Failure, user_actor(login.user)));
    assert_eq!(details(&failed)["reason"], "wrong_current_password");
    assert!(!clear_text(&failed).contains("not my password"));
    login_bearer(&t.app, ALICE, PASSWORD).await;
}

#[tokio::test]
async fn a_failed_login_is_recorded_as_a_failure_without_the_password() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = user_id_of(&t.app, ALICE).await;
    let request = RequestContext {
        ip: Some("203.0.113.7".into()),
        user_agent: Some("use-case-test".into()),
        request_id: Some("req-login-1".into()),
    };

    let answers = within_request(request, async {
        let known = t.app.login(ALICE, secret("hunter2-wrong"), LoginMode::Bearer, &client()).await;
        let unknown =
            t.app.login("nobody@example.com", secret("hunter2-wrong"), LoginMode::Bearer, &client()).await;
        (known.map(|_| ()), unknown.map(|_| ()))
    })
    .await;

    // The answers stay uniform; only the trail tells the two apart.
    assert!(matches!(answers, (Err(AppError::InvalidCredentials), Err(AppError::InvalidCredentials))));
    let failed = recorded(&t.app, "user.login.failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let (known, unknown) = (&failed[0], &failed[1]);
    for record in [known, unknown] {
        assert_eq!((record.outcome, record.actor.clone()), (Outcome::Failure, Actor::anonymous()));
        assert_eq!(record.request_id.as_deref(), Some("req-login-1"));
        assert!(record.ip.is_some() && record.user_agent.is_some(), "the client is recorded, sealed");
        let text = clear_text(record);
        for clear in ["hunter2", "alice", "nobody", "example.com", "203.0.113.7", "use-case-test"] {
            assert!(!text.contains(clear), "{clear:?} in {text}");
        }
        let sealed = [record.ip.as_deref().unwrap(), record.user_agent.as_deref().unwrap()].concat();
        assert!(!sealed.windows(11).any(|w| w == b"203.0.113.7"), "the address is not in clear");
    }
    assert_eq!(target(known), (Some("user"), Some(&*alice.to_string())));
    assert_eq!(details(known)["reason"], "wrong_password");
    assert_eq!(target(unknown), (None, None));
    assert_eq!(details(unknown)["reason"], "unknown_account");
    assert!(recorded(&t.app, "user.login.succeeded").await.is_empty());
}

#[tokio::test]
async fn a_login_is_recorded_with_the_user_as_actor_and_its_session_and_only_a_refresh_reuse_is_recorded() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;

    let login = login_bearer(&t.app, ALICE, PASSWORD).await;

    let succeeded = only(&t.app, "user.login.succeeded").await;
    assert_eq!(succeeded.actor, user_actor(login.user));
    assert_eq!(target(&succeeded), (Some("user"), Some(&*login.user.to_string())));
    let d = details(&succeeded);
    assert_eq!((&d["method"], &d["mode"]), (&Value::from("password"), &Value::from("bearer")));
    assert_eq!(d["session_id"], login.session.to_string());

    // Routine refreshes are not audited; presenting a spent refresh token again is.
    let before = audit_records(&t.app).await.len();
    t.app.refresh(&login.refresh, &client()).await.unwrap();
    assert_eq!(audit_records(&t.app).await.len(), before);
    assert!(t.app.refresh(&login.refresh, &client()).await.is_err());
    let reused = only(&t.app, "session.refresh_reused").await;
    assert_eq!((reused.actor.clone(), reused.outcome), (Actor::system(), Outcome::Failure));
    assert_eq!(target(&reused), (Some("session"), Some(&*login.session.to_string())));
    assert_eq!(details(&reused)["revoked"], true);
    let text = clear_text(&reused);
    assert!(!text.contains(&login.refresh) && !text.contains(&login.access));
}

#[tokio::test]
async fn logging_out_and_revoking_sessions_are_recorded_by_their_owner() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let first = login_bearer(&t.app, ALICE, PASSWORD).await;
    let second = login_bearer(&t.app, ALICE, PASSWORD).await;
    let third = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&first.access).unwrap();

    t.app.revoke_session(&alice, &second.session.to_string()).await.unwrap();
    t.app.logout(&alice).await.unwrap();
    let alice = t.app.authenticate_bearer(&third.access).unwrap();
    assert_eq!(t.app.logout_all(&alice).await.unwrap(), 1);

    let revoked = only(&t.app, "session.revoked").await;
    assert_eq!(target(&revoked), (Some("session"), Some(&*second.session.to_string())));
    let logged_out = only(&t.app, "session.logged_out").await;
    assert_eq!(target(&logged_out), (Some("session"), Some(&*first.session.to_string())));
    let all = only(&t.app, "session.revoked_all").await;
    assert_eq!(target(&all), (Some("user"), Some(&*first.user.to_string())));
    assert_eq!(details(&all)["revoked"], 1);
    for record in [revoked, logged_out, all] {
        assert_eq!(record.actor, user_actor(first.user), "{}", record.action);
    }
}

#[tokio::test]
async fn a_refused_change_records_nothing() {
    let t = testing::app().await;
    for (email, role) in
        [(OWNER, BuiltinRole::Owner), (ADMIN, BuiltinRole::Admin), (ALICE, BuiltinRole::Member)]
    {
        t.app.create_user_as_operator(email, None, secret(PASSWORD), role).await.unwrap();
    }
    let owner = principal(&t.app, OWNER).await;
    let admin = principal(&t.app, ADMIN).await;
    let alice = principal(&t.app, ALICE).await;
    let (owner_id, alice_id) = (owner.user_id.to_string(), alice.user_id.to_string());
    let before = audit_records(&t.app).await.len();

    // Guard rails: an admin neither makes nor touches an owner; nobody changes their own role; a
    // member administers nobody.
    forbidden(t.app.admin_set_role(&admin, &alice_id, BuiltinRole::Owner).await);
    forbidden(t.app.admin_set_role(&admin, &owner_id, BuiltinRole::Member).await);
    forbidden(t.app.admin_set_role(&owner, &owner_id, BuiltinRole::Member).await);
    forbidden(t.app.admin_set_role(&alice, &owner_id, BuiltinRole::Member).await);
    forbidden(t.app.admin_set_status(&admin, &owner_id, StatusChange::Disable).await);
    forbidden(t.app.admin_delete_user(&admin, &owner_id).await);

    assert_eq!(audit_records(&t.app).await.len(), before, "{:?}", audit_records(&t.app).await);
    // The same change made by someone who may make it is recorded once, with what it changed.
    t.app.admin_set_role(&owner, &alice_id, BuiltinRole::Admin).await.unwrap();
    let changed = only(&t.app, "user.role.changed").await;
    assert_eq!(changed.actor, user_actor(owner.user_id));
    assert_eq!(target(&changed), (Some("user"), Some(&*alice_id)));
    assert_eq!(
        (&details(&changed)["from"], &details(&changed)["to"]),
        (&Value::from("member"), &Value::from("admin"))
    );
    // Asking again for the role it already has changes nothing and records nothing.
    t.app.admin_set_role(&owner, &alice_id, BuiltinRole::Admin).await.unwrap();
    assert_eq!(recorded(&t.app, "user.role.changed").await.len(), 1);
}

#[tokio::test]
async fn an_api_key_creation_records_the_key_id_but_never_the_secret() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = principal(&t.app, ALICE).await;

    let issued = t.app.create_my_api_key(&alice, &key_request(&["profile:read"])).await.unwrap();
    let rotated = t.app.rotate_my_api_key(&alice, &issued.key.id.to_string()).await.unwrap();
    t.app.revoke_my_api_key(&alice, &issued.key.id.to_string()).await.unwrap();

    let created = only(&t.app, "api_key.created").await;
    assert_eq!(created.actor, user_actor(alice.user_id));
    assert_eq!(target(&created), (Some("api_key"), Some(issued.key.id.as_str())));
    let d = details(&created);
    assert_eq!(d["scopes"], serde_json::json!(["profile:read"]));
    assert_eq!(d["expires_at"], issued.key.expires_at.to_rfc3339());
    assert_eq!(
        (&d["owner_type"], &d["owner_id"]),
        (&Value::from("user"), &Value::from(alice.user_id.to_string()))
    );
    let rotation = only(&t.app, "api_key.rotated").await;
    let revocation = only(&t.app, "api_key.revoked").await;
    for record in [&created, &rotation, &revocation] {
        assert_eq!(target(record), (Some("api_key"), Some(issued.key.id.as_str())));
        let text = clear_text(record);
        for secret in [issued.secret.expose_secret(), rotated.secret.expose_secret()] {
            let secret_part = secret.rsplit('_').next().unwrap();
            assert!(!text.contains(secret) && !text.contains(secret_part), "{text}");
        }
        assert!(!text.contains("deploy-bot"), "the key's free-text name stays out: {text}");
    }
}

#[tokio::test]
async fn an_action_through_an_api_key_names_the_key_acting_for_its_owner() {
    let t = testing::app().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    let issued = t.app.create_my_api_key(&owner, &key_request(&["orgs:create"])).await.unwrap();
    let through_key =
        t.app.authenticate_api_key(issued.secret.expose_secret(), &ClientContext::default()).await.unwrap();

    let org = t.app.admin_create_organization(&through_key, "acme", "Acme").await.unwrap();

    let created = only(&t.app, "organization.created").await;
    let acting = Actor {
        kind: ActorKind::ApiKey,
        id: Some(issued.key.id.to_string()),
        on_behalf_of: Some(owner.user_id.to_string()),
    };
    assert_eq!(created.actor, acting);
    assert_eq!(target(&created), (Some("organization"), Some(&*org.id.to_string())));
    assert_eq!(created.organization_id, Some(org.id.to_string()));
}

#[tokio::test]
async fn admin_actions_name_the_admin_as_actor_and_the_organization() {
    let (t, owner, acme, _globex, org_admin, alice) = tenants().await;
    let alice_id = alice.to_string();
    let support =
        t.app.admin_create_role(&org_admin, &acme, "support", &["users:read".to_owned()]).await.unwrap();

    t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Member, None).await.unwrap();
    let roles = [support.id.to_string()];
    t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Member, Some(&roles)).await.unwrap();
    t.app.admin_remove_member(&org_admin, &acme, &alice_id).await.unwrap();

    let admin = user_actor(org_admin.user_id);
    let created = only(&t.app, "role.created").await;
    assert_eq!(
        (created.actor.clone(), target(&created)),
        (admin.clone(), (Some("role"), Some(&*support.id.to_string())))
    );
    assert_eq!(details(&created)["permissions"], serde_json::json!(["users:read"]));
    let added = recorded(&t.app, "membership.added").await;
    // The fixture's owner added the organization's admin; the admin added Alice.
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].actor, user_actor(owner.user_id));
    let alice_added = &added[1];
    assert_eq!(details(alice_added)["role"], "member");
    for record in [
        alice_added.clone(),
        only(&t.app, "role.assigned").await,
        only(&t.app, "role.unassigned").await,
        only(&t.app, "membership.removed").await,
    ] {
        assert_eq!(record.actor, admin, "{}", record.action);
        assert_eq!(record.organization_id.as_deref(), Some(&*acme), "{}", record.action);
        assert_eq!(target(&record), (Some("user"), Some(&*alice_id)), "{}", record.action);
    }
    assert_eq!(details(&only(&t.app, "role.assigned").await)["role_id"], support.id.to_string());
    // Setting the membership it already has changed nothing: no membership.changed.
    assert!(recorded(&t.app, "membership.changed").await.is_empty());
}

#[tokio::test]
async fn a_signup_is_recorded_and_one_with_a_taken_address_is_recorded_as_a_failure_about_the_owner() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = user_id_of(&t.app, ALICE).await;

    t.app.signup(signup_request("Alice@Example.com", PASSWORD), &client()).await.unwrap();

    let signups = recorded(&t.app, "user.signed_up").await;
    assert_eq!(signups.len(), 2);
    for record in &signups {
        assert_eq!(record.actor, Actor::anonymous());
        assert_eq!(target(record), (Some("user"), Some(&*alice.to_string())));
        assert!(!clear_text(record).to_lowercase().contains("alice@"), "{}", clear_text(record));
    }
    assert_eq!(signups[0].outcome, Outcome::Success);
    assert_eq!(
        (signups[1].outcome, &details(&signups[1])["reason"]),
        (Outcome::Failure, &Value::from("address_taken"))
    );
}

#[tokio::test]
async fn a_password_reset_is_recorded_from_its_request_to_the_new_password() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = user_id_of(&t.app, ALICE).await;
    login_bearer(&t.app, ALICE, PASSWORD).await;

    t.app.forgot_password(ALICE, &client()).await.unwrap();
    t.app.forgot_password("nobody@example.com", &client()).await.unwrap();
    let link = link_token(&email_starting(&t.mail, "Reset your password").await);
    t.app.reset_password(&link, secret(NEW_PASSWORD)).await.unwrap();

    let requests = recorded(&t.app, "user.password.reset_requested").await;
    assert_eq!(requests.len(), 2, "both paths write alike");
    assert_eq!(
        (requests[0].outcome, target(&requests[0])),
        (Outcome::Success, (Some("user"), Some(&*alice.to_string())))
    );
    assert_eq!((requests[1].outcome, target(&requests[1])), (Outcome::Failure, (None, None)));
    let reset = only(&t.app, "user.password.reset").await;
    assert_eq!(
        (reset.actor.clone(), target(&reset)),
        (Actor::anonymous(), (Some("user"), Some(&*alice.to_string())))
    );
    assert_eq!(details(&reset)["revoked_sessions"], 1);
    for record in requests.iter().chain([&reset]) {
        let text = clear_text(record);
        assert!(!text.contains(&link) && !text.contains(NEW_PASSWORD) && !text.contains("nobody"), "{text}");
    }
}

#[tokio::test]
async fn a_lockout_is_recorded_by_the_system_and_its_clearing_by_the_administrator() {
    let mut settings = testing::settings();
    settings.lockout = LockoutPolicy {
        max_failures: 3,
        window_millis: 15 * MINUTE,
        lock_millis: 15 * MINUTE,
        max_lock_millis: HOUR,
    };
    let t = app_with_settings(settings).await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = user_id_of(&t.app, ALICE).await;

    for target in [ALICE, "nobody@example.com"] {
        for _ in 0..3 {
            let _ = t.app.login(target, secret("wrong guess"), LoginMode::Bearer, &client()).await;
        }
    }
    let refused = t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
    assert!(matches!(refused, Err(AppError::LoginLocked { .. })), "{refused:?}");
    t.app.admin_set_status(&owner, &alice.to_string(), StatusChange::Unlock).await.unwrap();

    let locked = recorded(&t.app, "user.login.locked").await;
    assert_eq!(locked.len(), 2);
    assert!(locked.iter().all(|r| r.actor == Actor::system()));
    assert_eq!(target(&locked[0]), (Some("user"), Some(&*alice.to_string())));
    assert_eq!(
        (target(&locked[1]), &details(&locked[1])["account"]),
        ((None, None), &Value::from("unknown"))
    );
    assert_eq!(details(&locked[0])["locked_for_secs"], 15 * 60);
    let failed = recorded(&t.app, "user.login.failed").await;
    let last = failed.last().unwrap();
    assert_eq!(
        (target(last), &details(last)["reason"]),
        ((Some("user"), Some(&*alice.to_string())), &Value::from("locked"))
    );
    let cleared = only(&t.app, "user.lockout.cleared").await;
    assert_eq!(
        (cleared.actor.clone(), target(&cleared)),
        (user_actor(owner.user_id), (Some("user"), Some(&*alice.to_string())))
    );
    // The account itself was never on hold: no status change to record.
    assert!(recorded(&t.app, "user.status.changed").await.is_empty());
}

#[tokio::test]
async fn an_ip_rule_names_its_network_but_never_a_single_address() {
    let t = testing::app().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    let rule = |network| NewIpRule {
        network,
        action: "deny",
        scope: "global",
        note: Some("abuse"),
        expires_in_secs: None,
    };

    let network = t.app.admin_create_ip_rule(&owner, None, &rule("198.51.100.0/24")).await.unwrap();
    let single = t.app.admin_create_ip_rule(&owner, None, &rule("192.0.2.44")).await.unwrap();
    t.app.admin_delete_ip_rule(&owner, None, &single.id.to_string()).await.unwrap();

    let created = recorded(&t.app, "ip_rule.created").await;
    assert_eq!(created.len(), 2);
    assert_eq!(target(&created[0]), (Some("ip_rule"), Some(&*network.id.to_string())));
    assert_eq!(details(&created[0])["network"], "198.51.100.0/24");
    assert_eq!(
        (&details(&created[0])["action"], &details(&created[0])["source"]),
        (&Value::from("deny"), &Value::from("admin"))
    );
    let deleted = only(&t.app, "ip_rule.deleted").await;
    for record in [&created[1], &deleted] {
        assert_eq!(record.actor, user_actor(owner.user_id));
        assert_eq!(target(record), (Some("ip_rule"), Some(&*single.id.to_string())));
        assert_eq!(details(record)["single_address"], true);
        assert!(!clear_text(record).contains("192.0.2.44"), "{}", clear_text(record));
    }
}

#[tokio::test]
async fn automatic_responses_to_probing_are_recorded_by_the_system() {
    let mut settings = testing::settings();
    settings.detection = DetectionSettings {
        probing_forbidden: 3,
        probing_response: ProbeResponse::LockAccount,
        ..DetectionSettings::default()
    };
    let t = app_with_settings(settings).await;
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = principal(&t.app, ALICE).await;

    for _ in 0..3 {
        t.app.observe_answer("198.51.100.66".parse().unwrap(), Some(alice), 403).await.unwrap();
    }

    let held = only(&t.app, "user.status.changed").await;
    assert_eq!(
        (held.actor.clone(), target(&held)),
        (Actor::system(), (Some("user"), Some(&*alice.user_id.to_string())))
    );
    let d = details(&held);
    assert_eq!(
        (&d["from"], &d["to"], &d["reason"]),
        (&Value::from("active"), &Value::from("locked"), &Value::from("privilege_probing"))
    );
    let signed_out = only(&t.app, "session.revoked_all").await;
    assert_eq!(
        (signed_out.actor.clone(), details(&signed_out)["revoked"].clone()),
        (Actor::system(), Value::from(1))
    );
}

#[tokio::test]
async fn an_automatic_block_is_recorded_as_a_rule_the_system_created() {
    let mut settings = testing::settings();
    settings.detection = DetectionSettings {
        scanning_not_found: 3,
        scanning_block: Duration::from_secs(600),
        ..DetectionSettings::default()
    };
    let t = app_with_settings(settings).await;

    for _ in 0..3 {
        t.app.observe_answer("198.51.100.66".parse().unwrap(), None, 404).await.unwrap();
    }

    let block = only(&t.app, "ip_rule.created").await;
    assert_eq!(block.actor, Actor::system());
    let d = details(&block);
    assert_eq!(
        (&d["source"], &d["reason"], &d["single_address"]),
        (&Value::from("detection"), &Value::from("scanning"), &Value::from(true))
    );
    assert!(!clear_text(&block).contains("198.51.100.66"));
}

#[tokio::test]
async fn reading_the_security_events_is_recorded_with_what_was_asked() {
    let t = testing::app().await;
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    let _ = t.app.login(OWNER, secret("wrong"), LoginMode::Bearer, &client()).await;

    let filter = SecurityEventFilter { kinds: vec!["login_failed"], ..SecurityEventFilter::default() };
    let page = t.app.admin_list_security_events(&owner, &filter).await.unwrap();

    let read = only(&t.app, "security_events.read").await;
    assert_eq!(read.actor, user_actor(owner.user_id));
    assert_eq!(details(&read)["returned"], page.events.len());
    assert_eq!(details(&read)["kinds"], serde_json::json!(["login_failed"]));
    // A refused read is not a read.
    signup(&t.app, ALICE, PASSWORD).await;
    let alice = principal(&t.app, ALICE).await;
    forbidden(t.app.admin_list_security_events(&alice, &filter).await);
    assert_eq!(recorded(&t.app, "security_events.read").await.len(), 1);
}

#[tokio::test]
async fn key_rotations_promotions_and_reencryption_are_recorded_by_the_system() {
    let mut settings = testing::settings();
    settings.keys.reencrypt_batch = 1;
    let t = app_with_settings(settings).await;
    for address in ["a@example.com", "b@example.com"] {
        signup(&t.app, address, PASSWORD).await;
    }
    let old_index = key_in(&t.app, KeyPurpose::BlindIndex, KeyState::Active).await.unwrap();

    let rotation = t.app.rotate_key(KeyPurpose::BlindIndex, false).await.unwrap();
    t.clock.advance_millis(crate::keys::BLIND_INDEX_PUBLISH_AHEAD_MILLIS);
    assert!(t.app.run_key_schedule().await.unwrap());
    while t.app.reencrypt_step().await.unwrap().remaining > 0 {}
    t.clock.advance_millis(crate::keys::RETIRED_KEY_GRACE_MILLIS);
    assert!(t.app.run_key_schedule().await.unwrap());
    assert_eq!(t.app.rotate_kek().await.unwrap(), 0, "every key is already under the active KEK");

    let rotated = only(&t.app, "key.rotated").await;
    assert_eq!(
        (rotated.actor.clone(), target(&rotated)),
        (Actor::system(), (Some("key"), Some(&*rotation.new_key)))
    );
    let d = details(&rotated);
    assert_eq!(
        (&d["purpose"], &d["emergency"], &d["old_key"]),
        (&Value::from("blind-index"), &Value::from(false), &Value::from(old_index.clone()))
    );
    let promoted = only(&t.app, "key.promoted").await;
    assert_eq!(
        (target(&promoted), &details(&promoted)["old_key"]),
        ((Some("key"), Some(&*rotation.new_key)), &Value::from(old_index.clone()))
    );
    let reencrypted = recorded(&t.app, "key.reencrypted").await;
    let rows: u64 = reencrypted.iter().map(|r| details(r)["rows"].as_u64().unwrap()).sum();
    assert_eq!(
        (reencrypted.len(), rows),
        (2, 2),
        "one account per batch, each batch recorded: {reencrypted:?}"
    );
    let destroyed = only(&t.app, "key.destroyed").await;
    assert_eq!(
        (destroyed.actor.clone(), target(&destroyed)),
        (Actor::system(), (Some("key"), Some(&*old_index)))
    );
    assert_eq!(details(&only(&t.app, "key.kek_rotated").await)["rewrapped"], 0);
    // A step that moves nothing records nothing.
    let before = audit_records(&t.app).await.len();
    t.app.reencrypt_step().await.unwrap();
    assert_eq!(audit_records(&t.app).await.len(), before);
}

#[tokio::test]
async fn an_emergency_signing_rotation_is_recorded_with_the_keys_it_destroyed_and_the_sessions_it_ended() {
    let t = testing::app().await;
    signup(&t.app, ALICE, PASSWORD).await;
    login_bearer(&t.app, ALICE, PASSWORD).await;
    let old = key_in(&t.app, KeyPurpose::Signing, KeyState::Active).await.unwrap();

    let rotation = t.app.rotate_key(KeyPurpose::Signing, true).await.unwrap();

    let rotated = only(&t.app, "key.rotated").await;
    let d = details(&rotated);
    assert_eq!(
        (&d["emergency"], &d["revoked_sessions"]),
        (&Value::from(true), &Value::from(rotation.revoked_sessions))
    );
    assert_eq!(rotation.revoked_sessions, 1);
    assert_eq!(d["destroyed"], serde_json::json!([old]));
}

/// The audit events sealed under a personal-data key (their client's address and user agent, which
/// the chain hashes as ciphertext) can never move to a new key, so a retired key stays while they
/// exist (until retention purges them); they must not keep the re-encryption from finishing.
#[tokio::test]
async fn a_retired_personal_data_key_is_kept_while_audit_events_sealed_under_it_exist() {
    let mut settings = testing::settings();
    settings.keys.reencrypt_batch = 1;
    let t = app_with_settings(settings).await;
    let request =
        RequestContext { ip: Some("203.0.113.7".into()), user_agent: Some("ua".into()), request_id: None };
    // A login with an address nobody has: a request of no known person, so under the shared key
    // (a person's own requests are sealed under their person key; see the erasure tests).
    let somebody = client();
    let unknown = t.app.login("nobody@example.com", secret(PASSWORD), LoginMode::Bearer, &somebody);
    assert!(within_request(request, unknown).await.is_err());
    signup(&t.app, ALICE, PASSWORD).await;
    let old_pii = key_in(&t.app, KeyPurpose::Pii, KeyState::Active).await.unwrap();
    let failed = only(&t.app, "user.login.failed").await;
    assert_eq!(failed.pii_key.as_deref(), Some(&*old_pii));

    t.app.rotate_key(KeyPurpose::Pii, false).await.unwrap();
    let mut steps = 0;
    while t.app.reencrypt_step().await.unwrap().remaining > 0 {
        steps += 1;
        assert!(steps < 20, "re-encryption finishes although audit events stay under the old key");
    }
    t.clock.advance_millis(crate::keys::RETIRED_KEY_GRACE_MILLIS);
    t.app.run_key_schedule().await.unwrap();

    assert_eq!(key_in(&t.app, KeyPurpose::Pii, KeyState::Retired).await.as_deref(), Some(&*old_pii));
    assert!(recorded(&t.app, "key.destroyed").await.is_empty());
    let mut tx = read_tx(&t.app).await;
    assert_eq!(tx.count_pii_rows_under(&old_pii).await.unwrap(), 0, "every data row moved");
    assert!(tx.count_audit_rows_under(&old_pii).await.unwrap() > 0);
    let (ip, user_agent) = t.app.open_audit_client(tx.as_mut(), &failed).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((ip.as_deref(), user_agent.as_deref()), (Some("203.0.113.7"), Some("ua")), "still readable");
}

#[tokio::test]
async fn no_recorded_event_holds_a_password_a_token_an_address_or_a_name() {
    let t = testing::app().await;
    t.app
        .create_user_as_operator(OWNER, Some("Grace Hopper"), secret(PASSWORD), BuiltinRole::Owner)
        .await
        .unwrap();
    let owner = principal(&t.app, OWNER).await;
    let mut request = signup_request(ALICE, PASSWORD);
    request.display_name = Some("Ada Lovelace".into());
    t.app.signup(request, &client()).await.unwrap();
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = t.app.authenticate_bearer(&login.access).unwrap();
    let _ = t.app.login(ALICE, secret("a guess that is wrong"), LoginMode::Cookie, &client()).await;
    t.app.change_password(&alice, secret(PASSWORD), secret(NEW_PASSWORD)).await.unwrap();
    let key = t.app.create_my_api_key(&alice, &key_request(&["profile:read"])).await.unwrap();
    t.app.invite(&owner, BOB).await.unwrap();
    let change = crate::UserChange {
        email: Some("ada@example.com".into()),
        display_name: Some(Some("Augusta King".into())),
    };
    t.app.admin_update_user(&owner, &alice.user_id.to_string(), &change).await.unwrap();

    let records = audit_records(&t.app).await;
    for action in ["user.invited", "user.email.changed", "user.profile.updated", "api_key.created"] {
        assert!(records.iter().any(|r| r.action == action), "{action} recorded");
    }
    let secrets =
        [PASSWORD, NEW_PASSWORD, "a guess", &login.access, &login.refresh, key.secret.expose_secret()];
    // Ids are random text that could hold a short word by chance; these could not.
    let personal = [
        "alice",
        "ada@",
        "bob@",
        "owner@",
        "example.com",
        "Lovelace",
        "Hopper",
        "Augusta",
        "203.0.113.7",
        "use-case-test",
    ];
    for record in &records {
        let text = clear_text(record);
        for clear in secrets.iter().chain(&personal) {
            assert!(!text.contains(clear), "{clear:?} in {}: {text}", record.action);
        }
    }
    assert_eq!(
        details(&only(&t.app, "user.profile.updated").await)["fields"],
        serde_json::json!(["display_name"])
    );
}

#[tokio::test]
async fn every_recorded_change_joins_one_chain_that_verifies() {
    let (t, owner, acme, globex, org_admin, alice) = tenants().await;
    t.app.admin_set_member(&org_admin, &acme, &alice.to_string(), BuiltinRole::Member, None).await.unwrap();
    t.app.admin_rename_organization(&owner, &globex, "Globex Corp").await.unwrap();
    t.app.admin_delete_organization(&owner, &globex).await.unwrap();
    let _ = t.app.login(ALICE, secret("wrong"), LoginMode::Bearer, &client()).await;

    let report = t.app.verify_audit_chain(&|_, _| {}).await.unwrap();

    assert_eq!(report.broken, None);
    assert_eq!(report.events, audit_records(&t.app).await.len() as u64);
    for action in ["instance.created", "organization.created", "organization.updated", "organization.deleted"]
    {
        assert!(!recorded(&t.app, action).await.is_empty(), "{action}");
    }
    let deleted = only(&t.app, "organization.deleted").await;
    assert_eq!(
        (deleted.organization_id.as_deref(), target(&deleted)),
        (Some(&*globex), (Some("organization"), Some(&*globex)))
    );
}
