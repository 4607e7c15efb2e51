//! A small host for the `debugger` and `backtrace` tests: the counter module registered at an
//! artifact path, builds installed there one after another, a call into each.
//!
//! `debug_host calls <artifact> <build dir>...`: installs every file of each build directory
//! (the library and any debug files beside it) next to `<artifact>`, loads or reloads it,
//! and calls `add` once per build, printing `call <n>: <total>`. Replaced versions are closed
//! at once (no history). With `DEBUG_HOST_SPIN=<n>`, it also calls `sequence(1_000_000)` `n`
//! times per build (time for a profiler to sample).
//!
//! `debug_host panic <artifact> <build dir>`: installs the build, calls `explode`, and prints
//! the error's one line after `error: ` and its backtrace after a line `backtrace:`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use abi_stable::std_types::RString;
use counter::Counter;
use hotreload::{HotReloader, ModuleOptions, hot_fn};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, artifact, builds @ ..] if mode == "calls" && !builds.is_empty() => {
            calls(Path::new(artifact), builds)
        }
        [mode, artifact, build] if mode == "panic" => panic(Path::new(artifact), build),
        _ => {
            eprintln!(
                "usage: debug_host calls <artifact> <build dir>... | panic <artifact> <build dir>"
            );
            ExitCode::FAILURE
        }
    }
}

/// Puts every file of `build` beside `artifact`, each written then renamed into place.
fn install(build: &str, artifact: &Path) {
    let dir = artifact.parent().expect("the artifact's directory");
    for entry in std::fs::read_dir(build).expect("the build's directory") {
        let from: PathBuf = entry.expect("a file of the build").path();
        let to = dir.join(from.file_name().expect("a file name"));
        hotreload::harness::install(&from, &to)
            .unwrap_or_else(|err| panic!("install {}: {err}", from.display()));
    }
}

fn calls(artifact: &Path, builds: &[String]) -> ExitCode {
    install(&builds[0], artifact);
    let spin: u32 = std::env::var("DEBUG_HOST_SPIN")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let reloader = HotReloader::new();
    // Replaced versions close at once: the debugger sees them unloaded.
    let module = reloader
        .register_with::<Counter>(ModuleOptions::new().artifact(artifact).history(0))
        .expect("register the counter");
    for (n, build) in builds.iter().enumerate() {
        if n > 0 {
            install(build, artifact);
            reloader
                .reload_module("counter")
                .expect("reload the counter");
        }
        let total = hot_fn!(module.add(1)).expect("call add");
        println!("call {}: {total}", n + 1);
        // Some time spent in each build, for a profiler's samples.
        for _ in 0..spin {
            let _ = hot_fn!(module.sequence(1_000_000)).expect("call sequence");
        }
    }
    ExitCode::SUCCESS
}

fn panic(artifact: &Path, build: &str) -> ExitCode {
    install(build, artifact);
    let reloader = HotReloader::new();
    let module = reloader
        .register_with::<Counter>(ModuleOptions::new().artifact(artifact))
        .expect("register the counter");
    match hot_fn!(module.explode(RString::from("exploding on purpose"))) {
        Ok(value) => {
            eprintln!("explode returned {value}");
            ExitCode::FAILURE
        }
        Err(err) => {
            println!("error: {err}");
            println!("backtrace:");
            println!("{}", err.backtrace().unwrap_or("(none)"));
            ExitCode::SUCCESS
        }
    }
}
