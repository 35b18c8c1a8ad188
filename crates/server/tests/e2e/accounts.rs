//! Accounts over HTTP (issue 3): signup and its policy, email verification, the password rules, the
//! answers that must not reveal whether an account exists, password change and reset, the first
//! owner's setup token, and invites, each seen from the side of someone trying to abuse it.

use portcullis::config::{PasswordAlgorithmName, SignupPolicyName};
use reqwest::Method;
use serde_json::json;

use crate::support::{
    Go, NEW_PASSWORD, PASSWORD, WithSession, eml_header, expect_field_error, expect_problem, link_from,
    log_text, login, login_response, outbox, register, setup_owner, signup, spawn_app, spawn_with,
    spawn_with_setup_token, token_from, verify, wait_for_email, wait_for_emails, wait_for_link,
};

// ----- signup, verification, first login -----

#[tokio::test]
async fn signup_then_verify_then_login_is_the_happy_path() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "alice@example.com", "password": PASSWORD, "display_name": "Alice Liddell" }),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap(), json!({ "status": "accepted" }));

    let mail = wait_for_email(&app, "alice@example.com", "").await;
    let link = link_from(&mail, "verify-email");
    assert!(link.starts_with(&format!("{}/ui/verify-email#token=", app.origin())), "{link}");
    let token = token_from(&mail, "verify-email");
    let response = app.post_json("/v1/auth/verify-email", &json!({ "token": token })).await;
    assert_eq!(response.status(), 204);

    let tokens = login(&app, "alice@example.com", PASSWORD).await;
    let response = app.me(&tokens.access).await;
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["display_name"], "Alice Liddell");
    assert_eq!(me["role"], "member");
    assert!(me["id"].as_str().is_some_and(|id| id.len() == 36), "{me}");
    assert!(me["created_at"].is_string() && me["last_login_at"].is_string(), "{me}");
    // Every account is a member of the default organization, and of nothing else yet.
    let organizations = me["organizations"].as_array().unwrap();
    assert_eq!(organizations.len(), 1, "{me}");
    assert_eq!(organizations[0]["role"], "member", "{me}");
    assert_eq!(me.as_object().unwrap().len(), 8, "the profile has exactly the documented fields: {me}");
    app.stop().await;
}

#[tokio::test]
async fn in_development_an_unverified_account_can_log_in_by_default() {
    let app = spawn_app().await;
    signup(&app, "dev@example.com", PASSWORD).await;

    let tokens = login(&app, "dev@example.com", PASSWORD).await;

    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(me["email_verified"], false);
    app.stop().await;
}

#[tokio::test]
async fn a_verification_link_works_once_and_a_made_up_one_never() {
    let app = spawn_app().await;
    signup(&app, "once@example.com", PASSWORD).await;
    let token = wait_for_link(&app, "once@example.com", "verify-email").await;
    let verify =
        |token: String| app.call(Method::POST, "/v1/auth/verify-email").json(&json!({ "token": token })).go();

    assert_eq!(verify(token.clone()).await.status(), 204);

    expect_problem(verify(token.clone()).await, 400, "invalid-token").await;
    expect_problem(verify("A".repeat(43)).await, 400, "invalid-token").await;
    expect_problem(verify(String::new()).await, 400, "invalid-token").await;
    expect_problem(verify("x".repeat(4000)).await, 400, "invalid-token").await;
    app.stop().await;
}

#[tokio::test]
async fn with_verification_required_the_right_password_answers_like_a_wrong_one_and_mails_a_new_link() {
    let app = spawn_with(|c| c.accounts.require_verified_email = Some(true)).await;
    signup(&app, "strict@example.com", PASSWORD).await;

    // A distinct answer would tell someone who signed up an address with their own password whether
    // it already had an account: so the right password on an unverified account is "invalid
    // credentials" too, and only the mailbox's owner learns more (a fresh confirmation link).
    let unverified =
        login_response(&app, json!({ "email": "strict@example.com", "password": PASSWORD })).await;
    let unverified = expect_problem(unverified, 401, "invalid-credentials").await;
    let wrong =
        login_response(&app, json!({ "email": "strict@example.com", "password": NEW_PASSWORD })).await;
    let wrong = expect_problem(wrong, 401, "invalid-credentials").await;
    assert_eq!(unverified["detail"], wrong["detail"]);
    crate::support::wait_for_emails(&app, "strict@example.com", "Confirm your email address", 2).await;
    let cookie = login_response(
        &app,
        json!({ "email": "strict@example.com", "password": PASSWORD, "mode": "cookie" }),
    )
    .await;
    assert!(crate::support::set_session_cookie(&cookie).is_none(), "no session for an unverified address");
    expect_problem(cookie, 401, "invalid-credentials").await;

    verify(&app, "strict@example.com").await;
    login(&app, "strict@example.com", PASSWORD).await;
    app.stop().await;
}

