//! Points in time as integer unix milliseconds, the one representation both databases store.

use serde::{Deserialize, Serialize};

/// Milliseconds since the unix epoch (UTC).
///
/// Stored as a plain `BIGINT`/`INTEGER` in every backend so that comparisons and ordering are the
/// same on SQLite and PostgreSQL, and so no time zone or calendar library sits in the storage path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// A timestamp from unix milliseconds.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// The value as unix milliseconds.
    pub const fn as_unix_millis(self) -> i64 {
        self.0
    }

    /// This instant moved forward by `millis` (saturating, so a huge lifetime cannot wrap to the past).
    #[must_use]
    pub const fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_huge_duration_saturates_instead_of_wrapping() {
        let t = Timestamp::from_unix_millis(i64::MAX - 1);
        assert_eq!(t.plus_millis(10).as_unix_millis(), i64::MAX);
    }

    #[test]
    fn timestamps_order_by_time() {
        assert!(Timestamp::from_unix_millis(1) < Timestamp::from_unix_millis(2));
    }
}
