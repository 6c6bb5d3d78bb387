//! Emergency recovery on one host with no controller: the oVirt host whose VDSM certificate
//! expired, recovered by hand-carried files (seed 003, "renewal after expiry"):
//!
//! ```text
//! host:   certfleet-agent recover ovirt-host --csr-out host.csr     # CSR from vdsmkey.pem
//! engine: certfleet-agent sign --csr host.csr --out host.cer        # oVirt's openssl ca + SAN
//! host:   certfleet-agent recover ovirt-host --cert-in host.cer     # install, restart, verify
//! ```
//!
//! Each piece runs the same actions the controller's `ovirt-hosts-offline` recipe sends
//! (`csr.create`, `ovirt.enroll_request`, `cert.install`), through [`crate::act::execute`], so
//! the agent's intent log, result journal and backups work exactly as for a controller step: a
//! run killed half-way is resumed from the intent log when the command is repeated, and a
//! finished step is answered from the journal instead of acting twice.
//!
//! Step ids are derived from what the step acts on, never from the clock: `sign` uses the
//! public key of the CSR, so repeating it (even with a CSR made again from the same key)
//! returns the certificate already signed instead of signing a second one; `--cert-in` uses
//! the certificate's fingerprint. A journaled answer that can no longer serve (the signed
//! certificate has expired since, or an install failed and was rolled back) moves on to the
//! next generation of the id (`…-2`, `…-3`), so a later genuine renewal is never blocked.
//!
//! Decisions: the CSR carries the host's current subject (`/O=…/CN=fqdn`), so the engine side
//! needs only the file; the SAN travels as `--san` (printed by `--csr-out` from the expired
//! certificate, `DNS:<CN>` by default) because `csr.create` keeps to the seed's plain
//! `openssl req` and the engine's `cert.conf` takes the SAN from the environment anyway
//! (`OVIRT_SAN`, see [`crate::act::ovirt`]). Before anything is replaced on the host, the new
//! certificate must match `vdsmkey.pem`, be valid now and chain to the host's
//! `certs/cacert.pem` (real `openssl verify`), so a wrong file changes nothing.

pub mod gke;
pub mod hosted_engine;
pub mod vsphere;

use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_common::proto as pb;
use serde_json::{Value, json};

use crate::act::{self, ActContext, ActError};
use crate::config::AgentConfig;
use crate::state::StateDir;

/// The VDSM certificate of an oVirt host (A8), relative to the VDSM PKI.
const VDSM_CERT: &str = "certs/vdsmcert.pem";
/// Its key, which never leaves the host.
const VDSM_KEY: &str = "keys/vdsmkey.pem";
/// The engine CA as the host-deploy role copied it.
const VDSM_CA: &str = "certs/cacert.pem";
/// Where the VDSM certificate is copied (A8; seed 003 copies the first and the last).
const VDSM_COPIES: &[&str] = &[
    "libvirt-spice/server-cert.pem",
    "libvirt-vnc/server-cert.pem",
    "/etc/pki/libvirt/clientcert.pem",
];
/// Restarted after the install, in this order (seed 003).
const UNITS: &[&str] = &["libvirtd", "vdsmd"];

/// A recovery could not be done; the message names the file, step or command.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// An input file is missing, unreadable or not what it must be.
    #[error("{path}: {reason}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A step failed on this host (its own message says what was rolled back).
    #[error("step {step} ({action}) failed: {message}")]
    Step {
        /// Step id in the agent's journal.
        step: String,
        /// Action run.
        action: String,
        /// The action's error.
        message: String,
    },
    /// A check before or after the change failed.
    #[error("{0}")]
    Check(String),
    /// Writing an output file failed.
    #[error(transparent)]
    Write(#[from] certfleet_common::atomic::WriteError),
    /// The recovery must not start (a blocker named in the message); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The command line names something this host does not have.
    #[error("{0}")]
    Usage(String),
}

/// The audit log of local recoveries in the agent's state directory.
pub const AUDIT: &str = "recover-audit.jsonl";

