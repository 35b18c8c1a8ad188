//! Error tracking: when `sentry.dsn` is set, every ERROR log line (internal-error 500s with their
//! cause chain, panics with their stack) is also sent to Sentry, labelled with the request id, route
//! and method, the environment and the release, and scrubbed of secrets on the way out.
//!
//! Off when the DSN is unset: no client, no thread, no layer. Reports go through `tracing`, not
//! through Sentry's own panic handler, so each failure is reported once and only what the logs
//! already show (minus what [`scrub`] removes) can leave the process.

mod layer;
pub mod scrub;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sentry::integrations::backtrace::ProcessStacktraceIntegration;
use sentry::integrations::contexts::ContextIntegration;
use sentry::transports::ReqwestHttpTransport;
use sentry::{ClientOptions, Transport};

pub use self::layer::SentryLayer;
use crate::StartError;
use crate::config::{Config, ConfigError};

/// Sending one envelope may take this long before it is given up; the transport sends one at a
/// time, so a stalled endpoint must not hold the queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running Sentry client: the guard `serve` holds for the life of the process. Dropping it sends
/// what is queued (for up to `sentry.shutdown_timeout_secs`) and stops the sending thread.
pub struct ErrorTracking {
    client: Arc<sentry::Client>,
    max_breadcrumbs: usize,
    environment: String,
    release: String,
}

impl fmt::Debug for ErrorTracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the DSN.
        f.debug_struct("ErrorTracking")
            .field("environment", &self.environment)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}

impl ErrorTracking {
    /// The client the configuration asks for, or `None` when `sentry.dsn` is unset. Each call makes
    /// its own client, so tests can run several side by side, each sending to its own endpoint.
    pub fn start(config: &Config) -> Result<Option<Self>, StartError> {
        let Some(dsn) = config.sentry_dsn().map_err(|problem| ConfigError { problems: vec![problem] })?
        else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(SEND_TIMEOUT)
            // A redirect would re-send the envelope to wherever the answer points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| StartError::ErrorTracking { source })?;
        let s = &config.sentry;
        let environment = config.sentry_environment();
        let release = config.sentry_release();
        let options = ClientOptions {
            dsn: Some(dsn),
            environment: Some(environment.clone()),
            release: Some(release.clone()),
            server_name: s.server_name.clone().map(Into::into),
            sample_rate: s.sample_rate,
            max_breadcrumbs: s.max_breadcrumbs,
            send_default_pii: false,
            // Only panics carry a stack (taken in the hook); the stack of a log call says nothing.
            attach_stacktrace: false,
            in_app_include: vec!["portcullis"],
            // Chosen here rather than by `sentry::apply_defaults`, which also reads `SSL_VERIFY`
            // from the environment and could switch certificate checks off.
            integrations: vec![
                Arc::new(ContextIntegration::default()),
                Arc::new(ProcessStacktraceIntegration),
            ],
            before_send: Some(Arc::new(scrub::event)),
            before_breadcrumb: Some(Arc::new(scrub::breadcrumb)),
            transport: Some(Arc::new(move |options: &ClientOptions| {
                Arc::new(ReqwestHttpTransport::with_client(options, http.clone())) as Arc<dyn Transport>
            })),
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout_secs),
            ..ClientOptions::default()
        };
        Ok(Some(Self {
            client: Arc::new(sentry::Client::from(options)),
            max_breadcrumbs: s.max_breadcrumbs,
            environment: environment.into_owned(),
            release: release.into_owned(),
        }))
    }

    /// The subscriber layer that reports through this client (see `telemetry::subscriber`).
    pub fn layer(&self) -> SentryLayer {
        SentryLayer::new(self.client.clone(), self.max_breadcrumbs)
    }

    /// Waits up to `timeout` for every queued event to be sent; whether they all were. Blocks the
    /// calling thread.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.client.flush(Some(timeout))
    }
}

impl Drop for ErrorTracking {
    fn drop(&mut self) {
        // Waits at most `sentry.shutdown_timeout_secs`; what is still queued then is lost.
        self.client.close(None);
    }
}
