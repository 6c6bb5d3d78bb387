//! A simulated VMware vCenter Server Appliance (6.7, 7.0, 8.0).
//!
//! The simulated host holds what a real VCSA holds where certfleet looks (see
//! `shared/reference/vsphere.md`): VECS stores per version (§3.1) behind a simulated `vecs-cli`
//! (§2), a real VMCA root at `/var/lib/vmware/vmca/root.cer` signing every leaf, the STS signing
//! certificate in vmdir served by a real OpenLDAP `slapd` (§5.1), `vmafd-cli` (§1, §8.3),
//! `vdcrepadmin` (§8.6), `vmon-cli` (§8.2), `lwregshell` (machine account, §1) and an HTTPS
//! listener serving the Machine SSL certificate (rhttpproxy on :443), a VCDB in a real
//! PostgreSQL ([`vcdb`]: `vpx_ext` extension thumbprints) and the Lookup Service registrations in
//! vmdir ([`vmdir`]) with `lstool.py list` showing them ([`lstool`]), and Auto Deploy's SQLite
//! database when Auto Deploy starts automatically ([`auto_deploy_db_path`]). Host state real appliances always have is there too: manual-start services
//! `Stopped:` (real captures under `integration-tests/fixtures/real/vsphere/`), no `BACKUP_STORE`
//! until certificates were replaced once, `systemctl` units for vmafdd/vmdird, the vmon default
//! start profile file when set. Everything the tools read
//! lives in one JSON state file under `ROOT/.sim/` (0600: it holds private keys), so tests can
//! change the host between scans (corrupt an entry, make a tool hang, renew without restart).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};

use super::{Lifetime, SimHost, dn, gen_key};

pub mod dircli;
pub mod https;
pub mod lstool;
pub mod mutate;
pub mod tools;
pub mod vcdb;
pub mod vmdir;

/// Host path of the simulated `vecs-cli`.
pub const VECS_CLI: &str = "/usr/lib/vmware-vmafd/bin/vecs-cli";
/// Host path of the simulated `vmafd-cli`.
pub const VMAFD_CLI: &str = "/usr/lib/vmware-vmafd/bin/vmafd-cli";
/// Host path of the simulated `vdcrepadmin`.
pub const VDCREPADMIN: &str = "/usr/lib/vmware-vmdir/bin/vdcrepadmin";
/// Host path of the simulated `vmon-cli`.
pub const VMON_CLI: &str = "/usr/lib/vmware-vmon/vmon-cli";
/// Host path of the simulated `lwregshell`.
pub const LWREGSHELL: &str = "/opt/likewise/bin/lwregshell";
/// Host path of the simulated `dir-cli`.
pub const DIR_CLI: &str = "/usr/lib/vmware-vmafd/bin/dir-cli";
/// Host path of the simulated `certool`.
pub const CERTOOL: &str = "/usr/lib/vmware-vmca/bin/certool";
/// Host path of the simulated `service-control`.
pub const SERVICE_CONTROL: &str = "/bin/service-control";
/// Host path where the real `ldapmodify` is linked (as fixsts.sh runs it).
pub const LDAPMODIFY: &str = "/opt/likewise/bin/ldapmodify";
/// Host path where the real `ldapsearch` is linked (as fixsts.sh finds it).
pub const LDAPSEARCH: &str = "/opt/likewise/bin/ldapsearch";
/// VMCA root certificate.
pub const VMCA_ROOT: &str = "/var/lib/vmware/vmca/root.cer";
/// VMCA root key.
pub const VMCA_KEY: &str = "/var/lib/vmware/vmca/privatekey.pem";
/// The SSO server's copy of the VMCA root (reference §1).
pub const SSO_ROOT_COPY: &str = "/etc/vmware-sso/keys/ssoserverRoot.crt";
/// vmon's default start profile (vCert reads it: `HACore` → `--vmon-profile HAActive`).
pub const DEFAULT_START_PROFILE: &str = "/storage/vmware-vmon/defaultStartProfile";
/// File holding the SSO administrator password for the agent (`vsphere.sso_password_file`).
pub const SSO_PASSWORD_FILE: &str = "/etc/certfleet/sso-password";

const STATE: &str = "vcsa.json";

/// VCSA release line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VcsaVersion {
    /// 6.7
    V67,
    /// 7.0
    V70,
    /// 8.0
    V80,
}

impl VcsaVersion {
    /// `6.7`, `7.0`, `8.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            VcsaVersion::V67 => "6.7",
            VcsaVersion::V70 => "7.0",
            VcsaVersion::V80 => "8.0",
        }
    }

    /// Parses `6.7`, `7.0`, `8.0`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "6.7" => VcsaVersion::V67,
            "7.0" => VcsaVersion::V70,
            "8.0" => VcsaVersion::V80,
            other => anyhow::bail!("unsupported VCSA version {other:?} (6.7, 7.0, 8.0)"),
        })
    }

    /// Solution users of a VC/embedded node of this version (vCert `setSolutionUsers`).
    pub fn solution_users(self) -> &'static [&'static str] {
        match self {
            VcsaVersion::V67 => &["machine", "vsphere-webclient", "vpxd", "vpxd-extension"],
            _ => &[
                "machine",
                "vsphere-webclient",
                "vpxd",
                "vpxd-extension",
                "hvc",
                "wcp",
            ],
        }
    }

    fn build(self) -> &'static str {
        match self {
            VcsaVersion::V67 => "18831049",
            VcsaVersion::V70 => "21477706",
            VcsaVersion::V80 => "22385739",
        }
    }
}

/// A replication partner as `vdcrepadmin -f showpartnerstatus` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Partner host name.
    pub host: String,
    /// `Host available:`.
    pub host_available: bool,
    /// `Status available:`.
    pub status_available: bool,
    /// `My last change number:`.
    pub my_usn: i64,
    /// `Partner has seen my change number:`.
    pub partner_seen_usn: i64,
}

impl Partner {
    /// A partner that has seen everything.
    pub fn healthy(host: &str) -> Self {
        Partner {
            host: host.into(),
            host_available: true,
            status_available: true,
            my_usn: 9346,
            partner_seen_usn: 9346,
        }
    }

    /// A reachable partner `behind` changes behind.
    pub fn lagging(host: &str, behind: i64) -> Self {
        Partner {
            partner_seen_usn: 9346 - behind,
            ..Partner::healthy(host)
        }
    }

