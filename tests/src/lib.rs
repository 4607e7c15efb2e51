//! Shared helpers for the integration tests: the fixture variants, built once per run with
//! cargo, and a sandbox per test holding the artifact path a module is registered at.

pub mod nats;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use counter::Counter;
use hotreload::harness::{BuiltVariants, Variant, VariantBuilder};
use hotreload::{HotReloader, Module, ModuleOptions};

/// The variants of `tests/fixtures/counter` the tests load, with the edits that make them.
fn counter_variants(builder: VariantBuilder) -> VariantBuilder {
    const LIB: &str = "src/lib.rs";
    builder
        .variant("v1", |v| v)
        .variant("v2", |v| {
            v.edit(LIB, "const FACTOR: i64 = 1;", "const FACTOR: i64 = 2;")
                .edit(LIB, "1 // TAG", "2 // TAG")
        })
        .variant("v2_field", |v| {
            v.edit(LIB, "// FIELDS", "#[serde(default = \"seven\")]\n    bonus: i64,")
                .edit(LIB, "-1, // EXTRA", "self.bonus, // EXTRA")
                .edit(LIB, "1 // TAG", "3 // TAG")
                .edit(LIB, "#[derive(Debug, Default, Serialize", "fn seven() -> i64 {\n    7\n}\n\n#[derive(Debug, Default, Serialize")
        })
        .variant("bad_signature", |v| {
            v.edit(
                LIB,
                "pub fn add(&mut self, n: i64) -> i64 {",
                "pub fn add(&mut self, n: f64) -> i64 {\n        let n = n as i64;",
            )
        })
        .variant("add_panics", |v| {
            v.edit(
                LIB,
                "pub fn add(&mut self, n: i64) -> i64 {",
                "pub fn add(&mut self, n: i64) -> i64 {\n        if n != 0 {\n            panic!(\"add fails on purpose\");\n        }",
            )
        })
        .variant("param_type_changed", |v| {
            v.edit(LIB, "sep: &str) -> String {", "sep: String) -> String {")
                .edit(LIB, "items.join(sep)", "items.join(&sep)")
        })
        .variant("param_added", |v| {
            v.edit(
                LIB,
                "pub fn add(&mut self, n: i64) -> i64 {",
                "pub fn add(&mut self, n: i64, times: i64) -> i64 {\n        let n = n * times;",
            )
        })
        .variant("tuple_changed", |v| v.edit(LIB, "text: (String, u8),", "text: (String, u16),"))
        .variant("return_changed", |v| {
            v.edit(LIB, "pub fn calls(&self) -> u64 {\n        self.calls", "pub fn calls(&self) -> u32 {\n        self.calls as u32")
        })
        .variant("method_renamed", |v| v.edit(LIB, "pub fn calls(&self)", "pub fn call_count(&self)"))
        .variant("api_v2", |v| v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 2,"))
        .variant("other_module", |v| {
            v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 1, name = \"other\",")
        })
        .variant("wrong_abi", |v| {
            // The real module under another name, and a descriptor for `counter` that claims
            // another framework ABI version.
            v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 1, name = \"counter_real\",")
                .edit(LIB, "// EXTRA_ITEMS", "#[unsafe(no_mangle)]\npub static hotreload_module__counter: hotreload::__private::DescriptorPrefix = hotreload::__private::DescriptorPrefix {\n    magic: hotreload::__private::DESCRIPTOR_MAGIC,\n    abi_version: 999,\n};")
        })
        .variant("short_descriptor", |v| {
            // A descriptor symbol with the right magic and ABI version but only the prefix's
            // size: reading a whole descriptor from it would read past the symbol.
            v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 1, name = \"counter_real\",")
                .edit(LIB, "// EXTRA_ITEMS", "#[unsafe(no_mangle)]\npub static hotreload_module__counter: hotreload::__private::DescriptorPrefix = hotreload::__private::DescriptorPrefix {\n    magic: hotreload::__private::DESCRIPTOR_MAGIC,\n    abi_version: hotreload::__private::ABI_VERSION,\n};")
        })
        .variant("bad_magic", |v| {
            v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 1, name = \"counter_real\",")
                .edit(LIB, "// EXTRA_ITEMS", "#[unsafe(no_mangle)]\npub static hotreload_module__counter: [u8; 64] = [0x5a; 64];")
        })
        .variant("unresolved_symbol", |v| {
            v.edit(
                LIB,
                "// EXTRA_ITEMS",
                "unsafe extern \"C\" {\n    fn hotreload_symbol_that_no_library_defines() -> u64;\n}\n\n#[unsafe(no_mangle)]\npub extern \"C\" fn counter_needs_a_missing_symbol() -> u64 {\n    // SAFETY: never called; its presence makes the library need the symbol.\n    unsafe { hotreload_symbol_that_no_library_defines() }\n}",
            )
        })
        .variant("ctor_panic", |v| {
            v.edit(LIB, "#[derive(Debug, Default, Serialize, Deserialize)]\npub struct Counter {", "#[derive(Debug, Serialize, Deserialize)]\npub struct Counter {")
                .edit(LIB, "// EXTRA_ITEMS", "impl Default for Counter {\n    fn default() -> Self {\n        panic!(\"the constructor fails on purpose\")\n    }\n}")
        })
        .variant("restore_error", |v| v.edit(LIB, "// FIELDS", "required: u8,"))
        .variant("divide_fails", |v| {
            // Fails one division in four (of a multiple of 4) that `v1` answers.
            v.edit(LIB, "a.checked_div(b)\n", "a.checked_div(b)\n            .filter(|_| a % 4 != 0)\n")
                .edit(LIB, "1 // TAG", "4 // TAG")
        })
        .variant("schema_v2", |v| {
            v.edit(LIB, "#[hot_module(version = 1,", "#[hot_module(version = 1, state_version = 2,")
        })
        .variant("panic_abort", |v| {
            v.edit(
                "Cargo.toml",
                "[workspace]",
                "[workspace]\n\n[profile.dev]\npanic = \"abort\"\n",
            )
        })
        .variant("restore_panic", |v| {
            v.edit(LIB, "// CALLS_ATTR", "#[serde(deserialize_with = \"explode_on_restore\")]")
                .edit(
                    LIB,
                    "#[derive(Debug, Default, Serialize",
                    "fn explode_on_restore<'de, D: serde::Deserializer<'de>>(_: D) -> Result<u64, D::Error> {\n    panic!(\"restore exploded on purpose\")\n}\n\n#[derive(Debug, Default, Serialize",
                )
        })
}

