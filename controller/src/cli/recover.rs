//! `certfleet recover`: one command per outage, through the agents, built from the existing
//! recipes (nothing here knows a platform's paths or tools).
//!
//! `recover ovirt-hosts --cluster C`: the engine is reachable but every certificate of the
//! cluster expired (seed 003, "after expiry"). In order, each a plan the controller runs and
//! this command follows to its end:
//!
//! 1. `ovirt-engine` on the engine agent(s), only when an engine certificate has expired
//!    (the recipe answers "nothing to renew" otherwise, and the step is skipped);
//! 2. `ovirt-hosts-offline` on every host of the cluster (agents with platform `ovirt_node`
//!    and label `ovirt.cluster` = C; no label counts as `Default`, as the recipes count it),
//!    `--max-parallel` hosts at a time: CSR from the host's key, signed on the engine with the
//!    SAN, installed everywhere with backups, libvirtd and vdsmd restarted, verified;
//! 3. `ovirt-hosts` on the same hosts, with a horizon covering the new certificates, so the
//!    engine re-enrolls each host properly (Enroll Certificate: QEMU, OVN and vmconsole
//!    certificates too) now that it can talk to them again.
//!
//! The first failed plan stops the recovery (exit 4) with the plan's id for `plan show`;
//! the plans are in the controller's audit log like any other. `--dry-run` builds every plan
//! as a dry run and prints them, changing nothing. The wall time is printed at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use certfleet_common::proto as pb;
use clap::Subcommand;

use super::CliError;
use super::args::{MAX_HORIZON, count_in};
use super::conn::Conn;
use super::output::OutputArgs;
use super::plan::print_plan;

mod gke;
mod hosted_engine;
mod vsphere;

/// The agent label naming a host's oVirt cluster (as the `ovirt-hosts` recipe reads it).
const CLUSTER_LABEL: &str = "ovirt.cluster";

/// `certfleet recover ...`
#[derive(Subcommand)]
pub enum RecoverCmd {
    /// Every host certificate of an oVirt cluster expired, the engine reachable: engine
    /// certificates first when they expired too (recipe ovirt-engine), then every host of the
    /// cluster offline (recipe ovirt-hosts-offline: CSR from the host's key, signed on the
    /// engine, installed with backups, libvirtd and vdsmd restarted), then a proper Enroll
    /// Certificate of each host through the engine (recipe ovirt-hosts). Prints each plan
    /// first; stops at the first failed plan (exit 4).
    #[command(
        after_help = "Example:\n  certfleet recover ovirt-hosts --cluster Default --max-parallel 2 --dry-run"
    )]
    OvirtHosts {
        /// The cluster (agent label ovirt.cluster; hosts without the label are in Default).
        #[arg(long)]
        cluster: String,
        /// Hosts recovered at once by the offline step.
        #[arg(long, default_value = "1", value_parser = count_in::<u32>(1, 1000))]
        max_parallel: u32,
        /// Skip the final Enroll Certificate through the engine API (step 3).
        #[arg(long)]
        no_enroll: bool,
        /// Build and print every plan as a dry run; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Expired vCenter certificates of an SSO domain (or one node): STS first, then Machine SSL,
    /// then solution users (wcp and hvc included), each through its recipe with restarts and
    /// checks; an expired VMCA root gets "reset all" (a new root first, then everything it
    /// signed issued again). See `recover vsphere --help`.
    #[command(
        after_help = "Example:\n  certfleet recover vsphere --domain vsphere.local --dry-run"
    )]
    Vsphere(vsphere::VsphereArgs),
    /// User-cluster kubeconfigs on GKE on VMware admin workstations whose client certificate
    /// expired: fetched anew from the admin cluster (secret admin of the cluster's namespace)
    /// and installed with a backup, checked with kubectl (recipe gke-kubeconfig).
    #[command(
        after_help = "Example:\n  certfleet recover gke-kubeconfig --agent ws1 --cluster user-cluster-1 --dry-run"
    )]
    GkeKubeconfig(gke::GkeKubeconfigArgs),
    /// The self-hosted engine VM is down because libvirtd on its host refuses the expired
    /// VDSM certificate: on the host, the VM brought up without libvirtd's TLS listener (or
    /// with the clock set back) and a CSR from the host's key; the engine VM's agent waited
    /// for, the CSR signed there; on the host, the certificate installed and TLS back (recipe
    /// ovirt-hosted-engine).
    #[command(
        after_help = "Example:\n  certfleet recover ovirt-hosted-engine --agent kvm01 --way dropin --dry-run"
    )]
    OvirtHostedEngine(hosted_engine::HostedEngineArgs),
}

