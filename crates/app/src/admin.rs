//! Administration of accounts (`/v1/admin/users…`): list, read, create, change role, disable, enable,
//! unlock, delete, and end every session of an account. Each use case states its permission first.
//!
//! Guard rails: nobody hands out or takes away more than they hold (an admin can neither make nor
//! touch an owner), nobody disables, demotes or deletes themselves, and the last active owner can be
//! none of disabled, demoted or deleted. A disabled or locked account's sessions end at once.

use std::collections::BTreeMap;

use portcullis_domain::{
    BuiltinRole, DisplayName, Email, Resource, RevokeReason, SecurityEventKind, Timestamp, User, UserId,
    UserStatus, holds_all,
};
use secrecy::SecretString;

use crate::audit::AuditEntry;
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

/// A change to an account's details; `None` leaves a field as it is (`Some(None)` clears the name).
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub email: Option<String>,
    pub display_name: Option<Option<String>>,
}

/// Accounts one list request examines at most when it filters by address (which it must open).
pub const USER_SCAN_BUDGET: usize = 5_000;
const SCAN_BATCH: u32 = 500;

/// What to list: every field optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserQuery<'a> {
    /// The `next` cursor of the previous page.
    pub after: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Only members of this organization.
    pub organization: Option<&'a str>,
    /// Only addresses starting with this, compared case-insensitively.
    pub email_prefix: Option<&'a str>,
    /// `id` (the default: a stable order that reveals nothing), `created` (oldest first) or
    /// `-created` (newest first).
    pub sort: Option<&'a str>,
    pub limit: Option<u32>,
}

/// The order of a user list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Id,
    Created { newest_first: bool },
}

/// Where a page starts: after this account, in the list's order.
fn parse_cursor(order: Order, text: &str) -> Option<(Timestamp, UserId)> {
    match order {
        Order::Id => UserId::parse(text).ok().map(|id| (Timestamp::from_unix_millis(0), id)),
        Order::Created { .. } => {
            let (millis, id) = text.split_once('_')?;
            Some((Timestamp::from_unix_millis(millis.parse().ok()?), UserId::parse(id).ok()?))
        }
    }
}

