//! A canary's transactions (see `crate::canary` for the routing and the policy):
//!
//! - [`start`]: steps 1 to 3 of a reload on the canary's build (staged, opened and verified
//!   like any build), then step 4 on a copy: the serving state is saved by the serving build
//!   and restored by the canary's, and the canary goes into the routing table beside the
//!   serving version, which keeps its own state. The serving version is not replaced.
//! - [`promote`]: the canary leaves the routing table and its own state is dropped; its
//!   version is then swapped in by steps 3b to 6 of a reload (`swap_in`), with the serving
//!   state carried into it, so every rule of a reload applies (and its failure leaves the
//!   serving version as it was).
//! - [`abort`]: the canary leaves the routing table; its state is retired with its code and
//!   its version closed. The serving version and its state were never touched.
//!
//! Each runs under the reloader's transaction lock, like a reload.

use std::sync::Arc;

use super::{StepTimings, close_refused, close_unused, commit, load_verified, quiesce};
use crate::canary::{CanaryFigures, CanaryOptions, Slot, Split, Trial};
use crate::error::HotError;
use crate::module::{ModuleCore, ModuleSpec};
use crate::version::Live;
use crate::{ReloadReport, RetiredVersion, VersionInfo};

/// Starts a canary of `core` from `options`' build: its record, and the time each step took.
pub(crate) fn start(
    core: &Arc<ModuleCore>,
    options: &CanaryOptions,
    registry: &[Arc<ModuleCore>],
) -> Result<(Arc<Trial>, StepTimings), HotError> {
    let name = &core.spec.name;
    let mark = core.access.begin_transaction(name)?;
    core.no_canary()?;
    let serving = refuse_unsupported(core, options)?;
    let mut book = core.book();
    let generation = book.next_generation;
    book.next_generation += 1;
    let _span = tracing::info_span!("canary", module = %name, generation).entered();
    let spec = ModuleSpec {
        artifact: std::path::absolute(&options.artifact)
            .unwrap_or_else(|_| options.artifact.clone()),
        ..core.spec.clone()
    };
    let mut timings = StepTimings::default();
    let version = match load_verified(&spec, &core.shadow, generation, None, &mut timings) {
        Ok(version) => version,
        Err(refused) => return Err(close_refused(*refused, &mut book, name).0),
    };
    let (mut permit, state) =
        match fit_and_copy_state(core, &mark, &version, registry, &mut timings) {
            Ok(ready) => ready,
            Err(err) => {
                close_unused(version, &mut book, &core.spec);
                return Err(err);
            }
        };
    let trial = Arc::new(Trial::new(
        &version,
        (serving, core.access.serving_meter()),
        options.split,
        options.policy,
        &core.spec.artifact,
    ));
    let started = std::time::Instant::now();
    *permit.canary() = Some(Box::new(Slot::new(
        Live { version, state },
        Arc::clone(&trial),
    )));
    drop(permit);
    timings.commit = started.elapsed();
    *core.canary.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&trial));
    tracing::info!(
        canary = generation,
        split = %trial.split,
        pause_us = timings.pause().as_micros() as u64,
        "canary started"
    );
    Ok((trial, timings))
}

/// Whether the canary's `version` may run beside the serving one (it calls no other
/// module; the serving modules that call this one fit it; the serving state carries to its
/// schema), then the permit to install it, held, and its copy of the serving state. On error
/// nothing was installed and the caller closes `version`.
fn fit_and_copy_state<'a>(
    core: &'a Arc<ModuleCore>,
    mark: &crate::access::TransactionMark<'a>,
    version: &crate::version::LoadedVersion,
    registry: &[Arc<ModuleCore>],
    timings: &mut StepTimings,
) -> Result<(crate::access::ReplacePermit<'a>, hotreload_abi::StatePtr), HotError> {
    if !version.links().imports.is_empty() {
        return Err(unsupported(
            core,
            "the build calls other modules (a canary's calls to them are not linked)",
        ));
    }
    // The serving modules that call this one must fit the build it would become (checked
    // again at the promotion, which repoints them).
    super::link::link(&[super::link::NewBuild::of(core, version)], registry)?;
    let save_as =
        commit::carry_plan(core, version)?.map_or(version.schema.version, |carry| carry.save_as);
    let quiesced = quiesce::acquire(core, mark, false)?;
    timings.quiesce = quiesced.looked;
    timings.wait = quiesced.held_back;
    let started = std::time::Instant::now();
    let (state, _snapshot) = commit::carry_over(quiesced.permit.as_ref(), version, save_as)?;
    timings.prepare = started.elapsed();
    Ok((quiesced.permit, state))
}

/// The serving version, or why `core` cannot have a canary now.
fn refuse_unsupported(core: &ModuleCore, options: &CanaryOptions) -> Result<VersionInfo, HotError> {
    if core.access.has_owner() {
        return Err(unsupported(
            core,
            "it is a `LocalModule`; canaries run beside `Module` handles",
        ));
    }
    if !core.spec.host_calls {
        return Err(unsupported(
            core,
            "the host does not call it (other modules' calls reach the serving version only)",
        ));
    }
    let share = match options.split {
        Split::Calls(share) | Split::Keys(share) => share,
    };
    if !(0.0..=1.0).contains(&share) {
        return Err(unsupported(
            core,
            &format!("its share must be between 0 and 1, not {share}"),
        ));
    }
    if options.policy.is_some() && !core.spec.metrics.is_on() {
        return Err(unsupported(
            core,
            "the module's metrics are off and the policy judges by them (turn them on, or \
             start it with `manual()`)",
        ));
    }
    if let Some(probation) = core.probation.report() {
        return Err(unsupported(
            core,
            &format!(
                "load #{} is on probation; end it first (`mark_good`)",
                probation.generation
            ),
        ));
    }
    core.version()
        .ok_or_else(|| unsupported(core, "no version serves yet"))
}

