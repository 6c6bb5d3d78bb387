//! Fault injection for the steps that could not resume before (issue 8): `kubeadm.renew_all`,
//! `ovirt.engine_reissue`, the engine API's `ovirt.power_management` and
//! `ovirt.enroll_certificate`, and an agent killed between its enrollment and saving its
//! certificate. Each case is judged from the simulated hosts' state (certificate and key files
//! against the step's backup and against what the killed attempt left, the engine's
//! `database.txt` rows, the API's record of every status and power-management change, the
//! kubelet's containers), not only from journals.
//!
//! To keep CI time down, one plan passes several kill points: the agent is started again with
//! the next `CERTFLEET_TEST_CRASH_AT` point after each kill, so a step is resumed several times
//! in a row, each resumption from what the previous one left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::kubeadm::{self, KubeadmSpec};
use certfleet_integration_tests::sim::ovirt::api::{self, ApiState};
use certfleet_integration_tests::sim::ovirt::{Engine, EngineSpec, OvirtVersion, setup};
use certfleet_integration_tests::sim::{self, Lifetime, SimHost};
use serde_json::Value;

use crate::crash::{backed_up, journals_have_no_duplicates, wait_killed};
use crate::ovirt_rotation::{PKI, check_renewed, fleet_spec, fqdn, not_after, openssl, s, serial};
use crate::support::{self, Controller, Proc, wait_for};

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Waits until plan `id` ends.
fn wait_done(c: &Controller, id: &str) -> Value {
    wait_for(
        &format!("plan {id} to finish"),
        Duration::from_secs(180),
        || {
            let p = c.json(&["plan", "show", id, "--output-lines"]);
            matches!(
                p["state"].as_str(),
                Some("succeeded" | "failed" | "aborted")
            )
            .then_some(p)
        },
    )
}

/// Creates and runs a plan once the inventory allows it.
fn run_plan(c: &Controller, args: &[&str]) -> String {
    let mut a = vec!["plan", "create"];
    a.extend(args);
    a.extend(["--run", "-o", "json"]);
    let plan = wait_for("plan create", Duration::from_secs(60), || {
        let out = c.cli_as(&c.admin(), &a);
        if out.status.success() {
            serde_json::from_slice::<Value>(&out.stdout).ok()
        } else {
            std::thread::sleep(Duration::from_millis(300));
            None
        }
    });
    plan["id"].as_str().unwrap().to_owned()
}

/// The kubeadm files of reference C1 a renewal touches: each leaf `.crt` with its `.key`, and
/// the kubeconfigs with embedded credentials.
const KUBEADM_FILES: &[&str] = &[
    "pki/apiserver.crt",
    "pki/apiserver.key",
    "pki/apiserver-etcd-client.crt",
    "pki/apiserver-etcd-client.key",
    "pki/apiserver-kubelet-client.crt",
    "pki/apiserver-kubelet-client.key",
    "pki/front-proxy-client.crt",
    "pki/front-proxy-client.key",
    "pki/etcd/server.crt",
    "pki/etcd/server.key",
    "pki/etcd/peer.crt",
    "pki/etcd/peer.key",
    "pki/etcd/healthcheck-client.crt",
    "pki/etcd/healthcheck-client.key",
    "admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
    "super-admin.conf",
];

fn kubeadm_files(host: &SimHost) -> BTreeMap<&'static str, Vec<u8>> {
    KUBEADM_FILES
        .iter()
        .map(|f| (*f, read(&host.path(&format!("/etc/kubernetes/{f}")))))
        .collect()
}

/// Container id of the running `pod`.
fn running_id(host: &SimHost, pod: &str) -> Option<String> {
    kubeadm::kubelet_state(host)
        .unwrap()
        .containers
        .into_iter()
        .find(|c| c.name == pod && c.state == "Running")
        .map(|c| c.id)
}

