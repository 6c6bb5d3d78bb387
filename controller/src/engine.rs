//! The rotation engine: moves running plans forward.
//!
//! One task wakes on every change (step result, agent connect) and every second. For each
//! running plan it applies the policy (window, canary, max parallel targets, failure budget),
//! marks ready steps dispatched — durably, flushed — and only then sends them. Results are
//! written the same way before anything else looks at them. After a crash the store says
//! exactly which steps were in flight; they are sent again and the agents' journals answer the
//! ones that already ran.
//!
//! A wake must not cost O(steps) store reads: with a 1,000-agent plan of instant steps every
//! result wakes the engine, and decoding every step document each time made a plan cost
//! O(steps²). The engine keeps the plans it drives in memory ([`ActivePlans`]): a wake reads
//! the plan headers (small) and nothing else for a plan it already holds, and writes only the
//! steps whose state it changed. The store stays the source of truth: a plan is (re)loaded
//! whenever its stored header differs from the cached one, whenever anything saves it through
//! [`Fleet::save_plan`] (operator commands, policies), and after any failed write; step
//! results and output, which write one step document, update the cached step under the same
//! plan lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::model::now;
use certfleet_common::proto as pb;
use tonic::Status;

use crate::fleet::{Fleet, internal};
use crate::plan::{OUTPUT_LINES, Plan, PlanState, Step, StepState, resolve_refs, storage};

pub use crate::plan::OPERATOR_SIGN;
pub use crate::plan::window::{in_window, next_window};

/// Loads every plan, dry runs included, with their steps (operator listings).
pub fn plans(fleet: &Fleet) -> Result<Vec<Plan>, Status> {
    storage::all(&fleet.store).map_err(internal)
}

/// Loads one plan.
pub fn load(fleet: &Fleet, id: &str) -> Result<Plan, Status> {
    storage::load(&fleet.store, id)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no plan {id}")))
}

/// Writes a plan (its header and the steps that changed) and makes it durable.
pub fn save(fleet: &Fleet, plan: &Plan) -> Result<(), Status> {
    fleet.save_plan(plan)
}

/// The plans the engine drives, as last read or written by it (see the module comment).
/// Every access happens under [`Fleet::plan_lock`].
#[derive(Default)]
pub struct ActivePlans {
    plans: std::sync::Mutex<HashMap<String, Plan>>,
}

impl ActivePlans {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Plan>> {
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the cached copy of a plan: the next wake reads it from the store. Called by every
    /// save that does not go through the engine.
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    fn take(&self, id: &str) -> Option<Plan> {
        self.map().remove(id)
    }

    fn put(&self, plan: Plan) {
        self.map().insert(plan.id.clone(), plan);
    }

    fn retain(&self, keep: &HashSet<&str>) {
        self.map().retain(|id, _| keep.contains(id.as_str()));
    }

    /// Applies `f` to the cached copy of step `index` of plan `id`, if that plan is cached.
    fn update_step(&self, id: &str, index: usize, f: impl FnOnce(&mut Step)) {
        if let Some(s) = self.map().get_mut(id).and_then(|p| p.steps.get_mut(index)) {
            f(s);
        }
    }

