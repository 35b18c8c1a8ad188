//! Turning a panicking handler into a 500 problem instead of a dropped connection.

use std::any::Any;

use axum::response::{IntoResponse, Response};

use crate::problem::{Problem, ProblemType};

/// The response for a caught panic. The panic itself (message and location) is logged by the panic
/// hook the server installs, inside the request's span, so it carries the request id.
pub(crate) fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked; answered 500");
    Problem::new(ProblemType::INTERNAL, "An internal error occurred; quote the request id when reporting it.")
        .into_response()
}
