//! A node of the fleet tests and benchmark: a hot module registered at an artifact path (its
//! first build already there), attached to a fleet, called every millisecond as a service
//! would be, until its standard input closes or it is killed.
//!
//! `fleet_node <counter|bench> <servers> <bucket> <node> <public key> <artifact> <heartbeat ms>
//! <probation calls>` (probation 0: none): `counter` hosts the counter fixture, `bench` the
//! benchmarks' module (`bench/module`). It keeps the release numbers it decided in
//! `fleet-memory.json` beside the artifact, and prints `ready` once attached.
//! `RUST_LOG=hotreload_fleet=debug` shows what the node does, on its standard error.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bench_module::BenchState;
use counter::Counter;
use hotreload::{HotModule, HotReloader, Module, ModuleOptions, Probation, hot_fn};
use hotreload_fleet::{FleetConfig, FleetNode, NodeOptions, TrustedKeys};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, rest @ ..] = args.as_slice() else {
        return usage();
    };
    match kind.as_str() {
        "counter" => serve::<Counter>(rest, |counter| {
            let _ = hot_fn!(counter.add(1));
        }),
        "bench" => serve::<BenchState>(rest, |bench| {
            let _ = hot_fn!(bench.add(1, 2));
        }),
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: fleet_node <counter|bench> <servers> <bucket> <node> <public key> <artifact> <heartbeat ms> <probation calls>"
    );
    ExitCode::FAILURE
}

/// Registers module `T`, attaches to the fleet, and runs `call` every millisecond.
fn serve<T: HotModule>(args: &[String], call: impl Fn(&Module<T>)) -> ExitCode {
    let [
        servers,
        bucket,
        node,
        public,
        artifact,
        heartbeat,
        probation,
    ] = args
    else {
        return usage();
    };
    let heartbeat = Duration::from_millis(heartbeat.parse().expect("heartbeat in ms"));
    let probation: u64 = probation.parse().expect("probation calls");
    let mut options = ModuleOptions::new().artifact(PathBuf::from(artifact));
    if probation > 0 {
        options = options.probation(Probation::calls(probation));
    }
    let reloader = Arc::new(HotReloader::new());
    let module = match reloader.register_with::<T>(options) {
        Ok(module) => module,
        Err(err) => {
            eprintln!("fleet_node {node}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let trusted = TrustedKeys::new()
        .with_file(public)
        .expect("the trusted public key");
    let config = FleetConfig::new(servers.as_str(), bucket.as_str());
    // The release numbers it decided, kept beside its artifact across restarts.
    let memory = PathBuf::from(artifact).with_file_name("fleet-memory.json");
    let options = NodeOptions::new(config, node.as_str(), trusted)
        .heartbeat(heartbeat)
        .remember_in(memory);
    let fleet = match FleetNode::attach(reloader.clone(), options) {
        Ok(fleet) => fleet,
        Err(err) => {
            eprintln!("fleet_node {node}: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    // The test ends a node by closing its standard input (or killing it).
    let closed = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let closed = closed.clone();
        move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            closed.store(true, Ordering::Release);
        }
    });
    while !closed.load(Ordering::Acquire) {
        call(&module);
        std::thread::sleep(Duration::from_millis(1));
    }
    fleet.detach();
    ExitCode::SUCCESS
}
