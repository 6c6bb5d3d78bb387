//! Who renews a certificate: certfleet, the platform itself, or someone unknown.
//!
//! Platforms renew some certificates on their own (vCenter 8.0 U3h+ / 9.x auto-renew of ESXi
//! and Machine SSL certificates, NSX 4.2.1 appliance certificates, kubeadm on `upgrade apply`,
//! VCF Operations 60 days before expiry). certfleet must not start a competing plan for those,
//! but must still notice when the renewal did not happen in time. Two signals:
//!
//! * **A renewer fact.** Agents report a health fact of kind [`RENEWER_FACT`] per renewer they
//!   found (a platform setting read by a collector, or a `[[renewers]]` entry declared in the
//!   agent config): `subject` is a role (or role family) or a location path, `state` the
//!   renewer's name, `detail` starts with `lead_days=N;` (how long before expiry it renews) and
//!   optionally `grace_days=N;` (how late it may be, e.g. vCenter's poll interval). Such a
//!   certificate is owned by `platform:<name>`.
//! * **A replacement.** A report puts a new certificate where another one was (same location
//!   kind, path, store and alias; leaves only, since CA bundles reorder) that expires later
//!   than the old one (a renewal; a shorter-lived one names no renewer). If no certfleet plan
//!   step ran on that agent since the previous scan, the new certificate is owned by
//!   [`OWNER_UNKNOWN`]; otherwise by [`OWNER_CERTFLEET`]. The note is kept with the agent's
//!   inventory for as long as the certificate is reported.
//!
//! A certificate owned by another renewer (platform or unknown) is left out of plans unless the
//! operator passes `--param take_over=true`, and is flagged `renewal.overdue` once it is past
//! its renewer's renew point plus grace (the role's warning window when the lead is unknown).

use std::collections::{BTreeMap, HashMap};

use certfleet_common::model::{HealthFact, Location, format_time};
use certfleet_common::roles;
use tonic::Status;

use crate::fleet::{Fleet, internal};
use crate::plan::{StepState, storage};

/// Health fact kind naming a renewer other than certfleet.
pub const RENEWER_FACT: &str = "renewer";
/// Health fact kind of a certificate its renewer did not renew in time.
pub const OVERDUE_FACT: &str = "renewal.overdue";
/// Owner of a certificate a certfleet plan put in place.
pub const OWNER_CERTFLEET: &str = "certfleet";
/// Owner of a certificate replaced while no certfleet plan worked on its agent.
pub const OWNER_UNKNOWN: &str = "unknown-renewer";
/// The plan parameter that lets a plan renew certificates another renewer owns.
pub const TAKE_OVER: &str = "take_over";

/// Whether `owner` is a renewer other than certfleet (its certificates stay out of plans).
pub fn is_other(owner: &str) -> bool {
    !owner.is_empty() && owner != OWNER_CERTFLEET
}

/// A renewer as an agent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewer {
    /// `vcenter-auto-renew`, `kubeadm-upgrade`, `nsx-auto-replace`, …
    pub name: String,
    /// Days before expiry it renews; None when unknown.
    pub lead_days: Option<i64>,
    /// Days it may be late (poll intervals).
    pub grace_days: i64,
}

