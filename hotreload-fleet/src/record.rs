//! The records a fleet keeps in its Key-Value bucket, as JSON:
//!
//! | key | record | written by |
//! |---|---|---|
//! | `release.<module>` | [`Release`]: the newest release, signed | `publish`, `rollback` |
//! | `admit.<module>` | [`Admission`]: which nodes may take that release | `rollout` |
//! | `node.<module>.<node>` | [`NodeStatus`]: what a node serves, its heartbeat | each node |
//!
//! Builds are objects in the Object Store bucket of the same name, named
//! `<module>.<sha256>`: a rollback points at the object an earlier release uploaded.

use serde::{Deserialize, Serialize};

/// A release of one module: what a node checks and takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The module (its `#[hot_module]` name).
    pub module: String,
    /// The release number: each record of a module has a higher one than the last, rollbacks
    /// included.
    pub release: u64,
    /// A new build, or a rollback to an earlier release's build.
    pub kind: Kind,
    /// The build's object name in the Object Store bucket.
    pub object: String,
    /// The build's size in bytes.
    pub size: u64,
    /// The build's SHA-256, hex.
    pub sha256: String,
    /// The build's API version (`#[hot_module(version = N)]`).
    pub api_version: u32,
    /// The build's state schema version.
    pub state_version: u32,
    /// The release this one replaced (0: none), for a rollback to go back to.
    pub previous: Option<Previous>,
    /// The signature over [`statement`](Self::statement), minisign's signature file text.
    pub signature: String,
    /// How `rollout` takes it to the nodes (not signed: it says who takes a signed build
    /// when, never what runs).
    pub plan: Plan,
    /// When it was published, Unix milliseconds (not signed).
    pub published_unix_ms: u64,
}

/// The release a new one replaced: where a rollback goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    /// Its release number.
    pub release: u64,
    /// Its build's object name.
    pub object: String,
    /// Its build's size.
    pub size: u64,
    /// Its build's SHA-256.
    pub sha256: String,
    /// Its API version.
    pub api_version: u32,
    /// Its state schema version.
    pub state_version: u32,
}

/// What a release does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new build.
    Build,
    /// Back to the build of release `from`'s predecessor: every node that took `from` goes
    /// back; the others only note the number.
    Rollback {
        /// The release rolled back.
        from: u64,
    },
}

impl Release {
    /// The text the signature covers: every field that decides what a node runs, the
    /// release a rollback of it would go back to, and the fleet's bucket (a record copied
    /// from another fleet trusting the same key fails).
    pub fn statement(&self, bucket: &str) -> String {
        let kind = match self.kind {
            Kind::Build => "build".to_owned(),
            Kind::Rollback { from } => format!("rollback of release {from}"),
        };
        let previous = match &self.previous {
            Some(p) => format!(
                "release {} object {} size {} sha256 {} api_version {} state_version {}",
                p.release, p.object, p.size, p.sha256, p.api_version, p.state_version
            ),
            None => "none".to_owned(),
        };
        format!(
            "hotreload release of {module} number {release}\n\
             fleet: {bucket}\nkind: {kind}\nobject: {object}\nsize: {size}\nsha256: {sha256}\n\
             api_version: {api}\nstate_version: {state}\nprevious: {previous}\n",
            module = self.module,
            release = self.release,
            object = self.object,
            size = self.size,
            sha256 = self.sha256,
            api = self.api_version,
            state = self.state_version,
        )
    }

    /// This release as the `previous` of the next one.
    pub(crate) fn as_previous(&self) -> Previous {
        Previous {
            release: self.release,
            object: self.object.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            api_version: self.api_version,
            state_version: self.state_version,
        }
    }
}

/// How a rollout takes a release to the nodes: waves of nodes, each waiting for the last to
/// be healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The waves, in order; nodes not in any wave (and nodes that join later) take the
    /// release when the last wave is healthy.
    pub waves: Vec<Wave>,
    /// How long each wave may take to become healthy (probation included), in seconds.
    pub wave_timeout_secs: u64,
}

impl Default for Plan {
    /// A canary wave of one node, then half of the nodes, then the rest; 60 s per wave.
    fn default() -> Self {
        Plan {
            waves: vec![Wave::Nodes(1), Wave::Percent(50), Wave::Percent(100)],
            wave_timeout_secs: 60,
        }
    }
}

impl Plan {
    /// Every node at once.
    pub fn all_at_once() -> Self {
        Plan {
            waves: vec![Wave::Percent(100)],
            ..Plan::default()
        }
    }
}

/// How many nodes a wave brings the release to, counted over the nodes alive when the
/// rollout starts, including the earlier waves' nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wave {
    /// This many nodes in all (at least one more than the last wave, while any is left).
    Nodes(usize),
    /// This share of the nodes in all, rounded up.
    Percent(u8),
}

