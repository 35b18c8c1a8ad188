//! Sessions: how long a login stays good, and the rules that end it.

use crate::{AuthMethods, SessionId, Timestamp, UserId};

/// How a session's holder proves it on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// An API client: short-lived access JWTs renewed with a rotating refresh token.
    Bearer,
    /// A browser: an HttpOnly `__Host-` cookie plus a CSRF token for state-changing requests.
    Cookie,
}

impl SessionKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Bearer => "bearer",
            SessionKind::Cookie => "cookie",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "bearer" => Some(SessionKind::Bearer),
            "cookie" => Some(SessionKind::Cookie),
            _ => None,
        }
    }
}

/// Why a session ended before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The user logged out of this session.
    Logout,
    /// The user logged out everywhere, or revoked it from the session list.
    UserRevoked,
    /// The password changed or was reset.
    PasswordChanged,
    /// A spent refresh token was presented again: someone holds a stolen copy.
    RefreshReuse,
    /// The signing key that signed its tokens was retired in an emergency (suspected compromise).
    SigningKeyCompromised,
}

impl RevokeReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::UserRevoked => "user_revoked",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::RefreshReuse => "refresh_reuse",
            RevokeReason::SigningKeyCompromised => "signing_key_compromised",
        }
    }
}

/// One session's security state. The client's ip and user agent, recorded at creation for the owner's
/// session list, are personal data that `app` seals separately; they never decide anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub kind: SessionKind,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// The absolute end: refreshing never moves it (ASVS 7.3.2).
    pub expires_at: Timestamp,
    /// 1 when the login (or a later step-up) proved more than one factor, 0 otherwise.
    pub mfa_level: u8,
    /// What the login, or the latest re-authentication, proved (the `amr` claim).
    pub amr: AuthMethods,
    /// When the holder last proved who they are (the login, or a later re-authentication): what
    /// sensitive actions compare against (ASVS 7.5.3, OIDC `auth_time`).
    pub authenticated_at: Timestamp,
    /// The account must use a second factor and has none: until it enrolls one, this session may
    /// do nothing else.
    pub mfa_enrollment_required: bool,
    pub revoked_at: Option<Timestamp>,
}

/// How long sessions live (ASVS 7.3.1 idle, 7.3.2 absolute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLifetimes {
    /// From creation to forced re-authentication, whatever the activity.
    pub absolute_millis: i64,
    /// Inactivity after which the session ends.
    pub idle_millis: i64,
}

impl Default for SessionLifetimes {
    /// 7 days absolute, 24 h idle (DESIGN.md).
    fn default() -> Self {
        Self { absolute_millis: 7 * 24 * 3_600_000, idle_millis: 24 * 3_600_000 }
    }
}

impl Session {
    /// Whether the session is still good at `now` under `lifetimes`.
    pub fn is_live(&self, lifetimes: SessionLifetimes, now: Timestamp) -> bool {
        self.revoked_at.is_none()
            && now < self.expires_at
            && now < self.last_seen_at.plus_millis(lifetimes.idle_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(created: i64) -> Session {
        Session {
            id: SessionId::from_random_bytes([1; 16]),
            user_id: UserId::from_random_bytes([2; 16]),
            kind: SessionKind::Bearer,
            created_at: Timestamp::from_unix_millis(created),
            last_seen_at: Timestamp::from_unix_millis(created),
            expires_at: Timestamp::from_unix_millis(created + 1_000),
            mfa_level: 0,
            amr: AuthMethods::PASSWORD,
            authenticated_at: Timestamp::from_unix_millis(created),
            mfa_enrollment_required: false,
            revoked_at: None,
        }
    }

    #[test]
    fn a_session_ends_at_its_absolute_expiry_even_when_active() {
        let lifetimes = SessionLifetimes { absolute_millis: 1_000, idle_millis: 500 };
        let mut s = session(0);
        s.last_seen_at = Timestamp::from_unix_millis(900);
        assert!(s.is_live(lifetimes, Timestamp::from_unix_millis(999)));
        assert!(!s.is_live(lifetimes, Timestamp::from_unix_millis(1_000)));
    }

    #[test]
    fn a_session_ends_after_the_idle_timeout_and_when_revoked() {
        let lifetimes = SessionLifetimes { absolute_millis: 1_000, idle_millis: 500 };
        let mut s = session(0);
        assert!(s.is_live(lifetimes, Timestamp::from_unix_millis(499)));
        assert!(!s.is_live(lifetimes, Timestamp::from_unix_millis(500)));
        s.revoked_at = Some(Timestamp::from_unix_millis(1));
        assert!(!s.is_live(lifetimes, Timestamp::from_unix_millis(2)));
    }
}
