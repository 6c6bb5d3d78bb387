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
//!
//! `gke-admin-ca`: admin-cluster CA rotation, reference B3 (non-advanced clusters). Admin
//! clusters come from `gke.admin_cluster.ca` records (the CA data of an admin kubeconfig,
//! `cluster=NAME`); one is in scope when that CA is (`--expiring-within`, `--param
//! cluster=NAME`). B3's four steps are fanned out over every workstation holding a copy of that
//! admin kubeconfig, so that each one gets its own new client certificate without keys leaving
//! any host: the first workstation (by name) runs the first half (`gke.admin_ca_rotate
//! phase=start`); then every workstation runs the first `update-kubeconfig`
//! (`gke.admin_kubeconfig_update expect=bundle`: old + new CA, client certificate from the new
//! CA) while the admin cluster still accepts their old client certificates; then the first
//! workstation runs `--complete` (which revokes the old CA); then every workstation runs the
//! second `update-kubeconfig` and installs the result (`expect=new`: the new CA only). Each
//! install is backed up, written atomically 0600 and checked against the cluster; a failure
//! restores the previous file. Like B2, the rotation itself cannot be rolled back.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec};
use crate::plan::Target;

/// The recipe.
pub struct GkeUserCa;

/// One workstation's copy of a user cluster's kubeconfig.
struct KubeconfigCopy {
    agent: String,
    /// Fingerprint of the earliest-expiring CA this copy trusts (the CA in scope).
    ca: String,
    agent_name: String,
    kubeconfig: String,
    not_after: i64,
}

/// Every kubeconfig copy of each cluster whose CA has `role`, per workstation and path, keeping
/// the earliest-expiring CA each copy trusts (a mid-rotation bundle holds two).
fn kubeconfig_copies(
    input: &RecipeInput<'_>,
    targets: &[&Target],
    role: &str,
) -> BTreeMap<String, Vec<KubeconfigCopy>> {
    let mut clusters: BTreeMap<String, Vec<KubeconfigCopy>> = BTreeMap::new();
    for agent in targets {
        for cert in input.inventory.get(&agent.id).into_iter().flatten() {
            if cert.role != role {
                continue;
            }
            for loc in cert.locations.iter().filter(|l| l.kind == "kubeconfig") {
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
                    Some(c) if cert.not_after < c.not_after => {
                        c.not_after = cert.not_after;
                        c.ca = cert.fingerprint_sha256.clone();
                    }
                    Some(_) => {}
                    None => copies.push(KubeconfigCopy {
                        agent: agent.id.clone(),
                        ca: cert.fingerprint_sha256.clone(),
                        agent_name: agent.name.clone(),
                        kubeconfig: loc.path.clone(),
                        not_after: cert.not_after,
                    }),
                }
            }
        }
    }
    clusters
}

impl Recipe for GkeUserCa {
    fn name(&self) -> &'static str {
        "gke-user-ca"
    }

    fn about(&self) -> &'static str {
        "rotate GKE on VMware user-cluster CAs with gkectl, then fetch and install the new kubeconfig on every admin workstation"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let only = input.param_list("cluster");
        let poll: u64 = input.param("poll", 30)?;
        let rotate_timeout: u32 = input.param("rotate_timeout", 4 * 3600)?;
        let targets = &input.targets;
        // cluster name -> copies (one per workstation and kubeconfig path)
        let clusters = kubeconfig_copies(input, targets, "gke.user_cluster.ca");
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
                args: json!({"cluster": cluster, "poll_secs": poll, "ca_sha256": rot.ca}),
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
                steps.extend(fetch_and_install(cluster, i, c, Some(&rotate_key)));
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

