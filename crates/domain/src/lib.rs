//! Pure types and rules of Portcullis: no I/O, no async, no database or HTTP types.
//!
//! Everything here is deterministic: time arrives as a [`Timestamp`] argument, randomness as bytes
//! from the caller, so every rule can be tested with fixed inputs.

pub mod error_chain;
pub mod instance;
pub mod request_id;
pub mod time;

pub use error_chain::error_chain;
pub use instance::{InstanceId, InstanceMeta};
pub use request_id::{RequestId, RequestIdError};
pub use time::Timestamp;
