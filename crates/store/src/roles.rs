//! Custom roles of organizations, and which members hold them.

use async_trait::async_trait;
use portcullis_domain::{CustomRole, OrganizationId, RoleId, UserId};

use crate::StoreError;

/// Custom roles and their holders.
#[async_trait]
pub trait RoleStore {
    /// Creates a custom role. A name taken in the organization is [`StoreError::Conflict`] with entity
    /// `"role"`; a missing organization is one with entity `"role"` too (the foreign key), so callers
    /// check it first.
    async fn insert_role(&mut self, role: &CustomRole) -> Result<(), StoreError>;

    /// The role with this id in this organization: another organization's role is `None`, as a missing
    /// one is.
    async fn role(
        &mut self,
        organization: OrganizationId,
        id: RoleId,
    ) -> Result<Option<CustomRole>, StoreError>;

    /// Every custom role of an organization, in name order.
    async fn roles_in(&mut self, organization: OrganizationId) -> Result<Vec<CustomRole>, StoreError>;

    /// Replaces a role's name, permissions and `updated_at` (matched by organization and id); returns
    /// false if there is no such role. A name taken by another role of the organization is
    /// [`StoreError::Conflict`] with entity `"role"`.
    async fn update_role(&mut self, role: &CustomRole) -> Result<bool, StoreError>;

    /// Deletes a role and every holding of it; returns false if there was no such role.
    async fn delete_role(&mut self, organization: OrganizationId, id: RoleId) -> Result<bool, StoreError>;

    /// Up to `limit` holders of the role (members, and service accounts: their ids share one space),
    /// in id order.
    async fn role_holders(
        &mut self,
        organization: OrganizationId,
        id: RoleId,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError>;

    /// Makes `roles` exactly the custom roles `user` holds in `organization`. The account must be a
    /// member and every role must be the organization's: otherwise [`StoreError::Conflict`] with
    /// entity `"membership"` (the foreign keys).
    async fn set_member_roles(
        &mut self,
        organization: OrganizationId,
        user: UserId,
        roles: &[RoleId],
    ) -> Result<(), StoreError>;

    /// The custom roles `user` holds in `organization`, in name order.
    async fn member_roles(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Vec<CustomRole>, StoreError>;

    /// Every custom role `user` holds, in every organization, in organization then name order.
    async fn roles_of(&mut self, user: UserId) -> Result<Vec<CustomRole>, StoreError>;

    /// Makes `roles` exactly the custom roles service account `account` of `organization` holds. A
    /// role of another organization, or an account not of `organization`, is
    /// [`StoreError::Conflict`] with entity `"service_account"` (the foreign keys).
    async fn set_service_account_roles(
        &mut self,
        organization: OrganizationId,
        account: UserId,
        roles: &[RoleId],
    ) -> Result<(), StoreError>;

    /// The custom roles a service account holds, in name order.
    async fn service_account_roles(&mut self, account: UserId) -> Result<Vec<CustomRole>, StoreError>;
}
