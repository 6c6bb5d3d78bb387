//! The GKE on VMware (Google Distributed Cloud for VMware) admin workstation: the admin and
//! user cluster configs in the work directory, the kubeconfigs `gkectl` wrote for them, the
//! vCenter CA the clusters trust, and the CA rotation stage `gkectl` reports.
//!
//! Kubeconfig paths are taken from configuration, never guessed beyond gkectl's own defaults
//! (`kubeconfig` and `USER_CLUSTER_NAME-kubeconfig` in the work directory), because operators
//! move and rename them (reference B6). Each CA of a multi-CA bundle is its own record: two
//! CAs in `certificate-authority-data` is what a rotation in progress looks like from the
//! workstation, and is reported as a health fact next to what `gkectl update credentials
//! certificate-authorities status` says.
//!
//! Settings: `gke.workdir` (default `/home/ubuntu`), `gke.admin_config` (default
//! `WORKDIR/admin-cluster.yaml`), `gke.admin_kubeconfig` (default `WORKDIR/kubeconfig`),
//! `gke.user_configs` (comma-separated; default every `*.yaml` in the work directory whose
//! `kind` is `UserCluster`), `gke.kubeconfig.<USER_CLUSTER_NAME>` (default
//! `WORKDIR/<name>-kubeconfig`), `gke.kubeconfigs` (comma-separated extra kubeconfigs), and the
//! tool path `gkectl` (default `/usr/bin/gkectl`).

use std::path::Path;

use certfleet_common::model::{HealthFact, Location, Problem};
use serde::Deserialize;

use super::kubeconfig::{self, Roles};
use super::{Collection, Collector, read_small_file};
use crate::config::AgentConfig;
use crate::exec;

/// The `gke_admin` collector.
pub struct GkeAdmin;

const NAME: &str = "gke_admin";
const DEFAULT_WORKDIR: &str = "/home/ubuntu";
const DEFAULT_GKECTL: &str = "/usr/bin/gkectl";

impl Collector for GkeAdmin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        let ws = Workstation::from_config(cfg);
        cfg.host_path(&ws.admin_config).is_file() || cfg.host_path(&ws.admin_kubeconfig).is_file()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        let ws = Workstation::from_config(cfg);
        ws.collect(cfg, out);
    }
}

/// The fields of `admin-cluster.yaml` / `user-cluster.yaml` this collector needs.
#[derive(Debug, Default, Deserialize)]
pub struct ClusterConfig {
    /// `AdminCluster` or `UserCluster`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Cluster name.
    #[serde(default)]
    pub name: Option<String>,
    /// `gkeOnPremVersion`.
    #[serde(default, rename = "gkeOnPremVersion")]
    pub version: Option<String>,
    /// `vCenter` section.
    #[serde(default, rename = "vCenter")]
    pub vcenter: Option<VCenter>,
}

/// `vCenter` section of a cluster config.
#[derive(Debug, Default, Deserialize)]
pub struct VCenter {
    /// `vCenter.caCertPath`: the vCenter CA the cluster trusts.
    #[serde(default, rename = "caCertPath")]
    pub ca_cert_path: Option<String>,
}

/// Parses a cluster config.
pub fn parse_cluster_config(text: &[u8]) -> Result<ClusterConfig, String> {
    serde_norway::from_slice(text).map_err(|e| format!("not a cluster config: {e}"))
}

/// One user cluster found on the workstation.
#[derive(Debug, Clone)]
struct UserCluster {
    name: String,
    config: String,
    kubeconfig: String,
}

/// Where things are on this workstation (host paths).
#[derive(Debug, Clone)]
struct Workstation {
    workdir: String,
    admin_config: String,
    admin_kubeconfig: String,
}

