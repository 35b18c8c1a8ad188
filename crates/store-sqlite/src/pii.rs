//! SQLite implementation of the re-encryption job's queries over sealed personal data.

use async_trait::async_trait;
use portcullis_domain::{TokenHash, UserId};
use portcullis_store::{BlindIndex, PiiRow, PiiStore, PiiTable, Sealed, StoreError, StoredUser};

use crate::accounts::UserRow;
use crate::{SqliteTx, corrupt};

/// The statements for one table; constant text, never built from input.
struct TableSql {
    select: &'static str,
    update: &'static str,
    /// Whether the row id is a token hash kept as bytes (shown as hex).
    hashed_id: bool,
}

fn sql(table: PiiTable) -> TableSql {
    match table {
        PiiTable::Users => TableSql {
            select: "SELECT id, pii_key, email, display_name FROM users \
                     WHERE pii_key <> $1 ORDER BY id LIMIT $2",
            update: "UPDATE users SET email = $3, display_name = $4, pii_key = $5 \
                     WHERE id = $1 AND pii_key = $2",
            hashed_id: false,
        },
        PiiTable::Sessions => TableSql {
            select: "SELECT id, pii_key, ip, user_agent FROM sessions \
                     WHERE pii_key IS NOT NULL AND pii_key <> $1 ORDER BY id LIMIT $2",
            update: "UPDATE sessions SET ip = $3, user_agent = $4, pii_key = $5 \
                     WHERE id = $1 AND pii_key = $2",
            hashed_id: false,
        },
        PiiTable::OneTimeTokens => TableSql {
            select: "SELECT hash, pii_key, email, NULL FROM one_time_tokens \
                     WHERE pii_key IS NOT NULL AND pii_key <> $1 ORDER BY hash LIMIT $2",
            update: "UPDATE one_time_tokens SET email = $3, pii_key = $5 \
                     WHERE hash = $1 AND pii_key = $2 AND $4 IS NULL",
            hashed_id: true,
        },
        PiiTable::SecurityEvents => TableSql {
            select: "SELECT id, pii_key, ip, NULL FROM security_events \
                     WHERE pii_key IS NOT NULL AND pii_key <> $1 ORDER BY id LIMIT $2",
            update: "UPDATE security_events SET ip = $3, pii_key = $5 \
                     WHERE id = $1 AND pii_key = $2 AND $4 IS NULL",
            hashed_id: false,
        },
        PiiTable::ApiKeys => TableSql {
            select: "SELECT id, pii_key, last_used_ip, NULL FROM api_keys \
                     WHERE pii_key IS NOT NULL AND pii_key <> $1 ORDER BY id LIMIT $2",
            update: "UPDATE api_keys SET last_used_ip = $3, pii_key = $5 \
                     WHERE id = $1 AND pii_key = $2 AND $4 IS NULL",
            hashed_id: false,
        },
        PiiTable::TotpDevices => TableSql {
            select: "SELECT id, pii_key, secret, NULL FROM mfa_totp_devices \
                     WHERE pii_key <> $1 ORDER BY id LIMIT $2",
            update: "UPDATE mfa_totp_devices SET secret = $3, pii_key = $5 \
                     WHERE id = $1 AND pii_key = $2 AND $4 IS NULL",
            hashed_id: false,
        },
        PiiTable::PersonKeys => TableSql {
            select: "SELECT user_id, pii_key, secret, NULL FROM person_keys \
                     WHERE pii_key <> $1 ORDER BY user_id LIMIT $2",
            update: "UPDATE person_keys SET secret = $3, pii_key = $5 \
                     WHERE user_id = $1 AND pii_key = $2 AND $4 IS NULL",
            hashed_id: false,
        },
    }
}

