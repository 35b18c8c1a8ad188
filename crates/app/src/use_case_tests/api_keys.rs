//! Use-case tests of API keys, service accounts and introspection: every way a key is refused, what
//! a key may do (its owner's rights within its scopes, as they are at each use), rotation's grace
//! period, the coalesced record of use, and introspection's answer for each state of a token.

use portcullis_domain::{ApiKeyId, BuiltinRole, OrganizationId, format_api_key};
use secrecy::ExposeSecret;

use super::admin::{forbidden, principal, tenants};
use super::*;
use crate::{CheckRequest, Introspection, IssuedApiKey, NewApiKey, ServiceAccountChange};

const DAY: i64 = 86_400_000;

fn new_key(scopes: &[&str]) -> NewApiKey {
    NewApiKey {
        name: "deploy".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 30,
        allowed_cidrs: Vec::new(),
    }
}

fn from(ip: &str) -> ClientContext {
    ClientContext { ip: Some(ip.into()), user_agent: None }
}

fn unauthenticated<T: std::fmt::Debug>(result: Result<T, AppError>) {
    assert!(matches!(result, Err(AppError::Unauthenticated)), "{result:?}");
}

fn invalid<T: std::fmt::Debug>(result: Result<T, AppError>, field: &str) {
    match result {
        Err(AppError::Validation(issues)) => assert!(issues.iter().any(|i| i.field == field), "{issues:?}"),
        other => panic!("expected a validation error on {field}, got {other:?}"),
    }
}

fn text(issued: &IssuedApiKey) -> &str {
    issued.secret.expose_secret()
}

fn own(principal: &Principal, permission: &str) -> CheckRequest {
    CheckRequest {
        permission: permission.into(),
        owner: Some(principal.user_id),
        organization: None,
        subject: None,
    }
}

#[tokio::test]
async fn a_key_is_shown_once_kept_as_a_digest_and_acts_within_its_scopes() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let issued = t.app.create_my_api_key(&alice, &new_key(&["profile:read"])).await.unwrap();
    let key = text(&issued).to_owned();
    assert!(key.starts_with(&format!("pcs_{}_", issued.key.id)), "{key}");

    let as_key = t.app.authenticate_api_key(&key, &client()).await.unwrap();
    assert_eq!(as_key.user_id, alice.user_id);
    assert_eq!(as_key.credential, crate::Credential::ApiKey(issued.key.id));
    assert!(t.app.check(&as_key, &own(&as_key, "profile:read")).await.unwrap().allowed);
    assert!(
        !t.app.check(&as_key, &own(&as_key, "sessions:read")).await.unwrap().allowed,
        "outside the scopes"
    );
    assert!(
        t.app.check(&alice, &own(&alice, "sessions:read")).await.unwrap().allowed,
        "the session is not narrowed"
    );

    // Nothing stored or listed holds the secret: the row has a digest, the list metadata.
    let mut tx = read_tx(&t.app).await;
    let stored = tx.api_key(&issued.key.id).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    let secret_part = &key[27..70];
    assert_eq!(stored.secret_hash, crate::secret_token::hash_token(secret_part));
    let listed = t.app.list_my_api_keys(&alice).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}{stored:?}").contains(secret_part));
    assert_eq!(listed[0].last_used_ip.as_deref(), Some("203.0.113.7"));
    assert!(listed[0].key.last_used_at.is_some());
}

