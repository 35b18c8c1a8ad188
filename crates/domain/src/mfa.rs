//! Multi-factor authentication: which factors a login proved (RFC 8176 `amr` values), the TOTP rules
//! of RFC 6238, recovery codes, and the policy that decides whether an account needs a second factor.

use crate::{BuiltinRole, SessionId};

/// A second factor an account can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MfaMethod {
    /// A time-based one-time password (RFC 6238) from an authenticator app.
    Totp,
    /// One of the account's single-use recovery codes.
    RecoveryCode,
    /// A WebAuthn credential (a passkey or a security key).
    Passkey,
}

impl MfaMethod {
    /// The spelling in the API, the audit trail and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaMethod::Totp => "totp",
            MfaMethod::RecoveryCode => "recovery_code",
            MfaMethod::Passkey => "passkey",
        }
    }

    /// Parses [`MfaMethod::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "totp" => Some(MfaMethod::Totp),
            "recovery_code" => Some(MfaMethod::RecoveryCode),
            "passkey" => Some(MfaMethod::Passkey),
            _ => None,
        }
    }
}

/// What a session's login proved, as the `amr` claim lists it (RFC 8176 section 2): `pwd` a
/// password, `otp` a one-time password (TOTP or a recovery code), `hwk` a key held in an
/// authenticator (a passkey), and `mfa` when more than one factor was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMethods {
    pub password: bool,
    pub otp: bool,
    pub hardware_key: bool,
}

impl AuthMethods {
    /// A password alone.
    pub const PASSWORD: AuthMethods = AuthMethods { password: true, otp: false, hardware_key: false };

    /// These methods with the one a second factor adds.
    pub fn with(self, method: MfaMethod) -> Self {
        match method {
            MfaMethod::Totp | MfaMethod::RecoveryCode => AuthMethods { otp: true, ..self },
            MfaMethod::Passkey => AuthMethods { hardware_key: true, ..self },
        }
    }

    /// How many factors were proven. A passkey ceremony requires user verification (a PIN or a
    /// biometric on the authenticator), so on its own it is two factors (NIST SP 800-63B section
    /// 5.1.9, a multi-factor cryptographic authenticator).
    pub fn factors(self) -> u8 {
        let key = if self.hardware_key { 2 } else { 0 };
        (u8::from(self.password) + u8::from(self.otp) + key).min(2)
    }

    /// Whether this is multi-factor authentication.
    pub fn is_multi_factor(self) -> bool {
        self.factors() >= 2
    }

    /// The `amr` values, in a fixed order.
    pub fn amr(self) -> Vec<&'static str> {
        let mut values = Vec::with_capacity(4);
        if self.hardware_key {
            values.push("hwk");
        }
        if self.otp {
            values.push("otp");
        }
        if self.password {
            values.push("pwd");
        }
        if self.is_multi_factor() {
            values.push("mfa");
        }
        values
    }

    /// The stored spelling: the `amr` values joined by spaces.
    pub fn as_stored(self) -> String {
        self.amr().join(" ")
    }

    /// Parses [`AuthMethods::as_stored`]'s spelling; unknown values are refused.
    pub fn parse(text: &str) -> Option<Self> {
        let mut methods = AuthMethods::default();
        for value in text.split(' ').filter(|v| !v.is_empty()) {
            match value {
                "pwd" => methods.password = true,
                "otp" => methods.otp = true,
                "hwk" => methods.hardware_key = true,
                "mfa" => {}
                _ => return None,
            }
        }
        Some(methods)
    }
}

/// The TOTP parameters (RFC 6238): SHA-1 (what every authenticator app supports), 6 digits, a
/// 30-second step, and one step of clock skew either side by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpParams {
    /// 6 to 8.
    pub digits: u8,
    pub period_secs: u32,
    /// How many steps before and after the current one a code is still accepted from (0 to 2).
    pub skew_steps: u8,
}

impl Default for TotpParams {
    fn default() -> Self {
        Self { digits: 6, period_secs: 30, skew_steps: 1 }
    }
}

