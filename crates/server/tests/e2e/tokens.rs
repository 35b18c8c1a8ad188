//! Access tokens over HTTP (issue 3): what an issued JWT says, the JWKS that verifies it (checked with
//! ring and, when installed, PyJWT, not with the server's own code), and forgeries that must fail.
//!
//! The server's dev-dependencies hold no JOSE or HMAC library, so tokens are taken apart and put
//! together by hand here (base64url + JSON), signatures are checked with ring through rustls' WebPKI
//! algorithms, and HMAC-SHA256 for the HS256 forgery is built on rustls' SHA-256 (support.rs).
//!
//! Not tested here, and why:
//! - an expired token: waiting 15 minutes is not a test; the time window is unit-tested in app with
//!   a fixed clock (tokens.rs), and `tokens.access_ttl_secs` has a floor of 60 s;
//! - a token for another audience with a valid signature: only the server's private key can make one;
//!   the audience check is unit-tested in app;
//! - the security event raised by refresh-token reuse: not observable over HTTP yet.

use std::process::Command;

use portcullis::config::TokenAlgorithm;
use reqwest::Method;
use serde_json::json;

use crate::support::{
    Go, PASSWORD, TestApp, b64url, expect_unauthorized, hmac_sha256, jwks, jwt_parts, jwt_with, login,
    register, signature_verifies, spawn_app, spawn_with, unb64url, wait_for_email,
};

/// A registered account's token session.
async fn session(app: &TestApp, email: &str) -> crate::support::Tokens {
    register(app, email, PASSWORD).await;
    login(app, email, PASSWORD).await
}

/// The one key of the JWKS whose `kid` the token names.
fn key_for<'a>(jwks: &'a serde_json::Value, token: &str) -> &'a serde_json::Value {
    let kid = jwt_parts(token).0["kid"].clone();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no key {kid}"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The token with its claims replaced and its original signature kept.
fn with_claims(token: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let (header, mut claims, signature) = jwt_parts(token);
    change(&mut claims);
    jwt_with(&header, &claims, |_| signature)
}

/// The token with its header replaced and its original signature kept.
fn with_header(token: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let (mut header, claims, signature) = jwt_parts(token);
    change(&mut header);
    jwt_with(&header, &claims, |_| signature)
}

// ----- what an access token is -----

#[tokio::test]
async fn an_access_token_is_an_eddsa_at_jwt_with_the_documented_claims() {
    let app = spawn_app().await;
    let tokens = session(&app, "tok@example.com").await;
    let me: serde_json::Value = app.me(&tokens.access).await.json().await.unwrap();
    let sessions: serde_json::Value =
        app.call(Method::GET, "/v1/me/sessions").bearer_auth(&tokens.access).go().await.json().await.unwrap();

    let (header, claims, signature) = jwt_parts(&tokens.access);

    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 section 2.1");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()), "{header}");
    assert_eq!(signature.len(), 64, "an Ed25519 signature");
    assert_eq!(claims["iss"], app.origin(), "in development the issuer is http://<listen addr>");
    assert_eq!(claims["aud"], "portcullis");
    assert_eq!(claims["sub"], me["id"]);
    assert_eq!(claims["sid"], sessions["sessions"][0]["id"]);
    let (iat, nbf, exp) =
        (claims["iat"].as_i64().unwrap(), claims["nbf"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 900);
    assert_eq!(nbf, iat);
    assert!((iat - now_secs()).abs() <= 60, "iat {iat} is now");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "{claims}");
    let second = login(&app, "tok@example.com", PASSWORD).await;
    assert_ne!(jwt_parts(&second.access).1["jti"], claims["jti"], "every token has its own jti");
    assert!(claims.get("email").is_none() && claims.get("password").is_none(), "no personal data: {claims}");
    app.stop().await;
}