    /// A partner that cannot be reached.
    pub fn down(host: &str) -> Self {
        Partner {
            host_available: false,
            status_available: false,
            ..Partner::healthy(host)
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct VcsaSpec {
    /// Release line.
    pub version: VcsaVersion,
    /// Primary network identifier (FQDN).
    pub pnid: String,
    /// SSO domain.
    pub domain: String,
    /// Lifetimes by certificate: `vmca_root`, `machine_ssl`, `sts`, each solution user by store
    /// name (`machine`, `vpxd`, `wcp`, …), `data-encipherment`, `sms`, `backup`. Missing ones get
    /// realistic defaults (§4.1).
    pub lifetimes: BTreeMap<String, Lifetime>,
    /// Replication partners.
    pub partners: Vec<Partner>,
    /// Certificates were replaced before (certificate-manager ran once): VECS has a
    /// `BACKUP_STORE` with the replaced Machine SSL certificate (`bkp___MACHINE_CERT`, lifetime
    /// `backup`). A fresh appliance has no `BACKUP_STORE` (Broadcom KB 376720;
    /// fixtures/real/vsphere/vecs-cli-store-list_6.7_metasploit.txt).
    pub backup_store: bool,
    /// VECS has `STS_INTERNAL_SSL_CERT` holding a copy of the Machine SSL certificate, as 6.x
    /// appliances upgraded from 6.0/6.5 do (vCert replaces `__MACHINE_CERT` there too).
    pub sts_internal_ssl: bool,
    /// Auto Deploy (vmon `rbd`, service-control `vmware-rbd-watchdog`) starts automatically and
    /// its database ([`auto_deploy_db_path`]) holds this vCenter's Machine SSL thumbprint.
    pub auto_deploy: bool,
    /// One more Lookup Service registration at the PNID (the vLCM client plugin of the real
    /// capture fixtures/real/vsphere/lstool-list_vum-plugin_vc70_cunnie.txt) trusts an older
    /// Machine SSL certificate (the replaced one), as left by an earlier replacement that
    /// missed it: what vCert reports as mismatched SSL trust anchors.
    pub stale_ls_registration: bool,
}

impl VcsaSpec {
    /// A healthy VCSA of `version` named `pnid`, with one in-sync partner.
    pub fn new(version: VcsaVersion, pnid: &str) -> Self {
        VcsaSpec {
            version,
            pnid: pnid.into(),
            domain: "vsphere.local".into(),
            lifetimes: BTreeMap::new(),
            partners: vec![Partner::healthy(&format!(
                "psc2.{}",
                pnid.split_once('.').map(|x| x.1).unwrap_or("lab.local")
            ))],
            backup_store: false,
            sts_internal_ssl: false,
            auto_deploy: false,
            stale_ls_registration: false,
        }
    }

    /// Auto Deploy set to start automatically, with its database (vCert `updateAutoDeployDB`).
    pub fn with_auto_deploy(mut self) -> Self {
        self.auto_deploy = true;
        self
    }

    /// A Lookup Service registration at the PNID trusting an older certificate.
    pub fn with_stale_ls_registration(mut self) -> Self {
        self.stale_ls_registration = true;
        self
    }

    /// A VCSA whose certificates were replaced before: `BACKUP_STORE` holds the old Machine SSL
    /// certificate (expired unless lifetime `backup` says otherwise), as in seed 000.
    pub fn replaced_before(mut self) -> Self {
        self.backup_store = true;
        self
    }

    /// Adds `STS_INTERNAL_SSL_CERT/__MACHINE_CERT` (6.x appliances).
    pub fn with_sts_internal_ssl(mut self) -> Self {
        self.sts_internal_ssl = true;
        self
    }

    /// Sets the lifetime of one certificate (see [`VcsaSpec::lifetimes`] for the names).
    pub fn with(mut self, cert: &str, life: Lifetime) -> Self {
        self.lifetimes.insert(cert.into(), life);
        self
    }

    /// Replaces the replication partners.
    pub fn partners(mut self, partners: Vec<Partner>) -> Self {
        self.partners = partners;
        self
    }

    fn life(&self, cert: &str) -> Lifetime {
        if let Some(l) = self.lifetimes.get(cert) {
            return *l;
        }
        match cert {
            "vmca_root" => Lifetime::days(400, 3250),
            "sts" => Lifetime::days(100, 3550),
            "sms" => Lifetime::days(365, 3285),
            "backup" => Lifetime::days(800, -70),
            _ => Lifetime::days(100, 630),
        }
    }
}

/// VECS entry type (`VecsMapEntryType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryType {
    /// `Private Key`
    PrivateKey,
    /// `Secret Key`
    SecretKey,
    /// `Trusted Cert`
    TrustedCert,
    /// `Certification Revocation List`
    Crl,
}

impl EntryType {
    /// The string `vecs-cli` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::PrivateKey => "Private Key",
            EntryType::SecretKey => "Secret Key",
            EntryType::TrustedCert => "Trusted Cert",
            EntryType::Crl => "Certification Revocation List",
        }
    }
}

/// One VECS entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VecsEntry {
    /// Alias.
    pub alias: String,
    /// Type.
    pub entry_type: EntryType,
    /// Certificate (or CRL) PEM without trailing newline, as VECS stores it.
    pub cert: Option<String>,
    /// Private key PEM (PKCS#8).
    pub key: Option<String>,
}

/// One VECS store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VecsStore {
    /// Store name.
    pub name: String,
    /// Entries in creation order.
    pub entries: Vec<VecsEntry>,
}

/// A fault injected into a simulated tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Never answers (sleeps until killed).
    Hang,
    /// Prints UTF-8 text in no format the real tool uses, exit 0.
    Garbage,
    /// Prints bytes that are not UTF-8, exit 0.
    Binary,
}

/// A `vmon-cli` managed service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// `STARTED`, `STOPPED`, `STARTING`, …
    pub run_state: String,
    /// `HEALTHY`, `UNHEALTHY`, …
    pub health: String,
    /// `AUTOMATIC` or `MANUAL` (vmon `Starttype`). `service-control --start --all` starts only
    /// the automatic ones: a healthy appliance always lists the manual ones under `Stopped:`
    /// (fixtures/real/vsphere/service-control-status_6.7_vcenter-dc1.txt).
    #[serde(default = "automatic")]
    pub start_type: String,
}

fn automatic() -> String {
    "AUTOMATIC".into()
}

