//! Pins on the controller: re-trust steps in the plans that change what a declared pin covers,
//! and the pin check after every plan (issue 13, "what pins a certificate").
//!
//! Agents report their pins with every inventory scan (`agent/src/pins.rs`): discovered ones
//! (vCenter `vpx_ext` thumbprints, Lookup Service SSL trust), which the platform's own actions
//! re-trust, and declared ones (`[[pins]]`), for which [`add_retrust_steps`] adds a
//! `pins.retrust` step after the agent's last step of a plan whose recipe renews the pinned
//! certificate's role (the role catalogue's recipe). The step re-trusts and reads the pin back.
//!
//! The pin check: when a plan ends, [`plan_finished`] notes each agent it ran steps on (the
//! engine then asks them to rescan); the first report scanned after that ([`on_report`]) is
//! the check: its stale pins become a finding appended to the plan's message (`plan show`)
//! and an audit entry (`plan.pins_stale`, or `plan.pins_checked` when all match). The notes
//! live in the store's `meta` tree (`pin_check/<agent>`), so a controller restart between the
//! end of a plan and the report keeps them. Agent clocks are trusted to within the time a
//! rescan takes: a report whose scan finished before the plan ended does not count.

use std::collections::{BTreeMap, BTreeSet};

use certfleet_common::model::{Pin, now, pin_state};
use certfleet_common::roles;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::Status;

use crate::fleet::{Fleet, internal};
use crate::plan::Plan;
use crate::plan::recipes::StepSpec;

/// The agent action that re-trusts one declared pin.
pub const RETRUST: &str = "pins.retrust";
const META: &str = "meta";

fn pending_key(agent: &str) -> String {
    format!("pin_check/{agent}")
}

/// Plans waiting for an agent's next report, with when each ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PendingChecks {
    plans: Vec<(String, i64)>,
}

/// Whether a plan of `recipe` renews the certificate `pin` covers.
fn renews(recipe: &str, pin: &Pin) -> bool {
    !pin.cert_role.is_empty() && roles::lookup(&pin.cert_role).recipe == recipe
}

/// The `pins.retrust` step of declared pin `p` on agent `agent` (id) named `agent_name`.
pub fn retrust_step(
    key: String,
    target: &str,
    agent: &str,
    agent_name: &str,
    p: &Pin,
    depends_on: Vec<String>,
) -> StepSpec {
    StepSpec {
        key,
        name: format!("re-trust pin {} ({})", p.name, p.cert_role),
        stage: "retrust".into(),
        target: target.to_owned(),
        agent: agent.to_owned(),
        agent_name: agent_name.to_owned(),
        action: RETRUST.into(),
        args: json!({"name": p.name}),
        depends_on,
        commands: vec![
            if p.retrust == "webhook" {
                format!(
                    "[[pins]] {}: POST retrust_webhook (JSON: pin, cert_role, fingerprint_sha256, thumbprint_sha1, not_after, pem; 2xx expected)",
                    p.name
                )
            } else {
                format!(
                    "[[pins]] {}: retrust_command (the new certificate's PEM on stdin; CERTFLEET_PIN, CERTFLEET_CERT_SHA256, CERTFLEET_CERT_SHA1 set)",
                    p.name
                )
            },
            format!(
                "[[pins]] {}: read_command again (must pin the new certificate)",
                p.name
            ),
        ],
        files: vec![],
        timeout_secs: 120,
    }
}

