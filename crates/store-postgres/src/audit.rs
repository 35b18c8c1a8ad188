//! PostgreSQL implementation of the audit trail. The head row is locked (`FOR UPDATE`) by every
//! appending transaction, so transactions on any number of nodes append one after another and form
//! one chain; the lock is held to commit, which is why callers take it last.

use async_trait::async_trait;
use portcullis_domain::{
    Actor, ActorKind, AuditCheckpoint, AuditEvent, AuditRecord, ChainHead, Outcome, Timestamp,
};
use portcullis_store::{AuditQuery, AuditStore, StoreError};

use crate::{PostgresTx, corrupt};

/// Events per INSERT statement (18 parameters each, far below either engine's limit).
const APPEND_CHUNK: usize = 64;

const COLUMNS: &str = "seq, id, at, actor_kind, actor_id, on_behalf_of, action, target_type, target_id, \
                       organization_id, ip, user_agent, pii_key, request_id, outcome, details, prev_hash, hash";

/// An `audit_events` row as stored.
#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: String,
    at: i64,
    actor_kind: String,
    actor_id: Option<String>,
    on_behalf_of: Option<String>,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    organization_id: Option<String>,
    ip: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    pii_key: Option<String>,
    request_id: Option<String>,
    outcome: String,
    details: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| corrupt(what))
}

impl EventRow {
    fn into_event(self) -> Result<AuditEvent, StoreError> {
        // A row that does not parse is reported as corrupt rather than skipped: verification must
        // see it (an attacker's edit to actor_kind is a tampered event, not a missing one).
        Ok(AuditEvent {
            seq: self.seq,
            record: AuditRecord {
                id: self.id,
                at: Timestamp::from_unix_millis(self.at),
                actor: Actor {
                    kind: ActorKind::parse(&self.actor_kind)
                        .ok_or_else(|| corrupt("audit_events.actor_kind is unknown"))?,
                    id: self.actor_id,
                    on_behalf_of: self.on_behalf_of,
                },
                action: self.action,
                target_type: self.target_type,
                target_id: self.target_id,
                organization_id: self.organization_id,
                ip: self.ip,
                user_agent: self.user_agent,
                pii_key: self.pii_key,
                request_id: self.request_id,
                outcome: Outcome::parse(&self.outcome)
                    .ok_or_else(|| corrupt("audit_events.outcome is unknown"))?,
                details: self.details,
            },
            prev_hash: hash32(self.prev_hash, "audit_events.prev_hash is not 32 bytes")?,
            hash: hash32(self.hash, "audit_events.hash is not 32 bytes")?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    seq: i64,
    hash: Vec<u8>,
    at: i64,
    key_id: String,
    signature: Vec<u8>,
}

impl CheckpointRow {
    fn into_checkpoint(self) -> Result<AuditCheckpoint, StoreError> {
        Ok(AuditCheckpoint {
            seq: self.seq,
            hash: hash32(self.hash, "audit_checkpoints.hash is not 32 bytes")?,
            at: Timestamp::from_unix_millis(self.at),
            key_id: self.key_id,
            signature: self.signature,
        })
    }
}

impl PostgresTx {
    /// The chain head, read by `sql` (with or without a lock).
    async fn audit_head(&mut self, sql: &'static str) -> Result<ChainHead, StoreError> {
        let row: Option<(i64, Vec<u8>)> = match sqlx::query_as(sql).fetch_optional(&mut *self.tx).await {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        let (seq, hash) = row.ok_or_else(|| corrupt("audit_head has no row"))?;
        Ok(ChainHead { seq, hash: hash32(hash, "audit_head.hash is not 32 bytes")? })
    }
}

#[async_trait]
impl AuditStore for PostgresTx {
    async fn lock_audit_head(&mut self) -> Result<ChainHead, StoreError> {
        self.audit_head("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").await
    }

    async fn read_audit_head(&mut self) -> Result<ChainHead, StoreError> {
        self.audit_head("SELECT seq, hash FROM audit_head WHERE id = 1").await
    }

    async fn append_audit_events(
        &mut self,
        from: ChainHead,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let Some(last) = events.last() else { return Ok(()) };
        let moved =
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 AND hash = $4")
                .bind(last.seq)
                .bind(last.hash.as_slice())
                .bind(from.seq)
                .bind(from.hash.as_slice())
                .execute(&mut *self.tx)
                .await;
        match moved {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => {
                self.failed = true;
                return Err(StoreError::Conflict { entity: "audit_head" });
            }
            Err(e) => return Err(self.fail(e)),
        }
        // One statement per chunk rather than per event: under group commit the per-statement round
        // trip, not the commit, bounded the rate (docs/benchmarks.md, issue 8). Chunks have a fixed
        // size so that at most APPEND_CHUNK statement shapes are prepared and cached.
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO audit_events (seq, id, at, actor_kind, actor_id, on_behalf_of, action, \
                 target_type, target_id, organization_id, ip, user_agent, pii_key, request_id, outcome, \
                 details, prev_hash, hash) ",
            );
            insert.push_values(chunk, |mut row, event| {
                let r = &event.record;
                row.push_bind(event.seq)
                    .push_bind(r.id.clone())
                    .push_bind(r.at.as_unix_millis())
                    .push_bind(r.actor.kind.as_str())
                    .push_bind(r.actor.id.clone())
                    .push_bind(r.actor.on_behalf_of.clone())
                    .push_bind(r.action.clone())
                    .push_bind(r.target_type.clone())
                    .push_bind(r.target_id.clone())
                    .push_bind(r.organization_id.clone())
                    .push_bind(r.ip.clone())
                    .push_bind(r.user_agent.clone())
                    .push_bind(r.pii_key.clone())
                    .push_bind(r.request_id.clone())
                    .push_bind(r.outcome.as_str())
                    .push_bind(r.details.clone())
                    .push_bind(event.prev_hash.to_vec())
                    .push_bind(event.hash.to_vec());
            });
            if let Err(e) = insert.build().execute(&mut *self.tx).await {
                return Err(self.write_conflict(e, "audit_event"));
            }
        }
        Ok(())
    }

    async fn audit_events_after(
        &mut self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows: Vec<EventRow> = match sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn list_audit_events(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Only the filters asked for are in the statement (so each can use its index); the text comes
        // from the fixed fragments below and every value is bound.
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "SELECT {COLUMNS} FROM audit_events WHERE 1 = 1"
        ));
        if let Some(actor) = &query.actor_id {
            sql.push(" AND (actor_id = ")
                .push_bind(actor.clone())
                .push(" OR on_behalf_of = ")
                .push_bind(actor.clone())
                .push(")");
        }
        if let Some(id) = &query.involving {
            // Each column has its own index, so the engine can read the three and merge them.
            sql.push(" AND (actor_id = ")
                .push_bind(id.clone())
                .push(" OR on_behalf_of = ")
                .push_bind(id.clone())
                .push(" OR target_id = ")
                .push_bind(id.clone())
                .push(")");
        }
        if let Some(prefix) = &query.action_prefix {
            // A range, not LIKE (action names contain `_`, a LIKE wildcard) nor substr (no index):
            // every action starting with the prefix sorts bytewise in [prefix, prefix + DEL), since
            // action names are lowercase letters, digits, `_` and `.`, all below DEL.
            sql.push(" AND action COLLATE \"C\" >= ")
                .push_bind(prefix.clone())
                .push(" AND action COLLATE \"C\" < ")
                .push_bind(format!("{prefix}\u{7f}"));
        }
        if let Some(kind) = &query.target_type {
            sql.push(" AND target_type = ").push_bind(kind.clone());
        }
        if let Some(id) = &query.target_id {
            sql.push(" AND target_id = ").push_bind(id.clone());
        }
        if let Some(org) = &query.organization_id {
            sql.push(" AND organization_id = ").push_bind(org.clone());
        }
        if let Some(outcome) = query.outcome {
            sql.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(since) = query.since {
            sql.push(" AND at >= ").push_bind(since.as_unix_millis());
        }
        if let Some(until) = query.until {
            sql.push(" AND at < ").push_bind(until.as_unix_millis());
        }
        if let Some(before) = query.before_seq {
            sql.push(" AND seq < ").push_bind(before);
        }
        sql.push(" ORDER BY seq DESC LIMIT ").push_bind(i64::from(query.limit));
        let rows: Vec<EventRow> = match sql.build_query_as().fetch_all(&mut *self.tx).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn audit_bounds(&mut self) -> Result<Option<(i64, i64, u64)>, StoreError> {
        let row: (Option<i64>, Option<i64>, i64) =
            match sqlx::query_as("SELECT min(seq), max(seq), count(*) FROM audit_events")
                .fetch_one(&mut *self.tx)
                .await
            {
                Ok(row) => row,
                Err(e) => return Err(self.fail(e)),
            };
        Ok(match row {
            (Some(min), Some(max), count) => Some((min, max, count as u64)),
            _ => None,
        })
    }

    async fn insert_audit_checkpoint(&mut self, checkpoint: &AuditCheckpoint) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(checkpoint.seq)
        .bind(checkpoint.hash.as_slice())
        .bind(checkpoint.at.as_unix_millis())
        .bind(&checkpoint.key_id)
        .bind(checkpoint.signature.as_slice())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_conflict(e, "audit_checkpoint")),
        }
    }

