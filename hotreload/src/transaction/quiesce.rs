//! Before prepare (and a rollback's swap): get the module to the transaction alone, holding
//! new calls back for as short a time as possible.
//!
//! A blocking write lock would hold every new call back from the moment it starts waiting
//! for the calls in progress: a reload behind one 300 ms call stalls every caller for up to
//! 300 ms. Instead the transaction tries for the lock without waiting, backing off between
//! tries, so that calls keep starting and finishing on the old version until there is a
//! moment with none in flight; only when the module's patience runs out does it wait
//! (holding new calls back) or give up, as its [`Quiesce`](crate::Quiesce) policy says.

use std::time::{Duration, Instant};

use crate::WhenBusy;
use crate::access::{ReplacePermit, SharePermit, TransactionMark};
use crate::error::HotError;
use crate::module::ModuleCore;

/// The permit, with the time spent looking for a quiet moment (nobody held back) and the
/// time spent waiting with new calls held back.
pub(crate) struct Quiesced<'a> {
    pub permit: ReplacePermit<'a>,
    pub looked: Duration,
    pub held_back: Duration,
}

/// Gets the permit to replace `core`'s live version. A rollback never gives up (`recovery`):
/// it waits once its patience is spent.
pub(crate) fn acquire<'a>(
    core: &'a ModuleCore,
    mark: &TransactionMark<'a>,
    recovery: bool,
) -> Result<Quiesced<'a>, HotError> {
    patiently(
        core,
        recovery,
        (),
        |()| core.access.try_permit_replace(mark).ok_or(()),
        |()| core.access.permit_replace(mark),
    )
}

/// Completes `sharing` (writers already excluded, the state read beside `&self` calls) into
/// the permit to replace the live version, the same way: a moment with no `&self` call in
/// flight, or the module's patience.
pub(crate) fn upgrade<'a>(
    core: &'a ModuleCore,
    sharing: SharePermit<'a>,
) -> Result<Quiesced<'a>, HotError> {
    patiently(
        core,
        false,
        sharing,
        SharePermit::try_replace,
        SharePermit::replace,
    )
}

/// Tries `try_once` without holding callers back, backing off between tries, until the
/// module's patience is spent; then waits (`wait`, holding new calls back) or gives up.
fn patiently<'a, S>(
    core: &'a ModuleCore,
    recovery: bool,
    mut state: S,
    mut try_once: impl FnMut(S) -> Result<ReplacePermit<'a>, S>,
    wait: impl FnOnce(S) -> ReplacePermit<'a>,
) -> Result<Quiesced<'a>, HotError> {
    let policy = core.spec.quiesce;
    let started = Instant::now();
    let mut pause = Duration::from_nanos(200);
    loop {
        state = match try_once(state) {
            Ok(permit) => {
                return Ok(Quiesced {
                    permit,
                    looked: started.elapsed(),
                    held_back: Duration::ZERO,
                });
            }
            Err(state) => state,
        };
        let looked = started.elapsed();
        if looked >= policy.patience {
            if policy.then == WhenBusy::GiveUp && !recovery {
                return Err(HotError::Busy {
                    module: core.spec.name.clone(),
                    waited: looked,
                });
            }
            let waiting = Instant::now();
            let permit = wait(state);
            return Ok(Quiesced {
                permit,
                looked,
                held_back: waiting.elapsed(),
            });
        }
        // Short calls end within microseconds: spin briefly first, then sleep, never past
        // the patience.
        if pause < Duration::from_micros(20) {
            std::hint::spin_loop();
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause.min(policy.patience.saturating_sub(looked)));
        }
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// The permits to replace the live versions of a set of modules (index for index), found the
/// same way: a moment with no call in flight in any of them, trying all without waiting and
/// letting go of every lock taken when one is busy (a call holding one member's lock while it
/// calls another never waits for this transaction). Once the longest patience of the members
/// is spent, their gates close (see `Access::close_gate`): a call made from outside the set's
/// calls waits (for the patience at most), while calls already in flight, and the calls they
/// make into each other, go on and end; the transaction keeps trying until none is left. No
/// lock is held while it waits, so calls that cross members, in any order and in cycles,
/// cannot deadlock with it. It gives up ([`HotError::Busy`]) after ten times the patience
/// with the gates closed (calls that never leave a moment), or at once when the patience is
/// spent if a member's policy is to give up (not for a rollback, `recovery`).
pub(crate) fn acquire_set<'a>(
    cores: &[&'a ModuleCore],
    marks: &[&TransactionMark<'a>],
    recovery: bool,
) -> Result<(Vec<ReplacePermit<'a>>, Duration, Duration), HotError> {
    let patience = cores
        .iter()
        .map(|core| core.spec.quiesce.patience)
        .max()
        .unwrap_or_default();
    let give_up = !recovery
        && cores
            .iter()
            .any(|core| core.spec.quiesce.then == WhenBusy::GiveUp);
    let started = Instant::now();
    let mut pause = Duration::from_nanos(200);
    let mut gates = Vec::new();
    let mut looked = Duration::ZERO;
    loop {
        let mut permits = Vec::with_capacity(cores.len());
        for (core, mark) in cores.iter().zip(marks) {
            match core.access.try_permit_replace(mark) {
                Some(permit) => permits.push(permit),
                None => break,
            }
        }
        if permits.len() == cores.len() {
            // The write locks hold every call back now: the gates may open.
            let held_back = if gates.is_empty() {
                looked = started.elapsed();
                Duration::ZERO
            } else {
                started.elapsed() - looked
            };
            drop(gates);
            return Ok((permits, looked, held_back));
        }
        drop(permits);
        let busy = || HotError::Busy {
            module: cores
                .iter()
                .map(|core| core.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            waited: started.elapsed(),
        };
        if gates.is_empty() && started.elapsed() >= patience {
            looked = started.elapsed();
            if give_up {
                return Err(busy());
            }
            gates = cores
                .iter()
                .map(|core| core.access.close_gate(patience))
                .collect();
            pause = Duration::from_nanos(200);
        } else if !gates.is_empty() && started.elapsed() - looked >= patience * 10 {
            return Err(busy());
        }
        if pause < Duration::from_micros(20) {
            std::hint::spin_loop();
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause);
        }
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}
