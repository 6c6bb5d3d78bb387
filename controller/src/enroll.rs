//! Enrollment and re-binding: the only RPCs that work without a client certificate.
//!
//! - `Enroll` spends one use of a join token (single-use by default; a multi-use token with a
//!   cap and an expiry serves a mass roll-out) on a CSR made on the agent's host. It reads the
//!   token and the agent-name index only, never the list of agents. Enrollments of different
//!   names run side by side: only one name is serialized ([`NameLocks`]), a token's use is
//!   spent by compare-and-swap (retried when another enrollment spent one first, so the cap
//!   holds without a global lock), and the flush that makes an enrollment and its audit entry
//!   durable before the answer is shared by every enrollment waiting at that moment
//!   ([`GroupFlush`]): a mass roll-out costs a few flushes a second, not two fsyncs each.
//! - `Rebind` lets an agent whose certificate expired while its host was off come back: the
//!   old certificate must have been issued by this fleet's CA (its validity period is ignored),
//!   and a fresh CSR signed by the *same key* proves possession. Unless the controller runs with
//!   `--auto-approve-rebind`, an operator approves with `certfleet agents approve ID`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::identity::{Identity, identity_of_der, valid_name};
use certfleet_common::model::now;
use certfleet_common::pki;
use certfleet_common::proto::enrollment_server::Enrollment;
use certfleet_common::proto::{
    EnrollRequest, EnrollResponse, RebindRequest, RebindResponse, rebind_response,
};
use certfleet_common::token::JoinToken;
use rustls_pki_types::{CertificateDer, UnixTime};
use tonic::{Request, Response, Status};

use crate::fleet::{AgentRecord, AgentState, Fleet, TokenRecord, TokenState, internal};

/// Serializes enrollments per agent name (striped: two names may share a stripe, which only
/// costs them some parallelism). Two enrollments of one name must not both pass the name check.
pub struct NameLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Default for NameLocks {
    fn default() -> Self {
        NameLocks {
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl NameLocks {
    /// Holds the stripe of `name` until the guard is dropped.
    pub async fn lock(&self, name: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        self.stripes[(h.finish() % self.stripes.len() as u64) as usize]
            .lock()
            .await
    }
}

/// Group commit: callers that wrote something call [`GroupFlush::flush`] and return once a
/// store flush that *started after their writes* has finished. One caller at a time flushes;
/// those that queued meanwhile are covered by the next flush and need none of their own.
#[derive(Default)]
pub struct GroupFlush {
    /// Tickets handed out; a ticket is taken after the caller's writes.
    next: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is durable.
    flushed: std::sync::atomic::AtomicU64,
    /// Held by the caller that flushes.
    leader: tokio::sync::Mutex<()>,
    /// Store flushes made (tests, logs).
    flushes: std::sync::atomic::AtomicU64,
}

impl GroupFlush {
    /// Returns once everything the caller wrote before calling is durable (or the flush that
    /// would have made it so failed: then the error, and nothing is acknowledged).
    pub async fn flush(&self, store: &crate::store::Store) -> Result<(), Status> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.next.fetch_add(1, SeqCst) + 1;
        let _leader = self.leader.lock().await;
        if self.flushed.load(SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to `upto` was taken after its writes, and this flush starts now.
        let upto = self.next.load(SeqCst);
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| Status::internal(format!("store flush task: {e}")))?
            .map_err(internal)?;
        self.flushes.fetch_add(1, SeqCst);
        self.flushed.fetch_max(upto, SeqCst);
        Ok(())
    }

    /// Store flushes made so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How often an enrollment retries spending a token use that another enrollment changed
/// under it. Each failed swap means another enrollment spent a use, so this bounds nothing a
/// token's cap does not already bound; it only keeps a broken store from looping.
const TOKEN_SWAP_ATTEMPTS: usize = 10_000;

/// The Enrollment gRPC service.
pub struct EnrollmentService {
    fleet: Arc<Fleet>,
    names: NameLocks,
    durable: GroupFlush,
}

impl EnrollmentService {
    /// Wraps the shared state.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        EnrollmentService {
            fleet,
            names: NameLocks::default(),
            durable: GroupFlush::default(),
        }
    }

    /// Appends an audit entry and makes it (and everything written before it) durable with a
    /// shared flush.
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Status> {
        self.fleet.audit_unflushed(actor, action, target, detail)?;
        self.durable.flush(&self.fleet.store).await
    }

    fn refuse(&self, kind: &str, status: Status) -> Status {
        self.fleet.metrics.enrollment(kind);
        self.fleet.metrics.rpc_error(kind);
        tracing::warn!(kind, message = status.message(), "enrollment refused");
        status
    }

    fn issue(&self, csr_pem: &str, id: &str, name: &str) -> Result<(String, i64, String), Status> {
        let pem = self
            .fleet
            .ca
            .sign_client_csr(
                csr_pem,
                &Identity::Agent(id.to_owned()),
                name,
                self.fleet.opts.agent_cert_ttl,
            )
            .map_err(|e| Status::invalid_argument(format!("certificate signing request: {e}")))?;
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).expect("just issued");
        let rec = certfleet_common::x509::parse_der(&der).expect("just issued");
        Ok((pem, rec.not_after, rec.fingerprint_sha256))
    }
}

