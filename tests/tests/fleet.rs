//! Fleet reloads with real parts: `nats-server` processes on free loopback ports with
//! JetStream in temporary directories, node processes (`fleet_node`: the counter module
//! behind a real reloader, attached to the fleet), builds of the counter fixture, and the
//! publisher and rollout of `hotreload-fleet`.
//!
//! `fleet_figures` (ignored: run it with `--ignored --nocapture`) measures publish to every
//! node serving, for a release and a debug build, and the same for a rollback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hotreload_fleet::{
    FleetConfig, FleetError, NodeStatus, Phase, Plan, Publisher, Release, SigningKey, TrustedKeys,
    Wave, generate_keys,
};
use hotreload_tests::nats::NatsServer;
use hotreload_tests::variants;

/// How long any one wait of these tests may take before it fails with what it waited for.
const DEADLINE: Duration = Duration::from_secs(60);
/// The nodes' heartbeat.
const HEARTBEAT_MS: u64 = 100;

/// A node process: `fleet_node` with the counter module.
struct Node {
    name: String,
    artifact: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Node {
    /// Starts node `name` with its artifact under `dir`, first putting `build` there (none:
    /// the build left there by its last run).
    fn start(fleet: &Fleet, name: &str, build: Option<&Path>) -> Node {
        let dir = fleet.dir.path().join("nodes").join(name);
        std::fs::create_dir_all(&dir).expect("the node's directory");
        let artifact = dir.join(format!("lib{}.so", fleet.kind));
        if let Some(build) = build {
            hotreload::harness::install(build, &artifact).expect("the node's first build");
        }
        let mut node = Node {
            name: name.to_owned(),
            artifact,
            child: None,
            stdin: None,
        };
        node.spawn(fleet);
        node
    }

    fn spawn(&mut self, fleet: &Fleet) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleet_node"))
            .args([
                fleet.kind,
                fleet.servers.as_str(),
                BUCKET,
                &self.name,
                &fleet.public.display().to_string(),
                &self.artifact.display().to_string(),
                &HEARTBEAT_MS.to_string(),
                &fleet.probation.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting fleet_node");
        let stdout = child.stdout.take().expect("the node's stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_ok_and(|line| line == "ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("node {} did not start within {DEADLINE:?}", self.name));
        self.stdin = child.stdin.take();
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL: no goodbye to the fleet).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

const BUCKET: &str = "fleet";
const MODULE: &str = "counter";

/// A fleet under test: its servers' URLs, a signing key, its nodes.
struct Fleet {
    dir: tempfile::TempDir,
    servers: String,
    secret: PathBuf,
    public: PathBuf,
    probation: u64,
    /// What the nodes host: `counter` (the counter fixture) or `bench` (`bench/module`).
    kind: &'static str,
    /// That module's name.
    module: &'static str,
    nodes: Vec<Node>,
    runtime: tokio::runtime::Runtime,
    /// The last field, dropped last: the nodes end before the next test's fleet starts.
    _one: std::sync::MutexGuard<'static, ()>,
}

/// One fleet at a time: ten node processes and a server (or three) each, on two cores.
static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Fleet {
    fn new(dir: tempfile::TempDir, servers: String) -> Fleet {
        let secret = dir.path().join("release.key");
        let public = dir.path().join("release.pub");
        generate_keys(&secret, &public).expect("a key pair");
        Fleet {
            dir,
            servers,
            secret,
            public,
            probation: 20,
            kind: "counter",
            module: MODULE,
            nodes: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            _one: ONE_FLEET
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    fn config(&self) -> FleetConfig {
        FleetConfig::new(self.servers.as_str(), BUCKET)
    }

    /// Starts `count` nodes named `node-00`... on `build`.
    fn start_nodes(&mut self, count: usize, build: &Path) {
        for i in 0..count {
            let node = Node::start(self, &format!("node-{i:02}"), Some(build));
            self.nodes.push(node);
        }
    }

    fn publisher(&self) -> Publisher {
        self.publisher_with(&self.secret)
    }

    fn publisher_with(&self, secret: &Path) -> Publisher {
        let key = SigningKey::from_file(secret, None).expect("the signing key");
        self.runtime
            .block_on(Publisher::connect(&self.config(), key))
            .expect("the publisher connects")
    }

    fn statuses(&self) -> Vec<NodeStatus> {
        self.runtime
            .block_on(hotreload_fleet::status(&self.config(), Some(self.module)))
            .expect("the statuses")
    }

    /// Waits until `count` nodes have statuses and `done` holds for all of them.
    fn wait_for(
        &self,
        count: usize,
        what: &str,
        done: impl Fn(&NodeStatus) -> bool,
    ) -> Vec<NodeStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let statuses = self.statuses();
            if statuses.len() >= count && statuses.iter().all(&done) {
                return statuses;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; statuses: {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `index` again (after [`Node::kill`]) on the build at its artifact path.
    fn restart(&self, index: usize) -> Node {
        let mut node = Node {
            name: self.nodes[index].name.clone(),
            artifact: self.nodes[index].artifact.clone(),
            child: None,
            stdin: None,
        };
        node.spawn(self);
        node
    }

    /// Waits until every node has reported once.
    fn wait_for_nodes(&self) {
        let count = self.nodes.len();
        self.wait_for(count, "every node reporting", |_| true);
    }

    /// Publishes `build` and rolls it out to every node at once; a failure fails the test.
    fn released(&self, publisher: &Publisher, build: &Path) -> Release {
        self.release(publisher, build, Plan::all_at_once())
            .unwrap_or_else(|err| panic!("releasing {}: {err}", build.display()))
    }

    /// Publishes `build` and rolls it out.
    fn release(
        &self,
        publisher: &Publisher,
        build: &Path,
        plan: Plan,
    ) -> Result<Release, FleetError> {
        let release = self
            .runtime
            .block_on(publisher.publish(self.module, build, plan))
            .expect("publish");
        self.runtime
            .block_on(publisher.rollout(self.module))
            .map(|_| release)
    }
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("the build");
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn waves() -> Plan {
    Plan {
        waves: vec![Wave::Nodes(1), Wave::Percent(50), Wave::Percent(100)],
        wave_timeout_secs: 30,
    }
}

/// A server and `nodes` nodes on `build`, every one reporting.
fn started(nodes: usize, build: &Path) -> (NatsServer, Fleet) {
    let (server, mut fleet) = single_server();
    fleet.start_nodes(nodes, build);
    fleet.wait_for_nodes();
    (server, fleet)
}

fn single_server() -> (NatsServer, Fleet) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = NatsServer::start(dir.path());
    let fleet = Fleet::new(dir, server.url());
    (server, fleet)
}

#[test]
fn ten_nodes_take_a_release_in_waves_and_a_rollback_by_hand() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (_server, fleet) = started(10, v1);
    let publisher = fleet.publisher();

    // Release 1 is the build the nodes run: they note its number without reloading.
    let first = fleet.released(&publisher, v1);
    fleet.wait_for(10, "every node on release 1", |s| {
        s.release == first.release && s.sha256 == sha256_of(v1) && s.phase == Phase::Healthy
    });

    let second = fleet
        .runtime
        .block_on(publisher.publish(MODULE, v2, waves()))
        .expect("publish v2");
    let report = fleet
        .runtime
        .block_on(publisher.rollout(MODULE))
        .expect("the rollout completes");
    let sizes: Vec<usize> = report.waves.iter().map(|w| w.nodes.len()).collect();
    assert_eq!(sizes, [1, 4, 5], "{report}");
    assert_eq!(
        report.waves[0].nodes,
        ["node-00"],
        "the canary wave: {report}"
    );
    let statuses = fleet.wait_for(10, "every node on release 2", |s| {
        s.release == second.release && s.phase == Phase::Healthy
    });
    for status in &statuses {
        assert_eq!(status.sha256, sha256_of(v2), "{status:?}");
    }

    // By hand, back to v1: a signed rollback record, release 3.
    let back = fleet
        .runtime
        .block_on(publisher.rollback(MODULE))
        .expect("rollback");
    assert_eq!(back.release, 3);
    assert_eq!(back.kind, hotreload_fleet::Kind::Rollback { from: 2 });
    let nodes = fleet
        .runtime
        .block_on(publisher.wait_for_release(MODULE, &back, DEADLINE))
        .expect("every node serves the rollback");
    assert_eq!(nodes.len(), 10);
    for status in &nodes {
        assert_eq!(status.sha256, sha256_of(v1), "{status:?}");
    }
}

#[test]
fn a_release_signed_by_an_untrusted_key_is_refused_by_every_node() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (_server, fleet) = started(10, v1);
    let other_secret = fleet.dir.path().join("other.key");
    generate_keys(&other_secret, &fleet.dir.path().join("other.pub")).expect("another key pair");
    let stranger = fleet.publisher_with(&other_secret);

    match fleet.release(&stranger, v2, waves()) {
        Err(FleetError::RolloutAborted {
            wave,
            reason,
            rollback_release,
            ..
        }) => {
            assert_eq!((wave, rollback_release), (1, None), "{reason}");
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("the rollout went on: {other:?}"),
    }
    // Every node refused it as soon as it saw it, admitted or not, and serves v1 still.
    let statuses = fleet.wait_for(10, "every node refusing release 1", |s| {
        s.attempted == Some(1) && s.phase == Phase::Refused
    });
    for status in &statuses {
        assert_eq!(status.sha256, sha256_of(v1), "{status:?}");
        assert_eq!(status.release, 0, "{status:?}");
        let reason = status.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("signed by a key that is not trusted"),
            "{reason}"
        );
    }

    // The real publisher cannot build on that record, and publishes over it: release 2,
    // with nothing to roll back to, taken by every node.
    let publisher = fleet.publisher();
    match fleet.runtime.block_on(publisher.rollback(MODULE)) {
        Err(FleetError::Untrusted { release: 1, .. }) => {}
        other => panic!("a rollback built on the stranger's record: {other:?}"),
    }
    let release = fleet.released(&publisher, v2);
    assert_eq!((release.release, release.previous), (2, None));
    fleet.wait_for(10, "every node on release 2", |s| {
        s.release == 2 && s.phase == Phase::Healthy && s.sha256 == sha256_of(v2)
    });
}

#[test]
fn records_written_without_the_key_and_replayed_records_are_refused() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (_server, fleet) = started(3, v1);
    let publisher = fleet.publisher();
    let first = fleet.released(&publisher, v1);
    let second = fleet.released(&publisher, v2);
    fleet.wait_for(3, "every node on release 2", |s| {
        s.release == second.release
    });

    // Someone with write access to the bucket but not the key: release 3 claiming v1's
    // build under release 2's signature, admitted to every node.
    let forged = Release {
        release: 3,
        object: first.object.clone(),
        sha256: first.sha256.clone(),
        size: first.size,
        ..second.clone()
    };
    let raw = RawStore::open(&fleet);
    raw.put("release.counter", &forged);
    raw.put(
        "admit.counter",
        &hotreload_fleet::Admission {
            release: 3,
            nodes: None,
        },
    );
    let statuses = fleet.wait_for(3, "every node refusing the forged record", |s| {
        s.attempted == Some(3) && s.phase == Phase::Refused
    });
    for status in &statuses {
        assert_eq!(status.release, second.release, "{status:?}");
        assert_eq!(status.sha256, sha256_of(v2), "{status:?}");
        let reason = status.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("signature") && reason.contains("does not match"),
            "{reason}"
        );
    }

    // Release 1's record, signed and all, written back: older than what they serve.
    raw.put("release.counter", &first);
    raw.put(
        "admit.counter",
        &hotreload_fleet::Admission {
            release: 1,
            nodes: None,
        },
    );
    let statuses = fleet.wait_for(3, "every node refusing the replayed record", |s| {
        s.attempted == Some(1) && s.phase == Phase::Refused
    });
    for status in &statuses {
        assert_eq!(status.sha256, sha256_of(v2), "{status:?}");
        let reason = status.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("is older than release 2"), "{reason}");
    }

    // Release 2's record with its `previous` pointed elsewhere (what a rollback would go
    // back to): the nodes refuse it, and the publisher will not sign a rollback built on it.
    let tampered = Release {
        previous: second.previous.clone().map(|p| hotreload_fleet::Previous {
            sha256: sha256_of(v2),
            object: second.object.clone(),
            ..p
        }),
        ..second.clone()
    };
    raw.put("release.counter", &tampered);
    fleet.wait_for(3, "every node refusing the tampered record", |s| {
        s.attempted == Some(2) && s.phase == Phase::Refused && s.sha256 == sha256_of(v2)
    });
    match fleet.runtime.block_on(publisher.rollback(MODULE)) {
        Err(FleetError::Untrusted {
            release: 2, reason, ..
        }) => assert!(reason.contains("does not match"), "{reason}"),
        other => panic!("a rollback built on a tampered record: {other:?}"),
    }
}

#[test]
fn a_restarted_node_remembers_the_newest_release_it_took() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (_server, mut fleet) = started(2, v1);
    let publisher = fleet.publisher();
    let first = fleet.released(&publisher, v1);
    let second = fleet.released(&publisher, v2);
    fleet.wait_for(2, "both nodes on release 2", |s| {
        s.release == second.release
    });

    // node-00 goes down; meanwhile release 1's record, validly signed, is put back and
    // admitted. Back up, the node knows it took release 2 and refuses it.
    fleet.nodes[0].kill();
    let raw = RawStore::open(&fleet);
    raw.put("release.counter", &first);
    raw.put(
        "admit.counter",
        &hotreload_fleet::Admission {
            release: 1,
            nodes: None,
        },
    );
    let _node = fleet.restart(0);
    let statuses = fleet.wait_for(2, "node-00 refusing the older record", |s| {
        s.node != "node-00" || (s.phase == Phase::Refused && s.attempted == Some(1))
    });
    let status = statuses
        .iter()
        .find(|s| s.node == "node-00")
        .expect("node-00");
    assert_eq!(status.sha256, sha256_of(v2), "{status:?}");
    let reason = status.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("is older than release 2"), "{reason}");
}

