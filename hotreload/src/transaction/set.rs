//! A transaction over a set of modules that must change together (a callee's API changed
//! with its callers, a shared crate edited): the same steps as one module's reload, each over
//! the whole set, and one commit.
//!
//! 1. Stage, open and verify every member's new build; 3b. link them among themselves and to
//!    the serving modules (`link`); check that each state can be carried over.
//! 2. Get every member to this transaction alone (`quiesce::acquire_set`).
//! 3. Prepare every member (save the old state, restore it into the new build).
//! 4. Commit: every member's new build serves, its serving callers repointed, in one step
//!    under all the members' write locks.
//! 5. Retire each member's old version as a single reload does.
//!
//! A failure at any step before the commit drops every new build, and every member keeps
//! its old version and its state: either all serve their new build, or none does.
//!
//! Locks are taken in one order: the reloader's transaction lock (by the caller), the
//! members' transaction marks and books in name order, then their write locks, all at once
//! and never waiting while holding one (see `quiesce::acquire_set`).

use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::link::NewBuild;
use super::stage::ArtifactCopy;
use super::{ReloadReport, StepTimings, commit, link, load_verified, quiesce, retire};
use crate::VersionInfo;
use crate::access::TransactionMark;
use crate::error::HotError;
use crate::module::{Book, ModuleCore};
use crate::version::{Live, LoadedVersion};

/// The transaction marks of a set, ended innermost first (each mark records the one before).
pub(super) struct Marks<'a>(pub(super) Vec<TransactionMark<'a>>);

impl Drop for Marks<'_> {
    fn drop(&mut self) {
        while let Some(mark) = self.0.pop() {
            drop(mark);
        }
    }
}

