//! Canary releases: a new build of a module serving a share of the calls beside the serving
//! version, promoted or aborted by its figures against the serving version's over the same
//! time.
//!
//! - [`CanaryOptions`] says where the build is, how calls are split ([`Split`]) and by which
//!   [`CanaryPolicy`] the runtime decides (or none: promote and abort by hand).
//! - The routing table lives in the module core (`access`): the serving version and, while a
//!   canary runs, a [`Slot`] with the canary's version, its state and its rule. A call with no
//!   canary running pays one extra load; a call while one runs draws from a thread-local
//!   generator (a share of calls) or hashes its key (a share of keys).
//! - A [`Trial`] is the host's record of one canary: both versions' meters, the serving
//!   version's figures when it began, the failures counted on the call path against the
//!   error budget, and whether it still takes calls. The policy's judge (a thread per canary,
//!   see `reloader`) reads it every [`CanaryPolicy::check_every`], and at once when the
//!   budget is spent.
//! - The transaction steps that start, promote and abort a canary are in
//!   `transaction::canary`.
//!
//! # State
//! The canary starts with a copy of the serving state (saved by the serving build, restored
//! by the canary's, as a reload would), and from then on each version has its own: calls
//! routed to one change only its state. On **promotion** the serving version's state is
//! carried into the canary's build, exactly as a reload of that build would carry it, and the
//! canary's own state is dropped: the serving state has seen every call outside the canary's
//! share, and it is the one a rollback returns to. On **abort** the canary's state is
//! retired with its build (its retire hook runs, its workers are stopped) and the serving
//! version goes on with its own state, which the canary never touched. Either way, what the
//! canary's calls wrote to its own state is not kept: keep what must outlive an experiment
//! outside the module's state.

use std::cell::Cell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::{Latency, Meter, Outcome};
use crate::version::Live;
use crate::{MethodMetrics, VersionInfo, VersionMetrics};

/// How to start a canary: its build, how calls are split, and the policy that decides.
#[derive(Debug, Clone)]
pub struct CanaryOptions {
    pub(crate) artifact: PathBuf,
    pub(crate) split: Split,
    pub(crate) policy: Option<CanaryPolicy>,
}

impl CanaryOptions {
    /// The build at `artifact` as the canary: a tenth of the calls, decided by
    /// [`CanaryPolicy::default`].
    pub fn new(artifact: impl Into<PathBuf>) -> Self {
        CanaryOptions {
            artifact: artifact.into(),
            split: Split::Calls(0.1),
            policy: Some(CanaryPolicy::default()),
        }
    }

    /// A share (0 to 1) of the calls, each drawn at random.
    pub fn share_of_calls(mut self, share: f64) -> Self {
        self.split = Split::Calls(share);
        self
    }

    /// A share (0 to 1) of the keys: a call made with a key ([`Pick::key`]) reaches the canary
    /// if its key is among them, always the same version for the same key. Calls made without
    /// a key go to the serving version.
    pub fn share_of_keys(mut self, share: f64) -> Self {
        self.split = Split::Keys(share);
        self
    }

    /// The policy that promotes or aborts the canary.
    pub fn policy(mut self, policy: CanaryPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// No policy: the canary runs until the host promotes or aborts it.
    pub fn manual(mut self) -> Self {
        self.policy = None;
        self
    }
}

/// Which calls a canary takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// This share of all calls, drawn at random per call.
    Calls(f64),
    /// This share of the keys calls are made with; calls without a key take none.
    Keys(f64),
}

impl Split {
    fn share(self) -> f64 {
        match self {
            Split::Calls(share) | Split::Keys(share) => share,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Split::Calls(share) => write!(f, "{:.1}% of calls", share * 100.0),
            Split::Keys(share) => write!(f, "{:.1}% of keys", share * 100.0),
        }
    }
}

