//! Which registered module calls which, and which crates their sources share: from the
//! modules' declarations (`#[hot_module(uses = [...])]`, read from their serving builds) and
//! from cargo's metadata of their crates (path dependencies).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::module::ModuleCore;

/// The modules of a reloader and what they depend on: [`HotReloader::graph`].
///
/// [`HotReloader::graph`]: crate::HotReloader::graph
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModuleGraph {
    /// The registered modules (sorted by name), then the modules their builds call that are
    /// not registered, then the crates they depend on by path.
    pub nodes: Vec<GraphNode>,
    /// From the dependent to what it depends on, sorted.
    pub edges: Vec<GraphEdge>,
    /// What could not be read (a crate whose `cargo metadata` failed, say).
    pub notes: Vec<String>,
}

/// A module or crate of a [`ModuleGraph`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphNode {
    /// The module's name, or the crate's package name.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
}

/// What a [`GraphNode`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeKind {
    /// A registered module, with the load number of its serving build (`None` before one
    /// loaded).
    Module {
        /// The serving build's load number.
        generation: Option<u64>,
    },
    /// A module that a serving build calls but that is not registered: its calls fail with
    /// [`HotError::ImportUnavailable`](crate::HotError::ImportUnavailable) until it is.
    Missing,
    /// A crate that modules depend on by path, not a module itself: a change to it rebuilds
    /// them (with [`build_with_cargo`](crate::ModuleOptions::build_with_cargo), as one set).
    Crate,
}

/// An edge of a [`ModuleGraph`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub struct GraphEdge {
    /// The dependent.
    pub from: String,
    /// What it depends on.
    pub to: String,
    /// How.
    pub kind: EdgeKind,
}

/// How one node of a [`ModuleGraph`] depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EdgeKind {
    /// The serving build of `from` calls `to` (it names it in `uses = [...]`).
    Calls,
    /// The crate of `from` depends on the crate of `to` by path (from `cargo metadata`).
    PathDependency,
}

impl ModuleGraph {
    /// The modules whose serving builds call `module`, sorted.
    pub fn callers_of(&self, module: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|e| e.kind == EdgeKind::Calls && e.to == module)
            .map(|e| e.from.as_str())
            .collect()
    }

    /// The modules `module`'s serving build calls, sorted.
    pub fn callees_of(&self, module: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|e| e.kind == EdgeKind::Calls && e.from == module)
            .map(|e| e.to.as_str())
            .collect()
    }

    /// The graph in Graphviz DOT: modules as boxes (with their serving load number), missing
    /// modules in red, crates as dashed ellipses; calls as solid arrows, path dependencies as
    /// dashed ones. `dot -Tsvg` draws it.
    pub fn to_dot(&self) -> String {
        let mut dot = String::from("digraph modules {\n    rankdir=LR;\n");
        for node in &self.nodes {
            let attributes = match &node.kind {
                NodeKind::Module {
                    generation: Some(generation),
                } => format!("shape=box, label=\"{}\\nload #{generation}\"", node.name),
                NodeKind::Module { generation: None } => {
                    format!("shape=box, label=\"{}\\nnot loaded\"", node.name)
                }
                NodeKind::Missing => format!(
                    "shape=box, color=red, label=\"{}\\nnot registered\"",
                    node.name
                ),
                NodeKind::Crate => "shape=ellipse, style=dashed".to_owned(),
            };
            let _ = writeln!(dot, "    {:?} [{attributes}];", node.name);
        }
        for edge in &self.edges {
            let style = match edge.kind {
                EdgeKind::Calls => "label=\"calls\"",
                EdgeKind::PathDependency => "style=dashed, color=gray40",
            };
            let _ = writeln!(dot, "    {:?} -> {:?} [{style}];", edge.from, edge.to);
        }
        dot.push_str("}\n");
        dot
    }
}

