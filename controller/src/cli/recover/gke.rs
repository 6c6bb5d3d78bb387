//! `certfleet recover gke-kubeconfig`: the user-cluster kubeconfigs on GKE on VMware admin
//! workstations whose client certificate expired (kubectl then gets `error: You must be logged
//! in to the server (Unauthorized)`), fetched anew from the admin cluster as the GDC docs and
//! seed 004 do it (`kubectl --kubeconfig ADMIN_CLUSTER_KUBECONFIG get secret admin -n
//! USER_CLUSTER_NAME -o jsonpath='{.data.admin\.conf}' | base64 --decode`), one plan of recipe
//! `gke-kubeconfig` that the controller runs and audits: on each workstation holding an expired
//! copy, fetch (staged 0600 on that host: the client key never leaves it) then install (backup,
//! atomic 0600 write keeping the owner, `kubectl version` through the new file, the backup
//! restored on failure). `--dry-run` prints the plan and changes nothing; the wall time is
//! printed at the end. A workstation whose admin kubeconfig expired too is refused by the
//! recipe, naming it (that one needs the admin cluster's certificates renewed first).

use std::time::{Duration, Instant};

use certfleet_common::proto as pb;
use clap::Args;

use super::super::CliError;
use super::super::conn::Conn;
use super::super::output::OutputArgs;
use super::{Outcome, Stage};

/// `certfleet recover gke-kubeconfig`
#[derive(Args)]
pub struct GkeKubeconfigArgs {
    /// Only this admin workstation agent (repeatable; default: every agent with platform
    /// gke_admin).
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Only the kubeconfigs of this user cluster (repeatable).
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// Build and print the plan as a dry run; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// Admin workstation agents among `agents` (platform `gke_admin`), by name.
pub fn workstations(agents: &[pb::AgentInfo]) -> Vec<String> {
    let mut v: Vec<String> = agents
        .iter()
        .filter(|a| a.platforms.iter().any(|p| p == "gke_admin"))
        .map(|a| a.name.clone())
        .collect();
    v.sort();
    v
}

/// Runs `recover gke-kubeconfig`.
pub async fn run(conn: &Conn, a: &GkeKubeconfigArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let targets = if a.agents.is_empty() {
        let agents = conn
            .client()
            .list_agents(pb::Empty {})
            .await
            .map_err(|s| conn.explain(s))?
            .into_inner()
            .agents;
        let ws = workstations(&agents);
        if ws.is_empty() {
            return Err(CliError::Usage(
                "no agent with platform gke_admin (an admin workstation); name one with --agent"
                    .into(),
            )
            .into());
        }
        ws
    } else {
        a.agents.clone()
    };
    eprintln!(
        "recover gke-kubeconfig: workstation(s) {}{}",
        targets.join(", "),
        if a.clusters.is_empty() {
            String::new()
        } else {
            format!(", cluster(s) {}", a.clusters.join(", "))
        }
    );
    eprintln!(
        "  1. gke-kubeconfig: on each workstation, every user-cluster kubeconfig whose client \
         certificate expired: fetch it anew from the admin cluster (secret admin), install it \
         with a backup, check kubectl gets through"
    );
    let mut stage = Stage {
        recipe: "gke-kubeconfig",
        agents: targets,
        // Expired = due within one second.
        within: Duration::from_secs(1),
        max_parallel: 1,
        params: vec![],
    };
    if !a.clusters.is_empty() {
        stage.params.push(pb::Label {
            key: "cluster".into(),
            value: a.clusters.join(","),
        });
    }
    match stage.run(conn, a.dry_run, &a.output).await? {
        Outcome::Nothing(why) => eprintln!("step 1: gke-kubeconfig: {why}"),
        Outcome::Planned(id) => eprintln!("step 1: gke-kubeconfig: plan {id} (dry run)"),
        Outcome::Done(id) => eprintln!("step 1: gke-kubeconfig: plan {id} succeeded"),
    }
    eprintln!(
        "recover gke-kubeconfig: {} in {:.1}s wall time",
        if a.dry_run { "planned" } else { "done" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workstations_are_the_gke_admin_agents_by_name() {
        let a = |n: &str, p: &str| pb::AgentInfo {
            name: n.into(),
            platforms: vec![p.into()],
            ..Default::default()
        };
        let agents = vec![
            a("ws2", "gke_admin"),
            a("kvm1", "ovirt_node"),
            a("ws1", "gke_admin"),
        ];
        assert_eq!(workstations(&agents), ["ws1", "ws2"]);
        assert!(workstations(&[a("x", "files")]).is_empty());
    }
}
