//! The results: tables on stdout, `report.json`, and `report.svg`.

use std::path::Path;
use std::time::Duration;

use hotreload::StepTimings;
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::targets;

/// Fewest samples a p99 is taken from. With fewer, the tail figure is the largest sample and
/// says so ("max of N"), and the `p99` keys of `report.json` are null.
pub const P99_MIN_SAMPLES: usize = 200;

/// Longest calls per window, in µs.
pub struct Stall {
    pub during_reload_us: Vec<f64>,
    pub baseline_us: Vec<f64>,
}

pub struct Memory {
    pub reloads: usize,
    /// Replaced versions kept for rollback.
    pub history: usize,
    pub mapped_copies: usize,
    pub rss_growth_kb: i64,
    pub still_mapped_reported: usize,
}

/// One way of calling `add`: ns per call in each round (the mean over the threads calling
/// at once), in wall time and in the calling threads' CPU time.
pub struct CallCost {
    pub key: &'static str,
    pub label: &'static str,
    pub threads: usize,
    pub wall_ns: Vec<f64>,
    pub cpu_ns: Vec<f64>,
}

impl CallCost {
    /// The median round's wall time per call.
    pub fn median(&self) -> f64 {
        percentile(&self.wall_ns, 50.0)
    }

    pub fn cpu_median(&self) -> f64 {
        percentile(&self.cpu_ns, 50.0)
    }

    fn to_json(&self) -> Value {
        json!({
            "rounds": self.wall_ns.len(),
            "threads": self.threads,
            "median": self.median(),
            "min": min(&self.wall_ns),
            "max": max(&self.wall_ns),
            "cpu_median": self.cpu_median(),
            "cpu_min": min(&self.cpu_ns),
            "cpu_max": max(&self.cpu_ns),
        })
    }
}

/// One edit: save -> first call answered by the new code, and where the time went (ms).
#[derive(Clone, Copy)]
pub struct Stages {
    pub total_ms: f64,
    /// The save until the build started (the file event, the settle time).
    pub detect_ms: f64,
    pub build_ms: f64,
    /// The reload's steps up to its commit (stage, open, verify, prepare, commit).
    pub reload_ms: f64,
    /// The rest of the time from the build's end to the answer: the watcher's look at the
    /// artifact, and the host's next call.
    pub first_call_ms: f64,
    /// Whether the build replayed rustc (hotreload) rather than running cargo.
    pub replayed: bool,
}

/// The edits of one module: the first (cargo learns the module's command) and the rest.
pub struct EditSeries {
    pub key: &'static str,
    pub label: String,
    pub first: Option<Stages>,
    pub stages: Vec<Stages>,
}

impl EditSeries {
    pub fn totals(&self) -> Vec<f64> {
        self.pick(|s| s.total_ms)
    }

    fn pick(&self, field: fn(&Stages) -> f64) -> Vec<f64> {
        self.stages.iter().map(field).collect()
    }

    fn to_json(&self) -> Value {
        let totals = self.totals();
        let median = |field: fn(&Stages) -> f64| percentile(&self.pick(field), 50.0);
        json!({
            "edits": totals.len(),
            "p50": percentile(&totals, 50.0),
            "p99": tail(&totals).p99_json(),
            "max": max(&totals),
            "min": min(&totals),
            "replayed": self.stages.iter().filter(|s| s.replayed).count(),
            "first_edit_ms": self.first.map(|s| s.total_ms),
            "stages_median_ms": {
                "detect": median(|s| s.detect_ms),
                "build": median(|s| s.build_ms),
                "reload": median(|s| s.reload_ms),
                "rest": median(|s| s.first_call_ms),
            },
        })
    }
}

pub struct Report {
    pub cores: usize,
    pub cpu: String,
    pub module_len: u64,
    pub calls: Vec<CallCost>,
    pub reload_ms: Vec<f64>,
    /// How long the rename of each reload of `reload_ms` took to return, in µs.
    pub rename_us: Vec<f64>,
    /// The step timings of the reloads of `reload_ms`, in the same order.
    pub steps: Vec<StepTimings>,
    pub hlr_reload_ms: Vec<f64>,
    pub hlr_fast_reload_ms: Vec<f64>,
    pub stalls: Vec<(&'static str, Stall)>,
    pub hlr_stall: Option<Stall>,
    pub state_mb_s: f64,
    pub memory_plain: Option<Memory>,
    pub memory_tls: Option<Memory>,
    pub edits: Vec<EditSeries>,
}

/// The `p`th percentile (nearest rank) of `values`; 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

/// The tail of some samples: their p99 when there are enough of them, else their maximum.
pub struct Tail {
    pub value: f64,
    pub samples: usize,
    pub is_p99: bool,
}

pub fn tail(values: &[f64]) -> Tail {
    let is_p99 = values.len() >= P99_MIN_SAMPLES;
    Tail {
        value: if is_p99 {
            percentile(values, 99.0)
        } else {
            max(values)
        },
        samples: values.len(),
        is_p99,
    }
}

impl Tail {
    /// "p99 of 200", "max of 40".
    pub fn label(&self) -> String {
        let what = if self.is_p99 { "p99" } else { "max" };
        format!("{what} of {}", self.samples)
    }

