//! Who may read or replace a module's live version, from which thread, and with which permit.
//!
//! This file alone owns the rules; everything else reaches the live version through the
//! guards it hands out, and nothing else touches the cell that holds it.
//!
//! # The rules
//! - **Shared handle ([`Module`](crate::Module)) calls** hold the module's lock (see `lock`:
//!   a read side that writes only the calling thread's own slot) for the call's whole
//!   duration: read for `&self` methods and associated functions, write for `&mut self`
//!   methods. A reload takes the write lock, so no call overlaps prepare and commit; it first
//!   tries for it without waiting (`transaction::quiesce`), so that calls keep running while
//!   it looks for a moment with none in flight.
//! - **Local handle ([`LocalModule`](crate::LocalModule)) calls** take no lock. The module has
//!   an owner thread; its handle cannot leave that thread, and its live version is replaced
//!   only on that thread between calls, so no call of it overlaps a replacement.
//! - **Re-entry** (module code calling back into the host, which calls the same module again
//!   on the same thread) is refused with [`HotError::ReentrantCall`] when it would make a
//!   second reference to the state while a `&mut self` call holds one, or a `&mut self` call
//!   while any call is running. A `&self` call inside a `&self` call is allowed and does not
//!   lock again (the outer call's read lock already keeps the version live; locking twice
//!   could wait for ever behind a queued reload).
//! - **Replacing the live version** (reload, rollback) needs a [`ReplacePermit`], which only
//!   [`Access::permit_replace`] creates, from the [`TransactionMark`] that only
//!   [`Access::begin_transaction`] creates: it refuses another thread than the owner
//!   ([`HotError::WrongThread`]) and a thread that is inside a call or transaction of this
//!   module ([`HotError::ReloadDuringCall`], which would otherwise deadlock or unmap running
//!   code). While the mark lives, the thread counts as inside an exclusive call, so module
//!   code that the transaction runs cannot re-enter the module.
//! - **Version queries** read a description published at each replacement, never `live`.
//!
//! Which calls run on the current thread is kept in the host (a thread-local list of frames
//! for shared handles and transactions, a counter in the module for local calls): a
//! thread-local in the host costs a few instructions, one inside a module's library goes
//! through `__tls_get_addr`. The same record answers a module's panic hook, which asks only
//! when a panic happens whether it happened inside a call (see [`HOST_HOOKS_IN_CALL`]); each module
//! with an owner thread is listed on that thread for it while a local handle exists.

mod lock;

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crossbeam_utils::sync::ShardedLockWriteGuard;

use self::lock::{CallLock, ExclusiveGuard, ReadGuard};
use crate::VersionInfo;
use crate::canary::{Pick, Slot, Trial};
use crate::error::HotError;
use crate::version::{Live, Schema, Sha256Cell};

/// The live version of one module and the rules of access to it.
pub(crate) struct Access {
    /// Orders access to `live`. A reader writes only a counter of its own thread's (see
    /// [`lock`]), so calls from several cores write no shared memory.
    lock: CallLock,
    /// `None` until a first build has loaded (a module registered before it was built).
    live: UnsafeCell<Option<Live>>,
    /// The canary beside `live`, if one runs (see `canary`): calls reach it by its rule.
    /// Guarded like `live`.
    canary: UnsafeCell<Option<Box<Slot>>>,
    /// The thread a `LocalModule` is bound to, if the module was registered as one.
    owner: Option<ThreadId>,
    /// Calls in progress through the `LocalModule`: the number of shared calls, or
    /// [`EXCLUSIVE`]. Written and read on `owner` only, so plain loads and stores suffice.
    local: AtomicU32,
    /// The live version's description, published by each replacement: version queries read
    /// it without touching `live` (so they never wait for a call or a reload, and never alias
    /// a replacement in progress on their own thread). The digest is filled outside the lock.
    info: Mutex<Option<Published>>,
    /// `&mut self` calls made, through either handle (a rollback to a snapshot says how many
    /// it loses). Written only under the write lock or on the owner thread: a load and a
    /// store.
    mutations: AtomicU64,
    /// Closed by a set transaction that waits for the set's calls in flight to end: a call
    /// made from outside every call of the set's modules waits while it is closed (up to the
    /// deadline the transaction set); a call made from inside one goes through, so that the
    /// calls in flight, which may call each other's modules, can end. One relaxed load per
    /// call while it is open.
    gate: AtomicBool,
    /// Where calls wait for the gate to open, and for how long at most.
    gate_waiters: (Mutex<Duration>, Condvar),
}

