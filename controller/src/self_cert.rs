//! certfleet must never be the outage: the controller's own server certificate is renewed
//! while the controller runs (not only at start-up), and the fleet CA's approaching expiry is
//! warned about long before it bites.
//!
//! [`SelfCert::start`] checks once when the controller loads (a certificate that expired while
//! the controller was stopped is re-issued before the listener opens); [`SelfCert::run`] then
//! checks every `interval` and swaps a renewed certificate into the running listener
//! ([`certfleet_common::tls::ReloadableServerCert`]): new handshakes get it, established
//! streams keep theirs. The fleet CA cannot renew itself (every agent and operator pins it),
//! so within [`CA_WARN_WITHIN`] of its notAfter every check logs a warning, and the
//! `certfleet_fleet_ca_expiry_timestamp_seconds` gauge ([`crate::http`]) lets monitoring alert.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::model::{format_time, now};
use certfleet_common::pki::FleetCa;
use certfleet_common::tls::ReloadableServerCert;

use crate::server::DataDir;

/// Re-issue the server certificate when it has less than this left.
pub const RENEW_WITHIN: i64 = 30 * 86_400;
/// Warn about the fleet CA this long before it expires (it lives 10 years; replacing it means
/// re-enrolling every agent and re-issuing every operator, which takes planning).
pub const CA_WARN_WITHIN: i64 = 365 * 86_400;

/// The controller's own certificate could not be checked or renewed.
#[derive(Debug, thiserror::Error)]
pub enum SelfCertError {
    /// A file of the data directory is unreadable or not a certificate.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Issuing or installing the new certificate failed.
    #[error("renewing the controller certificate {path}: {reason}")]
    Renew {
        /// The server certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What one check found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The server certificate was re-issued (and is now served).
    pub renewed: bool,
    /// notAfter of the certificate served after the check.
    pub server_not_after: i64,
    /// notAfter of the fleet CA.
    pub ca_not_after: i64,
    /// The fleet CA is within [`CA_WARN_WITHIN`] of expiry (warning logged).
    pub ca_warning: bool,
}

/// The controller's server certificate, kept valid.
pub struct SelfCert {
    dir: PathBuf,
    ca: FleetCa,
    served: Arc<ReloadableServerCert>,
}

fn not_after_of(path: &Path) -> Result<i64, SelfCertError> {
    let bad = |reason: String| SelfCertError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let der = certfleet_common::pem::first_certificate(&pem).map_err(|e| bad(e.to_string()))?;
    Ok(certfleet_common::x509::parse_der(&der)
        .map_err(|e| bad(e.to_string()))?
        .not_after)
}

impl SelfCert {
    /// Checks (and renews) once, then serves the data directory's certificate.
    pub fn start(dir: &Path, ca: FleetCa) -> anyhow::Result<Self> {
        let d = DataDir(dir.to_path_buf());
        Self::renew_if_due(&d, &ca, now())?;
        let served = ReloadableServerCert::new(
            ca.cert_pem(),
            &crate::server::read(&d.server_cert())?,
            &crate::server::read(&d.server_key())?,
        )?;
        Ok(SelfCert {
            dir: dir.to_path_buf(),
            ca,
            served,
        })
    }

    /// The certificate the listener resolves on each handshake.
    pub fn served(&self) -> Arc<ReloadableServerCert> {
        self.served.clone()
    }

    /// Re-issues the server certificate files when within [`RENEW_WITHIN`] of `at`.
    ///
    /// Idempotent: it acts only on a certificate that is due, and the files are replaced
    /// atomically key first, so a crash leaves either the old pair or a new key whose
    /// mismatch the next start detects by renewing again (the due check reads the certificate).
    fn renew_if_due(d: &DataDir, ca: &FleetCa, at: i64) -> anyhow::Result<bool> {
        let na = not_after_of(&d.server_cert())?;
        let key_ok = crate::server::read(&d.server_key())
            .ok()
            .zip(crate::server::read(&d.server_cert()).ok())
            .is_some_and(|(k, c)| ReloadableServerCert::new(ca.cert_pem(), &c, &k).is_ok());
        if na - at >= RENEW_WITHIN && key_ok {
            return Ok(false);
        }
        let sans: Vec<String> = crate::server::read(&d.server_sans())
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_else(|_| crate::server::default_sans(&[]));
        tracing::warn!(
            cert = %d.server_cert().display(),
            not_after = %format_time(na),
            expired = na <= at,
            "controller certificate near expiry or expired; re-issuing"
        );
        crate::server::issue_server_cert(d, ca, &sans).map_err(|e| SelfCertError::Renew {
            path: d.server_cert(),
            reason: format!("{e:#}"),
        })?;
        Ok(true)
    }

