//! Fuzzes `DisplayName::parse`, which normalizes the names people give themselves (NFC, trimmed,
//! 1 to 64 characters, no control, bidi or invisible formatting characters).
//!
//! Invariants: no panic; an accepted name parses again to itself (it is stored in its one normal
//! spelling); it has 1 to 64 characters, is in NFC, has no surrounding whitespace, and holds no control
//! character (C0, DEL, C1, CR, LF), line or paragraph separator, or bidi control (U+202A–U+202E
//! embeddings and overrides, U+2066–U+2069 isolates, U+200E/U+200F/U+061C marks). A refusal's
//! message never repeats the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::DisplayName;

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

const MESSAGES: &[&str] = &[
    "must be 1 to 64 characters",
    "must not contain control, text-direction or invisible formatting characters",
];

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let name = match DisplayName::parse(input) {
        Ok(name) => name,
        Err(error) => {
            let message = error.to_string();
            assert!(MESSAGES.contains(&message.as_str()), "unexpected wording: {message:?}");
            return;
        }
    };
    let text = name.as_str();

    let count = text.chars().count();
    assert!((1..=64).contains(&count), "accepted {count} characters: {text:?}");
    if let Some(c) = text.chars().find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) {
        panic!("accepted control character {c:?} in {text:?}");
    }
    if let Some(c) = text.chars().find(|c| is_bidi_control(*c)) {
        panic!("accepted bidi control {c:?} in {text:?}");
    }
    assert_eq!(text, text.trim(), "surrounding whitespace kept: {text:?}");
    assert!(unicode_normalization::is_nfc(text), "not in NFC: {text:?} (from {input:?})");

    match DisplayName::parse(text) {
        Ok(again) => assert_eq!(again, name, "normalizing is not idempotent: {input:?}"),
        Err(error) => panic!("the normalized {text:?} (from {input:?}) does not parse: {error}"),
    }
});
