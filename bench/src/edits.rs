//! The edit loop: a source file saved -> the first call answered by the new code, with the
//! runtime building (debug builds, as a developer edits), beside hot-lib-reloader's workflow.
//!
//! Each module under edit is a copy in a scratch workspace of its own (the harness's
//! variants), all building into `target/hotreload-bench/edit/target`. The host calls the
//! module every millisecond, as a game calls its logic every frame, and notes the first call
//! that answers with the edited code.
//!
//! - hotreload: the module registered with `build_with_cargo_manifest`, watching. The first
//!   edit goes through cargo (watching began with a build that found the module fresh, so
//!   cargo showed no rustc command yet) and is reported on its own; the measured edits after
//!   it are what a developer sees all day.
//! - hot-lib-reloader: `cargo build` started at the moment of the save (as `cargo watch -x
//!   build` would with no delay of its own), and hot-lib-reloader's watcher with its default
//!   500 ms debounce.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bench_wide::Wide;
use game_logic::GameLogic;
use hotreload::harness::VariantBuilder;
use hotreload::{Event, HotModule, HotReloader, Module, ModuleOptions, hot_fn};

use crate::hlr::{self, Instance};
use crate::report::{EditSeries, Report, Stages};
use crate::{PATIENCE, Plan, await_event};

/// How often the host calls the module while it waits for the new code.
const FRAME: Duration = Duration::from_millis(1);

pub fn run(
    root: &Path,
    out: &Path,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let edits = plan.pick(20, 4);
    let work = out.join("edit");
    let target = work.join("target");
    let copy = |krate: &str, name: &str| -> Result<PathBuf, Box<dyn std::error::Error>> {
        let started = Instant::now();
        VariantBuilder::new(root.join(krate), work.join(name))
            .lockfile(root.join("Cargo.lock"))
            .target_dir(&target)
            .variant("live", |v| v)
            .build()?;
        println!(
            "  {krate}: copied and built (debug) in {:.1?}",
            started.elapsed()
        );
        Ok(work.join(name).join("live"))
    };

    let game = copy("examples/game-logic", "game-logic")?;
    let series = edit_game_logic(&game, &target, "game_logic_live", edits)?;
    report
        .edits
        .push(series.labelled("demo module (examples/game-logic)", "game_logic"));

    let wide = copy("bench/wide", "wide")?;
    let series = edit_wide(&wide, &target, edits)?;
    report
        .edits
        .push(series.labelled("20-method module (bench/wide)", "wide_20_methods"));

    let hlr_crate = copy("bench/hlr", "hlr")?;
    let series = edit_hlr(&hlr_crate, &target, edits)?;
    report.edits.push(series.labelled(
        "hot-lib-reloader: cargo build at save + its 500 ms debounce",
        "hot_lib_reloader",
    ));
    Ok(())
}

/// What one module's edits measured.
#[derive(Default)]
struct Measured {
    first: Option<Stages>,
    stages: Vec<Stages>,
}

impl Measured {
    /// The first edit on its own; the rest measured.
    fn record(&mut self, stages: Stages) {
        if self.first.is_none() {
            self.first = Some(stages);
        } else {
            self.stages.push(stages);
        }
    }

    fn labelled(self, label: &str, key: &'static str) -> EditSeries {
        EditSeries {
            key,
            label: label.to_owned(),
            first: self.first,
            stages: self.stages,
        }
    }
}

/// A module being edited: its source file, the text the next edit replaces, and the
/// reloader's events with the moment each came.
struct Session {
    source: PathBuf,
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
    /// The same events, to wait on.
    subscribed: Receiver<Event>,
    /// Watching and building for as long as the session lasts.
    _reloader: HotReloader,
}

