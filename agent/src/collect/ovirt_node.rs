//! The `ovirt_node` collector: the certificates of an oVirt host (reference A8) — the VDSM
//! certificate and the copies libvirt, SPICE and VNC use, the QEMU (libvirt-migrate)
//! certificate, the OVN certificate and every copy of the engine and QEMU CAs.
//!
//! The VDSM certificate is copied to `libvirt-spice/server-cert.pem`,
//! `libvirt-vnc/server-cert.pem` and `/etc/pki/libvirt/clientcert.pem`; identical copies merge
//! into the `ovirt.node.vdsm` record as more locations. A copy that differs (the manual
//! expired-host recovery of seed 003 / A13 copies the new certificate to three places and leaves
//! VNC behind) keeps its own role (`ovirt.node.libvirt_vnc`, …) and raises an
//! `ovirt.node.stale_copy` health fact. Each leaf is checked against the CA file the host's
//! services actually trust (`certs/cacert.pem`, `libvirt-migrate/ca-cert.pem`,
//! `ovn/ca-cert.pem`) by signature: `ovirt.node.chain` is unhealthy when it does not verify.
//! `*.bak` / `*.<timestamp>` copies get the role `ovirt.node.backup` unless they equal a live
//! certificate.
//!
//! The serial console's OpenSSH host certificate
//! (`/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub`) is `ovirt.node.vmconsole`.
//!
//! Settings: `ovirt.vdsm_pki` (VDSM's `trust_store_path`, default `/etc/pki/vdsm`).

use certfleet_common::model::{CertRecord, HealthFact};
use x509_parser::prelude::*;

use super::ovirt_engine::{VMCONSOLE_PKI, add_cert_file, add_ssh_cert_file, backup_of, list_dir};
use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `ovirt_node` collector.
pub struct OvirtNode;

const NAME: &str = "ovirt_node";
const DEFAULT_VDSM_PKI: &str = "/etc/pki/vdsm";
/// Role of backup copies nothing reads.
pub const BACKUP_ROLE: &str = "ovirt.node.backup";

/// `(path relative to the VDSM PKI or absolute, role, required)`, live files first; the VDSM
/// certificate is read before its copies so that identical copies keep its role.
const FILES: &[(&str, &str, bool)] = &[
    ("certs/vdsmcert.pem", "ovirt.node.vdsm", true),
    ("certs/cacert.pem", "ovirt.node.ca", true),
    (
        "libvirt-spice/server-cert.pem",
        "ovirt.node.libvirt_spice",
        false,
    ),
    ("libvirt-spice/ca-cert.pem", "ovirt.node.ca", false),
    (
        "libvirt-vnc/server-cert.pem",
        "ovirt.node.libvirt_vnc",
        false,
    ),
    ("libvirt-vnc/ca-cert.pem", "ovirt.node.ca", false),
    (
        "/etc/pki/libvirt/clientcert.pem",
        "ovirt.node.libvirt_client",
        false,
    ),
    ("/etc/pki/CA/cacert.pem", "ovirt.node.ca", false),
    ("libvirt-migrate/ca-cert.pem", "ovirt.node.qemu_ca", false),
    (
        "libvirt-migrate/server-cert.pem",
        "ovirt.node.libvirt_migrate",
        false,
    ),
    (
        "libvirt-migrate/client-cert.pem",
        "ovirt.node.libvirt_migrate",
        false,
    ),
    ("ovn/ca-cert.pem", "ovirt.node.ca", false),
    ("ovn/ovn-cert.pem", "ovirt.node.ovn", false),
];

/// Directories whose backups are reported.
const BACKUP_DIRS: &[&str] = &[
    "certs",
    "libvirt-spice",
    "libvirt-vnc",
    "libvirt-migrate",
    "ovn",
    "/etc/pki/libvirt",
    "/etc/pki/CA",
];

/// `(leaf, CA file it must chain to)`.
const CHAINS: &[(&str, &str)] = &[
    ("certs/vdsmcert.pem", "certs/cacert.pem"),
    (
        "libvirt-migrate/server-cert.pem",
        "libvirt-migrate/ca-cert.pem",
    ),
    ("ovn/ovn-cert.pem", "ovn/ca-cert.pem"),
];

/// Copies that must equal `certs/vdsmcert.pem`.
const VDSM_COPIES: &[&str] = &[
    "libvirt-spice/server-cert.pem",
    "libvirt-vnc/server-cert.pem",
    "/etc/pki/libvirt/clientcert.pem",
];

