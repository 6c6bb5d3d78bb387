//! oVirt actions (`ovirt.*`), run on the engine host.
//!
//! | action | does |
//! |---|---|
//! | `ovirt.power_management` | engine API: `PUT /hosts/ID` `<power_management><enabled>B`; returns the `previous` setting so a later step can restore it |
//! | `ovirt.engine_version` | engine API: `GET /ovirt-engine/api` `product_info.version`; reports `version` and whether the engine enrolls a NonResponsive host directly (`enroll_non_responsive`, 4.5.1 and later: `HostValidator.validateStatusForEnrollCertificate` accepts `NonResponsive` since `ovirt-engine-4.5.1`, not in `ovirt-engine-4.5.0`). Read-only |
//! | `ovirt.host_maintenance` | engine API: `POST /hosts/ID/deactivate`, polls until `maintenance` (tolerating `up` / `preparing_for_maintenance` while VMs migrate). A `non_responsive` host is left as it is when `enroll_non_responsive` (the engine enrolls it directly); otherwise the engine's refusal (`VDS_CANNOT_MAINTENANCE_VDS_IS_NOT_RESPONDING_WITH_VMS`) is reported with the way out. Idempotent: a host already in maintenance is not deactivated again |
//! | `ovirt.enroll_certificate` | engine API: `POST /hosts/ID/enrollcertificate` (host in maintenance, or `non_responsive` when `enroll_non_responsive`), waits for the enrollment to finish: event 881, or `installing` seen and back to `maintenance` — never the stale status right after the POST (A10 race); 882 / `install_failed` fail |
//! | `ovirt.host_activate` | engine API: `POST /hosts/ID/activate`, polls until `up`; `error`, `install_failed`, `non_responsive`, `non_operational` fail |
//! | `ovirt.verify_host_certs` | on a host: `vdsmcert.pem` is a new certificate (fingerprint differs from `old_fingerprint`, notAfter later than `old_not_after`), valid now, matches `vdsmkey.pem`, chains to `certs/cacert.pem` (`openssl verify`), and its A8 copies are identical |
//! | `ovirt.global_maintenance` | on a hosted-engine host: `hosted-engine --set-maintenance --mode=global\|none`, then `hosted-engine --vm-status --json` must report `global_maintenance` accordingly |
//! | `ovirt.engine_setup` | on the engine: backs up every file of the engine PKI (and of `/etc/pki/ovirt-vmconsole`), writes the answer file (`OVESETUP_PKI/renew=bool:True`, `QUESTION/1/OVESETUP_SKIP_RENEW_PKI_CONFIRM=str:no`, plus `OVESETUP_CONFIG/continueSetupOnHEVM=bool:True` when `hosted_engine` — only after global maintenance was verified by the previous step) to `/root/certfleet-renew-pki.conf` (0600), runs `engine-setup --offline --accept-defaults --config-append=…` (A6), requires "Execution of setup completed successfully", then checks each `_COMMON_ENTITIES` certificate (A5) |
//! | `ovirt.refresh_host_ca` | on a host, after engine-setup renewed the engine CA and/or the QEMU CA (same key and subject, new validity: `pki-create-ca.sh --renew`): replaces every copy the host-deploy roles wrote (`certs/cacert.pem`, `libvirt-spice/ca-cert.pem`, `libvirt-vnc/ca-cert.pem`, `/etc/pki/CA/cacert.pem`, `ovn/ca-cert.pem`; QEMU CA: `libvirt-migrate/ca-cert.pem`) that differs, owner/group/mode kept, after a backup; refuses a CA with another subject or key; verifies every leaf against its CA file with `openssl verify`, restarts `libvirtd`, `vdsmd`; on failure restores and restarts again. Idempotent: copies already equal to the given CA are left alone, and a re-sent step with nothing to change reports so |
//! | `ovirt.engine_reissue` | on the engine: what `pki-enroll-pkcs12.sh --keep-key --san=…` then `pki-pkcs12-extract.sh` do for an entity engine-setup skips (OVN, A13/seed 003): key out of `keys/<name>.p12`, new `requests/<name>.req`, the script's `openssl ca` (as `ovirt.enroll_request`), new `.p12` (0600, renamed into place) and `key.nopass` (0600); everything backed up first and restored on failure; resumed after an agent crash without signing twice (the key from the backup's `.p12`, the signing found in `database.txt`) |
//! | `ovirt.engine_verify` | on the engine: each named `certs/<name>.cer` chains to `ca.pem`, has a SAN, is valid for longer than `min_days`, and matches `keys/<name>.key.nopass` when there is one |
//! | `ovirt.enroll_request` | what `/usr/share/ovirt-engine/bin/pki-enroll-request.sh` does for a host CSR: writes `requests/<name>.req`, takes the script's exclusive lock on the CA file, signs with the script's exact `openssl ca` line in the engine PKI directory (`openssl.conf`, `cert.conf` section `v3_ca_san` with `OVIRT_SAN` in the environment, notBefore back-dated a day), checks the result against the CA and returns the certificate |
//! | `ovirt.vmconsole_pubkey`, `ovirt.vmconsole_sign`, `ovirt.vmconsole_install` | the serial console's OpenSSH host certificate without the engine API: public key out of `host-ssh_host_rsa` on the host, signed on the engine as `pki-enroll-openssh-cert.sh --host` does, installed and verified with `ssh-keygen -L` on the host (see [`vmconsole`]) |
//!
//! Why not the generic `ca.sign` with a `[[cas]]` entry: oVirt's `cert.conf` takes the
//! subjectAltName (and custom key usages) from the environment (`${ENV::OVIRT_SAN}`), which a
//! fixed command template cannot carry per request, and without it the certificate has no SAN
//! and the engine raises HOST_CERTIFICATE_HAS_INVALID_SAN (reference A13). So no `[[cas]]`
//! configuration is needed on the engine: this module derives the CA from the host layout,
//! `/etc/pki/ovirt-engine` (setting `ovirt.engine_pki` moves it), with `ca.pem` /
//! `private/ca.pem` for the engine CA and `qemu-ca.pem` / `qemu-cert.conf` /
//! `certs-qemu` / `requests-qemu` for the QEMU CA (A1, A3).
//!
//! Validity: the `days` argument, else the engine's `VdsCertificateValidityInDays`
//! (`engine-config -g`, which reads the database and may fail while the engine is down), else
//! the script's default of 1827 days.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ActContext, ActError, arg_str, backup};

/// Where the engine PKI lives unless `ovirt.engine_pki` says otherwise.
pub const ENGINE_PKI: &str = "/etc/pki/ovirt-engine";

/// `pki-enroll-request.sh --days` default.
const SCRIPT_DEFAULT_DAYS: u64 = 1827;

/// `pki-enroll-request.sh --timeout` default (seconds to wait for the CA lock).
const LOCK_TIMEOUT: Duration = Duration::from_secs(20);

pub mod api;
pub mod vmconsole;

/// Runs `action`.
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "ovirt.enroll_request" => enroll_request(ctx, args),
        "ovirt.power_management" => power_management(ctx, args),
        "ovirt.engine_version" => engine_version(ctx),
        "ovirt.host_maintenance" => host_maintenance(ctx, args),
        "ovirt.enroll_certificate" => enroll_certificate(ctx, args),
        "ovirt.host_activate" => host_activate(ctx, args),
        "ovirt.verify_host_certs" => verify_host_certs(ctx, args),
        "ovirt.global_maintenance" => global_maintenance(ctx, args),
        "ovirt.engine_setup" => engine_setup(ctx, args),
        "ovirt.engine_reissue" => engine_reissue(ctx, args),
        "ovirt.engine_verify" => engine_verify(ctx, args),
        "ovirt.refresh_host_ca" => refresh_host_ca(ctx, args),
        "ovirt.vmconsole_pubkey" => vmconsole::pubkey(ctx, args),
        "ovirt.vmconsole_sign" => vmconsole::sign(ctx, args),
        "ovirt.vmconsole_install" => vmconsole::install(ctx, args),
        other => Err(ActError(format!(
            "unknown oVirt action {other:?} (this agent is version {})",
            env!("CARGO_PKG_VERSION")
        ))),
    }
}

/// The engine PKI directory on this host (under the root), if there is one.
pub fn engine_pki(ctx: &ActContext<'_>) -> PathBuf {
    ctx.cfg
        .host_path(ctx.cfg.setting("ovirt.engine_pki").unwrap_or(ENGINE_PKI))
}

