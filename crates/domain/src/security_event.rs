//! Security events: things a defender wants to see and alert on, kept apart from the request log.

use std::collections::BTreeMap;

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
    /// Too many failed logins for one account identifier: its password path is locked for a while.
    AccountLockedOut,
    /// An administrator cleared an automatic lockout.
    LockoutCleared,
    /// A rate limit refused requests (one event per limited key and minute, with the count).
    RateLimited,
    /// A request came from an address an IP rule denies.
    IpDenied,
    /// A detection rule blocked an address for a while (an automatic response).
    IpBlocked,
    /// Many different accounts failed to log in from one address (credential stuffing).
    CredentialStuffing,
    /// A burst of 403 answers for one principal or address (probing for privileges).
    PrivilegeProbing,
    /// A burst of 404 answers for one principal or address (scanning for resources).
    Scanning,
    /// An administrator logged in from an address not seen before for them.
    AdminLoginFromNewIp,
    /// An alert could not be delivered after its last try (the dead-letter record).
    AlertDeliveryFailed,
    /// A detection rule acted on an account: a session revoked or the account put on hold (blocks
    /// of addresses are `IpBlocked`). An administrator's unlock reverses a hold.
    AutomaticResponse,
    /// The scheduled verification found the audit chain broken (an event changed, removed, added
    /// or reordered, or a checkpoint that does not verify): someone wrote to the database behind
    /// Portcullis's back.
    AuditChainBroken,
    /// A second factor was wrong at login or step-up (a wrong or replayed code, a failed passkey
    /// assertion); counts toward the account identifier's lockout like a wrong password.
    MfaFailed,
    /// A recovery code was spent: the owner has lost their device, or someone else has their codes.
    RecoveryCodeUsed,
    /// A passkey's signature counter went backwards: the authenticator may have been cloned.
    PasskeyCounterRegressed,
    /// A backup could not be made, or a backup failed verification (the restore drill): the last
    /// good backup is getting older and a restore may not be possible.
    BackupFailed,
}

