//! The project's performance targets, checked against one run's figures. Missing one is a
//! finding the run prints, not a failure: the run still succeeds.

use serde_json::{Value, json};

use crate::report::{CallCost, P99_MIN_SAMPLES, Report, fig, percentile, tail};

/// Reloads the memory targets count.
const MEMORY_RELOADS: usize = 1000;

/// One target and how this run's figure compares with it.
pub struct Check {
    /// What the target says, bound included.
    target: String,
    /// The figure compared with the bound, in `unit`.
    figure: f64,
    bound: f64,
    /// The figure is at most the bound (else at least).
    at_most: bool,
    unit: &'static str,
    /// How the figure was made.
    detail: String,
    /// Set when the run took fewer samples than the target counts over.
    short: Option<String>,
}

impl Check {
    fn at_most(target: &str, figure: f64, bound: f64, unit: &'static str, detail: String) -> Self {
        Check {
            target: target.to_owned(),
            figure,
            bound,
            at_most: true,
            unit,
            detail,
            short: None,
        }
    }

    fn at_least(target: &str, figure: f64, bound: f64, unit: &'static str, detail: String) -> Self {
        Check {
            at_most: false,
            ..Check::at_most(target, figure, bound, unit, detail)
        }
    }

    /// Notes that the figure comes from `samples` samples where the target counts `needed`.
    fn over(mut self, samples: usize, needed: usize, what: &str) -> Self {
        if samples < needed {
            self.short = Some(format!(
                "from {samples} {what}, fewer than the {needed} the target counts: indicative only"
            ));
        }
        self
    }

    pub fn met(&self) -> bool {
        if self.at_most {
            self.figure <= self.bound
        } else {
            self.figure >= self.bound
        }
    }

    fn value(&self, v: f64) -> String {
        match self.unit {
            "x" => format!("{}x", fig(v)),
            "" => fig(v),
            unit => format!("{} {unit}", fig(v)),
        }
    }

    /// "MET", or "MISSED by 2.3 ms (77% over)".
    fn verdict(&self) -> String {
        if self.met() {
            return "MET".into();
        }
        let by = (self.figure - self.bound).abs();
        let relative = if self.bound != 0.0 {
            format!(
                " ({:.0}% {})",
                by / self.bound.abs() * 100.0,
                if self.at_most { "over" } else { "under" }
            )
        } else {
            String::new()
        };
        format!("MISSED by {}{relative}", self.value(by))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "figure": self.figure,
            "bound": self.bound,
            "unit": self.unit,
            "met": self.met(),
            "verdict": self.verdict(),
            "detail": self.detail,
            "short_of_samples": self.short,
        })
    }
}

