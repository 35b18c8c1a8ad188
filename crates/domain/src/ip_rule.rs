//! IP rules: allow and deny lists of networks for every route (scope global) or for the
//! administration API (scope admin), and the one pure decision every request goes through.
//!
//! The decision, in the order it is taken (expired rules never apply):
//! 1. A live global **deny** rule covering the address refuses it, whatever allows it: deny wins
//!    over allow, not the longest prefix (unlike nginx's first-match `allow`/`deny` lists, the order
//!    of rules never matters, so a rule added later cannot silently reopen a blocked address).
//! 2. When at least one live global **allow** rule exists, only the networks they cover get in
//!    (allowlist mode); with none, every address not denied gets in.
//! 3. On `/v1/admin/*` only: a live admin-scope deny rule refuses the address, and when at least one
//!    live admin-scope allow rule exists, only the networks they cover reach the administration API
//!    (an allowlist that restricts further; it never admits an address the global rules refuse).
//!
//! Addresses are compared in canonical form: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a
//! dual-stack socket reports an IPv4 client) is judged as the IPv4 address it carries, so an IPv4
//! rule cannot be dodged by the address family the connection arrived on.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use uuid::Uuid;

use crate::{Timestamp, UserId};

/// The most rules an administrator may hold at once (detection blocks are counted apart).
pub const MAX_ADMIN_IP_RULES: usize = 1000;
/// The most automatic blocks held at once.
pub const MAX_DETECTION_IP_RULES: usize = 10_000;
/// The longest note on a rule, in characters.
pub const MAX_IP_RULE_NOTE_CHARS: usize = 200;

/// One rule's identifier: a random UUID (config rules get a stable one derived from their content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRuleId(Uuid);

impl IpRuleId {
    /// A new identifier from 16 random bytes supplied by the caller (randomness is an input).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Parses the hyphenated text form only (one id, one spelling).
    pub fn parse(text: &str) -> Result<Self, crate::InvalidId> {
        if text.len() != 36 {
            return Err(crate::InvalidId);
        }
        Uuid::try_parse(text).map(Self).map_err(|_| crate::InvalidId)
    }
}

impl fmt::Display for IpRuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// What a rule does to the addresses it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpRuleAction {
    Allow,
    Deny,
}

impl IpRuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IpRuleAction::Allow => "allow",
            IpRuleAction::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(IpRuleAction::Allow),
            "deny" => Some(IpRuleAction::Deny),
            _ => None,
        }
    }
}

/// Which routes a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpRuleScope {
    /// Every route (the health probes excepted).
    Global,
    /// `/v1/admin/*` only.
    Admin,
}

impl IpRuleScope {
    pub fn as_str(self) -> &'static str {
        match self {
            IpRuleScope::Global => "global",
            IpRuleScope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "global" => Some(IpRuleScope::Global),
            "admin" => Some(IpRuleScope::Admin),
            _ => None,
        }
    }
}

/// Who made a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpRuleSource {
    /// An administrator, through the API.
    Admin,
    /// A detection rule (an automatic block; always expires).
    Detection,
    /// The configuration file: fixed, never stored, not editable through the API.
    Config,
}

impl IpRuleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            IpRuleSource::Admin => "admin",
            IpRuleSource::Detection => "detection",
            IpRuleSource::Config => "config",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(IpRuleSource::Admin),
            "detection" => Some(IpRuleSource::Detection),
            "config" => Some(IpRuleSource::Config),
            _ => None,
        }
    }
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    pub id: IpRuleId,
    /// Canonical: no host bits set (`10.0.0.0/8`, never `10.0.0.1/8`).
    pub network: IpNet,
    pub action: IpRuleAction,
    pub scope: IpRuleScope,
    pub source: IpRuleSource,
    /// Why it exists (an administrator's words, or the detection rule's reason).
    pub note: String,
    /// The administrator who made it (none for detection and config rules).
    pub created_by: Option<UserId>,
    pub created_at: Timestamp,
    /// When it stops applying; none for a standing rule.
    pub expires_at: Option<Timestamp>,
}

