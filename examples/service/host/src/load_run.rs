//! The load run: the service under `wrk` while its module is reloaded, refused and
//! canaried, then under `wrk` alone as the baseline, and a report of both.
//!
//! It builds the `storefront` module and edited copies of it with the harness (two good
//! builds with different price rules, two bad builds, a good canary and a failing one),
//! serves the original build on a free loopback port, and while `wrk` runs, from another
//! thread: reloads the two good builds in turn (at least 100 times, 30 with `--short`),
//! offers each bad build (each must be refused while requests go on), runs the good canary
//! until its policy promotes it and the failing one until its policy aborts it, then goes on
//! reloading until `wrk` is done. The verdict fails if any of that went otherwise, or if more
//! requests failed than the failing canary's error budget allows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hotreload::harness::{BuiltVariants, Variant, VariantBuilder};
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};
use storefront::Storefront;

use crate::Error;
use crate::canary::{self, CanaryRun};
use crate::server::{self, App, MODULE};
use crate::wrk::{self, Figures, Load};

pub const LIB: &str = "src/lib.rs";

/// The two good builds reloaded in turn, each with the rule its pages name.
const GOOD: [(&str, &str); 2] = [
    ("members_15", "members save 15%"),
    ("original", "members save 10%"),
];

/// The bad builds, each with what is wrong with it.
const BAD: [(&str, &str); 2] = [
    ("price_takes_currency", "`price` takes a third parameter"),
    ("restore_panics", "panics while restoring the state"),
];

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// `wrk`'s settings, for each of the two runs.
    pub load: Load,
    /// Reloads of good builds to make at least, all while `wrk` runs.
    pub reloads: usize,
    /// Pause between two reloads: the shape of the load, not a synchronisation.
    pub pace: Duration,
}

impl Plan {
    /// The full run (30 s per `wrk` run, at least 100 reloads) or the short one (8 s, 30).
    pub fn new(short: bool, seconds: Option<u64>) -> Plan {
        let seconds = seconds.unwrap_or(if short { 8 } else { 30 });
        Plan {
            load: Load {
                duration: Duration::from_secs(seconds),
                threads: 2,
                connections: 16,
                timeout: Duration::from_secs(5),
            },
            reloads: if short { 30 } else { 100 },
            pace: Duration::from_millis(if short { 40 } else { 80 }),
        }
    }
}

/// Runs the load run and prints its report; `Ok(false)` when the verdict fails.
pub fn run(plan: Plan) -> Result<bool, Error> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../..")
        .canonicalize()?;
    let work = root.join("target/hotreload-service");
    let wall = Instant::now();
    println!("== Building storefront and five edited copies (the first run compiles dependencies)");
    let builds = build_variants(&root, &work)?;
    println!("   built in {:.1?}", wall.elapsed());

    // The path the service loads, as `target/debug/libstorefront.so` would be.
    let artifact = work
        .join("live")
        .join(hotreload::library_file_name("storefront"));
    std::fs::create_dir_all(artifact.parent().ok_or("artifact has a directory")?)?;
    hotreload::harness::install(builds.artifact("original"), &artifact)?;
    let reloader = Arc::new(HotReloader::new());
    let store: Module<Storefront> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))?;
    let address = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = App {
        reloader: reloader.clone(),
        store: store.clone(),
    };
    let server = runtime.spawn(server::serve(listener, app, async move {
        let _ = server_stopped.await;
    }));
    println!(
        "\n== Serving on http://{address}/ ({} worker threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    println!(
        "\n== Under reloads: {} while another thread reloads the module",
        plan.load
    );
    let (stop_driver, stopped) = mpsc::channel();
    let driver = Driver {
        reloader: reloader.clone(),
        store: store.clone(),
        builds: builds.clone(),
        artifact: artifact.clone(),
        plan,
        wrk_ends: Instant::now() + plan.load.duration,
    };
    let (finished, driver_done) = mpsc::channel();
    let driver = std::thread::spawn(move || {
        let _ = finished.send(driver.run(&stopped));
    });
    let under = wrk::run(address, plan.load, &work);
    let _ = stop_driver.send(());
    // Once wrk is done, the reloading thread ends after the reload in progress, if any.
    let done = match driver_done.recv_timeout(Duration::from_secs(60)) {
        Ok(done) => done,
        Err(RecvTimeoutError::Timeout) => {
            return Err("the thread reloading the module did not stop within 60 s".into());
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err("the thread reloading the module panicked".into());
        }
    };
    let _ = driver.join();
    let (under, raw) = under?;
    print_indented(&raw);
    let done = done?;

    println!("\n== Baseline: {} with no reloads", plan.load);
    let (baseline, raw) = wrk::run(address, plan.load, &work)?;
    print_indented(&raw);

    let _ = stop_server.send(());
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .map_err(|_| "the server did not stop within 10 s")?
            .map_err(|err| format!("the server task failed: {err}"))?
            .map_err(|err| format!("the server failed: {err}"))
    })?;
    println!("\n== The live system at the end, as `reloader.status()` shows it");
    for line in reloader.status()?.to_string().lines() {
        println!("   {line}");
    }
    let verdict = report(&plan, &under, &baseline, &done);
    println!("\n   whole run: {:.1?} wall-clock", wall.elapsed());
    Ok(verdict)
}