/// The engine's CAs as `pki-common.sh` picks them by `--ca-file`.
struct EngineCa {
    file: &'static str,
    cert_conf: &'static str,
    cert_dir: &'static str,
    req_dir: &'static str,
}

fn engine_ca(name: &str) -> Result<EngineCa, ActError> {
    match name {
        "ca" => Ok(EngineCa {
            file: "ca",
            cert_conf: "cert.conf",
            cert_dir: "certs",
            req_dir: "requests",
        }),
        "qemu-ca" => Ok(EngineCa {
            file: "qemu-ca",
            cert_conf: "qemu-cert.conf",
            cert_dir: "certs-qemu",
            req_dir: "requests-qemu",
        }),
        other => Err(ActError(format!(
            "unknown engine CA {other:?} (ca or qemu-ca)"
        ))),
    }
}

fn openssl(ctx: &ActContext<'_>) -> PathBuf {
    ctx.cfg.tool("openssl", "/usr/bin/openssl")
}

/// `VdsCertificateValidityInDays` from `engine-config -g`, if the tool answers.
fn host_cert_days(ctx: &ActContext<'_>) -> Option<u64> {
    let tool = ctx.cfg.tool("engine-config", "/usr/bin/engine-config");
    if !tool.exists() {
        return None;
    }
    let out = crate::exec::run(
        &tool,
        &["-g", "VdsCertificateValidityInDays"],
        None,
        ctx.timeout,
    )
    .ok()?;
    if out.code != Some(0) {
        (ctx.output)(format!(
            "engine-config -g VdsCertificateValidityInDays failed ({}); using the default",
            out.stderr.trim()
        ));
        return None;
    }
    // `VdsCertificateValidityInDays: 1827 version: general`
    let days = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("VdsCertificateValidityInDays:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    (ctx.output)(format!("VdsCertificateValidityInDays = {days}"));
    Some(days)
}

/// Holds `flock -e` on the CA file like the script's `flock -e -w ${TIMEOUT} 9`.
fn lock_ca(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ActError> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut file = std::fs::File::open(path)
        .map_err(|e| ActError(format!("opening {} to lock it: {e}", path.display())))?;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, e)) => {
                return Err(ActError(format!(
                    "cannot lock {} within {}s (another enrollment running?): {e}",
                    path.display(),
                    LOCK_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

/// `date --utc --date "now -1 days" +"%y%m%d%H%M%SZ"`.
fn yesterday() -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(certfleet_common::model::now() - 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        t.year() % 100,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Idempotent by construction (see [`super::intent::signed_before`]): the length of the
/// engine's `database.txt` is noted before `openssl ca` runs; a resumed step returns the
/// certificate the database lists for this CSR's key since then instead of signing again.
fn enroll_request(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "name")?;
    let subject = arg_str(args, "subject")?;
    let csr = arg_str(args, "csr_pem")?;
    let san = args.get("san").and_then(Value::as_str).unwrap_or("");
    let ca = engine_ca(args.get("ca").and_then(Value::as_str).unwrap_or("ca"))?;
    if !certfleet_common::identity::valid_name(name) {
        return Err(ActError(format!(
            "request name {name:?} is not a plain file name"
        )));
    }
    if !csr.contains("BEGIN CERTIFICATE REQUEST") {
        return Err(ActError(format!("the CSR for {name} is not a PEM request")));
    }
    let pki = engine_pki(ctx);
    let ca_pem = pki.join(format!("{}.pem", ca.file));
    if !pki.join("openssl.conf").exists() || !ca_pem.exists() {
        return Err(ActError(format!(
            "this host has no oVirt engine PKI: {} or {} is missing",
            pki.join("openssl.conf").display(),
            ca_pem.display()
        )));
    }
    let days = match args.get("days").and_then(Value::as_u64) {
        Some(d) => d,
        None => host_cert_days(ctx).unwrap_or(SCRIPT_DEFAULT_DAYS),
    };
    let req_rel = format!("{}/{name}.req", ca.req_dir);
    let cert_rel = format!("{}/{name}.cer", ca.cert_dir);
    let (req_path, cert_path) = (pki.join(&req_rel), pki.join(&cert_rel));
    // openssl.conf: `database = database.txt`, `new_certs_dir = certs` (for both CAs).
    let database = pki.join("database.txt");
    if let Some(der) =
        super::intent::signed_before(ctx, &database, &pki.join("certs"), csr, &cert_path)?
    {
        return super::intent::signed_answer(
            &der,
            "engine CA",
            json!({"days": days, "backup_id": ctx.step_id}),
        );
    }
    // Re-enrolling overwrites the engine's request and certificate of this host: keep them.
    let m = backup::create(
        ctx.state,
        ctx.step_id,
        &[req_path.clone(), cert_path.clone()],
    )?;
    (ctx.output)(format!(
        "backup {} holds {} and {}",
        m.id,
        req_path.display(),
        cert_path.display()
    ));
    let undo = |e: ActError| -> ActError {
        match backup::restore(ctx.state, &m.id) {
            Ok(_) => ActError(format!("{e} (engine files restored from backup {})", m.id)),
            Err(r) => ActError(format!("{e}; restoring backup {} failed: {r}", m.id)),
        }
    };
    certfleet_common::atomic::write_file(&req_path, csr.as_bytes(), 0o644)
        .map_err(|e| undo(ActError(e.to_string())))?;
    let o = openssl(ctx);
    let signed = (|| -> Result<(), ActError> {
        let _lock = lock_ca(&ca_pem)?;
        // Only a CA with a Subject Key Identifier gets the extension section (script).
        let text = ctx.run_ok(
            &o,
            &[
                "x509",
                "-in",
                &ca_pem.display().to_string(),
                "-noout",
                "-text",
            ],
            None,
        )?;
        let extsection = if san.is_empty() { "v3_ca" } else { "v3_ca_san" };
        let ca_cert = format!("{}.pem", ca.file);
        let ca_key = format!("private/{}.pem", ca.file);
        let days_s = days.to_string();
        let start = yesterday();
        let mut argv = vec![
            "ca",
            "-batch",
            "-policy",
            "policy_match",
            "-config",
            "openssl.conf",
            "-cert",
            &ca_cert,
            "-keyfile",
            &ca_key,
            "-days",
            &days_s,
            "-in",
            &req_rel,
            "-out",
            &cert_rel,
            "-startdate",
            &start,
            "-subj",
            subject,
            "-utf8",
        ];
        if text.stdout.contains("Subject Key Identifier") {
            argv.extend(["-extfile", ca.cert_conf, "-extensions", extsection]);
        }
        let env = [("OVIRT_KU", ""), ("OVIRT_EKU", ""), ("OVIRT_SAN", san)];
        (ctx.output)(format!(
            "$ (cd {}) OVIRT_SAN={san} {}",
            pki.display(),
            crate::exec::command_line(&o, &argv)
        ));
        super::intent::before_signing(ctx, &database)?;
        let out = crate::exec::run_ok_in(&o, &argv, None, ctx.timeout, Some(&pki), &env)?;
        ctx.crash_point("after-sign");
        for line in out.stdout.lines().chain(out.stderr.lines()).take(30) {
            (ctx.output)(line.to_owned());
        }
        // chmod a+r "${cert}"
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert_path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| ActError(format!("chmod a+r {}: {e}", cert_path.display())))?;
        ctx.run_ok_in(
            &o,
            &["verify", "-CAfile", &ca_cert, &cert_rel],
            None,
            Some(&pki),
        )?;
        Ok(())
    })();
    signed.map_err(undo)?;
    let pem =
        std::fs::read(&cert_path).map_err(|e| ActError(format!("{}: {e}", cert_path.display())))?;
    let der = certfleet_common::pem::first_certificate(&pem)
        .map_err(|e| ActError(format!("{}: {e}", cert_path.display())))?;
    let rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| ActError(format!("{}: {e}", cert_path.display())))?;
    if !san.is_empty() && !rec.sans.iter().any(|s| s == san) {
        return Err(undo(ActError(format!(
            "{} lacks the SAN {san} (has {:?})",
            cert_path.display(),
            rec.sans
        ))));
    }
    Ok(json!({
        "message": format!(
            "engine CA signed {} (serial {}) until {}",
            rec.subject,
            rec.serial,
            certfleet_common::model::format_time(rec.not_after)
        ),
        "cert_pem": certfleet_common::pem::encode("CERTIFICATE", &der),
        "fingerprint": rec.fingerprint_sha256,
        "serial": rec.serial,
        "not_after": rec.not_after,
        "days": days,
        "backup_id": m.id,
    }))
}

/// Host status values that end a wait with an error (OAC `failed_state`).
const FAILED_STATES: &[&str] = &[
    "error",
    "install_failed",
    "non_responsive",
    "non_operational",
];

/// The engine's host record for `args.host` and its id.
fn api_host(api: &api::Api, args: &Value) -> Result<(Value, String), ActError> {
    let name = arg_str(args, "host")?;
    let h = api.find_host(name)?;
    let id = h["id"]
        .as_str()
        .ok_or_else(|| ActError(format!("host {name} has no id in the API answer")))?
        .to_owned();
    Ok((h, id))
}

/// Polls host `id` until `done(status)` is true; `ok_while(status)` false means failure.
fn wait_status(
    ctx: &ActContext<'_>,
    api: &api::Api,
    name: &str,
    id: &str,
    want: &str,
    ok_while: &dyn Fn(&str) -> bool,
) -> Result<(), ActError> {
    let deadline = Instant::now() + ctx.timeout;
    let mut last = String::new();
    loop {
        let st = api.status(id)?;
        if st != last {
            (ctx.output)(format!("host {name}: {st}"));
            last = st.clone();
        }
        if st == want {
            return Ok(());
        }
        if !ok_while(&st) {
            return Err(ActError(format!(
                "host {name} went to {st} while waiting for {want}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(ActError(format!(
                "host {name} still {st} after {}s waiting for {want}",
                ctx.timeout.as_secs()
            )));
        }
        std::thread::sleep(api.poll);
    }
}

fn action_ok(api: &api::Api, name: &str, id: &str, action: &str) -> Result<(), ActError> {
    let r = api.call("POST", &format!("/hosts/{id}/{action}"), "<action/>")?;
    if r.code != 200 {
        return Err(ActError(format!(
            "POST hosts/{id}/{action} for host {name} failed: HTTP {}: {}",
            r.code,
            r.fault()
        )));
    }
    Ok(())
}

/// `ovirt.power_management`: sets a host's power management and returns the `previous`
/// setting, which a later step restores.
///
/// Idempotent by construction: the setting is only written when it differs, and the setting
/// before the step is noted in the intent journal before the `PUT`, so a resumed step reports
/// the setting the host had before the step, not the one its first attempt wrote.
fn power_management(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "host")?;
    let want = args
        .get("enabled")
        .and_then(Value::as_bool)
        .ok_or_else(|| ActError("missing boolean argument \"enabled\"".into()))?;
    let api = api::Api::connect(ctx)?;
    let (h, id) = api_host(&api, args)?;
    // The setting before this step, as the first attempt saw it: a resumed step would see its
    // own change and report that as the setting to restore.
    ctx.note(
        "previous",
        json!(h["power_management"]["enabled"] == "true"),
    )?;
    let previous = ctx
        .noted("previous")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let now = h["power_management"]["enabled"] == "true";
    if now != want {
        let body =
            format!("<host><power_management><enabled>{want}</enabled></power_management></host>");
        (ctx.output)(format!("PUT hosts/{id} {body}"));
        let r = api.call("PUT", &format!("/hosts/{id}"), &body)?;
        let now = r.json()["power_management"]["enabled"] == "true";
        if r.code != 200 || now != want {
            return Err(ActError(format!(
                "setting power management of host {name} to {want} failed: HTTP {}: {}",
                r.code,
                r.fault()
            )));
        }
    }
    Ok(json!({
        "message": if now == want {
            format!("power management of {name} already {}", if want { "enabled" } else { "disabled" })
        } else {
            format!("power management of {name} {}", if want { "enabled" } else { "disabled" })
        },
        "host_id": id,
        "previous": previous,
        "enabled": want,
    }))
}

/// `major.minor.build` of a `product_info.version` (`build` and `revision` may be absent).
fn version_triple(v: &Value) -> Option<(u32, u32, u32)> {
    let n = |k: &str| -> Option<u32> {
        match &v[k] {
            Value::String(s) => s.parse().ok(),
            Value::Number(x) => x.as_u64().and_then(|x| u32::try_from(x).ok()),
            _ => None,
        }
    };
    Some((n("major")?, n("minor")?, n("build").unwrap_or(0)))
}

/// Engines from 4.5.1 accept Enroll Certificate for a NonResponsive host.
const ENROLL_NON_RESPONSIVE_SINCE: (u32, u32, u32) = (4, 5, 1);

fn engine_version(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let api = api::Api::connect(ctx)?;
    let root = api.get("")?;
    let v = &root["product_info"]["version"];
    let (major, minor, build) = version_triple(v).ok_or_else(|| {
        ActError(format!(
            "GET /ovirt-engine/api: no product_info version in the answer ({})",
            root["product_info"]
        ))
    })?;
    let full = v["full_version"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{major}.{minor}.{build}"));
    let direct = (major, minor, build) >= ENROLL_NON_RESPONSIVE_SINCE;
    Ok(json!({
        "message": format!(
            "engine {full}: {}",
            if direct {
                "enrolls NonResponsive hosts directly"
            } else {
                "Enroll Certificate needs maintenance (before 4.5.1)"
            }
        ),
        "version": format!("{major}.{minor}.{build}"),
        "full_version": full,
        "enroll_non_responsive": direct,
    }))
}

/// `ovirt.host_maintenance` (see the module table).
///
/// Idempotent by construction: the engine's host status is read first; a host already in
/// maintenance (or preparing for it) is not deactivated again, so a resumed step waits.
fn host_maintenance(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "host")?;
    let direct = args
        .get("enroll_non_responsive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let api = api::Api::connect(ctx)?;
    let (h, id) = api_host(&api, args)?;
    let st = h["status"].as_str().unwrap_or_default();
    if st == "non_responsive" && direct {
        return Ok(json!({
            "message": format!("host {name} is non_responsive; this engine enrolls it without maintenance"),
            "host_id": id,
            "was": st,
            "skipped": true,
        }));
    }
    if st != "maintenance" {
        if st != "preparing_for_maintenance" {
            action_ok(&api, name, &id, "deactivate").map_err(|e| {
                if st == "non_responsive" {
                    ActError(format!(
                        "{e}; host {name} is non_responsive and this engine (before 4.5.1) cannot enroll it without maintenance: renew it out of band with recipe ovirt-hosts-offline"
                    ))
                } else {
                    e
                }
            })?;
        }
        // Right after the POST the status may still read `up` (A10).
        wait_status(ctx, &api, name, &id, "maintenance", &|s| {
            matches!(s, "up" | "preparing_for_maintenance")
        })?;
    }
    Ok(json!({"message": format!("host {name} is in maintenance"), "host_id": id, "was": st}))
}

fn max_event_id(api: &api::Api) -> Result<u64, ActError> {
    Ok(api.get("/events")?["event"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().and_then(|i| i.parse().ok()))
        .max()
        .unwrap_or(0))
}

/// `ovirt.enroll_certificate` (see the module table).
///
/// Idempotent by construction: the engine's last event id is noted in the intent journal
/// before the `POST`, and `posted` right after the engine accepted it. A resumed step never
/// posts again once `posted` is noted: it follows the enrollment to its end (881/882 after
/// that id, or `installing` then `maintenance`), even when the engine shows no sign of it yet
/// (the A10 race). Without `posted` (the agent died between sending the `POST` and reading
/// the answer), an enrollment event for this host after that id, or the host `installing`,
/// means the request was taken and it is followed ([`follow_enrollment`]); neither is refused
/// (interrupted, needs operator), since a request the engine has not acted on yet cannot be
/// told from one never sent.
fn enroll_certificate(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "host")?;
    let api = api::Api::connect(ctx)?;
    let (h, id) = api_host(&api, args)?;
    let st = h["status"].as_str().unwrap_or_default().to_owned();
    let direct = args
        .get("enroll_non_responsive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let from_non_responsive = st == "non_responsive" && direct;
    let resumed_since = if ctx.resumed() {
        ctx.noted("events_since").and_then(|v| v.as_u64())
    } else {
        None
    };
    if let Some(since) = resumed_since {
        if ctx.noted("posted").is_some() {
            (ctx.output)(format!(
                "the interrupted attempt's Enroll Certificate of {name} was accepted by the engine (host {st}); following it without posting again"
            ));
            return wait_enrollment(
                ctx,
                &api,
                name,
                &id,
                since,
                &st,
                from_non_responsive,
                st == "installing",
            );
        }
        return follow_enrollment(ctx, &api, name, &id, since, &st, from_non_responsive);
    }
    if st != "maintenance" && !from_non_responsive {
        return Err(ActError(format!(
            "host {name} is {st}: Enroll Certificate needs maintenance first{}",
            if st == "non_responsive" {
                " (engines before 4.5.1 cannot enroll a non_responsive host)"
            } else {
                ""
            }
        )));
    }
    let since = max_event_id(&api)?;
    ctx.note("events_since", json!(since))?;
    ctx.crash_point("before-enroll");
    action_ok(&api, name, &id, "enrollcertificate")
        .map_err(|e| ActError(format!("{e}; host {name} stays in maintenance")))?;
    // The engine took the request: a resumed step follows it and never posts again, even
    // when the engine has not shown any sign of it yet (A10: the status still reads
    // `maintenance` right after the POST).
    ctx.note("posted", json!(true))?;
    ctx.crash_point("after-enroll");
    (ctx.output)(format!(
        "enrollcertificate accepted for {name}; waiting (events after {since})"
    ));
    wait_enrollment(ctx, &api, name, &id, since, &st, from_non_responsive, false)
}

/// A resumed `ovirt.enroll_certificate` whose first attempt noted the last event id before its
/// `POST`: the engine's events after it (881 done / 882 failed for this host) or the host
/// `installing` say the enrollment was started, and it is followed to its end without a second
/// `POST`. Neither (the host still in maintenance, no event) cannot tell a `POST` that never
/// went out from one the engine has not acted on yet: refused.
fn follow_enrollment(
    ctx: &ActContext<'_>,
    api: &api::Api,
    name: &str,
    id: &str,
    since: u64,
    st: &str,
    from_non_responsive: bool,
) -> Result<Value, ActError> {
    let events = api.get(&format!("/events?from={since}"))?;
    let started = events["event"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["host"]["id"] == id && (e["code"] == "881" || e["code"] == "882"));
    if !started && st != "installing" {
        return Err(ActError(format!(
            "Enroll Certificate of host {name} was interrupted: the engine logged no enrollment \
             event after event {since} and the host is {st}, so whether the request reached the \
             engine is unknown; interrupted, needs operator (check the host's events, then \
             re-plan)"
        )));
    }
    (ctx.output)(format!(
        "the interrupted attempt started Enroll Certificate of {name} (events after {since}, host {st}); following it"
    ));
    wait_enrollment(
        ctx,
        api,
        name,
        id,
        since,
        st,
        from_non_responsive,
        st == "installing",
    )
}

/// Polls the host and the engine's events after `since` until the enrollment ends.
#[allow(clippy::too_many_arguments)]
fn wait_enrollment(
    ctx: &ActContext<'_>,
    api: &api::Api,
    name: &str,
    id: &str,
    since: u64,
    from: &str,
    from_non_responsive: bool,
    seen_installing: bool,
) -> Result<Value, ActError> {
    let st = from.to_owned();
    let id = id.to_owned();
    let deadline = Instant::now() + ctx.timeout;
    let mut seen_installing = seen_installing;
    let mut last = String::new();
    loop {
        let st = api.status(&id)?;
        if st != last {
            (ctx.output)(format!("host {name}: {st}"));
            last = st.clone();
        }
        seen_installing |= st == "installing";
        let events = api.get(&format!("/events?from={since}"))?;
        let mine = events["event"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["host"]["id"] == id.as_str())
            .find(|e| e["code"] == "881" || e["code"] == "882");
        if let Some(e) = mine {
            let desc = e["description"].as_str().unwrap_or_default();
            (ctx.output)(format!(
                "event {}: {desc}",
                e["code"].as_str().unwrap_or("")
            ));
            if e["code"] == "882" {
                return Err(ActError(format!(
                    "enrolling the certificate of host {name} failed: {desc}"
                )));
            }
            if st == "maintenance" {
                break;
            }
        } else if st == "install_failed" {
            return Err(ActError(format!(
                "enrolling the certificate of host {name} failed: status install_failed"
            )));
        } else if seen_installing && st == "maintenance" {
            break;
        } else if !(matches!(st.as_str(), "maintenance" | "installing")
            || (from_non_responsive && !seen_installing && st == "non_responsive"))
        {
            return Err(ActError(format!(
                "host {name} went to {st} during Enroll Certificate"
            )));
        }
        if Instant::now() >= deadline {
            return Err(ActError(format!(
                "Enroll Certificate of host {name} not finished after {}s (status {st})",
                ctx.timeout.as_secs()
            )));
        }
        std::thread::sleep(api.poll);
    }
    Ok(
        json!({"message": format!("certificate of host {name} enrolled (from {st}); host in maintenance"), "host_id": id, "from": st}),
    )
}

/// `ovirt.host_activate` (see the module table).
///
/// Idempotent by construction: a host already `up` is not activated again; a resumed step
/// finds the host where the first attempt left it and waits for `up`.
fn host_activate(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "host")?;
    let api = api::Api::connect(ctx)?;
    let (h, id) = api_host(&api, args)?;
    if h["status"] != "up" {
        action_ok(&api, name, &id, "activate")?;
        wait_status(ctx, &api, name, &id, "up", &|s| !FAILED_STATES.contains(&s))?;
    }
    Ok(json!({"message": format!("host {name} is up"), "host_id": id}))
}

fn verify_host_certs(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    const CERT: &str = "/etc/pki/vdsm/certs/vdsmcert.pem";
    const KEY: &str = "/etc/pki/vdsm/keys/vdsmkey.pem";
    const CA: &str = "/etc/pki/vdsm/certs/cacert.pem";
    const COPIES: &[&str] = &[
        "/etc/pki/vdsm/libvirt-spice/server-cert.pem",
        "/etc/pki/vdsm/libvirt-vnc/server-cert.pem",
        "/etc/pki/libvirt/clientcert.pem",
    ];
    let old_fp = args
        .get("old_fingerprint")
        .and_then(Value::as_str)
        .unwrap_or("");
    let old_na = args
        .get("old_not_after")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let cert = ctx.cfg.host_path(CERT);
    let pem = std::fs::read(&cert).map_err(|e| ActError(format!("{CERT}: {e}")))?;
    let der = certfleet_common::pem::first_certificate(&pem)
        .map_err(|e| ActError(format!("{CERT}: {e}")))?;
    let rec =
        certfleet_common::x509::parse_der(&der).map_err(|e| ActError(format!("{CERT}: {e}")))?;
    let now = certfleet_common::model::now();
    if rec.fingerprint_sha256.eq_ignore_ascii_case(old_fp) {
        return Err(ActError(format!(
            "{CERT} was not replaced (still fingerprint {old_fp})"
        )));
    }
    if rec.not_after <= old_na.max(now) || rec.not_before > now {
        return Err(ActError(format!(
            "{CERT} is not valid now or not later than before (notAfter {})",
            certfleet_common::model::format_time(rec.not_after)
        )));
    }
    let o = openssl(ctx);
    super::generic::key_matches(ctx, &ctx.cfg.host_path(KEY), &cert)?;
    ctx.run_ok(
        &o,
        &[
            "verify",
            "-CAfile",
            &ctx.cfg.host_path(CA).display().to_string(),
            &cert.display().to_string(),
        ],
        None,
    )?;
    for copy in COPIES {
        let p = ctx.cfg.host_path(copy);
        if p.exists() && std::fs::read(&p).map_err(|e| ActError(format!("{copy}: {e}")))? != pem {
            return Err(ActError(format!("{copy} differs from {CERT}")));
        }
    }
    // The serial console's host certificate, when the host has one.
    let ssh = ctx
        .cfg
        .host_path("/etc/pki/ovirt-vmconsole/host-ssh_host_rsa-cert.pub");
    let mut vmconsole = String::new();
    if ssh.exists() {
        let text = std::fs::read_to_string(&ssh)
            .map_err(|e| ActError(format!("{}: {e}", ssh.display())))?;
        let c = crate::collect::ovirt_engine::openssh::parse(&text)
            .map_err(|e| ActError(format!("{}: {e}", ssh.display())))?;
        let until = i64::try_from(c.valid_before).unwrap_or(i64::MAX);
        let old = args
            .get("old_vmconsole_not_after")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if until <= old.max(now) || !c.host {
            return Err(ActError(format!(
                "{} was not renewed (valid before {}, before: {})",
                ssh.display(),
                certfleet_common::model::format_time(until),
                certfleet_common::model::format_time(old)
            )));
        }
        vmconsole = format!(
            "; vmconsole host certificate until {}",
            certfleet_common::model::format_time(until)
        );
    }
    Ok(json!({
        "message": format!(
            "{CERT} renewed: serial {} until {}, chains to cacert.pem, copies identical{vmconsole}",
            rec.serial,
            certfleet_common::model::format_time(rec.not_after)
        ),
        "fingerprint": rec.fingerprint_sha256,
        "not_after": rec.not_after,
    }))
}

/// `ovirt.global_maintenance` (see the module table).
///
/// Idempotent by construction: `hosted-engine --set-maintenance --mode=…` sets a state, so
/// setting it again leaves the cluster as one run does, and the state is read back each time.
fn global_maintenance(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let mode = arg_str(args, "mode")?;
    if !matches!(mode, "global" | "none") {
        return Err(ActError(format!(
            "maintenance mode {mode:?}: global or none"
        )));
    }
    let tool = ctx.cfg.tool("hosted-engine", "/usr/sbin/hosted-engine");
    if !tool.exists() {
        return Err(ActError(format!(
            "{} is missing: this is not a hosted-engine host",
            ctx.cfg.shown(&tool)
        )));
    }
    ctx.run_ok(
        &tool,
        &["--set-maintenance", &format!("--mode={mode}")],
        None,
    )?;
    let out = ctx.run_ok(&tool, &["--vm-status", "--json"], None)?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| ActError(format!("hosted-engine --vm-status --json: not JSON ({e})")))?;
    let want = mode == "global";
    if v["global_maintenance"].as_bool() != Some(want) {
        return Err(ActError(format!(
            "hosted-engine --vm-status --json reports global_maintenance={} after --mode={mode}",
            v["global_maintenance"]
        )));
    }
    Ok(
        json!({"message": format!("global maintenance {}", if want { "on" } else { "off" }), "global_maintenance": want}),
    )
}