/// `kubeadm.renew_all` killed after kubeadm ran (and kubeadm made to look cut half-way: one
/// leaf never renewed, one with a new key beside its old certificate, one kubeconfig never
/// renewed), then with a static pod's manifest held out, after the first pod restart, and
/// before the result. Resumed each time: only the three leaves kubeadm missed are renewed
/// (every other file stays byte for byte what the first attempt wrote), the held manifest is
/// put back, no pod restarted twice, every pod runs on the final files, and the step's backup
/// still holds the pre-plan certificates.
#[test]
fn kubeadm_renew_all_resumed_renews_only_what_kubeadm_missed_and_restarts_each_pod_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(dir.path().join("cp-1"), sim::default_sim_bin()).unwrap();
    host.link_real_tool("/usr/bin/openssl").unwrap();
    kubeadm::build_kubeadm_node(
        &host,
        &KubeadmSpec {
            node_name: "cp-1".into(),
            rsa: false,
            ..KubeadmSpec::default()
        },
    )
    .unwrap();
    let cfg = dir.path().join("cp-1.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = \"{}\"\ntool_timeout = \"20s\"\nscan_interval = \"1h\"\n",
            host.root.display()
        ),
    )
    .unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("cp-1");
    let pre = kubeadm_files(&host);
    let k = |f: &str| host.path(&format!("/etc/kubernetes/{f}"));
    let crash = |point: &str| {
        c.run_agent_env(
            &state,
            Some(&cfg),
            &[],
            &[(
                "CERTFLEET_TEST_CRASH_AT",
                &format!("kubeadm.renew_all:{point}"),
            )],
        )
    };

    let mut agent = crash("after-renew");
    // The leaves are valid ~335 days: a wide window takes them all.
    let id = run_plan(
        &c,
        &[
            "kubeadm-certs",
            "--expiring-within",
            "400d",
            "--param",
            "poll=0",
            "--param",
            "pod_start=10",
        ],
    );
    wait_killed(&mut agent, "after-renew");
    let first = kubeadm_files(&host);
    for (f, b) in &first {
        assert_ne!(b, &pre[f], "{f} not renewed by the first attempt");
    }
    // kubeadm cut half-way: apiserver never reached, etcd-server's new key written but not its
    // certificate (kubeadm writes the key first), scheduler.conf never reached.
    let missed = [
        "pki/apiserver.crt",
        "pki/apiserver.key",
        "pki/etcd/server.crt",
        "scheduler.conf",
    ];
    for f in missed {
        std::fs::write(k(f), &pre[f]).unwrap();
    }

    agent = crash("manifest-held");
    wait_killed(&mut agent, "manifest-held");
    let second = kubeadm_files(&host);
    for (f, b) in &second {
        if missed.contains(f) || *f == "pki/etcd/server.key" {
            assert_ne!(
                b, &pre[*f],
                "{f}: the resumed step did not renew what kubeadm missed"
            );
        } else {
            assert_eq!(b, &first[*f], "{f} was renewed twice");
        }
    }
    let pre_api = dir_file(&dir, "pre-apiserver.crt", &pre["pki/apiserver.crt"]);
    assert!(
        not_after(&k("pki/apiserver.crt")) > not_after(&pre_api),
        "apiserver.crt not renewed"
    );
    assert_eq!(
        openssl(&[
            "x509",
            "-in",
            &s(&k("pki/etcd/server.crt")),
            "-noout",
            "-pubkey"
        ]),
        openssl(&["pkey", "-in", &s(&k("pki/etcd/server.key")), "-pubout"]),
        "etcd/server.crt and its key do not match"
    );
    let held = k("manifests/kube-apiserver.yaml");
    assert!(
        !held.exists(),
        "the kill did not happen with the manifest held"
    );

    agent = crash("after-restart");
    wait_killed(&mut agent, "after-restart");
    assert!(held.is_file(), "the held manifest was not put back");
    assert_eq!(
        kubeadm_files(&host),
        second,
        "files changed without a renewal due"
    );
    let api_id = running_id(&host, "kube-apiserver").expect("kube-apiserver running");

    agent = crash("before-result");
    wait_killed(&mut agent, "before-result");
    agent = c.run_agent(&state, Some(&cfg), &[]);
    let done = wait_done(&c, &id);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    drop(agent);

    assert_eq!(
        kubeadm_files(&host),
        second,
        "a resumed attempt renewed again"
    );
    assert_eq!(
        running_id(&host, "kube-apiserver").as_deref(),
        Some(api_id.as_str()),
        "kube-apiserver restarted twice"
    );
    let kubelet = kubeadm::kubelet_state(&host).unwrap();
    for (pod, _) in kubeadm::STATIC_PODS {
        assert!(k(&format!("manifests/{pod}.yaml")).is_file(), "{pod}");
        let cont = kubelet.containers.iter().find(|c| c.name == *pod).unwrap();
        assert_eq!(cont.state, "Running", "{pod}: {cont:?}");
        for (path, fp) in &cont.loaded {
            assert_eq!(
                fp,
                &certfleet_common::pki::sha256_hex(&read(&host.path(path))),
                "{pod} runs on an old {path}"
            );
        }
    }
    let hold = host.path("/etc/kubernetes/certfleet-manifests-hold");
    let left: Vec<_> = std::fs::read_dir(&hold)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "manifests left held: {left:?}");
    let step = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "kubeadm.renew_all")
        .unwrap();
    assert_eq!(
        step["details"]["restarted"],
        serde_json::json!([
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "etcd"
        ])
    );
    let sid = step["id"].as_str().unwrap();
    for f in ["pki/apiserver.crt", "pki/etcd/server.key", "admin.conf"] {
        assert_eq!(
            backed_up(&state, sid, &format!("/etc/kubernetes/{f}")),
            pre[f],
            "the step's backup lost the pre-plan {f}"
        );
    }
    journals_have_no_duplicates(std::slice::from_ref(&state), "kubeadm");
}

