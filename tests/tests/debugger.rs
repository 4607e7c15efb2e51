//! gdb through reloads: a host (`debug_host`) runs under `gdb -batch` with a breakpoint on a
//! module method by name, loads one build of the counter fixture, calls the method, reloads
//! to a build whose method sits on other lines of another file, and calls it again. Each hit
//! must stop in the build serving then, and `bt` must name its file and line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hotreload::harness::{BuiltSets, SetBuilder};

const LIB: &str = "src/lib.rs";
const METHOD: &str = "    pub fn add(&mut self, n: i64) -> i64 {";

/// Lines inserted above `add` by the `moved` variants.
const MOVED_BY: usize = 7;

/// The counter built as `v1`, `moved` (`add` further down), and the same two with split
/// debug info packed into a `.dwp` beside the library. Built as a set, so that every build's
/// crate keeps the name `counter`, as successive builds of a user's module do (the symbol a
/// breakpoint names).
fn variants() -> &'static BuiltSets {
    static BUILT: OnceLock<BuiltSets> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
        let moved = format!("{}{METHOD}", "    // moved\n".repeat(MOVED_BY));
        let packed = "[profile.dev.package.hotreload-fixture-counter]\n\
                      split-debuginfo = \"packed\"\n\n[workspace]";
        SetBuilder::new([root.join("fixtures/counter")], work.join("debugger"))
            .lockfile(root.join("../Cargo.lock"))
            .target_dir(work.join("target"))
            .variant("v1", |v| v)
            .variant("moved", |v| v.edit("counter", LIB, METHOD, &moved))
            .variant("packed", |v| {
                v.edit("", "Cargo.toml", "[workspace]", packed)
            })
            .variant("packed_moved", |v| {
                v.edit("", "Cargo.toml", "[workspace]", packed)
                    .edit("counter", LIB, METHOD, &moved)
            })
            .build()
            .unwrap_or_else(|err| panic!("building the debugger variants failed: {err}"))
    })
}

/// The line of `add` in the original fixture.
fn add_line() -> usize {
    let source = include_str!("../fixtures/counter/src/lib.rs");
    source
        .lines()
        .position(|line| line == METHOD)
        .expect("`add` in the fixture")
        + 1
}

/// Runs `gdb -batch` with `commands` on `debug_host` with `args`; kills it and fails with its
/// output after `deadline`.
fn gdb(commands: &[&str], args: &[&std::ffi::OsStr], deadline: Duration) -> String {
    let mut command = Command::new("gdb");
    command.args(["-batch", "-nx"]);
    for c in commands {
        command.arg("-ex").arg(c);
    }
    command
        .arg("--args")
        .arg(env!("CARGO_BIN_EXE_debug_host"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("gdb runs (is it installed?)");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for gdb") {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}\n--- stderr ---\n{}",
        out.join().unwrap(),
        err.join().unwrap()
    );
    match status {
        Some(status) => assert!(status.success(), "gdb failed ({status}):\n{output}"),
        None => panic!("gdb did not finish within {deadline:?}:\n{output}"),
    }
    output
}

fn build_dir(variant: &str) -> PathBuf {
    variants()
        .artifact(variant, "counter")
        .parent()
        .expect("the variant's directory")
        .to_path_buf()
}

/// Where `add` stops in `variant`'s source (its first statement, after the prologue):
/// `<variant>/counter/src/lib.rs:<line>`.
fn stop_in(variant: &str, moved: bool) -> String {
    let line = add_line() + 1 + if moved { MOVED_BY } else { 0 };
    format!("/{variant}/counter/src/lib.rs:{line}")
}

/// The gdb session every case runs: a pending breakpoint on `counter::Counter::add` by name,
/// `bt` at each hit, to the end.
const SESSION: &[&str] = &[
    "set breakpoint pending on",
    "set debuginfod enabled off",
    "set startup-with-shell off",
    "set filename-display absolute",
    "set pagination off",
    "break counter::Counter::add",
    "run",
    "bt 2",
    "continue",
    "bt 2",
    "continue",
    "bt 2",
    "continue",
];

/// Runs `debug_host calls` under gdb with the builds in `dirs` (one call each) and checks
/// that the breakpoint stopped once per call, in the build serving then, at `stops[i]`, and
/// that `bt` names the same file and line.
fn breaks_in_each_build(dirs: &[PathBuf], stops: &[String]) -> String {
    assert_eq!(dirs.len(), stops.len());
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let artifact = sandbox.path().join("libcounter.so");
    let mut args = vec!["calls".as_ref(), artifact.as_os_str()];
    args.extend(dirs.iter().map(|d| d.as_os_str()));
    let started = Instant::now();
    let output = gdb(SESSION, &args, Duration::from_secs(180));
    eprintln!(
        "gdb session of {} builds: {:?}",
        dirs.len(),
        started.elapsed()
    );
    // `Breakpoint 1, counter::Counter::add (...) at <file>:<line>`, once per hit.
    let hits: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("Breakpoint 1") && line.contains(", counter::Counter::add ("))
        .collect();
    let frames: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("#0  counter::Counter::add"))
        .collect();
    let shown = || {
        output
            .lines()
            .filter(|l| !l.starts_with("During symbol reading"))
            .take(80)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(hits.len(), stops.len(), "one stop per call:\n{}", shown());
    assert_eq!(frames.len(), stops.len(), "one `bt` per stop:\n{}", shown());
    for (n, stop) in stops.iter().enumerate() {
        assert!(
            hits[n].ends_with(stop.as_str()),
            "stop {} is not at {stop}:\n{}",
            n + 1,
            shown()
        );
        assert!(
            frames[n].ends_with(stop.as_str()),
            "`bt` {} does not name {stop}:\n{}",
            n + 1,
            shown()
        );
    }
    for n in 1..=stops.len() {
        assert!(
            output.contains(&format!("call {n}: {n}")),
            "call {n} returned:\n{}",
            shown()
        );
    }
    assert!(
        output.contains("exited normally"),
        "the host ran to its end:\n{}",
        shown()
    );
    for broken in [
        "Cannot insert breakpoint",
        "Cannot access memory",
        "Could not find DWO",
    ] {
        assert!(
            !output.contains(broken),
            "gdb says `{broken}`:\n{}",
            shown()
        );
    }
    output
}

