//! A reload behind a long call: while it waits for a moment with no call in flight, new calls
//! keep running on the old version; when its patience runs out it either holds them back
//! (and counts that pause) or gives up, as the module's `Quiesce` policy says.

use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hotreload::{HotError, HotReloader, ModuleOptions, Quiesce, WhenBusy, hot_fn};
use hotreload_tests::{Sandbox, variants};

/// Whether the long call is inside the host callback, and whether it may return.
static GATE: Mutex<(bool, bool)> = Mutex::new((false, false));
static GATE_CHANGED: Condvar = Condvar::new();
const DEADLINE: Duration = Duration::from_secs(30);

/// The callback the long call makes: says it is in, then waits until released.
extern "C" fn hold(_: u64) -> u64 {
    let mut gate = GATE.lock().unwrap();
    gate.0 = true;
    GATE_CHANGED.notify_all();
    let (gate, timeout) = GATE_CHANGED
        .wait_timeout_while(gate, DEADLINE, |g| !g.1)
        .unwrap();
    assert!(!timeout.timed_out(), "the long call was never released");
    drop(gate);
    7
}

const HOLD: counter::HostCallback = counter::HostCallback { func: hold };

fn wait_until_held() {
    let gate = GATE.lock().unwrap();
    let (_gate, timeout) = GATE_CHANGED
        .wait_timeout_while(gate, DEADLINE, |g| !g.0)
        .unwrap();
    assert!(!timeout.timed_out(), "the long call never started");
}

fn release() {
    GATE.lock().unwrap().1 = true;
    GATE_CHANGED.notify_all();
}

/// A `&self` call that waits inside the module until [`release`]d; returns once it is in.
fn start_long_call(module: &hotreload::Module<counter::Counter>) -> JoinHandle<u64> {
    *GATE.lock().unwrap() = (false, false);
    let module = module.clone();
    let long = std::thread::spawn(move || hot_fn!(module.call_back_shared(HOLD)).unwrap());
    wait_until_held();
    long
}

/// `reload_module("counter")` on a thread of its own.
fn reload_in_background(reloader: HotReloader) -> JoinHandle<(HotReloader, Reloaded)> {
    std::thread::spawn(move || {
        let report = reloader.reload_module("counter");
        (reloader, report)
    })
}

type Reloaded = Result<hotreload::ReloadReport, HotError>;

/// Short calls made while `busy` is not finished: the longest one, and how many. The long
/// call is released after `release_after` by a thread of its own: a reload that holds new
/// calls back holds these back too.
fn short_calls_until<T>(
    module: &hotreload::Module<counter::Counter>,
    busy: &std::thread::JoinHandle<T>,
    release_after: Duration,
) -> (Duration, usize) {
    let started = Instant::now();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(release_after);
        release();
    });
    let (mut longest, mut calls) = (Duration::ZERO, 0);
    while !busy.is_finished() {
        assert!(started.elapsed() < DEADLINE, "the reload never finished");
        let call = Instant::now();
        assert!(hot_fn!(module.build_tag()).unwrap() > 0);
        longest = longest.max(call.elapsed());
        calls += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    releaser.join().unwrap();
    (longest, calls)
}

// One test: the gate is process-wide.
#[test]
fn a_reload_behind_a_long_call_holds_nobody_back_until_its_patience_runs_out() {
    let sandbox = Sandbox::new(variants!());

    // 1. Patience longer than the call: the reload waits, nobody is held back.
    let (reloader, module) = sandbox.register_with(
        "v1",
        ModuleOptions::new().quiesce(Quiesce {
            patience: Duration::from_secs(10),
            then: WhenBusy::Block,
        }),
    );
    let long = start_long_call(&module);
    sandbox.install("v2");
    let reload = reload_in_background(reloader);
    let (longest, calls) = short_calls_until(&module, &reload, Duration::from_millis(300));
    let (reloader, report) = reload.join().unwrap();
    let report = report.unwrap();
    assert_eq!(long.join().unwrap(), 7);
    println!(
        "patience 10 s, a 300 ms call in flight: {calls} short calls during the reload, the \
         longest {longest:?}; {report}"
    );
    assert!(calls > 50, "calls kept running: {calls}");
    assert!(
        longest < Duration::from_millis(50),
        "a short call waited {longest:?} behind a reload that was waiting"
    );
    // The swap waited for the long call: the steps before it took as long as what was left
    // of the call when the reload began (the load steps' share of it varies with the machine).
    let t = &report.timings;
    assert!(
        t.stage + t.open + t.verify + t.quiesce >= Duration::from_millis(250),
        "{report}"
    );
    assert_eq!(report.timings.wait, Duration::ZERO, "{report}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    drop((reloader, module));

    // 2. Patience shorter than the call, `GiveUp`: a typed error, nothing changed.
    let (reloader, module) = sandbox.register_with(
        "v1",
        ModuleOptions::new().quiesce(Quiesce {
            patience: Duration::from_millis(50),
            then: WhenBusy::GiveUp,
        }),
    );
    hot_fn!(module.add(3)).unwrap();
    let long = start_long_call(&module);
    sandbox.install("v2");
    let err = reloader.reload_module("counter").unwrap_err();
    assert!(
        matches!(&err, HotError::Busy { waited, .. } if *waited >= Duration::from_millis(50)),
        "{err:?}"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1, "v1 serves: {err}");
    release();
    assert_eq!(long.join().unwrap(), 7);
    let report = reloader.reload_module("counter").unwrap();
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(hot_fn!(module.snapshot()).unwrap().total, 3, "state kept");
    assert!(report.timings.wait.is_zero(), "{report}");
    drop((reloader, module));

    // 3. The default (100 ms, then `Block`): once the patience is spent, new calls wait for
    //    the long one, and the report counts that pause.
    let (reloader, module) = sandbox.register("v1");
    let long = start_long_call(&module);
    sandbox.install("v2");
    let reload = reload_in_background(reloader);
    let (longest, _) = short_calls_until(&module, &reload, Duration::from_millis(400));
    let (_reloader, report) = reload.join().unwrap();
    let report = report.unwrap();
    assert_eq!(long.join().unwrap(), 7);
    println!("default policy, a 400 ms call in flight: longest short call {longest:?}; {report}");
    assert!(
        (Duration::from_millis(100)..Duration::from_millis(300)).contains(&report.timings.quiesce),
        "{report}"
    );
    assert!(
        report.timings.wait >= Duration::from_millis(200),
        "{report}"
    );
    assert!(report.timings.pause() >= report.timings.wait);
    assert!(
        longest <= report.timings.pause() + Duration::from_millis(20),
        "no caller waited longer than the pause the report counts: {longest:?}, {report}"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
}
