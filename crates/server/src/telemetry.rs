//! Logging: JSON lines in production, readable lines in development, and panics as log events.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat, Mode};

/// Installs the global subscriber (once per process) and the panic hook. Logs go to stderr so that
/// stdout stays for command output (`config check`, `migrate --status`).
pub fn init(log: &LogConfig, mode: Mode) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => mode == Mode::Production,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests start many servers in one process) is harmless: the first one stays.
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.compact().try_init()
    };
    install_panic_hook();
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