/// Appends one line (time, what, detail) to [`AUDIT`], synced. An unwritable log stops a
/// recovery before it changes anything: the first line is written before the first change.
pub(crate) fn audit(
    state: &StateDir,
    what: &str,
    detail: serde_json::Value,
) -> Result<(), RecoverError> {
    use std::io::Write;
    let p = state.path().join(AUDIT);
    let line = json!({
        "at": certfleet_common::model::format_time(certfleet_common::model::now()),
        "what": what,
        "detail": detail,
    });
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        })
        .map_err(|e| RecoverError::Input {
            path: p.clone(),
            reason: format!("cannot append to the recovery audit log: {e}"),
        })?;
    Ok(())
}

impl From<ActError> for RecoverError {
    fn from(e: ActError) -> Self {
        RecoverError::Check(e.0)
    }
}

/// Runs steps locally, printing their output as it comes.
pub struct Local<'a> {
    /// Agent configuration (root prefix, tool paths, settings).
    pub cfg: &'a AgentConfig,
    /// State directory (journal, intents, backups).
    pub state: &'a StateDir,
    /// Per-step tool timeout.
    pub timeout: Duration,
    /// Where progress lines go.
    pub out: &'a (dyn Fn(String) + Sync),
}

/// What [`Local::step`] got: the action's details and whether the journal answered.
pub struct Done {
    /// The action's JSON details.
    pub details: Value,
    /// Answered from the journal (the step ran before).
    pub from_journal: bool,
    /// The step id used.
    pub step_id: String,
}

