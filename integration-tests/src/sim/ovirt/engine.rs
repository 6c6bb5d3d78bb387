//! The simulated oVirt engine PKI: `/etc/pki/ovirt-engine` laid out as reference A1, made the
//! way `pki-create-ca.sh`, `pki-enroll-pkcs12.sh`, `pki-enroll-request.sh` and
//! `pki-pkcs12-extract.sh` make it (A3), with the validity defaults of A4.
//!
//! Every certificate is issued by the real `openssl ca` running in the PKI directory with
//! oVirt's own `openssl.conf` and `cert.conf` (A2), so `database.txt`, `serial.txt` and the
//! serial copies `certs/<SERIAL>.pem` are openssl's own. Lifetimes follow the version unless a
//! test overrides one (to make an expiring or expired certificate); overrides use
//! `openssl ca -startdate/-enddate`, never a fake clock. Renewals leave the timestamped backups
//! `common_backup` leaves (`certs/apache.cer.20260101120000`, …).
//!
//! OVN keys: engine-setup's OVN plugin (`oVirt/ovirt-engine`
//! `packaging/setup/plugins/ovirt-engine-setup/ovirt-engine/network/ovirtproviderovn.py`,
//! `_sanitize_ovn_key_file_permissions`) gives `keys/ovn-ndb.key.nopass` and
//! `keys/ovn-sdb.key.nopass` mode 0640 (`S_IRUSR | S_IWUSR | S_IRGRP`) and group `openvswitch`,
//! owner unchanged (root), on setup and on every upgrade run; [`sanitize_ovn_key`] does the same.
//! OVN reads them as [`ovn_account`]. Unverified: the exact account — seed 003 says
//! `ovsdb-server` runs as user `openvswitch`, group `hugetlbfs` (RHEL's DPDK-enabled
//! openvswitch packaging), and we assume `openvswitch` is also among its groups (otherwise the
//! group engine-setup sets would not help it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use super::conf;
use crate::sim::{Lifetime, SimHost};

/// Where the engine PKI lives on the host.
pub const ENGINE_PKI: &str = "/etc/pki/ovirt-engine";

/// OVN keys engine-setup makes readable to OVN (0640, group `openvswitch`).
pub const OVN_DB_KEYS: &[&str] = &["keys/ovn-ndb.key.nopass", "keys/ovn-sdb.key.nopass"];

/// The account OVN's `ovsdb-server` runs as on the engine host: the real `openvswitch` user
/// and `openvswitch`/`hugetlbfs` groups when this machine has them; otherwise fixed ids that
/// nothing else uses (the simulator runs as root and can give files to any id). Without root
/// the simulator cannot give files away, so the account is the caller's own.
pub fn ovn_account() -> crate::sim::systemd::Account {
    use nix::unistd::{Group, User, getegid, geteuid};
    let user = User::from_name("openvswitch").ok().flatten();
    let group = |n: &str| Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw());
    let (uid, ovs, huge) = if !geteuid().is_root() {
        (geteuid().as_raw(), getegid().as_raw(), getegid().as_raw())
    } else {
        (
            user.map(|u| u.uid.as_raw()).unwrap_or(39_901),
            group("openvswitch").unwrap_or(39_901),
            group("hugetlbfs").unwrap_or(39_902),
        )
    };
    crate::sim::systemd::Account {
        name: "openvswitch".into(),
        uid,
        gids: vec![huge, ovs],
    }
}

/// `_sanitize_ovn_key_file_permissions`: mode 0640, group `openvswitch`, owner unchanged.
pub fn sanitize_ovn_key(path: &Path) -> Result<()> {
    set_mode(path, 0o640)?;
    let ovs = ovn_account().gids[1];
    std::os::unix::fs::chown(path, None, Some(ovs))
        .with_context(|| format!("chgrp openvswitch ({ovs}) {}", path.display()))
}

/// vmconsole proxy entities (`vmconsole_proxy_helper/pki.py` `_enrollSSHKeys`): X.509 in
/// `certs/`, key in `keys/*.p12`, OpenSSH certificate signed by the engine CA key.
pub const VMCONSOLE_HOST: &str = "vmconsole-proxy-host";
/// See [`VMCONSOLE_HOST`].
pub const VMCONSOLE_USER: &str = "vmconsole-proxy-user";
/// `VMCONSOLE_PKI_DIR` on the engine and on hosts.
pub const VMCONSOLE_PKI: &str = "/etc/pki/ovirt-vmconsole";
/// `OVIRT_VMCONSOLE_PROXY_PRINCIPAL` (principal of the proxy's user certificate).
pub const VMCONSOLE_PROXY_PRINCIPAL: &str = "ovirt-vmconsole-proxy";

/// The PKCS#12 and truststore password engine-setup uses.
pub const P12_PASSWORD: &str = "mypass";