// ----- a taken address -----

#[tokio::test]
async fn signup_with_a_taken_address_in_another_case_answers_identically_and_mails_the_owner() {
    let app = spawn_app().await;
    let first = app
        .post_json("/v1/auth/signup", &json!({ "email": "alice@example.com", "password": PASSWORD }))
        .await;
    let first = (first.status(), first.headers()["content-type"].clone(), first.bytes().await.unwrap());
    verify(&app, "alice@example.com").await;

    let again = app
        .post_json("/v1/auth/signup", &json!({ "email": "Alice@EXAMPLE.com", "password": NEW_PASSWORD }))
        .await;
    let again = (again.status(), again.headers()["content-type"].clone(), again.bytes().await.unwrap());

    assert_eq!(first, again, "a taken address must answer exactly like a new one");
    let warning =
        wait_for_email(&app, "alice@example.com", "Someone tried to sign up with your address").await;
    assert!(!warning.contains("#token="), "the warning carries no link that would act on the account");
    login(&app, "alice@example.com", PASSWORD).await;
    let hijack =
        login_response(&app, json!({ "email": "alice@example.com", "password": NEW_PASSWORD })).await;
    expect_problem(hijack, 401, "invalid-credentials").await;
    let verifications = outbox(&app).into_iter().filter(|m| m.contains("/ui/verify-email#token=")).count();
    assert_eq!(verifications, 1, "the second signup must not mint a verification link for the address");
    app.stop().await;
}

#[tokio::test]
async fn the_someone_tried_mail_goes_to_the_address_the_owner_registered() {
    // Local parts are case-sensitive for mail servers (RFC 5321 section 2.4): the warning belongs in
    // the owner's mailbox, not in whichever spelling a stranger typed.
    let app = spawn_app().await;
    signup(&app, "carol@example.com", PASSWORD).await;

    signup(&app, "CAROL@Example.com", NEW_PASSWORD).await;

    let warning = wait_for_email(&app, "carol@example.com", "Someone tried").await;
    assert_eq!(eml_header(&warning, "To").as_deref(), Some("carol@example.com"));
    app.stop().await;
}

#[tokio::test]
async fn an_internationalized_domain_is_the_same_account_as_its_punycode_form() {
    let app = spawn_app().await;
    signup(&app, "idna@B\u{dc}CHER.example", PASSWORD).await;

    let tokens = login(&app, "idna@xn--bcher-kva.example", PASSWORD).await;
    login(&app, "idna@b\u{fc}cher.example", PASSWORD).await;

    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(me["email"], "idna@xn--bcher-kva.example", "the domain is stored in its ASCII form (UTS #46)");
    signup(&app, "idna@xn--bcher-kva.example", NEW_PASSWORD).await;
    wait_for_email(&app, "idna@xn--bcher-kva.example", "Someone tried").await;
    app.stop().await;
}

#[tokio::test]
async fn an_address_is_one_account_whatever_the_domain_case_and_surrounding_space() {
    let app = spawn_app().await;
    signup(&app, "  bob@EXAMPLE.com ", PASSWORD).await;

    let tokens = login(&app, "bob@example.com", PASSWORD).await;
    login(&app, "bob@Example.COM", PASSWORD).await;

    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(me["email"], "bob@example.com", "trimmed, domain lower-cased");
    app.stop().await;
}

// ----- validation -----