/// Adds a `pins.retrust` step per declared, re-trustable pin whose certificate a plan of
/// `recipe` renews, after the last step of that pin's agent in the plan (so after the change
/// and any restart), on the same target. `pins`: each agent's reported pins, by agent id.
pub fn add_retrust_steps(
    recipe: &str,
    specs: &mut Vec<StepSpec>,
    pins: &BTreeMap<String, Vec<Pin>>,
) {
    let agents: Vec<String> = {
        let mut seen = BTreeSet::new();
        specs
            .iter()
            .filter(|s| seen.insert(s.agent.clone()))
            .map(|s| s.agent.clone())
            .collect()
    };
    for agent in agents {
        let Some(agent_pins) = pins.get(&agent) else {
            continue;
        };
        let ours: Vec<&Pin> = agent_pins
            .iter()
            .filter(|p| {
                p.source == "declared"
                    && matches!(p.retrust.as_str(), "command" | "webhook")
                    && renews(recipe, p)
            })
            .collect();
        if ours.is_empty() {
            continue;
        }
        let Some(last) = specs.iter().rposition(|s| s.agent == agent) else {
            continue;
        };
        let anchor = specs[last].clone();
        let mut keys: BTreeSet<String> = specs.iter().map(|s| s.key.clone()).collect();
        let new: Vec<StepSpec> = ours
            .iter()
            .map(|p| {
                let mut key = format!("{}-retrust-{}", anchor.agent_name, p.name);
                while !keys.insert(key.clone()) {
                    key.push('_');
                }
                retrust_step(
                    key,
                    &anchor.target,
                    &agent,
                    &anchor.agent_name,
                    p,
                    vec![anchor.key.clone()],
                )
            })
            .collect();
        let at = last + 1;
        specs.splice(at..at, new);
    }
}

/// A plan ended: the agents it ran steps on get their next report checked for stale pins.
pub fn plan_finished(fleet: &Fleet, plan: &Plan) -> Result<(), Status> {
    let agents: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.attempts > 0)
        .map(|s| s.agent_id.as_str())
        .collect();
    let at = now();
    for agent in agents {
        let key = pending_key(agent);
        let mut p: PendingChecks = fleet
            .store
            .get(META, &key)
            .map_err(internal)?
            .unwrap_or_default();
        if !p.plans.iter().any(|(id, _)| *id == plan.id) {
            p.plans.push((plan.id.clone(), at));
        }
        fleet.store.put(META, &key, &p).map_err(internal)?;
    }
    Ok(())
}

/// What a pin check found, in one line.
pub fn finding(agent_name: &str, pins: &[Pin]) -> (bool, String) {
    let stale: Vec<&Pin> = pins
        .iter()
        .filter(|p| p.state == pin_state::STALE)
        .collect();
    let unknown = pins
        .iter()
        .filter(|p| p.state == pin_state::UNKNOWN)
        .count();
    if stale.is_empty() {
        return (
            false,
            format!(
                "pin check on {agent_name}: {} pin(s) match{}",
                pins.len() - unknown,
                if unknown > 0 {
                    format!(", {unknown} unknown")
                } else {
                    String::new()
                }
            ),
        );
    }
    let list: Vec<String> = stale
        .iter()
        .map(|p| format!("{} {} ({})", p.source, p.name, p.cert_role))
        .collect();
    (
        true,
        format!(
            "pin check on {agent_name}: {} stale pin(s): {}",
            stale.len(),
            list.join(", ")
        ),
    )
}

