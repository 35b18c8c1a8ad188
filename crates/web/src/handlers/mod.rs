//! Thin handlers: extract, call one use case, shape the response.

pub(crate) mod admin;
pub(crate) mod api_keys;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod authz;
pub(crate) mod export;
pub(crate) mod health;
pub(crate) mod ip_rules;
pub(crate) mod me;
pub(crate) mod metrics;
pub(crate) mod mfa;
pub(crate) mod oauth;
pub(crate) mod organizations;
pub(crate) mod roles;
pub(crate) mod security_events;
pub(crate) mod service_accounts;
pub(crate) mod well_known;