#[tokio::test]
async fn the_jwks_publishes_the_ed25519_key_that_verifies_issued_tokens() {
    let app = spawn_app().await;
    let tokens = session(&app, "jwks@example.com").await;

    let jwks = jwks(&app).await;

    let key = key_for(&jwks, &tokens.access);
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(unb64url(key["x"].as_str().unwrap()).len(), 32);
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        assert!(key.get(private).is_none(), "the JWKS publishes a private member {private}");
    }
    assert!(signature_verifies(&tokens.access, key), "an issued token verifies against the JWKS");
    let tampered = with_claims(&tokens.access, |c| c["sub"] = json!("someone-else"));
    assert!(!signature_verifies(&tampered, key), "the checker itself notices tampering");
    app.stop().await;
}

#[tokio::test]
async fn with_es256_configured_tokens_are_es256_and_verify_against_the_jwks() {
    let app = spawn_with(|c| c.tokens.algorithm = TokenAlgorithm::Es256).await;
    let tokens = session(&app, "p256@example.com").await;

    let (header, _, signature) = jwt_parts(&tokens.access);
    let jwks = jwks(&app).await;

    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(signature.len(), 64, "a JWS ECDSA signature is r ‖ s (RFC 7518 section 3.4), not DER");
    let key = key_for(&jwks, &tokens.access);
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(unb64url(key["x"].as_str().unwrap()).len(), 32);
    assert_eq!(unb64url(key["y"].as_str().unwrap()).len(), 32);
    assert!(key.get("d").is_none(), "the JWKS publishes the private key");
    assert!(signature_verifies(&tokens.access, key));
    assert!(!signature_verifies(&with_claims(&tokens.access, |c| c["exp"] = json!(0)), key));
    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_issuer_audience_and_emailed_links_follow_the_configuration() {
    let app = spawn_with(|c| {
        c.http.public_url = Some("https://id.example.test/".into());
        c.tokens.audience = "api.example.test".into();
    })
    .await;
    let tokens = session(&app, "conf@example.com").await;

    let (_, claims, _) = jwt_parts(&tokens.access);

    assert_eq!(claims["iss"], "https://id.example.test");
    assert_eq!(claims["aud"], "api.example.test");
    assert_eq!(app.me_status(&tokens.access).await, 200);
    let mail = wait_for_email(&app, "conf@example.com", "").await;
    let link = crate::support::link_from(&mail, "verify-email");
    assert!(link.starts_with("https://id.example.test/ui/verify-email#token="), "{link}");
    app.stop().await;
}

// ----- forgeries -----

#[tokio::test]
async fn a_token_with_alg_none_is_refused() {
    let app = spawn_app().await;
    let tokens = session(&app, "none@example.com").await;
    let (header, claims, signature) = jwt_parts(&tokens.access);

    for alg in ["none", "None", "NONE", "nOnE"] {
        let mut unsigned_header = header.clone();
        unsigned_header["alg"] = json!(alg);
        let unsigned = jwt_with(&unsigned_header, &claims, |_| Vec::new());
        expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&unsigned).go().await).await;
        let kept_signature = jwt_with(&unsigned_header, &claims, |_| signature.clone());
        expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&kept_signature).go().await).await;
    }
    // The unsigned form without the trailing signature segment at all.
    let two_parts = format!(
        "{}.{}",
        b64url(json!({ "alg": "none" }).to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&two_parts).go().await).await;
    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