impl EnrollmentService {
    /// A repeated enrollment: the agent named `name` was enrolled with this token and the key
    /// of this CSR, and has never connected (so it never saved its certificate). Issues it a
    /// certificate again for the same agent id, supersedes the one it never received, and
    /// spends no use of the token: re-enrolling with the same token and key is idempotent, so
    /// a kill between the controller's answer and the agent's save loses no use of a capped
    /// token. Anything else (another key, another token, an agent that connected, a revoked
    /// token or agent) is `None` and goes through the ordinary checks.
    fn replay(
        &self,
        token: &TokenRecord,
        name: &str,
        key_id: &str,
        csr_pem: &str,
        remote: &str,
    ) -> Result<Option<EnrollResponse>, Status> {
        let fleet = &self.fleet;
        if token.state == TokenState::Revoked {
            return Ok(None);
        }
        let Some(holder) = fleet
            .store
            .get::<String>("agent_names", name)
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let Some(mut agent) = fleet
            .store
            .get::<AgentRecord>("agents", &holder)
            .map_err(internal)?
        else {
            return Ok(None);
        };
        if agent.state != AgentState::Active
            || agent.last_seen != 0
            || agent.key_id != key_id
            || agent.enrolled_with.as_deref() != Some(token.id.as_str())
        {
            return Ok(None);
        }
        let (cert_pem, not_after, fingerprint) = self.issue(csr_pem, &agent.id, &agent.name)?;
        agent.cert_not_after = not_after;
        let retired = agent.supersede(fingerprint);
        fleet.revoke_certs(&format!("agent:{}", agent.id), &retired, "superseded")?;
        fleet
            .store
            .put("agents", &agent.id, &agent)
            .map_err(internal)?;
        fleet.audit(
            &format!("token:{}", token.id),
            "agent.enroll_repeated",
            &format!("agent:{}", agent.id),
            &format!(
                "name={name} from={remote}: same token and key, never connected; certificate issued again, no token use spent ({}/{})",
                token.uses,
                token.cap()
            ),
        )?;
        tracing::info!(agent = %agent.id, name, %remote, "repeated enrollment answered again");
        fleet.metrics.enrollment("repeated");
        Ok(Some(EnrollResponse {
            agent_id: agent.id,
            certificate_pem: cert_pem,
            ca_pem: fleet.ca.cert_pem().to_owned(),
        }))
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let remote = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let req = request.into_inner();
        let fleet = &self.fleet;
        let token = JoinToken::parse(&req.token)
            .map_err(|e| self.refuse("bad_token", Status::invalid_argument(e.to_string())))?;
        if token.ca_fingerprint != fleet.ca.fingerprint() {
            return Err(self.refuse(
                "wrong_fleet",
                Status::failed_precondition(format!(
                    "join token was made for another fleet (CA {}…); this controller's CA is {}…",
                    &token.ca_fingerprint[..16],
                    &fleet.ca.fingerprint()[..16]
                )),
            ));
        }
        let key_id = pki::csr_public_key_id(&req.csr_pem).map_err(|e| {
            self.refuse(
                "bad_csr",
                Status::invalid_argument(format!("certificate signing request: {e}")),
            )
        })?;
        let name = if req.name.is_empty() {
            req.hostname.clone()
        } else {
            req.name.clone()
        };
        if !valid_name(&name) {
            return Err(self.refuse(
                "bad_name",
                Status::invalid_argument(format!(
                    "agent name {name:?}: use letters, digits, '.', '-', '_'"
                )),
            ));
        }

        // One name at a time; other names go ahead (the token's cap is kept by the swap).
        let _name = self.names.lock(&name).await;
        let hash = token.hash();
        let (stored, read): (TokenRecord, _) = fleet
            .store
            .get_for_swap("tokens", &hash)
            .map_err(internal)?
            .ok_or_else(|| {
                self.refuse(
                    "unknown_token",
                    Status::unauthenticated("unknown join token"),
                )
            })?;
        // The same agent asking again: it was killed after this controller enrolled it (and
        // spent a use of the token) but before it saved its certificate, and retries with the
        // key it had already saved. Answered again without spending another use.
        if let Some(resp) = self.replay(&stored, &name, &key_id, &req.csr_pem, &remote)? {
            return Ok(Response::new(resp));
        }
        let id = random_id();
        spend_token(&stored, now(), &id).map_err(|(kind, status)| self.refuse(kind, status))?;
        // The name index, not a scan of every agent: enrollment stays flat with fleet size.
        if let Some(holder) = fleet
            .store
            .get::<String>("agent_names", &name)
            .map_err(internal)?
            && let Some(a) = fleet
                .store
                .get::<AgentRecord>("agents", &holder)
                .map_err(internal)?
            && a.state != AgentState::Revoked
        {
            return Err(self.refuse(
                "name_taken",
                Status::already_exists(format!(
                    "an agent named {name:?} is already enrolled (revoke it first, or pass --name)"
                )),
            ));
        }

        let (cert_pem, not_after, fingerprint) = self.issue(&req.csr_pem, &id, &name)?;
        // Spend one use: compare-and-swap against what was read, read again when another
        // enrollment spent one first. The cap is checked on every attempt.
        let (mut stored, mut read) = (stored, read);
        let mut used = None;
        for _ in 0..TOKEN_SWAP_ATTEMPTS {
            let spent = spend_token(&stored, now(), &id)
                .map_err(|(kind, status)| self.refuse(kind, status))?;
            if fleet
                .store
                .swap("tokens", &hash, &read, &spent)
                .map_err(internal)?
            {
                used = Some(spent);
                break;
            }
            (stored, read) = fleet
                .store
                .get_for_swap("tokens", &hash)
                .map_err(internal)?
                .ok_or_else(|| {
                    self.refuse(
                        "unknown_token",
                        Status::unauthenticated("join token removed during enrollment"),
                    )
                })?;
        }
        let used = used.ok_or_else(|| {
            self.refuse(
                "token_reused",
                Status::unavailable(format!(
                    "join token {} kept changing under {TOKEN_SWAP_ATTEMPTS} attempts to spend a use; try again",
                    stored.id
                )),
            )
        })?;
        let record = AgentRecord {
            id: id.clone(),
            name: name.clone(),
            hostname: req.hostname.clone(),
            platforms: Vec::new(),
            version: String::new(),
            state: AgentState::Active,
            enrolled_at: now(),
            last_seen: 0,
            cert_not_after: not_after,
            cert_fingerprint: fingerprint,
            key_id,
            enrolled_with: Some(stored.id.clone()),
            labels: stored.labels.clone(),
            pending_csr: None,
            approved_cert: None,
            cas: Vec::new(),
            renewable: Vec::new(),
            superseded: Vec::new(),
        };
        fleet.store.put("agents", &id, &record).map_err(internal)?;
        fleet
            .store
            .put("agent_names", &name, &id)
            .map_err(internal)?;
        // Durable (shared flush) before the agent gets its certificate.
        self.audit(
            &format!("token:{}", stored.id),
            "agent.enroll",
            &format!("agent:{id}"),
            &format!(
                "name={name} hostname={} from={remote} token_use={}/{}",
                req.hostname,
                used.uses,
                used.cap()
            ),
        )
        .await?;
        fleet.metrics.enrollment("ok");
        Ok(Response::new(EnrollResponse {
            agent_id: id,
            certificate_pem: cert_pem,
            ca_pem: fleet.ca.cert_pem().to_owned(),
        }))
    }

