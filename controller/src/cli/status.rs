//! `certfleet status`: the controller at a glance — its version, its own certificate's and the
//! fleet CA's expiry, the state store, agents connected and missing (with when they were last
//! seen), plans running, failed and awaiting approval — and what of it needs attention, each
//! finding with what to do. `--check` makes "needs attention" an exit code (7) for scripts and
//! monitoring; without it the command exits 0 whenever it could ask the controller.

use certfleet_common::model::now;
use certfleet_common::proto as pb;
use clap::Args;
use serde::Serialize;

use super::CliError;
use super::conn::Conn;
use super::output::{OutputArgs, print_document, span, when};

/// The controller's certificate is worth a finding when it ends within this (it renews itself
/// at two thirds of its life; a certificate this close to its end means renewal is failing).
const CERT_WARN_SECS: i64 = 14 * 86_400;
/// The fleet CA is worth a finding a year before its end (every agent needs a new chain).
const CA_WARN_SECS: i64 = 365 * 86_400;
/// A failed plan is news for this long.
const RECENT_FAILURE_SECS: i64 = 7 * 86_400;
/// Clocks further apart than this break certificate validity checks near the edges.
const SKEW_WARN_SECS: i64 = 60;
/// At most this many agents or plans are named in a finding.
const NAMED: usize = 5;

/// `certfleet status`
#[derive(Args)]
pub struct StatusArgs {
    /// Exit with code 7 (not 0) when something needs attention (for scripts and monitoring).
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// An agent that should be connected and is not.
#[derive(Serialize)]
pub struct MissingAgent {
    name: String,
    id: String,
    /// RFC 3339, or empty when never seen.
    last_seen: String,
}

/// A plan as counted by `status`.
#[derive(Serialize)]
pub struct PlanRef {
    id: String,
    recipe: String,
    state: String,
}

/// `certfleet status -o json|yaml`.
#[derive(Serialize)]
pub struct StatusView {
    controller: String,
    version: String,
    controller_cert_not_after: Option<String>,
    ca_fingerprint: String,
    ca_not_after: Option<String>,
    store_healthy: bool,
    store: String,
    engine_last_pass: Option<String>,
    clock_skew_secs: i64,
    agents_total: usize,
    agents_connected: usize,
    agents_pending: usize,
    agents_missing: Vec<MissingAgent>,
    plans_running: Vec<PlanRef>,
    plans_awaiting_approval: Vec<PlanRef>,
    plans_failed: Vec<PlanRef>,
    /// What needs attention, each with what to do; empty when healthy.
    attention: Vec<String>,
    healthy: bool,
}

/// Runs `status`.
pub async fn run(conn: &Conn, args: &StatusArgs) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let st = c.get_status(pb::Empty {}).await.map_err(e)?.into_inner();
    let agents = c
        .list_agents(pb::Empty {})
        .await
        .map_err(e)?
        .into_inner()
        .agents;
    let plans = c
        .list_plans(pb::Empty {})
        .await
        .map_err(e)?
        .into_inner()
        .plans;
    let view = status_view(&conn.addr, &st, &agents, &plans, now());
    print_document(&args.output, "status", &view, |_| human(&view))?;
    if args.check && !view.healthy {
        return Err(CliError::Attention(format!(
            "controller at {} needs attention: {}",
            conn.addr,
            view.attention.join("; ")
        ))
        .into());
    }
    Ok(())
}

fn names<T>(items: &[T], name: impl Fn(&T) -> String) -> String {
    let mut s: Vec<String> = items.iter().take(NAMED).map(name).collect();
    if items.len() > NAMED {
        s.push(format!("and {} more", items.len() - NAMED));
    }
    s.join(", ")
}

