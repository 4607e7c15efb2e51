//! Reloading by itself: real files, real inotify. Every wait waits for an event.

use std::fs;
use std::io::Write;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use counter::Counter;
use hotreload::{Apply, Event, HotError, HotReloader, ModuleOptions, WatchOptions, hot_fn};
use hotreload_tests::{Sandbox, variants, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A reload finished; which build it loaded is checked by calling the module afterwards.
fn is_reloaded(event: &Event) -> bool {
    matches!(event, Event::Reloaded { .. })
}

fn reloads(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ReloadStarted { .. }))
        .count()
}

fn failures(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::ReloadFailed { .. }))
        .collect()
}

/// A watched v1 counter with some state, and its event stream.
fn watched(sandbox: &Sandbox) -> (HotReloader, hotreload::Module<Counter>, Receiver<Event>) {
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(5)).unwrap();
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    (reloader, module, events)
}

#[test]
fn a_burst_of_writes_renames_and_links_gives_one_reload() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module, events) = watched(&sandbox);

    // As linkers and cargo do: write beside, rename over, link, rewrite in place.
    let v2 = sandbox.variant_bytes("v2");
    let artifact = sandbox.artifact();
    let beside = sandbox.path().join("libcounter.so.partial");
    fs::write(&beside, &v2).unwrap();
    fs::rename(&beside, &artifact).unwrap();
    fs::hard_link(&artifact, sandbox.path().join("libcounter-1234.so")).unwrap();
    fs::write(&artifact, &v2).unwrap();
    fs::write(&artifact, &v2).unwrap();
    let burst = wait_for(&events, TIMEOUT, "reloaded to v2", is_reloaded);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(hot_fn!(module.snapshot()).unwrap().total, 5, "state kept");

    // A later, different build: everything of the burst was handled before it, in order.
    sandbox.install("v1");
    let after = wait_for(&events, TIMEOUT, "reloaded to v1", is_reloaded);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(reloads(&burst), 1, "one burst, one reload: {burst:#?}");
    assert_eq!(
        reloads(&after),
        1,
        "nothing left over from the burst: {after:#?}"
    );
    assert!(failures(&burst).is_empty() && failures(&after).is_empty());
}

#[test]
fn a_writer_that_pauses_halfway_never_gets_its_half_file_loaded() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module, events) = watched(&sandbox);
    let v2 = sandbox.variant_bytes("v2");
    let (first, rest) = v2.split_at(v2.len() / 2);

    fs::remove_file(sandbox.artifact()).unwrap();
    wait_for(&events, TIMEOUT, "artifact missing", |e| {
        matches!(e, Event::ArtifactMissing { .. })
    });
    let mut writer = fs::File::create(sandbox.artifact()).unwrap();
    writer.write_all(first).unwrap();
    writer.flush().unwrap();
    // The watcher sees the new file, finds it incomplete, and waits.
    let seen = wait_for(&events, TIMEOUT, "artifact incomplete", |e| {
        matches!(e, Event::ArtifactIncomplete { .. })
    });
    assert_eq!(reloads(&seen), 0);
    // The writer's own pause (part of the scenario, not a synchronisation).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        hot_fn!(module.build_tag()).unwrap(),
        1,
        "still v1 after a second"
    );
    writer.write_all(rest).unwrap();
    drop(writer);

    let seen = wait_for(&events, TIMEOUT, "reloaded", is_reloaded);
    assert_eq!(reloads(&seen), 1, "{seen:#?}");
    assert!(
        failures(&seen).is_empty(),
        "the half file was never tried: {seen:#?}"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    let loaded = module.version().unwrap();
    assert_eq!(loaded.artifact_len, v2.len() as u64);
}

#[test]
fn a_deleted_artifact_is_reported_and_its_return_reloads() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module, events) = watched(&sandbox);
    fs::remove_file(sandbox.artifact()).unwrap();
    wait_for(
        &events,
        TIMEOUT,
        "artifact missing",
        |e| matches!(e, Event::ArtifactMissing { module, .. } if module == "counter"),
    );
    assert_eq!(hot_fn!(module.add(1)).unwrap(), 6, "v1 keeps serving");

    sandbox.install("v2");
    wait_for(&events, TIMEOUT, "reloaded", is_reloaded);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(hot_fn!(module.add(1)).unwrap(), 8, "state kept, v2 doubles");
}

