//! `certfleet plan`: rotation plans built from recipes — create (or dry-run), approve, run,
//! watch, pause, resume, abort, roll back, and the CSR hand-off of operator-signed steps.
//! Rendering of plans is in `render`, following one live in `watch`.

mod render;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use certfleet_common::proto as pb;
use clap::Subcommand;

pub use render::{PlanView, print_plan, print_plans};
pub use watch::PlanWatcher;

use super::CliError;
use super::args::{MAX_HORIZON, count_in, days, duration_in, parse_labels, secs};
use super::conn::Conn;
use super::output::OutputArgs;

/// Whether the controller's refusal to build a plan means "the recipe found nothing to do"
/// (recipes answer `nothing to renew: ...` / `nothing to rotate: ...`).
fn is_nothing_to_do(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && s.message().starts_with("nothing to ")
}

/// `certfleet plan ...`
#[derive(Subcommand)]
pub enum PlanCmd {
    /// Build a plan from a recipe; prints the whole step graph.
    #[command(
        after_help = "Example:\n  certfleet plan create ovirt-hosts-offline --expiring-within 30d --dry-run"
    )]
    Create {
        /// Recipe (see `certfleet plan recipes`).
        recipe: String,
        /// Target agents (id or name, repeatable; default: every agent the recipe applies to).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Only certificates of this role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Only certificates expiring within this duration.
        #[arg(long, value_parser = duration_in(secs(1), MAX_HORIZON))]
        expiring_within: Option<Duration>,
        /// Targets worked on at once.
        #[arg(long, default_value = "1", value_parser = count_in::<u32>(1, 1000))]
        max_parallel: u32,
        /// Do one target first, then wait (for approval, or --canary-soak).
        #[arg(long)]
        canary: bool,
        /// Continue after the canary by itself after this long.
        #[arg(long, value_parser = duration_in(secs(1), days(30)))]
        canary_soak: Option<Duration>,
        /// Failed targets tolerated before the plan halts.
        #[arg(long, default_value = "0", value_parser = count_in::<u32>(0, 100_000))]
        failure_budget: u32,
        /// Require `plan approve` before `plan run`.
        #[arg(long)]
        require_approval: bool,
        /// Maintenance window, cron-like (UTC), e.g. "0 2 * * SAT".
        #[arg(long)]
        window: Option<String>,
        /// Window length.
        #[arg(long, value_parser = duration_in(secs(60), days(7)), default_value = "4h")]
        window_length: Duration,
        /// Recipe parameter key=value (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Print the graph only; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Start at once (when no approval is required).
        #[arg(long)]
        run: bool,
        /// Exit with code 5 (not 0) when the recipe finds nothing to renew.
        #[arg(long)]
        fail_if_nothing: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List plans.
    #[command(after_help = "Example:\n  certfleet plan list")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a plan: every step, its commands, files, state and output.
    #[command(after_help = "Example:\n  certfleet plan show p1a2b3c4d --output-lines")]
    Show {
        /// Plan id.
        id: String,
        /// Include each step's streamed output.
        #[arg(long)]
        output_lines: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a plan live until it finishes.
    #[command(
        after_help = "Example:\n  certfleet plan watch p1a2b3c4d || echo \"plan failed (exit 4)\""
    )]
    Watch {
        /// Plan id.
        id: String,
        /// Print each step's streamed output as it arrives.
        #[arg(long)]
        output_lines: bool,
        /// Print a heartbeat line (running steps and how long they have run) after this long
        /// without output.
        #[arg(long, value_parser = duration_in(secs(1), secs(3600)), default_value = "30s")]
        heartbeat: Duration,
        /// After losing the controller (a restart), keep reconnecting for this long.
        #[arg(long, value_parser = duration_in(secs(0), days(1)), default_value = "5m")]
        reconnect_for: Duration,
    },
    /// Approve a plan (or continue after its canary).
    #[command(after_help = "Example:\n  certfleet plan approve p1a2b3c4d")]
    Approve {
        /// Plan id.
        id: String,
    },
    /// Start an approved plan.
    #[command(after_help = "Example:\n  certfleet plan run p1a2b3c4d")]
    Run {
        /// Plan id.
        id: String,
    },
    /// Pause: running steps finish, nothing new starts.
    #[command(after_help = "Example:\n  certfleet plan pause p1a2b3c4d")]
    Pause {
        /// Plan id.
        id: String,
    },
    /// Resume a paused plan.
    #[command(after_help = "Example:\n  certfleet plan resume p1a2b3c4d")]
    Resume {
        /// Plan id.
        id: String,
    },
    /// Abort: nothing new starts.
    #[command(after_help = "Example:\n  certfleet plan abort p1a2b3c4d")]
    Abort {
        /// Plan id.
        id: String,
    },
    /// Undo a finished plan's changes, last step first.
    #[command(after_help = "Example:\n  certfleet plan rollback p1a2b3c4d")]
    Rollback {
        /// Plan id.
        id: String,
    },
    /// Print the CSR a step waits to have signed (`issuer = "operator"`).
    #[command(after_help = "Example:\n  certfleet plan csr p1a2b3c4d web-01-renew > web-01.csr")]
    Csr {
        /// Plan id.
        id: String,
        /// Step id (from `plan show -o json`).
        step: String,
    },
    /// Hand in the certificate signed for a waiting step's CSR.
    #[command(after_help = "Example:\n  certfleet plan supply p1a2b3c4d web-01-renew web-01.pem")]
    Supply {
        /// Plan id.
        id: String,
        /// Step id.
        step: String,
        /// PEM certificate file.
        cert: PathBuf,
    },
    /// List the built-in recipes.
    #[command(after_help = "Example:\n  certfleet plan recipes")]
    Recipes,
}

