//! The fleet's certificate inventory, as agents report it.
//!
//! Each agent's latest view is one document (`inventory/<agent id>`): a full report replaces
//! it, a delta patches it. Inventory is rebuildable from a rescan, so it is written without a
//! flush of its own. Queries merge the per-agent views: a certificate seen by several agents
//! (a CA on every host) is one item with several sightings.
//!
//! Queries are answered from an in-memory [`Index`] kept next to the store (see below), off
//! the async threads, in pages, with DER only when asked for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use certfleet_common::model::{CertRecord, HealthFact, Pin, Problem, now};
use certfleet_common::proto as pb;
use certfleet_common::roles;
use certfleet_proto::wire;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::fleet::{AgentRecord, Fleet, internal};

pub mod owner;

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
    /// Who put a certificate in place, when a report showed it replacing another one
    /// (fingerprint → `certfleet` / `unknown-renewer`, see [`owner`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    owners: BTreeMap<String, String>,
    /// What pins its certificates (see `crate::pins`).
    #[serde(default)]
    pins: Vec<Pin>,
}

impl AgentInventory {
    /// The pins the agent reported with its last scan.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

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
    let prior = fleet.inventory.prior(fleet, agent)?;
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
    inv.pins = report.pins.into_iter().map(Into::into).collect();
    inv.scanned_at = report.scanned_at;
    inv.received_at = now();
    for (place, old, new, owner) in owner::note_replacements(fleet, agent, &prior, &mut inv)? {
        tracing::warn!(agent, place, old, new, owner, "certificate replaced");
    }
    fleet
        .store
        .put("inventory", agent, &inv)
        .map_err(internal)?;
    fleet
        .inventory
        .update(fleet, |st| st.set_agent(agent, &inv))?;
    tracing::info!(
        agent,
        full = report.full,
        certificates = n,
        total = inv.certs.len(),
        "inventory received"
    );
    fleet.changed.notify_waiters();
    crate::pins::on_report(fleet, agent, &inv.pins, inv.scanned_at)?;
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
    fleet
        .inventory
        .update(fleet, |st| st.set_agent(agent, &inv))?;
    fleet.changed.notify_waiters();
    Ok(())
}

/// Subject of the problem recorded when a report is refused.
pub const REFUSED_SUBJECT: &str = "inventory report";

/// Removes an agent's inventory (revocation).
pub fn forget(fleet: &Fleet, agent: &str) -> Result<(), Status> {
    fleet.store.remove("inventory", agent).map_err(internal)?;
    fleet.inventory.update(fleet, |st| st.remove_agent(agent))
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

// ===== The in-memory index =====
//
// Queries, `/metrics` and the policy tick read the index, never the store: decoding every
// agent's document (DER in base64) took 0.6–0.9 s at 10,000 agents for each of them. The index
// holds one compact entry per distinct certificate (no DER; issuer, role, key algorithm and
// location kinds interned), the sightings of it per agent, and a by-expiry order. DER stays in
// the store and is read only for a query that asks for it. The store stays the source of
// truth: the index is built from it on first use and updated after each successful write.

/// A string shared by every certificate that has it (issuers, roles, algorithms, kinds).
type Shared = Arc<str>;

#[derive(Default)]
struct Interner(HashSet<Shared>);

impl Interner {
    fn get(&mut self, s: &str) -> Shared {
        if let Some(v) = self.0.get(s) {
            return v.clone();
        }
        let v: Shared = Arc::from(s);
        self.0.insert(v.clone());
        v
    }
}

/// Where one agent saw a certificate.
struct Sighting {
    agent: Shared,
    role: Shared,
    locations: Box<[CompactLocation]>,
    /// Who renews it as this agent sees it ("" when nobody known, see [`owner`]).
    owner: Shared,
    /// From when it counts as not renewed in time by its owner (`i64::MAX`: never).
    overdue_at: i64,
}

struct CompactLocation {
    kind: Shared,
    path: Box<str>,
    store: Shared,
    alias: Box<str>,
    detail: Box<str>,
}

impl CompactLocation {
    fn to_model(&self) -> certfleet_common::model::Location {
        certfleet_common::model::Location {
            kind: self.kind.to_string(),
            path: self.path.to_string(),
            store: self.store.to_string(),
            alias: self.alias.to_string(),
            detail: self.detail.to_string(),
        }
    }
}

/// One distinct certificate (its fields come from its DER, so every agent reports the same).
struct IndexedCert {
    subject: Box<str>,
    issuer: Shared,
    serial: Box<str>,
    sans: Box<[Box<str>]>,
    not_before: i64,
    not_after: i64,
    key_algorithm: Shared,
    key_bits: u32,
    is_ca: bool,
    subject_key_id: Box<str>,
    authority_key_id: Shared,
    sightings: Vec<Sighting>,
}

impl IndexedCert {
    /// The most specific role any agent gave it.
    fn role(&self) -> &str {
        self.role_seen_by(None)
    }

    /// The most specific role given by `agent` (any agent when None): a query about one agent
    /// shows what that agent found.
    fn role_seen_by(&self, agent: Option<&str>) -> &str {
        let mut best: &str = "";
        for s in self
            .sightings
            .iter()
            .filter(|s| agent.is_none_or(|a| &*s.agent == a))
        {
            if best.is_empty() || (best.starts_with("file.") && !s.role.is_empty()) {
                best = &s.role;
            }
        }
        best
    }

    /// Its owner as `agent` (any agent when None) sees it: a renewer other than certfleet first.
    fn owner_seen_by(&self, agent: Option<&str>) -> &str {
        let mut best: &str = "";
        for s in self
            .sightings
            .iter()
            .filter(|s| agent.is_none_or(|a| &*s.agent == a))
        {
            if best.is_empty() || (!owner::is_other(best) && owner::is_other(&s.owner)) {
                best = &s.owner;
            }
        }
        best
    }

    fn record(&self, fp: &str, only_agent: Option<&str>) -> CertRecord {
        CertRecord {
            locations: self
                .sightings
                .iter()
                .filter(|s| only_agent.is_none_or(|a| &*s.agent == a))
                .flat_map(|s| s.locations.iter().map(CompactLocation::to_model))
                .collect(),
            ..self.summary(fp, only_agent)
        }
    }

    /// [`IndexedCert::record`] without its locations (an inventory answer lists them per
    /// sighting agent instead).
    fn summary(&self, fp: &str, only_agent: Option<&str>) -> CertRecord {
        CertRecord {
            fingerprint_sha256: fp.to_owned(),
            subject: self.subject.to_string(),
            issuer: self.issuer.to_string(),
            serial: self.serial.to_string(),
            sans: self.sans.iter().map(|s| s.to_string()).collect(),
            not_before: self.not_before,
            not_after: self.not_after,
            key_algorithm: self.key_algorithm.to_string(),
            key_bits: self.key_bits,
            is_ca: self.is_ca,
            subject_key_id: self.subject_key_id.to_string(),
            authority_key_id: self.authority_key_id.to_string(),
            role: self.role_seen_by(only_agent).to_owned(),
            locations: Vec::new(),
            der: Vec::new(),
        }
    }
}

/// What one agent reported besides certificates.
#[derive(Default)]
struct AgentEntry {
    fingerprints: Vec<Shared>,
    /// Those of its certificates another renewer owns (a finite `overdue_at`): the only ones
    /// an inventory answer's overdue check looks at.
    owned_elsewhere: Vec<Shared>,
    problems: Vec<Problem>,
    health: Vec<HealthFact>,
    owners: BTreeMap<String, String>,
    scanned_at: i64,
    pins: Vec<Pin>,
}

/// The index's certificates, kept in expiry order and found by fingerprint.
///
/// A listing most urgent first walks the certificates by expiry, 5,000 a page. When they were
/// kept by fingerprint, each step of that walk looked its certificate up elsewhere in memory,
/// some cache misses each (by B-tree or by hash alike): 40–44 ticks of controller CPU for a
/// 100,000-certificate listing, against 31–34 kept by expiry, where the walk reads entries that
/// sit together. Looking a certificate up by fingerprint takes two lookups instead of one.
#[derive(Default)]
struct CertMap {
    /// By expiry, then fingerprint.
    by_expiry: BTreeMap<(i64, Shared), IndexedCert>,
    /// Fingerprint → expiry (the rest of its key in `by_expiry`), in fingerprint order.
    expiry_of: BTreeMap<Shared, i64>,
}

impl CertMap {
    fn len(&self) -> usize {
        self.by_expiry.len()
    }

    fn get(&self, fp: &str) -> Option<&IndexedCert> {
        self.get_key_value(fp).map(|(_, c)| c)
    }

    fn get_key_value(&self, fp: &str) -> Option<(&Shared, &IndexedCert)> {
        let (fp, not_after) = self.expiry_of.get_key_value(fp)?;
        let c = self.by_expiry.get(&(*not_after, fp.clone()))?;
        Some((fp, c))
    }

    /// The entry to change; its `not_after` is part of its key and must stay as it is (a
    /// fingerprint names one certificate, whose expiry never changes).
    fn get_mut(&mut self, fp: &str) -> Option<&mut IndexedCert> {
        let (fp, not_after) = self.expiry_of.get_key_value(fp)?;
        self.by_expiry.get_mut(&(*not_after, fp.clone()))
    }

    fn insert(&mut self, fp: Shared, c: IndexedCert) {
        if let Some(old) = self.expiry_of.insert(fp.clone(), c.not_after) {
            self.by_expiry.remove(&(old, fp.clone()));
        }
        self.by_expiry.insert((c.not_after, fp), c);
    }

    fn remove(&mut self, fp: &str) {
        if let Some((fp, not_after)) = self.expiry_of.remove_entry(fp) {
            self.by_expiry.remove(&(not_after, fp));
        }
    }

    /// Every certificate, by expiry.
    fn values(&self) -> impl Iterator<Item = &IndexedCert> + '_ {
        self.by_expiry.values()
    }

    /// Every certificate with its fingerprint, by expiry (the cheap order to walk).
    fn iter(&self) -> impl Iterator<Item = (&Shared, &IndexedCert)> + '_ {
        self.by_expiry.iter().map(|((_, fp), c)| (fp, c))
    }

    /// The certificates expiring from `start` on, by expiry then fingerprint.
    fn expiring_from(
        &self,
        start: std::ops::Bound<(i64, Shared)>,
    ) -> impl Iterator<Item = (i64, &Shared, &IndexedCert)> + '_ {
        self.by_expiry
            .range((start, std::ops::Bound::Unbounded))
            .map(|((not_after, fp), c)| (*not_after, fp, c))
    }

    /// The certificates whose fingerprints fall in `bounds`, in fingerprint order.
    fn range<'a>(
        &'a self,
        bounds: (std::ops::Bound<&str>, std::ops::Bound<&str>),
    ) -> impl Iterator<Item = (&'a Shared, &'a IndexedCert)> + 'a {
        self.expiry_of
            .range::<str, _>(bounds)
            .filter_map(|(fp, not_after)| {
                self.by_expiry
                    .get(&(*not_after, fp.clone()))
                    .map(|c| (fp, c))
            })
    }
}

