//! The bridge from `tracing` to Sentry: a subscriber layer that turns every ERROR event into a
//! Sentry event labelled with its request, and keeps a request's INFO and WARN events as that
//! event's breadcrumbs.
//!
//! Written here rather than taken from `sentry-tracing` because that layer reports through the
//! process-wide hub (so one test binary could not give each server its own endpoint) and keeps
//! breadcrumbs in one shared scope, where one request's lines would ride along with another's error.
//! Here each request's labels and breadcrumbs live on its own span, and the layer owns its client.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use sentry::protocol::{self, Breadcrumb, Exception, Mechanism, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The span field that marks a request's span (`middleware/edge.rs` opens one per request).
const REQUEST_ID: &str = "request_id";
/// The request span fields that become tags: they say which request, which route and how it was
/// called. The client address (`client_ip`) is deliberately not among them.
const LABELS: &[&str] = &[REQUEST_ID, "route", "method"];
/// The fields of the panic hook's event (`telemetry::log_panic`).
const PANIC_MESSAGE: &str = "panic.message";
const PANIC_LOCATION: &str = "panic.location";

thread_local! {
    /// Set while this thread is inside a capture, so a line logged by the capture itself (the
    /// transport, a dependency) cannot start another one.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// Reports ERROR events to Sentry; see the module documentation.
pub struct SentryLayer {
    client: Arc<sentry::Client>,
    max_breadcrumbs: usize,
}

impl fmt::Debug for SentryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentryLayer").field("max_breadcrumbs", &self.max_breadcrumbs).finish_non_exhaustive()
    }
}

impl SentryLayer {
    pub(super) fn new(client: Arc<sentry::Client>, max_breadcrumbs: usize) -> Self {
        Self { client, max_breadcrumbs }
    }
}

/// What the layer keeps on a request's span.
#[derive(Default)]
struct RequestScope {
    labels: BTreeMap<&'static str, String>,
    breadcrumbs: VecDeque<Breadcrumb>,
    /// A panic of this request was reported: the catch-panic middleware's "answered 500" line that
    /// follows is the same failure, kept as a breadcrumb instead of a second event.
    panicked: bool,
}

/// Records the label fields of a request span.
struct LabelVisitor<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for LabelVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = LABELS.iter().find(|name| **name == field.name()) {
            self.0.insert(name, value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// An event's fields as JSON values, its message apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    values: BTreeMap<String, Value>,
}

impl Fields {
    fn of(event: &Event<'_>) -> Self {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
    }

