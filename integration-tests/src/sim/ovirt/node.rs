//! The simulated oVirt host (VDSM node) PKI: `/etc/pki/vdsm`, `/etc/pki/libvirt`,
//! `/etc/pki/CA` laid out as reference A8, with the modes of A8 and the owners recorded.
//!
//! Enrollment follows A9: the host makes its key and a `-subj /` CSR with the real
//! `openssl req -new -newkey rsa:2048 -nodes`, the CSR is copied to the engine's
//! `requests/<fqdn>.req` (`requests-qemu/` for the QEMU certificate), and the engine signs it
//! with `pki-enroll-request.sh`'s `openssl ca` line, so the engine's `database.txt`,
//! `certs/<fqdn>.cer` and serial copies record every host. The files are then copied to the
//! host as the `ovirt-host-deploy-*-certificates` roles copy them.
//!
//! Owners (`vdsm:kvm`, `root:qemu`, `openvswitch:openvswitch`) are applied with `chown` when the
//! user and group exist on this machine; either way the intended owner of every file is recorded
//! in `ROOT/.sim/ovirt-node-owners.json`, because test machines rarely have a `vdsm` user.
//!
//! The host also gets the simulated `systemctl` with `libvirtd` and `vdsmd` units that refuse to
//! start while `certs/vdsmcert.pem` is expired or missing (A12), and `/usr/bin/openssl` linked
//! to the real one for the agent's actions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::engine::{Ca, Engine, run_openssl};
use crate::sim::{Lifetime, SimHost};

/// The VDSM certificate that libvirtd and vdsmd need.
pub const VDSM_CERT: &str = "/etc/pki/vdsm/certs/vdsmcert.pem";
/// The serial console's host key (`ovirt_vmconsole_key_file`).
pub const VMCONSOLE_KEY: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa";
/// Its OpenSSH host certificate (`ovirt_vmconsole_cert_file`).
pub const VMCONSOLE_CERT: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub";
/// The serial console's sshd, restarted by `ovirt-host-deploy-vm-console`.
pub const VMCONSOLE_SSHD: &str = "ovirt-vmconsole-host-sshd";

/// What to build.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Host FQDN (also the certificate CN and `DNS:` SAN).
    pub fqdn: String,
    /// VDSM certificate lifetime; `None`: the engine version's `VdsCertificateValidityInDays`.
    pub vdsm: Option<Lifetime>,
    /// libvirt-migrate (QEMU CA) certificate lifetime; `None`: the default.
    pub qemu: Option<Lifetime>,
    /// Whether OVN is deployed (`/etc/pki/vdsm/ovn`).
    pub ovn: bool,
    /// vmconsole host certificate lifetime (`/etc/pki/ovirt-vmconsole`); `None`: the default.
    pub vmconsole: Option<Lifetime>,
    /// Write some other CA into `certs/cacert.pem` (a host that trusts the wrong CA, e.g. after
    /// a botched restore), so the VDSM certificate does not chain to the CA the host holds.
    pub foreign_ca: bool,
    /// libvirtd configured the pre-4.40 vdsm way (`LIBVIRTD_ARGS=--listen`, no socket
    /// activation: oVirt 4.3 and older) instead of vdsm ≥ 4.40's `libvirtd-tls.socket`.
    pub libvirtd_listen: bool,
}

impl NodeSpec {
    /// Defaults: version lifetimes, OVN on, the engine's CA.
    pub fn new(fqdn: &str) -> Self {
        NodeSpec {
            fqdn: fqdn.to_owned(),
            vdsm: None,
            qemu: None,
            ovn: true,
            vmconsole: None,
            foreign_ca: false,
            libvirtd_listen: false,
        }
    }
}

/// A built node.
#[derive(Clone, Debug)]
pub struct Node {
    /// The host it lives on.
    pub host: SimHost,
    /// What it was built from.
    pub spec: NodeSpec,
    /// Intended `user:group` of every file and directory written, by host path.
    pub owners: BTreeMap<String, String>,
}

