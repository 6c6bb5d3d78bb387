//! The `ovirt_engine` collector: every certificate of the engine PKI `/etc/pki/ovirt-engine`
//! (reference A1), and what the CA's index says it issued.
//!
//! Counting rule (one certificate = one record): live files are read first and give the role:
//! `ca.pem` and its copies (`apache-ca.pem`, `certs/ca.der`, the `.truststore` alias `cacert`)
//! are `ovirt.engine.ca`, `certs/<name>.cer` with `keys/<name>.p12` are `ovirt.engine.<name>`,
//! the engine's copies of host certificates (`certs/<fqdn>.cer`, `certs/<fqdn>-ovn.cer`,
//! `certs-qemu/<fqdn>.cer`) get the host roles `ovirt.node.vdsm` / `ovirt.node.ovn` /
//! `ovirt.node.libvirt_migrate` so they merge with what the host's agent reports. Then the
//! copies the tools leave behind are read: openssl's serial copies `certs/<SERIAL>.pem` and
//! `common_backup`'s `*.<YYYYmmddHHMMSS>` (and hand-made `*.bak`). A copy of a live certificate
//! only adds a location (detail `serial copy` / `backup`); a copy of anything else is a
//! superseded certificate and gets the role `ovirt.engine.backup`, which nothing depends on.
//!
//! The serial console's OpenSSH certificates (`certs/*-cert.pub`, and the proxy's copies in
//! `/etc/pki/ovirt-vmconsole/proxy-ssh_{host,user}_rsa-cert.pub`) are records too (see
//! `openssh`): `ovirt.engine.vmconsole-proxy-{host,user}` like their X.509 twins, and
//! `ovirt.node.vmconsole` for a host's (`certs/<fqdn>-ssh-cert.pub`, `certs/<fqdn>-ssh.cer`).
//!
//! `database.txt` is read into health facts: one summary (`ovirt.engine.ca_index`) and one per
//! host the CA enrolled (`ovirt.engine.issued_host`, state `valid`/`expiring`/`expired`/
//! `revoked` of its current VDSM certificate). A live certificate the index marks revoked, or
//! one signed by the engine CA that the index does not know, is a problem.
//!
//! Settings: `ovirt.engine_pki` (default `/etc/pki/ovirt-engine`), `ovirt.p12_password` (PKCS#12
//! and truststore password, default `mypass`; `""` for bundles without a password). Every
//! certificate of a `.p12` is read, CA certificates shipped with the key too.

pub mod index;
pub mod jks;
pub(crate) mod openssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use certfleet_common::model::{CertRecord, HealthFact, Location, Problem, format_time, now};
use certfleet_common::roles::{self, Status};

use super::{Collection, Collector, read_small_file};
use crate::config::AgentConfig;

/// The `ovirt_engine` collector.
pub struct OvirtEngine;

const NAME: &str = "ovirt_engine";
const DEFAULT_PKI: &str = "/etc/pki/ovirt-engine";
/// The serial console's PKI directory (`VMCONSOLE_PKI_DIR`) on the engine and on hosts.
pub(crate) const VMCONSOLE_PKI: &str = "/etc/pki/ovirt-vmconsole";
/// Role of superseded copies (backups, serial copies of re-issued certificates).
pub const BACKUP_ROLE: &str = "ovirt.engine.backup";

