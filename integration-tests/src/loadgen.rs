//! Virtual agents for the load generator (`certfleet-loadgen`) and for tests that need a fleet
//! larger than a few processes: each one enrolls with its own key through a real join token,
//! holds its own mTLS session on the real `AgentLink` protocol, sends a full inventory report
//! after every welcome, heartbeats at the interval the controller asks, and answers every step
//! at once with success (so a plan measures the controller's engine, not host work).
//!
//! Reports are cut into chunks as the agent cuts them (`certfleet_agent::link::report_cuts`):
//! how large the messages are decides how large the controller's buffers for each connection
//! grow. What a real agent does that these do not: scanning (their certificates are made up
//! front), renewing their own certificate, the step journal, and checking a report against the
//! announced limits (a virtual agent sends what it is given, so a test can also send too much).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use certfleet_common::proto as pb;
use certfleet_common::proto::agent_link_client::AgentLinkClient;
use certfleet_common::proto::enrollment_client::EnrollmentClient;
use certfleet_common::token::JoinToken;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::sim::{Lifetime, SimCa, dn};

/// How long a virtual agent waits for TCP + TLS, and for the stream to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An enrolled virtual agent.
#[derive(Clone)]
pub struct VirtualAgent {
    /// Index in the fleet (also picks its loopback source address).
    pub index: usize,
    /// Agent name as enrolled.
    pub name: String,
    /// Agent id the controller gave it.
    pub agent_id: String,
    /// Its certificate and key (PEM), and the fleet CA.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
    /// Fleet CA PEM.
    pub ca_pem: String,
    /// What it reports, DER included.
    pub certificates: Arc<Vec<pb::CertificateRecord>>,
    /// Files it says it can renew (the `files` recipe plans over these).
    pub renewable: Vec<pb::RenewableFile>,
    /// CAs it says it can sign with.
    pub cas: Vec<String>,
}

/// Counters shared by every virtual agent of a fleet.
#[derive(Default)]
pub struct FleetCounters {
    /// Sessions welcomed right now.
    pub connected: AtomicUsize,
    /// Welcomes received in total.
    pub welcomed: AtomicU64,
    /// Connection attempts that did not get an open stream within [`CONNECT_TIMEOUT`].
    pub connect_timeouts: AtomicU64,
    /// Connection attempts refused or failed otherwise.
    pub connect_errors: AtomicU64,
    /// Full inventory reports sent.
    pub reports: AtomicU64,
    /// Steps answered.
    pub steps: AtomicU64,
    /// Errors the controller ended a session with (e.g. a refused report), last one kept.
    pub last_error: std::sync::Mutex<String>,
}

/// Loopback source address of agent `index` (127.1.x.y): every agent its own address, as in a
/// real fleet, so per-address limits of the controller apply per agent, and ephemeral ports
/// do not run out at 10,000 connections.
pub fn source_address(index: usize) -> IpAddr {
    let i = index as u32;
    IpAddr::from([
        127,
        1 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    ])
}

/// Enrolls one virtual agent named `name` with a fresh join token (pinned to the token's CA, as
/// `certfleet-agent enroll` does).
pub async fn enroll(controller: &str, token_text: &str, name: &str) -> anyhow::Result<Enrolled> {
    let token = JoinToken::parse(token_text).context("join token")?;
    let (key_pem, csr_pem) = certfleet_common::pki::new_key_and_csr(name)?;
    let verifier = Arc::new(certfleet_common::tls::PinnedCaVerifier::new(
        &token.ca_fingerprint,
    ));
    let channel = certfleet_common::tls::pinned_channel(controller, verifier)?;
    let resp = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token_text.trim().to_owned(),
            csr_pem,
            name: name.to_owned(),
            hostname: format!("{name}.bench"),
        })
        .await
        .map_err(|s| anyhow!("enrolling {name} at {controller}: {}", s.message()))?
        .into_inner();
    Ok(Enrolled {
        agent_id: resp.agent_id,
        cert_pem: resp.certificate_pem,
        key_pem,
        ca_pem: resp.ca_pem,
    })
}