    async fn rebind(
        &self,
        request: Request<RebindRequest>,
    ) -> Result<Response<RebindResponse>, Status> {
        let req = request.into_inner();
        let fleet = &self.fleet;
        let der = certfleet_common::pem::first_certificate(req.certificate_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("old certificate: {e}")))?;
        verify_issued_by(fleet.ca.cert_pem(), &der).map_err(|e| {
            self.refuse(
                "rebind_foreign",
                Status::permission_denied(format!(
                    "old certificate was not issued by this fleet's CA: {e}"
                )),
            )
        })?;
        let id = match identity_of_der(&der) {
            Ok(Identity::Agent(id)) => id,
            _ => {
                return Err(self.refuse(
                    "rebind_bad_identity",
                    Status::permission_denied("old certificate is not an agent certificate"),
                ));
            }
        };
        let key_id = pki::csr_public_key_id(&req.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("certificate signing request: {e}")))?;

        let _guard = fleet.enroll_lock.lock().await;
        let mut agent: AgentRecord = fleet
            .store
            .get("agents", &id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("agent {id} is not enrolled here")))?;
        if agent.state == AgentState::Revoked {
            return Err(self.refuse(
                "revoked",
                Status::permission_denied(format!("agent {} ({id}) has been revoked", agent.name)),
            ));
        }
        // Only a certificate issued to this agent and never revoked or superseded may ask.
        fleet
            .check_agent_cert(&agent, &pki::sha256_hex(&der))
            .map_err(|s| self.refuse("rebind_unknown_certificate", s))?;
        if key_id != agent.key_id {
            return Err(self.refuse(
                "rebind_wrong_key",
                Status::permission_denied(
                    "the CSR is not signed by the key this agent enrolled with",
                ),
            ));
        }
        if let Some(cert) = agent.approved_cert.take() {
            agent.state = AgentState::Active;
            fleet.store.put("agents", &id, &agent).map_err(internal)?;
            fleet.store.flush().map_err(internal)?;
            return Ok(Response::new(RebindResponse {
                state: rebind_response::State::Issued as i32,
                certificate_pem: cert,
                ca_pem: fleet.ca.cert_pem().to_owned(),
            }));
        }
        if fleet.opts.auto_approve_rebind {
            let (cert, not_after, fp) = self.issue(&req.csr_pem, &id, &agent.name)?;
            agent.state = AgentState::Active;
            agent.cert_not_after = not_after;
            let retired = agent.supersede(fp);
            fleet.revoke_certs(&format!("agent:{id}"), &retired, "superseded")?;
            agent.pending_csr = None;
            fleet.store.put("agents", &id, &agent).map_err(internal)?;
            fleet.audit(
                "controller",
                "agent.rebind",
                &format!("agent:{id}"),
                "auto-approved",
            )?;
            return Ok(Response::new(RebindResponse {
                state: rebind_response::State::Issued as i32,
                certificate_pem: cert,
                ca_pem: fleet.ca.cert_pem().to_owned(),
            }));
        }
        if agent.state != AgentState::PendingApproval {
            agent.state = AgentState::PendingApproval;
            agent.pending_csr = Some(req.csr_pem.clone());
            fleet.store.put("agents", &id, &agent).map_err(internal)?;
            fleet.audit(
                &format!("agent:{id}"),
                "agent.rebind_request",
                &format!("agent:{id}"),
                &format!("name={}", agent.name),
            )?;
        } else {
            agent.pending_csr = Some(req.csr_pem.clone());
            fleet.store.put("agents", &id, &agent).map_err(internal)?;
        }
        Ok(Response::new(RebindResponse {
            state: rebind_response::State::PendingApproval as i32,
            certificate_pem: String::new(),
            ca_pem: String::new(),
        }))
    }
}

