//! Fuzzes `Email::parse`, which normalizes the addresses people sign up and log in with: a dot-atom
//! local part kept as typed, one `@`, and a domain UTS #46 maps to lower-case ASCII.
//!
//! Invariants: no panic; an accepted address parses again to itself, with the same spelling and the
//! same uniqueness key (normalizing is idempotent, so a stored address always matches its account);
//! it is at most 254 octets with a local part of at most 64, has exactly one `@` and an ASCII,
//! lower-case domain of two or more labels, and holds no control character, whitespace (CR and LF
//! included: they would inject mail headers) or bidi control. A refusal's message never repeats the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::Email;

/// Bidi controls (UAX #9): embeddings and overrides, isolates, and the implicit marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The fixed wording of `EmailError`; a message outside this list could be carrying input.
const MESSAGES: &[&str] = &[
    "must be an email address like name@example.com",
    "must have at most 64 bytes before the @",
    "must be at most 254 bytes long",
    "must end in a domain name like example.com",
];

fuzz_target!(|data: &[u8]| {
    // Form fields and JSON strings are text; other bytes never reach the parser.
    let Ok(input) = std::str::from_utf8(data) else { return };
    let email = match Email::parse(input) {
        Ok(email) => email,
        Err(error) => {
            let message = error.to_string();
            assert!(MESSAGES.contains(&message.as_str()), "unexpected wording: {message:?}");
            return;
        }
    };
    let address = email.as_str();

    assert!(address.len() <= 254, "accepted {} octets: {address:?}", address.len());
    assert!(email.local_part().len() <= 64, "local part over 64 octets: {address:?}");
    assert_eq!(address.matches('@').count(), 1, "not exactly one @: {address:?}");
    assert_eq!(address, format!("{}@{}", email.local_part(), email.domain()));
    assert!(!email.local_part().is_empty(), "empty local part: {address:?}");
    let domain = email.domain();
    assert!(domain.is_ascii(), "domain not ASCII: {address:?}");
    assert_eq!(domain, domain.to_ascii_lowercase(), "domain not lower-case: {address:?}");
    assert!(domain.split('.').count() >= 2, "single-label domain: {address:?}");
    assert!(domain.split('.').all(|label| !label.is_empty()), "empty domain label: {address:?}");
    if let Some(c) = address.chars().find(|c| c.is_control() || c.is_whitespace() || is_bidi_control(*c)) {
        panic!("accepted {c:?} in {address:?}");
    }
    // The accepted spelling is the input without its surrounding whitespace, apart from the domain.
    assert!(input.trim().starts_with(email.local_part()), "the local part changed: {input:?} -> {address:?}");

    match Email::parse(address) {
        Ok(again) => {
            assert_eq!(again.as_str(), address, "normalizing is not idempotent: {input:?}");
            assert_eq!(again.key(), email.key(), "the key changed on reparsing: {input:?}");
            assert_eq!(again, email);
        }
        Err(error) => panic!("the normalized {address:?} (from {input:?}) does not parse: {error}"),
    }
});
