//! Collectors: one module per platform, each turning what a host holds into certificate
//! records of the neutral model.
//!
//! A collector never fails as a whole. Whatever it cannot read (a malformed PEM, a tool that
//! hangs or prints garbage) becomes one [`Problem`] naming the path or command, and the scan
//! goes on. The same certificate found in several places is merged into one record with several
//! locations.

use std::collections::BTreeMap;
use std::path::Path;

use certfleet_common::model::{CertRecord, HealthFact, Location, Problem};

use crate::config::AgentConfig;

pub mod endpoint;
pub mod esxi;
pub mod files;
pub mod gke_admin;
pub mod kubeadm;
pub mod kubeconfig;
pub mod ovirt_engine;
pub mod ovirt_node;
pub mod renewers;
pub mod vsphere;
pub mod vsphere_pins;

/// How long a collection's records keep their DER.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum KeepDer {
    /// For good: the report to the controller carries it.
    #[default]
    Always,
    /// Until the scan ends: checks during the scan read it (see [`DER_READERS`]).
    DuringScan,
    /// Not at all: nothing of this scan reads it.
    Never,
}

/// Platforms whose collectors (or whose checks after the collectors) read the DER of records
/// during the scan: the oVirt node's chain signature check, the vSphere pins' thumbprints.
/// Declared `[[pins]]` read it too (see [`crate::pins::evaluate`]). A scan with none of them
/// keeps no DER at all when its output needs none: a third of what 10,000 records take.
const DER_READERS: &[&str] = &["vsphere", "ovirt_node"];

/// A record's place in a [`Collection`]: the 32 bytes of its SHA-256 fingerprint (the hex stays
/// once, in the record). Byte order is the lowercase hex's order, so records still come out in
/// fingerprint order. A fingerprint that is not 64 hex digits (none of the collectors make one)
/// keeps its text and sorts after the rest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl Key {
    fn of(fingerprint: &str) -> Key {
        match fingerprint_bytes(fingerprint) {
            Some(bytes) => Key::Sha256(bytes),
            None => Key::Other(fingerprint.into()),
        }
    }
}

/// The 32 bytes of a fingerprint as every record carries it (`sha256_hex`: 64 lowercase hex
/// digits); None for anything else, which callers keep as text.
pub(crate) fn fingerprint_bytes(fingerprint: &str) -> Option<[u8; 32]> {
    if fingerprint.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(fingerprint, &mut bytes).ok()?;
    Some(bytes)
}

/// A record as a [`Collection`] holds it: its wire form, the `pb::CertificateRecord` the report
/// sends, encoded. One allocation of some 400 bytes (700 with its DER) where the record's
/// strings, vectors and box took 1.2 KB (1.5 with DER): 10,000 records were 12 MB of heap at
/// the agent's peak (issue 10). Reading a record decodes it (about a microsecond).
#[derive(Debug, Clone)]
pub struct Wire {
    bytes: Box<[u8]>,
    /// How many places the record was found at: what the report checks against the
    /// controller's limit, kept so that no record is decoded for it.
    locations: u32,
}

impl Wire {
    fn of(rec: CertRecord) -> Wire {
        Wire::from_message(&certfleet_common::proto::CertificateRecord::from(rec))
    }

    fn from_message(m: &certfleet_common::proto::CertificateRecord) -> Wire {
        use prost::Message as _;
        Wire {
            bytes: m.encode_to_vec().into_boxed_slice(),
            locations: u32::try_from(m.locations.len()).unwrap_or(u32::MAX),
        }
    }

    /// The record in its wire form (what the report sends).
    pub fn message(&self) -> certfleet_common::proto::CertificateRecord {
        use prost::Message as _;
        // Only `Wire::from_message` makes these bytes, by prost from a message: they decode.
        certfleet_common::proto::CertificateRecord::decode(&*self.bytes)
            .expect("a record decodes from the bytes prost encoded it to")
    }