/// Approves a pending re-bind: signs the pending CSR. Called by the operator service.
pub fn approve(fleet: &Fleet, agent: &mut AgentRecord) -> Result<(), Status> {
    let csr = agent.pending_csr.take().ok_or_else(|| {
        Status::failed_precondition(format!(
            "agent {} has no pending re-bind request",
            agent.name
        ))
    })?;
    let pem = fleet
        .ca
        .sign_client_csr(
            &csr,
            &Identity::Agent(agent.id.clone()),
            &agent.name,
            fleet.opts.agent_cert_ttl,
        )
        .map_err(|e| Status::internal(e.to_string()))?;
    let der = certfleet_common::pem::first_certificate(pem.as_bytes()).expect("just issued");
    let rec = certfleet_common::x509::parse_der(&der).expect("just issued");
    agent.cert_not_after = rec.not_after;
    // The agent still presents its expired certificate to pick this one up.
    let retired = agent.supersede(rec.fingerprint_sha256);
    fleet.revoke_certs(&format!("agent:{}", agent.id), &retired, "superseded")?;
    agent.approved_cert = Some(pem);
    agent.state = AgentState::Active;
    Ok(())
}

/// Checks that `der` was signed by the CA in `ca_pem`, at a time inside its own validity (so an
/// expired certificate still verifies, but a forged or foreign one does not).
pub fn verify_issued_by(ca_pem: &str, der: &[u8]) -> Result<(), String> {
    let ca_der =
        certfleet_common::pem::first_certificate(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    let ca_der = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| format!("{e:?}"))?;
    let rec = certfleet_common::x509::parse_der(der).map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from(der.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("{e:?}"))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs((rec.not_before.max(0) + 1) as u64));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

