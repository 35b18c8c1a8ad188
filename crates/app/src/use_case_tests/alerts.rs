//! Use-case tests of alerts: delivery to a real HTTP receiver on loopback (signature, retries,
//! dead letters), coalescing on the fixed clock, the severity threshold, email alerts, and that a
//! sink's secret never reaches a body or a log line.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use portcullis_domain::{SecurityEventId, Severity};
use tokio::sync::watch;

use super::*;
use crate::mail::{MailError, Mailer};
use crate::{AlertCounters, AlertSettings, Clock, EmailSink, RetryPolicy, SIGNATURE_HEADER, WebhookSink};

/// The sink secret: it must never show up in a request body or in a log line.
const CANARY: &str = "whsec-canary-9f3b2c7d1e8a4b6c0d5e";
/// A path segment standing for the credential that chat webhooks carry in their URL.
const PATH_CANARY: &str = "T0KEN-path-canary";
const CLIENT_IP: &str = "203.0.113.7";
const TOLERANCE: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------------
// A webhook receiver on 127.0.0.1:0 that records every request and answers from a script

#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Never answers (the sender's timeout must end the try).
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

#[derive(Clone, Default)]
struct Script {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

struct Receiver {
    url: String,
    script: Script,
}

impl Receiver {
    fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }
}

/// A receiver that answers `replies` in order, then 200.
async fn receiver(replies: &[Reply]) -> Receiver {
    async fn hook(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> StatusCode {
        script.received.lock().unwrap().push(Received { headers, body });
        let reply = script.replies.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
        match reply {
            Reply::Status(code) => StatusCode::from_u16(code).unwrap(),
            Reply::Hang => std::future::pending().await,
        }
    }
    let script =
        Script { replies: Arc::new(Mutex::new(replies.iter().copied().collect())), ..Script::default() };
    let router = axum::Router::new()
        .route(&format!("/hooks/{PATH_CANARY}"), axum::routing::post(hook))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/{PATH_CANARY}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Receiver { url, script }
}

// ---------------------------------------------------------------------------------------------------
// Fixtures

/// Three quick tries: real HTTP retries with millisecond backoff.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(4),
    }
}

fn webhook(receiver: &Receiver) -> WebhookSink {
    let mut sink = WebhookSink::new("pager", &receiver.url, secret(CANARY)).unwrap();
    sink.retry = fast_retry();
    sink.timeout = Duration::from_secs(5);
    sink
}

fn email_sink() -> EmailSink {
    let mut sink = EmailSink::new("ops", vec![Email::parse("ops@example.com").unwrap()]).unwrap();
    sink.retry = fast_retry();
    sink
}

/// An app with `alerts`, its delivery task running; keep the sender alive for the test.
async fn alerting(alerts: AlertSettings) -> (TestApp, watch::Sender<bool>) {
    let mut settings = testing::settings();
    settings.alerts = alerts;
    let t = app_with_settings(settings).await;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(t.app.clone().deliver_alerts(stopped));
    (t, stop)
}

fn with_webhook(sink: WebhookSink) -> AlertSettings {
    AlertSettings { webhooks: vec![sink], ..AlertSettings::default() }
}

fn user(n: u8) -> UserId {
    UserId::from_random_bytes([n; 16])
}

