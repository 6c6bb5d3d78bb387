//! oVirt end to end: simulated 4.4 and 4.5 engines and VDSM hosts built with the real
//! `openssl ca`, scanned by the real `certfleet-agent scan -o json` as a process, and every
//! record checked against what the real `openssl x509` / `openssl pkcs12` / `keytool` say about
//! the same files. Needs `cargo build --workspace --bins` first, `openssl` and a JDK's `keytool`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use certfleet_integration_tests::sim::ovirt::{
    Engine, EngineSpec, NodeSpec, OvirtVersion, build_engine, build_node,
};
use certfleet_integration_tests::sim::{self, Lifetime, SimHost};
use serde_json::Value;

use crate::support;

const PKI: &str = "etc/pki/ovirt-engine";

fn host(dir: &Path, name: &str) -> Result<SimHost> {
    SimHost::new(dir.join(name), support::bin("certfleet-sim"))
}

/// Runs the real agent on `root`; returns its JSON report.
fn scan(root: &Path) -> Result<Value> {
    let agent = support::bin("certfleet-agent");
    ensure!(
        agent.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        agent.display()
    );
    let cfg = root.join(".sim/agent.toml");
    std::fs::write(&cfg, "[settings]\n\"ovirt.p12_password\" = \"mypass\"\n")?;
    let out = Command::new(&agent)
        .args(["scan", "--root"])
        .arg(root)
        .arg("--config")
        .arg(&cfg)
        .args(["-o", "json"])
        .output()?;
    ensure!(
        out.status.success(),
        "agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// What `openssl x509 -noout -fingerprint -sha256 -enddate -serial -subject` says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    fingerprint: String,
    not_after: i64,
    serial: String,
    subject: String,
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdin.take().context("stdin")?;
    if let Some(data) = stdin {
        pipe.write_all(data)?;
    }
    drop(pipe);
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn x509_facts(file: Option<&Path>, pem: Option<&[u8]>) -> Result<Facts> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-enddate",
        "-serial",
        "-subject",
    ]);
    if let Some(f) = file {
        cmd.arg("-in").arg(f);
    }
    let text = String::from_utf8(run(&mut cmd, pem)?)?;
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .with_context(|| format!("no {prefix} in {text}"))
    };
    let fmt = time::format_description::parse_borrowed::<1>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )?;
    let not_after = time::PrimitiveDateTime::parse(&field("notAfter=")?, &fmt)?
        .assume_utc()
        .unix_timestamp();
    Ok(Facts {
        fingerprint: field("sha256 Fingerprint=")?
            .replace(':', "")
            .to_lowercase(),
        not_after,
        serial: field("serial=")?,
        subject: field("subject=")?.replace(" = ", "="),
    })
}

/// `ssh-keygen -L`'s view of an OpenSSH certificate (the serial console's), in the report's
/// terms: SHA-256 of the blob, serial in hex, `Valid: … to …` (UTC), type and key id.
fn ssh_facts(file: &Path) -> Result<Facts> {
    let text = String::from_utf8(run(
        Command::new("ssh-keygen")
            .env("TZ", "UTC")
            .arg("-L")
            .arg("-f")
            .arg(file),
        None,
    )?)?;
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::to_owned)
            .with_context(|| format!("no {prefix} in {text}"))
    };
    let serial: u64 = field("Serial: ")?.parse()?;
    let to = field("Valid: ")?
        .rsplit(" to ")
        .next()
        .context("Valid: … to …")?
        .to_owned();
    let fmt = time::format_description::parse_borrowed::<1>(
        "[year]-[month]-[day]T[hour]:[minute]:[second]",
    )?;
    let not_after = time::PrimitiveDateTime::parse(&to, &fmt)?
        .assume_utc()
        .unix_timestamp();
    let kind = if field("Type: ")?.contains("host certificate") {
        "host"
    } else {
        "user"
    };
    let id = field("Key ID: ")?.trim_matches('"').to_owned();
    let line = std::fs::read_to_string(file)?;
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(line.split_whitespace().nth(1).context("no base64")?)?;
    Ok(Facts {
        fingerprint: certfleet_common::pki::sha256_hex(&blob),
        not_after,
        serial: format!("{serial:X}"),
        subject: format!("OpenSSH {kind} certificate, key id {id}"),
    })
}

