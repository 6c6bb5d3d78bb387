//! `certfleet exec`: the controller's half of a remote command. It checks who asks (admins
//! only), hands the command to the agent over the agent's own stream, relays the output to the
//! operator as it comes, and audits the call twice: when it is sent (so a controller crash
//! still leaves a trace) and when it ends (rule, outcome, exit code, duration, the SHA-256 of
//! the output relayed and whether the agent cut it).
//!
//! The controller never decides whether a command may run: the agent matches it against its
//! own allow-list (`agent/src/remote_exec.rs`) and refuses it there, naming the rule.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_common::proto as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::fleet::{AgentState, Fleet, Role};

/// The operator's stream of output chunks and the result.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecEvent, Status>> + Send>>;

/// Longest run a request may ask for (the agent's rule may allow less).
pub const MAX_TIMEOUT_SECS: u32 = 3600;
/// How long after the command's timeout the controller still waits for the agent's result
/// (the agent's SIGTERM→SIGKILL grace, output in flight).
const RESULT_GRACE: Duration = Duration::from_secs(30);
/// How long a chunk may wait for room towards the operator before the relay gives up.
const RELAY_STALL: Duration = Duration::from_secs(10);
/// Limits on a request.
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 64;

enum Event {
    Output(pb::ExecOutput),
    Result(pb::ExecResult),
}

struct Pending {
    agent: String,
    tx: mpsc::Sender<Event>,
}

/// Remote commands in flight, by id: where the agent's chunks and result go.
#[derive(Default)]
pub struct Relay {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Relay {
    fn sender(&self, agent: &str, exec_id: &str) -> Option<mpsc::Sender<Event>> {
        let pending = self.pending.lock().unwrap();
        // Only the agent the command was sent to may answer for it.
        pending
            .get(exec_id)
            .filter(|p| p.agent == agent)
            .map(|p| p.tx.clone())
    }

    async fn deliver(&self, fleet: &Fleet, agent: &str, exec_id: &str, ev: Event) {
        let Some(tx) = self.sender(agent, exec_id) else {
            tracing::debug!(
                agent,
                exec = exec_id,
                "output of a remote command nobody waits for"
            );
            return;
        };
        if tx.send_timeout(ev, RELAY_STALL).await.is_err() {
            // The operator does not keep up: stop the command rather than stall the agent's
            // whole stream (its heartbeats and step results come on it too).
            tracing::warn!(
                agent,
                exec = exec_id,
                "operator does not read the output of a remote command; cancelling it"
            );
            self.pending.lock().unwrap().remove(exec_id);
            cancel_on_agent(fleet, agent, exec_id);
        }
    }

    /// A chunk of output from `agent`.
    pub async fn on_output(&self, fleet: &Fleet, agent: &str, o: pb::ExecOutput) {
        let id = o.exec_id.clone();
        self.deliver(fleet, agent, &id, Event::Output(o)).await;
    }

    /// The result from `agent`.
    pub async fn on_result(&self, fleet: &Fleet, agent: &str, r: pb::ExecResult) {
        let id = r.exec_id.clone();
        self.deliver(fleet, agent, &id, Event::Result(r)).await;
    }

    /// The agent's stream ended: nothing more will come for its commands (the relays end with
    /// "lost the agent").
    pub fn agent_gone(&self, agent: &str) {
        self.pending.lock().unwrap().retain(|_, p| p.agent != agent);
    }

    fn remove(&self, exec_id: &str) {
        self.pending.lock().unwrap().remove(exec_id);
    }
}

fn cancel_on_agent(fleet: &Fleet, agent: &str, exec_id: &str) {
    fleet.registry.send(
        agent,
        pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::CancelExec(pb::CancelExec {
                exec_id: exec_id.to_owned(),
            })),
        },
    );
}

fn new_exec_id() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    hex::encode(b)
}

