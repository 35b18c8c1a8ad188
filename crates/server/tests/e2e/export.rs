//! The personal-data export over HTTP (issue 9): `GET /v1/me/export` and `GET
//! /v1/admin/users/{id}/export` answer the documented document as a non-cacheable download, with
//! every kind of the person's data, nothing of anyone else's and no secret the client ever held;
//! API keys, other members and stale sessions are refused, and every export is in the audit trail.

use reqwest::Method;
use serde_json::{Value, json};

use crate::mfa::{
    PUBLIC_URL, authenticator, expect_reauthentication, json_of, recovery_codes, register_passkey,
    start_totp, with_owner,
};
use crate::support::{
    Canary, Go, PASSWORD, TestApp, canary, expect_problem, login, login_as_agent, register,
};

/// The document's top-level fields, exactly.
const FIELDS: [&str; 10] = [
    "api_keys",
    "audit_events",
    "exported_at",
    "format",
    "mfa",
    "organizations",
    "roles",
    "sessions",
    "truncated",
    "user",
];

/// `POST /v1/me/api-keys`: the key's id and full text (a canary).
pub(crate) async fn create_key(app: &TestApp, access: &str, name: &str) -> (String, String) {
    let body = json!({ "name": name, "scopes": ["profile:read"], "expires_in_days": 7 });
    let response = app.call(Method::POST, "/v1/me/api-keys").bearer_auth(access).json(&body).go().await;
    let created = json_of(response, 201).await;
    let key = created["key"].as_str().unwrap().to_owned();
    canary(Canary::ApiKey, &key);
    (created["api_key"]["id"].as_str().unwrap().to_owned(), key)
}

/// A 200 export: checks the download's headers and returns the body's text and JSON.
async fn download(response: reqwest::Response, id: &str) -> (String, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        header("content-disposition"),
        format!(r#"attachment; filename="portcullis-export-{id}.json""#)
    );
    assert_eq!(header("cache-control"), "no-store");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut fields: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, FIELDS.to_vec());
    assert_eq!(body["format"], "portcullis-export/1");
    (text, body)
}

