//! oVirt rotation end to end: a simulated 4.5 engine and VDSM hosts, a real controller, one
//! real agent per host, `certfleet plan create ovirt-hosts-offline … --run`, then the hosts'
//! files checked with the real `openssl` and the engine's `database.txt`, and the serial
//! console's OpenSSH host certificate with the real `ssh-keygen -L`. Also: a dry run
//! that touches nothing, a broken unit whose install rolls back and halts the plan, and
//! `plan rollback`. Needs `cargo build --workspace --bins`, `openssl`, `ssh-keygen` and a JDK's
//! `keytool`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use certfleet_integration_tests::sim::ovirt::{EngineSpec, NodeSpec, OvirtVersion};
use certfleet_integration_tests::sim::ovirt::{build_engine, build_node};
use certfleet_integration_tests::sim::{Lifetime, SimHost, systemd};
use serde_json::Value;

use crate::support::{self, Controller, Proc};

pub(crate) const VDSM_CERT: &str = "etc/pki/vdsm/certs/vdsmcert.pem";
const COPIES: &[&str] = &[
    "etc/pki/vdsm/certs/vdsmcert.pem",
    "etc/pki/vdsm/libvirt-spice/server-cert.pem",
    "etc/pki/vdsm/libvirt-vnc/server-cert.pem",
    "etc/pki/libvirt/clientcert.pem",
];
pub(crate) const PKI: &str = "etc/pki/ovirt-engine";
pub(crate) const ORG: &str = "example.test";

pub(crate) struct Fleet {
    pub c: Controller,
    pub _agents: Vec<Proc>,
    pub engine: SimHost,
    pub hosts: BTreeMap<String, SimHost>,
}

pub(crate) fn fqdn(name: &str) -> String {
    format!("{name}.{ORG}")
}

/// Engine plus hosts `(name, days until the VDSM certificate expires)`, each with a running
/// agent; waits until the controller's inventory holds every host's VDSM certificate.
pub(crate) fn fleet(dir: &Path, hosts: &[(&str, i64)]) -> Fleet {
    fleet_with(dir, hosts, "")
}

/// [`fleet`] with `extra` appended to every agent's `[settings]`.
pub(crate) fn fleet_with(dir: &Path, hosts: &[(&str, i64)], extra: &str) -> Fleet {
    fleet_spec(
        dir,
        EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine")),
        hosts,
        extra,
    )
}

/// [`fleet_with`] with an engine built from `spec`.
pub(crate) fn fleet_spec(
    dir: &Path,
    spec: EngineSpec,
    hosts: &[(&str, i64)],
    extra: &str,
) -> Fleet {
    fleet_nodes(dir, spec, hosts, extra, &|_| {})
}

/// [`fleet_spec`] with each host's [`NodeSpec`] adjusted by `node` before it is built.
pub(crate) fn fleet_nodes(
    dir: &Path,
    spec: EngineSpec,
    hosts: &[(&str, i64)],
    extra: &str,
    node: &dyn Fn(&mut NodeSpec),
) -> Fleet {
    let sim = support::bin("certfleet-sim");
    assert!(
        sim.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        sim.display()
    );
    let engine = SimHost::new(dir.join("root-engine"), &sim).unwrap();
    let e = build_engine(&engine, &spec).unwrap();
    let mut roots = BTreeMap::new();
    for (name, days) in hosts {
        let h = SimHost::new(dir.join(format!("root-{name}")), &sim).unwrap();
        let mut spec = NodeSpec::new(&fqdn(name));
        spec.vdsm = Some(Lifetime::days(1800, *days));
        node(&mut spec);
        build_node(&h, &spec, &e).unwrap();
        roots.insert(name.to_string(), h);
    }
    let c = Controller::start(&dir.join("ctl"), &[]);
    std::fs::create_dir_all(dir.join("ctl")).unwrap();
    let mut agents = Vec::new();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!("[settings]\n\"ovirt.p12_password\" = \"mypass\"\n{extra}"),
    )
    .unwrap();
    let all: Vec<(String, &SimHost)> = std::iter::once(("engine".to_owned(), &engine))
        .chain(roots.iter().map(|(n, h)| (n.clone(), h)))
        .collect();
    for (name, h) in &all {
        let state = c.enroll(name);
        let root = h.root.display().to_string();
        agents.push(c.run_agent(&state, Some(&cfg), &["--root", &root]));
    }
    c.wait_connected(all.len());
    let want = hosts.len();
    support::wait_for(
        "hosts' VDSM certificates in the inventory",
        Duration::from_secs(60),
        || {
            let inv = c.json(&["inventory"]);
            let n = inv
                .as_array()?
                .iter()
                .filter(|r| {
                    r["role"] == "ovirt.node.vdsm"
                        && r.to_string().contains("/etc/pki/vdsm/certs/vdsmcert.pem")
                })
                .count();
            (n >= want).then_some(())
        },
    );
    Fleet {
        c,
        _agents: agents,
        engine,
        hosts: roots,
    }
}

