//! `certfleet-agent recover gke-kubeconfig`: on a GKE on VMware admin workstation, the
//! user-cluster kubeconfigs whose client certificate expired, fetched anew from the admin
//! cluster with no controller: the same two actions the controller's `gke-kubeconfig` recipe
//! (controller/src/plan/recipes/gke.rs) sends for this host, run through [`Local::step`]:
//! `gke.fetch_kubeconfig` (`kubectl get secret admin -n CLUSTER`, checked with `openssl
//! verify`, staged 0600 in the state directory) then `kubeconfig.install` (backup, atomic 0600
//! write keeping the owner, `kubectl version` through it, the backup restored on failure).
//!
//! What is due comes from a local scan (the `gke_admin` collector): a kubeconfig is one user
//! cluster's copy when it holds that cluster's CA (`gke.user_cluster.ca`, `cluster=NAME`), and
//! it is due when a client certificate in it (`gke.user_cluster.client`) has expired. A
//! workstation whose admin kubeconfig's client certificate expired too is refused (exit 3)
//! naming that file, as the recipe refuses it: the admin cluster would refuse the very read
//! that fetches the user kubeconfig.
//!
//! Step ids derive from the cluster, the kubeconfig path and the expired client certificate's
//! fingerprint; the install's id from the fetch step's, so a repeat after a kill resumes the
//! install of the kubeconfig already fetched, and a repeat after success finds nothing due.

use std::collections::BTreeMap;

use certfleet_common::model::{CertRecord, format_time, now};
use serde_json::json;

use super::{Local, RecoverError, audit};

/// One user cluster's kubeconfig copy on this workstation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// User cluster name.
    pub cluster: String,
    /// The kubeconfig (host path).
    pub path: String,
    /// Earliest not-after of a client certificate in it.
    pub not_after: i64,
    /// Its fingerprint.
    pub client_fingerprint: String,
}

/// What the scan says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Every user-cluster copy holding a client certificate.
    pub copies: Vec<Copy>,
    /// `(admin kubeconfig, not-after)` of an expired admin client certificate.
    pub admin_expired: Option<(String, i64)>,
}

/// Reads the scan's records (`certs`); a certificate is due when it ends at or before `horizon`.
pub fn assess(certs: &[CertRecord], horizon: i64) -> Assessment {
    let mut cluster_of: BTreeMap<&str, &str> = BTreeMap::new();
    for c in certs.iter().filter(|c| c.role == "gke.user_cluster.ca") {
        for l in c.locations.iter().filter(|l| l.kind == "kubeconfig") {
            if let Some(n) = l
                .detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cluster="))
            {
                cluster_of.insert(&l.path, n);
            }
        }
    }
    let mut a = Assessment::default();
    let mut clients: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for c in certs {
        let admin = match c.role.as_str() {
            "gke.user_cluster.client" => false,
            "gke.admin_cluster.client" => true,
            _ => continue,
        };
        for l in c.locations.iter().filter(|l| l.kind == "kubeconfig") {
            if admin {
                if c.not_after <= horizon {
                    a.admin_expired = Some((l.path.clone(), c.not_after));
                }
                continue;
            }
            let e = clients
                .entry(&l.path)
                .or_insert((c.not_after, &c.fingerprint_sha256));
            if c.not_after < e.0 {
                *e = (c.not_after, &c.fingerprint_sha256);
            }
        }
    }
    for (path, (not_after, fp)) in clients {
        if let Some(cluster) = cluster_of.get(path) {
            a.copies.push(Copy {
                cluster: (*cluster).to_owned(),
                path: path.to_owned(),
                not_after,
                client_fingerprint: fp.to_owned(),
            });
        }
    }
    a
}

