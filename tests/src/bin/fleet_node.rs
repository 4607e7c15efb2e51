//! A node of the fleet tests and benchmark: the counter module registered at an artifact
//! path (its first build already there), attached to a fleet, called every millisecond as a
//! service would be, until its standard input closes or it is killed.
//!
//! `fleet_node <servers> <bucket> <node> <public key> <artifact> <heartbeat ms> <probation calls>`
//! (probation 0: none). It prints `ready` once attached.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use counter::Counter;
use hotreload::{HotReloader, ModuleOptions, Probation, hot_fn};
use hotreload_fleet::{FleetConfig, FleetNode, NodeOptions, TrustedKeys};

fn main() -> ExitCode {
    // `RUST_LOG=hotreload_fleet=debug` shows what the node does, on its standard error.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        servers,
        bucket,
        node,
        public,
        artifact,
        heartbeat,
        probation,
    ] = args.as_slice()
    else {
        eprintln!(
            "usage: fleet_node <servers> <bucket> <node> <public key> <artifact> <heartbeat ms> <probation calls>"
        );
        return ExitCode::FAILURE;
    };
    let heartbeat = Duration::from_millis(heartbeat.parse().expect("heartbeat in ms"));
    let probation: u64 = probation.parse().expect("probation calls");
    let mut options = ModuleOptions::new().artifact(PathBuf::from(artifact));
    if probation > 0 {
        options = options.probation(Probation::calls(probation));
    }
    let reloader = Arc::new(HotReloader::new());
    let counter = match reloader.register_with::<Counter>(options) {
        Ok(counter) => counter,
        Err(err) => {
            eprintln!("fleet_node {node}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let trusted = TrustedKeys::new()
        .with_file(public)
        .expect("the trusted public key");
    let config = FleetConfig::new(servers.as_str(), bucket.as_str());
    let options = NodeOptions::new(config, node.as_str(), trusted).heartbeat(heartbeat);
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
        let _ = hot_fn!(counter.add(1));
        std::thread::sleep(Duration::from_millis(1));
    }
    fleet.detach();
    ExitCode::SUCCESS
}
