//! vSphere end to end: a simulated VCSA (6.7, 7.0, 8.0) with chosen lifetimes, its slapd and
//! HTTPS listener running, scanned by the real `certfleet-agent` as a process. Every record is
//! checked against what the real `openssl` says about the same certificate, fetched the way an
//! operator would (simulated `vecs-cli entry getcert`, the VMCA root file, real `ldapsearch`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine;
use certfleet_integration_tests::sim::vcsa::{
    self, Fault, Partner, Services, Vcsa, VcsaSpec, VcsaVersion,
};
use certfleet_integration_tests::sim::{Lifetime, SimHost};
use serde_json::Value;

use crate::support;

fn require_openldap() {
    if let Err(e) = vcsa::vmdir::require_slapd() {
        panic!("{e:#}");
    }
}

struct Fixture {
    vcsa: Vcsa,
    _services: Services,
    _dir: tempfile::TempDir,
}

fn start(spec: &VcsaSpec) -> Result<Fixture> {
    require_openldap();
    let dir = tempfile::tempdir()?;
    let host = SimHost::new(dir.path().join("vcsa"), support::bin("certfleet-sim"))?;
    let vcsa = vcsa::build(&host, spec)?;
    let services = vcsa.start_services()?;
    Ok(Fixture {
        vcsa,
        _services: services,
        _dir: dir,
    })
}

fn scan(v: &Vcsa) -> Result<Value> {
    let out = Command::new(support::bin("certfleet-agent"))
        .args(["scan", "-o", "json", "--root"])
        .arg(&v.host.root)
        .arg("--config")
        .arg(v.agent_config_path())
        .output()
        .context("running certfleet-agent")?;
    ensure!(
        out.status.success(),
        "agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// What the real openssl says about a PEM certificate.
#[derive(Debug)]
struct OpensslView {
    fingerprint: String,
    not_after: i64,
    serial: String,
    subject: String,
}

fn openssl_view(pem: &[u8]) -> Result<OpensslView> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-enddate",
            "-serial",
            "-subject",
            "-nameopt",
            "RFC2253",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(pem)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "openssl x509 failed");
    let text = String::from_utf8(out.stdout)?;
    let field = |p: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(p))
            .map(str::to_owned)
            .with_context(|| format!("no {p} in {text}"))
    };
    let fp = field("sha256 Fingerprint=").or_else(|_| field("SHA256 Fingerprint="))?;
    let end = field("notAfter=")?;
    let fmt = time::format_description::parse_borrowed::<2>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )?;
    let not_after = time::PrimitiveDateTime::parse(&end, &fmt)
        .with_context(|| format!("date {end:?}"))?
        .assume_utc()
        .unix_timestamp();
    Ok(OpensslView {
        fingerprint: fp.replace(':', "").to_ascii_lowercase(),
        not_after,
        serial: field("serial=")?,
        subject: field("subject=")?,
    })
}

