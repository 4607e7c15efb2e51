//! The results: a table on stdout, `report.json`, and `report.svg`.

use std::path::Path;

use hotreload::StepTimings;
use plotters::prelude::*;
use serde_json::{Value, json};

/// Longest calls per window, in µs.
pub struct Stall {
    pub during_reload_us: Vec<f64>,
    pub baseline_us: Vec<f64>,
}

pub struct Memory {
    pub reloads: usize,
    pub mapped_copies: usize,
    pub rss_growth_kb: i64,
    pub still_mapped_reported: usize,
}

pub struct Report {
    pub cores: usize,
    pub cpu: String,
    pub module_len: u64,
    pub calls: Vec<(&'static str, &'static str, f64)>,
    pub reload_ms: Vec<f64>,
    pub steps: Vec<StepTimings>,
    pub hlr_reload_ms: Vec<f64>,
    pub hlr_fast_reload_ms: Vec<f64>,
    pub stalls: Vec<(&'static str, Stall)>,
    pub hlr_stall: Option<Stall>,
    pub state_mb_s: f64,
    pub memory_plain: Option<Memory>,
    pub memory_tls: Option<Memory>,
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

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
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
            steps: Vec::new(),
            hlr_reload_ms: Vec::new(),
            hlr_fast_reload_ms: Vec::new(),
            stalls: Vec::new(),
            hlr_stall: None,
            state_mb_s: 0.0,
            memory_plain: None,
            memory_tls: None,
        }
    }

    fn stall(&self, size: &str) -> Option<&Stall> {
        self.stalls.iter().find(|(s, _)| *s == size).map(|(_, s)| s)
    }

    fn step_medians_us(&self) -> Value {
        let median = |pick: fn(&StepTimings) -> std::time::Duration| {
            let us: Vec<f64> = self
                .steps
                .iter()
                .map(|t| pick(t).as_secs_f64() * 1e6)
                .collect();
            percentile(&us, 50.0)
        };
        json!({
            "stage": median(|t| t.stage),
            "open": median(|t| t.open),
            "verify": median(|t| t.verify),
            "prepare": median(|t| t.prepare),
            "commit": median(|t| t.commit),
            "retire": median(|t| t.retire),
        })
    }

    pub fn to_json(&self) -> Value {
        let calls: serde_json::Map<String, Value> = self
            .calls
            .iter()
            .map(|(key, _, ns)| ((*key).to_owned(), json!(ns)))
            .collect();
        let mut stall = serde_json::Map::new();
        for (size, s) in &self.stalls {
            stall.insert(
                format!("p50_{size}"),
                json!(percentile(&s.during_reload_us, 50.0)),
            );
            stall.insert(
                format!("p99_{size}"),
                json!(percentile(&s.during_reload_us, 99.0)),
            );
            stall.insert(format!("max_{size}"), json!(max(&s.during_reload_us)));
            stall.insert(
                format!("baseline_p99_{size}"),
                json!(percentile(&s.baseline_us, 99.0)),
            );
        }
        if let Some(base) = self.stall("1kb") {
            stall.insert(
                "baseline_p50".into(),
                json!(percentile(&base.baseline_us, 50.0)),
            );
            stall.insert(
                "baseline_p99".into(),
                json!(percentile(&base.baseline_us, 99.0)),
            );
            stall.insert("baseline_max".into(), json!(max(&base.baseline_us)));
        }
        if let Some(h) = &self.hlr_stall {
            stall.insert(
                "hot_lib_reloader_p50".into(),
                json!(percentile(&h.during_reload_us, 50.0)),
            );
            stall.insert(
                "hot_lib_reloader_p99".into(),
                json!(percentile(&h.during_reload_us, 99.0)),
            );
            stall.insert(
                "hot_lib_reloader_max".into(),
                json!(max(&h.during_reload_us)),
            );
            stall.insert(
                "hot_lib_reloader_baseline_p99".into(),
                json!(percentile(&h.baseline_us, 99.0)),
            );
        }
        let memory = |m: &Option<Memory>| match m {
            Some(m) => json!({
                "reloads": m.reloads,
                "mapped_copies_after_1000": m.mapped_copies,
                "rss_growth_kb_after_1000": m.rss_growth_kb,
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
        json!({
            "machine": { "cores": self.cores, "cpu": self.cpu },
            "module_bytes": self.module_len,
            "call_ns": calls,
            "reload_ms": {
                "reloads": self.reload_ms.len(),
                "p50": percentile(&self.reload_ms, 50.0),
                "p99": percentile(&self.reload_ms, 99.0),
                "max": max(&self.reload_ms),
                "steps_median_us": self.step_medians_us(),
                "hot_lib_reloader_p50": percentile(&self.hlr_reload_ms, 50.0),
                "hot_lib_reloader_p99": percentile(&self.hlr_reload_ms, 99.0),
                "hot_lib_reloader_debounce_50ms_p50": percentile(&self.hlr_fast_reload_ms, 50.0),
                "hot_lib_reloader_debounce_50ms_p99": percentile(&self.hlr_fast_reload_ms, 99.0),
            },
            "stall_us": stall,
            "state_mb_s": self.state_mb_s,
            "memory": memory_json,
        })
    }

    pub fn print(&self) {
        println!(
            "\nmachine: {} cores, {}; module {:.2} MB",
            self.cores,
            self.cpu,
            self.module_len as f64 / 1e6
        );
        println!(
            "\n{:<58} {:>12}",
            "call overhead, add(u64, u64) -> u64", "ns/call"
        );
        for (_, label, ns) in &self.calls {
            println!("{label:<58} {ns:>12.2}");
        }
        println!(
            "\n{:<58} {:>8} {:>8}",
            "reload latency (artifact in place -> new build answers)", "p50 ms", "p99 ms"
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
            println!(
                "{label:<58} {:>8.2} {:>8.2}",
                percentile(values, 50.0),
                percentile(values, 99.0)
            );
        }
        println!("steps, median µs: {}", self.step_medians_us());
        println!(
            "\n{:<58} {:>8} {:>8} {:>8}",
            "caller stall (longest call per window)", "p50 µs", "p99 µs", "max µs"
        );
        for (size, s) in &self.stalls {
            let label = format!("hotreload, {size} state, during reload");
            println!(
                "{label:<58} {:>8.1} {:>8.1} {:>8.1}",
                percentile(&s.during_reload_us, 50.0),
                percentile(&s.during_reload_us, 99.0),
                max(&s.during_reload_us)
            );
            let label = format!("hotreload, {size} state, baseline");
            println!(
                "{label:<58} {:>8.1} {:>8.1} {:>8.1}",
                percentile(&s.baseline_us, 50.0),
                percentile(&s.baseline_us, 99.0),
                max(&s.baseline_us)
            );
        }
        if let Some(h) = &self.hlr_stall {
            let label = "hot-lib-reloader, during reload";
            println!(
                "{label:<58} {:>8.1} {:>8.1} {:>8.1}",
                percentile(&h.during_reload_us, 50.0),
                percentile(&h.during_reload_us, 99.0),
                max(&h.during_reload_us)
            );
            let label = "hot-lib-reloader, baseline";
            println!(
                "{label:<58} {:>8.1} {:>8.1} {:>8.1}",
                percentile(&h.baseline_us, 50.0),
                percentile(&h.baseline_us, 99.0),
                max(&h.baseline_us)
            );
        }
        println!("save+restore throughput: {:.0} MB/s", self.state_mb_s);
        for (label, m) in [
            ("no thread-local destructors", &self.memory_plain),
            ("thread-local destructors", &self.memory_tls),
        ] {
            if let Some(m) = m {
                println!(
                    "memory after {} reloads, {label}: {} shadow copies mapped ({} reported still mapped), RSS {:+} kB",
                    m.reloads, m.mapped_copies, m.still_mapped_reported, m.rss_growth_kb
                );
            }
        }
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
            .filter(|(key, _, _)| *key != "hot_fn_shared")
            .map(|(key, _, ns)| ((*key).to_owned(), ns.max(0.01)))
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