/// An agent's report was applied: if plans wait for its pin check and the report was scanned
/// after they ended, record the check on each plan and in the audit.
pub fn on_report(fleet: &Fleet, agent: &str, pins: &[Pin], scanned_at: i64) -> Result<(), Status> {
    let key = pending_key(agent);
    let Some(mut pending): Option<PendingChecks> = fleet.store.get(META, &key).map_err(internal)?
    else {
        return Ok(());
    };
    let (due, later): (Vec<_>, Vec<_>) = pending
        .plans
        .drain(..)
        .partition(|(_, ended)| *ended <= scanned_at);
    if due.is_empty() {
        return Ok(());
    }
    if later.is_empty() {
        fleet.store.remove(META, &key).map_err(internal)?;
    } else {
        fleet
            .store
            .put(META, &key, &PendingChecks { plans: later })
            .map_err(internal)?;
    }
    if pins.is_empty() {
        return fleet.store.flush().map(|_| ()).map_err(internal);
    }
    let name = fleet
        .find_agent(agent)
        .map(|a| a.name)
        .unwrap_or_else(|_| agent.to_owned());
    let (stale, text) = finding(&name, pins);
    for (plan_id, _) in due {
        {
            let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut plan) =
                crate::plan::storage::load_header(&fleet.store, &plan_id).map_err(internal)?
            {
                plan.message = if plan.message.is_empty() {
                    text.clone()
                } else {
                    format!("{}; {text}", plan.message)
                };
                fleet.save_plan(&plan)?;
            }
        }
        tracing::info!(agent, plan = %plan_id, stale, "{text}");
        fleet.audit(
            &format!("agent:{agent}"),
            if stale {
                "plan.pins_stale"
            } else {
                "plan.pins_checked"
            },
            &format!("plan:{plan_id}"),
            &text,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, agent: &str) -> StepSpec {
        StepSpec {
            key: key.into(),
            name: key.into(),
            stage: "s".into(),
            target: agent.into(),
            agent: agent.into(),
            agent_name: agent.into(),
            action: "vsphere.machine_ssl".into(),
            args: json!({}),
            depends_on: vec![],
            commands: vec![],
            files: vec![],
            timeout_secs: 1,
        }
    }

    fn pin(name: &str, source: &str, role: &str, retrust: &str) -> Pin {
        Pin {
            source: source.into(),
            name: name.into(),
            cert_role: role.into(),
            retrust: retrust.into(),
            state: "match".into(),
            ..Pin::default()
        }
    }

    #[test]
    fn retrust_steps_follow_the_agents_last_step_for_declared_pins_of_renewed_roles() {
        let mut specs = vec![
            spec("vc1-gate", "vc1"),
            spec("vc1-ms", "vc1"),
            spec("vc2-gate", "vc2"),
            spec("vc2-ms", "vc2"),
        ];
        let pins = BTreeMap::from([
            (
                "vc1".to_owned(),
                vec![
                    pin("backup", "declared", "vsphere.machine_ssl", "command"),
                    pin("by-hand", "declared", "vsphere.machine_ssl", ""),
                    pin("eam", "vpx_ext", "vsphere.machine_ssl", "certfleet"),
                    pin(
                        "other",
                        "declared",
                        "vsphere.solution_user.vpxd-extension",
                        "command",
                    ),
                ],
            ),
            (
                "vc3".to_owned(),
                vec![pin("x", "declared", "vsphere.machine_ssl", "command")],
            ),
        ]);
        add_retrust_steps("vsphere-machine-ssl", &mut specs, &pins);
        let keys: Vec<&str> = specs.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "vc1-gate",
                "vc1-ms",
                "vc1-retrust-backup",
                "vc2-gate",
                "vc2-ms"
            ]
        );
        let r = &specs[2];
        assert_eq!(r.action, RETRUST);
        assert_eq!(r.depends_on, ["vc1-ms"]);
        assert_eq!(r.args["name"], "backup");
        assert_eq!(r.target, "vc1");
        // Another recipe renews the other role.
        let mut specs = vec![spec("vc1-su", "vc1")];
        add_retrust_steps("vsphere-solution-users", &mut specs, &pins);
        assert_eq!(specs[1].key, "vc1-retrust-other");
    }

    #[test]
    fn findings_name_the_stale_pins() {
        let mut pins = vec![
            pin(
                "com.vmware.vsan.health",
                "vpx_ext",
                "vsphere.machine_ssl",
                "",
            ),
            pin("backup", "declared", "vsphere.machine_ssl", "command"),
        ];
        assert_eq!(
            finding("vc1", &pins),
            (false, "pin check on vc1: 2 pin(s) match".into())
        );
        pins[0].state = "stale".into();
        pins[1].state = "unknown".into();
        let (stale, text) = finding("vc1", &pins);
        assert!(stale);
        assert_eq!(
            text,
            "pin check on vc1: 1 stale pin(s): vpx_ext com.vmware.vsan.health (vsphere.machine_ssl)"
        );
    }
}
