//! The reloader building its modules: edit a source, see the new behaviour with the state
//! kept; a syntax error keeps the old version; a shared dependency rebuilds its dependents
//! and no other module; an edit of a module's own sources replays the rustc command cargo
//! ran for it, and anything else goes through cargo. Real cargo builds of a copy of the
//! fixture crates.

use std::collections::BTreeSet;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use abi_stable::std_types::RString;
use counter::Counter;
use greeter::Greeter;
use hotreload::{Event, HotReloader, Module, ModuleOptions, hot_fn};
use hotreload_tests::{FixtureWorkspace, wait_for};
use shouter::Shouter;

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

struct Setup {
    workspace: FixtureWorkspace,
    reloader: HotReloader,
    events: Receiver<Event>,
    counter: Module<Counter>,
    greeter: Module<Greeter>,
    shouter: Module<Shouter>,
}

fn register<T: hotreload::HotModule>(
    reloader: &HotReloader,
    workspace: &FixtureWorkspace,
    krate: &str,
) -> Module<T> {
    reloader
        .register_with::<T>(
            ModuleOptions::new()
                .artifact(workspace.artifact(krate))
                .build_with_cargo_manifest(workspace.manifest(krate)),
        )
        .unwrap_or_else(|err| panic!("registering {krate}: {err}"))
}

fn setup() -> Setup {
    let workspace = FixtureWorkspace::create(env!("CARGO_TARGET_TMPDIR"));
    let reloader = HotReloader::new();
    let counter = register::<Counter>(&reloader, &workspace, "counter");
    let greeter = register::<Greeter>(&reloader, &workspace, "greeter");
    let shouter = register::<Shouter>(&reloader, &workspace, "shouter");
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    // Watching begins with a build of each module (a no-op here: they are fresh).
    let mut built = 0;
    let seen = wait_for(&events, BUILD_TIMEOUT, "three initial builds", |e| {
        built += usize::from(matches!(e, Event::BuildFinished { .. }));
        built == 3
    });
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::ReloadStarted { .. })),
        "fresh artifacts are not reloaded: {seen:#?}"
    );
    assert_none_missing(&seen);
    Setup {
        workspace,
        reloader,
        events,
        counter,
        greeter,
        shouter,
    }
}

fn builds_started(events: &[Event], module: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::BuildStarted { module: m, .. } if m == module))
        .count()
}

/// Cargo removes a library and links the new one during an ordinary build: no
/// `ArtifactMissing` may come of it.
fn assert_none_missing(events: &[Event]) {
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ArtifactMissing { .. })),
        "an ordinary rebuild reported the artifact missing: {events:#?}"
    );
}

fn reloaded(module: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Reloaded { module: m, .. } if m == module)
}

/// How each finished build of `module` among `events` was made: `true` for a replay of
/// rustc, `false` for cargo.
fn replays(events: &[Event], module: &str) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::BuildFinished {
                module: m,
                replayed,
                ..
            } if m == module => Some(*replayed),
            _ => None,
        })
        .collect()
}

