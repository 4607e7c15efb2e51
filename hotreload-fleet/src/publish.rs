//! Publishing: a build uploaded once to the Object Store, described, signed, and announced by
//! a release record with the next release number; rollbacks as signed records too.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::check_name;
use crate::record::{self, Admission, Kind, NodeStatus, Plan, Release, admit_key, release_key};
use crate::store::Store;
use crate::{FleetConfig, FleetError, SigningKey, TrustedKeys};

/// The side that holds the signing key: publishes releases, drives rollouts, rolls back.
pub struct Publisher {
    pub(crate) store: Store,
    pub(crate) key: SigningKey,
    /// The key's public half: the records a publisher builds on must verify with it.
    trusted: TrustedKeys,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("servers", &self.store.servers)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to the fleet's store (creating its buckets if needed) to publish with `key`.
    pub async fn connect(config: &FleetConfig, key: SigningKey) -> Result<Self, FleetError> {
        Ok(Publisher {
            store: Store::open(config, false).await?,
            trusted: TrustedKeys::of_signing_key(&key)?,
            key,
        })
    }

    /// Publishes `build`, a library exporting hot module `module`: loads it once to read its
    /// API and state versions (a file that is no such build is refused here), uploads it,
    /// signs its statement and writes the release record with the next release number. No
    /// node takes it until [`rollout`](Self::rollout) admits them.
    pub async fn publish(
        &self,
        module: &str,
        build: &Path,
        plan: Plan,
    ) -> Result<Release, FleetError> {
        check_name("module", module)?;
        let bytes = std::fs::read(build).map_err(|source| FleetError::Build {
            path: build.to_owned(),
            source,
        })?;
        let described =
            hotreload::check::describe(module, build).map_err(|err| FleetError::Build {
                path: build.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string()),
            })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let object = record::object_name(module, &sha256);
        self.store.upload(&object, &bytes).await?;
        let (number, previous, revision) = match self.current(module).await {
            Ok(Some((current, revision))) => (
                next_number(module, current.release)?,
                Some(current.as_previous()),
                revision,
            ),
            Ok(None) => (1, None, 0),
            Err(FleetError::Untrusted {
                release, reason, ..
            }) => {
                // Not this key's record: published over (nodes refused it anyway), taking
                // nothing from it but a higher number; there is nothing to roll back to.
                tracing::warn!(module, release, %reason, "publishing over a record that does not verify");
                let revision = self
                    .store
                    .get::<Release>(&release_key(module))
                    .await?
                    .map_or(0, |(_, revision)| revision);
                (next_number(module, release)?, None, revision)
            }
            Err(err) => return Err(err),
        };
        let release = Release {
            module: module.to_owned(),
            release: number,
            kind: Kind::Build,
            object,
            size: bytes.len() as u64,
            sha256,
            api_version: described.api_version,
            state_version: described.state_version,
            previous,
            signature: String::new(),
            plan,
            published_unix_ms: record::unix_ms(),
        };
        self.write(release, revision).await
    }

    /// Rolls module `module` back by hand: a signed rollback record (the next release number)
    /// pointing at the build the current release replaced, admitted to every node at once.
    /// Returns the record; [`status`](Self::status) shows the nodes taking it.
    pub async fn rollback(&self, module: &str) -> Result<Release, FleetError> {
        check_name("module", module)?;
        let (current, revision) =
            self.current(module)
                .await?
                .ok_or_else(|| FleetError::NoRelease {
                    module: module.to_owned(),
                })?;
        let release = self.rollback_record(&current)?;
        let release = self.write(release, revision).await?;
        self.admit(module, release.release, None).await?;
        Ok(release)
    }

    /// The rollback record that undoes `current`.
    pub(crate) fn rollback_record(&self, current: &Release) -> Result<Release, FleetError> {
        if let Kind::Rollback { from } = current.kind {
            // Its `previous` is the release it undid: rolling it back would bring that build
            // back to every node at once, with no canary. Publish it again instead.
            return Err(FleetError::AlreadyRolledBack {
                module: current.module.clone(),
                release: current.release,
                from,
            });
        }
        let target = current
            .previous
            .clone()
            .ok_or_else(|| FleetError::NothingToRollBackTo {
                module: current.module.clone(),
                release: current.release,
            })?;
        Ok(Release {
            module: current.module.clone(),
            release: next_number(&current.module, current.release)?,
            kind: Kind::Rollback {
                from: current.release,
            },
            object: target.object,
            size: target.size,
            sha256: target.sha256,
            api_version: target.api_version,
            state_version: target.state_version,
            previous: Some(current.as_previous()),
            signature: String::new(),
            plan: Plan::all_at_once(),
            published_unix_ms: record::unix_ms(),
        })
    }

    /// Signs `release` and writes it if the record is still at `revision`.
    pub(crate) async fn write(
        &self,
        mut release: Release,
        revision: u64,
    ) -> Result<Release, FleetError> {
        release.signature = self.key.sign(&release.statement(&self.store.bucket))?;
        let key = release_key(&release.module);
        if self.store.put_if(&key, &release, revision).await? {
            Ok(release)
        } else {
            Err(FleetError::Conflict {
                module: release.module,
            })
        }
    }

    /// Lets `nodes` (`None`: every node) take release `release` of `module`.
    pub(crate) async fn admit(
        &self,
        module: &str,
        release: u64,
        nodes: Option<Vec<String>>,
    ) -> Result<(), FleetError> {
        self.store
            .put(&admit_key(module), &Admission { release, nodes })
            .await
            .map(drop)
    }

    /// The module's current release record, if any, checked against the publisher's key.
    pub async fn release(&self, module: &str) -> Result<Option<Release>, FleetError> {
        check_name("module", module)?;
        Ok(self.current(module).await?.map(|(release, _)| release))
    }

    /// The current release record and its revision, if it verifies with the publisher's key:
    /// a record someone changed in the bucket is never built upon.
    pub(crate) async fn current(&self, module: &str) -> Result<Option<(Release, u64)>, FleetError> {
        let Some((release, revision)) = self.store.get::<Release>(&release_key(module)).await?
        else {
            return Ok(None);
        };
        let verified = if release.module == module {
            self.trusted
                .verify(&release.statement(&self.store.bucket), &release.signature)
        } else {
            Err(format!("it names module {}", release.module))
        };
        match verified {
            Ok(()) => Ok(Some((release, revision))),
            Err(reason) => Err(FleetError::Untrusted {
                module: module.to_owned(),
                release: release.release,
                reason,
            }),
        }
    }

    /// Every node's last status for `module` (every module's with `None`), by key order.
    pub async fn status(&self, module: Option<&str>) -> Result<Vec<NodeStatus>, FleetError> {
        statuses_in(&self.store, module).await
    }
}

/// Every node's last status for `module` (every module's with `None`), read without a key:
/// what `hotreload status` prints.
pub async fn status(
    config: &FleetConfig,
    module: Option<&str>,
) -> Result<Vec<NodeStatus>, FleetError> {
    statuses_in(&Store::open(config, false).await?, module).await
}

async fn statuses_in(store: &Store, module: Option<&str>) -> Result<Vec<NodeStatus>, FleetError> {
    let prefix = match module {
        Some(module) => {
            check_name("module", module)?;
            format!("node.{module}.")
        }
        None => "node.".to_owned(),
    };
    store.list(&prefix).await
}

/// The release number after `release`.
fn next_number(module: &str, release: u64) -> Result<u64, FleetError> {
    release.checked_add(1).ok_or_else(|| FleetError::BadRecord {
        key: release_key(module),
        reason: "no release number is left after it".to_owned(),
    })
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