fn getcert(v: &Vcsa, store: &str, alias: &str) -> Result<Vec<u8>> {
    let out = Command::new(v.host.path(vcsa::VECS_CLI))
        .args(["entry", "getcert", "--store", store, "--alias", alias])
        .output()?;
    ensure!(
        out.status.success(),
        "getcert {store}/{alias}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// STS chain certificates as PEM, read with the real ldapsearch bound as the machine account.
fn sts_from_ldap(v: &Vcsa) -> Result<Vec<Vec<u8>>> {
    let s = v.state()?;
    let pw = v.host.root.join(".sim/test-ldap-pw");
    vcsa::write_private(&pw, s.machine_account_password.as_bytes())?;
    let base = format!(
        "cn=TenantCredential-1,cn={},cn=Tenants,cn=IdentityManager,cn=Services,{}",
        s.domain,
        s.domain_dn()
    );
    let out = Command::new(v.host.path("/usr/bin/ldapsearch"))
        .args([
            "-o",
            "ldif-wrap=no",
            "-LLL",
            "-x",
            "-H",
            &format!("ldap://127.0.0.1:{}", s.ldap_port),
            "-D",
            &s.machine_account_dn,
            "-y",
        ])
        .arg(&pw)
        .args(["-b", &base, "userCertificate"])
        .output()?;
    ensure!(
        out.status.success(),
        "ldapsearch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut pems = Vec::new();
    for l in text.lines() {
        if let Some(b) = l.strip_prefix("userCertificate:: ") {
            let der = base64::engine::general_purpose::STANDARD.decode(b)?;
            pems.push(certfleet_common::pem::encode("CERTIFICATE", &der).into_bytes());
        }
    }
    ensure!(!pems.is_empty(), "no userCertificate in {text}");
    Ok(pems)
}

fn record<'a>(report: &'a Value, fingerprint: &str) -> Option<&'a Value> {
    report["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["fingerprint_sha256"] == fingerprint)
}

fn has_location(rec: &Value, kind: &str, store: &str, alias: &str) -> bool {
    rec["locations"].as_array().is_some_and(|ls| {
        ls.iter().any(|l| {
            l["kind"] == kind
                && l.get("store").and_then(Value::as_str).unwrap_or("") == store
                && l.get("alias").and_then(Value::as_str).unwrap_or("") == alias
        })
    })
}

/// Checks one record against openssl: fingerprint, not-after, serial, subject, role.
fn check(report: &Value, pem: &[u8], role: &str, what: &str) -> Result<Value> {
    let o = openssl_view(pem)?;
    let rec = record(report, &o.fingerprint)
        .with_context(|| format!("{what}: no record for {}", o.fingerprint))?;
    ensure!(
        rec["role"] == role,
        "{what}: role {} != {role}",
        rec["role"]
    );
    ensure!(
        rec["serial"].as_str() == Some(o.serial.as_str()),
        "{what}: serial {} != {}",
        rec["serial"],
        o.serial
    );
    let na = certfleet_common::model::parse_time(rec["not_after"].as_str().unwrap_or(""))
        .context("not_after")?;
    ensure!(
        na == o.not_after,
        "{what}: not_after {na} != openssl {}",
        o.not_after
    );
    // openssl RFC2253 is reversed and unspaced; compare the sets of attributes.
    let mut theirs: Vec<String> = o.subject.split(',').map(|p| p.trim().to_owned()).collect();
    let mut ours: Vec<String> = rec["subject"]
        .as_str()
        .unwrap_or("")
        .split(", ")
        .map(str::to_owned)
        .collect();
    theirs.sort();
    ours.sort();
    ensure!(
        theirs == ours,
        "{what}: subject {ours:?} != openssl {theirs:?}"
    );
    Ok(rec.clone())
}

fn health<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["health"]
        .as_array()
        .map(|h| h.iter().filter(|f| f["kind"] == kind).collect())
        .unwrap_or_default()
}

fn problems(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    format!(
                        "{} :: {}",
                        p["subject"].as_str().unwrap_or(""),
                        p["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn status_of(report: &Value, fingerprint_pem: &[u8]) -> Result<String> {
    let o = openssl_view(fingerprint_pem)?;
    Ok(record(report, &o.fingerprint).context("record")?["status"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

fn flavour(version: VcsaVersion) -> Result<()> {
    let spec = VcsaSpec::new(version, "vcsa01.lab.local")
        .with("sts", Lifetime::days(735, -3))
        .with("wcp", Lifetime::days(720, 10))
        .with("machine_ssl", Lifetime::days(700, 20))
        .replaced_before()
        .partners(vec![
            Partner::healthy("psc2.lab.local"),
            Partner::lagging("psc3.lab.local", 17),
        ]);
    let fx = start(&spec)?;
    let report = scan(&fx.vcsa)?;
    let st = fx.vcsa.state()?;
    ensure!(
        problems(&report).is_empty(),
        "unexpected problems: {:#?}",
        problems(&report)
    );

    // Every certificate in every store, as vecs-cli getcert + openssl see it.
    let mut checked = 0;
    for store in &st.stores {
        for e in &store.entries {
            if e.cert
                .as_deref()
                .is_none_or(|c| !c.starts_with("-----BEGIN CERTIFICATE"))
            {
                continue;
            }
            let pem = getcert(&fx.vcsa, &store.name, &e.alias)?;
            let role = if store.name == "TRUSTED_ROOTS" {
                "vsphere.vmca_root".to_owned()
            } else {
                agent_role(&store.name)
            };
            let rec = check(&report, &pem, &role, &format!("{}/{}", store.name, e.alias))?;
            ensure!(
                has_location(&rec, "vecs", &store.name, &e.alias),
                "{}/{}: no vecs location in {rec}",
                store.name,
                e.alias
            );
            checked += 1;
        }
    }
    let expected_stores: Vec<&str> = match version {
        VcsaVersion::V67 => vec![
            "MACHINE_SSL_CERT",
            "TRUSTED_ROOTS",
            "TRUSTED_ROOT_CRLS",
            "machine",
            "vsphere-webclient",
            "vpxd",
            "vpxd-extension",
            "APPLMGMT_PASSWORD",
            "data-encipherment",
            "SMS",
            "BACKUP_STORE",
        ],
        _ => vec![
            "MACHINE_SSL_CERT",
            "TRUSTED_ROOTS",
            "TRUSTED_ROOT_CRLS",
            "machine",
            "vsphere-webclient",
            "vpxd",
            "vpxd-extension",
            "hvc",
            "data-encipherment",
            "APPLMGMT_PASSWORD",
            "SMS",
            "wcp",
            "BACKUP_STORE",
        ],
    };
    let listed = Command::new(fx.vcsa.host.path(vcsa::VECS_CLI))
        .args(["store", "list"])
        .output()?;
    ensure!(
        String::from_utf8(listed.stdout)?
            .lines()
            .collect::<Vec<_>>()
            == expected_stores,
        "store list differs from §3.1"
    );
    let n_certs = report["certificates"].as_array().map(Vec::len).unwrap_or(0);
    // VECS certs (root counted once) + STS leaf.
    ensure!(
        n_certs == checked + 1,
        "{n_certs} records, {checked} VECS certificates + STS expected"
    );

    // VMCA root file, merged with TRUSTED_ROOTS and the vmdir chains.
    let root = std::fs::read(fx.vcsa.host.path(vcsa::VMCA_ROOT))?;
    let rec = check(&report, &root, "vsphere.vmca_root", "VMCA root")?;
    ensure!(
        rec["locations"].as_array().map(Vec::len) == Some(4),
        "VMCA root locations: {rec}"
    );

    // STS from vmdir with the real ldapsearch.
    let sts = sts_from_ldap(&fx.vcsa)?;
    let rec = check(&report, &sts[0], "vsphere.sts_signing", "STS")?;
    ensure!(rec["status"] == "expired", "STS should be expired: {rec}");
    let locs = rec["locations"].as_array().unwrap();
    ensure!(
        locs.len() == 2 && locs.iter().all(|l| l["kind"] == "vmdir"),
        "STS locations: {rec}"
    );
    ensure!(
        locs.iter().any(|l| l["path"]
            .as_str()
            .unwrap_or("")
            .starts_with("cn=TenantCredential-1,cn=vsphere.local,cn=Tenants")),
        "{rec}"
    );

    // Machine SSL: one record, found in VECS and on the endpoint.
    let ms = getcert(&fx.vcsa, "MACHINE_SSL_CERT", "__MACHINE_CERT")?;
    let rec = check(&report, &ms, "vsphere.machine_ssl", "Machine SSL")?;
    ensure!(
        has_location(&rec, "endpoint", "", ""),
        "Machine SSL not seen on the endpoint: {rec}"
    );
    ensure!(rec["status"] == "expiring", "{rec}");
    ensure!(
        health(&report, "endpoint.stale").is_empty(),
        "no stale endpoint expected"
    );

    if version != VcsaVersion::V67 {
        let wcp = getcert(&fx.vcsa, "wcp", "wcp")?;
        ensure!(
            status_of(&report, &wcp)? == "expiring",
            "wcp expiring in 10 days"
        );
    }
    let bkp = getcert(&fx.vcsa, "BACKUP_STORE", "bkp___MACHINE_CERT")?;
    ensure!(
        status_of(&report, &bkp)? == "expired",
        "stale backup entry is expired"
    );
    // ... and named as what keeps the Certificate Status alarm red (seed 000).
    let alarm = health(&report, "vsphere.certificate_status_alarm");
    ensure!(
        alarm.len() == 1
            && alarm[0]["subject"] == "BACKUP_STORE/bkp___MACHINE_CERT"
            && alarm[0]["healthy"] == false,
        "{alarm:?}"
    );

    // Health: PNID in SAN, replication per partner, CRLs.
    let pnid = health(&report, "vsphere.machine_ssl_pnid");
    ensure!(
        pnid.len() == 1 && pnid[0]["healthy"] == true && pnid[0]["subject"] == "vcsa01.lab.local",
        "{pnid:?}"
    );
    let rep: BTreeMap<String, (bool, String)> = health(&report, "vsphere.replication")
        .iter()
        .map(|f| {
            (
                f["subject"].as_str().unwrap().to_owned(),
                (
                    f["healthy"].as_bool().unwrap(),
                    f["detail"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    ensure!(rep.len() == 2, "{rep:?}");
    ensure!(
        rep["psc2.lab.local"].0
            && !rep["psc3.lab.local"].0
            && rep["psc3.lab.local"].1.contains("17 changes behind"),
        "{rep:?}"
    );
    ensure!(
        health(&report, "vsphere.trusted_root_crl").len() == 1,
        "one CRL fact"
    );
    Ok(())
}

fn agent_role(store: &str) -> String {
    match store {
        "MACHINE_SSL_CERT" => "vsphere.machine_ssl".into(),
        "BACKUP_STORE" => "vsphere.backup".into(),
        "data-encipherment" => "vsphere.data_encipherment".into(),
        "SMS" => "vsphere.sms".into(),
        other => format!("vsphere.solution_user.{other}"),
    }
}

#[test]
fn vcsa_67_scan_matches_openssl() {
    flavour(VcsaVersion::V67).unwrap();
}

#[test]
fn vcsa_70_scan_matches_openssl() {
    flavour(VcsaVersion::V70).unwrap();
}

#[test]
fn vcsa_80_scan_matches_openssl() {
    flavour(VcsaVersion::V80).unwrap();
}

#[test]
fn stale_endpoint_after_renewal_without_restart() {
    let fx = start(&VcsaSpec::new(VcsaVersion::V70, "vc2.lab.local")).unwrap();
    let old = getcert(&fx.vcsa, "MACHINE_SSL_CERT", "__MACHINE_CERT").unwrap();
    fx.vcsa
        .renew_machine_ssl_without_restart(Lifetime::days(0, 730))
        .unwrap();
    let new = getcert(&fx.vcsa, "MACHINE_SSL_CERT", "__MACHINE_CERT").unwrap();
    let report = scan(&fx.vcsa).unwrap();
    let old_rec = check(&report, &old, "vsphere.machine_ssl", "served").unwrap();
    assert!(
        has_location(&old_rec, "endpoint", "", "")
            && !has_location(&old_rec, "vecs", "MACHINE_SSL_CERT", "__MACHINE_CERT")
    );
    let new_rec = check(&report, &new, "vsphere.machine_ssl", "vecs").unwrap();
    assert!(!has_location(&new_rec, "endpoint", "", ""));
    let stale = health(&report, "endpoint.stale");
    assert_eq!(stale.len(), 1, "{report:#}");
    assert!(
        stale[0]["detail"]
            .as_str()
            .unwrap()
            .contains("MACHINE_SSL_CERT"),
        "{stale:?}"
    );
}

#[test]
fn bad_input_becomes_problems_not_crashes() {
    let fx = start(&VcsaSpec::new(VcsaVersion::V70, "vc3.lab.local")).unwrap();
    let v = &fx.vcsa;

    // A damaged VECS entry: one problem naming store/alias; the other entries are still there.
    v.corrupt_entry("vpxd", "vpxd").unwrap();
    v.set_fault("vdcrepadmin", Some(Fault::Garbage)).unwrap();
    let report = scan(v).unwrap();
    let ps = problems(&report);
    assert!(ps.iter().any(|p| p.contains("vecs vpxd vpxd")), "{ps:#?}");
    assert!(
        ps.iter().any(|p| p.contains("vdcrepadmin")
            && p.contains("unexpected output")
            && !p.contains(&v.state().unwrap().sso_password)),
        "{ps:#?}"
    );
    assert_eq!(ps.len(), 2, "{ps:#?}");
    let wcp = getcert(v, "wcp", "wcp").unwrap();
    check(&report, &wcp, "vsphere.solution_user.wcp", "wcp still read").unwrap();
    assert!(health(&report, "vsphere.replication").is_empty());

    // Non-UTF-8 from vmafd-cli, a wrong machine password for vmdir.
    v.set_fault("vdcrepadmin", None).unwrap();
    v.set_fault("vmafd-cli", Some(Fault::Binary)).unwrap();
    v.update(|s| s.machine_account_password.push('x')).unwrap();
    let report = scan(v).unwrap();
    let ps = problems(&report);
    assert!(
        ps.iter()
            .any(|p| p.contains("vmafd-cli get-pnid") && p.contains("not UTF-8")),
        "{ps:#?}"
    );
    assert!(
        ps.iter()
            .any(|p| p.contains("ldapsearch") && p.contains("exit code 49")),
        "{ps:#?}"
    );
    assert!(health(&report, "vsphere.replication").len() == 1);

    // A hung vecs-cli is killed after tool_timeout; the rest of the scan goes on.
    v.set_fault("vmafd-cli", None).unwrap();
    v.set_fault("vecs-cli", Some(Fault::Hang)).unwrap();
    let cfg = v.agent_config_path();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tool_timeout = \"20s\"", "tool_timeout = \"2s\"");
    std::fs::write(&cfg, text).unwrap();
    let t0 = Instant::now();
    let report = scan(v).unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "scan took {:?}",
        t0.elapsed()
    );
    let ps = problems(&report);
    assert!(
        ps.iter()
            .any(|p| p.contains("vecs-cli store list") && p.contains("killed")),
        "{ps:#?}"
    );
    let ms_endpoint = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| has_location(c, "endpoint", "", ""));
    assert!(ms_endpoint, "endpoint still probed");
    let root = std::fs::read(v.host.path(vcsa::VMCA_ROOT)).unwrap();
    check(&report, &root, "vsphere.vmca_root", "root file still read").unwrap();
}

#[test]
fn vecs_cli_speaks_like_the_reference() {
    let fx = start(&VcsaSpec::new(VcsaVersion::V80, "vc4.lab.local").replaced_before()).unwrap();
    let cli = fx.vcsa.host.path(vcsa::VECS_CLI);
    let run = |args: &[&str]| Command::new(&cli).args(args).output().unwrap();

    // Usage on stdout, generic error on stderr, exit 87 (§2.1, §2.2).
    let o = run(&["entry", "list", "--store=MACHINE_SSL_CERT"]);
    assert_eq!(o.status.code(), Some(87));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(
        "Usage: vecs-cli { arguments }\n\nArguments:\n\n\tstore create --name <name> \n"
    ));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "vecs-cli failed. Error 87: Operation failed with error ERROR_INVALID_PARAMETER (87) \n"
    );

    let o = run(&["entry", "list", "--store", "NOPE"]);
    assert_eq!(o.status.code(), Some(4312 & 0xff));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ERROR_OBJECT_NOT_FOUND (4312)"));

    let o = run(&[
        "entry",
        "getcert",
        "--store",
        "APPLMGMT_PASSWORD",
        "--alias",
        "location_password_default",
    ]);
    assert_eq!(o.status.code(), Some(87));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with(
        "Error: No certificates were found for entry [location_password_default] of type [Secret Key].\n"
    ));

    let o = run(&["entry", "list", "--store", "MACHINE_SSL_CERT", "--text"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.starts_with("Number of entries in store :\t1\nAlias :\t__MACHINE_CERT\nEntry type :\tPrivate Key\nCertificate:\n"), "{text}");
    assert!(
        text.contains("Not After : ") && !text.contains("BEGIN CERTIFICATE"),
        "{text}"
    );
    assert!(
        text.contains("CA Issuers - URI:https://vc4.lab.local/afd/vecs/ca"),
        "{text}"
    );

    // 8.0 SMS carries sps-extension; TRUSTED_ROOTS aliases are SHA-1 thumbprints (§2.4).
    let sms =
        String::from_utf8(run(&["entry", "list", "--store", "SMS", "--aliases"]).stdout).unwrap();
    assert_eq!(
        sms,
        "Number of entries in store :\t2\nsms_self_signed\nsps-extension\n"
    );
    let roots =
        String::from_utf8(run(&["entry", "list", "--store", "TRUSTED_ROOTS", "--aliases"]).stdout)
            .unwrap();
    let alias = roots.lines().nth(1).unwrap();
    let root = std::fs::read_to_string(fx.vcsa.host.path(vcsa::VMCA_ROOT)).unwrap();
    let sha1 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(fx.vcsa.host.path(vcsa::VMCA_ROOT))
        .output()
        .unwrap();
    let sha1 = String::from_utf8(sha1.stdout)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(alias, sha1, "{root}");

    // getcert --output writes an owner-only file and prints nothing.
    let f = fx.vcsa.host.root.join("ms.pem");
    let o = Command::new(&cli)
        .args([
            "entry",
            "getcert",
            "--store",
            "MACHINE_SSL_CERT",
            "--alias",
            "__MACHINE_CERT",
            "--output",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success() && o.stdout.is_empty());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // delete without -y and answer N: nothing deleted, exit 0 (§2.2).
    let mut child = Command::new(&cli)
        .args([
            "entry",
            "delete",
            "--store",
            "BACKUP_STORE",
            "--alias",
            "bkp___MACHINE_CERT",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Warning: This operation will delete entry [bkp___MACHINE_CERT] from store [BACKUP_STORE]\nDo you wish to continue? Y/N [N] \n"
    );
    assert!(
        fx.vcsa
            .state()
            .unwrap()
            .entry("BACKUP_STORE", "bkp___MACHINE_CERT")
            .is_some()
    );

    // vmafd-cli prints exactly one line; the private key files are 0600.
    let o = Command::new(fx.vcsa.host.path(vcsa::VMAFD_CLI))
        .args(["get-pnid", "--server-name", "localhost"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "vc4.lab.local\n");
    for p in [
        fx.vcsa.host.path(vcsa::VMCA_KEY),
        fx.vcsa.host.state("vcsa.json"),
    ] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    // 8.0 here has the OpenLDAP clients under /usr/bin only [UNV].
    assert!(Path::new(&fx.vcsa.host.path("/usr/bin/ldapsearch")).exists());
    assert!(!Path::new(&fx.vcsa.host.path(vcsa::LDAPSEARCH)).exists());
}

/// Reads a real capture kept with the code (integration-tests/fixtures/real/).
fn capture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/real/vsphere")
            .join(name),
    )
    .unwrap()
}

/// Names under `heading` in a `service-control --status` output.
fn status_names(text: &str, heading: &str) -> std::collections::BTreeSet<String> {
    let mut cur = "";
    let mut out = std::collections::BTreeSet::new();
    for l in text.lines() {
        let t = l.trim();
        if t.ends_with(':') && !t.contains(' ') {
            cur = t;
        } else if cur == heading {
            out.extend(t.split_whitespace().map(str::to_owned));
        }
    }
    out
}

/// The simulated 6.7 appliance answers like the real one in the captures: the same VECS stores
/// in the same order on a fresh appliance (no BACKUP_STORE), and the same manual-start services
/// `Stopped:` after `--start --all`, with a transient RC=5 that clears by itself.
#[test]
fn vcsa_67_matches_real_captures() {
    let dir = tempfile::tempdir().unwrap();
    let host = SimHost::new(dir.path().join("vcsa"), support::bin("certfleet-sim")).unwrap();
    let v = vcsa::build(
        &host,
        &VcsaSpec::new(VcsaVersion::V67, "vcenter-dc1.lab.local"),
    )
    .unwrap();
    let o = Command::new(v.host.path(vcsa::VECS_CLI))
        .args(["store", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        capture("vecs-cli-store-list_6.7_metasploit.txt").trim_end()
    );
    let sc = |args: &[&str]| {
        let o = Command::new(v.host.path(vcsa::SERVICE_CONTROL))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let real = capture("service-control-status_6.7_vcenter-dc1.txt");
    let (_, fresh, _) = sc(&["--status", "--all"]);
    assert_eq!(
        status_names(&fresh, "Stopped:"),
        status_names(&real, "Stopped:")
    );
    v.update(|s| s.start_all_rc5 = 1).unwrap();
    assert_eq!(sc(&["--stop", "--all"]).0, Some(0));
    let (code, _, err) = sc(&["--start", "--all"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("RC=5"), "{err}");
    let (_, pending, _) = sc(&["--status", "--all"]);
    assert!(
        !status_names(&pending, "StartPending:").is_empty(),
        "{pending}"
    );
    let (_, after, _) = sc(&["--status", "--all"]);
    assert!(status_names(&after, "StartPending:").is_empty(), "{after}");
    assert_eq!(
        status_names(&after, "Stopped:"),
        status_names(&real, "Stopped:")
    );
    let rc5 = capture("service-control-start-all-RC5_and_status-all_startpending.txt");
    assert_eq!(
        status_names(&after, "Stopped:"),
        status_names(&rc5, "Stopped:")
    );
}

/// dir-cli refuses a certificate any service principal already holds, the target included
/// (lightwave `DirCliUpdateServiceA`).
#[test]
fn dir_cli_refuses_a_certificate_already_held() {
    let fx = start(&VcsaSpec::new(VcsaVersion::V70, "vc5.lab.local")).unwrap();
    let st = fx.vcsa.state().unwrap();
    let cert = fx.vcsa.host.state("machine.crt");
    std::fs::write(&cert, getcert(&fx.vcsa, "machine", "machine").unwrap()).unwrap();
    let name = format!("machine-{}", st.machine_id);
    let o = Command::new(fx.vcsa.host.path(vcsa::DIR_CLI))
        .args(["service", "update", "--name", &name, "--cert"])
        .arg(&cert)
        .args([
            "--login",
            "administrator@vsphere.local",
            "--password",
            &st.sso_password,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(13));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("Error: The same certificate cannot be used by multiple services [{name}].\n")
    );
    // The same certificate for another principal is refused too, naming the holder.
    let other = format!("vpxd-{}", st.machine_id);
    let o = Command::new(fx.vcsa.host.path(vcsa::DIR_CLI))
        .args(["service", "update", "--name", &other, "--cert"])
        .arg(&cert)
        .args(["--password", &st.sso_password])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("[{name}]")));
}
