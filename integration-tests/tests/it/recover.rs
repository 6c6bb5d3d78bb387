//! Emergency recovery with no controller (issue 11, seed 003 "after expiry"): a simulated 4.5
//! engine and a VDSM host whose every certificate has expired (VDSM, QEMU, vmconsole, and the
//! engine's own service certificates), the simulated libvirtd refusing to start, and only the
//! real `certfleet-agent` binary run by hand on each side: `recover ovirt-host --csr-out` on
//! the host, `sign` on the engine, `recover ovirt-host --cert-in` back on the host. Also: the
//! engine never signs twice for one key (a repeat, and a `sign` killed right after `openssl
//! ca` then run again), a certificate for another key or a dry run changes nothing.
//! Needs `cargo build --workspace --bins` and `openssl`.

use std::path::Path;
use std::process::{Command, Output};

use certfleet_integration_tests::sim::ovirt::{EngineSpec, NodeSpec, OvirtVersion};
use certfleet_integration_tests::sim::ovirt::{build_engine, build_node};
use certfleet_integration_tests::sim::{Lifetime, SimHost, systemd};

use crate::ovirt_rotation::{PKI, VDSM_CERT, fqdn, hash_tree, not_after, openssl, s, systemctl};
use crate::support;

const COPIES: &[&str] = &[
    "etc/pki/vdsm/libvirt-spice/server-cert.pem",
    "etc/pki/vdsm/libvirt-vnc/server-cert.pem",
    "etc/pki/libvirt/clientcert.pem",
];

fn agent(args: &[&str], root: &Path, state: &Path, cfg: &Path, crash: Option<&str>) -> Output {
    let mut cmd = Command::new(support::bin("certfleet-agent"));
    cmd.args(args)
        .arg("--root")
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(cfg)
        .env_remove("CERTFLEET_TEST_CRASH_AT");
    if let Some(c) = crash {
        cmd.env("CERTFLEET_TEST_CRASH_AT", c);
    }
    cmd.output().unwrap()
}

fn ok(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "agent failed: {text}");
    text
}

fn failed(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "agent should have failed: {text}");
    text
}

