//! Module code that calls back into the host, which calls the same module again on the same
//! thread: every such call either runs (a `&self` call inside a `&self` call) or is refused
//! with a typed error; none makes a second reference to a state that a `&mut self` call
//! holds, and none waits for ever (a reload from inside a call used to deadlock through a
//! shared handle, and re-entry through a local handle aliased the state).

use std::cell::RefCell;
use std::rc::Rc;

use hotreload::{HotError, HotReloader, LocalModule, Module, ModuleOptions, Probation, hot_fn};
use hotreload_tests::{Sandbox, variants};

type Probe = Box<dyn Fn()>;

std::thread_local! {
    /// What the host's callback does when module code calls it.
    static PROBE: RefCell<Option<Probe>> = RefCell::new(None);
}

/// The host function module code calls back (`call_back_*`): runs the probe.
extern "C" fn run_probe(n: u64) -> u64 {
    PROBE.with(|probe| {
        if let Some(probe) = &*probe.borrow() {
            probe();
        }
    });
    n
}

const CALLBACK: counter::HostCallback = counter::HostCallback { func: run_probe };

/// Installs `probe` for the calls made inside `f`.
fn with_probe<R>(probe: impl Fn() + 'static, f: impl FnOnce() -> R) -> R {
    PROBE.with(|p| *p.borrow_mut() = Some(Box::new(probe)));
    let out = f();
    PROBE.with(|p| *p.borrow_mut() = None);
    out
}

/// What each call made from inside the callback returned, by name.
type Outcomes = Rc<RefCell<Vec<(&'static str, Result<String, HotError>)>>>;

fn record<T: std::fmt::Debug>(
    outcomes: &Outcomes,
    name: &'static str,
    result: Result<T, HotError>,
) {
    outcomes
        .borrow_mut()
        .push((name, result.map(|v| format!("{v:?}"))));
}

fn outcome<'a>(
    outcomes: &'a [(&'static str, Result<String, HotError>)],
    name: &str,
) -> &'a Result<String, HotError> {
    &outcomes
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no outcome for {name}: {outcomes:?}"))
        .1
}

fn assert_reentrant(result: &Result<String, HotError>, exclusive: bool, running_exclusive: bool) {
    match result {
        Err(HotError::ReentrantCall {
            module,
            exclusive: e,
            running_exclusive: r,
            ..
        }) => {
            assert_eq!(module, "counter");
            assert_eq!((*e, *r), (exclusive, running_exclusive), "{result:?}");
        }
        other => panic!("expected ReentrantCall, got {other:?}"),
    }
}

fn assert_reload_during_call(result: &Result<String, HotError>) {
    assert!(
        matches!(result, Err(HotError::ReloadDuringCall { module }) if module == "counter"),
        "expected ReloadDuringCall, got {result:?}"
    );
}

/// The calls a callback makes into the module it was called from, through handle `$m`.
macro_rules! probe_calls {
    ($m:expr, $reloader:expr, $outcomes:expr) => {{
        let (m, reloader, outcomes) = ($m.clone(), $reloader.clone(), $outcomes.clone());
        move || {
            record(&outcomes, "calls", hot_fn!(m.calls()));
            record(&outcomes, "bump", hot_fn!(m.bump()));
            record(
                &outcomes,
                "reload",
                reloader.reload_module("counter").map(|_| ()),
            );
            record(
                &outcomes,
                "rollback",
                reloader.rollback("counter").map(|_| ()),
            );
            record(&outcomes, "mark_good", reloader.mark_good("counter"));
            record(
                &outcomes,
                "version",
                reloader
                    .current_version("counter")
                    .map(|v| v.map(|v| v.generation)),
            );
        }
    }};
}

/// A reloader, with v1 installed for the first load.
fn reloaded(sandbox: &Sandbox) -> Rc<HotReloader> {
    sandbox.install("v1");
    Rc::new(HotReloader::new())
}

/// With a probation running after the reload to v2 (and v1 kept), a refused rollback or
/// `mark_good` is the call's doing, not a lack of history or of probation.
fn options(sandbox: &Sandbox) -> ModuleOptions {
    ModuleOptions::new()
        .artifact(sandbox.artifact())
        .probation(Probation::calls(1_000))
}

fn check_exclusive_outer(outcomes: &Outcomes) {
    let outcomes = outcomes.borrow();
    assert_reentrant(outcome(&outcomes, "calls"), false, true);
    assert_reentrant(outcome(&outcomes, "bump"), true, true);
    assert_reload_during_call(outcome(&outcomes, "reload"));
    assert_reload_during_call(outcome(&outcomes, "rollback"));
    assert_reload_during_call(outcome(&outcomes, "mark_good"));
    assert_eq!(outcome(&outcomes, "version").as_ref().unwrap(), "Some(2)");
}

