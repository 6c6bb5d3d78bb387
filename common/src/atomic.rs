//! Crash-safe file replacement.
//!
//! Every certificate, key and state file certfleet writes goes through [`write_file`]: the bytes
//! go to a temporary file in the same directory, created with the final mode (so a key is never
//! readable by others, not even for a moment), are fsynced, renamed over the target and the
//! directory is fsynced. A reader sees the old file or the new one, never half of either; a
//! full disk leaves the old file untouched and names the path that could not be written.
//!
//! A replaced file keeps its owner, group and mode by default ([`Perms::Inherit`]): services
//! read certificates and keys under their own account (OVN's `ovsdb-server` reads
//! `ovn-ndb.key.nopass` as `openvswitch` through the file's group, mode 0640; VDSM reads
//! `vdsmkey.pem` as `vdsm:kvm`), and a replacement created `root:root 0600` locks them out at
//! their next restart. The mode a caller passes applies to new files only. A caller that must
//! set the mode or owner (restoring a backup, tightening a key) says so with [`Perms::Exact`].
//! Owner and group are set on the temporary file before the rename, so the replacement never
//! appears with the wrong owner.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// How [`write_file_with`] sets the owner, group and mode of the file it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perms {
    /// Keep the owner, group and mode of the file being replaced; a new file gets this mode
    /// and the writer's owner and group.
    Inherit(u32),
    /// Exactly this mode and, if given, this `(uid, gid)`, whatever the replaced file had.
    Exact {
        /// Mode bits.
        mode: u32,
        /// Owner and group; `None`: the writer's.
        owner: Option<(u32, u32)>,
    },
}

/// Atomically replaces `path` with `contents`. A replaced file keeps its owner, group and
/// mode; a new file is created with `mode` ([`Perms::Inherit`]).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    write_file_with(path, contents, Perms::Inherit(mode))
}

/// Atomically writes a secret (a private key, a password file, an LDIF carrying a key): always
/// mode 0600 and the writer's owner, whatever a file it replaces had. Secrets are never
/// [`Perms::Inherit`]ed: a stale world-readable file must not pass its mode on to a new secret.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    write_file_with(
        path,
        contents,
        Perms::Exact {
            mode: PRIVATE,
            owner: None,
        },
    )
}

/// Atomically replaces `path` with `contents`, with owner, group and mode as `perms` says.
pub fn write_file_with(path: &Path, contents: &[u8], perms: Perms) -> Result<(), WriteError> {
    let wrap = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    // What the file ends up with: the replaced file's (followed through a symlink, as the
    // service reading it sees it) or the caller's.
    let (mode, owner) = match perms {
        Perms::Exact { mode, owner } => (mode, owner),
        Perms::Inherit(mode) => match fs::metadata(path) {
            Ok(m) if m.is_file() => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
            Ok(_) => (mode, None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (mode, None),
            Err(e) => return Err(wrap(e)),
        },
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| wrap(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    // Unique per write, not only per process: two threads of one process replacing the same
    // file (the store's audit mark after concurrent flushes) must not rename each other's
    // temporary file away.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        // Created owner-only; the final mode is set after the owner (chown clears set-id
        // bits) and never exposes the bytes to more readers than the final file has.
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o700)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            let meta = f.metadata()?;
            if meta.uid() != uid || meta.gid() != gid {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
        }
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
    let wrap = |source| WriteError {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(wrap)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn threads_replacing_one_file_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("certfleet.audit-seq");
        std::thread::scope(|s| {
            for t in 0..8 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..200 {
                        write_file(p, format!("{t}-{i}\n").as_bytes(), PUBLIC)
                            .unwrap_or_else(|e| panic!("thread {t} write {i}: {e}"));
                    }
                });
            }
        });
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
    }

    #[test]
    fn a_secret_never_inherits_a_wider_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sso.pw");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_file(&p, b"one", PRIVATE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(mode_of(&p), 0o600);
        write_file_with(
            &p,
            b"two",
            Perms::Exact {
                mode: PUBLIC,
                owner: None,
            },
        )
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p), 0o644);
        // no temporary files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_replaced_file_keeps_its_owner_group_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ovn-ndb.key.nopass");
        fs::write(&p, b"old key").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        // As root, give it a group nobody else has (engine-setup's `chgrp openvswitch`);
        // otherwise keep the writer's own (only root may give files away).
        let want_gid = if nix::unistd::geteuid().is_root() {
            let gid = 4_242_424;
            std::os::unix::fs::chown(&p, None, Some(gid)).unwrap();
            gid
        } else {
            fs::metadata(&p).unwrap().gid()
        };
        let uid = fs::metadata(&p).unwrap().uid();
        // The caller asks for 0600 (a key): the replaced file's 0640 and group win.
        write_file(&p, b"new key", PRIVATE).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new key");
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.gid(), want_gid);
        assert_eq!(m.uid(), uid);
        // A new file gets the caller's mode.
        let q = dir.path().join("new.pem");
        write_file(&q, b"x", PRIVATE).unwrap();
        assert_eq!(mode_of(&q), 0o600);
        // Exact overrides what the old file had.
        write_file_with(
            &p,
            b"tight",
            Perms::Exact {
                mode: PRIVATE,
                owner: None,
            },
        )
        .unwrap();
        assert_eq!(mode_of(&p), 0o600);
    }

    #[test]
    fn a_symlinked_file_is_replaced_with_the_target_s_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("apache.key.nopass");
        fs::write(&target, b"k").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("ovn-ndb.key.nopass");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_file(&link, b"own key", PRIVATE).unwrap();
        assert!(
            !fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(mode_of(&link), 0o640);
        assert_eq!(fs::read(&target).unwrap(), b"k");
    }

    #[test]
    fn failure_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("cert.pem");
        let err = write_file(&p, b"x", PUBLIC).unwrap_err();
        assert!(err.to_string().contains("missing-dir/cert.pem"), "{err}");
    }
}