/// 16 hex characters of randomness: agent ids.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    hex::encode(b)
}

/// Whether a join token may enroll one more agent (`agent`) at `now`; the record to store
/// (compare-and-swap against `stored`) when it may, the refusal (metric kind, status) when not.
///
/// A token is refused once revoked, expired or used `cap` times; each use is counted in the
/// record, so two enrollments racing for the last use cannot both win the swap.
pub fn spend_token(
    stored: &TokenRecord,
    now: i64,
    agent: &str,
) -> Result<TokenRecord, (&'static str, Status)> {
    match stored.state {
        TokenState::Used => {
            return Err((
                "token_reused",
                Status::permission_denied(if stored.cap() == 1 {
                    format!(
                        "join token {} was already used (by agent {}); tokens are single-use",
                        stored.id,
                        stored.used_by.as_deref().unwrap_or("?")
                    )
                } else {
                    format!(
                        "join token {} is used up: {} of {} enrollments made",
                        stored.id,
                        stored.uses,
                        stored.cap()
                    )
                }),
            ));
        }
        TokenState::Revoked => {
            return Err((
                "token_revoked",
                Status::permission_denied(format!("join token {} was revoked", stored.id)),
            ));
        }
        TokenState::Active if stored.expires_at <= now => {
            return Err((
                "token_expired",
                Status::permission_denied(format!(
                    "join token {} expired at {}",
                    stored.id,
                    certfleet_common::model::format_time(stored.expires_at)
                )),
            ));
        }
        TokenState::Active => {}
    }
    let uses = stored.uses.saturating_add(1);
    Ok(TokenRecord {
        uses,
        state: if uses >= stored.cap() {
            TokenState::Used
        } else {
            TokenState::Active
        },
        used_by: Some(agent.to_owned()),
        ..stored.clone()
    })
}

