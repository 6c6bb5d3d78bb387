//! `certfleet-agent recover vsphere`: the vCenter whose certificates already expired, brought
//! back on the VCSA itself when the controller is down too (the 3 a.m. case of issue 11).
//!
//! It scans this host with the agent's own vSphere collector (as `certfleet-agent scan`
//! does), decides what is due exactly as the controller's `certfleet recover vsphere` does
//! (controller/src/cli/recover/vsphere.rs; ported here for one node, see [`assess`]), prints
//! the plan, then runs, in the GSS order (`shared/reference/vsphere.md` §9), the action
//! sequence the `vsphere-sts`, `vsphere-machine-ssl` and `vsphere-solution-users` recipes send
//! for one node ([`plan`]): `vsphere.replication_gate`; `vsphere.sts` then
//! `vsphere.restart_services`; `vsphere.machine_ssl` (with its restart) then
//! `vsphere.clean_backup_store`; `vsphere.solution_users` then `vsphere.restart_services`.
//! Only what is due is planned. Each step goes through [`Local::step`], so the intent log,
//! journal and backups work as for a controller step.
//!
//! Step ids come from what each step acts on (the fingerprints of the certificates it
//! replaces), never from the clock. Before the first step the plan is written to
//! `recover-vsphere-plan.json` in the state directory and removed once every step succeeded:
//! a run that was killed (or whose step failed and rolled back) leaves it behind, and the
//! repeated command resumes that plan instead of assessing a host that is now half-recovered
//! (after a kill during the restart that follows the STS replacement, a fresh scan would no
//! longer show the STS as due and the interrupted restart would never finish). Finished steps
//! are answered from the journal; the interrupted one resumes from its intent, a failed one
//! runs again as the next generation of its id. Removing the file makes the next run assess
//! afresh.
//!
//! Refused before any change (exit 3), as the controller's version refuses: more than one STS
//! `TenantCredential` in vmdir while the STS is due (seed 001; `--allow-several-tenant-credentials`
//! after looking), an expired root in `TRUSTED_ROOTS` that this node's certificates chain to and
//! that is not the VMCA root (a custom CA certfleet cannot re-issue). A due VMCA root is reset
//! ("reset all", reference §9.4): `vsphere.vmca_root` first, then STS, Machine SSL and every
//! solution user issued again from the new root whatever their expiry. The STS signing certificate is
//! domain-wide: on a node with replication partners it is replaced here once, and the command
//! says that every other vCenter of the domain must then be restarted (fixsts.sh's
//! instructions); Machine SSL and solution users of other nodes are left to their own runs.
//! Every decision and outcome is appended to `recover-audit.jsonl`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use certfleet_common::model::{CertRecord, format_time, now};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Local, RecoverError, audit};

/// The plan of a run under way (or killed) in the state directory.
pub const PLAN_FILE: &str = "recover-vsphere-plan.json";

/// What the restart of every other node of the domain takes (fixsts.sh's instructions).
const RESTART_OTHERS: &str = "service-control --stop --all && service-control --start --all";

/// One due certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// What the plan prints.
    pub line: String,
    /// Its SHA-256 fingerprint (step ids are derived from these).
    pub fingerprint: String,
}

/// What this node's certificates say must be done, and what stops the recovery.
#[derive(Debug, Default)]
pub struct Assessment {
    /// The VMCA root, due: a new root first, then everything it signs.
    pub vmca_root: Vec<Due>,
    /// Due STS signing certificates (domain-wide).
    pub sts: Vec<Due>,
    /// Due Machine SSL certificate(s).
    pub machine_ssl: Vec<Due>,
    /// Due solution-user certificates.
    pub solution_users: Vec<Due>,
    /// Fingerprints of every STS, Machine SSL and solution-user certificate present, due or not
    /// (a new VMCA root re-issues them all).
    pub present: BTreeMap<&'static str, Vec<String>>,
    /// Why the recovery must not start (nothing is changed).
    pub blockers: Vec<String>,
}