/// Builds the host PKI of `spec` on `host`, enrolled with `engine`.
pub fn build_node(host: &SimHost, spec: &NodeSpec, engine: &Engine) -> Result<Node> {
    let mut node = Node {
        host: host.clone(),
        spec: spec.clone(),
        owners: BTreeMap::new(),
    };
    let fqdn = &spec.fqdn;
    let org = &engine.organization;
    let san = format!("DNS:{fqdn}");
    let host_days = engine.spec.version.host_cert_days();
    let work = host.state("enroll");
    std::fs::create_dir_all(&work)?;

    for d in [
        "/etc/pki/vdsm",
        "/etc/pki/vdsm/certs",
        "/etc/pki/vdsm/keys",
        "/etc/pki/vdsm/libvirt-spice",
        "/etc/pki/vdsm/libvirt-vnc",
        "/etc/pki/vdsm/libvirt-migrate",
    ] {
        node.dir(d, 0o755, "vdsm:kvm")?;
    }
    node.dir("/etc/pki/libvirt", 0o755, "root:root")?;
    node.dir("/etc/pki/libvirt/private", 0o755, "root:root")?;
    node.dir("/etc/pki/CA", 0o755, "root:root")?;

    // VDSM: key on the host, CSR signed on the engine.
    let (vdsm_key, vdsm_cert) = enroll(
        &work,
        engine,
        fqdn,
        &format!("/O={org}/CN={fqdn}"),
        &san,
        host_days,
        spec.vdsm,
        Ca::Engine,
    )?;
    let ca = if spec.foreign_ca {
        foreign_ca(&work)?
    } else {
        engine.ca_pem()?.into_bytes()
    };
    node.file("/etc/pki/vdsm/certs/cacert.pem", &ca, 0o644, "root:kvm")?;
    node.file(
        "/etc/pki/vdsm/certs/vdsmcert.pem",
        &vdsm_cert,
        0o644,
        "root:kvm",
    )?;
    node.file(
        "/etc/pki/vdsm/keys/vdsmkey.pem",
        &vdsm_key,
        0o440,
        "vdsm:kvm",
    )?;
    // Static SASL password file shipped by the vdsm package.
    node.file(
        "/etc/pki/vdsm/keys/libvirt_password",
        b"shibboleth",
        0o600,
        "vdsm:kvm",
    )?;
    for dir in ["libvirt-spice", "libvirt-vnc"] {
        node.file(
            &format!("/etc/pki/vdsm/{dir}/ca-cert.pem"),
            &ca,
            0o644,
            "root:kvm",
        )?;
        node.file(
            &format!("/etc/pki/vdsm/{dir}/server-cert.pem"),
            &vdsm_cert,
            0o644,
            "root:kvm",
        )?;
        node.file(
            &format!("/etc/pki/vdsm/{dir}/server-key.pem"),
            &vdsm_key,
            0o440,
            "vdsm:kvm",
        )?;
    }
    node.file(
        "/etc/pki/libvirt/clientcert.pem",
        &vdsm_cert,
        0o644,
        "root:kvm",
    )?;
    node.file(
        "/etc/pki/libvirt/private/clientkey.pem",
        &vdsm_key,
        0o440,
        "vdsm:kvm",
    )?;
    node.file("/etc/pki/CA/cacert.pem", &ca, 0o644, "root:kvm")?;

    // libvirt-migrate: separate key, signed by the QEMU CA.
    let (mig_key, mig_cert) = enroll(
        &work,
        engine,
        fqdn,
        &format!("/O={org}/CN={fqdn}/OU=qemu"),
        &san,
        host_days,
        spec.qemu,
        Ca::Qemu,
    )?;
    node.file(
        "/etc/pki/vdsm/libvirt-migrate/ca-cert.pem",
        engine.qemu_ca_pem()?.as_bytes(),
        0o644,
        "root:kvm",
    )?;
    node.file(
        "/etc/pki/vdsm/libvirt-migrate/server-cert.pem",
        &mig_cert,
        0o644,
        "root:kvm",
    )?;
    node.file(
        "/etc/pki/vdsm/libvirt-migrate/server-key.pem",
        &mig_key,
        0o440,
        "root:qemu",
    )?;
    for (link, target) in [
        ("client-cert.pem", "server-cert.pem"),
        ("client-key.pem", "server-key.pem"),
    ] {
        let p = host.path(&format!("/etc/pki/vdsm/libvirt-migrate/{link}"));
        std::os::unix::fs::symlink(target, &p)
            .with_context(|| format!("linking {}", p.display()))?;
    }

    if spec.ovn {
        node.dir("/etc/pki/vdsm/ovn", 0o755, "openvswitch:openvswitch")?;
        let (ovn_key, ovn_cert) = enroll(
            &work,
            engine,
            &format!("{fqdn}-ovn"),
            &format!("/O={org}/CN={fqdn}"),
            &san,
            host_days,
            None,
            Ca::Engine,
        )?;
        node.file(
            "/etc/pki/vdsm/ovn/ca-cert.pem",
            engine.ca_pem()?.as_bytes(),
            0o644,
            "openvswitch:openvswitch",
        )?;
        node.file(
            "/etc/pki/vdsm/ovn/ovn-cert.pem",
            &ovn_cert,
            0o644,
            "openvswitch:openvswitch",
        )?;
        node.file(
            "/etc/pki/vdsm/ovn/ovn-key.pem",
            &ovn_key,
            0o440,
            "openvswitch:openvswitch",
        )?;
    }
    let vmconsole = engine
        .entities
        .iter()
        .any(|e| e.name == super::engine::VMCONSOLE_HOST);
    if vmconsole {
        vmconsole_host(&mut node, engine, &work, host_days)?;
    }
    std::fs::remove_dir_all(&work)?;
    libvirtd_and_vdsmd(host, node.spec.libvirtd_listen)?;
    if vmconsole {
        // `ovirt-host-deploy-vm-console` restarts it after installing the certificate. It
        // needs no valid certificate to start: sshd loads an expired or non-matching
        // HostCertificate without failing (clients refuse it) — unverified on a real host,
        // taken from OpenSSH's sshd.c, which logs a mismatch and goes on.
        crate::sim::systemd::define_unit_as(host, VMCONSOLE_SSHD, &[], &[VMCONSOLE_KEY], None)?;
        host.link_real_tool("/usr/bin/ssh-keygen")?;
    }
    host.link_real_tool("/usr/bin/openssl")?;
    std::fs::write(
        host.state("ovirt-node-owners.json"),
        serde_json::to_vec_pretty(&node.owners)?,
    )?;
    Ok(node)
}