/// The fixture variants, built once per test process into `<target_tmpdir>/fixtures`.
///
/// Test binaries run one after another under `cargo test`; the second finds the build fresh.
pub fn variants(target_tmpdir: &str) -> &'static BuiltVariants {
    static BUILT: OnceLock<BuiltVariants> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let work = Path::new(target_tmpdir).join("fixtures");
        let builder = VariantBuilder::new(root.join("fixtures/counter"), &work)
            .lockfile(root.join("../Cargo.lock"))
            .target_dir(work.join("target"));
        counter_variants(builder)
            .build()
            .unwrap_or_else(|err| panic!("building the fixture variants failed: {err}"))
    })
}

/// The variants of `tests/fixtures/greeter`, built once per test process into
/// `<target_tmpdir>/fixtures/greeter`, beside the counter's and into the same target directory
/// (so the dependencies compile once): `v1`, and `v2` with another weight in `tally`.
pub fn greeter_variants(target_tmpdir: &str) -> &'static BuiltVariants {
    static BUILT: OnceLock<BuiltVariants> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let work = Path::new(target_tmpdir).join("fixtures");
        VariantBuilder::new(root.join("fixtures/greeter"), work.join("greeter"))
            .lockfile(root.join("../Cargo.lock"))
            .target_dir(work.join("target"))
            .variant("v1", |v| v)
            .variant("v2", |v| v.edit("src/lib.rs", "1 // WEIGHT", "2 // WEIGHT"))
            .build()
            .unwrap_or_else(|err| panic!("building the greeter variants failed: {err}"))
    })
}

/// `variants(env!("CARGO_TARGET_TMPDIR"))`, from an integration test.
#[macro_export]
macro_rules! variants {
    () => {
        $crate::variants(env!("CARGO_TARGET_TMPDIR"))
    };
}

