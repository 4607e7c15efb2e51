//! Step 5: publish the new version. Prepare runs here too, because both need the module's
//! write lock: the state saved must be the state at the instant of the swap.

use std::time::Instant;

use super::StepTimings;
use super::prepare;
use crate::VersionInfo;
use crate::access::TransactionMark;
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
    timings: &mut StepTimings,
) -> Result<Committed, Box<(HotError, LoadedVersion)>> {
    // How the state reaches the new build's schema, or a refusal before anything is touched.
    // Only transactions replace the live version, and this one holds the module's book.
    let carry = match core.access.schema() {
        Some(running) => match running.carry_to(&new.schema) {
            Ok(carry) => Some(carry),
            Err(reason) => {
                let from_generation = core.version().map_or(0, |v| v.generation);
                let err = HotError::StateSchema {
                    module: new.info.module.clone(),
                    path: new.info.artifact.clone(),
                    generation: new.info.generation,
                    from_generation,
                    from: running.version,
                    to: new.schema.version,
                    reason,
                };
                return Err(Box::new((err, new)));
            }
        },
        None => None,
    };
    // Waits for a moment with no call in flight (new calls are held back only once the
    // module's patience is spent, and from here until the swap).
    let quiesced = match super::quiesce::acquire(core, mark, false) {
        Ok(quiesced) => quiesced,
        Err(err) => return Err(Box::new((err, new))),
    };
    timings.quiesce = quiesced.looked;
    timings.wait = quiesced.held_back;
    let mut live = quiesced.permit;

    let prepare_span = tracing::debug_span!("step", step = "prepare").entered();
    let started = Instant::now();
    let save_as = carry.as_ref().map_or(new.schema.version, |c| c.save_as);
    let prepared = match live.as_ref() {
        Some(running) => prepare::save(running, save_as).and_then(|envelope| {
            let state = prepare::restore(&new, &envelope, running.version.info.generation)?;
            Ok((state, Some(envelope)))
        }),
        None => prepare::construct(&new).map(|state| (state, None)),
    };
    let (state, snapshot) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return Err(Box::new((err, new))),
    };
    timings.prepare = started.elapsed();
    drop(prepare_span);

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