/// Which oVirt release's defaults to follow (reference A4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum OvirtVersion {
    /// 4.4.3 – 4.4.x: CA 3650 d, every leaf 398 d.
    V4_4,
    /// 4.5.1 and later: CA 7300 d, web-facing leaves 398 d, everything else 1827 d.
    V4_5,
}

impl OvirtVersion {
    /// Days a newly created CA is valid (`CA_DAYS`).
    pub fn ca_days(self) -> u32 {
        match self {
            OvirtVersion::V4_4 => 3650,
            OvirtVersion::V4_5 => 7300,
        }
    }

    /// Days engine-setup asks for when it issues entity `name`.
    pub fn engine_cert_days(self, name: &str) -> u32 {
        match self {
            OvirtVersion::V4_4 => 398,
            OvirtVersion::V4_5 if is_short_life(name) => 398,
            OvirtVersion::V4_5 => 1827,
        }
    }

    /// `VdsCertificateValidityInDays`.
    pub fn host_cert_days(self) -> u32 {
        match self {
            OvirtVersion::V4_4 => 398,
            OvirtVersion::V4_5 => 1827,
        }
    }

    /// `CertExpirationWarnPeriodInDays` / `CertExpirationAlertPeriodInDays`.
    pub fn warn_alert_days(self) -> (u32, u32) {
        match self {
            OvirtVersion::V4_4 => (30, 7),
            OvirtVersion::V4_5 => (365, 30),
        }
    }

    /// `4.4` / `4.5`.
    pub fn label(self) -> &'static str {
        match self {
            OvirtVersion::V4_4 => "4.4",
            OvirtVersion::V4_5 => "4.5",
        }
    }
}

/// The "shortLife" entities of engine-setup (A5): browser-facing, 398 days.
pub fn is_short_life(name: &str) -> bool {
    matches!(name, "apache" | "websocket-proxy")
}

/// What to build.
#[derive(Clone, Debug)]
pub struct EngineSpec {
    /// Release whose defaults apply.
    pub version: OvirtVersion,
    /// Engine FQDN.
    pub fqdn: String,
    /// `OVESETUP_PKI/organization`; default: the domain part of the FQDN.
    pub organization: Option<String>,
    /// Country of the CA and engine certificates.
    pub country: String,
    /// OVN provider configured (adds `ovirt-provider-ovn`, `ovn-ndb`, `ovn-sdb`).
    pub ovn: bool,
    /// vmconsole proxy configured (adds `vmconsole-proxy-helper`).
    pub vmconsole: bool,
    /// Entities issued twice: the first issuance survives as `common_backup` backups and as
    /// its openssl serial copy.
    pub renewed: Vec<String>,
    /// Lifetime overrides by entity name (`ca`, `qemu-ca`, `apache`, …).
    pub lifetimes: BTreeMap<String, Lifetime>,
}

impl EngineSpec {
    /// Defaults for `version` and `fqdn`: OVN and vmconsole on, nothing renewed.
    pub fn new(version: OvirtVersion, fqdn: &str) -> Self {
        EngineSpec {
            version,
            fqdn: fqdn.to_owned(),
            organization: None,
            country: "US".into(),
            ovn: true,
            vmconsole: true,
            renewed: Vec::new(),
            lifetimes: BTreeMap::new(),
        }
    }
}

/// Which engine CA signs (`--ca-file` of the pki scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ca {
    /// `ca.pem`: engine services, VDSM and OVN host certificates.
    Engine,
    /// `qemu-ca.pem`: host libvirt-migrate certificates.
    Qemu,
}

impl Ca {
    /// `ca` / `qemu-ca` (`--ca-file`).
    pub fn file(self) -> &'static str {
        match self {
            Ca::Engine => "ca",
            Ca::Qemu => "qemu-ca",
        }
    }
    fn cert_conf(self) -> &'static str {
        match self {
            Ca::Engine => "cert.conf",
            Ca::Qemu => "qemu-cert.conf",
        }
    }
    /// `--cert-dir` / `--req-dir`.
    pub fn dirs(self) -> (&'static str, &'static str) {
        match self {
            Ca::Engine => ("certs", "requests"),
            Ca::Qemu => ("certs-qemu", "requests-qemu"),
        }
    }
}

/// One engine entity (A5 `_COMMON_ENTITIES` plus the OVN and vmconsole ones).
#[derive(Clone, Debug, Serialize)]
pub struct Entity {
    /// `engine`, `apache`, …
    pub name: String,
    /// Whether `keys/<name>.key.nopass` is extracted.
    pub extract: bool,
}

/// A built engine.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The host it lives on.
    pub host: SimHost,
    /// What it was built from.
    pub spec: EngineSpec,
    /// Absolute path of `/etc/pki/ovirt-engine` under the host root.
    pub pki: PathBuf,
    /// Organization used in subjects.
    pub organization: String,
    /// Engine CA subject in openssl slash form.
    pub ca_subject: String,
    /// Entities issued.
    pub entities: Vec<Entity>,
    /// Backup files left by renewals (paths relative to the PKI directory).
    pub backups: Vec<String>,
}

