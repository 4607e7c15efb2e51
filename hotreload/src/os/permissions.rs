//! Whether a file may be loaded, checked as OpenSSH's `safe_path` checks key files.
//!
//! Trust model: loading a library runs its initialisers, so whoever can write a module's
//! library, or rename entries in any directory on the way to it, runs code in this process.
//! This check is the gate. The artifact is opened once (through symbolic links, to the real
//! file) and the open file itself is checked: a regular file, owned by this process's
//! effective user or root, writable by neither its group nor others. Then every directory
//! from the real file's own up to `/` (and, when the artifact's path is a symbolic link, every
//! directory from the link's own up to `/`) must be owned by the user or root and writable by
//! neither group nor others; the one exception is the `/tmp` convention: a directory others
//! may write is accepted when it has the sticky bit and belongs to root, since then nobody
//! else can rename or remove what the user put there. The bytes are copied from the
//! descriptor that was checked, so a file swapped in after the check is never the one loaded.

use std::fs;
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::HotError;
use crate::version::ArtifactIdentity;

/// Copies the artifact's bytes into `to`, from a descriptor whose file and directories were
/// found safe to load (the one way an artifact's bytes come into the runtime), and says which
/// file that was. Between two files, the copy stays in the kernel (`copy_file_range`).
#[cfg(unix)]
pub(crate) fn copy_trusted(
    module: &str,
    path: &Path,
    to: &mut fs::File,
) -> Result<Option<ArtifactIdentity>, HotError> {
    let me = effective_uid().map_err(|source| read_error(module, path, source))?;
    // A linker renaming its output into place can replace the file between the open and the
    // lookup of its real path; the new file is opened and checked from the start.
    for _ in 0..ATTEMPTS {
        if let Some(mut file) = open_checked(module, path, me)? {
            let identity = file.metadata().ok().and_then(|m| ArtifactIdentity::of(&m));
            io::copy(&mut file, to).map_err(|source| read_error(module, path, source))?;
            return Ok(identity);
        }
    }
    Err(read_error(
        module,
        path,
        io::Error::other(format!(
            "it was replaced {ATTEMPTS} times while its permissions were being checked; try \
             again once it stays in place"
        )),
    ))
}

/// Without Unix permissions there is nothing to check: the bytes as they are.
#[cfg(not(unix))]
pub(crate) fn copy_trusted(
    module: &str,
    path: &Path,
    to: &mut fs::File,
) -> Result<Option<ArtifactIdentity>, HotError> {
    let mut file = fs::File::open(path).map_err(|source| read_error(module, path, source))?;
    io::copy(&mut file, to).map_err(|source| read_error(module, path, source))?;
    Ok(None)
}

/// How many times a file replaced during its check is opened again.
#[cfg(unix)]
const ATTEMPTS: usize = 3;

fn read_error(module: &str, path: &Path, source: io::Error) -> HotError {
    match source.kind() {
        io::ErrorKind::NotFound => HotError::ArtifactNotFound {
            module: module.to_owned(),
            path: path.to_owned(),
        },
        _ => HotError::ReadArtifact {
            module: module.to_owned(),
            path: path.to_owned(),
            source: source.into(),
        },
    }
}

/// Opens `path` and checks the open file and every directory above its real path; `None`
/// when the path no longer names the file that was opened (replaced or removed meanwhile).
#[cfg(unix)]
fn open_checked(module: &str, path: &Path, me: u32) -> Result<Option<fs::File>, HotError> {
    let io_error = |source| read_error(module, path, source);
    let refuse = |reason: String| HotError::UnsafeArtifact {
        module: module.to_owned(),
        path: path.to_owned(),
        reason,
    };
    // Non-blocking: opening a FIFO (which anyone who can swap the path could put there)
    // would otherwise wait for a writer for ever; it changes nothing for a regular file. std
    // opens with O_CLOEXEC, so a build spawned meanwhile does not inherit the descriptor.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    let opened = file.metadata().map_err(io_error)?;
    let Some(real) = real_path(&file, path, &opened).map_err(io_error)? else {
        return Ok(None);
    };
    let via = if real == path {
        String::new()
    } else {
        format!("it resolves to {}; ", real.display())
    };
    if let Some(fault) = file_fault(&real, &opened, me) {
        return Err(refuse(format!("{via}{fault}")));
    }
    let dir = real.parent().unwrap_or(Path::new("/"));
    if let Some(fault) = unsafe_directory(dir, me).map_err(io_error)? {
        return Err(refuse(format!("{via}{fault}")));
    }
    if real != path {
        // Whoever may write a directory holding a link on the way can point it at another
        // file: each link's directories must be as safe as the file's.
        if let Some(fault) = unsafe_link(path, me).map_err(io_error)? {
            return Err(refuse(format!(
                "the link to it is in an unsafe place: {fault}"
            )));
        }
    }
    Ok(Some(file))
}

