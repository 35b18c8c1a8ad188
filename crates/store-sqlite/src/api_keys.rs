//! SQLite implementation of service accounts and API keys.

use async_trait::async_trait;
use portcullis_domain::{
    ApiKey, ApiKeyId, BuiltinRole, DisplayName, KeyOwner, OrganizationId, Permission, ServiceAccount,
    Timestamp, TokenHash, UserId,
};
use portcullis_store::{ApiKeyStore, Sealed, StoreError};

use crate::{SqliteTx, corrupt};

const ACCOUNT_COLUMNS: &str = "id, organization_id, name, role, active, created_at, updated_at";
const KEY_COLUMNS: &str = "id, user_id, service_account_id, name, scopes, allowed_cidrs, secret_hash, \
                           previous_hash, previous_until, created_at, expires_at, revoked_at, last_used_at";

/// A `service_accounts` row as stored.
#[derive(sqlx::FromRow)]
struct AccountRow {
    id: String,
    organization_id: String,
    name: String,
    role: String,
    active: bool,
    created_at: i64,
    updated_at: i64,
}

impl AccountRow {
    fn into_account(self) -> Result<ServiceAccount, StoreError> {
        Ok(ServiceAccount {
            id: UserId::parse(&self.id).map_err(|_| corrupt("service_accounts.id is not a uuid"))?,
            organization: OrganizationId::parse(&self.organization_id)
                .map_err(|_| corrupt("service_accounts.organization_id is not a uuid"))?,
            name: DisplayName::parse(&self.name)
                .map_err(|_| corrupt("service_accounts.name is not a name"))?,
            role: BuiltinRole::parse(&self.role)
                .ok_or_else(|| corrupt("service_accounts.role is unknown"))?,
            active: self.active,
            created_at: Timestamp::from_unix_millis(self.created_at),
            updated_at: Timestamp::from_unix_millis(self.updated_at),
        })
    }
}

/// An `api_keys` row as stored (without the sealed ip).
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    user_id: Option<String>,
    service_account_id: Option<String>,
    name: String,
    scopes: String,
    allowed_cidrs: String,
    secret_hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    previous_until: Option<i64>,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

fn digest(bytes: Vec<u8>, what: &str) -> Result<TokenHash, StoreError> {
    <[u8; 32]>::try_from(bytes).map(TokenHash).map_err(|_| corrupt(what))
}