/// The whole simulated appliance, persisted in `ROOT/.sim/vcsa.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcsaState {
    /// Release line.
    pub version: VcsaVersion,
    /// Build number.
    pub build: String,
    /// PNID.
    pub pnid: String,
    /// Machine ID (GUID).
    pub machine_id: String,
    /// SSO domain.
    pub domain: String,
    /// SSO site.
    pub site: String,
    /// VECS, in store creation order.
    pub stores: Vec<VecsStore>,
    /// vmdir machine account DN (`dcAccountDN`).
    pub machine_account_dn: String,
    /// vmdir machine account password (`dcAccountPassword`).
    pub machine_account_password: String,
    /// SSO `administrator` password (vdcrepadmin `-w`).
    pub sso_password: String,
    /// STS tenant credentials: per `TenantCredential-N`, the certificate chain (leaf first) PEMs
    /// and the private key PEM.
    pub tenant_credentials: Vec<(Vec<String>, String)>,
    /// Trusted chains: per `TrustedCertChain-N`, certificate PEMs (leaf first).
    pub trusted_chains: Vec<Vec<String>>,
    /// Replication partners.
    pub partners: Vec<Partner>,
    /// vmon services.
    pub services: Vec<Service>,
    /// Loopback port of slapd (vmdir).
    pub ldap_port: u16,
    /// Loopback port of the HTTPS listener (rhttpproxy).
    pub https_port: u16,
    /// When set, the HTTPS listener serves this (cert PEM, key PEM) instead of VECS
    /// `__MACHINE_CERT`: "renewed in VECS, but rhttpproxy was not restarted".
    pub https_pinned: Option<(String, String)>,
    /// Faults by tool name.
    pub faults: BTreeMap<String, Fault>,
    /// Simulated listing latency per entry, milliseconds (CRL bloat, §11.4).
    pub list_latency_ms: u64,
    /// Solution-user service principals of this node as first loaded into vmdir
    /// (`cn=<user>-<machine-id>,cn=ServicePrincipals,<dn>` → certificate PEM). vmdir (slapd) is
    /// the truth once it runs: `dir-cli service update` changes slapd, not this list.
    #[serde(default)]
    pub service_principals: Vec<(String, String)>,
    /// Other nodes of the SSO domain whose machine accounts and service principals this node's
    /// vmdir holds (joined with [`join`]).
    #[serde(default)]
    pub vmdir_members: Vec<VmdirMember>,
    /// This node uses another node's vmdir (`ldap_port` is that node's): no slapd of its own.
    #[serde(default)]
    pub vmdir_remote: bool,
    /// VECS stores in which the next `vecs-cli entry create` is refused once
    /// (`ERROR_ACCESS_DENIED`), to inject a failure half way through a renewal.
    #[serde(default)]
    pub deny_create: Vec<String>,
    /// Service principals (`<user>-<machine-id>`) whose next `dir-cli service update` vmdir
    /// refuses once (LDAP insufficient access), to fail a renewal before vmdir changed.
    #[serde(default)]
    pub deny_service_update: Vec<String>,
    /// How many more `service-control --start --all` fail transiently with RC=5 while some
    /// services are still starting (fixtures/real/vsphere/
    /// service-control-start-all-RC5_and_status-all_startpending.txt).
    #[serde(default)]
    pub start_all_rc5: u32,
    /// `service-control --status` calls left before `StartPending` services are running.
    #[serde(default)]
    pub pending_polls: u32,
    /// VCDB (PostgreSQL) directory: data and unix socket ([`vcdb`]).
    #[serde(default)]
    pub vcdb_dir: String,
    /// VCDB port (names the unix socket).
    #[serde(default)]
    pub vcdb_port: u16,
    /// VCDB `vpx_ext` rows (ext_id, thumbprint) loaded at each start.
    #[serde(default)]
    pub vpx_ext: Vec<(String, String)>,
    /// Lookup Service endpoint registrations in vmdir ([`vmdir`]).
    #[serde(default)]
    pub ls_registrations: Vec<LsRegistration>,
    /// Serial (`0x…`) of every certificate VMCA issued through `certool --gencert`, in order.
    /// The real VMCA keeps a record of what it issued (`certool --enumcert --filter=all`); the
    /// sim keeps only the serials, so tests can tell how many times a step asked VMCA.
    #[serde(default)]
    pub vmca_issued: Vec<String>,
    /// CA certificates (PEM) published in vmdir (`cn=Certificate-Authorities,cn=Configuration,
    /// <dn>`), which vmafd copies into VECS `TRUSTED_ROOTS`: the VMCA root at build, and every
    /// root `certool --rootca` provisions (`VMCASrvNotifyDirSync`). [UNV] vmafd's own periodic
    /// sync is not modelled: the simulator copies them into `TRUSTED_ROOTS` on `vecs-cli
    /// force-refresh` only. Kept in the state file, not in slapd.
    #[serde(default)]
    pub vmdir_cas: Vec<String>,
}

/// A Lookup Service endpoint registration as vmdir stores it (reference §8.8, from fixcerts.py
/// and vCert): `cn=<endpoint>,cn=<service-id>,cn=ServiceRegistrations,cn=LookupService,
/// cn=<site>,cn=Sites,cn=Configuration,<dn>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LsRegistration {
    /// Service id (GUID, or `sso:sts`-style for legacy SSO endpoints).
    pub service_id: String,
    /// Endpoint cn (`Endpoint1`).
    pub endpoint: String,
    /// `vmwLKUPURI`.
    pub uri: String,
    /// Legacy `vmwLKUPServiceEndpoint` with binary `vmwLKUPSslTrustAnchor`; otherwise
    /// `vmwLKUPEndpointRegistration` with base64 `vmwLKUPEndpointSslTrust`.
    pub legacy: bool,
    /// The trusted certificate (PEM).
    pub trust_pem: String,
}

/// SHA-1 thumbprint as vCenter stores it in VCDB (`AA:BB:…`, uppercase).
pub fn thumbprint(pem: &str) -> Result<String> {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())?;
    Ok(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Another node's objects in a shared vmdir.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmdirMember {
    /// PNID.
    pub pnid: String,
    /// Machine account DN.
    pub machine_account_dn: String,
    /// Machine account password.
    pub machine_account_password: String,
    /// Its service principals (name, certificate PEM).
    pub service_principals: Vec<(String, String)>,
    /// Its Lookup Service registrations (linked mode: one Lookup Service for the domain).
    #[serde(default)]
    pub ls_registrations: Vec<LsRegistration>,
}