#[tokio::test]
async fn every_kind_of_bad_key_is_refused_before_or_at_the_lookup() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let issued = t.app.create_my_api_key(&alice, &new_key(&["profile:*"])).await.unwrap();
    let key = text(&issued).to_owned();

    let mut typo = key.clone().into_bytes();
    typo[40] = if typo[40] == b'x' { b'y' } else { b'x' };
    let unknown = format_api_key(&ApiKeyId::from_random_bytes([9; 16]), [1; 32]);
    let wrong_secret = format_api_key(&issued.key.id, [2; 32]);
    for bad in [
        String::from_utf8(typo).unwrap(),
        unknown,
        wrong_secret,
        key[..key.len() - 1].to_owned(),
        String::new(),
    ] {
        unauthenticated(t.app.authenticate_api_key(&bad, &client()).await);
    }
    t.app.authenticate_api_key(&key, &client()).await.unwrap();

    // Revoked: at once on this node, though the key was just cached.
    t.app.revoke_my_api_key(&alice, &issued.key.id.to_string()).await.unwrap();
    unauthenticated(t.app.authenticate_api_key(&key, &client()).await);
    // Another account's key, a missing or malformed id: not found alike.
    t.app.create_user_as_operator(BOB, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let bob = principal(&t.app, BOB).await;
    let bobs = t.app.create_my_api_key(&bob, &new_key(&["profile:read"])).await.unwrap();
    for id in [bobs.key.id.to_string(), "AAAAAAAAAAAAAAAAAAAAAA".into(), "nonsense".into()] {
        assert!(matches!(t.app.revoke_my_api_key(&alice, &id).await, Err(AppError::NotFound)), "{id}");
        assert!(matches!(t.app.rotate_my_api_key(&alice, &id).await, Err(AppError::NotFound)), "{id}");
    }
    t.app.authenticate_api_key(text(&bobs), &client()).await.unwrap();

    // Expired.
    let short = NewApiKey { expires_in_days: 1, ..new_key(&["profile:read"]) };
    let short = t.app.create_my_api_key(&alice, &short).await.unwrap();
    t.app.authenticate_api_key(text(&short), &client()).await.unwrap();
    t.clock.advance_millis(DAY);
    unauthenticated(t.app.authenticate_api_key(text(&short), &client()).await);
}

#[tokio::test]
async fn a_rotated_keys_old_secret_works_only_for_the_grace_period() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let first = t.app.create_my_api_key(&alice, &new_key(&["profile:read"])).await.unwrap();
    let rotated = t.app.rotate_my_api_key(&alice, &first.key.id.to_string()).await.unwrap();
    assert_eq!(rotated.key.id, first.key.id);
    assert_ne!(text(&rotated), text(&first));
    t.app.authenticate_api_key(text(&first), &client()).await.unwrap();
    t.app.authenticate_api_key(text(&rotated), &client()).await.unwrap();
    // Past 24 h (and past the node's 2 s cache of the row), only the new secret works.
    t.clock.advance_millis(DAY + 1);
    unauthenticated(t.app.authenticate_api_key(text(&first), &client()).await);
    t.app.authenticate_api_key(text(&rotated), &client()).await.unwrap();
    // A day on, Alice's session is too old for minting secrets until she proves herself again.
    let stale = t.app.rotate_my_api_key(&alice, &rotated.key.id.to_string()).await;
    assert!(matches!(stale, Err(AppError::ReauthenticationRequired { .. })), "{stale:?}");
    t.app.reauthenticate(&alice, Some(secret(PASSWORD)), None, None, &client()).await.unwrap();
    // A revoked key cannot be rotated back to life.
    t.app.revoke_my_api_key(&alice, &first.key.id.to_string()).await.unwrap();
    forbidden(t.app.rotate_my_api_key(&alice, &first.key.id.to_string()).await);
}

#[tokio::test]
async fn a_key_outside_its_networks_is_refused_and_raises_a_security_event() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let fenced = NewApiKey {
        allowed_cidrs: vec!["198.51.100.0/24".into(), "2001:db8::1".into()],
        ..new_key(&["profile:read"])
    };
    let issued = t.app.create_my_api_key(&alice, &fenced).await.unwrap();
    t.app.authenticate_api_key(text(&issued), &from("198.51.100.20")).await.unwrap();
    t.app.authenticate_api_key(text(&issued), &from("2001:db8::1")).await.unwrap();
    for outside in ["203.0.113.9", "2001:db8::2"] {
        forbidden(t.app.authenticate_api_key(text(&issued), &from(outside)).await);
    }
    forbidden(t.app.authenticate_api_key(text(&issued), &ClientContext::default()).await);
    let events = events_of(&t.app, alice.user_id).await;
    let refused: Vec<_> =
        events.iter().filter(|(e, _)| e.kind == SecurityEventKind::ApiKeyOutsideAllowedNetworks).collect();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().any(|(_, ip)| ip.as_deref() == Some("203.0.113.9")));
}

