//! SQLite implementation of organizations and memberships.

use async_trait::async_trait;
use portcullis_domain::{
    BuiltinRole, DisplayName, Organization, OrganizationId, OrganizationSlug, Timestamp, UserId,
};
use portcullis_store::{OrganizationStore, StoreError};

use crate::{SqliteTx, corrupt};

/// An `organizations` row as stored.
#[derive(sqlx::FromRow)]
struct OrganizationRow {
    id: String,
    slug: String,
    name: String,
    created_at: i64,
}

impl OrganizationRow {
    fn into_organization(self) -> Result<Organization, StoreError> {
        Ok(Organization {
            id: OrganizationId::parse(&self.id).map_err(|_| corrupt("organizations.id is not a uuid"))?,
            slug: OrganizationSlug::parse(&self.slug)
                .map_err(|_| corrupt("organizations.slug is not a slug"))?,
            name: DisplayName::parse(&self.name)
                .map_err(|_| corrupt("organizations.name is not a valid name"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
        })
    }
}

fn role(text: &str) -> Result<BuiltinRole, StoreError> {
    BuiltinRole::parse(text).ok_or_else(|| corrupt("memberships.role is unknown"))
}

impl SqliteTx {
    async fn organization_where<T>(
        &mut self,
        condition: &'static str,
        value: T,
    ) -> Result<Option<Organization>, StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send + 'static,
    {
        let sql = format!("SELECT id, slug, name, created_at FROM organizations WHERE {condition}");
        let row: Option<OrganizationRow> =
            match sqlx::query_as(&sql).bind(value).fetch_optional(&mut *self.tx).await {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        row.map(OrganizationRow::into_organization).transpose()
    }
}

#[async_trait]
impl OrganizationStore for SqliteTx {
    async fn insert_organization(&mut self, organization: &Organization) -> Result<(), StoreError> {
        let result =
            sqlx::query("INSERT INTO organizations (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
                .bind(organization.id.to_string())
                .bind(organization.slug.as_str())
                .bind(organization.name.as_str())
                .bind(organization.created_at.as_unix_millis())
                .execute(&mut *self.tx)
                .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("organization")),
        }
    }

    async fn organization(&mut self, id: OrganizationId) -> Result<Option<Organization>, StoreError> {
        self.organization_where("id = $1", id.to_string()).await
    }

    async fn organization_by_slug(
        &mut self,
        slug: &OrganizationSlug,
    ) -> Result<Option<Organization>, StoreError> {
        self.organization_where("slug = $1", slug.as_str().to_owned()).await
    }

    async fn organizations(
        &mut self,
        after: Option<OrganizationId>,
        limit: u32,
    ) -> Result<Vec<Organization>, StoreError> {
        let rows: Vec<OrganizationRow> = match sqlx::query_as(
            "SELECT id, slug, name, created_at FROM organizations WHERE ($1 IS NULL OR id > $1) \
             ORDER BY id LIMIT $2",
        )
        .bind(after.map(|id| id.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(OrganizationRow::into_organization).collect()
    }

    async fn rename_organization(
        &mut self,
        id: OrganizationId,
        name: &DisplayName,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE organizations SET name = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(name.as_str())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn delete_organization(&mut self, id: OrganizationId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn set_membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
        role: BuiltinRole,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO memberships (organization_id, user_id, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (organization_id, user_id) DO UPDATE SET role = excluded.role, updated_at = excluded.updated_at",
        )
        .bind(organization.to_string())
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                self.failed = true;
                Err(StoreError::Conflict { entity: "membership" })
            }
            Err(e) => Err(self.fail(e).conflict_on("membership")),
        }
    }

    async fn membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Option<BuiltinRole>, StoreError> {
        let result: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(organization.to_string())
                .bind(user.to_string())
                .fetch_optional(&mut *self.tx)
                .await;
        match result {
            Ok(found) => found.as_deref().map(role).transpose(),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn memberships_of(
        &mut self,
        user: UserId,
    ) -> Result<Vec<(OrganizationId, BuiltinRole)>, StoreError> {
        let rows: Vec<(String, String)> = match sqlx::query_as(
            "SELECT organization_id, role FROM memberships WHERE user_id = $1 ORDER BY organization_id",
        )
        .bind(user.to_string())
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.iter()
            .map(|(org, r)| {
                Ok((
                    OrganizationId::parse(org)
                        .map_err(|_| corrupt("memberships.organization_id is not a uuid"))?,
                    role(r)?,
                ))
            })
            .collect()
    }

    async fn members_of(
        &mut self,
        organization: OrganizationId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<(UserId, BuiltinRole)>, StoreError> {
        let rows: Vec<(String, String)> = match sqlx::query_as(
            "SELECT user_id, role FROM memberships WHERE organization_id = $1 AND ($2 IS NULL OR user_id > $2) \
             ORDER BY user_id LIMIT $3",
        )
        .bind(organization.to_string())
        .bind(after.map(|id| id.to_string()))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.iter()
            .map(|(user, r)| {
                Ok((UserId::parse(user).map_err(|_| corrupt("memberships.user_id is not a uuid"))?, role(r)?))
            })
            .collect()
    }

    async fn remove_membership(
        &mut self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
            .bind(organization.to_string())
            .bind(user.to_string())
            .execute(&mut *self.tx)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn count_active_members_with_role(
        &mut self,
        organization: OrganizationId,
        role: BuiltinRole,
    ) -> Result<u64, StoreError> {
        let result: Result<i64, _> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.organization_id = $1 AND m.role = $2 AND u.status = 'active'",
        )
        .bind(organization.to_string())
        .bind(role.as_str())
        .fetch_one(&mut *self.tx)
        .await;
        match result {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("COUNT(*) of members is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }
}
