//! The one error type of the storage layer.

/// What can go wrong in a store, in terms the use cases can act on.
///
/// Engine errors are classified at the storage edge (unique violations become [`StoreError::Conflict`],
/// pool exhaustion and I/O become [`StoreError::Unavailable`]) so no caller ever matches on SQL text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule would be broken: the thing already exists.
    #[error("{entity} already exists")]
    Conflict { entity: &'static str },

    /// The database cannot be reached or is overloaded right now; retrying later may work.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// Stored data violates an invariant this code relies on.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),

    /// A migration could not be applied, or the database was migrated by a newer binary.
    #[error("migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A dump's sink or a load's source stopped the work (see [`crate::DumpSink`]).
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// Any other database error; the cause is for the log, never for a client.
    #[error("database error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Names the entity of a uniqueness conflict: the engine's error only says "record", the
    /// statement that hit it knows what was duplicated.
    pub fn conflict_on(self, entity: &'static str) -> Self {
        match self {
            StoreError::Conflict { .. } => StoreError::Conflict { entity },
            other => other,
        }
    }
}
