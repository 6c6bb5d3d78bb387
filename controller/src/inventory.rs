//! The fleet's certificate inventory, as agents report it.
//!
//! Each agent's latest view is one document (`inventory/<agent id>`): a full report replaces
//! it, a delta patches it. Inventory is rebuildable from a rescan, so it is written without a
//! flush of its own. Queries merge the per-agent views: a certificate seen by several agents
//! (a CA on every host) is one item with several sightings.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use certfleet_common::model::{CertRecord, HealthFact, Problem, now};
use certfleet_common::proto as pb;
use certfleet_common::roles;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::fleet::{AgentRecord, Fleet, internal};

/// A certificate as stored (the DER travels base64 so chains can be rebuilt).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredCert {
    #[serde(flatten)]
    record: CertRecord,
    der_b64: String,
}

/// One agent's latest inventory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentInventory {
    scanned_at: i64,
    received_at: i64,
    certs: BTreeMap<String, StoredCert>,
    problems: Vec<Problem>,
    health: Vec<HealthFact>,
}

impl AgentInventory {
    /// Certificate records as stored (no DER: for filters that look at roles and dates).
    pub fn records(&self) -> impl Iterator<Item = &CertRecord> + '_ {
        self.certs.values().map(|s| &s.record)
    }

    /// Certificates with their DER restored.
    pub fn certificates(&self) -> impl Iterator<Item = CertRecord> + '_ {
        self.certs.values().map(|s| {
            let mut r = s.record.clone();
            r.der = STANDARD.decode(&s.der_b64).unwrap_or_default();
            r
        })
    }
}

/// Applies a report from `agent`, refusing it (`ResourceExhausted`, nothing written) when the
/// agent would then hold more than `max_certificates` certificates.
pub fn apply(
    fleet: &Fleet,
    agent: &str,
    report: pb::InventoryReport,
    max_certificates: usize,
) -> Result<(), Status> {
    let mut inv: AgentInventory = if report.full {
        AgentInventory::default()
    } else {
        fleet
            .store
            .get("inventory", agent)
            .map_err(internal)?
            .unwrap_or_default()
    };
    for fp in &report.removed {
        inv.certs.remove(fp);
    }
    let n = report.certificates.len();
    for c in report.certificates {
        let der_b64 = STANDARD.encode(&c.der);
        let record: CertRecord = c.into();
        // Never trust the reported fingerprint blindly: recompute it from the DER.
        let fp = if record.der.is_empty() {
            record.fingerprint_sha256.clone()
        } else {
            certfleet_common::pki::sha256_hex(&record.der)
        };
        let mut record = record;
        record.fingerprint_sha256 = fp.clone();
        inv.certs.insert(fp, StoredCert { record, der_b64 });
    }
    if inv.certs.len() > max_certificates {
        return Err(Status::resource_exhausted(format!(
            "inventory report refused: agent {agent} would hold {} certificates, more than the limit of {max_certificates}",
            inv.certs.len()
        )));
    }
    inv.problems = report.problems.into_iter().map(Into::into).collect();
    inv.health = report.health.into_iter().map(Into::into).collect();
    inv.scanned_at = report.scanned_at;
    inv.received_at = now();
    fleet
        .store
        .put("inventory", agent, &inv)
        .map_err(internal)?;
    tracing::info!(
        agent,
        full = report.full,
        certificates = n,
        total = inv.certs.len(),
        "inventory received"
    );
    fleet.changed.notify_waiters();
    Ok(())
}

/// Records on an agent's stored inventory that its last report was refused (what it already
/// had stays), so `certfleet inventory` shows the problem.
pub fn note_refused(fleet: &Fleet, agent: &str, message: &str) -> Result<(), Status> {
    let mut inv: AgentInventory = fleet
        .store
        .get("inventory", agent)
        .map_err(internal)?
        .unwrap_or_default();
    inv.problems.retain(|p| p.subject != REFUSED_SUBJECT);
    inv.problems.push(Problem {
        subject: REFUSED_SUBJECT.into(),
        message: message.to_owned(),
        severity: "error".into(),
        collector: "controller".into(),
    });
    inv.received_at = now();
    fleet
        .store
        .put("inventory", agent, &inv)
        .map_err(internal)?;
    fleet.changed.notify_waiters();
    Ok(())
}

