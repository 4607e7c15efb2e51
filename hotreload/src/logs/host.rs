//! The host's side of a module's logging: events, spans and records from a module's copy of
//! `tracing` and `log`, handed to the host's subscriber (see the parent module).
//!
//! `tracing` needs `'static` metadata, registered as a callsite, for every event and span. A
//! module's metadata lives in its image, which a reload unmaps, so the host makes its own copy
//! of each callsite a module reports, with two more fields (`module`, `generation`), and keeps
//! it for the rest of the process: copies are shared by content, so reloading a build whose
//! logging did not change adds nothing; an edited callsite (another line, say) adds a copy of
//! a few hundred bytes. Each loaded version keeps a map from its own metadata's address to the
//! host's copy, so an event costs one lookup.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use abi_stable::std_types::RSlice;
use hotreload_abi::{
    LOG_INTEREST_ALWAYS, LOG_INTEREST_NEVER, LOG_INTEREST_SOMETIMES, LOG_KIND_SPAN, LOG_LEVEL_OFF,
    LogCallsite, LogField, LogHooks, LogValue,
};
use tracing_core::callsite::{Callsite, Identifier};
use tracing_core::field::{DisplayValue, Value, display};
use tracing_core::metadata::Kind;
use tracing_core::subscriber::Interest;
use tracing_core::{Event, Level, LevelFilter, Metadata, dispatcher, span};

/// The host's record of one loaded version, for its logging: who it is, and its callsites.
pub(crate) struct LogContext {
    module: String,
    generation: u64,
    /// Whether the module's logging goes to the host (`ModuleOptions::forward_logs`).
    forward: bool,
    /// The host's copy of each callsite: by the address of the module's metadata, or for a
    /// `log` record (which has none) by a hash of its content.
    callsites: RwLock<HashMap<(usize, u64), &'static HostCallsite>>,
}

impl LogContext {
    pub(crate) fn new(module: &str, generation: u64, forward: bool) -> Self {
        LogContext {
            module: module.to_owned(),
            generation,
            forward,
            callsites: RwLock::new(HashMap::new()),
        }
    }

    /// The host's copy of `callsite`.
    fn callsite(&self, callsite: &LogCallsite<'_>) -> &'static HostCallsite {
        let key = if callsite.key == 0 {
            (0, content_hash(callsite))
        } else {
            (callsite.key, 0)
        };
        let known = self
            .callsites
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        // Checked against what the module reports: `tracing` may ask about metadata that is
        // not static (made on a stack for one question), whose address can be reused.
        if let Some(known) = known.filter(|known| known.is(callsite)) {
            return known;
        }
        // Interned without the map's lock held: registering it runs the host's subscribers,
        // which may log.
        let interned = intern(callsite);
        self.callsites
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, interned);
        interned
    }
}

/// A hash of what a `log` record's callsite says.
fn content_hash(callsite: &LogCallsite<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (callsite.kind, callsite.level, callsite.line).hash(&mut hasher);
    callsite.target.as_str().hash(&mut hasher);
    callsite.module_path.as_str().hash(&mut hasher);
    callsite.file.as_str().hash(&mut hasher);
    callsite.name.as_str().hash(&mut hasher);
    hasher.finish()
}

/// The hooks a version gets for its logging; `context` must stay valid while its image is
/// mapped (it is its `Links`'). A null context tells the module to leave its logging alone.
pub(crate) fn hooks(context: &LogContext) -> LogHooks {
    LogHooks {
        context: if context.forward {
            std::ptr::from_ref(context).cast()
        } else {
            std::ptr::null()
        },
        max_level: match LevelFilter::current().into_level() {
            Some(level) => super::level_code(level),
            None => LOG_LEVEL_OFF,
        },
        register,
        enabled,
        event,
        new_span,
        enter,
        exit,
        clone_span,
        close_span,
    }
}

/// The host's copy of a module's callsite, registered with the host's `tracing`.
struct HostCallsite {
    metadata: OnceLock<Metadata<'static>>,
    /// What the host's subscribers last said of it (`LOG_INTEREST_*`).
    interest: AtomicU8,
}