/// `Access::local` while a `&mut self` call runs through the `LocalModule`.
const EXCLUSIVE: u32 = u32::MAX;

// SAFETY: `live` is reached only through the guards below: shared references under the read
// lock or inside a call of this module on the same thread (whose own guard holds the lock, or
// which is a local call on the owner thread), the exclusive reference under the write lock
// with no call of this module running on the owner thread. `Live` is `Send + Sync`.
unsafe impl Sync for Access {}
// SAFETY: see above; nothing in an `Access` is tied to the thread that made it.
unsafe impl Send for Access {}

/// What a call through a shared handle does to the state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `&self` or no receiver.
    Shared,
    /// `&mut self`.
    Exclusive,
    /// A reload or rollback of the module runs on this thread (with module code inside it:
    /// save, restore, the retire hook): as exclusive as a `&mut self` call, and the
    /// transaction holds the module's locks.
    Transaction,
}

/// A call in progress on this thread, through a shared handle: a node of the thread's list.
struct Frame {
    access: *const Access,
    mode: Mode,
    outer: *const Frame,
}

std::thread_local! {
    /// The innermost call in progress on this thread through a shared handle.
    static INNERMOST: Cell<*const Frame> = const { Cell::new(std::ptr::null()) };
}

/// The innermost call of `access` running on this thread through a shared handle, if any.
fn running_here(access: &Access) -> Option<Mode> {
    let mut frame = INNERMOST.with(Cell::get);
    let mut found = None;
    while !frame.is_null() {
        // SAFETY: every pointer in the list is to a live `Frame`: one on this thread's stack,
        // pushed by `Access::enter` whose `Pushed` guard unlinks it before the frame goes
        // out of scope, or one boxed in a `TransactionMark`, which unlinks it when it drops.
        // Both are created and dropped in nested order on one thread (guards drop in reverse
        // order of creation, also on unwinding), so each pointer reached from `INNERMOST`
        // is to a frame that still exists.
        let current = unsafe { &*frame };
        if std::ptr::eq(current.access, access) {
            found = Some(match (found, current.mode) {
                (Some(Mode::Transaction), _) | (_, Mode::Transaction) => Mode::Transaction,
                (Some(Mode::Exclusive), _) | (_, Mode::Exclusive) => Mode::Exclusive,
                _ => Mode::Shared,
            });
        }
        frame = current.outer;
    }
    found
}

/// Whether this thread is inside no call through a shared handle and no transaction, of any
/// module: it holds no module lock.
pub(crate) fn holds_no_module_lock() -> bool {
    INNERMOST.with(Cell::get).is_null()
}

/// Unlinks a frame from this thread's list when the call ends.
struct Pushed {
    outer: *const Frame,
}

impl Drop for Pushed {
    #[inline(always)]
    fn drop(&mut self) {
        INNERMOST.with(|innermost| innermost.set(self.outer));
    }
}

/// What every loaded module may ask this host about the calls on a thread (given to it by its
/// `attach` entry, with its links: see `link::hooks`).
pub(crate) const HOST_HOOKS_IN_CALL: extern "C" fn() -> bool = in_call_on_this_thread;