/// What enrollment gave a virtual agent.
pub struct Enrolled {
    /// Its id.
    pub agent_id: String,
    /// Its certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// The fleet CA.
    pub ca_pem: String,
}

/// `count` certificates signed by `ca`, found at `/bench/<prefix>-<n>.pem`, as file
/// certificates (`file.server`). Expiry spreads over -30..370 days from `seed`, so some are
/// expired, some expiring and most fine.
pub fn make_certificates(
    ca: &SimCa,
    prefix: &str,
    count: usize,
    seed: usize,
) -> anyhow::Result<Vec<pb::CertificateRecord>> {
    let mut out = Vec::with_capacity(count);
    for j in 0..count {
        let host = format!("{prefix}-{j}.bench.example");
        let days = ((seed + j * 37) % 400) as i64 - 30;
        let c = ca.issue(
            dn(&[("O", "certfleet bench"), ("CN", &host)]),
            &[&host],
            Lifetime::days(1, days),
            false,
            false,
        )?;
        let der = certfleet_common::pem::first_certificate(c.cert_pem.as_bytes())?;
        let mut rec = certfleet_common::x509::parse_der(&der)?;
        rec.role = "file.server".into();
        rec.locations = vec![certfleet_common::model::Location {
            kind: "file".into(),
            path: format!("/bench/{prefix}-{j}.pem"),
            ..Default::default()
        }];
        rec.der = der;
        out.push(pb::CertificateRecord::from(&rec));
    }
    Ok(out)
}

/// A CA for made-up certificates.
pub fn bench_ca() -> anyhow::Result<SimCa> {
    SimCa::new(
        dn(&[("O", "certfleet bench"), ("CN", "bench CA")]),
        Lifetime::days(10, 3650),
        false,
    )
}

fn channel(controller: &str, a: &VirtualAgent) -> anyhow::Result<tonic::transport::Channel> {
    let (url, host) = certfleet_common::tls::controller_url(controller);
    let tls = ClientTlsConfig::new()
        .domain_name(host)
        .timeout(CONNECT_TIMEOUT)
        .ca_certificate(Certificate::from_pem(&a.ca_pem))
        .identity(Identity::from_pem(&a.cert_pem, &a.key_pem));
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .local_address(Some(source_address(a.index)))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .tls_config(tls)?
        .connect_lazy())
}

