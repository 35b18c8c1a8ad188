//! Account lockout: too many failed logins for one account identifier lock its password path for a
//! while, doubling with each lockout (OWASP Authentication Cheat Sheet, "Account Lockout"; ASVS
//! 6.3.1). Keyed by the identifier tried, not by the account, so unknown addresses are locked exactly
//! like known ones and the lockout tells nobody which addresses have accounts. Resetting the password
//! by email is never locked, and ends the lockout.

use crate::Timestamp;

/// How many failures lock, for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures within `window_millis` of the first that lock the identifier.
    pub max_failures: u32,
    /// How long failures are counted together; a quiet window starts the count again.
    pub window_millis: i64,
    /// The first lockout's length; each further one (without a successful login in between) doubles.
    pub lock_millis: i64,
    /// The longest lockout.
    pub max_lock_millis: i64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        const MINUTE: i64 = 60_000;
        Self {
            max_failures: 10,
            window_millis: 15 * MINUTE,
            lock_millis: 15 * MINUTE,
            max_lock_millis: 24 * 60 * MINUTE,
        }
    }
}

/// The failure record of one account identifier (its blind index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginThrottle {
    pub subject: [u8; 32],
    /// Failures since `first_failure_at` (since the last lockout, or the last quiet window).
    pub failures: u32,
    pub first_failure_at: Timestamp,
    pub last_failure_at: Timestamp,
    pub locked_until: Option<Timestamp>,
    /// Lockouts since the last successful login: each doubles the next.
    pub lockouts: u32,
}

impl LoginThrottle {
    /// How long the identifier stays locked at `now`, in milliseconds; `None` when it is not.
    pub fn locked_for(&self, now: Timestamp) -> Option<i64> {
        let until = self.locked_until?.as_unix_millis();
        (until > now.as_unix_millis()).then(|| until - now.as_unix_millis())
    }

    /// The record after one more failure at `now`, and the length of the lockout it started, if it
    /// started one.
    pub fn after_failure(
        previous: Option<LoginThrottle>,
        subject: [u8; 32],
        now: Timestamp,
        policy: &LockoutPolicy,
    ) -> (LoginThrottle, Option<i64>) {
        let mut record = match previous {
            Some(record)
                if now.as_unix_millis() - record.first_failure_at.as_unix_millis()
                    <= policy.window_millis
                    || record.locked_for(now).is_some() =>
            {
                record
            }
            // A quiet window forgets the failures, never the lockouts (they reset on success only).
            Some(record) => LoginThrottle { failures: 0, first_failure_at: now, ..record },
            None => LoginThrottle {
                subject,
                failures: 0,
                first_failure_at: now,
                last_failure_at: now,
                locked_until: None,
                lockouts: 0,
            },
        };
        record.failures += 1;
        record.last_failure_at = now;
        if record.failures < policy.max_failures.max(1) {
            return (record, None);
        }
        let factor = 1i64.checked_shl(record.lockouts.min(30)).unwrap_or(i64::MAX);
        let length = policy.lock_millis.saturating_mul(factor).min(policy.max_lock_millis);
        record.locked_until = Some(now.plus_millis(length));
        record.lockouts += 1;
        record.failures = 0;
        record.first_failure_at = now;
        (record, Some(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 3,
            window_millis: 15 * MINUTE,
            lock_millis: 15 * MINUTE,
            max_lock_millis: 50 * MINUTE,
        }
    }

    fn at(minutes: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + minutes * MINUTE)
    }

    fn fail(record: Option<LoginThrottle>, minute: i64) -> (LoginThrottle, Option<i64>) {
        LoginThrottle::after_failure(record, [7; 32], at(minute), &policy())
    }

    #[test]
    fn the_nth_failure_within_the_window_locks_and_each_lockout_doubles_up_to_the_cap() {
        let (r, locked) = fail(None, 0);
        assert_eq!((r.failures, locked), (1, None));
        let (r, locked) = fail(Some(r), 1);
        assert_eq!((r.failures, locked), (2, None));
        let (r, locked) = fail(Some(r), 2);
        assert_eq!(locked, Some(15 * MINUTE));
        assert_eq!(r.locked_for(at(2)), Some(15 * MINUTE));
        assert_eq!(r.locked_for(at(17)), None, "over when its time is up");

        let (r, _) = fail(Some(r), 20);
        let (r, _) = fail(Some(r), 21);
        let (r, locked) = fail(Some(r), 22);
        assert_eq!(locked, Some(30 * MINUTE), "the second lockout doubles");
        let (r, _) = fail(Some(r), 60);
        let (r, _) = fail(Some(r), 61);
        let (_, locked) = fail(Some(r), 62);
        assert_eq!(locked, Some(50 * MINUTE), "capped");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let mut record = None;
        for minute in [0, 20, 40, 60, 80] {
            let (r, locked) = fail(record, minute);
            assert_eq!(locked, None);
            assert_eq!(r.failures, 1);
            record = Some(r);
        }
    }

    #[test]
    fn failures_during_a_lockout_do_not_extend_it() {
        let (r, _) = fail(None, 0);
        let (r, _) = fail(Some(r), 0);
        let (r, _) = fail(Some(r), 0);
        let until = r.locked_until;
        let (r, locked) = fail(Some(r), 5);
        assert_eq!((locked, r.locked_until), (None, until));
    }
}
