//! Error tracking end to end: a panicking handler and an internal error, behind the production
//! middleware on a real socket, with canary secrets in every place a request can carry one (the
//! Authorization header, a cookie, the query string, `x-api-key`, a JSON body password) and in the
//! error's own text, reported to a local endpoint that stands in for Sentry and keeps the raw bytes.
//!
//! Each test's server logs through the subscriber `serve` installs (`telemetry::subscriber` with
//! the Sentry layer of `ErrorTracking::start`), set as the default of the test's thread: the test
//! runtime is single-threaded, so every request task logs through it, while the binary-wide capture
//! (`support::init_logs`) stays as it is for the other suites.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::routing::post;
use http::HeaderMap;
use portcullis::config::{Config, Secret};
use portcullis::error_tracking::ErrorTracking;
use portcullis_app::AppError;
use portcullis_web::ApiError;

use crate::support::{log_panics, serve_probe};

const AUTHORIZATION: &str = "Bearer canary-authorization-header-7f3e91";
const COOKIE: &str = "__Host-portcullis_session=canary-cookie-value-1b2c3d";
const QUERY: &str = "token=canary-query-token-9d8e7f&next=%2Fhome";
const API_KEY: &str = "canary-x-api-key-4a5b6c";
const BODY: &str = r#"{"email":"someone@example.com","password":"canary-body-password-6c7d8e"}"#;
/// The secrets inside the failure's own text, each in a shape the scrubber knows.
const MESSAGE_BEARER: &str = "canary-message-bearer-0a1b2c";
const MESSAGE_PASSWORD: &str = "canary-message-password-3d4e5f";
const MESSAGE_API_KEY: &str = "pcs_canaryApiKeyInTheMessage0_canarysecretpartofanapikeyinthemessage0000000";
const PANIC_TOKEN: &str = "canary-panic-token-6a7b8c";

/// Every canary, as it would appear if it leaked.
const CANARIES: &[&str] = &[
    "canary-authorization-header",
    "canary-cookie-value",
    "canary-query-token",
    "canary-x-api-key",
    "canary-body-password",
    "someone@example.com",
    MESSAGE_BEARER,
    MESSAGE_PASSWORD,
    MESSAGE_API_KEY,
    "canaryApiKeyInTheMessage",
    PANIC_TOKEN,
];

/// One POST the stand-in received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: String,
    body: Vec<u8>,
}

/// A stand-in for Sentry's ingestion endpoint on 127.0.0.1, on its own thread and runtime (the test
/// blocks its own thread while flushing).
struct Endpoint {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    fn start() -> Endpoint {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let store = received.clone();
        let thread =
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let record = move |path: String, headers: HeaderMap, body: Bytes| {
                        let headers = headers
                            .iter()
                            .map(|(name, value)| {
                                format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes()))
                            })
                            .collect();
                        store.lock().unwrap().push(Received { path, headers, body: body.to_vec() });
                        "{}"
                    };
                    let envelope = record.clone();
                    let app = axum::Router::new()
                    .route(
                        "/api/{project}/envelope/",
                        post(move |Path(project): Path<String>, headers: HeaderMap, body: Bytes| async move {
                            envelope(format!("/api/{project}/envelope/"), headers, body)
                        }),
                    )
                    // Anything sent elsewhere is kept too, so a leak there is seen as well.
                    .fallback(move |uri: http::Uri, headers: HeaderMap, body: Bytes| async move {
                        record(uri.to_string(), headers, body)
                    });
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                        .unwrap();
                });
            });
        Endpoint { addr, received, stop: Some(stop), thread: Some(thread) }
    }

    fn dsn(&self) -> String {
        format!("http://e2epublickey@{}/42", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The events of a Sentry envelope (a JSON header line, then items of a JSON header line and a
/// payload of the stated length, or up to the next newline without one).
fn events_in(envelope: &[u8]) -> Vec<serde_json::Value> {
    let mut rest = match envelope.iter().position(|b| *b == b'\n') {
        Some(end) => &envelope[end + 1..],
        None => return Vec::new(),
    };
    let mut events = Vec::new();
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let header: serde_json::Value = serde_json::from_slice(&rest[..end]).unwrap();
        rest = rest.get(end + 1..).unwrap_or_default();
        let length = match header["length"].as_u64() {
            Some(length) => length as usize,
            None => rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len()),
        };
        let payload = &rest[..length];
        rest = rest.get(length + 1..).unwrap_or_default();
        if header["type"] == "event" {
            events.push(serde_json::from_slice(payload).unwrap());
        }
    }
    events
}

/// The probe handlers log what a careless handler might (every header, the query, the body) before
/// failing, so those lines, as breadcrumbs, must be scrubbed too.
fn log_the_request(headers: &HeaderMap, query: Option<&str>, body: &Bytes) {
    tracing::info!(headers = ?headers, "probe: the request's headers");
    tracing::warn!(query = query.unwrap_or_default(), body = %String::from_utf8_lossy(body), "probe: the query and body");
}

#[allow(clippy::panic, reason = "the probe exists to panic")]
async fn panics(headers: HeaderMap, RawQuery(query): RawQuery, body: Bytes) -> &'static str {
    log_the_request(&headers, query.as_deref(), &body);
    panic!("probe panic after token={PANIC_TOKEN}")
}