#[tokio::test]
async fn a_malformed_email_is_a_422_on_email() {
    let app = spawn_app().await;
    for email in
        ["not-an-email", "", "a@b@example.com", "alice@example.com\r\nBcc: x@evil.example", "@example.com"]
    {
        let response =
            app.post_json("/v1/auth/signup", &json!({ "email": email, "password": PASSWORD })).await;
        expect_field_error(response, "/email", PASSWORD).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_short_password_is_refused_naming_the_rule_and_never_echoing_the_password() {
    let app = spawn_app().await;
    let password = "Xy7$kq!";

    let response = app
        .post_json("/v1/auth/signup", &json!({ "email": "short@example.com", "password": password }))
        .await;

    let message = expect_field_error(response, "/password", password).await;
    assert!(message.contains('8'), "the message names the minimum: {message}");
    app.stop().await;
}

#[tokio::test]
async fn the_minimum_password_length_follows_the_configuration() {
    let app = spawn_with(|c| c.accounts.password_min_length = 16).await;
    let password = "qG7#vX2!mZ4&wL9"; // 15 characters, strong

    let response =
        app.post_json("/v1/auth/signup", &json!({ "email": "len@example.com", "password": password })).await;

    let message = expect_field_error(response, "/password", password).await;
    assert!(message.contains("16"), "the message names the configured minimum: {message}");
    signup(&app, "len@example.com", "qG7#vX2!mZ4&wL9p").await;
    app.stop().await;
}

#[tokio::test]
async fn a_password_over_128_characters_is_refused_and_128_accepted() {
    let app = spawn_app().await;
    let phrase = "umbrella quartz lantern meadow cobalt thistle orbit falcon ".repeat(3);
    let longest: String = phrase.chars().take(128).collect();
    let too_long: String = phrase.chars().take(129).collect();

    let response =
        app.post_json("/v1/auth/signup", &json!({ "email": "long@example.com", "password": too_long })).await;
    let message = expect_field_error(response, "/password", &too_long).await;
    assert!(message.contains("128"), "{message}");

    signup(&app, "long@example.com", &longest).await;
    login(&app, "long@example.com", &longest).await;
    app.stop().await;
}

#[tokio::test]
async fn a_guessable_password_is_refused() {
    let app = spawn_app().await;
    for password in ["password123", "qwertyuiop", "P@ssw0rd1", "11111111", "iloveyou1"] {
        let response = app
            .post_json("/v1/auth/signup", &json!({ "email": "weak@example.com", "password": password }))
            .await;
        let message = expect_field_error(response, "/password", password).await;
        assert!(message.contains("guess"), "{password}: {message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_password_containing_the_email_local_part_is_refused() {
    let app = spawn_app().await;
    let password = "Marguerite-Lantern-77!";

    let response = app
        .post_json("/v1/auth/signup", &json!({ "email": "marguerite@example.com", "password": password }))
        .await;

    let message = expect_field_error(response, "/password", password).await;
    assert!(message.contains("email"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_password_containing_the_display_name_is_refused() {
    let app = spawn_app().await;
    let password = "stormwarden-Lantern-77!";

    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "dn@example.com", "password": password, "display_name": "StormWarden" }),
        )
        .await;

    let message = expect_field_error(response, "/password", password).await;
    assert!(message.contains("display name"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_display_name_must_be_1_to_64_characters_without_control_or_bidi_characters() {
    let app = spawn_app().await;
    let bad = [
        String::new(),
        "   ".to_owned(),
        "x".repeat(65),
        "Eve\u{7}".to_owned(),
        "Eve\nAdmin".to_owned(),
        "Eve\u{202E}nimda".to_owned(),
        "E\u{200B}ve".to_owned(),
    ];
    for name in bad {
        let response = app
            .post_json(
                "/v1/auth/signup",
                &json!({ "email": "names@example.com", "password": PASSWORD, "display_name": name }),
            )
            .await;
        expect_field_error(response, "/display_name", PASSWORD).await;
    }
    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "names@example.com", "password": PASSWORD, "display_name": "x".repeat(64) }),
        )
        .await;
    assert_eq!(response.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_display_name_is_stored_in_nfc() {
    let app = spawn_app().await;
    let decomposed = "Zoe\u{0301} Quinn";
    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "zoe@example.com", "password": PASSWORD, "display_name": decomposed }),
        )
        .await;
    assert_eq!(response.status(), 202);

    let tokens = login(&app, "zoe@example.com", PASSWORD).await;

    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(me["display_name"], "Zo\u{e9} Quinn");
    app.stop().await;
}

#[tokio::test]
async fn every_broken_field_is_reported_at_once() {
    let app = spawn_app().await;

    let response = app
        .post_json("/v1/auth/signup", &json!({ "email": "nope", "password": PASSWORD, "display_name": "" }))
        .await;

    let body = expect_problem(response, 422, "validation").await;
    let fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"/email") && fields.contains(&"/display_name"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_fields_are_refused_so_nobody_signs_up_as_owner() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "mallory@example.com", "password": PASSWORD, "role": "owner" }),
        )
        .await;

    expect_field_error(response, "/role", PASSWORD).await;
    let response =
        login_response(&app, json!({ "email": "mallory@example.com", "password": PASSWORD })).await;
    expect_problem(response, 401, "invalid-credentials").await;
    for (path, body) in [
        ("/v1/auth/login", json!({ "email": "a@example.com", "password": PASSWORD, "admin": true })),
        ("/v1/auth/password/forgot", json!({ "email": "a@example.com", "user_id": "x" })),
        ("/v1/auth/verify-email", json!({ "token": "x", "email": "a@example.com" })),
    ] {
        expect_problem(app.post_json(path, &body).await, 422, "validation").await;
    }
    app.stop().await;
}

