//! Operational metrics: what the server counts as it works, and what it reads when scraped,
//! rendered in the Prometheus text format for `GET /metrics`.
//!
//! Each [`App`] owns its own registry (no process-global recorder), so two servers in one process,
//! as the tests run them, never count into each other. Every label value comes from a closed set
//! (a route template, a status class, a policy or event kind): no user ids, no raw paths.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use portcullis_domain::{MfaMethod, SecurityEvent, SecurityEventKind};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{App, AppError, LoginOutcome};

const HTTP_REQUESTS: &str = "portcullis_http_requests_total";
const HTTP_DURATION: &str = "portcullis_http_request_duration_seconds";
const HTTP_IN_FLIGHT: &str = "portcullis_http_requests_in_flight";
const LOGINS: &str = "portcullis_logins_total";
const MFA_FAILURES: &str = "portcullis_mfa_failures_total";
const LOCKOUTS: &str = "portcullis_lockouts_total";
const RATE_LIMITED: &str = "portcullis_rate_limited_requests_total";
const SECURITY_EVENTS: &str = "portcullis_security_events_total";
const ACTIVE_SESSIONS: &str = "portcullis_active_sessions";
const HASH_QUEUE: &str = "portcullis_password_hash_queue_depth";
const HASH_SHED: &str = "portcullis_password_hash_shed_total";
const AUDIT_HEAD: &str = "portcullis_audit_chain_head_seq";
const AUDIT_VERIFIED_AT: &str = "portcullis_audit_last_verification_timestamp_seconds";
const AUDIT_INTACT: &str = "portcullis_audit_chain_intact";
const DB_POOL: &str = "portcullis_db_pool_connections";
const DB_POOL_MAX: &str = "portcullis_db_pool_max_connections";
const RATE_LIMIT_BACKEND_FAILURES: &str = "portcullis_rate_limit_backend_failures_total";
const ALERTS: &str = "portcullis_alerts_total";
const TLS_HANDSHAKE_FAILURES: &str = "portcullis_tls_handshake_failures_total";
const BUILD_INFO: &str = "portcullis_build_info";
const BACKUP_SUCCESS_AT: &str = "portcullis_backup_last_success_timestamp_seconds";
const BACKUP_VERIFIED_AT: &str = "portcullis_backup_last_verified_timestamp_seconds";

/// Request latency buckets, in seconds: a millisecond (a cached token check) to ten seconds (past
/// any sane request; the request timeout is thirty).
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Who may read `GET /metrics`. Each rule that is set must pass; with none set, the main listener
/// does not serve the route at all, and a listener of its own (`metrics.listen`) serves anyone who
/// reaches it (its bind address is then the rule).
#[derive(Clone, Default)]
pub struct MetricsAccess {
    /// Client addresses (after trusted-proxy resolution) that may scrape; empty: any.
    pub allow: Vec<ipnet::IpNet>,
    /// A bearer token the scraper must present; `None`: none needed.
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess")
            .field("allow", &self.allow)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl MetricsAccess {
    /// Whether any rule is set.
    pub fn is_restricted(&self) -> bool {
        !self.allow.is_empty() || self.token.is_some()
    }
}

/// This server's registry and the handles counted on every request.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    in_flight: Gauge,
    /// The HTTP series' handles by route template, then method and status class: building a key
    /// and looking it up in the registry allocates, and this runs on every request (bounded like
    /// the labels: routes × methods × classes).
    http: Arc<RwLock<HttpSeries>>,
}

type HttpSeries = HashMap<String, HashMap<(&'static str, &'static str), (Counter, Histogram)>>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// How a login attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// A session was opened.
    Success,
    /// The password was right; a second factor is asked for.
    MfaRequired,
    /// Wrong credentials, an unusable account, or a locked identifier (one answer to the client).
    Failure,
    /// Not tried: rate limited or shed under load.
    Refused,
}

impl LoginResult {
    fn as_str(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::MfaRequired => "mfa_required",
            LoginResult::Failure => "failure",
            LoginResult::Refused => "refused",
        }
    }

    /// The count a password login's answer falls under. `None` for a session (counted where every
    /// kind of login ends, second factor and passkey ones too) and for errors that say nothing
    /// about the credentials (a database failure is not a failed login).
    pub(crate) fn of(result: &Result<LoginOutcome, AppError>) -> Option<Self> {
        match result {
            Ok(LoginOutcome::Authenticated { .. }) => None,
            Ok(LoginOutcome::MfaRequired(_)) => Some(LoginResult::MfaRequired),
            Err(AppError::InvalidCredentials | AppError::LoginLocked { .. }) => Some(LoginResult::Failure),
            Err(AppError::RateLimited(_) | AppError::Overloaded { .. }) => Some(LoginResult::Refused),
            Err(_) => None,
        }
    }
}