impl IpRule {
    /// Whether the rule applies at `now` (it has no expiry, or it has not been reached).
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|expiry| now < expiry)
    }
}

/// Text that is not a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an IPv4 or IPv6 address or CIDR network, such as 192.0.2.0/24 or 2001:db8::/32")]
pub struct InvalidNetwork;

/// Parses a network in CIDR notation, or a single address (as a /32 or /128), and returns it in
/// canonical form: host bits cleared (`10.0.0.1/8` is `10.0.0.0/8`), an IPv4-mapped IPv6 network
/// (`::ffff:192.0.2.0/120`) as the IPv4 network it covers.
pub fn parse_network(text: &str) -> Result<IpNet, InvalidNetwork> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return Err(InvalidNetwork);
    }
    let network = match text.parse::<IpNet>() {
        Ok(network) => network,
        Err(_) => IpNet::from(text.parse::<IpAddr>().map_err(|_| InvalidNetwork)?),
    };
    Ok(canonical(network))
}

/// A network with host bits cleared, IPv4-mapped IPv6 as IPv4.
pub fn canonical(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(net.trunc());
    }
    network.trunc()
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpDenial {
    /// A global deny rule covers it.
    Denied,
    /// Global allow rules exist and none covers it.
    NotAllowed,
    /// An admin-scope deny rule covers it (administration routes only).
    AdminDenied,
    /// Admin allow rules exist and none covers it (administration routes only).
    AdminNotAllowed,
}

impl IpDenial {
    /// The name in security event details.
    pub fn as_str(self) -> &'static str {
        match self {
            IpDenial::Denied => "deny_rule",
            IpDenial::NotAllowed => "not_on_allowlist",
            IpDenial::AdminDenied => "admin_deny_rule",
            IpDenial::AdminNotAllowed => "not_on_admin_allowlist",
        }
    }
}

/// Networks with the time each stops applying (`None`: never).
type Entries = Vec<(IpNet, Option<Timestamp>)>;

/// Every rule in force, arranged for the per-request decision: single addresses denied (what
/// detection blocks are) in a map, everything else in short lists.
#[derive(Debug, Clone, Default)]
pub struct IpRuleSet {
    deny_hosts: HashMap<IpAddr, Option<Timestamp>>,
    deny: Entries,
    allow: Entries,
    admin_deny: Entries,
    admin_allow: Entries,
}