impl Collector for OvirtEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        cfg.host_path(pki_dir(cfg)).join("ca.pem").exists()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        let pki = pki_dir(cfg).trim_end_matches('/').to_owned();
        let password = cfg.setting("ovirt.p12_password").unwrap_or("mypass");
        let at = |rel: &str| format!("{pki}/{rel}");

        // 1. The CAs and their copies.
        add_cert_file(cfg, out, NAME, &at("ca.pem"), "ovirt.engine.ca", "", true);
        add_cert_file(
            cfg,
            out,
            NAME,
            &at("qemu-ca.pem"),
            "ovirt.engine.qemu_ca",
            "",
            false,
        );
        add_cert_file(
            cfg,
            out,
            NAME,
            &at("apache-ca.pem"),
            "ovirt.engine.apache_ca",
            "",
            false,
        );
        add_cert_file(
            cfg,
            out,
            NAME,
            &at("certs/ca.der"),
            "ovirt.engine.ca",
            "",
            false,
        );
        add_cert_file(
            cfg,
            out,
            NAME,
            &at("certs/qemu-ca.der"),
            "ovirt.engine.qemu_ca",
            "",
            false,
        );
        read_truststore(cfg, out, &at(".truststore"), password);

        // 2. Live certificates and keystores.
        let mut host_serials = BTreeMap::new();
        for name in list_dir(cfg, out, &at("certs")) {
            if backup_of(&name).is_some() || name.starts_with('.') {
                continue;
            }
            let Some(stem) = name.strip_suffix(".cer") else {
                continue;
            };
            let (role, detail) = live_role(stem);
            let fps = add_cert_file(
                cfg,
                out,
                NAME,
                &at(&format!("certs/{name}")),
                &role,
                &detail,
                true,
            );
            if role == "ovirt.node.vdsm"
                && let Some(rec) = fps.first().and_then(|fp| out.get(fp))
            {
                host_serials.insert(stem.to_owned(), rec.serial.clone());
            }
        }
        for name in list_dir(cfg, out, &at("certs-qemu")) {
            if let Some(stem) = name.strip_suffix(".cer") {
                let detail = format!("engine copy, issued to host {stem}");
                let p = at(&format!("certs-qemu/{name}"));
                add_cert_file(
                    cfg,
                    out,
                    NAME,
                    &p,
                    "ovirt.node.libvirt_migrate",
                    &detail,
                    true,
                );
            }
        }
        for name in list_dir(cfg, out, &at("keys")) {
            if let Some(stem) = name.strip_suffix(".p12") {
                add_p12(
                    cfg,
                    out,
                    &at(&format!("keys/{name}")),
                    &format!("ovirt.engine.{stem}"),
                    password,
                );
            }
        }

        // 2b. OpenSSH certificates of the serial console (`pki-enroll-openssh-cert.sh`):
        // the proxy's and every host's, and the proxy's copies in /etc/pki/ovirt-vmconsole.
        for name in list_dir(cfg, out, &at("certs")) {
            let Some(stem) = name.strip_suffix("-cert.pub") else {
                continue;
            };
            let (role, detail) = live_role(stem);
            add_ssh_cert_file(
                cfg,
                out,
                NAME,
                &at(&format!("certs/{name}")),
                &role,
                &detail,
            );
        }
        for suffix in ["host", "user"] {
            add_ssh_cert_file(
                cfg,
                out,
                NAME,
                &format!("{VMCONSOLE_PKI}/proxy-ssh_{suffix}_rsa-cert.pub"),
                &format!("ovirt.engine.vmconsole-proxy-{suffix}"),
                "",
            );
        }

        // 3. Copies left by openssl and the pki scripts.
        for dir in ["", "certs", "certs-qemu", "keys"] {
            let d = if dir.is_empty() { pki.clone() } else { at(dir) };
            for name in list_dir(cfg, out, &d) {
                let p = format!("{d}/{name}");
                if let Some(base) = backup_of(&name) {
                    if base.ends_with(".p12") {
                        add_p12(cfg, out, &p, BACKUP_ROLE, password);
                    } else if is_cert_name(base) {
                        add_cert_file(cfg, out, NAME, &p, BACKUP_ROLE, "backup", true);
                    }
                } else if dir == "certs" && is_serial_copy(&name) {
                    add_cert_file(cfg, out, NAME, &p, BACKUP_ROLE, "serial copy", true);
                }
            }
        }

        // 4. Cross-checks and the CA index.
        let ca_path = cfg.host_path(at("ca.pem")).display().to_string();
        keystore_consistency(cfg, out, &pki);
        outlives_ca(out, &ca_path);
        read_index(cfg, out, &pki, &host_serials);
    }
}

fn pki_dir(cfg: &AgentConfig) -> &str {
    cfg.setting("ovirt.engine_pki").unwrap_or(DEFAULT_PKI)
}

