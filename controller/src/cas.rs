//! The CA cliff: for every CA the fleet has seen, the leaves it caps and the date from which a
//! new leaf can no longer get its platform's full lifetime.
//!
//! A leaf never outlives its issuer: VMCA caps ESXi and Machine SSL certificates at the root's
//! not-after, an oVirt engine CA caps VDSM certificates, kubeadm and GKE CAs cap the component
//! certificates renewed on every upgrade. The "cliff" is `CA not_after - default leaf lifetime`:
//! from then on every renewal silently yields a shorter certificate, and renewals bunch up
//! towards the CA's own expiry. Certificates valid for 100 years or more are flagged too: they
//! are either a mistake or a CA nobody will remember to rotate.
//!
//! The forecast works on a neutral [`CertFacts`] view so that the CLI (from an inventory answer)
//! and the metrics endpoint (from the store) compute the same thing. Default leaf lifetimes are
//! the platforms' documented defaults (`shared/reference/vsphere.md` §4.1, `ovirt_gke.md` A4/B1);
//! for a CA of no known platform the longest lifetime among the leaves it signed is used.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use certfleet_common::proto as pb;
use certfleet_common::roles;
use serde::Serialize;

const DAY: i64 = 86_400;

/// A span at or beyond this many days (100 years) is flagged as absurd.
pub const ABSURD_SPAN_DAYS: i64 = 36_500;

/// Lifetime assumed for leaves of a CA of no known platform that has signed nothing seen yet
/// (the CA/Browser Forum maximum for TLS server certificates).
const FALLBACK_LEAF_DAYS: i64 = 398;

/// What the forecast needs to know of one certificate, borrowed from where it is read (the
/// inventory index holds 100,000 certificates: copying each one's strings on every `/metrics`
/// scrape was half the scrape).
#[derive(Clone, Debug, Default)]
pub struct CertFacts<'a> {
    /// SHA-256 fingerprint.
    pub fingerprint: Cow<'a, str>,
    /// Subject DN.
    pub subject: Cow<'a, str>,
    /// Issuer DN.
    pub issuer: Cow<'a, str>,
    /// Role (see [`roles`]).
    pub role: Cow<'a, str>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Basic constraints CA flag.
    pub is_ca: bool,
    /// Subject key identifier, hex.
    pub subject_key_id: Cow<'a, str>,
    /// Authority key identifier, hex.
    pub authority_key_id: Cow<'a, str>,
    /// Agents (names) that saw it.
    pub agents: BTreeSet<Cow<'a, str>>,
}

impl CertFacts<'_> {
    fn span_days(&self) -> i64 {
        (self.not_after - self.not_before) / DAY
    }
}

/// A leaf (or sub-CA) one CA signed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CappedLeaf {
    /// Fingerprint.
    pub fingerprint_sha256: String,
    /// Subject DN.
    pub subject: String,
    /// Role.
    pub role: String,
    /// Its not-after (RFC 3339).
    pub not_after: String,
    /// Whether its not-after is the CA's (within a day): it was cut short by the CA.
    pub capped: bool,
    /// Whether it is valid for 100 years or more.
    pub absurd_span: bool,
}

/// The forecast for one CA.
#[derive(Clone, Debug, Serialize)]
pub struct CaForecast {
    /// Fingerprint.
    pub fingerprint_sha256: String,
    /// Subject DN.
    pub subject: String,
    /// Role.
    pub role: String,
    /// Platform of the role.
    pub platform: String,
    /// Not-before (RFC 3339).
    pub not_before: String,
    /// Not-after (RFC 3339).
    pub not_after: String,
    /// Not-after, Unix seconds.
    #[serde(skip)]
    pub not_after_secs: i64,
    /// Days of validity from not-before to not-after.
    pub span_days: i64,
    /// Valid for 100 years or more.
    pub absurd_span: bool,
    /// Lifetime a new leaf of this CA gets by default, in days.
    pub leaf_lifetime_days: i64,
    /// Where that lifetime comes from.
    pub leaf_lifetime_source: String,
    /// From this date on, new leaves can no longer get a full lifetime (RFC 3339).
    pub cliff: String,
    /// The cliff, Unix seconds.
    #[serde(skip)]
    pub cliff_secs: i64,
    /// Days from now to the cliff (negative: already past it).
    pub days_to_cliff: i64,
    /// Days from now to the CA's own expiry.
    pub days_left: i64,
    /// `expired`, `past-cliff`, `cliff-within-year` or `ok`.
    pub status: &'static str,
    /// Leaves (and sub-CAs) it signed.
    pub leaves: Vec<CappedLeaf>,
    /// Agents that saw the CA.
    pub agents: Vec<String>,
}

