//! `kubeadm-certs`: `kubeadm certs renew all` on kubeadm control-plane nodes, then the static
//! pods restarted so the renewed certificates are used (reference C3, C4).
//!
//! Nodes are the targets whose inventory holds kubeadm leaf certificates (`kubeadm.*` roles from
//! the kubeadm collector) with one in scope (`--expiring-within`, `--role`). Renewal must run on
//! every control-plane node, and each node's API server and etcd go down briefly while their
//! static pods restart, so nodes go strictly one at a time: each node's step depends on the
//! previous one, and a failure (after which the node has rolled itself back) stops the rest.
//!
//! Parameters: `poll` (seconds between kubelet checks, default 20 = the kubelet's
//! `fileCheckFrequency`), `pod_start` (seconds a static pod may take to come back, default 120).

use serde_json::json;

use super::{Recipe, RecipeInput, StepSpec};

/// The recipe.
pub struct KubeadmCerts;

impl Recipe for KubeadmCerts {
    fn name(&self) -> &'static str {
        "kubeadm-certs"
    }

    fn about(&self) -> &'static str {
        "kubeadm certs renew all and restart the static pods, one control-plane node at a time"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let poll: u64 = input.param("poll", 20)?;
        let pod_start: u64 = input.param("pod_start", 120)?;
        let targets = &input.targets;
        let mut steps: Vec<StepSpec> = Vec::new();
        for agent in targets {
            let leaves: Vec<_> = input
                .inventory
                .get(&agent.id)
                .into_iter()
                .flatten()
                .filter(|c| c.role.starts_with("kubeadm.") && !c.is_ca)
                .filter(|c| c.role != "kubeadm.kubelet.client" && c.role != "kubeadm.other")
                .collect();
            if leaves.is_empty() {
                continue;
            }
            let due = leaves.iter().any(|c| {
                input.due(c.not_after)
                    && (input.roles.is_empty()
                        || input.roles.iter().any(|r| c.role.starts_with(r.as_str())))
            });
            if !due {
                continue;
            }
            let key = format!("{}-renew", agent.name);
            let depends_on = steps
                .last()
                .map(|s| vec![s.key.clone()])
                .unwrap_or_default();
            steps.push(StepSpec {
                key,
                name: "kubeadm certs renew all + restart static pods".into(),
                stage: "renew".into(),
                target: format!("{}:/etc/kubernetes/pki", agent.name),
                agent: agent.id.clone(),
                agent_name: agent.name.clone(),
                action: "kubeadm.renew_all".into(),
                args: json!({"poll_secs": poll, "pod_start_secs": pod_start}),
                depends_on,
                commands: vec![
                    "back up /etc/kubernetes/pki/** and /etc/kubernetes/*.conf".into(),
                    "kubeadm certs renew all".into(),
                    "check every leaf has a later not-after; openssl verify -CAfile <pki CAs> <leaf>".into(),
                    "for pod in kube-apiserver kube-controller-manager kube-scheduler etcd: mv /etc/kubernetes/manifests/$pod.yaml /etc/kubernetes/certfleet-manifests-hold/; wait until crictl ps --name ^$pod$ is empty; mv it back; wait for a new running container".into(),
                    "on failure: restore the backup byte for byte and restart the pods again".into(),
                ],
                files: vec![
                    "/etc/kubernetes/pki/**".into(),
                    "/etc/kubernetes/*.conf".into(),
                    "/etc/kubernetes/manifests/*.yaml (moved out and back)".into(),
                ],
                timeout_secs: u32::try_from(600 + 8 * (pod_start + 3 * poll)).unwrap_or(u32::MAX),
            });
        }
        if steps.is_empty() {
            return Err("nothing to renew: no target kubeadm control-plane node has a leaf certificate in scope".into());
        }
        Ok(steps)
    }
}
