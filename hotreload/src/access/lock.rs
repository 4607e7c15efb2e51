//! The lock that orders calls through shared handles against `&mut self` calls and
//! replacements of the live version: a reader-writer lock whose read side writes only memory
//! that no other thread writes.
//!
//! Each thread that calls gets a slot of its own (one of [`SLOTS`], returned when the thread
//! exits), and every lock has a counter per slot, on a cache line of its own. A reader counts
//! itself in its slot with one atomic swap (a full fence, on a line no other thread writes)
//! and then reads `writing`; it leaves with a plain store. A writer takes `inner`'s write lock
//! (which orders writers, and the readers below), raises `writing` (a full fence too), then
//! waits until no slot counts a reader. Of a reader and a writer that start together, at
//! least one sees the other (the reader's swap comes before its load, the writer's store
//! before its scan, all four sequentially consistent): either the reader sees `writing` and
//! backs off, or the writer sees the reader's count and waits for it to leave. A reader that
//! finds `writing` raised, or whose thread has no slot, takes `inner`'s read lock instead, as
//! every reader did before this lock existed: it waits there for the writer.
//!
//! Writers hand out `inner`'s own write guard, so a permit to replace the live version holds
//! just that. A writer that returns such a guard leaves `writing` raised when the guard drops;
//! the next reader that takes `inner`'s read lock lowers it (no writer can hold `inner` then).
//! An exclusive call's guard ([`ExclusiveGuard`]) lowers it itself.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, LockResult, Mutex, PoisonError, TryLockError, TryLockResult};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

/// How many threads at a time can read without a shared atomic; later ones read through
/// `inner` until a slot is returned.
const SLOTS: usize = 64;

/// [`SLOT`] before the thread asked for a slot.
const UNASSIGNED: u8 = u8::MAX;
/// [`SLOT`] of a thread that has none (all were taken, or the thread is exiting).
const NO_SLOT: u8 = u8::MAX - 1;

/// How long a writer sleeps between looks at a reader's slot, at most: a reader leaving while
/// `writing` is raised wakes it at once, unless it left just as `writing` was raised.
const RECHECK: Duration = Duration::from_micros(100);

/// Which slots are taken (one bit each).
static TAKEN: Mutex<u64> = Mutex::new(0);
/// One more than the highest slot ever taken: writers look at the slots below it only.
static IN_USE: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// This thread's slot, for the read path: `const` and without a destructor, so reading
    /// it costs one instruction and works during thread exit.
    static SLOT: Cell<u8> = const { Cell::new(UNASSIGNED) };
    /// Owns this thread's slot and returns it when the thread exits.
    static HELD: HeldSlot = HeldSlot::take();
}

/// A slot taken by this thread (if one was free).
struct HeldSlot {
    index: u8,
}

impl HeldSlot {
    fn take() -> Self {
        let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
        let free = (!*taken).trailing_zeros() as usize;
        if free >= SLOTS {
            return HeldSlot { index: NO_SLOT };
        }
        *taken |= 1 << free;
        // Sequentially consistent, before the thread's first count in the slot: a writer that
        // does not see the count sees this (see `CallLock::slots_in_use`).
        IN_USE.fetch_max(free + 1, Ordering::SeqCst);
        HeldSlot { index: free as u8 }
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        // Calls made later on this thread (by other thread-local destructors) read through
        // `inner`. The thread counts in no lock now: every read it made has left.
        SLOT.with(|slot| slot.set(NO_SLOT));
        if usize::from(self.index) < SLOTS {
            let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
            *taken &= !(1 << self.index);
        }
    }
}

/// This thread's slot: asks for one the first time.
#[cold]
#[inline(never)]
fn assign_slot() -> u8 {
    let index = HELD.try_with(|held| held.index).unwrap_or(NO_SLOT);
    SLOT.with(|slot| slot.set(index));
    index
}

/// See the module documentation.
pub(crate) struct CallLock {
    /// Orders writers, and readers that do not count in a slot.
    inner: ShardedLock<()>,
    /// Raised by a writer before it waits for the readers counted in slots.
    writing: AtomicBool,
    /// Per slot: how many reads of the slot's thread are in this lock (only that thread
    /// writes it).
    counts: Box<[CachePadded<AtomicU32>; SLOTS]>,
    /// Where a writer waits for readers to leave, and readers leaving wake it.
    left: Mutex<()>,
    reader_left: Condvar,
}

