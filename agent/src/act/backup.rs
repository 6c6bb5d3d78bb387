//! Backups taken before every replacement: `STATE_DIR/backups/<id>/` with the original bytes,
//! mode and owner of each file and a manifest. `certfleet-agent backups` lists them; a step's
//! own rollback and `plan rollback` restore them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use certfleet_common::atomic::{PRIVATE, Perms, create_private_dir, write_file, write_file_with};
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

/// Backs up `paths` for `step_id`; the backup is complete (fsynced) before this returns.
pub fn create(state: &StateDir, step_id: &str, paths: &[PathBuf]) -> Result<Manifest, ActError> {
    let id = step_id.to_owned();
    let dir = root(state).join(&id);
    create_private_dir(&dir).map_err(|e| ActError(e.to_string()))?;
    let mut files = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let stored = format!("{i}.bin");
        match std::fs::metadata(p) {
            Ok(meta) => {
                let bytes = std::fs::read(p)
                    .map_err(|e| ActError(format!("backing up {}: {e}", p.display())))?;
                write_file(&dir.join(&stored), &bytes, PRIVATE)
                    .map_err(|e| ActError(e.to_string()))?;
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
    write_file(&dir.join("manifest.json"), &json, PRIVATE).map_err(|e| ActError(e.to_string()))?;
    Ok(m)
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
}
