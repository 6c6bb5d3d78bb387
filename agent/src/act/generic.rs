//! Platform-neutral actions, composed by the controller's recipes:
//!
//! | action | does |
//! |---|---|
//! | `csr.create` | a CSR from a key that stays on this host (`openssl req -new -key`) |
//! | `ca.sign` | signs a CSR with a CA this agent holds (its configured `openssl ca` command) |
//! | `cert.install` | backs up, installs a certificate to one or more paths (mode, owner), restarts units, verifies (file, key match, service active, endpoint serves it); restores everything if a check fails |
//! | `service.restart` | `systemctl restart` units and checks they are active |
//! | `endpoint.verify` | the TLS endpoint serves the expected certificate |
//! | `backup.restore` | puts a backup back (plan rollback), restarting units |
//! | `files.backup` | backs up files another party is about to change (e.g. the engine's Enroll Certificate), so `plan rollback` can restore them |
//!
//! Every action here is idempotent by construction (see each one's doc comment): a step
//! re-sent after its agent died mid-step ([`super::intent`]) runs again and finds out from the
//! host what the first attempt did, so nothing is signed, replaced or backed up twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ActContext, ActError, arg_str, backup, intent};

/// Runs `action`.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "csr.create" => csr_create(ctx, args),
        "ca.sign" => ca_sign(ctx, args),
        "cert.install" => cert_install(ctx, args),
        "service.restart" => service_restart(ctx, args),
        "endpoint.verify" => endpoint_verify(ctx, args),
        "files.backup" => files_backup(ctx, args),
        "backup.restore" => backup_restore(ctx, args),
        other => Err(ActError(format!(
            "unknown action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// `service.restart`: restarts units and requires them active.
///
/// Idempotent: a restart is the whole effect, and a second one leaves the host as one does (a
/// resumed step restarts again rather than guess whether the first restart happened).
fn service_restart(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let units = units(args);
    restart(ctx, &units)?;
    Ok(json!({"message": format!("restarted {}", units.join(", ")), "units": units}))
}

/// `endpoint.verify`: read-only, so running it again is harmless.
fn endpoint_verify(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let address = arg_str(args, "address")?;
    let fp = arg_str(args, "fingerprint")?;
    verify_endpoint(ctx, address, fp)?;
    Ok(json!({"message": format!("{address} serves {}", &fp[..16.min(fp.len())])}))
}

/// `files.backup`: backs up files another party is about to change.
///
/// Idempotent by construction: the backup is named after the step and created exclusively; a
/// resumed step finds the complete backup of its first attempt and keeps it ([`backup::create`]).
fn files_backup(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let paths: Vec<PathBuf> = args
        .get("paths")
        .and_then(Value::as_array)
        .ok_or_else(|| ActError("missing paths".into()))?
        .iter()
        .filter_map(Value::as_str)
        .map(|p| ctx.cfg.host_path(p))
        .collect();
    let m = backup::create(ctx.state, ctx.step_id, &paths)?;
    (ctx.output)(format!("backup {} holds {} file(s)", m.id, m.files.len()));
    Ok(json!({
        "message": format!("backed up {} file(s) as {}", m.files.len(), m.id),
        "backup_id": m.id,
        "restart": units(args),
    }))
}

/// `backup.restore`: puts a backup back, restarting units.
///
/// Idempotent by construction: the backup is read, never changed, and restoring writes the
/// same bytes, mode and owner each time; a resumed step restores again and restarts again.
fn backup_restore(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let id = arg_str(args, "backup_id")?;
    let m = backup::restore(ctx.state, id)?;
    (ctx.output)(format!("restored backup {id} ({} files)", m.files.len()));
    let units = units(args);
    if !units.is_empty() {
        restart(ctx, &units)?;
    }
    Ok(
        json!({"message": format!("restored backup {id}"), "files": m.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>()}),
    )
}

fn openssl(ctx: &ActContext<'_>) -> PathBuf {
    ctx.cfg.tool("openssl", "/usr/bin/openssl")
}

fn units(args: &Value) -> Vec<String> {
    args.get("restart")
        .or_else(|| args.get("units"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `csr.create`: a CSR from a key that stays on this host.
///
/// Idempotent by construction: it changes nothing on the host (the key is read, never
/// written; the CSR goes back in the answer). Before it reads the key it notes the key file's
/// SHA-256 in the intent journal; a resumed step derives the CSR again from the same key and
/// refuses (needs operator) if the key on disk is no longer the one the first attempt saw.
fn csr_create(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let key = ctx.cfg.host_path(arg_str(args, "key")?);
    let subject = arg_str(args, "subject")?;
    let key_bytes = match std::fs::read(&key) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ActError(format!(
                "key {} does not exist on this host",
                key.display()
            )));
        }
        Err(e) => return Err(ActError(format!("reading key {}: {e}", key.display()))),
    };
    let key_hash = certfleet_common::pki::sha256_hex(&key_bytes);
    ctx.note("key_sha256", json!(key_hash))?;
    if ctx
        .noted("key_sha256")
        .and_then(|v| v.as_str().map(str::to_owned))
        != Some(key_hash)
    {
        return Err(ActError(format!(
            "key {} changed since this step began; interrupted, needs operator",
            key.display()
        )));
    }
    let key_s = key.display().to_string();
    let out = ctx.run_ok(
        &openssl(ctx),
        &["req", "-new", "-key", &key_s, "-subj", subject],
        None,
    )?;
    if !out.stdout.contains("BEGIN CERTIFICATE REQUEST") {
        return Err(ActError(format!(
            "openssl req printed no CSR for key {key_s}"
        )));
    }
    Ok(json!({"message": format!("CSR for {subject} from {key_s}"), "csr_pem": out.stdout}))
}

/// `ca.sign`: signs a CSR with a CA this agent holds (its configured sign command).
///
/// Idempotent by construction: just before the sign command runs, the length of the CA's
/// database (`[[cas]] database`, openssl's `index.txt`) is noted in the intent journal. A
/// resumed step first reads the rows added since: a certificate for this CSR's public key
/// there (`new_certs_dir/<SERIAL>.pem`) is the one this step signed, so it is returned and the
/// CA does not sign again ([`intent::signed_before`]); no such row means the CA never signed
/// for this step, and it signs now. A CA without a database cannot tell, so a resumed step
/// refuses (interrupted, needs operator). Whatever held the output name before is backed up
/// once, and that backup is never overwritten.
fn ca_sign(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "ca")?;
    let csr = arg_str(args, "csr_pem")?;
    let req_name = arg_str(args, "name")?;
    if !certfleet_common::identity::valid_name(req_name) {
        return Err(ActError(format!(
            "request name {req_name:?} is not a plain file name"
        )));
    }
    let ca = ctx.cfg.cas.iter().find(|c| c.name == name).ok_or_else(|| {
        ActError(format!(
            "this agent holds no CA named {name:?} (see [[cas]] in its config)"
        ))
    })?;
    let dir = ctx.cfg.host_path(&ca.dir);
    let days = args
        .get("days")
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(ca.days))
        .to_string();
    let csr_path = dir.join(ca.requests.replace("{name}", req_name));
    let out_path = dir.join(ca.output.replace("{name}", req_name));
    let database = dir.join(&ca.database);
    let signer = format!("CA {name}");
    if let Some(der) =
        intent::signed_before(ctx, &database, &dir.join(&ca.new_certs_dir), csr, &out_path)?
    {
        return intent::signed_answer(&der, &signer, json!({"recovered": true}));
    }
    certfleet_common::atomic::write_file(&csr_path, csr.as_bytes(), 0o644)
        .map_err(|e| ActError(e.to_string()))?;
    // Keep whatever certificate had this name before (re-enrolling a host overwrites it).
    backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&out_path))?;
    let csr_s = csr_path.display().to_string();
    let out_s = out_path.display().to_string();
    let argv: Vec<String> = ca
        .command
        .iter()
        .map(|a| {
            a.replace("{csr}", &csr_s)
                .replace("{out}", &out_s)
                .replace("{days}", &days)
                .replace("{name}", req_name)
        })
        .collect();
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| ActError(format!("CA {name}: empty sign command")))?;
    let program = if program == "openssl" {
        openssl(ctx)
    } else {
        PathBuf::from(program)
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    intent::before_signing(ctx, &database)?;
    // `openssl ca` resolves the paths in its config relative to the working directory, as
    // oVirt's pki-enroll-request.sh does by `cd`-ing into the PKI directory first.
    ctx.run_ok_in(&program, &rest, None, Some(&dir))?;
    ctx.crash_point("after-sign");
    let pem = std::fs::read_to_string(&out_path)
        .map_err(|e| ActError(format!("CA {name} wrote no certificate to {out_s}: {e}")))?;
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())
        .map_err(|e| ActError(format!("{out_s}: {e}")))?;
    intent::signed_answer(&der, &signer, json!({}))
}

