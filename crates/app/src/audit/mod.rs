//! The audit trail: every state-changing use case records what it did in the same transaction as
//! the change ([`App::commit_audited`]), events without a change of their own (failed logins, reads
//! of sensitive data, applications' events) go through one writer task that commits them in groups
//! ([`App::record_audit`]), and every event joins one SHA-256 hash chain (`domain::audit`).
//!
//! The request's client address, user agent and request id reach the use cases through
//! [`within_request`], a task-local scope the HTTP layer opens per request: they describe the
//! request, not the action, and threading them through every use case's signature would add a
//! parameter to forty functions that only the audit record reads. Outside a request (the CLI, the
//! scheduler) there is none and the fields stay empty.

mod checkpoint;
mod query;
mod verify;
mod writer;

use std::collections::BTreeMap;
use std::future::Future;

use portcullis_domain::audit::MAX_AUDIT_DETAILS_BYTES;
use portcullis_domain::{Actor, ActorKind, AuditEvent, AuditRecord, OrganizationId, Outcome};
use portcullis_store::StoreTx;
use serde_json::Value;

pub use checkpoint::AuditPurge;
pub use checkpoint::{AUDIT_KEY_ALGORITHM, AuditKeys, generate_audit_key};
pub use query::{
    ActorView, ApplicationEvent, AuditEventFilter, AuditEventList, AuditEventView, MAX_APPLICATION_BATCH,
    RecordedEvent, TargetView,
};
pub use verify::{ChainBreak, VerifyReport};
pub(crate) use writer::AuditWriter;

use crate::erasure::{self, PersonKeyMap};
use crate::keys::Place;
use crate::{App, AppError, Credential, Principal, PrincipalKind};

/// The table name sealed audit fields are bound to (their associated data). Audit rows are not a
/// `PiiTable`: re-encrypting them would change what the chain hashed.
const AUDIT_TABLE: &str = "audit_events";

/// How the audit trail is kept: checkpoints, retention, verification.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// A checkpoint is signed once this many events follow the last one...
    pub checkpoint_every: u64,
    /// ...or once this long has passed with any event after it.
    pub checkpoint_interval_millis: i64,
    /// Events older than this are purged (0 keeps them forever); the cut is at a signed checkpoint.
    pub retention_days: u32,
    /// How often `serve` verifies the whole chain (0: never).
    pub verify_interval_secs: u64,
    /// Every checkpoint is also appended to this file as a JSON line: a copy outside the database.
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// The most events the writer task commits in one transaction.
    pub group_commit_max: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval_millis: 5 * 60 * 1000,
            retention_days: 365,
            verify_interval_secs: 3600,
            checkpoint_file: None,
            group_commit_max: 1000,
        }
    }
}

/// What the HTTP layer knows of the request an action came in on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `work` with `context` as the request that audit records made inside it name.
pub async fn within_request<F: Future>(context: RequestContext, work: F) -> F::Output {
    REQUEST.scope(context, work).await
}

fn current_request() -> RequestContext {
    REQUEST.try_with(Clone::clone).unwrap_or_default()
}

/// The longest user agent kept (the rest is cut, on a character boundary).
const MAX_USER_AGENT_CHARS: usize = 256;

/// One action to record, as a use case describes it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub(crate) action: String,
    pub(crate) actor: Actor,
    pub(crate) target: Option<(String, String)>,
    pub(crate) organization: Option<String>,
    pub(crate) outcome: Outcome,
    pub(crate) details: BTreeMap<String, Value>,
}

impl AuditEntry {
    /// `action` by `actor`, successful, about nothing in particular yet. Our own action names are
    /// constants; a malformed one is a bug caught in tests (applications' names are checked with a
    /// 422 before they get here).
    pub(crate) fn new(action: &str, actor: Actor) -> Self {
        debug_assert!(portcullis_domain::audit::check_action(action).is_ok(), "bad action name {action}");
        Self {
            action: action.to_owned(),
            actor,
            target: None,
            organization: None,
            outcome: Outcome::Success,
            details: BTreeMap::new(),
        }
    }

    /// `action` by the authenticated caller.
    pub(crate) fn by(principal: &Principal, action: &str) -> Self {
        Self::new(action, actor_of(principal))
    }

    /// `action` by Portcullis itself (scheduler, detection, command line).
    pub(crate) fn system(action: &str) -> Self {
        Self::new(action, Actor::system())
    }

    /// `action` by a caller not (yet) known to be anyone.
    pub(crate) fn anonymous(action: &str) -> Self {
        Self::new(action, Actor::anonymous())
    }

    pub(crate) fn target(mut self, kind: &str, id: impl std::fmt::Display) -> Self {
        self.target = Some((kind.to_owned(), id.to_string()));
        self
    }

    pub(crate) fn organization(mut self, id: OrganizationId) -> Self {
        self.organization = Some(id.to_string());
        self
    }