impl VcsaState {
    /// Loads the state of the VCSA rooted at `host`.
    pub fn load(host: &SimHost) -> Result<Self> {
        let p = host.state(STATE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Saves it atomically, mode 0600 (it holds private keys).
    pub fn save(&self, host: &SimHost) -> Result<()> {
        write_private(
            &host.state(STATE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// Store by name.
    pub fn store(&self, name: &str) -> Option<&VecsStore> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// Mutable store by name.
    pub fn store_mut(&mut self, name: &str) -> Option<&mut VecsStore> {
        self.stores.iter_mut().find(|s| s.name == name)
    }

    /// Entry by store and alias.
    pub fn entry(&self, store: &str, alias: &str) -> Option<&VecsEntry> {
        self.store(store)?.entries.iter().find(|e| e.alias == alias)
    }

    /// `dc=vsphere,dc=local` for `vsphere.local`.
    pub fn domain_dn(&self) -> String {
        domain_dn(&self.domain)
    }
}

/// `dc=vsphere,dc=local` for `vsphere.local`.
pub fn domain_dn(domain: &str) -> String {
    domain
        .split('.')
        .map(|p| format!("dc={p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `bytes` to `path` through a temp file, mode 0600.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// A built simulated VCSA.
#[derive(Clone, Debug)]
pub struct Vcsa {
    /// The host.
    pub host: SimHost,
}

/// The VMCA: root certificate and its signing handle.
struct Vmca {
    pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).expect("valid time")
}

fn apply(life: Lifetime, p: &mut CertificateParams) {
    let now = SystemTime::now();
    p.not_before = offset(now - life.started_ago);
    p.not_after = if life.expires_in_secs >= 0 {
        offset(now + Duration::from_secs(life.expires_in_secs as u64))
    } else {
        offset(now - Duration::from_secs(life.expires_in_secs.unsigned_abs()))
    };
}

fn random_serial() -> SerialNumber {
    let mut b = random_bytes::<16>();
    b[0] &= 0x7f;
    b[0] |= 0x10;
    SerialNumber::from_slice(&b)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system randomness");
    b
}

/// `CA Issuers - URI:https://<pnid>/afd/vecs/ca` (DER of AuthorityInfoAccessSyntax).
fn aia(pnid: &str) -> CustomExtension {
    let uri = format!("https://{pnid}/afd/vecs/ca");
    let oid_ca_issuers = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let mut gn = vec![0x86];
    gn.extend(der_len(uri.len()));
    gn.extend(uri.as_bytes());
    let mut ad = oid_ca_issuers.to_vec();
    ad.extend(gn);
    let mut access = vec![0x30];
    access.extend(der_len(ad.len()));
    access.extend(ad);
    let mut seq = vec![0x30];
    seq.extend(der_len(access.len()));
    seq.extend(access);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], seq)
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn trim_pem(pem: &str) -> String {
    pem.trim_end().to_owned()
}

impl Vmca {
    fn new(pnid: &str, domain: &str, life: Lifetime) -> Result<Self> {
        let key = gen_key(true)?;
        let mut p = CertificateParams::default();
        // The real DN is `CN=CA, DC=vsphere, DC=local, C=US, ...` (§12). rcgen keys a DN by
        // attribute type, so it cannot repeat DC: the simulator writes the domain as one DC.
        p.distinguished_name = dn(&[
            ("CN", "CA"),
            ("DC", domain),
            ("C", "US"),
            ("ST", "California"),
            ("O", pnid),
            ("OU", "VMware Engineering"),
        ]);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(random_serial());
        apply(life, &mut p);
        let cert = p.self_signed(&key)?;
        let pem = trim_pem(&cert.pem());
        let key_pem = key.serialize_pem();
        Ok(Vmca {
            pem,
            key_pem,
            issuer: Issuer::new(p, key),
        })
    }

    fn leaf(
        &self,
        subject: &[(&str, &str)],
        sans: &[String],
        usages: Vec<KeyUsagePurpose>,
        pnid: &str,
        life: Lifetime,
    ) -> Result<(String, String)> {
        let key = gen_key(true)?;
        let mut p = CertificateParams::new(sans.to_vec())?;
        p.distinguished_name = dn(subject);
        p.key_usages = usages;
        p.use_authority_key_identifier_extension = true;
        p.custom_extensions.push(aia(pnid));
        p.serial_number = Some(random_serial());
        apply(life, &mut p);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((trim_pem(&cert.pem()), key.serialize_pem()))
    }

    fn crl(&self) -> Result<String> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: offset(now - Duration::from_secs(86_400)),
            next_update: offset(now + Duration::from_secs(30 * 86_400)),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(trim_pem(&params.signed_by(&self.issuer)?.pem()?))
    }
}

/// SHA-1 of the DER in a PEM, lowercase hex without colons (VECS default alias, §2.4).
pub fn sha1_alias(pem: &str) -> Result<String> {
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).or_else(|_| {
        certfleet_common::pem::decode_all(pem.as_bytes())
            .map_err(anyhow::Error::from)
            .and_then(|b| {
                b.into_iter()
                    .next()
                    .map(|x| x.1)
                    .ok_or_else(|| anyhow::anyhow!("no PEM block"))
            })
            .map_err(|e| certfleet_common::pem::PemError::Malformed(e.to_string()))
    })?;
    Ok(hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &der,
    )))
}

fn machine_id() -> String {
    let b = random_bytes::<16>();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn random_password() -> String {
    // Printable, with characters that need quoting in the registry output.
    format!("Ma{}\"x\\y!", hex::encode(random_bytes::<10>()))
}

/// A free loopback port (bind to :0, read it, release it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Manual-start services of a vCenter (embedded): `Stopped:` on a healthy appliance, as in
/// fixtures/real/vsphere/service-control-status_6.7_vcenter-dc1.txt and
/// service-control-start-all-RC5_and_status-all_startpending.txt (6.7). [UNV] 7.0/8.0 keep the
/// same set here; the real set differs by version and deployment (no capture for 7.0/8.0).
pub const MANUAL_SERVICES: [&str; 7] = [
    "vmcam",
    "vmware-imagebuilder",
    "vmware-mbcs",
    "vmware-netdumper",
    "rbd",
    "vmware-vcha",
    "vsan-dps",
];

/// Auto Deploy's database, a SQLite file: `/var/lib/rbd/db` on 6.7/7.0 (vCert 4.13
/// `updateAutoDeployDB`/`checkAutoDeployDB`; Broadcom's vCert.py `update_auto_deploy_db` for
/// 7.0), `/etc/vmware-rbd/db/db` from 8.0 (vCert.py). Table `vc_servers` with `addr` (the
/// vCenter's host name, matched `collate nocase`) and `thumbprint` (Machine SSL SHA-1 as
/// `openssl x509 -fingerprint -sha1` prints it: `AA:BB:…`). [UNV] the table's other columns
/// (none here) and whether the file exists while Auto Deploy is manual (not created here).
pub fn auto_deploy_db_path(version: VcsaVersion) -> &'static str {
    match version {
        VcsaVersion::V80 => "/etc/vmware-rbd/db/db",
        _ => "/var/lib/rbd/db",
    }
}

/// Where Debian installs the real `sqlite3` (linked at the same path on the appliance, where
/// vCert runs it).
pub const SQLITE3: &str = "/usr/bin/sqlite3";

/// `lstool.py` by version (reference §1/§8.7): 6.7 under vmidentity (Lookup Service on
/// `http://localhost:7080/lookupservice/sdk`), 7.0/8.0 under vmware-lookupsvc (`:7090`).
pub fn lstool_path(version: VcsaVersion) -> &'static str {
    match version {
        VcsaVersion::V67 => "/usr/lib/vmidentity/tools/scripts/lstool.py",
        _ => "/usr/lib/vmware-lookupsvc/tools/lstool.py",
    }
}

fn services(version: VcsaVersion, auto_deploy: bool) -> Vec<Service> {
    let mut names = vec![
        "applmgmt",
        "certificateauthority",
        "cis-license",
        "content-library",
        "eam",
        "lookupsvc",
        "perfcharts",
        "rhttpproxy",
        "sps",
        "sts",
        "vapi-endpoint",
        "vmware-vpostgres",
        "vpxd",
        "vpxd-svcs",
        "vsan-health",
        "vsphere-ui",
    ];
    if version != VcsaVersion::V67 {
        names.extend(["envoy", "hvc", "trustmanagement", "wcp"]);
    }
    names.extend(MANUAL_SERVICES);
    names.sort_unstable();
    names
        .into_iter()
        .map(|n| {
            let manual = MANUAL_SERVICES.contains(&n) && !(auto_deploy && n == "rbd");
            Service {
                name: n.into(),
                run_state: if manual { "STOPPED" } else { "STARTED" }.into(),
                health: "HEALTHY".into(),
                start_type: if manual { "MANUAL" } else { "AUTOMATIC" }.into(),
            }
        })
        .collect()
}

/// Builds a simulated VCSA on `host` according to `spec`.
pub fn build(host: &SimHost, spec: &VcsaSpec) -> Result<Vcsa> {
    let v = spec.version;
    let pnid = spec.pnid.as_str();
    let mid = machine_id();
    let vmca = Vmca::new(pnid, &spec.domain, spec.life("vmca_root"))?;
    host.write(VMCA_ROOT, format!("{}\n", vmca.pem), 0o644)?;
    write_private(&host.path(VMCA_KEY), vmca.key_pem.as_bytes())?;
    // The SSO server's copy of the root, which vCert refreshes after a VMCA root change
    // (reference §1, [SRC] vCert).
    host.write(SSO_ROOT_COPY, format!("{}\n", vmca.pem), 0o644)?;

    let ms_subject = [
        ("CN", pnid),
        ("C", "US"),
        ("ST", "California"),
        ("L", "Palo Alto"),
        ("O", "VMware"),
        ("OU", "VMware Engineering"),
    ];
    let ms_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    let (ms_cert, ms_key) = vmca.leaf(
        &ms_subject,
        &[pnid.to_owned()],
        ms_usages.clone(),
        pnid,
        spec.life("machine_ssl"),
    )?;
    let (bkp_cert, bkp_key) = vmca.leaf(
        &ms_subject,
        &[pnid.to_owned()],
        ms_usages,
        pnid,
        spec.life("backup"),
    )?;

    let private = |alias: &str, (cert, key): (String, String)| VecsEntry {
        alias: alias.into(),
        entry_type: EntryType::PrivateKey,
        cert: Some(cert),
        key: Some(key),
    };
    let store = |name: &str, entries: Vec<VecsEntry>| VecsStore {
        name: name.into(),
        entries,
    };

    let ou = format!("mID-{mid}");
    let soluser = |u: &str| -> Result<VecsStore> {
        let subject = [
            ("CN", u),
            ("C", "US"),
            ("ST", "California"),
            ("L", "Palo Alto"),
            ("O", "VMware"),
            ("OU", ou.as_str()),
        ];
        // vCert: wcp gets --dataencipherment and no --FQDN; the others get --FQDN=$PNID.
        let (sans, usages) = if u == "wcp" {
            (
                vec![],
                vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                    KeyUsagePurpose::DataEncipherment,
                ],
            )
        } else {
            (
                vec![pnid.to_owned()],
                vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ],
            )
        };
        Ok(store(
            u,
            vec![private(
                u,
                vmca.leaf(&subject, &sans, usages, pnid, spec.life(u))?,
            )],
        ))
    };

    let trusted = VecsEntry {
        alias: sha1_alias(&vmca.pem)?,
        entry_type: EntryType::TrustedCert,
        cert: Some(vmca.pem.clone()),
        key: None,
    };
    let crl_pem = vmca.crl()?;
    let crl = VecsEntry {
        alias: sha1_alias(&crl_pem)?,
        entry_type: EntryType::Crl,
        cert: Some(crl_pem),
        key: None,
    };

    let sms_name = format!("SMS-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let sms = {
        let key = gen_key(true)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&[("O", "VMware"), ("CN", &sms_name)]);
        p.serial_number = Some(random_serial());
        apply(spec.life("sms"), &mut p);
        let cert = p.self_signed(&key)?;
        (trim_pem(&cert.pem()), key.serialize_pem())
    };
    let de_subject = [
        ("CN", "data-encipherment"),
        ("C", "US"),
        ("ST", "California"),
        ("L", "Palo Alto"),
        ("O", "VMware"),
        ("OU", ou.as_str()),
    ];
    let de = vmca.leaf(
        &de_subject,
        &[pnid.to_owned()],
        vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DataEncipherment,
        ],
        pnid,
        spec.life("data-encipherment"),
    )?;
    let secret = VecsEntry {
        alias: "location_password_default".into(),
        entry_type: EntryType::SecretKey,
        cert: None,
        key: Some("U2VjcmV0S2V5".into()),
    };

    // Store creation order as §3.1 lists it for the version.
    let mut stores = vec![
        store(
            "MACHINE_SSL_CERT",
            vec![private("__MACHINE_CERT", (ms_cert, ms_key))],
        ),
        store("TRUSTED_ROOTS", vec![trusted]),
        store("TRUSTED_ROOT_CRLS", vec![crl]),
        soluser("machine")?,
        soluser("vsphere-webclient")?,
        soluser("vpxd")?,
        soluser("vpxd-extension")?,
    ];
    let mut sms_entries = vec![private("sms_self_signed", sms)];
    if v == VcsaVersion::V80 {
        let subject = [
            ("CN", "sps-extension"),
            ("C", "US"),
            ("ST", "California"),
            ("L", "Palo Alto"),
            ("O", "VMware"),
            ("OU", ou.as_str()),
        ];
        sms_entries.push(private(
            "sps-extension",
            vmca.leaf(
                &subject,
                &[pnid.to_owned()],
                vec![KeyUsagePurpose::DigitalSignature],
                pnid,
                spec.life("sms"),
            )?,
        ));
    }
    match v {
        VcsaVersion::V67 => {
            stores.push(store("APPLMGMT_PASSWORD", vec![secret]));
            stores.push(store(
                "data-encipherment",
                vec![private("data-encipherment", de)],
            ));
            stores.push(store("SMS", sms_entries));
        }
        _ => {
            stores.push(soluser("hvc")?);
            stores.push(store(
                "data-encipherment",
                vec![private("data-encipherment", de)],
            ));
            stores.push(store("APPLMGMT_PASSWORD", vec![secret]));
            stores.push(store("SMS", sms_entries));
            stores.push(soluser("wcp")?);
        }
    }
    if spec.backup_store || spec.lifetimes.contains_key("backup") {
        stores.push(store(
            "BACKUP_STORE",
            vec![private("bkp___MACHINE_CERT", (bkp_cert.clone(), bkp_key))],
        ));
    }
    if spec.sts_internal_ssl {
        let ms = stores[0].entries[0].clone();
        stores.push(store("STS_INTERNAL_SSL_CERT", vec![ms]));
    }

    // STS signing certificate: VMCA-signed `CN=ssoserverSign`, chain leaf first (§5.1).
    let (sts_cert, sts_key) = vmca.leaf(
        &[("CN", "ssoserverSign")],
        &[],
        vec![KeyUsagePurpose::DigitalSignature],
        pnid,
        spec.life("sts"),
    )?;
    let chain = vec![sts_cert, vmca.pem.clone()];

    let ms_pem = stores[0].entries[0].cert.clone().unwrap_or_default();
    let ext_pem = stores
        .iter()
        .find(|st| st.name == "vpxd-extension")
        .and_then(|st| st.entries.first())
        .and_then(|e| e.cert.clone())
        .unwrap_or_default();
    let (ms_tp, ext_tp) = (thumbprint(&ms_pem)?, thumbprint(&ext_pem)?);
    let vpx_ext = vcdb::extensions(v)
        .into_iter()
        .map(|(id, ms)| {
            (
                id.to_owned(),
                if ms { ms_tp.clone() } else { ext_tp.clone() },
            )
        })
        .collect();
    // A few of the registrations a vCenter has (service ids are GUIDs on a real appliance); one
    // by IP address, which vCert's PNID filter misses but a match on the old certificate finds.
    let reg = |id: &str, uri: String, legacy: bool| LsRegistration {
        service_id: id.into(),
        endpoint: "Endpoint1".into(),
        uri,
        legacy,
        trust_pem: ms_pem.clone(),
    };
    let mut ls_registrations = vec![
        reg(&machine_id(), format!("https://{pnid}:443/sdk"), false),
        reg(
            &machine_id(),
            format!("https://{pnid}/lookupservice/sdk"),
            false,
        ),
        reg(
            &machine_id(),
            "https://192.0.2.10:443/vsphere-ui".into(),
            false,
        ),
        reg(
            "sso:sts",
            format!("https://{pnid}/sts/STSService/{}", spec.domain),
            true,
        ),
    ];
    if spec.stale_ls_registration {
        ls_registrations.push(LsRegistration {
            trust_pem: bkp_cert.clone(),
            ..reg(
                &machine_id(),
                format!("https://{pnid}:9087/vci/downloads/vum-htmlclient.zip"),
                false,
            )
        });
    }
    let service_principals = stores
        .iter()
        .filter(|st| v.solution_users().contains(&st.name.as_str()))
        .filter_map(|st| {
            let e = st.entries.iter().find(|e| e.alias == st.name)?;
            Some((format!("{}-{mid}", st.name), e.cert.clone()?))
        })
        .collect();
    let state = VcsaState {
        version: v,
        build: v.build().into(),
        pnid: pnid.into(),
        machine_id: mid,
        domain: spec.domain.clone(),
        site: "default-site".into(),
        stores,
        machine_account_dn: format!(
            "cn={pnid},ou=Domain Controllers,{}",
            domain_dn(&spec.domain)
        ),
        machine_account_password: random_password(),
        sso_password: format!("Adm{}!", hex::encode(random_bytes::<6>())),
        tenant_credentials: vec![(chain.clone(), sts_key)],
        trusted_chains: vec![chain],
        partners: spec.partners.clone(),
        services: services(v, spec.auto_deploy),
        ldap_port: free_port()?,
        https_port: free_port()?,
        https_pinned: None,
        faults: BTreeMap::new(),
        list_latency_ms: 0,
        service_principals,
        vmdir_members: Vec::new(),
        vmdir_remote: false,
        deny_create: Vec::new(),
        deny_service_update: Vec::new(),
        start_all_rc5: 0,
        pending_polls: 0,
        vcdb_dir: std::env::temp_dir()
            .join(format!(
                "certfleet-vcdb-{}",
                hex::encode(random_bytes::<6>())
            ))
            .display()
            .to_string(),
        vcdb_port: free_port()?,
        vpx_ext,
        ls_registrations,
        vmca_issued: Vec::new(),
        vmdir_cas: vec![vmca.pem.clone()],
    };
    state.save(host)?;

    for (path, tool) in [
        (VECS_CLI, "vecs-cli"),
        (VMAFD_CLI, "vmafd-cli"),
        (VDCREPADMIN, "vdcrepadmin"),
        (VMON_CLI, "vmon-cli"),
        (LWREGSHELL, "lwregshell"),
        (CERTOOL, "certool"),
        (SERVICE_CONTROL, "service-control"),
        (DIR_CLI, "dir-cli"),
        (lstool_path(v), "lstool.py"),
    ] {
        host.install_tool(path, tool)?;
    }
    host.link_real_tool(SQLITE3)?;
    if spec.auto_deploy {
        create_auto_deploy_db(host, v, pnid, &thumbprint(&ms_pem)?)?;
    }
    // vCert checks vmafdd and vmdird with systemd, not vmon.
    for unit in ["vmafdd", "vmdird"] {
        super::systemd::define_unit(host, unit, &[])?;
    }
    host.link_real_tool("/usr/bin/ldapsearch")?;
    host.link_real_tool("/usr/bin/ldapmodify")?;
    host.link_real_tool("/usr/bin/openssl")?;
    // The real psql (Debian's), where the appliance has vpostgres' (VCDB, KB 57379).
    let psql = host.path(vcdb::PSQL);
    if let Some(parent) = psql.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&psql);
    std::os::unix::fs::symlink("/usr/bin/psql", &psql)?;
    // vCert and fixcerts run /usr/bin/ldap*, fixsts.sh /opt/likewise/bin/ldap* (reference §1).
    // [UNV] which appliances ship which: this simulator gives 6.7/7.0 both and 8.0 only
    // /usr/bin, so a client must try both.
    let likewise: &[(&str, &str)] = if v == VcsaVersion::V80 {
        &[]
    } else {
        &[
            ("/usr/bin/ldapsearch", LDAPSEARCH),
            ("/usr/bin/ldapmodify", LDAPMODIFY),
        ]
    };
    for &(real, at) in likewise {
        let target = host.path(at);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(real, &target)?;
    }
    host.write("/etc/vmware/deployment.node.type", "embedded\n", 0o644)?;
    host.write(
        "/etc/vmware/.buildInfo",
        format!(
            "CLOUDVM_VERSION:{}\nBUILDNUMBER:{}\n",
            v.as_str(),
            v.build()
        ),
        0o644,
    )?;
    write_private(&host.path(SSO_PASSWORD_FILE), state.sso_password.as_bytes())?;
    let vcsa = Vcsa { host: host.clone() };
    vcsa.agent_config()?;
    Ok(vcsa)
}

