//! Reading the audit trail (`GET /v1/audit/events`, `portcullis audit export`) and applications
//! writing their own events into it (`POST /v1/audit/events`).
//!
//! Reading needs `audit:read`: system-wide for the whole trail, or in one organization for that
//! organization's events (an organization's administrator). Every read is itself recorded.
//! Writing needs a service account holding `audit:write` (system-wide, or in the organization each
//! event names); the event's actor is that service, acting for the end user it names.

use portcullis_domain::audit::{MAX_AUDIT_DETAILS_BYTES, check_action, check_reference, hex};
use portcullis_domain::{
    Actor, ActorKind, AuditEvent, OrganizationId, Outcome, Permission, Resource, decide,
};
use portcullis_store::AuditQuery;
use serde_json::{Value, json};

use super::AuditEntry;
use crate::security_events::parse_rfc3339;
use crate::{App, AppError, DEFAULT_PAGE, FieldIssue, MAX_PAGE, Principal, PrincipalKind};

/// The first words of Portcullis's own action names: an application's events may not use them, so
/// that none can pass for one of ours (its actor type `application` tells them apart as well).
pub const RESERVED_NAMESPACES: [&str; 12] = [
    "audit",
    "api_key",
    "instance",
    "ip_rule",
    "key",
    "membership",
    "organization",
    "role",
    "security_events",
    "service_account",
    "session",
    "user",
];

/// The most events one `POST /v1/audit/events` carries.
pub const MAX_APPLICATION_BATCH: usize = 100;

/// The object key serde_json (with the `raw_value` feature, which axum and sqlx turn on) reads as an
/// embedded raw value. Stored details are keyed in sorted order, so an event holding this key anywhere
/// would read back as something other than the object written; such details are refused instead.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether any object inside `details` has the raw-value key.
fn holds_raw_value_token(details: &serde_json::Map<String, Value>) -> bool {
    details.iter().any(|(key, value)| key == RAW_VALUE_TOKEN || value_holds_raw_value_token(value))
}

fn value_holds_raw_value_token(value: &Value) -> bool {
    match value {
        Value::Object(members) => holds_raw_value_token(members),
        Value::Array(items) => items.iter().any(value_holds_raw_value_token),
        _ => false,
    }
}

/// What to list, as the caller gave it; each field checked here and named in the 422 when wrong.
#[derive(Debug, Clone, Default)]
pub struct AuditEventFilter<'a> {
    /// Events by this actor (an account, key or service id), or acted for this account.
    pub actor: Option<&'a str>,
    /// Events whose action starts with this (`user.` or `user.password.changed`).
    pub action: Option<&'a str>,
    pub target_type: Option<&'a str>,
    pub target_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    /// The `next` cursor of the previous page.
    pub after: Option<&'a str>,
    pub limit: Option<u32>,
}

/// An event as a reader sees it: sealed fields opened, hashes in hex (so anyone holding the
/// events can recompute the chain). Serialized as is by the export.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEventView {
    pub seq: i64,
    pub id: String,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    pub actor: ActorView,
    pub action: String,
    pub target: Option<TargetView>,
    pub organization_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub outcome: &'static str,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActorView {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: Option<String>,
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// One page, newest first, and the cursor of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEventList {
    pub events: Vec<AuditEventView>,
    pub next: Option<String>,
}

/// An application's event, as posted.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationEvent {
    pub action: String,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub target_type: Option<String>,
    #[serde(default)]
    pub target_id: Option<String>,
    #[serde(default)]
    pub organization_id: Option<String>,
    /// The end user the application acted for (an account id of this installation, or the
    /// application's own opaque user reference).
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub details: Option<Value>,
}

/// Where an application's event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: String,
    pub seq: i64,
    pub hash: String,
}

impl App {
    /// Lists audit events newest first, a page at a time. Needs `audit:read` system-wide, or in the
    /// organization the filter names (then only that organization's events). The read is recorded.
    pub async fn list_audit_events(
        &self,
        principal: &Principal,
        filter: &AuditEventFilter<'_>,
    ) -> Result<AuditEventList, AppError> {
        let query = parse_filter(filter)?;
        let organization = query.organization_id.as_deref().and_then(|id| OrganizationId::parse(id).ok());
        let grants = self.grants_of(principal).await?;
        let wanted = Permission::parse_concrete("audit:read")
            .map_err(|_| AppError::Internal("audit:read is not a permission".into()))?;
        let system = decide(&grants, principal.user_id, &wanted, &Resource::default()).allowed;
        let in_org = organization.is_some_and(|org| {
            decide(&grants, principal.user_id, &wanted, &Resource { organization: Some(org), owner: None })
                .allowed
        });
        if !system && !in_org {
            tracing::info!(user = %principal.user_id, "audit read denied");
            // A refused read of the trail is itself worth keeping (ASVS V16.3.2).
            let denied = AuditEntry::by(principal, "audit.events.read").outcome(Outcome::Denied);
            self.record_audit([denied]).await?;
            return Err(AppError::Forbidden("this needs the audit:read permission".into()));
        }
        let mut tx = self.inner.store.begin_read().await?;
        let events = tx.list_audit_events(&query).await?;
        let mut views = Vec::with_capacity(events.len());
        // An organization's administrator sees what happened in it, but not the addresses and
        // browsers of everyone who acted there (platform staff included): those are opened only
        // for readers of the whole trail.
        for event in &events {
            views.push(self.audit_view(tx.as_mut(), event, system).await?);
        }
        tx.rollback().await?;
        let next = (events.len() == query.limit as usize)
            .then(|| events.last().map(|e| e.seq.to_string()))
            .flatten();
        let mut entry = AuditEntry::by(principal, "audit.events.read").detail("returned", events.len());
        if let Some(org) = organization {
            entry = entry.organization(org);
        }
        for (name, value) in
            [("action", filter.action), ("actor", filter.actor), ("target_id", filter.target_id)]
        {
            if let Some(value) = value {
                entry = entry.detail(name, value);
            }
        }
        self.record_audit([entry]).await?;
        Ok(AuditEventList { events: views, next })
    }