    /// How many plans are cached (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

/// Whether two plan headers are the same document (steps are not part of a header).
fn same_header(a: &Plan, b: &Plan) -> bool {
    serde_json::to_vec(a).ok() == serde_json::to_vec(b).ok()
}

/// How often dry runs past their time to live are removed.
const DRY_RUN_SWEEP: Duration = Duration::from_secs(60);

/// Runs the engine until `stop` fires. Its store work runs on the blocking pool, never on the
/// threads that serve connects and queries.
pub async fn run(fleet: Arc<Fleet>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Policies look at the whole inventory: every 15 s is plenty for thresholds in days.
    let mut last_policy = std::time::Instant::now() - Duration::from_secs(60);
    let mut last_sweep = std::time::Instant::now() - DRY_RUN_SWEEP;
    loop {
        fleet.metrics.engine_beat(now());
        let policy_due = last_policy.elapsed() >= Duration::from_secs(15);
        if policy_due {
            last_policy = std::time::Instant::now();
        }
        let sweep_due = last_sweep.elapsed() >= DRY_RUN_SWEEP;
        if sweep_due {
            last_sweep = std::time::Instant::now();
        }
        // Listen before the tick: a result that lands while it runs wakes the next one at once
        // (a notification nobody waits for is lost, and would cost a plan round a second).
        let notified = fleet.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let f = fleet.clone();
        let work = tokio::task::spawn_blocking(move || {
            if let Err(e) = tick(&f) {
                tracing::error!(error = %e.message(), "rotation engine tick failed");
            }
            if policy_due && let Err(e) = crate::policy::tick(&f) {
                tracing::error!(error = %e.message(), "policy evaluation failed");
            }
            if sweep_due {
                expire_dry_runs(&f);
            }
        });
        let _ = work.await;
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Removes dry runs older than the configured time to live.
pub fn expire_dry_runs(fleet: &Fleet) {
    let ttl = fleet.opts.dry_run_ttl.as_secs() as i64;
    let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
    match storage::expire_dry_runs(&fleet.store, now() - ttl) {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(
                count = gone.len(),
                ttl_s = ttl,
                "expired dry-run plans removed"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "cannot remove expired dry runs"),
    }
}

/// One pass over the running plans: the headers from the store, the steps from the cache.
pub(crate) fn tick(fleet: &Fleet) -> Result<(), Status> {
    let ids: Vec<String> = storage::headers(&fleet.store)
        .map_err(internal)?
        .into_iter()
        .filter(|p| active(p.state))
        .map(|p| p.id)
        .collect();
    {
        let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
        fleet
            .active_plans
            .retain(&ids.iter().map(String::as_str).collect());
    }
    for id in ids {
        let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Re-read the header under the lock: an operator may have changed the plan since the
        // listing. Out of the cache while it is worked on: an error leaves nothing stale.
        let Some(header) = storage::load_header(&fleet.store, &id).map_err(internal)? else {
            fleet.active_plans.forget(&id);
            continue;
        };
        let mut plan = match fleet.active_plans.take(&id) {
            Some(p) if same_header(&p, &header) => p,
            _ => load(fleet, &id)?,
        };
        if !active(plan.state) {
            continue;
        }
        let before: Vec<StepState> = plan.steps.iter().map(|s| s.state).collect();
        if advance(fleet, &mut plan, &before)? {
            persist(fleet, &plan, &before)?;
        }
        fleet.active_plans.put(plan);
    }
    Ok(())
}

/// Writes the header and the steps whose state changed since `before`, and makes them durable
/// (the engine changes no step without changing its state). Not through [`Fleet::save_plan`]:
/// that would drop the plan from the cache.
fn persist(fleet: &Fleet, plan: &Plan, before: &[StepState]) -> Result<(), Status> {
    let changed: Vec<usize> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(i, s)| before.get(*i) != Some(&s.state))
        .map(|(i, _)| i)
        .collect();
    storage::save_steps(&fleet.store, plan, &changed).map_err(internal)?;
    fleet.store.flush().map_err(internal)?;
    fleet.changed.notify_waiters();
    Ok(())
}

fn active(state: PlanState) -> bool {
    matches!(
        state,
        PlanState::Running | PlanState::RollingBack | PlanState::WaitingCanary
    )
}

/// Each step's state by key: one pass, so that checking dependencies stays O(steps).
fn states_by_key(plan: &Plan) -> HashMap<String, StepState> {
    plan.steps
        .iter()
        .map(|s| (s.key.clone(), s.state))
        .collect()
}

fn deps_met(states: &HashMap<String, StepState>, step: &Step) -> bool {
    step.depends_on
        .iter()
        .all(|d| states.get(d) == Some(&StepState::Succeeded))
}

/// Moves one plan forward; returns whether it changed since `before` (its step states when
/// loaded) and is not yet written.
fn advance(fleet: &Fleet, plan: &mut Plan, before: &[StepState]) -> Result<bool, Status> {
    let now = now();
    let mut changed = false;

    // Timeouts of dispatched steps.
    for s in plan
        .steps
        .iter_mut()
        .filter(|s| s.state == StepState::Dispatched)
    {
        if s.started_at > 0
            && now - s.started_at > i64::from(s.timeout_secs) + 30
            && fleet.registry.status(&s.agent_id).is_some()
        {
            s.state = StepState::Failed;
            s.finished_at = now;
            s.message = format!(
                "no result within {}s (agent {} connected)",
                s.timeout_secs, s.agent_name
            );
            changed = true;
        }
    }

    // Failure accounting: failed targets against the budget.
    let failed: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.state == StepState::Failed)
        .map(|s| s.target.as_str())
        .collect();
    if plan.state == PlanState::Running && failed.len() > plan.policy.failure_budget as usize {
        let names: Vec<&str> = failed.iter().copied().collect();
        plan.state = PlanState::Failed;
        plan.message = format!(
            "halted: {} failed target(s) ({}) exceed the failure budget of {}",
            failed.len(),
            names.join(", "),
            plan.policy.failure_budget
        );
        for s in plan
            .steps
            .iter_mut()
            .filter(|s| s.state == StepState::Pending)
        {
            s.state = StepState::Skipped;
        }
        fleet.audit_unflushed(
            &format!("plan:{}", plan.id),
            "plan.halt",
            &format!("plan:{}", plan.id),
            &plan.message,
        )?;
        // A halted plan may have changed certificates too: pin check and rescan.
        crate::pins::plan_finished(fleet, plan)?;
        rescan_touched(fleet, plan);
        return Ok(true);
    }
    // Steps that can never run (a dependency failed) are skipped, their target counted failed.
    let states = states_by_key(plan);
    let blocked: Vec<usize> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state == StepState::Pending)
        .filter(|(_, s)| {
            s.depends_on.iter().any(|d| {
                states
                    .get(d)
                    .is_some_and(|x| matches!(x, StepState::Failed | StepState::Skipped))
            })
        })
        .map(|(i, _)| i)
        .collect();
    for i in blocked {
        plan.steps[i].state = StepState::Skipped;
        plan.steps[i].message = "a step it depends on failed".into();
        changed = true;
    }