impl TotpParams {
    /// Whether a presented code has the shape of a code: exactly `digits` ASCII digits (spaces, as
    /// apps show them in groups, are dropped first). Returns the digits.
    pub fn normalize_code(&self, presented: &str) -> Option<String> {
        let code: String = presented.chars().filter(|c| *c != ' ').collect();
        (code.len() == usize::from(self.digits) && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
    }
}

/// How many recovery codes a set holds.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Characters of a recovery code, without its dashes: 28 of Crockford-style base 32 (no I, L, O, U),
/// 140 bits: above the 128 of ASVS 11.5.1 for anything not to be guessed, and so far above the 112
/// of ASVS 6.5.2 that a plain SHA-256 is an acceptable way to store them (it asks a password
/// hash only below 112 bits).
pub const RECOVERY_CODE_CHARS: usize = 28;

/// The alphabet of recovery codes.
pub const RECOVERY_CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A recovery code as shown: seven groups of four characters joined by dashes. `random` gives one
/// byte per character (only its low five bits are used).
pub fn format_recovery_code(random: &[u8; RECOVERY_CODE_CHARS]) -> String {
    let mut code = String::with_capacity(RECOVERY_CODE_CHARS + 5);
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(char::from(RECOVERY_CODE_ALPHABET[usize::from(byte & 0x1f)]));
    }
    code
}

/// A presented recovery code in its canonical form (upper case, no dashes or spaces, the letters
/// people confuse with digits read as those digits), or `None` if it cannot be one.
pub fn normalize_recovery_code(presented: &str) -> Option<String> {
    if presented.len() > 64 {
        return None;
    }
    let mut code = String::with_capacity(RECOVERY_CODE_CHARS);
    for c in presented.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !RECOVERY_CODE_ALPHABET.contains(&(c as u8)) {
            return None;
        }
        code.push(c);
    }
    (code.len() == RECOVERY_CODE_CHARS).then_some(code)
}

/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;

/// A device's name as its owner gave it: trimmed, 1 to [`MAX_DEVICE_NAME_CHARS`] characters, no
/// control characters.
pub fn parse_device_name(text: &str) -> Result<String, &'static str> {
    let name = text.trim();
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.chars().count() > MAX_DEVICE_NAME_CHARS {
        return Err("must be at most 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(name.to_owned())
}

/// What a pending second-factor challenge will do once it is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// Finish a login whose password was right: open a bearer session.
    LoginBearer,
    /// Finish a login whose password was right: open a cookie session.
    LoginCookie,
    /// Finish a passkey registration started in this session.
    PasskeyRegistration(SessionId),
    /// Prove a passkey again in this session (step-up).
    Reauthentication(SessionId),
}

impl ChallengePurpose {
    /// The stored spelling (the session, when there is one, is stored beside it).
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengePurpose::LoginBearer => "login_bearer",
            ChallengePurpose::LoginCookie => "login_cookie",
            ChallengePurpose::PasskeyRegistration(_) => "passkey_registration",
            ChallengePurpose::Reauthentication(_) => "reauthentication",
        }
    }

    /// The session the challenge belongs to, if any.
    pub fn session(self) -> Option<SessionId> {
        match self {
            ChallengePurpose::LoginBearer | ChallengePurpose::LoginCookie => None,
            ChallengePurpose::PasskeyRegistration(s) | ChallengePurpose::Reauthentication(s) => Some(s),
        }
    }

    /// Parses the stored spelling with its session.
    pub fn parse(text: &str, session: Option<SessionId>) -> Option<Self> {
        match (text, session) {
            ("login_bearer", None) => Some(ChallengePurpose::LoginBearer),
            ("login_cookie", None) => Some(ChallengePurpose::LoginCookie),
            ("passkey_registration", Some(s)) => Some(ChallengePurpose::PasskeyRegistration(s)),
            ("reauthentication", Some(s)) => Some(ChallengePurpose::Reauthentication(s)),
            _ => None,
        }
    }
}