    /// Records an application's events (at most [`MAX_APPLICATION_BATCH`]) in the chain, in order.
    /// Needs a service account with `audit:write` (system-wide, or in each event's organization).
    /// Every event is checked before any is written: one bad event refuses the whole batch.
    pub async fn record_application_events(
        &self,
        principal: &Principal,
        events: Vec<ApplicationEvent>,
    ) -> Result<Vec<RecordedEvent>, AppError> {
        if principal.kind != PrincipalKind::ServiceAccount {
            return Err(AppError::Forbidden("applications write audit events as a service account".into()));
        }
        let grants = self.grants_of(principal).await?;
        let wanted = Permission::parse_concrete("audit:write")
            .map_err(|_| AppError::Internal("audit:write is not a permission".into()))?;
        if events.is_empty() || events.len() > MAX_APPLICATION_BATCH {
            return Err(AppError::invalid(
                "/events",
                format!("must hold 1 to {MAX_APPLICATION_BATCH} events"),
            ));
        }
        let mut issues = Vec::new();
        let mut entries = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let at = |field: &str| format!("/events/{i}/{field}");
            let namespace = event.action.split('.').next().unwrap_or_default();
            if RESERVED_NAMESPACES.contains(&namespace) {
                issues.push(FieldIssue::new(
                    at("action"),
                    format!(
                        "must not start with one of Portcullis's own namespaces ({})",
                        RESERVED_NAMESPACES.join(", ")
                    ),
                ));
            } else if check_action(&event.action).is_err() {
                issues.push(FieldIssue::new(at("action"), "must be two to eight dot-separated words of lowercase letters, digits or _, at most 64 bytes"));
            }
            let outcome = match event.outcome.as_deref() {
                None => Some(Outcome::Success),
                Some(text) => Outcome::parse(text),
            };
            if outcome.is_none() {
                issues.push(FieldIssue::new(at("outcome"), "must be success, failure or denied"));
            }
            for (field, value) in [
                ("target_type", &event.target_type),
                ("target_id", &event.target_id),
                ("subject", &event.subject),
            ] {
                if value.as_deref().is_some_and(|v| check_reference(v).is_err()) {
                    issues.push(FieldIssue::new(at(field), "must be 1 to 128 visible ASCII characters"));
                }
            }
            if event.target_id.is_some() != event.target_type.is_some() {
                issues.push(FieldIssue::new(at("target_type"), "target_type and target_id come together"));
            }
            let organization = match event.organization_id.as_deref().map(OrganizationId::parse) {
                None => None,
                Some(Ok(org)) => Some(org),
                Some(Err(_)) => {
                    issues
                        .push(FieldIssue::new(at("organization_id"), "must be an organization id (a UUID)"));
                    None
                }
            };
            let details = event.details.unwrap_or_else(|| json!({}));
            let Value::Object(details) = details else {
                issues.push(FieldIssue::new(at("details"), "must be a JSON object"));
                continue;
            };
            if holds_raw_value_token(&details) {
                issues.push(FieldIssue::new(
                    at("details"),
                    format!("must not use the key {RAW_VALUE_TOKEN:?}, which JSON readers reserve"),
                ));
            }
            if Value::Object(details.clone()).to_string().len() > MAX_AUDIT_DETAILS_BYTES {
                issues.push(FieldIssue::new(
                    at("details"),
                    format!("must be at most {MAX_AUDIT_DETAILS_BYTES} bytes of JSON"),
                ));
            }
            let actor = Actor {
                kind: ActorKind::Application,
                id: Some(principal.user_id.to_string()),
                on_behalf_of: event.subject.clone(),
            };
            // Built directly, not through `AuditEntry::new`, whose check is for our own names: this
            // one may be malformed, and is then refused with the whole batch below.
            let mut entry = AuditEntry {
                action: event.action.clone(),
                actor,
                target: None,
                organization: None,
                outcome: outcome.unwrap_or(Outcome::Success),
                details: Default::default(),
            };
            if let (Some(kind), Some(id)) = (&event.target_type, &event.target_id) {
                entry = entry.target(kind, id);
            }
            if let Some(org) = organization {
                entry = entry.organization(org);
            }
            entry.details = details.into_iter().collect();
            entries.push((entry, organization));
        }
        // Every field first (a malformed organization id is a 422 naming it, not a refusal for
        // the organization it failed to name), then the permission for each event's organization.
        if !issues.is_empty() {
            return Err(AppError::Validation(issues));
        }
        for (_, organization) in &entries {
            let resource = Resource { organization: *organization, owner: None };
            if !decide(&grants, principal.user_id, &wanted, &resource).allowed {
                tracing::info!(user = %principal.user_id, "audit write denied");
                return Err(AppError::Forbidden("this needs the audit:write permission".into()));
            }
        }
        let entries = entries.into_iter().map(|(entry, _)| entry);
        let written = self.record_audit(entries).await?;
        Ok(written
            .into_iter()
            .map(|e| RecordedEvent { id: e.record.id, seq: e.seq, hash: hex(&e.hash) })
            .collect())
    }

    /// Streams every event at or after `since` in chain order to `sink`, a page at a time (the CLI's
    /// `audit export`): memory stays flat whatever the size of the log. Returns how many it wrote;
    /// the export itself is recorded (by the system: the command line acts as the operator).
    pub async fn export_audit_events(
        &self,
        since: Option<portcullis_domain::Timestamp>,
        sink: &mut (dyn FnMut(AuditEventView) -> Result<(), AppError> + Send),
    ) -> Result<u64, AppError> {
        let mut after = 0;
        let mut written = 0;
        loop {
            let mut tx = self.inner.store.begin_read().await?;
            let page = tx.audit_events_after(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in page.iter().filter(|e| since.is_none_or(|since| e.record.at >= since)) {
                sink(self.audit_view(tx.as_mut(), event, true).await?)?;
                written += 1;
            }
            tx.rollback().await?;
        }
        let mut entry = AuditEntry::system("audit.events.exported").detail("events", written);
        if let Some(since) = since {
            entry = entry.detail("since", since.to_rfc3339());
        }
        self.record_audit([entry]).await?;
        Ok(written)
    }

    pub(crate) async fn audit_view(
        &self,
        tx: &mut dyn portcullis_store::StoreTx,
        event: &AuditEvent,
        open_client: bool,
    ) -> Result<AuditEventView, AppError> {
        let (ip, user_agent) =
            if open_client { self.open_audit_client(tx, &event.record).await? } else { (None, None) };
        let r = &event.record;
        let details: Value = serde_json::from_str(&r.details).unwrap_or(Value::String(r.details.clone()));
        Ok(AuditEventView {
            seq: event.seq,
            id: r.id.clone(),
            at: r.at.to_rfc3339(),
            actor: ActorView {
                kind: r.actor.kind.as_str(),
                id: r.actor.id.clone(),
                on_behalf_of: r.actor.on_behalf_of.clone(),
            },
            action: r.action.clone(),
            target: r.target_type.clone().map(|kind| TargetView { kind, id: r.target_id.clone() }),
            organization_id: r.organization_id.clone(),
            ip,
            user_agent,
            request_id: r.request_id.clone(),
            outcome: r.outcome.as_str(),
            details,
            prev_hash: hex(&event.prev_hash),
            hash: hex(&event.hash),
        })
    }
}

