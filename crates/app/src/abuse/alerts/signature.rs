//! The `Portcullis-Signature` header of webhook alerts: how it is made, and how a receiver checks it.
//!
//! The scheme is Stripe's (`Stripe-Signature`), so receivers can reuse code and habits:
//!
//! ```text
//! Portcullis-Signature: t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! - `t` is the unix time in seconds when this attempt was sent (every retry is signed afresh).
//! - `v1` is the lowercase hex HMAC-SHA256 (RFC 2104) keyed with the sink's secret over the bytes
//!   `"<t>.<body>"`: the decimal `t`, one `.`, then the raw request body exactly as received (do not
//!   re-serialize the JSON before checking).
//!
//! A receiver recomputes `v1` and compares it in constant time, and refuses a `t` further than its
//! tolerance (five minutes is usual) from its own clock, in either direction: that bounds replay of a
//! captured request. Binding `t` into the MAC is what makes that check meaningful. More than one `v1`
//! may appear (for a secret rotation, any one matching is enough), and unknown schemes (`v0`, `v2`)
//! are ignored, so the header can grow without breaking receivers.

use std::time::Duration;

use hmac::{Hmac, Mac};
use portcullis_domain::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Portcullis-Signature";

/// Longest header [`verify_signature`] reads; beyond it the header is refused unread.
const MAX_HEADER_BYTES: usize = 1024;

/// Why a webhook request did not verify. Receivers answer all of them alike (401 or 400); the
/// variants are for their logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing parts, repeats `t`, has no `v1`, or is not the expected shape.
    #[error("the signature header is malformed")]
    Malformed,
    /// `t` is further from the receiver's clock than the tolerance (a replay, or a skewed clock).
    #[error("the signature timestamp is outside the tolerance")]
    OutsideTolerance,
    /// No `v1` matches: the body, the timestamp or the secret differs.
    #[error("the signature does not match")]
    Mismatch,
}

/// The header value for a body sent at `unix_secs`: `t=<unix_secs>,v1=<hex>`.
pub fn signature_header(secret: &SecretString, unix_secs: i64, body: &[u8]) -> String {
    let mac = mac_over(secret, unix_secs, body).finalize().into_bytes();
    format!("t={unix_secs},v1={}", hex(&mac))
}

/// Checks a `Portcullis-Signature` header against the raw `body`, the shared `secret` and the
/// receiver's clock `now`, allowing `tolerance` of difference either way. Comparison is constant
/// time; parsing is bounded (headers over 1 KiB are refused unread).
pub fn verify_signature(
    secret: &SecretString,
    header: &str,
    body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let (t, candidates) = parse_header(header)?;
    let skew_millis = now.as_unix_millis().abs_diff(t.saturating_mul(1000));
    if u128::from(skew_millis) > tolerance.as_millis() {
        return Err(SignatureError::OutsideTolerance);
    }
    let expected = mac_over(secret, t, body);
    // `verify_slice` compares in constant time; every candidate is tried so timing does not show
    // which one matched.
    let mut matched = false;
    for candidate in candidates {
        matched |= expected.clone().verify_slice(&candidate).is_ok();
    }
    if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// `t` and the decoded `v1` MACs of a header.
fn parse_header(header: &str) -> Result<(i64, Vec<[u8; 32]>), SignatureError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(SignatureError::Malformed);
    }
    let mut t = None;
    let mut candidates = Vec::new();
    for item in header.split(',') {
        let (scheme, value) = item.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match scheme {
            "t" => {
                if t.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                t = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => candidates.push(unhex32(value).ok_or(SignatureError::Malformed)?),
            // Other schemes are for other versions of the scheme; ignoring them is what lets a
            // sender add one without breaking receivers.
            _ => {}
        }
    }
    match t {
        Some(t) if !candidates.is_empty() => Ok((t, candidates)),
        _ => Err(SignatureError::Malformed),
    }
}

