//! Going back to the previous version, kept loaded in the module's history (its artifact on
//! disk is not needed). The state: the current one if it can be carried to the older
//! version's schema (the same schema, or the newer build declares the way down:
//! `#[migrate(to = k)]`) and the older version restores it; otherwise the snapshot that version
//! saved when it was replaced, which loses the changes of the `&mut self` calls made since
//! (the report counts them). The version rolled back from is closed, not kept.

use super::prepare;
use super::retire;
use crate::VersionInfo;
use crate::error::HotError;
use abi_stable::std_types::RResult;

use crate::access::ReplacePermit;
use crate::error::ModuleFault;
use crate::module::{Book, ModuleCore};
use crate::version::{Kept, Live};
use hotreload_abi::StatePtr;

/// Which state a rollback gave the older version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackState {
    /// The state of the version rolled back from, migrated down to the older schema if the
    /// newer build declared the way (the steps are in [`RollbackReport::migrations`]).
    Current,
    /// The state the older version had when it was replaced: the changes made by the
    /// `calls_lost` `&mut self` calls since then are lost.
    Snapshot {
        /// The `&mut self` calls made since the snapshot (through every version since).
        calls_lost: u64,
    },
}

/// What a rollback did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RollbackReport {
    /// The version that served before the rollback (now closed).
    pub from: VersionInfo,
    /// The older version serving now.
    pub to: VersionInfo,
    /// The state it was given.
    pub state: RollbackState,
    /// The state migrations run on the current state, in order (`v3 -> v2 (to_v2)`).
    pub migrations: Vec<String>,
    /// The version rolled back from, closed (or held open while a thread may run in it).
    pub closed: crate::RetiredVersion,
}

/// Rolls `core` back to its newest kept version. `snapshot_only` skips trying the current
/// state (probation: the new version's state is suspect). `only_from`, when given, is the
/// generation that must still be live (a probation failure of a version already replaced
/// does nothing).
pub(crate) fn rollback(
    core: &std::sync::Arc<ModuleCore>,
    snapshot_only: bool,
    only_from: Option<u64>,
    registry: &[std::sync::Arc<ModuleCore>],
) -> Result<Option<RollbackReport>, HotError> {
    let mark = core.access.begin_transaction(&core.spec.name)?;
    core.no_canary()?;
    let mut book = core.book();
    // A recovery: it never gives up, it waits once the module's patience is spent.
    let mut live = super::quiesce::acquire(core, &mark, true)?.permit;
    let Some(running) = live.as_ref() else {
        return Err(HotError::NoHistory {
            module: core.spec.name.clone(),
        });
    };
    if only_from.is_some_and(|g| g != running.version.info.generation) {
        return Ok(None);
    }
    let Some(kept) = book.history.pop_back() else {
        return Err(HotError::NoHistory {
            module: core.spec.name.clone(),
        });
    };
    // The older build must still fit the modules it calls and those that call it now.
    let installs =
        match super::link::link(&[super::link::NewBuild::of(core, &kept.version)], registry) {
            Ok(installs) => installs,
            Err(err) => {
                book.history.push_back(kept);
                return Err(err);
            }
        };
    let (state, used, migrations) = match state_for(core, running, &kept, snapshot_only) {
        Ok(given) => given,
        Err(err) => {
            book.history.push_back(kept);
            return Err(err);
        }
    };
    let (old, to) = swap(core, &mut live, &mut book, kept, state, installs);
    drop(live);
    Ok(Some(close_old(core, &mut book, old, to, used, migrations)))
}

/// The state the kept version gets: the current one carried to its schema (unless
/// `snapshot_only`), or else the snapshot it saved when it was replaced.
fn state_for(
    core: &ModuleCore,
    running: &Live,
    kept: &Kept,
    snapshot_only: bool,
) -> Result<(StatePtr, RollbackState, Vec<String>), HotError> {
    let from_generation = running.version.info.generation;
    let current = if snapshot_only {
        None
    } else {
        let carried = running
            .version
            .schema
            .carry_to(&kept.version.schema)
            .map_err(|reason| format!("state schema: {reason}"))
            .and_then(|carry| {
                prepare::save(running, carry.save_as)
                    .and_then(|envelope| {
                        prepare::restore(&kept.version, &envelope, from_generation)
                    })
                    .map(|state| (state, carry.steps))
                    .map_err(|err| err.to_string())
            });
        carried
            .inspect_err(|err| {
                tracing::info!(
                    module = %core.spec.name,
                    "the older version cannot take the current state, it gets its snapshot: {err}"
                );
            })
            .ok()
    };
    match current {
        Some((state, steps)) => Ok((state, RollbackState::Current, steps)),
        None => {
            let state =
                prepare::restore(&kept.version, &kept.snapshot, kept.version.info.generation)?;
            let calls_lost = core.access.mutations().saturating_sub(kept.mutations);
            Ok((state, RollbackState::Snapshot { calls_lost }, Vec::new()))
        }
    }
}