/// libvirtd reads the VDSM certificate (A8 consumers) for its TLS listener and refuses to start
/// when it has expired (A12). Two layouts, both from vdsm's
/// `lib/vdsm/tool/configurators/libvirt.py`:
/// - vdsm ≥ 4.40 (oVirt 4.4 and 4.5, the default here; commit a5218e80a "tool: Adjust to
///   libvirt's systemd socket activation"): `LIBVIRTD_ARGS=` empty in `/etc/sysconfig/libvirtd`,
///   and libvirtd.service made to require `libvirtd-tls.socket` by a symlink in
///   `/etc/systemd/system/libvirtd.service.requires/` (`_inject_unit_requirement`). libvirtd
///   loads the certificate for the TLS socket systemd passes it, so it needs it only while
///   that socket unit is active. The socket unit's text is libvirt's
///   `src/remote/libvirtd-tls.socket.in` as we read it (unverified against a packaged file).
/// - `libvirtd_listen` (vdsm before 4.40): `listen_tls` on in `libvirtd.conf` and
///   `LIBVIRTD_ARGS=--listen` (libvirt's shipped unit: `ExecStart=/usr/sbin/libvirtd
///   $LIBVIRTD_ARGS`); `listen_tls` only takes effect with `--listen` (libvirt
///   `libvirtd.conf`), so libvirtd started without it needs no certificate.
///
/// vdsmd `Requires=` libvirtd and fails when libvirtd cannot start; it does not itself refuse
/// an expired certificate (Python's `load_cert_chain` does not check validity; unverified on a
/// real host).
pub fn libvirtd_and_vdsmd(host: &SimHost, listen: bool) -> Result<()> {
    use crate::sim::systemd;
    systemd::define_unit(host, "libvirtd", &[VDSM_CERT])?;
    if listen {
        host.write("/etc/sysconfig/libvirtd", "LIBVIRTD_ARGS=--listen\n", 0o644)?;
        systemd::define_exec(
            host,
            "libvirtd",
            "/usr/sbin/libvirtd $LIBVIRTD_ARGS",
            Some("--listen"),
            &[],
        )?;
    } else {
        host.write(
            "/etc/sysconfig/libvirtd",
            "## beginning of configuration section by vdsm-4.40.0\nDAEMON_COREFILE_LIMIT=unlimited\nLIBVIRTD_ARGS=\n## end of configuration section by vdsm-4.40.0\n",
            0o644,
        )?;
        host.write(
            "/usr/lib/systemd/system/libvirtd-tls.socket",
            "[Unit]\nDescription=Libvirt TLS IP socket\nBefore=libvirtd.service\nBindsTo=libvirtd.socket\nAfter=libvirtd.socket\n\n[Socket]\nListenStream=16514\nService=libvirtd.service\n\n[Install]\nWantedBy=sockets.target\n",
            0o644,
        )?;
        let requires = host.path("/etc/systemd/system/libvirtd.service.requires");
        std::fs::create_dir_all(&requires)?;
        std::os::unix::fs::symlink(
            "../../../../usr/lib/systemd/system/libvirtd-tls.socket",
            requires.join("libvirtd-tls.socket"),
        )?;
        systemd::define_socket(host, "libvirtd-tls.socket")?;
        systemd::define_exec(
            host,
            "libvirtd",
            "/usr/sbin/libvirtd $LIBVIRTD_ARGS",
            None,
            &[],
        )?;
        systemd::certs_with_socket(host, "libvirtd", "libvirtd-tls.socket")?;
    }
    systemd::define_unit(host, "vdsmd", &[])?;
    systemd::define_exec(
        host,
        "vdsmd",
        "/usr/libexec/vdsm/daemonAdapter -0 /dev/null -1 /dev/null -2 /dev/null /usr/libexec/vdsm/vdsmd",
        None,
        &["libvirtd"],
    )
}

