//! Access tokens (RFC 9068-style JWTs, RFC 7519) signed with Ed25519 or ES256, the keyring that signs
//! them, the JWKS (RFC 7517) that publishes its public halves, and the bounded cache that keeps
//! verification off the hot path.
//!
//! Signing uses key pairs parsed once and kept (ring), because `jsonwebtoken` re-parses a private key
//! on every call. Verification goes through `jsonwebtoken` with the algorithm pinned to the key's own,
//! so `alg: none`, an HMAC token keyed with our public key, or a swapped `kid` never verify.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_domain::{SessionId, Timestamp, UserId};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppError;

/// Which algorithm signs new access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// Ed25519 (RFC 8037): the default; small keys, deterministic signatures.
    EdDsa,
    /// ECDSA P-256 with SHA-256 (RFC 7518 section 3.4), for verifiers without Ed25519.
    Es256,
}

impl SigningAlgorithm {
    /// The JWS `alg` value.
    pub fn jws_name(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDsa => "EdDSA",
            SigningAlgorithm::Es256 => "ES256",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(SigningAlgorithm::EdDsa),
            "ES256" => Some(SigningAlgorithm::Es256),
            _ => None,
        }
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            SigningAlgorithm::EdDsa => Algorithm::EdDSA,
            SigningAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

/// The JWS `typ` of access tokens (RFC 9068 section 2.1).
const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// How access tokens are made and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The `iss` claim: this server's public base URL.
    pub issuer: String,
    /// The `aud` claim every access token carries and every verification demands.
    pub audience: String,
    pub algorithm: SigningAlgorithm,
    /// Access token lifetime (15 minutes by default).
    pub access_ttl_secs: i64,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: i64,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    /// What the session's login (or latest re-authentication) proved (RFC 8176 values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When the holder last proved who they are (OIDC Core section 2), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// Present and true while the account must enroll a second factor before anything else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa_enrollment_required: bool,
}

/// Who a verified access token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessGrant {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// When the token stops being valid (its `exp`).
    pub expires_at: Timestamp,
    /// The session may only enroll a second factor.
    pub mfa_enrollment_required: bool,
}