/// Makes `kept` serve with `state` under `live` (the module's replacement permit) and
/// repoints the serving callers' imports; returns the version rolled back from, and the one
/// serving now.
fn swap(
    core: &ModuleCore,
    live: &mut ReplacePermit<'_>,
    book: &mut Book,
    kept: Kept,
    state: StatePtr,
    installs: Vec<crate::link::Install>,
) -> (Live, VersionInfo) {
    let to = kept.version.info();
    book.serving_identity = kept.version.image.shadow.identity;
    // The version serves again: it may start workers again.
    if let RResult::RErr(err) = (kept.version.lifecycle.resume_workers)() {
        tracing::warn!(
            "resuming the workers of load #{}: {}",
            to.generation,
            ModuleFault::from(err)
        );
    }
    let old = live.replace(Live {
        version: kept.version,
        state,
    });
    // The serving callers' imports follow, under this module's write lock.
    for install in installs {
        install.apply(true);
    }
    core.probation.end();
    let Some(old) = old else {
        unreachable!("a version was live above, under the same locks")
    };
    (old, to)
}

/// Closes the version rolled back from (its calls can no longer start: the module's locks
/// are released by now, so its workers, which may call, can stop), and reports.
fn close_old(
    core: &ModuleCore,
    book: &mut Book,
    old: Live,
    to: VersionInfo,
    used: RollbackState,
    migrations: Vec<String>,
) -> RollbackReport {
    let from = old.version.info();
    let closed = retire::close(old.into_version(), book, &core.spec);
    book.record_retired([closed.clone()]);
    tracing::info!(
        from = from.generation,
        to = to.generation,
        ?used,
        "rolled back"
    );
    RollbackReport {
        from,
        to,
        state: used,
        migrations,
        closed,
    }
}

/// Rolls every module of `cores` (sorted by name) back to its newest kept version, as one
/// transaction: each older build must fit the others' and the serving modules'; either all
/// go back, or none does. The caller holds the reloader's transaction lock.
pub(crate) fn rollback_set(
    cores: &[std::sync::Arc<ModuleCore>],
    registry: &[std::sync::Arc<ModuleCore>],
) -> Result<Vec<RollbackReport>, HotError> {
    let mut marks = super::set::Marks(Vec::with_capacity(cores.len()));
    for core in cores {
        marks
            .0
            .push(core.access.begin_transaction(&core.spec.name)?);
        core.no_canary()?;
    }
    let mut books: Vec<_> = cores.iter().map(|core| core.book()).collect();
    let refs: Vec<&ModuleCore> = cores.iter().map(|core| &**core).collect();
    let mark_refs: Vec<_> = marks.0.iter().collect();
    let (mut permits, _, _) = super::quiesce::acquire_set(&refs, &mark_refs, true)?;
    let mut kept = Vec::with_capacity(cores.len());
    let give_back = |kept: Vec<Kept>, books: &mut Vec<std::sync::MutexGuard<'_, Book>>| {
        for (version, book) in kept.into_iter().zip(books.iter_mut()) {
            book.history.push_back(version);
        }
    };
    for (i, core) in cores.iter().enumerate() {
        match (permits[i].as_ref(), books[i].history.pop_back()) {
            (Some(_), Some(version)) => kept.push(version),
            (_, popped) => {
                if let Some(version) = popped {
                    books[i].history.push_back(version);
                }
                give_back(kept, &mut books);
                return Err(HotError::NoHistory {
                    module: core.spec.name.clone(),
                });
            }
        }
    }
    let builds: Vec<_> = cores
        .iter()
        .zip(&kept)
        .map(|(core, version)| super::link::NewBuild::of(core, &version.version))
        .collect();
    let installs = match super::link::link(&builds, registry) {
        Ok(installs) => installs,
        Err(err) => {
            drop(builds);
            give_back(kept, &mut books);
            return Err(err);
        }
    };
    drop(builds);
    let mut states = Vec::with_capacity(cores.len());
    for (i, core) in cores.iter().enumerate() {
        let Some(running) = permits[i].as_ref() else {
            unreachable!("checked above, under the same locks")
        };
        match state_for(core, running, &kept[i], false) {
            Ok(given) => states.push(given),
            Err(err) => {
                for ((state, _, _), version) in states.into_iter().zip(&kept) {
                    super::commit::discard(&version.version, state);
                }
                give_back(kept, &mut books);
                return Err(err);
            }
        }
    }
    let mut swapped = Vec::with_capacity(cores.len());
    let mut installs = Some(installs);
    for (i, (version, (state, used, migrations))) in kept.into_iter().zip(states).enumerate() {
        // The callers' imports are repointed with the first swap: every member's write lock
        // is held until all have swapped.
        let installs = installs.take().unwrap_or_default();
        let (old, to) = swap(
            &cores[i],
            &mut permits[i],
            &mut books[i],
            version,
            state,
            installs,
        );
        swapped.push((old, to, used, migrations));
    }
    drop(permits);
    Ok(swapped
        .into_iter()
        .enumerate()
        .map(|(i, (old, to, used, migrations))| {
            close_old(&cores[i], &mut books[i], old, to, used, migrations)
        })
        .collect())
}
