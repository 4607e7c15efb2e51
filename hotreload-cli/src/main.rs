//! The `hotreload` command.
//!
//! `hotreload check`: will the change in this module crate hot-reload into a program running
//! the build of a base revision? It builds the crate at the base revision and as it is now,
//! loads the older build as a host compiled against it would, reloads the newer one into it
//! (see `hotreload::check`), and prints a verdict per module. Exit status: 0 it reloads,
//! 1 refused, 2 needs a host restart, 3 the check could not run.
//!
//! `hotreload keygen | publish | rollout | status | rollback`: releases to a fleet of
//! processes over NATS JetStream (see `hotreload_fleet`).

mod check;
mod fleet;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "hotreload",
    version,
    about = "Hot-reloading Rust modules: tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Whether the module crate's change reloads into a program running the base revision's
    /// build. Exit status: 0 reloads, 1 refused, 2 needs a host restart, 3 could not check.
    Check(CheckArgs),
    /// Writes a new minisign key pair (no password) for signing releases.
    Keygen(fleet::KeygenArgs),
    /// Uploads a module build to the fleet's NATS JetStream buckets, signs it and writes its
    /// release record with the next release number.
    Publish(fleet::PublishArgs),
    /// Drives the module's current release to the nodes in waves; a refusal or failed
    /// probation stops it and rolls the fleet back. Exit status 1 when it stopped.
    Rollout(fleet::RolloutArgs),
    /// Prints every node's state: the release it serves, its phase, its heartbeat.
    Status(fleet::StatusArgs),
    /// Rolls the fleet back to the build the current release replaced (a signed rollback
    /// record).
    Rollback(fleet::RollbackArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The module crate's manifest.
    #[arg(long, default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    /// The revision whose build runs now [default: the merge base of HEAD with the main
    /// branch: origin/main, main, origin/master or master, the first that exists].
    #[arg(long, conflicts_with = "old")]
    base: Option<String>,
    /// Compare this built library (the running build) instead of building the base.
    #[arg(long, requires = "new")]
    old: Option<PathBuf>,
    /// Compare this built library (the new build) instead of building the working tree.
    #[arg(long, requires = "old")]
    new: Option<PathBuf>,
    /// The module to check [default: every hot module the library exports].
    #[arg(long)]
    module: Option<String>,
    /// Where cargo builds both revisions [default: `hotreload-check` in the workspace's
    /// target directory].
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Build with `--release`.
    #[arg(long)]
    release: bool,
    /// How to print the verdicts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per module.
    Text,
    /// One JSON object, for tools.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Keygen(args) => fleet::keygen(args),
        Command::Publish(args) => fleet::publish(args),
        Command::Rollout(args) => fleet::rollout(args),
        Command::Status(args) => fleet::status(args),
        Command::Rollback(args) => fleet::rollback(args),
    }
}