impl Callsite for HostCallsite {
    fn set_interest(&self, interest: Interest) {
        let code = if interest.is_never() {
            LOG_INTEREST_NEVER
        } else if interest.is_always() {
            LOG_INTEREST_ALWAYS
        } else {
            LOG_INTEREST_SOMETIMES
        };
        self.interest.store(code, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.metadata.get().expect("set when interned")
    }
}

impl HostCallsite {
    /// Its metadata (every `HostCallsite` is leaked by `intern`, and set before it is shared
    /// or registered).
    fn metadata(&'static self) -> &'static Metadata<'static> {
        self.metadata.get().expect("set when interned")
    }

    /// Whether it is the copy of `callsite`.
    fn is(&'static self, callsite: &LogCallsite<'_>) -> bool {
        let metadata = self.metadata();
        super::level_code(*metadata.level()) == callsite.level
            && metadata.line().unwrap_or(0) == callsite.line
            && metadata.target() == callsite.target.as_str()
            && metadata.name() == callsite.name.as_str()
            && metadata.fields().len() == callsite.fields.len() + 2
    }
}

/// A callsite as its content says: two reports of the same content share one copy.
#[derive(PartialEq, Eq, Hash)]
struct CallsiteKey {
    kind: u8,
    level: u8,
    line: u32,
    name: String,
    target: String,
    module_path: String,
    file: String,
    fields: Vec<String>,
}

static INTERNED: OnceLock<Mutex<HashMap<CallsiteKey, &'static HostCallsite>>> = OnceLock::new();

/// The host's copy of `callsite`, made (and registered) the first time its content is seen.
fn intern(callsite: &LogCallsite<'_>) -> &'static HostCallsite {
    let key = CallsiteKey {
        kind: callsite.kind,
        level: callsite.level,
        line: callsite.line,
        name: callsite.name.as_str().to_owned(),
        target: callsite.target.as_str().to_owned(),
        module_path: callsite.module_path.as_str().to_owned(),
        file: callsite.file.as_str().to_owned(),
        fields: callsite
            .fields
            .iter()
            .map(|name| name.as_str().to_owned())
            .collect(),
    };
    let interned = INTERNED.get_or_init(Default::default);
    let mut table = interned.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = table.get(&key) {
        return known;
    }
    let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
    let names: Vec<&'static str> = key
        .fields
        .iter()
        .map(|name| leak(name))
        .chain(["module", "generation"])
        .collect();
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let made: &'static HostCallsite = Box::leak(Box::new(HostCallsite {
        metadata: OnceLock::new(),
        interest: AtomicU8::new(LOG_INTEREST_SOMETIMES),
    }));
    let optional = |text: &str| (!text.is_empty()).then(|| leak(text));
    let metadata = Metadata::new(
        leak(&key.name),
        leak(&key.target),
        level(key.level),
        optional(&key.file),
        (key.line != 0).then_some(key.line),
        optional(&key.module_path),
        tracing_core::field::FieldSet::new(names, Identifier(made)),
        if key.kind == LOG_KIND_SPAN {
            Kind::SPAN
        } else {
            Kind::EVENT
        },
    );
    let _ = made.metadata.set(metadata);
    table.insert(key, made);
    drop(table);
    // Asks every subscriber of the host what it wants of the callsite (`set_interest`).
    tracing_core::callsite::register(made);
    made
}

fn level(code: u8) -> Level {
    match code {
        0 => Level::TRACE,
        1 => Level::DEBUG,
        2 => Level::INFO,
        3 => Level::WARN,
        _ => Level::ERROR,
    }
}

/// Runs a hook's body: nothing may unwind into the module.
fn guarded<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The context a hook was given.
///
/// # Safety
/// `context` must be the non-null `LogContext` address `hooks` gave a version, called by that
/// version's code: its `Links` (which hold the context) live as long as its image is mapped.
unsafe fn context<'a>(context: *const c_void) -> &'a LogContext {
    // SAFETY: the contract above.
    unsafe { &*context.cast::<LogContext>() }
}

extern "C" fn register(ctx: *const c_void, callsite: &LogCallsite<'_>) -> u8 {
    guarded(LOG_INTEREST_NEVER, || {
        // SAFETY: the module passes back the context `hooks` gave it (the hooks' contract);
        // it calls no hook when the context is null.
        unsafe { context(ctx) }
            .callsite(callsite)
            .interest
            .load(Ordering::Relaxed)
    })
}

extern "C" fn enabled(ctx: *const c_void, callsite: &LogCallsite<'_>) -> bool {
    guarded(false, || {
        // SAFETY: as in `register`.
        let metadata = unsafe { context(ctx) }.callsite(callsite).metadata();
        dispatcher::get_default(|dispatch| dispatch.enabled(metadata))
    })
}

