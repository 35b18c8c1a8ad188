//! Multi-factor login over HTTP (issue 10): TOTP authenticators whose codes come from independent
//! implementations (`oathtool` and Python's `pyotp`), recovery codes, passkeys made by webauthn-rs's
//! software authenticator, the refusals (wrong, replayed and out-of-window codes; spent, made-up and
//! closed challenges; the lockout; login CSRF), step-up before sensitive actions, the enrollment
//! policies by role and by organization, an administrator's reset, and the security events.
//!
//! No test sleeps, and the server's clock is the real one: codes are computed for the 30 s step the
//! test starts in (`S`) and the next (`S + 1`), the two the server accepts (one step of skew)
//! whichever of them it is in when a request lands. Confirming an authenticator spends `S`, so a test
//! has one more TOTP answer (`S + 1`) per authenticator; recovery codes answer the rest.
//!
//! A test that needs `oathtool` or `pyotp` skips when the tool is missing, unless
//! `PORTCULLIS_REQUIRE_OATHTOOL` / `PORTCULLIS_REQUIRE_PYOTP` is set (`.ci/run` and
//! `scripts/test-python` set them), in which case it fails.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use crate::support::{
    Canary, Go, PASSWORD, TestApp, Tokens, canary, expect_field_error, expect_problem, jwt_parts, log_text,
    login, login_response, register, set_session_cookie, setup_owner, spawn_app, spawn_with,
    spawn_with_setup_token, wait_for_email,
};

// ----- TOTP codes from other implementations -----

/// The RFC 6238 step.
const STEP: i64 = 30;

/// An interop vector (SHA-1, 6 digits; oathtool and pyotp agree): a tool that computes it is a working
/// RFC 6238 implementation, so a refusal in a test is the server's.
const VECTOR: (&str, i64, &str) = ("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 1_700_000_000, "921300");

/// A TOTP implementation that is not ours.
#[derive(Debug, Clone, Copy)]
enum Generator {
    /// `oathtool` from Debian's oath-toolkit.
    Oathtool,
    /// Python's `pyotp`, in `PORTCULLIS_TEST_PYTHON` (CI's venv) or `python3`.
    Pyotp,
}

/// The Python with `pyotp`.
fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Generator {
    const ALL: [Generator; 2] = [Generator::Oathtool, Generator::Pyotp];

    fn name(self) -> &'static str {
        match self {
            Generator::Oathtool => "oathtool",
            Generator::Pyotp => "pyotp",
        }
    }

    /// The variable that makes a missing tool a failure instead of a skip.
    fn require_var(self) -> &'static str {
        match self {
            Generator::Oathtool => "PORTCULLIS_REQUIRE_OATHTOOL",
            Generator::Pyotp => "PORTCULLIS_REQUIRE_PYOTP",
        }
    }

    /// The 6-digit SHA-1 code of `secret` (base 32) at unix time `at`, if the tool runs.
    fn try_code(self, secret: &str, at: i64) -> Option<String> {
        let output = match self {
            Generator::Oathtool => {
                Command::new("oathtool").args(["--totp", "-b", "-N", &format!("@{at}"), secret]).output()
            }
            Generator::Pyotp => Command::new(python())
                .args(["-c", "import sys, pyotp; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))"])
                .args([secret, &at.to_string()])
                .output(),
        }
        .ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn code(self, secret: &str, at: i64) -> String {
        let code =
            self.try_code(secret, at).unwrap_or_else(|| panic!("{} failed on {secret:?}", self.name()));
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{}: {code:?}", self.name());
        code
    }

    /// Whether the tool is installed and computes the interop vector.
    fn available(self) -> bool {
        self.try_code(VECTOR.0, VECTOR.1).as_deref() == Some(VECTOR.2)
    }
}

/// Fails when a run that requires `generator` lacks it; otherwise says the test is skipped.
fn skip_without(generator: Generator) {
    assert!(
        std::env::var(generator.require_var()).is_err(),
        "{} is set but {} is not available (apt-get install oathtool; eval \"$(scripts/test-python)\")",
        generator.require_var(),
        generator.name()
    );
    eprintln!("skipped: {} is not available", generator.name());
}

/// `generator` when it is installed (see [`skip_without`]).
fn tool(generator: Generator) -> Option<Generator> {
    if generator.available() {
        return Some(generator);
    }
    skip_without(generator);
    None
}

/// Whichever TOTP tool is installed, for the tests of the server's rules rather than of interop.
fn any_tool() -> Option<Generator> {
    if let Some(found) = Generator::ALL.into_iter().find(|g| g.available()) {
        return Some(found);
    }
    Generator::ALL.into_iter().for_each(skip_without);
    None
}

fn now_secs() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

/// The first second of the step `steps` steps after the one `t` is in.
fn step_time(t: i64, steps: i64) -> i64 {
    (t.div_euclid(STEP) + steps) * STEP
}

/// A 6-digit code none of `valid` is.
fn wrong_code(valid: &[String]) -> String {
    (0..10).map(|d| d.to_string().repeat(6)).find(|c| !valid.contains(c)).unwrap()
}

// ----- requests -----

fn claims(tokens: &Tokens) -> Value {
    jwt_parts(&tokens.access).1
}

