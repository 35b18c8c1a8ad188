//! PostgreSQL implementation of custom roles and their holders.
//!
//! Every `ORDER BY` on text is `COLLATE "C"`: names and ids come back in byte order, as SQLite's
//! BINARY collation gives them, whatever the database's locale (under `en_US`, `a-z` sorts after
//! `ab` because the hyphen is ignored at the first level).

use async_trait::async_trait;
use portcullis_domain::{CustomRole, OrganizationId, Permission, RoleId, RoleName, Timestamp, UserId};
use portcullis_store::{RoleStore, StoreError};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;

use crate::{PostgresTx, corrupt};

/// A `roles` row as stored.
#[derive(sqlx::FromRow)]
struct RoleRow {
    id: String,
    organization_id: String,
    name: String,
    permissions: String,
    created_at: i64,
    updated_at: i64,
}

impl RoleRow {
    fn into_role(self) -> Result<CustomRole, StoreError> {
        Ok(CustomRole {
            id: RoleId::parse(&self.id).map_err(|_| corrupt("roles.id is not a uuid"))?,
            organization: OrganizationId::parse(&self.organization_id)
                .map_err(|_| corrupt("roles.organization_id is not a uuid"))?,
            name: RoleName::parse(&self.name).map_err(|_| corrupt("roles.name is not a role name"))?,
            permissions: self
                .permissions
                .split_whitespace()
                .map(|p| {
                    Permission::parse(p).map_err(|_| corrupt("roles.permissions holds a non-permission"))
                })
                .collect::<Result<_, _>>()?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            updated_at: Timestamp::from_unix_millis(self.updated_at),
        })
    }
}