#[derive(Default)]
struct IndexState {
    certs: CertMap,
    agents: HashMap<String, AgentEntry>,
    strings: Interner,
}

impl IndexState {
    fn remove_agent(&mut self, agent: &str) {
        let Some(entry) = self.agents.remove(agent) else {
            return;
        };
        for fp in entry.fingerprints {
            if let Some(c) = self.certs.get_mut(&fp) {
                c.sightings.retain(|s| &*s.agent != agent);
                if c.sightings.is_empty() {
                    self.certs.remove(&fp);
                }
            }
        }
    }

    fn set_agent(&mut self, agent: &str, inv: &AgentInventory) {
        self.remove_agent(agent);
        let agent_s = self.strings.get(agent);
        let mut fingerprints = Vec::with_capacity(inv.certs.len());
        let mut owned_elsewhere = Vec::new();
        for (fp, stored) in &inv.certs {
            let r = &stored.record;
            let (owner, overdue_at) = owner::owner_of(
                &inv.owners,
                &inv.health,
                fp,
                &r.role,
                &r.locations,
                r.not_after,
            );
            let sighting = Sighting {
                agent: agent_s.clone(),
                owner: self.strings.get(&owner),
                overdue_at,
                role: self.strings.get(&r.role),
                locations: r
                    .locations
                    .iter()
                    .map(|l| CompactLocation {
                        kind: self.strings.get(&l.kind),
                        path: l.path.as_str().into(),
                        store: self.strings.get(&l.store),
                        alias: l.alias.as_str().into(),
                        detail: l.detail.as_str().into(),
                    })
                    .collect(),
            };
            let key = match self.certs.get_key_value(fp.as_str()) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Shared = Arc::from(fp.as_str());
                    let entry = IndexedCert {
                        subject: r.subject.as_str().into(),
                        issuer: self.strings.get(&r.issuer),
                        serial: r.serial.as_str().into(),
                        sans: r.sans.iter().map(|s| s.as_str().into()).collect(),
                        not_before: r.not_before,
                        not_after: r.not_after,
                        key_algorithm: self.strings.get(&r.key_algorithm),
                        key_bits: r.key_bits,
                        is_ca: r.is_ca,
                        subject_key_id: r.subject_key_id.as_str().into(),
                        authority_key_id: self.strings.get(&r.authority_key_id),
                        // Most certificates are seen by one agent; a first push into an empty
                        // vector reserves four sightings (288 bytes, half of what an entry took).
                        sightings: Vec::with_capacity(1),
                    };
                    self.certs.insert(k.clone(), entry);
                    k
                }
            };
            if let Some(c) = self.certs.get_mut(&key) {
                c.sightings.push(sighting);
            }
            if overdue_at != i64::MAX {
                owned_elsewhere.push(key.clone());
            }
            fingerprints.push(key);
        }
        self.agents.insert(
            agent.to_owned(),
            AgentEntry {
                fingerprints,
                owned_elsewhere,
                problems: inv.problems.clone(),
                health: inv.health.clone(),
                owners: inv.owners.clone(),
                scanned_at: inv.scanned_at,
                pins: inv.pins.clone(),
            },
        );
    }

    /// See [`Index::earliest_due`].
    fn earliest_due(&self, role: &str, now: i64, within: i64) -> Option<i64> {
        let st = self;
        let prefix = format!("{role}.");
        let last = now.saturating_add(within);
        for (not_after, _, c) in st.certs.expiring_from(std::ops::Bound::Unbounded) {
            if not_after > last {
                break;
            }
            // A certificate another renewer owns is not the policy's to renew (its overdue
            // check is a health fact of the inventory).
            if c.sightings.iter().any(|s| {
                (&*s.role == role || s.role.starts_with(&prefix)) && !owner::is_other(&s.owner)
            }) {
                return Some(not_after);
            }
        }
        None
    }

    /// What a report from `agent` is compared with to find replaced certificates.
    fn prior(&self, agent: &str) -> owner::Prior {
        let Some(entry) = self.agents.get(agent) else {
            return owner::Prior::default();
        };
        let mut prior = owner::Prior {
            notes: entry.owners.clone(),
            scanned_at: entry.scanned_at,
            ..Default::default()
        };
        let mut shared: HashSet<String> = HashSet::new();
        for fp in &entry.fingerprints {
            prior.fingerprints.insert(fp.to_string());
            let Some(c) = self.certs.get(fp) else {
                continue;
            };
            if c.is_ca {
                continue;
            }
            prior.not_after.insert(fp.to_string(), c.not_after);
            for s in c.sightings.iter().filter(|s| &*s.agent == agent) {
                for l in s.locations.iter() {
                    let k = owner::place_key(&l.to_model());
                    if let Some(other) = prior.places.insert(k.clone(), fp.to_string())
                        && *other != **fp
                    {
                        shared.insert(k);
                    }
                }
            }
        }
        for k in shared {
            prior.places.remove(&k);
        }
        prior
    }
}