impl Renewer {
    fn of(f: &HealthFact) -> Renewer {
        let mut r = Renewer {
            name: f.state.clone(),
            lead_days: None,
            grace_days: 0,
        };
        for part in f.detail.split(';') {
            match part.trim().split_once('=') {
                Some(("lead_days", v)) => r.lead_days = v.trim().parse().ok(),
                Some(("grace_days", v)) => r.grace_days = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        r
    }
}

/// The renewer an agent's facts name for a certificate of `role` at `locations`: a renewer fact
/// whose subject is the role, a family above it, or one of the locations' paths.
pub fn platform_renewer(
    health: &[HealthFact],
    role: &str,
    locations: &[Location],
) -> Option<Renewer> {
    health
        .iter()
        .filter(|h| h.kind == RENEWER_FACT && !h.subject.is_empty() && !h.state.is_empty())
        .find(|h| {
            h.subject == role
                || role
                    .strip_prefix(h.subject.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
                || locations.iter().any(|l| l.path == h.subject)
        })
        .map(Renewer::of)
}

/// A certificate's owner on one agent and the time from which it counts as overdue
/// (`i64::MAX` when certfleet or nobody renews it).
pub fn owner_of(
    notes: &BTreeMap<String, String>,
    health: &[HealthFact],
    fingerprint: &str,
    role: &str,
    locations: &[Location],
    not_after: i64,
) -> (String, i64) {
    let (owner, lead, grace) = match platform_renewer(health, role, locations) {
        Some(r) => (format!("platform:{}", r.name), r.lead_days, r.grace_days),
        None => match notes.get(fingerprint) {
            Some(o) => (o.clone(), None, 0),
            None => return (String::new(), i64::MAX),
        },
    };
    if !is_other(&owner) {
        return (owner, i64::MAX);
    }
    let lead = lead.unwrap_or_else(|| i64::from(roles::lookup(role).warn_days));
    (owner, not_after - lead * 86_400 + grace * 86_400)
}

/// A `renewal.overdue` health fact for a certificate past its renewer's renew point.
pub fn overdue_fact(
    agent_name: &str,
    owner: &str,
    role: &str,
    place: &str,
    not_after: i64,
    overdue_at: i64,
) -> HealthFact {
    HealthFact {
        kind: OVERDUE_FACT.into(),
        subject: format!("{agent_name}: {role} {place}"),
        state: "overdue".into(),
        detail: format!(
            "owned by {owner}, which should have renewed it by {}; it expires {} (renew it with --param {TAKE_OVER}=true, or fix the renewer)",
            format_time(overdue_at),
            format_time(not_after)
        ),
        healthy: false,
    }
}

/// A location as "the same place" for replacement detection: everything but the detail (which
/// carries volatile facts such as host state).
pub fn place_key(l: &Location) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        l.kind, l.path, l.store, l.alias
    )
}

/// What the index knew about an agent before a report: leaf certificates by place (places
/// holding several certificates left out) and the owner notes.
#[derive(Default)]
pub struct Prior {
    /// Place key → fingerprint.
    pub places: HashMap<String, String>,
    /// Fingerprints it held.
    pub fingerprints: std::collections::HashSet<String>,
    /// Not-after of the leaves in `places`, by fingerprint.
    pub not_after: HashMap<String, i64>,
    /// Owner notes (fingerprint → owner).
    pub notes: BTreeMap<String, String>,
    /// When the agent scanned for its previous report.
    pub scanned_at: i64,
}

/// Notes who replaced the certificates of `inv` that took the place of another one, and keeps
/// the notes of certificates still reported. Returns the replacements as
/// (place, old fingerprint, new fingerprint, owner).
pub fn note_replacements(
    fleet: &Fleet,
    agent: &str,
    prior: &Prior,
    inv: &mut super::AgentInventory,
) -> Result<Vec<(String, String, String, String)>, Status> {
    // Notes of certificates no longer reported go; the rest carry over.
    let mut notes: BTreeMap<String, String> = prior
        .notes
        .iter()
        .chain(inv.owners.iter())
        .filter(|(fp, _)| inv.certs.contains_key(*fp))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut found = Vec::new();
    let mut worked_on: Option<bool> = None;
    for (fp, stored) in &inv.certs {
        if prior.fingerprints.contains(fp) || stored.record.is_ca {
            continue;
        }
        let Some((place, old)) = stored.record.locations.iter().find_map(|l| {
            let k = place_key(l);
            prior
                .places
                .get(&k)
                .filter(|old| *old != fp)
                .map(|old| (l.describe(), old.clone()))
        }) else {
            continue;
        };
        // A renewal lasts longer than what it replaces; anything else (a test fixture, an
        // operator putting a shorter-lived certificate back) names no renewer.
        if prior
            .not_after
            .get(&old)
            .is_some_and(|old_na| stored.record.not_after <= *old_na)
        {
            continue;
        }
        let ours = match worked_on {
            Some(w) => w,
            None => *worked_on.insert(certfleet_worked_on(fleet, agent, prior.scanned_at)?),
        };
        let owner = if ours { OWNER_CERTFLEET } else { OWNER_UNKNOWN };
        notes.insert(fp.clone(), owner.to_owned());
        found.push((place, old, fp.clone(), owner.to_owned()));
    }
    inv.owners = notes;
    Ok(found)
}

/// Whether a certfleet plan step ran on `agent` since `since` (dispatched now, or finished
/// after it). Read only when a replacement was seen, so rarely.
fn certfleet_worked_on(fleet: &Fleet, agent: &str, since: i64) -> Result<bool, Status> {
    // Slack for the clocks of agent and controller.
    let since = since - 60;
    for header in storage::headers(&fleet.store).map_err(internal)? {
        // A plan finished long before `since` has no step that finished after it; a week
        // covers plans that ran for days.
        if header.state.is_final() && header.created_at < since - 7 * 86_400 {
            continue;
        }
        let Some(plan) = storage::load(&fleet.store, &header.id).map_err(internal)? else {
            continue;
        };
        if plan.steps.iter().any(|s| {
            s.agent_id == agent
                && match s.state {
                    StepState::Dispatched => true,
                    StepState::Succeeded | StepState::Failed | StepState::RolledBack => {
                        s.finished_at >= since
                    }
                    StepState::Pending | StepState::Skipped => false,
                }
        }) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(subject: &str, state: &str, detail: &str) -> HealthFact {
        HealthFact {
            kind: RENEWER_FACT.into(),
            subject: subject.into(),
            state: state.into(),
            detail: detail.into(),
            healthy: true,
        }
    }

    #[test]
    fn renewer_facts_match_roles_families_and_paths() {
        let facts = [
            fact(
                "vsphere.esxi_host",
                "vcenter-auto-renew",
                "lead_days=30; grace_days=5; vpxd.certmgmt.certs.autoRenewThreshold=30",
            ),
            fact("kubeadm", "kubeadm-upgrade", "lead_days=0"),
            fact("/etc/nsx/api.crt", "nsx-auto-replace", "declared"),
        ];
        let r = platform_renewer(&facts, "vsphere.esxi_host", &[]).unwrap();
        assert_eq!(
            r,
            Renewer {
                name: "vcenter-auto-renew".into(),
                lead_days: Some(30),
                grace_days: 5
            }
        );
        assert_eq!(
            platform_renewer(&facts, "kubeadm.apiserver", &[])
                .unwrap()
                .name,
            "kubeadm-upgrade"
        );
        // A family is `.`-separated: `kubeadmx` is not under `kubeadm`.
        assert!(platform_renewer(&facts, "kubeadmx", &[]).is_none());
        let at = [Location::file("file", "/etc/nsx/api.crt")];
        let r = platform_renewer(&facts, "file.nsx", &at).unwrap();
        assert_eq!((r.name.as_str(), r.lead_days), ("nsx-auto-replace", None));
        assert!(platform_renewer(&facts, "vsphere.machine_ssl", &[]).is_none());
    }

    #[test]
    fn owners_and_overdue_points() {
        let facts = [fact(
            "vsphere.esxi_host",
            "vcenter-auto-renew",
            "lead_days=30; grace_days=5",
        )];
        let day = 86_400;
        let (o, at) = owner_of(
            &BTreeMap::new(),
            &facts,
            "aa",
            "vsphere.esxi_host",
            &[],
            100 * day,
        );
        assert_eq!((o.as_str(), at), ("platform:vcenter-auto-renew", 75 * day));
        // A platform renewer wins over a replacement note.
        let notes = BTreeMap::from([("aa".to_owned(), OWNER_UNKNOWN.to_owned())]);
        assert_eq!(
            owner_of(&notes, &facts, "aa", "vsphere.esxi_host", &[], day).0,
            "platform:vcenter-auto-renew"
        );
        // Unknown renewer: the role's warning window.
        let (o, at) = owner_of(&notes, &[], "aa", "vsphere.machine_ssl", &[], 100 * day);
        let warn = i64::from(roles::lookup("vsphere.machine_ssl").warn_days);
        assert_eq!((o.as_str(), at), (OWNER_UNKNOWN, (100 - warn) * day));
        // certfleet and nobody: never overdue here (the policy renews them).
        let notes = BTreeMap::from([("aa".to_owned(), OWNER_CERTFLEET.to_owned())]);
        assert_eq!(
            owner_of(&notes, &[], "aa", "x", &[], day),
            (OWNER_CERTFLEET.to_owned(), i64::MAX)
        );
        assert_eq!(
            owner_of(&BTreeMap::new(), &[], "aa", "x", &[], day),
            (String::new(), i64::MAX)
        );
        assert!(is_other("platform:x") && is_other(OWNER_UNKNOWN));
        assert!(!is_other(OWNER_CERTFLEET) && !is_other(""));
    }

    fn cert(
        fp: &str,
        role: &str,
        path: &str,
        not_after: i64,
        is_ca: bool,
    ) -> super::super::StoredCert {
        super::super::StoredCert {
            record: certfleet_common::model::CertRecord {
                fingerprint_sha256: fp.into(),
                subject: format!("CN={fp}"),
                issuer: "CN=ca".into(),
                serial: "01".into(),
                sans: vec![],
                not_before: 0,
                not_after,
                key_algorithm: "EC P-256".into(),
                key_bits: 256,
                is_ca,
                subject_key_id: String::new(),
                authority_key_id: String::new(),
                role: role.into(),
                locations: vec![Location::file("file", path)],
                der: vec![],
            },
            der_b64: String::new(),
        }
    }

    /// The index: owners per sighting, the policy's question skips what others own, and the
    /// places a next report is compared with (leaves at a place of their own only).
    #[test]
    fn the_index_knows_owners_and_places() {
        let now = 1_000 * 86_400;
        let mut inv = super::super::AgentInventory::default();
        for c in [
            cert("e1", "vsphere.esxi_host", "esx1", now + 10 * 86_400, false),
            cert("f1", "file.web", "/etc/web.crt", now + 5 * 86_400, false),
            cert("c1", "file.ca", "/etc/ca.crt", now + 5 * 86_400, true),
            cert(
                "b1",
                "file.bundle",
                "/etc/bundle.crt",
                now + 50 * 86_400,
                false,
            ),
            cert(
                "b2",
                "file.bundle",
                "/etc/bundle.crt",
                now + 60 * 86_400,
                false,
            ),
        ] {
            inv.certs.insert(c.record.fingerprint_sha256.clone(), c);
        }
        inv.health.push(fact(
            "vsphere.esxi_host",
            "vcenter-auto-renew",
            "lead_days=30; grace_days=5",
        ));
        inv.owners.insert("f1".into(), OWNER_UNKNOWN.into());
        inv.scanned_at = now - 60;
        let mut st = super::super::IndexState::default();
        st.set_agent("a1", &inv);
        let owner = |fp: &str| st.certs.get(fp).unwrap().owner_seen_by(None).to_owned();
        assert_eq!(owner("e1"), "platform:vcenter-auto-renew");
        assert_eq!(owner("f1"), OWNER_UNKNOWN);
        assert_eq!(owner("b1"), "");
        // Owned by others: not the policy's; a certificate nobody else owns is.
        assert_eq!(st.earliest_due("vsphere.esxi_host", now, 60 * 86_400), None);
        assert_eq!(st.earliest_due("file.web", now, 60 * 86_400), None);
        assert_eq!(
            st.earliest_due("file.bundle", now, 60 * 86_400),
            Some(now + 50 * 86_400)
        );
        // Overdue: 10 days left, renewer renews at 30 with 5 days grace.
        let e1 = &st.certs.get("e1").unwrap().sightings[0];
        assert_eq!(e1.overdue_at, now - 15 * 86_400);
        let prior = st.prior("a1");
        assert_eq!(prior.scanned_at, now - 60);
        assert_eq!(
            prior.notes.get("f1").map(String::as_str),
            Some(OWNER_UNKNOWN)
        );
        assert_eq!(prior.fingerprints.len(), 5);
        let at = |p: &str| {
            prior
                .places
                .get(&place_key(&Location::file("file", p)))
                .cloned()
        };
        assert_eq!(at("/etc/web.crt").as_deref(), Some("f1"));
        assert_eq!(at("esx1").as_deref(), Some("e1"));
        assert_eq!(at("/etc/ca.crt"), None, "CAs are left out");
        assert_eq!(
            at("/etc/bundle.crt"),
            None,
            "a place with several leaves is left out"
        );
        assert!(st.prior("nobody").places.is_empty());
    }
}