/// Writes records straight into the fleet's Key-Value bucket, as someone with access to the
/// bucket but without the signing key could.
struct RawStore {
    runtime: tokio::runtime::Runtime,
    kv: async_nats::jetstream::kv::Store,
}

impl RawStore {
    fn open(fleet: &Fleet) -> RawStore {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let kv = runtime.block_on(async {
            let client = async_nats::connect(fleet.servers.as_str())
                .await
                .expect("connect");
            async_nats::jetstream::new(client)
                .get_key_value(BUCKET)
                .await
                .expect("the fleet's bucket")
        });
        RawStore { runtime, kv }
    }

    fn put<T: serde::Serialize>(&self, key: &str, record: &T) {
        let bytes = serde_json::to_vec(record).expect("json");
        self.runtime
            .block_on(self.kv.put(key, bytes.into()))
            .expect("a raw write");
    }
}

#[test]
fn a_build_that_fails_verification_stops_the_rollout_at_the_canary_wave() {
    let built = variants!();
    let (v1, v2, bad) = (
        built.artifact("v1"),
        built.artifact("v2"),
        built.artifact("bad_signature"),
    );
    let (_server, fleet) = started(10, v1);
    let publisher = fleet.publisher();
    let first = fleet.released(&publisher, v1);
    // Release 2 is published and never rolled out: no node runs it.
    fleet
        .runtime
        .block_on(publisher.publish(MODULE, v2, waves()))
        .expect("publish v2");

    match fleet.release(&publisher, bad, waves()) {
        Err(FleetError::RolloutAborted {
            wave,
            reason,
            release,
            rollback_release,
            ..
        }) => {
            assert_eq!(
                (wave, release, rollback_release),
                (1, 3, Some(4)),
                "{reason}"
            );
            assert!(
                reason.starts_with("node node-00 refused: reload:"),
                "{reason}"
            );
            assert!(
                reason.contains("add"),
                "the reason names the changed method: {reason}"
            );
        }
        other => panic!("the rollout went on: {other:?}"),
    }
    // The canary refused it; nobody else was admitted. The rollback record (release 4, back
    // to release 2's build) only concerns nodes that took release 3: none did, so every node
    // notes the number and keeps v1, and release 2 reaches nobody without a rollout.
    let statuses = fleet.wait_for(10, "every node on the rollback", |s| s.release == 4);
    for status in &statuses {
        assert_eq!(status.sha256, first.sha256, "{status:?}");
        assert_eq!(status.phase, Phase::Healthy, "{status:?}");
    }
    // The refused build is not left at the canary's artifact path.
    assert_eq!(sha256_of(&fleet.nodes[0].artifact), first.sha256);
    // A rollback of a rollback would bring back what was rolled back, to all at once.
    match fleet.runtime.block_on(publisher.rollback(MODULE)) {
        Err(FleetError::AlreadyRolledBack {
            release: 4,
            from: 3,
            ..
        }) => {}
        other => panic!("a rollback of the rollback: {other:?}"),
    }
}