    // Canary gate.
    if plan.policy.canary && !plan.canary_released {
        let canary_done = plan
            .steps
            .iter()
            .filter(|s| s.canary)
            .all(|s| s.state == StepState::Succeeded);
        if canary_done {
            if plan.canary_done_at == 0 {
                plan.canary_done_at = now;
                changed = true;
            }
            if plan.policy.canary_soak_secs > 0
                && now - plan.canary_done_at >= plan.policy.canary_soak_secs as i64
            {
                plan.canary_released = true;
                plan.state = PlanState::Running;
                plan.message = "canary soaked; continuing".into();
                changed = true;
            } else if plan.state != PlanState::WaitingCanary {
                plan.state = PlanState::WaitingCanary;
                plan.message = if plan.policy.canary_soak_secs > 0 {
                    format!(
                        "canary target done; continuing after {}s soak (or `certfleet plan approve {}`)",
                        plan.policy.canary_soak_secs, plan.id
                    )
                } else {
                    format!(
                        "canary target done; continue with `certfleet plan approve {}`",
                        plan.id
                    )
                };
                return Ok(true);
            }
        }
    }
    if plan.state == PlanState::WaitingCanary {
        return Ok(changed);
    }

    // Finished?
    if plan
        .steps
        .iter()
        .all(|s| !matches!(s.state, StepState::Pending | StepState::Dispatched))
    {
        let any_failed = plan
            .steps
            .iter()
            .any(|s| matches!(s.state, StepState::Failed | StepState::Skipped));
        let (state, action) = match (plan.state, any_failed) {
            (PlanState::RollingBack, _) => (PlanState::RolledBack, "plan.rolled_back"),
            (_, false) => (PlanState::Succeeded, "plan.succeeded"),
            (_, true) => (PlanState::Failed, "plan.failed"),
        };
        plan.state = state;
        if state == PlanState::Failed && plan.message.is_empty() {
            plan.message = "finished with failed steps (within the failure budget)".into();
        }
        fleet.audit_unflushed(
            &format!("plan:{}", plan.id),
            action,
            &format!("plan:{}", plan.id),
            &plan.message,
        )?;
        // Post-plan hook: the rescan below is the pin check (`crate::pins`).
        crate::pins::plan_finished(fleet, plan)?;
        rescan_touched(fleet, plan);
        return Ok(true);
    }

