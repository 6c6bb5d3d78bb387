//! The `vsphere` collector: what a vCenter Server Appliance holds, read the way VMware's own
//! tools read it (`shared/reference/vsphere.md`).
//!
//! * VECS through `vecs-cli store list` and `entry list --store S` per store (§2.3; the plain
//!   listing carries each entry's PEM, so one call per store suffices; the parser also accepts
//!   the `--text` layout). Store/alias map to roles (`vsphere.machine_ssl`,
//!   `vsphere.solution_user.<store>`, `vsphere.trusted_root`, `vsphere.backup`, …); CRLs in
//!   `TRUSTED_ROOT_CRLS` become health facts, not certificates.
//! * The VMCA root file `/var/lib/vmware/vmca/root.cer` (`vsphere.vmca_root`).
//! * The STS signing certificate, invisible to vecs-cli, from vmdir with `ldapsearch` bound as
//!   the machine account found with `lwregshell` (§1, §5.1), as vCert does.
//! * Expired certificates in `BACKUP_STORE`, `BACKUP_STORE_H5C` and `TRUSTED_ROOTS` become
//!   `vsphere.certificate_status_alarm` health facts: vCenter's "Certificate Status" alarm
//!   watches every VECS store, so such leftovers keep it red after a successful renewal (seed
//!   000; Broadcom KB 326268).
//! * `vmafd-cli get-pnid`: whether the Machine SSL certificate names the PNID.
//! * `vdcrepadmin -f showpartnerstatus`: one `vsphere.replication` health fact per partner.
//! * The Machine SSL endpoint (rhttpproxy :443), so "renewed in VECS but still serving the old
//!   one" shows.
//!
//! Settings (`[settings]` in the agent config):
//! * `vsphere.ldap_uri` — vmdir LDAP URI (default `ldap://localhost:389`).
//! * `vsphere.https_address` — Machine SSL endpoint `host:port` (default `127.0.0.1:443`).
//! * `vsphere.https_sni` — SNI for that probe (default: the PNID).
//! * `vsphere.sso_user` — vdcrepadmin `-u` (default `administrator`).
//! * `vsphere.sso_password_file` — host path of a file holding that user's password; without
//!   it replication is not checked (a warning says so).
//!
//! Tools (override in `[tools]`): `vecs-cli`, `vmafd-cli`, `vdcrepadmin`, `lwregshell`,
//! `ldapsearch` (tried under `/usr/bin` and `/opt/likewise/bin`), at their VCSA paths under the
//! root.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use certfleet_common::model::{HealthFact, Location, Problem};

use super::{Collection, Collector};
use crate::config::AgentConfig;
use crate::exec;

/// The `vsphere` collector.
pub struct Vsphere;

const NAME: &str = "vsphere";
const VECS_CLI: &str = "/usr/lib/vmware-vmafd/bin/vecs-cli";
const VMAFD_CLI: &str = "/usr/lib/vmware-vmafd/bin/vmafd-cli";
const VDCREPADMIN: &str = "/usr/lib/vmware-vmdir/bin/vdcrepadmin";
const LWREGSHELL: &str = "/opt/likewise/bin/lwregshell";

/// An OpenLDAP client (`ldapsearch`, `ldapmodify`): `[tools]` if configured, else the first of
/// `/usr/bin/<name>` (vCert, fixcerts.py) and `/opt/likewise/bin/<name>` (fixsts.sh) that exists
/// under the root. Which appliances ship which is not documented, so both are tried.
pub fn ldap_tool(cfg: &AgentConfig, name: &str) -> PathBuf {
    if let Some(p) = cfg.tools.get(name) {
        return p.clone();
    }
    let candidates = [
        format!("/usr/bin/{name}"),
        format!("/opt/likewise/bin/{name}"),
    ];
    candidates
        .iter()
        .map(|c| cfg.host_path(c))
        .find(|p| p.exists())
        .unwrap_or_else(|| cfg.host_path(&candidates[0]))
}
const VMCA_ROOT: &str = "/var/lib/vmware/vmca/root.cer";
const VMDIR_CERT_6X: &str = "/usr/lib/vmware-vmdir/share/config/vmdircert.pem";

