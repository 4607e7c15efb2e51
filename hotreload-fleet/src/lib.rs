//! Fleet reloads for [`hotreload`]: a module build published once, signed, to NATS
//! JetStream, and taken by every process of a program in waves.
//!
//! - **Publishing** ([`Publisher::publish`], `hotreload publish`): the build is uploaded to the
//!   JetStream Object Store, its statement (module, release number, SHA-256, size, API and
//!   state versions) signed with a minisign key, and a release record written to the
//!   Key-Value bucket with a release number higher than the last.
//! - **Nodes** ([`FleetNode::attach`]): a process's `HotReloader` follows its modules'
//!   releases. A node takes a release only when its signature verifies with a trusted key,
//!   its number is higher than the one it serves, the rollout admits the node, and the
//!   downloaded build has the signed size and SHA-256; then the reloader's own transaction
//!   runs with every local check. The node writes its status with a heartbeat; a node that
//!   starts late or was offline catches up when it connects.
//! - **Rollouts** ([`Publisher::rollout`], `hotreload rollout`): waves of nodes (a canary
//!   wave first), each waited for until healthy (its probation over); a refusal or failed
//!   probation stops the rollout and a signed rollback record takes every node that took the
//!   release back ([`Publisher::rollback`] does that by hand).
//!
//! A fleet is a source of reload requests, not a second runtime: a node turns a signed,
//! admitted release into a file at the module's artifact path and a
//! [`HotReloader::reload_module`](hotreload::HotReloader::reload_module) call.
//!
//! The crate has its own Tokio runtime on the node's thread: the `hotreload` runtime does not
//! depend on it, and a host need not be async.
//!
//! # Publish a build
//!
//! ```no_run
//! use hotreload_fleet::{FleetConfig, Plan, Publisher, SigningKey};
//!
//! # async fn publish() -> Result<(), hotreload_fleet::FleetError> {
//! let key = SigningKey::from_file("release.key", None)?;
//! let publisher = Publisher::connect(&FleetConfig::new("nats://127.0.0.1:4222", "game"), key).await?;
//! let release = publisher
//!     .publish("game_logic", "target/release/libgame_logic.so".as_ref(), Plan::default())
//!     .await?;
//! println!("published release {} ({})", release.release, release.sha256);
//! # Ok(())
//! # }
//! ```
//!
//! # Attach a node
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use hotreload::HotReloader;
//! use hotreload_fleet::{FleetConfig, FleetNode, NodeOptions, TrustedKeys};
//!
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] pub struct GameLogic { score: i64 }
//! # #[hotreload::hot_module(version = 1)] impl GameLogic { pub fn score(&self) -> i64 { self.score } }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reloader = Arc::new(HotReloader::new());
//! let game = reloader.register::<GameLogic>()?;
//! let trusted = TrustedKeys::new().with_file("release.pub")?;
//! let config = FleetConfig::new("nats://127.0.0.1:4222", "game");
//! let node = FleetNode::attach(reloader.clone(), NodeOptions::new(config, "web-1", trusted))?;
//! // ... serve: calls go through `hot_fn!(game.score())` as always.
//! node.detach();
//! # drop(game);
//! # Ok(())
//! # }
//! ```
//!
//! # Roll it out
//!
//! ```no_run
//! use hotreload_fleet::{FleetConfig, FleetError, Publisher, SigningKey};
//!
//! # async fn rollout() -> Result<(), FleetError> {
//! let key = SigningKey::from_file("release.key", None)?;
//! let publisher = Publisher::connect(&FleetConfig::new("nats://127.0.0.1:4222", "game"), key).await?;
//! match publisher.rollout("game_logic").await {
//!     Ok(report) => print!("{report}"),
//!     Err(err @ FleetError::RolloutAborted { .. }) => eprintln!("{err}"),
//!     Err(other) => return Err(other),
//! }
//! for status in publisher.status(Some("game_logic")).await? {
//!     println!("{} serves release {} ({})", status.node, status.release, status.phase);
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod keys;
mod node;
mod publish;
pub mod record;
mod rollout;
mod store;

pub use error::FleetError;
pub use keys::{SigningKey, TrustedKeys, generate_keys};
pub use node::{FleetNode, NodeOptions};
pub use publish::{Publisher, status};
pub use record::{Admission, Kind, NodeStatus, Phase, Plan, Previous, Release, Wave};
pub use rollout::{RolloutReport, WaveReport};
pub use store::FleetConfig;
