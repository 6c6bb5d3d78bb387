//! `certfleet recover vsphere` end to end, one fleet: a controller and a simulated VCSA 7.0
//! (real slapd vmdir, HTTPS listener, VCDB in PostgreSQL) whose STS signing certificate,
//! Machine SSL certificate and every solution user (wcp and hvc included, seed 000) expired
//! five days ago, after an earlier replacement left an expired `BACKUP_STORE` entry. The
//! simulated services refuse as a real vCenter does (reference vsphere.md §4.2): the vCenter
//! login (`certfleet-sim vcsa-login`, sim/vcsa/mutate.rs) fails while the STS signing
//! certificate in vmdir is expired ("Signing certificate is not valid") and, with 503, while the
//! vsphere-webclient or vpxd solution user is (KB 344201: services get no SAML token); the real
//! `openssl s_client` refuses the expired Machine SSL certificate the proxy serves.
//! Checked, in order: an unknown domain exits 2 naming the known ones; `--dry-run` prints the
//! three plans in the GSS order (STS, Machine SSL, solution users) and changes nothing; one
//! `recover vsphere --domain vsphere.local` brings everything back (login and TLS work, the
//! inventory shows nothing expired, the services run as before, a second run has nothing to
//! do); then "reset all" on a second vCenter whose VMCA root ended with everything it signed:
//! a new root first, then STS, Machine SSL and solution users issued from it (logins and TLS
//! verified against the new root work again; VMCA's own `root.cer.0` and the SSO copy checked).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use certfleet_integration_tests::sim::Lifetime;
use certfleet_integration_tests::sim::vcsa::{self, Services, Vcsa, VcsaSpec, VcsaVersion};

use crate::support::{self, Controller, Proc};
use crate::vsphere_rotation::{assert_services_as_before, getcert, hash_root, login, start_vcsa};

/// Expired five days ago, issued two years before.
fn expired() -> Lifetime {
    Lifetime::days(735, -5)
}

/// A VCSA 7.0 named `pnid` whose STS signing, Machine SSL and every solution-user certificate
/// (wcp and hvc included) expired five days ago; `BACKUP_STORE` holds an older, expired
/// Machine SSL certificate (certificates were replaced once before, as in seed 000).
pub(crate) fn expired_vcsa_spec(pnid: &str) -> VcsaSpec {
    let mut spec = VcsaSpec::new(VcsaVersion::V70, pnid)
        .replaced_before()
        .with("sts", expired())
        .with("machine_ssl", expired());
    for user in VcsaVersion::V70.solution_users() {
        spec = spec.with(user, expired());
    }
    spec
}

/// A fully expired VCSA (see [`expired_vcsa_spec`]) under `dir/<name>`, its services started
/// and its agent `name` enrolled in `c`, connected and its first inventory in. For this test
/// and a whole-fleet recovery test that adds oVirt and GKE hosts to the same controller.
pub(crate) fn expired_vcsa(c: &Controller, dir: &Path, name: &str) -> (Vcsa, Services, Proc) {
    let spec = expired_vcsa_spec(&format!("{name}.lab.local"));
    let (vcsa, services, agent) = start_vcsa(c, dir, name, name, &spec);
    support::wait_for(
        &format!("{name} to report its STS signing certificate"),
        Duration::from_secs(60),
        || {
            c.json(&["inventory", "--agent", name])
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["role"] == "vsphere.sts_signing"))
                .then_some(())
        },
    );
    (vcsa, services, agent)
}

/// The real `openssl s_client` against the simulated proxy, verifying the served chain with
/// the VMCA root as a browser trusting it would: whether the handshake verified, and the output.
pub(crate) fn tls_verifies(v: &Vcsa) -> (bool, String) {
    let s = v.state().unwrap();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", s.https_port),
            "-servername",
            &s.pnid,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(v.host.path(vcsa::VMCA_ROOT))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `(step number, recipe, plan id)` of each `step N: RECIPE: plan ID ...` line the command
/// printed.
fn steps(o: &Output) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let (n, rest) = rest.split_once(": ")?;
            let (recipe, rest) = rest.split_once(": plan ")?;
            let id = rest.split_whitespace().next()?;
            Some((n.to_owned(), recipe.to_owned(), id.to_owned()))
        })
        .collect()
}

