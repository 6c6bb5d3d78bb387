//! `certfleet exec` end to end, in one fleet (a controller, one agent with `[[exec.allow]]`
//! rules): output streamed while the command still runs and its exit code returned; a command
//! and an argument no rule allows refused by the agent, naming the rule; a viewer refused by
//! the controller; a command past its timeout killed with its whole process group; every call
//! in the audit with the digest of its output; a rule with `run_as` runs the command as that
//! user (`id -u` says so); an agent whose hello does not list the `exec` capability (an older
//! agent, played by a loadgen virtual agent) refused by the controller at once, naming it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Controller, bin};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Gone, or a zombie waiting for its reaper (it runs no more).
fn process_gone(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.contains(") Z ")
}

#[test]
fn exec_streams_refuses_by_rule_kills_at_timeout_and_audits() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (bin_dir, go, pids, root) = (t.join("bin"), t.join("go"), t.join("pids"), t.join("root"));
    for d in [&bin_dir, &go, &pids, &root] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Prints, then waits for the test to let it finish: the output must arrive before.
    script(
        &bin_dir.join("live.sh"),
        "echo \"started $1\"\necho 'to stderr' >&2\nwhile [ ! -e \"$1\" ]; do sleep 0.05; done\necho done\nexit \"$2\"",
    );
    // Ignores SIGTERM, with a child in its group: only the group's SIGKILL ends both.
    script(
        &bin_dir.join("hang.sh"),
        "trap '' TERM\nsleep 300 &\necho $! > \"$1\"\necho $$ >> \"$1\"\necho hanging\nwait",
    );
    let cfg = t.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"root = "{root}"
platforms = ["files"]

[[exec.allow]]
name = "live"
command = "{bin}/live.sh"
args = [{{ glob = "{go}/*" }}, {{ regex = "[0-9]{{1,3}}" }}]
timeout = "30s"

[[exec.allow]]
name = "hang"
command = "{bin}/hang.sh"
args = [{{ glob = "{pids}/*.pid" }}]
timeout = "10s"

[[exec.allow]]
name = "unit-status"
command = "/bin/echo"
args = ["status", {{ glob = "*.service" }}]

