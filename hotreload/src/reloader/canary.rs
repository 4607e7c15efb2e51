//! The reloader's side of canaries: the public calls, their events, and the policy's judge
//! (one thread per canary with a policy, which reads the figures and promotes or aborts).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{HotReloader, Shared};
use crate::canary::{CanaryFigures, CanaryOptions, CanaryStatus, Decision, Trial, judge};
use crate::error::HotError;
use crate::events::Event;
use crate::transaction;
use crate::{ReloadReport, VersionInfo};

impl HotReloader {
    /// Starts a canary of module `name`: the build at `options`' artifact is staged, opened
    /// and verified like a reload's (every check applies, and a refusal changes nothing),
    /// gets a copy of the serving state, and serves the share of calls `options` gives
    /// beside the serving version, which keeps serving the rest with its own state. Its
    /// policy, if any, promotes or aborts it; [`promote_canary`](Self::promote_canary) and
    /// [`abort_canary`](Self::abort_canary) do it by hand. While it runs, reloads and
    /// rollbacks of the module are refused with [`HotError::CanaryRunning`]. See the
    /// README's "Canary releases" for what happens to each side's state.
    ///
    /// Only for modules registered with shared handles ([`register`](Self::register)) that
    /// call no other module; calls from other modules reach the serving version. Returns the
    /// canary's version.
    pub fn start_canary(
        &self,
        name: &str,
        options: CanaryOptions,
    ) -> Result<VersionInfo, HotError> {
        self.shared.not_linked(name)?;
        let core = self.shared.core(name)?;
        let serving = core.version();
        let (trial, _timings) = self
            .shared
            .transaction_lock(name)
            .and_then(|_transactions| {
                transaction::canary::start(&core, &options, &self.shared.modules())
            })
            .inspect_err(|error| self.shared.events.emit(Event::failed(name, error)))?;
        self.shared.events.emit(Event::CanaryStarted {
            module: name.to_owned(),
            serving: serving.unwrap_or_else(|| trial.serving.clone()),
            canary: trial.canary.clone(),
            split: trial.split,
        });
        if trial.policy.is_some() {
            if let Err(err) = spawn_judge(Arc::downgrade(&self.shared), name, &trial) {
                let _ = self
                    .shared
                    .abort_canary(name, Some(&trial), "its judge did not start");
                return Err(HotError::CanaryUnsupported {
                    module: name.to_owned(),
                    reason: format!("its policy's thread did not start: {err}"),
                });
            }
        }
        Ok(trial.canary.clone())
    }

    /// Promotes module `name`'s canary now: it leaves the routing table once no call is in
    /// flight, its own state is retired, and its build is swapped in like a reload, with the
    /// serving state carried into it. The reload hooks are asked and told as for a reload
    /// (a veto leaves the canary running), and the events of a reload come first. If the
    /// module stays busy past its patience with [`WhenBusy::GiveUp`](crate::WhenBusy), the
    /// canary runs on; a failure after it left the routing table (the serving state does not
    /// restore into it, say) ends it, and the serving version keeps serving, state intact.
    pub fn promote_canary(&self, name: &str) -> Result<ReloadReport, HotError> {
        self.shared.promote_canary(name, None, "requested")
    }

    /// Aborts module `name`'s canary now: its state is retired with its code and its version
    /// closed; the serving version never stopped and keeps its state. Returns both versions'
    /// figures over the canary's time.
    pub fn abort_canary(&self, name: &str) -> Result<CanaryFigures, HotError> {
        self.shared.abort_canary(name, None, "requested")
    }

    /// Module `name`'s canary, if one runs, with both versions' figures so far.
    pub fn canary(&self, name: &str) -> Result<Option<CanaryStatus>, HotError> {
        Ok(self.shared.core(name)?.canary().map(|trial| trial.status()))
    }
}