impl Collector for Vsphere {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        cfg.tool("vecs-cli", VECS_CLI).exists()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        collect_file(cfg, out, VMCA_ROOT, "vsphere.vmca_root", true);
        collect_file(cfg, out, VMDIR_CERT_6X, "vsphere.vmdir_ssl", false);
        let machine_ssl = collect_vecs(cfg, out);
        let pnid = pnid(cfg, out);
        if let (Some(pnid), Some(fp)) = (&pnid, &machine_ssl) {
            check_pnid(out, pnid, fp);
        }
        collect_sts(cfg, out);
        collect_replication(cfg, out);
        probe_machine_ssl(cfg, out, pnid.as_deref());
    }
}

fn tool(cfg: &AgentConfig, name: &str, default: &str) -> PathBuf {
    cfg.tool(name, default)
}

/// Runs a tool that must succeed; a failure becomes a problem naming the command line.
fn run_ok(
    cfg: &AgentConfig,
    out: &mut Collection,
    program: &Path,
    args: &[&str],
) -> Option<String> {
    match exec::run_ok(program, args, None, cfg.tool_timeout) {
        Ok(o) => Some(o.stdout),
        Err(e) => {
            tracing::warn!(error = %e, "vsphere tool failed");
            out.problem(Problem::error(
                NAME,
                exec::command_line(program, args),
                e.to_string(),
            ));
            None
        }
    }
}

fn collect_file(
    cfg: &AgentConfig,
    out: &mut Collection,
    host_path: &str,
    role: &str,
    required: bool,
) {
    let path = cfg.host_path(host_path);
    if !required && !path.exists() {
        return;
    }
    match super::read_small_file(&path) {
        Ok(bytes) => {
            out.add_blob(NAME, &bytes, role, Location::file("file", host_path));
        }
        Err(e) => out.problem(Problem::error(NAME, host_path, e)),
    }
}

/// Role of a certificate in VECS `store` under `alias`.
pub fn vecs_role(store: &str, alias: &str) -> String {
    match store {
        "MACHINE_SSL_CERT" => "vsphere.machine_ssl".into(),
        "TRUSTED_ROOTS" => "vsphere.trusted_root".into(),
        "TRUSTED_ROOT_CRLS" => "vsphere.trusted_root_crl".into(),
        "BACKUP_STORE" | "BACKUP_STORE_H5C" => "vsphere.backup".into(),
        "data-encipherment" => "vsphere.data_encipherment".into(),
        "SMS" => "vsphere.sms".into(),
        "STS_INTERNAL_SSL_CERT" => "vsphere.sts_internal_ssl".into(),
        "machine" | "vpxd" | "vpxd-extension" | "vsphere-webclient" | "hvc" | "wcp" => {
            format!("vsphere.solution_user.{store}")
        }
        _ if alias == store => format!("vsphere.solution_user.{store}"),
        _ => format!("vsphere.vecs.{store}"),
    }
}

/// Reads every VECS store; returns the fingerprint of `MACHINE_SSL_CERT/__MACHINE_CERT`.
fn collect_vecs(cfg: &AgentConfig, out: &mut Collection) -> Option<String> {
    let vecs = tool(cfg, "vecs-cli", VECS_CLI);
    let listing = run_ok(cfg, out, &vecs, &["store", "list"])?;
    let mut machine_ssl = None;
    for store in listing.lines().map(str::trim).filter(|s| !s.is_empty()) {
        let args = ["entry", "list", "--store", store];
        let Some(text) = run_ok(cfg, out, &vecs, &args) else {
            continue;
        };
        let cmd = exec::command_line(&vecs, &args);
        let listing = parse_entry_list(&text);
        if let Some(w) = &listing.warning {
            out.problem(Problem::warning(NAME, &cmd, w.clone()));
        }
        let mut crls = 0usize;
        for e in listing.entries {
            let loc = Location {
                kind: "vecs".into(),
                store: store.into(),
                alias: e.alias.clone(),
                ..Default::default()
            };
            let Some(pem) = e.pem.as_deref().filter(|p| !p.trim().is_empty()) else {
                if e.entry_type != "Secret Key" && e.text.is_none() {
                    tracing::debug!(store, alias = %e.alias, "entry without certificate");
                }
                continue;
            };
            if pem.contains("-----BEGIN X509 CRL-----") {
                crls += 1;
                crl_fact(out, &loc, pem);
                continue;
            }
            let role = vecs_role(store, &e.alias);
            if ALARM_STORES.contains(&store) {
                alarm_fact(out, store, &e.alias, pem);
            }
            let fps = out.add_blob(NAME, pem.as_bytes(), &role, loc);
            if store == "MACHINE_SSL_CERT" && e.alias == "__MACHINE_CERT" {
                machine_ssl = fps.into_iter().next();
            }
        }
        if store == "TRUSTED_ROOT_CRLS" {
            // vCert warns above 30 CRLs and errors above 100 (§11.4).
            out.health.push(HealthFact {
                kind: "vsphere.crl_count".into(),
                subject: "TRUSTED_ROOT_CRLS".into(),
                state: if crls > 100 {
                    "bloated"
                } else if crls > 30 {
                    "growing"
                } else {
                    "ok"
                }
                .into(),
                detail: format!("{crls} CRLs in VECS TRUSTED_ROOT_CRLS"),
                healthy: crls <= 30,
            });
        }
    }
    machine_ssl
}

