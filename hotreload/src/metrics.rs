//! Per-version call metrics: calls, errors, panics and a latency histogram for each method of
//! each loaded version.
//!
//! The counting is on the call path, so it must cost next to nothing and must not make calls
//! from several cores contend. Each thread gets a slot of its own (a small number, handed back
//! when the thread ends), and each version keeps one block of counters per slot, made the first
//! time that thread calls the version: a call reads and writes only its own thread's counters,
//! with a relaxed load and a relaxed store (no read-modify-write instruction, no cache line
//! shared with another core). Readers add the slots up. Threads beyond the first [`SLOTS`]
//! alive at once share one block, counted with atomic additions.
//!
//! Timing a call reads the clock twice (about 50 ns here), several times the cost of the call
//! itself, so by default a thread times its first calls of each method and then one call in
//! 64 ([`MetricsConfig`]). The histogram has four buckets per power of two (each about 19%
//! wide) from 16 ns to about 34 s.
//!
//! `metrics`-the-crate (behind the `metrics` feature) gets the same figures through
//! [`HotReloader::export_metrics`](crate::HotReloader::export_metrics): exporting reads the
//! counters, it never adds work to a call.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How a module's calls are measured: set with
/// [`ModuleOptions::metrics`](crate::ModuleOptions::metrics).
///
/// Counting calls, errors and panics costs a few nanoseconds per call (the benchmark measures
/// it) and is on unless metrics are [`off`](Self::off); the latency of a call is measured for
/// the first calls of each method on each thread (strictly: in each thread's slot of
/// counters, which a thread that ends hands on with its counts), then for one call in
/// `every` (rounded up to a power of two), weighted in the histogram for the calls it
/// stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub(crate) on: bool,
    pub(crate) time_first: u64,
    /// A power of two, minus one.
    pub(crate) time_mask: u64,
}

impl Default for MetricsConfig {
    /// On: the first 256 calls of each method on each thread timed, then one in 64.
    fn default() -> Self {
        MetricsConfig::sampled(256, 64)
    }
}

impl MetricsConfig {
    /// Nothing measured: the call path skips the metrics with one branch.
    pub fn off() -> Self {
        MetricsConfig {
            on: false,
            time_first: 0,
            time_mask: 0,
        }
    }

    /// Every call timed (about 50 ns more per call on a machine whose clock is the TSC).
    pub fn every_call() -> Self {
        MetricsConfig::sampled(0, 1)
    }

    /// The first `first` calls of each method on each thread timed, then one call in `every`
    /// (rounded up to a power of two; 0 counts as 1).
    pub fn sampled(first: u64, every: u64) -> Self {
        MetricsConfig {
            on: true,
            time_first: first,
            time_mask: every.max(1).checked_next_power_of_two().unwrap_or(1 << 63) - 1,
        }
    }