/// Who must use a second factor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MfaPolicy {
    /// Accounts with one of these built-in roles (for example every owner and admin).
    pub required_roles: Vec<BuiltinRole>,
}

impl MfaPolicy {
    /// Whether an account with `role`, a member of an organization that requires a second factor when
    /// `organization_requires` is true, must use one.
    pub fn requires(&self, role: BuiltinRole, organization_requires: bool) -> bool {
        organization_requires || self.required_roles.contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amr_values_follow_rfc_8176_and_round_trip() {
        assert_eq!(AuthMethods::PASSWORD.amr(), vec!["pwd"]);
        let otp = AuthMethods::PASSWORD.with(MfaMethod::Totp);
        assert_eq!(otp.amr(), vec!["otp", "pwd", "mfa"]);
        let passkey = AuthMethods::default().with(MfaMethod::Passkey);
        assert_eq!(passkey.amr(), vec!["hwk", "mfa"]);
        for methods in [AuthMethods::PASSWORD, otp, passkey, AuthMethods::default()] {
            assert_eq!(AuthMethods::parse(&methods.as_stored()), Some(methods));
        }
        assert_eq!(AuthMethods::parse("pwd sms"), None);
        assert!(!AuthMethods::PASSWORD.is_multi_factor());
        assert!(AuthMethods::PASSWORD.with(MfaMethod::RecoveryCode).is_multi_factor());
    }

    #[test]
    fn totp_codes_must_have_the_right_shape() {
        let params = TotpParams::default();
        assert_eq!(params.normalize_code("921 300").as_deref(), Some("921300"));
        for bad in ["92130", "9213000", "92130a", "", "９２１３００"] {
            assert_eq!(params.normalize_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn recovery_codes_are_formatted_in_groups_and_normalized_forgivingly() {
        let code = format_recovery_code(&[0x1f; RECOVERY_CODE_CHARS]);
        assert_eq!(code, "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ");
        let mixed = format_recovery_code(&std::array::from_fn(|i| i as u8));
        let canonical = normalize_recovery_code(&mixed).unwrap();
        assert_eq!(canonical.len(), RECOVERY_CODE_CHARS);
        assert_eq!(normalize_recovery_code(&mixed.to_lowercase().replace('-', " ")), Some(canonical));
        assert_eq!(
            normalize_recovery_code("oooo-iiii-llll-0000-0000-0000-0000").as_deref(),
            Some("0000111111110000000000000000")
        );
        for bad in [
            "",
            "ZZZZ",
            "UUUU-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ",
            "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-Z",
            "ÄZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZ",
        ] {
            assert_eq!(normalize_recovery_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_names_are_trimmed_and_bounded() {
        assert_eq!(parse_device_name("  Phone ").as_deref(), Ok("Phone"));
        assert!(parse_device_name(" ").is_err());
        assert!(parse_device_name(&"x".repeat(65)).is_err());
        assert!(parse_device_name("a\u{7}b").is_err());
    }

    #[test]
    fn challenge_purposes_round_trip_only_with_the_session_they_need() {
        let s = SessionId::from_random_bytes([3; 16]);
        for purpose in [
            ChallengePurpose::LoginBearer,
            ChallengePurpose::LoginCookie,
            ChallengePurpose::PasskeyRegistration(s),
            ChallengePurpose::Reauthentication(s),
        ] {
            assert_eq!(ChallengePurpose::parse(purpose.as_str(), purpose.session()), Some(purpose));
        }
        assert_eq!(ChallengePurpose::parse("login_bearer", Some(s)), None);
        assert_eq!(ChallengePurpose::parse("reauthentication", None), None);
    }

    #[test]
    fn the_policy_requires_a_factor_by_role_or_by_organization() {
        let policy = MfaPolicy { required_roles: vec![BuiltinRole::Owner, BuiltinRole::Admin] };
        assert!(policy.requires(BuiltinRole::Admin, false));
        assert!(!policy.requires(BuiltinRole::Member, false));
        assert!(policy.requires(BuiltinRole::Member, true));
        assert!(!MfaPolicy::default().requires(BuiltinRole::Owner, false));
    }
}
