//! Calls between modules, the host's side: each loaded version's imports (the modules its
//! `#[hot_module(uses = [...])]` names), the hook its calls come through, and the checks that
//! keep every import pointing at a callee build that fits.
//!
//! # How a call between modules runs
//! A module calls an [`Import`](crate::Import); its code hands the call to the host through
//! [`HostHooks::call_import`](hotreload_abi::HostHooks) with this version's [`Links`]. The host
//! takes the callee's lock as a call through a shared handle would (the same re-entry rules,
//! so `a` calling `b` calling `a` with `&self` works and an aliasing call is refused), finds
//! the callee's serving version, and runs the caller's code with the table this caller was
//! compiled with, filled with that version's entries. The result is rebuilt by the caller's
//! code before the lock is released: nothing of the callee's version is left in the caller.
//!
//! # Why a table is never stale
//! Each import holds the callee's table filled for one callee version, tagged with that
//! version's load number; a call uses it only if the tag is the serving version's (a version
//! with that number is loaded while it serves). Every swap of a callee (reload, set reload,
//! rollback, registration) refills the imports of the callers serving then, under the
//! callee's write lock, after checking each against the new build: a build that does not fit
//! a serving caller is refused (or the caller comes along in the same set). A caller's new
//! version fills its own imports before it serves. All of this runs under the reloader's
//! transaction lock, so no callee or caller changes meanwhile.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use hotreload_abi::{
    ImportDescription, ImportOutcome, ImportedCall, MethodDescription, ModuleDescriptor, TableEntry,
};

use crate::access::{Access, Mode};
use crate::canary::Pick;
use crate::error::{HotError, Rejection};
use crate::module::ModuleCore;
use crate::transaction::verify::{Expected, HostTable, fill_table};
use crate::version::Live;

/// The imports of one loaded version: what its calls into other modules go through.
pub(crate) struct Links {
    /// The calling module.
    pub caller: String,
    /// Its load number.
    pub generation: u64,
    pub imports: Box<[Link]>,
    /// Its logging's record (its code passes it back with every event, like these links).
    pub log: crate::logs::LogContext,
}

/// One import of a loaded version.
pub(crate) struct Link {
    /// The callee's module name.
    pub callee: String,
    /// The callee's API version the caller was compiled with.
    pub api_version: u32,
    /// The callee's entries and methods as the caller was compiled with them (in the caller's
    /// image: read only while it is mapped, which it is while these links exist).
    entries: Vec<TableEntry>,
    methods: Vec<MethodDescription>,
    table_size: usize,
    /// The callee's live version and its rules of access, once it is registered (allocated
    /// for the rest of the process: see `ModuleCore::access`).
    target: OnceLock<&'static Access>,
    /// The callee's table for one of its versions, as this caller was compiled (a boxed
    /// [`Linked`], or null): read under the callee's lock, swapped by transactions.
    table: AtomicPtr<Linked>,
    /// Tables swapped out while a call may still read them (the swap was made without the
    /// callee's write lock): freed at the next swap made under it, or with the links. Boxed:
    /// a call may hold the address.
    #[allow(clippy::vec_box)]
    retired: Mutex<Vec<Box<Linked>>>,
}

/// An import's table for one callee version, tagged with its load number.
struct Linked {
    generation: u64,
    table: HostTable,
    /// For each method of the import (as the caller was compiled), its place in the callee
    /// version's metrics (`u32::MAX`: not counted); made at the first call.
    metered: OnceLock<Box<[u32]>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        let table = *self.table.get_mut();
        if !table.is_null() {
            // SAFETY: made by `Box::into_raw` in `Link::set`, and owned by the link since; the
            // links are dropped only once the image that calls through them is unmapped.
            drop(unsafe { Box::from_raw(table) });
        }
    }
}

// SAFETY: the entries are plain data (layouts in the caller's image, read on the transaction
// thread while it is mapped); `table` is swapped atomically and what it pointed to is freed
// only when no call can be reading it (see `Link::set`).
unsafe impl Sync for Links {}
// SAFETY: as above; nothing in `Links` is tied to a thread.
unsafe impl Send for Links {}

impl Links {
    /// The imports `descriptor` declares, not yet linked to any callee.
    pub(crate) fn of(
        caller: &str,
        generation: u64,
        descriptor: &ModuleDescriptor,
        forward_logs: bool,
    ) -> Self {
        let imports = descriptor
            .imports
            .iter()
            .map(|import: &ImportDescription| Link {
                callee: import.module_name.as_str().to_owned(),
                api_version: import.api_version,
                entries: import.entries.as_slice().to_vec(),
                methods: import.methods.as_slice().to_vec(),
                table_size: import.table_size,
                target: OnceLock::new(),
                table: AtomicPtr::new(std::ptr::null_mut()),
                retired: Mutex::new(Vec::new()),
            })
            .collect();
        Links {
            caller: caller.to_owned(),
            generation,
            imports,
            log: crate::logs::LogContext::new(caller, generation, forward_logs),
        }
    }

