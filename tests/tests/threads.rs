//! Threads that module code starts can outlive the call that started them. A version is never
//! unmapped while such a thread may return into it: workers started with
//! `hotreload::worker::spawn` are stopped and joined, other threads' stacks are checked, and a
//! version something may still run in is held (reported) and closed at a later retire.
//!
//! Each case reloads 20 times with a thread sleeping in the version being replaced; the
//! module keeps no history, so every reload closes the version it replaces at once. The cases
//! run one after another in one test: a test thread that the harness starts meanwhile would
//! be one more thread to check, and the check is conservative (a stale word on a new thread's
//! stack that looks like an address inside a version keeps that version a while longer).

use std::time::{Duration, Instant};

use hotreload::{Event, HotReloader, Module, ModuleOptions, RetiredVersion, hot_fn};
use hotreload_tests::{Sandbox, variants};

const RELOADS: usize = 20;

/// Loopback connections held open by the test: a module thread connected to one waits in
/// the module's code until the test closes it.
struct Holds {
    listener: std::net::TcpListener,
    open: Vec<std::net::TcpStream>,
}

impl Holds {
    fn new() -> Self {
        Holds {
            listener: std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap(),
            open: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Takes the connection a module thread just made (it connected before its call
    /// returned, so it is waiting in the backlog).
    fn accept(&mut self) {
        self.open.push(self.listener.accept().unwrap().0);
    }

    /// Lets every waiting module thread end.
    fn release(&mut self) {
        self.open.clear();
    }
}

/// How many threads this process has.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Waits until the process is back to `count` threads: the module's threads have ended.
fn wait_for_threads(count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while threads() > count {
        assert!(
            Instant::now() < deadline,
            "the module's threads did not end within {timeout:?}: {} threads, expected {count}",
            threads()
        );
        std::thread::yield_now();
    }
}

fn register(sandbox: &Sandbox, options: ModuleOptions) -> (HotReloader, Module<counter::Counter>) {
    sandbox.register_with("v1", options.history(0))
}

/// What the reloads closed, and the held versions later reloads released.
#[derive(Default)]
struct Closed {
    closed: Vec<RetiredVersion>,
    released: Vec<RetiredVersion>,
}

impl Closed {
    fn held(&self) -> usize {
        self.closed.iter().filter(|c| c.is_held()).count()
    }
}

/// Reloads alternately to v2 and v1, calling `start` in the serving version before each
/// reload. A version held by a reload is mapped right after it; a held version whose threads
/// have ended meanwhile may be released by a later reload of the loop.
fn reload_with_threads(
    sandbox: &Sandbox,
    reloader: &HotReloader,
    module: &Module<counter::Counter>,
    start: impl Fn(&Module<counter::Counter>),
) -> Closed {
    let mut all = Closed::default();
    for i in 0..RELOADS {
        start(module);
        sandbox.install(if i % 2 == 0 { "v2" } else { "v1" });
        let report = reloader.reload_module("counter").unwrap();
        for version in report.closed.iter().filter(|c| c.is_held()) {
            assert_eq!(
                version.is_mapped_now(),
                Some(true),
                "a held version stays mapped"
            );
        }
        all.closed.extend(report.closed);
        all.released.extend(report.released);
        // The new version serves, with the state carried over.
        assert_eq!(
            hot_fn!(module.build_tag()).unwrap(),
            if i % 2 == 0 { 2 } else { 1 }
        );
    }
    all
}

/// One more reload once the threads have ended: every version still held is released.
fn release_all(sandbox: &Sandbox, reloader: &HotReloader, mut all: Closed) -> Vec<RetiredVersion> {
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert!(
        report.closed.iter().all(|c| c.held.is_none()),
        "{:?}",
        report.closed
    );
    all.released.extend(report.released);
    assert_eq!(
        all.released.len(),
        all.held(),
        "every held version is released once its threads have ended; still held: {:?}",
        reloader.held_versions("counter").unwrap()
    );
    all.released
}

fn a_pthread_sleeping_in_a_version_keeps_it_mapped_until_it_ends() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = register(&sandbox, ModuleOptions::new());
    let events = reloader.subscribe();
    let before = threads();
    let holds = std::cell::RefCell::new(Holds::new());
    let port = holds.borrow().port();
    let closed = reload_with_threads(&sandbox, &reloader, &module, |m| {
        assert!(hot_fn!(m.start_pthread(port)).unwrap());
        holds.borrow_mut().accept();
    });
    // Every replaced version had a thread asleep in it: each was held, and said why.
    assert_eq!(closed.closed.len(), RELOADS);
    for version in &closed.closed {
        let reason = version.held.as_deref().unwrap_or_else(|| {
            panic!(
                "load #{} was closed under a sleeping thread",
                version.info.generation
            )
        });
        assert!(reason.contains("inside it"), "{reason}");
    }
    let held_events = events
        .try_iter()
        .filter(|e| matches!(e, Event::VersionHeld { .. }))
        .count();
    assert_eq!(
        held_events, RELOADS,
        "one VersionHeld event per held version"
    );

    holds.borrow_mut().release();
    wait_for_threads(before, Duration::from_secs(10));
    let released = release_all(&sandbox, &reloader, closed);
    // Nothing registered a thread-local destructor in them: the OS really unmaps them.
    for version in &released {
        assert_eq!(
            version.is_mapped_now(),
            Some(false),
            "load #{}",
            version.info.generation
        );
    }
    assert!(
        events
            .try_iter()
            .any(|e| matches!(e, Event::VersionReleased { .. })),
        "a VersionReleased event"
    );
}

fn a_std_thread_sleeping_in_a_version_keeps_it_mapped_until_it_ends() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = register(&sandbox, ModuleOptions::new());
    let before = threads();
    let holds = std::cell::RefCell::new(Holds::new());
    let port = holds.borrow().port();
    let closed = reload_with_threads(&sandbox, &reloader, &module, |m| {
        assert!(hot_fn!(m.start_std_thread(port)).unwrap());
        holds.borrow_mut().accept();
    });
    assert_eq!(closed.held(), RELOADS, "every version was held");
    holds.borrow_mut().release();
    wait_for_threads(before, Duration::from_secs(10));
    let released = release_all(&sandbox, &reloader, closed);
    // std's threads register thread-local destructors in the library; the runtime keeps
    // them (not glibc), they ran as each thread ended, and every version is really unmapped.
    assert!(
        released.iter().all(|v| v.still_mapped == Some(false)),
        "{released:?}"
    );
}

fn workers_are_stopped_and_joined_when_their_version_is_replaced() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = register(&sandbox, ModuleOptions::new());
    let before = threads();
    let closed = reload_with_threads(&sandbox, &reloader, &module, |m| {
        assert!(hot_fn!(m.start_worker()).unwrap());
    });
    // Each worker stopped when told and was joined before its version was closed.
    assert_eq!(closed.closed.len(), RELOADS);
    assert_eq!(closed.held(), 0, "{:?}", closed.closed);
    assert_eq!(threads(), before, "no worker is left running");
}