impl Assessment {
    /// Nothing STS, Machine SSL, solution user or VMCA root is due.
    pub fn nothing(&self) -> bool {
        self.vmca_root.is_empty()
            && self.sts.is_empty()
            && self.machine_ssl.is_empty()
            && self.solution_users.is_empty()
    }

    fn lines(&self) -> Vec<String> {
        self.vmca_root
            .iter()
            .chain(&self.sts)
            .chain(&self.machine_ssl)
            .chain(&self.solution_users)
            .map(|d| d.line.clone())
            .collect()
    }
}

fn when(not_after: i64, now: i64) -> String {
    if not_after <= now {
        format!("EXPIRED {}", format_time(not_after))
    } else {
        format!("expires {}", format_time(not_after))
    }
}

/// This node's certificates (`certs`, as the local scan found them) against `horizon` (now +
/// `--within`). The rules are the controller's (`certfleet recover vsphere`) for one node.
pub fn assess(certs: &[CertRecord], now: i64, horizon: i64, allow_several: bool) -> Assessment {
    let mut a = Assessment::default();
    let due = |c: &CertRecord| c.not_after <= horizon;
    let due_line = |c: &CertRecord, what: String| Due {
        line: format!("{what} {}", when(c.not_after, now)),
        fingerprint: c.fingerprint_sha256.clone(),
    };
    // The VMCA root, also when VECS holds a copy with another fingerprint (same key).
    let vmca: Vec<&CertRecord> = certs
        .iter()
        .filter(|c| c.role == "vsphere.vmca_root")
        .collect();
    let is_vmca = |c: &CertRecord| {
        vmca.iter().any(|v| {
            v.fingerprint_sha256 == c.fingerprint_sha256
                || (!v.subject_key_id.is_empty() && v.subject_key_id == c.subject_key_id)
        })
    };
    let leaves: Vec<&CertRecord> = certs
        .iter()
        .filter(|c| {
            c.role == "vsphere.machine_ssl"
                || c.role.starts_with("vsphere.solution_user.")
                || c.role.starts_with("vsphere.sts_signing")
        })
        .collect();
    let mut seen_sts = BTreeSet::new();
    for c in certs {
        let fp = c.fingerprint_sha256.clone();
        if c.role.starts_with("vsphere.sts_signing") {
            a.present.entry("sts").or_default().push(fp);
            if due(c) && seen_sts.insert(c.fingerprint_sha256.clone()) {
                a.sts
                    .push(due_line(c, format!("STS signing {}", c.subject)));
            }
        } else if c.role == "vsphere.machine_ssl" {
            a.present.entry("machine_ssl").or_default().push(fp);
            if due(c) {
                a.machine_ssl
                    .push(due_line(c, format!("Machine SSL {}", c.subject)));
            }
        } else if let Some(user) = c.role.strip_prefix("vsphere.solution_user.") {
            a.present.entry("solution_users").or_default().push(fp);
            if due(c) {
                a.solution_users
                    .push(due_line(c, format!("solution user {user}")));
            }
        }
        if !(c.is_ca && due(c)) {
            continue;
        }
        if c.role == "vsphere.vmca_root" || (c.role == "vsphere.trusted_root" && is_vmca(c)) {
            if !a
                .vmca_root
                .iter()
                .any(|d| d.fingerprint == c.fingerprint_sha256)
            {
                a.vmca_root
                    .push(due_line(c, format!("VMCA root {}", c.subject)));
            }
        } else if c.role == "vsphere.trusted_root"
            && !c.subject_key_id.is_empty()
            && leaves
                .iter()
                .any(|l| l.authority_key_id == c.subject_key_id)
        {
            a.blockers.push(format!(
                "the root {} in TRUSTED_ROOTS that signs this vCenter's certificates {} is not \
                 the VMCA root: a custom CA, which certfleet cannot re-issue; have its owner \
                 renew it and replace the certificates it signed (certificate-manager options \
                 1-3 with custom certificates), or move this vCenter back to VMCA-signed \
                 certificates (certificate-manager option 8 \"Reset all Certificates\")",
                c.subject,
                when(c.not_after, now)
            ));
        }
    }
    for v in a.present.values_mut() {
        v.sort();
        v.dedup();
    }
    if !a.sts.is_empty() {
        let creds: BTreeSet<&str> = certs
            .iter()
            .filter(|c| c.role.starts_with("vsphere.sts_signing"))
            .flat_map(|c| c.locations.iter())
            .filter(|l| l.kind == "vmdir")
            .filter(|l| {
                l.path
                    .to_ascii_lowercase()
                    .starts_with("cn=tenantcredential-")
            })
            .map(|l| l.path.split(',').next().unwrap_or(&l.path))
            .collect();
        if creds.len() > 1 && !allow_several {
            a.blockers.push(format!(
                "vmdir holds {} STS tenant credentials ({}); fixsts.sh prints \"Amount of tenant \
                 credentials: 1\" on a sound domain (seed 001), more means an earlier \
                 replacement was interrupted or another tool added one. The STS step deletes \
                 them all and writes one: check which one vCenter signs with (checksts.py), \
                 then run again with --allow-several-tenant-credentials",
                creds.len(),
                creds.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    a
}

/// One step of the plan: the action a recipe sends, with its args, under a stable id prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step id prefix (`Local::step` adds the generation).
    pub prefix: String,
    /// Agent action.
    pub action: String,
    /// Its arguments.
    pub args: Value,
    /// What the plan prints.
    pub what: String,
}

fn step(prefix: String, action: &str, args: Value, what: &str) -> PlannedStep {
    PlannedStep {
        prefix,
        action: action.into(),
        args,
        what: what.into(),
    }
}

/// `recover-vsphere-<kind>-<hash of the fingerprints acted on>`.
fn id(kind: &str, fingerprints: &[String]) -> String {
    let mut v = fingerprints.to_vec();
    v.sort();
    v.dedup();
    let h = certfleet_common::pki::sha256_hex(v.join(",").as_bytes());
    format!("recover-vsphere-{kind}-{}", &h[..16])
}

/// The steps for `a`, in the GSS order; empty when nothing is due. A due VMCA root means a new
/// root first (`vsphere.vmca_root`), then STS, Machine SSL and solution users all re-issued,
/// due or not (a leaf can outlive neither its root nor a root it no longer chains to).
pub fn plan(a: &Assessment) -> Vec<PlannedStep> {
    if a.nothing() {
        return Vec::new();
    }
    let reset = !a.vmca_root.is_empty();
    let fps = |due: &[Due], kind: &str| -> Vec<String> {
        if reset {
            a.present.get(kind).cloned().unwrap_or_default()
        } else {
            due.iter().map(|d| d.fingerprint.clone()).collect()
        }
    };
    let all: Vec<String> = a
        .vmca_root
        .iter()
        .chain(&a.sts)
        .chain(&a.machine_ssl)
        .chain(&a.solution_users)
        .map(|d| d.fingerprint.clone())
        .collect();
    let mut steps = vec![step(
        id("gate", &all),
        "vsphere.replication_gate",
        json!({}),
        "replication gate (vdcrepadmin showpartnerstatus; checks the SSO bind before anything changes)",
    )];
    if reset {
        let root: Vec<String> = a.vmca_root.iter().map(|d| d.fingerprint.clone()).collect();
        steps.push(step(
            id("vmca-root", &root),
            "vsphere.vmca_root",
            json!({}),
            "new VMCA root (certool --genselfcacert, certool --rootca)",
        ));
    }
    if reset || !a.sts.is_empty() {
        let f = fps(&a.sts, "sts");
        steps.push(step(
            id("sts", &f),
            "vsphere.sts",
            json!({}),
            "replace the STS signing certificate (fixsts.sh/vCert LDAP procedure)",
        ));
        steps.push(step(
            id("sts-restart", &f),
            "vsphere.restart_services",
            json!({}),
            "restart all services and verify the endpoint",
        ));
    }
    if reset || !a.machine_ssl.is_empty() {
        let f = fps(&a.machine_ssl, "machine_ssl");
        steps.push(step(
            id("machine-ssl", &f),
            "vsphere.machine_ssl",
            json!({"restart": true}),
            "replace Machine SSL (VECS __MACHINE_CERT, Lookup Service trust, vpx_ext), restart, verify",
        ));
        steps.push(step(
            id("clean-backup-store", &f),
            "vsphere.clean_backup_store",
            json!({}),
            "remove the replaced certificates from BACKUP_STORE (Certificate Status alarm)",
        ));
    }
    if reset || !a.solution_users.is_empty() {
        let f = fps(&a.solution_users, "solution_users");
        steps.push(step(
            id("solution-users", &f),
            "vsphere.solution_users",
            json!({}),
            "replace the solution-user certificates in vmdir, then VECS",
        ));
        steps.push(step(
            id("solution-users-restart", &f),
            "vsphere.restart_services",
            json!({}),
            "restart all services and verify the endpoint",
        ));
    }
    steps
}

/// How long the controller's recipes give each step (controller/src/plan/recipes/vsphere.rs);
/// a local run gives each tool at least that long, so a real VCSA's minutes-long
/// `service-control --start --all` is not cut short by `--timeout`'s 5-minute default.
fn recipe_timeout(action: &str) -> Duration {
    Duration::from_secs(match action {
        "vsphere.replication_gate" => 60,
        "vsphere.clean_backup_store" => 300,
        "vsphere.sts" | "vsphere.restart_services" => 600,
        _ => 900,
    })
}

/// A run under way, as written before its first step.
#[derive(Debug, Serialize, Deserialize)]
struct SavedPlan {
    started_at: String,
    within_secs: u64,
    due: Vec<String>,
    steps: Vec<PlannedStep>,
}

/// `recover vsphere`'s flags.
pub struct VsphereOptions {
    /// Certificates expiring within this long count as expired.
    pub within: Duration,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// Go on although vmdir holds several STS tenant credentials.
    pub allow_several_tenant_credentials: bool,
}

fn horizon(within: Duration) -> (i64, i64) {
    let t = now();
    (
        t,
        t.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX)),
    )
}

impl Local<'_> {
    fn scan_vsphere(&self) -> Result<Vec<CertRecord>, RecoverError> {
        let found = crate::collect::scan_into(self.cfg, crate::collect::Collection::without_der());
        let certs: Vec<CertRecord> = found
            .into_certificates()
            .into_iter()
            .filter(|c| c.role.starts_with("vsphere."))
            .collect();
        if certs.is_empty() {
            return Err(RecoverError::Check(format!(
                "the vsphere collector found no vCenter certificate under {} (not a VCSA, or \
                 the agent config does not point at it)",
                self.cfg.root.display()
            )));
        }
        Ok(certs)
    }

    /// Replication partners of this node (read-only `vdcrepadmin showpartnerstatus`), for the
    /// plan; `Err` says why they could not be listed.
    fn partners(&self) -> Result<Vec<String>, String> {
        let pw = crate::collect::vsphere::sso_password(self.cfg)?;
        let (_, _, p) = crate::collect::vsphere::partner_status(self.cfg, &pw, self.timeout)?;
        Ok(p.into_iter().map(|p| p.host).collect())
    }

    /// `certfleet-agent recover vsphere` (see the module documentation). Returns the closing
    /// summary; [`RecoverError::Refused`] when a blocker stops it before any change.
    ///
    /// Idempotent: the step ids derive from the fingerprints being replaced and the plan is
    /// kept in the state directory until every step succeeded, so a repeat after a kill or a
    /// failed step resumes the same steps (finished ones answered from the journal, the
    /// interrupted one resumed from its intent, the failed one run again), and a repeat after
    /// success finds nothing due.
    pub fn vsphere(&self, o: &VsphereOptions) -> Result<String, RecoverError> {
        let plan_path = self.state.path().join(PLAN_FILE);
        let saved =
            match std::fs::read(&plan_path) {
                Ok(b) => Some(serde_json::from_slice::<SavedPlan>(&b).map_err(|e| {
                    RecoverError::Input {
                        path: plan_path.clone(),
                        reason: format!(
                            "unreadable plan of an unfinished run: {e} (look at it; remove it \
                             to start a new assessment)"
                        ),
                    }
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(RecoverError::Input {
                        path: plan_path,
                        reason: e.to_string(),
                    });
                }
            };
        let within = match &saved {
            Some(s) => Duration::from_secs(s.within_secs),
            None => o.within,
        };
        let shown_within = humantime::format_duration(within).to_string();
        let steps = match saved {
            Some(s) => {
                (self.out)(format!(
                    "resuming the recovery begun at {} (plan in {}; finished steps are answered \
                     from the journal, an interrupted or failed one runs again):",
                    s.started_at,
                    plan_path.display()
                ));
                for l in &s.due {
                    (self.out)(format!("  {l}"));
                }
                s.steps
            }
            None => {
                let certs = self.scan_vsphere()?;
                let (t, h) = horizon(within);
                let a = assess(&certs, t, h, o.allow_several_tenant_credentials);
                (self.out)(format!(
                    "recover vsphere on this node: expired or due within {shown_within}:"
                ));
                for l in a.lines() {
                    (self.out)(format!("  {l}"));
                }
                let refusals = a.blockers.clone();
                if !refusals.is_empty() {
                    for b in &refusals {
                        (self.out)(format!("STOP: {b}"));
                    }
                    audit(
                        self.state,
                        "recover vsphere refused",
                        json!({"due": a.lines(), "blockers": refusals}),
                    )?;
                    return Err(RecoverError::Refused(format!(
                        "recover vsphere: not started, nothing changed: {}",
                        refusals.join("; ")
                    )));
                }
                if a.nothing() {
                    return Ok(format!(
                        "nothing expired or due within {shown_within}; nothing to recover"
                    ));
                }
                let skip = |v: &[Due]| {
                    if v.is_empty() {
                        " (nothing due: skipped)"
                    } else {
                        ""
                    }
                };
                (self.out)(format!(
                    "1. STS: replaced once for the SSO domain, this node restarted{}",
                    skip(&a.sts)
                ));
                (self.out)(format!(
                    "2. Machine SSL: replaced with follow-ups, restart, endpoint checked, \
                     BACKUP_STORE cleaned{}",
                    skip(&a.machine_ssl)
                ));
                (self.out)(format!(
                    "3. solution users (wcp, hvc included): replaced, restart, checked{}",
                    skip(&a.solution_users)
                ));
                if !a.sts.is_empty() {
                    match self.partners() {
                        Ok(p) if !p.is_empty() => (self.out)(format!(
                            "the STS signing certificate is domain-wide: this SSO domain has \
                             replication partners ({}); after this run restart every other \
                             vCenter of the domain, one at a time: {RESTART_OTHERS}",
                            p.join(", ")
                        )),
                        Ok(_) => {}
                        Err(e) => (self.out)(format!(
                            "replication partners not listed ({e}); the gate step checks them"
                        )),
                    }
                }
                let steps = plan(&a);
                if o.dry_run {
                    for (i, s) in steps.iter().enumerate() {
                        (self.out)(format!(
                            "  {}. {} ({}): {}",
                            i + 1,
                            s.prefix,
                            s.action,
                            s.what
                        ));
                    }
                    audit(
                        self.state,
                        "recover vsphere dry run",
                        json!({"due": a.lines(), "steps": steps}),
                    )?;
                    return Ok("dry run: nothing changed".into());
                }
                let saved = SavedPlan {
                    started_at: format_time(now()),
                    within_secs: within.as_secs(),
                    due: a.lines(),
                    steps: steps.clone(),
                };
                let body = serde_json::to_vec_pretty(&saved)
                    .map_err(|e| RecoverError::Check(e.to_string()))?;
                certfleet_common::atomic::write_file(
                    &plan_path,
                    &body,
                    certfleet_common::atomic::PRIVATE,
                )?;
                audit(self.state, "recover vsphere start", json!(saved))?;
                steps
            }
        };
        for (i, s) in steps.iter().enumerate() {
            (self.out)(format!(
                "  {}. {} ({}): {}",
                i + 1,
                s.prefix,
                s.action,
                s.what
            ));
        }
        if o.dry_run {
            return Ok(format!(
                "dry run: an unfinished run is pending ({}); run without --dry-run to finish it, \
                 or remove that file to assess the host afresh",
                plan_path.display()
            ));
        }
        let mut partners: Vec<String> = Vec::new();
        let mut sts_done = false;
        for s in &steps {
            let local = Local {
                timeout: self.timeout.max(recipe_timeout(&s.action)),
                ..*self
            };
            match local.step(&s.prefix, &s.action, &s.args, &|_| true) {
                Ok(done) => {
                    if s.action == "vsphere.replication_gate" {
                        partners = done.details["partners"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|v| v.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                    }
                    sts_done |= s.action == "vsphere.sts";
                    audit(
                        self.state,
                        "recover vsphere step",
                        json!({"step": done.step_id, "action": s.action, "from_journal": done.from_journal, "ok": true}),
                    )?;
                }
                Err(e) => {
                    // The action rolled its own change back. The plan stays: a repeat retries
                    // from this step (the journal answers the finished ones), which a fresh
                    // assessment would not do for a failed restart after the STS replacement
                    // (the STS is no longer due, the services may be down).
                    (self.out)(format!(
                        "run the command again to retry from this step (finished steps are not \
                         repeated); to assess the host afresh instead, remove {}",
                        plan_path.display()
                    ));
                    audit(
                        self.state,
                        "recover vsphere failed",
                        json!({"step": s.prefix, "action": s.action, "error": e.to_string()}),
                    )?;
                    return Err(e);
                }
            }
        }
        let _ = std::fs::remove_file(&plan_path);
        let certs = self.scan_vsphere()?;
        let (t, h) = horizon(within);
        let after = assess(&certs, t, h, true);
        if !after.nothing() {
            audit(
                self.state,
                "recover vsphere unverified",
                json!({"left": after.lines()}),
            )?;
            return Err(RecoverError::Check(format!(
                "recover vsphere: every step succeeded, but a local scan still shows due within \
                 {shown_within}: {}",
                after.lines().join("; ")
            )));
        }
        audit(
            self.state,
            "recover vsphere done",
            json!({"steps": steps.len(), "partners": partners}),
        )?;
        let mut msg = format!(
            "recovered: {} step(s); verified: a local scan shows no STS, Machine SSL or \
             solution-user certificate due within {shown_within}",
            steps.len()
        );
        if sts_done && !partners.is_empty() {
            msg.push_str(&format!(
                "\nTHE STS SIGNING CERTIFICATE IS DOMAIN-WIDE: restart every other vCenter of \
                 this SSO domain now, one at a time ({}): {RESTART_OTHERS}",
                partners.join(", ")
            ));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use certfleet_common::model::Location;

    use super::*;

    fn blank() -> CertRecord {
        CertRecord::default()
    }

    const TENANT: &str =
        "cn=vsphere.local,cn=Tenants,cn=IdentityManager,cn=Services,dc=vsphere,dc=local";
    const NOW: i64 = 1_000_000;
    const DAY: i64 = 86_400;

    fn cert(role: &str, fp: &str, not_after: i64) -> CertRecord {
        CertRecord {
            fingerprint_sha256: fp.into(),
            subject: format!("CN={fp}"),
            not_after,
            role: role.into(),
            authority_key_id: "root".into(),
            locations: vec![Location {
                kind: "vecs".into(),
                ..Default::default()
            }],
            ..blank()
        }
    }

    fn sts(fp: &str, cred: u32, not_after: i64) -> CertRecord {
        CertRecord {
            locations: vec![Location {
                kind: "vmdir".into(),
                path: format!("cn=TenantCredential-{cred},{TENANT}"),
                ..Default::default()
            }],
            ..cert("vsphere.sts_signing", fp, not_after)
        }
    }

    fn root(role: &str, fp: &str, ski: &str, not_after: i64) -> CertRecord {
        CertRecord {
            is_ca: true,
            subject_key_id: ski.into(),
            authority_key_id: ski.into(),
            ..cert(role, fp, not_after)
        }
    }

    /// A VCSA with STS, Machine SSL and wcp expired, vpxd fine, an old backup, healthy roots.
    fn expired() -> Vec<CertRecord> {
        vec![
            sts("sts1", 1, NOW - DAY),
            cert("vsphere.machine_ssl", "ms", NOW - DAY),
            cert("vsphere.solution_user.wcp", "wcp", NOW - 2 * DAY),
            cert("vsphere.solution_user.vpxd", "vpxd", NOW + 400 * DAY),
            cert("vsphere.backup", "bkp", NOW - 50 * DAY),
            root("vsphere.vmca_root", "vmca", "root", NOW + 3000 * DAY),
        ]
    }

    fn actions(steps: &[PlannedStep]) -> Vec<&str> {
        steps.iter().map(|s| s.action.as_str()).collect()
    }

    #[test]
    fn plans_only_what_is_due_in_the_gss_order_with_stable_ids() {
        let a = assess(&expired(), NOW, NOW + 7 * DAY, false);
        assert!(a.blockers.is_empty() && a.vmca_root.is_empty(), "{a:?}");
        assert_eq!(a.sts.len(), 1);
        assert!(a.sts[0].line.contains("EXPIRED"), "{a:?}");
        assert_eq!(a.machine_ssl.len(), 1);
        assert_eq!(
            a.solution_users,
            [Due {
                line: format!("solution user wcp {}", when(NOW - 2 * DAY, NOW)),
                fingerprint: "wcp".into()
            }]
        );
        let p = plan(&a);
        assert_eq!(
            actions(&p),
            [
                "vsphere.replication_gate",
                "vsphere.sts",
                "vsphere.restart_services",
                "vsphere.machine_ssl",
                "vsphere.clean_backup_store",
                "vsphere.solution_users",
                "vsphere.restart_services",
            ]
        );
        assert_eq!(p[3].args, json!({"restart": true}));
        // Ids derive from what is replaced: the same host gives the same ids, another
        // certificate another id, and no two steps share one.
        assert_eq!(plan(&assess(&expired(), NOW + 5, NOW + 7 * DAY, false)), p);
        let ids: BTreeSet<&str> = p.iter().map(|s| s.prefix.as_str()).collect();
        assert_eq!(ids.len(), p.len(), "{p:?}");
        let mut other = expired();
        other[1].fingerprint_sha256 = "ms2".into();
        let q = plan(&assess(&other, NOW, NOW + 7 * DAY, false));
        assert_ne!(q[3].prefix, p[3].prefix);
        assert_eq!(q[1].prefix, p[1].prefix);

        // Only the Machine SSL due: gate, Machine SSL, cleanup.
        let mut certs = expired();
        certs[0].not_after = NOW + 900 * DAY;
        certs[2].not_after = NOW + 900 * DAY;
        let p = plan(&assess(&certs, NOW, NOW + 7 * DAY, false));
        assert_eq!(
            actions(&p),
            [
                "vsphere.replication_gate",
                "vsphere.machine_ssl",
                "vsphere.clean_backup_store"
            ]
        );
        // Nothing due (the expired backup does not count): no plan. With a wider window the
        // Machine SSL is due again.
        certs[1].not_after = NOW + 30 * DAY;
        let a = assess(&certs, NOW, NOW + 7 * DAY, false);
        assert!(a.nothing() && plan(&a).is_empty(), "{a:?}");
        let a = assess(&certs, NOW, NOW + 60 * DAY, false);
        assert!(a.machine_ssl[0].line.contains("expires"), "{a:?}");
    }

    #[test]
    fn a_due_vmca_root_plans_the_reset_first_and_reissues_everything() {
        let mut certs = expired();
        certs[5].not_after = NOW - DAY;
        let a = assess(&certs, NOW, NOW + 7 * DAY, false);
        assert_eq!(a.vmca_root.len(), 1, "{a:?}");
        assert!(a.blockers.is_empty(), "{a:?}");
        let p = plan(&a);
        assert_eq!(
            actions(&p),
            [
                "vsphere.replication_gate",
                "vsphere.vmca_root",
                "vsphere.sts",
                "vsphere.restart_services",
                "vsphere.machine_ssl",
                "vsphere.clean_backup_store",
                "vsphere.solution_users",
                "vsphere.restart_services",
            ]
        );
        // Even with no leaf due, a due root re-issues them all.
        for c in &mut certs[..4] {
            c.not_after = NOW + 900 * DAY;
        }
        let p = plan(&assess(&certs, NOW, NOW + 7 * DAY, false));
        assert_eq!(p.len(), 8, "{p:?}");
        // A TRUSTED_ROOTS copy of the VMCA root (same key, other fingerprint) is the VMCA
        // root, not a custom CA.
        let mut certs = expired();
        certs.push(root("vsphere.trusted_root", "vmca-old", "root", NOW - DAY));
        let a = assess(&certs, NOW, NOW + 7 * DAY, false);
        assert!(a.blockers.is_empty(), "{a:?}");
        assert_eq!(a.vmca_root.len(), 1, "{a:?}");
    }

    #[test]
    fn an_expired_custom_root_the_certificates_chain_to_stops_but_an_unrelated_one_does_not() {
        let mut certs = expired();
        // The leaves chain to an enterprise CA in TRUSTED_ROOTS, which expired.
        for c in &mut certs[..4] {
            c.authority_key_id = "corp".into();
        }
        certs.push(root("vsphere.trusted_root", "corp-ca", "corp", NOW - DAY));
        let a = assess(&certs, NOW, NOW + 7 * DAY, false);
        assert_eq!(a.blockers.len(), 1, "{a:?}");
        assert!(
            a.blockers[0].contains("not the VMCA root")
                && a.blockers[0].contains("cannot re-issue")
                && a.blockers[0].contains("CN=corp-ca"),
            "{a:?}"
        );
        assert!(a.vmca_root.is_empty());
        // Nothing chains to it: an alarm elsewhere, not a stop here.
        let mut certs = expired();
        certs.push(root("vsphere.trusted_root", "old-ca", "old", NOW - DAY));
        assert!(
            assess(&certs, NOW, NOW + 7 * DAY, false)
                .blockers
                .is_empty()
        );
    }

    #[test]
    fn several_tenant_credentials_stop_only_a_due_sts_unless_allowed() {
        let mut certs = expired();
        certs.push(sts("sts2", 2, NOW + 100 * DAY));
        let a = assess(&certs, NOW, NOW + 7 * DAY, false);
        assert_eq!(a.blockers.len(), 1, "{a:?}");
        assert!(
            a.blockers[0].contains("2 STS tenant credentials")
                && a.blockers[0].contains("cn=TenantCredential-1, cn=TenantCredential-2")
                && a.blockers[0].contains("--allow-several-tenant-credentials"),
            "{a:?}"
        );
        assert!(assess(&certs, NOW, NOW + 7 * DAY, true).blockers.is_empty());
        certs[0].not_after = NOW + 900 * DAY;
        assert!(
            assess(&certs, NOW, NOW + 7 * DAY, false)
                .blockers
                .is_empty()
        );
    }
}
