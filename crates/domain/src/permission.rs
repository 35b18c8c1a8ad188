//! Permissions: `resource:action` strings granted at a scope, the built-in roles' grants, and the one
//! pure decision every caller (JSON API, CLI, check API) goes through. Deny by default: a permission
//! is allowed only by a grant that names it (or a wildcard over it) at a scope that covers the
//! resource.

use std::fmt;

use crate::{BuiltinRole, OrganizationId, UserId};

/// Longest permission string accepted (`resource:action`).
pub const MAX_PERMISSION_LEN: usize = 64;

/// One side of a permission: a name, or `*` (only in grants).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Any,
    Name(String),
}

impl Part {
    fn parse(text: &str) -> Option<Part> {
        if text == "*" {
            return Some(Part::Any);
        }
        let ok = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && text.as_bytes()[0].is_ascii_lowercase();
        ok.then(|| Part::Name(text.to_owned()))
    }

    fn covers(&self, wanted: &Part) -> bool {
        match (self, wanted) {
            (Part::Any, _) => true,
            (Part::Name(granted), Part::Name(wanted)) => granted == wanted,
            // A wanted wildcard is never asked for (see `Permission::parse_concrete`).
            (Part::Name(_), Part::Any) => false,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Any => f.write_str("*"),
            Part::Name(name) => f.write_str(name),
        }
    }
}

/// Text that is not a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPermission {
    #[error("must be resource:action, each lowercase letters, digits, _ or -, starting with a letter")]
    Shape,
    #[error("a permission asked for must name a resource and an action, not a wildcard")]
    Wildcard,
}

/// `resource:action`, where a grant may use `*` for either side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    resource: Part,
    action: Part,
}

impl Permission {
    /// Parses a permission as granted (wildcards allowed).
    pub fn parse(text: &str) -> Result<Self, InvalidPermission> {
        if text.len() > MAX_PERMISSION_LEN {
            return Err(InvalidPermission::Shape);
        }
        let (resource, action) = text.split_once(':').ok_or(InvalidPermission::Shape)?;
        Ok(Self {
            resource: Part::parse(resource).ok_or(InvalidPermission::Shape)?,
            action: Part::parse(action).ok_or(InvalidPermission::Shape)?,
        })
    }

    /// Parses a permission as asked for: no wildcards, so asking for `users:*` cannot be satisfied by
    /// a grant of `users:read` by accident of matching.
    pub fn parse_concrete(text: &str) -> Result<Self, InvalidPermission> {
        let permission = Self::parse(text)?;
        if permission.resource == Part::Any || permission.action == Part::Any {
            return Err(InvalidPermission::Wildcard);
        }
        Ok(permission)
    }

    /// Whether holding `self` gives `wanted`.
    pub fn implies(&self, wanted: &Permission) -> bool {
        self.resource.covers(&wanted.resource) && self.action.covers(&wanted.action)
    }

    /// What both `self` and `other` give: the narrower of the two where one is a wildcard over the
    /// other, `None` where they share nothing (`users:*` and `*:read` meet in `users:read`).
    pub fn meet(&self, other: &Permission) -> Option<Permission> {
        fn part(a: &Part, b: &Part) -> Option<Part> {
            match (a, b) {
                (Part::Any, x) | (x, Part::Any) => Some(x.clone()),
                (Part::Name(x), Part::Name(y)) => (x == y).then(|| Part::Name(x.clone())),
            }
        }
        Some(Permission {
            resource: part(&self.resource, &other.resource)?,
            action: part(&self.action, &other.action)?,
        })
    }

    /// A permission from trusted constant text; panics only on a typo in this crate.
    fn constant(text: &str) -> Self {
        match Self::parse(text) {
            Ok(permission) => permission,
            Err(_) => unreachable_permission(text),
        }
    }
}

#[allow(clippy::panic, reason = "only reached by a malformed constant in this file, which the tests catch")]
fn unreachable_permission(text: &str) -> Permission {
    panic!("built-in permission {text:?} does not parse")
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything this installation holds.
    System,
    /// Everything that belongs to one organization.
    Organization(OrganizationId),
    /// Only the principal's own resources (its account, sessions, keys).
    Own,
}

/// A permission held at a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub permission: Permission,
    pub scope: Scope,
}