pub(crate) fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `notAfter` of a certificate file as Unix time, by `openssl x509 -checkend`-free parsing.
pub(crate) fn not_after(path: &Path) -> i64 {
    let text = openssl(&["x509", "-in", &s(path), "-noout", "-enddate"]);
    let v = text.trim().strip_prefix("notAfter=").unwrap();
    let fmt = time::format_description::parse_borrowed::<1>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )
    .unwrap();
    time::PrimitiveDateTime::parse(v, &fmt)
        .unwrap()
        .assume_utc()
        .unix_timestamp()
}

pub(crate) fn serial(path: &Path) -> String {
    openssl(&["x509", "-in", &s(path), "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

pub(crate) fn now() -> i64 {
    certfleet_common::model::now()
}

/// SHA-256 of every file (and symlink target) under `root`, by relative path.
pub(crate) fn hash_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if ft.is_dir() {
                walk(base, &p, out);
            } else {
                use std::os::unix::fs::MetadataExt;
                let m = e.metadata().unwrap();
                let bytes = std::fs::read(&p).unwrap();
                out.insert(
                    rel,
                    format!(
                        "{} {:o} {}:{}",
                        certfleet_common::pki::sha256_hex(&bytes),
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid()
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub(crate) fn roots_hash(f: &Fleet) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for (name, h) in
        std::iter::once(("engine", &f.engine)).chain(f.hosts.iter().map(|(n, h)| (n.as_str(), h)))
    {
        for (k, v) in hash_tree(&h.root) {
            all.insert(format!("{name}/{k}"), v);
        }
    }
    all
}

/// Runs the host's simulated `systemctl`; returns the exit code.
pub(crate) fn systemctl(h: &SimHost, args: &[&str]) -> i32 {
    Command::new(h.path("/usr/bin/systemctl"))
        .args(args)
        .output()
        .unwrap()
        .status
        .code()
        .unwrap()
}

pub(crate) fn wait_plan(c: &Controller, id: &str, states: &[&str]) -> Value {
    support::wait_for(
        &format!("plan {id} to reach {states:?}"),
        Duration::from_secs(180),
        || {
            let p = c.json(&["plan", "show", id]);
            states
                .contains(&p["state"].as_str().unwrap_or_default())
                .then_some(p)
        },
    )
}

pub(crate) fn step<'a>(plan: &'a Value, key_part: &str, action: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["target"].as_str().unwrap().starts_with(key_part) && s["action"] == action)
        .unwrap_or_else(|| panic!("no {action} step for {key_part} in {plan:#}"))
}

/// Everything a renewed host must show: the four copies equal and new, issued by the engine
/// CA with the SAN, matching the host key, recorded in the engine's index and certs/.
pub(crate) fn check_renewed(f: &Fleet, name: &str, before_not_after: i64) {
    let h = &f.hosts[name];
    let main = h.path(VDSM_CERT);
    let bytes = std::fs::read(&main).unwrap();
    for c in COPIES {
        assert_eq!(
            std::fs::read(h.path(c)).unwrap(),
            bytes,
            "{name}: {c} differs"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.path(c)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}: mode of {c}");
    }
    let na = not_after(&main);
    assert!(na > before_not_after, "{name}: notAfter did not move");
    // VdsCertificateValidityInDays of 4.5 (`openssl ca -days` counts from now, not from the
    // back-dated -startdate).
    let expect = now() + 1827 * 86_400;
    assert!(
        (na - expect).abs() < 3600,
        "{name}: notAfter {na}, want ≈{expect}"
    );
    let ca = f.engine.path(&format!("{PKI}/ca.pem"));
    let v = openssl(&["verify", "-CAfile", &s(&ca), &s(&main)]);
    assert!(v.contains(": OK"), "{v}");
    let subj = openssl(&[
        "x509",
        "-in",
        &s(&main),
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        subj.contains(&format!("O = {ORG}, CN = {}", fqdn(name))),
        "{name}: {subj}"
    );
    assert!(
        subj.contains(&format!("DNS:{}", fqdn(name))),
        "{name}: no SAN: {subj}"
    );
    let key_pub = openssl(&[
        "pkey",
        "-in",
        &s(&h.path("/etc/pki/vdsm/keys/vdsmkey.pem")),
        "-pubout",
    ]);
    let cert_pub = openssl(&["x509", "-in", &s(&main), "-noout", "-pubkey"]);
    assert_eq!(
        key_pub, cert_pub,
        "{name}: certificate does not match vdsmkey.pem"
    );
    let db = std::fs::read_to_string(f.engine.path(&format!("{PKI}/database.txt"))).unwrap();
    let ser = serial(&main);
    let line = db
        .lines()
        .find(|l| l.split('\t').nth(3) == Some(ser.as_str()))
        .unwrap_or_else(|| panic!("serial {ser} not in database.txt:\n{db}"));
    assert!(line.starts_with("V\t"), "{line}");
    assert!(
        line.ends_with(&format!("/O={ORG}/CN={}", fqdn(name))),
        "{line}"
    );
    let engine_copy = f.engine.path(&format!("{PKI}/certs/{}.cer", fqdn(name)));
    assert_eq!(
        serial(&engine_copy),
        ser,
        "engine certs/<fqdn>.cer is not the new one"
    );
    for unit in ["libvirtd", "vdsmd"] {
        assert_eq!(
            systemd::unit(h, unit).unwrap().state,
            "active",
            "{name}: {unit}"
        );
    }
}

pub(crate) const VMCONSOLE_CERT: &str = "etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub";
const VMCONSOLE_KEY: &str = "etc/pki/ovirt-vmconsole/host-ssh_host_rsa";

/// Mode, uid, gid of a file.
pub(crate) type ModeOwner = (u32, u32, u32);

/// Runs the real `ssh-keygen`; returns its stdout.
fn ssh_keygen(args: &[&str]) -> String {
    let out = Command::new("ssh-keygen").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of `Name: value` in `ssh-keygen -L` output (first line that has it).
fn listed<'a>(listing: &'a str, name: &str) -> &'a str {
    listing
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {listing}"))
}

/// `SHA256:…` of an OpenSSH public key file, as `ssh-keygen -l` prints it.
fn ssh_fingerprint(path: &Path) -> String {
    ssh_keygen(&["-l", "-f", &s(path)])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The serial console's host certificate after the offline recipe: a new host certificate
/// for the host's own key and FQDN, signed by the engine CA's key, valid after `before`'s
/// end, byte-identical to the engine's `certs/<fqdn>-ssh-cert.pub`, mode and owner as
/// before; the step's backup holds `before`; `ovirt-vmconsole-host-sshd` restarted.
pub(crate) fn check_vmconsole_renewed(
    f: &Fleet,
    name: &str,
    before: &[u8],
    meta_before: ModeOwner,
) {
    use std::os::unix::fs::MetadataExt;
    let h = &f.hosts[name];
    let cert = h.path(VMCONSOLE_CERT);
    let now_bytes = std::fs::read(&cert).unwrap();
    assert_ne!(now_bytes, before, "{name}: {VMCONSOLE_CERT} not replaced");
    let m = std::fs::metadata(&cert).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        meta_before,
        "{name}: mode/owner of {VMCONSOLE_CERT}"
    );
    let l = ssh_keygen(&["-L", "-f", &s(&cert)]);
    let fq = fqdn(name);
    assert!(
        listed(&l, "Type").ends_with("host certificate"),
        "{name}: {l}"
    );
    assert_eq!(listed(&l, "Key ID"), format!("\"{fq}\""), "{l}");
    let principals: Vec<&str> = l
        .lines()
        .skip_while(|x| !x.trim().starts_with("Principals:"))
        .skip(1)
        .take_while(|x| !x.contains(": "))
        .map(str::trim)
        .collect();
    assert_eq!(principals, [fq.as_str()], "{l}");
    // Signed by the engine CA key: its OpenSSH form derived here from ca.pem.
    let work = tempfile::tempdir().unwrap();
    let ca_pem = work.path().join("ca.pem");
    std::fs::write(
        &ca_pem,
        openssl(&[
            "x509",
            "-in",
            &s(&f.engine.path(&format!("{PKI}/ca.pem"))),
            "-noout",
            "-pubkey",
        ]),
    )
    .unwrap();
    let ca_pub = work.path().join("ca.pub");
    std::fs::write(
        &ca_pub,
        ssh_keygen(&["-i", "-m", "PKCS8", "-f", &s(&ca_pem)]),
    )
    .unwrap();
    let signer = listed(&l, "Signing CA");
    assert!(
        signer.contains(&ssh_fingerprint(&ca_pub)),
        "{name}: signed by {signer}, not the engine CA"
    );
    // For the host's own key, which stayed where it was.
    let host_pub = work.path().join("host.pub");
    std::fs::write(
        &host_pub,
        ssh_keygen(&["-y", "-f", &s(&h.path(VMCONSOLE_KEY))]),
    )
    .unwrap();
    assert!(
        listed(&l, "Public key").ends_with(&ssh_fingerprint(&host_pub)),
        "{name}: {l}"
    );
    // Later than before; `Valid: from A to B` in one time zone, so B compares as text.
    let to = |listing: &str| {
        listed(listing, "Valid")
            .rsplit(" to ")
            .next()
            .unwrap()
            .to_owned()
    };
    let old_file = work.path().join("old-cert.pub");
    std::fs::write(&old_file, before).unwrap();
    let old = ssh_keygen(&["-L", "-f", &s(&old_file)]);
    assert!(
        to(&l) > to(&old),
        "{name}: valid {} (was {})",
        to(&l),
        to(&old)
    );
    let expect_year = time::OffsetDateTime::from_unix_timestamp(now() + 1827 * 86_400)
        .unwrap()
        .year()
        .to_string();
    assert!(to(&l).starts_with(&expect_year), "{name}: {l}");
    assert_eq!(
        std::fs::read(f.engine.path(&format!("{PKI}/certs/{fq}-ssh-cert.pub"))).unwrap(),
        now_bytes,
        "{name}: engine certs/{fq}-ssh-cert.pub is not what the host got"
    );
    let u = systemd::unit(h, "ovirt-vmconsole-host-sshd").unwrap();
    assert_eq!(u.state, "active", "{name}");
    assert!(
        u.starts >= 1,
        "{name}: ovirt-vmconsole-host-sshd not restarted"
    );
    // The agent's backup of the replaced certificate.
    let backups = f.c.dir.join(format!("agent-{name}/backups"));
    let kept = std::fs::read_dir(&backups)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|d| {
            std::fs::read_to_string(d.path().join("manifest.json"))
                .ok()
                .map(|m| (d.path(), m))
        })
        .find_map(|(dir, m)| {
            let v: Value = serde_json::from_str(&m).unwrap();
            v["files"]
                .as_array()?
                .iter()
                .find(|x| x["path"].as_str().unwrap().ends_with(VMCONSOLE_CERT))
                .map(|x| std::fs::read(dir.join(x["stored"].as_str().unwrap())).unwrap())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name}: no backup of {VMCONSOLE_CERT} in {}",
                backups.display()
            )
        });
    assert_eq!(
        kept, before,
        "{name}: the backup does not hold the old certificate"
    );
}

