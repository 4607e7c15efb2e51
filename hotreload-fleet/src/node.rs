//! A node: a process whose `HotReloader` takes its modules' releases from the fleet.
//!
//! The node runs on its own thread with its own single-threaded Tokio runtime, so a host
//! without an async runtime can attach one. It watches the modules' release and admission
//! records; for a release it is admitted to, it checks the signature against its trusted
//! keys and that the number is higher than the one it serves, downloads the build, checks
//! its size and SHA-256, puts it at the module's artifact path (a rename, never a partial
//! file), and asks the reloader to reload: every local check of the reload transaction
//! applies, and on any failure the old build keeps serving. It writes its status at every
//! change and every heartbeat.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use hotreload::{Event, HotReloader};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::error::check_name;
use crate::publish::hex;
use crate::record::{self, Admission, Kind, NodeStatus, Phase, Release};
use crate::store::{Missing, Store, decode};
use crate::{FleetConfig, FleetError, TrustedKeys};

/// How a node attaches: where the fleet is, who the node is, whose signatures it trusts.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    config: FleetConfig,
    node: String,
    trusted: TrustedKeys,
    modules: Vec<String>,
    heartbeat: Duration,
    memory: Option<PathBuf>,
}

impl NodeOptions {
    /// Node `node` (unique in the fleet) of the fleet at `config`, accepting releases signed
    /// by `trusted`. It follows every module registered with the reloader when it attaches,
    /// and writes its status every second.
    pub fn new(config: FleetConfig, node: impl Into<String>, trusted: TrustedKeys) -> Self {
        NodeOptions {
            config,
            node: node.into(),
            trusted,
            modules: Vec::new(),
            heartbeat: Duration::from_secs(1),
            memory: None,
        }
    }

    /// Follows only these modules (call once per module).
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.modules.push(module.into());
        self
    }

    /// Keeps, in file `path` (JSON), the newest release number this node has taken or
    /// refused (with a valid signature) for each module, and reads it when it attaches: a
    /// restarted node still refuses a signed record older than what it decided before, even
    /// if someone with write access to the bucket puts one back. Without it, a node
    /// remembers only while it runs.
    pub fn remember_in(mut self, path: impl Into<PathBuf>) -> Self {
        self.memory = Some(path.into());
        self
    }

    /// Writes the status this often (a rollout counts a node gone after three missed beats).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }
}

/// A node attached to a fleet. Dropping it (or [`detach`](Self::detach)) stops following the
/// fleet; the modules keep serving what they serve.
pub struct FleetNode {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    node: String,
}