/// Whether a call into a module (through either kind of handle) or a transaction runs on this
/// thread. A module's panic hook asks, only when a panic happens, whether the entry it panics
/// in will contain it; no call pays for the question.
extern "C" fn in_call_on_this_thread() -> bool {
    if !INNERMOST.with(Cell::get).is_null() {
        return true;
    }
    let mut listed = LISTED.with(Cell::get);
    while !listed.is_null() {
        // SAFETY: every node reachable from `LISTED` is alive: a `Listing` links its boxed node
        // on this thread and unlinks it, on this thread (it is neither `Send` nor `Sync`),
        // before the box is freed.
        let node = unsafe { &*listed };
        // SAFETY: the listed `Access` outlives its listing (the contract of `list_locally`).
        // Its call counter is written only on this thread, its owner.
        if unsafe { &*node.access }.local.load(Ordering::Relaxed) != 0 {
            return true;
        }
        listed = node.next.get();
    }
    false
}

/// A module with an owner thread, listed on that thread while a local handle to it exists:
/// a node of the thread's list, so that [`in_call_on_this_thread`] can read its call counter.
struct Listed {
    access: *const Access,
    next: Cell<*const Listed>,
}

std::thread_local! {
    /// The first module listed on this thread.
    static LISTED: Cell<*const Listed> = const { Cell::new(std::ptr::null()) };
}

/// Keeps a module listed on its owner thread; unlinks it when dropped (on that thread: it is
/// neither `Send` nor `Sync`).
pub(crate) struct Listing {
    node: Box<Listed>,
}

impl Drop for Listing {
    fn drop(&mut self) {
        let node: *const Listed = &*self.node;
        LISTED.with(|first| {
            if first.get() == node {
                first.set(self.node.next.get());
                return;
            }
            let mut at = first.get();
            while !at.is_null() {
                // SAFETY: as in `in_call_on_this_thread`: every node reachable from `LISTED`
                // is alive, and only this thread links or unlinks them.
                let current = unsafe { &*at };
                if current.next.get() == node {
                    current.next.set(self.node.next.get());
                    return;
                }
                at = current.next.get();
            }
        });
    }
}

impl Access {
    pub(crate) fn new(live: Option<Live>, owner: Option<ThreadId>) -> Self {
        Access {
            info: Mutex::new(live.as_ref().map(published)),
            lock: CallLock::new(),
            live: UnsafeCell::new(live),
            canary: UnsafeCell::new(None),
            owner,
            local: AtomicU32::new(0),
            mutations: AtomicU64::new(0),
            gate: AtomicBool::new(false),
            gate_waiters: (Mutex::new(Duration::ZERO), Condvar::new()),
        }
    }