/// Stores whose expired entries keep vCenter's "Certificate Status" alarm red although nothing
/// uses them (KB 326268 for BACKUP_STORE; TRUSTED_ROOTS per KB 326288).
const ALARM_STORES: [&str; 3] = ["BACKUP_STORE", "BACKUP_STORE_H5C", "TRUSTED_ROOTS"];

/// A `vsphere.certificate_status_alarm` fact when the certificate in `store/alias` is expired.
fn alarm_fact(out: &mut Collection, store: &str, alias: &str, pem: &str) {
    let Ok(der) = certfleet_common::pem::first_certificate(pem.as_bytes()) else {
        return;
    };
    let Ok(rec) = certfleet_common::x509::parse_der(&der) else {
        return;
    };
    if rec.not_after > certfleet_common::model::now() {
        return;
    }
    let fix = if store == "TRUSTED_ROOTS" {
        "unpublish it (dir-cli trustedcert unpublish) and delete it from VECS once nothing chains to it"
    } else {
        "delete it once the current certificate is verified (vsphere.clean_backup_store, or vecs-cli entry delete -y)"
    };
    out.health.push(HealthFact {
        kind: "vsphere.certificate_status_alarm".into(),
        subject: format!("{store}/{alias}"),
        state: "expired".into(),
        detail: format!(
            "{} expired {}: keeps vCenter's Certificate Status alarm red; {fix}",
            rec.subject,
            certfleet_common::model::format_time(rec.not_after)
        ),
        healthy: false,
    });
}

fn crl_fact(out: &mut Collection, loc: &Location, pem: &str) {
    let der = match certfleet_common::pem::decode_all(pem.as_bytes()) {
        Ok(blocks) => blocks
            .into_iter()
            .find(|(l, _)| l == "X509 CRL")
            .map(|b| b.1),
        Err(e) => {
            out.problem(Problem::error(NAME, loc.describe(), e.to_string()));
            return;
        }
    };
    let Some(der) = der else { return };
    match x509_parser::parse_x509_crl(&der) {
        Ok((_, crl)) => {
            let now = certfleet_common::model::now();
            let next = crl.next_update().map(|t| t.timestamp());
            let stale = next.is_some_and(|n| n < now);
            out.health.push(HealthFact {
                kind: "vsphere.trusted_root_crl".into(),
                subject: format!("{}/{}", loc.store, loc.alias),
                state: if stale { "stale" } else { "current" }.into(),
                detail: format!(
                    "CRL issued by {}, next update {}",
                    crl.issuer(),
                    next.map(certfleet_common::model::format_time)
                        .unwrap_or_else(|| "none".into())
                ),
                healthy: !stale,
            });
        }
        Err(e) => out.problem(Problem::error(
            NAME,
            loc.describe(),
            format!("unreadable CRL: {e}"),
        )),
    }
}

/// One entry of `vecs-cli entry list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecsListEntry {
    /// `Alias :` value.
    pub alias: String,
    /// `Entry type :` value (`Private Key`, `Trusted Cert`, …).
    pub entry_type: String,
    /// The PEM of the `Certificate :` line (plain listing).
    pub pem: Option<String>,
    /// The OpenSSL text dump (`--text` listing).
    pub text: Option<String>,
}

impl VecsListEntry {
    /// `Not After :` from a `--text` dump.
    pub fn not_after(&self) -> Option<&str> {
        self.text
            .as_deref()?
            .lines()
            .find_map(|l| l.trim().strip_prefix("Not After :").map(str::trim))
    }
}

