//! Verifying the audit chain: every event's hash recomputed from its content and the one before,
//! every checkpoint's signature and hash checked (those in the database, those in the checkpoint
//! file outside it, and the newest one this node has seen, which it keeps in memory), the start
//! anchored at genesis or at a signed checkpoint (after a retention purge), the end matched against
//! the head row, and no event older than a day left without a signed checkpoint after it.
//!
//! The last rule is what stops someone who can write the database from deleting every checkpoint
//! and rewriting the chain from genesis with fresh hashes: checkpoints are made every few minutes
//! while a server runs and at every clean stop, so a day-old event that none covers means they were
//! removed (or a crashed server stayed down that long: `portcullis audit checkpoint`, an operator's
//! explicit act after reading the report, covers such a gap).
//!
//! The whole check reads one snapshot, a page at a time, so memory stays flat on any size of log.

use std::collections::BTreeMap;

use portcullis_domain::audit::{GENESIS_HASH, event_hash, hex};
use portcullis_domain::{AuditCheckpoint, Timestamp};
use portcullis_store::StoreError;

use crate::{App, AppError};

/// Events read per page.
const PAGE: u32 = 5000;

/// How much older than the checkpoint interval an event may be before a missing checkpoint after it
/// counts as tampering.
pub const COVERAGE_GRACE_MILLIS: i64 = 24 * 3_600_000;

/// Where the chain first breaks, and why, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Events whose hash was recomputed.
    pub events: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: u64,
    /// The seq the verified chain starts after (0, or the checkpoint a purge cut at).
    pub anchored_at: i64,
    /// The newest seq verified, and its hash.
    pub last_seq: i64,
    pub last_hash: [u8; 32],
    /// The first defect, if any; verification stops there.
    pub broken: Option<ChainBreak>,
}

impl VerifyReport {
    fn broken(mut self, seq: i64, reason: String) -> Self {
        self.broken = Some(ChainBreak { seq, reason });
        self
    }
}

/// How much to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Start at the newest valid checkpoint rather than at the chain's start (before signing the
    /// next checkpoint: what it covers was verified when it was signed).
    pub from_newest_checkpoint: bool,
    /// Apply the coverage rule (an operator's explicit checkpoint does not: it is how a gap left by
    /// a long outage after a crash is closed).
    pub coverage: bool,
}

impl App {
    /// The scheduled check of `serve`: verifies the chain and, when it is broken or cannot be read
    /// (a row that no longer parses is tampering too), records an `audit_chain_broken` security
    /// event (critical, so it alerts by default) naming where.
    pub async fn run_audit_verification(&self) -> Result<VerifyReport, AppError> {
        let report = match self.verify_audit_chain(&|_, _| {}).await {
            Ok(report) => report,
            Err(AppError::Unavailable(error)) => return Err(AppError::Unavailable(error)),
            Err(error) => VerifyReport::default().broken(
                0,
                format!("the audit log could not be read: {}", portcullis_domain::error_chain(&error)),
            ),
        };
        if let Ok(mut last) = self.inner.audit_verified.lock() {
            *last = Some((self.now(), report.broken.is_none()));
        }
        if let Some(broken) = &report.broken {
            self.raise_chain_broken(broken).await?;
        } else {
            tracing::info!(events = report.events, checkpoints = report.checkpoints, "audit chain verified");
        }
        Ok(report)
    }

    /// When this node last verified the whole chain (the scheduled check), and whether it was intact.
    pub fn last_audit_verification(&self) -> Option<(portcullis_domain::Timestamp, bool)> {
        self.inner.audit_verified.lock().ok().and_then(|last| *last)
    }

    pub(crate) async fn raise_chain_broken(&self, broken: &ChainBreak) -> Result<(), AppError> {
        tracing::error!(seq = broken.seq, reason = %broken.reason, "the audit chain is broken");
        let details =
            [("seq".to_owned(), broken.seq.to_string()), ("reason".to_owned(), broken.reason.clone())];
        self.record_security_event_with(
            portcullis_domain::SecurityEventKind::AuditChainBroken,
            None,
            None,
            None,
            details.into_iter().collect(),
        )
        .await
    }