/// Every target, in the README's order.
pub fn check(report: &Report) -> Vec<Check> {
    let mut checks = Vec::new();
    let ns = |key: &str| report.call(key);
    // Wall time, as the tables show; the CPU-time ratio beside it shows what a busy machine's
    // other work added.
    let ratio = |a: &CallCost, b: &CallCost| {
        format!(
            "{} / {} ns, medians of wall time; in CPU time {} / {} ns = {}x",
            fig(a.median()),
            fig(b.median()),
            fig(a.cpu_median()),
            fig(b.cpu_median()),
            fig(a.cpu_median() / b.cpu_median())
        )
    };
    if let (Some(local), Some(shared), Some(ptr)) =
        (ns("hot_fn"), ns("hot_fn_shared"), ns("fn_ptr"))
    {
        checks.push(Check::at_most(
            "LocalModule hot_fn! / cached fn pointer <= 1.5x",
            local.median() / ptr.median(),
            1.5,
            "x",
            ratio(local, ptr),
        ));
        checks.push(Check::at_most(
            "shared Module, 1 thread / cached fn pointer <= 3x",
            shared.median() / ptr.median(),
            3.0,
            "x",
            ratio(shared, ptr),
        ));
    }
    if let (Some(all), Some(one)) = (ns("hot_fn_all_cores"), ns("hot_fn_shared")) {
        checks.push(Check::at_most(
            "shared Module, all cores per thread / 1 thread <= 1.2x",
            all.median() / one.median(),
            1.2,
            "x",
            ratio(all, one),
        ));
    }
    if let (Some(hlr), Some(local), Some(shared)) =
        (ns("hot_lib_reloader"), ns("hot_fn"), ns("hot_fn_shared"))
    {
        let fastest = if local.median() <= shared.median() {
            local
        } else {
            shared
        };
        checks.push(Check::at_least(
            "hot-lib-reloader per call / fastest hot_fn! >= 30x",
            hlr.median() / fastest.median(),
            30.0,
            "x",
            ratio(hlr, fastest),
        ));
    }
    if !report.reload_ms.is_empty() {
        let reloads = report.reload_ms.len();
        checks.push(
            Check::at_most(
                "reload, rename -> first call answered: p50 <= 1 ms",
                percentile(&report.reload_ms, 50.0),
                1.0,
                "ms",
                format!("p50 of {reloads} reloads"),
            )
            .over(reloads, P99_MIN_SAMPLES, "reloads"),
        );
        let t = tail(&report.reload_ms);
        checks.push(
            Check::at_most(
                "reload, rename -> first call answered: p99 <= 3 ms",
                t.value,
                3.0,
                "ms",
                t.label(),
            )
            .over(reloads, P99_MIN_SAMPLES, "reloads"),
        );
    }
    if let Some(s) = report.stall("1kb") {
        let (during, baseline) = (tail(&s.during_reload_us), tail(&s.baseline_us));
        let windows = during.samples.min(baseline.samples);
        checks.push(
            Check::at_most(
                "longest call during a reload (1 KB state): p99 <= baseline p99 + 20 µs",
                during.value,
                baseline.value + 20.0,
                "µs",
                format!(
                    "{} during reloads, baseline {} µs ({})",
                    during.label(),
                    fig(baseline.value),
                    baseline.label()
                ),
            )
            .over(windows, P99_MIN_SAMPLES, "windows"),
        );
    }
    if let Some(s) = report.stall("64mb_shared") {
        let during = tail(&s.during_reload_us);
        checks.push(
            Check::at_most(
                "longest `&self` call during a reload (64 MB state): p99 <= 5 ms",
                during.value / 1e3,
                5.0,
                "ms",
                format!("{} during reloads", during.label()),
            )
            .over(during.samples, P99_MIN_SAMPLES, "windows"),
        );
    }
    if let Some(m) = &report.memory_tls {
        checks.push(
            Check::at_most(
                "thread-local destructors, after 1,000 reloads: mapped copies <= history + 1",
                m.mapped_copies as f64,
                (m.history + 1) as f64,
                "",
                format!(
                    "{} copies mapped after {} reloads, history {}",
                    m.mapped_copies, m.reloads, m.history
                ),
            )
            .over(m.reloads, MEMORY_RELOADS, "reloads"),
        );
        let reloads = m.reloads.max(1);
        checks.push(
            Check::at_most(
                "thread-local destructors, after 1,000 reloads: <= 100 kB per reload",
                m.rss_growth_kb as f64 / reloads as f64,
                100.0,
                "kB",
                format!(
                    "resident memory {:+} kB over {} reloads",
                    m.rss_growth_kb, m.reloads
                ),
            )
            .over(m.reloads, MEMORY_RELOADS, "reloads"),
        );
    }
    if let Some(game) = report.edit_series("game_logic") {
        let totals = game.totals();
        let hlr = report
            .edit_series("hot_lib_reloader")
            .map_or(0.0, |h| percentile(&h.totals(), 50.0));
        checks.push(
            Check::at_most(
                "demo module, debug: save -> new code answers, p50 <= 400 ms",
                percentile(&totals, 50.0),
                400.0,
                "ms",
                format!(
                    "{} edits with the runtime building ({} of them by replaying rustc); \
                     hot-lib-reloader's workflow in the same run: p50 {} ms",
                    totals.len(),
                    game.stages.iter().filter(|s| s.replayed).count(),
                    fig(hlr)
                ),
            )
            .over(totals.len(), EDITS, "edits"),
        );
    }
    checks
}

/// Edits the edit-loop target counts over.
const EDITS: usize = 20;

pub fn print(checks: &[Check]) {
    println!("\ntargets (a missed target is reported, not an error)");
    for c in checks {
        println!(
            "  {:<76} {:>10}  {}",
            c.target,
            c.value(c.figure),
            c.verdict()
        );
        println!("      {}", c.detail);
        if let Some(short) = &c.short {
            println!("      {short}");
        }
    }
    let missed = checks.iter().filter(|c| !c.met()).count();
    println!("  {} met, {missed} missed", checks.len() - missed);
}
