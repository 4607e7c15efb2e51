//! The reloader's private directory of shadow copies: where each version's library is copied
//! before it is opened.
//!
//! On Unix it is `<base>/hotreload-<uid>/<pid>-<start>-<pid namespace>-<random>`, where the
//! base is `$TMPDIR` if it is set; otherwise a memory filesystem if one is usable (the user's
//! `$XDG_RUNTIME_DIR`, else `/dev/shm`: mounted without `noexec`, with at least 1 GiB free),
//! so that copying a build never waits for the disk (on ext4, a 38 MB copy took 11 ms on a
//! quiet disk and over 130 ms while the writeback of a build was busy); otherwise the system's
//! temp dir. The
//! per-user parent is mode 0700 and must belong to the user; each reloader's directory is
//! 0700 too. The name is its owner's marker, made by the same `mkdir` as the directory (so
//! no directory is ever without one): the process id, the process's start time (field 22 of
//! `/proc/<pid>/stat`, so that a later process given the same pid is not taken for the owner)
//! and its pid namespace (a process in another container that shares the temp dir counts pids
//! differently, and is never judged by ours).
//!
//! A reloader removes its directory when the last version opened from it is gone. A process
//! that is killed (SIGKILL, or a SIGTERM it does not handle) leaves it behind, so a reloader
//! creating its own removes the siblings whose process has exited or whose pid now belongs to
//! a process that started at another time. A live process's directory, another namespace's,
//! or one whose name is not a marker, is never touched.

use std::path::Path;

use crate::error::HotError;

/// The reloader's private directory of shadow copies, removed when the last version opened
/// from it is gone.
pub(crate) struct ShadowDir(tempfile::TempDir);

impl ShadowDir {
    pub(crate) fn create() -> Result<Self, HotError> {
        imp::create().map(ShadowDir)
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

/// An I/O error naming the path it happened at.
fn shadow_error(path: &Path) -> impl FnOnce(std::io::Error) -> HotError + '_ {
    move |err| HotError::ShadowDir {
        source: std::io::Error::new(err.kind(), format!("{}: {err}", path.display())).into(),
    }
}

#[cfg(unix)]
mod imp {
    use std::fs;
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::shadow_error;
    use crate::error::HotError;
    use crate::os;

    pub(super) fn create() -> Result<tempfile::TempDir, HotError> {
        let parent = user_dir()?;
        let owner = Owner::current();
        // Without `/proc` the directory still names its pid, but carries no marker that
        // would let another reloader judge it, and this one judges none.
        let prefix = owner.map_or_else(|| format!("{}-", std::process::id()), |o| o.prefix());
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(shadow_error(&parent))?;
        // The umask may have taken bits away from the mode asked for.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(shadow_error(dir.path()))?;
        if let Some(owner) = owner {
            remove_abandoned(&parent, &owner);
        }
        Ok(dir)
    }

    /// Where shadow copies go: see the module documentation.
    fn base() -> PathBuf {
        if std::env::var_os("TMPDIR").is_some() {
            return std::env::temp_dir();
        }
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        runtime
            .into_iter()
            .chain([PathBuf::from("/dev/shm")])
            .find(|dir| in_memory_and_usable(dir))
            .unwrap_or_else(std::env::temp_dir)
    }

    /// Whether `dir` is on a memory filesystem that may hold libraries to run (not
    /// `noexec`) and has room for a few debug builds.
    fn in_memory_and_usable(dir: &Path) -> bool {
        const ROOM: u64 = 1 << 30;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: both calls take a NUL-terminated path and fill the struct given, which
        // is all-integer and valid zeroed.
        let (fs, vfs) = unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            let mut vfs: libc::statvfs = std::mem::zeroed();
            if libc::statfs(path.as_ptr(), &mut fs) != 0
                || libc::statvfs(path.as_ptr(), &mut vfs) != 0
            {
                return false;
            }
            (fs, vfs)
        };
        // The fields' integer types differ between targets: the casts are needed elsewhere.
        #[allow(clippy::unnecessary_cast)]
        let tmpfs = fs.f_type as i64 == libc::TMPFS_MAGIC as i64;
        let exec = vfs.f_flag & libc::ST_NOEXEC == 0;
        #[allow(clippy::unnecessary_cast)]
        let free = (vfs.f_bavail as u64).saturating_mul(vfs.f_frsize as u64);
        tmpfs && exec && free >= ROOM
    }

