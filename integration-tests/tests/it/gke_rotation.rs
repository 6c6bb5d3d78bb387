//! End-to-end GKE user-cluster CA rotation (`gke-user-ca`) and kubeadm renewal
//! (`kubeadm-certs`): a real controller and agents against simulated hosts, plans made with the
//! CLI, results checked with the real `openssl` and the simulators' state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use certfleet_integration_tests::sim::gke::{self, GkeSpec, GkeState, UserClusterSpec};
use certfleet_integration_tests::sim::kubeadm::{self, KubeadmSpec};
use certfleet_integration_tests::sim::{self, Lifetime, SimHost};
use serde_json::Value;

use crate::support::{self, Controller};

/// A simulated host with the real openssl at its usual path.
fn sim_host(dir: &Path, name: &str) -> SimHost {
    let h = SimHost::new(dir.join(name), sim::default_sim_bin()).unwrap();
    h.link_real_tool("/usr/bin/openssl").unwrap();
    h
}

fn agent_config(dir: &Path, name: &str, root: &Path) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "root = \"{}\"\ntool_timeout = \"20s\"\nscan_interval = \"1h\"\n",
            root.display()
        ),
    )
    .unwrap();
    p
}

/// SHA-256 of every file under `root`, by relative path (symlinks by target).
fn tree_hash(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let t = e.file_type().unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_symlink() {
                out.insert(rel, std::fs::read_link(&p).unwrap().display().to_string());
            } else {
                let d = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&p).unwrap());
                out.insert(rel, hex::encode(d.as_ref()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Real openssl SHA-256 fingerprint of a PEM certificate, lowercase hex.
fn openssl_fp(pem: &str, scratch: &Path) -> String {
    let f = scratch.join("fp.pem");
    std::fs::write(&f, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

fn openssl_ok(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| b.trim_start().to_owned() + "\n")
        .collect()
}

/// `(CA PEMs, client PEM)` of a kubeconfig, base64-decoded here.
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

fn inventory(c: &Controller, agent: &str) -> Vec<Value> {
    c.json(&["inventory", "--agent", agent])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_role(c: &Controller, agent: &str, role: &str) {
    support::wait_for(
        &format!("{agent} to report {role}"),
        Duration::from_secs(60),
        || {
            inventory(c, agent)
                .iter()
                .any(|r| r["role"] == role)
                .then_some(())
        },
    );
}

fn plan_create(c: &Controller, args: &[&str]) -> Value {
    let mut a = vec!["plan", "create"];
    a.extend(args);
    c.json(&a)
}

/// Waits for a plan to end; on timeout prints the last state seen.
fn wait_plan(c: &Controller, id: &str) -> Value {
    struct Dump<'a>(&'a std::cell::RefCell<Value>);
    impl Drop for Dump<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("last plan: {:#}", self.0.borrow());
            }
        }
    }
    let last = std::cell::RefCell::new(Value::Null);
    let _dump = Dump(&last);
    support::wait_for(
        &format!("plan {id} to finish"),
        Duration::from_secs(240),
        || {
            let p = c.json(&["plan", "show", id, "--output-lines"]);
            *last.borrow_mut() = p.clone();
            matches!(
                p["state"].as_str(),
                Some("succeeded" | "failed" | "aborted" | "rolled_back")
            )
            .then_some(p)
        },
    )
}

fn step<'a>(plan: &'a Value, action: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == action)
        .unwrap_or_else(|| panic!("no {action} step in {plan:#}"))
}