#[test]
fn the_test_hmac_matches_rfc_4231() {
    // RFC 4231 test case 2, so the HS256 forgery below is a real HS256 token.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    // Test case 6: a key longer than the block size is hashed first.
    let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    // Algorithm confusion (CVE-2015-9235 and kin): a verifier that lets the token pick the algorithm
    // would check an HMAC keyed with the public key, which anyone can compute.
    let app = spawn_app().await;
    let tokens = session(&app, "hs256@example.com").await;
    let jwks = jwks(&app).await;
    let key = key_for(&jwks, &tokens.access).clone();
    let (header, claims, _) = jwt_parts(&tokens.access);
    let x = key["x"].as_str().unwrap().to_owned();
    let candidate_secrets: Vec<Vec<u8>> = vec![
        unb64url(&x),
        x.as_bytes().to_vec(),
        key.to_string().into_bytes(),
        jwks.to_string().into_bytes(),
    ];

    for secret in candidate_secrets {
        for keep_kid in [true, false] {
            let mut forged_header = header.clone();
            forged_header["alg"] = json!("HS256");
            if !keep_kid {
                forged_header.as_object_mut().unwrap().remove("kid");
            }
            let forged = jwt_with(&forged_header, &claims, |input| hmac_sha256(&secret, input));
            expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&forged).go().await).await;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_with_a_changed_payload_is_refused() {
    let app = spawn_app().await;
    let mine = session(&app, "me@example.com").await;
    let victim = session(&app, "victim@example.com").await;
    let victim_claims = jwt_parts(&victim.access).1;

    let forgeries = [
        with_claims(&mine.access, |c| c["sub"] = victim_claims["sub"].clone()),
        with_claims(&mine.access, |c| {
            c["sub"] = victim_claims["sub"].clone();
            c["sid"] = victim_claims["sid"].clone();
        }),
        with_claims(&mine.access, |c| c["exp"] = json!(c["exp"].as_i64().unwrap() + 86_400)),
        with_claims(&mine.access, |c| c["aud"] = json!("another-service")),
        with_claims(&mine.access, |c| c["iss"] = json!("https://evil.example")),
        with_claims(&mine.access, |c| c["role"] = json!("owner")),
    ];

    for forged in forgeries {
        expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&forged).go().await).await;
    }
    assert_eq!(app.me_status(&mine.access).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_token_with_an_unknown_or_missing_kid_is_refused() {
    let app = spawn_app().await;
    let tokens = session(&app, "kid@example.com").await;

    let forgeries = [
        with_header(&tokens.access, |h| h["kid"] = json!("unknown-key")),
        with_header(&tokens.access, |h| h["kid"] = json!("../../../../dev/null")),
        with_header(&tokens.access, |h| {
            h.as_object_mut().unwrap().remove("kid");
        }),
        with_header(&tokens.access, |h| h["jku"] = json!("https://evil.example/jwks.json")),
        with_header(&tokens.access, |h| h["typ"] = json!("JWT")),
    ];

    for forged in forgeries {
        expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&forged).go().await).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_signed_by_another_instance_is_refused() {
    // A real signature by a real Portcullis key, just not this server's: the nearest thing to a
    // forgery that an attacker without the private key can make.
    let app = spawn_app().await;
    let elsewhere = spawn_app().await;
    register(&app, "both@example.com", PASSWORD).await;
    let here = login(&app, "both@example.com", PASSWORD).await;
    let there = session(&elsewhere, "both@example.com").await;
    let here_claims = jwt_parts(&here.access).1;

    let foreign = there.access.clone();
    // ...claiming this server's issuer, user and session, and this server's kid.
    let local_kid = jwt_parts(&here.access).0["kid"].clone();
    let dressed_up = with_header(
        &with_claims(&there.access, |c| {
            c["iss"] = here_claims["iss"].clone();
            c["sub"] = here_claims["sub"].clone();
            c["sid"] = here_claims["sid"].clone();
        }),
        |h| h["kid"] = local_kid.clone(),
    );

    expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&foreign).go().await).await;
    expect_unauthorized(app.call(Method::GET, "/v1/me").bearer_auth(&dressed_up).go().await).await;
    assert_eq!(elsewhere.me_status(&there.access).await, 200);
    elsewhere.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_with_a_broken_signature_or_shape_is_refused() {
    let app = spawn_app().await;
    let tokens = session(&app, "shape@example.com").await;
    let (header, claims, signature) = jwt_parts(&tokens.access);
    let mut flipped = signature.clone();
    flipped[10] ^= 0x01;
    let parts: Vec<&str> = tokens.access.split('.').collect();

    let broken = [
        jwt_with(&header, &claims, |_| flipped),
        jwt_with(&header, &claims, |_| signature[..63].to_vec()),
        jwt_with(&header, &claims, |_| [signature.clone(), vec![0]].concat()),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        "..".to_owned(),
        "a.b.c".to_owned(),
        "x".repeat(8000),
    ];

    for token in broken {
        let response = app.call(Method::GET, "/v1/me").bearer_auth(&token).go().await;
        let status = response.status().as_u16();
        if status == 431 {
            continue; // the 8000-byte header may be stopped by the header limit first
        }
        expect_unauthorized(response).await;
    }
    assert_eq!(app.me_status(&tokens.access).await, 200);
    app.stop().await;
}

