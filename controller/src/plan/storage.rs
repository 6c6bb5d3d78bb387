//! How plans sit in the store: many small documents, so that a step transition costs one small
//! write whatever the size of the plan.
//!
//! - `plans/<id>`: the header of a plan that runs (everything but its steps);
//! - `dry_runs/<id>`: the header of a dry run, out of the engine's and the connects' way, and
//!   removed after a while ([`expire_dry_runs`]);
//! - `plan_steps/<id>/<index>`: one document per step ([`crate::store::plan_step_key`]);
//! - `steps_in_flight/<agent>/<step id>` → plan id: every dispatched step, so that an agent
//!   connect reads its own entries instead of decoding every plan.
//!
//! Writers hold the fleet's plan lock (read-modify-write). None of these functions flushes:
//! callers flush once after the transition they must not lose ("flushed before acted on").

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::plan::{Plan, PlanState, Step, StepState};
use crate::store::{Store, StoreError, in_flight_key, plan_step_key};

const PLANS: &str = "plans";
const DRY_RUNS: &str = "dry_runs";
const STEPS: &str = "plan_steps";
const IN_FLIGHT: &str = "steps_in_flight";

/// Digest of a step's stored form (what [`save`] compares to find the steps that changed).
fn digest(s: &Step) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(s).expect("steps serialize").hash(&mut h);
    h.finish()
}

/// The tree holding a plan's header: dry runs apart.
fn header_tree(state: PlanState) -> &'static str {
    if state == PlanState::DryRun {
        DRY_RUNS
    } else {
        PLANS
    }
}

/// A plan's header (its steps not loaded), from either tree.
pub fn load_header(store: &Store, id: &str) -> Result<Option<Plan>, StoreError> {
    if let Some(p) = store.get::<Plan>(PLANS, id)? {
        return Ok(Some(p));
    }
    store.get(DRY_RUNS, id)
}

