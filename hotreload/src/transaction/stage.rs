//! Step 1: copy a complete artifact to a unique shadow path.
//!
//! Trust model: loading a library runs its initialisers, so the permission check here is the
//! gate. The artifact is opened once, and the open file and every directory above its real
//! path are checked as OpenSSH checks key files (see `os::permissions`): only this process's
//! user or root may have written it or may rename anything on the way to it, except in a
//! sticky directory owned by root such as `/tmp`. Its bytes are read from that same
//! descriptor into memory once; those very bytes are hashed, checked and written to the
//! shadow copy, so neither a file swapped in after the check nor a writer still busy with the
//! artifact can make us open something other than what was checked. [`ArtifactBytes`] are
//! only made by that read. The build output itself is never opened as a library: one mapped
//! from a file that the next build rewrites would fault (SIGBUS) on the next page it touches.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol};

use crate::ShadowDir;
use crate::error::HotError;
use crate::module::ModuleSpec;
use crate::os;
use crate::version::{ArtifactIdentity, ShadowFile};

/// An artifact's bytes with their digest, read once from a descriptor whose file and
/// directories passed the permission check: only [`read_artifact`] makes them.
pub(crate) struct ArtifactBytes {
    bytes: Vec<u8>,
    sha256: String,
    identity: Option<ArtifactIdentity>,
}

impl ArtifactBytes {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes, in hex.
    pub(crate) fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Stages the artifact's current bytes, or `read` when the caller has just read them (the
/// watcher does, to tell a complete file from one still being written).
pub(crate) fn stage(
    spec: &ModuleSpec,
    shadow: &ShadowDir,
    generation: u64,
    read: Option<ArtifactBytes>,
) -> Result<ShadowFile, HotError> {
    let artifact = &spec.artifact;
    let ArtifactBytes {
        bytes,
        sha256,
        identity,
    } = match read {
        Some(read) => read,
        None => read_artifact(spec)?,
    };
    if let Some(pinned) = &spec.pinned {
        if !pinned.iter().any(|p| p.eq_ignore_ascii_case(&sha256)) {
            return Err(HotError::NotPinned {
                module: spec.name.clone(),
                path: artifact.clone(),
                sha256,
            });
        }
    }
    let file = parse_library(&bytes).map_err(|reason| HotError::NotALibrary {
        module: spec.name.clone(),
        path: artifact.clone(),
        reason,
    })?;
    let descriptor_size = check_descriptor_symbol(&file, spec)?;
    let path = shadow_path(spec, shadow, generation);
    write_new(&path, &bytes).map_err(|source| HotError::Shadow {
        module: spec.name.clone(),
        path: path.clone(),
        source: source.into(),
    })?;
    tracing::debug!(shadow = %path.display(), len = bytes.len(), "staged");
    Ok(ShadowFile {
        path,
        artifact: artifact.clone(),
        len: bytes.len() as u64,
        sha256,
        descriptor_size,
        identity,
    })
}

/// The SHA-256 of `bytes`, in lower-case hex: how versions and artifacts are identified.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // ring's SHA-256 is assembly: about 1.4 GB/s here in a debug build as in a release one,
    // where a pure-Rust SHA-256 compiled without optimisation (a user's debug workspace)
    // hashes a 36 MB debug module in 1.3 s.
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The artifact's bytes, read once after its permissions were checked on the open file: the
/// one way an artifact's bytes come in.
pub(crate) fn read_artifact(spec: &ModuleSpec) -> Result<ArtifactBytes, HotError> {
    let (bytes, identity) = os::read_trusted(&spec.name, &spec.artifact)?;
    let sha256 = sha256_hex(&bytes);
    Ok(ArtifactBytes {
        bytes,
        sha256,
        identity,
    })
}

/// `<shadow dir>/<module>-<generation>-<artifact file name>`: unique per version.
pub(crate) fn shadow_path(spec: &ModuleSpec, shadow: &ShadowDir, generation: u64) -> PathBuf {
    let file_name = spec
        .artifact
        .file_name()
        .map_or_else(|| "module".into(), |n| n.to_string_lossy().into_owned());
    shadow
        .path()
        .join(format!("{}-{generation}-{file_name}", spec.name))
}

/// Writes a new file that only the owner can read, write or execute.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o700);
    let mut file = options.open(path)?;
    file.write_all(bytes)
}