#[test]
fn a_breakpoint_by_name_stops_in_the_build_serving_at_each_call_across_reloads() {
    let output = breaks_in_each_build(
        &[build_dir("v1"), build_dir("moved"), build_dir("v1")],
        &[
            stop_in("v1", false),
            stop_in("moved", true),
            stop_in("v1", false),
        ],
    );
    // Replaced versions are closed at once: gdb saw them go, with the breakpoint set in them.
    assert!(
        output.contains("Temporarily disabling breakpoints for unloaded shared library")
            && output.contains("counter-1-libcounter.so"),
        "gdb saw the first version unloaded:\n{output}"
    );
}

#[test]
fn packed_split_debug_info_follows_the_shadow_copy() {
    for variant in ["packed", "packed_moved"] {
        let dwp = build_dir(variant).join("libcounter.so.dwp");
        assert!(dwp.is_file(), "{} was built", dwp.display());
    }
    breaks_in_each_build(
        &[
            build_dir("packed"),
            build_dir("packed_moved"),
            build_dir("packed"),
        ],
        &[
            stop_in("packed", false),
            stop_in("packed_moved", true),
            stop_in("packed", false),
        ],
    );
}

/// `variant`'s library with its debug info moved to `libcounter.debug` beside it, which a
/// `.gnu_debuglink` section names, in a directory of `parent`'s.
fn with_debuglink(variant: &str, parent: &Path) -> PathBuf {
    let dir = parent.join(variant);
    std::fs::create_dir_all(&dir).expect("a directory for the build");
    let library = variants().artifact(variant, "counter");
    let objcopy = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("objcopy")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("objcopy runs (binutils)");
        assert!(
            out.status.success(),
            "objcopy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    objcopy(&[
        "--only-keep-debug".as_ref(),
        library.as_os_str(),
        "libcounter.debug".as_ref(),
    ]);
    objcopy(&[
        "--strip-debug".as_ref(),
        "--add-gnu-debuglink=libcounter.debug".as_ref(),
        library.as_os_str(),
        "libcounter.so".as_ref(),
    ]);
    dir
}

#[test]
fn a_debuglink_file_follows_the_shadow_copy() {
    let split = tempfile::tempdir().expect("a temporary directory");
    let v1 = with_debuglink("v1", split.path());
    let moved = with_debuglink("moved", split.path());
    breaks_in_each_build(
        &[v1.clone(), moved, v1],
        &[
            stop_in("v1", false),
            stop_in("moved", true),
            stop_in("v1", false),
        ],
    );
}

/// Runs `debug_host panic` with the environment variable `backtrace` set to 1 (or neither
/// backtrace variable if `None`); its output.
fn panicking_host(variant: &str, backtrace: Option<&str>) -> String {
    let sandbox = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_debug_host"));
    command
        .arg("panic")
        .arg(sandbox.path().join("libcounter.so"))
        .arg(build_dir(variant))
        .env_remove("HOTRELOAD_BACKTRACE")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    if let Some(var) = backtrace {
        command.env(var, "1");
    }
    let out = command.output().expect("the host runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the host failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_panic_in_the_module_carries_a_backtrace_of_the_build_that_panicked() {
    let source = include_str!("../fixtures/counter/src/lib.rs");
    let panic_line = source
        .lines()
        .position(|line| line == "        panic!(\"{message}\")")
        .expect("`explode` in the fixture")
        + 1;
    let explode = format!("/moved/counter/src/lib.rs:{}", panic_line + MOVED_BY);
    let out = panicking_host("moved", Some("HOTRELOAD_BACKTRACE"));
    let (error, backtrace) = out.split_once("\nbacktrace:\n").expect("the host's report");
    assert_eq!(error.lines().count(), 1, "the error is one line: {error}");
    assert!(error.contains("exploding on purpose"), "{error}");
    assert!(
        backtrace.contains("counter::Counter::explode") && backtrace.contains(&explode),
        "with HOTRELOAD_BACKTRACE=1 the backtrace names `explode` at {explode}:\n{backtrace}"
    );
    assert!(
        backtrace
            .lines()
            .next()
            .is_some_and(|l| l.ends_with(": counter::Counter::explode")),
        "the backtrace starts at the frame that panicked, not in the panic hook:\n{backtrace}"
    );
    // RUST_BACKTRACE alone does not: resolving keeps the version's shadow copy mapped.
    for var in [None, Some("RUST_BACKTRACE")] {
        let out = panicking_host("moved", var);
        assert!(
            out.ends_with("backtrace:\n(none)\n"),
            "no backtrace unless asked:\n{out}"
        );
    }
}
