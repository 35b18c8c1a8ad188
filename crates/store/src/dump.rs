//! Backups' view of a database: every table's rows in an engine-neutral form, streamed out of one
//! snapshot and loaded back into an empty database of either engine.
//!
//! Column names and types come from the engine's catalog, not from code written per table, so a table
//! added by a migration is dumped without any change here; only [`TABLES`] (which fixes the order, so
//! parents load before the children whose foreign keys point at them) must name it, and a contract
//! check fails while it does not.

use async_trait::async_trait;

use crate::{Backend, StoreError, StoreTx};

/// Every table the migrations create (sqlx's own `_sqlx_migrations` aside), parents before children.
///
/// A dump refuses a database holding a table missing from this list rather than silently leaving it
/// out of a backup.
pub const TABLES: &[&str] = &[
    "instance",
    "users",
    "person_keys",
    "credentials",
    "one_time_tokens",
    "sessions",
    "refresh_tokens",
    "keyring",
    "security_events",
    "organizations",
    "memberships",
    "roles",
    "membership_roles",
    "service_accounts",
    "service_account_roles",
    "api_keys",
    "ip_rules",
    "login_throttle",
    "known_login_ips",
    "audit_events",
    "audit_head",
    "audit_checkpoints",
    "mfa_totp_devices",
    "mfa_recovery_codes",
    "mfa_passkeys",
    "mfa_challenges",
    "scheduled_runs",
];

/// Tables a migration fills with a starting row (the audit chain's genesis head). A database holding
/// only these rows counts as empty, and a load replaces them.
pub const SEEDED_TABLES: &[&str] = &["audit_head"];

/// One value, as both engines can store it. PostgreSQL `BOOLEAN` is [`Cell::Int`] 0 or 1, as SQLite
/// stores it; every integer width is an `i64`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One table as a dump presents it: its name and its columns in catalog order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableHeader {
    pub name: String,
    pub columns: Vec<String>,
}

/// What a dump knows before its first table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpInfo {
    /// The engine the rows come from.
    pub backend: Backend,
    /// The newest migration applied in the snapshot.
    pub schema_version: i64,
}

/// Receives a dump, a row at a time, so no table is ever held in memory whole.
///
/// Returning an error stops the dump; the store hands it back to the caller unchanged.
#[async_trait]
pub trait DumpSink: Send {
    /// Called first, inside the snapshot; `snapshot` reads exactly what the tables will hold (the
    /// audit chain head, the latest checkpoint).
    async fn start(&mut self, info: DumpInfo, snapshot: &mut dyn StoreTx) -> Result<(), StoreError>;

    /// A table begins; its rows follow in primary-key order.
    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError>;

    /// One row, its cells in the order of the table's columns.
    async fn row(&mut self, row: Vec<Cell>) -> Result<(), StoreError>;

    /// The table's last row has been given.
    async fn end_table(&mut self) -> Result<(), StoreError>;
}

/// Loads rows into an empty database inside one transaction: nothing is visible until
/// [`Loader::finish`] commits, and dropping the loader rolls everything back.
#[async_trait]
pub trait Loader: Send {
    /// The next table's rows follow. Its columns must be exactly the target table's (in any order):
    /// a mismatch is [`StoreError::Corrupt`] naming the table and column.
    async fn table(&mut self, table: &TableHeader) -> Result<(), StoreError>;

    /// Inserts rows of the current table (any number; they are batched).
    async fn rows(&mut self, rows: Vec<Vec<Cell>>) -> Result<(), StoreError>;

    /// Commits, after bringing identity sequences past the loaded keys.
    async fn finish(self: Box<Self>) -> Result<(), StoreError>;
}

/// The sink's error, for a sink whose own error type is richer: it keeps its error aside, returns
/// this, and takes its own back when the dump returns.
pub fn interrupted(why: impl Into<String>) -> StoreError {
    StoreError::Interrupted(why.into())
}

/// Quotes an identifier for SQL on either engine (table names come from [`TABLES`] and column names
/// from the catalog, but a name is never pasted in unquoted).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