    /// Whether calls are measured at all.
    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// How many threads alive at once get counters of their own.
pub(crate) const SLOTS: usize = 64;

/// Buckets of the latency histogram: below 16 ns, then four per power of two from 2^4 ns to
/// 2^36 ns (about 69 s; the last bucket also holds everything longer).
const BUCKETS: usize = 1 + 4 * 32;
const FIRST_EXPONENT: u32 = 4;
const LAST_EXPONENT: u32 = FIRST_EXPONENT + 31;

/// The bucket of a latency of `nanos`.
fn bucket(nanos: u64) -> usize {
    if nanos < 1 << FIRST_EXPONENT {
        return 0;
    }
    let exponent = (63 - nanos.leading_zeros()).min(LAST_EXPONENT);
    let quarter = if exponent == 63 - nanos.leading_zeros() {
        ((nanos >> (exponent - 2)) & 3) as usize
    } else {
        3
    };
    1 + (exponent - FIRST_EXPONENT) as usize * 4 + quarter
}

/// The latencies bucket `index` holds: `[low, high)` in nanoseconds.
fn bucket_bounds(index: usize) -> (u64, u64) {
    if index == 0 {
        return (0, 1 << FIRST_EXPONENT);
    }
    let exponent = FIRST_EXPONENT + ((index - 1) / 4) as u32;
    let quarter = ((index - 1) % 4) as u64;
    let step = 1u64 << (exponent - 2);
    ((4 + quarter) * step, (5 + quarter) * step)
}

/// One method's counters in one slot of one version.
struct Cells {
    calls: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    /// Calls timed.
    timed: AtomicU64,
    /// Per bucket, the calls the timed ones in it stand for (see `Probe::started`).
    latency: [AtomicU64; BUCKETS],
}

impl Cells {
    fn new() -> Self {
        Cells {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            timed: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Adds `n` to `counter`, returning what it held: with a load and a store when one thread
/// only writes it (a slot's owner), else with an atomic addition (the shared block).
#[inline(always)]
fn add(counter: &AtomicU64, n: u64, single_writer: bool) -> u64 {
    if single_writer {
        let held = counter.load(Ordering::Relaxed);
        counter.store(held + n, Ordering::Relaxed);
        held
    } else {
        counter.fetch_add(n, Ordering::Relaxed)
    }
}

/// Adds one to `counter`, returning what it held (see [`add`]).
#[inline(always)]
fn bump(counter: &AtomicU64, single_writer: bool) -> u64 {
    add(counter, 1, single_writer)
}

/// How a measured call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It returned a value (not an `Err`).
    Ok,
    /// It returned `Err(..)`, or its entry failed without panicking.
    Error,
    /// It panicked.
    Panic,
}

/// The counters of one loaded version (see the module's docs).
pub(crate) struct Meter {
    /// Unique in the process (never reused): what this thread's `LAST` names.
    id: u64,
    /// Per slot, a block of one `Cells` per method (`methods.len()` of them), made by the
    /// slot's thread at its first call and freed with the meter; null until then.
    slots: [AtomicPtr<Cells>; SLOTS],
    /// The block the threads beyond the slots share.
    shared: Box<[Cells]>,
    /// The methods counted: the host's, in its order (a host call's index is its place
    /// here), then the build's others (called only by other modules).
    methods: Box<[Box<str>]>,
    time_first: u64,
    time_mask: u64,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

/// A call being measured: [`Probe::finish`] records how it ended.
pub(crate) struct Probe<'a> {
    cells: &'a Cells,
    single_writer: bool,
    /// When a timed call started, and how many calls it stands for: 1 among a thread's first
    /// calls (all timed), `every` after them (one in `every` timed).
    started: Option<(Instant, u64)>,
}

impl Probe<'_> {
    #[inline(always)]
    pub(crate) fn finish(self, outcome: Outcome) {
        if outcome != Outcome::Ok || self.started.is_some() {
            self.finish_rare(outcome);
        }
    }

    /// An error, a panic or a timed call: not the common case.
    #[cold]
    #[inline(never)]
    fn finish_rare(self, outcome: Outcome) {
        record(self.cells, self.single_writer, outcome);
        if let Some((started, weight)) = self.started {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = add(
                &self.cells.latency[bucket(nanos)],
                weight,
                self.single_writer,
            );
            bump(&self.cells.timed, self.single_writer);
        }
    }
}

impl Meter {
    pub(crate) fn new(methods: Box<[Box<str>]>, config: MetricsConfig) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Meter {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            slots: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            shared: (0..methods.len()).map(|_| Cells::new()).collect(),
            methods,
            time_first: config.time_first,
            time_mask: config.time_mask,
        }
    }

    /// Counts a call of the host's method `method` (its index in the host's methods) on this
    /// thread, and starts its clock if this call is timed.
    #[inline(always)]
    pub(crate) fn start(&self, method: usize) -> Option<Probe<'_>> {
        let (cells, single_writer) = self.cells(method)?;
        Some(self.count(cells, single_writer))
    }

    /// Counts a call of `method` that has returned, with how it ended, without timing it: for
    /// a caller that keeps nothing across the call. Right after the call, nested calls
    /// included (each counts once it has returned, before the one it is nested in).
    #[inline(always)]
    pub(crate) fn count_returned(&self, method: usize, outcome: Outcome) {
        if let Some((cells, single_writer)) = self.cells(method) {
            bump(&cells.calls, single_writer);
            if outcome != Outcome::Ok {
                record(cells, single_writer, outcome);
            }
        }
    }

