//! API keys and service accounts: issuing, listing, rotating and revoking keys for people (their own)
//! and for service accounts (their administrators'), authenticating a presented key, and the service
//! accounts themselves.
//!
//! A key's rights are its owner's current grants narrowed to the key's scopes
//! ([`portcullis_domain::narrow`]), computed at every use: a key never outlives a right its owner
//! lost. A key is checked in this order, cheapest first, so a forged or mistyped key costs no
//! database read: shape and checksum, then the row (cached per node for [`KEY_CACHE_MILLIS`]), then
//! the secret's digest in constant time, revocation, expiry and the allowed networks, then the owner
//! (active, and still holding what the key is used for).
//!
//! Whatever mints or revives a credential (issuing or rotating a key, creating a service account or
//! changing its role or status) needs a login session: an API key cannot, however scoped, so a stolen
//! key cannot make itself a successor that outlives its revocation.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use portcullis_domain::{
    ApiKey, ApiKeyId, BuiltinRole, CustomRole, DisplayName, Grant, KeyOwner, KeyRefusal, MAX_KEY_CIDRS,
    MAX_KEY_SCOPES, OrganizationId, Permission, Resource, SecurityEventKind, ServiceAccount, Timestamp,
    TokenHash, UserId, format_api_key, holds_all, narrow, parse_api_key,
};
use portcullis_store::{PiiTable, StoreError, StoreTx};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::AuditEntry;
use crate::keys::Place;
use crate::organizations::{check_in, in_org, may_give_in, page_limit};
use crate::secret_token::random_id_bytes;
use crate::{App, AppError, ClientContext, Credential, FieldIssue, Principal, PrincipalKind};

/// How long a node trusts a key row it read (revocation elsewhere shows within this time; on the
/// node that revokes, at once).
pub const KEY_CACHE_MILLIS: i64 = 2_000;

/// A key's `last_used_at` and ip are written at most this often per key and node.
pub const KEY_USE_RECORD_MILLIS: i64 = 60_000;

const CACHE_MAX: usize = 10_000;
const DAY_MILLIS: i64 = 86_400_000;

/// Limits on keys, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeySettings {
    /// The longest lifetime a new key may ask for.
    pub max_lifetime_days: u32,
    /// How long the previous secret keeps working after a rotation.
    pub rotation_grace_secs: u32,
    /// Most keys one owner holds that are neither revoked nor expired.
    pub max_live_per_owner: u64,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self { max_lifetime_days: 365, rotation_grace_secs: 24 * 3600, max_live_per_owner: 100 }
    }
}

/// A key to issue, as submitted.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub name: String,
    /// `resource:action` permissions (wildcards allowed), each held by the owner.
    pub scopes: Vec<String>,
    /// Days from now until the key stops working: 1 to the configured maximum.
    pub expires_in_days: u32,
    /// IPv4 or IPv6 networks (or single addresses) the key may be used from; empty means anywhere.
    pub allowed_cidrs: Vec<String>,
}

/// A key just issued or rotated: its full text, shown exactly once.
#[derive(Debug)]
pub struct IssuedApiKey {
    pub key: ApiKey,
    pub secret: SecretString,
}

/// A key as its owner or an administrator sees it: metadata and public id, never key material.
#[derive(Debug, Clone)]
pub struct ApiKeySummary {
    pub key: ApiKey,
    pub last_used_ip: Option<String>,
}

/// A change to a service account; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountChange {
    pub name: Option<String>,
    pub role: Option<BuiltinRole>,
    pub active: Option<bool>,
    /// The ids of its organization's custom roles it is to hold, replacing those it holds.
    pub custom_roles: Option<Vec<String>>,
}

/// A service account with the custom roles it holds, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountDetails {
    pub account: ServiceAccount,
    pub custom_roles: Vec<CustomRole>,
}

/// What the introspection endpoint says about a token (RFC 7662 section 2.2). An inactive answer
/// carries nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Introspection {
    pub active: bool,
    pub sub: Option<String>,
    pub scope: Option<String>,
    pub exp: Option<i64>,
    pub iat: Option<i64>,
    pub client_id: Option<String>,
    /// `Bearer` for an access token, `api_key` for an API key.
    pub token_type: Option<&'static str>,
    pub iss: Option<String>,
    pub aud: Option<String>,
}

/// Keys this node verified recently, and when it last recorded each one's use.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    rows: Mutex<HashMap<ApiKeyId, (ApiKey, Timestamp)>>,
    recorded: Mutex<HashMap<ApiKeyId, Timestamp>>,
    /// Service accounts with their grants, like the profile cache for people.
    accounts: Mutex<HashMap<UserId, CachedAccount>>,
}

/// A service account, its grants, and when this node read it.
type CachedAccount = (ServiceAccount, Arc<[Grant]>, Timestamp);

fn fresh(read_at: Timestamp, now: Timestamp) -> bool {
    now.as_unix_millis() - read_at.as_unix_millis() < KEY_CACHE_MILLIS
}

fn bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.len() >= CACHE_MAX {
        map.clear();
    }
}

impl KeyCache {
    fn row(&self, id: &ApiKeyId, now: Timestamp) -> Option<ApiKey> {
        let rows = self.rows.lock().ok()?;
        rows.get(id).filter(|(_, at)| fresh(*at, now)).map(|(key, _)| key.clone())
    }