impl CaForecast {
    /// Leaves whose not-after the CA cut short.
    pub fn capped_leaves(&self) -> usize {
        self.leaves.iter().filter(|l| l.capped).count()
    }
}

/// Default leaf lifetime for a CA of this role, with its source; `None` for an unknown platform.
pub fn default_leaf_lifetime(role: &str) -> Option<(i64, &'static str)> {
    match platform_of(role) {
        // ESXi certificates: vpxd.certmgmt.certs.daysValid = 1825 (Machine SSL gets 730).
        "vsphere" => Some((1825, "vSphere: ESXi vpxd.certmgmt.certs.daysValid default")),
        // VDSM certificates since 4.5.1: VdsCertificateValidityInDays = 1827.
        "ovirt" => Some((1827, "oVirt 4.5.1+: VdsCertificateValidityInDays default")),
        // Component certificates: 1 year, renewed on upgrade.
        "gke" => Some((365, "GKE on VMware: component certificates 1 year")),
        "kubeadm" | "kubernetes" => Some((365, "kubeadm: leaf certificates 1 year")),
        "certfleet" => Some((30, "certfleet: agent certificate lifetime")),
        _ => None,
    }
}

/// Platform of a role; the fleet CA (`certfleet.fleet_ca`) is certfleet's own.
fn platform_of(role: &str) -> &'static str {
    if role.starts_with("certfleet.") {
        "certfleet"
    } else {
        roles::lookup(role).platform
    }
}

fn same_issuer(ca: &CertFacts<'_>, leaf: &CertFacts<'_>) -> bool {
    if leaf.fingerprint == ca.fingerprint {
        return false;
    }
    if !ca.subject_key_id.is_empty() && !leaf.authority_key_id.is_empty() {
        return ca.subject_key_id == leaf.authority_key_id;
    }
    // No key identifiers (old or hand-made CAs): fall back to the names.
    leaf.issuer == ca.subject
}