/// The view and its findings, from the controller's answers, at `now` (the CLI's clock).
pub fn status_view(
    addr: &str,
    st: &pb::ControllerStatus,
    agents: &[pb::AgentInfo],
    plans: &[pb::PlanInfo],
    now: i64,
) -> StatusView {
    let mut attention = Vec::new();
    let skew = if st.now > 0 { st.now - now } else { 0 };
    if !st.store_healthy {
        attention.push(format!(
            "state store: {} (see the controller's log: a full or failing disk? the controller exits and its supervisor restarts it)",
            st.store_message
        ));
    }
    if st.engine_last_pass == 0 || st.now - st.engine_last_pass > 60 {
        attention.push(
            "the rotation engine is not running (see the controller's log; restart it)".into(),
        );
    }
    if st.controller_cert_not_after > 0 && st.controller_cert_not_after - st.now < CERT_WARN_SECS {
        attention.push(format!(
            "the controller's certificate ends in {} (it renews itself: see the controller's log for why it did not)",
            span(st.controller_cert_not_after - st.now)
        ));
    }
    if st.ca_not_after > 0 && st.ca_not_after - st.now < CA_WARN_SECS {
        attention.push(format!(
            "the fleet CA ends in {} (plan its rotation before then: every agent needs the new CA)",
            span(st.ca_not_after - st.now)
        ));
    }
    if skew.abs() > SKEW_WARN_SECS {
        attention.push(format!(
            "this machine's clock and the controller's differ by {} (fix NTP on the one that is wrong)",
            span(skew.abs())
        ));
    }
    let active: Vec<&pb::AgentInfo> = agents.iter().filter(|a| a.state == "active").collect();
    let missing: Vec<MissingAgent> = active
        .iter()
        .filter(|a| !a.connected)
        .map(|a| MissingAgent {
            name: a.name.clone(),
            id: a.id.clone(),
            last_seen: when(a.last_seen).unwrap_or_default(),
        })
        .collect();
    if !missing.is_empty() {
        attention.push(format!(
            "{} agent(s) not connected: {} (is certfleet-agent running there? `certfleet agents list -o wide`)",
            missing.len(),
            names(&missing, |m| m.name.clone())
        ));
    }
    let pending = agents
        .iter()
        .filter(|a| a.state == "pending_approval")
        .count();
    let r = |p: &pb::PlanInfo| PlanRef {
        id: p.id.clone(),
        recipe: p.recipe.clone(),
        state: p.state.clone(),
    };
    let running: Vec<PlanRef> = plans
        .iter()
        .filter(|p| {
            matches!(
                p.state.as_str(),
                "running" | "waiting_canary" | "paused" | "rolling_back"
            )
        })
        .map(r)
        .collect();
    let awaiting: Vec<PlanRef> = plans
        .iter()
        .filter(|p| p.state == "awaiting_approval")
        .map(r)
        .collect();
    let failed: Vec<PlanRef> = plans
        .iter()
        .filter(|p| p.state == "failed" && st.now - p.created_at < RECENT_FAILURE_SECS)
        .map(r)
        .collect();
    if !failed.is_empty() {
        attention.push(format!(
            "{} plan(s) failed in the last 7 days: {} (`certfleet plan show ID`)",
            failed.len(),
            names(&failed, |p| p.id.clone())
        ));
    }
    if !awaiting.is_empty() {
        attention.push(format!(
            "{} plan(s) await approval: {} (`certfleet plan approve ID`)",
            awaiting.len(),
            names(&awaiting, |p| p.id.clone())
        ));
    }
    StatusView {
        controller: addr.to_owned(),
        version: st.version.clone(),
        controller_cert_not_after: when(st.controller_cert_not_after),
        ca_fingerprint: st.ca_fingerprint.clone(),
        ca_not_after: when(st.ca_not_after),
        store_healthy: st.store_healthy,
        store: st.store_message.clone(),
        engine_last_pass: when(st.engine_last_pass),
        clock_skew_secs: skew,
        agents_total: agents.len(),
        agents_connected: agents.iter().filter(|a| a.connected).count(),
        agents_pending: pending,
        agents_missing: missing,
        plans_running: running,
        plans_awaiting_approval: awaiting,
        plans_failed: failed,
        healthy: attention.is_empty(),
        attention,
    }
}