    /// Closes the gate (see `gate`) until the returned guard drops; a call waits at it for
    /// `patience` at most, then goes on (a call in flight may be waiting for that thread:
    /// the locks, not the gate, keep calls and the transaction apart).
    pub(crate) fn close_gate(&self, patience: Duration) -> GateClosed<'_> {
        *self
            .gate_waiters
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = patience;
        self.gate.store(true, Ordering::SeqCst);
        GateClosed { access: self }
    }

    /// A call meets the closed gate: it goes through if it is made from inside a call of a
    /// module whose gate is closed too (a call of the set in flight), else it waits for the
    /// gate to open, or for the patience to pass since it came.
    #[cold]
    #[inline(never)]
    fn at_gate(&self, outer: *const Frame) {
        let mut frame = outer;
        while !frame.is_null() {
            // SAFETY: as in `running_here`: every frame reachable from this thread's list is
            // alive.
            let current = unsafe { &*frame };
            // SAFETY: a frame's `Access` outlives the call it records.
            if unsafe { &*current.access }.gate.load(Ordering::SeqCst) {
                return;
            }
            frame = current.outer;
        }
        let (patience, opened) = &self.gate_waiters;
        let mut patience = patience.lock().unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + *patience;
        while self.gate.load(Ordering::SeqCst) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return;
            };
            // A timeout as well: the opening store and its notification are not under the
            // mutex.
            patience = opened
                .wait_timeout(patience, left.min(Duration::from_millis(1)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The live version, taken out when the module goes away (its core is dropped: no handle
    /// and no reloader refers to it, so no call through a handle and no transaction runs).
    /// Calls from other modules may still come through their links: they wait for the write
    /// lock taken here, and find nothing to call afterwards.
    pub(crate) fn take_live(&self) -> (Option<Live>, Option<Box<Slot>>) {
        let _guard = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = None;
        // SAFETY: under the write lock, no call through a shared handle or from another
        // module runs; no local call can run (a `LocalModule` holds the core, which is being
        // dropped), and no transaction (it holds the core too).
        unsafe { ((*self.live.get()).take(), (*self.canary.get()).take()) }
    }

    /// The version serving now, as last published.
    pub(crate) fn version(&self) -> Option<VersionInfo> {
        let published = self
            .info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        published.map(|published| VersionInfo {
            sha256: published.sha256.get(),
            ..published.info
        })
    }

    /// Counts a `&mut self` call: its caller holds the write lock, or is the owner thread.
    #[inline(always)]
    fn count_mutation(&self) {
        let made = self.mutations.load(Ordering::Relaxed);
        self.mutations.store(made + 1, Ordering::Relaxed);
    }

    /// The `&mut self` calls made so far.
    pub(crate) fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::Relaxed)
    }

    /// The state schema of the version serving now, and its migrations.
    pub(crate) fn schema(&self) -> Option<Schema> {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|published| published.schema.clone())
    }

    /// The serving version's imports.
    pub(crate) fn serving_links(&self) -> Option<std::sync::Arc<crate::link::Links>> {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|published| std::sync::Arc::clone(&published.links))
    }

    /// What the serving version's metrics say now.
    pub(crate) fn serving_metrics(&self) -> Option<crate::VersionMetrics> {
        let published = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        let published = published.as_ref()?;
        Some(published.meter.as_ref()?.snapshot(&published.info))
    }

    /// The serving version's meter, if its metrics are on.
    pub(crate) fn serving_meter(&self) -> Option<std::sync::Arc<crate::metrics::Meter>> {
        let published = self.info.lock().unwrap_or_else(PoisonError::into_inner);
        published.as_ref()?.meter.clone()
    }

    /// The serving version's load number and descriptor.
    pub(crate) fn serving_descriptor(&self) -> Option<(u64, crate::version::Descriptor)> {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|published| (published.info.generation, published.descriptor))
    }

    /// Lists this module on this thread, its owner, until the listing drops: a module's panic
    /// hook then sees its local calls (see [`in_call_on_this_thread`]).
    ///
    /// # Safety
    /// On the owner thread of a module that has one; `self` must neither move nor be dropped
    /// before the listing is.
    pub(crate) unsafe fn list_locally(&self) -> Listing {
        debug_assert_eq!(self.owner, Some(std::thread::current().id()));
        let node = Box::new(Listed {
            access: self,
            next: Cell::new(LISTED.with(Cell::get)),
        });
        LISTED.with(|first| first.set(&*node));
        Listing { node }
    }

    /// Whether this module reloads only on its owner thread.
    pub(crate) fn has_owner(&self) -> bool {
        self.owner.is_some()
    }

    /// Whether this thread is the module's owner thread.
    pub(crate) fn owned_here(&self) -> bool {
        self.owner == Some(std::thread::current().id())
    }

    /// Whether a call or a transaction of this module is running on this thread.
    pub(crate) fn in_call_here(&self) -> bool {
        let local = match self.owner {
            Some(owner) if owner == std::thread::current().id() => {
                self.local.load(Ordering::Relaxed) != 0
            }
            _ => false,
        };
        local || running_here(self).is_some()
    }

    /// Whether a reload or rollback of this module is running on this thread (module code
    /// inside it called back into the host).
    pub(crate) fn in_transaction_here(&self) -> bool {
        running_here(self) == Some(Mode::Transaction)
    }

    /// Begins a reload or rollback on this thread: refused off the owner thread of a local
    /// module, and inside a call or transaction of this module on this thread (which it
    /// would wait for for ever, or whose code it would replace). Until the mark drops, this
    /// thread counts as inside an exclusive call of the module, so module code that the
    /// transaction runs (save, restore, the retire hook) and that calls back into the host
    /// cannot re-enter the module or start another transaction of it.
    pub(crate) fn begin_transaction(&self, module: &str) -> Result<TransactionMark<'_>, HotError> {
        self.may_replace_here(module)?;
        let outer = INNERMOST.with(Cell::get);
        // Boxed: the frame's address is in the thread's list until the mark drops, and the
        // mark itself moves.
        let frame = Box::new(Frame {
            access: self,
            mode: Mode::Transaction,
            outer,
        });
        INNERMOST.with(|innermost| innermost.set(&*frame));
        let local_before = self.local.load(Ordering::Relaxed);
        if self.owner.is_some() {
            // Only on the owner thread (checked above): local calls see an exclusive call.
            self.local.store(EXCLUSIVE, Ordering::Relaxed);
        }
        Ok(TransactionMark {
            access: self,
            frame,
            local_before,
        })
    }

    /// The permit to replace the live version, for the transaction `mark` began: waits for
    /// the write lock.
    pub(crate) fn permit_replace<'a>(&'a self, mark: &TransactionMark<'a>) -> ReplacePermit<'a> {
        debug_assert!(std::ptr::eq(mark.access, self));
        // A poisoned lock only means a host-side panic while it was held; `Live` is replaced
        // in one assignment, so it is never left half-updated.
        let guard = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        ReplacePermit {
            access: self,
            _guard: guard,
            // SAFETY: the write lock excludes every shared-handle call; a local call cannot be
            // running, because a transaction begins only on the owner thread outside every
            // call of the module (`begin_transaction`), and the local handle never leaves that
            // thread; version queries do not read `live` (they read `info`).
            live: unsafe { &mut *self.live.get() },
        }
    }

    /// The first half of a permit to replace the live version, for the transaction `mark`
    /// began: `&mut self` calls are excluded (waits for the one in flight), `&self` calls
    /// through shared handles go on. The state may be read (saved) meanwhile.
    pub(crate) fn permit_share<'a>(&'a self, mark: &TransactionMark<'a>) -> SharePermit<'a> {
        debug_assert!(std::ptr::eq(mark.access, self));
        let guard = self
            .lock
            .exclude_writers()
            .unwrap_or_else(PoisonError::into_inner);
        SharePermit {
            access: self,
            guard,
        }
    }

    /// As [`permit_replace`](Self::permit_replace) if no call is in flight at this moment;
    /// `None` at once otherwise, having held no caller back (beyond the instant of trying).
    pub(crate) fn try_permit_replace<'a>(
        &'a self,
        mark: &TransactionMark<'a>,
    ) -> Option<ReplacePermit<'a>> {
        debug_assert!(std::ptr::eq(mark.access, self));
        let guard = match self.lock.try_write() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(ReplacePermit {
            access: self,
            _guard: guard,
            // SAFETY: as in `permit_replace`: the write lock is held.
            live: unsafe { &mut *self.live.get() },
        })
    }

    /// The checks of [`begin_transaction`](Self::begin_transaction), without beginning one:
    /// to refuse early, before any hook runs.
    pub(crate) fn may_replace_here(&self, module: &str) -> Result<(), HotError> {
        if let Some(owner) = self.owner {
            if owner != std::thread::current().id() {
                return Err(HotError::WrongThread {
                    module: module.to_owned(),
                });
            }
        }
        if self.in_call_here() {
            return Err(HotError::ReloadDuringCall {
                module: module.to_owned(),
            });
        }
        Ok(())
    }

    /// Runs a call through a shared handle: refused if it would re-enter a call of this
    /// module on this thread in a way that aliases the state; under the read (or, for
    /// `Mode::Exclusive`, write) lock unless a `&self` call of it is already running here;
    /// recorded in this thread's list of calls while `call` runs.
    ///
    /// Written for the common case (no call of any module running on this thread): one
    /// thread-local load, the lock, and the frame kept in locals, so nothing large is moved;
    /// a refusal is made an error by the caller, out of line ([`Refused::into_error`]).
    #[inline(always)]
    pub(crate) fn shared_call<R>(
        &self,
        mode: Mode,
        pick: Option<Pick>,
        call: impl FnOnce(Target<'_>) -> R,
    ) -> Result<R, Refused> {
        let outer = INNERMOST.with(Cell::get);
        if self.gate.load(Ordering::Relaxed) {
            self.at_gate(outer);
        }
        // Whether to lock: always when no call runs on this thread (the common case).
        let lock = outer.is_null() || self.nested_needs_lock(mode)?;
        // One call site for `call`, so that it is inlined here. A poisoned lock only means a
        // host-side panic while it was held (in `Rehome`, say); calls never leave `live`
        // half-updated.
        let _guard = match (lock, mode) {
            (false, _) => None,
            (true, Mode::Shared) => Some(Locked::Read(self.lock.read())),
            (true, _) => Some(Locked::Write(self.lock.write_exclusive())),
        };
        if mode == Mode::Exclusive {
            self.count_mutation();
        }
        Ok(self.enter(mode, outer, pick, call))
    }

    /// For a call made while other calls run on this thread: whether it must lock (no call
    /// of this module runs here), may run without (a `&self` call inside a `&self` call,
    /// whose read lock keeps the version live), or is refused (it would alias the state).
    #[inline(never)]
    fn nested_needs_lock(&self, mode: Mode) -> Result<bool, Refused> {
        match (running_here(self), mode) {
            (None, _) => Ok(true),
            (Some(Mode::Shared), Mode::Shared) => Ok(false),
            (Some(running), _) => Err(Refused { mode, running }),
        }
    }

    /// Runs `call` with the live version, with the call recorded as running on this thread.
    /// The caller holds the lock `mode` needs, or is a `&self` call nested in a `&self` call
    /// of this module on this thread that holds the read lock.
    #[inline(always)]
    fn enter<R>(
        &self,
        mode: Mode,
        outer: *const Frame,
        pick: Option<Pick>,
        call: impl FnOnce(Target<'_>) -> R,
    ) -> R {
        let frame = Frame {
            access: self,
            mode,
            outer,
        };
        INNERMOST.with(|innermost| innermost.set(&frame));
        let _pushed = Pushed { outer };
        // SAFETY: shared access for the call: this call holds the read or write lock, or is
        // a `&self` call nested in a `&self` call of this module on this thread that holds
        // the read lock (see `shared_call`); no replacement can happen meanwhile. An
        // exclusive call uses the state through the entry's `&mut`, not through this
        // reference, and holds the write lock so no other reference is made.
        let live = unsafe { &*self.live.get() };
        // SAFETY: as for `live`: the canary slot is replaced only under the write lock.
        let canary = unsafe { &*self.canary.get() };
        call(match canary {
            None => Target {
                live: live.as_ref(),
                canary: None,
            },
            Some(slot) => route(live.as_ref(), slot, pick),
        })
    }

    /// Starts a call through the local handle (on the owner thread: the caller guarantees it,
    /// see [`LocalCall`]): refused if it would re-enter a running call in a way that aliases
    /// the state. Takes no lock.
    ///
    /// Written for the call path of the fastest handle: one load and one store of the counter;
    /// a refusal is made an error by the caller, out of line ([`Refused::into_error`]).
    ///
    /// # Safety
    /// Only on the owner thread of a module that has one.
    #[inline(always)]
    pub(crate) unsafe fn local_call(&self, mode: Mode) -> Result<LocalCall<'_>, Refused> {
        debug_assert_eq!(self.owner, Some(std::thread::current().id()));
        let running = self.local.load(Ordering::Relaxed);
        let next = match (running, mode) {
            (0, Mode::Exclusive | Mode::Transaction) => EXCLUSIVE,
            (EXCLUSIVE, _) => {
                return Err(Refused {
                    mode,
                    running: Mode::Exclusive,
                });
            }
            (_, Mode::Exclusive | Mode::Transaction) => {
                return Err(Refused {
                    mode,
                    running: Mode::Shared,
                });
            }
            (n, Mode::Shared) => n + 1,
        };
        self.local.store(next, Ordering::Relaxed);
        if mode == Mode::Exclusive {
            self.count_mutation();
        }
        Ok(LocalCall {
            access: self,
            before: running,
        })
    }
}

