//! The neutral inventory model shared by agents, controller and CLI, with its JSON form and its
//! wire form (`certfleet.v1`).
//!
//! JSON field names are part of the operator interface (scripts parse `-o json`): snake_case,
//! times in RFC 3339 UTC, fingerprints lowercase hex. Do not rename them.

use std::time::{SystemTime, UNIX_EPOCH};

use certfleet_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// One certificate, wherever it was seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the DER, lowercase hex: the certificate's identity.
    pub fingerprint_sha256: String,
    /// Subject DN as x509-parser prints it (`CN=…, O=…`).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, uppercase hex without separators (as `openssl x509 -serial`).
    pub serial: String,
    /// `DNS:…`, `IP:…`, `URI:…`, `email:…`.
    pub sans: Vec<String>,
    /// Start of validity, Unix seconds.
    #[serde(with = "rfc3339")]
    pub not_before: i64,
    /// End of validity, Unix seconds.
    #[serde(with = "rfc3339")]
    pub not_after: i64,
    /// `RSA`, `EC P-256`, …
    pub key_algorithm: String,
    /// Key size in bits.
    pub key_bits: u32,
    /// Basic constraints CA flag.
    pub is_ca: bool,
    /// Subject key identifier, hex (chain links).
    pub subject_key_id: String,
    /// Authority key identifier, hex (chain links).
    pub authority_key_id: String,
    /// What this certificate is for, e.g. `vsphere.machine_ssl` (see [`crate::roles`]).
    pub role: String,
    /// Everywhere it was found.
    pub locations: Vec<Location>,
    /// The DER itself (not in JSON output; carried on the wire for chain building).
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// Where a certificate was found.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    /// `file`, `pkcs12`, `vecs`, `vmdir`, `kubeconfig`, `yaml`, `endpoint`.
    pub kind: String,
    /// File path, kubeconfig path, endpoint address or LDAP DN.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// VECS store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store: String,
    /// VECS alias.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
    /// Anything else that pins it down (kubeconfig user, position in a bundle, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Location {
    /// A certificate in a file.
    pub fn file(kind: &str, path: impl Into<String>) -> Self {
        Location {
            kind: kind.to_owned(),
            path: path.into(),
            ..Default::default()
        }
    }

    /// Human-readable one-liner.
    pub fn describe(&self) -> String {
        let mut s = self.kind.clone();
        for part in [&self.path, &self.store, &self.alias, &self.detail] {
            if !part.is_empty() {
                s.push(' ');
                s.push_str(part);
            }
        }
        s
    }
}

/// Something that went wrong while looking, naming the path or command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The path, command line or endpoint.
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// `error` or `warning`.
    pub severity: String,
    /// Which collector saw it.
    pub collector: String,
}

impl Problem {
    /// An error about `subject`.
    pub fn error(collector: &str, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            subject: subject.into(),
            message: message.into(),
            severity: "error".into(),
            collector: collector.into(),
        }
    }

    /// A warning about `subject`.
    pub fn warning(
        collector: &str,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity: "warning".into(),
            ..Problem::error(collector, subject, message)
        }
    }
}

/// A health observation reported with inventory (replication, CA rotation stage, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFact {
    /// e.g. `vsphere.replication`, `gke.ca_rotation`, `endpoint.stale`.
    pub kind: String,
    /// What it is about (partner host, cluster name, endpoint).
    pub subject: String,
    /// Short state word.
    pub state: String,
    /// Detail for humans.
    pub detail: String,
    /// Whether this is fine.
    pub healthy: bool,
}

/// Current time, Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-23T04:34:00Z`).
pub fn format_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Parses RFC 3339.
pub fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// serde adapter: Unix seconds as RFC 3339 strings.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*v))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s).ok_or_else(|| serde::de::Error::custom(format!("not RFC 3339: {s}")))
    }
}

// === wire conversions ===

impl From<Location> for pb::Location {
    fn from(l: Location) -> Self {
        pb::Location {
            kind: l.kind,
            path: l.path,
            store: l.store,
            alias: l.alias,
            detail: l.detail,
        }
    }
}

impl From<&Location> for pb::Location {
    fn from(l: &Location) -> Self {
        l.clone().into()
    }
}

impl From<pb::Location> for Location {
    fn from(l: pb::Location) -> Self {
        Location {
            kind: l.kind,
            path: l.path,
            store: l.store,
            alias: l.alias,
            detail: l.detail,
        }
    }
}