/// Follows symlinks the way the host would see them: absolute targets under `root`.
fn resolve(root: &Path, p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = root.join(t.strip_prefix("/").unwrap()),
            Ok(t) => p = p.parent().unwrap().join(t),
            Err(_) => break,
        }
    }
    p
}

/// openssl's view of one report location.
fn location_facts(root: &Path, loc: &Value) -> Result<Facts> {
    let path = Path::new(loc["path"].as_str().context("path")?);
    match loc["kind"].as_str() {
        Some("file") if path.to_string_lossy().ends_with("-cert.pub") => {
            ssh_facts(&resolve(root, path))
        }
        Some("file") => x509_facts(Some(&resolve(root, path)), None),
        Some("pkcs12") => {
            let pem = run(
                Command::new("openssl")
                    .args([
                        "pkcs12",
                        "-passin",
                        "pass:mypass",
                        "-nokeys",
                        "-clcerts",
                        "-in",
                    ])
                    .arg(path),
                None,
            )?;
            x509_facts(None, Some(&pem))
        }
        Some("jks") => {
            let alias = loc["alias"].as_str().context("alias")?;
            let pem = run(
                Command::new("keytool")
                    .args([
                        "-exportcert",
                        "-rfc",
                        "-storepass",
                        "mypass",
                        "-alias",
                        alias,
                        "-keystore",
                    ])
                    .arg(path),
                None,
            )?;
            x509_facts(None, Some(&pem))
        }
        other => bail!("unexpected location kind {other:?}"),
    }
}

/// Every record must be what openssl says at each of its locations, and no certificate may be
/// reported twice. Returns records by fingerprint.
fn check_against_openssl(root: &Path, report: &Value) -> Result<BTreeMap<String, Value>> {
    let mut by_fp = BTreeMap::new();
    for c in report["certificates"].as_array().context("certificates")? {
        let fp = c["fingerprint_sha256"].as_str().context("fp")?.to_owned();
        let not_after =
            certfleet_common::model::parse_time(c["not_after"].as_str().context("not_after")?)
                .context("not_after format")?;
        for loc in c["locations"].as_array().context("locations")? {
            let f = location_facts(root, loc).with_context(|| format!("openssl on {loc}"))?;
            ensure!(
                f.fingerprint == fp,
                "{loc}: openssl fingerprint {} vs {fp}",
                f.fingerprint
            );
            ensure!(
                f.not_after == not_after,
                "{loc}: not_after {} vs {not_after}",
                f.not_after
            );
            ensure!(
                f.serial == c["serial"].as_str().unwrap_or_default(),
                "{loc}: serial {} vs {}",
                f.serial,
                c["serial"]
            );
            ensure!(
                f.subject == c["subject"].as_str().unwrap_or_default(),
                "{loc}: subject {} vs {}",
                f.subject,
                c["subject"]
            );
        }
        ensure!(
            by_fp.insert(fp.clone(), c.clone()).is_none(),
            "certificate {fp} reported twice"
        );
    }
    Ok(by_fp)
}

/// The record that has `path` as a location.
fn record_at<'a>(by_fp: &'a BTreeMap<String, Value>, path: &Path) -> Option<&'a Value> {
    let p = path.display().to_string();
    by_fp.values().find(|c| {
        c["locations"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| l["path"] == p.as_str()))
    })
}