/// The stored spelling of a role's permissions.
fn permissions_text(role: &CustomRole) -> String {
    role.permissions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// A query selecting `roles` rows (as `r`), with its parameters already bound.
type RoleQuery<'q> = QueryAs<'q, Postgres, RoleRow, PgArguments>;

impl PostgresTx {
    /// Runs a query selecting whole `roles` rows and parses them, in the order the query gives.
    async fn fetch_roles(&mut self, query: RoleQuery<'_>) -> Result<Vec<CustomRole>, StoreError> {
        let rows = match query.fetch_all(&mut *self.tx).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(RoleRow::into_role).collect()
    }
}

#[async_trait]
impl RoleStore for PostgresTx {
    async fn insert_role(&mut self, role: &CustomRole) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO roles (id, organization_id, name, permissions, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(role.id.to_string())
        .bind(role.organization.to_string())
        .bind(role.name.as_str())
        .bind(permissions_text(role))
        .bind(role.created_at.as_unix_millis())
        .bind(role.updated_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            // A taken name or id, or a missing organization (the foreign key).
            Err(e) => Err(self.write_conflict(e, "role")),
        }
    }

    async fn role(
        &mut self,
        organization: OrganizationId,
        id: RoleId,
    ) -> Result<Option<CustomRole>, StoreError> {
        let query = sqlx::query_as(
            "SELECT r.id, r.organization_id, r.name, r.permissions, r.created_at, r.updated_at \
             FROM roles r WHERE r.organization_id = $1 AND r.id = $2",
        )
        .bind(organization.to_string())
        .bind(id.to_string());
        Ok(self.fetch_roles(query).await?.pop())
    }

    async fn roles_in(&mut self, organization: OrganizationId) -> Result<Vec<CustomRole>, StoreError> {
        let query = sqlx::query_as(
            "SELECT r.id, r.organization_id, r.name, r.permissions, r.created_at, r.updated_at \
             FROM roles r WHERE r.organization_id = $1 ORDER BY r.name COLLATE \"C\"",
        )
        .bind(organization.to_string());
        self.fetch_roles(query).await
    }

    async fn update_role(&mut self, role: &CustomRole) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE roles SET name = $3, permissions = $4, updated_at = $5 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(role.organization.to_string())
        .bind(role.id.to_string())
        .bind(role.name.as_str())
        .bind(permissions_text(role))
        .bind(role.updated_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.write_conflict(e, "role")),
        }
    }

    async fn delete_role(&mut self, organization: OrganizationId, id: RoleId) -> Result<bool, StoreError> {
        // The holdings go with it (ON DELETE CASCADE in the migration).
        let result = sqlx::query("DELETE FROM roles WHERE organization_id = $1 AND id = $2")
            .bind(organization.to_string())
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn role_holders(
        &mut self,
        organization: OrganizationId,
        id: RoleId,
        limit: u32,
    ) -> Result<Vec<UserId>, StoreError> {
        let result: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT holder FROM (\
                 SELECT user_id AS holder FROM membership_roles WHERE organization_id = $1 AND role_id = $2 \
                 UNION SELECT service_account_id FROM service_account_roles \
                 WHERE organization_id = $1 AND role_id = $2) h \
             ORDER BY holder COLLATE \"C\" LIMIT $3",
        )
        .bind(organization.to_string())
        .bind(id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await;
        match result {
            Ok(ids) => ids
                .iter()
                .map(|id| UserId::parse(id).map_err(|_| corrupt("membership_roles.user_id is not a uuid")))
                .collect(),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn set_member_roles(
        &mut self,
        organization: OrganizationId,
        user: UserId,
        roles: &[RoleId],
    ) -> Result<(), StoreError> {
        let cleared = sqlx::query("DELETE FROM membership_roles WHERE organization_id = $1 AND user_id = $2")
            .bind(organization.to_string())
            .bind(user.to_string())
            .execute(&mut *self.tx)
            .await;
        if let Err(e) = cleared {
            return Err(self.fail(e));
        }
        for role in roles {
            // DO NOTHING absorbs a role listed twice; it does not cover a foreign-key violation.
            let result = sqlx::query(
                "INSERT INTO membership_roles (organization_id, user_id, role_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(organization.to_string())
            .bind(user.to_string())
            .bind(role.to_string())
            .execute(&mut *self.tx)
            .await;
            if let Err(e) = result {
                // Not a member, or the role is missing or another organization's.
                return Err(self.write_conflict(e, "membership"));
            }
        }
        Ok(())
    }

    async fn member_roles(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Vec<CustomRole>, StoreError> {
        let query = sqlx::query_as(
            "SELECT r.id, r.organization_id, r.name, r.permissions, r.created_at, r.updated_at \
             FROM membership_roles h \
             JOIN roles r ON r.id = h.role_id AND r.organization_id = h.organization_id \
             WHERE h.organization_id = $1 AND h.user_id = $2 ORDER BY r.name COLLATE \"C\"",
        )
        .bind(organization.to_string())
        .bind(user.to_string());
        self.fetch_roles(query).await
    }

    async fn roles_of(&mut self, user: UserId) -> Result<Vec<CustomRole>, StoreError> {
        let query = sqlx::query_as(
            "SELECT r.id, r.organization_id, r.name, r.permissions, r.created_at, r.updated_at \
             FROM membership_roles h \
             JOIN roles r ON r.id = h.role_id AND r.organization_id = h.organization_id \
             WHERE h.user_id = $1 ORDER BY r.organization_id COLLATE \"C\", r.name COLLATE \"C\"",
        )
        .bind(user.to_string());
        self.fetch_roles(query).await
    }

    async fn set_service_account_roles(
        &mut self,
        organization: OrganizationId,
        account: UserId,
        roles: &[RoleId],
    ) -> Result<(), StoreError> {
        let cleared = sqlx::query("DELETE FROM service_account_roles WHERE service_account_id = $1")
            .bind(account.to_string())
            .execute(&mut *self.tx)
            .await;
        if let Err(e) = cleared {
            return Err(self.fail(e));
        }
        for role in roles {
            let result = sqlx::query(
                "INSERT INTO service_account_roles (service_account_id, organization_id, role_id) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(account.to_string())
            .bind(organization.to_string())
            .bind(role.to_string())
            .execute(&mut *self.tx)
            .await;
            if let Err(e) = result {
                return Err(self.write_conflict(e, "service_account"));
            }
        }
        Ok(())
    }

    async fn service_account_roles(&mut self, account: UserId) -> Result<Vec<CustomRole>, StoreError> {
        let query = sqlx::query_as(
            "SELECT r.id, r.organization_id, r.name, r.permissions, r.created_at, r.updated_at \
             FROM service_account_roles h \
             JOIN roles r ON r.id = h.role_id AND r.organization_id = h.organization_id \
             WHERE h.service_account_id = $1 ORDER BY r.name COLLATE \"C\"",
        )
        .bind(account.to_string());
        self.fetch_roles(query).await
    }
}
