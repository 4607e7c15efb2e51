//! The hotreload demo: a game loop that keeps running while its logic is swapped.
//!
//! It builds the `game-logic` module and four edited copies of it, as a developer editing
//! the source would, then runs the game and, between frames:
//! 1. swaps in a build with a new scoring rule: the score and every entity carry over;
//! 2. offers a build whose `tick` takes an `f64`: refused, with the reason in one line;
//! 3. offers a build that panics while restoring the state: refused, nothing lost;
//! 4. calls a method that panics: an error, and the next call works;
//! 5. swaps in a build whose state gains a field (schema v2), computed from the old state by
//!    its `#[migrate(from = 1)]` step, and which adds a method the host does not know yet.

use std::path::Path;
use std::time::{Duration, Instant};

use game_logic::GameLogic;
use hotreload::harness::{BuiltVariants, VariantBuilder};
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};

const LIB: &str = "src/lib.rs";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--watch") {
        let seconds = args
            .iter()
            .position(|a| a == "--seconds")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.parse::<u64>())
            .transpose()?;
        return watch(seconds);
    }
    scripted()
}

/// `--watch`: the game runs; editing `examples/game-logic/src/lib.rs` rebuilds and reloads
/// the module while it does. `--seconds N` stops after N seconds.
fn watch(seconds: Option<u64>) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let reloader = HotReloader::new();
    reloader.on_event(move |event| println!("   [{:>6.2?}] {event}", started.elapsed()));
    let game: Module<GameLogic> =
        reloader.register_with(ModuleOptions::new().wait_for_artifact().build_with_cargo())?;
    reloader.start_watching()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../game-logic/src/lib.rs")
        .canonicalize()?;
    println!("== Watching. Edit and save {}", source.display());
    println!(
        "   (the scoring rule in `tick`, say): the module rebuilds and reloads while the game runs."
    );
    let mut spawned = false;
    loop {
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            return Ok(());
        }
        if game.version().is_some() {
            if !spawned {
                for speed in [1.0, 2.5, 4.0] {
                    hot_fn!(game.spawn(speed))?;
                }
                spawned = true;
            }
            let score = hot_fn!(game.tick(0.5))?;
            let summary = hot_fn!(game.summary())?;
            println!(
                "   tick {:>3}: score {:>6} ({}) [load #{}]",
                summary.tick,
                score,
                hot_fn!(game.rules())?,
                game.version().map_or(0, |v| v.generation)
            );
        }
        std::thread::sleep(Duration::from_secs(1)); // the game's frame rate
    }
}

/// The default: a scripted run that needs no editing.
fn scripted() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()?;
    let work = root.join("target/hotreload-demo");
    println!("== Building game-logic and four edited copies (the first run compiles dependencies)");
    let started = Instant::now();
    let builds = build_variants(&root, &work)?;
    println!("   built in {:.1?}", started.elapsed());

    // The path the host watches, as `target/debug/libgame_logic.so` would be.
    let artifact = work
        .join("live")
        .join(hotreload::library_file_name("game_logic"));
    install(&builds, "original", &artifact)?;

    let reloader = HotReloader::new();
    let game: Module<GameLogic> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
    println!(
        "\n== Loaded {} (load #{})",
        game.name(),
        game.version().map_or(0, |v| v.generation)
    );
    println!("   rules: {}", hot_fn!(game.rules())?);
    for speed in [1.0, 2.5, 4.0] {
        hot_fn!(game.spawn(speed))?;
    }
    frames(&game, 3)?;

    println!("\n== A build with a new scoring rule replaces the running one");
    install(&builds, "ten_points", &artifact)?;
    let report = reloader.reload_module("game_logic")?;
    println!("   reloaded {report}");
    println!(
        "   the previous build stays loaded for rollback: {:?}",
        reloader
            .history("game_logic")?
            .iter()
            .map(|v| format!("load #{}", v.generation))
            .collect::<Vec<_>>()
    );
    println!("   rules: {}", hot_fn!(game.rules())?);
    println!("   state carried over: {:?}", hot_fn!(game.summary())?);
    frames(&game, 3)?;

    let bad = Offer {
        reloader: &reloader,
        game: &game,
        builds: &builds,
        artifact: &artifact,
    };
    bad.refused(
        "A build whose `tick` takes an f64 instead of an f32",
        "f64_tick",
    )?;
    bad.refused(
        "A build that panics while restoring the state",
        "restore_panics",
    )?;

    println!("\n== A method that panics (entity 99 does not exist)");
    match hot_fn!(game.position(99)) {
        Ok(x) => return Err(format!("expected a panic, got {x}").into()),
        Err(err) => println!("   error returned to the host: {err}"),
    }
    println!(
        "   the next call works: entity 1 is at x = {:.2}",
        hot_fn!(game.position(1))?
    );
    frames(&game, 1)?;

    println!(
        "\n== A build whose state gains a field, `leader` (schema v2), computed from the old state"
    );
    let before = hot_fn!(game.summary())?;
    install(&builds, "leader", &artifact)?;
    let report = reloader.reload_module("game_logic")?;
    println!("   reloaded {report}");
    println!("   state migrated: {}", report.migrations.join(", "));
    println!(
        "   the leader, computed by `from_v1` from the entities: x = {:.2} (rightmost was {:.2})",
        hot_fn!(game.summary())?.rightmost,
        before.rightmost
    );
    println!(
        "   methods this build adds, which this host was not compiled with: {:?}",
        report.unknown_methods
    );
    frames(&game, 2)?;

    println!("\n== The live system, as `reloader.status()` shows it");
    for line in reloader.status()?.to_string().lines() {
        println!("   {line}");
    }

    let summary = hot_fn!(game.summary())?;
    println!(
        "\n== Done: {} ticks, score {}, {} entities; one process throughout, now on load #{}",
        summary.tick,
        summary.score,
        summary.entities,
        game.version().map_or(0, |v| v.generation)
    );
    Ok(())
}