impl Collector for OvirtNode {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        cfg.host_path(vdsm_dir(cfg)).is_dir()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        let vdsm = vdsm_dir(cfg).trim_end_matches('/').to_owned();
        let full = |p: &str| {
            if p.starts_with('/') {
                p.to_owned()
            } else {
                format!("{vdsm}/{p}")
            }
        };
        for (p, role, required) in FILES {
            add_cert_file(cfg, out, NAME, &full(p), role, "", *required);
        }
        // The serial console's host certificate (OpenSSH, signed by the engine CA key).
        add_ssh_cert_file(
            cfg,
            out,
            NAME,
            &format!("{VMCONSOLE_PKI}/host-ssh_host_rsa-cert.pub"),
            "ovirt.node.vmconsole",
            "",
        );
        for d in BACKUP_DIRS {
            let dir = full(d);
            for name in list_dir(cfg, out, &dir) {
                if backup_of(&name).is_some_and(|b| b.ends_with(".pem")) {
                    add_cert_file(
                        cfg,
                        out,
                        NAME,
                        &format!("{dir}/{name}"),
                        BACKUP_ROLE,
                        "backup",
                        true,
                    );
                }
            }
        }
        let shown = |p: &str| cfg.host_path(full(p)).display().to_string();
        let mut facts = Vec::new();
        for (leaf, ca) in CHAINS {
            let (Some(l), Some(c)) = (record_at(out, &shown(leaf)), record_at(out, &shown(ca)))
            else {
                continue;
            };
            facts.push(chain_fact(&shown(leaf), &l, &shown(ca), &c));
        }
        if let Some(v) = record_at(out, &shown("certs/vdsmcert.pem")) {
            for copy in VDSM_COPIES {
                if let Some(c) = record_at(out, &shown(copy))
                    && c.fingerprint_sha256 != v.fingerprint_sha256
                {
                    facts.push(HealthFact {
                        kind: "ovirt.node.stale_copy".into(),
                        subject: shown(copy),
                        state: "differs-from-vdsmcert".into(),
                        detail: format!(
                            "holds serial {} (until {}) but certs/vdsmcert.pem holds serial {} (until {}): copy it and restart libvirtd",
                            c.serial,
                            certfleet_common::model::format_time(c.not_after),
                            v.serial,
                            certfleet_common::model::format_time(v.not_after)
                        ),
                        healthy: false,
                    });
                }
            }
        }
        out.health.extend(facts);
    }
}

fn vdsm_dir(cfg: &AgentConfig) -> &str {
    cfg.setting("ovirt.vdsm_pki").unwrap_or(DEFAULT_VDSM_PKI)
}

/// The record found at `path` (the first certificate of the file).
fn record_at(out: &Collection, path: &str) -> Option<CertRecord> {
    out.certificates().find(|c| {
        c.locations.iter().any(|l| {
            l.path == path
                && (l.detail.is_empty() || l.detail == "#0" || l.detail.starts_with("symlink"))
        })
    })
}

/// Whether `leaf` is signed by the key of `ca` (signature check, not just AKI/SKI).
fn chain_fact(leaf_path: &str, leaf: &CertRecord, ca_path: &str, ca: &CertRecord) -> HealthFact {
    let verdict = match (
        X509Certificate::from_der(&leaf.der),
        X509Certificate::from_der(&ca.der),
    ) {
        (Ok((_, l)), Ok((_, c))) => match l.verify_signature(Some(c.public_key())) {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("signature does not verify with {ca_path}: {e}")),
        },
        _ => Err("cannot re-parse for the signature check".to_owned()),
    };
    let ids = format!(
        "issuer {:?}, AKI {}; {} is {:?}, SKI {}",
        leaf.issuer,
        if leaf.authority_key_id.is_empty() {
            "none"
        } else {
            &leaf.authority_key_id
        },
        ca_path,
        ca.subject,
        if ca.subject_key_id.is_empty() {
            "none"
        } else {
            &ca.subject_key_id
        }
    );
    match verdict {
        Ok(()) => HealthFact {
            kind: "ovirt.node.chain".into(),
            subject: leaf_path.to_owned(),
            state: "signed-by-host-ca".into(),
            detail: ids,
            healthy: true,
        },
        Err(e) => HealthFact {
            kind: "ovirt.node.chain".into(),
            subject: leaf_path.to_owned(),
            state: "not-signed-by-host-ca".into(),
            detail: format!("{e}; {ids}: services on this host will reject it; re-enroll the host"),
            healthy: false,
        },
    }
}
