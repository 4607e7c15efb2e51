//! The fleet's store on NATS JetStream: one Key-Value bucket for the records (see
//! [`record`](crate::record)) and one Object Store bucket of the same name for the builds.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use crate::FleetError;
use crate::error::check_name;

/// Where a fleet keeps its records and builds.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The NATS server URL, or several separated by commas (a cluster's members).
    pub servers: String,
    /// The bucket name (the Key-Value and the Object Store bucket both have it).
    pub bucket: String,
    /// How many servers keep a copy of each record and build when the buckets are created
    /// (1; 3 for a three-server cluster that must survive losing one).
    pub replicas: usize,
}

impl FleetConfig {
    /// The fleet in `bucket` on the server(s) at `servers`, one copy of everything.
    pub fn new(servers: impl Into<String>, bucket: impl Into<String>) -> Self {
        FleetConfig {
            servers: servers.into(),
            bucket: bucket.into(),
            replicas: 1,
        }
    }

    /// Keeps `replicas` copies of the buckets when this creates them.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }
}

/// A connection to the fleet's buckets, creating them on first use.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) servers: String,
    /// The bucket's name: part of every signed statement.
    pub(crate) bucket: String,
    pub(crate) kv: kv::Store,
    objects: object_store::ObjectStore,
}

/// How long a JetStream request may take before it counts as failed: long enough for a
/// cluster to elect a new leader after losing a server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read or write is retried before it fails.
const RETRY_FOR: Duration = Duration::from_secs(30);

