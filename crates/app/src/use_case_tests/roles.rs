//! Use-case tests of custom roles: what they grant and where, how an edit or a deletion reaches their
//! holders at once, the guard rails against passing on a right through a role, and tenant safety.

use portcullis_domain::{BuiltinRole, OrganizationId};

use super::admin::{forbidden, principal, tenants};
use super::*;
use crate::{CheckRequest, RoleChange};

fn ask(permission: &str, organization: &str) -> CheckRequest {
    CheckRequest {
        permission: permission.into(),
        owner: None,
        organization: Some(OrganizationId::parse(organization).unwrap()),
        subject: None,
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn invalid<T: std::fmt::Debug>(result: Result<T, AppError>, field: &str) {
    match result {
        Err(AppError::Validation(issues)) => assert!(issues.iter().any(|i| i.field == field), "{issues:?}"),
        other => panic!("expected a validation error on {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_custom_role_grants_its_permissions_in_its_organization_only() {
    let (t, owner, acme, globex, _, alice) = tenants().await;
    let alice_id = alice.to_string();
    let billing = t
        .app
        .admin_create_role(&owner, &acme, "billing", &strings(&["invoices:*", "users:read"]))
        .await
        .unwrap();
    assert_eq!(billing.permissions.len(), 2);
    let member = t
        .app
        .admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Member, Some(&[billing.id.to_string()]))
        .await
        .unwrap();
    assert_eq!(member.custom_roles, vec![billing.clone()]);
    let alice = principal(&t.app, ALICE).await;

    assert!(t.app.check(&alice, &ask("invoices:pay", &acme)).await.unwrap().allowed);
    assert!(!t.app.check(&alice, &ask("invoices:pay", &globex)).await.unwrap().allowed);
    let system = CheckRequest { organization: None, ..ask("invoices:pay", &acme) };
    assert!(!t.app.check(&alice, &system).await.unwrap().allowed);
    // An application asking about Alice sees the same rights (system role, memberships and custom
    // roles), not just her system-wide role.
    let about_alice = CheckRequest { subject: Some(alice.user_id), ..ask("invoices:pay", &acme) };
    assert!(t.app.check(&owner, &about_alice).await.unwrap().allowed);
    // The role does not reach the user list, which is system-wide.
    forbidden(t.app.admin_list_users(&alice, None, None, None).await);

    let roles = t.app.admin_list_roles(&owner, &acme).await.unwrap();
    assert_eq!(roles.builtin, BuiltinRole::ALL.to_vec());
    assert_eq!(roles.custom, vec![billing.clone()]);
    assert!(t.app.admin_list_roles(&owner, &globex).await.unwrap().custom.is_empty());
    let (members, _) = t.app.admin_list_members(&owner, &acme, None, None).await.unwrap();
    let listed = members.iter().find(|m| m.user_id == alice.user_id).unwrap();
    assert_eq!(listed.custom_roles, vec![billing]);
}

#[tokio::test]
async fn editing_or_deleting_a_role_changes_its_holders_rights_at_once() {
    let (t, owner, acme, _, _, alice) = tenants().await;
    let alice_id = alice.to_string();
    let role = t.app.admin_create_role(&owner, &acme, "billing", &strings(&["invoices:*"])).await.unwrap();
    let role_id = role.id.to_string();
    t.app
        .admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Member, Some(std::slice::from_ref(&role_id)))
        .await
        .unwrap();
    let alice = principal(&t.app, ALICE).await;
    assert!(t.app.check(&alice, &ask("invoices:pay", &acme)).await.unwrap().allowed);

    // Alice's profile is cached now; an edit on this node reaches her next decision.
    let change =
        RoleChange { name: Some("billing-readers".into()), permissions: Some(strings(&["invoices:read"])) };
    let edited = t.app.admin_update_role(&owner, &acme, &role_id, &change).await.unwrap();
    assert_eq!(edited.name.as_str(), "billing-readers");
    assert_eq!(edited.created_at, role.created_at);
    assert!(!t.app.check(&alice, &ask("invoices:pay", &acme)).await.unwrap().allowed);
    assert!(t.app.check(&alice, &ask("invoices:read", &acme)).await.unwrap().allowed);

    let Err(AppError::RoleInUse { holders }) = t.app.admin_delete_role(&owner, &acme, &role_id, false).await
    else {
        panic!("a role in use is deleted only with force")
    };
    assert_eq!(holders, vec![alice.user_id]);
    assert!(t.app.check(&alice, &ask("invoices:read", &acme)).await.unwrap().allowed);
    t.app.admin_delete_role(&owner, &acme, &role_id, true).await.unwrap();
    assert!(!t.app.check(&alice, &ask("invoices:read", &acme)).await.unwrap().allowed);
    assert!(matches!(t.app.admin_get_role(&owner, &acme, &role_id).await, Err(AppError::NotFound)));
    let (members, _) = t.app.admin_list_members(&owner, &acme, None, None).await.unwrap();
    assert!(members.iter().all(|m| m.custom_roles.is_empty()));

    // An unused role goes without force; leaving the organization takes its roles with it.
    let unused = t.app.admin_create_role(&owner, &acme, "unused", &strings(&["x:y"])).await.unwrap();
    t.app.admin_delete_role(&owner, &acme, &unused.id.to_string(), false).await.unwrap();
    let again = t.app.admin_create_role(&owner, &acme, "again", &strings(&["invoices:*"])).await.unwrap();
    t.app
        .admin_set_member(&owner, &acme, &alice_id, BuiltinRole::Member, Some(&[again.id.to_string()]))
        .await
        .unwrap();
    t.app.admin_remove_member(&owner, &acme, &alice_id).await.unwrap();
    t.app.admin_delete_role(&owner, &acme, &again.id.to_string(), false).await.unwrap();
}

#[tokio::test]
async fn nobody_passes_on_a_right_they_lack_through_a_custom_role() {
    let (t, owner, acme, _, org_admin, alice) = tenants().await;
    let alice_id = alice.to_string();
    // Acme's admin may define roles from what it holds in Acme, and nothing more.
    for beyond in [&["*:*"][..], &["orgs:delete"], &["users:read", "invoices:pay"]] {
        forbidden(t.app.admin_create_role(&org_admin, &acme, "mine", &strings(beyond)).await);
    }
    let support =
        t.app.admin_create_role(&org_admin, &acme, "support", &strings(&["users:read"])).await.unwrap();
    let support_id = support.id.to_string();

    // The owner gives Acme's admin the role; editing it to add what the admin lacks is refused, and
    // changes nothing.
    t.app
        .admin_set_member(
            &owner,
            &acme,
            &org_admin.user_id.to_string(),
            BuiltinRole::Admin,
            Some(std::slice::from_ref(&support_id)),
        )
        .await
        .unwrap();
    let org_admin = principal(&t.app, super::admin::ADMIN).await;
    let grow = RoleChange { name: None, permissions: Some(strings(&["users:read", "orgs:delete"])) };
    forbidden(t.app.admin_update_role(&org_admin, &acme, &support_id, &grow).await);
    assert_eq!(t.app.admin_get_role(&owner, &acme, &support_id).await.unwrap(), support);
    assert!(!t.app.check(&org_admin, &ask("orgs:delete", &acme)).await.unwrap().allowed);

    // A role the owner made from rights Acme's admin lacks: the admin can neither give it, take it,
    // edit it nor delete it.
    let billing = t.app.admin_create_role(&owner, &acme, "billing", &strings(&["invoices:*"])).await.unwrap();
    let billing_id = billing.id.to_string();
    forbidden(
        t.app
            .admin_set_member(
                &org_admin,
                &acme,
                &alice_id,
                BuiltinRole::Member,
                Some(std::slice::from_ref(&billing_id)),
            )
            .await,
    );
    t.app
        .admin_set_member(
            &owner,
            &acme,
            &alice_id,
            BuiltinRole::Member,
            Some(std::slice::from_ref(&billing_id)),
        )
        .await
        .unwrap();
    forbidden(t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Member, Some(&[])).await);
    forbidden(t.app.admin_remove_member(&org_admin, &acme, &alice_id).await);
    let rename = RoleChange { name: Some("renamed".into()), permissions: None };
    forbidden(t.app.admin_update_role(&org_admin, &acme, &billing_id, &rename).await);
    forbidden(t.app.admin_delete_role(&org_admin, &acme, &billing_id, true).await);
    // Leaving the custom roles out of a change of built-in role keeps them, and needs no right to them.
    let kept =
        t.app.admin_set_member(&org_admin, &acme, &alice_id, BuiltinRole::Auditor, None).await.unwrap();
    assert_eq!(kept.custom_roles, vec![billing]);
    // A member without roles:write defines nothing.
    let alice = principal(&t.app, ALICE).await;
    forbidden(t.app.admin_create_role(&alice, &acme, "mine", &strings(&["invoices:pay"])).await);
}

#[tokio::test]
async fn another_organizations_role_looks_missing_and_bad_input_is_refused_with_field_errors() {
    let (t, owner, acme, globex, org_admin, alice) = tenants().await;
    let alice_id = alice.to_string();
    let theirs = t.app.admin_create_role(&owner, &globex, "theirs", &strings(&["users:read"])).await.unwrap();
    let theirs_id = theirs.id.to_string();
    let change = RoleChange { name: Some("stolen".into()), permissions: None };
    for (org, role) in [
        (acme.as_str(), theirs_id.as_str()),
        (globex.as_str(), theirs_id.as_str()),
        (acme.as_str(), "00000000-0000-4000-8000-000000000000"),
        (acme.as_str(), "nonsense"),
    ] {
        for result in [
            t.app.admin_get_role(&org_admin, org, role).await.map(|_| ()),
            t.app.admin_update_role(&org_admin, org, role, &change).await.map(|_| ()),
            t.app.admin_delete_role(&org_admin, org, role, true).await,
        ] {
            assert!(matches!(result, Err(AppError::NotFound)), "{org} {role}: {result:?}");
        }
    }
    assert!(matches!(t.app.admin_list_roles(&org_admin, &globex).await, Err(AppError::NotFound)));
    // Another organization's role cannot be given in this one, even by the owner.
    invalid(
        t.app
            .admin_set_member(
                &owner,
                &acme,
                &alice_id,
                BuiltinRole::Member,
                Some(std::slice::from_ref(&theirs_id)),
            )
            .await,
        "/roles",
    );
    assert_eq!(t.app.admin_get_role(&owner, &globex, &theirs_id).await.unwrap(), theirs);

    t.app.admin_create_role(&owner, &acme, "billing", &strings(&["invoices:*"])).await.unwrap();
    invalid(t.app.admin_create_role(&owner, &acme, "billing", &strings(&["x:y"])).await, "/name");
    // The same name in another organization is fine.
    t.app.admin_create_role(&owner, &globex, "billing", &strings(&["x:y"])).await.unwrap();
    invalid(t.app.admin_create_role(&owner, &acme, "admin", &strings(&["x:y"])).await, "/name");
    invalid(t.app.admin_create_role(&owner, &acme, "Bad Name", &strings(&["x:y"])).await, "/name");
    invalid(t.app.admin_create_role(&owner, &acme, "ok", &[]).await, "/permissions");
    invalid(t.app.admin_create_role(&owner, &acme, "ok", &strings(&["users"])).await, "/permissions");
    invalid(t.app.admin_create_role(&owner, &acme, "ok", &strings(&["Users:Read"])).await, "/permissions");
    let too_many: Vec<String> =
        (0..=portcullis_domain::MAX_ROLE_PERMISSIONS).map(|n| format!("r{n}:read")).collect();
    invalid(t.app.admin_create_role(&owner, &acme, "ok", &too_many).await, "/permissions");
    // Both fields wrong: both reported at once.
    let Err(AppError::Validation(issues)) =
        t.app.admin_create_role(&owner, &acme, "admin", &strings(&["?"])).await
    else {
        panic!("two field errors expected")
    };
    assert_eq!(issues.len(), 2, "{issues:?}");
    // Duplicates collapse; the order given is kept.
    let dup = t.app.admin_create_role(&owner, &acme, "dup", &strings(&["b:x", "a:x", "b:x"])).await.unwrap();
    assert_eq!(dup.permissions.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["b:x", "a:x"]);
    let list = t.app.admin_list_roles(&owner, &acme).await.unwrap();
    assert_eq!(list.custom.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["billing", "dup"]);
}
