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
    if state.path().join("agent.json").exists() {
        return Err(LinkError::Other(format!(
            "{} already holds an agent identity; use another --state-dir or remove it first",
            state.path().display()
        )));
    }
    let token = JoinToken::parse(token_text).map_err(|e| LinkError::Other(e.to_string()))?;
    let host = hostname();
    let name = name.map(str::to_owned).unwrap_or_else(|| host.clone());
    // A key without an identity: an enrollment interrupted after the key was saved (the
    // controller may already have enrolled it). Asking again with the same key and token is
    // answered again by the controller without spending another use of the token.
    let (key_pem, csr_pem) = match std::fs::read_to_string(state.key_path()) {
        Ok(key) => {
            tracing::info!(state = %state.path().display(), "an earlier enrollment was interrupted; enrolling again with its key");
            let csr = certfleet_common::pki::csr_for_key(&key, &name).map_err(|e| {
                LinkError::Other(format!(
                    "{} holds a key from an interrupted enrollment that cannot be read ({e}); remove it and enroll again",
                    state.key_path().display()
                ))
            })?;
            (key, csr)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            certfleet_common::pki::new_key_and_csr(&name)
                .map_err(|e| LinkError::Other(e.to_string()))?
        }
        Err(e) => {
            return Err(LinkError::Other(format!(
                "{}: {e}",
                state.key_path().display()
            )));
        }
    };
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
            // A refusal removes the key; a lost answer keeps it, since the controller may have
            // enrolled it and answers a retry with the same key again.
            let lost = matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            );
            if !lost {
                let _ = std::fs::remove_file(state.key_path());
            }
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
    // Test hook: the window between the controller's answer and the saved certificate.
    crate::act::intent::crash_point("enroll:before-save");
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
    backoff_ceiling(attempt, base, cap).mul_f64(unit_random())
}

/// A uniform random number in `[0, 1]`.
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    u64::from_le_bytes(b) as f64 / u64::MAX as f64
}

/// The longest delay of a backoff attempt: `min(cap, base · 2^attempt)`.
pub fn backoff_ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(cap)
}

/// How a session ended, for [`Reconnect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The controller never welcomed it (connect, TLS, hello or re-bind failed).
    NotWelcomed,
    /// Welcomed, then ended (cleanly or by an error) after this long.
    Welcomed(Duration),
}

/// The reconnect backoff as a state machine: every session that ends makes the next delay
/// grow, except one that was welcomed and lived at least `stable`, after which the backoff
/// starts over. A session the controller ends right after its welcome (a report it refuses, a
/// controller restarting again and again) keeps growing the backoff instead of looping; a
/// fleet whose controller restarts after hours of service comes back at once.
#[derive(Clone, Debug)]
pub struct Reconnect {
    attempt: u32,
    base: Duration,
    cap: Duration,
    stable: Duration,
    /// The controller's reconnect spread (its last welcome): the least ceiling of a delay.
    spread: Duration,
}

impl Reconnect {
    /// A backoff that starts at `base`, never exceeds `cap`, and resets after a welcomed
    /// session of at least `stable`.
    pub fn new(base: Duration, cap: Duration, stable: Duration) -> Self {
        Reconnect {
            attempt: 0,
            base,
            cap,
            stable,
            spread: Duration::ZERO,
        }
    }

    /// Takes the reconnect spread a controller announced in its welcome (0: none): a fleet cut
    /// off at once then comes back spread over it instead of all within the first backoff step.
    pub fn set_spread(&mut self, spread: Duration) {
        self.spread = spread.min(self.cap);
    }

    /// Records how a session ended; returns the attempt number the next delay is drawn for.
    pub fn session_ended(&mut self, end: SessionEnd) -> u32 {
        if let SessionEnd::Welcomed(lived) = end
            && lived >= self.stable
        {
            self.attempt = 0;
        }
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        attempt
    }

    /// The longest next delay (before jitter) for `attempt`: the backoff, at least the spread.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        backoff_ceiling(attempt, self.base, self.cap).max(self.spread)
    }

    /// The next delay, jittered: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(unit_random())
    }
}

/// A welcome received: when, and the reconnect spread it announced.
#[derive(Clone, Copy, Debug)]
pub struct Welcomed {
    /// When the welcome arrived.
    pub at: std::time::Instant,
    /// The controller's reconnect spread (zero from a controller that announces none).
    pub spread: Duration,
}