/// The version a call runs in: the serving one, or the canary its rule chose (then
/// `canary` is its record, which counts the call's failures).
pub(crate) struct Target<'a> {
    pub live: Option<&'a Live>,
    pub canary: Option<&'a Trial>,
}

/// A call while a canary runs: the canary or the serving version, by the canary's rule.
#[inline(never)]
fn route<'a>(serving: Option<&'a Live>, slot: &'a Slot, pick: Option<Pick>) -> Target<'a> {
    if slot.takes(pick) {
        Target {
            live: Some(&slot.live),
            canary: Some(&slot.trial),
        }
    } else {
        Target {
            live: serving,
            canary: None,
        }
    }
}

/// A call refused because it would re-enter a running call of the module in a way that
/// aliases the state.
#[derive(Clone, Copy)]
pub(crate) struct Refused {
    mode: Mode,
    running: Mode,
}

impl Refused {
    /// The error, named after `module`'s `method`.
    #[cold]
    #[inline(never)]
    pub(crate) fn into_error(self, module: &str, method: &'static str) -> HotError {
        reentrant(module, method, self.mode, self.running)
    }
}

impl Refused {
    /// What a call from another module is told.
    #[cold]
    pub(crate) fn into_outcome(self) -> hotreload_abi::ImportOutcome {
        hotreload_abi::ImportOutcome::Reentrant {
            running_exclusive: self.running != Mode::Shared,
        }
    }
}

