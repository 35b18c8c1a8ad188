//! Authorization: the one path every permission check takes ([`App::require`]), and the check API that
//! applications ask (`POST /v1/authz/check`). Deny by default; the decision itself is the pure
//! [`portcullis_domain::decide`].
//!
//! A principal's grants come from its account's role, read through the per-node profile cache (2 s):
//! a change made on this node drops the cached entry at once, one made on another node shows within
//! that time, as revocations do.

use std::sync::Arc;

use portcullis_domain::{BuiltinRole, CustomRole, Decision, Grant, Permission, Resource, UserId, decide};

use crate::{App, AppError, Principal, Profile};

/// The grants of each built-in role, computed once.
#[derive(Debug)]
pub(crate) struct RoleGrants([Arc<[Grant]>; 4]);

impl Default for RoleGrants {
    fn default() -> Self {
        Self(BuiltinRole::ALL.map(|role| Arc::from(role.grants())))
    }
}

impl RoleGrants {
    pub(crate) fn of(&self, role: BuiltinRole) -> Arc<[Grant]> {
        let index = BuiltinRole::ALL.iter().position(|r| *r == role).unwrap_or(BuiltinRole::ALL.len() - 1);
        self.0.get(index).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }
}

/// One question for the check API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// The permission asked about (`resource:action`, no wildcards).
    pub permission: String,
    /// The owner of the resource asked about, if it has one.
    pub owner: Option<UserId>,
    /// The organization the resource belongs to, if any.
    pub organization: Option<portcullis_domain::OrganizationId>,
    /// Whom to decide for; the caller itself when `None`. Asking about someone else needs
    /// `authz:check`.
    pub subject: Option<UserId>,
}

/// Most checks in one batch.
pub const MAX_CHECK_BATCH: usize = 100;

impl App {
    /// The caller's grants: its account's (a person's or a service account's), narrowed to a key's
    /// scopes when it came with an API key.
    pub(crate) async fn grants_of(&self, principal: &Principal) -> Result<Arc<[Grant]>, AppError> {
        let owner = self.owner_grants(principal).await?;
        match principal.credential {
            crate::Credential::ApiKey(id) => self.key_grants(&id, &owner).await,
            crate::Credential::Bearer(_) | crate::Credential::Cookie(_) => Ok(owner),
        }
    }

    /// A person's grants, resolved once per profile read and served from the profile cache.
    pub(crate) async fn person_grants(&self, principal: &Principal) -> Result<Arc<[Grant]>, AppError> {
        match self.inner.profiles.grants(principal.user_id, self.now()) {
            Some((portcullis_domain::UserStatus::Active, grants)) => Ok(grants),
            Some(_) => Err(AppError::Unauthenticated),
            None => {
                let profile = self.profile(principal).await?;
                Ok(self.grants_for(&profile))
            }
        }
    }