/// A target path of `cert.install`.
struct Target {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
}

fn resolve_owner(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, ActError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let uid = match user {
        Some(u) => nix::unistd::User::from_name(u)
            .map_err(|e| ActError(format!("user {u}: {e}")))?
            .ok_or_else(|| ActError(format!("user {u} does not exist on this host")))?
            .uid
            .as_raw(),
        None => nix::unistd::getuid().as_raw(),
    };
    let gid = match group {
        Some(g) => nix::unistd::Group::from_name(g)
            .map_err(|e| ActError(format!("group {g}: {e}")))?
            .ok_or_else(|| ActError(format!("group {g} does not exist on this host")))?
            .gid
            .as_raw(),
        None => nix::unistd::getgid().as_raw(),
    };
    Ok(Some((uid, gid)))
}

fn targets(ctx: &ActContext<'_>, args: &Value) -> Result<Vec<Target>, ActError> {
    let list = args
        .get("targets")
        .and_then(Value::as_array)
        .ok_or_else(|| ActError("missing targets".into()))?;
    list.iter()
        .map(|t| {
            let path = ctx.cfg.host_path(
                t.get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ActError("target without path".into()))?,
            );
            let mode = t
                .get("mode")
                .and_then(Value::as_str)
                .map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8))
                .transpose()
                .map_err(|e| ActError(format!("mode of {}: {e}", path.display())))?
                .unwrap_or(0o644);
            // Keep the current owner unless the recipe names one.
            let owner = match resolve_owner(
                t.get("owner").and_then(Value::as_str),
                t.get("group").and_then(Value::as_str),
            )? {
                Some(o) => Some(o),
                None => std::fs::metadata(&path).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.uid(), m.gid())
                }),
            };
            Ok(Target { path, mode, owner })
        })
        .collect()
}

