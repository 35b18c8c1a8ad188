//! The password policy (NIST SP 800-63B-4 §3.1.1.2, ASVS V6.2): length, strength, and no reuse of the
//! account's own identifiers.
//!
//! Passwords are NFKC-normalized before they are checked or hashed (SP 800-63B-4 §3.1.1.2 allows NFKC
//! or NFKD), and lengths count Unicode code points, not bytes. There are no composition rules (ASVS
//! V6.2.5); instead a password is refused when it contains the email's local part or the display name
//! (ASVS V6.2.11) or when zxcvbn, fed the same identifiers, estimates it easy to guess (ASVS V6.2.4).

use unicode_normalization::UnicodeNormalization;

use crate::{DisplayName, Email};

/// Identifiers shorter than this are not searched for in a password: a one- or two-letter local part
/// such as `a@example.com` would otherwise refuse every password containing that letter.
const MIN_IDENTIFIER_CHARS: usize = 3;

/// Which rule a password broke. Messages name the rule and never repeat the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRule {
    #[error("must be at least {min} characters")]
    TooShort { min: usize },
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("is too easy to guess; use a longer phrase of unrelated words")]
    TooWeak,
    #[error("must not contain the email address")]
    ContainsEmail,
    #[error("must not contain the display name")]
    ContainsDisplayName,
    /// Applied by the application while bcrypt hashes passwords: bcrypt reads only the first 72 bytes,
    /// and ASVS V6.2.8 forbids truncating silently.
    #[error("must be at most 72 bytes while bcrypt is the password algorithm")]
    TooLongForBcrypt,
}

/// The configurable part of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length in characters (8 by default; 15 recommended by NIST for single-factor use).
    pub min_chars: usize,
    /// Maximum length in characters (128): long enough for passphrases, short enough to bound hashing.
    pub max_chars: usize,
    /// Minimum zxcvbn score, 0 to 4; 3 means more than 10^8 estimated guesses. zxcvbn estimates a
    /// password with no known pattern at 10^length guesses, so at 3 the shortest accepted password has
    /// 9 characters whatever `min_chars` says.
    pub min_strength: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 8, max_chars: 128, min_strength: 3 }
    }
}

/// Unicode-normalizes a password (NFKC) so the same password typed on two keyboards hashes alike.
pub fn normalize_password(raw: &str) -> String {
    raw.nfkc().collect()
}

impl PasswordPolicy {
    /// Checks an already normalized password against every rule; the first broken one is returned.
    ///
    /// The order is length, then identifiers, then strength, so the cheap checks run first and zxcvbn,
    /// which is slow on long input, never sees more than `max_chars` characters.
    pub fn check(
        &self,
        password: &str,
        email: &Email,
        display_name: Option<&DisplayName>,
    ) -> Result<(), PasswordRule> {
        self.check_with(password, Some(email), display_name)
    }

    /// [`PasswordPolicy::check`] when the email is not known to be valid (a signup whose address is
    /// itself refused): every rule but the email one still applies, so all problems are reported at once.
    pub fn check_with(
        &self,
        password: &str,
        email: Option<&Email>,
        display_name: Option<&DisplayName>,
    ) -> Result<(), PasswordRule> {
        // SP 800-63B-4 §3.1.1.2: each Unicode code point counts as one character.
        let count = password.chars().count();
        if count < self.min_chars {
            return Err(PasswordRule::TooShort { min: self.min_chars });
        }
        if count > self.max_chars {
            return Err(PasswordRule::TooLong { max: self.max_chars });
        }

        let lower = password.to_lowercase();
        let local = email.map(|e| identifier(e.local_part())).unwrap_or_default();
        if contains_identifier(&lower, &local) {
            return Err(PasswordRule::ContainsEmail);
        }
        let name = display_name.map(|name| identifier(name.as_str()));
        if let Some(name) = &name
            && contains_identifier(&lower, name)
        {
            return Err(PasswordRule::ContainsDisplayName);
        }

        let inputs = user_inputs(&local, name.as_deref(), email.map_or("", |e| e.domain()));
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let score = u8::from(zxcvbn::zxcvbn(password, &inputs).score());
        if score < self.min_strength {
            return Err(PasswordRule::TooWeak);
        }
        Ok(())
    }
}

/// An identifier in the form passwords are compared in: NFKC like the password, then lower-cased.
fn identifier(text: &str) -> String {
    normalize_password(text).to_lowercase()
}

fn contains_identifier(lower_password: &str, identifier: &str) -> bool {
    identifier.chars().count() >= MIN_IDENTIFIER_CHARS && lower_password.contains(identifier)
}

