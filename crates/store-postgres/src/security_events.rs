//! PostgreSQL implementation of the security event record.

use async_trait::async_trait;
use portcullis_domain::{SecurityEvent, SecurityEventId, SecurityEventKind, SessionId, Timestamp, UserId};
use portcullis_store::{
    Sealed, SecurityEventCursor, SecurityEventPage, SecurityEventQuery, SecurityEventStore, StoreError,
    StoredSecurityEvent,
};

use crate::{PostgresTx, corrupt};

/// A `security_events` row as stored.
#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    at: i64,
    kind: String,
    user_id: Option<String>,
    session_id: Option<String>,
    ip: Option<Vec<u8>>,
    pii_key: Option<String>,
    details: String,
}

/// A row of a listing: the event and its place in the `(at, seq)` order.
#[derive(sqlx::FromRow)]
struct ListedRow {
    seq: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

impl EventRow {
    fn into_event(self) -> Result<StoredSecurityEvent, StoreError> {
        Ok(StoredSecurityEvent {
            event: SecurityEvent {
                id: SecurityEventId::parse(&self.id)
                    .map_err(|_| corrupt("security_events.id is not a uuid"))?,
                at: Timestamp::from_unix_millis(self.at),
                kind: SecurityEventKind::parse(&self.kind)
                    .ok_or_else(|| corrupt("security_events.kind is unknown"))?,
                user_id: self
                    .user_id
                    .map(|id| UserId::parse(&id))
                    .transpose()
                    .map_err(|_| corrupt("security_events.user_id is not a uuid"))?,
                session_id: self
                    .session_id
                    .map(|id| SessionId::parse(&id))
                    .transpose()
                    .map_err(|_| corrupt("security_events.session_id is not a uuid"))?,
                details: serde_json::from_str(&self.details)
                    .map_err(|_| corrupt("security_events.details is not an object of strings"))?,
            },
            ip: self.ip.map(Sealed),
            pii_key: self.pii_key,
        })
    }
}

#[async_trait]
impl SecurityEventStore for PostgresTx {
    async fn insert_security_event(&mut self, stored: &StoredSecurityEvent) -> Result<(), StoreError> {
        let event = &stored.event;
        let result = sqlx::query(
            "INSERT INTO security_events (id, at, kind, user_id, session_id, ip, pii_key, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.id.to_string())
        .bind(event.at.as_unix_millis())
        .bind(event.kind.as_str())
        .bind(event.user_id.map(|id| id.to_string()))
        .bind(event.session_id.map(|id| id.to_string()))
        .bind(stored.ip.as_ref().map(|ip| ip.0.as_slice()))
        .bind(stored.pii_key.as_deref())
        .bind(details_json(&event.details)?)
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e).conflict_on("security event")),
        }
    }

    async fn security_events_of(
        &mut self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError> {
        // seq breaks ties between events of the same millisecond in the order they were recorded.
        let rows: Vec<EventRow> = match sqlx::query_as(
            "SELECT id, at, kind, user_id, session_id, ip, pii_key, details FROM security_events \
             WHERE user_id = $1 ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn list_security_events(
        &mut self,
        query: &SecurityEventQuery,
    ) -> Result<SecurityEventPage, StoreError> {
        if query.limit == 0 {
            return Ok(SecurityEventPage { events: Vec::new(), next: None });
        }
        // Only the filters asked for are in the statement, so that each can use an index (with a
        // constant `$n IS NULL OR ...` statement, a cached generic plan could not). The text comes
        // from the fixed fragments below and every value is bound.
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "SELECT seq, id, at, kind, user_id, session_id, ip, pii_key, details FROM security_events \
             WHERE TRUE",
        );
        if !query.kinds.is_empty() {
            let kinds: Vec<&str> = query.kinds.iter().map(|k| k.as_str()).collect();
            sql.push(" AND kind = ANY(").push_bind(kinds).push(")");
        }
        if let Some(user) = query.user_id {
            sql.push(" AND user_id = ").push_bind(user.to_string());
        }
        if let Some(since) = query.since {
            sql.push(" AND at >= ").push_bind(since.as_unix_millis());
        }
        if let Some(until) = query.until {
            sql.push(" AND at < ").push_bind(until.as_unix_millis());
        }
        if let Some(after) = query.after {
            let at = after.at.as_unix_millis();
            // (at, seq) < (after.at, after.seq), spelled so that `at <= $n` bounds the index scan.
            sql.push(" AND at <= ").push_bind(at);
            sql.push(" AND (at < ").push_bind(at).push(" OR seq < ").push_bind(after.seq).push(")");
        }
        // One row more than the page tells whether another page follows.
        sql.push(" ORDER BY at DESC, seq DESC LIMIT ").push_bind(i64::from(query.limit) + 1);
        let rows: Vec<ListedRow> = match sql.build_query_as().fetch_all(&mut *self.tx).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        page_of(rows, query.limit)
    }
}

/// The first `limit` rows as events, and the position of the last when more rows followed.
fn page_of(rows: Vec<ListedRow>, limit: u32) -> Result<SecurityEventPage, StoreError> {
    let more = rows.len() > limit as usize;
    let mut events = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last = None;
    for row in rows.into_iter().take(limit as usize) {
        let event = row.event.into_event()?;
        last = Some(SecurityEventCursor { at: event.event.at, seq: row.seq });
        events.push(event);
    }
    Ok(SecurityEventPage { events, next: if more { last } else { None } })
}

/// The details as a JSON object (the app keeps them within `MAX_SECURITY_EVENT_DETAILS_BYTES`).
fn details_json(details: &std::collections::BTreeMap<String, String>) -> Result<String, StoreError> {
    serde_json::to_string(details).map_err(|e| StoreError::Database(Box::new(e)))
}