/// Role and location detail of a live `certs/<stem>.cer`: engine entities have plain names
/// (`apache`, `ovn-ndb`), hosts are enrolled under their FQDN or address.
fn live_role(stem: &str) -> (String, String) {
    if stem.contains('.') || stem.contains(':') {
        if let Some(h) = stem.strip_suffix("-ssh") {
            return (
                "ovirt.node.vmconsole".into(),
                format!("engine copy, issued to host {h}"),
            );
        }
        match stem.strip_suffix("-ovn") {
            Some(h) => (
                "ovirt.node.ovn".into(),
                format!("engine copy, issued to host {h}"),
            ),
            None => (
                "ovirt.node.vdsm".into(),
                format!("engine copy, issued to host {stem}"),
            ),
        }
    } else {
        (format!("ovirt.engine.{stem}"), String::new())
    }
}

/// The file a backup copies: `apache.cer.20260101120000` → `apache.cer`; also `*.bak`.
pub(crate) fn backup_of(name: &str) -> Option<&str> {
    let (base, suffix) = name.rsplit_once('.')?;
    let stamp = suffix.len() == 14 && suffix.bytes().all(|b| b.is_ascii_digit());
    (stamp || suffix == "bak").then_some(base)
}

fn is_cert_name(name: &str) -> bool {
    [".cer", ".pem", ".der"].iter().any(|e| name.ends_with(e))
}

/// `certs/1000.pem`, `certs/100A.pem`: what `openssl ca` writes to `new_certs_dir` (always
/// uppercase hex, so `ca.pem` is not one).
fn is_serial_copy(name: &str) -> bool {
    name.strip_suffix(".pem").is_some_and(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    })
}

/// Why a host file could not be read.
pub(crate) enum ReadError {
    /// Not there.
    Missing,
    /// There but unreadable; the message says why.
    Other(String),
}

const MAX_SYMLINK_HOPS: usize = 40;

/// Reads a host file, following symlinks inside the root prefix: an absolute link target
/// (`apache-ca.pem -> /etc/pki/ovirt-engine/ca.pem`) is resolved under the root, as the host
/// itself would see it. Returns the bytes and the first link target, if any.
pub(crate) fn read_host_file(
    cfg: &AgentConfig,
    host_path: &str,
) -> Result<(Vec<u8>, Option<String>), ReadError> {
    let mut p = cfg.host_path(host_path);
    let mut link: Option<String> = None;
    for hop in 0..MAX_SYMLINK_HOPS {
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if hop == 0 {
                    ReadError::Missing
                } else {
                    ReadError::Other(format!("dangling symlink to {}", link.unwrap_or_default()))
                });
            }
            Err(e) => return Err(ReadError::Other(e.to_string())),
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).map_err(|e| ReadError::Other(e.to_string()))?;
                link.get_or_insert_with(|| target.display().to_string());
                p = if target.is_absolute() {
                    cfg.host_path(&target)
                } else {
                    p.parent().map(|d| d.join(&target)).unwrap_or(target)
                };
            }
            Ok(_) => {
                return read_small_file(&p)
                    .map(|b| (b, link))
                    .map_err(ReadError::Other);
            }
        }
    }
    Err(ReadError::Other("symlink loop".into()))
}

/// Adds every certificate of a PEM/DER file at `host_path`; a missing file is a problem only
/// when `required`. Returns the fingerprints added.
pub(crate) fn add_cert_file(
    cfg: &AgentConfig,
    out: &mut Collection,
    collector: &str,
    host_path: &str,
    role: &str,
    detail: &str,
    required: bool,
) -> Vec<String> {
    let shown = cfg.host_path(host_path).display().to_string();
    match read_host_file(cfg, host_path) {
        Ok((bytes, link)) => {
            let mut loc = Location::file("file", &shown);
            loc.detail = join_detail(detail, link.map(|l| format!("symlink to {l}")));
            out.add_blob(collector, &bytes, role, loc)
        }
        Err(ReadError::Missing) if !required => Vec::new(),
        Err(ReadError::Missing) => {
            out.problem(Problem::error(collector, shown, "missing"));
            Vec::new()
        }
        Err(ReadError::Other(e)) => {
            out.problem(Problem::error(collector, shown, e));
            Vec::new()
        }
    }
}