#[test]
fn gke_user_ca_rotation_installs_new_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let mut user = UserClusterSpec::new("user-cluster-1", "user-cluster.yaml");
    user.ca = Lifetime::days(5 * 365 - 20, 20);
    // A second cluster whose rotation someone already started: it is followed, not restarted.
    let mut busy = UserClusterSpec::new("user-cluster-2", "user-cluster-2.yaml");
    busy.ca = Lifetime::days(5 * 365 - 20, 20);
    busy.rotation = Some(gke::Stage::NewCaTrusted);
    busy.advance_on_status = true;
    let ws = gke::build_admin_workstation(
        &host,
        &GkeSpec {
            users: vec![user, busy],
            ..GkeSpec::default()
        },
    )
    .unwrap();
    let kc = &ws.users[0].kubeconfig;
    let (old_cas, _) = kubeconfig_pems(kc);
    assert_eq!(old_cas.len(), 1);
    let old_fp = openssl_fp(&old_cas[0], dir.path());

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("ws");
    let cfg = agent_config(dir.path(), "ws", &host.root);
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(&c, "ws", "gke.user_cluster.ca");

    // Dry run: the graph with its commands, nothing touched.
    let before = tree_hash(&host.root);
    let dry = plan_create(
        &c,
        &[
            "gke-user-ca",
            "--agent",
            "ws",
            "--expiring-within",
            "90d",
            "--param",
            "poll=0",
            "--dry-run",
        ],
    );
    assert_eq!(dry["state"], "dry_run", "{dry:#}");
    let actions: Vec<&str> = dry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "gke.ca_rotate",
            "gke.fetch_kubeconfig",
            "kubeconfig.install",
            "gke.ca_rotate",
            "gke.fetch_kubeconfig",
            "kubeconfig.install"
        ]
    );
    let cmds = step(&dry, "gke.ca_rotate")["commands"].to_string();
    assert!(
        cmds.contains("gkectl update credentials certificate-authorities rotate"),
        "{cmds}"
    );
    assert!(
        step(&dry, "gke.fetch_kubeconfig")["commands"]
            .to_string()
            .contains("get secret admin -n user-cluster-1")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tree_hash(&host.root), before, "a dry run changed the host");

    // The real run.
    let p = plan_create(
        &c,
        &[
            "gke-user-ca",
            "--agent",
            "ws",
            "--expiring-within",
            "90d",
            "--param",
            "poll=0",
            "--run",
        ],
    );
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let rot = step(&p, "gke.ca_rotate");
    let out = rot["output"].to_string();
    for s in [
        "successfully started the CA rotation with CAVersion 2",
        "rotating:new-ca-trusted",
        "rotating:control-plane-reissued",
        "rotating:signer-switched",
        "stage: CAVersion 2 completed",
    ] {
        assert!(out.contains(s), "{s} missing from {out}");
    }
    let busy_rot = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "gke.ca_rotate" && s["target"] == "ws:user-cluster-2")
        .unwrap();
    let out2 = busy_rot["output"].to_string();
    assert!(out2.contains("already in progress: following it"), "{out2}");
    assert!(!out2.contains("successfully started"), "{out2}");
    let st = GkeState::load(&host).unwrap();
    assert_eq!(st.users["user-cluster-2"].ca_version, 2, "restarted?");
    let (cas2, _) = kubeconfig_pems(&ws.users[1].kubeconfig);
    assert_eq!(cas2.len(), 1);
    assert_eq!(
        openssl_fp(&cas2[0], dir.path()),
        openssl_fp(&st.users["user-cluster-2"].cas[&2].cert_pem, dir.path())
    );
    // The fetched kubeconfig is a credential: nothing of it in the plan.
    let fetch = step(&p, "gke.fetch_kubeconfig");
    assert!(!p.to_string().contains("client-key-data"));
    assert!(!fetch["output"].to_string().contains("LS0t"));

    // The workstation's kubeconfig trusts the new CA only (checked with openssl).
    let sim_state = GkeState::load(&host).unwrap();
    let cl = &sim_state.users["user-cluster-1"];
    assert_eq!(cl.ca_version, 2);
    let new_ca_pem = &cl.cas[&2].cert_pem;
    let new_fp = openssl_fp(new_ca_pem, dir.path());
    let (cas, client) = kubeconfig_pems(kc);
    assert_eq!(cas.len(), 1, "bundle after rotation: {cas:?}");
    assert_eq!(openssl_fp(&cas[0], dir.path()), new_fp);
    assert_ne!(new_fp, old_fp);
    let ca_f = dir.path().join("newca.pem");
    let cl_f = dir.path().join("client.pem");
    std::fs::write(&ca_f, &cas[0]).unwrap();
    std::fs::write(&cl_f, &client).unwrap();
    let (ok, msg) = openssl_ok(&[
        "verify",
        "-CAfile",
        ca_f.to_str().unwrap(),
        cl_f.to_str().unwrap(),
    ]);
    assert!(ok, "client certificate does not chain to the new CA: {msg}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(kc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        step(&p, "kubeconfig.install")["details"]["ca_sha256"][0],
        new_fp.as_str()
    );
    // The staged copy is gone from the agent's state directory.
    let staged: Vec<_> = std::fs::read_dir(state.join("staged"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".kubeconfig"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");

    // The inventory shows the new CA and no longer the old one.
    c.cli(&["inventory", "rescan", "ws"]);
    support::wait_for(
        "inventory to show the new user cluster CA",
        Duration::from_secs(60),
        || {
            let inv = inventory(&c, "ws");
            let fps: Vec<&str> = inv
                .iter()
                .filter(|r| r["role"] == "gke.user_cluster.ca")
                .filter(|r| r.to_string().contains("cluster=user-cluster-1"))
                .filter_map(|r| r["fingerprint_sha256"].as_str())
                .collect();
            (fps == [new_fp.as_str()]).then_some(())
        },
    );
}

fn kubeadm_node(dir: &Path, name: &str, overrides: Vec<(String, Lifetime)>) -> SimHost {
    let host = sim_host(dir, name);
    kubeadm::build_kubeadm_node(
        &host,
        &KubeadmSpec {
            node_name: name.into(),
            rsa: false,
            overrides,
            ..KubeadmSpec::default()
        },
    )
    .unwrap();
    host
}

/// Leaf certificate files kubeadm renews.
const LEAVES: &[&str] = &[
    "apiserver.crt",
    "apiserver-etcd-client.crt",
    "apiserver-kubelet-client.crt",
    "etcd/healthcheck-client.crt",
    "etcd/peer.crt",
    "etcd/server.crt",
    "front-proxy-client.crt",
];

fn start_kubeadm_agent(c: &Controller, dir: &Path, host: &SimHost) -> support::Proc {
    let state = c.enroll("cp-1");
    let cfg = agent_config(dir, "cp-1", &host.root);
    let p = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(c, "cp-1", "kubeadm.apiserver");
    p
}

#[test]
fn kubeadm_certs_renews_every_leaf_and_restarts_static_pods() {
    let dir = tempfile::tempdir().unwrap();
    let host = kubeadm_node(
        dir.path(),
        "cp-1",
        vec![("apiserver".into(), Lifetime::days(400, -5))],
    );
    let pki = host.path("/etc/kubernetes/pki");
    // The expired certificate keeps the API server down.
    let k = kubeadm::kubelet_state(&host).unwrap();
    let api = k
        .containers
        .iter()
        .find(|c| c.name == "kube-apiserver")
        .unwrap();
    assert_eq!(api.state, "Exited", "{k:?}");
    let ca_before: Vec<Vec<u8>> = ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"]
        .iter()
        .map(|f| std::fs::read(pki.join(f)).unwrap())
        .collect();

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let _agent = start_kubeadm_agent(&c, dir.path(), &host);

    let before = tree_hash(&host.root);
    let dry = plan_create(
        &c,
        &[
            "kubeadm-certs",
            "--expiring-within",
            "30d",
            "--param",
            "poll=0",
            "--dry-run",
        ],
    );
    assert_eq!(dry["state"], "dry_run");
    assert!(
        step(&dry, "kubeadm.renew_all")["commands"]
            .to_string()
            .contains("kubeadm certs renew all")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tree_hash(&host.root), before, "a dry run changed the host");

    let p = plan_create(
        &c,
        &[
            "kubeadm-certs",
            "--expiring-within",
            "30d",
            "--param",
            "poll=0",
            "--param",
            "pod_start=10",
            "--run",
        ],
    );
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let s = step(&p, "kubeadm.renew_all");
    let out = s["output"].to_string();
    assert!(
        out.contains("certificate for serving the Kubernetes API renewed"),
        "{out}"
    );
    assert!(out.contains("Done renewing certificates."), "{out}");

    // Every leaf: valid for ~a year (openssl -checkend), chains to its CA (openssl verify).
    for leaf in LEAVES {
        let f = pki.join(leaf);
        let ca = if leaf.starts_with("etcd/") || leaf.contains("etcd-client") {
            pki.join("etcd/ca.crt")
        } else if leaf.starts_with("front-proxy") {
            pki.join("front-proxy-ca.crt")
        } else {
            pki.join("ca.crt")
        };
        let (ok, msg) = openssl_ok(&[
            "x509",
            "-noout",
            "-checkend",
            &(300 * 86_400).to_string(),
            "-in",
            f.to_str().unwrap(),
        ]);
        assert!(ok, "{leaf} not renewed: {msg}");
        let (ok, msg) = openssl_ok(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            f.to_str().unwrap(),
        ]);
        assert!(ok, "{leaf}: {msg}");
    }
    for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
        let (_, client) = kubeconfig_pems(&host.path(&format!("/etc/kubernetes/{conf}")));
        let f = dir.path().join("conf-client.pem");
        std::fs::write(&f, client).unwrap();
        let (ok, msg) = openssl_ok(&[
            "x509",
            "-noout",
            "-checkend",
            &(300 * 86_400).to_string(),
            "-in",
            f.to_str().unwrap(),
        ]);
        assert!(ok, "{conf}: {msg}");
    }
    // CAs untouched; keys still private.
    let ca_after: Vec<Vec<u8>> = ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"]
        .iter()
        .map(|f| std::fs::read(pki.join(f)).unwrap())
        .collect();
    assert_eq!(ca_before, ca_after);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(pki.join("apiserver.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The static pods run on the renewed files, manifests are back.
    let k = kubeadm::kubelet_state(&host).unwrap();
    for pod in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd",
    ] {
        let c = k.containers.iter().find(|c| c.name == pod).unwrap();
        assert_eq!(c.state, "Running", "{pod}: {c:?}");
        assert!(
            host.path(&format!("/etc/kubernetes/manifests/{pod}.yaml"))
                .is_file()
        );
        for (path, fp) in &c.loaded {
            let d = ring::digest::digest(
                &ring::digest::SHA256,
                &std::fs::read(host.path(path)).unwrap(),
            );
            assert_eq!(fp, &hex::encode(d.as_ref()), "{pod} runs on an old {path}");
        }
    }
    assert_eq!(
        s["details"]["restarted"],
        serde_json::json!([
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "etcd"
        ])
    );
}