impl Vcsa {
    /// The current state.
    pub fn state(&self) -> Result<VcsaState> {
        VcsaState::load(&self.host)
    }

    /// Changes the state.
    pub fn update(&self, f: impl FnOnce(&mut VcsaState)) -> Result<()> {
        let mut s = self.state()?;
        f(&mut s);
        s.save(&self.host)
    }

    /// Injects (or with `None` clears) a fault in `tool`.
    pub fn set_fault(&self, tool: &str, fault: Option<Fault>) -> Result<()> {
        self.update(|s| match fault {
            Some(f) => {
                s.faults.insert(tool.into(), f);
            }
            None => {
                s.faults.remove(tool);
            }
        })
    }

    /// Writes `/storage/vmware-vmon/defaultStartProfile` (`HACore` on a vCenter HA node: a
    /// plain `service-control --start --all` then starts only the HA core services).
    pub fn set_default_start_profile(&self, profile: &str) -> Result<()> {
        self.host
            .write(DEFAULT_START_PROFILE, format!("{profile}\n"), 0o644)?;
        Ok(())
    }

    /// Breaks the base64 of a stored certificate (a damaged VECS entry).
    pub fn corrupt_entry(&self, store: &str, alias: &str) -> Result<()> {
        let mut s = self.state()?;
        let e = s
            .store_mut(store)
            .and_then(|st| st.entries.iter_mut().find(|e| e.alias == alias))
            .with_context(|| format!("no entry {store}/{alias}"))?;
        let pem = e.cert.as_mut().context("entry has no certificate")?;
        let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
        if lines.len() > 3 {
            lines[2] = format!("!!{}", &lines[2][2..]);
        }
        *pem = lines.join("\n");
        s.save(&self.host)
    }