    /// This thread's counters for `method`, and whether this thread alone writes them.
    #[inline(always)]
    fn cells(&self, method: usize) -> Option<(&Cells, bool)> {
        // The thread's last meter: its own block, without the walk from the meter to it.
        let (id, block, len) = LAST.get();
        if id == self.id && method < len {
            // SAFETY: `LAST` holds this thread's block of this meter (`id` is never reused, so
            // the meter is the one that made it and is alive: `self`), `len` cells long; the
            // block lives as long as the meter.
            return Some((unsafe { &*block.add(method) }, true));
        }
        self.cells_here(method)
    }

    /// `cells` when this thread's last meter was another (or none).
    #[cold]
    #[inline(never)]
    fn cells_here(&self, method: usize) -> Option<(&Cells, bool)> {
        if method >= self.methods.len() {
            return None;
        }
        // The meter before the last: calls that alternate between two versions (a canary
        // beside the serving one) find their block here, and it becomes the last again.
        let (id, block, len) = BEFORE_LAST.get();
        if id == self.id {
            BEFORE_LAST.set(LAST.replace((id, block, len)));
            // SAFETY: as in `cells`: `BEFORE_LAST` held this thread's block of this meter,
            // `len` (its method count: `method` is in bounds, checked above) cells long.
            return Some((unsafe { &*block.add(method) }, true));
        }
        let Some(slot) = self.slots.get(this_thread_slot()) else {
            return Some((&self.shared[method], false));
        };
        let block = slot.load(Ordering::Acquire);
        let block = if block.is_null() {
            self.first_call_here(slot)
        } else {
            block
        };
        BEFORE_LAST.set(LAST.replace((self.id, block, self.methods.len())));
        // SAFETY: a non-null slot holds a block of `methods.len()` `Cells` (made by
        // `first_call_here`, published with a release store, read with an acquire load), freed
        // only when the meter is dropped, and `method` is in bounds (checked above).
        Some((unsafe { &*block.add(method) }, true))
    }

    #[inline(always)]
    fn count<'a>(&self, cells: &'a Cells, single_writer: bool) -> Probe<'a> {
        let made = bump(&cells.calls, single_writer);
        let timed = made < self.time_first || made & self.time_mask == 0;
        Probe {
            cells,
            single_writer,
            started: if timed {
                Some((Instant::now(), self.weight(made)))
            } else {
                None
            },
        }
    }

    /// How many calls the timed call number `made` stands for in the histogram.
    fn weight(&self, made: u64) -> u64 {
        if made < self.time_first {
            1
        } else {
            self.time_mask + 1
        }
    }

    /// The slot's block, made now: only the slot's owner thread makes it, so no other store
    /// can race this one.
    #[cold]
    #[inline(never)]
    fn first_call_here(&self, slot: &AtomicPtr<Cells>) -> *mut Cells {
        let block: Box<[Cells]> = (0..self.methods.len()).map(|_| Cells::new()).collect();
        let block = Box::into_raw(block).cast::<Cells>();
        slot.store(block, Ordering::Release);
        block
    }

    /// The blocks made so far.
    fn blocks(&self) -> impl Iterator<Item = &[Cells]> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let block = slot.load(Ordering::Acquire);
                // SAFETY: as in `start`: a non-null slot holds a live block of
                // `methods.len()` cells until the meter is dropped.
                (!block.is_null())
                    .then(|| unsafe { std::slice::from_raw_parts(block, self.methods.len()) })
            })
            .chain(std::iter::once(&*self.shared))
    }

    /// The place of the method called `name` (as `start` takes it), if it is counted.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.methods.iter().position(|method| &**method == name)
    }

    /// What was counted so far for the version `info` describes.
    pub(crate) fn snapshot(&self, info: &crate::VersionInfo) -> VersionMetrics {
        VersionMetrics {
            module: info.module.clone(),
            generation: info.generation,
            methods: self.read(),
        }
    }

    /// What was counted so far, added up over the threads.
    pub(crate) fn read(&self) -> Vec<MethodMetrics> {
        let blocks: Vec<&[Cells]> = self.blocks().collect();
        self.methods
            .iter()
            .enumerate()
            .map(|(index, method)| {
                let mut sum = MethodMetrics {
                    method: method.to_string(),
                    calls: 0,
                    errors: 0,
                    panics: 0,
                    latency: Latency::default(),
                };
                let mut latency = [0u64; BUCKETS];
                let mut timed = 0;
                for cells in blocks.iter().map(|block| &block[index]) {
                    sum.calls += cells.calls.load(Ordering::Relaxed);
                    sum.errors += cells.errors.load(Ordering::Relaxed);
                    sum.panics += cells.panics.load(Ordering::Relaxed);
                    timed += cells.timed.load(Ordering::Relaxed);
                    for (total, count) in latency.iter_mut().zip(&cells.latency) {
                        *total += count.load(Ordering::Relaxed);
                    }
                }
                sum.latency = Latency::from_dense(&latency, timed);
                sum
            })
            .collect()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let block = *slot.get_mut();
            if !block.is_null() {
                let block = std::ptr::slice_from_raw_parts_mut(block, self.methods.len());
                // SAFETY: made by `first_call_here` with `Box::into_raw` of a boxed slice of
                // this length, and freed only here, once (the meter is going away: no call
                // counts in it any more).
                drop(unsafe { Box::from_raw(block) });
            }
        }
    }
}

