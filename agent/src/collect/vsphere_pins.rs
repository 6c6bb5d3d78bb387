//! What pins a vCenter's certificates, as the agent on the VCSA can read it (see
//! [`crate::pins`]); `shared/reference/vsphere.md` §8.8, §8.9, §9.1/§9.2 and Broadcom KB 57379.
//!
//! * VCDB `vpx_ext`: every extension row with a thumbprint (`psql -d VCDB -U postgres`, the same
//!   client and settings `vsphere.vcdb_host`/`vsphere.vcdb_port` the `vsphere.*` actions use).
//!   `com.vmware.vsan.health` must carry the Machine SSL SHA-1; EAM, Auto Deploy (`rbd`), Image
//!   Builder, VUM (`vcIntegrity`) and 8.0's vLCM client the vpxd-extension solution user's
//!   (vCert `manageVCExtensionThumbprints`, fixcerts.py). Any other row is tied to whichever
//!   certificate of this host has its thumbprint, else reported `unknown` (an extension with
//!   its own certificate, e.g. a remote SRM or NSX: nothing here to compare with).
//! * Lookup Service registrations, through `lstool.py list` (the Lookup Service's own view,
//!   parsed by [`crate::act::vsphere::parse_lstool_list`]): one pin per service with endpoints
//!   at one of the Machine SSL certificate's names, `match` when every such endpoint trusts the
//!   Machine SSL certificate the host holds. Registrations of other nodes are left to those
//!   nodes' agents; registrations at an IP address are not matched (as vCert, which points to
//!   lsdoctor, KB 80469).
//!
//! Compared with the certificate in VECS, not the one served on :443: a renewal not yet picked
//! up by rhttpproxy shows as `endpoint.stale` health, and the pins already follow VECS because
//! the renewal tools update them with VECS.

use std::path::PathBuf;

use certfleet_common::model::{Pin, Problem, pin_state};

use super::Collection;
use crate::config::AgentConfig;
use crate::pins::{cert_by_role, problem, thumbprint};

const PSQL: &str = "/opt/vmware/vpostgres/current/bin/psql";
/// `lstool.py` and its Lookup Service URL: 7.0/8.0 first, then 6.5/6.7 (reference §1/§8.7).
const LSTOOLS: [(&str, &str); 2] = [
    (
        "/usr/lib/vmware-lookupsvc/tools/lstool.py",
        "http://localhost:7090/lookupservice/sdk",
    ),
    (
        "/usr/lib/vmidentity/tools/scripts/lstool.py",
        "http://localhost:7080/lookupservice/sdk",
    ),
];
const MACHINE_SSL: &str = "vsphere.machine_ssl";
const VPXD_EXTENSION: &str = "vsphere.solution_user.vpxd-extension";

/// The certificate role a known extension's thumbprint must match (reference §8.9).
pub fn extension_role(ext_id: &str) -> Option<&'static str> {
    match ext_id {
        "com.vmware.vsan.health" => Some(MACHINE_SSL),
        "com.vmware.vim.eam"
        | "com.vmware.rbd"
        | "com.vmware.imagebuilder"
        | "com.vmware.vcIntegrity"
        | "com.vmware.vlcm.client" => Some(VPXD_EXTENSION),
        _ => None,
    }
}

/// Parses `psql -A -t -F '|'` output of `SELECT ext_id, thumbprint`: rows with a thumbprint.
pub fn parse_vpx_ext(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(i, t)| (i.trim().to_owned(), t.trim().to_owned()))
        .filter(|(i, t)| !i.is_empty() && !t.is_empty())
        .collect()
}

/// Discovered pins, and what could not be read.
pub fn discover(cfg: &AgentConfig, out: &Collection) -> (Vec<Pin>, Vec<Problem>) {
    let mut pins = Vec::new();
    let mut problems = Vec::new();
    vpx_ext(cfg, out, &mut pins, &mut problems);
    lookup_service(cfg, out, &mut pins, &mut problems);
    (pins, problems)
}

fn normalized(tp: &str) -> String {
    tp.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_uppercase()
}