/// Runtime knobs for [`run`].
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// First backoff step.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
    /// A welcomed session that lived this long resets the backoff.
    pub stable_session: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            stable_session: Duration::from_secs(30),
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
    let mut reconnect = Reconnect::new(opts.backoff_base, opts.backoff_cap, opts.stable_session);
    loop {
        let id = state.load()?;
        let mut welcomed: Option<Welcomed> = None;
        let step = async {
            if id.not_after <= now() {
                rebind(&state, &id).await.map(|_| false)
            } else {
                session(&state, &id, &cfg, &mut welcomed).await
            }
        };
        let outcome = tokio::select! {
            r = step => r,
            _ = &mut shutdown => return Ok(()),
        };
        match outcome {
            Ok(_) => {}
            Err(LinkError::Revoked(m)) => return Err(LinkError::Revoked(m)),
            Err(LinkError::State(e)) => return Err(LinkError::State(e)),
            Err(e) => tracing::warn!(error = %e, "link to controller lost"),
        }
        if let Some(w) = welcomed {
            reconnect.set_spread(w.spread);
        }
        let attempt = reconnect.session_ended(match welcomed {
            Some(w) => SessionEnd::Welcomed(w.at.elapsed()),
            None => SessionEnd::NotWelcomed,
        });
        let delay = reconnect.delay(attempt);
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

/// What was last reported, to send deltas: per fingerprint, the SHA-256 of the record as it
/// was sent. A digest, not the record's JSON: an agent with 10,000 certificates kept ~7 MB of
/// JSON between scans for this alone (issue 10).
/// Keyed by the fingerprint's 32 bytes, not its hex: 10,000 small strings allocated while the
/// scan's records were freed pinned the heap's pages, and a trim after the report gave nothing
/// back (issue 10).
#[derive(Default)]
struct Reported {
    certs: HashMap<[u8; 32], [u8; 32]>,
    sent_full: bool,
}

/// SHA-256 of a record's wire form (what a delta compares).
fn record_digest(wire: &crate::collect::Wire) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, wire.bytes()).as_ref());
    out
}

impl Reported {
    /// The report of scan `c` (consumed: its records move into the report, still in the
    /// scan's form): every record on the first report, afterwards those new or changed since
    /// the last one, and the fingerprints gone.
    fn report(&mut self, c: Collection) -> ScanReport {
        let first = !self.sent_full;
        let problems = c.problems.iter().map(Into::into).collect();
        let health = c.health.iter().map(Into::into).collect();
        let pins = c.pins.iter().map(Into::into).collect();
        let mut now_set = HashMap::with_capacity(c.len());
        let mut changed = Vec::with_capacity(if first { c.len() } else { 0 });
        // Each record moves from the scan into the report in its wire form: converting the scan
        // into a vector of records first held two vectors of 10,000 records (3 MB each) beside it.
        for (key, wire) in c.into_wire() {
            let digest = record_digest(&wire);
            // None for a fingerprint that is not 64 lowercase hex digits (none is: every
            // record's is `sha256_hex`): sent with every report, never listed as removed.
            let same = key.is_some_and(|k| self.certs.get(&k) == Some(&digest));
            if let Some(k) = key {
                now_set.insert(k, digest);
            }
            if first || !same {
                changed.push(wire);
            }
        }
        let removed = self
            .certs
            .keys()
            .filter(|k| !now_set.contains_key(*k))
            .map(hex::encode)
            .collect();
        self.certs = now_set;
        self.sent_full = true;
        ScanReport {
            certificates: changed,
            last: pb::InventoryReport {
                full: first,
                removed,
                problems,
                health,
                pins,
                scanned_at: now(),
                ..Default::default()
            },
        }
    }
}

/// A scan's report before it is cut into messages. Its certificates stay in the scan's form
/// until the message that carries them is built ([`Messages`]): a 10,000-certificate report
/// converted whole, then cut, then queued, held the inventory two and three times over
/// (issue 10).
struct ScanReport {
    /// What is sent, in fingerprint order, encoded as the scan held them.
    certificates: Vec<crate::collect::Wire>,
    /// Everything else: what the last (or only) message carries besides certificates.
    last: pb::InventoryReport,
}

/// How long after its last chunk was queued a report is assumed to have left (encoded and
/// written out), so that the heap is trimmed once its buffers are freed too.
const TRIM_AFTER_REPORT: Duration = Duration::from_secs(2);

/// Largest message accepted from the controller (steps, renewed certificates).
const MAX_CONTROLLER_MESSAGE_BYTES: usize = 32 << 20;

use certfleet_common::limits::ReportLimits;