#[tokio::test]
async fn a_person_downloads_everything_kept_about_them_and_not_one_secret() {
    let (app, owner) = with_owner(|c| c.http.public_url = Some(PUBLIC_URL.into())).await;
    register(&app, "ada@example.com", PASSWORD).await;
    register(&app, "bert@example.com", PASSWORD).await;
    let ended = login_as_agent(&app, "ada@example.com", PASSWORD, "ada-phone/1.0").await;
    let logout = app.call(Method::POST, "/v1/auth/logout").bearer_auth(&ended.access).go().await;
    assert_eq!(logout.status(), 204);
    let ada = login_as_agent(&app, "ada@example.com", PASSWORD, "ada-laptop/2.0").await;
    let ada_id = crate::mfa::account_id(&app, &ada.access).await;
    let (key_id, key) = create_key(&app, &ada.access, "deploy").await;
    let mut passkey = authenticator();
    let registered = register_passkey(&app, &ada.access, &mut passkey, "YubiKey").await;
    let codes = recovery_codes(&registered);
    // An authenticator left unconfirmed: listed, its seed never.
    let (_, enrollment) = start_totp(&app, &ada.access, "Phone").await;
    let seed = enrollment["secret"].as_str().unwrap().to_owned();
    let bert = login(&app, "bert@example.com", PASSWORD).await;
    let bert_id = crate::mfa::account_id(&app, &bert.access).await;
    let (bert_key_id, bert_key) = create_key(&app, &bert.access, "berts").await;

    let response = app.call(Method::GET, "/v1/me/export").bearer_auth(&ada.access).go().await;
    let (text, body) = download(response, &ada_id).await;

    assert_eq!(body["user"]["id"], ada_id.as_str());
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["organizations"][0]["slug"], "default");
    let sessions: Vec<(&str, &str, &str)> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap(),
                s["user_agent"].as_str().unwrap(),
                s["revoked_reason"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(sessions, vec![("active", "ada-laptop/2.0", "-"), ("revoked", "ada-phone/1.0", "logout")]);
    assert_eq!(body["sessions"][0]["ip"], "127.0.0.1");
    assert_eq!(body["sessions"][0]["methods"], json!(["hwk", "pwd", "mfa"]), "{body}");
    assert_eq!(body["api_keys"][0]["id"], key_id.as_str());
    assert_eq!(body["api_keys"][0]["prefix"], format!("pcs_{key_id}_"));
    assert_eq!(body["api_keys"][0]["scopes"], json!(["profile:read"]));
    assert_eq!(body["mfa"]["passkeys"][0]["name"], "YubiKey");
    assert_eq!(body["mfa"]["totp"][0]["name"], "Phone");
    assert_eq!(body["mfa"]["totp"][0]["confirmed"], false);
    assert_eq!(body["mfa"]["recovery_codes"]["remaining"], 10);
    assert_eq!(body["truncated"], json!({ "sessions": false, "audit_events": false }));
    let actions: Vec<&str> =
        body["audit_events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["user.signed_up", "user.email.verified", "session.logged_out", "api_key.created"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }

    let mut secrets = vec![PASSWORD.to_owned(), ended.access, ended.refresh, ada.access.clone(), ada.refresh];
    secrets.extend([key.clone(), key[27..].to_owned(), seed, bert.access, bert_key]);
    secrets.extend(codes.iter().flat_map(|c| [c.clone(), c.replace('-', "")]));
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret is in the export: {secret}");
    }
    for theirs in [bert_id.as_str(), bert_key_id.as_str(), "bert@example.com", owner.access.as_str()] {
        assert!(!text.contains(theirs), "someone else's {theirs} is in the export");
    }

    // An API key cannot carry the account out, however it is scoped.
    let by_key = app.call(Method::GET, "/v1/me/export").header("x-api-key", &key).go().await;
    expect_problem(by_key, 403, "forbidden").await;
    let anonymous = app.call(Method::GET, "/v1/me/export").go().await;
    expect_problem(anonymous, 401, "unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn an_administrator_exports_an_account_others_cannot_and_each_export_is_recorded() {
    let (app, owner) = with_owner(|c| c.http.public_url = Some(PUBLIC_URL.into())).await;
    let owner_id = crate::mfa::account_id(&app, &owner.access).await;
    register(&app, "cleo@example.com", PASSWORD).await;
    // A session opened with the password alone, before the account had a second factor.
    let before = login(&app, "cleo@example.com", PASSWORD).await;
    let cleo = login(&app, "cleo@example.com", PASSWORD).await;
    let cleo_id = crate::mfa::account_id(&app, &cleo.access).await;
    let mut passkey = authenticator();
    recovery_codes(&register_passkey(&app, &cleo.access, &mut passkey, "Key").await);

    let export_of = |id: &str| format!("/v1/admin/users/{id}/export");
    let by_owner = app.call(Method::GET, &export_of(&cleo_id)).bearer_auth(&owner.access).go().await;
    let (_, body) = download(by_owner, &cleo_id).await;
    assert_eq!(body["user"]["email"], "cleo@example.com");
    let missing = app
        .call(Method::GET, &export_of("00000000-0000-4000-8000-000000000000"))
        .bearer_auth(&owner.access)
        .go()
        .await;
    expect_problem(missing, 404, "not-found").await;
    let by_member = app.call(Method::GET, &export_of(&owner_id)).bearer_auth(&cleo.access).go().await;
    expect_problem(by_member, 403, "forbidden").await;

    // The password-only session cannot take the data of an account that now has a passkey.
    expect_reauthentication(app.call(Method::GET, "/v1/me/export").bearer_auth(&before.access).go().await)
        .await;
    let own = app.call(Method::GET, "/v1/me/export").bearer_auth(&cleo.access).go().await;
    download(own, &cleo_id).await;

    let trail = app
        .call(Method::GET, "/v1/audit/events?action=user.data_exported")
        .bearer_auth(&owner.access)
        .go()
        .await;
    let trail = json_of(trail, 200).await;
    let recorded: Vec<(&str, &str)> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"]["id"].as_str().unwrap(), e["target"]["id"].as_str().unwrap()))
        .collect();
    assert_eq!(recorded, vec![(cleo_id.as_str(), cleo_id.as_str()), (owner_id.as_str(), cleo_id.as_str())]);
    app.stop().await;
}