    /// One check at time `at`: renews the server certificate if due and swaps it into the
    /// listener; warns when the fleet CA is near its end.
    pub fn check(&self, at: i64) -> Result<Checked, SelfCertError> {
        let d = DataDir(self.dir.clone());
        let renewed = Self::renew_if_due(&d, &self.ca, at).map_err(|e| SelfCertError::Renew {
            path: d.server_cert(),
            reason: format!("{e:#}"),
        })?;
        if renewed {
            let read = |p: PathBuf| {
                crate::server::read(&p).map_err(|e| SelfCertError::Read {
                    path: p,
                    reason: format!("{e:#}"),
                })
            };
            self.served
                .replace(
                    self.ca.cert_pem(),
                    &read(d.server_cert())?,
                    &read(d.server_key())?,
                )
                .map_err(|e| SelfCertError::Renew {
                    path: d.server_cert(),
                    reason: e.to_string(),
                })?;
            tracing::info!(cert = %d.server_cert().display(), "serving the renewed controller certificate");
        }
        let ca_not_after = not_after_of(&d.ca_cert())?;
        let ca_warning = ca_not_after - at < CA_WARN_WITHIN;
        if ca_warning {
            tracing::warn!(
                ca = %d.ca_cert().display(),
                not_after = %format_time(ca_not_after),
                days_left = (ca_not_after - at) / 86_400,
                "the fleet CA expires soon: every agent and operator certificate stops working then; plan its replacement now"
            );
        }
        let served = certfleet_common::x509::parse_der(&self.served.leaf_der())
            .map(|r| r.not_after)
            .unwrap_or(0);
        Ok(Checked {
            renewed,
            server_not_after: served,
            ca_not_after,
            ca_warning,
        })
    }

    /// Checks every `interval` until `stop` turns true.
    pub async fn run(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.check(now()) {
                        tracing::error!(error = %e, "checking the controller's own certificate failed");
                    }
                }
                _ = stop.wait_for(|v| *v) => break,
            }
        }
    }
}

/// notAfter of the fleet CA certificate in `ca_pem` (for the metrics gauge).
pub fn ca_not_after(ca_pem: &str) -> Option<i64> {
    let der = certfleet_common::pem::first_certificate(ca_pem.as_bytes()).ok()?;
    certfleet_common::x509::parse_der(&der)
        .ok()
        .map(|r| r.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller whose certificate is due gets a new one from `check` while it runs, and
    /// the running listener's resolver serves it; the CA warning starts a year before expiry.
    #[test]
    fn renews_while_running_and_warns_before_the_ca_ends() {
        certfleet_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        crate::server::init(dir.path(), &[]).unwrap();
        let d = DataDir(dir.path().to_path_buf());
        let ca = FleetCa::from_pem(
            &std::fs::read_to_string(d.ca_cert()).unwrap(),
            &std::fs::read_to_string(d.ca_key()).unwrap(),
        )
        .unwrap();
        let sc = SelfCert::start(dir.path(), ca).unwrap();
        let first = sc.served().leaf_der();
        let na = not_after_of(&d.server_cert()).unwrap();
        // Now: nothing due.
        let c = sc.check(now()).unwrap();
        assert!(!c.renewed && !c.ca_warning);
        assert_eq!(sc.served().leaf_der(), first);
        // 20 days before the server certificate ends: renewed and served, files replaced.
        let c = sc.check(na - 20 * 86_400).unwrap();
        assert!(c.renewed);
        assert_ne!(sc.served().leaf_der(), first);
        let on_disk =
            certfleet_common::pem::first_certificate(&std::fs::read(d.server_cert()).unwrap())
                .unwrap();
        assert_eq!(sc.served().leaf_der(), on_disk);
        // Half a year before the CA ends: warned.
        let c = sc.check(c.ca_not_after - 180 * 86_400).unwrap();
        assert!(c.ca_warning);
    }
}