fn amr(tokens: &Tokens) -> Vec<String> {
    let claims = claims(tokens);
    let values = claims["amr"].as_array().unwrap_or_else(|| panic!("no amr claim: {claims}"));
    values.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

pub(crate) async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// `GET /v1/me/mfa`.
async fn factors(app: &TestApp, access: &str) -> Value {
    json_of(app.call(Method::GET, "/v1/me/mfa").bearer_auth(access).go().await, 200).await
}

/// `POST /v1/me/mfa/totp`: the new authenticator's id and secret.
pub(crate) async fn start_totp(app: &TestApp, access: &str, name: &str) -> (String, Value) {
    let response = app
        .call(Method::POST, "/v1/me/mfa/totp")
        .bearer_auth(access)
        .json(&json!({ "name": name }))
        .go()
        .await;
    let body = json_of(response, 201).await;
    canary(Canary::TotpSecret, body["secret"].as_str().unwrap_or_default());
    (body["id"].as_str().unwrap().to_owned(), body)
}

/// `POST /v1/me/mfa/totp/{id}/confirm`.
async fn confirm_totp(app: &TestApp, access: &str, id: &str, code: &str) -> reqwest::Response {
    app.call(Method::POST, &format!("/v1/me/mfa/totp/{id}/confirm"))
        .bearer_auth(access)
        .json(&json!({ "code": code }))
        .go()
        .await
}

/// Ten distinct recovery codes from a confirmation or regeneration answer.
pub(crate) fn recovery_codes(body: &Value) -> Vec<String> {
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no recovery codes: {body}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{body}");
    let distinct: std::collections::HashSet<&String> = codes.iter().collect();
    assert_eq!(distinct.len(), 10, "{body}");
    for code in &codes {
        canary(Canary::RecoveryCode, code);
        canary(Canary::RecoveryCode, &code.replace('-', ""));
    }
    codes
}

/// `POST path` with a JSON body and a bearer token.
async fn post_as(app: &TestApp, access: &str, path: &str, body: &Value) -> reqwest::Response {
    app.call(Method::POST, path).bearer_auth(access).json(body).go().await
}

/// `POST /v1/me/api-keys`: a sensitive action anyone may take.
async fn create_api_key(app: &TestApp, access: &str) -> reqwest::Response {
    let body = json!({ "name": "ci", "scopes": ["profile:read"], "expires_in_days": 7 });
    post_as(app, access, "/v1/me/api-keys", &body).await
}

/// A login whose password is right, for an account with a second factor: its challenge, checked to
/// open no session and carry no credential.
async fn challenge(app: &TestApp, email: &str) -> (String, Vec<String>) {
    challenge_of(login_response(app, json!({ "email": email, "password": PASSWORD })).await).await
}

async fn challenge_of(response: reqwest::Response) -> (String, Vec<String>) {
    assert!(set_session_cookie(&response).is_none(), "a challenged login sets no cookie");
    let body = json_of(response, 200).await;
    assert_eq!(body["status"], "mfa_required", "{body}");
    assert_eq!(body["expires_in"], 300, "{body}");
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none(), "{body}");
    assert!(body.get("csrf_token").is_none(), "{body}");
    let token = body["challenge_token"].as_str().unwrap().to_owned();
    canary(Canary::ChallengeToken, &token);
    assert_eq!(token.len(), 43, "{body}");
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{token}");
    let methods =
        body["methods"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_owned()).collect();
    (token, methods)
}

/// `POST /v1/auth/mfa/verify` with the challenge and `factor` (`method`, `code` / `credential`).
async fn verify(app: &TestApp, challenge: &str, factor: Value) -> reqwest::Response {
    let mut body = factor;
    body["challenge_token"] = json!(challenge);
    app.post_json("/v1/auth/mfa/verify", &body).await
}

fn totp(code: &str) -> Value {
    json!({ "method": "totp", "code": code })
}

fn recovery(code: &str) -> Value {
    json!({ "method": "recovery_code", "code": code })
}

/// A login finished with `factor`, which must succeed.
async fn login_with(app: &TestApp, email: &str, factor: Value) -> Tokens {
    let (token, _) = challenge(app, email).await;
    Tokens::from_response(verify(app, &token, factor).await).await
}

/// `POST /v1/auth/login` from a client address (behind a trusted proxy).
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    app.call(Method::POST, "/v1/auth/login")
        .header("x-forwarded-for", ip)
        .json(&json!({ "email": email, "password": password }))
        .go()
        .await
}

/// An account with a confirmed TOTP authenticator, as its owner left it.
struct Enrolled {
    email: String,
    /// The session that enrolled it: it proved a code, so it counts as two factors now.
    session: Tokens,
    /// A session opened with the password before the authenticator existed.
    before: Tokens,
    device: String,
    secret: String,
    recovery_codes: Vec<String>,
    /// When the test started: the code of its step confirmed the authenticator.
    start: i64,
    tool: Generator,
}

impl Enrolled {
    /// The code of step `S + steps`.
    fn code(&self, steps: i64) -> String {
        self.tool.code(&self.secret, step_time(self.start, steps))
    }

    /// The codes the server could accept at any moment of the test, for picking a wrong one.
    fn window(&self) -> Vec<String> {
        (-1..=2).map(|s| self.code(s)).collect()
    }
}

/// Registers `email`, opens a password session, and enrolls and confirms an authenticator in another.
async fn enrolled(app: &TestApp, email: &str, tool: Generator) -> Enrolled {
    register(app, email, PASSWORD).await;
    let before = login(app, email, PASSWORD).await;
    let session = login(app, email, PASSWORD).await;
    let start = now_secs();
    let (device, body) = start_totp(app, &session.access, "phone").await;
    let secret = body["secret"].as_str().unwrap().to_owned();
    let code = tool.code(&secret, step_time(start, 0));
    let confirmed = json_of(confirm_totp(app, &session.access, &device, &code).await, 200).await;
    let recovery_codes = recovery_codes(&confirmed);
    Enrolled { email: email.to_owned(), session, before, device, secret, recovery_codes, start, tool }
}

/// A server with a first owner, and the owner's session: (app, owner's tokens).
pub(crate) async fn with_owner(adjust: impl FnOnce(&mut portcullis::config::Config)) -> (TestApp, Tokens) {
    let (app, setup_token) = spawn_with_setup_token(adjust).await;
    setup_owner(&app, &setup_token, "owner@example.com", PASSWORD).await;
    let owner = login(&app, "owner@example.com", PASSWORD).await;
    (app, owner)
}

pub(crate) async fn account_id(app: &TestApp, access: &str) -> String {
    json_of(app.me(access).await, 200).await["id"].as_str().unwrap().to_owned()
}

// ----- TOTP with independent implementations -----

