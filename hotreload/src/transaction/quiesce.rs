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