/// Adds the OpenSSH certificate at `host_path` (if present) with `role`.
pub(crate) fn add_ssh_cert_file(
    cfg: &AgentConfig,
    out: &mut Collection,
    collector: &str,
    host_path: &str,
    role: &str,
    detail: &str,
) -> Option<String> {
    let shown = cfg.host_path(host_path).display().to_string();
    match read_host_file(cfg, host_path) {
        Ok((bytes, _)) => match openssh::parse(&String::from_utf8_lossy(&bytes)) {
            Ok(c) => {
                let mut rec = c.record(role);
                let mut loc = Location::file("file", &shown);
                loc.detail = detail.to_owned();
                rec.locations.push(loc);
                Some(out.add_record(rec))
            }
            Err(e) => {
                out.problem(Problem::error(collector, shown, e.to_string()));
                None
            }
        },
        Err(ReadError::Missing) => None,
        Err(ReadError::Other(e)) => {
            out.problem(Problem::error(collector, shown, e));
            None
        }
    }
}

fn join_detail(detail: &str, extra: Option<String>) -> String {
    match (detail.is_empty(), extra) {
        (_, None) => detail.to_owned(),
        (true, Some(x)) => x,
        (false, Some(x)) => format!("{detail}; {x}"),
    }
}

fn add_p12(cfg: &AgentConfig, out: &mut Collection, host_path: &str, role: &str, password: &str) {
    let shown = cfg.host_path(host_path).display().to_string();
    let before = out.problems.len();
    match read_host_file(cfg, host_path) {
        Ok((bytes, _)) => super::files::read_pkcs12(&shown, &bytes, role, password, out),
        Err(ReadError::Missing) => {}
        Err(ReadError::Other(e)) => out.problem(Problem::error(NAME, &shown, e)),
    }
    for p in &mut out.problems[before..] {
        p.collector = NAME.into();
    }
}

fn read_truststore(cfg: &AgentConfig, out: &mut Collection, host_path: &str, password: &str) {
    let shown = cfg.host_path(host_path).display().to_string();
    let bytes = match read_host_file(cfg, host_path) {
        Ok((b, _)) => b,
        Err(ReadError::Missing) => return,
        Err(ReadError::Other(e)) => return out.problem(Problem::error(NAME, shown, e)),
    };
    if !jks::is_jks(&bytes) {
        // keytool of a JDK ≥ 9 writes PKCS#12 unless told otherwise.
        let before = out.problems.len();
        super::files::read_pkcs12(&shown, &bytes, "ovirt.engine.ca", password, out);
        for p in &mut out.problems[before..] {
            p.collector = NAME.into();
        }
        return;
    }
    match jks::certificates(&bytes, password) {
        Ok(certs) => {
            for c in certs {
                let role = if c.alias.starts_with("qemu") {
                    "ovirt.engine.qemu_ca"
                } else {
                    "ovirt.engine.ca"
                };
                let loc = Location {
                    kind: "jks".into(),
                    path: shown.clone(),
                    alias: c.alias.clone(),
                    detail: if c.index > 0 {
                        format!("chain#{}", c.index)
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                out.add_der(NAME, &c.der, role, loc);
            }
        }
        Err(e) => out.problem(Problem::error(NAME, shown, e.to_string())),
    }
}

/// Entry names of a host directory, sorted; a missing directory is empty, an unreadable one
/// is a problem.
pub(crate) fn list_dir(cfg: &AgentConfig, out: &mut Collection, host_dir: &str) -> Vec<String> {
    let dir: PathBuf = cfg.host_path(host_dir);
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            let mut names: Vec<String> = rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            out.problem(Problem::error(
                NAME,
                dir.display().to_string(),
                e.to_string(),
            ));
            Vec::new()
        }
    }
}

fn has_location(rec: &CertRecord, path: &Path) -> bool {
    let p = path.display().to_string();
    rec.locations
        .iter()
        .any(|l| l.kind == "file" && l.path == p)
}

