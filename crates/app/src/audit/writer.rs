//! The audit writer task: group commit for events that have no transaction of their own.
//!
//! Each such event committed alone would cost a transaction and, on SQLite with
//! `synchronous=FULL`, an fsync. Callers instead hand their records to one task, which takes
//! everything waiting when it wakes (up to a bound), links it at the chain head in one
//! transaction, commits once, and answers every caller. Under load, batches grow by themselves;
//! alone, a caller waits for one transaction as before.

use std::sync::Arc;
use std::sync::OnceLock;

use portcullis_domain::{AuditEvent, AuditRecord};
use portcullis_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::AppError;

/// How many callers may wait for the writer before new ones wait to enqueue (backpressure).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Vec<AuditEvent>, String>>;

struct Job {
    records: Vec<AuditRecord>,
    reply: Reply,
}

/// The handle to the writer task, started on first use (inside the runtime that uses it).
#[derive(Default)]
pub(crate) struct AuditWriter {
    sender: OnceLock<mpsc::Sender<Job>>,
    /// The newest (seq, hash) this node signed or verified under a checkpoint: trusted even if the
    /// database later says otherwise.
    high_water: std::sync::Mutex<Option<(i64, [u8; 32])>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").field("high_water", &self.high_water()).finish()
    }
}

impl AuditWriter {
    pub(crate) fn high_water(&self) -> Option<(i64, [u8; 32])> {
        *self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn raise_high_water(&self, seq: i64, hash: [u8; 32]) {
        let mut mark = self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if mark.is_none_or(|(known, _)| known < seq) {
            *mark = Some((seq, hash));
        }
    }

    /// Appends `records` through the writer task; returns them as chained, once committed.
    pub(crate) async fn write(
        &self,
        store: &Arc<dyn Store>,
        records: Vec<AuditRecord>,
        batch_max: usize,
    ) -> Result<Vec<AuditEvent>, AppError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(run(store.clone(), receiver, batch_max.max(1)));
            sender
        });
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job { records, reply })
            .await
            .map_err(|_| AppError::Internal("the audit writer has stopped".into()))?;
        let events = answer
            .await
            .map_err(|_| AppError::Internal("the audit writer dropped a batch".into()))?
            .map_err(|message| AppError::Internal(format!("audit write failed: {message}").into()))?;
        Ok(events)
    }
}

async fn run(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<Job>, batch_max: usize) {
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        let mut size = jobs[0].records.len();
        while size < batch_max {
            match receiver.try_recv() {
                Ok(job) => {
                    size += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(size);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            replies.push((job.records.len(), job.reply));
            records.extend(job.records);
        }
        match commit(&store, records).await {
            Ok(events) => {
                // Hand each caller its own events, in the order they were queued.
                let mut events = events.into_iter();
                for (count, reply) in replies {
                    let _ = reply.send(Ok(events.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                tracing::error!(error = %portcullis_domain::error_chain(&error), events = size, "audit group commit failed");
                for (_, reply) in replies {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
        }
    }
}

async fn commit(store: &Arc<dyn Store>, records: Vec<AuditRecord>) -> Result<Vec<AuditEvent>, AppError> {
    let mut tx = store.begin().await?;
    let events = super::append(tx.as_mut(), records).await?;
    tx.commit().await?;
    Ok(events)
}
