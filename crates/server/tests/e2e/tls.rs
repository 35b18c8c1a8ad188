//! TLS as a client sees it: protocol versions, HSTS, certificate reload, the redirect listener and the
//! development certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portcullis::StartOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, spawn_with, spawn_with_options, test_certificates};

fn write_pair(dir: &Path, cert: &str, key: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

async fn spawn_tls(cert: &str, key: &str, redirect: bool) -> TestApp {
    let certs = tempfile::tempdir().unwrap().keep();
    let (cert_path, key_path) = write_pair(&certs, cert, key);
    spawn_with(|c| {
        c.tls.cert_file = Some(cert_path);
        c.tls.key_file = Some(key_path);
        if redirect {
            c.tls.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
        }
    })
    .await
}

fn client(
    cas: &[&str],
    version: Option<(reqwest::tls::Version, reqwest::tls::Version)>,
    addr: SocketAddr,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().use_rustls_tls().tls_info(true).resolve("localhost", addr);
    for ca in cas {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    }
    if let Some((min, max)) = version {
        builder = builder.min_tls_version(min).max_tls_version(max);
    }
    builder.build().unwrap()
}

fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test]
async fn https_is_served_over_tls_1_3_and_1_2_with_hsts() {
    let (ca, cert, key) = test_certificates("versions");
    let app = spawn_tls(&cert, &key, false).await;
    let url = format!("https://localhost:{}/healthz", app.addr.port());
    use reqwest::tls::Version;
    for (min, max) in [(Version::TLS_1_3, Version::TLS_1_3), (Version::TLS_1_2, Version::TLS_1_2)] {
        let response = client(&[&ca], Some((min, max)), app.addr).get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["strict-transport-security"], "max-age=63072000; includeSubDomains");
        assert_eq!(peer_certificate(&response), der(&cert));
    }
    app.stop().await;
}