impl std::fmt::Debug for FleetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetNode")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FleetNode {
    /// Attaches `reloader` to the fleet. Returns at once: the node connects in the background
    /// (retrying while the server is down) and catches up to the current release of each
    /// module it is admitted to. Each module must have a build loaded.
    pub fn attach(reloader: Arc<HotReloader>, options: NodeOptions) -> Result<Self, FleetError> {
        check_name("node", &options.node)?;
        check_name("bucket", &options.config.bucket)?;
        let mut modules = options.modules.clone();
        if modules.is_empty() {
            modules = reloader.module_names();
        }
        let mut tracked = Vec::new();
        for module in &modules {
            check_name("module", module)?;
            let serving = reloader
                .current_version(module)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    FleetError::Node(format!("module {module}: no build loaded to start from"))
                })?;
            tracked.push(Tracked::new(module, serving.sha256));
        }
        let remembered = match &options.memory {
            Some(path) => read_memory(path)?,
            None => BTreeMap::new(),
        };
        for tracked in &mut tracked {
            tracked.decided = remembered.get(&tracked.module).copied().unwrap_or(0);
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let followed = modules.clone();
        reloader.on_event(move |event| {
            let (module, rolled_back) = match event {
                Event::RolledBack { module, reason, .. } => (module, Some(reason.clone())),
                Event::ProbationEnded { module, .. } => (module, None),
                _ => return,
            };
            if followed.contains(module) {
                let _ = events_tx.send((module.clone(), rolled_back));
            }
        });
        let (stop, stopped) = oneshot::channel();
        let node = options.node.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| FleetError::Node(format!("its runtime: {err}")))?;
        let thread = std::thread::Builder::new()
            .name(format!("hotreload-fleet-{node}"))
            .spawn(move || {
                let mut run = Run {
                    reloader,
                    options,
                    tracked,
                    store: None,
                    remembered,
                    board: Arc::new(Board::default()),
                };
                runtime.block_on(run.run(stopped, events_rx));
            })
            .map_err(|err| FleetError::Node(format!("its thread: {err}")))?;
        Ok(FleetNode {
            stop: Some(stop),
            thread: Some(thread),
            node,
        })
    }

    /// Stops following the fleet and waits for the node's thread (a reload in progress ends
    /// first).
    pub fn detach(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FleetNode {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What the node knows and says about one module.
struct Tracked {
    module: String,
    /// The release served (0: the build the process started with).
    release: u64,
    sha256: String,
    phase: Phase,
    attempted: Option<u64>,
    reason: Option<String>,
    /// The highest release decided: taken, adopted or refused. Not looked at again.
    decided: u64,
    /// The release taken last and what served before it, to tell a probation's rollback.
    taken: Option<Taken>,
    /// The newest release record and admission seen.
    record: Option<Release>,
    admission: Option<Admission>,
    /// The reason of the last local rollback, from the reloader's events.
    last_rollback: Option<String>,
    /// When a local rollback was first seen without its event.
    rollback_seen: Option<Instant>,
    /// The build taken is on probation: the artifact path holds the one before until it
    /// passes.
    artifact_pending: bool,
}

struct Taken {
    release: u64,
    sha256: String,
    before_release: u64,
    before_sha256: String,
}

impl Tracked {
    fn new(module: &str, sha256: String) -> Self {
        Tracked {
            module: module.to_owned(),
            release: 0,
            sha256,
            phase: Phase::Healthy,
            attempted: None,
            reason: None,
            decided: 0,
            taken: None,
            record: None,
            admission: None,
            last_rollback: None,
            rollback_seen: None,
            artifact_pending: false,
        }
    }

    /// Refuses `release`; a `signed` one counts as decided (its number is not taken again).
    fn refuse(&mut self, release: u64, reason: String, signed: bool) {
        tracing::warn!(module = %self.module, release, %reason, "release refused");
        if signed {
            self.decided = self.decided.max(release);
        }
        self.phase = Phase::Refused;
        self.attempted = Some(release);
        self.reason = Some(reason);
    }
}

struct Run {
    reloader: Arc<HotReloader>,
    options: NodeOptions,
    tracked: Vec<Tracked>,
    store: Option<Store>,
    /// What the memory file holds.
    remembered: BTreeMap<String, u64>,
    /// The statuses the heartbeat task writes.
    board: Arc<Board>,
}

/// How often a node re-reads its modules' records even with its watches up: a watch lost
/// across a server restart costs at most this much delay.
const REREAD_EVERY: u32 = 5;

impl Run {
    async fn run(
        &mut self,
        mut stopped: oneshot::Receiver<()>,
        mut events: mpsc::UnboundedReceiver<(String, Option<String>)>,
    ) {
        let store = tokio::select! {
            store = open_until_up(&self.options.config) => store,
            _ = &mut stopped => return,
        };
        self.store = Some(store.clone());
        // Statuses go out from a task of their own: the loop below may wait on the server
        // (a watch reopened, a download) while heartbeats must go on.
        let beating = tokio::spawn(beat(
            store.clone(),
            self.board.clone(),
            self.options.heartbeat,
        ));
        let _stop_beating = AbortOnDrop(beating);
        let mut releases = None;
        let mut admissions = None;
        let mut beat = tokio::time::interval(self.options.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        loop {
            if releases.is_none() {
                releases = store.kv.watch_with_history("release.*").await.ok();
            }
            if admissions.is_none() {
                admissions = store.kv.watch_with_history("admit.*").await.ok();
            }
            tokio::select! {
                _ = &mut stopped => return,
                entry = next(&mut releases) => match entry {
                    Some(entry) => self.seen(entry).await,
                    None => releases = None,
                },
                entry = next(&mut admissions) => match entry {
                    Some(entry) => self.seen(entry).await,
                    None => admissions = None,
                },
                Some((module, rolled_back)) = events.recv() => {
                    if let Some(tracked) = self.tracked.iter_mut().find(|t| t.module == module)
                        && let Some(reason) = rolled_back
                    {
                        // A rollback seen before its event: its reason, now.
                        if tracked.phase == Phase::Failed
                            && tracked.reason.as_deref() == Some(ROLLED_BACK)
                        {
                            tracked.reason = Some(reason.clone());
                        }
                        tracked.last_rollback = Some(reason);
                    }
                    self.refresh(&module).await;
                    self.write_status(&module).await;
                }
                _ = beat.tick() => {
                    beats = beats.wrapping_add(1);
                    if beats % REREAD_EVERY == 0 {
                        self.reread().await;
                    }
                    for module in self.modules() {
                        self.refresh(&module).await;
                        self.write_status(&module).await;
                    }
                }
            }
        }
    }

    fn modules(&self) -> Vec<String> {
        self.tracked.iter().map(|t| t.module.clone()).collect()
    }

    fn tracked(&mut self, module: &str) -> Option<&mut Tracked> {
        self.tracked.iter_mut().find(|t| t.module == module)
    }

    /// Takes in a release or admission record from a watch, and decides on it.
    async fn seen(&mut self, entry: kv::Entry) {
        let (module, release) = if let Some(module) = entry.key.strip_prefix("release.") {
            (module, true)
        } else if let Some(module) = entry.key.strip_prefix("admit.") {
            (module, false)
        } else {
            return;
        };
        let module = module.to_owned();
        let Some(tracked) = self.tracked(&module) else {
            return;
        };
        let decoded = if release {
            decode::<Release>(&entry.key, &entry.value).map(|r| tracked.record = Some(r))
        } else {
            decode::<Admission>(&entry.key, &entry.value).map(|a| tracked.admission = Some(a))
        };
        if let Err(err) = decoded {
            tracing::warn!(%err, "undecodable record");
            return;
        }
        self.consider(&module).await;
    }

    /// Reads every module's records again (the watches' safety net).
    async fn reread(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        for module in self.modules() {
            let release = store.get::<Release>(&record::release_key(&module)).await;
            let admission = store.get::<Admission>(&record::admit_key(&module)).await;
            let Some(tracked) = self.tracked(&module) else {
                continue;
            };
            if let Ok(Some((release, _))) = release {
                tracked.record = Some(release);
            }
            if let Ok(Some((admission, _))) = admission {
                tracked.admission = Some(admission);
            }
            self.consider(&module).await;
        }
    }

    /// Decides on the newest record of `module`: refuse it, wait for admission, or take it.
    async fn consider(&mut self, module: &str) {
        let node = self.options.node.clone();
        let trusted = self.options.trusted.clone();
        let bucket = self.options.config.bucket.clone();
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        let Some(release) = tracked.record.clone() else {
            return;
        };
        // Refused already and not the number it serves (the genuine record of which is what
        // clears a refusal of a copy of it, below): nothing new to say.
        if tracked.phase == Phase::Refused
            && tracked.attempted == Some(release.release)
            && release.release != tracked.decided
        {
            return;
        }
        // Unsigned or not for this module: refused, and its number means nothing (a forged
        // record with a huge number must not make the real next release look old).
        let signed = if release.module != module {
            Err(format!("the record names module {}", release.module))
        } else {
            trusted
                .verify(&release.statement(&bucket), &release.signature)
                .map_err(|reason| format!("signature: {reason}"))
        };
        if let Err(reason) = signed {
            tracked.refuse(release.release, reason, false);
            self.write_status(module).await;
            return;
        }
        if release.release < tracked.decided {
            let reason = format!(
                "release {} is older than release {}, the newest this node has taken or refused (a replayed record?)",
                release.release, tracked.decided
            );
            tracked.refuse(release.release, reason, false);
            self.write_status(module).await;
            return;
        }
        if release.release == tracked.decided {
            // Decided already: the build it serves gets its number back (after a restart),
            // and a refusal of some other record since is over.
            if tracked.sha256 == release.sha256
                && (tracked.release != release.release || tracked.phase == Phase::Refused)
            {
                tracked.release = release.release;
                tracked.phase = Phase::Healthy;
                tracked.attempted = None;
                tracked.reason = None;
                self.refresh(module).await;
                self.write_status(module).await;
            }
            return;
        }
        let admitted = tracked
            .admission
            .as_ref()
            .is_some_and(|a| a.release == release.release && a.admits(&node));
        if !admitted {
            return;
        }
        self.take(module, release).await;
        self.refresh(module).await;
        self.write_status(module).await;
    }

    /// Takes a signed, admitted release.
    async fn take(&mut self, module: &str, release: Release) {
        let outcome = self.install(module, &release).await;
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        match outcome {
            Ok(installed @ (Installed::Build | Installed::OnProbation)) => {
                tracing::info!(module, release = release.release, "release taken");
                tracked.artifact_pending = installed == Installed::OnProbation;
                let changed = tracked.sha256 != release.sha256;
                tracked.taken = changed.then_some(Taken {
                    release: release.release,
                    sha256: release.sha256.clone(),
                    before_release: tracked.release,
                    before_sha256: tracked.sha256.clone(),
                });
                tracked.decided = release.release;
                tracked.release = release.release;
                tracked.sha256 = release.sha256;
                tracked.last_rollback = None;
                tracked.rollback_seen = None;
                tracked.phase = Phase::Healthy;
                tracked.attempted = None;
                tracked.reason = None;
            }
            Ok(Installed::NumberOnly) => {
                tracing::info!(
                    module,
                    release = release.release,
                    "rollback of a release it never served: number noted"
                );
                tracked.decided = release.release;
                tracked.release = release.release;
                tracked.phase = Phase::Healthy;
                tracked.attempted = None;
                tracked.reason = None;
            }
            Err(Failure::Refused(reason)) => tracked.refuse(release.release, reason, true),
            Err(Failure::Transient(reason)) => {
                // Not decided: tried again at the next look at the records.
                tracing::warn!(module, release = release.release, %reason, "release not taken yet");
            }
        }
    }

    /// Makes the release's build serve: already serving, kept for rollback, or downloaded,
    /// checked and reloaded. A failed reload puts the serving build back at the artifact
    /// path, so that a restart loads what served.
    async fn install(&mut self, module: &str, release: &Release) -> Result<Installed, Failure> {
        let reloader = self.reloader.clone();
        let transient = |err: hotreload::HotError| Failure::Transient(err.to_string());
        let serving = reloader
            .current_version(module)
            .map_err(transient)?
            .map(|v| v.sha256)
            .unwrap_or_default();
        if serving == release.sha256 {
            return Ok(Installed::Build);
        }
        if let Kind::Rollback { from } = release.kind
            && self.tracked(module).is_some_and(|t| t.release != from)
        {
            // It never took (or already left) the release rolled back: nothing to undo.
            return Ok(Installed::NumberOnly);
        }
        if matches!(release.kind, Kind::Rollback { .. }) {
            let kept = reloader
                .history(module)
                .map_err(transient)?
                .last()
                .is_some_and(|v| v.sha256 == release.sha256);
            // A kept build that cannot go back (its state) is downloaded and reloaded below.
            if kept && reloader.rollback(module).is_ok() {
                if let Err(err) = restore_artifact(&reloader, module) {
                    tracing::warn!(module, %err, "the serving build is not back at the artifact path");
                }
                return Ok(Installed::Build);
            }
        }
        let store = self
            .store
            .clone()
            .ok_or(Failure::Transient("not connected".to_owned()))?;
        let bytes = match store.download(&release.object, release.size).await {
            Ok(bytes) => bytes,
            Err(Missing::WrongSize(reason)) => {
                return Err(Failure::Refused(format!("download: {reason}")));
            }
            Err(Missing::Absent(reason) | Missing::Unreachable(reason)) => {
                return Err(Failure::Transient(format!("download: {reason}")));
            }
        };
        let digest = hex(&Sha256::digest(&bytes));
        if digest != release.sha256 {
            return Err(Failure::Refused(format!(
                "digest: the download's SHA-256 is {digest}, the signed release says {}",
                release.sha256
            )));
        }
        let artifact = artifact_of(&reloader, module).map_err(Failure::Transient)?;
        // What the artifact holds now (the serving build): back there while the new one is on
        // probation, so that a process that dies of it restarts on what served.
        let serving_bytes = std::fs::read(&artifact).ok();
        put_in_place(&artifact, &bytes)
            .map_err(|err| Failure::Transient(format!("writing {}: {err}", artifact.display())))?;
        let outcome = reloader.reload_module(module);
        let refused = match outcome {
            Ok(report) if report.to.sha256 == release.sha256 => {
                let on_probation = on_probation(&reloader, module, report.to.generation);
                if let (true, Some(serving_bytes)) = (on_probation, serving_bytes) {
                    put_in_place(&artifact, &serving_bytes).map_err(|err| {
                        Failure::Transient(format!("writing {}: {err}", artifact.display()))
                    })?;
                    return Ok(Installed::OnProbation);
                }
                return Ok(Installed::Build);
            }
            Ok(report) => {
                // The artifact file changed between our write and the reload's copy of it.
                let _ = reloader.rollback(module);
                format!(
                    "the artifact changed under the node: loaded SHA-256 {}, the release is {}",
                    report.to.sha256, release.sha256
                )
            }
            Err(err) => {
                let _ = restore_artifact(&reloader, module);
                return Err(match err {
                    // The moment, not the build: tried again at the next look.
                    hotreload::HotError::Busy { .. }
                    | hotreload::HotError::TransactionRunning { .. }
                    | hotreload::HotError::CanaryRunning { .. }
                    | hotreload::HotError::Vetoed { .. }
                    | hotreload::HotError::Shadow { .. }
                    | hotreload::HotError::ShadowDir { .. }
                    | hotreload::HotError::ReadArtifact { .. } => {
                        Failure::Transient(format!("reload: {err}"))
                    }
                    err => Failure::Refused(format!("reload: {err}")),
                });
            }
        };
        if let Err(err) = restore_artifact(&reloader, module) {
            tracing::warn!(module, %err, "the serving build is not back at the artifact path");
        }
        Err(Failure::Refused(refused))
    }

    /// Reads the module's phase from the reloader: probation over, or rolled back by it.
    async fn refresh(&mut self, module: &str) {
        let reloader = self.reloader.clone();
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        let Ok(Some(serving)) = reloader.current_version(module) else {
            return;
        };
        if serving.sha256 != tracked.sha256 {
            let rolled_back = tracked.taken.as_ref().is_some_and(|taken| {
                taken.sha256 == tracked.sha256 && serving.sha256 == taken.before_sha256
            });
            // The runtime's event says why; it follows the swap closely. Wait for it a little.
            if rolled_back && tracked.last_rollback.is_none() {
                let first_seen = *tracked.rollback_seen.get_or_insert_with(Instant::now);
                if first_seen.elapsed() < EVENT_GRACE {
                    // Not healthy, whatever the reason turns out to be.
                    tracked.phase = Phase::Probation;
                    return;
                }
            }
            match &tracked.taken {
                Some(taken) if rolled_back => {
                    tracked.phase = Phase::Failed;
                    tracked.attempted = Some(taken.release);
                    tracked.reason = Some(
                        tracked
                            .last_rollback
                            .clone()
                            .unwrap_or_else(|| ROLLED_BACK.to_owned()),
                    );
                    tracked.release = taken.before_release;
                    tracked.artifact_pending = false;
                    if let Err(err) = restore_artifact(&reloader, module) {
                        tracing::warn!(module, %err, "the serving build is not back at the artifact path");
                    }
                }
                _ => {
                    // A build the host loaded itself: not a release.
                    tracked.release = 0;
                    tracked.phase = Phase::Healthy;
                }
            }
            tracked.sha256 = serving.sha256.clone();
            tracked.taken = None;
            tracked.rollback_seen = None;
        }
        if matches!(tracked.phase, Phase::Healthy | Phase::Probation) {
            let on_probation = on_probation(&reloader, module, serving.generation);
            tracked.phase = if on_probation {
                Phase::Probation
            } else {
                Phase::Healthy
            };
            if tracked.phase == Phase::Healthy && tracked.artifact_pending {
                // Through its probation: the build goes to the artifact path for good.
                match restore_artifact(&reloader, module) {
                    Ok(()) => tracked.artifact_pending = false,
                    Err(err) => {
                        tracing::warn!(module, %err, "the build is not at the artifact path")
                    }
                }
            }
        }
    }

    async fn write_status(&mut self, module: &str) {
        let node = self.options.node.clone();
        let heartbeat_ms = self.options.heartbeat.as_millis() as u64;
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        let status = NodeStatus {
            node: node.clone(),
            module: module.to_owned(),
            release: tracked.release,
            sha256: tracked.sha256.clone(),
            phase: tracked.phase,
            attempted: tracked.attempted,
            reason: tracked.reason.clone(),
            heartbeat_ms,
            written_unix_ms: record::unix_ms(),
            pid: std::process::id(),
        };
        // On disk before the fleet hears of it.
        self.remember();
        self.board.post(status);
    }

    /// Writes the decided release numbers to the memory file, if they changed.
    fn remember(&mut self) {
        let Some(path) = &self.options.memory else {
            return;
        };
        let decided: BTreeMap<String, u64> = self
            .tracked
            .iter()
            .map(|t| (t.module.clone(), t.decided))
            .collect();
        if decided == self.remembered {
            return;
        }
        let json = serde_json::to_vec_pretty(&decided).expect("numbers serialise");
        match put_in_place(path, &json) {
            Ok(()) => self.remembered = decided,
            Err(err) => tracing::warn!(%err, path = %path.display(), "release numbers not kept"),
        }
    }
}

/// The statuses a node reports, and a bell for the heartbeat task when one changed.
#[derive(Default)]
struct Board {
    statuses: std::sync::Mutex<BTreeMap<String, NodeStatus>>,
    changed: tokio::sync::Notify,
}

impl Board {
    /// Puts `status` up; the heartbeat task writes it at once if it says something new.
    fn post(&self, status: NodeStatus) {
        let mut statuses = self
            .statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = statuses.get(&status.module).is_none_or(|old| {
            NodeStatus {
                written_unix_ms: status.written_unix_ms,
                ..old.clone()
            } != status
        });
        statuses.insert(status.module.clone(), status);
        if new {
            self.changed.notify_one();
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes every status on the board at each heartbeat and whenever one changed, stamped with
/// the time of writing; the only writer of the node's status keys, so they never go back in
/// time. A write that does not go through within a heartbeat (or a second) is given up:
/// the next beat writes the newest.
async fn beat(store: Store, board: Arc<Board>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let patience = every.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = board.changed.notified() => {}
        }
        let statuses: Vec<NodeStatus> = board
            .statuses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        for mut status in statuses {
            status.written_unix_ms = record::unix_ms();
            let key = record::status_key(&status.module, &status.node);
            match tokio::time::timeout(patience, store.put_once(&key, &status)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%err, "status not written"),
                Err(_) => tracing::debug!(key, "status write timed out"),
            }
        }
    }
}

/// Opens the store, trying again every half second until the server answers.
async fn open_until_up(config: &FleetConfig) -> Store {
    loop {
        match Store::open(config, true).await {
            Ok(store) => return store,
            Err(err) => {
                tracing::debug!(%err, "fleet store not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The watch's next entry; `None` when it ended or failed (it is then opened again); never
/// ready without a watch.
async fn next(watch: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    let Some(watch) = watch else {
        tokio::time::sleep(Duration::from_millis(500)).await;
        return None;
    };
    loop {
        match watch.next().await {
            Some(Ok(entry)) if entry.operation == kv::Operation::Put => return Some(entry),
            Some(Ok(_)) => continue,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        }
    }
}

/// How long a node waits for the runtime's event about a local rollback it has seen.
const EVENT_GRACE: Duration = Duration::from_secs(1);

/// What a local rollback says when its event never told why.
const ROLLED_BACK: &str = "rolled back by the runtime";

/// How a release was installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installed {
    /// Its build serves (and is at the artifact path).
    Build,
    /// Its build serves, on probation; the artifact path holds the build before it.
    OnProbation,
    /// A rollback of a release this node never served: only its number is taken.
    NumberOnly,
}

/// Whether load `generation` of `module` is on probation.
fn on_probation(reloader: &HotReloader, module: &str, generation: u64) -> bool {
    reloader.status().ok().is_some_and(|status| {
        status
            .modules
            .iter()
            .any(|m| m.name == module && m.probation.is_some_and(|p| p.generation == generation))
    })
}

/// Why a node did not take a release.
enum Failure {
    /// The release is refused: decided, not tried again.
    Refused(String),
    /// Something local or the server failed: tried again later.
    Transient(String),
}

/// Where module `module`'s builds are read from.
fn artifact_of(reloader: &HotReloader, module: &str) -> Result<PathBuf, String> {
    let status = reloader.status().map_err(|err| err.to_string())?;
    status
        .modules
        .iter()
        .find(|m| m.name == module)
        .map(|m| m.artifact.clone())
        .ok_or_else(|| format!("module {module} is not registered"))
}

/// Puts the serving version's build (its private shadow copy) back at the artifact path.
fn restore_artifact(reloader: &HotReloader, module: &str) -> Result<(), String> {
    let serving = reloader
        .current_version(module)
        .map_err(|err| err.to_string())?
        .ok_or("nothing serves")?;
    let bytes = std::fs::read(&serving.shadow)
        .map_err(|err| format!("reading {}: {err}", serving.shadow.display()))?;
    let artifact = artifact_of(reloader, module)?;
    put_in_place(&artifact, &bytes).map_err(|err| format!("writing {}: {err}", artifact.display()))
}

/// Reads a memory file: module → newest release decided. A missing file is an empty memory.
fn read_memory(path: &Path) -> Result<BTreeMap<String, u64>, FleetError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|err| FleetError::Node(format!("its memory file {}: {err}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(err) => Err(FleetError::Node(format!(
            "its memory file {}: {err}",
            path.display()
        ))),
    }
}

/// Writes `bytes` to `artifact` by a rename from a file beside it: a reload never reads a
/// partial build.
fn put_in_place(artifact: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = artifact.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(artifact).map_err(|err| err.error)?;
    Ok(())
}
