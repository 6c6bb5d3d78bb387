//! Crash-safe file replacement.
//!
//! Every certificate, key and state file certfleet writes goes through [`write_file`]: the bytes
//! go to a temporary file in the same directory, created with the final mode (so a key is never
//! readable by others, not even for a moment), are fsynced, renamed over the target and the
//! directory is fsynced. A reader sees the old file or the new one, never half of either; a
//! full disk leaves the old file untouched and names the path that could not be written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for private keys and anything else only the owner may read.
pub const PRIVATE: u32 = 0o600;
/// Mode for certificates and other public material.
pub const PUBLIC: u32 = 0o644;

/// A file could not be written safely.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    /// The file that was to be written.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// Atomically replaces `path` with `contents`, created with `mode`.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let wrap = |source| WriteError { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| wrap(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask at creation; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), WriteError> {
    let wrap = |source| WriteError { path: dir.to_path_buf(), source };
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(wrap)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_file(&p, b"one", PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_file(&p, b"two", PUBLIC).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        // no temporary files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("cert.pem");
        let err = write_file(&p, b"x", PUBLIC).unwrap_err();
        assert!(err.to_string().contains("missing-dir/cert.pem"), "{err}");
    }
}
