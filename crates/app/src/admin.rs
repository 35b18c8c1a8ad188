//! Administration of accounts (`/v1/admin/users…`): list, read, create, change role, disable, enable,
//! unlock, delete, and end every session of an account. Each use case states its permission first.
//!
//! Guard rails: nobody hands out or takes away more than they hold (an admin can neither make nor
//! touch an owner), nobody disables, demotes or deletes themselves, and the last active owner can be
//! none of disabled, demoted or deleted. A disabled or locked account's sessions end at once.

use portcullis_domain::{
    BuiltinRole, Resource, RevokeReason, Timestamp, User, UserId, UserStatus, holds_all,
};
use secrecy::SecretString;

use crate::sessions::revoke_sessions_in;
use crate::{App, AppError, Principal};

/// Largest page of the user list.
pub const MAX_PAGE: u32 = 200;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;

/// An account as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    pub id: UserId,
    pub email: String,
    pub email_verified: bool,
    pub display_name: Option<String>,
    pub status: UserStatus,
    pub role: BuiltinRole,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_login_at: Option<Timestamp>,
}

impl From<User> for AdminUser {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email.as_str().to_owned(),
            email_verified: user.email_verified_at.is_some(),
            display_name: user.display_name.map(|n| n.as_str().to_owned()),
            status: user.status,
            role: user.role,
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// One page of accounts and the cursor of the next, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<AdminUser>,
    pub next: Option<String>,
}

/// An account write under way: the locked transaction, its time, the caller's current grants and the
/// target account.
struct AccountWrite {
    tx: Box<dyn portcullis_store::StoreTx>,
    now: Timestamp,
    grants: std::sync::Arc<[portcullis_domain::Grant]>,
    user: User,
}

/// A status change an administrator can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Disable,
    Enable,
    Unlock,
}

impl App {
    /// Lists accounts, in id order, a page at a time. Needs `users:read`.
    pub async fn admin_list_users(
        &self,
        principal: &Principal,
        after: Option<&str>,
        status: Option<&str>,
        limit: Option<u32>,
    ) -> Result<UserPage, AppError> {
        self.require(principal, "users:read", Resource::default()).await?;
        let after = after
            .map(|cursor| {
                UserId::parse(cursor)
                    .map_err(|_| AppError::invalid("/after", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let status = status
            .map(|s| {
                UserStatus::parse(s)
                    .ok_or_else(|| AppError::invalid("/status", "must be active, locked or disabled"))
            })
            .transpose()?;
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AppError::invalid("/limit", format!("must be 1 to {MAX_PAGE}")));
        }
        let mut tx = self.inner.store.begin_read().await?;
        // One more than asked for tells whether another page exists.
        let stored = tx.list_users(after, status, limit + 1).await?;
        let mut users = Vec::with_capacity(stored.len());
        for row in stored {
            users.push(self.open_user(tx.as_mut(), row).await?.into());
        }
        tx.rollback().await?;
        let next = (users.len() > limit as usize).then(|| {
            users.truncate(limit as usize);
            users.last().map(|u: &AdminUser| u.id.to_string())
        });
        Ok(UserPage { users, next: next.flatten() })
    }

    /// One account. Needs `users:read` over it; an unknown or malformed id is [`AppError::NotFound`].
    pub async fn admin_get_user(&self, principal: &Principal, id: &str) -> Result<AdminUser, AppError> {
        let id = UserId::parse(id).map_err(|_| AppError::NotFound)?;
        self.require(principal, "users:read", Resource { owner: Some(id), organization: None }).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), id).await?;
        tx.rollback().await?;
        user.map(AdminUser::from).ok_or(AppError::NotFound)
    }