/// A5 "certificate is sane": `certs/<name>.cer` must be the certificate inside
/// `keys/<name>.p12`, otherwise services disagree about what they serve.
fn keystore_consistency(cfg: &AgentConfig, out: &mut Collection, pki: &str) {
    let keys: Vec<String> = list_dir(cfg, out, &format!("{pki}/keys"));
    let mut facts = Vec::new();
    for name in keys.iter().filter_map(|n| n.strip_suffix(".p12")) {
        let p12 = cfg.host_path(format!("{pki}/keys/{name}.p12"));
        let cer = cfg.host_path(format!("{pki}/certs/{name}.cer"));
        let in_p12 = out.certificates().find(|c| {
            c.locations
                .iter()
                .any(|l| l.kind == "pkcs12" && Path::new(&l.path) == p12)
        });
        let in_cer = out.certificates().find(|c| has_location(c, &cer));
        if let (Some(a), Some(b)) = (in_p12, in_cer) {
            let same = a.fingerprint_sha256 == b.fingerprint_sha256;
            if !same {
                facts.push(HealthFact {
                    kind: "ovirt.engine.keystore_mismatch".into(),
                    subject: name.to_owned(),
                    state: "differs".into(),
                    detail: format!(
                        "{} holds serial {} but {} holds serial {}: re-extract or re-enroll",
                        p12.display(),
                        a.serial,
                        cer.display(),
                        b.serial
                    ),
                    healthy: false,
                });
            }
        }
    }
    out.health.extend(facts);
}

/// A14: a leaf that outlives the CA that signed it stops verifying with the CA.
fn outlives_ca(out: &mut Collection, ca_path: &str) {
    let Some(ca) = out
        .certificates()
        .find(|c| c.locations.iter().any(|l| l.path == ca_path))
    else {
        return;
    };
    let facts: Vec<HealthFact> = out
        .certificates()
        .filter(|c| {
            c.role != BACKUP_ROLE
                && c.fingerprint_sha256 != ca.fingerprint_sha256
                && !ca.subject_key_id.is_empty()
                && c.authority_key_id == ca.subject_key_id
                && c.not_after > ca.not_after
        })
        .map(|c| HealthFact {
            kind: "ovirt.engine.outlives_ca".into(),
            subject: c.subject.clone(),
            state: "outlives-ca".into(),
            detail: format!(
                "{} (serial {}) is valid until {} but the engine CA expires {}",
                c.role,
                c.serial,
                format_time(c.not_after),
                format_time(ca.not_after)
            ),
            healthy: false,
        })
        .collect();
    out.health.extend(facts);
}

