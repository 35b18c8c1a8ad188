//! Router-level tests: the production middleware stack, driven with `oneshot` and no socket, around
//! the real routes and a few probe routes (a JSON echo, a panicking handler, a slow handler) that
//! exercise what the real routes cannot yet.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly by design")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use portcullis_app::mail::FileOutbox;
use portcullis_app::{App, AppSettings, HashAlgorithm, KekSet, SystemClock};
use portcullis_store::Store;
use portcullis_store_sqlite::SqliteStore;
use portcullis_web::{AppState, ConnectionInfo, CorsConfig, Json, WebConfig};
use secrecy::SecretSlice;
use serde::Deserialize;
use tower::ServiceExt;

async fn app(migrated: bool) -> App {
    let store = SqliteStore::open_in_memory().await.unwrap();
    if migrated {
        store.migrate().await.unwrap();
    }
    let keks = KekSet::parse(&KekSet::generate_entry("test").unwrap()).unwrap();
    let mut settings = AppSettings::new(SecretSlice::from(vec![7u8; 32]), keks, "test", "http://localhost");
    settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
    settings.rate_limits.enabled = false;
    // Nothing here sends email; an outbox in a temporary folder keeps the wiring real.
    let outbox = FileOutbox::new(tempfile::tempdir().unwrap().keep(), "test@example.com").unwrap();
    let app = App::new(Arc::new(store), Arc::new(SystemClock), settings, Arc::new(outbox)).unwrap();
    if migrated {
        app.load_keys().await.unwrap();
    }
    app
}

async fn real_router(config: &WebConfig) -> Router {
    portcullis_web::router(AppState::new(app(true).await), config).unwrap()
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Signup {
    email: String,
    age: u32,
}

async fn echo(Json(body): Json<Signup>) -> axum::Json<Signup> {
    axum::Json(body)
}

#[allow(clippy::panic, reason = "the probe exists to panic")]
async fn boom() -> &'static str {
    panic!("probe panic with internal detail /etc/secret-path")
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "too late"
}

fn probe_router(config: &WebConfig) -> Router {
    let routes = Router::new().route("/echo", post(echo)).route("/boom", get(boom)).route("/slow", get(slow));
    portcullis_web::with_middleware(routes, config, None).unwrap()
}

