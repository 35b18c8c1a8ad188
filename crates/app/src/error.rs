//! The one error type of the use-case layer.

use portcullis_store::StoreError;

/// Why a use case did not complete. The web layer maps each variant to one HTTP problem type
/// (crates/web/src/error.rs); the CLI maps them to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A dependency (database) is unavailable right now; the caller may retry. HTTP 503.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),

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
