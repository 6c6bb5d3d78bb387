//! Prometheus metrics.
//!
//! Two parts, rendered separately. Process counters and connection statistics live in
//! [`Metrics`] and are encoded fresh on every scrape (they are a handful of atomics). The fleet
//! part (certificates, agents, plans, policies) is rendered by [`render_fleet`] from a
//! [`FleetCerts`] source: in the controller the in-memory inventory index
//! ([`crate::inventory::Index::with_certs`]), never the stored inventory documents (decoding
//! them, DER in base64, took seconds and hundreds of MB at 100,000 certificates). It is still a
//! pass over every certificate, so the HTTP side runs it on a blocking thread and keeps the
//! text for [`SNAPSHOT_MAX_AGE`], however many scrapers ask (see `http.rs`).
//!
//! Certificate series come in two shapes, chosen with `certfleet serve --metrics-per-certificate`:
//! - *aggregated* (the default, a few series per platform, role and agent whatever the fleet's
//!   size): `certfleet_certificates{platform,role,expiry}` counts per expiry bucket,
//!   `certfleet_certificates_lifetime_left{platform,role,le}` counts of certificates with at most
//!   that fraction of their lifetime left, and `certfleet_agent_earliest_not_after_seconds`
//!   (pins are always counted per agent: `certfleet_pins`, `certfleet_pin_stale`), and for
//!   certificates another renewer owns `certfleet_certificates_owned{platform,role,owner}` and
//!   `certfleet_certificates_renewal_overdue{platform,role,owner}`;
//! - *per certificate*: additionally the x509-certificate-exporter's own series
//!   (`x509_cert_not_after`, `x509_cert_not_before`, `x509_cert_expired`, with its labels
//!   `serial_number` in decimal, `issuer_CN`, `subject_CN`, `issuer_O`, …, `filepath`,
//!   `filename`) plus `agent`, `host`, `platform`, `role`, `location` and `owner` (when one is
//!   known), so dashboards built
//!   for that exporter work unchanged (labels after enix/x509-certificate-exporter
//!   `internal/collector.go`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use certfleet_common::model::{CertRecord, Location, Pin, pin_state};
use certfleet_common::roles;

use crate::fleet::{AgentRecord, AgentState};
use crate::plan::{Plan, PlanState, StepState};
use crate::policy::RolePolicy;

/// How long a rendered fleet snapshot is served before it is rendered again.
pub const SNAPSHOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a failed plan stays in the per-plan series after its last activity: long enough to
/// alert and be looked at, not forever (a failed plan is final and stays in the store).
pub const FAILED_PLAN_VISIBLE_SECS: i64 = 7 * 86_400;

/// Label for counters split by kind or result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Kind.
    pub kind: String,
}

/// Labels as an ordered list: the x509 exporter emits only the name parts a certificate has.
type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Process-lifetime counters and the few facts the scrape needs from startup.
#[derive(Default)]
pub struct Metrics {
    enrollments: Family<KindLabel, Counter>,
    rpc_errors: Family<KindLabel, Counter>,
    renewals: Counter,
    per_certificate: AtomicBool,
    controller_cert_not_after: AtomicI64,
    engine_beat: AtomicI64,
}

impl Metrics {
    /// Counts an enrollment attempt by result (`ok`, `bad_token`, `expired_token`, …).
    pub fn enrollment(&self, result: &str) {
        self.enrollments
            .get_or_create(&KindLabel {
                kind: result.to_owned(),
            })
            .inc();
    }

    /// Counts a refused or failed RPC by kind.
    pub fn rpc_error(&self, kind: &str) {
        self.rpc_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an agent certificate renewal.
    pub fn renewal(&self) {
        self.renewals.inc();
    }

    /// Chooses per-certificate series (`--metrics-per-certificate`) over the aggregated default.
    pub fn set_per_certificate(&self, on: bool) {
        self.per_certificate.store(on, Ordering::Relaxed);
    }

    /// Whether per-certificate series are exported.
    pub fn per_certificate(&self) -> bool {
        self.per_certificate.load(Ordering::Relaxed)
    }

    /// Records the not-after of the certificate the controller serves with.
    pub fn set_controller_cert_not_after(&self, not_after: i64) {
        self.controller_cert_not_after
            .store(not_after, Ordering::Relaxed);
    }

    /// Not-after of the controller's certificate (0 until set).
    pub fn controller_cert_not_after(&self) -> i64 {
        self.controller_cert_not_after.load(Ordering::Relaxed)
    }

    /// Called by the rotation engine on every pass of its loop (`/readyz` checks it).
    pub fn engine_beat(&self, now: i64) {
        self.engine_beat.store(now, Ordering::Relaxed);
    }

    /// When the engine last went round its loop (0: never).
    pub fn last_engine_beat(&self) -> i64 {
        self.engine_beat.load(Ordering::Relaxed)
    }

    /// A registry with the process counters, to which scrape-time gauges are added.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("certfleet");
        r.register(
            "enrollments",
            "Agent enrollment attempts by result",
            self.enrollments.clone(),
        );
        r.register(
            "rpc_errors",
            "Refused or failed RPCs by kind",
            self.rpc_errors.clone(),
        );
        r.register(
            "agent_certificate_renewals",
            "Agent certificates renewed over the live link",
            self.renewals.clone(),
        );
        r
    }
}

/// Adds a plain gauge to a scrape registry.
pub fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    r.register(name, help, g);
}

