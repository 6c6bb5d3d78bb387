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

/// A simulated VCSA built from `spec` under `dir/host`, its services (slapd vmdir, HTTPS
/// listener, VCDB) started, and its agent enrolled as `name` in `c` and running. The caller
/// waits for the connections (`c.wait_connected`). Shared with the recovery tests, which put
/// several hosts in one fleet.
pub(crate) fn start_vcsa(
    c: &Controller,
    dir: &Path,
    host: &str,
    name: &str,
    spec: &VcsaSpec,
) -> (Vcsa, Services, Proc) {
    vcsa::vmdir::require_slapd().unwrap();
    let host = SimHost::new(dir.join(host), support::bin("certfleet-sim")).unwrap();
    let vcsa = vcsa::build(&host, spec).unwrap();
    let services = vcsa.start_services().unwrap();
    let state = c.enroll(name);
    let root = vcsa.host.root.display().to_string();
    let agent = c.run_agent(&state, Some(&vcsa.agent_config_path()), &["--root", &root]);
    (vcsa, services, agent)
}

fn setup(spec: VcsaSpec) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let (vcsa, services, agent) = start_vcsa(&c, dir.path(), "vcsa", "vc1", &spec);
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

/// The simulated vCenter login (`certfleet-sim vcsa-login`): whether it succeeded, and its output.
pub(crate) fn login(v: &Vcsa) -> (bool, String) {
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

pub(crate) fn getcert(v: &Vcsa, store: &str, alias: &str) -> String {
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

pub(crate) fn fingerprint(pem: &str) -> String {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

pub(crate) fn served(v: &Vcsa) -> String {
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
pub(crate) fn hash_root(root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -path ./.sim/vmdir -prune -o -type f -print | sort | xargs sha256sum")
        .current_dir(root)
        .output()
        .unwrap();
    certfleet_common::pki::sha256_hex(&out.stdout)
}

const YEAR: u64 = 365 * 86_400;

/// After a restart the automatic services run and the manual-start ones stay stopped, as on a
/// real appliance (fixtures/real/vsphere/service-control-status_6.7_vcenter-dc1.txt).
pub(crate) fn assert_services_as_before(v: &Vcsa) {
    let st = v.state().unwrap();
    for x in &st.services {
        let want = if x.start_type == "MANUAL" {
            "STOPPED"
        } else {
            "STARTED"
        };
        assert_eq!(x.run_state, want, "{} ({})", x.name, x.start_type);
    }
    assert!(st.services.iter().any(|x| x.start_type == "MANUAL"));
}

/// SHA-256 of the certificate each Lookup Service registration trusts, by URI (real
/// `ldapsearch` as the machine account).
pub(crate) fn ls_trust(v: &Vcsa) -> Vec<(String, String)> {
    let s = v.state().unwrap();
    let res: Vec<(String, String)> =
        certfleet_integration_tests::sim::vcsa::lstool::registrations(&s)
            .unwrap()
            .into_iter()
            .filter(|(_, _, _, trust)| !trust.is_empty())
            .map(|(_, _, uri, trust)| (uri, certfleet_common::pki::sha256_hex(&trust)))
            .collect();
    // Linked mode: the joined nodes' registrations are in the same vmdir.
    assert!(res.len() >= s.ls_registrations.len(), "{res:?}");
    res
}

/// Host of a registration URI.
fn uri_host(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |x| x.1);
    let hp = rest.split('/').next().unwrap_or("");
    hp.rsplit_once(':').map_or(hp, |x| x.0)
}

#[test]
fn vsphere_sts_then_machine_ssl_renewal() {
    // Auto Deploy starts automatically (vCert then updates its database), and one Lookup
    // Service registration at the PNID still trusts an older certificate.
    let s = setup(spec().with_auto_deploy().with_stale_ls_registration());
    let v = &s.vcsa;
    let (ok, msg) = login(v);
    assert!(!ok, "login must fail with an expired STS: {msg}");

    // STS: gate on every node, replace once, restart every node.
    let p = create(&s.c, &["vsphere-sts", "--agent", "vc1", "--run"]);
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let (ok, msg) = login(v);
    assert!(ok, "login after the STS renewal: {msg}");

    // Machine SSL, on an appliance as real ones are: no BACKUP_STORE yet (never replaced),
    // manual-start services stopped, a vCenter HA default profile (HACore), and a first
    // `--start --all` that fails transiently with RC=5 while services are StartPending.
    let old = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    assert!(!valid_for(&old, 30 * 86_400));
    assert!(v.state().unwrap().store("BACKUP_STORE").is_none());
    v.update(|st| st.start_all_rc5 = 1).unwrap();
    v.set_default_start_profile("HACore").unwrap();
    let ls_before = ls_trust(v);
    let stale: Vec<_> = ls_before
        .iter()
        .filter(|(_, fp)| *fp != fingerprint(&old))
        .collect();
    assert_eq!(stale.len(), 1, "{ls_before:?}");
    assert!(stale[0].0.contains(":9087/"), "{stale:?}");
    assert_eq!(
        vcsa::auto_deploy_rows(v).unwrap(),
        Some(vec![(
            "vcsa01.lab.local".to_owned(),
            vcsa::thumbprint(&old).unwrap()
        )])
    );
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
    assert_services_as_before(v);
    let text = p.to_string();
    assert!(text.contains("--vmon-profile HAActive"), "{p:#}");
    assert!(
        text.contains("RC=5"),
        "the transient failure was seen: {p:#}"
    );
    // BACKUP_STORE was created for the old certificate, which the clean-up step then removed
    // (into the agent's backup) once the new one was verified.
    let st = v.state().unwrap();
    let bkp = st.store("BACKUP_STORE").expect("BACKUP_STORE created");
    assert!(bkp.entries.is_empty(), "{:?}", bkp.entries);
    let clean = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "vsphere.clean_backup_store")
        .expect("clean-up step");
    assert_eq!(clean["state"], "succeeded", "{clean:#}");
    assert!(
        clean
            .to_string()
            .contains("BACKUP_STORE/bkp___MACHINE_CERT"),
        "{clean:#}"
    );
    // Follow-ups: every Lookup Service registration trusts the new certificate (also the one
    // registered by IP and the stale one at the PNID), as the Lookup Service lists them too;
    // VCDB's vsan health extension and Auto Deploy's database carry its thumbprint.
    for (uri, fp) in ls_trust(v) {
        assert_eq!(fp, fingerprint(&new), "{uri}");
    }
    assert!(
        text.contains("lstool.py list --url http://localhost:7090/lookupservice/sdk --no-check-cert")
            && text.contains("Lookup Service (lstool.py list): 4 endpoint(s) at vcsa01.lab.local trust the new certificate"),
        "{p:#}"
    );
    assert_eq!(
        vcsa::auto_deploy_rows(v).unwrap(),
        Some(vec![(
            "vcsa01.lab.local".to_owned(),
            vcsa::thumbprint(&new).unwrap()
        )])
    );
    assert!(
        text.contains("--stop vmware-rbd-watchdog") && text.contains("--start vmware-rbd-watchdog"),
        "Auto Deploy stopped while its database changed: {p:#}"
    );
    let rows = vcsa::vcdb::vpx_ext(&st).unwrap();
    let vsan = rows
        .iter()
        .find(|(id, _)| id == "com.vmware.vsan.health")
        .expect("vsan health registered");
    assert_eq!(vsan.1, vcsa::thumbprint(&new).unwrap(), "{rows:?}");

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
    let s = setup(spec().with_auto_deploy());
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
    assert!(!p.to_string().contains("ROLLBACK FAILED"), "{p:#}");
    for (uri, fp) in ls_trust(v) {
        assert_eq!(
            fp,
            fingerprint(&old),
            "{uri} trusts the old certificate again"
        );
    }
    let rows = vcsa::vcdb::vpx_ext(&v.state().unwrap()).unwrap();
    assert!(
        rows.iter().any(
            |(id, tp)| id == "com.vmware.vsan.health" && *tp == vcsa::thumbprint(&old).unwrap()
        ),
        "{rows:?}"
    );
    assert_eq!(
        vcsa::auto_deploy_rows(v).unwrap(),
        Some(vec![(
            "vcsa01.lab.local".to_owned(),
            vcsa::thumbprint(&old).unwrap()
        )]),
        "Auto Deploy's database has the old thumbprint again"
    );
}

/// vmdir refuses the vpxd principal's update before anything changed there: the rollback puts
/// the two users already done back and skips vpxd, whose vmdir entry never changed (real
/// dir-cli refuses to write a certificate a principal already holds).
#[test]
fn vsphere_solution_users_rollback_skips_what_is_unchanged() {
    let s = setup(soluser_spec());
    let v = &s.vcsa;
    let mid = v.state().unwrap().machine_id;
    let old: Vec<String> = SOLUTION_USERS
        .iter()
        .map(|u| fingerprint(&getcert(v, u, u)))
        .collect();
    v.update(|st| st.deny_service_update.push(format!("vpxd-{mid}")))
        .unwrap();
    let p = create(
        &s.c,
        &[
            "vsphere-solution-users",
            "--agent",
            "vc1",
            "--expiring-within",
            "30d",
            "--run",
        ],
    );
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_ne!(p["state"], "succeeded", "{p:#}");
    let text = p.to_string();
    assert!(text.contains("Insufficient access"), "{p:#}");
    assert!(
        text.contains("rolled back 3 user(s) in vmdir and VECS")
            && !text.contains("ROLLBACK FAILED"),
        "{p:#}"
    );
    assert!(text.contains("already holds the old certificate"), "{p:#}");
    for (u, fp) in SOLUTION_USERS.iter().zip(&old) {
        assert_eq!(&fingerprint(&getcert(v, u, u)), fp, "VECS {u}");
        assert_eq!(&vmdir_principal(v, &format!("{u}-{mid}")), fp, "vmdir {u}");
    }
}

/// 8.0: the OpenLDAP clients are only under /usr/bin here, and the STS tenant is written as the
/// SSO administrator with `objectClass: top`, as vCert does.
#[test]
fn vsphere_sts_on_80_as_vcert_writes_it() {
    let s = setup(
        VcsaSpec::new(VcsaVersion::V80, "vcsa08.lab.local").with("sts", Lifetime::days(735, -5)),
    );
    let v = &s.vcsa;
    assert!(!v.host.path(vcsa::LDAPMODIFY).exists());
    assert!(!login(v).0);
    let p = create(&s.c, &["vsphere-sts", "--agent", "vc1", "--run"]);
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    assert!(login(v).0, "login after the STS renewal");
    let st = v.state().unwrap();
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", st.ldap_port))
        .args([
            "-D",
            &st.machine_account_dn,
            "-w",
            &st.machine_account_password,
        ])
        .arg("-b")
        .arg(format!(
            "cn=TenantCredential-1,cn={},cn=Tenants,cn=IdentityManager,cn=Services,{}",
            st.domain,
            st.domain_dn()
        ))
        .args(["-s", "base", "(objectclass=*)", "objectClass"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("objectClass: top"),
        "{text}"
    );
    assert!(
        p.to_string().contains("cn=administrator,cn=users,"),
        "{p:#}"
    );
}

/// SHA-256 of the `userCertificate` of `cn=<name>,cn=ServicePrincipals,<dn>` in the running
/// vmdir, read with the real `ldapsearch` as the node's machine account.
fn vmdir_principal(v: &Vcsa, name: &str) -> String {
    use base64::Engine;
    let s = v.state().unwrap();
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", s.ldap_port))
        .args([
            "-D",
            &s.machine_account_dn,
            "-w",
            &s.machine_account_password,
            "-s",
            "base",
            "-b",
            &format!("cn={name},cn=ServicePrincipals,{}", s.domain_dn()),
            "(objectclass=*)",
            "userCertificate",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let b = text
        .lines()
        .find_map(|l| l.strip_prefix("userCertificate:: "))
        .unwrap_or_else(|| panic!("no userCertificate for {name}: {text}"));
    let der = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .unwrap();
    certfleet_common::pki::sha256_hex(&der)
}

fn x509_text(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.pem");
    std::fs::write(&p, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `"<agent> <action>"` of every step, in the order the steps started (stable: plan order within
/// the same second).
fn run_order(p: &Value) -> Vec<String> {
    let mut steps: Vec<(String, String)> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["started_at"].as_str().unwrap_or("~").to_owned(),
                format!(
                    "{} {}",
                    st["agent"].as_str().unwrap_or(""),
                    st["action"].as_str().unwrap_or("")
                ),
            )
        })
        .collect();
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    steps.into_iter().map(|(_, s)| s).collect()
}

const SOLUTION_USERS: [&str; 6] = [
    "machine",
    "vsphere-webclient",
    "vpxd",
    "vpxd-extension",
    "hvc",
    "wcp",
];

fn soluser_spec() -> VcsaSpec {
    VcsaSpec::new(VcsaVersion::V70, "vcsa01.lab.local").with("wcp", Lifetime::days(720, 10))
}

#[test]
fn vsphere_solution_users_vmdir_then_vecs() {
    let s = setup(soluser_spec());
    let v = &s.vcsa;
    let mid = v.state().unwrap().machine_id;
    let old: Vec<String> = SOLUTION_USERS
        .iter()
        .map(|u| fingerprint(&getcert(v, u, u)))
        .collect();
    for (u, fp) in SOLUTION_USERS.iter().zip(&old) {
        assert_eq!(&vmdir_principal(v, &format!("{u}-{mid}")), fp, "{u} before");
    }
    assert!(!valid_for(&getcert(v, "wcp", "wcp"), 30 * 86_400));

    // dir-cli as §8.4 prints it.
    let out = Command::new(v.host.path(vcsa::DIR_CLI))
        .args(["service", "list", "--login", "administrator@vsphere.local"])
        .args(["--password", &v.state().unwrap().sso_password])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("1. "), "{text}");
    for (i, l) in text.lines().enumerate() {
        assert!(l.starts_with(&format!("{}. ", i + 1)), "{text}");
    }
    for u in SOLUTION_USERS {
        assert!(text.contains(&format!(". {u}-{mid}\n")), "{u}: {text}");
    }
    let bad = Command::new(v.host.path(vcsa::DIR_CLI))
        .args(["service", "list", "--password", "wrong"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(49));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("dir-cli failed. Error 49: "));

    let p = create(
        &s.c,
        &[
            "vsphere-solution-users",
            "--agent",
            "vc1",
            "--expiring-within",
            "30d",
            "--run",
        ],
    );
    let p = finish(&s.c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    assert_eq!(
        run_order(&p),
        [
            "vc1 vsphere.replication_gate",
            "vc1 vsphere.solution_users",
            "vc1 vsphere.restart_services"
        ],
        "{p:#}"
    );
    let out = p.to_string();
    assert!(out.contains("dir-cli service update --name wcp-"), "{p:#}");
    assert!(
        !out.contains(&v.state().unwrap().sso_password),
        "password shown"
    );

    let mut not_afters = Vec::new();
    for (u, fp) in SOLUTION_USERS.iter().zip(&old) {
        let pem = getcert(v, u, u);
        let new = fingerprint(&pem);
        assert_ne!(&new, fp, "{u} renewed");
        assert_eq!(
            vmdir_principal(v, &format!("{u}-{mid}")),
            new,
            "vmdir and VECS agree for {u}"
        );
        assert!(valid_for(&pem, YEAR), "{u} good for a year (openssl)");
        let text = x509_text(&pem);
        if *u == "wcp" {
            assert!(text.contains("Data Encipherment"), "wcp: {text}");
            assert!(!text.contains("Subject Alternative Name"), "wcp: {text}");
        } else {
            assert!(text.contains("DNS:vcsa01.lab.local"), "{u}: {text}");
            assert!(!text.contains("Data Encipherment"), "{u}: {text}");
        }
        assert!(text.contains(&format!("OU = mID-{mid}")), "{u}: {text}");
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
        not_afters.push((
            u.to_string(),
            new,
            certfleet_common::x509::parse_der(&der).unwrap().not_after,
        ));
    }
    // Services were restarted: the automatic ones run, the manual ones stay stopped.
    assert_services_as_before(v);
    // KB 57379: the extensions registered with vpxd-extension carry its new thumbprint.
    let ext = vcsa::thumbprint(&getcert(v, "vpxd-extension", "vpxd-extension")).unwrap();
    let rows = vcsa::vcdb::vpx_ext(&v.state().unwrap()).unwrap();
    for (id, tp) in &rows {
        if id != "com.vmware.vsan.health" {
            assert_eq!(tp, &ext, "vpx_ext {id}: {rows:?}");
        }
    }
    assert!(
        rows.iter().any(|(id, _)| id == "com.vmware.vim.eam"),
        "{rows:?}"
    );

    // The controller's inventory shows the new not-afters.
    s.c.cli(&["inventory", "rescan", "vc1"]);
    wait_for(
        "inventory with the new certificates",
        Duration::from_secs(60),
        || {
            let inv = s.c.json(&["inventory", "--agent", "vc1"]);
            let inv = inv.as_array().cloned().unwrap_or_default();
            not_afters
                .iter()
                .all(|(u, fp, na)| {
                    inv.iter().any(|r| {
                        r["role"] == format!("vsphere.solution_user.{u}").as_str()
                            && r["fingerprint_sha256"] == fp.as_str()
                            && r["not_after"]
                                .as_str()
                                .and_then(certfleet_common::model::parse_time)
                                == Some(*na)
                    })
                })
                .then_some(())
                .or_else(|| {
                    std::thread::sleep(Duration::from_millis(500));
                    None
                })
        },
    );
    drop(s.services);
}

#[test]
fn vsphere_solution_users_failure_restores_vmdir_and_vecs() {
    let s = setup(soluser_spec());
    let v = &s.vcsa;
    let mid = v.state().unwrap().machine_id;
    let old: Vec<String> = SOLUTION_USERS
        .iter()
        .map(|u| fingerprint(&getcert(v, u, u)))
        .collect();
    // VECS refuses the new wcp entry once, after vmdir already took it (wcp is the last user).
    v.update(|st| st.deny_create.push("wcp".into())).unwrap();
    let p = create(
        &s.c,
        &[
            "vsphere-solution-users",
            "--agent",
            "vc1",
            "--expiring-within",
            "30d",
            "--run",
        ],
    );
    let id = p["id"].as_str().unwrap().to_owned();
    let p = finish(&s.c, &id);
    assert_ne!(p["state"], "succeeded", "{p:#}");
    let text = p.to_string();
    assert!(text.contains("ERROR_ACCESS_DENIED"), "{p:#}");
    assert!(
        text.contains("rolled back 6 user(s) in vmdir and VECS")
            && !text.contains("ROLLBACK FAILED"),
        "{p:#}"
    );
    for (u, fp) in SOLUTION_USERS.iter().zip(&old) {
        let name = format!("{u}-{mid}");
        assert_eq!(&fingerprint(&getcert(v, u, u)), fp, "VECS {u} restored");
        assert_eq!(&vmdir_principal(v, &name), fp, "vmdir {u} restored");
    }
}

/// Two embedded vCenters in one SSO domain (one vmdir, replicated): the STS fix runs once and
/// every node restarts one at a time; Machine SSL goes node by node behind each node's gate.
#[test]
fn vsphere_two_nodes_one_sso_domain() {
    vcsa::vmdir::require_slapd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = support::bin("certfleet-sim");
    let h1 = SimHost::new(dir.path().join("vc1"), sim.clone()).unwrap();
    let h2 = SimHost::new(dir.path().join("vc2"), sim).unwrap();
    let v1 = vcsa::build(&h1, &spec()).unwrap();
    let v2 = vcsa::build(
        &h2,
        &VcsaSpec::new(VcsaVersion::V70, "vcsa02.lab.local")
            .with("machine_ssl", Lifetime::days(720, 8)),
    )
    .unwrap();
    vcsa::join(&v1, &v2).unwrap();
    let _s1 = v1.start_services().unwrap();
    let _s2 = v2.start_services().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let mut agents = Vec::new();
    for (name, v) in [("vc1", &v1), ("vc2", &v2)] {
        let state = c.enroll(name);
        let root = v.host.root.display().to_string();
        agents.push(c.run_agent(&state, Some(&v.agent_config_path()), &["--root", &root]));
    }
    c.wait_connected(2);
    // Plans are built from the inventory: wait until both nodes' first reports are in (a plan
    // made earlier misses vc2).
    for name in ["vc1", "vc2"] {
        wait_for(
            &format!("{name}'s Machine SSL in the inventory"),
            Duration::from_secs(60),
            || {
                let inv = c.json(&["inventory", "--agent", name]);
                inv.as_array()?
                    .iter()
                    .any(|r| r["role"] == "vsphere.machine_ssl")
                    .then_some(())
            },
        );
    }
    assert!(
        !login(&v1).0 && !login(&v2).0,
        "expired STS: no login anywhere"
    );
    // One Lookup Service for the domain: vc2's registrations are in the shared vmdir too (all
    // of both nodes but vc2's copy of the legacy sso:sts endpoint, one DN for the domain).
    let ls = ls_trust(&v1);
    let n1 = v1.state().unwrap().ls_registrations.len();
    let n2 = v2.state().unwrap().ls_registrations.len();
    assert_eq!(ls.len(), n1 + n2 - 1, "{ls:?}");
    assert!(
        ls.iter().any(|(u, _)| uri_host(u) == "vcsa02.lab.local"),
        "{ls:?}"
    );

    // STS, targeting only vc1: vc2 is in the domain, so it is gated and restarted too.
    let p = create(&c, &["vsphere-sts", "--agent", "vc1", "--dry-run"]);
    let p = c.json(&["plan", "show", p["id"].as_str().unwrap()]);
    let plan: Vec<String> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["agent"].as_str().unwrap(),
                s["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            "vc1 vsphere.replication_gate",
            "vc2 vsphere.replication_gate",
            "vc1 vsphere.sts",
            "vc1 vsphere.restart_services",
            "vc2 vsphere.restart_services",
        ],
        "{p:#}"
    );
    let p = create(&c, &["vsphere-sts", "--agent", "vc1", "--run"]);
    let p = finish(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let steps = p["steps"].as_array().unwrap();
    // One at a time: each restart starts after the previous one finished.
    assert!(
        steps[4]["started_at"].as_str() >= steps[3]["finished_at"].as_str(),
        "{p:#}"
    );
    assert_eq!(steps[4]["depends_on"][0], "vc1-restart", "{p:#}");
    for v in [&v1, &v2] {
        let (ok, msg) = login(v);
        assert!(ok, "{}: {msg}", v.state().unwrap().pnid);
    }

    // Machine SSL on both: vc1 gate → vc1 → vc2 gate → vc2.
    let old: Vec<String> = [&v1, &v2]
        .iter()
        .map(|v| fingerprint(&getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT")))
        .collect();
    let p = create(
        &c,
        &["vsphere-machine-ssl", "--expiring-within", "90d", "--run"],
    );
    let p = finish(&c, p["id"].as_str().unwrap());
    assert_eq!(p["state"], "succeeded", "{p:#}");
    let steps = p["steps"].as_array().unwrap();
    let plan: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["agent"].as_str().unwrap(),
                s["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            "vc1 vsphere.replication_gate",
            "vc1 vsphere.machine_ssl",
            "vc1 vsphere.clean_backup_store",
            "vc2 vsphere.replication_gate",
            "vc2 vsphere.machine_ssl",
            "vc2 vsphere.clean_backup_store",
        ],
        "{p:#}"
    );
    assert_eq!(steps[3]["depends_on"][0], "vc1-clean-backup-store", "{p:#}");
    assert!(
        steps[3]["started_at"].as_str() >= steps[2]["finished_at"].as_str(),
        "{p:#}"
    );
    // Both nodes' registrations re-trusted, each with its own node's new certificate; none
    // trusts an old one.
    let new: Vec<String> = [&v1, &v2]
        .iter()
        .map(|v| fingerprint(&getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT")))
        .collect();
    let ls = ls_trust(&v1);
    assert_eq!(ls.len(), n1 + n2 - 1, "{ls:?}");
    for (uri, fp) in &ls {
        assert!(!old.contains(fp), "{uri} still trusts an old certificate");
        assert!(
            new.contains(fp),
            "{uri} trusts neither node's new certificate"
        );
        match uri_host(uri) {
            "vcsa01.lab.local" => assert_eq!(fp, &new[0], "{uri}"),
            "vcsa02.lab.local" => assert_eq!(fp, &new[1], "{uri}"),
            _ => {}
        }
    }
    for (v, old) in [&v1, &v2].iter().zip(&old) {
        let new = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
        assert_ne!(&fingerprint(&new), old);
        assert!(valid_for(&new, YEAR));
        assert_eq!(served(v), fingerprint(&new), "serves the new one");
        assert!(login(v).0, "node works after the renewal");
        assert_services_as_before(v);
    }
    drop(agents);
}

/// vCert's post-restart check: vmdird (a systemd unit) does not come back, so the Machine SSL
/// step fails although `service-control --status --all` lists it as running, and the old
/// certificate is put back.
#[test]
fn vsphere_restart_checks_vmdird_with_systemd() {
    let s = setup(spec());
    let v = &s.vcsa;
    let old = getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT");
    certfleet_integration_tests::sim::systemd::set_broken(&v.host, "vmdird", true).unwrap();
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
    let text = p.to_string();
    assert!(text.contains("systemctl is-active vmdird"), "{p:#}");
    assert_eq!(
        fingerprint(&getcert(v, "MACHINE_SSL_CERT", "__MACHINE_CERT")),
        fingerprint(&old),
        "VECS holds the old certificate again"
    );
}

/// A 6.x appliance with `STS_INTERNAL_SSL_CERT`: the Machine SSL copy there is replaced too.
#[test]
fn vsphere_machine_ssl_also_replaces_sts_internal_ssl_cert() {
    let s = setup(
        VcsaSpec::new(VcsaVersion::V67, "vcsa67.lab.local")
            .with("machine_ssl", Lifetime::days(720, 10))
            .with_sts_internal_ssl(),
    );
    let v = &s.vcsa;
    let old = getcert(v, "STS_INTERNAL_SSL_CERT", "__MACHINE_CERT");
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
    let internal = getcert(v, "STS_INTERNAL_SSL_CERT", "__MACHINE_CERT");
    assert_ne!(fingerprint(&internal), fingerprint(&old));
    assert_eq!(fingerprint(&internal), fingerprint(&new));
    assert_services_as_before(v);
}
