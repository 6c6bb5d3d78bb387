//! A simulated GKE on VMware (Google Distributed Cloud for VMware) admin workstation, laid out
//! as reference B6 describes: `admin-cluster.yaml` and user cluster configs in `/home/ubuntu`,
//! the admin `kubeconfig` and `USER_CLUSTER_NAME-kubeconfig` files gkectl writes, the vCenter
//! CA, and a simulated `gkectl` (see [`gkectl`]) whose CA rotation state lives in
//! `ROOT/.sim/gke.json`.
//!
//! Certificates are real (rcgen) with chosen lifetimes. A user cluster can be built mid-rotation:
//! its kubeconfig then trusts two CAs (`certificate-authority-data` holds bundle `[1 2]`), and
//! gkectl reports the matching stage. The simulated kubeadm node lives in [`super::kubeadm`];
//! its tool is dispatched from here because `certfleet-sim` routes `kubeadm` to this module.

pub mod gkectl;
pub mod kubeconfig;
pub mod kubectl;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Lifetime, SimCa, SimHost, dn};

/// Runs simulated tool `tool` of this platform; returns the exit code.
pub fn run_tool(host: &SimHost, tool: &str, args: &[String]) -> Result<i32> {
    match tool {
        "gkectl" => gkectl::run(host, args),
        "kubectl" => kubectl::run(host, args),
        "kubeadm" => super::kubeadm::run(host, args),
        "crictl" => super::kubeadm::crictl(host, args),
        other => anyhow::bail!("no simulated gke tool {other:?}"),
    }
}

/// Where a cluster's CA rotation stands (reference B2 phases; phase 1 and 5 are `Steady`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// One CA (`ca_version`) everywhere: before any rotation, or after one completed.
    Steady,
    /// Phase 2: bundle `[old new]` everywhere; certificates still from the old CA.
    NewCaTrusted,
    /// Phase 3: control-plane certificates re-issued from the new CA; old CA signs CSRs.
    ControlPlaneReissued,
    /// Phase 4: the new CA signs CSRs; nodes restarted with it.
    SignerSwitched,
}

impl Stage {
    /// The stage after this one (rotations only move forward).
    pub fn next(self) -> Stage {
        match self {
            Stage::NewCaTrusted => Stage::ControlPlaneReissued,
            Stage::ControlPlaneReissued => Stage::SignerSwitched,
            Stage::SignerSwitched | Stage::Steady => Stage::Steady,
        }
    }
}

/// A CA's certificate and key, kept so later simulated steps can sign with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaMaterial {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM key.
    pub key_pem: String,
}

/// One cluster's CA rotation state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster name (the `name` of its config).
    pub name: String,
    /// `CAVersion`: the newest CA's version.
    pub ca_version: u32,
    /// Rotation stage.
    pub stage: Stage,
    /// Advance one stage after every `status` call (reference B2: "one per status call").
    pub advance_on_status: bool,
    /// Appended to the status message after an upgrade (`Last Leaf Certificates Rotation
    /// Version: 1.16.0-gke.0.`).
    #[serde(default)]
    pub leaf_rotation_version: Option<String>,
    /// CAs by version.
    pub cas: BTreeMap<u32, CaMaterial>,
    /// API server URL of the cluster (user clusters).
    #[serde(default)]
    pub server: String,
    /// Serve certificates from this CA version instead of the one the stage implies (a
    /// control plane that did not pick up its new certificates).
    #[serde(default)]
    pub serving_override: Option<u32>,
    /// `admin.conf` of the `admin` secret in namespace `<cluster name>` of the admin cluster:
    /// the user cluster's admin kubeconfig as the admin cluster currently issues it (reference
    /// B2, "get secret admin -n USER_CLUSTER_NAME"). Empty for the admin cluster itself.
    #[serde(default)]
    pub admin_conf: String,
}

impl ClusterState {
    /// The CA version whose certificates the API server serves: the old CA until the second
    /// half of a rotation re-issues the control-plane certificates (reference B2 phase 3, B3
    /// `--complete`).
    pub fn serving_version(&self) -> u32 {
        if let Some(v) = self.serving_override {
            return v;
        }
        match self.stage {
            Stage::NewCaTrusted => self.ca_version.saturating_sub(1),
            _ => self.ca_version,
        }
    }

