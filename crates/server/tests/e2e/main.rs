//! End-to-end tests: the real server on a loopback port with a fresh database, spoken to over HTTP
//! and TLS as a client would, and the real binary for command-line, signal and startup behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

mod accounts;
mod api_keys;
mod audit;
mod binary;
mod cli_backup;
mod cli_users;
mod docs;
mod durability;
mod erasure;
mod error_tracking;
mod export;
mod http_stack;
mod hygiene;
mod interop;
mod ip_rules;
mod keys;
mod lifecycle;
mod metrics;
mod mfa;
mod rate_limits;
mod sessions;
mod support;
mod timing;
mod tls;
mod tokens;