/// When a canary is promoted or aborted, by its figures against the serving version's over
/// the same time, method by method.
///
/// It is aborted as soon as, for a method with at least [`judge_after`](Self::judge_after)
/// calls in the canary, its failure rate (errors and panics per call) exceeds the serving
/// version's by more than [`max_error_rate_increase`](Self::max_error_rate_increase), by
/// three standard errors at least (so that a canary as good as the serving version is not
/// aborted by chance, though the judge looks every [`check_every`](Self::check_every)); or,
/// with [`latency_samples`](Self::latency_samples) timed calls of the method on each side,
/// its p99 exceeds the serving version's times [`max_p99_ratio`](Self::max_p99_ratio) plus
/// [`latency_slack`](Self::latency_slack); or at once when its failures reach the
/// [`error_budget`](Self::error_budget) (counted on the call path: from that call on it takes
/// no more calls, though calls already running in it may still fail). It is promoted once it
/// has run [`min_duration`](Self::min_duration) and served [`min_calls`](Self::min_calls)
/// (and `judge_after`) calls within bounds. With a [`max_duration`](Self::max_duration), a
/// canary that has not earned promotion by then is aborted.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CanaryPolicy {
    /// Calls the canary serves before it may be promoted. Default 1,000.
    pub min_calls: u64,
    /// How long it runs before it may be promoted. Default 10 s.
    pub min_duration: Duration,
    /// Aborted if not promoted by then. Default: no limit.
    pub max_duration: Option<Duration>,
    /// How far the canary's failure rate may exceed the serving one's (0.01: one point).
    /// Default 0.01.
    pub max_error_rate_increase: f64,
    /// How many times the serving version's p99 the canary's may be. Default 2.
    pub max_p99_ratio: f64,
    /// Added to the latency bound, so that calls of a few microseconds are not judged by
    /// noise. Default 1 ms.
    pub latency_slack: Duration,
    /// Failed canary calls (errors and panics) after which it takes no more calls and is
    /// aborted; 0: no budget. Default 0. Errors a method returns count too: for a module
    /// whose calls fail now and then, leave room for its usual rate.
    pub error_budget: u64,
    /// A method's calls in the canary before its failure rate is judged. Default 100.
    pub judge_after: u64,
    /// Timed calls of a method on each side before their p99 are compared (a p99 from fewer
    /// is little more than the maximum). Default 200.
    pub latency_samples: u64,
    /// How often the judge reads the figures (at least 1 ms). Default 50 ms.
    pub check_every: Duration,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            min_calls: 1_000,
            min_duration: Duration::from_secs(10),
            max_duration: None,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 2.0,
            latency_slack: Duration::from_millis(1),
            error_budget: 0,
            judge_after: 100,
            latency_samples: 200,
            check_every: Duration::from_millis(50),
        }
    }
}

macro_rules! policy_setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)*) => {
        impl CanaryPolicy {
            $(
                $(#[$doc])*
                pub fn $field(mut self, $field: $ty) -> Self {
                    self.$field = $field.into();
                    self
                }
            )*
        }
    };
}

policy_setters! {
    /// See [`CanaryPolicy::min_calls`](#structfield.min_calls).
    min_calls: u64;
    /// See [`CanaryPolicy::min_duration`](#structfield.min_duration).
    min_duration: Duration;
    /// See [`CanaryPolicy::max_duration`](#structfield.max_duration).
    max_duration: Duration;
    /// See [`CanaryPolicy::max_error_rate_increase`](#structfield.max_error_rate_increase).
    max_error_rate_increase: f64;
    /// See [`CanaryPolicy::max_p99_ratio`](#structfield.max_p99_ratio).
    max_p99_ratio: f64;
    /// See [`CanaryPolicy::latency_slack`](#structfield.latency_slack).
    latency_slack: Duration;
    /// See [`CanaryPolicy::error_budget`](#structfield.error_budget).
    error_budget: u64;
    /// See [`CanaryPolicy::judge_after`](#structfield.judge_after).
    judge_after: u64;
    /// See [`CanaryPolicy::latency_samples`](#structfield.latency_samples).
    latency_samples: u64;
    /// See [`CanaryPolicy::check_every`](#structfield.check_every).
    check_every: Duration;
}

