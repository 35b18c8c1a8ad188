//! Alerts: security events a human should see, delivered to webhooks and email.
//!
//! The path of an alert:
//!
//! 1. A security event is stored and logged, then handed to [`Alerter::raise`] (on the request's
//!    task). Its severity (the kind's default, or the configured override) must reach the minimum;
//!    a repeat of the same cause within the cooldown is only counted (*coalescing*, below). What
//!    passes goes into a bounded queue with `try_send`: when the queue is full the alert is dropped
//!    and counted, so a flood of events never blocks or slows a request.
//! 2. One background task ([`App::deliver_alerts`], started by the server) takes alerts from the
//!    queue and delivers each to every sink concurrently (at most [`MAX_DELIVERIES_IN_FLIGHT`] at
//!    once): webhooks as signed JSON (see [`signature`] for the header), email through the app's
//!    [`Mailer`](crate::mail::Mailer).
//! 3. A failed try is retried with exponential backoff (timeouts, connection errors, 5xx and 429;
//!    a webhook's other 4xx are final). After the last try the failure is stored as a security
//!    event of kind `alert_delivery_failed`: the dead letter.
//!
//! **Dead letters never loop.** `raise` ignores `alert_delivery_failed` events. The worker itself
//! alerts a dead letter to the *other* sinks (an email says that the pager webhook is down), never
//! to the sink that failed; and a dead letter about the delivery of a dead letter is stored and
//! logged but never alerted again. So one failing alert causes at most one more alert per other
//! sink, and those coalesce per failing sink.
//!
//! **Coalescing.** Alerts are keyed by (kind, cause), the cause being the first of: the event's
//! user id (an attack on one account), its `network` detail (an attack from one network), its
//! `policy` detail (which limit tripped), else nothing (the kind alone); a dead letter's cause is
//! its `sink`. Within `cooldown` after an alert for a key, repeats are counted, not sent; the first
//! alert for that key after the cooldown carries the count as `coalesced_count`. A burst that stops
//! within the cooldown is therefore reported with the next alert for its key, not on its own.
//! Times are the events' own (`at`), so coalescing follows the app's [`Clock`](crate::Clock).
//! Each node coalesces on its own. The table of keys is bounded ([`MAX_COALESCING_KEYS`]); when it
//! is full of live keys, new causes share one key per kind.
//!
//! **What leaves the server.** Ids, kinds, severities, times and the event's details, minus any
//! detail that looks like personal data (an `ip`/`email`-like key, a value holding `@`, a single
//! address): see [`shareable_details`]. Networks wider than one address (`198.51.100.0/24`) are
//! kept: they are what a defender acts on. Sink secrets and URLs are never logged, nor put in
//! dead letters (a webhook URL's path is often a credential itself).

mod delivery;
pub mod signature;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use portcullis_domain::{Email, SecurityEvent, SecurityEventId, SecurityEventKind, Severity, Timestamp};
use portcullis_store::StoredSecurityEvent;
use secrecy::SecretString;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

pub use signature::{SIGNATURE_HEADER, SignatureError, signature_header, verify_signature};

use crate::App;
use crate::secret_token::random_id_bytes;

/// Deliveries (one alert to one sink, retries included) running at once; beyond it the worker
/// waits, the queue fills, and new alerts are dropped and counted.
pub const MAX_DELIVERIES_IN_FLIGHT: usize = 32;

/// Most (kind, cause) keys the coalescing table holds.
pub const MAX_COALESCING_KEYS: usize = 4096;

/// How long deliveries still running at shutdown may take before they are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest `last_error` a dead letter records, in bytes.
const MAX_ERROR_BYTES: usize = 200;

/// Longest sink name, in bytes.
const MAX_SINK_NAME_BYTES: usize = 64;

// ---------------------------------------------------------------------------------------------------
// Settings

/// Which events alert, how repeats coalesce, and where alerts go.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub webhooks: Vec<WebhookSink>,
    pub emails: Vec<EmailSink>,
    /// Events below this severity do not alert. Default: high.
    pub min_severity: Severity,
    /// Severities that replace a kind's default ([`SecurityEventKind::severity`]).
    pub severity_overrides: Vec<(SecurityEventKind, Severity)>,
    /// Repeats of one (kind, cause) within this time after an alert are counted, not sent.
    /// Default: 10 minutes; zero sends every one.
    pub cooldown: Duration,
    /// Alerts waiting for delivery; beyond it new ones are dropped and counted. Default: 1024.
    pub queue_capacity: usize,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            emails: Vec::new(),
            min_severity: Severity::High,
            severity_overrides: Vec::new(),
            cooldown: Duration::from_secs(10 * 60),
            queue_capacity: 1024,
        }
    }
}