#[tokio::test]
async fn a_key_follows_its_owners_rights_and_status_at_each_use() {
    let (t, owner, _, _, _, _) = tenants().await;
    let admin = t.app.create_user_as_operator(BOB, None, secret(PASSWORD), BuiltinRole::Admin).await.unwrap();
    let admin_id = admin.id.to_string();
    let bob = principal(&t.app, BOB).await;
    let issued = t.app.create_my_api_key(&bob, &new_key(&["users:read"])).await.unwrap();
    let as_key = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    t.app.admin_list_users(&as_key, None, None, None).await.unwrap();
    // A scope the key lacks, even though its owner holds it.
    forbidden(t.app.admin_create_organization(&as_key, "keyorg", "Key org").await);

    // The owner loses users:read: the key loses it at its next use.
    t.app.admin_set_role(&owner, &admin_id, BuiltinRole::Member).await.unwrap();
    let as_key = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    forbidden(t.app.admin_list_users(&as_key, None, None, None).await);
    // Scopes beyond what the owner holds are refused when the key is made.
    let bob = principal(&t.app, BOB).await;
    forbidden(t.app.create_my_api_key(&bob, &new_key(&["users:read"])).await);
    forbidden(t.app.create_my_api_key(&bob, &new_key(&["*:*"])).await);

    // A disabled owner's keys stop at once.
    t.app.admin_set_status(&owner, &admin_id, crate::StatusChange::Disable).await.unwrap();
    unauthenticated(t.app.authenticate_api_key(text(&issued), &client()).await);
}

#[tokio::test]
async fn a_key_cannot_manage_keys_passwords_or_sessions_and_bad_requests_are_refused_by_field() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let issued =
        t.app.create_my_api_key(&alice, &new_key(&["profile:*", "sessions:*", "apikeys:*"])).await.unwrap();
    let as_key = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    forbidden(t.app.create_my_api_key(&as_key, &new_key(&["profile:read"])).await);
    forbidden(t.app.list_my_api_keys(&as_key).await);
    forbidden(t.app.revoke_my_api_key(&as_key, &issued.key.id.to_string()).await);
    forbidden(t.app.list_sessions(&as_key).await);
    forbidden(t.app.logout_all(&as_key).await);
    forbidden(t.app.change_password(&as_key, secret(PASSWORD), secret(NEW_PASSWORD)).await);

    invalid(
        t.app
            .create_my_api_key(&alice, &NewApiKey { expires_in_days: 0, ..new_key(&["profile:read"]) })
            .await,
        "/expires_in_days",
    );
    invalid(
        t.app
            .create_my_api_key(&alice, &NewApiKey { expires_in_days: 366, ..new_key(&["profile:read"]) })
            .await,
        "/expires_in_days",
    );
    invalid(t.app.create_my_api_key(&alice, &new_key(&[])).await, "/scopes");
    invalid(t.app.create_my_api_key(&alice, &new_key(&["profile"])).await, "/scopes");
    invalid(
        t.app
            .create_my_api_key(&alice, &NewApiKey { name: String::new(), ..new_key(&["profile:read"]) })
            .await,
        "/name",
    );
    let bad_net = NewApiKey { allowed_cidrs: vec!["10.0.0.0/33".into()], ..new_key(&["profile:read"]) };
    invalid(t.app.create_my_api_key(&alice, &bad_net).await, "/allowed_cidrs");
    assert_eq!(t.app.list_my_api_keys(&alice).await.unwrap().len(), 1, "nothing was stored");
}

#[tokio::test]
async fn uses_are_recorded_at_most_once_a_minute_per_key() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let issued = t.app.create_my_api_key(&alice, &new_key(&["profile:read"])).await.unwrap();
    let last_use = |t: &TestApp| {
        let app = t.app.clone();
        async move { app.list_my_api_keys(&principal(&app, ALICE).await).await.unwrap()[0].clone() }
    };
    t.app.authenticate_api_key(text(&issued), &from("198.51.100.1")).await.unwrap();
    let first = last_use(&t).await;
    t.clock.advance_millis(30 * SECOND);
    t.app.authenticate_api_key(text(&issued), &from("198.51.100.2")).await.unwrap();
    let second = last_use(&t).await;
    assert_eq!(second.key.last_used_at, first.key.last_used_at, "no write within the minute");
    assert_eq!(second.last_used_ip.as_deref(), Some("198.51.100.1"));
    t.clock.advance_millis(31 * SECOND);
    t.app.authenticate_api_key(text(&issued), &from("198.51.100.3")).await.unwrap();
    let third = last_use(&t).await;
    assert!(third.key.last_used_at > first.key.last_used_at);
    assert_eq!(third.last_used_ip.as_deref(), Some("198.51.100.3"));
}

