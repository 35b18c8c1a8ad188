//! Sessions over HTTP (issue 3): token and cookie logins, refresh-token rotation and reuse detection,
//! logout, the session list, and the CSRF defences of cookie sessions, from an attacker's side.

use reqwest::Method;
use serde_json::json;

use crate::support::{
    CookieSession, Go, PASSWORD, SESSION_COOKIE, TestApp, Tokens, WithSession, expect_problem,
    expect_unauthorized, login, login_as_agent, login_cookie, login_response, register, set_session_cookie,
    spawn_app, spawn_with,
};

/// A registered account and one token session of it.
async fn account(app: &TestApp, email: &str) -> Tokens {
    register(app, email, PASSWORD).await;
    login(app, email, PASSWORD).await
}

async fn sessions_of(app: &TestApp, access: &str) -> Vec<serde_json::Value> {
    let response = app.call(Method::GET, "/v1/me/sessions").bearer_auth(access).go().await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["sessions"].as_array().unwrap().clone()
}

// ----- logging in -----

#[tokio::test]
async fn a_token_login_returns_a_short_lived_access_token_and_a_refresh_token() {
    let app = spawn_app().await;
    register(&app, "ann@example.com", PASSWORD).await;

    let response = login_response(&app, json!({ "email": "ann@example.com", "password": PASSWORD })).await;

    assert_eq!(response.status(), 200);
    assert!(set_session_cookie(&response).is_none(), "a token login sets no cookie");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!((890..=900).contains(&body["expires_in"].as_i64().unwrap()), "{body}");
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert!(body["refresh_token"].as_str().is_some_and(|t| t.len() >= 43));
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    assert_eq!(app.me_status(body["access_token"].as_str().unwrap()).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn responses_that_carry_tokens_are_not_cacheable() {
    // RFC 6749 section 5.1: a response with tokens must carry `Cache-Control: no-store`, so no shared
    // or browser cache keeps a copy of them.
    let app = spawn_app().await;
    register(&app, "cache@example.com", PASSWORD).await;

    let token_login =
        login_response(&app, json!({ "email": "cache@example.com", "password": PASSWORD })).await;
    let cookie_login =
        login_response(&app, json!({ "email": "cache@example.com", "password": PASSWORD, "mode": "cookie" }))
            .await;

    for (what, response) in [("token login", token_login), ("cookie login", cookie_login)] {
        assert_eq!(response.status(), 200);
        let cache = response.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
        assert!(cache.as_deref().is_some_and(|c| c.contains("no-store")), "{what}: Cache-Control {cache:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cookie_login_sets_a_host_prefixed_secure_httponly_lax_cookie_and_returns_a_csrf_token() {
    let app = spawn_app().await;
    register(&app, "bea@example.com", PASSWORD).await;

    let response =
        login_response(&app, json!({ "email": "bea@example.com", "password": PASSWORD, "mode": "cookie" }))
            .await;

    assert_eq!(response.status(), 200);
    let set_cookie = set_session_cookie(&response).expect("Set-Cookie");
    let attributes: Vec<String> =
        set_cookie.split(';').skip(1).map(|a| a.trim().to_ascii_lowercase()).collect();
    for required in ["path=/", "secure", "httponly", "samesite=lax"] {
        assert!(attributes.iter().any(|a| a == required), "{required} missing: {set_cookie}");
    }
    assert!(
        attributes.iter().all(|a| !a.starts_with("domain")),
        "a __Host- cookie has no Domain: {set_cookie}"
    );
    let max_age: i64 = attributes.iter().find_map(|a| a.strip_prefix("max-age=")).unwrap().parse().unwrap();
    assert!(max_age > 0);
    let value = set_cookie.split(';').next().unwrap().strip_prefix(&format!("{SESSION_COOKIE}=")).unwrap();
    assert!(value.len() >= 43, "the cookie carries a 256-bit secret");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["csrf_token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert!(body["expires_at"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none(), "{body}");

    let session =
        CookieSession { cookie: value.to_owned(), csrf: body["csrf_token"].as_str().unwrap().to_owned() };
    let me = app.call(Method::GET, "/v1/me").session_cookie(&session).go().await;
    assert_eq!(me.status(), 200, "reading needs no CSRF token");
    app.stop().await;
}

#[tokio::test]
async fn a_cookie_login_from_a_foreign_page_is_refused() {
    let app = spawn_app().await;
    register(&app, "cy@example.com", PASSWORD).await;
    let body = json!({ "email": "cy@example.com", "password": PASSWORD, "mode": "cookie" });

    for (header, value) in [
        ("origin", "https://evil.example".to_owned()),
        ("origin", "null".to_owned()),
        ("origin", format!("{}.evil.example", app.origin())),
        ("sec-fetch-site", "cross-site".to_owned()),
        ("sec-fetch-site", "same-site".to_owned()),
    ] {
        let response = app.call(Method::POST, "/v1/auth/login").header(header, &value).json(&body).go().await;
        assert!(set_session_cookie(&response).is_none(), "{header}: {value} got a session cookie");
        expect_problem(response, 403, "csrf-rejected").await;
    }

    let own = app.call(Method::POST, "/v1/auth/login").header("origin", app.origin()).json(&body).go().await;
    assert_eq!(own.status(), 200, "the server's own origin logs in");
    let own = app
        .call(Method::POST, "/v1/auth/login")
        .header("sec-fetch-site", "same-origin")
        .json(&body)
        .go()
        .await;
    assert_eq!(own.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn me_without_a_valid_credential_is_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let tokens = account(&app, "dee@example.com").await;

    expect_unauthorized(app.call(Method::GET, "/v1/me").go().await).await;
    for authorization in [
        "Bearer garbage".to_owned(),
        "Bearer ".to_owned(),
        format!("Basic {}", tokens.access),
        format!("Bearer {}", tokens.refresh),
        format!("Bearer {} extra", tokens.access),
        format!("Bearer {}x", tokens.access),
    ] {
        let response = app.call(Method::GET, "/v1/me").header("authorization", &authorization).go().await;
        expect_unauthorized(response).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_bad_authorization_header_is_not_rescued_by_a_valid_cookie() {
    let app = spawn_app().await;
    register(&app, "eli@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "eli@example.com", PASSWORD).await;

    let response = app
        .call(Method::GET, "/v1/me")
        .session_cookie(&browser)
        .header("authorization", "Bearer forged")
        .go()
        .await;

    expect_unauthorized(response).await;
    app.stop().await;
}

#[tokio::test]
async fn when_the_hash_pool_is_full_logins_are_shed_with_503_and_retry_after() {
    // The real argon2 cost, one worker and one queue slot: a burst cannot all be admitted.
    let app = spawn_with(|c| {
        c.password.argon2_memory_kib = 19 * 1024;
        c.password.argon2_iterations = 2;
        c.password.hash_workers = 1;
        c.password.max_queued_hashes = 1;
    })
    .await;
    let body = json!({ "email": "burst@example.com", "password": PASSWORD });

    let burst: Vec<_> =
        (0..16).map(|_| tokio::spawn(app.call(Method::POST, "/v1/auth/login").json(&body).send())).collect();

    let mut shed = 0;
    for request in burst {
        let response = request.await.unwrap().unwrap();
        match response.status().as_u16() {
            401 => {}
            503 => {
                shed += 1;
                let retry_after =
                    response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                assert!(retry_after.is_some_and(|r| r.parse::<u64>().is_ok()), "503 without Retry-After");
                expect_problem(response, 503, "unavailable").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(shed > 0, "16 simultaneous logins against 2 hash slots were all admitted");
    app.stop().await;
}

// ----- refresh tokens -----

#[tokio::test]
async fn a_refresh_rotates_the_refresh_token_and_issues_a_working_access_token() {
    let app = spawn_app().await;
    let first = account(&app, "fay@example.com").await;

    let second = Tokens::from_response(app.refresh(&first.refresh).await).await;
    let third = Tokens::from_response(app.refresh(&second.refresh).await).await;

    assert_ne!(first.refresh, second.refresh);
    assert_ne!(second.refresh, third.refresh);
    assert_ne!(first.access, second.access);
    assert_eq!(second.session_id(), first.session_id(), "a refresh continues the same session");
    assert_eq!(app.me_status(&third.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn presenting_a_spent_refresh_token_revokes_the_whole_session() {
    let app = spawn_app().await;
    let stolen = account(&app, "gus@example.com").await;
    let unrelated = login(&app, "gus@example.com", PASSWORD).await;
    // The legitimate client refreshes; the thief's copy of the old refresh token is now spent.
    let current = Tokens::from_response(app.refresh(&stolen.refresh).await).await;
    assert_eq!(app.me_status(&current.access).await, 200);

    let replay = app.refresh(&stolen.refresh).await;

    expect_unauthorized(replay).await;
    assert_eq!(
        app.refresh_status(&current.refresh).await,
        401,
        "the newest refresh token dies with the session"
    );
    assert_eq!(app.me_status(&current.access).await, 401, "the current access token stops at once");
    assert_eq!(app.me_status(&stolen.access).await, 401);
    assert_eq!(app.me_status(&unrelated.access).await, 200, "the account's other sessions are untouched");
    assert_eq!(app.refresh_status(&unrelated.refresh).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn only_a_real_refresh_token_refreshes() {
    let app = spawn_app().await;
    let tokens = account(&app, "hana@example.com").await;
    let browser = login_cookie(&app, "hana@example.com", PASSWORD).await;

    for wrong in
        ["A".repeat(43), String::new(), tokens.access.clone(), browser.cookie.clone(), browser.csrf.clone()]
    {
        expect_unauthorized(app.refresh(&wrong).await).await;
    }

    assert_eq!(app.refresh_status(&tokens.refresh).await, 200, "failed attempts do not burn the real token");
    app.stop().await;
}

// ----- logging out -----

#[tokio::test]
async fn logout_ends_the_session_at_once_for_both_its_tokens() {
    let app = spawn_app().await;
    let tokens = account(&app, "ida@example.com").await;
    let other = login(&app, "ida@example.com", PASSWORD).await;
    assert_eq!(app.me_status(&tokens.access).await, 200);

    let response = app.call(Method::POST, "/v1/auth/logout").bearer_auth(&tokens.access).go().await;

    assert_eq!(response.status(), 204);
    assert_eq!(app.me_status(&tokens.access).await, 401);
    assert_eq!(app.refresh_status(&tokens.refresh).await, 401);
    assert_eq!(app.me_status(&other.access).await, 200, "logout ends only this session");
    let again = app.call(Method::POST, "/v1/auth/logout").bearer_auth(&tokens.access).go().await;
    expect_unauthorized(again).await;
    app.stop().await;
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_caller_and_no_one_elses() {
    let app = spawn_app().await;
    let mine = account(&app, "jay@example.com").await;
    let mine_too = login(&app, "jay@example.com", PASSWORD).await;
    let my_browser = login_cookie(&app, "jay@example.com", PASSWORD).await;
    let theirs = account(&app, "kai@example.com").await;

    let response = app.call(Method::POST, "/v1/auth/logout-all").bearer_auth(&mine.access).go().await;

    assert_eq!(response.status(), 204);
    for tokens in [&mine, &mine_too] {
        assert_eq!(app.me_status(&tokens.access).await, 401);
        assert_eq!(app.refresh_status(&tokens.refresh).await, 401);
    }
    let cookie_me = app.call(Method::GET, "/v1/me").session_cookie(&my_browser).go().await;
    assert_eq!(cookie_me.status(), 401);
    assert_eq!(app.me_status(&theirs.access).await, 200);
    assert_eq!(app.refresh_status(&theirs.refresh).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_cookie_logout_clears_the_cookie_and_ends_the_session() {
    let app = spawn_app().await;
    register(&app, "lou@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "lou@example.com", PASSWORD).await;

    let response = app.call(Method::POST, "/v1/auth/logout").session(&browser).go().await;

    assert_eq!(response.status(), 204);
    let cleared = set_session_cookie(&response).expect("the cookie is cleared");
    assert!(cleared.starts_with(&format!("{SESSION_COOKIE}=;")), "{cleared}");
    assert!(cleared.to_ascii_lowercase().contains("max-age=0"), "{cleared}");
    let me = app.call(Method::GET, "/v1/me").session_cookie(&browser).go().await;
    expect_unauthorized(me).await;
    app.stop().await;
}

// ----- the session list -----

#[tokio::test]
async fn the_session_list_is_newest_first_with_exactly_one_current() {
    let app = spawn_app().await;
    register(&app, "mo@example.com", PASSWORD).await;
    let oldest = login_as_agent(&app, "mo@example.com", PASSWORD, "agent-one/1.0").await;
    let browser = {
        let response = app
            .call(Method::POST, "/v1/auth/login")
            .header("user-agent", "agent-two/2.0")
            .json(&json!({ "email": "mo@example.com", "password": PASSWORD, "mode": "cookie" }))
            .go()
            .await;
        assert_eq!(response.status(), 200);
        let set_cookie = set_session_cookie(&response).unwrap();
        set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
    };
    let newest = login_as_agent(&app, "mo@example.com", PASSWORD, "agent-three/3.0").await;

    let sessions = sessions_of(&app, &oldest.access).await;

    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let agents: Vec<&str> = sessions.iter().map(|s| s["user_agent"].as_str().unwrap()).collect();
    assert_eq!(agents, ["agent-three/3.0", "agent-two/2.0", "agent-one/1.0"], "newest first");
    let kinds: Vec<&str> = sessions.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["bearer", "cookie", "bearer"]);
    let current: Vec<&serde_json::Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], oldest.session_id());
    assert_eq!(sessions[0]["id"], newest.session_id());
    for session in &sessions {
        assert_eq!(session["ip"], "127.0.0.1");
        for field in ["created_at", "last_seen_at", "expires_at"] {
            assert!(session[field].is_string(), "{field}: {session}");
        }
        assert!(!session.to_string().contains(&browser), "the list leaks no session secret");
    }
    let created: Vec<&str> = sessions.iter().map(|s| s["created_at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_user_revokes_one_of_their_own_sessions() {
    let app = spawn_app().await;
    let here = account(&app, "ned@example.com").await;
    let lost_phone = login(&app, "ned@example.com", PASSWORD).await;

    let response = app
        .call(Method::DELETE, &format!("/v1/me/sessions/{}", lost_phone.session_id()))
        .bearer_auth(&here.access)
        .go()
        .await;

    assert_eq!(response.status(), 204);
    assert_eq!(app.me_status(&lost_phone.access).await, 401, "its access token stops at once");
    assert_eq!(app.refresh_status(&lost_phone.refresh).await, 401);
    assert_eq!(app.me_status(&here.access).await, 200);
    let ids: Vec<String> =
        sessions_of(&app, &here.access).await.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, [here.session_id()]);
    let again = app
        .call(Method::DELETE, &format!("/v1/me/sessions/{}", lost_phone.session_id()))
        .bearer_auth(&here.access)
        .go()
        .await;
    expect_problem(again, 404, "not-found").await;
    app.stop().await;
}

#[tokio::test]
async fn another_users_session_id_is_404_and_that_session_keeps_working() {
    let app = spawn_app().await;
    let attacker = account(&app, "oz@example.com").await;
    let victim = account(&app, "pia@example.com").await;

    let response = app
        .call(Method::DELETE, &format!("/v1/me/sessions/{}", victim.session_id()))
        .bearer_auth(&attacker.access)
        .go()
        .await;

    let not_found = expect_problem(response, 404, "not-found").await;
    let unknown = app
        .call(Method::DELETE, "/v1/me/sessions/5f0c6a4e-8a53-4c55-9d6f-2b1d0e6f4a11")
        .bearer_auth(&attacker.access)
        .go()
        .await;
    let unknown = expect_problem(unknown, 404, "not-found").await;
    assert_eq!(not_found["detail"], unknown["detail"], "someone else's session looks like no session");
    assert_eq!(app.me_status(&victim.access).await, 200);
    assert_eq!(app.refresh_status(&victim.refresh).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_or_unknown_session_id_is_404() {
    let app = spawn_app().await;
    let tokens = account(&app, "quinn@example.com").await;

    for id in [
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "5f0c6a4e-8a53-4c55-9d6f-2b1d0e6f4a11",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "5f0c6a4e8a534c559d6f2b1d0e6f4a11",
        "1%20OR%201=1",
    ] {
        let response =
            app.call(Method::DELETE, &format!("/v1/me/sessions/{id}")).bearer_auth(&tokens.access).go().await;
        expect_problem(response, 404, "not-found").await;
    }
    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_session_list_and_revocation_need_authentication() {
    let app = spawn_app().await;
    let tokens = account(&app, "rae@example.com").await;

    expect_unauthorized(app.call(Method::GET, "/v1/me/sessions").go().await).await;
    let response = app.call(Method::DELETE, &format!("/v1/me/sessions/{}", tokens.session_id())).go().await;
    expect_unauthorized(response).await;

    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

// ----- CSRF: cookie sessions -----

#[tokio::test]
async fn a_state_changing_cookie_request_without_the_right_csrf_token_is_refused() {
    let app = spawn_app().await;
    register(&app, "sam@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "sam@example.com", PASSWORD).await;
    let other_browser = login_cookie(&app, "sam@example.com", PASSWORD).await;
    let logout = || app.call(Method::POST, "/v1/auth/logout").session_cookie(&browser);

    expect_problem(logout().go().await, 403, "csrf-rejected").await;
    for wrong in [
        "wrong".to_owned(),
        String::new(),
        other_browser.csrf.clone(),
        browser.csrf[..browser.csrf.len() - 1].to_owned(),
        browser.csrf.to_ascii_uppercase(),
        browser.cookie.clone(),
    ] {
        let response = logout().header("x-csrf-token", &wrong).go().await;
        expect_problem(response, 403, "csrf-rejected").await;
    }

    let me = app.call(Method::GET, "/v1/me").session_cookie(&browser).go().await;
    assert_eq!(me.status(), 200, "the refused requests changed nothing");
    assert_eq!(logout().header("x-csrf-token", &browser.csrf).go().await.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn the_right_csrf_token_from_a_foreign_origin_is_still_refused() {
    let app = spawn_app().await;
    register(&app, "tia@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "tia@example.com", PASSWORD).await;
    let logout = || app.call(Method::POST, "/v1/auth/logout").session(&browser);

    for (header, value) in [
        ("origin", "https://evil.example".to_owned()),
        ("origin", "null".to_owned()),
        ("origin", format!("{}.evil.example", app.origin())),
        ("sec-fetch-site", "cross-site".to_owned()),
        ("sec-fetch-site", "same-site".to_owned()),
    ] {
        let response = logout().header(header, &value).go().await;
        expect_problem(response, 403, "csrf-rejected").await;
    }

    let response = logout().header("origin", app.origin()).header("sec-fetch-site", "same-origin").go().await;
    assert_eq!(response.status(), 204, "the server's own origin with the right token logs out");
    app.stop().await;
}

#[tokio::test]
async fn an_origin_with_the_servers_host_but_another_scheme_is_another_origin() {
    // An origin is scheme, host and port (RFC 6454 section 4); the server speaks http here, so a page
    // on https://<same host:port> is not one of its own.
    let app = spawn_app().await;
    register(&app, "scheme@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "scheme@example.com", PASSWORD).await;

    let response = app
        .call(Method::POST, "/v1/auth/logout")
        .session(&browser)
        .header("origin", format!("https://{}", app.addr))
        .go()
        .await;

    expect_problem(response, 403, "csrf-rejected").await;
    app.stop().await;
}

#[tokio::test]
async fn revoking_a_session_with_the_cookie_needs_the_csrf_token() {
    let app = spawn_app().await;
    register(&app, "uma@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "uma@example.com", PASSWORD).await;
    let phone = login(&app, "uma@example.com", PASSWORD).await;
    let path = format!("/v1/me/sessions/{}", phone.session_id());

    let forged = app.call(Method::DELETE, &path).session_cookie(&browser).go().await;
    expect_problem(forged, 403, "csrf-rejected").await;
    let cross_site =
        app.call(Method::DELETE, &path).session(&browser).header("origin", "https://evil.example").go().await;
    expect_problem(cross_site, 403, "csrf-rejected").await;
    assert_eq!(app.me_status(&phone.access).await, 200, "the refused requests revoked nothing");

    let response =
        app.call(Method::DELETE, &path).session(&browser).header("origin", app.origin()).go().await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.me_status(&phone.access).await, 401);
    app.stop().await;
}

#[tokio::test]
async fn changing_the_password_with_the_cookie_needs_the_csrf_token() {
    let app = spawn_app().await;
    register(&app, "vic@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "vic@example.com", PASSWORD).await;
    let body = json!({ "current_password": PASSWORD, "new_password": crate::support::NEW_PASSWORD });

    let forged = app.call(Method::POST, "/v1/me/password").session_cookie(&browser).json(&body).go().await;
    expect_problem(forged, 403, "csrf-rejected").await;
    let cross_site = app
        .call(Method::POST, "/v1/me/password")
        .session(&browser)
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .go()
        .await;
    expect_problem(cross_site, 403, "csrf-rejected").await;
    login(&app, "vic@example.com", PASSWORD).await;

    let response = app.call(Method::POST, "/v1/me/password").session(&browser).json(&body).go().await;
    assert_eq!(response.status(), 204);
    login(&app, "vic@example.com", crate::support::NEW_PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn logout_all_with_the_cookie_needs_the_csrf_token() {
    let app = spawn_app().await;
    register(&app, "wes@example.com", PASSWORD).await;
    let browser = login_cookie(&app, "wes@example.com", PASSWORD).await;
    let phone = login(&app, "wes@example.com", PASSWORD).await;

    let forged = app.call(Method::POST, "/v1/auth/logout-all").session_cookie(&browser).go().await;

    expect_problem(forged, 403, "csrf-rejected").await;
    assert_eq!(app.me_status(&phone.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn bearer_requests_need_no_csrf_token() {
    let app = spawn_app().await;
    let tokens = account(&app, "xia@example.com").await;
    let other = login(&app, "xia@example.com", PASSWORD).await;

    // No ambient credential rides along with a bearer token, so a foreign Origin is no forgery.
    let response = app
        .call(Method::DELETE, &format!("/v1/me/sessions/{}", other.session_id()))
        .bearer_auth(&tokens.access)
        .header("origin", "https://spa.example")
        .go()
        .await;
    assert_eq!(response.status(), 204);
    let response = app.call(Method::POST, "/v1/auth/logout").bearer_auth(&tokens.access).go().await;
    assert_eq!(response.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn two_session_cookies_in_one_request_are_refused() {
    let app = spawn_app().await;
    register(&app, "yan@example.com", PASSWORD).await;
    let victim = login_cookie(&app, "yan@example.com", PASSWORD).await;
    register(&app, "zed@example.com", PASSWORD).await;
    let planted = login_cookie(&app, "zed@example.com", PASSWORD).await;

    // Cookie tossing: a sibling subdomain plants its own session next to the victim's.
    let one_header = format!("{SESSION_COOKIE}={}; {SESSION_COOKIE}={}", victim.cookie, planted.cookie);
    let response = app.call(Method::GET, "/v1/me").header("cookie", one_header).go().await;
    expect_unauthorized(response).await;
    let response = app
        .call(Method::GET, "/v1/me")
        .header("cookie", format!("{SESSION_COOKIE}={}", victim.cookie))
        .header("cookie", format!("{SESSION_COOKIE}={}", planted.cookie))
        .go()
        .await;
    expect_unauthorized(response).await;
    let same_twice = format!("{SESSION_COOKIE}={}; {SESSION_COOKIE}={}", victim.cookie, victim.cookie);
    let response = app.call(Method::GET, "/v1/me").header("cookie", same_twice).go().await;
    expect_unauthorized(response).await;
    app.stop().await;
}

#[tokio::test]
async fn only_a_real_session_cookie_opens_a_cookie_session() {
    let app = spawn_app().await;
    let tokens = account(&app, "abe@example.com").await;
    let browser = login_cookie(&app, "abe@example.com", PASSWORD).await;

    for value in [tokens.access.as_str(), tokens.refresh.as_str(), browser.csrf.as_str(), "A", ""] {
        let fake = CookieSession { cookie: value.to_owned(), csrf: browser.csrf.clone() };
        expect_unauthorized(app.call(Method::GET, "/v1/me").session_cookie(&fake).go().await).await;
    }
    // The right value under another name is not the session cookie either.
    let response = app
        .call(Method::GET, "/v1/me")
        .header("cookie", format!("portcullis_session={}", browser.cookie))
        .go()
        .await;
    expect_unauthorized(response).await;
    let response = app
        .call(Method::GET, "/v1/me")
        .header("authorization", format!("Bearer {}", browser.cookie))
        .go()
        .await;
    expect_unauthorized(response).await;
    app.stop().await;
}

#[tokio::test]
async fn a_cookie_login_in_a_browser_that_holds_a_session_ends_the_old_one() {
    let app = spawn_app().await;
    register(&app, "renew@example.com", "correct horse battery staple").await;
    let old = login_cookie(&app, "renew@example.com", "correct horse battery staple").await;
    // The same browser logs in again (or a planted cookie rides along): the old session must end.
    let response = app
        .call(Method::POST, "/v1/auth/login")
        .session_cookie(&old)
        .json(&json!({"email": "renew@example.com", "password": "correct horse battery staple", "mode": "cookie"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let new = set_session_cookie(&response).unwrap();
    assert!(!new.contains(&old.cookie), "the session id was renewed");
    let me = app.call(Method::GET, "/v1/me").session_cookie(&old).send().await.unwrap();
    assert_eq!(me.status(), 401, "the old session still works");
    app.stop().await;
}

#[tokio::test]
async fn logout_asks_the_browser_to_clear_what_it_keeps_for_the_site() {
    let app = spawn_app().await;
    register(&app, "clear@example.com", "correct horse battery staple").await;
    let session = login_cookie(&app, "clear@example.com", "correct horse battery staple").await;
    let response = app.call(Method::POST, "/v1/auth/logout").session(&session).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["clear-site-data"], r#""cache", "cookies", "storage""#);
    let cleared = set_session_cookie(&response).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    app.stop().await;
}

#[tokio::test]
async fn over_http2_a_browser_cookie_session_passes_the_origin_check_and_a_foreign_origin_does_not() {
    // Browsers send `:authority` and no Host header over HTTP/2; the origin check must still know us.
    let app = spawn_app().await;
    register(&app, "h2@example.com", "correct horse battery staple").await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let ours = format!("http://{}", app.addr);
    let login = h2
        .post(app.url("/v1/auth/login"))
        .header("origin", &ours)
        .header("sec-fetch-site", "same-origin")
        .json(
            &json!({"email": "h2@example.com", "password": "correct horse battery staple", "mode": "cookie"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(login.version(), reqwest::Version::HTTP_2);
    assert_eq!(login.status(), 200, "{}", login.text().await.unwrap());
    let cookie = set_session_cookie(&login).unwrap();
    let cookie = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
    let session = CookieSession { cookie, csrf };

    let foreign = h2
        .post(app.url("/v1/auth/logout"))
        .session(&session)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    expect_problem(foreign, 403, "csrf-rejected").await;
    let logout =
        h2.post(app.url("/v1/auth/logout")).session(&session).header("origin", &ours).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    app.stop().await;
}
