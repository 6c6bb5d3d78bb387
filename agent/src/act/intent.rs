//! Intent before effect: `STATE_DIR/intents.jsonl`, written (and fsynced) before a step acts.
//!
//! The result journal ([`super::journal`]) answers a step that finished. It cannot answer a
//! step whose agent died between acting and journaling the result: the controller re-sends
//! it, and running it again signs a second certificate or overwrites a backup. So before an
//! action touches anything, [`begin`] appends an *intent* line (step id, action, a hash of its
//! arguments). Actions add *notes* while they work ([`ActContext::note`]): facts taken before
//! an effect that a later attempt needs to find out whether the effect happened (the length
//! of a CA database before `openssl ca`, "units restarted"). When a step arrives whose intent
//! exists without a result, the step is *resumed*: an action that is idempotent by
//! construction ([`Resume::Rerun`]) runs again and looks at the host first (the CA database,
//! file hashes against the backup, the key on disk); any other action refuses with
//! "interrupted, needs operator" instead of acting twice ([`Resume::Refuse`]).
//!
//! Notes are first-writer-wins: an attempt that resumes keeps the facts of the first attempt,
//! which saw the host before any effect.
//!
//! Fault injection for tests: `CERTFLEET_TEST_CRASH_AT=<action>:<point>` makes the agent
//! SIGKILL itself the first time it reaches that point ([`ActContext::crash_point`]). Every
//! step passes `after-intent`, `before-result` and `after-result`; actions name their own
//! points between those. Unset (always, outside tests), the hook does nothing.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ActContext;
use crate::state::StateDir;

/// The intent journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// Appending or syncing failed; the step must not act without its intent on disk.
    #[error("cannot journal the intent of step {step} in {path}: {source}")]
    Write {
        /// Step whose intent was being written.
        step: String,
        /// The intent journal.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What an action does with a step whose earlier attempt was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Idempotent by construction: runs again, finding out first what already happened.
    Rerun,
    /// Cannot tell what happened: refuses and asks for an operator.
    Refuse,
}

/// How each action treats an interrupted step. Every action not listed refuses: a new action
/// is safe by default until someone says (in its doc comment) how a second run finds out what
/// the first one did.
pub fn resume_policy(action: &str) -> Resume {
    match action {
        // Generic actions: see each one's doc comment in `generic.rs`.
        "csr.create" | "ca.sign" | "cert.install" | "files.backup" | "backup.restore"
        | "service.restart" | "endpoint.verify" => Resume::Rerun,
        // Signing on the engine: the engine's database.txt tells whether it signed
        // (`ovirt::enroll_request` asks [`openssl_ca_issued_since`] first).
        "ovirt.enroll_request" => Resume::Rerun,
        // Re-issue with the kept key: the key comes from the step's backup of the `.p12`, the
        // signing is found in database.txt like `ovirt.enroll_request`; see its doc comment.
        "ovirt.engine_reissue" => Resume::Rerun,
        // Each leaf compared with the step's backup; only what was not renewed is renewed,
        // pods already restarted are not restarted again (see `gke::renew_all`).
        "kubeadm.renew_all" => Resume::Rerun,
        // Hands the current certificate over again and reads the pin back (see `pins::retrust`).
        "pins.retrust" => Resume::Rerun,
        // Read-only checks.
        "ovirt.verify_host_certs"
        | "ovirt.engine_verify"
        | "ovirt.engine_version"
        | "vsphere.replication_gate" => Resume::Rerun,
        // Each finds out from the host what an interrupted attempt did; see its doc comment.
        "vsphere.machine_ssl"
        | "vsphere.sts"
        | "vsphere.solution_users"
        | "vsphere.restart_services"
        | "vsphere.clean_backup_store"
        | "vsphere.retrust_pins"
        | "vsphere.vmca_root" => Resume::Rerun,
        "gke.ca_rotate"
        | "gke.fetch_kubeconfig"
        | "kubeconfig.install"
        | "gke.admin_ca_rotate"
        | "gke.admin_kubeconfig_update" => Resume::Rerun,
        // Waits for an engine-setup its interrupted attempt started, then judges from the
        // engine PKI against the step's backup (see its doc comment).
        "ovirt.engine_setup" => Resume::Rerun,
        "ovirt.power_management"
        | "ovirt.host_maintenance"
        | "ovirt.enroll_certificate"
        | "ovirt.host_activate"
        | "ovirt.global_maintenance"
        | "ovirt.refresh_host_ca" => Resume::Rerun,
        // The serial console's certificate: see each one's doc comment in `ovirt/vmconsole.rs`.
        "ovirt.vmconsole_pubkey" | "ovirt.vmconsole_sign" | "ovirt.vmconsole_install" => {
            Resume::Rerun
        }
        // The hosted-engine recovery's halves: see each one's doc comment in
        // `hosted_engine.rs` (drop-ins rewritten whole, clock change journaled, CSR and
        // install answered from the journal).
        "ovirt.hosted_engine_start" | "ovirt.hosted_engine_finish" => Resume::Rerun,
        // Notes the served certificate before the refresh and checks it first on a resend.
        "esxi.refresh_hosts" => Resume::Rerun,
        // Every action not listed.
        _ => Resume::Refuse,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Intent {
        step_id: String,
        action: String,
        args_sha256: String,
        at: i64,
    },
    Note {
        step_id: String,
        key: String,
        value: Value,
        at: i64,
    },
}

/// The first recorded intent of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Step id.
    pub step_id: String,
    /// Action.
    pub action: String,
    /// SHA-256 of the arguments as sent.
    pub args_sha256: String,
    /// When it was first recorded.
    pub at: i64,
}