/// `cert.install`: backs up, installs a certificate to its targets, restarts units, verifies,
/// and restores everything if a check fails.
///
/// Idempotent by construction: the targets are backed up once, before the first write, and
/// that backup is never overwritten (a resumed step keeps the one its first attempt took, of
/// the files as they were before the plan). A target is written only if it does not already
/// hold the new certificate; a resumed step refuses (needs operator) a target that holds
/// neither the new certificate nor what the backup recorded, since another hand changed it.
/// Units are restarted once per step ([`restart_once`]: noted `restarted` after, and each
/// unit's systemd `InvocationID` noted before, so a step resumed after a crash between the
/// restart and its note does not restart again). Verification always runs again.
fn cert_install(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let pem = arg_str(args, "cert_pem")?;
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())
        .map_err(|e| ActError(format!("certificate to install: {e}")))?;
    let rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| ActError(format!("certificate to install: {e}")))?;
    if rec.not_after <= certfleet_common::model::now() {
        return Err(ActError(format!(
            "refusing to install a certificate that expired at {}",
            certfleet_common::model::format_time(rec.not_after)
        )));
    }
    let targets = targets(ctx, args)?;
    let paths: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
    let m = backup::create(ctx.state, ctx.step_id, &paths)?;
    (ctx.output)(format!("backup {} holds {} file(s)", m.id, m.files.len()));
    ctx.crash_point("after-backup");
    let body = certfleet_common::pem::encode("CERTIFICATE", &der);
    if ctx.resumed() {
        for (t, f) in targets.iter().zip(&m.files) {
            let now = std::fs::read(&t.path).ok();
            let new = now.as_deref() == Some(body.as_bytes());
            let as_backed_up = match &now {
                Some(b) => f.existed && certfleet_common::pki::sha256_hex(b) == f.sha256,
                None => !f.existed,
            };
            if !new && !as_backed_up {
                return Err(ActError(format!(
                    "{} changed since step {} backed it up (holds neither the backup {} nor the \
                     new certificate); interrupted, needs operator",
                    t.path.display(),
                    ctx.step_id,
                    m.id
                )));
            }
        }
    }
    let units = units(args);
    let attempt = (|| -> Result<(), ActError> {
        for t in &targets {
            if std::fs::read(&t.path).ok().as_deref() == Some(body.as_bytes()) {
                // Written by the interrupted attempt: not written again, mode and owner set.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(t.mode))
                    .map_err(|e| {
                        ActError(format!("chmod {:o} {}: {e}", t.mode, t.path.display()))
                    })?;
                if let Some((uid, gid)) = t.owner {
                    nix::unistd::chown(
                        &t.path,
                        Some(nix::unistd::Uid::from_raw(uid)),
                        Some(nix::unistd::Gid::from_raw(gid)),
                    )
                    .map_err(|e| {
                        ActError(format!("chown {uid}:{gid} {}: {e}", t.path.display()))
                    })?;
                }
                (ctx.output)(format!(
                    "{} already holds the new certificate (interrupted attempt)",
                    t.path.display()
                ));
            } else {
                backup::install(&t.path, body.as_bytes(), t.mode, t.owner)?;
                (ctx.output)(format!(
                    "installed {} (mode {:o})",
                    t.path.display(),
                    t.mode
                ));
                ctx.crash_point("after-replace");
            }
            let back = std::fs::read(&t.path)
                .map_err(|e| ActError(format!("{}: {e}", t.path.display())))?;
            let back_der = certfleet_common::pem::first_certificate(&back)
                .map_err(|e| ActError(format!("{}: {e}", t.path.display())))?;
            if back_der != der {
                return Err(ActError(format!(
                    "{} does not hold the new certificate after writing it",
                    t.path.display()
                )));
            }
        }
        if let Some(key) = args.get("key").and_then(Value::as_str) {
            key_matches(ctx, &ctx.cfg.host_path(key), &paths[0])?;
        }
        if !units.is_empty() {
            restart_once(ctx, &units)?;
        }
        if let Some(addr) = args.get("verify_endpoint").and_then(Value::as_str) {
            verify_endpoint(ctx, addr, &rec.fingerprint_sha256)?;
        }
        Ok(())
    })();
    if let Err(e) = attempt {
        (ctx.output)(format!(
            "verification failed: {e}; restoring backup {}",
            m.id
        ));
        let restored = backup::restore(ctx.state, &m.id);
        if !units.is_empty() {
            let _ = restart(ctx, &units);
        }
        return Err(match restored {
            Ok(_) => ActError(format!(
                "{e} (rolled back: previous files restored from backup {})",
                m.id
            )),
            Err(r) => ActError(format!(
                "{e}; ROLLBACK FAILED: {r} (backup {} kept in {})",
                m.id,
                ctx.state.path().display()
            )),
        });
    }
    Ok(json!({
        "message": format!("installed {} in {} place(s), valid until {}", rec.subject, paths.len(), certfleet_common::model::format_time(rec.not_after)),
        "backup_id": m.id,
        "fingerprint": rec.fingerprint_sha256,
        "not_after": rec.not_after,
        "restart": units,
    }))
}