#[test]
fn kubeadm_failed_static_pod_restart_restores_old_pki() {
    let dir = tempfile::tempdir().unwrap();
    let host = kubeadm_node(
        dir.path(),
        "cp-1",
        vec![("apiserver-etcd-client".into(), Lifetime::days(355, 10))],
    );
    kubeadm::set_pod_broken(&host, "kube-scheduler", true).unwrap();
    let kdir = host.path("/etc/kubernetes");
    let before = tree_hash(&kdir);

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let _agent = start_kubeadm_agent(&c, dir.path(), &host);
    let p = plan_create(
        &c,
        &[
            "kubeadm-certs",
            "--expiring-within",
            "30d",
            "--param",
            "poll=0",
            "--param",
            "pod_start=3",
            "--run",
        ],
    );
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "failed", "{p:#}");
    let s = step(&p, "kubeadm.renew_all");
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.contains("kube-scheduler did not come back") && msg.contains("rolled back"),
        "{msg}"
    );
    // Every file of /etc/kubernetes (pki, kubeconfigs, manifests) byte-identical.
    assert_eq!(tree_hash(&kdir), before, "rollback left changes");
    // The pods restarted on the new certificates were restarted on the old ones again.
    let k = kubeadm::kubelet_state(&host).unwrap();
    let api = k
        .containers
        .iter()
        .find(|c| c.name == "kube-apiserver")
        .unwrap();
    assert_eq!(api.state, "Running");
    for (path, fp) in &api.loaded {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            &std::fs::read(host.path(path)).unwrap(),
        );
        assert_eq!(
            fp,
            &hex::encode(d.as_ref()),
            "apiserver runs on a renewed {path}"
        );
    }
}