#[test]
fn a_build_that_fails_its_probation_stops_the_rollout_and_the_fleet_goes_back() {
    let built = variants!();
    let (v1, panics) = (built.artifact("v1"), built.artifact("add_panics"));
    let (_server, mut fleet) = started(4, v1);
    let publisher = fleet.publisher();
    let first = fleet.released(&publisher, v1);

    // It loads and passes every check; its first call panics, on probation: the canary's
    // runtime rolls it back, the node says it failed, and the rollout stops.
    match fleet.release(&publisher, panics, waves()) {
        Err(FleetError::RolloutAborted {
            wave,
            reason,
            rollback_release,
            ..
        }) => {
            assert_eq!((wave, rollback_release), (1, Some(3)), "{reason}");
            assert!(reason.starts_with("node node-00 failed:"), "{reason}");
            assert!(reason.contains("add fails on purpose"), "{reason}");
        }
        other => panic!("the rollout went on: {other:?}"),
    }
    let statuses = fleet.wait_for(4, "every node on the rollback", |s| {
        s.release == 3 && s.phase == Phase::Healthy
    });
    for status in &statuses {
        assert_eq!(status.sha256, first.sha256, "{status:?}");
    }

    // The canary's artifact holds what serves again: restarted, it runs v1.
    fleet.nodes[0].kill();
    assert_eq!(sha256_of(&fleet.nodes[0].artifact), first.sha256);
    let node = fleet.restart(0);
    let pid = node.child.as_ref().map(Child::id);
    fleet.wait_for(4, "the restarted canary on release 3", |s| {
        s.node != "node-00" || (Some(s.pid) == pid && s.release == 3 && s.sha256 == first.sha256)
    });
}

