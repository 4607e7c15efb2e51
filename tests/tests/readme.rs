//! A new user's workspace, made from the README alone: its shell commands run, its manifests
//! merged into what `cargo new` wrote, its source files written as they stand. Then, as the
//! README says: `cargo run -p host`, an edit and `cargo build -p game-logic` in another
//! "terminal", and the host reloads on the first try, its state carried over; the watching
//! example rebuilds and reloads by itself. A debug build with no profile settings, as a
//! user's own workspace has: reloading a changed build must take under 100 ms (the best of
//! three), an unchanged one under 1 ms (the median of 300).
//!
//! The workspace lives in this target directory's `tmp/readme/my-game` and keeps its own
//! `target/` between runs (the first run compiles its dependencies: a few minutes on 2 cores).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a host may take to print what it is waited for (a build included).
const DEADLINE: Duration = Duration::from_secs(300);

/// A fenced block of the README: its language and its text.
struct Block {
    lang: String,
    text: String,
}

fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let mut text = String::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            text.push_str(line);
            text.push('\n');
        }
        blocks.push(Block {
            lang: lang.trim().to_owned(),
            text,
        });
    }
    blocks
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A block's file, named by its first line (`# host/Cargo.toml`, `// host/src/main.rs`).
fn file_of(block: &Block, comment: &str) -> Option<String> {
    let first = block.text.lines().next()?;
    let name = first.strip_prefix(comment)?.trim();
    let name = name.split_whitespace().next()?;
    (name.contains('/') || name.ends_with(".toml")).then(|| name.to_owned())
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from)
}

/// A command as the user's shell would run it: cargo on the `PATH`, nothing of this test
/// run's cargo environment.
fn user_command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CARGO") && key_text != "CARGO_HOME" {
            command.env_remove(&key);
        }
    }
    if let Some(bin) = cargo().parent().filter(|p| !p.as_os_str().is_empty()) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths).unwrap());
    }
    command
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes `<tmp>/readme/my-game` from the README, keeping the `target/` of an earlier run.
fn make_workspace() -> PathBuf {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme");
    let root = parent.join("my-game");
    let kept_target = parent.join("target-of-an-earlier-run");
    std::fs::create_dir_all(&parent).unwrap();
    let _ = std::fs::remove_dir_all(&kept_target);
    if root.join("target").exists() {
        std::fs::rename(root.join("target"), &kept_target).unwrap();
    }
    let _ = std::fs::remove_dir_all(&root);

    let blocks = readme_blocks();
    let shell = blocks
        .iter()
        .find(|b| b.lang == "sh" && b.text.contains("cargo new"))
        .expect("the README's commands that make a workspace");
    let mut sh = user_command("bash", &parent);
    sh.args(["-euc", &shell.text]);
    run(sh, "the README's commands");
    if kept_target.exists() {
        std::fs::rename(&kept_target, root.join("target")).unwrap();
    }

    let clone = repo().display().to_string();
    let mut written = Vec::new();
    for block in &blocks {
        let file = match block.lang.as_str() {
            "toml" => file_of(block, "#"),
            "rust" => file_of(block, "//"),
            _ => None,
        };
        let Some(file) = file else { continue };
        let path = root.join(&file);
        let text = block.text.replace("/path/to/hotreload", &clone);
        if block.lang == "toml" {
            merge_manifest(&path, &text);
        } else {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        written.push(file);
    }
    for needed in [
        "game-logic/Cargo.toml",
        "game-logic/src/lib.rs",
        "host/Cargo.toml",
        "host/src/main.rs",
        "host/examples/watch.rs",
    ] {
        assert!(
            written.iter().any(|w| w == needed),
            "the README gives no `{needed}`; it gives {written:?}"
        );
    }
    // The versions this repository is tested with, rather than whatever was published today.
    std::fs::copy(repo().join("Cargo.lock"), root.join("Cargo.lock")).unwrap();
    std::fs::write(root.join("host/examples/measure.rs"), MEASURE).unwrap();
    root
}

/// Adds a snippet's tables to a manifest, as a user adds lines to what `cargo new` wrote.
fn merge_manifest(path: &Path, snippet: &str) {
    let mut manifest: toml::Table = std::fs::read_to_string(path)
        .unwrap_or_default()
        .parse()
        .unwrap();
    let snippet: toml::Table = snippet.parse().unwrap();
    for (key, value) in snippet {
        match (manifest.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(added)) => {
                existing.extend(added)
            }
            (_, value) => {
                manifest.insert(key, value);
            }
        }
    }
    std::fs::write(path, toml::to_string(&manifest).unwrap()).unwrap();
}

