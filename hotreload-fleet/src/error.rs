//! What can go wrong in a fleet, each error naming what it concerns.

use std::path::PathBuf;

/// An error from publishing, a rollout, a node or the fleet's store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The NATS server could not be reached or a JetStream request failed.
    #[error("NATS at {server}: {what}: {source}")]
    Nats {
        /// The server URL(s).
        server: String,
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// A key file could not be read or is not a minisign key.
    #[error("key file {}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why it was not usable.
        reason: String,
    },
    /// A module build could not be read.
    #[error("build {}: {source}", path.display())]
    Build {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A name that cannot be part of a Key-Value key (letters, digits, `-` and `_` only).
    #[error("{what} {name:?}: only ASCII letters, digits, '-' and '_' are allowed")]
    BadName {
        /// What the name is for: module, node, bucket.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A record in the store that does not decode.
    #[error("record {key}: {reason}")]
    BadRecord {
        /// Its key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The module's release record does not verify with the publisher's key: it was not
    /// written by this publisher's key, or changed since. Nothing is built on it (its
    /// `previous` could point at any build).
    #[error(
        "module {module}: release record {release} does not verify with the publisher's key: {reason}"
    )]
    Untrusted {
        /// The module.
        module: String,
        /// The record's release number.
        release: u64,
        /// Why it does not verify.
        reason: String,
    },
    /// No release of the module has been published.
    #[error("module {module}: no release published")]
    NoRelease {
        /// The module.
        module: String,
    },
    /// Another publisher wrote the module's release record between our read and our write.
    #[error("module {module}: release record changed while publishing (another publisher?)")]
    Conflict {
        /// The module.
        module: String,
    },
    /// A rollback was asked for a module with no earlier release to go back to.
    #[error("module {module}: release {release} has no earlier build to roll back to")]
    NothingToRollBackTo {
        /// The module.
        module: String,
        /// The release serving now.
        release: u64,
    },
    /// A rollback was asked while the current release is itself a rollback.
    #[error(
        "module {module}: release {release} is a rollback of release {from} already; publish a build to go on"
    )]
    AlreadyRolledBack {
        /// The module.
        module: String,
        /// The rollback release serving.
        release: u64,
        /// The release it rolled back.
        from: u64,
    },
    /// The rollout stopped: a node refused the release or failed its probation, or a wave
    /// did not become healthy in time. The fleet was rolled back by release
    /// `rollback_release` (`None`: the release replaced nothing, so there was nothing to go
    /// back to, and the nodes that took it keep it).
    #[error(
        "module {module}: rollout of release {release} stopped at wave {wave}: {reason}; {}",
        match rollback_release {
            Some(rollback) => format!("fleet rolled back by release {rollback}"),
            None => "nothing to roll back to".to_owned(),
        }
    )]
    RolloutAborted {
        /// The module.
        module: String,
        /// The release rolled out.
        release: u64,
        /// The wave that failed, from 1.
        wave: usize,
        /// The node and what it said, or the timeout.
        reason: String,
        /// The signed rollback record's release number.
        rollback_release: Option<u64>,
    },
    /// A rollout's wait ran past its deadline without a failure to blame (no node alive to
    /// take a wave, say).
    #[error("module {module}: {what}: no answer within {seconds} s")]
    Timeout {
        /// The module.
        module: String,
        /// What was waited for.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// A node could not start (its thread or runtime).
    #[error("fleet node: {0}")]
    Node(String),
}

impl FleetError {
    pub(crate) fn nats(
        server: &str,
        what: impl Into<String>,
        source: impl Into<async_nats::Error>,
    ) -> Self {
        FleetError::Nats {
            server: server.to_owned(),
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Checks that `name` can be one part of a Key-Value key and an object name.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), FleetError> {
    let fine = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(())
    } else {
        Err(FleetError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}