    /// The modules these imports call.
    pub(crate) fn callees(&self) -> impl Iterator<Item = &str> {
        self.imports.iter().map(|link| link.callee.as_str())
    }
}

impl Link {
    /// This import's table for the callee build `descriptor` (load `generation`), or why that
    /// build does not fit what the caller was compiled with.
    fn table_for(&self, descriptor: &ModuleDescriptor, caller: &str) -> Result<HostTable, String> {
        if descriptor.api_version != self.api_version {
            return Err(format!(
                "API v{}, the caller was built with v{}",
                descriptor.api_version, self.api_version
            ));
        }
        let expected = Expected {
            entries: &self.entries,
            table_size: self.table_size,
            methods: crate::transaction::verify::layout::Declared::copy(&self.methods),
            expected_by: caller,
        };
        fill_table(&expected, descriptor)
            .map(|(table, _)| table)
            .map_err(|(summary, _)| summary)
    }

    /// Points this import at `target`'s version `generation` with `table`. With
    /// `callee_locked` (the caller holds the callee's write lock, so no call reads any table
    /// of this import), the tables swapped out before are freed; otherwise the one swapped
    /// out is kept until then.
    fn set(
        &self,
        target: &Arc<ModuleCore>,
        generation: u64,
        table: HostTable,
        callee_locked: bool,
    ) {
        let new = Box::into_raw(Box::new(Linked {
            generation,
            table,
            metered: OnceLock::new(),
        }));
        let old = self.table.swap(new, Ordering::AcqRel);
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        if !old.is_null() {
            // SAFETY: made by `Box::into_raw` above (an earlier call) and owned by the link
            // until this swap took it out.
            retired.push(unsafe { Box::from_raw(old) });
        }
        if callee_locked {
            // No call of the callee runs, and calls read tables only under its lock.
            retired.clear();
        }
        drop(retired);
        let _ = self.target.set(target.access);
    }
}

/// What the host gives a version when it attaches it: the hooks, with its links.
pub(crate) fn hooks(links: &Arc<Links>) -> hotreload_abi::HostHooks {
    hotreload_abi::HostHooks {
        in_call: crate::access::HOST_HOOKS_IN_CALL,
        call_import,
        links: Arc::as_ptr(links).cast(),
        log: crate::logs::hooks(&links.log),
    }
}

/// A callee as a transaction sees it: its module, and the build it checks imports against
/// (the serving one, or the new one of the same set).
pub(crate) struct Callee<'a> {
    pub core: &'a Arc<ModuleCore>,
    pub generation: u64,
    pub descriptor: &'a ModuleDescriptor,
}

/// An import of a serving caller to repoint at a new callee build when it commits.
pub(crate) struct Install {
    links: Arc<Links>,
    index: usize,
    callee: Arc<ModuleCore>,
    generation: u64,
    table: HostTable,
}

impl Install {
    /// Repoints the import. `callee_locked`: the caller holds the callee's write lock (its
    /// replacement permit), under which the new build has just been made the serving one.
    pub(crate) fn apply(self, callee_locked: bool) {
        self.links.imports[self.index].set(
            &self.callee,
            self.generation,
            self.table,
            callee_locked,
        );
    }
}

/// Fills the imports of a version that does not serve yet against `find`'s callees (a build
/// of the same set, or the serving one); a callee not registered is linked when it registers,
/// one registered but not loaded when it loads.
pub(crate) fn link_own<'c>(
    links: &Links,
    find: impl Fn(&str) -> Option<Callee<'c>>,
    registered: impl Fn(&str) -> Option<Arc<ModuleCore>>,
) -> Result<(), Rejection> {
    for link in links.imports.iter() {
        if let Some(callee) = find(&link.callee) {
            let table = link
                .table_for(callee.descriptor, &format!("`{}`", links.caller))
                .map_err(|reason| Rejection::Import {
                    callee: link.callee.clone(),
                    reason: format!("load #{}: {reason}", callee.generation).into(),
                })?;
            link.set(callee.core, callee.generation, table, false);
        } else if let Some(core) = registered(&link.callee) {
            let _ = link.target.set(core.access);
        }
    }
    Ok(())
}

/// The imports of serving callers (`callers`, each with its links) that call `callee`, filled
/// for its new build; or why a caller does not fit it.
pub(crate) fn plan_callers<'a>(
    callee: &Callee<'_>,
    callers: impl Iterator<Item = &'a Arc<Links>>,
) -> Result<Vec<Install>, Rejection> {
    let name = &callee.core.spec.name;
    let mut installs = Vec::new();
    for links in callers {
        for (index, link) in links.imports.iter().enumerate() {
            if link.callee != *name {
                continue;
            }
            let table = link
                .table_for(callee.descriptor, &format!("`{}`", links.caller))
                .map_err(|reason| Rejection::Caller {
                    caller: links.caller.clone(),
                    reason: format!("load #{}: {reason}", links.generation).into(),
                })?;
            installs.push(Install {
                links: Arc::clone(links),
                index,
                callee: Arc::clone(callee.core),
                generation: callee.generation,
                table,
            });
        }
    }
    Ok(installs)
}

