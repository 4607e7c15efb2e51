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

use crate::error::ModuleFault;
use crate::module::ModuleCore;
use crate::version::Live;

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
    let from_generation = running.version.info.generation;
    // The older build must still fit the modules it calls and those that call it now.
    let installs =
        match super::link::link(&[super::link::NewBuild::of(core, &kept.version)], registry) {
            Ok(installs) => installs,
            Err(err) => {
                book.history.push_back(kept);
                return Err(err);
            }
        };
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
    let (state, used, migrations) = match current {
        Some((state, steps)) => (state, RollbackState::Current, steps),
        None => match prepare::restore(&kept.version, &kept.snapshot, kept.version.info.generation)
        {
            Ok(state) => {
                let calls_lost = core.access.mutations().saturating_sub(kept.mutations);
                (state, RollbackState::Snapshot { calls_lost }, Vec::new())
            }
            Err(err) => {
                book.history.push_back(kept);
                return Err(err);
            }
        },
    };
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
    drop(live);
    core.probation.end();
    let Some(old) = old else {
        unreachable!("a version was live above, under the same locks")
    };
    let from = old.version.info();
    let closed = retire::close(old.into_version(), &mut book, &core.spec);
    book.record_retired([closed.clone()]);
    tracing::info!(
        from = from.generation,
        to = to.generation,
        ?used,
        "rolled back"
    );
    Ok(Some(RollbackReport {
        from,
        to,
        state: used,
        migrations,
        closed,
    }))
}
