//! The contract of custom roles (`RoleStore`): what is stored, how a name is unique only within its
//! organization, how roles and their holders are listed, and that a holding never outlives its role,
//! its membership, its organization or its account.
//!
//! "Name order" and "id order" are byte order, as SQLite's BINARY collation gives them. The names
//! below mix hyphens, digits and letters (`billing`, `billing-eu`, `billing2`, `billingx`) because a
//! locale's collation orders them otherwise (`en_US` ignores the hyphen), so an engine that sorts by
//! the database's locale fails here instead of listing roles differently in production.

use std::slice;

use portcullis_domain::{
    BuiltinRole, CustomRole, MAX_ROLE_PERMISSIONS, OrganizationId, Permission, RoleId, RoleName, UserId,
};
use portcullis_store::{Store, StoreError};

use super::{
    Failure, Outcome, Step, at, ensure, ensure_conflict, ensure_eq, migrated, organization, organization_id,
    user, user_id, write_organizations, write_users,
};

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

/// Every field of a role comes back as written, read by its organization and id: the permissions in
/// the order given (neither sorted nor deduplicated by the store), wildcards on either side, as many
/// and as long as a role may have, or none. Another organization's id for it, or an unknown id, is
/// `None`, as the trait promises (a role you may not see looks missing).
pub async fn a_role_round_trips_every_field_by_organization_and_id_and_is_none_for_another_organization(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = CustomRole {
        created_at: at(1_000),
        updated_at: at(2_345),
        ..role(
            0x5a,
            acme.id,
            "billing",
            &["users:read", "invoices:*", "*:*", "*:read", "audit_log:export-csv"],
        )?
    };
    // Each 64 characters (the longest a permission may be), listed in descending order.
    let longest: Vec<String> = (0..MAX_ROLE_PERMISSIONS)
        .rev()
        .map(|n| format!("r{n:02}{}:{}", "a".repeat(30), "b".repeat(30)))
        .collect();
    let full = CustomRole { permissions: permissions(&longest)?, ..role(0x3c, acme.id, "full", &[])? };
    let empty = role(0xc3, acme.id, "empty", &[])?;
    write_roles(store, &[billing.clone(), full.clone(), empty.clone()]).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let found = tx.role(acme.id, billing.id).await.step("read the role")?;
    let found_full = tx.role(acme.id, full.id).await.step("read the role with the most permissions")?;
    let found_empty = tx.role(acme.id, empty.id).await.step("read the role without permissions")?;
    let elsewhere = tx.role(globex.id, billing.id).await.step("read it as another organization's")?;
    let nowhere = tx.role(organization_id(9), billing.id).await.step("read it in a missing organization")?;
    let unknown = tx.role(acme.id, role_id(0x99)).await.step("read an unknown id")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("the role", &found, &Some(billing))?;
    ensure_eq("the role with the most permissions", &found_full, &Some(full))?;
    ensure_eq("the role without permissions", &found_empty, &Some(empty))?;
    ensure_eq("the role read as another organization's", &elsewhere, &None)?;
    ensure_eq("the role read in a missing organization", &nowhere, &None)?;
    ensure_eq("an unknown id", &unknown, &None)
}

