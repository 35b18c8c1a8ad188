//! PostgreSQL implementation of the security event record.

use async_trait::async_trait;
use portcullis_domain::{SecurityEvent, SecurityEventKind, SessionId, Timestamp, UserId};
use portcullis_store::{SecurityEventStore, StoreError};

use crate::{PostgresTx, corrupt};

#[async_trait]
impl SecurityEventStore for PostgresTx {
    async fn insert_security_event(&mut self, event: &SecurityEvent) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO security_events (at, kind, user_id, session_id, ip) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(event.at.as_unix_millis())
        .bind(event.kind.as_str())
        .bind(event.user_id.map(|id| id.to_string()))
        .bind(event.session_id.map(|id| id.to_string()))
        .bind(event.ip.as_deref())
        .execute(&mut *self.tx)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn security_events_of(
        &mut self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        // The id breaks ties between events of the same millisecond in the order they were recorded.
        let rows: Vec<(i64, String, Option<String>, Option<String>, Option<String>)> = match sqlx::query_as(
            "SELECT at, kind, user_id, session_id, ip FROM security_events WHERE user_id = $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        rows.into_iter()
            .map(|(at, kind, user_id, session_id, ip)| {
                Ok(SecurityEvent {
                    at: Timestamp::from_unix_millis(at),
                    kind: SecurityEventKind::parse(&kind)
                        .ok_or_else(|| corrupt("security_events.kind is unknown"))?,
                    user_id: user_id
                        .map(|id| UserId::parse(&id))
                        .transpose()
                        .map_err(|_| corrupt("security_events.user_id is not a uuid"))?,
                    session_id: session_id
                        .map(|id| SessionId::parse(&id))
                        .transpose()
                        .map_err(|_| corrupt("security_events.session_id is not a uuid"))?,
                    ip,
                })
            })
            .collect()
    }
}