impl KeyRow {
    fn into_key(self) -> Result<ApiKey, StoreError> {
        let uuid = |text: &str| UserId::parse(text).map_err(|_| corrupt("api_keys owner is not a uuid"));
        let owner = match (self.user_id.as_deref(), self.service_account_id.as_deref()) {
            (Some(user), None) => KeyOwner::User(uuid(user)?),
            (None, Some(account)) => KeyOwner::ServiceAccount(uuid(account)?),
            _ => return Err(corrupt("api_keys has not exactly one owner")),
        };
        let previous = match (self.previous_hash, self.previous_until) {
            (Some(hash), Some(until)) => Some((
                digest(hash, "api_keys.previous_hash is not 32 bytes")?,
                Timestamp::from_unix_millis(until),
            )),
            (None, None) => None,
            _ => return Err(corrupt("api_keys.previous_hash and previous_until disagree")),
        };
        Ok(ApiKey {
            id: ApiKeyId::parse(&self.id).map_err(|_| corrupt("api_keys.id is not a key id"))?,
            owner,
            name: DisplayName::parse(&self.name).map_err(|_| corrupt("api_keys.name is not a name"))?,
            scopes: self
                .scopes
                .split_whitespace()
                .map(|p| Permission::parse(p).map_err(|_| corrupt("api_keys.scopes holds a non-permission")))
                .collect::<Result<_, _>>()?,
            allowed_cidrs: self
                .allowed_cidrs
                .split_whitespace()
                .map(|c| c.parse().map_err(|_| corrupt("api_keys.allowed_cidrs holds a non-network")))
                .collect::<Result<_, _>>()?,
            secret_hash: digest(self.secret_hash, "api_keys.secret_hash is not 32 bytes")?,
            previous,
            created_at: Timestamp::from_unix_millis(self.created_at),
            expires_at: Timestamp::from_unix_millis(self.expires_at),
            revoked_at: self.revoked_at.map(Timestamp::from_unix_millis),
            last_used_at: self.last_used_at.map(Timestamp::from_unix_millis),
        })
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// The owner's column and id.
fn owner_column(owner: KeyOwner) -> (&'static str, String) {
    match owner {
        KeyOwner::User(id) => ("user_id", id.to_string()),
        KeyOwner::ServiceAccount(id) => ("service_account_id", id.to_string()),
    }
}

impl SqliteTx {
    async fn one_row(
        &mut self,
        result: Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
    ) -> Result<bool, StoreError> {
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[async_trait]
impl ApiKeyStore for SqliteTx {
    async fn insert_service_account(&mut self, account: &ServiceAccount) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO service_accounts (id, organization_id, name, role, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account.id.to_string())
        .bind(account.organization.to_string())
        .bind(account.name.as_str())
        .bind(account.role.as_str())
        .bind(account.active)
        .bind(account.created_at.as_unix_millis())
        .bind(account.updated_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "service_account")),
        }
    }

    async fn service_account(&mut self, id: UserId) -> Result<Option<ServiceAccount>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM service_accounts WHERE id = $1");
        let row: Option<AccountRow> =
            match sqlx::query_as(&sql).bind(id.to_string()).fetch_optional(&mut *self.tx).await {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        row.map(AccountRow::into_account).transpose()
    }

    async fn service_accounts(
        &mut self,
        organization: Option<OrganizationId>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<ServiceAccount>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM service_accounts \
             WHERE ($1 IS NULL OR organization_id = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows: Vec<AccountRow> = match sqlx::query_as(&sql)
            .bind(organization.map(|o| o.to_string()))
            .bind(after.map(|a| a.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(AccountRow::into_account).collect()
    }

    async fn update_service_account(&mut self, account: &ServiceAccount) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE service_accounts SET name = $2, role = $3, active = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(account.id.to_string())
        .bind(account.name.as_str())
        .bind(account.role.as_str())
        .bind(account.active)
        .bind(account.updated_at.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.write_conflict(e, "service_account")),
        }
    }

    async fn delete_service_account(&mut self, id: UserId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM service_accounts WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await;
        self.one_row(result).await
    }

    async fn insert_api_key(&mut self, key: &ApiKey) -> Result<(), StoreError> {
        let (user, account) = match key.owner {
            KeyOwner::User(id) => (Some(id.to_string()), None),
            KeyOwner::ServiceAccount(id) => (None, Some(id.to_string())),
        };
        let result = sqlx::query(
            "INSERT INTO api_keys (id, user_id, service_account_id, name, scopes, allowed_cidrs, secret_hash, \
             previous_hash, previous_until, created_at, expires_at, revoked_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(key.id.as_str())
        .bind(user)
        .bind(account)
        .bind(key.name.as_str())
        .bind(join(&key.scopes))
        .bind(join(&key.allowed_cidrs))
        .bind(key.secret_hash.0.to_vec())
        .bind(key.previous.map(|(hash, _)| hash.0.to_vec()))
        .bind(key.previous.map(|(_, until)| until.as_unix_millis()))
        .bind(key.created_at.as_unix_millis())
        .bind(key.expires_at.as_unix_millis())
        .bind(key.revoked_at.map(Timestamp::as_unix_millis))
        .bind(key.last_used_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "api_key")),
        }
    }

    async fn api_key(&mut self, id: &ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row: Option<KeyRow> =
            match sqlx::query_as(&sql).bind(id.as_str()).fetch_optional(&mut *self.tx).await {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        row.map(KeyRow::into_key).transpose()
    }

    async fn api_keys_of(&mut self, owner: KeyOwner) -> Result<Vec<ApiKey>, StoreError> {
        let (column, id) = owner_column(owner);
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {column} = $1 ORDER BY created_at DESC, id");
        let rows: Vec<KeyRow> = match sqlx::query_as(&sql).bind(id).fetch_all(&mut *self.tx).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(KeyRow::into_key).collect()
    }

    async fn count_live_api_keys_of(&mut self, owner: KeyOwner, now: Timestamp) -> Result<u64, StoreError> {
        let (column, id) = owner_column(owner);
        let sql = format!(
            "SELECT COUNT(*) FROM api_keys WHERE {column} = $1 AND revoked_at IS NULL AND expires_at > $2"
        );
        let result: Result<i64, _> =
            sqlx::query_scalar(&sql).bind(id).bind(now.as_unix_millis()).fetch_one(&mut *self.tx).await;
        match result {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("COUNT(*) of keys is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn rotate_api_key(
        &mut self,
        id: &ApiKeyId,
        secret_hash: &TokenHash,
        previous_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE api_keys SET previous_hash = secret_hash, previous_until = $3, secret_hash = $2 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(secret_hash.0.to_vec())
        .bind(previous_until.as_unix_millis())
        .execute(&mut *self.tx)
        .await;
        self.one_row(result).await
    }

    async fn revoke_api_key(&mut self, id: &ApiKeyId, at: Timestamp) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id.as_str())
            .bind(at.as_unix_millis())
            .execute(&mut *self.tx)
            .await;
        self.one_row(result).await
    }

    async fn record_api_key_use(
        &mut self,
        id: &ApiKeyId,
        at: Timestamp,
        ip: Option<&Sealed>,
        pii_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE api_keys SET last_used_at = $2, last_used_ip = $3, pii_key = $4 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id.as_str())
        .bind(at.as_unix_millis())
        .bind(ip.map(|s| s.0.clone()))
        .bind(pii_key.filter(|_| ip.is_some()))
        .execute(&mut *self.tx)
        .await;
        self.one_row(result).await.map(|_| ())
    }

    async fn api_key_last_ip(&mut self, id: &ApiKeyId) -> Result<Option<(Sealed, String)>, StoreError> {
        let result: Result<Option<(Option<Vec<u8>>, Option<String>)>, _> =
            sqlx::query_as("SELECT last_used_ip, pii_key FROM api_keys WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *self.tx)
                .await;
        match result {
            Ok(Some((Some(ip), Some(key)))) => Ok(Some((Sealed(ip), key))),
            Ok(_) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }
}
