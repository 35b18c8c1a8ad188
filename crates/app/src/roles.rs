//! Custom roles: an organization's own named sets of permissions, created, changed and deleted by
//! whoever holds `roles:write` there, and given to its members beside their built-in role.
//!
//! Guard rails, as for built-in roles: nobody creates, edits, deletes, gives or takes a custom role
//! unless they hold every permission it lists (before and after an edit) in that organization, read
//! from the caller's current account under the accounts lock. So a role cannot be used to pass on a
//! right one lacks, and editing a role one holds cannot add to one's own rights. Another
//! organization's role, like a missing one, is not found.

use portcullis_domain::{
    BuiltinRole, CustomRole, Grant, MAX_ROLE_PERMISSIONS, MAX_ROLES_PER_MEMBER, MAX_ROLES_PER_ORGANIZATION,
    OrganizationId, Permission, Resource, RoleId, RoleName, UserId, holds_all,
};
use portcullis_store::{StoreError, StoreTx};

use crate::audit::AuditEntry;
use crate::secret_token::random_id_bytes;
use crate::{App, AppError, FieldIssue, Principal};

/// Most holders a refused deletion names.
pub const MAX_HOLDERS_LISTED: u32 = 100;

/// The roles an organization offers: the built-in ones and its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationRoles {
    pub builtin: Vec<BuiltinRole>,
    pub custom: Vec<CustomRole>,
}

/// A change to a custom role; a field left `None` stays as it is.
#[derive(Debug, Clone, Default)]
pub struct RoleChange {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
}

/// The custom roles an account holds after a change, and the ones the change gave and took.
#[derive(Debug)]
pub(crate) struct HeldRoles {
    pub(crate) held: Vec<CustomRole>,
    given: Vec<RoleId>,
    taken: Vec<RoleId>,
}

impl HeldRoles {
    fn between(current: &[CustomRole], held: Vec<CustomRole>) -> Self {
        let given = held.iter().filter(|r| !current.iter().any(|c| c.id == r.id)).map(|r| r.id).collect();
        let taken = current.iter().filter(|c| !held.iter().any(|r| r.id == c.id)).map(|c| c.id).collect();
        Self { held, given, taken }
    }

    /// `role.assigned` and `role.unassigned` records of the change, by `principal`, about the
    /// account (`target_kind` `user` or `service_account`) in `org`.
    pub(crate) fn audit(
        &self,
        principal: &Principal,
        target_kind: &str,
        target: UserId,
        org: OrganizationId,
    ) -> Vec<AuditEntry> {
        let record = |action: &str, role: &RoleId| {
            AuditEntry::by(principal, action)
                .target(target_kind, target)
                .organization(org)
                .detail("role_id", role.to_string())
        };
        let given = self.given.iter().map(|role| record("role.assigned", role));
        given.chain(self.taken.iter().map(|role| record("role.unassigned", role))).collect()
    }
}

fn in_org(organization: OrganizationId) -> Resource {
    Resource { organization: Some(organization), owner: None }
}

fn parse_org(id: &str) -> Result<OrganizationId, AppError> {
    OrganizationId::parse(id).map_err(|_| AppError::NotFound)
}

fn parse_role(id: &str) -> Result<RoleId, AppError> {
    RoleId::parse(id).map_err(|_| AppError::NotFound)
}

fn parse_name(name: &str) -> Result<RoleName, AppError> {
    RoleName::parse(name).map_err(|e| AppError::invalid("/name", e))
}

/// Parses a role's permission list: each well formed (wildcards allowed), duplicates dropped, at least
/// one and at most [`MAX_ROLE_PERMISSIONS`].
fn parse_permissions(texts: &[String]) -> Result<Vec<Permission>, AppError> {
    if texts.is_empty() || texts.len() > MAX_ROLE_PERMISSIONS {
        return Err(AppError::invalid(
            "/permissions",
            format!("must list 1 to {MAX_ROLE_PERMISSIONS} permissions"),
        ));
    }
    let mut permissions: Vec<Permission> = Vec::with_capacity(texts.len());
    let mut issues = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        match Permission::parse(text) {
            Ok(permission) if !permissions.contains(&permission) => permissions.push(permission),
            Ok(_) => {}
            Err(e) => issues.push(FieldIssue::new("/permissions", format!("permission {}: {e}", n + 1))),
        }
    }
    if issues.is_empty() { Ok(permissions) } else { Err(AppError::Validation(issues)) }
}

/// Refuses unless `grants` cover every grant of `role`.
fn may_give(grants: &[Grant], role: &CustomRole) -> Result<(), AppError> {
    if holds_all(grants, &role.grants()) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "only someone holding every permission of the role {} in this organization can create, change, \
             give or take it",
            role.name.as_str()
        )))
    }
}