/// Offers bad builds to the running game.
struct Offer<'a> {
    reloader: &'a HotReloader,
    game: &'a Module<GameLogic>,
    builds: &'a BuiltVariants,
    artifact: &'a Path,
}

impl Offer<'_> {
    /// Installs `variant`, which must be refused, and shows the game going on.
    fn refused(&self, heading: &str, variant: &str) -> Result<(), Box<dyn std::error::Error>> {
        println!("\n== {heading}");
        install(self.builds, variant, self.artifact)?;
        match self.reloader.reload_module("game_logic") {
            Ok(_) => return Err(format!("the build `{variant}` was accepted").into()),
            Err(err) => println!("   refused: {err}"),
        }
        let game = self.game;
        println!(
            "   still running load #{}: {:?}",
            game.version().map_or(0, |v| v.generation),
            hot_fn!(game.summary())?
        );
        frames(game, 2)?;
        Ok(())
    }
}

fn frames(game: &Module<GameLogic>, count: u32) -> Result<(), hotreload::HotError> {
    for _ in 0..count {
        let score = hot_fn!(game.tick(0.5))?;
        let summary = hot_fn!(game.summary())?;
        println!(
            "   tick {:>2}: score {:>4}, rightmost entity at x = {:.2}",
            summary.tick, score, summary.rightmost
        );
    }
    Ok(())
}

/// The original module and four edits of it.
fn build_variants(
    root: &Path,
    work: &Path,
) -> Result<BuiltVariants, hotreload::harness::HarnessError> {
    VariantBuilder::new(root.join("examples/game-logic"), work.join("variants"))
        .lockfile(root.join("Cargo.lock"))
        .target_dir(work.join("target"))
        .variant("original", |v| v)
        .variant("ten_points", |v| {
            v.edit(
                LIB,
                "self.score += self.entities.len() as i64; // SCORING RULE",
                "self.score += 10 * self.entities.len() as i64; // SCORING RULE",
            )
            .edit(LIB, "one point per entity per tick", "ten points per entity per tick")
        })
        .variant("leader", |v| {
            v.edit(
                LIB,
                "self.score += self.entities.len() as i64; // SCORING RULE",
                "self.score += 10 * self.entities.len() as i64; // SCORING RULE\n        \
                 self.leader = self.entities.iter().map(|e| e.x).fold(self.leader, f32::max);",
            )
            .edit(LIB, "one point per entity per tick", "ten points per entity per tick")
            .edit(
                LIB,
                "    entities: Vec<Entity>,\n}",
                "    entities: Vec<Entity>,\n    /// How far the leading entity got.\n    \
                 leader: f32,\n}\n\n/// The state before `leader`: schema v1.\n\
                 #[derive(Deserialize)]\npub struct GameLogicV1 {\n    ticks: u64,\n    \
                 score: i64,\n    entities: Vec<Entity>,\n}",
            )
            .edit(
                LIB,
                "#[hot_module(version = 1)]\nimpl GameLogic {",
                "#[hot_module(version = 1, state_version = 2)]\nimpl GameLogic {\n    \
                 /// Schema v1 had no leader: it is where the rightmost entity is.\n    \
                 #[migrate(from = 1)]\n    fn from_v1(old: GameLogicV1) -> GameLogic {\n        \
                 let leader = old.entities.iter().map(|e| e.x).fold(0.0, f32::max);\n        \
                 GameLogic { ticks: old.ticks, score: old.score, entities: old.entities, leader }\n    \
                 }\n\n    /// How far the leading entity got.\n    \
                 pub fn leader(&self) -> f32 {\n        self.leader\n    }\n",
            )
            .edit(
                LIB,
                "rightmost: self.entities.iter().map(|e| e.x).fold(0.0, f32::max),",
                "rightmost: self.leader,",
            )
        })
        .variant("f64_tick", |v| {
            v.edit(
                LIB,
                "pub fn tick(&mut self, dt: f32) -> i64 {",
                "pub fn tick(&mut self, dt: f64) -> i64 {\n        let dt = dt as f32;",
            )
        })
        .variant("restore_panics", |v| {
            v.edit(
                LIB,
                "pub struct GameLogic {\n    ticks: u64,",
                "pub struct GameLogic {\n    #[serde(deserialize_with = \"refuse\")]\n    ticks: u64,",
            )
            .edit(
                LIB,
                "#[hot_module(version = 1)]",
                "fn refuse<'de, D: serde::Deserializer<'de>>(_: D) -> Result<u64, D::Error> {\n    panic!(\"this build cannot read the saved tick count\")\n}\n\n#[hot_module(version = 1)]",
            )
        })
        .build()
}

/// Puts a build at the artifact path as a linker would: write beside it, then rename over it.
fn install(builds: &BuiltVariants, variant: &str, artifact: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(artifact.parent().expect("artifact has a directory"))?;
    hotreload::harness::install(builds.artifact(variant), artifact)
}
