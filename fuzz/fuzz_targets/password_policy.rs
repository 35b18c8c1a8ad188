//! Fuzzes the password rules: `normalize_password` (NFKC) and `PasswordPolicy::default().check`
//! (length in code points, the email's local part and the display name, zxcvbn) with an arbitrary
//! password, email and display name.
//!
//! The input is `password`, or `password \0 email \0 display name`; an email or name that does not
//! parse is replaced by `user@example.com` or no name, as the use cases would refuse it first. Inputs
//! are cut to 512 bytes: longer passwords are refused for their length before anything else looks.
//!
//! Invariants: no panic; normalizing is idempotent; a password under 8 or over 128 code points is
//! refused for its length; a password holding the local part (3 or more characters, after NFKC and
//! lower-casing) is never accepted; a refusal's message is one of the policy's fixed sentences and so
//! never contains the password. (A password of 4 or more characters that occurs inside a fixed
//! sentence, such as `must`, is exempt from the literal containment check: the sentence says it
//! whatever the password is.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_domain::{DisplayName, Email, PasswordPolicy, PasswordRule, normalize_password};

const MAX_INPUT: usize = 512;

/// Every message the default policy can give (8 and 128 are its bounds).
const MESSAGES: &[&str] = &[
    "must be at least 8 characters",
    "must be at most 128 characters",
    "is too easy to guess; use a longer phrase of unrelated words",
    "must not contain the email address",
    "must not contain the display name",
    "must be at most 72 bytes while bcrypt is the password algorithm",
];

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let raw = parts.next().unwrap_or_default();
    let email = parts
        .next()
        .and_then(|e| Email::parse(e).ok())
        .unwrap_or_else(|| Email::parse("user@example.com").expect("a valid address"));
    let name = parts.next().and_then(|n| DisplayName::parse(n).ok());

    let password = normalize_password(raw);
    assert_eq!(normalize_password(&password), password, "NFKC is not idempotent on {raw:?}");

    let policy = PasswordPolicy::default();
    let result = policy.check(&password, &email, name.as_ref());
    let count = password.chars().count();
    if count < policy.min_chars {
        assert_eq!(result, Err(PasswordRule::TooShort { min: policy.min_chars }), "{password:?}");
    } else if count > policy.max_chars {
        assert_eq!(result, Err(PasswordRule::TooLong { max: policy.max_chars }), "{password:?}");
    }
    let local = normalize_password(email.local_part()).to_lowercase();
    if result.is_ok() && local.chars().count() >= 3 {
        assert!(!password.to_lowercase().contains(&local), "accepted {password:?} holding {local:?}");
    }

    if let Err(rule) = result {
        let message = rule.to_string();
        for pw in [raw, password.as_str()] {
            let ours = MESSAGES.iter().any(|m| m.contains(pw));
            assert!(
                pw.chars().count() < 4 || ours || !message.contains(pw),
                "the message {message:?} repeats the password {pw:?}"
            );
        }
        assert!(MESSAGES.contains(&message.as_str()), "unexpected wording {message:?} for {password:?}");
    }
});
