//! Organizations (tenants) and memberships: create, list, read, rename and delete organizations, and
//! add, change and remove their members. Each use case states its permission first.
//!
//! Tenant safety: a caller who cannot read an organization gets [`AppError::NotFound`] for it, exactly
//! as for one that does not exist; one who can read it but not change it gets
//! [`AppError::Forbidden`]. Guard rails as for accounts: nobody hands out or takes away an
//! organization role they do not hold there, and the last active owner of an organization stays.

use std::sync::Arc;

use portcullis_domain::{
    BuiltinRole, DEFAULT_ORGANIZATION_SLUG, DisplayName, Grant, Organization, OrganizationId,
    OrganizationSlug, Permission, Resource, UserId, decide, holds_all,
};
use portcullis_store::{StoreError, StoreTx};

use crate::admin::MAX_PAGE;
use crate::audit::AuditEntry;
use crate::secret_token::random_id_bytes;
use crate::{App, AppError, Principal};

/// One member of an organization, as its administrators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub display_name: Option<String>,
    pub role: BuiltinRole,
    /// The organization's custom roles the member holds, in name order.
    pub custom_roles: Vec<portcullis_domain::CustomRole>,
}

pub(crate) fn in_org(organization: OrganizationId) -> Resource {
    Resource { organization: Some(organization), owner: None }
}