/// Computes the forecast for every CA among `certs`, soonest cliff first.
pub fn forecast(certs: &[CertFacts<'_>], now: i64) -> Vec<CaForecast> {
    let fmt = certfleet_common::model::format_time;
    // Leaves by authority key id and by issuer name: each CA looks at its own candidates, not
    // at every certificate (a fleet of 100,000 certificates and hundreds of CAs is rendered on
    // every `/metrics` scrape).
    let mut by_aki: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_issuer: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_issuer_no_aki: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, c) in certs.iter().enumerate() {
        by_issuer.entry(&c.issuer).or_default().push(i);
        if c.authority_key_id.is_empty() {
            by_issuer_no_aki.entry(&c.issuer).or_default().push(i);
        } else {
            by_aki.entry(&c.authority_key_id).or_default().push(i);
        }
    }
    let none: Vec<usize> = Vec::new();
    let mut out: Vec<CaForecast> = certs
        .iter()
        .filter(|c| c.is_ca)
        .map(|ca| {
            let mut candidates: Vec<usize> = if ca.subject_key_id.is_empty() {
                by_issuer.get(ca.subject.as_ref()).unwrap_or(&none).clone()
            } else {
                let mut v = by_aki
                    .get(ca.subject_key_id.as_ref())
                    .unwrap_or(&none)
                    .clone();
                v.extend(by_issuer_no_aki.get(ca.subject.as_ref()).unwrap_or(&none));
                v
            };
            candidates.sort_unstable();
            candidates.dedup();
            let signed: Vec<&CertFacts<'_>> = candidates
                .into_iter()
                .map(|i| &certs[i])
                .filter(|l| same_issuer(ca, l))
                .collect();
            let (leaf_days, source) = match default_leaf_lifetime(&ca.role) {
                Some((d, s)) => (d, s.to_owned()),
                None => match signed.iter().map(|l| l.span_days()).max() {
                    Some(d) if d > 0 => (d, "longest lifetime among the leaves it signed".into()),
                    _ => (
                        FALLBACK_LEAF_DAYS,
                        "assumed (no known platform, no leaves seen)".into(),
                    ),
                },
            };
            let cliff = ca.not_after - leaf_days * DAY;
            let status = if ca.not_after <= now {
                "expired"
            } else if cliff <= now {
                "past-cliff"
            } else if cliff - now <= 365 * DAY {
                "cliff-within-year"
            } else {
                "ok"
            };
            let mut leaves: Vec<CappedLeaf> = signed
                .iter()
                .map(|l| CappedLeaf {
                    fingerprint_sha256: l.fingerprint.to_string(),
                    subject: l.subject.to_string(),
                    role: l.role.to_string(),
                    not_after: fmt(l.not_after),
                    capped: (ca.not_after - l.not_after).abs() <= DAY,
                    absurd_span: l.span_days() >= ABSURD_SPAN_DAYS,
                })
                .collect();
            leaves.sort_by(|a, b| (&a.not_after, &a.subject).cmp(&(&b.not_after, &b.subject)));
            CaForecast {
                fingerprint_sha256: ca.fingerprint.to_string(),
                subject: ca.subject.to_string(),
                role: ca.role.to_string(),
                platform: platform_of(&ca.role).to_owned(),
                not_before: fmt(ca.not_before),
                not_after: fmt(ca.not_after),
                not_after_secs: ca.not_after,
                span_days: ca.span_days(),
                absurd_span: ca.span_days() >= ABSURD_SPAN_DAYS,
                leaf_lifetime_days: leaf_days,
                leaf_lifetime_source: source,
                cliff: fmt(cliff),
                cliff_secs: cliff,
                days_to_cliff: (cliff - now).div_euclid(DAY),
                days_left: (ca.not_after - now).div_euclid(DAY),
                status,
                leaves,
                agents: ca.agents.iter().map(|a| a.to_string()).collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.cliff_secs, &a.fingerprint_sha256).cmp(&(b.cliff_secs, &b.fingerprint_sha256))
    });
    out
}

/// The facts of every certificate in an inventory answer (one entry per fingerprint).
pub fn facts_from_list(list: &pb::InventoryList) -> Vec<CertFacts<'_>> {
    list.items
        .iter()
        .filter_map(|i| {
            let c = i.certificate.as_ref()?;
            Some(CertFacts {
                fingerprint: c.fingerprint_sha256.as_str().into(),
                subject: c.subject.as_str().into(),
                issuer: c.issuer.as_str().into(),
                role: c.role.as_str().into(),
                not_before: c.not_before,
                not_after: c.not_after,
                is_ca: c.is_ca,
                subject_key_id: c.subject_key_id.as_str().into(),
                authority_key_id: c.authority_key_id.as_str().into(),
                agents: i
                    .seen
                    .iter()
                    .map(|s| s.agent_name.as_str().into())
                    .collect(),
            })
        })
        .collect()
}

