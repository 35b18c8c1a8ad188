//! Hooks for the benchmarks (`benches/`): the field-encryption work of a login and of an uncached
//! profile read, on keys made for the benchmark, and appending audit events on each of the audit
//! trail's two paths (`benches/audit.rs`). Not an API; hidden from the docs.

use portcullis_domain::Email;
use portcullis_store::{PiiTable, Sealed};
use zeroize::Zeroizing;

use crate::keys::{FieldKeys, Place};
use crate::{App, AppError};

/// An account's sealed address and name, and the keys that open them.
#[derive(Debug)]
pub struct FieldWork {
    keys: FieldKeys,
    email: Email,
    row: String,
    sealed_email: Sealed,
    sealed_name: Sealed,
}

impl FieldWork {
    /// Random keys, and `email` and `name` sealed as a `users` row stores them.
    pub fn new(email: &str, name: &str) -> Result<Self, AppError> {
        let mut keys = FieldKeys::default();
        let random = || -> Result<Zeroizing<[u8; 32]>, AppError> {
            let mut key = Zeroizing::new([0u8; 32]);
            getrandom::fill(key.as_mut()).map_err(|e| AppError::Internal(Box::new(e)))?;
            Ok(key)
        };
        keys.add_pii("pii-bench", random()?, true);
        keys.add_index("blind-index-bench", random()?, true);
        let email = Email::parse(email).map_err(|_| AppError::invalid("/email", "not an address"))?;
        let row = "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9".to_owned();
        let sealed_email = keys.seal(email.as_str().as_bytes(), place(&row, "email"))?;
        let sealed_name = keys.seal(name.as_bytes(), place(&row, "display_name"))?;
        Ok(Self { keys, email, row, sealed_email, sealed_name })
    }

    /// What a login adds: the blind index of the typed address, then opening the row's address and
    /// name. Returns the opened lengths so nothing is optimized away.
    pub fn login(&self) -> Result<usize, AppError> {
        let indexes = self.keys.email_indexes(&self.email);
        Ok(indexes.len() + self.open_row()?)
    }

    /// What an uncached profile read adds: opening the row's address and name.
    pub fn open_row(&self) -> Result<usize, AppError> {
        let email = self.keys.open(&self.sealed_email, place(&self.row, "email"))?;
        let name = self.keys.open(&self.sealed_name, place(&self.row, "display_name"))?;
        Ok(email.len() + name.len())
    }

    /// What a signup adds: sealing the address and name and computing the blind index.
    pub fn seal_row(&self) -> Result<usize, AppError> {
        let email = self.keys.seal(self.email.as_str().as_bytes(), place(&self.row, "email"))?;
        let name = self.keys.seal(b"Bench User", place(&self.row, "display_name"))?;
        let (_, index) = self.keys.email_index(&self.email)?;
        Ok(email.0.len() + name.0.len() + index.0.len())
    }
}

fn place<'a>(row: &'a str, column: &'static str) -> Place<'a> {
    Place { table: PiiTable::Users.name(), column, row }
}

/// The client every benchmark audit event is recorded for: a request's address, user agent and id,
/// so each event carries the two sealed fields a failed login's record carries.
fn bench_request(writer: usize, n: usize) -> crate::audit::RequestContext {
    crate::audit::RequestContext {
        ip: Some(format!("203.0.113.{}", writer % 256)),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) portcullis-bench/1".to_owned()),
        request_id: Some(format!("bench-{writer}-{n}")),
    }
}

/// The event the audit benchmarks record: about what a failed login's record holds.
fn bench_entry(writer: usize, n: usize) -> crate::audit::AuditEntry {
    crate::audit::AuditEntry::system("bench.event.recorded")
        .target("user", format!("0b1c2d3e-4f50-4617-8283-{writer:012}"))
        .detail("writer", writer)
        .detail("n", n)
        .detail("reason", "benchmark")
}

/// Appends `count` events (`n`, `n + 1`, …) through the group-commit writer in one call
/// (`App::record_audit`, the path of events without a change of their own), and returns once they
/// are committed. `count = 1` is one failed login; larger counts fill a log quickly.
pub async fn record_audit_events(app: &App, writer: usize, n: usize, count: usize) -> Result<(), AppError> {
    let entries = (n..n + count).map(|i| bench_entry(writer, i));
    crate::audit::within_request(bench_request(writer, n), app.record_audit(entries)).await?;
    Ok(())
}

/// Appends one event in a transaction of its own (`App::commit_audited`, the path every state
/// change takes, here with no change besides the event).
pub async fn commit_audited_event(app: &App, writer: usize, n: usize) -> Result<(), AppError> {
    let work = async {
        let tx = app.store().begin().await?;
        app.commit_audited(tx, [bench_entry(writer, n)]).await
    };
    crate::audit::within_request(bench_request(writer, n), work).await?;
    Ok(())
}
