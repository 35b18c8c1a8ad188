//! No secret reaches the logs or the audit trail (ASVS 16.2.5, DESIGN.md "Secrets never leak"):
//! passwords, tokens, cookies, emailed link tokens and API keys are pushed through every account
//! endpoint (and an application's audit event) with debug logging on, and then looked for in
//! everything the server logged and in the audit trail it kept. Beyond these, every secret any suite
//! sends or receives through the support helpers is looked for in every captured line when the test
//! binary exits (`support::canary`); the tests of that scanner are here too.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis::config::{Config, DatabaseTarget};

use crate::support::{Canary, TestApp, find_leaks, log_text, spawn_app};

/// The single-use tokens in every email the outbox holds (quoted-printable soft breaks undone).
async fn emailed_tokens(app: &crate::support::TestApp, at_least: usize) -> Vec<String> {
    let dir = app.data_dir.join("outbox");
    for _ in 0..100 {
        let mut tokens = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let text = text.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
                for (_, rest) in text.match_indices("#token=").map(|(i, _)| ((), &text[i + 7..])) {
                    let token: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                        .collect();
                    tokens.push(token);
                }
            }
        }
        if tokens.len() >= at_least {
            return tokens;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not get {at_least} emails with tokens");
}

#[tokio::test]
async fn secrets_pushed_through_the_account_endpoints_never_reach_the_logs() {
    let app = spawn_app().await;
    let post = |path: &'static str, body: serde_json::Value| {
        let request = app.client.post(app.url(path)).json(&body);
        async move { request.send().await.unwrap() }
    };
    let password = "canary-password correct horse battery";
    let new_password = "canary-new-password staple orbit lamp";
    let mut secrets = vec![password.to_owned(), new_password.to_owned()];

    assert_eq!(
        post("/v1/auth/signup", serde_json::json!({"email": "hygiene@example.com", "password": password}))
            .await
            .status(),
        202
    );
    // A rejected signup whose weak password must not be echoed or logged either.
    post("/v1/auth/signup", serde_json::json!({"email": "weak@example.com", "password": "canary-weak"}))
        .await;
    secrets.push("canary-weak".into());
    let login: serde_json::Value =
        post("/v1/auth/login", serde_json::json!({"email": "hygiene@example.com", "password": password}))
            .await
            .json()
            .await
            .unwrap();
    let (access, refresh) =
        (login["access_token"].as_str().unwrap(), login["refresh_token"].as_str().unwrap());
    secrets.extend([access.to_owned(), refresh.to_owned()]);
    post(
        "/v1/auth/login",
        serde_json::json!({"email": "hygiene@example.com", "password": "canary-wrong-password"}),
    )
    .await;
    secrets.push("canary-wrong-password".into());
    let refreshed: serde_json::Value =
        post("/v1/auth/refresh", serde_json::json!({"refresh_token": refresh})).await.json().await.unwrap();
    secrets.push(refreshed["refresh_token"].as_str().unwrap().to_owned());
    // Reuse: the spent token again (revokes the session, logs a warning, must not log the token).
    post("/v1/auth/refresh", serde_json::json!({"refresh_token": refresh})).await;
    post("/v1/auth/refresh", serde_json::json!({"refresh_token": "canary-unknown-refresh"})).await;
    secrets.push("canary-unknown-refresh".into());

    let cookie_login = post(
        "/v1/auth/login",
        serde_json::json!({"email": "hygiene@example.com", "password": password, "mode": "cookie"}),
    )
    .await;
    let set_cookie = cookie_login.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie_value = set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let csrf: serde_json::Value = cookie_login.json().await.unwrap();
    let csrf = csrf["csrf_token"].as_str().unwrap().to_owned();
    let response = app
        .client
        .post(app.url("/v1/me/password"))
        .header("cookie", format!("__Host-portcullis_session={cookie_value}"))
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({"current_password": password, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    secrets.extend([cookie_value, csrf]);

    assert_eq!(
        post("/v1/auth/password/forgot", serde_json::json!({"email": "hygiene@example.com"})).await.status(),
        202
    );
    post("/v1/auth/verify-email", serde_json::json!({"token": "canary-verify-token"})).await;
    post(
        "/v1/auth/password/reset",
        serde_json::json!({"token": "canary-reset-token", "new_password": new_password}),
    )
    .await;
    secrets.extend(["canary-verify-token".into(), "canary-reset-token".into()]);
    // The verification link (signup) and the reset link (forgot).
    let links = emailed_tokens(&app, 2).await;
    for token in &links {
        post("/v1/auth/verify-email", serde_json::json!({"token": token})).await;
    }
    secrets.extend(links);
    secrets.extend(application_event_with_secrets(&app).await);
    // Stopped, with its data dir kept for the look at the audit trail.
    let TestApp { server, config, _dir, .. } = app;
    server.shutdown().await;

    let logs = log_text();
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {:.12}…", secret);
    }
    let trail = audit_trail_bytes(&config).await;
    assert!(
        trail.windows(CANARY_ACTION.len()).any(|w| w == CANARY_ACTION.as_bytes()),
        "the look at the audit trail sees the application's event"
    );
    for secret in &secrets {
        assert!(
            !trail.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret reached the audit trail: {:.12}…",
            secret
        );
    }
}