/// `roles_in` lists every role of the organization, whole, in byte order of name (not of id or of
/// creation), and none of another organization's, even one with the same name.
pub async fn roles_are_listed_in_name_order_and_only_for_their_organization(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let mut acme_roles = Vec::new();
    for (seed, name) in [(0x01, "support"), (0x10, "billingx"), (0x20, "billing2"), (0x30, "billing-eu")] {
        acme_roles.push(role(seed, acme.id, name, &["invoices:read"])?);
    }
    acme_roles.push(role(0x40, acme.id, "billing", &["invoices:*", "*:read"])?);
    let globex_roles =
        vec![role(0x50, globex.id, "billing", &["*:*"])?, role(0x05, globex.id, "audit", &[])?];
    write_roles(store, &acme_roles).await?;
    write_roles(store, &globex_roles).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_acme = tx.roles_in(acme.id).await.step("list acme's roles")?;
    let of_globex = tx.roles_in(globex.id).await.step("list globex's roles")?;
    let of_nowhere = tx.roles_in(organization_id(9)).await.step("list a missing organization's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq(
        "acme's role names, in byte order",
        &names(&of_acme),
        &vec!["billing", "billing-eu", "billing2", "billingx", "support"],
    )?;
    let mut expected = acme_roles;
    expected.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    ensure_eq("acme's roles, whole", &of_acme, &expected)?;
    ensure_eq("globex's roles", &of_globex, &vec![globex_roles[1].clone(), globex_roles[0].clone()])?;
    ensure_eq("a missing organization's roles", &of_nowhere, &Vec::new())
}