/// Builds the engine PKI on `host` as engine-setup of `spec.version` leaves it.
pub fn build_engine(host: &SimHost, spec: &EngineSpec) -> Result<Engine> {
    let pki = host.path(ENGINE_PKI);
    for d in [
        "",
        "certs",
        "keys",
        "private",
        "requests",
        "certs-qemu",
        "requests-qemu",
    ] {
        std::fs::create_dir_all(pki.join(d))
            .with_context(|| format!("creating {}", pki.join(d).display()))?;
    }
    set_mode(&pki.join("private"), 0o750)?;
    set_mode(&pki.join("keys"), 0o750)?;
    let organization = spec.organization.clone().unwrap_or_else(|| {
        spec.fqdn
            .split_once('.')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_else(|| "Test".into())
    });
    // engine-setup writes the templates and their *.conf copies (A1, A2).
    let files: [(&str, String); 11] = [
        ("openssl.conf", conf::OPENSSL_CONF.into()),
        ("cacert.template.in", conf::CACERT_TEMPLATE_IN.into()),
        ("cert.template.in", conf::CERT_TEMPLATE_IN.into()),
        ("cacert.template", conf::CACERT_TEMPLATE_IN.into()),
        ("cacert.conf", conf::CACERT_TEMPLATE_IN.into()),
        (
            "cert.template",
            conf::cert_conf(&spec.fqdn, "ca-certificate"),
        ),
        ("cert.conf", conf::cert_conf(&spec.fqdn, "ca-certificate")),
        ("qemu-cacert.template", conf::CACERT_TEMPLATE_IN.into()),
        ("qemu-cacert.conf", conf::CACERT_TEMPLATE_IN.into()),
        (
            "qemu-cert.template",
            conf::cert_conf(&spec.fqdn, "qemu-ca-certificate"),
        ),
        (
            "qemu-cert.conf",
            conf::cert_conf(&spec.fqdn, "qemu-ca-certificate"),
        ),
    ];
    for (name, text) in files {
        write(&pki.join(name), text.as_bytes(), 0o644)?;
    }
    let short: String = spec.fqdn.chars().take(55).collect();
    let ca_subject = format!(
        "/C={}/O={}/CN={}.{}",
        spec.country,
        organization,
        short,
        random_suffix()
    );
    let qemu_ca_subject = format!(
        "/C={}/O={}/OU=qemu/CN={}.{}",
        spec.country,
        organization,
        short,
        random_suffix()
    );
    let mut engine = Engine {
        host: host.clone(),
        spec: spec.clone(),
        pki,
        organization,
        ca_subject: ca_subject.clone(),
        entities: Vec::new(),
        backups: Vec::new(),
    };
    engine.create_ca(Ca::Engine, &ca_subject)?;
    engine.create_ca(Ca::Qemu, &qemu_ca_subject)?;
    // ca.pem is world-readable; apache-ca.pem is the absolute symlink engine-setup makes.
    std::os::unix::fs::symlink(
        format!("{ENGINE_PKI}/ca.pem"),
        engine.pki.join("apache-ca.pem"),
    )
    .context("linking apache-ca.pem")?;

    let mut entities = vec![
        ("engine", false),
        ("jboss", false),
        ("websocket-proxy", true),
        ("apache", true),
        ("reports", true),
    ];
    if spec.ovn {
        entities.extend([
            ("ovirt-provider-ovn", true),
            ("ovn-ndb", true),
            ("ovn-sdb", true),
        ]);
    }
    if spec.vmconsole {
        entities.push(("vmconsole-proxy-helper", true));
    }
    let engine_subject = format!(
        "/C={}/O={}/CN={}",
        spec.country, engine.organization, spec.fqdn
    );
    for (name, extract) in entities {
        let (san, custom) = if name == "vmconsole-proxy-helper" {
            (
                None,
                Some(("digitalSignature", "1.3.6.1.4.1.2312.13.1.2.1.1")),
            )
        } else {
            (Some(format!("DNS:{}", spec.fqdn)), None)
        };
        let days = spec.version.engine_cert_days(name);
        if spec.renewed.iter().any(|r| r == name) {
            // The first issuance ran out a while ago; the renewal backed it up.
            let old = Lifetime {
                started_ago: days_dur(u64::from(days) + 30),
                expires_in_secs: -30 * 86_400,
            };
            engine.enroll_pkcs12(
                name,
                &engine_subject,
                san.as_deref(),
                custom,
                days,
                Some(old),
            )?;
            let ts = backup_stamp(30);
            let mut set = vec![
                format!("certs/{name}.cer"),
                format!("keys/{name}.p12"),
                format!("requests/{name}.req"),
            ];
            if extract {
                engine.extract_key(name)?;
                set.push(format!("keys/{name}.key.nopass"));
            }
            for f in set {
                engine.backup(&f, &ts)?;
            }
        }
        let life = spec.lifetimes.get(name).copied();
        engine.enroll_pkcs12(name, &engine_subject, san.as_deref(), custom, days, life)?;
        if extract {
            engine.extract_key(name)?;
        }
        engine.entities.push(Entity {
            name: name.to_owned(),
            extract,
        });
    }
    if spec.ovn {
        for k in OVN_DB_KEYS {
            sanitize_ovn_key(&engine.path(k))?;
        }
    }
    if spec.vmconsole {
        engine.vmconsole_proxy(&[VMCONSOLE_HOST, VMCONSOLE_USER])?;
        for name in [VMCONSOLE_HOST, VMCONSOLE_USER] {
            engine.entities.push(Entity {
                name: name.to_owned(),
                extract: false,
            });
        }
    }
    engine.write_engine_conf()?;
    engine.save_state(&qemu_ca_subject)?;
    host.install_tool("/usr/bin/engine-config", "engine-config")?;
    // The PKI scripts run the system openssl; pki-enroll-openssh-cert.sh runs ssh-keygen.
    host.link_real_tool("/usr/bin/openssl")?;
    host.link_real_tool("/usr/bin/ssh-keygen")?;
    Ok(engine)
}