    /// The scopes of a key this node verified, however long ago (the request that verified it is
    /// still running).
    fn scopes(&self, id: &ApiKeyId) -> Option<Vec<Permission>> {
        self.rows.lock().ok()?.get(id).map(|(key, _)| key.scopes.clone())
    }

    fn insert(&self, key: ApiKey, now: Timestamp) {
        if let Ok(mut rows) = self.rows.lock() {
            bounded(&mut rows);
            rows.insert(key.id, (key, now));
        }
    }

    pub(crate) fn forget(&self, id: &ApiKeyId) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.remove(id);
        }
    }

    /// Drops every cached key and service account (an owner's status or rights changed).
    pub(crate) fn clear(&self) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.clear();
        }
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.clear();
        }
    }

    /// Whether this use should be written down (at most once a minute per key on this node).
    fn should_record(&self, id: &ApiKeyId, now: Timestamp) -> bool {
        let Ok(mut recorded) = self.recorded.lock() else { return false };
        match recorded.get(id) {
            Some(at) if now.as_unix_millis() - at.as_unix_millis() < KEY_USE_RECORD_MILLIS => false,
            _ => {
                bounded(&mut recorded);
                recorded.insert(*id, now);
                true
            }
        }
    }

    fn account(&self, id: UserId, now: Timestamp) -> Option<(ServiceAccount, Arc<[Grant]>)> {
        let accounts = self.accounts.lock().ok()?;
        accounts.get(&id).filter(|(_, _, at)| fresh(*at, now)).map(|(a, g, _)| (a.clone(), g.clone()))
    }

    fn insert_account(&self, account: ServiceAccount, grants: Arc<[Grant]>, now: Timestamp) {
        if let Ok(mut accounts) = self.accounts.lock() {
            bounded(&mut accounts);
            accounts.insert(account.id, (account, grants, now));
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn same_digest(a: &TokenHash, b: &TokenHash) -> bool {
    a.0.ct_eq(&b.0).into()
}

fn parse_key_id(id: &str) -> Result<ApiKeyId, AppError> {
    ApiKeyId::parse(id).map_err(|_| AppError::NotFound)
}

fn parse_account_id(id: &str) -> Result<UserId, AppError> {
    UserId::parse(id).map_err(|_| AppError::NotFound)
}

/// A service account's grants: its built-in role's, narrowed to its organization, and those of the
/// custom roles it holds there.
fn account_grants(account: &ServiceAccount, roles: &[CustomRole]) -> Arc<[Grant]> {
    let mut grants = account.role.grants_in(account.organization);
    for grant in roles.iter().flat_map(CustomRole::grants) {
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }
    Arc::from(grants)
}

/// A service account's grants read in `tx`.
async fn account_grants_in(tx: &mut dyn StoreTx, account: &ServiceAccount) -> Result<Arc<[Grant]>, AppError> {
    let roles = tx.service_account_roles(account.id).await?;
    Ok(account_grants(account, &roles))
}

fn random_secret() -> Result<[u8; 32], AppError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AppError::Internal(Box::new(e)))?;
    Ok(bytes)
}

/// A single address is its own /32 or /128 network.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .map(|net| net.trunc())
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

impl App {
    fn key_settings(&self) -> ApiKeySettings {
        self.inner.settings.api_keys
    }

    /// Checks a new key's fields against the owner's grants and builds it (with a fresh secret).
    fn build_key(
        &self,
        owner: KeyOwner,
        owner_grants: &[Grant],
        new: &NewApiKey,
    ) -> Result<(ApiKey, SecretString), AppError> {
        let settings = self.key_settings();
        let mut issues = Vec::new();
        let name = DisplayName::parse(&new.name).map_err(|e| issues.push(FieldIssue::new("/name", e))).ok();
        if new.scopes.is_empty() || new.scopes.len() > MAX_KEY_SCOPES {
            issues.push(FieldIssue::new("/scopes", format!("must list 1 to {MAX_KEY_SCOPES} permissions")));
        }
        let mut scopes: Vec<Permission> = Vec::new();
        let mut beyond = Vec::new();
        for (n, text) in new.scopes.iter().take(MAX_KEY_SCOPES).enumerate() {
            match Permission::parse(text) {
                // "A subset of what the owner holds": some grant of the owner, at any scope, gives
                // everything the scope names.
                Ok(scope) if !owner_grants.iter().any(|g| g.permission.implies(&scope)) => {
                    beyond.push(scope.to_string());
                }
                Ok(scope) if !scopes.contains(&scope) => scopes.push(scope),
                Ok(_) => {}
                Err(e) => issues.push(FieldIssue::new("/scopes", format!("scope {}: {e}", n + 1))),
            }
        }
        if !(1..=settings.max_lifetime_days).contains(&new.expires_in_days) {
            issues.push(FieldIssue::new(
                "/expires_in_days",
                format!("must be 1 to {} days", settings.max_lifetime_days),
            ));
        }
        if new.allowed_cidrs.len() > MAX_KEY_CIDRS {
            issues.push(FieldIssue::new(
                "/allowed_cidrs",
                format!("must list at most {MAX_KEY_CIDRS} networks"),
            ));
        }
        let mut networks = Vec::new();
        for (n, text) in new.allowed_cidrs.iter().take(MAX_KEY_CIDRS).enumerate() {
            match parse_network(text) {
                Some(net) if !networks.contains(&net) => networks.push(net),
                Some(_) => {}
                None => issues.push(FieldIssue::new(
                    "/allowed_cidrs",
                    format!("network {}: must be an IPv4 or IPv6 address or CIDR", n + 1),
                )),
            }
        }
        let Some(name) = name.filter(|_| issues.is_empty()) else { return Err(AppError::Validation(issues)) };
        if !beyond.is_empty() {
            return Err(AppError::Forbidden(format!(
                "a key's scopes must be held by its owner, which does not hold {}",
                beyond.join(", ")
            )));
        }
        let now = self.now();
        let id = ApiKeyId::from_random_bytes(random_id_bytes()?);
        let secret = format_api_key(&id, random_secret()?);
        let presented = parse_api_key(&secret, sha256)
            .map_err(|_| AppError::Internal("a new key does not parse".into()))?;
        let key = ApiKey {
            id,
            owner,
            name,
            scopes,
            allowed_cidrs: networks,
            secret_hash: presented.secret_hash,
            previous: None,
            created_at: now,
            expires_at: Timestamp::from_unix_millis(
                now.as_unix_millis() + i64::from(new.expires_in_days) * DAY_MILLIS,
            ),
            revoked_at: None,
            last_used_at: None,
        };
        Ok((key, SecretString::from(secret)))
    }