/// A name is unique within its organization: a second `billing` there is `Conflict { entity: "role" }`
/// and leaves the first alone, while `billing` in another organization is fine. A reused id (even in
/// another organization) and a missing organization are `Conflict { entity: "role" }` too, as the
/// trait says.
pub async fn a_role_name_is_unique_per_organization_and_a_reused_id_or_a_missing_organization_conflicts(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = role(0x10, acme.id, "billing", &["invoices:*"])?;
    write_roles(store, slice::from_ref(&billing)).await?;

    let taken = try_insert_role(store, &role(0x11, acme.id, "billing", &["*:*"])?).await?;
    let elsewhere = role(0x12, globex.id, "billing", &["users:read"])?;
    let mut tx = store.begin().await.step("begin the insert elsewhere")?;
    let free = tx.insert_role(&elsewhere).await;
    tx.commit().await.step("commit the role elsewhere")?;
    let reused = try_insert_role(store, &role(0x10, globex.id, "other", &[])?).await?;
    let orphan = try_insert_role(store, &role(0x13, organization_id(9), "billing", &[])?).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_acme = tx.roles_in(acme.id).await.step("list acme's roles")?;
    let of_globex = tx.roles_in(globex.id).await.step("list globex's roles")?;
    let intruder = tx.role(acme.id, role_id(0x11)).await.step("read the refused role")?;
    let of_nowhere = tx.roles_in(organization_id(9)).await.step("list a missing organization's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_conflict("a name taken in the organization", taken, "role")?;
    ensure(free.is_ok(), || format!("the same name in another organization was refused: {free:?}"))?;
    ensure_conflict("a reused id in another organization", reused, "role")?;
    ensure_conflict("a role of a missing organization", orphan, "role")?;
    ensure_eq("acme's roles", &of_acme, &vec![billing])?;
    ensure_eq("globex's roles", &of_globex, &vec![elsewhere])?;
    ensure_eq("the refused role", &intruder, &None)?;
    ensure_eq("a missing organization's roles", &of_nowhere, &Vec::new())
}

/// `update_role` replaces the name, the permissions and `updated_at`, and nothing else (not
/// `created_at`); keeping its own name is no conflict, and a name used only in another organization
/// is free. A missing role or another organization's id is reported as false and changes nothing; a
/// name taken by another role of the organization is `Conflict { entity: "role" }`.
pub async fn updating_a_role_replaces_its_name_permissions_and_update_time_and_reports_a_missing_one(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = role(0x10, acme.id, "billing", &["invoices:read"])?;
    let support = role(0x20, acme.id, "support", &["tickets:read"])?;
    let ops = role(0x30, globex.id, "ops", &["*:*"])?;
    write_roles(store, &[billing.clone(), support.clone(), ops.clone()]).await?;
    let finance = CustomRole {
        name: role_name("finance")?,
        permissions: permissions(&["*:*", "invoices:*", "users:read"])?,
        created_at: at(999_999),
        updated_at: at(500),
        ..billing.clone()
    };
    let support_widened = CustomRole {
        permissions: permissions(&["tickets:*", "users:*"])?,
        updated_at: at(600),
        ..support.clone()
    };
    let stolen = CustomRole { organization: globex.id, name: role_name("stolen")?, ..finance.clone() };

    let mut tx = store.begin().await.step("begin the updates")?;
    let renamed = tx.update_role(&finance).await.step("rename billing to finance")?;
    let kept_name = tx.update_role(&support_widened).await.step("widen support, keeping its name")?;
    let missing = tx.update_role(&role(0x99, acme.id, "ghost", &[])?).await.step("update a missing role")?;
    let wrong_organization = tx.update_role(&stolen).await.step("update billing's id as globex's role")?;
    tx.commit().await.step("commit the updates")?;

    let mut tx = store.begin().await.step("begin the rename onto a taken name")?;
    let onto_taken = tx
        .update_role(&CustomRole { name: role_name("finance")?, updated_at: at(700), ..support.clone() })
        .await
        .map(|_| ());
    tx.rollback().await.step("roll back after the conflict")?;

    let support_as_ops =
        CustomRole { name: role_name("ops")?, updated_at: at(800), ..support_widened.clone() };
    let mut tx = store.begin().await.step("begin the rename onto another organization's name")?;
    let onto_elsewhere = tx.update_role(&support_as_ops).await.step("rename support to globex's ops")?;
    tx.commit().await.step("commit the rename")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_acme = tx.roles_in(acme.id).await.step("list acme's roles")?;
    let of_globex = tx.roles_in(globex.id).await.step("list globex's roles")?;
    let phantom = tx.role(acme.id, role_id(0x99)).await.step("read the missing role")?;
    tx.commit().await.step("end the read")?;

    ensure_eq(
        "updates found their rows (billing, support, missing, another organization's id)",
        &(renamed, kept_name, missing, wrong_organization),
        &(true, true, false, false),
    )?;
    ensure_conflict("renaming support onto finance", onto_taken, "role")?;
    ensure_eq("renaming onto a name used only in another organization", &onto_elsewhere, &true)?;
    let billing_now = CustomRole { created_at: billing.created_at, ..finance };
    ensure_eq("acme's roles, in name order", &of_acme, &vec![billing_now, support_as_ops])?;
    ensure_eq("globex's roles", &of_globex, &vec![ops])?;
    ensure_eq("the missing role", &phantom, &None)
}

/// Deleting a role reports true, then false; another organization's id for it is false and deletes
/// nothing. The holdings go with it, and a role later created with the same id and name starts
/// without holders.
pub async fn deleting_a_role_reports_true_then_false_and_takes_its_holdings(store: &dyn Store) -> Outcome {
    let f = held_fixture(store).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let wrong_organization = tx.delete_role(f.globex, f.billing.id).await.step("delete as globex's")?;
    let deleted = tx.delete_role(f.acme, f.billing.id).await.step("delete billing")?;
    let again = tx.delete_role(f.acme, f.billing.id).await.step("delete billing again")?;
    let unknown = tx.delete_role(f.acme, role_id(0x99)).await.step("delete an unknown role")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let gone = tx.role(f.acme, f.billing.id).await.step("read billing")?;
    let of_acme = tx.roles_in(f.acme).await.step("list acme's roles")?;
    let alices = tx.member_roles(f.acme, f.alice).await.step("list alice's roles in acme")?;
    let bobs = tx.member_roles(f.acme, f.bob).await.step("list bob's roles in acme")?;
    let alices_elsewhere = tx.member_roles(f.globex, f.alice).await.step("list alice's roles in globex")?;
    let billing_holders = tx.role_holders(f.acme, f.billing.id, 10).await.step("list billing's holders")?;
    let support_holders = tx.role_holders(f.acme, f.support.id, 10).await.step("list support's holders")?;
    tx.commit().await.step("end the read")?;
    write_roles(store, slice::from_ref(&f.billing)).await?;
    let reborn_holders = committed_holders(store, f.acme, f.billing.id, 10).await?;

    ensure_eq(
        "deletes (as globex's, once, again, unknown)",
        &(wrong_organization, deleted, again, unknown),
        &(false, true, false, false),
    )?;
    ensure_eq("billing after the delete", &gone, &None)?;
    ensure_eq("acme's roles", &of_acme, &vec![f.support.clone()])?;
    ensure_eq("alice's roles in acme", &alices, &vec![f.support.clone()])?;
    ensure_eq("bob's roles in acme", &bobs, &Vec::new())?;
    ensure_eq("alice's roles in globex", &alices_elsewhere, &vec![f.ops])?;
    ensure_eq("billing's holders", &billing_holders, &Vec::new())?;
    ensure_eq("support's holders", &support_holders, &vec![f.alice])?;
    ensure_eq("holders of a role recreated with the same id", &reborn_holders, &Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Holdings
// ---------------------------------------------------------------------------------------------

/// `set_member_roles` makes the given roles exactly the member's set, each time replacing the last
/// (an empty list clears it). Setting roles for an account that is not a member, a role of another
/// organization or a missing role is `Conflict { entity: "membership" }`, and the transaction then
/// refuses to commit, so the set it had cleared before failing is still there afterwards.
pub async fn setting_member_roles_replaces_the_set_and_refuses_a_non_member_or_another_organizations_role(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    join(store, &[(acme.id, alice.id), (globex.id, alice.id), (globex.id, bob.id)]).await?;
    let billing = role(0x10, acme.id, "billing", &["invoices:*"])?;
    let support = role(0x20, acme.id, "support", &["tickets:*"])?;
    let audit = role(0x30, acme.id, "audit-eu", &["audit_log:read"])?;
    let ops = role(0x40, globex.id, "ops", &["*:*"])?;
    write_roles(store, &[billing.clone(), support.clone(), audit.clone(), ops.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.set_member_roles(acme.id, alice.id, &[support.id, billing.id]).await.step("give alice two roles")?;
    let first = tx.member_roles(acme.id, alice.id).await.step("read alice's roles")?;
    tx.set_member_roles(acme.id, alice.id, &[audit.id]).await.step("replace them with one")?;
    let replaced = tx.member_roles(acme.id, alice.id).await.step("read them again")?;
    tx.set_member_roles(acme.id, alice.id, &[]).await.step("clear them")?;
    let cleared = tx.member_roles(acme.id, alice.id).await.step("read them cleared")?;
    tx.set_member_roles(acme.id, alice.id, &[billing.id, support.id]).await.step("give them back")?;
    tx.commit().await.step("commit")?;

    let mut refusals = Vec::new();
    for (what, organization, member, roles) in [
        ("an account that is not a member", acme.id, bob.id, vec![billing.id]),
        ("another organization's role", acme.id, alice.id, vec![support.id, ops.id]),
        ("a missing role", acme.id, alice.id, vec![role_id(0x99)]),
        ("a missing organization", organization_id(9), alice.id, vec![billing.id]),
    ] {
        let mut tx = store.begin().await.step("begin a refused set")?;
        let refused = tx.set_member_roles(organization, member, &roles).await;
        let commit = tx.commit().await;
        ensure_conflict(&format!("roles for {what}"), refused, "membership")?;
        refusals.push((what, commit.is_err()));
    }

    let mut tx = store.begin_read().await.step("begin a read")?;
    let alices = tx.member_roles(acme.id, alice.id).await.step("list alice's roles in acme")?;
    let alices_elsewhere = tx.member_roles(globex.id, alice.id).await.step("list alice's roles in globex")?;
    let bobs = tx.roles_of(bob.id).await.step("list bob's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("alice's first set, in name order", &first, &vec![billing.clone(), support.clone()])?;
    ensure_eq("alice's replaced set", &replaced, &vec![audit])?;
    ensure_eq("alice's cleared set", &cleared, &Vec::new())?;
    for (what, refused) in refusals {
        ensure(refused, || format!("a transaction that set roles for {what} committed"))?;
    }
    ensure_eq("alice's roles in acme after the refusals", &alices, &vec![billing, support])?;
    ensure_eq("alice's roles in globex", &alices_elsewhere, &Vec::new())?;
    ensure_eq("bob's roles", &bobs, &Vec::new())
}

/// What is held reads back three ways: `member_roles` in name order, `roles_of` across organizations
/// in organization (id) then name order, and `role_holders` in user id order up to the limit. None
/// of them reaches across organizations, and strangers hold nothing.
pub async fn held_roles_read_back_by_member_by_account_and_by_role_in_their_orders(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    // Id order (globex, initech, acme) differs from slug and creation order.
    let acme = organization(0xc0, "acme")?;
    let globex = organization(0x30, "globex")?;
    let initech = organization(0x80, "initech")?;
    write_organizations(store, &[acme.clone(), globex.clone(), initech.clone()]).await?;
    // Id order: bob, carol, alice, dave.
    let (alice, bob) = (user(0xa1, "alice@example.com"), user(0x1b, "bob@example.com"));
    let (carol, dave) = (user(0x5c, "carol@example.com"), user(0xee, "dave@example.com"));
    write_users(store, &[alice.clone(), bob.clone(), carol.clone(), dave.clone()]).await?;
    join(
        store,
        &[
            (acme.id, alice.id),
            (acme.id, bob.id),
            (acme.id, carol.id),
            (acme.id, dave.id),
            (globex.id, alice.id),
            (initech.id, alice.id),
        ],
    )
    .await?;
    let support = role(0x01, acme.id, "support", &["tickets:*"])?;
    let billing_eu = role(0x02, acme.id, "billing-eu", &["invoices:read"])?;
    let billing2 = role(0x03, acme.id, "billing2", &["invoices:write"])?;
    let billing = role(0x04, acme.id, "billing", &["invoices:*"])?;
    let zed = role(0x05, globex.id, "zed", &["*:read"])?;
    let alpha = role(0x06, globex.id, "alpha", &["*:*"])?;
    let ops = role(0x07, initech.id, "ops", &["servers:*"])?;
    write_roles(
        store,
        &[
            support.clone(),
            billing_eu.clone(),
            billing2.clone(),
            billing.clone(),
            zed.clone(),
            alpha.clone(),
            ops.clone(),
        ],
    )
    .await?;
    let mut tx = store.begin().await.step("begin the holdings")?;
    tx.set_member_roles(acme.id, alice.id, &[support.id, billing2.id, billing_eu.id, billing.id])
        .await
        .step("alice's roles in acme")?;
    tx.set_member_roles(globex.id, alice.id, &[zed.id, alpha.id]).await.step("alice's roles in globex")?;
    tx.set_member_roles(initech.id, alice.id, &[ops.id]).await.step("alice's roles in initech")?;
    tx.set_member_roles(acme.id, dave.id, &[billing.id]).await.step("dave's roles")?;
    tx.set_member_roles(acme.id, carol.id, &[support.id, billing.id]).await.step("carol's roles")?;
    tx.set_member_roles(acme.id, bob.id, &[billing.id]).await.step("bob's roles")?;
    tx.commit().await.step("commit the holdings")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let alice_in_acme = tx.member_roles(acme.id, alice.id).await.step("alice's roles in acme")?;
    let alice_in_globex = tx.member_roles(globex.id, alice.id).await.step("alice's roles in globex")?;
    let bob_in_globex = tx.member_roles(globex.id, bob.id).await.step("a non-member's roles")?;
    let stranger_in_acme = tx.member_roles(acme.id, user_id(9)).await.step("a stranger's roles")?;
    let of_alice = tx.roles_of(alice.id).await.step("every role alice holds")?;
    let of_bob = tx.roles_of(bob.id).await.step("every role bob holds")?;
    let of_stranger = tx.roles_of(user_id(9)).await.step("every role a stranger holds")?;
    let holders = tx.role_holders(acme.id, billing.id, 10).await.step("billing's holders")?;
    let first_two = tx.role_holders(acme.id, billing.id, 2).await.step("billing's first two holders")?;
    let none = tx.role_holders(acme.id, billing.id, 0).await.step("billing's holders, limit 0")?;
    let support_holders = tx.role_holders(acme.id, support.id, 10).await.step("support's holders")?;
    let across = tx.role_holders(globex.id, billing.id, 10).await.step("billing's holders as globex's")?;
    let unknown = tx.role_holders(acme.id, role_id(0x99), 10).await.step("an unknown role's holders")?;
    tx.commit().await.step("end the read")?;

    ensure_eq(
        "alice's role names in acme, in byte order",
        &names(&alice_in_acme),
        &vec!["billing", "billing-eu", "billing2", "support"],
    )?;
    ensure_eq(
        "alice's roles in acme, whole",
        &alice_in_acme,
        &vec![billing.clone(), billing_eu.clone(), billing2.clone(), support.clone()],
    )?;
    ensure_eq("alice's roles in globex", &alice_in_globex, &vec![alpha.clone(), zed.clone()])?;
    ensure_eq("a non-member's roles", &bob_in_globex, &Vec::new())?;
    ensure_eq("a stranger's roles", &stranger_in_acme, &Vec::new())?;
    ensure_eq(
        "every role alice holds, names in organization id then name order",
        &names(&of_alice),
        &vec!["alpha", "zed", "ops", "billing", "billing-eu", "billing2", "support"],
    )?;
    ensure_eq(
        "every role alice holds, whole",
        &of_alice,
        &vec![alpha, zed, ops, billing.clone(), billing_eu, billing2, support],
    )?;
    ensure_eq("every role bob holds", &of_bob, &vec![billing])?;
    ensure_eq("every role a stranger holds", &of_stranger, &Vec::new())?;
    ensure_eq("billing's holders, in user id order", &holders, &vec![bob.id, carol.id, alice.id, dave.id])?;
    ensure_eq("billing's first two holders", &first_two, &vec![bob.id, carol.id])?;
    ensure_eq("billing's holders with limit 0", &none, &Vec::new())?;
    ensure_eq("support's holders", &support_holders, &vec![carol.id, alice.id])?;
    ensure_eq("billing's holders read as globex's", &across, &Vec::new())?;
    ensure_eq("an unknown role's holders", &unknown, &Vec::new())
}

/// Ending a membership ends the roles held through it, and only those: the member keeps their roles
/// elsewhere, others keep theirs, and joining again starts with no custom role.
pub async fn removing_a_membership_takes_the_roles_held_through_it(store: &dyn Store) -> Outcome {
    let f = held_fixture(store).await?;

    let mut tx = store.begin().await.step("begin the removal")?;
    let removed = tx.remove_membership(f.acme, f.alice).await.step("remove alice from acme")?;
    tx.commit().await.step("commit the removal")?;
    let after_removal = committed_member_roles(store, f.acme, f.alice).await?;
    join(store, &[(f.acme, f.alice)]).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let rejoined = tx.member_roles(f.acme, f.alice).await.step("alice's roles in acme after rejoining")?;
    let of_alice = tx.roles_of(f.alice).await.step("every role alice holds")?;
    let billing_holders = tx.role_holders(f.acme, f.billing.id, 10).await.step("billing's holders")?;
    let of_acme = tx.roles_in(f.acme).await.step("acme's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("removed", &removed, &true)?;
    ensure_eq("alice's roles in acme after the removal", &after_removal, &Vec::new())?;
    ensure_eq("alice's roles in acme after rejoining", &rejoined, &Vec::new())?;
    ensure_eq("every role alice holds", &of_alice, &vec![f.ops])?;
    ensure_eq("billing's holders", &billing_holders, &vec![f.bob])?;
    ensure_eq("acme's roles stay", &of_acme, &vec![f.billing, f.support])
}

/// Deleting an organization takes its roles and every holding of them, and nothing of another
/// organization's.
pub async fn deleting_an_organization_takes_its_roles_and_every_holding_of_them(
    store: &dyn Store,
) -> Outcome {
    let f = held_fixture(store).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_organization(f.acme).await.step("delete acme")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_acme = tx.roles_in(f.acme).await.step("acme's roles")?;
    let billing = tx.role(f.acme, f.billing.id).await.step("read billing")?;
    let holders = tx.role_holders(f.acme, f.billing.id, 10).await.step("billing's holders")?;
    let alice_in_acme = tx.member_roles(f.acme, f.alice).await.step("alice's roles in acme")?;
    let of_alice = tx.roles_of(f.alice).await.step("every role alice holds")?;
    let of_bob = tx.roles_of(f.bob).await.step("every role bob holds")?;
    let of_globex = tx.roles_in(f.globex).await.step("globex's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("acme's roles", &of_acme, &Vec::new())?;
    ensure_eq("billing", &billing, &None)?;
    ensure_eq("billing's holders", &holders, &Vec::new())?;
    ensure_eq("alice's roles in acme", &alice_in_acme, &Vec::new())?;
    ensure_eq("every role alice holds", &of_alice, &vec![f.ops.clone()])?;
    ensure_eq("every role bob holds", &of_bob, &Vec::new())?;
    ensure_eq("globex's roles", &of_globex, &vec![f.ops])
}

/// Deleting an account takes every role it held, in every organization, and leaves the roles and the
/// other holders alone.
pub async fn deleting_an_account_takes_its_role_holdings(store: &dyn Store) -> Outcome {
    let f = held_fixture(store).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_user(f.alice, at(5)).await.step("delete alice")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_alice = tx.roles_of(f.alice).await.step("every role alice held")?;
    let alice_in_acme = tx.member_roles(f.acme, f.alice).await.step("alice's roles in acme")?;
    let billing_holders = tx.role_holders(f.acme, f.billing.id, 10).await.step("billing's holders")?;
    let support_holders = tx.role_holders(f.acme, f.support.id, 10).await.step("support's holders")?;
    let ops_holders = tx.role_holders(f.globex, f.ops.id, 10).await.step("ops's holders")?;
    let of_bob = tx.roles_of(f.bob).await.step("every role bob holds")?;
    let of_acme = tx.roles_in(f.acme).await.step("acme's roles")?;
    let of_globex = tx.roles_in(f.globex).await.step("globex's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("every role alice held", &of_alice, &Vec::new())?;
    ensure_eq("alice's roles in acme", &alice_in_acme, &Vec::new())?;
    ensure_eq("billing's holders", &billing_holders, &vec![f.bob])?;
    ensure_eq("support's holders", &support_holders, &Vec::new())?;
    ensure_eq("ops's holders", &ops_holders, &Vec::new())?;
    ensure_eq("every role bob holds", &of_bob, &vec![f.billing.clone()])?;
    ensure_eq("acme's roles stay", &of_acme, &vec![f.billing, f.support])?;
    ensure_eq("globex's roles stay", &of_globex, &vec![f.ops])
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn role_id(seed: u8) -> RoleId {
    RoleId::from_random_bytes([seed; 16])
}

fn role_name(text: &str) -> Result<RoleName, Failure> {
    RoleName::parse(text).map_err(|e| Failure(format!("fixture role name {text:?}: {e}")))
}

fn permissions<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Permission>, Failure> {
    texts
        .iter()
        .map(|text| {
            let text = text.as_ref();
            Permission::parse(text).map_err(|e| Failure(format!("fixture permission {text:?}: {e}")))
        })
        .collect()
}

/// A role of `organization` granting `granted` in that order, created [`at`] the seed and updated a
/// millisecond later (so the two times cannot be swapped unnoticed).
fn role(seed: u8, organization: OrganizationId, name: &str, granted: &[&str]) -> Result<CustomRole, Failure> {
    Ok(CustomRole {
        id: role_id(seed),
        organization,
        name: role_name(name)?,
        permissions: permissions(granted)?,
        created_at: at(i64::from(seed)),
        updated_at: at(i64::from(seed) + 1),
    })
}

/// The names of the roles, in the order given: a short failure message for an order check.
fn names(roles: &[CustomRole]) -> Vec<&str> {
    roles.iter().map(|r| r.name.as_str()).collect()
}

/// Inserts and commits the roles in a transaction of their own.
async fn write_roles(store: &dyn Store, roles: &[CustomRole]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for role in roles {
        tx.insert_role(role).await.step("insert a role")?;
    }
    tx.commit().await.step("commit the roles")
}

/// Inserts one role in a transaction of its own and rolls it back, returning what the insert said.
async fn try_insert_role(store: &dyn Store, role: &CustomRole) -> Result<Result<(), StoreError>, Failure> {
    let mut tx = store.begin().await.step("begin an insert")?;
    let inserted = tx.insert_role(role).await;
    tx.rollback().await.step("roll back the insert")?;
    Ok(inserted)
}

/// Makes each account a plain member of the organization beside it, in one committed transaction.
async fn join(store: &dyn Store, memberships: &[(OrganizationId, UserId)]) -> Outcome {
    let mut tx = store.begin().await.step("begin the memberships")?;
    for &(organization, member) in memberships {
        tx.set_membership(organization, member, BuiltinRole::Member, at(1)).await.step("join")?;
    }
    tx.commit().await.step("commit the memberships")
}

/// The member's roles in the organization as a new read transaction sees them.
async fn committed_member_roles(
    store: &dyn Store,
    organization: OrganizationId,
    member: UserId,
) -> Result<Vec<CustomRole>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.member_roles(organization, member).await.step("list the member's roles")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The role's holders as a new read transaction sees them.
async fn committed_holders(
    store: &dyn Store,
    organization: OrganizationId,
    id: RoleId,
    limit: u32,
) -> Result<Vec<UserId>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.role_holders(organization, id, limit).await.step("list the role's holders")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Two organizations with roles held, for the checks of what removing something takes with it.
struct Held {
    acme: OrganizationId,
    globex: OrganizationId,
    alice: UserId,
    bob: UserId,
    billing: CustomRole,
    support: CustomRole,
    ops: CustomRole,
}

/// A migrated database where alice holds `billing` and `support` in acme and `ops` in globex, and bob
/// holds `billing` in acme.
async fn held_fixture(store: &dyn Store) -> Result<Held, Failure> {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    join(store, &[(acme.id, alice.id), (acme.id, bob.id), (globex.id, alice.id)]).await?;
    let billing = role(0x10, acme.id, "billing", &["invoices:*"])?;
    let support = role(0x20, acme.id, "support", &["tickets:*", "users:read"])?;
    let ops = role(0x30, globex.id, "ops", &["*:*"])?;
    write_roles(store, &[billing.clone(), support.clone(), ops.clone()]).await?;
    let mut tx = store.begin().await.step("begin the holdings")?;
    tx.set_member_roles(acme.id, alice.id, &[billing.id, support.id]).await.step("alice's roles in acme")?;
    tx.set_member_roles(globex.id, alice.id, &[ops.id]).await.step("alice's roles in globex")?;
    tx.set_member_roles(acme.id, bob.id, &[billing.id]).await.step("bob's roles in acme")?;
    tx.commit().await.step("commit the holdings")?;
    Ok(Held { acme: acme.id, globex: globex.id, alice: alice.id, bob: bob.id, billing, support, ops })
}