/// The variants of `tests/fixtures/ledger`, built once per test process beside the counter's:
/// `v1`, `v2` and `v3` (one state schema each, with migrations up from every older one and a
/// way down from v3 to v2), `v2-fails` (its migration from v1 fails on more than two entries),
/// `v3-panics` (its migration from v2 panics on any entry), `v3-no-down` (no way down), and
/// the API changes of v1: `v1-grown` (two methods added, between the others) and
/// `v1-without-set-owner` (`set_owner` no longer exported).
pub fn ledger_variants(target_tmpdir: &str) -> &'static BuiltVariants {
    static BUILT: OnceLock<BuiltVariants> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let work = Path::new(target_tmpdir).join("fixtures");
        let schema = |v: Variant, file: &str| {
            v.edit(
                "src/lib.rs",
                "include!(\"v1.rs\"); // SCHEMA",
                &format!("include!(\"{file}\"); // SCHEMA"),
            )
        };
        VariantBuilder::new(root.join("fixtures/ledger"), work.join("ledger"))
            .lockfile(root.join("../Cargo.lock"))
            .target_dir(work.join("target"))
            .variant("v1", |v| v)
            .variant("v2", |v| schema(v, "v2.rs"))
            .variant("v3", |v| schema(v, "v3.rs"))
            .variant("v2-fails", |v| {
                schema(v, "v2.rs").edit(
                    "src/v2.rs",
                    "// MIGRATE_V1",
                    "if old.entries.len() > 2 { return Err(format!(\"{} entries: too many to \
                     convert\", old.entries.len())); }",
                )
            })
            .variant("v3-panics", |v| {
                schema(v, "v3.rs").edit(
                    "src/v3.rs",
                    "// MIGRATE_V2",
                    "if !old.entries.is_empty() { panic!(\"cannot convert {} entries\", \
                     old.entries.len()); }",
                )
            })
            .variant("v1-grown", |v| {
                v.edit(
                    "src/v1.rs",
                    "// MORE_METHODS",
                    "pub fn total(&self) -> i64 { self.entries.iter().sum() }\n\
                     pub fn clear(&mut self) { self.entries.clear(); }",
                )
            })
            .variant("v1-without-set-owner", |v| {
                v.edit(
                    "src/v1.rs",
                    "pub fn set_owner",
                    "#[allow(dead_code)] fn set_owner",
                )
            })
            .variant("v3-no-down", |v| {
                schema(v, "v3.rs").edit(
                    "src/v3.rs",
                    "#[migrate(to = 2)] // DOWN",
                    "#[allow(dead_code)]",
                )
            })
            .build()
            .unwrap_or_else(|err| panic!("building the ledger variants failed: {err}"))
    })
}

/// A private directory holding the path a module is registered at, and what was put there.
pub struct Sandbox {
    dir: tempfile::TempDir,
    variants: &'static BuiltVariants,
}

impl Sandbox {
    pub fn new(variants: &'static BuiltVariants) -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temporary directory"),
            variants,
        }
    }

    /// Where the module's artifact lives, as a build would put it.
    pub fn artifact(&self) -> PathBuf {
        self.dir.path().join("libcounter.so")
    }

    /// Puts a variant's library at the artifact path the way linkers do: write a new file,
    /// then rename it over the old one.
    pub fn install(&self, variant: &str) {
        hotreload::harness::install(self.variants.artifact(variant), &self.artifact())
            .expect("install a variant");
    }

    /// Puts arbitrary bytes at the artifact path (write, then rename).
    pub fn install_bytes(&self, bytes: &[u8]) {
        hotreload::harness::install_bytes(bytes, &self.artifact()).expect("install bytes");
    }

    /// The bytes of a built variant.
    pub fn variant_bytes(&self, variant: &str) -> Vec<u8> {
        std::fs::read(self.variants.artifact(variant)).expect("variant library")
    }

    /// A reloader with the counter registered from this sandbox, starting at `variant`.
    pub fn register(&self, variant: &str) -> (HotReloader, Module<Counter>) {
        self.register_with(variant, ModuleOptions::new())
    }

    /// As `register`, with `options` (their artifact path is this sandbox's).
    pub fn register_with(
        &self,
        variant: &str,
        options: ModuleOptions,
    ) -> (HotReloader, Module<Counter>) {
        self.install(variant);
        let reloader = HotReloader::new();
        let module = reloader
            .register_with::<Counter>(options.artifact(self.artifact()))
            .unwrap_or_else(|err| panic!("registering the counter failed: {err}"));
        (reloader, module)
    }
}