#[test]
fn an_artifact_renamed_away_and_back_reloads() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module, events) = watched(&sandbox);
    let away = sandbox.path().join("elsewhere.so");
    fs::rename(sandbox.artifact(), &away).unwrap();
    wait_for(&events, TIMEOUT, "artifact missing", |e| {
        matches!(e, Event::ArtifactMissing { .. })
    });
    fs::write(&away, sandbox.variant_bytes("v2")).unwrap();
    fs::rename(&away, sandbox.artifact()).unwrap();
    wait_for(&events, TIMEOUT, "reloaded", is_reloaded);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
}

#[test]
fn an_artifact_absent_at_start_loads_when_it_is_built() {
    let sandbox = Sandbox::new(variants!());
    let reloader = HotReloader::new();
    let events = reloader.subscribe();
    let module = reloader
        .register_with::<Counter>(
            ModuleOptions::new()
                .artifact(sandbox.nested_artifact())
                .wait_for_artifact(),
        )
        .unwrap();
    assert!(module.version().is_none());
    let err = hot_fn!(module.calls()).unwrap_err();
    assert!(matches!(err, HotError::NotLoaded { .. }), "{err:?}");

    reloader.start_watching().unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    // The build creates the directories, then the library.
    let dir = sandbox.nested_artifact().parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(".tmp"), sandbox.variant_bytes("v1")).unwrap();
    fs::rename(dir.join(".tmp"), sandbox.nested_artifact()).unwrap();
    let seen = wait_for(&events, TIMEOUT, "first load", |e| {
        matches!(e, Event::Reloaded { from: None, .. })
    });
    assert!(failures(&seen).is_empty(), "{seen:#?}");
    assert_eq!(hot_fn!(module.add(3)).unwrap(), 3);
}

#[test]
fn a_directory_that_disappears_and_comes_back_is_followed() {
    let sandbox = Sandbox::new(variants!());
    let dir = sandbox.nested_artifact().parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    fs::write(sandbox.nested_artifact(), sandbox.variant_bytes("v1")).unwrap();
    let reloader = HotReloader::new();
    let module = reloader
        .register_with::<Counter>(ModuleOptions::new().artifact(sandbox.nested_artifact()))
        .unwrap();
    hot_fn!(module.add(2)).unwrap();
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });

    fs::remove_dir_all(sandbox.path().join("out")).unwrap();
    wait_for(&events, TIMEOUT, "artifact missing", |e| {
        matches!(e, Event::ArtifactMissing { .. })
    });
    assert_eq!(hot_fn!(module.calls()).unwrap(), 1, "v1 keeps serving");

    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(".tmp"), sandbox.variant_bytes("v2")).unwrap();
    fs::rename(dir.join(".tmp"), sandbox.nested_artifact()).unwrap();
    wait_for(&events, TIMEOUT, "reloaded", is_reloaded);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(hot_fn!(module.snapshot()).unwrap().total, 2, "state kept");
}

#[test]
fn in_poll_mode_the_host_applies_reloads_at_its_safe_point() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let events = reloader.subscribe();
    reloader
        .start_watching_with(WatchOptions::new().apply(Apply::OnPoll))
        .unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    sandbox.install("v2");
    let seen = wait_for(&events, TIMEOUT, "pending", |e| {
        matches!(e, Event::ReloadPending { .. })
    });
    assert_eq!(reloads(&seen), 0, "nothing reloads off the host's thread");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);

    let outcomes = reloader.poll();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].0, "counter");
    assert!(outcomes[0].1.is_ok(), "{:?}", outcomes[0].1);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert!(reloader.poll().is_empty(), "nothing more pending");
}

#[test]
fn hooks_can_veto_and_see_every_outcome() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&outcomes);
    reloader.after_reload(move |name, outcome| {
        seen.lock()
            .unwrap()
            .push((name.to_owned(), outcome.is_ok()));
    });
    reloader.before_reload(|request| {
        if request.current.is_some_and(|v| v.generation >= 2) {
            Err("frozen after the first reload".to_owned())
        } else {
            Ok(())
        }
    });
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    sandbox.install("v1");
    let err = reloader.reload_module("counter").unwrap_err();
    assert_eq!(
        err.to_string(),
        "module `counter`: reload vetoed: frozen after the first reload"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2, "the veto kept v2");
    assert_eq!(
        *outcomes.lock().unwrap(),
        [("counter".to_owned(), true), ("counter".to_owned(), false)]
    );
}