#[test]
fn a_node_killed_during_a_rollout_catches_up_when_it_comes_back() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (_server, mut fleet) = started(4, v1);
    let publisher = fleet.publisher();
    fleet.released(&publisher, v1);

    let second = fleet
        .runtime
        .block_on(publisher.publish(MODULE, v2, waves()))
        .expect("publish v2");
    // node-03 (in the last wave) dies as the rollout starts; it was alive when it began.
    fleet.nodes[3].kill();
    let rollout = spawn_rollout(&fleet);
    let report = rollout
        .join()
        .expect("the rollout thread")
        .expect("the rollout completes");
    assert_eq!(report.gone, ["node-03"], "{report}");

    // Back, on the build it had: it catches up with release 2.
    let _node = fleet.restart(3);
    fleet.wait_for(4, "every node on release 2, node-03 included", |s| {
        s.release == second.release && s.phase == Phase::Healthy && s.sha256 == sha256_of(v2)
    });
}

#[test]
fn a_rollout_survives_its_server_restarting() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let (mut server, mut fleet) = single_server();
    // A probation of some seconds: the outage comes while the canary wave is on it.
    fleet.probation = 3000;
    fleet.start_nodes(4, v1);
    fleet.wait_for_nodes();
    let publisher = fleet.publisher();
    fleet.released(&publisher, v1);
    let second = fleet
        .runtime
        .block_on(publisher.publish(MODULE, v2, waves()))
        .expect("publish v2");
    let rollout = spawn_rollout(&fleet);
    fleet.wait_for(4, "the canary on release 2, on probation", |s| {
        s.node != "node-00" || (s.release == second.release && s.phase == Phase::Probation)
    });
    server.stop();
    std::thread::sleep(Duration::from_millis(500)); // the outage, not a synchronisation
    server.restart();
    let report = rollout
        .join()
        .expect("the rollout thread")
        .expect("the rollout completes");
    assert!(report.gone.is_empty(), "{report}");
    assert_eq!(report.waves.len(), 3, "{report}");
    fleet.wait_for(4, "every node on release 2", |s| {
        s.release == second.release && s.phase == Phase::Healthy
    });
}