/// The graph of `modules`.
pub(crate) fn of(modules: &[Arc<ModuleCore>]) -> ModuleGraph {
    let mut graph = ModuleGraph::default();
    let registered: BTreeSet<&str> = modules.iter().map(|c| c.spec.name.as_str()).collect();
    let mut missing = BTreeSet::new();
    let mut edges = BTreeSet::new();
    for core in modules {
        graph.nodes.push(GraphNode {
            name: core.spec.name.clone(),
            kind: NodeKind::Module {
                generation: core.version().map(|v| v.generation),
            },
        });
        if let Some(links) = core.access.serving_links() {
            for callee in links.callees() {
                if !registered.contains(callee) {
                    missing.insert(callee.to_owned());
                }
                edges.insert(edge(&core.spec.name, callee, EdgeKind::Calls));
            }
        }
    }
    graph
        .nodes
        .extend(missing.into_iter().map(|name| GraphNode {
            name,
            kind: NodeKind::Missing,
        }));
    let crates = path_dependencies(modules, &mut edges, &mut graph.notes);
    graph.nodes.extend(crates.into_iter().map(|name| GraphNode {
        name,
        kind: NodeKind::Crate,
    }));
    graph.edges = edges.into_iter().collect();
    graph
}

fn edge(from: &str, to: &str, kind: EdgeKind) -> GraphEdge {
    GraphEdge {
        from: from.to_owned(),
        to: to.to_owned(),
        kind,
    }
}

/// Adds the path dependencies of the modules' crates (and of the crates those reach by path,
/// within their workspaces) to `edges`; returns the crates that are not modules.
fn path_dependencies(
    modules: &[Arc<ModuleCore>],
    edges: &mut BTreeSet<GraphEdge>,
    notes: &mut Vec<String>,
) -> BTreeSet<String> {
    // Each workspace's packages, from one `cargo metadata --no-deps` per workspace.
    let mut packages: BTreeMap<PathBuf, cargo_metadata::Package> = BTreeMap::new();
    for core in modules {
        let manifest = core.spec.manifest_dir.join("Cargo.toml");
        let manifest = manifest.canonicalize().unwrap_or(manifest);
        if packages.contains_key(&manifest) {
            continue;
        }
        match cargo_metadata::MetadataCommand::new()
            .manifest_path(&manifest)
            .no_deps()
            .exec()
        {
            Ok(metadata) => {
                for package in metadata.packages {
                    let path = package.manifest_path.clone().into_std_path_buf();
                    packages.insert(path, package);
                }
            }
            Err(err) => notes.push(format!(
                "module `{}`: cargo metadata for {}: {err}",
                core.spec.name,
                manifest.display()
            )),
        }
    }
    // A crate directory's node: the module built from it, or its package name.
    let module_at = |dir: &Path| {
        modules
            .iter()
            .find(|core| same_dir(&core.spec.manifest_dir, dir))
            .map(|core| core.spec.name.clone())
    };
    let mut crates = BTreeSet::new();
    let mut todo: Vec<PathBuf> = modules
        .iter()
        .map(|core| core.spec.manifest_dir.clone())
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(dir) = todo.pop() {
        let dir = dir.canonicalize().unwrap_or(dir);
        if !seen.insert(dir.clone()) {
            continue;
        }
        let Some(package) = packages.get(&dir.join("Cargo.toml")) else {
            continue;
        };
        let from = module_at(&dir).unwrap_or_else(|| package.name.to_string());
        for dependency in &package.dependencies {
            let Some(path) = &dependency.path else {
                continue;
            };
            if FRAMEWORK.contains(&dependency.name.as_str()) {
                continue;
            }
            let path = path.clone().into_std_path_buf();
            let to = module_at(&path).unwrap_or_else(|| {
                crates.insert(dependency.name.clone());
                dependency.name.clone()
            });
            edges.insert(edge(&from, &to, EdgeKind::PathDependency));
            todo.push(path);
        }
    }
    crates
}

/// This framework's own crates: every module depends on them, so they are left out (they are
/// path dependencies only in this repository's own workspace).
const FRAMEWORK: [&str; 3] = ["hotreload", "hotreload-abi", "hotreload-macros"];

fn same_dir(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
}
