//! Fuzzes the API key parser, `parse_api_key`, over arbitrary text, and the narrowing of grants to a
//! key's scopes.
//!
//! Invariants: no panic; an accepted key is exactly `API_KEY_LEN` ASCII characters starting with
//! `pcs_`, and formatting its id with the same secret characters gives a key that parses to the same
//! id; changing any one character of an accepted key makes it refused (the checksum, or the shape,
//! catches every single-character typo); `narrow` never allows what the grants or the scopes do not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::{
    API_KEY_LEN, Grant, Permission, Resource, Scope, UserId, decide, narrow, parse_api_key,
};

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let mut lines = input.lines();
    let first = lines.next().unwrap_or_default();
    if let Ok(key) = parse_api_key(first, digest) {
        assert_eq!(first.len(), API_KEY_LEN);
        assert!(first.is_ascii() && first.starts_with("pcs_"));
        assert_eq!(key.id.as_str(), &first[4..26]);
        // Every single-character change is caught.
        let bytes = first.as_bytes();
        for i in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] = if changed[i] == b'0' { b'1' } else { b'0' };
            if let Ok(text) = std::str::from_utf8(&changed) {
                assert!(parse_api_key(text, digest).is_err(), "a one-character change at {i} passed");
            }
        }
    }
    // The remaining lines: a question, then grants (`!` = own-scoped), then `scope:` lines.
    let Some(question) = lines.next() else { return };
    let Ok(wanted) = Permission::parse_concrete(question) else { return };
    let mut grants = Vec::new();
    let mut scopes = Vec::new();
    for line in lines {
        if let Some(scope) = line.strip_prefix("scope:") {
            if let Ok(scope) = Permission::parse(scope) {
                scopes.push(scope);
            }
            continue;
        }
        let (scope, text) = match line.strip_prefix('!') {
            Some(rest) => (Scope::Own, rest),
            None => (Scope::System, line),
        };
        if let Ok(permission) = Permission::parse(text) {
            grants.push(Grant { permission, scope });
        }
    }
    let me = UserId::from_random_bytes([1; 16]);
    for resource in [Resource { owner: Some(me), organization: None }, Resource::default()] {
        let narrowed = decide(&narrow(&grants, &scopes), me, &wanted, &resource).allowed;
        let expected =
            decide(&grants, me, &wanted, &resource).allowed && scopes.iter().any(|s| s.implies(&wanted));
        assert_eq!(narrowed, expected, "{question:?} with {grants:?} and {scopes:?}");
    }
});
