//! Verifying the audit chain: every event's hash recomputed from its content and the one before,
//! every checkpoint's signature and hash checked, the start anchored at genesis or at a signed
//! checkpoint (after a retention purge), and the end matched against the head row.
//!
//! The whole check reads one snapshot, a page at a time, so memory stays flat on any size of log.

use portcullis_domain::AuditCheckpoint;
use portcullis_domain::audit::{GENESIS_HASH, event_hash, hex};

use crate::{App, AppError};

/// Events read per page.
const PAGE: u32 = 5000;

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
    /// The newest seq verified.
    pub last_seq: i64,
    /// The first defect, if any; verification stops there.
    pub broken: Option<ChainBreak>,
}

impl VerifyReport {
    fn broken(mut self, seq: i64, reason: String) -> Self {
        self.broken = Some(ChainBreak { seq, reason });
        self
    }
}

impl App {
    /// The scheduled check of `serve`: verifies the chain and, when it is broken, records an
    /// `audit_chain_broken` security event (critical, so it alerts by default) naming where.
    pub async fn run_audit_verification(&self) -> Result<VerifyReport, AppError> {
        let report = self.verify_audit_chain(&|_, _| {}).await?;
        if let Some(broken) = &report.broken {
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
            .await?;
        } else {
            tracing::info!(events = report.events, checkpoints = report.checkpoints, "audit chain verified");
        }
        Ok(report)
    }

    /// Recomputes the whole chain (`portcullis audit verify`, and the scheduled check in `serve`).
    /// `progress(done, total)` is called after each page.
    pub async fn verify_audit_chain(
        &self,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<VerifyReport, AppError> {
        let keys = self.loaded_keys();
        let mut tx = self.inner.store.begin_read().await?;
        let head = tx.read_audit_head().await?;
        let bounds = tx.audit_bounds().await?;
        let mut report = VerifyReport::default();
        let Some((min, max, total)) = bounds else {
            tx.rollback().await?;
            if head.seq != 0 {
                return Ok(report.broken(1, format!("the chain head says {} events were written but none is stored: the events were deleted", head.seq)));
            }
            return Ok(report);
        };
        // The start: genesis, or a signed checkpoint exactly where a purge cut.
        let mut prev = if min == 1 {
            GENESIS_HASH
        } else {
            match tx.audit_checkpoint_at(min - 1).await? {
                Some(anchor) if keys.audit.verifies(&anchor) => {
                    report.checkpoints += 1;
                    anchor.hash
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
                None => {
                    tx.rollback().await?;
                    return Ok(report.broken(min, format!("events before seq {min} are missing and no signed checkpoint marks a retention cut there: events were deleted")));
                }
            }
        };
        report.anchored_at = min - 1;
        let mut expected = min;
        let mut checkpoints: Vec<AuditCheckpoint> = tx.audit_checkpoints_after(min - 1, PAGE).await?;
        checkpoints.reverse();
        loop {
            let page = tx.audit_events_after(expected - 1, PAGE).await?;
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
                    }
                    checkpoints.pop();
                    if checkpoints.is_empty() {
                        checkpoints = tx.audit_checkpoints_after(event.seq, PAGE).await?;
                        checkpoints.reverse();
                    }
                }
                prev = hash;
                report.events += 1;
                report.last_seq = event.seq;
                expected += 1;
            }
            progress(report.events, total);
        }
        let beyond = tx.audit_checkpoints_after(max, 1).await?;
        tx.rollback().await?;
        if let Some(checkpoint) = beyond.first() {
            return Ok(report.broken(max + 1, format!("a signed checkpoint names event {} but the log ends at {max}: events after {max} were deleted", checkpoint.seq)));
        }
        if head.seq != max || head.hash != prev {
            return Ok(report.broken(max + 1, format!("the chain head says event {} (hash {}) but the log ends at event {max}: the log's tail was cut or the head was changed", head.seq, hex(&head.hash))));
        }
        Ok(report)
    }
}