fn a_worker_that_does_not_stop_in_time_holds_its_version_until_it_ends() {
    let sandbox = Sandbox::new(variants!());
    let options = ModuleOptions::new().worker_stop_timeout(Duration::from_millis(10));
    let (reloader, module) = register(&sandbox, options);
    let before = threads();
    let holds = std::cell::RefCell::new(Holds::new());
    let port = holds.borrow().port();
    let closed = reload_with_threads(&sandbox, &reloader, &module, |m| {
        assert!(hot_fn!(m.start_stubborn_worker(port)).unwrap());
        holds.borrow_mut().accept();
    });
    for version in &closed.closed {
        let reason = version.held.as_deref().unwrap_or("not held");
        assert!(
            reason.contains("did not stop within 10 ms"),
            "load #{}: {reason}; all closed: {:?}",
            version.info.generation,
            closed.closed
        );
    }
    holds.borrow_mut().release();
    wait_for_threads(before, Duration::from_secs(10));
    release_all(&sandbox, &reloader, closed);
}

fn the_retire_hook_runs_on_the_state_of_each_replaced_version() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = register(&sandbox, ModuleOptions::new());
    let log = sandbox.path().join("retired.log");
    let label = format!("retire-log:{}", log.display());
    hot_fn!(module.set_label(label.into())).unwrap();
    reload_with_threads(&sandbox, &reloader, &module, |m| {
        hot_fn!(m.bump()).unwrap();
    });
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // One line per replaced version, each with that build's tag and the state it had.
    let expected: Vec<String> = (0..RELOADS)
        .map(|i| {
            let tag = if i % 2 == 0 { 1 } else { 2 };
            format!("build {tag} retired after {} calls", i + 2)
        })
        .collect();
    assert_eq!(lines, expected);
}

fn keep_loaded_never_closes_a_version() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = register(&sandbox, ModuleOptions::new().keep_loaded());
    let closed = reload_with_threads(&sandbox, &reloader, &module, |_| {});
    assert_eq!(closed.closed.len(), RELOADS);
    for version in &closed.closed {
        assert!(
            version
                .held
                .as_deref()
                .unwrap_or("")
                .contains("keep_loaded")
        );
        assert_eq!(version.is_mapped_now(), Some(true));
    }
}

#[test]
fn threads_started_by_module_code_never_run_in_unmapped_code() {
    a_pthread_sleeping_in_a_version_keeps_it_mapped_until_it_ends();
    a_std_thread_sleeping_in_a_version_keeps_it_mapped_until_it_ends();
    workers_are_stopped_and_joined_when_their_version_is_replaced();
    a_worker_that_does_not_stop_in_time_holds_its_version_until_it_ends();
    keep_loaded_never_closes_a_version();
    the_retire_hook_runs_on_the_state_of_each_replaced_version();
}