/// Largest report the agent sends as one message, even when the controller takes more: the
/// message is encoded into one buffer before it leaves, so a 10,000-certificate inventory in
/// one 15 MB message cost the agent 15 MB more at its peak (issue 10). Larger reports go in
/// chunks of at most half this, which every controller that announces limits assembles (and
/// the legacy limit is this same size).
const MAX_MESSAGE_SENT_BYTES: usize = certfleet_common::limits::LEGACY_MAX_REPORT_BYTES;

/// Size of the chunks a report is cut into (a certificate larger than this still goes, alone in
/// its chunk, up to half the message cap).
///
/// Small, for the controller's sake: its gRPC decoding buffer for an agent's stream grows to
/// about twice the largest message that agent sent (tonic reserves a message's length on top of
/// the message already read), and its HTTP/2 read buffer to the largest frame over 8 KiB; both
/// stay that size for as long as the agent is connected. A report of ten certificates in one
/// 13 KiB message held 32 KiB of the two per connected agent, 310 MB at 10,000 agents (issue 10;
/// heaptrack at 2,000 loadgen agents); a VCSA's hundreds of certificates in one message would
/// have held a megabyte. In chunks of 2 KiB (mostly one certificate each) the two hold about
/// 4 + 8 KiB. On the agent's side each chunk is encoded into a buffer the stream reuses, and the
/// next is built once the stream took this one, so a chunk is a frame of its own.
pub const CHUNK_BYTES: usize = 2 << 10;

/// The messages of one report, each built (its certificates converted) only when it is taken.
struct Messages {
    certificates: std::vec::IntoIter<crate::collect::Wire>,
    /// How many certificates each message carries, in order; the last also carries `last`.
    cuts: std::vec::IntoIter<usize>,
    last: Option<pb::InventoryReport>,
}

impl Messages {
    /// `report` in messages of `cuts` certificates each (see [`split_report`]); chunks, when
    /// there are several, of one `generation`.
    fn new(report: ScanReport, cuts: Vec<usize>, generation: u64) -> Self {
        let mut last = report.last;
        if cuts.len() > 1 {
            last.generation = generation;
            last.more = false;
        }
        Messages {
            certificates: report.certificates.into_iter(),
            cuts: cuts.into_iter(),
            last: Some(last),
        }
    }

    /// A report of one message with no certificates.
    fn one(last: pb::InventoryReport) -> Self {
        Messages {
            certificates: Vec::new().into_iter(),
            cuts: vec![0].into_iter(),
            last: Some(last),
        }
    }
}

impl Iterator for Messages {
    type Item = pb::InventoryReport;

    fn next(&mut self) -> Option<pb::InventoryReport> {
        let n = self.cuts.next()?;
        let certificates = self
            .certificates
            .by_ref()
            .take(n)
            .map(|w| w.message())
            .collect();
        if self.cuts.len() == 0 {
            let mut last = self.last.take()?;
            last.certificates = certificates;
            return Some(last);
        }
        let last = self.last.as_ref()?;
        Some(pb::InventoryReport {
            full: last.full,
            generation: last.generation,
            more: true,
            scanned_at: last.scanned_at,
            certificates,
            ..Default::default()
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.cuts.len(), Some(self.cuts.len()))
    }
}

impl ExactSizeIterator for Messages {}

/// How many certificates of `report` each message carries (see [`report_cuts`]), with what
/// does not fit named by its fingerprint. Decided from the certificates' sizes: nothing is
/// converted yet.
fn split_report(
    limits: &ReportLimits,
    assembles: bool,
    report: &ScanReport,
    generation: u64,
) -> Result<Vec<usize>, String> {
    use prost::Message as _;
    let sizes: Vec<usize> = report
        .certificates
        .iter()
        .map(|w| w.bytes().len())
        .collect();
    report_cuts(
        limits,
        assembles,
        &sizes,
        report.last.encoded_len(),
        generation,
    )
    .map_err(|e| match e {
        Cut::Certificate { index, size } => format!(
            "certificate {} alone is {size} bytes, the controller accepts at most {} bytes per message",
            report.certificates[index].message().fingerprint_sha256,
            limits.max_report_bytes
        ),
        Cut::Last { size } => format!(
            "last part of the report is {size} bytes (problems, health, removals), the controller accepts at most {} bytes",
            limits.max_report_bytes
        ),
    })
}

/// What keeps a report from being cut into messages the controller takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Certificate `index` alone is `size` bytes, over half the message cap.
    Certificate {
        /// Its place in the report.
        index: usize,
        /// Its size as a field of the report.
        size: usize,
    },
    /// The last message (problems, health, removals, its certificates) is over the limit.
    Last {
        /// Its size.
        size: usize,
    },
}