/// The words zxcvbn treats as already known to an attacker: the local part, the display name, and
/// the words of each (`alice.smith` gives `alice` and `smith`), plus the domain's labels in Unicode
/// form, leaving out the top-level one. Without the Public Suffix List the organization's own label
/// cannot be told from a registry's (`example.co.uk`), so every label but the last is given.
fn user_inputs(local: &str, name: Option<&str>, ascii_domain: &str) -> Vec<String> {
    let (unicode_domain, decoded) = idna::domain_to_unicode(ascii_domain);
    let domain = if decoded.is_ok() { unicode_domain } else { ascii_domain.to_owned() };
    let domain_labels = domain.rsplit_once('.').map_or("", |(labels, _tld)| labels);

    let mut inputs: Vec<String> = Vec::new();
    for whole in [Some(local), name, Some(domain_labels)].into_iter().flatten() {
        let words = whole.split(|c: char| !c.is_alphanumeric());
        for word in std::iter::once(whole).chain(words) {
            if word.chars().count() >= MIN_IDENTIFIER_CHARS && !inputs.iter().any(|known| known == word) {
                inputs.push(word.to_owned());
            }
        }
    }
    inputs
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn email(address: &str) -> Email {
        Email::parse(address).unwrap()
    }

    fn name(text: &str) -> DisplayName {
        DisplayName::parse(text).unwrap()
    }

    fn check(password: &str) -> Result<(), PasswordRule> {
        PasswordPolicy::default().check(password, &email("user@example.com"), None)
    }

    #[test]
    fn the_default_policy_is_8_to_128_characters_and_score_3() {
        let policy = PasswordPolicy::default();
        assert_eq!((policy.min_chars, policy.max_chars, policy.min_strength), (8, 128, 3));
    }

    #[test]
    fn a_password_shorter_than_the_minimum_is_refused() {
        assert_eq!(check("Xy7$kq!"), Err(PasswordRule::TooShort { min: 8 }));
        assert_eq!(check(""), Err(PasswordRule::TooShort { min: 8 }));
    }

    #[test]
    fn a_password_longer_than_the_maximum_is_refused() {
        let password = "Vq8!rT2#".repeat(16) + "x";
        assert_eq!(password.chars().count(), 129);
        assert_eq!(check(&password), Err(PasswordRule::TooLong { max: 128 }));
    }

    #[test]
    fn a_very_long_password_is_refused_by_length_before_strength_is_estimated() {
        assert_eq!(check(&"a".repeat(100_000)), Err(PasswordRule::TooLong { max: 128 }));
    }

    #[test]
    fn exactly_the_minimum_length_is_accepted_when_strong_enough() {
        // zxcvbn rates no 8-character password above 2 (at most 10^8 guesses), so at the default
        // minimum strength of 3 the shortest accepted random password has 9 characters.
        let password = "qG7#vX2!";
        assert_eq!(check(password), Err(PasswordRule::TooWeak));
        let score_2 = PasswordPolicy { min_strength: 2, ..PasswordPolicy::default() };
        assert_eq!(score_2.check(password, &email("user@example.com"), None), Ok(()));
        assert_eq!(check("qG7#vX2!m"), Ok(()));
    }

    #[test]
    fn exactly_the_maximum_length_is_accepted_when_strong() {
        let password: String = "umbrella quartz lantern meadow cobalt thistle orbit falcon "
            .repeat(3)
            .chars()
            .take(128)
            .collect();
        assert_eq!(password.chars().count(), 128);
        assert_eq!(check(&password), Ok(()));
    }

    #[test]
    fn a_common_password_is_too_weak() {
        for password in ["password123", "password", "qwertyuiop", "iloveyou1", "11111111", "P@ssw0rd1"] {
            assert_eq!(check(password), Err(PasswordRule::TooWeak), "{password}");
        }
    }

    #[test]
    fn a_strong_passphrase_is_accepted() {
        assert_eq!(check("velvet otter migrates at dusk"), Ok(()));
        assert_eq!(check("correct horse battery staple"), Ok(()));
    }

    #[test]
    fn a_password_containing_the_local_part_is_refused() {
        let policy = PasswordPolicy::default();
        let email = email("Carol.Jones@example.com");
        let result = policy.check("zebra-CAROL.JONES-quartz-91", &email, None);
        assert_eq!(result, Err(PasswordRule::ContainsEmail));
    }

    #[test]
    fn a_local_part_shorter_than_three_characters_is_not_searched_for() {
        let policy = PasswordPolicy::default();
        assert_eq!(policy.check("velvet otter migrates at dusk", &email("at@example.com"), None), Ok(()));
    }

    #[test]
    fn a_password_containing_the_display_name_is_refused_whatever_its_case() {
        let policy = PasswordPolicy::default();
        let name = name("Ferris Crab");
        let result = policy.check("zebra FERRIS CRAB quartz 91", &email("user@example.com"), Some(&name));
        assert_eq!(result, Err(PasswordRule::ContainsDisplayName));
    }

    #[test]
    fn a_display_name_shorter_than_three_characters_is_not_searched_for() {
        let policy = PasswordPolicy::default();
        let name = name("at");
        assert_eq!(
            policy.check("velvet otter migrates at dusk", &email("user@example.com"), Some(&name)),
            Ok(())
        );
    }

    #[test]
    fn the_words_of_the_identifiers_make_a_password_weak() {
        let policy = PasswordPolicy::default();
        let password = "vandermeerquintessa";
        let stranger = policy.check(password, &email("user@example.com"), None);
        let owner = policy.check(password, &email("quintessa.vandermeer@example.com"), None);
        assert_eq!((stranger, owner), (Ok(()), Err(PasswordRule::TooWeak)));
    }

    #[test]
    fn the_domain_name_makes_a_password_weak() {
        let policy = PasswordPolicy::default();
        let password = "zorblatticazorblattica";
        let stranger = policy.check(password, &email("user@example.com"), None);
        let owner = policy.check(password, &email("user@mail.zorblattica.com"), None);
        assert_eq!((stranger, owner), (Ok(()), Err(PasswordRule::TooWeak)));
    }

    #[test]
    fn length_is_checked_before_identifiers_and_identifiers_before_strength() {
        let policy = PasswordPolicy::default();
        let carol = email("carol@example.com");
        assert_eq!(policy.check("carol", &carol, None), Err(PasswordRule::TooShort { min: 8 }));
        assert_eq!(policy.check("carol123", &carol, None), Err(PasswordRule::ContainsEmail));
        let name = name("carol");
        let user = email("user@example.com");
        assert_eq!(policy.check("carol123", &user, Some(&name)), Err(PasswordRule::ContainsDisplayName));
    }

    #[test]
    fn nfkc_makes_full_width_letters_plain_ones() {
        assert_eq!(normalize_password("ｐａｓｓｗｏｒｄ"), "password");
        assert_eq!(check(&normalize_password("ｐａｓｓｗｏｒｄ１２３")), Err(PasswordRule::TooWeak));
    }

    #[test]
    fn nfkc_joins_composed_and_decomposed_spellings() {
        assert_eq!(normalize_password("Jose\u{301}"), normalize_password("Jos\u{e9}"));
        assert_eq!(normalize_password("ﬁ"), "fi");
    }

    #[test]
    fn identifiers_are_compared_after_nfkc_too() {
        let policy = PasswordPolicy::default();
        let name = name("Ｆｅｒｒｉｓ");
        let result = policy.check("zebra ferris quartz 91", &email("user@example.com"), Some(&name));
        assert_eq!(result, Err(PasswordRule::ContainsDisplayName));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let any_strength = PasswordPolicy { min_strength: 0, ..PasswordPolicy::default() };
        let user = email("user@example.com");
        // Seven emoji are 28 bytes but 7 characters.
        assert_eq!(any_strength.check("🦀🔥🐉🌊🎸🍕🚀", &user, None), Err(PasswordRule::TooShort { min: 8 }));
        assert_eq!(any_strength.check("🦀🔥🐉🌊🎸🍕🚀🌵", &user, None), Ok(()));
        // 128 Cyrillic letters are 256 bytes and still within the maximum.
        assert_eq!(any_strength.check(&"ж".repeat(128), &user, None), Ok(()));
        assert_eq!(
            any_strength.check(&"ж".repeat(129), &user, None),
            Err(PasswordRule::TooLong { max: 128 })
        );
    }

    #[test]
    fn a_non_latin_passphrase_is_accepted() {
        assert_eq!(check("синий трактор едет домой"), Ok(()));
    }

    #[test]
    fn messages_name_the_rule_and_never_the_password() {
        let policy = PasswordPolicy::default();
        let user = email("zqxj@example.com");
        for password in ["zqxj", "password-zqxj", "zqxjzqxjzqxj"] {
            let message = policy.check(password, &user, None).unwrap_err().to_string();
            assert!(!message.contains("zqxj"), "{message}");
        }
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent(raw in any::<String>()) {
            let once = normalize_password(&raw);
            prop_assert_eq!(normalize_password(&once), once);
        }

        #[test]
        fn a_password_outside_the_length_bounds_is_refused_for_its_length(password in any::<String>()) {
            let policy = PasswordPolicy { min_chars: 4, max_chars: 12, min_strength: 0 };
            let count = password.chars().count();
            let result = policy.check(&password, &email("user@example.com"), None);
            if count < 4 {
                prop_assert_eq!(result, Err(PasswordRule::TooShort { min: 4 }));
            } else if count > 12 {
                prop_assert_eq!(result, Err(PasswordRule::TooLong { max: 12 }));
            } else {
                let length_error = matches!(result, Err(PasswordRule::TooShort { .. } | PasswordRule::TooLong { .. }));
                prop_assert!(!length_error);
            }
        }

        #[test]
        fn a_password_with_the_local_part_inside_is_always_refused(
            before in "[a-z0-9 ]{5,20}",
            local in "[a-z]{3,12}",
            after in "[a-z0-9 ]{0,20}",
        ) {
            let password = format!("{before}{}{after}", local.to_uppercase());
            let result = PasswordPolicy::default().check(&password, &email(&format!("{local}@example.com")), None);
            prop_assert_eq!(result, Err(PasswordRule::ContainsEmail));
        }
    }
}