#[test]
fn a_rollout_survives_a_three_server_cluster_losing_one() {
    let built = variants!();
    let (v1, v2) = (built.artifact("v1"), built.artifact("v2"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut servers = NatsServer::cluster(dir.path());
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let mut fleet = Fleet::new(dir, urls.join(","));
    // A probation of some seconds: the server goes while the canary wave is on it.
    fleet.probation = 3000;
    // Three copies of the buckets, made before the nodes come.
    let publisher = {
        let key = SigningKey::from_file(&fleet.secret, None).expect("key");
        fleet
            .runtime
            .block_on(Publisher::connect(&fleet.config().replicas(3), key))
            .expect("the publisher connects to the cluster")
    };
    fleet.start_nodes(4, v1);
    fleet.wait_for_nodes();
    fleet.released(&publisher, v1);
    let second = fleet
        .runtime
        .block_on(publisher.publish(MODULE, v2, waves()))
        .expect("publish v2");
    let rollout = spawn_rollout(&fleet);
    fleet.wait_for(4, "the canary on release 2, on probation", |s| {
        s.node != "node-00" || (s.release == second.release && s.phase == Phase::Probation)
    });
    servers[1].stop();
    let report = rollout
        .join()
        .expect("the rollout thread")
        .expect("the rollout completes");
    assert_eq!(report.waves.len(), 3, "{report}");
    // Nodes whose server died reconnect to another; their writes wait while the cluster
    // elects new stream leaders (a node silent for long counts as gone and catches up).
    eprint!("{report}");
    fleet.wait_for(4, "every node on release 2", |s| {
        s.release == second.release && s.phase == Phase::Healthy
    });
}

/// Runs `rollout` of the fleet's module on a thread of its own, with its own connection.
fn spawn_rollout(
    fleet: &Fleet,
) -> std::thread::JoinHandle<Result<hotreload_fleet::RolloutReport, FleetError>> {
    let config = fleet.config();
    let secret = fleet.secret.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let key = SigningKey::from_file(&secret, None).expect("key");
            let publisher = Publisher::connect(&config, key).await.expect("connect");
            publisher.rollout(MODULE).await
        })
    })
}