// ----- bcrypt as the password algorithm -----

#[tokio::test]
async fn with_bcrypt_configured_accounts_sign_up_and_log_in() {
    let app = spawn_with(|c| {
        c.password.algorithm = PasswordAlgorithmName::Bcrypt;
        c.password.bcrypt_cost = 10;
    })
    .await;

    signup(&app, "bee@example.com", PASSWORD).await;

    login(&app, "bee@example.com", PASSWORD).await;
    let wrong = login_response(&app, json!({ "email": "bee@example.com", "password": NEW_PASSWORD })).await;
    expect_problem(wrong, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn with_bcrypt_configured_a_password_over_72_bytes_is_refused_not_truncated() {
    let app = spawn_with(|c| {
        c.password.algorithm = PasswordAlgorithmName::Bcrypt;
        c.password.bcrypt_cost = 10;
    })
    .await;
    // 73 bytes: bcrypt would silently ignore the last one (ASVS 6.2.8 forbids truncation).
    let password =
        format!("{}{}", "Lantern-Quartz-Meadow-Cobalt-Thistle-Orbit-Falcon-Umbrella-River-Pine", "-X!Z");
    assert_eq!(password.len(), 73);

    let response =
        app.post_json("/v1/auth/signup", &json!({ "email": "b72@example.com", "password": password })).await;

    let message = expect_field_error(response, "/password", &password).await;
    assert!(message.contains("72"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn an_argon2_account_still_logs_in_after_the_server_switches_to_bcrypt() {
    // The same data dir and database across the restart (on PostgreSQL the harness would otherwise
    // hand the second start a fresh database).
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("kept");
    let mut database_url = None;
    let app = spawn_with(|c| {
        c.data_dir = data_dir.clone();
        database_url = c.database.url.clone();
    })
    .await;
    signup(&app, "migrate@example.com", PASSWORD).await;
    app.stop().await;

    let app = spawn_with(|c| {
        c.data_dir = data_dir.clone();
        c.database.url = database_url;
        c.password.algorithm = PasswordAlgorithmName::Bcrypt;
        c.password.bcrypt_cost = 10;
    })
    .await;

    login(&app, "migrate@example.com", PASSWORD).await;
    // The second login verifies against the hash the first one may have upgraded.
    login(&app, "migrate@example.com", PASSWORD).await;
    let wrong =
        login_response(&app, json!({ "email": "migrate@example.com", "password": NEW_PASSWORD })).await;
    expect_problem(wrong, 401, "invalid-credentials").await;
    app.stop().await;
}

// ----- signup policy, invites -----

#[tokio::test]
async fn closed_signup_is_refused_with_signup_not_allowed() {
    let app = spawn_with(|c| c.accounts.signup = Some(SignupPolicyName::Closed)).await;

    let response =
        app.post_json("/v1/auth/signup", &json!({ "email": "x@example.com", "password": PASSWORD })).await;
    expect_problem(response, 403, "signup-not-allowed").await;
    // Not even an invite opens a closed installation.
    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "x@example.com", "password": PASSWORD, "invite_token": "A".repeat(43) }),
        )
        .await;
    expect_problem(response, 403, "signup-not-allowed").await;

    let response = login_response(&app, json!({ "email": "x@example.com", "password": PASSWORD })).await;
    expect_problem(response, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn invite_only_signup_refuses_a_missing_or_made_up_invite() {
    let app = spawn_with(|c| c.accounts.signup = Some(SignupPolicyName::Invite)).await;

    let response =
        app.post_json("/v1/auth/signup", &json!({ "email": "x@example.com", "password": PASSWORD })).await;
    expect_problem(response, 403, "signup-not-allowed").await;
    let response = app
        .post_json(
            "/v1/auth/signup",
            &json!({ "email": "x@example.com", "password": PASSWORD, "invite_token": "A".repeat(43) }),
        )
        .await;
    expect_problem(response, 403, "signup-not-allowed").await;
    app.stop().await;
}

#[tokio::test]
async fn an_invite_lets_only_the_invited_address_sign_up_and_only_once() {
    let (app, setup_token) =
        spawn_with_setup_token(|c| c.accounts.signup = Some(SignupPolicyName::Invite)).await;
    setup_owner(&app, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&app, "owner@example.com", PASSWORD).await;

    let response = app
        .call(Method::POST, "/v1/admin/invites")
        .bearer_auth(&owner.access)
        .json(&json!({ "email": "ivy@example.com" }))
        .go()
        .await;
    assert_eq!(response.status(), 202);
    let mail = wait_for_email(&app, "ivy@example.com", "").await;
    assert!(link_from(&mail, "signup").starts_with(&format!("{}/ui/signup#token=", app.origin())));
    let invite = token_from(&mail, "signup");
    let signup_with = |email: &str| {
        app.call(Method::POST, "/v1/auth/signup")
            .json(&json!({ "email": email, "password": PASSWORD, "invite_token": invite.clone() }))
            .go()
    };

    // Someone who intercepted the link cannot use it for their own address...
    expect_problem(signup_with("mallory@example.com").await, 403, "signup-not-allowed").await;
    // ...and trying does not burn it for the invitee.
    assert_eq!(signup_with("ivy@example.com").await.status(), 202);
    expect_problem(signup_with("ivy@example.com").await, 403, "signup-not-allowed").await;

    login(&app, "ivy@example.com", PASSWORD).await;
    let response =
        login_response(&app, json!({ "email": "mallory@example.com", "password": PASSWORD })).await;
    expect_problem(response, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn a_member_cannot_invite() {
    let app = spawn_app().await;
    signup(&app, "member@example.com", PASSWORD).await;
    let member = login(&app, "member@example.com", PASSWORD).await;

    let response = app
        .call(Method::POST, "/v1/admin/invites")
        .bearer_auth(&member.access)
        .json(&json!({ "email": "friend@example.com" }))
        .go()
        .await;

    expect_problem(response, 403, "forbidden").await;
    let anonymous = app
        .call(Method::POST, "/v1/admin/invites")
        .json(&json!({ "email": "friend@example.com" }))
        .go()
        .await;
    crate::support::expect_unauthorized(anonymous).await;
    let invites = outbox(&app).into_iter().filter(|m| m.contains("/ui/signup#token=")).count();
    assert_eq!(invites, 0);
    app.stop().await;
}

// ----- the first owner -----

#[tokio::test]
async fn the_setup_token_creates_the_first_owner_exactly_once() {
    let (app, setup_token) = spawn_with_setup_token(|_| {}).await;

    let response = app
        .post_json(
            "/v1/auth/setup",
            &json!({ "setup_token": setup_token, "email": "root@example.com", "password": PASSWORD,
                     "display_name": "Root" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let profile: serde_json::Value = response.json().await.unwrap();
    assert_eq!(profile["role"], "owner");
    assert_eq!(profile["email"], "root@example.com");
    assert_eq!(profile["display_name"], "Root");

    let again = app
        .post_json(
            "/v1/auth/setup",
            &json!({ "setup_token": setup_token, "email": "second@example.com", "password": PASSWORD }),
        )
        .await;
    expect_problem(again, 400, "invalid-token").await;
    let owner = login(&app, "root@example.com", PASSWORD).await;
    let me: serde_json::Value = app.me(&owner.access).await.json().await.unwrap();
    assert_eq!(me["role"], "owner");
    let second = login_response(&app, json!({ "email": "second@example.com", "password": PASSWORD })).await;
    expect_problem(second, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn setup_is_refused_once_any_account_exists() {
    let (app, setup_token) = spawn_with_setup_token(|_| {}).await;
    signup(&app, "early@example.com", PASSWORD).await;

    let response = app
        .post_json(
            "/v1/auth/setup",
            &json!({ "setup_token": setup_token, "email": "late@example.com", "password": PASSWORD }),
        )
        .await;

    expect_problem(response, 400, "invalid-token").await;
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_setup_token_is_refused() {
    let (app, _setup_token) = spawn_with_setup_token(|_| {}).await;

    for token in ["A".repeat(43), String::new()] {
        let response = app
            .post_json(
                "/v1/auth/setup",
                &json!({ "setup_token": token, "email": "root@example.com", "password": PASSWORD }),
            )
            .await;
        expect_problem(response, 400, "invalid-token").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_setup_with_a_weak_password_is_refused_and_the_token_still_works() {
    let (app, setup_token) = spawn_with_setup_token(|_| {}).await;

    let response = app
        .post_json(
            "/v1/auth/setup",
            &json!({ "setup_token": setup_token, "email": "root@example.com", "password": "password123" }),
        )
        .await;
    expect_field_error(response, "/password", "password123").await;

    setup_owner(&app, &setup_token, "root@example.com", PASSWORD).await;
    app.stop().await;
}

// ----- enumeration -----

#[tokio::test]
async fn login_failures_for_unknown_email_wrong_password_and_malformed_email_look_the_same() {
    let app = spawn_app().await;
    register(&app, "known@example.com", PASSWORD).await;

    let mut answers = Vec::new();
    for (email, password) in [
        ("known@example.com", NEW_PASSWORD),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("KNOWN@example.com", NEW_PASSWORD),
        ("known@example.com", ""),
        ("known@example.com", &"x".repeat(2000)),
    ] {
        let response = login_response(&app, json!({ "email": email, "password": password })).await;
        let status = response.status();
        let challenge = response.headers().get("www-authenticate").cloned();
        let mut body = expect_problem(response, 401, "invalid-credentials").await;
        body.as_object_mut().unwrap().remove("request_id");
        answers.push((status, challenge, body));
    }

    for answer in &answers[1..] {
        assert_eq!(answer, &answers[0], "every failed login must look alike");
    }
    app.stop().await;
}

#[tokio::test]
async fn forgot_password_answers_alike_for_known_and_unknown_addresses() {
    let app = spawn_app().await;
    register(&app, "known@example.com", PASSWORD).await;

    let mut answers = Vec::new();
    for email in ["nobody@example.com", "known@example.com"] {
        let response = app.post_json("/v1/auth/password/forgot", &json!({ "email": email })).await;
        let content_type = response.headers()["content-type"].clone();
        answers.push((response.status(), content_type, response.bytes().await.unwrap()));
    }

    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 202);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answers[0].2).unwrap(),
        json!({ "status": "accepted" })
    );
    let mail = wait_for_email(&app, "known@example.com", "Reset your password").await;
    assert!(
        link_from(&mail, "reset-password").starts_with(&format!("{}/ui/reset-password#token=", app.origin()))
    );
    // The unknown address was asked for first; had it been mailed, that message would be here by now.
    assert!(outbox(&app).iter().all(|m| !m.contains("nobody@example.com")));
    let response = app.post_json("/v1/auth/password/forgot", &json!({ "email": "not an email" })).await;
    expect_field_error(response, "/email", PASSWORD).await;
    app.stop().await;
}

// ----- changing the password -----

#[tokio::test]
async fn changing_the_password_ends_other_sessions_keeps_this_one_and_mails_the_owner() {
    let app = spawn_app().await;
    register(&app, "dana@example.com", PASSWORD).await;
    let here = login(&app, "dana@example.com", PASSWORD).await;
    let elsewhere = login(&app, "dana@example.com", PASSWORD).await;
    let browser = crate::support::login_cookie(&app, "dana@example.com", PASSWORD).await;
    assert_eq!(app.me_status(&elsewhere.access).await, 200);

    let response = app
        .call(Method::POST, "/v1/me/password")
        .bearer_auth(&here.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .go()
        .await;
    assert_eq!(response.status(), 204);

    assert_eq!(app.me_status(&here.access).await, 200, "the session that changed it continues");
    assert_eq!(app.me_status(&elsewhere.access).await, 401, "another session's access token stops at once");
    assert_eq!(app.refresh_status(&elsewhere.refresh).await, 401);
    let cookie_me = app.call(Method::GET, "/v1/me").session_cookie(&browser).go().await;
    assert_eq!(cookie_me.status(), 401, "the browser session ends too");
    assert_eq!(app.refresh_status(&here.refresh).await, 200, "this session can still refresh");
    wait_for_email(&app, "dana@example.com", "Your password was changed").await;
    login(&app, "dana@example.com", NEW_PASSWORD).await;
    let old = login_response(&app, json!({ "email": "dana@example.com", "password": PASSWORD })).await;
    expect_problem(old, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_needs_the_current_password() {
    let app = spawn_app().await;
    register(&app, "erin@example.com", PASSWORD).await;
    let tokens = login(&app, "erin@example.com", PASSWORD).await;
    let guess = "Wrong-Guess-Harbor-19";

    let response = app
        .call(Method::POST, "/v1/me/password")
        .bearer_auth(&tokens.access)
        .json(&json!({ "current_password": guess, "new_password": NEW_PASSWORD }))
        .go()
        .await;

    let body_check = expect_field_error(response, "/current_password", guess).await;
    assert!(!body_check.contains(NEW_PASSWORD));
    login(&app, "erin@example.com", PASSWORD).await;
    let new = login_response(&app, json!({ "email": "erin@example.com", "password": NEW_PASSWORD })).await;
    expect_problem(new, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn a_weak_new_password_is_a_422_on_new_password_and_changes_nothing() {
    let app = spawn_app().await;
    register(&app, "finn@example.com", PASSWORD).await;
    let tokens = login(&app, "finn@example.com", PASSWORD).await;
    let other = login(&app, "finn@example.com", PASSWORD).await;

    for weak in ["password123", "short", "finn-Harbor-Quartz-12"] {
        let response = app
            .call(Method::POST, "/v1/me/password")
            .bearer_auth(&tokens.access)
            .json(&json!({ "current_password": PASSWORD, "new_password": weak }))
            .go()
            .await;
        expect_field_error(response, "/new_password", weak).await;
    }

    assert_eq!(app.me_status(&other.access).await, 200, "a refused change ends no session");
    login(&app, "finn@example.com", PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_needs_authentication() {
    let app = spawn_app().await;

    let response = app
        .call(Method::POST, "/v1/me/password")
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .go()
        .await;

    crate::support::expect_unauthorized(response).await;
    app.stop().await;
}

// ----- resetting a forgotten password -----

#[tokio::test]
async fn a_password_reset_sets_the_new_password_ends_every_session_and_mails_the_owner() {
    let app = spawn_app().await;
    register(&app, "gail@example.com", PASSWORD).await;
    let session = login(&app, "gail@example.com", PASSWORD).await;
    let browser = crate::support::login_cookie(&app, "gail@example.com", PASSWORD).await;
    assert_eq!(
        app.post_json("/v1/auth/password/forgot", &json!({ "email": "gail@example.com" })).await.status(),
        202
    );
    let token = wait_for_link(&app, "gail@example.com", "reset-password").await;

    let response = app
        .post_json("/v1/auth/password/reset", &json!({ "token": token, "new_password": NEW_PASSWORD }))
        .await;
    assert_eq!(response.status(), 204);

    assert_eq!(app.me_status(&session.access).await, 401, "every session ends, at once");
    assert_eq!(app.refresh_status(&session.refresh).await, 401);
    let cookie_me = app.call(Method::GET, "/v1/me").session_cookie(&browser).go().await;
    assert_eq!(cookie_me.status(), 401);
    wait_for_email(&app, "gail@example.com", "Your password was reset").await;
    login(&app, "gail@example.com", NEW_PASSWORD).await;
    let old = login_response(&app, json!({ "email": "gail@example.com", "password": PASSWORD })).await;
    expect_problem(old, 401, "invalid-credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn a_reset_link_works_once() {
    let app = spawn_app().await;
    register(&app, "hal@example.com", PASSWORD).await;
    app.post_json("/v1/auth/password/forgot", &json!({ "email": "hal@example.com" })).await;
    let token = wait_for_link(&app, "hal@example.com", "reset-password").await;
    let reset = |password: &str| {
        app.call(Method::POST, "/v1/auth/password/reset")
            .json(&json!({ "token": token.clone(), "new_password": password }))
            .go()
    };
    assert_eq!(reset(NEW_PASSWORD).await.status(), 204);

    let replay = "Replayed-Lantern-Cobalt-44";
    expect_problem(reset(replay).await, 400, "invalid-token").await;

    let response = login_response(&app, json!({ "email": "hal@example.com", "password": replay })).await;
    expect_problem(response, 401, "invalid-credentials").await;
    login(&app, "hal@example.com", NEW_PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn a_weak_password_in_a_reset_is_refused_and_the_link_still_works() {
    let app = spawn_app().await;
    register(&app, "ines@example.com", PASSWORD).await;
    app.post_json("/v1/auth/password/forgot", &json!({ "email": "ines@example.com" })).await;
    let token = wait_for_link(&app, "ines@example.com", "reset-password").await;

    let response = app
        .post_json("/v1/auth/password/reset", &json!({ "token": token, "new_password": "password123" }))
        .await;
    expect_field_error(response, "/new_password", "password123").await;

    let response = app
        .post_json("/v1/auth/password/reset", &json!({ "token": token, "new_password": NEW_PASSWORD }))
        .await;
    assert_eq!(response.status(), 204);
    login(&app, "ines@example.com", NEW_PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn a_made_up_reset_token_is_invalid() {
    let app = spawn_app().await;
    register(&app, "jo@example.com", PASSWORD).await;

    for token in ["A".repeat(43), String::new(), "../../etc/passwd".to_owned()] {
        let response = app
            .post_json("/v1/auth/password/reset", &json!({ "token": token, "new_password": NEW_PASSWORD }))
            .await;
        expect_problem(response, 400, "invalid-token").await;
    }
    login(&app, "jo@example.com", PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn a_link_token_works_only_for_its_own_purpose() {
    let app = spawn_app().await;
    signup(&app, "kim@example.com", PASSWORD).await;
    let verification = wait_for_link(&app, "kim@example.com", "verify-email").await;
    app.post_json("/v1/auth/password/forgot", &json!({ "email": "kim@example.com" })).await;
    let reset = wait_for_link(&app, "kim@example.com", "reset-password").await;

    let response = app
        .post_json("/v1/auth/password/reset", &json!({ "token": verification, "new_password": NEW_PASSWORD }))
        .await;
    expect_problem(response, 400, "invalid-token").await;
    let response = app.post_json("/v1/auth/verify-email", &json!({ "token": reset })).await;
    expect_problem(response, 400, "invalid-token").await;
    let response = app
        .post_json(
            "/v1/auth/setup",
            &json!({ "setup_token": reset, "email": "kim2@example.com", "password": PASSWORD }),
        )
        .await;
    expect_problem(response, 400, "invalid-token").await;

    // Both links still do their own job.
    assert_eq!(app.post_json("/v1/auth/verify-email", &json!({ "token": verification })).await.status(), 204);
    let response = app
        .post_json("/v1/auth/password/reset", &json!({ "token": reset, "new_password": NEW_PASSWORD }))
        .await;
    assert_eq!(response.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn changing_the_password_voids_an_outstanding_reset_link() {
    let app = spawn_app().await;
    register(&app, "lee@example.com", PASSWORD).await;
    app.post_json("/v1/auth/password/forgot", &json!({ "email": "lee@example.com" })).await;
    let stale = wait_for_link(&app, "lee@example.com", "reset-password").await;
    let tokens = login(&app, "lee@example.com", PASSWORD).await;
    let response = app
        .call(Method::POST, "/v1/me/password")
        .bearer_auth(&tokens.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .go()
        .await;
    assert_eq!(response.status(), 204);

    let response = app
        .post_json(
            "/v1/auth/password/reset",
            &json!({ "token": stale, "new_password": "Stale-Lantern-Cobalt-44" }),
        )
        .await;

    expect_problem(response, 400, "invalid-token").await;
    login(&app, "lee@example.com", NEW_PASSWORD).await;
    app.stop().await;
}

#[tokio::test]
async fn each_forgot_request_mails_a_fresh_link() {
    let app = spawn_app().await;
    register(&app, "max@example.com", PASSWORD).await;

    for _ in 0..2 {
        app.post_json("/v1/auth/password/forgot", &json!({ "email": "max@example.com" })).await;
    }

    let mails = wait_for_emails(&app, "max@example.com", "Reset your password", 2).await;
    assert_ne!(token_from(&mails[0], "reset-password"), token_from(&mails[1], "reset-password"));
    app.stop().await;
}

// ----- secrets stay out of the logs -----

#[tokio::test]
async fn no_password_token_or_link_reaches_the_logs() {
    let app = spawn_app().await;
    // Unique to this test, so other tests' log lines cannot confuse the search.
    let password = "Logcheck-Quartz-Harbor-6620";
    let new_password = "Logcheck-Meadow-Falcon-8831";
    signup(&app, "logs@example.com", password).await;
    let verification = wait_for_link(&app, "logs@example.com", "verify-email").await;
    app.post_json("/v1/auth/verify-email", &json!({ "token": verification })).await;
    let tokens = login(&app, "logs@example.com", password).await;
    let browser = crate::support::login_cookie(&app, "logs@example.com", password).await;
    let refreshed = crate::support::Tokens::from_response(app.refresh(&tokens.refresh).await).await;
    app.post_json("/v1/auth/password/forgot", &json!({ "email": "logs@example.com" })).await;
    let reset = wait_for_link(&app, "logs@example.com", "reset-password").await;
    app.post_json("/v1/auth/password/reset", &json!({ "token": reset, "new_password": new_password })).await;
    app.post_json("/v1/auth/login", &json!({ "email": "logs@example.com", "password": "Logcheck-wrong-1" }))
        .await;

    let logs = log_text();
    for (what, secret) in [
        ("password", password),
        ("new password", new_password),
        ("wrong password", "Logcheck-wrong-1"),
        ("verification token", verification.as_str()),
        ("reset token", reset.as_str()),
        ("refresh token", tokens.refresh.as_str()),
        ("rotated refresh token", refreshed.refresh.as_str()),
        ("access token", tokens.access.as_str()),
        ("session cookie", browser.cookie.as_str()),
        ("csrf token", browser.csrf.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} reached the logs");
    }
    app.stop().await;
}