/// Which version a call goes to, for a call made through
/// [`Module::route`](crate::Module::route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The serving version.
    Serving,
    /// The canary if one runs and still takes calls; the serving version otherwise.
    Canary,
    /// By the canary's split: with a share of keys, the same version for the same key as long
    /// as the canary runs; with a share of calls, drawn like any call.
    Key(u64),
}

impl Pick {
    /// [`Pick::Key`] for any hashable key (a user id, a session). The hash is FNV-1a over
    /// the bytes the key's `Hash` writes: the same in every process and every build, so a
    /// fleet of processes puts a key on the same side (and every canary with the same share
    /// takes the same keys).
    pub fn key<K: Hash + ?Sized>(key: &K) -> Pick {
        let mut hasher = Fnv1a(0xcbf2_9ce4_8422_2325);
        key.hash(&mut hasher);
        Pick::Key(hasher.finish())
    }
}

/// FNV-1a, 64 bits. Written by hand: std's hashers may change between Rust releases, and the
/// few lines cost less than a dependency.
struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Figures of both versions over the canary's time so far (every method taken together).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CanaryFigures {
    /// How long the canary has run.
    pub elapsed: Duration,
    /// The serving version's calls since the canary began.
    pub serving: SideFigures,
    /// The canary's calls.
    pub canary: SideFigures,
}

/// One version's calls over a canary's time.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SideFigures {
    /// The version's load number.
    pub generation: u64,
    /// Calls.
    pub calls: u64,
    /// Calls that returned `Err(..)` or failed without panicking.
    pub errors: u64,
    /// Calls that panicked.
    pub panics: u64,
    /// Their latencies (timed calls, weighted).
    pub latency: Latency,
    /// The same per method, in the host's order.
    pub methods: Vec<MethodMetrics>,
}

impl SideFigures {
    /// Errors and panics per call (0 without calls).
    pub fn failure_rate(&self) -> f64 {
        per_call(self.errors + self.panics, self.calls)
    }

    /// The calls `now` holds beyond those of `before` (an earlier reading of the same meter).
    fn from_metrics(
        generation: u64,
        now: Option<&VersionMetrics>,
        before: Option<&VersionMetrics>,
    ) -> Self {
        let methods: Vec<MethodMetrics> = now
            .map(|now| now.methods.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|method| {
                let earlier = before.and_then(|b| b.method(&method.method));
                let was = |field: fn(&MethodMetrics) -> u64| earlier.map_or(0, field);
                MethodMetrics {
                    method: method.method.clone(),
                    calls: method.calls.saturating_sub(was(|m| m.calls)),
                    errors: method.errors.saturating_sub(was(|m| m.errors)),
                    panics: method.panics.saturating_sub(was(|m| m.panics)),
                    latency: match earlier {
                        Some(earlier) => method.latency.since(&earlier.latency),
                        None => method.latency.clone(),
                    },
                }
            })
            .collect();
        SideFigures {
            generation,
            calls: methods.iter().map(|m| m.calls).sum(),
            errors: methods.iter().map(|m| m.errors).sum(),
            panics: methods.iter().map(|m| m.panics).sum(),
            latency: Latency::of_methods(&methods),
            methods,
        }
    }
}

impl fmt::Display for SideFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "load #{}: {} calls, {} errors, {} panics ({:.2}% failed)",
            self.generation,
            self.calls,
            self.errors,
            self.panics,
            self.failure_rate() * 100.0
        )?;
        if let (Some(p50), Some(p99)) = (self.latency.quantile(0.5), self.latency.quantile(0.99)) {
            write!(f, ", p50 {p50:.1?}, p99 {p99:.1?}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CanaryFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after {:.1?}: canary {}; serving {}",
            self.elapsed, self.canary, self.serving
        )
    }
}

