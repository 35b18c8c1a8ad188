//! Use-case tests of authorization and account administration: the permission each use case needs,
//! the guard rails (no escalation, no acting on a stronger account, the last owner stays), and what
//! disabling an account does to its sessions.

use portcullis_domain::{BuiltinRole, UserStatus};

use super::*;
use crate::{CheckRequest, StatusChange};

pub(super) const ADMIN: &str = "admin@example.com";
const AUDITOR: &str = "auditor@example.com";

/// An app with an owner, an admin, an auditor and two members, each logged in.
struct Cast {
    t: TestApp,
    owner: Principal,
    admin: Principal,
    auditor: Principal,
    alice: Principal,
    bob: Principal,
}

pub(super) async fn principal(app: &App, email: &str) -> Principal {
    app.authenticate_bearer(&login_bearer(app, email, PASSWORD).await.access).unwrap()
}

async fn cast() -> Cast {
    let t = testing::app().await;
    for (email, role) in [
        (OWNER, BuiltinRole::Owner),
        (ADMIN, BuiltinRole::Admin),
        (AUDITOR, BuiltinRole::Auditor),
        (ALICE, BuiltinRole::Member),
        (BOB, BuiltinRole::Member),
    ] {
        t.app.create_user_as_operator(email, None, secret(PASSWORD), role).await.unwrap();
    }
    let owner = principal(&t.app, OWNER).await;
    let admin = principal(&t.app, ADMIN).await;
    let auditor = principal(&t.app, AUDITOR).await;
    let alice = principal(&t.app, ALICE).await;
    let bob = principal(&t.app, BOB).await;
    Cast { t, owner, admin, auditor, alice, bob }
}

pub(super) fn forbidden<T: std::fmt::Debug>(result: Result<T, AppError>) {
    assert!(matches!(result, Err(AppError::Forbidden(_))), "{result:?}");
}

#[tokio::test]
async fn the_user_list_needs_users_read_and_pages_through_every_account_once() {
    let c = cast().await;
    forbidden(c.t.app.admin_list_users(&c.alice, None, None, None).await);

    let first = c.t.app.admin_list_users(&c.auditor, None, None, Some(2)).await.unwrap();
    let second = c.t.app.admin_list_users(&c.auditor, first.next.as_deref(), None, Some(2)).await.unwrap();
    let third = c.t.app.admin_list_users(&c.auditor, second.next.as_deref(), None, Some(2)).await.unwrap();

    let mut emails: Vec<String> =
        first.users.iter().chain(&second.users).chain(&third.users).map(|u| u.email.clone()).collect();
    assert_eq!(third.next, None);
    emails.sort();
    assert_eq!(emails, [ADMIN, ALICE, AUDITOR, BOB, OWNER].map(str::to_owned).to_vec());
    for (after, status, limit) in
        [(Some("nope"), None, None), (None, Some("asleep"), None), (None, None, Some(201))]
    {
        let result = c.t.app.admin_list_users(&c.admin, after, status, limit).await;
        assert!(matches!(result, Err(AppError::Validation(_))), "{result:?}");
    }
}

#[tokio::test]
async fn disabling_an_account_ends_its_sessions_at_once_and_enabling_lets_it_log_in_again() {
    let c = cast().await;
    let alice_login = login_bearer(&c.t.app, ALICE, PASSWORD).await;
    let id = c.alice.user_id.to_string();

    forbidden(c.t.app.admin_set_status(&c.auditor, &id, StatusChange::Disable).await);
    forbidden(c.t.app.admin_set_status(&c.bob, &id, StatusChange::Disable).await);
    let disabled = c.t.app.admin_set_status(&c.admin, &id, StatusChange::Disable).await.unwrap();

    assert_eq!(disabled.status, UserStatus::Disabled);
    assert!(matches!(c.t.app.authenticate_bearer(&alice_login.access), Err(AppError::Unauthenticated)));
    let refused = c.t.app.login(ALICE, secret(PASSWORD), LoginMode::Bearer, &client()).await;
    assert!(matches!(refused, Err(AppError::InvalidCredentials)), "{refused:?}");
    c.t.app.admin_set_status(&c.admin, &id, StatusChange::Enable).await.unwrap();
    login_bearer(&c.t.app, ALICE, PASSWORD).await;
}