    /// CA versions the API server accepts client certificates from: both while a rotation
    /// is in progress, only the newest otherwise (the old CA is revoked at the end).
    pub fn client_versions(&self) -> Vec<u32> {
        match self.stage {
            Stage::Steady => vec![self.ca_version],
            _ => vec![self.ca_version.saturating_sub(1), self.ca_version],
        }
    }

    /// Whether a client using kubeconfig `text` gets through to this cluster's API server:
    /// its CA data must hold the serving CA and its client certificate must be signed by an
    /// accepted CA. The error is what kubectl prints.
    pub fn check_access(&self, text: &str) -> std::result::Result<(), String> {
        let serving = self
            .cas
            .get(&self.serving_version())
            .map(|c| c.cert_pem.trim().to_owned())
            .unwrap_or_default();
        let trusted = kubeconfig::first_cluster_ca(text)
            .is_some_and(|ca| !serving.is_empty() && ca.contains(&serving));
        if !trusted {
            return Err(format!(
                "Unable to connect to the server: tls: failed to verify certificate: x509: certificate signed by unknown authority (server {})",
                self.server
            ));
        }
        let client = kubeconfig::first_user_cert(text).unwrap_or_default();
        // An expired (or not yet valid) client certificate fails the API server's x509
        // verification: the request is unauthenticated and kubectl prints the same 401 line
        // as for an unknown signer (kubernetes `staging/src/k8s.io/apiserver/pkg/
        // authentication/request/x509/x509.go` verifies with the current time; the 401 line
        // is kubectl's for any failed authentication). Unverified against a real cluster:
        // the exact server log text.
        if !cert_currently_valid(&client) {
            return Err("error: You must be logged in to the server (Unauthorized)".into());
        }
        let accepted = self.client_versions().iter().any(|v| {
            self.cas
                .get(v)
                .is_some_and(|ca| signed_by(&client, &ca.cert_pem))
        });
        if !accepted {
            return Err("error: You must be logged in to the server (Unauthorized)".into());
        }
        Ok(())
    }

    /// Re-issues the `admin` secret's kubeconfig for the current stage: trust bundle
    /// `[old new]` while rotating, `[new]` once done; client certificate from the CA that
    /// issues control-plane certificates at this stage.
    pub fn refresh_admin_secret(&mut self) -> Result<()> {
        let v = self.ca_version;
        let old = v.saturating_sub(1);
        let (bundle, signer) = match self.stage {
            Stage::Steady => (vec![v], v),
            Stage::NewCaTrusted => (vec![old, v], old),
            Stage::ControlPlaneReissued | Stage::SignerSwitched => (vec![old, v], v),
        };
        let mat = |n: u32| {
            self.cas
                .get(&n)
                .with_context(|| format!("cluster {}: no CA version {n}", self.name))
        };
        let signer = mat(signer)?;
        let ca = SimCa::from_pem(&signer.cert_pem, &signer.key_pem)?;
        let client = ca.issue(
            dn(&[("O", "system:masters"), ("CN", "kubernetes-admin")]),
            &[],
            super::Lifetime::days(0, 365),
            signer.key_pem.contains("RSA"),
            true,
        )?;
        let pems = bundle
            .iter()
            .map(|n| mat(*n).map(|m| m.cert_pem.clone()))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = pems.iter().map(String::as_str).collect();
        self.admin_conf = kubeconfig::render(&kubeconfig::KubeconfigSpec {
            cluster: &self.name,
            server: &self.server,
            ca_pems: &refs,
            user: "kubernetes-admin",
            credentials: kubeconfig::Credentials::Embedded {
                cert_pem: &client.cert_pem,
                key_pem: &client.key_pem,
            },
        })?;
        Ok(())
    }
}

/// Whether PEM certificate `cert` is inside its validity period now (false if unparsable).
pub fn cert_currently_valid(cert: &str) -> bool {
    x509_parser::pem::parse_x509_pem(cert.as_bytes())
        .ok()
        .and_then(|(_, pem)| {
            x509_parser::parse_x509_certificate(&pem.contents)
                .ok()
                .map(|(_, c)| c.validity().is_valid())
        })
        .unwrap_or(false)
}