/// A canary in progress ([`HotReloader::canary`](crate::HotReloader::canary)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CanaryStatus {
    /// The canary's version.
    pub canary: VersionInfo,
    /// The version serving beside it.
    pub serving: VersionInfo,
    /// Which calls it takes.
    pub split: Split,
    /// The policy deciding it, if any.
    pub policy: Option<CanaryPolicy>,
    /// Whether it still takes calls (not once its error budget is spent).
    pub taking_calls: bool,
    /// Both versions' figures so far.
    pub figures: CanaryFigures,
}

impl fmt::Display for CanaryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "canary load #{} beside load #{}, {}{}, {}",
            self.canary.generation,
            self.serving.generation,
            self.split,
            if self.taking_calls {
                ""
            } else {
                " (closed: error budget spent)"
            },
            self.figures
        )
    }
}

/// What the policy makes of the figures now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Wait,
    Promote,
    Abort(String),
}

/// The policy's verdict on `figures`, given the failures the call path counted.
pub(crate) fn judge(policy: &CanaryPolicy, figures: &CanaryFigures, failures: u64) -> Decision {
    if policy.error_budget > 0 && failures >= policy.error_budget {
        return Decision::Abort(format!(
            "its error budget is spent: {failures} failed calls (budget {})",
            policy.error_budget
        ));
    }
    let judge_after = policy.judge_after.max(1);
    for ours in figures
        .canary
        .methods
        .iter()
        .filter(|m| m.calls >= judge_after)
    {
        let theirs = figures
            .serving
            .methods
            .iter()
            .find(|m| m.method == ours.method);
        if let Some(reason) =
            failing_more(policy, ours, theirs).or_else(|| slower(policy, ours, theirs))
        {
            return Decision::Abort(reason);
        }
    }
    let calls = figures.canary.calls;
    if calls >= policy.min_calls.max(judge_after) && figures.elapsed >= policy.min_duration {
        return Decision::Promote;
    }
    if policy
        .max_duration
        .is_some_and(|max| figures.elapsed >= max)
    {
        return Decision::Abort(format!(
            "not promoted within {:.1?}: {calls} calls (needs {})",
            figures.elapsed,
            policy.min_calls.max(judge_after)
        ));
    }
    Decision::Wait
}

/// Errors and panics per call of a method.
fn failure_rate(method: &MethodMetrics) -> f64 {
    per_call(method.errors + method.panics, method.calls)
}

/// `count` per call (0 without calls).
fn per_call(count: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        count as f64 / calls as f64
    }
}

/// Why the canary's `ours` fails more than the serving version's `theirs`, if it does: by
/// more than the margin, and by three standard errors of the difference at least (a
/// two-proportion test; the judge looks many times, so chance alone must rarely cross it).
fn failing_more(
    policy: &CanaryPolicy,
    ours: &MethodMetrics,
    theirs: Option<&MethodMetrics>,
) -> Option<String> {
    const STANDARD_ERRORS: f64 = 3.0;
    let (p, n) = (failure_rate(ours), ours.calls as f64);
    let (q, m) = theirs.map_or((0.0, 0), |t| (failure_rate(t), t.calls));
    let excess = p - q - policy.max_error_rate_increase;
    let spread = p * (1.0 - p) / n + if m > 0 { q * (1.0 - q) / m as f64 } else { 0.0 };
    (excess > 0.0 && excess >= STANDARD_ERRORS * spread.sqrt()).then(|| {
        format!(
            "`{}` failed {:.2}% of {} calls against {:.2}% of {m} serving (at most {:.2} points \
             more)",
            ours.method,
            p * 100.0,
            ours.calls,
            q * 100.0,
            policy.max_error_rate_increase * 100.0
        )
    })
}