impl Session {
    fn start<T: HotModule>(
        krate: &Path,
        target: &Path,
        lib: &str,
    ) -> Result<(Session, Module<T>), Box<dyn std::error::Error>> {
        let artifact = target.join("debug").join(hotreload::library_file_name(lib));
        let reloader = HotReloader::new();
        let events: Arc<Mutex<Vec<(Instant, Event)>>> = Arc::default();
        let log = Arc::clone(&events);
        reloader.on_event(move |event| {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Instant::now(), event.clone()));
        });
        let module = reloader.register_with::<T>(
            ModuleOptions::new()
                .artifact(&artifact)
                .build_with_cargo_manifest(krate.join("Cargo.toml")),
        )?;
        let subscribed = reloader.subscribe();
        reloader.start_watching()?;
        // Watching begins with a build (cargo finds the copy fresh).
        let first_build = format!("the first build of {}", krate.display());
        await_event(&subscribed, &first_build, |event| match event {
            Event::BuildFinished { .. } => Some(Ok(())),
            Event::BuildFailed { message, .. } => {
                Some(Err(format!("{first_build} failed:\n{message}")))
            }
            _ => None,
        })?;
        let session = Session {
            source: krate.join("src/lib.rs"),
            events,
            subscribed,
            _reloader: reloader,
        };
        Ok((session, module))
    }

    fn take(&self) -> Vec<(Instant, Event)> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Saves the source with `from` replaced by `to`, then calls `serves` every frame until it
    /// says the new code answered. Returns the stages of that edit.
    fn edit(
        &self,
        from: &str,
        to: &str,
        mut serves: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
    ) -> Result<Stages, Box<dyn std::error::Error>> {
        let text = std::fs::read_to_string(&self.source)?;
        if !text.contains(from) {
            return Err(format!("`{from}` is not in {}", self.source.display()).into());
        }
        self.take();
        while self.subscribed.try_recv().is_ok() {}
        let saved = Instant::now();
        std::fs::write(&self.source, text.replace(from, to))?;
        let answered = loop {
            if serves()? {
                break Instant::now();
            }
            if saved.elapsed() > PATIENCE {
                let seen: Vec<String> = self.take().iter().map(|(_, e)| e.to_string()).collect();
                return Err(format!(
                    "the edit `{to}` of {} was not served within {PATIENCE:?}; events: {seen:#?}",
                    self.source.display()
                )
                .into());
            }
            std::thread::sleep(FRAME);
        };
        // The new code answers once the reload commits; its event comes after it retires
        // the old version.
        let timings = await_event(
            &self.subscribed,
            &format!("the reload of the edit `{to}`"),
            |event| match event {
                Event::Reloaded { timings, .. } => Some(Ok(timings)),
                _ => None,
            },
        )?;
        let events = self.take();
        let at = |pick: fn(&Event) -> bool| events.iter().find(|(_, e)| pick(e)).map(|(t, _)| *t);
        let started = at(|e| matches!(e, Event::BuildStarted { .. }));
        let built = at(|e| matches!(e, Event::BuildFinished { .. }));
        let replayed = events
            .iter()
            .any(|(_, e)| matches!(e, Event::BuildFinished { replayed: true, .. }));
        let (Some(started), Some(built)) = (started, built) else {
            let seen: Vec<String> = events.iter().map(|(_, e)| e.to_string()).collect();
            return Err(format!("an edit was served without a build: {seen:#?}").into());
        };
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        // What callers wait for and what happens before it: the steps up to the commit.
        let reload =
            timings.stage + timings.open + timings.verify + timings.prepare + timings.commit;
        let reload_ms = reload.as_secs_f64() * 1e3;
        Ok(Stages {
            total_ms: ms(saved, answered),
            detect_ms: ms(saved, started),
            build_ms: ms(started, built),
            reload_ms,
            first_call_ms: (ms(built, answered) - reload_ms).max(0.0),
            replayed,
        })
    }
}

/// Edits the demo's scoring rule: each tick adds `entities * k` points; one entity.
fn edit_game_logic(
    krate: &Path,
    target: &Path,
    lib: &str,
    edits: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let (session, game) = Session::start::<GameLogic>(krate, target, lib)?;
    hot_fn!(game.spawn(1.0))?;
    let mut score = hot_fn!(game.tick(0.0))?;
    let rule = |k: i64| format!("self.entities.len() as i64 * {k}; // SCORING RULE");
    let mut current = "self.entities.len() as i64; // SCORING RULE".to_owned();
    let mut measured = Measured::default();
    for k in 2..(2 + edits as i64 + 1) {
        let next = rule(k);
        let stages = session.edit(&current, &next, || {
            let now = hot_fn!(game.tick(0.0))?;
            let gained = now - score;
            score = now;
            Ok(gained == k)
        })?;
        current = next;
        measured.record(stages);
    }
    drop(session);
    Ok(measured)
}

/// Edits what `tag()` returns in the 20-method module.
fn edit_wide(
    krate: &Path,
    target: &Path,
    edits: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let (session, wide) = Session::start::<Wide>(krate, target, "bench_wide_live")?;
    let mut current = "1 // TAG".to_owned();
    let mut measured = Measured::default();
    for k in 2..(2 + edits as u64 + 1) {
        let next = format!("{k} // TAG");
        let stages = session.edit(&current, &next, || Ok(hot_fn!(wide.tag())? == k))?;
        current = next;
        measured.record(stages);
    }
    drop(session);
    Ok(measured)
}

/// hot-lib-reloader's workflow: `cargo build` at each save, its watcher reloading.
fn edit_hlr(
    krate: &Path,
    target: &Path,
    edits: usize,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let instance = Instance::Edit;
    if instance.build() != 1 {
        return Err("hot-lib-reloader's copy does not serve its first build".into());
    }
    hlr::wait_until_watching(instance)?;
    let source = krate.join("src/lib.rs");
    let mut current = "const BUILD: u64 = 1;".to_owned();
    let mut measured = Measured::default();
    for k in 2..(2 + edits as u64 + 1) {
        let next = format!("const BUILD: u64 = {k};");
        let text = std::fs::read_to_string(&source)?;
        let saved = Instant::now();
        std::fs::write(&source, text.replace(&current, &next))?;
        let mut command = cargo_build(krate, target);
        let build = std::thread::spawn(move || {
            let started = Instant::now();
            command.output().map(|out| (out, started.elapsed()))
        });
        while instance.build() != k {
            if saved.elapsed() > PATIENCE {
                return Err(format!(
                    "{instance} did not serve build {k} within {PATIENCE:?} of its save"
                )
                .into());
            }
            std::thread::sleep(FRAME);
        }
        let answered = saved.elapsed();
        let (output, built) = build.join().map_err(|_| "the cargo thread panicked")??;
        if !output.status.success() {
            return Err(format!(
                "cargo build failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        current = next;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        measured.record(Stages {
            total_ms: ms(answered),
            detect_ms: 0.0,
            build_ms: ms(built),
            // The debounce, the reload and the first call, together.
            reload_ms: ms(answered.saturating_sub(built)),
            first_call_ms: 0.0,
            replayed: false,
        });
        // It watches the replaced file anew after each reload.
        hlr::wait_until_watching(instance)?;
    }
    Ok(measured)
}

fn cargo_build(krate: &Path, target: &Path) -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--lib", "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .env_remove("CARGO_TARGET_DIR");
    command
}