/// The test's own host (an example beside the README's): times `reload_module` of the
/// unchanged build 300 times, then a reload of a changed build each time it reads `reload`.
const MEASURE: &str = r#"
use std::io::BufRead;
use std::time::Instant;

use game_logic::GameLogic;
use hotreload::HotReloader;

fn main() {
    let reloader = HotReloader::new();
    let _game = reloader.register::<GameLogic>().expect("register");
    let mut unchanged: Vec<u128> = (0..300)
        .map(|_| {
            let start = Instant::now();
            let report = reloader.reload_module("game_logic").expect("reload");
            let took = start.elapsed().as_nanos();
            assert!(report.unchanged, "the build did not change");
            took
        })
        .collect();
    unchanged.sort();
    println!(
        "unchanged median_ns={} max_ns={} samples={}",
        unchanged[unchanged.len() / 2],
        unchanged[unchanged.len() - 1],
        unchanged.len()
    );
    for line in std::io::stdin().lock().lines() {
        if line.expect("stdin") != "reload" {
            continue;
        }
        let start = Instant::now();
        let report = reloader.reload_module("game_logic").expect("reload");
        let took = start.elapsed();
        println!(
            "changed took_us={} bytes={} unchanged={} report={report}",
            took.as_micros(),
            report.to.artifact_len,
            u8::from(report.unchanged)
        );
    }
}
"#;

/// A running process whose stdout lines arrive on a channel; killed (with its children)
/// when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
    name: &'static str,
    seen: Vec<String>,
}

impl Running {
    fn start(mut command: Command, name: &'static str) -> Self {
        // Its own process group, so that `cargo run` and the host it runs stop together.
        command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            name,
            seen: Vec::new(),
        }
    }

    /// The next line that `matches`, within the deadline.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("   [{}] {line}", self.name);
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no {what} within {DEADLINE:?} (or it exited); its output:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// `frame 30: score 30` as (30, 30).
fn frame_and_score(line: &str) -> Option<(u64, i64)> {
    let rest = line.strip_prefix("frame ")?;
    let (frame, score) = rest.split_once(": score ")?;
    Some((frame.parse().ok()?, score.parse().ok()?))
}

/// `frame 31: reloaded load #1 -> load #2 in …` as 31. (A reload attempted while the linker
/// was still writing the library is refused, and costs a generation number: the new build
/// may be load #3 or later.)
fn reload_frame(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("frame ")?;
    let (frame, report) = rest.split_once(": reloaded ")?;
    report.starts_with("load #1 -> load #").then_some(())?;
    frame.parse().ok()
}

/// `key=value` in a line of the measuring host.
fn field(line: &str, key: &str) -> u128 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

