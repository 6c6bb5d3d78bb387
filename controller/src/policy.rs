//! Policies (`certfleet policy set ROLE --renew-within 30d --window "0 2 * * SAT"`) and plan
//! creation.
//!
//! The engine evaluates policies every tick: when a certificate of a role crosses its
//! threshold and no open plan of that policy covers it, a plan is created (running at once
//! with `--auto-approve`, else waiting for approval). A certificate is never left to expire
//! waiting for a window: when the next window opens after the earliest not-after in scope
//! (less a safety hour), the plan ignores the window and says so.

use std::collections::BTreeMap;

use certfleet_common::model::now;
use certfleet_common::proto as pb;
use certfleet_common::roles;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::fleet::{AgentState, Fleet, internal};
use crate::inventory::owner::TAKE_OVER;
use crate::plan::recipes::{self, RecipeInput};
use crate::plan::window::{in_window, next_window};
use crate::plan::{Plan, PlanState, Policy, Step, StepState, Target, storage};

/// A renewal policy for one role.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolePolicy {
    /// Role (or role prefix).
    pub role: String,
    /// Renew when within this many seconds of expiry.
    pub renew_within_secs: u64,
    /// Cron-like window (UTC); empty = any time.
    pub window: String,
    /// Window length.
    pub window_secs: u64,
    /// Run without approval.
    pub auto_approve: bool,
    /// Targets at once.
    pub max_parallel: u32,
}

impl From<pb::PolicyInfo> for RolePolicy {
    fn from(p: pb::PolicyInfo) -> Self {
        RolePolicy {
            role: p.role,
            renew_within_secs: p.renew_within_secs,
            window: p.window,
            window_secs: p.window_secs,
            auto_approve: p.auto_approve,
            max_parallel: p.max_parallel,
        }
    }
}

impl From<&RolePolicy> for pb::PolicyInfo {
    fn from(p: &RolePolicy) -> Self {
        pb::PolicyInfo {
            role: p.role.clone(),
            renew_within_secs: p.renew_within_secs,
            window: p.window.clone(),
            window_secs: p.window_secs,
            auto_approve: p.auto_approve,
            max_parallel: p.max_parallel,
        }
    }
}

/// What to plan.
pub struct PlanRequest {
    /// Recipe name.
    pub recipe: String,
    /// Agent ids or names (empty = all).
    pub agents: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Expiry horizon in seconds (0 = regardless).
    pub expiring_within_secs: u64,
    /// Policy.
    pub policy: Policy,
    /// Dry run.
    pub dry_run: bool,
    /// Parameters.
    pub params: BTreeMap<String, String>,
    /// Who.
    pub created_by: String,
    /// `operator` or `policy:<role>`.
    pub origin: String,
    /// Store the plan running (a policy that needs no approval), not approved and waiting for
    /// `plan run`. Ignored for dry runs and when approval is required.
    pub start: bool,
    /// What the plan's message begins with (a policy's reason for deviating from its window).
    pub note: String,
}

