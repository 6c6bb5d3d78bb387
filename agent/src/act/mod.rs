//! Actions: what the controller can ask an agent to do, one typed step at a time.
//!
//! Every action that changes the host backs up what it replaces ([`backup`]), writes
//! atomically with the right owner and mode, verifies the result, and undoes its own change
//! when the verification fails. Each step id is journaled ([`journal`]) with its result, so a
//! step re-sent after a lost connection or a controller restart is answered, never run twice.
//! Before acting, a step's intent is journaled durably ([`intent`]); a step re-sent after its
//! agent died mid-step (intent without result) is resumed only by actions that are idempotent
//! by construction, which look at the host first, and refused ("interrupted, needs operator")
//! by every other action.

use std::time::Duration;

use certfleet_common::proto as pb;
use serde_json::Value;

use crate::config::AgentConfig;
use crate::state::StateDir;

pub mod backup;
pub mod esxi;
pub mod generic;
pub mod gke;
pub mod hosted_engine;
pub mod intent;
pub mod journal;
pub mod ovirt;
pub mod vsphere;

/// An action failed; the message names the file, command or service.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ActError(pub String);

impl ActError {
    /// Shorthand.
    pub fn new(msg: impl Into<String>) -> Self {
        ActError(msg.into())
    }
}

impl From<crate::exec::ToolError> for ActError {
    fn from(e: crate::exec::ToolError) -> Self {
        ActError(e.to_string())
    }
}

/// What an action runs with.
pub struct ActContext<'a> {
    /// Agent configuration (root prefix, tool paths, CAs).
    pub cfg: &'a AgentConfig,
    /// Agent state directory (backups, journal).
    pub state: &'a StateDir,
    /// The step's id.
    pub step_id: &'a str,
    /// The step's action (names crash points).
    pub action: &'a str,
    /// The intent of an earlier, interrupted attempt of this step (see [`intent`]).
    pub resumed: Option<intent::Intent>,
    /// Per-step timeout for tools.
    pub timeout: Duration,
    /// Streams a line of output to the controller.
    pub output: &'a (dyn Fn(String) + Sync),
}

impl ActContext<'_> {
    /// Runs a tool that must succeed, echoing the command line and its output.
    pub fn run_ok(
        &self,
        program: &std::path::Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<crate::exec::ToolOutput, ActError> {
        self.run_ok_in(program, args, stdin, None)
    }

    /// [`ActContext::run_ok`] in a working directory.
    pub fn run_ok_in(
        &self,
        program: &std::path::Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        cwd: Option<&std::path::Path>,
    ) -> Result<crate::exec::ToolOutput, ActError> {
        (self.output)(format!(
            "$ {}{}",
            cwd.map(|d| format!("(cd {}) ", d.display()))
                .unwrap_or_default(),
            crate::exec::command_line(program, args)
        ));
        let out = crate::exec::run_ok_in(program, args, stdin, self.timeout, cwd, &[])?;
        for line in out.stdout.lines().chain(out.stderr.lines()).take(50) {
            (self.output)(line.to_owned());
        }
        Ok(out)
    }
}

/// A string argument.
pub fn arg_str<'v>(args: &'v Value, name: &str) -> Result<&'v str, ActError> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ActError(format!("missing string argument {name:?}")))
}