fn parse_org(id: &str) -> Result<OrganizationId, AppError> {
    OrganizationId::parse(id).map_err(|_| AppError::NotFound)
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, AppError> {
    let limit = limit.unwrap_or(crate::admin::DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(AppError::invalid("/limit", format!("must be 1 to {MAX_PAGE}")))
    }
}

impl App {
    /// Creates the default organization of a fresh installation; safe when nodes start together.
    pub(crate) async fn ensure_default_organization(&self) -> Result<(), AppError> {
        let slug = OrganizationSlug::parse(DEFAULT_ORGANIZATION_SLUG)
            .map_err(|_| AppError::Internal("the default slug does not parse".into()))?;
        let mut tx = self.inner.store.begin_read().await?;
        let existing = tx.organization_by_slug(&slug).await?;
        tx.rollback().await?;
        if existing.is_some() {
            return Ok(());
        }
        let organization = Organization {
            id: OrganizationId::from_random_bytes(random_id_bytes()?),
            slug,
            name: DisplayName::parse("Default").map_err(|_| AppError::Internal("default name".into()))?,
            created_at: self.now(),
        };
        let mut tx = self.inner.store.begin().await?;
        match tx.insert_organization(&organization).await {
            Ok(()) => {
                let created = AuditEntry::system("organization.created")
                    .target("organization", organization.id)
                    .organization(organization.id)
                    .detail("slug", organization.slug.as_str())
                    .detail("default", true);
                self.commit_audited(tx, [created]).await?;
            }
            Err(StoreError::Conflict { .. }) => drop(tx),
            Err(other) => return Err(other.into()),
        }
        Ok(())
    }

    /// Refuses unless the caller holds `permission` in `organization`: [`AppError::NotFound`] when it
    /// cannot even read the organization (another tenant's looks like a missing one), else
    /// [`AppError::Forbidden`].
    pub(crate) async fn require_in(
        &self,
        principal: &Principal,
        permission: &'static str,
        organization: OrganizationId,
    ) -> Result<Arc<[Grant]>, AppError> {
        let grants = self.grants_of(principal).await?;
        check_in(&grants, principal, permission, organization)?;
        self.step_up_for(principal, permission).await?;
        Ok(grants)
    }

    /// Creates an organization. Needs `orgs:create`.
    pub async fn admin_create_organization(
        &self,
        principal: &Principal,
        slug: &str,
        name: &str,
    ) -> Result<Organization, AppError> {
        self.require(principal, "orgs:create", Resource::default()).await?;
        let slug = OrganizationSlug::parse(slug).map_err(|e| AppError::invalid("/slug", e))?;
        let name = DisplayName::parse(name).map_err(|e| AppError::invalid("/name", e))?;
        let organization = Organization {
            id: OrganizationId::from_random_bytes(random_id_bytes()?),
            slug,
            name,
            created_at: self.now(),
        };
        let mut tx = self.inner.store.begin().await?;
        tx.insert_organization(&organization).await.map_err(|e| match e {
            StoreError::Conflict { .. } => AppError::invalid("/slug", "is taken by another organization"),
            other => other.into(),
        })?;
        let created = AuditEntry::by(principal, "organization.created")
            .target("organization", organization.id)
            .organization(organization.id)
            .detail("slug", organization.slug.as_str());
        self.commit_audited(tx, [created]).await?;
        tracing::info!(admin = %principal.user_id, organization = %organization.id, "organization created");
        Ok(organization)
    }

    /// Every organization, a page at a time. Needs `orgs:read` system-wide; members see their own
    /// organizations in `GET /v1/me`.
    pub async fn admin_list_organizations(
        &self,
        principal: &Principal,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<Organization>, Option<String>), AppError> {
        self.require(principal, "orgs:read", Resource::default()).await?;
        let after = after
            .map(|a| {
                OrganizationId::parse(a)
                    .map_err(|_| AppError::invalid("/after", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let limit = page_limit(limit)?;
        let mut tx = self.inner.store.begin_read().await?;
        let mut organizations = tx.organizations(after, limit + 1).await?;
        tx.rollback().await?;
        let next = (organizations.len() > limit as usize).then(|| {
            organizations.truncate(limit as usize);
            organizations.last().map(|o| o.id.to_string())
        });
        Ok((organizations, next.flatten()))
    }

    /// One organization. Needs `orgs:read` in it.
    pub async fn admin_get_organization(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Organization, AppError> {
        let id = parse_org(id)?;
        self.require_in(principal, "orgs:read", id).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let organization = tx.organization(id).await?;
        tx.rollback().await?;
        organization.ok_or(AppError::NotFound)
    }

    /// Renames an organization. Needs `orgs:write` in it.
    pub async fn admin_rename_organization(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> Result<Organization, AppError> {
        let id = parse_org(id)?;
        self.require_in(principal, "orgs:write", id).await?;
        let name = DisplayName::parse(name).map_err(|e| AppError::invalid("/name", e))?;
        let mut tx = self.inner.store.begin().await?;
        if !tx.rename_organization(id, &name).await? {
            return Err(AppError::NotFound);
        }
        let organization = tx.organization(id).await?.ok_or(AppError::NotFound)?;
        let updated = AuditEntry::by(principal, "organization.updated")
            .target("organization", id)
            .organization(id)
            .detail("fields", vec!["name"]);
        self.commit_audited(tx, [updated]).await?;
        Ok(organization)
    }

    /// Deletes an organization and its memberships (the accounts stay). Needs `orgs:delete`
    /// system-wide; the default organization cannot be deleted.
    pub async fn admin_delete_organization(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        let id = parse_org(id)?;
        self.require_in(principal, "orgs:delete", id).await?;
        self.require(principal, "orgs:delete", Resource::default()).await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        self.caller_under_lock(tx.as_mut(), principal, "orgs:delete", Resource::default()).await?;
        let organization = tx.organization(id).await?.ok_or(AppError::NotFound)?;
        if organization.slug.as_str() == DEFAULT_ORGANIZATION_SLUG {
            return Err(AppError::Forbidden("the default organization cannot be deleted".into()));
        }
        tx.delete_organization(id).await?;
        let deleted = AuditEntry::by(principal, "organization.deleted")
            .target("organization", id)
            .organization(id)
            .detail("slug", organization.slug.as_str());
        self.commit_audited(tx, [deleted]).await?;
        self.inner.profiles.clear();
        // Its service accounts and their keys went with it.
        self.inner.api_keys.clear();
        tracing::info!(admin = %principal.user_id, organization = %id, "organization deleted");
        Ok(())
    }

    /// The members of an organization, a page at a time. Needs `memberships:read` in it.
    pub async fn admin_list_members(
        &self,
        principal: &Principal,
        id: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<Member>, Option<String>), AppError> {
        let id = parse_org(id)?;
        self.require_in(principal, "memberships:read", id).await?;
        let after = after
            .map(|a| {
                UserId::parse(a)
                    .map_err(|_| AppError::invalid("/after", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let limit = page_limit(limit)?;
        let mut tx = self.inner.store.begin_read().await?;
        if tx.organization(id).await?.is_none() {
            return Err(AppError::NotFound);
        }
        let rows = tx.members_of(id, after, limit + 1).await?;
        let mut members = Vec::with_capacity(rows.len());
        for (user_id, role) in rows {
            let user = self.load_user(tx.as_mut(), user_id).await?.ok_or(AppError::NotFound)?;
            let custom_roles = tx.member_roles(id, user_id).await?;
            members.push(Member {
                user_id,
                email: user.email.as_str().to_owned(),
                display_name: user.display_name.map(|n| n.as_str().to_owned()),
                role,
                custom_roles,
            });
        }
        tx.rollback().await?;
        let next = (members.len() > limit as usize).then(|| {
            members.truncate(limit as usize);
            members.last().map(|m| m.user_id.to_string())
        });
        Ok((members, next.flatten()))
    }

    /// Adds an account to an organization with `role`, or changes its role there; with
    /// `custom_roles` (role ids), also makes those exactly the organization's custom roles it holds
    /// (`None` leaves them as they are). Needs `memberships:write` in the organization and every
    /// grant of the old and the new built-in role there and of each custom role given or taken,
    /// re-checked on the caller's current account under the accounts lock; the last active owner of
    /// the organization keeps the role; nobody changes their own membership.
    pub async fn admin_set_member(
        &self,
        principal: &Principal,
        id: &str,
        user: &str,
        role: BuiltinRole,
        custom_roles: Option<&[String]>,
    ) -> Result<Member, AppError> {
        let org = parse_org(id)?;
        self.require_in(principal, "memberships:write", org).await?;
        let user = UserId::parse(user).map_err(|_| AppError::NotFound)?;
        if user == principal.user_id {
            return Err(AppError::Forbidden("nobody changes their own membership".into()));
        }
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let now = self.now();
        let grants = self.caller_under_lock(tx.as_mut(), principal, "memberships:write", in_org(org)).await?;
        if tx.organization(org).await?.is_none() {
            return Err(AppError::NotFound);
        }
        let target = self.load_user(tx.as_mut(), user).await?.ok_or(AppError::NotFound)?;
        let current = tx.membership(org, user).await?;
        for touched in current.into_iter().chain([role]) {
            may_give_in(&grants, touched, org)?;
        }
        if current == Some(BuiltinRole::Owner) && role != BuiltinRole::Owner {
            keep_an_org_owner(tx.as_mut(), org, &target).await?;
        }
        tx.set_membership(org, user, role, now).await?;
        let mut entries = Vec::new();
        let membership = match current {
            None => Some(AuditEntry::by(principal, "membership.added").detail("role", role.as_str())),
            Some(from) if from != role => Some(
                AuditEntry::by(principal, "membership.changed")
                    .detail("from", from.as_str())
                    .detail("to", role.as_str()),
            ),
            Some(_) => None,
        };
        entries.extend(membership.map(|e| e.target("user", user).organization(org)));
        let custom_roles = match custom_roles {
            Some(wanted) => {
                let roles = self.set_custom_roles(tx.as_mut(), &grants, org, user, wanted).await?;
                entries.extend(roles.audit(principal, "user", user, org));
                roles.held
            }
            None => tx.member_roles(org, user).await?,
        };
        self.commit_audited(tx, entries).await?;
        self.inner.profiles.forget(user);
        tracing::info!(admin = %principal.user_id, organization = %org, user = %user, role = role.as_str(), "membership set");
        Ok(Member {
            user_id: user,
            email: target.email.as_str().to_owned(),
            display_name: target.display_name.map(|n| n.as_str().to_owned()),
            role,
            custom_roles,
        })
    }

    /// Removes an account from an organization (and so its custom roles there). Needs
    /// `memberships:write` there and every grant of the member's built-in and custom roles there; the
    /// last active owner of the organization stays.
    pub async fn admin_remove_member(
        &self,
        principal: &Principal,
        id: &str,
        user: &str,
    ) -> Result<(), AppError> {
        let org = parse_org(id)?;
        self.require_in(principal, "memberships:write", org).await?;
        let user = UserId::parse(user).map_err(|_| AppError::NotFound)?;
        if user == principal.user_id {
            return Err(AppError::Forbidden("nobody changes their own membership".into()));
        }
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants = self.caller_under_lock(tx.as_mut(), principal, "memberships:write", in_org(org)).await?;
        let current = tx.membership(org, user).await?.ok_or(AppError::NotFound)?;
        may_give_in(&grants, current, org)?;
        let roles = self.set_custom_roles(tx.as_mut(), &grants, org, user, &[]).await?;
        if current == BuiltinRole::Owner {
            let target = self.load_user(tx.as_mut(), user).await?.ok_or(AppError::NotFound)?;
            keep_an_org_owner(tx.as_mut(), org, &target).await?;
        }
        tx.remove_membership(org, user).await?;
        let mut entries = roles.audit(principal, "user", user, org);
        entries.push(
            AuditEntry::by(principal, "membership.removed")
                .target("user", user)
                .organization(org)
                .detail("role", current.as_str()),
        );
        self.commit_audited(tx, entries).await?;
        self.inner.profiles.forget(user);
        tracing::info!(admin = %principal.user_id, organization = %org, user = %user, "membership removed");
        Ok(())
    }
}

/// The tenant-safe refusal: not found unless the caller may at least read the organization.
pub(crate) fn check_in(
    grants: &[Grant],
    principal: &Principal,
    permission: &'static str,
    organization: OrganizationId,
) -> Result<(), AppError> {
    let wanted = Permission::parse_concrete(permission)
        .map_err(|_| AppError::Internal(format!("{permission:?} is not a permission").into()))?;
    if decide(grants, principal.user_id, &wanted, &in_org(organization)).allowed {
        return Ok(());
    }
    let read = Permission::parse_concrete("orgs:read").map_err(|_| AppError::Internal("orgs:read".into()))?;
    if decide(grants, principal.user_id, &read, &in_org(organization)).allowed {
        tracing::info!(user = %principal.user_id, permission, %organization, "authorization denied");
        Err(AppError::Forbidden(format!("this needs the {permission} permission in this organization")))
    } else {
        Err(AppError::NotFound)
    }
}

/// Refuses unless `grants` cover every grant of `role` held in `organization`.
pub(crate) fn may_give_in(
    grants: &[Grant],
    role: BuiltinRole,
    organization: OrganizationId,
) -> Result<(), AppError> {
    if holds_all(grants, &role.grants_in(organization)) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "only someone holding every permission of {} in this organization can give or take it",
            role.as_str()
        )))
    }
}

/// Refuses when `user` is the last active owner of `organization` (under the accounts lock).
async fn keep_an_org_owner(
    tx: &mut dyn StoreTx,
    organization: OrganizationId,
    user: &portcullis_domain::User,
) -> Result<(), AppError> {
    if user.status == portcullis_domain::UserStatus::Active
        && tx.count_active_members_with_role(organization, BuiltinRole::Owner).await? <= 1
    {
        return Err(AppError::Forbidden(
            "this is the organization's last active owner; make another owner first".into(),
        ));
    }
    Ok(())
}