    /// Puts a new Machine SSL certificate (`life`) in VECS while the HTTPS listener keeps
    /// serving the old one, as when rhttpproxy was not restarted after a renewal.
    pub fn renew_machine_ssl_without_restart(&self, life: Lifetime) -> Result<()> {
        let mut s = self.state()?;
        let old = s
            .entry("MACHINE_SSL_CERT", "__MACHINE_CERT")
            .context("no __MACHINE_CERT")?
            .clone();
        let root = std::fs::read_to_string(self.host.path(VMCA_ROOT))?;
        let key = std::fs::read_to_string(self.host.path(VMCA_KEY))?;
        let ca_key = KeyPair::from_pem_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256)?;
        let issuer = Issuer::from_ca_cert_pem(&root, ca_key)?;
        let pnid = s.pnid.clone();
        let leaf_key = gen_key(true)?;
        let mut p = CertificateParams::new(vec![pnid.clone()])?;
        p.distinguished_name = dn(&[
            ("CN", &pnid),
            ("C", "US"),
            ("ST", "California"),
            ("L", "Palo Alto"),
            ("O", "VMware"),
            ("OU", "VMware Engineering"),
        ]);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.use_authority_key_identifier_extension = true;
        p.custom_extensions.push(aia(&pnid));
        p.serial_number = Some(random_serial());
        apply(life, &mut p);
        let cert = p.signed_by(&leaf_key, &issuer)?;
        s.https_pinned = Some((
            old.cert.clone().unwrap_or_default(),
            old.key.clone().unwrap_or_default(),
        ));
        let e = s
            .store_mut("MACHINE_SSL_CERT")
            .and_then(|st| st.entries.iter_mut().find(|e| e.alias == "__MACHINE_CERT"))
            .context("no __MACHINE_CERT")?;
        e.cert = Some(trim_pem(&cert.pem()));
        e.key = Some(leaf_key.serialize_pem());
        s.save(&self.host)
    }

    /// Path of the agent configuration written by [`Vcsa::agent_config`].
    pub fn agent_config_path(&self) -> PathBuf {
        self.host.state("agent.toml")
    }

    /// Writes an agent configuration that sees this host and returns its path.
    ///
    /// Settings used: `vsphere.ldap_uri`, `vsphere.https_address`, `vsphere.sso_password_file`
    /// (documented in the agent's `collect/vsphere.rs`).
    pub fn agent_config(&self) -> Result<PathBuf> {
        let s = self.state()?;
        let text = format!(
            "# agent configuration for the simulated VCSA {pnid}\n\
             root = {root:?}\n\
             platforms = [\"vsphere\"]\n\
             tool_timeout = \"20s\"\n\
             \n\
             [settings]\n\
             \"vsphere.ldap_uri\" = \"ldap://127.0.0.1:{ldap}\"\n\
             \"vsphere.https_address\" = \"127.0.0.1:{https}\"\n\
             \"vsphere.sso_password_file\" = {pw:?}\n\
             \"vsphere.vcdb_host\" = {vcdb:?}\n\
             \"vsphere.vcdb_port\" = \"{vcdb_port}\"\n",
            vcdb = s.vcdb_dir,
            vcdb_port = s.vcdb_port,
            pnid = s.pnid,
            root = self.host.root.display().to_string(),
            ldap = s.ldap_port,
            https = s.https_port,
            pw = SSO_PASSWORD_FILE,
        );
        let p = self.agent_config_path();
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// Starts slapd (vmdir) and the HTTPS listener; both stop when the guard drops.
    pub fn start_services(&self) -> Result<Services> {
        let s = self.state()?;
        let children = if s.vmdir_remote {
            vec![]
        } else {
            vec![vmdir::start(&self.host)?]
        };
        let https = std::process::Command::new(&self.host.sim_bin)
            .args([
                "--root",
                &self.host.root.display().to_string(),
                "vcsa-https",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{}", s.https_port))
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} vcsa-https", self.host.sim_bin.display()))?;
        let mut guard = Services {
            children,
            cleanup: vec![PathBuf::from(&s.vcdb_dir)],
        };
        guard.children.push(https);
        guard.children.push(vcdb::start(&self.host)?);
        wait_for_port(s.https_port, Duration::from_secs(10))
            .context("HTTPS listener did not come up")?;
        Ok(guard)
    }
}

/// Creates Auto Deploy's database with the real `sqlite3` ([`auto_deploy_db_path`]): one
/// `vc_servers` row for this vCenter with its Machine SSL thumbprint.
fn create_auto_deploy_db(host: &SimHost, v: VcsaVersion, pnid: &str, tp: &str) -> Result<()> {
    let db = host.path(auto_deploy_db_path(v));
    if let Some(parent) = db.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(&db);
    let sql = format!(
        "CREATE TABLE vc_servers (addr TEXT, thumbprint TEXT); \
         INSERT INTO vc_servers (addr, thumbprint) VALUES ('{pnid}', '{tp}');"
    );
    let out = std::process::Command::new(SQLITE3)
        .arg(&db)
        .arg(&sql)
        .output()
        .with_context(|| format!("running {SQLITE3}: install sqlite3"))?;
    anyhow::ensure!(
        out.status.success(),
        "sqlite3 {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `vc_servers` rows (addr, thumbprint) of the appliance's Auto Deploy database, read with the
/// real `sqlite3`; `None` when there is no database.
pub fn auto_deploy_rows(vcsa: &Vcsa) -> Result<Option<Vec<(String, String)>>> {
    let db = vcsa.host.path(auto_deploy_db_path(vcsa.state()?.version));
    if !db.exists() {
        return Ok(None);
    }
    let out = std::process::Command::new(SQLITE3)
        .arg("-separator")
        .arg("|")
        .arg(&db)
        .arg("SELECT addr, thumbprint FROM vc_servers ORDER BY addr")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sqlite3 {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, t)| (a.to_owned(), t.to_owned()))
            .collect(),
    ))
}