/// Counts an error or a panic.
#[cold]
#[inline(never)]
fn record(cells: &Cells, single_writer: bool, outcome: Outcome) {
    match outcome {
        Outcome::Ok => {}
        Outcome::Error => {
            bump(&cells.errors, single_writer);
        }
        Outcome::Panic => {
            bump(&cells.panics, single_writer);
        }
    }
}

// -- Thread slots -------------------------------------------------------------------------

/// No slot asked for yet on this thread.
const UNASSIGNED: u32 = u32::MAX;
/// The thread counts in the shared block (all slots taken, or the thread is ending).
const SHARED: u32 = SLOTS as u32;

std::thread_local! {
    /// This thread's slot (or `UNASSIGNED`, or `SHARED`). `const`-initialised and without a
    /// destructor: reading it costs one load.
    static SLOT: Cell<u32> = const { Cell::new(UNASSIGNED) };
    /// Hands the slot back when the thread ends.
    static RETURN_SLOT: SlotReturn = const { SlotReturn };
    /// The meter this thread counted in last (its id; 0: none), and its block there and that
    /// block's length. `const`-initialised, without a destructor.
    static LAST: Cell<(u64, *const Cells, usize)> = const { Cell::new((0, std::ptr::null(), 0)) };
    /// The meter this thread counted in before `LAST`'s, the same way.
    static BEFORE_LAST: Cell<(u64, *const Cells, usize)> =
        const { Cell::new((0, std::ptr::null(), 0)) };
}

/// Slots handed back by threads that ended, and the next never used.
static FREE_SLOTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

struct SlotReturn;

impl Drop for SlotReturn {
    fn drop(&mut self) {
        // No more counting in the slot's block by way of `LAST` either.
        let _ = LAST.try_with(|last| last.set((0, std::ptr::null(), 0)));
        let _ = BEFORE_LAST.try_with(|last| last.set((0, std::ptr::null(), 0)));
        let Ok(slot) = SLOT.try_with(|slot| slot.replace(SHARED)) else {
            return;
        };
        if (slot as usize) < SLOTS {
            // The next thread to take the slot goes on from the counts this thread left: the
            // mutex orders this thread's last stores before its first loads.
            FREE_SLOTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(slot);
        }
    }
}

#[inline(always)]
fn this_thread_slot() -> usize {
    match SLOT.try_with(Cell::get) {
        Ok(UNASSIGNED) => assign_slot(),
        Ok(slot) => slot as usize,
        Err(_) => SLOTS,
    }
}

#[cold]
#[inline(never)]
fn assign_slot() -> usize {
    // Without a way to hand the slot back (the thread is ending), it shares.
    if RETURN_SLOT.try_with(|_| ()).is_err() {
        return SLOTS;
    }
    let slot = FREE_SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .or_else(|| {
            NEXT_SLOT
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                    (next < SHARED).then_some(next + 1)
                })
                .ok()
        })
        .unwrap_or(SHARED);
    let _ = SLOT.try_with(|cell| cell.set(slot));
    slot as usize
}