fn path(state: &StateDir) -> PathBuf {
    state.path().join("intents.jsonl")
}

fn lines(state: &StateDir) -> Vec<Line> {
    let Ok(f) = std::fs::File::open(path(state)) else {
        return Vec::new();
    };
    // A torn last line (crash mid-append) does not parse and is skipped: its intent was never
    // complete, so the step never acted on it.
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Line>(&l).ok())
        .collect()
}

fn append(state: &StateDir, step: &str, line: &Line) -> Result<(), IntentError> {
    let p = path(state);
    let wrap = |source| IntentError::Write {
        step: step.to_owned(),
        path: p.clone(),
        source,
    };
    let torn = std::fs::read(&p)
        .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
        .unwrap_or(false);
    let existed = p.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(wrap)?;
    if torn {
        f.write_all(b"\n").map_err(wrap)?;
    }
    let mut text = serde_json::to_string(line).expect("serialize intent");
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(wrap)?;
    f.sync_all().map_err(wrap)?;
    if !existed && let Some(dir) = p.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(wrap)?;
    }
    Ok(())
}

/// The first intent recorded for `step_id`, if any.
pub fn lookup(state: &StateDir, step_id: &str) -> Option<Intent> {
    lines(state).into_iter().find_map(|l| match l {
        Line::Intent {
            step_id: s,
            action,
            args_sha256,
            at,
        } if s == step_id => Some(Intent {
            step_id: s,
            action,
            args_sha256,
            at,
        }),
        _ => None,
    })
}

/// SHA-256 of a step's arguments as sent.
pub fn args_hash(args_json: &str) -> String {
    certfleet_common::pki::sha256_hex(args_json.as_bytes())
}

/// Records (durably) that `step_id` is about to act. Returns the earlier intent when the step
/// was already begun by an attempt that left no result.
pub fn begin(
    state: &StateDir,
    step_id: &str,
    action: &str,
    args_json: &str,
) -> Result<Option<Intent>, IntentError> {
    let earlier = lookup(state, step_id);
    append(
        state,
        step_id,
        &Line::Intent {
            step_id: step_id.to_owned(),
            action: action.to_owned(),
            args_sha256: args_hash(args_json),
            at: certfleet_common::model::now(),
        },
    )?;
    Ok(earlier)
}

