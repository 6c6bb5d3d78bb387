//! Shell completions and man pages for `certfleet` and `certfleet-agent`, generated from their
//! clap definitions so they always match the flags. Both binaries expose them as
//! `completion bash|zsh|fish` (to stdout) and `man --out-dir DIR`; the packages ship what
//! `packaging/build-packages.sh` generates with them.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Shells a completion script is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash-completion (`/usr/share/bash-completion/completions/NAME`).
    Bash,
    /// zsh (`/usr/share/zsh/site-functions/_NAME`).
    Zsh,
    /// fish (`/usr/share/fish/vendor_completions.d/NAME.fish`).
    Fish,
}

/// Why completions or man pages could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ClidocError {
    /// The output directory could not be created or read.
    #[error("man page directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Rendering or writing the pages failed.
    #[error("writing man pages into {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the completion script to its output failed.
    #[error("writing the {shell:?} completion script")]
    Completion {
        shell: Shell,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the completion script of `cmd` for `shell` to `out`.
pub fn write_completion(
    cmd: &mut clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> Result<(), ClidocError> {
    let name = cmd.get_name().to_owned();
    let mut buf = Vec::new();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, cmd, &name, &mut buf),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, cmd, &name, &mut buf),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, cmd, &name, &mut buf),
    }
    out.write_all(&buf)
        .and_then(|()| out.flush())
        .map_err(|source| ClidocError::Completion { shell, source })
}

/// Writes one man page per command and subcommand of `cmd` into `dir` (`certfleet.1`,
/// `certfleet-plan.1`, `certfleet-plan-create.1`, ...) and returns their paths, sorted.
/// Idempotent: each page is rewritten whole from the definition; nothing else in `dir` is
/// touched.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ClidocError> {
    std::fs::create_dir_all(dir).map_err(|source| ClidocError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    // Built the way clap_mangen::generate_to builds it (no `help` pages), so the display names
    // below are the page names it writes.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect_pages(&cmd, dir, &mut pages);
    clap_mangen::generate_to(cmd, dir).map_err(|source| ClidocError::Write {
        path: dir.to_owned(),
        source,
    })?;
    pages.sort();
    Ok(pages)
}

/// The pages clap_mangen writes for a built command tree: one per visible command, named by
/// its display name (`certfleet-plan-create`).
fn collect_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    out.push(dir.join(format!("{name}.1")));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, dir, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("demo")
            .version("1.2.3 (commit abc)")
            .about("a demo")
            .subcommand(
                clap::Command::new("plan")
                    .about("plans")
                    .subcommand(clap::Command::new("create").arg(clap::Arg::new("recipe"))),
            )
            .subcommand(clap::Command::new("scan").arg(clap::Arg::new("root").long("root")))
    }

    #[test]
    fn completions_name_every_subcommand_and_flag() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completion(&mut sample(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("plan"), "{shell:?}: {text}");
            assert!(text.contains("create"), "{shell:?}: {text}");
            assert!(text.contains("root"), "{shell:?}: {text}");
        }
    }

    #[test]
    fn man_pages_one_per_command_with_version() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(sample(), dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["demo-plan-create.1", "demo-plan.1", "demo-scan.1", "demo.1"]
        );
        for p in &pages {
            assert!(p.is_file(), "{} not written", p.display());
        }
        let mut on_disk: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, pages, "the returned list is what was written");
        let top = std::fs::read_to_string(dir.path().join("demo.1")).unwrap();
        assert!(top.starts_with(".ie") || top.contains(".TH"), "{top}");
        assert!(top.contains("1.2.3"), "{top}");
    }

    #[test]
    fn unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = write_man_pages(sample(), &file.join("man")).unwrap_err();
        assert!(err.to_string().contains("a-file"), "{err}");
    }
}