#[cold]
fn reentrant(module: &str, method: &'static str, mode: Mode, running: Mode) -> HotError {
    HotError::ReentrantCall {
        module: module.to_owned(),
        method,
        exclusive: mode == Mode::Exclusive,
        running_exclusive: running != Mode::Shared,
    }
}

/// The lock a call through a shared handle holds until it returns.
enum Locked<'a> {
    Read(#[allow(dead_code)] ReadGuard<'a>),
    Write(#[allow(dead_code)] ExclusiveGuard<'a>),
}

/// The right to replace the live version: the write lock, taken on a thread allowed to
/// replace it. Only [`Access::permit_replace`] makes one.
pub(crate) struct ReplacePermit<'a> {
    access: &'a Access,
    _guard: ShardedLockWriteGuard<'a, ()>,
    live: &'a mut Option<Live>,
}

impl Drop for ReplacePermit<'_> {
    fn drop(&mut self) {
        // Published before the write lock is released: a call that sees the new version
        // never sees an older description.
        *self
            .access
            .info
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.live.as_ref().map(published);
    }
}

/// Writers excluded, readers counted in slots still running: the live version may be read.
/// Only [`Access::permit_share`] makes one.
pub(crate) struct SharePermit<'a> {
    access: &'a Access,
    guard: ShardedLockWriteGuard<'a, ()>,
}

