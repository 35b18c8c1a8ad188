//! Thin handlers, one module per area of the HTTP surface.

pub(crate) mod health;