fn edit(root: &Path, from: &str, to: &str) {
    let path = root.join("game-logic/src/lib.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "`{from}` is not in {}", path.display());
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn a_workspace_made_from_the_readme_runs_and_reloads_on_the_first_try() {
    let root = make_workspace();
    let mut build = user_command(cargo(), &root);
    build.args(["build", "--workspace", "--bins", "--examples"]);
    run(build, "cargo build of the README's workspace");

    // `cargo run -p host`, as the README says, and the test's measuring host beside it.
    let mut run_host = user_command(cargo(), &root);
    run_host.args(["run", "-p", "host"]);
    let mut host = Running::start(run_host, "host");
    let mut measure = Running::start(
        user_command(root.join("target/debug/examples/measure"), &root),
        "measure",
    );
    let (frame_before, score_before) =
        frame_and_score(&host.wait_for("a score", |l| frame_and_score(l).is_some())).unwrap();
    assert_eq!(score_before, frame_before as i64, "a point per frame");
    let unchanged = measure.wait_for("the unchanged reloads", |l| l.starts_with("unchanged "));

    // The edit the README suggests, and a build in "another terminal".
    edit(&root, "self.score += 1;", "self.score += 10;");
    let mut build_module = user_command(cargo(), &root);
    build_module.args(["build", "-p", "game-logic"]);
    run(build_module, "cargo build -p game-logic");

    let reloaded_at = reload_frame(&host.wait_for("the reload", |l| reload_frame(l).is_some()))
        .expect("reload frame");
    let (frame, score) = frame_and_score(&host.wait_for("a score after the reload", |l| {
        frame_and_score(l).is_some_and(|(f, _)| f > reloaded_at)
    }))
    .unwrap();
    // A point per frame up to the reload, ten per frame after it: the state came across.
    assert_eq!(
        score,
        reloaded_at as i64 + 10 * (frame - reloaded_at) as i64,
        "reloaded after frame {reloaded_at}"
    );

    // The measuring host reloads that build, then two more (edited back and forth), so that
    // one busy moment of a shared machine does not decide the figure: the best of three.
    let mut changed = Vec::new();
    for (from, to) in [("", ""), ("+= 10;", "+= 11;"), ("+= 11;", "+= 10;")] {
        if !from.is_empty() {
            edit(&root, from, to);
            let mut build_module = user_command(cargo(), &root);
            build_module.args(["build", "-p", "game-logic"]);
            run(build_module, "cargo build -p game-logic");
        }
        // The figure is the reload's, not the disk's: the gigabytes cargo has just written
        // are flushed first (the kernel's writeback threads otherwise take both cores of a
        // small machine for seconds, and a reload measured then took 120 to 240 ms).
        run(user_command("sync", &root), "sync");
        writeln!(measure.stdin(), "reload").unwrap();
        let line = measure.wait_for("a changed reload", |l| l.starts_with("changed "));
        assert_eq!(field(&line, "unchanged"), 0, "{line}");
        changed.push(line);
    }
    drop(host);
    drop(measure);

    let took: Vec<u128> = changed.iter().map(|l| field(l, "took_us")).collect();
    let best = *took.iter().min().unwrap();
    let bytes = field(&changed[0], "bytes");
    let unchanged_ns = field(&unchanged, "median_ns");
    eprintln!(
        "README workspace (debug, no profile settings): a changed {:.1} MB module reloaded in \
         {:?} µs (best {:.1} ms); an unchanged one in {:.1} µs (median of {} samples, largest \
         {:.1} µs)",
        bytes as f64 / 1e6,
        took,
        best as f64 / 1e3,
        unchanged_ns as f64 / 1e3,
        field(&unchanged, "samples"),
        field(&unchanged, "max_ns") as f64 / 1e3,
    );
    assert!(
        best < 100_000,
        "a changed build took {best} µs to reload at best: {changed:#?}"
    );
    assert!(
        unchanged_ns < 1_000_000,
        "an unchanged build took {unchanged_ns} ns: {unchanged}"
    );

    // `cargo run -p host --example watch`: save the module's source, and it rebuilds and
    // reloads by itself.
    let mut run_watch = user_command(cargo(), &root);
    run_watch.args(["run", "-p", "host", "--example", "watch"]);
    let mut watch = Running::start(run_watch, "watch");
    watch.wait_for("the first build", |l| l.contains("game_logic: built in"));
    let (frame_before, score_before) =
        frame_and_score(&watch.wait_for("a score", |l| frame_and_score(l).is_some())).unwrap();
    edit(&root, "self.score += 10;", "self.score += 100;");
    // The build watching began with may have replaced the library `cargo run` built (the host
    // builds the module with the runtime's feature on; the module alone, without it), and
    // that build reloads before the edit's build starts.
    watch.wait_for("the edit's build", |l| l.contains("game_logic: building"));
    watch.wait_for("the reload", |l| l.contains("game_logic: reloaded load #"));
    let (frame_one, score_one) =
        frame_and_score(&watch.wait_for("a score", |l| frame_and_score(l).is_some())).unwrap();
    let (frame_two, score_two) =
        frame_and_score(&watch.wait_for("a score", |l| frame_and_score(l).is_some())).unwrap();
    assert!(
        score_one >= score_before + 10 * (frame_one - frame_before) as i64,
        "state kept: {score_before} at frame {frame_before}, {score_one} at {frame_one}"
    );
    assert_eq!(
        score_two - score_one,
        100 * (frame_two - frame_one) as i64,
        "the rebuilt module counts a hundred per frame"
    );
}
