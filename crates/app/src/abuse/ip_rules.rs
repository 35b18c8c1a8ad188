//! IP rules: global allow and deny lists and an allowlist for the administration API, from the
//! configuration file and from administrators (`/v1/admin/ip-rules`), plus the automatic blocks of
//! detection rules, judged on every request before any authentication work.
//!
//! The decision is [`IpRuleSet::decide`] (deny wins over allow; any live global allow rule makes an
//! allowlist; the admin allowlist restricts `/v1/admin/*` further; expired rules never apply). It
//! runs on every request, so the rules are held in memory: an `Arc` swapped whole on a change, read
//! without waiting on a writer. A change on this node swaps it at once; changes made by other nodes
//! arrive with [`App::reload_ip_rules`], which the server runs every [`IP_RULE_SYNC_SECS`].
//!
//! Denials are counted per address and written once a minute as one `ip_denied` security event per
//! address (with the count), like rate limit trips, so a flood from a blocked network costs no
//! database write per request.
//!
//! Creating and deleting a rule, by an administrator or a detection rule, and purging expired ones
//! are recorded in the audit trail (`ip_rule.created`, `ip_rule.deleted`, `ip_rule.purged`) in the
//! transaction that makes the change.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use portcullis_domain::{
    IpDenial, IpRule, IpRuleAction, IpRuleId, IpRuleScope, IpRuleSet, IpRuleSource, MAX_ADMIN_IP_RULES,
    MAX_DETECTION_IP_RULES, MAX_IP_RULE_NOTE_CHARS, Resource, SecurityEventKind, Timestamp, parse_network,
};
use sha2::{Digest, Sha256};

use crate::audit::AuditEntry;
use crate::secret_token::random_id_bytes;
use crate::{App, AppError, FieldIssue, Principal};

/// How often a node reads the rules other nodes changed, at most (seconds).
pub const IP_RULE_SYNC_SECS: u64 = 2;

/// The longest expiry an administrator may give a rule: a year (a standing rule has none).
pub const MAX_IP_RULE_EXPIRY_SECS: i64 = 366 * 24 * 3600;

/// Most distinct addresses whose denials are counted between two flushes; beyond, they are counted
/// together.
const MAX_DENIAL_KEYS: usize = 10_000;

/// The fixed rules of the configuration file (`[ip_rules]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRuleSettings {
    /// Global allowlist: when non-empty, only these networks get in.
    pub allow: Vec<IpNet>,
    /// Global denylist: these networks never get in (deny wins over allow).
    pub deny: Vec<IpNet>,
    /// When non-empty, only these networks reach `/v1/admin/*`.
    pub admin_allow: Vec<IpNet>,
}

/// A rule as an administrator asks for it: every field text, checked here and named in the 422.
#[derive(Debug, Clone, Default)]
pub struct NewIpRule<'a> {
    /// An address or CIDR network; canonicalized (`10.0.0.1/8` is stored as `10.0.0.0/8`).
    pub network: &'a str,
    /// `allow` or `deny`.
    pub action: &'a str,
    /// `global` or `admin`.
    pub scope: &'a str,
    pub note: Option<&'a str>,
    /// Seconds until it stops applying (1 to a year); none for a standing rule.
    pub expires_in_secs: Option<i64>,
}

/// The IP rules of one node: the configuration's, the set in force, and the denials not yet
/// recorded.
#[derive(Debug)]
pub(crate) struct IpRules {
    /// The configuration's rules, as rules (stable ids, source `config`).
    config: Vec<IpRule>,
    /// Replaced whole on a change; readers clone the `Arc` and never wait on a writer.
    current: RwLock<Arc<IpRuleSet>>,
    /// When the stored rules were last read (unix millis), `i64::MIN` before the first read.
    loaded_at: AtomicI64,
    denials: Mutex<HashMap<IpAddr, (u64, IpDenial)>>,
    denial_overflow: AtomicU64,
}