/// A parsed `vecs-cli entry list` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecsListing {
    /// `Number of entries in store :` value, if present.
    pub count: Option<usize>,
    /// Entries in order.
    pub entries: Vec<VecsListEntry>,
    /// Something that did not add up (count mismatch, stray lines).
    pub warning: Option<String>,
}

/// Parses `vecs-cli entry list --store S [--text]` output (§2.3). Separators are TABs, but
/// any whitespace after the colon is accepted; never panics.
pub fn parse_entry_list(text: &str) -> VecsListing {
    let mut listing = VecsListing::default();
    let mut cur: Option<VecsListEntry> = None;
    let mut stray = 0usize;
    let mut in_pem = false;
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.strip_prefix(name)?;
        let rest = rest.trim_start_matches([' ', '\t']).strip_prefix(':')?;
        Some(rest.trim_start_matches([' ', '\t']).trim_end().to_owned())
    };
    for line in text.lines() {
        if let Some(n) = field(line, "Number of entries in store") {
            listing.count = n.trim().parse().ok();
            continue;
        }
        if let Some(alias) = field(line, "Alias") {
            if let Some(e) = cur.take() {
                listing.entries.push(e);
            }
            cur = Some(VecsListEntry {
                alias,
                ..Default::default()
            });
            in_pem = false;
            continue;
        }
        let Some(e) = cur.as_mut() else {
            if !line.trim().is_empty() {
                stray += 1;
            }
            continue;
        };
        if e.entry_type.is_empty()
            && let Some(t) = field(line, "Entry type")
        {
            e.entry_type = t;
            continue;
        }
        if in_pem {
            if line.trim().is_empty() {
                in_pem = false;
            } else if let Some(p) = e.pem.as_mut() {
                p.push('\n');
                p.push_str(line.trim_end());
            }
            continue;
        }
        if e.pem.is_none()
            && e.text.is_none()
            && let Some(first) = field(line, "Certificate ")
        {
            // Plain listing: `Certificate :\t<PEM first line>` then the PEM up to a blank line.
            in_pem = !first.is_empty();
            e.pem = Some(first);
            continue;
        }
        if line.starts_with("Certificate:") || e.text.is_some() {
            let t = e.text.get_or_insert_with(String::new);
            t.push_str(line);
            t.push('\n');
            continue;
        }
        if !line.trim().is_empty() {
            stray += 1;
        }
    }
    if let Some(e) = cur.take() {
        listing.entries.push(e);
    }
    let mut warnings = Vec::new();
    if let Some(n) = listing.count
        && n != listing.entries.len()
    {
        warnings.push(format!(
            "store claims {n} entries, {} listed",
            listing.entries.len()
        ));
    }
    if listing.count.is_none() && !text.trim().is_empty() {
        warnings.push("no `Number of entries in store` line: not vecs-cli output?".into());
    }
    if stray > 0 {
        warnings.push(format!("{stray} unrecognised line(s)"));
    }
    if !warnings.is_empty() {
        listing.warning = Some(warnings.join("; "));
    }
    listing
}

fn pnid(cfg: &AgentConfig, out: &mut Collection) -> Option<String> {
    let p = tool(cfg, "vmafd-cli", VMAFD_CLI);
    let args = ["get-pnid", "--server-name", "localhost"];
    let text = run_ok(cfg, out, &p, &args)?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [one]
            if one.len() < 256
                && one
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c)) =>
        {
            Some((*one).to_owned())
        }
        _ => {
            out.problem(Problem::error(
                NAME,
                exec::command_line(&p, &args),
                "expected one host name line",
            ));
            None
        }
    }
}

fn check_pnid(out: &mut Collection, pnid: &str, fingerprint: &str) {
    let Some(rec) = out.get(fingerprint) else {
        return;
    };
    let want = format!("DNS:{pnid}");
    let ok = rec.sans.iter().any(|s| s.eq_ignore_ascii_case(&want));
    out.health.push(HealthFact {
        kind: "vsphere.machine_ssl_pnid".into(),
        subject: pnid.into(),
        state: if ok { "pnid-in-san" } else { "pnid-missing" }.into(),
        detail: if ok {
            format!("Machine SSL certificate names the PNID {pnid}")
        } else {
            format!(
                "Machine SSL certificate SANs {:?} do not include the PNID {pnid}",
                rec.sans
            )
        },
        healthy: ok,
    });
}

