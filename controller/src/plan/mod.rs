//! Plans: a recipe's step graph persisted with its policy, and the state of every step.
//!
//! A plan is many small documents ([`storage`]): a header, and one document per step, so a
//! step transition rewrites that step only. Every step transition is written and flushed
//! *before* it is acted on (dispatching a step, declaring it done), so a controller killed at
//! any moment resumes from the store: a step marked dispatched is sent again after a restart,
//! and the agent's step journal answers it instead of running it twice.
//!
//! Data flows one way: recipes see a neutral [`Target`] (never the controller's agent
//! records), this module and its children import nothing from the engine or policies.

use std::collections::BTreeMap;

use certfleet_common::proto as pb;
use serde::{Deserialize, Serialize};

pub mod recipes;
pub mod storage;
pub mod window;

/// The action of a step that no agent runs: the plan waits until an operator supplies the
/// signed certificate for the CSR an earlier step made (`certfleet plan supply`).
pub const OPERATOR_SIGN: &str = "operator.sign";

/// Actions that only sign one request with a CA the agent holds, changing nothing its host
/// serves. Up to [`QUEUED_SIGNS`] of them may be in flight on one agent at once (the agent still
/// runs its steps one at a time, see `run_step` in the agent): a CA agent signs for every
/// target of a plan, and one step in flight at a time made each signing wait for two flushes
/// and a round trip (15 s of a 1,000-agent `files` plan, on the one CA agent).
pub const QUEUEABLE_ACTIONS: &[&str] = &["ca.sign", "ovirt.vmconsole_sign"];

/// How many [`QUEUEABLE_ACTIONS`] steps one agent may have in flight.
pub const QUEUED_SIGNS: usize = 16;

/// Whether a step of `action` may wait in an agent's queue behind others of its kind.
pub fn queueable(action: &str) -> bool {
    QUEUEABLE_ACTIONS.contains(&action)
}

/// What a recipe knows about an agent it may plan steps for: what the agent told about its
/// host, nothing of the controller's bookkeeping (certificates, enrollment, sessions).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Target {
    /// Agent id (steps are addressed to it).
    pub id: String,
    /// Operator-facing agent name.
    pub name: String,
    /// Host name reported by the agent.
    #[serde(default)]
    pub hostname: String,
    /// Platforms detected on the host.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Labels from the join token.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CAs the agent can sign with.
    #[serde(default)]
    pub cas: Vec<String>,
    /// Files it is configured to renew.
    #[serde(default)]
    pub renewable: Vec<RenewableSpec>,
}

/// A file an agent can renew by CSR (from its hello).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RenewableSpec {
    /// Certificate path.
    pub cert: String,
    /// Key path.
    pub key: String,
    /// CA name.
    pub issuer: String,
    /// Units to restart.
    pub restart: Vec<String>,
    /// Mode.
    pub mode: String,
    /// Owner.
    pub owner: String,
    /// Group.
    pub group: String,
    /// Days (0 = CA default).
    pub days: u32,
    /// Endpoint to verify.
    pub verify_endpoint: String,
    /// Extra install paths.
    pub also: Vec<String>,
}

impl From<pb::RenewableFile> for RenewableSpec {
    fn from(r: pb::RenewableFile) -> Self {
        RenewableSpec {
            cert: r.cert,
            key: r.key,
            issuer: r.issuer,
            restart: r.restart,
            mode: r.mode,
            owner: r.owner,
            group: r.group,
            days: r.days,
            verify_endpoint: r.verify_endpoint,
            also: r.also,
        }
    }
}

/// Plan lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    /// Printed, never runs.
    DryRun,
    /// Needs `plan approve`.
    AwaitingApproval,
    /// Approved; needs `plan run` (or runs by itself when created by a policy).
    Approved,
    /// Steps are being dispatched.
    Running,
    /// Canary target done; waits for `plan approve` (or the soak time).
    WaitingCanary,
    /// Paused by an operator; dispatched steps finish, nothing new starts.
    Paused,
    /// Every step succeeded.
    Succeeded,
    /// Halted by a failure (or the failure budget).
    Failed,
    /// Stopped by an operator.
    Aborted,
    /// Undoing its changes, last step first.
    RollingBack,
    /// Changes undone.
    RolledBack,
}