/// Why the canary's `ours` is slower than the serving version's `theirs`, if it is, with
/// enough timed calls on both sides to say.
fn slower(
    policy: &CanaryPolicy,
    ours: &MethodMetrics,
    theirs: Option<&MethodMetrics>,
) -> Option<String> {
    let theirs = theirs?;
    let enough = policy.latency_samples.max(1);
    if ours.latency.samples() < enough || theirs.latency.samples() < enough {
        return None;
    }
    let (p99, serving_p99) = (ours.latency.quantile(0.99)?, theirs.latency.quantile(0.99)?);
    let bound = serving_p99.mul_f64(policy.max_p99_ratio.max(0.0)) + policy.latency_slack;
    (p99 > bound).then(|| {
        format!(
            "`{}` p99 {p99:.1?} against {serving_p99:.1?} serving (at most {bound:.1?}; {} and {} \
             timed calls)",
            ours.method,
            ours.latency.samples(),
            theirs.latency.samples()
        )
    })
}

/// The host's record of one canary, shared by its slot in the routing table, the reloader
/// and the policy's judge.
pub(crate) struct Trial {
    pub canary: VersionInfo,
    pub serving: VersionInfo,
    pub split: Split,
    pub policy: Option<CanaryPolicy>,
    started: Instant,
    serving_meter: Option<Arc<Meter>>,
    /// The serving version's figures when the canary began: its window starts there.
    serving_before: Option<VersionMetrics>,
    canary_meter: Option<Arc<Meter>>,
    /// Whether it still takes calls: cleared at once when its error budget is spent.
    open: AtomicBool,
    /// Failed calls routed to it, counted on the call path.
    failures: AtomicU64,
    /// Set when the canary is promoted or aborted: its judge stops.
    ended: Mutex<bool>,
    /// The module's artifact file when the canary began: a build written there meanwhile
    /// was refused, and is offered again once the canary ends.
    pub artifact_at_start: Option<crate::version::ArtifactIdentity>,
    wake: Condvar,
}

impl Trial {
    pub(crate) fn new(
        canary: &crate::version::LoadedVersion,
        serving: (VersionInfo, Option<Arc<Meter>>),
        split: Split,
        policy: Option<CanaryPolicy>,
        artifact: &std::path::Path,
    ) -> Self {
        let (serving, serving_meter) = serving;
        Trial {
            artifact_at_start: crate::version::ArtifactIdentity::of_path(artifact),
            serving_before: serving_meter.as_ref().map(|m| m.snapshot(&serving)),
            canary: canary.info(),
            serving,
            split,
            policy,
            started: Instant::now(),
            serving_meter,
            canary_meter: canary.meter.clone(),
            open: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            ended: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    /// Both versions' figures since the canary began.
    pub(crate) fn figures(&self) -> CanaryFigures {
        let serving_now = self
            .serving_meter
            .as_ref()
            .map(|m| m.snapshot(&self.serving));
        let canary_now = self.canary_meter.as_ref().map(|m| m.snapshot(&self.canary));
        CanaryFigures {
            elapsed: self.started.elapsed(),
            serving: SideFigures::from_metrics(
                self.serving.generation,
                serving_now.as_ref(),
                self.serving_before.as_ref(),
            ),
            canary: SideFigures::from_metrics(self.canary.generation, canary_now.as_ref(), None),
        }
    }

    /// Failed calls routed to the canary.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn status(&self) -> CanaryStatus {
        CanaryStatus {
            canary: self.canary.clone(),
            serving: self.serving.clone(),
            split: self.split,
            policy: self.policy,
            taking_calls: self.open.load(Ordering::Relaxed),
            figures: self.figures(),
        }
    }

    /// A call routed to the canary failed (an error or a panic): counted, and once the
    /// budget is spent the canary takes no more calls and its judge wakes.
    #[cold]
    #[inline(never)]
    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(policy) = &self.policy {
            if policy.error_budget > 0 && failures >= policy.error_budget {
                self.open.store(false, Ordering::Relaxed);
                // Under the judge's mutex, so that a judge about to wait sees the store.
                let _ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
                self.wake.notify_all();
            }
        }
    }

    /// After a call routed to the canary, how it ended.
    #[inline(always)]
    pub(crate) fn after_call(&self, outcome: Outcome) {
        if outcome != Outcome::Ok {
            self.failed();
        }
    }