/// How urgently a human should look, from the least to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The configured and displayed spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses the spelling of [`Severity::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
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
            SecurityEventKind::AccountLockedOut => "account_locked_out",
            SecurityEventKind::LockoutCleared => "lockout_cleared",
            SecurityEventKind::RateLimited => "rate_limited",
            SecurityEventKind::IpDenied => "ip_denied",
            SecurityEventKind::IpBlocked => "ip_blocked",
            SecurityEventKind::CredentialStuffing => "credential_stuffing",
            SecurityEventKind::PrivilegeProbing => "privilege_probing",
            SecurityEventKind::Scanning => "scanning",
            SecurityEventKind::AdminLoginFromNewIp => "admin_login_from_new_ip",
            SecurityEventKind::AlertDeliveryFailed => "alert_delivery_failed",
            SecurityEventKind::AutomaticResponse => "automatic_response",
            SecurityEventKind::AuditChainBroken => "audit_chain_broken",
            SecurityEventKind::BackupFailed => "backup_failed",
            SecurityEventKind::MfaFailed => "mfa_failed",
            SecurityEventKind::RecoveryCodeUsed => "recovery_code_used",
            SecurityEventKind::PasskeyCounterRegressed => "passkey_counter_regressed",
        }
    }

    /// Every kind, in declaration order (for documentation, filters and tests).
    pub const ALL: [SecurityEventKind; 22] = [
        SecurityEventKind::LoginFailed,
        SecurityEventKind::RefreshTokenReuse,
        SecurityEventKind::CsrfRejected,
        SecurityEventKind::SignupForExistingAccount,
        SecurityEventKind::PasswordResetForUnknownAccount,
        SecurityEventKind::ApiKeyOutsideAllowedNetworks,
        SecurityEventKind::AccountLockedOut,
        SecurityEventKind::LockoutCleared,
        SecurityEventKind::RateLimited,
        SecurityEventKind::IpDenied,
        SecurityEventKind::IpBlocked,
        SecurityEventKind::CredentialStuffing,
        SecurityEventKind::PrivilegeProbing,
        SecurityEventKind::Scanning,
        SecurityEventKind::AdminLoginFromNewIp,
        SecurityEventKind::AlertDeliveryFailed,
        SecurityEventKind::AutomaticResponse,
        SecurityEventKind::AuditChainBroken,
        SecurityEventKind::MfaFailed,
        SecurityEventKind::RecoveryCodeUsed,
        SecurityEventKind::PasskeyCounterRegressed,
        SecurityEventKind::BackupFailed,
    ];

    /// The default severity, which alert rules compare against (configurable per kind there).
    /// Single failures are low: one alone means nothing; what detection makes of many is higher.
    pub fn severity(self) -> Severity {
        match self {
            SecurityEventKind::LoginFailed
            | SecurityEventKind::SignupForExistingAccount
            | SecurityEventKind::PasswordResetForUnknownAccount
            | SecurityEventKind::LockoutCleared
            | SecurityEventKind::RateLimited
            | SecurityEventKind::IpDenied
            | SecurityEventKind::MfaFailed => Severity::Low,
            SecurityEventKind::CsrfRejected
            | SecurityEventKind::AccountLockedOut
            | SecurityEventKind::Scanning
            | SecurityEventKind::AdminLoginFromNewIp
            | SecurityEventKind::RecoveryCodeUsed => Severity::Medium,
            SecurityEventKind::RefreshTokenReuse
            | SecurityEventKind::ApiKeyOutsideAllowedNetworks
            | SecurityEventKind::IpBlocked
            | SecurityEventKind::CredentialStuffing
            | SecurityEventKind::PrivilegeProbing
            | SecurityEventKind::AlertDeliveryFailed
            | SecurityEventKind::AutomaticResponse
            | SecurityEventKind::PasskeyCounterRegressed => Severity::High,
            SecurityEventKind::AuditChainBroken => Severity::Critical,
            SecurityEventKind::BackupFailed => Severity::High,
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
            "account_locked_out" => SecurityEventKind::AccountLockedOut,
            "lockout_cleared" => SecurityEventKind::LockoutCleared,
            "rate_limited" => SecurityEventKind::RateLimited,
            "ip_denied" => SecurityEventKind::IpDenied,
            "ip_blocked" => SecurityEventKind::IpBlocked,
            "credential_stuffing" => SecurityEventKind::CredentialStuffing,
            "privilege_probing" => SecurityEventKind::PrivilegeProbing,
            "scanning" => SecurityEventKind::Scanning,
            "admin_login_from_new_ip" => SecurityEventKind::AdminLoginFromNewIp,
            "alert_delivery_failed" => SecurityEventKind::AlertDeliveryFailed,
            "automatic_response" => SecurityEventKind::AutomaticResponse,
            "audit_chain_broken" => SecurityEventKind::AuditChainBroken,
            "backup_failed" => SecurityEventKind::BackupFailed,
            "mfa_failed" => SecurityEventKind::MfaFailed,
            "recovery_code_used" => SecurityEventKind::RecoveryCodeUsed,
            "passkey_counter_regressed" => SecurityEventKind::PasskeyCounterRegressed,
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
            | SecurityEventKind::ApiKeyOutsideAllowedNetworks
            | SecurityEventKind::AccountLockedOut
            | SecurityEventKind::LockoutCleared
            | SecurityEventKind::RateLimited
            | SecurityEventKind::IpDenied
            | SecurityEventKind::IpBlocked
            | SecurityEventKind::CredentialStuffing
            | SecurityEventKind::PrivilegeProbing
            | SecurityEventKind::Scanning
            | SecurityEventKind::AdminLoginFromNewIp
            | SecurityEventKind::AlertDeliveryFailed
            | SecurityEventKind::AutomaticResponse
            | SecurityEventKind::AuditChainBroken
            | SecurityEventKind::MfaFailed
            | SecurityEventKind::RecoveryCodeUsed
            | SecurityEventKind::PasskeyCounterRegressed
            | SecurityEventKind::BackupFailed => kind,
        }
    }

    #[test]
    fn every_kind_parses_back_from_its_stored_spelling() {
        for kind in SecurityEventKind::ALL {
            assert_eq!(SecurityEventKind::parse(listed(kind).as_str()), Some(kind));
        }
        let distinct: std::collections::BTreeSet<_> =
            SecurityEventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(distinct.len(), SecurityEventKind::ALL.len());
        assert_eq!(SecurityEventKind::parse("LOGIN_FAILED"), None);
    }

    #[test]
    fn severities_order_from_low_to_critical_and_parse_back() {
        assert!(Severity::Low < Severity::Medium && Severity::Medium < Severity::High);
        assert!(Severity::High < Severity::Critical);
        for s in [Severity::Low, Severity::Medium, Severity::High, Severity::Critical] {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::parse("HIGH"), None);
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
    /// What a defender needs to read the event (policy, count, network, rule id): short, stable
    /// keys and values, never a secret and never personal data in clear (the ip is sealed apart).
    pub details: BTreeMap<String, String>,
}

/// Longest details a security event may carry, in bytes of keys and values together.
pub const MAX_SECURITY_EVENT_DETAILS_BYTES: usize = 2048;