fn db_rows(engine: &SimHost) -> usize {
    std::fs::read_to_string(engine.path(&format!("{PKI}/database.txt")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn controller_less_ovirt_host_recovery_with_everything_expired() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = support::bin("certfleet-sim");
    let engine = SimHost::new(d.join("root-engine"), &sim).unwrap();
    let mut espec = EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine"));
    for e in ["apache", "engine", "jboss", "websocket-proxy", "reports"] {
        espec.lifetimes.insert(e.into(), Lifetime::days(1900, -30));
    }
    let e = build_engine(&engine, &espec).unwrap();
    let host = SimHost::new(d.join("root-kvm01"), &sim).unwrap();
    let mut spec = NodeSpec::new(&fqdn("kvm01"));
    spec.vdsm = Some(Lifetime::days(1900, -30));
    spec.qemu = Some(Lifetime::days(1900, -30));
    spec.vmconsole = Some(Lifetime::days(1900, -30));
    build_node(&host, &spec, &e).unwrap();
    let cfg = d.join("agent.toml");
    std::fs::write(&cfg, "[settings]\n\"ovirt.p12_password\" = \"mypass\"\n").unwrap();
    let (hstate, estate) = (d.join("state-kvm01"), d.join("state-engine"));
    let (csr, cer) = (d.join("kvm01.csr"), d.join("kvm01.cer"));

    // The outage: the VDSM certificate expired, libvirtd refuses to start.
    let before_na = not_after(&host.path(VDSM_CERT));
    assert!(before_na < support_now());
    assert_eq!(systemctl(&host, &["restart", "libvirtd"]), 1);
    assert!(
        systemd::unit(&host, "libvirtd")
            .unwrap()
            .last_error
            .contains("expired")
    );
    let owners_before = meta(&host);

    // 1. Host: the CSR from its own key, with its subject; the SAN to use is printed.
    let out = ok(&agent(
        &["recover", "ovirt-host", "--csr-out", &s(&csr)],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(out.contains("EXPIRED"), "{out}");
    assert!(out.contains("--san DNS:kvm01.example.test"), "{out}");
    let key_pub = openssl(&[
        "pkey",
        "-in",
        &s(&host.path("/etc/pki/vdsm/keys/vdsmkey.pem")),
        "-pubout",
    ]);
    assert_eq!(
        openssl(&["req", "-in", &s(&csr), "-noout", "-pubkey"]),
        key_pub
    );
    let subj = openssl(&["req", "-in", &s(&csr), "-noout", "-subject"]);
    assert!(
        subj.contains("O = example.test, CN = kvm01.example.test"),
        "{subj}"
    );

    // 2. Engine: killed right after `openssl ca` signed; the repeat finds the certificate in
    // database.txt and does not sign again; a third run answers from the journal.
    let rows = db_rows(&engine);
    let sign = [
        "sign",
        "--csr",
        &s(&csr),
        "--out",
        &s(&cer),
        "--san",
        "DNS:kvm01.example.test",
    ];
    let killed = agent(
        &sign,
        &engine.root,
        &estate,
        &cfg,
        Some("ovirt.enroll_request:after-sign"),
    );
    assert!(!killed.status.success());
    assert_eq!(db_rows(&engine), rows + 1, "openssl ca signed once");
    assert!(!cer.exists());
    let out = ok(&agent(&sign, &engine.root, &estate, &cfg, None));
    assert!(out.contains("not signing again"), "{out}");
    assert_eq!(db_rows(&engine), rows + 1, "signed twice after a crash");
    let first = std::fs::read(&cer).unwrap();
    let out = ok(&agent(&sign, &engine.root, &estate, &cfg, None));
    assert!(out.contains("not signed again"), "{out}");
    assert_eq!(db_rows(&engine), rows + 1, "signed twice for one key");
    assert_eq!(std::fs::read(&cer).unwrap(), first);
    // A different SAN for the same key is refused, not signed.
    let other = failed(&agent(
        &[
            "sign",
            "--csr",
            &s(&csr),
            "--out",
            &s(&d.join("x.cer")),
            "--san",
            "DNS:other.example.test",
        ],
        &engine.root,
        &estate,
        &cfg,
        None,
    ));
    assert!(
        other.contains("does not sign a second certificate"),
        "{other}"
    );
    assert_eq!(db_rows(&engine), rows + 1);
    let text = openssl(&[
        "x509",
        "-in",
        &s(&cer),
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName",
    ]);
    assert!(text.contains("DNS:kvm01.example.test"), "no SAN: {text}");
    let ca = engine.path(&format!("{PKI}/ca.pem"));
    assert!(openssl(&["verify", "-CAfile", &s(&ca), &s(&cer)]).contains(": OK"));

    // 3a. An expired certificate, a valid one for another key (the engine CA itself) and a
    // dry run change nothing on the host.
    let tree = hash_tree(&host.root);
    let wrong = failed(&agent(
        &[
            "recover",
            "ovirt-host",
            "--cert-in",
            &s(&engine.path(&format!("{PKI}/certs/apache.cer"))),
        ],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(wrong.contains("not valid now"), "{wrong}");
    let wrong = failed(&agent(
        &["recover", "ovirt-host", "--cert-in", &s(&ca)],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(wrong.contains("this host's key"), "{wrong}");
    let dry = ok(&agent(
        &["recover", "ovirt-host", "--cert-in", &s(&cer), "--dry-run"],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        hash_tree(&host.root),
        tree,
        "a refused or dry run changed the host"
    );

    // 3b. Install: every copy, backups, owner and mode kept, libvirtd and vdsmd started.
    let out = ok(&agent(
        &["recover", "ovirt-host", "--cert-in", &s(&cer)],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(out.contains("recovered:"), "{out}");
    assert!(out.contains("wall time"), "{out}");
    let main = std::fs::read(host.path(VDSM_CERT)).unwrap();
    assert_eq!(main, first);
    for c in COPIES {
        assert_eq!(std::fs::read(host.path(c)).unwrap(), main, "{c}");
    }
    assert_eq!(meta(&host), owners_before, "owner or mode changed");
    assert!(not_after(&host.path(VDSM_CERT)) > support_now() + 1800 * 86_400);
    for unit in ["libvirtd", "vdsmd"] {
        assert_eq!(
            systemd::unit(&host, unit).unwrap().state,
            "active",
            "{unit}"
        );
    }
    let backups = ok(&agent_backups(&hstate));
    assert!(backups.contains("vdsmcert.pem"), "{backups}");
    // The backup holds the expired certificate, byte for byte.
    let list: serde_json::Value = serde_json::from_str(&backups).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{backups}");

    // A repeat is answered from the journal: no second backup, nothing rewritten.
    let tree = hash_tree(&host.root);
    let again = ok(&agent(
        &["recover", "ovirt-host", "--cert-in", &s(&cer)],
        &host.root,
        &hstate,
        &cfg,
        None,
    ));
    assert!(again.contains("already ran"), "{again}");
    let list: serde_json::Value = serde_json::from_str(&ok(&agent_backups(&hstate))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(hash_tree(&host.root), tree);
}

fn agent_backups(state: &Path) -> Output {
    Command::new(support::bin("certfleet-agent"))
        .args(["backups", "-o", "json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap()
}

fn support_now() -> i64 {
    certfleet_common::model::now()
}

/// Mode, owner and group of the VDSM certificate and its copies.
fn meta(h: &SimHost) -> Vec<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::iter::once(&VDSM_CERT)
        .chain(COPIES)
        .map(|c| {
            let m = std::fs::metadata(h.path(c)).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        })
        .collect()
}

/// certfleet is never the outage: a controller stopped past its server certificate's notAfter
/// starts with a fresh one (the operator CLI, which verifies it, works again), and its metrics
/// carry the fleet CA's notAfter for an alert long before it ends.
#[test]
fn controller_whose_certificate_expired_while_stopped_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = support::Controller::start(dir.path(), &[]);
    c.cli(&["agents", "list"]);
    if let Some(p) = c.proc.as_mut() {
        p.term();
    }
    // While it was stopped, its certificate expired: same key and SANs, notAfter yesterday.
    let data = dir.path().join("data");
    let ca_pem = std::fs::read_to_string(data.join("ca/ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("ca/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("server/key.pem")).unwrap())
            .unwrap();
    let sans: Vec<String> = std::fs::read_to_string(data.join("server/sans.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = params.signed_by(&key, &issuer).unwrap().pem();
    std::fs::write(data.join("server/cert.pem"), &expired).unwrap();
    c.serve();
    // The handshake verifies the server certificate: this fails with the expired one.
    c.cli(&["agents", "list"]);
    let now_pem = std::fs::read_to_string(data.join("server/cert.pem")).unwrap();
    assert_ne!(now_pem, expired);
    assert!(not_after(&data.join("server/cert.pem")) > support_now() + 300 * 86_400);
    let log = c.proc.as_ref().unwrap().log_text();
    assert!(log.contains("re-issuing"), "{log}");
    let m = c.metrics();
    let line = m
        .lines()
        .find(|l| l.starts_with("certfleet_fleet_ca_not_after_seconds "))
        .unwrap_or_else(|| panic!("no CA expiry gauge in {m}"));
    let v: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(v, not_after(&data.join("ca/ca.pem")));

    // An admin locked out (say its certificate expired) gets a new identity on the controller
    // host from the data directory: refused while the controller holds the store, done once
    // it is stopped; the old certificate is revoked, the new one works, the audit says so.
    let local = |out: &Path| {
        Command::new(support::bin("certfleet"))
            .args(["operators", "issue", "admin", "--role", "admin", "--out"])
            .arg(out)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let busy = dir.path().join("admin-busy");
    let o = local(&busy);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stop it first"), "{err}");
    assert!(!busy.join("key.pem").exists(), "half-made identity left");
    c.proc.as_mut().unwrap().term();
    let fresh = dir.path().join("admin-new");
    let o = local(&fresh);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.serve();
    assert!(!c.cli_as(&c.admin(), &["agents", "list"]).status.success());
    let o = c.cli_as(&fresh, &["audit", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("operator.issue_local"));
}
