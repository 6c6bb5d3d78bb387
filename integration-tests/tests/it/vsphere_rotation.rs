//! vSphere rotation end to end: a simulated VCSA 7.0 (slapd vmdir, HTTPS listener, simulated
//! certool/vecs-cli/service-control) with an expired STS signing certificate and an expiring
//! Machine SSL certificate, a real controller and agent, plans made with the CLI. Results are
//! checked with the real `openssl`, the real `ldapsearch` (via the simulated login probe) and
//! the simulator state.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::vcsa::{
    self, Partner, Services, Vcsa, VcsaSpec, VcsaVersion,
};
use certfleet_integration_tests::sim::{Lifetime, SimHost};
use serde_json::Value;

use crate::support::{self, Controller, Proc, wait_for};

struct Setup {
    vcsa: Vcsa,
    services: Services,
    c: Controller,
    _agent: Proc,
    _dir: tempfile::TempDir,
}

fn setup(spec: VcsaSpec) -> Setup {
    vcsa::vmdir::require_slapd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(dir.path().join("vcsa"), support::bin("certfleet-sim")).unwrap();
    let vcsa = vcsa::build(&host, &spec).unwrap();
    let services = vcsa.start_services().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("vc1");
    let root = vcsa.host.root.display().to_string();
    let agent = c.run_agent(&state, Some(&vcsa.agent_config_path()), &["--root", &root]);
    c.wait_connected(1);
    Setup {
        vcsa,
        services,
        c,
        _agent: agent,
        _dir: dir,
    }
}

fn spec() -> VcsaSpec {
    VcsaSpec::new(VcsaVersion::V70, "vcsa01.lab.local")
        .with("sts", Lifetime::days(735, -5))
        .with("machine_ssl", Lifetime::days(720, 10))
        .with("wcp", Lifetime::days(720, 12))
}

