//! The personal-data export (GDPR articles 15 and 20: access and portability): everything Portcullis
//! keeps about one person, as one versioned, machine-readable document, for the person
//! (`GET /v1/me/export`) or for an administrator answering their request
//! (`GET /v1/admin/users/{id}/export`). Both are recorded in the audit trail as `user.data_exported`.
//!
//! In it: the account, its memberships and custom roles, every session (live, revoked and expired,
//! with its client address and user agent), API key metadata, second factors by name, how many
//! recovery codes are left, and the audit events the person acted in, was acted for in, or was the
//! target of. Personal fields sealed at rest are opened, as the owner's own lists open them.
//!
//! Never in it (the types below have no field that could carry one): a password hash; a session
//! cookie, access, refresh or API key secret or any digest of one; a TOTP seed; a recovery code or
//! its digest; a passkey's public key; sealed bytes. An audit event's client address and user agent
//! are opened only where the person acted (through a session or one of their keys): where they were
//! only the target or the account an application acted for, those describe someone else's request
//! (an administrator's, whoever guessed at their password, an application's server).
//!
//! Memory is bounded: sessions and audit events are read a page at a time, newest first, and one
//! document holds at most [`MAX_EXPORTED_SESSIONS`] and [`MAX_EXPORTED_AUDIT_EVENTS`]; past that it
//! says so in [`Truncated`] (the trail's own export, `portcullis audit export`, has the rest).

use portcullis_domain::{
    ActorKind, AuditEvent, CustomRole, KeyOwner, Organization, Resource, Session, Timestamp, UserId,
};
use portcullis_store::{AuditQuery, StoreTx};

use crate::audit::{AuditEntry, AuditEventView};
use crate::{AdminUser, App, AppError, MfaDevice, Principal, PrincipalKind};

/// The name and version of the document's format, its first field. A change that a reader of an
/// older version would misread gets a new version.
pub const EXPORT_FORMAT: &str = "portcullis-export/1";

/// Most sessions one export holds (the newest).
pub const MAX_EXPORTED_SESSIONS: usize = 5_000;

/// Most audit events one export holds (the newest).
pub const MAX_EXPORTED_AUDIT_EVENTS: usize = 10_000;

/// Rows read per round trip.
const PAGE: usize = 500;

/// What an administrator needs over the account to export it: each part of the document is
/// something its reader may already read on its own, so a key scoped to fewer cannot widen itself
/// through the export.
const ADMIN_EXPORT_NEEDS: [&str; 4] = ["users:read", "sessions:read", "apikeys:read", "audit:read"];

/// Everything kept about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonalData {
    pub exported_at: Timestamp,
    pub user: AdminUser,
    /// The organizations the person belongs to, in organization id order.
    pub organizations: Vec<Membership>,
    /// The custom roles the person holds, in organization then name order.
    pub roles: Vec<CustomRole>,
    /// Newest first.
    pub sessions: Vec<ExportedSession>,
    /// Newest first, revoked and expired ones included.
    pub api_keys: Vec<ExportedApiKey>,
    pub mfa: Factors,
    /// Newest first.
    pub audit_events: Vec<AuditEventView>,
    pub truncated: Truncated,
}

/// One membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub organization: Organization,
    pub role: portcullis_domain::BuiltinRole,
}

/// Where a session stands at the time of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Revoked,
    /// Past its absolute or idle lifetime.
    Expired,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Revoked => "revoked",
            SessionState::Expired => "expired",
        }
    }
}

/// One session, with its client details opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSession {
    pub session: Session,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub state: SessionState,
    /// Why it was revoked (`logout`, `user_revoked`, `password_changed`, ...).
    pub revoked_reason: Option<String>,
}

/// An API key's metadata: what its owner sees in their key list, and nothing of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedApiKey {
    /// The public id, which is also the prefix of the key (`pcs_<id>_...`).
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub last_used_ip: Option<String>,
}

/// The person's second factors, without their secrets or public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factors {
    pub totp: Vec<MfaDevice>,
    pub passkeys: Vec<MfaDevice>,
    pub recovery_codes_left: u64,
}