/// `lwregshell list_values` lines: `+  "name"  REG_SZ  "value"` (quotes and backslashes escaped).
pub fn parse_lwreg(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['+', ' ']);
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('"') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix("REG_SZ") else {
            continue;
        };
        let rest = rest.trim();
        let Some(inner) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
            continue;
        };
        let mut value = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    value.push(n);
                }
            } else {
                value.push(c);
            }
        }
        out.push((name.to_owned(), value));
    }
    out
}

/// A temporary 0600 file holding a secret, removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(secret: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("certfleet-vmdir-{}-{nanos}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())?;
        Ok(SecretFile(path))
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One LDIF entry: DN and `(attribute, value bytes)`.
pub type LdifEntry = (String, Vec<(String, Vec<u8>)>);

/// Parses `ldapsearch -LLL -o ldif-wrap=no` output (also unwraps folded lines). Never panics.
pub fn parse_ldif(text: &str) -> Result<Vec<LdifEntry>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        if let Some(cont) = l.strip_prefix(' ')
            && let Some(last) = lines.last_mut()
        {
            last.push_str(cont);
            continue;
        }
        lines.push(l.to_owned());
    }
    let mut entries = Vec::new();
    let mut cur: Option<LdifEntry> = None;
    for l in lines {
        if l.trim().is_empty() {
            if let Some(e) = cur.take() {
                entries.push(e);
            }
            continue;
        }
        if l.starts_with('#') {
            continue;
        }
        let Some((attr, rest)) = l.split_once(':') else {
            return Err(format!(
                "not LDIF: {:?}",
                l.chars().take(60).collect::<String>()
            ));
        };
        let value = if let Some(v) = rest.strip_prefix(':') {
            b64.decode(v.trim())
                .map_err(|e| format!("attribute {attr}: bad base64: {e}"))?
        } else {
            rest.trim_start().as_bytes().to_vec()
        };
        if attr.eq_ignore_ascii_case("dn") {
            if let Some(e) = cur.take() {
                entries.push(e);
            }
            cur = Some((String::from_utf8_lossy(&value).into_owned(), Vec::new()));
        } else if let Some(e) = cur.as_mut() {
            // `userCertificate;binary` is the same attribute with a transfer option.
            let name = attr.split(';').next().unwrap_or(attr).to_owned();
            e.1.push((name, value));
        } else {
            return Err(format!("attribute {attr} before any dn"));
        }
    }
    if let Some(e) = cur.take() {
        entries.push(e);
    }
    Ok(entries)
}