impl Shared {
    /// Promotes `name`'s canary (only `expected`, if given), with its events.
    pub(crate) fn promote_canary(
        &self,
        name: &str,
        expected: Option<&Arc<Trial>>,
        reason: &str,
    ) -> Result<ReloadReport, HotError> {
        let core = self.core(name)?;
        let canary = core.canary();
        let no_canary = || HotError::NoCanary {
            module: name.to_owned(),
        };
        let Some(running) = &canary else {
            return Err(no_canary());
        };
        if expected.is_some_and(|expected| !Arc::ptr_eq(expected, running)) {
            // A policy's decision about a canary that has ended since: void, and no event.
            return Err(no_canary());
        }
        let current = core.version();
        let request = crate::ReloadRequest {
            module: name,
            artifact: &running.canary.artifact,
            current: current.as_ref(),
        };
        if let Err(reason) = self.hooks.before(&request) {
            let vetoed = HotError::Vetoed {
                module: name.to_owned(),
                reason,
            };
            self.hooks.after(name, &Err(vetoed.clone()));
            return Err(vetoed);
        }
        self.events.emit(Event::ReloadStarted {
            module: name.to_owned(),
            current,
        });
        let outcome = self.transaction_lock(name).and_then(|_transactions| {
            transaction::canary::promote(&core, expected, &self.modules())
        });
        self.hooks.after(
            name,
            &outcome
                .as_ref()
                .map(|(report, ..)| report.clone())
                .map_err(Clone::clone),
        );
        match outcome {
            Ok((report, trial, figures)) => {
                self.offer_again(&core, &trial);
                self.emit_retired(name, &report.closed, &report.released);
                self.events.emit(Event::Reloaded {
                    module: name.to_owned(),
                    from: report.from.clone(),
                    to: report.to.clone(),
                    timings: report.timings,
                });
                self.events.emit(Event::CanaryPromoted {
                    module: name.to_owned(),
                    canary: trial.canary.clone(),
                    reason: reason.to_owned(),
                    figures,
                });
                Ok(report)
            }
            Err(error) => {
                self.events.emit(Event::failed(name, &error));
                // Taken out and closed by the failed promotion: the canary is over.
                if let Some(trial) = canary.filter(|_| core.canary().is_none()) {
                    self.events.emit(Event::CanaryAborted {
                        module: name.to_owned(),
                        canary: trial.canary.clone(),
                        reason: format!("its promotion failed: {error}"),
                        figures: trial.figures(),
                    });
                }
                Err(error)
            }
        }
    }

    /// Aborts `name`'s canary (only `expected`, if given), with its events.
    pub(crate) fn abort_canary(
        &self,
        name: &str,
        expected: Option<&Arc<Trial>>,
        reason: &str,
    ) -> Result<CanaryFigures, HotError> {
        let core = self.core(name)?;
        let (trial, figures, closed) = self
            .transaction_lock(name)
            .and_then(|_transactions| transaction::canary::abort(&core, expected))?;
        self.offer_again(&core, &trial);
        self.emit_retired(name, std::slice::from_ref(&closed), &[]);
        self.events.emit(Event::CanaryAborted {
            module: name.to_owned(),
            canary: trial.canary.clone(),
            reason: reason.to_owned(),
            figures: figures.clone(),
        });
        Ok(figures)
    }
}

impl Shared {
    /// After `trial` ended: if the module's artifact changed while it ran (a build the
    /// watcher found then was refused with [`HotError::CanaryRunning`]), the watcher checks
    /// it again now. A file unchanged since the canary began is not offered (after a
    /// promotion it holds the build the canary replaced).
    fn offer_again(&self, core: &crate::module::ModuleCore, trial: &Trial) {
        let now = crate::version::ArtifactIdentity::of_path(&core.spec.artifact);
        if now == trial.artifact_at_start {
            return;
        }
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(watcher) = watcher.as_ref() {
            let _ = watcher.send(crate::watch::Msg::Recheck(core.spec.name.clone()));
        }
    }
}

/// Starts the thread that judges `trial` by its policy: it reads the figures every
/// `check_every` (and at once when the error budget is spent), and promotes or aborts the
/// canary when the policy says; it ends with the canary or the reloader.
fn spawn_judge(shared: Weak<Shared>, name: &str, trial: &Arc<Trial>) -> std::io::Result<()> {
    let Some(policy) = trial.policy else {
        return Ok(());
    };
    let (name, trial) = (name.to_owned(), Arc::clone(trial));
    std::thread::Builder::new()
        .name(format!("hotreload-canary-{name}"))
        .spawn(move || {
            loop {
                if trial.wait(policy.check_every.max(Duration::from_millis(1))) {
                    return;
                }
                let decision = judge(&policy, &trial.figures(), trial.failures());
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let outcome = match decision {
                    Decision::Wait => continue,
                    Decision::Promote => shared
                        .promote_canary(&name, Some(&trial), "the policy's bounds were met")
                        .map(drop),
                    Decision::Abort(reason) => {
                        shared.abort_canary(&name, Some(&trial), &reason).map(drop)
                    }
                };
                match outcome {
                    Ok(()) | Err(HotError::NoCanary { .. }) => {}
                    Err(error) => {
                        tracing::warn!(module = %name, "the canary's policy could not act: {error}")
                    }
                }
                return;
            }
        })
        .map(drop)
}
