//! The keyring through the real binary and server: `portcullis keys …` against a running server's
//! data dir, the server picking up keys the CLI changed, and a wrong KEK refused at start.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{init_logs, test_config};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const PASSWORD: &str = "velvet otter migrates at dusk";

/// Runs `portcullis --data-dir DIR keys ARGS` with a clean environment plus `env`.
fn keys(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.env_clear().arg("--data-dir").arg(data_dir).arg("keys").args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn states(list: &str, purpose: &str) -> Vec<String> {
    list.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(purpose))
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
        .collect()
}

async fn jwks_kids(client: &reqwest::Client, base: &str) -> Vec<String> {
    let jwks: serde_json::Value =
        client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

async fn login(client: &reqwest::Client, base: &str, email: &str) -> serde_json::Value {
    let response = client
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{email}: {body}");
    body
}

#[tokio::test]
async fn the_keys_cli_rotates_and_reencrypts_while_the_server_keeps_serving_and_picks_up_new_keys() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let server = portcullis::start(&config, portcullis::StartOptions::default()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    for n in 0..5 {
        let response = client
            .post(format!("{base}/v1/auth/signup"))
            .json(&serde_json::json!({"email": format!("user{n}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    login(&client, &base, "user0@example.com").await;

    let (code, list, stderr) = keys(&config.data_dir, &["list"], &[]);
    assert_eq!(code, 0, "{stderr}");
    for purpose in ["signing", "pii", "blind-index"] {
        assert_eq!(states(&list, purpose), vec!["active"], "{list}");
    }
    assert!(!list.contains("dev1:"), "no KEK material is printed: {list}");

    let (code, out, err) = keys(&config.data_dir, &["rotate", "--purpose", "pii"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-encrypted by a running server"), "{out}");
    let (code, out, err) = keys(&config.data_dir, &["rotate", "--purpose", "blind-index"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from its next key sync"), "{out}");
    // Logins work with every row still under the retired keys, on the server that did not rotate.
    login(&client, &base, "user1@example.com").await;
    let (code, out, err) = keys(&config.data_dir, &["reencrypt"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("row(s) re-encrypted"), "{out}");
    login(&client, &base, "user2@example.com").await;
    let (_, list, _) = keys(&config.data_dir, &["list"], &[]);
    assert_eq!(states(&list, "pii"), vec!["retired", "active"], "{list}");
    assert_eq!(states(&list, "blind-index"), vec!["active", "next"], "it waits for every node: {list}");

    // A signing rotation made by the CLI shows in the running server's JWKS within one key sync.
    let before = jwks_kids(&client, &base).await;
    let (code, out, err) = keys(&config.data_dir, &["rotate", "--purpose", "signing"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signing key"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(3 * portcullis_app::KEY_SYNC_SECS);
    let mut after = jwks_kids(&client, &base).await;
    while after.len() == before.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = jwks_kids(&client, &base).await;
    }
    assert_eq!(after.len(), 2, "the next key is published: {after:?}");
    assert_eq!(after[0], before[0]);

    // The audit key rotates (the old one keeps verifying the checkpoints it signed), never in an
    // emergency.
    let (code, out, err) = keys(&config.data_dir, &["rotate", "--purpose", "audit"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit key"), "{out}");
    let (code, _, err) = keys(&config.data_dir, &["rotate", "--purpose", "audit", "--emergency"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = keys(&config.data_dir, &["rotate", "--purpose", "pii", "--emergency"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("emergency"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_kek_stops_the_start_with_a_clear_message_and_a_rotated_kek_keeps_everything_readable() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let server = portcullis::start(&config, portcullis::StartOptions::default()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    client
        .post(format!("{base}/v1/auth/signup"))
        .json(&serde_json::json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    server.shutdown().await;
    let dev_kek = std::fs::read_to_string(config.data_dir.join("kek")).unwrap();
    let (new_entry, wrong_entry) = {
        let (_, new, _) = keys(&config.data_dir, &["generate-kek", "--id", "prod2"], &[]);
        let (_, wrong, _) = keys(&config.data_dir, &["generate-kek", "--id", "dev1"], &[]);
        (new.trim().to_owned(), wrong.trim().to_owned())
    };

    // The same id with other key bytes: refused before anything is written.
    let (code, _, stderr) = keys(&config.data_dir, &["list"], &[("PORTCULLIS_KEYS__KEK", &wrong_entry)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("KEK `dev1` does not open keyring key"), "{stderr}");
    assert!(!stderr.contains(wrong_entry.split(':').nth(1).unwrap()), "the KEK is never echoed");
    let mut wrong = test_config(&dir);
    wrong.keys.kek = Some(portcullis::config::Secret::new(wrong_entry.clone()));
    let error = portcullis::start(&wrong, portcullis::StartOptions::default()).await.unwrap_err();
    assert!(error.describe().contains("does not open"), "{}", error.describe());

    // A new KEK first, the old one kept to unwrap: rotate-kek moves every key to the new one.
    let both = format!("{new_entry},{}", dev_kek.trim());
    let (code, out, err) = keys(&config.data_dir, &["rotate-kek"], &[("PORTCULLIS_KEYS__KEK", &both)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("re-wrapped 4 key(s)"), "{out}");
    let (code, list, err) = keys(&config.data_dir, &["list"], &[("PORTCULLIS_KEYS__KEK", &new_entry)]);
    assert_eq!(code, 0, "{err}");
    assert!(list.lines().skip(1).all(|l| l.contains(" prod2 ")), "{list}");
    let mut rotated = test_config(&dir);
    rotated.keys.kek = Some(portcullis::config::Secret::new(new_entry));
    let server = portcullis::start(&rotated, portcullis::StartOptions::default()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let tokens = login(&client, &base, "ada@example.com").await;
    let me: serde_json::Value = client
        .get(format!("{base}/v1/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "ada@example.com");
    server.shutdown().await;
    // The old KEK alone no longer opens anything.
    let (code, _, stderr) = keys(&config.data_dir, &["list"], &[("PORTCULLIS_KEYS__KEK", dev_kek.trim())]);
    assert_eq!(code, 1);
    assert!(stderr.contains("`prod2`, which keys.kek does not list"), "{stderr}");
}