    /// Recomputes the whole chain (`portcullis audit verify`, and the scheduled check in `serve`).
    /// `progress(done, total)` is called after each page.
    pub async fn verify_audit_chain(
        &self,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<VerifyReport, AppError> {
        self.verify_scope(Scope { from_newest_checkpoint: false, coverage: true }, progress).await
    }

    pub(crate) async fn verify_scope(
        &self,
        scope: Scope,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<VerifyReport, AppError> {
        self.verify_in(self.inner.store.as_ref(), scope, true, progress).await
    }

    /// Verifies the chain in another database, a backup restored into a scratch database: against
    /// this installation's audit keys, but not against the checkpoint file or this node's memory
    /// (the backup is older than both), without the coverage rule (a backup's newest events had no
    /// checkpoint yet when it was taken), and trusting nothing of it afterwards.
    pub(crate) async fn verify_audit_chain_in(
        &self,
        store: &dyn portcullis_store::Store,
    ) -> Result<VerifyReport, AppError> {
        let scope = Scope { from_newest_checkpoint: false, coverage: false };
        self.verify_in(store, scope, false, &|_, _| {}).await
    }

    async fn verify_in(
        &self,
        store: &dyn portcullis_store::Store,
        scope: Scope,
        live: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<VerifyReport, AppError> {
        // An audit key rotated by another node verifies its checkpoints here only once loaded.
        self.reload_keys_if_changed().await?;
        let keys = self.loaded_keys();
        let mut report = VerifyReport::default();
        // Every trusted statement "event seq has hash h": the file's lines and this node's memory.
        let mut outside: BTreeMap<i64, ([u8; 32], &'static str)> = BTreeMap::new();
        match if live { self.checkpoint_file_lines() } else { Ok(Vec::new()) } {
            Ok(lines) => {
                for checkpoint in lines {
                    if !keys.audit.verifies(&checkpoint) {
                        return Ok(report.broken(
                            checkpoint.seq,
                            format!(
                                "the checkpoint file's line for seq {} has an invalid signature",
                                checkpoint.seq
                            ),
                        ));
                    }
                    outside.insert(checkpoint.seq, (checkpoint.hash, "the checkpoint file"));
                }
            }
            Err(reason) => return Ok(report.broken(0, reason)),
        }
        if live && let Some((seq, hash)) = self.inner.audit_writer.high_water() {
            outside.entry(seq).or_insert((hash, "a checkpoint this server signed or verified earlier"));
        }

        let mut tx = store.begin_read().await?;
        let head = tx.read_audit_head().await?;
        let bounds = tx.audit_bounds().await?;
        let Some((min, max, total)) = bounds else {
            tx.rollback().await?;
            if head.seq != 0 {
                return Ok(report.broken(1, format!("the chain head says {} events were written but none is stored: the events were deleted", head.seq)));
            }
            if let Some((seq, (_, source))) = outside.last_key_value() {
                return Ok(report.broken(
                    1,
                    format!("{source} names event {seq} but the log is empty: the events were deleted"),
                ));
            }
            return Ok(report);
        };
        // The start: genesis, or a signed checkpoint exactly where a purge cut; for an incremental
        // check, the newest checkpoint that verifies.
        let mut start = if min == 1 { Some((0, GENESIS_HASH)) } else { None };
        if min > 1 {
            match tx.audit_checkpoint_at(min - 1).await? {
                Some(anchor) if keys.audit.verifies(&anchor) => {
                    report.checkpoints += 1;
                    start = Some((anchor.seq, anchor.hash));
                }
                Some(_) => {
                    tx.rollback().await?;
                    return Ok(report.broken(
                        min - 1,
                        format!(
                            "the checkpoint at seq {} that the chain starts from has an invalid signature",
                            min - 1
                        ),
                    ));
                }
                None => {}
            }
        }
        let Some((mut anchor, mut prev)) = start else {
            tx.rollback().await?;
            return Ok(report.broken(min, format!("events before seq {min} are missing and no signed checkpoint marks a retention cut there: events were deleted")));
        };
        if scope.from_newest_checkpoint
            && let Some(newest) = tx.latest_audit_checkpoint().await?
            && newest.seq > anchor
            && newest.seq <= max
            && keys.audit.verifies(&newest)
            && outside.range(newest.seq + 1..).next().is_none()
        {
            // What the newest checkpoint covers was verified when it was signed; a trusted
            // statement past it (the file, this node's memory) must still be met below.
            anchor = newest.seq;
            prev = newest.hash;
        }
        report.anchored_at = anchor;

        let stale_before = self
            .now()
            .plus_millis(-(self.inner.settings.audit.checkpoint_interval_millis + COVERAGE_GRACE_MILLIS));
        let mut last_stale: Option<i64> = None;
        let mut covered = (anchor, prev);
        let mut expected = anchor + 1;
        let mut checkpoints: Vec<AuditCheckpoint> = tx.audit_checkpoints_after(anchor, PAGE).await?;
        checkpoints.reverse();
        loop {
            let page = match tx.audit_events_after(expected - 1, PAGE).await {
                Ok(page) => page,
                Err(StoreError::Corrupt(what)) => {
                    tx.rollback().await?;
                    return Ok(report.broken(expected, format!("an event at or after seq {expected} no longer parses ({what}): it was changed in the database")));
                }
                Err(other) => return Err(other.into()),
            };
            if page.is_empty() {
                break;
            }
            for event in page {
                if event.seq != expected {
                    tx.rollback().await?;
                    return Ok(report.broken(
                        expected,
                        format!(
                            "event {expected} is missing (the next stored is {}): events were deleted",
                            event.seq
                        ),
                    ));
                }
                if event.prev_hash != prev {
                    tx.rollback().await?;
                    return Ok(report.broken(event.seq, format!("event {} does not follow event {}: its prev_hash is not that event's hash (an event was inserted, removed or moved here)", event.seq, event.seq - 1)));
                }
                let hash = event_hash(&prev, event.seq, &event.record);
                if hash != event.hash {
                    tx.rollback().await?;
                    return Ok(report.broken(event.seq, format!("event {} was changed after it was written: its content does not hash to its stored hash", event.seq)));
                }
                while let Some(checkpoint) = checkpoints.last().filter(|c| c.seq <= event.seq) {
                    if checkpoint.seq == event.seq {
                        if !keys.audit.verifies(checkpoint) {
                            tx.rollback().await?;
                            return Ok(report.broken(
                                event.seq,
                                format!(
                                    "the checkpoint at seq {} has an invalid signature (key {})",
                                    event.seq, checkpoint.key_id
                                ),
                            ));
                        }
                        if checkpoint.hash != hash {
                            tx.rollback().await?;
                            return Ok(report.broken(event.seq, format!("the signed checkpoint at seq {} holds hash {} but the chain has {}: the chain was rewritten", event.seq, hex(&checkpoint.hash), hex(&hash))));
                        }
                        report.checkpoints += 1;
                        covered = (event.seq, hash);
                    }
                    checkpoints.pop();
                    if checkpoints.is_empty() {
                        checkpoints = tx.audit_checkpoints_after(event.seq, PAGE).await?;
                        checkpoints.reverse();
                    }
                }
                if let Some((trusted, source)) = outside.get(&event.seq) {
                    if *trusted != hash {
                        tx.rollback().await?;
                        return Ok(report.broken(event.seq, format!("{source} holds hash {} for event {} but the chain has {}: the chain was rewritten", hex(trusted), event.seq, hex(&hash))));
                    }
                    if event.seq > covered.0 {
                        covered = (event.seq, hash);
                    }
                }
                if event.record.at < stale_before {
                    last_stale = Some(event.seq);
                }
                prev = hash;
                report.events += 1;
                report.last_seq = event.seq;
                report.last_hash = hash;
                expected += 1;
            }
            progress(report.events, total);
        }
        let beyond = tx.audit_checkpoints_after(max, 1).await?;
        tx.rollback().await?;
        if let Some(checkpoint) = beyond.first() {
            return Ok(report.broken(max + 1, format!("a signed checkpoint names event {} but the log ends at {max}: events after {max} were deleted", checkpoint.seq)));
        }
        if let Some((seq, (_, source))) = outside.range(max + 1..).next() {
            return Ok(report.broken(
                max + 1,
                format!(
                    "{source} names event {seq} but the log ends at {max}: events after {max} were deleted"
                ),
            ));
        }
        if head.seq != max || head.hash != prev {
            return Ok(report.broken(max + 1, format!("the chain head says event {} (hash {}) but the log ends at event {max}: the log's tail was cut or the head was changed", head.seq, hex(&head.hash))));
        }
        if scope.coverage
            && let Some(stale) = last_stale
            && stale > covered.0
        {
            return Ok(report.broken(covered.0 + 1, format!("events {} to {stale} are more than a day old but no signed checkpoint covers them: checkpoints were deleted (or a server that crashed stayed down that long; if so, `portcullis audit checkpoint` covers them once this report is understood)", covered.0 + 1)));
        }
        // What verified is trusted from now on: a later deletion of that checkpoint, or a rewrite
        // under it, is caught by this node even if the database no longer shows it.
        if live && covered.0 > 0 {
            self.inner.audit_writer.raise_high_water(covered.0, covered.1);
        }
        Ok(report)
    }

    /// The checkpoint file's lines, if one is configured and exists; a line that does not parse is
    /// an error naming it (the file is evidence: it is read, never repaired).
    fn checkpoint_file_lines(&self) -> Result<Vec<AuditCheckpoint>, String> {
        let Some(path) = &self.inner.settings.audit.checkpoint_file else { return Ok(Vec::new()) };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(format!("the checkpoint file {} cannot be read: {error}", path.display()));
            }
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                parse_checkpoint_line(line).ok_or_else(|| {
                    format!("line {} of the checkpoint file {} does not parse", n + 1, path.display())
                })
            })
            .collect()
    }
}

/// A checkpoint as `append_checkpoint_line` writes it.
fn parse_checkpoint_line(line: &str) -> Option<AuditCheckpoint> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let bytes = |field: &str| -> Option<Vec<u8>> {
        let text = value.get(field)?.as_str()?;
        if text.len() % 2 != 0 {
            return None;
        }
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
    };
    Some(AuditCheckpoint {
        seq: value.get("seq")?.as_i64()?,
        hash: bytes("hash")?.try_into().ok()?,
        at: Timestamp::from_unix_millis(value.get("at_ms")?.as_i64()?),
        key_id: value.get("key_id")?.as_str()?.to_owned(),
        signature: bytes("signature")?,
    })
}