/// Runs a simulated tool of `host` (its host path); `(success, stdout, stderr)`.
fn host_tool(host: &SimHost, tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(host.path(tool)).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads user cluster `cluster`'s admin secret through the admin cluster with kubeconfig `kc`
/// (the simulated kubectl of `host`).
fn user_cluster_access(host: &SimHost, kc: &Path, cluster: &str) -> (bool, String) {
    let (ok, out, err) = host_tool(
        host,
        "/usr/bin/kubectl",
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "get",
            "secret",
            "admin",
            "-n",
            cluster,
            "-o",
            "jsonpath={.data.admin\\.conf}",
        ],
    );
    if !ok {
        return (false, err);
    }
    let conf = base64::engine::general_purpose::STANDARD
        .decode(out.trim())
        .unwrap();
    let conf = String::from_utf8(conf).unwrap();
    (conf.contains("certificate-authority-data"), conf)
}

fn sha256_file(p: &Path) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(p).unwrap());
    hex::encode(d.as_ref())
}

/// An admin workstation whose admin-cluster CA expires in 20 days, one healthy user cluster.
fn admin_ca_workstation(host: &SimHost) -> gke::Workstation {
    gke::build_admin_workstation(
        host,
        &GkeSpec {
            admin_ca: Lifetime::days(5 * 365 - 20, 20),
            ..GkeSpec::default()
        },
    )
    .unwrap()
}

fn steps_of<'a>(plan: &'a Value, action: &str) -> Vec<&'a Value> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == action)
        .collect()
}