impl Workstation {
    fn from_config(cfg: &AgentConfig) -> Self {
        let workdir = cfg
            .setting("gke.workdir")
            .unwrap_or(DEFAULT_WORKDIR)
            .trim_end_matches('/')
            .to_owned();
        let admin_config = cfg
            .setting("gke.admin_config")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{workdir}/admin-cluster.yaml"));
        let admin_kubeconfig = cfg
            .setting("gke.admin_kubeconfig")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{workdir}/kubeconfig"));
        Workstation {
            workdir,
            admin_config,
            admin_kubeconfig,
        }
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        // Admin cluster config: optional (the kubeconfig alone is enough to inventory).
        let admin_cfg_exists = cfg.host_path(&self.admin_config).is_file();
        let admin = if admin_cfg_exists {
            read_cluster_config(cfg, &self.admin_config, out)
        } else {
            None
        };
        let admin_name = admin
            .as_ref()
            .and_then(|c| c.name.clone())
            .unwrap_or_else(|| "admin".into());
        if let Some(a) = &admin {
            vcenter_ca(cfg, &self.admin_config, a, out);
        }
        let admin_roles = Roles {
            cluster_ca: "gke.admin_cluster.ca".into(),
            client: "gke.admin_cluster.client".into(),
        };
        if let Some(s) = kubeconfig::collect(cfg, NAME, &self.admin_kubeconfig, &admin_roles, out) {
            bundle_health(
                &self.admin_kubeconfig,
                &format!("admin/{admin_name}"),
                &s,
                out,
            );
        }

        let users = self.user_clusters(cfg, out);
        let user_roles = Roles {
            cluster_ca: "gke.user_cluster.ca".into(),
            client: "gke.user_cluster.client".into(),
        };
        for u in &users {
            if let Some(s) = kubeconfig::collect(cfg, NAME, &u.kubeconfig, &user_roles, out) {
                bundle_health(&u.kubeconfig, &format!("user/{}", u.name), &s, out);
            }
        }
        for extra in list_setting(cfg, "gke.kubeconfigs") {
            let roles = Roles {
                cluster_ca: "kubeconfig.ca".into(),
                client: "kubeconfig.client".into(),
            };
            if let Some(s) = kubeconfig::collect(cfg, NAME, &extra, &roles, out) {
                bundle_health(&extra, &extra, &s, out);
            }
        }

        // The rotation stage as gkectl sees it.
        let gkectl = cfg.tool("gkectl", DEFAULT_GKECTL);
        if !gkectl.is_file() {
            out.problem(Problem::warning(
                NAME,
                gkectl.display().to_string(),
                "gkectl not found: CA rotation stage unknown (set tools.gkectl)",
            ));
            return;
        }
        let admin_kc = cfg.host_path(&self.admin_kubeconfig).display().to_string();
        if admin_cfg_exists {
            let admin_cfg = cfg.host_path(&self.admin_config).display().to_string();
            rotation_status(
                cfg,
                &gkectl,
                &[
                    "update",
                    "credentials",
                    "certificate-authorities",
                    "status",
                    "--admin-cluster",
                    "--config",
                    &admin_cfg,
                    "--kubeconfig",
                    &admin_kc,
                ],
                &format!("admin/{admin_name}"),
                out,
            );
        }
        for u in &users {
            let user_cfg = cfg.host_path(&u.config).display().to_string();
            rotation_status(
                cfg,
                &gkectl,
                &[
                    "update",
                    "credentials",
                    "certificate-authorities",
                    "status",
                    "--config",
                    &user_cfg,
                    "--kubeconfig",
                    &admin_kc,
                ],
                &format!("user/{}", u.name),
                out,
            );
        }
    }

    /// User clusters from `gke.user_configs`, else every `UserCluster` config in the work dir.
    fn user_clusters(&self, cfg: &AgentConfig, out: &mut Collection) -> Vec<UserCluster> {
        let configured = list_setting(cfg, "gke.user_configs");
        let candidates: Vec<String> = if configured.is_empty() {
            let dir = cfg.host_path(&self.workdir);
            let mut names: Vec<String> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                    .map(|n| format!("{}/{n}", self.workdir))
                    .filter(|p| *p != self.admin_config)
                    .collect(),
                Err(e) => {
                    out.problem(Problem::error(
                        NAME,
                        &self.workdir,
                        format!("cannot list work directory: {e}"),
                    ));
                    Vec::new()
                }
            };
            names.sort();
            names
        } else {
            configured
        };
        let explicit = !list_setting(cfg, "gke.user_configs").is_empty();
        let mut users = Vec::new();
        for path in candidates {
            let Some(c) = read_cluster_config(cfg, &path, out) else {
                continue;
            };
            match c.kind.as_deref() {
                Some("UserCluster") => {}
                other => {
                    if explicit {
                        out.problem(Problem::error(
                            NAME,
                            &path,
                            format!("kind is {other:?}, not \"UserCluster\""),
                        ));
                    }
                    continue;
                }
            }
            let Some(name) = c.name.clone().filter(|n| !n.is_empty()) else {
                out.problem(Problem::error(
                    NAME,
                    &path,
                    "UserCluster config has no name",
                ));
                continue;
            };
            vcenter_ca(cfg, &path, &c, out);
            let kubeconfig = cfg
                .setting(&format!("gke.kubeconfig.{name}"))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}/{name}-kubeconfig", self.workdir));
            users.push(UserCluster {
                name,
                config: path,
                kubeconfig,
            });
        }
        users
    }
}

