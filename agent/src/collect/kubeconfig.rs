//! Kubeconfig files (client-go `clientcmd/api/v1.Config`) as the GKE and kubeadm collectors meet
//! them: clusters with CA data, users with client certificates, embedded or by path.
//!
//! The `*-data` fields are base64 of PEM, never raw DER, and a CA bundle may hold several
//! certificates (two during a GKE CA rotation), so every block is read and each one is a record
//! of its own. Path fields are resolved relative to the kubeconfig's directory, as kubectl does,
//! and the `*-data` fields win over them. Nothing here panics on input: every defect becomes a
//! [`KubeconfigError`] or one [`Problem`] naming the file and the cluster or user.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use certfleet_common::model::{Location, Problem};
use serde::Deserialize;

use super::{Collection, read_small_file};
use crate::config::AgentConfig;

/// A kubeconfig could not be read as one.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Not YAML, or YAML of another shape.
    #[error("not a kubeconfig: {0}")]
    Yaml(String),
    /// A `*-data` field is not valid base64.
    #[error("{field} is not base64: {reason}")]
    Base64 {
        /// Field name, e.g. `certificate-authority-data`.
        field: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// A `*-data` field decodes to something other than PEM certificates.
    #[error("{field} does not hold PEM certificates: {reason}")]
    Pem {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The parts of a kubeconfig that carry certificates. Unknown fields are ignored; `null` lists
/// are treated as empty.
#[derive(Debug, Default, Deserialize)]
pub struct Kubeconfig {
    /// `kind`, normally `Config`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Named clusters.
    #[serde(default)]
    pub clusters: Option<Vec<NamedCluster>>,
    /// Named users (credentials).
    #[serde(default)]
    pub users: Option<Vec<NamedUser>>,
    /// Context in use.
    #[serde(default, rename = "current-context")]
    pub current_context: Option<String>,
}

/// `clusters[]`.
#[derive(Debug, Default, Deserialize)]
pub struct NamedCluster {
    /// Cluster nickname.
    #[serde(default)]
    pub name: String,
    /// Its connection data.
    #[serde(default)]
    pub cluster: Option<ClusterData>,
}

/// `clusters[].cluster`.
#[derive(Debug, Default, Deserialize)]
pub struct ClusterData {
    /// API server URL.
    #[serde(default)]
    pub server: Option<String>,
    /// Base64 of one or more PEM CA certificates.
    #[serde(default, rename = "certificate-authority-data")]
    pub certificate_authority_data: Option<String>,
    /// Path of a PEM CA file.
    #[serde(default, rename = "certificate-authority")]
    pub certificate_authority: Option<String>,
}

/// `users[]`.
#[derive(Debug, Default, Deserialize)]
pub struct NamedUser {
    /// User nickname.
    #[serde(default)]
    pub name: String,
    /// Its credentials.
    #[serde(default)]
    pub user: Option<UserData>,
}

/// `users[].user`.
#[derive(Debug, Default, Deserialize)]
pub struct UserData {
    /// Base64 of a PEM client certificate (possibly a chain).
    #[serde(default, rename = "client-certificate-data")]
    pub client_certificate_data: Option<String>,
    /// Path of the client certificate.
    #[serde(default, rename = "client-certificate")]
    pub client_certificate: Option<String>,
    /// Base64 of the PEM client key.
    #[serde(default, rename = "client-key-data")]
    pub client_key_data: Option<String>,
    /// Path of the client key.
    #[serde(default, rename = "client-key")]
    pub client_key: Option<String>,
}

/// Parses kubeconfig text.
pub fn parse(text: &[u8]) -> Result<Kubeconfig, KubeconfigError> {
    let kc: Kubeconfig =
        serde_norway::from_slice(text).map_err(|e| KubeconfigError::Yaml(e.to_string()))?;
    match kc.kind.as_deref() {
        None | Some("Config") => Ok(kc),
        Some(other) => Err(KubeconfigError::Yaml(format!(
            "kind is {other:?}, not \"Config\""
        ))),
    }
}

/// Decodes a `*-data` field (base64 of PEM) into the DER of every certificate in it.
pub fn decode_certificates(
    field: &'static str,
    value: &str,
) -> Result<Vec<Vec<u8>>, KubeconfigError> {
    let pem = decode_base64(field, value)?;
    if !certfleet_common::pem::looks_like_pem(&pem) {
        return Err(KubeconfigError::Pem {
            field,
            reason: "decoded bytes are not PEM (kubectl would reject them)".into(),
        });
    }
    certfleet_common::pem::certificates(&pem).map_err(|e| KubeconfigError::Pem {
        field,
        reason: e.to_string(),
    })
}

/// Base64 as Go encodes `[]byte` (standard alphabet, padded); line breaks and spaces, which
/// hand-edited files gain, are tolerated.
pub fn decode_base64(field: &'static str, value: &str) -> Result<Vec<u8>, KubeconfigError> {
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| KubeconfigError::Base64 {
            field,
            reason: e.to_string(),
        })
}

/// Checks that `client-key-data` decodes to a PEM private key, without keeping it.
fn check_key_data(value: &str) -> Result<(), KubeconfigError> {
    let field = "client-key-data";
    let bytes = decode_base64(field, value)?;
    let blocks = certfleet_common::pem::decode_all(&bytes).map_err(|e| KubeconfigError::Pem {
        field,
        reason: e.to_string(),
    })?;
    if blocks
        .iter()
        .any(|(label, _)| label.ends_with("PRIVATE KEY"))
    {
        Ok(())
    } else {
        Err(KubeconfigError::Pem {
            field,
            reason: "no PRIVATE KEY block".into(),
        })
    }
}

/// Roles given to what a kubeconfig holds.
#[derive(Clone, Debug)]
pub struct Roles {
    /// Role of each cluster CA (every certificate of `certificate-authority-data`).
    pub cluster_ca: String,
    /// Role of each user's client certificate (the first certificate of the data).
    pub client: String,
}

/// What a kubeconfig held, for health checks by the caller.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// `(cluster name, fingerprints of its CA certificates in bundle order)`.
    pub cluster_cas: Vec<(String, Vec<String>)>,
    /// `(user name, fingerprint of its client certificate)`.
    pub clients: Vec<(String, String)>,
}

