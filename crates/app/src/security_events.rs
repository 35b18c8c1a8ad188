//! Reading the security events (`GET /v1/admin/security-events`): what a defender looks at after an
//! alert, filtered by kind, account and time, newest first, a page at a time, with the client's
//! address opened. Needs `security:read` system-wide; every read is recorded in the audit trail
//! (`security_events.read`), since the page holds clients' addresses.
//!
//! Security events are about the whole installation (failed logins for unknown addresses, rate
//! limits, blocked networks) and most belong to no organization, so there is no organization scope
//! to grant: an organization's administrator without the system-wide permission is refused (403),
//! as for the system-wide user list.

use std::collections::BTreeMap;

use portcullis_domain::{
    Resource, SecurityEvent, SecurityEventId, SecurityEventKind, SessionId, Severity, Timestamp, UserId,
};
use portcullis_store::{SecurityEventCursor, SecurityEventQuery};

use crate::{App, AppError, DEFAULT_PAGE, FieldIssue, MAX_PAGE, Principal};

/// What to list, as the caller gave it: every field optional, each checked here and named in the
/// 422 when it is wrong. Pages hold [`DEFAULT_PAGE`] events unless `limit` says otherwise (at most
/// [`MAX_PAGE`]).
#[derive(Debug, Clone, Default)]
pub struct SecurityEventFilter<'a> {
    /// Only events of these kinds (their stored spellings, as `login_failed`); none for every kind.
    pub kinds: Vec<&'a str>,
    /// Only events about this account (its id). Events outlive accounts, so a deleted account's id
    /// still finds its events, and an id nobody has finds none.
    pub user_id: Option<&'a str>,
    /// Only events at or after this RFC 3339 time.
    pub since: Option<&'a str>,
    /// Only events before this RFC 3339 time (`[since, until)`, so consecutive windows never
    /// share an event).
    pub until: Option<&'a str>,
    /// The `next` cursor of the previous page.
    pub after: Option<&'a str>,
    pub limit: Option<u32>,
}

/// A security event as a defender sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSecurityEvent {
    pub id: SecurityEventId,
    pub at: Timestamp,
    pub kind: SecurityEventKind,
    /// The kind's default severity (what alert rules start from).
    pub severity: Severity,
    pub user_id: Option<UserId>,
    pub session_id: Option<SessionId>,
    /// The client's address, opened (it is sealed at rest).
    pub ip: Option<String>,
    pub details: BTreeMap<String, String>,
}

impl AdminSecurityEvent {
    fn new(event: SecurityEvent, ip: Option<String>) -> Self {
        Self {
            id: event.id,
            at: event.at,
            kind: event.kind,
            severity: event.kind.severity(),
            user_id: event.user_id,
            session_id: event.session_id,
            ip,
            details: event.details,
        }
    }
}

/// One page of security events, newest first, and the cursor of the next, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEventList {
    pub events: Vec<AdminSecurityEvent>,
    pub next: Option<String>,
}

impl App {
    /// Lists security events newest first (by time, then by the order they were recorded), a page at
    /// a time, filtered by kinds, account and the half-open interval `[since, until)`. Needs
    /// `security:read` system-wide; checked before the filter, so a caller without it learns
    /// nothing from the answers to malformed ones.
    ///
    /// The cursor is a position in that order (a time and the event's record number), not a bookmark
    /// of the filters: pages continue where the last stopped, neither repeating nor skipping an event
    /// while new ones are recorded, and a purged event does not break a cursor that names it.
    pub async fn admin_list_security_events(
        &self,
        principal: &Principal,
        filter: &SecurityEventFilter<'_>,
    ) -> Result<SecurityEventList, AppError> {
        self.require(principal, "security:read", Resource::default()).await?;
        let query = parse_filter(filter)?;
        let mut tx = self.inner.store.begin_read().await?;
        let page = tx.list_security_events(&query).await?;
        let mut events = Vec::with_capacity(page.events.len());
        for stored in page.events {
            let (event, ip) = self.open_security_event(tx.as_mut(), stored).await?;
            events.push(AdminSecurityEvent::new(event, ip));
        }
        tx.rollback().await?;
        // What was asked and how much came back; the events themselves stay where they are.
        let mut read = crate::audit::AuditEntry::by(principal, "security_events.read")
            .detail("returned", events.len())
            .detail("kinds", filter.kinds.clone());
        for (name, value) in [("user_id", filter.user_id), ("since", filter.since), ("until", filter.until)] {
            if let Some(value) = value {
                read = read.detail(name, value);
            }
        }
        self.record_audit([read]).await?;
        Ok(SecurityEventList { events, next: page.next.map(cursor_text) })
    }
}