/// Moves the record into its wire form (the agent hands a scan's DER and strings to the
/// report instead of holding them twice while it is sent).
impl From<CertRecord> for pb::CertificateRecord {
    fn from(c: CertRecord) -> Self {
        pb::CertificateRecord {
            fingerprint_sha256: c.fingerprint_sha256,
            subject: c.subject,
            issuer: c.issuer,
            serial: c.serial,
            sans: c.sans,
            not_before: c.not_before,
            not_after: c.not_after,
            key_algorithm: c.key_algorithm,
            key_bits: c.key_bits,
            is_ca: c.is_ca,
            subject_key_id: c.subject_key_id,
            authority_key_id: c.authority_key_id,
            role: c.role,
            locations: c.locations.into_iter().map(Into::into).collect(),
            der: c.der,
        }
    }
}

impl From<&CertRecord> for pb::CertificateRecord {
    fn from(c: &CertRecord) -> Self {
        c.clone().into()
    }
}

impl From<pb::CertificateRecord> for CertRecord {
    fn from(c: pb::CertificateRecord) -> Self {
        CertRecord {
            fingerprint_sha256: c.fingerprint_sha256,
            subject: c.subject,
            issuer: c.issuer,
            serial: c.serial,
            sans: c.sans,
            not_before: c.not_before,
            not_after: c.not_after,
            key_algorithm: c.key_algorithm,
            key_bits: c.key_bits,
            is_ca: c.is_ca,
            subject_key_id: c.subject_key_id,
            authority_key_id: c.authority_key_id,
            role: c.role,
            locations: c.locations.into_iter().map(Into::into).collect(),
            der: c.der,
        }
    }
}

impl From<&Problem> for pb::Problem {
    fn from(p: &Problem) -> Self {
        pb::Problem {
            subject: p.subject.clone(),
            message: p.message.clone(),
            severity: p.severity.clone(),
            collector: p.collector.clone(),
        }
    }
}

impl From<pb::Problem> for Problem {
    fn from(p: pb::Problem) -> Self {
        Problem {
            subject: p.subject,
            message: p.message,
            severity: p.severity,
            collector: p.collector,
        }
    }
}

impl From<&HealthFact> for pb::HealthFact {
    fn from(h: &HealthFact) -> Self {
        pb::HealthFact {
            kind: h.kind.clone(),
            subject: h.subject.clone(),
            state: h.state.clone(),
            detail: h.detail.clone(),
            healthy: h.healthy,
        }
    }
}

impl From<pb::HealthFact> for HealthFact {
    fn from(h: pb::HealthFact) -> Self {
        HealthFact {
            kind: h.kind,
            subject: h.subject,
            state: h.state,
            detail: h.detail,
            healthy: h.healthy,
        }
    }
}

/// Something that pins a certificate (vCenter extension thumbprint, Lookup Service SSL trust,
/// a consumer declared in the agent config) and breaks when that certificate changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// `vpx_ext`, `lookup_service` or `declared`.
    pub source: String,
    /// What pins (extension id, service id and URL, declared name).
    pub name: String,
    /// Role of the certificate it should match.
    pub cert_role: String,
    /// SHA-256 fingerprint of that certificate as the host holds it now (empty if unknown).
    pub cert_fingerprint: String,
    /// What the consumer pins (SHA-1 `AA:BB:…` thumbprint or SHA-256 fingerprint).
    pub pinned: String,
    /// `match`, `stale` or `unknown`.
    pub state: String,
    /// Why.
    pub detail: String,
    /// How it is re-trusted: `certfleet` (the platform's own actions), `command` or empty
    /// (by hand).
    pub retrust: String,
}

/// [`Pin::state`] values.
pub mod pin_state {
    /// The consumer pins the certificate the host holds.
    pub const MATCH: &str = "match";
    /// The consumer pins another certificate: it breaks (or broke) when this one is served.
    pub const STALE: &str = "stale";
    /// What the consumer pins could not be read, or the certificate is not known.
    pub const UNKNOWN: &str = "unknown";
}

impl From<&Pin> for pb::Pin {
    fn from(p: &Pin) -> Self {
        pb::Pin {
            source: p.source.clone(),
            name: p.name.clone(),
            cert_role: p.cert_role.clone(),
            cert_fingerprint: p.cert_fingerprint.clone(),
            pinned: p.pinned.clone(),
            state: p.state.clone(),
            detail: p.detail.clone(),
            retrust: p.retrust.clone(),
            agent: String::new(),
        }
    }
}

impl From<pb::Pin> for Pin {
    fn from(p: pb::Pin) -> Self {
        Pin {
            source: p.source,
            name: p.name,
            cert_role: p.cert_role,
            cert_fingerprint: p.cert_fingerprint,
            pinned: p.pinned,
            state: p.state,
            detail: p.detail,
            retrust: p.retrust,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time("2026-11-23T04:34:00Z"), Some(1_795_408_440));
        assert_eq!(parse_time(&format_time(1_795_408_440)), Some(1_795_408_440));
    }
}