/// The index as the metrics read it: one sighting per (certificate, agent that reported it).
struct IndexCerts<'a>(&'a IndexState);

impl crate::metrics::FleetCerts for IndexCerts<'_> {
    fn each<'s>(&'s self, f: &mut dyn FnMut(&'s str, &crate::metrics::Sighting<'s, '_>)) {
        for (fp, c) in self.0.certs.iter() {
            for s in &c.sightings {
                let locations = || s.locations.iter().map(CompactLocation::to_model).collect();
                f(
                    &s.agent,
                    &crate::metrics::Sighting {
                        fingerprint: fp,
                        subject: &c.subject,
                        issuer: &c.issuer,
                        serial: &c.serial,
                        role: &s.role,
                        not_before: c.not_before,
                        not_after: c.not_after,
                        is_ca: c.is_ca,
                        subject_key_id: &c.subject_key_id,
                        authority_key_id: &c.authority_key_id,
                        locations: &locations,
                        owner: &s.owner,
                        overdue_at: s.overdue_at,
                    },
                );
            }
        }
    }

    fn each_pin(&self, f: &mut dyn FnMut(&str, &Pin)) {
        for (agent, entry) in &self.0.agents {
            for p in &entry.pins {
                f(agent, p);
            }
        }
    }
}

/// The controller's in-memory inventory index (one per [`Fleet`]).
pub struct Index {
    state: OnceLock<RwLock<IndexState>>,
    /// Held while the index is built: a restarted controller meets the whole fleet reporting
    /// at once, and every first user building its own copy (each decoding every stored
    /// document) cost minutes of CPU and hundreds of MB at 1,000 agents.
    building: Mutex<()>,
    /// Times the index was built (once per process).
    builds: AtomicU64,
    /// Reports applied at once (each on a blocking thread): more only queue on the index's
    /// write lock, and spread allocations over many threads' heaps (RSS that stays after a
    /// reconnect storm).
    appliers: tokio::sync::Semaphore,
}

/// Reports applied at once (see [`Index`]).
const CONCURRENT_APPLIES: usize = 4;

impl Default for Index {
    fn default() -> Self {
        Index {
            state: OnceLock::new(),
            building: Mutex::new(()),
            builds: AtomicU64::new(0),
            appliers: tokio::sync::Semaphore::new(CONCURRENT_APPLIES),
        }
    }
}

impl Index {
    /// The index, built from the store on first use (one decode of every document, by one
    /// caller; the others wait for it).
    fn state(&self, fleet: &Fleet) -> Result<&RwLock<IndexState>, Status> {
        if let Some(s) = self.state.get() {
            return Ok(s);
        }
        let _building = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self.state.get() {
            return Ok(s);
        }
        let mut st = IndexState::default();
        for (agent, inv) in all(fleet)? {
            st.set_agent(&agent.id, &inv);
        }
        self.builds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            agents = st.agents.len(),
            certificates = st.certs.len(),
            "inventory index built"
        );
        let _ = self.state.set(RwLock::new(st));
        Ok(self.state.get().expect("just set"))
    }

    /// What the index holds about `agent` before its next report is applied.
    fn prior(&self, fleet: &Fleet, agent: &str) -> Result<owner::Prior, Status> {
        Ok(self.read(fleet)?.prior(agent))
    }

    /// (agent id, fingerprint) → owner, for every certificate a renewer other than certfleet
    /// owns (what plans leave alone unless told to take over).
    pub fn owned_by_others(
        &self,
        fleet: &Fleet,
    ) -> Result<HashMap<(String, String), String>, Status> {
        let st = self.read(fleet)?;
        let mut out = HashMap::new();
        for (fp, c) in st.certs.iter() {
            for s in c.sightings.iter().filter(|s| owner::is_other(&s.owner)) {
                out.insert((s.agent.to_string(), fp.to_string()), s.owner.to_string());
            }
        }
        Ok(out)
    }

    /// Builds the index now (at start, before the fleet reconnects), if not built yet.
    pub fn warm(&self, fleet: &Fleet) -> Result<(), Status> {
        self.state(fleet).map(|_| ())
    }

    /// How many times the index was built (once per process).
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// [`apply`] on a blocking thread, at most a few at once (see [`Index::appliers`]).
    pub async fn apply_off_thread(
        fleet: &std::sync::Arc<Fleet>,
        agent: &str,
        report: pb::InventoryReport,
        max_certificates: usize,
    ) -> Result<(), Status> {
        let _permit = fleet
            .inventory
            .appliers
            .acquire()
            .await
            .map_err(|e| Status::internal(format!("applying a report: {e}")))?;
        let (f, agent) = (fleet.clone(), agent.to_owned());
        tokio::task::spawn_blocking(move || apply(&f, &agent, report, max_certificates))
            .await
            .map_err(|e| Status::internal(format!("applying a report: {e}")))?
    }

    fn read(&self, fleet: &Fleet) -> Result<RwLockReadGuard<'_, IndexState>, Status> {
        Ok(self.state(fleet)?.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn update(&self, fleet: &Fleet, f: impl FnOnce(&mut IndexState)) -> Result<(), Status> {
        let mut st = self
            .state(fleet)?
            .write()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut st);
        Ok(())
    }

    /// Runs `f` on the index as a [`crate::metrics::FleetCerts`] source (under its read lock:
    /// reports wait until `f` returns). What `/metrics` renders from.
    pub fn with_certs<R>(
        &self,
        fleet: &Fleet,
        f: impl FnOnce(&dyn crate::metrics::FleetCerts) -> R,
    ) -> Result<R, Status> {
        let st = self.read(fleet)?;
        Ok(f(&IndexCerts(&st)))
    }

    /// Aggregates for `/metrics` and health: one pass over the index, nothing decoded.
    pub fn snapshot(&self, fleet: &Fleet) -> Result<InventorySnapshot, Status> {
        let st = self.read(fleet)?;
        let now = now();
        let mut snap = InventorySnapshot {
            agents: st.agents.len(),
            certificates: st.certs.len(),
            problems: st.agents.values().map(|a| a.problems.len()).sum(),
            ..Default::default()
        };
        for c in st.certs.values() {
            let role = c.role();
            let key = (platform_of(role).to_owned(), role.to_owned());
            match roles::Status::of(role, c.not_after, now) {
                roles::Status::Expired => *snap.expired.entry(key).or_default() += 1,
                roles::Status::Expiring => *snap.expiring.entry(key).or_default() += 1,
                roles::Status::Ok => {}
            }
            snap.earliest_not_after = Some(
                snap.earliest_not_after
                    .map_or(c.not_after, |e| e.min(c.not_after)),
            );
        }
        Ok(snap)
    }

    /// Every (agent id, certificate record without DER) the index holds, for per-certificate
    /// metrics and the policy tick. One record per sighting agent.
    pub fn records(&self, fleet: &Fleet) -> Result<Vec<(String, CertRecord)>, Status> {
        let st = self.read(fleet)?;
        let mut out = Vec::with_capacity(st.certs.len());
        for (fp, c) in st.certs.iter() {
            for s in &c.sightings {
                let mut r = c.record(fp, Some(&s.agent));
                r.role = s.role.to_string();
                out.push((s.agent.to_string(), r));
            }
        }
        Ok(out)
    }

    /// The earliest not-after among certificates whose role is `role` or under it, expiring
    /// within `within` seconds of `now` (the policy tick's question).
    pub fn earliest_due(
        &self,
        fleet: &Fleet,
        role: &str,
        now: i64,
        within: i64,
    ) -> Result<Option<i64>, Status> {
        Ok(self.read(fleet)?.earliest_due(role, now, within))
    }
}