    /// `<base>/hotreload-<uid>`, made 0700 if it does not exist; refused if anyone but the
    /// user could enter it, or replace it.
    fn user_dir() -> Result<PathBuf, HotError> {
        let temp = base();
        let me = os::effective_uid().map_err(shadow_error(&temp))?;
        let temp = fs::canonicalize(&temp).map_err(shadow_error(&temp))?;
        let dir = temp.join(format!("hotreload-{me}"));
        let refuse = |reason: String| HotError::UnsafeShadowDir {
            path: dir.clone(),
            reason,
        };
        if let Some(fault) = os::unsafe_directory(&temp, me).map_err(shadow_error(&temp))? {
            return Err(refuse(fault));
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(shadow_error(&dir))?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(shadow_error(&dir)(err)),
        }
        let meta = fs::symlink_metadata(&dir).map_err(shadow_error(&dir))?;
        let shown = dir.display();
        let fault = if meta.file_type().is_symlink() || !meta.is_dir() {
            Some(format!(
                "it is not a directory but a link or file, which this user did not make; \
                 remove it with `rm {shown}`"
            ))
        } else if meta.uid() != me {
            Some(format!(
                "it belongs to user {}, not to this process's user ({me}); remove it with \
                 `rm -r {shown}`, or set TMPDIR to a directory of this user's",
                meta.uid()
            ))
        } else if meta.mode() & 0o077 != 0 {
            Some(format!(
                "its mode is {:o}: group or others may enter it; fix with `chmod 700 {shown}`",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        match fault {
            Some(reason) => Err(refuse(reason)),
            None => Ok(dir),
        }
    }

    /// Removes the shadow directories in `parent` that were left by processes of `me`'s pid
    /// namespace that no longer run.
    fn remove_abandoned(parent: &Path, me: &Owner) {
        let entries = match fs::read_dir(parent) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::debug!(dir = %parent.display(), "cannot list shadow directories: {err}");
                return;
            }
        };
        for entry in entries.flatten() {
            let Some(owner) = entry.file_name().to_str().and_then(Owner::parse) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || owner.pid_namespace != me.pid_namespace || !owner.is_gone() {
                continue;
            }
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => tracing::debug!(
                    dir = %path.display(),
                    pid = owner.pid,
                    "removed the shadow directory of a process that no longer runs"
                ),
                // Another reloader removed it first.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(
                    dir = %path.display(),
                    "cannot remove the shadow directory of a process that no longer runs: {err}"
                ),
            }
        }
    }

    /// Who made a shadow directory, as its name records it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Owner {
        pub pid: u32,
        /// Clock ticks from boot to the process's start.
        pub start: u64,
        /// The inode of the process's pid namespace.
        pub pid_namespace: u64,
    }

    impl Owner {
        /// This process; `None` without a `/proc` that counts pids as this process does.
        pub(super) fn current() -> Option<Owner> {
            let pid = std::process::id();
            let stat = fs::read_to_string("/proc/self/stat").ok()?;
            let (own_pid, _, start) = parse_stat(&stat)?;
            // A `/proc` of another pid namespace would judge other processes by wrong pids.
            if own_pid != pid {
                return None;
            }
            let namespace = fs::read_link("/proc/self/ns/pid").ok()?;
            let pid_namespace = namespace
                .to_str()?
                .strip_prefix("pid:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some(Owner {
                pid,
                start,
                pid_namespace,
            })
        }

        pub(super) fn prefix(&self) -> String {
            format!("{}-{}-{}-", self.pid, self.start, self.pid_namespace)
        }

        /// The owner a directory's name records; `None` for a name that is not a marker.
        pub(super) fn parse(name: &str) -> Option<Owner> {
            let mut parts = name.splitn(4, '-');
            let owner = Owner {
                pid: parts.next()?.parse().ok()?,
                start: parts.next()?.parse().ok()?,
                pid_namespace: parts.next()?.parse().ok()?,
            };
            parts.next().filter(|random| !random.is_empty())?;
            Some(owner)
        }

        /// Whether the process has exited (a zombie has) or its pid now belongs to a process
        /// that started at another time. When that cannot be told, it is taken to run.
        pub(super) fn is_gone(&self) -> bool {
            match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
                Ok(stat) => match parse_stat(&stat) {
                    Some((_, state, start)) => matches!(state, 'Z' | 'X') || start != self.start,
                    None => false,
                },
                Err(err) => err.kind() == io::ErrorKind::NotFound,
            }
        }
    }

    /// The pid, state and start time in a `/proc/<pid>/stat` line. The command name (field
    /// 2) is in parentheses and may itself contain spaces and parentheses: fields are
    /// counted from the last `)`.
    pub(super) fn parse_stat(stat: &str) -> Option<(u32, char, u64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let pid = head.split_once(' ')?.0.parse().ok()?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // Fields 4 to 21 lie between the state (3) and the start time (22).
        let start = fields.nth(18)?.parse().ok()?;
        Some((pid, state, start))
    }
}

#[cfg(not(unix))]
mod imp {
    use super::shadow_error;
    use crate::error::HotError;

    pub(super) fn create() -> Result<tempfile::TempDir, HotError> {
        let temp = std::env::temp_dir();
        tempfile::Builder::new()
            .prefix("hotreload-")
            .tempdir_in(&temp)
            .map_err(shadow_error(&temp))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::imp::{Owner, parse_stat};

    #[test]
    fn the_start_time_is_counted_from_the_last_parenthesis() {
        let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((4242, 'S', 987654)));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn only_a_whole_marker_names_an_owner() {
        assert_eq!(
            Owner::parse("4242-987654-4026531836-Ab3xYz"),
            Some(Owner {
                pid: 4242,
                start: 987654,
                pid_namespace: 4026531836
            })
        );
        for name in [
            "4242-Ab3xYz",
            "4242-987654-4026531836-",
            "x-1-2-y",
            ".tmp1234",
        ] {
            assert_eq!(Owner::parse(name), None, "{name}");
        }
    }

    #[test]
    fn this_process_reads_as_running_and_its_marker_round_trips() {
        let me = Owner::current().expect("/proc");
        assert!(!me.is_gone());
        assert_eq!(Owner::parse(&format!("{}xyz", me.prefix())), Some(me));
        let later = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(later.is_gone(), "same pid, another start time");
    }
}
