//! Rollouts: a release admitted wave by wave, each wave waited for until every node in it
//! serves the release and is healthy; a refusal or failed probation stops it and rolls the
//! fleet back with a signed rollback record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use crate::record::{Kind, NodeStatus, Phase, Release};
use crate::store::{Store, decode};
use crate::{FleetError, Publisher};

/// What a rollout did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RolloutReport {
    /// The module.
    pub module: String,
    /// The release rolled out.
    pub release: u64,
    /// Each wave: the nodes it added and how long until they were all healthy.
    pub waves: Vec<WaveReport>,
    /// Nodes that stopped beating during the rollout: they take the release when they come
    /// back.
    pub gone: Vec<String>,
    /// From the first admission to the last wave healthy.
    pub took: Duration,
}

/// One wave of a rollout.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WaveReport {
    /// The nodes it brought the release to.
    pub nodes: Vec<String>,
    /// How long until they all served it, healthy.
    pub took: Duration,
}

impl std::fmt::Display for RolloutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: release {} rolled out in {:.2?}",
            self.module, self.release, self.took
        )?;
        for (i, wave) in self.waves.iter().enumerate() {
            writeln!(
                f,
                "  wave {}: {} node(s) healthy in {:.2?}: {}",
                i + 1,
                wave.nodes.len(),
                wave.took,
                wave.nodes.join(", ")
            )?;
        }
        if !self.gone.is_empty() {
            writeln!(
                f,
                "  gone meanwhile (they catch up on return): {}",
                self.gone.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Publisher {
    /// Drives the module's current release to the nodes by its plan: admits each wave,
    /// waits until all of its nodes serve the release and are healthy, then the next; after
    /// the last wave every node (and every node that joins later) may take it. If a node
    /// refuses the release or fails its probation, or a wave is not healthy within the
    /// plan's timeout, it stops, writes a signed rollback record to the build the release
    /// replaced, waits for the nodes that took the release to go back, and returns
    /// [`FleetError::RolloutAborted`].
    ///
    /// The nodes are those whose status for the module is fresh
    /// ([`NodeStatus::is_fresh`]) when it starts, in name order. A canary that stops
    /// answering, a member restarted during its wave, or a whole wave gone stops it too; a
    /// later member that stops answering is reported gone and catches up when it returns.
    pub async fn rollout(&self, module: &str) -> Result<RolloutReport, FleetError> {
        let release = self
            .release(module)
            .await?
            .ok_or_else(|| FleetError::NoRelease {
                module: module.to_owned(),
            })?;
        let started = Instant::now();
        let timeout = Duration::from_secs(release.plan.wave_timeout_secs.max(1));
        let mut statuses = Statuses::open(&self.store, module).await?;
        if matches!(release.kind, Kind::Rollback { .. }) {
            self.admit(module, release.release, None).await?;
            let took = self.settle(&mut statuses, &release, None, timeout).await;
            return match took {
                Ok(gone) => Ok(RolloutReport {
                    module: module.to_owned(),
                    release: release.release,
                    waves: vec![WaveReport {
                        nodes: statuses.alive().map(|s| s.node.clone()).collect(),
                        took: started.elapsed(),
                    }],
                    gone,
                    took: started.elapsed(),
                }),
                Err(reason) => Err(FleetError::Timeout {
                    module: module.to_owned(),
                    what: format!("rollback release {}: {reason}", release.release),
                    seconds: timeout.as_secs(),
                }),
            };
        }
        let nodes: Vec<String> = statuses.alive().map(|s| s.node.clone()).collect();
        if nodes.is_empty() {
            return Err(FleetError::Timeout {
                module: module.to_owned(),
                what: "a live node to roll out to".to_owned(),
                seconds: 0,
            });
        }
        let mut report = RolloutReport {
            module: module.to_owned(),
            release: release.release,
            waves: Vec::new(),
            gone: Vec::new(),
            took: Duration::ZERO,
        };
        let mut admitted = 0;
        for (index, wave) in release.plan.waves.iter().enumerate() {
            let reach = wave.reach(nodes.len(), admitted);
            if reach <= admitted {
                continue;
            }
            let wave_started = Instant::now();
            let members = nodes[..reach].to_vec();
            tracing::info!(module, release = release.release, wave = index + 1, nodes = ?&members[admitted..], "admitting a wave");
            self.admit(module, release.release, Some(members.clone()))
                .await?;
            let wave_members = Members {
                nodes: &members,
                new_from: admitted,
                canary: report.waves.is_empty(),
                pids: members
                    .iter()
                    .filter_map(|name| Some((name.clone(), statuses.nodes.get(name)?.pid)))
                    .collect(),
            };
            match self
                .settle(&mut statuses, &release, Some(wave_members), timeout)
                .await
            {
                Ok(gone) => {
                    for node in gone {
                        if !report.gone.contains(&node) {
                            report.gone.push(node);
                        }
                    }
                }
                Err(reason) => {
                    return Err(self
                        .abort(&mut statuses, &release, index + 1, reason, timeout)
                        .await);
                }
            }
            report.waves.push(WaveReport {
                nodes: members[admitted..].to_vec(),
                took: wave_started.elapsed(),
            });
            admitted = reach;
        }
        self.admit(module, release.release, None).await?;
        report.took = started.elapsed();
        Ok(report)
    }

    /// Waits until every live node serves the module's release `release`, healthy, and
    /// returns their statuses; a node refusing or failing it ends the wait with an error.
    pub async fn wait_for_release(
        &self,
        module: &str,
        release: &Release,
        timeout: Duration,
    ) -> Result<Vec<NodeStatus>, FleetError> {
        let mut statuses = Statuses::open(&self.store, module).await?;
        match self.settle(&mut statuses, release, None, timeout).await {
            Ok(_) => Ok(statuses.alive().cloned().collect()),
            Err(reason) => Err(FleetError::Timeout {
                module: module.to_owned(),
                what: format!("every node serving release {}: {reason}", release.release),
                seconds: timeout.as_secs(),
            }),
        }
    }

    /// Waits until each of a wave's members (every live node with `None`) serves `release`
    /// and is healthy, or is gone. Returns the nodes gone, or why it stopped: a node refused
    /// or failed the release, a canary stopped answering (a build that kills its process
    /// must not pass for a node gone), every member of a wave did, or the deadline passed.
    async fn settle(
        &self,
        statuses: &mut Statuses,
        release: &Release,
        members: Option<Members<'_>>,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            statuses.update().await;
            let names: Vec<String> = match &members {
                Some(wave) => wave.nodes.to_vec(),
                None => statuses.alive().map(|s| s.node.clone()).collect(),
            };
            let canary = members.as_ref().is_some_and(|wave| wave.canary);
            let fresh: Vec<String> = members
                .as_ref()
                .map(|wave| wave.nodes[wave.new_from..].to_vec())
                .unwrap_or_default();
            // The watch may lag (it too reconnects when a server goes): a node looks silent
            // only if its status key, read now, says so.
            let mut unread = Vec::new();
            for name in &names {
                if statuses.nodes.get(name).is_some_and(|s| !s.is_fresh()) {
                    let key = crate::record::status_key(&release.module, name);
                    match self.store.get::<NodeStatus>(&key).await {
                        Ok(Some((status, _))) => {
                            statuses.nodes.insert(name.clone(), status);
                        }
                        Ok(None) | Err(_) => unread.push(name.clone()),
                    }
                }
            }
            let mut waiting = Vec::new();
            let mut gone = Vec::new();
            for name in names {
                if unread.contains(&name) {
                    // Not to be judged on what could not be read.
                    waiting.push(name);
                    continue;
                }
                let restarted = members.as_ref().and_then(|wave| {
                    let before = *wave.pids.get(&name)?;
                    let now = statuses.nodes.get(&name)?.pid;
                    (before != now).then_some((before, now))
                });
                if let Some((before, now)) = restarted {
                    return Err(format!(
                        "node {name} restarted while its wave ran (process {before}, now {now})"
                    ));
                }
                match statuses.nodes.get(&name) {
                    Some(status) if !status.is_fresh() && canary => {
                        return Err(format!(
                            "canary node {name} stopped answering (last heard {:.1} s ago)",
                            status.age().as_secs_f64()
                        ));
                    }
                    Some(status) if !status.is_fresh() => gone.push(name),
                    Some(status)
                        if status.release == release.release
                            && status.phase == Phase::Healthy
                            && (status.sha256 == release.sha256
                                || matches!(release.kind, Kind::Rollback { .. })) => {}
                    Some(status)
                        if matches!(status.phase, Phase::Refused | Phase::Failed)
                            && status.attempted == Some(release.release) =>
                    {
                        return Err(format!(
                            "node {name} {}: {}",
                            status.phase,
                            status.reason.as_deref().unwrap_or("no reason given")
                        ));
                    }
                    _ => waiting.push(name),
                }
            }
            if !fresh.is_empty() && fresh.iter().all(|name| gone.contains(name)) {
                return Err(format!(
                    "every node of the wave stopped answering: {}",
                    fresh.join(", ")
                ));
            }
            if waiting.is_empty() {
                return Ok(gone);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not serving release {} healthy within {} s: {}",
                    release.release,
                    timeout.as_secs(),
                    waiting.join(", ")
                ));
            }
        }
    }

    /// Stops a rollout: the signed rollback record, admitted to all, and a wait for the nodes
    /// that took the release to leave it.
    async fn abort(
        &self,
        statuses: &mut Statuses,
        release: &Release,
        wave: usize,
        reason: String,
        timeout: Duration,
    ) -> FleetError {
        tracing::warn!(module = %release.module, release = release.release, wave, %reason, "rollout stopped");
        let module = release.module.clone();
        let rolled_back = async {
            let (current, revision) =
                self.current(&module)
                    .await?
                    .ok_or_else(|| FleetError::NoRelease {
                        module: module.clone(),
                    })?;
            if current.release != release.release {
                // Someone published meanwhile: rolling back "the current release" would undo
                // theirs, and could take the fleet to the build that just failed.
                return Ok(Err(format!(
                    "release {} was published meanwhile, so nothing was rolled back",
                    current.release
                )));
            }
            if current.previous.is_none() {
                return Ok(Ok(None));
            }
            let rollback = self
                .write(self.rollback_record(&current)?, revision)
                .await?;
            self.admit(&module, rollback.release, None).await?;
            // Back where it was: every node that took the release has left it.
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                statuses.update().await;
                if statuses.alive().all(|s| s.release != release.release) {
                    break;
                }
            }
            Ok::<_, FleetError>(Ok(Some(rollback.release)))
        };
        match rolled_back.await {
            Ok(Ok(rollback_release)) => FleetError::RolloutAborted {
                module,
                release: release.release,
                wave,
                reason,
                rollback_release,
            },
            Ok(Err(why_not)) => FleetError::RolloutAborted {
                module,
                release: release.release,
                wave,
                reason: format!("{reason}; {why_not}"),
                rollback_release: None,
            },
            Err(err) => err,
        }
    }
}