async fn fails(headers: HeaderMap, RawQuery(query): RawQuery, body: Bytes) -> Result<&'static str, ApiError> {
    log_the_request(&headers, query.as_deref(), &body);
    let cause = format!(
        "upstream refused Bearer {MESSAGE_BEARER}; retried with password={MESSAGE_PASSWORD} and key {MESSAGE_API_KEY}"
    );
    Err(ApiError::from(AppError::Internal(cause.into())))
}

/// The answers to the two failing requests, by route.
struct Answers {
    request_ids: BTreeMap<&'static str, String>,
}

/// Starts a probe server reporting as `config` says, sends each failing route a request full of
/// canaries, and waits until the client's queue has been sent.
async fn fail_with_canaries(config: &Config) -> Answers {
    log_panics();
    let tracking = ErrorTracking::start(config).unwrap();
    let subscriber =
        portcullis::telemetry::subscriber(&config.log, config.mode, std::io::sink, false, tracking.as_ref());
    let _default = tracing::subscriber::set_default(subscriber);
    let routes =
        axum::Router::new().route("/v1/probe/panics", post(panics)).route("/v1/probe/fails", post(fails));
    let (addr, stop, server) = serve_probe(routes).await;

    let client = reqwest::Client::new();
    let mut request_ids = BTreeMap::new();
    for route in ["/v1/probe/panics", "/v1/probe/fails"] {
        let response = client
            .post(format!("http://{addr}{route}?{QUERY}"))
            .header("authorization", AUTHORIZATION)
            .header("cookie", COOKIE)
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500, "{route}");
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = response.text().await.unwrap();
        assert!(CANARIES.iter().all(|c| !body.contains(c)), "{route} answered {body}");
        request_ids.insert(route, request_id);
    }
    stop.send(true).unwrap();
    server.await.unwrap();
    // Everything was queued before the 500 went out (the hook and the error line run first).
    if let Some(tracking) = &tracking {
        assert!(tracking.flush(Duration::from_secs(10)), "the events were not sent within 10 s");
    }
    Answers { request_ids }
}

fn assert_no_canary(received: &[Received]) {
    for post in received {
        let text = format!("{} {} {}", post.path, post.headers, String::from_utf8_lossy(&post.body));
        for canary in CANARIES {
            assert!(!text.contains(canary), "canary {canary} reached the endpoint:\n{text}");
        }
    }
}

/// Every event received, each checked for the labels every event carries.
fn received_events(endpoint: &Endpoint) -> Vec<serde_json::Value> {
    let received = endpoint.received();
    assert_no_canary(&received);
    let mut events = Vec::new();
    for post in &received {
        assert_eq!(post.path, "/api/42/envelope/");
        assert!(post.headers.contains("sentry_key=e2epublickey"), "{}", post.headers);
        // Checked on the raw bytes: a compressed body would hide a leaked canary from the search.
        assert!(!post.headers.contains("content-encoding"), "{}", post.headers);
        events.extend(events_in(&post.body));
    }
    for event in &events {
        assert_eq!(event["environment"], "development", "{event}");
        assert_eq!(event["release"], format!("portcullis@{}", portcullis::VERSION), "{event}");
        assert!(event["user"].get("ip_address").is_none(), "{event}");
    }
    events
}