#[tokio::test]
async fn service_accounts_are_tenant_scoped_and_their_keys_stop_when_disabled() {
    let (t, owner, acme, globex, org_admin, _) = tenants().await;
    // Acme's admin makes a service account in Acme, but not an owner-role one, nor one in Globex.
    let robot = t
        .app
        .admin_create_service_account(&org_admin, &acme, "CI robot", BuiltinRole::Auditor)
        .await
        .unwrap();
    forbidden(t.app.admin_create_service_account(&org_admin, &acme, "Boss", BuiltinRole::Owner).await);
    invalid(
        t.app.admin_create_service_account(&org_admin, &globex, "Spy", BuiltinRole::Member).await,
        "/organization",
    );
    invalid(
        t.app.admin_create_service_account(&org_admin, &acme, "CI robot", BuiltinRole::Member).await,
        "/name",
    );
    let theirs =
        t.app.admin_create_service_account(&owner, &globex, "Globex bot", BuiltinRole::Admin).await.unwrap();
    let theirs_id = theirs.id.to_string();
    for result in [
        t.app.admin_get_service_account(&org_admin, &theirs_id).await.map(|_| ()),
        t.app
            .admin_update_service_account(&org_admin, &theirs_id, &ServiceAccountChange::default())
            .await
            .map(|_| ()),
        t.app.admin_delete_service_account(&org_admin, &theirs_id).await,
        t.app.admin_list_service_account_keys(&org_admin, &theirs_id).await.map(|_| ()),
        t.app
            .admin_create_service_account_key(&org_admin, &theirs_id, &new_key(&["users:read"]))
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(result, Err(AppError::NotFound)), "{result:?}");
    }
    let (listed, _) = t.app.admin_list_service_accounts(&org_admin, Some(&acme), None, None).await.unwrap();
    assert_eq!(listed, vec![robot.clone()]);
    forbidden(t.app.admin_list_service_accounts(&org_admin, None, None, None).await);

    // The robot's key reads Acme's members and nothing of Globex's.
    let robot_id = robot.id.to_string();
    let issued = t
        .app
        .admin_create_service_account_key(&org_admin, &robot_id, &new_key(&["memberships:read"]))
        .await
        .unwrap();
    forbidden(
        t.app.admin_create_service_account_key(&org_admin, &robot_id, &new_key(&["memberships:write"])).await,
    );
    let as_robot = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    assert_eq!(as_robot.kind, crate::PrincipalKind::ServiceAccount);
    t.app.admin_list_members(&as_robot, &acme, None, None).await.unwrap();
    assert!(matches!(
        t.app.admin_list_members(&as_robot, &globex, None, None).await,
        Err(AppError::NotFound)
    ));
    forbidden(t.app.profile(&as_robot).await);
    // The check API sees a service account as a subject too.
    let about_robot = CheckRequest {
        permission: "memberships:read".into(),
        owner: None,
        organization: Some(OrganizationId::parse(&acme).unwrap()),
        subject: Some(robot.id),
    };
    assert!(t.app.check(&owner, &about_robot).await.unwrap().allowed);

    let disable = ServiceAccountChange { active: Some(false), ..ServiceAccountChange::default() };
    t.app.admin_update_service_account(&org_admin, &robot_id, &disable).await.unwrap();
    unauthenticated(t.app.authenticate_api_key(text(&issued), &client()).await);
    let enable = ServiceAccountChange { active: Some(true), ..ServiceAccountChange::default() };
    t.app.admin_update_service_account(&org_admin, &robot_id, &enable).await.unwrap();
    t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    t.app.admin_delete_service_account(&org_admin, &robot_id).await.unwrap();
    unauthenticated(t.app.authenticate_api_key(text(&issued), &client()).await);
}