#[tokio::test]
async fn an_authenticator_enrolled_over_http_logs_in_with_codes_from_oathtool() {
    let Some(oathtool) = tool(Generator::Oathtool) else { return };
    let app = spawn_app().await;
    register(&app, "otto@example.com", PASSWORD).await;
    let tokens = login(&app, "otto@example.com", PASSWORD).await;
    let before = factors(&app, &tokens.access).await;
    assert_eq!(before, json!({ "devices": [], "recovery_codes_left": 0, "required": false }));

    let start = now_secs();
    let (id, enrollment) = start_totp(&app, &tokens.access, "Pixel").await;
    let secret = enrollment["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32, "160 bits in base 32: {secret}");
    let uri = Url::parse(enrollment["otpauth_uri"].as_str().unwrap()).unwrap();
    assert_eq!((uri.scheme(), uri.host_str()), ("otpauth", Some("totp")), "{uri}");
    let query: std::collections::HashMap<String, String> = uri.query_pairs().into_owned().collect();
    assert_eq!(query.get("secret").map(String::as_str), Some(secret), "{uri}");
    assert_eq!(query.get("issuer").map(String::as_str), Some("Portcullis"), "{uri}");
    assert!(uri.path().contains("otto%40example.com") || uri.path().contains("otto@example.com"), "{uri}");
    assert!(enrollment["qr_svg"].as_str().unwrap().contains("<svg"), "the QR code is an SVG document");
    let listed = factors(&app, &tokens.access).await;
    assert_eq!(listed["devices"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["devices"][0]["method"], "totp", "{listed}");
    assert_eq!(listed["devices"][0]["name"], "Pixel", "{listed}");
    assert_eq!(listed["devices"][0]["confirmed"], false, "{listed}");
    let mut fields: Vec<&String> = listed["devices"][0].as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["confirmed", "created_at", "id", "last_used_at", "method", "name"],
        "no secret listed"
    );
    // An authenticator nobody confirmed does not change the login.
    Tokens::from_response(
        login_response(&app, json!({ "email": "otto@example.com", "password": PASSWORD })).await,
    )
    .await;

    let wrong = wrong_code(&(-1..=2).map(|s| oathtool.code(secret, step_time(start, s))).collect::<Vec<_>>());
    expect_field_error(confirm_totp(&app, &tokens.access, &id, &wrong).await, "/code", &wrong).await;
    let code = oathtool.code(secret, step_time(start, 0));
    let confirmed = json_of(confirm_totp(&app, &tokens.access, &id, &code).await, 200).await;
    let codes = recovery_codes(&confirmed);
    let listed = factors(&app, &tokens.access).await;
    assert_eq!(listed["devices"][0]["confirmed"], true, "{listed}");
    assert_eq!(listed["recovery_codes_left"], 10, "{listed}");

    let sessions_before = json_of(
        app.call(Method::GET, "/v1/me/sessions").bearer_auth(&tokens.access).go().await,
        200,
    )
    .await["sessions"]
        .as_array()
        .unwrap()
        .len();
    let (challenge, methods) = challenge(&app, "otto@example.com").await;
    assert_eq!(methods, ["totp", "recovery_code"]);
    let sessions_after = json_of(
        app.call(Method::GET, "/v1/me/sessions").bearer_auth(&tokens.access).go().await,
        200,
    )
    .await["sessions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(sessions_before, sessions_after, "a challenged login opens no session");
    let next = oathtool.code(secret, step_time(start, 1));
    let second = Tokens::from_response(verify(&app, &challenge, totp(&next)).await).await;

    assert_eq!(amr(&second), ["otp", "pwd", "mfa"]);
    let auth_time = claims(&second)["auth_time"].as_i64().unwrap();
    assert!((start - 5..=now_secs() + 5).contains(&auth_time), "auth_time {auth_time}, start {start}");
    assert!(claims(&second).get("mfa_enrollment_required").is_none(), "{}", claims(&second));
    assert_eq!(app.me_status(&second.access).await, 200);
    let logs = log_text();
    for (what, secret) in
        [("seed", secret), ("challenge", challenge.as_str()), ("recovery code", codes[0].as_str())]
    {
        assert!(!logs.contains(secret), "the {what} reached the logs");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_authenticator_set_up_from_its_otpauth_uri_by_pyotp_logs_in_with_pyotp_codes() {
    let Some(pyotp) = tool(Generator::Pyotp) else { return };
    let app = spawn_app().await;
    register(&app, "pia@example.com", PASSWORD).await;
    let tokens = login(&app, "pia@example.com", PASSWORD).await;
    let start = now_secs();
    let (id, enrollment) = start_totp(&app, &tokens.access, "Authy").await;
    // The app reads the QR code's URI, not the secret: pyotp parses it as an authenticator would.
    let from_uri = Command::new(python())
        .args(["-c", "import sys, pyotp; print(pyotp.parse_uri(sys.argv[1]).at(int(sys.argv[2])))"])
        .args([enrollment["otpauth_uri"].as_str().unwrap(), &step_time(start, 0).to_string()])
        .output()
        .unwrap();
    assert!(from_uri.status.success(), "pyotp.parse_uri: {}", String::from_utf8_lossy(&from_uri.stderr));
    let code = String::from_utf8_lossy(&from_uri.stdout).trim().to_owned();
    let secret = enrollment["secret"].as_str().unwrap();
    assert_eq!(code, pyotp.code(secret, step_time(start, 0)), "the URI and the secret are one key");

    json_of(confirm_totp(&app, &tokens.access, &id, &code).await, 200).await;
    let logout = app.call(Method::POST, "/v1/auth/logout").bearer_auth(&tokens.access).go().await;
    assert_eq!(logout.status(), 204);
    let (challenge, _) = challenge(&app, "pia@example.com").await;
    let next = pyotp.code(secret, step_time(start, 1));
    let second = Tokens::from_response(verify(&app, &challenge, totp(&next)).await).await;

    assert_eq!(amr(&second), ["otp", "pwd", "mfa"]);
    assert_eq!(app.me_status(&second.access).await, 200);
    app.stop().await;
}

// ----- refusals -----

#[tokio::test]
async fn wrong_codes_codes_outside_the_skew_window_and_a_replayed_code_are_refused() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "rex@example.com", generator).await;
    let (first, _) = challenge(&app, &user.email).await;

    let wrong = wrong_code(&user.window());
    let refused =
        expect_problem(verify(&app, &first, totp(&wrong)).await, 401, "invalid-second-factor").await;
    assert!(!refused.to_string().contains(&wrong), "{refused}");
    // One step of skew: three steps ahead or behind is outside it, whichever step the server is in.
    for steps in [3, -3] {
        let far = user.code(steps);
        expect_problem(verify(&app, &first, totp(&far)).await, 401, "invalid-second-factor").await;
    }
    expect_problem(verify(&app, &first, totp("12345")).await, 401, "invalid-second-factor").await;
    let code = user.code(1);
    let tokens = Tokens::from_response(verify(&app, &first, totp(&code)).await).await;
    assert_eq!(amr(&tokens), ["otp", "pwd", "mfa"]);

    // The same code on a new challenge, within its window: a replay (RFC 6238 section 5.2).
    let (second, _) = challenge(&app, &user.email).await;
    expect_problem(verify(&app, &second, totp(&code)).await, 401, "invalid-second-factor").await;
    app.stop().await;
}

#[tokio::test]
async fn a_challenge_answers_once_and_a_made_up_or_incomplete_answer_is_refused() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "ivy@example.com", generator).await;
    let (challenge_token, _) = challenge(&app, &user.email).await;
    Tokens::from_response(verify(&app, &challenge_token, recovery(&user.recovery_codes[0])).await).await;

    // Spent: refused before the factor is looked at, so the factor is not spent either.
    let reused = verify(&app, &challenge_token, recovery(&user.recovery_codes[1])).await;
    expect_problem(reused, 400, "invalid-token").await;
    let made_up = "A".repeat(43);
    expect_problem(verify(&app, &made_up, totp(&user.code(1))).await, 400, "invalid-token").await;
    expect_problem(verify(&app, "short", totp(&user.code(1))).await, 400, "invalid-token").await;
    let (open, _) = challenge(&app, &user.email).await;
    expect_field_error(verify(&app, &open, json!({ "method": "totp" })).await, "/code", PASSWORD).await;
    let no_credential = verify(&app, &open, json!({ "method": "passkey" })).await;
    expect_field_error(no_credential, "/credential", PASSWORD).await;
    let tokens = Tokens::from_response(verify(&app, &open, recovery(&user.recovery_codes[1])).await).await;
    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn five_wrong_answers_close_the_challenge_and_the_right_answers_are_not_spent_on_it() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "fay@example.com", generator).await;
    let (closing, _) = challenge(&app, &user.email).await;
    let wrong = wrong_code(&user.window());

    for _ in 0..5 {
        expect_problem(verify(&app, &closing, totp(&wrong)).await, 401, "invalid-second-factor").await;
    }
    let code = user.code(1);
    expect_problem(verify(&app, &closing, totp(&code)).await, 400, "invalid-token").await;
    let spare = &user.recovery_codes[0];
    expect_problem(verify(&app, &closing, recovery(spare)).await, 400, "invalid-token").await;

    // A fresh challenge takes both: the closed one spent neither.
    login_with(&app, &user.email, totp(&code)).await;
    login_with(&app, &user.email, recovery(spare)).await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_second_factors_lock_the_login_except_from_an_address_the_account_used_before() {
    let Some(generator) = any_tool() else { return };
    const HOME: &str = "198.51.100.7";
    const AWAY: &str = "203.0.113.9";
    let app = spawn_with(|c| {
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.lockout.max_failures = 3;
        c.lockout.lock_minutes = 15;
    })
    .await;
    register(&app, "lou@example.com", PASSWORD).await;
    let home = Tokens::from_response(login_from(&app, HOME, "lou@example.com", PASSWORD).await).await;
    let start = now_secs();
    let (device, body) = start_totp(&app, &home.access, "phone").await;
    let secret = body["secret"].as_str().unwrap().to_owned();
    let confirmed =
        confirm_totp(&app, &home.access, &device, &generator.code(&secret, step_time(start, 0))).await;
    assert_eq!(confirmed.status(), 200);
    let window: Vec<String> = (-1..=2).map(|s| generator.code(&secret, step_time(start, s))).collect();
    let verify_from = |ip: &'static str, challenge: String, code: String| {
        app.call(Method::POST, "/v1/auth/mfa/verify")
            .header("x-forwarded-for", ip)
            .json(&json!({ "challenge_token": challenge, "method": "totp", "code": code }))
            .go()
    };

    let (away, _) = challenge_of(login_from(&app, AWAY, "lou@example.com", PASSWORD).await).await;
    for _ in 0..3 {
        let response = verify_from(AWAY, away.clone(), wrong_code(&window)).await;
        expect_problem(response, 401, "invalid-second-factor").await;
    }
    let next = generator.code(&secret, step_time(start, 1));
    expect_problem(verify_from(AWAY, away.clone(), next.clone()).await, 429, "login-locked").await;
    expect_problem(login_from(&app, AWAY, "lou@example.com", PASSWORD).await, 429, "login-locked").await;

    // The owner, where they logged in before, is not kept out by the guesser.
    let (at_home, _) = challenge_of(login_from(&app, HOME, "lou@example.com", PASSWORD).await).await;
    let tokens = Tokens::from_response(verify_from(HOME, at_home, next).await).await;
    assert_eq!(amr(&tokens), ["otp", "pwd", "mfa"]);
    app.stop().await;
}