/// Inventory aggregates (see [`Index::snapshot`]).
#[derive(Clone, Debug, Default)]
pub struct InventorySnapshot {
    /// Agents that reported.
    pub agents: usize,
    /// Distinct certificates.
    pub certificates: usize,
    /// Problems agents reported.
    pub problems: usize,
    /// Expired certificates per (platform, role).
    pub expired: BTreeMap<(String, String), u64>,
    /// Certificates inside their role's warning window per (platform, role).
    pub expiring: BTreeMap<(String, String), u64>,
    /// The earliest not-after of any certificate.
    pub earliest_not_after: Option<i64>,
}

// ===== Filters that name something =====
//
// A filter naming something that does not exist (a typo in `--agent`, `--platform`, `--role`,
// `--issued-by`, a recipe `--param`) is refused with what is valid, never answered with an
// empty list: "nothing expiring" after a typo is the worst answer an expiry tool can give.

/// How many valid values a refusal lists before "and N more".
const LISTED: usize = 12;

/// The closest valid value to a mistyped one, if one is close enough to be a likely typo.
fn did_you_mean<'a>(given: &str, valid: &'a [String]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(given, v), v))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v.as_str())
}

/// The refusal of an unknown value for `what` (e.g. `--agent`), listing what is valid
/// (shortened when many) and the likely typo. `InvalidArgument`: the CLI exits 2.
pub fn unknown_value(what: &str, given: &str, valid: &[String]) -> Status {
    let mut msg = format!("unknown {what} {given:?}");
    if let Some(close) = did_you_mean(given, valid) {
        msg.push_str(&format!(" (did you mean {close:?}?)"));
    }
    if valid.is_empty() {
        msg.push_str("; valid: none");
    } else {
        let shown: Vec<&str> = valid.iter().take(LISTED).map(String::as_str).collect();
        msg.push_str("; valid: ");
        msg.push_str(&shown.join(", "));
        if valid.len() > LISTED {
            msg.push_str(&format!(" and {} more", valid.len() - LISTED));
        }
    }
    Status::invalid_argument(msg)
}

/// Every platform the role catalogue knows (what `--platform` takes).
pub fn known_platforms() -> Vec<String> {
    let mut p: Vec<String> = roles::ROLES.iter().map(|r| r.platform.to_owned()).collect();
    p.sort();
    p.dedup();
    p
}

/// Refuses a `--platform` the catalogue does not know.
pub fn check_platform(platform: &str) -> Result<(), Status> {
    let known = known_platforms();
    if platform.is_empty() || known.iter().any(|p| p == platform) {
        return Ok(());
    }
    Err(unknown_value("--platform", platform, &known))
}

/// Role families whose last part is chosen in each agent's configuration (`file.<name>`,
/// `endpoint.<name>`): any name under them is a role someone may have configured.
const CONFIGURED_FAMILIES: &[&str] = &["file.", "endpoint."];

/// Whether `role` (exact, or a `.`-separated prefix as `--role` takes it) names a role of the
/// catalogue or a family of them; with `configured`, any name under a family named in agent
/// configurations counts too.
fn catalogue_knows(role: &str, configured: bool) -> bool {
    let below = format!("{role}.");
    (configured && CONFIGURED_FAMILIES.iter().any(|f| role.starts_with(f)))
        || roles::ROLES.iter().any(|r| {
            let name = r.role.trim_end_matches('.');
            !name.is_empty() && (name == role || r.role.starts_with(&below))
        })
}

/// Refuses a `--role` that neither the catalogue nor any reported certificate has (exact or
/// as a `.`-separated prefix); `seen` lists the roles certificates were reported with.
///
/// `configured_ok`: accept any name under `file.` / `endpoint.` even when no agent reported
/// it (yet). Inventory queries do: an agent's configuration names these roles and a query may
/// come before its first report. Plans do not: a plan is built from what was reported.
pub fn check_role<S: AsRef<str>>(
    role: &str,
    seen: impl IntoIterator<Item = S>,
    configured_ok: bool,
) -> Result<(), Status> {
    if role.is_empty() || catalogue_knows(role, configured_ok) {
        return Ok(());
    }
    let below = format!("{role}.");
    let mut valid: BTreeSet<String> = BTreeSet::new();
    for r in seen {
        let r = r.as_ref();
        if r == role || r.starts_with(&below) {
            return Ok(());
        }
        if !r.is_empty() {
            valid.insert(r.to_owned());
        }
    }
    valid.extend(
        roles::ROLES
            .iter()
            .filter(|r| !r.role.is_empty() && !r.role.ends_with('.'))
            .map(|r| r.role.to_owned()),
    );
    let valid: Vec<String> = valid.into_iter().collect();
    Err(unknown_value("--role", role, &valid))
}

/// Refuses an agent id or name no agent has; lists the names.
pub fn check_agent<'a>(
    given: &str,
    agents: impl Iterator<Item = &'a AgentRecord>,
) -> Result<(), Status> {
    let mut names = Vec::new();
    for a in agents {
        if a.id == given || a.name == given {
            return Ok(());
        }
        names.push(a.name.clone());
    }
    names.sort();
    Err(unknown_value("--agent", given, &names))
}

/// Largest page an inventory answer holds (a query asking for more, or for no limit, gets
/// this many and a page token).
pub const MAX_PAGE: usize = 5_000;

