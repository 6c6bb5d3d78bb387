//! The agent's link to the controller: enrollment, the long-lived session, renewal of its own
//! certificate, re-binding after expiry, and reconnection with exponential backoff and full
//! jitter (so a controller restart does not bring every agent back in the same second).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::model::now;
use certfleet_common::proto as pb;
use certfleet_common::proto::agent_link_client::AgentLinkClient;
use certfleet_common::proto::enrollment_client::EnrollmentClient;
use certfleet_common::token::JoinToken;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::collect::{self, Collection};
use crate::config::AgentConfig;
use crate::state::{AgentIdentity, AgentMeta, StateDir};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The controller revoked this agent; retrying is pointless.
    #[error("controller refused this agent: {0}")]
    Revoked(String),
    /// Local state is unusable.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// This host's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `certfleet-agent enroll`.
pub async fn enroll(
    controller: &str,
    token_text: &str,
    state: &StateDir,
    name: Option<&str>,
) -> Result<AgentMeta, LinkError> {
    if state.is_enrolled() {
        return Err(LinkError::Other(format!(
            "{} already holds an agent identity; use another --state-dir or remove it first",
            state.path().display()
        )));
    }
    let token = JoinToken::parse(token_text).map_err(|e| LinkError::Other(e.to_string()))?;
    let host = hostname();
    let name = name.map(str::to_owned).unwrap_or_else(|| host.clone());
    let (key_pem, csr_pem) = certfleet_common::pki::new_key_and_csr(&name)
        .map_err(|e| LinkError::Other(e.to_string()))?;
    let verifier = Arc::new(certfleet_common::tls::PinnedCaVerifier::new(
        &token.ca_fingerprint,
    ));
    let channel = certfleet_common::tls::pinned_channel(controller, verifier.clone())
        .map_err(|e| LinkError::Other(e.to_string()))?;
    // The key is on disk (0600) before anything leaves the host; removed again if refused.
    state.save_key(&key_pem)?;
    let result = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token_text.trim().to_owned(),
            csr_pem,
            name: name.clone(),
            hostname: host,
        })
        .await;
    let resp = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = std::fs::remove_file(state.key_path());
            return Err(LinkError::Other(certfleet_common::tls::explain_status(
                controller, &s,
            )));
        }
    };
    let ca_der = certfleet_common::pem::first_certificate(resp.ca_pem.as_bytes())
        .map_err(|e| LinkError::Other(format!("controller sent a bad CA: {e}")))?;
    if certfleet_common::pki::sha256_hex(&ca_der) != token.ca_fingerprint {
        let _ = std::fs::remove_file(state.key_path());
        return Err(LinkError::Other(
            "controller returned a CA that does not match the join token's pin".into(),
        ));
    }
    state.save_cert(&resp.certificate_pem, &resp.ca_pem)?;
    let meta = AgentMeta {
        agent_id: resp.agent_id,
        name,
        controller: controller.to_owned(),
    };
    state.save_meta(&meta)?;
    Ok(meta)
}

/// Backoff with full jitter: a random delay in `[0, min(cap, base · 2^attempt)]`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    let frac = u64::from_le_bytes(b) as f64 / u64::MAX as f64;
    ceiling.mul_f64(frac)
}

/// Runtime knobs for [`run`].
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// First backoff step.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

