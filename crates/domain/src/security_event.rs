//! Security events: things a defender wants to see and alert on, kept apart from the request log.

use crate::{SecurityEventId, SessionId, Timestamp, UserId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEventKind {
    /// A login failed (unknown account, wrong password, refused account).
    LoginFailed,
    /// A spent refresh token came back: the whole session was revoked (token theft detection).
    RefreshTokenReuse,
    /// A cookie-authenticated request failed the CSRF or origin check.
    CsrfRejected,
    /// Someone tried to sign up with an address that already has an account.
    SignupForExistingAccount,
    /// A password reset was requested for an address with no account.
    PasswordResetForUnknownAccount,
    /// A valid API key was presented from outside the networks it is allowed from.
    ApiKeyOutsideAllowedNetworks,
}

impl SecurityEventKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityEventKind::LoginFailed => "login_failed",
            SecurityEventKind::RefreshTokenReuse => "refresh_token_reuse",
            SecurityEventKind::CsrfRejected => "csrf_rejected",
            SecurityEventKind::SignupForExistingAccount => "signup_for_existing_account",
            SecurityEventKind::PasswordResetForUnknownAccount => "password_reset_for_unknown_account",
            SecurityEventKind::ApiKeyOutsideAllowedNetworks => "api_key_outside_allowed_networks",
        }
    }
}

impl SecurityEventKind {
    /// Parses the stored spelling (the inverse of [`SecurityEventKind::as_str`]).
    pub fn parse(text: &str) -> Option<Self> {
        let kind = match text {
            "login_failed" => SecurityEventKind::LoginFailed,
            "refresh_token_reuse" => SecurityEventKind::RefreshTokenReuse,
            "csrf_rejected" => SecurityEventKind::CsrfRejected,
            "signup_for_existing_account" => SecurityEventKind::SignupForExistingAccount,
            "password_reset_for_unknown_account" => SecurityEventKind::PasswordResetForUnknownAccount,
            "api_key_outside_allowed_networks" => SecurityEventKind::ApiKeyOutsideAllowedNetworks,
            _ => return None,
        };
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a kind is added, pointing here: add it to the list below and to `parse`.
    fn listed(kind: SecurityEventKind) -> SecurityEventKind {
        match kind {
            SecurityEventKind::LoginFailed
            | SecurityEventKind::RefreshTokenReuse
            | SecurityEventKind::CsrfRejected
            | SecurityEventKind::SignupForExistingAccount
            | SecurityEventKind::PasswordResetForUnknownAccount
            | SecurityEventKind::ApiKeyOutsideAllowedNetworks => kind,
        }
    }

    #[test]
    fn every_kind_parses_back_from_its_stored_spelling() {
        for kind in [
            SecurityEventKind::LoginFailed,
            SecurityEventKind::RefreshTokenReuse,
            SecurityEventKind::CsrfRejected,
            SecurityEventKind::SignupForExistingAccount,
            SecurityEventKind::PasswordResetForUnknownAccount,
            SecurityEventKind::ApiKeyOutsideAllowedNetworks,
        ] {
            assert_eq!(SecurityEventKind::parse(listed(kind).as_str()), Some(kind));
        }
        assert_eq!(SecurityEventKind::parse("LOGIN_FAILED"), None);
    }
}

/// One security event as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    pub id: SecurityEventId,
    pub at: Timestamp,
    pub kind: SecurityEventKind,
    pub user_id: Option<UserId>,
    pub session_id: Option<SessionId>,
}