/// Creates a token record allowing `max_uses` enrollments; returns `(token text, record)`.
pub fn new_token(
    fleet: &Fleet,
    ttl_secs: u64,
    max_uses: u32,
    labels: BTreeMap<String, String>,
    created_by: &str,
) -> (String, TokenRecord) {
    let token = JoinToken::generate(fleet.ca.fingerprint());
    let now = now();
    let rec = TokenRecord {
        id: token.id(),
        hash: token.hash(),
        created_at: now,
        expires_at: now + ttl_secs as i64,
        created_by: created_by.to_owned(),
        labels,
        state: TokenState::Active,
        used_by: None,
        max_uses: max_uses.max(1),
        uses: 0,
    };
    (token.to_text(), rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(max_uses: u32) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            hash: "h".into(),
            created_at: 0,
            expires_at: 1000,
            created_by: "admin".into(),
            labels: BTreeMap::new(),
            state: TokenState::Active,
            used_by: None,
            max_uses,
            uses: 0,
        }
    }

    #[test]
    fn a_multi_use_token_enrolls_up_to_its_cap() {
        let mut t = token(3);
        for n in 1..=3 {
            t = spend_token(&t, 10, &format!("a{n}")).unwrap();
            assert_eq!(t.uses, n);
        }
        assert_eq!(t.state, TokenState::Used);
        let (kind, status) = spend_token(&t, 10, "a4").unwrap_err();
        assert_eq!(kind, "token_reused");
        assert!(status.message().contains("used up: 3 of 3"), "{status:?}");
    }

    #[test]
    fn a_multi_use_token_expires_and_revokes_with_uses_left() {
        let t = spend_token(&token(100), 10, "a1").unwrap();
        assert_eq!(t.state, TokenState::Active);
        let (kind, status) = spend_token(&t, 1000, "a2").unwrap_err();
        assert_eq!(kind, "token_expired");
        assert!(status.message().contains("expired"), "{status:?}");
        let revoked = TokenRecord {
            state: TokenState::Revoked,
            ..t
        };
        let (kind, _) = spend_token(&revoked, 10, "a2").unwrap_err();
        assert_eq!(kind, "token_revoked");
    }

    #[test]
    fn a_token_stored_before_multi_use_tokens_is_single_use() {
        let old: TokenRecord = serde_json::from_value(serde_json::json!({
            "id": "t0", "hash": "h", "created_at": 0, "expires_at": 1000,
            "created_by": "admin", "labels": {}, "state": "active", "used_by": null,
        }))
        .unwrap();
        let t = spend_token(&old, 10, "a1").unwrap();
        assert_eq!(t.state, TokenState::Used);
        let (_, status) = spend_token(&t, 10, "a2").unwrap_err();
        assert!(status.message().contains("single-use"), "{status:?}");
    }

    #[test]
    fn expired_certificate_of_our_ca_verifies_foreign_does_not() {
        let ours = pki::generate_ca("ours", Duration::from_secs(3600)).unwrap();
        let ours_ca = pki::FleetCa::from_pem(&ours.cert_pem, &ours.key_pem).unwrap();
        let theirs = pki::generate_ca("theirs", Duration::from_secs(3600)).unwrap();
        let theirs_ca = pki::FleetCa::from_pem(&theirs.cert_pem, &theirs.key_pem).unwrap();
        let (_k, csr) = pki::new_key_and_csr("a").unwrap();
        let id = Identity::Agent("a".into());
        // Lifetime of 1 s: expired by the time we check.
        let short = ours_ca
            .sign_client_csr(&csr, &id, "a", Duration::from_secs(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let der = certfleet_common::pem::first_certificate(short.as_bytes()).unwrap();
        verify_issued_by(&ours.cert_pem, &der).unwrap();
        let foreign = theirs_ca
            .sign_client_csr(&csr, &id, "a", Duration::from_secs(60))
            .unwrap();
        let der = certfleet_common::pem::first_certificate(foreign.as_bytes()).unwrap();
        assert!(verify_issued_by(&ours.cert_pem, &der).is_err());
    }

    /// Writers queued behind a flush share the next one: N enrollments waiting at once cost one
    /// flush, not N (each made two fsyncs under a global lock before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_writers_share_one_flush() {
        let (_dir, fleet) = crate::server::test_fleet();
        let g = Arc::new(GroupFlush::default());
        let held = g.leader.lock().await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (g, fleet) = (g.clone(), fleet.clone());
            tasks.push(tokio::spawn(async move {
                fleet.store.put("meta", &format!("w{i}"), &i).unwrap();
                g.flush(&fleet.store).await
            }));
        }
        while g.next.load(std::sync::atomic::Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(g.flushes(), 1);
        // A writer after that flush is not covered by it.
        g.flush(&fleet.store).await.unwrap();
        assert_eq!(g.flushes(), 2);
    }

    /// Enrollments racing on one capped token without a global lock: exactly the cap succeed
    /// (none refused for a lost swap), the rest are told the token is used up, and one name is
    /// enrolled once however many ask for it at the same moment. The five asking for one name
    /// use a second, uncapped token: on the capped one, whether any of them came before the
    /// cap was reached was up to the scheduler (1 run in 12 enrolled none).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_enrollments_keep_the_cap_and_unique_names() {
        use certfleet_common::proto::EnrollRequest;
        let (_dir, fleet) = crate::server::test_fleet();
        let svc = Arc::new(EnrollmentService::new(fleet.clone()));
        let (text, rec) = new_token(&fleet, 3600, 25, BTreeMap::new(), "test");
        fleet.store.put("tokens", &rec.hash, &rec).unwrap();
        let (same_text, same_rec) = new_token(&fleet, 3600, 100, BTreeMap::new(), "same");
        fleet
            .store
            .put("tokens", &same_rec.hash, &same_rec)
            .unwrap();
        let csrs: Vec<String> = (0..40)
            .map(|i| pki::new_key_and_csr(&format!("a{i}")).unwrap().1)
            .collect();
        let mut tasks = Vec::new();
        for (i, csr) in csrs.into_iter().enumerate() {
            // Agents 0..5 all ask for the name "same" (interleaved with the others).
            let (svc, name, token) = if i % 8 == 0 {
                (svc.clone(), "same".to_owned(), same_text.clone())
            } else {
                (svc.clone(), format!("a{i}"), text.clone())
            };
            tasks.push(tokio::spawn(async move {
                svc.enroll(Request::new(EnrollRequest {
                    token,
                    csr_pem: csr,
                    name: name.clone(),
                    hostname: format!("{name}.lab"),
                }))
                .await
                .map(|r| r.into_inner().agent_id)
            }));
        }
        let mut ok = Vec::new();
        let mut refused = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => ok.push(id),
                Err(s) => refused.push(s.message().to_owned()),
            }
        }
        assert_eq!(ok.len(), 26, "refusals: {refused:?}");
        let count = |what: &str| refused.iter().filter(|m| m.contains(what)).count();
        assert_eq!(
            (count("used up"), count("already enrolled"), refused.len()),
            (10, 4, 14),
            "{refused:?}"
        );
        let agents: Vec<AgentRecord> = fleet.store.list("agents").unwrap();
        assert_eq!(agents.len(), 26);
        assert_eq!(agents.iter().filter(|a| a.name == "same").count(), 1);
        let token: TokenRecord = fleet.store.get("tokens", &rec.hash).unwrap().unwrap();
        assert_eq!((token.uses, token.state), (25, TokenState::Used));
        // Every acknowledged enrollment is in the durable audit log.
        let audit: Vec<crate::fleet::AuditEntry> = fleet.store.tail("audit", 1000).unwrap();
        assert_eq!(
            audit.iter().filter(|e| e.action == "agent.enroll").count(),
            26
        );
        assert!(svc.durable.flushes() <= 26);
    }
}
