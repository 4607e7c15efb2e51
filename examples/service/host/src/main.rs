//! An HTTP service whose request handling is a hot module (`storefront`), reloaded while it
//! serves.
//!
//! By default it serves on `127.0.0.1:<--port>` and watches the module's sources: saving
//! `examples/service/storefront/src/lib.rs` rebuilds the module with cargo and the next
//! requests run the new build, with the counters and the price cache carried over. The admin
//! routes show the reloader's status, reload on request, and run canaries.
//!
//! `--load-run` instead measures it: it builds edited variants of the module, serves them
//! under `wrk`, reloads and refuses builds and runs canaries meanwhile, then runs `wrk` again
//! with no reloads as the baseline, and prints a report (see `load_run`).

mod canary;
mod load_run;
mod server;
mod wrk;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotreload::{HotReloader, Module, ModuleOptions};
use storefront::Storefront;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: hotreload-service [--port N] [--no-watch] [--seconds N]
       hotreload-service --load-run [--seconds N] [--short]

  --port N      port on 127.0.0.1 to serve on (0: a free one, printed); default 8080
  --no-watch    do not rebuild and reload the module when its sources change
                (reload with POST /admin/reload, or run canaries)
  --seconds N   stop after N seconds (serving), or each wrk run's length (load run, default 30)
  --load-run    build variants of the module, serve them under wrk while reloading, report
  --short       a short load run: 8 s per wrk run, at least 30 reloads";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = if args.load_run {
        load_run::run(load_run::Plan::new(args.short, args.seconds))
    } else {
        serve(&args).map(|()| true)
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The command line.
#[derive(Debug, Default)]
struct Args {
    port: u16,
    watch: bool,
    seconds: Option<u64>,
    load_run: bool,
    short: bool,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            port: 8080,
            watch: true,
            ..Args::default()
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value"))
                    .and_then(|v| v.parse::<u64>().map_err(|e| format!("{name} {v}: {e}")))
            };
            match arg.as_str() {
                "--port" => {
                    parsed.port = u16::try_from(value("--port")?)
                        .map_err(|_| "--port: not a port number".to_owned())?
                }
                "--seconds" => parsed.seconds = Some(value("--seconds")?),
                "--no-watch" => parsed.watch = false,
                "--load-run" => parsed.load_run = true,
                "--short" => parsed.short = true,
                "-h" | "--help" => return Err("hotreload-service".to_owned()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        if parsed.short && !parsed.load_run {
            return Err("--short goes with --load-run".to_owned());
        }
        Ok(parsed)
    }
}

/// Serves until stopped (or for `--seconds`), reloading the module when it is rebuilt.
fn serve(args: &Args) -> Result<(), Error> {
    let started = Instant::now();
    let reloader = Arc::new(HotReloader::new());
    reloader.on_event(move |event| println!("[{:>8.2?}] {event}", started.elapsed()));
    let store: Module<Storefront> = if args.watch {
        reloader.register_with(ModuleOptions::new().wait_for_artifact().build_with_cargo())?
    } else {
        reloader.register()?
    };
    if args.watch {
        reloader.start_watching()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let app = server::App {
        reloader: reloader.clone(),
        store,
    };
    let seconds = args.seconds;
    let port = args.port;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let address = listener.local_addr()?;
        println!("listening on http://{address}/");
        println!(
            "  GET /  GET /price/<sku>?user=<id>  GET /stats  GET /admin/status  \
             POST /admin/reload  {}",
            canary::ROUTES_HELP
        );
        let shutdown = async move {
            match seconds {
                Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
                None => std::future::pending().await,
            }
        };
        server::serve(listener, app, shutdown).await
    })?;
    reloader.stop_watching();
    Ok(())
}