// -- What a reader gets ---------------------------------------------------------------------

/// One loaded version's metrics, per method the host calls.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VersionMetrics {
    /// The module's name.
    pub module: String,
    /// The version's load number.
    pub generation: u64,
    /// Each method the host was compiled with, in its order.
    pub methods: Vec<MethodMetrics>,
}

impl VersionMetrics {
    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&MethodMetrics> {
        self.methods.iter().find(|m| m.method == name)
    }

    /// Calls of every method.
    pub fn calls(&self) -> u64 {
        self.methods.iter().map(|m| m.calls).sum()
    }

    /// Errors of every method.
    pub fn errors(&self) -> u64 {
        self.methods.iter().map(|m| m.errors).sum()
    }

    /// Panics of every method.
    pub fn panics(&self) -> u64 {
        self.methods.iter().map(|m| m.panics).sum()
    }

    /// Every method's latencies in one histogram.
    pub fn latency(&self) -> Latency {
        Latency::of_methods(&self.methods)
    }
}

/// One method's metrics in one version.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MethodMetrics {
    /// The method's name.
    pub method: String,
    /// Calls that ran in this version (each counted when it begins).
    pub calls: u64,
    /// Calls that returned `Err(..)` (for a method whose return type is a `Result`), or whose
    /// entry failed without panicking.
    pub errors: u64,
    /// Calls that panicked (the panic was contained).
    pub panics: u64,
    /// The latencies of the timed calls.
    pub latency: Latency,
}

/// A histogram of call latencies: four buckets per power of two (each about 19% wide), from
/// below 16 ns to about 69 s (the last bucket holds everything longer).
///
/// Each timed call counts for the calls it stands for: 1 among a thread's first calls of a
/// method (all timed), `every` after them (one in `every` timed; see [`MetricsConfig`]), so
/// that quantiles describe all the calls, not the first ones mostly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    /// The non-empty buckets (index, calls they stand for), in order: a version's metrics
    /// outlive it in [`RetiredVersion`](crate::RetiredVersion), so they stay small.
    counts: Vec<(u16, u64)>,
    /// How many calls were timed.
    timed: u64,
}

impl Latency {
    /// One timed call of `nanos`.
    #[cfg(test)]
    pub(crate) fn of(nanos: u64) -> Self {
        Latency {
            counts: vec![(bucket(nanos) as u16, 1)],
            timed: 1,
        }
    }

    fn from_dense(buckets: &[u64; BUCKETS], timed: u64) -> Self {
        Latency {
            counts: (0u16..)
                .zip(buckets)
                .filter(|(_, count)| **count > 0)
                .map(|(index, count)| (index, *count))
                .collect(),
            timed,
        }
    }

    /// How many calls were timed.
    pub fn samples(&self) -> u64 {
        self.timed
    }

    /// How many calls the histogram stands for (each timed call weighted, see above).
    pub fn weight(&self) -> u64 {
        self.counts.iter().map(|(_, count)| count).sum()
    }