fn outcome_word(o: i32) -> &'static str {
    use pb::exec_result::Outcome;
    match Outcome::try_from(o).unwrap_or(Outcome::Unspecified) {
        Outcome::Exited => "exited",
        Outcome::Refused => "refused",
        Outcome::TimedOut => "timed_out",
        Outcome::FailedToStart => "failed_to_start",
        Outcome::Cancelled => "cancelled",
        Outcome::Unspecified => "unknown",
    }
}

/// The capability an agent's hello lists when it runs remote commands (`agent/src/link.rs`).
pub const EXEC_CAPABILITY: &str = "exec";

/// Whether the session's `capabilities` include [`EXEC_CAPABILITY`]; the error names the
/// agent, its version and what it does support.
fn supports_exec(
    name: &str,
    id: &str,
    version: &str,
    capabilities: &[String],
) -> Result<(), String> {
    if capabilities.iter().any(|c| c == EXEC_CAPABILITY) {
        return Ok(());
    }
    Err(format!(
        "agent {name} ({id}) version {} does not support remote commands: its hello lists \
         capabilities [{}], without {EXEC_CAPABILITY:?}; upgrade the agent",
        if version.is_empty() {
            "unknown"
        } else {
            version
        },
        capabilities.join(", ")
    ))
}

fn check_request(r: &pb::ExecRequest) -> Result<(), Status> {
    if r.argv.is_empty() || r.argv[0].is_empty() {
        return Err(Status::invalid_argument(
            "no command given (certfleet exec AGENT -- COMMAND ARGS...)",
        ));
    }
    if r.argv.len() > MAX_ARGS || r.argv.iter().any(|a| a.len() > MAX_ARG_BYTES) {
        return Err(Status::invalid_argument(format!(
            "command too long: at most {MAX_ARGS} words of {MAX_ARG_BYTES} bytes"
        )));
    }
    if r.env.len() > MAX_ENV {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_ENV} environment variables"
        )));
    }
    if r.timeout_secs > MAX_TIMEOUT_SECS {
        return Err(Status::invalid_argument(format!(
            "timeout of {}s is more than the limit of {MAX_TIMEOUT_SECS}s",
            r.timeout_secs
        )));
    }
    Ok(())
}

