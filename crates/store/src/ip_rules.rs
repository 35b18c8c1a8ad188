//! IP rules: the allow and deny networks an administrator or a detection rule set. Rules from the
//! configuration file are never stored.

use async_trait::async_trait;
use portcullis_domain::{IpRule, IpRuleId, Timestamp};

use crate::StoreError;

/// IP rules.
#[async_trait]
pub trait IpRuleStore {
    /// Stores a rule of source `admin` or `detection` (a `config` rule, or a detection rule without
    /// an expiry, is refused as a database error). A reused id is [`StoreError::Conflict`] with
    /// entity `"ip_rule"`.
    async fn insert_ip_rule(&mut self, rule: &IpRule) -> Result<(), StoreError>;

    /// The rule with this id.
    async fn ip_rule(&mut self, id: IpRuleId) -> Result<Option<IpRule>, StoreError>;

    /// Up to `limit` rules, expired ones included, oldest first (by `created_at`, then id).
    async fn ip_rules(&mut self, limit: u32) -> Result<Vec<IpRule>, StoreError>;

    /// Deletes a rule; returns false if it did not exist.
    async fn delete_ip_rule(&mut self, id: IpRuleId) -> Result<bool, StoreError>;

    /// Deletes every rule whose expiry is at or before `now`; returns how many.
    async fn purge_expired_ip_rules(&mut self, now: Timestamp) -> Result<u64, StoreError>;
}