/// The first value noted under `key` for `step_id`.
pub fn noted(state: &StateDir, step_id: &str, key: &str) -> Option<Value> {
    lines(state).into_iter().find_map(|l| match l {
        Line::Note {
            step_id: s,
            key: k,
            value,
            ..
        } if s == step_id && k == key => Some(value),
        _ => None,
    })
}

/// Notes `value` under `key` for `step_id`, durably, unless an earlier attempt already did
/// (the first attempt's facts win).
pub fn note(state: &StateDir, step_id: &str, key: &str, value: Value) -> Result<(), IntentError> {
    if noted(state, step_id, key).is_some() {
        return Ok(());
    }
    append(
        state,
        step_id,
        &Line::Note {
            step_id: step_id.to_owned(),
            key: key.to_owned(),
            value,
            at: certfleet_common::model::now(),
        },
    )
}

/// Kills this process with SIGKILL if `CERTFLEET_TEST_CRASH_AT` names `point` (test hook).
pub fn crash_point(point: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("CERTFLEET_TEST_CRASH_AT").ok());
    if wanted.as_deref() == Some(point) {
        tracing::warn!(point, "CERTFLEET_TEST_CRASH_AT reached: killing this agent");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise fail, still never get past this point.
        std::process::abort();
    }
}

impl ActContext<'_> {
    /// Whether an earlier attempt of this step was interrupted before its result.
    pub fn resumed(&self) -> bool {
        self.resumed.is_some()
    }

    /// Test hook: `CERTFLEET_TEST_CRASH_AT=<action>:<point>` kills the agent here.
    pub fn crash_point(&self, point: &str) {
        crash_point(&format!("{}:{point}", self.action));
    }

    /// Durably notes a fact about the host before an effect (first attempt wins).
    pub fn note(&self, key: &str, value: Value) -> Result<(), super::ActError> {
        note(self.state, self.step_id, key, value).map_err(|e| super::ActError(e.to_string()))
    }

    /// A fact noted by this step (by this attempt or an interrupted earlier one).
    pub fn noted(&self, key: &str) -> Option<Value> {
        noted(self.state, self.step_id, key)
    }
}

/// One row of an `openssl ca` database (`index.txt`, oVirt's `database.txt`): status, expiry,
/// revocation, serial (hex), file name, subject, tab-separated (openssl `apps/ca.c`, DB_*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaDbRow {
    /// `V`, `R` or `E`.
    pub status: String,
    /// Serial number in upper-case hex, as openssl writes it.
    pub serial: String,
    /// Subject in openssl's `/K=V` form.
    pub subject: String,
}

/// The rows of an `openssl ca` database, in file order.
pub fn ca_db_rows(database: &std::path::Path) -> Result<Vec<CaDbRow>, super::ActError> {
    let text = std::fs::read_to_string(database)
        .map_err(|e| super::ActError(format!("reading CA database {}: {e}", database.display())))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            CaDbRow {
                status: f.first().copied().unwrap_or_default().to_owned(),
                serial: f.get(3).copied().unwrap_or_default().to_owned(),
                subject: f.get(5).copied().unwrap_or_default().to_owned(),
            }
        })
        .collect())
}

/// A certificate `openssl ca` issued for the key of `csr_pem` among the database rows after
/// the first `since` (the database's length noted before signing): read from
/// `new_certs_dir/<SERIAL>.pem`, where `openssl ca` keeps a copy of everything it signs.
/// `Ok(None)` when no such row exists, which means the CA did not sign for this step.
pub fn openssl_ca_issued_since(
    database: &std::path::Path,
    new_certs_dir: &std::path::Path,
    since: usize,
    csr_pem: &str,
) -> Result<Option<Vec<u8>>, super::ActError> {
    let want = certfleet_common::pki::csr_public_key_id(csr_pem)
        .map_err(|e| super::ActError(format!("the step's CSR: {e}")))?;
    let rows = ca_db_rows(database)?;
    if rows.len() < since {
        return Err(super::ActError(format!(
            "CA database {} has {} rows, fewer than the {since} it had before this step signed: \
             it was replaced or truncated; interrupted, needs operator",
            database.display(),
            rows.len()
        )));
    }
    for row in &rows[since..] {
        let file = new_certs_dir.join(format!("{}.pem", row.serial));
        let pem = std::fs::read(&file).map_err(|e| {
            super::ActError(format!(
                "CA database {} lists serial {} but {}: {e}; interrupted, needs operator",
                database.display(),
                row.serial,
                file.display()
            ))
        })?;
        let der = certfleet_common::pem::first_certificate(&pem)
            .map_err(|e| super::ActError(format!("{}: {e}", file.display())))?;
        let key = certfleet_common::pki::cert_public_key_id(&der)
            .map_err(|e| super::ActError(format!("{}: {e}", file.display())))?;
        if key == want {
            return Ok(Some(der));
        }
    }
    Ok(None)
}