    /// Stores a built key, within the owner's limit of live keys.
    async fn store_key(&self, tx: &mut dyn StoreTx, key: &ApiKey) -> Result<(), AppError> {
        let limit = self.key_settings().max_live_per_owner;
        if tx.count_live_api_keys_of(key.owner, key.created_at).await? >= limit {
            return Err(AppError::Forbidden(format!("an owner holds at most {limit} live API keys")));
        }
        tx.insert_api_key(key).await?;
        Ok(())
    }

    /// The keys of `owner`, newest first, with the ip of their last use opened.
    pub(crate) async fn summaries(
        &self,
        tx: &mut dyn StoreTx,
        owner: KeyOwner,
    ) -> Result<Vec<ApiKeySummary>, AppError> {
        let keys = tx.api_keys_of(owner).await?;
        let fields = &self.loaded_keys().fields;
        let mut summaries = Vec::with_capacity(keys.len());
        for key in keys {
            let row = key.id.to_string();
            let last_used_ip = match tx.api_key_last_ip(&key.id).await? {
                Some((sealed, _)) => Some(fields.open_text(
                    &sealed,
                    Place { table: PiiTable::ApiKeys.name(), column: "last_used_ip", row: &row },
                )?),
                None => None,
            };
            summaries.push(ApiKeySummary { key, last_used_ip });
        }
        Ok(summaries)
    }

    /// Rotates a key of `owner` (a new secret; the old one works for the grace period).
    async fn rotate_owned_key(
        &self,
        tx: &mut dyn StoreTx,
        owner: KeyOwner,
        id: &str,
    ) -> Result<IssuedApiKey, AppError> {
        let id = parse_key_id(id)?;
        let key = tx.api_key(&id).await?.filter(|k| k.owner == owner).ok_or(AppError::NotFound)?;
        let now = self.now();
        if key.revoked_at.is_some() || key.expires_at <= now {
            return Err(AppError::Forbidden("a revoked or expired key cannot be rotated".into()));
        }
        let text = format_api_key(&id, random_secret()?);
        let presented = parse_api_key(&text, sha256)
            .map_err(|_| AppError::Internal("a new key does not parse".into()))?;
        let grace = i64::from(self.key_settings().rotation_grace_secs) * 1000;
        let until = Timestamp::from_unix_millis(now.as_unix_millis() + grace);
        if !tx.rotate_api_key(&id, &presented.secret_hash, until).await? {
            return Err(AppError::NotFound);
        }
        let key =
            ApiKey { secret_hash: presented.secret_hash, previous: Some((key.secret_hash, until)), ..key };
        Ok(IssuedApiKey { key, secret: SecretString::from(text) })
    }

    /// Revokes a key of `owner`.
    async fn revoke_owned_key(
        &self,
        tx: &mut dyn StoreTx,
        owner: KeyOwner,
        id: &str,
    ) -> Result<ApiKeyId, AppError> {
        let id = parse_key_id(id)?;
        tx.api_key(&id).await?.filter(|k| k.owner == owner).ok_or(AppError::NotFound)?;
        tx.revoke_api_key(&id, self.now()).await?;
        Ok(id)
    }

    /// Issues a key for the caller's own account. Needs a login session (a key does not mint keys)
    /// and `apikeys:create` over the caller's own resources; every scope must be one the caller holds.
    pub async fn create_my_api_key(
        &self,
        principal: &Principal,
        new: &NewApiKey,
    ) -> Result<IssuedApiKey, AppError> {
        principal.require_session()?;
        let own = Resource { owner: Some(principal.user_id), organization: None };
        let grants = self.require(principal, "apikeys:create", own).await?;
        let (key, secret) = self.build_key(KeyOwner::User(principal.user_id), &grants, new)?;
        let mut tx = self.inner.store.begin().await?;
        self.store_key(tx.as_mut(), &key).await?;
        self.commit_audited(tx, [key_created(principal, &key)]).await?;
        tracing::info!(user = %principal.user_id, key = %key.id, "api key created");
        Ok(IssuedApiKey { key, secret })
    }