impl AlertSettings {
    /// The severity alerts use for `kind`: the configured override, else the kind's default.
    pub fn severity_of(&self, kind: SecurityEventKind) -> Severity {
        severity_of(&self.severity_overrides, kind)
    }
}

/// The last override for `kind`, else its default severity.
fn severity_of(overrides: &[(SecurityEventKind, Severity)], kind: SecurityEventKind) -> Severity {
    overrides.iter().rev().find(|(k, _)| *k == kind).map_or(kind.severity(), |(_, s)| *s)
}

/// How often, and how patiently, a sink is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least one is always made). Default: 5.
    pub max_attempts: u32,
    /// The wait after the first failed try; each further wait doubles. Default: 1 s.
    pub backoff_base: Duration,
    /// The longest wait between two tries. Default: 60 s.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 5, backoff_base: Duration::from_secs(1), backoff_max: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// The wait after failed try number `attempt` (1-based): `base × 2^(attempt-1)`, capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor).min(self.backoff_max)
    }
}

/// A webhook: JSON `POST`ed to `url`, signed with `secret` (see [`signature`]).
#[derive(Clone)]
pub struct WebhookSink {
    /// Names the sink in logs and dead letters (letters, digits, `.`, `_`, `-`).
    pub name: String,
    url: reqwest::Url,
    /// The HMAC key receivers verify with. Never logged, never sent.
    pub secret: SecretString,
    /// How long one try may take, connecting included. Default: 5 s.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl WebhookSink {
    /// A webhook with the default timeout and retries. The URL must be `https`, or `http` to a
    /// loopback address (a local relay or a test receiver); redirects are never followed.
    pub fn new(name: &str, url: &str, secret: SecretString) -> Result<Self, AlertSinkError> {
        check_sink_name(name)?;
        let url = webhook_url(url)?;
        if secrecy::ExposeSecret::expose_secret(&secret).is_empty() {
            return Err(AlertSinkError::EmptySecret);
        }
        Ok(Self {
            name: name.to_owned(),
            url,
            secret,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        })
    }

    /// The scheme, host and port the sink posts to (no path or query: those often hold a token).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

impl fmt::Debug for WebhookSink {
    // The derived form would print the secret's type only, but the whole URL, whose path is often a
    // credential (chat webhooks).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("origin", &self.origin())
            .field("secret", &"********")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Email to a fixed list of operators, through the app's mailer.
#[derive(Debug, Clone)]
pub struct EmailSink {
    /// Names the sink in logs and dead letters (letters, digits, `.`, `_`, `-`).
    pub name: String,
    pub recipients: Vec<Email>,
    pub retry: RetryPolicy,
}

impl EmailSink {
    /// An email sink with the default retries; it needs at least one recipient.
    pub fn new(name: &str, recipients: Vec<Email>) -> Result<Self, AlertSinkError> {
        check_sink_name(name)?;
        if recipients.is_empty() {
            return Err(AlertSinkError::NoRecipients);
        }
        Ok(Self { name: name.to_owned(), recipients, retry: RetryPolicy::default() })
    }
}

/// Why a sink's settings are unusable. No message repeats the URL or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertSinkError {
    #[error("the name must be 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName,
    #[error("not an absolute http(s) URL")]
    InvalidUrl,
    #[error("must be https (plain http only to a loopback address: localhost, 127.0.0.1, ::1)")]
    InsecureUrl,
    #[error("the secret is empty")]
    EmptySecret,
    #[error("needs at least one recipient")]
    NoRecipients,
}

fn check_sink_name(name: &str) -> Result<(), AlertSinkError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SINK_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid { Ok(()) } else { Err(AlertSinkError::InvalidName) }
}

/// Parses and checks a webhook URL: `https`, or `http` only to a loopback host, where nothing
/// crosses a network.
pub fn webhook_url(text: &str) -> Result<reqwest::Url, AlertSinkError> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| AlertSinkError::InvalidUrl)?;
    let host = url.host_str().ok_or(AlertSinkError::InvalidUrl)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(AlertSinkError::InsecureUrl),
        _ => Err(AlertSinkError::InvalidUrl),
    }
}