/// `Operator.Exec`: checks the caller and the agent, sends the command, and returns the relay.
///
/// Not idempotent: each call runs the command once (the agent does not journal it); nothing is
/// re-sent after a lost link.
pub async fn exec(
    fleet: &Arc<Fleet>,
    request: Request<pb::ExecRequest>,
) -> Result<Response<ExecStream>, Status> {
    let op = fleet.require_operator(&request, false)?;
    let r = request.into_inner();
    let actor = format!("operator:{}", op.name);
    let argv_json = serde_json::to_string(&r.argv).unwrap_or_default();
    if op.role != Role::Admin {
        fleet.metrics.rpc_error("permission_denied");
        fleet.audit(
            &actor,
            "agent.exec",
            &format!("agent:{}", r.agent),
            &format!(
                "refused: operator {} has role {}, exec needs admin; argv={argv_json}",
                op.name,
                op.role.as_str()
            ),
        )?;
        return Err(Status::permission_denied(format!(
            "operator {} has role {}; certfleet exec needs admin",
            op.name,
            op.role.as_str()
        )));
    }
    check_request(&r)?;
    let agent = fleet.find_agent(&r.agent)?;
    if agent.state == AgentState::Revoked {
        return Err(Status::failed_precondition(format!(
            "agent {} ({}) has been revoked",
            agent.name, agent.id
        )));
    }
    let Some(capabilities) = fleet.registry.capabilities(&agent.id) else {
        return Err(Status::unavailable(format!(
            "agent {} ({}) is not connected; a remote command needs its live stream",
            agent.name, agent.id
        )));
    };
    // An agent that never said it runs remote commands would drop the message: the operator
    // would wait for the whole timeout and the grace for nothing. Refuse at once instead.
    if let Err(why) = supports_exec(&agent.name, &agent.id, &agent.version, &capabilities) {
        fleet.audit(
            &actor,
            "agent.exec",
            &format!("agent:{}", agent.id),
            &format!("refused: {why}; argv={argv_json}"),
        )?;
        return Err(Status::failed_precondition(why));
    }
    let exec_id = new_exec_id();
    let target = format!("agent:{}", agent.id);
    fleet.audit(
        &actor,
        "agent.exec.start",
        &target,
        &format!(
            "exec={exec_id} argv={argv_json} timeout_secs={}",
            r.timeout_secs
        ),
    )?;
    let (ev_tx, ev_rx) = mpsc::channel(64);
    fleet.execs.pending.lock().unwrap().insert(
        exec_id.clone(),
        Pending {
            agent: agent.id.clone(),
            tx: ev_tx,
        },
    );
    let sent = fleet.registry.send(
        &agent.id,
        pb::ControllerMessage {
            kind: Some(pb::controller_message::Kind::Exec(pb::ExecCommand {
                exec_id: exec_id.clone(),
                argv: r.argv.clone(),
                timeout_secs: r.timeout_secs,
                env: r.env.clone(),
                operator: op.name.clone(),
            })),
        },
    );
    if !sent {
        fleet.execs.remove(&exec_id);
        let why = format!(
            "could not send the command to agent {} ({}): it disconnected or its queue is full",
            agent.name, agent.id
        );
        fleet.audit(
            &actor,
            "agent.exec",
            &target,
            &format!("exec={exec_id} argv={argv_json} outcome=not_sent"),
        )?;
        return Err(Status::unavailable(why));
    }
    tracing::info!(operator = %op.name, agent = %agent.id, exec = %exec_id, argv = %argv_json, "remote command sent");
    let (out_tx, out_rx) = mpsc::channel(64);
    let wait = Duration::from_secs(u64::from(if r.timeout_secs == 0 {
        MAX_TIMEOUT_SECS
    } else {
        r.timeout_secs
    })) + RESULT_GRACE;
    tokio::spawn(relay(
        fleet.clone(),
        RelayCall {
            exec_id,
            agent_id: agent.id,
            agent_name: agent.name,
            actor,
            target,
            argv_json,
            wait,
        },
        ev_rx,
        out_tx,
    ));
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(out_rx),
    )))
}

struct RelayCall {
    exec_id: String,
    agent_id: String,
    agent_name: String,
    actor: String,
    target: String,
    argv_json: String,
    wait: Duration,
}

fn lost_detail(call: &RelayCall, started: std::time::Instant, bytes: u64, why: &str) -> String {
    format!(
        "exec={} argv={} outcome=lost duration_ms={} output_bytes={bytes} message={why:?}",
        call.exec_id,
        call.argv_json,
        started.elapsed().as_millis()
    )
}

