//! Simulated hosts.
//!
//! A simulated host is a root directory laid out like the real machine (`/etc/pki/vdsm/...`,
//! `/usr/lib/vmware-vmafd/bin/vecs-cli`, ...) plus tools. Each tool is a small shell wrapper at
//! its real path under the root that runs `certfleet-sim --root ROOT TOOL ARGS...`; the
//! simulator keeps its private state under `ROOT/.sim/`. An agent started with `--root ROOT`
//! finds the tools where the real ones would be and never knows the difference. Certificates are
//! real (rcgen or the real `openssl`), with chosen lifetimes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub mod clock;
pub mod demo;
pub mod gke;
pub mod kubeadm;
pub mod ovirt;
pub mod systemd;
pub mod vcsa;

/// A simulated host's root directory and the simulator binary its tools call.
#[derive(Clone, Debug)]
pub struct SimHost {
    /// Root directory (absolute).
    pub root: PathBuf,
    /// Path of the `certfleet-sim` binary.
    pub sim_bin: PathBuf,
}

impl SimHost {
    /// A host rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>, sim_bin: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join(".sim"))
            .with_context(|| format!("creating {}", root.display()))?;
        let root = std::fs::canonicalize(&root)?;
        Ok(SimHost {
            root,
            sim_bin: sim_bin.into(),
        })
    }

    /// A host path under the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// Private simulator state file.
    pub fn state(&self, name: &str) -> PathBuf {
        self.root.join(".sim").join(name)
    }

    /// Writes `contents` at a host path with `mode`, creating parents.
    pub fn write(&self, host_path: &str, contents: impl AsRef<[u8]>, mode: u32) -> Result<PathBuf> {
        let p = self.path(host_path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(p)
    }

    /// Installs a simulated tool at its real host path.
    pub fn install_tool(&self, host_path: &str, tool: &str) -> Result<PathBuf> {
        let script = format!(
            "#!/bin/sh\nexec '{}' --root '{}' {} \"$@\"\n",
            self.sim_bin.display(),
            self.root.display(),
            tool
        );
        self.write(host_path, script, 0o755)
    }

    /// Links a real host tool (e.g. `/usr/bin/openssl`) into the root at the same path.
    pub fn link_real_tool(&self, host_path: &str) -> Result<PathBuf> {
        let p = self.path(host_path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(host_path, &p)?;
        Ok(p)
    }
}

/// Lifetime of a simulated certificate relative to now.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    /// Seconds before now that it became valid.
    pub started_ago: Duration,
    /// Seconds from now until it expires; negative = already expired that long ago.
    pub expires_in_secs: i64,
}

impl Lifetime {
    /// Valid since `age_days` ago, expiring in `days` (negative: expired).
    pub fn days(age_days: u64, days: i64) -> Self {
        Lifetime {
            started_ago: Duration::from_secs(age_days * 86_400),
            expires_in_secs: days * 86_400,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        let now = SystemTime::now();
        let nb = now - self.started_ago;
        let na = if self.expires_in_secs >= 0 {
            now + Duration::from_secs(self.expires_in_secs as u64)
        } else {
            now - Duration::from_secs((-self.expires_in_secs) as u64)
        };
        params.not_before = to_offset(nb);
        params.not_after = to_offset(na);
    }
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).expect("valid time")
}

/// A simulated CA that can sign leaves.
pub struct SimCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA key, PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A simulated leaf certificate.
pub struct SimCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Key, PEM.
    pub key_pem: String,
}

/// Builds a distinguished name from `(type, value)` pairs like `[("C","US"),("CN","vc1")]`.
pub fn dn(parts: &[(&str, &str)]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for (k, v) in parts {
        let t = match *k {
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "CN" => DnType::CommonName,
            other => DnType::CustomDnType(match other {
                "DC" => vec![0, 9, 2342, 19200300, 100, 1, 25],
                _ => panic!("unsupported DN attribute {other}"),
            }),
        };
        d.push(t, *v);
    }
    d
}

impl SimCa {
    /// A self-signed CA (RSA 2048 when `rsa`, else P-256).
    pub fn new(subject: DistinguishedName, life: Lifetime, rsa: bool) -> Result<Self> {
        let key = gen_key(rsa)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = subject;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        life.apply(&mut p);
        let cert = p.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(p, key);
        Ok(SimCa {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// A CA from its certificate and key PEM (e.g. as a simulator stored or found them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(SimCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Signs `params` (subject, SANs, usages and validity already set) for `key`.
    pub fn sign(&self, params: CertificateParams, key: &KeyPair) -> Result<String> {
        Ok(params.signed_by(key, &self.issuer)?.pem())
    }

    /// A leaf signed by this CA. `sans` are DNS names or IPs; `client` adds clientAuth.
    pub fn issue(
        &self,
        subject: DistinguishedName,
        sans: &[&str],
        life: Lifetime,
        rsa: bool,
        client: bool,
    ) -> Result<SimCert> {
        let key = gen_key(rsa)?;
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.distinguished_name = subject;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if client {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        life.apply(&mut p);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(SimCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A leaf with URI SANs only (solution users, service accounts).
    pub fn issue_with_uri(
        &self,
        subject: DistinguishedName,
        uri: &str,
        life: Lifetime,
    ) -> Result<SimCert> {
        let key = gen_key(true)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = subject;
        p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        life.apply(&mut p);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(SimCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A new key: P-256 from ring, or RSA 2048 from the real `openssl` (ring cannot generate RSA
/// keys, and the platforms we simulate use RSA).
pub fn gen_key(rsa: bool) -> Result<KeyPair> {
    if !rsa {
        return Ok(KeyPair::generate()?);
    }
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .context("running openssl genpkey")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8(out.stdout)?;
    Ok(KeyPair::from_pem_and_sign_algo(
        &pem,
        &rcgen::PKCS_RSA_SHA256,
    )?)
}

/// The `certfleet-sim` binary next to the running test or tool (`target/debug/certfleet-sim`).
pub fn default_sim_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("certfleet-sim");
        if p.exists() {
            return p;
        }
    }
    dir.join("certfleet-sim")
}

/// Fails with a clear message if a path does not exist.
pub fn require(path: &Path) -> Result<()> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(())
}

/// For long-running simulator parents (`vcsa-services`): blocks SIGTERM, SIGINT and SIGHUP in
/// this thread (call it before any other thread or child exists, so every thread inherits the
/// mask; children get a clean mask from `std::process`), and waits for them on a thread of
/// their own, which records the signal and sets `stop`. Without this the default action kills
/// the parent at once and its `Drop` guards never run: its slapd and HTTPS children were left
/// running. The parent also becomes the leader of its own process group, so that anything a
/// child leaves behind can be reached as a group.
pub fn stop_on_signals(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    signal: std::sync::Arc<std::sync::atomic::AtomicI32>,
) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    let leader =
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0)).is_ok();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            signal.store(sig as i32, std::sync::atomic::Ordering::SeqCst);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // Anything a child left in the group (grandchildren) gets the same signal; this
            // process has the signals blocked and does not take it.
            if leader {
                let _ = nix::sys::signal::killpg(nix::unistd::getpgrp(), sig);
            }
        }
    });
    Ok(())
}