/// Which lists stopped at their cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncated {
    pub sessions: bool,
    pub audit_events: bool,
}

impl App {
    /// The caller's own data. Needs a person's login session that proved itself recently
    /// ([`App::require_recent_auth`]), so that a stolen older session cannot carry the whole account
    /// out in one request; an API key cannot export at all (it cannot step up, and a leaked key must
    /// not be worth that much), nor can a service account (it is no person).
    pub async fn export_my_data(&self, principal: &Principal) -> Result<PersonalData, AppError> {
        principal.require_session()?;
        if principal.kind != PrincipalKind::Person {
            return Err(AppError::Forbidden("a service account has no personal data to export".into()));
        }
        self.require_recent_auth(principal).await?;
        let data = self.personal_data(principal.user_id).await?.ok_or(AppError::Unauthenticated)?;
        self.record_export(principal, &data).await?;
        Ok(data)
    }

    /// Another account's data, for an administrator answering its owner's request. Needs
    /// `users:read`, `sessions:read`, `apikeys:read` and `audit:read` over the account, which only
    /// system-wide grants give: an account's data spans every organization it belongs to, so an
    /// organization's administrator cannot export it (refused alike for its own members, another
    /// tenant's and ids that name nobody). A session must have proven itself recently, as for the
    /// person's own export. An unknown or malformed id is [`AppError::NotFound`].
    pub async fn admin_export_user(&self, principal: &Principal, id: &str) -> Result<PersonalData, AppError> {
        let id = UserId::parse(id).map_err(|_| AppError::NotFound)?;
        let resource = Resource { owner: Some(id), organization: None };
        for permission in ADMIN_EXPORT_NEEDS {
            self.require(principal, permission, resource).await?;
        }
        self.require_recent_auth(principal).await?;
        let data = self.personal_data(id).await?.ok_or(AppError::NotFound)?;
        self.record_export(principal, &data).await?;
        Ok(data)
    }

    /// Records who exported whose data, before the data leaves: an export that cannot be recorded
    /// is not handed out.
    async fn record_export(&self, principal: &Principal, data: &PersonalData) -> Result<(), AppError> {
        let entry = AuditEntry::by(principal, "user.data_exported")
            .target("user", data.user.id)
            .detail("sessions", data.sessions.len())
            .detail("audit_events", data.audit_events.len())
            .detail("truncated", data.truncated.sessions || data.truncated.audit_events);
        self.record_audit([entry]).await?;
        tracing::info!(by = %principal.user_id, user = %data.user.id, "personal data exported");
        Ok(())
    }