#[test]
fn trusted_keys_read_minisign_files_and_refuse_other_keys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (secret, public) = (dir.path().join("a.key"), dir.path().join("a.pub"));
    let id = generate_keys(&secret, &public).expect("keys");
    let key = SigningKey::from_file(&secret, None).expect("the secret key");
    assert_eq!(key.key_id(), id);
    let trusted = TrustedKeys::new()
        .with_file(&public)
        .expect("the public key");
    let text = std::fs::read_to_string(&public).expect("the public key file");
    assert!(
        text.starts_with("untrusted comment: "),
        "minisign's format: {text}"
    );
    assert!(trusted.len() == 1 && TrustedKeys::new().is_empty());
    assert!(
        generate_keys(&secret, &public).is_err(),
        "existing key files are kept"
    );
    let err = SigningKey::from_file(&public, None).expect_err("a public key is no secret key");
    assert!(
        err.to_string()
            .starts_with(&format!("key file {}", public.display())),
        "{err}"
    );
}

/// The benchmarks' module (`bench/module`, the module of the project's benchmark: about
/// 1.5 MB as a release build), builds `b1` and `b2` (they differ in what `build()` returns),
/// with the release or the debug profile.
fn bench_builds(release: bool) -> hotreload::harness::BuiltVariants {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-bench");
    let profile = if release { "release" } else { "debug" };
    hotreload::harness::VariantBuilder::new(root.join("bench/module"), work.join(profile))
        .lockfile(root.join("Cargo.lock"))
        .target_dir(work.join("target"))
        .release(release)
        .variant("b1", |v| v)
        .variant("b2", |v| {
            v.edit(
                "src/lib.rs",
                "const BUILD: u64 = 1;",
                "const BUILD: u64 = 2;",
            )
        })
        .build()
        .unwrap_or_else(|err| panic!("building the benchmark module failed: {err}"))
}

