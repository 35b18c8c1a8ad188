//! The middleware stack that wraps every route (see `routes::with_middleware` for the order).

pub(crate) mod edge;
pub mod headers;
pub(crate) mod panic;
