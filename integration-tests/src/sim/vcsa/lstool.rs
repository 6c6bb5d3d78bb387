//! `lstool.py list` of the simulated VCSA: the Lookup Service's own listing of its
//! registrations, served from the registrations in the simulated vmdir (the running slapd, read
//! with the real `ldapsearch` as the machine account), so what the agent changed in vmdir is
//! what the listing shows.
//!
//! Source: a real capture, fixtures/real/vsphere/lstool-list_vum-plugin_vc70_cunnie.txt (vCenter
//! 7.0.1, `lstool.py list … --url http://localhost:7090/lookupservice/sdk`): one TAB before the
//! service fields (`Name:`, `Description:`, `Service Product:`, `Service Type:`, `Service ID:`,
//! `Site ID:`, `Node ID:`, `Owner ID:`, `Version:`, `Endpoints:`), two before the endpoint fields
//! (`Type:`, `Protocol:`, `URL:`, `SSL trust:` as base64 DER on one line), then
//! `Endpoint Attributes:`/`Attributes:` blocks; the URL forms of reference §8.7 (7080 on 6.7,
//! 7090 on 7.0/8.0; `https://localhost/...` fails the SAN check with the message the same
//! capture shows). Unverified ([UNV]): the blank line between services; how legacy
//! `vmwLKUPServiceEndpoint` (`sso:sts`) endpoints are listed (as ordinary endpoints here); the
//! service-level fields other than `Service ID`, `Site ID` and `Node ID` (vmdir here keeps only
//! URI and trust, so Name/Product/Type/Owner/Version are fixed placeholders); the exit status
//! and wording of a wrong URL (stderr, exit 1 here).

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine;

use super::{VcsaState, VcsaVersion};

/// The URL `lstool.py` of this version talks to over plain HTTP (reference §8.7).
pub fn local_url(v: VcsaVersion) -> &'static str {
    match v {
        VcsaVersion::V67 => "http://localhost:7080/lookupservice/sdk",
        _ => "http://localhost:7090/lookupservice/sdk",
    }
}

/// An endpoint registration as vmdir holds it: (service id, endpoint cn, URI, trust DER).
pub type Registration = (String, String, String, Vec<u8>);

/// Endpoint registrations in the running vmdir (also what tests check the agent's changes on).
pub fn registrations(s: &VcsaState) -> anyhow::Result<Vec<Registration>> {
    let out = Command::new("/usr/bin/ldapsearch")
        .args(["-LLL", "-o", "ldif-wrap=no", "-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", s.ldap_port))
        .args([
            "-D",
            &s.machine_account_dn,
            "-w",
            &s.machine_account_password,
        ])
        .arg("-b")
        .arg(format!("cn=Sites,cn=Configuration,{}", s.domain_dn()))
        .args([
            "(|(objectclass=vmwLKUPEndpointRegistration)(objectclass=vmwLKUPServiceEndpoint))",
            "vmwLKUPURI",
            "vmwLKUPEndpointSslTrust",
            "vmwLKUPSslTrustAnchor",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "vmdir (ldap://127.0.0.1:{}) did not answer: {}",
        s.ldap_port,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut res = Vec::new();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for block in text.split("\n\n") {
        let (mut dn, mut uri, mut trust) = (String::new(), String::new(), None);
        for l in block.lines() {
            if let Some(d) = l.strip_prefix("dn: ") {
                dn = d.to_owned();
            } else if let Some(u) = l.strip_prefix("vmwLKUPURI: ") {
                uri = u.to_owned();
            } else if let Some(t) = l.strip_prefix("vmwLKUPEndpointSslTrust: ") {
                trust = Some(b64.decode(t.trim())?);
            } else if let Some(t) = l.strip_prefix("vmwLKUPSslTrustAnchor:: ") {
                trust = Some(b64.decode(t.trim())?);
            }
        }
        if dn.is_empty() {
            continue;
        }
        // cn=<endpoint>,cn=<service id>,cn=ServiceRegistrations,…
        let mut rdns = dn.split(',').map(|r| r.trim().trim_start_matches("cn="));
        let (ep, svc) = (rdns.next().unwrap_or(""), rdns.next().unwrap_or(""));
        res.push((
            svc.to_owned(),
            ep.to_owned(),
            uri,
            trust.unwrap_or_default(),
        ));
    }
    Ok(res)
}

/// Runs `lstool.py`.
pub fn run(s: &VcsaState, args: &[String]) -> i32 {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if words.first() != Some(&"list") {
        // [DER]
        eprintln!("usage: lstool.py list --url <url> [--no-check-cert] (only list is simulated)");
        return 1;
    }
    let url = words
        .windows(2)
        .find(|w| w[0] == "--url")
        .map(|w| w[1])
        .unwrap_or("");
    if url.starts_with("https://localhost") {
        // Real capture (cunnie): the appliance certificate does not name localhost.
        eprintln!(
            "Caused by: javax.net.ssl.SSLException: Certificate for <localhost> doesn't match any of the subject alternative names: [{}]",
            s.pnid
        );
        return 1;
    }
    if url != local_url(s.version) {
        // [DER]
        eprintln!("Error: cannot connect to the Lookup Service at {url:?}");
        return 1;
    }
    let regs = match registrations(s) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return 1;
        }
    };
    let mut by_service: BTreeMap<&str, Vec<&Registration>> = BTreeMap::new();
    for r in &regs {
        by_service.entry(r.0.as_str()).or_default().push(r);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::new();
    for (svc, eps) in by_service {
        out.push_str(&format!(
            "\tName: AboutInfo.vpx.name\n\tDescription: AboutInfo.vpx.name\n\tService Product: com.vmware.cis\n\tService Type: vcenterserver\n\tService ID: {svc}\n\tSite ID: {}\n\tNode ID: {}\n\tOwner ID: vpxd-{}@{}\n\tVersion: {}\n\tEndpoints:\n",
            s.site, s.machine_id, s.machine_id, s.domain, s.version.as_str()
        ));
        for (_, _, uri, trust) in eps {
            out.push_str(&format!(
                "\t\tType: com.vmware.cis.vsphereclient.plugin\n\t\tProtocol: http\n\t\tURL: {uri}\n"
            ));
            if !trust.is_empty() {
                out.push_str(&format!("\t\tSSL trust: {}\n", b64.encode(trust)));
            }
            out.push_str("\t\tEndpoint Attributes:\n\t\t\tcompany: VMware, Inc\n");
        }
        out.push_str(&format!(
            "\tAttributes:\n\t\tcom.vmware.cis.cm.ControlScript: service-control-default-vmon\n\t\tcom.vmware.cis.cm.HostId: {}\n\n",
            s.machine_id
        ));
    }
    print!("{out}");
    0
}
