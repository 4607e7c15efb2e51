//! Background work that belongs to one version of a module.
//!
//! A thread that module code starts runs that version's code: if the version were unmapped
//! while the thread sleeps in it, the thread would wake up in unmapped memory and crash the
//! process. Threads started with [`spawn`] are known to the runtime: when their version stops
//! serving, the runtime raises their [`StopSignal`], waits for them (up to
//! [`ModuleOptions::worker_stop_timeout`](crate::ModuleOptions::worker_stop_timeout)) and
//! joins them before the version can be unmapped. A version whose workers have not ended stays
//! mapped, and an event says so; it is unmapped at a later retire once they have.
//!
//! ```
//! use std::time::Duration;
//!
//! # fn start() -> Result<(), hotreload::worker::SpawnError> {
//! // In module code, for example in a method that starts a background task:
//! hotreload::worker::spawn("flush", |stop| {
//!     while !stop.wait_timeout(Duration::from_millis(100)) {
//!         // periodic work of this version
//!     }
//! })?;
//! # Ok(()) }
//! ```
//!
//! Everything here lives in the module's own image (each loaded version has its own copy of
//! this file's statics), so the workers of two versions never mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hotreload_abi::EntryResult;

/// The workers of this version: their handles and how many have not returned yet.
struct Workers {
    handles: Vec<JoinHandle<()>>,
    running: usize,
}

static WORKERS: Mutex<Workers> = Mutex::new(Workers {
    handles: Vec::new(),
    running: 0,
});
/// Signalled when a worker returns.
static ENDED: Condvar = Condvar::new();
/// Whether this version has been told to stop its workers; `STOP_LOCK` and `STOP_RAISED`
/// let a sleeping worker wake up at once when it is raised.
static STOP: AtomicBool = AtomicBool::new(false);
static STOP_LOCK: Mutex<()> = Mutex::new(());
static STOP_RAISED: Condvar = Condvar::new();

fn workers() -> MutexGuard<'static, Workers> {
    WORKERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why [`spawn`] did not start a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The version is stopping (it no longer serves): start the work in the version that
    /// serves now.
    #[error("this version of the module is retiring: it cannot start worker `{name}`")]
    Retiring {
        /// The worker's name.
        name: String,
    },
    /// The OS refused to start the thread.
    #[error("cannot start worker `{name}`: {source}")]
    Thread {
        /// The worker's name.
        name: String,
        /// The OS's error.
        source: std::io::Error,
    },
}

/// Tells a worker that its version stops serving and it should return.
#[derive(Debug)]
pub struct StopSignal {
    _private: (),
}

impl StopSignal {
    /// Whether the worker should return now.
    pub fn is_raised(&self) -> bool {
        STOP.load(Ordering::Acquire)
    }

    /// Sleeps for up to `timeout`, waking at once when the signal is raised. Returns whether
    /// it is raised.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = STOP_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.is_raised() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = STOP_RAISED
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.is_raised()
    }
}

/// Starts a thread named `name` that runs `work` as background work of the version of the
/// module this code belongs to. `work` should return soon after its [`StopSignal`] is raised.
/// A panic in `work` ends the worker (and is printed by the module's panic hook); it does not
/// reach the host.
pub fn spawn(
    name: &str,
    work: impl FnOnce(&StopSignal) + Send + 'static,
) -> Result<(), SpawnError> {
    let mut workers = workers();
    if STOP.load(Ordering::Acquire) {
        return Err(SpawnError::Retiring {
            name: name.to_owned(),
        });
    }
    // Counted before the thread starts, so that a stop raised now waits for it.
    workers.running += 1;
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ended = Ended;
            work(&StopSignal { _private: () });
        });
    match started {
        Ok(handle) => {
            workers.handles.push(handle);
            Ok(())
        }
        Err(source) => {
            workers.running -= 1;
            Err(SpawnError::Thread {
                name: name.to_owned(),
                source,
            })
        }
    }
}

/// Counts a worker as returned when its work returns or panics.
struct Ended;

impl Drop for Ended {
    fn drop(&mut self) {
        workers().running -= 1;
        ENDED.notify_all();
    }
}

/// Raises the stop signal of this version's workers.
pub(crate) fn raise_stop() {
    let _guard = STOP_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    STOP.store(true, Ordering::Release);
    STOP_RAISED.notify_all();
}

/// The `join_workers` entry: raises the stop signal, waits up to `timeout_ms` for the workers
/// to return, joins those that did, and returns how many still run.
pub(crate) extern "C" fn join_workers(timeout_ms: u64) -> EntryResult<u32> {
    crate::__private::contain_lifecycle(|| {
        raise_stop();
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut workers = workers();
        while workers.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            workers = ENDED
                .wait_timeout(workers, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        // A worker whose work returned is finishing std's thread exit, in this image: joining
        // waits for the thread to be gone.
        // When every work has returned, each thread is at most finishing its exit: join all.
        let all_returned = workers.running == 0;
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut workers.handles)
            .into_iter()
            .partition(|handle| all_returned || handle.is_finished());
        workers.handles = running;
        let still = workers.handles.len();
        drop(workers);
        for handle in ended {
            // A worker that panicked has ended too; its panic was printed in its thread.
            let _ = handle.join();
        }
        u32::try_from(still).unwrap_or(u32::MAX)
    })
}

/// The `resume_workers` entry: the version serves again and may start workers.
pub(crate) extern "C" fn resume_workers() -> EntryResult<()> {
    crate::__private::contain_lifecycle(|| STOP.store(false, Ordering::Release))
}