fn read_index(
    cfg: &AgentConfig,
    out: &mut Collection,
    pki: &str,
    host_serials: &BTreeMap<String, String>,
) {
    let db_host = format!("{pki}/database.txt");
    let shown = cfg.host_path(&db_host).display().to_string();
    let text = match read_host_file(cfg, &db_host) {
        Ok((b, _)) => String::from_utf8_lossy(&b).into_owned(),
        Err(ReadError::Missing) => {
            out.problem(Problem::warning(
                NAME,
                shown,
                "missing: the CA's record of what it issued is gone",
            ));
            return;
        }
        Err(ReadError::Other(e)) => return out.problem(Problem::error(NAME, shown, e)),
    };
    let (entries, bad) = index::parse(&text);
    for b in &bad {
        out.problem(Problem::warning(
            NAME,
            format!("{shown}:{}", b.line),
            b.reason.clone(),
        ));
    }
    let t = now();
    let count = |f: &dyn Fn(&index::IndexEntry) -> bool| entries.iter().filter(|e| f(e)).count();
    let revoked = count(&|e| e.status == 'R');
    let expired = count(&|e| e.status != 'R' && e.expires <= t);
    let next_serial = read_host_file(cfg, &format!("{pki}/serial.txt"))
        .ok()
        .map(|(b, _)| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    out.health.push(HealthFact {
        kind: "ovirt.engine.ca_index".into(),
        subject: shown.clone(),
        state: if bad.is_empty() { "readable".into() } else { "damaged".into() },
        detail: format!(
            "{} issued: {} valid, {expired} past their expiry, {revoked} revoked; next serial {next_serial}",
            entries.len(),
            entries.len() - expired - revoked
        ),
        healthy: bad.is_empty(),
    });

    // Live certificates issued by the engine CAs must be in the index and not revoked.
    let by_serial: BTreeMap<&str, &index::IndexEntry> =
        entries.iter().map(|e| (e.serial.as_str(), e)).collect();
    let ca_keys: Vec<String> = out
        .certificates()
        .filter(|c| c.role == "ovirt.engine.ca" || c.role == "ovirt.engine.qemu_ca")
        .map(|c| c.subject_key_id.clone())
        .filter(|k| !k.is_empty())
        .collect();
    let pki_prefix = cfg.host_path(pki).display().to_string();
    let mut problems = Vec::new();
    for c in out.certificates().filter(|c| c.role != BACKUP_ROLE) {
        let ours = ca_keys.contains(&c.authority_key_id)
            || (c.is_ca && ca_keys.contains(&c.subject_key_id));
        let Some(loc) = c.locations.iter().find(|l| l.path.starts_with(&pki_prefix)) else {
            continue;
        };
        if !ours {
            continue;
        }
        match by_serial.get(trim_serial(&c.serial)) {
            Some(e) if e.status == 'R' => problems.push(Problem::error(
                NAME,
                loc.describe(),
                format!(
                    "serial {} is revoked in database.txt but still in use",
                    c.serial
                ),
            )),
            Some(_) => {}
            None => problems.push(Problem::warning(
                NAME,
                loc.describe(),
                format!(
                    "serial {} was signed by the engine CA but is not in database.txt",
                    c.serial
                ),
            )),
        }
    }
    out.problems.extend(problems);

    // The hosts this CA enrolled, by CN; the current VDSM certificate is the one the engine
    // keeps as certs/<host>.cer, else the newest non-QEMU issuance.
    let mut hosts: BTreeMap<&str, Vec<&index::IndexEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_host()) {
        if let Some(cn) = e.attr("CN") {
            hosts.entry(cn).or_default().push(e);
        }
    }
    let warn = i64::from(roles::lookup("ovirt.node.vdsm").warn_days);
    for (cn, list) in hosts {
        let qemu = list.iter().filter(|e| e.attr("OU") == Some("qemu")).count();
        let current = host_serials
            .get(cn)
            .and_then(|s| list.iter().find(|e| e.serial == trim_serial(s)))
            .or_else(|| {
                list.iter()
                    .filter(|e| e.attr("OU") != Some("qemu"))
                    .max_by_key(|e| u128::from_str_radix(&e.serial, 16).unwrap_or(0))
            });
        let Some(e) = current else { continue };
        let state = if e.status == 'R' {
            "revoked"
        } else {
            match Status::of("ovirt.node.vdsm", e.expires, t) {
                Status::Expired => "expired",
                Status::Expiring => "expiring",
                Status::Ok => "valid",
            }
        };
        out.health.push(HealthFact {
            kind: "ovirt.engine.issued_host".into(),
            subject: cn.to_owned(),
            state: state.into(),
            detail: format!(
                "VDSM certificate serial {} expires {} ({} days); {} issued to this host, {qemu} by the QEMU CA; warn at {warn} days",
                e.serial,
                format_time(e.expires),
                (e.expires - t).div_euclid(86_400),
                list.len()
            ),
            healthy: state == "valid",
        });
    }
}

/// openssl prints serials with an even number of hex digits; the index writes them the same
/// way, but x509-parser may keep a leading `00`.
fn trim_serial(s: &str) -> &str {
    let t = s.trim_start_matches("00");
    if t.is_empty() { s } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_and_serial_copies_are_recognised() {
        assert_eq!(backup_of("apache.cer.20260101120000"), Some("apache.cer"));
        assert_eq!(backup_of("ovn-ndb.p12.bak"), Some("ovn-ndb.p12"));
        assert_eq!(backup_of("apache.cer"), None);
        assert_eq!(backup_of("host.example.test.cer"), None);
        assert_eq!(backup_of("apache.cer.2026"), None);
        assert!(is_serial_copy("100A.pem"));
        assert!(!is_serial_copy("ca.pem"));
        assert!(!is_serial_copy(".pem"));
    }

    #[test]
    fn hosts_and_entities_get_their_roles() {
        assert_eq!(live_role("apache").0, "ovirt.engine.apache");
        assert_eq!(live_role("ovn-ndb").0, "ovirt.engine.ovn-ndb");
        assert_eq!(live_role("kvm01.example.test").0, "ovirt.node.vdsm");
        assert_eq!(live_role("kvm01.example.test-ovn").0, "ovirt.node.ovn");
        assert_eq!(live_role("192.168.1.10").0, "ovirt.node.vdsm");
    }
}