/// Whether PEM certificate `cert` carries a valid signature of CA certificate `ca`.
pub fn signed_by(cert: &str, ca: &str) -> bool {
    let der = |p: &str| {
        x509_parser::pem::parse_x509_pem(p.as_bytes())
            .ok()
            .map(|(_, pem)| pem.contents)
    };
    let (Some(c), Some(a)) = (der(cert), der(ca)) else {
        return false;
    };
    let (Ok((_, c)), Ok((_, a))) = (
        x509_parser::parse_x509_certificate(&c),
        x509_parser::parse_x509_certificate(&a),
    ) else {
        return false;
    };
    c.verify_signature(Some(a.public_key())).is_ok()
}

/// Marker of a full disk on one workstation: gkectl's kubeconfig writes there stop half way.
const DISK_FULL: &str = "gke-disk-full";

/// Makes kubeconfig writes by the simulated gkectl of `host` fail half way (`ENOSPC`).
pub fn set_disk_full(host: &SimHost, full: bool) -> Result<()> {
    let p = host.state(DISK_FULL);
    if full {
        std::fs::write(p, b"")?;
    } else if p.exists() {
        std::fs::remove_file(p)?;
    }
    Ok(())
}

/// Whether [`set_disk_full`] is on for `host`.
pub fn disk_full(host: &SimHost) -> bool {
    host.state(DISK_FULL).exists()
}

/// Makes `copy` a second admin workstation of the SAME admin cluster as `primary` (its
/// simulated state file is a symlink to the primary's): the admin cluster config, vCenter CA
/// and a copy of the admin kubeconfig at the same paths, and gkectl/kubectl. Returns the copy's
/// admin kubeconfig (real path).
pub fn add_workstation_copy(
    primary: &SimHost,
    ws: &Workstation,
    copy: &SimHost,
    workdir: &str,
) -> Result<PathBuf> {
    let w = workdir.trim_end_matches('/');
    for (from, name, mode) in [
        (&ws.admin_config, "admin-cluster.yaml", 0o644),
        (&ws.vcenter_ca, "vcenter-ca-cert.pem", 0o644),
        (&ws.admin_kubeconfig, "kubeconfig", 0o600),
    ] {
        copy.write(&format!("{w}/{name}"), std::fs::read(from)?, mode)?;
    }
    std::os::unix::fs::symlink(primary.state(STATE), copy.state(STATE))?;
    copy.install_tool("/usr/bin/gkectl", "gkectl")?;
    copy.install_tool("/usr/bin/kubectl", "kubectl")?;
    Ok(copy.path(&format!("{w}/kubeconfig")))
}

/// A fault `gkectl` is made to show, for collector tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Prints text that is not the status format, exit 0.
    Garbage,
    /// Cannot reach the admin cluster: error, exit 1.
    Unreachable,
    /// Never answers.
    Hang,
}

/// The simulator's private state, `ROOT/.sim/gke.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GkeState {
    /// Admin cluster.
    pub admin: ClusterState,
    /// User clusters by name.
    pub users: BTreeMap<String, ClusterState>,
    /// Injected fault, if any.
    #[serde(default)]
    pub fault: Option<Fault>,
}

const STATE: &str = "gke.json";