/// The action of the application event that carries secrets in its details.
const CANARY_ACTION: &str = "hygiene.canary_posted";

/// An owner (password through the login endpoint), an organization, a service account with an API
/// key, and an application event posted with that key whose details hold a password and the key
/// itself; the event is recorded with both redacted. Returns the secrets used.
async fn application_event_with_secrets(app: &TestApp) -> Vec<String> {
    use portcullis_domain::BuiltinRole;
    use secrecy::SecretString;
    let owner_password = "canary-owner-password amber quill fjord";
    let app_password = "canary-app-password lantern mosaic";
    app.server
        .app()
        .create_user_as_operator(
            "hygiene-owner@example.com",
            None,
            SecretString::from(owner_password),
            BuiltinRole::Owner,
        )
        .await
        .unwrap();
    let owner = crate::support::login(app, "hygiene-owner@example.com", owner_password).await;
    let create = |path: String, body: serde_json::Value| {
        let request = app.client.post(app.url(&path)).bearer_auth(&owner.access).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(status, 201, "{path}: {body}");
            body
        }
    };
    let org =
        create("/v1/admin/organizations".into(), serde_json::json!({"slug": "hygiene", "name": "H"})).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let account = create(
        "/v1/admin/service-accounts".into(),
        serde_json::json!({"organization_id": org, "name": "Hygiene", "role": "owner"}),
    )
    .await;
    let issued = create(
        format!("/v1/admin/service-accounts/{}/api-keys", account["id"].as_str().unwrap()),
        serde_json::json!({"name": "canary", "scopes": ["audit:write"], "expires_in_days": 7}),
    )
    .await;
    let key = issued["key"].as_str().unwrap().to_owned();
    let key_secret =
        key.strip_prefix(&format!("pcs_{}_", issued["api_key"]["id"].as_str().unwrap())).unwrap();
    let event = serde_json::json!({"events": [{
        "action": CANARY_ACTION, "organization_id": org, "subject": "customer-7",
        "details": {"password": app_password, "note": key, "kept": "visible"}
    }]});
    let posted = app.client.post(app.url("/v1/audit/events")).header("x-api-key", &key).json(&event).send();
    assert_eq!(posted.await.unwrap().status(), 201);
    let listed: serde_json::Value = app
        .client
        .get(app.url("/v1/audit/events"))
        .bearer_auth(&owner.access)
        .query(&[("action", CANARY_ACTION)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["events"][0]["details"],
        serde_json::json!({"password": "[redacted]", "note": "[redacted]", "kept": "visible"}),
        "{listed}"
    );
    vec![
        owner_password.to_owned(),
        app_password.to_owned(),
        owner.access.clone(),
        owner.refresh.clone(),
        key.clone(),
        key_secret.to_owned(),
    ]
}