    // Window.
    match in_window(&plan.policy.window, plan.policy.window_secs, now) {
        Ok(true) => {}
        Ok(false) => {
            let msg = format!(
                "waiting for the maintenance window {:?} (next {})",
                plan.policy.window,
                next_window(&plan.policy.window, now)
                    .map(certfleet_common::model::format_time)
                    .unwrap_or_default()
            );
            if plan.message != msg {
                plan.message = msg;
                changed = true;
            }
            return Ok(changed);
        }
        Err(e) => {
            plan.state = PlanState::Failed;
            plan.message = e;
            return Ok(true);
        }
    }

    // Dispatch ready steps within max_parallel targets.
    let max = plan.policy.max_parallel.max(1) as usize;
    let mut active: HashSet<String> = plan
        .steps
        .iter()
        .filter(|s| s.state == StepState::Dispatched)
        .map(|s| s.target.clone())
        .collect();
    // A target with steps done and steps left is still "in progress".
    let pending_targets: HashSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.state == StepState::Pending)
        .map(|s| s.target.as_str())
        .collect();
    let in_progress: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.state == StepState::Succeeded && pending_targets.contains(s.target.as_str()))
        .map(|s| s.target.clone())
        .collect();
    active.extend(in_progress);
    // Never two steps of one agent in flight at once (a host changes by one hand), except
    // signings queued on a CA agent (see `plan::QUEUEABLE_ACTIONS`): agent → (steps in flight,
    // all of them queueable).
    let mut busy_agents: HashMap<String, (usize, bool)> = HashMap::new();
    let occupy = |busy: &mut HashMap<String, (usize, bool)>, s: &Step| {
        let e = busy.entry(s.agent_id.clone()).or_insert((0, true));
        e.0 += 1;
        e.1 &= crate::plan::queueable(&s.action);
    };
    for s in plan
        .steps
        .iter()
        .filter(|s| s.state == StepState::Dispatched)
    {
        occupy(&mut busy_agents, s);
    }
    let states = states_by_key(plan);
    let gate_canary = plan.policy.canary && !plan.canary_released;
    let mut to_send = Vec::new();
    for i in 0..plan.steps.len() {
        let s = &plan.steps[i];
        if s.state != StepState::Pending || !deps_met(&states, s) || (gate_canary && !s.canary) {
            continue;
        }
        if !active.contains(&s.target) && active.len() >= max {
            continue;
        }
        if let Some(&(n, all_queueable)) = busy_agents.get(&s.agent_id)
            && !(all_queueable
                && crate::plan::queueable(&s.action)
                && n < crate::plan::QUEUED_SIGNS)
        {
            continue;
        }
        let args = match resolve_refs(plan, &s.args) {
            Ok(a) => a,
            Err(e) => {
                let s = &mut plan.steps[i];
                s.state = StepState::Failed;
                s.message = format!("cannot build arguments: {e}");
                s.finished_at = now;
                changed = true;
                continue;
            }
        };
        active.insert(s.target.clone());
        occupy(&mut busy_agents, s);
        let s = &mut plan.steps[i];
        s.state = StepState::Dispatched;
        s.attempts += 1;
        // The clock now, not the pass's start: a dependency's result may have landed (and
        // been stamped) since, and a step must not read as started before it finished.
        s.started_at = now.max(certfleet_common::model::now());
        s.args = args;
        if s.action == OPERATOR_SIGN {
            s.message = format!(
                "waiting for the operator: certfleet plan csr {plan_id} {step} > req.pem, sign it, then certfleet plan supply {plan_id} {step} cert.pem",
                plan_id = plan.id,
                step = s.id
            );
        }
        to_send.push(i);
    }
    if to_send.is_empty() {
        return Ok(changed);
    }
    // Durable before acted on: the transitions and their audit entries, with one flush.
    for &i in &to_send {
        let s = &plan.steps[i];
        if s.action == OPERATOR_SIGN {
            continue;
        }
        fleet.audit_unflushed(
            &format!("plan:{}", plan.id),
            "step.dispatch",
            &format!("agent:{}", s.agent_id),
            &format!(
                "{} {} ({}): {}",
                s.id,
                s.action,
                s.name,
                s.commands.join("; ")
            ),
        )?;
    }
    persist(fleet, plan, before)?;
    for i in to_send {
        let s = &plan.steps[i];
        if s.action == OPERATOR_SIGN {
            tracing::info!(plan = %plan.id, step = %s.id, "waiting for an operator to supply a certificate");
            continue;
        }
        send_step(fleet, s);
    }
    Ok(false)
}

