//! Checkpoints: checksummed safetensors files, written atomically.
//!
//! [`crate::MetaSGD::save_state`] and friends write the optimizer (and, with
//! [`crate::MetaSGD::save_state_with_tensors`], the caller's tensors in the
//! same file). [`Writer`] and [`Reader`] are the container underneath, public
//! for formats built on this one (the sharded checkpoints of
//! `metasgd-dist`, the meta-learner of `metasgd-meta`): every file they make
//! carries a CRC32C of its header and of each tensor, verified before
//! anything is decoded.

pub(crate) mod container;
mod files;
pub(crate) mod state;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use container::{FORMAT_VERSION, MAX_NAME_LEN, Reader, Writer, check_name, crc32c_hex};
pub use state::{Loaded, NamedTensors};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: to a fresh temporary file in the
/// same directory, synced, renamed over `path`, and the directory synced. A
/// process killed at any moment leaves either the previous file or the new
/// one, never a torn one; on failure the temporary file is removed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Staged::write(path, bytes)?.commit()
}

/// The first half of [`write_atomically`], for writers that must agree with
/// others before the commit (a distributed save): the new bytes are durable
/// in a temporary file beside `path`, and `path` is untouched until
/// [`Staged::commit`]. Dropped without a commit, the temporary file is
/// removed; a process killed before the commit leaves `path` as it was.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes and syncs `bytes` to a fresh temporary file beside `path`.
    pub fn write(path: &Path, bytes: &[u8]) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = path.file_name().ok_or_else(|| Error::Io {
            kind: std::io::ErrorKind::InvalidInput,
            message: format!("{}: not a file path", path.display()),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let staged = Self {
            tmp,
            path: path.to_path_buf(),
            dir,
            committed: false,
        };
        let written = (|| {
            let mut f = File::create_new(&staged.tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        // On error, `staged`'s drop removes the temporary file.
        written.map_err(|e| Error::io_at(path, &e))?;
        Ok(staged)
    }

    /// Renames the temporary file over the path and syncs the directory:
    /// the commit.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io_at(&self.path, &e))?;
        self.committed = true;
        sync_dir(&self.dir)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Makes the entries of `dir` (a rename, a new file) durable (a no-op
/// where directories cannot be synced this way, as on Windows).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io_at(dir, &e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a whole file, refusing one larger than `max` bytes before reading it.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io_at(path, &e))?
        .len();
    if len > max {
        return Err(Error::invalid_checkpoint(
            "file",
            format!(
                "{} is {len} bytes, more than the {max} allowed",
                path.display()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io_at(path, &e))
}

/// Adds the file's path to an [`Error::InvalidCheckpoint`]'s reason (other
/// errors pass unchanged): for every loader that reads a file.
pub fn at_path(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidCheckpoint { field, reason } => Error::InvalidCheckpoint {
            field,
            reason: format!("{reason} (in {})", path.display()),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_staged_file_replaces_the_old_one_only_at_the_commit() {
        let dir = std::env::temp_dir().join(format!("metasgd-staged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.safetensors");
        write_atomically(&path, b"old").unwrap();
        // Staged: the new bytes are in a temporary file, the old file stays.
        let staged = Staged::write(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(&dir).len(), 2);
        // Dropped without a commit: the temporary file goes, the old file stays.
        drop(staged);
        assert_eq!(entries(&dir), ["state.safetensors"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        // Committed: the new bytes, and nothing else in the directory.
        Staged::write(&path, b"new").unwrap().commit().unwrap();
        assert_eq!(entries(&dir), ["state.safetensors"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // A path that is not a file, a directory that does not exist: errors.
        assert!(Staged::write(Path::new("/"), b"x").is_err());
        assert!(Staged::write(&dir.join("missing/state"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