#[test]
fn from_final_write_to_first_answer_of_the_new_version() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module, events) = watched(&sandbox);
    let builds = [sandbox.variant_bytes("v2"), sandbox.variant_bytes("v1")];
    let beside = sandbox.path().join(".incoming");
    let mut latencies = Vec::new();
    for round in 0..20 {
        let (bytes, tag) = (&builds[round % 2], [2, 1][round % 2]);
        fs::write(&beside, bytes).unwrap();
        fs::rename(&beside, sandbox.artifact()).unwrap();
        let written = Instant::now();
        // The first call answered by the new build: no event involved, only calls.
        while hot_fn!(module.build_tag()).unwrap() != tag {
            assert!(
                written.elapsed() < TIMEOUT,
                "round {round}: the new build did not answer within {TIMEOUT:?}"
            );
            std::hint::spin_loop();
        }
        latencies.push(written.elapsed());
        wait_for(&events, TIMEOUT, "reloaded", is_reloaded);
    }
    latencies.sort();
    println!(
        "final write -> first call answered by the new build, {} reloads of a {:.1} MB debug \
         build: median {:.2?}, max {:.2?}",
        latencies.len(),
        builds[0].len() as f64 / 1e6,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // The watcher settles for 2 ms after the last event, then stages a debug build: anything
    // near a second would mean a lost event caught by a later one.
    let median = latencies[latencies.len() / 2];
    assert!(median < Duration::from_millis(500), "median {median:?}");
}

#[test]
fn a_local_module_is_reloaded_only_at_its_poll_even_with_a_background_watcher() {
    let sandbox = Sandbox::new(variants!());
    sandbox.install("v1");
    let reloader = HotReloader::new();
    let module = reloader
        .register_local_with::<Counter>(ModuleOptions::new().artifact(sandbox.artifact()))
        .unwrap();
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    sandbox.install("v2");
    let seen = wait_for(&events, TIMEOUT, "pending", |e| {
        matches!(e, Event::ReloadPending { .. })
    });
    assert_eq!(reloads(&seen), 0);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    let outcomes = reloader.poll();
    assert!(outcomes.iter().all(|(_, o)| o.is_ok()), "{outcomes:?}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
}

#[test]
fn a_build_vetoed_once_is_tried_again_at_its_next_change() {
    for apply in [Apply::Background, Apply::OnPoll] {
        vetoed_then_tried_again(apply);
    }
}

/// In either mode, whoever runs the reload (the watcher, or `poll()` on the host's thread).
fn vetoed_then_tried_again(apply: Apply) {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let veto = std::sync::Arc::clone(&frozen);
    reloader.before_reload(move |_| {
        if veto.load(std::sync::atomic::Ordering::SeqCst) {
            Err("frozen for now".to_owned())
        } else {
            Ok(())
        }
    });
    let events = reloader.subscribe();
    reloader
        .start_watching_with(WatchOptions::new().apply(apply))
        .unwrap();
    wait_for(&events, TIMEOUT, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    // Runs the reload the watcher found, in poll mode; returns its outcome's error, if any.
    let applied = |what: &str| -> Option<HotError> {
        if apply == Apply::OnPoll {
            wait_for(&events, TIMEOUT, what, |e| {
                matches!(e, Event::ReloadPending { .. })
            });
            let outcomes = reloader.poll();
            assert_eq!(outcomes.len(), 1, "{apply:?}: {outcomes:?}");
            return outcomes.into_iter().next().unwrap().1.err();
        }
        let seen = wait_for(&events, TIMEOUT, what, |e| {
            matches!(e, Event::Reloaded { .. } | Event::ReloadFailed { .. })
        });
        match seen.last() {
            Some(Event::ReloadFailed { error, .. }) => Some(error.clone()),
            _ => None,
        }
    };

    sandbox.install("v2");
    let refused = applied("the veto");
    assert!(
        matches!(refused, Some(HotError::Vetoed { .. })),
        "{apply:?}: {refused:?}"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);

    // The same bytes put in place again, once the veto is lifted: a veto is not the build's
    // fault, so the watcher offers it again.
    frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    sandbox.install("v2");
    let outcome = applied("the reload of the same build");
    assert!(outcome.is_none(), "{apply:?}: {outcome:?}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2, "{apply:?}");
}

#[test]
fn a_subscriber_that_never_reads_costs_a_bounded_buffer() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, _module) = sandbox.register("v1");
    reloader.before_reload(|_| Err("no".to_owned()));
    let idle = reloader.subscribe();
    let gone = reloader.subscribe();
    drop(gone);
    sandbox.install("v2");
    // Each refused reload emits one `ReloadFailed` event.
    const REFUSALS: usize = 5000;
    for _ in 0..REFUSALS {
        reloader.reload_module("counter").unwrap_err();
    }
    let kept = idle.try_iter().count();
    assert_eq!(kept, 4096, "the channel holds 4,096 events");
    assert_eq!(
        reloader.dropped_events(),
        (REFUSALS - kept) as u64,
        "the rest are counted as dropped; the dropped receiver counts for nothing"
    );
}