/// The store's query for a filter, or every field that is wrong.
fn parse_filter(filter: &AuditEventFilter<'_>) -> Result<AuditQuery, AppError> {
    let mut issues = Vec::new();
    let mut reference = |field: &'static str, value: Option<&str>| {
        value.and_then(|v| match check_reference(v) {
            Ok(()) => Some(v.to_owned()),
            Err(_) => {
                issues.push(FieldIssue::new(field, "must be 1 to 128 visible ASCII characters"));
                None
            }
        })
    };
    let actor_id = reference("/actor", filter.actor);
    let target_type = reference("/target_type", filter.target_type);
    let target_id = reference("/target_id", filter.target_id);
    let action_prefix = filter.action.and_then(|a| {
        let ok = !a.is_empty()
            && a.len() <= 64
            && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !ok {
            issues.push(FieldIssue::new(
                "/action",
                "must be an action name or its start: lowercase letters, digits, _ and .",
            ));
        }
        ok.then(|| a.to_owned())
    });
    let organization_id = filter.organization_id.and_then(|o| match OrganizationId::parse(o) {
        Ok(org) => Some(org.to_string()),
        Err(_) => {
            issues.push(FieldIssue::new("/organization_id", "must be an organization id (a UUID)"));
            None
        }
    });
    let outcome = filter.outcome.and_then(|o| {
        let parsed = Outcome::parse(o);
        if parsed.is_none() {
            issues.push(FieldIssue::new("/outcome", "must be success, failure or denied"));
        }
        parsed
    });
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
    let before_seq = filter.after.and_then(|text| {
        let parsed = text
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq > 0 && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()));
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
    Ok(AuditQuery {
        actor_id,
        involving: None,
        action_prefix,
        target_type,
        target_id,
        organization_id,
        outcome,
        since,
        until,
        before_seq,
        limit,
    })
}