impl<'a> SharePermit<'a> {
    /// The live version, to read beside `&self` calls.
    pub(crate) fn live(&self) -> Option<&Live> {
        // SAFETY: writers are excluded (the transaction holds `inner`'s write lock), so no
        // `&mut self` call or replacement runs; `&self` calls also only read `live` (and the
        // state, through shared references).
        unsafe { (*self.access.live.get()).as_ref() }
    }

    /// The whole permit once no `&self` call is in flight at this moment; the share permit
    /// back otherwise, having held no caller back beyond the instant of trying.
    pub(crate) fn try_replace(self) -> Result<ReplacePermit<'a>, Self> {
        if self.access.lock.try_exclude_readers() {
            Ok(self.into_replace())
        } else {
            Err(self)
        }
    }

    /// The whole permit: waits for the `&self` calls in flight, holding new ones back.
    pub(crate) fn replace(self) -> ReplacePermit<'a> {
        self.access.lock.exclude_readers();
        self.into_replace()
    }

    fn into_replace(self) -> ReplacePermit<'a> {
        let SharePermit { access, guard } = self;
        ReplacePermit {
            access,
            _guard: guard,
            // SAFETY: writers and readers are excluded now, as under `permit_replace`.
            live: unsafe { &mut *access.live.get() },
        }
    }
}

