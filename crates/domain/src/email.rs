//! Email addresses as identities: one normalized spelling, compared case-insensitively.
//!
//! Accepted is the conservative core of the standards: a dot-atom local part (RFC 5322 §3.2.3, with the
//! UTF-8 letters RFC 6531 §3.3 adds), one `@`, and a domain name of two or more labels that UTS #46
//! maps to ASCII (IDNA, RFC 5890). Quoted local parts, comments, IP literals, single-label domains,
//! whitespace, control, bidi and invisible characters are refused: they are legal somewhere in the
//! RFCs but serve no account holder and have served header injection and look-alike accounts.
//!
//! The stored spelling keeps the local part as typed (RFC 5321 §2.4: only the receiving host may
//! interpret its case) and writes the domain as lower-case A-labels. Uniqueness is decided by
//! [`Email::key`], which also folds the local part's case and width, so `Alice@Example.com`,
//! `alice@example.com` and `ａｌｉｃｅ@example.com` are one account.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

use crate::display_name::is_default_ignorable;

/// RFC 5321 §4.5.3.1.1: at most 64 octets before the `@`.
const MAX_LOCAL_OCTETS: usize = 64;

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets, so an address is at
/// most 254 (RFC 3696 erratum 1690).
const MAX_ADDRESS_OCTETS: usize = 254;

/// Bounds the work done on hostile input before IDNA runs. Well above the real limits, which are
/// checked after mapping, because UTS #46 and NFC can shrink full-width or decomposed text several
/// times over.
const MAX_INPUT_OCTETS: usize = 16 * MAX_ADDRESS_OCTETS;

/// The ASCII `atext` specials of RFC 5322 §3.2.3, besides letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// A syntactically valid, normalized email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    address: String,
    at: usize,
}

/// Why text is not an acceptable email address. Messages never repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Not one `local@domain` made of allowed characters.
    #[error("must be an email address like name@example.com")]
    Invalid,
    /// The part before the `@` is over RFC 5321's 64 octets.
    #[error("must have at most 64 bytes before the @")]
    LocalPartTooLong,
    /// The whole address is over RFC 5321's 254 octets.
    #[error("must be at most 254 bytes long")]
    TooLong,
    /// The part after the `@` is not a domain name that can receive mail for an account.
    #[error("must end in a domain name like example.com")]
    Domain,
}

impl Email {
    /// Normalizes and validates user input.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let trimmed = input.trim();
        if trimmed.len() > MAX_INPUT_OCTETS {
            return Err(EmailError::TooLong);
        }
        // Checked over the whole input, domain included, before anything maps it: CR/LF would inject
        // mail headers (ASVS V1.3.11) and invisible or bidi characters make look-alike accounts.
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control() || is_default_ignorable(c)) {
            return Err(EmailError::Invalid);
        }
        // `@` is not atext, so a second one lands in the local part and is refused there.
        let (local, domain) = trimmed.rsplit_once('@').ok_or(EmailError::Invalid)?;
        check_local_part(local)?;
        let domain = ascii_domain(domain)?;
        let address = format!("{local}@{domain}");
        if address.len() > MAX_ADDRESS_OCTETS {
            return Err(EmailError::TooLong);
        }
        Ok(Self { address, at: local.len() })
    }

    /// The normalized address, as stored and as mail is sent to.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The uniqueness key: the whole address case-folded.
    ///
    /// The local part is put in NFKC, lower-cased with Unicode rules and normalized again, so that
    /// spellings a reader cannot tell apart are one account: case, canonically equivalent sequences
    /// (RFC 6532 §3.1) and full-width or other compatibility forms (NFKC includes the width mapping of
    /// RFC 8265 §3.3, the PRECIS profile for case-insensitive user names). The domain is already folded by UTS #46.
    pub fn key(&self) -> String {
        let lowered = self.local_part().nfkc().collect::<String>().to_lowercase();
        let mut key: String = lowered.nfkc().collect();
        key.push('@');
        key.push_str(self.domain());
        key
    }

    /// The part before the `@`, as typed.
    pub fn local_part(&self) -> &str {
        &self.address[..self.at]
    }

    /// The part after the `@`: lower-case, ASCII (A-labels for internationalized names).
    pub fn domain(&self) -> &str {
        &self.address[self.at + 1..]
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// A dot-atom (RFC 5322 §3.2.3): atoms of atext joined by single dots. Beyond ASCII, RFC 6531 §3.3
/// allows any UTF-8; only letters, digits and their combining marks are taken, minus the invisible
/// ones, so a local part cannot hide symbols, spaces or format characters.
fn check_local_part(local: &str) -> Result<(), EmailError> {
    if local.is_empty() {
        return Err(EmailError::Invalid);
    }
    if local.len() > MAX_LOCAL_OCTETS {
        return Err(EmailError::LocalPartTooLong);
    }
    if local.split('.').any(|atom| atom.is_empty() || !atom.chars().all(is_atext)) {
        return Err(EmailError::Invalid);
    }
    Ok(())
}

fn is_atext(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c)
    } else {
        (c.is_alphanumeric() || unicode_normalization::char::is_combining_mark(c)) && !is_default_ignorable(c)
    }
}