/// The two steps that replace workstation copy `i` of `cluster`'s kubeconfig with the one the
/// admin cluster holds now: fetch (verified with `openssl verify`, staged 0600 on that host,
/// never sent anywhere) and install (backup, atomic write keeping owner and mode, `kubectl
/// version` through it, the backup restored on failure). After a CA rotation (`rotation`: the
/// rotation step it waits for) the installed file must also hold the new CA only; without one
/// (`gke-kubeconfig`), the client certificate had expired.
fn fetch_and_install(
    cluster: &str,
    i: usize,
    c: &KubeconfigCopy,
    rotation: Option<&String>,
) -> [StepSpec; 2] {
    let k = |s: &str| format!("{cluster}-{}-{i}-{s}", c.agent_name);
    let target = format!("{}:{}", c.agent_name, c.kubeconfig);
    let (fetch_name, verify, install_name) = match rotation {
        Some(_) => (
            format!("fetch the new kubeconfig of {cluster}"),
            "openssl verify -CAfile <its CA> <its client certificate>",
            format!("install the new kubeconfig of {cluster}"),
        ),
        None => (
            format!("fetch the kubeconfig of {cluster} anew (client certificate expired)"),
            "openssl verify -CAfile <its CA> <its client certificate> (refuses an expired one)",
            format!("install the fetched kubeconfig of {cluster}"),
        ),
    };
    let mut install_commands = vec![
        format!("back up {}", c.kubeconfig),
        format!("write {} atomically, mode 0600, same owner", c.kubeconfig),
    ];
    if rotation.is_some() {
        install_commands.push("check its certificate-authority-data holds the new CA only".into());
    }
    install_commands.push(format!(
        "kubectl --kubeconfig {} version; restore the backup on failure",
        c.kubeconfig
    ));
    [
        StepSpec {
            key: k("fetch"),
            name: fetch_name,
            stage: "fetch".into(),
            target: target.clone(),
            agent: c.agent.clone(),
            agent_name: c.agent_name.clone(),
            action: "gke.fetch_kubeconfig".into(),
            args: json!({"cluster": cluster}),
            depends_on: rotation.cloned().into_iter().collect(),
            commands: vec![
                format!(
                    "kubectl --kubeconfig <admin kubeconfig> get secret admin -n {cluster} -o jsonpath='{{.data.admin\\.conf}}' | base64 --decode > STATE_DIR/staged/<step>.kubeconfig (0600, stays on this host)"
                ),
                verify.into(),
            ],
            files: vec!["STATE_DIR/staged/<step>.kubeconfig".into()],
            timeout_secs: 120,
        },
        StepSpec {
            key: k("install"),
            name: install_name,
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
                "verify_access": true,
            }),
            depends_on: vec![k("fetch")],
            commands: install_commands,
            files: vec![c.kubeconfig.clone()],
            timeout_secs: 120,
        },
    ]
}

/// The admin-cluster CA rotation recipe.
pub struct GkeAdminCa;