[[exec.allow]]
name = "whoami"
command = "/usr/bin/id"
args = ["-u"]
run_as = "nobody"
"#,
            root = root.display(),
            bin = bin_dir.display(),
            go = go.display(),
            pids = pids.display(),
        ),
    )
    .unwrap();
    let check = Command::new(bin("certfleet-agent"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config: {}{}",
        err(&check),
        String::from_utf8_lossy(&check.stdout)
    );

    let c = Controller::start(t, &[]);
    let state = c.enroll("host1");
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    let exec = |identity: &Path, argv: &[&str]| {
        let mut a = vec!["exec", "host1", "--"];
        a.extend(argv);
        c.cli_as(identity, &a)
    };

    // 1. Output streams while the command runs; its exit code comes back.
    let flag = go.join("flag");
    let mut live = Command::new(bin("certfleet"))
        .args(["--controller", &c.addr, "--identity"])
        .arg(c.admin())
        .args([
            "exec",
            "host1",
            "--",
            "live.sh",
            flag.to_str().unwrap(),
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(live.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, format!("started {}\n", flag.display()));
    assert!(
        live.try_wait().unwrap().is_none(),
        "the CLI ended before the command did"
    );
    std::fs::write(&flag, "go").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    live.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = live.wait().unwrap();
    assert_eq!(rest, "done\n");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("to stderr"), "{stderr}");

    // 2. Allowed by the program's file name; exit 0; output exactly the command's.
    let o = exec(&c.admin(), &["echo", "status", "sshd.service"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(o.stdout, b"status sshd.service\n");
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &o.stdout).as_ref());

    // 2b. `run_as`: the agent (root here) runs the command as the rule's user.
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    assert!(nobody.status.success());
    assert_ne!(nobody.stdout, b"0\n");
    let o = exec(&c.admin(), &["id", "-u"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&nobody.stdout),
        "`id -u` under rule whoami (run_as = nobody)"
    );

    // 3. A command no rule allows, and an argument its rule refuses: 3, naming the rules.
    let o = exec(&c.admin(), &["/bin/cat", "/etc/passwd"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(o.stdout.is_empty());
    assert!(
        err(&o).contains("no rule allows /bin/cat (rules: live, hang, unit-status, whoami)"),
        "{}",
        err(&o)
    );
    let o = exec(&c.admin(), &["/bin/echo", "restart", "sshd.service"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(
        err(&o).contains(
            "refused by rule \"unit-status\": argument 1 \"restart\" does not match \"status\""
        ),
        "{}",
        err(&o)
    );

    // 4. A viewer may not: the controller refuses (3) before the agent hears of it.
    let viewer = t.join("viewer");
    c.cli(&[
        "operators",
        "issue",
        "vic",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().unwrap(),
    ]);
    let o = exec(&viewer, &["echo", "status", "sshd.service"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(err(&o).contains("needs admin"), "{}", err(&o));
    assert!(o.stdout.is_empty());

    // 4b. An agent whose hello has no `exec` capability (older agent): the controller refuses
    //     at once (3), naming the agent, its version and what it can do, instead of sending the
    //     command into the void and waiting for the timeout and the grace.
    let old = OldAgent::start(&c, "old1");
    c.wait_connected(2);
    let started = Instant::now();
    let o = c.cli_as(
        &c.admin(),
        &[
            "exec",
            "old1",
            "--timeout",
            "20s",
            "--",
            "echo",
            "status",
            "x.service",
        ],
    );
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(
        err(&o).contains(&format!(
            "agent old1 ({}) version loadgen does not support remote commands: its hello lists capabilities [inventory, steps], without \"exec\"",
            old.id
        )),
        "{}",
        err(&o)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused only after {:?}",
        started.elapsed()
    );
    drop(old);

    // 5. Past its timeout (the operator's 1s, under the rule's 10s): its group is killed, TERM
    //    ignored or not, and the CLI says so (1).
    let pidfile = pids.join("h.pid");
    let started = Instant::now();
    let o = c.cli_as(
        &c.admin(),
        &[
            "exec",
            "host1",
            "--timeout",
            "1s",
            "--",
            "hang.sh",
            pidfile.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(
        err(&o).contains("ran past its timeout of 1s; its process group was killed"),
        "{}",
        err(&o)
    );
    assert_eq!(o.stdout, b"hanging\n");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let pid_list = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(pid_list.split_whitespace().count(), 2, "{pid_list}");
    for pid in pid_list.split_whitespace() {
        assert!(
            process_gone(pid),
            "process {pid} of the timed-out command still runs"
        );
    }

    // 6. The audit has every call: who, where, argv, rule, outcome, code, digest.
    let audit = c.json(&["audit"]);
    let ends: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.exec")
        .map(|e| {
            assert_eq!(
                e["actor"],
                if e["detail"].as_str().unwrap().contains("role viewer") {
                    "operator:vic"
                } else {
                    "operator:admin"
                }
            );
            e["detail"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ends.len(), 8, "{ends:#?}");
    let find = |needle: &[&str]| {
        ends.iter()
            .find(|d| needle.iter().all(|n| d.contains(n)))
            .unwrap_or_else(|| panic!("no audit entry with {needle:?} in {ends:#?}"))
            .clone()
    };
    find(&[
        "rule=live",
        "outcome=exited",
        "exit_code=3",
        "truncated=false",
    ]);
    find(&[
        "argv=[\"echo\",\"status\",\"sshd.service\"]",
        "rule=unit-status",
        "outcome=exited exit_code=0",
        &format!("output_bytes=20 output_sha256={digest} truncated=false"),
    ]);
    find(&[
        "argv=[\"/bin/cat\",\"/etc/passwd\"]",
        "rule=-",
        "outcome=refused",
    ]);
    find(&["\"restart\"", "rule=unit-status", "outcome=refused"]);
    find(&["refused: operator vic has role viewer"]);
    find(&[
        "argv=[\"id\",\"-u\"]",
        "rule=whoami",
        "outcome=exited exit_code=0",
    ]);
    find(&["refused: agent old1", "without \"exec\""]);
    find(&["rule=hang", "outcome=timed_out", "signal=9"]);
    let starts = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.exec.start")
        .count();
    assert_eq!(
        starts, 6,
        "every call sent to the agent is recorded before it is sent"
    );
}

/// A connected agent that speaks the link protocol but whose hello lists no `exec` capability
/// (as agents before remote commands did): a loadgen virtual agent. Stops when dropped.
pub(crate) struct OldAgent {
    /// Its agent id.
    pub id: String,
    stop: tokio::sync::watch::Sender<bool>,
    rt: Option<tokio::runtime::Runtime>,
}

impl OldAgent {
    /// Enrolls `name` at `c` with a fresh token and keeps it connected.
    pub(crate) fn start(c: &Controller, name: &str) -> OldAgent {
        use certfleet_integration_tests::loadgen;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(loadgen::enroll(&c.addr, &c.token(), name))
            .unwrap();
        let a = loadgen::VirtualAgent {
            index: 0,
            name: name.to_owned(),
            agent_id: e.agent_id.clone(),
            cert_pem: e.cert_pem,
            key_pem: e.key_pem,
            ca_pem: e.ca_pem,
            certificates: std::sync::Arc::new(vec![]),
            renewable: vec![],
            cas: vec![],
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        rt.spawn(loadgen::run(
            c.addr.clone(),
            a,
            std::sync::Arc::new(loadgen::FleetCounters::default()),
            stop_rx,
        ));
        OldAgent {
            id: e.agent_id,
            stop,
            rt: Some(rt),
        }
    }
}

impl Drop for OldAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