/// The audit trail as stored: on SQLite every byte of the database file and its write-ahead log
/// (whatever the trail holds is in one of them, in clear or not at all); on PostgreSQL the text of
/// every event's columns that could carry a value from a request.
async fn audit_trail_bytes(config: &Config) -> Vec<u8> {
    match config.database_target().unwrap() {
        DatabaseTarget::Sqlite(path) => {
            let mut bytes = std::fs::read(&path).unwrap();
            let mut wal = path.into_os_string();
            wal.push("-wal");
            bytes.extend(std::fs::read(&wal).unwrap_or_default());
            bytes
        }
        DatabaseTarget::Postgres => {
            use sqlx::Connection;
            let url = config.database.url.as_ref().unwrap().expose();
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            let text: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(concat_ws('|', action, actor_id, on_behalf_of, target_type, target_id, \
                 organization_id, request_id, details), E'\\n' ORDER BY seq) FROM audit_events",
            )
            .fetch_one(&mut db)
            .await
            .unwrap();
            db.close().await.unwrap();
            text.unwrap_or_default().into_bytes()
        }
    }
}

#[tokio::test]
async fn every_security_event_is_also_a_structured_log_line_with_a_stable_kind() {
    let app = spawn_app().await;
    crate::support::register(&app, "siem@example.com", "velvet otter migrates at dusk").await;
    let failed = crate::support::login_response(
        &app,
        serde_json::json!({"email": "siem@example.com", "password": "not the password at all"}),
    )
    .await;
    assert_eq!(failed.status(), 401);
    let login_request = failed.headers()["x-request-id"].to_str().unwrap().to_owned();
    let forgot =
        app.post_json("/v1/auth/password/forgot", &serde_json::json!({"email": "nobody@example.com"})).await;
    let forgot_request = forgot.headers()["x-request-id"].to_str().unwrap().to_owned();

    let event_of = |request_id: &str| {
        crate::support::log_lines()
            .into_iter()
            .find(|line| {
                line["message"] == "security event"
                    && line["spans"]
                        .as_array()
                        .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id))
            })
            .unwrap_or_else(|| {
                let events: Vec<_> = crate::support::log_lines()
                    .into_iter()
                    .filter(|l| l["message"] == "security event")
                    .collect();
                panic!("no security event line for request {request_id}: {events:#?}")
            })
    };
    let login_event = event_of(&login_request);
    assert_eq!(login_event["event.kind"], "login_failed", "{login_event}");
    assert_eq!(login_event["event.stored"], true);
    assert!(login_event["user"].as_str().is_some_and(|u| u.len() == 36), "{login_event}");
    assert_eq!(event_of(&forgot_request)["event.kind"], "password_reset_for_unknown_account");
    let text = serde_json::to_string(&login_event).unwrap();
    assert!(!text.contains("siem@example.com") && !text.contains("not the password"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn check_decisions_are_logged_every_denial_and_one_in_n_allowed() {
    let app = crate::support::spawn_with(|config| config.authz.log_allowed_one_in = 2).await;
    crate::support::register(&app, "decider@example.com", "velvet otter migrates at dusk").await;
    let tokens = crate::support::login(&app, "decider@example.com", "velvet otter migrates at dusk").await;
    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    let own = serde_json::json!({"permission": "profile:read", "resource": {"owner": me["id"]}});
    let mut requests = Vec::new();
    for body in [&own, &own, &own, &own, &serde_json::json!({"permission": "users:read"})] {
        let response = app
            .client
            .post(app.url("/v1/authz/check"))
            .bearer_auth(&tokens.access)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        requests.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    app.stop().await;
    let decisions: Vec<serde_json::Value> = crate::support::log_lines()
        .into_iter()
        .filter(|line| {
            line["event.kind"] == "authz.decision"
                && line["spans"].as_array().is_some_and(|spans| {
                    spans.iter().any(|s| requests.contains(&s["request_id"].to_string().replace('"', "")))
                })
        })
        .collect();
    let outcomes: Vec<&str> = decisions.iter().map(|d| d["outcome"].as_str().unwrap()).collect();
    // Four allowed, one in two logged; the denial always.
    assert_eq!(outcomes.iter().filter(|o| **o == "allow").count(), 2, "{decisions:#?}");
    assert_eq!(outcomes.iter().filter(|o| **o == "deny").count(), 1, "{decisions:#?}");
    let deny = decisions.iter().find(|d| d["outcome"] == "deny").unwrap();
    assert_eq!(deny["permission"], "users:read");
    assert!(!serde_json::to_string(&decisions).unwrap().contains("decider@example.com"));
}

// ----- the whole-run scanner (support::find_leaks), run at exit over every captured line -----

/// A fake capture: JSON lines as the subscriber writes them, one of them holding `planted`.
fn fake_log(planted: &str) -> String {
    let field = serde_json::to_string(planted).unwrap();
    [
        r#"{"level":"INFO","message":"request completed","status":200}"#.to_owned(),
        format!(r#"{{"level":"DEBUG","message":"parsed body","body":{field},"path":"/v1/auth/login"}}"#),
        r#"{"level":"INFO","message":"security event","event.kind":"login_failed"}"#.to_owned(),
    ]
    .join("\n")
}

#[test]
fn the_exit_scan_finds_a_planted_canary_and_prints_its_line_masked() {
    let password = "canary-planted-password quartz 91";
    let token = "Zm9vYmFyYmF6cXV4LXRoaXMtaXMtYS1yZWZyZXNoLXRva2Vu";
    let canaries =
        BTreeMap::from([(password.to_owned(), Canary::Password), (token.to_owned(), Canary::RefreshToken)]);

    let leaks = find_leaks(&fake_log(password), &canaries);

    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0].kinds, vec![Canary::Password]);
    assert!(!leaks[0].masked_line.contains(password), "{}", leaks[0].masked_line);
    assert!(!leaks[0].masked_line.contains("quartz 91"), "{}", leaks[0].masked_line);
    assert!(leaks[0].masked_line.contains(r#""body":"[password]""#), "{}", leaks[0].masked_line);
    assert!(leaks[0].masked_line.contains("parsed body"), "the rest of the line is kept for the reader");
    // Two canaries in one line: one leak naming both kinds, both masked.
    let both = format!("{} then {token}", &fake_log(password).lines().nth(1).unwrap());
    let leaks = find_leaks(&both, &canaries);
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0].kinds, vec![Canary::Password, Canary::RefreshToken]);
    assert!(!leaks[0].masked_line.contains(password) && !leaks[0].masked_line.contains(token));
}

#[test]
fn the_exit_scan_sees_a_canary_escaped_in_json_at_either_end_of_a_line_and_nothing_else() {
    // The capture is JSON: a quote or a backslash in a password is escaped in the line.
    let quoted = r#"canary "quoted" back\slash"#;
    let canaries = BTreeMap::from([(quoted.to_owned(), Canary::Password)]);
    let leaks = find_leaks(&fake_log(quoted), &canaries);
    assert_eq!(leaks.len(), 1, "the escaped form is found: {leaks:?}");
    assert!(!leaks[0].masked_line.contains("back"), "{}", leaks[0].masked_line);

    let key = "pcs_0190c0de_secretpartofthekey";
    let canaries = BTreeMap::from([(key.to_owned(), Canary::ApiKey)]);
    for line in [key.to_owned(), format!("x{key}"), format!("{key}x")] {
        assert_eq!(find_leaks(&line, &canaries).len(), 1, "{line}");
    }
    // Nearly, but not: a prefix, the key cut by a line break, another key.
    let near =
        format!("{}\n{}\n{}", &key[..key.len() - 1], key.replace("part", "\npart"), "pcs_0190c0de_other");
    assert_eq!(find_leaks(&near, &canaries), vec![]);
    assert_eq!(find_leaks(&fake_log("nothing secret here"), &canaries), vec![]);
    // A value shorter than the floor is no canary: it would match by chance.
    let short = BTreeMap::from([("123456".to_owned(), Canary::RecoveryCode)]);
    assert_eq!(find_leaks("elapsed_us=1234567", &short), vec![]);
}
