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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use hotreload::{Event, HotReloader};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::error::check_name;
use crate::publish::hex;
use crate::record::{self, Admission, Kind, NodeStatus, Phase, Release};
use crate::store::{Store, decode};
use crate::{FleetConfig, FleetError, TrustedKeys};

/// How a node attaches: where the fleet is, who the node is, whose signatures it trusts.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    config: FleetConfig,
    node: String,
    trusted: TrustedKeys,
    modules: Vec<String>,
    heartbeat: Duration,
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
        }
    }

    /// Follows only these modules (call once per module).
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.modules.push(module.into());
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
        }
    }

    fn refuse(&mut self, release: u64, reason: String) {
        tracing::warn!(module = %self.module, release, %reason, "release refused");
        self.decided = self.decided.max(release);
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
                    Some(entry) => self.seen_release(entry).await,
                    None => releases = None,
                },
                entry = next(&mut admissions) => match entry {
                    Some(entry) => self.seen_admission(entry).await,
                    None => admissions = None,
                },
                Some((module, rolled_back)) = events.recv() => {
                    if let Some(tracked) = self.tracked.iter_mut().find(|t| t.module == module) {
                        if rolled_back.is_some() {
                            tracked.last_rollback = rolled_back;
                        }
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

    async fn seen_release(&mut self, entry: kv::Entry) {
        let Some(module) = entry.key.strip_prefix("release.").map(str::to_owned) else {
            return;
        };
        let Some(tracked) = self.tracked(&module) else {
            return;
        };
        match decode::<Release>(&entry.key, &entry.value) {
            Ok(release) => tracked.record = Some(release),
            Err(err) => {
                tracing::warn!(%err, "undecodable release record");
                return;
            }
        }
        self.consider(&module).await;
    }

    async fn seen_admission(&mut self, entry: kv::Entry) {
        let Some(module) = entry.key.strip_prefix("admit.").map(str::to_owned) else {
            return;
        };
        let Some(tracked) = self.tracked(&module) else {
            return;
        };
        match decode::<Admission>(&entry.key, &entry.value) {
            Ok(admission) => tracked.admission = Some(admission),
            Err(err) => {
                tracing::warn!(%err, "undecodable admission record");
                return;
            }
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
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        let Some(release) = tracked.record.clone() else {
            return;
        };
        if release.release <= tracked.decided {
            if release.release < tracked.release && tracked.attempted != Some(release.release) {
                let reason = format!(
                    "release {} is older than the served release {} (a replayed record?)",
                    release.release, tracked.release
                );
                tracked.refuse(release.release, reason);
                self.write_status(module).await;
            }
            return;
        }
        if release.module != module {
            let reason = format!("the record names module {}", release.module);
            tracked.refuse(release.release, reason);
            self.write_status(module).await;
            return;
        }
        if let Err(reason) = trusted.verify(&release.statement(), &release.signature) {
            tracked.refuse(release.release, format!("signature: {reason}"));
            self.write_status(module).await;
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
        let reloader = self.reloader.clone();
        let Some(tracked) = self.tracked(module) else {
            return;
        };
        match outcome {
            Ok(()) => {
                let before = (tracked.release, tracked.sha256.clone());
                let serving = reloader.current_version(module).ok().flatten();
                let sha256 = serving.map(|v| v.sha256).unwrap_or_default();
                tracing::info!(module, release = release.release, "release taken");
                tracked.decided = release.release;
                tracked.release = release.release;
                tracked.sha256 = sha256.clone();
                tracked.phase = Phase::Healthy;
                tracked.attempted = None;
                tracked.reason = None;
                let changed = before.1 != sha256;
                tracked.taken = changed.then_some(Taken {
                    release: release.release,
                    sha256,
                    before_release: before.0,
                    before_sha256: before.1,
                });
            }
            Err(reason) => tracked.refuse(release.release, reason),
        }
    }

    /// Makes the release's build serve: already serving, kept for rollback, or downloaded,
    /// checked and reloaded.
    async fn install(&mut self, module: &str, release: &Release) -> Result<(), String> {
        let reloader = self.reloader.clone();
        let serving = reloader
            .current_version(module)
            .map_err(|err| err.to_string())?
            .map(|v| v.sha256)
            .unwrap_or_default();
        if serving == release.sha256 {
            return Ok(());
        }
        if matches!(release.kind, Kind::Rollback { .. }) {
            let kept = reloader
                .history(module)
                .map_err(|err| err.to_string())?
                .last()
                .is_some_and(|v| v.sha256 == release.sha256);
            if kept {
                return reloader
                    .rollback(module)
                    .map(drop)
                    .map_err(|err| format!("rollback: {err}"));
            }
        }
        let store = self.store.clone().ok_or("not connected")?;
        let bytes = store
            .download(&release.object)
            .await
            .map_err(|err| err.to_string())?;
        let digest = hex(&Sha256::digest(&bytes));
        if bytes.len() as u64 != release.size || digest != release.sha256 {
            return Err(format!(
                "digest: the download is {} bytes with SHA-256 {digest}, the signed release says {} bytes with {}",
                bytes.len(),
                release.size,
                release.sha256
            ));
        }
        let status = reloader.status().map_err(|err| err.to_string())?;
        let artifact = status
            .modules
            .iter()
            .find(|m| m.name == module)
            .map(|m| m.artifact.clone())
            .ok_or("the module is not registered")?;
        put_in_place(&artifact, &bytes)
            .map_err(|err| format!("writing {}: {err}", artifact.display()))?;
        let report = reloader
            .reload_module(module)
            .map_err(|err| format!("reload: {err}"))?;
        if report.to.sha256 != release.sha256 {
            // The artifact file changed between our write and the reload's copy of it.
            let _ = reloader.rollback(module);
            return Err(format!(
                "the artifact changed under the node: loaded SHA-256 {}, the release is {}",
                report.to.sha256, release.sha256
            ));
        }
        Ok(())
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
            match &tracked.taken {
                Some(taken)
                    if taken.sha256 == tracked.sha256 && serving.sha256 == taken.before_sha256 =>
                {
                    tracked.phase = Phase::Failed;
                    tracked.attempted = Some(taken.release);
                    tracked.reason = Some(
                        tracked
                            .last_rollback
                            .clone()
                            .unwrap_or_else(|| "rolled back by the runtime".to_owned()),
                    );
                    tracked.release = taken.before_release;
                }
                _ => {
                    // A build the host loaded itself: not a release.
                    tracked.release = 0;
                    tracked.phase = Phase::Healthy;
                }
            }
            tracked.sha256 = serving.sha256.clone();
            tracked.taken = None;
        }
        if matches!(tracked.phase, Phase::Healthy | Phase::Probation) {
            let on_probation = reloader.status().ok().is_some_and(|status| {
                status.modules.iter().any(|m| {
                    m.name == module
                        && m.probation
                            .is_some_and(|p| p.generation == serving.generation)
                })
            });
            tracked.phase = if on_probation {
                Phase::Probation
            } else {
                Phase::Healthy
            };
        }
    }

    async fn write_status(&mut self, module: &str) {
        let node = self.options.node.clone();
        let heartbeat_ms = self.options.heartbeat.as_millis() as u64;
        let Some(store) = self.store.clone() else {
            return;
        };
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
        if let Err(err) = store.put(&record::status_key(module, &node), &status).await {
            tracing::warn!(%err, "status not written");
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
