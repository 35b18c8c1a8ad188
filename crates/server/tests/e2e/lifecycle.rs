//! Startup, readiness, migrations and graceful shutdown.

use std::time::Duration;

use portcullis::StartOptions;
use portcullis::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{init_logs, spawn_with, test_config};

#[tokio::test]
async fn an_in_flight_request_finishes_during_graceful_shutdown_and_new_connections_are_refused() {
    let app = spawn_app_quiet().await;
    let addr = app.addr;
    // A request whose head is half sent when shutdown begins.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let shutdown = tokio::spawn(app.stop());
    // Shutdown has begun once the listener is gone.
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener kept accepting after shutdown began");
    stream.write_all(b"\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), shutdown).await.unwrap().unwrap();
}

async fn spawn_app_quiet() -> crate::support::TestApp {
    spawn_with(|_| {}).await
}

#[tokio::test]
async fn readyz_reports_pending_migrations_until_migrate_runs() {
    let app = spawn_with(|c| c.database.migrate_on_start = false).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:portcullis:problem:not-ready");
    assert_eq!(body["checks"]["migrations"], "1 migration(s) pending");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["migrate", "--data-dir"])
        .arg(&app.data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("applied 1 migration(s)"));

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