#[test]
fn gke_admin_ca_rotation_updates_every_workstation() {
    let dir = tempfile::tempdir().unwrap();
    let h1 = sim_host(dir.path(), "ws-1");
    let ws = admin_ca_workstation(&h1);
    let h2 = sim_host(dir.path(), "ws-2");
    let kc2 = gke::add_workstation_copy(&h1, &ws, &h2, "/home/ubuntu").unwrap();
    let old_kc = dir.path().join("old-admin-kubeconfig");
    std::fs::copy(&ws.admin_kubeconfig, &old_kc).unwrap();
    let (old_cas, _) = kubeconfig_pems(&ws.admin_kubeconfig);
    assert_eq!(old_cas.len(), 1);
    let old_fp = openssl_fp(&old_cas[0], dir.path());
    assert!(user_cluster_access(&h1, &old_kc, "user-cluster-1").0);

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let mut agents = Vec::new();
    for (name, h) in [("ws-1", &h1), ("ws-2", &h2)] {
        let state = c.enroll(name);
        let cfg = agent_config(dir.path(), name, &h.root);
        agents.push(c.run_agent(&state, Some(&cfg), &[]));
    }
    c.wait_connected(2);
    wait_role(&c, "ws-1", "gke.admin_cluster.ca");
    wait_role(&c, "ws-2", "gke.admin_cluster.ca");

    // Dry run: B3's four steps fanned out, with their commands; nothing touched.
    let before = (tree_hash(&h1.root), tree_hash(&h2.root));
    let dry = plan_create(
        &c,
        &["gke-admin-ca", "--expiring-within", "90d", "--dry-run"],
    );
    assert_eq!(dry["state"], "dry_run", "{dry:#}");
    let actions: Vec<(&str, &str)> = dry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["action"].as_str().unwrap(), s["agent"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("gke.admin_ca_rotate", "ws-1"),
            ("gke.admin_kubeconfig_update", "ws-1"),
            ("gke.admin_kubeconfig_update", "ws-2"),
            ("gke.admin_ca_rotate", "ws-1"),
            ("gke.admin_kubeconfig_update", "ws-1"),
            ("gke.admin_kubeconfig_update", "ws-2"),
        ],
        "{dry:#}"
    );
    let cmds = dry["steps"].to_string();
    for s in [
        "gkectl update credentials certificate-authorities rotate --admin-cluster --config",
        "rotate --admin-cluster --complete",
        "update-kubeconfig --admin-cluster",
        "(cd /home/ubuntu)",
        "kubectl --kubeconfig /home/ubuntu/kubeconfig version",
    ] {
        assert!(cmds.contains(s), "{s} missing from {cmds}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (tree_hash(&h1.root), tree_hash(&h2.root)),
        before,
        "a dry run changed a host"
    );

    let p = plan_create(&c, &["gke-admin-ca", "--expiring-within", "90d", "--run"]);
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let rot = steps_of(&p, "gke.admin_ca_rotate");
    let out = format!("{}{}", rot[0]["output"], rot[1]["output"]);
    for s in [
        "Beginning CA rotation of admin cluster \\\"gke-admin\\\" with CAVersion 2",
        "first half of the admin cluster CA rotation with CAVersion 2 is done",
        "Verified the updated kubeconfig file \\\"kubeconfig\\\" in the current directory",
        "Successfully completed the CA rotation of the admin cluster with CAVersion 2.",
        "stage: CAVersion 2 completed",
    ] {
        assert!(out.contains(s), "{s} missing from {out}");
    }

    // Both copies: the new CA only (openssl, after base64-decoding), a client certificate
    // from it, 0600, and they reach the user cluster through the admin cluster.
    let st = GkeState::load(&h1).unwrap();
    assert_eq!(
        (st.admin.ca_version, st.admin.stage),
        (2, gke::Stage::Steady)
    );
    let new_fp = openssl_fp(&st.admin.cas[&2].cert_pem, dir.path());
    assert_ne!(new_fp, old_fp);
    let mut clients = Vec::new();
    for (h, kc) in [(&h1, &ws.admin_kubeconfig), (&h2, &kc2)] {
        let (cas, client) = kubeconfig_pems(kc);
        assert_eq!(cas.len(), 1, "{}: {cas:?}", kc.display());
        assert_eq!(openssl_fp(&cas[0], dir.path()), new_fp);
        let ca_f = dir.path().join("ca.pem");
        let cl_f = dir.path().join("cl.pem");
        std::fs::write(&ca_f, &cas[0]).unwrap();
        std::fs::write(&cl_f, &client).unwrap();
        let (ok, msg) = openssl_ok(&[
            "verify",
            "-CAfile",
            ca_f.to_str().unwrap(),
            cl_f.to_str().unwrap(),
        ]);
        assert!(ok, "{}: {msg}", kc.display());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(kc).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (ok, msg) = user_cluster_access(h, kc, "user-cluster-1");
        assert!(ok, "{}: {msg}", kc.display());
        clients.push(openssl_fp(&client, dir.path()));
    }
    // Each workstation got its own client certificate; no key went through the controller.
    assert_ne!(clients[0], clients[1]);
    assert!(!p.to_string().contains("client-key-data"));
    // The old kubeconfig no longer works: the old CA is revoked.
    let (ok, msg) = user_cluster_access(&h1, &old_kc, "user-cluster-1");
    assert!(!ok && msg.contains("x509"), "{msg}");
    let installs = steps_of(&p, "gke.admin_kubeconfig_update");
    assert_eq!(installs[3]["details"]["ca_sha256"][0], new_fp.as_str());
}