/// The table form: one line per fact, then what needs attention.
fn human(v: &StatusView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<16} {val}\n"));
    let relative = |t: &Option<String>| -> String {
        t.as_deref()
            .and_then(certfleet_common::model::parse_time)
            .map(|at| format!(" (in {})", span(at - now())))
            .unwrap_or_default()
    };
    line("CONTROLLER", v.controller.clone());
    line("VERSION", v.version.clone());
    line(
        "CERTIFICATE",
        format!(
            "until {}{}",
            v.controller_cert_not_after.as_deref().unwrap_or("unknown"),
            relative(&v.controller_cert_not_after)
        ),
    );
    line(
        "FLEET CA",
        format!(
            "until {}{}, {}",
            v.ca_not_after.as_deref().unwrap_or("unknown"),
            relative(&v.ca_not_after),
            super::output::shorten(&v.ca_fingerprint, 16)
        ),
    );
    line(
        "STORE",
        if v.store_healthy {
            "ok".into()
        } else {
            format!("FAILING: {}", v.store)
        },
    );
    line(
        "AGENTS",
        format!(
            "{} connected, {} missing, {} awaiting approval, {} total",
            v.agents_connected,
            v.agents_missing.len(),
            v.agents_pending,
            v.agents_total
        ),
    );
    for m in v.agents_missing.iter().take(NAMED) {
        line(
            "  missing",
            format!(
                "{} (last seen {})",
                m.name,
                if m.last_seen.is_empty() {
                    "never"
                } else {
                    &m.last_seen
                }
            ),
        );
    }
    line(
        "PLANS",
        format!(
            "{} running, {} awaiting approval, {} failed (7d)",
            v.plans_running.len(),
            v.plans_awaiting_approval.len(),
            v.plans_failed.len()
        ),
    );
    if v.attention.is_empty() {
        out.push_str("\nhealthy: nothing needs attention\n");
    } else {
        out.push_str("\nneeds attention:\n");
        for a in &v.attention {
            out.push_str(&format!("  - {a}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(now: i64) -> pb::ControllerStatus {
        pb::ControllerStatus {
            version: "1.0".into(),
            controller_cert_not_after: now + 300 * 86_400,
            ca_not_after: now + 3000 * 86_400,
            ca_fingerprint: "ab".repeat(32),
            store_healthy: true,
            store_message: "ok".into(),
            engine_last_pass: now - 1,
            now,
        }
    }

    #[test]
    fn healthy_then_each_finding_names_what_and_the_fix() {
        let now = 1_800_000_000;
        let v = status_view("ctl:7443", &st(now), &[], &[], now);
        assert!(v.healthy && v.attention.is_empty(), "{:?}", v.attention);

        let mut bad = st(now);
        bad.store_healthy = false;
        bad.store_message = "state store writes are failing: disk full".into();
        bad.controller_cert_not_after = now + 86_400;
        let agents = vec![pb::AgentInfo {
            name: "vcsa-01".into(),
            id: "a1".into(),
            state: "active".into(),
            connected: false,
            last_seen: now - 3600,
            ..Default::default()
        }];
        let plans = vec![
            pb::PlanInfo {
                id: "p1".into(),
                state: "failed".into(),
                created_at: now - 60,
                ..Default::default()
            },
            pb::PlanInfo {
                id: "p2".into(),
                state: "awaiting_approval".into(),
                created_at: now - 60,
                ..Default::default()
            },
        ];
        let v = status_view("ctl:7443", &bad, &agents, &plans, now + 600);
        let all = v.attention.join("\n");
        assert!(!v.healthy);
        for want in [
            "disk full",
            "certificate ends in 1d",
            "vcsa-01",
            "p1",
            "plan approve",
            "clock",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        assert_eq!(v.agents_missing.len(), 1);
        let text = human(&v);
        assert!(text.contains("needs attention:"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= 200), "{text}");
    }
}