#[tokio::test]
async fn a_cookie_login_finishes_with_its_second_factor_only_from_the_servers_own_pages() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "cob@example.com", generator).await;
    let body = json!({ "email": user.email, "password": PASSWORD, "mode": "cookie" });
    let (challenge_token, _) = challenge_of(login_response(&app, body).await).await;
    let answer = json!({ "challenge_token": challenge_token, "method": "totp", "code": user.code(1) });

    // Login CSRF: a foreign page finishing the login would plant its session in the victim's browser.
    let forged = app.call(Method::POST, "/v1/auth/mfa/verify").header("origin", "https://evil.example");
    expect_problem(forged.json(&answer).go().await, 403, "csrf-rejected").await;
    let own =
        app.call(Method::POST, "/v1/auth/mfa/verify").header("origin", app.origin()).json(&answer).go().await;

    assert_eq!(own.status(), 200);
    let cookie = set_session_cookie(&own).expect("a finished cookie login sets the session cookie");
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let body: Value = own.json().await.unwrap();
    assert!(body["csrf_token"].is_string(), "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    let me = app
        .call(Method::GET, "/v1/me")
        .header(reqwest::header::COOKIE, format!("{}={value}", crate::support::SESSION_COOKIE))
        .go()
        .await;
    assert_eq!(me.status(), 200);
    app.stop().await;
}

// ----- recovery codes -----