fn config_reporting_to(endpoint: &Endpoint) -> Config {
    let mut config = Config::default();
    config.sentry.dsn = Some(Secret::new(endpoint.dsn()));
    config
}

fn events_of<'a>(events: &'a [serde_json::Value], request_id: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["tags"]["request_id"] == request_id).collect()
}

#[tokio::test]
async fn a_panicking_request_is_reported_once_with_its_request_id_stack_and_no_secret() {
    let endpoint = Endpoint::start();
    let answers = fail_with_canaries(&config_reporting_to(&endpoint)).await;

    let events = received_events(&endpoint);
    let panics = events_of(&events, &answers.request_ids["/v1/probe/panics"]);
    assert_eq!(panics.len(), 1, "one report per panic, not one per log line: {panics:#?}");
    let event = panics[0];
    assert_eq!(event["tags"]["route"], "/v1/probe/panics");
    assert_eq!(event["tags"]["method"], "POST");
    assert_eq!(event["transaction"], "POST /v1/probe/panics");
    let exception = &event["exception"]["values"][0];
    assert_eq!(exception["type"], "panic");
    assert_eq!(exception["value"], "probe panic after token=[Filtered]");
    assert_eq!(exception["mechanism"]["handled"], false);
    assert!(event["extra"]["panic.location"].as_str().unwrap().contains("error_tracking.rs"), "{event}");
    let frames = exception["stacktrace"]["frames"].as_array().unwrap();
    let last = frames.last().unwrap()["function"].as_str().unwrap();
    assert!(last.contains("error_tracking::panics"), "the stack ends in the panicking handler, not {last}");
    let breadcrumbs = event["breadcrumbs"]["values"].as_array().unwrap();
    let messages: Vec<&str> = breadcrumbs.iter().filter_map(|b| b["message"].as_str()).collect();
    assert!(messages.contains(&"probe: the request's headers"), "{messages:?}");
    assert!(messages.contains(&"probe: the query and body"), "{messages:?}");
}

#[tokio::test]
async fn an_internal_error_is_reported_with_its_cause_request_id_and_no_secret() {
    let endpoint = Endpoint::start();
    let answers = fail_with_canaries(&config_reporting_to(&endpoint)).await;

    let events = received_events(&endpoint);
    let failures = events_of(&events, &answers.request_ids["/v1/probe/fails"]);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    let event = failures[0];
    assert_eq!(event["tags"]["route"], "/v1/probe/fails");
    assert_eq!(event["tags"]["method"], "POST");
    let exception = &event["exception"]["values"][0];
    assert_eq!(exception["type"], "request failed: internal error");
    let cause = exception["value"].as_str().unwrap();
    assert!(
        cause.contains(
            "upstream refused Bearer [Filtered]; retried with password=[Filtered] and key [Filtered]"
        ),
        "{cause}"
    );
    assert!(event["tags"].get("client_ip").is_none(), "{event}");
    assert!(event.get("request").is_none(), "{event}");
    // Every event sent is one of the two requests': the panic and the failure.
    assert_eq!(events.len(), 2, "{events:#?}");
}

#[tokio::test]
async fn without_a_dsn_nothing_is_sent() {
    let endpoint = Endpoint::start();
    let config = Config::default();
    assert!(ErrorTracking::start(&config).unwrap().is_none(), "no DSN, no client");

    let answers = fail_with_canaries(&config).await;

    assert_eq!(answers.request_ids.len(), 2);
    assert!(endpoint.received().is_empty(), "{:?}", endpoint.received());
}

/// The binary holds its client to the end: a start that fails (here, the port is taken) is
/// reported, and sent before the process exits.
#[test]
fn the_binary_reports_a_failed_start_and_sends_it_before_exiting() {
    let endpoint = Endpoint::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .env_clear()
        .env("PORTCULLIS_SENTRY__DSN", endpoint.dsn())
        .current_dir(dir.path())
        .args(["serve", "--data-dir", "data", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("e2epublickey"), "the DSN is never logged: {stderr}");
    let events = received_events(&endpoint);
    assert_eq!(events.len(), 1, "{events:#?}");
    let exception = &events[0]["exception"]["values"][0];
    assert_eq!(exception["type"], "portcullis stopped with an error");
    assert!(exception["value"].as_str().unwrap().contains("cannot listen on"), "{exception}");
}
