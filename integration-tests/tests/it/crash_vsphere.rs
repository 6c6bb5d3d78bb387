//! Fault injection on the vSphere actions that change vmdir: the VCSA agent is killed
//! (SIGKILL, `CERTFLEET_TEST_CRASH_AT=<action>:<point>`, see `agent/src/act/intent.rs`) at
//! every point between the intent and the result of `vsphere.sts`,
//! `vsphere.solution_users` and `vsphere.vmca_root`, started again as a supervisor would, and the plan must finish.
//! Each case is judged from the simulated VCSA (vmdir through the real slapd and `ldapsearch`,
//! VECS through `vecs-cli`, VMCA's record of what it issued) and the agent's backups: exactly
//! one tenant credential, one certificate issued per step and user, vmdir and VECS agreeing,
//! the backups holding what was there before the plan.
//!
//! One VCSA, controller and agent serve every kill point of both actions, one plan per point.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use certfleet_integration_tests::sim::vcsa::{self, Vcsa, VcsaSpec, VcsaVersion};
use certfleet_integration_tests::sim::{Lifetime, SimHost};
use serde_json::Value;

use crate::crash;
use crate::rotation::wait_plan;
use crate::support::{Controller, Proc};
use crate::vsphere_rotation::{fingerprint, getcert};

/// Kill points of `vsphere.sts`, in the order one plan meets them: the agent dies at the first,
/// is started again set to die at the next one (the resumed attempt dies in turn), and so on;
/// started plainly after the last. `after-intent` exists on every agent, so the test fails on
/// an agent that refuses to resume the step.
const STS_POINTS: &[&str] = &[
    "vsphere.sts:after-intent",
    "vsphere.sts:after-issue",
    "vsphere.sts:after-backup",
    "vsphere.sts:after-modify",
    "vsphere.sts:before-result",
    "vsphere.sts:after-result",
];

/// Kill points of `vsphere.vmca_root`: after the new root was generated, after VMCA took it.
const VMCA_ROOT_POINTS: &[&str] = &[
    "vsphere.vmca_root:after-intent",
    "vsphere.vmca_root:generated",
    "vsphere.vmca_root:provisioned",
    "vsphere.vmca_root:before-result",
    "vsphere.vmca_root:after-result",
];

/// Kill points of `vsphere.solution_users` (users in the order machine, vsphere-webclient,
/// vpxd, vpxd-extension, hvc, wcp), met in turn by one plan as [`STS_POINTS`]: before the
/// backup with two users issued, after the backup, with machine in vmdir but not VECS, after
/// the 3rd user, with hvc's VECS entry deleted but not created, after everything.
const SOLUTION_USER_POINTS: &[&str] = &[
    "vsphere.solution_users:after-intent",
    "vsphere.solution_users:after-issue-vsphere-webclient",
    "vsphere.solution_users:after-backup",
    "vsphere.solution_users:after-vmdir-machine",
    "vsphere.solution_users:after-user-vpxd",
    "vsphere.solution_users:after-delete-hvc",
    "vsphere.solution_users:before-result",
    "vsphere.solution_users:after-result",
];

const USERS: [&str; 6] = [
    "machine",
    "vsphere-webclient",
    "vpxd",
    "vpxd-extension",
    "hvc",
    "wcp",
];

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn der(pem: &str) -> Vec<u8> {
    certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap()
}

/// Serial of a DER certificate as the simulated VMCA records it (hex, no leading zeros).
fn serial(der: &[u8]) -> String {
    let rec = certfleet_common::x509::parse_der(der).unwrap();
    hex(&rec.serial)
}

fn hex(s: &str) -> String {
    s.trim_start_matches("0x")
        .replace(':', "")
        .trim_start_matches('0')
        .to_lowercase()
}

/// Every entry under `base` matching `filter`, read with the real `ldapsearch` as the node's
/// machine account: DN and its `userCertificate` values (DER).
fn vmdir(v: &Vcsa, base: &str, filter: &str) -> Vec<(String, Vec<Vec<u8>>)> {
    let s = v.state().unwrap();
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", s.ldap_port))
        .args([
            "-D",
            &s.machine_account_dn,
            "-w",
            &s.machine_account_password,
        ])
        .args(["-b", base, filter, "userCertificate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut entries: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(dn) = l.strip_prefix("dn: ") {
            entries.push((dn.to_owned(), Vec::new()));
        } else if let Some(b) = l.strip_prefix("userCertificate:: ") {
            let d = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .unwrap();
            entries.last_mut().unwrap().1.push(d);
        }
    }
    entries
}

/// The STS tenant's `TenantCredential-N` and `TrustedCertChain-N` entries.
fn tenant(v: &Vcsa) -> Vec<(String, Vec<Vec<u8>>)> {
    let s = v.state().unwrap();
    vmdir(
        v,
        &format!(
            "cn={},cn=Tenants,cn=IdentityManager,cn=Services,{}",
            s.domain,
            s.domain_dn()
        ),
        "(|(objectclass=vmwSTSTenantCredential)(objectclass=vmwSTSTenantTrustedCertificateChain))",
    )
}