#[tokio::test]
async fn nobody_grants_more_than_they_hold_or_acts_on_a_stronger_account() {
    let c = cast().await;
    let (alice, owner) = (c.alice.user_id.to_string(), c.owner.user_id.to_string());
    // An admin cannot make an owner, cannot touch the owner, and a member cannot promote itself.
    forbidden(c.t.app.admin_set_role(&c.admin, &alice, BuiltinRole::Owner).await);
    forbidden(c.t.app.admin_set_status(&c.admin, &owner, StatusChange::Disable).await);
    forbidden(c.t.app.admin_delete_user(&c.admin, &owner).await);
    forbidden(c.t.app.admin_set_role(&c.admin, &owner, BuiltinRole::Member).await);
    forbidden(c.t.app.admin_set_role(&c.alice, &alice, BuiltinRole::Admin).await);
    forbidden(
        c.t.app
            .admin_create_user(&c.admin, "new@example.com", None, secret(PASSWORD), BuiltinRole::Owner)
            .await,
    );
    // Nobody changes their own role or disables themselves.
    forbidden(c.t.app.admin_set_role(&c.owner, &owner, BuiltinRole::Admin).await);
    forbidden(c.t.app.admin_set_status(&c.admin, &c.admin.user_id.to_string(), StatusChange::Disable).await);

    let promoted = c.t.app.admin_set_role(&c.admin, &alice, BuiltinRole::Auditor).await.unwrap();
    assert_eq!(promoted.role, BuiltinRole::Auditor);
    assert!(
        c.t.app.admin_list_users(&c.alice, None, None, None).await.is_ok(),
        "the new role applies at once"
    );
    let made =
        c.t.app
            .admin_create_user(&c.owner, "new@example.com", None, secret(PASSWORD), BuiltinRole::Owner)
            .await;
    assert_eq!(made.unwrap().role, BuiltinRole::Owner);
}

