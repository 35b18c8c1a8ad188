//! Fuzzes the authorization model's parsers and decision: `Permission::parse` and `parse_concrete`
//! over arbitrary text, and `decide` over arbitrary grants.
//!
//! Invariants: no panic; an accepted permission prints back to the text it came from; a concrete
//! permission has no wildcard; `*:*` implies every concrete permission and a concrete permission
//! implies exactly itself; `decide` allows only through a grant that implies the question at a scope
//! that covers the resource (deny by default), and an empty grant list allows nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::{Grant, Permission, Resource, Scope, UserId, decide};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    // The first line is the question; the others are grants, `!` marking an own-scoped one.
    let mut lines = input.lines();
    let question = lines.next().unwrap_or_default();
    let grants: Vec<Grant> = lines
        .filter_map(|line| {
            let (scope, text) = match line.strip_prefix('!') {
                Some(rest) => (Scope::Own, rest),
                None => (Scope::System, line),
            };
            let permission = Permission::parse(text).ok()?;
            assert_eq!(permission.to_string(), text, "a permission does not print back");
            Some(Grant { permission, scope })
        })
        .collect();
    if let Ok(permission) = Permission::parse(question) {
        assert_eq!(permission.to_string(), question);
    }
    let Ok(wanted) = Permission::parse_concrete(question) else { return };
    assert!(!question.contains('*'), "a concrete permission holds a wildcard: {question:?}");
    assert!(Permission::parse("*:*").unwrap().implies(&wanted));
    assert!(wanted.implies(&wanted));

    let me = UserId::from_random_bytes([1; 16]);
    let other = UserId::from_random_bytes([2; 16]);
    for resource in [
        Resource { owner: Some(me), organization: None },
        Resource { owner: Some(other), organization: None },
        Resource::default(),
    ] {
        let decision = decide(&grants, me, &wanted, &resource);
        let expected = grants.iter().any(|g| {
            g.permission.implies(&wanted) && (g.scope == Scope::System || resource.owner == Some(me))
        });
        assert_eq!(decision.allowed, expected, "{question:?} over {resource:?} with {grants:?}");
    }
    assert!(
        !decide(&[], me, &wanted, &Resource { owner: Some(me), organization: None }).allowed,
        "allowed with no grant"
    );
});