/// engine-setup's `_COMMON_ENTITIES` (A5), then what its vmconsole plugin refreshes
/// (`vmconsole_proxy_helper/pki.py`).
const ENGINE_ENTITIES: &[&str] = &[
    "engine",
    "jboss",
    "websocket-proxy",
    "apache",
    "reports",
    "vmconsole-proxy-helper",
    "vmconsole-proxy-host",
    "vmconsole-proxy-user",
];

/// Every regular file under `dir` (symlinks are left alone: they point into the same tree).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ActError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ActError(format!("{}: {e}", dir.display())))?;
    for e in rd {
        let e = e.map_err(|e| ActError(format!("{}: {e}", dir.display())))?;
        let ft = e
            .file_type()
            .map_err(|x| ActError(format!("{}: {x}", e.path().display())))?;
        if ft.is_dir() {
            files_under(&e.path(), out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn cert_rec(path: &Path) -> Result<certfleet_common::model::CertRecord, ActError> {
    let pem = std::fs::read(path).map_err(|e| ActError(format!("{}: {e}", path.display())))?;
    let der = certfleet_common::pem::first_certificate(&pem)
        .map_err(|e| ActError(format!("{}: {e}", path.display())))?;
    certfleet_common::x509::parse_der(&der)
        .map_err(|e| ActError(format!("{}: {e}", path.display())))
}

/// Waits (up to the step's timeout) while a process whose command line holds `arg` lives: an
/// `engine-setup` an interrupted attempt started (`/proc/<pid>/cmdline`, NUL-separated).
fn wait_while_running(ctx: &ActContext<'_>, arg: &str) -> Result<(), ActError> {
    let running = || -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let pids = running();
        if pids.is_empty() {
            return Ok(());
        }
        if !said {
            (ctx.output)(format!(
                "the interrupted attempt's engine-setup is still running (pid {pids:?}); \
                 waiting for it to end"
            ));
            said = true;
        }
        if start.elapsed() >= ctx.timeout {
            return Err(ActError(format!(
                "the engine-setup the interrupted attempt started (pid {pids:?}) still runs \
                 after {}s; not starting a second one: needs operator",
                start.elapsed().as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether a file of backup `m` differs now from what the backup recorded (content, or
/// existence).
fn pki_changed_since(m: &backup::Manifest) -> Result<bool, ActError> {
    for f in &m.files {
        let now = match std::fs::read(&f.path) {
            Ok(b) => Some(certfleet_common::pki::sha256_hex(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ActError(format!("{}: {e}", f.path.display()))),
        };
        let then = f.existed.then(|| f.sha256.clone());
        if now != then {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The engine's CA files (`pki-common.sh` `--ca-file`): the engine CA and the QEMU CA.
const ENGINE_CA_FILES: &[&str] = &["ca.pem", "qemu-ca.pem"];

/// SHA-256 fingerprint of the CA file `rel` in the engine PKI, if readable.
fn ca_fingerprint(pki: &Path, rel: &str) -> Option<String> {
    cert_rec(&pki.join(rel)).ok().map(|r| r.fingerprint_sha256)
}

/// `ovirt.engine_setup` (see the module table).
///
/// Idempotent by construction (resumed after an agent crash, see [`super::intent`]):
/// `engine-setup` runs for minutes and keeps its own transaction (it rolls the PKI back itself
/// when it fails), and the agent's unit kills only the agent (`KillMode=process`), so a run
/// started by an attempt that died goes on without it. The fingerprints of the engine
/// certificates and CAs are noted before anything changes, and the start of `engine-setup` is
/// noted before it runs. A resumed step whose earlier attempt started it first waits while a
/// process with this step's `--config-append=` answer file lives (`/proc/*/cmdline`), then
/// judges from the files against the step's backup (taken once, before the first run): an
/// engine PKI as it was means that run did nothing or rolled back, and `engine-setup` runs
/// (again); a changed one is checked like a finished run (every certificate valid, chaining,
/// consistent) and reported against the noted fingerprints, never run a second time. A
/// changed PKI that fails the checks is a failure naming the backup to restore.
fn engine_setup(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let pki = engine_pki(ctx);
    let cas_now: Vec<Option<String>> = ENGINE_CA_FILES
        .iter()
        .map(|f| ca_fingerprint(&pki, f))
        .collect();
    let before_now: Vec<(String, String)> = ENGINE_ENTITIES
        .iter()
        .filter_map(|n| {
            cert_rec(&pki.join(format!("certs/{n}.cer")))
                .ok()
                .map(|r| (n.to_string(), r.fingerprint_sha256))
        })
        .collect();
    // First writer wins: a resumed attempt compares with the PKI from before any run.
    ctx.note(
        "engine_pki_before",
        json!({"cas": cas_now, "certs": before_now}),
    )?;
    let noted = ctx.noted("engine_pki_before").unwrap_or_default();
    let cas_before: Vec<Option<String>> =
        serde_json::from_value(noted["cas"].clone()).unwrap_or(cas_now);
    let before: Vec<(String, String)> =
        serde_json::from_value(noted["certs"].clone()).unwrap_or(before_now);
    if before.is_empty() {
        return Err(ActError(format!(
            "no engine certificates under {}",
            pki.display()
        )));
    }
    let mut files = Vec::new();
    files_under(&pki, &mut files)?;
    // engine-setup's vmconsole plugin rewrites the proxy's keys and certificates there.
    let vmconsole = ctx.cfg.host_path("/etc/pki/ovirt-vmconsole");
    if vmconsole.is_dir() {
        files_under(&vmconsole, &mut files)?;
    }
    // A resumed step keeps the backup of its first attempt (the PKI before any run), whose
    // file list engine-setup may have grown since.
    let m = match backup::find(ctx.state, ctx.step_id).filter(|_| ctx.resumed()) {
        Some(m) => m,
        None => backup::create(ctx.state, ctx.step_id, &files)?,
    };
    (ctx.output)(format!(
        "backup {} holds {} files of {}",
        m.id,
        m.files.len(),
        ctx.cfg.shown(&pki)
    ));
    let mut answers = String::from(
        "[environment:default]\nOVESETUP_PKI/renew=bool:True\nQUESTION/1/OVESETUP_SKIP_RENEW_PKI_CONFIRM=str:no\n",
    );
    if args.get("hosted_engine").and_then(Value::as_bool) == Some(true) {
        // Only after the previous step verified global maintenance itself (A6 2).
        answers.push_str("OVESETUP_CONFIG/continueSetupOnHEVM=bool:True\n");
    }
    let answer_file = ctx.cfg.host_path("/root/certfleet-renew-pki.conf");
    if let Some(dir) = answer_file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ActError(format!("creating {}: {e}", dir.display())))?;
    }
    certfleet_common::atomic::write_file(&answer_file, answers.as_bytes(), 0o600)
        .map_err(|e| ActError(format!("writing the answer file: {e}")))?;
    let tool = ctx.cfg.tool("engine-setup", "/usr/bin/engine-setup");
    let append = format!("--config-append={}", answer_file.display());
    // engine-setup writes to a file, not to a pipe of the agent: if the agent dies, the run
    // goes on (a broken pipe would kill it at its next line) and its output stays readable.
    let setup_log = ctx.state.path().join(format!(
        "engine-setup-{}.log",
        ctx.step_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    ));
    let mut earlier_run = false;
    if ctx.resumed() && ctx.noted("engine-setup-started").is_some() {
        wait_while_running(ctx, &append)?;
        if let Ok(text) = std::fs::read_to_string(&setup_log) {
            (ctx.output)("output of the interrupted attempt's engine-setup (last lines):".into());
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(20)..] {
                (ctx.output)(format!("  {l}"));
            }
        }
        if pki_changed_since(&m)? {
            (ctx.output)(format!(
                "the interrupted attempt's engine-setup changed the engine PKI (backup {}); \
                 checking what it left instead of running it again",
                m.id
            ));
            earlier_run = true;
        } else {
            (ctx.output)(
                "the interrupted attempt's engine-setup left the engine PKI as it was (it did \
                 not get to it, or rolled back): running engine-setup"
                    .into(),
            );
        }
    }
    let out = if earlier_run {
        None
    } else {
        ctx.note(
            "engine-setup-started",
            json!(certfleet_common::model::now()),
        )?;
        let args = ["--offline", "--accept-defaults", append.as_str()];
        (ctx.output)(format!(
            "$ {}  (output in {})",
            crate::exec::command_line(&tool, &args),
            setup_log.display()
        ));
        // The log holds what engine-setup said before it failed or was killed.
        let out = crate::exec::run_to_file(&tool, &args, &setup_log, ctx.timeout).map_err(|e| {
            ActError(format!(
                "engine-setup: {e} (its output: {})",
                setup_log.display()
            ))
        })?;
        ctx.crash_point("after-engine-setup");
        Some(out)
    };
    if let Some(out) = &out {
        for l in out.stdout.lines().chain(out.stderr.lines()) {
            (ctx.output)(l.to_owned());
        }
    }
    if let Some(out) = out.filter(|out| {
        out.code != Some(0)
            || !out
                .stdout
                .contains("Execution of setup completed successfully")
    }) {
        let err = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.contains("[ ERROR ]"))
            .unwrap_or("no error line")
            .trim()
            .to_owned();
        let e = ActError(format!(
            "engine-setup --offline failed (exit {:?}): {err}",
            out.code
        ));
        // Whatever it changed before failing goes back to the files of before.
        return Err(match backup::restore(ctx.state, &m.id) {
            Ok(_) => ActError(format!("{e} (engine PKI restored from backup {})", m.id)),
            Err(r) => ActError(format!("{e}; restoring backup {} failed: {r}", m.id)),
        });
    }
    let renewed: Vec<String> = before
        .iter()
        .filter(|(n, fp)| {
            cert_rec(&pki.join(format!("certs/{n}.cer")))
                .map(|r| &r.fingerprint_sha256 != fp)
                .unwrap_or(false)
        })
        .map(|(n, _)| n.clone())
        .collect();
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    check_engine_certs(ctx, &names, 0).map_err(|e| {
        if earlier_run {
            ActError(format!(
                "{e}: the engine PKI as the interrupted attempt's engine-setup left it fails \
                 the checks; read /var/log/ovirt-engine/setup/, then restore backup {} \
                 (certfleet-agent backups) or run engine-setup by hand",
                m.id
            ))
        } else {
            e
        }
    })?;
    // `pki-create-ca.sh --renew` keeps key and subject; hosts hold copies of the old file
    // ("please refresh manually distributed copies"): hand the new files to the next steps.
    let mut ca_renewed = Vec::new();
    for (f, fp) in ENGINE_CA_FILES.iter().zip(&cas_before) {
        let now_fp = ca_fingerprint(&pki, f);
        if now_fp.is_some() && &now_fp != fp {
            ca_renewed.push(f.to_string());
        }
    }
    let read_ca = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap_or_default();
    let mut message = if renewed.is_empty() {
        "engine-setup ran; no engine certificate was due".to_owned()
    } else {
        format!("engine-setup renewed {}", renewed.join(", "))
    };
    if !ca_renewed.is_empty() {
        message.push_str(&format!("; CA renewed: {}", ca_renewed.join(", ")));
    }
    Ok(json!({
        "message": message,
        "renewed": renewed,
        "ca_renewed": ca_renewed,
        "ca_pem": read_ca("ca.pem"),
        "qemu_ca_pem": read_ca("qemu-ca.pem"),
        "backup_id": m.id,
        "restart": ["ovirt-engine", "httpd", "ovirt-imageio", "ovirt-websocket-proxy"],
    }))
}

/// Checks engine entity certificates; returns `name: notAfter` lines.
fn check_engine_certs(
    ctx: &ActContext<'_>,
    names: &[&str],
    min_days: i64,
) -> Result<Vec<String>, ActError> {
    let pki = engine_pki(ctx);
    let o = openssl(ctx);
    let now = certfleet_common::model::now();
    let mut lines = Vec::new();
    for n in names {
        let cer = format!("certs/{n}.cer");
        let rec = cert_rec(&pki.join(&cer))?;
        ctx.run_ok_in(&o, &["verify", "-CAfile", "ca.pem", &cer], None, Some(&pki))?;
        if rec.not_after - now <= min_days * 86_400 {
            return Err(ActError(format!(
                "{cer} expires {} (within {min_days} days)",
                certfleet_common::model::format_time(rec.not_after)
            )));
        }
        let nopass = pki.join(format!("keys/{n}.key.nopass"));
        if nopass.exists() {
            let k = ctx.run_ok(
                &o,
                &["pkey", "-in", &nopass.display().to_string(), "-pubout"],
                None,
            )?;
            let c = ctx.run_ok_in(
                &o,
                &["x509", "-in", &cer, "-noout", "-pubkey"],
                None,
                Some(&pki),
            )?;
            if k.stdout.trim() != c.stdout.trim() {
                return Err(ActError(format!(
                    "{cer} does not match keys/{n}.key.nopass"
                )));
            }
        }
        lines.push(format!(
            "{n}: until {}{}",
            certfleet_common::model::format_time(rec.not_after),
            if rec.sans.is_empty() { " (no SAN)" } else { "" }
        ));
        // The OpenSSH twin of a vmconsole proxy certificate (`pki-enroll-openssh-cert.sh`)
        // and its copy in /etc/pki/ovirt-vmconsole.
        let ssh = pki.join(format!("certs/{n}-cert.pub"));
        if ssh.exists() {
            let text = std::fs::read_to_string(&ssh)
                .map_err(|e| ActError(format!("{}: {e}", ssh.display())))?;
            let c = crate::collect::ovirt_engine::openssh::parse(&text)
                .map_err(|e| ActError(format!("{}: {e}", ssh.display())))?;
            let until = i64::try_from(c.valid_before).unwrap_or(i64::MAX);
            if until - now <= min_days * 86_400 {
                return Err(ActError(format!(
                    "certs/{n}-cert.pub expires {} (within {min_days} days)",
                    certfleet_common::model::format_time(until)
                )));
            }
            if let Some(suffix) = n.strip_prefix("vmconsole-proxy-") {
                let copy = ctx.cfg.host_path(format!(
                    "/etc/pki/ovirt-vmconsole/proxy-ssh_{suffix}_rsa-cert.pub"
                ));
                if copy.exists()
                    && std::fs::read_to_string(&copy)
                        .map_err(|e| ActError(format!("{}: {e}", copy.display())))?
                        != text
                {
                    return Err(ActError(format!(
                        "{} differs from certs/{n}-cert.pub",
                        copy.display()
                    )));
                }
            }
            lines.push(format!(
                "{n}-cert.pub: until {}",
                certfleet_common::model::format_time(until)
            ));
        }
    }
    Ok(lines)
}

fn engine_verify(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let names: Vec<&str> = args
        .get("names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let min_days = args.get("min_days").and_then(Value::as_i64).unwrap_or(60);
    let lines = check_engine_certs(ctx, &names, min_days)?;
    for l in &lines {
        (ctx.output)(l.clone());
    }
    Ok(json!({"message": format!("verified {}", lines.join("; "))}))
}

/// Where the host-deploy roles put copies of the engine CA (`ovirt-host-deploy-vdsm-certificates`
/// "Add vdsm cacert files", `…-vnc-certificates`, `…-ovn-certificates`), relative to the VDSM
/// PKI unless absolute, each with the leaf that must chain to it.
const HOST_ENGINE_CA_COPIES: &[(&str, &str)] = &[
    ("certs/cacert.pem", "certs/vdsmcert.pem"),
    ("libvirt-spice/ca-cert.pem", "libvirt-spice/server-cert.pem"),
    ("libvirt-vnc/ca-cert.pem", "libvirt-vnc/server-cert.pem"),
    ("/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/clientcert.pem"),
    ("ovn/ca-cert.pem", "ovn/ovn-cert.pem"),
];
/// The QEMU CA copy ("Add QEMU cacert file") and its leaf.
const HOST_QEMU_CA_COPIES: &[(&str, &str)] = &[(
    "libvirt-migrate/ca-cert.pem",
    "libvirt-migrate/server-cert.pem",
)];

fn vdsm_path(ctx: &ActContext<'_>, rel: &str) -> PathBuf {
    if rel.starts_with('/') {
        ctx.cfg.host_path(rel)
    } else {
        ctx.cfg
            .host_path(ctx.cfg.setting("ovirt.vdsm_pki").unwrap_or("/etc/pki/vdsm"))
            .join(rel)
    }
}

/// `ovirt.refresh_host_ca` (see the module table).
///
/// Idempotent by construction: the copies to change are backed up once, before the first
/// write, and a resumed step keeps that backup (the copies as they were before the step) and
/// takes its list of copies from it; a copy already holding the new CA is not written again.
/// The restart is noted in the intent journal once it ran, so a resumed step does not restart
/// again (it may repeat if the agent died between the restart and the note); every leaf is
/// verified again.
fn refresh_host_ca(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let units: Vec<String> = match args.get("restart").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None => vec!["libvirtd".into(), "vdsmd".into()],
    };
    // (copy, leaf, new CA DER, new CA PEM) for every copy this host has.
    let mut plan = Vec::new();
    for (arg, copies) in [
        ("ca_pem", HOST_ENGINE_CA_COPIES),
        ("qemu_ca_pem", HOST_QEMU_CA_COPIES),
    ] {
        let Some(pem) = args
            .get(arg)
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        let der = certfleet_common::pem::first_certificate(pem.as_bytes())
            .map_err(|e| ActError(format!("argument {arg}: {e}")))?;
        let new = certfleet_common::x509::parse_der(&der)
            .map_err(|e| ActError(format!("argument {arg}: {e}")))?;
        if !new.is_ca {
            return Err(ActError(format!(
                "argument {arg}: {} is not a CA",
                new.subject
            )));
        }
        // The engine's file as it is (what the host-deploy roles copy), one certificate.
        if pem.matches("BEGIN CERTIFICATE").count() != 1 {
            return Err(ActError(format!(
                "argument {arg}: expected exactly one PEM certificate"
            )));
        }
        let body = if pem.ends_with('\n') {
            pem.to_owned()
        } else {
            format!("{pem}\n")
        };
        for (copy, leaf) in copies {
            let p = vdsm_path(ctx, copy);
            if !p.exists() {
                continue;
            }
            let old = cert_rec(&p)?;
            // A renewal keeps the CA's subject and key; anything else is a different CA,
            // which would leave every host certificate unverifiable.
            if old.subject != new.subject || old.subject_key_id != new.subject_key_id {
                return Err(ActError(format!(
                    "{}: refusing to replace CA {:?} (key id {}) with a different CA {:?} (key id {})",
                    p.display(),
                    old.subject,
                    old.subject_key_id,
                    new.subject,
                    new.subject_key_id
                )));
            }
            let changed = old.fingerprint_sha256 != new.fingerprint_sha256;
            plan.push((
                p,
                vdsm_path(ctx, leaf),
                changed,
                body.clone(),
                new.not_after,
            ));
        }
    }
    if plan.is_empty() {
        return Err(ActError(
            "no CA copy of the host-deploy layout exists on this host (or no CA given)".into(),
        ));
    }
    // A resumed step takes the copies its interrupted attempt backed up (and may already have
    // replaced): they still need the check and the restart, and the backup keeps them as they
    // were before the step.
    let earlier = ctx
        .resumed()
        .then(|| backup::find(ctx.state, ctx.step_id))
        .flatten();
    let todo: Vec<PathBuf> = match &earlier {
        Some(m) => m.files.iter().map(|f| f.path.clone()).collect(),
        None => plan
            .iter()
            .filter(|(_, _, changed, _, _)| *changed)
            .map(|(p, ..)| p.clone())
            .collect(),
    };
    if todo.is_empty() {
        return Ok(json!({
            "message": format!("all {} CA copies already current", plan.len()),
            "changed": [],
        }));
    }
    let m = backup::create(ctx.state, ctx.step_id, &todo)?;
    (ctx.output)(format!("backup {} holds {} CA copies", m.id, todo.len()));
    ctx.crash_point("after-backup");
    let o = openssl(ctx);
    let attempt = (|| -> Result<(), ActError> {
        for (p, _, changed, body, _) in &plan {
            if *changed {
                backup::install(p, body.as_bytes(), 0o644, None)?;
                (ctx.output)(format!("refreshed {}", ctx.cfg.shown(p)));
                ctx.crash_point("after-replace");
            } else if todo.contains(p) {
                (ctx.output)(format!(
                    "{} already holds the new CA (interrupted attempt)",
                    ctx.cfg.shown(p)
                ));
            }
        }
        for (p, leaf, _, _, not_after) in &plan {
            if cert_rec(p)?.not_after != *not_after {
                return Err(ActError(format!(
                    "{} does not hold the new CA",
                    p.display()
                )));
            }
            if leaf.exists() {
                ctx.run_ok(
                    &o,
                    &[
                        "verify",
                        "-CAfile",
                        &p.display().to_string(),
                        &leaf.display().to_string(),
                    ],
                    None,
                )?;
            }
        }
        if !units.is_empty() {
            super::generic::restart_once(ctx, &units)?;
        }
        Ok(())
    })();
    if let Err(e) = attempt {
        let restored = backup::restore(ctx.state, &m.id);
        if !units.is_empty() {
            let _ = super::generic::restart(ctx, &units);
        }
        return Err(match restored {
            Ok(_) => ActError(format!("{e} (CA copies restored from backup {})", m.id)),
            Err(r) => ActError(format!("{e}; ROLLBACK FAILED: {r} (backup {})", m.id)),
        });
    }
    let shown: Vec<String> = todo.iter().map(|p| ctx.cfg.shown(p)).collect();
    Ok(json!({
        "message": format!(
            "refreshed {} CA copies ({}); every leaf verifies; restarted {}",
            todo.len(),
            shown.join(", "),
            units.join(", ")
        ),
        "changed": shown,
        "backup_id": m.id,
    }))
}

/// `ovirt.engine_reissue` (see the module table).
///
/// Idempotent by construction. The four files (`certs/<name>.cer`, `keys/<name>.p12`,
/// `keys/<name>.key.nopass`, `requests/<name>.req`) are backed up once, before anything
/// changes, and a resumed step keeps that backup ([`backup::create`]). The key (`--keep-key`)
/// is always taken from the backup's copy of the `.p12`, never from the file on disk, so an
/// attempt cut while replacing the `.p12` cannot lose it. The signing is
/// `ovirt.enroll_request`'s: the length of `database.txt` is noted before `openssl ca`, and a
/// resumed step returns the certificate the database lists for this key since then instead of
/// signing again (never two certificates for one step). The new `.p12` is exported to a
/// private temporary file and renamed over the old one, `key.nopass` written atomically: a
/// resumed step writes the same certificate and key again.
fn engine_reissue(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let name = arg_str(args, "name")?;
    let subject = arg_str(args, "subject")?;
    let san = arg_str(args, "san")?;
    if !certfleet_common::identity::valid_name(name) {
        return Err(ActError(format!(
            "entity name {name:?} is not a plain file name"
        )));
    }
    let pki = engine_pki(ctx);
    let rel = |s: &str| pki.join(s);
    let (cer, p12, nopass, req) = (
        format!("certs/{name}.cer"),
        format!("keys/{name}.p12"),
        format!("keys/{name}.key.nopass"),
        format!("requests/{name}.req"),
    );
    if !rel(&p12).exists() && backup::find(ctx.state, ctx.step_id).is_none() {
        return Err(ActError(format!(
            "{} is missing: nothing to keep the key from",
            rel(&p12).display()
        )));
    }
    let m = backup::create(
        ctx.state,
        ctx.step_id,
        &[rel(&cer), rel(&p12), rel(&nopass), rel(&req)],
    )?;
    (ctx.output)(format!(
        "backup {} holds {cer}, {p12}, {nopass}, {req}",
        m.id
    ));
    let undo = |e: ActError| -> ActError {
        match backup::restore(ctx.state, &m.id) {
            Ok(_) => ActError(format!("{e} (engine files restored from backup {})", m.id)),
            Err(r) => ActError(format!("{e}; restoring backup {} failed: {r}", m.id)),
        }
    };
    let password = ctx.cfg.setting("ovirt.p12_password").unwrap_or("mypass");
    let pass = format!("pass:{password}");
    let o = openssl(ctx);
    let tmpkey = format!("keys/.{name}.certfleet.tmpkey");
    let tmpp12 = format!("keys/.{name}.certfleet.tmp.p12");
    let work = || -> Result<Value, ActError> {
        // --keep-key: the key out of the PKCS#12 as it was before the step (the backup's
        // copy, through stdin); written 0600 inside keys/, never echoed.
        let f = m
            .files
            .iter()
            .find(|f| f.path == rel(&p12) && f.existed)
            .ok_or_else(|| {
                ActError(format!(
                    "backup {} holds no {p12}: nothing to keep the key from",
                    m.id
                ))
            })?;
        let p12_before = backup::read_stored(ctx.state, &m, f)?;
        let extract = ["pkcs12", "-passin", &pass, "-nodes", "-nocerts"];
        (ctx.output)(format!(
            "$ (cd {}) {} < {p12} (as backed up in {})",
            pki.display(),
            crate::exec::command_line(&o, &extract),
            m.id
        ));
        let key = crate::exec::run_ok_in(
            &o,
            &extract,
            Some(&p12_before),
            ctx.timeout,
            Some(&pki),
            &[],
        )?;
        certfleet_common::atomic::write_file(&rel(&tmpkey), key.stdout.as_bytes(), 0o600)
            .map_err(|e| ActError(format!("writing {tmpkey}: {e}")))?;
        ctx.crash_point("after-key");
        let csr = ctx.run_ok_in(
            &o,
            &["req", "-new", "-key", &tmpkey, "-batch", "-subj", "/"],
            None,
            Some(&pki),
        )?;
        let signed = enroll_request(
            ctx,
            &json!({"name": name, "subject": subject, "san": san, "csr_pem": csr.stdout, "ca": "ca"}),
        )?;
        // Exported beside the old one (created 0600 first, so openssl never writes the key
        // into a readable file), then renamed over it: the .p12 is never half-written.
        certfleet_common::atomic::write_file(&rel(&tmpp12), b"", 0o600)
            .map_err(|e| ActError(format!("creating {tmpp12}: {e}")))?;
        ctx.run_ok_in(
            &o,
            &[
                "pkcs12", "-export", "-in", &cer, "-inkey", &tmpkey, "-out", &tmpp12, "-passout",
                &pass,
            ],
            None,
            Some(&pki),
        )?;
        let bytes = std::fs::read(rel(&tmpp12)).map_err(|e| ActError(format!("{tmpp12}: {e}")))?;
        let owner = std::fs::metadata(rel(&p12)).ok().map(|md| {
            use std::os::unix::fs::MetadataExt;
            (md.uid(), md.gid())
        });
        backup::install(&rel(&p12), &bytes, 0o600, owner.or(Some((f.uid, f.gid))))?;
        ctx.crash_point("after-p12");
        let key = std::fs::read(rel(&tmpkey)).map_err(|e| ActError(format!("{tmpkey}: {e}")))?;
        certfleet_common::atomic::write_file(&rel(&nopass), &key, 0o600)
            .map_err(|e| ActError(format!("writing {nopass}: {e}")))?;
        ctx.crash_point("after-nopass");
        check_engine_certs(ctx, &[name], 0)?;
        Ok(signed)
    };
    let result = work();
    let _ = std::fs::remove_file(rel(&tmpkey));
    let _ = std::fs::remove_file(rel(&tmpp12));
    let signed = result.map_err(undo)?;
    Ok(json!({
        "message": format!("re-issued {name} with its key: {}", signed["message"].as_str().unwrap_or_default()),
        "fingerprint": signed["fingerprint"],
        "not_after": signed["not_after"],
        "backup_id": m.id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yesterday_is_openssl_utctime() {
        let s = yesterday();
        assert_eq!(s.len(), 13);
        assert!(s.ends_with('Z'));
        assert!(s.chars().take(12).all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn engine_versions_gate_direct_enrollment() {
        let v = |j: Value| version_triple(&j).map(|t| t >= ENROLL_NON_RESPONSIVE_SINCE);
        assert_eq!(
            v(json!({"major": "4", "minor": "5", "build": "0"})),
            Some(false)
        );
        assert_eq!(
            v(json!({"major": "4", "minor": "5", "build": "1"})),
            Some(true)
        );
        assert_eq!(v(json!({"major": 4, "minor": 6})), Some(true));
        assert_eq!(
            v(json!({"major": "4", "minor": "4", "build": "10"})),
            Some(false)
        );
        assert_eq!(v(json!({"minor": "5"})), None);
    }

    /// The CA copies refreshed are the ones `ovirt-host-deploy-vdsm-certificates` writes
    /// (real role defaults under `integration-tests/fixtures/real/ovirt/`).
    #[test]
    fn host_ca_copies_follow_the_real_host_deploy_role() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../integration-tests/fixtures/real/ovirt/ovirt-host-deploy-vdsm-certificates_defaults_main.yml"
        );
        let text = std::fs::read_to_string(p).unwrap();
        let var = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .map(|v| v.trim().trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("{k} not in {p}"))
        };
        let vdsm = var("ovirt_vdsm_trust_store");
        let libvirt = var("ovirt_libvirt_default_trust_store");
        assert_eq!(vdsm, "/etc/pki/vdsm");
        let ours: Vec<&str> = HOST_ENGINE_CA_COPIES.iter().map(|(c, _)| *c).collect();
        for k in ["ovirt_vdsm_ca_file", "ovirt_vdsm_spice_ca_file"] {
            assert!(ours.contains(&var(k).as_str()), "{k}");
        }
        // `../CA/cacert.pem` relative to /etc/pki/libvirt.
        let client_ca =
            std::path::Path::new(&libvirt).join(var("ovirt_libvirt_default_client_ca_file"));
        let client_ca = client_ca.to_string_lossy().replace("/libvirt/../", "/");
        assert!(ours.contains(&client_ca.as_str()), "{client_ca}");
        assert_eq!(HOST_QEMU_CA_COPIES[0].0, var("ovirt_qemu_ca_file"));
        assert_eq!(
            HOST_ENGINE_CA_COPIES[0].1,
            var("ovirt_vdsm_cert_file"),
            "cacert.pem verifies vdsmcert.pem"
        );
    }

    #[test]
    fn engine_cas_follow_pki_common() {
        assert_eq!(engine_ca("ca").unwrap().cert_dir, "certs");
        assert_eq!(engine_ca("qemu-ca").unwrap().cert_conf, "qemu-cert.conf");
        assert!(engine_ca("other").is_err());
    }
}
