//! Helpers for starting the real certfleet binaries as processes and asking them things the
//! way an operator would: through the `certfleet` CLI.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/debug` (where cargo put this test binary's siblings).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Path of a workspace binary; fails clearly if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed on drop; its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn term(&mut self) -> Option<i32> {
        let _ = nix_kill(self.child.id(), "TERM");
        self.wait(Duration::from_secs(10))
    }

    /// Waits for exit; returns the code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn nix_kill(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
}

/// How long a dropped process gets to exit after SIGTERM before it is SIGKILLed.
const DROP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Proc {
    /// SIGTERM first, so a process with children of its own (`certfleet-sim vcsa-services`:
    /// slapd, postgres, the HTTPS listener) stops them instead of orphaning them; SIGKILL only
    /// if it has not exited within [`DROP_GRACE`].
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok()
            && self.wait(DROP_GRACE).is_some()
        {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller with its data directory, and the operator CLI pointed at it.
pub struct Controller {
    pub dir: PathBuf,
    pub addr: String,
    pub http: String,
    pub proc: Option<Proc>,
    pub extra: Vec<String>,
}

impl Controller {
    /// `certfleet init` + `certfleet serve` in `dir`.
    pub fn start(dir: &Path, extra: &[&str]) -> Controller {
        let out = Command::new(bin("certfleet"))
            .args(["init", "--data-dir"])
            .arg(dir.join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = Controller {
            dir: dir.to_path_buf(),
            addr: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            proc: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.serve();
        c
    }

    /// (Re)starts `certfleet serve` on the same addresses.
    pub fn serve(&mut self) {
        let mut cmd = Command::new(bin("certfleet"));
        cmd.args(["serve", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen", &self.addr, "--http", &self.http])
            .args(&self.extra);
        let n = std::fs::read_dir(&self.dir).unwrap().count();
        self.proc = Some(Proc::spawn(
            cmd,
            self.dir.join(format!("controller-{n}.log")),
        ));
        let http = self.http.clone();
        wait_for("controller /healthz", Duration::from_secs(20), || {
            http_get(&http, "/healthz").filter(|b| b.starts_with("ok"))
        });
        wait_for("controller gRPC", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&self.addr).ok().map(|_| ())
        });
    }

    pub fn admin(&self) -> PathBuf {
        self.dir.join("data/admin")
    }

    /// Runs the CLI as `identity`.
    pub fn cli_as(&self, identity: &Path, args: &[&str]) -> Output {
        Command::new(bin("certfleet"))
            .args(["--controller", &self.addr, "--identity"])
            .arg(identity)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// Runs the CLI as admin and returns stdout; panics with stderr on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_as(&self.admin(), args);
        assert!(
            out.status.success(),
            "certfleet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `-o json` output parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.cli(&a)).unwrap()
    }

    pub fn token(&self) -> String {
        self.cli(&["token", "create", "--ttl", "10m"])
            .trim()
            .to_owned()
    }

    /// Enrolls an agent named `name` with state in `dir/<name>`; returns its state dir.
    pub fn enroll(&self, name: &str) -> PathBuf {
        let state = self.dir.join(format!("agent-{name}"));
        let out = Command::new(bin("certfleet-agent"))
            .args([
                "enroll",
                "--controller",
                &self.addr,
                "--token",
                &self.token(),
                "--name",
                name,
                "--state-dir",
            ])
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        state
    }

    /// Starts `certfleet-agent run` for an enrolled state dir.
    pub fn run_agent(&self, state: &Path, config: Option<&Path>, extra: &[&str]) -> Proc {
        self.run_agent_env(state, config, extra, &[])
    }

    /// [`Controller::run_agent`] with extra environment (e.g. `CERTFLEET_TEST_CRASH_AT`).
    pub fn run_agent_env(
        &self,
        state: &Path,
        config: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(bin("certfleet-agent"));
        cmd.args(["run", "--max-backoff", "2s", "--state-dir"])
            .arg(state)
            .args(extra)
            .envs(env.iter().copied());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let name = state.file_name().unwrap().to_string_lossy().to_string();
        let n = std::fs::read_dir(&self.dir).unwrap().count();
        Proc::spawn(cmd, self.dir.join(format!("{name}-{n}.log")))
    }

    /// Agents as the CLI lists them.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        self.json(&["agents", "list"]).as_array().unwrap().clone()
    }

    /// Waits until `n` agents are connected.
    pub fn wait_connected(&self, n: usize) {
        wait_for(
            &format!("{n} connected agents"),
            Duration::from_secs(30),
            || {
                let c = self
                    .agents()
                    .iter()
                    .filter(|a| a["connected"] == true)
                    .count();
                (c == n).then_some(())
            },
        );
    }

    /// Scrapes /metrics.
    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics").unwrap_or_default()
    }
}

/// A plain HTTP/1.0 GET; the body on a 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}
