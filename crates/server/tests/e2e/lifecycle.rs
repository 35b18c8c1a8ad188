//! Startup, readiness, migrations and graceful shutdown.

use std::time::Duration;

use portcullis::StartOptions;
use portcullis::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{init_logs, serve_probe, spawn_with, test_config};

/// The real accept loop and its graceful shutdown, around a probe route that stays in its handler
/// until the test releases it: the request is truly in flight when shutdown begins.
#[tokio::test]
async fn an_in_flight_request_finishes_during_graceful_shutdown_and_new_connections_are_refused() {
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use tokio::sync::oneshot;

    init_logs();
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let hooks = Arc::new(Mutex::new((Some(entered_tx), Some(release_rx))));
    let slow = move || {
        let hooks = hooks.clone();
        async move {
            let (entered, release) = {
                let mut hooks = hooks.lock().unwrap();
                (hooks.0.take(), hooks.1.take())
            };
            entered.unwrap().send(()).unwrap();
            release.unwrap().await.unwrap();
            "finished"
        }
    };
    let (addr, stop, server) = serve_probe(axum::Router::new().route("/slow", get(slow))).await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    entered_rx.await.unwrap();
    stop.send(true).unwrap();
    // Shutdown has begun once the listener is gone.
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener kept accepting after shutdown began");
    release_tx.send(()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"), "{response}");
    assert!(response.ends_with("finished"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}

#[tokio::test]
async fn readyz_reports_pending_migrations_until_migrate_runs() {
    let app = spawn_with(|c| c.database.migrate_on_start = false).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:not-ready");
    assert_eq!(body["checks"]["migrations"], "10 migration(s) pending");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["migrate", "--data-dir"])
        .arg(&app.data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("applied 10 migration(s)"));

    assert_eq!(app.get("/readyz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_instance_identity_is_created_once_and_survives_a_restart() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let first = portcullis::start(&config, StartOptions::default()).await.unwrap();
    let id = first.app().instance().await.unwrap().unwrap();
    first.shutdown().await;
    let second = portcullis::start(&config, StartOptions::default()).await.unwrap();
    assert_eq!(second.app().instance().await.unwrap().unwrap(), id);
    second.shutdown().await;
}

#[tokio::test]
async fn a_production_start_with_an_insecure_setting_is_refused_before_anything_listens() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(&dir);
    config.mode = portcullis::config::Mode::Production;
    let error = portcullis::start(&config, StartOptions::default()).await.unwrap_err();
    assert_eq!(error.exit_code(), 2);
    let text = error.to_string();
    assert!(text.contains("tls.cert_file") && text.contains("secrets.instance_secret"), "{text}");
    assert!(!config.data_dir.exists(), "nothing was created for a refused start");
}

/// PostgreSQL end to end when `PORTCULLIS_TEST_POSTGRES_URL` is set: a fresh database, the server on
/// it, ready, with its identity bootstrapped; dropped afterwards.
#[tokio::test]
async fn the_server_runs_on_postgresql_when_one_is_configured() {
    let Ok(admin_url) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL") else {
        eprintln!("e2e: PORTCULLIS_TEST_POSTGRES_URL not set; skipped the PostgreSQL server test");
        return;
    };
    use sqlx::Connection;
    let name = format!("portcullis_e2e_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");

    let app = spawn_with(|c| c.database.url = Some(portcullis::config::Secret::new(url))).await;
    let response = app.get("/readyz").await;
    let ready = response.status();
    let instance = app.server.app().instance().await.unwrap();
    app.stop().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    assert_eq!(ready, 200);
    assert!(instance.is_some());
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let first = portcullis::start(&config, StartOptions::default()).await.unwrap();
    let error = portcullis::start(&config, StartOptions::default()).await.unwrap_err();
    assert!(error.describe().contains("another Portcullis process"), "{}", error.describe());
    first.shutdown().await;
    // Once the first has stopped, the data dir is free again.
    portcullis::start(&config, StartOptions::default()).await.unwrap().shutdown().await;
}

/// The last-resort handler: a panicking handler answers 500, and the panic is logged (message and
/// location, by the hook `serve` installs) inside the request's span, so it carries the request id.
#[tokio::test]
async fn a_panic_is_answered_500_and_logged_with_the_request_id() {
    use axum::routing::get;

    init_logs();
    crate::support::log_panics();
    #[allow(clippy::panic, reason = "the probe exists to panic")]
    async fn boom() -> &'static str {
        panic!("probe panic for the last-resort handler")
    }
    let (addr, stop, server) = serve_probe(axum::Router::new().route("/boom", get(boom))).await;

    let response = reqwest::Client::new()
        .get(format!("http://{addr}/boom"))
        .header("x-request-id", "panic-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:internal");
    assert!(!body.to_string().contains("probe panic"), "{body}");

    let logged = crate::support::log_lines().into_iter().any(|line| {
        line["span"]["request_id"] == "panic-probe-1"
            && line["panic.message"] == "probe panic for the last-resort handler"
            && line["panic.location"].as_str().is_some_and(|l| l.contains("lifecycle.rs"))
    });
    assert!(logged, "the panic was not logged inside the request's span");
    stop.send(true).unwrap();
    server.await.unwrap();
}