fn collect_sts(cfg: &AgentConfig, out: &mut Collection) {
    let lw = tool(cfg, "lwregshell", LWREGSHELL);
    let key = r"[HKEY_THIS_MACHINE\services\vmdir]";
    let Some(reg) = run_ok(cfg, out, &lw, &["list_values", key]) else {
        return;
    };
    let values = parse_lwreg(&reg);
    let get = |n: &str| {
        values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let (Some(dn), Some(password)) = (get("dcAccountDN"), get("dcAccountPassword")) else {
        out.problem(Problem::error(
            NAME,
            exec::command_line(&lw, &["list_values", key]),
            "no dcAccountDN/dcAccountPassword: cannot bind to vmdir to read the STS signing certificate",
        ));
        return;
    };
    let domain_dn: Vec<&str> = dn
        .split(',')
        .map(str::trim)
        .filter(|p| p.to_ascii_lowercase().starts_with("dc="))
        .collect();
    let domain = domain_dn
        .iter()
        .map(|p| &p[3..])
        .collect::<Vec<_>>()
        .join(".");
    let base = format!(
        "cn={domain},cn=Tenants,cn=IdentityManager,cn=Services,{}",
        domain_dn.join(",")
    );
    let secret = match SecretFile::new(&password) {
        Ok(s) => s,
        Err(e) => {
            out.problem(Problem::error(
                NAME,
                "vmdir machine account",
                format!("cannot write temporary password file: {e}"),
            ));
            return;
        }
    };
    let uri = cfg
        .setting("vsphere.ldap_uri")
        .unwrap_or("ldap://localhost:389")
        .to_owned();
    let ldapsearch = ldap_tool(cfg, "ldapsearch");
    let pwfile = secret.0.display().to_string();
    let filter =
        "(|(objectclass=vmwSTSTenantCredential)(objectclass=vmwSTSTenantTrustedCertificateChain))";
    let args = [
        "-o",
        "ldif-wrap=no",
        "-LLL",
        "-x",
        "-H",
        &uri,
        "-b",
        &base,
        "-D",
        &dn,
        "-y",
        &pwfile,
        filter,
        "userCertificate",
    ];
    let Some(ldif) = run_ok(cfg, out, &ldapsearch, &args) else {
        return;
    };
    let cmd = exec::command_line(&ldapsearch, &args);
    let entries = match parse_ldif(&ldif) {
        Ok(e) => e,
        Err(e) => {
            out.problem(Problem::error(NAME, cmd, e));
            return;
        }
    };
    let mut leaves = 0;
    for (entry_dn, attrs) in entries {
        let credential = entry_dn
            .to_ascii_lowercase()
            .starts_with("cn=tenantcredential-");
        for (i, (_, der)) in attrs
            .iter()
            .filter(|(a, _)| a.eq_ignore_ascii_case("userCertificate"))
            .enumerate()
        {
            let loc = Location {
                kind: "vmdir".into(),
                path: entry_dn.clone(),
                detail: format!("userCertificate#{i}"),
                ..Default::default()
            };
            // Pick the non-CA certificate as the signing one, not the position (§5.1).
            let is_ca = certfleet_common::x509::parse_der(der)
                .map(|r| r.is_ca)
                .unwrap_or(false);
            let role = if is_ca {
                "vsphere.trusted_root"
            } else {
                "vsphere.sts_signing"
            };
            if out.add_der(NAME, der, role, loc).is_some() && !is_ca && credential {
                leaves += 1;
            }
        }
    }
    if leaves == 0 {
        out.problem(Problem::error(
            NAME,
            cmd,
            format!("no STS signing certificate (TenantCredential) under {base}"),
        ));
    }
}

/// One partner block of `vdcrepadmin -f showpartnerstatus` (§8.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerStatus {
    /// Partner host.
    pub host: String,
    /// `Host available:`.
    pub host_available: Option<bool>,
    /// `Status available:`.
    pub status_available: Option<bool>,
    /// `Partner is N changes behind.`
    pub behind: Option<i64>,
}

/// Parses `showpartnerstatus`; `Err` when the output is not in that format.
pub fn parse_partner_status(text: &str) -> Result<Vec<PartnerStatus>, String> {
    let mut partners: Vec<PartnerStatus> = Vec::new();
    let yes = |v: &str| match v.trim() {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(h) = line.strip_prefix("Partner:") {
            partners.push(PartnerStatus {
                host: h.trim().to_owned(),
                ..Default::default()
            });
            continue;
        }
        let Some(p) = partners.last_mut() else {
            return Err(format!(
                "unexpected line before any `Partner:`: {:?}",
                line.chars().take(60).collect::<String>()
            ));
        };
        if let Some(v) = line.strip_prefix("Host available:") {
            p.host_available =
                Some(yes(v).ok_or_else(|| format!("bad `Host available` value {v:?}"))?);
        } else if let Some(v) = line.strip_prefix("Status available:") {
            p.status_available =
                Some(yes(v).ok_or_else(|| format!("bad `Status available` value {v:?}"))?);
        } else if let Some(v) = line
            .strip_prefix("Partner is ")
            .and_then(|r| r.strip_suffix(" changes behind."))
        {
            p.behind = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("bad change count {v:?}"))?,
            );
        } else if line.starts_with("My last change number:")
            || line.starts_with("Partner has seen my change number:")
        {
        } else {
            return Err(format!(
                "unrecognised line {:?}",
                line.chars().take(60).collect::<String>()
            ));
        }
    }
    Ok(partners)
}

/// The SSO administrator password from the file named by `vsphere.sso_password_file`.
pub fn sso_password(cfg: &AgentConfig) -> Result<String, String> {
    let f = cfg
        .setting("vsphere.sso_password_file")
        .ok_or("vsphere.sso_password_file is not set: cannot run vdcrepadmin")?;
    let b = super::read_small_file(&cfg.host_path(f)).map_err(|e| format!("{f}: {e}"))?;
    Ok(String::from_utf8_lossy(&b)
        .trim_end_matches(['\r', '\n'])
        .to_owned())
}