/// What a replacement publishes of the live version: its description, the cell of its digest
/// (which may not be computed yet: never under the module's locks) and its state schema.
#[derive(Clone)]
struct Published {
    info: VersionInfo,
    sha256: Sha256Cell,
    schema: Schema,
    /// Its imports, for the links of a new callee build.
    links: std::sync::Arc<crate::link::Links>,
    /// Its descriptor, for the links of a new caller build.
    descriptor: crate::version::Descriptor,
    /// Its calls' metrics.
    meter: Option<std::sync::Arc<crate::metrics::Meter>>,
}

fn published(live: &Live) -> Published {
    Published {
        info: live.version.info.clone(),
        sha256: live.version.image.shadow.sha256.clone(),
        schema: live.version.schema.clone(),
        links: std::sync::Arc::clone(live.version.links()),
        descriptor: live.version.descriptor,
        meter: live.version.meter.clone(),
    }
}

/// A closed gate (see [`Access::close_gate`]); opens it when dropped.
pub(crate) struct GateClosed<'a> {
    access: &'a Access,
}

impl Drop for GateClosed<'_> {
    fn drop(&mut self) {
        self.access.gate.store(false, Ordering::SeqCst);
        self.access.gate_waiters.1.notify_all();
    }
}

/// A reload or rollback in progress on this thread (see [`Access::begin_transaction`]).
pub(crate) struct TransactionMark<'a> {
    access: &'a Access,
    frame: Box<Frame>,
    local_before: u32,
}

impl Drop for TransactionMark<'_> {
    fn drop(&mut self) {
        if self.access.owner.is_some() {
            self.access
                .local
                .store(self.local_before, Ordering::Relaxed);
        }
        INNERMOST.with(|innermost| innermost.set(self.frame.outer));
    }
}

impl ReplacePermit<'_> {
    /// The canary slot, to start or end a canary.
    pub(crate) fn canary(&mut self) -> &mut Option<Box<Slot>> {
        // SAFETY: the permit holds the write lock (as for `live`): no call reads the slot.
        unsafe { &mut *self.access.canary.get() }
    }
}

impl Deref for ReplacePermit<'_> {
    type Target = Option<Live>;
    fn deref(&self) -> &Option<Live> {
        self.live
    }
}

impl DerefMut for ReplacePermit<'_> {
    fn deref_mut(&mut self) -> &mut Option<Live> {
        self.live
    }
}

/// A call in progress through the local handle.
pub(crate) struct LocalCall<'a> {
    access: &'a Access,
    before: u32,
}

impl LocalCall<'_> {
    /// The live version for the call.
    #[inline(always)]
    pub(crate) fn live(&self) -> Option<&Live> {
        // SAFETY: on the owner thread (the contract of `local_call`), with this call counted
        // in `local`, so `permit_replace` refuses to replace the version until it ends.
        unsafe { (*self.access.live.get()).as_ref() }
    }
}

impl Drop for LocalCall<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.access.local.store(self.before, Ordering::Relaxed);
    }
}
