//! Backups taken before every replacement: `STATE_DIR/backups/<id>/` with the original bytes,
//! mode and owner of each file and a manifest. `certfleet-agent backups` lists them; a step's
//! own rollback and `plan rollback` restore them.
//!
//! A backup is never overwritten. Its copies are created exclusively (`O_EXCL`) under names
//! unique to the attempt, and the manifest is published last, by a hard link that fails if a
//! manifest already exists. A step that runs again after an interruption therefore finds the
//! backup its first attempt took (of the files as they were before the plan) and keeps it;
//! only a backup without a manifest (the first attempt died while copying, before it changed
//! anything) is taken again, next to the orphaned copies.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use certfleet_common::atomic::{PRIVATE, Perms, create_private_dir, write_file_with};
use serde::{Deserialize, Serialize};

use super::ActError;
use crate::state::StateDir;

/// One file in a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackedUpFile {
    /// Host path (as resolved under the root prefix).
    pub path: PathBuf,
    /// Whether it existed (a file that did not is removed on restore).
    pub existed: bool,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// SHA-256 of the content.
    pub sha256: String,
    /// Name of the copy inside the backup directory.
    pub stored: String,
}

/// A backup's manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Id (`<step id>`).
    pub id: String,
    /// Step that took it.
    pub step_id: String,
    /// When.
    pub created_at: i64,
    /// Files.
    pub files: Vec<BackedUpFile>,
}

fn root(state: &StateDir) -> PathBuf {
    state.path().join("backups")
}

/// Backs up `paths` for `step_id`; the backup is complete (fsynced) before this returns. If
/// the step already holds a complete backup (an interrupted attempt took it), that backup is
/// returned unchanged: it holds the files as they were before the step, which a second copy
/// (taken after the first attempt changed them) would not.
pub fn create(state: &StateDir, step_id: &str, paths: &[PathBuf]) -> Result<Manifest, ActError> {
    let id = step_id.to_owned();
    let dir = root(state).join(&id);
    if dir.join("manifest.json").exists() {
        let m = load(&dir)?;
        // The same files (a resumed step), or some of them (an action that calls another
        // within one step, e.g. ovirt.engine_reissue signing like ovirt.enroll_request): the
        // backup taken first holds them as they were before the step, so it stands.
        let covered = paths.iter().all(|p| m.files.iter().any(|f| f.path == *p));
        if !covered {
            return Err(ActError(format!(
                "backup {id} in {} holds other files than this step backs up; interrupted, needs operator",
                dir.display()
            )));
        }
        tracing::info!(backup = %id, "step already holds a backup of these files; keeping it");
        return Ok(m);
    }
    create_private_dir(&dir).map_err(|e| ActError(e.to_string()))?;
    // Unique to this attempt: a copy left by an attempt that died is never written over.
    let attempt = format!("{}-{}", std::process::id(), certfleet_common::model::now());
    let mut files = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let stored = format!("{i}.{attempt}.bin");
        match std::fs::metadata(p) {
            Ok(meta) => {
                let bytes = std::fs::read(p)
                    .map_err(|e| ActError(format!("backing up {}: {e}", p.display())))?;
                write_new(&dir.join(&stored), &bytes)?;
                files.push(BackedUpFile {
                    path: p.clone(),
                    existed: true,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    sha256: certfleet_common::pki::sha256_hex(&bytes),
                    stored,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                files.push(BackedUpFile {
                    path: p.clone(),
                    existed: false,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    sha256: String::new(),
                    stored,
                });
            }
            Err(e) => return Err(ActError(format!("backing up {}: {e}", p.display()))),
        }
    }
    let m = Manifest {
        id,
        step_id: step_id.to_owned(),
        created_at: certfleet_common::model::now(),
        files,
    };
    let json = serde_json::to_vec_pretty(&m).expect("serialize");
    let staged = dir.join(format!("manifest.{attempt}.json"));
    write_new(&staged, &json)?;
    let published = std::fs::hard_link(&staged, dir.join("manifest.json"));
    let _ = std::fs::remove_file(&staged);
    match published {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another hand published first: that backup stands, this one is dropped.
            return load(&dir);
        }
        Err(e) => {
            return Err(ActError(format!(
                "publishing backup manifest in {}: {e}",
                dir.display()
            )));
        }
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ActError(format!("syncing backup directory {}: {e}", dir.display())))?;
    Ok(m)
}

/// Creates `path` exclusively (fails if it exists), 0600, contents fsynced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ActError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let wrap = |e: std::io::Error| ActError(format!("writing backup copy {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(wrap)?;
    f.write_all(bytes).map_err(wrap)?;
    f.sync_all().map_err(wrap)
}

