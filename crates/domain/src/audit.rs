//! The audit trail's event and its hash chain: what an event holds, its canonical encoding, and the
//! link `hash = SHA-256(prev_hash ‖ encoding)` that makes a changed, removed, added or reordered
//! event detectable, plus the bytes an audit checkpoint signature covers.
//!
//! The encoding is ours and versioned, not JSON: every field in a fixed order, each length-prefixed,
//! so no two different events encode alike and nothing depends on a serializer's whims. Sealed
//! fields (client address and user agent) enter the chain as their ciphertext: the chain verifies
//! without any data key, and still does once a person's data is erased.

use sha2::{Digest, Sha256};

use crate::Timestamp;

/// The first link: the `prev_hash` of event 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The most bytes an event's details take once encoded as JSON (ASVS V16.2: bounded log records).
pub const MAX_AUDIT_DETAILS_BYTES: usize = 4096;

/// The longest action name.
pub const MAX_AUDIT_ACTION_LEN: usize = 64;

/// The longest id of an actor or a target, and the longest target type.
pub const MAX_AUDIT_REF_LEN: usize = 128;

/// Tells the encoding's version apart, so a future change cannot make an old event verify under a
/// new reading of its bytes.
const ENCODING_TAG: &[u8] = b"portcullis-audit-event-v1";
const CHECKPOINT_TAG: &[u8] = b"portcullis-audit-checkpoint-v1";

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    /// A person, through a session (cookie or bearer token).
    User,
    /// A service account, through a session or a key.
    ServiceAccount,
    /// Anyone through an API key: the id is the key's, the account behind it is `on_behalf_of`.
    ApiKey,
    /// Portcullis itself: the scheduler, detection rules, the command line.
    System,
    /// An application writing its own event (`POST /v1/audit/events`): the id is its service
    /// account, the end user it names is `on_behalf_of`.
    Application,
    /// Nobody yet known: a signup, a failed login, a reset by link.
    Anonymous,
}

impl ActorKind {
    pub const ALL: [ActorKind; 6] = [
        ActorKind::User,
        ActorKind::ServiceAccount,
        ActorKind::ApiKey,
        ActorKind::System,
        ActorKind::Application,
        ActorKind::Anonymous,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::ServiceAccount => "service_account",
            ActorKind::ApiKey => "api_key",
            ActorKind::System => "system",
            ActorKind::Application => "application",
            ActorKind::Anonymous => "anonymous",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    /// Tried and failed (a wrong password, an invalid token).
    Failure,
    /// Refused by an authorization rule.
    Denied,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Failure, Outcome::Denied];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// Text that is not a valid action name, target type or reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAuditField {
    #[error("must be two to eight dot-separated words of lowercase letters, digits or _, at most 64 bytes")]
    Action,
    #[error("must be 1 to 128 visible ASCII characters")]
    Reference,
}

/// Checks an action name: a stable dotted name such as `user.password.changed`.
pub fn check_action(action: &str) -> Result<(), InvalidAuditField> {
    let words: Vec<&str> = action.split('.').collect();
    let word_ok = |w: &&str| {
        !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if action.len() > MAX_AUDIT_ACTION_LEN || !(2..=8).contains(&words.len()) || !words.iter().all(word_ok) {
        return Err(InvalidAuditField::Action);
    }
    Ok(())
}

/// Checks an id or type naming an actor or a target: printable ASCII without spaces, bounded.
pub fn check_reference(text: &str) -> Result<(), InvalidAuditField> {
    if text.is_empty() || text.len() > MAX_AUDIT_REF_LEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidAuditField::Reference);
    }
    Ok(())
}

/// Who acted: the kind, the id (an account, a key, a service; none for the system or an anonymous
/// caller) and, for keys and applications, the account acted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<String>,
    pub on_behalf_of: Option<String>,
}

impl Actor {
    pub fn system() -> Self {
        Self { kind: ActorKind::System, id: None, on_behalf_of: None }
    }

    pub fn anonymous() -> Self {
        Self { kind: ActorKind::Anonymous, id: None, on_behalf_of: None }
    }
}

/// An audit event before it joins the chain. `details` is JSON text already redacted and bounded
/// by the writer (`app::audit`); `ip` and `user_agent` are ciphertext (with `pii_key` naming the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// A random id: binds the sealed fields to this row (their associated data) and is what an
    /// application gets back.
    pub id: String,
    pub at: Timestamp,
    pub actor: Actor,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub organization_id: Option<String>,
    pub ip: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
    pub pii_key: Option<String>,
    pub request_id: Option<String>,
    pub outcome: Outcome,
    pub details: String,
}

/// An event in the chain: its place (`seq`, from 1 without gaps), the hash of the one before and
/// its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: i64,
    pub record: AuditRecord,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The end of the chain: the newest event's seq and hash (0 and [`GENESIS_HASH`] when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead { seq: 0, hash: GENESIS_HASH };

    /// Links `record` after this head: the next event and the new head.
    pub fn link(&self, record: AuditRecord) -> (AuditEvent, ChainHead) {
        let seq = self.seq + 1;
        let hash = event_hash(&self.hash, seq, &record);
        (AuditEvent { seq, record, prev_hash: self.hash, hash }, ChainHead { seq, hash })
    }
}