    /// For a `p99` key of report.json: null when there were too few samples for one.
    fn p99_json(&self) -> Value {
        if self.is_p99 {
            json!(self.value)
        } else {
            Value::Null
        }
    }
}

/// A figure with about three significant digits.
pub fn fig(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A step of a reload: its key in report.json, its label in the table, its time.
type Step = (&'static str, &'static str, fn(&StepTimings) -> Duration);

/// The steps of a reload.
const STEPS: [Step; 8] = [
    ("stage", "stage (copy + checks)", |t| t.stage),
    ("open", "open (dlopen, descriptor lookup)", |t| t.open),
    ("verify", "verify (ABI, name, layout, API version)", |t| {
        t.verify
    }),
    (
        "prepare",
        "prepare (save + restore state; callers wait)",
        |t| t.prepare,
    ),
    (
        "prepare_shared",
        "prepare beside &self calls (concurrent_save)",
        |t| t.prepare_shared,
    ),
    ("commit", "commit (publish; callers wait)", |t| t.commit),
    ("hash", "hash (SHA-256, after the swap)", |t| t.hash),
    (
        "retire",
        "retire (old state and library; callers do not wait)",
        |t| t.retire,
    ),
];

/// Printed widths: the label, then each column.
const LABEL: usize = 60;
const COLUMN: usize = 10;

fn header(title: &str, columns: &[&str]) {
    print!("\n{title:<LABEL$}");
    for c in columns {
        print!(" {c:>COLUMN$}");
    }
    println!();
}

/// A row of how many samples, their median, their tail and what the tail is.
fn counted_row(label: &str, values: &[f64]) {
    let t = tail(values);
    row(
        label,
        &[
            values.len().to_string(),
            fig(percentile(values, 50.0)),
            fig(t.value),
            t.label(),
        ],
    );
}

/// A row of the samples' median, their tail and what the tail is.
fn distribution_row(label: &str, values: &[f64]) {
    let t = tail(values);
    row(
        label,
        &[fig(percentile(values, 50.0)), fig(t.value), t.label()],
    );
}

fn row(label: &str, cells: &[String]) {
    print!("{label:<LABEL$}");
    for c in cells {
        print!(" {c:>COLUMN$}");
    }
    println!();
}

impl Report {
    pub fn new(module_len: u64) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Report {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            module_len,
            calls: Vec::new(),
            reload_ms: Vec::new(),
            rename_us: Vec::new(),
            steps: Vec::new(),
            hlr_reload_ms: Vec::new(),
            hlr_fast_reload_ms: Vec::new(),
            stalls: Vec::new(),
            hlr_stall: None,
            state_mb_s: 0.0,
            memory_plain: None,
            memory_tls: None,
            edits: Vec::new(),
        }
    }

    pub fn call(&self, key: &str) -> Option<&CallCost> {
        self.calls.iter().find(|c| c.key == key)
    }

    pub fn edit_series(&self, key: &str) -> Option<&EditSeries> {
        self.edits.iter().find(|e| e.key == key)
    }

    pub fn stall(&self, size: &str) -> Option<&Stall> {
        self.stalls.iter().find(|(s, _)| *s == size).map(|(_, s)| s)
    }

    /// µs of one step in each reload.
    fn step_us(&self, pick: fn(&StepTimings) -> Duration) -> Vec<f64> {
        self.steps
            .iter()
            .map(|t| pick(t).as_secs_f64() * 1e6)
            .collect()
    }

    /// µs of each reload's latency spent outside the steps callers wait for: the rename until
    /// the watcher hears of it, the file event's delivery, and the first call.
    fn outside_steps_us(&self) -> Vec<f64> {
        self.reload_ms
            .iter()
            .zip(&self.steps)
            .map(|(ms, t)| {
                let steps = t.stage + t.open + t.verify + t.prepare + t.prepare_shared + t.commit;
                ms * 1e3 - steps.as_secs_f64() * 1e6
            })
            .collect()
    }

    fn steps_json(&self, figure: impl Fn(&[f64]) -> Value) -> Value {
        let steps: serde_json::Map<String, Value> = STEPS
            .iter()
            .map(|(key, _, pick)| ((*key).to_owned(), figure(&self.step_us(*pick))))
            .collect();
        Value::Object(steps)
    }

    pub fn to_json(&self) -> Value {
        let calls: serde_json::Map<String, Value> = self
            .calls
            .iter()
            .map(|c| (c.key.to_owned(), json!(c.median())))
            .collect();
        let call_detail: serde_json::Map<String, Value> = self
            .calls
            .iter()
            .map(|c| (c.key.to_owned(), c.to_json()))
            .collect();
        let mut stall = serde_json::Map::new();
        for (size, s) in &self.stalls {
            let (during, baseline) = (tail(&s.during_reload_us), tail(&s.baseline_us));
            stall.insert(
                format!("p50_{size}"),
                json!(percentile(&s.during_reload_us, 50.0)),
            );
            stall.insert(format!("p99_{size}"), during.p99_json());
            stall.insert(format!("max_{size}"), json!(max(&s.during_reload_us)));
            stall.insert(format!("windows_{size}"), json!(during.samples));
            stall.insert(format!("baseline_p99_{size}"), baseline.p99_json());
            stall.insert(
                format!("baseline_p50_{size}"),
                json!(percentile(&s.baseline_us, 50.0)),
            );
            stall.insert(format!("baseline_max_{size}"), json!(max(&s.baseline_us)));
            stall.insert(format!("baseline_windows_{size}"), json!(baseline.samples));
        }
        if let Some(base) = self.stall("1kb") {
            stall.insert(
                "baseline_p50".into(),
                json!(percentile(&base.baseline_us, 50.0)),
            );
            stall.insert("baseline_p99".into(), tail(&base.baseline_us).p99_json());
            stall.insert("baseline_max".into(), json!(max(&base.baseline_us)));
        }
        stall.insert(
            "baseline_load".into(),
            json!("the reloading thread copies memory through the baseline windows"),
        );
        if let Some(h) = &self.hlr_stall {
            stall.insert(
                "hot_lib_reloader_p50".into(),
                json!(percentile(&h.during_reload_us, 50.0)),
            );
            stall.insert(
                "hot_lib_reloader_p99".into(),
                tail(&h.during_reload_us).p99_json(),
            );
            stall.insert(
                "hot_lib_reloader_max".into(),
                json!(max(&h.during_reload_us)),
            );
            stall.insert(
                "hot_lib_reloader_windows".into(),
                json!(h.during_reload_us.len()),
            );
            stall.insert(
                "hot_lib_reloader_baseline_p99".into(),
                tail(&h.baseline_us).p99_json(),
            );
            stall.insert(
                "hot_lib_reloader_baseline_max".into(),
                json!(max(&h.baseline_us)),
            );
        }
        let memory = |m: &Option<Memory>| match m {
            Some(m) => json!({
                "reloads": m.reloads,
                "history": m.history,
                "mapped_copies_after_1000": m.mapped_copies,
                "rss_growth_kb_after_1000": m.rss_growth_kb,
                "rss_growth_kb_per_reload": m.rss_growth_kb as f64 / m.reloads.max(1) as f64,
                "versions_reported_still_mapped": m.still_mapped_reported,
            }),
            None => Value::Null,
        };
        let mut memory_json = memory(&self.memory_plain);
        if let Value::Object(map) = &mut memory_json {
            map.insert(
                "with_thread_local_destructors".into(),
                memory(&self.memory_tls),
            );
        }
        let hotreload = tail(&self.reload_ms);
        let (hlr, hlr_fast) = (tail(&self.hlr_reload_ms), tail(&self.hlr_fast_reload_ms));
        json!({
            "machine": { "cores": self.cores, "cpu": self.cpu },
            "module_bytes": self.module_len,
            "p99_min_samples": P99_MIN_SAMPLES,
            "call_ns": calls,
            "call_ns_rounds": call_detail,
            "reload_ms": {
                "reloads": self.reload_ms.len(),
                "p50": percentile(&self.reload_ms, 50.0),
                "p99": hotreload.p99_json(),
                "max": max(&self.reload_ms),
                "steps_median_us": self.steps_json(|us| json!(percentile(us, 50.0))),
                "steps_p99_us": self.steps_json(|us| tail(us).p99_json()),
                "steps_max_us": self.steps_json(|us| json!(max(us))),
                "outside_steps_median_us": percentile(&self.outside_steps_us(), 50.0),
                "rename_median_us": percentile(&self.rename_us, 50.0),
                "rename_max_us": max(&self.rename_us),
                "hot_lib_reloader_reloads": hlr.samples,
                "hot_lib_reloader_p50": percentile(&self.hlr_reload_ms, 50.0),
                "hot_lib_reloader_p99": hlr.p99_json(),
                "hot_lib_reloader_max": max(&self.hlr_reload_ms),
                "hot_lib_reloader_debounce_50ms_reloads": hlr_fast.samples,
                "hot_lib_reloader_debounce_50ms_p50": percentile(&self.hlr_fast_reload_ms, 50.0),
                "hot_lib_reloader_debounce_50ms_p99": hlr_fast.p99_json(),
                "hot_lib_reloader_debounce_50ms_max": max(&self.hlr_fast_reload_ms),
            },
            "stall_us": stall,
            "edit_to_serving_ms": self
                .edits
                .iter()
                .map(|e| (e.key.to_owned(), e.to_json()))
                .collect::<serde_json::Map<String, Value>>(),
            "state_mb_s": self.state_mb_s,
            "memory": memory_json,
            "targets": targets::check(self).iter().map(targets::Check::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn print(&self) {
        println!(
            "\nmachine: {} cores, {}; module {:.2} MB",
            self.cores,
            self.cpu,
            self.module_len as f64 / 1e6
        );

        if !self.calls.is_empty() {
            self.print_calls();
        }
        if !self.reload_ms.is_empty() {
            self.print_reloads();
        }
        if !self.stalls.is_empty() {
            self.print_stalls();
        }
        self.print_memory();
        if !self.edits.is_empty() {
            self.print_edits();
        }
        targets::print(&targets::check(self));
    }

    fn print_calls(&self) {
        let rounds = self.calls.first().map_or(0, |c| c.wall_ns.len());
        header(
            &format!("call overhead, add(u64, u64) -> u64, ns/call ({rounds} rounds)"),
            &["median", "min", "max", "CPU med"],
        );
        for c in &self.calls {
            row(
                c.label,
                &[
                    fig(c.median()),
                    fig(min(&c.wall_ns)),
                    fig(max(&c.wall_ns)),
                    fig(c.cpu_median()),
                ],
            );
        }
        println!("(CPU med: the calling threads' CPU time per call, median round)");
    }

    fn print_reloads(&self) {
        header(
            "reload latency (rename called -> new build answers)",
            &["reloads", "p50 ms", "tail ms", "tail"],
        );
        let rows = [
            ("hotreload (watcher, defaults)", &self.reload_ms),
            (
                "hot-lib-reloader (defaults: 500 ms debounce)",
                &self.hlr_reload_ms,
            ),
            (
                "hot-lib-reloader (50 ms debounce)",
                &self.hlr_fast_reload_ms,
            ),
        ];
        for (label, values) in rows {
            counted_row(label, values);
        }

        header(
            &format!(
                "steps of a hotreload reload ({} Reloaded events)",
                self.steps.len()
            ),
            &["p50 µs", "tail µs", "tail"],
        );
        for (_, label, pick) in STEPS {
            distribution_row(label, &self.step_us(pick));
        }
        for (label, us) in [
            (
                "rest of the latency (rename, file event, first call)",
                self.outside_steps_us(),
            ),
            (
                "the rename, call to return (overlaps the above)",
                self.rename_us.clone(),
            ),
        ] {
            distribution_row(label, &us);
        }
    }

    fn print_stalls(&self) {
        header(
            "caller stall: longest call per window (1 caller thread)",
            &["windows", "p50 µs", "tail µs", "tail"],
        );
        for (size, s) in &self.stalls {
            counted_row(
                &format!("hotreload, {size} state, during reload"),
                &s.during_reload_us,
            );
            counted_row(
                &format!("hotreload, {size} state, baseline"),
                &s.baseline_us,
            );
        }
        if let Some(h) = &self.hlr_stall {
            counted_row("hot-lib-reloader, during reload", &h.during_reload_us);
            counted_row("hot-lib-reloader, baseline", &h.baseline_us);
        }
        println!(
            "(baseline: a window as long as the reload before it, the reloading thread copying \
             memory throughout)"
        );
        println!("save+restore throughput: {:.0} MB/s", self.state_mb_s);
    }

    fn print_memory(&self) {
        for (label, m) in [
            ("no thread-local destructors", &self.memory_plain),
            ("thread-local destructors", &self.memory_tls),
        ] {
            if let Some(m) = m {
                println!(
                    "memory after {} reloads (history {}), {label}: {} shadow copies mapped ({} \
                     reported still mapped), RSS {:+} kB ({:+.1} kB per reload)",
                    m.reloads,
                    m.history,
                    m.mapped_copies,
                    m.still_mapped_reported,
                    m.rss_growth_kb,
                    m.rss_growth_kb as f64 / m.reloads.max(1) as f64
                );
            }
        }
    }

    fn print_edits(&self) {
        header(
            "edit loop: save -> new code answers (debug builds), ms",
            &["edits", "p50", "tail", "tail", "1st edit"],
        );
        for e in &self.edits {
            let totals = e.totals();
            let t = tail(&totals);
            row(
                &e.label,
                &[
                    totals.len().to_string(),
                    fig(percentile(&totals, 50.0)),
                    fig(t.value),
                    t.label(),
                    e.first.map_or_else(|| "-".into(), |s| fig(s.total_ms)),
                ],
            );
        }
        header(
            "  where it goes (medians, ms)",
            &["detect", "build", "reload", "rest", "replayed"],
        );
        for e in &self.edits {
            let median = |field: fn(&Stages) -> f64| fig(percentile(&e.pick(field), 50.0));
            row(
                &format!("  {}", e.label),
                &[
                    median(|s| s.detect_ms),
                    median(|s| s.build_ms),
                    median(|s| s.reload_ms),
                    median(|s| s.first_call_ms),
                    e.stages.iter().filter(|s| s.replayed).count().to_string(),
                ],
            );
        }
        println!(
            "(replayed: edits built by replaying rustc, of those measured; detect: save -> build started; reload: its steps to the commit; rest: the check of \
             the artifact and the next call. 1st edit: cargo builds it and shows the module's \
             rustc command; later edits of the module's own sources replay that command. \
             hot-lib-reloader: cargo build started at the save; its reload column holds its \
             debounce, reload and first call)"
        );
    }

    pub fn write(&self, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("report.json"),
            serde_json::to_string_pretty(&self.to_json())?,
        )?;
        self.draw(&out.join("report.svg"))?;
        Ok(())
    }

    /// Two panels: call overhead (log scale) and reload latency p50.
    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "hotreload vs hot-lib-reloader ({} cores, {})",
            self.cores, self.cpu
        );
        let root = root.titled(&title, ("sans-serif", 18))?;
        let (left, right) = root.split_horizontally(560);

        let calls: Vec<(String, f64)> = self
            .calls
            .iter()
            .filter(|c| c.key != "hot_fn_shared")
            .map(|c| (c.key.to_owned(), c.median().max(0.01)))
            .collect();
        bars(&left, "call overhead, ns/call (log)", &calls, true)?;

        let reloads = vec![
            ("hotreload".to_owned(), percentile(&self.reload_ms, 50.0)),
            (
                "hlr 50 ms".to_owned(),
                percentile(&self.hlr_fast_reload_ms, 50.0),
            ),
            (
                "hlr default".to_owned(),
                percentile(&self.hlr_reload_ms, 50.0),
            ),
        ];
        bars(&right, "reload latency p50, ms", &reloads, false)?;
        root.present()?;
        Ok(())
    }
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    data: &[(String, f64)],
    log: bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let top = data.iter().map(|(_, v)| *v).fold(0.0, f64::max) * 1.3;
    let labels: Vec<String> = data.iter().map(|(l, _)| l.clone()).collect();
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(50);
    let x_range = (0..data.len()).into_segmented();
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    if log {
        let mut chart = builder.build_cartesian_2d(x_range, (0.01f64..top.max(1.0)).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label)
            .x_label_style(("sans-serif", 10))
            .draw()?;
        chart.draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.01),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                BLUE.mix(0.6).filled(),
            )
        }))?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, 0f64..top.max(1.0))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label)
            .x_label_style(("sans-serif", 11))
            .draw()?;
        chart.draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                BLUE.mix(0.6).filled(),
            )
        }))?;
    }
    Ok(())
}