    /// The caller's own keys. Needs a login session.
    pub async fn list_my_api_keys(&self, principal: &Principal) -> Result<Vec<ApiKeySummary>, AppError> {
        principal.require_session()?;
        let mut tx = self.inner.store.begin_read().await?;
        let keys = self.summaries(tx.as_mut(), KeyOwner::User(principal.user_id)).await?;
        tx.rollback().await?;
        Ok(keys)
    }

    /// Revokes one of the caller's keys; another account's key is not found. Needs a login session.
    pub async fn revoke_my_api_key(&self, principal: &Principal, id: &str) -> Result<(), AppError> {
        principal.require_session()?;
        let mut tx = self.inner.store.begin().await?;
        let owner = KeyOwner::User(principal.user_id);
        let id = self.revoke_owned_key(tx.as_mut(), owner, id).await?;
        self.commit_audited(tx, [key_record(principal, "api_key.revoked", &id, owner)]).await?;
        self.inner.api_keys.forget(&id);
        tracing::info!(user = %principal.user_id, key = %id, "api key revoked");
        Ok(())
    }

    /// Gives one of the caller's keys a new secret. Needs a login session and `apikeys:create`.
    pub async fn rotate_my_api_key(&self, principal: &Principal, id: &str) -> Result<IssuedApiKey, AppError> {
        principal.require_session()?;
        let own = Resource { owner: Some(principal.user_id), organization: None };
        self.require(principal, "apikeys:create", own).await?;
        let mut tx = self.inner.store.begin().await?;
        let issued = self.rotate_owned_key(tx.as_mut(), KeyOwner::User(principal.user_id), id).await?;
        self.commit_audited(tx, [key_rotated(principal, &issued.key)]).await?;
        self.inner.api_keys.forget(&issued.key.id);
        tracing::info!(user = %principal.user_id, key = %issued.key.id, "api key rotated");
        Ok(issued)
    }

