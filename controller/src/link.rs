//! The agent link: one long-lived bidirectional stream per agent, opened by the agent.
//!
//! The first message must be a hello; the controller answers with a welcome. After that the
//! agent sends heartbeats, inventory reports, renewal requests and step results, and the
//! controller sends renewed certificates, scan requests and steps. Each stream costs one task
//! and one bounded queue; heartbeats touch memory only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::identity::Identity;
use certfleet_common::proto::agent_link_server::AgentLink;
use certfleet_common::proto::{
    self as pb, AgentMessage, ControllerMessage, RenewResponse, Welcome, agent_message,
    controller_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{AgentRecord, AgentState, Fleet, internal};

/// Limits on what one agent may report, so that one agent cannot exhaust the controller's
/// memory or store (shared with the agent, see [`certfleet_common::limits`]). They are
/// announced in the welcome; an agent over them sends a problem instead of its report, and a
/// report over them is refused here whoever sent it (the session stays up: a refused report is
/// not a reason to reconnect and send it again).
pub use certfleet_common::limits::ReportLimits;

/// The AgentLink gRPC service.
pub struct AgentLinkService {
    fleet: Arc<Fleet>,
    limits: ReportLimits,
}

impl AgentLinkService {
    /// Wraps the shared state, with the default report limits.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self::with_limits(fleet, ReportLimits::default())
    }

    /// Wraps the shared state, with these report limits.
    pub fn with_limits(fleet: Arc<Fleet>, limits: ReportLimits) -> Self {
        AgentLinkService { fleet, limits }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let fleet = self.fleet.clone();
        let mut agent = fleet.require_agent(&request)?;
        let remote = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }))) => h,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 30s")),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message on the agent link must be a hello",
                ));
            }
        };
        agent.hostname = hello.hostname.clone();
        agent.platforms = hello.platforms.clone();
        agent.version = hello.version.clone();
        agent.cas = hello.cas.clone();
        agent.renewable = hello.renewable.iter().cloned().map(Into::into).collect();
        agent.last_seen = certfleet_common::model::now();
        fleet
            .store
            .put("agents", &agent.id, &agent)
            .map_err(internal)?;

        let (tx, rx) = mpsc::channel(64);
        let session = fleet.registry.connect(
            &agent.id,
            tx.clone(),
            remote.clone(),
            hello.capabilities.clone(),
        );
        tracing::info!(agent = %agent.id, name = %agent.name, %remote, platforms = ?agent.platforms, "agent connected");
        let welcome = ControllerMessage {
            kind: Some(controller_message::Kind::Welcome(Welcome {
                agent_id: agent.id.clone(),
                heartbeat_interval_secs: fleet.opts.heartbeat_interval.as_secs().max(1) as u32,
                max_report_bytes: self.limits.max_report_bytes as u64,
                max_certificates: u32::try_from(self.limits.max_certificates).unwrap_or(u32::MAX),
                max_locations: u32::try_from(self.limits.max_locations).unwrap_or(u32::MAX),
                reconnect_spread_secs: certfleet_common::limits::reconnect_spread(
                    fleet.registry.count(),
                ),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        fleet.changed.notify_waiters();
        crate::engine::on_agent_connected(&fleet, &agent.id);

        let id = agent.id.clone();
        let limits = self.limits.clone();
        tokio::spawn(async move {
            // The chunks of a report being assembled (see `InventoryReport.more`).
            let mut pending: Option<pb::InventoryReport> = None;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => break,
                };
                match msg {
                    Ok(Some(m)) => {
                        if let Err(status) =
                            handle(&fleet, &id, m, &tx, &limits, &mut pending).await
                        {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if status.code() == tonic::Code::OutOfRange {
                            // tonic's decoding limit: an over-size message (only an agent that
                            // ignores the announced limits sends one). Tell it why the stream
                            // ends, not just that it did.
                            let why = format!("message refused: {}", status.message());
                            refuse_report(&fleet, &id, &why);
                            let _ = tx.send(Err(Status::out_of_range(why))).await;
                        }
                        tracing::info!(agent = %id, error = %status.message(), "agent stream ended");
                        break;
                    }
                }
            }
            // Remote commands relayed on this stream get nothing more from it.
            fleet.execs.agent_gone(&id);
            if let Some(seen) = fleet.registry.disconnect(&id, session) {
                if let Ok(Some(mut a)) = fleet.store.get::<AgentRecord>("agents", &id) {
                    a.last_seen = seen;
                    let _ = fleet.store.put("agents", &id, &a);
                }
                tracing::info!(agent = %id, "agent disconnected");
                fleet.changed.notify_waiters();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn handle(
    fleet: &Arc<Fleet>,
    id: &str,
    msg: AgentMessage,
    tx: &mpsc::Sender<Result<ControllerMessage, Status>>,
    limits: &ReportLimits,
    pending: &mut Option<pb::InventoryReport>,
) -> Result<(), Status> {
    use agent_message::Kind;
    fleet.registry.touch(id);
    match msg.kind {
        Some(Kind::Heartbeat(_)) => {}
        Some(Kind::Inventory(report)) => {
            if let Err(why) = limits.check(report.certificates.len(), &report) {
                *pending = None;
                refuse_report(fleet, id, &format!("inventory report refused: {why}"));
                return Ok(());
            }
            let report = match assemble(pending, report, limits) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(why) => {
                    refuse_report(fleet, id, &format!("inventory report refused: {why}"));
                    return Ok(());
                }
            };
            // The store write (and the index update) off the async threads, a few at once.
            let applied = crate::inventory::Index::apply_off_thread(
                fleet,
                id,
                report,
                limits.max_certificates,
            )
            .await;
            match applied {
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    refuse_report(fleet, id, s.message())
                }
                r => r?,
            }
        }
        Some(Kind::Renew(req)) => {
            let mut agent: AgentRecord = fleet
                .store
                .get("agents", id)
                .map_err(internal)?
                .ok_or_else(|| Status::permission_denied("agent no longer enrolled"))?;
            if agent.state == AgentState::Revoked {
                return Err(Status::permission_denied(format!(
                    "agent {} has been revoked",
                    agent.name
                )));
            }
            let pem = fleet
                .ca
                .sign_client_csr(
                    &req.csr_pem,
                    &Identity::Agent(id.to_owned()),
                    &agent.name,
                    fleet.opts.agent_cert_ttl,
                )
                .map_err(|e| Status::invalid_argument(format!("renewal CSR: {e}")))?;
            let der =
                certfleet_common::pem::first_certificate(pem.as_bytes()).expect("just issued");
            let rec = certfleet_common::x509::parse_der(&der).expect("just issued");
            agent.cert_not_after = rec.not_after;
            // The certificate in use stays accepted until the agent connects with the new one.
            let retired = agent.supersede(rec.fingerprint_sha256.clone());
            fleet.revoke_certs(&format!("agent:{id}"), &retired, "superseded")?;
            agent.key_id = certfleet_common::pki::cert_public_key_id(&der)
                .map_err(|e| Status::internal(e.to_string()))?;
            fleet.store.put("agents", id, &agent).map_err(internal)?;
            fleet.audit(
                &format!("agent:{id}"),
                "agent.renew",
                &format!("agent:{id}"),
                &format!(
                    "not_after={}",
                    certfleet_common::model::format_time(rec.not_after)
                ),
            )?;
            fleet.metrics.renewal();
            let reply = ControllerMessage {
                kind: Some(controller_message::Kind::Renewed(RenewResponse {
                    certificate_pem: pem,
                    ca_pem: fleet.ca.cert_pem().to_owned(),
                })),
            };
            tx.send(Ok(reply))
                .await
                .map_err(|_| Status::cancelled("stream closed"))?;
        }
        Some(Kind::StepResult(r)) => crate::engine::on_step_result(fleet, id, r),
        Some(Kind::StepOutput(o)) => crate::engine::on_step_output(fleet, id, o),
        Some(Kind::ExecOutput(o)) => fleet.execs.on_output(fleet, id, o).await,
        Some(Kind::ExecResult(r)) => fleet.execs.on_result(fleet, id, r).await,
        Some(Kind::Hello(_)) => return Err(Status::invalid_argument("hello sent twice")),
        None => {}
    }
    Ok(())
}

/// Adds a chunk to the report being assembled. `Ok(Some)`: a whole report to apply; `Ok(None)`:
/// more chunks to come; `Err`: the chunks together are over the limits (all dropped).
fn assemble(
    pending: &mut Option<pb::InventoryReport>,
    chunk: pb::InventoryReport,
    limits: &ReportLimits,
) -> Result<Option<pb::InventoryReport>, String> {
    // A chunk of another scan: what was being assembled is stale (the agent rescanned).
    if pending
        .as_ref()
        .is_some_and(|p| p.generation != chunk.generation)
    {
        *pending = None;
    }
    let whole = match pending.take() {
        None => chunk,
        Some(mut acc) => {
            acc.certificates.extend(chunk.certificates);
            acc.removed.extend(chunk.removed);
            acc.problems = chunk.problems;
            acc.health = chunk.health;
            acc.pins = chunk.pins;
            acc.scanned_at = chunk.scanned_at;
            acc.more = chunk.more;
            acc
        }
    };
    if whole.certificates.len() > limits.max_certificates {
        return Err(format!(
            "chunks of report {} hold {} certificates, more than the limit of {}",
            whole.generation,
            whole.certificates.len(),
            limits.max_certificates
        ));
    }
    if whole.more {
        *pending = Some(whole);
        Ok(None)
    } else {
        Ok(Some(whole))
    }
}

/// Logs, counts and records (as a problem on the agent's inventory) a refused report.
fn refuse_report(fleet: &Fleet, id: &str, why: &str) {
    tracing::warn!(agent = %id, reason = %why, "inventory report refused");
    fleet.metrics.rpc_error("report_refused");
    if let Err(e) = crate::inventory::note_refused(fleet, id, why) {
        tracing::warn!(agent = %id, error = %e.message(), "could not record the refused report");
    }
}
