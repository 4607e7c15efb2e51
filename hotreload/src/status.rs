//! A look at the live system: what each module serves, what it keeps, what stays mapped and
//! why, its probation, its last refusal, and its calls' metrics
//! ([`HotReloader::status`](crate::HotReloader::status)). Its `Display` is meant for a
//! terminal.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::{RetiredVersion, VersionInfo, VersionMetrics};

/// Every registered module, in name order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// The modules.
    pub modules: Vec<ModuleStatus>,
}

/// One module's state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModuleStatus {
    /// Its name.
    pub name: String,
    /// Where its builds are read from.
    pub artifact: PathBuf,
    /// The version serving calls (`None` before the first build loaded).
    pub serving: Option<VersionStatus>,
    /// Replaced versions still loaded for rollback, oldest first.
    pub kept: Vec<VersionStatus>,
    /// Closed versions still mapped, each with the reason: the runtime holds them (a thread
    /// may still run in them, or `keep_loaded`: [`RetiredVersion::held`]), or the OS kept them
    /// (`held` is `None`: it registered thread-local destructors the runtime could not take
    /// over).
    pub held: Vec<RetiredVersion>,
    /// The probation of the serving version, if one runs.
    pub probation: Option<ProbationStatus>,
    /// The canary serving beside it, if one runs.
    pub canary: Option<crate::CanaryStatus>,
    /// The last reload refused (or build failed), if any: it may be older than the serving
    /// version.
    pub last_refusal: Option<Refusal>,
}

/// A loaded version.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VersionStatus {
    /// Its description: load number, API and schema versions, artifact, digest, when loaded.
    pub info: VersionInfo,
    /// When its artifact was written (for a build cargo wrote: when it was built), if the
    /// platform says.
    pub built_at: Option<SystemTime>,
    /// Its calls' metrics (`None` with metrics off).
    pub metrics: Option<VersionMetrics>,
}

/// A probation in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbationStatus {
    /// The version on probation.
    pub generation: u64,
    /// Calls left before it ends, for a probation of a number of calls.
    pub calls_left: Option<u64>,
    /// Time left before it ends, for a probation of a duration.
    pub time_left: Option<Duration>,
}

/// A refused reload or failed build.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// When.
    pub at: SystemTime,
    /// One line saying why.
    pub reason: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.modules.is_empty() {
            return writeln!(f, "no module registered");
        }
        let now = SystemTime::now();
        for (i, module) in self.modules.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            module.write(f, now)?;
        }
        Ok(())
    }
}

impl fmt::Display for ModuleStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, SystemTime::now())
    }
}

impl ModuleStatus {
    fn write(&self, f: &mut fmt::Formatter<'_>, now: SystemTime) -> fmt::Result {
        let Some(serving) = &self.serving else {
            writeln!(f, "{}: not loaded ({})", self.name, self.artifact.display())?;
            return self.write_tail(f, now);
        };
        let info = &serving.info;
        write!(
            f,
            "{}: load #{} serving (API v{}, state v{})",
            self.name, info.generation, info.api_version, info.state_version
        )?;
        match &self.probation {
            Some(probation) if probation.generation == info.generation => {
                write!(f, ", on probation")?;
                let calls = probation.calls_left.map(|calls| format!("{calls} calls"));
                let time = probation.time_left.map(|left| Secs(left).to_string());
                let left: Vec<String> = calls.into_iter().chain(time).collect();
                if !left.is_empty() {
                    write!(f, ": {} left", left.join(" or "))?;
                }
            }
            _ => {}
        }
        writeln!(f)?;
        writeln!(
            f,
            "  artifact  {} ({}, sha256 {})",
            info.artifact.display(),
            Bytes(info.artifact_len),
            info.sha256.get(..12).unwrap_or(&info.sha256)
        )?;
        write!(f, "  ")?;
        if let Some(built) = serving.built_at {
            write!(f, "built {} ago, ", Ago(now, built))?;
        }
        writeln!(f, "loaded {} ago", Ago(now, info.loaded_at))?;
        if let Some(metrics) = &serving.metrics {
            write_metrics(f, metrics)?;
        }
        if let Some(canary) = &self.canary {
            writeln!(f, "  canary    {canary}")?;
        }
        for kept in &self.kept {
            write!(
                f,
                "  kept      load #{} (for rollback, loaded {} ago)",
                kept.info.generation,
                Ago(now, kept.info.loaded_at)
            )?;
            match &kept.metrics {
                Some(metrics) => writeln!(
                    f,
                    ": {} calls, {} errors, {} panics",
                    metrics.calls(),
                    metrics.errors(),
                    metrics.panics()
                )?,
                None => writeln!(f)?,
            }
        }
        self.write_tail(f, now)
    }

    fn write_tail(&self, f: &mut fmt::Formatter<'_>, now: SystemTime) -> fmt::Result {
        for held in &self.held {
            writeln!(
                f,
                "  mapped    load #{} (closed): {}",
                held.info.generation,
                held.held
                    .as_deref()
                    .unwrap_or("the OS keeps it mapped (thread-local destructors)")
            )?;
        }
        if let Some(refusal) = &self.last_refusal {
            writeln!(
                f,
                "  refused   {} ago: {}",
                Ago(now, refusal.at),
                refusal.reason
            )?;
        }
        Ok(())
    }
}