fn vpx_ext(cfg: &AgentConfig, out: &Collection, pins: &mut Vec<Pin>, problems: &mut Vec<Problem>) {
    let psql = cfg.tool("psql", PSQL);
    if !psql.exists() {
        // A PSC or a node without vCenter server: no VCDB.
        return;
    }
    let mut args: Vec<String> = ["-d", "VCDB", "-U", "postgres"].map(String::from).to_vec();
    if let Some(h) = cfg.setting("vsphere.vcdb_host") {
        args.extend(["-h".into(), h.into()]);
    }
    if let Some(p) = cfg.setting("vsphere.vcdb_port") {
        args.extend(["-p".into(), p.into()]);
    }
    args.extend(
        [
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-t",
            "-F",
            "|",
            "-c",
            "SELECT ext_id, thumbprint FROM vpx_ext ORDER BY ext_id",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = match crate::exec::run_ok(&psql, &argv, None, cfg.tool_timeout) {
        Ok(o) => o.stdout,
        Err(e) => {
            problems.push(problem("VCDB vpx_ext", e.to_string()));
            return;
        }
    };
    // Thumbprints of every certificate this host holds, to tie unknown extensions.
    let by_thumbprint: Vec<(String, certfleet_common::model::CertRecord)> = out
        .certificates()
        .filter(|c| !c.der.is_empty() && c.locations.iter().any(|l| l.kind != "endpoint"))
        .map(|c| (normalized(&thumbprint(&c.der)), c))
        .collect();
    for (ext_id, tp) in parse_vpx_ext(&text) {
        let mut pin = Pin {
            source: "vpx_ext".into(),
            name: ext_id.clone(),
            pinned: tp.clone(),
            retrust: "certfleet".into(),
            ..Pin::default()
        };
        let want = normalized(&tp);
        match extension_role(&ext_id) {
            Some(role) => {
                pin.cert_role = role.into();
                match cert_by_role(out, role) {
                    Some(c) => {
                        pin.cert_fingerprint = c.fingerprint_sha256.clone();
                        let have = thumbprint(&c.der);
                        if normalized(&have) == want {
                            pin.state = pin_state::MATCH.into();
                        } else {
                            pin.state = pin_state::STALE.into();
                            pin.detail = format!(
                                "VCDB vpx_ext thumbprint {tp} is not the {role} certificate's {have} (KB 57379)"
                            );
                        }
                    }
                    None => {
                        pin.state = pin_state::UNKNOWN.into();
                        pin.detail = format!("no {role} certificate found on this host");
                    }
                }
            }
            None => match by_thumbprint.iter().find(|(t, _)| *t == want) {
                Some((_, c)) => {
                    pin.cert_role = c.role.clone();
                    pin.cert_fingerprint = c.fingerprint_sha256.clone();
                    pin.state = pin_state::MATCH.into();
                }
                None => {
                    pin.state = pin_state::UNKNOWN.into();
                    pin.retrust.clear();
                    pin.detail = "pins a certificate this host does not hold (an extension with a certificate of its own?)".into();
                }
            },
        }
        pins.push(pin);
    }
}

fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    Some(host.trim_matches(['[', ']']))
}

fn lookup_service(
    cfg: &AgentConfig,
    out: &Collection,
    pins: &mut Vec<Pin>,
    problems: &mut Vec<Problem>,
) {
    let found: Option<(PathBuf, &str)> = LSTOOLS.iter().find_map(|(p, url)| {
        let path = cfg.tool("lstool.py", p);
        path.exists().then_some((path, *url))
    });
    let Some((lstool, default_url)) = found else {
        return;
    };
    let Some(ms) = cert_by_role(out, MACHINE_SSL) else {
        return;
    };
    let url = cfg
        .setting("vsphere.lookupservice_url")
        .unwrap_or(default_url);
    let args = ["list", "--url", url, "--no-check-cert"];
    let text = match crate::exec::run_ok(&lstool, &args, None, cfg.tool_timeout) {
        Ok(o) => o.stdout,
        Err(e) => {
            problems.push(problem("Lookup Service", e.to_string()));
            return;
        }
    };
    let services = match crate::act::vsphere::parse_lstool_list(&text) {
        Ok(s) => s,
        Err(e) => {
            problems.push(problem(
                crate::exec::command_line(&lstool, &args),
                e.to_string(),
            ));
            return;
        }
    };
    let names: Vec<String> = ms.sans.iter().map(|s| s.to_ascii_lowercase()).collect();
    for svc in services {
        let mine: Vec<_> = svc
            .endpoints
            .iter()
            .filter(|e| !e.ssl_trust.is_empty())
            .filter(|e| uri_host(&e.url).is_some_and(|h| names.contains(&h.to_ascii_lowercase())))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let stale: Vec<_> = mine
            .iter()
            .filter(|e| !e.ssl_trust.contains(&ms.der))
            .collect();
        let shown = stale
            .first()
            .and_then(|e| e.ssl_trust.first())
            .unwrap_or(&ms.der);
        let mut pin = Pin {
            source: "lookup_service".into(),
            name: svc.service_id.clone(),
            cert_role: MACHINE_SSL.into(),
            cert_fingerprint: ms.fingerprint_sha256.clone(),
            pinned: thumbprint(shown),
            retrust: "certfleet".into(),
            ..Pin::default()
        };
        if stale.is_empty() {
            pin.state = pin_state::MATCH.into();
        } else {
            pin.state = pin_state::STALE.into();
            pin.detail = format!(
                "{} of {} endpoint(s) at this node trust another certificate ({}{})",
                stale.len(),
                mine.len(),
                stale[0].url,
                if stale.len() > 1 { ", …" } else { "" }
            );
        }
        pins.push(pin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpx_ext_rows_and_roles() {
        let rows = parse_vpx_ext(
            "com.vmware.vim.eam|AA:BB\ncom.vmware.vsan.health|CC:DD\ncom.vmware.other|\n\ngarbage\n",
        );
        assert_eq!(
            rows,
            [
                ("com.vmware.vim.eam".to_owned(), "AA:BB".to_owned()),
                ("com.vmware.vsan.health".to_owned(), "CC:DD".to_owned())
            ]
        );
        assert_eq!(extension_role("com.vmware.vsan.health"), Some(MACHINE_SSL));
        assert_eq!(extension_role("com.vmware.rbd"), Some(VPXD_EXTENSION));
        assert_eq!(extension_role("com.vmware.vcHms"), None);
    }

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            uri_host("https://vc.lab:443/lookupservice/sdk"),
            Some("vc.lab")
        );
        assert_eq!(uri_host("https://vc.lab/sts"), Some("vc.lab"));
        assert_eq!(uri_host("https://[::1]:7444/x"), Some("::1"));
        assert_eq!(uri_host("nonsense"), None);
    }
}
