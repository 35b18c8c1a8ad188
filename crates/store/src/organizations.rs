//! Organizations (tenants) and memberships: who belongs to which organization with which role.

use async_trait::async_trait;
use portcullis_domain::{BuiltinRole, Organization, OrganizationId, OrganizationSlug, Timestamp, UserId};

use crate::StoreError;

/// Organizations and memberships.
#[async_trait]
pub trait OrganizationStore {
    /// Creates an organization. A taken slug is [`StoreError::Conflict`] with entity
    /// `"organization"`.
    async fn insert_organization(&mut self, organization: &Organization) -> Result<(), StoreError>;

    /// The organization with this id.
    async fn organization(&mut self, id: OrganizationId) -> Result<Option<Organization>, StoreError>;

    /// The organization with this slug.
    async fn organization_by_slug(
        &mut self,
        slug: &OrganizationSlug,
    ) -> Result<Option<Organization>, StoreError>;

    /// Up to `limit` organizations with an id greater than `after`, in id (byte) order.
    async fn organizations(
        &mut self,
        after: Option<OrganizationId>,
        limit: u32,
    ) -> Result<Vec<Organization>, StoreError>;

    /// Renames an organization; returns false if it does not exist.
    async fn rename_organization(
        &mut self,
        id: OrganizationId,
        name: &portcullis_domain::DisplayName,
    ) -> Result<bool, StoreError>;

    /// Deletes an organization and its memberships; returns false if it did not exist.
    async fn delete_organization(&mut self, id: OrganizationId) -> Result<bool, StoreError>;

    /// Makes `user` a member of `organization` with `role`, or changes the role of a member. A missing
    /// organization or account is [`StoreError::Conflict`] with entity `"membership"` (the foreign
    /// key), so callers check both first.
    async fn set_membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
        role: BuiltinRole,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// `user`'s role in `organization`, if a member.
    async fn membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Option<BuiltinRole>, StoreError>;

    /// Every organization `user` belongs to, with the role, in organization id order.
    async fn memberships_of(
        &mut self,
        user: UserId,
    ) -> Result<Vec<(OrganizationId, BuiltinRole)>, StoreError>;

    /// Up to `limit` members of `organization` with a user id greater than `after`, in user id order.
    async fn members_of(
        &mut self,
        organization: OrganizationId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<(UserId, BuiltinRole)>, StoreError>;

    /// Ends a membership; returns false if there was none.
    async fn remove_membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<bool, StoreError>;

    /// How many active accounts hold `role` in `organization` (the last-owner guard reads this under
    /// the accounts lock).
    async fn count_active_members_with_role(
        &mut self,
        organization: OrganizationId,
        role: BuiltinRole,
    ) -> Result<u64, StoreError>;
}