    pub(crate) fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// A detail: passed through [`redact`] when the record is made, which replaces the value of any
    /// key naming a secret (`token_type` or `api_key_id` would be redacted too: pick other names).
    pub(crate) fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// The actor of an authenticated caller: a key acts for its owner, a session for its account.
pub(crate) fn actor_of(principal: &Principal) -> Actor {
    match principal.credential {
        Credential::ApiKey(key) => Actor {
            kind: ActorKind::ApiKey,
            id: Some(key.to_string()),
            on_behalf_of: Some(principal.user_id.to_string()),
        },
        Credential::Bearer(_) | Credential::Cookie(_) => Actor {
            kind: match principal.kind {
                PrincipalKind::Person => ActorKind::User,
                PrincipalKind::ServiceAccount => ActorKind::ServiceAccount,
            },
            id: Some(principal.user_id.to_string()),
            on_behalf_of: None,
        },
    }
}

/// Names whose values are never recorded, matched inside a detail's key (`new_password`,
/// `client_secret`, `X-Api-Key`, `refreshToken`).
const SECRET_NAMES: [&str; 15] = [
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
    "cookie",
    "credential",
    "private",
    "recovery",
    "signature",
    "session_key",
];

/// Short names that are secrets only as a whole word of the key (`pin`, `user_pin`, `otp`), so that
/// `shipping` or `spinner` are left alone.
const SECRET_WORDS: [&str; 8] = ["pwd", "pass", "pin", "otp", "totp", "cvv", "cvc", "refresh"];

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

const MAX_DETAIL_STRING_CHARS: usize = 512;
const MAX_DETAIL_DEPTH: usize = 6;
const MAX_DETAIL_ITEMS: usize = 100;

/// The one redaction every audit record's details pass through (ASVS V16.2.5): values under a
/// secret-sounding name, and strings holding one of our credential shapes (an API key, a JWT, a
/// bearer or basic header) anywhere in them, become [`REDACTED`]; long strings, deep nesting and
/// long lists are cut.
pub fn redact(value: Value) -> Value {
    redact_at(value, 0)
}

fn redact_at(value: Value, depth: usize) -> Value {
    if depth > MAX_DETAIL_DEPTH {
        return Value::String("[too deep]".into());
    }
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .take(MAX_DETAIL_ITEMS)
                .map(|(key, value)| {
                    let value = if is_secret_name(&key) {
                        Value::String(REDACTED.into())
                    } else {
                        redact_at(value, depth + 1)
                    };
                    (cut(key, 64), value)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().take(MAX_DETAIL_ITEMS).map(|v| redact_at(v, depth + 1)).collect())
        }
        Value::String(text) if holds_credential(&text) => Value::String(REDACTED.into()),
        Value::String(text) => Value::String(cut(text, MAX_DETAIL_STRING_CHARS)),
        other => other,
    }
}

fn is_secret_name(key: &str) -> bool {
    // camelCase to snake_case, then compare with and without separators.
    let mut snake = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    let snake = snake.replace(['-', '.', ' '], "_");
    let squashed = snake.replace('_', "");
    SECRET_NAMES.iter().any(|name| snake.contains(name) || squashed.contains(&name.replace('_', "")))
        || snake.split('_').any(|word| SECRET_WORDS.contains(&word))
}

/// Our credential shapes, anywhere in a string: API keys (`pcs_…`), JWTs (`eyJ` followed by
/// base64url text holding two dots), `Bearer`/`Basic` authorization values.
fn holds_credential(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    text.contains(portcullis_domain::API_KEY_PREFIX)
        || lower.contains("bearer ")
        || lower.contains("basic ")
        || holds_jwt(text.as_bytes())
}