/// How many certificates each message of a report carries, from the encoded sizes of its
/// certificates (`sizes`, each a `CertificateRecord`) and of everything else (`rest_len`: the
/// report without certificates): all in one message when it is no larger than a chunk
/// ([`CHUNK_BYTES`]), else chunks of one `generation` of at most [`CHUNK_BYTES`] each (a larger
/// certificate goes alone, up to half the message cap), problems and health in the last.
///
/// `assembles`: the controller announced its limits, and every controller that does assembles
/// chunks. One that announces none gets the report in one message up to the cap it is assumed
/// to have ([`MAX_MESSAGE_SENT_BYTES`]); a larger one it could not take whole in any case.
pub fn report_cuts(
    limits: &ReportLimits,
    assembles: bool,
    sizes: &[usize],
    rest_len: usize,
    generation: u64,
) -> Result<Vec<usize>, Cut> {
    use prost::encoding::{encoded_len_varint, key_len};
    // A certificate's size as a field of the report (tag, length, record).
    let field = |n: usize| key_len(2) + encoded_len_varint(n as u64) + n;
    // Room for the envelope (message kind and length prefix).
    let size = rest_len + sizes.iter().map(|&n| field(n)).sum::<usize>() + 16;
    let message_cap = limits.max_report_bytes.min(MAX_MESSAGE_SENT_BYTES);
    if size <= CHUNK_BYTES.min(message_cap) || (!assembles && size <= message_cap) {
        return Ok(vec![sizes.len()]);
    }
    let budget = message_cap / 2;
    let mut cuts = Vec::new();
    let (mut count, mut used) = (0usize, 0usize);
    for (index, &n) in sizes.iter().enumerate() {
        let n = n + 16;
        if n > budget {
            return Err(Cut::Certificate { index, size: n });
        }
        if used + n > budget.min(CHUNK_BYTES) && count > 0 {
            cuts.push(count);
            (count, used) = (0, 0);
        }
        used += n;
        count += 1;
    }
    cuts.push(count);
    // The last chunk: its certificates, everything else of the report, and its generation.
    let in_last: usize = sizes[sizes.len() - count..].iter().map(|&n| field(n)).sum();
    let generation_field = if generation == 0 {
        0
    } else {
        key_len(7) + encoded_len_varint(generation)
    };
    let last_size = rest_len + generation_field + in_last + 16;
    if last_size > limits.max_report_bytes {
        return Err(Cut::Last { size: last_size });
    }
    Ok(cuts)
}

/// [`ReportLimits::check_records`] of a report of encoded records: only a record over the
/// locations limit is decoded, for its fingerprint.
fn check_report(
    limits: &ReportLimits,
    total: usize,
    report: &ScanReport,
) -> Result<(), certfleet_common::limits::OverLimit> {
    let over = report
        .certificates
        .iter()
        .find(|w| w.locations() > limits.max_locations)
        .map(|w| (w.message().fingerprint_sha256, w.locations()));
    limits.check_records(
        total.max(report.certificates.len()),
        over.iter().map(|(fp, n)| (fp.as_str(), *n)),
    )
}

/// The report sent instead of one over the limits: no certificates (what the controller holds
/// stays), the scan's problems and health, and the reason.
fn over_limit_report(
    why: &str,
    mut problems: Vec<pb::Problem>,
    health: Vec<pb::HealthFact>,
    pins: Vec<pb::Pin>,
) -> pb::InventoryReport {
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
        health,
        pins,
        scanned_at: now(),
        ..Default::default()
    }
}