/// The hook a module's calls into other modules come through. Never unwinds.
extern "C" fn call_import(
    links: *const c_void,
    target: u64,
    exclusive: bool,
    call: ImportedCall,
) -> ImportOutcome {
    let (import, method) = hotreload_abi::import_and_method(target);
    // SAFETY: `links` is the address `hooks` gave this version, whose image holds the `Arc`
    // until it is unmapped (see `Image`); only this version's code calls this hook with it.
    let links = unsafe { &*links.cast::<Links>() };
    catch_unwind(AssertUnwindSafe(|| {
        route(links, import, method, exclusive, call)
    }))
    .unwrap_or_else(|_| {
        ImportOutcome::Unavailable("the host panicked while making the call".into())
    })
}

fn route(
    links: &Links,
    import: u32,
    method: u32,
    exclusive: bool,
    call: ImportedCall,
) -> ImportOutcome {
    let Some(link) = links.imports.get(import as usize) else {
        return ImportOutcome::Unavailable(format!("no import #{import}").into());
    };
    let Some(access) = link.target.get() else {
        return ImportOutcome::Unavailable(
            format!("module `{}` is not registered with the host", link.callee).into(),
        );
    };
    let mode = if exclusive {
        Mode::Exclusive
    } else {
        Mode::Shared
    };
    let outcome = if access.has_owner() {
        if !access.owned_here() {
            return ImportOutcome::Unavailable(
                format!(
                    "module `{}` is registered for one thread (`register_local`) and this call \
                     runs on another",
                    link.callee
                )
                .into(),
            );
        }
        // SAFETY: this is the owner thread of a module that has one (checked just above).
        match unsafe { access.local_call(mode) } {
            Ok(entered) => run(entered.live(), link, method, call),
            Err(refused) => refused.into_outcome(),
        }
    } else {
        match access.shared_call(mode, Some(Pick::Serving), |target| {
            run(target.live, link, method, call)
        }) {
            Ok(outcome) => outcome,
            Err(refused) => refused.into_outcome(),
        }
    };
    #[cfg(not(feature = "static"))]
    crate::os::catch_up();
    outcome
}

/// Runs the caller's side of the call in the callee's serving version `live`, held by the
/// caller's guard.
fn run(live: Option<&Live>, link: &Link, method: u32, call: ImportedCall) -> ImportOutcome {
    let Some(live) = live else {
        return ImportOutcome::NotLoaded;
    };
    let generation = live.version.info.generation;
    let linked = link.table.load(Ordering::Acquire);
    // SAFETY: a table is freed only under the callee's write lock or with the links; this
    // runs under the callee's lock (the guard of `route`'s call) and the caller's version
    // (whose image holds the links) runs this call.
    match unsafe { linked.as_ref() } {
        Some(Linked {
            generation: linked,
            table,
            metered,
        }) if *linked == generation => {
            // SAFETY: `table` is this caller's view of the callee's export table, filled with
            // the entries of load `generation` after checking each against the caller's
            // compiled layout; that version serves (the tag matches) and stays live until the
            // guard is dropped, after `run` returns; `live.state` is its state, used under the
            // lock `mode` asked for (an exclusive entry only under the write lock).
            let ended = unsafe { (call.run)(call.data, table.as_ptr(), live.state) };
            // Counted once it returned (nothing kept across the call), out of line: not
            // timed.
            count(live, link, metered, method, ended);
            ImportOutcome::Ran {
                generation,
                api_version: live.version.info.api_version,
            }
        }
        _ => ImportOutcome::Unavailable(
            format!(
                "the serving build of `{}` (load #{generation}) is not linked to this version of \
                 the caller (it no longer serves, or the callee's build does not fit it)",
                link.callee
            )
            .into(),
        ),
    }
}

/// Counts a call between modules that returned `ended` in the callee version's metrics.
#[inline(never)]
fn count(live: &Live, link: &Link, metered: &OnceLock<Box<[u32]>>, method: u32, ended: u8) {
    let Some(meter) = &live.version.meter else {
        return;
    };
    let metered = metered.get_or_init(|| {
        link.methods
            .iter()
            .map(|method| {
                meter
                    .index_of(method.name.as_str())
                    .map_or(u32::MAX, |index| index as u32)
            })
            .collect()
    });
    if let Some(index) = metered.get(method as usize) {
        meter.count_returned(
            *index as usize,
            match ended {
                hotreload_abi::CALL_RETURNED => crate::metrics::Outcome::Ok,
                hotreload_abi::CALL_PANICKED => crate::metrics::Outcome::Panic,
                _ => crate::metrics::Outcome::Error,
            },
        );
    }
}

/// A build refused for its links: `info` is the build's.
pub(crate) fn rejected(info: &crate::VersionInfo, reason: Rejection) -> HotError {
    HotError::Rejected {
        module: info.module.clone(),
        path: info.artifact.clone(),
        generation: info.generation,
        reason,
        detail: None,
    }
}
