//! Step 5: publish the new version. Prepare runs here too, because both need the module's
//! write lock: the state saved must be the state at the instant of the swap.

use std::time::Instant;

use abi_stable::std_types::RResult;
use hotreload_abi::StatePtr;

use super::StepTimings;
use super::prepare;
use crate::VersionInfo;
use crate::access::{ReplacePermit, TransactionMark};
use crate::error::HotError;
use crate::module::ModuleCore;
use crate::version::{Live, LoadedVersion};

/// Swaps `new` in with the running state carried over (or a fresh state, when no version was
/// loaded); returns the old [`Live`] to retire, its saved state and the new version's
/// description. On error nothing changed, and `new` comes back with the error, to be closed
/// like any version that stops serving (its `restore` may have started threads).
pub(crate) fn commit(
    core: &ModuleCore,
    mark: &TransactionMark<'_>,
    new: LoadedVersion,
    installs: Vec<crate::link::Install>,
    timings: &mut StepTimings,
) -> Result<Committed, Box<(HotError, LoadedVersion)>> {
    // How the state reaches the new build's schema, or a refusal before anything is touched.
    // Only transactions replace the live version, and this one holds the module's book.
    let carry = match carry_plan(core, &new) {
        Ok(carry) => carry,
        Err(err) => return Err(Box::new((err, new))),
    };
    let save_as = carry.as_ref().map_or(new.schema.version, |c| c.save_as);
    let beside_calls = carry.is_some()
        && !core.access.has_owner()
        && core.access.schema().is_some_and(|s| s.concurrent_save);
    let prepared = if beside_calls {
        prepare_beside_calls(core, mark, &new, save_as, timings)
    } else {
        prepare_alone(core, mark, &new, save_as, timings)
    };
    let (mut live, state, snapshot) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return Err(Box::new((err, new))),
    };

    let _commit_span = tracing::debug_span!("step", step = "commit").entered();
    let started = Instant::now();
    let info = new.info.clone();
    let sha256 = new.image.shadow.sha256.clone();
    let identity = new.image.shadow.identity;
    let mutations = core.access.mutations();
    let unknown_methods = new.unknown_methods.clone();
    let old = live.replace(Live {
        version: new,
        state,
    });
    // The serving callers' imports follow, under this module's write lock.
    for install in installs {
        install.apply(true);
    }
    drop(live);
    timings.commit = started.elapsed();
    Ok(Committed {
        old,
        snapshot,
        info,
        sha256,
        identity,
        migrations: carry.map(|c| c.steps).unwrap_or_default(),
        mutations,
        unknown_methods,
    })
}

/// How the serving state reaches `new`'s schema (`None`: nothing serves), or the refusal.
pub(crate) fn carry_plan(
    core: &ModuleCore,
    new: &LoadedVersion,
) -> Result<Option<crate::version::Carry>, HotError> {
    let Some(running) = core.access.schema() else {
        return Ok(None);
    };
    running.carry_to(&new.schema).map(Some).map_err(|reason| {
        let from_generation = core.version().map_or(0, |v| v.generation);
        HotError::StateSchema {
            module: new.info.module.clone(),
            path: new.info.artifact.clone(),
            generation: new.info.generation,
            from_generation,
            from: running.version,
            to: new.schema.version,
            reason,
        }
    })
}

/// The state for `new`, made with the module to this transaction alone: waits for a moment
/// with no call in flight (new calls are held back only once the module's patience is spent,
/// and from then until the swap).
fn prepare_alone<'a>(
    core: &'a ModuleCore,
    mark: &TransactionMark<'a>,
    new: &LoadedVersion,
    save_as: u32,
    timings: &mut StepTimings,
) -> Result<Prepared<'a>, HotError> {
    let quiesced = super::quiesce::acquire(core, mark, false)?;
    timings.quiesce = quiesced.looked;
    timings.wait = quiesced.held_back;
    let live = quiesced.permit;
    let _span = tracing::debug_span!("step", step = "prepare").entered();
    let started = Instant::now();
    let (state, snapshot) = carry_over(live.as_ref(), new, save_as)?;
    timings.prepare = started.elapsed();
    Ok((live, state, snapshot))
}

/// The state for `new`, saved and restored while `&self` calls go on (the running build
/// declared `concurrent_save`: its `&self` methods do not change the state); `&mut self`
/// calls wait from the start of the save to the swap, so the state saved is the state
/// swapped out.
fn prepare_beside_calls<'a>(
    core: &'a ModuleCore,
    mark: &TransactionMark<'a>,
    new: &LoadedVersion,
    save_as: u32,
    timings: &mut StepTimings,
) -> Result<Prepared<'a>, HotError> {
    let waiting = Instant::now();
    let sharing = core.access.permit_share(mark);
    let span = tracing::debug_span!("step", step = "prepare").entered();
    let started = Instant::now();
    let (state, snapshot) = carry_over(sharing.live(), new, save_as)?;
    timings.prepare_shared = started.elapsed();
    drop(span);
    let quiesced = match super::quiesce::upgrade(core, sharing) {
        Ok(quiesced) => quiesced,
        Err(err) => {
            discard(new, state);
            return Err(err);
        }
    };
    timings.quiesce = waiting.elapsed() - timings.prepare_shared;
    timings.wait = quiesced.held_back;
    Ok((quiesced.permit, state, snapshot))
}

/// The permit, the new version's state and the old one's envelope (`None` on a first load).
type Prepared<'a> = (ReplacePermit<'a>, StatePtr, Option<Vec<u8>>);

/// Saves the running state as `save_as` and restores it into `new`, or makes a fresh one.
pub(crate) fn carry_over(
    running: Option<&Live>,
    new: &LoadedVersion,
    save_as: u32,
) -> Result<(StatePtr, Option<Vec<u8>>), HotError> {
    match running {
        Some(running) => {
            let envelope = prepare::save(running, save_as)?;
            let state = prepare::restore(new, &envelope, running.version.info.generation)?;
            // The snapshot kept for a rollback to the running version is in its own schema.
            let own = running.version.schema.version;
            let snapshot = if save_as == own {
                envelope
            } else {
                match prepare::save(running, own) {
                    Ok(snapshot) => snapshot,
                    Err(err) => {
                        discard(new, state);
                        return Err(err);
                    }
                }
            };
            Ok((state, Some(snapshot)))
        }
        None => prepare::construct(new).map(|state| (state, None)),
    }
}

/// Drops a state `new` made and that will not serve, with `new`'s code.
pub(crate) fn discard(new: &LoadedVersion, state: StatePtr) {
    if let RResult::RErr(fault) = (new.lifecycle.destroy)(state) {
        tracing::warn!("dropping the unused state failed: {fault:?}");
    }
}

/// What a commit replaced.
pub(crate) struct Committed {
    /// The version that served before, with its state (to retire).
    pub old: Option<Live>,
    /// The state it saved for the new version: kept for rollback.
    pub snapshot: Option<Vec<u8>>,
    /// The version serving now (its digest still to compute, from `sha256`).
    pub info: VersionInfo,
    pub sha256: crate::version::Sha256Cell,
    /// Which file it was read from.
    pub identity: Option<crate::version::ArtifactIdentity>,
    /// The state migrations run, named.
    pub migrations: Vec<String>,
    /// The module's count of `&mut self` calls at the swap.
    pub mutations: u64,
    /// The new build's methods the host was not compiled with.
    pub unknown_methods: Vec<String>,
}