/// A key that can sign, parsed once.
enum Signer {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

struct SigningKey {
    kid: String,
    algorithm: SigningAlgorithm,
    signer: Signer,
}

struct VerifyingKey {
    algorithm: SigningAlgorithm,
    key: DecodingKey,
}

/// Every key this node knows: the one that signs, and all that still verify.
pub(crate) struct Keyring {
    current: Option<SigningKey>,
    verifiers: HashMap<String, VerifyingKey>,
    jwks: serde_json::Value,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|k| &k.kid))
            .field("verifiers", &self.verifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring with no keys: nothing signs, nothing verifies (before the schema is migrated).
    pub(crate) fn empty() -> Self {
        Self { current: None, verifiers: HashMap::new(), jwks: serde_json::json!({ "keys": [] }) }
    }

    /// Whether a key is ready to sign.
    pub(crate) fn can_sign(&self) -> bool {
        self.current.is_some()
    }

    /// The public JWKS document.
    pub(crate) fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Builds the keyring from the unwrapped PKCS#8 private keys of every published key (`kid`,
    /// algorithm, key) and the kid of the one that signs, if any. Each public half is derived from its
    /// private key and its kid must be that key's RFC 7638 thumbprint: a public key or kid altered in
    /// the database (which has no KEK to forge a wrapped private key) is refused, not published.
    pub(crate) fn build(published: &[(&str, &str, &[u8])], signer: Option<&str>) -> Result<Self, AppError> {
        let mut ring = Keyring::empty();
        let mut jwks = Vec::new();
        for &(kid, algorithm, pkcs8) in published {
            let algorithm = SigningAlgorithm::parse(algorithm)
                .ok_or_else(|| AppError::Keyring(format!("signing key {kid}: unknown algorithm")))?;
            let (signer_key, public) = match algorithm {
                SigningAlgorithm::EdDsa => {
                    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
                        .map_err(|_| AppError::Keyring(format!("signing key {kid} is not an Ed25519 key")))?;
                    let public = pair.public_key().as_ref().to_vec();
                    (Signer::Ed25519(pair), public)
                }
                SigningAlgorithm::Es256 => {
                    let pair = EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        pkcs8,
                        &SystemRandom::new(),
                    )
                    .map_err(|_| AppError::Keyring(format!("signing key {kid} is not a P-256 key")))?;
                    let public = pair.public_key().as_ref().to_vec();
                    (Signer::Es256(pair), public)
                }
            };
            if thumbprint(algorithm, &public) != kid {
                return Err(AppError::Keyring(format!(
                    "signing key {kid}: the kid is not the thumbprint of its key; the row was altered"
                )));
            }
            let (jwk, decoding) = public_jwk(algorithm, &public, kid)?;
            jwks.push(jwk);
            ring.verifiers.insert(kid.to_owned(), VerifyingKey { algorithm, key: decoding });
            if signer == Some(kid) {
                ring.current = Some(SigningKey { kid: kid.to_owned(), algorithm, signer: signer_key });
            }
        }
        ring.jwks = serde_json::json!({ "keys": jwks });
        Ok(ring)
    }

    /// Signs `claims` with the current key.
    pub(crate) fn sign(&self, claims: &AccessClaims) -> Result<String, AppError> {
        let key =
            self.current.as_ref().ok_or_else(|| AppError::Internal("no signing key is loaded".into()))?;
        let header =
            serde_json::json!({ "alg": key.algorithm.jws_name(), "typ": ACCESS_TOKEN_TYP, "kid": key.kid });
        let mut token = String::with_capacity(512);
        token.push_str(
            &URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|e| internal("header", e))?),
        );
        token.push('.');
        token.push_str(
            &URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|e| internal("claims", e))?),
        );
        let signature = match &key.signer {
            Signer::Ed25519(pair) => pair.sign(token.as_bytes()).as_ref().to_vec(),
            Signer::Es256(pair) => pair
                .sign(&SystemRandom::new(), token.as_bytes())
                .map_err(|e| internal("es256 sign", e))?
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }

    /// Verifies signature, algorithm, issuer, audience and time window; returns the claims.
    pub(crate) fn verify(
        &self,
        token: &str,
        settings: &TokenSettings,
        now: Timestamp,
    ) -> Result<AccessClaims, AppError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AppError::Unauthenticated)?;
        // Only access tokens (RFC 9068 section 2.1): once ID tokens share these keys, an ID token must
        // not pass for an access token.
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(AppError::Unauthenticated);
        }
        let kid = header.kid.ok_or(AppError::Unauthenticated)?;
        let key = self.verifiers.get(&kid).ok_or(AppError::Unauthenticated)?;
        // The algorithm comes from our key, never from the token (RFC 8725 section 3.1).
        let mut validation = Validation::new(key.algorithm.jsonwebtoken());
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is checked below against the app's clock, so tests can move it.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation)
            .map_err(|_| AppError::Unauthenticated)?
            .claims;
        let now_secs = now.as_unix_millis().div_euclid(1000);
        if claims.exp + settings.leeway_secs <= now_secs || claims.nbf - settings.leeway_secs > now_secs {
            return Err(AppError::Unauthenticated);
        }
        // We never issue a token that lives longer than the configured lifetime, so one that claims
        // to was not made by us: refused, so that a forged long-lived token cannot outlast a key.
        if claims.exp - claims.nbf > settings.access_ttl_secs
            || claims.exp > now_secs + settings.access_ttl_secs
        {
            return Err(AppError::Unauthenticated);
        }
        Ok(claims)
    }
}

fn internal(what: &'static str, error: impl std::fmt::Display) -> AppError {
    AppError::Internal(format!("{what}: {error}").into())
}