/// The `userCertificate` of solution user `u`'s service principal.
fn principal(v: &Vcsa, u: &str) -> Vec<u8> {
    let s = v.state().unwrap();
    let e = vmdir(
        v,
        &format!(
            "cn={u}-{},cn=ServicePrincipals,{}",
            s.machine_id,
            s.domain_dn()
        ),
        "(objectclass=*)",
    );
    assert_eq!(e.len(), 1, "{u}: {e:?}");
    assert_eq!(e[0].1.len(), 1, "{u}: one userCertificate");
    e[0].1[0].clone()
}

/// The public key of a PEM certificate and of a PEM private key, by the real openssl.
fn pubkey_of(pem: &str, is_key: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pem");
    std::fs::write(&p, pem).unwrap();
    let mut cmd = Command::new("openssl");
    if is_key {
        cmd.args(["pkey", "-pubout", "-in"]);
    } else {
        cmd.args(["x509", "-noout", "-pubkey", "-in"]);
    }
    let out = cmd.arg(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Node<'a> {
    c: &'a Controller,
    state: &'a Path,
    cfg: &'a Path,
    root: String,
}

impl Node<'_> {
    /// Starts the agent set to die at `points[0]`, runs `recipe` (a wide window takes renewed
    /// certificates again); each time the agent died at a point, starts it again set to die at
    /// the next one, after the last plainly, as a supervisor would. Returns the finished plan.
    fn run_killed(&self, agent: &mut Proc, recipe: &str, points: &[&str]) -> Value {
        let start = |point: Option<&str>| match point {
            Some(p) => self.c.run_agent_env(
                self.state,
                Some(self.cfg),
                &["--root", &self.root],
                &[("CERTFLEET_TEST_CRASH_AT", p)],
            ),
            None => self
                .c
                .run_agent(self.state, Some(self.cfg), &["--root", &self.root]),
        };
        agent.kill9();
        *agent = start(points.first().copied());
        self.c.wait_connected(1);
        let id = crash::create_when_planned(
            self.c,
            &[recipe, "--agent", "vc1", "--expiring-within", "800d"],
        );
        for (i, point) in points.iter().enumerate() {
            crash::wait_killed(agent, point);
            *agent = start(points.get(i + 1).copied());
        }
        let done = wait_plan(self.c, &id, &["succeeded", "failed"], 180);
        assert_eq!(done["state"], "succeeded", "{recipe}: {done:#}");
        crash::journals_have_no_duplicates(&[self.state.to_path_buf()], recipe);
        done
    }
}