/// Puts `other` into `primary`'s SSO domain as a second embedded node (Enhanced Linked Mode):
/// `other` uses `primary`'s vmdir (its agent's `vsphere.ldap_uri` points there), its machine
/// account, service principals and Lookup Service registrations are loaded into that vmdir (one
/// Lookup Service for the domain), both share the SSO administrator
/// password and each lists the other as a healthy replication partner. Call before
/// [`Vcsa::start_services`] of either.
pub fn join(primary: &Vcsa, other: &Vcsa) -> Result<()> {
    let p = primary.state()?;
    let o = other.state()?;
    anyhow::ensure!(
        p.domain == o.domain,
        "{} is in {}, {} in {}",
        p.pnid,
        p.domain,
        o.pnid,
        o.domain
    );
    primary.update(|s| {
        s.vmdir_members.push(VmdirMember {
            pnid: o.pnid.clone(),
            machine_account_dn: o.machine_account_dn.clone(),
            machine_account_password: o.machine_account_password.clone(),
            service_principals: o.service_principals.clone(),
            ls_registrations: o.ls_registrations.clone(),
        });
        s.partners.push(Partner::healthy(&o.pnid));
    })?;
    other.update(|s| {
        s.vmdir_remote = true;
        s.ldap_port = p.ldap_port;
        s.sso_password = p.sso_password.clone();
        s.tenant_credentials = p.tenant_credentials.clone();
        s.trusted_chains = p.trusted_chains.clone();
        s.partners.push(Partner::healthy(&p.pnid));
    })?;
    write_private(
        &other.host.path(SSO_PASSWORD_FILE),
        p.sso_password.as_bytes(),
    )?;
    other.agent_config()?;
    Ok(())
}