    /// The record.
    pub fn record(&self) -> CertRecord {
        self.message().into()
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many places the record was found at.
    pub fn locations(&self) -> usize {
        self.locations as usize
    }
}

/// Certificates, problems and health facts from one scan.
#[derive(Debug, Default, Clone)]
pub struct Collection {
    /// Each record encoded (see [`Wire`]), by fingerprint.
    certs: BTreeMap<Key, Wire>,
    /// What could not be read.
    pub problems: Vec<Problem>,
    /// Replication health, CA rotation stage, stale endpoints, …
    pub health: Vec<HealthFact>,
    /// Collectors that ran.
    pub platforms: Vec<String>,
    /// How long records keep their DER (a local scan prints none; a report to the controller
    /// needs it).
    der: KeepDer,
    /// What pins the certificates (see [`crate::pins`]).
    pub pins: Vec<certfleet_common::model::Pin>,
}

impl Collection {
    /// A collection whose records drop their DER when the scan ends (health checks such as
    /// the oVirt chain signature check read it during the scan): everything else as
    /// [`Collection::default`]. For `certfleet-agent scan`, whose output has no DER.
    pub fn without_der() -> Self {
        Collection {
            der: KeepDer::DuringScan,
            ..Default::default()
        }
    }

    /// Adds one DER certificate found at `location` with `role`. Returns the fingerprint, or
    /// records a problem naming the location if the DER is unreadable.
    pub fn add_der(
        &mut self,
        collector: &str,
        der: &[u8],
        role: &str,
        location: Location,
    ) -> Option<String> {
        match certfleet_common::x509::parse_der(der) {
            Ok(mut rec) => {
                if self.der == KeepDer::Never {
                    rec.der = Vec::new();
                }
                let fp = rec.fingerprint_sha256.clone();
                let key = Key::of(&fp);
                match self.certs.get_mut(&key) {
                    Some(stored) => {
                        let mut existing = stored.record();
                        let mut changed = false;
                        if !existing.locations.contains(&location) {
                            existing.locations.push(location);
                            changed = true;
                        }
                        if is_generic(&existing.role) && !is_generic(role) {
                            existing.role = role.to_owned();
                            changed = true;
                        }
                        if changed {
                            *stored = Wire::of(existing);
                        }
                    }
                    None => {
                        rec.role = role.to_owned();
                        rec.locations = vec![location];
                        self.certs.insert(key, Wire::of(rec));
                    }
                }
                Some(fp)
            }
            Err(e) => {
                self.problems.push(Problem::error(
                    collector,
                    location.describe(),
                    e.to_string(),
                ));
                None
            }
        }
    }

    /// Adds every certificate of a PEM/DER blob; problems name `location`. A broken PEM block
    /// is one problem naming its index in the file; the other blocks are still read.
    pub fn add_blob(
        &mut self,
        collector: &str,
        bytes: &[u8],
        role: &str,
        location: Location,
    ) -> Vec<String> {
        let scan = match certfleet_common::pem::scan_certificates(bytes) {
            Ok(scan) => scan,
            Err(e) => {
                self.problems.push(Problem::error(
                    collector,
                    location.describe(),
                    e.to_string(),
                ));
                return Vec::new();
            }
        };
        let others = scan.certificates.len() + scan.bad.len() > 1;
        for bad in &scan.bad {
            // The error names the block (`block #2 (CERTIFICATE)`).
            let mut message = bad.error.to_string();
            if others {
                message.push_str(" (block skipped; the other blocks of the file were read)");
            }
            self.problems
                .push(Problem::error(collector, location.describe(), message));
        }
        if scan.certificates.is_empty() && scan.bad.is_empty() {
            self.problems.push(Problem::error(
                collector,
                location.describe(),
                certfleet_common::pem::PemError::Missing("CERTIFICATE block").to_string(),
            ));
        }
        let many = scan.certificates.len() > 1;
        scan.certificates
            .iter()
            .enumerate()
            .filter_map(|(i, (_, der))| {
                let mut loc = location.clone();
                if many && loc.detail.is_empty() {
                    loc.detail = format!("#{i}");
                }
                self.add_der(collector, der, role, loc)
            })
            .collect()
    }

    /// Adds a record built by a collector (a non-X.509 certificate such as an OpenSSH
    /// certificate), merging its locations into an existing record with the same fingerprint.
    pub fn add_record(&mut self, rec: CertRecord) -> String {
        let fp = rec.fingerprint_sha256.clone();
        let key = Key::of(&fp);
        match self.certs.get_mut(&key) {
            Some(stored) => {
                let mut existing = stored.record();
                let before = existing.locations.len();
                for l in rec.locations {
                    if !existing.locations.contains(&l) {
                        existing.locations.push(l);
                    }
                }
                if existing.locations.len() != before {
                    *stored = Wire::of(existing);
                }
            }
            None => {
                self.certs.insert(key, Wire::of(rec));
            }
        }
        fp
    }