/// Answers an inventory query from the index: one page of at most `page_size` items (0: all,
/// for older clients), certificates after `page_token` in fingerprint order; problems and
/// health on the first page. DER only when `with_der` is set (read from the store).
pub fn query(fleet: &Fleet, q: &pb::InventoryQuery) -> Result<pb::InventoryList, Status> {
    let now = now();
    let agents = fleet.agent_directory()?;
    check_platform(&q.platform)?;
    let only_agent: Option<String> = if q.agent.is_empty() {
        None
    } else {
        check_agent(&q.agent, agents.values())?;
        agents
            .values()
            .find(|a| a.id == q.agent || a.name == q.agent)
            .map(|a| a.id.clone())
    };
    let st = fleet.inventory.read(fleet)?;
    check_role(
        &q.role,
        st.certs
            .values()
            .flat_map(|c| c.sightings.iter().map(|s| &*s.role)),
        true,
    )?;
    let first_page = q.page_token.is_empty();
    let mut problems = Vec::new();
    let mut health = Vec::new();
    let mut pins = Vec::new();
    if first_page {
        let mut ids: Vec<&String> = st.agents.keys().collect();
        ids.sort();
        for id in ids {
            if only_agent.as_ref().is_some_and(|a| a != id) {
                continue;
            }
            let Some(agent) = agents.get(id) else {
                continue;
            };
            let entry = &st.agents[id];
            for p in &entry.problems {
                let mut p = p.clone();
                p.subject = format!("{}: {}", agent.name, p.subject);
                problems.push((&p).into());
            }
            for h in &entry.health {
                let mut h = h.clone();
                h.subject = format!("{}: {}", agent.name, h.subject);
                health.push((&h).into());
            }
            for p in &entry.pins {
                let mut p: pb::Pin = p.into();
                p.agent = agent.name.clone();
                pins.push(p);
            }
        }
        // Certificates another renewer owns and has not renewed in time, soonest expiry first.
        // Renewers renew weeks to months ahead: only what expires within two years is looked
        // at.
        let horizon = now.saturating_add(2 * 366 * 86_400);
        let mut owned: Vec<(i64, &Shared)> = st
            .agents
            .iter()
            .filter(|(id, _)| only_agent.as_ref().is_none_or(|a| a == *id))
            .flat_map(|(_, e)| e.owned_elsewhere.iter())
            .filter_map(|fp| st.certs.get(fp).map(|c| (c.not_after, fp)))
            .filter(|(not_after, _)| *not_after < horizon)
            .collect();
        owned.sort_unstable();
        owned.dedup();
        for (not_after, fp) in owned {
            let Some(c) = st.certs.get(fp) else { continue };
            for s in &c.sightings {
                if s.overdue_at > now || only_agent.as_ref().is_some_and(|a| **a != *s.agent) {
                    continue;
                }
                let Some(agent) = agents.get(&*s.agent) else {
                    continue;
                };
                let place = s
                    .locations
                    .first()
                    .map(|l| l.to_model().describe())
                    .unwrap_or_default();
                health.push(
                    (&owner::overdue_fact(
                        &agent.name,
                        &s.owner,
                        &s.role,
                        &place,
                        not_after,
                        s.overdue_at,
                    ))
                        .into(),
                );
            }
        }
    }
    let issuer_filter = q.issued_by.to_lowercase();
    let issuer_ski: Option<Shared> = if issuer_filter.is_empty() {
        None
    } else {
        match st.certs.get(issuer_filter.as_str()) {
            Some(c) => Some(Shared::from(&*c.subject_key_id)),
            None => {
                // The CAs the fleet reported, as "fingerprint (subject)".
                let cas: Vec<String> = st
                    .certs
                    .iter()
                    .filter(|(_, c)| c.is_ca)
                    .map(|(fp, c)| format!("{fp} ({})", c.subject))
                    .collect();
                let fps: Vec<String> = cas
                    .iter()
                    .map(|c| c.split(' ').next().unwrap_or_default().to_owned())
                    .collect();
                let mut e = unknown_value("--issued-by", &q.issued_by, &fps);
                if !cas.is_empty() {
                    e = Status::invalid_argument(format!(
                        "{} (a CA's full SHA-256 fingerprint, see `certfleet inventory cas`); CAs: {}{}",
                        e.message().split("; valid:").next().unwrap_or_default(),
                        cas.iter()
                            .take(LISTED)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        if cas.len() > LISTED {
                            format!(" and {} more", cas.len() - LISTED)
                        } else {
                            String::new()
                        }
                    ));
                }
                return Err(e);
            }
        }
    };
    let fp_filter = q.fingerprint.to_lowercase();
    let role_prefix = format!("{}.", q.role);
    let matches = |fp: &str, c: &IndexedCert| -> bool {
        let seen_here = match &only_agent {
            None => !c.sightings.is_empty(),
            Some(a) => c.sightings.iter().any(|s| &*s.agent == a),
        };
        if !seen_here || !fp.starts_with(&fp_filter) {
            return false;
        }
        let role = c.role_seen_by(only_agent.as_deref());
        (q.role.is_empty() || role == q.role || role.starts_with(&role_prefix))
            && (q.platform.is_empty() || platform_of(role) == q.platform)
            && (q.expiring_within_secs == 0 || c.not_after - now <= q.expiring_within_secs as i64)
            && match &issuer_ski {
                None => true,
                Some(ski) => !ski.is_empty() && &c.authority_key_id == ski && fp != issuer_filter,
            }
    };
    let limit = match q.page_size as usize {
        0 => usize::MAX,
        n => n.min(MAX_PAGE),
    };
    let after = q.page_token.as_str();
    let mut picked: Vec<(&Shared, &IndexedCert)>;
    let mut more = false;
    // Most urgent first: every page ranks as of the first page's time.
    let urgency = if q.by_urgency {
        let from = UrgencyToken::parse(after)?;
        let ranked_at = from.as_ref().map_or(now, |t| t.ranked_at);
        Some((ranked_at, from))
    } else {
        None
    };
    if let Some((ranked_at, from)) = &urgency {
        let horizon =
            (q.expiring_within_secs > 0).then(|| now.saturating_add(q.expiring_within_secs as i64));
        (picked, more) = pick_by_urgency(
            &st,
            only_agent.as_deref(),
            *ranked_at,
            from.as_ref(),
            horizon,
            limit,
            &matches,
        );
    } else if q.expiring_within_secs > 0 && only_agent.is_none() {
        // By expiry: only what falls inside the horizon is looked at.
        let horizon = now.saturating_add(q.expiring_within_secs as i64);
        let mut hits: Vec<(&Shared, &IndexedCert)> = st
            .certs
            .expiring_from(std::ops::Bound::Unbounded)
            .take_while(|(not_after, _, _)| *not_after <= horizon)
            .map(|(_, fp, c)| (fp, c))
            .filter(|(fp, c)| &***fp > after && matches(fp, c))
            .collect();
        hits.sort_by(|a, b| a.0.cmp(b.0));
        if hits.len() > limit {
            hits.truncate(limit);
            more = true;
        }
        picked = hits;
    } else if let Some(a) = &only_agent {
        let mut hits: Vec<(&Shared, &IndexedCert)> = st
            .agents
            .get(a)
            .map(|e| {
                e.fingerprints
                    .iter()
                    .filter(|fp| &***fp > after)
                    .filter_map(|fp| st.certs.get_key_value(fp))
                    .filter(|(fp, c)| matches(fp, c))
                    .collect()
            })
            .unwrap_or_default();
        hits.sort_by(|a, b| a.0.cmp(b.0));
        hits.dedup_by(|a, b| a.0 == b.0);
        if hits.len() > limit {
            hits.truncate(limit);
            more = true;
        }
        picked = hits;
    } else {
        use std::ops::Bound;
        picked = Vec::new();
        // Fingerprints with a given prefix are one run of keys: the scan starts at the prefix
        // (or past the token) and ends with the run (the CLI lists a fleet as 16 prefixes).
        let start: Bound<&str> = if after.is_empty() && fp_filter.is_empty() {
            Bound::Unbounded
        } else if after >= fp_filter.as_str() {
            Bound::Excluded(after)
        } else {
            Bound::Included(fp_filter.as_str())
        };
        for (fp, c) in st.certs.range((start, Bound::Unbounded)) {
            if !fp.starts_with(fp_filter.as_str()) {
                break;
            }
            if !matches(fp, c) {
                continue;
            }
            if picked.len() == limit {
                more = true;
                break;
            }
            picked.push((fp, c));
        }
    }
    let next_page_token = match (more, picked.last(), &urgency) {
        (false, _, _) | (true, None, _) => String::new(),
        (true, Some((fp, _)), None) => fp.to_string(),
        (true, Some((fp, c)), Some((ranked_at, _))) => UrgencyToken::write(
            *ranked_at,
            urgency_of(c, only_agent.as_deref(), *ranked_at),
            c.not_after,
            fp,
        ),
    };
    let mut der_of: HashMap<String, AgentInventory> = HashMap::new();
    // An agent's id is one interned string however many sightings it has: its address finds
    // the agent's record without hashing the id again for each of a page's 5,000 items.
    let mut agent_at: HashMap<*const u8, Option<&AgentRecord>, foldhash::fast::RandomState> =
        HashMap::default();
    // Items are written straight from the index into the answer's bytes (see
    // `certfleet_proto::wire`): no message per item is built, encoded and freed.
    // Room for the page at once (an item is some 500 bytes to 1 KB; the pages not written to
    // are never touched): grown by doubling, a 5 MB page was copied a dozen times.
    let mut encoded_items = Vec::with_capacity(picked.len().saturating_mul(1024));
    let mut seen: Vec<wire::SeenFields<'_>> = Vec::new();
    for (fp, c) in picked {
        let mut der = Vec::new();
        if q.with_der
            && let Some(s) = c.sightings.first()
        {
            if !der_of.contains_key(&*s.agent) {
                let inv: AgentInventory = fleet
                    .store
                    .get("inventory", &s.agent)
                    .map_err(internal)?
                    .unwrap_or_default();
                der_of.insert(s.agent.to_string(), inv);
            }
            if let Some(stored) = der_of[&*s.agent].certs.get(&**fp) {
                der = STANDARD.decode(&stored.der_b64).unwrap_or_default();
            }
        }
        seen.clear();
        for s in &c.sightings {
            if only_agent.as_ref().is_some_and(|a| **a != *s.agent) {
                continue;
            }
            let Some(agent) = *agent_at
                .entry(s.agent.as_ptr())
                .or_insert_with(|| agents.get(&*s.agent))
            else {
                continue;
            };
            for loc in s.locations.iter() {
                seen.push(wire::SeenFields {
                    agent_id: &agent.id,
                    agent_name: &agent.name,
                    hostname: &agent.hostname,
                    platforms: &agent.platforms,
                    location: [&loc.kind, &loc.path, &loc.store, &loc.alias, &loc.detail],
                });
            }
        }
        wire::write_item(
            &mut encoded_items,
            &wire::CertificateFields {
                fingerprint_sha256: fp,
                subject: &c.subject,
                issuer: &c.issuer,
                serial: &c.serial,
                sans: &c.sans,
                not_before: c.not_before,
                not_after: c.not_after,
                key_algorithm: &c.key_algorithm,
                key_bits: c.key_bits,
                is_ca: c.is_ca,
                subject_key_id: &c.subject_key_id,
                authority_key_id: &c.authority_key_id,
                role: c.role_seen_by(only_agent.as_deref()),
                der: &der,
            },
            &seen,
            c.owner_seen_by(only_agent.as_deref()),
        );
    }
    Ok(pb::InventoryList {
        items: Vec::new(),
        problems,
        health,
        next_page_token,
        pins,
        by_urgency: urgency.is_some(),
        encoded_items,
    })
}