#[test]
fn offline_recipe_renews_expired_and_expiring_hosts_and_dry_run_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The serial console certificate was issued with the VDSM one and expires with it.
    let f = fleet_nodes(
        dir.path(),
        EngineSpec::new(OvirtVersion::V4_5, &fqdn("engine")),
        &[("kvm01", -3), ("kvm02", 20), ("kvm03", 1500)],
        "",
        &|n| n.vmconsole = n.vdsm,
    );
    let before: BTreeMap<String, i64> = f
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), not_after(&h.path(VDSM_CERT))))
        .collect();
    let console_before: BTreeMap<String, (Vec<u8>, ModeOwner)> = f
        .hosts
        .iter()
        .map(|(n, h)| {
            use std::os::unix::fs::MetadataExt;
            let p = h.path(VMCONSOLE_CERT);
            let m = std::fs::metadata(&p).unwrap();
            (
                n.clone(),
                (
                    std::fs::read(&p).unwrap(),
                    (m.mode() & 0o7777, m.uid(), m.gid()),
                ),
            )
        })
        .collect();
    // The expired host: libvirtd refuses to start.
    let h1 = &f.hosts["kvm01"];
    assert_eq!(systemctl(h1, &["restart", "libvirtd"]), 1);
    assert_eq!(systemctl(h1, &["is-active", "libvirtd"]), 3);
    assert!(
        systemd::unit(h1, "libvirtd")
            .unwrap()
            .last_error
            .contains("expired")
    );

    // Dry run: the step graph, nothing touched.
    let roots_before = roots_hash(&f);
    let dry = f.c.json(&[
        "plan",
        "create",
        "ovirt-hosts-offline",
        "--expiring-within",
        "90d",
        "--dry-run",
    ]);
    assert_eq!(dry["state"], "dry_run");
    let steps = dry["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        12,
        "two hosts × VDSM csr/sign/install + vmconsole pubkey/sign/install: {dry:#}"
    );
    assert_eq!(
        step(&dry, "kvm01", "ovirt.vmconsole_sign")["agent"],
        "engine"
    );
    assert!(!dry.to_string().contains("kvm03"), "healthy host planned");
    assert_eq!(
        step(&dry, "kvm01", "ovirt.enroll_request")["agent"],
        "engine"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(roots_hash(&f), roots_before, "dry run changed a host");

    let kvm03_before = hash_tree(&f.hosts["kvm03"].root);
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-hosts-offline",
        "--expiring-within",
        "90d",
        "--failure-budget",
        "0",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    for name in ["kvm01", "kvm02"] {
        check_renewed(&f, name, before[name]);
        let (bytes, meta) = &console_before[name];
        check_vmconsole_renewed(&f, name, bytes, *meta);
    }
    // pki-enroll-openssh-cert.sh's host line: -h, the FQDN as id and principal, no -O.
    let out = step(&done, "kvm01", "ovirt.vmconsole_sign")["output"].to_string();
    assert!(
        out.contains("-I kvm01.example.test -h -V -1h:+1827d -n kvm01.example.test"),
        "{out}"
    );
    assert!(!out.contains(" -O "), "{out}");
    // The expired host's libvirtd started with the new certificate.
    let u = systemd::unit(h1, "libvirtd").unwrap();
    assert_eq!(u.state, "active");
    assert!(u.starts >= 1);
    assert_eq!(
        hash_tree(&f.hosts["kvm03"].root),
        kvm03_before,
        "healthy host touched"
    );
    // The sign step ran the script's command in the engine PKI.
    let out = step(&done, "kvm01", "ovirt.enroll_request")["output"].to_string();
    assert!(out.contains("-extensions v3_ca_san"), "{out}");
    assert!(out.contains("OVIRT_SAN=DNS:kvm01.example.test"), "{out}");
}