/// A map for a scrape's own passes over 100,000 sightings (agent ids, roles): SipHash, the
/// standard map's, was a fifth of a scrape. Its seed is random per process, and the keys come
/// from enrolled agents.
pub type ScrapeMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One certificate as one agent reported it: what the fleet gauges read of it (its strings
/// live as long as the source, `'a`; its locations are built only for the call, `'l`).
pub struct Sighting<'a, 'l> {
    /// SHA-256 fingerprint.
    pub fingerprint: &'a str,
    /// Subject DN.
    pub subject: &'a str,
    /// Issuer DN.
    pub issuer: &'a str,
    /// Serial number (hex).
    pub serial: &'a str,
    /// Role this agent gave it.
    pub role: &'a str,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// Basic constraints CA flag.
    pub is_ca: bool,
    /// Subject key identifier, hex.
    pub subject_key_id: &'a str,
    /// Authority key identifier, hex.
    pub authority_key_id: &'a str,
    /// Where this agent saw it (built only when asked: per-certificate series).
    pub locations: &'l dyn Fn() -> Vec<Location>,
    /// Who renews it as this agent sees it (`""`: nobody known; see `inventory::owner`).
    pub owner: &'a str,
    /// From when it counts as not renewed in time by its owner (`i64::MAX`: never).
    pub overdue_at: i64,
}

/// Every certificate every agent reported, as the fleet gauges read them. The controller's
/// source is the inventory index; a map of records per agent is the same data as the stored
/// documents hold it (what the gauges were computed from before the index).
pub trait FleetCerts {
    /// Calls `f(agent id, sighting)` once per certificate per agent that reported it (what it
    /// is given lives as long as the source: the CA forecast keeps it, see [`crate::cas::facts`]).
    fn each<'s>(&'s self, f: &mut dyn FnMut(&'s str, &Sighting<'s, '_>));
    /// Calls `f(agent id, pin)` once per pin each agent reported with its last scan.
    fn each_pin(&self, f: &mut dyn FnMut(&str, &Pin));
}

impl FleetCerts for HashMap<String, Vec<CertRecord>> {
    fn each<'s>(&'s self, f: &mut dyn FnMut(&'s str, &Sighting<'s, '_>)) {
        for (agent, certs) in self {
            for c in certs {
                f(
                    agent,
                    &Sighting {
                        fingerprint: &c.fingerprint_sha256,
                        subject: &c.subject,
                        issuer: &c.issuer,
                        serial: &c.serial,
                        role: &c.role,
                        not_before: c.not_before,
                        not_after: c.not_after,
                        is_ca: c.is_ca,
                        subject_key_id: &c.subject_key_id,
                        authority_key_id: &c.authority_key_id,
                        locations: &|| c.locations.clone(),
                        owner: "",
                        overdue_at: i64::MAX,
                    },
                );
            }
        }
    }

    /// Certificate records carry no pins: this source has none.
    fn each_pin(&self, _f: &mut dyn FnMut(&str, &Pin)) {}
}

/// Everything the fleet part of a scrape is computed from (read by the caller).
pub struct FleetView<'a> {
    /// Unix time the snapshot is for.
    pub now: i64,
    /// Every enrolled agent (the records of [`crate::fleet::Fleet::agent_directory`], not copies).
    pub agents: Vec<&'a AgentRecord>,
    /// Certificates per agent (no DER needed).
    pub certs: &'a dyn FleetCerts,
    /// Live heartbeat time per connected agent id.
    pub live: &'a HashMap<String, i64>,
    /// Persisted heartbeat time per agent id (`agent_seen`), for agents not connected.
    pub seen: &'a HashMap<String, i64>,
    /// Every stored plan: headers, with the steps of the plans the per-plan series show (open
    /// ones, and failed ones for [`FAILED_PLAN_VISIBLE_SECS`]; see [`plan_steps_shown`]).
    pub plans: &'a [Plan],
    /// Every renewal policy.
    pub policies: &'a [RolePolicy],
    /// Not-after of the fleet CA certificate.
    pub fleet_ca_not_after: i64,
    /// Not-after of the controller's certificate.
    pub controller_cert_not_after: i64,
    /// Export x509-exporter style series per certificate location.
    pub per_certificate: bool,
}

/// Whether the per-plan series read a plan's steps (the others are counted by their header
/// only, so a scrape loads no step of a finished plan or a dry run).
pub fn plan_steps_shown(state: PlanState) -> bool {
    state == PlanState::Failed || (state != PlanState::DryRun && !state.is_final())
}

/// Expiry buckets of `certfleet_certificates` (upper bounds in days; a certificate is counted in
/// the first that holds it).
const EXPIRY_BUCKETS: &[(&str, i64)] = &[("7d", 7), ("30d", 30), ("90d", 90)];

/// Fractions of lifetime left counted by `certfleet_certificates_lifetime_left` (cumulative).
const LIFETIME_LEFT: &[(&str, f64)] = &[("0.1", 0.1), ("0.2", 0.2), ("0.33", 0.33), ("1", 1.0)];

/// Every value of the `expiry` label, in [`expiry_index`] order.
const EXPIRY_NAMES: [&str; 5] = ["expired", "7d", "30d", "90d", "later"];

/// Index in [`EXPIRY_NAMES`] of the bucket holding a certificate.
fn expiry_index(not_after: i64, now: i64) -> usize {
    if not_after <= now {
        return 0;
    }
    EXPIRY_BUCKETS
        .iter()
        .position(|(_, days)| not_after - now <= days * 86_400)
        .map_or(EXPIRY_NAMES.len() - 1, |i| i + 1)
}

#[cfg(test)]
fn expiry_bucket(not_after: i64, now: i64) -> &'static str {
    EXPIRY_NAMES[expiry_index(not_after, now)]
}

/// Certificates of one role: how many per expiry bucket and per lifetime-left threshold.
#[derive(Default)]
struct RoleCounts {
    expiry: [i64; EXPIRY_NAMES.len()],
    lifetime: [i64; LIFETIME_LEFT.len()],
}

/// Fraction of the validity period still ahead (0 when expired; 1 when not yet valid).
fn lifetime_left(not_before: i64, not_after: i64, now: i64) -> f64 {
    let total = (not_after - not_before).max(1) as f64;
    ((not_after - now) as f64 / total).clamp(0.0, 1.0)
}