#[test]
fn vsphere_sts_and_solution_users_agent_killed_at_every_point_between_intent_and_result() {
    vcsa::vmdir::require_slapd().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(
        dir.path().join("vcsa"),
        crate::support::bin("certfleet-sim"),
    )
    .unwrap();
    let v = vcsa::build(
        &host,
        &VcsaSpec::new(VcsaVersion::V70, "vcsa01.lab.local")
            .with("sts", Lifetime::days(735, -5))
            .with("wcp", Lifetime::days(720, 10))
            // Due within the plans' 800-day window, for the `vsphere.vmca_root` case.
            .with("vmca_root", Lifetime::days(3000, 600)),
    )
    .unwrap();
    // Two tenant credentials before the first plan (an earlier replacement left one): every
    // one is deleted and exactly one is written.
    v.update(|st| {
        let first = st.tenant_credentials[0].clone();
        st.tenant_credentials.push(first);
        let chain = st.trusted_chains[0].clone();
        st.trusted_chains.push(chain);
    })
    .unwrap();
    let services = v.start_services().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let state = c.enroll("vc1");
    let cfg = v.agent_config_path();
    let node = Node {
        c: &c,
        state: &state,
        cfg: &cfg,
        root: v.host.root.display().to_string(),
    };
    let mut agent = c.run_agent(&state, Some(&cfg), &["--root", &node.root]);
    c.wait_connected(1);
    assert_eq!(
        tenant(&v)
            .iter()
            .filter(|(dn, _)| dn.starts_with("cn=TenantCredential-"))
            .count(),
        2
    );

    {
        let point = "vsphere.sts";
        let before = tenant(&v);
        let issued = v.state().unwrap().vmca_issued.len();
        let done = node.run_killed(&mut agent, "vsphere-sts", STS_POINTS);

        let st = v.state().unwrap();
        assert_eq!(
            st.vmca_issued.len(),
            issued + 1,
            "{point}: VMCA issued {} STS certificates for one step",
            st.vmca_issued.len() - issued
        );
        let now = tenant(&v);
        let dns: Vec<&str> = now.iter().map(|(dn, _)| dn.as_str()).collect();
        assert_eq!(dns.len(), 2, "{point}: {dns:?}");
        assert!(
            dns.iter().any(|d| d.starts_with("cn=TenantCredential-1,"))
                && dns.iter().any(|d| d.starts_with("cn=TrustedCertChain-1,")),
            "{point}: exactly one tenant credential and one trusted chain: {dns:?}"
        );
        for (dn, certs) in &now {
            assert_eq!(
                serial(&certs[0]),
                hex(st.vmca_issued.last().unwrap()),
                "{point}: {dn} holds another certificate than the one VMCA issued for the step"
            );
        }
        let out = Command::new(crate::support::bin("certfleet-sim"))
            .arg("--root")
            .arg(&v.host.root)
            .arg("vcsa-login")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{point}: login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The step's backup holds every entry from before the plan, with its certificate.
        let step = crash::step_id(&done, "vsphere.sts", "");
        let saved = String::from_utf8(crash::backed_up(&state, step, "/sts-backup.ldif")).unwrap();
        assert_eq!(
            saved.matches("dn: ").count(),
            before.len(),
            "{point}: {saved}"
        );
        for (dn, certs) in &before {
            assert!(saved.contains(&format!("dn: {dn}\n")), "{point}: {dn}");
            assert!(
                saved.contains(&format!("userCertificate:: {}\n", b64(&certs[0]))),
                "{point}: the backup lost {dn}'s certificate from before the plan"
            );
        }
    }

    {
        let point = "vsphere.solution_users";
        let before: Vec<(String, Vec<u8>)> = USERS
            .iter()
            .map(|u| (getcert(&v, u, u), principal(&v, u)))
            .collect();
        let issued = v.state().unwrap().vmca_issued.len();
        let done = node.run_killed(&mut agent, "vsphere-solution-users", SOLUTION_USER_POINTS);

        let st = v.state().unwrap();
        let new_serials: Vec<String> = st.vmca_issued[issued..].iter().map(|s| hex(s)).collect();
        assert_eq!(
            new_serials.len(),
            USERS.len(),
            "{point}: VMCA issued {} certificates for {} solution users",
            new_serials.len(),
            USERS.len()
        );
        let step = crash::step_id(&done, "vsphere.solution_users", "");
        let mut held = Vec::new();
        for (u, (old_pem, old_vmdir)) in USERS.iter().zip(&before) {
            let pem = getcert(&v, u, u);
            let d = der(&pem);
            assert_ne!(
                fingerprint(&pem),
                fingerprint(old_pem),
                "{point}: {u} not renewed"
            );
            assert_eq!(
                principal(&v, u),
                d,
                "{point}: vmdir and VECS disagree for {u}"
            );
            assert!(
                new_serials.contains(&serial(&d)),
                "{point}: {u} holds a certificate VMCA did not issue in this plan"
            );
            held.push(serial(&d));
            let e = st.entry(u, u).unwrap();
            assert_eq!(
                pubkey_of(e.key.as_deref().unwrap(), true),
                pubkey_of(&pem, false),
                "{point}: VECS {u} holds a key that is not its certificate's"
            );
            // The backup holds the certificates from before the plan.
            assert_eq!(
                fingerprint(
                    &String::from_utf8(crash::backed_up(&state, step, &format!("/old-{u}.crt")))
                        .unwrap()
                ),
                fingerprint(old_pem),
                "{point}: the backup lost {u}'s VECS certificate from before the plan"
            );
            let vm = String::from_utf8(crash::backed_up(
                &state,
                step,
                &format!("/old-{u}.vmdir.crt"),
            ))
            .unwrap();
            assert_eq!(der(&vm), *old_vmdir, "{point}: {u} vmdir backup");
        }
        held.sort();
        held.dedup();
        assert_eq!(
            held.len(),
            USERS.len(),
            "{point}: one new certificate per user"
        );
    }
    {
        // One new root for the step, given to VMCA once: `root.cer.0` holds the old root and
        // there is no `root.cer.1` (a second `--rootca` would have rotated them); the key VMCA
        // holds is the new root's; the agent backup holds the old root; the work key is gone.
        let point = "vsphere.vmca_root";
        let root = v.host.path(vcsa::VMCA_ROOT);
        let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", root.display()));
        let old_root = std::fs::read_to_string(&root).unwrap();
        let done = node.run_killed(&mut agent, "vsphere-vmca-root", VMCA_ROOT_POINTS);
        let new_root = std::fs::read_to_string(&root).unwrap();
        assert_ne!(fingerprint(&new_root), fingerprint(&old_root), "{point}");
        assert_eq!(
            fingerprint(&std::fs::read_to_string(numbered(0)).unwrap()),
            fingerprint(&old_root),
            "{point}: root.cer.0"
        );
        assert!(
            !numbered(1).exists(),
            "{point}: VMCA was given a root more than once"
        );
        let key = std::fs::read_to_string(v.host.path(vcsa::VMCA_KEY)).unwrap();
        assert_eq!(
            pubkey_of(&key, true),
            pubkey_of(&new_root, false),
            "{point}"
        );
        let step = crash::step_id(&done, "vsphere.vmca_root", "");
        assert_eq!(
            fingerprint(&String::from_utf8(crash::backed_up(&state, step, "/root.cer")).unwrap()),
            fingerprint(&old_root),
            "{point}: the backup lost the old root"
        );
        let left = Command::new("find")
            .arg(&state)
            .args(["-name", "vmca-root.key"])
            .output()
            .unwrap();
        assert!(left.stdout.is_empty(), "{point}: work key left behind");
    }
    drop(agent);
    drop(services);
}