/// `ovirt-host-deploy-vm-console-certificates` (oVirt/ovirt-engine
/// `packaging/ansible-runner-service-project/project/roles/ovirt-host-deploy-vm-console-certificates`):
/// key and `-subj /` CSR on the host, `pki-enroll-request.sh --name=<fqdn>-ssh
/// --subject=/O=<org>/CN=<fqdn>` (no SAN), `pki-enroll-openssh-cert.sh --host --id=<fqdn>
/// --principals=<fqdn>`, then `/etc/pki/ovirt-vmconsole/ca.pub` (the engine CA key as an
/// OpenSSH key, 0644), `host-ssh_host_rsa-cert.pub` (0644) and `host-ssh_host_rsa`
/// (`ovirt-vmconsole:ovirt-vmconsole` 0400, as the role's `copy` task sets them).
/// Unverified: the owner and mode of `ca.pub` and of the certificate — the role's `copy`
/// tasks name none, so they are Ansible's defaults (the connecting user, root, and the
/// umask's 0644), not read off a real host.
pub fn vmconsole_host(
    node: &mut Node,
    engine: &Engine,
    work: &std::path::Path,
    days: u32,
) -> Result<()> {
    let fqdn = node.spec.fqdn.clone();
    let name = format!("{fqdn}-ssh");
    let (key, csr) = host_key_and_csr(work, "vmconsole")?;
    std::fs::copy(&csr, engine.path(&format!("requests/{name}.req")))?;
    let life = node.spec.vmconsole;
    engine.enroll_request(
        &name,
        &format!("/O={}/CN={fqdn}", engine.organization),
        None,
        None,
        days,
        life,
        Ca::Engine,
    )?;
    let cert = engine.enroll_openssh(&name, &fqdn, true, &fqdn, days, life)?;
    let dir = super::engine::VMCONSOLE_PKI;
    node.dir(dir, 0o755, "root:root")?;
    let ca_pub = std::fs::read(engine.host.path(&format!("{dir}/ca.pub")))?;
    node.file(&format!("{dir}/ca.pub"), &ca_pub, 0o644, "root:root")?;
    node.file(VMCONSOLE_CERT, &std::fs::read(cert)?, 0o644, "root:root")?;
    node.file(
        VMCONSOLE_KEY,
        &std::fs::read(&key)?,
        0o400,
        "ovirt-vmconsole:ovirt-vmconsole",
    )?;
    Ok(())
}

