//! The agent's vCenter SOAP client (`agent/src/vim.rs`) against VMware's own vCenter simulator
//! (govmomi vcsim, built by `packaging/build-vcsim.sh` from Debian's govmomi source and
//! extended in `integration-tests/vcsim/main.go` with the CertificateManager and host
//! connection calls vcsim 0.24 lacks). One simulator, two clusters: a healthy host, a host in
//! maintenance mode, a disconnected host, and a host whose certificate expired (not
//! responding).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certfleet_agent::vim::{HostInfo, MoRef, Session, VimError, VimSettings};
use serde_json::Value;

use crate::support::{Controller, Proc, http_get, wait_for};

/// Builds (or reuses the cached) certfleet-vcsim once per test process; returns its path.
fn vcsim_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-vcsim.sh");
            let out = Command::new(&script).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

pub(crate) struct Vcsim {
    _proc: Proc,
    pub(crate) manifest: Value,
    pub(crate) dir: PathBuf,
}

impl Vcsim {
    pub(crate) fn start(dir: &Path, spec: &Value) -> Vcsim {
        std::fs::create_dir_all(dir).unwrap();
        let spec_path = dir.join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let mut cmd = Command::new(vcsim_binary());
        cmd.arg(&spec_path).arg(dir);
        let proc = Proc::spawn(cmd, dir.join("vcsim.log"));
        let manifest = wait_for("vcsim manifest", Duration::from_secs(20), || {
            let t = std::fs::read_to_string(dir.join("vcsim.json")).ok()?;
            serde_json::from_str::<Value>(&t).ok()
        });
        Vcsim {
            _proc: proc,
            manifest,
            dir: dir.to_owned(),
        }
    }

    pub(crate) fn settings(&self, password: &str) -> VimSettings {
        let pw = self.dir.join(format!("pw-{}", password.len()));
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        VimSettings {
            url: self.manifest["url"].as_str().unwrap().to_owned(),
            user: "administrator@vsphere.local".into(),
            password_file: pw,
            ca_file: Some(self.dir.join("vmca-root.pem")),
            timeout: Duration::from_secs(10),
        }
    }

    fn state(&self) -> Value {
        let ctl = self.manifest["control"].as_str().unwrap();
        let addr = ctl.trim_start_matches("http://");
        serde_json::from_str(&http_get(addr, "/ctl/state").unwrap()).unwrap()
    }