/// Hosts of `cluster` among `agents`: platform `ovirt_node`, label `ovirt.cluster` equal to it
/// (missing: `Default`). Returns their names, sorted.
pub fn cluster_hosts(agents: &[pb::AgentInfo], cluster: &str) -> Vec<String> {
    let mut v: Vec<String> = agents
        .iter()
        .filter(|a| a.platforms.iter().any(|p| p == "ovirt_node"))
        .filter(|a| {
            let label = a
                .labels
                .iter()
                .find(|l| l.key == CLUSTER_LABEL)
                .map(|l| l.value.as_str())
                .unwrap_or("Default");
            label == cluster
        })
        .map(|a| a.name.clone())
        .collect();
    v.sort();
    v
}

/// Runs a `recover` command.
pub async fn run(conn: &Conn, cmd: &RecoverCmd) -> anyhow::Result<()> {
    let (cluster, max_parallel, no_enroll, dry_run, output) = match cmd {
        RecoverCmd::OvirtHosts {
            cluster,
            max_parallel,
            no_enroll,
            dry_run,
            output,
        } => (cluster, max_parallel, no_enroll, dry_run, output),
        RecoverCmd::Vsphere(args) => return vsphere::run(conn, args).await,
        RecoverCmd::GkeKubeconfig(a) => return gke::run(conn, a).await,
        RecoverCmd::OvirtHostedEngine(a) => return hosted_engine::run(conn, a).await,
    };
    let started = Instant::now();
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let agents = c
        .list_agents(pb::Empty {})
        .await
        .map_err(e)?
        .into_inner()
        .agents;
    let hosts = cluster_hosts(&agents, cluster);
    if hosts.is_empty() {
        let known: BTreeMap<String, usize> = agents
            .iter()
            .filter(|a| a.platforms.iter().any(|p| p == "ovirt_node"))
            .fold(BTreeMap::new(), |mut m, a| {
                let l = a
                    .labels
                    .iter()
                    .find(|l| l.key == CLUSTER_LABEL)
                    .map(|l| l.value.clone())
                    .unwrap_or_else(|| "Default".into());
                *m.entry(l).or_default() += 1;
                m
            });
        return Err(CliError::Usage(format!(
            "no oVirt host agent in cluster {cluster:?} (label {CLUSTER_LABEL}); clusters \
             with hosts: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known
                    .iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
        .into());
    }
    let engines: Vec<String> = agents
        .iter()
        .filter(|a| a.platforms.iter().any(|p| p == "ovirt_engine"))
        .map(|a| a.name.clone())
        .collect();
    eprintln!(
        "recover ovirt-hosts --cluster {cluster}: {} host(s): {}",
        hosts.len(),
        hosts.join(", ")
    );
    eprintln!(
        "  1. ovirt-engine on {} (only if an engine certificate expired)",
        if engines.is_empty() {
            "the engine agent".to_owned()
        } else {
            engines.join(", ")
        }
    );
    eprintln!("  2. ovirt-hosts-offline on every host, {max_parallel} at a time");
    if *no_enroll {
        eprintln!("  3. (skipped: --no-enroll) Enroll Certificate through the engine");
    } else {
        eprintln!("  3. ovirt-hosts: Enroll Certificate of each host through the engine");
    }
    // Expired = due within one second.
    let engine_stage = Stage {
        recipe: "ovirt-engine",
        agents: engines.clone(),
        within: Duration::from_secs(1),
        max_parallel: 1,
        params: vec![],
    };
    let offline = Stage {
        recipe: "ovirt-hosts-offline",
        agents: hosts.clone(),
        within: Duration::from_secs(1),
        max_parallel: *max_parallel,
        params: vec![],
    };
    let enroll = Stage {
        recipe: "ovirt-hosts",
        agents: hosts.clone(),
        within: MAX_HORIZON,
        max_parallel: *max_parallel,
        params: vec![],
    };
    let mut stages = vec![&engine_stage, &offline];
    if !*no_enroll {
        stages.push(&enroll);
    }
    for (i, stage) in stages.iter().enumerate() {
        if stage.agents.is_empty() {
            eprintln!("step {}: {}: no agent, skipped", i + 1, stage.recipe);
            continue;
        }
        // The enrollment can only be planned once the hosts are back (a dry run plans it
        // against the expired state, which the recipe may refuse: that is shown, not fatal).
        match stage.run(conn, *dry_run, output).await? {
            Outcome::Nothing(why) => eprintln!("step {}: {}: {why}", i + 1, stage.recipe),
            Outcome::Planned(id) => {
                eprintln!("step {}: {}: plan {id} (dry run)", i + 1, stage.recipe)
            }
            Outcome::Done(id) => eprintln!("step {}: {}: plan {id} succeeded", i + 1, stage.recipe),
        }
    }
    eprintln!(
        "recover ovirt-hosts --cluster {cluster}: {} in {:.1}s wall time",
        if *dry_run { "planned" } else { "done" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One recipe run over some agents.
struct Stage {
    recipe: &'static str,
    agents: Vec<String>,
    within: Duration,
    max_parallel: u32,
    /// `--param`s of the plan.
    params: Vec<pb::Label>,
}

enum Outcome {
    /// The recipe found nothing to do.
    Nothing(String),
    /// Dry run: plan built and printed.
    Planned(String),
    /// Ran and succeeded.
    Done(String),
}

impl Stage {
    async fn run(
        &self,
        conn: &Conn,
        dry_run: bool,
        output: &OutputArgs,
    ) -> anyhow::Result<Outcome> {
        let mut c = conn.client();
        let e = |s| conn.explain(s);
        let req = pb::CreatePlanRequest {
            recipe: self.recipe.to_owned(),
            agents: self.agents.clone(),
            roles: vec![],
            expiring_within_secs: self.within.as_secs(),
            policy: Some(pb::PlanPolicy {
                max_parallel: self.max_parallel,
                ..Default::default()
            }),
            dry_run,
            params: self.params.clone(),
        };
        let plan = match c.create_plan(req).await {
            Ok(p) => p.into_inner(),
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition
                    && s.message().starts_with("nothing to ") =>
            {
                return Ok(Outcome::Nothing(s.message().to_owned()));
            }
            Err(s) => return Err(e(s)),
        };
        print_plan(&plan, output, false)?;
        if dry_run {
            return Ok(Outcome::Planned(plan.id));
        }
        c.control_plan(pb::ControlPlanRequest {
            id: plan.id.clone(),
            action: "run".into(),
            ..Default::default()
        })
        .await
        .map_err(e)?;
        let mut stream = c
            .watch_plan(pb::IdRequest {
                id: plan.id.clone(),
            })
            .await
            .map_err(e)?
            .into_inner();
        let mut last = None;
        while let Some(p) = stream.message().await.map_err(e)? {
            let end = matches!(
                p.state.as_str(),
                "succeeded" | "failed" | "aborted" | "rolled_back"
            );
            last = Some(p);
            if end {
                break;
            }
        }
        let p = last.ok_or_else(|| anyhow::anyhow!("plan {}: no state received", plan.id))?;
        if p.state != "succeeded" {
            return Err(CliError::PlanFailed {
                id: p.id,
                state: p.state,
                message: format!("{} ({}; see `certfleet plan show`)", p.message, self.recipe),
            }
            .into());
        }
        Ok(Outcome::Done(p.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, platform: &str, cluster: Option<&str>) -> pb::AgentInfo {
        pb::AgentInfo {
            name: name.into(),
            platforms: vec![platform.into()],
            labels: cluster
                .map(|c| {
                    vec![pb::Label {
                        key: CLUSTER_LABEL.into(),
                        value: c.into(),
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_hosts_by_label_with_default_for_unlabelled() {
        let agents = vec![
            agent("kvm02", "ovirt_node", None),
            agent("kvm01", "ovirt_node", Some("Default")),
            agent("kvm03", "ovirt_node", Some("gpu")),
            agent("engine", "ovirt_engine", None),
            agent("vc", "vsphere", Some("Default")),
        ];
        assert_eq!(cluster_hosts(&agents, "Default"), ["kvm01", "kvm02"]);
        assert_eq!(cluster_hosts(&agents, "gpu"), ["kvm03"]);
        assert!(cluster_hosts(&agents, "none").is_empty());
    }
}