/// After a plan ends, the agents it touched rescan, so the inventory shows the new certificates
/// without waiting for the next scan interval.
fn rescan_touched(fleet: &Fleet, plan: &Plan) {
    let agents: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.attempts > 0)
        .map(|s| s.agent_id.as_str())
        .collect();
    for a in agents {
        fleet.registry.send(
            a,
            pb::ControllerMessage {
                kind: Some(pb::controller_message::Kind::Scan(pb::ScanRequest {
                    reason: format!("plan {} finished", plan.id),
                })),
            },
        );
    }
}

fn send_step(fleet: &Fleet, s: &Step) -> bool {
    let msg = pb::ControllerMessage {
        kind: Some(pb::controller_message::Kind::Step(pb::StepRequest {
            step_id: s.id.clone(),
            action: s.action.clone(),
            args_json: s.args.to_string(),
            timeout_secs: s.timeout_secs,
            dry_run: false,
        })),
    };
    let sent = fleet.registry.send(&s.agent_id, msg);
    if !sent {
        tracing::info!(step = %s.id, agent = %s.agent_name, "agent not connected; step waits for it");
    }
    sent
}

/// An agent (re)connected: send it every step still marked dispatched for it. Steps it already
/// ran are answered from its journal. Reads the agent's own in-flight entries, never every plan.
pub fn on_agent_connected(fleet: &Fleet, agent: &str) {
    let in_flight = match storage::in_flight(&fleet.store, agent) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(agent, error = %e, "cannot read the steps in flight");
            return;
        }
    };
    let mut states: HashMap<String, Option<PlanState>> = HashMap::new();
    for (plan_id, step_id) in in_flight {
        let state = *states.entry(plan_id.clone()).or_insert_with(|| {
            storage::load_header(&fleet.store, &plan_id)
                .ok()
                .flatten()
                .map(|p| p.state)
        });
        if !matches!(
            state,
            Some(
                PlanState::Running
                    | PlanState::RollingBack
                    | PlanState::WaitingCanary
                    | PlanState::Paused
            )
        ) {
            continue;
        }
        let Ok(Some((_, s))) = storage::load_step(&fleet.store, &step_id) else {
            continue;
        };
        if s.state == StepState::Dispatched && s.agent_id == agent && s.action != OPERATOR_SIGN {
            tracing::info!(step = %s.id, agent, "re-sending in-flight step after reconnect");
            send_step(fleet, &s);
        }
    }
}

/// A step result from `agent`: one step document rewritten and flushed before anything acts
/// on it, whatever the size of its plan.
///
/// Idempotent: a result for a step that is no longer dispatched (a duplicate, or one answered
/// from the agent's journal after a re-send) changes nothing.
pub fn on_step_result(fleet: &Fleet, agent: &str, r: pb::StepResult) {
    let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(Some((i, mut s))) = storage::load_step(&fleet.store, &r.step_id) else {
        tracing::warn!(agent, step = %r.step_id, "result for an unknown step");
        return;
    };
    if s.agent_id != agent {
        // An agent can only speak for its own steps.
        tracing::warn!(agent, step = %r.step_id, owner = %s.agent_id, "result from the wrong agent ignored");
        fleet.metrics.rpc_error("step_wrong_agent");
        return;
    }
    if s.state != StepState::Dispatched {
        return;
    }
    let plan_id = storage::parse_step_id(&s.id)
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    s.state = if r.ok {
        StepState::Succeeded
    } else {
        StepState::Failed
    };
    s.message = if r.from_journal {
        format!("{} (answered from the agent's journal)", r.message)
    } else {
        r.message.clone()
    };
    s.details = serde_json::from_str(&r.details_json).unwrap_or(serde_json::Value::Null);
    s.finished_at = now();
    let (id, action, name, ok) = (s.id.clone(), s.action.clone(), s.name.clone(), r.ok);
    let msg = s.message.clone();
    let mut written = storage::put_step(&fleet.store, &plan_id, i, &s);
    if written.is_ok() {
        fleet
            .active_plans
            .update_step(&plan_id, i, |cached| *cached = s.clone());
    }
    // A successful restore marks the step whose change it undid (rollbacks only: they are the
    // one case that needs the rest of the plan; the engine reads the plan again).
    if written.is_ok()
        && ok
        && let Some(orig) = s.key.strip_prefix("rollback-")
    {
        fleet.active_plans.forget(&plan_id);
        written = storage::load(&fleet.store, &plan_id).and_then(|plan| {
            let Some(mut plan) = plan else { return Ok(()) };
            match plan.steps.iter().position(|x| x.key == orig) {
                Some(j) => {
                    plan.steps[j].state = StepState::RolledBack;
                    storage::put_step(&fleet.store, &plan_id, j, &plan.steps[j])
                }
                None => Ok(()),
            }
        });
    }
    // The result and its audit entry made durable by one flush.
    let audited = written.map_err(internal).and_then(|_| {
        fleet.audit_unflushed(
            &format!("agent:{agent}"),
            if ok { "step.succeeded" } else { "step.failed" },
            &format!("plan:{plan_id}"),
            &format!("{id} {action} ({name}): {msg}"),
        )
    });
    if let Err(e) = audited.and_then(|_| fleet.store.flush().map_err(internal)) {
        // What is stored is unsure: the engine reads the plan again.
        fleet.active_plans.forget(&plan_id);
        tracing::error!(step = %id, error = %e.message(), "cannot persist step result");
        return;
    }
    fleet.changed.notify_waiters();
}