/// A field's value as the host's subscriber visits it.
enum HostValue<'a> {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Text(DisplayValue<&'a str>),
}

impl<'a> HostValue<'a> {
    fn of(value: &LogValue<'a>) -> Self {
        match *value {
            LogValue::I64(v) => HostValue::I64(v),
            LogValue::U64(v) => HostValue::U64(v),
            LogValue::F64(v) => HostValue::F64(v),
            LogValue::Bool(v) => HostValue::Bool(v),
            LogValue::Str(text) => HostValue::Str(text.as_str()),
            LogValue::Text(text) => HostValue::Text(display(text.as_str())),
        }
    }

    fn as_value(&self) -> &dyn Value {
        match self {
            HostValue::I64(v) => v,
            HostValue::U64(v) => v,
            HostValue::F64(v) => v,
            HostValue::Bool(v) => v,
            HostValue::Str(v) => v,
            HostValue::Text(v) => v,
        }
    }
}

/// Runs `f` with the values of an event or span of `metadata` (the module's fields, then
/// `module` and `generation`), in the order of its fields.
fn with_values<R>(
    context: &LogContext,
    metadata: &'static Metadata<'static>,
    fields: RSlice<'_, LogField<'_>>,
    f: impl FnOnce(&tracing_core::field::ValueSet<'_>) -> R,
) -> R {
    let set = metadata.fields();
    let own = set.len() - 2;
    let values: Vec<(usize, HostValue<'_>)> = fields
        .iter()
        .filter(|field| (field.index as usize) < own)
        .map(|field| (field.index as usize, HostValue::of(&field.value)))
        .collect();
    let module = context.module.as_str();
    let mut all: Vec<Option<&dyn Value>> = vec![None; set.len()];
    for (index, value) in &values {
        all[*index] = Some(value.as_value());
    }
    all[own] = Some(&module);
    all[own + 1] = Some(&context.generation);
    // `value_set_all` takes one value (or none) per field: what `tracing`'s own macros call
    // (hidden from its docs, but every `tracing` 0.1 build relies on it).
    f(&set.value_set_all(&all))
}

extern "C" fn event(
    ctx: *const c_void,
    callsite: &LogCallsite<'_>,
    fields: RSlice<'_, LogField<'_>>,
) {
    guarded((), || {
        // SAFETY: as in `register`.
        let context = unsafe { context(ctx) };
        let metadata = context.callsite(callsite).metadata();
        dispatcher::get_default(|dispatch| {
            if dispatch.enabled(metadata) {
                with_values(context, metadata, fields, |values| {
                    dispatch.event(&Event::new(metadata, values));
                });
            }
        });
    });
}

extern "C" fn new_span(
    ctx: *const c_void,
    callsite: &LogCallsite<'_>,
    fields: RSlice<'_, LogField<'_>>,
) -> u64 {
    guarded(0, || {
        // SAFETY: as in `register`.
        let context = unsafe { context(ctx) };
        let metadata = context.callsite(callsite).metadata();
        dispatcher::get_default(|dispatch| {
            if !dispatch.enabled(metadata) {
                return 0;
            }
            with_values(context, metadata, fields, |values| {
                dispatch
                    .new_span(&span::Attributes::new(metadata, values))
                    .into_u64()
            })
        })
    })
}

/// A span id from the module: the host's, unless it stands for no span.
fn span_id(id: u64) -> Option<span::Id> {
    (id != 0 && id != super::NO_SPAN).then(|| span::Id::from_u64(id))
}

extern "C" fn enter(id: u64) {
    guarded((), || {
        if let Some(id) = span_id(id) {
            dispatcher::get_default(|dispatch| dispatch.enter(&id));
        }
    });
}

extern "C" fn exit(id: u64) {
    guarded((), || {
        if let Some(id) = span_id(id) {
            dispatcher::get_default(|dispatch| dispatch.exit(&id));
        }
    });
}

extern "C" fn clone_span(id: u64) -> u64 {
    guarded(id, || match span_id(id) {
        Some(id) => dispatcher::get_default(|dispatch| dispatch.clone_span(&id)).into_u64(),
        None => 0,
    })
}

extern "C" fn close_span(id: u64) -> bool {
    guarded(false, || match span_id(id) {
        Some(id) => dispatcher::get_default(|dispatch| dispatch.try_close(id.clone())),
        None => false,
    })
}
