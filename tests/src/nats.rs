//! `nats-server` processes for the fleet tests: JetStream with file storage in a directory
//! of the test's, on free loopback ports only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
const DEADLINE: Duration = Duration::from_secs(60);

/// The `nats-server` binary: on `PATH`, or where Debian's package puts it.
pub fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
        .expect("nats-server is not installed (Debian: apt-get install nats-server)")
}

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `nats-server` process with JetStream (file storage) on loopback.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    name: String,
}

impl NatsServer {
    /// One server, its JetStream files under `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            dir.join("jetstream").display().to_string(),
        ];
        Self::spawn("nats-server".into(), port, args)
    }

    /// A cluster of three on loopback, each with its own JetStream directory under `dir`.
    pub fn cluster(dir: &Path) -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        (0..3)
            .map(|i| {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, cluster))| format!("nats://127.0.0.1:{cluster}"))
                    .collect();
                let args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    ports[i].0.to_string(),
                    "-n".into(),
                    format!("n{i}"),
                    "-js".into(),
                    "-sd".into(),
                    dir.join(format!("n{i}")).display().to_string(),
                    "--cluster_name".into(),
                    "hotreload".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", ports[i].1),
                    "--routes".into(),
                    routes.join(","),
                ];
                Self::spawn(format!("nats-server n{i}"), ports[i].0, args)
            })
            .collect()
    }

    fn spawn(name: String, port: u16, args: Vec<String>) -> Self {
        let mut server = NatsServer {
            child: None,
            port,
            args,
            name,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(nats_server_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", self.name));
        self.child = Some(child);
        wait_for_port(self.port, &self.name);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