/// Connects with a rustls client offering `suites` in that order; returns the suite the server chose.
async fn negotiated_suite(
    addr: SocketAddr,
    ca: &str,
    suites: Vec<rustls::SupportedCipherSuite>,
) -> rustls::CipherSuite {
    use std::sync::Arc;

    use rustls::crypto::ring;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(der(ca))).unwrap();
    let provider = rustls::crypto::CryptoProvider { cipher_suites: suites, ..ring::default_provider() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn the_server_not_the_client_picks_the_strongest_shared_cipher_suite() {
    use rustls::CipherSuite;
    use rustls::crypto::ring::cipher_suite as suite;
    let (ca, cert, key) = test_certificates("cipher-order");
    let app = spawn_tls(&cert, &key, false).await;
    // A client that prefers the weaker suites still gets AES-256-GCM.
    let tls13 = vec![
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
    ];
    assert_eq!(negotiated_suite(app.addr, &ca, tls13).await, CipherSuite::TLS13_AES_256_GCM_SHA384);
    let tls12 = vec![
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    assert_eq!(
        negotiated_suite(app.addr, &ca, tls12).await,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    app.stop().await;
}

/// A TLS 1.1 ClientHello (legacy_version 0x0302, no supported_versions extension), as an old client
/// would send it, offering only TLS 1.0/1.1-era suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    // Suites the server does support (so only the version can be the reason for refusing):
    // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, TLS_AES_128_GCM_SHA256.
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0x13, 0x01]);
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused_during_the_handshake() {
    let (_ca, cert, key) = test_certificates("old-client");
    let app = spawn_tls(&cert, &key, false).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await.unwrap().ok();
    // Either an alert record (0x15) or a closed connection; never a ServerHello (handshake record 0x16).
    assert!(reply.first() != Some(&0x16), "the server negotiated with a TLS 1.1 client: {reply:02x?}");
    if let Some(first) = reply.first() {
        assert_eq!(*first, 0x15, "expected a TLS alert, got {reply:02x?}");
        assert_eq!(reply.get(5), Some(&2), "the alert is fatal");
        // rustls answers a hello that offers nothing above TLS 1.1 with handshake_failure (40);
        // protocol_version (70) would be equally correct.
        assert!(matches!(reply.get(6), Some(40 | 70)), "unexpected alert {reply:02x?}");
    }
    app.stop().await;
}

/// ASVS V16.3.4: a handshake the listener refuses is logged (reason, client address, no peer bytes)
/// and counted by reason, so a downgrade probe or a certificate clients stopped trusting shows up.
#[tokio::test]
async fn a_refused_handshake_is_logged_and_counted_by_reason() {
    const TOKEN: &str = "tls-metrics-scraper-token-0123456789";
    let (ca, cert, key) = test_certificates("refusals");
    let certs = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(certs.path(), &cert, &key);
    let app = spawn_with(|c| {
        c.tls.cert_file = Some(cert_path);
        c.tls.key_file = Some(key_path);
        c.metrics.token = Some(portcullis::config::Secret::new(TOKEN.into()));
    })
    .await;
    let addr = app.addr;
    let refused = move |hello: Vec<u8>| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        stream.write_all(&hello).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await.unwrap().ok();
        port
    };
    let old_client = refused(tls11_client_hello()).await;
    let plain_http = refused(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n".to_vec()).await;

    let line_for = |port: u16| {
        // The server logs after answering; give it a moment.
        (0..50).find_map(|_| {
            let line = crate::support::log_lines().into_iter().find(|line| {
                line["message"] == "TLS handshake failed" && line["client_port"] == u64::from(port)
            });
            if line.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            line
        })
    };
    let old = line_for(old_client).expect("the TLS 1.1 handshake is logged");
    assert_eq!(
        (old["level"].as_str(), old["reason"].as_str()),
        (Some("INFO"), Some("incompatible")),
        "{old}"
    );
    assert_eq!(old["client_ip"], "127.0.0.1");
    let plain = line_for(plain_http).expect("plain HTTP on the TLS port is logged");
    assert_eq!(plain["reason"], "malformed", "{plain}");
    assert!(!plain.to_string().contains("healthz"), "the peer's bytes are not logged: {plain}");

    let url = format!("https://localhost:{}/metrics", app.addr.port());
    let text = client(&[&ca], None, app.addr)
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["incompatible", "malformed"] {
        let series = format!("portcullis_tls_handshake_failures_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == series), "no `{series}` in:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reloaded_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
    let (ca1, cert1, key1) = test_certificates("first");
    let (ca2, cert2, key2) = test_certificates("second");
    let certs = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_pair(certs.path(), &cert1, &key1);
    let app = spawn_with(|c| {
        c.tls.cert_file = Some(cert_path.clone());
        c.tls.key_file = Some(key_path.clone());
    })
    .await;
    let url = format!("https://localhost:{}/healthz", app.addr.port());
    let old_client = client(&[&ca1, &ca2], None, app.addr);
    assert_eq!(peer_certificate(&old_client.get(&url).send().await.unwrap()), der(&cert1));

    write_pair(certs.path(), &cert2, &key2);
    assert!(app.server.reload_tls().unwrap());

    // The kept-alive connection still works on the certificate it was established with.
    let response = old_client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(peer_certificate(&response), der(&cert1));
    // A new connection gets the new certificate.
    let response = client(&[&ca2], None, app.addr).get(&url).send().await.unwrap();
    assert_eq!(peer_certificate(&response), der(&cert2));

    // A broken file keeps the current certificate in service.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    assert!(app.server.reload_tls().is_err());
    let response = client(&[&ca2], None, app.addr).get(&url).send().await.unwrap();
    assert_eq!(peer_certificate(&response), der(&cert2));
    app.stop().await;
}

#[tokio::test]
async fn the_plain_listener_only_redirects_to_https() {
    let (_ca, cert, key) = test_certificates("redirect");
    let app = spawn_tls(&cert, &key, true).await;
    let plain = app.server.redirect_addr().unwrap();
    for path in ["/healthz", "/ui/login?next=%2Fui", "/readyz"] {
        let response = app.client.get(format!("http://{plain}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 308, "{path}");
        assert_eq!(response.headers()["location"], format!("https://127.0.0.1:{}{path}", app.addr.port()));
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    // API clients and non-navigation requests are refused, not redirected (ASVS 4.1.2).
    let api = app.client.get(format!("http://{plain}/v1/me")).send().await.unwrap();
    assert_eq!(api.status(), 400);
    assert_eq!(
        api.json::<serde_json::Value>().await.unwrap()["type"],
        "urn:portcullis:problem:https-required"
    );
    let bearer = app.client.get(format!("http://{plain}/healthz")).bearer_auth("t").send().await.unwrap();
    assert_eq!(bearer.status(), 400, "a request carrying credentials is never redirected");
    let post = app.client.post(format!("http://{plain}/healthz")).body("x").send().await.unwrap();
    assert_eq!(post.status(), 400);
    assert!(post.headers().get("location").is_none());
    // A Host header cannot make the redirect point at a host with credentials or garbage.
    let response =
        app.client.get(format!("http://{plain}/x")).header("host", "user@evil.example").send().await.unwrap();
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn dev_tls_serves_a_generated_localhost_certificate_from_the_data_dir() {
    let app = spawn_with_options(|_| {}, StartOptions { dev_tls: true }).await;
    let cert = std::fs::read_to_string(app.data_dir.join("dev-tls/cert.pem")).unwrap();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(app.data_dir.join("dev-tls/key.pem")).unwrap().permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let url = format!("https://localhost:{}/healthz", app.addr.port());
    let response = client(&[&cert], None, app.addr).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("strict-transport-security"));
    app.stop().await;
}