#[tokio::test]
async fn a_recovery_code_logs_in_once_and_mails_the_owner() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "rue@example.com", generator).await;
    // As a person types it from paper: lower case, without the dashes.
    let typed = user.recovery_codes[3].replace('-', "").to_ascii_lowercase();

    let tokens = login_with(&app, &user.email, recovery(&typed)).await;

    assert!(amr(&tokens).contains(&"mfa".to_owned()), "{:?}", amr(&tokens));
    let mail = wait_for_email(&app, &user.email, "A recovery code was used").await;
    assert!(!mail.contains(&user.recovery_codes[3]), "the mail carries the code");
    assert_eq!(factors(&app, &tokens.access).await["recovery_codes_left"], 9);
    let (again, _) = challenge(&app, &user.email).await;
    let reused = verify(&app, &again, recovery(&user.recovery_codes[3])).await;
    expect_problem(reused, 401, "invalid-second-factor").await;
    app.stop().await;
}

#[tokio::test]
async fn regenerated_recovery_codes_void_the_old_set() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "reg@example.com", generator).await;

    let response = post_as(&app, &user.session.access, "/v1/me/mfa/recovery-codes", &json!({})).await;
    let fresh = recovery_codes(&json_of(response, 200).await);

    assert!(fresh.iter().all(|c| !user.recovery_codes.contains(c)));
    let (challenge_token, _) = challenge(&app, &user.email).await;
    let old = verify(&app, &challenge_token, recovery(&user.recovery_codes[0])).await;
    expect_problem(old, 401, "invalid-second-factor").await;
    Tokens::from_response(verify(&app, &challenge_token, recovery(&fresh[0])).await).await;
    app.stop().await;
}

// ----- passkeys -----

/// The public URL passkeys bind to (a domain: WebAuthn has none for an IP address).
pub(crate) const PUBLIC_URL: &str = "https://id.example.test";

pub(crate) async fn spawn_for_passkeys() -> TestApp {
    spawn_with(|c| c.http.public_url = Some(PUBLIC_URL.into())).await
}

/// A software authenticator that reports user verification (the server requires it).
pub(crate) fn authenticator() -> SoftPasskey {
    SoftPasskey::new(true)
}

/// Registers a passkey of `key` on the session; the registration answer (id, recovery codes).
pub(crate) async fn register_passkey(
    app: &TestApp,
    access: &str,
    key: &mut SoftPasskey,
    name: &str,
) -> Value {
    let response = app.call(Method::POST, "/v1/me/mfa/passkeys/options").bearer_auth(access).go().await;
    let started = json_of(response, 200).await;
    let options: CreationChallengeResponse = serde_json::from_value(started["options"].clone()).unwrap();
    let credential = key.do_registration(Url::parse(PUBLIC_URL).unwrap(), options).unwrap();
    let body =
        json!({ "challenge_token": started["challenge_token"], "name": name, "credential": credential });
    json_of(post_as(app, access, "/v1/me/mfa/passkeys", &body).await, 201).await
}

/// `key`'s assertion for a login's challenge, made by a browser at `origin`.
async fn passkey_answer(app: &TestApp, challenge: &str, key: &mut SoftPasskey, origin: &str) -> Value {
    let response =
        app.post_json("/v1/auth/mfa/passkey-options", &json!({ "challenge_token": challenge })).await;
    let options: RequestChallengeResponse = serde_json::from_value(json_of(response, 200).await).unwrap();
    let credential = key.do_authentication(Url::parse(origin).unwrap(), options).unwrap();
    json!({ "method": "passkey", "credential": credential })
}

#[tokio::test]
async fn a_passkey_from_a_software_authenticator_is_a_second_factor_with_hwk_in_the_tokens() {
    let app = spawn_for_passkeys().await;
    register(&app, "pat@example.com", PASSWORD).await;
    let tokens = login(&app, "pat@example.com", PASSWORD).await;
    let mut key = authenticator();

    let registered = register_passkey(&app, &tokens.access, &mut key, "YubiKey").await;

    assert_eq!(recovery_codes(&registered).len(), 10, "the first factor comes with recovery codes");
    let listed = factors(&app, &tokens.access).await;
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1, "{listed}");
    let device = &listed["devices"][0];
    assert_eq!(
        (device["id"].clone(), device["method"].clone()),
        (registered["id"].clone(), json!("passkey"))
    );
    assert_eq!((device["name"].clone(), device["confirmed"].clone()), (json!("YubiKey"), json!(true)));
    assert!(device["last_used_at"].is_null(), "{device}");
    let (challenge_token, methods) = challenge(&app, "pat@example.com").await;
    assert_eq!(methods, ["passkey", "recovery_code"]);
    let answer = passkey_answer(&app, &challenge_token, &mut key, PUBLIC_URL).await;
    let second = Tokens::from_response(verify(&app, &challenge_token, answer).await).await;
    assert_eq!(amr(&second), ["hwk", "pwd", "mfa"]);
    assert!(factors(&app, &second.access).await["devices"][0]["last_used_at"].is_string());
    // Its counter moved on; the next login with it works too.
    let (next, _) = challenge(&app, "pat@example.com").await;
    let answer = passkey_answer(&app, &next, &mut key, PUBLIC_URL).await;
    Tokens::from_response(verify(&app, &next, answer).await).await;
    app.stop().await;
}

#[tokio::test]
async fn a_passkey_assertion_made_for_another_origin_or_another_challenge_is_refused() {
    let app = spawn_for_passkeys().await;
    register(&app, "phi@example.com", PASSWORD).await;
    let tokens = login(&app, "phi@example.com", PASSWORD).await;
    let mut key = authenticator();
    register_passkey(&app, &tokens.access, &mut key, "key").await;
    let (first, _) = challenge(&app, "phi@example.com").await;

    // A look-alike page under the relying party's domain: the authenticator signs for it, the
    // server must not take it (WebAuthn section 7.2, step 9).
    let phished = passkey_answer(&app, &first, &mut key, "https://login.id.example.test").await;
    expect_problem(verify(&app, &first, phished).await, 401, "invalid-second-factor").await;
    // An assertion for one challenge does not answer another.
    let (second, _) = challenge(&app, "phi@example.com").await;
    let for_second = passkey_answer(&app, &second, &mut key, PUBLIC_URL).await;
    passkey_answer(&app, &first, &mut key, PUBLIC_URL).await;
    expect_problem(verify(&app, &first, for_second).await, 401, "invalid-second-factor").await;
    let garbage = json!({ "method": "passkey", "credential": { "id": "nope" } });
    expect_problem(verify(&app, &first, garbage).await, 401, "invalid-second-factor").await;

    let answer = passkey_answer(&app, &first, &mut key, PUBLIC_URL).await;
    Tokens::from_response(verify(&app, &first, answer).await).await;
    app.stop().await;
}