/// A certificate's urgency at `at` under the role it has (for one agent, or the fleet).
fn urgency_of(c: &IndexedCert, agent: Option<&str>, at: i64) -> roles::Status {
    roles::Status::of(c.role_seen_by(agent), c.not_after, at)
}

/// Where an answer most urgent first (`by_urgency`) goes on: the time its first page ranked
/// at (each page ranks as of it, so that no certificate moves between pages as time passes)
/// and the last item's place in that order. Written `u1:<at>:<status>:<not_after>:<fp>`.
#[derive(Debug, PartialEq)]
struct UrgencyToken {
    ranked_at: i64,
    /// Status, expiry and fingerprint of the last item sent.
    last: (roles::Status, i64, String),
}

impl UrgencyToken {
    /// None for the first page; an error naming the token for one this controller did not
    /// write.
    fn parse(token: &str) -> Result<Option<UrgencyToken>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            let shown: String = token.chars().take(80).collect();
            Status::invalid_argument(format!(
                "page token {shown:?} is not one this controller gave for an inventory most \
                 urgent first; ask again without it"
            ))
        };
        let mut parts = token.splitn(5, ':');
        let (Some("u1"), Some(at), Some(status), Some(not_after), Some(fp)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let Some(&status) = status.parse::<usize>().ok().and_then(|i| URGENCIES.get(i)) else {
            return Err(bad());
        };
        Ok(Some(UrgencyToken {
            ranked_at: at.parse().map_err(|_| bad())?,
            last: (status, not_after.parse().map_err(|_| bad())?, fp.to_owned()),
        }))
    }

    fn write(ranked_at: i64, status: roles::Status, not_after: i64, fp: &str) -> String {
        let status = URGENCIES.iter().position(|u| *u == status).unwrap_or(0);
        format!("u1:{ranked_at}:{status}:{not_after}:{fp}")
    }
}

/// The statuses most urgent first: the order of an answer `by_urgency`, and a status's number
/// in its page token.
const URGENCIES: [roles::Status; 3] = [
    roles::Status::Expired,
    roles::Status::Expiring,
    roles::Status::Ok,
];