thread_local! {
    static STEPS_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Step documents decoded by this thread so far (what a wake of the engine costs; tests).
pub fn steps_read() -> u64 {
    STEPS_READ.with(|c| c.get())
}

fn count_read(n: usize) {
    STEPS_READ.with(|c| c.set(c.get() + n as u64));
}

/// A whole plan: header and steps.
pub fn load(store: &Store, id: &str) -> Result<Option<Plan>, StoreError> {
    let Some(mut plan) = load_header(store, id)? else {
        return Ok(None);
    };
    plan.steps = store
        .scan_prefix::<Step>(STEPS, &format!("{id}/"))?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    count_read(plan.steps.len());
    plan.stored = plan.steps.iter().map(digest).collect();
    Ok(Some(plan))
}

/// Headers of every plan that is not a dry run (what the engine and policies look at).
pub fn headers(store: &Store) -> Result<Vec<Plan>, StoreError> {
    store.list(PLANS)
}

/// Headers of every plan, dry runs included; the steps loaded only for the plans `with_steps`
/// picks (a `/metrics` scrape reads the steps of open plans, not of every plan ever run).
pub fn all_headers(
    store: &Store,
    with_steps: impl Fn(PlanState) -> bool,
) -> Result<Vec<Plan>, StoreError> {
    let mut out = Vec::new();
    for tree in [PLANS, DRY_RUNS] {
        for h in store.list::<Plan>(tree)? {
            if with_steps(h.state) {
                if let Some(p) = load(store, &h.id)? {
                    out.push(p);
                }
            } else {
                out.push(h);
            }
        }
    }
    Ok(out)
}

/// Every plan with its steps, dry runs included (operator listings).
pub fn all(store: &Store) -> Result<Vec<Plan>, StoreError> {
    let mut out = Vec::new();
    for tree in [PLANS, DRY_RUNS] {
        for h in store.list::<Plan>(tree)? {
            if let Some(p) = load(store, &h.id)? {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Writes a plan's header and the steps that changed since it was loaded (all of them for a
/// new plan); returns how many steps were written. Not flushed.
///
/// Idempotent: writing the same plan again rewrites the same documents; a step's in-flight
/// entry exists exactly while the stored step is dispatched.
pub fn save(store: &Store, plan: &Plan) -> Result<usize, StoreError> {
    // A plan never changes between dry run and real: one header tree only.
    store.put(header_tree(plan.state), &plan.id, plan)?;
    let mut written = 0;
    for (i, s) in plan.steps.iter().enumerate() {
        if plan.stored.get(i) == Some(&digest(s)) {
            continue;
        }
        put_step(store, &plan.id, i, s)?;
        written += 1;
    }
    Ok(written)
}

/// Writes a plan's header and the steps at `indices` (what the engine changed). Not flushed.
///
/// Idempotent like [`save`]: the same call again rewrites the same documents.
pub fn save_steps(store: &Store, plan: &Plan, indices: &[usize]) -> Result<usize, StoreError> {
    store.put(header_tree(plan.state), &plan.id, plan)?;
    for &i in indices {
        if let Some(s) = plan.steps.get(i) {
            put_step(store, &plan.id, i, s)?;
        }
    }
    Ok(indices.len())
}

/// Writes one step (index `index` of plan `plan_id`) and keeps its in-flight entry. Not
/// flushed.
pub fn put_step(store: &Store, plan_id: &str, index: usize, s: &Step) -> Result<(), StoreError> {
    store.put(STEPS, &plan_step_key(plan_id, index), s)?;
    let key = in_flight_key(&s.agent_id, &s.id);
    if s.state == StepState::Dispatched {
        store.put(IN_FLIGHT, &key, &plan_id)
    } else {
        store.remove(IN_FLIGHT, &key)
    }
}

/// The plan id and 0-based index a step id (`<plan>-<n>`) names.
pub fn parse_step_id(step_id: &str) -> Option<(&str, usize)> {
    let (plan, n) = step_id.rsplit_once('-')?;
    let n: usize = n.parse().ok()?;
    Some((plan, n.checked_sub(1)?))
}

/// One step by its id, with its index, without loading the rest of its plan.
pub fn load_step(store: &Store, step_id: &str) -> Result<Option<(usize, Step)>, StoreError> {
    let Some((plan, i)) = parse_step_id(step_id) else {
        return Ok(None);
    };
    count_read(1);
    Ok(store
        .get::<Step>(STEPS, &plan_step_key(plan, i))?
        .filter(|s| s.id == step_id)
        .map(|s| (i, s)))
}

/// `(plan id, step id)` of every step dispatched to `agent`.
pub fn in_flight(store: &Store, agent: &str) -> Result<Vec<(String, String)>, StoreError> {
    let prefix = in_flight_key(agent, "");
    Ok(store
        .scan_prefix::<String>(IN_FLIGHT, &prefix)?
        .into_iter()
        .map(|(k, plan)| (plan, k[prefix.len()..].to_owned()))
        .collect())
}

/// Removes a plan: header, steps, in-flight entries. Not flushed. Idempotent.
pub fn remove(store: &Store, id: &str) -> Result<(), StoreError> {
    for (_, s) in store.scan_prefix::<Step>(STEPS, &format!("{id}/"))? {
        store.remove(IN_FLIGHT, &in_flight_key(&s.agent_id, &s.id))?;
    }
    store.remove_prefix(STEPS, &format!("{id}/"))?;
    store.remove(PLANS, id)?;
    store.remove(DRY_RUNS, id)
}

/// Removes the dry runs created before `created_before` (Unix time); returns their ids. Not
/// flushed (a dry run that comes back after a crash is removed again next time).
pub fn expire_dry_runs(store: &Store, created_before: i64) -> Result<Vec<String>, StoreError> {
    let mut gone = Vec::new();
    for p in store.list::<Plan>(DRY_RUNS)? {
        if p.created_at < created_before {
            remove(store, &p.id)?;
            gone.push(p.id);
        }
    }
    Ok(gone)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plan::Policy;

    fn step(plan: &str, i: usize, agent: &str) -> Step {
        Step {
            id: format!("{plan}-{}", i + 1),
            key: format!("k{i}"),
            name: format!("step {i}"),
            stage: "renew".into(),
            target: agent.into(),
            agent_id: agent.into(),
            agent_name: agent.into(),
            action: "cert.install".into(),
            // A realistic step carries a PEM or two in its arguments.
            args: serde_json::json!({"cert_pem": "A".repeat(1500), "path": "/etc/x.pem"}),
            depends_on: vec![],
            commands: vec!["install".into()],
            files: vec!["/etc/x.pem".into()],
            timeout_secs: 60,
            canary: false,
            state: StepState::Pending,
            attempts: 0,
            message: String::new(),
            details: serde_json::Value::Null,
            output: vec![],
            started_at: 0,
            finished_at: 0,
        }
    }

    pub(crate) fn plan(id: &str, steps: usize, state: PlanState) -> Plan {
        Plan {
            id: id.into(),
            recipe: "files".into(),
            state,
            created_at: 1000,
            created_by: "operator:admin".into(),
            origin: "operator".into(),
            policy: Policy::default(),
            steps: (0..steps)
                .map(|i| step(id, i, &format!("agent{}", i % 7)))
                .collect(),
            message: String::new(),
            canary_released: false,
            canary_done_at: 0,
            params: Default::default(),
            stored: vec![],
        }
    }

    #[test]
    fn a_step_transition_writes_that_step_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut small = plan("psmall", 10, PlanState::Running);
        let mut big = plan("pbig", 2000, PlanState::Running);
        save(&store, &small).unwrap();
        save(&store, &big).unwrap();

        // The engine loads the plan, dispatches one step, saves.
        let cost = |p: &mut Plan| {
            let mut loaded = load(&store, &p.id).unwrap().unwrap();
            assert_eq!(loaded.steps.len(), p.steps.len());
            loaded.steps[3].state = StepState::Dispatched;
            let before = store.bytes_written();
            assert_eq!(save(&store, &loaded).unwrap(), 1);
            *p = loaded;
            store.bytes_written() - before
        };
        let small_cost = cost(&mut small);
        let big_cost = cost(&mut big);
        // O(1): the same cost whatever the plan's size (a whole-plan rewrite of 2,000 steps
        // would be ~3.5 MB), and no more than a few small documents.
        assert!(big_cost <= small_cost + 64, "{big_cost} vs {small_cost}");
        assert!(big_cost < 4096, "{big_cost}");

        // A result for one step, read and written without loading the plan.
        let (i, mut s) = load_step(&store, "pbig-4").unwrap().unwrap();
        assert_eq!((i, s.state), (3, StepState::Dispatched));
        assert_eq!(
            in_flight(&store, "agent3").unwrap(),
            vec![
                ("pbig".to_owned(), "pbig-4".to_owned()),
                ("psmall".to_owned(), "psmall-4".to_owned())
            ]
        );
        s.state = StepState::Succeeded;
        let before = store.bytes_written();
        put_step(&store, "pbig", i, &s).unwrap();
        assert!(store.bytes_written() - before < 4096);
        assert_eq!(in_flight(&store, "agent3").unwrap().len(), 1);
        let reloaded = load(&store, "pbig").unwrap().unwrap();
        assert_eq!(reloaded.steps[3].state, StepState::Succeeded);
        assert_eq!(reloaded.steps.len(), 2000);
        assert!(load_step(&store, "pbig-99999").unwrap().is_none());
        assert!(load_step(&store, "nonsense").unwrap().is_none());
    }

    #[test]
    fn dry_runs_stay_out_of_the_engine_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = plan("pold", 5, PlanState::DryRun);
        old.created_at = 100;
        let mut fresh = plan("pfresh", 5, PlanState::DryRun);
        fresh.created_at = 10_000;
        save(&store, &old).unwrap();
        save(&store, &fresh).unwrap();
        save(&store, &plan("preal", 3, PlanState::Running)).unwrap();
        let ids = |v: Vec<Plan>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(headers(&store).unwrap()), vec!["preal"]);
        assert_eq!(load(&store, "pold").unwrap().unwrap().steps.len(), 5);
        assert_eq!(all(&store).unwrap().len(), 3);

        assert_eq!(expire_dry_runs(&store, 5_000).unwrap(), vec!["pold"]);
        assert!(load(&store, "pold").unwrap().is_none());
        assert!(
            store
                .scan_prefix::<Step>("plan_steps", "pold/")
                .unwrap()
                .is_empty()
        );
        assert_eq!(load(&store, "pfresh").unwrap().unwrap().steps.len(), 5);
        assert_eq!(load(&store, "preal").unwrap().unwrap().steps.len(), 3);
    }
}