// ---------------------------------------------------------------------------------------------------
// The alerter: policy, coalescing and the queue

/// What the alerter has done since start, for metrics and tests. Each delivery is one alert to one
/// sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounters {
    /// Alerts put on the queue.
    pub queued: u64,
    /// Repeats counted within a cooldown instead of sent.
    pub coalesced: u64,
    /// Alerts dropped because the queue was full (or delivery was not running any more).
    pub dropped: u64,
    /// Deliveries a sink accepted.
    pub delivered: u64,
    /// Deliveries that failed their last try and left a dead letter.
    pub dead_lettered: u64,
}

/// Decides which security events alert and queues them for the sinks; see the module docs.
#[derive(Debug)]
pub struct Alerter {
    sinks: Vec<Arc<Sink>>,
    min_severity: Severity,
    severity_overrides: Vec<(SecurityEventKind, Severity)>,
    cooldown_millis: i64,
    user_agent: String,
    sender: mpsc::Sender<Alert>,
    /// Taken by the one delivery task.
    receiver: Mutex<Option<mpsc::Receiver<Alert>>>,
    coalescing: Mutex<Coalescing>,
    counters: Counters,
    /// Woken after every finished delivery (tests wait on it instead of sleeping).
    settled: Notify,
}

#[derive(Debug)]
enum Sink {
    Webhook(WebhookSink),
    Email(EmailSink),
}

impl Sink {
    fn name(&self) -> &str {
        match self {
            Sink::Webhook(w) => &w.name,
            Sink::Email(e) => &e.name,
        }
    }
}