fn check_shared_outer(outcomes: &Outcomes, calls: u64) {
    let outcomes = outcomes.borrow();
    assert_eq!(
        outcome(&outcomes, "calls").as_ref().unwrap(),
        &calls.to_string()
    );
    assert_reentrant(outcome(&outcomes, "bump"), true, false);
    assert_reload_during_call(outcome(&outcomes, "reload"));
    assert_reload_during_call(outcome(&outcomes, "rollback"));
    assert_reload_during_call(outcome(&outcomes, "mark_good"));
    assert_eq!(outcome(&outcomes, "version").as_ref().unwrap(), "Some(2)");
}

/// Re-enters the module from inside a `&mut self` call and a `&self` call through `$module`
/// (a handle registered on `$reloader` after a reload to v2), then checks that everything
/// works again outside the calls.
macro_rules! re_enter {
    ($module:expr, $reloader:expr) => {{
        let (module, reloader) = (&$module, &$reloader);
        let outcomes = Outcomes::default();
        let returned = with_probe(probe_calls!(module, reloader, outcomes), || {
            hot_fn!(module.call_back_exclusive(CALLBACK))
        });
        assert_eq!(returned.unwrap(), 1);
        check_exclusive_outer(&outcomes);

        let outcomes = Outcomes::default();
        with_probe(probe_calls!(module, reloader, outcomes), || {
            hot_fn!(module.call_back_shared(CALLBACK))
        })
        .unwrap();
        check_shared_outer(&outcomes, 1);

        // Outside every call, all of it works again.
        assert_eq!(hot_fn!(module.bump()).unwrap(), 2);
        reloader.mark_good("counter").unwrap();
        reloader.rollback("counter").unwrap();
        assert_eq!(module.version().unwrap().generation, 1);
    }};
}

#[test]
fn re_entry_through_a_shared_handle_is_refused_or_runs_never_deadlocks() {
    let sandbox = Sandbox::new(variants!());
    let reloader = reloaded(&sandbox);
    let module: Module<counter::Counter> = reloader.register_with(options(&sandbox)).unwrap();
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    re_enter!(module, reloader);
}

#[test]
fn re_entry_through_a_local_handle_is_refused_or_runs_never_aliases() {
    let sandbox = Sandbox::new(variants!());
    let reloader = reloaded(&sandbox);
    let module: Rc<LocalModule<counter::Counter>> =
        Rc::new(reloader.register_local_with(options(&sandbox)).unwrap());
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    re_enter!(module, reloader);
}

/// Module code that a reload runs (the replaced version's retire hook) calls back into the
/// host, which calls the module, reloads it or reads its history: each is refused at once.
/// The reload holds the module's bookkeeping and may hold its lock, so waiting would be for
/// ever.
macro_rules! re_enter_from_a_reload {
    ($module:expr, $reloader:expr, $sandbox:expr) => {{
        let (module, reloader) = (&$module, &$reloader);
        hot_fn!(module.set_retire_callback(CALLBACK)).unwrap();
        let outcomes = Outcomes::default();
        let probe = {
            let (m, reloader, outcomes) = (module.clone(), reloader.clone(), outcomes.clone());
            move || {
                record(&outcomes, "calls", hot_fn!(m.calls()));
                record(
                    &outcomes,
                    "reload",
                    reloader.reload_module("counter").map(|_| ()),
                );
                record(
                    &outcomes,
                    "history",
                    reloader.history("counter").map(|h| h.len()),
                );
                record(
                    &outcomes,
                    "version",
                    reloader.current_version("counter").map(|v| v.is_some()),
                );
            }
        };
        $sandbox.install("v1");
        let report = with_probe(probe, || reloader.reload_module("counter")).unwrap();
        assert_eq!(report.to.generation, 3);
        let outcomes = outcomes.borrow();
        assert_reentrant(outcome(&outcomes, "calls"), false, true);
        assert_reload_during_call(outcome(&outcomes, "reload"));
        assert_reload_during_call(outcome(&outcomes, "history"));
        assert_eq!(outcome(&outcomes, "version").as_ref().unwrap(), "true");
        // The reload itself went through, and the module serves.
        assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    }};
}

#[test]
fn module_code_run_by_a_reload_cannot_re_enter_through_a_shared_handle() {
    let sandbox = Sandbox::new(variants!());
    let reloader = reloaded(&sandbox);
    let module: Module<counter::Counter> = reloader.register_with(options(&sandbox)).unwrap();
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    re_enter_from_a_reload!(module, reloader, sandbox);
}

#[test]
fn module_code_run_by_a_reload_cannot_re_enter_through_a_local_handle() {
    let sandbox = Sandbox::new(variants!());
    let reloader = reloaded(&sandbox);
    let module: Rc<LocalModule<counter::Counter>> =
        Rc::new(reloader.register_local_with(options(&sandbox)).unwrap());
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    re_enter_from_a_reload!(module, reloader, sandbox);
}