#[test]
fn offline_recipe_broken_unit_rolls_back_and_halts() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), &[("kvm01", 10), ("kvm02", 12)]);
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-hosts-offline",
        "--expiring-within",
        "30d",
        "--failure-budget",
        "0",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    // Break vdsmd on whichever host the plan does first.
    let first = plan["steps"][0]["agent"].as_str().unwrap().to_owned();
    let other = if first == "kvm01" { "kvm02" } else { "kvm01" };
    let broken = &f.hosts[&first];
    systemd::set_broken(broken, "vdsmd", true).unwrap();
    let broken_before = hash_tree(&broken.root.join("etc"));
    let other_before = hash_tree(&f.hosts[other].root.join("etc"));
    f.c.cli(&["plan", "run", &id]);
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "failed", "{done:#}");
    let install = step(&done, &first, "cert.install");
    assert_eq!(install["state"], "failed");
    let msg = install["message"].as_str().unwrap();
    assert!(
        msg.contains("vdsmd") && msg.contains("rolled back"),
        "{msg}"
    );
    // Byte-identical files (and modes, owners) on the broken host.
    assert_eq!(hash_tree(&broken.root.join("etc")), broken_before);
    // Budget 0: the other host's steps were skipped, never sent.
    for s in done["steps"].as_array().unwrap() {
        if s["target"].as_str().unwrap().starts_with(other) {
            assert_eq!(s["state"], "skipped", "{s:#}");
            assert_eq!(s["attempts"], 0, "{s:#}");
        }
    }
    assert_eq!(hash_tree(&f.hosts[other].root.join("etc")), other_before);
    // libvirtd came back on the old, still valid certificate.
    assert_eq!(systemd::unit(broken, "libvirtd").unwrap().state, "active");
}