fn role_of(by_fp: &BTreeMap<String, Value>, path: &Path) -> String {
    record_at(by_fp, path)
        .map(|c| c["role"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "<absent>".into())
}

/// Checks an engine scan: roles of live files, backups and serial copies folded in, lifetimes
/// per version, every certificate file on disk accounted for exactly once.
fn check_engine(engine: &Engine, hosts: &[&str]) -> Result<Value> {
    let root = &engine.host.root;
    let report = scan(root)?;
    assert_eq!(
        report["platforms"],
        serde_json::json!(["ovirt_engine"]),
        "{report}"
    );
    let by_fp = check_against_openssl(root, &report)?;
    let pki = root.join(PKI);
    let v = engine.spec.version;

    let mut expected: Vec<(PathBuf, String)> = vec![
        (pki.join("ca.pem"), "ovirt.engine.ca".into()),
        (pki.join("apache-ca.pem"), "ovirt.engine.ca".into()),
        (pki.join("certs/ca.der"), "ovirt.engine.ca".into()),
        (pki.join("qemu-ca.pem"), "ovirt.engine.qemu_ca".into()),
    ];
    for e in &engine.entities {
        expected.push((
            pki.join(format!("certs/{}.cer", e.name)),
            format!("ovirt.engine.{}", e.name),
        ));
        expected.push((
            pki.join(format!("keys/{}.p12", e.name)),
            format!("ovirt.engine.{}", e.name),
        ));
    }
    for h in hosts {
        expected.push((pki.join(format!("certs/{h}.cer")), "ovirt.node.vdsm".into()));
        expected.push((
            pki.join(format!("certs/{h}-ovn.cer")),
            "ovirt.node.ovn".into(),
        ));
        expected.push((
            pki.join(format!("certs-qemu/{h}.cer")),
            "ovirt.node.libvirt_migrate".into(),
        ));
    }
    for (path, role) in &expected {
        assert_eq!(&role_of(&by_fp, path), role, "{}", path.display());
    }

    // Lifetimes per A4 (notBefore is yesterday, -days counts from now).
    let span = |path: &str| -> Result<i64> {
        let c = record_at(&by_fp, &pki.join(path)).context(path.to_owned())?;
        let nb = certfleet_common::model::parse_time(c["not_before"].as_str().unwrap()).unwrap();
        let na = certfleet_common::model::parse_time(c["not_after"].as_str().unwrap()).unwrap();
        Ok((na - nb + 43_200) / 86_400)
    };
    assert_eq!(span("ca.pem")?, i64::from(v.ca_days()) + 1);
    assert_eq!(span("certs/apache.cer")?, 399);
    assert_eq!(
        span("certs/engine.cer")?,
        i64::from(v.engine_cert_days("engine")) + 1
    );

    // Every certificate file on disk, by openssl, is in exactly one record; live files are
    // never counted as backups and vice versa.
    let mut disk: BTreeSet<String> = BTreeSet::new();
    for dir in ["certs", "certs-qemu"] {
        for entry in std::fs::read_dir(pki.join(dir))? {
            let p = entry?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with("-cert.pub") {
                // The serial console's OpenSSH certificates are records too.
                disk.insert(ssh_facts(&p)?.fingerprint);
            } else if !name.ends_with(".pub") {
                disk.insert(x509_facts(Some(&p), None)?.fingerprint);
            }
        }
    }
    let reported: BTreeSet<String> = by_fp.keys().cloned().collect();
    assert_eq!(disk, reported, "certificates on disk vs records");
    let serial_copies = std::fs::read_dir(pki.join("certs"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".pem"))
        })
        .count();
    let index_lines = std::fs::read_to_string(pki.join("database.txt"))?
        .lines()
        .count();
    assert_eq!(serial_copies, index_lines, "one serial copy per issuance");

    for b in &engine.backups {
        let p = pki.join(b);
        if b.contains(".cer.") || b.contains(".p12.") {
            assert_eq!(role_of(&by_fp, &p), "ovirt.engine.backup", "{b}");
        }
    }
    // The live apache certificate carries its serial copy as a second location.
    let apache = record_at(&by_fp, &pki.join("certs/apache.cer")).context("apache")?;
    let copy = pki.join(format!("certs/{}.pem", apache["serial"].as_str().unwrap()));
    assert!(
        apache["locations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"] == copy.display().to_string().as_str())
    );
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{}",
        report["problems"]
    );
    Ok(report)
}

fn health<'a>(report: &'a Value, kind: &str, subject: &str) -> Option<&'a Value> {
    report["health"]
        .as_array()?
        .iter()
        .find(|h| h["kind"] == kind && h["subject"] == subject)
}