/// Notes the length of the `openssl ca` database at `database` (null when the CA keeps none)
/// before a signing step runs its sign command, then passes the `before-sign` crash point.
/// [`signed_before`] reads the note back when the step is resumed.
pub fn before_signing(
    ctx: &ActContext<'_>,
    database: &std::path::Path,
) -> Result<(), super::ActError> {
    let rows = if database.exists() {
        Value::from(ca_db_rows(database)?.len())
    } else {
        Value::Null
    };
    ctx.note("ca_db_rows", rows)?;
    ctx.crash_point("before-sign");
    Ok(())
}

/// For a resumed signing step: the certificate the CA already issued for this step's CSR,
/// found through the database rows added since [`before_signing`] noted its length, and
/// written to `out_path` if the first attempt died before `openssl ca` wrote it there.
/// `Ok(None)` when the step never reached the sign command or the CA did not sign: signing
/// now is the first signing. Refuses (needs operator) when the CA keeps no database, or when
/// `out_path` holds a certificate for this key that the database does not list (the sign
/// command itself died half-way).
pub fn signed_before(
    ctx: &ActContext<'_>,
    database: &std::path::Path,
    new_certs_dir: &std::path::Path,
    csr_pem: &str,
    out_path: &std::path::Path,
) -> Result<Option<Vec<u8>>, super::ActError> {
    if !ctx.resumed() {
        return Ok(None);
    }
    let Some(rows) = ctx.noted("ca_db_rows") else {
        (ctx.output)("the interrupted attempt never reached the sign command".into());
        return Ok(None);
    };
    let Some(since) = rows.as_u64() else {
        return Err(super::ActError(format!(
            "step {} was interrupted while signing with a CA that keeps no database at {}: \
             cannot tell whether it signed; interrupted, needs operator",
            ctx.step_id,
            database.display()
        )));
    };
    if let Some(der) = openssl_ca_issued_since(database, new_certs_dir, since as usize, csr_pem)? {
        let pem = certfleet_common::pem::encode("CERTIFICATE", &der);
        let holds = std::fs::read(out_path)
            .ok()
            .and_then(|b| certfleet_common::pem::first_certificate(&b).ok())
            .is_some_and(|d| d == der);
        if !holds {
            certfleet_common::atomic::write_file(out_path, pem.as_bytes(), 0o644)
                .map_err(|e| super::ActError(e.to_string()))?;
        }
        tracing::info!(step = %ctx.step_id, database = %database.display(), "the CA already signed for this step; not signing again");
        (ctx.output)(format!(
            "{} already lists the certificate this step signed; not signing again",
            database.display()
        ));
        return Ok(Some(der));
    }
    // Not in the database. If the output holds a certificate for this key that the backup
    // does not (so written during this step), `openssl ca` died between writing it and
    // updating its database: signing again would reuse the serial.
    let want = certfleet_common::pki::csr_public_key_id(csr_pem)
        .map_err(|e| super::ActError(format!("the step's CSR: {e}")))?;
    if let Ok(bytes) = std::fs::read(out_path) {
        let before = super::backup::find(ctx.state, ctx.step_id).and_then(|m| {
            m.files
                .into_iter()
                .find(|f| f.path == out_path)
                .map(|f| f.sha256)
        });
        let changed = before.as_deref() != Some(&certfleet_common::pki::sha256_hex(&bytes));
        let for_key = certfleet_common::pem::first_certificate(&bytes)
            .ok()
            .and_then(|d| certfleet_common::pki::cert_public_key_id(&d).ok())
            .is_some_and(|k| k == want);
        if changed && for_key {
            return Err(super::ActError(format!(
                "{} holds a certificate for this step's key that {} does not list: the sign \
                 command was interrupted half-way; interrupted, needs operator",
                out_path.display(),
                database.display()
            )));
        }
    }
    (ctx.output)(format!(
        "{} lists nothing signed for this step; signing now",
        database.display()
    ));
    Ok(None)
}