impl Local<'_> {
    /// `certfleet-agent recover gke-kubeconfig [--cluster C]... [--dry-run]` (see the module
    /// documentation). Returns the closing summary.
    ///
    /// Idempotent: the fetch's step id derives from the cluster, path and expired client
    /// certificate, the install's from the fetch's; a repeat is answered from the journal (or
    /// resumes the interrupted step) and, once installed, the scan shows nothing due.
    pub fn gke_kubeconfig(
        &self,
        clusters: &[String],
        dry_run: bool,
    ) -> Result<String, RecoverError> {
        let found = crate::collect::scan_into(self.cfg, crate::collect::Collection::without_der());
        let certs: Vec<CertRecord> = found.into_certificates();
        let t = now();
        // Expired = due within one second, as `certfleet recover gke-kubeconfig` counts it.
        let a = assess(&certs, t + 1);
        let known: Vec<&str> = {
            let mut v: Vec<&str> = a.copies.iter().map(|c| c.cluster.as_str()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if known.is_empty() {
            return Err(RecoverError::Check(format!(
                "no user-cluster kubeconfig with a client certificate found under {} (the \
                 gke_admin collector looks in gke.workdir, default /home/ubuntu)",
                self.cfg.root.display()
            )));
        }
        if let Some(c) = clusters.iter().find(|c| !known.contains(&c.as_str())) {
            return Err(RecoverError::Usage(format!(
                "no kubeconfig of user cluster {c:?} on this workstation (clusters: {})",
                known.join(", ")
            )));
        }
        let due: Vec<&Copy> = a
            .copies
            .iter()
            .filter(|c| clusters.is_empty() || clusters.contains(&c.cluster))
            .filter(|c| c.not_after <= t + 1)
            .collect();
        (self.out)(format!(
            "recover gke-kubeconfig on this workstation: {} kubeconfig(s) with an expired client \
             certificate",
            due.len()
        ));
        for c in &due {
            (self.out)(format!(
                "  {} (cluster {}): client certificate EXPIRED {}",
                c.path,
                c.cluster,
                format_time(c.not_after)
            ));
        }
        if due.is_empty() {
            return Ok(format!(
                "nothing to fetch: no user-cluster kubeconfig with an expired client certificate \
                 (clusters: {})",
                known.join(", ")
            ));
        }
        if let Some((kc, na)) = &a.admin_expired {
            let why = format!(
                "recover gke-kubeconfig: not started, nothing changed: the admin kubeconfig {kc} \
                 has a client certificate that expired {} too, and the admin cluster refuses it; \
                 renew the admin cluster certificates first",
                format_time(*na)
            );
            (self.out)(format!("STOP: {why}"));
            audit(
                self.state,
                "recover gke-kubeconfig refused",
                json!({"admin_kubeconfig": kc, "reason": why}),
            )?;
            return Err(RecoverError::Refused(why));
        }
        for c in &due {
            (self.out)(format!(
                "  fetch: kubectl --kubeconfig <admin kubeconfig> get secret admin -n {} (staged \
                 0600 in the state directory); install: back up {}, write it 0600 with the same \
                 owner, kubectl version through it, restore on failure",
                c.cluster, c.path
            ));
        }
        if dry_run {
            audit(
                self.state,
                "recover gke-kubeconfig dry run",
                json!({"due": due.iter().map(|c| &c.path).collect::<Vec<_>>()}),
            )?;
            return Ok("dry run: nothing changed".into());
        }
        audit(
            self.state,
            "recover gke-kubeconfig start",
            json!({"due": due.iter().map(|c| &c.path).collect::<Vec<_>>()}),
        )?;
        for c in &due {
            let h = certfleet_common::pki::sha256_hex(
                format!("{}\n{}\n{}", c.cluster, c.path, c.client_fingerprint).as_bytes(),
            );
            let staged_dir = self.state.path().join("staged");
            let result = self
                .step(
                    &format!("recover-gke-fetch-{}", &h[..16]),
                    "gke.fetch_kubeconfig",
                    &json!({"cluster": c.cluster}),
                    // Reusable while its staged file is there to install (the install removes it).
                    &|d| {
                        d["staged"]
                            .as_str()
                            .is_some_and(|s| staged_dir.join(s).exists())
                    },
                )
                .and_then(|f| {
                    let d = &f.details;
                    self.step(
                        &format!("{}-install", f.step_id),
                        "kubeconfig.install",
                        &json!({
                            "path": c.path,
                            "staged": d["staged"],
                            "sha256": d["sha256"],
                            "ca_sha256": d["ca_sha256"],
                            "verify_access": true,
                        }),
                        &|_| true,
                    )
                });
            if let Err(e) = result {
                audit(
                    self.state,
                    "recover gke-kubeconfig failed",
                    json!({"path": c.path, "cluster": c.cluster, "error": e.to_string()}),
                )?;
                return Err(e);
            }
        }
        audit(
            self.state,
            "recover gke-kubeconfig done",
            json!({"installed": due.iter().map(|c| &c.path).collect::<Vec<_>>()}),
        )?;
        Ok(format!(
            "recovered: {} kubeconfig(s) fetched anew and installed: {}",
            due.len(),
            due.iter()
                .map(|c| c.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use certfleet_common::model::Location;

    use super::*;

    fn blank() -> CertRecord {
        CertRecord::default()
    }

    fn rec(role: &str, fp: &str, not_after: i64, path: &str, detail: &str) -> CertRecord {
        CertRecord {
            fingerprint_sha256: fp.into(),
            role: role.into(),
            not_after,
            locations: vec![Location {
                kind: "kubeconfig".into(),
                path: path.into(),
                detail: detail.into(),
                ..Default::default()
            }],
            ..blank()
        }
    }

    #[test]
    fn copies_are_named_by_their_cluster_ca_and_an_expired_admin_client_is_found() {
        let certs = vec![
            rec("gke.user_cluster.ca", "ca1", 900, "/w/uc1", "cluster=uc1"),
            rec("gke.user_cluster.client", "c1", 10, "/w/uc1", "user=a"),
            rec("gke.user_cluster.client", "c1b", 5, "/w/uc1", "user=b"),
            rec("gke.user_cluster.ca", "ca2", 900, "/w/uc2", "cluster=uc2"),
            rec("gke.user_cluster.client", "c2", 500, "/w/uc2", "user=a"),
            // A client with no cluster CA beside it is nobody's copy.
            rec("gke.user_cluster.client", "c3", 1, "/w/stray", "user=a"),
            rec(
                "gke.admin_cluster.client",
                "adm",
                500,
                "/w/kubeconfig",
                "user=a",
            ),
        ];
        let a = assess(&certs, 100);
        assert_eq!(
            a.copies,
            [
                Copy {
                    cluster: "uc1".into(),
                    path: "/w/uc1".into(),
                    not_after: 5,
                    client_fingerprint: "c1b".into()
                },
                Copy {
                    cluster: "uc2".into(),
                    path: "/w/uc2".into(),
                    not_after: 500,
                    client_fingerprint: "c2".into()
                },
            ]
        );
        assert_eq!(a.admin_expired, None);
        assert_eq!(
            assess(&certs, 600).admin_expired,
            Some(("/w/kubeconfig".into(), 500))
        );
    }
}