/// The certificate at `cert` carries the public key of the private key at `key` (openssl).
pub fn key_matches(
    ctx: &ActContext<'_>,
    key: &std::path::Path,
    cert: &std::path::Path,
) -> Result<(), ActError> {
    let o = openssl(ctx);
    let k = ctx.run_ok(
        &o,
        &["pkey", "-in", &key.display().to_string(), "-pubout"],
        None,
    )?;
    let c = ctx.run_ok(
        &o,
        &[
            "x509",
            "-in",
            &cert.display().to_string(),
            "-noout",
            "-pubkey",
        ],
        None,
    )?;
    if k.stdout.trim() != c.stdout.trim() {
        return Err(ActError(format!(
            "{} does not match key {}",
            cert.display(),
            key.display()
        )));
    }
    Ok(())
}

/// `systemctl restart` each unit, then require `systemctl is-active` to say `active`.
/// Restarts `units` once per step, also across an agent crash: a step that already noted
/// `restarted` restarts nothing again; before restarting, each unit's systemd `InvocationID`
/// (new at every start, systemd.exec(5)) is noted, so a step resumed after a crash between the
/// restart and its note finds the units started since and does not restart them a second
/// time. A unit whose id cannot be read (an empty value: not running, or a systemd without
/// it) is restarted.
pub fn restart_once(ctx: &ActContext<'_>, units: &[String]) -> Result<(), ActError> {
    if ctx.noted("restarted").is_some() {
        (ctx.output)(format!(
            "{} restarted by the interrupted attempt after the certificate was written",
            units.join(", ")
        ));
        return Ok(());
    }
    let ids: BTreeMap<&str, String> = units
        .iter()
        .map(|u| (u.as_str(), invocation_id(ctx, u)))
        .collect();
    // First writer wins: a resumed attempt compares with the ids from before any restart.
    ctx.note("invocations-before-restart", json!(ids))?;
    let before = ctx.noted("invocations-before-restart").unwrap_or_default();
    let todo: Vec<String> = units
        .iter()
        .filter(|u| {
            let was = before.get(u.as_str()).and_then(Value::as_str).unwrap_or("");
            let since = ctx.resumed() && !was.is_empty() && ids[u.as_str()] != was;
            if since {
                (ctx.output)(format!(
                    "{u}: started since the interrupted attempt noted it (InvocationID {was} → \
                     {}): not restarted again",
                    ids[u.as_str()]
                ));
            }
            !since
        })
        .cloned()
        .collect();
    restart(ctx, &todo)?;
    ctx.crash_point("restarted-unnoted");
    ctx.note("restarted", json!(units))?;
    ctx.crash_point("after-restart");
    Ok(())
}