    fn endpoint(&self, host: &str) -> String {
        self.manifest["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == host)
            .unwrap()["endpoint"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn pem_fingerprint(pem: &[u8]) -> String {
    let der = certfleet_common::pem::first_certificate(pem).unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

fn served(addr: &str) -> String {
    let chain =
        certfleet_agent::collect::endpoint::probe(addr, "esxi.lab.local", Duration::from_secs(5))
            .unwrap();
    certfleet_common::pki::sha256_hex(&chain[0])
}

fn host<'a>(hosts: &'a [HostInfo], name: &str) -> &'a HostInfo {
    hosts.iter().find(|h| h.name == name).unwrap()
}

/// `certfleet-agent scan -o json` with the esxi collector pointed at the simulator.
fn agent_scan(vc: &Vcsim, config: &Path) -> Value {
    let mut toml = format!(
        "root = \"/\"\nplatforms = [\"esxi\"]\n[settings]\n\"esxi.vim_url\" = \"{}\"\n\
\"esxi.vim_user\" = \"administrator@vsphere.local\"\n\"esxi.vim_password_file\" = \"{}\"\n\
\"esxi.vim_ca_file\" = \"{}\"\n",
        vc.manifest["url"].as_str().unwrap(),
        vc.settings("s3cret&<pw>").password_file.display(),
        vc.dir.join("vmca-root.pem").display()
    );
    for h in vc.manifest["hosts"].as_array().unwrap() {
        toml.push_str(&format!(
            "\"esxi.endpoint.{}\" = \"{}\"\n",
            h["name"].as_str().unwrap(),
            h["endpoint"].as_str().unwrap()
        ));
    }
    std::fs::write(config, toml).unwrap();
    let out = Command::new(crate::support::bin("certfleet-agent"))
        .args(["scan", "-o", "json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait(s: &Session, task: &MoRef, method: &str) -> Result<(), VimError> {
    s.wait_task(
        task,
        method,
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
}

#[test]
fn the_vim_client_reads_and_renews_esxi_certificates_through_vcsim() {
    let tmp = tempfile::tempdir().unwrap();
    let vc = Vcsim::start(
        &tmp.path().join("vc"),
        &serde_json::json!({
            "clusters": 2, "hosts_per_cluster": 3, "mode": "vmca",
            "user": "administrator@vsphere.local", "password": "s3cret&<pw>",
            "hosts": {
                "DC0_C0_H1": {"maintenance": true},
                "DC0_C1_H0": {"disconnected": true},
                "DC0_C1_H1": {"expired": true},
                "DC0_C0_H2": {"stale_endpoint": true}
            }
        }),
    );

    // A wrong password is vCenter's InvalidLogin fault, naming the URL.
    let err = Session::login(&vc.settings("wrong"))
        .err()
        .expect("login refused");
    assert_eq!(err.fault(), Some("InvalidLogin"), "{err}");
    assert!(err.to_string().contains("/sdk"), "{err}");
    // A CA that did not sign vCenter's certificate: the TLS handshake fails.
    let mut other_ca = vc.settings("s3cret&<pw>");
    let rc = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(tmp.path().join("other.pem"), rc.cert.pem()).unwrap();
    other_ca.ca_file = Some(tmp.path().join("other.pem"));
    assert!(matches!(
        Session::login(&other_ca),
        Err(VimError::Transport { .. })
    ));

    let s = Session::login(&vc.settings("s3cret&<pw>")).unwrap();
    let hosts = s.hosts().unwrap();
    let names: Vec<(&str, &str)> = hosts
        .iter()
        .map(|h| (h.cluster.as_str(), h.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("DC0_C0", "DC0_C0_H0"),
            ("DC0_C0", "DC0_C0_H1"),
            ("DC0_C0", "DC0_C0_H2"),
            ("DC0_C1", "DC0_C1_H0"),
            ("DC0_C1", "DC0_C1_H1"),
            ("DC0_C1", "DC0_C1_H2")
        ]
    );
    let state = vc.state();
    for h in &hosts {
        assert_eq!(
            pem_fingerprint(&h.certificate),
            state["hosts"][&h.name]["certificate_sha256"],
            "{}: config.certificate",
            h.name
        );
        assert_eq!(
            served(&vc.endpoint(&h.name)),
            pem_fingerprint(&h.certificate)
        );
    }
    assert!(host(&hosts, "DC0_C0_H1").in_maintenance_mode);
    assert_eq!(host(&hosts, "DC0_C0_H0").connection_state, "connected");
    assert_eq!(host(&hosts, "DC0_C1_H0").connection_state, "disconnected");
    assert_eq!(host(&hosts, "DC0_C1_H1").connection_state, "notResponding");

    let opts = s.options("vpxd.certmgmt.").unwrap();
    let get = |k: &str| opts.iter().find(|o| o.key == k).map(|o| o.value.as_str());
    assert_eq!(get("vpxd.certmgmt.mode"), Some("vmca"));
    assert_eq!(get("vpxd.certmgmt.certs.daysValid"), Some("1825"));

    // Refresh a connected host: a new certificate in vCenter and on the host's endpoint.
    let healthy = host(&hosts, "DC0_C0_H0");
    let before = pem_fingerprint(&healthy.certificate);
    let t = s
        .refresh_certificates(std::slice::from_ref(&healthy.moref))
        .unwrap();
    wait(&s, &t, "CertMgrRefreshCertificates_Task").unwrap();
    let after = s.hosts().unwrap();
    let renewed = pem_fingerprint(&host(&after, "DC0_C0_H0").certificate);
    assert_ne!(renewed, before);
    assert_eq!(served(&vc.endpoint("DC0_C0_H0")), renewed);

    // A host that got its new certificate but still serves the old one.
    let stale = host(&hosts, "DC0_C0_H2");
    let t = s
        .refresh_certificates(std::slice::from_ref(&stale.moref))
        .unwrap();
    wait(&s, &t, "CertMgrRefreshCertificates_Task").unwrap();

    // The agent's esxi collector sees the same through vCenter and the hosts' endpoints.
    let scan = agent_scan(&vc, &tmp.path().join("agent.toml"));
    let esxi: Vec<&Value> = scan["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "vsphere.esxi_host")
        .collect();
    let renewed_view = esxi
        .iter()
        .find(|c| c["fingerprint_sha256"] == renewed.as_str())
        .expect("renewed host certificate in the scan");
    let kinds: Vec<&str> = renewed_view["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"vcenter") && kinds.contains(&"endpoint"),
        "{kinds:?}"
    );
    let health = scan["health"].as_array().unwrap();
    let fact = |kind: &str, subject: &str| {
        health
            .iter()
            .find(|h| h["kind"] == kind && h["subject"].as_str().unwrap().contains(subject))
            .unwrap_or_else(|| panic!("no {kind} fact for {subject} in {health:#?}"))
    };
    assert_eq!(
        fact("endpoint.stale", &vc.endpoint("DC0_C0_H2"))["healthy"],
        false
    );
    assert!(
        !health
            .iter()
            .any(|h| h["kind"] == "endpoint.stale"
                && h["subject"] == vc.endpoint("DC0_C0_H0").as_str()),
        "{health:#?}"
    );
    assert_eq!(
        fact("esxi.host", "DC0_C0_H1")["state"],
        "connected (maintenance mode)"
    );
    assert_eq!(fact("esxi.host", "DC0_C1_H0")["state"], "disconnected");
    assert_eq!(fact("esxi.certmgmt", "/sdk")["state"], "vmca");

    // Maintenance mode and disconnected hosts: the task fails with the fault's type.
    for (name, fault) in [
        ("DC0_C0_H1", "InvalidState"),
        ("DC0_C1_H0", "HostNotConnected"),
    ] {
        let t = s
            .refresh_certificates(&[host(&hosts, name).moref.clone()])
            .unwrap();
        let err = wait(&s, &t, "CertMgrRefreshCertificates_Task").unwrap_err();
        assert_eq!(err.fault(), Some(fault), "{name}: {err}");
        assert!(err.to_string().contains(&t.value), "{err}");
    }

    // The expired host: disconnect, reconnect, then refresh.
    let expired = host(&hosts, "DC0_C1_H1").moref.clone();
    wait(
        &s,
        &s.disconnect_host(&expired).unwrap(),
        "DisconnectHost_Task",
    )
    .unwrap();
    // vCenter does not take the expired certificate back without its thumbprint, nor with
    // another one.
    let served_der = certfleet_agent::collect::endpoint::probe(
        &vc.endpoint("DC0_C1_H1"),
        "esxi.lab.local",
        Duration::from_secs(5),
    )
    .unwrap()
    .remove(0);
    let thumb = certfleet_agent::act::esxi::sha1_thumbprint(&served_der);
    for given in [None, Some("00:11:22")] {
        let err = wait(
            &s,
            &s.reconnect_host(&expired, given).unwrap(),
            "ReconnectHost_Task",
        )
        .unwrap_err();
        assert_eq!(err.fault(), Some("SSLVerifyFault"), "{err}");
    }
    wait(
        &s,
        &s.reconnect_host(&expired, Some(&thumb)).unwrap(),
        "ReconnectHost_Task",
    )
    .unwrap();
    assert_eq!(
        host(&s.hosts().unwrap(), "DC0_C1_H1").connection_state,
        "connected"
    );
    let t = s
        .refresh_certificates(std::slice::from_ref(&expired))
        .unwrap();
    wait(&s, &t, "CertMgrRefreshCertificates_Task").unwrap();

    // A new root: the CA refresh pushes it to the host.
    let ctl = vc.manifest["control"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    let new_root = http_get(ctl, "/ctl/rotate-root").unwrap().trim().to_owned();
    let t = s.refresh_ca_certificates(&[expired]).unwrap();
    wait(&s, &t, "CertMgrRefreshCACertificatesAndCRLs_Task").unwrap();
    let st = vc.state();
    assert_eq!(
        st["hosts"]["DC0_C1_H1"]["trusted_root_sha256"],
        new_root.as_str()
    );
    assert_ne!(
        st["hosts"]["DC0_C0_H0"]["trusted_root_sha256"],
        new_root.as_str()
    );
    s.logout();
}

/// The inventory's ESXi host certificates at `vcenter` locations: host name → location detail.
fn esxi_inventory(c: &Controller) -> BTreeMap<String, String> {
    let inv = c.json(&["inventory"]);
    let mut out = BTreeMap::new();
    for r in inv.as_array().unwrap() {
        if r["role"] != "vsphere.esxi_host" {
            continue;
        }
        for l in r["locations"].as_array().unwrap() {
            if l["kind"] == "vcenter" {
                out.insert(
                    l["path"].as_str().unwrap().to_owned(),
                    l["detail"].as_str().unwrap_or("").to_owned(),
                );
            }
        }
    }
    out
}

/// `esxi-hosts` end to end: a controller, the agent on the "VCSA" talking to vcsim, two
/// clusters with a host in maintenance mode, a host with a custom certificate in vmca mode, a
/// disconnected host, an expired (not responding)
/// host, a host whose HA agent is isolated, a vSAN member whose vSAN peer is disconnected, and
/// a host that keeps serving its old certificate. The VMCA root is rotated before the run, so
/// every refreshed host also gets the CA refresh. The agent is killed right after it started
/// the canary's refresh task (kept running by vcsim): resumed, it waits for that task and
/// every host is refreshed exactly once. Then vCenter switches to custom mode and the recipe
/// refuses with the reason.
#[test]
fn esxi_hosts_recipe_refreshes_in_waves_skips_with_reasons_and_reconnects_the_expired_host() {
    let tmp = tempfile::tempdir().unwrap();
    let vc = Vcsim::start(
        &tmp.path().join("vc"),
        &serde_json::json!({
            "clusters": 2, "hosts_per_cluster": 5, "mode": "vmca", "host_days_left": 20,
            "user": "administrator@vsphere.local", "password": "pw",
            "hosts": {
                "DC0_C0_H1": {"maintenance": true},
                "DC0_C0_H2": {"stale_endpoint": true},
                "DC0_C0_H3": {"custom": true},
                "DC0_C0_H4": {"ha_state": "networkIsolated"},
                "DC0_C1_H0": {"disconnected": true, "vsan": true},
                "DC0_C1_H1": {"expired": true},
                "DC0_C1_H3": {"vsan": true}
            }
        }),
    );
    let c = Controller::start(&tmp.path().join("ctl"), &[]);
    let mut toml = format!(
        "platforms = [\"esxi\"]\nscan_interval = \"2s\"\n[settings]\n\"esxi.vim_url\" = \"{}\"\n\
\"esxi.vim_user\" = \"administrator@vsphere.local\"\n\"esxi.vim_password_file\" = \"{}\"\n\
\"esxi.vim_ca_file\" = \"{}\"\n",
        vc.manifest["url"].as_str().unwrap(),
        vc.settings("pw").password_file.display(),
        vc.dir.join("vmca-root.pem").display()
    );
    for h in vc.manifest["hosts"].as_array().unwrap() {
        toml.push_str(&format!(
            "\"esxi.endpoint.{}\" = \"{}\"\n",
            h["name"].as_str().unwrap(),
            h["endpoint"].as_str().unwrap()
        ));
    }
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, toml).unwrap();
    let state = c.enroll("vcsa");
    let mut agent = c.run_agent(&state, Some(&cfg), &[]);
    c.wait_connected(1);
    let inv = wait_for(
        "10 ESXi hosts in the inventory",
        Duration::from_secs(30),
        || {
            let i = esxi_inventory(&c);
            (i.len() == 10).then_some(i)
        },
    );
    assert!(
        inv["DC0_C0_H1"].ends_with(
            "esxi-hosts=skip: in maintenance mode (vCenter refreshes only hosts out of maintenance)"
        ),
        "{inv:#?}"
    );
    assert!(
        inv["DC0_C1_H1"].ends_with("esxi-hosts=emergency"),
        "{inv:#?}"
    );
    assert!(
        inv["DC0_C0_H3"].contains(
            "esxi-hosts=skip: custom certificate (issued by O=VMware, CN=Corp Issuing CA, not by this vCenter's VMCA)"
        ),
        "{inv:#?}"
    );

    // Dry run: canary then waves per cluster, the skipped hosts with their reasons.
    let create = |extra: &[&str]| {
        let mut a = vec![
            "plan",
            "create",
            "esxi-hosts",
            "--expiring-within",
            "60d",
            "--param",
            "wave_size=2",
            "--param",
            "max_failures=1",
            "--param",
            "verify_timeout=2",
        ];
        a.extend_from_slice(extra);
        c.json(&a)
    };
    let dry = create(&["--dry-run"]);
    let names: Vec<&str> = dry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "DC0_C0 canary: refresh DC0_C0_H0",
            "DC0_C0 wave 1: refresh DC0_C0_H2",
            "DC0_C1 canary: refresh DC0_C1_H2",
            "DC0_C1 wave 1: refresh DC0_C1_H4, DC0_C1_H1"
        ],
        "{dry:#}"
    );
    let leave: Vec<String> = dry["steps"][0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            c.as_str()
                .filter(|c| c.starts_with("leave "))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(leave.len(), 5, "{leave:#?}");
    for (host, why) in [
        ("DC0_C0_H1", "maintenance mode"),
        ("DC0_C0_H3", "custom certificate"),
        ("DC0_C0_H4", "HA agent state networkIsolated"),
        ("DC0_C1_H0", "disconnected"),
        (
            "DC0_C1_H3",
            "vSAN cluster DC0_C1 is degraded (DC0_C1_H0 disconnected)",
        ),
    ] {
        assert!(
            leave
                .iter()
                .any(|l| l.starts_with(&format!("leave {host} alone: ")) && l.contains(why)),
            "{host}: {leave:#?}"
        );
    }
    let before = vc.state();

    // A new VMCA root: every refreshed host needs the CA refresh too.
    let ctl = vc.manifest["control"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let new_root = http_get(&ctl, "/ctl/rotate-root")
        .unwrap()
        .trim()
        .to_owned();
    // Fault injection (issue 8): vCenter's refresh tasks stay running 4 s, and the agent dies
    // right after starting the canary's; started again, the re-sent step must wait for that
    // task, not start a second refresh of the same host, and verify.
    let point = "esxi.refresh_hosts:after-refresh-started";
    http_get(&ctl, "/ctl/refresh-delay?ms=4000").unwrap();
    agent.kill9();
    agent = c.run_agent_env(
        &state,
        Some(&cfg),
        &[],
        &[("CERTFLEET_TEST_CRASH_AT", point)],
    );
    c.wait_connected(1);
    let plan = create(&["--run"]);
    let id = plan["id"].as_str().unwrap().to_owned();
    crate::crash::wait_killed(&mut agent, point);
    // Then the worst moment: in the next wave the agent dies between vCenter's answer to a
    // refresh and the note of its task. The re-sent step must wait for that refresh (still
    // running in vCenter) instead of asking for a second one.
    let point2 = "esxi.refresh_hosts:after-refresh-call";
    agent = c.run_agent_env(
        &state,
        Some(&cfg),
        &[],
        &[("CERTFLEET_TEST_CRASH_AT", point2)],
    );
    crate::crash::wait_killed(&mut agent, point2);
    http_get(&ctl, "/ctl/refresh-delay?ms=0").unwrap();
    let _agent = c.run_agent(&state, Some(&cfg), &[]);
    let done = crate::ovirt_rotation::wait_plan(&c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let steps = done["steps"].as_array().unwrap();
    let canary = steps[0]["output"].to_string();
    assert!(
        canary.contains("DC0_C0_H0: the interrupted attempt started")
            && canary.contains("waiting for it"),
        "{point}: the resumed canary did not wait for the task it had started: {canary}"
    );
    let second = steps[1]["output"].to_string();
    assert!(
        second.contains("stopped before noting the task")
            && second.contains("the earlier request did it; not asking again"),
        "{point2}: the resumed wave did not wait for the refresh it had asked for: {second}"
    );
    // The stale host is the one failure, within max_failures=1, carried to the next waves.
    let failed: Vec<&str> = steps[1]["details"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["host"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["DC0_C0_H2"], "{done:#}");
    assert!(
        steps[1]["details"]["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("still serves"),
        "{done:#}"
    );
    assert_eq!(steps[3]["details"]["failures"], 1);
    // Skipped hosts are reported by the first wave as read at run time.
    let skipped = steps[0]["details"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 5, "{done:#}");
    // The expired host went through disconnect + reconnect with its thumbprint.
    let out = steps[3]["output"].to_string();
    assert!(out.contains("DC0_C1_H1: disconnected"), "{out}");
    assert!(out.contains("reconnected accepting thumbprint"), "{out}");

    let after = vc.state();
    let refreshed = ["DC0_C0_H0", "DC0_C1_H1", "DC0_C1_H2", "DC0_C1_H4"];
    for name in refreshed {
        let h = &after["hosts"][name];
        assert_ne!(
            h["serving_sha256"], before["hosts"][name]["serving_sha256"],
            "{name} serves a new certificate"
        );
        assert_eq!(h["serving_sha256"], h["certificate_sha256"], "{name}");
        assert_eq!(
            h["trusted_root_sha256"],
            new_root.as_str(),
            "{name}: CA refresh"
        );
        assert_eq!(h["connection_state"], "connected", "{name}");
        // The plan's record is what the host's own endpoint serves.
        let r = steps
            .iter()
            .flat_map(|s| {
                s["details"]["refreshed"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|r| r["host"] == name)
            .unwrap();
        assert_eq!(r["fingerprint_sha256"], served(&vc.endpoint(name)).as_str());
        assert_eq!(r["ca_refreshed"], true);
    }
    // One CertMgrRefreshCertificates_Task per refreshed host (the stale one included), the
    // canary's too although its agent died with the task running.
    for name in refreshed.iter().chain(&["DC0_C0_H2"]) {
        assert_eq!(
            after["hosts"][name]["refreshes"], 1,
            "{name}: refreshed more than once ({point})"
        );
    }
    for name in [
        "DC0_C0_H1",
        "DC0_C0_H3",
        "DC0_C0_H4",
        "DC0_C1_H0",
        "DC0_C1_H3",
    ] {
        assert_eq!(
            after["hosts"][name]["serving_sha256"], before["hosts"][name]["serving_sha256"],
            "{name} was left alone"
        );
        assert_eq!(after["hosts"][name]["refreshes"], 0, "{name}");
        assert_ne!(
            after["hosts"][name]["trusted_root_sha256"],
            new_root.as_str()
        );
    }

    // vCenter in custom mode: the collector's verdict changes, and the recipe refuses, saying why.
    http_get(&ctl, "/ctl/mode?set=custom").unwrap();
    wait_for(
        "custom mode in the inventory",
        Duration::from_secs(30),
        || {
            esxi_inventory(&c)
                .values()
                .all(|d| d.contains("esxi-hosts=skip: vCenter is in custom mode"))
                .then_some(())
        },
    );
    let out = c.cli_as(
        &c.admin(),
        &[
            "plan",
            "create",
            "esxi-hosts",
            "--dry-run",
            "--fail-if-nothing",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "nothing to renew exits 5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to renew"), "{err}");
    assert!(
        err.contains("DC0_C0_H0: vCenter is in custom mode"),
        "{err}"
    );
}

/// vSAN resync (`HostVsanInternalSystem.QuerySyncingVsanObjects`, added to vcsim in
/// `integration-tests/vcsim/main.go`): every member of a cluster in which one member reports
/// objects resyncing is skipped with the reason; a vSAN cluster with nothing resyncing is not.
#[test]
fn esxi_hosts_of_a_resyncing_vsan_cluster_are_skipped_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let vc = Vcsim::start(
        &tmp.path().join("vc"),
        &serde_json::json!({
            "clusters": 2, "hosts_per_cluster": 2, "mode": "vmca",
            "user": "administrator@vsphere.local", "password": "s3cret&<pw>",
            "hosts": {
                "DC0_C0_H0": {"vsan": true},
                "DC0_C0_H1": {"vsan": true, "vsan_syncing": 3},
                "DC0_C1_H0": {"vsan": true},
                "DC0_C1_H1": {"vsan": true}
            }
        }),
    );
    let s = Session::login(&vc.settings("s3cret&<pw>")).unwrap();
    let hosts = s.hosts().unwrap();
    assert_eq!(host(&hosts, "DC0_C0_H1").vsan_syncing, Some(Ok(3)));
    assert_eq!(host(&hosts, "DC0_C1_H0").vsan_syncing, Some(Ok(0)));
    s.logout();

    let scan = agent_scan(&vc, &tmp.path().join("agent.toml"));
    let verdicts: BTreeMap<String, String> = scan["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["locations"].as_array().unwrap().iter())
        .filter(|l| l["kind"] == "vcenter")
        .map(|l| {
            let d = l["detail"].as_str().unwrap();
            let v = d.split("esxi-hosts=").nth(1).unwrap_or("").to_owned();
            (l["path"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    for h in ["DC0_C0_H0", "DC0_C0_H1"] {
        assert_eq!(
            verdicts[h],
            "skip: vSAN cluster DC0_C0 is resyncing objects (DC0_C0_H1 reports 3 object(s)): a refresh restarts the host's agents; wait until the resync ends",
            "{verdicts:#?}"
        );
    }
    for h in ["DC0_C1_H0", "DC0_C1_H1"] {
        assert_eq!(verdicts[h], "refresh", "{verdicts:#?}");
    }
}