impl Store {
    /// Connects and opens (or creates) the buckets. With `keep_trying`, a server not up yet
    /// is retried in the background instead of failing (a node started before its server).
    pub(crate) async fn open(config: &FleetConfig, keep_trying: bool) -> Result<Self, FleetError> {
        check_name("bucket", &config.bucket)?;
        let servers = config.servers.clone();
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            // Back soon after a server restarts: 100 ms more per attempt, at most a second
            // (the client's default waits up to several seconds between attempts).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1_000))
            });
        if keep_trying {
            options = options.retry_on_initial_connect();
        }
        let client = options
            .connect(servers.split(',').map(str::trim).collect::<Vec<_>>())
            .await
            .map_err(|err| FleetError::nats(&servers, "connect", err))?;
        let js = jetstream::new(client);
        let kv = retrying(&servers, "open the Key-Value bucket".to_owned(), || {
            open_kv(&js, config)
        })
        .await?;
        let objects = retrying(&servers, "open the Object Store bucket".to_owned(), || {
            open_objects(&js, config)
        })
        .await?;
        Ok(Store {
            servers,
            bucket: config.bucket.clone(),
            kv,
            objects,
        })
    }

    /// The record at `key` and its revision, if there is one.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, FleetError> {
        let entry = retrying(&self.servers, format!("read {key}"), || self.kv.entry(key)).await?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some((decode(key, &entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `record` at `key`.
    pub(crate) async fn put<T: Serialize>(&self, key: &str, record: &T) -> Result<u64, FleetError> {
        let bytes = bytes::Bytes::from(serde_json::to_vec(record).expect("records serialise"));
        retrying(&self.servers, format!("write {key}"), || {
            self.kv.put(key, bytes.clone())
        })
        .await
    }

    /// Writes `record` at `key` once, without retrying (a heartbeat: the next one follows).
    pub(crate) async fn put_once<T: Serialize>(
        &self,
        key: &str,
        record: &T,
    ) -> Result<(), async_nats::Error> {
        let bytes = serde_json::to_vec(record).expect("records serialise");
        self.kv.put(key, bytes.into()).await?;
        Ok(())
    }

    /// Writes `record` at `key` only if the key's revision is still `revision` (0: only if
    /// there is no record). `Ok(false)`: someone wrote it meanwhile.
    pub(crate) async fn put_if<T: Serialize>(
        &self,
        key: &str,
        record: &T,
        revision: u64,
    ) -> Result<bool, FleetError> {
        let bytes = serde_json::to_vec(record).expect("records serialise");
        let written: Result<(), (bool, async_nats::Error)> = if revision == 0 {
            self.kv
                .create(key, bytes.into())
                .await
                .map(drop)
                .map_err(|err| (err.kind() == kv::CreateErrorKind::AlreadyExists, err.into()))
        } else {
            self.kv
                .update(key, bytes.into(), revision)
                .await
                .map(drop)
                .map_err(|err| {
                    (
                        err.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        err.into(),
                    )
                })
        };
        match written {
            Ok(()) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, err)) => Err(FleetError::nats(&self.servers, format!("write {key}"), err)),
        }
    }

    /// Every record whose key starts with `prefix`, newest value of each.
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, FleetError> {
        let mut found = retrying(&self.servers, format!("list {prefix}*"), || async {
            let mut keys = self.kv.keys().await?;
            let mut found = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key?;
                if key.starts_with(prefix) {
                    found.push(key);
                }
            }
            Ok::<_, async_nats::Error>(found)
        })
        .await?;
        found.sort();
        let mut records = Vec::new();
        for key in found {
            if let Some((record, _)) = self.get(&key).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Uploads `bytes` as object `name`, replacing an object of that name: whatever is
    /// there (planted by someone with access to the bucket, say) is not trusted to hold them.
    pub(crate) async fn upload(&self, name: &str, bytes: &[u8]) -> Result<(), FleetError> {
        retrying(&self.servers, format!("upload {name}"), || async {
            let mut reader = bytes;
            self.objects.put(name, &mut reader).await
        })
        .await
        .map(drop)
    }

    /// Downloads object `name`, which must be `size` bytes long (it is not read otherwise).
    /// A mis-sized or missing object fails at once; other failures (a server restarting)
    /// are retried, then reported as unreachable.
    pub(crate) async fn download(&self, name: &str, size: u64) -> Result<Vec<u8>, Missing> {
        let what = || format!("download {name}");
        retrying(&self.servers, what(), || async {
            let mut object = match self.objects.get(name).await {
                // Not there, or not yet on the server that answered (a follower of a
                // cluster): the caller asks again later, without holding anything up.
                Err(err) if err.kind() == object_store::GetErrorKind::NotFound => {
                    return Ok(Err(Missing::Absent(err.to_string())));
                }
                found => found?,
            };
            if object.info.size as u64 != size {
                return Ok(Err(Missing::WrongSize(format!(
                    "object {name} is {} bytes, the release says {size}",
                    object.info.size
                ))));
            }
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await?;
            Ok::<_, async_nats::Error>(Ok(bytes))
        })
        .await
        .map_err(|err| Missing::Unreachable(err.to_string()))?
    }
}

/// Runs `op` until it succeeds or [`RETRY_FOR`] has passed: a server restarting or a
/// cluster electing a leader is waited out, not reported.
async fn retrying<T, E, F>(
    servers: &str,
    what: String,
    mut op: impl FnMut() -> F,
) -> Result<T, FleetError>
where
    F: Future<Output = Result<T, E>>,
    E: Into<async_nats::Error>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(FleetError::nats(servers, what, err));
            }
            Err(err) => {
                let err: async_nats::Error = err.into();
                tracing::debug!(%err, what, "retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Why a build could not be downloaded.
#[derive(Debug)]
pub(crate) enum Missing {
    /// The object is not the size the release says: asking again will not help.
    WrongSize(String),
    /// No such object (yet).
    Absent(String),
    /// The server did not answer in time.
    Unreachable(String),
}

/// Decodes a record, naming its key when it does not.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(bytes).map_err(|err| FleetError::BadRecord {
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

/// Opens the Key-Value bucket, creating its stream first if needed. The stream is created
/// here, with the settings a Key-Value bucket has, rather than by the client's
/// `create_key_value`, which first asks for the account's info and fails to read a 2.9
/// server's answer.
async fn open_kv(
    js: &jetstream::Context,
    config: &FleetConfig,
) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{}", config.bucket),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        // Some history of each key, for `status` and for whoever audits a fleet.
        max_messages_per_subject: 16,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        allow_rollup: true,
        deny_delete: true,
        // Reads go to the stream's leader: with direct gets, any replica of a cluster answers,
        // and one that lags returns a record older than the write just acknowledged (a
        // rollout not finding the release it was asked to roll out).
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(&config.bucket).await?)
}

/// Opens the Object Store bucket, creating it if needed.
async fn open_objects(
    js: &jetstream::Context,
    config: &FleetConfig,
) -> Result<object_store::ObjectStore, async_nats::Error> {
    if let Ok(store) = js.get_object_store(&config.bucket).await {
        return Ok(store);
    }
    Ok(js
        .create_object_store(object_store::Config {
            bucket: config.bucket.clone(),
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await?)
}