#[tokio::test]
async fn two_owners_demoting_each_other_on_two_nodes_leave_an_active_owner() {
    // Node b still holds its owner's profile (and so its owner grants) in its 2 s cache when node a
    // has already demoted it. The caller's role re-read under the accounts lock refuses the second
    // demotion, and behind it the count of active owners (read under the same lock) would too.
    let (a, b) = two_nodes().await;
    for email in [OWNER, "second@example.com"] {
        a.app.create_user_as_operator(email, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    }
    let first = principal(&a.app, OWNER).await;
    let second = principal(&b.app, "second@example.com").await;
    b.app.profile(&second).await.unwrap();
    a.app.admin_set_role(&first, &second.user_id.to_string(), BuiltinRole::Admin).await.unwrap();

    let last = first.user_id.to_string();
    for result in [
        b.app.admin_set_role(&second, &last, BuiltinRole::Admin).await.map(|_| ()),
        b.app.admin_set_status(&second, &last, StatusChange::Disable).await.map(|_| ()),
        b.app.admin_delete_user(&second, &last).await,
    ] {
        forbidden(result);
    }
    let owner = a.app.admin_get_user(&first, &last).await.unwrap();
    assert_eq!((owner.role, owner.status), (BuiltinRole::Owner, UserStatus::Active));
}

#[tokio::test]
async fn a_just_demoted_owner_cannot_act_on_its_stale_cached_grants_on_another_node() {
    let (a, b) = two_nodes().await;
    for email in [OWNER, "second@example.com", ALICE] {
        let role = if email == ALICE { BuiltinRole::Member } else { BuiltinRole::Owner };
        a.app.create_user_as_operator(email, None, secret(PASSWORD), role).await.unwrap();
    }
    let first = principal(&a.app, OWNER).await;
    let second = principal(&b.app, "second@example.com").await;
    b.app.profile(&second).await.unwrap();
    a.app.admin_set_role(&first, &second.user_id.to_string(), BuiltinRole::Member).await.unwrap();

    // Node b still caches the second owner's role; the writes re-read the caller under the lock.
    let alice = principal(&a.app, ALICE).await.user_id.to_string();
    forbidden(b.app.admin_set_role(&second, &alice, BuiltinRole::Owner).await);
    forbidden(
        b.app
            .admin_create_user(&second, "puppet@example.com", None, secret(PASSWORD), BuiltinRole::Owner)
            .await,
    );
    forbidden(b.app.admin_set_status(&second, &alice, StatusChange::Disable).await);
    forbidden(b.app.admin_delete_user(&second, &alice).await);
    assert_eq!(a.app.admin_get_user(&first, &alice).await.unwrap().role, BuiltinRole::Member);
    assert_eq!(count_users(&a.app).await, 3, "no stand-in owner was made");
}

#[tokio::test]
async fn a_disabled_account_holds_no_permission_even_where_its_profile_is_cached() {
    let (a, b) = two_nodes().await;
    a.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    a.app.create_user_as_operator(ADMIN, None, secret(PASSWORD), BuiltinRole::Admin).await.unwrap();
    let owner = principal(&a.app, OWNER).await;
    let admin = principal(&b.app, ADMIN).await;
    b.app.profile(&admin).await.unwrap();
    a.app.admin_set_status(&owner, &admin.user_id.to_string(), StatusChange::Disable).await.unwrap();

    // Node b has neither synced the revocation nor let its cached profile expire.
    forbidden_or_unauthenticated(
        b.app.admin_set_status(&admin, &admin.user_id.to_string(), StatusChange::Enable).await,
    );
    forbidden_or_unauthenticated(
        b.app
            .admin_create_user(&admin, "stand-in@example.com", None, secret(PASSWORD), BuiltinRole::Admin)
            .await,
    );
    b.clock.advance_millis(crate::PROFILE_CACHE_MILLIS);
    assert!(matches!(b.app.profile(&admin).await, Err(AppError::Unauthenticated)));
    assert_eq!(count_users(&a.app).await, 2);
}

fn forbidden_or_unauthenticated<T: std::fmt::Debug>(result: Result<T, AppError>) {
    assert!(matches!(result, Err(AppError::Forbidden(_) | AppError::Unauthenticated)), "{result:?}");
}

#[tokio::test]
async fn deleting_an_account_ends_its_sessions_and_an_unknown_or_malformed_id_is_not_found() {
    let c = cast().await;
    let bob_login = login_bearer(&c.t.app, BOB, PASSWORD).await;
    let bob = c.bob.user_id.to_string();

    c.t.app.admin_delete_user(&c.admin, &bob).await.unwrap();

    assert!(matches!(c.t.app.authenticate_bearer(&bob_login.access), Err(AppError::Unauthenticated)));
    for id in [bob.as_str(), "not-an-id", "00000000-0000-4000-8000-000000000000"] {
        let result = c.t.app.admin_get_user(&c.admin, id).await;
        assert!(matches!(result, Err(AppError::NotFound)), "{id}: {result:?}");
    }
    assert!(matches!(c.t.app.admin_delete_user(&c.admin, &bob).await, Err(AppError::NotFound)));
}

#[tokio::test]
async fn revoking_an_accounts_sessions_needs_sessions_delete_and_a_member_may_end_only_its_own() {
    let c = cast().await;
    let alice_login = login_bearer(&c.t.app, ALICE, PASSWORD).await;
    let alice = c.alice.user_id.to_string();
    forbidden(c.t.app.admin_revoke_sessions(&c.bob, &alice).await);
    forbidden(c.t.app.admin_revoke_sessions(&c.auditor, &alice).await);

    let ended = c.t.app.admin_revoke_sessions(&c.admin, &alice).await.unwrap();

    assert_eq!(ended, 2, "the cast's login and this one");
    assert!(c.t.app.authenticate_bearer(&alice_login.access).is_err());
    let bob_again = principal(&c.t.app, BOB).await;
    assert_eq!(c.t.app.admin_revoke_sessions(&bob_again, &bob_again.user_id.to_string()).await.unwrap(), 2);
}

#[tokio::test]
async fn the_check_api_answers_for_the_caller_and_for_a_subject_only_with_authz_check() {
    let c = cast().await;
    let ask = |permission: &str, owner: Option<UserId>, subject: Option<UserId>| CheckRequest {
        permission: permission.into(),
        owner,
        organization: None,
        subject,
    };
    let own = c.t.app.check(&c.alice, &ask("sessions:delete", Some(c.alice.user_id), None)).await.unwrap();
    let others = c.t.app.check(&c.alice, &ask("sessions:delete", Some(c.bob.user_id), None)).await.unwrap();
    assert!(own.allowed && !others.allowed, "{own:?} {others:?}");
    assert!(others.reason.contains("sessions:delete"));

    forbidden(c.t.app.check(&c.alice, &ask("users:read", None, Some(c.admin.user_id))).await);
    let batch =
        c.t.app
            .check_batch(
                &c.admin,
                &[
                    ask("users:read", None, Some(c.auditor.user_id)),
                    ask("users:write", None, Some(c.auditor.user_id)),
                    ask("users:read", None, Some(UserId::from_random_bytes([9; 16]))),
                ],
            )
            .await
            .unwrap();
    assert_eq!(batch.iter().map(|d| d.allowed).collect::<Vec<_>>(), vec![true, false, false]);
    for bad in ["users:*", "nonsense", ""] {
        let result = c.t.app.check(&c.alice, &ask(bad, None, None)).await;
        assert!(matches!(result, Err(AppError::Validation(_))), "{bad}: {result:?}");
    }
    let too_many = vec![ask("users:read", None, None); crate::MAX_CHECK_BATCH + 1];
    assert!(matches!(c.t.app.check_batch(&c.alice, &too_many).await, Err(AppError::Validation(_))));
}

/// An owner, two organizations, and an admin of the first (a member system-wide).
pub(super) async fn tenants() -> (TestApp, Principal, String, String, Principal, UserId) {
    let t = testing::app().await;
    t.app.finish_bootstrap().await.unwrap();
    t.app.create_user_as_operator(OWNER, None, secret(PASSWORD), BuiltinRole::Owner).await.unwrap();
    let org_admin =
        t.app.create_user_as_operator(ADMIN, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let alice =
        t.app.create_user_as_operator(ALICE, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    let owner = principal(&t.app, OWNER).await;
    let acme = t.app.admin_create_organization(&owner, "acme", "Acme").await.unwrap().id.to_string();
    let globex = t.app.admin_create_organization(&owner, "globex", "Globex").await.unwrap().id.to_string();
    t.app.admin_set_member(&owner, &acme, &org_admin.id.to_string(), BuiltinRole::Admin, None).await.unwrap();
    let org_admin = principal(&t.app, ADMIN).await;
    (t, owner, acme, globex, org_admin, alice.id)
}

#[tokio::test]
async fn an_organizations_admin_manages_its_members_and_another_tenant_looks_missing() {
    let (t, owner, acme, globex, org_admin, alice) = tenants().await;
    let alice_id = alice.to_string();

    let added =
        t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Member, None).await.unwrap();
    assert_eq!(added.role, BuiltinRole::Member);
    let (members, _) = t.app.admin_list_members(&org_admin, &acme, None, None).await.unwrap();
    assert_eq!(members.len(), 2);
    forbidden(t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Owner, None).await);
    forbidden(t.app.admin_delete_organization(&org_admin, &acme).await);
    forbidden(t.app.admin_list_users(&org_admin, None, None, None).await);
    // Globex, and an organization that does not exist, look the same to Acme's admin.
    for org in [globex.as_str(), "00000000-0000-4000-8000-000000000000", "nonsense"] {
        for result in [
            t.app.admin_get_organization(&org_admin, org).await.map(|_| ()),
            t.app.admin_list_members(&org_admin, org, None, None).await.map(|_| ()),
            t.app.admin_set_member(&org_admin, org, &alice_id, BuiltinRole::Member, None).await.map(|_| ()),
            t.app.admin_remove_member(&org_admin, org, &alice_id).await,
            t.app.admin_rename_organization(&org_admin, org, "Mine now").await.map(|_| ()),
        ] {
            assert!(matches!(result, Err(AppError::NotFound)), "{org}: {result:?}");
        }
    }
    assert_eq!(t.app.admin_get_organization(&owner, &globex).await.unwrap().name.as_str(), "Globex");
    t.app.admin_remove_member(&org_admin, &acme, &alice_id).await.unwrap();
    let check = CheckRequest {
        permission: "memberships:write".into(),
        owner: None,
        organization: Some(portcullis_domain::OrganizationId::parse(&acme).unwrap()),
        subject: None,
    };
    assert!(t.app.check(&org_admin, &check).await.unwrap().allowed);
    let elsewhere = CheckRequest {
        organization: Some(portcullis_domain::OrganizationId::parse(&globex).unwrap()),
        ..check
    };
    assert!(!t.app.check(&org_admin, &elsewhere).await.unwrap().allowed);
}

#[tokio::test]
async fn an_organizations_last_owner_stays_and_the_default_organization_cannot_be_deleted() {
    let (t, owner, acme, _, _, alice) = tenants().await;
    let alice_id = alice.to_string();
    t.app.admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Owner, None).await.unwrap();
    // Alice owns Acme alone; the system owner holds every grant, yet cannot leave Acme without one.
    let Err(AppError::Forbidden(message)) = t.app.admin_remove_member(&owner, &acme, &alice_id).await else {
        panic!("the last owner of an organization must stay")
    };
    assert!(message.contains("last active owner"), "{message}");
    forbidden(t.app.admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Member, None).await);

    let (organizations, _) = t.app.admin_list_organizations(&owner, None, None).await.unwrap();
    let default =
        organizations.iter().find(|o| o.slug.as_str() == "default").expect("a default organization");
    forbidden(t.app.admin_delete_organization(&owner, &default.id.to_string()).await);
    t.app.admin_delete_organization(&owner, &acme).await.unwrap();
    assert!(matches!(t.app.admin_get_organization(&owner, &acme).await, Err(AppError::NotFound)));
    let alice_now = principal(&t.app, ALICE).await;
    // Acme's membership went with Acme; the default organization's (every account's) stays.
    let left = t.app.profile(&alice_now).await.unwrap().organizations;
    assert_eq!(left, vec![(default.id, BuiltinRole::Member)]);
}

