//! The web layer's error type and its one mapping from use-case errors to problem documents.

use axum::response::{IntoResponse, Response};
use portcullis_app::AppError;
use portcullis_domain::error_chain;

use crate::problem::{Problem, ProblemType};

/// An error a handler returns. Each variant documents its HTTP mapping.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A use case failed; mapped by [`ApiError::problem`].
    #[error(transparent)]
    App(#[from] AppError),
    /// The request itself is wrong; already a problem the client may see.
    #[error("{}", .0.detail)]
    Problem(Problem),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError::Problem(problem)
    }
}

impl ApiError {
    /// What the client sees. Internal causes are logged here, never sent (CONVENTIONS.md, "Errors").
    pub fn problem(self) -> Problem {
        match self {
            ApiError::Problem(problem) => problem,
            // 503: the client may retry; the cause (which database, which error) stays in the log.
            ApiError::App(error @ AppError::Unavailable(_)) => {
                tracing::warn!(error = %error_chain(&error), "request failed: unavailable");
                Problem::new(ProblemType::UNAVAILABLE, "The service is temporarily unavailable; retry later.")
            }
            // 500: a bug; the log has the cause chain, the client has the request id.
            ApiError::App(error @ AppError::Internal(_)) => {
                tracing::error!(error = %error_chain(&error), "request failed: internal error");
                Problem::new(
                    ProblemType::INTERNAL,
                    "An internal error occurred; quote the request id when reporting it.",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}
