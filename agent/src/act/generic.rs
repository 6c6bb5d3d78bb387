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

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{ActContext, ActError, arg_str, backup};

/// Runs `action`.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "csr.create" => csr_create(ctx, args),
        "ca.sign" => ca_sign(ctx, args),
        "cert.install" => cert_install(ctx, args),
        "service.restart" => {
            let units = units(args);
            restart(ctx, &units)?;
            Ok(json!({"message": format!("restarted {}", units.join(", ")), "units": units}))
        }
        "endpoint.verify" => {
            let address = arg_str(args, "address")?;
            let fp = arg_str(args, "fingerprint")?;
            verify_endpoint(ctx, address, fp)?;
            Ok(json!({"message": format!("{address} serves {}", &fp[..16.min(fp.len())])}))
        }
        "files.backup" => {
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
        "backup.restore" => {
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
        other => Err(ActError(format!(
            "unknown action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
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

fn csr_create(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let key = ctx.cfg.host_path(arg_str(args, "key")?);
    let subject = arg_str(args, "subject")?;
    if !key.exists() {
        return Err(ActError(format!(
            "key {} does not exist on this host",
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
    // `openssl ca` resolves the paths in its config relative to the working directory, as
    // oVirt's pki-enroll-request.sh does by `cd`-ing into the PKI directory first.
    ctx.run_ok_in(&program, &rest, None, Some(&dir))?;
    let pem = std::fs::read_to_string(&out_path)
        .map_err(|e| ActError(format!("CA {name} wrote no certificate to {out_s}: {e}")))?;
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())
        .map_err(|e| ActError(format!("{out_s}: {e}")))?;
    let rec =
        certfleet_common::x509::parse_der(&der).map_err(|e| ActError(format!("{out_s}: {e}")))?;
    let pem = certfleet_common::pem::encode("CERTIFICATE", &der);
    Ok(json!({
        "message": format!("signed {} until {}", rec.subject, certfleet_common::model::format_time(rec.not_after)),
        "cert_pem": pem,
        "fingerprint": rec.fingerprint_sha256,
        "serial": rec.serial,
        "not_after": rec.not_after,
    }))
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
    let units = units(args);
    let attempt = (|| -> Result<(), ActError> {
        let body = certfleet_common::pem::encode("CERTIFICATE", &der);
        for t in &targets {
            backup::install(&t.path, body.as_bytes(), t.mode, t.owner)?;
            (ctx.output)(format!(
                "installed {} (mode {:o})",
                t.path.display(),
                t.mode
            ));
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
            restart(ctx, &units)?;
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