fn request(method: &str, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

async fn send(router: &Router, request: Request<Body>) -> (Response<Body>, serde_json::Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (Response::from_parts(parts, Body::from(bytes)), json)
}

fn assert_problem(response: &Response<Body>, json: &serde_json::Value, status: StatusCode, slug: &str) {
    assert_eq!(response.status(), status, "{json}");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(json["type"], format!("urn:portcullis:problem:{slug}"), "{json}");
    assert_eq!(json["status"], status.as_u16());
    assert!(json["title"].is_string() && json["detail"].is_string());
    let request_id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(json["request_id"], request_id, "the body carries the same request id as the header");
}

fn json_post(uri: &str, body: &str) -> Request<Body> {
    request("POST", uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_valid_json_body_reaches_the_handler() {
    let (response, json) =
        send(&probe_router(&WebConfig::default()), json_post("/echo", r#"{"email":"a@b.c","age":3}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json["age"], 3);
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let (response, json) =
        send(&probe_router(&WebConfig::default()), json_post("/echo", r#"{"email":"#)).await;
    assert_problem(&response, &json, StatusCode::BAD_REQUEST, "malformed-request");
}

#[tokio::test]
async fn an_unknown_field_is_a_422_naming_the_field() {
    let (response, json) = send(
        &probe_router(&WebConfig::default()),
        json_post("/echo", r#"{"email":"a@b.c","age":3,"is_admin":true}"#),
    )
    .await;
    assert_problem(&response, &json, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(json["errors"][0]["field"], "/is_admin");
}

#[tokio::test]
async fn a_wrong_type_is_a_422_that_does_not_echo_the_value() {
    let (response, json) = send(
        &probe_router(&WebConfig::default()),
        json_post("/echo", r#"{"email":"a@b.c","age":"canary-value"}"#),
    )
    .await;
    assert_problem(&response, &json, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(json["errors"][0]["field"], "/age");
    assert!(!json.to_string().contains("canary-value"), "{json}");
}

#[tokio::test]
async fn a_missing_field_is_a_422() {
    let (response, json) =
        send(&probe_router(&WebConfig::default()), json_post("/echo", r#"{"age":3}"#)).await;
    assert_problem(&response, &json, StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(json["errors"][0]["field"], "/email");
    assert_eq!(json["errors"][0]["message"], "is required");
}

#[tokio::test]
async fn a_json_body_without_the_json_media_type_is_a_415() {
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut builder = request("POST", "/echo");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let (response, json) = send(
            &probe_router(&WebConfig::default()),
            builder.body(Body::from(r#"{"email":"a","age":1}"#)).unwrap(),
        )
        .await;
        assert_problem(&response, &json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    }
}

#[tokio::test]
async fn an_oversize_body_is_a_413_whether_or_not_it_declares_its_length() {
    let config = WebConfig { body_limit_bytes: 1024, ..WebConfig::default() };
    let big = format!(r#"{{"email":"{}","age":1}}"#, "a".repeat(2000));
    let (response, json) = send(&probe_router(&config), json_post("/echo", &big)).await;
    assert_problem(&response, &json, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");

    // A streamed body has no Content-Length: the limit trips while reading.
    let stream = futures_stream(big.into_bytes());
    let request =
        request("POST", "/echo").header(header::CONTENT_TYPE, "application/json").body(stream).unwrap();
    let (response, json) = send(&probe_router(&config), request).await;
    assert_problem(&response, &json, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
}

fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        bytes.chunks(100).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    Body::from_stream(tokio_stream_iter(chunks))
}

fn tokio_stream_iter<T: Send + Unpin + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T>
    where
        T: Unpin,
    {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_without_internal_detail() {
    let (response, json) =
        send(&probe_router(&WebConfig::default()), request("GET", "/boom").body(Body::empty()).unwrap())
            .await;
    assert_problem(&response, &json, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!json.to_string().contains("secret-path"), "{json}");
    assert!(!json.to_string().contains("panic"), "{json}");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_outlives_the_timeout_is_a_408_problem() {
    let config = WebConfig { request_timeout: Duration::from_secs(2), ..WebConfig::default() };
    let (response, json) =
        send(&probe_router(&config), request("GET", "/slow").body(Body::empty()).unwrap()).await;
    assert_problem(&response, &json, StatusCode::REQUEST_TIMEOUT, "request-timeout");
}

#[tokio::test]
async fn an_unknown_path_is_a_404_problem_and_a_wrong_method_a_405_with_allow() {
    let router = real_router(&WebConfig::default()).await;
    let (response, json) =
        send(&router, request("GET", "/no/such/path?token=abc").body(Body::empty()).unwrap()).await;
    assert_problem(&response, &json, StatusCode::NOT_FOUND, "not-found");
    let (response, json) = send(&router, request("DELETE", "/healthz").body(Body::empty()).unwrap()).await;
    assert_problem(&response, &json, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    assert!(response.headers()[header::ALLOW].to_str().unwrap().contains("GET"));
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_a_431_problem() {
    let config = WebConfig { max_headers: 10, max_header_bytes: 2048, ..WebConfig::default() };
    let router = real_router(&config).await;
    let mut many = request("GET", "/healthz");
    for i in 0..11 {
        many = many.header(format!("x-filler-{i}"), "1");
    }
    let (response, json) = send(&router, many.body(Body::empty()).unwrap()).await;
    assert_problem(&response, &json, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers-too-large");
    let large = request("GET", "/healthz").header("x-filler", "a".repeat(3000)).body(Body::empty()).unwrap();
    let (response, json) = send(&router, large).await;
    assert_problem(&response, &json, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers-too-large");
}

#[tokio::test]
async fn a_well_formed_request_id_is_echoed_and_a_malformed_one_replaced() {
    let router = real_router(&WebConfig::default()).await;
    let ok =
        request("GET", "/healthz").header("x-request-id", "client-trace.42_a").body(Body::empty()).unwrap();
    let (response, _) = send(&router, ok).await;
    assert_eq!(response.headers()["x-request-id"], "client-trace.42_a");

    for bad in ["has space", "<script>alert(1)</script>", &"a".repeat(65), "semi;colon"] {
        let req = request("GET", "/healthz").header("x-request-id", bad).body(Body::empty()).unwrap();
        let (response, _) = send(&router, req).await;
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32, "a generated id replaces {bad:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let (response, _) = send(&router, request("GET", "/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(response.headers()["x-request-id"].len(), 32, "an id is generated when none is sent");
}

const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cache-control", "no-store"),
];

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers_and_no_banner() {
    let router = real_router(&WebConfig::default()).await;
    let probes = probe_router(&WebConfig::default());
    let cases = [
        (&router, request("GET", "/healthz")),
        (&router, request("GET", "/openapi.json")),
        (&router, request("GET", "/missing")),
        (&router, request("PATCH", "/readyz")),
        (&probes, request("GET", "/boom")),
    ];
    for (router, builder) in cases {
        let (response, _) = send(router, builder.body(Body::empty()).unwrap()).await;
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                response.headers().get(*name).map(|v| v.to_str().unwrap()),
                Some(*value),
                "{name} on {}",
                response.status()
            );
        }
        assert!(response.headers()["permissions-policy"].to_str().unwrap().contains("camera=()"));
        assert!(response.headers().get(header::SERVER).is_none());
        assert!(response.headers().get("x-powered-by").is_none());
        assert!(
            response.headers().get(header::STRICT_TRANSPORT_SECURITY).is_none(),
            "no HSTS over plain http"
        );
    }
}

fn from_peer(uri: &str, peer: &str, tls: bool) -> http::request::Builder {
    let mut builder = request("GET", uri);
    builder
        .extensions_mut()
        .unwrap()
        .insert(ConnectionInfo { peer: peer.parse::<SocketAddr>().unwrap(), tls });
    builder
}

#[tokio::test]
async fn hsts_is_sent_over_tls_and_when_a_trusted_proxy_says_https_but_not_when_anyone_else_says_it() {
    let config = WebConfig { trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()], ..WebConfig::default() };
    let router = real_router(&config).await;
    let hsts = |response: &Response<Body>| {
        response.headers().get(header::STRICT_TRANSPORT_SECURITY).map(|v| v.to_str().unwrap().to_owned())
    };

    let (response, _) =
        send(&router, from_peer("/healthz", "203.0.113.1:5000", true).body(Body::empty()).unwrap()).await;
    assert_eq!(hsts(&response).as_deref(), Some("max-age=63072000; includeSubDomains"));

    let proxied = from_peer("/healthz", "10.0.0.2:5000", false).header("x-forwarded-proto", "https");
    let (response, _) = send(&router, proxied.body(Body::empty()).unwrap()).await;
    assert!(hsts(&response).is_some());

    let spoofed = from_peer("/healthz", "203.0.113.1:5000", false).header("x-forwarded-proto", "https");
    let (response, _) = send(&router, spoofed.body(Body::empty()).unwrap()).await;
    assert_eq!(hsts(&response), None);
}

fn cors_config() -> WebConfig {
    WebConfig {
        cors: CorsConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            allow_credentials: true,
            max_age: Duration::from_secs(600),
        },
        ..WebConfig::default()
    }
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers_with_credentials() {
    let router = real_router(&cors_config()).await;
    let req = request("GET", "/healthz")
        .header(header::ORIGIN, "https://app.example.com")
        .body(Body::empty())
        .unwrap();
    let (response, _) = send(&router, req).await;
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert!(response.headers()[header::VARY].to_str().unwrap().contains("origin"));
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered() {
    let router = real_router(&cors_config()).await;
    let req = request("OPTIONS", "/healthz")
        .header(header::ORIGIN, "https://app.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type, authorization")
        .body(Body::empty())
        .unwrap();
    let (response, _) = send(&router, req).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    assert!(response.headers()[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("POST"));
    assert!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("authorization")
    );
    assert_eq!(response.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers_at_all() {
    for config in [cors_config(), WebConfig::default()] {
        let router = real_router(&config).await;
        let simple = request("GET", "/healthz").header(header::ORIGIN, "https://evil.example.net");
        let preflight = request("OPTIONS", "/healthz")
            .header(header::ORIGIN, "https://evil.example.net")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST");
        for builder in [simple, preflight, request("GET", "/healthz")] {
            let (response, _) = send(&router, builder.body(Body::empty()).unwrap()).await;
            let cors: Vec<_> =
                response.headers().keys().filter(|k| k.as_str().starts_with("access-control-")).collect();
            assert!(cors.is_empty(), "unexpected CORS headers {cors:?}");
        }
    }
}

#[tokio::test]
async fn healthz_answers_ok_without_touching_the_database() {
    let state = AppState::new(app(true).await);
    state.app.shutdown().await; // a closed database must not make the process look dead
    let router = portcullis_web::router(state, &WebConfig::default()).unwrap();
    let (response, json) = send(&router, request("GET", "/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json["status"], "ok");
}

#[tokio::test]
async fn readyz_is_a_503_problem_naming_pending_migrations() {
    let router = portcullis_web::router(AppState::new(app(false).await), &WebConfig::default()).unwrap();
    let (response, json) = send(&router, request("GET", "/readyz").body(Body::empty()).unwrap()).await;
    assert_problem(&response, &json, StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    assert_eq!(json["checks"]["database"], "ok");
    assert_eq!(json["checks"]["migrations"], "10 migration(s) pending");
    assert_eq!(json["checks"]["keys"], "no token signing key is loaded");
}

#[tokio::test]
async fn readyz_is_ready_on_a_migrated_database() {
    let (response, json) = send(
        &real_router(&WebConfig::default()).await,
        request("GET", "/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json["status"], "ready");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_its_access_and_its_problem_responses() {
    let router = real_router(&WebConfig::default()).await;
    let (response, json) = send(&router, request("GET", "/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json["openapi"], "3.1.0");
    let paths: Vec<&str> = json["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        vec![
            "/.well-known/jwks.json",
            "/healthz",
            "/oauth2/introspect",
            "/openapi.json",
            "/readyz",
            "/v1/admin/invites",
            "/v1/admin/ip-rules",
            "/v1/admin/ip-rules/{id}",
            "/v1/admin/organizations",
            "/v1/admin/organizations/{id}",
            "/v1/admin/organizations/{id}/members",
            "/v1/admin/organizations/{id}/members/{user_id}",
            "/v1/admin/organizations/{id}/mfa-policy",
            "/v1/admin/organizations/{id}/roles",
            "/v1/admin/organizations/{id}/roles/{role_id}",
            "/v1/admin/security-events",
            "/v1/admin/service-accounts",
            "/v1/admin/service-accounts/{id}",
            "/v1/admin/service-accounts/{id}/api-keys",
            "/v1/admin/service-accounts/{id}/api-keys/{key_id}",
            "/v1/admin/service-accounts/{id}/api-keys/{key_id}/rotate",
            "/v1/admin/users",
            "/v1/admin/users/{id}",
            "/v1/admin/users/{id}/disable",
            "/v1/admin/users/{id}/enable",
            "/v1/admin/users/{id}/export",
            "/v1/admin/users/{id}/mfa",
            "/v1/admin/users/{id}/role",
            "/v1/admin/users/{id}/sessions",
            "/v1/admin/users/{id}/unlock",
            "/v1/audit/events",
            "/v1/auth/login",
            "/v1/auth/logout",
            "/v1/auth/logout-all",
            "/v1/auth/mfa/passkey-options",
            "/v1/auth/mfa/verify",
            "/v1/auth/passkey/options",
            "/v1/auth/password/forgot",
            "/v1/auth/password/reset",
            "/v1/auth/reauthenticate",
            "/v1/auth/reauthenticate/passkey-options",
            "/v1/auth/refresh",
            "/v1/auth/setup",
            "/v1/auth/signup",
            "/v1/auth/verify-email",
            "/v1/authz/check",
            "/v1/authz/check-batch",
            "/v1/me",
            "/v1/me/api-keys",
            "/v1/me/api-keys/{key_id}",
            "/v1/me/api-keys/{key_id}/rotate",
            "/v1/me/export",
            "/v1/me/mfa",
            "/v1/me/mfa/passkeys",
            "/v1/me/mfa/passkeys/options",
            "/v1/me/mfa/passkeys/{id}",
            "/v1/me/mfa/recovery-codes",
            "/v1/me/mfa/totp",
            "/v1/me/mfa/totp/{id}",
            "/v1/me/mfa/totp/{id}/confirm",
            "/v1/me/password",
            "/v1/me/sessions",
            "/v1/me/sessions/{id}",
        ]
    );
    // Every documented operation answers (not 404/405) and documents its problem responses.
    for (path, item) in json["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"]["default"].is_object(),
                "{method} {path} lacks a default problem response"
            );
            // Deny by default: an operation that does not say who may call it is a bug.
            assert!(
                operation["security"].is_array(),
                "{method} {path} declares no access requirement (security)"
            );
            let path = path
                .replace("{id}", "00000000-0000-4000-8000-000000000000")
                .replace("{user_id}", "00000000-0000-4000-8000-000000000000")
                .replace("{role_id}", "00000000-0000-4000-8000-000000000000")
                .replace("{key_id}", "AAAAAAAAAAAAAAAAAAAAAA");
            let req = request(&method.to_uppercase(), &path).body(Body::empty()).unwrap();
            let (response, _) = send(&router, req).await;
            assert!(
                response.status() != StatusCode::NOT_FOUND
                    && response.status() != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            // An operation that names a credential refuses a request without one, before anything
            // else (body parsing included) happens.
            let public =
                operation["security"].as_array().unwrap().iter().any(|r| r.as_object().unwrap().is_empty());
            if !public {
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} without credentials"
                );
            }
        }
    }
    assert!(json["components"]["schemas"]["ProblemDocument"].is_object());
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_even_where_serde_would_read_it_by_position() {
    let router = probe_router(&WebConfig::default());
    for (body, status) in [
        (r#"["a@example.com", 3]"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("  [1]", StatusCode::UNPROCESSABLE_ENTITY),
        ("3", StatusCode::UNPROCESSABLE_ENTITY),
        ("null", StatusCode::UNPROCESSABLE_ENTITY),
        ("[1,", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
    ] {
        let req = request("POST", "/echo")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (response, json) = send(&router, req).await;
        assert_eq!(response.status(), status, "{body:?}: {json}");
    }
    let req = request("POST", "/echo")
        .header("content-type", "application/json")
        .body(Body::from(r#" {"email":"a@example.com","age":3}"#))
        .unwrap();
    assert_eq!(send(&router, req).await.0.status(), StatusCode::OK);
}