fn list_setting(cfg: &AgentConfig, key: &str) -> Vec<String> {
    cfg.setting(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn read_cluster_config(
    cfg: &AgentConfig,
    path: &str,
    out: &mut Collection,
) -> Option<ClusterConfig> {
    let bytes = match read_small_file(&cfg.host_path(path)) {
        Ok(b) => b,
        Err(e) => {
            out.problem(Problem::error(
                NAME,
                path,
                format!("cannot read cluster config: {e}"),
            ));
            return None;
        }
    };
    match parse_cluster_config(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            out.problem(Problem::error(NAME, path, e));
            None
        }
    }
}

/// `vCenter.caCertPath`, relative paths resolved against the config's directory.
fn vcenter_ca(cfg: &AgentConfig, config_path: &str, c: &ClusterConfig, out: &mut Collection) {
    let Some(p) = c
        .vcenter
        .as_ref()
        .and_then(|v| v.ca_cert_path.as_deref())
        .filter(|p| !p.is_empty())
    else {
        return;
    };
    let host = if Path::new(p).is_absolute() {
        p.to_owned()
    } else {
        Path::new(config_path)
            .parent()
            .unwrap_or(Path::new("/"))
            .join(p)
            .display()
            .to_string()
    };
    match read_small_file(&cfg.host_path(&host)) {
        Ok(bytes) => {
            let mut loc = Location::file("file", &host);
            loc.detail = format!("vCenter.caCertPath of {config_path}");
            out.add_blob(NAME, &bytes, "gke.vcenter_ca", loc);
        }
        Err(e) => out.problem(Problem::error(
            NAME,
            &host,
            format!("vCenter.caCertPath of {config_path}: {e}"),
        )),
    }
}

/// A CA bundle with more than one CA means a CA rotation is under way (or was left half done).
fn bundle_health(path: &str, cluster: &str, s: &kubeconfig::Summary, out: &mut Collection) {
    for (name, fps) in &s.cluster_cas {
        if fps.len() > 1 {
            out.health.push(HealthFact {
                kind: "gke.ca_rotation".into(),
                subject: cluster.to_owned(),
                state: "bundle-has-multiple-cas".into(),
                detail: format!(
                    "{path} cluster={name} trusts {} CAs: a CA rotation is in progress; re-read this kubeconfig after every step and replace it when the rotation completes",
                    fps.len()
                ),
                healthy: false,
            });
        }
    }
}

/// What `gkectl update credentials certificate-authorities status` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRotationStatus {
    /// `CAVersion`.
    pub ca_version: u32,
    /// `status: True|False`.
    pub done: bool,
    /// `reason:`, e.g. `CARotationCompleted`.
    pub reason: String,
    /// `message:`.
    pub message: String,
}

/// Where a rotation stands, from the message grammar of reference B2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStage {
    /// `status: True`: one CA everywhere.
    Completed,
    /// Stage 2: the new CA is in every trust bundle; certificates still from the old one.
    NewCaTrusted,
    /// Stage 3: control-plane certificates re-issued from the new CA; old CA still signs CSRs.
    ControlPlaneReissued,
    /// Stage 4: the new CA signs CSRs.
    SignerSwitched,
    /// Not completed, and the message does not say which stage.
    Unknown,
}

impl RotationStage {
    /// Short state word for health facts.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationStage::Completed => "completed",
            RotationStage::NewCaTrusted => "rotating:new-ca-trusted",
            RotationStage::ControlPlaneReissued => "rotating:control-plane-reissued",
            RotationStage::SignerSwitched => "rotating:signer-switched",
            RotationStage::Unknown => "rotating:unknown-stage",
        }
    }
}

/// Parses gkectl's status output (other log lines around it are ignored).
pub fn parse_status(text: &str) -> Result<CaRotationStatus, String> {
    let mut version = None;
    let mut done = None;
    let mut reason = None;
    let mut message = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("State of CARotation with CAVersion ") {
            version = rest
                .strip_suffix(" is -")
                .and_then(|v| v.trim().parse::<u32>().ok());
        } else if let Some(v) = l.strip_prefix("status: ") {
            done = match v.trim_end_matches(',') {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            };
        } else if let Some(v) = l.strip_prefix("reason: ") {
            reason = Some(v.trim_end_matches(',').to_owned());
        } else if let Some(v) = l.strip_prefix("message: ") {
            message = Some(v.to_owned());
        }
    }
    match (version, done, reason, message) {
        (Some(ca_version), Some(done), Some(reason), Some(message)) => Ok(CaRotationStatus { ca_version, done, reason, message }),
        _ => Err("unrecognised output (expected \"State of CARotation with CAVersion N is -\", status, reason, message)".into()),
    }
}

