//! Plans as printed: `plan show` (a header and every step with host, action, commands and
//! files) and `plan list`.

use std::fmt::Write as _;

use certfleet_common::model::format_time;
use certfleet_common::proto as pb;
use serde::Serialize;

use crate::cli::output::{
    Cell, Column, Format, OutputArgs, Screen, Show, Tone, ago, print_document, print_list, shorten,
    table_for, when,
};

/// A step as printed.
#[derive(Serialize)]
pub struct StepView {
    id: String,
    name: String,
    stage: String,
    target: String,
    agent: String,
    agent_id: String,
    action: String,
    args: serde_json::Value,
    commands: Vec<String>,
    files: Vec<String>,
    depends_on: Vec<String>,
    state: String,
    canary: bool,
    attempts: u32,
    message: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    details: serde_json::Value,
    output: Vec<String>,
}

/// A plan as printed (`plan show -o json`).
#[derive(Serialize)]
pub struct PlanView {
    id: String,
    recipe: String,
    state: String,
    origin: String,
    created_at: String,
    created_by: String,
    message: String,
    dry_run: bool,
    max_parallel: u32,
    canary: bool,
    failure_budget: u32,
    window: String,
    steps_total: usize,
    steps_succeeded: usize,
    steps_failed: usize,
    steps: Vec<StepView>,
}

impl From<&pb::PlanInfo> for PlanView {
    fn from(p: &pb::PlanInfo) -> Self {
        let pol = p.policy.clone().unwrap_or_default();
        PlanView {
            id: p.id.clone(),
            recipe: p.recipe.clone(),
            state: p.state.clone(),
            origin: p.origin.clone(),
            created_at: format_time(p.created_at),
            created_by: p.created_by.clone(),
            message: p.message.clone(),
            dry_run: p.dry_run,
            max_parallel: pol.max_parallel.max(1),
            canary: pol.canary,
            failure_budget: pol.failure_budget,
            window: pol.window,
            steps_total: p.steps.len(),
            steps_succeeded: p.steps.iter().filter(|s| s.state == "succeeded").count(),
            steps_failed: p.steps.iter().filter(|s| s.state == "failed").count(),
            steps: p
                .steps
                .iter()
                .map(|s| StepView {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    stage: s.stage.clone(),
                    target: s.target.clone(),
                    agent: s.agent_name.clone(),
                    agent_id: s.agent_id.clone(),
                    action: s.action.clone(),
                    args: serde_json::from_str(&s.args_json).unwrap_or_default(),
                    commands: s.commands.clone(),
                    files: s.files.clone(),
                    depends_on: s.depends_on.clone(),
                    state: s.state.clone(),
                    canary: s.canary,
                    attempts: s.attempts,
                    message: s.message.clone(),
                    started_at: when(s.started_at),
                    finished_at: when(s.finished_at),
                    details: serde_json::from_str(&s.details_json).unwrap_or_default(),
                    output: s.output.clone(),
                })
                .collect(),
        }
    }
}

/// The tone of a plan or step state.
pub fn state_tone(state: &str) -> Tone {
    match state {
        "succeeded" => Tone::Good,
        "failed" | "skipped" => Tone::Bad,
        "dispatched" | "running" | "rolling_back" => Tone::Busy,
        "rolled_back" => Tone::Undone,
        _ => Tone::Plain,
    }
}