impl CallLock {
    pub(crate) fn new() -> Self {
        CallLock {
            inner: ShardedLock::new(()),
            writing: AtomicBool::new(false),
            counts: Box::new(std::array::from_fn(|_| CachePadded::new(AtomicU32::new(0)))),
            left: Mutex::new(()),
            reader_left: Condvar::new(),
        }
    }

    /// Shared access until the guard drops (on this thread).
    #[inline(always)]
    pub(crate) fn read(&self) -> ReadGuard<'_> {
        let index = SLOT.with(Cell::get);
        match self.read_counted(index) {
            Some(guard) => guard,
            None => self.read_slow(index),
        }
    }

    /// A read counted in this thread's slot, unless there is no slot or a writer is there.
    #[inline(always)]
    fn read_counted(&self, index: u8) -> Option<ReadGuard<'_>> {
        let count = self.counts.get(usize::from(index))?;
        let before = count.load(Ordering::Relaxed);
        count.swap(before.wrapping_add(1), Ordering::SeqCst);
        if !self.writing.load(Ordering::SeqCst) {
            return Some(ReadGuard {
                lock: self,
                read: Read::Counted { count, before },
                _not_send: PhantomData,
            });
        }
        // A writer is there: leave the slot (the caller waits for it).
        self.leave(count, before);
        None
    }

    /// The reader without a slot, or that met a writer: `inner`'s read lock.
    #[cold]
    #[inline(never)]
    fn read_slow(&self, index: u8) -> ReadGuard<'_> {
        if index == UNASSIGNED && assign_slot() != NO_SLOT {
            return self.read();
        }
        // A transaction that reads the state beside readers holds `inner` for long and raises
        // `writing` only for the instant of each try: a reader that met such an instant goes
        // back to its slot when `writing` is lowered again, rather than wait on `inner`.
        let mut looks = 0;
        while usize::from(index) < SLOTS && looks < 64 {
            std::thread::yield_now();
            looks += 1;
            if !self.writing.load(Ordering::SeqCst) {
                if let Some(guard) = self.read_counted(index) {
                    return guard;
                }
            }
        }
        let guard = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        // No writer holds `inner` now, and the next one raises `writing` again after taking
        // it: lower the flag a replacement's guard left raised, so readers count in slots.
        if self.writing.load(Ordering::Relaxed) {
            self.writing.store(false, Ordering::SeqCst);
        }
        ReadGuard {
            lock: self,
            read: Read::Locked(ManuallyDrop::new(Box::new(guard))),
            _not_send: PhantomData,
        }
    }

    /// A reader leaves its slot: a plain store, and a wake-up if a writer is waiting.
    #[inline(always)]
    fn leave(&self, count: &AtomicU32, before: u32) {
        count.store(before, Ordering::Release);
        if self.writing.load(Ordering::Relaxed) {
            self.wake_writer();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_writer(&self) {
        let _left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        self.reader_left.notify_all();
    }

    /// Exclusive access: waits for every reader and writer. The guard is `inner`'s; when it
    /// drops, `writing` stays raised until a reader lowers it (see the module documentation).
    pub(crate) fn write(&self) -> LockResult<ShardedLockWriteGuard<'_, ()>> {
        let guard = self.inner.write();
        self.writing.store(true, Ordering::SeqCst);
        self.wait_for_readers();
        guard
    }

    /// As [`write`](Self::write) if no reader or writer is there at this moment; `WouldBlock`
    /// at once otherwise. Readers that come meanwhile wait for the instant of trying.
    pub(crate) fn try_write(&self) -> TryLockResult<ShardedLockWriteGuard<'_, ()>> {
        let guard = match self.inner.try_write() {
            Err(TryLockError::WouldBlock) => return Err(TryLockError::WouldBlock),
            other => other,
        };
        self.writing.store(true, Ordering::SeqCst);
        if self.counted_readers() {
            self.writing.store(false, Ordering::SeqCst);
            drop(guard);
            return Err(TryLockError::WouldBlock);
        }
        guard
    }

    /// The first half of [`write`](Self::write): other writers (and readers without a slot)
    /// are excluded, readers counted in slots keep coming and going. For a transaction that
    /// reads the state beside `&self` calls; [`exclude_readers`](Self::exclude_readers) or
    /// [`try_exclude_readers`](Self::try_exclude_readers) completes it.
    pub(crate) fn exclude_writers(&self) -> LockResult<ShardedLockWriteGuard<'_, ()>> {
        let guard = self.inner.write();
        // Left raised by the last replacement, it would send every reader to `inner`.
        self.writing.store(false, Ordering::SeqCst);
        guard
    }

    /// With `inner` held by [`exclude_writers`](Self::exclude_writers): waits for the
    /// readers counted in slots, holding new ones back.
    pub(crate) fn exclude_readers(&self) {
        self.writing.store(true, Ordering::SeqCst);
        self.wait_for_readers();
    }

    /// As [`exclude_readers`](Self::exclude_readers) if no reader is counted at this moment;
    /// `false` at once otherwise, new readers held back only for the instant of trying.
    pub(crate) fn try_exclude_readers(&self) -> bool {
        self.writing.store(true, Ordering::SeqCst);
        if self.counted_readers() {
            self.writing.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Exclusive access for a `&mut self` call; lowers `writing` when it drops.
    pub(crate) fn write_exclusive(&self) -> ExclusiveGuard<'_> {
        let guard = self.write().unwrap_or_else(PoisonError::into_inner);
        ExclusiveGuard {
            lock: self,
            inner: ManuallyDrop::new(guard),
        }
    }

    /// The slots that may be in use: those below the highest ever taken. Read after raising
    /// `writing`: a thread whose count this writer must see took its slot before counting.
    fn slots_in_use(&self) -> &[CachePadded<AtomicU32>] {
        &self.counts[..IN_USE.load(Ordering::SeqCst).min(SLOTS)]
    }

    /// Whether a slot counts a reader (`writing` is raised).
    fn counted_readers(&self) -> bool {
        self.slots_in_use()
            .iter()
            .any(|count| count.load(Ordering::SeqCst) != 0)
    }

    /// Waits until no slot counts a reader (`writing` is raised and `inner` held, so no
    /// reader starts counting).
    fn wait_for_readers(&self) {
        for count in self.slots_in_use() {
            if count.load(Ordering::SeqCst) != 0 {
                self.wait_for(count);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn wait_for(&self, count: &AtomicU32) {
        for _ in 0..64 {
            std::hint::spin_loop();
            if count.load(Ordering::SeqCst) == 0 {
                return;
            }
        }
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        while count.load(Ordering::SeqCst) != 0 {
            left = self
                .reader_left
                .wait_timeout(left, RECHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Shared access to a [`CallLock`]; neither `Send` nor `Sync` (it stands for a count in this
/// thread's slot).
///
/// Three words, and dropping one is a store on the read path: what `inner`'s guard needs is
/// out of line (boxed, in `ManuallyDrop`), so that the call path moves and drops little.
pub(crate) struct ReadGuard<'a> {
    lock: &'a CallLock,
    read: Read<'a>,
    _not_send: PhantomData<*const ()>,
}

enum Read<'a> {
    /// This thread's count in the lock, and what it was before this read.
    Counted { count: &'a AtomicU32, before: u32 },
    /// `inner`'s read guard; dropped by `ReadGuard::unlock`, only.
    Locked(ManuallyDrop<Box<ShardedLockReadGuard<'a, ()>>>),
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        match self.read {
            Read::Counted { count, before } => self.lock.leave(count, before),
            Read::Locked(_) => self.unlock(),
        }
    }
}

impl ReadGuard<'_> {
    #[cold]
    #[inline(never)]
    fn unlock(&mut self) {
        if let Read::Locked(guard) = &mut self.read {
            // SAFETY: called once, from `drop`, which nothing follows: the guard is not used
            // again.
            unsafe { ManuallyDrop::drop(guard) }
        }
    }
}

/// Exclusive access to a [`CallLock`] for a `&mut self` call.
pub(crate) struct ExclusiveGuard<'a> {
    lock: &'a CallLock,
    /// Dropped by `drop`, only.
    inner: ManuallyDrop<ShardedLockWriteGuard<'a, ()>>,
}

impl Drop for ExclusiveGuard<'_> {
    #[inline(never)]
    fn drop(&mut self) {
        // Before `inner` is unlocked: the call is over, so readers may count in slots again.
        // A release store is enough: a reader that reads it sees everything the call did, and
        // the next writer raises the flag again, sequentially consistent, before it scans.
        self.lock.writing.store(false, Ordering::Release);
        // SAFETY: dropped once, here, at the end of `drop`: `inner` is not used again.
        unsafe { ManuallyDrop::drop(&mut self.inner) }
    }
}

#[cfg(test)]
mod tests {
    use super::CallLock;
    use crossbeam_utils::sync::ShardedLockWriteGuard;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    /// A writer's guard, of either kind.
    enum Held<'a> {
        Exclusive(#[allow(dead_code)] super::ExclusiveGuard<'a>),
        Write(#[allow(dead_code)] ShardedLockWriteGuard<'a, ()>),
    }

    /// Readers and writers of every kind at once, for a while: no reader ever overlaps a
    /// writer, and no two writers overlap.
    #[test]
    fn readers_and_writers_exclude_each_other() {
        struct Shared {
            lock: CallLock,
            readers: AtomicU32,
            writer: AtomicBool,
        }
        let shared = Arc::new(Shared {
            lock: CallLock::new(),
            readers: AtomicU32::new(0),
            writer: AtomicBool::new(false),
        });
        let threads = 6;
        let start = Arc::new(Barrier::new(threads));
        let until = Instant::now() + Duration::from_millis(1500);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shared = Arc::clone(&shared);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let (mut reads, mut writes) = (0u64, 0u64);
                    let mut i = 0u64;
                    while Instant::now() < until {
                        i += 1;
                        let write = match t {
                            0 => i % 64 == 0,
                            1 => i % 4 == 0,
                            _ => false,
                        };
                        if write {
                            let exclusive = i % 3 == 0;
                            let tried = i % 3 == 1;
                            let _guard = if exclusive {
                                Held::Exclusive(shared.lock.write_exclusive())
                            } else if tried {
                                match shared.lock.try_write() {
                                    Ok(guard) => Held::Write(guard),
                                    Err(_) => continue,
                                }
                            } else {
                                Held::Write(shared.lock.write().unwrap())
                            };
                            assert!(!shared.writer.swap(true, Ordering::SeqCst), "two writers");
                            assert_eq!(shared.readers.load(Ordering::SeqCst), 0, "a reader");
                            std::hint::spin_loop();
                            assert_eq!(shared.readers.load(Ordering::SeqCst), 0, "a reader");
                            shared.writer.store(false, Ordering::SeqCst);
                            writes += 1;
                        } else {
                            let _guard = shared.lock.read();
                            shared.readers.fetch_add(1, Ordering::SeqCst);
                            assert!(!shared.writer.load(Ordering::SeqCst), "a writer");
                            if i % 16 == 0 {
                                std::thread::yield_now();
                            }
                            assert!(!shared.writer.load(Ordering::SeqCst), "a writer");
                            shared.readers.fetch_sub(1, Ordering::SeqCst);
                            reads += 1;
                        }
                    }
                    (reads, writes)
                })
            })
            .collect();
        let (mut reads, mut writes) = (0, 0);
        for handle in handles {
            let (r, w) = handle.join().unwrap();
            reads += r;
            writes += w;
        }
        assert!(
            reads > 1000 && writes > 100,
            "{reads} reads, {writes} writes"
        );
    }

    /// A writer waits for a reader in its slot, and gets the lock once the reader leaves; a
    /// reader that comes meanwhile waits for the writer.
    #[test]
    fn a_writer_waits_for_a_counted_reader() {
        let lock = Arc::new(CallLock::new());
        let read = lock.read();
        assert!(lock.try_write().is_err(), "a reader is counted");
        let writer = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let started = Instant::now();
                drop(lock.write_exclusive());
                started.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(read);
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert!(lock.try_write().is_ok(), "nothing is in the lock");
        let _read = lock.read();
    }

    /// More threads than slots: the others read through `inner`, and a slot returned by a
    /// thread that exits is taken again.
    #[test]
    fn threads_beyond_the_slots_still_read_and_slots_are_returned() {
        let lock = Arc::new(CallLock::new());
        for _ in 0..3 {
            let start = Arc::new(Barrier::new(super::SLOTS + 8));
            let handles: Vec<_> = (0..super::SLOTS + 8)
                .map(|_| {
                    let lock = Arc::clone(&lock);
                    let start = Arc::clone(&start);
                    std::thread::spawn(move || {
                        let _read = lock.read();
                        start.wait();
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            assert!(lock.try_write().is_ok());
            // Every thread above has exited (joined): its slot is free again. Other tests'
            // threads may hold a few.
            let taken = super::TAKEN.lock().unwrap().count_ones() as usize;
            assert!(taken < super::SLOTS - 8, "{taken} slots still taken");
        }
    }
}