fn details(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Records a security event the way the abuse rules do (which hands it to the alerter).
async fn record(app: &App, kind: SecurityEventKind, user: UserId, pairs: &[(&str, &str)]) {
    app.record_security_event_with(kind, Some(user), None, Some(CLIENT_IP), details(pairs)).await.unwrap();
}

async fn stuffing(app: &App, user: UserId) {
    record(
        app,
        SecurityEventKind::CredentialStuffing,
        user,
        &[("network", "198.51.100.0/24"), ("client", CLIENT_IP), ("login", ALICE)],
    )
    .await;
}

async fn delivered(app: &App, n: u64) -> AlertCounters {
    app.alerts_until(|c| c.delivered >= n).await
}

async fn dead_lettered(app: &App, n: u64) -> AlertCounters {
    app.alerts_until(|c| c.dead_lettered >= n).await
}

async fn dead_letters_of(app: &App, user: UserId) -> Vec<SecurityEvent> {
    events_of(app, user)
        .await
        .into_iter()
        .map(|(event, _)| event)
        .filter(|e| e.kind == SecurityEventKind::AlertDeliveryFailed)
        .collect()
}

fn verifies(request: &Received, now: Timestamp) -> bool {
    let header = request.header(SIGNATURE_HEADER);
    crate::verify_signature(&secret(CANARY), header, &request.body, now, TOLERANCE).is_ok()
}

// ---------------------------------------------------------------------------------------------------
// Webhooks

#[tokio::test]
async fn a_webhook_alert_is_signed_json_that_a_receiver_can_verify() {
    let hook = receiver(&[]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;

    let [request] = hook.received().try_into().unwrap();
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("user-agent"), "portcullis/test");
    assert!(request.header(SIGNATURE_HEADER).starts_with("t=1700000000,v1="), "{:?}", request.headers);
    assert!(verifies(&request, t.clock.now()));
    let json = request.json();
    assert_eq!(json["kind"], "credential_stuffing");
    assert_eq!(json["severity"], "high");
    assert_eq!(json["at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(json["user_id"], user(1).to_string());
    assert_eq!(json["session_id"], serde_json::Value::Null);
    assert_eq!(json["coalesced_count"], 0);
    assert!(SecurityEventId::parse(json["id"].as_str().unwrap()).is_ok());
    assert_eq!(
        json["details"],
        serde_json::json!({"network": "198.51.100.0/24", "redacted": "client,login"})
    );
    let body = String::from_utf8(request.body.to_vec()).unwrap();
    for leaked in [CLIENT_IP, ALICE, CANARY] {
        assert!(!body.contains(leaked), "{leaked} in {body}");
    }
}

#[tokio::test]
async fn a_tampered_body_or_an_old_timestamp_fails_verification() {
    let hook = receiver(&[]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;
    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;
    let [request] = hook.received().try_into().unwrap();

    let mut tampered = request.clone();
    tampered.body = Bytes::from(String::from_utf8(request.body.to_vec()).unwrap().replace("high", "low"));
    assert!(!verifies(&tampered, t.clock.now()), "a changed body");
    assert!(!verifies(&request, t.clock.now().plus_millis(301_000)), "a replay after the tolerance");
    assert!(verifies(&request, t.clock.now().plus_millis(299_000)), "within the tolerance");
}

#[tokio::test]
async fn a_500_is_retried_and_the_second_try_delivers() {
    let hook = receiver(&[Reply::Status(500)]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    let counters = delivered(&t.app, 1).await;

    let requests = hook.received();
    assert_eq!(requests.len(), 2, "one failed try and one that delivered");
    assert_eq!(requests[0].body, requests[1].body, "the same alert");
    assert!(requests.iter().all(|r| verifies(r, t.clock.now())), "each try is signed");
    assert_eq!(counters.dead_lettered, 0);
    assert!(dead_letters_of(&t.app, user(1)).await.is_empty());
}

#[tokio::test]
async fn a_sink_that_always_fails_gets_every_try_and_then_a_dead_letter() {
    let hook = receiver(&[Reply::Status(500); 3]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    dead_lettered(&t.app, 1).await;

    assert_eq!(hook.received().len(), 3, "max_attempts tries");
    let original = events_of(&t.app, user(1))
        .await
        .into_iter()
        .find(|(e, _)| e.kind == SecurityEventKind::CredentialStuffing)
        .unwrap()
        .0;
    let [letter] = dead_letters_of(&t.app, user(1)).await.try_into().unwrap();
    assert_eq!(
        letter.details,
        details(&[
            ("sink", "pager"),
            ("alert_kind", "credential_stuffing"),
            ("event_id", &original.id.to_string()),
            ("attempts", "3"),
            ("last_error", "http 500"),
        ])
    );
    assert_eq!(t.app.alert_counters().delivered, 0, "the dead letter is not sent to the sink that failed");
}

#[tokio::test]
async fn a_4xx_is_final_but_a_429_is_retried() {
    let hook = receiver(&[Reply::Status(429), Reply::Status(404)]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    dead_lettered(&t.app, 1).await;

    assert_eq!(hook.received().len(), 2, "429 is retried, 404 is not");
    let [letter] = dead_letters_of(&t.app, user(1)).await.try_into().unwrap();
    assert_eq!(letter.details["attempts"], "2");
    assert_eq!(letter.details["last_error"], "http 404");
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_in_time_is_retried_as_a_timeout() {
    let hook = receiver(&[Reply::Hang, Reply::Hang]).await;
    let mut sink = webhook(&hook);
    sink.timeout = Duration::from_millis(200);
    sink.retry.max_attempts = 2;
    let (t, _stop) = alerting(with_webhook(sink)).await;

    stuffing(&t.app, user(1)).await;
    dead_lettered(&t.app, 1).await;

    assert_eq!(hook.received().len(), 2);
    let [letter] = dead_letters_of(&t.app, user(1)).await.try_into().unwrap();
    assert_eq!(letter.details["last_error"], "timeout");
}

// ---------------------------------------------------------------------------------------------------
// Which events alert, and how often

#[tokio::test]
async fn repeats_within_the_cooldown_are_coalesced_and_the_next_alert_counts_them() {
    let hook = receiver(&[]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;
    t.clock.advance_millis(MINUTE);
    for _ in 0..3 {
        stuffing(&t.app, user(1)).await;
    }
    stuffing(&t.app, user(2)).await; // another cause alerts on its own
    delivered(&t.app, 2).await;
    assert_eq!(t.app.alert_counters().coalesced, 3);
    t.clock.advance_millis(9 * MINUTE);
    stuffing(&t.app, user(1)).await;
    let counters = delivered(&t.app, 3).await;

    let bodies: Vec<(String, u64)> = hook
        .received()
        .iter()
        .map(|r| r.json())
        .map(|j| (j["user_id"].as_str().unwrap().to_owned(), j["coalesced_count"].as_u64().unwrap()))
        .collect();
    let (one, two) = (user(1).to_string(), user(2).to_string());
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], (one.clone(), 0));
    assert!(bodies[1..].contains(&(two, 0)), "{bodies:?}");
    assert!(bodies[1..].contains(&(one, 3)), "{bodies:?}");
    assert_eq!(counters.queued, 3);
}

#[tokio::test]
async fn a_burst_that_stops_inside_the_cooldown_is_reported_when_the_cooldown_ends() {
    let hook = receiver(&[]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;
    for _ in 0..4 {
        stuffing(&t.app, user(1)).await;
    }
    // Nothing more comes. Inside the cooldown a flush owes nothing yet ...
    t.clock.advance_millis(5 * MINUTE);
    t.app.flush_alerts();
    assert_eq!(t.app.alert_counters().queued, 1);
    // ... once it is over, the newest repeat goes out carrying the three before it, once.
    t.clock.advance_millis(5 * MINUTE);
    t.app.flush_alerts();
    t.app.flush_alerts();
    let counters = delivered(&t.app, 2).await;
    assert_eq!(counters.queued, 2);
    let counts: Vec<u64> =
        hook.received().iter().map(|r| r.json()["coalesced_count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [0, 3]);
}

#[tokio::test]
async fn an_event_below_the_minimum_severity_does_not_alert() {
    let hook = receiver(&[]).await;
    let (t, _stop) = alerting(with_webhook(webhook(&hook))).await;

    record(&t.app, SecurityEventKind::LoginFailed, user(1), &[]).await; // low
    record(&t.app, SecurityEventKind::Scanning, user(1), &[]).await; // medium
    record(&t.app, SecurityEventKind::IpBlocked, user(1), &[("network", "198.51.100.7/32")]).await; // high
    let counters = delivered(&t.app, 1).await;

    let kinds: Vec<String> =
        hook.received().iter().map(|r| r.json()["kind"].as_str().unwrap().into()).collect();
    assert_eq!(kinds, ["ip_blocked"]);
    assert_eq!(counters.queued, 1);
    let json = hook.received()[0].json();
    assert_eq!(json["details"]["redacted"], "network", "a /32 is one address: personal data");
}

#[tokio::test]
async fn a_severity_override_makes_a_low_kind_alert() {
    let hook = receiver(&[]).await;
    let mut alerts = with_webhook(webhook(&hook));
    alerts.severity_overrides = vec![(SecurityEventKind::LoginFailed, Severity::Critical)];
    let (t, _stop) = alerting(alerts).await;

    record(&t.app, SecurityEventKind::LoginFailed, user(1), &[]).await;
    delivered(&t.app, 1).await;

    let json = hook.received()[0].json();
    assert_eq!((json["kind"].as_str(), json["severity"].as_str()), (Some("login_failed"), Some("critical")));
}

// ---------------------------------------------------------------------------------------------------
// Email, dead letters across sinks, secrets

#[tokio::test]
async fn an_alert_email_is_short_text_with_ids_and_without_the_address_or_ip() {
    let (t, _stop) = alerting(AlertSettings { emails: vec![email_sink()], ..AlertSettings::default() }).await;

    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;

    let [mail] = t.mail.0.lock().unwrap().clone().try_into().unwrap();
    assert_eq!(mail.to.as_str(), "ops@example.com");
    assert_eq!(mail.subject, "Portcullis alert: credential_stuffing (high)");
    for expected in
        ["credential_stuffing", "high", "2023-11-14T22:13:20.000Z", &user(1).to_string(), "198.51.100.0/24"]
    {
        assert!(mail.text.contains(expected), "{expected} missing from {}", mail.text);
    }
    assert!(!mail.text.contains(CLIENT_IP) && !mail.text.contains(ALICE), "{}", mail.text);
    assert!(mail.text.len() < 1024, "a short message");
}

#[tokio::test]
async fn a_dead_letter_is_alerted_to_the_other_sinks_but_not_to_the_one_that_failed() {
    let hook = receiver(&[Reply::Status(503); 3]).await;
    let (t, _stop) = alerting(AlertSettings {
        webhooks: vec![webhook(&hook)],
        emails: vec![email_sink()],
        ..AlertSettings::default()
    })
    .await;

    stuffing(&t.app, user(1)).await;
    let counters = t.app.alerts_until(|c| c.dead_lettered >= 1 && c.delivered >= 2).await;

    assert_eq!(hook.received().len(), 3, "the webhook gets its tries and no dead-letter alert");
    let mut subjects: Vec<String> = t.mail.0.lock().unwrap().iter().map(|m| m.subject.clone()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["Portcullis alert: alert_delivery_failed (high)", "Portcullis alert: credential_stuffing (high)"]
    );
    let mail = t.mail.0.lock().unwrap().clone();
    let letter = mail.iter().find(|m| m.subject.contains("alert_delivery_failed")).unwrap();
    assert!(letter.text.contains("sink = pager") && letter.text.contains("last_error = http 503"));
    assert!(!letter.text.contains("127.0.0.1") && !letter.text.contains(PATH_CANARY), "{}", letter.text);
    assert_eq!(counters.queued, 2);
}

/// Refuses every email.
#[derive(Debug, Default)]
struct FailingMailer;

#[async_trait]
impl Mailer for FailingMailer {
    async fn send(&self, _email: &OutgoingEmail) -> Result<(), MailError> {
        Err(MailError::InvalidSubject)
    }
}

#[tokio::test]
async fn when_every_sink_fails_dead_letters_are_stored_but_never_alert_in_a_loop() {
    let hook = receiver(&[Reply::Status(500); 6]).await;
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.migrate().await.unwrap();
    let mut settings = testing::settings();
    settings.alerts = AlertSettings {
        webhooks: vec![webhook(&hook)],
        emails: vec![email_sink()],
        ..AlertSettings::default()
    };
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_millis(testing::START)));
    let app = App::new(Arc::new(store), clock, settings, Arc::new(FailingMailer)).unwrap();
    app.load_keys().await.unwrap();
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(app.clone().deliver_alerts(stopped));

    stuffing(&app, user(1)).await;
    // The stuffing alert fails on both sinks (two dead letters), each dead letter's alert fails on
    // the other sink (two more), and those are never alerted.
    let counters = dead_lettered(&app, 4).await;

    assert_eq!(counters.queued, 3, "the stuffing alert and one alert per first dead letter");
    let letters = dead_letters_of(&app, user(1)).await;
    let mut about: Vec<(String, String)> =
        letters.iter().map(|l| (l.details["sink"].clone(), l.details["alert_kind"].clone())).collect();
    about.sort();
    assert_eq!(
        about,
        [
            ("ops".into(), "alert_delivery_failed".into()),
            ("ops".into(), "credential_stuffing".into()),
            ("pager".into(), "alert_delivery_failed".into()),
            ("pager".into(), "credential_stuffing".into()),
        ]
    );
    assert_eq!(hook.received().len(), 6, "three tries for each of the two alerts the webhook got");
    let email_letter = letters.iter().find(|l| l.details["sink"] == "ops").unwrap();
    assert!(email_letter.details["last_error"].starts_with("the subject"), "{:?}", email_letter.details);
}

/// Everything a subscriber writes, for grepping.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_sink_secret_never_appears_in_a_body_or_a_log_line() {
    // tracing-core caches each callsite's interest. While only one dispatcher exists besides the
    // global default, it computes that interest from the registering thread's own default, so a
    // callsite first hit by another test's thread is cached as unwanted and this subscriber never
    // sees it. A second, silent dispatcher kept for the whole run puts tracing-core in its
    // many-dispatcher mode, where interest is computed from every live dispatcher.
    static SILENT: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SILENT.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    // A current-thread runtime: every task of this test logs through this thread's subscriber.
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Another test may have registered these callsites under a global subscriber that did not want
    // them; interest is cached per callsite, so ask again now that this subscriber is the default.
    tracing::callsite::rebuild_interest_cache();
    let hook = receiver(&[Reply::Status(500); 3]).await;
    let (t, _stop) = alerting(AlertSettings {
        webhooks: vec![webhook(&hook)],
        emails: vec![email_sink()],
        ..AlertSettings::default()
    })
    .await;
    tracing::info!(settings = ?AlertSettings { webhooks: vec![webhook(&hook)], ..AlertSettings::default() });

    stuffing(&t.app, user(1)).await;
    t.app.alerts_until(|c| c.dead_lettered >= 1 && c.delivered >= 2).await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("alert delivery try failed"), "the capture works: {logs}");
    assert!(logs.contains("alert not delivered after the last try"), "{logs}");
    for leaked in [CANARY, PATH_CANARY] {
        assert!(!logs.contains(leaked), "{leaked} in the logs:\n{logs}");
    }
    for request in hook.received() {
        assert!(!String::from_utf8_lossy(&request.body).contains(CANARY));
    }
    for mail in t.mail.0.lock().unwrap().iter() {
        assert!(!mail.text.contains(CANARY) && !mail.text.contains(PATH_CANARY), "{}", mail.text);
    }
}

#[tokio::test]
async fn delivery_stops_when_the_server_shuts_down() {
    let hook = receiver(&[]).await;
    let mut settings = testing::settings();
    settings.alerts = with_webhook(webhook(&hook));
    let t = app_with_settings(settings).await;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(t.app.clone().deliver_alerts(stopped));
    stuffing(&t.app, user(1)).await;
    delivered(&t.app, 1).await;

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();

    stuffing(&t.app, user(2)).await;
    assert_eq!(t.app.alert_counters().dropped, 1, "nothing takes alerts any more: dropped and counted");
}