impl Recipe for GkeAdminCa {
    fn name(&self) -> &'static str {
        "gke-admin-ca"
    }

    fn about(&self) -> &'static str {
        "rotate the GKE on VMware admin-cluster CA with gkectl (B3: rotate, update-kubeconfig, --complete, update-kubeconfig) and install the new admin kubeconfig on every workstation holding one"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let only = input.param_list("cluster");
        let rotate_timeout: u32 = input.param("rotate_timeout", 4 * 3600)?;
        let targets = &input.targets;
        // admin cluster name -> workstation copies (the earliest-expiring CA each holds)
        let clusters = kubeconfig_copies(input, targets, "gke.admin_cluster.ca");
        let mut steps = Vec::new();
        for (cluster, copies) in &clusters {
            if !only.is_empty() && !only.contains(cluster) {
                continue;
            }
            // The CA in scope: the earliest-expiring one any copy trusts.
            let Some(oldest) = copies.iter().min_by_key(|c| c.not_after) else {
                continue;
            };
            if !input.due(oldest.not_after) {
                continue;
            }
            let old_ca = oldest.ca.clone();
            let copies: Vec<&KubeconfigCopy> = copies.iter().filter(|c| c.ca == old_ca).collect();
            let first = copies[0];
            let gk = |sub: &str, kc: &str| {
                format!(
                    "gkectl update credentials certificate-authorities {sub} --config <gke.admin_config, default WORKDIR/admin-cluster.yaml> --kubeconfig {kc}"
                )
            };
            let start_key = format!("{cluster}-start");
            let complete_key = format!("{cluster}-complete");
            // One target for the whole rotation: its steps interlock across workstations (the
            // engine counts a target with steps left as in progress), and it succeeds or fails
            // as a unit since it cannot be rolled back.
            let rot_target = format!("admin/{cluster}");
            steps.push(StepSpec {
                key: start_key.clone(),
                name: format!("admin cluster {cluster}: first half of the CA rotation"),
                stage: "rotate".into(),
                target: rot_target.clone(),
                agent: first.agent.clone(),
                agent_name: first.agent_name.clone(),
                action: "gke.admin_ca_rotate".into(),
                args: json!({"phase": "start", "ca_sha256": old_ca}),
                depends_on: vec![],
                commands: vec![
                    gk("status --admin-cluster", &first.kubeconfig),
                    format!(
                        "(cd {}) {} (resumes a rotation in progress; nothing if CA {} is already rotated)",
                        parent(&first.kubeconfig),
                        gk("rotate --admin-cluster", &first.kubeconfig),
                        &old_ca[..16.min(old_ca.len())]
                    ),
                    gk("status --admin-cluster", &first.kubeconfig),
                ],
                files: vec![],
                timeout_secs: rotate_timeout,
            });
            let update = |c: &KubeconfigCopy, i: usize, expect: &str, dep: &str| {
                let key = format!("{cluster}-{}-{i}-{expect}", c.agent_name);
                StepSpec {
                    key,
                    name: if expect == "bundle" {
                        format!(
                            "add the new CA of admin cluster {cluster} to {}",
                            c.kubeconfig
                        )
                    } else {
                        format!("install the new admin kubeconfig of {cluster} (old CA removed)")
                    },
                    stage: if expect == "bundle" {
                        "update-kubeconfig"
                    } else {
                        "install"
                    }
                    .into(),
                    target: rot_target.clone(),
                    agent: c.agent.clone(),
                    agent_name: c.agent_name.clone(),
                    action: "gke.admin_kubeconfig_update".into(),
                    args: json!({"expect": expect, "old_ca_sha256": old_ca}),
                    depends_on: vec![dep.to_owned()],
                    commands: vec![
                        format!(
                            "cp {} STATE_DIR/staged/<step>.admin-kubeconfig/ (0600)",
                            c.kubeconfig
                        ),
                        format!(
                            "(cd STATE_DIR/staged/<step>.admin-kubeconfig) {}",
                            gk("update-kubeconfig --admin-cluster", "<that copy>")
                        ),
                        if expect == "bundle" {
                            "check: CA data = old CA + one new CA; client certificate from the new CA (openssl verify)".into()
                        } else {
                            "check: CA data = the new CA only; client certificate from it (openssl verify)".into()
                        },
                        format!(
                            "back up {}, write it atomically (0600, same owner)",
                            c.kubeconfig
                        ),
                        format!(
                            "kubectl --kubeconfig {} version; restore the backup on failure",
                            c.kubeconfig
                        ),
                    ],
                    files: vec![c.kubeconfig.clone()],
                    timeout_secs: 600,
                }
            };
            let mut bundle_keys = Vec::new();
            for (i, c) in copies.iter().enumerate() {
                let s = update(c, i, "bundle", &start_key);
                bundle_keys.push(s.key.clone());
                steps.push(s);
            }
            steps.push(StepSpec {
                key: complete_key.clone(),
                name: format!("admin cluster {cluster}: complete the CA rotation"),
                stage: "complete".into(),
                target: rot_target.clone(),
                agent: first.agent.clone(),
                agent_name: first.agent_name.clone(),
                action: "gke.admin_ca_rotate".into(),
                args: json!({
                    "phase": "complete",
                    "ca_sha256": old_ca,
                    "ca_version": {"$ref": format!("{start_key}.ca_version")},
                }),
                depends_on: bundle_keys,
                commands: vec![
                    format!(
                        "(cd {}) {} (revokes the old CA: every copy was updated before)",
                        parent(&first.kubeconfig),
                        gk("rotate --admin-cluster --complete", &first.kubeconfig)
                    ),
                    format!(
                        "{} until CARotationCompleted",
                        gk("status --admin-cluster", &first.kubeconfig)
                    ),
                ],
                files: vec![],
                timeout_secs: rotate_timeout,
            });
            for (i, c) in copies.iter().enumerate() {
                steps.push(update(c, i, "new", &complete_key));
            }
        }
        if steps.is_empty() {
            return Err(if clusters.is_empty() {
                "nothing to rotate: no target agent reported an admin kubeconfig (gke.admin_cluster.ca, gke_admin collector)".to_owned()
            } else {
                format!(
                    "nothing to rotate: no admin cluster CA in scope (known: {})",
                    clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        }
        Ok(steps)
    }
}

/// The directory of a host path (gkectl runs there: B3 wants the kubeconfig in the CWD).
fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((d, _)) => d,
        None => ".",
    }
}