#[test]
fn gke_admin_kubeconfig_install_failure_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = admin_ca_workstation(&host);
    // After --complete the admin API server keeps serving its CA-1 certificate: the
    // kubeconfig with the new CA only cannot reach it.
    let mut st = GkeState::load(&host).unwrap();
    st.admin.serving_override = Some(1);
    st.save(&host).unwrap();

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("ws");
    let cfg = agent_config(dir.path(), "ws", &host.root);
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(&c, "ws", "gke.admin_cluster.ca");
    let p = plan_create(&c, &["gke-admin-ca", "--expiring-within", "90d", "--run"]);
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "failed", "{p:#}");
    let ups = steps_of(&p, "gke.admin_kubeconfig_update");
    assert_eq!(ups[0]["state"], "succeeded", "{p:#}");
    assert_eq!(ups[1]["state"], "failed", "{p:#}");
    let msg = ups[1]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not reach its cluster") && msg.contains("rolled back"),
        "{msg}"
    );
    // Byte-identical to what the step before installed, and it still works.
    assert_eq!(
        sha256_file(&ws.admin_kubeconfig),
        ups[0]["details"]["sha256"].as_str().unwrap()
    );
    let (cas, _) = kubeconfig_pems(&ws.admin_kubeconfig);
    assert_eq!(cas.len(), 2);
    let (ok, msg) = user_cluster_access(&host, &ws.admin_kubeconfig, "user-cluster-1");
    assert!(ok, "{msg}");
}

#[test]
fn gke_admin_update_kubeconfig_disk_full_leaves_kubeconfig_alone() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = admin_ca_workstation(&host);
    gke::set_disk_full(&host, true).unwrap();
    let before = std::fs::read(&ws.admin_kubeconfig).unwrap();

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("ws");
    let cfg = agent_config(dir.path(), "ws", &host.root);
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(&c, "ws", "gke.admin_cluster.ca");
    let p = plan_create(&c, &["gke-admin-ca", "--expiring-within", "90d", "--run"]);
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "failed", "{p:#}");
    let up = steps_of(&p, "gke.admin_kubeconfig_update")[0];
    let out = format!("{}{}", up["message"], up["output"]);
    assert!(out.contains("no space left on device"), "{out}");
    assert_eq!(std::fs::read(&ws.admin_kubeconfig).unwrap(), before);
    // Mid-rotation (paused after the first half) the old kubeconfig still works.
    let st = GkeState::load(&host).unwrap();
    assert_eq!(st.admin.stage, gke::Stage::NewCaTrusted);
    let (ok, msg) = user_cluster_access(&host, &ws.admin_kubeconfig, "user-cluster-1");
    assert!(ok, "{msg}");
}

