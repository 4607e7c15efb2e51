//! Swap new builds of a module into a running program, keeping its state, refusing builds
//! that do not fit, and never taking the program down.
//!
//! A module is a `cdylib` crate (also built as an `rlib`, so the host can use its types)
//! whose state type carries `#[hot_module]`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct GameLogic {
//!     score: i64,
//! }
//!
//! #[hotreload::hot_module(version = 1)]
//! impl GameLogic {
//!     pub fn tick(&mut self, dt: f32) -> i64 {
//!         self.score += (dt * 100.0) as i64;
//!         self.score
//!     }
//!
//!     pub fn score(&self) -> i64 {
//!         self.score
//!     }
//! }
//! ```
//!
//! The host registers it, calls it with [`hot_fn!`] (checked at compile time against the
//! signatures above), and reloads it whenever it likes:
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)] pub struct GameLogic { score: i64 }
//! # #[hotreload::hot_module(version = 1)]
//! # impl GameLogic { pub fn tick(&mut self, dt: f32) -> i64 { self.score } }
//! use hotreload::{HotReloader, hot_fn};
//!
//! fn main() -> Result<(), hotreload::HotError> {
//!     let reloader = HotReloader::new();
//!     let game = reloader.register::<GameLogic>()?; // target/<profile>/lib<crate>.so
//!     let score = hot_fn!(game.tick(0.016))?;
//!     match reloader.reload_module("game_logic") {
//!         Ok(report) => println!("now load #{}, paused calls {:?}", report.to.generation, report.timings.pause()),
//!         Err(err) => println!("still running the old version: {err}"),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees
//! - **The build output is never opened in place.** Each version is read once, checked to be
//!   a complete shared library for this machine, and opened from a private shadow copy.
//! - **Nothing running is touched before the new build is verified**: framework ABI version,
//!   module name, the export table's layout (every method's parameter and return types,
//!   through abi_stable) and the API version. A refusal is a [`HotError::Rejected`] whose
//!   message is one line naming what differs.
//! - **State is carried over**: saved by the old code as MessagePack, restored by the new. A
//!   failure or panic there discards the new version; the old one keeps its state.
//! - **Calls are never lost**: each call runs wholly in the version that was live when it
//!   began; a reload waits for calls in progress, swaps, and lets the waiting calls through.
//! - **Panics stay in the module**: a panicking method returns [`HotError::Call`]; the next
//!   call works.
//!
//! # Known limits
//! - Statics, `thread_local!`s and logging globals inside a module are the module's own and
//!   start fresh with every version.
//! - On glibc, a library that registered thread-local destructors stays mapped after it is
//!   closed; [`ReloadReport::previous_still_mapped`] says when that happened.
//! - A method must not call back into the host in a way that calls the same module again
//!   while a reload is waiting: the call would wait for the reload, which waits for it.
//! - Built and tested on Linux (glibc, x86_64) only.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod build;
mod call;
mod error;
mod events;
#[cfg(feature = "harness")]
pub mod harness;
mod locate;
mod module;
mod os;
mod rehome;
mod reloader;
mod transaction;
mod watch;

#[doc(hidden)]
pub mod __private;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use call::{CallPath, LocalModule, Module};
pub use error::{HotError, ModuleFault, Rejection};
pub use events::{Event, ReloadRequest};
pub use locate::library_file_name;
pub use module::HotModule;
pub use rehome::Rehome;
pub use reloader::{HotReloader, ModuleOptions, Probation};
pub use transaction::retire::RetiredVersion;
pub use transaction::rollback::{RollbackReport, RollbackState};
pub use transaction::{ReloadReport, StepTimings};
pub use watch::{Apply, WatchOptions};

pub use hotreload_macros::{Rehome, hot_fn, hot_module};

/// One loaded version of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The module's name.
    pub module: String,
    /// The load number: 1 for the first load, one more for each reload attempt.
    pub generation: u64,
    /// The API version from `#[hot_module(version = N)]`.
    pub api_version: u32,
    /// The state schema version.
    pub state_version: u32,
    /// The artifact it was loaded from.
    pub artifact: PathBuf,
    /// The artifact's size in bytes.
    pub artifact_len: u64,
    /// The SHA-256 of the artifact's bytes as loaded, in hex.
    pub sha256: String,
    /// The private shadow copy it was opened from.
    pub shadow: PathBuf,
    /// When it was verified.
    pub loaded_at: SystemTime,
}

/// The reloader's private directory of shadow copies, mode 0700, removed when the last
/// version opened from it is gone.
pub(crate) struct ShadowDir(tempfile::TempDir);

impl ShadowDir {
    fn create() -> Result<Self, HotError> {
        tempfile::Builder::new()
            .prefix("hotreload-")
            .tempdir()
            .map(ShadowDir)
            .map_err(|source| HotError::ShadowDir {
                source: source.into(),
            })
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}
