//! The role catalogue: for each kind of certificate the fleet knows, what breaks when it
//! expires, how early to warn, and which recipe renews it.
//!
//! This is data, not platform logic: collectors assign a role string, and both the agent
//! (`scan`) and the controller (inventory, metrics, policies) look it up here so that they agree.
//! Sources: `shared/reference/vsphere.md` §4, `ovirt_gke.md` A4/A12/B1/C1, and the seeds.

/// What the fleet knows about a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    /// Role string or prefix (a prefix ends with `.`).
    pub role: &'static str,
    /// Platform the role belongs to.
    pub platform: &'static str,
    /// What stops working when it expires.
    pub impact: &'static str,
    /// Default warning threshold, days before expiry.
    pub warn_days: u32,
    /// Built-in recipe that renews it (empty when renewal is manual).
    pub recipe: &'static str,
}

const fn r(
    role: &'static str,
    platform: &'static str,
    warn_days: u32,
    recipe: &'static str,
    impact: &'static str,
) -> RoleInfo {
    RoleInfo {
        role,
        platform,
        impact,
        warn_days,
        recipe,
    }
}

/// Every known role; exact names first, then prefixes, then the fallback.
pub const ROLES: &[RoleInfo] = &[
    r(
        "vsphere.sts_signing",
        "vsphere",
        90,
        "vsphere-sts",
        "STS token signing: nobody can log in to vCenter (SSO-domain wide), vpxd fails to start, other certificates cannot be replaced",
    ),
    r(
        "vsphere.machine_ssl",
        "vsphere",
        30,
        "vsphere-machine-ssl",
        "Machine SSL: vSphere Client inaccessible, linked vCenters lose this node, integrations pinned to the old certificate break",
    ),
    r(
        "vsphere.solution_user.wcp",
        "vsphere",
        30,
        "vsphere-solution-users",
        "wcp solution user: Workload Management breaks; hosts in Supervisor clusters cannot leave maintenance mode",
    ),
    r(
        "vsphere.solution_user.vpxd-extension",
        "vsphere",
        30,
        "vsphere-solution-users",
        "vpxd-extension solution user: EAM, Auto Deploy, Image Builder and vLCM fail",
    ),
    r(
        "vsphere.solution_user.",
        "vsphere",
        30,
        "vsphere-solution-users",
        "solution user: its services cannot get SAML tokens and fail to start (503, no healthy upstream)",
    ),
    r(
        "vsphere.vmca_root",
        "vsphere",
        365,
        "",
        "VMCA root: nothing new can be issued; every VMCA-signed certificate expires with it",
    ),
    r(
        "vsphere.trusted_root",
        "vsphere",
        30,
        "",
        "trusted root: vpxd does not start if it issued Machine SSL; upgrades fail at stage 2",
    ),
    r(
        "vsphere.trusted_root_crl",
        "vsphere",
        30,
        "",
        "trusted root CRL: revocation checks against this CA fail",
    ),
    r(
        "vsphere.backup",
        "vsphere",
        0,
        "",
        "BACKUP_STORE entry: only the Certificate Status alarm (stale backups should be cleaned up)",
    ),
    r(
        "vsphere.data_encipherment",
        "vsphere",
        30,
        "vsphere-solution-users",
        "data-encipherment: encrypted guest customization data cannot be decrypted",
    ),
    r(
        "vsphere.esxi_host",
        "vsphere",
        30,
        "esxi-hosts",
        "ESXi host certificate: vpxa disconnects (host Not Responding), vMotion and HA fail; renewal needs the host connected and out of maintenance mode",
    ),
    r(
        "vsphere.sms",
        "vsphere",
        30,
        "",
        "SMS self-signed: storage providers (VASA) registration fails",
    ),
    r(
        "vsphere.sts_internal_ssl",
        "vsphere",
        30,
        "",
        "STS_INTERNAL_SSL_CERT (upgraded from 6.0): legacy Lookup Service/STS HTTPS on 7444 fails",
    ),
    r(
        "vsphere.vmdir_ssl",
        "vsphere",
        30,
        "",
        "vmdir certificate (6.x): LDAPS to vmdir and replication partners fail",
    ),
    r(
        "vsphere.vecs.",
        "vsphere",
        30,
        "",
        "VECS entry of an unlisted store: the service that reads the store fails",
    ),
    r(
        "vsphere.",
        "vsphere",
        30,
        "",
        "vCenter certificate: the service that uses it fails",
    ),
    r(
        "ovirt.engine.ca",
        "ovirt",
        365,
        "",
        "engine CA: every host and engine certificate it signed becomes unverifiable; the whole data center is unmanageable",
    ),
    r(
        "ovirt.engine.apache",
        "ovirt",
        60,
        "ovirt-engine",
        "engine web certificate: Administration Portal and REST API unreachable over HTTPS",
    ),
    r(
        "ovirt.engine.",
        "ovirt",
        60,
        "ovirt-engine",
        "engine service certificate: engine cannot talk to hosts, websocket proxy, OVN or imageio",
    ),
    r(
        "ovirt.node.vdsm",
        "ovirt",
        60,
        "ovirt-hosts",
        "VDSM: libvirtd will not start, host goes NonResponsive, VMs cannot be managed or migrated",
    ),
    r(
        "ovirt.engine.vmconsole-proxy-helper",
        "ovirt",
        60,
        "ovirt-engine",
        "vmconsole proxy helper (engine side of the serial console proxy): VM serial consoles through the engine stop working",
    ),
    r(
        "ovirt.engine.vmconsole-proxy-host",
        "ovirt",
        60,
        "ovirt-engine",
        "vmconsole proxy host key certificate (X.509 and OpenSSH): users' ssh to the serial console proxy fails host verification",
    ),
    r(
        "ovirt.engine.vmconsole-proxy-user",
        "ovirt",
        60,
        "ovirt-engine",
        "vmconsole proxy user certificate (X.509 and OpenSSH): the proxy cannot log in to hosts, VM serial consoles fail",
    ),
    r(
        "ovirt.node.vmconsole",
        "ovirt",
        60,
        "ovirt-hosts",
        "host vmconsole certificate (/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub, engine certs/<fqdn>-ssh*): the proxy rejects the host, VM serial consoles on it fail",
    ),
    r(
        "ovirt.node.ca",
        "ovirt",
        365,
        "",
        "host copy of the engine CA: host cannot verify the engine",
    ),
    r(
        "ovirt.node.",
        "ovirt",
        60,
        "ovirt-hosts",
        "host libvirt/spice/vnc certificate: consoles and live migration fail",
    ),
    r(
        "ovirt.engine.qemu_ca",
        "ovirt",
        365,
        "",
        "engine QEMU CA: host libvirt-migrate certificates become unverifiable; live migration fails",
    ),
    r(
        "ovirt.engine.apache_ca",
        "ovirt",
        30,
        "",
        "third-party CA of the engine web certificate: browsers and REST clients reject the portal",
    ),
    r(
        "ovirt.engine.backup",
        "ovirt",
        0,
        "",
        "superseded copy kept by the engine PKI scripts (backup or openssl serial copy): nothing uses it",
    ),
    r(
        "ovirt.node.qemu_ca",
        "ovirt",
        365,
        "",
        "host copy of the QEMU CA: live migration TLS fails",
    ),
    r(
        "ovirt.node.backup",
        "ovirt",
        0,
        "",
        "backup copy on the host: nothing uses it",
    ),
    r(
        "gke.admin_cluster.ca",
        "gke",
        180,
        "gke-admin-ca",
        "admin cluster CA: admin kubeconfig stops working, user clusters cannot be managed",
    ),
    r(
        "gke.user_cluster.ca",
        "gke",
        180,
        "gke-user-ca",
        "user cluster CA: kubeconfigs stop working, control plane components cannot authenticate",
    ),
    r(
        "gke.admin_cluster.client",
        "gke",
        30,
        "",
        "admin kubeconfig client certificate: gkectl and kubectl against the admin cluster are refused",
    ),
    r(
        "gke.user_cluster.client",
        "gke",
        30,
        "",
        "user cluster kubeconfig client certificate: kubectl with this kubeconfig is refused; fetch a new one from the admin cluster",
    ),
    r(
        "gke.vcenter_ca",
        "gke",
        90,
        "",
        "vCenter CA trusted by the clusters (vCenter.caCertPath): cluster operations against vCenter fail after a vCenter CA change",
    ),
    r(
        "kubeadm.etcd.ca",
        "kubeadm",
        365,
        "",
        "etcd CA: etcd peers and the API server cannot authenticate to etcd",
    ),
    r(
        "kubeadm.front-proxy-ca",
        "kubeadm",
        365,
        "",
        "front-proxy CA: aggregated APIs (metrics-server, …) stop working",
    ),
    r(
        "kubeadm.kubelet.client",
        "kubeadm",
        30,
        "",
        "kubelet client certificate (rotated by the kubelet itself): the node goes NotReady if rotation stalled",
    ),
    r(
        "gke.",
        "gke",
        90,
        "gke-user-ca",
        "GKE on VMware certificate: cluster access fails",
    ),
    r(
        "kubeadm.ca",
        "kubeadm",
        365,
        "",
        "cluster CA: every component certificate becomes unverifiable",
    ),
    r(
        "kubeadm.",
        "kubeadm",
        30,
        "kubeadm-certs",
        "control-plane certificate: API server, etcd or kubelet client authentication fails",
    ),
    r(
        "kubeconfig.client",
        "kubernetes",
        30,
        "",
        "kubeconfig client certificate: kubectl with this kubeconfig is refused",
    ),
    r(
        "kubeconfig.ca",
        "kubernetes",
        90,
        "",
        "kubeconfig CA data: kubectl cannot verify the API server",
    ),
    r(
        "endpoint.",
        "any",
        30,
        "",
        "served TLS certificate: clients see certificate errors",
    ),
    r(
        "file.",
        "any",
        30,
        "files",
        "certificate file: the service using it fails TLS",
    ),
    r(
        "",
        "any",
        30,
        "",
        "unknown use: check what reads this certificate",
    ),
];