#[test]
fn gke_user_kubeconfig_install_failure_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let mut user = UserClusterSpec::new("user-cluster-1", "user-cluster.yaml");
    user.ca = Lifetime::days(5 * 365 - 20, 20);
    let ws = gke::build_admin_workstation(
        &host,
        &GkeSpec {
            users: vec![user],
            ..GkeSpec::default()
        },
    )
    .unwrap();
    // The user cluster's API server keeps serving from CA 1 after the rotation.
    let mut st = GkeState::load(&host).unwrap();
    st.users.get_mut("user-cluster-1").unwrap().serving_override = Some(1);
    st.save(&host).unwrap();
    let kc = &ws.users[0].kubeconfig;
    let before = std::fs::read(kc).unwrap();

    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("ws");
    let cfg = agent_config(dir.path(), "ws", &host.root);
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(&c, "ws", "gke.user_cluster.ca");
    let p = plan_create(
        &c,
        &[
            "gke-user-ca",
            "--expiring-within",
            "90d",
            "--param",
            "poll=0",
            "--run",
        ],
    );
    let p = wait_plan(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "failed", "{p:#}");
    assert_eq!(step(&p, "gke.fetch_kubeconfig")["state"], "succeeded");
    let inst = step(&p, "kubeconfig.install");
    let msg = inst["message"].as_str().unwrap();
    assert!(
        msg.contains("does not reach its cluster") && msg.contains("rolled back"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(kc).unwrap(),
        before,
        "not rolled back byte for byte"
    );
}