/// Waits for the first event that satisfies `matches`; returns it with every event before it.
///
/// # Panics
/// If no such event comes within `timeout` (the watcher would be broken).
pub fn wait_for(
    events: &std::sync::mpsc::Receiver<hotreload::Event>,
    timeout: std::time::Duration,
    what: &str,
    mut matches: impl FnMut(&hotreload::Event) -> bool,
) -> Vec<hotreload::Event> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                let done = matches(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("no event {what} within {timeout:?}; events seen: {seen:#?}"),
        }
    }
}

impl Sandbox {
    /// Where the module's artifact lives when it is in a subdirectory of the sandbox.
    pub fn nested_artifact(&self) -> PathBuf {
        self.dir.path().join("out/lib/libcounter.so")
    }

    /// The sandbox directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A copy of the fixture crates (`counter`, `greeter`, `shouter`, `shared`) as a workspace of
/// its own, to edit and build; built into the fixtures' target directory, where the
/// dependencies are compiled already.
pub struct FixtureWorkspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl FixtureWorkspace {
    /// Copies the crates to `<target_tmpdir>/workspace-copy` and builds them once.
    pub fn create(target_tmpdir: &str) -> Self {
        Self::create_with(
            target_tmpdir,
            "workspace-copy",
            &["counter", "greeter", "shouter", "shared"],
        )
    }

    /// Copies the fixture crates `crates` to `<target_tmpdir>/<dir>` as a workspace and builds
    /// them once.
    pub fn create_with(target_tmpdir: &str, dir: &str, crates: &[&str]) -> Self {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let hotreload = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hotreload")
            .canonicalize()
            .expect("hotreload crate");
        let root = Path::new(target_tmpdir).join(dir);
        let _ = std::fs::remove_dir_all(&root);
        for &krate in crates {
            let src = fixtures.join(krate);
            let dst = root.join(krate);
            std::fs::create_dir_all(dst.join("src")).unwrap();
            let manifest = std::fs::read_to_string(src.join("Cargo.toml")).unwrap();
            let manifest = manifest.replace(
                "path = \"../../../hotreload\"",
                &format!("path = {:?}", hotreload.display().to_string()),
            );
            std::fs::write(dst.join("Cargo.toml"), manifest).unwrap();
            std::fs::copy(src.join("src/lib.rs"), dst.join("src/lib.rs")).unwrap();
        }
        let members: Vec<String> = crates.iter().map(|krate| format!("{krate:?}")).collect();
        std::fs::write(
            root.join("Cargo.toml"),
            format!(
                "[workspace]\nresolver = \"3\"\nmembers = [{}]\n",
                members.join(", ")
            ),
        )
        .unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"),
            root.join("Cargo.lock"),
        )
        .unwrap();
        let workspace = FixtureWorkspace {
            target_dir: Path::new(target_tmpdir).join("fixtures/target"),
            root,
        };
        workspace.cargo_build(&["--workspace"]);
        workspace
    }

    /// Runs `cargo build --lib <args>` in the copy, into its target directory, as a user
    /// would; returns cargo's stderr.
    ///
    /// # Panics
    /// If the build fails.
    pub fn cargo_build(&self, args: &[&str]) -> String {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(["build", "--lib"])
            .args(args)
            .arg("--manifest-path")
            .arg(self.root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&self.target_dir)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("cargo");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "cargo build {args:?} of the fixture workspace failed:\n{stderr}"
        );
        stderr
    }

    /// The library cargo builds for `krate`.
    pub fn artifact(&self, krate: &str) -> PathBuf {
        self.target_dir
            .join("debug")
            .join(hotreload::library_file_name(krate))
    }

    /// The manifest of `krate` in the copy.
    pub fn manifest(&self, krate: &str) -> PathBuf {
        self.root.join(krate).join("Cargo.toml")
    }

    /// Replaces `from` by `to` in `krate`'s `src/lib.rs`, as an editor saving the file would.
    ///
    /// # Panics
    /// If `from` is not in the file: the edit would change nothing.
    pub fn edit(&self, krate: &str, from: &str, to: &str) {
        let path = self.root.join(krate).join("src/lib.rs");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "`{from}` is not in {}", path.display());
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }
}

