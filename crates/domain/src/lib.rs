//! Pure types and rules of Portcullis: no I/O, no async, no database or HTTP types.
//!
//! Everything here is deterministic: time arrives as a [`Timestamp`] argument, randomness as bytes
//! from the caller, so every rule can be tested with fixed inputs.

pub mod account;
pub mod api_key;
pub mod audit;
pub mod display_name;
pub mod email;
pub mod error_chain;
pub mod ids;
pub mod instance;
pub mod ip_rule;
pub mod lockout;
pub mod mfa;
pub mod organization;
pub mod password_policy;
pub mod permission;
pub mod request_id;
pub mod role;
pub mod security_event;
pub mod session;
pub mod time;
pub mod token;

pub use account::{BuiltinRole, User, UserStatus};
pub use api_key::{
    API_KEY_LEN, API_KEY_PREFIX, ApiKey, ApiKeyId, InvalidApiKey, KeyOwner, KeyRefusal, MAX_KEY_CIDRS,
    MAX_KEY_SCOPES, PresentedApiKey, ServiceAccount, format_api_key, looks_like_api_key, parse_api_key,
};
pub use audit::{
    Actor, ActorKind, AuditCheckpoint, AuditEvent, AuditRecord, ChainHead, InvalidAuditField, Outcome,
};
pub use display_name::{DisplayName, DisplayNameError};
pub use email::{Email, EmailError};
pub use error_chain::error_chain;
pub use ids::{
    AuditEventId, InvalidId, MfaDeviceId, OrganizationId, RoleId, SecurityEventId, SessionId, UserId,
};
pub use instance::{InstanceId, InstanceMeta};
pub use ip_rule::{
    InvalidNetwork, IpDenial, IpRule, IpRuleAction, IpRuleId, IpRuleScope, IpRuleSet, IpRuleSource,
    MAX_ADMIN_IP_RULES, MAX_DETECTION_IP_RULES, MAX_IP_RULE_NOTE_CHARS, parse_network,
};
pub use lockout::{LockoutPolicy, LoginThrottle};
pub use mfa::{
    AuthMethods, ChallengePurpose, MfaMethod, MfaPolicy, RECOVERY_CODE_CHARS, RECOVERY_CODE_COUNT,
    TotpParams, format_recovery_code, normalize_recovery_code, parse_device_name,
};
pub use organization::{DEFAULT_ORGANIZATION_SLUG, InvalidSlug, Organization, OrganizationSlug};
pub use password_policy::{PasswordPolicy, PasswordRule, normalize_password};
pub use permission::{
    Decision, Grant, InvalidPermission, Permission, Resource, Scope, decide, holds_all, narrow,
};
pub use request_id::{RequestId, RequestIdError};
pub use role::{
    CustomRole, InvalidRoleName, MAX_ROLE_PERMISSIONS, MAX_ROLES_PER_MEMBER, MAX_ROLES_PER_ORGANIZATION,
    RoleName,
};
pub use security_event::{MAX_SECURITY_EVENT_DETAILS_BYTES, SecurityEvent, SecurityEventKind, Severity};
pub use session::{RevokeReason, Session, SessionKind, SessionLifetimes};
pub use time::Timestamp;
pub use token::{OneTimePurpose, OneTimeToken, TokenHash};
