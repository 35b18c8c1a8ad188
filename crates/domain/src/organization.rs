//! Organizations (tenants): a name people read and a slug that URLs and configuration use.

use crate::{DisplayName, OrganizationId, Timestamp};

/// The slug every installation's first organization has.
pub const DEFAULT_ORGANIZATION_SLUG: &str = "default";

/// Text that is not a slug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 32 characters of lowercase letters, digits and single hyphens, starting with a letter")]
pub struct InvalidSlug;

/// A short, stable, URL-safe name: `[a-z][a-z0-9-]{0,31}`, no double or trailing hyphen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganizationSlug(String);

impl OrganizationSlug {
    pub fn parse(text: &str) -> Result<Self, InvalidSlug> {
        let bytes = text.as_bytes();
        let ok = (1..=32).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !text.contains("--")
            && !text.ends_with('-');
        if ok { Ok(Self(text.to_owned())) } else { Err(InvalidSlug) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrganizationId,
    pub slug: OrganizationSlug,
    /// Validated like a person's display name (NFC, 1–64 characters, no control or bidi characters).
    pub name: DisplayName,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_short_lowercase_and_hyphenated_only_between_words() {
        for good in ["default", "acme", "acme-eu", "a1", &"a".repeat(32)] {
            assert_eq!(OrganizationSlug::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "1acme", "acme--eu", "acme-", "-acme", "ac me", "acme_eu", &"a".repeat(33)] {
            assert_eq!(OrganizationSlug::parse(bad), Err(InvalidSlug), "{bad:?}");
        }
    }
}
