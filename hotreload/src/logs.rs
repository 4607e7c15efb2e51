//! A module's logging, in the host's subscriber.
//!
//! A module's library has its own copies of `tracing` and `log`, with their own globals: left
//! alone, what its code emits would go to a subscriber nobody installed. When the host
//! attaches a version, the module (this file, compiled into its library) installs a
//! subscriber and a logger of its own that send every event, span and record to the host
//! ([`hotreload_abi::LogHooks`]); the host (`host.rs`) hands them to its own subscriber as if
//! its code had emitted them, with the module's name and load number as the fields `module`
//! and `generation`, under the span the host's thread is in (the span around a `hot_fn!`
//! call, say).
//!
//! Filtering stays cheap: the module checks the host's most verbose level before anything
//! (as `tracing` does for its own macros), and asks the host once per callsite whether its
//! subscribers want it at all; a callsite the host never wants costs nothing more.

use abi_stable::std_types::{RSlice, RStr};
use hotreload_abi::{
    LOG_INTEREST_ALWAYS, LOG_INTEREST_NEVER, LOG_KIND_EVENT, LOG_KIND_SPAN, LOG_LEVEL_OFF,
    LogCallsite, LogField, LogHooks, LogValue,
};
use tracing_core::field::{Field, Visit};
use tracing_core::span;
use tracing_core::subscriber::Interest;
use tracing_core::{Event, LevelFilter, Metadata, Subscriber};

#[cfg(feature = "runtime")]
mod host;
#[cfg(feature = "runtime")]
pub(crate) use host::{LogContext, hooks};

/// At most this many fields of an event or span are sent; the rest are left out.
const MAX_FIELDS: usize = 32;

/// The span id the module uses for a span the host did not make (disabled, or a failure):
/// the host ignores it. Never an id a subscriber gives out in practice.
pub(crate) const NO_SPAN: u64 = u64::MAX;

/// Installs this image's subscriber and logger, which send to the host. Called once, when
/// the host attaches the image, before any of the module's code runs: a module that installs
/// a global subscriber or logger of its own must use `try_init` (or the like), and the host
/// can leave its logging alone with `ModuleOptions::forward_logs(false)`.
pub(crate) fn install(hooks: LogHooks) {
    // The host asked for the module's logging to be left alone.
    if hooks.context.is_null() {
        return;
    }
    let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Forwarder {
        hooks,
    }));
    let logger: &'static LogForwarder = Box::leak(Box::new(LogForwarder { hooks }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log_filter(hooks.max_level));
    }
}

/// `tracing`'s level as the hooks number it: `TRACE` 0 to `ERROR` 4.
pub(crate) fn level_code(level: tracing_core::Level) -> u8 {
    match level {
        tracing_core::Level::TRACE => 0,
        tracing_core::Level::DEBUG => 1,
        tracing_core::Level::INFO => 2,
        tracing_core::Level::WARN => 3,
        tracing_core::Level::ERROR => 4,
    }
}

fn level_filter(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::TRACE,
        1 => LevelFilter::DEBUG,
        2 => LevelFilter::INFO,
        3 => LevelFilter::WARN,
        4 => LevelFilter::ERROR,
        _ => LevelFilter::OFF,
    }
}