/// A signed statement that the chain's event `seq` has `hash`: lets a verifier detect a rewritten
/// chain (the signature needs the audit key, which the database does not hold in clear) and lets
/// retention cut the chain's start without losing its verifiability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: [u8; 32],
    pub at: Timestamp,
    /// The audit key that signed.
    pub key_id: String,
    /// Ed25519 over [`checkpoint_message`].
    pub signature: Vec<u8>,
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: i64, hash: &[u8; 32], at: Timestamp, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    field(&mut out, CHECKPOINT_TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    out.extend_from_slice(&at.as_unix_millis().to_be_bytes());
    field(&mut out, key_id.as_bytes());
    out
}

/// `SHA-256(prev_hash ‖ encoding(seq, record))`.
pub fn event_hash(prev_hash: &[u8; 32], seq: i64, record: &AuditRecord) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(encode(seq, record));
    hasher.finalize().into()
}

/// The canonical encoding: a tag, then every field in a fixed order; absent fields and empty ones
/// differ (a presence byte), and every variable field carries its length.
pub fn encode(seq: i64, record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + record.details.len());
    field(&mut out, ENCODING_TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    field(&mut out, record.id.as_bytes());
    out.extend_from_slice(&record.at.as_unix_millis().to_be_bytes());
    field(&mut out, record.actor.kind.as_str().as_bytes());
    optional(&mut out, record.actor.id.as_deref().map(str::as_bytes));
    optional(&mut out, record.actor.on_behalf_of.as_deref().map(str::as_bytes));
    field(&mut out, record.action.as_bytes());
    optional(&mut out, record.target_type.as_deref().map(str::as_bytes));
    optional(&mut out, record.target_id.as_deref().map(str::as_bytes));
    optional(&mut out, record.organization_id.as_deref().map(str::as_bytes));
    optional(&mut out, record.ip.as_deref());
    optional(&mut out, record.user_agent.as_deref());
    optional(&mut out, record.pii_key.as_deref().map(str::as_bytes));
    optional(&mut out, record.request_id.as_deref().map(str::as_bytes));
    field(&mut out, record.outcome.as_str().as_bytes());
    field(&mut out, record.details.as_bytes());
    out
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded far below 4 GiB (details at 4 KiB, the rest at a few hundred bytes).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.push(1);
            field(out, bytes);
        }
        None => out.push(0),
    }
}

/// Hex spelling of a hash, as shown to operators and in exports.
pub fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            id: "e1".into(),
            at: Timestamp::from_unix_millis(1_700_000_000_000),
            actor: Actor { kind: ActorKind::User, id: Some("u1".into()), on_behalf_of: None },
            action: "user.password.changed".into(),
            target_type: Some("user".into()),
            target_id: Some("u1".into()),
            organization_id: None,
            ip: Some(vec![1, 2, 3]),
            user_agent: None,
            pii_key: Some("pii-1".into()),
            request_id: Some("r1".into()),
            outcome: Outcome::Success,
            details: "{}".into(),
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = event_hash(&GENESIS_HASH, 1, &record());
        let mut variants: Vec<AuditRecord> = Vec::new();
        let mut r = record();
        r.id = "e2".into();
        variants.push(r);
        let mut r = record();
        r.at = r.at.plus_millis(1);
        variants.push(r);
        let mut r = record();
        r.actor.kind = ActorKind::ApiKey;
        variants.push(r);
        let mut r = record();
        r.actor.on_behalf_of = Some(String::new());
        variants.push(r);
        let mut r = record();
        r.action = "user.password.reset".into();
        variants.push(r);
        let mut r = record();
        r.target_id = None;
        variants.push(r);
        let mut r = record();
        r.organization_id = Some("o".into());
        variants.push(r);
        let mut r = record();
        r.ip = Some(vec![1, 2, 4]);
        variants.push(r);
        let mut r = record();
        r.outcome = Outcome::Failure;
        variants.push(r);
        let mut r = record();
        r.details = "{\"a\":1}".into();
        variants.push(r);
        for variant in variants {
            assert_ne!(event_hash(&GENESIS_HASH, 1, &variant), base, "{variant:?}");
        }
        assert_ne!(event_hash(&GENESIS_HASH, 2, &record()), base, "the seq is covered");
        assert_ne!(event_hash(&[1; 32], 1, &record()), base, "the previous hash is covered");
    }

    #[test]
    fn moving_bytes_between_adjacent_fields_changes_the_encoding() {
        let mut a = record();
        a.target_type = Some("us".into());
        a.target_id = Some("eru1".into());
        let mut b = record();
        b.target_type = Some("user".into());
        b.target_id = Some("u1".into());
        assert_ne!(encode(1, &a), encode(1, &b));
    }

    #[test]
    fn linking_advances_the_head_and_chains_the_hashes() {
        let (first, head) = ChainHead::GENESIS.link(record());
        assert_eq!((first.seq, first.prev_hash), (1, GENESIS_HASH));
        let (second, head) = head.link(record());
        assert_eq!((second.seq, second.prev_hash), (2, first.hash));
        assert_eq!(head, ChainHead { seq: 2, hash: second.hash });
        assert_eq!(second.hash, event_hash(&first.hash, 2, &second.record));
    }

    #[test]
    fn action_names_are_dotted_lowercase_words() {
        for good in ["user.created", "user.password.changed", "app.invoice_2.paid"] {
            assert_eq!(check_action(good), Ok(()), "{good}");
        }
        for bad in ["user", "User.created", "user..created", ".user", "user.created.", "a b.c", ""] {
            assert_eq!(check_action(bad), Err(InvalidAuditField::Action), "{bad}");
        }
        assert!(check_action(&format!("a.{}", "b".repeat(70))).is_err());
        assert!(check_reference("ok-1:2").is_ok());
        assert!(check_reference("with space").is_err() && check_reference("").is_err());
        assert!(check_reference("é").is_err());
    }
}