/// The manifest of `id`, if a complete backup with that id exists.
pub fn find(state: &StateDir, id: &str) -> Option<Manifest> {
    load(&root(state).join(id)).ok()
}

/// The bytes backup `m` keeps of `f` (checked against the manifest's SHA-256).
pub fn read_stored(state: &StateDir, m: &Manifest, f: &BackedUpFile) -> Result<Vec<u8>, ActError> {
    let p = root(state).join(&m.id).join(&f.stored);
    let bytes = std::fs::read(&p)
        .map_err(|e| ActError(format!("backup {}: {}: {e}", m.id, p.display())))?;
    if certfleet_common::pki::sha256_hex(&bytes) != f.sha256 {
        return Err(ActError(format!(
            "backup {}: copy of {} is damaged (checksum mismatch)",
            m.id,
            f.path.display()
        )));
    }
    Ok(bytes)
}

/// Restores a backup: every file back with its bytes, mode and owner; files that did not exist
/// are removed.
pub fn restore(state: &StateDir, id: &str) -> Result<Manifest, ActError> {
    let dir = root(state).join(id);
    let m = load(&dir)?;
    for f in &m.files {
        if f.existed {
            let bytes = std::fs::read(dir.join(&f.stored))
                .map_err(|e| ActError(format!("backup {id}: {e}")))?;
            if certfleet_common::pki::sha256_hex(&bytes) != f.sha256 {
                return Err(ActError(format!(
                    "backup {id}: copy of {} is damaged (checksum mismatch)",
                    f.path.display()
                )));
            }
            install(&f.path, &bytes, f.mode, Some((f.uid, f.gid)))?;
        } else if f.path.exists() {
            std::fs::remove_file(&f.path)
                .map_err(|e| ActError(format!("removing {}: {e}", f.path.display())))?;
        }
    }
    Ok(m)
}

fn load(dir: &Path) -> Result<Manifest, ActError> {
    let p = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&p).map_err(|e| ActError(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| ActError(format!("{}: {e}", p.display())))
}

/// Every backup, oldest first.
pub fn list(state: &StateDir) -> Vec<Manifest> {
    let mut v: Vec<Manifest> = std::fs::read_dir(root(state))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| load(&e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|m| m.created_at);
    v
}

/// Writes `bytes` to `path` atomically. With an owner: exactly `mode` and that owner (a
/// restore puts back what the backup recorded). Without: a replaced file keeps its owner,
/// group and mode, a new one gets `mode`.
pub fn install(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), ActError> {
    let perms = match owner {
        Some(_) => Perms::Exact { mode, owner },
        None => Perms::Inherit(mode),
    };
    write_file_with(path, bytes, perms).map_err(|e| ActError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn restore_puts_back_bytes_and_mode_and_removes_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir(dir.path().join("state"));
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        std::fs::write(&a, b"old").unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
        let m = create(&st, "p1-3", &[a.clone(), b.clone()]).unwrap();
        install(&a, b"new", 0o644, None).unwrap();
        install(&b, b"created", 0o644, None).unwrap();
        restore(&st, &m.id).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!b.exists());
        assert_eq!(list(&st).len(), 1);
    }

    #[test]
    fn a_second_backup_of_a_step_keeps_the_first_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir(dir.path().join("state"));
        let a = dir.path().join("a.pem");
        std::fs::write(&a, b"pre-plan").unwrap();
        create(&st, "p1-3", std::slice::from_ref(&a)).unwrap();
        // The first attempt replaced the file, then died; the step runs again.
        install(&a, b"new", 0o644, None).unwrap();
        let again = create(&st, "p1-3", std::slice::from_ref(&a)).unwrap();
        assert_eq!(
            again.files[0].sha256,
            certfleet_common::pki::sha256_hex(b"pre-plan")
        );
        restore(&st, "p1-3").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"pre-plan");
        // A backup that died before its manifest is taken again beside the orphan copy.
        let orphan = root(&st).join("p1-4");
        create_private_dir(&orphan).unwrap();
        std::fs::write(orphan.join("0.1-1.bin"), b"partial").unwrap();
        let m = create(&st, "p1-4", std::slice::from_ref(&a)).unwrap();
        assert_eq!(std::fs::read(orphan.join("0.1-1.bin")).unwrap(), b"partial");
        assert_ne!(m.files[0].stored, "0.1-1.bin");
        // Another set of files under the same id is refused, not merged; a subset is kept.
        let other = dir.path().join("b.pem");
        assert!(create(&st, "p1-4", &[a.clone(), other]).is_err());
        let b = create(&st, "p1-4", std::slice::from_ref(&a)).unwrap();
        assert_eq!(b.files.len(), 1);
    }
}