/// Maps the domain to lower-case ASCII with UTS #46 in its strict form: STD3 rules (letters, digits,
/// hyphens only, which also refuses IP literals in brackets), no leading or trailing hyphen, and the
/// DNS lengths (labels of 1 to 63 octets, at most 253 in all, no trailing root dot).
fn ascii_domain(domain: &str) -> Result<String, EmailError> {
    let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| EmailError::Domain)?.to_ascii_lowercase();
    // A single label (`localhost`, a bare TLD) names no public mail host an account could verify.
    let Some((_, tld)) = ascii.rsplit_once('.') else {
        return Err(EmailError::Domain);
    };
    // RFC 3696 §2: a top-level domain is never all-numeric, which refuses dotted-quad IP addresses.
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EmailError::Domain);
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parsed(input: &str) -> Email {
        Email::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse, got {e:?}"))
    }

    #[test]
    fn a_plain_address_is_kept_as_typed() {
        let email = parsed("alice@example.com");
        assert_eq!(email.as_str(), "alice@example.com");
        assert_eq!(email.local_part(), "alice");
        assert_eq!(email.domain(), "example.com");
        assert_eq!(email.to_string(), "alice@example.com");
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(parsed("  alice@example.com\t\n").as_str(), "alice@example.com");
    }

    #[test]
    fn the_domain_is_lower_cased_and_the_local_part_kept() {
        let email = parsed("Alice@Example.COM");
        assert_eq!(email.as_str(), "Alice@example.com");
        assert_eq!(email.local_part(), "Alice");
    }

    #[test]
    fn addresses_differing_only_in_case_share_a_key() {
        let upper = parsed("Alice@Example.com");
        let lower = parsed("alice@example.com");
        assert_ne!(upper, lower);
        assert_eq!(upper.key(), lower.key());
        assert_eq!(upper.key(), "alice@example.com");
    }

    #[test]
    fn a_unicode_local_part_is_case_folded_in_the_key() {
        assert_eq!(parsed("ÉLODIE@example.com").key(), parsed("élodie@example.com").key());
    }

    #[test]
    fn canonically_equivalent_local_parts_share_a_key() {
        let composed = parsed("jos\u{e9}@example.com");
        let decomposed = parsed("jose\u{301}@example.com");
        assert_eq!(composed.key(), decomposed.key());
    }

    #[test]
    fn a_full_width_local_part_shares_a_key_with_its_ascii_spelling() {
        let full_width = parsed("ａｌｉｃｅ@example.com");
        assert_eq!(full_width.local_part(), "ａｌｉｃｅ");
        assert_eq!(full_width.key(), parsed("Alice@example.com").key());
    }

    #[test]
    fn an_internationalized_domain_is_stored_as_lower_case_punycode() {
        assert_eq!(parsed("user@Bücher.example").as_str(), "user@xn--bcher-kva.example");
        assert_eq!(parsed("user@XN--BCHER-KVA.example").as_str(), "user@xn--bcher-kva.example");
    }

    #[test]
    fn sharp_s_in_a_domain_is_kept_distinct_from_ss() {
        // UTS #46 nontransitional processing (IDNA2008) keeps ß, which IDNA2003 mapped to "ss".
        assert_eq!(parsed("user@Straße.example").as_str(), "user@xn--strae-oqa.example");
        assert_ne!(parsed("user@straße.example").key(), parsed("user@strasse.example").key());
    }

    #[test]
    fn full_width_domain_characters_map_to_ascii() {
        assert_eq!(parsed("user@ＥＸＡＭＰＬＥ．com").as_str(), "user@example.com");
    }

    #[test]
    fn a_utf8_local_part_of_letters_is_accepted() {
        assert_eq!(parsed("用户@例子.广告").as_str(), "用户@xn--fsqu00a.xn--4rr70v");
        assert_eq!(parsed("अजय@example.com").local_part(), "अजय");
        assert_eq!(parsed("Pelé.O'Neil+tag@example.com").local_part(), "Pelé.O'Neil+tag");
    }

    #[test]
    fn every_rfc_5322_atext_special_is_accepted() {
        assert!(Email::parse("!#$%&'*+-/=?^_`{|}~@example.com").is_ok());
    }

    #[test]
    fn the_length_limits_are_inclusive() {
        let local = "a".repeat(64);
        assert!(Email::parse(&format!("{local}@example.com")).is_ok());
        // 64 + 1 + 189 = 254 octets, with labels of at most 63.
        let domain = format!("{}.{}.{}.com", "b".repeat(63), "c".repeat(63), "d".repeat(57));
        let address = format!("{local}@{domain}");
        assert_eq!(address.len(), 254);
        assert_eq!(parsed(&address).as_str(), address);
    }

    #[test]
    fn a_local_part_over_64_octets_is_refused() {
        let local = "a".repeat(65);
        assert_eq!(Email::parse(&format!("{local}@example.com")), Err(EmailError::LocalPartTooLong));
        // 22 three-octet letters are 66 octets though only 22 characters.
        let local = "用".repeat(22);
        assert_eq!(Email::parse(&format!("{local}@example.com")), Err(EmailError::LocalPartTooLong));
    }

    #[test]
    fn an_address_over_254_octets_is_refused() {
        let domain = format!("{}.{}.{}.com", "b".repeat(63), "c".repeat(63), "d".repeat(58));
        let address = format!("{}@{domain}", "a".repeat(64));
        assert_eq!(Email::parse(&address), Err(EmailError::TooLong));
    }

    #[test]
    fn a_huge_input_is_refused_before_any_mapping() {
        assert_eq!(Email::parse(&"a".repeat(1 << 20)), Err(EmailError::TooLong));
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for input in [
            "",
            "   ",
            "alice",
            "alice.example.com",
            "@example.com",
            "@",
            "a@b@example.com",
            "a@b\"@example.com",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "\"a b\"@example.com",
            "\"alice\"@example.com",
            "alice(comment)@example.com",
            "a\\@b@example.com",
            "<alice@example.com>",
            "Alice <alice@example.com>",
            "alice,bob@example.com",
            "alice;bob@example.com",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@example.com\r\nBcc: b@y.com",
            "alice@example.com\nBcc: b@y.com",
            "alice\r\n@example.com",
            "alice\0@example.com",
            "alice@example.com\0",
            "ali\u{7f}ce@example.com",
            "ali\u{a0}ce@example.com",
            "alice\u{2028}@example.com",
            "😀@example.com",
            "a€b@example.com",
        ] {
            assert_eq!(Email::parse(input), Err(EmailError::Invalid), "{input:?}");
        }
    }

    #[test]
    fn unusable_domains_are_refused() {
        for input in [
            "alice@",
            "a@b",
            "alice@localhost",
            "alice@-example.com",
            "alice@example-.com",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "alice@exa_mple.com",
            "alice@[1.2.3.4]",
            "alice@[IPv6:2001:db8::1]",
            "alice@1.2.3.4",
            "alice@example.123",
            "alice@ab--cd.com",
            "alice@xn--invalid-punycode-.com",
            "alice@example.com:25",
            "alice@example.com/path",
            "alice@example.com(comment)",
        ] {
            assert_eq!(Email::parse(input), Err(EmailError::Domain), "{input:?}");
        }
        let long_label = format!("alice@{}.com", "x".repeat(64));
        assert_eq!(Email::parse(&long_label), Err(EmailError::Domain));
    }

    #[test]
    fn bidi_and_invisible_characters_are_refused_anywhere() {
        for c in ['\u{202e}', '\u{2066}', '\u{200e}', '\u{61c}', '\u{200b}', '\u{200d}', '\u{feff}', '\u{ad}']
        {
            for input in [format!("al{c}ice@example.com"), format!("alice@exa{c}mple.com")] {
                assert_eq!(Email::parse(&input), Err(EmailError::Invalid), "{input:?}");
            }
        }
        // Invisible letters and marks: a Hangul filler and a variation selector.
        for input in ["al\u{3164}ice@example.com", "alice\u{fe0f}@example.com"] {
            assert_eq!(Email::parse(input), Err(EmailError::Invalid), "{input:?}");
        }
    }

    #[test]
    fn error_messages_never_repeat_the_input() {
        for input in [
            "zqxj@zqxj",
            "zqxj..zqxj@example.com",
            &format!("{}@example.com", "zqxj".repeat(20)),
            &format!("zqxj@{}.com", "zqxj.".repeat(60)),
            "zqxj\r\nBcc: zqxj@example.com",
        ] {
            let message = Email::parse(input).map(|_| ()).unwrap_err().to_string();
            assert!(!message.is_empty());
            assert!(!message.contains("zqxj"), "{message}");
        }
    }

    /// Dot-atoms with some Latin-1 letters. ß is left out here and in [`domain`]: its upper case is
    /// "SS", another name rather than another case of the same one.
    fn local_part() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[A-Za-zÀ-ÖØ-Þà-öø-ÿ0-9_-]{1,10}){0,2}"
    }

    fn domain() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]{1,10}(-[A-Za-z0-9]{1,5})?|[a-zäöüé]{1,8})(\\.[A-Za-z]{2,6}){1,3}"
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in any::<String>()) {
            let _ = Email::parse(&input);
        }

        #[test]
        fn normalizing_is_idempotent_and_the_key_is_stable(input in any::<String>()) {
            if let Ok(email) = Email::parse(&input) {
                let again = Email::parse(email.as_str());
                prop_assert_eq!(again.as_ref(), Ok(&email));
                prop_assert_eq!(again.map(|e| e.key()), Ok(email.key()));
            }
        }

        #[test]
        fn well_formed_addresses_parse_idempotently(local in local_part(), domain in domain(), pad in "[ \t]{0,2}") {
            let email = Email::parse(&format!("{pad}{local}@{domain}{pad}"));
            prop_assert!(email.is_ok(), "{:?}", email);
            if let Ok(email) = email {
                prop_assert_eq!(email.local_part(), local.as_str());
                prop_assert!(email.domain().is_ascii());
                prop_assert_eq!(email.domain(), email.domain().to_ascii_lowercase());
                prop_assert_eq!(Email::parse(email.as_str()), Ok(email.clone()));
            }
        }

        #[test]
        fn any_accepted_unicode_domain_normalizes_idempotently(
            local in local_part(),
            domain in "[\\p{L}\\p{N}\\p{S}][\\p{L}\\p{M}\\p{N}\\p{S}-]{0,9}(\\.[\\p{L}\\p{N}]{1,6}){1,2}",
        ) {
            if let Ok(email) = Email::parse(&format!("{local}@{domain}")) {
                prop_assert!(email.domain().is_ascii());
                prop_assert_eq!(Email::parse(email.as_str()), Ok(email.clone()));
            }
        }

        #[test]
        fn case_changes_never_change_the_key(local in local_part(), domain in domain()) {
            let lower = Email::parse(&format!("{local}@{domain}").to_lowercase());
            let upper = Email::parse(&format!("{local}@{domain}").to_uppercase());
            if let (Ok(lower), Ok(upper)) = (lower, upper) {
                prop_assert_eq!(lower.key(), upper.key());
            }
        }

        #[test]
        fn an_accepted_address_is_bounded_and_free_of_unsafe_characters(input in any::<String>()) {
            if let Ok(email) = Email::parse(&input) {
                prop_assert!(email.as_str().len() <= MAX_ADDRESS_OCTETS);
                prop_assert!(email.local_part().len() <= MAX_LOCAL_OCTETS);
                prop_assert_eq!(email.as_str().matches('@').count(), 1);
                prop_assert!(!email.as_str().chars().any(|c| c.is_whitespace() || c.is_control()
                    || is_default_ignorable(c)));
            }
        }

        #[test]
        fn header_injection_is_always_refused(local in local_part(), domain in domain(), tail in "[\r\n]{1,2}[ -~]{0,20}") {
            let input = format!("{local}@{domain}{tail}x");
            prop_assert!(Email::parse(&input).is_err());
        }
    }
}