/// The catalogue entry for `role`: an exact match, else the longest matching prefix.
pub fn lookup(role: &str) -> &'static RoleInfo {
    ROLES
        .iter()
        .find(|r| r.role == role)
        .or_else(|| {
            ROLES
                .iter()
                .filter(|r| r.role.ends_with('.') && role.starts_with(r.role))
                .max_by_key(|r| r.role.len())
        })
        .unwrap_or(&ROLES[ROLES.len() - 1])
}

/// The longest warning window of any role, in seconds: a certificate further from its
/// not-after than this is `Ok` whatever its role.
pub fn longest_warning_secs() -> i64 {
    ROLES
        .iter()
        .map(|r| i64::from(r.warn_days) * 86_400)
        .max()
        .unwrap_or(0)
}

/// Urgency of a certificate with `not_after` under its role's threshold, at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Past its not-after.
    Expired,
    /// Inside the role's warning window.
    Expiring,
    /// Fine.
    Ok,
}

impl Status {
    /// Status from seconds-left and the role's threshold.
    pub fn of(role: &str, not_after: i64, now: i64) -> Status {
        let left = not_after - now;
        if left <= 0 {
            Status::Expired
        } else if left <= i64::from(lookup(role).warn_days) * 86_400 {
            Status::Expiring
        } else {
            Status::Ok
        }
    }

