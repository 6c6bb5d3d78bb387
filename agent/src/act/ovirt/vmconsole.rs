//! The serial console's OpenSSH host certificate of an oVirt host, renewed without the engine
//! API (recipe `ovirt-hosts-offline`).
//!
//! On a deployed host `/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub` certifies the key
//! `host-ssh_host_rsa` for `ovirt-vmconsole-host-sshd`. Host-deploy's role
//! `ovirt-host-deploy-vm-console-certificates` (oVirt/ovirt-engine
//! `packaging/ansible-runner-service-project/project/roles/ovirt-host-deploy-vm-console-certificates/tasks/main.yml`)
//! makes it: the key stays on the host, the engine signs its public key with
//! `pki-enroll-openssh-cert.sh --name=<fqdn>-ssh --id=<fqdn> --principals=<fqdn>
//! --days=<same validity as the VDSM certificate>`, and the role copies
//! `certs/<fqdn>-ssh-cert.pub` to the host (no owner or mode given: root, 0644 by umask) and
//! restarts `ovirt-vmconsole-host-sshd` (role `ovirt-host-deploy-vm-console`). The certificate
//! expires with the VDSM certificate, so a recovery that renews only VDSM leaves the serial
//! console broken. Three actions redo it step by step:
//!
//! | action | runs on | does |
//! |---|---|---|
//! | `ovirt.vmconsole_pubkey` | host | `ssh-keygen -y -f host-ssh_host_rsa`: the public key (the private key never leaves the host). Read-only |
//! | `ovirt.vmconsole_sign` | engine | what `pki-enroll-openssh-cert.sh` does after its X.509 step: the public key to `certs/<name>.pub`, then `ssh-keygen -s <copy of private/ca.pem> -I <id> -h -V -1h:+<days>d -n <principals>` (a host certificate: the script drops `-O` options with `--host`), checked with `ssh-keygen -L`, `certs/<name>.pub` and `certs/<name>-cert.pub` written atomically after a backup (the script's `common_backup`) |
//! | `ovirt.vmconsole_install` | host | the certificate to `host-ssh_host_rsa-cert.pub` after a backup, owner/group/mode kept, atomic; verified with `ssh-keygen -L -f` (host certificate, key id, principals, certifies `host-ssh_host_rsa`, signed by the engine CA key — the one the engine step used and the host's `ca.pub` — and valid later than before); `ovirt-vmconsole-host-sshd` restarted and required active; any failure restores the file byte for byte and restarts the unit again |
//!
//! Unlike host-deploy, the engine's X.509 twin `certs/<fqdn>-ssh.cer` (the role's
//! `pki-enroll-request.sh --name=<fqdn>-ssh`, from which the script takes the public key) is
//! not re-issued: nothing but the script reads it, and the offline path keeps the engine CA's
//! `database.txt` to the VDSM enrollment. The public key signed is the host's own, which is
//! the one in that certificate.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};

use super::super::{ActContext, ActError, arg_str, backup};

/// The serial console's host key (`ovirt_vmconsole_key_file`).
pub const HOST_KEY: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa";
/// Its OpenSSH certificate (`ovirt_vmconsole_cert_file`).
pub const HOST_CERT: &str = "/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub";
/// The engine CA key as an OpenSSH public key (`ovirt_vmconsole_ca_file`).
pub const HOST_CA_PUB: &str = "/etc/pki/ovirt-vmconsole/ca.pub";
/// The unit the role restarts after installing the certificate.
pub const HOST_SSHD: &str = "ovirt-vmconsole-host-sshd";

fn ssh_keygen(ctx: &ActContext<'_>) -> PathBuf {
    ctx.cfg.tool("ssh-keygen", "/usr/bin/ssh-keygen")
}