/// `certfleet-agent run`: keeps a session open until `shutdown` resolves.
pub async fn run(
    state: StateDir,
    cfg: AgentConfig,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    loop {
        let id = state.load()?;
        let step = async {
            if id.not_after <= now() {
                rebind(&state, &id).await.map(|_| false)
            } else {
                session(&state, &id, &cfg).await
            }
        };
        let outcome = tokio::select! {
            r = step => r,
            _ = &mut shutdown => return Ok(()),
        };
        match outcome {
            Ok(true) => attempt = 0,
            Ok(false) => {}
            Err(LinkError::Revoked(m)) => return Err(LinkError::Revoked(m)),
            Err(LinkError::State(e)) => return Err(LinkError::State(e)),
            Err(e) => tracing::warn!(error = %e, "link to controller lost"),
        }
        let delay = backoff(attempt, opts.backoff_base, opts.backoff_cap);
        attempt = attempt.saturating_add(1);
        tracing::info!(delay_ms = delay.as_millis() as u64, attempt, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn classify(controller: &str, s: tonic::Status) -> LinkError {
    let msg = certfleet_common::tls::explain_status(controller, &s);
    if s.code() == tonic::Code::PermissionDenied && s.message().contains("revoked") {
        LinkError::Revoked(msg)
    } else {
        LinkError::Other(msg)
    }
}

/// Asks for a new certificate with an expired one. Returns when issued; errors (including
/// "pending approval") go back to the retry loop.
async fn rebind(state: &StateDir, id: &AgentIdentity) -> Result<(), LinkError> {
    let ctl = &id.meta.controller;
    let csr = certfleet_common::pki::csr_for_key(&id.key_pem, &id.meta.name)
        .map_err(|e| LinkError::Other(e.to_string()))?;
    let channel = certfleet_common::tls::anonymous_channel(ctl, &id.ca_pem)
        .map_err(|e| LinkError::Other(e.to_string()))?;
    let resp = EnrollmentClient::new(channel)
        .rebind(pb::RebindRequest {
            certificate_pem: id.cert_pem.clone(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| classify(ctl, s))?
        .into_inner();
    if resp.state == pb::rebind_response::State::Issued as i32 {
        state.save_cert(&resp.certificate_pem, &resp.ca_pem)?;
        tracing::info!(agent = %id.meta.agent_id, "certificate re-issued after expiry");
        Ok(())
    } else {
        Err(LinkError::Other(format!(
            "certificate expired at {}; waiting for an operator: certfleet agents approve {}",
            certfleet_common::model::format_time(id.not_after),
            id.meta.agent_id
        )))
    }
}

fn renew_at(id: &AgentIdentity) -> i64 {
    id.not_before + (id.not_after - id.not_before) * 2 / 3
}

fn send(
    tx: &mpsc::Sender<pb::AgentMessage>,
    kind: pb::agent_message::Kind,
) -> Result<(), LinkError> {
    tx.try_send(pb::AgentMessage { kind: Some(kind) })
        .map_err(|e| LinkError::Other(format!("outbound queue: {e}")))
}

/// What was last reported, to send deltas.
#[derive(Default)]
struct Reported {
    certs: HashMap<String, String>,
    sent_full: bool,
}

impl Reported {
    fn report(&mut self, c: &Collection) -> pb::InventoryReport {
        let mut now_set = HashMap::new();
        let mut changed = Vec::new();
        for rec in c.certificates() {
            let digest = serde_json::to_string(rec).unwrap_or_default();
            if self.certs.get(&rec.fingerprint_sha256) != Some(&digest) || !self.sent_full {
                changed.push(rec.into());
            }
            now_set.insert(rec.fingerprint_sha256.clone(), digest);
        }
        let removed = self
            .certs
            .keys()
            .filter(|k| !now_set.contains_key(*k))
            .cloned()
            .collect();
        let full = !self.sent_full;
        self.certs = now_set;
        self.sent_full = true;
        pb::InventoryReport {
            full,
            certificates: changed,
            removed,
            problems: c.problems.iter().map(Into::into).collect(),
            health: c.health.iter().map(Into::into).collect(),
            scanned_at: now(),
        }
    }
}

/// Largest message accepted from the controller (steps, renewed certificates).
const MAX_CONTROLLER_MESSAGE_BYTES: usize = 32 << 20;

use certfleet_common::limits::ReportLimits;

/// The report sent instead of one over the limits: no certificates (what the controller holds
/// stays), the scan's problems and health, and the reason.
fn over_limit_report(why: &str, found: &Collection) -> pb::InventoryReport {
    let mut problems: Vec<pb::Problem> = found.problems.iter().map(Into::into).collect();
    problems.truncate(1000);
    problems.push(pb::Problem {
        subject: "inventory".into(),
        message: format!("inventory not sent: {why}"),
        severity: "error".into(),
        collector: "agent".into(),
    });
    pb::InventoryReport {
        full: false,
        certificates: Vec::new(),
        removed: Vec::new(),
        problems,
        health: found.health.iter().map(Into::into).collect(),
        scanned_at: now(),
    }
}

/// One session. `Ok(true)` once the controller welcomed us (resets backoff) and the session
/// later ended; errors are returned for the retry loop.
async fn session(
    state: &StateDir,
    id: &AgentIdentity,
    cfg: &AgentConfig,
) -> Result<bool, LinkError> {
    let ctl = id.meta.controller.clone();
    let channel = certfleet_common::tls::mtls_channel(&ctl, &id.ca_pem, &id.cert_pem, &id.key_pem)
        .map_err(|e| LinkError::Other(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(32);
    let cfg = Arc::new(cfg.clone());
    let platforms = {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || collect::detect(&c))
            .await
            .unwrap_or_default()
    };
    send(
        &tx,
        pb::agent_message::Kind::Hello(pb::Hello {
            hostname: hostname(),
            platforms,
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec!["inventory".into(), "renew".into(), "steps".into()],
            journaled_steps: crate::act::journal::step_ids(state),
            cas: cfg.cas.iter().map(|c| c.name.clone()).collect(),
            renewable: cfg
                .renew
                .iter()
                .map(|r| pb::RenewableFile {
                    cert: r.cert.clone(),
                    key: r.key.clone(),
                    issuer: r.issuer.clone(),
                    restart: r.restart.clone(),
                    mode: r.mode.clone(),
                    owner: r.owner.clone().unwrap_or_default(),
                    group: r.group.clone().unwrap_or_default(),
                    days: r.days,
                    verify_endpoint: r.verify_endpoint.clone().unwrap_or_default(),
                    also: r.also.clone(),
                })
                .collect(),
        }),
    )?;
    let mut inbound = AgentLinkClient::new(channel)
        .max_decoding_message_size(MAX_CONTROLLER_MESSAGE_BYTES)
        // The real limit is the controller's, announced in the welcome and checked before each
        // report; this one is only the ceiling of what the controller can be configured to take.
        .max_encoding_message_size(1 << 30)
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| classify(&ctl, s))?
        .into_inner();
    let welcome = tokio::time::timeout(Duration::from_secs(30), inbound.message())
        .await
        .map_err(|_| LinkError::Other("no welcome from controller within 30s".into()))?
        .map_err(|s| classify(&ctl, s))?;
    let (interval, limits) = match welcome.and_then(|m| m.kind) {
        Some(pb::controller_message::Kind::Welcome(w)) => (
            Duration::from_secs(u64::from(w.heartbeat_interval_secs.max(1))),
            ReportLimits::from_welcome(&w),
        ),
        _ => {
            return Err(LinkError::Other(
                "controller did not answer the hello with a welcome".into(),
            ));
        }
    };
    tracing::info!(agent = %id.meta.agent_id, controller = %ctl, "connected");

    let mut current = id.clone();
    let mut heartbeat = tokio::time::interval(interval);
    let mut seq = 0u64;
    let mut rescan = tokio::time::interval(cfg.scan_interval);
    let (scan_tx, mut scan_rx) = mpsc::channel::<Collection>(1);
    let mut scanning = false;
    let mut rescan_wanted = false;
    let mut reported = Reported::default();
    let mut renew_pending = false;
    let start_scan = |scanning: &mut bool| {
        *scanning = true;
        let c = cfg.clone();
        let out = scan_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = out.blocking_send(collect::scan(&c));
        });
    };

    loop {
        let renew_in = Duration::from_secs((renew_at(&current) - now()).max(0) as u64);
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| classify(&ctl, s))?;
                let Some(msg) = msg else { return Ok(true) };
                match msg.kind {
                    Some(pb::controller_message::Kind::Renewed(r)) => {
                        state.save_cert(&r.certificate_pem, &r.ca_pem)?;
                        current = state.load()?;
                        renew_pending = false;
                        tracing::info!(not_after = %certfleet_common::model::format_time(current.not_after), "certificate renewed");
                    }
                    Some(pb::controller_message::Kind::Scan(s)) => {
                        tracing::info!(reason = %s.reason, "rescan requested");
                        if scanning { rescan_wanted = true } else { start_scan(&mut scanning) }
                    }
                    Some(pb::controller_message::Kind::Step(step)) => {
                        run_step(state.clone(), cfg.clone(), step, tx.clone());
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                send(&tx, pb::agent_message::Kind::Heartbeat(pb::Heartbeat { seq }))?;
            }
            _ = rescan.tick() => {
                if scanning { rescan_wanted = true } else { start_scan(&mut scanning) }
            }
            Some(found) = scan_rx.recv() => {
                scanning = false;
                let report = reported.report(&found);
                tracing::info!(certificates = found.len(), sent = report.certificates.len(), full = report.full, problems = found.problems.len(), "inventory scanned");
                let report = match limits.check(found.len(), &report) {
                    Ok(()) => report,
                    Err(why) => {
                        // Sending it would only be refused (or end the stream, and a
                        // reconnect would send it again): report the problem instead, keep
                        // the session, and send a full report once the inventory fits.
                        tracing::error!(controller = %ctl, reason = %why, "inventory not sent: over the controller's limits");
                        reported = Reported::default();
                        over_limit_report(&why.to_string(), &found)
                    }
                };
                send(&tx, pb::agent_message::Kind::Inventory(report))?;
                if rescan_wanted {
                    rescan_wanted = false;
                    start_scan(&mut scanning);
                }
            }
            _ = tokio::time::sleep(renew_in), if !renew_pending => {
                let csr = certfleet_common::pki::csr_for_key(&current.key_pem, &current.meta.name).map_err(|e| LinkError::Other(e.to_string()))?;
                send(&tx, pb::agent_message::Kind::Renew(pb::RenewRequest { csr_pem: csr }))?;
                renew_pending = true;
                tracing::info!("renewing own certificate");
            }
        }
    }
}

/// Runs a step off the async runtime, streaming its output lines and sending its result. Steps
/// run one at a time per agent (a host's certificates are changed by one hand at once).
fn run_step(
    state: StateDir,
    cfg: Arc<AgentConfig>,
    step: pb::StepRequest,
    tx: mpsc::Sender<pb::AgentMessage>,
) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    tokio::task::spawn_blocking(move || {
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let id = step.step_id.clone();
        let out_tx = tx.clone();
        let output = move |line: String| {
            tracing::info!(step = %id, "{line}");
            let _ = out_tx.blocking_send(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::StepOutput(pb::StepOutput {
                    step_id: id.clone(),
                    line,
                })),
            });
        };
        let result = crate::act::execute(&cfg, &state, &step, &output);
        tracing::info!(step = %result.step_id, ok = result.ok, message = %result.message, "step finished");
        let _ = tx.blocking_send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::StepResult(result)),
        });
    });
}