fn cursor_of(order: Order, user: &User) -> String {
    match order {
        Order::Id => user.id.to_string(),
        Order::Created { .. } => format!("{}_{}", user.created_at.as_unix_millis(), user.id),
    }
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
    /// Changes another account's address or display name. Needs `users:write` over it and every grant
    /// of its role (an admin cannot edit an owner), re-checked under the accounts lock; people change
    /// their own details themselves. A new address is unverified until its owner follows the link
    /// sent there (so a mistyped address cannot log in where verification is required), and the old
    /// address is told of the change.
    pub async fn admin_update_user(
        &self,
        principal: &Principal,
        id: &str,
        change: &UserChange,
    ) -> Result<AdminUser, AppError> {
        let mut issues = Vec::new();
        let email = change
            .email
            .as_deref()
            .map(Email::parse)
            .transpose()
            .map_err(|e| issues.push(crate::FieldIssue::new("/email", e)))
            .ok()
            .flatten();
        let name = match &change.display_name {
            Some(Some(text)) => match DisplayName::parse(text) {
                Ok(name) => Some(Some(name)),
                Err(e) => {
                    issues.push(crate::FieldIssue::new("/display_name", e));
                    None
                }
            },
            Some(None) => Some(None),
            None => None,
        };
        if !issues.is_empty() {
            return Err(AppError::Validation(issues));
        }
        let AccountWrite { mut tx, now, grants, user } = self
            .begin_account_write(principal, id, "users:write", "change your own details through /v1/me")
            .await?;
        self.outranks(&grants, &user)?;
        let moved = email.as_ref().is_some_and(|e| e.key() != user.email.key());
        if moved && let Some(new) = &email {
            if self.blind_index_in_rotation(tx.as_mut()).await? {
                self.install_keys_from(tx.as_mut()).await?;
            }
            if self.find_user_by_email(tx.as_mut(), new).await?.is_some() {
                return Err(AppError::invalid("/email", "an account with this address already exists"));
            }
        }
        let updated = User {
            email: email.unwrap_or_else(|| user.email.clone()),
            display_name: name.unwrap_or_else(|| user.display_name.clone()),
            email_verified_at: if moved { None } else { user.email_verified_at },
            updated_at: now,
            ..user.clone()
        };
        if !self.update_user_details(tx.as_mut(), &updated).await? {
            return Err(AppError::NotFound);
        }
        // Which fields changed, never their values (addresses and names are personal data).
        let mut entries = Vec::new();
        if moved {
            entries.push(
                AuditEntry::by(principal, "user.email.changed")
                    .target("user", updated.id)
                    .detail("was_verified", user.email_verified_at.is_some()),
            );
        }
        let mut fields = Vec::new();
        if !moved && updated.email.as_str() != user.email.as_str() {
            fields.push("email");
        }
        if updated.display_name != user.display_name {
            fields.push("display_name");
        }
        if !fields.is_empty() {
            entries.push(
                AuditEntry::by(principal, "user.profile.updated")
                    .target("user", updated.id)
                    .detail("fields", fields),
            );
        }
        self.commit_audited(tx, entries).await?;
        self.inner.profiles.forget(updated.id);
        if moved {
            self.resend_verification(&updated).await?;
            self.send_later(crate::mail::OutgoingEmail {
                to: user.email.clone(),
                subject: "Your account's address was changed".into(),
                text: "An administrator changed the email address of your account; this address no longer \
                       receives its mail. If you did not expect this, contact your administrator.\n"
                    .into(),
            });
        }
        tracing::info!(admin = %principal.user_id, user = %updated.id, address_changed = moved, "account details changed");
        Ok(updated.into())
    }

    /// Lists accounts, in id order, a page at a time. Needs `users:read`.
    pub async fn admin_list_users(
        &self,
        principal: &Principal,
        after: Option<&str>,
        status: Option<&str>,
        limit: Option<u32>,
    ) -> Result<UserPage, AppError> {
        self.admin_search_users(principal, &UserQuery { after, status, limit, ..UserQuery::default() }).await
    }

    /// Lists accounts in id order, a page at a time, filtered by status, by membership of an
    /// organization, and by the start of the address. Needs `users:read` system-wide, or in the
    /// organization filtered by (an organization's administrator sees its members; another tenant's
    /// organization is not found).
    ///
    /// Addresses are encrypted at rest (ADR 0005), so the prefix filter opens them as it pages: one
    /// request examines at most [`USER_SCAN_BUDGET`] accounts, and a page may then hold fewer than
    /// `limit` matches with a `next` cursor to continue from. The cost of a prefix search is linear
    /// in the accounts it passes, which is the price of not keeping addresses in clear.
    pub async fn admin_search_users(
        &self,
        principal: &Principal,
        query: &UserQuery<'_>,
    ) -> Result<UserPage, AppError> {
        let organization = match query.organization {
            Some(text) => {
                let org = portcullis_domain::OrganizationId::parse(text).map_err(|_| AppError::NotFound)?;
                let grants = self.grants_of(principal).await?;
                crate::organizations::check_in(&grants, principal, "users:read", org)?;
                Some(org)
            }
            None => {
                self.require(principal, "users:read", Resource::default()).await?;
                None
            }
        };
        let order = match query.sort {
            None | Some("id") => Order::Id,
            Some("created") => Order::Created { newest_first: false },
            Some("-created") => Order::Created { newest_first: true },
            Some(_) => return Err(AppError::invalid("/sort", "must be id, created or -created")),
        };
        if organization.is_some() && order != Order::Id {
            return Err(AppError::invalid("/sort", "an organization's members are listed in id order"));
        }
        let mut cursor = query
            .after
            .map(|text| {
                parse_cursor(order, text)
                    .ok_or_else(|| AppError::invalid("/after", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let status = query
            .status
            .map(|s| {
                UserStatus::parse(s)
                    .ok_or_else(|| AppError::invalid("/status", "must be active, locked or disabled"))
            })
            .transpose()?;
        let prefix = query
            .email_prefix
            .map(|p| {
                let ok = (1..=254).contains(&p.chars().count()) && !p.chars().any(char::is_control);
                ok.then(|| p.to_lowercase()).ok_or_else(|| {
                    AppError::invalid("/email_prefix", "must be 1 to 254 characters, no control characters")
                })
            })
            .transpose()?;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AppError::invalid("/limit", format!("must be 1 to {MAX_PAGE}")));
        }
        let mut tx = self.inner.store.begin_read().await?;
        let mut users: Vec<(AdminUser, String)> = Vec::new();
        let mut examined = 0usize;
        // One more match than asked for tells whether another page exists.
        let wanted = limit as usize + 1;
        let batch = if prefix.is_some() { SCAN_BATCH } else { limit + 1 };
        let mut exhausted = false;
        while users.len() < wanted && examined < USER_SCAN_BUDGET {
            let rows = match (organization, order) {
                (Some(org), _) => {
                    let mut rows = Vec::new();
                    for (id, _) in tx.members_of(org, cursor.map(|(_, id)| id), batch).await? {
                        if let Some(user) = self.load_user(tx.as_mut(), id).await? {
                            rows.push(user);
                        }
                    }
                    rows
                }
                (None, Order::Id) => {
                    let stored = tx.list_users(cursor.map(|(_, id)| id), status, batch).await?;
                    let mut rows = Vec::with_capacity(stored.len());
                    for row in stored {
                        rows.push(self.open_user(tx.as_mut(), row).await?);
                    }
                    rows
                }
                (None, Order::Created { newest_first }) => {
                    let stored = tx.list_users_by_creation(cursor, newest_first, status, batch).await?;
                    let mut rows = Vec::with_capacity(stored.len());
                    for row in stored {
                        rows.push(self.open_user(tx.as_mut(), row).await?);
                    }
                    rows
                }
            };
            exhausted = rows.len() < batch as usize;
            for user in rows {
                examined += 1;
                cursor = Some((user.created_at, user.id));
                let status_ok = status.is_none_or(|s| user.status == s);
                let prefix_ok =
                    prefix.as_deref().is_none_or(|p| user.email.as_str().to_lowercase().starts_with(p));
                if status_ok && prefix_ok {
                    let at = cursor_of(order, &user);
                    users.push((user.into(), at));
                    if users.len() == wanted {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        tx.rollback().await?;
        let next = if users.len() == wanted {
            users.truncate(limit as usize);
            users.last().map(|(_, at)| at.clone())
        } else if exhausted {
            None
        } else {
            // The scan budget ran out before the page filled: continue after the last account seen.
            cursor.map(|(created_at, id)| match order {
                Order::Id => id.to_string(),
                Order::Created { .. } => format!("{}_{id}", created_at.as_unix_millis()),
            })
        };
        Ok(UserPage { users: users.into_iter().map(|(user, _)| user).collect(), next })
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
        let created =
            AuditEntry::by(principal, "user.created").target("user", user.id).detail("role", role.as_str());
        self.commit_audited(tx, [created]).await?;
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
        let changed = (user.role != role).then(|| {
            AuditEntry::by(principal, "user.role.changed")
                .target("user", id)
                .detail("from", user.role.as_str())
                .detail("to", role.as_str())
        });
        self.commit_audited(tx, changed).await?;
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
        // Unlocking also ends an automatic lockout of the account's address (recorded as a security
        // event), whether or not the account itself was on hold.
        let lockout_cleared =
            change == StatusChange::Unlock && self.clear_lockout_in(tx.as_mut(), &user.email).await?;
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
        let mut entries = Vec::new();
        if status != user.status {
            entries.push(
                AuditEntry::by(principal, "user.status.changed")
                    .target("user", id)
                    .detail("from", user.status.as_str())
                    .detail("to", status.as_str())
                    .detail("revoked_sessions", revoked.len()),
            );
        }
        if lockout_cleared {
            entries.push(AuditEntry::by(principal, "user.lockout.cleared").target("user", id));
        }
        self.commit_audited(tx, entries).await?;
        self.forget_sessions(&revoked, now);
        self.inner.profiles.forget(id);
        if lockout_cleared {
            let details = BTreeMap::from([("by".to_owned(), principal.user_id.to_string())]);
            self.record_security_event_with(SecurityEventKind::LockoutCleared, Some(id), None, None, details)
                .await?;
        }
        tracing::info!(admin = %principal.user_id, user = %id, status = status.as_str(), "account status changed");
        Ok(AdminUser { status, updated_at: now, ..user.into() })
    }

    /// Erases an account: deletes it with everything kept about the person (see
    /// [`App::erase_own_account`]). Needs `users:delete` over it, and every grant of its role; the
    /// last active owner cannot be deleted, and nobody deletes themselves here (`DELETE /v1/me`).
    pub async fn admin_delete_user(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        let AccountWrite { mut tx, grants, user, .. } = self
            .begin_account_write(principal, id, "users:delete", "nobody deletes their own account here")
            .await?;
        let id = user.id;
        self.outranks(&grants, &user)?;
        if user.role == BuiltinRole::Owner {
            self.keep_an_owner(tx.as_mut(), &user).await?;
        }
        let deleted =
            AuditEntry::by(principal, "user.deleted").target("user", id).detail("role", user.role.as_str());
        self.erase_in(tx, &id, &user.email, deleted).await?;
        tracing::info!(admin = %principal.user_id, user = %id, "account erased");
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
        let entry = AuditEntry::by(principal, "session.revoked_all");
        self.revoke_all_sessions(id, None, RevokeReason::UserRevoked, entry).await
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
    pub(crate) fn outranks(&self, grants: &[portcullis_domain::Grant], user: &User) -> Result<(), AppError> {
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
    pub(crate) async fn keep_an_owner(
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
