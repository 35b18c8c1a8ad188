//! Logging: JSON lines in production, readable lines in development, panics as log events, and, when
//! configured, error lines reported to Sentry as well.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter::LevelFilter};

use crate::config::{LogConfig, LogFormat, Mode};
use crate::error_tracking::ErrorTracking;

/// Installs the global subscriber (once per process) and the panic hook. Logs go to stderr so that
/// stdout stays for command output (`config check`, `migrate --status`).
pub fn init(log: &LogConfig, mode: Mode, error_tracking: Option<&ErrorTracking>) {
    let subscriber = subscriber(log, mode, std::io::stderr, std::io::stderr().is_terminal(), error_tracking);
    // A second init (tests start many servers in one process) is harmless: the first one stays.
    let _ = subscriber.try_init();
    install_panic_hook();
}

/// The subscriber [`init`] installs, writing to `writer`: the log lines, filtered by `log.level`,
/// and beside them (with its own filter, so `log.level` does not decide what reaches Sentry) the
/// error tracking layer. Tests install it for their own server with `tracing::subscriber::set_default`.
pub fn subscriber<W>(
    log: &LogConfig,
    mode: Mode,
    writer: W,
    ansi: bool,
    error_tracking: Option<&ErrorTracking>,
) -> impl Subscriber + for<'l> LookupSpan<'l> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => mode == Mode::Production,
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE)
        .with_target(false)
        .with_ansi(ansi);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = if json {
        lines.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed()
    } else {
        lines.compact().boxed()
    };
    // INFO and WARN lines become breadcrumbs of a request's error event; nothing below INFO is read.
    let error_tracking = error_tracking.map(|tracking| tracking.layer().with_filter(LevelFilter::INFO));
    tracing_subscriber::registry().with(lines.with_filter(filter)).with(error_tracking)
}

/// Logs panics through tracing, inside the current span (so a handler's panic carries its request
/// id), instead of printing a bare message to stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(log_panic));
}

/// The panic hook's work: one error event with the message and the location.
pub fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    tracing::error!(panic.location = %location, panic.message = %message, "panic");
}
