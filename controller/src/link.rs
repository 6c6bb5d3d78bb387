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
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
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
        // Applied to the record as it is now, not as it was read before the hello (up to 30 s
        // ago), and swapped in only if it is still unchanged: a revocation or a renewal written
        // meanwhile is not overwritten with an older copy.
        let now = certfleet_common::model::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > HELLO_SWAP_ATTEMPTS {
                return Err(Status::unavailable(format!(
                    "agent {}'s record kept changing under {HELLO_SWAP_ATTEMPTS} attempts to record its hello; reconnect",
                    agent.id
                )));
            }
            let Some((mut current, read)) = fleet
                .store
                .get_for_swap::<AgentRecord>("agents", &agent.id)
                .map_err(internal)?
            else {
                return Err(Status::unauthenticated(format!(
                    "unknown agent {}",
                    agent.id
                )));
            };
            if current.state == AgentState::Revoked {
                fleet.metrics.rpc_error("revoked");
                return Err(Status::permission_denied(format!(
                    "agent {} ({}) has been revoked",
                    current.name, current.id
                )));
            }
            if !apply_hello(&mut current, &hello, now)
                || fleet
                    .store
                    .swap("agents", &agent.id, &read, &current)
                    .map_err(internal)?
            {
                agent = current;
                break;
            }
        }

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
        tx.send(Ok(Box::new(welcome)))
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
                            let _ = tx.send(Err(Box::new(status))).await;
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
                            let _ = tx.send(Err(Box::new(Status::out_of_range(why)))).await;
                        }
                        tracing::info!(agent = %id, error = %status.message(), "agent stream ended");
                        break;
                    }
                }
            }
            // Remote commands relayed on this stream get nothing more from it.
            fleet.execs.agent_gone(&id);
            if let Some(seen) = fleet.registry.disconnect(&id, session) {
                let _ = fleet.store.put("agent_seen", &id, &seen);
                tracing::info!(agent = %id, "agent disconnected");
                fleet.changed.notify_waiters();
            }
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|m| m.map(|m| *m).map_err(|s| *s)),
        )))
    }
}

/// Attempts to swap a hello into an agent record that other writers keep changing.
const HELLO_SWAP_ATTEMPTS: usize = 100;

/// Puts what a hello says into the agent's record; true when the record must be written: the
/// hello changed it, or it is the agent's first (a `last_seen` of 0 means never connected, see
/// `enroll`; it is set to `now` then). A reconnect storm of 10,000 unchanged agents so writes
/// no record and leaves the agent directory current; the heartbeat time itself lives in the
/// registry and in `agent_seen`.
fn apply_hello(agent: &mut AgentRecord, hello: &pb::Hello, now: i64) -> bool {
    let before = agent.clone();
    agent.hostname = hello.hostname.clone();
    agent.platforms = hello.platforms.clone();
    agent.version = hello.version.clone();
    agent.cas = hello.cas.clone();
    agent.renewable = hello.renewable.iter().cloned().map(Into::into).collect();
    if *agent == before && agent.last_seen != 0 {
        return false;
    }
    agent.last_seen = now;
    true
}

