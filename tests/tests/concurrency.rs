//! Calls from several threads while reloads happen: every call runs wholly in one version,
//! and none fails or is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use hotreload::hot_fn;
use hotreload_tests::{Sandbox, variants};

const THREADS: usize = 4;
const RELOADS: usize = 50;

#[test]
fn calls_from_four_threads_survive_fifty_reloads() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(THREADS + 1));

    let callers: Vec<_> = (0..THREADS)
        .map(|_| {
            let module = module.clone();
            let stop = Arc::clone(&stop);
            let started = Arc::clone(&started);
            thread::spawn(move || {
                let (mut calls, mut failures, mut tags_seen) = (0u64, 0u64, [0u64; 3]);
                let mut first = true;
                loop {
                    match hot_fn!(module.bump()) {
                        Ok(_) => calls += 1,
                        Err(_) => failures += 1,
                    }
                    if first {
                        first = false;
                        started.wait();
                    }
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    // A shared call between the mutating ones: readers run during reloads too.
                    match hot_fn!(module.build_tag()) {
                        Ok(tag) => tags_seen[tag as usize] += 1,
                        Err(_) => failures += 1,
                    }
                }
                (calls, failures, tags_seen)
            })
        })
        .collect();

    started.wait();
    let mut pauses = Vec::with_capacity(RELOADS);
    for i in 0..RELOADS {
        sandbox.install(if i % 2 == 0 { "v2" } else { "v1" });
        let report = reloader
            .reload_module("counter")
            .unwrap_or_else(|err| panic!("reload {i} failed: {err}"));
        pauses.push(report.timings.pause());
    }
    stop.store(true, Ordering::Release);

    let (mut calls, mut failures, mut tags) = (0u64, 0u64, [0u64; 3]);
    for caller in callers {
        let (c, f, t) = caller.join().expect("caller thread");
        calls += c;
        failures += f;
        for (sum, seen) in tags.iter_mut().zip(t) {
            *sum += seen;
        }
    }
    assert_eq!(failures, 0, "no call failed");
    assert_eq!(
        hot_fn!(module.calls()).unwrap(),
        calls,
        "every call was counted exactly once, across {RELOADS} reloads"
    );
    assert!(
        tags[1] > 0 && tags[2] > 0,
        "callers ran in both builds: {tags:?}"
    );
    assert_eq!(module.version().unwrap().generation, 1 + RELOADS as u64);
    pauses.sort();
    println!(
        "{calls} calls, {RELOADS} reloads; callers paused per reload: median {:?}, max {:?}",
        pauses[RELOADS / 2],
        pauses[RELOADS - 1]
    );
}