// ----- interoperability -----

/// The Python with PyJWT: `PORTCULLIS_TEST_PYTHON` (CI's venv, scripts/test-python) or `python3`.
fn python() -> String {
    std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether [`python`] has PyJWT and cryptography; otherwise the interop test skips, or fails with
/// `PORTCULLIS_REQUIRE_PYJWT=1`.
fn pyjwt_available() -> bool {
    let available = Command::new(python())
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var("PORTCULLIS_REQUIRE_PYJWT").as_deref() != Ok("1"),
            "PORTCULLIS_REQUIRE_PYJWT=1 but `{} -c 'import jwt, cryptography'` fails \
             (eval \"$(scripts/test-python)\", or pip install 'PyJWT[crypto]')",
            python()
        );
    }
    available
}

const PYJWT_VERIFY: &str = r#"
import json, sys
import jwt
jwk = json.load(open(sys.argv[1]))
token = open(sys.argv[2]).read().strip()
key = jwt.PyJWK(jwk).key
claims = jwt.decode(token, key, algorithms=[jwk["alg"]], audience=sys.argv[3], issuer=sys.argv[4])
print(json.dumps(claims))
"#;

#[tokio::test]
async fn an_issued_access_token_verifies_with_pyjwt_against_the_jwks() {
    if !pyjwt_available() {
        println!(
            "SKIP an_issued_access_token_verifies_with_pyjwt_against_the_jwks: {} has no PyJWT with \
             cryptography (set PORTCULLIS_REQUIRE_PYJWT=1 to make this a failure)",
            python()
        );
        return;
    }
    for algorithm in [TokenAlgorithm::EdDsa, TokenAlgorithm::Es256] {
        let app = spawn_with(|c| c.tokens.algorithm = algorithm).await;
        let tokens = session(&app, "py@example.com").await;
        let jwks = jwks(&app).await;
        let dir = tempfile::tempdir().unwrap();
        let (jwk_path, token_path, script) =
            (dir.path().join("jwk.json"), dir.path().join("token"), dir.path().join("verify.py"));
        std::fs::write(&jwk_path, key_for(&jwks, &tokens.access).to_string()).unwrap();
        std::fs::write(&token_path, &tokens.access).unwrap();
        std::fs::write(&script, PYJWT_VERIFY).unwrap();

        let output = Command::new(python())
            .arg(&script)
            .arg(&jwk_path)
            .arg(&token_path)
            .arg("portcullis")
            .arg(app.origin())
            .output()
            .unwrap();

        assert!(
            output.status.success(),
            "{algorithm:?}: PyJWT refused the token: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let claims: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(claims, jwt_parts(&tokens.access).1);
        // And PyJWT refuses a tampered one, so the check above means something.
        std::fs::write(&token_path, with_claims(&tokens.access, |c| c["sub"] = json!("x"))).unwrap();
        let output = Command::new(python())
            .arg(&script)
            .arg(&jwk_path)
            .arg(&token_path)
            .arg("portcullis")
            .arg(app.origin())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{algorithm:?}: PyJWT accepted a tampered token");
        app.stop().await;
    }
}

// Importing bcrypt hashes made by other tools (`$2b$` from Python's bcrypt, `$2y$` from htpasswd) is
// tested in interop.rs, which puts the hash on an account through the store.