#[test]
fn edits_rebuild_and_reload_exactly_the_modules_they_touch() {
    let s = setup();
    hot_fn!(s.counter.add(40)).unwrap();
    hot_fn!(s.greeter.greet(RString::from("Ada"))).unwrap();

    // 1. The module's own source: rebuilt, reloaded, state kept; nobody else built.
    s.workspace.edit("counter", "1 // TAG", "2 // TAG");
    // The artifact may be reloaded before cargo exits (cargo links it, then finishes up).
    let (mut built, mut reloads) = (false, false);
    let seen = wait_for(
        &s.events,
        BUILD_TIMEOUT,
        "counter built and reloaded",
        |e| {
            built |= matches!(e, Event::BuildFinished { module, .. } if module == "counter");
            reloads |= reloaded("counter")(e);
            built && reloads
        },
    );
    assert_eq!(builds_started(&seen, "counter"), 1, "{seen:#?}");
    assert_none_missing(&seen);
    // Watching began with a build that found the module fresh: cargo had no command to show
    // for it, so this first edit goes through cargo (which shows it).
    assert_eq!(replays(&seen, "counter"), [false], "{seen:#?}");
    assert_eq!(hot_fn!(s.counter.build_tag()).unwrap(), 2);
    assert_eq!(
        hot_fn!(s.counter.snapshot()).unwrap().total,
        40,
        "state kept"
    );
    assert_eq!(
        builds_started(&seen, "greeter") + builds_started(&seen, "shouter"),
        0
    );

    // 2. The shared dependency: both dependents rebuilt and reloaded, the counter not.
    s.workspace.edit("shared", "\"hello\"", "\"bonjour\"");
    let mut pending = 2;
    let seen = wait_for(
        &s.events,
        BUILD_TIMEOUT,
        "greeter and shouter reloaded",
        |e| {
            pending -= usize::from(reloaded("greeter")(e) || reloaded("shouter")(e));
            pending == 0
        },
    );
    assert_eq!(
        builds_started(&seen, "counter"),
        0,
        "counter does not use shared: {seen:#?}"
    );
    assert_eq!(builds_started(&seen, "greeter"), 1);
    assert_none_missing(&seen);
    assert_eq!(builds_started(&seen, "shouter"), 1);
    // A dependency changed: cargo decides, even for a module whose command is known.
    assert!(
        !replays(&seen, "greeter").contains(&true) && !replays(&seen, "shouter").contains(&true),
        "{seen:#?}"
    );
    assert_eq!(
        hot_fn!(s.greeter.greet(RString::from("Ada")))
            .unwrap()
            .as_str(),
        "bonjour Ada"
    );
    assert_eq!(
        hot_fn!(s.greeter.greeted()).unwrap(),
        2,
        "greeter state kept"
    );
    assert_eq!(
        hot_fn!(s.shouter.shout(RString::from("Ada")))
            .unwrap()
            .as_str(),
        "BONJOUR, ADA!"
    );
    assert_eq!(hot_fn!(s.counter.build_tag()).unwrap(), 2);

    // 2b. The shared dependency broken: both dependents fail to build. An edit of the
    //     greeter's own source then goes through cargo again (and fails again): a replay would
    //     link the shared crate's last good library and serve a build cargo refuses.
    s.workspace.edit("shared", "\"bonjour\";", "\"bonjour\"");
    let mut failed = BTreeSet::new();
    wait_for(&s.events, BUILD_TIMEOUT, "both dependents failed", |e| {
        if let Event::BuildFailed { module, .. } = e {
            failed.insert(module.clone());
        }
        failed.len() == 2
    });
    s.workspace
        .edit("greeter", "\"{} {name}\"", "\"{} {name}!\"");
    let seen = wait_for(&s.events, BUILD_TIMEOUT, "the greeter's build", |e| {
        matches!(e, Event::BuildFinished { module, .. } | Event::BuildFailed { module, .. }
            if module == "greeter")
    });
    assert!(
        matches!(seen.last(), Some(Event::BuildFailed { .. })),
        "cargo builds after a failed cargo build: {seen:#?}"
    );
    s.workspace.edit("shared", "\"bonjour\"", "\"bonjour\";");
    // The shouter builds the bytes it serves (nothing of it changed in the end): built, not
    // reloaded.
    let (mut greeter, mut shouter) = (false, false);
    wait_for(&s.events, BUILD_TIMEOUT, "greeter and shouter fixed", |e| {
        greeter |= reloaded("greeter")(e);
        shouter |= matches!(e, Event::BuildFinished { module, .. } if module == "shouter");
        greeter && shouter
    });
    assert_eq!(
        hot_fn!(s.greeter.greet(RString::from("Ada")))
            .unwrap()
            .as_str(),
        "bonjour Ada!"
    );

    // 3. A syntax error (a replay of rustc: only the module's source changed): the build
    //    fails with the compiler's message, and no cargo build follows it; the old code
    //    serves.
    s.workspace
        .edit("counter", "pub fn calls(&self)", "pub fn calls(&self,");
    let seen = wait_for(&s.events, BUILD_TIMEOUT, "build failed", |e| {
        matches!(e, Event::BuildFailed { .. })
    });
    assert_eq!(builds_started(&seen, "counter"), 1, "{seen:#?}");
    let Some(Event::BuildFailed {
        module, message, ..
    }) = seen.last()
    else {
        unreachable!()
    };
    assert_eq!(module, "counter");
    assert!(
        message.contains("error"),
        "the compiler's message: {message}"
    );
    assert!(
        message.contains("src/lib.rs"),
        "it names the file: {message}"
    );
    assert_eq!(
        hot_fn!(s.counter.build_tag()).unwrap(),
        2,
        "the old version serves"
    );
    assert_eq!(hot_fn!(s.counter.add(2)).unwrap(), 42);

    // 4. Fixed, then edited again while that build runs: builds never overlap, and one more
    //    follows the edit made during the build.
    s.workspace
        .edit("counter", "pub fn calls(&self,", "pub fn calls(&self)");
    wait_for(
        &s.events,
        BUILD_TIMEOUT,
        "build started",
        |e| matches!(e, Event::BuildStarted { module, .. } if module == "counter"),
    );
    s.workspace.edit("counter", "2 // TAG", "4 // TAG");
    let mut running = 1i32;
    let mut max_running = 1;
    let seen = wait_for(&s.events, BUILD_TIMEOUT, "counter at tag 4", |e| {
        match e {
            Event::BuildStarted { module, .. } if module == "counter" => running += 1,
            Event::BuildFinished { module, .. } | Event::BuildFailed { module, .. }
                if module == "counter" =>
            {
                running -= 1
            }
            _ => {}
        }
        max_running = max_running.max(running);
        reloaded("counter")(e) && hot_fn!(s.counter.build_tag()).unwrap() == 4
    });
    assert_eq!(max_running, 1, "one build at a time: {seen:#?}");
    assert_none_missing(&seen);
    let built = replays(&seen, "counter");
    assert!(
        !built.is_empty() && built.iter().all(|r| *r),
        "edits of the module's own source replay rustc: {seen:#?}"
    );
    assert_eq!(
        hot_fn!(s.counter.snapshot()).unwrap().total,
        42,
        "state kept throughout"
    );

    // 5. The replayed library is the one cargo builds: cargo, run by hand now, compiles the
    //    module once more (its record predates the replayed sources), the runtime takes that
    //    build too, and it behaves the same; a second `cargo build` finds nothing to do.
    let stderr = s
        .workspace
        .cargo_build(&["-p", "hotreload-fixture-counter"]);
    assert!(
        stderr.contains("Compiling hotreload-fixture-counter"),
        "{stderr}"
    );
    s.reloader.reload_module("counter").unwrap();
    assert_eq!(hot_fn!(s.counter.build_tag()).unwrap(), 4);
    assert_eq!(hot_fn!(s.counter.snapshot()).unwrap().total, 42);
    let stderr = s
        .workspace
        .cargo_build(&["-p", "hotreload-fixture-counter"]);
    assert!(!stderr.contains("Compiling"), "{stderr}");

    // 6. The manifest changed: cargo builds, even though only the module's package changed.
    let manifest = s.workspace.manifest("counter");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&manifest, text).unwrap();
    // (A replay may still come first: the build that step 4's edit queued can end after
    // the reload the step waited for.)
    wait_for(
        &s.events,
        BUILD_TIMEOUT,
        "counter built by cargo",
        |e| matches!(e, Event::BuildFinished { module, replayed: false, .. } if module == "counter"),
    );
    s.workspace.edit("counter", "4 // TAG", "5 // TAG");
    wait_for(&s.events, BUILD_TIMEOUT, "counter at tag 5", |e| {
        reloaded("counter")(e) && hot_fn!(s.counter.build_tag()).unwrap() == 5
    });
    drop(s.reloader);
}