/// Builds (and stores) a plan from a recipe.
pub fn create_plan(fleet: &Fleet, req: PlanRequest) -> Result<Plan, Status> {
    let recipe = recipes::find(&req.recipe).map_err(Status::invalid_argument)?;
    if let Some(takes) = recipes::params_of(recipe.name()) {
        let mut valid: Vec<String> = takes.iter().map(|p| (*p).to_owned()).collect();
        valid.push(TAKE_OVER.to_owned());
        for k in req.params.keys() {
            if !takes.contains(&k.as_str()) && k != TAKE_OVER {
                return Err(crate::inventory::unknown_value(
                    &format!("--param of recipe {}:", recipe.name()),
                    k,
                    &valid,
                ));
            }
        }
    }
    if !req.policy.window.is_empty() {
        req.policy.window.parse::<croner::Cron>().map_err(|e| {
            Status::invalid_argument(format!("window {:?}: {e}", req.policy.window))
        })?;
    }
    let all = crate::inventory::all(fleet)?;
    for role in &req.roles {
        crate::inventory::check_role(
            role,
            all.iter()
                .flat_map(|(_, inv)| inv.certificates().map(|c| c.role)),
            false,
        )?;
    }
    // Name order: operators read plans top to bottom and expect hosts in the order they know.
    let active: Vec<Target> = all
        .iter()
        .map(|(a, _)| a)
        .filter(|a| a.state == AgentState::Active)
        .map(|a| a.target())
        .collect();
    let mut agents: Vec<&Target> = active.iter().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let targets: Vec<&Target> = if req.agents.is_empty() {
        agents.clone()
    } else {
        let mut t = Vec::new();
        for name in &req.agents {
            let a = agents
                .iter()
                .find(|a| &a.id == name || &a.name == name)
                .ok_or_else(|| {
                    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
                    let mut e = crate::inventory::unknown_value("--agent", name, &names);
                    if all.iter().any(|(a, _)| &a.id == name || &a.name == name) {
                        // Known, but revoked or awaiting approval: not a target.
                        e = Status::invalid_argument(format!(
                            "agent {name:?} is not active (revoked or awaiting approval); active agents: {}",
                            e.message().split("valid: ").nth(1).unwrap_or("none")
                        ));
                    }
                    e
                })?;
            t.push(*a);
        }
        t
    };
    let take_over = match req.params.get(TAKE_OVER).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(Status::invalid_argument(format!(
                "--param {TAKE_OVER}={v:?}: expected true or false"
            )));
        }
    };
    // Certificates another renewer owns stay out unless the operator takes them over: the
    // recipe never sees them, and the plan (or the refusal) says which were left and to whom.
    let owned = if take_over {
        Default::default()
    } else {
        fleet.inventory.owned_by_others(fleet)?
    };
    let mut left_to_others: Vec<String> = Vec::new();
    let inventory = all
        .iter()
        .map(|(a, inv)| {
            let certs: Vec<_> = inv
                .certificates()
                .filter(|c| {
                    let Some(o) = owned.get(&(a.id.clone(), c.fingerprint_sha256.clone())) else {
                        return true;
                    };
                    if req.roles.is_empty()
                        || req
                            .roles
                            .iter()
                            .any(|r| c.role == *r || c.role.starts_with(&format!("{r}.")))
                    {
                        left_to_others.push(format!(
                            "{} {} at {}: renewed by {o}",
                            a.name,
                            c.role,
                            c.locations
                                .first()
                                .map(|l| l.describe())
                                .unwrap_or_default()
                        ));
                    }
                    false
                })
                .collect();
            (a.id.clone(), certs)
        })
        .collect();
    left_to_others.sort();
    left_to_others.dedup();
    let left_note = (!left_to_others.is_empty()).then(|| {
        format!(
            "left to their own renewers (--param {TAKE_OVER}=true to renew them anyway): {}",
            left_to_others.join("; ")
        )
    });
    let now = now();
    let input = RecipeInput {
        targets,
        agents,
        inventory,
        roles: req.roles.clone(),
        expiring_before: (req.expiring_within_secs > 0)
            .then(|| now + req.expiring_within_secs as i64),
        params: req.params.clone(),
        pins: all
            .iter()
            .map(|(a, inv)| (a.id.clone(), inv.pins().to_vec()))
            .collect(),
    };
    let mut specs = recipe.build(&input).map_err(|e| {
        Status::failed_precondition(match &left_note {
            Some(note) => format!("{e}; {note}"),
            None => e,
        })
    })?;
    crate::pins::add_retrust_steps(&req.recipe, &mut specs, &input.pins);
    let id = format!("p{}", &crate::enroll::random_id()[..8]);
    let first_target = specs.first().map(|s| s.target.clone()).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for s in &specs {
        if !seen.insert(s.key.clone()) {
            return Err(Status::internal(format!(
                "recipe {} produced duplicate step key {}",
                req.recipe, s.key
            )));
        }
    }
    let steps: Vec<Step> = specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| Step {
            id: format!("{id}-{}", i + 1),
            canary: req.policy.canary && s.target == first_target,
            key: s.key,
            name: s.name,
            stage: s.stage,
            target: s.target,
            agent_id: s.agent,
            agent_name: s.agent_name,
            action: s.action,
            args: s.args,
            depends_on: s.depends_on,
            commands: s.commands,
            files: s.files,
            timeout_secs: s.timeout_secs,
            state: StepState::Pending,
            attempts: 0,
            message: String::new(),
            details: serde_json::Value::Null,
            output: Vec::new(),
            started_at: 0,
            finished_at: 0,
        })
        .collect();
    let state = if req.dry_run {
        PlanState::DryRun
    } else if req.policy.approval_required {
        PlanState::AwaitingApproval
    } else if req.start {
        PlanState::Running
    } else {
        PlanState::Approved
    };
    // Written once, whole: a reader (or a crash) never sees the plan without its state or note.
    let message = [Some(req.note), left_note]
        .into_iter()
        .flatten()
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let plan = Plan {
        id: id.clone(),
        recipe: req.recipe.clone(),
        state,
        created_at: now,
        created_by: req.created_by.clone(),
        origin: req.origin.clone(),
        policy: req.policy,
        steps,
        message,
        canary_released: false,
        canary_done_at: 0,
        params: req.params,
        stored: Vec::new(),
    };
    fleet.save_plan(&plan)?;
    fleet.audit(
        &req.created_by,
        if req.dry_run {
            "plan.dry_run"
        } else {
            "plan.create"
        },
        &format!("plan:{id}"),
        &format!("recipe={} steps={}", plan.recipe, plan.steps.len()),
    )?;
    Ok(plan)
}