impl Local<'_> {
    fn vdsm(&self, rel: &str) -> PathBuf {
        if rel.starts_with('/') {
            self.cfg.host_path(rel)
        } else {
            self.cfg
                .host_path(
                    self.cfg
                        .setting("ovirt.vdsm_pki")
                        .unwrap_or("/etc/pki/vdsm"),
                )
                .join(rel)
        }
    }

    fn shown_vdsm(&self, rel: &str) -> String {
        self.cfg.shown(&self.vdsm(rel))
    }

    /// Runs `action` as step `<prefix>-<n>` for the first generation `n` that is either not
    /// journaled yet (it runs, or resumes from its intent) or journaled as a success that
    /// `reusable` accepts (answered from the journal).
    pub fn step(
        &self,
        prefix: &str,
        action: &str,
        args: &Value,
        reusable: &dyn Fn(&Value) -> bool,
    ) -> Result<Done, RecoverError> {
        let mut n = 1u32;
        loop {
            let step_id = format!("{prefix}-{n}");
            if let Some(done) = act::journal::lookup(self.state, &step_id) {
                let details: Value =
                    serde_json::from_str(&done.details_json).unwrap_or(Value::Null);
                if done.ok && reusable(&details) {
                    (self.out)(format!(
                        "step {step_id} ({action}) already ran: {}",
                        done.message
                    ));
                    return Ok(Done {
                        details,
                        from_journal: true,
                        step_id,
                    });
                }
                n += 1;
                continue;
            }
            tracing::info!(step = %step_id, action, "running recovery step locally");
            let req = pb::StepRequest {
                step_id: step_id.clone(),
                action: action.to_owned(),
                args_json: args.to_string(),
                timeout_secs: u32::try_from(self.timeout.as_secs()).unwrap_or(u32::MAX),
                dry_run: false,
            };
            let res = act::execute(self.cfg, self.state, &req, self.out);
            if !res.ok {
                return Err(RecoverError::Step {
                    step: step_id,
                    action: action.to_owned(),
                    message: res.message,
                });
            }
            (self.out)(res.message.clone());
            return Ok(Done {
                details: serde_json::from_str(&res.details_json).unwrap_or(Value::Null),
                from_journal: res.from_journal,
                step_id,
            });
        }
    }

    /// A context for read-only checks outside a step (nothing is journaled by them).
    fn check_ctx<'c>(&'c self, step_id: &'c str) -> ActContext<'c> {
        ActContext {
            cfg: self.cfg,
            state: self.state,
            step_id,
            action: "recover.check",
            resumed: None,
            timeout: self.timeout,
            output: self.out,
        }
    }

    /// The VDSM certificate as it is now (usually expired), if it can be read.
    fn current_vdsm(&self) -> Option<certfleet_common::model::CertRecord> {
        let p = self.vdsm(VDSM_CERT);
        let pem = std::fs::read(&p).ok()?;
        let der = certfleet_common::pem::first_certificate(&pem).ok()?;
        certfleet_common::x509::parse_der(&der).ok()
    }

    /// `recover ovirt-host --csr-out FILE`: a CSR from the host's own VDSM key, with the
    /// subject of its current certificate (or `subject`), written to `out`. Returns the
    /// SAN the engine should put in (for the printed `sign` command).
    ///
    /// Idempotent: changes nothing on the host (`csr.create` only reads the key); the step
    /// id is derived from the key file's hash and the subject, so a repeat is answered from
    /// the journal with the same CSR.
    pub fn ovirt_host_csr(
        &self,
        out: &Path,
        subject: Option<&str>,
    ) -> Result<String, RecoverError> {
        let key = self.vdsm(VDSM_KEY);
        let key_bytes = std::fs::read(&key).map_err(|e| RecoverError::Input {
            path: key.clone(),
            reason: format!("cannot read the VDSM key: {e}"),
        })?;
        let current = self.current_vdsm();
        let subject = match (subject, &current) {
            (Some(s), _) => s.to_owned(),
            (None, Some(c)) => openssl_subject(&c.subject),
            (None, None) => {
                return Err(RecoverError::Input {
                    path: self.vdsm(VDSM_CERT),
                    reason: "no readable VDSM certificate to take the subject from: pass \
                             --subject /O=<org>/CN=<host fqdn>"
                        .into(),
                });
            }
        };
        let san = current
            .as_ref()
            .map(|c| {
                c.sans
                    .iter()
                    .filter(|s| s.starts_with("DNS:") || s.starts_with("IP:"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .or_else(|| cn_of(&subject).map(|cn| format!("DNS:{cn}")))
            .unwrap_or_default();
        if let Some(c) = &current {
            (self.out)(format!(
                "{} : {} , notAfter {}{}",
                self.shown_vdsm(VDSM_CERT),
                c.subject,
                certfleet_common::model::format_time(c.not_after),
                if c.not_after <= certfleet_common::model::now() {
                    " (EXPIRED)"
                } else {
                    ""
                }
            ));
        }
        let prefix = format!(
            "recover-ovirt-host-csr-{}",
            &certfleet_common::pki::sha256_hex(
                format!(
                    "{}\n{subject}",
                    certfleet_common::pki::sha256_hex(&key_bytes)
                )
                .as_bytes()
            )[..16]
        );
        let done = self.step(
            &prefix,
            "csr.create",
            &json!({"key": self.shown_vdsm(VDSM_KEY), "subject": subject}),
            &|d| d["csr_pem"].as_str().is_some(),
        )?;
        let csr = done.details["csr_pem"].as_str().unwrap_or_default();
        certfleet_common::atomic::write_file(
            out,
            csr.as_bytes(),
            certfleet_common::atomic::PUBLIC,
        )?;
        tracing::info!(path = %out.display(), subject, "wrote the VDSM CSR");
        Ok(san)
    }

    /// `sign --csr FILE --out FILE` on the engine: `pki-enroll-request.sh`'s `openssl ca`
    /// with oVirt's `cert.conf` and the SAN (action `ovirt.enroll_request`).
    ///
    /// Idempotent: the step id is derived from the CSR's public key, so the engine never
    /// signs twice for one key: a repeat (also with a CSR made again from that key) returns
    /// the certificate from the journal while it is still valid; a run killed half-way is
    /// resumed and finds its certificate in the engine's `database.txt`
    /// ([`crate::act::intent::signed_before`]).
    pub fn sign(&self, req: &SignRequest<'_>) -> Result<Done, RecoverError> {
        let text = std::fs::read_to_string(req.csr).map_err(|e| RecoverError::Input {
            path: req.csr.to_path_buf(),
            reason: format!("cannot read the CSR: {e}"),
        })?;
        let bad = |reason: String| RecoverError::Input {
            path: req.csr.to_path_buf(),
            reason,
        };
        let csr_pem = pem_block(&text, "CERTIFICATE REQUEST")
            .ok_or_else(|| bad("no PEM certificate request in the file".into()))?;
        let key_id = certfleet_common::pki::csr_public_key_id(&csr_pem)
            .map_err(|e| bad(format!("not a valid CSR: {e}")))?;
        let csr_subject = csr_subject(&csr_pem).map_err(bad)?;
        let subject = match req.subject {
            Some(s) => s.to_owned(),
            None if !csr_subject.is_empty() => openssl_subject(&csr_subject),
            None => {
                return Err(bad(
                    "the CSR has an empty subject (made with -subj /): pass --subject \
                     /O=<org>/CN=<host fqdn>"
                        .into(),
                ));
            }
        };
        let cn = cn_of(&subject).ok_or_else(|| {
            bad(format!(
                "subject {subject} has no CN (the host's FQDN names the engine's request)"
            ))
        })?;
        let san = req
            .san
            .map(str::to_owned)
            .unwrap_or_else(|| format!("DNS:{cn}"));
        let mut args = json!({
            "name": cn,
            "subject": subject,
            "san": san,
            "ca": "ca",
            "csr_pem": csr_pem,
        });
        if let Some(d) = req.days {
            args["days"] = json!(d);
        }
        let prefix = format!("recover-sign-{}", &key_id[..16]);
        let now = certfleet_common::model::now();
        let done = self.step(&prefix, "ovirt.enroll_request", &args, &|d| {
            d["not_after"].as_i64().is_some_and(|na| na > now + 86_400)
        })?;
        let pem = done.details["cert_pem"].as_str().ok_or_else(|| {
            RecoverError::Check(format!("step {} returned no certificate", done.step_id))
        })?;
        if done.from_journal {
            let der = certfleet_common::pem::first_certificate(pem.as_bytes())
                .map_err(|e| RecoverError::Check(format!("journaled certificate: {e}")))?;
            let rec = certfleet_common::x509::parse_der(&der)
                .map_err(|e| RecoverError::Check(format!("journaled certificate: {e}")))?;
            if openssl_subject(&rec.subject) != subject
                || !san
                    .split(',')
                    .all(|s| rec.sans.iter().any(|h| h == s.trim()))
            {
                return Err(RecoverError::Check(format!(
                    "the engine already signed serial {} for this key ({}, SAN {:?}; step {}) \
                     and does not sign a second certificate for one key; to get a different \
                     subject or SAN, make a new key on the host (Enroll Certificate)",
                    rec.serial, rec.subject, rec.sans, done.step_id
                )));
            }
            (self.out)(format!(
                "not signing again: serial {} for this key is still valid",
                rec.serial
            ));
        }
        certfleet_common::atomic::write_file(
            req.out,
            pem.as_bytes(),
            certfleet_common::atomic::PUBLIC,
        )?;
        tracing::info!(path = %req.out.display(), cn, "wrote the signed host certificate");
        Ok(done)
    }

    /// `recover ovirt-host --cert-in FILE`: checks the certificate against the host (matches
    /// `vdsmkey.pem`, valid now, chains to `certs/cacert.pem`) before touching anything, then
    /// `cert.install` to `vdsmcert.pem` and each copy the host has (backup first, mode 0644,
    /// owner kept, key check, `libvirtd` then `vdsmd` restarted and required active, all
    /// restored on failure), then verifies the result.
    ///
    /// Idempotent: the step id is derived from the certificate's fingerprint; a repeat when
    /// `vdsmcert.pem` already holds it is answered from the journal (verification runs again);
    /// a run killed half-way resumes `cert.install`, which keeps its first backup and does not
    /// rewrite a file that already holds the certificate.
    pub fn ovirt_host_install(
        &self,
        cert_in: &Path,
        dry_run: bool,
    ) -> Result<String, RecoverError> {
        let bad = |reason: String| RecoverError::Input {
            path: cert_in.to_path_buf(),
            reason,
        };
        let text = std::fs::read(cert_in).map_err(|e| bad(format!("cannot read: {e}")))?;
        let der =
            certfleet_common::pem::first_certificate(&text).map_err(|e| bad(e.to_string()))?;
        let rec = certfleet_common::x509::parse_der(&der).map_err(|e| bad(e.to_string()))?;
        let now = certfleet_common::model::now();
        if rec.not_after <= now || rec.not_before > now {
            return Err(bad(format!(
                "not valid now (notBefore {}, notAfter {})",
                certfleet_common::model::format_time(rec.not_before),
                certfleet_common::model::format_time(rec.not_after)
            )));
        }
        let key = self.vdsm(VDSM_KEY);
        let ca = self.vdsm(VDSM_CA);
        // Checks before anything changes, on a private copy of the candidate.
        let tmp = self.state.path().join("recover-candidate.pem");
        let body = certfleet_common::pem::encode("CERTIFICATE", &der);
        certfleet_common::atomic::write_file(
            &tmp,
            body.as_bytes(),
            certfleet_common::atomic::PUBLIC,
        )?;
        let checked = (|| -> Result<(), RecoverError> {
            let ctx = self.check_ctx("recover-precheck");
            act::generic::key_matches(&ctx, &key, &tmp)
                .map_err(|e| bad(format!("{e}: not the certificate for this host's key")))?;
            let o = self.cfg.tool("openssl", "/usr/bin/openssl");
            ctx.run_ok(
                &o,
                &[
                    "verify",
                    "-CAfile",
                    &ca.display().to_string(),
                    &tmp.display().to_string(),
                ],
                None,
            )
            .map_err(|e| {
                bad(format!(
                    "does not chain to the engine CA this host trusts ({}): {e}",
                    self.cfg.shown(&ca)
                ))
            })?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        checked?;
        let mut paths = vec![self.vdsm(VDSM_CERT)];
        paths.extend(
            VDSM_COPIES
                .iter()
                .map(|c| self.vdsm(c))
                .filter(|p| p.exists()),
        );
        let shown: Vec<String> = paths.iter().map(|p| self.cfg.shown(p)).collect();
        (self.out)(format!(
            "new certificate {} serial {} until {}: matches {}, chains to {}",
            rec.subject,
            rec.serial,
            certfleet_common::model::format_time(rec.not_after),
            self.cfg.shown(&key),
            self.cfg.shown(&ca)
        ));
        if dry_run {
            return Ok(format!(
                "dry run: would back up and replace {}, then restart {} and verify",
                shown.join(", "),
                UNITS.join(", ")
            ));
        }
        let old = self.current_vdsm();
        let targets: Vec<Value> = shown
            .iter()
            .map(|p| json!({"path": p, "mode": "0644"}))
            .collect();
        let cert_path = self.vdsm(VDSM_CERT);
        let want = der.clone();
        self.step(
            &format!(
                "recover-ovirt-host-install-{}",
                &rec.fingerprint_sha256[..16]
            ),
            "cert.install",
            &json!({
                "cert_pem": body,
                "targets": targets,
                "key": self.cfg.shown(&key),
                "restart": UNITS,
            }),
            &|_| {
                std::fs::read(&cert_path)
                    .ok()
                    .and_then(|b| certfleet_common::pem::first_certificate(&b).ok())
                    .is_some_and(|d| d == want)
            },
        )?;
        self.verify_host(&paths, &der, old.as_ref())
    }

    /// After the install: every copy holds the new certificate, it chains to the host's CA,
    /// and `libvirtd` and `vdsmd` are active.
    fn verify_host(
        &self,
        paths: &[PathBuf],
        der: &[u8],
        old: Option<&certfleet_common::model::CertRecord>,
    ) -> Result<String, RecoverError> {
        for p in paths {
            let b = std::fs::read(p)
                .map_err(|e| RecoverError::Check(format!("{}: {e}", p.display())))?;
            let d = certfleet_common::pem::first_certificate(&b)
                .map_err(|e| RecoverError::Check(format!("{}: {e}", p.display())))?;
            if d != der {
                return Err(RecoverError::Check(format!(
                    "{} does not hold the new certificate",
                    self.cfg.shown(p)
                )));
            }
        }
        let ctx = self.check_ctx("recover-verify");
        let o = self.cfg.tool("openssl", "/usr/bin/openssl");
        ctx.run_ok(
            &o,
            &[
                "verify",
                "-CAfile",
                &self.vdsm(VDSM_CA).display().to_string(),
                &paths[0].display().to_string(),
            ],
            None,
        )?;
        let systemctl = self.cfg.tool("systemctl", "/usr/bin/systemctl");
        for u in UNITS {
            let out = crate::exec::run(&systemctl, &["is-active", u], None, self.timeout)
                .map_err(|e| RecoverError::Check(e.to_string()))?;
            if out.stdout.trim() != "active" {
                return Err(RecoverError::Check(format!(
                    "{u} is {} after the recovery (see journalctl -u {u})",
                    out.stdout.trim()
                )));
            }
        }
        let rec = certfleet_common::x509::parse_der(der)
            .map_err(|e| RecoverError::Check(e.to_string()))?;
        Ok(format!(
            "recovered: {} serial {} until {} (was {}) in {} place(s); {} active",
            self.cfg.shown(&paths[0]),
            rec.serial,
            certfleet_common::model::format_time(rec.not_after),
            old.map(|o| format!(
                "serial {} until {}",
                o.serial,
                certfleet_common::model::format_time(o.not_after)
            ))
            .unwrap_or_else(|| "unreadable".into()),
            paths.len(),
            UNITS.join(" and ")
        ))
    }
}

/// What `sign` is asked to do.
pub struct SignRequest<'a> {
    /// The CSR file (from `recover ovirt-host --csr-out`).
    pub csr: &'a Path,
    /// Where the certificate goes.
    pub out: &'a Path,
    /// `OVIRT_SAN` (default `DNS:<CN>`).
    pub san: Option<&'a str>,
    /// Subject in openssl's `/K=V` form (default: the CSR's).
    pub subject: Option<&'a str>,
    /// Validity (default: `VdsCertificateValidityInDays`, else 1827).
    pub days: Option<u64>,
}

/// `O=a, CN=b` (x509-parser's form) as openssl's `/O=a/CN=b`.
pub fn openssl_subject(dn: &str) -> String {
    dn.split(", ")
        .map(|p| format!("/{}", p.replace('/', "\\/")))
        .collect()
}

/// The CN of an openssl-form subject.
fn cn_of(subject: &str) -> Option<String> {
    subject
        .split('/')
        .find_map(|p| p.strip_prefix("CN="))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The first PEM block labelled `label` in `text` (text around it is ignored, as openssl does).
fn pem_block(text: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(format!("{}\n", &text[start..stop]))
}

/// The subject of a PEM CSR in x509-parser's `K=V, K=V` form ("" when empty).
fn csr_subject(csr_pem: &str) -> Result<String, String> {
    let der = certfleet_common::pem::decode_all(csr_pem.as_bytes())
        .map_err(|e| format!("not a PEM CSR: {e}"))?
        .into_iter()
        .next()
        .map(|(_, d)| d)
        .ok_or("no PEM block")?;
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("unreadable CSR: {e}"))?;
    Ok(csr.certification_request_info.subject.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_convert_both_ways() {
        assert_eq!(
            openssl_subject("O=example.test, CN=kvm01.example.test"),
            "/O=example.test/CN=kvm01.example.test"
        );
        assert_eq!(
            cn_of("/O=example.test/CN=kvm01.example.test").as_deref(),
            Some("kvm01.example.test")
        );
        assert_eq!(cn_of("/O=x"), None);
    }

    #[test]
    fn pem_block_ignores_surrounding_text() {
        let t = "note\n-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\ntrailer";
        assert_eq!(
            pem_block(t, "CERTIFICATE REQUEST").unwrap(),
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert!(pem_block("nothing", "CERTIFICATE REQUEST").is_none());
    }
}