    /// The caller behind an API key (from `Authorization: Bearer` or `X-API-Key`), checked as the
    /// module documentation says. A key used from outside its networks records a security event.
    pub async fn authenticate_api_key(
        &self,
        text: &str,
        client: &ClientContext,
    ) -> Result<Principal, AppError> {
        let presented = parse_api_key(text, sha256).map_err(|_| AppError::Unauthenticated)?;
        let now = self.now();
        let key = match self.inner.api_keys.row(&presented.id, now) {
            Some(key) => key,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let key = tx.api_key(&presented.id).await?;
                tx.rollback().await?;
                let key = key.ok_or(AppError::Unauthenticated)?;
                self.inner.api_keys.insert(key.clone(), now);
                key
            }
        };
        let ip = client.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
        match key.admits(&presented.secret_hash, ip, now, same_digest) {
            Ok(()) => {}
            Err(KeyRefusal::OutsideAllowedNetworks) => {
                tracing::info!(key = %key.id, "api key used from outside its allowed networks");
                // The secret was right: the key acted, and was refused.
                let actor = portcullis_domain::Actor {
                    kind: portcullis_domain::ActorKind::ApiKey,
                    id: Some(key.id.to_string()),
                    on_behalf_of: Some(key.owner.id().to_string()),
                };
                let refused = AuditEntry::new("api_key.refused", actor)
                    .target("api_key", key.id)
                    .outcome(portcullis_domain::Outcome::Denied)
                    .detail("reason", "outside_allowed_networks");
                self.record_security_event_audited(
                    SecurityEventKind::ApiKeyOutsideAllowedNetworks,
                    Some(key.owner.id()),
                    None,
                    client.ip.as_deref(),
                    Default::default(),
                    [refused],
                )
                .await?;
                return Err(AppError::Forbidden("this API key may not be used from this address".into()));
            }
            Err(KeyRefusal::WrongSecret | KeyRefusal::Revoked | KeyRefusal::Expired) => {
                return Err(AppError::Unauthenticated);
            }
        }
        let principal = Principal {
            user_id: key.owner.id(),
            kind: match key.owner {
                KeyOwner::User(_) => PrincipalKind::Person,
                KeyOwner::ServiceAccount(_) => PrincipalKind::ServiceAccount,
            },
            credential: Credential::ApiKey(key.id),
            mfa_enrollment_required: false,
        };
        // The owner must be active now: a disabled person or service account stops its keys at once.
        self.owner_grants(&principal).await?;
        if self.inner.api_keys.should_record(&key.id, now) {
            self.record_key_use(&key.id, client.ip.as_deref(), now).await?;
        }
        Ok(principal)
    }

    async fn record_key_use(&self, id: &ApiKeyId, ip: Option<&str>, now: Timestamp) -> Result<(), AppError> {
        let keys = self.loaded_keys();
        let row = id.to_string();
        let place = Place { table: PiiTable::ApiKeys.name(), column: "last_used_ip", row: &row };
        let sealed = ip.map(|ip| keys.fields.seal(ip.as_bytes(), place)).transpose()?;
        let pii_key = sealed.as_ref().map(|_| keys.fields.active_pii_id()).transpose()?;
        let mut tx = self.inner.store.begin().await?;
        tx.record_api_key_use(id, now, sealed.as_ref(), pii_key).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The grants of the account behind a principal, before any key narrows them; refuses an account
    /// that is not active.
    pub(crate) async fn owner_grants(&self, principal: &Principal) -> Result<Arc<[Grant]>, AppError> {
        match principal.kind {
            PrincipalKind::Person => self.person_grants(principal).await,
            PrincipalKind::ServiceAccount => Ok(self.service_account_of(principal.user_id).await?.1),
        }
    }

    /// A service account and its grants, from this node's cache (2 s); refuses one that is missing or
    /// disabled.
    pub(crate) async fn service_account_of(
        &self,
        id: UserId,
    ) -> Result<(ServiceAccount, Arc<[Grant]>), AppError> {
        let now = self.now();
        let (account, grants) = match self.inner.api_keys.account(id, now) {
            Some(found) => found,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let account = tx.service_account(id).await?.ok_or(AppError::Unauthenticated)?;
                let grants = account_grants_in(tx.as_mut(), &account).await?;
                tx.rollback().await?;
                self.inner.api_keys.insert_account(account.clone(), grants.clone(), now);
                (account, grants)
            }
        };
        if !account.active {
            return Err(AppError::Unauthenticated);
        }
        Ok((account, grants))
    }

    /// What an API key principal may do: its owner's grants narrowed to the key's scopes.
    pub(crate) async fn key_grants(&self, id: &ApiKeyId, owner: &[Grant]) -> Result<Arc<[Grant]>, AppError> {
        let scopes = match self.inner.api_keys.scopes(id) {
            Some(scopes) => scopes,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let key = tx.api_key(id).await?;
                tx.rollback().await?;
                key.ok_or(AppError::Unauthenticated)?.scopes
            }
        };
        Ok(Arc::from(narrow(owner, &scopes)))
    }

    /// The caller's grants read in `tx` (under the accounts lock): a person's from the account, a
    /// service account's from its row, narrowed to a key's scopes when a key is used (and the key
    /// still live).
    pub(crate) async fn grants_in_tx(
        &self,
        tx: &mut dyn StoreTx,
        principal: &Principal,
    ) -> Result<Arc<[Grant]>, AppError> {
        let owner = match principal.kind {
            PrincipalKind::Person => {
                let profile = self
                    .read_profile(tx, principal.user_id)
                    .await?
                    .filter(|p| p.status == portcullis_domain::UserStatus::Active)
                    .ok_or(AppError::Unauthenticated)?;
                self.grants_for(&profile)
            }
            PrincipalKind::ServiceAccount => {
                let account = tx
                    .service_account(principal.user_id)
                    .await?
                    .filter(|a| a.active)
                    .ok_or(AppError::Unauthenticated)?;
                account_grants_in(tx, &account).await?
            }
        };
        match principal.credential {
            Credential::ApiKey(id) => {
                let now = self.now();
                let key = tx
                    .api_key(&id)
                    .await?
                    .filter(|k| k.revoked_at.is_none() && k.expires_at > now)
                    .ok_or(AppError::Unauthenticated)?;
                Ok(Arc::from(narrow(&owner, &key.scopes)))
            }
            Credential::Bearer(_) | Credential::Cookie(_) => Ok(owner),
        }
    }

    /// Creates a service account in an organization with a built-in role there. Needs
    /// `serviceaccounts:write` in the organization and every grant of the role there.
    pub async fn admin_create_service_account(
        &self,
        principal: &Principal,
        organization: &str,
        name: &str,
        role: BuiltinRole,
    ) -> Result<ServiceAccount, AppError> {
        principal.require_session()?;
        let org = OrganizationId::parse(organization)
            .map_err(|_| AppError::invalid("/organization", "is not an organization id"))?;
        let grants = self.grants_of(principal).await?;
        check_in(&grants, principal, "serviceaccounts:write", org).map_err(|e| match e {
            AppError::NotFound => AppError::invalid("/organization", "no such organization"),
            other => other,
        })?;
        self.step_up_for(principal, "serviceaccounts:write").await?;
        let name = DisplayName::parse(name).map_err(|e| AppError::invalid("/name", e))?;
        let now = self.now();
        let account = ServiceAccount {
            id: UserId::from_random_bytes(random_id_bytes()?),
            organization: org,
            name,
            role,
            active: true,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "serviceaccounts:write", in_org(org)).await?;
        may_give_in(&grants, role, org)?;
        if tx.organization(org).await?.is_none() {
            return Err(AppError::invalid("/organization", "no such organization"));
        }
        tx.insert_service_account(&account).await.map_err(|e| match e {
            StoreError::Conflict { .. } => {
                AppError::invalid("/name", "is taken by another service account of this organization")
            }
            other => other.into(),
        })?;
        let created = AuditEntry::by(principal, "service_account.created")
            .target("service_account", account.id)
            .organization(org)
            .detail("role", role.as_str());
        self.commit_audited(tx, [created]).await?;
        tracing::info!(admin = %principal.user_id, service_account = %account.id, "service account created");
        Ok(account)
    }

    /// Service accounts, a page at a time: of one organization (needs `serviceaccounts:read` there)
    /// or of all (needs it system-wide).
    pub async fn admin_list_service_accounts(
        &self,
        principal: &Principal,
        organization: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<ServiceAccount>, Option<String>), AppError> {
        let org = match organization {
            Some(text) => {
                let org = OrganizationId::parse(text).map_err(|_| AppError::NotFound)?;
                let grants = self.grants_of(principal).await?;
                check_in(&grants, principal, "serviceaccounts:read", org)?;
                Some(org)
            }
            None => {
                self.require(principal, "serviceaccounts:read", Resource::default()).await?;
                None
            }
        };
        let after = after
            .map(|a| {
                UserId::parse(a)
                    .map_err(|_| AppError::invalid("/after", "is not a cursor from a previous page"))
            })
            .transpose()?;
        let limit = page_limit(limit)?;
        let mut tx = self.inner.store.begin_read().await?;
        let mut accounts = tx.service_accounts(org, after, limit + 1).await?;
        tx.rollback().await?;
        let next = (accounts.len() > limit as usize).then(|| {
            accounts.truncate(limit as usize);
            accounts.last().map(|a| a.id.to_string())
        });
        Ok((accounts, next.flatten()))
    }

    /// A service account the caller may act on with `permission` in its organization: another
    /// tenant's, like a missing one, is not found.
    async fn visible_account(
        &self,
        principal: &Principal,
        id: &str,
        permission: &'static str,
    ) -> Result<ServiceAccount, AppError> {
        let id = parse_account_id(id)?;
        let mut tx = self.inner.store.begin_read().await?;
        let account = tx.service_account(id).await?;
        tx.rollback().await?;
        let account = account.ok_or(AppError::NotFound)?;
        let grants = self.grants_of(principal).await?;
        check_in(&grants, principal, permission, account.organization)?;
        self.step_up_for(principal, permission).await?;
        Ok(account)
    }

    /// One service account with the custom roles it holds. Needs `serviceaccounts:read` in its
    /// organization.
    pub async fn admin_get_service_account(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<ServiceAccountDetails, AppError> {
        let account = self.visible_account(principal, id, "serviceaccounts:read").await?;
        let mut tx = self.inner.store.begin_read().await?;
        let custom_roles = tx.service_account_roles(account.id).await?;
        tx.rollback().await?;
        Ok(ServiceAccountDetails { account, custom_roles })
    }

    /// Renames, re-roles, disables or enables a service account, or replaces the custom roles it holds.
    /// Needs `serviceaccounts:write` in its organization and every grant of its old and new built-in
    /// role there and of each custom role given or taken. Disabling stops its keys at once on this
    /// node and within 2 s on the others.
    pub async fn admin_update_service_account(
        &self,
        principal: &Principal,
        id: &str,
        change: &ServiceAccountChange,
    ) -> Result<ServiceAccountDetails, AppError> {
        principal.require_session()?;
        let account = self.visible_account(principal, id, "serviceaccounts:write").await?;
        let name = change
            .name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()
            .map_err(|e| AppError::invalid("/name", e))?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let org = account.organization;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "serviceaccounts:write", in_org(org)).await?;
        let current = tx.service_account(account.id).await?.ok_or(AppError::NotFound)?;
        for role in [Some(current.role), change.role].into_iter().flatten() {
            may_give_in(&grants, role, org)?;
        }
        let mut entries = Vec::new();
        let custom_roles = match &change.custom_roles {
            Some(wanted) => {
                let roles = self
                    .set_service_account_custom_roles(tx.as_mut(), &grants, org, current.id, wanted)
                    .await?;
                entries.extend(roles.audit(principal, "service_account", current.id, org));
                roles.held
            }
            None => tx.service_account_roles(current.id).await?,
        };
        let mut updated_entry = AuditEntry::by(principal, "service_account.updated")
            .target("service_account", current.id)
            .organization(org);
        let updated = ServiceAccount {
            name: name.unwrap_or_else(|| current.name.clone()),
            role: change.role.unwrap_or(current.role),
            active: change.active.unwrap_or(current.active),
            updated_at: self.now(),
            ..current.clone()
        };
        let mut fields = Vec::new();
        if updated.name != current.name {
            fields.push("name");
        }
        if updated.role != current.role {
            fields.push("role");
            updated_entry = updated_entry
                .detail("role_from", current.role.as_str())
                .detail("role_to", updated.role.as_str());
        }
        if updated.active != current.active {
            fields.push("active");
            updated_entry = updated_entry.detail("active", updated.active);
        }
        if !fields.is_empty() {
            entries.push(updated_entry.detail("fields", fields));
        }
        if !tx.update_service_account(&updated).await.map_err(|e| match e {
            StoreError::Conflict { .. } => {
                AppError::invalid("/name", "is taken by another service account of this organization")
            }
            other => other.into(),
        })? {
            return Err(AppError::NotFound);
        }
        self.commit_audited(tx, entries).await?;
        self.inner.api_keys.clear();
        tracing::info!(admin = %principal.user_id, service_account = %updated.id, active = updated.active, "service account changed");
        Ok(ServiceAccountDetails { account: updated, custom_roles })
    }

    /// Deletes a service account and its keys. Needs `serviceaccounts:write` in its organization and
    /// every grant of its role there.
    pub async fn admin_delete_service_account(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), AppError> {
        let account = self.visible_account(principal, id, "serviceaccounts:write").await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let org = account.organization;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "serviceaccounts:write", in_org(org)).await?;
        let current = tx.service_account(account.id).await?.ok_or(AppError::NotFound)?;
        may_give_in(&grants, current.role, org)?;
        if !holds_all(&grants, &account_grants_in(tx.as_mut(), &current).await?) {
            return Err(AppError::Forbidden(
                "only someone holding every permission of a service account can delete it".into(),
            ));
        }
        tx.delete_service_account(current.id).await?;
        let deleted = AuditEntry::by(principal, "service_account.deleted")
            .target("service_account", current.id)
            .organization(org)
            .detail("role", current.role.as_str());
        self.commit_audited(tx, [deleted]).await?;
        self.inner.api_keys.clear();
        tracing::info!(admin = %principal.user_id, service_account = %current.id, "service account deleted");
        Ok(())
    }

    /// Issues a key for a service account. Needs `serviceaccounts:write` in its organization and every
    /// grant the service account holds (issuing a key is acting as it); scopes within its grants.
    pub async fn admin_create_service_account_key(
        &self,
        principal: &Principal,
        id: &str,
        new: &NewApiKey,
    ) -> Result<IssuedApiKey, AppError> {
        principal.require_session()?;
        let account = self.visible_account(principal, id, "serviceaccounts:write").await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let org = account.organization;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "serviceaccounts:write", in_org(org)).await?;
        let current = tx.service_account(account.id).await?.ok_or(AppError::NotFound)?;
        let theirs = account_grants_in(tx.as_mut(), &current).await?;
        if !holds_all(&grants, &theirs) {
            return Err(AppError::Forbidden(
                "only someone holding every permission of a service account can issue its keys".into(),
            ));
        }
        let (key, secret) = self.build_key(KeyOwner::ServiceAccount(current.id), &theirs, new)?;
        self.store_key(tx.as_mut(), &key).await?;
        self.commit_audited(tx, [key_created(principal, &key).organization(org)]).await?;
        tracing::info!(admin = %principal.user_id, service_account = %current.id, key = %key.id, "api key created");
        Ok(IssuedApiKey { key, secret })
    }

    /// A service account's keys. Needs `serviceaccounts:read` in its organization.
    pub async fn admin_list_service_account_keys(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Vec<ApiKeySummary>, AppError> {
        let account = self.visible_account(principal, id, "serviceaccounts:read").await?;
        let mut tx = self.inner.store.begin_read().await?;
        let keys = self.summaries(tx.as_mut(), KeyOwner::ServiceAccount(account.id)).await?;
        tx.rollback().await?;
        Ok(keys)
    }

    /// Revokes a service account's key. Needs `serviceaccounts:write` in its organization.
    pub async fn admin_revoke_service_account_key(
        &self,
        principal: &Principal,
        id: &str,
        key: &str,
    ) -> Result<(), AppError> {
        let account = self.visible_account(principal, id, "serviceaccounts:write").await?;
        let mut tx = self.inner.store.begin().await?;
        let owner = KeyOwner::ServiceAccount(account.id);
        let key = self.revoke_owned_key(tx.as_mut(), owner, key).await?;
        let revoked =
            key_record(principal, "api_key.revoked", &key, owner).organization(account.organization);
        self.commit_audited(tx, [revoked]).await?;
        self.inner.api_keys.forget(&key);
        tracing::info!(admin = %principal.user_id, service_account = %account.id, key = %key, "api key revoked");
        Ok(())
    }

    /// Gives a service account's key a new secret. Needs what issuing one needs.
    pub async fn admin_rotate_service_account_key(
        &self,
        principal: &Principal,
        id: &str,
        key: &str,
    ) -> Result<IssuedApiKey, AppError> {
        principal.require_session()?;
        let account = self.visible_account(principal, id, "serviceaccounts:write").await?;
        let mut tx = self.inner.store.begin().await?;
        tx.lock_users().await?;
        let org = account.organization;
        let grants =
            self.caller_under_lock(tx.as_mut(), principal, "serviceaccounts:write", in_org(org)).await?;
        let current = tx.service_account(account.id).await?.ok_or(AppError::NotFound)?;
        if !holds_all(&grants, &account_grants_in(tx.as_mut(), &current).await?) {
            return Err(AppError::Forbidden(
                "only someone holding every permission of a service account can rotate its keys".into(),
            ));
        }
        let issued = self.rotate_owned_key(tx.as_mut(), KeyOwner::ServiceAccount(current.id), key).await?;
        self.commit_audited(tx, [key_rotated(principal, &issued.key).organization(org)]).await?;
        self.inner.api_keys.forget(&issued.key.id);
        tracing::info!(admin = %principal.user_id, service_account = %current.id, key = %issued.key.id, "api key rotated");
        Ok(issued)
    }

    /// RFC 7662 introspection for a service account holding `tokens:introspect` in its organization,
    /// authenticated with one of its keys. An access token or an API key of someone in that
    /// organization that would authenticate now is active; anything else (revoked, expired,
    /// malformed, unknown, a disabled owner, another organization's) is only `{active: false}`. An API key's allowed networks restrict where it is used from, not who
    /// introspects it, so they are not checked here.
    pub async fn introspect(&self, principal: &Principal, token: &str) -> Result<Introspection, AppError> {
        if principal.kind != PrincipalKind::ServiceAccount
            || !matches!(principal.credential, Credential::ApiKey(_))
        {
            return Err(AppError::Forbidden(
                "introspection is for service accounts, with one of their keys".into(),
            ));
        }
        let (account, _) = self.service_account_of(principal.user_id).await?;
        self.require(principal, "tokens:introspect", in_org(account.organization)).await?;
        let Some(answer) = self.introspect_token(token).await else { return Ok(Introspection::default()) };
        // Tenant isolation: only tokens and keys of the caller's own organization (its members and
        // service accounts) are described; anyone else's look like unknown ones.
        let owner = answer.sub.as_deref().and_then(|sub| UserId::parse(sub).ok());
        match owner {
            Some(owner) if self.belongs_to(owner, account.organization).await? => Ok(answer),
            _ => Ok(Introspection::default()),
        }
    }

    /// Whether an account (a person's or a service account's) belongs to `organization`.
    async fn belongs_to(&self, owner: UserId, organization: OrganizationId) -> Result<bool, AppError> {
        let mut tx = self.inner.store.begin_read().await?;
        let member = tx.membership(organization, owner).await?.is_some();
        let account = if member { None } else { tx.service_account(owner).await? };
        tx.rollback().await?;
        Ok(member || account.is_some_and(|a| a.organization == organization))
    }

    /// The answer for one token; `None` for anything inactive.
    async fn introspect_token(&self, token: &str) -> Option<Introspection> {
        let now = self.now();
        if portcullis_domain::looks_like_api_key(token) {
            let presented = parse_api_key(token, sha256).ok()?;
            let mut tx = self.inner.store.begin_read().await.ok()?;
            let key = tx.api_key(&presented.id).await.ok()??;
            tx.rollback().await.ok()?;
            match key.admits(&presented.secret_hash, None, now, same_digest) {
                Ok(()) | Err(KeyRefusal::OutsideAllowedNetworks) => {}
                Err(_) => return None,
            }
            let owner = Principal {
                user_id: key.owner.id(),
                kind: match key.owner {
                    KeyOwner::User(_) => PrincipalKind::Person,
                    KeyOwner::ServiceAccount(_) => PrincipalKind::ServiceAccount,
                },
                credential: Credential::ApiKey(key.id),
                mfa_enrollment_required: false,
            };
            self.owner_grants(&owner).await.ok()?;
            return Some(Introspection {
                active: true,
                sub: Some(key.owner.id().to_string()),
                scope: Some(key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")),
                exp: Some(key.expires_at.as_unix_millis() / 1000),
                iat: Some(key.created_at.as_unix_millis() / 1000),
                client_id: Some(key.id.to_string()),
                token_type: Some("api_key"),
                iss: Some(self.inner.settings.tokens.issuer.clone()),
                aud: None,
            });
        }
        let principal = self.authenticate_bearer(token).ok()?;
        // A session that must still enroll a second factor is no login a resource server should
        // honour: it may only enroll one, here.
        if principal.mfa_enrollment_required {
            return None;
        }
        // The account must still be active (its sessions end when it is disabled; this also covers
        // the moments before that revocation reaches this node).
        self.person_grants(&principal).await.ok()?;
        let claims = self.loaded_keys().signing.verify(token, &self.inner.settings.tokens, now).ok()?;
        Some(Introspection {
            active: true,
            sub: Some(claims.sub),
            scope: None,
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            client_id: None,
            token_type: Some("Bearer"),
            iss: Some(claims.iss),
            aud: Some(claims.aud),
        })
    }
}

/// An audit record about a key: its public id as the target and its owner, never any secret.
fn key_record(principal: &Principal, action: &str, id: &ApiKeyId, owner: KeyOwner) -> AuditEntry {
    let (kind, owner) = match owner {
        KeyOwner::User(id) => ("user", id),
        KeyOwner::ServiceAccount(id) => ("service_account", id),
    };
    AuditEntry::by(principal, action)
        .target("api_key", id)
        .detail("owner_type", kind)
        .detail("owner_id", owner.to_string())
}

/// `api_key.created`: what the key may do, from where (how many networks) and until when.
fn key_created(principal: &Principal, key: &ApiKey) -> AuditEntry {
    key_record(principal, "api_key.created", &key.id, key.owner)
        .detail("scopes", key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>())
        .detail("expires_at", key.expires_at.to_rfc3339())
        .detail("allowed_networks", key.allowed_cidrs.len())
}

/// `api_key.rotated`: until when the previous secret still works.
fn key_rotated(principal: &Principal, key: &ApiKey) -> AuditEntry {
    let entry = key_record(principal, "api_key.rotated", &key.id, key.owner);
    match key.previous {
        Some((_, until)) => entry.detail("previous_valid_until", until.to_rfc3339()),
        None => entry,
    }
}