/// `SHA256:…` fingerprint of an OpenSSH public key line (`<type> <base64> [comment]`), as
/// `ssh-keygen -l` prints it: the SHA-256 of the key blob, base64 without padding.
pub fn fingerprint(line: &str) -> Result<String, ActError> {
    let mut f = line.split_whitespace();
    let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
        return Err(ActError(format!(
            "not an OpenSSH public key line: {:?}",
            line.chars().take(60).collect::<String>()
        )));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ActError(format!("OpenSSH {kind} key: bad base64: {e}")))?;
    let d = ring::digest::digest(&ring::digest::SHA256, &blob);
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d.as_ref())
    ))
}

/// The `<type> <base64>` of the first public key line in `text` (comment dropped).
fn public_key_line(text: &str, what: &str) -> Result<String, ActError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-"))
        .ok_or_else(|| ActError(format!("{what}: no OpenSSH public key in the output")))?;
    let key: Vec<&str> = line.split_whitespace().take(2).collect();
    if key.len() != 2 || key[0].contains("-cert-") {
        return Err(ActError(format!(
            "{what}: not a plain public key: {line:?}"
        )));
    }
    let key = key.join(" ");
    fingerprint(&key)?;
    Ok(key)
}

/// What `ssh-keygen -L -f CERT` prints about a certificate (OpenSSH `ssh-keygen.c`
/// `show_certificate`): the fields the checks compare.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    /// `Type: … host certificate` (else a user certificate).
    pub host: bool,
    /// Fingerprint of the certified key (`Public key: RSA-CERT SHA256:…`).
    pub public_key: String,
    /// Fingerprint of the signing CA key (`Signing CA: RSA SHA256:… (using …)`).
    pub signing_ca: String,
    /// `Key ID: "…"`, unquoted.
    pub key_id: String,
    /// `Valid: …` as printed.
    pub valid: String,
    /// `Principals:`, one per line after it.
    pub principals: Vec<String>,
}

