//! Fuzzes access-token (JWT) verification through `App::authenticate_bearer`, the one public way in:
//! an `App` over a migrated in-memory SQLite store with its Ed25519 signing key, built once per
//! process, with one real account logged in for a real token.
//!
//! Each input is read in one of three ways, by its first byte (0xFE and 0xFF never start UTF-8 text):
//!
//! - text: the bearer token as sent. It must never verify: this process's key is random and its only
//!   issued token is never in the corpus, so an accepted token would be a forgery.
//! - `0xFE` header `\n` claims `\n` signature: the three parts before base64url, with `$KID` in
//!   the header replaced by the live key's id, so that the fuzzer gets past the `typ` and `kid`
//!   checks to the algorithm pinning and the signature check (`alg: none`, `HS256` keyed with the
//!   public key, a swapped algorithm, `crit`, an embedded `jwk`). It must never verify either.
//! - `0xFF` op, position (u16, little-endian) and bytes: an edit of the real token (overwrite or
//!   insert the bytes, or delete as many bytes as the first says, at the position counted from the
//!   start, or from the end when bit 0 of op is set). Only the token exactly as issued may verify, and
//!   only as its own session: no other spelling of it (a re-encoded signature, padding, trailing
//!   bits, whitespace, another header with the same signature) is accepted.
//!
//! Invariant for all three: no panic, and `Ok` only for the issued token, as the issued session.
//!
//! The clock is fixed, so the issued token never expires during a long run and a crash replays the
//! same way; keys and ids are still random per process.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use portcullis_app::mail::FileOutbox;
use portcullis_app::{
    App, AppSettings, ClientContext, Credential, FixedClock, HashAlgorithm, IssuedCredentials, KekSet,
    LoginMode, LoginOutcome, Principal, PrincipalKind,
};
use portcullis_domain::{BuiltinRole, Timestamp};
use portcullis_store::Store;
use portcullis_store_sqlite::SqliteStore;
use secrecy::{SecretSlice, SecretString};

/// 2024-01-01T00:00:00Z.
const NOW_MILLIS: i64 = 1_704_067_200_000;

struct Fixture {
    app: App,
    /// The one token this process issued, and who it speaks for.
    token: String,
    principal: Principal,
    kid: String,
    /// Kept so the store's background tasks have a runtime for the life of the process.
    _runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let outbox = tempfile::tempdir().expect("a temporary directory");
    let fixture = runtime.block_on(async {
        let store = SqliteStore::open_in_memory().await.expect("an in-memory store");
        store.migrate().await.expect("migrations");
        let mut settings = AppSettings::new(
            SecretSlice::from(vec![7u8; 32]),
            KekSet::parse(&KekSet::generate_entry("fuzz").expect("a KEK")).expect("a KEK"),
            "fuzz",
            "https://id.example.com",
        );
        // Hashing is not what is fuzzed here: the cheapest argon2id keeps start-up short.
        settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
        let mailer = FileOutbox::new(outbox.path(), "f@example.com").expect("an outbox");
        let clock = FixedClock::new(Timestamp::from_unix_millis(NOW_MILLIS));
        let app = App::new(Arc::new(store), Arc::new(clock), settings, Arc::new(mailer)).expect("an app");
        app.load_keys().await.expect("the keyring");

        let password = "velvet otter migrates at dusk";
        app.create_user_as_operator(
            "fuzz@example.com",
            None,
            SecretString::from(password),
            BuiltinRole::Member,
        )
        .await
        .expect("an account");
        let client = ClientContext { ip: None, user_agent: None };
        let outcome = app
            .login("fuzz@example.com", SecretString::from(password), LoginMode::Bearer, &client)
            .await
            .expect("a login");
        let LoginOutcome::Authenticated { session_id, user_id, credentials } = outcome else {
            panic!("the fuzz account has no second factor")
        };
        let IssuedCredentials::Bearer { access_token, .. } = credentials else {
            panic!("a bearer login gave a cookie")
        };
        let kid = app.jwks()["keys"][0]["kid"].as_str().expect("a kid in the JWKS").to_owned();
        let principal = Principal {
            user_id,
            kind: PrincipalKind::Person,
            credential: Credential::Bearer(session_id),
            mfa_enrollment_required: false,
        };
        (app, access_token, principal, kid)
    });
    let (app, token, principal, kid) = fixture;
    // Nothing in this target sends mail; the outbox directory is not needed once the app exists.
    drop(outbox);
    let fixture = Fixture { app, token, principal, kid, _runtime: runtime };
    // The target can tell a forgery from a failure to verify only if the real token does verify.
    assert_eq!(fixture.app.authenticate_bearer(&fixture.token).ok(), Some(fixture.principal));
    fixture
});

/// Mode `0xFE`: the three parts of a token before base64url.
fn templated(data: &[u8], kid: &str) -> String {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let header = parts.next().unwrap_or_default();
    let header = String::from_utf8_lossy(header).replace("$KID", kid);
    let claims = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    [header.as_bytes(), claims, signature].map(|part| URL_SAFE_NO_PAD.encode(part)).join(".")
}

/// Mode `0xFF`: an edit of the issued token.
fn edited(data: &[u8], token: &str) -> Option<String> {
    let [op, lo, hi, bytes @ ..] = data else { return None };
    let mut text = token.as_bytes().to_vec();
    let pos = usize::from(u16::from_le_bytes([*lo, *hi])) % (text.len() + 1);
    let at = if op & 1 == 1 { text.len() - pos } else { pos };
    match (op >> 1) % 3 {
        0 => {
            let end = (at + bytes.len()).min(text.len());
            text.splice(at..end, bytes.iter().copied());
        }
        1 => {
            text.splice(at..at, bytes.iter().copied());
        }
        _ => {
            let count = usize::from(bytes.first().copied().unwrap_or(1));
            text.drain(at..(at + count).min(text.len()));
        }
    }
    // authenticate_bearer takes text; the web layer hands it token68 characters only.
    String::from_utf8(text).ok()
}

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let token = match data.split_first() {
        Some((0xFE, rest)) => templated(rest, &fixture.kid),
        Some((0xFF, rest)) => match edited(rest, &fixture.token) {
            Some(token) => token,
            None => return,
        },
        _ => match std::str::from_utf8(data) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        },
    };
    match fixture.app.authenticate_bearer(&token) {
        Ok(principal) => {
            assert_eq!(token, fixture.token, "a token other than the issued one verified: {token:?}");
            assert_eq!(principal, fixture.principal, "the issued token verified as someone else");
        }
        Err(error) => assert!(
            matches!(error, portcullis_app::AppError::Unauthenticated),
            "a bad token must be Unauthenticated, got {error:?}"
        ),
    }
});