/// Keeps `a` connected until `stop` turns true: reconnects with the real agent's backoff
/// ([`certfleet_agent::link::Reconnect`] with the agent's default settings).
pub async fn run(
    controller: String,
    a: VirtualAgent,
    counters: Arc<FleetCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let opts = certfleet_agent::link::RunOptions::default();
    let mut reconnect = certfleet_agent::link::Reconnect::new(
        opts.backoff_base,
        opts.backoff_cap,
        opts.stable_session,
    );
    loop {
        if *stop.borrow() {
            return;
        }
        let welcomed = tokio::select! {
            r = session(&controller, &a, &counters) => r,
            _ = stop.changed() => return,
        };
        if let Some(w) = welcomed {
            reconnect.set_spread(w.spread);
        }
        let attempt = reconnect.session_ended(match welcomed {
            Some(w) => certfleet_agent::link::SessionEnd::Welcomed(w.at.elapsed()),
            None => certfleet_agent::link::SessionEnd::NotWelcomed,
        });
        let delay = reconnect.delay(attempt);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One session; once welcomed, when and with what reconnect spread.
async fn session(
    controller: &str,
    a: &VirtualAgent,
    counters: &FleetCounters,
) -> Option<certfleet_agent::link::Welcomed> {
    let Ok(ch) = channel(controller, a) else {
        counters.connect_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let send = |k: pb::agent_message::Kind| pb::AgentMessage { kind: Some(k) };
    let _ = tx
        .send(send(pb::agent_message::Kind::Hello(pb::Hello {
            hostname: format!("{}.bench", a.name),
            platforms: vec!["generic".into()],
            version: "loadgen".into(),
            capabilities: vec!["inventory".into(), "steps".into()],
            journaled_steps: vec![],
            cas: a.cas.clone(),
            renewable: a.renewable.clone(),
        })))
        .await;
    let started = Instant::now();
    let opened = tokio::time::timeout(
        CONNECT_TIMEOUT,
        AgentLinkClient::new(ch)
            .max_decoding_message_size(32 << 20)
            .max_encoding_message_size(1 << 30)
            .session(ReceiverStream::new(rx)),
    )
    .await;
    let mut inbound = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            // A connect that the transport gave up on after the deadline is a timeout too.
            if started.elapsed() >= CONNECT_TIMEOUT || s.message().contains("timed out") {
                counters.connect_timeouts.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        Err(_) => {
            counters.connect_timeouts.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let (interval, spread, limits, assembles) =
        match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(pb::ControllerMessage {
                kind: Some(pb::controller_message::Kind::Welcome(w)),
            }))) => (
                Duration::from_secs(u64::from(w.heartbeat_interval_secs.max(1))),
                Duration::from_secs(u64::from(w.reconnect_spread_secs)),
                certfleet_common::limits::ReportLimits::from_welcome(&w),
                certfleet_common::limits::ReportLimits::assembles_chunks(&w),
            ),
            _ => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
    let welcomed = certfleet_agent::link::Welcomed {
        at: Instant::now(),
        spread,
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    counters.welcomed.fetch_add(1, Ordering::Relaxed);
    if send_report(a, &tx, &limits, assembles).await {
        counters.reports.fetch_add(1, Ordering::Relaxed);
    }
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.tick().await;
    let mut seq = 0;
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(pb::ControllerMessage { kind: Some(pb::controller_message::Kind::Step(s)) })) => {
                    let r = pb::StepResult {
                        step_id: s.step_id,
                        ok: true,
                        message: "loadgen: done".into(),
                        details_json: r#"{"csr_pem":"loadgen","cert_pem":"loadgen"}"#.into(),
                        from_journal: false,
                    };
                    if tx.send(send(pb::agent_message::Kind::StepResult(r))).await.is_ok() {
                        counters.steps.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) => {
                    *counters.last_error.lock().unwrap() = format!("{}: {}", a.name, s.message());
                    break;
                }
            },
            _ = heartbeat.tick() => {
                seq += 1;
                if tx.send(send(pb::agent_message::Kind::Heartbeat(pb::Heartbeat { seq }))).await.is_err() {
                    break;
                }
            }
        }
    }
    counters.connected.fetch_sub(1, Ordering::Relaxed);
    Some(welcomed)
}

/// Sends `a`'s full inventory cut as the agent cuts it ([`certfleet_agent::link::report_cuts`]),
/// each chunk once the stream took the one before, as the agent does; in one message when it
/// cannot be cut within the limits (a virtual agent sends what it is given, so a test can also
/// send too much). False when the stream is gone.
async fn send_report(
    a: &VirtualAgent,
    tx: &mpsc::Sender<pb::AgentMessage>,
    limits: &certfleet_common::limits::ReportLimits,
    assembles: bool,
) -> bool {
    use prost::Message as _;
    let mut last = pb::InventoryReport {
        full: true,
        scanned_at: certfleet_common::model::now(),
        ..Default::default()
    };
    let sizes: Vec<usize> = a.certificates.iter().map(|c| c.encoded_len()).collect();
    let generation = 1;
    let cuts = certfleet_agent::link::report_cuts(
        limits,
        assembles,
        &sizes,
        last.encoded_len(),
        generation,
    )
    .unwrap_or_else(|_| vec![sizes.len()]);
    let chunked = cuts.len() > 1;
    if chunked {
        last.generation = generation;
    }
    let mut certificates = a.certificates.iter();
    for (i, n) in cuts.iter().enumerate() {
        let mut part = pb::InventoryReport {
            more: i + 1 < cuts.len(),
            ..last.clone()
        };
        part.certificates = certificates.by_ref().take(*n).cloned().collect();
        let m = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Inventory(part)),
        };
        if tx.send(m).await.is_err() {
            return false;
        }
        if chunked {
            drop(tx.reserve_many(tx.max_capacity()).await);
        }
    }
    true
}