/// The public JWK and the decoding key for a stored public key; the JWK's `kid` is its RFC 7638
/// thumbprint.
fn public_jwk(
    algorithm: SigningAlgorithm,
    public: &[u8],
    kid: &str,
) -> Result<(serde_json::Value, DecodingKey), AppError> {
    match algorithm {
        SigningAlgorithm::EdDsa => {
            let x = URL_SAFE_NO_PAD.encode(public);
            let jwk = serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig",
            });
            Ok((jwk, DecodingKey::from_ed_der(public)))
        }
        SigningAlgorithm::Es256 => {
            // ring gives the uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
            if public.len() != 65 || public[0] != 4 {
                return Err(AppError::Internal("stored P-256 public key is malformed".into()));
            }
            let (x, y) = (URL_SAFE_NO_PAD.encode(&public[1..33]), URL_SAFE_NO_PAD.encode(&public[33..]));
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig",
            });
            Ok((jwk, DecodingKey::from_ec_der(public)))
        }
    }
}

/// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, no whitespace.
fn thumbprint(algorithm: SigningAlgorithm, public: &[u8]) -> String {
    let canonical = match algorithm {
        SigningAlgorithm::EdDsa => {
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(public))
        }
        SigningAlgorithm::Es256 => format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(public.get(1..33).unwrap_or_default()),
            URL_SAFE_NO_PAD.encode(public.get(33..).unwrap_or_default())
        ),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new signing key pair: its kid (the RFC 7638 thumbprint), PKCS#8 private key and raw public key.
pub(crate) struct NewSigningKey {
    pub kid: String,
    pub pkcs8: zeroize::Zeroizing<Vec<u8>>,
    pub public: Vec<u8>,
}

/// Makes a new signing key pair.
pub(crate) fn generate_signing_key(algorithm: SigningAlgorithm) -> Result<NewSigningKey, AppError> {
    let rng = SystemRandom::new();
    let (pkcs8, public) = match algorithm {
        SigningAlgorithm::EdDsa => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| internal("ed25519 keygen", e))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| internal("ed25519", e))?;
            (zeroize::Zeroizing::new(pkcs8.as_ref().to_vec()), pair.public_key().as_ref().to_vec())
        }
        SigningAlgorithm::Es256 => {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| internal("p-256 keygen", e))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| internal("p-256", e))?;
            (zeroize::Zeroizing::new(pkcs8.as_ref().to_vec()), pair.public_key().as_ref().to_vec())
        }
    };
    Ok(NewSigningKey { kid: thumbprint(algorithm, &public), pkcs8, public })
}

/// Already-verified access tokens, so a token is verified once per node rather than on every
/// request. Only tokens that passed full verification are inserted, and a hit requires the exact same
/// token text, so the cache cannot be poisoned; entries are dropped once their token expires.
#[derive(Debug, Default)]
pub(crate) struct VerifiedTokens {
    entries: Mutex<HashMap<String, AccessGrant>>,
}

/// Bounds memory: a node serving more distinct live tokens than this verifies some twice.
const VERIFIED_TOKENS_MAX: usize = 10_000;

impl VerifiedTokens {
    pub(crate) fn get(&self, token: &str, now: Timestamp) -> Option<AccessGrant> {
        let entries = self.entries.lock().ok()?;
        entries.get(token).copied().filter(|grant| now < grant.expires_at)
    }