/// Reloads `members` (sorted by name, each at most once, with the bytes of its artifact if
/// they were read already) as one transaction, linked to the other modules of `registry`.
/// The caller holds the reloader's transaction lock. Returns one report per member, in order.
pub(crate) fn reload_set(
    members: Vec<(Arc<ModuleCore>, Option<ArtifactCopy>)>,
    registry: &[Arc<ModuleCore>],
) -> Result<Vec<ReloadReport>, HotError> {
    let (cores, mut bytes): (Vec<Arc<ModuleCore>>, Vec<Option<ArtifactCopy>>) =
        members.into_iter().unzip();
    let mut marks = Marks(Vec::with_capacity(cores.len()));
    for core in &cores {
        marks
            .0
            .push(core.access.begin_transaction(&core.spec.name)?);
        core.no_canary()?;
    }
    let mut books: Vec<MutexGuard<'_, Book>> = cores.iter().map(|core| core.book()).collect();
    let names: Vec<&str> = cores.iter().map(|core| core.spec.name.as_str()).collect();
    let _span = tracing::info_span!("reload_set", modules = ?names).entered();
    let mut timings = vec![StepTimings::default(); cores.len()];

    // Steps 1 to 3 for every member.
    let mut loaded: Vec<LoadedVersion> = Vec::with_capacity(cores.len());
    for (i, core) in cores.iter().enumerate() {
        let generation = books[i].next_generation;
        books[i].next_generation += 1;
        match load_verified(
            &core.spec,
            &core.shadow,
            generation,
            bytes[i].take(),
            &mut timings[i],
        ) {
            Ok(version) => loaded.push(version),
            Err(refused) => {
                let super::Refused { err, opened, build } = *refused;
                core.remember_refused(&err, || build);
                if let Some(opened) = opened {
                    let (info, image) = opened.into_refused(&core.spec.name);
                    let closed = retire::close_unverified(info, image, &mut books[i]);
                    if closed.held.is_some() {
                        books[i].record_retired([closed]);
                    }
                }
                close_all(&cores, loaded, &mut books);
                return Err(err);
            }
        }
    }

    // Linked, and each state's way to its new build checked, before anything is touched.
    let started = Instant::now();
    let checked = (|| {
        let builds: Vec<NewBuild<'_>> = cores
            .iter()
            .zip(&loaded)
            .map(|(core, version)| NewBuild::of(core, version))
            .collect();
        let installs = link::link(&builds, registry)?;
        let carries = cores
            .iter()
            .zip(&loaded)
            .map(|(core, version)| commit::carry_plan(core, version))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, HotError>((installs, carries))
    })();
    let link_time = started.elapsed();
    let (installs, carries) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            close_all(&cores, loaded, &mut books);
            return Err(err);
        }
    };
    let changed: Vec<(Vec<String>, usize)> = cores
        .iter()
        .zip(&loaded)
        .map(|(core, version)| {
            let count = version.descriptor().methods.len();
            (super::changed_methods(core, version), count)
        })
        .collect();

    // The whole set to this transaction alone.
    let core_refs: Vec<&ModuleCore> = cores.iter().map(|core| &**core).collect();
    let mark_refs: Vec<&TransactionMark<'_>> = marks.0.iter().collect();
    let (mut permits, looked, held_back) = match quiesce::acquire_set(&core_refs, &mark_refs, false)
    {
        Ok(acquired) => acquired,
        Err(err) => {
            close_all(&cores, loaded, &mut books);
            return Err(err);
        }
    };

    // Prepare: every state carried over, or none.
    let started = Instant::now();
    let mut states = Vec::with_capacity(cores.len());
    for (i, version) in loaded.iter().enumerate() {
        let save_as = carries[i]
            .as_ref()
            .map_or(version.schema.version, |carry| carry.save_as);
        match commit::carry_over(permits[i].as_ref(), version, save_as) {
            Ok(state) => states.push(state),
            Err(err) => {
                for (made, version) in states.into_iter().zip(&loaded) {
                    commit::discard(version, made.0);
                }
                drop(permits);
                close_all(&cores, loaded, &mut books);
                return Err(err);
            }
        }
    }
    let prepare = started.elapsed();

    // Commit: every member at once, and the serving callers' imports with them.
    let started = Instant::now();
    let mutations: Vec<u64> = cores.iter().map(|core| core.access.mutations()).collect();
    let mut olds = Vec::with_capacity(cores.len());
    let mut serving = Vec::with_capacity(cores.len());
    for ((permit, version), (state, snapshot)) in permits.iter_mut().zip(loaded).zip(states) {
        serving.push((
            version.info.clone(),
            version.image.shadow.sha256.clone(),
            version.image.shadow.identity,
            version.unknown_methods.clone(),
        ));
        let old = permit.replace(Live { version, state });
        olds.push((old, snapshot));
    }
    for install in installs {
        // Every callee of these imports is a member: its write lock is held.
        install.apply(true);
    }
    drop(permits);
    let commit = started.elapsed();

    // Retire each member's old version, and report.
    let mut reports = Vec::with_capacity(cores.len());
    let pieces = olds.into_iter().zip(serving).zip(carries).zip(changed);
    for (i, ((((old, snapshot), (info, sha256, identity, unknown)), carry), changed)) in
        pieces.enumerate()
    {
        let core = &cores[i];
        let book = &mut books[i];
        let mut timings = timings[i];
        timings.verify += link_time;
        timings.quiesce = looked;
        timings.wait = held_back;
        timings.prepare = prepare;
        timings.commit = commit;
        let to = super::step("hash", &mut timings.hash, || VersionInfo {
            sha256: sha256.get(),
            ..info
        });
        book.serving_identity = identity;
        core.remember_refused_none();
        let from = old.as_ref().map(|old| old.version.info());
        let (closed, released) = match old {
            Some(old) => super::step("retire", &mut timings.retire, || {
                retire::retire(old, snapshot, mutations[i], book, &core.spec)
            }),
            None => (Vec::new(), Vec::new()),
        };
        book.record_retired(closed.iter().cloned());
        reports.push(ReloadReport {
            from,
            to,
            timings,
            closed,
            released,
            migrations: carry.map(|c| c.steps).unwrap_or_default(),
            unknown_methods: unknown,
            method_count: changed.1,
            changed_methods: changed.0,
            unchanged: false,
        });
    }
    drop(books);
    drop(marks);
    for (core, report) in cores.iter().zip(&reports) {
        if let Some(policy) = core.spec.probation {
            core.probation.start(policy, report.to.generation);
        }
    }
    tracing::info!(
        modules = ?reports.iter().map(|r| &r.to.module).collect::<Vec<_>>(),
        pause_us = reports.first().map_or(0, |r| r.timings.pause().as_micros() as u64),
        "set reloaded"
    );
    Ok(reports)
}

/// Closes the new builds of a set that will not serve (like versions that stop serving: held
/// if a thread they started may still run in them).
fn close_all(
    cores: &[Arc<ModuleCore>],
    loaded: Vec<LoadedVersion>,
    books: &mut [MutexGuard<'_, Book>],
) {
    for ((core, version), book) in cores.iter().zip(loaded).zip(books.iter_mut()) {
        let closed = retire::close(version, book, &core.spec);
        if closed.held.is_some() {
            book.record_retired([closed]);
        }
    }
}