    async fn latest_audit_checkpoint(&mut self) -> Result<Option<AuditCheckpoint>, StoreError> {
        let row: Option<CheckpointRow> = match sqlx::query_as(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(CheckpointRow::into_checkpoint).transpose()
    }

    async fn audit_checkpoints_after(
        &mut self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let rows: Vec<CheckpointRow> = match sqlx::query_as(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(CheckpointRow::into_checkpoint).collect()
    }

    async fn audit_checkpoint_at(&mut self, seq: i64) -> Result<Option<AuditCheckpoint>, StoreError> {
        let row: Option<CheckpointRow> = match sqlx::query_as(
            "SELECT seq, hash, at, key_id, signature FROM audit_checkpoints WHERE seq = $1",
        )
        .bind(seq)
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        row.map(CheckpointRow::into_checkpoint).transpose()
    }

    async fn audit_purge_cut(&mut self, before: Timestamp) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = match sqlx::query_as(
            "SELECT c.seq FROM audit_checkpoints c JOIN audit_events e ON e.seq = c.seq \
             WHERE e.at < $1 ORDER BY c.seq DESC LIMIT 1",
        )
        .bind(before.as_unix_millis())
        .fetch_optional(&mut *self.tx)
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        Ok(row.map(|(seq,)| seq))
    }

    async fn purge_audit_events(&mut self, through_seq: i64, limit: u32) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM audit_events WHERE seq IN \
             (SELECT seq FROM audit_events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
        )
        .bind(through_seq)
        .bind(i64::from(limit))
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn count_audit_rows_under(&mut self, pii_key: &str) -> Result<u64, StoreError> {
        let row: (i64,) = match sqlx::query_as("SELECT count(*) FROM audit_events WHERE pii_key = $1")
            .bind(pii_key)
            .fetch_one(&mut *self.tx)
            .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.fail(e)),
        };
        Ok(row.0 as u64)
    }
}
