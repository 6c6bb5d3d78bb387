//! vmdir for the simulated VCSA: a real OpenLDAP `slapd` on a loopback port, loaded with the
//! entries VMware's tools read (reference §5.1): the STS `TenantCredential-N` and
//! `TrustedCertChain-N` entries, the machine account that binds to read them, the SSO
//! `Administrator` (`cn=Administrator,cn=Users,<dn>`, what `dir-cli --login` binds as) and the
//! solution-user service principals `cn=<user>-<machine-id>,cn=ServicePrincipals,<dn>` with
//! their `userCertificate` (§8.4, §9.2), and the Lookup Service endpoint registrations with their
//! SSL trust (§8.8: `vmwLKUPEndpointRegistration`/`vmwLKUPEndpointSslTrust` as base64 text,
//! legacy `vmwLKUPServiceEndpoint`/`vmwLKUPSslTrustAnchor` as DER). Nodes joined into the domain ([`super::join`]) add
//! their machine accounts, principals and Lookup Service registrations; every machine account and the administrator may write,
//! except the STS tenant subtree (`cn=Tenants,cn=IdentityManager,cn=Services,<dn>`): machine
//! accounts read it, only the SSO administrator changes it, as vCert and fixsts.sh do it (both
//! bind as the administrator). [UNV] whether real vmdir refuses a machine account there.
//!
//! OpenLDAP's `core.schema` declares `userCertificate` with the Certificate syntax, which forces
//! the `;binary` transfer option; vmdir's schema uses an octet string and returns plain
//! `userCertificate:: <base64>` (what vCert and the KB one-liners grep for). So the simulator
//! brings its own small schema with vmdir's shapes instead of OpenLDAP's core schema. Each start
//! reloads the database from the simulator state with `slapadd`, so tests can change vmdir
//! between runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;

use super::{VcsaState, wait_for_port};
use crate::sim::SimHost;

/// Where Debian installs slapd.
pub const SLAPD: &str = "/usr/sbin/slapd";
/// Where Debian installs slapadd.
pub const SLAPADD: &str = "/usr/sbin/slapadd";

const SCHEMA: &str = "\
# vmdir-shaped schema for the simulated VCSA (names and syntaxes as vmdir uses them).
attributetype ( 2.5.4.11 NAME ( 'ou' 'organizationalUnitName' ) SUP name )
attributetype ( 0.9.2342.19200300.100.1.25 NAME ( 'dc' 'domainComponent' ) EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 2.5.4.36 NAME 'userCertificate' EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )
attributetype ( 1.3.6.1.4.1.6876.40.10.1.900 NAME 'vmwSTSPrivateKey' EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
objectclass ( 0.9.2342.19200300.100.4.13 NAME 'domain' SUP top STRUCTURAL MUST dc MAY description )
objectclass ( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL MUST ou MAY description )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.900 NAME 'vmwSTSTenantCredential' SUP top STRUCTURAL MUST cn MAY ( userCertificate $ vmwSTSPrivateKey ) )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.901 NAME 'vmwSTSTenantTrustedCertificateChain' SUP top STRUCTURAL MUST cn MAY userCertificate )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.902 NAME 'container' SUP top STRUCTURAL MUST cn MAY description )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.903 NAME 'computer' SUP top STRUCTURAL MUST cn MAY ( userPassword $ description $ userCertificate ) )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.904 NAME 'vmwServicePrincipal' SUP top STRUCTURAL MUST cn MAY ( userCertificate $ description ) )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.905 NAME 'user' SUP top STRUCTURAL MUST cn MAY ( userPassword $ description ) )
# Lookup Service registrations (reference 8.8; attribute names from fixcerts.py/vCert, OIDs [UNV])
attributetype ( 1.3.6.1.4.1.6876.40.10.1.910 NAME 'vmwLKUPURI' EQUALITY caseExactMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.6876.40.10.1.911 NAME 'vmwLKUPEndpointSslTrust' EQUALITY caseExactMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.6876.40.10.1.912 NAME 'vmwLKUPSslTrustAnchor' EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.910 NAME 'vmwLKUPEndpointRegistration' SUP top STRUCTURAL MUST cn MAY ( vmwLKUPURI $ vmwLKUPEndpointSslTrust $ description ) )
objectclass ( 1.3.6.1.4.1.6876.40.10.2.911 NAME 'vmwLKUPServiceEndpoint' SUP top STRUCTURAL MUST cn MAY ( vmwLKUPURI $ vmwLKUPSslTrustAnchor $ description ) )
";

fn dir(host: &SimHost) -> PathBuf {
    host.state("vmdir")
}