#[tokio::test]
async fn a_passkey_alone_reauthenticates_a_session_and_can_then_be_removed() {
    let app = spawn_for_passkeys().await;
    register(&app, "pen@example.com", PASSWORD).await;
    let before = login(&app, "pen@example.com", PASSWORD).await;
    let enrolling = login(&app, "pen@example.com", PASSWORD).await;
    let mut key = authenticator();
    let id =
        register_passkey(&app, &enrolling.access, &mut key, "key").await["id"].as_str().unwrap().to_owned();
    expect_problem(create_api_key(&app, &before.access).await, 401, "reauthentication-required").await;

    let response = app
        .call(Method::POST, "/v1/auth/reauthenticate/passkey-options")
        .bearer_auth(&before.access)
        .go()
        .await;
    let started = json_of(response, 200).await;
    let options: RequestChallengeResponse = serde_json::from_value(started["options"].clone()).unwrap();
    let credential = key.do_authentication(Url::parse(PUBLIC_URL).unwrap(), options).unwrap();
    let body = json!({
        "method": "passkey",
        "credential": credential,
        "passkey_challenge_token": started["challenge_token"],
    });
    let reauthenticated = post_as(&app, &before.access, "/v1/auth/reauthenticate", &body).await;

    assert_eq!(reauthenticated.status(), 204, "{}", reauthenticated.text().await.unwrap());
    assert_eq!(create_api_key(&app, &before.access).await.status(), 201);
    let removed =
        app.call(Method::DELETE, &format!("/v1/me/mfa/passkeys/{id}")).bearer_auth(&before.access).go().await;
    assert_eq!(removed.status(), 204);
    assert_eq!(factors(&app, &before.access).await["devices"], json!([]));
    assert_eq!(factors(&app, &before.access).await["recovery_codes_left"], 0);
    let tokens = login(&app, "pen@example.com", PASSWORD).await;
    assert_eq!(amr(&tokens), ["pwd"]);
    app.stop().await;
}

#[tokio::test]
async fn without_a_domain_in_the_public_url_passkeys_are_not_implemented() {
    let app = spawn_app().await;
    register(&app, "ipa@example.com", PASSWORD).await;
    let tokens = login(&app, "ipa@example.com", PASSWORD).await;

    let response =
        app.call(Method::POST, "/v1/me/mfa/passkeys/options").bearer_auth(&tokens.access).go().await;

    expect_problem(response, 501, "not-implemented").await;
    app.stop().await;
}

// ----- step-up -----

/// Asserts the step-up answer: 401 `reauthentication-required` with the RFC 9470 challenge.
pub(crate) async fn expect_reauthentication(response: reqwest::Response) {
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = expect_problem(response, 401, "reauthentication-required").await;
    assert_eq!(body["max_age"], 600, "{body}");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(r#"error="insufficient_user_authentication""#), "{challenge}");
    assert!(challenge.contains("max_age=600"), "{challenge}");
}

#[tokio::test]
async fn a_session_without_the_accounts_second_factor_reauthenticates_with_it_before_sensitive_actions() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "sue@example.com", generator).await;
    assert_eq!(
        create_api_key(&app, &user.session.access).await.status(),
        201,
        "the enrolling session proved it"
    );
    let stale = &user.before.access;

    expect_reauthentication(create_api_key(&app, stale).await).await;
    expect_reauthentication(post_as(&app, stale, "/v1/me/mfa/recovery-codes", &json!({})).await).await;
    expect_reauthentication(post_as(&app, stale, "/v1/me/mfa/totp", &json!({ "name": "tablet" })).await)
        .await;
    let change = json!({ "current_password": PASSWORD, "new_password": crate::support::NEW_PASSWORD });
    expect_reauthentication(post_as(&app, stale, "/v1/me/password", &change).await).await;
    assert_eq!(app.me_status(stale).await, 200, "reading is not sensitive");

    let reauthenticate = async |body: Value| post_as(&app, stale, "/v1/auth/reauthenticate", &body).await;
    let wrong_password = reauthenticate(json!({ "password": "not the password at all" })).await;
    expect_problem(wrong_password, 401, "invalid-credentials").await;
    expect_field_error(reauthenticate(json!({ "password": PASSWORD })).await, "/method", PASSWORD).await;
    let wrong = wrong_code(&user.window());
    let refused = reauthenticate(json!({ "password": PASSWORD, "method": "totp", "code": wrong })).await;
    expect_problem(refused, 401, "invalid-second-factor").await;
    let right = reauthenticate(json!({ "password": PASSWORD, "method": "totp", "code": user.code(1) })).await;

    assert_eq!(right.status(), 204, "{}", right.text().await.unwrap());
    assert_eq!(create_api_key(&app, stale).await.status(), 201);
    let refreshed = Tokens::from_response(app.refresh(&user.before.refresh).await).await;
    assert_eq!(amr(&refreshed), ["otp", "pwd", "mfa"]);
    app.stop().await;
}

#[tokio::test]
async fn removing_an_authenticator_needs_a_proven_second_factor_and_returns_the_account_to_passwords() {
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    let user = enrolled(&app, "rem@example.com", generator).await;
    let path = format!("/v1/me/mfa/totp/{}", user.device);

    let by_stale = app.call(Method::DELETE, &path).bearer_auth(&user.before.access).go().await;
    expect_reauthentication(by_stale).await;
    let removed = app.call(Method::DELETE, &path).bearer_auth(&user.session.access).go().await;

    assert_eq!(removed.status(), 204);
    wait_for_email(&app, &user.email, "A sign-in method was removed").await;
    let left = factors(&app, &user.session.access).await;
    assert_eq!(
        (left["devices"].clone(), left["recovery_codes_left"].clone()),
        (json!([]), json!(0)),
        "{left}"
    );
    let tokens = login(&app, &user.email, PASSWORD).await;
    assert_eq!(amr(&tokens), ["pwd"]);
    app.stop().await;
}

// ----- policies -----