/// Prints one plan: header, then every step with host, action, commands and files.
pub fn print_plan(p: &pb::PlanInfo, out: &OutputArgs, with_output: bool) -> anyhow::Result<()> {
    let v = PlanView::from(p);
    print_document(out, "plan show", &v, |out| {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan {}  recipe {}  state {}{}",
            v.id,
            v.recipe,
            v.state,
            if v.dry_run {
                "  (dry run: nothing will be changed)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "policy: max_parallel {}, canary {}, failure budget {}, window {}",
            v.max_parallel,
            if v.canary { "yes" } else { "no" },
            v.failure_budget,
            if v.window.is_empty() {
                "any time"
            } else {
                &v.window
            }
        );
        if !v.message.is_empty() {
            let _ = writeln!(s, "{}", v.message);
        }
        let rows: Vec<Vec<Cell>> = v
            .steps
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let mut what: Vec<String> = st.commands.iter().map(|c| format!("$ {c}")).collect();
                what.extend(st.files.iter().map(|f| format!("~ {f}")));
                vec![
                    Cell::plain(format!("{}{}", i + 1, if st.canary { "*" } else { "" })),
                    Cell::plain(&st.stage),
                    Cell::plain(&st.agent),
                    Cell::plain(&st.action),
                    Cell::plain(&st.target),
                    Cell::plain(what.join("\n")),
                    Cell::toned(&st.state, state_tone(&st.state)),
                    Cell::plain(&st.message),
                ]
            })
            .collect();
        let mut headers = vec!["#", "STAGE", "HOST", "ACTION", "STATE", "MESSAGE"];
        if out.output == Format::Wide {
            headers.extend(["TARGET", "COMMANDS / FILES"]);
        }
        let rows = rows
            .into_iter()
            .map(|mut r: Vec<Cell>| {
                // Table order: #, STAGE, HOST, ACTION, STATE, MESSAGE [, TARGET, COMMANDS].
                let what = r.remove(5);
                let target = r.remove(4);
                if out.output == Format::Wide {
                    r.extend([target, what]);
                }
                r
            })
            .collect();
        s.push_str(&table_for(
            &headers,
            rows,
            out.no_headers,
            Screen::detect(out.output),
        ));
        if out.output != Format::Wide {
            // Commands and files under the table: what a reviewer of a dry run reads.
            let width = Screen::detect(out.output).width.unwrap_or(usize::MAX);
            for (i, st) in v.steps.iter().enumerate() {
                for c in &st.commands {
                    let _ = writeln!(s, "{}", shorten(&format!("{:>3}  $ {c}", i + 1), width));
                }
                for f in &st.files {
                    let _ = writeln!(s, "{}", shorten(&format!("{:>3}  ~ {f}", i + 1), width));
                }
            }
        }
        if v.steps.iter().any(|s| s.canary) {
            let _ = writeln!(s, "* canary target");
        }
        if with_output {
            for st in &v.steps {
                if !st.output.is_empty() {
                    let _ = writeln!(s, "--- {} {} on {}", st.id, st.action, st.agent);
                    for l in &st.output {
                        let _ = writeln!(s, "    {l}");
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            "{} steps: {} succeeded, {} failed",
            v.steps_total, v.steps_succeeded, v.steps_failed
        );
        s
    })?;
    Ok(())
}

/// A plan as `plan list` prints it (no steps).
#[derive(Serialize)]
pub struct PlanSummary {
    id: String,
    recipe: String,
    state: String,
    origin: String,
    created_at: String,
    created_by: String,
    message: String,
    steps_total: usize,
    steps_succeeded: usize,
    steps_failed: usize,
    #[serde(skip)]
    created_at_secs: i64,
}

fn list_columns() -> Vec<Column<PlanSummary>> {
    vec![
        Column::new("ID", "id", |v: &PlanSummary| Cell::plain(&v.id)),
        Column::new("RECIPE", "recipe", |v: &PlanSummary| Cell::plain(&v.recipe)),
        Column::new("STATE", "state", |v: &PlanSummary| {
            Cell::toned(&v.state, state_tone(&v.state))
        }),
        Column::new("STEPS", "steps", |v: &PlanSummary| {
            Cell::plain(format!(
                "{}/{} ({} failed)",
                v.steps_succeeded, v.steps_total, v.steps_failed
            ))
        })
        .only(Show::Screen),
        Column::new("", "steps_total", |v: &PlanSummary| {
            Cell::plain(v.steps_total.to_string())
        })
        .only(Show::Csv),
        Column::new("", "steps_succeeded", |v: &PlanSummary| {
            Cell::plain(v.steps_succeeded.to_string())
        })
        .only(Show::Csv),
        Column::new("", "steps_failed", |v: &PlanSummary| {
            Cell::plain(v.steps_failed.to_string())
        })
        .only(Show::Csv),
        Column::new("ORIGIN", "origin", |v: &PlanSummary| Cell::plain(&v.origin)).only(Show::Wide),
        Column::new("AGE", "age", |v: &PlanSummary| {
            Cell::plain(ago(v.created_at_secs))
        })
        .only(Show::Screen),
        Column::new("CREATED", "created_at", |v: &PlanSummary| {
            Cell::plain(&v.created_at)
        })
        .only(Show::Wide),
        Column::new("BY", "created_by", |v: &PlanSummary| {
            Cell::plain(&v.created_by)
        }),
        Column::new("MESSAGE", "message", |v: &PlanSummary| {
            Cell::plain(&v.message)
        }),
    ]
}

/// Prints plans.
pub fn print_plans(plans: &[pb::PlanInfo], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<PlanSummary> = plans
        .iter()
        .map(|p| {
            let v = PlanView::from(p);
            PlanSummary {
                id: v.id,
                recipe: v.recipe,
                state: v.state,
                origin: v.origin,
                created_at: v.created_at,
                created_by: v.created_by,
                message: v.message,
                steps_total: v.steps_total,
                steps_succeeded: v.steps_succeeded,
                steps_failed: v.steps_failed,
                created_at_secs: p.created_at,
            }
        })
        .collect();
    print_list(out, "plan list", &views, &views, &list_columns())?;
    Ok(())
}