/// What the reloading thread did.
#[derive(Debug, Default)]
struct Done {
    /// Reload time (whole transaction) of each good build taken.
    reload_times: Vec<Duration>,
    /// How long callers were paused by each of those reloads.
    pauses: Vec<Duration>,
    /// Good builds that were not taken, or that did not serve their rule afterwards.
    failed_reloads: Vec<String>,
    /// Bad builds refused, with the reason.
    refused: Vec<(String, String)>,
    /// Bad builds taken.
    accepted_bad: Vec<String>,
    /// Calls that failed between the reloads, made directly to check what serves.
    check_failures: Vec<String>,
    /// The good canary, then the failing one.
    canaries: Vec<CanaryRun>,
}

/// Reloads, refusals and canaries, on a thread of its own while `wrk` runs.
struct Driver {
    reloader: Arc<HotReloader>,
    store: Module<Storefront>,
    builds: BuiltVariants,
    artifact: PathBuf,
    plan: Plan,
    wrk_ends: Instant,
}

impl Driver {
    fn run(self, stop: &Receiver<()>) -> Result<Done, Error> {
        let mut done = Done::default();
        let mut turn = 0;
        let before = self.rule().unwrap_or_else(|err| err);
        self.reload_good(turn, &mut done);
        turn += 1;
        println!(
            "   first reload: \"{before}\" -> \"{}\"; a member's tea now: {}",
            self.rule().unwrap_or_else(|err| err),
            self.member_tea().unwrap_or_else(|err| err)
        );
        // The first reloads, at least as many as the plan asks for.
        while done.reload_times.len() + done.failed_reloads.len() < self.plan.reloads {
            self.reload_good(turn, &mut done);
            turn += 1;
            if paced(stop, self.plan.pace) {
                return Ok(done);
            }
        }
        println!(
            "   {} reloads of good builds in turn",
            done.reload_times.len()
        );
        for (variant, what) in BAD {
            self.offer_bad(variant, what, &mut done);
        }
        // Each canary has until `wrk` ends (less a second to spare) for its policy to decide.
        let deadline = self.wrk_ends - Duration::from_secs(1);
        for run in [canary::good(), canary::failing()] {
            let path = self.builds.artifact(run.build);
            let run = canary::run(&self.reloader, run, path, deadline);
            println!("   canary {}: {}", run.build, run.outcome);
            done.canaries.push(run);
        }
        // Reloads go on until `wrk` is done.
        loop {
            self.reload_good(turn, &mut done);
            turn += 1;
            if paced(stop, self.plan.pace) {
                return Ok(done);
            }
        }
    }

    /// Reloads the good build whose turn it is, then checks that its rule serves.
    fn reload_good(&self, turn: usize, done: &mut Done) {
        let (variant, rule) = GOOD[turn % GOOD.len()];
        let outcome = hotreload::harness::install(self.builds.artifact(variant), &self.artifact)
            .map_err(|err| format!("installing `{variant}`: {err}"))
            .and_then(|()| {
                self.reloader
                    .reload_module(MODULE)
                    .map_err(|err| format!("`{variant}` was not taken: {err}"))
            });
        match outcome {
            Ok(report) if report.unchanged => done
                .failed_reloads
                .push(format!("`{variant}` was found unchanged")),
            Ok(report) => {
                done.reload_times.push(report.timings.total());
                done.pauses.push(report.timings.pause());
                if let Err(err) = self.check_rule(rule) {
                    done.failed_reloads
                        .push(format!("after `{variant}` was taken: {err}"));
                }
            }
            Err(err) => done.failed_reloads.push(err),
        }
    }