impl GkeState {
    /// Loads the state of `host`.
    pub fn load(host: &SimHost) -> Result<Self> {
        let p = host.state(STATE);
        let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// Saves it (0600: it holds CA keys).
    pub fn save(&self, host: &SimHost) -> Result<()> {
        let p = host.state(STATE);
        std::fs::write(&p, serde_json::to_vec_pretty(self)?)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(())
    }
}

/// Makes the simulated gkectl of `host` show `fault` (or behave again with `None`).
pub fn set_fault(host: &SimHost, fault: Option<Fault>) -> Result<()> {
    let mut s = GkeState::load(host)?;
    s.fault = fault;
    s.save(host)
}

/// A user cluster to build.
#[derive(Clone, Debug)]
pub struct UserClusterSpec {
    /// Cluster name.
    pub name: String,
    /// Config file name in the work directory (`user-cluster.yaml`).
    pub config_file: String,
    /// Lifetime of its (first) cluster CA.
    pub ca: Lifetime,
    /// Lifetime of the admin client certificate in its kubeconfig.
    pub client: Lifetime,
    /// Build it mid-rotation at this stage (`None`: steady with CAVersion 1).
    pub rotation: Option<Stage>,
    /// Lifetime of the new CA when mid-rotation.
    pub new_ca: Lifetime,
    /// Advance one stage per status call.
    pub advance_on_status: bool,
}

impl UserClusterSpec {
    /// A healthy user cluster: CA valid for five years from creation (reference B1).
    pub fn new(name: &str, config_file: &str) -> Self {
        UserClusterSpec {
            name: name.into(),
            config_file: config_file.into(),
            ca: Lifetime::days(400, 5 * 365 - 400),
            client: Lifetime::days(30, 335),
            rotation: None,
            new_ca: Lifetime::days(1, 5 * 365),
            advance_on_status: false,
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct GkeSpec {
    /// Work directory (home of the `ubuntu` user).
    pub workdir: String,
    /// Admin cluster name.
    pub admin_name: String,
    /// `gkeOnPremVersion` / bundle version.
    pub version: String,
    /// Admin cluster CA lifetime.
    pub admin_ca: Lifetime,
    /// Admin kubeconfig client certificate lifetime.
    pub admin_client: Lifetime,
    /// vCenter CA lifetime.
    pub vcenter_ca: Lifetime,
    /// User clusters.
    pub users: Vec<UserClusterSpec>,
    /// RSA 2048 keys (as GDC uses) instead of P-256 (faster to generate).
    pub rsa: bool,
}

impl Default for GkeSpec {
    fn default() -> Self {
        GkeSpec {
            workdir: "/home/ubuntu".into(),
            admin_name: "gke-admin".into(),
            version: "1.16.0-gke.669".into(),
            admin_ca: Lifetime::days(400, 30 * 365),
            admin_client: Lifetime::days(30, 335),
            vcenter_ca: Lifetime::days(900, 3650 - 900),
            users: vec![UserClusterSpec::new("user-cluster-1", "user-cluster.yaml")],
            rsa: false,
        }
    }
}

/// Paths of one user cluster on the built workstation.
#[derive(Clone, Debug)]
pub struct UserClusterFiles {
    /// Cluster name.
    pub name: String,
    /// Its config (real path under the root).
    pub config: PathBuf,
    /// Its kubeconfig (real path under the root).
    pub kubeconfig: PathBuf,
}

/// The built workstation (real paths under the root).
#[derive(Clone, Debug)]
pub struct Workstation {
    /// Work directory.
    pub workdir: PathBuf,
    /// `admin-cluster.yaml`.
    pub admin_config: PathBuf,
    /// Admin `kubeconfig`.
    pub admin_kubeconfig: PathBuf,
    /// `vcenter-ca-cert.pem`.
    pub vcenter_ca: PathBuf,
    /// User clusters.
    pub users: Vec<UserClusterFiles>,
    /// The simulated gkectl.
    pub gkectl: PathBuf,
}

fn new_ca(cn: &str, life: Lifetime, rsa: bool) -> Result<SimCa> {
    SimCa::new(dn(&[("CN", cn)]), life, rsa)
}

fn material(ca: &SimCa) -> CaMaterial {
    CaMaterial {
        cert_pem: ca.cert_pem.clone(),
        key_pem: ca.key_pem.clone(),
    }
}

/// Builds the admin workstation of reference B6 on `host`.
pub fn build_admin_workstation(host: &SimHost, spec: &GkeSpec) -> Result<Workstation> {
    let w = spec.workdir.trim_end_matches('/');
    let admin_cfg_path = format!("{w}/admin-cluster.yaml");
    let vcenter_ca_path = format!("{w}/vcenter-ca-cert.pem");

    let vc = SimCa::new(
        dn(&[("C", "US"), ("O", "vsphere.local"), ("CN", "CA")]),
        spec.vcenter_ca,
        spec.rsa,
    )?;
    host.write(&vcenter_ca_path, &vc.cert_pem, 0o644)?;
    host.write(
        &format!("{w}/credential.yaml"),
        "apiVersion: v1\nkind: CredentialFile\nitems:\n- name: vCenter\n  username: \"administrator@vsphere.local\"\n  password: \"simulated\"\n",
        0o600,
    )?;

    // Admin cluster.
    let admin_ca = new_ca("kubernetes", spec.admin_ca, spec.rsa)?;
    let admin_client = admin_ca.issue(
        dn(&[("O", "system:masters"), ("CN", "kubernetes-admin")]),
        &[],
        spec.admin_client,
        spec.rsa,
        true,
    )?;
    host.write(
        &admin_cfg_path,
        admin_cluster_yaml(spec, &vcenter_ca_path),
        0o644,
    )?;
    let admin_kc = kubeconfig::render(&kubeconfig::KubeconfigSpec {
        cluster: &spec.admin_name,
        server: "https://172.16.20.49:443",
        ca_pems: &[&admin_ca.cert_pem],
        user: "kubernetes-admin",
        credentials: kubeconfig::Credentials::Embedded {
            cert_pem: &admin_client.cert_pem,
            key_pem: &admin_client.key_pem,
        },
    })?;
    let admin_kc_path = host.write(&format!("{w}/kubeconfig"), admin_kc, 0o600)?;
    let mut state = GkeState {
        admin: ClusterState {
            name: spec.admin_name.clone(),
            ca_version: 1,
            stage: Stage::Steady,
            advance_on_status: false,
            leaf_rotation_version: None,
            cas: BTreeMap::from([(1, material(&admin_ca))]),
            server: "https://172.16.20.49:443".into(),
            serving_override: None,
            admin_conf: String::new(),
        },
        users: BTreeMap::new(),
        fault: None,
    };

    // User clusters.
    let mut users = Vec::new();
    for (i, u) in spec.users.iter().enumerate() {
        let ca1 = new_ca(&format!("{}-ca", u.name), u.ca, spec.rsa)?;
        let mut cas = BTreeMap::from([(1, material(&ca1))]);
        let rotating = u.rotation.filter(|s| *s != Stage::Steady);
        let ca2 = match rotating {
            Some(_) => Some(new_ca(&format!("{}-ca", u.name), u.new_ca, spec.rsa)?),
            None => None,
        };
        let (version, stage, bundle, signer) = match (rotating, &ca2) {
            (Some(stage), Some(ca2)) => {
                cas.insert(2, material(ca2));
                // The kubeconfig's client certificate comes from the CA that issues
                // control-plane certificates at this stage.
                let signer = if stage == Stage::NewCaTrusted {
                    &ca1
                } else {
                    ca2
                };
                (
                    2,
                    stage,
                    vec![ca1.cert_pem.clone(), ca2.cert_pem.clone()],
                    signer,
                )
            }
            _ => (1, Stage::Steady, vec![ca1.cert_pem.clone()], &ca1),
        };
        let client = signer.issue(
            dn(&[("O", "system:masters"), ("CN", "kubernetes-admin")]),
            &[],
            u.client,
            spec.rsa,
            true,
        )?;
        let cfg_path = format!("{w}/{}", u.config_file);
        host.write(
            &cfg_path,
            user_cluster_yaml(spec, u, i, &vcenter_ca_path),
            0o644,
        )?;
        let bundle_refs: Vec<&str> = bundle.iter().map(String::as_str).collect();
        let server = format!("https://172.16.20.{}:443", 60 + i);
        let kc = kubeconfig::render(&kubeconfig::KubeconfigSpec {
            cluster: &u.name,
            server: &server,
            ca_pems: &bundle_refs,
            user: "kubernetes-admin",
            credentials: kubeconfig::Credentials::Embedded {
                cert_pem: &client.cert_pem,
                key_pem: &client.key_pem,
            },
        })?;
        let kc_path = host.write(&format!("{w}/{}-kubeconfig", u.name), &kc, 0o600)?;
        state.users.insert(
            u.name.clone(),
            ClusterState {
                name: u.name.clone(),
                ca_version: version,
                stage,
                advance_on_status: u.advance_on_status,
                leaf_rotation_version: None,
                cas,
                server,
                serving_override: None,
                admin_conf: kc,
            },
        );
        users.push(UserClusterFiles {
            name: u.name.clone(),
            config: host.path(&cfg_path),
            kubeconfig: kc_path,
        });
    }
    state.save(host)?;
    let gkectl = host.install_tool("/usr/bin/gkectl", "gkectl")?;
    host.install_tool("/usr/bin/kubectl", "kubectl")?;
    Ok(Workstation {
        workdir: host.path(w),
        admin_config: host.path(&admin_cfg_path),
        admin_kubeconfig: admin_kc_path,
        vcenter_ca: host.path(&vcenter_ca_path),
        users,
        gkectl,
    })
}

/// `admin-cluster.yaml` with the skeleton of reference B6.
fn admin_cluster_yaml(spec: &GkeSpec, vcenter_ca: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: AdminCluster
name: "{name}"
bundlePath: "/var/lib/gke/bundles/gke-onprem-vsphere-{version}-full.tgz"
vCenter:
  address: "vc01.example.local"
  datacenter: "dc1"
  cluster: "cluster1"
  resourcePool: "cluster1/Resources"
  datastore: "datastore1"
  caCertPath: "{vcenter_ca}"
  credentials:
    fileRef:
      path: "credential.yaml"
      entry: "vCenter"
network:
  hostConfig:
    dnsServers:
    - "172.16.0.2"
    ntpServers:
    - "216.239.35.0"
  serviceCIDR: "10.96.232.0/24"
  podCIDR: "192.168.0.0/16"
  vCenter:
    networkName: "VM Network"
loadBalancer:
  vips:
    controlPlaneVIP: "172.16.20.49"
  kind: "MetalLB"
adminMaster:
  cpus: 4
  memoryMB: 16384
  replicas: 3
componentAccessServiceAccountKeyPath: "component-access-key.json"
gkeConnect:
  projectID: "my-project"
  registerServiceAccountKeyPath: "connect-register-sa-2203040617.json"
stackdriver:
  projectID: "my-project"
  clusterLocation: "us-central1"
  enableVPC: false
  serviceAccountKeyPath: "log-mon-sa-2203040617.json"
  disableVsphereResourceMetrics: false
autoRepair:
  enabled: true
osImageType: "ubuntu_containerd"
"#,
        name = spec.admin_name,
        version = spec.version,
    )
}

/// A user cluster config in the shape of `gkectl create-config cluster`.
fn user_cluster_yaml(spec: &GkeSpec, u: &UserClusterSpec, i: usize, vcenter_ca: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: UserCluster
name: "{name}"
gkeOnPremVersion: "{version}"
enableControlplaneV2: true
vCenter:
  caCertPath: "{vcenter_ca}"
network:
  hostConfig:
    dnsServers:
    - "172.16.0.2"
  ipMode:
    type: "static"
    ipBlockFilePath: "{name}-ipblock.yaml"
  serviceCIDR: "10.96.0.0/20"
  podCIDR: "192.168.0.0/16"
  controlPlaneIPBlock:
    netmask: "255.255.255.0"
    gateway: "172.16.21.1"
    ips:
    - ip: "172.16.21.{cp}"
      hostname: "{name}-cp1"
loadBalancer:
  vips:
    controlPlaneVIP: "172.16.20.{vip}"
    ingressVIP: "172.16.21.{ing}"
  kind: "MetalLB"
masterNode:
  cpus: 4
  memoryMB: 8192
  replicas: 1
nodePools:
- name: "pool-1"
  cpus: 4
  memoryMB: 8192
  replicas: 3
antiAffinityGroups:
  enabled: false
gkeConnect:
  projectID: "my-project"
  registerServiceAccountKeyPath: "connect-register-sa-2203040617.json"
stackdriver:
  projectID: "my-project"
  clusterLocation: "us-central1"
  enableVPC: false
  serviceAccountKeyPath: "log-mon-sa-2203040617.json"
autoRepair:
  enabled: true
"#,
        name = u.name,
        version = spec.version,
        cp = 10 + i,
        vip = 60 + i,
        ing = 100 + i,
    )
}
