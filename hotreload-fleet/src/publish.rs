//! Publishing: a build uploaded once to the Object Store, described, signed, and announced by
//! a release record with the next release number; rollbacks as signed records too.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::check_name;
use crate::record::{self, Admission, Kind, NodeStatus, Plan, Release, admit_key, release_key};
use crate::store::Store;
use crate::{FleetConfig, FleetError, SigningKey};

/// The side that holds the signing key: publishes releases, drives rollouts, rolls back.
pub struct Publisher {
    pub(crate) store: Store,
    pub(crate) key: SigningKey,
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
        let current = self.store.get::<Release>(&release_key(module)).await?;
        let (number, previous, revision) = match &current {
            Some((current, revision)) => {
                (current.release + 1, Some(current.as_previous()), *revision)
            }
            None => (1, None, 0),
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
        let (current, revision) = self
            .store
            .get::<Release>(&release_key(module))
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
        let target = current
            .previous
            .clone()
            .ok_or_else(|| FleetError::NothingToRollBackTo {
                module: current.module.clone(),
                release: current.release,
            })?;
        Ok(Release {
            module: current.module.clone(),
            release: current.release + 1,
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
        release.signature = self.key.sign(&release.statement())?;
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

    /// The module's current release record, if any.
    pub async fn release(&self, module: &str) -> Result<Option<Release>, FleetError> {
        check_name("module", module)?;
        Ok(self
            .store
            .get::<Release>(&release_key(module))
            .await?
            .map(|(release, _)| release))
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

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