/// Whether a certificate's role falls under a policy for `role` (the role or a sub-role).
fn in_scope(policy_role: &str, cert_role: &str) -> bool {
    cert_role == policy_role
        || cert_role
            .strip_prefix(policy_role)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The last time anything happened to a plan.
fn last_activity(p: &Plan) -> i64 {
    p.steps
        .iter()
        .map(|s| s.finished_at.max(s.started_at))
        .fold(p.created_at, i64::max)
}

/// Renders the fleet's gauges (certificates, agents, plans, policies, certfleet's own
/// certificates) into a registry without prefix (the x509 names carry none).
pub fn render_fleet(v: &FleetView<'_>) -> Registry {
    let mut r = Registry::default();
    let now = v.now;

    let build: Family<Labels, Gauge> = Family::default();
    build
        .get_or_create(&labels([("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    r.register(
        "certfleet_build_info",
        "certfleet controller build (value 1)",
        build,
    );
    gauge(
        &mut r,
        "certfleet_fleet_ca_not_after_seconds",
        "Not-after of the fleet CA certificate (Unix time)",
        v.fleet_ca_not_after,
    );
    gauge(
        &mut r,
        "certfleet_controller_certificate_not_after_seconds",
        "Not-after of the controller's own TLS certificate (Unix time)",
        v.controller_cert_not_after,
    );

    // Agents: their own certificate, last heartbeat, connection, earliest certificate.
    let mut names: ScrapeMap<&str, &AgentRecord> = ScrapeMap::default();
    for a in v
        .agents
        .iter()
        .copied()
        .filter(|a| a.state != AgentState::Revoked)
    {
        names.insert(a.id.as_str(), a);
    }
    // One pass over the certificates: each agent's earliest, counts per role.
    let mut earliest_of: ScrapeMap<&str, i64> = ScrapeMap::default();
    let mut by_role: ScrapeMap<String, RoleCounts> = ScrapeMap::default();
    // Certificates another renewer owns, and how many of them it has not renewed in time.
    let mut owned: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    v.certs.each(&mut |agent, c| {
        let Some((id, _)) = names.get_key_value(agent) else {
            return;
        };
        if crate::inventory::owner::is_other(c.owner) {
            let e = owned
                .entry((c.role.to_owned(), c.owner.to_owned()))
                .or_default();
            e.0 += 1;
            e.1 += i64::from(c.overdue_at <= now);
        }
        earliest_of
            .entry(*id)
            .and_modify(|e| *e = (*e).min(c.not_after))
            .or_insert(c.not_after);
        if !by_role.contains_key(c.role) {
            by_role.insert(c.role.to_owned(), RoleCounts::default());
        }
        let rc = by_role.get_mut(c.role).expect("just inserted");
        rc.expiry[expiry_index(c.not_after, now)] += 1;
        let left = lifetime_left(c.not_before, c.not_after, now);
        for (i, (_, f)) in LIFETIME_LEFT.iter().enumerate() {
            if left <= *f {
                rc.lifetime[i] += 1;
            }
        }
    });
    let agent_cert: Family<Labels, Gauge> = Family::default();
    let last_seen: Family<Labels, Gauge> = Family::default();
    let connected: Family<Labels, Gauge> = Family::default();
    let earliest: Family<Labels, Gauge> = Family::default();
    let mut missing = 0i64;
    for a in names.values() {
        let l = labels([("agent", &a.name), ("host", &a.hostname)]);
        agent_cert.get_or_create(&l).set(a.cert_not_after);
        let live = v.live.get(&a.id);
        last_seen
            .get_or_create(&l)
            .set(crate::fleet::Fleet::last_seen(
                live.copied(),
                v.seen.get(&a.id).copied().unwrap_or(0),
                a,
            ));
        connected.get_or_create(&l).set(i64::from(live.is_some()));
        if live.is_none() && a.state == AgentState::Active {
            missing += 1;
        }
        if let Some(first) = earliest_of.get(a.id.as_str()) {
            earliest.get_or_create(&l).set(*first);
        }
    }
    r.register(
        "certfleet_agent_certificate_not_after_seconds",
        "Not-after of each agent's own fleet certificate (Unix time)",
        agent_cert,
    );
    r.register(
        "certfleet_agent_last_seen_seconds",
        "Last heartbeat of each agent (Unix time; live while connected)",
        last_seen,
    );
    r.register(
        "certfleet_agent_connected",
        "1 while the agent has a live stream to this controller",
        connected,
    );
    gauge(
        &mut r,
        "certfleet_agents_enrolled",
        "Agents enrolled and not revoked",
        names.len() as i64,
    );
    gauge(
        &mut r,
        "certfleet_agents_missing",
        "Active agents without a live stream",
        missing,
    );
    r.register(
        "certfleet_agent_earliest_not_after_seconds",
        "Earliest not-after among the certificates each agent reports (Unix time)",
        earliest,
    );

    // Certificates, aggregated. Every bucket of every role present, zeros included: a count
    // that drops to nothing must read 0, not vanish (an alert on a vanished series would
    // silently clear).
    let counts: Family<Labels, Gauge> = Family::default();
    let lifetime: Family<Labels, Gauge> = Family::default();
    for (role, rc) in &by_role {
        let platform = roles::lookup(role).platform;
        for (i, b) in EXPIRY_NAMES.iter().enumerate() {
            counts
                .get_or_create(&labels([
                    ("platform", platform),
                    ("role", role),
                    ("expiry", b),
                ]))
                .set(rc.expiry[i]);
        }
        for (i, (le, _)) in LIFETIME_LEFT.iter().enumerate() {
            lifetime
                .get_or_create(&labels([
                    ("platform", platform),
                    ("role", role),
                    ("le", le),
                ]))
                .set(rc.lifetime[i]);
        }
    }
    r.register(
        "certfleet_certificates",
        "Certificates (per agent view) by platform, role and expiry bucket (expired, within 7d/30d/90d, later)",
        counts,
    );
    r.register(
        "certfleet_certificates_lifetime_left",
        "Certificates (per agent view) with at most the fraction `le` of their lifetime left",
        lifetime,
    );

    // Owned by another renewer (vCenter's auto-renewal, a declared renewer, an unknown one):
    // every (role, owner) seen, overdue zeros included, so an overdue count that drops reads 0.
    let owned_count: Family<Labels, Gauge> = Family::default();
    let overdue: Family<Labels, Gauge> = Family::default();
    for ((role, owner), (n, late)) in &owned {
        let l = labels([
            ("platform", roles::lookup(role).platform),
            ("role", role),
            ("owner", owner),
        ]);
        owned_count.get_or_create(&l).set(*n);
        overdue.get_or_create(&l).set(*late);
    }
    r.register(
        "certfleet_certificates_owned",
        "Certificates (per agent view) another renewer owns, by platform, role and owner",
        owned_count,
    );
    r.register(
        "certfleet_certificates_renewal_overdue",
        "Certificates (per agent view) another renewer owns and did not renew in time (past its own renewal point plus grace)",
        overdue,
    );

    register_pins(&mut r, v, &names);

    if v.per_certificate {
        register_per_certificate(&mut r, v, &names);
    }

    // Plans: counts by state (every state, zeros included) and per open or recent plan.
    let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
    for s in [
        PlanState::DryRun,
        PlanState::AwaitingApproval,
        PlanState::Approved,
        PlanState::Running,
        PlanState::WaitingCanary,
        PlanState::Paused,
        PlanState::Succeeded,
        PlanState::Failed,
        PlanState::Aborted,
        PlanState::RollingBack,
        PlanState::RolledBack,
    ] {
        by_state.insert(s.as_str(), 0);
    }
    let plan_created: Family<Labels, Gauge> = Family::default();
    let plan_steps: Family<Labels, Gauge> = Family::default();
    let mut steps_failed = 0i64;
    for p in v.plans {
        *by_state.entry(p.state.as_str()).or_default() += 1;
        let visible = match p.state {
            PlanState::Failed => now - last_activity(p) <= FAILED_PLAN_VISIBLE_SECS,
            PlanState::DryRun => false,
            s => !s.is_final(),
        };
        if !visible {
            continue;
        }
        plan_created
            .get_or_create(&labels([
                ("plan", &p.id),
                ("recipe", &p.recipe),
                ("origin", &p.origin),
                ("state", p.state.as_str()),
            ]))
            .set(p.created_at);
        for st in [
            StepState::Pending,
            StepState::Dispatched,
            StepState::Succeeded,
            StepState::Failed,
            StepState::Skipped,
            StepState::RolledBack,
        ] {
            let n = p.steps.iter().filter(|s| s.state == st).count() as i64;
            if st == StepState::Failed {
                steps_failed += n;
            }
            plan_steps
                .get_or_create(&labels([
                    ("plan", &p.id),
                    ("recipe", &p.recipe),
                    ("state", st.as_str()),
                ]))
                .set(n);
        }
    }
    let plans: Family<Labels, Gauge> = Family::default();
    for (s, n) in by_state {
        plans.get_or_create(&labels([("state", s)])).set(n);
    }
    r.register("certfleet_plans", "Stored plans by state", plans);
    r.register(
        "certfleet_plan_created_seconds",
        "Creation time of each open plan (and of failed ones for 7 days), labelled with its state",
        plan_created,
    );
    r.register(
        "certfleet_plan_steps",
        "Steps of each open plan (and of failed ones for 7 days) by step state",
        plan_steps,
    );
    gauge(
        &mut r,
        "certfleet_plan_steps_failed",
        "Failed steps across the plans in certfleet_plan_steps",
        steps_failed,
    );

    // Policies: their threshold, the certificates past it, and whether the next tick plans.
    let renew_within: Family<Labels, Gauge> = Family::default();
    let due: Family<Labels, Gauge> = Family::default();
    let earliest_in_scope: Family<Labels, Gauge> = Family::default();
    let will_fire: Family<Labels, Gauge> = Family::default();
    for pol in v.policies {
        let l = labels([("role", &pol.role)]);
        renew_within
            .get_or_create(&l)
            .set(i64::try_from(pol.renew_within_secs).unwrap_or(i64::MAX));
        let mut n_due = 0i64;
        let mut first: Option<i64> = None;
        v.certs.each(&mut |agent, c| {
            if !names.contains_key(agent) || !in_scope(&pol.role, c.role) {
                return;
            }
            first = Some(first.map_or(c.not_after, |f| f.min(c.not_after)));
            if c.not_after - now <= pol.renew_within_secs as i64 {
                n_due += 1;
            }
        });
        due.get_or_create(&l).set(n_due);
        if let Some(f) = first {
            earliest_in_scope.get_or_create(&l).set(f);
        }
        let origin = format!("policy:{}", pol.role);
        let open = v
            .plans
            .iter()
            // As `policy::tick` decides: an unfinished plan, or one that failed within the hour.
            .filter(|p| !p.state.is_final() || p.state == PlanState::Failed)
            .any(|p| p.origin == origin && (!p.state.is_final() || p.created_at > now - 3600));
        let planned = !roles::lookup(&pol.role).recipe.is_empty();
        will_fire
            .get_or_create(&l)
            .set(i64::from(n_due > 0 && !open && planned));
    }
    r.register(
        "certfleet_policy_renew_within_seconds",
        "Each policy's renewal threshold",
        renew_within,
    );
    r.register(
        "certfleet_policy_certificates_due",
        "Certificates past their policy's renewal threshold (per agent view)",
        due,
    );
    r.register(
        "certfleet_policy_earliest_not_after_seconds",
        "Earliest not-after among the certificates a policy covers (Unix time)",
        earliest_in_scope,
    );
    r.register(
        "certfleet_policy_will_fire",
        "1 when the policy's next evaluation creates a plan",
        will_fire,
    );
    r
}

/// The x509-certificate-exporter's series, one per certificate location and agent.
/// Pins (see `crate::pins`): `certfleet_pins{agent,host,source,state}` counts, every state of
/// every (agent, source) present with zeros included (a stale count that drops to 0 clears the
/// alert instead of vanishing), and `certfleet_pin_stale{agent,host,source,name,cert_role}` = 1
/// for each stale pin, so an alert can name what breaks. A VCSA has a few dozen pins: the
/// series stay few whatever the fleet's size.
fn register_pins(r: &mut Registry, v: &FleetView<'_>, names: &ScrapeMap<&str, &AgentRecord>) {
    const STATES: [&str; 3] = [pin_state::MATCH, pin_state::STALE, pin_state::UNKNOWN];
    let mut counts: BTreeMap<(&str, String), [i64; 3]> = BTreeMap::new();
    let stale: Family<Labels, Gauge> = Family::default();
    v.certs.each_pin(&mut |agent, pin| {
        let Some((id, _)) = names.get_key_value(agent) else {
            return;
        };
        let per_state = counts.entry((*id, pin.source.clone())).or_default();
        match STATES.iter().position(|s| *s == pin.state) {
            Some(i) => per_state[i] += 1,
            // An agent newer than this controller may know more states: counted as unknown.
            None => per_state[2] += 1,
        }
        if pin.state == pin_state::STALE {
            let a = names[*id];
            stale
                .get_or_create(&labels([
                    ("agent", &a.name),
                    ("host", &a.hostname),
                    ("source", &pin.source),
                    ("name", &pin.name),
                    ("cert_role", &pin.cert_role),
                ]))
                .set(1);
        }
    });
    let family: Family<Labels, Gauge> = Family::default();
    for ((id, source), per_state) in &counts {
        let a = names[*id];
        for (i, state) in STATES.iter().enumerate() {
            family
                .get_or_create(&labels([
                    ("agent", &a.name),
                    ("host", &a.hostname),
                    ("source", source),
                    ("state", state),
                ]))
                .set(per_state[i]);
        }
    }
    r.register(
        "certfleet_pins",
        "Pins reported by each agent (vpx_ext, lookup_service, declared) by state: match, stale (the consumer pins another certificate), unknown",
        family,
    );
    r.register(
        "certfleet_pin_stale",
        "1 for each pin whose consumer pins another certificate than the host holds",
        stale,
    );
}

fn register_per_certificate(
    r: &mut Registry,
    v: &FleetView<'_>,
    agents: &ScrapeMap<&str, &AgentRecord>,
) {
    let not_after: Family<Labels, Gauge> = Family::default();
    let not_before: Family<Labels, Gauge> = Family::default();
    let expired: Family<Labels, Gauge> = Family::default();
    v.certs.each(&mut |id, c| {
        let Some(agent) = agents.get(id) else {
            return;
        };
        let mut base = labels([
            ("agent", &agent.name),
            ("host", &agent.hostname),
            ("platform", roles::lookup(c.role).platform),
            ("role", c.role),
            ("serial_number", &serial_decimal(c.serial)),
        ]);
        if !c.owner.is_empty() {
            base.push(("owner".into(), c.owner.to_owned()));
        }
        for (prefix, dn) in [("issuer", c.issuer), ("subject", c.subject)] {
            for (attr, value) in dn_attributes(dn) {
                base.push((format!("{prefix}_{attr}"), value));
            }
        }
        for loc in (c.locations)() {
            let mut l = base.clone();
            if !loc.path.is_empty() {
                l.push(("filepath".into(), loc.path.clone()));
                let name = loc.path.rsplit('/').next().unwrap_or(&loc.path);
                l.push(("filename".into(), name.to_owned()));
            }
            l.push(("location".into(), loc.describe()));
            not_after.get_or_create(&l).set(c.not_after);
            not_before.get_or_create(&l).set(c.not_before);
            expired
                .get_or_create(&l)
                .set(i64::from(c.not_after <= v.now));
        }
    });
    r.register(
        "x509_cert_not_after",
        "Indicates the certificate's not after timestamp",
        not_after,
    );
    r.register(
        "x509_cert_not_before",
        "Indicates the certificate's not before timestamp",
        not_before,
    );
    r.register(
        "x509_cert_expired",
        "Indicates if the certificate is expired",
        expired,
    );
}

/// The serial number in decimal, as the x509 exporter prints it (Go's `big.Int.String()`); the
/// inventory keeps it in uppercase hex. An unparsable value is passed through.
pub fn serial_decimal(hex: &str) -> String {
    num_bigint::BigUint::parse_bytes(hex.as_bytes(), 16)
        .map_or_else(|| hex.to_owned(), |n| n.to_str_radix(10))
}

/// The first value of each attribute the x509 exporter labels (`C`, `ST`, `L`, `O`, `OU`, `CN`)
/// from a DN as x509-parser prints it (`CN=a, O=b`). A comma inside a value is only a
/// separator when what follows looks like `ATTR=`.
pub fn dn_attributes(dn: &str) -> Vec<(&'static str, String)> {
    const WANTED: [&str; 6] = ["C", "ST", "L", "O", "OU", "CN"];
    let mut parts: Vec<String> = Vec::new();
    for piece in dn.split(", ") {
        let starts_attr = piece.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        });
        match parts.last_mut() {
            Some(last) if !starts_attr => {
                last.push_str(", ");
                last.push_str(piece);
            }
            _ => parts.push(piece.to_owned()),
        }
    }
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for p in parts {
        let Some((k, val)) = p.split_once('=') else {
            continue;
        };
        if let Some(w) = WANTED.iter().find(|w| **w == k)
            && !out.iter().any(|(a, _)| a == w)
        {
            out.push((w, val.to_owned()));
        }
    }
    out
}

/// Encodes a registry in the OpenMetrics text format.
pub fn encode(r: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, r)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_decimal_like_the_exporter() {
        assert_eq!(serial_decimal("0A"), "10");
        assert_eq!(
            serial_decimal("7D3A0B1C9F2E4D5A6B7C8D9E0F1A2B3C4D5E6F70"),
            "714918257549133905714975951168839476315795910512"
        );
        assert_eq!(serial_decimal("not hex"), "not hex");
    }

    #[test]
    fn dn_attributes_keep_commas_inside_values() {
        let a = dn_attributes("CN=vcsa-01.lab.local, O=Acme\\, Inc, OU=IT, C=US, DC=local");
        assert_eq!(
            a,
            vec![
                ("CN", "vcsa-01.lab.local".to_owned()),
                ("O", "Acme\\, Inc".to_owned()),
                ("OU", "IT".to_owned()),
                ("C", "US".to_owned()),
            ]
        );
        assert!(dn_attributes("").is_empty());
    }

    #[test]
    fn buckets() {
        let now = 1_000_000_000;
        assert_eq!(expiry_bucket(now, now), "expired");
        assert_eq!(expiry_bucket(now + 86_400, now), "7d");
        assert_eq!(expiry_bucket(now + 8 * 86_400, now), "30d");
        assert_eq!(expiry_bucket(now + 31 * 86_400, now), "90d");
        assert_eq!(expiry_bucket(now + 91 * 86_400, now), "later");
        assert!(in_scope(
            "vsphere.solution_user",
            "vsphere.solution_user.wcp"
        ));
        assert!(!in_scope("vsphere.solution_user", "vsphere.solution_users"));
    }

    /// A store holding what a small fleet reported, plans and a policy: agents sharing a CA,
    /// roles of several platforms, a revoked agent, an open, a finished and a dry-run plan.
    fn fixture_fleet() -> (tempfile::TempDir, std::sync::Arc<crate::fleet::Fleet>) {
        use certfleet_common::proto as pb;
        let (dir, fleet) = crate::server::test_fleet();
        let now = certfleet_common::model::now();
        let day = 86_400;
        let cert = |fp: &str, subject: &str, role: &str, days: i64, ca: bool, path: &str| {
            pb::CertificateRecord {
                fingerprint_sha256: fp.into(),
                subject: format!("CN={subject}, O=Acme"),
                issuer: if ca {
                    format!("CN={subject}, O=Acme")
                } else {
                    "CN=root, O=Acme".into()
                },
                serial: format!("{:X}", fp.len() * 7919 + subject.len()),
                not_before: now - 100 * day,
                not_after: now + days * day + 3600,
                is_ca: ca,
                subject_key_id: if ca { "aa11".into() } else { String::new() },
                authority_key_id: "aa11".into(),
                role: role.into(),
                locations: vec![pb::Location {
                    kind: "file".into(),
                    path: path.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let agents = [
            ("a1", "vc1", AgentState::Active),
            ("a2", "esx1", AgentState::Active),
            ("a3", "gone", AgentState::Revoked),
            ("a4", "quiet", AgentState::Active),
        ];
        for (id, name, state) in agents {
            let rec: AgentRecord = serde_json::from_value(serde_json::json!({
                "id": id, "name": name, "hostname": format!("{name}.lab"), "platforms": [],
                "version": "1", "state": state, "enrolled_at": 1, "last_seen": now - 60,
                "cert_not_after": now + 30 * day, "cert_fingerprint": "", "key_id": "",
                "labels": {}, "cas": [], "renewable": [], "superseded": [],
            }))
            .unwrap();
            fleet.store.put("agents", id, &rec).unwrap();
        }
        let reports = [
            (
                "a1",
                vec![
                    cert(
                        "ca",
                        "root",
                        "vsphere.vmca_root",
                        3000,
                        true,
                        "/etc/root.pem",
                    ),
                    cert("m1", "vc1", "vsphere.machine_ssl", 5, false, "/etc/m1.pem"),
                    cert("f1", "web", "file.web", -3, false, "/etc/web.pem"),
                ],
            ),
            (
                "a2",
                vec![
                    // The same CA, seen under a file role by the second agent.
                    cert("ca", "root", "file.trust", 3000, true, "/etc/ssl/root.pem"),
                    cert("e1", "esx1", "vsphere.esxi_host", 45, false, "/etc/rui.crt"),
                    cert(
                        "e2",
                        "esx1b",
                        "vsphere.esxi_host",
                        200,
                        false,
                        "/etc/rui2.crt",
                    ),
                ],
            ),
            (
                "a3",
                vec![cert("g1", "gone", "vsphere.esxi_host", 20, false, "/x.pem")],
            ),
        ];
        for (id, certs) in reports {
            let report = pb::InventoryReport {
                full: true,
                certificates: certs,
                scanned_at: now,
                ..Default::default()
            };
            crate::inventory::apply(&fleet, id, report, 1000).unwrap();
        }
        let policy = RolePolicy {
            role: "vsphere.esxi_host".into(),
            renew_within_secs: 60 * day as u64,
            window: String::new(),
            window_secs: 0,
            auto_approve: false,
            max_parallel: 1,
        };
        fleet.store.put("policies", &policy.role, &policy).unwrap();
        for (id, state, steps) in [
            ("p-open", PlanState::Running, 6),
            ("p-done", PlanState::Succeeded, 4),
            ("p-dry", PlanState::DryRun, 3),
            ("p-failed", PlanState::Failed, 2),
        ] {
            let mut p = crate::plan::storage::tests::plan(id, steps, state);
            p.created_at = now - 600;
            p.steps[0].state = StepState::Succeeded;
            p.steps[1].state = if state == PlanState::Failed {
                StepState::Failed
            } else {
                StepState::Dispatched
            };
            p.steps[1].started_at = now - 30;
            crate::plan::storage::save(&fleet.store, &p).unwrap();
        }
        (dir, fleet)
    }

    /// The fleet part as it was rendered before the index: every inventory document and every
    /// plan decoded in full.
    fn render_from_documents(fleet: &crate::fleet::Fleet, per_certificate: bool) -> String {
        let all = crate::inventory::all(fleet).unwrap();
        let mut agents = Vec::new();
        let mut inventory: HashMap<String, Vec<CertRecord>> = HashMap::new();
        for (a, inv) in all {
            inventory.insert(a.id.clone(), inv.records().cloned().collect());
            agents.push(a);
        }
        let names: HashMap<&str, &str> = agents
            .iter()
            .map(|a| (a.id.as_str(), a.name.as_str()))
            .collect();
        let ca_facts = crate::cas::facts(&inventory, &names, fleet.ca.cert_pem());
        let plans = crate::plan::storage::all(&fleet.store).unwrap();
        let policies: Vec<RolePolicy> = fleet.store.list("policies").unwrap();
        let view = FleetView {
            now: certfleet_common::model::now(),
            agents: agents.iter().collect(),
            certs: &inventory,
            live: &HashMap::new(),
            seen: &HashMap::new(),
            plans: &plans,
            policies: &policies,
            fleet_ca_not_after: crate::self_cert::ca_not_after(fleet.ca.cert_pem()).unwrap_or(0),
            controller_cert_not_after: fleet.metrics.controller_cert_not_after(),
            per_certificate,
        };
        let mut r = render_fleet(&view);
        crate::cas::register_metrics(&ca_facts, &mut r);
        encode(&r).unwrap()
    }

    /// Series in a stable order (a family's series come out in hash order).
    fn sorted(text: &str) -> Vec<String> {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_fleet_part_renders_from_the_index_as_it_did_from_the_documents() {
        let (_dir, fleet) = fixture_fleet();
        for per_certificate in [false, true] {
            fleet.metrics.set_per_certificate(per_certificate);
            let expected = render_from_documents(&fleet, per_certificate);
            let got = crate::http::render_fleet_snapshot(&fleet).unwrap();
            assert_eq!(
                sorted(&got),
                sorted(&expected),
                "per_certificate={per_certificate}"
            );
            // The fixture is not trivially empty.
            for series in [
                r#"certfleet_certificates{platform="vsphere",role="vsphere.esxi_host",expiry="90d"} 1"#,
                r#"certfleet_certificates{platform="vsphere",role="vsphere.machine_ssl",expiry="7d"} 1"#,
                r#"certfleet_policy_certificates_due{role="vsphere.esxi_host"} 1"#,
                r#"certfleet_plans{state="dry_run"} 1"#,
                r#"certfleet_ca_capped_leaves{"#,
            ] {
                assert!(got.contains(series), "{series} missing from\n{got}");
            }
            assert_eq!(
                got.contains(r#"x509_cert_not_after{agent="esx1""#),
                per_certificate,
                "{got}"
            );
            assert!(
                !got.contains("gone"),
                "a revoked agent's certificates: {got}"
            );
        }
    }

    #[test]
    fn a_scrape_reads_the_index_not_the_inventory_documents() {
        let (_dir, fleet) = fixture_fleet();
        let before = crate::http::render_fleet_snapshot(&fleet).unwrap();
        // Documents gone behind the index's back: a render that decoded them would count
        // nothing; one from the index is unchanged.
        for id in ["a1", "a2", "a3"] {
            fleet.store.remove("inventory", id).unwrap();
        }
        let after = crate::http::render_fleet_snapshot(&fleet).unwrap();
        assert_eq!(sorted(&after), sorted(&before));
        assert!(after.contains(r#"expiry="expired"} 1"#), "{after}");
    }
    /// Certificates with an owner and a renewal point, as the index gives them.
    /// Sightings `(agent, role, owner, overdue_at)`, each of its own certificate.
    struct Owned(
        Vec<(&'static str, &'static str, &'static str, i64)>,
        /// Their fingerprints.
        Vec<String>,
    );

    impl Owned {
        fn new(v: Vec<(&'static str, &'static str, &'static str, i64)>) -> Owned {
            let fps = (0..v.len()).map(|i| format!("{i:064x}")).collect();
            Owned(v, fps)
        }
    }

    impl FleetCerts for Owned {
        fn each<'s>(&'s self, f: &mut dyn FnMut(&'s str, &Sighting<'s, '_>)) {
            for ((agent, role, owner, overdue_at), fp) in self.0.iter().zip(&self.1) {
                f(
                    agent,
                    &Sighting {
                        fingerprint: fp,
                        subject: "CN=esx01.lab",
                        issuer: "CN=CA",
                        serial: "01",
                        role,
                        not_before: 0,
                        not_after: 4_000_000_000,
                        is_ca: false,
                        subject_key_id: "",
                        authority_key_id: "",
                        locations: &|| {
                            vec![Location {
                                kind: "endpoint".into(),
                                path: "esx01.lab:443".into(),
                                ..Default::default()
                            }]
                        },
                        owner,
                        overdue_at: *overdue_at,
                    },
                );
            }
        }

        fn each_pin(&self, _: &mut dyn FnMut(&str, &Pin)) {}
    }

    /// Agent `a1` (`vc1`), last seen at `now`, its certificate valid for a day more.
    fn agent_vc1(now: i64) -> AgentRecord {
        serde_json::from_value(serde_json::json!({
            "id": "a1", "name": "vc1", "hostname": "vc1.lab", "platforms": [],
            "version": "1", "state": "active", "enrolled_at": 1, "last_seen": now,
            "cert_not_after": now + 86_400, "cert_fingerprint": "", "key_id": "",
            "labels": {}, "cas": [], "renewable": [], "superseded": [],
        }))
        .unwrap()
    }

    /// An agent's last-seen gauge: its live heartbeat while connected, else the later of its
    /// persisted heartbeat (`agent_seen`) and its record's own time.
    #[test]
    fn the_last_seen_gauge_is_live_then_persisted_then_the_record() {
        let now = 2_000_000_000;
        let agents = [agent_vc1(now)];
        let gauge = |live: &[(&str, i64)], seen: &[(&str, i64)]| {
            let map = |v: &[(&str, i64)]| -> HashMap<String, i64> {
                v.iter().map(|(k, t)| ((*k).to_owned(), *t)).collect()
            };
            let text = encode(&render_fleet(&FleetView {
                now,
                agents: agents.iter().collect(),
                certs: &Owned::new(vec![]),
                live: &map(live),
                seen: &map(seen),
                plans: &[],
                policies: &[],
                fleet_ca_not_after: 0,
                controller_cert_not_after: 0,
                per_certificate: false,
            }))
            .unwrap();
            text.lines()
                .find(|l| l.starts_with("certfleet_agent_last_seen_seconds{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("no last-seen series in\n{text}"))
        };
        assert_eq!(gauge(&[], &[]), now);
        assert_eq!(gauge(&[], &[("a1", now + 5)]), now + 5);
        assert_eq!(gauge(&[], &[("a1", now - 5)]), now);
        assert_eq!(gauge(&[("a1", now + 9)], &[("a1", now + 5)]), now + 9);
    }

    #[test]
    fn certificates_another_renewer_owns_are_counted_per_owner_with_the_overdue_ones() {
        let now = 2_000_000_000;
        let agents = [agent_vc1(now)];
        let certs = Owned::new(vec![
            (
                "a1",
                "vsphere.esxi_host",
                "platform:vcenter-auto-renew",
                now - 1,
            ),
            (
                "a1",
                "vsphere.esxi_host",
                "platform:vcenter-auto-renew",
                now + 86_400,
            ),
            (
                "a1",
                "vsphere.machine_ssl",
                "platform:vcenter-auto-renew",
                i64::MAX,
            ),
            ("a1", "files.leaf", "certfleet", now - 1),
            ("a1", "files.leaf", "", i64::MAX),
            ("gone", "files.leaf", "unknown-renewer", now - 1),
        ]);
        let render = |per_certificate| {
            encode(&render_fleet(&FleetView {
                now,
                agents: agents.iter().collect(),
                certs: &certs,
                live: &HashMap::new(),
                seen: &HashMap::new(),
                plans: &[],
                policies: &[],
                fleet_ca_not_after: 0,
                controller_cert_not_after: 0,
                per_certificate,
            }))
            .unwrap()
        };
        let got = render(true);
        for series in [
            r#"certfleet_certificates_owned{platform="vsphere",role="vsphere.esxi_host",owner="platform:vcenter-auto-renew"} 2"#,
            r#"certfleet_certificates_renewal_overdue{platform="vsphere",role="vsphere.esxi_host",owner="platform:vcenter-auto-renew"} 1"#,
            r#"certfleet_certificates_owned{platform="vsphere",role="vsphere.machine_ssl",owner="platform:vcenter-auto-renew"} 1"#,
            r#"certfleet_certificates_renewal_overdue{platform="vsphere",role="vsphere.machine_ssl",owner="platform:vcenter-auto-renew"} 0"#,
        ] {
            assert!(got.contains(series), "{series} missing from\n{got}");
        }
        // certfleet's own, nobody's and an unknown agent's certificates are not counted.
        assert!(
            !got.lines()
                .any(|l| l.starts_with("certfleet_certificates_owned{")
                    && l.contains(r#"role="files.leaf""#)),
            "{got}"
        );
        // The per-certificate series carry the owner when one is known.
        assert!(
            got.lines().any(|l| l.starts_with("x509_cert_not_after{")
                && l.contains(r#"owner="platform:vcenter-auto-renew""#)),
            "{got}"
        );
    }

    #[test]
    fn pins_are_counted_per_state_and_each_stale_pin_is_named() {
        use certfleet_common::proto as pb;
        let (_dir, fleet) = crate::server::test_fleet();
        let now = certfleet_common::model::now();
        for (id, name, state) in [("a1", "vc1", "active"), ("a3", "gone", "revoked")] {
            let rec: AgentRecord = serde_json::from_value(serde_json::json!({
                "id": id, "name": name, "hostname": format!("{name}.lab"), "platforms": [],
                "version": "1", "state": state, "enrolled_at": 1, "last_seen": now - 60,
                "cert_not_after": now + 86_400, "cert_fingerprint": "", "key_id": "",
                "labels": {}, "cas": [], "renewable": [], "superseded": [],
            }))
            .unwrap();
            fleet.store.put("agents", id, &rec).unwrap();
        }
        let pin = |source: &str, name: &str, state: &str| pb::Pin {
            source: source.into(),
            name: name.into(),
            cert_role: "vsphere.machine_ssl".into(),
            state: state.into(),
            ..Default::default()
        };
        let report = |pins: Vec<pb::Pin>| pb::InventoryReport {
            full: true,
            scanned_at: now,
            pins,
            ..Default::default()
        };
        crate::inventory::apply(
            &fleet,
            "a1",
            report(vec![
                pin("vpx_ext", "com.vmware.vsan.health", "stale"),
                pin("vpx_ext", "com.vmware.vim.eam", "match"),
                pin(
                    "lookup_service",
                    "cs.identity https://vc1.lab/sts",
                    "unknown",
                ),
            ]),
            1000,
        )
        .unwrap();
        crate::inventory::apply(
            &fleet,
            "a3",
            report(vec![pin("declared", "old-backup-tool", "stale")]),
            1000,
        )
        .unwrap();
        let got = crate::http::render_fleet_snapshot(&fleet).unwrap();
        for series in [
            r#"certfleet_pins{agent="vc1",host="vc1.lab",source="vpx_ext",state="stale"} 1"#,
            r#"certfleet_pins{agent="vc1",host="vc1.lab",source="vpx_ext",state="match"} 1"#,
            r#"certfleet_pins{agent="vc1",host="vc1.lab",source="vpx_ext",state="unknown"} 0"#,
            r#"certfleet_pins{agent="vc1",host="vc1.lab",source="lookup_service",state="stale"} 0"#,
            r#"certfleet_pins{agent="vc1",host="vc1.lab",source="lookup_service",state="unknown"} 1"#,
            r#"certfleet_pin_stale{agent="vc1",host="vc1.lab",source="vpx_ext",name="com.vmware.vsan.health",cert_role="vsphere.machine_ssl"} 1"#,
        ] {
            assert!(got.contains(series), "{series} missing from\n{got}");
        }
        assert!(
            !got.contains("eam\",cert_role"),
            "a matching pin is not stale: {got}"
        );
        assert!(!got.contains("gone"), "a revoked agent's pins: {got}");

        // Re-trusted: the stale count reads 0 (the alert clears) and the named series is gone.
        crate::inventory::apply(
            &fleet,
            "a1",
            report(vec![
                pin("vpx_ext", "com.vmware.vsan.health", "match"),
                pin("vpx_ext", "com.vmware.vim.eam", "match"),
            ]),
            1000,
        )
        .unwrap();
        let got = crate::http::render_fleet_snapshot(&fleet).unwrap();
        assert!(
            got.contains(
                r#"certfleet_pins{agent="vc1",host="vc1.lab",source="vpx_ext",state="stale"} 0"#
            ),
            "{got}"
        );
        assert!(
            got.contains(
                r#"certfleet_pins{agent="vc1",host="vc1.lab",source="vpx_ext",state="match"} 2"#
            ),
            "{got}"
        );
        assert!(!got.contains("certfleet_pin_stale{"), "{got}");
    }
}
