//! Rate limits: GCRA budgets from config, kept in process (governor) or shared by every node through
//! Redis, with one semantics.
//!
//! A policy allows `limit` requests per `period`, as a burst: a fresh key may spend all of them at
//! once, and the budget refills one request every `period / limit` (the generic cell rate
//! algorithm, ITU-T I.371; the "theoretical arrival time" is the only state per key). A key whose
//! budget is full again holds no state: the in-process store drops it on the next sweep and Redis
//! lets it expire, so a flood of distinct keys costs memory only for the keys of the last period.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use portcullis_domain::{ApiKeyId, Timestamp, UserId};
use secrecy::SecretString;

use crate::Clock;

/// Which budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RatePolicyKind {
    /// Every request of one client address (probes excepted).
    Ip,
    /// Requests of one client address to the routes that prove who someone is (login, signup,
    /// password reset, email verification, setup): the guessing surface.
    AuthIp,
    /// Attempts naming one account identifier (the address tried at login, signup or reset, known
    /// or not), from any client address: what a distributed guesser shares.
    Account,
    /// Requests of one signed-in person or service account, from any address.
    Principal,
    /// Requests made with one API key, from any address.
    ApiKey,
    /// Password-reset mails to one address (over budget, nothing is sent and the answer is the
    /// same): the reset itself is never refused, its mail cannot be used to flood an inbox.
    ResetMail,
}

impl RatePolicyKind {
    /// Every policy, for settings and sweeps.
    pub const ALL: [RatePolicyKind; 6] = [
        RatePolicyKind::Ip,
        RatePolicyKind::AuthIp,
        RatePolicyKind::Account,
        RatePolicyKind::Principal,
        RatePolicyKind::ApiKey,
        RatePolicyKind::ResetMail,
    ];

    /// The name in config, in security events and in the Redis key.
    pub fn as_str(self) -> &'static str {
        match self {
            RatePolicyKind::Ip => "ip",
            RatePolicyKind::AuthIp => "auth_ip",
            RatePolicyKind::Account => "account",
            RatePolicyKind::Principal => "principal",
            RatePolicyKind::ApiKey => "api_key",
            RatePolicyKind::ResetMail => "reset_mail",
        }
    }
}

/// `limit` requests per `period`, all of them usable at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    pub limit: u32,
    pub period: Duration,
}

impl RatePolicy {
    /// `limit` a minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self { limit, period: Duration::from_secs(60) }
    }

    /// The time one request's worth of budget takes to come back.
    fn emission_interval(&self) -> Duration {
        self.period / self.limit.max(1)
    }
}

/// What happens to requests when the shared (Redis) store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Serve them unlimited, with an error in the log and the failure counted: availability first.
    #[default]
    Open,
    /// Refuse them (503 with `Retry-After`): no request goes unmetered.
    Closed,
}

/// Where budgets are kept.
#[derive(Debug, Clone, Default)]
pub enum RateLimitBackendSettings {
    /// In this process: each node has its own budgets.
    #[default]
    Local,
    /// In Redis, shared by every node pointing at it.
    Redis {
        /// `redis://[user:password@]host[:port][/db]`; a secret, because it may carry a password.
        url: SecretString,
        /// Prepended to every key, so that several installations can share one Redis.
        prefix: String,
        on_failure: FailureMode,
    },
}

/// The rate limit configuration.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Off only for benchmarks and tests of other things; production refuses to start without.
    pub enabled: bool,
    pub ip: RatePolicy,
    pub auth_ip: RatePolicy,
    pub account: RatePolicy,
    pub principal: RatePolicy,
    pub api_key: RatePolicy,
    pub reset_mail: RatePolicy,
    /// Client networks whose address-keyed budgets are not applied (an application's servers that
    /// call the check API for all their users from one address); account, principal and key budgets
    /// still are.
    pub exempt_networks: Vec<IpNet>,
    pub backend: RateLimitBackendSettings,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            // The checklist's figure for every route.
            ip: RatePolicy::per_minute(100),
            auth_ip: RatePolicy::per_minute(10),
            account: RatePolicy::per_minute(5),
            principal: RatePolicy::per_minute(300),
            api_key: RatePolicy::per_minute(600),
            reset_mail: RatePolicy { limit: 3, period: Duration::from_secs(3600) },
            exempt_networks: Vec::new(),
            backend: RateLimitBackendSettings::Local,
        }
    }
}

impl RateLimitSettings {
    /// The policy of a kind.
    pub fn policy(&self, kind: RatePolicyKind) -> RatePolicy {
        match kind {
            RatePolicyKind::Ip => self.ip,
            RatePolicyKind::AuthIp => self.auth_ip,
            RatePolicyKind::Account => self.account,
            RatePolicyKind::Principal => self.principal,
            RatePolicyKind::ApiKey => self.api_key,
            RatePolicyKind::ResetMail => self.reset_mail,
        }
    }
}

/// Whose budget: an address, the blind index of an account identifier (never the address itself),
/// or the id of a principal or a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    Ip(IpAddr),
    Subject([u8; 32]),
    User(UserId),
    ApiKey(ApiKeyId),
}