/// Checks that `bytes` are a whole shared library for this machine, without loading it.
pub(crate) fn check_library(bytes: &[u8]) -> Result<(), String> {
    parse_library(bytes).map(|_| ())
}

/// As [`check_library`], keeping the parsed object for further checks.
fn parse_library(bytes: &[u8]) -> Result<object::File<'_>, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let file = object::File::parse(bytes).map_err(|e| format!("not an object file ({e})"))?;
    if file.kind() != ObjectKind::Dynamic {
        return Err(format!(
            "it is an object of kind {:?}, not a shared library",
            file.kind()
        ));
    }
    let expected = host_architecture();
    if file.architecture() != expected {
        return Err(format!(
            "it is built for {:?}, this host runs on {expected:?}",
            file.architecture()
        ));
    }
    // A truncated file can still have a valid header; every segment the loader would map
    // must lie within it.
    for segment in file.segments() {
        let (offset, size) = segment.file_range();
        if offset.saturating_add(size) > bytes.len() as u64 {
            return Err(format!(
                "it is truncated: a segment ends at byte {}, the file has {}",
                offset.saturating_add(size),
                bytes.len()
            ));
        }
    }
    Ok(file)
}

/// Checks, in the file's dynamic symbol table and before the library is ever opened (so none
/// of its initialisers run), that it exports this module's descriptor symbol, and that the
/// symbol is large enough to read the descriptor's fixed prefix from.
fn check_descriptor_symbol(file: &object::File<'_>, spec: &ModuleSpec) -> Result<u64, HotError> {
    let symbol = hotreload_abi::descriptor_symbol(&spec.name);
    let found = file
        .dynamic_symbols()
        .find(|s| s.name_bytes().ok() == Some(symbol.as_bytes()) && s.is_definition())
        .map(|s| s.size());
    match found {
        None => Err(HotError::NoDescriptor {
            module: spec.name.clone(),
            path: spec.artifact.clone(),
            symbol,
        }),
        Some(size) if size < std::mem::size_of::<hotreload_abi::DescriptorPrefix>() as u64 => {
            Err(HotError::NotALibrary {
                module: spec.name.clone(),
                path: spec.artifact.clone(),
                reason: format!("its `{symbol}` is {size} bytes, too small to be a descriptor"),
            })
        }
        Some(size) => Ok(size),
    }
}

fn host_architecture() -> object::Architecture {
    use object::Architecture as A;
    if cfg!(target_arch = "x86_64") {
        A::X86_64
    } else if cfg!(target_arch = "aarch64") {
        A::Aarch64
    } else if cfg!(target_arch = "x86") {
        A::I386
    } else if cfg!(target_arch = "arm") {
        A::Arm
    } else if cfg!(target_arch = "riscv64") {
        A::Riscv64
    } else {
        A::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::check_library;

    #[test]
    fn empty_and_random_files_are_refused() {
        assert_eq!(check_library(&[]).unwrap_err(), "the file is empty");
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(
            check_library(&random)
                .unwrap_err()
                .starts_with("not an object file")
        );
    }

    #[test]
    fn a_truncated_object_is_refused() {
        // The test binary is a position-independent ELF object like a shared library; the
        // loader itself refuses to open an executable, but a truncated one must not get there.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for len in [exe.len() / 2, exe.len() - 1, 64] {
            let err = check_library(&exe[..len]).unwrap_err();
            assert!(
                err.contains("truncated") || err.starts_with("not an object file"),
                "{len}: {err}"
            );
        }
    }
}