/// Percentile `p` (0 to 100) of `values` by nearest rank.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Publish to every node serving, and rollback to every node serving, for 10 nodes: a
/// release build and a debug build of the benchmarks' module, `HOTRELOAD_FLEET_RELEASES` of
/// each (20 unless set). Each release uploads its build and every node downloads it, checks
/// it and reloads it; each rollback takes the nodes back to the build they kept. Prints the
/// figures and writes them to `target/hotreload-bench/fleet.json`.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn fleet_figures() {
    let releases: usize = std::env::var("HOTRELOAD_FLEET_RELEASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut figures = serde_json::Map::new();
    for (profile, release) in [("release", true), ("debug", false)] {
        let built = bench_builds(release);
        let (a, b) = (built.artifact("b1"), built.artifact("b2"));
        let size = std::fs::metadata(b).expect("the build").len();
        let (_server, mut fleet) = single_server();
        fleet.probation = 0;
        fleet.kind = "bench";
        fleet.module = "bench_state";
        fleet.start_nodes(10, a);
        fleet.wait_for_nodes();
        let publisher = fleet.publisher();
        fleet.released(&publisher, a);
        let (mut publish_ms, mut rollback_ms) = (Vec::new(), Vec::new());
        for _ in 0..releases {
            let started = Instant::now();
            let release = fleet.released(&publisher, b);
            publish_ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(release.size, size);
            let started = Instant::now();
            let back = fleet
                .runtime
                .block_on(publisher.rollback(fleet.module))
                .expect("a rollback");
            let nodes = fleet
                .runtime
                .block_on(publisher.wait_for_release(fleet.module, &back, DEADLINE))
                .expect("every node back");
            rollback_ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(nodes.len(), 10);
            assert!(nodes.iter().all(|n| n.sha256 == sha256_of(a)), "{nodes:?}");
        }
        let summary = |values: &[f64]| {
            serde_json::json!({
                "p50": percentile(values, 50.0),
                "p99": percentile(values, 99.0),
                "max": percentile(values, 100.0),
                "samples": values.len(),
            })
        };
        println!(
            "{profile} build, {:.1} MB, 10 nodes, {releases} releases: publish to all serving p50 {:.0} ms, p99 {:.0} ms; rollback to all serving p50 {:.0} ms, p99 {:.0} ms",
            size as f64 / 1e6,
            percentile(&publish_ms, 50.0),
            percentile(&publish_ms, 99.0),
            percentile(&rollback_ms, 50.0),
            percentile(&rollback_ms, 99.0),
        );
        figures.insert(
            format!("{profile}_build"),
            serde_json::json!({
                "bytes": size,
                "nodes": 10,
                "publish_to_all_serving_ms": summary(&publish_ms),
                "rollback_to_all_serving_ms": summary(&rollback_ms),
            }),
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hotreload-bench");
    std::fs::create_dir_all(&out).expect("the report directory");
    let report = serde_json::json!({ "fleet": figures });
    std::fs::write(
        out.join("fleet.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("writing fleet.json");
}