/// Runs `vdcrepadmin -f showpartnerstatus` as the SSO administrator and parses it. Returns the
/// command line with the password masked (the real tool takes it as an argument; it must never
/// reach a message or a log) and its output.
pub fn partner_status(
    cfg: &AgentConfig,
    password: &str,
    timeout: Duration,
) -> Result<(String, String, Vec<PartnerStatus>), String> {
    let bin = tool(cfg, "vdcrepadmin", VDCREPADMIN);
    let user = cfg
        .setting("vsphere.sso_user")
        .unwrap_or("administrator")
        .to_owned();
    let args = [
        "-f",
        "showpartnerstatus",
        "-h",
        "localhost",
        "-u",
        &user,
        "-w",
        password,
    ];
    let shown = exec::command_line(&bin, &args).replace(password, "****");
    let out = exec::run_ok(&bin, &args, None, timeout)
        .map_err(|e| e.to_string().replace(password, "****"))?;
    let partners = parse_partner_status(&out.stdout)
        .map_err(|e| format!("{shown}: unexpected output: {e}"))?;
    Ok((shown, out.stdout, partners))
}

fn collect_replication(cfg: &AgentConfig, out: &mut Collection) {
    if cfg.setting("vsphere.sso_password_file").is_none() {
        out.problem(Problem::warning(
            NAME,
            "vdcrepadmin",
            "replication not checked: set vsphere.sso_password_file",
        ));
        return;
    }
    let password = match sso_password(cfg) {
        Ok(p) => p,
        Err(e) => {
            out.problem(Problem::error(NAME, "vsphere.sso_password_file", e));
            return;
        }
    };
    let partners = match partner_status(cfg, &password, cfg.tool_timeout) {
        Ok((_, _, p)) => p,
        Err(e) => {
            out.problem(Problem::error(NAME, "vdcrepadmin -f showpartnerstatus", e));
            return;
        }
    };
    for p in partners {
        let (state, healthy, detail) = match (p.host_available, p.status_available, p.behind) {
            (Some(true), Some(true), Some(0)) => {
                ("in-sync", true, "partner is 0 changes behind".to_owned())
            }
            (Some(true), Some(true), Some(n)) => {
                ("behind", false, format!("partner is {n} changes behind"))
            }
            (Some(false), _, _) => ("host-unavailable", false, "host not available".to_owned()),
            (_, Some(false), _) => (
                "status-unavailable",
                false,
                "replication status not available".to_owned(),
            ),
            _ => ("unknown", false, "incomplete partner status".to_owned()),
        };
        out.health.push(HealthFact {
            kind: "vsphere.replication".into(),
            subject: p.host,
            state: state.into(),
            detail,
            healthy,
        });
    }
}