impl Engine {
    /// The engine built earlier on `host` (from the simulator state), to enroll more hosts.
    pub fn load(host: &SimHost) -> Result<Engine> {
        let text = std::fs::read_to_string(host.state("ovirt-engine.json"))
            .with_context(|| format!("no simulated engine under {}", host.root.display()))?;
        let st: serde_json::Value = serde_json::from_str(&text)?;
        let field = |k: &str| {
            st[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("engine state lacks {k}"))
        };
        let version = if field("version")? == "4.4" {
            OvirtVersion::V4_4
        } else {
            OvirtVersion::V4_5
        };
        let entities: Vec<Entity> = st["entities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| Entity {
                        name: e["name"].as_str().unwrap_or_default().to_owned(),
                        extract: e["extract"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let backups = st["backups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Engine {
            host: host.clone(),
            spec: EngineSpec::new(version, &field("fqdn")?),
            pki: host.path(ENGINE_PKI),
            organization: field("organization")?,
            ca_subject: field("ca_subject")?,
            entities,
            backups,
        })
    }

    /// A path inside the PKI directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.pki.join(rel)
    }

    /// The engine CA certificate (PEM).
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.path("ca.pem"))?)
    }

    /// The QEMU CA certificate (PEM).
    pub fn qemu_ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.path("qemu-ca.pem"))?)
    }

    /// `pki-create-ca.sh --ca-file=…` (creation, not renewal).
    fn create_ca(&self, ca: Ca, subject: &str) -> Result<()> {
        let f = ca.file();
        if ca == Ca::Engine {
            write(&self.path("serial.txt"), b"1000\n", 0o644)?;
            write(&self.path("database.txt"), b"", 0o644)?;
            write(&self.path(".rnd"), b"", 0o600)?;
        }
        let key = format!("private/{f}.pem");
        self.openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ],
            &[],
        )?;
        set_mode(&self.path(&key), 0o640)?;
        let csr = format!("requests/{f}.csr");
        let cacert_conf = if ca == Ca::Engine {
            "cacert.conf"
        } else {
            "qemu-cacert.conf"
        };
        self.openssl(
            &[
                "req",
                "-batch",
                "-config",
                cacert_conf,
                "-new",
                "-key",
                &key,
                "-out",
                &csr,
                "-subj",
                "/",
            ],
            &[],
        )?;
        let pem = format!("{f}.pem");
        let mut args: Vec<String> = [
            "ca",
            "-batch",
            "-config",
            "openssl.conf",
            "-extfile",
            cacert_conf,
            "-extensions",
            "v3_ca",
            "-in",
            &csr,
            "-notext",
            "-out",
            &pem,
            "-keyfile",
            &key,
            "-selfsign",
            "-subj",
            subject,
            "-utf8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(validity_args(
            self.spec.lifetimes.get(f).copied(),
            self.spec.version.ca_days(),
        ));
        self.openssl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
        set_mode(&self.path(&pem), 0o644)?;
        // `openssl x509 -in ca.pem -out certs/ca.der`: PEM despite the name (A1).
        let der = format!("certs/{f}.der");
        self.openssl(&["x509", "-in", &pem, "-out", &der], &[])?;
        set_mode(&self.path(&der), 0o644)?;
        self.import_truststore(&format!("{f}cert"), &pem)
    }

    /// `pki-create-ca.sh --renew --ca-file=<ca|qemu-ca>` (`renew`, `keystore`, `cleanups`):
    /// the same key and subject signed again for `CA_DAYS` with `openssl x509 -signkey`, the
    /// old file kept by `common_backup` as `<file>.<ts>`, the truststore alias replaced and
    /// `certs/<file>.der` rewritten. Returns the backup's name.
    pub(crate) fn renew_ca(&self, ca: Ca, ts: &str) -> Result<String> {
        let f = ca.file();
        let (pem, new) = (format!("{f}.pem"), format!("{f}.pem.new"));
        let days = self.spec.version.ca_days().to_string();
        self.openssl(
            &[
                "x509",
                "-signkey",
                &format!("private/{f}.pem"),
                "-in",
                &pem,
                "-out",
                &new,
                "-days",
                &days,
            ],
            &[],
        )?;
        let backup = format!("{pem}.{ts}");
        std::fs::copy(self.path(&pem), self.path(&backup))
            .with_context(|| format!("backing up {pem}"))?;
        std::fs::rename(self.path(&new), self.path(&pem))
            .with_context(|| format!("installing {new}"))?;
        // keystore(): -delete (errors ignored), then -import.
        let _ = Command::new("keytool")
            .current_dir(&self.pki)
            .args(["-delete", "-noprompt", "-alias", &format!("{f}cert")])
            .args(["-keystore", ".truststore", "-storepass", P12_PASSWORD])
            .output();
        self.import_truststore(&format!("{f}cert"), &pem)?;
        let der = format!("certs/{f}.der");
        self.openssl(&["x509", "-in", &pem, "-out", &der], &[])?;
        set_mode(&self.path(&pem), 0o644)?;
        set_mode(&self.path(&der), 0o644)?;
        Ok(backup)
    }

    /// `keytool -import` into `.truststore` (JKS, password `mypass`).
    fn import_truststore(&self, alias: &str, pem: &str) -> Result<()> {
        let out = Command::new("keytool")
            .current_dir(&self.pki)
            .args([
                "-import",
                "-noprompt",
                "-trustcacerts",
                "-storetype",
                "JKS",
                "-alias",
                alias,
            ])
            .args([
                "-keypass",
                P12_PASSWORD,
                "-file",
                pem,
                "-keystore",
                ".truststore",
                "-storepass",
                P12_PASSWORD,
            ])
            .output()
            .context("running keytool (a JDK is needed to build the engine truststore)")?;
        anyhow::ensure!(
            out.status.success(),
            "keytool -import {alias}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `pki-enroll-pkcs12.sh`: new key, CSR in `requests/`, signed certificate, PKCS#12.
    fn enroll_pkcs12(
        &self,
        name: &str,
        subject: &str,
        san: Option<&str>,
        custom: Option<(&str, &str)>,
        days: u32,
        life: Option<Lifetime>,
    ) -> Result<()> {
        self.enroll_pkcs12_keep(name, subject, san, custom, days, life, false)
    }

    /// `pki-enroll-pkcs12.sh [--keep-key]`: with `keep_key` the key comes out of the existing
    /// `keys/<name>.p12` (`openssl pkcs12 -nocerts`), else a new one is generated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn enroll_pkcs12_keep(
        &self,
        name: &str,
        subject: &str,
        san: Option<&str>,
        custom: Option<(&str, &str)>,
        days: u32,
        life: Option<Lifetime>,
        keep_key: bool,
    ) -> Result<()> {
        let pass = format!("pass:{P12_PASSWORD}");
        let tmpkey = format!("keys/.{name}.tmpkey");
        if keep_key {
            self.openssl(
                &[
                    "pkcs12",
                    "-in",
                    &format!("keys/{name}.p12"),
                    "-out",
                    &tmpkey,
                    "-passin",
                    &pass,
                    "-passout",
                    &pass,
                    "-nocerts",
                ],
                &[],
            )?;
        } else {
            self.openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &tmpkey,
                    "-aes256",
                    "-pass",
                    &pass,
                ],
                &[],
            )?;
        }
        let req = format!("requests/{name}.req");
        self.openssl(
            &[
                "req", "-new", "-days", "365", "-key", &tmpkey, "-out", &req, "-passin", &pass,
                "-passout", &pass, "-batch", "-subj", "/",
            ],
            &[],
        )?;
        self.enroll_request(name, subject, san, custom, days, life, Ca::Engine)?;
        let p12 = format!("keys/{name}.p12");
        let mut args = vec![
            "pkcs12",
            "-export",
            "-in",
            &format!("certs/{name}.cer"),
            "-inkey",
            &tmpkey,
            "-out",
            &p12,
            "-passin",
            &pass,
            "-passout",
            &pass,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if self.spec.version == OvirtVersion::V4_4 {
            // 2019–2025 scripts encrypted the certificate bag with 3DES for FIPS (A3).
            args.push("-descert".into());
        }
        self.openssl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
        set_mode(&self.path(&p12), 0o600)?;
        std::fs::remove_file(self.path(&tmpkey))?;
        Ok(())
    }

    /// `pki-pkcs12-extract.sh --key=keys/<name>.key.nopass`.
    pub(crate) fn extract_key(&self, name: &str) -> Result<()> {
        let out = format!("keys/{name}.key.nopass");
        let pass = format!("pass:{P12_PASSWORD}");
        self.openssl(
            &[
                "pkcs12",
                "-in",
                &format!("keys/{name}.p12"),
                "-nocerts",
                "-nodes",
                "-passin",
                &pass,
                "-out",
                &out,
            ],
            &[],
        )?;
        set_mode(&self.path(&out), 0o600)
    }

    /// `pki-enroll-request.sh`: signs `<req-dir>/<name>.req` into `<cert-dir>/<name>.cer` with
    /// the exact `openssl ca` command line of the script. `life` overrides the default
    /// "-startdate yesterday -days N".
    #[allow(clippy::too_many_arguments)]
    pub fn enroll_request(
        &self,
        name: &str,
        subject: &str,
        san: Option<&str>,
        custom: Option<(&str, &str)>,
        days: u32,
        life: Option<Lifetime>,
        ca: Ca,
    ) -> Result<PathBuf> {
        let (cert_dir, req_dir) = ca.dirs();
        let req = format!("{req_dir}/{name}.req");
        let cert = format!("{cert_dir}/{name}.cer");
        let extsection = match (san, custom) {
            (_, Some(_)) => "custom",
            (Some(_), None) => "v3_ca_san",
            (None, None) => "v3_ca",
        };
        let ca_pem = format!("{}.pem", ca.file());
        let ca_key = format!("private/{}.pem", ca.file());
        let mut args: Vec<String> = [
            "ca",
            "-batch",
            "-policy",
            "policy_match",
            "-config",
            "openssl.conf",
            "-cert",
            &ca_pem,
            "-keyfile",
            &ca_key,
            "-in",
            &req,
            "-out",
            &cert,
            "-subj",
            subject,
            "-utf8",
            "-extfile",
            ca.cert_conf(),
            "-extensions",
            extsection,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(validity_args(life, days));
        let (ku, eku) = custom.unwrap_or(("", ""));
        let env = [
            ("OVIRT_KU", ku),
            ("OVIRT_EKU", eku),
            ("OVIRT_SAN", san.unwrap_or("")),
        ];
        self.openssl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env)?;
        set_mode(&self.path(&cert), 0o644)?;
        Ok(self.path(&cert))
    }

    /// `pki-enroll-openssh-cert.sh --name=<name> --id=<id> [--host] --principals=…`
    /// (oVirt/ovirt-engine `packaging/bin/pki-enroll-openssh-cert.sh`): the X.509
    /// certificate's public key as an OpenSSH key (`ssh-keygen -i -m PKCS8`) in
    /// `certs/<name>.pub`, signed with a copy of the engine CA key (`private/ca.pem`, which the
    /// real `ssh-keygen -s` reads as it is) into `certs/<name>-cert.pub`, validity
    /// `-1h:+<days>d` (or the test's lifetime), options `clear,permit-pty` for a user
    /// certificate and none for a host certificate (`[ -n "${HOST}" ] && OPTIONS=""`).
    pub(crate) fn enroll_openssh(
        &self,
        name: &str,
        id: &str,
        host: bool,
        principals: &str,
        days: u32,
        life: Option<Lifetime>,
    ) -> Result<PathBuf> {
        let pubkey = self.openssl(
            &[
                "x509",
                "-in",
                &format!("certs/{name}.cer"),
                "-noout",
                "-pubkey",
            ],
            &[],
        )?;
        let work = tempfile::tempdir().context("temporary directory for ssh-keygen")?;
        let pem = work.path().join("pub.pem");
        std::fs::write(&pem, pubkey)?;
        let ssh_pub = run_tool(
            "ssh-keygen",
            &["-i", "-m", "PKCS8", "-f", &pem.display().to_string()],
        )?;
        let pub_path = self.path(&format!("certs/{name}.pub"));
        std::fs::write(&pub_path, ssh_pub)?;
        let ca = work.path().join("ca");
        std::fs::copy(self.path("private/ca.pem"), &ca)?;
        set_mode(&ca, 0o600)?;
        let validity = match life {
            None => format!("-1h:+{days}d"),
            Some(l) => {
                let now = crate::sim::ovirt::unix_now();
                format!(
                    "{}:{}",
                    ssh_time(now - l.started_ago.as_secs() as i64),
                    ssh_time(now + l.expires_in_secs)
                )
            }
        };
        let (ca_s, pub_s) = (ca.display().to_string(), pub_path.display().to_string());
        let mut args = vec!["-s", &ca_s, "-P", "", "-I", id];
        if host {
            args.push("-h");
        }
        args.extend(["-V", &validity, "-n", principals]);
        if !host {
            args.extend(["-O", "clear", "-O", "permit-pty"]);
        }
        args.push(&pub_s);
        run_tool("ssh-keygen", &args)?;
        let cert = self.path(&format!("certs/{name}-cert.pub"));
        set_mode(&cert, 0o644)?;
        Ok(cert)
    }

    /// `_miscPKIProxy`: `ca.pub` (the engine CA key as an OpenSSH key), and for each proxy
    /// entity an X.509 certificate (`pki-enroll-pkcs12.sh`), its OpenSSH certificate, the key
    /// (`pki-pkcs12-extract.sh --key=-`) and the certificate copied to
    /// `/etc/pki/ovirt-vmconsole/proxy-ssh_{host,user}_rsa[-cert.pub]` (key 0600).
    pub(crate) fn vmconsole_proxy(&self, names: &[&str]) -> Result<()> {
        let dir = self.host.path(VMCONSOLE_PKI);
        std::fs::create_dir_all(&dir)?;
        let ca_pub = self.openssl(&["x509", "-in", "ca.pem", "-noout", "-pubkey"], &[])?;
        let work = tempfile::tempdir()?;
        let pem = work.path().join("ca.pub.pem");
        std::fs::write(&pem, ca_pub)?;
        let ssh = run_tool(
            "ssh-keygen",
            &["-i", "-m", "PKCS8", "-f", &pem.display().to_string()],
        )?;
        write(&dir.join("ca.pub"), &ssh, 0o644)?;
        let subject =
            |cn: &str| format!("/C={}/O={}/CN={cn}", self.spec.country, self.organization);
        for name in names {
            let host = *name == VMCONSOLE_HOST;
            let days = self.spec.version.engine_cert_days(name);
            let life = self.spec.lifetimes.get(*name).copied();
            self.enroll_pkcs12(name, &subject(name), None, None, days, life)?;
            let principals = if host {
                self.spec.fqdn.clone()
            } else {
                VMCONSOLE_PROXY_PRINCIPAL.to_owned()
            };
            let cert = self.enroll_openssh(name, name, host, &principals, days, life)?;
            let suffix = if host { "host" } else { "user" };
            let key = self.openssl(
                &[
                    "pkcs12",
                    "-in",
                    &format!("keys/{name}.p12"),
                    "-nocerts",
                    "-nodes",
                    "-passin",
                    &format!("pass:{P12_PASSWORD}"),
                ],
                &[],
            )?;
            write(&dir.join(format!("proxy-ssh_{suffix}_rsa")), &key, 0o600)?;
            write(
                &dir.join(format!("proxy-ssh_{suffix}_rsa-cert.pub")),
                &std::fs::read(cert)?,
                0o644,
            )?;
        }
        Ok(())
    }

    /// `vmconsole_proxy_helper/pki.py` `_miscPKIEngine`: a new `vmconsole-proxy-helper`
    /// (custom KU `digitalSignature`, EKU `1.3.6.1.4.1.2312.13.1.2.1.1`, no SAN) and its
    /// extracted key (0600).
    pub(crate) fn vmconsole_helper(&self) -> Result<()> {
        let name = "vmconsole-proxy-helper";
        let subject = format!(
            "/C={}/O={}/CN={}",
            self.spec.country, self.organization, self.spec.fqdn
        );
        self.enroll_pkcs12(
            name,
            &subject,
            None,
            Some(("digitalSignature", "1.3.6.1.4.1.2312.13.1.2.1.1")),
            self.spec.version.engine_cert_days(name),
            None,
        )?;
        self.extract_key(name)
    }

    /// `vmconsole_proxy_helper/pki.py` `_refresh_needed`: the certificate is missing, older
    /// than `ca.pem` (mtime; a renewed CA), or inside the (long-life) warning window.
    pub(crate) fn vmconsole_refresh_needed(
        &self,
        path: &Path,
        check_cert: bool,
        warn_days: i64,
    ) -> Result<bool> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(true);
        };
        let ca = std::fs::metadata(self.path("ca.pem"))?;
        if ca.modified()? > meta.modified()? {
            return Ok(true);
        }
        if !check_cert {
            return Ok(false);
        }
        let bytes = std::fs::read(path)?;
        let rec =
            certfleet_common::x509::parse_der(&certfleet_common::pem::first_certificate(&bytes)?)?;
        Ok(rec.not_after - crate::sim::ovirt::unix_now() < warn_days * 86_400)
    }

    /// `common_backup`: copies `rel` to `rel.<timestamp>`.
    fn backup(&mut self, rel: &str, ts: &str) -> Result<()> {
        let to = format!("{rel}.{ts}");
        std::fs::copy(self.path(rel), self.path(&to))
            .with_context(|| format!("backing up {rel}"))?;
        self.backups.push(to);
        Ok(())
    }

    /// `/etc/ovirt-engine/engine.conf.d/10-setup-pki.conf` (A1).
    fn write_engine_conf(&self) -> Result<()> {
        let text = format!(
            "ENGINE_PKI=\"{p}\"\nENGINE_PKI_CA=\"{p}/ca.pem\"\nENGINE_PKI_ENGINE_CERT=\"{p}/certs/engine.cer\"\n\
             ENGINE_PKI_TRUST_STORE=\"{p}/.truststore\"\nENGINE_PKI_TRUST_STORE_PASSWORD=\"{pw}\"\n\
             ENGINE_PKI_ENGINE_STORE=\"{p}/keys/engine.p12\"\nENGINE_PKI_ENGINE_STORE_PASSWORD=\"{pw}\"\n\
             ENGINE_PKI_ENGINE_STORE_ALIAS=\"1\"\nENGINE_HTTPS_PKI_TRUST_STORE=\"${{ENGINE_PKI_TRUST_STORE}}\"\n\
             ENGINE_HTTPS_PKI_TRUST_STORE_PASSWORD=\"${{ENGINE_PKI_TRUST_STORE_PASSWORD}}\"\n",
            p = ENGINE_PKI,
            pw = P12_PASSWORD
        );
        self.host.write(
            "/etc/ovirt-engine/engine.conf.d/10-setup-pki.conf",
            text,
            0o640,
        )?;
        Ok(())
    }

    fn save_state(&self, qemu_ca_subject: &str) -> Result<()> {
        let (warn, alert) = self.spec.version.warn_alert_days();
        let state = serde_json::json!({
            "version": self.spec.version.label(),
            "fqdn": self.spec.fqdn,
            "organization": self.organization,
            "ca_subject": self.ca_subject,
            "qemu_ca_subject": qemu_ca_subject,
            "entities": self.entities,
            "backups": self.backups,
            "config": {
                "VdsCertificateValidityInDays": self.spec.version.host_cert_days().to_string(),
                "CertExpirationWarnPeriodInDays": warn.to_string(),
                "CertExpirationAlertPeriodInDays": alert.to_string(),
                "OrganizationName": self.organization,
                "SignCertTimeoutInSeconds": "30",
                "EncryptHostCommunication": "true",
            },
        });
        std::fs::write(
            self.host.state("ovirt-engine.json"),
            serde_json::to_vec_pretty(&state)?,
        )?;
        Ok(())
    }

    /// Runs the real `openssl` in the PKI directory, as the scripts do after `cd "${PKIDIR}"`.
    pub(crate) fn openssl(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Vec<u8>> {
        run_openssl(&self.pki, args, env)
    }
}