impl RateKey {
    /// A compact, stable text form for the Redis key (no personal data in clear beyond the
    /// address, which Redis holds only until the budget refills).
    fn redis_part(&self) -> String {
        match self {
            RateKey::Ip(ip) => format!("ip:{ip}"),
            RateKey::Subject(digest) => {
                format!("sub:{}", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            RateKey::User(id) => format!("user:{id}"),
            RateKey::ApiKey(id) => format!("key:{id}"),
        }
    }
}

/// The state of a budget after a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    /// Until the budget is full again.
    pub reset: Duration,
}

/// A refused request: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub policy: RatePolicyKind,
    pub limit: u32,
    /// Until one request fits again.
    pub retry_after: Duration,
    /// Until the budget is full again.
    pub reset: Duration,
}

/// The answer of a budget to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed(Allowance),
    Limited(Refusal),
}

/// The shared store could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the rate limit store is unavailable: {0}")]
pub struct BackendUnavailable(pub String);

/// Where budgets live.
#[async_trait]
pub trait RateLimitBackend: Send + Sync + std::fmt::Debug {
    /// Spends one request of `key`'s budget under `policy` at `now`, or says when it would fit.
    async fn check(
        &self,
        kind: RatePolicyKind,
        policy: RatePolicy,
        key: &RateKey,
        now: Timestamp,
    ) -> Result<RateDecision, BackendUnavailable>;

    /// Forgets keys whose budget is full again (in process; Redis expires them itself).
    fn sweep(&self) {}

    /// How many keys are held (in process; `None` when the store is elsewhere).
    fn held_keys(&self) -> Option<usize> {
        None
    }
}

/// The app's clock, as governor reads time: the duration since the unix epoch. Time stays an input,
/// so a test's fixed clock drives the in-process limiter exactly as it drives the Redis script.
#[derive(Debug, Clone)]
struct AppClock(Arc<dyn Clock>);

impl GovernorClock for AppClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now().as_unix_millis()).unwrap_or(0))
    }
}

type KeyedLimiter = RateLimiter<RateKey, DashMapStateStore<RateKey>, AppClock, StateInformationMiddleware>;

/// Budgets in this process: one governor limiter per policy.
#[derive(Debug)]
pub struct LocalBackend {
    limiters: HashMap<RatePolicyKind, KeyedLimiter>,
    policies: HashMap<RatePolicyKind, RatePolicy>,
}

impl LocalBackend {
    /// Limiters for every policy of `settings`, reading time from `clock`.
    pub fn new(settings: &RateLimitSettings, clock: Arc<dyn Clock>) -> Self {
        let mut limiters = HashMap::new();
        let mut policies = HashMap::new();
        for kind in RatePolicyKind::ALL {
            let policy = settings.policy(kind);
            let burst = NonZeroU32::new(policy.limit.max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(policy.emission_interval().max(Duration::from_nanos(1)))
                .map(|q| q.allow_burst(burst))
                .unwrap_or_else(|| Quota::per_second(burst));
            let limiter: KeyedLimiter =
                RateLimiter::<_, _, _, governor::middleware::NoOpMiddleware<Duration>>::new(
                    quota,
                    DashMapStateStore::default(),
                    AppClock(clock.clone()),
                )
                .with_middleware::<StateInformationMiddleware>();
            limiters.insert(kind, limiter);
            policies.insert(kind, policy);
        }
        Self { limiters, policies }
    }
}

#[async_trait]
impl RateLimitBackend for LocalBackend {
    async fn check(
        &self,
        kind: RatePolicyKind,
        _policy: RatePolicy,
        key: &RateKey,
        _now: Timestamp,
    ) -> Result<RateDecision, BackendUnavailable> {
        // The limiter was built from the same settings; its own clock is the app's clock.
        let (Some(limiter), Some(policy)) = (self.limiters.get(&kind), self.policies.get(&kind)) else {
            return Err(BackendUnavailable(format!("no limiter for {}", kind.as_str())));
        };
        let interval = policy.emission_interval();
        Ok(match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision::Allowed(Allowance {
                    limit: policy.limit,
                    remaining,
                    reset: interval * (policy.limit.saturating_sub(remaining)),
                })
            }
            Err(not_until) => {
                let now = GovernorClock::now(limiter_clock(limiter));
                let retry_after = not_until.wait_time_from(now);
                RateDecision::Limited(Refusal {
                    policy: kind,
                    limit: policy.limit,
                    retry_after,
                    reset: retry_after + interval * policy.limit.saturating_sub(1),
                })
            }
        })
    }

    fn sweep(&self) {
        for limiter in self.limiters.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn held_keys(&self) -> Option<usize> {
        Some(self.limiters.values().map(|l| l.len()).sum())
    }
}

fn limiter_clock(limiter: &KeyedLimiter) -> &AppClock {
    limiter.clock()
}

/// GCRA in one atomic Lua script, with the same arithmetic as governor, in milliseconds of the
/// caller's clock (nodes' clocks are NTP-synchronised, as token expiry already requires).
/// KEYS[1] the budget; ARGV now, emission interval, period. Returns {allowed, remaining or
/// retry-after, reset}; the key expires when the budget is full again.
const GCRA_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((now - allow_at) / interval), new_tat - now}
";