/// `gkectl update credentials certificate-authorities SUB ARGS` on `host`, from `cwd`.
fn gkectl_in(host: &SimHost, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["update", "credentials", "certificate-authorities"];
    a.extend(args);
    let out = Command::new(host.path("/usr/bin/gkectl"))
        .args(&a)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gke_sim_admin_rotation_follows_b3() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let ws = admin_ca_workstation(&host);
    let cfg = ws.admin_config.to_str().unwrap().to_owned();
    let kc = ws.admin_kubeconfig.to_str().unwrap().to_owned();
    let wd = ws.workdir.clone();
    let run = |cwd: &Path, a: &[&str]| {
        let mut v = a.to_vec();
        v.extend(["--config", &cfg, "--kubeconfig", &kc]);
        gkectl_in(&host, cwd, &v)
    };
    let old = std::fs::read(&kc).unwrap();

    // Flag validation, like cobra and gkectl.
    let (code, _, err) = run(&wd, &["rotate", "--complete"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Exit with error:") && err.contains("--admin-cluster"),
        "{err}"
    );
    let (code, _, err) = run(&wd, &["update-kubeconfig"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = gkectl_in(&host, &wd, &["rotate", "--admin-cluster", "--bogus"]);
    assert_eq!(code, 1);
    assert!(err.contains("Error: unknown flag: --bogus"), "{err}");
    let (code, _, err) = gkectl_in(&host, &wd, &["rotate", "--admin-cluster", "--config", &cfg]);
    assert_eq!(code, 1);
    assert!(
        err.contains("required flag(s) \"kubeconfig\" not set"),
        "{err}"
    );
    let (code, _, err) = run(&wd, &["rotate", "--admin-cluster", "--complete"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no CA rotation of the admin cluster is in progress"),
        "{err}"
    );

    // 1: first half, pause. Re-running resumes without a new CA.
    let (code, out, _) = run(&wd, &["rotate", "--admin-cluster"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("with CAVersion 2 is done; the rotation is paused"),
        "{out}"
    );
    let (code, out, _) = run(&wd, &["rotate", "--admin-cluster"]);
    assert_eq!(code, 0);
    assert!(out.contains("already done"), "{out}");
    assert_eq!(GkeState::load(&host).unwrap().admin.cas.len(), 2);
    assert_eq!(
        std::fs::read(&kc).unwrap(),
        old,
        "rotate must not touch the kubeconfig"
    );
    let (_, out, _) = run(&wd, &["status", "--admin-cluster"]);
    assert!(out.contains("reason: CARotationProgressed"), "{out}");
    // --complete refuses a kubeconfig that was not updated.
    let (code, _, err) = run(&wd, &["rotate", "--admin-cluster", "--complete"]);
    assert_eq!(code, 1);
    assert!(err.contains("updated kubeconfig file"), "{err}");

    // 2: update-kubeconfig: old + new CA, client certificate from the new CA.
    let (code, out, _) = run(&wd, &["update-kubeconfig", "--admin-cluster"]);
    assert_eq!(code, 0, "{out}");
    let (cas, _) = kubeconfig_pems(&ws.admin_kubeconfig);
    assert_eq!(cas.len(), 2);
    // --complete only from the directory holding it.
    let (code, _, err) = run(dir.path(), &["rotate", "--admin-cluster", "--complete"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found in the current directory"), "{err}");

    // 3: complete; the old kubeconfig is revoked, the updated one works.
    let (code, out, _) = run(&wd, &["rotate", "--admin-cluster", "--complete"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "Successfully completed the CA rotation of the admin cluster with CAVersion 2."
        ),
        "{out}"
    );
    let old_f = dir.path().join("old");
    std::fs::write(&old_f, &old).unwrap();
    assert!(!user_cluster_access(&host, &old_f, "user-cluster-1").0);
    assert!(user_cluster_access(&host, &ws.admin_kubeconfig, "user-cluster-1").0);

    // 4: update-kubeconfig drops the old CA; again: up to date.
    let (code, _, _) = run(&wd, &["update-kubeconfig", "--admin-cluster"]);
    assert_eq!(code, 0);
    let (cas, _) = kubeconfig_pems(&ws.admin_kubeconfig);
    assert_eq!(cas.len(), 1);
    let (_, out, _) = run(&wd, &["update-kubeconfig", "--admin-cluster"]);
    assert!(out.contains("is up to date"), "{out}");
    let (_, out, _) = run(&wd, &["status", "--admin-cluster"]);
    assert!(out.contains("CAVersion 2 is -\nstatus: True,"), "{out}");
}

#[test]
fn gke_rotation_steps_resent_after_completion_start_no_second_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let host = sim_host(dir.path(), "ws");
    let mut user = UserClusterSpec::new("user-cluster-1", "user-cluster.yaml");
    user.ca = Lifetime::days(5 * 365 - 20, 20);
    let ws = gke::build_admin_workstation(
        &host,
        &GkeSpec {
            admin_ca: Lifetime::days(5 * 365 - 20, 20),
            users: vec![user],
            ..GkeSpec::default()
        },
    )
    .unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("ws");
    let cfg = agent_config(dir.path(), "ws", &host.root);
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    wait_role(&c, "ws", "gke.admin_cluster.ca");
    wait_role(&c, "ws", "gke.user_cluster.ca");

    // Both rotations already ran (as when a step's result and journal entry were lost), but
    // the inventory still shows the old CAs, so the steps are sent again.
    let acfg = ws.admin_config.to_str().unwrap().to_owned();
    let ucfg = ws.users[0].config.to_str().unwrap().to_owned();
    let kc = ws.admin_kubeconfig.to_str().unwrap().to_owned();
    let wd = ws.workdir.clone();
    for a in [
        vec!["rotate", "--admin-cluster"],
        vec!["update-kubeconfig", "--admin-cluster"],
        vec!["rotate", "--admin-cluster", "--complete"],
    ] {
        let mut v = a.clone();
        v.extend(["--config", &acfg, "--kubeconfig", &kc]);
        let (code, out, err) = gkectl_in(&host, &wd, &v);
        assert_eq!(code, 0, "{a:?}: {out}{err}");
    }
    let (code, ..) = gkectl_in(
        &host,
        &wd,
        &["rotate", "--config", &ucfg, "--kubeconfig", &kc],
    );
    assert_eq!(code, 0);
    for _ in 0..4 {
        gkectl_in(
            &host,
            &wd,
            &["status", "--config", &ucfg, "--kubeconfig", &kc],
        );
    }
    let st = GkeState::load(&host).unwrap();
    assert_eq!(
        (st.admin.ca_version, st.users["user-cluster-1"].ca_version),
        (2, 2)
    );
    assert_eq!(st.users["user-cluster-1"].stage, gke::Stage::Steady);

    for recipe in ["gke-user-ca", "gke-admin-ca"] {
        let mut args = vec![recipe, "--expiring-within", "90d", "--run"];
        // Only gke-user-ca polls (gke-admin-ca refuses a `poll` it would ignore).
        if recipe == "gke-user-ca" {
            args.extend(["--param", "poll=0"]);
        }
        let p = plan_create(&c, &args);
        let p = wait_plan(&c, p["id"].as_str().unwrap());
        assert_eq!(p["state"], "succeeded", "{p:#}");
        let out = p["steps"].to_string();
        assert!(
            out.contains("not starting another rotation"),
            "{recipe}: {out}"
        );
    }
    let st = GkeState::load(&host).unwrap();
    assert_eq!(
        (st.admin.ca_version, st.users["user-cluster-1"].ca_version),
        (2, 2),
        "a second rotation was started"
    );
    // And the kubeconfigs were still brought up to date.
    assert_eq!(kubeconfig_pems(&ws.admin_kubeconfig).0.len(), 1);
    assert!(user_cluster_access(&host, &ws.admin_kubeconfig, "user-cluster-1").0);
    let (cas, _) = kubeconfig_pems(&ws.users[0].kubeconfig);
    assert_eq!(
        openssl_fp(&cas[0], dir.path()),
        openssl_fp(&st.users["user-cluster-1"].cas[&2].cert_pem, dir.path())
    );
}