/// What a decision is about: the organization it belongs to and its owner, where it has them. A
/// resource with neither is a collection or a system-wide thing, which only a system-scoped grant
/// covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resource {
    pub organization: Option<OrganizationId>,
    pub owner: Option<UserId>,
}

/// The outcome of a decision, with the reason an operator or application can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The one decision: allowed only if some grant's permission implies `wanted` and its scope covers
/// `resource` for `principal`.
pub fn decide(grants: &[Grant], principal: UserId, wanted: &Permission, resource: &Resource) -> Decision {
    for grant in grants {
        if !grant.permission.implies(wanted) {
            continue;
        }
        match grant.scope {
            Scope::System => {
                return Decision {
                    allowed: true,
                    reason: format!("granted by {} (system)", grant.permission),
                };
            }
            Scope::Organization(org) if resource.organization == Some(org) => {
                return Decision {
                    allowed: true,
                    reason: format!("granted by {} (organization {org})", grant.permission),
                };
            }
            Scope::Own if resource.owner == Some(principal) => {
                return Decision { allowed: true, reason: format!("granted by {} (own)", grant.permission) };
            }
            Scope::Organization(_) | Scope::Own => {}
        }
    }
    Decision { allowed: false, reason: format!("no grant of {wanted} covers this resource") }
}

/// Whether `holder` holds every grant in `granted`: nobody may hand out (through a role assignment or
/// a role edit) a permission they do not hold themselves, at a scope at least as wide.
pub fn holds_all(holder: &[Grant], granted: &[Grant]) -> bool {
    granted.iter().all(|wanted| {
        holder
            .iter()
            .any(|held| held.permission.implies(&wanted.permission) && covers(held.scope, wanted.scope))
    })
}

/// The grants of a credential limited to `scopes` (an API key's): each grant cut down to what it
/// shares with some scope, at the grant's own scope. So the result allows exactly what `grants`
/// allows and some scope names, and it follows `grants` as they change.
pub fn narrow(grants: &[Grant], scopes: &[Permission]) -> Vec<Grant> {
    let mut narrowed: Vec<Grant> = Vec::new();
    for grant in grants {
        for scope in scopes {
            if let Some(permission) = grant.permission.meet(scope) {
                let grant = Grant { permission, scope: grant.scope };
                if !narrowed.contains(&grant) {
                    narrowed.push(grant);
                }
            }
        }
    }
    narrowed
}

/// Whether a grant at `held` reaches at least as far as one at `wanted`.
fn covers(held: Scope, wanted: Scope) -> bool {
    match (held, wanted) {
        (Scope::System, _) | (_, Scope::Own) => true,
        (Scope::Organization(a), Scope::Organization(b)) => a == b,
        (Scope::Organization(_) | Scope::Own, Scope::System) | (Scope::Own, Scope::Organization(_)) => false,
    }
}

impl BuiltinRole {
    /// The grants of a built-in role held in one organization: its system-wide grants narrowed to that
    /// organization, its own-scoped grants as they are.
    pub fn grants_in(self, organization: OrganizationId) -> Vec<Grant> {
        self.grants()
            .into_iter()
            .map(|grant| match grant.scope {
                Scope::System => Grant { scope: Scope::Organization(organization), ..grant },
                Scope::Organization(_) | Scope::Own => grant,
            })
            .collect()
    }