/// Parses `ssh-keygen -L` output; every field above must be present.
pub fn parse_listing(text: &str) -> Result<Listing, String> {
    let mut l = Listing::default();
    let (mut seen_type, mut in_principals) = (false, false);
    for raw in text.lines() {
        let line = raw.trim();
        if in_principals {
            // Principals follow on their own lines until the next `Name:` field.
            if line.is_empty() || line.contains(": ") || line.ends_with(':') {
                in_principals = false;
            } else {
                l.principals.push(line.to_owned());
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Type: ") {
            seen_type = true;
            l.host = v.ends_with(" host certificate");
        } else if let Some(v) = line.strip_prefix("Public key: ") {
            l.public_key = v.split_whitespace().nth(1).unwrap_or_default().to_owned();
        } else if let Some(v) = line.strip_prefix("Signing CA: ") {
            l.signing_ca = v.split_whitespace().nth(1).unwrap_or_default().to_owned();
        } else if let Some(v) = line.strip_prefix("Key ID: ") {
            l.key_id = v.trim_matches('"').to_owned();
        } else if let Some(v) = line.strip_prefix("Valid: ") {
            l.valid = v.to_owned();
        } else if let Some(v) = line.strip_prefix("Principals:") {
            let v = v.trim();
            if v.is_empty() {
                in_principals = true;
            } else if v != "(none)" {
                l.principals.push(v.to_owned());
            }
        }
    }
    if !seen_type || l.public_key.is_empty() || l.signing_ca.is_empty() || l.valid.is_empty() {
        return Err(format!(
            "not a certificate listing (want Type, Public key, Signing CA, Valid): {:?}",
            text.chars().take(200).collect::<String>()
        ));
    }
    Ok(l)
}

/// `ssh-keygen -L -f path`, parsed.
fn listing(ctx: &ActContext<'_>, path: &Path) -> Result<Listing, ActError> {
    let out = ctx.run_ok(
        &ssh_keygen(ctx),
        &["-L", "-f", &path.display().to_string()],
        None,
    )?;
    parse_listing(&out.stdout)
        .map_err(|e| ActError(format!("ssh-keygen -L -f {}: {e}", path.display())))
}

/// A private scratch directory in the agent's state directory, removed on drop (the CA key
/// copy lives there while `ssh-keygen -s` runs, as the script's `mktemp` copy does).
struct Scratch(PathBuf);

impl Scratch {
    fn new(ctx: &ActContext<'_>) -> Result<Self, ActError> {
        let dir = ctx
            .state
            .path()
            .join(format!("scratch-{}-{}", ctx.step_id, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        certfleet_common::atomic::create_private_dir(&dir)
            .map_err(|e| ActError(format!("scratch directory {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a secret 0600 in a scratch directory (never inheriting a mode).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ActError> {
    certfleet_common::atomic::write_private(path, bytes)
        .map_err(|e| ActError(format!("writing {}: {e}", path.display())))
}

/// `ovirt.vmconsole_pubkey`: the serial console host key's public half.
///
/// Idempotent by construction: read-only (`ssh-keygen -y` reads the key, writes nothing), so a
/// resumed step reads it again.
pub(super) fn pubkey(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let key_arg = args.get("key").and_then(Value::as_str).unwrap_or(HOST_KEY);
    let key = ctx.cfg.host_path(key_arg);
    if !key.exists() {
        return Err(ActError(format!(
            "{key_arg} does not exist on this host: the serial console (ovirt-vmconsole-host) \
             is not deployed here"
        )));
    }
    let out = ctx.run_ok(
        &ssh_keygen(ctx),
        &["-y", "-f", &key.display().to_string()],
        None,
    )?;
    let line = public_key_line(&out.stdout, &format!("ssh-keygen -y -f {key_arg}"))?;
    let fp = fingerprint(&line)?;
    Ok(json!({
        "message": format!("public key of {key_arg}: {fp}"),
        "public_key": line,
        "fingerprint": fp,
    }))
}

/// `ovirt.vmconsole_sign`: the engine CA key signs a host's serial console key exactly as
/// `pki-enroll-openssh-cert.sh --host` does; the answer is the certificate's text.
///
/// Idempotent by construction: `certs/<name>.pub` and `certs/<name>-cert.pub` are backed up
/// once, before anything is written (a resumed step keeps the first attempt's backup, of the
/// files as they were before the plan), and both are written only after `ssh-keygen -s` and
/// its check succeeded in a scratch directory, each by an atomic rename. A resumed step first
/// looks at `certs/<name>-cert.pub`: if it differs from the backup and certifies this public
/// key, as a host certificate with this key id and principals, signed by this CA key, the first
/// attempt finished signing and its certificate is the answer (no second signature). Otherwise
/// nothing of the first attempt is visible, and signing now is the first signing (OpenSSH keeps
/// no serial database, so there is nothing else to reconcile).
pub(super) fn sign(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "name")?;
    let id = arg_str(args, "id")?;
    let principals = arg_str(args, "principals")?;
    let given = arg_str(args, "public_key")?;
    if !certfleet_common::identity::valid_name(name) {
        return Err(ActError(format!(
            "certificate name {name:?} is not a plain file name"
        )));
    }
    for (what, v) in [("id", id), ("principals", principals)] {
        if v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ActError(format!(
                "{what} {v:?} for {name} is empty or has blanks or control characters"
            )));
        }
    }
    let public_key = public_key_line(given, &format!("public key for {name}"))?;
    let want_fp = fingerprint(&public_key)?;
    let pki = super::engine_pki(ctx);
    let ca_key = pki.join("private/ca.pem");
    if !ca_key.exists() {
        return Err(ActError(format!(
            "this host has no oVirt engine CA key: {} is missing",
            ca_key.display()
        )));
    }
    let days = match args.get("days").and_then(Value::as_u64) {
        Some(d) => d,
        None => super::host_cert_days(ctx).unwrap_or(super::SCRIPT_DEFAULT_DAYS),
    };
    let pub_path = pki.join(format!("certs/{name}.pub"));
    let cert_path = pki.join(format!("certs/{name}-cert.pub"));
    let m = backup::create(
        ctx.state,
        ctx.step_id,
        &[pub_path.clone(), cert_path.clone()],
    )?;
    (ctx.output)(format!(
        "backup {} holds {} and {}",
        m.id,
        pub_path.display(),
        cert_path.display()
    ));
    ctx.crash_point("after-backup");
    let scratch = Scratch::new(ctx)?;
    // `cat "${PKIDIR}/private/ca.pem" > "${TMPCA}"`: ssh-keygen wants the CA key in a file of
    // its own, private to the caller.
    let tmp_ca = scratch.0.join("ca");
    let ca_bytes = std::fs::read(&ca_key)
        .map_err(|e| ActError(format!("reading {}: {e}", ca_key.display())))?;
    write_private(&tmp_ca, &ca_bytes)?;
    let kg = ssh_keygen(ctx);
    let ca_pub = ctx.run_ok(&kg, &["-y", "-f", &tmp_ca.display().to_string()], None)?;
    let ca_fp = fingerprint(&public_key_line(
        &ca_pub.stdout,
        &format!("the OpenSSH form of {}", ca_key.display()),
    )?)?;
    let answer = |text: String, l: &Listing, backup_id: &str| -> Result<Value, ActError> {
        let c = crate::collect::ovirt_engine::openssh::parse(&text)
            .map_err(|e| ActError(format!("{}: {e}", cert_path.display())))?;
        let until = i64::try_from(c.valid_before).unwrap_or(i64::MAX);
        Ok(json!({
            "message": format!(
                "engine CA ({ca_fp}) signed the host key {want_fp} of {id} for {} until {}",
                l.principals.join(","),
                certfleet_common::model::format_time(until)
            ),
            "cert_text": text,
            "ca_fingerprint": ca_fp,
            "key_id": l.key_id,
            "principals": l.principals,
            "valid_before": until,
            "days": days,
            "backup_id": backup_id,
        }))
    };
    let want_principals: Vec<String> = principals.split(',').map(str::to_owned).collect();
    let matches = |l: &Listing| {
        l.host
            && l.key_id == id
            && l.principals == want_principals
            && l.public_key == want_fp
            && l.signing_ca == ca_fp
    };
    if ctx.resumed() && cert_path.exists() {
        let bytes = std::fs::read(&cert_path)
            .map_err(|e| ActError(format!("{}: {e}", cert_path.display())))?;
        let before = m
            .files
            .iter()
            .find(|f| f.path == cert_path)
            .filter(|f| f.existed)
            .map(|f| f.sha256.clone());
        if before.as_deref() != Some(&certfleet_common::pki::sha256_hex(&bytes)) {
            let l = listing(ctx, &cert_path)?;
            if matches(&l) {
                (ctx.output)(format!(
                    "{} already holds the certificate this step signed; not signing again",
                    cert_path.display()
                ));
                return answer(String::from_utf8_lossy(&bytes).into_owned(), &l, &m.id);
            }
        }
    }
    let undo = |e: ActError| -> ActError {
        match backup::restore(ctx.state, &m.id) {
            Ok(_) => ActError(format!("{e} (engine files restored from backup {})", m.id)),
            Err(r) => ActError(format!("{e}; restoring backup {} failed: {r}", m.id)),
        }
    };
    let tmp_pub = scratch.0.join(format!("{name}.pub"));
    let tmp_cert = scratch.0.join(format!("{name}-cert.pub"));
    write_private(&tmp_pub, format!("{public_key}\n").as_bytes())?;
    let validity = format!("-1h:+{days}d");
    let (ca_s, pub_s) = (tmp_ca.display().to_string(), tmp_pub.display().to_string());
    // The script's line with --host: `-s TMPCA -I id -h -V -1h:+Nd -n principals` and no `-O`
    // (it clears OPTIONS for host certificates).
    let argv = [
        "-s",
        ca_s.as_str(),
        "-I",
        id,
        "-h",
        "-V",
        &validity,
        "-n",
        principals,
        &pub_s,
    ];
    ctx.crash_point("before-sign");
    ctx.run_ok(&kg, &argv, None)?;
    let l = listing(ctx, &tmp_cert)?;
    if !matches(&l) {
        return Err(ActError(format!(
            "ssh-keygen -s made an unexpected certificate for {name}: {l:?} (want a host \
             certificate for {want_fp}, key id {id}, principals {principals}, CA {ca_fp})"
        )));
    }
    let text =
        std::fs::read(&tmp_cert).map_err(|e| ActError(format!("{}: {e}", tmp_cert.display())))?;
    // Key first, certificate last: a certificate on disk means the step got that far.
    (|| -> Result<(), ActError> {
        backup::install(&pub_path, format!("{public_key}\n").as_bytes(), 0o644, None)?;
        backup::install(&cert_path, &text, 0o644, None)?;
        ctx.crash_point("after-sign");
        if std::fs::read(&cert_path).ok().as_deref() != Some(text.as_slice()) {
            return Err(ActError(format!(
                "{} does not hold the new certificate after writing it",
                cert_path.display()
            )));
        }
        Ok(())
    })()
    .map_err(undo)?;
    tracing::info!(step = %ctx.step_id, name, id, ca = %ca_fp, "signed vmconsole host certificate");
    answer(String::from_utf8_lossy(&text).into_owned(), &l, &m.id)
}

/// `ovirt.vmconsole_install`: installs and verifies the host's serial console certificate,
/// restarts `ovirt-vmconsole-host-sshd`, and puts everything back if a check fails.
///
/// Idempotent by construction, like `cert.install`: the certificate file is backed up once,
/// before the first write, and that backup is never overwritten (a resumed step keeps the one
/// of its first attempt, of the file as it was before the plan). The file is written only if
/// it does not already hold the new certificate; a resumed step refuses (needs operator) a
/// file that holds neither the new certificate nor what the backup recorded. The unit is
/// restarted once per step, also across a crash between the restart and its note
/// ([`crate::act::generic::restart_once`]). Verification always runs again.
pub(super) fn install(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let text = arg_str(args, "cert_text")?;
    let ca_fp = arg_str(args, "ca_fingerprint")?;
    let key_id = arg_str(args, "key_id")?;
    let principals: Vec<String> = args
        .get("principals")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let old = args
        .get("old_valid_before")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let cert_arg = args
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or(HOST_CERT);
    let key_arg = args.get("key").and_then(Value::as_str).unwrap_or(HOST_KEY);
    let units: Vec<String> = match args.get("restart").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
        None => vec![HOST_SSHD.to_owned()],
    };
    let c = crate::collect::ovirt_engine::openssh::parse(text)
        .map_err(|e| ActError(format!("certificate to install at {cert_arg}: {e}")))?;
    let now = certfleet_common::model::now();
    let until = i64::try_from(c.valid_before).unwrap_or(i64::MAX);
    if until <= now || !c.host {
        return Err(ActError(format!(
            "refusing to install at {cert_arg} a certificate that is not a valid host \
             certificate (host: {}, valid before {})",
            c.host,
            certfleet_common::model::format_time(until)
        )));
    }
    let path = ctx.cfg.host_path(cert_arg);
    let key = ctx.cfg.host_path(key_arg);
    if !key.exists() {
        return Err(ActError(format!(
            "{key_arg} does not exist on this host: the serial console is not deployed here"
        )));
    }
    let m = backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&path))?;
    (ctx.output)(format!("backup {} holds {}", m.id, path.display()));
    ctx.crash_point("after-backup");
    let body = text.as_bytes();
    if ctx.resumed() {
        let f = &m.files[0];
        let now_bytes = std::fs::read(&path).ok();
        let new = now_bytes.as_deref() == Some(body);
        let as_backed_up = match &now_bytes {
            Some(b) => f.existed && certfleet_common::pki::sha256_hex(b) == f.sha256,
            None => !f.existed,
        };
        if !new && !as_backed_up {
            return Err(ActError(format!(
                "{} changed since step {} backed it up (holds neither the backup {} nor the new \
                 certificate); interrupted, needs operator",
                path.display(),
                ctx.step_id,
                m.id
            )));
        }
    }
    let kg = ssh_keygen(ctx);
    let attempt = (|| -> Result<String, ActError> {
        if std::fs::read(&path).ok().as_deref() == Some(body) {
            (ctx.output)(format!(
                "{} already holds the new certificate (interrupted attempt)",
                path.display()
            ));
        } else {
            // Owner, group and mode of the replaced file are kept (root 0644 as the role
            // leaves it); a missing file gets 0644.
            backup::install(&path, body, 0o644, None)?;
            (ctx.output)(format!("installed {}", path.display()));
            ctx.crash_point("after-replace");
        }
        let l = listing(ctx, &path)?;
        let host_pub = ctx.run_ok(&kg, &["-y", "-f", &key.display().to_string()], None)?;
        let key_fp = fingerprint(&public_key_line(
            &host_pub.stdout,
            &format!("ssh-keygen -y -f {key_arg}"),
        )?)?;
        let mut problems = Vec::new();
        if !l.host {
            problems.push("not a host certificate".to_owned());
        }
        if l.key_id != key_id {
            problems.push(format!("key id {:?}, want {key_id:?}", l.key_id));
        }
        if l.principals != principals {
            problems.push(format!(
                "principals {:?}, want {principals:?}",
                l.principals
            ));
        }
        if l.public_key != key_fp {
            problems.push(format!(
                "certifies key {}, but {key_arg} is {key_fp}",
                l.public_key
            ));
        }
        if l.signing_ca != ca_fp {
            problems.push(format!(
                "signed by {}, not by the engine CA key {ca_fp}",
                l.signing_ca
            ));
        }
        let ca_pub = ctx.cfg.host_path(HOST_CA_PUB);
        if ca_pub.exists() {
            let t = std::fs::read_to_string(&ca_pub)
                .map_err(|e| ActError(format!("{}: {e}", ca_pub.display())))?;
            let trusted = fingerprint(&public_key_line(&t, HOST_CA_PUB)?)?;
            if trusted != l.signing_ca {
                problems.push(format!(
                    "signed by {}, but this host's {HOST_CA_PUB} is {trusted}",
                    l.signing_ca
                ));
            }
        }
        // ssh-keygen -L prints the validity in local time; the exact bound comes from the
        // certificate itself.
        let installed = crate::collect::ovirt_engine::openssh::parse(
            &std::fs::read_to_string(&path)
                .map_err(|e| ActError(format!("{}: {e}", path.display())))?,
        )
        .map_err(|e| ActError(format!("{}: {e}", path.display())))?;
        let valid_before = i64::try_from(installed.valid_before).unwrap_or(i64::MAX);
        let valid_after = i64::try_from(installed.valid_after).unwrap_or(i64::MAX);
        if valid_before <= old.max(now) || valid_after > now {
            problems.push(format!(
                "valid {} (before: until {}), not valid now and later than before",
                l.valid,
                certfleet_common::model::format_time(old)
            ));
        }
        if !problems.is_empty() {
            return Err(ActError(format!(
                "ssh-keygen -L -f {}: {}",
                path.display(),
                problems.join("; ")
            )));
        }
        (ctx.output)(format!(
            "{cert_arg}: host certificate {key_id:?} for {} certifying {key_fp}, signed by {ca_fp}, valid {}",
            principals.join(","),
            l.valid
        ));
        if !units.is_empty() {
            super::super::generic::restart_once(ctx, &units)?;
        }
        Ok(l.valid)
    })();
    let valid = match attempt {
        Ok(v) => v,
        Err(e) => {
            (ctx.output)(format!(
                "verification failed: {e}; restoring backup {}",
                m.id
            ));
            let restored = backup::restore(ctx.state, &m.id);
            if !units.is_empty() {
                let _ = super::super::generic::restart(ctx, &units);
            }
            return Err(match restored {
                Ok(_) => ActError(format!(
                    "{e} (rolled back: {} restored from backup {})",
                    path.display(),
                    m.id
                )),
                Err(r) => ActError(format!(
                    "{e}; ROLLBACK FAILED: {r} (backup {} kept in {})",
                    m.id,
                    ctx.state.path().display()
                )),
            });
        }
    };
    tracing::info!(step = %ctx.step_id, path = %path.display(), key_id, "installed vmconsole host certificate");
    Ok(json!({
        "message": format!(
            "installed the serial console host certificate {key_id:?} at {cert_arg}, valid {valid}, until {}",
            certfleet_common::model::format_time(until)
        ),
        "backup_id": m.id,
        "restart": units,
        "valid_before": until,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -L` of a host certificate made by the real `ssh-keygen -s` the way
    /// `pki-enroll-openssh-cert.sh --host` signs, read by [`parse_listing`]; the fingerprints
    /// agree with [`fingerprint`] of the key and of the CA key.
    #[test]
    fn reads_what_ssh_keygen_lists() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| -> String {
            let out = std::process::Command::new("ssh-keygen")
                .args(args)
                .current_dir(d)
                .output()
                .expect("ssh-keygen (openssh-client) is needed");
            assert!(
                out.status.success(),
                "ssh-keygen {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        run(&[
            "-q", "-t", "rsa", "-b", "2048", "-N", "", "-m", "PEM", "-f", "ca",
        ]);
        run(&["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", "host"]);
        run(&[
            "-s",
            "ca",
            "-I",
            "kvm01.example.test",
            "-h",
            "-V",
            "-1h:+1827d",
            "-n",
            "kvm01.example.test",
            "host.pub",
        ]);
        let text = run(&["-L", "-f", "host-cert.pub"]);
        let l = parse_listing(&text).unwrap();
        assert!(l.host, "{text}");
        assert_eq!(l.key_id, "kvm01.example.test");
        assert_eq!(l.principals, ["kvm01.example.test"]);
        let host_pub = std::fs::read_to_string(d.join("host.pub")).unwrap();
        let ca_pub = std::fs::read_to_string(d.join("ca.pub")).unwrap();
        assert_eq!(l.public_key, fingerprint(&host_pub).unwrap());
        assert_eq!(l.signing_ca, fingerprint(&ca_pub).unwrap());
        assert!(l.valid.starts_with("from "), "{}", l.valid);
        // ssh-keygen -l agrees with the fingerprint computed here.
        let printed = run(&["-l", "-f", "host.pub"]);
        assert_eq!(
            printed.split_whitespace().nth(1),
            Some(fingerprint(&host_pub).unwrap().as_str())
        );
        // A user certificate with two principals and a plain key are told apart.
        run(&[
            "-s",
            "ca",
            "-I",
            "u",
            "-n",
            "a,b",
            "-O",
            "clear",
            "-O",
            "permit-pty",
            "host.pub",
        ]);
        let u = parse_listing(&run(&["-L", "-f", "host-cert.pub"])).unwrap();
        assert!(!u.host);
        assert_eq!(u.principals, ["a", "b"]);
        assert!(parse_listing("").is_err());
        assert!(parse_listing(&host_pub).is_err());
        assert!(public_key_line(&host_pub, "t").is_ok());
        assert!(public_key_line("garbage", "t").is_err());
        assert!(fingerprint("ssh-rsa !!!").is_err());
    }
}