#[test]
fn ovirt_engines_and_hosts_match_openssl() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec44 = EngineSpec::new(OvirtVersion::V4_4, "engine44.example.test");
    spec44.renewed = vec!["apache".into()];
    let e44 = build_engine(&host(dir.path(), "engine44")?, &spec44)?;
    let mut spec45 = EngineSpec::new(OvirtVersion::V4_5, "virt-he.example.test");
    spec45.renewed = vec!["apache".into(), "ovn-ndb".into()];
    let e45 = build_engine(&host(dir.path(), "engine45")?, &spec45)?;

    // Three hosts on the 4.5 engine: expired, expiring in 20 days, healthy (1827-day default);
    // one on the 4.4 engine that trusts the wrong CA.
    let cases: [(&str, Option<Lifetime>, &str, &str); 3] = [
        (
            "virt-host1.example.test",
            Some(Lifetime::days(400, -3)),
            "expired",
            "expired",
        ),
        (
            "virt-host2.example.test",
            Some(Lifetime::days(378, 20)),
            "expiring",
            "expiring",
        ),
        ("virt-host3.example.test", None, "ok", "valid"),
    ];
    let mut nodes = Vec::new();
    for (fqdn, life, _, _) in &cases {
        let mut spec = NodeSpec::new(fqdn);
        spec.vdsm = *life;
        nodes.push(build_node(&host(dir.path(), fqdn)?, &spec, &e45)?);
    }
    let mut odd = NodeSpec::new("kvm44.example.test");
    odd.foreign_ca = true;
    let odd = build_node(&host(dir.path(), "kvm44")?, &odd, &e44)?;

    check_engine(&e44, &["kvm44.example.test"])?;
    let r45 = check_engine(&e45, &cases.map(|c| c.0))?;
    for (fqdn, _, _, engine_state) in &cases {
        let h = health(&r45, "ovirt.engine.issued_host", fqdn)
            .with_context(|| format!("issued_host {fqdn}"))?;
        assert_eq!(h["state"], *engine_state, "{h}");
    }

    for (node, (fqdn, _, status, _)) in nodes.iter().zip(cases.iter()) {
        let root = &node.host.root;
        let report = scan(root)?;
        assert_eq!(report["platforms"], serde_json::json!(["ovirt_node"]));
        let by_fp = check_against_openssl(root, &report)?;
        let vdsm = root.join("etc/pki/vdsm");
        let vdsm_rec = record_at(&by_fp, &vdsm.join("certs/vdsmcert.pem")).context("vdsm")?;
        assert_eq!(vdsm_rec["status"], *status, "{fqdn}");
        assert_eq!(vdsm_rec["role"], "ovirt.node.vdsm");
        // The copies are the same certificate: one record, four places.
        for copy in [
            "libvirt-spice/server-cert.pem",
            "libvirt-vnc/server-cert.pem",
        ] {
            assert_eq!(role_of(&by_fp, &vdsm.join(copy)), "ovirt.node.vdsm");
        }
        assert_eq!(
            role_of(&by_fp, &root.join("etc/pki/libvirt/clientcert.pem")),
            "ovirt.node.vdsm"
        );
        assert_eq!(
            role_of(&by_fp, &root.join("etc/pki/CA/cacert.pem")),
            "ovirt.node.ca"
        );
        assert_eq!(
            role_of(&by_fp, &vdsm.join("libvirt-migrate/client-cert.pem")),
            "ovirt.node.libvirt_migrate"
        );
        assert_eq!(
            role_of(&by_fp, &vdsm.join("libvirt-migrate/ca-cert.pem")),
            "ovirt.node.qemu_ca"
        );
        assert_eq!(
            role_of(&by_fp, &vdsm.join("ovn/ovn-cert.pem")),
            "ovirt.node.ovn"
        );
        assert_eq!(
            role_of(
                &by_fp,
                &root.join("etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub")
            ),
            "ovirt.node.vmconsole"
        );
        assert_eq!(
            by_fp.len(),
            6,
            "vdsm, ovn, migrate, CA, QEMU CA, vmconsole (OpenSSH)"
        );
        // The engine's copy of this host's certificate is the same certificate.
        let engine_copy = x509_facts(Some(&e45.pki.join(format!("certs/{fqdn}.cer"))), None)?;
        assert_eq!(
            vdsm_rec["fingerprint_sha256"],
            engine_copy.fingerprint.as_str()
        );
        let chain = health(
            &report,
            "ovirt.node.chain",
            &vdsm.join("certs/vdsmcert.pem").display().to_string(),
        )
        .context("chain fact")?;
        assert_eq!(chain["healthy"], true, "{chain}");
        assert!(
            report["problems"].as_array().unwrap().is_empty(),
            "{}",
            report["problems"]
        );
        // Modes of A8.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("etc/pki/vdsm/keys/vdsmkey.pem"), 0o440);
        assert_eq!(mode("etc/pki/vdsm/libvirt-migrate/server-key.pem"), 0o440);
        assert_eq!(mode("etc/pki/vdsm/certs/vdsmcert.pem"), 0o644);
        assert_eq!(node.owners["/etc/pki/vdsm/keys/vdsmkey.pem"], "vdsm:kvm");
        assert_eq!(
            node.owners["/etc/pki/vdsm/libvirt-migrate/server-key.pem"],
            "root:qemu"
        );
    }

    let report = scan(&odd.host.root)?;
    check_against_openssl(&odd.host.root, &report)?;
    let leaf = odd
        .host
        .root
        .join("etc/pki/vdsm/certs/vdsmcert.pem")
        .display()
        .to_string();
    let chain = health(&report, "ovirt.node.chain", &leaf).context("chain fact")?;
    assert_eq!(chain["healthy"], false, "{chain}");
    assert_eq!(chain["state"], "not-signed-by-host-ca");
    // The migrate certificate still chains to the real QEMU CA.
    let mig = odd
        .host
        .root
        .join("etc/pki/vdsm/libvirt-migrate/server-cert.pem")
        .display()
        .to_string();
    assert_eq!(
        health(&report, "ovirt.node.chain", &mig).context("migrate chain")?["healthy"],
        true
    );
    Ok(())
}