    /// Offers a build that must be refused, and checks that the serving build goes on.
    fn offer_bad(&self, variant: &str, what: &str, done: &mut Done) {
        let serving = self.store.version().map(|v| v.generation);
        let installed = hotreload::harness::install(self.builds.artifact(variant), &self.artifact);
        match installed.map(|()| self.reloader.reload_module(MODULE)) {
            Err(err) => done
                .check_failures
                .push(format!("installing `{variant}`: {err}")),
            Ok(Ok(_)) => done.accepted_bad.push(format!("`{variant}` ({what})")),
            Ok(Err(err)) => {
                println!("   `{variant}` ({what}) refused: {err}");
                done.refused.push((variant.to_owned(), err.to_string()));
            }
        }
        let now = self.store.version().map(|v| v.generation);
        if now != serving {
            done.check_failures.push(format!(
                "after `{variant}`, load #{now:?} serves instead of #{serving:?}"
            ));
        }
        let rule = self.rule().unwrap_or_else(|err| err);
        if let Err(err) = self.store_answers() {
            done.check_failures
                .push(format!("after `{variant}` ({rule}): {err}"));
        }
    }

    /// The serving build names `rule` on its price pages.
    fn check_rule(&self, rule: &str) -> Result<(), String> {
        let serving = self.rule()?;
        if serving == rule {
            Ok(())
        } else {
            Err(format!(
                "the serving build says \"{serving}\", not \"{rule}\""
            ))
        }
    }

    /// The rule the serving build names, from a price it computes.
    fn rule(&self) -> Result<String, String> {
        let stats = self.store_answers()?;
        let start = stats.find("\"rule\":\"").ok_or("no rule in the stats")? + 8;
        let end = stats[start..].find('"').ok_or("no rule in the stats")? + start;
        Ok(stats[start..end].to_owned())
    }

    /// What the serving build answers for a member's tea.
    fn member_tea(&self) -> Result<String, String> {
        let store = &self.store;
        match hot_fn!(store.price("member-7", "tea")) {
            Ok(Ok(Some(json))) => Ok(json),
            Ok(Ok(None)) => Err("no tea".to_owned()),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(err.to_string()),
        }
    }

    /// The module answers a call.
    fn store_answers(&self) -> Result<String, String> {
        let store = &self.store;
        hot_fn!(store.stats()).map_err(|err| err.to_string())
    }
}

/// Prints wrk's own report, indented.
fn print_indented(raw: &str) {
    for line in raw.lines() {
        println!("   | {line}");
    }
}

/// Waits `pace` before the next reload; `true` once `wrk` is done.
fn paced(stop: &Receiver<()>, pace: Duration) -> bool {
    !matches!(stop.recv_timeout(pace), Err(RecvTimeoutError::Timeout))
}