/// Decrements the in-flight gauge when the request is done, answered or dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Metrics {
    /// A fresh registry, with the build's version as `portcullis_build_info`.
    pub(crate) fn new(version: &'static str) -> Result<Self, AppError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), LATENCY_BUCKETS)
            .map_err(|e| AppError::Internal(Box::new(e)))?
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            in_flight: recorder.register_gauge(&Key::from_name(HTTP_IN_FLIGHT), &METADATA),
            recorder: Arc::new(recorder),
            handle,
            http: Arc::default(),
        };
        metrics.describe();
        metrics.gauge(BUILD_INFO, vec![Label::new("version", version)]).set(1.0);
        Ok(metrics)
    }

    fn describe(&self) {
        let counters: [(&'static str, &'static str); 10] = [
            (HTTP_REQUESTS, "HTTP requests answered, by method, route template and status class."),
            (LOGINS, "Password and passkey login attempts, by result."),
            (MFA_FAILURES, "Wrong second factors, by method."),
            (LOCKOUTS, "Account identifiers locked after repeated login failures."),
            (RATE_LIMITED, "Requests refused by a rate limit, by policy."),
            (SECURITY_EVENTS, "Security events, by kind and severity."),
            (HASH_SHED, "Password hashes refused at once because the hashing queue was full."),
            (RATE_LIMIT_BACKEND_FAILURES, "Requests that found the rate limit store unavailable."),
            (ALERTS, "Alerts to webhooks and email, by outcome."),
            (TLS_HANDSHAKE_FAILURES, "TLS handshakes the listener refused or lost, by reason."),
        ];
        for (name, help) in counters {
            self.recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
        }
        let gauges: [(&'static str, Option<Unit>, &'static str); 11] = [
            (BUILD_INFO, None, "Always 1; the labels name the build."),
            (BACKUP_SUCCESS_AT, Some(Unit::Seconds), "When this node last made a backup successfully."),
            (BACKUP_VERIFIED_AT, Some(Unit::Seconds), "When this node last verified a backup successfully."),
            (HTTP_IN_FLIGHT, None, "HTTP requests being served now."),
            (ACTIVE_SESSIONS, None, "Sessions neither revoked nor expired, across every node."),
            (HASH_QUEUE, None, "Password hashes running or waiting for a worker."),
            (AUDIT_HEAD, None, "Sequence number of the newest audit event."),
            (AUDIT_VERIFIED_AT, Some(Unit::Seconds), "When this node last verified the whole audit chain."),
            (
                AUDIT_INTACT,
                None,
                "1 when this node's last verification found the audit chain intact, else 0.",
            ),
            (DB_POOL, None, "Database connections, by pool and state (idle, in_use)."),
            (DB_POOL_MAX, None, "Most connections each database pool may open."),
        ];
        for (name, unit, help) in gauges {
            self.recorder.describe_gauge(KeyName::from(name), unit, SharedString::from(help));
        }
        self.recorder.describe_histogram(
            KeyName::from(HTTP_DURATION),
            Some(Unit::Seconds),
            SharedString::from(
                "Time from request headers to response, by method, route template and status class.",
            ),
        );
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// A backup was made (the gauge an alert on stale backups watches).
    pub(crate) fn backup_succeeded(&self, at: portcullis_domain::Timestamp) {
        self.gauge(BACKUP_SUCCESS_AT, Vec::new()).set(at.as_unix_millis() as f64 / 1000.0);
    }

    /// A backup passed verification (restored and proven).
    pub(crate) fn backup_verified(&self, at: portcullis_domain::Timestamp) {
        self.gauge(BACKUP_VERIFIED_AT, Vec::new()).set(at.as_unix_millis() as f64 / 1000.0);
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn request_started(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// Counts an answered request. `method` is one of the standard methods or `OTHER`, `route` a
    /// route template or `unmatched`: callers must never pass client text here.
    pub fn request_finished(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let series = (method, class);
        // The common case: a read lock and a lookup by the borrowed route, no allocation.
        let cached = self.http.read().ok().and_then(|by_route| by_route.get(route)?.get(&series).cloned());
        let (count, latency) = match cached {
            Some(handles) => handles,
            None => {
                let labels = || {
                    vec![
                        Label::new("method", method),
                        Label::new("route", route.to_owned()),
                        Label::new("status", class),
                    ]
                };
                let handles = (
                    self.counter(HTTP_REQUESTS, labels()),
                    self.recorder.register_histogram(&Key::from_parts(HTTP_DURATION, labels()), &METADATA),
                );
                if let Ok(mut by_route) = self.http.write() {
                    by_route.entry(route.to_owned()).or_default().insert(series, handles.clone());
                }
                handles
            }
        };
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    }

    pub(crate) fn login(&self, result: LoginResult) {
        self.counter(LOGINS, vec![Label::new("result", result.as_str())]).increment(1);
    }

    /// Counts a TLS handshake that did not complete. `reason` is one of the listener's closed set
    /// (`incompatible`, `malformed`, `client_alert`, `closed`, `timeout`, `other`), never error text.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.counter(TLS_HANDSHAKE_FAILURES, vec![Label::new("reason", reason)]).increment(1);
    }

    pub(crate) fn mfa_failed(&self, method: MfaMethod) {
        self.counter(MFA_FAILURES, vec![Label::new("method", method.as_str())]).increment(1);
    }

    pub(crate) fn rate_limited(&self, policy: &'static str) {
        self.counter(RATE_LIMITED, vec![Label::new("policy", policy)]).increment(1);
    }

    pub(crate) fn security_event(&self, event: &SecurityEvent) {
        let labels = vec![
            Label::new("kind", event.kind.as_str()),
            Label::new("severity", event.kind.severity().as_str()),
        ];
        self.counter(SECURITY_EVENTS, labels).increment(1);
        if event.kind == SecurityEventKind::AccountLockedOut {
            self.counter(LOCKOUTS, Vec::new()).increment(1);
        }
    }

    /// Folds histogram samples into their buckets. Rendering does it too; this keeps memory bounded
    /// on a server nobody scrapes.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl App {
    /// Whether a scrape from `ip`, presenting `bearer` (the token of an `Authorization: Bearer`
    /// header, if any), may read the metrics. An address outside the allowlist gets
    /// [`AppError::NotFound`] (the route does not exist for it); a missing or wrong token,
    /// [`AppError::Unauthenticated`].
    pub fn authorize_metrics_scrape(
        &self,
        ip: std::net::IpAddr,
        bearer: Option<&str>,
    ) -> Result<(), AppError> {
        let access = &self.inner.settings.metrics;
        if !access.allow.is_empty() && !access.allow.iter().any(|net| net.contains(&ip)) {
            return Err(AppError::NotFound);
        }
        if let Some(token) = &access.token {
            // Digests first, so the comparison takes the same time whatever the lengths.
            let expected = Sha256::digest(token.expose_secret().as_bytes());
            let presented = Sha256::digest(bearer.unwrap_or_default().as_bytes());
            if bearer.is_none() || !bool::from(expected.ct_eq(&presented)) {
                return Err(AppError::Unauthenticated);
            }
        }
        Ok(())
    }

    /// This server's metrics registry (the HTTP layer counts requests into it).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Every metric in the Prometheus text format. Reads what only the database knows (active
    /// sessions, the audit chain's head) now; a failed read leaves those out and is logged, so a
    /// scrape still shows everything else (an unreachable database is what `/readyz` reports).
    pub async fn render_metrics(&self) -> String {
        let metrics = &self.inner.metrics;
        if let Err(error) = self.read_database_gauges().await {
            tracing::warn!(error = %portcullis_domain::error_chain(&error), "metrics: database gauges not read");
        }
        metrics.gauge(HASH_QUEUE, Vec::new()).set(self.inner.hasher.occupied() as f64);
        metrics.counter(HASH_SHED, Vec::new()).absolute(self.inner.hasher.shed());
        for pool in self.inner.store.pool_usage() {
            let in_use = pool.size.saturating_sub(pool.idle);
            for (state, value) in [("idle", pool.idle), ("in_use", in_use)] {
                let labels = vec![Label::new("pool", pool.name), Label::new("state", state)];
                metrics.gauge(DB_POOL, labels).set(f64::from(value));
            }
            metrics.gauge(DB_POOL_MAX, vec![Label::new("pool", pool.name)]).set(f64::from(pool.max));
        }
        metrics.counter(RATE_LIMIT_BACKEND_FAILURES, Vec::new()).absolute(self.rate_limit_backend_failures());
        let alerts = self.alert_counters();
        for (outcome, value) in [
            ("queued", alerts.queued),
            ("coalesced", alerts.coalesced),
            ("dropped", alerts.dropped),
            ("delivered", alerts.delivered),
            ("dead_lettered", alerts.dead_lettered),
        ] {
            metrics.counter(ALERTS, vec![Label::new("outcome", outcome)]).absolute(value);
        }
        if let Some((at, intact)) = self.last_audit_verification() {
            metrics.gauge(AUDIT_VERIFIED_AT, Vec::new()).set(at.as_unix_millis() as f64 / 1000.0);
            metrics.gauge(AUDIT_INTACT, Vec::new()).set(if intact { 1.0 } else { 0.0 });
        }
        metrics.handle.render()
    }

    async fn read_database_gauges(&self) -> Result<(), AppError> {
        if !self.can_sign_tokens() {
            // Before the schema is current there is nothing to read.
            return Ok(());
        }
        let mut tx = self.inner.store.begin_read().await?;
        let sessions = tx.count_active_sessions(self.now()).await?;
        let head = tx.read_audit_head().await?;
        tx.rollback().await?;
        let metrics = &self.inner.metrics;
        metrics.gauge(ACTIVE_SESSIONS, Vec::new()).set(sessions as f64);
        metrics.gauge(AUDIT_HEAD, Vec::new()).set(head.seq as f64);
        Ok(())
    }

    /// Runs the registry's upkeep (see [`Metrics`]); the server calls it every few seconds.
    pub fn metrics_upkeep(&self) {
        self.inner.metrics.upkeep();
    }
}