#[tokio::test]
async fn introspection_describes_live_tokens_and_says_only_inactive_otherwise() {
    let (t, owner, acme, _, _, _) = tenants().await;
    let verifier =
        t.app.admin_create_service_account(&owner, &acme, "Verifier", BuiltinRole::Admin).await.unwrap();
    let verifier_key = t
        .app
        .admin_create_service_account_key(&owner, &verifier.id.to_string(), &new_key(&["tokens:introspect"]))
        .await
        .unwrap();
    let verifier = t.app.authenticate_api_key(text(&verifier_key), &client()).await.unwrap();

    // Alice belongs to Acme, the verifier's organization; Bob does not.
    let alice_id = t.app.admin_list_users(&owner, None, None, None).await.unwrap();
    let alice_id = alice_id.users.iter().find(|u| u.email == ALICE).unwrap().id.to_string();
    t.app.admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Member, None).await.unwrap();
    t.app.create_user_as_operator(BOB, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let outsider = login_bearer(&t.app, BOB, PASSWORD).await;
    let login = login_bearer(&t.app, ALICE, PASSWORD).await;
    let alice = principal(&t.app, ALICE).await;
    let alices_key = t.app.create_my_api_key(&alice, &new_key(&["profile:read"])).await.unwrap();

    let token = t.app.introspect(&verifier, &login.access).await.unwrap();
    assert!(token.active);
    assert_eq!(token.sub, Some(login.user.to_string()));
    assert_eq!(token.token_type, Some("Bearer"));
    let key = t.app.introspect(&verifier, text(&alices_key)).await.unwrap();
    assert!(key.active);
    assert_eq!(key.scope.as_deref(), Some("profile:read"));
    assert_eq!(key.client_id, Some(alices_key.key.id.to_string()));
    assert_eq!(key.token_type, Some("api_key"));

    let inactive = Introspection::default();
    // Another organization's person looks unknown: introspection does not cross tenants.
    assert_eq!(t.app.introspect(&verifier, &outsider.access).await.unwrap(), inactive);
    for garbage in ["", "pcs_", "not.a.jwt", &format_api_key(&ApiKeyId::from_random_bytes([3; 16]), [3; 32])]
    {
        assert_eq!(t.app.introspect(&verifier, garbage).await.unwrap(), inactive, "{garbage:?}");
    }
    t.app.revoke_my_api_key(&alice, &alices_key.key.id.to_string()).await.unwrap();
    assert_eq!(t.app.introspect(&verifier, text(&alices_key)).await.unwrap(), inactive);
    t.app.logout(&t.app.authenticate_bearer(&login.access).unwrap()).await.unwrap();
    assert_eq!(t.app.introspect(&verifier, &login.access).await.unwrap(), inactive);
    let expiring = t
        .app
        .create_my_api_key(&alice, &NewApiKey { expires_in_days: 1, ..new_key(&["profile:read"]) })
        .await
        .unwrap();
    assert!(t.app.introspect(&verifier, text(&expiring)).await.unwrap().active);
    t.clock.advance_millis(DAY);
    let verifier = t.app.authenticate_api_key(text(&verifier_key), &client()).await.unwrap();
    assert_eq!(t.app.introspect(&verifier, text(&expiring)).await.unwrap(), inactive);

    // Only a service account's key may ask, and only with tokens:introspect.
    forbidden(t.app.introspect(&alice, &login.access).await);
    t.app.reauthenticate(&owner, Some(secret(PASSWORD)), None, None, &client()).await.unwrap();
    let bystander =
        t.app.admin_create_service_account(&owner, &acme, "Bystander", BuiltinRole::Member).await.unwrap();
    forbidden(
        t.app
            .admin_create_service_account_key(
                &owner,
                &bystander.id.to_string(),
                &new_key(&["tokens:introspect"]),
            )
            .await,
    );
    let plain = t
        .app
        .admin_create_service_account_key(&owner, &bystander.id.to_string(), &new_key(&["profile:read"]))
        .await
        .unwrap();
    let bystander = t.app.authenticate_api_key(text(&plain), &client()).await.unwrap();
    forbidden(t.app.introspect(&bystander, text(&verifier_key)).await);
}

#[tokio::test]
async fn a_key_cannot_mint_credentials_that_would_outlive_it() {
    let (t, owner, acme, _, _, _) = tenants().await;
    let issued = t.app.create_my_api_key(&owner, &new_key(&["*:*"])).await.unwrap();
    let as_key = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    let robot = t.app.admin_create_service_account(&owner, &acme, "Robot", BuiltinRole::Admin).await.unwrap();
    let robot_id = robot.id.to_string();
    let robot_key = t.app.admin_create_service_account_key(&owner, &robot_id, &new_key(&["*:*"])).await;
    forbidden(robot_key.map(|_| ()));
    let robot_key = t
        .app
        .admin_create_service_account_key(
            &owner,
            &robot_id,
            &new_key(&["serviceaccounts:*", "users:create", "invites:create"]),
        )
        .await
        .unwrap();
    let as_robot = t.app.authenticate_api_key(text(&robot_key), &client()).await.unwrap();
    for caller in [&as_key, &as_robot] {
        forbidden(t.app.admin_create_service_account(caller, &acme, "Heir", BuiltinRole::Member).await);
        let enable = ServiceAccountChange { active: Some(true), ..ServiceAccountChange::default() };
        forbidden(t.app.admin_update_service_account(caller, &robot_id, &enable).await);
        forbidden(t.app.admin_create_service_account_key(caller, &robot_id, &new_key(&["users:read"])).await);
        forbidden(
            t.app.admin_rotate_service_account_key(caller, &robot_id, &robot_key.key.id.to_string()).await,
        );
        forbidden(t.app.invite(caller, "heir@example.com").await);
        forbidden(
            t.app
                .admin_create_user(caller, "heir@example.com", None, secret(PASSWORD), BuiltinRole::Member)
                .await,
        );
    }
    // A person's key cannot end its owner's sessions through the admin route either.
    forbidden(t.app.admin_revoke_sessions(&as_key, &owner.user_id.to_string()).await);
    // Revoking still works with a key: it only takes away.
    t.app.admin_revoke_service_account_key(&as_key, &robot_id, &robot_key.key.id.to_string()).await.unwrap();
    unauthenticated(t.app.authenticate_api_key(text(&robot_key), &client()).await);
}