/// Prints the report; the verdict.
fn report(plan: &Plan, under: &Figures, baseline: &Figures, done: &Done) -> bool {
    println!("\n== Report");
    let row = |name: &str, a: String, b: String| println!("   {name:<26}{a:>18}{b:>18}");
    row("", "under reloads".into(), "baseline".into());
    row(
        "requests",
        under.requests.to_string(),
        baseline.requests.to_string(),
    );
    row(
        "failed (non-2xx, socket)",
        format!(
            "{} ({}, {})",
            under.failed(),
            under.non_2xx,
            under.socket_errors
        ),
        format!(
            "{} ({}, {})",
            baseline.failed(),
            baseline.non_2xx,
            baseline.socket_errors
        ),
    );
    row("latency p50", ms(under.p50), ms(baseline.p50));
    row("latency p99", ms(under.p99), ms(baseline.p99));
    row("latency max", ms(under.max), ms(baseline.max));
    row(
        "requests/s",
        format!("{:.0}", under.rps),
        format!("{:.0}", baseline.rps),
    );
    let mut times = done.reload_times.clone();
    let mut pauses = done.pauses.clone();
    println!(
        "   reloads of good builds taken: {} (at least {} planned); each took p50 {} max {}, \
         callers paused p50 {} max {}",
        times.len(),
        plan.reloads,
        ms(median(&mut times)),
        ms(times.last().copied().unwrap_or_default()),
        ms(median(&mut pauses)),
        ms(pauses.last().copied().unwrap_or_default()),
    );
    println!(
        "   bad builds refused: {} of {}",
        done.refused.len(),
        BAD.len()
    );
    for run in &done.canaries {
        println!("   canary `{}` ({}): {}", run.build, run.what, run.outcome);
    }
    if let Some(failed) = canary::failed_calls(&done.canaries) {
        println!(
            "   failed requests under reloads: {}; failed calls the failing canary's figures \
             counted: {failed} (error budget {})",
            under.failed(),
            canary::ERROR_BUDGET
        );
    }

    let mut failures: Vec<String> = Vec::new();
    failures.extend(
        done.failed_reloads
            .iter()
            .map(|f| format!("a good build's reload failed: {f}")),
    );
    failures.extend(
        done.accepted_bad
            .iter()
            .map(|b| format!("a bad build was taken: {b}")),
    );
    failures.extend(done.check_failures.iter().cloned());
    if done.reload_times.len() < plan.reloads {
        failures.push(format!(
            "{} reloads while wrk ran, fewer than the {} planned",
            done.reload_times.len(),
            plan.reloads
        ));
    }
    if done.refused.len() != BAD.len() {
        failures.push(format!(
            "{} of {} bad builds were offered and refused",
            done.refused.len(),
            BAD.len()
        ));
    }
    failures.extend(canary::check(&done.canaries));
    let budget = canary::failed_requests_allowed();
    if under.failed() > budget {
        failures.push(format!(
            "{} requests failed under reloads; the failing canary's error budget allows {budget}",
            under.failed()
        ));
    }
    if baseline.failed() > 0 {
        failures.push(format!(
            "{} requests failed in the baseline, with no reloads",
            baseline.failed()
        ));
    }
    if failures.is_empty() {
        println!("\n   verdict: PASS");
    } else {
        println!("\n   verdict: FAIL");
        for failure in &failures {
            println!("   - {failure}");
        }
    }
    failures.is_empty()
}

/// The middle value of `values` (sorted by this call).
fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

/// The original module and its edited copies.
fn build_variants(root: &Path, work: &Path) -> Result<BuiltVariants, Error> {
    let builder = VariantBuilder::new(
        root.join("examples/service/storefront"),
        work.join("variants"),
    )
    .lockfile(root.join("Cargo.lock"))
    .target_dir(work.join("target"))
    .variant("original", |v| v)
    .variant("members_15", price_rule("15"))
    .variant("price_takes_currency", |v| {
        v.edit(
            LIB,
            "pub fn price(&self, user: &str, sku: &str) -> Result<Option<String>, String> {",
            "pub fn price(\n        &self,\n        user: &str,\n        sku: &str,\n        \
             currency: &str,\n    ) -> Result<Option<String>, String> {\n        \
             let _ = currency;",
        )
    })
    .variant("restore_panics", |v| {
        v.edit(
            LIB,
            "pub struct Storefront {\n    served: AtomicU64,",
            "pub struct Storefront {\n    #[serde(deserialize_with = \"refuse\")]\n    \
             served: AtomicU64,",
        )
        .edit(
            LIB,
            "#[hot_module(version = 1)]",
            "fn refuse<'de, D: serde::Deserializer<'de>>(_: D) -> Result<AtomicU64, D::Error> \
             {\n    panic!(\"this build cannot read the saved request count\")\n}\n\n\
             #[hot_module(version = 1)]",
        )
    });
    Ok(canary::variants(builder).build()?)
}

/// The edit that makes members save `percent`% instead of 10%.
pub fn price_rule(percent: &'static str) -> impl FnOnce(Variant) -> Variant {
    move |v| {
        v.edit(
            LIB,
            "if member { 10 } else { 0 } // PRICE RULE",
            &format!("if member {{ {percent} }} else {{ 0 }} // PRICE RULE"),
        )
        .edit(
            LIB,
            "\"members save 10%\"",
            &format!("\"members save {percent}%\""),
        )
    }
}