    /// Creates an account with a password the administrator sets (its address counts as verified).
    /// Needs `users:create`, and every grant of `role`, both checked again on the caller's current
    /// account under the accounts lock.
    pub async fn admin_create_user(
        &self,
        principal: &Principal,
        email: &str,
        display_name: Option<&str>,
        password: SecretString,
        role: BuiltinRole,
    ) -> Result<AdminUser, AppError> {
        // An account with a password is a new credential: minted only by a person who logged in,
        // never by an API key (which would otherwise outlive its own revocation through it).
        principal.require_session()?;
        let grants = self.require(principal, "users:create", Resource::default()).await?;
        self.may_hand_out(&grants, role)?;
        let account = self.validate_new_account(email, display_name, &password)?;
        let hash = self.inner.hasher.hash(account.password.clone()).await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "users:create", Resource::default()).await?;
        self.may_hand_out(&grants, role)?;
        let now = self.now();
        let user = self.new_operator_account(account, role, now)?;
        self.insert_account(tx.as_mut(), &user, &hash, now).await?;
        tx.commit().await?;
        tracing::info!(admin = %principal.user_id, user = %user.id, role = role.as_str(), "account created");
        Ok(user.into())
    }

    /// Gives an account another built-in role. Needs `users:write`, and every grant of both the old
    /// and the new role; the last active owner keeps the role.
    pub async fn admin_set_role(
        &self,
        principal: &Principal,
        id: &str,
        role: BuiltinRole,
    ) -> Result<AdminUser, AppError> {
        let AccountWrite { mut tx, now, grants, user } =
            self.begin_account_write(principal, id, "users:write", "nobody changes their own role").await?;
        let id = user.id;
        for touched in [user.role, role] {
            if !holds_all(&grants, &self.inner.role_grants.of(touched)) {
                return Err(AppError::Forbidden(format!(
                    "only someone holding every permission of {} can give or take it",
                    touched.as_str()
                )));
            }
        }
        if user.role == BuiltinRole::Owner && role != BuiltinRole::Owner {
            self.keep_an_owner(tx.as_mut(), &user).await?;
        }
        tx.set_user_role(id, role, now).await?;
        tx.commit().await?;
        self.inner.profiles.forget(id);
        tracing::info!(admin = %principal.user_id, user = %id, role = role.as_str(), "role changed");
        Ok(AdminUser { role, updated_at: now, ..user.into() })
    }

    /// Disables, enables or unlocks an account. Needs `users:write` over it, and every grant of its
    /// role. Disabling ends every session of the account at once; the last active owner cannot be
    /// disabled, and nobody disables themselves.
    pub async fn admin_set_status(
        &self,
        principal: &Principal,
        id: &str,
        change: StatusChange,
    ) -> Result<AdminUser, AppError> {
        let AccountWrite { mut tx, now, grants, user } = self
            .begin_account_write(
                principal,
                id,
                "users:write",
                "nobody changes the status of their own account",
            )
            .await?;
        let id = user.id;
        self.outranks(&grants, &user)?;
        let status = match (change, user.status) {
            (StatusChange::Disable, _) => UserStatus::Disabled,
            (StatusChange::Enable, UserStatus::Disabled) => UserStatus::Active,
            (StatusChange::Unlock, UserStatus::Locked) => UserStatus::Active,
            // Enabling an active or locked account, or unlocking one that is not locked, changes
            // nothing (a locked account is unlocked, not enabled, so the reason stays visible).
            (_, current) => current,
        };
        let mut revoked = Vec::new();
        if status != user.status {
            if user.role == BuiltinRole::Owner && status != UserStatus::Active {
                self.keep_an_owner(tx.as_mut(), &user).await?;
            }
            tx.set_user_status(id, status, now).await?;
            if status != UserStatus::Active {
                revoked = revoke_sessions_in(tx.as_mut(), id, None, RevokeReason::UserRevoked, now).await?;
            }
        }
        tx.commit().await?;
        self.forget_sessions(&revoked, now);
        self.inner.profiles.forget(id);
        tracing::info!(admin = %principal.user_id, user = %id, status = status.as_str(), "account status changed");
        Ok(AdminUser { status, updated_at: now, ..user.into() })
    }

    /// Deletes an account with its credentials and sessions. Needs `users:delete` over it, and every
    /// grant of its role; the last active owner cannot be deleted, and nobody deletes themselves.
    pub async fn admin_delete_user(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        let AccountWrite { mut tx, now, grants, user } = self
            .begin_account_write(principal, id, "users:delete", "nobody deletes their own account here")
            .await?;
        let id = user.id;
        self.outranks(&grants, &user)?;
        if user.role == BuiltinRole::Owner {
            self.keep_an_owner(tx.as_mut(), &user).await?;
        }
        let revoked = revoke_sessions_in(tx.as_mut(), id, None, RevokeReason::UserRevoked, now).await?;
        tx.delete_user(id, now).await?;
        tx.commit().await?;
        self.forget_sessions(&revoked, now);
        self.inner.profiles.forget(id);
        tracing::info!(admin = %principal.user_id, user = %id, "account deleted");
        Ok(())
    }

    /// Ends every session of an account. Needs `sessions:delete` over it.
    pub async fn admin_revoke_sessions(&self, principal: &Principal, id: &str) -> Result<u64, AppError> {
        let id = UserId::parse(id).map_err(|_| AppError::NotFound)?;
        if id == principal.user_id {
            // Ending one's own sessions is self-service, which needs a login session (as logout-all).
            principal.require_session()?;
        }
        let grants = self
            .require(principal, "sessions:delete", Resource { owner: Some(id), organization: None })
            .await?;
        let mut tx = self.inner.store.begin_read().await?;
        let user = self.load_user(tx.as_mut(), id).await?.ok_or(AppError::NotFound)?;
        tx.rollback().await?;
        if id != principal.user_id {
            self.outranks(&grants, &user)?;
        }
        self.revoke_all_sessions(id, None, RevokeReason::UserRevoked).await
    }

    /// The start of every write to another account: the cached permission check (cheap refusals
    /// first), no acting on oneself, then the accounts lock, the caller re-read under it, and the
    /// target account. An unknown or malformed id is [`AppError::NotFound`].
    async fn begin_account_write(
        &self,
        principal: &Principal,
        id: &str,
        permission: &'static str,
        on_oneself: &'static str,
    ) -> Result<AccountWrite, AppError> {
        let id = UserId::parse(id).map_err(|_| AppError::NotFound)?;
        let resource = Resource { owner: Some(id), organization: None };
        self.require(principal, permission, resource).await?;
        if id == principal.user_id {
            return Err(AppError::Forbidden(on_oneself.into()));
        }
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let now = self.now();
        let grants = self.caller_under_lock(tx.as_mut(), principal, permission, resource).await?;
        let user = self.load_user(tx.as_mut(), id).await?.ok_or(AppError::NotFound)?;
        Ok(AccountWrite { tx, now, grants, user })
    }

    /// The caller as it is now, read inside the write transaction after the accounts lock: still
    /// active, and its current role still granting `permission` over `resource`. `require` answered
    /// from a cache up to 2 s old; a just-demoted or just-disabled administrator must not act on it
    /// (for example promote a stand-in owner before its own demotion shows).
    pub(crate) async fn caller_under_lock(
        &self,
        tx: &mut dyn portcullis_store::StoreTx,
        principal: &Principal,
        permission: &'static str,
        resource: Resource,
    ) -> Result<std::sync::Arc<[portcullis_domain::Grant]>, AppError> {
        let grants = self.grants_in_tx(tx, principal).await?;
        let wanted = portcullis_domain::Permission::parse_concrete(permission)
            .map_err(|_| AppError::Internal(format!("{permission:?} is not a permission").into()))?;
        if !portcullis_domain::decide(&grants, principal.user_id, &wanted, &resource).allowed {
            return Err(AppError::Forbidden(format!("this needs the {permission} permission")));
        }
        Ok(grants)
    }

    /// Refuses unless `grants` cover every grant of `role`: nobody hands out more than they hold.
    fn may_hand_out(&self, grants: &[portcullis_domain::Grant], role: BuiltinRole) -> Result<(), AppError> {
        if holds_all(grants, &self.inner.role_grants.of(role)) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "only someone holding every permission of {} can make one",
                role.as_str()
            )))
        }
    }

    /// Refuses unless `grants` cover every grant of `user`'s role: an admin cannot act on an owner.
    fn outranks(&self, grants: &[portcullis_domain::Grant], user: &User) -> Result<(), AppError> {
        if holds_all(grants, &self.inner.role_grants.of(user.role)) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "only someone holding every permission of {} can change such an account",
                user.role.as_str()
            )))
        }
    }

    /// Refuses when `user` is the last active owner (called under the accounts lock).
    async fn keep_an_owner(
        &self,
        tx: &mut dyn portcullis_store::StoreTx,
        user: &User,
    ) -> Result<(), AppError> {
        if user.status == UserStatus::Active && tx.count_active_with_role(BuiltinRole::Owner).await? <= 1 {
            return Err(AppError::Forbidden(
                "this is the last active owner; make another owner first".into(),
            ));
        }
        Ok(())
    }
}