/// Runs a `plan` command.
pub async fn run(conn: &Conn, cmd: &PlanCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let control = |id: &str, action: &str| pb::ControlPlanRequest {
        id: id.to_owned(),
        action: action.to_owned(),
        ..Default::default()
    };
    match cmd {
        PlanCmd::Create {
            recipe,
            agents,
            roles,
            expiring_within,
            max_parallel,
            canary,
            canary_soak,
            failure_budget,
            require_approval,
            window,
            window_length,
            params,
            dry_run,
            run,
            fail_if_nothing,
            output,
        } => {
            let req = pb::CreatePlanRequest {
                recipe: recipe.clone(),
                agents: agents.clone(),
                roles: roles.clone(),
                expiring_within_secs: expiring_within.map(|d| d.as_secs()).unwrap_or(0),
                policy: Some(pb::PlanPolicy {
                    max_parallel: *max_parallel,
                    canary: *canary,
                    canary_soak_secs: canary_soak.map(|d| d.as_secs()).unwrap_or(0),
                    failure_budget: *failure_budget,
                    approval_required: *require_approval,
                    window: window.clone().unwrap_or_default(),
                    window_secs: window_length.as_secs(),
                }),
                dry_run: *dry_run,
                params: parse_labels(params)?,
            };
            let mut plan = match c.create_plan(req).await {
                Ok(p) => p.into_inner(),
                // "Nothing to renew" is an answer, not a failure: the reasons go to stderr
                // (stdout stays empty for scripts) and the exit code is 0 unless asked.
                Err(s) if is_nothing_to_do(&s) => {
                    let why = format!("{recipe}: {}", s.message());
                    if *fail_if_nothing {
                        return Err(CliError::NothingToDo(why).into());
                    }
                    eprintln!("{why}");
                    return Ok(());
                }
                Err(s) => return Err(e(s)),
            };
            if *run && !*dry_run && !*require_approval {
                plan = c
                    .control_plan(control(&plan.id, "run"))
                    .await
                    .map_err(e)?
                    .into_inner();
            }
            print_plan(&plan, output, false)?;
        }
        PlanCmd::List { output } => print_plans(
            &c.list_plans(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .plans,
            output,
        )?,
        PlanCmd::Show {
            id,
            output_lines,
            output,
        } => print_plan(
            &c.get_plan(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner(),
            output,
            *output_lines,
        )?,
        PlanCmd::Watch {
            id,
            output_lines,
            heartbeat,
            reconnect_for,
        } => {
            let opts = watch::WatchOptions {
                output_lines: *output_lines,
                heartbeat: *heartbeat,
                reconnect_for: *reconnect_for,
            };
            watch::follow(conn, id, &opts).await?;
        }
        PlanCmd::Approve { id }
        | PlanCmd::Run { id }
        | PlanCmd::Pause { id }
        | PlanCmd::Resume { id }
        | PlanCmd::Abort { id }
        | PlanCmd::Rollback { id } => {
            let action = match cmd {
                PlanCmd::Approve { .. } => "approve",
                PlanCmd::Run { .. } => "run",
                PlanCmd::Pause { .. } => "pause",
                PlanCmd::Resume { .. } => "resume",
                PlanCmd::Abort { .. } => "abort",
                _ => "rollback",
            };
            let p = c
                .control_plan(control(id, action))
                .await
                .map_err(e)?
                .into_inner();
            eprintln!(
                "plan {}: {}{}",
                p.id,
                p.state,
                if p.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.message)
                }
            );
        }
        PlanCmd::Csr { id, step } => {
            let p = c
                .get_plan(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner();
            let s = p
                .steps
                .iter()
                .find(|s| &s.id == step)
                .ok_or_else(|| anyhow::anyhow!("plan {id} has no step {step}"))?;
            let args: serde_json::Value = serde_json::from_str(&s.args_json).unwrap_or_default();
            match args.get("csr_pem").and_then(|v| v.as_str()) {
                Some(csr) if s.state == "dispatched" => print!("{csr}"),
                _ => anyhow::bail!(
                    "step {step} of plan {id} is {} and has no CSR waiting to be signed",
                    s.state
                ),
            }
        }
        PlanCmd::Supply { id, step, cert } => {
            let pem = std::fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let req = pb::ControlPlanRequest {
                id: id.clone(),
                action: "supply".into(),
                step_id: step.clone(),
                payload: pem,
            };
            let p = c.control_plan(req).await.map_err(e)?.into_inner();
            eprintln!(
                "plan {}: certificate accepted for step {step}; {}",
                p.id, p.state
            );
        }
        PlanCmd::Recipes => {
            for r in crate::plan::recipes::all() {
                println!("{:<24} {}", r.name(), r.about());
            }
        }
    }
    Ok(())
}