/// One session. `Ok(true)` once the controller welcomed us and the session later ended;
/// errors are returned for the retry loop. `welcomed` is set when the welcome arrives (the
/// backoff resets only after a welcomed session that lived long enough).
async fn session(
    state: &StateDir,
    id: &AgentIdentity,
    cfg: &AgentConfig,
    welcomed: &mut Option<Welcomed>,
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
            capabilities: vec![
                "inventory".into(),
                "renew".into(),
                "steps".into(),
                "exec".into(),
            ],
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
    let (interval, limits, assembles, spread) = match welcome.and_then(|m| m.kind) {
        Some(pb::controller_message::Kind::Welcome(w)) => (
            Duration::from_secs(u64::from(w.heartbeat_interval_secs.max(1))),
            ReportLimits::from_welcome(&w),
            ReportLimits::assembles_chunks(&w),
            Duration::from_secs(u64::from(w.reconnect_spread_secs)),
        ),
        _ => {
            return Err(LinkError::Other(
                "controller did not answer the hello with a welcome".into(),
            ));
        }
    };
    *welcomed = Some(Welcomed {
        at: std::time::Instant::now(),
        spread,
    });
    tracing::info!(agent = %id.meta.agent_id, controller = %ctl, "connected");

    let mut current = id.clone();
    let mut heartbeat = tokio::time::interval(interval);
    let mut seq = 0u64;
    let mut rescan = tokio::time::interval(cfg.scan_interval);
    let (scan_tx, mut scan_rx) = mpsc::channel::<Collection>(1);
    let mut scanning = false;
    let mut rescan_wanted = false;
    let mut reported = Reported::default();
    let mut generation = 0u64;
    let mut renew_pending = false;
    // When to give the heap back after a report (see TRIM_AFTER_REPORT).
    let mut trim_at: Option<tokio::time::Instant> = None;
    // The report being sent, chunk by chunk, beside the session: steps, renewals and rescans
    // requested meanwhile are read and started at once. No scan starts until it is sent (two
    // reports' chunks must not interleave).
    let mut sending: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
    // Remote commands: the rules as checked at start, and what runs (dropped with the session:
    // a lost link does not kill a command, see `remote_exec`).
    let exec_rules = Arc::new(cfg.exec.rules());
    let exec_running = Arc::new(crate::remote_exec::Running::default());
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
                        if scanning || sending.is_some() { rescan_wanted = true } else { start_scan(&mut scanning) }
                    }
                    Some(pb::controller_message::Kind::Step(step)) => {
                        run_step(state.clone(), cfg.clone(), step, tx.clone());
                    }
                    Some(pb::controller_message::Kind::Exec(cmd)) => {
                        crate::remote_exec::start(exec_rules.clone(), exec_running.clone(), cmd, tx.clone());
                    }
                    Some(pb::controller_message::Kind::CancelExec(c)) => exec_running.cancel(&c.exec_id),
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                send(&tx, pb::agent_message::Kind::Heartbeat(pb::Heartbeat { seq }))?;
            }
            _ = rescan.tick() => {
                if scanning || sending.is_some() { rescan_wanted = true } else { start_scan(&mut scanning) }
            }
            Some(found) = scan_rx.recv() => {
                scanning = false;
                let total = found.len();
                let report = reported.report(found);
                tracing::info!(certificates = total, sent = report.certificates.len(), full = report.last.full, problems = report.last.problems.len(), "inventory scanned");
                generation += 1;
                let cuts = check_report(&limits, total, &report)
                    .map_err(|e| e.to_string())
                    .and_then(|()| split_report(&limits, assembles, &report, generation));
                let parts = match cuts {
                    Ok(cuts) => Messages::new(report, cuts, generation),
                    Err(why) => {
                        // Sending it would only be refused (or end the stream, and a
                        // reconnect would send it again): report the problem instead, keep
                        // the session, and send a full report once the inventory fits.
                        tracing::error!(controller = %ctl, reason = %why, "inventory not sent: over the controller's limits");
                        reported = Reported::default();
                        let last = report.last;
                        Messages::one(over_limit_report(&why, last.problems, last.health, last.pins))
                    }
                };
                if parts.len() > 1 {
                    tracing::info!(chunks = parts.len(), generation, "inventory report sent in chunks");
                }
                let out = tx.clone();
                // Ends by itself when the session does: its sends fail once the stream is gone.
                sending = Some(tokio::spawn(async move {
                    for part in parts {
                        out.send(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Inventory(part)) })
                            .await
                            .map_err(|e| format!("outbound queue: {e}"))?;
                        // The next chunk is built once the stream took this one (the queue is
                        // empty): one chunk at a time between the scan's records and the wire.
                        drop(out.reserve_many(out.max_capacity()).await);
                    }
                    Ok(())
                }));
            }
            sent = async { sending.as_mut().expect("guarded by is_some").await }, if sending.is_some() => {
                sending = None;
                sent.map_err(|e| LinkError::Other(format!("sending the inventory report: {e}")))?
                    .map_err(LinkError::Other)?;
                // What the scan and its report freed goes back to the system once the last
                // chunk has left (glibc keeps it otherwise: the agent idled at its peak).
                trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_REPORT);
                if rescan_wanted {
                    rescan_wanted = false;
                    start_scan(&mut scanning);
                }
            }
            _ = tokio::time::sleep_until(trim_at.unwrap_or_else(tokio::time::Instant::now)), if trim_at.is_some() => {
                trim_at = None;
                let released = certfleet_common::heap::trim();
                // And the code and read-only data the scan and report touched (start-up's too,
                // after the first): the idle loop maps back the little it uses.
                let code_bytes = certfleet_common::heap::release_code_pages();
                tracing::debug!(released, code_kib = code_bytes >> 10, rss_mb = certfleet_common::heap::rss_bytes() >> 20, "heap trimmed and code pages released after the report");
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

#[cfg(test)]
mod reconnect_tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The ceiling of the delay after a session that ended so.
    fn next(r: &mut Reconnect, end: SessionEnd) -> Duration {
        let attempt = r.session_ended(end);
        r.ceiling(attempt)
    }

    #[test]
    fn backoff_grows_through_errors_and_resets_after_a_stable_session() {
        let mut r = Reconnect::new(S(1), S(60), S(30));
        // Four failed connects in a row (a controller restarting): 1, 2, 4, 8 s.
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| next(&mut r, SessionEnd::NotWelcomed))
            .collect();
        assert_eq!(ceilings, [S(1), S(2), S(4), S(8)]);
        // Welcomed, served for an hour, then the controller was killed (the stream ends with
        // an error): the fleet comes back at once, not after the grown backoff.
        let a = r.session_ended(SessionEnd::Welcomed(S(3600)));
        assert_eq!((a, r.ceiling(a)), (0, S(1)));
        // A later failure starts from the bottom again.
        assert_eq!(next(&mut r, SessionEnd::NotWelcomed), S(2));
        assert!(r.delay(0) <= S(1));
    }

    /// A controller with many agents announces a spread: after a session that lived, the first
    /// reconnect of each agent is drawn from the whole spread, not from the first backoff step
    /// (10,000 agents reconnecting within 1 s queue past their handshake deadline).
    #[test]
    fn the_announced_spread_is_the_least_ceiling() {
        let mut r = Reconnect::new(S(1), S(60), S(30));
        r.set_spread(S(20));
        let a = r.session_ended(SessionEnd::Welcomed(S(3600)));
        assert_eq!((a, r.ceiling(a)), (0, S(20)));
        // The backoff grows past it, and the cap still holds.
        assert_eq!(next(&mut r, SessionEnd::NotWelcomed), S(20));
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| next(&mut r, SessionEnd::NotWelcomed))
            .collect();
        assert_eq!(ceilings, [S(20), S(20), S(20), S(32)]);
        assert!((0..50).all(|_| r.delay(0) <= S(20)));
        // A spread over the cap is the cap; none announced (an older controller) is none.
        r.set_spread(S(600));
        assert_eq!(r.ceiling(0), S(60));
        r.set_spread(Duration::ZERO);
        assert_eq!(r.ceiling(0), S(1));
    }

    #[test]
    fn a_session_cut_right_after_its_welcome_keeps_backing_off() {
        let mut r = Reconnect::new(S(1), S(60), S(30));
        // A controller that welcomes and then ends the stream half a second later (an
        // over-limit report) must not be hammered every half second.
        let ceilings: Vec<Duration> = (0..8)
            .map(|_| next(&mut r, SessionEnd::Welcomed(Duration::from_millis(500))))
            .collect();
        assert_eq!(
            ceilings,
            [S(1), S(2), S(4), S(8), S(16), S(32), S(60), S(60)]
        );
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;
    use certfleet_common::model::{CertRecord, Location, Problem};

    fn record(n: u32, der_len: usize) -> CertRecord {
        CertRecord {
            fingerprint_sha256: format!("{n:064x}"),
            subject: format!("CN=host-{n}"),
            issuer: "CN=ca".into(),
            serial: format!("{n:X}"),
            sans: vec![format!("DNS:host-{n}")],
            not_before: 1,
            not_after: 1_000 + i64::from(n),
            key_algorithm: "EC P-256".into(),
            key_bits: 256,
            is_ca: false,
            subject_key_id: String::new(),
            authority_key_id: String::new(),
            role: "file.custom".into(),
            locations: vec![Location {
                kind: "file".into(),
                path: format!("/etc/pki/host-{n}.pem"),
                ..Default::default()
            }],
            der: vec![n as u8; der_len],
        }
    }

    fn collection(recs: &[CertRecord]) -> Collection {
        let mut c = Collection::default();
        for r in recs {
            c.add_record(r.clone());
        }
        c.problem(Problem::error("files", "/etc/pki/bad.pem", "bad"));
        c
    }

    /// The messages of `report` as the session sends them.
    fn messages(
        limits: &ReportLimits,
        report: ScanReport,
        generation: u64,
    ) -> Vec<pb::InventoryReport> {
        let cuts = split_report(limits, true, &report, generation).unwrap();
        Messages::new(report, cuts, generation).collect()
    }

    /// The locations limit is checked on the counts the scan kept, and a record over it is named
    /// by its fingerprint; merged places count (a certificate found again adds one).
    #[test]
    fn a_certificate_at_more_places_than_the_controller_takes_is_named() {
        let mut recs: Vec<CertRecord> = (0..3).map(|n| record(n, 40)).collect();
        for extra in ["/a.pem", "/b.pem"] {
            let mut again = recs[1].clone();
            again.locations = vec![Location {
                kind: "file".into(),
                path: extra.into(),
                ..Default::default()
            }];
            recs.push(again);
        }
        let report = Reported::default().report(collection(&recs));
        let limits = ReportLimits {
            max_locations: 2,
            ..ReportLimits::default()
        };
        let err = check_report(&limits, 3, &report).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{:064x}", 1)) && err.contains("3 locations"),
            "{err}"
        );
        let roomy = ReportLimits {
            max_locations: 3,
            ..ReportLimits::default()
        };
        check_report(&roomy, 3, &report).unwrap();
    }

    #[test]
    fn deltas_from_digests_send_what_changed_and_move_records_unchanged() {
        let recs: Vec<CertRecord> = (0..4).map(|n| record(n, 40)).collect();
        let limits = ReportLimits::default();
        let mut reported = Reported::default();
        // First report: everything, each record exactly as the borrowing conversion makes it.
        let r = messages(&limits, reported.report(collection(&recs)), 1);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert!(r.full && !r.more);
        let want: Vec<pb::CertificateRecord> = recs.iter().map(Into::into).collect();
        assert_eq!(r.certificates, want);
        assert_eq!(r.problems.len(), 1);
        // Nothing changed: nothing sent, nothing removed.
        let r = reported.report(collection(&recs));
        assert!(!r.last.full && r.certificates.is_empty() && r.last.removed.is_empty());
        // One moved (new location), one gone, one new.
        let mut next = recs.clone();
        next[1].locations.push(Location {
            kind: "file".into(),
            path: "/etc/pki/copy.pem".into(),
            ..Default::default()
        });
        next.remove(3);
        next.push(record(9, 40));
        let r = messages(&limits, reported.report(collection(&next)), 2).remove(0);
        let sent: Vec<&str> = r.certificates.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(sent, ["CN=host-1", "CN=host-9"]);
        assert_eq!(r.certificates[0].locations.len(), 2);
        assert_eq!(r.removed, [format!("{:064x}", 3)]);
    }

    /// The report as one message, built the old way (whole, then encoded): what the chunks
    /// must add up to, and the size the split is decided on.
    fn whole(recs: &[CertRecord]) -> pb::InventoryReport {
        let mut r = Reported::default().report(collection(recs));
        let mut last = std::mem::take(&mut r.last);
        last.certificates = r.certificates.iter().map(|w| w.message()).collect();
        last
    }

    #[test]
    fn a_report_larger_than_the_send_cap_goes_in_chunks_even_when_the_controller_takes_it_whole() {
        use prost::Message as _;
        // ~6 MiB of certificates; the controller would take 32 MiB in one message.
        let recs: Vec<CertRecord> = (0..600).map(|n| record(n, 10 * 1024)).collect();
        let whole = whole(&recs);
        assert!(whole.encoded_len() > MAX_MESSAGE_SENT_BYTES);
        let limits = ReportLimits::default();
        assert!(limits.max_report_bytes > whole.encoded_len());
        let before = now();
        let parts = messages(&limits, Reported::default().report(collection(&recs)), 7);
        let after = now();
        assert!(parts.len() >= 2, "{} part(s)", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert!(p.encoded_len() <= MAX_MESSAGE_SENT_BYTES / 2, "part {i}");
            assert_eq!(p.generation, 7);
            assert_eq!(p.more, i + 1 < parts.len());
            assert!(p.full);
            // One scan time for every chunk: the report's (not `whole`'s, built a moment
            // earlier, maybe in the second before: this compared them and failed in CI).
            assert_eq!(p.scanned_at, parts[0].scanned_at, "part {i}");
        }
        assert!((before..=after).contains(&parts[0].scanned_at));
        // Put back together, the chunks are the report.
        let certs: Vec<pb::CertificateRecord> =
            parts.iter().flat_map(|p| p.certificates.clone()).collect();
        assert_eq!(certs, whole.certificates);
        assert_eq!(parts.last().unwrap().problems, whole.problems);
        assert!(
            parts[..parts.len() - 1]
                .iter()
                .all(|p| p.problems.is_empty())
        );
        // A small report stays one message, of no generation (as before chunks existed).
        let few: Vec<CertRecord> = (0..3).map(|n| record(n, 100)).collect();
        let small = messages(&limits, Reported::default().report(collection(&few)), 8);
        assert_eq!(small.len(), 1);
        assert_eq!((small[0].generation, small[0].more), (0, false));
    }

    /// The split is decided on sizes computed without building the message: they must be the
    /// encoded sizes exactly, at a chunk's size, at the one-message cap of a controller that
    /// assembles no chunks, and at the controller's limit.
    #[test]
    fn sizes_computed_ahead_are_the_encoded_sizes() {
        use prost::Message as _;
        let at = |max_report_bytes| ReportLimits {
            max_report_bytes,
            ..ReportLimits::default()
        };
        let split = |recs: &[CertRecord], limits: &ReportLimits, assembles: bool| {
            split_report(
                limits,
                assembles,
                &Reported::default().report(collection(recs)),
                3,
            )
        };
        // The largest report of three that fits a chunk: one message; the next larger: chunks.
        let sized = |len: usize| -> Vec<CertRecord> { (0..3).map(|n| record(n, len)).collect() };
        let size_of = |len: usize| whole(&sized(len)).encoded_len() + 16;
        let len = (1..CHUNK_BYTES)
            .take_while(|&len| size_of(len) <= CHUNK_BYTES)
            .last()
            .unwrap();
        let limits = ReportLimits::default();
        assert_eq!(split(&sized(len), &limits, true).unwrap(), [3]);
        // Cut as soon as the certificates alone are over a chunk (a little later than the whole
        // report, whose last part also carries problems and health), each part within a chunk.
        let cut = (len + 1..CHUNK_BYTES)
            .find(|&len| split(&sized(len), &limits, true).unwrap().len() > 1)
            .unwrap();
        assert!(cut - len < 16, "cut at {cut}, the whole fits up to {len}");
        let parts = messages(
            &limits,
            Reported::default().report(collection(&sized(cut))),
            3,
        );
        for p in &parts {
            assert!(p.encoded_len() + 16 <= CHUNK_BYTES, "{}", p.encoded_len());
        }

        // Larger reports: chunks of at most a chunk's size for a controller that assembles
        // them; in one message up to the cap for one that announces no limits.
        let recs: Vec<CertRecord> = (0..40).map(|n| record(n, 1000 + n as usize)).collect();
        let size = whole(&recs).encoded_len() + 16;
        assert!(size > CHUNK_BYTES);
        assert_eq!(split(&recs, &at(size), false).unwrap(), [40]);
        for (limits, assembles) in [(at(size - 1), false), (at(size), true), (limits, true)] {
            let cuts = split(&recs, &limits, assembles).unwrap();
            assert!(
                cuts.len() > 1 && cuts.iter().sum::<usize>() == 40,
                "{cuts:?}"
            );
            // Each chunk within the budget, the last one too (with its generation).
            let cuts = split_report(
                &limits,
                assembles,
                &Reported::default().report(collection(&recs)),
                3,
            )
            .unwrap();
            let parts: Vec<_> = Messages::new(
                Reported::default().report(collection(&recs)),
                cuts.clone(),
                3,
            )
            .collect();
            assert_eq!(parts.len(), cuts.len());
            for p in &parts {
                let p = p.encoded_len() + 16;
                assert!(p <= CHUNK_BYTES.min((size - 1) / 2) + 16 * 40, "{p}");
            }
            assert_eq!(parts.last().unwrap().generation, 3);
        }
    }

    #[test]
    fn a_certificate_larger_than_a_chunk_is_refused_before_anything_is_sent() {
        let mut recs: Vec<CertRecord> = (0..10).map(|n| record(n, 100)).collect();
        recs.push(record(99, 5 << 20));
        let e = split_report(
            &ReportLimits::default(),
            true,
            &Reported::default().report(collection(&recs)),
            1,
        )
        .unwrap_err();
        assert!(e.contains("alone is"), "{e}");
    }
}