/// The vSphere certificates of `agent` in the inventory: `(role, not_after)`.
fn certs(c: &Controller, agent: &str) -> Vec<(String, i64)> {
    c.json(&["inventory", "--agent", agent])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap_or_default().to_owned(),
                r["not_after"]
                    .as_str()
                    .and_then(certfleet_common::model::parse_time)
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Roles of the recovered kinds (STS, Machine SSL, solution users) expired in the inventory.
fn expired_roles(c: &Controller, agent: &str) -> Vec<String> {
    let t = now();
    certs(c, agent)
        .into_iter()
        .filter(|(role, na)| {
            (role.starts_with("vsphere.sts_signing")
                || role == "vsphere.machine_ssl"
                || role.starts_with("vsphere.solution_user."))
                && *na <= t
        })
        .map(|(r, _)| r)
        .collect()
}

/// The VMCA root reaches its end: the same key and subject, re-issued with a validity that
/// ended a day ago (what a 10-year-old root looks like), written where VMCA keeps it.
pub(crate) fn expire_vmca_root(v: &Vcsa) {
    let root = v.host.path(vcsa::VMCA_ROOT);
    let pem = std::fs::read_to_string(&root).unwrap();
    let key = std::fs::read_to_string(v.host.path(vcsa::VMCA_KEY)).unwrap();
    let key = rcgen::KeyPair::from_pem(&key).unwrap();
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut p = rcgen::CertificateParams::default();
    for attr in x.subject().iter_attributes() {
        let oid: Vec<u64> = attr.attr_type().iter().unwrap().collect();
        p.distinguished_name
            .push(rcgen::DnType::from_oid(&oid), attr.as_str().unwrap());
    }
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let t = time::OffsetDateTime::now_utc();
    p.not_before = t - time::Duration::days(3651);
    p.not_after = t - time::Duration::days(1);
    std::fs::write(&root, p.self_signed(&key).unwrap().pem()).unwrap();
}

#[test]
fn recover_vsphere_brings_a_fully_expired_vcenter_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(&dir.path().join("ctl"), &[]);
    let (v, _services, _agent) = expired_vcsa(&c, dir.path(), "vc1");
    let recover = |args: &[&str]| {
        let mut a = vec!["recover", "vsphere"];
        a.extend(args);
        c.cli_as(&c.admin(), &a)
    };

    // Before: the simulated services refuse.
    let (ok, out) = login(&v);
    assert!(
        !ok && out.contains("the STS signing certificate CN=ssoserverSign")
            && out.contains("[503] Service Unavailable: the vsphere-webclient solution user")
            && out.contains("[503] Service Unavailable: the vpxd solution user"),
        "login with an expired STS and solution users: {out}"
    );
    let (ok, out) = tls_verifies(&v);
    assert!(
        !ok && out.contains("certificate has expired"),
        "TLS with an expired Machine SSL: {out}"
    );
    let before = expired_roles(&c, "vc1");
    for role in [
        "vsphere.sts_signing",
        "vsphere.machine_ssl",
        "vsphere.solution_user.wcp",
        "vsphere.solution_user.hvc",
        "vsphere.solution_user.vpxd",
    ] {
        assert!(
            before.iter().any(|r| r == role),
            "{role} not expired: {before:?}"
        );
    }

    // 1. An unknown domain (or agent): usage error naming the known ones, nothing planned.
    let o = recover(&["--domain", "corp.local"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("known domains: vsphere.local (vc1)"),
        "{}",
        text(&o)
    );

    let o = recover(&["--agent", "vc9"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("agents running the vsphere collector: vc1"),
        "{}",
        text(&o)
    );

    // 2. Dry run: three dry-run plans in the GSS order, nothing changed on the host.
    let hash = hash_root(&v.host.root);
    let o = recover(&["--domain", "vsphere.local", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let planned = steps(&o);
    let order: Vec<(&str, &str)> = planned
        .iter()
        .map(|(n, r, _)| (n.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("1", "vsphere-sts"),
            ("2", "vsphere-machine-ssl"),
            ("3", "vsphere-solution-users")
        ],
        "{}",
        text(&o)
    );
    for (_, recipe, id) in &planned {
        let p = c.json(&["plan", "show", id]);
        assert_eq!(p["state"], "dry_run", "{recipe}: {p:#}");
        assert!(
            !p["steps"].as_array().unwrap().is_empty(),
            "{recipe}: {p:#}"
        );
    }
    let p = c.json(&["plan", "show", &planned[2].2]);
    assert!(p.to_string().contains("wcp"), "wcp not in the plan: {p:#}");
    assert!(text(&o).contains("planned in"), "{}", text(&o));
    assert!(
        text(&o).contains("node(s) vc1 (SSO domain vsphere.local: vc1)"),
        "{}",
        text(&o)
    );
    assert_eq!(
        hash_root(&v.host.root),
        hash,
        "the dry run changed the host"
    );
    assert!(!login(&v).0);

    // 3. The recovery: every plan succeeds, logins and TLS work, nothing expired any more.
    let o = recover(&["--domain", "vsphere.local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let done = steps(&o);
    assert_eq!(done.len(), 3, "{}", text(&o));
    for (_, recipe, id) in &done {
        assert_eq!(
            c.json(&["plan", "show", id])["state"],
            "succeeded",
            "{recipe}"
        );
        assert!(
            text(&o).contains(&format!("{recipe}: plan {id} succeeded")),
            "{}",
            text(&o)
        );
    }
    assert!(text(&o).contains("wall time"), "{}", text(&o));
    assert!(text(&o).contains("verified:"), "{}", text(&o));
    let (ok, out) = login(&v);
    assert!(ok, "login after the recovery: {out}");
    let (ok, out) = tls_verifies(&v);
    assert!(ok, "TLS after the recovery: {out}");
    assert_eq!(expired_roles(&c, "vc1"), Vec::<String>::new());
    // Nothing else expired either: the old Machine SSL certificate left BACKUP_STORE.
    let t = now();
    let left: Vec<(String, i64)> = certs(&c, "vc1")
        .into_iter()
        .filter(|(_, na)| *na <= t)
        .collect();
    assert!(left.is_empty(), "still expired in the inventory: {left:?}");
    for user in VcsaVersion::V70.solution_users() {
        let pem = getcert(&v, user, user);
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
        let rec = certfleet_common::x509::parse_der(&der).unwrap();
        assert!(rec.not_after > now() + 365 * 86_400, "{user}: {rec:?}");
    }
    assert_services_as_before(&v);
    // A second run has nothing to do.
    let o = recover(&["--domain", "vsphere.local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to recover"), "{}", text(&o));
    assert!(steps(&o).is_empty(), "{}", text(&o));

    // 4. "Reset all": a second vCenter, in its own SSO domain, whose 10-year VMCA root ended
    // five days ago and every certificate with it (VMCA caps a certificate at its root's end).
    // One command makes a new root, then issues STS, Machine SSL and every solution user from
    // it, in that order; logins and TLS (verified against the new root) work again.
    let mut spec = expired_vcsa_spec("vc2.lab.local").with("vmca_root", expired());
    spec.domain = "reset.local".into();
    let (v2, _services2, _agent2) = start_vcsa(&c, dir.path(), "vc2", "vc2", &spec);
    support::wait_for(
        "vc2 to report its expired VMCA root",
        Duration::from_secs(60),
        || {
            certs(&c, "vc2")
                .iter()
                .any(|(r, na)| r == "vsphere.vmca_root" && *na <= now())
                .then_some(())
        },
    );
    let old_root = std::fs::read_to_string(v2.host.path(vcsa::VMCA_ROOT)).unwrap();
    assert!(!login(&v2).0 && !tls_verifies(&v2).0);
    let hash = hash_root(&v2.host.root);
    let o = recover(&["--domain", "reset.local", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let order: Vec<String> = steps(&o).into_iter().map(|(_, r, _)| r).collect();
    assert_eq!(
        order,
        [
            "vsphere-vmca-root",
            "vsphere-sts",
            "vsphere-machine-ssl",
            "vsphere-solution-users"
        ],
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("reset all"), "{}", text(&o));
    assert_eq!(hash_root(&v2.host.root), hash, "the dry run changed vc2");
    let o = recover(&["--domain", "reset.local"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let done = steps(&o);
    assert_eq!(done.len(), 4, "{}", text(&o));
    assert!(text(&o).contains("verified:"), "{}", text(&o));
    assert!(
        text(&o).contains("the old VMCA root stays in TRUSTED_ROOTS"),
        "{}",
        text(&o)
    );
    let new_root = std::fs::read_to_string(v2.host.path(vcsa::VMCA_ROOT)).unwrap();
    assert_ne!(new_root, old_root);
    let root = certfleet_common::x509::parse_der(
        &certfleet_common::pem::first_certificate(new_root.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(
        root.is_ca && root.not_after > now() + 9 * 365 * 86_400,
        "{root:?}"
    );
    // VMCA kept the old root and key (`root.cer.0`); the SSO copy and TRUSTED_ROOTS hold the
    // new root; the new key is nowhere but where VMCA keeps it.
    assert_eq!(
        std::fs::read_to_string(format!("{}.0", v2.host.path(vcsa::VMCA_ROOT).display())).unwrap(),
        old_root
    );
    assert_eq!(
        std::fs::read_to_string(v2.host.path(vcsa::SSO_ROOT_COPY)).unwrap(),
        new_root
    );
    let trusted = v2.state().unwrap();
    assert!(
        trusted
            .store("TRUSTED_ROOTS")
            .unwrap()
            .entries
            .iter()
            .any(|e| e
                .cert
                .as_deref()
                .is_some_and(|p| p.trim_end() == new_root.trim_end())),
        "the new root is not in TRUSTED_ROOTS"
    );
    let keys = Command::new("find")
        .arg(dir.path())
        .args(["-name", "vmca-root.key"])
        .output()
        .unwrap();
    assert!(keys.stdout.is_empty(), "{}", text(&keys));
    let (ok, out) = login(&v2);
    assert!(ok, "login after reset all: {out}");
    let (ok, out) = tls_verifies(&v2);
    assert!(ok, "TLS against the new root after reset all: {out}");
    let root_file = v2.host.path(vcsa::VMCA_ROOT);
    for (store, alias) in [
        ("MACHINE_SSL_CERT", "__MACHINE_CERT"),
        ("vpxd", "vpxd"),
        ("wcp", "wcp"),
        ("vsphere-webclient", "vsphere-webclient"),
    ] {
        let pem = getcert(&v2, store, alias);
        let mut child = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pem.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{store}/{alias} does not chain to the new root: {}",
            text(&out)
        );
    }
    assert_eq!(expired_roles(&c, "vc2"), Vec::<String>::new());
    // vc1, in the other domain, was not touched.
    assert!(login(&v).0);
}