/// Budgets in Redis, shared by every node.
pub struct RedisBackend {
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    /// When the last connection attempt failed (unix millis): the next waits a second, so an
    /// unreachable Redis costs each request nothing but the failure answer.
    failed_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("RedisBackend").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// How long one Redis round trip may take before the request goes on without it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

impl RedisBackend {
    /// A backend for `url`; connects on first use (and again after a failure), so a node starts
    /// while Redis is down and applies the failure mode until it is back.
    pub fn new(url: &SecretString, prefix: &str) -> Result<Self, BackendUnavailable> {
        use secrecy::ExposeSecret;
        let client = redis::Client::open(url.expose_secret())
            .map_err(|e| BackendUnavailable(format!("redis url: {}", e.kind_name())))?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA_SCRIPT),
            connection: tokio::sync::Mutex::new(None),
            failed_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    async fn connection(&self, now: Timestamp) -> Result<redis::aio::ConnectionManager, BackendUnavailable> {
        use std::sync::atomic::Ordering;
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        if failed_at != i64::MIN && now.as_unix_millis().saturating_sub(failed_at) < 1000 {
            return Err(BackendUnavailable("redis is unreachable (retrying each second)".into()));
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        match tokio::time::timeout(
            Duration::from_secs(1),
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(connection)) => {
                *slot = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(e)) => {
                self.failed_at.store(now.as_unix_millis(), Ordering::Relaxed);
                Err(BackendUnavailable(format!("redis connect: {}", e.kind_name())))
            }
            Err(_) => {
                self.failed_at.store(now.as_unix_millis(), Ordering::Relaxed);
                Err(BackendUnavailable("redis connect: timed out".into()))
            }
        }
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    /// The class of a Redis error without its text, which may quote the URL.
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[async_trait]
impl RateLimitBackend for RedisBackend {
    async fn check(
        &self,
        kind: RatePolicyKind,
        policy: RatePolicy,
        key: &RateKey,
        now: Timestamp,
    ) -> Result<RateDecision, BackendUnavailable> {
        let mut connection = self.connection(now).await?;
        let interval = u64::try_from(policy.emission_interval().as_millis()).unwrap_or(u64::MAX).max(1);
        let period = u64::try_from(policy.period.as_millis()).unwrap_or(u64::MAX);
        let redis_key = format!("{}rl:{}:{}", self.prefix, kind.as_str(), key.redis_part());
        let mut invocation = self.script.key(redis_key);
        invocation.arg(now.as_unix_millis()).arg(interval).arg(period);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut connection);
        let (allowed, value, reset) = match tokio::time::timeout(REDIS_TIMEOUT * 2, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(BackendUnavailable(format!("redis: {}", e.kind_name()))),
            Err(_) => return Err(BackendUnavailable("redis: timed out".into())),
        };
        let millis = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(if allowed == 1 {
            RateDecision::Allowed(Allowance {
                limit: policy.limit,
                remaining: u32::try_from(value).unwrap_or(0).min(policy.limit),
                reset: millis(reset),
            })
        } else {
            RateDecision::Limited(Refusal {
                policy: kind,
                limit: policy.limit,
                retry_after: millis(value),
                reset: millis(reset) + policy.emission_interval(),
            })
        })
    }
}

/// Refusals counted per policy and key until the next flush, so that a flood becomes one security
/// event per key and minute rather than one per request. Bounded: past `MAX_TRIP_KEYS` distinct
/// keys, further ones are counted together.
#[derive(Debug, Default)]
pub(crate) struct TripCounter {
    trips: Mutex<HashMap<TripKey, u64>>,
    overflow: std::sync::atomic::AtomicU64,
}

/// A budget that refused requests: its policy and key.
pub(crate) type TripKey = (RatePolicyKind, RateKey);

/// Most distinct keys remembered between two flushes.
pub(crate) const MAX_TRIP_KEYS: usize = 10_000;

impl TripCounter {
    pub(crate) fn count(&self, policy: RatePolicyKind, key: RateKey) {
        let Ok(mut trips) = self.trips.lock() else { return };
        let held = trips.len();
        match trips.get_mut(&(policy, key)) {
            Some(count) => *count += 1,
            None if held < MAX_TRIP_KEYS => {
                trips.insert((policy, key), 1);
            }
            None => {
                self.overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Everything counted since the last call, and the refusals of keys beyond the bound.
    pub(crate) fn take(&self) -> (Vec<(TripKey, u64)>, u64) {
        let trips = match self.trips.lock() {
            Ok(mut trips) => std::mem::take(&mut *trips).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        (trips, self.overflow.swap(0, std::sync::atomic::Ordering::Relaxed))
    }
}

/// Checks a Redis URL the way the client will read it, without connecting (for config checks).
pub fn redis_url_is_valid(url: &str) -> Result<(), String> {
    redis::Client::open(url).map(|_| ()).map_err(|e| e.kind_name())
}