    /// Records a problem.
    pub fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    /// A certificate by fingerprint (decoded: a copy).
    pub fn get(&self, fingerprint: &str) -> Option<CertRecord> {
        self.certs.get(&Key::of(fingerprint)).map(Wire::record)
    }

    /// All certificates, in fingerprint order, each decoded as it is taken.
    pub fn certificates(&self) -> impl Iterator<Item = CertRecord> + '_ {
        self.certs.values().map(Wire::record)
    }

    /// All certificates in their wire form, in fingerprint order.
    pub fn wire(&self) -> impl Iterator<Item = &Wire> {
        self.certs.values()
    }

    /// Consumes the collection into its certificates' wire forms, one at a time, in
    /// fingerprint order, as it holds them: no second copy of every record exists at once.
    /// Each comes with its fingerprint's 32 bytes (None for a fingerprint that is not 64
    /// lowercase hex digits; no collector makes one).
    pub fn into_wire(self) -> impl Iterator<Item = (Option<[u8; 32]>, Wire)> {
        self.certs.into_iter().map(|(k, w)| match k {
            Key::Sha256(bytes) => (Some(bytes), w),
            Key::Other(_) => (None, w),
        })
    }

    /// Consumes the collection into its certificates.
    pub fn into_certificates(self) -> Vec<CertRecord> {
        self.certs.into_values().map(|w| w.record()).collect()
    }

