//! The arena: three hot modules that call each other, reloaded alone and as sets while the
//! host keeps running frames.
//!
//! `director` (the host calls it) asks `brain` to decide and `physics` to step; `brain` calls
//! `physics`; all three share the plain crate `rules`. The run builds the modules and three
//! edited sets of them (each set built together, a module against its callees' edited
//! sources), prints the graph of the modules, then, between frames:
//! 1. reloads `brain` alone (a stronger kick): only `brain` changes;
//! 2. offers `physics` alone with `push` taking a new parameter: refused, `brain` calls the
//!    old one; then the same `physics` with `brain` and `director` built against it, as one
//!    set: taken;
//! 3. reloads the three builds made after the shared `rules` crate changed, together;
//! 4. rolls the three back together.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arena_brain::Brain;
use arena_director::Director;
use arena_physics::Physics;
use hotreload::harness::{BuiltSets, SetBuilder};
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};

const LIB: &str = "src/lib.rs";
const MODULES: [&str; 3] = ["physics", "brain", "director"];

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../..")
        .canonicalize()?;
    let work = root.join("target/hotreload-arena");
    println!("== Building the arena's modules and three edited sets of them");
    let started = Instant::now();
    let builds = build_sets(&root, &work)?;
    println!("   built in {:.1?}", started.elapsed());

    // Where the host loads each module from, as `target/debug/lib<crate>.so` would be.
    let live = work.join("live");
    std::fs::create_dir_all(&live)?;
    let artifact = |module: &str| live.join(hotreload::library_file_name(&crate_of(module)));
    let install = |variant: &str, modules: &[&str]| -> std::io::Result<()> {
        for module in modules {
            let built = builds.artifact(variant, &crate_of(module));
            hotreload::harness::install(built, &artifact(module))?;
        }
        Ok(())
    };
    install("original", &MODULES)?;

    let reloader = HotReloader::new();
    let options = |module: &str| ModuleOptions::new().artifact(artifact(module));
    // Only the modules call `physics` and `brain`: registered for their imports, with no
    // handle for the host (their builds are checked against what their callers were built
    // with).
    reloader.register_for_imports::<Physics>(options("physics"))?;
    reloader.register_for_imports::<Brain>(options("brain"))?;
    let director: Module<Director> = reloader.register_with(options("director"))?;
    println!("\n== The modules and what they depend on (Graphviz DOT: `dot -Tsvg` draws it)");
    for line in reloader.graph().to_dot().lines() {
        println!("   {line}");
    }
    hot_fn!(director.setup(3))??;
    frames(&reloader, &director, 2)?;

    println!("\n== `brain` alone: a stronger kick, a change to one method's body");
    install("strong_kick", &["brain"])?;
    let report = reloader.reload_module("brain")?;
    println!("   brain: {report}");
    println!("   {}", report.changes());
    frames(&reloader, &director, 2)?;

    println!("\n== `physics` alone, whose `push` takes a new parameter");
    install("kick_limit", &["physics"])?;
    match reloader.reload_module("physics") {
        Ok(_) => return Err("a physics build that breaks its callers was taken".into()),
        Err(err) => println!("   refused: {err}"),
    }
    frames(&reloader, &director, 1)?;
    println!("   the same `physics`, with `brain` and `director` built against it, as one set:");
    install("kick_limit", &["brain", "director"])?;
    for report in reloader.reload_modules(&MODULES)? {
        println!("   {}: {report}", report.to.module);
        println!("      {}", report.changes());
    }
    frames(&reloader, &director, 2)?;

    println!("\n== The shared `rules` crate edited (moon gravity): three new builds, one set");
    install("moon", &MODULES)?;
    let reports = reloader.reload_modules(&MODULES)?;
    let pauses: Vec<String> = reports
        .iter()
        .map(|r| format!("{} load #{}", r.to.module, r.to.generation))
        .collect();
    println!(
        "   reloaded together: {} (callers paused {:.2?})",
        pauses.join(", "),
        reports[0].timings.pause()
    );
    frames(&reloader, &director, 3)?;

    println!("\n== And back, together");
    for report in reloader.rollback_modules(&MODULES)? {
        println!(
            "   {}: load #{} -> load #{} ({:?} state)",
            report.to.module, report.from.generation, report.to.generation, report.state
        );
    }
    frames(&reloader, &director, 1)?;

    println!(
        "\n== Calls of each serving version (the host calls `director`, which calls the others)"
    );
    for module in reloader.status()?.modules {
        let Some(metrics) = module.serving.and_then(|serving| serving.metrics) else {
            continue;
        };
        let called: Vec<String> = metrics
            .methods
            .iter()
            .filter(|method| method.calls > 0)
            .map(|method| format!("{} {}", method.method, method.calls))
            .collect();
        println!(
            "   {} load #{}: {}",
            module.name,
            metrics.generation,
            called.join(", ")
        );
    }

    let (frame, _, _) = hot_fn!(director.frame(0.1))??;
    println!("\n== Done: {frame} frames, their state carried through every reload; one process");
    Ok(())
}

/// The crate (library name) a module is built from.
fn crate_of(module: &str) -> String {
    format!("arena_{module}")
}

/// Runs `count` frames and prints each, with the load each module serves.
fn frames(reloader: &HotReloader, director: &Module<Director>, count: u32) -> Result<(), Error> {
    for _ in 0..count {
        let (frame, kicked, heights) = hot_fn!(director.frame(0.1))??;
        let loads: Vec<String> = MODULES
            .iter()
            .map(|m| {
                let generation = reloader
                    .current_version(m)
                    .ok()
                    .flatten()
                    .map_or(0, |v| v.generation);
                format!("{m} #{generation}")
            })
            .collect();
        let heights: Vec<String> = heights.iter().map(|h| format!("{h:.2}")).collect();
        println!(
            "   frame {frame:>2}: kicked body {kicked}, heights [{}]   ({})",
            heights.join(", "),
            loads.join(", ")
        );
    }
    Ok(())
}

/// The modules as they are, and three edited sets, each built together.
fn build_sets(root: &Path, work: &Path) -> Result<BuiltSets, hotreload::harness::HarnessError> {
    let crates: Vec<PathBuf> = ["rules", "physics", "brain", "director"]
        .iter()
        .map(|c| root.join("examples/arena").join(c))
        .collect();
    SetBuilder::new(crates, work.join("sets"))
        .lockfile(root.join("Cargo.lock"))
        .target_dir(work.join("target"))
        .variant("original", |v| v)
        .variant("strong_kick", |v| {
            v.edit("brain", LIB, "push(lowest, 4.0)", "push(lowest, 9.0)")
        })
        .variant("kick_limit", |v| {
            v.edit(
                "physics",
                LIB,
                "pub fn push(&mut self, body: u32, speed: f32) {",
                "pub fn push(&mut self, body: u32, speed: f32, limit: f32) {\n        \
                 let speed = speed.min(limit);",
            )
            .edit("brain", LIB, "push(lowest, 4.0)", "push(lowest, 4.0, 3.0)")
        })
        .variant("moon", |v| {
            v.edit(
                "rules",
                LIB,
                "pub const GRAVITY: f32 = 9.81;",
                "pub const GRAVITY: f32 = 1.62;",
            )
        })
        .build()
}