/// The host's side of every oVirt enrollment (host-deploy's `openssl req -new -newkey rsa:2048
/// -nodes -subj /`; the engine sets the subject when it signs): `work/<name>.key` and
/// `work/<name>.csr`.
fn host_key_and_csr(work: &std::path::Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let key = work.join(format!("{name}.key"));
    let csr = work.join(format!("{name}.csr"));
    run_openssl(
        work,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
        ],
        &[],
    )?;
    Ok((key, csr))
}

/// Host-side key and CSR, engine-side `pki-enroll-request.sh`; returns `(key, cert)` bytes.
#[allow(clippy::too_many_arguments)]
fn enroll(
    work: &std::path::Path,
    engine: &Engine,
    name: &str,
    subject: &str,
    san: &str,
    days: u32,
    life: Option<Lifetime>,
    ca: Ca,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (key, csr) = host_key_and_csr(work, name)?;
    let (_, req_dir) = ca.dirs();
    std::fs::copy(&csr, engine.path(&format!("{req_dir}/{name}.req")))?;
    let cert = engine.enroll_request(name, subject, Some(san), None, days, life, ca)?;
    Ok((std::fs::read(&key)?, std::fs::read(cert)?))
}

/// A self-signed CA that is not the engine's.
fn foreign_ca(work: &std::path::Path) -> Result<Vec<u8>> {
    let out = work.join("foreign-ca.pem");
    run_openssl(
        work,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&work.join("foreign-ca.key")),
            "-out",
            &s(&out),
            "-days",
            "3650",
            "-subj",
            "/C=US/O=elsewhere.test/CN=restored-from-backup.elsewhere.test.11111",
        ],
        &[],
    )?;
    Ok(std::fs::read(out)?)
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

impl Node {
    fn dir(&mut self, host_path: &str, mode: u32, owner: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.host.path(host_path);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        self.own(host_path, p, owner)
    }

    fn file(&mut self, host_path: &str, bytes: &[u8], mode: u32, owner: &str) -> Result<()> {
        let p = self.host.write(host_path, bytes, mode)?;
        self.own(host_path, p, owner)
    }

    fn own(&mut self, host_path: &str, p: PathBuf, owner: &str) -> Result<()> {
        if owner_exists(owner) {
            let st = Command::new("chown")
                .arg(owner)
                .arg(&p)
                .status()
                .context("running chown")?;
            anyhow::ensure!(st.success(), "chown {owner} {}", p.display());
        }
        self.owners.insert(host_path.to_owned(), owner.to_owned());
        Ok(())
    }
}

/// True when both the user and the group of `user:group` exist here.
fn owner_exists(owner: &str) -> bool {
    let Some((user, group)) = owner.split_once(':') else {
        return false;
    };
    let known = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    known("passwd", user) && known("group", group)
}