#[tokio::test]
async fn an_admin_under_the_role_policy_may_only_enroll_until_a_refresh_after_enrolling() {
    let Some(generator) = any_tool() else { return };
    let (app, owner) = with_owner(|c| c.mfa.required_roles = vec!["admin".into()]).await;
    assert!(claims(&owner).get("mfa_enrollment_required").is_none(), "the owner is not under the policy");
    register(&app, "ada@example.com", PASSWORD).await;
    let as_member = login(&app, "ada@example.com", PASSWORD).await;
    let id = account_id(&app, &as_member.access).await;
    let promoted = app
        .call(Method::PUT, &format!("/v1/admin/users/{id}/role"))
        .bearer_auth(&owner.access)
        .json(&json!({ "role": "admin" }))
        .go()
        .await;
    assert_eq!(promoted.status(), 200);

    let admin = login(&app, "ada@example.com", PASSWORD).await;

    assert_eq!(claims(&admin)["mfa_enrollment_required"], true, "{}", claims(&admin));
    assert_eq!(amr(&admin), ["pwd"]);
    let users = app.call(Method::GET, "/v1/admin/users").bearer_auth(&admin.access).go().await;
    expect_problem(users, 403, "mfa-enrollment-required").await;
    expect_problem(create_api_key(&app, &admin.access).await, 403, "mfa-enrollment-required").await;
    assert_eq!(app.me_status(&admin.access).await, 200);
    assert_eq!(factors(&app, &admin.access).await["required"], true);
    let start = now_secs();
    let (device, body) = start_totp(&app, &admin.access, "phone").await;
    let code = generator.code(body["secret"].as_str().unwrap(), step_time(start, 0));
    recovery_codes(&json_of(confirm_totp(&app, &admin.access, &device, &code).await, 200).await);
    let refreshed = Tokens::from_response(app.refresh(&admin.refresh).await).await;
    assert!(claims(&refreshed).get("mfa_enrollment_required").is_none(), "{}", claims(&refreshed));
    assert_eq!(amr(&refreshed), ["otp", "pwd", "mfa"]);
    let users = app.call(Method::GET, "/v1/admin/users").bearer_auth(&refreshed.access).go().await;
    assert_eq!(users.status(), 200);
    challenge(&app, "ada@example.com").await;
    app.stop().await;
}

#[tokio::test]
async fn an_organizations_mfa_policy_applies_to_its_members_only() {
    let (app, owner) = with_owner(|_| {}).await;
    let body = json!({ "slug": "acme", "name": "Acme" });
    let org = json_of(post_as(&app, &owner.access, "/v1/admin/organizations", &body).await, 201).await;
    let policy = format!("/v1/admin/organizations/{}/mfa-policy", org["id"].as_str().unwrap());
    let read = app.call(Method::GET, &policy).bearer_auth(&owner.access).go().await;
    assert_eq!(json_of(read, 200).await, json!({ "required": false }));
    register(&app, "bob@example.com", PASSWORD).await;
    register(&app, "cat@example.com", PASSWORD).await;
    let bob = account_id(&app, &login(&app, "bob@example.com", PASSWORD).await.access).await;
    let member = app
        .call(Method::PUT, &format!("/v1/admin/organizations/{}/members/{bob}", org["id"].as_str().unwrap()))
        .bearer_auth(&owner.access)
        .json(&json!({ "role": "member" }))
        .go()
        .await;
    assert_eq!(member.status(), 200);

    let set = |access: String, required: bool| {
        app.call(Method::PUT, &policy).bearer_auth(access).json(&json!({ "required": required })).go()
    };
    assert_eq!(json_of(set(owner.access.clone(), true).await, 200).await, json!({ "required": true }));

    let read = app.call(Method::GET, &policy).bearer_auth(&owner.access).go().await;
    assert_eq!(json_of(read, 200).await, json!({ "required": true }));
    let in_org = login(&app, "bob@example.com", PASSWORD).await;
    assert_eq!(claims(&in_org)["mfa_enrollment_required"], true, "{}", claims(&in_org));
    expect_problem(create_api_key(&app, &in_org.access).await, 403, "mfa-enrollment-required").await;
    assert_eq!(factors(&app, &in_org.access).await["required"], true);
    let outside = login(&app, "cat@example.com", PASSWORD).await;
    assert!(claims(&outside).get("mfa_enrollment_required").is_none(), "{}", claims(&outside));
    // Someone outside the organization cannot tell it from a missing one.
    expect_problem(set(outside.access.clone(), false).await, 404, "not-found").await;
    assert_eq!(set(owner.access.clone(), false).await.status(), 200);
    let relieved = login(&app, "bob@example.com", PASSWORD).await;
    assert!(claims(&relieved).get("mfa_enrollment_required").is_none(), "{}", claims(&relieved));
    app.stop().await;
}

// ----- administration -----