    /// The grants of a built-in role. `owner` holds everything; `admin` manages accounts, sessions,
    /// invites and keys but not owners; `auditor` reads, including the audit trail and security
    /// events; `member` manages only its own account.
    pub fn grants(self) -> Vec<Grant> {
        let system = |list: &[&str]| -> Vec<Grant> {
            list.iter().map(|p| Grant { permission: Permission::constant(p), scope: Scope::System }).collect()
        };
        let own: Vec<Grant> = ["profile:*", "sessions:*", "apikeys:*", "mfa:*"]
            .iter()
            .map(|p| Grant { permission: Permission::constant(p), scope: Scope::Own })
            .collect();
        let mut grants = match self {
            BuiltinRole::Owner => system(&["*:*"]),
            BuiltinRole::Admin => system(&[
                "users:read",
                "users:write",
                "users:create",
                "users:delete",
                "sessions:*",
                "invites:*",
                "roles:read",
                "roles:write",
                "orgs:create",
                "orgs:read",
                "orgs:write",
                "memberships:*",
                "apikeys:*",
                "serviceaccounts:*",
                "tokens:introspect",
                "audit:read",
                "security:read",
                "iprules:read",
                "iprules:write",
                "keys:read",
                "authz:check",
            ]),
            BuiltinRole::Auditor => system(&[
                "users:read",
                "sessions:read",
                "roles:read",
                "orgs:read",
                "memberships:read",
                "apikeys:read",
                "serviceaccounts:read",
                "audit:read",
                "security:read",
                "iprules:read",
                "keys:read",
            ]),
            BuiltinRole::Member => Vec::new(),
        };
        grants.extend(own);
        grants
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(text: &str) -> Permission {
        Permission::parse(text).unwrap()
    }

    const ALICE: [u8; 16] = [1; 16];
    const BOB: [u8; 16] = [2; 16];

    #[test]
    fn permissions_parse_strictly_and_wildcards_are_only_for_grants() {
        for good in ["users:read", "apikeys:create", "a1_b-c:d", "*:*", "users:*", "*:read"] {
            assert_eq!(Permission::parse(good).unwrap().to_string(), good);
        }
        for bad in
            ["", ":", "users", "users:", ":read", "Users:read", "users:read:x", "users: read", "1x:read"]
        {
            assert_eq!(Permission::parse(bad), Err(InvalidPermission::Shape), "{bad:?}");
        }
        assert_eq!(Permission::parse(&format!("{}:read", "u".repeat(64))), Err(InvalidPermission::Shape));
        for wild in ["*:*", "users:*", "*:read"] {
            assert_eq!(Permission::parse_concrete(wild), Err(InvalidPermission::Wildcard));
        }
    }

    #[test]
    fn scopes_decide_whose_resources_a_grant_covers() {
        let (alice, bob) = (UserId::from_random_bytes(ALICE), UserId::from_random_bytes(BOB));
        let member = BuiltinRole::Member.grants();
        let wanted = Permission::parse_concrete("sessions:delete").unwrap();
        assert!(
            decide(&member, alice, &wanted, &Resource { owner: Some(alice), ..Resource::default() }).allowed
        );
        assert!(
            !decide(&member, alice, &wanted, &Resource { owner: Some(bob), ..Resource::default() }).allowed
        );
        assert!(!decide(&member, alice, &wanted, &Resource::default()).allowed, "a collection is not own");
        let admin = BuiltinRole::Admin.grants();
        assert!(
            decide(&admin, alice, &wanted, &Resource { owner: Some(bob), ..Resource::default() }).allowed
        );
        let denied = decide(&admin, alice, &p("orgs:delete"), &Resource::default());
        assert!(!denied.allowed && denied.reason.contains("orgs:delete"), "{denied:?}");
    }

    #[test]
    fn built_in_roles_nest_and_nobody_can_hand_out_more_than_they_hold() {
        let [owner, admin, auditor, member] = BuiltinRole::ALL.map(BuiltinRole::grants);
        assert!(holds_all(&owner, &admin) && holds_all(&owner, &auditor) && holds_all(&owner, &member));
        assert!(holds_all(&admin, &auditor) && holds_all(&admin, &member));
        assert!(!holds_all(&admin, &owner), "an admin cannot make an owner");
        assert!(!holds_all(&auditor, &admin) && !holds_all(&member, &auditor));
        // An own-scoped grant does not let its holder grant the same permission system-wide.
        let own_only = vec![Grant { permission: p("sessions:*"), scope: Scope::Own }];
        let system = vec![Grant { permission: p("sessions:read"), scope: Scope::System }];
        assert!(!holds_all(&own_only, &system));
    }

    #[test]
    fn an_organization_scoped_grant_covers_only_that_organizations_resources() {
        let alice = UserId::from_random_bytes(ALICE);
        let (acme, globex) =
            (OrganizationId::from_random_bytes([5; 16]), OrganizationId::from_random_bytes([6; 16]));
        let org_admin = BuiltinRole::Admin.grants_in(acme);
        let wanted = Permission::parse_concrete("memberships:write").unwrap();
        let at = |organization| Resource { organization: Some(organization), owner: None };
        assert!(decide(&org_admin, alice, &wanted, &at(acme)).allowed);
        assert!(!decide(&org_admin, alice, &wanted, &at(globex)).allowed);
        assert!(!decide(&org_admin, alice, &wanted, &Resource::default()).allowed, "not system-wide");
        // An organization's admin can hand out that organization's member or admin role, nothing wider.
        assert!(holds_all(&org_admin, &BuiltinRole::Member.grants_in(acme)));
        assert!(holds_all(&org_admin, &BuiltinRole::Admin.grants_in(acme)));
        assert!(!holds_all(&org_admin, &BuiltinRole::Auditor.grants_in(globex)), "another organization");
        assert!(!holds_all(&org_admin, &BuiltinRole::Owner.grants_in(acme)));
        assert!(
            !holds_all(&org_admin, &BuiltinRole::Auditor.grants()),
            "no system-wide grant from an org role"
        );
        assert!(holds_all(&BuiltinRole::Admin.grants(), &BuiltinRole::Admin.grants_in(globex)));
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), "[a-c]{1,2}"]
    }

    proptest! {
        #[test]
        fn a_grant_implies_exactly_what_its_parts_cover(gr in part(), ga in part(), wr in "[a-c]{1,2}", wa in "[a-c]{1,2}") {
            let granted = Permission::parse(&format!("{gr}:{ga}")).unwrap();
            let wanted = Permission::parse_concrete(&format!("{wr}:{wa}")).unwrap();
            let expected = (gr == "*" || gr == wr) && (ga == "*" || ga == wa);
            prop_assert_eq!(granted.implies(&wanted), expected);
            prop_assert!(Permission::parse("*:*").unwrap().implies(&wanted));
        }

        #[test]
        fn parsing_never_panics_and_round_trips(text in "\\PC{0,80}") {
            if let Ok(permission) = Permission::parse(&text) {
                prop_assert_eq!(permission.to_string(), text);
            }
        }

        #[test]
        fn a_decision_is_allowed_only_through_a_grant_that_implies_it(
            grants in proptest::collection::vec((part(), part(), any::<bool>()), 0..6),
            wr in "[a-c]{1,2}", wa in "[a-c]{1,2}", own in any::<bool>(),
        ) {
            let alice = UserId::from_random_bytes(ALICE);
            let grants: Vec<Grant> = grants.into_iter().map(|(r, a, system)| Grant {
                permission: Permission::parse(&format!("{r}:{a}")).unwrap(),
                scope: if system { Scope::System } else { Scope::Own },
            }).collect();
            let wanted = Permission::parse_concrete(&format!("{wr}:{wa}")).unwrap();
            let resource = Resource { owner: own.then_some(alice), organization: None };
            let expected = grants.iter().any(|g| g.permission.implies(&wanted) && (g.scope == Scope::System || own));
            prop_assert_eq!(decide(&grants, alice, &wanted, &resource).allowed, expected);
        }

        #[test]
        fn narrowed_grants_allow_what_the_grants_allow_and_a_scope_names(
            grants in proptest::collection::vec((part(), part(), any::<bool>()), 0..5),
            scopes in proptest::collection::vec((part(), part()), 0..4),
            wr in "[a-c]{1,2}", wa in "[a-c]{1,2}", own in any::<bool>(),
        ) {
            let alice = UserId::from_random_bytes(ALICE);
            let grants: Vec<Grant> = grants.into_iter().map(|(r, a, system)| Grant {
                permission: Permission::parse(&format!("{r}:{a}")).unwrap(),
                scope: if system { Scope::System } else { Scope::Own },
            }).collect();
            let scopes: Vec<Permission> =
                scopes.into_iter().map(|(r, a)| Permission::parse(&format!("{r}:{a}")).unwrap()).collect();
            let wanted = Permission::parse_concrete(&format!("{wr}:{wa}")).unwrap();
            let resource = Resource { owner: own.then_some(alice), organization: None };
            let expected = decide(&grants, alice, &wanted, &resource).allowed
                && scopes.iter().any(|s| s.implies(&wanted));
            prop_assert_eq!(decide(&narrow(&grants, &scopes), alice, &wanted, &resource).allowed, expected);
        }
    }
}