    /// The latency below which a share `q` (0 to 1) of the calls fall, as the middle of its
    /// bucket; `None` before any call was timed.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let weight = self.weight();
        if weight == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * weight as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let (index, _) = self.counts.iter().find(|(_, count)| {
            seen += count;
            seen >= rank
        })?;
        let (low, high) = bucket_bounds(usize::from(*index));
        Some(Duration::from_nanos(low + (high - low) / 2))
    }

    /// The latencies of `methods` in one histogram.
    pub(crate) fn of_methods(methods: &[MethodMetrics]) -> Latency {
        methods
            .iter()
            .fold(Latency::default(), |all, m| all.plus(&m.latency))
    }

    /// This histogram with `other`'s calls added (the methods of a version taken together).
    pub(crate) fn plus(&self, other: &Latency) -> Latency {
        let mut counts = self.counts.clone();
        for &(index, count) in &other.counts {
            match counts.binary_search_by_key(&index, |(i, _)| *i) {
                Ok(at) => counts[at].1 += count,
                Err(at) => counts.insert(at, (index, count)),
            }
        }
        Latency {
            counts,
            timed: self.timed + other.timed,
        }
    }

    /// The calls this histogram holds beyond those of `earlier`, a reading of the same
    /// counters taken before (the calls of a window).
    pub(crate) fn since(&self, earlier: &Latency) -> Latency {
        let counts = self
            .counts
            .iter()
            .map(|&(index, count)| {
                let before = earlier
                    .counts
                    .binary_search_by_key(&index, |(i, _)| *i)
                    .map_or(0, |at| earlier.counts[at].1);
                (index, count.saturating_sub(before))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        Latency {
            counts,
            timed: self.timed.saturating_sub(earlier.timed),
        }
    }

    /// The upper bound of the highest bucket holding a timed call.
    pub fn max(&self) -> Option<Duration> {
        let (index, _) = self.counts.last()?;
        Some(Duration::from_nanos(bucket_bounds(usize::from(*index)).1))
    }

    /// Each non-empty bucket: its bounds `[low, high)` and how many calls it stands for.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, Duration, u64)> + '_ {
        self.counts.iter().map(|(index, count)| {
            let (low, high) = bucket_bounds(usize::from(*index));
            (
                Duration::from_nanos(low),
                Duration::from_nanos(high),
                *count,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_the_bucket_whose_bounds_hold_it() {
        for nanos in (0..5000).chain([1 << 20, (1 << 30) + 12345, 1 << 34, (1 << 35) - 1]) {
            let (low, high) = bucket_bounds(bucket(nanos));
            assert!(low <= nanos && nanos < high, "{nanos} in [{low}, {high})");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // Contiguous: each bucket starts where the last ended.
        for index in 1..BUCKETS {
            assert_eq!(
                bucket_bounds(index - 1).1,
                bucket_bounds(index).0,
                "{index}"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_buckets_in_order() {
        let mut dense = [0; BUCKETS];
        dense[bucket(100)] = 90;
        dense[bucket(10_000)] = 10;
        let latency = Latency::from_dense(&dense, 100);
        let p50 = latency.quantile(0.5).unwrap().as_nanos() as u64;
        let p99 = latency.quantile(0.99).unwrap().as_nanos() as u64;
        assert!((90..=112).contains(&p50), "{p50}");
        assert!((8192..=10240).contains(&p99), "{p99}");
        assert_eq!(latency.samples(), 100);
        assert!(latency.max().unwrap() >= Duration::from_nanos(10_000));
    }

    fn names() -> Box<[Box<str>]> {
        ["a".into(), "b".into()].into()
    }

    #[test]
    fn a_thread_alternating_between_meters_counts_each_call_in_its_own() {
        let first = Meter::new(names(), MetricsConfig::off());
        for round in 0..3 {
            // A meter made (and dropped) in between: its id is new, never the cached one's.
            let second = Meter::new(names(), MetricsConfig::off());
            for i in 0..10 {
                first.start(i % 2).unwrap().finish(Outcome::Ok);
                second.start(1).unwrap().finish(Outcome::Error);
            }
            let read = second.read();
            assert_eq!((read[0].calls, read[1].calls, read[1].errors), (0, 10, 10));
            let read = first.read();
            assert_eq!(
                (read[0].calls, read[1].calls),
                (5 * (round + 1), 5 * (round + 1))
            );
        }
    }

    #[test]
    fn counts_from_several_threads_add_up() {
        let meter = Meter::new(names(), MetricsConfig::sampled(10, 4));
        // All alive at once, so each has a slot of its own (a thread that ends hands its slot,
        // and the counts in it, to the next).
        let together = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    together.wait();
                    for i in 0..1000 {
                        let probe = meter.start(i % 2).unwrap();
                        probe.finish(if i % 10 == 0 {
                            Outcome::Error
                        } else {
                            Outcome::Ok
                        });
                    }
                    together.wait();
                });
            }
        });
        let read = meter.read();
        assert_eq!(read[0].calls + read[1].calls, 4000);
        assert_eq!(read[0].errors, 400);
        // Per thread and method: the first 10 calls, then those whose count is a multiple of
        // 4 among the other 490 (12, 16, ..., 496).
        assert_eq!(read[0].latency.samples(), 4 * (10 + 122));
        assert!(meter.start(2).is_none());
    }
}