/// A line of step output (kept in memory-bounded form in the step, not flushed).
pub fn on_step_output(fleet: &Fleet, agent: &str, o: pb::StepOutput) {
    let _guard = fleet.plan_lock.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(Some((i, mut s))) = storage::load_step(&fleet.store, &o.step_id) else {
        return;
    };
    if s.agent_id != agent {
        return;
    }
    s.output.push(o.line);
    if s.output.len() > OUTPUT_LINES {
        let cut = s.output.len() - OUTPUT_LINES;
        s.output.drain(..cut);
    }
    if let Some((plan_id, _)) = storage::parse_step_id(&o.step_id) {
        match storage::put_step(&fleet.store, plan_id, i, &s) {
            Ok(()) => {
                let lines = s.output;
                fleet
                    .active_plans
                    .update_step(plan_id, i, |cached| cached.output = lines);
            }
            Err(_) => fleet.active_plans.forget(plan_id),
        }
    }
    fleet.changed.notify_waiters();
}

/// `plan rollback`: a new round of steps restoring each succeeded step's backup, last first.
pub fn rollback(plan: &mut Plan) -> Result<usize, Status> {
    if !matches!(
        plan.state,
        PlanState::Succeeded | PlanState::Failed | PlanState::Aborted
    ) {
        return Err(Status::failed_precondition(format!(
            "plan {} is {}; only a finished plan can be rolled back",
            plan.id,
            plan.state.as_str()
        )));
    }
    let mut new_steps = Vec::new();
    let mut prev: Option<String> = None;
    let n = plan.steps.len();
    for s in plan.steps.iter().rev() {
        let Some(backup) = s.details.get("backup_id").and_then(|b| b.as_str()) else {
            continue;
        };
        if s.state != StepState::Succeeded || s.action == "backup.restore" {
            continue;
        }
        let key = format!("rollback-{}", s.key);
        let restart = s
            .details
            .get("restart")
            .cloned()
            .unwrap_or(serde_json::Value::Array(vec![]));
        new_steps.push(Step {
            id: format!("{}-{}", plan.id, n + new_steps.len() + 1),
            key: key.clone(),
            name: format!("restore what {} replaced", s.name),
            stage: "rollback".into(),
            target: s.target.clone(),
            agent_id: s.agent_id.clone(),
            agent_name: s.agent_name.clone(),
            action: "backup.restore".into(),
            args: serde_json::json!({"backup_id": backup, "restart": restart}),
            depends_on: prev.clone().into_iter().collect(),
            commands: vec![format!("certfleet-agent backups --restore {backup}")],
            files: s.files.clone(),
            timeout_secs: s.timeout_secs,
            canary: false,
            state: StepState::Pending,
            attempts: 0,
            message: String::new(),
            details: serde_json::Value::Null,
            output: Vec::new(),
            started_at: 0,
            finished_at: 0,
        });
        prev = Some(key);
    }
    if new_steps.is_empty() {
        return Err(Status::failed_precondition(format!(
            "plan {} changed nothing that has a backup",
            plan.id
        )));
    }
    let count = new_steps.len();
    plan.steps.extend(new_steps);
    plan.state = PlanState::RollingBack;
    plan.policy.canary = false;
    plan.policy.failure_budget = 0;
    plan.message = format!("rolling back {count} change(s), last first");
    Ok(count)
}

