//! GKE on VMware admin workstation and kubeadm node, end to end: simulated hosts, the real
//! `certfleet-agent scan` as a process, and every record checked against the real
//! `openssl x509` on the same certificates (decoded from the kubeconfigs here, independently of
//! the agent's parser).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use certfleet_integration_tests::sim::gke::{self, Fault, GkeSpec, Stage, UserClusterSpec};
use certfleet_integration_tests::sim::kubeadm::{self, KubeadmSpec};
use certfleet_integration_tests::sim::{self, Lifetime, SimHost};
use serde_json::Value;

use crate::support;

/// What `openssl x509 -noout -fingerprint -sha256 -enddate -serial -subject` says.
#[derive(Debug)]
struct OpensslView {
    fingerprint: String,
    not_after: i64,
    serial: String,
    subject: String,
}

fn openssl_x509(pem: &str, scratch: &Path) -> OpensslView {
    let f = scratch.join("one.pem");
    std::fs::write(&f, pem).unwrap();
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-enddate",
            "-serial",
            "-subject",
            "-in",
        ])
        .arg(&f)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_owned()
    };
    OpensslView {
        fingerprint: field("sha256 Fingerprint=").replace(':', "").to_lowercase(),
        not_after: openssl_date(&field("notAfter=")),
        serial: field("serial="),
        subject: field("subject=").replace(" = ", "="),
    }
}

/// `Nov 23 05:12:36 2027 GMT` to Unix seconds.
fn openssl_date(s: &str) -> i64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 5, "{s}");
    let m = MONTHS.iter().position(|x| *x == f[0]).unwrap() as u8 + 1;
    let hms: Vec<u8> = f[2].split(':').map(|x| x.parse().unwrap()).collect();
    let date = time::Date::from_calendar_date(
        f[3].parse().unwrap(),
        time::Month::try_from(m).unwrap(),
        f[1].parse().unwrap(),
    )
    .unwrap();
    time::PrimitiveDateTime::new(date, time::Time::from_hms(hms[0], hms[1], hms[2]).unwrap())
        .assume_utc()
        .unix_timestamp()
}

/// Every PEM certificate block in `text`.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end = rest[i..].find("-----END CERTIFICATE-----").unwrap()
            + i
            + "-----END CERTIFICATE-----".len();
        out.push(format!("{}\n", &rest[i..end]));
        rest = &rest[end..];
    }
    out
}

/// `(cluster CA PEMs, client cert PEM)` of a kubeconfig, decoded here with serde_norway.
fn kubeconfig_pems(path: &Path) -> (Vec<String>, String) {
    let v: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dec = |s: &str| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).unwrap()).unwrap()
    };
    let ca = dec(v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap());
    let client = dec(v["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .unwrap());
    (pem_blocks(&ca), pem_blocks(&client).remove(0))
}

fn write_config(dir: &Path, root: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!("agent-{}.toml", rand_suffix()));
    std::fs::write(
        &p,
        format!(
            "root = \"{}\"\ntool_timeout = \"3s\"\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    p
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

fn scan(root: &Path, config: &Path) -> Value {
    let out = Command::new(support::bin("certfleet-agent"))
        .args(["scan", "--root"])
        .arg(root)
        .arg("--config")
        .arg(config)
        .args(["-o", "json"])
        .output()
        .expect("certfleet-agent runs (cargo build --workspace --bins first)");
    assert!(
        out.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn record<'a>(report: &'a Value, fingerprint: &str) -> &'a Value {
    report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["fingerprint_sha256"] == fingerprint)
        .unwrap_or_else(|| panic!("no record with fingerprint {fingerprint}"))
}

/// Checks the record of `pem` against openssl and returns it.
fn check_against_openssl<'a>(report: &'a Value, pem: &str, scratch: &Path) -> &'a Value {
    let o = openssl_x509(pem, scratch);
    let r = record(report, &o.fingerprint);
    assert_eq!(
        certfleet_common::model::parse_time(r["not_after"].as_str().unwrap()),
        Some(o.not_after),
        "{r}"
    );
    assert_eq!(r["serial"].as_str().unwrap(), o.serial, "{r}");
    assert_eq!(r["subject"].as_str().unwrap(), o.subject, "{r}");
    r
}