    /// The grants of an account: its system-wide role's grants, each membership's built-in role's
    /// grants narrowed to its organization, and the grants of the custom roles it holds (each already
    /// narrowed to its organization).
    pub(crate) fn grants_for(&self, profile: &Profile) -> Arc<[Grant]> {
        let system = self.inner.role_grants.of(profile.role);
        if profile.organizations.is_empty() && profile.custom_roles.is_empty() {
            return system;
        }
        let mut grants: Vec<Grant> = system.to_vec();
        let from_memberships =
            profile.organizations.iter().flat_map(|(organization, role)| role.grants_in(*organization));
        let from_custom = profile.custom_roles.iter().flat_map(CustomRole::grants);
        for grant in from_memberships.chain(from_custom) {
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        Arc::from(grants)
    }

    /// Refuses unless the caller holds `permission` over `resource`: the one authorization path of
    /// every use case. `permission` is a constant of the caller (never user input).
    pub(crate) async fn require(
        &self,
        principal: &Principal,
        permission: &'static str,
        resource: Resource,
    ) -> Result<Arc<[Grant]>, AppError> {
        let wanted = Permission::parse_concrete(permission)
            .map_err(|_| AppError::Internal(format!("{permission:?} is not a permission").into()))?;
        let grants = self.grants_of(principal).await?;
        let decision = decide(&grants, principal.user_id, &wanted, &resource);
        if !decision.allowed {
            tracing::info!(user = %principal.user_id, permission, reason = %decision.reason, "authorization denied");
            return Err(AppError::Forbidden(format!("this needs the {permission} permission")));
        }
        self.step_up_for(principal, permission).await?;
        Ok(grants)
    }

    /// Changes (creating, writing, deleting) are sensitive: a person's session must have proven
    /// itself recently for them (ASVS 7.5.3; [`App::require_recent_auth`]). Reads are not.
    pub(crate) async fn step_up_for(&self, principal: &Principal, permission: &str) -> Result<(), AppError> {
        let action = permission.rsplit(':').next().unwrap_or_default();
        if matches!(action, "create" | "write" | "delete") {
            self.require_recent_auth(principal).await?;
        }
        Ok(())
    }

    /// Answers an application's question: may the caller (or, with `authz:check`, `subject`) do
    /// `permission` to a resource owned by `owner`? A subject that does not exist, or is not active,
    /// is denied, never an error that would reveal which accounts exist.
    pub async fn check(&self, principal: &Principal, request: &CheckRequest) -> Result<Decision, AppError> {
        Ok(self.check_batch(principal, std::slice::from_ref(request)).await?.remove(0))
    }

    /// Up to [`MAX_CHECK_BATCH`] questions in one call, answered in order.
    pub async fn check_batch(
        &self,
        principal: &Principal,
        requests: &[CheckRequest],
    ) -> Result<Vec<Decision>, AppError> {
        if requests.is_empty() || requests.len() > MAX_CHECK_BATCH {
            return Err(AppError::invalid("/checks", format!("must hold 1 to {MAX_CHECK_BATCH} checks")));
        }
        let mut wanted = Vec::with_capacity(requests.len());
        let mut issues = Vec::new();
        for (n, request) in requests.iter().enumerate() {
            match Permission::parse_concrete(&request.permission) {
                Ok(permission) => wanted.push(permission),
                Err(e) => issues.push(crate::FieldIssue::new(
                    if requests.len() == 1 { "/permission" } else { "/checks/permission" },
                    format!("check {}: {e}", n + 1),
                )),
            }
        }
        if !issues.is_empty() {
            return Err(AppError::Validation(issues));
        }
        if requests.iter().any(|r| r.subject.is_some_and(|s| s != principal.user_id)) {
            self.require(principal, "authz:check", Resource::default()).await?;
        }
        let own = self.grants_of(principal).await?;
        let mut decisions = Vec::with_capacity(requests.len());
        for (request, wanted) in requests.iter().zip(&wanted) {
            let subject = request.subject.unwrap_or(principal.user_id);
            let grants = if subject == principal.user_id {
                own.clone()
            } else {
                self.grants_of_subject(subject).await?
            };
            let resource = Resource { owner: request.owner, organization: request.organization };
            let decision = decide(&grants, subject, wanted, &resource);
            self.log_check(principal, subject, wanted, &decision);
            decisions.push(decision);
        }
        Ok(decisions)
    }

    /// Logs a check-API decision as one structured line (`event.kind` `authz.decision`): every
    /// denial, and one in `log_allowed_checks_one_in` allowed decisions (a counter, so the rate is
    /// exact). The audit trail (issue 8) will take these lines over.
    fn log_check(&self, principal: &Principal, subject: UserId, wanted: &Permission, decision: &Decision) {
        if decision.allowed {
            let one_in = u64::from(self.inner.settings.log_allowed_checks_one_in);
            let n = self.inner.allowed_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if one_in == 0 || !n.is_multiple_of(one_in) {
                return;
            }
        }
        tracing::info!(
            event.kind = "authz.decision",
            outcome = if decision.allowed { "allow" } else { "deny" },
            sampled = decision.allowed,
            caller = %principal.user_id,
            %subject,
            permission = %wanted,
            reason = %decision.reason,
            "authorization decision"
        );
    }

    /// The grants of another account, from the same sources as the caller's own (system role,
    /// memberships, custom roles; a service account's role in its organization): none unless it
    /// exists and is active.
    async fn grants_of_subject(&self, subject: UserId) -> Result<Arc<[Grant]>, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let profile = self.read_profile(tx.as_mut(), subject).await?;
        let account = match profile {
            Some(_) => None,
            None => match tx.service_account(subject).await? {
                Some(account) => {
                    let roles = tx.service_account_roles(account.id).await?;
                    Some((account, roles))
                }
                None => None,
            },
        };
        tx.rollback().await?;
        Ok(match (profile, account) {
            (Some(profile), _) if profile.status == portcullis_domain::UserStatus::Active => {
                self.grants_for(&profile)
            }
            (None, Some((account, roles))) if account.active => {
                let mut grants = account.role.grants_in(account.organization);
                grants.extend(roles.iter().flat_map(CustomRole::grants));
                Arc::from(grants)
            }
            _ => Arc::from(Vec::new()),
        })
    }
}
