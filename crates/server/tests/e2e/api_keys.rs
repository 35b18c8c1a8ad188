//! API keys and introspection over HTTP: both headers a key may come in, what lists show, rotation,
//! revocation, a service account's key asking `/oauth2/introspect`, and no key ever in a log line.

use portcullis_domain::BuiltinRole;
use secrecy::{ExposeSecret, SecretString};

use crate::support::{Canary, canary, log_text, login, register, spawn_app};

const PASSWORD: &str = "velvet otter migrates at dusk";

fn key_body(scopes: &[&str]) -> serde_json::Value {
    serde_json::json!({ "name": "ci", "scopes": scopes, "expires_in_days": 7 })
}

#[tokio::test]
async fn a_key_works_in_either_header_is_listed_without_its_secret_rotates_revokes_and_never_reaches_the_logs()
 {
    let app = spawn_app().await;
    register(&app, "keys@example.com", PASSWORD).await;
    let tokens = login(&app, "keys@example.com", PASSWORD).await;
    let bearer = format!("Bearer {}", tokens.access);
    let created = app
        .client
        .post(app.url("/v1/me/api-keys"))
        .header("authorization", &bearer)
        .json(&key_body(&["profile:read"]))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    canary(Canary::ApiKey, &key);
    let id = created["api_key"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("pcs_{id}_")));

    let me = |header: &'static str, value: String| {
        let request = app.client.get(app.url("/v1/me")).header(header, value);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(me("x-api-key", key.clone()).await.status(), 200);
    assert_eq!(me("authorization", format!("Bearer {key}")).await.status(), 200);
    let both = app
        .client
        .get(app.url("/v1/me"))
        .header("x-api-key", &key)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 401, "two credentials in one request");
    let mut forged = key.clone().into_bytes();
    forged[30] = if forged[30] == b'A' { b'B' } else { b'A' };
    let forged = me("x-api-key", String::from_utf8(forged).unwrap()).await;
    assert_eq!(forged.status(), 401);
    assert_eq!(
        forged.json::<serde_json::Value>().await.unwrap()["type"],
        "urn:portcullis:problem:unauthorized"
    );
    // A key cannot manage keys, however scoped.
    let by_key = app.client.get(app.url("/v1/me/api-keys")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(by_key.status(), 403);

    let list =
        app.client.get(app.url("/v1/me/api-keys")).header("authorization", &bearer).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let list = list.text().await.unwrap();
    assert!(list.contains(&id) && !list.contains(&key[27..]), "{list}");

    let rotated: serde_json::Value = app
        .client
        .post(app.url(&format!("/v1/me/api-keys/{id}/rotate")))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    canary(Canary::ApiKey, &new_key);
    assert!(rotated["api_key"]["previous_secret_valid_until"].is_string());
    assert_eq!(me("x-api-key", key.clone()).await.status(), 200, "the old secret has a grace period");
    assert_eq!(me("x-api-key", new_key.clone()).await.status(), 200);
    let revoked = app
        .client
        .delete(app.url(&format!("/v1/me/api-keys/{id}")))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(me("x-api-key", key.clone()).await.status(), 401);
    assert_eq!(me("x-api-key", new_key.clone()).await.status(), 401);
    app.stop().await;

    let logs = log_text();
    for secret in [&key, &new_key, &key[27..].to_owned()] {
        assert!(!logs.contains(secret.as_str()), "a key reached the logs: {:.12}…", secret);
    }
}

#[tokio::test]
async fn a_service_account_key_introspects_tokens_and_keys_over_the_form_endpoint() {
    let app = spawn_app().await;
    let core = app.server.app().clone();
    core.create_user_as_operator("root@example.com", None, SecretString::from(PASSWORD), BuiltinRole::Owner)
        .await
        .unwrap();
    let root = login(&app, "root@example.com", PASSWORD).await;
    let root_bearer = format!("Bearer {}", root.access);
    let orgs: serde_json::Value = app
        .client
        .get(app.url("/v1/admin/organizations"))
        .header("authorization", &root_bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = orgs["organizations"][0]["id"].as_str().unwrap().to_owned();
    let account: serde_json::Value = app
        .client
        .post(app.url("/v1/admin/service-accounts"))
        .header("authorization", &root_bearer)
        .json(&serde_json::json!({ "organization_id": org, "name": "Gateway", "role": "admin" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account_id = account["id"].as_str().unwrap();
    let issued = app
        .client
        .post(app.url(&format!("/v1/admin/service-accounts/{account_id}/api-keys")))
        .header("authorization", &root_bearer)
        .json(&key_body(&["tokens:introspect"]))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let gateway_key = issued.json::<serde_json::Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    canary(Canary::ApiKey, &gateway_key);

    let introspect = |token: String| {
        let request = app
            .client
            .post(app.url("/oauth2/introspect"))
            .header("x-api-key", &gateway_key)
            .form(&[("token", token)]);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let active = introspect(root.access.clone()).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["token_type"], "Bearer");
    assert!(active["sub"].is_string() && active["exp"].is_i64());
    let key = introspect(gateway_key.clone()).await;
    assert_eq!(key["active"], true);
    assert_eq!(key["scope"], "tokens:introspect");
    assert_eq!(key["sub"], account_id);
    for nonsense in ["", "abc", "pcs_0"] {
        assert_eq!(introspect(nonsense.into()).await, serde_json::json!({ "active": false }));
    }
    // A person's token may not ask, and a JSON body is the wrong media type.
    let as_person = app
        .client
        .post(app.url("/oauth2/introspect"))
        .header("authorization", &root_bearer)
        .form(&[("token", root.access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(as_person.status(), 403);
    let json = app
        .client
        .post(app.url("/oauth2/introspect"))
        .header("x-api-key", &gateway_key)
        .json(&serde_json::json!({ "token": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415);
    let secret = SecretString::from(gateway_key.clone());
    app.stop().await;
    assert!(!log_text().contains(secret.expose_secret()));
}

#[tokio::test]
async fn a_large_body_refused_before_it_is_read_still_gets_its_answer_not_a_reset() {
    let app = spawn_app().await;
    // Over the kernel's socket buffers, under the body limit: the 401 is decided before the body is
    // needed, and must still arrive (a connection closed with unread bytes is reset instead).
    let token = "x".repeat(60_000);
    for _ in 0..3 {
        let response = app
            .client
            .post(app.url("/oauth2/introspect"))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let json = app
            .client
            .post(app.url("/v1/authz/check"))
            .header("content-type", "text/plain")
            .body(token.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(json.status(), 401);
    }
    app.stop().await;
}