    pub(crate) fn insert(&self, token: &str, grant: AccessGrant, now: Timestamp) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= VERIFIED_TOKENS_MAX {
            entries.retain(|_, g| now < g.expires_at);
            if entries.len() >= VERIFIED_TOKENS_MAX {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), grant);
    }

    /// Forgets every token: the set of keys that verify changed (an emergency rotation must not leave
    /// a token forged with the destroyed key alive in the cache).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    /// Forgets every token of a revoked session.
    pub(crate) fn forget_session(&self, session: SessionId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, g| g.session_id != session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn settings(algorithm: SigningAlgorithm) -> TokenSettings {
        TokenSettings {
            issuer: "https://id.example.com".into(),
            audience: "portcullis".into(),
            algorithm,
            access_ttl_secs: 900,
            leeway_secs: 30,
        }
    }

    fn keyring(algorithm: SigningAlgorithm) -> Keyring {
        let key = generate_signing_key(algorithm).unwrap();
        Keyring::build(&[(&key.kid, algorithm.jws_name(), &key.pkcs8)], Some(&key.kid)).unwrap()
    }

    fn claims(s: &TokenSettings) -> AccessClaims {
        let iat = NOW / 1000;
        AccessClaims {
            iss: s.issuer.clone(),
            aud: s.audience.clone(),
            sub: UserId::from_random_bytes([1; 16]).to_string(),
            sid: SessionId::from_random_bytes([2; 16]).to_string(),
            iat,
            nbf: iat,
            exp: iat + 900,
            jti: "j".into(),
            amr: vec!["pwd".into()],
            auth_time: Some(iat),
            mfa_enrollment_required: false,
        }
    }

    #[test]
    fn tokens_of_both_algorithms_verify_and_carry_their_kid() {
        for alg in [SigningAlgorithm::EdDsa, SigningAlgorithm::Es256] {
            let (ring, s) = (keyring(alg), settings(alg));
            let token = ring.sign(&claims(&s)).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), ring.current.as_ref().map(|k| k.kid.as_str()));
            assert_eq!(ring.verify(&token, &s, Timestamp::from_unix_millis(NOW)).unwrap(), claims(&s));
            assert_eq!(ring.jwks()["keys"][0]["alg"], alg.jws_name());
        }
    }

    fn b64(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn forged_tampered_expired_and_foreign_tokens_are_all_rejected() {
        let (ring, s) = (keyring(SigningAlgorithm::EdDsa), settings(SigningAlgorithm::EdDsa));
        let now = Timestamp::from_unix_millis(NOW);
        let kid = ring.current.as_ref().unwrap().kid.clone();
        let good = claims(&s);
        let body = b64(&serde_json::to_value(&good).unwrap());
        let rejected = |token: &str| matches!(ring.verify(token, &s, now), Err(AppError::Unauthenticated));

        // alg: none, with and without a trailing signature.
        let none = b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}));
        assert!(rejected(&format!("{none}.{body}.")));
        assert!(rejected(&format!("{none}.{body}")));
        // HS256 keyed with the published public key (the classic key-confusion attack).
        let public = ring.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let hs =
            jsonwebtoken::encode(&header, &good, &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()))
                .unwrap();
        assert!(rejected(&hs));
        // A valid signature over other claims: swap in a tampered payload.
        let token = ring.sign(&good).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = good.clone();
        evil.sub = UserId::from_random_bytes([3; 16]).to_string();
        assert!(rejected(&format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(&evil).unwrap()),
            parts[2]
        )));
        // An unknown kid, and a token with no kid.
        let other_kid = b64(&serde_json::json!({"alg": "EdDSA", "kid": "not-ours"}));
        assert!(rejected(&format!("{other_kid}.{}.{}", parts[1], parts[2])));
        let no_kid = b64(&serde_json::json!({"alg": "EdDSA"}));
        assert!(rejected(&format!("{no_kid}.{}.{}", parts[1], parts[2])));
        // Signed by another key with our kid.
        let stranger = keyring(SigningAlgorithm::EdDsa);
        let foreign = stranger.sign(&good).unwrap();
        let fparts: Vec<&str> = foreign.split('.').collect();
        assert!(rejected(&format!("{}.{}.{}", parts[0], fparts[1], fparts[2])));
        // Wrong issuer, wrong audience.
        assert!(rejected(
            &ring.sign(&AccessClaims { iss: "https://evil.example".into(), ..good.clone() }).unwrap()
        ));
        assert!(rejected(&ring.sign(&AccessClaims { aud: "another-app".into(), ..good.clone() }).unwrap()));
        // Expired beyond the leeway; not yet valid beyond the leeway; within the leeway is fine.
        let at = |secs: i64| Timestamp::from_unix_millis(NOW + secs * 1000);
        assert!(ring.verify(&token, &s, at(900 + 29)).is_ok());
        assert!(matches!(ring.verify(&token, &s, at(900 + 30)), Err(AppError::Unauthenticated)));
        assert!(matches!(ring.verify(&token, &s, at(-31)), Err(AppError::Unauthenticated)));
        // A token of another type signed with our key (an ID token, once OIDC shares the keys).
        let wrong_typ = b64(&serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}));
        let input = format!("{wrong_typ}.{body}");
        let signature = match &ring.current.as_ref().unwrap().signer {
            Signer::Ed25519(pair) => URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())),
            Signer::Es256(_) => unreachable!(),
        };
        assert!(rejected(&format!("{input}.{signature}")));
        // Garbage.
        for junk in ["", ".", "..", "a.b.c", "Bearer x", &"a".repeat(10_000)] {
            assert!(rejected(junk), "{junk:.20}");
        }
    }

    #[test]
    fn a_token_claiming_a_longer_life_than_we_issue_is_refused() {
        let (ring, s) = (keyring(SigningAlgorithm::EdDsa), settings(SigningAlgorithm::EdDsa));
        let now = Timestamp::from_unix_millis(NOW);
        let long = AccessClaims { exp: NOW / 1000 + 10 * 365 * 86_400, ..claims(&s) };
        assert!(matches!(ring.verify(&ring.sign(&long).unwrap(), &s, now), Err(AppError::Unauthenticated)));
        let early = AccessClaims { nbf: NOW / 1000 - 3_600, ..claims(&s) };
        assert!(matches!(ring.verify(&ring.sign(&early).unwrap(), &s, now), Err(AppError::Unauthenticated)));
        assert!(ring.verify(&ring.sign(&claims(&s)).unwrap(), &s, now).is_ok());
    }

    #[test]
    fn a_key_whose_kid_is_not_its_thumbprint_is_refused() {
        let key = generate_signing_key(SigningAlgorithm::EdDsa).unwrap();
        let other = generate_signing_key(SigningAlgorithm::EdDsa).unwrap();
        let swapped = Keyring::build(&[(&other.kid, "EdDSA", &key.pkcs8)], None);
        assert!(matches!(swapped, Err(AppError::Keyring(_))));
        let wrong_alg = Keyring::build(&[(&key.kid, "ES256", &key.pkcs8)], None);
        assert!(matches!(wrong_alg, Err(AppError::Keyring(_))));
    }

    #[test]
    fn an_rfc_8037_ed25519_thumbprint_matches_the_published_example() {
        // RFC 8037 appendix A.3.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(thumbprint(SigningAlgorithm::EdDsa, &x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn the_verified_token_cache_is_bounded_and_forgets_revoked_sessions() {
        let cache = VerifiedTokens::default();
        let now = Timestamp::from_unix_millis(NOW);
        let grant = AccessGrant {
            user_id: UserId::from_random_bytes([1; 16]),
            session_id: SessionId::from_random_bytes([2; 16]),
            expires_at: now.plus_millis(1000),
            mfa_enrollment_required: false,
        };
        cache.insert("t", grant, now);
        assert_eq!(cache.get("t", now), Some(grant));
        assert_eq!(cache.get("t", now.plus_millis(1000)), None, "expired entries never hit");
        cache.forget_session(grant.session_id);
        assert_eq!(cache.get("t", now), None);
        for i in 0..=VERIFIED_TOKENS_MAX {
            cache.insert(&i.to_string(), grant, now);
        }
        assert!(cache.entries.lock().unwrap().len() <= VERIFIED_TOKENS_MAX);
    }
}