impl IpRuleSet {
    /// The set of `rules` (expired ones are kept out as of no time: the decision checks expiry).
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a IpRule>) -> Self {
        let mut set = Self::default();
        for rule in rules {
            let network = canonical(rule.network);
            let entry = (network, rule.expires_at);
            match (rule.scope, rule.action) {
                (IpRuleScope::Global, IpRuleAction::Deny)
                    if network.prefix_len() == network.max_prefix_len() =>
                {
                    // Keep the latest expiry of duplicate blocks; a standing one (None) wins.
                    let slot = set.deny_hosts.entry(network.addr()).or_insert(rule.expires_at);
                    *slot = match (*slot, rule.expires_at) {
                        (None, _) | (_, None) => None,
                        (Some(a), Some(b)) => Some(a.max(b)),
                    };
                }
                (IpRuleScope::Global, IpRuleAction::Deny) => set.deny.push(entry),
                (IpRuleScope::Global, IpRuleAction::Allow) => set.allow.push(entry),
                (IpRuleScope::Admin, IpRuleAction::Deny) => set.admin_deny.push(entry),
                (IpRuleScope::Admin, IpRuleAction::Allow) => set.admin_allow.push(entry),
            }
        }
        set
    }

    /// Whether `ip` may make a request at `now`, to an administration route when `admin_route`.
    pub fn decide(&self, ip: IpAddr, admin_route: bool, now: Timestamp) -> Result<(), IpDenial> {
        let ip = ip.to_canonical();
        let live = |expiry: &Option<Timestamp>| expiry.is_none_or(|e| now < e);
        let covers = |entries: &Entries| entries.iter().any(|(net, exp)| live(exp) && net.contains(&ip));
        let any_live = |entries: &Entries| entries.iter().any(|(_, exp)| live(exp));
        if self.deny_hosts.get(&ip).is_some_and(live) || covers(&self.deny) {
            return Err(IpDenial::Denied);
        }
        if any_live(&self.allow) && !covers(&self.allow) {
            return Err(IpDenial::NotAllowed);
        }
        if admin_route {
            if covers(&self.admin_deny) {
                return Err(IpDenial::AdminDenied);
            }
            if any_live(&self.admin_allow) && !covers(&self.admin_allow) {
                return Err(IpDenial::AdminNotAllowed);
            }
        }
        Ok(())
    }

    /// How many entries the set holds.
    pub fn len(&self) -> usize {
        self.deny_hosts.len()
            + self.deny.len()
            + self.allow.len()
            + self.admin_deny.len()
            + self.admin_allow.len()
    }

    /// Whether the set holds no rule at all (the common case: the decision is then free).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(network: &str, action: IpRuleAction, scope: IpRuleScope, expires_at: Option<i64>) -> IpRule {
        IpRule {
            id: IpRuleId::from_random_bytes([1; 16]),
            network: parse_network(network).unwrap(),
            action,
            scope,
            source: IpRuleSource::Admin,
            note: String::new(),
            created_by: None,
            created_at: Timestamp::from_unix_millis(0),
            expires_at: expires_at.map(Timestamp::from_unix_millis),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const NOW: Timestamp = Timestamp::from_unix_millis(1_000);

    #[test]
    fn networks_are_canonical_and_single_addresses_are_host_networks() {
        assert_eq!(parse_network("10.0.0.1/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_network("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_network("2001:db8::1/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse_network("::ffff:192.0.2.9/120").unwrap().to_string(), "192.0.2.0/24");
        for bad in ["", "10.0.0.0/33", "banana", "10.0.0.0/8/8", "::/129", "1.2.3"] {
            assert_eq!(parse_network(bad), Err(InvalidNetwork), "{bad:?}");
        }
    }

    #[test]
    fn deny_wins_over_allow_and_allow_rules_make_an_allowlist() {
        use IpRuleAction::*;
        use IpRuleScope::*;
        let set = IpRuleSet::new(&[
            rule("10.0.0.0/8", Allow, Global, None),
            rule("10.1.2.3", Deny, Global, None),
            rule("10.9.0.0/16", Deny, Global, None),
        ]);
        assert_eq!(set.decide(ip("10.0.0.1"), false, NOW), Ok(()));
        assert_eq!(set.decide(ip("10.1.2.3"), false, NOW), Err(IpDenial::Denied));
        assert_eq!(set.decide(ip("10.9.9.9"), false, NOW), Err(IpDenial::Denied));
        assert_eq!(set.decide(ip("192.0.2.1"), false, NOW), Err(IpDenial::NotAllowed));
        assert_eq!(set.decide(ip("::ffff:10.1.2.3"), false, NOW), Err(IpDenial::Denied));
        assert_eq!(IpRuleSet::default().decide(ip("192.0.2.1"), true, NOW), Ok(()));
    }

    #[test]
    fn the_admin_allowlist_restricts_only_admin_routes_and_expired_rules_never_apply() {
        use IpRuleAction::*;
        use IpRuleScope::*;
        let set = IpRuleSet::new(&[
            rule("192.0.2.0/24", Allow, Admin, None),
            rule("198.51.100.7", Deny, Global, Some(1_000)),
            rule("2001:db8::/32", Allow, Global, Some(500)),
        ]);
        assert_eq!(set.decide(ip("203.0.113.1"), false, NOW), Ok(()));
        assert_eq!(set.decide(ip("203.0.113.1"), true, NOW), Err(IpDenial::AdminNotAllowed));
        assert_eq!(set.decide(ip("192.0.2.1"), true, NOW), Ok(()));
        assert_eq!(
            set.decide(ip("198.51.100.7"), false, Timestamp::from_unix_millis(999)),
            Err(IpDenial::Denied)
        );
        assert_eq!(set.decide(ip("198.51.100.7"), false, NOW), Ok(()));
    }
}