impl PlanState {
    /// snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::DryRun => "dry_run",
            PlanState::AwaitingApproval => "awaiting_approval",
            PlanState::Approved => "approved",
            PlanState::Running => "running",
            PlanState::WaitingCanary => "waiting_canary",
            PlanState::Paused => "paused",
            PlanState::Succeeded => "succeeded",
            PlanState::Failed => "failed",
            PlanState::Aborted => "aborted",
            PlanState::RollingBack => "rolling_back",
            PlanState::RolledBack => "rolled_back",
        }
    }

    /// No further change happens by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PlanState::DryRun
                | PlanState::Succeeded
                | PlanState::Failed
                | PlanState::Aborted
                | PlanState::RolledBack
        )
    }
}

/// Step lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its dependencies.
    Pending,
    /// Sent (or about to be sent) to its agent; the transition is durable first.
    Dispatched,
    /// Done and verified.
    Succeeded,
    /// Failed (the agent rolled its own change back).
    Failed,
    /// Not run because the plan stopped.
    Skipped,
    /// Undone by `plan rollback`.
    RolledBack,
}

impl StepState {
    /// snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Dispatched => "dispatched",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::RolledBack => "rolled_back",
        }
    }
}

/// The policy a plan runs under.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Policy {
    /// Targets worked on at once (0 = 1).
    pub max_parallel: u32,
    /// First target alone, then wait.
    pub canary: bool,
    /// Continue after the canary by itself after this long (0 = wait for approval).
    pub canary_soak_secs: u64,
    /// Failed targets tolerated before the plan halts (0 = halt on the first failure).
    pub failure_budget: u32,
    /// Needs `plan approve` before it can run.
    pub approval_required: bool,
    /// Cron-like window (UTC); empty = any time.
    pub window: String,
    /// Window length.
    pub window_secs: u64,
}

impl From<pb::PlanPolicy> for Policy {
    fn from(p: pb::PlanPolicy) -> Self {
        Policy {
            max_parallel: p.max_parallel,
            canary: p.canary,
            canary_soak_secs: p.canary_soak_secs,
            failure_budget: p.failure_budget,
            approval_required: p.approval_required,
            window: p.window,
            window_secs: p.window_secs,
        }
    }
}

impl From<&Policy> for pb::PlanPolicy {
    fn from(p: &Policy) -> Self {
        pb::PlanPolicy {
            max_parallel: p.max_parallel,
            canary: p.canary,
            canary_soak_secs: p.canary_soak_secs,
            failure_budget: p.failure_budget,
            approval_required: p.approval_required,
            window: p.window.clone(),
            window_secs: p.window_secs,
        }
    }
}

/// One typed action on one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Globally unique (`<plan>-<n>`): the agent journals by it.
    pub id: String,
    /// Recipe-local key, used by `depends_on` and argument references.
    pub key: String,
    /// Human name.
    pub name: String,
    /// Stage name for progress display.
    pub stage: String,
    /// What the step works on (host, cluster, certificate): failure budgets count targets.
    pub target: String,
    /// Agent that runs it.
    pub agent_id: String,
    /// Agent name, for display.
    pub agent_name: String,
    /// Action name (`csr.create`, `ca.sign`, `cert.install`, …).
    pub action: String,
    /// Action arguments; `{"$ref": "key.field"}` values are filled from earlier results.
    pub args: serde_json::Value,
    /// Keys of steps that must succeed first.
    pub depends_on: Vec<String>,
    /// Exact commands it will run (dry-run display).
    pub commands: Vec<String>,
    /// Files it will touch.
    pub files: Vec<String>,
    /// Seconds before a dispatched step counts as failed.
    pub timeout_secs: u32,
    /// Part of the canary target.
    pub canary: bool,
    /// State.
    pub state: StepState,
    /// Times dispatched.
    pub attempts: u32,
    /// Result message.
    pub message: String,
    /// Result details (backup ids, fingerprints, CSR/certificate PEM).
    pub details: serde_json::Value,
    /// Last lines of streamed output.
    pub output: Vec<String>,
    /// When dispatched.
    pub started_at: i64,
    /// When finished.
    pub finished_at: i64,
}