    /// Lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Expired => "expired",
            Status::Expiring => "expiring",
            Status::Ok => "ok",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_expiring_beyond_the_longest_warning() {
        let longest = longest_warning_secs();
        // The CAs warn a year ahead (a new root must reach every trust store first).
        assert_eq!(longest, 365 * 86_400);
        assert_eq!(
            Status::of("vsphere.vmca_root", longest, 0),
            Status::Expiring
        );
        assert_eq!(
            Status::of("vsphere.sts_signing", longest, 0),
            Status::Ok,
            "shorter windows stay shorter"
        );
        for r in ROLES {
            let role = if r.role.ends_with('.') {
                format!("{}x", r.role)
            } else {
                r.role.to_owned()
            };
            assert_eq!(Status::of(&role, longest + 1, 0), Status::Ok, "{role}");
        }
    }

    #[test]
    fn exact_then_longest_prefix_then_fallback() {
        assert_eq!(lookup("vsphere.sts_signing").warn_days, 90);
        assert_eq!(
            lookup("vsphere.solution_user.wcp").role,
            "vsphere.solution_user.wcp"
        );
        assert_eq!(
            lookup("vsphere.solution_user.machine").role,
            "vsphere.solution_user."
        );
        assert_eq!(lookup("ovirt.node.libvirt_spice").recipe, "ovirt-hosts");
        assert!(
            lookup("ovirt.engine.vmconsole-proxy-host")
                .impact
                .contains("serial console")
        );
        assert_eq!(lookup("ovirt.node.vmconsole").recipe, "ovirt-hosts");
        assert_eq!(lookup("nonsense").role, "");
    }

    #[test]
    fn status_uses_the_role_threshold() {
        let now = 1_000_000_000;
        assert_eq!(
            Status::of("vsphere.sts_signing", now + 80 * 86_400, now),
            Status::Expiring
        );
        assert_eq!(
            Status::of("vsphere.machine_ssl", now + 80 * 86_400, now),
            Status::Ok
        );
        assert_eq!(
            Status::of("vsphere.machine_ssl", now - 1, now),
            Status::Expired
        );
    }
}
