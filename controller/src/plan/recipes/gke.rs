//! `gke-user-ca`: user-cluster CA rotation on GKE on VMware (Google Distributed Cloud for
//! VMware), reference B2.
//!
//! User clusters come from the inventory: every `gke.user_cluster.ca` record an admin
//! workstation agent found in a kubeconfig (`cluster=NAME` in its location). For each cluster
//! whose CA is in scope (`--expiring-within`, `--param cluster=a,b`): one workstation (the
//! first target holding it, by name) starts the rotation and follows `gkectl … status` to
//! `CARotationCompleted` (`gke.ca_rotate`; it cannot be paused or rolled back, and a rotation
//! already in progress is followed, not restarted); then EVERY workstation holding a copy of
//! that cluster's kubeconfig fetches the new one from the admin cluster itself
//! (`gke.fetch_kubeconfig`, staged 0600 on that host) and installs it (`kubeconfig.install`:
//! backup, atomic 0600 write, check it trusts the new CA only). The kubeconfig holds a client
//! key, so it never travels through the controller; the price is that each workstation needs
//! its own working admin kubeconfig and `kubectl`.
//!
//! Parameters: `cluster` (comma-separated names), `poll` (seconds between status calls,
//! default 30), `rotate_timeout` (seconds, default 14400: large clusters take hours).

use std::collections::BTreeMap;

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec};

/// The recipe.
pub struct GkeUserCa;

/// One workstation's copy of a user cluster's kubeconfig.
struct Copy {
    agent: String,
    agent_name: String,
    kubeconfig: String,
    not_after: i64,
}

impl Recipe for GkeUserCa {
    fn name(&self) -> &'static str {
        "gke-user-ca"
    }

    fn about(&self) -> &'static str {
        "rotate GKE on VMware user-cluster CAs with gkectl, then fetch and install the new kubeconfig on every admin workstation"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let only: Vec<String> = input
            .params
            .get("cluster")
            .map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let poll: u64 = input
            .params
            .get("poll")
            .map(|p| p.parse().map_err(|e| format!("param poll={p}: {e}")))
            .transpose()?
            .unwrap_or(30);
        let rotate_timeout: u32 = input
            .params
            .get("rotate_timeout")
            .map(|p| {
                p.parse()
                    .map_err(|e| format!("param rotate_timeout={p}: {e}"))
            })
            .transpose()?
            .unwrap_or(4 * 3600);
        let mut targets = input.targets.clone();
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        // cluster name -> copies (one per workstation and kubeconfig path)
        let mut clusters: BTreeMap<String, Vec<Copy>> = BTreeMap::new();
        for agent in &targets {
            for cert in input.inventory.get(&agent.id).into_iter().flatten() {
                if cert.role != "gke.user_cluster.ca" {
                    continue;
                }
                for loc in &cert.locations {
                    if loc.kind != "kubeconfig" {
                        continue;
                    }
                    let Some(name) = loc
                        .detail
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("cluster="))
                    else {
                        continue;
                    };
                    let copies = clusters.entry(name.to_owned()).or_default();
                    match copies
                        .iter_mut()
                        .find(|c| c.agent == agent.id && c.kubeconfig == loc.path)
                    {
                        Some(c) => c.not_after = c.not_after.min(cert.not_after),
                        None => copies.push(Copy {
                            agent: agent.id.clone(),
                            agent_name: agent.name.clone(),
                            kubeconfig: loc.path.clone(),
                            not_after: cert.not_after,
                        }),
                    }
                }
            }
        }
        let mut steps = Vec::new();
        for (cluster, copies) in &clusters {
            if !only.is_empty() && !only.contains(cluster) {
                continue;
            }
            if !copies.iter().any(|c| input.due(c.not_after)) {
                continue;
            }
            let rot = &copies[0];
            let rotate_key = format!("{cluster}-rotate");
            let gk = |sub: &str| {
                format!(
                    "gkectl update credentials certificate-authorities {sub} --config <UserCluster config named {cluster}> --kubeconfig <admin kubeconfig>"
                )
            };
            steps.push(StepSpec {
                key: rotate_key.clone(),
                name: format!("rotate the CAs of user cluster {cluster}"),
                stage: "rotate".into(),
                target: format!("{}:{cluster}", rot.agent_name),
                agent: rot.agent.clone(),
                agent_name: rot.agent_name.clone(),
                action: "gke.ca_rotate".into(),
                args: json!({"cluster": cluster, "poll_secs": poll}),
                depends_on: vec![],
                commands: vec![
                    gk("status"),
                    format!("{} (unless a rotation is already in progress)", gk("rotate")),
                    format!("{} every {poll}s until CARotationCompleted (cannot be paused or rolled back)", gk("status")),
                ],
                files: vec![],
                timeout_secs: rotate_timeout,
            });
            for (i, c) in copies.iter().enumerate() {
                let k = |s: &str| format!("{cluster}-{}-{i}-{s}", c.agent_name);
                let target = format!("{}:{}", c.agent_name, c.kubeconfig);
                steps.push(StepSpec {
                    key: k("fetch"),
                    name: format!("fetch the new kubeconfig of {cluster}"),
                    stage: "fetch".into(),
                    target: target.clone(),
                    agent: c.agent.clone(),
                    agent_name: c.agent_name.clone(),
                    action: "gke.fetch_kubeconfig".into(),
                    args: json!({"cluster": cluster}),
                    depends_on: vec![rotate_key.clone()],
                    commands: vec![
                        format!("kubectl --kubeconfig <admin kubeconfig> get secret admin -n {cluster} -o jsonpath='{{.data.admin\\.conf}}' | base64 --decode > STATE_DIR/staged/<step>.kubeconfig (0600, stays on this host)"),
                        "openssl verify -CAfile <its CA> <its client certificate>".into(),
                    ],
                    files: vec!["STATE_DIR/staged/<step>.kubeconfig".into()],
                    timeout_secs: 120,
                });
                steps.push(StepSpec {
                    key: k("install"),
                    name: format!("install the new kubeconfig of {cluster}"),
                    stage: "install".into(),
                    target,
                    agent: c.agent.clone(),
                    agent_name: c.agent_name.clone(),
                    action: "kubeconfig.install".into(),
                    args: json!({
                        "path": c.kubeconfig,
                        "staged": {"$ref": format!("{}.staged", k("fetch"))},
                        "sha256": {"$ref": format!("{}.sha256", k("fetch"))},
                        "ca_sha256": {"$ref": format!("{}.ca_sha256", k("fetch"))},
                    }),
                    depends_on: vec![k("fetch")],
                    commands: vec![
                        format!("back up {}", c.kubeconfig),
                        format!("write {} atomically, mode 0600, same owner", c.kubeconfig),
                        "check its certificate-authority-data holds the new CA only; restore on failure".into(),
                    ],
                    files: vec![c.kubeconfig.clone()],
                    timeout_secs: 120,
                });
            }
        }
        if steps.is_empty() {
            return Err(if clusters.is_empty() {
                "nothing to rotate: no target agent reported a GKE user cluster kubeconfig (gke_admin collector)".to_owned()
            } else {
                format!(
                    "nothing to rotate: no user cluster CA in scope (known: {})",
                    clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        }
        Ok(steps)
    }
}
