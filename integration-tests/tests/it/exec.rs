//! `certfleet exec` end to end, in one fleet (a controller, one agent with `[[exec.allow]]`
//! rules): output streamed while the command still runs and its exit code returned; a command
//! and an argument no rule allows refused by the agent, naming the rule; a viewer refused by
//! the controller; a command past its timeout killed with its whole process group; every call
//! in the audit with the digest of its output.

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

    // 3. A command no rule allows, and an argument its rule refuses: 3, naming the rules.
    let o = exec(&c.admin(), &["/bin/cat", "/etc/passwd"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(o.stdout.is_empty());
    assert!(
        err(&o).contains("no rule allows /bin/cat (rules: live, hang, unit-status)"),
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
    assert_eq!(ends.len(), 6, "{ends:#?}");
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
    find(&["rule=hang", "outcome=timed_out", "signal=9"]);
    let starts = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.exec.start")
        .count();
    assert_eq!(
        starts, 5,
        "every call sent to the agent is recorded before it is sent"
    );
}
