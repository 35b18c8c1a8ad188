//! The HTTP stack over a real socket: client address, limits, logging hygiene.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{access_log_of, log_text, spawn_app, spawn_with};

#[tokio::test]
async fn healthz_and_readyz_answer_over_a_real_socket() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["checks"]["migrations"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "spoof-untrusted-1")
        .header("x-forwarded-for", "203.0.113.66")
        .header("forwarded", "for=203.0.113.67;proto=https")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("strict-transport-security").is_none(),
        "a spoofed proto must not switch on HSTS"
    );
    assert_eq!(access_log_of("spoof-untrusted-1")["span"]["client_ip"], "127.0.0.1");
    app.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_is_believed_about_the_client_address_and_scheme() {
    let app = spawn_with(|c| c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "via-trusted-proxy-1")
        .header("x-forwarded-for", "1.1.1.1, 198.51.100.23")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("strict-transport-security").is_some());
    assert_eq!(access_log_of("via-trusted-proxy-1")["span"]["client_ip"], "198.51.100.23");
    app.stop().await;
}

#[tokio::test]
async fn an_oversize_body_is_refused_with_a_413_problem() {
    let app = spawn_app().await;
    for path in ["/healthz", "/does-not-exist"] {
        let response = app.client.post(app.url(path)).body(vec![b'x'; 65 * 1024]).send().await.unwrap();
        assert_eq!(response.status(), 413, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["type"], "urn:portcullis:problem:payload-too-large");
    }
    app.stop().await;
}

#[tokio::test]
async fn too_many_headers_are_a_431_problem_and_a_flood_is_cut_off_by_the_connection_limit() {
    let app = spawn_app().await;
    let mut request = app.client.get(app.url("/healthz"));
    for i in 0..70 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["type"],
        "urn:portcullis:problem:headers-too-large"
    );

    // Far beyond the configured limit hyper itself refuses to parse the head.
    let mut request = app.client.get(app.url("/healthz"));
    for i in 0..400 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 431);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_with(|c| c.http.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (after its 1 s header timeout); bounded so a hang fails.
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a stalled connection open");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    app.stop().await;
}

#[tokio::test]
async fn the_access_log_has_the_route_template_and_never_credentials_query_strings_or_bodies() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/healthz/canary-in-path?token=canary-in-query"))
        .header("x-request-id", "log-hygiene-1")
        .header("authorization", "Bearer canary-in-authorization")
        .header("cookie", "session=canary-in-cookie")
        .header("content-type", "application/json")
        .body(r#"{"password":"canary-in-body"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let line = access_log_of("log-hygiene-1");
    assert_eq!(line["span"]["method"], "POST");
    assert_eq!(line["span"]["route"], "-");
    assert_eq!(line["status"], 404);
    assert!(line["latency_ms"].is_number());

    let response = app
        .client
        .get(app.url("/healthz?token=canary-in-query"))
        .header("x-request-id", "log-hygiene-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(access_log_of("log-hygiene-2")["span"]["route"], "/healthz");
    assert!(!log_text().contains("canary"), "a secret reached the logs");
    app.stop().await;
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers_over_the_wire() {
    let app = spawn_with(|c| c.cors.allowed_origins = vec!["https://app.example.com".into()]).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(response.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));
    let response =
        app.client.get(app.url("/healthz")).header("origin", "https://app.example.com").send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example.com");
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let app = spawn_with(|c| c.http.header_read_timeout_secs = 1).await;
    // Nothing at all, then only the first bytes of the HTTP/2 preface: neither reaches hyper's own
    // header timeout, both must still be closed.
    for opening in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..]] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "an idle connection ({opening:?}) was kept open");
    }
    app.stop().await;
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_waits_for_a_free_slot() {
    let app = spawn_with(|c| c.http.max_connections = 1).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // The first client keeps its connection alive, holding the only slot.
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let addr = app.addr;
    let second = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    });
    // While the slot is held the second request is not served (bounded wait, not a sleep).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !second.is_finished() {
                tokio::task::yield_now().await
            }
        })
        .await
        .is_err()
    );
    drop(first);
    let response = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    app.stop().await;
}