fn unsupported(core: &ModuleCore, reason: &str) -> HotError {
    HotError::CanaryUnsupported {
        module: core.spec.name.clone(),
        reason: reason.to_owned(),
    }
}

/// Takes `core`'s canary out of the routing table once no call is in flight (as a reload
/// waits: by the module's [`Quiesce`](crate::Quiesce) policy, except that an abort never
/// gives up), and ends its record. `expected`: only if it is this canary (a policy's
/// decision about one that has since ended is void). On error the canary runs on.
fn take_canary<'a>(
    core: &'a ModuleCore,
    mark: &crate::access::TransactionMark<'a>,
    expected: Option<&Arc<Trial>>,
    recovery: bool,
) -> Result<(Box<Slot>, CanaryFigures), HotError> {
    let none = || HotError::NoCanary {
        module: core.spec.name.clone(),
    };
    let trial = core.canary().ok_or_else(none)?;
    if expected.is_some_and(|expected| !Arc::ptr_eq(expected, &trial)) {
        return Err(none());
    }
    let slot = quiesce::acquire(core, mark, recovery)?
        .permit
        .canary()
        .take();
    let slot = slot.ok_or_else(none)?;
    trial.end();
    *core.canary.lock().unwrap_or_else(|p| p.into_inner()) = None;
    // Read once no call runs in it: its final figures.
    let figures = trial.figures();
    Ok((slot, figures))
}

/// Promotes `core`'s canary: swapped in with the serving state, like a reload of its build.
pub(crate) fn promote(
    core: &Arc<ModuleCore>,
    expected: Option<&Arc<Trial>>,
    registry: &[Arc<ModuleCore>],
) -> Result<(ReloadReport, Arc<Trial>, CanaryFigures), HotError> {
    let mark = core.access.begin_transaction(&core.spec.name)?;
    let book = core.book();
    let (slot, figures) = take_canary(core, &mark, expected, false)?;
    let Slot { live, trial, .. } = *slot;
    retire_state(
        &core.spec,
        &live.version.lifecycle,
        live.state,
        &live.version.info,
    );
    let generation = live.version.info.generation;
    let _span = tracing::info_span!("promote", module = %core.spec.name, generation).entered();
    let report = super::swap_in(
        core,
        mark,
        book,
        generation,
        Ok(live.version),
        registry,
        StepTimings::default(),
    )?;
    Ok((report, trial, figures))
}

/// Aborts `core`'s canary: its state retired, its version closed (or held, like any version
/// that stops serving, while a thread may run in it).
pub(crate) fn abort(
    core: &Arc<ModuleCore>,
    expected: Option<&Arc<Trial>>,
) -> Result<(Arc<Trial>, CanaryFigures, RetiredVersion), HotError> {
    let mark = core.access.begin_transaction(&core.spec.name)?;
    let mut book = core.book();
    let (slot, figures) = take_canary(core, &mark, expected, true)?;
    let Slot { live, trial, .. } = *slot;
    let closed = super::retire::close(live.into_version(), &mut book, &core.spec);
    book.record_retired([closed.clone()]);
    Ok((trial, figures, closed))
}

/// Retires the canary's own state at its promotion, as any state that stops serving is
/// retired (its retire hook, then its workers are stopped and joined, then it is dropped),
/// and lets the version start workers again: it goes on serving, with the serving state.
fn retire_state(
    spec: &ModuleSpec,
    lifecycle: &hotreload_abi::LifecycleEntries,
    state: hotreload_abi::StatePtr,
    info: &VersionInfo,
) {
    let warn = |what: &str, fault: hotreload_abi::EntryError| {
        tracing::warn!(
            module = %info.module,
            generation = info.generation,
            "{what} of the canary's own state: {}",
            crate::error::ModuleFault::from(fault)
        );
    };
    if let abi_stable::std_types::RResult::RErr(fault) = (lifecycle.retire)(state) {
        warn("the retire hook", fault);
    }
    match (lifecycle.join_workers)(spec.worker_stop_timeout_ms()) {
        abi_stable::std_types::RResult::ROk(0) => {}
        abi_stable::std_types::RResult::ROk(running) => tracing::warn!(
            module = %info.module,
            generation = info.generation,
            running,
            "workers of the canary's own state did not stop in time; they run on"
        ),
        abi_stable::std_types::RResult::RErr(fault) => warn("stopping the workers", fault),
    }
    if let abi_stable::std_types::RResult::RErr(fault) = (lifecycle.resume_workers)() {
        warn("resuming workers", fault);
    }
    if let abi_stable::std_types::RResult::RErr(fault) = (lifecycle.destroy)(state) {
        warn("dropping", fault);
    }
}