#[tokio::test]
async fn the_user_list_filters_by_address_prefix_and_by_organization_for_its_administrators() {
    let (t, owner, acme, globex, org_admin, alice) = tenants().await;
    for email in ["alfred@example.com", "Albert@Example.com", "zed@example.com"] {
        t.app.create_user_as_operator(email, None, secret(PASSWORD), BuiltinRole::Member).await.unwrap();
    }
    let search = |prefix: &'static str, after: Option<String>, limit: u32| {
        let app = t.app.clone();
        async move {
            let query = crate::UserQuery {
                email_prefix: Some(prefix),
                after: after.as_deref(),
                limit: Some(limit),
                ..crate::UserQuery::default()
            };
            app.admin_search_users(&owner, &query).await
        }
    };
    // Case-insensitive, over the opened addresses: alice, alfred, albert.
    let all = search("AL", None, 10).await.unwrap();
    let mut found: Vec<String> = all.users.iter().map(|u| u.email.to_lowercase()).collect();
    found.sort();
    assert_eq!(found, vec!["albert@example.com", "alfred@example.com", "alice@example.com"]);
    assert_eq!(all.next, None);
    // Paged one at a time, each match once.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = search("al", after, 1).await.unwrap();
        paged.extend(page.users.iter().map(|u| u.email.to_lowercase()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    paged.sort();
    assert_eq!(paged, found);
    assert!(search("nobody", None, 10).await.unwrap().users.is_empty());
    assert!(matches!(search("a\u{7}", None, 10).await, Err(AppError::Validation(_))));

    // Acme's administrator lists Acme's members, and nothing else.
    t.app.admin_set_member(&owner, &acme, &alice.to_string(), BuiltinRole::Member, None).await.unwrap();
    let in_acme = crate::UserQuery { organization: Some(&acme), ..crate::UserQuery::default() };
    let members = t.app.admin_search_users(&org_admin, &in_acme).await.unwrap();
    let mut emails: Vec<&str> = members.users.iter().map(|u| u.email.as_str()).collect();
    emails.sort_unstable();
    assert_eq!(emails, vec![ADMIN, ALICE]);
    let in_globex = crate::UserQuery { organization: Some(&globex), ..crate::UserQuery::default() };
    assert!(matches!(t.app.admin_search_users(&org_admin, &in_globex).await, Err(AppError::NotFound)));
    forbidden(t.app.admin_search_users(&org_admin, &crate::UserQuery::default()).await);
    let prefixed = crate::UserQuery { email_prefix: Some("ali"), ..in_acme };
    assert_eq!(t.app.admin_search_users(&org_admin, &prefixed).await.unwrap().users.len(), 1);
}

#[tokio::test]
async fn an_admin_changes_an_accounts_name_and_address_which_must_then_be_verified() {
    let c = cast().await;
    let bob = c.bob.user_id.to_string();
    let change = crate::UserChange {
        email: Some("Robert@Example.com".into()),
        display_name: Some(Some("Robert".into())),
    };
    let updated = c.t.app.admin_update_user(&c.admin, &bob, &change).await.unwrap();
    assert_eq!(updated.email, "Robert@example.com");
    assert_eq!(updated.display_name.as_deref(), Some("Robert"));
    assert!(!updated.email_verified, "a new address is unverified until its owner proves it");
    // The account is found by its new address only; the old one is told, the new one gets a link.
    let mut tx = read_tx(&c.t.app).await;
    let by_new = c.t.app.find_user_by_email(tx.as_mut(), &Email::parse("robert@example.com").unwrap()).await;
    let by_old = c.t.app.find_user_by_email(tx.as_mut(), &Email::parse(BOB).unwrap()).await;
    tx.rollback().await.unwrap();
    assert_eq!(by_new.unwrap().map(|u| u.id), Some(c.bob.user_id));
    assert!(by_old.unwrap().is_none());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mail = c.t.mail.0.lock().unwrap().clone();
    assert!(mail.iter().any(|m| m.to.as_str() == BOB && m.subject.contains("address was changed")));
    assert!(mail.iter().any(|m| m.to.as_str() == "Robert@example.com" && m.text.contains("verify-email")));

    // Clearing the name keeps the address (and its verification state).
    let clear = crate::UserChange { email: None, display_name: Some(None) };
    let cleared = c.t.app.admin_update_user(&c.admin, &bob, &clear).await.unwrap();
    assert_eq!(cleared.display_name, None);
    assert_eq!(cleared.email, "Robert@example.com");

    // A taken address, a bad name, oneself, an owner, a reader: refused, nothing changed.
    let taken = crate::UserChange { email: Some(ALICE.into()), display_name: None };
    assert!(matches!(c.t.app.admin_update_user(&c.admin, &bob, &taken).await, Err(AppError::Validation(_))));
    let bad =
        crate::UserChange { email: Some("no-at-sign".into()), display_name: Some(Some("\u{202e}x".into())) };
    let Err(AppError::Validation(issues)) = c.t.app.admin_update_user(&c.admin, &bob, &bad).await else {
        panic!("two field errors expected")
    };
    assert_eq!(issues.len(), 2);
    let rename = crate::UserChange { email: None, display_name: Some(Some("X".into())) };
    forbidden(c.t.app.admin_update_user(&c.admin, &c.admin.user_id.to_string(), &rename).await);
    forbidden(c.t.app.admin_update_user(&c.admin, &c.owner.user_id.to_string(), &rename).await);
    forbidden(c.t.app.admin_update_user(&c.auditor, &bob, &rename).await);
    assert!(matches!(
        c.t.app.admin_update_user(&c.admin, "00000000-0000-4000-8000-000000000000", &rename).await,
        Err(AppError::NotFound)
    ));
    assert_eq!(c.t.app.admin_get_user(&c.admin, &bob).await.unwrap().display_name, None);
}

#[tokio::test]
async fn the_user_list_sorts_by_creation_either_way_and_pages_through_ties_once() {
    let c = cast().await;
    // Three more accounts, a second apart, then two in the same millisecond.
    let mut made = Vec::new();
    for (n, email) in ["s1@example.com", "s2@example.com", "s3@example.com"].iter().enumerate() {
        c.t.clock.advance_millis(1_000 * (n as i64 + 1));
        made.push(
            c.t.app
                .create_user_as_operator(email, None, secret(PASSWORD), BuiltinRole::Member)
                .await
                .unwrap()
                .id,
        );
    }
    c.t.clock.advance_millis(1_000);
    for email in ["t1@example.com", "t2@example.com"] {
        made.push(
            c.t.app
                .create_user_as_operator(email, None, secret(PASSWORD), BuiltinRole::Member)
                .await
                .unwrap()
                .id,
        );
    }
    let walk = |sort: &'static str| {
        let app = c.t.app.clone();
        let admin = c.admin;
        async move {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let query = crate::UserQuery {
                    sort: Some(sort),
                    after: after.as_deref(),
                    limit: Some(2),
                    ..crate::UserQuery::default()
                };
                let page = app.admin_search_users(&admin, &query).await.unwrap();
                seen.extend(page.users.iter().map(|u| (u.created_at, u.id)));
                match page.next {
                    Some(next) => after = Some(next),
                    None => return seen,
                }
            }
        }
    };
    let oldest_first = walk("created").await;
    let mut expected = oldest_first.clone();
    expected.sort();
    assert_eq!(oldest_first, expected, "created order, ties by id");
    assert_eq!(oldest_first.len(), 10, "the cast's five and these five, each once");
    let newest_first = walk("-created").await;
    assert_eq!(newest_first, oldest_first.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(&oldest_first[5..].iter().map(|(_, id)| *id).collect::<Vec<_>>()[..3], &made[..3]);

    let bad = crate::UserQuery { sort: Some("email"), ..crate::UserQuery::default() };
    assert!(matches!(c.t.app.admin_search_users(&c.admin, &bad).await, Err(AppError::Validation(_))));
    let bad_cursor =
        crate::UserQuery { sort: Some("created"), after: Some("x_y"), ..crate::UserQuery::default() };
    assert!(matches!(c.t.app.admin_search_users(&c.admin, &bad_cursor).await, Err(AppError::Validation(_))));
}