/// One alert on its way to the sinks.
#[derive(Debug, Clone)]
struct Alert {
    event: SecurityEvent,
    severity: Severity,
    coalesced_count: u64,
    /// A dead letter's alert skips the sink that failed.
    skip_sink: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    coalesced: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Alerter {
    /// An alerter for `settings`; `version` goes into the webhooks' `User-Agent`.
    pub fn new(settings: &AlertSettings, version: &str) -> Self {
        let sinks = (settings.webhooks.iter().cloned().map(Sink::Webhook))
            .chain(settings.emails.iter().cloned().map(Sink::Email))
            .map(Arc::new)
            .collect();
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        Self {
            sinks,
            min_severity: settings.min_severity,
            severity_overrides: settings.severity_overrides.clone(),
            cooldown_millis: i64::try_from(settings.cooldown.as_millis()).unwrap_or(i64::MAX),
            user_agent: format!("portcullis/{version}"),
            sender,
            receiver: Mutex::new(Some(receiver)),
            coalescing: Mutex::new(Coalescing::default()),
            counters: Counters::default(),
            settled: Notify::new(),
        }
    }

    /// Queues an alert for `event` when its severity and cooldown call for one; never blocks.
    pub fn raise(&self, event: &SecurityEvent) {
        // Dead letters are alerted by the delivery task itself, to the other sinks only.
        if event.kind == SecurityEventKind::AlertDeliveryFailed {
            return;
        }
        self.admit(event, None);
    }

    /// Sends, for every cause whose cooldown is over at `now`, the repeats that were only counted:
    /// their newest event, carrying how many came before it. Run every few seconds.
    pub fn flush_due(&self, now: Timestamp) {
        let mut coalescing = lock(&self.coalescing);
        for (key, event, skip_sink, before) in coalescing.due(now, self.cooldown_millis) {
            let severity = severity_of(&self.severity_overrides, event.kind);
            let alert = Alert { event, severity, coalesced_count: before, skip_sink };
            match self.sender.try_send(alert) {
                Ok(()) => {
                    coalescing.sent(key, now);
                    self.counters.queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    // Still owed: the next flush or the next repeat reports it.
                    let alert = error.into_inner();
                    if let Some(state) = coalescing.keys.get_mut(&key) {
                        state.newest = Some((alert.event, alert.skip_sink));
                    }
                }
            }
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> AlertCounters {
        let c = &self.counters;
        AlertCounters {
            queued: c.queued.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
        }
    }

    fn admit(&self, event: &SecurityEvent, skip_sink: Option<&str>) {
        if !self.sinks.iter().any(|s| Some(s.name()) != skip_sink) {
            return;
        }
        let severity = severity_of(&self.severity_overrides, event.kind);
        if severity < self.min_severity {
            return;
        }
        let mut coalescing = lock(&self.coalescing);
        let (key, decision) = coalescing.decide(event.kind, cause_of(event), event.at, self.cooldown_millis);
        let Some(coalesced_count) = decision else {
            coalescing.counted(&key, event, skip_sink);
            self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let alert = Alert {
            event: event.clone(),
            severity,
            coalesced_count,
            skip_sink: skip_sink.map(str::to_owned),
        };
        match self.sender.try_send(alert) {
            Ok(()) => {
                coalescing.sent(key, event.at);
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // Counted into the key's pending repeats, so the next alert for it reports this one.
                coalescing.missed(key, event, skip_sink);
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(100) {
                    tracing::warn!(
                        alert.kind = event.kind.as_str(),
                        dropped_total = dropped,
                        "alert queue full or delivery not running: alert dropped"
                    );
                }
            }
        }
    }
}

/// The (kind, cause) an alert coalesces under; see the module docs for the order.
fn cause_of(event: &SecurityEvent) -> String {
    if event.kind == SecurityEventKind::AlertDeliveryFailed {
        return event.details.get("sink").map(|s| format!("sink:{s}")).unwrap_or_default();
    }
    if let Some(user) = event.user_id {
        return format!("user:{user}");
    }
    ["network", "policy"]
        .iter()
        .find_map(|key| event.details.get(*key).map(|value| format!("{key}:{value}")))
        .unwrap_or_default()
}

type CauseKey = (&'static str, String);

#[derive(Debug, Default)]
struct Coalescing {
    keys: HashMap<CauseKey, CauseState>,
}

#[derive(Debug, Default)]
struct CauseState {
    /// When the last alert for this key was queued.
    last_sent: Option<Timestamp>,
    /// Repeats since then that were not sent.
    pending: u64,
    /// The newest of those repeats (and the sink it must skip), sent with their count once the
    /// cooldown is over even if no further repeat comes: a burst that stops inside the cooldown
    /// must not go unreported.
    newest: Option<(SecurityEvent, Option<String>)>,
}

impl Coalescing {
    /// The key to use and, when an alert is due, the repeats it reports; `None` when this one is
    /// only counted.
    fn decide(
        &mut self,
        kind: SecurityEventKind,
        cause: String,
        at: Timestamp,
        cooldown_millis: i64,
    ) -> (CauseKey, Option<u64>) {
        let mut key = (kind.as_str(), cause);
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_COALESCING_KEYS {
            // Forget keys whose cooldown is over and which owe no count.
            self.keys
                .retain(|_, s| s.pending > 0 || s.last_sent.is_some_and(|l| !cooled(l, at, cooldown_millis)));
            if self.keys.len() >= MAX_COALESCING_KEYS {
                key = (kind.as_str(), "*".to_owned());
            }
        }
        let state = self.keys.entry(key.clone()).or_default();
        match state.last_sent {
            Some(last) if !cooled(last, at, cooldown_millis) => {
                state.pending = state.pending.saturating_add(1);
                (key, None)
            }
            _ => {
                let pending = state.pending;
                (key, Some(pending))
            }
        }
    }

    fn sent(&mut self, key: CauseKey, at: Timestamp) {
        self.keys.insert(key, CauseState { last_sent: Some(at), pending: 0, newest: None });
    }

    fn missed(&mut self, key: CauseKey, event: &SecurityEvent, skip_sink: Option<&str>) {
        let state = self.keys.entry(key).or_default();
        state.pending = state.pending.saturating_add(1);
        state.newest = Some((event.clone(), skip_sink.map(str::to_owned)));
    }

    /// Remembers the newest repeat that was only counted.
    fn counted(&mut self, key: &CauseKey, event: &SecurityEvent, skip_sink: Option<&str>) {
        if let Some(state) = self.keys.get_mut(key) {
            state.newest = Some((event.clone(), skip_sink.map(str::to_owned)));
        }
    }

    /// The keys whose cooldown is over at `now` with repeats still unreported: their newest repeat
    /// and how many came before it.
    fn due(
        &mut self,
        now: Timestamp,
        cooldown_millis: i64,
    ) -> Vec<(CauseKey, SecurityEvent, Option<String>, u64)> {
        let mut due = Vec::new();
        for (key, state) in &mut self.keys {
            if state.pending == 0 || state.last_sent.is_some_and(|last| !cooled(last, now, cooldown_millis)) {
                continue;
            }
            if let Some((event, skip)) = state.newest.take() {
                due.push((key.clone(), event, skip, state.pending - 1));
            }
        }
        due
    }
}

/// Whether the cooldown that started at `last` is over at `at`.
fn cooled(last: Timestamp, at: Timestamp, cooldown_millis: i64) -> bool {
    at.as_unix_millis() >= last.as_unix_millis().saturating_add(cooldown_millis)
}

/// The details that may leave the server: without anything that looks like personal data. The
/// names of left-out keys are listed under `redacted`, so a reader knows something was there.
pub fn shareable_details(details: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut shared = BTreeMap::new();
    let mut redacted = Vec::new();
    for (key, value) in details {
        if looks_personal(key, value) {
            redacted.push(key.as_str());
        } else {
            shared.insert(key.clone(), value.clone());
        }
    }
    if !redacted.is_empty() {
        shared.insert("redacted".into(), redacted.join(","));
    }
    shared
}

fn looks_personal(key: &str, value: &str) -> bool {
    const PERSONAL_KEYS: [&str; 7] =
        ["ip", "email", "address", "user_agent", "name", "display_name", "phone"];
    let key = key.to_ascii_lowercase();
    let value = value.trim();
    PERSONAL_KEYS.contains(&key.as_str())
        || key.ends_with("_ip")
        || key.ends_with("_email")
        || value.contains('@')
        || value.parse::<IpAddr>().is_ok()
        || value.parse::<SocketAddr>().is_ok()
        || value.parse::<IpNet>().is_ok_and(|net| net.prefix_len() == net.max_prefix_len())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent at every await-free step; a panic elsewhere does not make
    // it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At most [`MAX_ERROR_BYTES`] of `text`, cut on a character boundary.
fn short(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

// ---------------------------------------------------------------------------------------------------
// The delivery task

impl App {
    /// Delivers queued alerts until `shutdown` changes (or its sender is dropped); then gives the
    /// deliveries still running [`SHUTDOWN_GRACE`] to finish, and abandons the rest. Alerts raised
    /// before this starts wait in the queue (up to its capacity). Run it once per process, as a task
    /// beside the server's other background work; a second call returns at once. One-off CLI
    /// commands do not run it, so their alerts are dropped (and counted).
    pub async fn deliver_alerts(self, mut shutdown: watch::Receiver<bool>) {
        let alerter = &self.inner.alerts;
        if alerter.sinks.is_empty() {
            return;
        }
        let Some(mut queue) = lock(&alerter.receiver).take() else {
            tracing::warn!("alert delivery is already running; this second task stops");
            return;
        };
        let client = match delivery::http_client(&alerter.user_agent) {
            Ok(client) => Some(client),
            Err(error) => {
                // Webhook deliveries then fail into dead letters; email ones still work.
                tracing::error!(error = %portcullis_domain::error_chain(&error), "the webhook HTTP client cannot be built");
                None
            }
        };
        let permits = Arc::new(Semaphore::new(MAX_DELIVERIES_IN_FLIGHT));
        let mut running = JoinSet::new();
        'queue: loop {
            let alert = tokio::select! {
                biased;
                _ = shutdown.changed() => break 'queue,
                alert = queue.recv() => match alert {
                    Some(alert) => Arc::new(alert),
                    None => break 'queue,
                },
            };
            for sink in &alerter.sinks {
                if alert.skip_sink.as_deref() == Some(sink.name()) {
                    continue;
                }
                let permit = tokio::select! {
                    biased;
                    _ = shutdown.changed() => break 'queue,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break 'queue,
                    },
                };
                while running.try_join_next().is_some() {}
                let (app, sink, alert, client) = (self.clone(), sink.clone(), alert.clone(), client.clone());
                running.spawn(async move {
                    app.deliver(&sink, &alert, client.as_ref()).await;
                    drop(permit);
                });
            }
        }
        queue.close();
        let mut unsent = 0u64;
        while queue.try_recv().is_ok() {
            unsent += 1;
        }
        let finished =
            tokio::time::timeout(SHUTDOWN_GRACE, async { while running.join_next().await.is_some() {} })
                .await;
        let abandoned = running.len();
        running.abort_all();
        if unsent > 0 || finished.is_err() {
            tracing::warn!(unsent, abandoned, "alert delivery stopped with alerts not delivered");
        }
    }

    /// What the alerter has done since start.
    pub fn alert_counters(&self) -> AlertCounters {
        self.inner.alerts.counters()
    }

    /// Reports repeats whose cooldown is over though no further repeat came (every few seconds).
    pub fn flush_alerts(&self) {
        self.inner.alerts.flush_due(self.now());
    }

    /// One alert to one sink, retries included; a dead letter when the last try fails.
    async fn deliver(&self, sink: &Sink, alert: &Alert, client: Option<&reqwest::Client>) {
        let alerter = &self.inner.alerts;
        let outcome = match sink {
            Sink::Webhook(webhook) => {
                delivery::deliver_webhook(client, webhook, alert, self.inner.clock.as_ref()).await
            }
            Sink::Email(email) => delivery::deliver_email(self.inner.mailer.as_ref(), email, alert).await,
        };
        match outcome {
            Ok(attempts) => {
                alerter.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    sink = sink.name(),
                    alert.kind = alert.event.kind.as_str(),
                    attempts,
                    "alert delivered"
                );
            }
            Err(failure) => {
                // Counted once stored (and alerted on), so whoever sees the count sees the record.
                self.dead_letter(sink.name(), alert, failure).await;
                alerter.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        alerter.settled.notify_waiters();
    }

    /// Stores the dead letter for a failed delivery, then alerts it to the other sinks (unless the
    /// failed alert was a dead letter itself).
    async fn dead_letter(&self, sink: &str, alert: &Alert, failure: delivery::Failure) {
        let details: BTreeMap<String, String> = [
            ("sink", sink.to_owned()),
            ("alert_kind", alert.event.kind.as_str().to_owned()),
            ("event_id", alert.event.id.to_string()),
            ("attempts", failure.attempts.to_string()),
            ("last_error", short(&failure.last_error)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        tracing::warn!(
            sink,
            alert.kind = alert.event.kind.as_str(),
            alert.event = %alert.event.id,
            attempts = failure.attempts,
            last_error = %short(&failure.last_error),
            "alert not delivered after the last try"
        );
        let id = match random_id_bytes() {
            Ok(bytes) => SecurityEventId::from_random_bytes(bytes),
            Err(error) => {
                tracing::error!(error = %portcullis_domain::error_chain(&error), "dead letter not stored");
                return;
            }
        };
        // The dead letter keeps the user and session of the alert it is about, so it shows in
        // that account's security history next to the event nobody was told about.
        let event = SecurityEvent {
            id,
            at: self.now(),
            kind: SecurityEventKind::AlertDeliveryFailed,
            user_id: alert.event.user_id,
            session_id: alert.event.session_id,
            details: crate::abuse::fit_details(details),
        };
        let stored = StoredSecurityEvent { event: event.clone(), ip: None, pii_key: None };
        let result = async {
            let mut tx = self.inner.store.begin().await?;
            tx.insert_security_event(&stored).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => self.log_security_event(&event, true),
            Err(error) => {
                tracing::error!(error = %portcullis_domain::error_chain(&error), "dead letter not stored");
                self.log_security_event(&event, false);
            }
        }
        if alert.event.kind != SecurityEventKind::AlertDeliveryFailed {
            self.inner.alerts.admit(&event, Some(sink));
        }
    }

    /// Waits (boundedly) until `done` holds for the counters, woken by finished deliveries.
    #[cfg(test)]
    pub(crate) async fn alerts_until(&self, done: impl Fn(AlertCounters) -> bool) -> AlertCounters {
        let alerter = &self.inner.alerts;
        let wait = async {
            loop {
                let notified = alerter.settled.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let counters = alerter.counters();
                if done(counters) {
                    return counters;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), wait).await {
            Ok(counters) => counters,
            Err(_) => panic!("alert counters never met the condition: {:?}", alerter.counters()),
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_domain::UserId;

    use super::*;

    const MINUTE: i64 = 60_000;

    fn event(kind: SecurityEventKind, at: i64, user: Option<u8>, details: &[(&str, &str)]) -> SecurityEvent {
        SecurityEvent {
            id: SecurityEventId::from_random_bytes([at as u8; 16]),
            at: Timestamp::from_unix_millis(at),
            kind,
            user_id: user.map(|b| UserId::from_random_bytes([b; 16])),
            session_id: None,
            details: details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn alerter(settings: AlertSettings) -> Alerter {
        let mut settings = settings;
        settings.emails =
            vec![EmailSink::new("ops", vec![Email::parse("ops@example.com").unwrap()]).unwrap()];
        Alerter::new(&settings, "test")
    }

    fn queued(alerter: &Alerter) -> Vec<Alert> {
        let mut receiver = lock(&alerter.receiver).take().unwrap();
        let mut alerts = Vec::new();
        while let Ok(alert) = receiver.try_recv() {
            alerts.push(alert);
        }
        *lock(&alerter.receiver) = Some(receiver);
        alerts
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|n| policy.delay_after(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(policy.delay_after(200), Duration::from_secs(60), "no overflow on huge attempt numbers");
    }

    #[test]
    fn a_webhook_url_must_be_https_unless_it_is_loopback() {
        for ok in [
            "https://hooks.example.com/portcullis",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:8080/",
            "http://127.9.9.9/",
        ] {
            assert!(webhook_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://hooks.example.com/x", AlertSinkError::InsecureUrl),
            ("http://10.0.0.1/x", AlertSinkError::InsecureUrl),
            ("http://localhost.evil.example/x", AlertSinkError::InsecureUrl),
            ("ftp://hooks.example.com/x", AlertSinkError::InvalidUrl),
            ("hooks.example.com/x", AlertSinkError::InvalidUrl),
            ("file:///etc/passwd", AlertSinkError::InvalidUrl),
        ] {
            assert_eq!(webhook_url(bad).err(), Some(why), "{bad}");
        }
    }

    #[test]
    fn sink_names_are_short_plain_words_and_errors_never_echo_the_url() {
        let secret = || SecretString::from("s");
        assert_eq!(
            WebhookSink::new("", "https://x.example", secret()).err(),
            Some(AlertSinkError::InvalidName)
        );
        assert_eq!(
            WebhookSink::new("a b", "https://x.example", secret()).err(),
            Some(AlertSinkError::InvalidName)
        );
        assert_eq!(
            WebhookSink::new("pager", "https://x.example", SecretString::from("")).err(),
            Some(AlertSinkError::EmptySecret)
        );
        let error = WebhookSink::new("pager", "http://hooks.example/T0KEN-canary", secret()).unwrap_err();
        assert!(!error.to_string().contains("canary"), "{error}");
        assert_eq!(EmailSink::new("ops", Vec::new()).err(), Some(AlertSinkError::NoRecipients));
    }

    #[test]
    fn the_debug_form_of_the_settings_shows_no_secret_and_no_url_path() {
        let mut settings = AlertSettings::default();
        settings.webhooks.push(
            WebhookSink::new(
                "pager",
                "https://hooks.example.com/services/T0KEN-canary?key=query-canary",
                SecretString::from("secret-canary"),
            )
            .unwrap(),
        );
        let debug = format!("{settings:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(debug.contains("https://hooks.example.com"), "{debug}");
    }

    #[test]
    fn the_cause_key_prefers_the_user_then_the_network_then_the_policy() {
        let kind = SecurityEventKind::CredentialStuffing;
        let both = event(kind, 0, Some(1), &[("network", "198.51.100.0/24"), ("policy", "login")]);
        assert!(cause_of(&both).starts_with("user:"));
        let network = event(kind, 0, None, &[("network", "198.51.100.0/24"), ("policy", "login")]);
        assert_eq!(cause_of(&network), "network:198.51.100.0/24");
        let policy = event(kind, 0, None, &[("policy", "login")]);
        assert_eq!(cause_of(&policy), "policy:login");
        assert_eq!(cause_of(&event(kind, 0, None, &[])), "");
        let dead = event(SecurityEventKind::AlertDeliveryFailed, 0, Some(1), &[("sink", "pager")]);
        assert_eq!(cause_of(&dead), "sink:pager", "a dead letter coalesces per failing sink");
    }

    #[test]
    fn details_that_look_personal_are_left_out_of_what_is_sent() {
        let details: BTreeMap<String, String> = [
            ("network", "198.51.100.0/24"),
            ("policy", "login_ip"),
            ("count", "12"),
            ("ip", "203.0.113.7"),
            ("client", "203.0.113.8"),
            ("peer", "[2001:db8::1]:443"),
            ("host_net", "203.0.113.9/32"),
            ("login", "alice@example.com"),
            ("Email", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let shared = shareable_details(&details);
        let keys: Vec<&str> = shared.keys().map(String::as_str).collect();
        assert_eq!(keys, ["count", "network", "policy", "redacted"]);
        assert_eq!(shared["redacted"], "Email,client,host_net,ip,login,peer");
    }

    #[test]
    fn severity_comes_from_the_override_else_the_kind() {
        let settings = AlertSettings {
            severity_overrides: vec![(SecurityEventKind::LoginFailed, Severity::Critical)],
            ..AlertSettings::default()
        };
        assert_eq!(settings.severity_of(SecurityEventKind::LoginFailed), Severity::Critical);
        assert_eq!(settings.severity_of(SecurityEventKind::IpBlocked), Severity::High);
        let alerter = alerter(settings);
        alerter.raise(&event(SecurityEventKind::LoginFailed, 0, Some(1), &[]));
        alerter.raise(&event(SecurityEventKind::Scanning, 0, Some(1), &[]));
        let alerts = queued(&alerter);
        assert_eq!(alerts.len(), 1, "scanning is medium, below the default minimum");
        assert_eq!(alerts[0].severity, Severity::Critical);
    }

    #[test]
    fn repeats_coalesce_per_cause_and_the_next_alert_after_the_cooldown_counts_them() {
        let alerter = alerter(AlertSettings::default());
        let kind = SecurityEventKind::CredentialStuffing;
        let net = |n: &'static str| [("network", n)];
        alerter.raise(&event(kind, 0, None, &net("198.51.100.0/24")));
        alerter.raise(&event(kind, MINUTE, None, &net("198.51.100.0/24")));
        alerter.raise(&event(kind, 2 * MINUTE, None, &net("198.51.100.0/24")));
        alerter.raise(&event(kind, 3 * MINUTE, None, &net("192.0.2.0/24")));
        alerter.raise(&event(kind, 10 * MINUTE - 1, None, &net("198.51.100.0/24")));
        alerter.raise(&event(kind, 10 * MINUTE, None, &net("198.51.100.0/24")));
        let counts: Vec<u64> = queued(&alerter).iter().map(|a| a.coalesced_count).collect();
        assert_eq!(counts, [0, 0, 3]);
        assert_eq!(alerter.counters().coalesced, 3);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_drop_is_reported_with_the_next_alert() {
        let alerter = alerter(AlertSettings { queue_capacity: 1, ..AlertSettings::default() });
        let kind = SecurityEventKind::IpBlocked;
        alerter.raise(&event(kind, 0, Some(1), &[]));
        alerter.raise(&event(kind, 0, Some(2), &[]));
        assert_eq!(alerter.counters().dropped, 1);
        assert_eq!(queued(&alerter).len(), 1);
        alerter.raise(&event(kind, 1, Some(2), &[]));
        let alerts = queued(&alerter);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].coalesced_count, 1, "the dropped alert is counted");
    }

    #[test]
    fn dead_letters_raised_from_outside_do_not_alert() {
        let alerter = alerter(AlertSettings { min_severity: Severity::Low, ..AlertSettings::default() });
        alerter.raise(&event(SecurityEventKind::AlertDeliveryFailed, 0, None, &[("sink", "ops")]));
        assert!(queued(&alerter).is_empty());
    }

    #[test]
    fn the_coalescing_table_is_bounded() {
        let mut coalescing = Coalescing::default();
        let kind = SecurityEventKind::IpBlocked;
        let at = Timestamp::from_unix_millis(0);
        for n in 0..MAX_COALESCING_KEYS + 10 {
            let (key, decision) = coalescing.decide(kind, format!("user:{n}"), at, 10 * MINUTE);
            if decision.is_some() {
                coalescing.sent(key, at);
            }
        }
        assert!(coalescing.keys.len() <= MAX_COALESCING_KEYS + 1);
        // Once the first keys have cooled, they make room again.
        let later = Timestamp::from_unix_millis(10 * MINUTE);
        let (key, decision) = coalescing.decide(kind, "user:new".into(), later, 10 * MINUTE);
        assert_eq!((key.1.as_str(), decision), ("user:new", Some(0)));
        assert!(coalescing.keys.len() <= 2);
    }
}