/// `plan supply`: the operator hands in the certificate for a waiting `operator.sign` step. It
/// must be valid now and carry the public key of the CSR (proof that it was issued for the key
/// that stays on the host).
pub fn supply(plan: &mut Plan, step_id: &str, cert_pem: &str) -> Result<(), Status> {
    let plan_id = plan.id.clone();
    let s = plan
        .steps
        .iter_mut()
        .find(|s| s.id == step_id || s.key == step_id)
        .ok_or_else(|| Status::not_found(format!("plan {plan_id} has no step {step_id}")))?;
    if s.action != OPERATOR_SIGN || s.state != StepState::Dispatched {
        return Err(Status::failed_precondition(format!(
            "step {} is {} ({}), not waiting for a certificate",
            s.id,
            s.state.as_str(),
            s.action
        )));
    }
    let csr = s
        .args
        .get("csr_pem")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Status::internal("waiting step has no CSR"))?;
    let der = certfleet_common::pem::first_certificate(cert_pem.as_bytes())
        .map_err(|e| Status::invalid_argument(format!("supplied certificate: {e}")))?;
    let rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| Status::invalid_argument(format!("supplied certificate: {e}")))?;
    let cert_key = certfleet_common::pki::cert_public_key_id(&der)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let csr_key = certfleet_common::pki::csr_public_key_id(csr)
        .map_err(|e| Status::internal(e.to_string()))?;
    if cert_key != csr_key {
        return Err(Status::invalid_argument(format!(
            "the supplied certificate ({}) is not for the key of step {}'s CSR; sign the CSR from `certfleet plan csr {plan_id} {}`",
            rec.subject, s.id, s.id
        )));
    }
    if rec.not_after <= now() {
        return Err(Status::invalid_argument(format!(
            "the supplied certificate expired at {}",
            certfleet_common::model::format_time(rec.not_after)
        )));
    }
    s.state = StepState::Succeeded;
    s.finished_at = now();
    s.message = format!(
        "certificate supplied: {} until {}",
        rec.subject,
        certfleet_common::model::format_time(rec.not_after)
    );
    s.details = serde_json::json!({
        "message": s.message,
        "cert_pem": certfleet_common::pem::encode("CERTIFICATE", &der),
        "fingerprint": rec.fingerprint_sha256,
        "not_after": rec.not_after,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_states(fleet: &Fleet, id: &str) -> Vec<StepState> {
        storage::load(&fleet.store, id)
            .unwrap()
            .unwrap()
            .steps
            .iter()
            .map(|s| s.state)
            .collect()
    }

    fn result(step: &Step) -> pb::StepResult {
        pb::StepResult {
            step_id: step.id.clone(),
            ok: true,
            message: "done".into(),
            details_json: "{}".into(),
            from_journal: false,
        }
    }

    /// Signings for many targets queue on the CA agent (at most `QUEUED_SIGNS`); a step that
    /// changes the host never joins them, and none joins it.
    #[test]
    fn signings_queue_on_a_ca_agent_other_steps_go_alone() {
        let (_dir, fleet) = crate::server::test_fleet();
        let mut plan = storage::tests::plan("psign", 40, PlanState::Running);
        plan.policy.max_parallel = 40;
        for (i, s) in plan.steps.iter_mut().enumerate() {
            s.agent_id = "ca".into();
            s.target = format!("host{i}");
            s.depends_on.clear();
            s.action = if i < 30 { "ca.sign" } else { "cert.install" }.into();
        }
        fleet.save_plan(&plan).unwrap();
        let in_flight = |fleet: &Fleet| -> Vec<usize> {
            stored_states(fleet, "psign")
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == StepState::Dispatched)
                .map(|(i, _)| i)
                .collect()
        };
        tick(&fleet).unwrap();
        assert_eq!(
            in_flight(&fleet),
            (0..crate::plan::QUEUED_SIGNS).collect::<Vec<_>>()
        );
        let answer = |fleet: &Fleet, steps: &[usize]| {
            let plan = storage::load(&fleet.store, "psign").unwrap().unwrap();
            for &i in steps {
                on_step_result(fleet, "ca", result(&plan.steps[i]));
            }
        };
        // Room again: the next signings fill it; the installs wait for every signing to end.
        answer(&fleet, &in_flight(&fleet));
        tick(&fleet).unwrap();
        assert_eq!(in_flight(&fleet), (16..30).collect::<Vec<_>>());
        answer(&fleet, &in_flight(&fleet));
        tick(&fleet).unwrap();
        assert_eq!(in_flight(&fleet), vec![30], "a host change goes alone");
        answer(&fleet, &[30]);
        tick(&fleet).unwrap();
        assert_eq!(in_flight(&fleet), vec![31]);
    }

    /// A wake reads the steps of a plan once, then only the step documents results rewrite:
    /// never the whole plan again (it did on every wake: O(steps²) for a plan of instant
    /// steps). What the engine holds stays what the store holds.
    #[test]
    fn a_wake_reads_no_step_of_a_plan_it_holds() {
        let (_dir, fleet) = crate::server::test_fleet();
        let mut plan = storage::tests::plan("pbig", 300, PlanState::Running);
        plan.policy.max_parallel = 300;
        fleet.save_plan(&plan).unwrap();

        let reads = storage::steps_read();
        tick(&fleet).unwrap();
        // The first wake loads the plan (300 steps) and dispatches one step per agent.
        assert_eq!(storage::steps_read() - reads, 300);
        let dispatched: Vec<usize> = stored_states(&fleet, "pbig")
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == StepState::Dispatched)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(dispatched.len(), 7, "one step per agent in flight");

        for round in 0..3 {
            let plan = storage::load(&fleet.store, "pbig").unwrap().unwrap();
            let in_flight: Vec<&Step> = plan
                .steps
                .iter()
                .filter(|s| s.state == StepState::Dispatched)
                .collect();
            assert_eq!(in_flight.len(), 7, "round {round}");
            let reads = storage::steps_read();
            for s in &in_flight {
                on_step_result(&fleet, &s.agent_id, result(s));
            }
            tick(&fleet).unwrap();
            // One read per result, none for the wake.
            assert_eq!(storage::steps_read() - reads, 7, "round {round}");
            let states = stored_states(&fleet, "pbig");
            let done = states
                .iter()
                .filter(|s| **s == StepState::Succeeded)
                .count();
            assert_eq!(done, 7 * (round + 1), "round {round}");
            assert_eq!(
                states
                    .iter()
                    .filter(|s| **s == StepState::Dispatched)
                    .count(),
                7,
                "the next steps are durable before they are sent (round {round})"
            );
        }
        // Each dispatch and each result is in the audit log (flushed with its transition).
        let audit: Vec<crate::fleet::AuditEntry> = fleet.store.tail("audit", 10_000).unwrap();
        let count = |action: &str| audit.iter().filter(|e| e.action == action).count();
        assert_eq!((count("step.dispatch"), count("step.succeeded")), (28, 21));
        let reads = storage::steps_read();
        tick(&fleet).unwrap();
        assert_eq!(
            storage::steps_read() - reads,
            0,
            "an idle wake reads nothing"
        );
        assert_eq!(fleet.active_plans.len(), 1);

        // An operator's save goes around the cache: the engine reads the plan again and obeys.
        let mut paused = storage::load(&fleet.store, "pbig").unwrap().unwrap();
        paused.state = PlanState::Paused;
        paused.steps[299].message = "touched by an operator".into();
        fleet.save_plan(&paused).unwrap();
        let before = stored_states(&fleet, "pbig");
        tick(&fleet).unwrap();
        assert_eq!(
            stored_states(&fleet, "pbig"),
            before,
            "a paused plan stays put"
        );
        assert_eq!(fleet.active_plans.len(), 0, "a plan that stopped is let go");
        let mut resumed = storage::load(&fleet.store, "pbig").unwrap().unwrap();
        resumed.state = PlanState::Running;
        fleet.save_plan(&resumed).unwrap();
        let reads = storage::steps_read();
        tick(&fleet).unwrap();
        assert_eq!(
            storage::steps_read() - reads,
            300,
            "read again after a save"
        );
        let plan = storage::load(&fleet.store, "pbig").unwrap().unwrap();
        assert_eq!(plan.steps[299].message, "touched by an operator");
    }
}
