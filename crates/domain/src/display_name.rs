//! Display names: what people call themselves, made safe to show anywhere.
//!
//! A name is trimmed and put in Unicode Normalization Form C (UAX #15), so one name has one stored
//! spelling, then must be 1 to 64 characters (code points, counted after normalization). Control
//! characters are refused because they inject lines into logs and mail headers (ASVS V1.3.11); bidi
//! controls because they reorder what a reader sees (the "Trojan Source" attack, CVE-2021-42574,
//! UTS #39 §3.1.1); and invisible format characters because they make names that look alike but
//! differ.

use unicode_normalization::UnicodeNormalization;

/// Most characters a name may have, counted after NFC.
const MAX_CHARS: usize = 64;

/// A validated, NFC-normalized display name of 1 to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

/// Why text is not an acceptable display name. Messages never repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayNameError {
    /// Empty after trimming, or over 64 characters after normalization.
    #[error("must be 1 to 64 characters")]
    Length,
    /// Has a control, bidi or invisible formatting character.
    #[error("must not contain control, text-direction or invisible formatting characters")]
    ForbiddenCharacter,
}

impl DisplayName {
    /// Normalizes and validates user input.
    pub fn parse(input: &str) -> Result<Self, DisplayNameError> {
        // Normalize before trimming so that trimming sees the final text; NFC of the trimmed text is
        // then still NFC (whitespace starts no composition), and parsing the result is a no-op.
        let normalized: String = input.nfc().collect();
        let name = normalized.trim();
        let count = name.chars().count();
        if count == 0 || count > MAX_CHARS {
            return Err(DisplayNameError::Length);
        }
        if name.chars().any(is_forbidden) {
            return Err(DisplayNameError::ForbiddenCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Control characters (general category Cc: C0, DEL, C1, including CR, LF, TAB and NEL), the line and
/// paragraph separators, and the invisible characters of [`is_default_ignorable`] except the ones
/// emoji need: variation selectors (U+FE0F picks the emoji form of a symbol) and the tag characters
/// of subdivision flags.
fn is_forbidden(c: char) -> bool {
    let emoji_part =
        matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0020}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}');
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || (is_default_ignorable(c) && !emoji_part)
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt, Unicode 16.0): characters
/// that render as nothing. They include every bidi control (U+061C, U+200E/F, U+202A–E, U+2066–9),
/// the zero-width space and joiners (U+200B–D), the byte order mark (U+FEFF), the soft hyphen and
/// the Hangul fillers used to make blank-looking names.
pub(crate) fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every character the issue names as forbidden.
    const BIDI_AND_INVISIBLE: [char; 21] = [
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}',
        '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{FEFF}',
        '\u{2028}', '\u{2029}', '\u{00AD}', '\u{2060}', '\u{3164}',
    ];

    /// Letters, marks, digits and name punctuation, without the invisible ones; at most 19 code points,
    /// because NFC can turn one code point into up to three (U+FB2C).
    const PLAIN_NAME: &str = "[ ]{0,2}[[\\p{L}\\p{N}]--\\p{Default_Ignorable_Code_Point}][[\\p{L}\\p{M}\\p{N} .'\\-]--\\p{Default_Ignorable_Code_Point}]{0,18}[ ]{0,2}";

    fn parsed(input: &str) -> DisplayName {
        DisplayName::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse, got {e:?}"))
    }

    #[test]
    fn a_name_is_trimmed() {
        assert_eq!(parsed("  Ada Lovelace \t").as_str(), "Ada Lovelace");
    }

    #[test]
    fn a_name_is_stored_in_nfc() {
        assert_eq!(parsed("Jose\u{301}").as_str(), "Jos\u{e9}");
        assert_eq!(parsed("Jose\u{301}"), parsed("Jos\u{e9}"));
    }

    #[test]
    fn names_in_any_script_and_with_emoji_are_accepted() {
        for name in
            ["Zoë", "李小龙", "Ålesund O'Brien-Smith", "محمد", "דוד", "Вера", "🦀 Ferris", "I ❤\u{fe0f} Rust"]
        {
            assert_eq!(parsed(name).as_str(), name);
        }
    }

