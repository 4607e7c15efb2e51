//! hotreload's benchmarks, against hot-lib-reloader, in one run on one machine.
//!
//! `cargo run --release -p hotreload-bench` builds the fixture modules (release), then
//! measures call overhead, reload latency, the stall callers see during a reload, and memory
//! over many reloads. It prints a table and writes `target/hotreload-bench/report.json` and
//! `target/hotreload-bench/report.svg`. `--quick` runs fewer rounds (for CI).

mod calls;
mod fixtures;
mod hlr;
mod memory;
mod reloads;
mod report;
mod stall;

use std::path::Path;
use std::time::Instant;

use report::Report;

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
    println!("building the fixture modules (release; the first run compiles dependencies)...");
    let fixtures = fixtures::Fixtures::build(&root, &out)?;
    println!(
        "  bench module: {:.2} MB; built in {:.1?}",
        fixtures.module_len() as f64 / 1e6,
        started.elapsed()
    );

    let mut report = Report::new(fixtures.module_len());
    println!("call overhead...");
    calls::run(&fixtures, plan, &mut report)?;
    println!("reload latency...");
    reloads::run(&fixtures, plan, &mut report)?;
    println!("caller stall...");
    stall::run(&fixtures, plan, &mut report)?;
    println!("memory...");
    memory::run(&fixtures, plan, &mut report)?;

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
