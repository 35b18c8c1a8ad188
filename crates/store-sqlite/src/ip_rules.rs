//! SQLite implementation of the IP rules.

use async_trait::async_trait;
use portcullis_domain::{
    IpRule, IpRuleAction, IpRuleId, IpRuleScope, IpRuleSource, Timestamp, UserId, parse_network,
};
use portcullis_store::{IpRuleStore, StoreError};

use crate::{SqliteTx, corrupt};

/// An `ip_rules` row as stored.
#[derive(sqlx::FromRow)]
struct RuleRow {
    id: String,
    network: String,
    action: String,
    scope: String,
    source: String,
    note: String,
    created_by: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
}

impl RuleRow {
    fn into_rule(self) -> Result<IpRule, StoreError> {
        Ok(IpRule {
            id: IpRuleId::parse(&self.id).map_err(|_| corrupt("ip_rules.id is not a uuid"))?,
            network: parse_network(&self.network)
                .map_err(|_| corrupt("ip_rules.network is not a network"))?,
            action: IpRuleAction::parse(&self.action).ok_or_else(|| corrupt("ip_rules.action is unknown"))?,
            scope: IpRuleScope::parse(&self.scope).ok_or_else(|| corrupt("ip_rules.scope is unknown"))?,
            source: IpRuleSource::parse(&self.source).ok_or_else(|| corrupt("ip_rules.source is unknown"))?,
            note: self.note,
            created_by: self
                .created_by
                .map(|id| UserId::parse(&id))
                .transpose()
                .map_err(|_| corrupt("ip_rules.created_by is not a uuid"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            expires_at: self.expires_at.map(Timestamp::from_unix_millis),
        })
    }
}

const COLUMNS: &str = "id, network, action, scope, source, note, created_by, created_at, expires_at";

#[async_trait]
impl IpRuleStore for SqliteTx {
    async fn insert_ip_rule(&mut self, rule: &IpRule) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO ip_rules (id, network, action, scope, source, note, created_by, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(rule.id.to_string())
        .bind(rule.network.to_string())
        .bind(rule.action.as_str())
        .bind(rule.scope.as_str())
        .bind(rule.source.as_str())
        .bind(&rule.note)
        .bind(rule.created_by.map(|id| id.to_string()))
        .bind(rule.created_at.as_unix_millis())
        .bind(rule.expires_at.map(Timestamp::as_unix_millis))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "ip_rule")),
        }
    }

    async fn ip_rule(&mut self, id: IpRuleId) -> Result<Option<IpRule>, StoreError> {
        let row: Option<RuleRow> =
            match sqlx::query_as(&format!("SELECT {COLUMNS} FROM ip_rules WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&mut *self.tx)
                .await
            {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        row.map(RuleRow::into_rule).transpose()
    }

    async fn ip_rules(&mut self, limit: u32) -> Result<Vec<IpRule>, StoreError> {
        let rows: Vec<RuleRow> =
            match sqlx::query_as(&format!("SELECT {COLUMNS} FROM ip_rules ORDER BY created_at, id LIMIT $1"))
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await
            {
                Ok(rows) => rows,
                Err(e) => return Err(self.fail(e)),
            };
        rows.into_iter().map(RuleRow::into_rule).collect()
    }

    async fn delete_ip_rule(&mut self, id: IpRuleId) -> Result<bool, StoreError> {
        match sqlx::query("DELETE FROM ip_rules WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *self.tx)
            .await
        {
            Ok(done) => Ok(done.rows_affected() > 0),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn purge_expired_ip_rules(&mut self, now: Timestamp) -> Result<u64, StoreError> {
        match sqlx::query("DELETE FROM ip_rules WHERE expires_at <= $1")
            .bind(now.as_unix_millis())
            .execute(&mut *self.tx)
            .await
        {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }
}