impl Wave {
    /// How many of `alive` nodes have the release once this wave is admitted, given `before`
    /// admitted by the earlier waves.
    pub(crate) fn reach(self, alive: usize, before: usize) -> usize {
        let target = match self {
            Wave::Nodes(n) => n,
            Wave::Percent(p) => (alive * usize::from(p.min(100))).div_ceil(100),
        };
        target.max(before + 1).min(alive)
    }
}

/// Which nodes may take a release: written by `rollout` wave by wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The release admitted.
    pub release: u64,
    /// The nodes that may take it; `None`: every node, including nodes that join later.
    pub nodes: Option<Vec<String>>,
}

impl Admission {
    /// Whether `node` may take the release.
    pub fn admits(&self, node: &str) -> bool {
        match &self.nodes {
            None => true,
            Some(nodes) => nodes.iter().any(|n| n == node),
        }
    }
}

/// What a node says about one module, rewritten at each change and each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// The module.
    pub module: String,
    /// The release it serves (0: the build it started with, before any release).
    pub release: u64,
    /// The SHA-256 of the build it serves.
    pub sha256: String,
    /// Where it stands.
    pub phase: Phase,
    /// The release the phase concerns when it is `Refused` or `Failed`.
    pub attempted: Option<u64>,
    /// Why it refused or failed.
    pub reason: Option<String>,
    /// How often it writes its status, in milliseconds; two missed beats mark it gone.
    pub heartbeat_ms: u64,
    /// When it wrote this, Unix milliseconds (by its own clock).
    pub written_unix_ms: u64,
    /// Its process id.
    pub pid: u32,
}

impl NodeStatus {
    /// How long ago it was written, by this machine's clock.
    pub fn age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(unix_ms().saturating_sub(self.written_unix_ms))
    }

    /// Whether the node is alive: its status written within three heartbeats and ten
    /// seconds (a node whose server died waits for another server of the cluster to take its
    /// writes; clocks a little apart).
    pub fn is_fresh(&self) -> bool {
        self.age().as_millis() <= u128::from(self.heartbeat_ms.saturating_mul(3) + 10_000)
    }
}

/// Where a node stands with a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving `release`, its probation (if any) over.
    Healthy,
    /// Serving `release`, on probation: a panic still rolls it back.
    Probation,
    /// It refused release `attempted` (signature, digest, number, or the reload's own
    /// checks) and serves `release`.
    Refused,
    /// It took release `attempted`, whose probation failed; the runtime rolled it back to
    /// `release`.
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Healthy => "healthy",
            Phase::Probation => "probation",
            Phase::Refused => "refused",
            Phase::Failed => "failed",
        })
    }
}

/// The key of a module's release record.
pub(crate) fn release_key(module: &str) -> String {
    format!("release.{module}")
}

/// The key of a module's admission record.
pub(crate) fn admit_key(module: &str) -> String {
    format!("admit.{module}")
}

/// The key of a node's status for a module.
pub(crate) fn status_key(module: &str, node: &str) -> String {
    format!("node.{module}.{node}")
}

/// The object name of a build.
pub(crate) fn object_name(module: &str, sha256: &str) -> String {
    format!("{module}.{sha256}")
}

/// Now, Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_reach_at_least_one_more_node_and_never_more_than_there_are() {
        assert_eq!(Wave::Nodes(1).reach(10, 0), 1);
        assert_eq!(Wave::Percent(50).reach(10, 1), 5);
        assert_eq!(Wave::Percent(10).reach(10, 5), 6);
        assert_eq!(Wave::Percent(100).reach(10, 6), 10);
        assert_eq!(Wave::Nodes(3).reach(2, 0), 2);
        assert_eq!(Wave::Percent(34).reach(3, 0), 2);
    }

    #[test]
    fn the_statement_changes_with_every_signed_field() {
        let release = Release {
            module: "m".into(),
            release: 3,
            kind: Kind::Build,
            object: "m.aa".into(),
            size: 10,
            sha256: "aa".into(),
            api_version: 1,
            state_version: 1,
            previous: None,
            signature: String::new(),
            plan: Plan::default(),
            published_unix_ms: 0,
        };
        let base = release.statement("fleet");
        assert_ne!(release.statement("other"), base, "the bucket");
        let changed = [
            Release {
                release: 4,
                ..release.clone()
            },
            Release {
                kind: Kind::Rollback { from: 2 },
                ..release.clone()
            },
            Release {
                sha256: "bb".into(),
                ..release.clone()
            },
            Release {
                object: "m.bb".into(),
                ..release.clone()
            },
            Release {
                size: 11,
                ..release.clone()
            },
            Release {
                module: "n".into(),
                ..release.clone()
            },
            Release {
                api_version: 2,
                ..release.clone()
            },
            Release {
                state_version: 2,
                ..release.clone()
            },
            Release {
                previous: Some(Previous {
                    release: 2,
                    object: "m.cc".into(),
                    size: 9,
                    sha256: "cc".into(),
                    api_version: 1,
                    state_version: 1,
                }),
                ..release.clone()
            },
        ];
        for other in changed {
            assert_ne!(other.statement("fleet"), base, "{other:?}");
        }
    }
}