fn has_location(r: &Value, kind: &str, path: &str, detail: &str) -> bool {
    r["locations"].as_array().unwrap().iter().any(|l| {
        l["kind"] == kind && l["path"] == path && l["detail"].as_str().unwrap_or("") == detail
    })
}

/// Replaces the value of every `field:` line of a kubeconfig.
fn replace_field(text: &str, field: &str, value: &str) -> String {
    let key = format!("{field}: ");
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.find(&key) {
            Some(i) => format!("{}{value}", &l[..i + key.len()]),
            None => l.to_owned(),
        })
        .collect();
    assert_ne!(out.join("\n"), text.trim_end(), "{field} not found");
    out.join("\n") + "\n"
}

fn sim_host(dir: &Path, name: &str) -> SimHost {
    SimHost::new(dir.join(name), sim::default_sim_bin()).unwrap()
}

fn workstation_spec() -> GkeSpec {
    let mut rotating = UserClusterSpec::new("user-rotating", "user-cluster.yaml");
    rotating.rotation = Some(Stage::ControlPlaneReissued);
    let mut expiring = UserClusterSpec::new("user-expiring", "user-cluster-2.yaml");
    expiring.ca = Lifetime::days(5 * 365 - 20, 20);
    GkeSpec {
        users: vec![rotating, expiring],
        ..GkeSpec::default()
    }
}

const IN_PROGRESS: &str = "State of CARotation with CAVersion 2 is -\nstatus: False,\nreason: CARotationProgressed,\nmessage: Control plane has CA bundle [1 2], certs from CA 2, CA 1 is CSR signer. Data plane has CA bundle [1 2], CA 1 was CSR signer at last restart.\n";
const COMPLETED: &str = "State of CARotation with CAVersion 2 is -\nstatus: True,\nreason: CARotationCompleted,\nmessage: Control plane has CA bundle [2], certs from CA 2, CA 2 is CSR signer. Data plane has CA bundle [2], CA 2 was CSR signer at last restart.\n";

#[test]
fn workstation_scan_matches_openssl_and_reports_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = gke::build_admin_workstation(&host, &workstation_spec()).unwrap();
    let cfg = write_config(dir.path(), &host.root, "");
    let report = scan(&host.root, &cfg);

    assert!(
        report["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "gke_admin"),
        "{}",
        report["platforms"]
    );
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        0,
        "{:#}",
        report["problems"]
    );

    // Admin kubeconfig.
    let (cas, client) = kubeconfig_pems(&ws.admin_kubeconfig);
    assert_eq!(cas.len(), 1);
    let r = check_against_openssl(&report, &cas[0], dir.path());
    assert_eq!(r["role"], "gke.admin_cluster.ca");
    assert!(
        has_location(
            r,
            "kubeconfig",
            "/home/ubuntu/kubeconfig",
            "cluster=gke-admin"
        ),
        "{r}"
    );
    let r = check_against_openssl(&report, &client, dir.path());
    assert_eq!(r["role"], "gke.admin_cluster.client");
    assert!(
        has_location(
            r,
            "kubeconfig",
            "/home/ubuntu/kubeconfig",
            "user=kubernetes-admin"
        ),
        "{r}"
    );

    // Mid-rotation user cluster: both CAs of the bundle, each its own record.
    let rot = ws.users.iter().find(|u| u.name == "user-rotating").unwrap();
    let (cas, client) = kubeconfig_pems(&rot.kubeconfig);
    assert_eq!(cas.len(), 2, "bundle [1 2]");
    for (i, ca) in cas.iter().enumerate() {
        let r = check_against_openssl(&report, ca, dir.path());
        assert_eq!(r["role"], "gke.user_cluster.ca");
        let detail = format!("cluster=user-rotating bundle={}/2", i + 1);
        assert!(
            has_location(
                r,
                "kubeconfig",
                "/home/ubuntu/user-rotating-kubeconfig",
                &detail
            ),
            "{r}"
        );
    }
    let r = check_against_openssl(&report, &client, dir.path());
    assert_eq!(r["role"], "gke.user_cluster.client");

    // User cluster whose CA expires in 20 days.
    let exp = ws.users.iter().find(|u| u.name == "user-expiring").unwrap();
    let (cas, client) = kubeconfig_pems(&exp.kubeconfig);
    let r = check_against_openssl(&report, &cas[0], dir.path());
    assert_eq!(r["role"], "gke.user_cluster.ca");
    assert_eq!(r["status"], "expiring", "{r}");
    assert!(r["days_left"].as_i64().unwrap() <= 20);
    check_against_openssl(&report, &client, dir.path());

    // vCenter CA from vCenter.caCertPath.
    let vc = std::fs::read_to_string(&ws.vcenter_ca).unwrap();
    let r = check_against_openssl(&report, &vc, dir.path());
    assert_eq!(r["role"], "gke.vcenter_ca");

    // 1 admin CA + 1 admin client + 2 rotating CAs + 1 client + 1 expiring CA + 1 client + vCenter CA.
    assert_eq!(report["certificates"].as_array().unwrap().len(), 8);

    // Rotation health: from gkectl per cluster, and from the two-CA bundle.
    let health = report["health"].as_array().unwrap();
    let fact = |subject: &str, state: &str| {
        health.iter().find(|h| {
            h["kind"] == "gke.ca_rotation" && h["subject"] == subject && h["state"] == state
        })
    };
    let f = fact("user/user-rotating", "rotating:control-plane-reissued")
        .unwrap_or_else(|| panic!("{health:#?}"));
    assert_eq!(f["healthy"], false);
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("CA bundle [1 2], certs from CA 2, CA 1 is CSR signer"),
        "{f}"
    );
    assert!(
        fact("user/user-rotating", "bundle-has-multiple-cas").is_some(),
        "{health:#?}"
    );
    assert_eq!(
        fact("user/user-expiring", "completed").unwrap_or_else(|| panic!("{health:#?}"))["healthy"],
        true
    );
    assert!(
        fact("admin/gke-admin", "completed").is_some(),
        "{health:#?}"
    );
    assert!(fact("user/user-expiring", "bundle-has-multiple-cas").is_none());
}