/// Whether some run of base64url characters and dots starting with `eyJ` holds two dots: one pass
/// over the text (each run is scanned once), so a hostile string cannot make it quadratic.
fn holds_jwt(bytes: &[u8]) -> bool {
    let in_run = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let mut i = 0;
    while i < bytes.len() {
        if !in_run(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && in_run(bytes[i]) {
            i += 1;
        }
        let run = &bytes[start..i];
        // A JWT may start anywhere in the run (`x.eyJ...`): look for its header, then two dots after.
        if let Some(header) = run.windows(3).position(|w| w == b"eyJ")
            && run[header..].iter().filter(|b| **b == b'.').count() >= 2
        {
            return true;
        }
    }
    false
}

fn cut(mut text: String, chars: usize) -> String {
    if let Some((index, _)) = text.char_indices().nth(chars) {
        text.truncate(index);
        text.push('…');
    }
    text
}

/// Details as stored: redacted, JSON with sorted keys, and at most [`MAX_AUDIT_DETAILS_BYTES`]
/// (larger ones keep only a note that they were cut, never a partial secret).
pub(crate) fn details_text(details: BTreeMap<String, Value>) -> String {
    let value = redact(Value::Object(details.into_iter().collect()));
    let text = value.to_string();
    if text.len() <= MAX_AUDIT_DETAILS_BYTES { text } else { r#"{"truncated":true}"#.to_owned() }
}

impl App {
    /// How the audit trail is kept (the server's scheduler reads its intervals).
    pub fn audit_settings(&self) -> &AuditSettings {
        &self.inner.settings.audit
    }

    /// Makes the stored record of `entry`: a fresh id, the app's time, the request's client sealed
    /// under the key of the person who made the request when `person_keys` holds it (so erasing
    /// the person shreds it), else under the active personal-data key; the details redacted.
    pub(crate) fn audit_record(
        &self,
        entry: AuditEntry,
        person_keys: &PersonKeyMap,
    ) -> Result<AuditRecord, AppError> {
        let request = current_request();
        // Time first, then 80 random bits: ids grow with time, so the unique index on them takes
        // appends at its end instead of page splits all over it (the time is in the event anyway).
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes[6..]).map_err(|e| AppError::Internal(Box::new(e)))?;
        bytes[..6].copy_from_slice(&self.now().as_unix_millis().to_be_bytes()[2..]);
        let id = portcullis_domain::AuditEventId::from_random_bytes(bytes).to_string();
        let keys = self.loaded_keys();
        let person = erasure::requester(&entry).and_then(|user| Some((user, person_keys.get(&user)?)));
        // Named only when there is something to seal: the keyring's own first events come before
        // any personal-data key exists.
        let key_id = || -> Result<String, AppError> {
            Ok(match &person {
                Some((user, _)) => erasure::person_key_id(*user),
                None => keys.fields.active_pii_id()?.to_owned(),
            })
        };
        let seal = |text: &str, column| {
            let place = Place { table: AUDIT_TABLE, column, row: &id };
            match &person {
                Some((_, key)) => crate::keys::seal_with(key, &key_id()?, text.as_bytes(), place),
                None => keys.fields.seal(text.as_bytes(), place),
            }
        };
        let ip = request.ip.as_deref().map(|ip| seal(ip, "ip")).transpose()?;
        let user_agent = request
            .user_agent
            .map(|ua| cut(ua, MAX_USER_AGENT_CHARS))
            .map(|ua| seal(&ua, "user_agent"))
            .transpose()?;
        let pii_key = if ip.is_some() || user_agent.is_some() { Some(key_id()?) } else { None };
        let (target_type, target_id) = entry.target.unzip();
        Ok(AuditRecord {
            id: id.clone(),
            at: self.now(),
            actor: entry.actor,
            action: entry.action,
            target_type,
            target_id,
            organization_id: entry.organization,
            ip: ip.map(|s| s.0),
            user_agent: user_agent.map(|s| s.0),
            pii_key,
            request_id: request.request_id,
            outcome: entry.outcome,
            details: details_text(entry.details),
        })
    }

    /// Records `entries` at the chain head and commits `tx`: the change and its record commit
    /// together or not at all. The head is locked last, so the wait it imposes on other writers is
    /// one statement and the commit. With no entries it is a plain commit (callers rely on that to
    /// record only when something changed).
    pub(crate) async fn commit_audited(
        &self,
        mut tx: Box<dyn StoreTx>,
        entries: impl IntoIterator<Item = AuditEntry>,
    ) -> Result<Vec<AuditEvent>, AppError> {
        let entries: Vec<AuditEntry> = entries.into_iter().collect();
        let keys = self.person_keys_for(tx.as_mut(), &entries).await?;
        self.commit_records(tx, entries, &keys).await
    }

    /// [`App::commit_audited`] with the person keys already in hand (an erasure takes its person's
    /// key before deleting it).
    pub(crate) async fn commit_records(
        &self,
        mut tx: Box<dyn StoreTx>,
        entries: impl IntoIterator<Item = AuditEntry>,
        person_keys: &PersonKeyMap,
    ) -> Result<Vec<AuditEvent>, AppError> {
        let records =
            entries.into_iter().map(|e| self.audit_record(e, person_keys)).collect::<Result<Vec<_>, _>>()?;
        let events = append(tx.as_mut(), records).await?;
        tx.commit().await?;
        Ok(events)
    }

    /// Records entries that have no change of their own to commit with (a failed login, a read of
    /// sensitive data, an application's event): the writer task commits them with others waiting at
    /// the same moment, in one transaction (group commit). Returns once they are durable.
    ///
    /// Never call it while holding an open write transaction: on SQLite the writer task needs the
    /// one writer connection that transaction holds, and both would wait forever. Add the entries to
    /// that transaction's [`App::commit_audited`] instead.
    pub(crate) async fn record_audit(
        &self,
        entries: impl IntoIterator<Item = AuditEntry>,
    ) -> Result<Vec<AuditEvent>, AppError> {
        let entries: Vec<AuditEntry> = entries.into_iter().collect();
        let keys = self.person_keys_outside(&entries).await?;
        let records =
            entries.into_iter().map(|e| self.audit_record(e, &keys)).collect::<Result<Vec<_>, _>>()?;
        self.inner
            .audit_writer
            .write(&self.inner.store, records, self.inner.settings.audit.group_commit_max)
            .await
    }

    /// Opens an event's sealed client address and user agent (for listings and exports). Those
    /// sealed under the key of a person since erased read as absent.
    pub(crate) async fn open_audit_client(
        &self,
        tx: &mut dyn StoreTx,
        record: &AuditRecord,
    ) -> Result<(Option<String>, Option<String>), AppError> {
        if record.ip.is_none() && record.user_agent.is_none() {
            return Ok((None, None));
        }
        let place = |column| Place { table: AUDIT_TABLE, column, row: &record.id };
        let text = |bytes: zeroize::Zeroizing<Vec<u8>>| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| AppError::Keyring("a sealed text is not UTF-8".into()))
        };
        if let Some(id) = record.pii_key.as_deref()
            && let Some(person) = erasure::person_of_key_id(id)
        {
            let Some(key) = self.person_key_to_open(tx, person).await? else { return Ok((None, None)) };
            let open = |bytes: &Option<Vec<u8>>, column| {
                bytes
                    .as_ref()
                    .map(|b| {
                        crate::keys::open_with(&key, id, &portcullis_store::Sealed(b.clone()), place(column))
                            .and_then(text)
                    })
                    .transpose()
            };
            return Ok((open(&record.ip, "ip")?, open(&record.user_agent, "user_agent")?));
        }
        let keys = self.keys_holding(tx, record.pii_key.as_deref()).await?;
        let open = |bytes: &Option<Vec<u8>>, column| {
            bytes
                .as_ref()
                .map(|b| keys.fields.open_text(&portcullis_store::Sealed(b.clone()), place(column)))
                .transpose()
        };
        Ok((open(&record.ip, "ip")?, open(&record.user_agent, "user_agent")?))
    }
}