/// Writes `bytes` to a scratch file in `dir` (for openssl).
fn dir_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Rows of the engine CA's `database.txt`.
fn db_rows(engine: &SimHost) -> Vec<String> {
    String::from_utf8(read(&engine.path(&format!("{PKI}/database.txt"))))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Serial (upper-case hex) of a `database.txt` row.
fn row_serial(row: &str) -> String {
    row.split('\t').nth(3).unwrap().to_owned()
}

const OVN: &[&str] = &["ovirt-provider-ovn", "ovn-ndb", "ovn-sdb"];

/// The oVirt engine's agent killed inside `ovirt.engine_reissue` (after `openssl ca` signed,
/// after the new `.p12` replaced the old one, before the result), then inside the
/// API recipe's `ovirt.power_management` (after its `PUT`) and `ovirt.enroll_certificate`
/// (after the engine accepted the `POST`, before the host showed any sign of it). Resumed:
/// one signature per re-issued entity and one enrollment (database rows, API events), the
/// OVN certificates keep their keys in `.p12` and `key.nopass`, the re-issue step's backup
/// holds the pre-plan files, and power management ends as it was before the plan, with one
/// `PUT` each way.
#[test]
fn ovirt_engine_reissue_and_api_actions_resumed_after_kills_sign_and_enroll_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let extra = format!(
        "\"ovirt.api_url\" = \"http://127.0.0.1:{port}/ovirt-engine/api\"\n\
         \"ovirt.api_password_file\" = \"/etc/certfleet/ovirt-api.password\"\n\
         \"ovirt.api_poll_ms\" = \"100\"\n"
    );
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    for n in OVN {
        spec.lifetimes
            .insert(n.to_string(), Lifetime::days(1800, 25));
    }
    let mut f = fleet_spec(dir.path(), spec, &[("kvm01", 20)], &extra);
    setup::engine_services(&Engine::load(&f.engine).unwrap()).unwrap();
    f.engine
        .write("/etc/certfleet/ovirt-api.password", "pw\n", 0o600)
        .unwrap();
    api::set_password(&f.engine, "pw").unwrap();
    api::register_host(
        &f.engine,
        "kvm01",
        &fqdn("kvm01"),
        &f.hosts["kvm01"].root,
        "Default",
    )
    .unwrap();
    let mut cmd = Command::new(support::bin("certfleet-sim"));
    cmd.arg("--root").arg(&f.engine.root).args([
        "ovirt-engine-api",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let _api: Proc = Proc::spawn(cmd, dir.path().join("api.log"));
    wait_for("the engine API to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let cfg = dir.path().join("agent.toml");
    let state = f.c.dir.join("agent-engine");
    let root = f.engine.root.display().to_string();
    let pki = |rel: &str| f.engine.path(&format!("{PKI}/{rel}"));
    let pubkey = |p: &Path| openssl(&["x509", "-in", &s(p), "-noout", "-pubkey"]);

    // 1. ovirt-engine: the OVN certificates are due, nothing for engine-setup.
    let before: BTreeMap<&str, (Vec<u8>, Vec<u8>, String)> = OVN
        .iter()
        .map(|n| {
            let cer = pki(&format!("certs/{n}.cer"));
            (
                *n,
                (
                    read(&cer),
                    read(&pki(&format!("keys/{n}.p12"))),
                    pubkey(&cer),
                ),
            )
        })
        .collect();
    let rows = db_rows(&f.engine);
    let points = [
        "ovirt.engine_reissue:after-sign",
        "ovirt.engine_reissue:after-p12",
        "ovirt.engine_reissue:before-result",
    ];
    f._agents[0].kill9();
    f._agents[0] = f.c.run_agent_env(
        &state,
        Some(&cfg),
        &["--root", &root],
        &[("CERTFLEET_TEST_CRASH_AT", points[0])],
    );
    f.c.wait_connected(2);
    let id = run_plan(
        &f.c,
        &[
            "ovirt-engine",
            "--expiring-within",
            "30d",
            "--failure-budget",
            "0",
        ],
    );
    for (i, point) in points.iter().enumerate() {
        wait_killed(&mut f._agents[0], point);
        let next: Vec<(&str, &str)> = points
            .get(i + 1)
            .map(|p| vec![("CERTFLEET_TEST_CRASH_AT", *p)])
            .unwrap_or_default();
        f._agents[0] =
            f.c.run_agent_env(&state, Some(&cfg), &["--root", &root], &next);
    }
    let done = wait_done(&f.c, &id);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let now_rows = db_rows(&f.engine);
    assert_eq!(
        now_rows.len(),
        rows.len() + OVN.len(),
        "not one signature per re-issued entity: {:#?}",
        &now_rows[rows.len()..]
    );
    let new_serials: Vec<String> = now_rows[rows.len()..]
        .iter()
        .map(|r| row_serial(r))
        .collect();
    let ca = s(&pki("ca.pem"));
    for n in OVN {
        let cer = pki(&format!("certs/{n}.cer"));
        let ser = serial(&cer);
        assert!(
            new_serials.contains(&ser),
            "{n}: serial {ser} not among {new_serials:?}"
        );
        assert!(
            openssl(&["verify", "-CAfile", &ca, &s(&cer)]).contains(": OK"),
            "{n}"
        );
        assert_eq!(pubkey(&cer), before[n].2, "{n}: key changed");
        let nopass = openssl(&[
            "pkey",
            "-in",
            &s(&pki(&format!("keys/{n}.key.nopass"))),
            "-pubout",
        ]);
        assert_eq!(nopass, before[n].2, "{n}: key.nopass holds another key");
        let in_p12 = openssl(&[
            "pkcs12",
            "-in",
            &s(&pki(&format!("keys/{n}.p12"))),
            "-passin",
            "pass:mypass",
            "-nokeys",
            "-clcerts",
        ]);
        let p = dir_file(&dir, "p12.pem", in_p12.as_bytes());
        assert_eq!(serial(&p), ser, "{n}: the .p12 holds another certificate");
        let step = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["action"] == "ovirt.engine_reissue"
                    && s["name"].as_str().unwrap().contains(&format!(" {n} "))
            })
            .unwrap_or_else(|| panic!("no re-issue step for {n}: {done:#}"));
        let sid = step["id"].as_str().unwrap();
        assert_eq!(
            backed_up(&state, sid, &format!("certs/{n}.cer")),
            before[n].0,
            "{n}: backup"
        );
        assert_eq!(
            backed_up(&state, sid, &format!("keys/{n}.p12")),
            before[n].1,
            "{n}: backup"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(pki("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".certfleet."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // 2. ovirt-hosts through the engine API: killed after the power-management PUT, then
    // after the enrollment POST.
    let before_na = not_after(&f.hosts["kvm01"].path(crate::ovirt_rotation::VDSM_CERT));
    let rows = db_rows(&f.engine);
    let points = [
        "ovirt.power_management:before-result",
        "ovirt.enroll_certificate:after-enroll",
    ];
    f._agents[0].kill9();
    f._agents[0] = f.c.run_agent_env(
        &state,
        Some(&cfg),
        &["--root", &root],
        &[("CERTFLEET_TEST_CRASH_AT", points[0])],
    );
    f.c.wait_connected(2);
    let id = run_plan(
        &f.c,
        &[
            "ovirt-hosts",
            "--expiring-within",
            "30d",
            "--failure-budget",
            "0",
        ],
    );
    for (i, point) in points.iter().enumerate() {
        wait_killed(&mut f._agents[0], point);
        let next: Vec<(&str, &str)> = points
            .get(i + 1)
            .map(|p| vec![("CERTFLEET_TEST_CRASH_AT", *p)])
            .unwrap_or_default();
        f._agents[0] =
            f.c.run_agent_env(&state, Some(&cfg), &["--root", &root], &next);
    }
    let done = wait_done(&f.c, &id);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let st = ApiState::load(&f.engine).unwrap();
    let h = st.host("kvm01").unwrap();
    assert_eq!(
        h.history,
        [
            "up",
            "preparing_for_maintenance",
            "maintenance",
            "installing",
            "maintenance",
            "unassigned",
            "initializing",
            "up"
        ],
        "kvm01 went through another enrollment"
    );
    assert!(h.pm_enabled, "power management not restored");
    assert_eq!(
        h.pm_history,
        [false, true],
        "power management was not set once each way"
    );
    let enrolled = st.events.iter().filter(|e| e["code"] == "881").count();
    assert_eq!(enrolled, 1, "{:?}", st.events);
    // One enrollment signs the VDSM certificate and, when the host has one, the vmconsole
    // host certificate (the playbook's vmconsole role).
    let vmconsole = f.hosts["kvm01"]
        .path(&format!(
            "{}/host-ssh_host_rsa",
            certfleet_integration_tests::sim::ovirt::engine::VMCONSOLE_PKI
        ))
        .exists();
    let added = db_rows(&f.engine).len() - rows.len();
    assert_eq!(
        added,
        1 + usize::from(vmconsole),
        "the engine signed more than one enrollment's certificates"
    );
    check_renewed(&f, "kvm01", before_na);
    let pm_off = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "ovirt.power_management")
        .unwrap();
    assert_eq!(pm_off["details"]["previous"], true, "{pm_off:#}");
    journals_have_no_duplicates(std::slice::from_ref(&state), "ovirt");
}

/// An agent killed between the controller's enrollment answer and saving its certificate, with
/// a capped multi-use token: enrolling again (same state directory, so the same key, same
/// token) succeeds without spending a second use, so the cap still admits the next host; the
/// certificate the killed agent never saved is superseded.
#[test]
fn enrollment_killed_before_saving_its_certificate_loses_no_use_of_a_capped_token() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let token = c
        .cli(&["token", "create", "--ttl", "10m", "--uses", "2"])
        .trim()
        .to_owned();
    let enroll = |name: &str, env: &[(&str, &str)]| {
        Command::new(support::bin("certfleet-agent"))
            .args([
                "enroll",
                "--controller",
                &c.addr,
                "--token",
                &token,
                "--name",
                name,
            ])
            .arg("--state-dir")
            .arg(dir.path().join(name))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let uses = || {
        let t = c.json(&["token", "list"]);
        t[0]["uses"].as_u64().unwrap()
    };
    let out = enroll("a1", &[("CERTFLEET_TEST_CRASH_AT", "enroll:before-save")]);
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert!(dir.path().join("a1/key.pem").is_file());
    assert!(!dir.path().join("a1/cert.pem").exists());
    assert_eq!(uses(), 1);
    let agents = c.json(&["agents", "list"]);
    let first_id = agents[0]["id"].as_str().unwrap().to_owned();

    let out = enroll("a1", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(uses(), 1, "the repeated enrollment spent another use");
    let meta: Value = serde_json::from_slice(&read(&dir.path().join("a1/agent.json"))).unwrap();
    assert_eq!(meta["agent_id"], first_id.as_str());
    // The cap still admits the second host, and refuses a third.
    let out = enroll("a2", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(uses(), 2);
    let out = enroll("a3", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("used up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent works with the certificate it saved; once it connected, the same token and
    // key are an ordinary (refused) enrollment again.
    let _a1 = c.run_agent(&dir.path().join("a1"), None, &[]);
    c.wait_connected(1);
    std::fs::remove_file(dir.path().join("a1/agent.json")).unwrap();
    let out = enroll("a1", &[]);
    assert!(
        !out.status.success(),
        "a connected agent was enrolled again"
    );
    assert_eq!(c.json(&["agents", "list"]).as_array().unwrap().len(), 2);
}