#[tokio::test]
async fn the_profile_needs_profile_read_from_a_key() {
    let (t, _, _, _, _, _) = tenants().await;
    let alice = principal(&t.app, ALICE).await;
    let narrow = t.app.create_my_api_key(&alice, &new_key(&["sessions:read"])).await.unwrap();
    let narrow = t.app.authenticate_api_key(text(&narrow), &client()).await.unwrap();
    forbidden(t.app.my_profile(&narrow).await);
    let reader = t.app.create_my_api_key(&alice, &new_key(&["profile:read"])).await.unwrap();
    let reader = t.app.authenticate_api_key(text(&reader), &client()).await.unwrap();
    assert_eq!(t.app.my_profile(&reader).await.unwrap().email, ALICE);
    assert_eq!(t.app.my_profile(&alice).await.unwrap().email, ALICE);
}

#[tokio::test]
async fn a_service_account_holds_custom_roles_like_a_member_and_loses_them_with_the_role() {
    let (t, owner, acme, globex, org_admin, _) = tenants().await;
    let billing =
        t.app.admin_create_role(&owner, &acme, "billing", &["invoices:*".to_owned()]).await.unwrap();
    let theirs =
        t.app.admin_create_role(&owner, &globex, "theirs", &["invoices:*".to_owned()]).await.unwrap();
    let robot =
        t.app.admin_create_service_account(&owner, &acme, "Biller", BuiltinRole::Member).await.unwrap();
    let robot_id = robot.id.to_string();
    // Acme's admin lacks invoices:*, so it can neither give the role nor take it.
    let give =
        ServiceAccountChange { custom_roles: Some(vec![billing.id.to_string()]), ..Default::default() };
    forbidden(t.app.admin_update_service_account(&org_admin, &robot_id, &give).await);
    let other =
        ServiceAccountChange { custom_roles: Some(vec![theirs.id.to_string()]), ..Default::default() };
    invalid(t.app.admin_update_service_account(&owner, &robot_id, &other).await, "/roles");
    let given = t.app.admin_update_service_account(&owner, &robot_id, &give).await.unwrap();
    assert_eq!(given.custom_roles, vec![billing.clone()]);
    assert_eq!(
        t.app.admin_get_service_account(&owner, &robot_id).await.unwrap().custom_roles,
        vec![billing.clone()]
    );

    let issued =
        t.app.admin_create_service_account_key(&owner, &robot_id, &new_key(&["invoices:pay"])).await.unwrap();
    let as_robot = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    let pay = CheckRequest {
        permission: "invoices:pay".into(),
        owner: None,
        organization: Some(OrganizationId::parse(&acme).unwrap()),
        subject: None,
    };
    assert!(t.app.check(&as_robot, &pay).await.unwrap().allowed);
    let about_robot = CheckRequest { subject: Some(robot.id), ..pay.clone() };
    assert!(t.app.check(&owner, &about_robot).await.unwrap().allowed);
    forbidden(
        t.app.admin_create_service_account_key(&org_admin, &robot_id, &new_key(&["profile:read"])).await,
    );

    // The role is in use by the service account; forced deletion takes it away at once.
    let Err(AppError::RoleInUse { holders }) =
        t.app.admin_delete_role(&owner, &acme, &billing.id.to_string(), false).await
    else {
        panic!("a role a service account holds is in use")
    };
    assert_eq!(holders, vec![robot.id]);
    t.app.admin_delete_role(&owner, &acme, &billing.id.to_string(), true).await.unwrap();
    let as_robot = t.app.authenticate_api_key(text(&issued), &client()).await.unwrap();
    assert!(!t.app.check(&as_robot, &pay).await.unwrap().allowed);
}