    /// The document for `id`, read in one snapshot; `None` if no person has that id.
    async fn personal_data(&self, id: UserId) -> Result<Option<PersonalData>, AppError> {
        let now = self.now();
        let mut tx = self.inner.store.begin_read().await?;
        let Some(user) = self.load_user(tx.as_mut(), id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let mut organizations = Vec::new();
        for (organization, role) in tx.memberships_of(id).await? {
            // Read in the same snapshot as the membership, so it exists.
            if let Some(organization) = tx.organization(organization).await? {
                organizations.push(Membership { organization, role });
            }
        }
        let roles = tx.roles_of(id).await?;
        let (sessions, sessions_cut) = self.session_history_of(tx.as_mut(), id, now).await?;
        let api_keys = self
            .summaries(tx.as_mut(), KeyOwner::User(id))
            .await?
            .into_iter()
            .map(|summary| {
                let key = summary.key;
                ExportedApiKey {
                    id: key.id.to_string(),
                    name: key.name.as_str().to_owned(),
                    scopes: key.scopes.iter().map(ToString::to_string).collect(),
                    allowed_cidrs: key.allowed_cidrs.iter().map(ToString::to_string).collect(),
                    created_at: key.created_at,
                    expires_at: key.expires_at,
                    revoked_at: key.revoked_at,
                    last_used_at: key.last_used_at,
                    last_used_ip: summary.last_used_ip,
                }
            })
            .collect();
        let totp = tx.totp_devices_of(id).await?.into_iter().map(MfaDevice::from).collect();
        let passkeys = tx.passkeys_of(id).await?.into_iter().map(MfaDevice::from).collect();
        let recovery_codes_left = tx.recovery_codes_left(id).await?;
        let (audit_events, events_cut) = self.audit_events_involving(tx.as_mut(), id).await?;
        tx.rollback().await?;
        Ok(Some(PersonalData {
            exported_at: now,
            user: user.into(),
            organizations,
            roles,
            sessions,
            api_keys,
            mfa: Factors { totp, passkeys, recovery_codes_left },
            audit_events,
            truncated: Truncated { sessions: sessions_cut, audit_events: events_cut },
        }))
    }

    /// The account's sessions, newest first, at most [`MAX_EXPORTED_SESSIONS`], and whether there
    /// were more.
    async fn session_history_of(
        &self,
        tx: &mut dyn StoreTx,
        id: UserId,
        now: Timestamp,
    ) -> Result<(Vec<ExportedSession>, bool), AppError> {
        let lifetimes = self.inner.settings.accounts.sessions;
        let mut records = Vec::new();
        let mut before = None;
        loop {
            // One more than fits tells whether the history was cut.
            let limit = (MAX_EXPORTED_SESSIONS + 1 - records.len()).min(PAGE);
            let page = tx.session_history(id, before, page_limit(limit)).await?;
            let last = page.len() < limit;
            for record in page {
                let session = &record.stored.session;
                before = Some((session.created_at, session.id));
                let state = if session.revoked_at.is_some() {
                    SessionState::Revoked
                } else if session.is_live(lifetimes, now) {
                    SessionState::Active
                } else {
                    SessionState::Expired
                };
                let opened = self.open_stored_session(tx, record.stored).await?;
                records.push(ExportedSession {
                    session: opened.session,
                    ip: opened.ip,
                    user_agent: opened.user_agent,
                    state,
                    revoked_reason: record.revoked_reason,
                });
            }
            if last || records.len() > MAX_EXPORTED_SESSIONS {
                break;
            }
        }
        let cut = records.len() > MAX_EXPORTED_SESSIONS;
        records.truncate(MAX_EXPORTED_SESSIONS);
        Ok((records, cut))
    }

    /// The audit events involving the account, newest first, at most
    /// [`MAX_EXPORTED_AUDIT_EVENTS`], and whether there were more.
    async fn audit_events_involving(
        &self,
        tx: &mut dyn StoreTx,
        id: UserId,
    ) -> Result<(Vec<AuditEventView>, bool), AppError> {
        let subject = id.to_string();
        let mut views = Vec::new();
        let mut before_seq = None;
        loop {
            let limit = (MAX_EXPORTED_AUDIT_EVENTS + 1 - views.len()).min(PAGE);
            let query = AuditQuery {
                involving: Some(subject.clone()),
                before_seq,
                limit: page_limit(limit),
                ..AuditQuery::default()
            };
            let page = tx.list_audit_events(&query).await?;
            let last = page.len() < limit;
            before_seq = page.last().map(|e| e.seq);
            for event in &page {
                views.push(self.audit_view(tx, event, acted_in(event, &subject)).await?);
            }
            if last || views.len() > MAX_EXPORTED_AUDIT_EVENTS {
                break;
            }
        }
        let cut = views.len() > MAX_EXPORTED_AUDIT_EVENTS;
        views.truncate(MAX_EXPORTED_AUDIT_EVENTS);
        Ok((views, cut))
    }
}

/// A page size as the store takes it (pages are at most [`PAGE`], far below `u32::MAX`).
fn page_limit(rows: usize) -> u32 {
    u32::try_from(rows).unwrap_or(u32::MAX)
}

/// Whether the person made the request an event records: through one of their sessions, or through
/// one of their API keys. Only then are its client address and user agent theirs to see.
fn acted_in(event: &AuditEvent, subject: &str) -> bool {
    let actor = &event.record.actor;
    match actor.kind {
        ActorKind::User => actor.id.as_deref() == Some(subject),
        ActorKind::ApiKey => actor.on_behalf_of.as_deref() == Some(subject),
        ActorKind::ServiceAccount | ActorKind::System | ActorKind::Application | ActorKind::Anonymous => {
            false
        }
    }
}