/// The stage, from `Control plane has CA bundle [..], certs from CA n, CA m is CSR signer.`
pub fn stage(s: &CaRotationStatus) -> RotationStage {
    if s.done {
        return RotationStage::Completed;
    }
    let m = &s.message;
    let bundle: Vec<u32> = between(m, "Control plane has CA bundle [", "]")
        .map(|b| {
            b.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let certs_from = between(m, "certs from CA ", ",").and_then(|x| x.trim().parse::<u32>().ok());
    let signer = between(m, ", CA ", " is CSR signer").and_then(|x| x.trim().parse::<u32>().ok());
    let (Some(certs_from), Some(signer)) = (certs_from, signer) else {
        return RotationStage::Unknown;
    };
    let new = s.ca_version;
    if bundle.len() < 2 {
        RotationStage::Unknown
    } else if signer == new {
        RotationStage::SignerSwitched
    } else if certs_from == new {
        RotationStage::ControlPlaneReissued
    } else {
        RotationStage::NewCaTrusted
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

fn rotation_status(
    cfg: &AgentConfig,
    gkectl: &Path,
    args: &[&str],
    subject: &str,
    out: &mut Collection,
) {
    let cmd = exec::command_line(gkectl, args);
    match exec::run_ok(gkectl, args, None, cfg.tool_timeout) {
        Ok(o) => match parse_status(&o.stdout) {
            Ok(s) => {
                let st = stage(&s);
                tracing::debug!(
                    cluster = subject,
                    stage = st.as_str(),
                    ca_version = s.ca_version,
                    "CA rotation status"
                );
                out.health.push(HealthFact {
                    kind: "gke.ca_rotation".into(),
                    subject: subject.to_owned(),
                    state: st.as_str().into(),
                    detail: format!("CAVersion {}, {}: {}", s.ca_version, s.reason, s.message),
                    healthy: s.done,
                });
            }
            Err(e) => out.problem(Problem::error(NAME, cmd, e)),
        },
        Err(e) => out.problem(Problem::error(NAME, cmd, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PROGRESS: &str = "State of CARotation with CAVersion 2 is -\nstatus: False,\nreason: CARotationProgressed,\nmessage: Control plane has CA bundle [1 2], certs from CA 2, CA 1 is CSR signer. Data plane has CA bundle [1 2], CA 1 was CSR signer at last restart.\n";
    const DONE: &str = "State of CARotation with CAVersion 2 is -\nstatus: True,\nreason: CARotationCompleted,\nmessage: Control plane has CA bundle [2], certs from CA 2, CA 2 is CSR signer. Data plane has CA bundle [2], CA 2 was CSR signer at last restart.\n";

    #[test]
    fn reads_the_documented_outputs() {
        let p = parse_status(PROGRESS).unwrap();
        assert_eq!(
            (p.ca_version, p.done, p.reason.as_str()),
            (2, false, "CARotationProgressed")
        );
        assert_eq!(stage(&p), RotationStage::ControlPlaneReissued);
        let d = parse_status(DONE).unwrap();
        assert!(d.done);
        assert_eq!(stage(&d), RotationStage::Completed);
        let trusted = PROGRESS.replace("certs from CA 2", "certs from CA 1");
        assert_eq!(
            stage(&parse_status(&trusted).unwrap()),
            RotationStage::NewCaTrusted
        );
        let switched = PROGRESS.replace("CA 1 is CSR signer", "CA 2 is CSR signer");
        assert_eq!(
            stage(&parse_status(&switched).unwrap()),
            RotationStage::SignerSwitched
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_status("").is_err());
        assert!(
            parse_status("State of CARotation with CAVersion x is -\nstatus: Maybe,\n").is_err()
        );
    }

    #[test]
    fn cluster_config_fields() {
        let c = parse_cluster_config(b"apiVersion: v1\nkind: UserCluster\nname: \"u1\"\ngkeOnPremVersion: 1.16.0-gke.669\nvCenter:\n  caCertPath: \"/home/ubuntu/vcenter-ca-cert.pem\"\nnetwork: {hostConfig: {}}\n").unwrap();
        assert_eq!(c.kind.as_deref(), Some("UserCluster"));
        assert_eq!(c.name.as_deref(), Some("u1"));
        assert_eq!(
            c.vcenter.unwrap().ca_cert_path.as_deref(),
            Some("/home/ubuntu/vcenter-ca-cert.pem")
        );
        assert!(parse_cluster_config(b"kind: [unclosed").is_err());
    }

    proptest! {
        #[test]
        fn status_parsing_never_panics(text in "(State of CARotation with CAVersion [0-9x]{0,3} is -\n|status: [A-Za-z]{0,5},\n|reason: [A-Za-z]{0,8},\n|message: [ \\[\\]0-9A-Za-z,.]{0,80}\n|.{0,20}\n){0,6}") {
            if let Ok(s) = parse_status(&text) {
                let _ = stage(&s);
            }
        }

        #[test]
        fn config_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_cluster_config(&bytes);
        }
    }
}