fn log_filter(code: u8) -> log::LevelFilter {
    match code {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

fn log_level_code(level: log::Level) -> u8 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

/// Describes `metadata` for the host (its field names in a buffer on the stack) and runs `f`
/// with it.
fn with_callsite<R>(metadata: &Metadata<'_>, f: impl FnOnce(&LogCallsite<'_>) -> R) -> R {
    let mut names = [RStr::from_str(""); MAX_FIELDS];
    let mut count = 0;
    for (slot, field) in names.iter_mut().zip(metadata.fields().iter()) {
        *slot = RStr::from_str(field.name());
        count += 1;
    }
    let callsite = LogCallsite {
        key: std::ptr::from_ref(metadata) as usize,
        kind: if metadata.is_span() {
            LOG_KIND_SPAN
        } else {
            LOG_KIND_EVENT
        },
        level: level_code(*metadata.level()),
        line: metadata.line().unwrap_or(0),
        name: RStr::from_str(metadata.name()),
        target: RStr::from_str(metadata.target()),
        module_path: RStr::from_str(metadata.module_path().unwrap_or("")),
        file: RStr::from_str(metadata.file().unwrap_or("")),
        fields: RSlice::from_slice(&names[..count]),
    };
    f(&callsite)
}

/// A field's value as visited, owned until it is sent.
enum Owned {
    Value(LogValue<'static>),
    Str(String),
    Text(String),
}

/// Collects an event's or span's field values.
#[derive(Default)]
struct Collect {
    values: Vec<(u32, Owned)>,
}

impl Collect {
    fn push(&mut self, field: &Field, value: Owned) {
        if field.index() < MAX_FIELDS {
            self.values.push((field.index() as u32, value));
        }
    }

    /// Runs `f` with the values as the hooks take them.
    fn send<R>(&self, f: impl FnOnce(RSlice<'_, LogField<'_>>) -> R) -> R {
        let fields: Vec<LogField<'_>> = self
            .values
            .iter()
            .map(|(index, value)| LogField {
                index: *index,
                value: match value {
                    Owned::Value(value) => *value,
                    Owned::Str(text) => LogValue::Str(RStr::from_str(text)),
                    Owned::Text(text) => LogValue::Text(RStr::from_str(text)),
                },
            })
            .collect();
        f(RSlice::from_slice(&fields))
    }
}

impl Visit for Collect {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Owned::Value(LogValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Owned::Value(LogValue::U64(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Owned::Value(LogValue::F64(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Owned::Value(LogValue::Bool(value)));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Copied: the visit lends it only for this call.
        self.push(field, Owned::Str(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, Owned::Text(format!("{value:?}")));
    }
}

/// The module's `tracing` subscriber: everything goes to the host.
struct Forwarder {
    hooks: LogHooks,
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.hooks.max_level == LOG_LEVEL_OFF {
            return Interest::never();
        }
        match with_callsite(metadata, |callsite| {
            (self.hooks.register)(self.hooks.context, callsite)
        }) {
            LOG_INTEREST_NEVER => Interest::never(),
            LOG_INTEREST_ALWAYS => Interest::always(),
            _ => Interest::sometimes(),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(level_filter(self.hooks.max_level))
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        with_callsite(metadata, |callsite| {
            (self.hooks.enabled)(self.hooks.context, callsite)
        })
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        let mut values = Collect::default();
        span.record(&mut values);
        let id = with_callsite(span.metadata(), |callsite| {
            values.send(|fields| (self.hooks.new_span)(self.hooks.context, callsite, fields))
        });
        span::Id::from_u64(if id == 0 { NO_SPAN } else { id })
    }

    /// Values recorded on a span after it was made are not sent (see the README).
    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut values = Collect::default();
        event.record(&mut values);
        with_callsite(event.metadata(), |callsite| {
            values.send(|fields| (self.hooks.event)(self.hooks.context, callsite, fields));
        });
    }

    fn enter(&self, span: &span::Id) {
        (self.hooks.enter)(span.into_u64());
    }

    fn exit(&self, span: &span::Id) {
        (self.hooks.exit)(span.into_u64());
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        let id = (self.hooks.clone_span)(id.into_u64());
        span::Id::from_u64(if id == 0 { NO_SPAN } else { id })
    }

    fn try_close(&self, id: span::Id) -> bool {
        (self.hooks.close_span)(id.into_u64())
    }
}

/// The module's `log` logger: each record goes to the host as an event with a `message`.
struct LogForwarder {
    hooks: LogHooks,
}

const MESSAGE: [RStr<'static>; 1] = [RStr::from_str("message")];

impl LogForwarder {
    fn with_callsite<R>(
        &self,
        metadata: &log::Metadata<'_>,
        place: (Option<&str>, Option<&str>, Option<u32>),
        f: impl FnOnce(&LogCallsite<'_>) -> R,
    ) -> R {
        let (module_path, file, line) = place;
        f(&LogCallsite {
            key: 0,
            kind: LOG_KIND_EVENT,
            level: log_level_code(metadata.level()),
            line: line.unwrap_or(0),
            name: RStr::from_str("log record"),
            target: RStr::from_str(metadata.target()),
            module_path: RStr::from_str(module_path.unwrap_or("")),
            file: RStr::from_str(file.unwrap_or("")),
            fields: RSlice::from_slice(&MESSAGE),
        })
    }
}

impl log::Log for LogForwarder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.with_callsite(metadata, (None, None, None), |callsite| {
            (self.hooks.enabled)(self.hooks.context, callsite)
        })
    }

    fn log(&self, record: &log::Record<'_>) {
        let place = (record.module_path(), record.file(), record.line());
        self.with_callsite(record.metadata(), place, |callsite| {
            if !(self.hooks.enabled)(self.hooks.context, callsite) {
                return;
            }
            let message = record.args().to_string();
            let fields = [LogField {
                index: 0,
                value: LogValue::Text(RStr::from_str(&message)),
            }];
            (self.hooks.event)(self.hooks.context, callsite, RSlice::from_slice(&fields));
        });
    }

    fn flush(&self) {}
}