/// The answer of a signing step for the certificate `der`.
pub fn signed_answer(der: &[u8], signer: &str, extra: Value) -> Result<Value, super::ActError> {
    let rec = certfleet_common::x509::parse_der(der)
        .map_err(|e| super::ActError(format!("certificate signed by {signer}: {e}")))?;
    let mut v = serde_json::json!({
        "message": format!(
            "{signer} signed {} (serial {}) until {}",
            rec.subject,
            rec.serial,
            certfleet_common::model::format_time(rec.not_after)
        ),
        "cert_pem": certfleet_common::pem::encode("CERTIFICATE", der),
        "fingerprint": rec.fingerprint_sha256,
        "serial": rec.serial,
        "not_after": rec.not_after,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_is_found_notes_keep_the_first_value_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir(dir.path().to_path_buf());
        assert_eq!(begin(&st, "p1-1", "ca.sign", "{}").unwrap(), None);
        note(&st, "p1-1", "ca_db_rows", Value::from(3)).unwrap();
        note(&st, "p1-1", "ca_db_rows", Value::from(4)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(&st))
            .unwrap()
            .write_all(b"{\"kind\":\"intent\",\"step_id\":\"p1-2\"")
            .unwrap();
        assert!(lookup(&st, "p1-2").is_none(), "a torn intent is no intent");
        let earlier = begin(&st, "p1-1", "ca.sign", "{}").unwrap().unwrap();
        assert_eq!(earlier.action, "ca.sign");
        assert_eq!(noted(&st, "p1-1", "ca_db_rows"), Some(Value::from(3)));
        assert!(noted(&st, "p1-3", "ca_db_rows").is_none());
        assert_eq!(begin(&st, "p1-3", "cert.install", "{}").unwrap(), None);
    }

    #[test]
    fn unknown_and_unresumable_platform_mutations_refuse_to_resume() {
        assert_eq!(resume_policy("ca.sign"), Resume::Rerun);
        assert_eq!(resume_policy("ovirt.engine_setup"), Resume::Rerun);
        assert_eq!(resume_policy("vsphere.sts"), Resume::Rerun);
        assert_eq!(resume_policy("vsphere.solution_users"), Resume::Rerun);
        assert_eq!(resume_policy("vsphere.machine_ssl"), Resume::Rerun);
        assert_eq!(resume_policy("ovirt.refresh_host_ca"), Resume::Rerun);
        assert_eq!(resume_policy("kubeadm.renew_all"), Resume::Rerun);
        assert_eq!(resume_policy("ovirt.engine_reissue"), Resume::Rerun);
        assert_eq!(resume_policy("something.new"), Resume::Refuse);
    }

    #[test]
    fn a_truncated_ca_database_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.txt");
        std::fs::write(&db, "V\t300101000000Z\t\t1000\tunknown\t/CN=a\n").unwrap();
        let (_k, csr) = certfleet_common::pki::new_key_and_csr("a").unwrap();
        let e = openssl_ca_issued_since(&db, dir.path(), 2, &csr).unwrap_err();
        assert!(e.0.contains("needs operator"), "{e}");
        let e = openssl_ca_issued_since(&db, dir.path(), 0, &csr).unwrap_err();
        assert!(e.0.contains("1000.pem"), "{e}");
        assert_eq!(
            openssl_ca_issued_since(&db, dir.path(), 1, &csr).unwrap(),
            None
        );
    }
}