    /// Number of distinct certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True if nothing was found.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

fn is_generic(role: &str) -> bool {
    role.is_empty() || role.starts_with("file.") || role.starts_with("endpoint.")
}

/// A platform collector.
pub trait Collector {
    /// Name used in config and in `platforms`.
    fn name(&self) -> &'static str;
    /// Whether this host looks like the platform (used when `platforms` is not configured).
    fn detect(&self, cfg: &AgentConfig) -> bool;
    /// Collects into `out`.
    fn collect(&self, cfg: &AgentConfig, out: &mut Collection);
}

/// Every collector, platform ones first so their specific roles win over `files`/`endpoint`.
pub fn all() -> Vec<Box<dyn Collector + Send + Sync>> {
    vec![
        Box::new(vsphere::Vsphere),
        Box::new(ovirt_engine::OvirtEngine),
        Box::new(ovirt_node::OvirtNode),
        Box::new(gke_admin::GkeAdmin),
        Box::new(kubeadm::Kubeadm),
        Box::new(files::Files),
        Box::new(endpoint::Endpoints),
        Box::new(esxi::Esxi),
    ]
}

/// Platforms this host runs (configured, else detected).
pub fn detect(cfg: &AgentConfig) -> Vec<String> {
    all()
        .into_iter()
        .filter(|c| selected(cfg, c.as_ref()))
        .map(|c| c.name().to_owned())
        .collect()
}

fn selected(cfg: &AgentConfig, c: &dyn Collector) -> bool {
    if cfg.platforms.is_empty() {
        c.detect(cfg)
    } else {
        cfg.platforms.iter().any(|p| p == c.name())
    }
}

/// Runs every selected collector.
pub fn scan(cfg: &AgentConfig) -> Collection {
    scan_into(cfg, Collection::default())
}

/// Runs every selected collector into `out` (e.g. [`Collection::without_der`]).
pub fn scan_into(cfg: &AgentConfig, mut out: Collection) -> Collection {
    let collectors: Vec<_> = all()
        .into_iter()
        .filter(|c| selected(cfg, c.as_ref()))
        .collect();
    if out.der == KeepDer::DuringScan
        && cfg.pins.is_empty()
        && !collectors.iter().any(|c| DER_READERS.contains(&c.name()))
    {
        out.der = KeepDer::Never;
    }
    for c in collectors {
        out.platforms.push(c.name().to_owned());
        let span = tracing::debug_span!("collect", collector = c.name());
        let _enter = span.enter();
        c.collect(cfg, &mut out);
    }
    stale_endpoints(&mut out);
    renewers::declared_facts(&cfg.renewers, &mut out);
    crate::pins::evaluate(cfg, &mut out);
    // Dropped only now: collectors' health checks (the oVirt chain signature check) need
    // the DER of records other collectors added.
    if out.der == KeepDer::DuringScan {
        for stored in out.certs.values_mut() {
            let mut rec = stored.message();
            rec.der = Vec::new();
            *stored = Wire::from_message(&rec);
        }
    }
    out
}

/// Flags "renewed on disk but the service still serves the old certificate": an endpoint
/// serving a certificate whose subject matches a newer on-disk certificate of the same key
/// holder (same subject, later not-after) that the endpoint does not serve.
fn stale_endpoints(out: &mut Collection) {
    let served: Vec<CertRecord> = out
        .certificates()
        .filter(|c| c.locations.iter().any(|l| l.kind == "endpoint"))
        .collect();
    if served.is_empty() {
        return;
    }
    // Records are decoded as they are read: one pass collects, in fingerprint order, the held
    // records of the served certificates' holders, instead of one pass over the whole
    // collection per endpoint.
    let holders: std::collections::HashSet<(&str, &str)> = served
        .iter()
        .map(|s| (s.subject.as_str(), s.issuer.as_str()))
        .collect();
    let held: Vec<CertRecord> = out
        .certificates()
        .filter(|c| {
            holders.contains(&(c.subject.as_str(), c.issuer.as_str()))
                && c.locations.iter().any(|l| l.kind != "endpoint")
        })
        .collect();
    for s in &served {
        let newer = held.iter().find(|c| {
            c.fingerprint_sha256 != s.fingerprint_sha256
                && c.subject == s.subject
                && c.issuer == s.issuer
                && c.not_after > s.not_after
        });
        if let Some(newer) = newer {
            for l in s.locations.iter().filter(|l| l.kind == "endpoint") {
                out.health.push(HealthFact {
                    kind: "endpoint.stale".into(),
                    subject: l.path.clone(),
                    state: "serving-old-certificate".into(),
                    detail: format!(
                        "serves {} (until {}) but {} holds newer {} (until {}): restart the service",
                        &s.fingerprint_sha256[..16],
                        certfleet_common::model::format_time(s.not_after),
                        newer.locations.iter().find(|l| l.kind != "endpoint").map(|l| l.describe()).unwrap_or_default(),
                        &newer.fingerprint_sha256[..16],
                        certfleet_common::model::format_time(newer.not_after),
                    ),
                    healthy: false,
                });
            }
        }
    }
}

/// Largest file we read as a certificate: 16 MiB. System CA bundles run past 1 MiB
/// (`tls-ca-bundle.pem`, Java `cacerts` as PEM) and must be read whole; anything beyond this
/// cap is no certificate store a host keeps, and is reported (naming the cap), not read.
pub const MAX_CERT_FILE: u64 = 16 * 1024 * 1024;

/// Reads a host file that should hold certificates or keys, refusing what is too large,
/// unreadable or not a regular file, with a message naming the path.
pub fn read_small_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| describe_io(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_big = |len: u64| {
        format!(
            "{len} bytes: more than the {} MiB cap for certificate files; not read",
            MAX_CERT_FILE / (1024 * 1024)
        )
    };
    if meta.len() > MAX_CERT_FILE {
        return Err(too_big(meta.len()));
    }
    // The file may grow between stat and read: never read more than the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CERT_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| describe_io(&e))?;
    if bytes.len() as u64 > MAX_CERT_FILE {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

fn describe_io(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(40) => "symlink loop".into(), // ELOOP
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileWatch;

    /// A tree of certificate files: single PEMs, a bundle of two, one certificate copied
    /// under a second name (one record, two locations), one broken file.
    fn fixture_tree(root: &Path) -> AgentConfig {
        let d = root.join("etc/pki");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let pem = |n: &str| {
            certfleet_common::pki::generate_ca(n, std::time::Duration::from_secs(86_400))
                .unwrap()
                .cert_pem
        };
        for i in 0..5 {
            std::fs::write(d.join(format!("c{i}.pem")), pem(&format!("leaf {i}"))).unwrap();
        }
        std::fs::write(d.join("sub/bundle.pem"), pem("b1") + &pem("b2")).unwrap();
        std::fs::copy(d.join("c0.pem"), d.join("sub/again.pem")).unwrap();
        std::fs::write(
            d.join("sub/broken.pem"),
            "-----BEGIN CERTIFICATE-----\nAAA\n",
        )
        .unwrap();
        AgentConfig {
            root: root.to_path_buf(),
            platforms: vec!["files".into()],
            files: vec![FileWatch {
                paths: vec!["/etc/pki/**/*.pem".into()],
                role: "file.custom".into(),
                password: None,
                password_file: None,
                no_password: false,
            }],
            ..Default::default()
        }
    }

    /// Records keyed by their fingerprint's bytes come out in the fingerprint text's order,
    /// merge by fingerprint, and are found by it; a fingerprint that is not 64 lowercase hex
    /// digits is kept as text.
    #[test]
    fn records_are_kept_in_fingerprint_order_and_merged_by_fingerprint() {
        let record = |fp: &str, path: &str| CertRecord {
            fingerprint_sha256: fp.to_owned(),
            locations: vec![Location::file("file", path)],
            ..Default::default()
        };
        let fps = [
            format!("{:064x}", 0xffu8),
            "0a".repeat(32),
            "a0".repeat(32),
            format!("{:064x}", 1u8),
            "not-a-sha256".to_owned(),
            "AB".repeat(32),
        ];
        let mut c = Collection::default();
        for (i, fp) in fps.iter().enumerate() {
            assert_eq!(&c.add_record(record(fp, &format!("/p{i}"))), fp);
        }
        // The same certificate found again: one record, two places.
        c.add_record(record(&"a0".repeat(32), "/again"));
        c.add_record(record(&"a0".repeat(32), "/p2"));
        assert_eq!(c.len(), 6);
        let hex: Vec<String> = c.certificates().map(|r| r.fingerprint_sha256).collect();
        let hex: Vec<&str> = hex.iter().map(String::as_str).collect();
        let mut sha256: Vec<&str> = fps[..4].iter().map(String::as_str).collect();
        sha256.sort();
        assert_eq!(&hex[..4], &sha256[..]);
        let rest: std::collections::BTreeSet<&str> = hex[4..].iter().copied().collect();
        assert_eq!(
            rest,
            ["not-a-sha256", &*"AB".repeat(32)].into_iter().collect()
        );
        let merged = c.get(&"a0".repeat(32)).expect("found by fingerprint");
        assert_eq!(
            merged.locations,
            [
                Location::file("file", "/p2"),
                Location::file("file", "/again")
            ]
        );
        assert!(c.get("not-a-sha256").is_some());
        assert!(
            c.get(&"ab".repeat(32)).is_none(),
            "AB… and ab… stay two fingerprints"
        );
        assert!(c.get(&"0b".repeat(32)).is_none());
        let all = c.into_certificates();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].fingerprint_sha256, sha256[0]);
    }

    #[test]
    fn a_scan_without_der_finds_exactly_what_a_full_scan_finds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fixture_tree(dir.path());
        let full = scan(&cfg);
        let lean = scan_into(&cfg, Collection::without_der());
        assert_eq!(
            full.len(),
            7,
            "{:#?}",
            full.certificates().collect::<Vec<_>>()
        );
        assert!(full.certificates().all(|c| {
            !c.der.is_empty() && certfleet_common::pki::sha256_hex(&c.der) == c.fingerprint_sha256
        }));
        assert!(lean.certificates().all(|c| c.der.is_empty()));
        // Everything but the DER is identical: records, locations, problems, health.
        let strip = |c: CertRecord| CertRecord {
            der: Vec::new(),
            ..c
        };
        let a: Vec<CertRecord> = full.certificates().map(strip).collect();
        let b: Vec<CertRecord> = lean.certificates().collect();
        assert_eq!(a, b);
        assert_eq!(
            full.problems.iter().map(|p| &p.subject).collect::<Vec<_>>(),
            lean.problems.iter().map(|p| &p.subject).collect::<Vec<_>>()
        );
        assert_eq!(full.problems.len(), 1, "{:?}", full.problems);
        assert_eq!(full.platforms, lean.platforms);
        // The copy is one record with two locations.
        assert!(lean.certificates().any(|c| c.locations.len() == 2));
    }
}