    /// The canary stopped (promoted or aborted): no more calls, and its judge ends.
    pub(crate) fn end(&self) {
        self.open.store(false, Ordering::Relaxed);
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Waits up to `timeout`, or until the canary ends or its budget is spent; whether it
    /// has ended.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if *ended || !self.open.load(Ordering::Relaxed) {
            return *ended;
        }
        *self
            .wake
            .wait_timeout(ended, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// A canary in the routing table: its version, its state and its rule.
pub(crate) struct Slot {
    pub live: Live,
    pub trial: Arc<Trial>,
    /// A call whose draw (or mixed key) is below this goes to the canary.
    threshold: u64,
    by_keys: bool,
}

impl Slot {
    pub(crate) fn new(live: Live, trial: Arc<Trial>) -> Self {
        // `as` saturates: a share of 1 is `u64::MAX` (all but one draw in 2^64).
        let threshold = (trial.split.share().clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0) as u64;
        let by_keys = matches!(trial.split, Split::Keys(_));
        Slot {
            live,
            trial,
            threshold,
            by_keys,
        }
    }

    /// Whether a call made with `pick` (`None`: a plain call) goes to the canary.
    #[inline]
    pub(crate) fn takes(&self, pick: Option<Pick>) -> bool {
        if !self.trial.open.load(Ordering::Relaxed) {
            return false;
        }
        match pick {
            None if self.by_keys => false,
            None => draw() < self.threshold,
            Some(Pick::Serving) => false,
            Some(Pick::Canary) => true,
            Some(Pick::Key(key)) if self.by_keys => mix(key) < self.threshold,
            Some(Pick::Key(_)) => draw() < self.threshold,
        }
    }
}

std::thread_local! {
    /// This thread's generator for routing draws (xorshift64*): seeded at its first draw.
    static DRAWS: Cell<u64> = const { Cell::new(0) };
}

/// A uniformly distributed draw, from this thread's generator. Written by hand: a draw costs
/// a few instructions on the call path, and no crate of the workspace's keeps a generator
/// per thread without a dependency for it.
fn draw() -> u64 {
    DRAWS.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A non-zero seed that differs between threads and processes.
#[cold]
fn seed() -> u64 {
    use std::hash::BuildHasher;
    let hashed = std::collections::hash_map::RandomState::new()
        .hash_one((std::thread::current().id(), Instant::now()));
    hashed | 1
}

/// Spreads a key (user ids are often consecutive) over the whole range: splitmix64's
/// finaliser.
fn mix(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One version's figures with a single method, `m`.
    fn side(generation: u64, calls: u64, errors: u64) -> SideFigures {
        let method = MethodMetrics {
            method: "m".into(),
            calls,
            errors,
            panics: 0,
            latency: Latency::default(),
        };
        SideFigures {
            generation,
            calls,
            errors,
            panics: 0,
            latency: Latency::default(),
            methods: vec![method],
        }
    }

    fn figures(elapsed: Duration, serving: SideFigures, canary: SideFigures) -> CanaryFigures {
        CanaryFigures {
            elapsed,
            serving,
            canary,
        }
    }

    #[test]
    fn a_canary_within_bounds_is_promoted_only_after_its_calls_and_its_time() {
        let policy = CanaryPolicy::default()
            .min_calls(1000)
            .min_duration(Duration::from_secs(5));
        let early = figures(Duration::from_secs(1), side(1, 9000, 0), side(2, 1000, 0));
        assert_eq!(judge(&policy, &early, 0), Decision::Wait);
        let few = figures(Duration::from_secs(6), side(1, 9000, 0), side(2, 999, 0));
        assert_eq!(judge(&policy, &few, 0), Decision::Wait);
        let ready = figures(Duration::from_secs(6), side(1, 9000, 9), side(2, 1000, 5));
        assert_eq!(judge(&policy, &ready, 5), Decision::Promote);
    }

    #[test]
    fn a_canary_failing_more_than_the_serving_version_is_aborted_once_judged() {
        let policy = CanaryPolicy::default().judge_after(100);
        let unjudged = figures(Duration::from_secs(1), side(1, 900, 0), side(2, 99, 50));
        assert_eq!(judge(&policy, &unjudged, 50), Decision::Wait);
        let judged = figures(Duration::from_secs(1), side(1, 900, 9), side(2, 200, 50));
        // 25% against 1%: far beyond one point more.
        let decision = judge(&policy, &judged, 50);
        assert!(
            matches!(&decision, Decision::Abort(r) if r.contains("`m` failed 25.00% of 200 calls")),
            "{decision:?}"
        );
    }

    #[test]
    fn a_canary_as_good_as_the_serving_version_is_not_aborted_by_chance() {
        let policy = CanaryPolicy::default()
            .min_calls(1_000_000)
            .max_error_rate_increase(0.01);
        // 7% against 5%: two points more, but within three standard errors (1.2 of them
        // beyond the margin) of 1000 calls.
        let close = figures(
            Duration::from_secs(1),
            side(1, 20_000, 1_000),
            side(2, 1_000, 70),
        );
        assert_eq!(judge(&policy, &close, 70), Decision::Wait);
        // The same rates over ten times the calls are beyond doubt.
        let sure = figures(
            Duration::from_secs(9),
            side(1, 200_000, 10_000),
            side(2, 10_000, 700),
        );
        assert!(matches!(judge(&policy, &sure, 700), Decision::Abort(_)));
    }

    #[test]
    fn latencies_are_compared_only_with_enough_timed_calls_on_both_sides() {
        let timed = |nanos: u64, count: u64| {
            let mut latency = Latency::default();
            for _ in 0..count {
                latency = latency.plus(&Latency::of(nanos));
            }
            latency
        };
        let with = |mut side: SideFigures, latency: Latency| {
            side.methods[0].latency = latency;
            side
        };
        let policy = CanaryPolicy::default()
            .min_calls(1_000_000)
            .latency_samples(200)
            .latency_slack(Duration::ZERO);
        let serving = with(side(1, 10_000, 0), timed(10_000, 300));
        let few = figures(
            Duration::ZERO,
            serving.clone(),
            with(side(2, 500, 0), timed(50_000, 199)),
        );
        assert_eq!(judge(&policy, &few, 0), Decision::Wait);
        let enough = figures(
            Duration::ZERO,
            serving,
            with(side(2, 500, 0), timed(50_000, 200)),
        );
        let decision = judge(&policy, &enough, 0);
        assert!(
            matches!(&decision, Decision::Abort(r) if r.contains("p99") && r.contains("200 and 300 timed")),
            "{decision:?}"
        );
    }

    #[test]
    fn promotion_waits_for_the_calls_it_judges_by() {
        let policy = CanaryPolicy::default()
            .min_calls(10)
            .min_duration(Duration::ZERO)
            .judge_after(100);
        let f = figures(Duration::from_secs(1), side(1, 100, 0), side(2, 50, 0));
        assert_eq!(judge(&policy, &f, 0), Decision::Wait);
    }

    #[test]
    fn a_spent_budget_aborts_whatever_the_rates() {
        let policy = CanaryPolicy::default().error_budget(10);
        let f = figures(Duration::ZERO, side(1, 0, 0), side(2, 10, 10));
        assert!(matches!(judge(&policy, &f, 10), Decision::Abort(r) if r.contains("budget")));
    }

    #[test]
    fn an_unpromoted_canary_is_aborted_at_its_deadline() {
        let policy = CanaryPolicy::default().max_duration(Duration::from_secs(3));
        let f = figures(Duration::from_secs(3), side(1, 10, 0), side(2, 5, 0));
        assert!(matches!(judge(&policy, &f, 0), Decision::Abort(r) if r.contains("not promoted")));
    }

    #[test]
    fn mixed_keys_split_consecutive_ids_evenly() {
        let threshold = u64::MAX / 4;
        let taken = (0..100_000u64).filter(|&k| mix(k) < threshold).count();
        // A quarter, within five standard deviations (137).
        assert!((24_315..=25_685).contains(&taken), "{taken}");
    }
}
