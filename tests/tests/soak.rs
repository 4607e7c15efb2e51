//! Long runs: thousands of reloads under load, and what stays mapped. `#[ignore]`d in the
//! default run (they take minutes); `.ci/run` runs them with `--ignored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hotreload::{ModuleOptions, hot_fn};
use hotreload_tests::{
    Sandbox, mapped_shadow_copies, one_at_a_time, open_fds, resident_kb, variants,
};

const HISTORY: usize = 3;

#[test]
#[ignore = "minutes: run with --ignored (CI does)"]
fn two_thousand_reloads_under_four_calling_threads() {
    let _serial = one_at_a_time();
    const RELOADS: usize = 2000;
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register_with("v1", ModuleOptions::new().history(HISTORY));
    let fds = open_fds();
    let rss = resident_kb();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let module = module.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut calls, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Acquire) {
                    match hot_fn!(module.bump()) {
                        Ok(_) => calls += 1,
                        Err(_) => failed += 1,
                    }
                }
                (calls, failed)
            })
        })
        .collect();
    let builds = [sandbox.variant_bytes("v2"), sandbox.variant_bytes("v1")];
    for i in 0..RELOADS {
        sandbox.install_bytes(&builds[i % 2]);
        reloader
            .reload_module("counter")
            .unwrap_or_else(|e| panic!("reload {i}: {e}"));
    }
    stop.store(true, Ordering::Release);
    let (mut calls, mut failed) = (0, 0);
    for caller in callers {
        let (c, f) = caller.join().unwrap();
        calls += c;
        failed += f;
    }
    let counted = hot_fn!(module.calls()).unwrap();
    // The callers started after the first load, so that version may be held while they run
    // (a thread on a CPU cannot be read); once they have stopped, a reload releases it.
    sandbox.install_bytes(&builds[RELOADS % 2]);
    let last = reloader.reload_module("counter").unwrap();
    let held = reloader.held_versions("counter").unwrap();
    assert!(
        held.is_empty(),
        "still held after the callers stopped: {held:?}"
    );
    let mapped = mapped_shadow_copies(&module);
    let growth = resident_kb() as i64 - rss as i64;
    println!(
        "soak: {RELOADS} reloads, {calls} calls, {failed} failed, counter {counted}, \
         {mapped} shadow copies mapped (history {HISTORY}), {} held version(s) released at \
         the end, resident {growth:+} kB, descriptors {} -> {}",
        last.released.len(),
        fds,
        open_fds()
    );
    assert_eq!(failed, 0);
    assert_eq!(counted, calls, "every call counted once");
    assert_eq!(open_fds(), fds, "no descriptor leaked");
    assert!(mapped <= HISTORY + 1, "{mapped} mapped");
}

#[test]
#[ignore = "minutes: run with --ignored (CI does)"]
fn reloads_of_a_module_with_thread_local_destructors_unmap_each_closed_version() {
    let _serial = one_at_a_time();
    const RELOADS: usize = 200;
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register_with("v1", ModuleOptions::new().history(HISTORY));
    hot_fn!(module.touch_thread_local()).unwrap();
    let builds = [sandbox.variant_bytes("v2"), sandbox.variant_bytes("v1")];
    let mut reported = 0;
    let mut rss = resident_kb();
    for i in 0..RELOADS {
        // The first reloads warm the allocator up: memory is counted from the tenth.
        if i == 10 {
            rss = resident_kb();
        }
        sandbox.install_bytes(&builds[i % 2]);
        let report = reloader.reload_module("counter").unwrap();
        reported += report
            .closed
            .iter()
            .filter(|c| c.still_mapped == Some(true))
            .count();
        hot_fn!(module.touch_thread_local()).unwrap();
    }
    let mapped = mapped_shadow_copies(&module);
    let growth = resident_kb() as i64 - rss as i64;
    println!(
        "thread-local destructors: {RELOADS} reloads, {mapped} shadow copies mapped, \
         {reported} closed versions reported still mapped, resident {growth:+} kB over the \
         last {} ({:.1} kB per reload)",
        RELOADS - 10,
        growth as f64 / (RELOADS - 10) as f64
    );
    // The runtime ran this thread's destructors of each version it closed: every one was
    // unmapped, and memory does not grow with the reloads.
    assert_eq!(reported, 0);
    assert!(mapped <= HISTORY + 1, "{mapped} mapped");
    assert!(
        growth < ((RELOADS - 10) * 100) as i64,
        "resident memory grew {growth} kB over {} reloads",
        RELOADS - 10
    );
}
