//! The operator API behind the `certfleet` CLI. Reads need any operator; mutations need an
//! admin; every mutation is audited before it answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::identity::{Identity, valid_name};
use certfleet_common::model::now;
use certfleet_common::proto as pb;
use certfleet_common::proto::operator_server::Operator;
use tonic::{Request, Response, Status};

use crate::fleet::{
    AgentRecord, AgentState, AuditEntry, Fleet, OperatorRecord, Role, TokenRecord, TokenState,
    internal,
};

/// Lifetime of operator certificates issued through the API.
pub const OPERATOR_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The Operator gRPC service.
pub struct OperatorService {
    fleet: Arc<Fleet>,
}

impl OperatorService {
    /// Wraps the shared state.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        OperatorService { fleet }
    }
}

fn labels(l: &BTreeMap<String, String>) -> Vec<pb::Label> {
    l.iter()
        .map(|(k, v)| pb::Label {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// The wire view of an agent; `persisted` is its heartbeat time in `agent_seen` (0 if none).
pub fn agent_info(fleet: &Fleet, a: &AgentRecord, persisted: i64) -> pb::AgentInfo {
    let live = fleet.registry.status(&a.id);
    pb::AgentInfo {
        id: a.id.clone(),
        name: a.name.clone(),
        hostname: a.hostname.clone(),
        platforms: a.platforms.clone(),
        version: a.version.clone(),
        connected: live.is_some(),
        last_seen: Fleet::last_seen(live.as_ref().map(|l| l.0), persisted, a),
        cert_not_after: a.cert_not_after,
        state: a.state.as_str().to_owned(),
        enrolled_at: a.enrolled_at,
        labels: labels(&a.labels),
        cert_fingerprint: a.cert_fingerprint.clone(),
        remote_addr: live.map(|l| l.1).unwrap_or_default(),
    }
}

fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    let state = match t.state {
        TokenState::Active if t.expires_at <= now() => "expired",
        TokenState::Active => "active",
        TokenState::Used => "used",
        TokenState::Revoked => "revoked",
    };
    pb::TokenInfo {
        id: t.id.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        created_by: t.created_by.clone(),
        labels: labels(&t.labels),
        state: state.into(),
        used_by: t.used_by.clone().unwrap_or_default(),
        uses: t.uses,
        max_uses: t.cap(),
    }
}

/// Bytes of a backup bundle per streamed message (well under the 4 MiB message limit).
const BACKUP_CHUNK: usize = 1 << 20;

type BackupStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

type PlanStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::PlanInfo, Status>> + Send>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    type WatchPlanStream = PlanStream;
    type ExecStream = crate::remote_exec::ExecStream;
    type BackupStream = BackupStream;

    /// A consistent snapshot of the store and the data directory's files, fleet CA key
    /// included (admins only: whoever holds the bundle can sign for the fleet). Reads only;
    /// audited with the snapshot's digest before the first byte is sent. The caller encrypts
    /// it (`certfleet backup`): the passphrase never reaches the controller.
    async fn backup(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let actor = format!("operator:{}", op.name);
        if !self.fleet.opts.backup_over_api {
            self.fleet.audit(
                &actor,
                "store.backup_refused",
                "store",
                "backups over the API are off (serve --no-backup-over-api)",
            )?;
            return Err(Status::permission_denied(
                "this controller refuses backups over the API (started with \
                 `certfleet serve --no-backup-over-api`): on the controller host, stop it and \
                 copy its data directory, or restart it without the flag",
            ));
        }
        let store = self.fleet.store.clone();
        let by = actor.clone();
        let (bundle, snap) = tokio::task::spawn_blocking(move || {
            let data_dir = store
                .dir()
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            crate::store::backup::take(&store, &data_dir, &by)
        })
        .await
        .map_err(|e| Status::internal(format!("backup task: {e}")))?
        .map_err(|e| Status::internal(format!("taking the backup: {e}")))?;
        let bytes = bundle.encode();
        let state = &bundle.manifest.members[0];
        self.fleet.audit(
            &actor,
            "store.backup",
            "store",
            &format!(
                "{} documents (state sha256 {}), {} files, {} bytes, writes paused {} ms",
                snap.documents,
                &state.sha256[..16],
                bundle.manifest.members.len() - 1,
                bytes.len(),
                snap.pause.as_millis()
            ),
        )?;
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(BACKUP_CHUNK)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn exec(
        &self,
        request: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        crate::remote_exec::exec(&self.fleet, request).await
    }

    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::PlanInfo>, Status> {
        let req_dry = request.get_ref().dry_run;
        // A dry run changes nothing on hosts: viewers may ask for one.
        let op = self.fleet.require_operator(&request, !req_dry)?;
        let r = request.into_inner();
        let plan = crate::policy::create_plan(
            &self.fleet,
            crate::policy::PlanRequest {
                recipe: r.recipe,
                agents: r.agents,
                roles: r.roles,
                expiring_within_secs: r.expiring_within_secs,
                policy: r.policy.unwrap_or_default().into(),
                dry_run: r.dry_run,
                params: r.params.into_iter().map(|l| (l.key, l.value)).collect(),
                created_by: format!("operator:{}", op.name),
                origin: "operator".into(),
                start: false,
                note: String::new(),
            },
        )?;
        Ok(Response::new(plan.info()))
    }

    async fn list_plans(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::PlanList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let mut plans = crate::engine::plans(&self.fleet)?;
        plans.sort_by_key(|p| p.created_at);
        Ok(Response::new(pb::PlanList {
            plans: plans.iter().map(|p| p.info()).collect(),
        }))
    }

    async fn get_plan(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::PlanInfo>, Status> {
        self.fleet.require_operator(&request, false)?;
        Ok(Response::new(
            crate::engine::load(&self.fleet, &request.into_inner().id)?.info(),
        ))
    }

    async fn control_plan(
        &self,
        request: Request<pb::ControlPlanRequest>,
    ) -> Result<Response<pb::PlanInfo>, Status> {
        use crate::plan::{PlanState as S, StepState};
        let op = self.fleet.require_operator(&request, true)?;
        let r = request.into_inner();
        let _guard = self
            .fleet
            .plan_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut plan = crate::engine::load(&self.fleet, &r.id)?;
        let bad = |plan: &crate::plan::Plan| {
            Status::failed_precondition(format!(
                "plan {} is {}; cannot {}",
                plan.id,
                plan.state.as_str(),
                r.action
            ))
        };
        match r.action.as_str() {
            "approve" => match plan.state {
                S::AwaitingApproval => plan.state = S::Approved,
                S::WaitingCanary => {
                    plan.canary_released = true;
                    plan.state = S::Running;
                    plan.message = format!("canary approved by {}", op.name);
                }
                _ => return Err(bad(&plan)),
            },
            "run" => match plan.state {
                S::Approved => plan.state = S::Running,
                S::AwaitingApproval => {
                    return Err(Status::failed_precondition(format!(
                        "plan {} needs `certfleet plan approve {}` first",
                        plan.id, plan.id
                    )));
                }
                _ => return Err(bad(&plan)),
            },
            "pause" => match plan.state {
                S::Running | S::WaitingCanary => {
                    plan.state = S::Paused;
                    plan.message = format!("paused by {}", op.name);
                }
                _ => return Err(bad(&plan)),
            },
            "resume" => match plan.state {
                S::Paused => {
                    plan.state = S::Running;
                    plan.message.clear();
                }
                _ => return Err(bad(&plan)),
            },
            "abort" => {
                if plan.state.is_final() {
                    return Err(bad(&plan));
                }
                plan.state = S::Aborted;
                plan.message = format!("aborted by {}", op.name);
                for s in plan
                    .steps
                    .iter_mut()
                    .filter(|s| s.state == StepState::Pending)
                {
                    s.state = StepState::Skipped;
                }
            }
            "rollback" => {
                crate::engine::rollback(&mut plan)?;
            }
            "supply" => {
                if !matches!(plan.state, S::Running | S::Paused | S::WaitingCanary) {
                    return Err(bad(&plan));
                }
                crate::engine::supply(&mut plan, &r.step_id, &r.payload)?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown plan action {other:?}"
                )));
            }
        }
        crate::engine::save(&self.fleet, &plan)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            &format!("plan.{}", r.action),
            &format!("plan:{}", plan.id),
            plan.state.as_str(),
        )?;
        Ok(Response::new(plan.info()))
    }

    async fn watch_plan(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<PlanStream>, Status> {
        self.fleet.require_operator(&request, false)?;
        let id = request.into_inner().id;
        crate::engine::load(&self.fleet, &id)?;
        let fleet = self.fleet.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let notified = fleet.changed.notified();
                let plan = match crate::engine::load(&fleet, &id) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let info = plan.info();
                let digest = format!("{info:?}");
                if digest != last {
                    last = digest;
                    if tx.send(Ok(info)).await.is_err() {
                        return;
                    }
                }
                // Shutting down: end the stream (the watcher reconnects) rather than hold the
                // graceful shutdown open.
                if plan.state.is_final() || fleet.registry.closing() {
                    return;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn set_policy(
        &self,
        request: Request<pb::PolicyInfo>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let p: crate::policy::RolePolicy = request.into_inner().into();
        if p.role.is_empty() || p.renew_within_secs == 0 {
            return Err(Status::invalid_argument(
                "policy needs a role and --renew-within",
            ));
        }
        if !p.window.is_empty() {
            p.window
                .parse::<croner::Cron>()
                .map_err(|e| Status::invalid_argument(format!("window {:?}: {e}", p.window)))?;
        }
        if certfleet_common::roles::lookup(&p.role).recipe.is_empty() {
            return Err(Status::invalid_argument(format!(
                "role {} has no built-in recipe to renew it",
                p.role
            )));
        }
        self.fleet
            .store
            .put("policies", &p.role, &p)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "policy.set",
            &format!("role:{}", p.role),
            &format!(
                "renew_within={}s window={:?} auto_approve={}",
                p.renew_within_secs, p.window, p.auto_approve
            ),
        )?;
        Ok(Response::new((&p).into()))
    }

    async fn list_policies(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::PolicyList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let list: Vec<crate::policy::RolePolicy> =
            self.fleet.store.list("policies").map_err(internal)?;
        Ok(Response::new(pb::PolicyList {
            policies: list.iter().map(Into::into).collect(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::OperatorInfo>, Status> {
        let op = self.fleet.require_operator(&request, false)?;
        Ok(Response::new(pb::OperatorInfo {
            name: op.name,
            role: op.role.as_str().into(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ControllerStatus>, Status> {
        self.fleet.require_operator(&request, false)?;
        let fleet = &self.fleet;
        let (code, message) = crate::http::store_health(fleet);
        Ok(Response::new(pb::ControllerStatus {
            version: crate::cli::VERSION.to_owned(),
            controller_cert_not_after: fleet.metrics.controller_cert_not_after(),
            ca_not_after: crate::self_cert::ca_not_after(fleet.ca.cert_pem()).unwrap_or(0),
            ca_fingerprint: fleet.ca.fingerprint().to_owned(),
            store_healthy: code == axum::http::StatusCode::OK,
            store_message: message.trim_end().to_owned(),
            engine_last_pass: fleet.metrics.last_engine_beat(),
            now: now(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let req = request.into_inner();
        if req.ttl_secs == 0 {
            return Err(Status::invalid_argument("token ttl must be more than zero"));
        }
        let labels: BTreeMap<String, String> =
            req.labels.into_iter().map(|l| (l.key, l.value)).collect();
        let (text, rec) = crate::enroll::new_token(
            &self.fleet,
            req.ttl_secs,
            req.max_uses.max(1),
            labels,
            &op.name,
        );
        self.fleet
            .store
            .put("tokens", &rec.hash, &rec)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "token.create",
            &format!("token:{}", rec.id),
            &format!(
                "expires_at={} max_uses={}",
                certfleet_common::model::format_time(rec.expires_at),
                rec.cap()
            ),
        )?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: text,
            id: rec.id,
            expires_at: rec.expires_at,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::TokenList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let mut tokens: Vec<TokenRecord> = self.fleet.store.list("tokens").map_err(internal)?;
        tokens.sort_by_key(|t| t.created_at);
        Ok(Response::new(pb::TokenList {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let id = request.into_inner().id;
        let tokens: Vec<TokenRecord> = self.fleet.store.list("tokens").map_err(internal)?;
        let mut t = tokens
            .into_iter()
            .find(|t| t.id == id || (id.len() >= 6 && t.id.starts_with(&id)))
            .ok_or_else(|| Status::not_found(format!("no token with id {id:?}")))?;
        if t.state != TokenState::Active {
            return Err(Status::failed_precondition(format!(
                "token {} is already {:?}",
                t.id, t.state
            )));
        }
        t.state = TokenState::Revoked;
        self.fleet
            .store
            .put("tokens", &t.hash, &t)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "token.revoke",
            &format!("token:{}", t.id),
            "",
        )?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_agents(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::AgentList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let dir = self.fleet.agent_directory()?;
        let seen = self.fleet.persisted_seen()?;
        let mut agents: Vec<&AgentRecord> = dir.values().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::AgentList {
            agents: agents
                .iter()
                .map(|a| agent_info(&self.fleet, a, seen.get(&a.id).copied().unwrap_or(0)))
                .collect(),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        self.fleet.require_operator(&request, false)?;
        let a = self.fleet.find_agent(&request.into_inner().id)?;
        let seen = self.fleet.persisted_seen_of(&a.id)?;
        Ok(Response::new(agent_info(&self.fleet, &a, seen)))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let mut a = self.fleet.find_agent(&request.into_inner().id)?;
        if a.state == AgentState::Revoked {
            return Err(Status::failed_precondition(format!(
                "agent {} is already revoked",
                a.name
            )));
        }
        a.state = AgentState::Revoked;
        a.pending_csr = None;
        a.approved_cert = None;
        // Every certificate it ever held stays refused, whatever is enrolled under its name.
        self.fleet
            .revoke_certs(&format!("agent:{}", a.id), &a.fingerprints(), "revoked")?;
        self.fleet
            .store
            .put("agents", &a.id, &a)
            .map_err(internal)?;
        crate::inventory::forget(&self.fleet, &a.id)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "agent.revoke",
            &format!("agent:{}", a.id),
            &format!("name={}", a.name),
        )?;
        // Durable first, then close the live stream at once.
        self.fleet.registry.kick(
            &a.id,
            Status::permission_denied(format!("agent {} ({}) has been revoked", a.name, a.id)),
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn approve_agent(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let _guard = self.fleet.enroll_lock.lock().await;
        let mut a = self.fleet.find_agent(&request.into_inner().id)?;
        if a.state != AgentState::PendingApproval {
            return Err(Status::failed_precondition(format!(
                "agent {} is {}, not waiting for approval",
                a.name,
                a.state.as_str()
            )));
        }
        crate::enroll::approve(&self.fleet, &mut a)?;
        self.fleet
            .store
            .put("agents", &a.id, &a)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "agent.approve",
            &format!("agent:{}", a.id),
            &format!("name={}", a.name),
        )?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn issue_operator(
        &self,
        request: Request<pb::IssueOperatorRequest>,
    ) -> Result<Response<pb::IssueOperatorResponse>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let req = request.into_inner();
        if !valid_name(&req.name) {
            return Err(Status::invalid_argument(format!(
                "operator name {:?}: use letters, digits, '.', '-', '_'",
                req.name
            )));
        }
        let role = Role::parse(&req.role).ok_or_else(|| {
            Status::invalid_argument(format!("role {:?}: admin or viewer", req.role))
        })?;
        let existing = self
            .fleet
            .store
            .get::<OperatorRecord>("operators", &req.name)
            .map_err(internal)?;
        if existing.is_some_and(|e| !e.revoked) {
            return Err(Status::already_exists(format!(
                "operator {} exists (revoke it first)",
                req.name
            )));
        }
        let pem = self
            .fleet
            .ca
            .sign_client_csr(
                &req.csr_pem,
                &Identity::Operator(req.name.clone()),
                &req.name,
                OPERATOR_CERT_TTL,
            )
            .map_err(|e| Status::invalid_argument(format!("certificate signing request: {e}")))?;
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).expect("just issued");
        let rec = OperatorRecord {
            name: req.name.clone(),
            role,
            revoked: false,
            issued_at: now(),
            issued_by: op.name.clone(),
            cert_fingerprint: certfleet_common::pki::sha256_hex(&der),
        };
        self.fleet
            .store
            .put("operators", &req.name, &rec)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "operator.issue",
            &format!("operator:{}", req.name),
            &format!("role={}", role.as_str()),
        )?;
        Ok(Response::new(pb::IssueOperatorResponse {
            certificate_pem: pem,
            ca_pem: self.fleet.ca.cert_pem().to_owned(),
        }))
    }

    async fn revoke_operator(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let name = request.into_inner().id;
        let mut rec: OperatorRecord = self
            .fleet
            .store
            .get("operators", &name)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no operator named {name:?}")))?;
        if rec.revoked {
            return Err(Status::failed_precondition(format!(
                "operator {name} is already revoked"
            )));
        }
        rec.revoked = true;
        // The certificate stays refused after the name is issued again.
        self.fleet.revoke_certs(
            &format!("operator:{name}"),
            std::slice::from_ref(&rec.cert_fingerprint),
            "revoked",
        )?;
        self.fleet
            .store
            .put("operators", &name, &rec)
            .map_err(internal)?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "operator.revoke",
            &format!("operator:{name}"),
            "",
        )?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_operators(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::OperatorList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let ops: Vec<OperatorRecord> = self.fleet.store.list("operators").map_err(internal)?;
        Ok(Response::new(pb::OperatorList {
            operators: ops
                .into_iter()
                .map(|o| pb::OperatorEntry {
                    name: o.name,
                    role: o.role.as_str().into(),
                    state: if o.revoked { "revoked" } else { "active" }.into(),
                    issued_at: o.issued_at,
                    issued_by: o.issued_by,
                })
                .collect(),
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditList>, Status> {
        self.fleet.require_operator(&request, false)?;
        let limit = match request.into_inner().limit {
            0 => 10_000,
            n => n as usize,
        };
        let entries: Vec<AuditEntry> = self.fleet.store.tail("audit", limit).map_err(internal)?;
        Ok(Response::new(pb::AuditList {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    seq: e.seq,
                    at: e.at,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                })
                .collect(),
        }))
    }

    async fn compact_store(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::CompactStoreResponse>, Status> {
        let op = self.fleet.require_operator(&request, true)?;
        let store = self.fleet.store.clone();
        let report = tokio::task::spawn_blocking(move || store.compact())
            .await
            .map_err(|e| Status::internal(format!("compaction task: {e}")))?
            .map_err(|e| match e {
                crate::store::StoreError::CompactionBusy { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                e => Status::internal(e.to_string()),
            })?;
        self.fleet.audit(
            &format!("operator:{}", op.name),
            "store.compact",
            "store",
            &format!("{} -> {} bytes", report.before_bytes, report.after_bytes),
        )?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::CompactStoreResponse {
            before_bytes: report.before_bytes,
            after_bytes: report.after_bytes,
            live_bytes: report.live_bytes,
            documents: report.documents,
            recopied: report.recopied,
            duration_ms: ms(report.duration),
            pause_ms: ms(report.pause),
        }))
    }

    async fn inventory(
        &self,
        request: Request<pb::InventoryQuery>,
    ) -> Result<Response<pb::InventoryList>, Status> {
        self.fleet.require_operator(&request, false)?;
        // Off the async threads: a large answer must not stall heartbeats or /healthz.
        let fleet = self.fleet.clone();
        let q = request.into_inner();
        let list = tokio::task::spawn_blocking(move || crate::inventory::query(&fleet, &q))
            .await
            .map_err(|e| Status::internal(format!("inventory query: {e}")))??;
        Ok(Response::new(list))
    }

    async fn rescan(
        &self,
        request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::RescanResponse>, Status> {
        let op = self.fleet.require_operator(&request, false)?;
        let target = request.into_inner().id;
        let ids = if target.is_empty() {
            self.fleet.registry.connected()
        } else {
            vec![self.fleet.find_agent(&target)?.id]
        };
        let mut n = 0;
        for id in &ids {
            let msg = pb::ControllerMessage {
                kind: Some(pb::controller_message::Kind::Scan(pb::ScanRequest {
                    reason: format!("requested by {}", op.name),
                })),
            };
            if self.fleet.registry.send(id, msg) {
                n += 1;
            }
        }
        if !target.is_empty() && n == 0 {
            return Err(Status::unavailable(format!(
                "agent {target} is not connected"
            )));
        }
        Ok(Response::new(pb::RescanResponse { agents: n }))
    }
}