impl App {
    /// The roles offered in an organization. Needs `roles:read` there.
    pub async fn admin_list_roles(
        &self,
        principal: &Principal,
        org: &str,
    ) -> Result<OrganizationRoles, AppError> {
        let org = parse_org(org)?;
        self.require_in(principal, "roles:read", org).await?;
        let mut tx = self.inner.store.begin_read().await?;
        if tx.organization(org).await?.is_none() {
            return Err(AppError::NotFound);
        }
        let custom = tx.roles_in(org).await?;
        tx.rollback().await?;
        Ok(OrganizationRoles { builtin: BuiltinRole::ALL.to_vec(), custom })
    }

    /// One custom role. Needs `roles:read` in its organization.
    pub async fn admin_get_role(
        &self,
        principal: &Principal,
        org: &str,
        role: &str,
    ) -> Result<CustomRole, AppError> {
        let org = parse_org(org)?;
        self.require_in(principal, "roles:read", org).await?;
        let role = parse_role(role)?;
        let mut tx = self.inner.store.begin_read().await?;
        let found = tx.role(org, role).await?;
        tx.rollback().await?;
        found.ok_or(AppError::NotFound)
    }

    /// Creates a custom role. Needs `roles:write` in the organization and every permission it lists.
    pub async fn admin_create_role(
        &self,
        principal: &Principal,
        org: &str,
        name: &str,
        permissions: &[String],
    ) -> Result<CustomRole, AppError> {
        let org = parse_org(org)?;
        self.require_in(principal, "roles:write", org).await?;
        let (name, permissions) = match (parse_name(name), parse_permissions(permissions)) {
            (Ok(name), Ok(permissions)) => (name, permissions),
            (name, permissions) => return Err(merge_invalid([name.err(), permissions.err()])),
        };
        let now = self.now();
        let role = CustomRole {
            id: RoleId::from_random_bytes(random_id_bytes()?),
            organization: org,
            name,
            permissions,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants = self.caller_under_lock(tx.as_mut(), principal, "roles:write", in_org(org)).await?;
        may_give(&grants, &role)?;
        if tx.organization(org).await?.is_none() {
            return Err(AppError::NotFound);
        }
        if tx.roles_in(org).await?.len() >= MAX_ROLES_PER_ORGANIZATION {
            return Err(AppError::Forbidden(format!(
                "an organization defines at most {MAX_ROLES_PER_ORGANIZATION} roles"
            )));
        }
        tx.insert_role(&role).await.map_err(name_taken)?;
        let created = AuditEntry::by(principal, "role.created")
            .target("role", role.id)
            .organization(org)
            .detail("name", role.name.as_str())
            .detail("permissions", permission_texts(&role.permissions));
        self.commit_audited(tx, [created]).await?;
        tracing::info!(admin = %principal.user_id, organization = %org, role = %role.id, "role created");
        Ok(role)
    }

    /// Renames a custom role or replaces its permissions. Needs `roles:write` in the organization and
    /// every permission of the role before and after the change; every holder's rights change at once
    /// on this node, and within the profile cache's lifetime on the others.
    pub async fn admin_update_role(
        &self,
        principal: &Principal,
        org: &str,
        role: &str,
        change: &RoleChange,
    ) -> Result<CustomRole, AppError> {
        let org = parse_org(org)?;
        self.require_in(principal, "roles:write", org).await?;
        let id = parse_role(role)?;
        let name = change.name.as_deref().map(parse_name).transpose();
        let permissions = change.permissions.as_deref().map(parse_permissions).transpose();
        let (name, permissions) = match (name, permissions) {
            (Ok(name), Ok(permissions)) => (name, permissions),
            (name, permissions) => return Err(merge_invalid([name.err(), permissions.err()])),
        };
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants = self.caller_under_lock(tx.as_mut(), principal, "roles:write", in_org(org)).await?;
        let before = tx.role(org, id).await?.ok_or(AppError::NotFound)?;
        may_give(&grants, &before)?;
        let before_permissions = before.permissions.clone();
        let after = CustomRole {
            name: name.unwrap_or_else(|| before.name.clone()),
            permissions: permissions.unwrap_or_else(|| before.permissions.clone()),
            updated_at: self.now(),
            ..before
        };
        may_give(&grants, &after)?;
        if !tx.update_role(&after).await.map_err(name_taken)? {
            return Err(AppError::NotFound);
        }
        let updated = AuditEntry::by(principal, "role.updated")
            .target("role", id)
            .organization(org)
            .detail("name", after.name.as_str())
            .detail("permissions_before", permission_texts(&before_permissions))
            .detail("permissions", permission_texts(&after.permissions));
        self.commit_audited(tx, [updated]).await?;
        self.inner.profiles.clear();
        // Service accounts holding the role have their grants cached beside their keys.
        self.inner.api_keys.clear();
        tracing::info!(admin = %principal.user_id, organization = %org, role = %id, "role changed");
        Ok(after)
    }

    /// Deletes a custom role. Needs `roles:write` in the organization and every permission of the
    /// role. A role that members hold is refused with their ids ([`AppError::RoleInUse`]) unless
    /// `force`, which takes it from them.
    pub async fn admin_delete_role(
        &self,
        principal: &Principal,
        org: &str,
        role: &str,
        force: bool,
    ) -> Result<(), AppError> {
        let org = parse_org(org)?;
        self.require_in(principal, "roles:write", org).await?;
        let id = parse_role(role)?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants = self.caller_under_lock(tx.as_mut(), principal, "roles:write", in_org(org)).await?;
        let role = tx.role(org, id).await?.ok_or(AppError::NotFound)?;
        may_give(&grants, &role)?;
        let holders = tx.role_holders(org, id, MAX_HOLDERS_LISTED).await?;
        if !holders.is_empty() && !force {
            return Err(AppError::RoleInUse { holders });
        }
        tx.delete_role(org, id).await?;
        // With `force`, the holders listed (at most MAX_HOLDERS_LISTED) lost it with the role.
        let deleted = AuditEntry::by(principal, "role.deleted")
            .target("role", id)
            .organization(org)
            .detail("name", role.name.as_str())
            .detail("forced", force)
            .detail("holders", holders.len());
        self.commit_audited(tx, [deleted]).await?;
        self.inner.profiles.clear();
        self.inner.api_keys.clear();
        tracing::info!(admin = %principal.user_id, organization = %org, role = %id, forced = force, "role deleted");
        Ok(())
    }

    /// Makes `wanted` (role ids) exactly the custom roles `user` holds in `org`, under the caller's
    /// lock-held grants: each role given or taken must be one the caller could create. Returns the
    /// roles now held, and which were given and taken.
    pub(crate) async fn set_custom_roles(
        &self,
        tx: &mut dyn StoreTx,
        grants: &[Grant],
        org: OrganizationId,
        user: UserId,
        wanted: &[String],
    ) -> Result<HeldRoles, AppError> {
        let current = tx.member_roles(org, user).await?;
        let roles = self.changed_roles(tx, grants, org, wanted, &current).await?;
        let ids: Vec<RoleId> = roles.iter().map(|r| r.id).collect();
        tx.set_member_roles(org, user, &ids).await?;
        Ok(HeldRoles::between(&current, roles))
    }

    /// The same for a service account of `org`.
    pub(crate) async fn set_service_account_custom_roles(
        &self,
        tx: &mut dyn StoreTx,
        grants: &[Grant],
        org: OrganizationId,
        account: UserId,
        wanted: &[String],
    ) -> Result<HeldRoles, AppError> {
        let current = tx.service_account_roles(account).await?;
        let roles = self.changed_roles(tx, grants, org, wanted, &current).await?;
        let ids: Vec<RoleId> = roles.iter().map(|r| r.id).collect();
        tx.set_service_account_roles(org, account, &ids).await?;
        Ok(HeldRoles::between(&current, roles))
    }

    /// The roles `wanted` names (ids of `org`'s roles, at most [`MAX_ROLES_PER_MEMBER`]), refused
    /// unless the caller could create each one given or taken relative to `current`; in name order.
    async fn changed_roles(
        &self,
        tx: &mut dyn StoreTx,
        grants: &[Grant],
        org: OrganizationId,
        wanted: &[String],
        current: &[CustomRole],
    ) -> Result<Vec<CustomRole>, AppError> {
        if wanted.len() > MAX_ROLES_PER_MEMBER {
            return Err(AppError::invalid(
                "/roles",
                format!("a member holds at most {MAX_ROLES_PER_MEMBER} roles"),
            ));
        }
        let mut roles: Vec<CustomRole> = Vec::with_capacity(wanted.len());
        for (n, text) in wanted.iter().enumerate() {
            let no_such =
                || AppError::invalid("/roles", format!("role {}: no such role in this organization", n + 1));
            let id = RoleId::parse(text).map_err(|_| no_such())?;
            let role = tx.role(org, id).await?.ok_or_else(no_such)?;
            if !roles.iter().any(|r| r.id == role.id) {
                roles.push(role);
            }
        }
        let given = roles.iter().filter(|r| !current.iter().any(|c| c.id == r.id));
        let taken = current.iter().filter(|c| !roles.iter().any(|r| r.id == c.id));
        for role in given.chain(taken) {
            may_give(grants, role)?;
        }
        roles.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(roles)
    }
}

/// A role's permissions as the audit trail records them.
fn permission_texts(permissions: &[Permission]) -> Vec<String> {
    permissions.iter().map(ToString::to_string).collect()
}

/// A taken name is the caller's to fix; any other store error stays what it is.
fn name_taken(error: StoreError) -> AppError {
    match error {
        StoreError::Conflict { .. } => {
            AppError::invalid("/name", "is taken by another role of this organization")
        }
        other => other.into(),
    }
}

/// Every field problem of several checks in one answer.
fn merge_invalid(errors: [Option<AppError>; 2]) -> AppError {
    let mut issues = Vec::new();
    for error in errors.into_iter().flatten() {
        match error {
            AppError::Validation(more) => issues.extend(more),
            other => return other,
        }
    }
    AppError::Validation(issues)
}