/// Waits until something listens on loopback `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Running simulated services (slapd, HTTPS); killed on drop.
pub struct Services {
    children: Vec<std::process::Child>,
    /// Directories removed once the children are gone (the VCDB cluster).
    cleanup: Vec<PathBuf>,
}

impl Services {
    /// Process ids of the children.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Waits for any child to exit, or for `stop` to be set (used by `certfleet-sim
    /// vcsa-services` in the foreground).
    pub fn wait_any(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            for c in &mut self.children {
                if let Some(status) = c.try_wait()?
                    && !stop.load(std::sync::atomic::Ordering::SeqCst)
                {
                    anyhow::bail!("service process {} exited: {status}", c.id());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.cleanup {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs simulated tool `tool` of this platform; returns the exit code.
pub fn run_tool(host: &SimHost, tool: &str, args: &[String]) -> Result<i32> {
    tools::run(host, tool, args)
}

/// `certfleet-sim build vcsa --root R [--version 7.0] [--pnid FQDN] [--expired a,b]
/// [--expiring name=days,...] [--partner-behind N] [--partner-down]`: builds a VCSA and prints
/// the agent configuration path.
pub fn cli_build(args: &[String]) -> Result<i32> {
    let mut root = None;
    let mut version = VcsaVersion::V70;
    let mut pnid = "vcsa01.lab.local".to_owned();
    let mut expired = Vec::new();
    let mut expiring = Vec::new();
    let mut partners = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--root" => root = Some(val()?),
            "--version" => version = VcsaVersion::parse(&val()?)?,
            "--pnid" => pnid = val()?,
            "--expired" => expired.extend(val()?.split(',').map(str::to_owned)),
            "--expiring" => {
                for kv in val()?.split(',') {
                    let (k, d) = kv
                        .split_once('=')
                        .with_context(|| format!("--expiring {kv}: want name=days"))?;
                    expiring.push((
                        k.to_owned(),
                        d.parse::<i64>()
                            .with_context(|| format!("--expiring {kv}"))?,
                    ));
                }
            }
            "--partner-behind" => {
                partners.push(Partner::lagging("psc3.lab.local", val()?.parse()?))
            }
            "--partner-down" => partners.push(Partner::down("psc4.lab.local")),
            other => anyhow::bail!("build vcsa: unknown option {other:?}"),
        }
    }
    let root = root.context("build vcsa: --root is required")?;
    let host = SimHost::new(root, super::default_sim_bin())?;
    let mut spec = VcsaSpec::new(version, &pnid);
    spec.partners.extend(partners);
    for name in expired {
        spec = spec.with(name.trim(), Lifetime::days(735, -5));
    }
    for (name, days) in expiring {
        spec = spec.with(&name, Lifetime::days(730 - days.max(0) as u64, days));
    }
    let vcsa = build(&host, &spec)?;
    println!("{}", vcsa.agent_config_path().display());
    Ok(0)
}

/// `certfleet-sim --root R vcsa-services`: runs slapd and the HTTPS listener in the foreground
/// until SIGTERM, SIGINT or SIGHUP (for demo scripts: start it with `&`), then stops its
/// children before exiting (status 128 + signal).
pub fn cli_services(host: &SimHost) -> Result<i32> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signal = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    crate::sim::stop_on_signals(stop.clone(), signal.clone())?;
    let vcsa = Vcsa { host: host.clone() };
    let mut guard = vcsa.start_services()?;
    let s = vcsa.state()?;
    println!(
        "vmdir ldap://127.0.0.1:{}  https 127.0.0.1:{}  pids {:?}",
        s.ldap_port,
        s.https_port,
        guard.pids()
    );
    guard.wait_any(&stop)?;
    // Dropping the guard kills and reaps every child (slapd, postgres, the HTTPS listener).
    drop(guard);
    let sig = signal.load(std::sync::atomic::Ordering::SeqCst);
    Ok(if sig > 0 { 128 + sig } else { 0 })
}
