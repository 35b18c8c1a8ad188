//! The one error type of the use-case layer.

use portcullis_store::StoreError;

/// Why a use case did not complete. The web layer maps each variant to one HTTP problem type
/// (crates/web/src/error.rs); the CLI maps them to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A dependency (database) is unavailable right now; the caller may retry. HTTP 503.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),

    /// The database schema does not match this binary. HTTP 503.
    #[error("database schema is not current: {0}")]
    SchemaNotCurrent(String),

    /// Anything else: a bug or a broken invariant. HTTP 500 with no detail.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => AppError::Unavailable(error),
            other => AppError::Internal(Box::new(other)),
        }
    }
}

/// An error and its causes, each by `Display` only, joined with ": " (a cause whose text the
/// previous message already ends with is skipped). `Debug` is never used: a database error's
/// `Debug` can carry row contents (PostgreSQL's "Failing row contains (...)"), and neither logs
/// nor operators' terminals may receive those.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_lists_each_cause_once_by_display() {
        let io = std::io::Error::other("password authentication failed");
        let store = StoreError::Database(Box::new(io));
        let app = AppError::Internal(Box::new(store));
        assert_eq!(error_chain(&app), "internal error: database error: password authentication failed");
    }
}
