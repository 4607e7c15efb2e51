//! hotreload's benchmarks, against hot-lib-reloader, in one run on one machine.
//!
//! `cargo run --release -p hotreload-bench` builds the fixture modules (release), then
//! measures call overhead, reload latency, the stall callers see during a reload, memory
//! over many reloads, and the edit loop (a source saved -> the new code answering, with the
//! runtime building debug builds, beside hot-lib-reloader's workflow). It prints tables and
//! the project's targets (each MET or MISSED), and writes `target/hotreload-bench/report.json`
//! and `target/hotreload-bench/report.svg`. `--quick` runs fewer rounds (for CI); `--only
//! calls|reloads|stall|memory|edits` (repeatable) runs those sections alone.
//!
//! A p99 is reported only from at least [`report::P99_MIN_SAMPLES`] samples; with fewer, the
//! figure is the largest sample and is labelled "max of N" (and its `p99` key in
//! `report.json` is null). Missing a target does not fail the run; an error does.

mod calls;
mod edits;
mod fixtures;
mod hlr;
mod memory;
mod reloads;
mod report;
mod stall;
mod targets;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use report::Report;

/// How long the benchmark waits for something that takes milliseconds (a reload, a watch)
/// before it stops with an error naming it: long enough for a machine that other work
/// keeps busy.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits for the event `pick` answers for (with `Ok` to stop there, `Err` to fail with that
/// message), up to [`PATIENCE`]; `what` names what was awaited when nothing came.
pub fn await_event<T>(
    events: &std::sync::mpsc::Receiver<hotreload::Event>,
    what: &str,
    mut pick: impl FnMut(hotreload::Event) -> Option<Result<T, String>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = events.recv_timeout(left) else {
            return Err(format!("{what}: nothing within {PATIENCE:?}").into());
        };
        if let Some(result) = pick(event) {
            return result.map_err(Into::into);
        }
    }
}

/// How long each benchmark runs.
#[derive(Clone, Copy)]
pub struct Plan {
    pub quick: bool,
}

impl Plan {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick(self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plan = Plan {
        quick: std::env::args().any(|a| a == "--quick"),
    };
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let out = root.join("target/hotreload-bench");
    let _one_run = one_run_at_a_time(&out)?;
    println!("building the fixture modules (release; the first run compiles dependencies)...");
    let fixtures = fixtures::Fixtures::build(&root, &out)?;
    println!(
        "  bench module: {:.2} MB; built in {:.1?}",
        fixtures.module_len() as f64 / 1e6,
        started.elapsed()
    );

    let mut report = Report::new(fixtures.module_len());
    let args: Vec<String> = std::env::args().collect();
    let only: Vec<&str> = args
        .windows(2)
        .filter(|pair| pair[0] == "--only")
        .map(|pair| pair[1].as_str())
        .collect();
    let runs = |section: &str| only.is_empty() || only.contains(&section);
    if runs("calls") {
        println!("call overhead...");
        calls::run(&fixtures, plan, &mut report)?;
    }
    if runs("reloads") {
        println!("reload latency...");
        reloads::run(&fixtures, plan, &mut report)?;
    }
    if runs("stall") {
        println!("caller stall...");
        stall::run(&fixtures, plan, &mut report)?;
    }
    if runs("memory") {
        println!("memory...");
        memory::run(&fixtures, plan, &mut report)?;
    }
    if runs("edits") {
        println!("edit loop (debug builds; the first run compiles dependencies)...");
        edits::run(&root, &out, plan, &mut report)?;
    }

    report.print();
    report.write(&out)?;
    println!(
        "\nwrote {} and {} in {:.1?} ({} run)",
        out.join("report.json").display(),
        out.join("report.svg").display(),
        started.elapsed(),
        if plan.quick { "quick" } else { "full" }
    );
    Ok(())
}

/// Waits until no other run of the benchmark is under way, and keeps others waiting until
/// the returned lock is dropped: runs share `target/hotreload-bench` (hot-lib-reloader's
/// library directory is fixed when the benchmark is compiled), and a run starting would
/// remove the files of one in progress.
fn one_run_at_a_time(out: &Path) -> Result<File, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let path = out.join("run.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let try_lock = || {
        // SAFETY: flock on a descriptor this function owns, open for its whole use; the lock
        // goes with the descriptor when the file is dropped.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    };
    if try_lock() {
        return Ok(lock);
    }
    println!(
        "waiting for another run of the benchmark to finish (it holds {})...",
        path.display()
    );
    // A full run with its builds takes a few minutes.
    let patience = Duration::from_secs(20 * 60);
    let started = Instant::now();
    while !try_lock() {
        if started.elapsed() > patience {
            return Err(format!(
                "another run of the benchmark held {} for {patience:?} and has not finished",
                path.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(lock)
}
