//! Interoperability with other implementations: bcrypt hashes made by Python's `bcrypt` (`$2b$`) and
//! by Apache's `htpasswd -B` (`$2y$`) are imported onto an account, log in, and are upgraded to
//! argon2id at that login.

use std::process::Command;

use portcullis_domain::UserId;

use crate::support::{TestApp, spawn_app};

const PASSWORD: &str = "imported from the old system 42";

/// The Python with the `bcrypt` module: `PORTCULLIS_TEST_PYTHON` (CI's venv) or `python3`.
fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// bcrypt hashes of [`PASSWORD`] made by other implementations, with who made them.
fn foreign_hashes() -> Vec<(&'static str, String)> {
    let mut hashes = Vec::new();
    let script =
        format!("import bcrypt; print(bcrypt.hashpw({PASSWORD:?}.encode(), bcrypt.gensalt(10)).decode())");
    if let Ok(out) = Command::new(python()).args(["-c", &script]).output()
        && out.status.success()
    {
        hashes.push(("python bcrypt", String::from_utf8_lossy(&out.stdout).trim().to_owned()));
    }
    if let Ok(out) = Command::new("htpasswd").args(["-nbBC", "10", "user", PASSWORD]).output()
        && out.status.success()
    {
        let line = String::from_utf8_lossy(&out.stdout);
        hashes.push(("htpasswd -B", line.trim().split_once(':').unwrap().1.to_owned()));
    }
    hashes
}

async fn login(app: &TestApp, password: &str) -> reqwest::Response {
    let body = serde_json::json!({"email": "import@example.com", "password": password});
    app.client.post(app.url("/v1/auth/login")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn bcrypt_hashes_made_by_other_implementations_log_in_and_are_upgraded() {
    let hashes = foreign_hashes();
    if hashes.is_empty() {
        assert!(
            std::env::var("PORTCULLIS_REQUIRE_PY_BCRYPT").is_err(),
            "PORTCULLIS_REQUIRE_PY_BCRYPT is set but neither python bcrypt nor htpasswd is available"
        );
        eprintln!("skipped: no foreign bcrypt implementation (pip install bcrypt, or apache2-utils)");
        return;
    }
    let app = spawn_app().await;
    let signup = serde_json::json!({"email": "import@example.com", "password": "the original password 77"});
    assert_eq!(app.client.post(app.url("/v1/auth/signup")).json(&signup).send().await.unwrap().status(), 202);
    let token: serde_json::Value = login(&app, "the original password 77").await.json().await.unwrap();
    let me: serde_json::Value = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = UserId::parse(me["id"].as_str().unwrap()).unwrap();
    let store = app.server.app().store().clone();
    for (maker, hash) in hashes {
        assert!(hash.starts_with("$2"), "{maker}: {hash}");
        let mut tx = store.begin().await.unwrap();
        tx.set_password_hash(user, &hash, portcullis_domain::Timestamp::from_unix_millis(0)).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(login(&app, "the original password 77").await.status(), 401, "{maker}");
        assert_eq!(login(&app, PASSWORD).await.status(), 200, "{maker}: the imported hash did not verify");
        let mut tx = store.begin_read().await.unwrap();
        let stored = tx.password_hash(user).await.unwrap().unwrap();
        tx.rollback().await.unwrap();
        assert!(stored.starts_with("$argon2id$"), "{maker}: not upgraded at login: {stored:.7}");
        assert_eq!(login(&app, PASSWORD).await.status(), 200, "{maker}: the upgraded hash");
    }
    app.stop().await;
}