/// A persisted plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Id.
    pub id: String,
    /// Recipe name.
    pub recipe: String,
    /// State.
    pub state: PlanState,
    /// Created at.
    pub created_at: i64,
    /// Operator or policy that created it.
    pub created_by: String,
    /// `operator` or `policy:<role>`.
    pub origin: String,
    /// Policy.
    pub policy: Policy,
    /// Steps in dispatch order: stored one document each ([`storage`]), never in the header
    /// (read from a header only when migrating a schema-2 store).
    #[serde(default, skip_serializing)]
    pub steps: Vec<Step>,
    /// Why it stopped, or what it waits for.
    pub message: String,
    /// Canary target released (approved or soaked).
    pub canary_released: bool,
    /// When the canary target finished.
    pub canary_done_at: i64,
    /// Recipe parameters.
    pub params: BTreeMap<String, String>,
    /// Digest of each step as loaded from the store: [`storage::save`] writes only the steps
    /// that changed since.
    #[serde(skip)]
    pub stored: Vec<u64>,
}

/// Output lines kept per step.
pub const OUTPUT_LINES: usize = 200;

impl Plan {
    /// Wire view.
    pub fn info(&self) -> pb::PlanInfo {
        pb::PlanInfo {
            id: self.id.clone(),
            recipe: self.recipe.clone(),
            state: self.state.as_str().into(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            policy: Some((&self.policy).into()),
            steps: self
                .steps
                .iter()
                .map(|s| pb::StepInfo {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    stage: s.stage.clone(),
                    agent_id: s.agent_id.clone(),
                    agent_name: s.agent_name.clone(),
                    action: s.action.clone(),
                    args_json: s.args.to_string(),
                    commands: s.commands.clone(),
                    files: s.files.clone(),
                    depends_on: s.depends_on.clone(),
                    state: s.state.as_str().into(),
                    message: s.message.clone(),
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    output: s.output.clone(),
                    target: s.target.clone(),
                    canary: s.canary,
                    attempts: s.attempts,
                    details_json: if s.details.is_null() {
                        String::new()
                    } else {
                        redact(&s.details).to_string()
                    },
                })
                .collect(),
            message: self.message.clone(),
            dry_run: self.state == PlanState::DryRun,
            origin: self.origin.clone(),
        }
    }

    /// A step by key.
    pub fn step(&self, key: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.key == key)
    }
}

/// Hides anything that looks like key material from views (keys never leave their host, but a
/// misbehaving action must not be able to leak one through a listing either).
fn redact(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) if s.contains("PRIVATE KEY") => {
            serde_json::Value::String("<redacted>".into())
        }
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), redact(v))).collect(),
        serde_json::Value::Array(a) => a.iter().map(redact).collect(),
        other => other.clone(),
    }
}

/// Replaces `{"$ref": "key.field"}` values in `args` with fields of earlier steps' details.
pub fn resolve_refs(plan: &Plan, args: &serde_json::Value) -> Result<serde_json::Value, String> {
    match args {
        serde_json::Value::Object(m) if m.len() == 1 && m.contains_key("$ref") => {
            let r = m["$ref"].as_str().ok_or("$ref must be a string")?;
            let (key, field) = r
                .split_once('.')
                .ok_or_else(|| format!("$ref {r:?} is not step.field"))?;
            let step = plan
                .step(key)
                .ok_or_else(|| format!("$ref {r:?}: no step {key}"))?;
            step.details
                .get(field)
                .cloned()
                .ok_or_else(|| format!("$ref {r:?}: step {key} reported no {field}"))
        }
        serde_json::Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), resolve_refs(plan, v)?);
            }
            Ok(serde_json::Value::Object(out))
        }
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| resolve_refs(plan, v))
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array),
        other => Ok(other.clone()),
    }
}