    #[test]
    fn one_and_sixty_four_characters_are_accepted() {
        assert!(DisplayName::parse("A").is_ok());
        assert!(DisplayName::parse(&"é".repeat(64)).is_ok());
    }

    #[test]
    fn the_length_is_counted_in_characters_after_normalization() {
        // 64 decomposed letters are 128 code points as typed and 64 after NFC.
        assert_eq!(parsed(&"e\u{301}".repeat(64)).as_str().chars().count(), 64);
    }

    #[test]
    fn an_empty_or_blank_name_is_refused() {
        for input in ["", " ", "\t\n", "\u{3000}"] {
            assert_eq!(DisplayName::parse(input), Err(DisplayNameError::Length), "{input:?}");
        }
    }

    #[test]
    fn a_name_over_sixty_four_characters_is_refused() {
        assert_eq!(DisplayName::parse(&"a".repeat(65)), Err(DisplayNameError::Length));
    }

    #[test]
    fn control_characters_are_refused() {
        for input in ["Ada\nLovelace", "Ada\r\nBcc: x@example.com", "Ada\0", "A\tB", "A\u{7f}B", "A\u{85}B"] {
            assert_eq!(DisplayName::parse(input), Err(DisplayNameError::ForbiddenCharacter), "{input:?}");
        }
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_refused() {
        for c in BIDI_AND_INVISIBLE {
            let input = format!("Ada{c}Lovelace");
            assert_eq!(DisplayName::parse(&input), Err(DisplayNameError::ForbiddenCharacter), "{c:?}");
        }
    }

    #[test]
    fn a_right_to_left_override_cannot_hide_at_the_edges() {
        assert_eq!(DisplayName::parse("\u{202E}nimda"), Err(DisplayNameError::ForbiddenCharacter));
        assert_eq!(DisplayName::parse("admin\u{FEFF}"), Err(DisplayNameError::ForbiddenCharacter));
    }

    #[test]
    fn error_messages_never_repeat_the_input() {
        for input in ["zqxj\u{202E}", &"zqxj".repeat(20)] {
            let message = DisplayName::parse(input).map(|_| ()).unwrap_err().to_string();
            assert!(!message.contains("zqxj"), "{message}");
        }
    }

    proptest! {
        #[test]
        fn an_accepted_name_parses_to_itself(input in any::<String>()) {
            if let Ok(name) = DisplayName::parse(&input) {
                prop_assert_eq!(DisplayName::parse(name.as_str()), Ok(name.clone()));
            }
        }

        #[test]
        fn plain_names_are_accepted_and_stable(input in PLAIN_NAME) {
            let name = DisplayName::parse(&input);
            prop_assert!(name.is_ok(), "{:?}", name);
            if let Ok(name) = name {
                prop_assert_eq!(DisplayName::parse(name.as_str()), Ok(name.clone()));
            }
        }

        #[test]
        fn no_accepted_name_has_a_control_or_bidi_character(input in any::<String>()) {
            if let Ok(name) = DisplayName::parse(&input) {
                let count = name.as_str().chars().count();
                prop_assert!((1..=MAX_CHARS).contains(&count));
                prop_assert!(!name.as_str().chars().any(is_forbidden));
                prop_assert!(!name.as_str().chars().any(|c| c.is_control() || BIDI_AND_INVISIBLE.contains(&c)));
            }
        }

        #[test]
        fn a_forbidden_character_anywhere_is_refused(
            prefix in "[a-z]{1,10}",
            index in 0..BIDI_AND_INVISIBLE.len(),
            suffix in "[a-z]{1,10}",
        ) {
            let input = format!("{prefix}{}{suffix}", BIDI_AND_INVISIBLE[index]);
            prop_assert_eq!(DisplayName::parse(&input), Err(DisplayNameError::ForbiddenCharacter));
        }
    }
}