#[test]
fn ovirt_bad_input_becomes_one_problem_each() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = EngineSpec::new(OvirtVersion::V4_5, "bad.example.test");
    spec.ovn = false;
    spec.vmconsole = false;
    let e = build_engine(&host(dir.path(), "engine")?, &spec)?;
    let before = scan(&e.host.root)?;
    let n_before = before["certificates"].as_array().unwrap().len();
    let pki = e.pki.clone();

    // A keystore with another password.
    let status = Command::new("openssl")
        .current_dir(&pki)
        .args([
            "pkcs12",
            "-export",
            "-in",
            "certs/jboss.cer",
            "-nokeys",
            "-passout",
            "pass:other",
            "-out",
            "keys/wrongpass.p12",
        ])
        .status()?;
    assert!(status.success());
    // Truncated DER.
    let der = run(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(pki.join("certs/engine.cer")),
        None,
    )?;
    std::fs::write(pki.join("certs/truncated.cer"), &der[..der.len() / 2])?;
    // Symlink loop, huge file, malformed PEM.
    std::os::unix::fs::symlink("loop.cer", pki.join("certs/loop.cer"))?;
    // Past the 16 MiB cap for certificate files (system CA bundles pass 1 MiB and are read).
    std::fs::write(pki.join("certs/huge.cer"), vec![b'A'; 17 * 1024 * 1024])?;
    std::fs::write(
        pki.join("certs/mangled.cer"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )?;

    let after = scan(&e.host.root)?;
    assert_eq!(
        after["certificates"].as_array().unwrap().len(),
        n_before,
        "the rest of the scan is intact"
    );
    check_against_openssl(&e.host.root, &after)?;
    let problems = after["problems"].as_array().unwrap();
    for (file, word) in [
        ("keys/wrongpass.p12", "password"),
        ("certs/truncated.cer", ""),
        ("certs/loop.cer", "symlink loop"),
        ("certs/huge.cer", "not read"),
        ("certs/mangled.cer", ""),
    ] {
        let p = pki.join(file).display().to_string();
        let hits: Vec<&Value> = problems
            .iter()
            .filter(|pr| pr["subject"].as_str().is_some_and(|s| s.contains(&p)))
            .collect();
        assert_eq!(hits.len(), 1, "{file}: {problems:#?}");
        assert!(
            hits[0]["message"].as_str().unwrap().contains(word),
            "{file}: {}",
            hits[0]
        );
        assert_eq!(hits[0]["collector"], "ovirt_engine");
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
    Ok(())
}

#[test]
fn ovirt_engine_config_answers_from_the_built_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = EngineSpec::new(OvirtVersion::V4_4, "cfg.example.test");
    spec.ovn = false;
    spec.vmconsole = false;
    let e = build_engine(&host(dir.path(), "engine")?, &spec)?;
    let tool = e.host.path("/usr/bin/engine-config");
    sim::require(&tool)?;
    let out = Command::new(&tool)
        .args(["-g", "VdsCertificateValidityInDays"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "VdsCertificateValidityInDays: 398 version: general\n"
    );
    let out = Command::new(&tool).args(["-g", "NoSuchKey"]).output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}