/// Evaluates every policy against the inventory.
pub fn tick(fleet: &Fleet) -> Result<(), Status> {
    let policies: Vec<RolePolicy> = fleet.store.list("policies").map_err(internal)?;
    if policies.is_empty() {
        return Ok(());
    }
    let now = now();
    // Headers only: dry runs and steps stay unread.
    let open: Vec<Plan> = storage::headers(&fleet.store)
        .map_err(internal)?
        .into_iter()
        .filter(|p| !p.state.is_final() || p.state == PlanState::Failed)
        .collect();
    for pol in policies {
        let origin = format!("policy:{}", pol.role);
        // One open plan per policy at a time (a failed one needs an operator's eyes first).
        if open
            .iter()
            .any(|p| p.origin == origin && (!p.state.is_final() || p.created_at > now - 3600))
        {
            continue;
        }
        let recipe = roles::lookup(&pol.role).recipe;
        if recipe.is_empty() {
            continue;
        }
        // From the inventory index (by expiry): nothing is decoded on a tick.
        let earliest = fleet.inventory.earliest_due(
            fleet,
            &pol.role,
            now,
            i64::try_from(pol.renew_within_secs).unwrap_or(i64::MAX),
        )?;
        let Some(deadline) = earliest else { continue };
        let mut window = pol.window.clone();
        let mut note = String::new();
        if !window.is_empty()
            && let Some(next) = next_window(&window, now)
            && !in_window(&window, pol.window_secs, now).unwrap_or(false)
            && next > deadline - 3600
        {
            note = format!(
                "next window {} is too late for a certificate expiring {}: renewing now",
                certfleet_common::model::format_time(next),
                certfleet_common::model::format_time(deadline)
            );
            window.clear();
        }
        let req = PlanRequest {
            recipe: recipe.to_owned(),
            agents: vec![],
            roles: vec![pol.role.clone()],
            expiring_within_secs: pol.renew_within_secs,
            policy: Policy {
                max_parallel: pol.max_parallel.max(1),
                approval_required: !pol.auto_approve,
                window,
                window_secs: pol.window_secs,
                ..Default::default()
            },
            dry_run: false,
            params: BTreeMap::new(),
            created_by: origin.clone(),
            origin: origin.clone(),
            // Stored running and with its note in one write: a second save of this copy could
            // undo what the engine did in between, and a crash between two writes would leave an
            // auto-approved plan waiting for `plan run` with no one to give it.
            start: pol.auto_approve,
            note,
        };
        match create_plan(fleet, req) {
            Ok(plan) => {
                tracing::info!(plan = %plan.id, role = %pol.role, "policy created a plan");
            }
            Err(e) => {
                tracing::debug!(role = %pol.role, reason = %e.message(), "policy: nothing to plan")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::AgentRecord;

    /// A policy that needs no approval and whose window comes after the certificate expires
    /// writes its plan once: running, with the reason it is not waiting. A second write of the
    /// policy's own copy could undo what the engine did in between; a reader (or a crash) between
    /// two writes saw an approved plan with no note, waiting for a `plan run` no one would give.
    #[test]
    fn an_auto_approved_policy_stores_its_plan_running_with_its_note_in_one_write() {
        let (_dir, fleet) = crate::server::test_fleet();
        let now = now();
        let day = 86_400;
        let mut agent: AgentRecord = serde_json::from_value(serde_json::json!({
            "id": "a1", "name": "web1", "hostname": "web1.lab", "platforms": [],
            "version": "1", "state": AgentState::Active, "enrolled_at": 1, "last_seen": now,
            "cert_not_after": now + 30 * day, "cert_fingerprint": "", "key_id": "",
            "labels": {}, "cas": [], "superseded": [],
        }))
        .unwrap();
        agent.renewable = vec![crate::plan::RenewableSpec {
            cert: "/etc/app/app.pem".into(),
            key: "/etc/app/app.key".into(),
            issuer: recipes::files::OPERATOR_ISSUER.into(),
            ..Default::default()
        }];
        fleet.store.put("agents", "a1", &agent).unwrap();
        let report = pb::InventoryReport {
            full: true,
            certificates: vec![pb::CertificateRecord {
                fingerprint_sha256: "f1".into(),
                subject: "CN=web1".into(),
                issuer: "CN=ops".into(),
                not_before: now - day,
                not_after: now + 5 * day,
                role: "file.renewable".into(),
                locations: vec![pb::Location {
                    kind: "file".into(),
                    path: "/etc/app/app.pem".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            scanned_at: now,
            ..Default::default()
        };
        crate::inventory::apply(&fleet, "a1", report, 1000).unwrap();
        // 29 February: months or years away, far past an expiry in 5 days.
        let policy = RolePolicy {
            role: "file.renewable".into(),
            renew_within_secs: 30 * day as u64,
            window: "0 3 29 2 *".into(),
            window_secs: 3600,
            auto_approve: true,
            max_parallel: 1,
        };
        fleet.store.put("policies", &policy.role, &policy).unwrap();

        let writes = fleet.store.generation("plans");
        tick(&fleet).unwrap();
        assert_eq!(
            fleet.store.generation("plans") - writes,
            1,
            "the plan's header is written once"
        );
        let plans = storage::headers(&fleet.store).unwrap();
        assert_eq!(plans.len(), 1);
        let plan = storage::load(&fleet.store, &plans[0].id).unwrap().unwrap();
        assert_eq!(plan.state, PlanState::Running);
        assert_eq!(plan.origin, "policy:file.renewable");
        assert!(plan.message.contains("too late"), "{}", plan.message);
        assert!(!plan.steps.is_empty());

        // The next tick sees the open plan and makes no other.
        tick(&fleet).unwrap();
        assert_eq!(storage::headers(&fleet.store).unwrap().len(), 1);
    }
}
