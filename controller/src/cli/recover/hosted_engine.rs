//! `certfleet recover ovirt-hosted-engine --agent HOST`: the self-hosted engine VM is down
//! because libvirtd on its host refuses the expired VDSM certificate (reference A12), while the
//! controller and the certfleet agents (their own mTLS identities, untouched by the outage) are
//! up. One plan of recipe `ovirt-hosted-engine` that the controller runs, journals and audits:
//!
//! 1. on the host's agent, the VM brought up with the expired certificate (`--way dropin`:
//!    libvirtd without its TLS listener; `--way clock`: the host clock set back, then
//!    restored) and a CSR from the host's own key, returned in the step's result;
//! 2. the engine VM's agent, down with the VM, connects again once the VM runs: this command
//!    waits for it at most `--engine-wait` after step 1 and, when it does not come, aborts the
//!    plan naming that agent (exit 4; the host stays as step 1 left it, the VM up);
//!    the engine agent then signs the CSR with the engine CA and the host's SAN;
//! 3. on the host's agent, the certificate checked, the drop-ins removed, installed with
//!    backups, libvirtd with TLS and vdsmd restarted, verified.
//!
//! The plan is printed first; `--dry-run` prints it and changes nothing. The wall time is
//! printed at the end. An agent that is not an oVirt host is a usage error (exit 2) listing the
//! oVirt host agents; a refusal by the controller exits 3, a failed plan 4.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use certfleet_common::proto as pb;
use clap::{Args, ValueEnum};

use super::super::CliError;
use super::super::args::{duration_in, secs};
use super::super::conn::Conn;
use super::super::output::OutputArgs;
use super::super::plan::print_plan;

/// `certfleet recover ovirt-hosted-engine`
#[derive(Args)]
pub struct HostedEngineArgs {
    /// The agent of the hosted-engine host whose expired VDSM certificate keeps the engine VM
    /// down (the VM is started there).
    #[arg(long)]
    agent: String,
    /// How the VM is brought up with the expired certificate.
    #[arg(long, value_enum, default_value_t = HeWay::Dropin)]
    way: HeWay,
    /// How long to wait, once the VM is up, for the engine VM's agent to connect.
    #[arg(long, default_value = "15m", value_parser = duration_in(secs(5), secs(86_400)))]
    engine_wait: Duration,
    /// Build and print the plan as a dry run; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// `--way`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HeWay {
    /// libvirtd without its TLS listener (systemd drop-ins under /run); the clock untouched.
    Dropin,
    /// The host clock set back inside the certificate's validity, restored before the CSR.
    Clock,
}

impl HeWay {
    fn name(self) -> &'static str {
        match self {
            HeWay::Dropin => "dropin",
            HeWay::Clock => "clock",
        }
    }
}

/// oVirt host agents (platform `ovirt_node`), by name: the candidates for `--agent`.
pub fn ovirt_hosts(agents: &[pb::AgentInfo]) -> Vec<String> {
    let mut v: Vec<String> = agents
        .iter()
        .filter(|a| a.platforms.iter().any(|p| p == "ovirt_node"))
        .map(|a| a.name.clone())
        .collect();
    v.sort();
    v
}