fn mac_over(secret: &SecretString, unix_secs: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of every length (RFC 2104 hashes long ones); this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable_mac());
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[allow(clippy::panic, reason = "HMAC-SHA256 takes keys of every length; this is never reached")]
fn unreachable_mac() -> Hmac<Sha256> {
    panic!("HMAC rejected a key")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

/// 64 hex digits (either case) as 32 bytes.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW_SECS: i64 = 1_700_000_000;
    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    fn secret() -> SecretString {
        SecretString::from("whsec-test-secret-0123456789abcdef")
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(NOW_SECS * 1000)
    }

    #[test]
    fn a_signed_body_verifies_and_a_tampered_body_does_not() {
        let body = br#"{"kind":"credential_stuffing"}"#;
        let header = signature_header(&secret(), NOW_SECS, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(verify_signature(&secret(), &header, body, now(), FIVE_MINUTES), Ok(()));
        assert_eq!(
            verify_signature(&secret(), &header, br#"{"kind":"credential_stuffinG"}"#, now(), FIVE_MINUTES),
            Err(SignatureError::Mismatch)
        );
        let other = SecretString::from("another-secret-0123456789abcdef0123");
        assert_eq!(
            verify_signature(&other, &header, body, now(), FIVE_MINUTES),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_timestamp_is_bound_into_the_mac_and_checked_against_the_tolerance() {
        let body = b"{}";
        let header = signature_header(&secret(), NOW_SECS, body);
        let later = now().plus_millis(301_000);
        assert_eq!(
            verify_signature(&secret(), &header, body, later, FIVE_MINUTES),
            Err(SignatureError::OutsideTolerance)
        );
        let earlier = now().plus_millis(-301_000);
        assert_eq!(
            verify_signature(&secret(), &header, body, earlier, FIVE_MINUTES),
            Err(SignatureError::OutsideTolerance),
            "a timestamp from the future is refused too"
        );
        assert_eq!(
            verify_signature(&secret(), &header, body, now().plus_millis(300_000), FIVE_MINUTES),
            Ok(())
        );
        // Moving `t` to a fresh value without the secret breaks the MAC.
        let replayed = header.replace("t=1700000000", "t=1700000600");
        assert_eq!(
            verify_signature(&secret(), &replayed, body, now().plus_millis(600_000), FIVE_MINUTES),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_mac_matches_an_independent_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?". Our signed payload is
        // "<t>.<body>", so t = "what do ya want for nothing?" cannot be expressed; instead check the
        // composition against ring's HMAC directly.
        let body = b"what do ya want for nothing?";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let expected = ring::hmac::sign(&key, b"1700000000.what do ya want for nothing?");
        let header = signature_header(&SecretString::from("Jefe"), NOW_SECS, body);
        assert_eq!(header, format!("t=1700000000,v1={}", hex(expected.as_ref())));
    }

    #[test]
    fn any_matching_v1_is_enough_and_unknown_schemes_are_ignored() {
        let body = b"{}";
        let good = signature_header(&secret(), NOW_SECS, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={NOW_SECS}, v0=abc, v1={}, v1={v1}", "0".repeat(64));
        assert_eq!(verify_signature(&secret(), &header, body, now(), FIVE_MINUTES), Ok(()));
        let upper = format!("t={NOW_SECS},v1={}", v1.to_ascii_uppercase());
        assert_eq!(verify_signature(&secret(), &upper, body, now(), FIVE_MINUTES), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v1 = "a".repeat(64);
        for header in [
            String::new(),
            "t=1700000000".into(),
            format!("v1={v1}"),
            format!("t=1700000000,t=1700000000,v1={v1}"),
            format!("t=-1700000000,v1={v1}"),
            format!("t=17e8,v1={v1}"),
            format!("t=1700000000,v1={}", "a".repeat(63)),
            format!("t=1700000000,v1={}", "g".repeat(64)),
            format!("t=1700000000;v1={v1}"),
            format!("t=99999999999999999999,v1={v1}"),
            format!("t=1700000000,v1={v1},{}", "x=y,".repeat(300)),
        ] {
            assert_eq!(
                verify_signature(&secret(), &header, b"{}", now(), FIVE_MINUTES),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_never_verify(header in "\\PC{0,200}", body in ".{0,64}") {
            prop_assert!(verify_signature(&secret(), &header, body.as_bytes(), now(), FIVE_MINUTES).is_err());
        }

        #[test]
        fn near_miss_headers_never_verify(t in 0i64..4_000_000_000, digits in "[0-9a-fA-F]{64}") {
            let header = format!("t={t},v1={digits}");
            let result = verify_signature(&secret(), &header, b"{}", Timestamp::from_unix_millis(t * 1000), FIVE_MINUTES);
            prop_assert_eq!(result, Err(SignatureError::Mismatch));
        }

        #[test]
        fn every_signature_we_make_verifies(t in 0i64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let header = signature_header(&secret(), t, &body);
            let now = Timestamp::from_unix_millis(t * 1000);
            prop_assert_eq!(verify_signature(&secret(), &header, &body, now, FIVE_MINUTES), Ok(()));
        }
    }
}