/// One line per method called: calls, errors, panics, latency percentiles.
fn write_metrics(f: &mut fmt::Formatter<'_>, metrics: &VersionMetrics) -> fmt::Result {
    let called: Vec<_> = metrics.methods.iter().filter(|m| m.calls > 0).collect();
    if called.is_empty() {
        return writeln!(f, "  calls     none yet");
    }
    let width = called.iter().map(|m| m.method.len()).max().unwrap_or(0);
    for (i, method) in called.iter().enumerate() {
        let label = if i == 0 { "calls" } else { "" };
        write!(
            f,
            "  {label:<8}  {:<width$}  {:>9} calls {:>6} errors {:>6} panics",
            method.method, method.calls, method.errors, method.panics,
        )?;
        let latency = &method.latency;
        if let (Some(p50), Some(p99), Some(max)) =
            (latency.quantile(0.5), latency.quantile(0.99), latency.max())
        {
            write!(
                f,
                "  p50 {} p99 {} max {} ({} timed)",
                Nanos(p50),
                Nanos(p99),
                Nanos(max),
                latency.samples()
            )?;
        }
        writeln!(f)?;
    }
    let idle = metrics.methods.len() - called.len();
    if idle > 0 {
        writeln!(f, "  {:<8}  ({idle} other methods not called)", "")?;
    }
    Ok(())
}

/// A latency, in the unit that reads best.
struct Nanos(Duration);

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos < 10_000 {
            write!(f, "{nanos} ns")
        } else if nanos < 10_000_000 {
            write!(f, "{:.1} µs", nanos as f64 / 1e3)
        } else if nanos < 10_000_000_000 {
            write!(f, "{:.1} ms", nanos as f64 / 1e6)
        } else {
            write!(f, "{:.1} s", nanos as f64 / 1e9)
        }
    }
}

/// A time span in seconds, minutes or hours.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs_f64();
        if secs < 120.0 {
            write!(f, "{secs:.1} s")
        } else if secs < 7200.0 {
            write!(f, "{:.0} min", secs / 60.0)
        } else {
            write!(f, "{:.1} h", secs / 3600.0)
        }
    }
}

/// How long before `now` something happened.
struct Ago(SystemTime, SystemTime);

impl fmt::Display for Ago {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Secs(self.0.duration_since(self.1).unwrap_or_default()).fmt(f)
    }
}

/// A size in bytes, KiB or MiB.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0 as f64;
        if self.0 < 1 << 10 {
            write!(f, "{} B", self.0)
        } else if self.0 < 1 << 20 {
            write!(f, "{:.1} KiB", bytes / 1024.0)
        } else {
            write!(f, "{:.1} MiB", bytes / (1024.0 * 1024.0))
        }
    }
}

/// The metric names [`Status::export`] writes, each with the labels `module`, `method` and
/// `generation` (the load number) unless it says otherwise.
#[cfg(feature = "metrics")]
pub mod metric_names {
    /// Counter: calls that ran in the version.
    pub const CALLS: &str = "hotreload_calls_total";
    /// Counter: calls that returned `Err(..)` or failed without panicking.
    pub const ERRORS: &str = "hotreload_call_errors_total";
    /// Counter: calls that panicked.
    pub const PANICS: &str = "hotreload_call_panics_total";
    /// Gauge, with a `quantile` label (`0.5`, `0.9`, `0.99`, and `1` for the maximum): the
    /// latency of the timed calls, in seconds.
    pub const LATENCY: &str = "hotreload_call_latency_seconds";
    /// Gauge, labels `module` only: the load number of the serving version.
    pub const SERVING: &str = "hotreload_serving_generation";
    /// Gauge, labels `module` only: closed versions still mapped.
    pub const HELD: &str = "hotreload_held_versions";
}

#[cfg(feature = "metrics")]
impl Status {
    /// Writes these figures to the `metrics` crate's recorder (the host's exporter): for
    /// each module, the serving version's number and the versions held mapped, and for each
    /// loaded version (serving and kept) and each method called, the counts and latency
    /// quantiles. Counters are set to their absolute values, so exporting again only
    /// updates them.
    ///
    /// Each version is its own series (the `generation` label): a new series per reload, and
    /// the replaced version's stop changing.
    pub fn export(&self) {
        use metric_names::*;
        for module in &self.modules {
            let name = module.name.clone();
            if let Some(serving) = &module.serving {
                metrics::gauge!(SERVING, "module" => name.clone())
                    .set(serving.info.generation as f64);
            }
            metrics::gauge!(HELD, "module" => name.clone()).set(module.held.len() as f64);
            for version in module.serving.iter().chain(&module.kept) {
                let Some(metrics) = &version.metrics else {
                    continue;
                };
                let generation = metrics.generation.to_string();
                for method in metrics.methods.iter().filter(|m| m.calls > 0) {
                    let labels = [
                        ("module", name.clone()),
                        ("method", method.method.to_owned()),
                        ("generation", generation.clone()),
                    ];
                    metrics::counter!(CALLS, &labels).absolute(method.calls);
                    metrics::counter!(ERRORS, &labels).absolute(method.errors);
                    metrics::counter!(PANICS, &labels).absolute(method.panics);
                    for (quantile, label) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")] {
                        if let Some(latency) = method.latency.quantile(quantile) {
                            metrics::gauge!(LATENCY, with(&labels, label))
                                .set(latency.as_secs_f64());
                        }
                    }
                    if let Some(max) = method.latency.max() {
                        metrics::gauge!(LATENCY, with(&labels, "1")).set(max.as_secs_f64());
                    }
                }
            }
        }
    }
}

/// `labels` and a `quantile`.
#[cfg(feature = "metrics")]
fn with(labels: &[(&'static str, String); 3], quantile: &'static str) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .chain([metrics::Label::new("quantile", quantile)])
        .collect()
}