#[async_trait]
impl PiiStore for SqliteTx {
    async fn pii_rows_not_under(
        &mut self,
        table: PiiTable,
        key: &str,
        limit: u32,
    ) -> Result<Vec<PiiRow>, StoreError> {
        let sql = sql(table);
        let columns = table.columns().len();
        let rows = if sql.hashed_id {
            let rows: Vec<(Vec<u8>, String, Option<Vec<u8>>, Option<Vec<u8>>)> =
                match sqlx::query_as(sql.select)
                    .bind(key)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => return Err(self.fail(e)),
                };
            rows.into_iter()
                .map(|(id, key, a, b)| {
                    let hash: [u8; 32] =
                        id.try_into().map_err(|_| corrupt("one_time_tokens.hash is not 32 bytes"))?;
                    Ok((TokenHash(hash).to_hex(), key, a, b))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        } else {
            let rows: Vec<(String, String, Option<Vec<u8>>, Option<Vec<u8>>)> =
                match sqlx::query_as(sql.select)
                    .bind(key)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => return Err(self.fail(e)),
                };
            rows
        };
        Ok(rows
            .into_iter()
            .map(|(id, key, a, b)| PiiRow {
                id,
                key,
                fields: [a, b].into_iter().take(columns).map(|f| f.map(Sealed)).collect(),
            })
            .collect())
    }

    async fn reseal_pii_row(
        &mut self,
        table: PiiTable,
        row: &PiiRow,
        to_key: &str,
    ) -> Result<bool, StoreError> {
        let sql = sql(table);
        if row.fields.len() != table.columns().len() {
            // A refused operation finishes the transaction like a failed statement (see `StoreTx`).
            self.failed = true;
            return Err(StoreError::Database("a resealed row has the wrong number of fields".into()));
        }
        let field = |i: usize| row.fields.get(i).cloned().flatten().map(|s| s.0);
        let query = if sql.hashed_id {
            let Some(id) = TokenHash::from_hex(&row.id).map(|h| h.0.to_vec()) else {
                self.failed = true;
                return Err(corrupt("a one-time token id is not hex"));
            };
            sqlx::query(sql.update).bind(id)
        } else {
            sqlx::query(sql.update).bind(row.id.clone())
        };
        let result =
            query.bind(&row.key).bind(field(0)).bind(field(1)).bind(to_key).execute(&mut *self.tx).await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn count_pii_rows_under(&mut self, key: &str) -> Result<u64, StoreError> {
        let result: Result<i64, _> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM users WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM sessions WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM one_time_tokens WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM security_events WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM api_keys WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM mfa_totp_devices WHERE pii_key = $1) \
             + (SELECT COUNT(*) FROM person_keys WHERE pii_key = $1)",
        )
        .bind(key)
        .fetch_one(&mut *self.tx)
        .await;
        match result {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("a row count is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn users_not_indexed_under(
        &mut self,
        key: &str,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        let rows: Vec<UserRow> = match sqlx::query_as(
            "SELECT id, email, email_index, index_key, email_verified_at, display_name, pii_key, status, \
             role, created_at, updated_at, last_login_at FROM users WHERE index_key <> $1 ORDER BY id LIMIT $2",
        )
        .bind(key)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(UserRow::into_user).collect()
    }

    async fn reindex_user(
        &mut self,
        id: UserId,
        from_key: &str,
        to_key: &str,
        index: &BlindIndex,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE users SET email_index = $4, index_key = $3 WHERE id = $1 AND index_key = $2")
                .bind(id.to_string())
                .bind(from_key)
                .bind(to_key)
                .bind(index.0.as_slice())
                .execute(&mut *self.tx)
                .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => Err(self.fail(e).conflict_on("user")),
        }
    }

    async fn count_users_indexed_under(&mut self, key: &str) -> Result<u64, StoreError> {
        let result: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE index_key = $1")
            .bind(key)
            .fetch_one(&mut *self.tx)
            .await;
        match result {
            Ok(count) => u64::try_from(count).map_err(|_| corrupt("a row count is negative")),
            Err(e) => Err(self.fail(e)),
        }
    }
}