    fn take_str(&mut self, name: &str) -> Option<String> {
        match self.values.remove(name)? {
            Value::String(text) => Some(text),
            other => Some(other.to_string()),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.values.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.values.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.values.insert(field.name().to_owned(), Value::from(portcullis_domain::error_chain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.values.insert(field.name().to_owned(), Value::from(text));
        }
    }
}

fn breadcrumb_level(level: Level) -> protocol::Level {
    match level {
        Level::ERROR => protocol::Level::Error,
        Level::WARN => protocol::Level::Warning,
        Level::INFO => protocol::Level::Info,
        _ => protocol::Level::Debug,
    }
}

/// A line of the request as a breadcrumb. Kept as logged: it stays in the process unless an error
/// event of the request carries it, and `before_send` scrubs it then (scrubbing every INFO line of
/// every request here would cost each request, failing or not).
fn to_breadcrumb(event: &Event<'_>, fields: Fields) -> Breadcrumb {
    Breadcrumb {
        timestamp: SystemTime::now(),
        ty: "default".into(),
        category: Some(event.metadata().target().to_owned()),
        level: breadcrumb_level(*event.metadata().level()),
        message: fields.message,
        data: fields.values.into_iter().collect(),
    }
}

/// Frames of the standard library's panic path, between the code that panicked and the hook.
fn is_panic_machinery(function: &str) -> bool {
    ["std::panicking::", "core::panicking::", "std::sys::backtrace::__rust_end_short_backtrace"]
        .iter()
        .any(|prefix| function.starts_with(prefix))
        || function.ends_with("rust_begin_unwind")
}

/// The frames of a stack trace taken inside the panic hook, from the thread's start to the code that
/// panicked: the frames above it (the panic path, the hook, tracing and this layer) say nothing about
/// the bug.
fn panic_stacktrace() -> Option<protocol::Stacktrace> {
    let mut stacktrace = sentry::integrations::backtrace::current_stacktrace()?;
    let frames = &mut stacktrace.frames;
    let function = |frame: &protocol::Frame| frame.function.clone().unwrap_or_default();
    // Frames run oldest first. The newest panic-path frame is the one that called the hook; from
    // there back to the last panic-path frame before the panicking code, everything goes.
    if let Some(newest) = frames.iter().rposition(|frame| is_panic_machinery(&function(frame))) {
        let mut first = newest;
        while first > 0 && is_panic_machinery(&function(&frames[first - 1])) {
            first -= 1;
        }
        frames.truncate(first);
    }
    Some(stacktrace)
}

/// The Sentry event for an ERROR line. A panic (the hook's line) becomes an unhandled `panic`
/// exception with its stack; a line with an `error` field (the internal-error 500s) an exception
/// whose type is the line's message and whose value is the error chain; anything else a message.
fn to_event(
    event: &Event<'_>,
    mut fields: Fields,
    labels: BTreeMap<&'static str, String>,
    breadcrumbs: Vec<Breadcrumb>,
) -> protocol::Event<'static> {
    let target = event.metadata().target().to_owned();
    let mut sentry_event = protocol::Event {
        level: protocol::Level::Error,
        logger: Some(target.clone()),
        timestamp: SystemTime::now(),
        ..protocol::Event::default()
    };
    if let Some(message) = fields.take_str(PANIC_MESSAGE) {
        if let Some(location) = fields.take_str(PANIC_LOCATION) {
            sentry_event.culprit = Some(location.clone());
            fields.values.insert(PANIC_LOCATION.into(), Value::from(location));
        }
        sentry_event.exception.values.push(Exception {
            ty: "panic".into(),
            value: Some(message),
            stacktrace: panic_stacktrace(),
            mechanism: Some(Mechanism { ty: "panic".into(), handled: Some(false), ..Mechanism::default() }),
            ..Exception::default()
        });
    } else if let Some(error) = fields.take_str("error") {
        sentry_event.exception.values.push(Exception {
            ty: fields.message.clone().unwrap_or_else(|| "error".into()),
            value: Some(error),
            module: Some(target),
            mechanism: Some(Mechanism { ty: "tracing".into(), handled: Some(true), ..Mechanism::default() }),
            ..Exception::default()
        });
    } else {
        sentry_event.message = fields.message.clone();
    }
    if let (Some(method), Some(route)) = (labels.get("method"), labels.get("route")) {
        sentry_event.transaction = Some(format!("{method} {route}"));
    }
    sentry_event.tags = labels.into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
    sentry_event.extra = fields.values.into_iter().collect();
    sentry_event.breadcrumbs = breadcrumbs.into();
    sentry_event
}

/// The innermost span around the event that is a request's.
fn request_span<'a, S>(event: &Event<'_>, ctx: &'a Context<'_, S>) -> Option<SpanRef<'a, S>>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    ctx.event_scope(event)?.find(|span| span.extensions().get::<RequestScope>().is_some())
}

impl<S> tracing_subscriber::Layer<S> for SentryLayer
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(REQUEST_ID).is_none() {
            return;
        }
        let mut scope = RequestScope::default();
        attrs.record(&mut LabelVisitor(&mut scope.labels));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(scope);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(scope) = span.extensions_mut().get_mut::<RequestScope>()
        {
            values.record(&mut LabelVisitor(&mut scope.labels));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        // DEBUG and TRACE lines are too many and too detailed to leave the process.
        if level > Level::INFO || CAPTURING.get() || event.metadata().target().starts_with("sentry") {
            return;
        }
        let fields = Fields::of(event);
        let span = request_span(event, &ctx);
        let mut labels = BTreeMap::new();
        let mut breadcrumbs = Vec::new();
        if let Some(span) = &span {
            // The span's lock is released before the capture, which could itself log.
            let mut extensions = span.extensions_mut();
            let Some(scope) = extensions.get_mut::<RequestScope>() else { return };
            if level != Level::ERROR || scope.panicked {
                if self.max_breadcrumbs > 0 {
                    if scope.breadcrumbs.len() >= self.max_breadcrumbs {
                        scope.breadcrumbs.pop_front();
                    }
                    scope.breadcrumbs.push_back(to_breadcrumb(event, fields));
                }
                return;
            }
            scope.panicked = fields.values.contains_key(PANIC_MESSAGE);
            labels = scope.labels.clone();
            breadcrumbs = scope.breadcrumbs.iter().cloned().collect();
        } else if level != Level::ERROR {
            // Outside a request there is no error event for a breadcrumb to join.
            return;
        }
        let sentry_event = to_event(event, fields, labels, breadcrumbs);
        CAPTURING.set(true);
        self.client.capture_event(sentry_event, None);
        CAPTURING.set(false);
    }
}