/// A page of an answer most urgent first: expired, expiring, the rest, each by expiry, then
/// fingerprint, ranked at `ranked_at`; the certificates after `from` (from the start when
/// `None`) that `matches` and expire by `horizon`, at most `limit`; and whether more follow.
///
/// The fleet's certificates are walked in expiry order once per status, from the token on: the
/// expired are those up to `ranked_at`, the expiring those up to the longest warning window
/// after it (each checked under its role's), the rest everything after. A 100,000-certificate
/// listing is answered in 20 pages without the controller or the client sorting it.
fn pick_by_urgency<'s>(
    st: &'s IndexState,
    agent: Option<&str>,
    ranked_at: i64,
    from: Option<&UrgencyToken>,
    horizon: Option<i64>,
    limit: usize,
    matches: &dyn Fn(&str, &IndexedCert) -> bool,
) -> (Vec<(&'s Shared, &'s IndexedCert)>, bool) {
    use roles::Status as U;
    use std::ops::Bound;
    let after = from.map(|t| (t.last.0, t.last.1, t.last.2.as_str()));
    if let Some(a) = agent {
        // One agent's certificates: few enough to rank and sort.
        let mut hits: Vec<((U, i64, &Shared), &IndexedCert)> = st
            .agents
            .get(a)
            .map(|e| {
                e.fingerprints
                    .iter()
                    .filter_map(|fp| st.certs.get_key_value(fp))
                    .filter(|(fp, c)| matches(fp, c))
                    .map(|(fp, c)| ((urgency_of(c, agent, ranked_at), c.not_after, fp), c))
                    .filter(|((u, na, fp), _)| after.is_none_or(|a| (*u, *na, &***fp) > a))
                    .collect()
            })
            .unwrap_or_default();
        hits.sort_by(|a, b| a.0.cmp(&b.0));
        hits.dedup_by(|a, b| a.0.2 == b.0.2);
        let more = hits.len() > limit;
        hits.truncate(limit);
        return (
            hits.into_iter().map(|((_, _, fp), c)| (fp, c)).collect(),
            more,
        );
    }
    let soon = ranked_at.saturating_add(roles::longest_warning_secs());
    let mut picked = Vec::new();
    for status in URGENCIES {
        let start = match after {
            Some((u, _, _)) if u > status => continue,
            Some((u, not_after, fp)) if u == status => {
                Bound::Excluded((not_after, Shared::from(fp)))
            }
            _ if status == U::Expired => Bound::Unbounded,
            // Nothing after `ranked_at` is expired.
            _ => Bound::Included((ranked_at.saturating_add(1), Shared::from(""))),
        };
        // The latest expiry a certificate of this status can have.
        let last = match status {
            U::Expired => ranked_at,
            U::Expiring => soon,
            U::Ok => i64::MAX,
        }
        .min(horizon.unwrap_or(i64::MAX));
        for (not_after, fp, c) in st.certs.expiring_from(start) {
            if not_after > last {
                break;
            }
            if urgency_of(c, None, ranked_at) != status || !matches(fp, c) {
                continue;
            }
            if picked.len() == limit {
                return (picked, true);
            }
            picked.push((fp, c));
        }
    }
    (picked, false)
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    /// An active agent's record as the store holds it.
    fn test_agent(id: &str, name: &str, hostname: &str, platforms: &[&str]) -> AgentRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "hostname": hostname,
            "platforms": platforms, "version": "1", "state": "active", "enrolled_at": 1,
            "last_seen": 0, "cert_not_after": 0, "cert_fingerprint": "", "key_id": "",
            "labels": {}, "cas": [], "renewable": [], "superseded": [],
        }))
        .unwrap()
    }

    /// An answer's items are written from the index as bytes; decoded, they are the items:
    /// each certificate once with every place every agent saw it, the agent's name, host and
    /// platforms on each place, DER only when asked, one agent's view with `--agent`.
    #[test]
    fn answers_decode_to_each_certificate_with_its_places() {
        use prost::Message as _;
        let (_dir, fleet) = crate::server::test_fleet();
        for (id, name, platforms) in [("a1", "vc1", &["vsphere"][..]), ("a2", "eng1", &[])] {
            let host = format!("{name}.example.org");
            let agent = test_agent(id, name, &host, platforms);
            fleet.store.put("agents", id, &agent).unwrap();
        }
        let der = b"a CA certificate".to_vec();
        let ca_fp = certfleet_common::pki::sha256_hex(&der);
        let cert = |role: &str, der: &[u8], fp: &str, path: &str| pb::CertificateRecord {
            fingerprint_sha256: fp.into(),
            subject: format!("CN={role}"),
            issuer: "CN=CA".into(),
            serial: "01".into(),
            sans: vec!["a.example.org".into(), "b.example.org".into()],
            not_before: -5,
            not_after: 2_000_000_000,
            key_algorithm: "RSA".into(),
            key_bits: 2048,
            role: role.into(),
            locations: vec![pb::Location {
                kind: "file".into(),
                path: path.into(),
                ..Default::default()
            }],
            der: der.to_vec(),
            ..Default::default()
        };
        let leaf_fp = "ee".repeat(32);
        apply(
            &fleet,
            "a1",
            pb::InventoryReport {
                full: true,
                certificates: vec![
                    cert("file.ca", &der, "", "/etc/ca.pem"),
                    cert("file.server", &[], &leaf_fp, "/etc/tls.pem"),
                ],
                ..Default::default()
            },
            100,
        )
        .unwrap();
        apply(
            &fleet,
            "a2",
            pb::InventoryReport {
                full: true,
                certificates: vec![cert("file.ca", &der, "", "/srv/ca.pem")],
                ..Default::default()
            },
            100,
        )
        .unwrap();
        let ask = |q: pb::InventoryQuery| {
            let sent = query(&fleet, &q).unwrap();
            assert!(sent.items.is_empty(), "items travel written, not built");
            pb::InventoryList::decode(sent.encode_to_vec().as_slice()).unwrap()
        };
        let all = ask(pb::InventoryQuery::default());
        assert_eq!(all.items.len(), 2);
        let ca = all
            .items
            .iter()
            .find(|i| i.certificate.as_ref().unwrap().fingerprint_sha256 == ca_fp)
            .unwrap();
        let c = ca.certificate.as_ref().unwrap();
        assert_eq!(
            (
                c.subject.as_str(),
                c.not_before,
                c.key_bits,
                c.sans.len(),
                c.der.len()
            ),
            ("CN=file.ca", -5, 2048, 2, 0)
        );
        let places: Vec<String> = ca
            .seen
            .iter()
            .map(|s| {
                format!(
                    "{} {} {:?} {}",
                    s.agent_name,
                    s.hostname,
                    s.platforms,
                    s.location.as_ref().unwrap().path
                )
            })
            .collect();
        assert_eq!(
            places,
            [
                "vc1 vc1.example.org [\"vsphere\"] /etc/ca.pem",
                "eng1 eng1.example.org [] /srv/ca.pem"
            ]
        );
        let one = ask(pb::InventoryQuery {
            agent: "eng1".into(),
            with_der: true,
            ..Default::default()
        });
        assert_eq!(one.items.len(), 1);
        assert_eq!(one.items[0].seen.len(), 1);
        assert_eq!(one.items[0].certificate.as_ref().unwrap().der, der);
        // Pages: one item each, the token carried over.
        let first = ask(pb::InventoryQuery {
            page_size: 1,
            ..Default::default()
        });
        let second = ask(pb::InventoryQuery {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        });
        assert_eq!((first.items.len(), second.items.len()), (1, 1));
        assert!(second.next_page_token.is_empty());
        assert_ne!(first.items[0], second.items[0]);
        // A fingerprint prefix: only its run of keys, paged like the rest.
        let fps = |l: &pb::InventoryList| -> Vec<String> {
            l.items
                .iter()
                .map(|i| i.certificate.as_ref().unwrap().fingerprint_sha256.clone())
                .collect()
        };
        for prefix in ["e", &ca_fp[..1], "0", "ee", "f"] {
            let mut got = Vec::new();
            let mut token = String::new();
            loop {
                let page = ask(pb::InventoryQuery {
                    fingerprint: prefix.into(),
                    page_size: 1,
                    page_token: token,
                    ..Default::default()
                });
                got.extend(fps(&page));
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            let want: Vec<String> = [&ca_fp, &leaf_fp]
                .into_iter()
                .filter(|f| f.starts_with(prefix))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(got, want, "prefix {prefix}");
        }
    }

    /// An answer most urgent first, read in pages of three: expired, then expiring (each
    /// under its own role's window: the STS signing certificate 60 days out is expiring, a
    /// file 60 days out is not), then the rest, each by expiry then fingerprint, every
    /// certificate once; the same for one agent's view and with `--expiring-within`; a token
    /// the controller did not write is refused with a message naming it.
    #[test]
    fn answers_most_urgent_first_page_by_page() {
        use prost::Message as _;
        let (_dir, fleet) = crate::server::test_fleet();
        for (id, name) in [("a1", "vc1"), ("a2", "eng1")] {
            let agent = test_agent(id, name, &format!("{name}.example.org"), &[]);
            fleet.store.put("agents", id, &agent).unwrap();
        }
        let day = 86_400;
        let t = now();
        // (fingerprint's first byte, role, expiry, agents)
        let fleet_certs: Vec<(u8, &str, i64, &[&str])> = vec![
            (0x01, "file.server", t + 400 * day, &["a1"]),
            (0x02, "vsphere.sts_signing", t + 60 * day, &["a1"]),
            (0x03, "file.server", t + 60 * day, &["a1", "a2"]),
            (0x04, "file.server", t - 3 * day, &["a2"]),
            (0x05, "file.server", t + 10 * day, &["a1"]),
            (0x06, "file.server", t - 3 * day, &["a1"]),
            (0x07, "file.server", t + 10 * day, &["a2"]),
            (0x08, "file.server", t + 2000 * day, &["a1"]),
            (0x09, "vsphere.sts_signing", t - 400 * day, &["a2"]),
            (0x0a, "file.server", t + 95 * day, &["a1"]),
        ];
        for agent in ["a1", "a2"] {
            let certificates = fleet_certs
                .iter()
                .filter(|c| c.3.contains(&agent))
                .map(|&(b, role, not_after, _)| pb::CertificateRecord {
                    fingerprint_sha256: format!("{b:02x}").repeat(32),
                    subject: format!("CN={b}"),
                    not_after,
                    role: role.into(),
                    locations: vec![pb::Location {
                        kind: "file".into(),
                        path: format!("/etc/{b}.pem"),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect();
            let report = pb::InventoryReport {
                full: true,
                certificates,
                ..Default::default()
            };
            apply(&fleet, agent, report, 100).unwrap();
        }
        let read_all = |q: pb::InventoryQuery| -> Vec<u8> {
            let mut order = Vec::new();
            let mut q = pb::InventoryQuery {
                by_urgency: true,
                page_size: 3,
                ..q
            };
            loop {
                let sent = query(&fleet, &q).unwrap();
                assert!(sent.by_urgency, "the answer says its order");
                let page = pb::InventoryList::decode(sent.encode_to_vec().as_slice()).unwrap();
                assert!(page.items.len() <= 3);
                order.extend(page.items.iter().map(|i| {
                    u8::from_str_radix(&i.certificate.as_ref().unwrap().fingerprint_sha256[..2], 16)
                        .unwrap()
                }));
                if page.next_page_token.is_empty() {
                    return order;
                }
                q.page_token = page.next_page_token;
            }
        };
        // Expired by expiry (0x09 long ago, then 0x04 and 0x06 at the same time, by
        // fingerprint), expiring (0x05, 0x07 in ten days, the STS in 60: its role warns 90 days
        // ahead), then the rest (the file 60 days out, 95, 400, 2000).
        assert_eq!(
            read_all(pb::InventoryQuery::default()),
            [0x09, 0x04, 0x06, 0x05, 0x07, 0x02, 0x03, 0x0a, 0x01, 0x08]
        );
        assert_eq!(
            read_all(pb::InventoryQuery {
                agent: "vc1".into(),
                ..Default::default()
            }),
            [0x06, 0x05, 0x02, 0x03, 0x0a, 0x01, 0x08]
        );
        assert_eq!(
            read_all(pb::InventoryQuery {
                expiring_within_secs: 61 * day as u64,
                ..Default::default()
            }),
            [0x09, 0x04, 0x06, 0x05, 0x07, 0x02, 0x03]
        );
        assert_eq!(
            read_all(pb::InventoryQuery {
                fingerprint: "0".into(),
                role: "file".into(),
                ..Default::default()
            }),
            [0x04, 0x06, 0x05, 0x07, 0x03, 0x0a, 0x01, 0x08]
        );
        // One page of everything; without `by_urgency`, fingerprint order as before.
        let whole = query(
            &fleet,
            &pb::InventoryQuery {
                by_urgency: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(whole.next_page_token.is_empty());
        assert!(
            !query(&fleet, &pb::InventoryQuery::default())
                .unwrap()
                .by_urgency
        );
        for token in [
            "01010101",
            "u1:x:0:5:ab",
            "u1:5:3:5:ab",
            "u1:5:0:ab",
            "u2:5:0:5:ab",
            "u1:9223372036854775807:2:9223372036854775807:",
        ] {
            let got = query(
                &fleet,
                &pb::InventoryQuery {
                    by_urgency: true,
                    page_token: token.into(),
                    ..Default::default()
                },
            );
            if token.starts_with("u1:9223") {
                // Well-formed, at the end of time: nothing after it, and no panic.
                assert!(got.unwrap().next_page_token.is_empty());
                continue;
            }
            let e = got.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{token}");
            assert!(e.message().contains(token), "{}", e.message());
        }
    }

    /// A restarted controller meets every agent reporting at once: the index is built from the
    /// store once, however many first users arrive together (each built its own copy before).
    #[test]
    fn concurrent_first_users_build_the_index_once() {
        let (_dir, fleet) = crate::server::test_fleet();
        for a in 0..50 {
            let mut inv = AgentInventory::default();
            for c in 0..20 {
                let fp = format!("{a:04}{c:060}");
                let record = CertRecord {
                    fingerprint_sha256: fp.clone(),
                    subject: format!("CN=c{c}"),
                    issuer: "CN=ca".into(),
                    serial: "01".into(),
                    sans: vec![],
                    not_before: 0,
                    not_after: 2_000_000_000,
                    key_algorithm: "EC".into(),
                    key_bits: 256,
                    is_ca: false,
                    subject_key_id: String::new(),
                    authority_key_id: String::new(),
                    role: "file.server".into(),
                    locations: vec![],
                    der: vec![],
                };
                inv.certs.insert(
                    fp,
                    StoredCert {
                        record,
                        der_b64: STANDARD.encode([0u8; 600]),
                    },
                );
            }
            fleet
                .store
                .put("inventory", &format!("agent{a:02}"), &inv)
                .unwrap();
            let agent = test_agent(&format!("agent{a:02}"), &format!("a{a}"), "h", &[]);
            fleet
                .store
                .put("agents", &format!("agent{a:02}"), &agent)
                .unwrap();
        }
        let go = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    go.wait();
                    let snap = fleet.inventory.snapshot(&fleet).unwrap();
                    assert_eq!(snap.certificates, 1000);
                });
            }
        });
        assert_eq!(fleet.inventory.builds(), 1);
    }

    /// Inventory pages and listings read the agent records from the directory: decoded once
    /// per change of the agents tree, never stale after one.
    #[test]
    fn the_agent_directory_follows_the_agents_tree() {
        let (_dir, fleet) = crate::server::test_fleet();
        let agent = |id: &str, name: &str| test_agent(id, name, "h", &[]);
        fleet
            .store
            .put("agents", "a1", &agent("a1", "vc1"))
            .unwrap();
        let first = fleet.agent_directory().unwrap();
        assert_eq!(first["a1"].name, "vc1");
        // Nothing changed in the tree (an inventory write is another tree): the same copy.
        fleet
            .store
            .put("inventory", "a1", &AgentInventory::default())
            .unwrap();
        assert!(Arc::ptr_eq(&first, &fleet.agent_directory().unwrap()));
        // A rename and a new agent are seen at once.
        fleet
            .store
            .put("agents", "a1", &agent("a1", "vc1-renamed"))
            .unwrap();
        fleet
            .store
            .put("agents", "a2", &agent("a2", "vc2"))
            .unwrap();
        let now = fleet.agent_directory().unwrap();
        assert_eq!((now["a1"].name.as_str(), now.len()), ("vc1-renamed", 2));
        fleet.store.remove("agents", "a2").unwrap();
        assert!(!fleet.agent_directory().unwrap().contains_key("a2"));
    }

    /// Callers that miss the directory together (a listing's four concurrent prefixes) wait
    /// for one decode instead of each decoding every agent record.
    #[test]
    fn callers_that_miss_the_agent_directory_together_share_one_decode() {
        let (_dir, fleet) = crate::server::test_fleet();
        for n in 0..3000 {
            let id = format!("a{n}");
            let record = test_agent(&id, &format!("host-{n}"), "h", &[]);
            fleet.store.put("agents", &id, &record).unwrap();
        }
        let before = fleet.agent_cache.decodes();
        let start = std::sync::Barrier::new(8);
        let dirs: Vec<crate::fleet::AgentDirectory> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        fleet.agent_directory().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(fleet.agent_cache.decodes() - before, 1);
        assert_eq!(dirs[0].len(), 3000);
        assert!(dirs.iter().all(|d| Arc::ptr_eq(d, &dirs[0])));
    }

    #[test]
    fn unknown_values_list_what_is_valid_shortened_with_the_likely_typo() {
        let names: Vec<String> = (1..=40).map(|i| format!("vcsa-{i:02}")).collect();
        let e = unknown_value("--agent", "vcsa01", &names);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(m.contains("did you mean \"vcsa-01\"?"), "{m}");
        assert!(m.contains("vcsa-12") && !m.contains("vcsa-13"), "{m}");
        assert!(m.ends_with("and 28 more"), "{m}");
        assert!(
            unknown_value("--param", "x", &[])
                .message()
                .ends_with("valid: none")
        );
    }

    #[test]
    fn roles_platforms_and_agents() {
        assert!(check_platform("vsphere").is_ok() && check_platform("").is_ok());
        let e = check_platform("vshpere").unwrap_err();
        assert!(
            e.message().contains("did you mean \"vsphere\""),
            "{}",
            e.message()
        );
        let none: [&str; 0] = [];
        // The catalogue: exact names and families (`.`-separated prefixes).
        for ok in [
            "vsphere",
            "vsphere.machine_ssl",
            "ovirt.node",
            "vsphere.solution_user",
        ] {
            assert!(check_role(ok, none, false).is_ok(), "{ok}");
        }
        // Reported roles and their families.
        assert!(
            check_role(
                "vsphere.vecs.BACKUP",
                ["vsphere.vecs.BACKUP_STORE.x"],
                false
            )
            .is_err()
        );
        assert!(check_role("vsphere.vecs.X", ["vsphere.vecs.X.a"], false).is_ok());
        // Configured families: accepted by inventory queries, not by plans.
        assert!(check_role("file.web", none, true).is_ok());
        let e = check_role("file.web", ["file.webs"], false).unwrap_err();
        assert!(
            e.message().contains("did you mean \"file.webs\""),
            "{}",
            e.message()
        );
        let e = check_role("vsphere.machne_ssl", none, true).unwrap_err();
        assert!(
            e.message().contains("did you mean \"vsphere.machine_ssl\""),
            "{}",
            e.message()
        );
    }
}
