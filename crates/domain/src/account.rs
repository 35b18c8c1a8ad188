//! Accounts: who a person is to Portcullis, and the states an account moves through.

use serde::{Deserialize, Serialize};

use crate::{DisplayName, Email, Timestamp, UserId};

/// Whether an account may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Normal.
    Active,
    /// Temporarily refused (too many failures, an administrator's hold); may be unlocked.
    Locked,
    /// Refused until an administrator enables it again.
    Disabled,
}

impl UserStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Locked => "locked",
            UserStatus::Disabled => "disabled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(UserStatus::Active),
            "locked" => Some(UserStatus::Locked),
            "disabled" => Some(UserStatus::Disabled),
            _ => None,
        }
    }
}

/// The built-in role an account holds in the default organization (DESIGN.md, "Domain model"). The
/// authorization issue turns this into memberships with scoped permissions; until then it only
/// records who was bootstrapped as an administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinRole {
    Owner,
    Admin,
    Auditor,
    Member,
}

impl BuiltinRole {
    /// Every role, in order of decreasing power.
    pub const ALL: [BuiltinRole; 4] =
        [BuiltinRole::Owner, BuiltinRole::Admin, BuiltinRole::Auditor, BuiltinRole::Member];

    /// The stored and displayed spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinRole::Owner => "owner",
            BuiltinRole::Admin => "admin",
            BuiltinRole::Auditor => "auditor",
            BuiltinRole::Member => "member",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        BuiltinRole::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// When the owner proved they receive mail at `email`; `None` until then.
    pub email_verified_at: Option<Timestamp>,
    pub display_name: Option<DisplayName>,
    pub status: UserStatus,
    pub role: BuiltinRole,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_login_at: Option<Timestamp>,
}
