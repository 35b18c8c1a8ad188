//! Custom roles: a named set of permissions that an organization defines for itself, held by its
//! members beside their built-in role and granted only inside that organization.

use crate::{BuiltinRole, Grant, OrganizationId, Permission, RoleId, Scope, Timestamp};

/// Most permissions one custom role lists.
pub const MAX_ROLE_PERMISSIONS: usize = 64;

/// Most custom roles one organization defines (a bound on what every grant computation reads).
pub const MAX_ROLES_PER_ORGANIZATION: usize = 100;

/// Most custom roles one member holds in one organization.
pub const MAX_ROLES_PER_MEMBER: usize = 16;

/// Text that is not a role name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoleName {
    #[error(
        "must be 1 to 32 characters of lowercase letters, digits and single hyphens, starting with a letter"
    )]
    Shape,
    #[error("is the name of a built-in role")]
    Builtin,
}

/// A custom role's name: slug-shaped, unique in its organization, never a built-in role's name (so
/// `admin` always means the built-in role, in the API and in logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(text: &str) -> Result<Self, InvalidRoleName> {
        let slug = crate::OrganizationSlug::parse(text).map_err(|_| InvalidRoleName::Shape)?;
        if BuiltinRole::parse(slug.as_str()).is_some() {
            return Err(InvalidRoleName::Builtin);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One organization's custom role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    pub id: RoleId,
    pub organization: OrganizationId,
    pub name: RoleName,
    /// Distinct, in the order given; at most [`MAX_ROLE_PERMISSIONS`].
    pub permissions: Vec<Permission>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl CustomRole {
    /// What holding the role gives: each permission, in its organization only.
    pub fn grants(&self) -> Vec<Grant> {
        self.permissions
            .iter()
            .map(|permission| Grant {
                permission: permission.clone(),
                scope: Scope::Organization(self.organization),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_name_is_slug_shaped_and_never_a_built_in_roles_name() {
        for good in ["billing", "support-2", "a"] {
            assert_eq!(RoleName::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "Billing", "-x", "x-", "a--b", "1st", "x y", &"a".repeat(33)] {
            assert_eq!(RoleName::parse(bad), Err(InvalidRoleName::Shape), "{bad:?}");
        }
        for builtin in ["owner", "admin", "auditor", "member"] {
            assert_eq!(RoleName::parse(builtin), Err(InvalidRoleName::Builtin));
        }
    }

    #[test]
    fn a_custom_roles_grants_reach_only_its_organization() {
        let org = OrganizationId::from_random_bytes([1; 16]);
        let role = CustomRole {
            id: RoleId::from_random_bytes([2; 16]),
            organization: org,
            name: RoleName::parse("billing").unwrap(),
            permissions: vec![
                Permission::parse("invoices:*").unwrap(),
                Permission::parse("users:read").unwrap(),
            ],
            created_at: Timestamp::from_unix_millis(0),
            updated_at: Timestamp::from_unix_millis(0),
        };
        let grants = role.grants();
        assert_eq!(grants.len(), 2);
        assert!(grants.iter().all(|g| g.scope == Scope::Organization(org)));
        let wanted = Permission::parse_concrete("invoices:pay").unwrap();
        let owner = crate::UserId::from_random_bytes([3; 16]);
        let here = crate::Resource { organization: Some(org), owner: None };
        let elsewhere =
            crate::Resource { organization: Some(OrganizationId::from_random_bytes([4; 16])), owner: None };
        assert!(crate::decide(&grants, owner, &wanted, &here).allowed);
        assert!(!crate::decide(&grants, owner, &wanted, &elsewhere).allowed);
        assert!(!crate::decide(&grants, owner, &wanted, &crate::Resource::default()).allowed);
    }
}
