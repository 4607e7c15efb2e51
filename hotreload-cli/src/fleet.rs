//! The fleet subcommands: `keygen`, `publish`, `rollout`, `status`, `rollback` (see
//! `hotreload_fleet`). Exit status: 0 done, 1 the rollout stopped (the fleet rolled back),
//! 3 could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hotreload_fleet::{
    FleetConfig, FleetError, NodeStatus, Plan, Publisher, Release, SigningKey, Wave,
};

/// Where the fleet is.
#[derive(clap::Args)]
pub(crate) struct FleetArgs {
    /// The NATS server URL, or several separated by commas.
    #[arg(long, env = "HOTRELOAD_NATS", default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// The fleet's bucket (Key-Value and Object Store).
    #[arg(long, env = "HOTRELOAD_BUCKET", default_value = "hotreload")]
    bucket: String,
    /// Copies of the buckets the servers keep, when this creates them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

/// The signing key.
#[derive(clap::Args)]
pub(crate) struct KeyArgs {
    /// The minisign secret key file.
    #[arg(long)]
    key: PathBuf,
    /// The environment variable holding the key's password (for a key made by `minisign -G`
    /// with one).
    #[arg(long)]
    password_env: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the secret key (it must not exist).
    #[arg(long)]
    secret: PathBuf,
    /// Where to write the public key (it must not exist).
    #[arg(long)]
    public: PathBuf,
}

/// A module of a fleet, and the key to sign for it.
#[derive(clap::Args)]
pub(crate) struct ModuleArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// The module (its `#[hot_module]` name).
    #[arg(long)]
    module: String,
}

impl ModuleArgs {
    async fn publisher(&self) -> Result<Publisher, FleetError> {
        Publisher::connect(&self.fleet.config(), self.key.load()?).await
    }
}

#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    target: ModuleArgs,
    /// The built library.
    build: PathBuf,
    /// The rollout's waves, in order: a node count (`1`) or a share (`50%`).
    #[arg(long, value_delimiter = ',', default_value = "1,50%,100%", value_parser = parse_wave)]
    waves: Vec<Wave>,
    /// How long each wave may take to be healthy, in seconds.
    #[arg(long, default_value_t = 60)]
    wave_timeout: u64,
    /// Roll it out at once (as `hotreload rollout` would).
    #[arg(long)]
    rollout: bool,
}

/// `rollout`: the module's current release.
pub(crate) type RolloutArgs = ModuleArgs;

#[derive(clap::Args)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    target: ModuleArgs,
    /// How long to wait for every live node to serve the rollback, in seconds (0: do not).
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Only this module.
    #[arg(long)]
    module: Option<String>,
    /// Print JSON, one object per node and module.
    #[arg(long)]
    json: bool,
}

fn parse_wave(text: &str) -> Result<Wave, String> {
    match text.strip_suffix('%') {
        Some(share) => share
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(Wave::Percent)
            .ok_or_else(|| format!("{text:?}: a share is 1% to 100%")),
        None => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(Wave::Nodes)
            .ok_or_else(|| format!("{text:?}: a wave is a node count or a share like 50%")),
    }
}

impl FleetArgs {
    fn config(&self) -> FleetConfig {
        FleetConfig::new(&self.server, &self.bucket).replicas(self.replicas)
    }
}

impl KeyArgs {
    fn load(&self) -> Result<SigningKey, FleetError> {
        let password = self
            .password_env
            .as_ref()
            .map(|var| std::env::var(var).unwrap_or_default());
        SigningKey::from_file(&self.key, password)
    }
}

/// Runs `work` on a Tokio runtime and turns its outcome into the exit status.
fn block_on(work: impl Future<Output = Result<ExitCode, FleetError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hotreload: {err}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(err @ FleetError::RolloutAborted { .. }) => {
            eprintln!("hotreload: {err}");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("hotreload: {err}");
            ExitCode::from(3)
        }
    }
}

pub(crate) fn keygen(args: KeygenArgs) -> ExitCode {
    match hotreload_fleet::generate_keys(&args.secret, &args.public) {
        Ok(id) => {
            println!(
                "key {id}: secret key {}, public key {}",
                args.secret.display(),
                args.public.display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("hotreload keygen: {err}");
            ExitCode::from(3)
        }
    }
}

pub(crate) fn publish(args: PublishArgs) -> ExitCode {
    block_on(async move {
        let publisher = args.target.publisher().await?;
        let module = &args.target.module;
        let plan = Plan {
            waves: args.waves.clone(),
            wave_timeout_secs: args.wave_timeout,
        };
        let release = publisher.publish(module, &args.build, plan).await?;
        print_release(&release);
        if args.rollout {
            print!("{}", publisher.rollout(module).await?);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn rollout(args: RolloutArgs) -> ExitCode {
    block_on(async move {
        let publisher = args.publisher().await?;
        print!("{}", publisher.rollout(&args.module).await?);
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn rollback(args: RollbackArgs) -> ExitCode {
    block_on(async move {
        let publisher = args.target.publisher().await?;
        let module = &args.target.module;
        let release = publisher.rollback(module).await?;
        print_release(&release);
        if args.wait > 0 {
            let nodes = publisher
                .wait_for_release(module, &release, Duration::from_secs(args.wait))
                .await?;
            println!("{} node(s) serve release {}", nodes.len(), release.release);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn status(args: StatusArgs) -> ExitCode {
    block_on(async move {
        let statuses =
            hotreload_fleet::status(&args.fleet.config(), args.module.as_deref()).await?;
        if args.json {
            for status in &statuses {
                println!(
                    "{}",
                    serde_json::to_string(status).expect("statuses serialise")
                );
            }
        } else {
            print_table(&statuses);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_release(release: &Release) {
    let kind = match release.kind {
        hotreload_fleet::Kind::Build => "build".to_owned(),
        hotreload_fleet::Kind::Rollback { from } => format!("rollback of release {from}"),
    };
    println!(
        "{}: release {} ({kind}), {} bytes, sha256 {}, api v{}, state v{}",
        release.module,
        release.release,
        release.size,
        release.sha256,
        release.api_version,
        release.state_version
    );
}

fn print_table(statuses: &[NodeStatus]) {
    let rows: Vec<[String; 7]> = statuses
        .iter()
        .map(|s| {
            let age = s.age().as_secs_f64();
            let beat = if s.is_fresh() {
                format!("{age:.1} s ago")
            } else {
                format!("gone {age:.0} s")
            };
            [
                s.module.clone(),
                s.node.clone(),
                s.release.to_string(),
                s.phase.to_string(),
                s.sha256.chars().take(12).collect(),
                beat,
                match (s.attempted, &s.reason) {
                    (Some(release), Some(reason)) => format!("release {release}: {reason}"),
                    (_, Some(reason)) => reason.clone(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    let header = [
        "MODULE",
        "NODE",
        "RELEASE",
        "PHASE",
        "SHA256",
        "HEARTBEAT",
        "NOTE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        println!("{}", text.trim_end());
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        println!("(no node has reported)");
    }
}