/// Links `records` after the locked head and appends them.
pub(crate) async fn append(
    tx: &mut dyn StoreTx,
    records: Vec<AuditRecord>,
) -> Result<Vec<AuditEvent>, AppError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let from = tx.lock_audit_head().await?;
    let mut head = from;
    let mut events = Vec::with_capacity(records.len());
    for record in records {
        let (event, next) = head.link(record);
        head = next;
        events.push(event);
    }
    tx.append_audit_events(from, &events).await?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_inside_longer_text_and_short_secret_words_are_redacted() {
        let details = json!({
            "header": "Authorization: Bearer abc.def",
            "note": "client sent eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln by mistake",
            "pwd": "1", "pass": "2", "user_pin": "3", "refreshToken": "4", "otp": "5",
            "shipping": "kept", "spinner": "kept", "passenger_count": 2
        });
        let text = redact(details).to_string();
        for secret in ["abc.def", "eyJ", "\"1\"", "\"2\"", "\"3\"", "\"4\"", "\"5\""] {
            assert!(!text.contains(secret), "{secret} survived in {text}");
        }
        assert!(text.contains("\"shipping\":\"kept\"") && text.contains("\"spinner\":\"kept\""), "{text}");
    }

    #[test]
    fn secrets_under_any_name_or_in_any_shape_are_redacted() {
        let details = json!({
            "password": "hunter2",
            "new_password": "hunter3",
            "Client-Secret": "s",
            "refresh_token": "r",
            "x_api_key": "k",
            "nested": {"otp_code": "123456", "list": ["pcs_abc_def", "eyJhbGciOi.e30.sig", "Bearer abc"]},
            "note": "kept",
            "count": 3
        });
        let text = redact(details).to_string();
        for secret in ["hunter2", "hunter3", "\"s\"", "\"r\"", "\"k\"", "123456", "pcs_", "eyJ", "Bearer"] {
            assert!(!text.contains(secret), "{secret} survived in {text}");
        }
        assert!(text.contains("\"note\":\"kept\"") && text.contains("\"count\":3"));
    }

    #[test]
    fn oversized_details_are_replaced_by_a_note_never_cut_midway() {
        let mut details = BTreeMap::new();
        for i in 0..60 {
            details.insert(format!("k{i}"), Value::String("x".repeat(200)));
        }
        assert_eq!(details_text(details), r#"{"truncated":true}"#);
        let long = redact(Value::String("y".repeat(2000)));
        assert_eq!(long.as_str().map(|s| s.chars().count()), Some(MAX_DETAIL_STRING_CHARS + 1));
    }
}