/// The facts of every certificate the agents in `names` (id → name) reported, as the scrape
/// reads them ([`crate::metrics::FleetCerts`]: the inventory index), plus the fleet CA itself
/// (`fleet_ca_pem`), in fingerprint order.
pub fn facts<'a, S: std::hash::BuildHasher>(
    certs: &'a dyn crate::metrics::FleetCerts,
    names: &HashMap<&str, &'a str, S>,
    fleet_ca_pem: &str,
) -> Vec<CertFacts<'a>> {
    // One entry per run of sightings of the same certificate (the inventory index gives each
    // certificate's sightings one after the other, in fingerprint order), merged below with
    // any later run of the same certificate: no map of 100,000 fingerprints per scrape.
    let mut out: Vec<CertFacts<'a>> = Vec::new();
    certs.each(&mut |agent, c| {
        let Some(name) = names.get(agent) else {
            return;
        };
        match out.last_mut() {
            Some(f) if f.fingerprint == c.fingerprint => {
                merge_sighting(f, c.role.into(), Cow::Borrowed(*name));
            }
            _ => out.push(CertFacts {
                fingerprint: c.fingerprint.into(),
                subject: c.subject.into(),
                issuer: c.issuer.into(),
                role: c.role.into(),
                not_before: c.not_before,
                not_after: c.not_after,
                is_ca: c.is_ca,
                subject_key_id: c.subject_key_id.into(),
                authority_key_id: c.authority_key_id.into(),
                agents: BTreeSet::from([Cow::Borrowed(*name)]),
            }),
        }
    });
    // Stable: of two runs of one certificate the earlier comes first, as it was seen first
    // (already sorted input, the index's, costs one comparison per entry).
    out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out.dedup_by(|later, earlier| {
        if later.fingerprint != earlier.fingerprint {
            return false;
        }
        let role = std::mem::take(&mut later.role);
        for name in std::mem::take(&mut later.agents) {
            merge_sighting(earlier, role.clone(), name);
        }
        true
    });
    if let Ok(der) = certfleet_common::pem::first_certificate(fleet_ca_pem.as_bytes())
        && let Ok(rec) = certfleet_common::x509::parse_der(&der)
        && let Err(at) =
            out.binary_search_by(|f| f.fingerprint.as_ref().cmp(&rec.fingerprint_sha256))
    {
        out.insert(
            at,
            CertFacts {
                fingerprint: rec.fingerprint_sha256.into(),
                subject: rec.subject.into(),
                issuer: rec.issuer.into(),
                role: "certfleet.fleet_ca".into(),
                not_before: rec.not_before,
                not_after: rec.not_after,
                is_ca: true,
                subject_key_id: rec.subject_key_id.into(),
                authority_key_id: rec.authority_key_id.into(),
                agents: BTreeSet::from([Cow::Borrowed("controller")]),
            },
        );
    }
    out
}

/// Adds another agent's sighting of the same certificate: a role from a platform's own store
/// wins over a generic file role (or none).
fn merge_sighting<'a>(f: &mut CertFacts<'a>, role: Cow<'a, str>, name: Cow<'a, str>) {
    if f.role.is_empty() || (f.role.starts_with("file.") && !role.is_empty()) {
        f.role = role;
    }
    f.agents.insert(name);
}

/// Adds the per-CA gauges to a scrape registry: `ca_cliff_seconds` (the date from which new
/// leaves are cut short, Unix seconds), `ca_not_after_seconds` and `ca_capped_leaves`.
pub fn register_metrics(facts: &[CertFacts<'_>], r: &mut prometheus_client::registry::Registry) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let cliff: Family<CaLabels, Gauge> = Family::default();
    let not_after: Family<CaLabels, Gauge> = Family::default();
    let capped: Family<CaLabels, Gauge> = Family::default();
    for f in forecast(facts, certfleet_common::model::now()) {
        let l = CaLabels {
            platform: f.platform.clone(),
            role: f.role.clone(),
            subject: f.subject.clone(),
            fingerprint: f.fingerprint_sha256[..16.min(f.fingerprint_sha256.len())].to_owned(),
            absurd_span: if f.absurd_span { "true" } else { "false" }.into(),
        };
        cliff.get_or_create(&l).set(f.cliff_secs);
        not_after.get_or_create(&l).set(f.not_after_secs);
        capped.get_or_create(&l).set(f.capped_leaves() as i64);
    }
    r.register(
        "certfleet_ca_cliff_seconds",
        "Date from which a CA can no longer give new leaves its platform's full lifetime (Unix seconds)",
        cliff,
    );
    r.register(
        "certfleet_ca_not_after_seconds",
        "CA not-after as a Unix timestamp",
        not_after,
    );
    r.register(
        "certfleet_ca_capped_leaves",
        "Leaves whose not-after was cut to the CA's",
        capped,
    );
}

/// Labels of one CA's gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CaLabels {
    /// Platform of the CA's role.
    pub platform: String,
    /// Role.
    pub role: String,
    /// Subject DN.
    pub subject: String,
    /// Fingerprint prefix.
    pub fingerprint: String,
    /// `true` when valid for 100 years or more.
    pub absurd_span: String,
}