/// Runs the real `openssl` with `args` in `dir`.
pub(crate) fn run_openssl(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {} (in {}): {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Runs a real tool; returns its stdout.
pub(crate) fn run_tool(tool: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool} (openssh-client is needed for vmconsole)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{tool} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// `YYYYMMDDHHMMSS` (UTC) for `ssh-keygen -V`.
fn ssh_time(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `-startdate/-days` as the scripts pass them (yesterday, N days), or explicit
/// `-startdate/-enddate` for a test's lifetime.
fn validity_args(life: Option<Lifetime>, days: u32) -> Vec<String> {
    let now = crate::sim::ovirt::unix_now();
    match life {
        None => vec![
            "-startdate".into(),
            openssl_time(now - 86_400),
            "-days".into(),
            days.to_string(),
        ],
        Some(l) => vec![
            "-startdate".into(),
            openssl_time(now - l.started_ago.as_secs() as i64),
            "-enddate".into(),
            openssl_time(now + l.expires_in_secs),
        ],
    }
}

/// `YYMMDDHHMMSSZ` (UTCTime) before 2050, `YYYYMMDDHHMMSSZ` after, as `openssl ca` accepts.
pub fn openssl_time(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let body = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if (1950..2050).contains(&t.year()) {
        format!("{:02}{body}", t.year() % 100)
    } else {
        format!("{:04}{body}", t.year())
    }
}

/// `date +%Y%m%d%H%M%S` of `days_ago` days back (UTC).
fn backup_stamp(days_ago: i64) -> String {
    let secs = crate::sim::ovirt::unix_now() - days_ago * 86_400;
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn days_dur(days: u64) -> std::time::Duration {
    std::time::Duration::from_secs(days * 86_400)
}

/// engine-setup appends a random 10000–99999 to the CA CN.
fn random_suffix() -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok();
    10_000 + u32::from_le_bytes(b) % 90_000
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_times_switch_to_generalized_after_2049() {
        assert_eq!(openssl_time(0), "700101000000Z");
        assert_eq!(openssl_time(2_524_608_000), "20500101000000Z");
    }
}
