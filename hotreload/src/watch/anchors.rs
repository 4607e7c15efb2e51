//! Which directories to watch so that every artifact is seen, even when its directory does
//! not exist yet or disappears: the artifact's directory if it exists, otherwise the deepest
//! ancestor that does, re-planned whenever a directory on the way is created or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Default)]
pub(crate) struct Anchors {
    /// Artifact path -> module.
    artifacts: BTreeMap<PathBuf, String>,
    /// Directories watched now (non-recursively).
    watched: BTreeSet<PathBuf>,
    /// Modules whose artifact's own directory is watched.
    reachable: BTreeSet<String>,
    /// Modules that became reachable in the last plan.
    newly: Vec<String>,
}

impl Anchors {
    /// Adds `module`'s artifact; false if it was known.
    pub(crate) fn add(&mut self, module: &str, artifact: &Path) -> bool {
        self.artifacts
            .insert(artifact.to_path_buf(), module.to_owned())
            .is_none()
    }

    /// The module whose artifact is at `path`.
    pub(crate) fn module_of(&self, path: &Path) -> Option<String> {
        self.artifacts.get(path).cloned()
    }

    /// Whether a change at `path` may change what must be watched: a watched directory, or a
    /// directory on the way to an artifact.
    pub(crate) fn concerns(&self, path: &Path) -> bool {
        self.watched.contains(path)
            || self
                .artifacts
                .keys()
                .any(|artifact| artifact != path && artifact.starts_with(path))
    }

    /// The directories to start and stop watching.
    pub(crate) fn plan(&mut self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut desired = BTreeSet::new();
        let mut reachable = BTreeSet::new();
        for (artifact, module) in &self.artifacts {
            let Some(dir) = artifact.parent() else {
                continue;
            };
            let anchor = dir.ancestors().find(|a| a.is_dir()).map(Path::to_path_buf);
            if let Some(anchor) = anchor {
                if anchor == dir {
                    reachable.insert(module.clone());
                }
                desired.insert(anchor);
            }
        }
        self.newly
            .extend(reachable.difference(&self.reachable).cloned());
        self.reachable = reachable;
        let add = desired.difference(&self.watched).cloned().collect();
        let remove = self.watched.difference(&desired).cloned().collect();
        (add, remove)
    }

    pub(crate) fn watched(&mut self, dir: PathBuf) {
        self.watched.insert(dir);
    }

    pub(crate) fn unwatched(&mut self, dir: &Path) {
        self.watched.remove(dir);
    }

    pub(crate) fn is_watched(&self, dir: &Path) -> bool {
        self.watched.contains(dir)
    }

    /// The modules whose artifact is in `dir` are no longer reachable (their directory's watch
    /// is gone), so that they are checked again once it is watched anew.
    pub(crate) fn forget_reachable(&mut self, dir: &Path) {
        let modules: Vec<String> = self
            .artifacts
            .iter()
            .filter(|(artifact, _)| artifact.parent() == Some(dir))
            .map(|(_, module)| module.clone())
            .collect();
        for module in modules {
            self.reachable.remove(&module);
        }
    }

    /// Modules whose directory became watchable in the last plan: their artifact may have
    /// appeared before the watch did.
    pub(crate) fn newly_reachable(&mut self) -> Vec<String> {
        std::mem::take(&mut self.newly)
    }
}

#[cfg(test)]
mod tests {
    use super::Anchors;

    #[test]
    fn a_missing_directory_is_watched_through_its_deepest_existing_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let artifact = root.path().join("a/b/libm.so");
        let mut anchors = Anchors::default();
        assert!(anchors.add("m", &artifact));
        let (add, remove) = anchors.plan();
        assert_eq!(add, [root.path().to_path_buf()]);
        assert!(remove.is_empty());
        anchors.watched(root.path().to_path_buf());
        assert!(anchors.newly_reachable().is_empty());
        assert!(anchors.concerns(&root.path().join("a")));

        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        let (add, remove) = anchors.plan();
        assert_eq!(add, [root.path().join("a/b")]);
        assert_eq!(remove, [root.path().to_path_buf()]);
        assert_eq!(anchors.newly_reachable(), ["m"]);
        assert_eq!(anchors.module_of(&artifact).as_deref(), Some("m"));
    }
}
