// Build script shared by certfleet-agent and certfleet-controller (each crate's build.rs
// `include!`s this file): stamps the git commit into `--version`.
//
// Sets CERTFLEET_GIT_COMMIT for the crate: the CERTFLEET_GIT_COMMIT environment variable if set
// (builds from a source tarball), else `git rev-parse --short=12 HEAD` of the checkout, else
// "unknown" (no git, not a checkout). Re-runs when HEAD moves: it watches the worktree's HEAD
// and the branch ref it points to (loose or packed), so a commit re-stamps the next build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn watch(path: PathBuf) {
    // A path that does not exist would make cargo re-run this script on every build.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=CERTFLEET_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let commit = match std::env::var("CERTFLEET_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            let absolute = |p: String| {
                let p = PathBuf::from(p);
                if p.is_absolute() { p } else { dir.join(p) }
            };
            if let Some(git_dir) = git(&dir, &["rev-parse", "--git-dir"]).map(absolute) {
                let common = git(&dir, &["rev-parse", "--git-common-dir"])
                    .map(absolute)
                    .unwrap_or_else(|| git_dir.clone());
                watch(git_dir.join("HEAD"));
                if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                    watch(common.join(branch));
                }
                watch(common.join("packed-refs"));
            }
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=CERTFLEET_GIT_COMMIT={commit}");
}