/// The store's query for a filter, or every field that is wrong (in words that never repeat the
/// submitted value).
fn parse_filter(filter: &SecurityEventFilter<'_>) -> Result<SecurityEventQuery, AppError> {
    let mut issues = Vec::new();
    let mut kinds: Vec<SecurityEventKind> = Vec::new();
    for text in &filter.kinds {
        match SecurityEventKind::parse(text) {
            Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
            Some(_) => {}
            None => {
                let known: Vec<&str> = SecurityEventKind::ALL.iter().map(|k| k.as_str()).collect();
                issues.push(FieldIssue::new("/kind", format!("must be one of {}", known.join(", "))));
                break;
            }
        }
    }
    let user_id = filter
        .user_id
        .map(UserId::parse)
        .transpose()
        .map_err(|_| issues.push(FieldIssue::new("/user_id", "must be an account id (a UUID)")))
        .ok()
        .flatten();
    let mut time = |field: &'static str, text: Option<&str>| {
        text.and_then(|text| {
            let parsed = parse_rfc3339(text);
            if parsed.is_none() {
                issues.push(FieldIssue::new(
                    field,
                    "must be an RFC 3339 date-time, such as 2026-01-31T09:30:00Z",
                ));
            }
            parsed
        })
    };
    let since = time("/since", filter.since);
    let until = time("/until", filter.until);
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        issues.push(FieldIssue::new("/until", "must not be before since"));
    }
    let after = filter.after.and_then(|text| {
        let parsed = parse_cursor(text);
        if parsed.is_none() {
            issues.push(FieldIssue::new("/after", "is not a cursor from a previous page"));
        }
        parsed
    });
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        issues.push(FieldIssue::new("/limit", format!("must be 1 to {MAX_PAGE}")));
    }
    if !issues.is_empty() {
        return Err(AppError::Validation(issues));
    }
    Ok(SecurityEventQuery { kinds, user_id, since, until, after, limit })
}

/// A cursor as clients carry it: the position's time and record number, each as 16 lowercase hex
/// digits of its two's-complement bits. Opaque to clients; every 32-digit value is some position,
/// so a made-up cursor only starts the list somewhere else, never fails or reveals anything.
fn cursor_text(cursor: SecurityEventCursor) -> String {
    format!("{:016x}{:016x}", cursor.at.as_unix_millis().cast_unsigned(), cursor.seq.cast_unsigned())
}

/// The inverse of [`cursor_text`]: exactly 32 lowercase hex digits.
fn parse_cursor(text: &str) -> Option<SecurityEventCursor> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let at = u64::from_str_radix(text.get(..16)?, 16).ok()?.cast_signed();
    let seq = u64::from_str_radix(text.get(16..)?, 16).ok()?.cast_signed();
    Some(SecurityEventCursor { at: Timestamp::from_unix_millis(at), seq })
}