/// The members of a wave being waited for.
struct Members<'a> {
    /// Every node admitted so far.
    nodes: &'a [String],
    /// Where this wave's own nodes start in `nodes`.
    new_from: usize,
    /// The first wave: a member that stops answering fails it.
    canary: bool,
    /// Each member's process when the wave was admitted: a member restarted meanwhile (a
    /// supervisor bringing back a process the build killed) fails the wave.
    pids: BTreeMap<String, u32>,
}

/// The nodes' statuses for one module, kept current by a watch.
struct Statuses {
    store: Store,
    filter: String,
    watch: Option<kv::Watch>,
    nodes: BTreeMap<String, NodeStatus>,
}

/// How long one update waits for a status before the caller looks again (deadlines, nodes
/// going quiet).
const LOOK_EVERY: Duration = Duration::from_millis(100);

impl Statuses {
    async fn open(store: &Store, module: &str) -> Result<Self, FleetError> {
        let mut statuses = Statuses {
            store: store.clone(),
            filter: format!("node.{module}.*"),
            watch: None,
            nodes: BTreeMap::new(),
        };
        for status in store.list::<NodeStatus>(&format!("node.{module}.")).await? {
            statuses.nodes.insert(status.node.clone(), status);
        }
        Ok(statuses)
    }

    /// Takes in the next status to arrive, waiting at most [`LOOK_EVERY`] for it, and
    /// reopens the watch if the server went away.
    async fn update(&mut self) {
        let until = tokio::time::Instant::now() + LOOK_EVERY;
        if self.watch.is_none() {
            self.watch = self.store.kv.watch_with_history(&self.filter).await.ok();
        }
        let Some(watch) = &mut self.watch else {
            tokio::time::sleep_until(until).await;
            return;
        };
        loop {
            match tokio::time::timeout_at(until, watch.next()).await {
                Err(_) => return,
                Ok(Some(Ok(entry))) => {
                    if entry.operation == kv::Operation::Put
                        && let Ok(status) = decode::<NodeStatus>(&entry.key, &entry.value)
                    {
                        self.nodes.insert(status.node.clone(), status);
                        return;
                    }
                }
                Ok(_) => {
                    self.watch = None;
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }

    fn alive(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.values().filter(|s| s.is_fresh())
    }
}