#[tokio::test]
async fn an_administrator_resets_a_users_factors_ending_their_sessions_and_open_challenges() {
    let Some(generator) = any_tool() else { return };
    let (app, owner) = with_owner(|_| {}).await;
    let user = enrolled(&app, "dan@example.com", generator).await;
    let id = account_id(&app, &user.session.access).await;
    register(&app, "eve@example.com", PASSWORD).await;
    let member = login(&app, "eve@example.com", PASSWORD).await;
    let (open, _) = challenge(&app, &user.email).await;
    let reset = |access: String, id: String| {
        app.call(Method::DELETE, &format!("/v1/admin/users/{id}/mfa")).bearer_auth(access).go()
    };

    expect_problem(reset(member.access.clone(), id.clone()).await, 403, "forbidden").await;
    let done = json_of(reset(owner.access.clone(), id.clone()).await, 200).await;

    assert_eq!(done, json!({ "removed": 1 }));
    assert_eq!(app.me_status(&user.session.access).await, 401, "the user's sessions ended");
    assert_eq!(app.me_status(&user.before.access).await, 401, "the user's sessions ended");
    expect_problem(verify(&app, &open, totp(&user.code(1))).await, 400, "invalid-token").await;
    let tokens = login(&app, &user.email, PASSWORD).await;
    assert_eq!(amr(&tokens), ["pwd"]);
    let left = factors(&app, &tokens.access).await;
    assert_eq!(
        (left["devices"].clone(), left["recovery_codes_left"].clone()),
        (json!([]), json!(0)),
        "{left}"
    );
    let unknown = "0".repeat(id.len());
    assert_eq!(reset(owner.access.clone(), unknown).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn wrong_second_factors_and_spent_recovery_codes_are_security_events_for_defenders() {
    let Some(generator) = any_tool() else { return };
    let (app, owner) = with_owner(|_| {}).await;
    let user = enrolled(&app, "sec@example.com", generator).await;
    let id = account_id(&app, &user.session.access).await;
    let (challenge_token, _) = challenge(&app, &user.email).await;
    let wrong = wrong_code(&user.window());
    expect_problem(verify(&app, &challenge_token, totp(&wrong)).await, 401, "invalid-second-factor").await;
    Tokens::from_response(verify(&app, &challenge_token, recovery(&user.recovery_codes[0])).await).await;
    let events = |kind: &'static str| {
        app.call(Method::GET, "/v1/admin/security-events")
            .bearer_auth(&owner.access)
            .query(&[("kind", kind)])
            .go()
    };

    let failed = json_of(events("mfa_failed").await, 200).await;
    let used = json_of(events("recovery_code_used").await, 200).await;

    let failed = failed["events"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["user_id"], id.as_str());
    assert_eq!(failed[0]["details"]["method"], "totp");
    assert!(!failed[0].to_string().contains(&wrong), "the event carries the code: {}", failed[0]);
    let used = used["events"].as_array().unwrap();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["user_id"], id.as_str());
    assert!(used[0]["session_id"].is_string(), "{}", used[0]);
    app.stop().await;
}

#[tokio::test]
async fn an_enrollment_left_pending_by_a_session_without_the_accounts_factor_cannot_be_confirmed_later() {
    // A phished password before the owner turned MFA on: the attacker's session starts enrolling its
    // own authenticator and waits. Once the owner has a factor, finishing that enrollment must need
    // the owner's factor, or the attacker's authenticator becomes a factor of the account (and their
    // session a two-factor one).
    let Some(generator) = any_tool() else { return };
    let app = spawn_app().await;
    register(&app, "vic@example.com", PASSWORD).await;
    let attacker = login(&app, "vic@example.com", PASSWORD).await;
    let start = now_secs();
    let (pending, body) = start_totp(&app, &attacker.access, "attacker").await;
    let attackers_secret = body["secret"].as_str().unwrap().to_owned();
    let owner = login(&app, "vic@example.com", PASSWORD).await;
    let (device, body) = start_totp(&app, &owner.access, "phone").await;
    let code = generator.code(body["secret"].as_str().unwrap(), step_time(start, 0));
    assert_eq!(confirm_totp(&app, &owner.access, &device, &code).await.status(), 200);

    let code = generator.code(&attackers_secret, step_time(start, 0));
    let confirmed = confirm_totp(&app, &attacker.access, &pending, &code).await;

    expect_reauthentication(confirmed).await;
    expect_reauthentication(create_api_key(&app, &attacker.access).await).await;
    let (challenge_token, _) = challenge(&app, "vic@example.com").await;
    let code = generator.code(&attackers_secret, step_time(start, 1));
    expect_problem(verify(&app, &challenge_token, totp(&code)).await, 401, "invalid-second-factor").await;
    app.stop().await;
}

#[tokio::test]
async fn with_passwordless_login_on_a_passkey_alone_logs_in_and_unknown_addresses_look_alike() {
    let off = spawn_for_passkeys().await;
    let refused = off.post_json("/v1/auth/passkey/options", &json!({ "email": "nel@example.com" })).await;
    expect_problem(refused, 501, "not-implemented").await;
    off.stop().await;

    let app = spawn_with(|c| {
        c.http.public_url = Some(PUBLIC_URL.into());
        c.mfa.passkey_login = true;
    })
    .await;
    register(&app, "nel@example.com", PASSWORD).await;
    let tokens = login(&app, "nel@example.com", PASSWORD).await;
    let mut key = authenticator();
    register_passkey(&app, &tokens.access, &mut key, "Laptop").await;

    let options = |email: &'static str| {
        let app = &app;
        async move {
            let response = app.post_json("/v1/auth/passkey/options", &json!({ "email": email })).await;
            json_of(response, 200).await
        }
    };
    let real = options("nel@example.com").await;
    let decoy = options("nobody@example.com").await;
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v["options"]["publicKey"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&real), keys(&decoy), "{real}\n{decoy}");
    assert_eq!(
        real["challenge_token"].as_str().unwrap().len(),
        decoy["challenge_token"].as_str().unwrap().len()
    );
    let garbage = json!({ "method": "passkey", "credential": { "id": "nope" } });
    for started in [&real, &decoy] {
        let token = started["challenge_token"].as_str().unwrap();
        expect_problem(verify(&app, token, garbage.clone()).await, 401, "invalid-second-factor").await;
    }
    // A code, a second options request and a cross-site passkey answer get the same answers for a
    // real challenge and a made-up one.
    for started in [&real, &decoy] {
        let token = started["challenge_token"].as_str().unwrap();
        let code = json!({ "method": "totp", "code": "123456" });
        expect_problem(verify(&app, token, code).await, 400, "invalid-token").await;
        let again = app.post_json("/v1/auth/mfa/passkey-options", &json!({ "challenge_token": token })).await;
        expect_problem(again, 400, "invalid-token").await;
        let mut body = garbage.clone();
        body["challenge_token"] = json!(token);
        let cross_site = app
            .call(Method::POST, "/v1/auth/mfa/verify")
            .header("origin", "https://evil.example")
            .json(&body)
            .go()
            .await;
        expect_problem(cross_site, 403, "csrf-rejected").await;
    }
    let token = real["challenge_token"].as_str().unwrap();

    let request: RequestChallengeResponse = serde_json::from_value(real["options"].clone()).unwrap();
    let credential = key.do_authentication(Url::parse(PUBLIC_URL).unwrap(), request).unwrap();
    let answer = json!({ "method": "passkey", "credential": credential });
    let session = Tokens::from_response(verify(&app, token, answer).await).await;
    assert_eq!(amr(&session), ["hwk", "mfa"]);
    let me = app.call(Method::GET, "/v1/me").bearer_auth(&session.access).go().await;
    assert_eq!(json_of(me, 200).await["email"], "nel@example.com");
    app.stop().await;
}