/// An RFC 3339 `date-time` (section 5.6) as unix milliseconds: `2026-01-31T09:30:00Z`, with any
/// fraction of a second (cut to milliseconds) and a `Z` or `±hh:mm` offset. `T` and `Z` may be lower
/// case (section 5.6 allows it); the space the section's note lets applications use instead of `T` is
/// refused, as JSON Schema's `date-time` refuses it, so the API accepts what it documents and no
/// more. A leap second (`:60`) counts as the last millisecond of its minute, since unix time has no
/// place for it.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    // Nanoseconds and an offset make 35 bytes; a longer fraction is allowed, a page of digits is not.
    if !(20..=128).contains(&b.len()) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b.get(at) != Some(&c)) || !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, mut second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let mut rest = b.get(19..)?;
    let mut millis = 0;
    if let Some((b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds are the first three digits; the rest are cut, not rounded, so a time never
        // moves into the next millisecond (or day).
        let kept = fraction.get(..digits.min(3))?;
        let scale = [100, 10, 1].get(kept.len().checked_sub(1)?).copied()?;
        millis = kept.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')) * scale;
        rest = fraction.get(digits..)?;
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: &u8, b: &u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (two(h1, h2)?, two(m1, m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            if *sign == b'-' { -(hours * 60 + minutes) } else { hours * 60 + minutes }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if second == 60 {
        second = 59;
        millis = 999;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(Timestamp::from_unix_millis(seconds * 1_000 + millis))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`, the
/// inverse of the `civil_from_days` that `Timestamp::to_rfc3339` uses).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> Option<i64> {
        parse_rfc3339(text).map(Timestamp::as_unix_millis)
    }

    #[test]
    fn rfc_3339_times_parse_in_every_allowed_spelling() {
        let t = 1_700_000_000_123;
        assert_eq!(millis("2023-11-14T22:13:20.123Z"), Some(t));
        assert_eq!(millis("2023-11-14t22:13:20.123z"), Some(t));
        assert_eq!(millis("2023-11-14T22:13:20.123456789Z"), Some(t));
        assert_eq!(millis("2023-11-14T22:13:20.1Z"), Some(t - 23));
        assert_eq!(millis("2023-11-14T22:13:20Z"), Some(t - 123));
        assert_eq!(millis("2023-11-15T00:13:20.123+02:00"), Some(t));
        assert_eq!(millis("2023-11-14T17:43:20.123-04:30"), Some(t));
        assert_eq!(millis("2023-11-14T22:13:20.123+00:00"), Some(t));
        assert_eq!(millis("2023-11-14T22:13:20.123-00:00"), Some(t));
        assert_eq!(millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(millis("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(millis("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(millis("2016-12-31T23:59:60Z"), Some(1_483_228_799_999));
        assert_eq!(millis("0001-01-01T00:00:00Z"), Some(-62_135_596_800_000));
        assert_eq!(millis("9999-12-31T23:59:59.999Z"), Some(253_402_300_799_999));
        let long = format!("2023-11-14T22:13:20.{}Z", "1".repeat(100));
        assert_eq!(millis(&long), Some(1_700_000_000_111));
    }

    #[test]
    fn malformed_or_impossible_times_are_refused() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20,5Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20+02",
            "2023-11-14T22:13:20 02:00",
            "2023-11-14 22:13:20.123Z",
            "2023-11-14T22:13:20+24:00",
            "2023-11-14T22:13:20+02:60",
            "2023-11-14T22:13:20ZZ",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:60:00Z",
            "2023-11-14T22:13:61Z",
            "2023-13-14T22:13:20Z",
            "2023-00-14T22:13:20Z",
            "2023-11-00T22:13:20Z",
            "2023-11-31T22:13:20Z",
            "2023-02-29T22:13:20Z",
            "1900-02-29T00:00:00Z",
            "+2023-11-14T22:13:20Z",
            "-023-11-14T22:13:20Z",
            "2023-1-014T22:13:20Z",
            "2023-11-14T22:13:2.5Z",
            "２０２３-11-14T22:13:20Z",
            "2023-11-14X22:13:20Z",
            "1700000000123",
        ] {
            assert_eq!(millis(bad), None, "{bad:?}");
        }
        let too_long = format!("2023-11-14T22:13:20.{}Z", "1".repeat(110));
        assert_eq!(millis(&too_long), None);
    }

    #[test]
    fn every_formatted_timestamp_parses_back_to_itself() {
        // A deterministic walk over five centuries either side of 1970, with odd steps so every
        // month, day, hour and millisecond digit comes up.
        let mut t: i64 = -15_000_000_000_000;
        while t < 15_000_000_000_000 {
            let stamp = Timestamp::from_unix_millis(t);
            assert_eq!(parse_rfc3339(&stamp.to_rfc3339()), Some(stamp), "{}", stamp.to_rfc3339());
            t += 7_777_777_777 + t.rem_euclid(997);
        }
    }

    #[test]
    fn no_string_makes_the_time_parser_panic() {
        // Every mutation of a valid time at every position by a set of troublesome characters.
        let valid = "2023-11-14T22:13:20.123+02:00";
        let troublesome = ["", "0", "9", "-", ":", "+", ".", "Z", " ", "é", "\u{0}", "\u{fffd}", "99"];
        for at in 0..=valid.len() {
            for with in troublesome {
                let mut text = valid.to_owned();
                text.insert_str(at, with);
                let _ = parse_rfc3339(&text);
                let mut cut = valid.to_owned();
                cut.truncate(at);
                let _ = parse_rfc3339(&(cut + with));
            }
        }
    }

    #[test]
    fn a_cursor_round_trips_and_only_its_own_spelling_is_read() {
        for (at, seq) in [(0, 1), (1_700_000_000_123, 42), (-1, i64::MAX), (i64::MIN, i64::MIN)] {
            let cursor = SecurityEventCursor { at: Timestamp::from_unix_millis(at), seq };
            let text = cursor_text(cursor);
            assert_eq!(text.len(), 32);
            assert_eq!(parse_cursor(&text), Some(cursor));
        }
        for bad in [
            "",
            "0",
            &"0".repeat(31),
            &"0".repeat(33),
            &"A".repeat(32),
            &"g".repeat(32),
            "+000000000000000000000000000000f",
            "0000000000000000+000000000000001",
            " 0000000000000000000000000000001",
            &"é".repeat(16),
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}