/// Runs `recover ovirt-hosted-engine`.
pub async fn run(conn: &Conn, a: &HostedEngineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let agents = c
        .list_agents(pb::Empty {})
        .await
        .map_err(e)?
        .into_inner()
        .agents;
    let hosts = ovirt_hosts(&agents);
    let Some(host) = agents
        .iter()
        .find(|x| (x.name == a.agent || x.id == a.agent) && hosts.contains(&x.name))
    else {
        return Err(CliError::Usage(format!(
            "--agent {:?} is not an oVirt host agent (platform ovirt_node); hosted-engine \
             hosts to choose from: {}",
            a.agent,
            if hosts.is_empty() {
                "none".to_owned()
            } else {
                hosts.join(", ")
            }
        ))
        .into());
    };
    let way = a.way.name();
    let wait = humantime::format_duration(a.engine_wait);
    eprintln!(
        "recover ovirt-hosted-engine --agent {} --way {way}:",
        host.name
    );
    eprintln!(
        "  1. on {}: the HostedEngine VM up with the expired VDSM certificate ({}), then a CSR \
         from the host's own key",
        host.name,
        match a.way {
            HeWay::Dropin => "libvirtd without its TLS listener",
            HeWay::Clock => "host clock set back, then restored",
        }
    );
    eprintln!(
        "  2. wait at most {wait} for the engine VM's agent to connect, then sign the CSR there \
         with the engine CA and the host's SAN"
    );
    eprintln!(
        "  3. on {}: install the certificate with backups, libvirtd with TLS and vdsmd \
         restarted, verified",
        host.name
    );
    let req = pb::CreatePlanRequest {
        recipe: "ovirt-hosted-engine".into(),
        agents: vec![host.name.clone()],
        roles: vec![],
        // Expired = due within one second.
        expiring_within_secs: 1,
        policy: Some(pb::PlanPolicy {
            max_parallel: 1,
            ..Default::default()
        }),
        dry_run: a.dry_run,
        params: vec![
            pb::Label {
                key: "way".into(),
                value: way.into(),
            },
            pb::Label {
                key: "engine_wait".into(),
                value: a.engine_wait.as_secs().to_string(),
            },
        ],
    };
    let plan = match c.create_plan(req).await {
        Ok(p) => p.into_inner(),
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().starts_with("nothing to ") =>
        {
            eprintln!("ovirt-hosted-engine: {}", s.message());
            eprintln!(
                "recover ovirt-hosted-engine: nothing to do in {:.1}s wall time",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        Err(s) => return Err(e(s)),
    };
    print_plan(&plan, &a.output, false)?;
    let engine = plan
        .steps
        .iter()
        .find(|s| s.action == "ovirt.enroll_request")
        .map(|s| s.agent_name.clone())
        .unwrap_or_default();
    if a.dry_run {
        eprintln!("ovirt-hosted-engine: plan {} (dry run)", plan.id);
    } else {
        c.control_plan(pb::ControlPlanRequest {
            id: plan.id.clone(),
            action: "run".into(),
            ..Default::default()
        })
        .await
        .map_err(e)?;
        follow(conn, &plan.id, &host.name, &engine, a.engine_wait).await?;
        eprintln!("ovirt-hosted-engine: plan {} succeeded", plan.id);
    }
    eprintln!(
        "recover ovirt-hosted-engine --agent {}: {} in {:.1}s wall time",
        host.name,
        if a.dry_run { "planned" } else { "done" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Follows the plan to its end, printing each step's transitions. Once the host's first half
/// succeeded and until the engine signed, checks every second that the engine agent is
/// connected; after `engine_wait` without it, aborts the plan naming the agent.
async fn follow(
    conn: &Conn,
    id: &str,
    host: &str,
    engine: &str,
    engine_wait: Duration,
) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let mut stream = c
        .watch_plan(pb::IdRequest { id: id.to_owned() })
        .await
        .map_err(e)?
        .into_inner();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut vm_up_at: Option<Instant> = None;
    let mut signed = false;
    let mut told_waiting = false;
    let mut last: Option<pb::PlanInfo> = None;
    loop {
        if let Ok(next) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
            let Some(p) = next.map_err(e)? else { break };
            for s in &p.steps {
                if seen.get(&s.id) != Some(&s.state) {
                    seen.insert(s.id.clone(), s.state.clone());
                    if s.state != "pending" {
                        eprintln!(
                            "  {} {} on {}: {}{}",
                            s.id,
                            s.action,
                            s.agent_name,
                            s.state,
                            if s.message.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", s.message)
                            }
                        );
                    }
                }
                let done = s.state == "succeeded";
                if s.action == "ovirt.hosted_engine_start" && done && vm_up_at.is_none() {
                    vm_up_at = Some(Instant::now());
                }
                if s.action == "ovirt.enroll_request"
                    && s.state != "pending"
                    && s.state != "dispatched"
                {
                    signed = true;
                }
            }
            let end = matches!(
                p.state.as_str(),
                "succeeded" | "failed" | "aborted" | "rolled_back"
            );
            last = Some(p);
            if end {
                break;
            }
        }
        let Some(up) = vm_up_at.filter(|_| !signed) else {
            continue;
        };
        let connected = c
            .list_agents(pb::Empty {})
            .await
            .map_err(e)?
            .into_inner()
            .agents
            .iter()
            .any(|a| a.name == engine && a.connected);
        if connected {
            continue;
        }
        if up.elapsed() >= engine_wait {
            c.control_plan(pb::ControlPlanRequest {
                id: id.to_owned(),
                action: "abort".into(),
                ..Default::default()
            })
            .await
            .map_err(e)?;
            return Err(CliError::PlanFailed {
                id: id.to_owned(),
                state: "aborted".into(),
                message: format!(
                    "the engine VM's agent {engine} did not connect within {} after the \
                     HostedEngine VM came up on {host}; {host} is left as the first half left \
                     it (VM up, the expired certificate still in place): check the engine VM \
                     (`hosted-engine --vm-status` on {host}) and its certfleet agent, then run \
                     this again",
                    humantime::format_duration(engine_wait)
                ),
            }
            .into());
        }
        if !told_waiting {
            told_waiting = true;
            eprintln!(
                "  waiting up to {} for the engine VM's agent {engine} to connect",
                humantime::format_duration(engine_wait)
            );
        }
    }
    let p = last.ok_or_else(|| anyhow::anyhow!("plan {id}: no state received"))?;
    if p.state != "succeeded" {
        let failed: Vec<String> = p
            .steps
            .iter()
            .filter(|s| s.state == "failed")
            .map(|s| format!("{} {} on {}: {}", s.id, s.action, s.agent_name, s.message))
            .collect();
        return Err(CliError::PlanFailed {
            id: p.id,
            state: p.state,
            message: format!(
                "{}{}{} (ovirt-hosted-engine; see `certfleet plan show`)",
                p.message,
                if p.message.is_empty() || failed.is_empty() {
                    ""
                } else {
                    "; "
                },
                failed.join("; ")
            ),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_ovirt_host_agents_by_name() {
        let a = |n: &str, p: &str| pb::AgentInfo {
            name: n.into(),
            platforms: vec![p.into()],
            ..Default::default()
        };
        let agents = vec![
            a("kvm02", "ovirt_node"),
            a("engine", "ovirt_engine"),
            a("kvm01", "ovirt_node"),
        ];
        assert_eq!(ovirt_hosts(&agents), ["kvm01", "kvm02"]);
        assert!(ovirt_hosts(&[a("vc", "vsphere")]).is_empty());
    }
}