#[test]
fn offline_recipe_plan_rollback_restores_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let f = fleet(dir.path(), &[("kvm01", 15), ("kvm02", 25)]);
    let before: BTreeMap<String, BTreeMap<String, String>> = f
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), hash_tree(&h.root.join("etc"))))
        .collect();
    let engine_certs_before = hash_tree(&f.engine.path(&format!("{PKI}/certs")));
    let plan = f.c.json(&[
        "plan",
        "create",
        "ovirt-hosts-offline",
        "--expiring-within",
        "30d",
        "--run",
    ]);
    let id = plan["id"].as_str().unwrap().to_owned();
    let done = wait_plan(&f.c, &id, &["succeeded", "failed"]);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    for (n, h) in &f.hosts {
        assert_ne!(hash_tree(&h.root.join("etc")), before[n], "{n} not renewed");
    }
    f.c.cli(&["plan", "rollback", &id]);
    let back = wait_plan(&f.c, &id, &["rolled_back", "failed"]);
    assert_eq!(back["state"], "rolled_back", "{back:#}");
    for (n, h) in &f.hosts {
        assert_eq!(
            hash_tree(&h.root.join("etc")),
            before[n],
            "{n} not restored"
        );
        assert_eq!(systemd::unit(h, "libvirtd").unwrap().state, "active");
    }
    // The engine's per-host certificates are back too (new serial copies remain, as openssl
    // keeps them).
    let after = hash_tree(&f.engine.path(&format!("{PKI}/certs")));
    for (k, v) in &engine_certs_before {
        assert_eq!(after.get(k), Some(v), "engine certs/{k}");
    }
}
