//! The controller's shared state: records kept in the store, the registry of live agent
//! streams, and the authorization rules every service applies.
//!
//! Authorization is in one place on purpose. The caller's identity is always the URI SAN of
//! its verified client certificate ([`Fleet::caller`]); a request field never names who is
//! speaking. Agents may only use the agent link, operators only the operator API, viewers only
//! read, and anything revoked is refused with a message that says so.
//!
//! An identity is bound to its certificate, not to its name: each record keeps the
//! fingerprint of the certificate issued to it, and a caller presenting any other certificate
//! for that name is refused. Every certificate that is revoked or superseded goes into the
//! `revoked_certs` set (by SHA-256 fingerprint) and stays there for good, so re-issuing a name
//! (`operators issue` after `operators revoke`, an agent re-enrolled, re-bound or renewed)
//! never brings an old certificate back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_common::identity::{Identity, identity_of_der};
use certfleet_common::model::now;
use certfleet_common::pki::FleetCa;
use certfleet_common::proto::ControllerMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::{Request, Status};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Runtime settings of `certfleet serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Lifetime of agent certificates.
    pub agent_cert_ttl: Duration,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// Re-bind expired agents without operator approval.
    pub auto_approve_rebind: bool,
    /// How long a dry-run plan is kept before it is removed.
    pub dry_run_ttl: Duration,
    /// Whether an admin may take a backup (fleet CA key included) through the API
    /// (`certfleet serve --no-backup-over-api` turns it off).
    pub backup_over_api: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            agent_cert_ttl: Duration::from_secs(30 * 86_400),
            heartbeat_interval: Duration::from_secs(15),
            auto_approve_rebind: false,
            dry_run_ttl: DEFAULT_DRY_RUN_TTL,
            backup_over_api: true,
        }
    }
}

/// Default time to live of a dry-run plan (`certfleet serve --dry-run-ttl`).
pub const DEFAULT_DRY_RUN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Lifecycle of an enrolled agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Enrolled and allowed to connect.
    Active,
    /// Asked to re-bind with an expired certificate; waits for `agents approve`.
    PendingApproval,
    /// Refused from now on.
    Revoked,
}

impl AgentState {
    /// Lowercase word for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::PendingApproval => "pending_approval",
            AgentState::Revoked => "revoked",
        }
    }
}

/// An enrolled agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Controller-assigned id (also in the certificate's SAN URI).
    pub id: String,
    /// Operator-facing name (unique).
    pub name: String,
    /// Host name reported by the agent.
    pub hostname: String,
    /// Platforms detected on the host.
    pub platforms: Vec<String>,
    /// Agent version.
    pub version: String,
    /// Lifecycle state.
    pub state: AgentState,
    /// When it enrolled.
    pub enrolled_at: i64,
    /// Set at the first hello (0 until then: the agent never connected); later heartbeat
    /// times are in the registry while it is connected and in `agent_seen` after (see
    /// [`crate::operator::agent_info`]). Records written before `agent_seen` have their last heartbeat here.
    pub last_seen: i64,
    /// Not-after of the newest certificate issued to it.
    pub cert_not_after: i64,
    /// SHA-256 of that certificate.
    pub cert_fingerprint: String,
    /// SHA-256 of the public key it enrolled with (re-binding must prove this key).
    pub key_id: String,
    /// Id of the join token it enrolled with (a repeated enrollment with the same token and
    /// key is answered again, see `enroll`); `None` for agents enrolled before it was kept.
    #[serde(default)]
    pub enrolled_with: Option<String>,
    /// Labels from the join token.
    pub labels: BTreeMap<String, String>,
    /// CSR of a pending re-bind.
    #[serde(default)]
    pub pending_csr: Option<String>,
    /// Certificate issued on approval, waiting to be picked up by the agent.
    #[serde(default)]
    pub approved_cert: Option<String>,
    /// CAs this agent can sign with.
    #[serde(default)]
    pub cas: Vec<String>,
    /// Files it is configured to renew.
    #[serde(default)]
    pub renewable: Vec<RenewableSpec>,
    /// Fingerprints of certificates issued to it before the newest one, still accepted
    /// because the agent may not have switched yet (a renewal answer lost in a crash, a
    /// re-bind certificate not yet picked up). The first session with the newest certificate
    /// moves them to the revoked set.
    #[serde(default)]
    pub superseded: Vec<String>,
}

/// How many superseded certificates of one agent stay accepted (renewals within one session).
const MAX_SUPERSEDED: usize = 4;

impl AgentRecord {
    /// Records that `new_fp` replaces the agent's current certificate. Returns the
    /// fingerprints that are no longer accepted (to be put in the revoked set).
    pub fn supersede(&mut self, new_fp: String) -> Vec<String> {
        let old = std::mem::replace(&mut self.cert_fingerprint, new_fp);
        if !old.is_empty() && old != self.cert_fingerprint && !self.superseded.contains(&old) {
            self.superseded.push(old);
        }
        let excess = self.superseded.len().saturating_sub(MAX_SUPERSEDED);
        self.superseded.drain(..excess).collect()
    }

    /// What a recipe sees of this agent.
    pub fn target(&self) -> crate::plan::Target {
        crate::plan::Target {
            id: self.id.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            platforms: self.platforms.clone(),
            version: self.version.clone(),
            labels: self.labels.clone(),
            cas: self.cas.clone(),
            renewable: self.renewable.clone(),
        }
    }

    /// Every certificate fingerprint this agent holds or held that is not yet revoked.
    pub fn fingerprints(&self) -> Vec<String> {
        std::iter::once(self.cert_fingerprint.clone())
            .chain(self.superseded.iter().cloned())
            .filter(|f| !f.is_empty())
            .collect()
    }
}

/// A certificate refused for good.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokedCert {
    /// SHA-256 fingerprint of the certificate.
    pub fingerprint: String,
    /// Whose it was (`operator:alice`, `agent:<id>`).
    pub identity: String,
    /// When it went into the set.
    pub revoked_at: i64,
    /// Why (`revoked`, `superseded`).
    pub reason: String,
}

pub use crate::plan::RenewableSpec;

/// State of a join token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Usable (up to its `max_uses`).
    Active,
    /// Used up.
    Used,
    /// Revoked by an operator.
    Revoked,
}

/// A join token; only the hash of its secret is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short id for listing and revoking (prefix of the hash).
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: String,
    /// Created at.
    pub created_at: i64,
    /// Expires at.
    pub expires_at: i64,
    /// Operator who created it.
    pub created_by: String,
    /// Labels given to agents enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: TokenState,
    /// Agent id that used it (the last one, for a multi-use token).
    pub used_by: Option<String>,
    /// Enrollments it allows (0, in records older than multi-use tokens: 1).
    #[serde(default)]
    pub max_uses: u32,
    /// Enrollments made with it.
    #[serde(default)]
    pub uses: u32,
}

impl TokenRecord {
    /// Enrollments it allows.
    pub fn cap(&self) -> u32 {
        self.max_uses.max(1)
    }
}

/// Operator roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May change anything.
    Admin,
    /// May read.
    Viewer,
}

impl Role {
    /// Parses `admin` / `viewer`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// An operator identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorRecord {
    /// Name (in the certificate's SAN URI).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Revoked operators are refused.
    pub revoked: bool,
    /// Issued at.
    pub issued_at: i64,
    /// Who issued it.
    pub issued_by: String,
    /// Fingerprint of the certificate issued.
    pub cert_fingerprint: String,
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: u64,
    /// When.
    pub at: i64,
    /// Who (`operator:alice`, `agent:…`, `controller`, `token:…`).
    pub actor: String,
    /// What (`token.create`, `agent.enroll`, `agent.revoke`, …).
    pub action: String,
    /// On what.
    pub target: String,
    /// Details.
    pub detail: String,
}

// === impl Registry ===

/// What goes down an agent's stream, boxed. The stream's queue holds its messages in blocks of
/// 32 slots whatever its capacity; a slot of the message and status unboxed made the first
/// block 3.3 KiB per connected agent (heaptrack at 2,000 loadgen agents), 16 bytes a slot boxed.
pub type Outgoing = Result<Box<ControllerMessage>, Box<Status>>;

/// A live agent stream.
struct Conn {
    session: u64,
    tx: mpsc::Sender<Outgoing>,
    remote: String,
    last_seen: i64,
    /// What the agent's hello of this session said it can do (`exec`, `steps`, ...): kept per
    /// session, since an agent upgraded or downgraded in place says it anew.
    capabilities: Vec<String>,
}

/// Live agent streams, keyed by agent id. One entry per connected agent, bounded channel per
/// stream: memory per connection is fixed, and no task or thread per agent beyond the stream.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, Conn>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Set by [`Registry::kick_all`]: operator streams (`plan watch`) end too, or they would
    /// hold the graceful shutdown open.
    closing: std::sync::atomic::AtomicBool,
}

impl Registry {
    /// Registers a stream with the capabilities its hello listed; an older stream of the same
    /// agent is closed.
    pub fn connect(
        &self,
        agent: &str,
        tx: mpsc::Sender<Outgoing>,
        remote: String,
        capabilities: Vec<String>,
    ) -> u64 {
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let old = self.conns.lock().unwrap().insert(
            agent.to_owned(),
            Conn {
                session,
                tx,
                remote,
                last_seen: now(),
                capabilities,
            },
        );
        if let Some(old) = old {
            let _ = old.tx.try_send(Err(Box::new(Status::aborted(
                "superseded by a newer session of the same agent",
            ))));
        }
        session
    }

    /// Unregisters a stream if it is still the current one.
    pub fn disconnect(&self, agent: &str, session: u64) -> Option<i64> {
        let mut conns = self.conns.lock().unwrap();
        if conns.get(agent).is_some_and(|c| c.session == session) {
            return conns.remove(agent).map(|c| c.last_seen);
        }
        None
    }

    /// Closes an agent's stream with `status` (revocation).
    pub fn kick(&self, agent: &str, status: Status) {
        if let Some(c) = self.conns.lock().unwrap().remove(agent) {
            let _ = c.tx.try_send(Err(Box::new(status)));
        }
    }

    /// Closes every stream (controller shutdown): agents reconnect with backoff.
    pub fn kick_all(&self, status: Status) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (_, c) in self.conns.lock().unwrap().drain() {
            let _ = c.tx.try_send(Err(Box::new(status.clone())));
        }
    }

    /// Whether the controller is shutting down (streams are being closed).
    pub fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a heartbeat.
    pub fn touch(&self, agent: &str) {
        if let Some(c) = self.conns.lock().unwrap().get_mut(agent) {
            c.last_seen = now();
        }
    }

    /// Whether the agent has a live stream, and its last heartbeat and address.
    pub fn status(&self, agent: &str) -> Option<(i64, String)> {
        self.conns
            .lock()
            .unwrap()
            .get(agent)
            .map(|c| (c.last_seen, c.remote.clone()))
    }

    /// The capabilities the live session of `agent` announced; `None` if it is not connected.
    pub fn capabilities(&self, agent: &str) -> Option<Vec<String>> {
        self.conns
            .lock()
            .unwrap()
            .get(agent)
            .map(|c| c.capabilities.clone())
    }

    /// Sends a message to a connected agent; false if it is not connected or its queue is full.
    pub fn send(&self, agent: &str, msg: ControllerMessage) -> bool {
        let tx = self.conns.lock().unwrap().get(agent).map(|c| c.tx.clone());
        tx.is_some_and(|tx| tx.try_send(Ok(Box::new(msg))).is_ok())
    }

    /// Ids of connected agents.
    pub fn connected(&self) -> Vec<String> {
        self.conns.lock().unwrap().keys().cloned().collect()
    }

    /// Number of connected agents.
    pub fn count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// `(agent, last_seen)` of every live stream, for batched persistence.
    pub fn last_seen(&self) -> Vec<(String, i64)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|(k, c)| (k.clone(), c.last_seen))
            .collect()
    }
}

// === impl Fleet ===

/// Everything the services share.
pub struct Fleet {
    /// Durable state.
    pub store: Store,
    /// The fleet CA.
    pub ca: FleetCa,
    /// Settings.
    pub opts: ServeOptions,
    /// Live streams.
    pub registry: Registry,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Serializes enrollment and re-binding decisions.
    pub enroll_lock: tokio::sync::Mutex<()>,
    /// Notified when something an inventory watcher cares about changes.
    pub changed: tokio::sync::Notify,
    /// Serializes read-modify-write of plan documents (engine ticks, step results, operator
    /// commands): without it a step result could be overwritten by a stale copy.
    pub plan_lock: std::sync::Mutex<()>,
    /// The inventory as queries read it (kept in step with the store's inventory documents).
    pub inventory: crate::inventory::Index,
    /// The plans the engine drives, held in memory between its wakes (under `plan_lock`).
    pub active_plans: crate::engine::ActivePlans,
    /// Remote commands (`certfleet exec`) in flight.
    pub execs: crate::remote_exec::Relay,
    /// Every agent record as of a generation of the agents tree (see [`Fleet::agent_directory`]).
    pub agent_cache: AgentCache,
}

/// The agent records decoded once per change of the agents tree: an inventory answer names the
/// agents that saw each certificate, and at 10,000 agents decoding all of them (checksums and
/// JSON) for every page was most of a page's time (50 pages for 100,000 certificates).
#[derive(Default)]
pub struct AgentCache {
    cached: std::sync::Mutex<Option<(u64, AgentDirectory)>>,
    /// Held while the records are decoded (see [`Fleet::agent_directory`]).
    building: std::sync::Mutex<()>,
    decodes: std::sync::atomic::AtomicU64,
}

impl AgentCache {
    /// The directory, if it was read at `generation` of the agents tree.
    fn current(&self, generation: u64) -> Option<AgentDirectory> {
        match &*self.cached.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((g, dir)) if *g == generation => Some(dir.clone()),
            _ => None,
        }
    }

    /// Whether the directory read at `generation` of the agents tree is cached.
    pub fn is_current(&self, generation: u64) -> bool {
        matches!(&*self.cached.lock().unwrap_or_else(|p| p.into_inner()), Some((g, _)) if *g == generation)
    }

    /// How many times the agent records were decoded so far.
    pub fn decodes(&self) -> u64 {
        self.decodes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Every agent record by id (see [`Fleet::agent_directory`]). Hashed with foldhash: a fleet-wide
/// listing looks up the agent of each of its 100,000 certificates' sightings, and SipHash was 5 %
/// of the controller's CPU for it (the ids are the controller's own, not an attacker's).
pub type AgentDirectory = Arc<HashMap<String, AgentRecord, foldhash::fast::RandomState>>;

/// A store error as a gRPC status (the detail goes to the log, not the client).
pub fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "state store failure");
    Status::internal(format!("controller state store failure: {e}"))
}

impl Fleet {
    /// Every agent record by id, decoded again only after the agents tree changed (hellos,
    /// heartbeat times every 30 s, enrollment, revocation).
    pub fn agent_directory(&self) -> Result<AgentDirectory, Status> {
        let cache = &self.agent_cache;
        // The generation before the read: a write racing the read makes the next call read
        // again (see `Store::generation`).
        if let Some(dir) = cache.current(self.store.generation("agents")) {
            return Ok(dir);
        }
        // One decode at a time: callers that miss together (a listing asks for four
        // fingerprint prefixes at once, each page of each asks) wait for it and take its
        // result. Four decodes of 10,000 records at once made a restarted controller's first
        // full listing take 0.76 s of CPU instead of 0.43.
        let _one = cache.building.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.store.generation("agents");
        if let Some(dir) = cache.current(generation) {
            return Ok(dir);
        }
        let dir: AgentDirectory = Arc::new(
            self.store
                .list::<AgentRecord>("agents")
                .map_err(internal)?
                .into_iter()
                .map(|a| (a.id.clone(), a))
                .collect(),
        );
        cache
            .decodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *cache.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, dir.clone()));
        Ok(dir)
    }

    /// The verified identity of the caller.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        self.caller_cert(req).map(|(id, _)| id)
    }

    /// The verified identity of the caller and the SHA-256 fingerprint of its certificate.
    pub fn caller_cert<T>(&self, req: &Request<T>) -> Result<(Identity, String), Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).ok_or_else(|| {
            self.metrics.rpc_error("unauthenticated");
            Status::unauthenticated(
                "a client certificate is required (only enrollment works without one)",
            )
        })?;
        let id = identity_of_der(leaf.as_ref()).map_err(|e| {
            self.metrics.rpc_error("unauthenticated");
            Status::unauthenticated(e.to_string())
        })?;
        Ok((id, certfleet_common::pki::sha256_hex(leaf.as_ref())))
    }

    /// The revoked-set entry of a certificate, if it was ever revoked or superseded.
    pub fn revoked_cert(&self, fingerprint: &str) -> Result<Option<RevokedCert>, Status> {
        self.store
            .get("revoked_certs", fingerprint)
            .map_err(internal)
    }

    /// Puts certificates into the revoked set, for good (not flushed: the caller audits, which
    /// flushes).
    pub fn revoke_certs(
        &self,
        identity: &str,
        fingerprints: &[String],
        reason: &str,
    ) -> Result<(), Status> {
        for fp in fingerprints.iter().filter(|f| !f.is_empty()) {
            let entry = RevokedCert {
                fingerprint: fp.clone(),
                identity: identity.to_owned(),
                revoked_at: now(),
                reason: reason.to_owned(),
            };
            self.store
                .put("revoked_certs", fp, &entry)
                .map_err(internal)?;
        }
        Ok(())
    }

    /// The calling agent's record; refuses operators, revoked or unknown agents, and any
    /// certificate other than the ones issued to this agent and not yet revoked or superseded.
    pub fn require_agent<T>(&self, req: &Request<T>) -> Result<AgentRecord, Status> {
        let (id, fp) = match self.caller_cert(req)? {
            (Identity::Agent(id), fp) => (id, fp),
            (other, _) => {
                self.metrics.rpc_error("permission_denied");
                return Err(Status::permission_denied(format!(
                    "{other} is not an agent"
                )));
            }
        };
        let mut rec: AgentRecord = self
            .store
            .get("agents", &id)
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated(format!("unknown agent {id}")))?;
        if rec.state == AgentState::Revoked {
            self.metrics.rpc_error("revoked");
            return Err(Status::permission_denied(format!(
                "agent {} ({id}) has been revoked",
                rec.name
            )));
        }
        self.check_agent_cert(&rec, &fp)?;
        if fp == rec.cert_fingerprint && !rec.superseded.is_empty() {
            // The agent uses its newest certificate: the older ones are done for good.
            let retired = std::mem::take(&mut rec.superseded);
            self.revoke_certs(&format!("agent:{id}"), &retired, "superseded")?;
            self.store.put("agents", &id, &rec).map_err(internal)?;
            self.store.flush().map_err(internal)?;
            tracing::info!(agent = %id, retired = retired.len(), "agent uses its newest certificate; older ones refused from now on");
        }
        Ok(rec)
    }

    /// Refuses a certificate `fp` presented for agent `rec` unless it is the agent's newest or
    /// a superseded one still accepted, and was never revoked.
    pub fn check_agent_cert(&self, rec: &AgentRecord, fp: &str) -> Result<(), Status> {
        if let Some(r) = self.revoked_cert(fp)? {
            self.metrics.rpc_error("revoked");
            return Err(Status::permission_denied(format!(
                "certificate {} of agent {} ({}) has been {} and is refused for good",
                &fp[..16.min(fp.len())],
                rec.name,
                rec.id,
                if r.reason == "superseded" {
                    "superseded by a newer one"
                } else {
                    "revoked"
                }
            )));
        }
        if fp != rec.cert_fingerprint && !rec.superseded.iter().any(|s| s == fp) {
            self.metrics.rpc_error("unknown_certificate");
            return Err(Status::permission_denied(format!(
                "certificate {} is not one issued to agent {} ({}); refused",
                &fp[..16.min(fp.len())],
                rec.name,
                rec.id
            )));
        }
        Ok(())
    }

    /// The calling operator; `mutate` requires the admin role.
    pub fn require_operator<T>(
        &self,
        req: &Request<T>,
        mutate: bool,
    ) -> Result<OperatorRecord, Status> {
        let (name, fp) = match self.caller_cert(req)? {
            (Identity::Operator(n), fp) => (n, fp),
            (other, _) => {
                self.metrics.rpc_error("permission_denied");
                return Err(Status::permission_denied(format!(
                    "{other} may not use the operator API (use an operator identity)"
                )));
            }
        };
        let op: OperatorRecord = self
            .store
            .get("operators", &name)
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated(format!("unknown operator {name}")))?;
        // Bound to the certificate: a revoked certificate stays refused after the name is
        // issued again, and only the certificate issued last answers to the name.
        if op.revoked || self.revoked_cert(&fp)?.is_some() {
            self.metrics.rpc_error("revoked");
            return Err(Status::permission_denied(format!(
                "operator {name} has been revoked (certificate {})",
                &fp[..16.min(fp.len())]
            )));
        }
        if fp != op.cert_fingerprint {
            self.metrics.rpc_error("unknown_certificate");
            return Err(Status::permission_denied(format!(
                "certificate {} is not the one issued to operator {name}; refused",
                &fp[..16.min(fp.len())]
            )));
        }
        if mutate && op.role != Role::Admin {
            self.metrics.rpc_error("permission_denied");
            return Err(Status::permission_denied(format!(
                "operator {name} has role {}; this needs admin",
                op.role.as_str()
            )));
        }
        Ok(op)
    }

    /// Records a mutation in the audit log and makes it durable.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Status> {
        self.audit_unflushed(actor, action, target, detail)?;
        self.store.flush().map_err(internal)
    }

    /// Appends an audit entry without flushing: for callers that flush it together with the
    /// transition it records (the engine, once per pass; enrollment, with a shared flush).
    pub fn audit_unflushed(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Status> {
        self.store
            .append("audit", |seq| AuditEntry {
                seq,
                at: now(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                detail: detail.to_owned(),
            })
            .map_err(internal)?;
        tracing::info!(actor, action, target, detail, "audit");
        Ok(())
    }

    /// Writes a plan (its header and the steps that changed since it was loaded), makes it
    /// durable, and wakes the engine and watchers.
    ///
    /// Idempotent: saving the same plan again writes the same documents.
    pub fn save_plan(&self, plan: &crate::plan::Plan) -> Result<(), Status> {
        // The engine reads the plan again from the store on its next wake.
        self.active_plans.forget(&plan.id);
        crate::plan::storage::save(&self.store, plan).map_err(internal)?;
        self.store.flush().map_err(internal)?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Finds an agent by id or name.
    pub fn find_agent(&self, id_or_name: &str) -> Result<AgentRecord, Status> {
        if let Some(a) = self
            .store
            .get::<AgentRecord>("agents", id_or_name)
            .map_err(internal)?
        {
            return Ok(a);
        }
        if let Some(id) = self
            .store
            .get::<String>("agent_names", id_or_name)
            .map_err(internal)?
            && let Some(a) = self
                .store
                .get::<AgentRecord>("agents", &id)
                .map_err(internal)?
            && a.name == id_or_name
        {
            return Ok(a);
        }
        self.agent_directory()?
            .values()
            .find(|a| a.name == id_or_name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no agent with id or name {id_or_name:?}")))
    }

    /// Persists the registry's heartbeat times that changed since `persisted` (what the last
    /// call wrote, updated here) to `agent_seen`, batched and not flushed: losing a few seconds
    /// of `last_seen` in a crash is harmless. Blocking (a write per connected agent): not for
    /// the runtime's threads.
    pub fn persist_last_seen(&self, persisted: &mut HashMap<String, i64>) {
        for (id, seen) in self.registry.last_seen() {
            if persisted.get(&id) == Some(&seen) {
                continue;
            }
            match self.store.put("agent_seen", &id, &seen) {
                Ok(()) => {
                    persisted.insert(id, seen);
                }
                // The store watchdog reports a failing store; the next tick tries again.
                Err(e) => {
                    tracing::warn!(error = %e, "persisting heartbeat times");
                    return;
                }
            }
        }
    }

    /// Every agent's persisted heartbeat time by id (see [`Fleet::persist_last_seen`]); an
    /// agent record's own `last_seen` (its first hello, or a store older than `agent_seen`) may
    /// be later, so a reader takes the larger of the two.
    pub fn persisted_seen(&self) -> Result<HashMap<String, i64>, Status> {
        Ok(self
            .store
            .scan_prefix::<i64>("agent_seen", "")
            .map_err(internal)?
            .into_iter()
            .collect())
    }

    /// The last time an agent was heard from: its live heartbeat while connected, else the
    /// later of its persisted one (`agent_seen`, 0 if none) and its record's own `last_seen`
    /// (its first hello, or a store older than `agent_seen`).
    pub fn last_seen(live: Option<i64>, persisted: i64, record: &AgentRecord) -> i64 {
        live.unwrap_or(persisted).max(record.last_seen)
    }

    /// The persisted heartbeat time of one agent (0 if none was persisted).
    pub fn persisted_seen_of(&self, id: &str) -> Result<i64, Status> {
        Ok(self
            .store
            .get::<i64>("agent_seen", id)
            .map_err(internal)?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeat times are persisted in `agent_seen`, only those that changed, without
    /// rewriting an agent record or making the agent directory stale; a listing reports the
    /// persisted time of an agent that is gone (issue 10: 10,000 records rewritten every 30 s
    /// made the next listing decode them all again).
    #[test]
    fn heartbeat_times_are_persisted_apart_from_the_agent_records() {
        let (_dir, fleet) = crate::server::test_fleet();
        let record: AgentRecord = serde_json::from_value(serde_json::json!({
            "id": "a1", "name": "vc1", "hostname": "h", "platforms": [], "version": "1",
            "state": "active", "enrolled_at": 1, "last_seen": 50, "cert_not_after": 0,
            "cert_fingerprint": "", "key_id": "", "labels": {}, "cas": [], "renewable": [],
            "superseded": [],
        }))
        .unwrap();
        fleet.store.put("agents", "a1", &record).unwrap();
        fleet.agent_directory().unwrap();
        let decodes = fleet.agent_cache.decodes();
        let agents = fleet.store.generation("agents");

        let (tx, _rx) = mpsc::channel(1);
        let session = fleet
            .registry
            .connect("a1", tx, "127.0.0.1:1".into(), vec![]);
        let live = fleet.registry.status("a1").unwrap().0;
        let mut persisted = HashMap::new();
        fleet.persist_last_seen(&mut persisted);
        assert_eq!(fleet.persisted_seen().unwrap().get("a1"), Some(&live));
        assert_eq!(
            fleet.store.generation("agents"),
            agents,
            "no agent record rewritten"
        );
        fleet.agent_directory().unwrap();
        assert_eq!(
            fleet.agent_cache.decodes(),
            decodes,
            "the directory is still current"
        );
        // Unchanged times are not written again.
        let seen_writes = fleet.store.generation("agent_seen");
        fleet.persist_last_seen(&mut persisted);
        assert_eq!(fleet.store.generation("agent_seen"), seen_writes);

        // Connected: the live time. Gone: the persisted one, or the record's if it is later.
        let info = |a: &AgentRecord, persisted| crate::operator::agent_info(&fleet, a, persisted);
        let stored = fleet.persisted_seen_of("a1").unwrap();
        assert!(info(&record, stored).connected);
        assert_eq!(info(&record, stored).last_seen, live);
        fleet.registry.disconnect("a1", session);
        assert!(!info(&record, stored).connected);
        assert_eq!(info(&record, stored).last_seen, live);
        let newer = AgentRecord {
            last_seen: live + 10,
            ..record.clone()
        };
        assert_eq!(info(&newer, stored).last_seen, live + 10);
        // An agent never persisted (a store older than `agent_seen`): the record's own time.
        assert_eq!(fleet.persisted_seen_of("a2").unwrap(), 0);
        assert_eq!(info(&record, 0).last_seen, 50);
    }
}