fn gkectl(ws: &gke::Workstation, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(&ws.gkectl)
        .args(args)
        .env_remove("GKECTL_KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn simulated_gkectl_speaks_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = gke::build_admin_workstation(&host, &workstation_spec()).unwrap();
    let kc = ws.admin_kubeconfig.to_str().unwrap();
    let rot = ws.users[0].config.to_str().unwrap();
    let exp = ws.users[1].config.to_str().unwrap();
    let admin = ws.admin_config.to_str().unwrap();
    let status = ["update", "credentials", "certificate-authorities", "status"];
    let rotate = ["update", "credentials", "certificate-authorities", "rotate"];
    let with = |base: &[&str], rest: &[&str]| -> Vec<String> {
        base.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let run = |v: Vec<String>| gkectl(&ws, &v.iter().map(String::as_str).collect::<Vec<_>>());

    // Flags validated.
    let (code, _, err) = run(with(&status, &["--kubeconfig", kc]));
    assert_eq!(code, 1);
    assert!(err.contains("required flag(s) \"config\" not set"), "{err}");
    let (code, _, err) = run(with(&status, &["--config", rot]));
    assert_eq!(code, 1);
    assert!(
        err.contains("required flag(s) \"kubeconfig\" not set"),
        "{err}"
    );
    let (code, _, err) = run(with(
        &status,
        &["--config", rot, "--kubeconfig", kc, "--bogus"],
    ));
    assert_eq!(
        (code, err.lines().next()),
        (1, Some("Error: unknown flag: --bogus"))
    );
    let (code, _, err) = run(with(&status, &["--config", admin, "--kubeconfig", kc]));
    assert_eq!(code, 1);
    assert!(err.starts_with("Exit with error:\n"), "{err}");
    // A user kubeconfig is not the admin kubeconfig.
    let (code, _, err) = run(with(
        &status,
        &[
            "--config",
            rot,
            "--kubeconfig",
            ws.users[0].kubeconfig.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("certificate signed by unknown authority"),
        "{err}"
    );

    // Status verbatim (B2), admin variant, and --flag=value form.
    assert_eq!(
        run(with(&status, &["--config", rot, "--kubeconfig", kc])),
        (0, IN_PROGRESS.to_owned(), String::new())
    );
    let cfg_eq = format!("--config={rot}");
    assert_eq!(
        run(with(&status, &[&cfg_eq, "--kubeconfig", kc])).1,
        IN_PROGRESS
    );
    let (code, out, _) = run(with(
        &status,
        &["--admin-cluster", "--config", admin, "--kubeconfig", kc],
    ));
    assert_eq!(code, 0);
    assert!(out.starts_with("State of CARotation with CAVersion 1 is -\nstatus: True,\nreason: CARotationCompleted,\n"), "{out}");

    // Rotation already in progress: the webhook denial, verbatim.
    let (code, out, err) = run(with(&rotate, &["--config", rot, "--kubeconfig", kc]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "Exit with error:\nadmission webhook \"vonpremusercluster.onprem.cluster.gke.io\" denied the request: requests must not modify CAVersion when cluster is not ready: ready condition is not true: ClusterCreateOrUpdate: Creating or updating user cluster control plane workloads\n"
    );

    // Start a rotation on the steady cluster; then one phase per status call, [1 2] -> [2].
    let (code, out, _) = run(with(&rotate, &["--config", exp, "--kubeconfig", kc]));
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "successfully started the CA rotation with CAVersion 2, use gkectl update credentials certificate-authorities status command to view the current state of CA rotation\n"
    );
    let phases: Vec<String> = (0..5)
        .map(|_| run(with(&status, &["--config", exp, "--kubeconfig", kc])).1)
        .collect();
    assert!(
        phases[0]
            .contains("Control plane has CA bundle [1 2], certs from CA 1, CA 1 is CSR signer."),
        "{}",
        phases[0]
    );
    assert_eq!(phases[1], IN_PROGRESS);
    assert!(phases[2].contains("certs from CA 2, CA 2 is CSR signer. Data plane has CA bundle [1 2], CA 2 was CSR signer"), "{}", phases[2]);
    assert_eq!(phases[3], COMPLETED);
    assert_eq!(phases[4], COMPLETED);
}

#[test]
fn workstation_bad_inputs_become_problems() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = gke::build_admin_workstation(&host, &workstation_spec()).unwrap();
    // Malformed YAML among the configs, a user cluster whose kubeconfig is gone, bad base64 in
    // the admin kubeconfig's client certificate.
    host.write(
        "/home/ubuntu/user-cluster-3.yaml",
        "kind: UserCluster\nname: [unclosed\n",
        0o644,
    )
    .unwrap();
    host.write(
        "/home/ubuntu/user-cluster-4.yaml",
        "apiVersion: v1\nkind: UserCluster\nname: \"user-gone\"\n",
        0o644,
    )
    .unwrap();
    let text = std::fs::read_to_string(&ws.admin_kubeconfig).unwrap();
    host.write(
        "/home/ubuntu/kubeconfig",
        replace_field(&text, "client-certificate-data", "'%%%not-base64%%%'"),
        0o600,
    )
    .unwrap();
    let cfg = write_config(dir.path(), &host.root, "");

    let problems_of = |report: &Value| report["problems"].as_array().unwrap().clone();
    let find = |ps: &[Value], subject: &str, msg: &str| {
        ps.iter().any(|p| {
            p["subject"].as_str().unwrap().contains(subject)
                && p["message"].as_str().unwrap().contains(msg)
        })
    };

    let report = scan(&host.root, &cfg);
    let ps = problems_of(&report);
    assert!(
        find(
            &ps,
            "/home/ubuntu/user-cluster-3.yaml",
            "not a cluster config"
        ),
        "{ps:#?}"
    );
    assert!(
        find(
            &ps,
            "/home/ubuntu/user-gone-kubeconfig",
            "cannot read kubeconfig"
        ),
        "{ps:#?}"
    );
    assert!(
        find(
            &ps,
            "/home/ubuntu/kubeconfig user=kubernetes-admin",
            "not base64"
        ),
        "{ps:#?}"
    );
    // Without a readable client certificate gkectl is refused by the admin cluster: one
    // problem per gkectl call (admin + 3 user clusters), non-zero exit, named command.
    assert!(find(&ps, "user-cluster-4.yaml", "exit code 1"), "{ps:#?}");
    let refused = ps
        .iter()
        .filter(|p| {
            p["subject"]
                .as_str()
                .unwrap()
                .contains("gkectl update credentials certificate-authorities status")
                && p["message"].as_str().unwrap().contains("Unauthorized")
        })
        .count();
    assert_eq!(refused, 4, "{ps:#?}");
    assert_eq!(ps.len(), 7, "{ps:#?}");
    // The scan went on: the CAs are all there.
    assert_eq!(report["certificates"].as_array().unwrap().len(), 7);

    for (fault, msg) in [
        (Fault::Garbage, "unrecognised output"),
        (Fault::Unreachable, "no route to host"),
        (Fault::Hang, "no answer after 3s"),
    ] {
        gke::set_fault(&host, Some(fault)).unwrap();
        let report = scan(&host.root, &cfg);
        let ps = problems_of(&report);
        // One problem per gkectl call (admin + 3 user clusters), each naming the command.
        let n = ps
            .iter()
            .filter(|p| {
                p["subject"]
                    .as_str()
                    .unwrap()
                    .contains("gkectl update credentials certificate-authorities status")
            })
            .count();
        assert_eq!(n, 4, "{fault:?}: {ps:#?}");
        assert!(
            ps.iter()
                .any(|p| p["message"].as_str().unwrap().contains(msg)),
            "{fault:?}: {ps:#?}"
        );
        assert!(
            !report["health"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["state"] == "completed")
        );
        assert_eq!(report["certificates"].as_array().unwrap().len(), 7);
    }
}

/// Runs the simulated `kubeadm certs check-expiration`.
fn check_expiration(node: &kubeadm::KubeadmNode) -> String {
    let out = Command::new(&node.kubeadm)
        .args(["certs", "check-expiration"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubeadm_node_scan_matches_openssl_and_check_expiration() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "cp1");
    let spec = KubeadmSpec {
        overrides: vec![("apiserver-etcd-client".into(), Lifetime::days(400, -10))],
        ..KubeadmSpec::default()
    };
    let node = kubeadm::build_kubeadm_node(&host, &spec).unwrap();
    let cfg = write_config(dir.path(), &host.root, "");
    let report = scan(&host.root, &cfg);
    assert!(
        report["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "kubeadm"),
        "{}",
        report["platforms"]
    );
    assert_eq!(
        report["problems"].as_array().unwrap().len(),
        0,
        "{:#}",
        report["problems"]
    );

    let roles = [
        ("ca.crt", "kubeadm.ca"),
        ("etcd/ca.crt", "kubeadm.etcd.ca"),
        ("front-proxy-ca.crt", "kubeadm.front-proxy-ca"),
        ("apiserver.crt", "kubeadm.apiserver"),
        ("apiserver-etcd-client.crt", "kubeadm.apiserver-etcd-client"),
        (
            "apiserver-kubelet-client.crt",
            "kubeadm.apiserver-kubelet-client",
        ),
        (
            "etcd/healthcheck-client.crt",
            "kubeadm.etcd.healthcheck-client",
        ),
        ("etcd/peer.crt", "kubeadm.etcd.peer"),
        ("etcd/server.crt", "kubeadm.etcd.server"),
        ("front-proxy-client.crt", "kubeadm.front-proxy-client"),
    ];
    let table = check_expiration(&node);
    for (file, role) in roles {
        let pem = std::fs::read_to_string(node.pki.join(file)).unwrap();
        let r = check_against_openssl(&report, &pem, dir.path());
        assert_eq!(r["role"], role, "{file}");
        assert!(
            has_location(r, "file", &format!("/etc/kubernetes/pki/{file}"), ""),
            "{r}"
        );
        // The simulated kubeadm prints the same expiry, Go-formatted.
        let o = openssl_x509(&pem, dir.path());
        assert!(
            table.contains(&kubeadm::go_date(o.not_after)),
            "{file}: {table}"
        );
    }
    let expired = record(
        &report,
        &openssl_x509(
            &std::fs::read_to_string(node.pki.join("apiserver-etcd-client.crt")).unwrap(),
            dir.path(),
        )
        .fingerprint,
    );
    assert_eq!(expired["status"], "expired");

    for (conf, role) in [
        ("admin.conf", "kubeadm.kubeconfig.admin"),
        ("super-admin.conf", "kubeadm.kubeconfig.super-admin"),
        (
            "controller-manager.conf",
            "kubeadm.kubeconfig.controller-manager",
        ),
        ("scheduler.conf", "kubeadm.kubeconfig.scheduler"),
    ] {
        let (cas, client) = kubeconfig_pems(&node.kubernetes.join(conf));
        let r = check_against_openssl(&report, &cas[0], dir.path());
        assert_eq!(r["role"], "kubeadm.ca");
        assert!(
            has_location(
                r,
                "kubeconfig",
                &format!("/etc/kubernetes/{conf}"),
                "cluster=kubernetes"
            ),
            "{r}"
        );
        let r = check_against_openssl(&report, &client, dir.path());
        assert_eq!(r["role"], role);
    }
    // kubelet.conf points at the kubelet's rotating pair.
    let kubelet =
        std::fs::read_to_string(host.path("/var/lib/kubelet/pki/kubelet-client-current.pem"))
            .unwrap();
    let r = check_against_openssl(&report, &kubelet, dir.path());
    assert_eq!(r["role"], "kubeadm.kubelet.client");
    assert!(
        r["locations"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("client-certificate=/var/lib/kubelet/pki/kubelet-client-current.pem"),
        "{r}"
    );
    // 3 CAs + 7 leaves + 4 kubeconfig clients + kubelet client.
    assert_eq!(report["certificates"].as_array().unwrap().len(), 15);

    // The table itself: C2 layout, trailing spaces, the expired row.
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some(
            "[check-expiration] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"..."
        )
    );
    assert!(table.contains("\n\nCERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED\n"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("apiserver-etcd-client "))
        .unwrap();
    assert!(
        row.contains("   <invalid>       etcd-ca                 no      ")
            && row.ends_with("no      "),
        "{row:?}"
    );
    assert!(table.contains("\nCERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED\nca                      "), "{table}");
    let names: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("CERTIFICATE "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 11, "{names:?}");
}

#[test]
fn kubeadm_disagreement_and_missing_files_become_problems() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "cp1");
    let node = kubeadm::build_kubeadm_node(
        &host,
        &KubeadmSpec {
            rsa: false,
            super_admin: false,
            ..KubeadmSpec::default()
        },
    )
    .unwrap();
    // super-admin.conf absent: kubeadm ≥1.29 lists it as !MISSING!.
    assert!(
        check_expiration(&node).contains("\n!MISSING! super-admin.conf"),
        "{}",
        check_expiration(&node)
    );
    // A kubeadm that reports another apiserver expiry than the file holds.
    let liar = host
        .write(
            "/opt/liar-kubeadm",
            format!(
                "#!/bin/sh\n'{}' \"$@\" | sed '/^apiserver /s/, 20[0-9][0-9] /, 2099 /'\n",
                node.kubeadm.display()
            ),
            0o755,
        )
        .unwrap();
    // Garbage in a kubeconfig's CA data.
    let conf = node.kubernetes.join("scheduler.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let garbage = base64::engine::general_purpose::STANDARD.encode("not a pem");
    std::fs::write(
        &conf,
        replace_field(&text, "certificate-authority-data", &garbage),
    )
    .unwrap();

    let cfg = write_config(
        dir.path(),
        &host.root,
        &format!("[tools]\nkubeadm = \"{}\"\n", liar.display()),
    );
    let report = scan(&host.root, &cfg);
    let ps = report["problems"].as_array().unwrap();
    let has = |subject: &str, msg: &str| {
        ps.iter().any(|p| {
            p["subject"].as_str().unwrap().contains(subject)
                && p["message"].as_str().unwrap().contains(msg)
        })
    };
    assert!(
        has(
            "check-expiration",
            "kubeadm reports apiserver expiring 2099"
        ),
        "{ps:#?}"
    );
    assert!(
        has(
            "/etc/kubernetes/scheduler.conf cluster=kubernetes",
            "certificate-authority-data does not hold PEM"
        ),
        "{ps:#?}"
    );
    // super-admin.conf missing is normal (kubeadm < 1.29, secondary control-plane nodes).
    assert_eq!(ps.len(), 2, "{ps:#?}");
    // Everything else still read: 3 CAs + 7 leaves + 3 kubeconfig clients + kubelet client.
    assert_eq!(report["certificates"].as_array().unwrap().len(), 14);
}