/// The first load (v1) still serves, with the state it had (`before`): what every refused
/// reload must leave behind.
pub fn assert_v1_serves(module: &Module<Counter>, before: &counter::Snapshot) {
    assert_eq!(
        module.version().unwrap().generation,
        1,
        "still the first load"
    );
    assert_eq!(hotreload::hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(
        &hotreload::hot_fn!(module.snapshot()).unwrap(),
        before,
        "state unchanged"
    );
}

/// SHA-256 in lower-case hex, as the runtime reports digests.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Resident memory of this process, in kB.
pub fn resident_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Serialises the tests of one test binary that read process-wide counts (descriptors,
/// mappings, resident memory): hold the guard for the whole test.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many distinct shadow copies of `module`'s versions are mapped into this process (the
/// files under the directory of its serving version's copy, in `/proc/self/maps`).
pub fn mapped_shadow_copies<T: hotreload::HotModule>(module: &Module<T>) -> usize {
    let shadow = module.version().expect("loaded").shadow;
    let dir = shadow.parent().expect("shadow dir").to_path_buf();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let files: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.find('/').map(|i| &line[i..]))
        .filter(|path| Path::new(path.trim_end_matches(" (deleted)")).starts_with(&dir))
        .collect();
    files.len()
}

/// The crates of the module mesh: `physics`, `ai` (calls physics), `planner` (calls both) and
/// `pingpong` (two modules calling each other), over the plain crate `units`.
pub const MESH_CRATES: [&str; 5] = ["units", "physics", "ai", "planner", "pingpong"];

/// Builds of the module mesh, one library per crate per variant.
pub struct MeshBuilds {
    built: hotreload::harness::BuiltSets,
}

impl MeshBuilds {
    /// The library of `krate` in `variant`.
    pub fn artifact(&self, variant: &str, krate: &str) -> PathBuf {
        self.built.artifact(variant, krate).to_path_buf()
    }
}

/// The mesh's variants, built once per test process with cargo, each from a copy of the
/// crates (a module built against its callees' edited copies):
/// - `v1`: as the fixtures are;
/// - `tag2`: every module's `tag` says 2 (a body-only change);
/// - `substeps`: `physics::step` takes a second parameter (tag 3), and `ai` passes it;
/// - `restore_fails`: `physics` has a new field without a default (its restore fails);
/// - `gravity_mut`: `physics::gravity` takes `&mut self` (the same entry layout as `&self`).
pub fn mesh_builds(target_tmpdir: &str) -> &'static MeshBuilds {
    static BUILT: OnceLock<MeshBuilds> = OnceLock::new();
    BUILT.get_or_init(|| {
        const LIB: &str = "src/lib.rs";
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let crates = MESH_CRATES.map(|krate| root.join("fixtures").join(krate));
        let built =
            hotreload::harness::SetBuilder::new(crates, Path::new(target_tmpdir).join("mesh"))
                .lockfile(root.join("../Cargo.lock"))
                .target_dir(Path::new(target_tmpdir).join("fixtures/target"))
                .variant("v1", |v| v)
                .variant("tag2", |v| {
                    v.edit("physics", LIB, "1 // TAG", "2 // TAG")
                        .edit("ai", LIB, "1 // TAG", "2 // TAG")
                        .edit("planner", LIB, "1 /* TAG */", "2 /* TAG */")
                        .edit("pingpong", LIB, "1; // TAG", "2; // TAG")
                })
                .variant("substeps", |v| {
                    v.edit(
                        "physics",
                        LIB,
                        "pub fn step(&mut self, dt: f64) -> f64 {",
                        "pub fn step(&mut self, dt: f64, substeps: u32) -> f64 {\n        \
                     let dt = dt * f64::from(substeps) / f64::from(substeps);",
                    )
                    .edit("physics", LIB, "1 // TAG", "3 // TAG")
                    .edit("ai", LIB, "physics.step(dt)", "physics.step(dt, 4)")
                })
                .variant("restore_fails", |v| {
                    v.edit("physics", LIB, "    // FIELDS", "    required: u8,")
                })
                .variant("gravity_mut", |v| {
                    v.edit(
                        "physics",
                        LIB,
                        "pub fn gravity(&self) -> f64 {",
                        "pub fn gravity(&mut self) -> f64 {",
                    )
                })
                .build()
                .unwrap_or_else(|err| panic!("building the mesh variants failed: {err}"));
        MeshBuilds { built }
    })
}