/// Moves the agent's events to the operator until the result (audited first), the agent's
/// stream ends, or the wait runs out. An operator who goes away cancels the command; the result
/// is still awaited and audited.
async fn relay(
    fleet: Arc<Fleet>,
    call: RelayCall,
    mut events: mpsc::Receiver<Event>,
    out: mpsc::Sender<Result<pb::ExecEvent, Status>>,
) {
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + call.wait;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    let mut operator_here = true;
    let audit_end = |detail: String| {
        if let Err(e) = fleet.audit(&call.actor, "agent.exec", &call.target, &detail) {
            tracing::error!(exec = %call.exec_id, error = %e.message(), "could not audit the end of a remote command");
        }
    };
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Output(o)) => {
                    digest.update(&o.data);
                    bytes += o.data.len() as u64;
                    if operator_here {
                        let e = pb::ExecEvent { kind: Some(pb::exec_event::Kind::Output(o)) };
                        if out.send(Ok(e)).await.is_err() {
                            operator_here = false;
                            cancel_on_agent(&fleet, &call.agent_id, &call.exec_id);
                        }
                    }
                }
                Some(Event::Result(mut res)) => {
                    let ours = hex::encode(digest.clone().finish().as_ref());
                    let mut detail = format!(
                        "exec={} argv={} rule={} outcome={} exit_code={} signal={} duration_ms={} output_bytes={bytes} output_sha256={ours} truncated={}",
                        call.exec_id,
                        call.argv_json,
                        if res.rule.is_empty() { "-" } else { &res.rule },
                        outcome_word(res.outcome),
                        res.exit_code,
                        res.signal,
                        res.duration_ms,
                        res.truncated
                    );
                    if !res.output_sha256.is_empty() && res.output_sha256 != ours {
                        detail.push_str(&format!(" agent_sha256={} (differs: output lost on the way)", res.output_sha256));
                    }
                    if !res.message.is_empty() {
                        detail.push_str(&format!(" message={:?}", res.message));
                    }
                    if !operator_here {
                        detail.push_str(" operator_gone=true");
                    }
                    audit_end(detail);
                    tracing::info!(exec = %call.exec_id, agent = %call.agent_id, outcome = outcome_word(res.outcome), exit_code = res.exit_code, "remote command ended");
                    // The operator sees the digest of what the controller relayed.
                    res.output_sha256 = ours;
                    res.output_bytes = bytes;
                    let _ = out.send(Ok(pb::ExecEvent { kind: Some(pb::exec_event::Kind::Result(res)) })).await;
                    break;
                }
                None => {
                    let why = format!(
                        "lost agent {} ({}) before the command ended (disconnected, or the output was not read)",
                        call.agent_name, call.agent_id
                    );
                    audit_end(lost_detail(&call, started, bytes, &why));
                    let _ = out.send(Err(Status::unavailable(why))).await;
                    break;
                }
            },
            _ = out.closed(), if operator_here => {
                operator_here = false;
                tracing::info!(exec = %call.exec_id, agent = %call.agent_id, "operator went away; cancelling the remote command");
                cancel_on_agent(&fleet, &call.agent_id, &call.exec_id);
            }
            _ = tokio::time::sleep_until(deadline) => {
                cancel_on_agent(&fleet, &call.agent_id, &call.exec_id);
                let why = format!(
                    "no result from agent {} ({}) within {}s",
                    call.agent_name, call.agent_id, call.wait.as_secs()
                );
                audit_end(lost_detail(&call, started, bytes, &why));
                let _ = out.send(Err(Status::deadline_exceeded(why))).await;
                break;
            }
        }
    }
    fleet.execs.remove(&call.exec_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bounded() {
        let ok = pb::ExecRequest {
            agent: "a".into(),
            argv: vec!["/bin/true".into()],
            ..Default::default()
        };
        assert!(check_request(&ok).is_ok());
        for bad in [
            pb::ExecRequest {
                argv: vec![],
                ..ok.clone()
            },
            pb::ExecRequest {
                argv: vec!["x".repeat(5000)],
                ..ok.clone()
            },
            pb::ExecRequest {
                timeout_secs: 3601,
                ..ok.clone()
            },
        ] {
            assert_eq!(
                check_request(&bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn an_agent_without_the_exec_capability_is_named_with_its_version() {
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(supports_exec("a", "id", "0.2.0", &caps(&["steps", "exec"])).is_ok());
        let e = supports_exec("old", "ag-1", "0.1.0", &caps(&["inventory", "steps"])).unwrap_err();
        assert_eq!(
            e,
            "agent old (ag-1) version 0.1.0 does not support remote commands: its hello lists \
             capabilities [inventory, steps], without \"exec\"; upgrade the agent"
        );
        assert!(
            supports_exec("x", "i", "", &[])
                .unwrap_err()
                .contains("version unknown")
        );
    }
}
