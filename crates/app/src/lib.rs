//! Use cases: every security decision of Portcullis lives here, behind the one façade [`App`].
//!
//! `app` knows nothing of HTTP or SQL: the web layer and the CLI both call these functions, and
//! storage goes through the `store` traits. Time comes from a [`Clock`], so rules are testable with
//! a fixed clock.

mod clock;
mod error;
mod instance;
mod readiness;

use std::sync::Arc;

use portcullis_store::Store;
use secrecy::SecretSlice;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::AppError;
pub use readiness::{CheckState, Readiness};

/// Settings the use cases need, already validated by the server's configuration loader.
#[derive(Debug)]
pub struct AppSettings {
    /// The per-installation secret that keys derived secrets (CSRF tokens, HMACs of bearer secrets in
    /// later issues). At least 32 bytes; never logged.
    pub instance_secret: SecretSlice<u8>,
    /// The version string recorded in the instance metadata.
    pub version: &'static str,
}

/// The façade every caller (HTTP handlers, the CLI, background jobs) goes through.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: AppSettings,
}

impl App {
    /// Wires the use cases to a store and a clock.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: AppSettings) -> Self {
        Self { inner: Arc::new(Inner { store, clock, settings }) }
    }

    /// The store, for operational commands (migrations) that the CLI runs.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Closes the database cleanly: in-flight transactions finish, SQLite checkpoints its log.
    pub async fn shutdown(&self) {
        self.inner.store.close().await;
    }

    fn now(&self) -> portcullis_domain::Timestamp {
        self.inner.clock.now()
    }
}