/// Subject of the problem recorded when a report is refused.
pub const REFUSED_SUBJECT: &str = "inventory report";

/// Removes an agent's inventory (revocation).
pub fn forget(fleet: &Fleet, agent: &str) -> Result<(), Status> {
    fleet.store.remove("inventory", agent).map_err(internal)
}

/// Every agent with its inventory.
pub fn all(fleet: &Fleet) -> Result<Vec<(AgentRecord, AgentInventory)>, Status> {
    let agents: Vec<AgentRecord> = fleet.store.list("agents").map_err(internal)?;
    let mut out = Vec::new();
    for a in agents {
        let inv: AgentInventory = fleet
            .store
            .get("inventory", &a.id)
            .map_err(internal)?
            .unwrap_or_default();
        out.push((a, inv));
    }
    Ok(out)
}

fn platform_of(role: &str) -> &'static str {
    roles::lookup(role).platform
}

/// Answers an inventory query.
pub fn query(fleet: &Fleet, q: &pb::InventoryQuery) -> Result<pb::InventoryList, Status> {
    let now = now();
    let mut items: BTreeMap<String, pb::InventoryItem> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut health = Vec::new();
    for (agent, inv) in all(fleet)? {
        if !q.agent.is_empty() && q.agent != agent.id && q.agent != agent.name {
            continue;
        }
        for mut p in inv.problems.iter().cloned() {
            p.subject = format!("{}: {}", agent.name, p.subject);
            problems.push((&p).into());
        }
        for mut h in inv.health.iter().cloned() {
            h.subject = format!("{}: {}", agent.name, h.subject);
            health.push((&h).into());
        }
        for cert in inv.certificates() {
            let item = items
                .entry(cert.fingerprint_sha256.clone())
                .or_insert_with(|| pb::InventoryItem {
                    certificate: Some((&cert).into()),
                    seen: Vec::new(),
                });
            for loc in &cert.locations {
                item.seen.push(pb::SeenAt {
                    agent_id: agent.id.clone(),
                    agent_name: agent.name.clone(),
                    hostname: agent.hostname.clone(),
                    platforms: agent.platforms.clone(),
                    location: Some(loc.into()),
                });
            }
            // Prefer the most specific role any agent gave it.
            if let Some(c) = item.certificate.as_mut()
                && (c.role.is_empty() || (c.role.starts_with("file.") && !cert.role.is_empty()))
            {
                c.role = cert.role.clone();
            }
        }
    }
    let issuer_filter = q.issued_by.to_lowercase();
    let issuer_ski = if issuer_filter.is_empty() {
        None
    } else {
        items
            .get(&issuer_filter)
            .and_then(|i| i.certificate.as_ref())
            .map(|c| c.subject_key_id.clone())
    };
    let items = items
        .into_values()
        .filter(|i| {
            let c = i.certificate.as_ref().expect("set");
            (q.fingerprint.is_empty()
                || c.fingerprint_sha256
                    .starts_with(&q.fingerprint.to_lowercase()))
                && (q.role.is_empty()
                    || c.role == q.role
                    || c.role.starts_with(&format!("{}.", q.role)))
                && (q.platform.is_empty() || platform_of(&c.role) == q.platform)
                && (q.expiring_within_secs == 0
                    || c.not_after - now <= q.expiring_within_secs as i64)
                && match &issuer_ski {
                    None if issuer_filter.is_empty() => true,
                    None => false,
                    Some(ski) => {
                        !ski.is_empty()
                            && &c.authority_key_id == ski
                            && c.fingerprint_sha256 != issuer_filter
                    }
                }
        })
        .collect();
    Ok(pb::InventoryList {
        items,
        problems,
        health,
    })
}