impl IpRules {
    pub(crate) fn new(settings: &IpRuleSettings, now: Timestamp) -> Self {
        let mut config = Vec::new();
        for (networks, action, scope) in [
            (&settings.deny, IpRuleAction::Deny, IpRuleScope::Global),
            (&settings.allow, IpRuleAction::Allow, IpRuleScope::Global),
            (&settings.admin_allow, IpRuleAction::Allow, IpRuleScope::Admin),
        ] {
            for network in networks {
                let network = portcullis_domain::ip_rule::canonical(*network);
                config.push(IpRule {
                    id: config_rule_id(network, action, scope),
                    network,
                    action,
                    scope,
                    source: IpRuleSource::Config,
                    note: "configuration file".into(),
                    created_by: None,
                    created_at: now,
                    expires_at: None,
                });
            }
        }
        let set = IpRuleSet::new(&config);
        Self {
            config,
            current: RwLock::new(Arc::new(set)),
            loaded_at: AtomicI64::new(i64::MIN),
            denials: Mutex::default(),
            denial_overflow: AtomicU64::new(0),
        }
    }

    fn set(&self) -> Arc<IpRuleSet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, stored: &[IpRule]) {
        let set = Arc::new(IpRuleSet::new(self.config.iter().chain(stored)));
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    fn count_denial(&self, ip: IpAddr, why: IpDenial) {
        let Ok(mut denials) = self.denials.lock() else { return };
        let held = denials.len();
        match denials.get_mut(&ip) {
            Some(entry) => *entry = (entry.0 + 1, why),
            None if held < MAX_DENIAL_KEYS => {
                denials.insert(ip, (1, why));
            }
            None => {
                self.denial_overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A stable id for a configuration rule, so that it lists the same way on every node and after a
/// restart, and a DELETE naming it can be told apart from one naming nothing.
fn config_rule_id(network: IpNet, action: IpRuleAction, scope: IpRuleScope) -> IpRuleId {
    let digest = Sha256::digest(format!("config:{}:{}:{network}", action.as_str(), scope.as_str()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    IpRuleId::from_random_bytes(bytes)
}

/// Every stored rule the reload reads at most.
const LOAD_LIMIT: u32 = (MAX_ADMIN_IP_RULES + MAX_DETECTION_IP_RULES) as u32;

impl App {
    /// Whether a request from `ip` may go on: to an administration route (`/v1/admin/*`) when
    /// `admin_route`. No database access, no allocation: a lookup in the rules held in memory. A
    /// refusal is counted for the minute's `ip_denied` security event. Refused:
    /// [`AppError::IpDenied`].
    pub fn ip_allowed(&self, ip: IpAddr, admin_route: bool) -> Result<(), AppError> {
        let rules = &self.inner.ip_rules;
        let set = rules.set();
        if set.is_empty() {
            return Ok(());
        }
        set.decide(ip, admin_route, self.now()).map_err(|why| {
            rules.count_denial(ip.to_canonical(), why);
            AppError::IpDenied
        })
    }

    /// Reads the stored rules and puts them, with the configuration's, in force on this node. Run
    /// after every change here and every [`IP_RULE_SYNC_SECS`] for other nodes' changes; when the
    /// database cannot be read, the rules in force stay as they were.
    pub async fn reload_ip_rules(&self) -> Result<(), AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let stored = tx.ip_rules(LOAD_LIMIT).await?;
        tx.rollback().await?;
        self.inner.ip_rules.replace(&stored);
        self.inner.ip_rules.loaded_at.store(self.now().as_unix_millis(), Ordering::Relaxed);
        Ok(())
    }

    /// When the stored rules were last read, if ever (for readiness and metrics).
    pub fn ip_rules_loaded_at(&self) -> Option<Timestamp> {
        let at = self.inner.ip_rules.loaded_at.load(Ordering::Relaxed);
        (at != i64::MIN).then(|| Timestamp::from_unix_millis(at))
    }

    /// Deletes the rules whose expiry has passed (they stopped applying already); returns how many.
    pub async fn purge_expired_ip_rules(&self) -> Result<u64, AppError> {
        let mut tx = self.inner.store.begin().await?;
        let purged = tx.purge_expired_ip_rules(self.now()).await?;
        let entry = (purged > 0).then(|| AuditEntry::system("ip_rule.purged").detail("expired", purged));
        self.commit_audited(tx, entry).await?;
        if purged > 0 {
            self.reload_ip_rules().await?;
        }
        Ok(purged)
    }

    /// Once a minute: records the denials since the last run as one `ip_denied` security event per
    /// address (with the count and why), plus one for addresses beyond the counter's bound.
    pub async fn record_ip_denials(&self) -> Result<usize, AppError> {
        let rules = &self.inner.ip_rules;
        let denials: Vec<(IpAddr, (u64, IpDenial))> = match rules.denials.lock() {
            Ok(mut denials) => std::mem::take(&mut *denials).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let overflow = rules.denial_overflow.swap(0, Ordering::Relaxed);
        let mut recorded = 0;
        for (ip, (count, why)) in denials {
            let details = BTreeMap::from([
                ("count".to_owned(), count.to_string()),
                ("reason".to_owned(), why.as_str().to_owned()),
            ]);
            let ip = ip.to_string();
            self.record_security_event_with(SecurityEventKind::IpDenied, None, None, Some(&ip), details)
                .await?;
            recorded += 1;
        }
        if overflow > 0 {
            let details = BTreeMap::from([
                ("count".to_owned(), overflow.to_string()),
                ("key".to_owned(), format!("more than {MAX_DENIAL_KEYS} distinct addresses")),
            ]);
            self.record_security_event_with(SecurityEventKind::IpDenied, None, None, None, details).await?;
            recorded += 1;
        }
        Ok(recorded)
    }

    /// Every rule: the configuration's (source `config`, read-only) first, then the stored ones
    /// oldest first, expired ones not yet purged included (their `expires_at` says so). Needs
    /// `iprules:read` system-wide.
    pub async fn admin_list_ip_rules(&self, principal: &Principal) -> Result<Vec<IpRule>, AppError> {
        self.require(principal, "iprules:read", Resource::default()).await?;
        let mut tx = self.inner.store.begin_read().await?;
        let stored = tx.ip_rules(LOAD_LIMIT).await?;
        tx.rollback().await?;
        Ok(self.inner.ip_rules.config.iter().cloned().chain(stored).collect())
    }

    /// Creates a rule (source `admin`) and puts it in force on this node at once. Needs
    /// `iprules:write` system-wide.
    ///
    /// Refused with 422: a malformed field; a deny rule for a /0 (it would refuse every client of an
    /// address family; allow rules for the networks to admit say the same without the accident); a
    /// rule after which `caller_ip` (the caller's own address, when known) could no longer reach
    /// the administration API, so an administrator cannot lock themselves out by a slip (as
    /// Cloudflare and Keycloak administrators expect); more than [`MAX_ADMIN_IP_RULES`] rules.
    pub async fn admin_create_ip_rule(
        &self,
        principal: &Principal,
        caller_ip: Option<IpAddr>,
        new: &NewIpRule<'_>,
    ) -> Result<IpRule, AppError> {
        self.require(principal, "iprules:write", Resource::default()).await?;
        let now = self.now();
        let mut rule = parse_new_rule(new, now)?;
        rule.created_by = Some(principal.user_id);
        let mut tx = self.inner.store.begin().await?;
        let stored = tx.ip_rules(LOAD_LIMIT).await?;
        if stored.iter().filter(|r| r.source == IpRuleSource::Admin).count() >= MAX_ADMIN_IP_RULES {
            return Err(AppError::invalid(
                "/network",
                format!("at most {MAX_ADMIN_IP_RULES} rules may exist; delete some first"),
            ));
        }
        if let Some(ip) = caller_ip {
            let after = IpRuleSet::new(self.inner.ip_rules.config.iter().chain(&stored).chain([&rule]));
            if after.decide(ip, true, now).is_err() {
                return Err(AppError::invalid(
                    "/network",
                    format!(
                        "this rule would lock your own address ({}) out of the administration API; \
                         add a rule that allows it first",
                        ip.to_canonical()
                    ),
                ));
            }
        }
        tx.insert_ip_rule(&rule).await?;
        self.commit_audited(tx, [rule_record(AuditEntry::by(principal, "ip_rule.created"), &rule)]).await?;
        tracing::info!(
            actor = %principal.user_id,
            rule_id = %rule.id,
            network = %rule.network,
            action = rule.action.as_str(),
            scope = rule.scope.as_str(),
            "ip rule created"
        );
        self.reload_after_change().await;
        Ok(rule)
    }

    /// Deletes a stored rule and takes it out of force on this node at once. Needs `iprules:write`
    /// system-wide. A configuration rule is refused (403: it is changed in the configuration file);
    /// an unknown or malformed id is 404; deleting an allow rule that the caller's own address
    /// needs to reach the administration API is refused with 422, as creating a rule is.
    pub async fn admin_delete_ip_rule(
        &self,
        principal: &Principal,
        caller_ip: Option<IpAddr>,
        id: &str,
    ) -> Result<(), AppError> {
        self.require(principal, "iprules:write", Resource::default()).await?;
        let id = IpRuleId::parse(id).map_err(|_| AppError::NotFound)?;
        let config = &self.inner.ip_rules.config;
        if config.iter().any(|r| r.id == id) {
            return Err(AppError::Forbidden(
                "rules from the configuration file are changed there, not through the API".into(),
            ));
        }
        let mut tx = self.inner.store.begin().await?;
        let stored = tx.ip_rules(LOAD_LIMIT).await?;
        let Some(rule) = stored.iter().find(|r| r.id == id).cloned() else {
            return Err(AppError::NotFound);
        };
        if let Some(ip) = caller_ip {
            let now = self.now();
            let before = IpRuleSet::new(config.iter().chain(&stored));
            let after = IpRuleSet::new(config.iter().chain(stored.iter().filter(|r| r.id != id)));
            // Only a deletion that takes away the caller's access is refused: one that leaves an
            // already locked-out caller locked out is theirs to make.
            if before.decide(ip, true, now).is_ok() && after.decide(ip, true, now).is_err() {
                return Err(AppError::invalid(
                    "/id",
                    format!(
                        "deleting this rule would lock your own address ({}) out of the administration \
                         API; add a rule that allows it first",
                        ip.to_canonical()
                    ),
                ));
            }
        }
        if !tx.delete_ip_rule(id).await? {
            return Err(AppError::NotFound);
        }
        self.commit_audited(tx, [rule_record(AuditEntry::by(principal, "ip_rule.deleted"), &rule)]).await?;
        tracing::info!(
            actor = %principal.user_id,
            rule_id = %rule.id,
            network = %rule.network,
            action = rule.action.as_str(),
            scope = rule.scope.as_str(),
            "ip rule deleted"
        );
        self.reload_after_change().await;
        Ok(())
    }

    /// Blocks `network` on every route for `duration`: an automatic response of a detection rule
    /// (source `detection`, always expiring), in force on this node at once and on the others within
    /// [`IP_RULE_SYNC_SECS`]. Records an `ip_blocked` security event carrying the network, the rule
    /// id, the expiry and `reason`. Refused (422): a /0, a duration of zero or beyond a year, and
    /// more than [`MAX_DETECTION_IP_RULES`] blocks at once.
    pub async fn block_ip(
        &self,
        network: IpNet,
        duration: Duration,
        reason: &str,
    ) -> Result<IpRule, AppError> {
        let network = portcullis_domain::ip_rule::canonical(network);
        if network.prefix_len() == 0 {
            return Err(AppError::invalid("/network", "a block must not cover every address"));
        }
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        if millis <= 0 || millis > MAX_IP_RULE_EXPIRY_SECS * 1000 {
            return Err(AppError::invalid("/duration", "must be more than zero and at most a year"));
        }
        let now = self.now();
        let rule = IpRule {
            id: IpRuleId::from_random_bytes(random_id_bytes()?),
            network,
            action: IpRuleAction::Deny,
            scope: IpRuleScope::Global,
            source: IpRuleSource::Detection,
            note: reason.chars().take(MAX_IP_RULE_NOTE_CHARS).collect(),
            created_by: None,
            created_at: now,
            expires_at: Some(now.plus_millis(millis)),
        };
        let mut tx = self.inner.store.begin().await?;
        let live_blocks = tx
            .ip_rules(LOAD_LIMIT)
            .await?
            .iter()
            .filter(|r| r.source == IpRuleSource::Detection && r.is_live(now))
            .count();
        if live_blocks >= MAX_DETECTION_IP_RULES {
            return Err(AppError::invalid(
                "/network",
                format!("at most {MAX_DETECTION_IP_RULES} automatic blocks may exist at once"),
            ));
        }
        tx.insert_ip_rule(&rule).await?;
        let created = rule_record(AuditEntry::system("ip_rule.created"), &rule).detail("reason", reason);
        self.commit_audited(tx, [created]).await?;
        let mut details = BTreeMap::from([
            ("rule_id".to_owned(), rule.id.to_string()),
            ("expires_at".to_owned(), rule.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()),
            ("reason".to_owned(), rule.note.clone()),
        ]);
        // One address is personal data: it goes into the sealed column only. A wider network is an
        // operator's policy and is named in the details.
        let single = network.prefix_len() == network.max_prefix_len();
        let ip = single.then(|| network.addr().to_string());
        if !single {
            details.insert("network".to_owned(), network.to_string());
        }
        self.record_security_event_with(SecurityEventKind::IpBlocked, None, None, ip.as_deref(), details)
            .await?;
        self.reload_after_change().await;
        Ok(rule)
    }

    /// Puts a change made here in force at once; if the database cannot be read back, the periodic
    /// reload does it later (the change itself is committed).
    async fn reload_after_change(&self) {
        if let Err(error) = self.reload_ip_rules().await {
            tracing::warn!(error = %portcullis_domain::error_chain(&error), "reloading ip rules failed");
        }
    }
}

/// An audit record about `rule`: what it does, where, until when and who made it. The network is
/// named when it is a network, an operator's policy; a single address is personal data, kept out of
/// the trail (which cannot forget) and left to the rule itself and the sealed security event.
fn rule_record(entry: AuditEntry, rule: &IpRule) -> AuditEntry {
    let mut entry = entry
        .target("ip_rule", rule.id)
        .detail("action", rule.action.as_str())
        .detail("scope", rule.scope.as_str())
        .detail("source", rule.source.as_str())
        .detail("expires_at", rule.expires_at.map(|t| t.to_rfc3339()));
    if rule.network.prefix_len() == rule.network.max_prefix_len() {
        entry = entry.detail("single_address", true);
    } else {
        entry = entry.detail("network", rule.network.to_string());
    }
    entry
}

/// The rule an administrator asked for, or every field that is wrong.
fn parse_new_rule(new: &NewIpRule<'_>, now: Timestamp) -> Result<IpRule, AppError> {
    let mut issues = Vec::new();
    let network = parse_network(new.network).map_err(|e| issues.push(FieldIssue::new("/network", e))).ok();
    let action = IpRuleAction::parse(new.action);
    if action.is_none() {
        issues.push(FieldIssue::new("/action", "must be allow or deny"));
    }
    let scope = IpRuleScope::parse(new.scope);
    if scope.is_none() {
        issues.push(FieldIssue::new("/scope", "must be global or admin"));
    }
    if let (Some(network), Some(IpRuleAction::Deny)) = (network, action)
        && network.prefix_len() == 0
    {
        issues.push(FieldIssue::new(
            "/network",
            "a deny rule must not cover every address; to admit only some networks, add allow rules for them",
        ));
    }
    let note = new.note.unwrap_or("").trim();
    if note.chars().count() > MAX_IP_RULE_NOTE_CHARS || note.chars().any(char::is_control) {
        issues.push(FieldIssue::new(
            "/note",
            format!("at most {MAX_IP_RULE_NOTE_CHARS} characters, no control characters"),
        ));
    }
    let expires_at = match new.expires_in_secs {
        None => None,
        Some(secs) if (1..=MAX_IP_RULE_EXPIRY_SECS).contains(&secs) => Some(now.plus_millis(secs * 1000)),
        Some(_) => {
            issues.push(FieldIssue::new(
                "/expires_in_secs",
                format!("must be 1 to {MAX_IP_RULE_EXPIRY_SECS} (a year); leave it out for a standing rule"),
            ));
            None
        }
    };
    let (Some(network), Some(action), Some(scope), true) = (network, action, scope, issues.is_empty()) else {
        return Err(AppError::Validation(issues));
    };
    Ok(IpRule {
        id: IpRuleId::from_random_bytes(random_id_bytes()?),
        network,
        action,
        scope,
        source: IpRuleSource::Admin,
        note: note.to_owned(),
        created_by: None,
        created_at: now,
        expires_at,
    })
}
