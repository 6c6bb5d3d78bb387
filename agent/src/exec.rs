//! Running host tools (`vecs-cli`, `openssl`, `gkectl`, …) safely.
//!
//! A tool may hang, print megabytes, print non-UTF-8 or exit non-zero; each becomes a
//! [`ToolError`] that names the command line. Hung tools are killed after the timeout.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output is cut beyond this (a VECS dump of every store is well under it).
const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// What a tool printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// A tool could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started.
    #[error("`{cmd}`: cannot start: {source}")]
    Spawn {
        /// Command line.
        cmd: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than allowed and was killed.
    #[error("`{cmd}`: no answer after {secs}s; killed")]
    Timeout {
        /// Command line.
        cmd: String,
        /// Timeout.
        secs: u64,
    },
    /// Exit status was not success.
    #[error("`{cmd}`: exit code {code}: {stderr}")]
    Failed {
        /// Command line.
        cmd: String,
        /// Exit code, or -1 for a signal.
        code: i32,
        /// First line(s) of stderr (or stdout if stderr is empty).
        stderr: String,
    },
    /// Standard output was not UTF-8.
    #[error("`{cmd}`: output is not UTF-8 text (garbage from the tool?)")]
    NotUtf8 {
        /// Command line.
        cmd: String,
    },
}

/// Waits for `child` up to `timeout`; kills it then.
fn wait(
    child: &mut std::process::Child,
    cmd: &str,
    timeout: Duration,
) -> Result<std::process::ExitStatus, ToolError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout {
                    cmd: cmd.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(ToolError::Spawn {
                    cmd: cmd.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Runs a tool as [`run`] does, but with stdout and stderr into `log` (created 0600,
/// truncated) instead of pipes: a run outlives the agent (with `KillMode=process`), since a
/// broken pipe would kill it at its next line, and its output stays readable. Stdin is
/// closed. The output returned is the log's content (stderr empty); it is not required to
/// succeed.
pub fn run_to_file(
    program: &Path,
    args: &[&str],
    log: &Path,
    timeout: Duration,
) -> Result<ToolOutput, ToolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let cmd = command_line(program, args);
    let spawn = |source| ToolError::Spawn {
        cmd: format!("{cmd} > {}", log.display()),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .map_err(spawn)?;
    let err = file.try_clone().map_err(spawn)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .env("LC_ALL", "C")
        .spawn()
        .map_err(spawn)?;
    let status = wait(&mut child, &cmd, timeout)?;
    let text = std::fs::read(log).map_err(spawn)?;
    Ok(ToolOutput {
        code: status.code(),
        stdout: String::from_utf8_lossy(&text).into_owned(),
        stderr: String::new(),
    })
}

/// Renders a command line for messages.
pub fn command_line(program: &Path, args: &[&str]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Runs a tool to completion, with `stdin` fed if given; returns its output whatever the exit
/// code (see [`run_ok`] for "must succeed").
pub fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, ToolError> {
    run_in(program, args, stdin, timeout, None, &[])
}

/// [`run`] in working directory `cwd` (tools like `openssl ca` resolve config paths from it) with
/// extra environment variables (e.g. the `OVIRT_SAN` that oVirt's `cert.conf` reads through
/// `${ENV::…}`).
pub fn run_in(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> Result<ToolOutput, ToolError> {
    let cmd = command_line(program, args);
    let mut command = Command::new(program);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|source| ToolError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&data);
        });
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_OUTPUT as u64).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait(&mut child, &cmd, timeout)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let stdout = String::from_utf8(stdout).map_err(|_| ToolError::NotUtf8 { cmd: cmd.clone() })?;
    Ok(ToolOutput {
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs a tool that must exit 0.
pub fn run_ok(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<ToolOutput, ToolError> {
    run_ok_in(program, args, stdin, timeout, None, &[])
}

/// [`run_ok`] in working directory `cwd` with extra environment variables.
pub fn run_ok_in(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> Result<ToolOutput, ToolError> {
    let out = run_in(program, args, stdin, timeout, cwd, env)?;
    if out.code == Some(0) {
        return Ok(out);
    }
    let msg = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    Err(ToolError::Failed {
        cmd: command_line(program, args),
        code: out.code.unwrap_or(-1),
        stderr: msg.trim().lines().take(3).collect::<Vec<_>>().join(" / "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hung_tool_is_killed_and_named() {
        let e = run(
            Path::new("/bin/sleep"),
            &["30"],
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }));
        assert!(e.to_string().contains("/bin/sleep 30"), "{e}");
    }

    #[test]
    fn failure_carries_stderr_and_code() {
        let e = run_ok(
            Path::new("/bin/sh"),
            &["-c", "echo boom >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("exit code 3") && s.contains("boom"), "{s}");
    }

    #[test]
    fn non_utf8_output_is_an_error() {
        let e = run(
            Path::new("/bin/sh"),
            &["-c", "printf '\\377\\376'"],
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(e, ToolError::NotUtf8 { .. }), "{e}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run(
            Path::new("/nonexistent/vecs-cli"),
            &[],
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vecs-cli"), "{e}");
    }
}