/// `gke-kubeconfig`: user-cluster kubeconfigs on admin workstations whose client certificate
/// is in scope (expired, for `certfleet recover gke-kubeconfig`), fetched anew the way the GDC
/// docs and seed 004 say after the client certificates changed: `kubectl --kubeconfig
/// ADMIN_CLUSTER_KUBECONFIG get secret admin -n USER_CLUSTER_NAME -o
/// jsonpath='{.data.admin\.conf}' | base64 --decode` (reference B2). The admin cluster keeps that
/// secret current (it re-issues the user cluster's certificates on every upgrade, B1), so a
/// workstation copy that expired is simply stale. Each copy is fetched on its own workstation
/// with that workstation's admin kubeconfig (`gke.fetch_kubeconfig`: the secret's copy must
/// trust one CA that signed its client certificate, `openssl verify`, which also refuses an
/// expired one) and installed (`kubeconfig.install`: backup, atomic 0600 write, same owner,
/// `kubectl version` through it, the backup restored on failure). No CA rotation.
///
/// Not covered: an admin kubeconfig whose own client certificate expired (the admin cluster
/// then refuses the very read that fetches the user kubeconfig): the recipe refuses such a
/// workstation, naming the file, rather than plan steps that cannot work.
///
/// Parameters: `cluster` (comma-separated names).
pub struct GkeKubeconfig;

impl Recipe for GkeKubeconfig {
    fn name(&self) -> &'static str {
        "gke-kubeconfig"
    }

    fn about(&self) -> &'static str {
        "fetch anew, from the admin cluster, the user-cluster kubeconfigs of admin workstations whose client certificate expired (no CA rotation)"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let only = input.param_list("cluster");
        let targets = &input.targets;
        let clusters = kubeconfig_copies(input, targets, "gke.user_cluster.ca");
        // (agent id, kubeconfig path) -> earliest not-after of a client certificate in it.
        let mut clients: BTreeMap<(String, String), i64> = BTreeMap::new();
        // agent id -> (admin kubeconfig path, not-after) of an admin client certificate in scope.
        let mut admin_expired: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for agent in targets {
            for cert in input.inventory.get(&agent.id).into_iter().flatten() {
                let admin = match cert.role.as_str() {
                    "gke.user_cluster.client" => false,
                    "gke.admin_cluster.client" => true,
                    _ => continue,
                };
                for loc in cert.locations.iter().filter(|l| l.kind == "kubeconfig") {
                    if admin {
                        if input.due(cert.not_after) {
                            admin_expired
                                .insert(agent.id.clone(), (loc.path.clone(), cert.not_after));
                        }
                        continue;
                    }
                    let e = clients
                        .entry((agent.id.clone(), loc.path.clone()))
                        .or_insert(cert.not_after);
                    *e = (*e).min(cert.not_after);
                }
            }
        }
        let mut steps = Vec::new();
        let mut blocked = Vec::new();
        for (cluster, copies) in &clusters {
            if !only.is_empty() && !only.contains(cluster) {
                continue;
            }
            for (i, c) in copies.iter().enumerate() {
                let Some(not_after) = clients.get(&(c.agent.clone(), c.kubeconfig.clone())) else {
                    continue;
                };
                if !input.due(*not_after) {
                    continue;
                }
                if let Some((admin_kc, admin_na)) = admin_expired.get(&c.agent) {
                    blocked.push(format!(
                        "{}:{} (cluster {cluster}) cannot be fetched: the admin kubeconfig {admin_kc} of that workstation has a client certificate expiring at {} too, and the admin cluster refuses it; renew the admin cluster certificates first",
                        c.agent_name,
                        c.kubeconfig,
                        certfleet_common::model::format_time(*admin_na)
                    ));
                    continue;
                }
                steps.extend(fetch_and_install(cluster, i, c, None));
            }
        }
        if !blocked.is_empty() {
            return Err(blocked.join("; "));
        }
        if steps.is_empty() {
            return Err(if clusters.is_empty() {
                "nothing to fetch: no target agent reported a GKE user cluster kubeconfig (gke_admin collector)".to_owned()
            } else {
                format!(
                    "nothing to fetch: no user cluster kubeconfig with a client certificate in scope (clusters: {})",
                    clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        }
        Ok(steps)
    }
}