fn probe_machine_ssl(cfg: &AgentConfig, out: &mut Collection, pnid: Option<&str>) {
    let address = cfg
        .setting("vsphere.https_address")
        .unwrap_or("127.0.0.1:443")
        .to_owned();
    let sni = cfg
        .setting("vsphere.https_sni")
        .or(pnid)
        .unwrap_or("localhost")
        .to_owned();
    match super::endpoint::probe(
        &address,
        &sni,
        cfg.tool_timeout.min(Duration::from_secs(10)),
    ) {
        Ok(chain) => {
            if let Some(leaf) = chain.first() {
                out.add_der(
                    NAME,
                    leaf,
                    "vsphere.machine_ssl",
                    Location::file("endpoint", address),
                );
            }
        }
        Err(e) => out.problem(Problem::error(
            NAME,
            address,
            format!("Machine SSL endpoint: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLAIN: &str = "Number of entries in store :\t2\nAlias :\t__MACHINE_CERT\nEntry type :\tPrivate Key\nCertificate :\t-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n\nAlias :\tlocation_password_default\nEntry type :\tSecret Key\nCertificate :\t\n\n";

    #[test]
    fn plain_listing() {
        let l = parse_entry_list(PLAIN);
        assert_eq!(l.count, Some(2));
        assert_eq!(l.warning, None);
        assert_eq!(l.entries[0].alias, "__MACHINE_CERT");
        assert_eq!(l.entries[0].entry_type, "Private Key");
        assert_eq!(
            l.entries[0].pem.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----")
        );
        assert_eq!(l.entries[1].entry_type, "Secret Key");
        assert_eq!(l.entries[1].pem.as_deref(), Some(""));
    }

    #[test]
    fn text_listing_with_space_padded_dates() {
        let t = "Number of entries in store :\t1\nAlias :\twcp\nEntry type :\tPrivate Key\nCertificate:\n    Data:\n        Validity\n            Not Before: Apr 28 12:00:47 2021 GMT\n            Not After : Jan  5 12:00:00 2025 GMT\n        Subject: CN = wcp\n";
        let l = parse_entry_list(t);
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.entries[0].not_after(), Some("Jan  5 12:00:00 2025 GMT"));
        assert_eq!(l.warning, None);
    }

    #[test]
    fn observed_blog_layout_with_spaces() {
        let t = "Number of entries in store :    1\nAlias : location_password_default\nEntry type :    Secret Key\nCertificate :\n";
        let l = parse_entry_list(t);
        assert_eq!(l.entries[0].alias, "location_password_default");
        assert_eq!(l.entries[0].entry_type, "Secret Key");
        assert_eq!(l.warning, None);
    }

    #[test]
    fn count_mismatch_and_garbage_warn() {
        assert!(
            parse_entry_list("Number of entries in store :\t3\nAlias :\ta\n")
                .warning
                .is_some()
        );
        assert!(parse_entry_list("hello\nworld\n").warning.is_some());
    }

    #[test]
    fn partner_status_as_in_the_reference() {
        let t = "Partner: vcsa2.lab.bowdre.net\nHost available:   Yes\nStatus available: Yes\nMy last change number:             9346\nPartner has seen my change number: 9346\nPartner is 0 changes behind.\n\nPartner: b\nHost available:   No\n";
        let p = parse_partner_status(t).unwrap();
        assert_eq!(p[0].behind, Some(0));
        assert_eq!(p[1].host_available, Some(false));
        assert!(parse_partner_status("garbage here\n").is_err());
    }

    #[test]
    fn lwreg_unescapes() {
        let v = parse_lwreg("+  \"dcAccountPassword\"   REG_SZ          \"a\\\"b\\\\c\"\n");
        assert_eq!(
            v,
            vec![("dcAccountPassword".to_owned(), "a\"b\\c".to_owned())]
        );
    }

    #[test]
    fn ldif_entries() {
        let t = "dn: cn=TenantCredential-1,cn=x\nuserCertificate:: AAEC\nuserCertificate;binary:: AwQ=\n\ndn: cn=y\n";
        let e = parse_ldif(t).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].1,
            vec![
                ("userCertificate".into(), vec![0, 1, 2]),
                ("userCertificate".into(), vec![3, 4])
            ]
        );
        assert!(parse_ldif("garbage without colon").is_err());
    }

    #[test]
    fn roles_by_store() {
        assert_eq!(
            vecs_role("MACHINE_SSL_CERT", "__MACHINE_CERT"),
            "vsphere.machine_ssl"
        );
        assert_eq!(vecs_role("wcp", "wcp"), "vsphere.solution_user.wcp");
        assert_eq!(
            vecs_role("BACKUP_STORE", "bkp___MACHINE_CERT"),
            "vsphere.backup"
        );
        assert_eq!(
            vecs_role("KMS_ENCRYPTION", "x"),
            "vsphere.vecs.KMS_ENCRYPTION"
        );
    }

    proptest! {
        #[test]
        fn entry_list_parser_never_panics(s in "\\PC*") {
            let _ = parse_entry_list(&s);
        }

        #[test]
        fn entry_list_parser_never_panics_on_near_misses(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("Number of entries in store :\t1".to_owned()),
                    Just("Alias :\t".to_owned()),
                    Just("Entry type :\tPrivate Key".to_owned()),
                    Just("Certificate :\t-----BEGIN CERTIFICATE-----".to_owned()),
                    Just("Certificate:".to_owned()),
                    Just("            Not After : Jan  5 12:00:00 2025 GMT".to_owned()),
                    Just(String::new()),
                    "[ -~\t]{0,40}",
                ],
                0..40,
            )
        ) {
            let text = lines.join("\n");
            let l = parse_entry_list(&text);
            for e in &l.entries {
                let _ = e.not_after();
            }
        }

        #[test]
        fn other_parsers_never_panic(s in "\\PC*") {
            let _ = parse_partner_status(&s);
            let _ = parse_lwreg(&s);
            let _ = parse_ldif(&s);
        }
    }
}
