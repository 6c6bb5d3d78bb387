//! The operator CLI as scripts see it, through the real binaries against one controller:
//! exit codes (usage 2, runtime 1, refusal 3, "nothing to renew" 0 or 5 on request), formats
//! refused rather than replaced, `--no-headers`, and tables without box drawing when piped.
//! Then, on one small fleet: `certfleet status`, unknown filter values refused with what is
//! valid, `plan watch` across a controller restart and replaying with the plan's own times,
//! logs as JSON lines and without colour when piped, and one sentence for each usual TLS
//! mistake (another fleet's CA, an address that is not TLS, an expired or not-yet-valid
//! operator certificate, an operator the controller does not know).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{Controller, Proc, bin, wait_for};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exit_codes_formats_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    c.wait_connected(0);

    // Usage: clap's own refusals, and a format a command cannot print.
    let o = c.cli_as(&c.admin(), &["agents", "list", "-o", "xml"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    let o = c.cli_as(&c.admin(), &["plan", "recipes", "--bogus"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    // An unknown recipe is the caller's mistake: 2, with the valid names.
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "no-such-recipe", "--dry-run"],
    );
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("files"), "{}", err(&o));

    // Nothing to renew (no agents): exit 0 with the reason on stderr, stdout empty for scripts;
    // --fail-if-nothing turns it into 5.
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "files", "--dry-run", "-o", "json"],
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(err(&o).contains("nothing to renew"), "{}", err(&o));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = c.cli_as(
        &c.admin(),
        &["plan", "create", "files", "--dry-run", "--fail-if-nothing"],
    );
    assert_eq!(code(&o), 5, "{}", err(&o));
    assert!(err(&o).contains("nothing to renew"), "{}", err(&o));

    // Refusal: a viewer may not create tokens (3), and says why.
    let viewer = tmp.path().join("viewer");
    c.cli(&[
        "operators",
        "issue",
        "vic",
        "--role",
        "viewer",
        "--out",
        viewer.to_str().unwrap(),
    ]);
    let o = c.cli_as(&viewer, &["token", "create", "--ttl", "1h"]);
    assert_eq!(code(&o), 3, "{}", err(&o));
    assert!(err(&o).contains("needs admin"), "{}", err(&o));

    // Every listing prints every format; csv without headers for scripts.
    c.cli(&["token", "create", "--ttl", "1h", "--label", "site=dc1"]);
    for f in ["table", "wide", "json", "yaml", "csv"] {
        let out = c.cli(&["token", "list", "-o", f]);
        assert!(!out.is_empty(), "token list -o {f} printed nothing");
        // Piped tables: no box drawing, no colour.
        assert!(!out.contains(['│', '─', '┌', '\x1b']), "-o {f}:\n{out}");
    }
    let csv = c.cli(&["token", "list", "-o", "csv"]);
    assert!(csv.starts_with("id,state,"), "{csv}");
    let bare = c.cli(&["token", "list", "-o", "csv", "--no-headers"]);
    assert_eq!(bare.lines().count(), csv.lines().count() - 1, "{bare}");
    assert!(bare.contains("site=dc1"), "{bare}");
    let table = c.cli(&["token", "list", "--no-headers"]);
    assert!(!table.contains("STATE"), "{table}");
    let yaml = c.cli(&["operators", "list", "-o", "yaml"]);
    assert!(yaml.contains("name: vic"), "{yaml}");

    // Runtime: nothing listens there (1).
    let o = std::process::Command::new(bin("certfleet"))
        .args(["--controller", "127.0.0.1:1", "--identity"])
        .arg(c.admin())
        .args(["agents", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", err(&o));
    assert!(err(&o).contains("127.0.0.1:1"), "{}", err(&o));
}

/// A copy of `from` (an identity directory) with some files taken from `other`.
fn mixed_identity(dir: &Path, from: &Path, other: &Path, take: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let src = if take.contains(&f) { other } else { from };
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

/// An operator identity for `name` signed by the controller's fleet CA, valid from `from` to
/// `until` (made with rcgen as the controller would, with dates it would never choose).
fn operator_identity(
    c: &Controller,
    dir: &Path,
    name: &str,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> PathBuf {
    let data = c.dir.join("data");
    let ca_pem = std::fs::read_to_string(data.join("ca/ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("ca/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://certfleet/operator/{name}")
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from;
    params.not_after = until;
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir.to_path_buf()
}

/// The CLI against `addr` as `identity`.
fn cli_at(addr: &str, identity: &Path, args: &[&str]) -> Output {
    Command::new(bin("certfleet"))
        .args(["--controller", addr, "--identity"])
        .arg(identity)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Asserts exit `want` and that stderr holds every piece of `says`.
fn refused(o: &Output, want: i32, says: &[&str]) -> String {
    let e = err(o);
    assert_eq!(code(o), want, "{e}");
    for s in says {
        assert!(e.contains(s), "{s:?} missing from: {e}");
    }
    assert_eq!(e.trim().lines().count(), 1, "one sentence expected: {e}");
    e
}

#[test]
fn status_filters_watch_logs_and_tls_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = crate::rotation::fleet(tmp.path(), 1, &["--log-format", "json"]);
    let admin = f.c.admin();

    // An agent that logs JSON lines, then goes away: `status` reports it missing.
    let ghost_state = f.c.enroll("ghost");
    let mut ghost = f.c.run_agent(&ghost_state, None, &["--log-format", "json"]);
    f.c.wait_connected(3);
    ghost.term();
    f.c.wait_connected(2);
    let log = ghost.log_text();
    assert!(!log.trim().is_empty());
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("agent log line {l:?}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
        assert!(!l.contains('\x1b'), "{l:?}");
    }

    // A plan waiting for approval, watched with a 1 s heartbeat from a second process.
    let plan = f.c.json(&[
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--require-approval",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let watch_log = tmp.path().join("watch.log");
    let mut watch = {
        let mut cmd = Command::new(bin("certfleet"));
        cmd.args(["--controller", &f.c.addr, "--identity"])
            .arg(&admin)
            .args([
                "plan",
                "watch",
                &id,
                "--heartbeat",
                "1s",
                "--reconnect-for",
                "60s",
            ]);
        Proc::spawn(cmd, watch_log.clone())
    };

    // status: the table, its JSON, and --check's exit code 7 (a missing agent, a plan waiting).
    let table = f.c.cli(&["status"]);
    for want in [
        "VERSION",
        "CERTIFICATE",
        "FLEET CA",
        "STORE",
        "ok",
        "AGENTS",
        "ghost",
    ] {
        assert!(table.contains(want), "{want:?} missing:\n{table}");
    }
    assert!(
        table
            .lines()
            .filter(|l| !l.starts_with("  - "))
            .all(|l| l.chars().count() <= 80),
        "{table}"
    );
    let st = f.c.json(&["status"]);
    assert_eq!(st["agents_connected"], 2, "{st}");
    assert_eq!(st["agents_missing"][0]["name"], "ghost", "{st}");
    assert!(
        st["agents_missing"][0]["last_seen"].as_str().unwrap().len() > 10,
        "{st}"
    );
    assert_eq!(st["plans_awaiting_approval"][0]["id"], id.as_str(), "{st}");
    assert_eq!(st["store_healthy"], true, "{st}");
    assert!(st["version"].as_str().unwrap().contains("commit"), "{st}");
    let ca_end = certfleet_common::model::parse_time(st["ca_not_after"].as_str().unwrap()).unwrap();
    let own_end =
        certfleet_common::model::parse_time(st["controller_cert_not_after"].as_str().unwrap())
            .unwrap();
    assert!(
        ca_end > own_end && own_end > certfleet_common::model::now(),
        "{st}"
    );
    assert_eq!(st["healthy"], false, "{st}");
    let o = f.c.cli_as(&admin, &["status", "--check"]);
    assert_eq!(code(&o), 7, "{}", err(&o));
    assert!(
        err(&o).contains("ghost") && err(&o).contains(&id),
        "{}",
        err(&o)
    );

    // Unknown filter values: refused (2) with what is valid, and the likely typo.
    let o = f.c.cli_as(&admin, &["inventory", "--platform", "vspere"]);
    refused(
        &o,
        2,
        &[
            "unknown --platform \"vspere\"",
            "did you mean \"vsphere\"",
            "ovirt",
        ],
    );
    let o =
        f.c.cli_as(&admin, &["inventory", "--role", "file.renewabel"]);
    assert_eq!(
        code(&o),
        0,
        "a configured role family is accepted: {}",
        err(&o)
    );
    let o =
        f.c.cli_as(&admin, &["inventory", "--role", "vsphere.machne_ssl"]);
    refused(
        &o,
        2,
        &["did you mean \"vsphere.machine_ssl\"", "file.renewable"],
    );
    let o = f.c.cli_as(&admin, &["inventory", "--agent", "ap1"]);
    refused(
        &o,
        2,
        &[
            "unknown --agent \"ap1\"",
            "did you mean \"app1\"",
            "ca-host",
            "ghost",
        ],
    );
    let o = f.c.cli_as(&admin, &["inventory", "--issued-by", "00ff"]);
    refused(
        &o,
        2,
        &[
            "unknown --issued-by \"00ff\"",
            "Corp Issuing CA",
            "inventory cas",
        ],
    );
    let dry = [
        "plan",
        "create",
        "files",
        "--expiring-within",
        "30d",
        "--dry-run",
    ];
    let o =
        f.c.cli_as(&admin, &[&dry[..], &["--param", "dayz=3"][..]].concat());
    refused(
        &o,
        2,
        &["--param of recipe files: \"dayz\"", "valid: take_over"],
    );
    let o =
        f.c.cli_as(&admin, &[&dry[..], &["--agent", "app2"][..]].concat());
    refused(
        &o,
        2,
        &["unknown --agent \"app2\"", "did you mean \"app1\""],
    );
    let o = f.c.cli_as(
        &admin,
        &[&dry[..], &["--role", "file.renewabel"][..]].concat(),
    );
    refused(
        &o,
        2,
        &[
            "unknown --role \"file.renewabel\"",
            "did you mean \"file.renewable\"",
        ],
    );
    let o = f.c.cli_as(
        &admin,
        &[
            "plan",
            "create",
            "kubeadm-certs",
            "--dry-run",
            "--param",
            "pod-start=60",
        ],
    );
    refused(&o, 2, &["did you mean \"pod_start\"", "poll"]);

    // The watcher's heartbeat while nothing changes; then the controller restarts under it.
    wait_for("a heartbeat line", Duration::from_secs(20), || {
        std::fs::read_to_string(&watch_log)
            .ok()
            .filter(|t| t.contains(&format!("plan {id} awaiting_approval: no step running")))
    });
    f.c.proc.as_mut().unwrap().term();
    f.c.serve();
    wait_for("the watcher to reconnect", Duration::from_secs(30), || {
        std::fs::read_to_string(&watch_log)
            .ok()
            .filter(|t| t.contains("reconnected to the controller"))
    });
    f.c.wait_connected(2);
    f.c.cli(&["plan", "approve", &id]);
    f.c.cli(&["plan", "run", &id]);
    assert_eq!(
        watch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        watch.log_text()
    );
    let text = watch.log_text();
    assert!(text.contains("lost the controller at"), "{text}");
    assert!(
        text.contains(&format!("plan {id} finished succeeded")),
        "{text}"
    );

    // Replay a second later: each transition carries the step's own time, not the replay's.
    std::thread::sleep(Duration::from_millis(1100));
    let replay = f.c.cli(&["plan", "watch", &id]);
    let shown = f.c.json(&["plan", "show", &id]);
    let steps = shown["steps"].as_array().unwrap();
    let lines: Vec<&str> = replay
        .lines()
        .filter(|l| l.contains(" succeeded ") && !l.starts_with(' ') && !l.starts_with("plan "))
        .collect();
    assert_eq!(lines.len(), steps.len(), "{replay}");
    for (s, line) in steps.iter().zip(lines) {
        let done = s["finished_at"].as_str().unwrap();
        assert!(
            line.starts_with(done) && line.contains(s["name"].as_str().unwrap()),
            "{line:?} should start with {done}\n{replay}"
        );
    }

    // The controller's own log: JSON lines, no escapes (also across its restart).
    for p in std::fs::read_dir(f.c.dir.clone()).unwrap().flatten() {
        let name = p.file_name().to_string_lossy().to_string();
        if !name.starts_with("controller-") {
            continue;
        }
        let text = std::fs::read_to_string(p.path()).unwrap();
        assert!(text.contains("\"serving\""), "{name}: {text}");
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l:?}: {e}"));
            assert!(v["timestamp"].is_string(), "{l}");
            assert!(!l.contains('\x1b'), "{l:?}");
        }
    }

    // Text logs piped (stderr not a terminal), NO_COLOR unset: no colour escapes.
    let other = tmp.path().join("other");
    let o = Command::new(bin("certfleet"))
        .args(["init", "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let plain_log = tmp.path().join("plain.log");
    let mut plain = Command::new(bin("certfleet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&other)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&plain_log).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for(
        "the second controller's log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&plain_log)
                .ok()
                .filter(|t| t.contains("serving"))
        },
    );
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(text.contains("INFO") && !text.contains('\x1b'), "{text:?}");

    // TLS mistakes, one sentence each naming the cause and the fix.
    // Another fleet's whole identity directory: the controller's certificate fails its CA.
    let wrong_ca = mixed_identity(
        &tmp.path().join("wrong-ca"),
        &other.join("admin"),
        &admin,
        &[],
    );
    let o = cli_at(&f.c.addr, &wrong_ca, &["agents", "list"]);
    refused(
        &o,
        1,
        &[&f.c.addr, "not signed by the CA in", "wrong-ca/ca.pem"],
    );
    // This fleet's CA with another fleet's operator certificate.
    let foreign = mixed_identity(
        &tmp.path().join("foreign"),
        &admin,
        &other.join("admin"),
        &["cert.pem", "key.pem"],
    );
    let o = cli_at(&f.c.addr, &foreign, &["agents", "list"]);
    refused(
        &o,
        1,
        &[
            "foreign/cert.pem was not issued by the CA in",
            "foreign/ca.pem",
        ],
    );
    let o = cli_at(&f.c.http, &admin, &["agents", "list"]);
    refused(&o, 1, &[&f.c.http, "not with TLS", "--controller"]);
    let plain_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain_tcp.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::Write;
        for s in plain_tcp.incoming().take(1).flatten() {
            let mut s = s;
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        }
    });
    let o = cli_at(&plain_addr, &admin, &["agents", "list"]);
    refused(&o, 1, &[&plain_addr, "not with TLS"]);
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let expired = operator_identity(
        &f.c,
        &tmp.path().join("expired"),
        "admin",
        now - day * 400,
        now - day * 35,
    );
    let o = cli_at(&f.c.addr, &expired, &["agents", "list"]);
    refused(&o, 1, &["expired/cert.pem expired on", "operators issue"]);
    let early = operator_identity(
        &f.c,
        &tmp.path().join("early"),
        "admin",
        now + day,
        now + day * 30,
    );
    let o = cli_at(&f.c.addr, &early, &["agents", "list"]);
    refused(
        &o,
        1,
        &["early/cert.pem is valid only from", "clock is behind"],
    );
    let stranger = operator_identity(
        &f.c,
        &tmp.path().join("stranger"),
        "mallory",
        now - day,
        now + day,
    );
    let o = cli_at(&f.c.addr, &stranger, &["agents", "list"]);
    refused(
        &o,
        3,
        &["knows no operator \"mallory\"", "operators issue mallory"],
    );
    drop(f.procs);
}

/// A context alone (no --controller, --identity or their environment variables) reaches the
/// controller and gives the listing its default format; a context that does not exist is
/// refused with the known ones (2). Then `certfleet-agent doctor` on an enrolled agent: the
/// controller reached with the agent's identity, the clock compared, and a state directory
/// opened to others reported with its fix (exit 7).
#[test]
fn contexts_and_agent_doctor() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Controller::start(tmp.path(), &[]);
    let config = tmp.path().join("client/config.toml");
    let bare = |args: &[&str]| {
        Command::new(bin("certfleet"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("CERTFLEET_CONTROLLER")
            .env_remove("CERTFLEET_IDENTITY")
            .env_remove("CERTFLEET_CONTEXT")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let admin = c.admin();
    let o = bare(&[
        "--controller",
        &c.addr,
        "--identity",
        admin.to_str().unwrap(),
        "context",
        "set",
        "lab",
        "--default-output",
        "json",
    ]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = bare(&["operators", "list"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let ops: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(ops[0]["name"], "admin", "{ops}");
    // A given -o wins over the context's default.
    let o = bare(&["operators", "list", "-o", "csv"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("name,"),
        "{}",
        err(&o)
    );
    let o = bare(&["--context", "prod", "operators", "list"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
    assert!(err(&o).contains("known: lab"), "{}", err(&o));

    let state = c.enroll("doc");
    let doctor = || {
        Command::new(bin("certfleet-agent"))
            .args(["doctor", "-o", "json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let o = doctor();
    let findings: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let find = |check: &str| -> serde_json::Value {
        findings
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no {check} finding: {findings:#}"))
    };
    assert_eq!(find("controller")["level"], "ok", "{findings:#}");
    assert!(
        find("controller")["detail"]
            .as_str()
            .unwrap()
            .contains(&c.addr)
    );
    let clock = find("clock");
    assert_eq!(clock["level"], "ok", "{findings:#}");
    assert!(
        clock["detail"].as_str().unwrap().contains("clock is"),
        "{clock}"
    );
    assert_eq!(find("certificate")["level"], "ok", "{findings:#}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = doctor();
    assert_eq!(code(&o), 7, "{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("chmod 700"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    // What each recipe this host takes part in needs: a [[renew]] whose key directory does
    // not exist keeps the files recipe from running (named, exit 7); created, it is ready.
    let host = tmp.path().join("doc-host");
    std::fs::create_dir_all(host.join("etc/app/tls")).unwrap();
    let cfg = host.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {:?}\nplatforms = [\"files\"]\n[tools]\nopenssl = \"/usr/bin/openssl\"\n\
             [[renew]]\ncert = \"/etc/app/tls/app.pem\"\nkey = \"/etc/app/private/app.key\"\nissuer = \"corp\"\n",
            host.display().to_string()
        ),
    )
    .unwrap();
    let recipe = |o: &std::process::Output| -> serde_json::Value {
        let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == "recipe")
            .cloned()
            .unwrap_or_else(|| panic!("no recipe finding: {all:#}"))
    };
    let with_cfg = || {
        Command::new(bin("certfleet-agent"))
            .args(["doctor", "-o", "json", "--no-controller", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let o = with_cfg();
    assert_eq!(code(&o), 7, "{}", String::from_utf8_lossy(&o.stdout));
    let r = recipe(&o);
    assert_eq!(r["level"], "fail", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains(
            "renew[0].key /etc/app/private/app.key: directory /etc/app/private does not exist"
        ),
        "{r}"
    );
    std::fs::create_dir_all(host.join("etc/app/private")).unwrap();
    let o = with_cfg();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        recipe(&o)["level"],
        "ok",
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