/// What makes a symbolic link on the way from `path` to its file unsafe, if anything: the
/// directories holding each link of the chain, up to `/`, are checked as the file's are.
#[cfg(unix)]
fn unsafe_link(path: &Path, me: u32) -> io::Result<Option<String>> {
    // The kernel follows at most 40 links; so does this walk.
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        if !fs::symlink_metadata(&current)?.file_type().is_symlink() {
            return Ok(None);
        }
        let dir = fs::canonicalize(current.parent().unwrap_or(Path::new("/")))?;
        if let Some(fault) = unsafe_directory(&dir, me)? {
            return Ok(Some(fault));
        }
        current = dir.join(fs::read_link(&current)?);
    }
    Ok(Some(format!(
        "{} goes through more than 40 symbolic links",
        path.display()
    )))
}

/// The path of the file open as `file`, found from the descriptor, and confirmed to name that
/// very file (same device and inode) now; `None` if it no longer does.
#[cfg(unix)]
fn real_path(
    file: &fs::File,
    path: &Path,
    opened: &fs::Metadata,
) -> io::Result<Option<std::path::PathBuf>> {
    use std::os::fd::AsRawFd;

    let from_descriptor = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let real = match from_descriptor {
        Ok(real) => real,
        // Without /proc the path is resolved again; the identity check below ties that
        // resolution to the open file.
        Err(_) => match fs::canonicalize(path) {
            Ok(real) => real,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        },
    };
    match fs::metadata(&real) {
        Ok(now) if now.dev() == opened.dev() && now.ino() == opened.ino() => Ok(Some(real)),
        Ok(_) => Ok(None),
        // Removed since it was opened: `/proc` then names it `<path> (deleted)`.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// What makes the open file unsafe to load, naming it and the command that fixes it.
#[cfg(unix)]
fn file_fault(real: &Path, meta: &fs::Metadata, me: u32) -> Option<String> {
    let shown = real.display();
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a device, FIFO or socket"
        };
        return Some(format!(
            "{shown} is {kind}, not a regular file; register the path of the built library"
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "{shown} belongs to user {}, neither this process's user ({me}) nor root; fix with \
             `chown {me} {shown}`",
            meta.uid()
        ));
    }
    writers(meta.mode()).map(|(who, chmod)| {
        format!("{shown} is writable by {who}; fix with `chmod {chmod} {shown}`")
    })
}

/// The first directory from `dir` up to `/` that others could use to replace what is in it,
/// described with the command that fixes it; `None` when every one is safe.
#[cfg(unix)]
pub(crate) fn unsafe_directory(dir: &Path, me: u32) -> io::Result<Option<String>> {
    for dir in dir.ancestors() {
        let meta = fs::symlink_metadata(dir)?;
        if let Some(fault) = directory_fault(dir, &meta, me) {
            return Ok(Some(fault));
        }
    }
    Ok(None)
}

#[cfg(unix)]
fn directory_fault(dir: &Path, meta: &fs::Metadata, me: u32) -> Option<String> {
    let shown = dir.display();
    if !meta.is_dir() {
        // A resolved path has no symbolic link in it unless one was swapped in meanwhile.
        return Some(format!(
            "{shown} is not a directory (it was replaced while being checked); try again"
        ));
    }
    let owner = meta.uid();
    let sticky = meta.mode() & 0o1000 != 0;
    const CONVENTION: &str = "a directory others may write is safe only with the sticky bit \
                              and owned by root, as /tmp is";
    match writers(meta.mode()) {
        Some(_) if sticky && owner == 0 => {}
        Some((who, chmod)) if sticky => {
            return Some(format!(
                "directory {shown} is writable by {who} and, though it has the sticky bit, \
                 belongs to user {owner}, not root ({CONVENTION}); fix with `chmod {chmod} \
                 {shown}`"
            ));
        }
        Some((who, chmod)) => {
            return Some(format!(
                "directory {shown} is writable by {who} and has no sticky bit ({CONVENTION}); \
                 fix with `chmod {chmod} {shown}`"
            ));
        }
        None => {}
    }
    (owner != me && owner != 0).then(|| {
        format!(
            "directory {shown} belongs to user {owner}, neither this process's user ({me}) nor \
             root; fix with `chown {me} {shown}`"
        )
    })
}

/// Who besides the owner may write, and the `chmod` argument that stops them.
#[cfg(unix)]
fn writers(mode: u32) -> Option<(&'static str, &'static str)> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => None,
        (true, false) => Some(("its group", "g-w")),
        (false, true) => Some(("every user", "o-w")),
        (true, true) => Some(("its group and every user", "go-w")),
    }
}

/// This process's effective user id.
#[cfg(unix)]
pub(crate) fn effective_uid() -> io::Result<u32> {
    match fs::read_to_string("/proc/self/status") {
        Ok(status) => status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "/proc/self/status names no effective user id",
                )
            }),
        // Without /proc: a new file belongs to the process's effective user (POSIX `open`).
        Err(_) => Ok(tempfile::tempfile()?.metadata()?.uid()),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::writers;

    #[test]
    fn group_and_other_write_bits_are_named_with_their_fix() {
        assert_eq!(writers(0o100755), None);
        assert_eq!(writers(0o100775), Some(("its group", "g-w")));
        assert_eq!(writers(0o100757), Some(("every user", "o-w")));
        assert_eq!(
            writers(0o041777),
            Some(("its group and every user", "go-w"))
        );
    }
}