fn login(v: &Vcsa) -> (bool, String) {
    let out = Command::new(support::bin("certfleet-sim"))
        .arg("--root")
        .arg(&v.host.root)
        .arg("vcsa-login")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Creates a plan (retrying until the agent's first report is in) and returns its JSON.
fn create(c: &Controller, args: &[&str]) -> Value {
    let mut a = vec!["plan", "create"];
    a.extend(args);
    a.extend(["-o", "json"]);
    wait_for("plan create", Duration::from_secs(60), || {
        let out = c.cli_as(&c.admin(), &a);
        if out.status.success() {
            serde_json::from_slice(&out.stdout).ok()
        } else {
            std::thread::sleep(Duration::from_millis(500));
            None
        }
    })
}

fn finish(c: &Controller, id: &str) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    wait_for("plan to finish", Duration::from_secs(310), || {
        let p = c.json(&["plan", "show", id]);
        assert!(
            std::time::Instant::now() < deadline,
            "plan did not finish: {:#}",
            last.borrow()
        );
        *last.borrow_mut() = p.clone();
        let st = p["state"].as_str().unwrap_or("").to_owned();
        if ["succeeded", "failed", "aborted", "rolled_back", "dry_run"].contains(&st.as_str()) {
            Some(p)
        } else {
            std::thread::sleep(Duration::from_millis(500));
            None
        }
    })
}

fn getcert(v: &Vcsa, store: &str, alias: &str) -> String {
    let out = Command::new(v.host.path(vcsa::VECS_CLI))
        .args(["entry", "getcert", "--store", store, "--alias", alias])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl x509 -checkend SECS` on a PEM: whether it is still valid in `secs`.
fn valid_for(pem: &str, secs: u64) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.pem");
    std::fs::write(&p, pem).unwrap();
    Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
        .arg(&p)
        .status()
        .unwrap()
        .success()
}

fn fingerprint(pem: &str) -> String {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

fn served(v: &Vcsa) -> String {
    let s = v.state().unwrap();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", s.https_port),
            "-servername",
            &s.pnid,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("no certificate served");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    fingerprint(&text[start..end])
}

/// Hash of every file under the simulated root except slapd's own database and logs.
fn hash_root(root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -path ./.sim/vmdir -prune -o -type f -print | sort | xargs sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    certfleet_common::pki::sha256_hex(&out.stdout)
}

const YEAR: u64 = 365 * 86_400;

#[test]
fn vsphere_sts_then_machine_ssl_renewal() {
    let s = setup(spec());
    let v = &s.vcsa;
    let (ok, msg) = login(v);
    assert!(!ok, "login must fail with an expired STS: {msg}");

    // STS: gate on every node, replace once, restart every node.
    let p = create(&s.c, &["vsphere-sts", "--agent", "vc1", "--run"]);
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let (ok, msg) = login(v);
    assert!(ok, "login after the STS renewal: {msg}");

    // Machine SSL.
    let old = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    assert!(!valid_for(&old, 30 * 86_400));
    let p = create(
        &s.c,
        &[
            "vsphere-machine-ssl",
            "--agent",
            "vc1",
            "--expiring-within",
            "90d",
            "--run",
        ],
    );
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let new = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    assert_ne!(fingerprint(&new), fingerprint(&old));
    assert!(
        valid_for(&new, YEAR),
        "new Machine SSL must be good for a year (openssl)"
    );
    assert_eq!(
        served(v),
        fingerprint(&new),
        "endpoint serves the new certificate"
    );
    let bkp = getcert(v, "BACKUP_STORE", "bkp___MACHINE_CERT");
    assert_eq!(
        fingerprint(&bkp),
        fingerprint(&old),
        "BACKUP_STORE holds the old one"
    );

    // The agent's own scan sees the new not-after.
    let out = Command::new(support::bin("certfleet-agent"))
        .args(["scan", "-o", "json", "--root"])
        .arg(&v.host.root)
        .arg("--config")
        .arg(v.agent_config_path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fp = fingerprint(&new);
    assert!(
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["fingerprint_sha256"] == fp.as_str()),
        "scan reports the new Machine SSL"
    );
    drop(s.services);
}

#[test]
fn vsphere_replication_gate_halts_touching_nothing() {
    let s = setup(spec().partners(vec![Partner::lagging("psc2.lab.local", 40)]));
    let v = &s.vcsa;
    let before = hash_root(&v.host.root);
    let p = create(
        &s.c,
        &[
            "vsphere-machine-ssl",
            "--agent",
            "vc1",
            "--expiring-within",
            "90d",
            "--run",
        ],
    );
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "failed", "{p:#}");
    assert!(p.to_string().contains("40 changes behind"), "{p:#}");
    assert_eq!(hash_root(&v.host.root), before, "the gate touched the host");
}

#[test]
fn vsphere_dry_run_touches_nothing() {
    let s = setup(spec());
    let v = &s.vcsa;
    let before = hash_root(&v.host.root);
    let p = create(&s.c, &["vsphere-sts", "--agent", "vc1", "--dry-run"]);
    let text = p.to_string();
    assert!(
        text.contains("ldapmodify"),
        "dry run shows the commands: {text}"
    );
    let p2 = create(
        &s.c,
        &[
            "vsphere-machine-ssl",
            "--agent",
            "vc1",
            "--expiring-within",
            "90d",
            "--dry-run",
        ],
    );
    assert!(
        p2.to_string()
            .contains("entry create --store MACHINE_SSL_CERT"),
        "{p2:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hash_root(&v.host.root), before);
    assert!(!login(v).0);
}

#[test]
fn vsphere_failed_verification_rolls_back() {
    let s = setup(spec());
    let v = &s.vcsa;
    let old = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    // rhttpproxy's listener dies: after the restart the endpoint cannot be verified.
    let https = s.services.pids()[1];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(https as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let p = create(
        &s.c,
        &[
            "vsphere-machine-ssl",
            "--agent",
            "vc1",
            "--expiring-within",
            "90d",
            "--run",
        ],
    );
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_ne!(p["state"], "succeeded", "{p:#}");
    assert!(p.to_string().contains("rolled back"), "{p:#}");
    let now = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    assert_eq!(
        fingerprint(&now),
        fingerprint(&old),
        "VECS holds the old certificate again"
    );
}
