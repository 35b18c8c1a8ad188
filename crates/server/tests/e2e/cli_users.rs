//! `portcullis users create`: the first administrator from the command line, with the password read
//! from standard input (never from argv), then used to log in over HTTP.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{init_logs, test_config};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Runs `portcullis users create ARGS` on `data_dir` with `stdin` as its input.
fn users_create(data_dir: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PORTCULLIS_PASSWORD__ARGON2_MEMORY_KIB", "1024")
        .env("PORTCULLIS_PASSWORD__ARGON2_ITERATIONS", "1")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["users", "create"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn an_owner_created_on_the_command_line_can_log_in() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let output = users_create(
        &config.data_dir,
        &["--email", "Root@Example.COM", "--role", "owner", "--display-name", "Root"],
        "correct horse battery staple\n",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("Root@example.com") && stdout.contains("owner"), "{stdout}");

    let server = portcullis::start(&config, portcullis::StartOptions::default()).await.unwrap();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", server.local_addr());
    let login: serde_json::Value = client
        .post(url("/v1/auth/login"))
        .json(&serde_json::json!({"email": "root@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me: serde_json::Value = client
        .get(url("/v1/me"))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "owner");
    assert_eq!(me["email_verified"], true, "the operator vouches for the address");
    server.shutdown().await;
}

#[test]
fn users_create_refuses_a_weak_password_a_bad_role_and_a_taken_address_without_echoing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weak = users_create(&data, &["--email", "a@example.com"], "password1\n");
    let stderr = String::from_utf8_lossy(&weak.stderr);
    assert_eq!(weak.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("password: "), "{stderr}");
    assert!(!stderr.contains("password1"), "the password was echoed: {stderr}");

    let role = users_create(&data, &["--email", "a@example.com", "--role", "god"], "x\n");
    assert_eq!(role.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&role.stderr).contains("--role"));

    let first = users_create(&data, &["--email", "a@example.com"], "correct horse battery staple\n");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = users_create(&data, &["--email", "A@EXAMPLE.com"], "correct horse battery staple\n");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// `portcullis retention run [--dry-run]` on a data dir: one line per policy (what the use-case
/// tests prove it deletes is in crates/app/src/use_case_tests/retention.rs; a subprocess cannot move
/// the clock).
#[tokio::test]
async fn retention_run_reports_each_policy_and_a_dry_run_says_what_it_would_delete() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let created = users_create(
        &config.data_dir,
        &["--email", "root@example.com", "--role", "owner"],
        "correct horse battery staple\n",
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let retention = |args: &[&str]| {
        Command::new(BIN)
            .env_clear()
            .env("PORTCULLIS_RETENTION__SECURITY_EVENTS_DAYS", "0")
            .arg("--data-dir")
            .arg(&config.data_dir)
            .args(["retention", "run"])
            .args(args)
            .output()
            .unwrap()
    };
    let dry = retention(&["--dry-run"]);
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{stdout}{}", String::from_utf8_lossy(&dry.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "ended sessions older than 30 day(s): would delete 0",
            "security events: kept forever (0 days)",
            "unconfirmed accounts older than 30 day(s): would delete 0",
        ]
    );
    let run = retention(&[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(stdout.contains("ended sessions older than 30 day(s): deleted 0"), "{stdout}");
}