/// Runs one step: answered from the journal if it already ran; otherwise its intent is
/// journaled (fsynced) before it acts, and a step whose earlier attempt was interrupted is
/// resumed or refused according to [`intent::resume_policy`].
pub fn execute(
    cfg: &AgentConfig,
    state: &StateDir,
    req: &pb::StepRequest,
    output: &(dyn Fn(String) + Sync),
) -> pb::StepResult {
    if let Some(done) = journal::lookup(state, &req.step_id) {
        tracing::info!(step = %req.step_id, "step already ran; answering from the journal");
        return pb::StepResult {
            from_journal: true,
            ..done
        };
    }
    let args: Value = match serde_json::from_str(if req.args_json.is_empty() {
        "{}"
    } else {
        &req.args_json
    }) {
        Ok(v) => v,
        Err(e) => {
            return result(
                req,
                Err(ActError(format!("step arguments are not JSON: {e}"))),
            );
        }
    };
    // No effect without its intent on disk: if the intent cannot be written, nothing runs.
    let earlier = match intent::begin(state, &req.step_id, &req.action, &req.args_json) {
        Ok(e) => e,
        Err(e) => return result(req, Err(ActError(e.to_string()))),
    };
    if let Some(prev) = &earlier {
        let refusal = if prev.args_sha256 != intent::args_hash(&req.args_json) {
            Some(format!(
                "step {} was begun at {} with other arguments; not running it with these: \
                 interrupted, needs operator",
                req.step_id,
                certfleet_common::model::format_time(prev.at)
            ))
        } else if intent::resume_policy(&req.action) == intent::Resume::Refuse {
            Some(format!(
                "step {} ({}) was interrupted: the agent stopped after it began at {} and before \
                 it answered, and this action cannot tell from the host whether it already \
                 acted, so it does not run twice: interrupted, needs operator (check the host, \
                 then roll back or re-plan)",
                req.step_id,
                req.action,
                certfleet_common::model::format_time(prev.at)
            ))
        } else {
            None
        };
        if let Some(msg) = refusal {
            tracing::warn!(step = %req.step_id, action = %req.action, "{msg}");
            output(msg.clone());
            let res = result(req, Err(ActError(msg)));
            if let Err(e) = journal::record(state, &res) {
                tracing::error!(step = %req.step_id, error = %e, "cannot journal step result");
            }
            return res;
        }
        tracing::info!(step = %req.step_id, action = %req.action, "resuming an interrupted step");
        output(format!(
            "step {} was interrupted (begun at {}); resuming: checking the host first",
            req.step_id,
            certfleet_common::model::format_time(prev.at)
        ));
    }
    let ctx = ActContext {
        cfg,
        state,
        step_id: &req.step_id,
        action: &req.action,
        resumed: earlier,
        timeout: Duration::from_secs(u64::from(req.timeout_secs.max(5))),
        output,
    };
    ctx.crash_point("after-intent");
    tracing::info!(step = %req.step_id, action = %req.action, "running step");
    let outcome = guarded(&req.action, || dispatch(&req.action, &ctx, &args));
    let res = result(req, outcome);
    ctx.crash_point("before-result");
    if let Err(e) = journal::record(state, &res) {
        tracing::error!(step = %req.step_id, error = %e, "cannot journal step result");
    }
    ctx.crash_point("after-result");
    res
}

/// Runs an action, turning a panic (a bug in certfleet-agent, never expected) into a failed
/// step that says so, instead of a step that never answers and an agent thread gone.
fn guarded(action: &str, run: impl FnOnce() -> Result<Value, ActError>) -> Result<Value, ActError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(action, panic = %what, "action panicked");
        Err(ActError(format!(
            "internal error in certfleet-agent while running {action}: {what}. This is a bug \
             (please report it with the agent's log); the host may be half-changed: check it \
             and the step's backup before retrying"
        )))
    })
}

/// Routes an action to its module: platform actions are named `<platform>.<verb>`; everything
/// else is platform-neutral ([`generic`]).
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        a if a.starts_with("ovirt.hosted_engine_") => hosted_engine::dispatch(a, ctx, args),
        a if a.starts_with("ovirt.") => ovirt::dispatch(a, ctx, args),
        a if a.starts_with("gke.") || a.starts_with("kubeadm.") || a.starts_with("kubeconfig.") => {
            gke::dispatch(a, ctx, args)
        }
        a if a.starts_with("vsphere.") => vsphere::dispatch(a, ctx, args),
        a if a.starts_with("esxi.") => esxi::dispatch(a, ctx, args),
        a if a.starts_with("pins.") => crate::pins::dispatch(a, ctx, args),
        a => generic::dispatch(a, ctx, args),
    }
}

fn result(req: &pb::StepRequest, outcome: Result<Value, ActError>) -> pb::StepResult {
    match outcome {
        Ok(details) => pb::StepResult {
            step_id: req.step_id.clone(),
            ok: true,
            message: details
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("done")
                .to_owned(),
            details_json: details.to_string(),
            from_journal: false,
        },
        Err(e) => pb::StepResult {
            step_id: req.step_id.clone(),
            ok: false,
            message: e.0,
            details_json: String::new(),
            from_journal: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_action_fails_its_step_with_a_message_instead_of_never_answering() {
        let r = guarded("test.action", || -> Result<Value, ActError> {
            let empty: Vec<u32> = std::hint::black_box(Vec::new());
            Ok(Value::from(empty[0]))
        });
        let e = r.unwrap_err().0;
        assert!(
            e.starts_with("internal error in certfleet-agent while running test.action:")
                && e.contains("index out of bounds"),
            "{e}"
        );
        assert_eq!(
            guarded("test.action", || Ok(Value::Null)).unwrap(),
            Value::Null
        );
    }
}