/// Fails with the install hint if slapd is not there.
pub fn require_slapd() -> Result<()> {
    anyhow::ensure!(
        Path::new(SLAPD).exists()
            && Path::new(SLAPADD).exists()
            && Path::new("/usr/bin/ldapsearch").exists(),
        "OpenLDAP is not installed ({SLAPD}, {SLAPADD}, /usr/bin/ldapsearch): the simulated vmdir needs it; \
         run `apt-get install -y slapd ldap-utils`"
    );
    Ok(())
}

fn der_b64(pem: &str) -> Result<String> {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("STS certificate in simulator state: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

fn key_b64(pem: &str) -> Result<String> {
    let blocks = certfleet_common::pem::decode_all(pem.as_bytes())?;
    let (_, der) = blocks.into_iter().next().context("STS key: no PEM block")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// The LDIF that loads vmdir from the simulator state.
pub fn ldif(s: &VcsaState) -> Result<String> {
    let base = s.domain_dn();
    let first_dc = s.domain.split('.').next().unwrap_or("vsphere");
    let tenant = format!(
        "cn={},cn=Tenants,cn=IdentityManager,cn=Services,{base}",
        s.domain
    );
    let mut out = String::new();
    writeln!(out, "dn: {base}\nobjectClass: domain\ndc: {first_dc}\n")?;
    writeln!(
        out,
        "dn: ou=Domain Controllers,{base}\nobjectClass: organizationalUnit\nou: Domain Controllers\n"
    )?;
    writeln!(
        out,
        "dn: {}\nobjectClass: computer\ncn: {}\nuserPassword: {}\n",
        s.machine_account_dn, s.pnid, s.machine_account_password
    )?;
    for m in &s.vmdir_members {
        writeln!(
            out,
            "dn: {}\nobjectClass: computer\ncn: {}\nuserPassword: {}\n",
            m.machine_account_dn, m.pnid, m.machine_account_password
        )?;
    }
    writeln!(
        out,
        "dn: cn=Users,{base}\nobjectClass: container\ncn: Users\n\n\
         dn: {}\nobjectClass: user\ncn: Administrator\nuserPassword: {}\n",
        admin_dn(s),
        s.sso_password
    )?;
    writeln!(
        out,
        "dn: cn=ServicePrincipals,{base}\nobjectClass: container\ncn: ServicePrincipals\n"
    )?;
    for (name, pem) in s.service_principals.iter().chain(
        s.vmdir_members
            .iter()
            .flat_map(|m| m.service_principals.iter()),
    ) {
        writeln!(
            out,
            "dn: cn={name},cn=ServicePrincipals,{base}\nobjectClass: vmwServicePrincipal\ncn: {name}\nuserCertificate:: {}\n",
            der_b64(pem)?
        )?;
    }
    for (dn, cn) in [
        (format!("cn=Services,{base}"), "Services"),
        (
            format!("cn=IdentityManager,cn=Services,{base}"),
            "IdentityManager",
        ),
        (
            format!("cn=Tenants,cn=IdentityManager,cn=Services,{base}"),
            "Tenants",
        ),
        (tenant.clone(), s.domain.as_str()),
        (
            format!("cn=TrustedCertificateChains,{tenant}"),
            "TrustedCertificateChains",
        ),
    ] {
        writeln!(out, "dn: {dn}\nobjectClass: container\ncn: {cn}\n")?;
    }
    // Lookup Service registrations (reference §8.8); containers as plain `container`s [UNV].
    let regs = format!(
        "cn=ServiceRegistrations,cn=LookupService,cn={},cn=Sites,cn=Configuration,{base}",
        s.site
    );
    // Linked mode: one Lookup Service for the domain, so the joined nodes' registrations are
    // here too. A registration whose DN is already taken (the legacy `sso:sts` endpoint every
    // node's state has) is loaded once.
    let mut seen = std::collections::BTreeSet::new();
    let all_regs: Vec<&super::LsRegistration> = s
        .ls_registrations
        .iter()
        .chain(
            s.vmdir_members
                .iter()
                .flat_map(|m| m.ls_registrations.iter()),
        )
        .filter(|r| seen.insert((r.service_id.clone(), r.endpoint.clone())))
        .collect();
    if !all_regs.is_empty() {
        for (dn, cn) in [
            (
                format!("cn=Configuration,{base}"),
                "Configuration".to_owned(),
            ),
            (format!("cn=Sites,cn=Configuration,{base}"), "Sites".into()),
            (
                format!("cn={},cn=Sites,cn=Configuration,{base}", s.site),
                s.site.clone(),
            ),
            (
                format!(
                    "cn=LookupService,cn={},cn=Sites,cn=Configuration,{base}",
                    s.site
                ),
                "LookupService".into(),
            ),
            (regs.clone(), "ServiceRegistrations".into()),
        ] {
            writeln!(out, "dn: {dn}\nobjectClass: container\ncn: {cn}\n")?;
        }
    }
    let mut services = std::collections::BTreeSet::new();
    for r in all_regs {
        if services.insert(r.service_id.clone()) {
            writeln!(
                out,
                "dn: cn={},{regs}\nobjectClass: container\ncn: {}\n",
                r.service_id, r.service_id
            )?;
        }
        let trust = der_b64(&r.trust_pem)?;
        if r.legacy {
            writeln!(
                out,
                "dn: cn={},cn={},{regs}\nobjectClass: vmwLKUPServiceEndpoint\ncn: {}\nvmwLKUPURI: {}\nvmwLKUPSslTrustAnchor:: {trust}\n",
                r.endpoint, r.service_id, r.endpoint, r.uri
            )?;
        } else {
            writeln!(
                out,
                "dn: cn={},cn={},{regs}\nobjectClass: vmwLKUPEndpointRegistration\ncn: {}\nvmwLKUPURI: {}\nvmwLKUPEndpointSslTrust: {trust}\n",
                r.endpoint, r.service_id, r.endpoint, r.uri
            )?;
        }
    }
    for (i, (chain, key)) in s.tenant_credentials.iter().enumerate() {
        let n = i + 1;
        writeln!(
            out,
            "dn: cn=TenantCredential-{n},{tenant}\nobjectClass: vmwSTSTenantCredential\ncn: TenantCredential-{n}"
        )?;
        for pem in chain {
            writeln!(out, "userCertificate:: {}", der_b64(pem)?)?;
        }
        writeln!(out, "vmwSTSPrivateKey:: {}\n", key_b64(key)?)?;
    }
    for (i, chain) in s.trusted_chains.iter().enumerate() {
        let n = i + 1;
        writeln!(
            out,
            "dn: cn=TrustedCertChain-{n},cn=TrustedCertificateChains,{tenant}\nobjectClass: vmwSTSTenantTrustedCertificateChain\ncn: TrustedCertChain-{n}"
        )?;
        for pem in chain {
            writeln!(out, "userCertificate:: {}", der_b64(pem)?)?;
        }
        writeln!(out)?;
    }
    Ok(out)
}

/// The SSO administrator's DN in vmdir.
pub fn admin_dn(s: &VcsaState) -> String {
    format!("cn=Administrator,cn=Users,{}", s.domain_dn())
}

fn config(dir: &Path, s: &VcsaState) -> String {
    let d = dir.display();
    let mut writers = format!("by dn.exact=\"{}\" write", admin_dn(s));
    for m in std::iter::once(s.machine_account_dn.as_str()).chain(
        s.vmdir_members
            .iter()
            .map(|m| m.machine_account_dn.as_str()),
    ) {
        writers.push_str(&format!(" by dn.exact=\"{m}\" write"));
    }
    format!(
        "include {d}/vmdir.schema\n\
         pidfile {d}/slapd.pid\n\
         argsfile {d}/slapd.args\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         database mdb\n\
         maxsize 67108864\n\
         suffix \"{base}\"\n\
         rootdn \"cn=slapd-root,{base}\"\n\
         directory {d}/db\n\
         access to attrs=userPassword by anonymous auth by * none\n\
         access to dn.subtree=\"cn=Tenants,cn=IdentityManager,cn=Services,{base}\" by dn.exact=\"{admin}\" write by users read\n\
         access to * {writers} by * none\n",
        base = s.domain_dn(),
        admin = admin_dn(s),
    )
}

/// Loads vmdir from the state and starts slapd in the foreground on the state's LDAP port.
pub fn start(host: &SimHost) -> Result<Child> {
    require_slapd()?;
    let s = VcsaState::load(host)?;
    let d = dir(host);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("db"))?;
    std::fs::write(d.join("vmdir.schema"), SCHEMA)?;
    std::fs::write(d.join("slapd.conf"), config(&d, &s))?;
    super::write_private(&d.join("vmdir.ldif"), ldif(&s)?.as_bytes())?;
    let out = Command::new(SLAPADD)
        .arg("-f")
        .arg(d.join("slapd.conf"))
        .arg("-l")
        .arg(d.join("vmdir.ldif"))
        .output()
        .context("running slapadd")?;
    anyhow::ensure!(
        out.status.success(),
        "slapadd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(d.join("slapd.log"))?;
    let child = Command::new(SLAPD)
        .arg("-f")
        .arg(d.join("slapd.conf"))
        .arg("-h")
        .arg(format!("ldap://127.0.0.1:{}/", s.ldap_port))
        // -d keeps slapd in the foreground so the guard owns it.
        .args(["-d", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting slapd")?;
    let mut child = child;
    if let Err(e) = wait_for_port(s.ldap_port, Duration::from_secs(15)) {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(d.join("slapd.log")).unwrap_or_default();
        anyhow::bail!("slapd did not start: {e:#}\n{log}");
    }
    Ok(child)
}