/// Prints the forecast as a table or JSON (`certfleet inventory cas`).
pub fn print(forecasts: &[CaForecast], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(forecasts).expect("serializable")
        );
        return;
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(vec![
            "CLIFF",
            "STATUS",
            "CA NOT AFTER",
            "LEAF DAYS",
            "LEAVES",
            "CAPPED",
            "ROLE",
            "SUBJECT",
            "FLAGS",
            "FINGERPRINT",
        ]);
    for f in forecasts {
        let mut flags = Vec::new();
        if f.absurd_span {
            flags.push(format!("span {} years", f.span_days / 365));
        }
        let absurd_leaves = f.leaves.iter().filter(|l| l.absurd_span).count();
        if absurd_leaves > 0 {
            flags.push(format!("{absurd_leaves} leaves ≥ 100 years"));
        }
        t.add_row(vec![
            f.cliff.clone(),
            f.status.to_owned(),
            f.not_after.clone(),
            f.leaf_lifetime_days.to_string(),
            f.leaves.len().to_string(),
            f.capped_leaves().to_string(),
            f.role.clone(),
            f.subject.clone(),
            flags.join(", "),
            f.fingerprint_sha256[..16.min(f.fingerprint_sha256.len())].to_owned(),
        ]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate several agents saw is one fact with every agent's name and the most
    /// specific role, whatever order the sightings come in (the index gives them one after the
    /// other; a map of records per agent does not); agents not in `names` are left out.
    #[test]
    fn facts_merge_every_sighting_of_a_certificate_in_any_order() {
        use certfleet_common::model::CertRecord;
        let record = |fp: &str, role: &str| CertRecord {
            fingerprint_sha256: fp.into(),
            subject: format!("CN={fp}"),
            role: role.into(),
            ..Default::default()
        };
        let names: HashMap<&str, &str> =
            [("a1", "vc1"), ("a2", "vc2"), ("a3", "vc3"), ("a4", "vc4")].into();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let seen = [
                ("a1", vec![record("bb", "file.leaf"), record("aa", "")]),
                (
                    "a2",
                    vec![
                        record("cc", "file.leaf"),
                        record("bb", "vsphere.machine_ssl"),
                    ],
                ),
                ("a3", vec![record("bb", ""), record("aa", "file.leaf")]),
                (
                    "gone",
                    vec![record("bb", "kubeadm.apiserver"), record("dd", "")],
                ),
            ];
            let source: HashMap<String, Vec<CertRecord>> = order
                .iter()
                .map(|&k| (seen[k].0.to_owned(), seen[k].1.clone()))
                .collect();
            let facts = facts(&source, &names, "");
            let got: Vec<(&str, &str, Vec<&str>)> = facts
                .iter()
                .map(|f| {
                    (
                        f.fingerprint.as_ref(),
                        f.role.as_ref(),
                        f.agents.iter().map(|a| a.as_ref()).collect(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    ("aa", "file.leaf", vec!["vc1", "vc3"]),
                    ("bb", "vsphere.machine_ssl", vec!["vc1", "vc2", "vc3"]),
                    ("cc", "file.leaf", vec!["vc2"]),
                ],
                "sightings in order {order:?}"
            );
        }
    }

    fn cert(
        fp: &str,
        role: &str,
        nb_days: i64,
        na_days: i64,
        ca: bool,
        ski: &str,
        aki: &str,
    ) -> CertFacts<'static> {
        CertFacts {
            fingerprint: fp.to_owned().into(),
            subject: format!("CN={fp}").into(),
            issuer: "".into(),
            role: role.to_owned().into(),
            not_before: nb_days * DAY,
            not_after: na_days * DAY,
            is_ca: ca,
            subject_key_id: ski.to_owned().into(),
            authority_key_id: aki.to_owned().into(),
            agents: BTreeSet::new(),
        }
    }

    /// The per-CA candidates (by key id, by issuer name) find exactly the leaves a comparison
    /// with every certificate finds, with and without key identifiers on either side.
    #[test]
    fn indexed_leaves_are_the_ones_a_full_scan_finds() {
        let mut certs = Vec::new();
        for i in 0..60usize {
            let ski = ["", "k1", "k2"][i % 3];
            let aki = ["", "k1", "k2", "k3"][i % 4];
            let mut c = cert(
                &format!("c{i}"),
                "file.x",
                0,
                100 + i as i64,
                i % 5 == 0,
                ski,
                aki,
            );
            c.issuer = format!("CN=c{}", (i * 7) % 10).into();
            certs.push(c);
        }
        let got = forecast(&certs, 0);
        assert_eq!(got.len(), 12);
        for f in got {
            let ca = certs
                .iter()
                .find(|c| c.fingerprint == f.fingerprint_sha256)
                .unwrap();
            let mut want: Vec<&str> = certs
                .iter()
                .filter(|l| same_issuer(ca, l))
                .map(|l| l.fingerprint.as_ref())
                .collect();
            let mut have: Vec<&str> = f
                .leaves
                .iter()
                .map(|l| l.fingerprint_sha256.as_str())
                .collect();
            want.sort();
            have.sort();
            assert_eq!(have, want, "CA {}", ca.fingerprint);
        }
    }

    #[test]
    fn a_vmca_root_caps_its_leaves_and_its_cliff_is_five_years_before_expiry() {
        let now = 3000 * DAY;
        let certs = vec![
            cert("root", "vsphere.vmca_root", 0, 3650, true, "aa", "aa"),
            // An ESXi host renewed a year ago: 1825 days would pass the root, so it was capped.
            cert("esxi", "vsphere.esxi_host", 2999, 3650, false, "", "aa"),
            cert("mssl", "vsphere.machine_ssl", 2900, 3630, false, "", "aa"),
            cert("other", "file.pem", 0, 100, false, "", "bb"),
        ];
        let f = forecast(&certs, now);
        assert_eq!(f.len(), 1);
        let r = &f[0];
        assert_eq!(r.leaf_lifetime_days, 1825);
        assert_eq!(r.cliff_secs, (3650 - 1825) * DAY);
        assert_eq!(r.status, "past-cliff");
        assert_eq!(
            r.leaves.len(),
            2,
            "the self-signed root is not its own leaf"
        );
        assert_eq!(r.capped_leaves(), 1);
        assert!(!r.absurd_span);
    }

    #[test]
    fn unknown_cas_use_their_longest_leaf_and_absurd_spans_are_flagged() {
        let certs = vec![
            cert("corp", "file.pem", 0, 40_000, true, "cc", ""),
            cert("app", "file.pem", 0, 800, false, "", "cc"),
            cert("forever", "file.pem", 0, 36_600, false, "", "cc"),
            cert("k8s", "kubeadm.ca", 0, 3650, true, "dd", ""),
        ];
        let f = forecast(&certs, 0);
        let corp = f.iter().find(|f| f.fingerprint_sha256 == "corp").unwrap();
        assert!(corp.absurd_span);
        assert_eq!(corp.leaf_lifetime_days, 36_600);
        assert_eq!(corp.leaves.iter().filter(|l| l.absurd_span).count(), 1);
        let k8s = f.iter().find(|f| f.fingerprint_sha256 == "k8s").unwrap();
        assert_eq!(k8s.leaf_lifetime_days, 365);
        assert_eq!(k8s.status, "ok");
        assert!(k8s.leaves.is_empty());
        assert_eq!(f[0].fingerprint_sha256, "k8s", "soonest cliff first");
    }

    #[test]
    fn leaves_without_key_identifiers_match_by_issuer_name() {
        let mut ca = cert("ca", "ovirt.engine.ca", 0, 7300, true, "", "");
        ca.subject = "CN=engine.ca".into();
        let mut leaf = cert("vdsm", "ovirt.node.vdsm", 7000, 7300, false, "", "");
        leaf.issuer = "CN=engine.ca".into();
        let f = forecast(&[ca, leaf], 0);
        assert_eq!(f[0].leaves.len(), 1);
        assert_eq!(f[0].leaf_lifetime_days, 1827);
    }
}