/// Reads the kubeconfig at host path `host_path` and adds every certificate in it to `out`.
/// Problems name the file and the cluster or user; `None` if the file itself is unusable.
pub fn collect(
    cfg: &AgentConfig,
    collector: &str,
    host_path: &str,
    roles: &Roles,
    out: &mut Collection,
) -> Option<Summary> {
    let bytes = match read_small_file(&cfg.host_path(host_path)) {
        Ok(b) => b,
        Err(e) => {
            out.problem(Problem::error(
                collector,
                host_path,
                format!("cannot read kubeconfig: {e}"),
            ));
            return None;
        }
    };
    let kc = match parse(&bytes) {
        Ok(kc) => kc,
        Err(e) => {
            out.problem(Problem::error(collector, host_path, e.to_string()));
            return None;
        }
    };
    let base = Path::new(host_path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut summary = Summary::default();
    for c in kc.clusters.iter().flatten() {
        let what = format!("cluster={}", c.name);
        let data = c.cluster.as_ref();
        let (ders, via) = match (
            data.and_then(|d| d.certificate_authority_data.as_deref()),
            data.and_then(|d| d.certificate_authority.as_deref()),
        ) {
            (Some(v), _) => match decode_certificates("certificate-authority-data", v) {
                Ok(d) => (d, None),
                Err(e) => {
                    out.problem(Problem::error(
                        collector,
                        format!("{host_path} {what}"),
                        e.to_string(),
                    ));
                    continue;
                }
            },
            (None, Some(p)) => match read_referenced(cfg, &base, p) {
                Ok((d, shown)) => (d, Some(shown)),
                Err(e) => {
                    out.problem(Problem::error(
                        collector,
                        format!("{host_path} {what}"),
                        format!("certificate-authority {p}: {e}"),
                    ));
                    continue;
                }
            },
            // insecure-skip-tls-verify or system roots: nothing to inventory.
            (None, None) => continue,
        };
        let n = ders.len();
        let mut fps = Vec::new();
        for (i, der) in ders.iter().enumerate() {
            let mut detail = what.clone();
            if n > 1 {
                detail.push_str(&format!(" bundle={}/{n}", i + 1));
            }
            if let Some(file) = &via {
                detail.push_str(&format!(" certificate-authority={file}"));
            }
            let loc = Location {
                kind: "kubeconfig".into(),
                path: host_path.to_owned(),
                detail,
                ..Default::default()
            };
            if let Some(fp) = out.add_der(collector, der, &roles.cluster_ca, loc) {
                fps.push(fp);
            }
        }
        summary.cluster_cas.push((c.name.clone(), fps));
    }
    for u in kc.users.iter().flatten() {
        let what = format!("user={}", u.name);
        let Some(data) = u.user.as_ref() else {
            continue;
        };
        let (ders, via) = match (
            data.client_certificate_data.as_deref(),
            data.client_certificate.as_deref(),
        ) {
            (Some(v), _) => match decode_certificates("client-certificate-data", v) {
                Ok(d) => (d, None),
                Err(e) => {
                    out.problem(Problem::error(
                        collector,
                        format!("{host_path} {what}"),
                        e.to_string(),
                    ));
                    continue;
                }
            },
            (None, Some(p)) => match read_referenced(cfg, &base, p) {
                Ok((d, shown)) => (d, Some(shown)),
                Err(e) => {
                    out.problem(Problem::error(
                        collector,
                        format!("{host_path} {what}"),
                        format!("client-certificate {p}: {e}"),
                    ));
                    continue;
                }
            },
            // token, exec plugin, OIDC: no certificate to inventory.
            (None, None) => continue,
        };
        if let Some(k) = data.client_key_data.as_deref()
            && let Err(e) = check_key_data(k)
        {
            out.problem(Problem::error(
                collector,
                format!("{host_path} {what}"),
                e.to_string(),
            ));
        }
        for (i, der) in ders.iter().enumerate() {
            let mut detail = what.clone();
            if i > 0 {
                detail.push_str(&format!(" chain={i}"));
            }
            if let Some(file) = &via {
                detail.push_str(&format!(" client-certificate={file}"));
            }
            // Only the leaf is the user's certificate; the rest of a chain are its issuers.
            let role = if i == 0 {
                roles.client.as_str()
            } else {
                "kubeconfig.ca"
            };
            let loc = Location {
                kind: "kubeconfig".into(),
                path: host_path.to_owned(),
                detail,
                ..Default::default()
            };
            if let Some(fp) = out.add_der(collector, der, role, loc)
                && i == 0
            {
                summary.clients.push((u.name.clone(), fp));
            }
        }
    }
    Some(summary)
}

/// Reads a file named by a kubeconfig path field, relative to the kubeconfig's directory.
/// Returns the certificates and the host path shown in locations.
fn read_referenced(
    cfg: &AgentConfig,
    base: &Path,
    p: &str,
) -> Result<(Vec<Vec<u8>>, String), String> {
    let host = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    };
    let bytes = read_small_file(&cfg.host_path(&host))?;
    let ders = certfleet_common::pem::certificates(&bytes).map_err(|e| e.to_string())?;
    Ok((ders, host.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn ca_pem(cn: &str) -> String {
        certfleet_common::pki::generate_ca(cn, std::time::Duration::from_secs(86_400))
            .unwrap()
            .cert_pem
    }

    fn kubeconfig(ca_data: &str, client_data: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster:\n    server: https://10.0.0.1:443\n    certificate-authority-data: {ca_data}\nusers:\n- name: u1\n  user:\n    client-certificate-data: {client_data}\n    client-key-data: {}\ncontexts: []\ncurrent-context: ''\n",
            b64("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        )
    }

    fn scan(text: &str) -> (Collection, Option<Summary>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kc"), text).unwrap();
        let cfg = AgentConfig {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        let mut out = Collection::default();
        let roles = Roles {
            cluster_ca: "kubeconfig.ca".into(),
            client: "kubeconfig.client".into(),
        };
        let s = collect(&cfg, "test", "/kc", &roles, &mut out);
        (out, s)
    }

    #[test]
    fn every_ca_of_a_bundle_is_a_record() {
        let bundle = format!("{}{}", ca_pem("old CA"), ca_pem("new CA"));
        let (out, s) = scan(&kubeconfig(&b64(&bundle), &b64(&ca_pem("client"))));
        let s = s.unwrap();
        assert_eq!(s.cluster_cas[0].1.len(), 2);
        assert_eq!(out.len(), 3, "{:?}", out.problems);
        let details: Vec<String> = out
            .certificates()
            .flat_map(|c| c.locations.into_iter().map(|l| l.detail))
            .collect();
        assert!(
            details.contains(&"cluster=c1 bundle=1/2".to_owned()),
            "{details:?}"
        );
        assert!(
            details.contains(&"cluster=c1 bundle=2/2".to_owned()),
            "{details:?}"
        );
        assert!(details.contains(&"user=u1".to_owned()), "{details:?}");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
    }

    #[test]
    fn bad_base64_and_raw_der_are_problems_naming_the_entry() {
        let (out, _) = scan(&kubeconfig("not*base64", &b64("no pem here")));
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].subject.contains("cluster=c1"));
        assert!(out.problems[0].message.contains("base64"));
        assert!(out.problems[1].subject.contains("user=u1"));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_yaml_and_missing_file_are_one_problem_each() {
        let (out, s) = scan("clusters: [ {name: x, cluster: ");
        assert!(s.is_none());
        assert_eq!(out.problems.len(), 1);
        let cfg = AgentConfig {
            root: "/nonexistent-root".into(),
            ..Default::default()
        };
        let mut out = Collection::default();
        let roles = Roles {
            cluster_ca: "a".into(),
            client: "b".into(),
        };
        assert!(collect(&cfg, "t", "/kc", &roles, &mut out).is_none());
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].subject, "/kc");
    }

    #[test]
    fn wrong_kind_is_rejected_and_nulls_are_empty() {
        assert!(parse(b"kind: AdminCluster\nname: x\n").is_err());
        let kc = parse(b"apiVersion: v1\nkind: Config\nclusters: null\nusers: ~\n").unwrap();
        assert!(kc.clusters.is_none() && kc.users.is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn yaml_like_text_never_panics(text in "(apiVersion: v1\n|kind: Config\n|clusters:\n|- name: [a-z]{0,3}\n|  cluster:\n|    certificate-authority-data: [A-Za-z0-9+/=]{0,12}\n|users: \\[\\]\n|[ :\\-\\[\\]{}a-z0-9]{0,8}\n){0,12}") {
            let _ = scan(&text);
        }

        #[test]
        fn data_decoding_never_panics(s in "[A-Za-z0-9+/= \n-]{0,200}") {
            let _ = decode_certificates("certificate-authority-data", &s);
        }
    }
}
