//! Erasure over HTTP (issue 9): `DELETE /v1/me` erases the caller's account for a fresh session of
//! the person only, clears the browser's state, leaves the account's requests in the trail under
//! its id with their client details no longer readable, and spares the last owner.

use reqwest::Method;

use crate::export::create_key;
use crate::mfa::{
    PUBLIC_URL, account_id, authenticator, expect_reauthentication, json_of, register_passkey, with_owner,
};
use crate::support::{Go, PASSWORD, expect_problem, login, login_as_agent, register};

const AGENT: &str = "doras-tablet/4.2";

#[tokio::test]
async fn a_person_erases_their_account_and_only_a_fresh_session_of_theirs_can() {
    let (app, owner) = with_owner(|c| c.http.public_url = Some(PUBLIC_URL.into())).await;
    register(&app, "dora@example.com", PASSWORD).await;
    let before = login(&app, "dora@example.com", PASSWORD).await;
    let dora = login_as_agent(&app, "dora@example.com", PASSWORD, AGENT).await;
    let dora_id = account_id(&app, &dora.access).await;
    let (_, key) = create_key(&app, &dora.access, "deploy").await;
    let mut passkey = authenticator();
    register_passkey(&app, &dora.access, &mut passkey, "YubiKey").await;
    let trail_before =
        app.call(Method::GET, "/v1/audit/events?limit=200").bearer_auth(&owner.access).go().await;
    assert!(json_of(trail_before, 200).await.to_string().contains(AGENT), "her browser is in the trail");

    // Refused, and nothing changes: an API key, a session with less than her factors, nobody.
    let by_key = app.call(Method::DELETE, "/v1/me").header("x-api-key", &key).go().await;
    expect_problem(by_key, 403, "forbidden").await;
    expect_reauthentication(app.call(Method::DELETE, "/v1/me").bearer_auth(&before.access).go().await).await;
    expect_problem(app.call(Method::DELETE, "/v1/me").go().await, 401, "unauthorized").await;
    let last_owner = app.call(Method::DELETE, "/v1/me").bearer_auth(&owner.access).go().await;
    expect_problem(last_owner, 403, "forbidden").await;
    assert_eq!(app.me(&dora.access).await.status(), 200);

    let erased = app.call(Method::DELETE, "/v1/me").bearer_auth(&dora.access).go().await;
    assert_eq!(erased.status(), 204);
    let cleared = erased.headers().get("clear-site-data").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(cleared.as_deref(), Some(r#""cache", "cookies", "storage""#));

    // Gone: her tokens, her key, her account; her events stay under her id, without her browser.
    assert_eq!(app.me(&dora.access).await.status(), 401);
    assert_eq!(app.call(Method::GET, "/v1/me").header("x-api-key", &key).go().await.status(), 401);
    let account =
        app.call(Method::GET, &format!("/v1/admin/users/{dora_id}")).bearer_auth(&owner.access).go().await;
    expect_problem(account, 404, "not-found").await;
    let trail = app.call(Method::GET, "/v1/audit/events?limit=200").bearer_auth(&owner.access).go().await;
    let trail = json_of(trail, 200).await;
    let text = trail.to_string();
    assert!(!text.contains(AGENT) && !text.contains("dora@example.com"), "{text}");
    let deleted: Vec<&serde_json::Value> =
        trail["events"].as_array().unwrap().iter().filter(|e| e["action"] == "user.deleted").collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["target"]["id"], dora_id.as_str());
    assert_eq!(deleted[0]["actor"]["id"], dora_id.as_str());
    assert!(text.matches(dora_id.as_str()).count() > 3, "her earlier events stay under her id");
    app.stop().await;
}