/// `systemctl show -p InvocationID --value UNIT`; empty when it cannot be read.
fn invocation_id(ctx: &ActContext<'_>, unit: &str) -> String {
    let systemctl = ctx.cfg.tool("systemctl", "/usr/bin/systemctl");
    crate::exec::run(
        &systemctl,
        &["show", "-p", "InvocationID", "--value", unit],
        None,
        ctx.timeout,
    )
    .ok()
    .filter(|o| o.code == Some(0))
    .map(|o| o.stdout.trim().to_owned())
    .unwrap_or_default()
}

pub fn restart(ctx: &ActContext<'_>, units: &[String]) -> Result<(), ActError> {
    let systemctl = ctx.cfg.tool("systemctl", "/usr/bin/systemctl");
    for u in units {
        ctx.run_ok(&systemctl, &["restart", u], None)?;
        let out = crate::exec::run(&systemctl, &["is-active", u], None, ctx.timeout)?;
        let state = out.stdout.trim().to_owned();
        (ctx.output)(format!("{u}: {state}"));
        if state != "active" {
            return Err(ActError(format!(
                "{u} is {state} after restart (see journalctl -u {u})"
            )));
        }
    }
    Ok(())
}

pub(crate) fn verify_endpoint(
    ctx: &ActContext<'_>,
    address: &str,
    fingerprint: &str,
) -> Result<(), ActError> {
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    let chain = crate::collect::endpoint::probe(
        address,
        host,
        ctx.timeout.min(std::time::Duration::from_secs(10)),
    )
    .map_err(|e| ActError(format!("probing {address}: {e}")))?;
    let served = certfleet_common::pki::sha256_hex(&chain[0]);
    (ctx.output)(format!("{address} serves {}", &served[..16]));
    if served != fingerprint {
        return Err(ActError(format!(
            "{address} still serves {} instead of {}",
            &served[..16],
            &fingerprint[..16.min(fingerprint.len())]
        )));
    }
    Ok(())
}
