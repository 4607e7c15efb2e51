//! A version whose code used thread-locals with destructors (`thread_local!` with a `Drop`
//! type, `rand`'s thread RNG) is unmapped when it is closed: the runtime, not the C library,
//! keeps those destructors and runs each on the thread that registered it, when its version
//! is closed (the closing thread's own), at that thread's next call (another thread's), or
//! when the thread ends.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hotreload::{ModuleOptions, RetiredVersion, hot_fn};
use hotreload_tests::{Sandbox, mapped_shadow_copies, variants};

const RELOADS: usize = 12;
const DEADLINE: Duration = Duration::from_secs(20);

/// What the other thread is asked to do.
enum Ask {
    Mark(PathBuf),
    End,
}

fn mark(dir: &Path, thread: &str, round: usize) -> PathBuf {
    dir.join(format!("{thread}-{round}"))
}

/// Which thread ran the destructor that created `path`, if it ran.
fn ran_on(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// This thread, as the module's marks name it.
fn this_thread() -> String {
    std::fs::read_link("/proc/thread-self")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn thread_local_destructors_run_on_their_threads_and_closed_versions_are_unmapped() {
    let sandbox = Sandbox::new(variants!());
    let marks = sandbox.path().join("marks");
    std::fs::create_dir(&marks).unwrap();

    // The other thread exists before any version is opened: it was not started by module
    // code, so the check for threads inside a closed version does not look at it.
    let (ask, asked) = mpsc::channel::<Ask>();
    let (done, answers) = mpsc::channel::<u64>();
    let (handle_to, handle_from) = mpsc::channel();
    let (named, name) = mpsc::channel();
    let other = std::thread::Builder::new()
        .spawn(move || {
            named.send(this_thread()).unwrap();
            let module: hotreload::Module<counter::Counter> = handle_from.recv().unwrap();
            while let Ok(Ask::Mark(path)) = asked.recv() {
                let drawn = hot_fn!(module.mark_thread_local(path.to_string_lossy().into()));
                done.send(drawn.unwrap()).unwrap();
            }
        })
        .unwrap();
    let other_thread = name.recv().unwrap();
    let main_thread = this_thread();
    let (reloader, module) = sandbox.register_with("v1", ModuleOptions::new().history(0));
    handle_to.send(module.clone()).unwrap();
    let other_marks = |round: usize| {
        ask.send(Ask::Mark(mark(&marks, "other", round))).unwrap();
        let drawn = answers.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            panic!("round {round}: the other thread's call did not return within {DEADLINE:?}")
        });
        assert_ne!(drawn, 0, "rand's thread RNG answered");
    };

    let mut closed: Vec<RetiredVersion> = Vec::new();
    let mut released: Vec<RetiredVersion> = Vec::new();
    for round in 0..RELOADS {
        assert_ne!(
            hot_fn!(module.mark_thread_local(mark(&marks, "main", round).to_string_lossy().into()))
                .unwrap(),
            0
        );
        other_marks(round);
        if round > 0 {
            // Its call ran the destructors it registered in the version closed last round,
            // on its own thread.
            assert_eq!(
                ran_on(&mark(&marks, "other", round - 1)).as_deref(),
                Some(other_thread.as_str()),
                "round {round}: the other thread's destructor of the closed version"
            );
        }
        sandbox.install(if round % 2 == 0 { "v2" } else { "v1" });
        let report = reloader.reload_module("counter").unwrap();
        // This thread's destructor ran when its version was closed, here.
        assert_eq!(
            ran_on(&mark(&marks, "main", round)).as_deref(),
            Some(main_thread.as_str()),
            "round {round}: this thread's destructor ran when the version closed"
        );
        assert_eq!(ran_on(&mark(&marks, "other", round)), None);
        // The other thread's destructors are pending: the version is held, and says why.
        let [version] = report.closed.as_slice() else {
            panic!("round {round}: one version closed: {:?}", report.closed)
        };
        let held = version.held.as_deref().unwrap_or("not held");
        assert!(
            held.contains("thread-local destructor"),
            "round {round}: {held}"
        );
        assert_eq!(version.is_mapped_now(), Some(true));
        // The version held last round: its destructors have all run, and it is unmapped.
        if round > 0 {
            assert_eq!(
                report.released.len(),
                1,
                "round {round}: the version held last round is released: {:?}",
                report.released
            );
        }
        closed.extend(report.closed);
        released.extend(report.released);
    }

    // The other thread ends: its destructors of the version serving now run as it exits.
    ask.send(Ask::End).unwrap();
    other.join().unwrap();
    assert_eq!(
        ran_on(&mark(&marks, "other", RELOADS)),
        None,
        "no mark was asked for that round"
    );
    assert_eq!(
        ran_on(&mark(&marks, "other", RELOADS - 1)).as_deref(),
        Some(other_thread.as_str()),
        "the other thread's destructor of the serving version ran as it ended"
    );
    // One more reload: the last held version goes, and the one replaced now closes at once.
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert!(
        report.closed.iter().all(|c| c.held.is_none()),
        "{:?}",
        report.closed
    );
    released.extend(report.released);
    assert_eq!(released.len(), RELOADS, "every held version was released");
    for version in released.iter().chain(&report.closed) {
        assert_eq!(
            version.still_mapped,
            Some(false),
            "load #{} was unmapped when it was closed",
            version.info.generation
        );
        assert_eq!(version.is_mapped_now(), Some(false));
    }
    let mapped = mapped_shadow_copies(&module);
    assert_eq!(mapped, 1, "only the serving version is mapped");
}