async fn handle(
    fleet: &Arc<Fleet>,
    id: &str,
    msg: AgentMessage,
    tx: &mpsc::Sender<crate::fleet::Outgoing>,
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
            tx.send(Ok(Box::new(reply)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanState, StepState, storage};
    use certfleet_common::proto as pb;

    /// Only a first hello or one that says something new rewrites the agent's record: a
    /// reconnect storm of unchanged agents writes no record (issue 10).
    #[test]
    fn a_hello_rewrites_the_agent_record_only_when_it_changes_it_or_is_the_first() {
        let mut agent: AgentRecord = serde_json::from_value(serde_json::json!({
            "id": "agent0", "name": "esx0", "hostname": "", "platforms": [],
            "version": "", "state": AgentState::Active, "enrolled_at": 1, "last_seen": 0,
            "cert_not_after": 0, "cert_fingerprint": "", "key_id": "",
            "labels": {}, "cas": [], "renewable": [], "superseded": [],
        }))
        .unwrap();
        let hello = pb::Hello {
            hostname: "esx0.lab".into(),
            platforms: vec!["vcenter".into()],
            version: "1.0".into(),
            cas: vec!["engine".into()],
            renewable: vec![pb::RenewableFile {
                cert: "/etc/pki/vdsm/certs/vdsmcert.pem".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // The first hello: written, and `last_seen` says the agent has connected.
        assert!(apply_hello(&mut agent, &hello, 100));
        assert_eq!(agent.last_seen, 100);
        assert_eq!(agent.hostname, "esx0.lab");
        // The same hello again (a reconnect): nothing to write, nothing changed.
        let kept = agent.clone();
        assert!(!apply_hello(&mut agent, &hello, 200));
        assert_eq!(agent, kept);
        // Each field a hello carries, changed, is written.
        let changes: [fn(&mut pb::Hello); 5] = [
            |h| h.hostname = "esx0-new.lab".into(),
            |h| h.platforms.push("ovirt-node".into()),
            |h| h.version = "1.1".into(),
            |h| h.cas.clear(),
            |h| h.renewable[0].days = 30,
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut h = hello.clone();
            change(&mut h);
            let mut a = kept.clone();
            assert!(apply_hello(&mut a, &h, 300), "change {n} not written");
            assert_eq!(a.last_seen, 300);
        }
    }

    /// A large report goes in chunks, and while they are on their way the agent runs the step
    /// it was sent and answers it (its output, then its result), between two chunks. The result
    /// is recorded at once, not after the upload; and the chunks still make the one report.
    #[tokio::test]
    async fn a_step_answered_between_the_chunks_of_a_report_is_recorded_and_the_report_is_whole() {
        let (_dir, fleet) = crate::server::test_fleet();
        let now = certfleet_common::model::now();
        let agent: AgentRecord = serde_json::from_value(serde_json::json!({
            "id": "agent0", "name": "esx0", "hostname": "esx0.lab", "platforms": [],
            "version": "1", "state": AgentState::Active, "enrolled_at": 1, "last_seen": now,
            "cert_not_after": now + 86_400, "cert_fingerprint": "", "key_id": "",
            "labels": {}, "cas": [], "renewable": [], "superseded": [],
        }))
        .unwrap();
        fleet.store.put("agents", "agent0", &agent).unwrap();
        // A plan whose one step (on agent0) was dispatched.
        let mut plan = storage::tests::plan("pchunk", 1, PlanState::Running);
        plan.steps[0].state = StepState::Dispatched;
        let step_id = plan.steps[0].id.clone();
        assert_eq!(plan.steps[0].agent_id, "agent0");
        storage::save(&fleet.store, &plan).unwrap();

        let (tx, _rx) = mpsc::channel(8);
        let limits = ReportLimits::default();
        let mut pending = None;
        let chunk = |from: usize, to: usize, more: bool| AgentMessage {
            kind: Some(agent_message::Kind::Inventory(pb::InventoryReport {
                full: true,
                generation: 7,
                more,
                scanned_at: now,
                certificates: (from..to)
                    .map(|n| pb::CertificateRecord {
                        fingerprint_sha256: format!("{n:064x}"),
                        subject: format!("CN=host{n}"),
                        issuer: "CN=ca".into(),
                        not_before: now - 86_400,
                        not_after: now + 90 * 86_400,
                        role: "file.server".into(),
                        locations: vec![pb::Location {
                            kind: "file".into(),
                            path: format!("/etc/tls/{n}.pem"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
        };
        let certificates = |fleet: &Fleet| -> usize {
            crate::inventory::all(fleet)
                .unwrap()
                .iter()
                .filter(|(a, _)| a.id == "agent0")
                .map(|(_, inv)| inv.certificates().count())
                .sum()
        };
        macro_rules! send {
            ($m:expr) => {
                handle(&fleet, "agent0", $m, &tx, &limits, &mut pending)
                    .await
                    .unwrap()
            };
        }

        send!(chunk(0, 400, true));
        assert_eq!(
            certificates(&fleet),
            0,
            "nothing applied before the last chunk"
        );
        send!(AgentMessage {
            kind: Some(agent_message::Kind::StepOutput(pb::StepOutput {
                step_id: step_id.clone(),
                line: "backup taken".into(),
            })),
        });
        send!(AgentMessage {
            kind: Some(agent_message::Kind::StepResult(pb::StepResult {
                step_id: step_id.clone(),
                ok: true,
                message: "installed".into(),
                ..Default::default()
            })),
        });
        let (_, step) = storage::load_step(&fleet.store, &step_id).unwrap().unwrap();
        assert_eq!(
            step.state,
            StepState::Succeeded,
            "recorded during the upload"
        );
        assert_eq!(step.message, "installed");
        assert!(pending.is_some(), "the report's first chunk is still held");

        send!(chunk(400, 800, true));
        send!(AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(pb::Heartbeat { seq: 1 })),
        });
        send!(chunk(800, 1000, false));
        assert!(pending.is_none());
        assert_eq!(
            certificates(&fleet),
            1000,
            "the three chunks are one report"
        );
    }
}
