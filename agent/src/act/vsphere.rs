//! vSphere (VCSA) renewal actions, following `shared/reference/vsphere.md` §9 (renewal without
//! certificate-manager) with the tools VMware's own scripts use:
//!
//! | action | does |
//! |---|---|
//! | `vsphere.replication_gate` | `vdcrepadmin -f showpartnerstatus`: refuses unless every partner is available and 0 changes behind (§9.0 step 5) |
//! | `vsphere.machine_ssl` | `certool --genkey/--gencert` for the PNID (§9.1), backs the old `__MACHINE_CERT` up to files and `BACKUP_STORE/bkp___MACHINE_CERT` (creating `BACKUP_STORE`, not a default store), `vecs-cli entry delete/create` in `MACHINE_SSL_CERT` and `STS_INTERNAL_SSL_CERT` (6.x, where it exists), the Lookup Service registrations trusting the old certificate or at the PNID (vmdir `vmwLKUPEndpointSslTrust`/`vmwLKUPSslTrustAnchor`, as `ls_update_certs.py` and vCert), then `lstool.py list` must show every endpoint at the PNID trusting the new one, VCDB `vpx_ext` `com.vmware.vsan.health` (psql) and, where Auto Deploy starts automatically, its database (`sqlite3 /var/lib/rbd/db`, vCert); each read back; with `restart` also restarts services and checks the endpoint; undoes every change if a check fails |
//! | `vsphere.solution_users` | `dir-cli service list` (SSO password and principals), then per solution user (wcp with `--dataencipherment` and no `--FQDN`, §7/§9.2): `certool --genkey`, `--gencert --genCIScert`; then per user vmdir first (`dir-cli service update --name <user>-<machine-id>`), VECS second (`vecs-cli entry delete/create`), both read back and compared; then VCDB `vpx_ext` thumbprints of EAM, Auto Deploy, Image Builder, VUM/vLCM (KB 57379) when vpxd-extension changed; old vmdir and VECS certificates backed up and restored on failure (what already holds the old certificate is skipped: dir-cli refuses a certificate a principal holds) |
//! | `vsphere.sts` | fixsts.sh/vCert (§5.3): new `ssoserverSign` cert from certool, LDIF backup of every `TenantCredential-N`/`TrustedCertChain-N`, one `ldapmodify` (SSO administrator, as vCert) deleting them and adding `-1` (`objectClass: top` too), then checks vmdir like checksts (the active signing cert is the new one and valid); re-adds the backup if the check fails |
//! | `vsphere.restart_services` | `service-control --status --all` (what runs now), `--stop --all`, `--start --all` (`--vmon-profile HAActive` on an HACore node), polls `--status --all` until everything that ran before runs again (manual-start services may stay `Stopped:`; a transient RC=5 is waited out), vCert's `vmon-cli -s` (envoy, rhttpproxy, vmware-vpostgres) and `systemctl is-active` (vmafdd, vmdird) checks, then checks the endpoint serves VECS `__MACHINE_CERT` |
//! | `vsphere.retrust_pins` | no certificate changed: the Lookup Service registrations at the PNID and the `vpx_ext` thumbprints (Machine SSL's and vpxd-extension's extensions) made to trust what VECS holds now, after another renewer changed it; backed up, read back, undone on failure |
//! | `vsphere.vmca_root` | "reset all", first half (§9.4): `certool --genselfcacert` with the old root's subject, `--rootca`, `--getrootca` must print it, `vecs-cli force-refresh` and `TRUSTED_ROOTS` must hold it, the SSO server's copy refreshed; STS, Machine SSL and solution users must follow (see [`vmca_root`]) |
//! | `vsphere.clean_backup_store` | after a verified Machine SSL: exports every `BACKUP_STORE`/`BACKUP_STORE_H5C` entry to an agent backup, then `vecs-cli entry delete -y` each (expired ones keep the "Certificate Status" alarm red) |
//!
//! Host layout (defaults, override in `[tools]`): `certool` at `/usr/lib/vmware-vmca/bin/certool`,
//! `service-control` at `/bin/service-control`, `ldapmodify`/`ldapsearch` at `/usr/bin/` or
//! `/opt/likewise/bin/` (whichever exists), `vmon-cli` at `/usr/lib/vmware-vmon/vmon-cli`,
//! `systemctl` at `/usr/bin/systemctl`, `psql` at `/opt/vmware/vpostgres/current/bin/psql`
//! (VCDB; settings `vsphere.vcdb_host`, `vsphere.vcdb_port`), `vecs-cli`/`vmafd-cli` under `/usr/lib/vmware-vmafd/bin/`,
//! `vdcrepadmin` under `/usr/lib/vmware-vmdir/bin/`, `dir-cli` under `/usr/lib/vmware-vmafd/bin/`, `lwregshell` in `/opt/likewise/bin/`, the
//! VMCA root at `/var/lib/vmware/vmca/root.cer`. Settings: those of the vsphere collector
//! (`vsphere.ldap_uri`, `vsphere.https_address`, `vsphere.sso_user`,
//! `vsphere.sso_password_file`). Work files (new keys, exported old entries) live in
//! `STATE_DIR/vsphere/<step>/` (0700, keys 0600); the old entries are also kept as a backup
//! (`certfleet-agent backups`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use certfleet_common::atomic::{PRIVATE, create_private_dir, write_file, write_private};
use serde_json::{Value, json};

use super::{ActContext, ActError, backup};
use crate::collect::vsphere::{parse_entry_list, parse_ldif, parse_lwreg};

const VECS_CLI: &str = "/usr/lib/vmware-vmafd/bin/vecs-cli";
const VMAFD_CLI: &str = "/usr/lib/vmware-vmafd/bin/vmafd-cli";
const LWREGSHELL: &str = "/opt/likewise/bin/lwregshell";
const CERTOOL: &str = "/usr/lib/vmware-vmca/bin/certool";
const DIR_CLI: &str = "/usr/lib/vmware-vmafd/bin/dir-cli";
const SERVICE_CONTROL: &str = "/bin/service-control";
const VMCA_ROOT: &str = "/var/lib/vmware/vmca/root.cer";
/// VMCA's private key (its root's).
const VMCA_KEY: &str = "/var/lib/vmware/vmca/privatekey.pem";
/// The SSO server's copy of the VMCA root, which vCert refreshes after a root change
/// (reference §1).
const SSO_ROOT_COPY: &str = "/etc/vmware-sso/keys/ssoserverRoot.crt";

mod vmca_root;

/// Runs `action` (`vsphere.*`).
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "vsphere.replication_gate" => replication_gate(ctx),
        "vsphere.machine_ssl" => machine_ssl(ctx, args),
        "vsphere.solution_users" => solution_users(ctx, args),
        "vsphere.sts" => sts(ctx),
        "vsphere.clean_backup_store" => clean_backup_store(ctx, args),
        "vsphere.retrust_pins" => retrust_pins(ctx),
        "vsphere.vmca_root" => vmca_root::vmca_root(ctx),
        "vsphere.restart_services" => {
            restart_services(ctx)?;
            let fp = verify_served(ctx)?;
            Ok(
                json!({"message": "services restarted; endpoint serves VECS __MACHINE_CERT", "fingerprint": fp}),
            )
        }
        other => Err(ActError(format!("unknown vSphere action {other:?}"))),
    }
}

fn tool(ctx: &ActContext<'_>, name: &str, default: &str) -> PathBuf {
    ctx.cfg.tool(name, default)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `STATE_DIR/vsphere/<step>/`, 0700.
fn workdir(ctx: &ActContext<'_>) -> Result<PathBuf, ActError> {
    let safe: String = ctx
        .step_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let d = ctx.state.path().join("vsphere").join(safe);
    create_private_dir(&d).map_err(|e| ActError(format!("creating {}: {e}", d.display())))?;
    Ok(d)
}

fn openssl(ctx: &ActContext<'_>) -> PathBuf {
    ctx.cfg.tool("openssl", "/usr/bin/openssl")
}

fn pnid(ctx: &ActContext<'_>) -> Result<String, ActError> {
    let out = ctx.run_ok(
        &tool(ctx, "vmafd-cli", VMAFD_CLI),
        &["get-pnid", "--server-name", "localhost"],
        None,
    )?;
    let p = out.stdout.trim().to_owned();
    if p.is_empty() {
        return Err(ActError("vmafd-cli get-pnid printed nothing".into()));
    }
    Ok(p)
}

fn machine_id(ctx: &ActContext<'_>) -> Result<String, ActError> {
    let out = ctx.run_ok(
        &tool(ctx, "vmafd-cli", VMAFD_CLI),
        &["get-machine-id", "--server-name", "localhost"],
        None,
    )?;
    Ok(out.stdout.trim().to_owned())
}

fn sso_password(ctx: &ActContext<'_>) -> Result<String, ActError> {
    crate::collect::vsphere::sso_password(ctx.cfg).map_err(ActError)
}

// === replication gate ===

fn replication_gate(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let pw = sso_password(ctx)?;
    let (shown, text, partners) =
        crate::collect::vsphere::partner_status(ctx.cfg, &pw, ctx.timeout).map_err(ActError)?;
    (ctx.output)(format!("$ {shown}"));
    for l in text.lines() {
        (ctx.output)(l.to_owned());
    }
    let bad: Vec<String> = partners
        .iter()
        .filter_map(|p| match (p.host_available, p.status_available, p.behind) {
            (Some(true), Some(true), Some(0)) => None,
            (Some(true), Some(true), Some(n)) => Some(format!("{} is {n} changes behind", p.host)),
            (Some(false), _, _) => Some(format!("{} is not available", p.host)),
            _ => Some(format!("{}: replication status not available", p.host)),
        })
        .collect();
    if !bad.is_empty() {
        return Err(ActError(format!(
            "replication gate: {} — not touching this SSO domain until replication is healthy",
            bad.join("; ")
        )));
    }
    Ok(json!({
        "message": format!("replication healthy: {} partner(s), 0 changes behind", partners.len()),
        "partners": partners.iter().map(|p| p.host.clone()).collect::<Vec<_>>(),
    }))
}

// === VECS helpers ===

fn vecs(ctx: &ActContext<'_>, args: &[&str]) -> Result<crate::exec::ToolOutput, ActError> {
    ctx.run_ok(&tool(ctx, "vecs-cli", VECS_CLI), args, None)
}

/// Whether `store` has an entry `alias`, from the plain listing's `Alias :` lines as VMware's
/// scripts grep them (`entry list --aliases` is in the Lightwave source but no public script
/// uses it, so it is not relied on).
fn entry_exists(ctx: &ActContext<'_>, store: &str, alias: &str) -> Result<bool, ActError> {
    let out = vecs(ctx, &["entry", "list", "--store", store])?;
    Ok(parse_entry_list(&out.stdout)
        .entries
        .iter()
        .any(|e| e.alias == alias))
}

/// VECS store names (`vecs-cli store list`).
fn store_names(ctx: &ActContext<'_>) -> Result<Vec<String>, ActError> {
    Ok(vecs(ctx, &["store", "list"])?
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Creates `store` unless VECS has it. `BACKUP_STORE` is not a default store (Broadcom KB
/// 376720): an appliance whose certificates were never replaced has none. Idempotent.
fn ensure_store(ctx: &ActContext<'_>, store: &str) -> Result<(), ActError> {
    if store_names(ctx)?.iter().any(|s| s == store) {
        return Ok(());
    }
    (ctx.output)(format!("VECS has no {store}; creating it"));
    vecs(ctx, &["store", "create", "--name", store])?;
    if !store_names(ctx)?.iter().any(|s| s == store) {
        return Err(ActError(format!(
            "vecs-cli store create --name {store}: the store is still not listed"
        )));
    }
    Ok(())
}

/// Exports an entry's cert and key to `dir/<name>.crt|.key` (0600).
fn export_entry(
    ctx: &ActContext<'_>,
    store: &str,
    alias: &str,
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, PathBuf), ActError> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let (c, k) = (s(&crt), s(&key));
    vecs(
        ctx,
        &[
            "entry", "getcert", "--store", store, "--alias", alias, "--output", &c,
        ],
    )?;
    vecs(
        ctx,
        &[
            "entry", "getkey", "--store", store, "--alias", alias, "--output", &k,
        ],
    )?;
    Ok((crt, key))
}

fn replace_entry(
    ctx: &ActContext<'_>,
    store: &str,
    alias: &str,
    crt: &Path,
    key: &Path,
) -> Result<(), ActError> {
    if entry_exists(ctx, store, alias)? {
        vecs(
            ctx,
            &["entry", "delete", "--store", store, "--alias", alias, "-y"],
        )?;
    }
    vecs(
        ctx,
        &[
            "entry",
            "create",
            "--store",
            store,
            "--alias",
            alias,
            "--cert",
            &s(crt),
            "--key",
            &s(key),
        ],
    )?;
    Ok(())
}

fn entry_cert(ctx: &ActContext<'_>, store: &str, alias: &str) -> Result<Vec<u8>, ActError> {
    let out = vecs(
        ctx,
        &["entry", "getcert", "--store", store, "--alias", alias],
    )?;
    certfleet_common::pem::first_certificate(out.stdout.as_bytes())
        .map_err(|e| ActError(format!("VECS {store}/{alias}: {e}")))
}

/// Checks a new certificate: chains to the VMCA root, not expired, names `dns` (if given).
fn check_cert(ctx: &ActContext<'_>, crt: &Path, dns: Option<&str>) -> Result<i64, ActError> {
    let root = s(&ctx.cfg.host_path(VMCA_ROOT));
    ctx.run_ok(&openssl(ctx), &["verify", "-CAfile", &root, &s(crt)], None)?;
    let pem = std::fs::read(crt).map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    let der = certfleet_common::pem::first_certificate(&pem)
        .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    let rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if rec.not_after <= now + 86_400 {
        return Err(ActError(format!(
            "{}: new certificate expires too soon ({})",
            crt.display(),
            rec.not_after
        )));
    }
    if let Some(d) = dns
        && !rec
            .sans
            .iter()
            .any(|x| x.eq_ignore_ascii_case(d) || x.ends_with(&format!(":{d}")))
    {
        return Err(ActError(format!(
            "{}: {d} is not in the subject alternative names {:?}",
            crt.display(),
            rec.sans
        )));
    }
    Ok(rec.not_after)
}

fn certool(ctx: &ActContext<'_>, args: &[&str]) -> Result<(), ActError> {
    let out = ctx.run_ok(&tool(ctx, "certool", CERTOOL), args, None)?;
    if !out.stdout.contains("Status : Success") {
        return Err(ActError(format!(
            "certool {}: no `Status : Success`",
            args.first().unwrap_or(&"")
        )));
    }
    Ok(())
}

fn genkey(ctx: &ActContext<'_>, dir: &Path, name: &str) -> Result<PathBuf, ActError> {
    let key = dir.join(format!("{name}.key"));
    let pubkey = dir.join(format!("{name}.pub"));
    certool(
        ctx,
        &[
            "--genkey",
            &format!("--privkey={}", s(&key)),
            &format!("--pubkey={}", s(&pubkey)),
            "--server=localhost",
        ],
    )?;
    Ok(key)
}

// === Machine SSL ===

/// `vsphere.machine_ssl`.
///
/// Issues a VMCA certificate for the PNID, then, each change recorded for undo: the old entry
/// into `BACKUP_STORE/bkp___MACHINE_CERT` (the store is created if the appliance has none),
/// `MACHINE_SSL_CERT/__MACHINE_CERT`, `STS_INTERNAL_SSL_CERT/__MACHINE_CERT` where that store
/// exists (6.x), the Lookup Service registrations whose SSL trust is the old certificate or
/// whose URI is at the PNID (what `ls_update_certs.py`/lsdoctor and vCert fix; then checked
/// with `lstool.py list`, the Lookup Service's own view), the VCDB `vpx_ext` thumbprint of
/// `com.vmware.vsan.health` (KB 57379) and Auto Deploy's `vc_servers` thumbprint when it starts
/// automatically (vCert `updateAutoDeployDB`). Everything is read back; with `restart` services are
/// restarted and the endpoint must serve the new certificate. On any failure every change is
/// undone in reverse order.
///
/// Idempotent by construction (resumed after an agent crash, see [`super::intent`]): every
/// file of the step lives in its own work directory `STATE_DIR/vsphere/<step>/`. The new key
/// and certificate are kept there until VECS holds them, so a resumed step reuses them instead
/// of asking VMCA for a second certificate (a key already removed after success is read back
/// from VECS `MACHINE_SSL_CERT`, which holds it). The old certificate, LDAP values and VCDB
/// rows are saved to files and an agent backup before the first change; once that backup
/// exists a resumed step reads the old values from it (never from the host, which may hold the
/// new ones by then) and never overwrites it. Each change is then skipped when the host
/// already holds its result: a VECS entry whose certificate has the new fingerprint (an entry
/// deleted but not yet created is created), a Lookup Service registration trusting the new
/// certificate, a `vpx_ext` row or an Auto Deploy `vc_servers` row with the new thumbprint (a
/// resumed step that finds Auto Deploy already changed has no undo for it: its database file is in
/// the first attempt's backup). The restart is noted in the intent
/// journal after it ran, so it is not repeated; the endpoint is always checked again.
fn machine_ssl(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let restart = args.get("restart").and_then(Value::as_bool).unwrap_or(true);
    let pnid = pnid(ctx)?;
    let dir = workdir(ctx)?;
    let cfg = dir.join("machine-ssl.cfg");
    write_file(
        &cfg,
        format!(
            "Country = US\nName = {pnid}\nOrganization = VMware\nOrgUnit = VMware Engineering\n\
             State = California\nLocality = Palo Alto\nHostname = {pnid}\n"
        )
        .as_bytes(),
        0o600,
    )
    .map_err(|e| ActError(format!("{}: {e}", cfg.display())))?;
    let crt = dir.join("machine-ssl.crt");
    let key = match issued_before(ctx, &dir, &crt)? {
        Some(key) => key,
        None => {
            let key = genkey(ctx, &dir, "machine-ssl")?;
            certool(
                ctx,
                &[
                    "--gencert",
                    &format!("--privkey={}", s(&key)),
                    &format!("--cert={}", s(&crt)),
                    &format!("--config={}", s(&cfg)),
                    "--server=localhost",
                ],
            )?;
            key
        }
    };
    let not_after = check_cert(ctx, &crt, Some(&pnid))?;
    let new_der = read_cert(&crt)?;
    let new_fp = certfleet_common::pki::sha256_hex(&new_der);

    // Everything that will change, saved first. A resumed step whose first attempt completed
    // its backup takes the old values from there: the host may hold the new ones already.
    let earlier = ctx
        .resumed()
        .then(|| backup::find(ctx.state, ctx.step_id))
        .flatten();
    let (old_crt, old_key) = match &earlier {
        Some(m) => {
            (ctx.output)(format!(
                "backup {} of the interrupted attempt holds the old Machine SSL certificate",
                m.id
            ));
            restore_saved(ctx, m, &dir, &["old.crt", "old.key"])?;
            (dir.join("old.crt"), dir.join("old.key"))
        }
        None => export_entry(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT", &dir, "old")?,
    };
    let old_der = read_cert(&old_crt)?;
    if old_der == new_der {
        return Err(ActError(format!(
            "{}: the certificate saved as the old Machine SSL certificate is the new one; \
             interrupted, needs operator",
            old_crt.display()
        )));
    }
    let mut saved = vec![old_crt.clone(), old_key.clone()];
    let stores = store_names(ctx)?;
    let sts_internal = match &earlier {
        Some(m) => m
            .files
            .iter()
            .any(|f| f.path.ends_with("old-sts-internal.crt")),
        None => {
            stores.iter().any(|s| s == "STS_INTERNAL_SSL_CERT")
                && entry_exists(ctx, "STS_INTERNAL_SSL_CERT", "__MACHINE_CERT")?
        }
    };
    let old_internal = if let (true, Some(m)) = (sts_internal, &earlier) {
        restore_saved(
            ctx,
            m,
            &dir,
            &["old-sts-internal.crt", "old-sts-internal.key"],
        )?;
        let (c, k) = (
            dir.join("old-sts-internal.crt"),
            dir.join("old-sts-internal.key"),
        );
        saved.extend([c.clone(), k.clone()]);
        Some((c, k))
    } else if sts_internal {
        let (c, k) = export_entry(
            ctx,
            "STS_INTERNAL_SSL_CERT",
            "__MACHINE_CERT",
            &dir,
            "old-sts-internal",
        )?;
        saved.extend([c.clone(), k.clone()]);
        Some((c, k))
    } else {
        None
    };
    let ldap = Ldap::machine_account(ctx)?;
    let ls = ls_trust_plan(
        ctx,
        &ldap,
        &dir,
        &pnid,
        &old_der,
        &new_der,
        earlier.is_some(),
    )?;
    if let Some(p) = &ls {
        saved.push(p.backup.clone());
    }
    let lstool = Lstool::find(ctx);
    let vcdb = Vcdb::find(ctx);
    let ext = match (&vcdb, &earlier) {
        (Some(_), Some(m)) => {
            saved_ext_plan(ctx, m, &dir, MACHINE_SSL_EXTENSIONS, &thumbprint(&new_der))?
        }
        (Some(db), None) => {
            vpx_ext_plan(ctx, db, &dir, MACHINE_SSL_EXTENSIONS, &thumbprint(&new_der))?
        }
        (None, _) => None,
    };
    if let Some(p) = &ext {
        saved.push(p.backup.clone());
    }
    let rbd = auto_deploy_plan(ctx, &thumbprint(&new_der))?;
    if let Some(p) = &rbd {
        saved.push(p.db.clone());
    }
    let manifest = match earlier {
        Some(m) => m,
        None => backup::create(ctx.state, ctx.step_id, &saved)?,
    };
    ctx.crash_point("after-backup");
    ensure_store(ctx, "BACKUP_STORE")?;
    if entry_cert(ctx, "BACKUP_STORE", "bkp___MACHINE_CERT")
        .ok()
        .as_deref()
        == Some(&old_der)
    {
        (ctx.output)(
            "VECS BACKUP_STORE/bkp___MACHINE_CERT already holds the old certificate".into(),
        );
    } else {
        replace_entry(
            ctx,
            "BACKUP_STORE",
            "bkp___MACHINE_CERT",
            &old_crt,
            &old_key,
        )?;
    }

    let mut undo: Vec<Undo> = Vec::new();
    let apply = |undo: &mut Vec<Undo>| -> Result<(), ActError> {
        let new = NewEntry {
            crt: &crt,
            key: &key,
            der: &new_der,
        };
        replace_verified(ctx, undo, "MACHINE_SSL_CERT", (&old_crt, &old_key), &new)?;
        if let Some((c, k)) = &old_internal {
            replace_verified(ctx, undo, "STS_INTERNAL_SSL_CERT", (c, k), &new)?;
        }
        if let Some(p) = &ls {
            ls_trust_apply(ctx, &ldap, p, &new_der, undo)?;
        }
        if let Some(t) = &lstool {
            t.verify(ctx, &pnid, &old_der, &new_der)?;
        }
        if let (Some(p), Some(db)) = (&ext, &vcdb) {
            undo.push(Undo::VpxExt {
                rows: p.old_rows.clone(),
            });
            vpx_ext_apply(ctx, db, p)?;
        }
        if let Some(p) = &rbd {
            undo.push(Undo::AutoDeploy {
                plan: p.clone(),
                rows: p.old_rows.clone(),
            });
            auto_deploy_set(ctx, p, &p.new_rows())?;
        }
        if restart {
            if ctx.noted("restarted").is_some() {
                (ctx.output)("services were restarted by the interrupted attempt".into());
            } else {
                ctx.crash_point("before-restart");
                restart_services(ctx)?;
                ctx.note("restarted", json!(true))?;
            }
            verify_served(ctx)?;
        }
        Ok(())
    };
    if let Err(e) = apply(&mut undo) {
        (ctx.output)(format!(
            "verification failed: {e}; undoing {} change(s)",
            undo.len()
        ));
        let mut failed = run_undo(ctx, &ldap, vcdb.as_ref(), undo);
        if restart && let Err(r) = restart_services(ctx) {
            failed.push(format!("restart: {r}"));
        }
        let _ = std::fs::remove_file(&key);
        return Err(ActError(if failed.is_empty() {
            format!("Machine SSL: {e}; rolled back to the previous certificate")
        } else {
            format!("Machine SSL: {e}; ROLLBACK FAILED: {}", failed.join("; "))
        }));
    }
    // VECS holds the new key now; no second copy stays in the work directory.
    let _ = std::fs::remove_file(&key);
    Ok(json!({
        "message": format!(
            "Machine SSL for {pnid} replaced; valid until {not_after}; {} Lookup Service registration(s), {} vpx_ext row(s) and {} Auto Deploy vc_servers row(s) updated{}",
            ls.as_ref().map_or(0, |p| p.dns.len()),
            ext.as_ref().map_or(0, |p| p.changed()),
            rbd.as_ref().map_or(0, |p| p.changed()),
            if sts_internal { "; STS_INTERNAL_SSL_CERT too" } else { "" }
        ),
        "pnid": pnid,
        "fingerprint": new_fp,
        "not_after": not_after,
        "backup_id": manifest.id,
        "restart": if restart { json!(["service-control --all"]) } else { json!([]) },
    }))
}

/// `vsphere.retrust_pins`: after another renewer (vCenter's own auto-renewal, an operator's
/// manual replacement) changed the Machine SSL or vpxd-extension certificate, makes what pins
/// them trust the certificates VECS holds now, without changing any certificate: the Lookup
/// Service registrations at the PNID (their SSL trust), the `vpx_ext` thumbprints of the
/// extensions registered with the Machine SSL certificate and of those registered with the
/// vpxd-extension certificate (KB 57379). Old values are backed up first; a failed read-back
/// undoes every change. No service is restarted (unverified: whether vsan-health and EAM pick
/// up a changed `vpx_ext` thumbprint without one).
///
/// Idempotent: each part compares with what VECS holds now and changes only what differs, so a
/// resumed attempt re-trusts only what still differs (and undoes only that on failure); the
/// backup of the first attempt, the values from before any change, is kept, never replaced.
fn retrust_pins(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let pnid = pnid(ctx)?;
    let dir = workdir(ctx)?;
    let machine = entry_cert(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT")?;
    let extension = entry_cert(ctx, "vpxd-extension", "vpxd-extension").ok();
    let earlier = ctx
        .resumed()
        .then(|| backup::find(ctx.state, ctx.step_id))
        .flatten();
    let ldap = Ldap::machine_account(ctx)?;
    // No "old" certificate to match by: every registration at the PNID that trusts anything
    // but the current one is re-trusted. Planned from what the registrations hold now, also on
    // a resume (`resumed` would take those trusting the current certificate as changed by the
    // interrupted attempt and give them an empty "old" trust to undo to).
    let ls = ls_trust_plan(ctx, &ldap, &dir, &pnid, &[], &machine, false)?;
    let vcdb = Vcdb::find(ctx);
    let mut ext = Vec::new();
    if let Some(db) = &vcdb {
        let mut wanted = vec![(MACHINE_SSL_EXTENSIONS, thumbprint(&machine))];
        if let Some(der) = &extension {
            wanted.push((VPXD_EXTENSION_EXTENSIONS, thumbprint(der)));
        }
        for (ids, tp) in wanted {
            ext.extend(vpx_ext_plan(ctx, db, &dir, ids, &tp)?);
        }
    }
    let mut saved: Vec<PathBuf> = ext.iter().map(|p| p.backup.clone()).collect();
    saved.extend(ls.as_ref().map(|p| p.backup.clone()));
    let manifest = match earlier {
        Some(m) => Some(m),
        None if saved.is_empty() => None,
        None => Some(backup::create(ctx.state, ctx.step_id, &saved)?),
    };
    ctx.crash_point("after-backup");
    let mut undo: Vec<Undo> = Vec::new();
    let apply = |undo: &mut Vec<Undo>| -> Result<(), ActError> {
        if let Some(p) = &ls {
            ls_trust_apply(ctx, &ldap, p, &machine, undo)?;
        }
        ctx.crash_point("after-lookup-service");
        if let Some(db) = &vcdb {
            for p in &ext {
                undo.push(Undo::VpxExt {
                    rows: p.old_rows.clone(),
                });
                vpx_ext_apply(ctx, db, p)?;
            }
        }
        Ok(())
    };
    if let Err(e) = apply(&mut undo) {
        let failed = run_undo(ctx, &ldap, vcdb.as_ref(), undo);
        return Err(ActError(if failed.is_empty() {
            format!("re-trusting the pins of {pnid}: {e}; every change undone")
        } else {
            format!(
                "re-trusting the pins of {pnid}: {e}; UNDO FAILED: {}",
                failed.join("; ")
            )
        }));
    }
    let ls_changed = ls.as_ref().map_or(0, |p| p.to_change);
    let ext_changed: usize = ext.iter().map(ExtPlan::changed).sum();
    Ok(json!({
        "message": format!(
            "{pnid}: {ls_changed} Lookup Service registration(s) and {ext_changed} vpx_ext row(s) now trust the certificates VECS holds{}",
            if vcdb.is_none() { " (no VCDB: vpx_ext not checked)" } else { "" }
        ),
        "pnid": pnid,
        "fingerprint": certfleet_common::pki::sha256_hex(&machine),
        "backup_id": manifest.map(|m| m.id),
    }))
}

/// For a resumed `vsphere.machine_ssl`: the key of the certificate the interrupted attempt
/// already had VMCA issue into `crt` (in the step's own work directory), so it is not issued
/// twice. The key is the work directory's, or (removed once VECS held it) VECS
/// `MACHINE_SSL_CERT/__MACHINE_CERT`'s when that entry holds `crt`. `None` when nothing usable
/// was issued (not resumed, no certificate, or no key for it): a new one is issued.
fn issued_before(
    ctx: &ActContext<'_>,
    dir: &Path,
    crt: &Path,
) -> Result<Option<PathBuf>, ActError> {
    if !ctx.resumed() {
        return Ok(None);
    }
    let Ok(der) = read_cert(crt) else {
        (ctx.output)("the interrupted attempt had no certificate issued yet".into());
        return Ok(None);
    };
    let key = dir.join("machine-ssl.key");
    if !key.exists() {
        if entry_cert(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT")
            .ok()
            .as_deref()
            != Some(&der)
        {
            (ctx.output)(format!(
                "{}: no key for the certificate issued before; issuing anew",
                key.display()
            ));
            return Ok(None);
        }
        vecs(
            ctx,
            &[
                "entry",
                "getkey",
                "--store",
                "MACHINE_SSL_CERT",
                "--alias",
                "__MACHINE_CERT",
                "--output",
                &s(&key),
            ],
        )?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(PRIVATE))
            .map_err(|e| ActError(format!("chmod 600 {}: {e}", key.display())))?;
    }
    super::generic::key_matches(ctx, &key, crt)?;
    (ctx.output)(format!(
        "{} was issued by the interrupted attempt (with its key); not asking VMCA again",
        crt.display()
    ));
    Ok(Some(key))
}

/// What an interrupted attempt of this step left of a certificate it had VMCA issue into its
/// work directory (see [`issued_earlier`]).
#[derive(Debug, PartialEq, Eq)]
enum Earlier {
    /// Nothing usable (not resumed, or no certificate yet): issue one now.
    Nothing,
    /// The certificate and its key: reuse them, do not issue again.
    Issued,
    /// The certificate, its key already removed (the attempt got to its end): the host holds
    /// the key if it holds the certificate.
    KeyRemoved,
}

/// For a resumed step: whether the interrupted attempt already had VMCA issue `crt` (with key
/// `key`, both in the step's own work directory), so it is not issued twice. A certificate
/// whose fingerprint differs from the one noted for `name` ([`note_issued`]) is an error; a
/// certificate without a note (the attempt died between certool and the note) is reused when
/// its key matches, and noted then.
fn issued_earlier(
    ctx: &ActContext<'_>,
    name: &str,
    crt: &Path,
    key: &Path,
) -> Result<Earlier, ActError> {
    if !ctx.resumed() {
        return Ok(Earlier::Nothing);
    }
    let Ok(der) = read_cert(crt) else {
        (ctx.output)(format!(
            "the interrupted attempt had no {name} certificate issued yet"
        ));
        return Ok(Earlier::Nothing);
    };
    let fp = certfleet_common::pki::sha256_hex(&der);
    let noted = ctx.noted(&format!("issued-{name}"));
    if let Some(n) = &noted
        && n.get("sha256").and_then(Value::as_str) != Some(fp.as_str())
    {
        return Err(ActError(format!(
            "{} is not the {name} certificate this step noted ({n}); interrupted, needs operator",
            crt.display()
        )));
    }
    if !key.exists() {
        if noted.is_none() {
            return Ok(Earlier::Nothing);
        }
        return Ok(Earlier::KeyRemoved);
    }
    if super::generic::key_matches(ctx, key, crt).is_err() {
        if noted.is_some() {
            return Err(ActError(format!(
                "{} does not match the {name} certificate this step had issued; interrupted, \
                 needs operator",
                key.display()
            )));
        }
        (ctx.output)(format!(
            "{}: not the key of {}; issuing anew",
            key.display(),
            crt.display()
        ));
        return Ok(Earlier::Nothing);
    }
    note_issued(ctx, name, crt)?;
    (ctx.output)(format!(
        "{} was issued by the interrupted attempt (with its key); not asking VMCA again",
        crt.display()
    ));
    Ok(Earlier::Issued)
}

/// Notes (durably, first attempt wins) the fingerprint and public key of the certificate VMCA
/// just issued into `crt` for `name`.
fn note_issued(ctx: &ActContext<'_>, name: &str, crt: &Path) -> Result<(), ActError> {
    let der = read_cert(crt)?;
    let key = certfleet_common::pki::cert_public_key_id(&der)
        .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    ctx.note(
        &format!("issued-{name}"),
        json!({"sha256": certfleet_common::pki::sha256_hex(&der), "public_key": key}),
    )
}

/// Copies the files named `names` from the step's backup `m` back into the work directory
/// (0600), where the first attempt saved them before it changed anything.
fn restore_saved(
    ctx: &ActContext<'_>,
    m: &backup::Manifest,
    dir: &Path,
    names: &[&str],
) -> Result<(), ActError> {
    for name in names {
        let f = m
            .files
            .iter()
            .find(|f| f.path.file_name().is_some_and(|n| n == *name))
            .ok_or_else(|| {
                ActError(format!(
                    "backup {} holds no {name}; interrupted, needs operator",
                    m.id
                ))
            })?;
        let bytes = backup::read_stored(ctx.state, m, f)?;
        write_private(&dir.join(name), &bytes)
            .map_err(|e| ActError(format!("{}: {e}", dir.join(name).display())))?;
    }
    Ok(())
}

/// VECS `store/__MACHINE_CERT` gets the new certificate (`crt`/`key`, DER `new`) unless it
/// holds it already (a resumed step); an entry the interrupted attempt deleted is created.
fn install_entry(
    ctx: &ActContext<'_>,
    store: &str,
    crt: &Path,
    key: &Path,
    new: &[u8],
) -> Result<(), ActError> {
    let alias = "__MACHINE_CERT";
    if entry_exists(ctx, store, alias)? {
        if entry_cert(ctx, store, alias)? == new {
            (ctx.output)(format!(
                "VECS {store}/{alias} already holds the new certificate"
            ));
            return Ok(());
        }
        vecs(
            ctx,
            &["entry", "delete", "--store", store, "--alias", alias, "-y"],
        )?;
        ctx.crash_point(&format!("after-delete-{store}"));
    } else {
        (ctx.output)(format!("VECS {store} has no {alias}; creating it"));
    }
    vecs(
        ctx,
        &[
            "entry",
            "create",
            "--store",
            store,
            "--alias",
            alias,
            "--cert",
            &s(crt),
            "--key",
            &s(key),
        ],
    )?;
    ctx.crash_point(&format!("after-create-{store}"));
    expect_entry(ctx, store, alias, new)
}

fn read_cert(path: &Path) -> Result<Vec<u8>, ActError> {
    let pem = std::fs::read(path).map_err(|e| ActError(format!("{}: {e}", path.display())))?;
    certfleet_common::pem::first_certificate(&pem)
        .map_err(|e| ActError(format!("{}: {e}", path.display())))
}

/// VECS `store/alias` must hold `want` (DER).
fn expect_entry(
    ctx: &ActContext<'_>,
    store: &str,
    alias: &str,
    want: &[u8],
) -> Result<(), ActError> {
    let der = entry_cert(ctx, store, alias)?;
    if der != want {
        let (fp, w) = (
            certfleet_common::pki::sha256_hex(&der),
            certfleet_common::pki::sha256_hex(want),
        );
        return Err(ActError(format!(
            "VECS {store}/{alias} holds {} instead of {}",
            &fp[..16],
            &w[..16]
        )));
    }
    Ok(())
}

/// The new certificate and key of a Machine SSL replacement.
struct NewEntry<'a> {
    crt: &'a Path,
    key: &'a Path,
    der: &'a [u8],
}

/// Replaces VECS `store/__MACHINE_CERT` with `new` and reads it back. The undo (the exported
/// `old` certificate and key) is recorded before the first change, so a failure half way puts
/// the old entry back. Idempotent through [`install_entry`]: an entry already holding `new`
/// (a resumed step) is left alone, one the interrupted attempt deleted is created.
fn replace_verified(
    ctx: &ActContext<'_>,
    undo: &mut Vec<Undo>,
    store: &str,
    old: (&Path, &Path),
    new: &NewEntry<'_>,
) -> Result<(), ActError> {
    const ALIAS: &str = "__MACHINE_CERT";
    undo.push(Undo::Vecs {
        store: store.into(),
        alias: ALIAS.into(),
        crt: old.0.to_path_buf(),
        key: old.1.to_path_buf(),
    });
    install_entry(ctx, store, new.crt, new.key, new.der)
}

// === follow-ups: Lookup Service trust, VCDB extension thumbprints, Auto Deploy ===

/// A change already made, put back by [`run_undo`].
enum Undo {
    /// VECS `store/alias` gets `crt`/`key` back.
    Vecs {
        store: String,
        alias: String,
        crt: PathBuf,
        key: PathBuf,
    },
    /// `ldapmodify -c -f file` gives the Lookup Service registrations `dns` their old trust
    /// (each DN with the certificate it trusted).
    LsTrust {
        file: PathBuf,
        dns: Vec<(String, Vec<u8>)>,
    },
    /// `vpx_ext` rows get these thumbprints back.
    VpxExt { rows: Vec<(String, String)> },
    /// Auto Deploy's `vc_servers` rows get these thumbprints back.
    AutoDeploy {
        plan: AutoDeployPlan,
        rows: Vec<(String, String)>,
    },
}

/// Undoes `undo` in reverse order; skips what already holds the old value. Returns what failed.
fn run_undo(
    ctx: &ActContext<'_>,
    ldap: &Ldap,
    vcdb: Option<&Vcdb>,
    undo: Vec<Undo>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::Vecs {
                store,
                alias,
                crt,
                key,
            } => read_cert(crt).and_then(|old| {
                if entry_cert(ctx, store, alias).ok().as_deref() == Some(old.as_slice()) {
                    (ctx.output)(format!(
                        "VECS {store}/{alias} already holds the old certificate"
                    ));
                    return Ok(());
                }
                replace_entry(ctx, store, alias, crt, key)
                    .and_then(|_| expect_entry(ctx, store, alias, &old))
                    .map_err(|e| ActError(format!("VECS {store}/{alias}: {e}")))
            }),
            Undo::LsTrust { file, dns } => {
                // Some registrations may never have been changed (ldapmodify stops at the first
                // error): -c goes on, and the result is judged by reading them back.
                if let Err(e) = ldap.modify(ctx, file, true) {
                    (ctx.output)(format!("ldapmodify -c (undo): {e}"));
                }
                ls_trust_verify(ctx, ldap, dns)
                    .map_err(|e| ActError(format!("Lookup Service SSL trust: {e}")))
            }
            Undo::VpxExt { rows } => match vcdb {
                Some(db) => vpx_ext_set(ctx, db, rows),
                None => Err(ActError("vpx_ext: no VCDB".into())),
            },
            Undo::AutoDeploy { plan, rows } => auto_deploy_set(ctx, plan, rows),
        };
        if let Err(e) = r {
            failed.push(e.0);
        }
    }
    failed
}

/// LDAP access to vmdir with the OpenLDAP clients (`/usr/bin` or `/opt/likewise/bin`).
struct Ldap {
    uri: String,
    bind_dn: String,
    /// `dc=…` of the domain.
    domain_dn: String,
    pwfile: PathBuf,
    search: PathBuf,
    modify: PathBuf,
}

impl Ldap {
    fn new(
        ctx: &ActContext<'_>,
        bind_dn: String,
        domain_dn: String,
        password: &str,
        tag: &str,
    ) -> Result<Self, ActError> {
        let pwfile = workdir(ctx)?.join(format!("{tag}.pw"));
        write_private(&pwfile, password.as_bytes())
            .map_err(|e| ActError(format!("{}: {e}", pwfile.display())))?;
        Ok(Ldap {
            uri: ctx
                .cfg
                .setting("vsphere.ldap_uri")
                .unwrap_or("ldap://localhost:389")
                .to_owned(),
            bind_dn,
            domain_dn,
            pwfile,
            search: crate::collect::vsphere::ldap_tool(ctx.cfg, "ldapsearch"),
            modify: crate::collect::vsphere::ldap_tool(ctx.cfg, "ldapmodify"),
        })
    }

    /// Bound as this node's machine account (`lwregshell`), as vCert reads vmdir.
    fn machine_account(ctx: &ActContext<'_>) -> Result<Self, ActError> {
        let acct = machine_account(ctx)?;
        let domain_dn = dc_part(&acct.dn);
        Self::new(ctx, acct.dn, domain_dn, &acct.password, "machine-account")
    }

    /// Bound as the SSO administrator (`cn=<user>,cn=users,<dn>`), as vCert and fixsts.sh
    /// change the STS tenant.
    fn administrator(ctx: &ActContext<'_>) -> Result<Self, ActError> {
        let acct = machine_account(ctx)?;
        let domain_dn = dc_part(&acct.dn);
        let user = ctx
            .cfg
            .setting("vsphere.sso_user")
            .unwrap_or("administrator");
        let user = user.split('@').next().unwrap_or(user);
        Self::new(
            ctx,
            format!("cn={user},cn=users,{domain_dn}"),
            domain_dn,
            &sso_password(ctx)?,
            "sso-administrator",
        )
    }

    fn search(
        &self,
        ctx: &ActContext<'_>,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<crate::collect::vsphere::LdifEntry>, ActError> {
        let pw = s(&self.pwfile);
        let mut a: Vec<&str> = vec![
            "-o",
            "ldif-wrap=no",
            "-LLL",
            "-x",
            "-H",
            &self.uri,
            "-D",
            &self.bind_dn,
            "-y",
            &pw,
            "-b",
            base,
            filter,
        ];
        a.extend(attrs);
        let out = ctx.run_ok(&self.search, &a, None)?;
        parse_ldif(&out.stdout).map_err(|e| ActError(format!("ldapsearch -b {base} {filter}: {e}")))
    }

    /// `ldapmodify -f file` (`-c`: go on after an error, for undo files).
    fn modify(&self, ctx: &ActContext<'_>, file: &Path, cont: bool) -> Result<(), ActError> {
        let pw = s(&self.pwfile);
        let f = s(file);
        let mut a: Vec<&str> = vec![
            "-x",
            "-H",
            &self.uri,
            "-D",
            &self.bind_dn,
            "-y",
            &pw,
            "-f",
            &f,
        ];
        if cont {
            a.insert(0, "-c");
        }
        ctx.run_ok(&self.modify, &a, None)?;
        Ok(())
    }
}

impl Drop for Ldap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pwfile);
    }
}

/// `dc=vsphere,dc=local` from a DN.
fn dc_part(dn: &str) -> String {
    dn.split(',')
        .map(str::trim)
        .filter(|p| p.to_ascii_lowercase().starts_with("dc="))
        .collect::<Vec<_>>()
        .join(",")
}

/// Lookup Service registrations live in vmdir under `cn=Sites,cn=Configuration,<dn>`
/// (reference §8.8): `vmwLKUPEndpointRegistration` with `vmwLKUPEndpointSslTrust` (base64 DER
/// as a string) and legacy `vmwLKUPServiceEndpoint` with `vmwLKUPSslTrustAnchor` (DER).
const LS_FILTER: &str =
    "(|(objectclass=vmwLKUPEndpointRegistration)(objectclass=vmwLKUPServiceEndpoint))";
const LS_TRUST_B64: &str = "vmwLKUPEndpointSslTrust";
const LS_TRUST_DER: &str = "vmwLKUPSslTrustAnchor";

/// The registrations to change (each DN with the certificate it trusts now): LDIFs forward and
/// back.
struct LsPlan {
    dns: Vec<(String, Vec<u8>)>,
    /// How many of `dns` still trust another certificate than the new one (`change` holds
    /// only those; a resumed step's already re-trusted ones are only in the way back).
    to_change: usize,
    change: PathBuf,
    backup: PathBuf,
}

/// Whether the certificate `der` was issued to `name`: its CN or one of its DNS names.
fn issued_to(der: &[u8], name: &str) -> bool {
    let Ok(rec) = certfleet_common::x509::parse_der(der) else {
        return false;
    };
    rec.subject
        .split(", ")
        .any(|part| part.eq_ignore_ascii_case(&format!("CN={name}")))
        || rec
            .sans
            .iter()
            .any(|x| x.eq_ignore_ascii_case(name) || x.eq_ignore_ascii_case(&format!("DNS:{name}")))
}

/// Host part of a registration URI (`https://vc.lab:443/sdk` → `vc.lab`).
fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    (!host.is_empty()).then_some(host)
}

/// Finds the registrations to re-trust and writes the LDIF replacing their SSL trust with `new`
/// and the LDIF putting each old value back. A registration is changed when it trusts `old` (as
/// `ls_update_certs.py` matches them: also those registered by IP address) or when its URI is
/// at the PNID and it trusts anything but `new` (vCert's `vmwLKUPURI=https://<pnid>…` filter:
/// a trust anchor an earlier replacement missed). With no `old` (`vsphere.retrust_pins`: another
/// renewer replaced the certificate and nothing kept the one before), a registration trusting
/// a certificate issued to the PNID (its CN or a DNS name) counts as trusting an old one, so
/// registrations by IP address are found too. `None` when there is nothing to change.
fn ls_trust_plan(
    ctx: &ActContext<'_>,
    ldap: &Ldap,
    dir: &Path,
    pnid: &str,
    old: &[u8],
    new: &[u8],
    resumed: bool,
) -> Result<Option<LsPlan>, ActError> {
    let base = format!("cn=Sites,cn=Configuration,{}", ldap.domain_dn);
    let entries = ldap.search(
        ctx,
        &base,
        LS_FILTER,
        &["vmwLKUPURI", LS_TRUST_B64, LS_TRUST_DER],
    )?;
    let (mut change, mut back, mut dns) = (String::new(), String::new(), Vec::new());
    let (mut to_change, mut stale) = (0, 0);
    for (dn, attrs) in &entries {
        let at_pnid = attrs.iter().any(|(a, v)| {
            a.eq_ignore_ascii_case("vmwLKUPURI")
                && uri_host(&String::from_utf8_lossy(v))
                    .is_some_and(|h| h.eq_ignore_ascii_case(pnid))
        });
        for (a, v) in attrs {
            let (attr, der) = if a.eq_ignore_ascii_case(LS_TRUST_B64) {
                let text: String = String::from_utf8_lossy(v).split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(text) {
                    Ok(d) => (LS_TRUST_B64, d),
                    Err(_) => continue,
                }
            } else if a.eq_ignore_ascii_case(LS_TRUST_DER) {
                (LS_TRUST_DER, v.clone())
            } else {
                continue;
            };
            // A resumed step also takes the registrations its interrupted attempt already
            // changed (they trust the new certificate now; they trusted the old one before):
            // nothing to change, but undone on failure like the others.
            let done = resumed && der == new;
            let was_ours = der == old || (old.is_empty() && issued_to(&der, pnid));
            if !done && (der == new || (!was_ours && !at_pnid)) {
                continue;
            }
            let der = if done { old.to_vec() } else { der };
            if !done && !was_ours {
                stale += 1;
            }
            let line = |d: &[u8]| {
                if attr == LS_TRUST_B64 {
                    format!("{attr}: {}\n", b64(d))
                } else {
                    format!("{attr}:: {}\n", b64(d))
                }
            };
            for (out, from, to) in [(&mut change, &der[..], new), (&mut back, new, &der[..])] {
                if done && from != new {
                    continue;
                }
                out.push_str(&format!(
                    "dn: {dn}\nchangetype: modify\ndelete: {attr}\n{}-\nadd: {attr}\n{}-\n\n",
                    line(from),
                    line(to)
                ));
            }
            if !done {
                to_change += 1;
            }
            dns.push((dn.clone(), der));
        }
    }
    (ctx.output)(format!(
        "Lookup Service: {} of {} endpoint registration(s) trust the old Machine SSL certificate, {stale} at {pnid} another one",
        to_change - stale,
        entries.len()
    ));
    if dns.is_empty() {
        return Ok(None);
    }
    let (cf, bf) = (dir.join("ls-trust.ldif"), dir.join("ls-trust-undo.ldif"));
    write_file(&cf, change.as_bytes(), PRIVATE)
        .map_err(|e| ActError(format!("{}: {e}", cf.display())))?;
    write_file(&bf, back.as_bytes(), PRIVATE)
        .map_err(|e| ActError(format!("{}: {e}", bf.display())))?;
    Ok(Some(LsPlan {
        dns,
        to_change,
        change: cf,
        backup: bf,
    }))
}

/// Applies `p` (its undo noted first), then reads every registration of it back: each must
/// trust `new`.
fn ls_trust_apply(
    ctx: &ActContext<'_>,
    ldap: &Ldap,
    p: &LsPlan,
    new: &[u8],
    undo: &mut Vec<Undo>,
) -> Result<(), ActError> {
    undo.push(Undo::LsTrust {
        file: p.backup.clone(),
        dns: p.dns.clone(),
    });
    if p.to_change > 0 {
        ldap.modify(ctx, &p.change, false)?;
    }
    let want: Vec<(String, Vec<u8>)> = p
        .dns
        .iter()
        .map(|(dn, _)| (dn.clone(), new.to_vec()))
        .collect();
    ls_trust_verify(ctx, ldap, &want)
}

/// Every registration in `dns` trusts the certificate paired with it.
fn ls_trust_verify(
    ctx: &ActContext<'_>,
    ldap: &Ldap,
    dns: &[(String, Vec<u8>)],
) -> Result<(), ActError> {
    for (dn, new) in dns {
        let new = new.as_slice();
        let e = ldap.search(ctx, dn, "(objectclass=*)", &[LS_TRUST_B64, LS_TRUST_DER])?;
        let ok = e.iter().flat_map(|(_, a)| a).any(|(a, v)| {
            (a.eq_ignore_ascii_case(LS_TRUST_DER) && v == new)
                || (a.eq_ignore_ascii_case(LS_TRUST_B64)
                    && base64::engine::general_purpose::STANDARD
                        .decode(
                            String::from_utf8_lossy(v)
                                .split_whitespace()
                                .collect::<String>(),
                        )
                        .is_ok_and(|d| d == new))
        });
        if !ok {
            return Err(ActError(format!(
                "Lookup Service registration {dn} does not trust the expected certificate"
            )));
        }
    }
    Ok(())
}

/// Extensions registered with the Machine SSL thumbprint (reference §8.9).
const MACHINE_SSL_EXTENSIONS: &[&str] = &["com.vmware.vsan.health"];
/// Extensions registered with the vpxd-extension solution user's thumbprint (KB 57379; vCert).
const VPXD_EXTENSION_EXTENSIONS: &[&str] = &[
    "com.vmware.vim.eam",
    "com.vmware.rbd",
    "com.vmware.imagebuilder",
    "com.vmware.vcIntegrity",
    "com.vmware.vlcm.client",
];
const PSQL: &str = "/opt/vmware/vpostgres/current/bin/psql";

/// SHA-1 thumbprint as vCenter stores it: `AA:BB:…`, uppercase.
fn thumbprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The vCenter database through `psql -d VCDB -U postgres` (settings `vsphere.vcdb_host`, a
/// socket directory or host, and `vsphere.vcdb_port`; default: psql's own).
struct Vcdb {
    psql: PathBuf,
    conn: Vec<String>,
}

impl Vcdb {
    /// `None` where there is no VCDB client (a PSC, or no vCenter server on this node).
    fn find(ctx: &ActContext<'_>) -> Option<Self> {
        let psql = tool(ctx, "psql", PSQL);
        if !psql.exists() {
            (ctx.output)(format!(
                "{}: not found; VCDB vpx_ext thumbprints not checked (no vCenter server here?)",
                psql.display()
            ));
            return None;
        }
        let mut conn: Vec<String> = ["-d", "VCDB", "-U", "postgres"].map(String::from).to_vec();
        if let Some(h) = ctx.cfg.setting("vsphere.vcdb_host") {
            conn.extend(["-h".into(), h.into()]);
        }
        if let Some(p) = ctx.cfg.setting("vsphere.vcdb_port") {
            conn.extend(["-p".into(), p.into()]);
        }
        Some(Vcdb { psql, conn })
    }

    /// Runs `sql`; unaligned, tuples only, `|`-separated, stops at the first error.
    fn query(&self, ctx: &ActContext<'_>, sql: &str) -> Result<String, ActError> {
        let mut a: Vec<&str> = self.conn.iter().map(String::as_str).collect();
        a.extend(["-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "|", "-c", sql]);
        Ok(ctx.run_ok(&self.psql, &a, None)?.stdout)
    }

    fn rows(&self, ctx: &ActContext<'_>, ids: &[&str]) -> Result<Vec<(String, String)>, ActError> {
        let list = ids
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        let out = self.query(
            ctx,
            &format!(
                "SELECT ext_id, thumbprint FROM vpx_ext WHERE ext_id IN ({list}) ORDER BY ext_id"
            ),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(i, t)| (i.trim().to_owned(), t.trim().to_owned()))
            .collect())
    }
}

/// Rows to change to `new` and their old values (saved to `backup`).
struct ExtPlan {
    old_rows: Vec<(String, String)>,
    new: String,
    backup: PathBuf,
}

impl ExtPlan {
    fn changed(&self) -> usize {
        self.old_rows.iter().filter(|(_, t)| *t != self.new).count()
    }
}

fn vpx_ext_plan(
    ctx: &ActContext<'_>,
    db: &Vcdb,
    dir: &Path,
    ids: &[&str],
    new: &str,
) -> Result<Option<ExtPlan>, ActError> {
    let rows = db.rows(ctx, ids)?;
    (ctx.output)(format!(
        "VCDB vpx_ext: {} of {} registered extension(s) differ from {new}",
        rows.iter().filter(|(_, t)| t != new).count(),
        rows.len()
    ));
    if rows.iter().all(|(_, t)| t == new) {
        return Ok(None);
    }
    let backup = dir.join(format!("vpx_ext-{}.txt", ids.first().unwrap_or(&"ext")));
    let text: String = rows.iter().map(|(i, t)| format!("{i}|{t}\n")).collect();
    write_file(&backup, text.as_bytes(), PRIVATE)
        .map_err(|e| ActError(format!("{}: {e}", backup.display())))?;
    Ok(Some(ExtPlan {
        old_rows: rows,
        new: new.to_owned(),
        backup,
    }))
}

/// For a resumed step whose first attempt completed its backup: the `vpx_ext` rows as they
/// were before it changed any (the file `vpx_ext_plan` saved into the backup), not as they are
/// now. `None` when the first attempt found nothing to change.
fn saved_ext_plan(
    ctx: &ActContext<'_>,
    m: &backup::Manifest,
    dir: &Path,
    ids: &[&str],
    new: &str,
) -> Result<Option<ExtPlan>, ActError> {
    let name = format!("vpx_ext-{}.txt", ids.first().unwrap_or(&"ext"));
    if !m
        .files
        .iter()
        .any(|f| f.path.file_name().is_some_and(|n| n == name.as_str()))
    {
        return Ok(None);
    }
    restore_saved(ctx, m, dir, &[&name])?;
    let backup = dir.join(&name);
    let text = std::fs::read_to_string(&backup)
        .map_err(|e| ActError(format!("{}: {e}", backup.display())))?;
    Ok(Some(ExtPlan {
        old_rows: text
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(i, t)| (i.to_owned(), t.to_owned()))
            .collect(),
        new: new.to_owned(),
        backup,
    }))
}

/// Sets every planned row to the new thumbprint and reads them back.
fn vpx_ext_apply(ctx: &ActContext<'_>, db: &Vcdb, plan: &ExtPlan) -> Result<(), ActError> {
    let rows: Vec<(String, String)> = plan
        .old_rows
        .iter()
        .map(|(i, _)| (i.clone(), plan.new.clone()))
        .collect();
    vpx_ext_set(ctx, db, &rows)
}

/// `UPDATE vpx_ext SET thumbprint = … WHERE ext_id = …` per row (in one transaction), then checks
/// them. Thumbprints and ids are checked to be plain before they go into SQL.
fn vpx_ext_set(ctx: &ActContext<'_>, db: &Vcdb, rows: &[(String, String)]) -> Result<(), ActError> {
    db.query(ctx, &thumbprint_update("vpx_ext", "ext_id", rows)?)?;
    let ids: Vec<&str> = rows.iter().map(|(i, _)| i.as_str()).collect();
    thumbprints_hold("VCDB vpx_ext", rows, &db.rows(ctx, &ids)?)
}

/// One transaction setting `thumbprint` of `table` row by row (`key` = the row's name), for
/// both VCDB's `vpx_ext` and Auto Deploy's `vc_servers`. Names and thumbprints are checked to be
/// plain (letters, digits, `:.-_`) before they go into SQL.
fn thumbprint_update(
    table: &str,
    key: &str,
    rows: &[(String, String)],
) -> Result<String, ActError> {
    let plain = |x: &str| {
        x.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '.' || c == '-' || c == '_')
    };
    let mut sql = String::from("BEGIN;");
    for (k, t) in rows {
        if !plain(k) || !plain(t) {
            return Err(ActError(format!(
                "{table}: refusing odd value {k:?} / {t:?}"
            )));
        }
        sql.push_str(&format!(
            "UPDATE {table} SET thumbprint = '{t}' WHERE {key} = '{k}';"
        ));
    }
    sql.push_str("COMMIT;");
    Ok(sql)
}

/// Every row of `want` (name, thumbprint) is among the rows read back (`now`).
fn thumbprints_hold(
    what: &str,
    want: &[(String, String)],
    now: &[(String, String)],
) -> Result<(), ActError> {
    match want.iter().find(|w| !now.contains(w)) {
        Some((k, t)) => Err(ActError(format!(
            "{what} {k}: thumbprint is not {t} after the update"
        ))),
        None => Ok(()),
    }
}

// === Lookup Service as its clients see it: lstool.py list ===

/// `lstool.py` of 7.0/8.0 (Lookup Service at `http://localhost:7090/lookupservice/sdk`) and of
/// 6.5/6.7 (`:7080`), reference §1/§8.7.
const LSTOOLS: [(&str, &str); 2] = [
    (
        "/usr/lib/vmware-lookupsvc/tools/lstool.py",
        "http://localhost:7090/lookupservice/sdk",
    ),
    (
        "/usr/lib/vmidentity/tools/scripts/lstool.py",
        "http://localhost:7080/lookupservice/sdk",
    ),
];

/// One service of `lstool.py list`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LsService {
    /// `Service ID:`.
    pub service_id: String,
    /// `Owner ID:`.
    pub owner_id: String,
    /// Its endpoints.
    pub endpoints: Vec<LsEndpoint>,
}

/// One endpoint of an `lstool.py list` service.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LsEndpoint {
    /// `Type:`.
    pub endpoint_type: String,
    /// `URL:`.
    pub url: String,
    /// Every `SSL trust:` (base64 DER on one line), decoded.
    pub ssl_trust: Vec<Vec<u8>>,
}

/// Parses `lstool.py list` output (fixtures/real/vsphere/lstool-list_vum-plugin_vc70_cunnie.txt:
/// `Name:` opens a service, its fields one TAB in; `Endpoints:` then per endpoint `Type:`,
/// `Protocol:`, `URL:`, `SSL trust:` two TABs in; `Endpoint Attributes:`/`Attributes:` blocks).
/// Indentation is not relied on (blog renderers drop TABs). An `SSL trust:` that is not base64
/// is an error naming the service and URL.
pub fn parse_lstool_list(text: &str) -> Result<Vec<LsService>, String> {
    let mut out: Vec<LsService> = Vec::new();
    // Inside `Endpoints:` (until a service-level `Attributes:` or the next service).
    let mut in_endpoints = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        let Some((k, v)) = t.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => {
                out.push(LsService::default());
                in_endpoints = false;
            }
            "Service ID" | "Owner ID" => {
                let svc = out
                    .last_mut()
                    .ok_or_else(|| format!("line {}: {k} before any Name:", n + 1))?;
                if k == "Service ID" {
                    svc.service_id = v.to_owned();
                } else {
                    svc.owner_id = v.to_owned();
                }
            }
            "Endpoints" => in_endpoints = true,
            "Attributes" => in_endpoints = false,
            "Type" if in_endpoints => {
                if let Some(svc) = out.last_mut() {
                    svc.endpoints.push(LsEndpoint {
                        endpoint_type: v.to_owned(),
                        ..LsEndpoint::default()
                    });
                }
            }
            "URL" | "SSL trust" if in_endpoints => {
                let Some(svc) = out.last_mut() else { continue };
                let id = svc.service_id.clone();
                let Some(ep) = svc.endpoints.last_mut() else {
                    return Err(format!("line {}: {k} before any endpoint Type:", n + 1));
                };
                if k == "URL" {
                    ep.url = v.to_owned();
                } else {
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|e| {
                            format!(
                                "line {}: service {id} endpoint {}: SSL trust is not base64: {e}",
                                n + 1,
                                ep.url
                            )
                        })?;
                    ep.ssl_trust.push(der);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The Lookup Service's own view of the registrations, through `lstool.py list`.
struct Lstool {
    path: PathBuf,
    url: String,
}

impl Lstool {
    /// `None` where no `lstool.py` is installed (not a vCenter/PSC node).
    fn find(ctx: &ActContext<'_>) -> Option<Self> {
        let found = LSTOOLS.iter().find_map(|(p, url)| {
            let path = tool(ctx, "lstool.py", p);
            path.exists().then_some((path, *url))
        });
        match found {
            Some((path, url)) => Some(Lstool {
                path,
                url: ctx
                    .cfg
                    .setting("vsphere.lookupservice_url")
                    .unwrap_or(url)
                    .to_owned(),
            }),
            None => {
                (ctx.output)(
                    "lstool.py: not found; the Lookup Service's view of the registrations is not checked"
                        .into(),
                );
                None
            }
        }
    }

    /// After a Machine SSL change, as lsdoctor/`ls_update_certs.py` expect it: every endpoint
    /// at the PNID trusts `new`, and no endpoint anywhere trusts `old`.
    fn verify(
        &self,
        ctx: &ActContext<'_>,
        pnid: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<(), ActError> {
        let out = ctx.run_ok(
            &self.path,
            &["list", "--url", &self.url, "--no-check-cert"],
            None,
        )?;
        let services = parse_lstool_list(&out.stdout)
            .map_err(|e| ActError(format!("{} list: {e}", self.path.display())))?;
        let mut bad = Vec::new();
        let mut checked = 0;
        for svc in &services {
            for ep in &svc.endpoints {
                let at_pnid = uri_host(&ep.url).is_some_and(|h| h.eq_ignore_ascii_case(pnid));
                if ep.ssl_trust.iter().any(|t| t == old) {
                    bad.push(format!(
                        "{} {} still trusts the old certificate",
                        svc.service_id, ep.url
                    ));
                } else if at_pnid && !ep.ssl_trust.is_empty() {
                    checked += 1;
                    if !ep.ssl_trust.iter().any(|t| t == new) {
                        bad.push(format!(
                            "{} {} does not trust the new certificate",
                            svc.service_id, ep.url
                        ));
                    }
                }
            }
        }
        if !bad.is_empty() {
            return Err(ActError(format!(
                "Lookup Service (lstool.py list): {}",
                bad.join("; ")
            )));
        }
        (ctx.output)(format!(
            "Lookup Service (lstool.py list): {checked} endpoint(s) at {pnid} trust the new certificate, none the old one ({} service(s))",
            services.len()
        ));
        Ok(())
    }
}

// === Auto Deploy database ===

/// Auto Deploy's SQLite database: `/var/lib/rbd/db` up to 7.0 (vCert 4.13 `updateAutoDeployDB`,
/// Broadcom's vCert.py `update_auto_deploy_db` for 7.0), `/etc/vmware-rbd/db/db` from 8.0
/// (vCert.py). Whichever exists is used.
const AUTO_DEPLOY_DBS: [&str; 2] = ["/var/lib/rbd/db", "/etc/vmware-rbd/db/db"];
const SQLITE3: &str = "/usr/bin/sqlite3";
/// Auto Deploy in service-control (vmon calls it `rbd`).
const RBD_SERVICE: &str = "vmware-rbd-watchdog";

/// The Auto Deploy rows to change and where they live.
#[derive(Clone)]
struct AutoDeployPlan {
    sqlite: PathBuf,
    db: PathBuf,
    /// `vc_servers` (addr, thumbprint) before the change.
    old_rows: Vec<(String, String)>,
    new: String,
}

impl AutoDeployPlan {
    fn changed(&self) -> usize {
        self.old_rows.iter().filter(|(_, t)| *t != self.new).count()
    }

    fn new_rows(&self) -> Vec<(String, String)> {
        self.old_rows
            .iter()
            .map(|(a, _)| (a.clone(), self.new.clone()))
            .collect()
    }

    fn rows(&self, ctx: &ActContext<'_>) -> Result<Vec<(String, String)>, ActError> {
        let db = s(&self.db);
        let out = ctx.run_ok(
            &self.sqlite,
            &[
                "-separator",
                "|",
                &db,
                "select addr, thumbprint from vc_servers order by addr",
            ],
            None,
        )?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(a, t)| (a.trim().to_owned(), t.trim().to_owned()))
            .collect())
    }
}

/// vCert's `updateAutoDeployDB` applies only when Auto Deploy starts automatically
/// (`vmon-cli -s rbd` → `Starttype: AUTOMATIC`): then its database must carry the new Machine
/// SSL thumbprint (`AA:BB:…`). `None` when Auto Deploy is manual/absent or already current.
fn auto_deploy_plan(ctx: &ActContext<'_>, new: &str) -> Result<Option<AutoDeployPlan>, ActError> {
    let vmon = tool(ctx, "vmon-cli", VMON_CLI);
    let st = crate::exec::run(&vmon, &["-s", "rbd"], None, ctx.timeout)?;
    let start_type = st
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Starttype:").map(str::trim))
        .unwrap_or("");
    if st.code != Some(0) || start_type != "AUTOMATIC" {
        (ctx.output)(format!(
            "Auto Deploy (vmon rbd) starts {}: its database is left as it is (as vCert does)",
            if start_type.is_empty() {
                "never (not found)"
            } else {
                start_type
            }
        ));
        return Ok(None);
    }
    let db = AUTO_DEPLOY_DBS
        .iter()
        .map(|p| ctx.cfg.host_path(p))
        .find(|p| p.exists())
        .ok_or_else(|| {
            ActError(format!(
                "Auto Deploy starts automatically but neither {} exists",
                AUTO_DEPLOY_DBS.join(" nor ")
            ))
        })?;
    let mut plan = AutoDeployPlan {
        sqlite: tool(ctx, "sqlite3", SQLITE3),
        db,
        old_rows: Vec::new(),
        new: new.to_owned(),
    };
    plan.old_rows = plan.rows(ctx)?;
    (ctx.output)(format!(
        "Auto Deploy {}: {} of {} vc_servers row(s) differ from {new}",
        ctx.cfg.shown(&plan.db),
        plan.changed(),
        plan.old_rows.len()
    ));
    Ok((plan.changed() > 0).then_some(plan))
}

/// Sets `vc_servers` to `rows` (thumbprint by addr) the way vCert does it: Auto Deploy stopped
/// while the database changes (`service-control --stop vmware-rbd-watchdog` if vmon says it
/// runs), `sqlite3 <db> "update vc_servers set thumbprint = …"`, read back, started again.
/// Idempotent: setting the same rows twice changes nothing; the database file itself is in the
/// step's backup.
fn auto_deploy_set(
    ctx: &ActContext<'_>,
    plan: &AutoDeployPlan,
    rows: &[(String, String)],
) -> Result<(), ActError> {
    let sql = thumbprint_update("vc_servers", "addr", rows)?;
    let sc = tool(ctx, "service-control", SERVICE_CONTROL);
    let vmon = tool(ctx, "vmon-cli", VMON_CLI);
    let running = crate::exec::run(&vmon, &["-s", "rbd"], None, ctx.timeout)?
        .stdout
        .lines()
        .any(|l| l.trim() == "RunState: STARTED");
    if running {
        ctx.run_ok(&sc, &["--stop", RBD_SERVICE], None)?;
    }
    let db = s(&plan.db);
    let changed = ctx
        .run_ok(&plan.sqlite, &[&db, &sql], None)
        .and_then(|_| plan.rows(ctx));
    // Started again whatever happened: it is set to start automatically.
    let started = ctx.run_ok(&sc, &["--start", RBD_SERVICE], None);
    let now = changed?;
    started?;
    thumbprints_hold(
        &format!("Auto Deploy {} vc_servers", ctx.cfg.shown(&plan.db)),
        rows,
        &now,
    )
}

// === BACKUP_STORE clean-up ===

/// Stores certificate-manager and the vSphere Client fill with replaced certificates.
const BACKUP_STORES: [&str; 2] = ["BACKUP_STORE", "BACKUP_STORE_H5C"];

/// `vsphere.clean_backup_store`: once the new Machine SSL certificate is verified, removes the
/// replaced entries from `BACKUP_STORE`/`BACKUP_STORE_H5C`; expired ones there keep vCenter's
/// "Certificate Status" alarm red (seed 000: the operator deleted them by hand with
/// `vecs-cli entry delete --store BACKUP_STORE`). Refuses unless VECS `__MACHINE_CERT` is
/// valid and the endpoint serves it.
///
/// Idempotent: every entry is exported (certificate and key, 0600) into an agent backup before
/// anything is deleted (`certfleet-agent backups` keeps it; `vecs-cli entry create` puts one
/// back); a second run finds nothing left to delete. A resumed step keeps the first attempt's
/// backup ([`backup::create`]) and deletes what is left.
fn clean_backup_store(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let der = entry_cert(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT")?;
    let rec = certfleet_common::x509::parse_der(&der)
        .map_err(|e| ActError(format!("VECS MACHINE_SSL_CERT/__MACHINE_CERT: {e}")))?;
    if rec.not_after <= certfleet_common::model::now() {
        return Err(ActError(
            "VECS MACHINE_SSL_CERT/__MACHINE_CERT is expired: keeping BACKUP_STORE".into(),
        ));
    }
    if args
        .get("verify_endpoint")
        .and_then(Value::as_bool)
        .unwrap_or(true)
    {
        verify_served(ctx)?;
    }
    let stores = store_names(ctx)?;
    let dir = workdir(ctx)?;
    let mut targets = Vec::new();
    let mut saved = Vec::new();
    for store in BACKUP_STORES
        .iter()
        .filter(|b| stores.iter().any(|s| s == *b))
    {
        let listing = parse_entry_list(&vecs(ctx, &["entry", "list", "--store", store])?.stdout);
        for (i, e) in listing.entries.iter().enumerate() {
            let name = format!("{store}-{i}");
            let crt = dir.join(format!("{name}.crt"));
            vecs(
                ctx,
                &[
                    "entry",
                    "getcert",
                    "--store",
                    store,
                    "--alias",
                    &e.alias,
                    "--output",
                    &s(&crt),
                ],
            )?;
            saved.push(crt);
            if e.entry_type == "Private Key" {
                let key = dir.join(format!("{name}.key"));
                vecs(
                    ctx,
                    &[
                        "entry",
                        "getkey",
                        "--store",
                        store,
                        "--alias",
                        &e.alias,
                        "--output",
                        &s(&key),
                    ],
                )?;
                saved.push(key);
            }
            targets.push((store.to_string(), e.alias.clone()));
        }
    }
    if targets.is_empty() {
        if let Some(m) = ctx
            .resumed()
            .then(|| backup::find(ctx.state, ctx.step_id))
            .flatten()
        {
            return Ok(json!({
                "message": format!("the interrupted attempt removed every BACKUP_STORE entry (kept in agent backup {})", m.id),
                "removed": [],
                "backup_id": m.id,
            }));
        }
        return Ok(json!({"message": "no BACKUP_STORE entries to remove", "removed": []}));
    }
    let index = dir.join("backup-store-index.txt");
    let text: String = targets
        .iter()
        .enumerate()
        .map(|(i, (st, al))| format!("{i} {st} {al}\n"))
        .collect();
    write_file(&index, text.as_bytes(), PRIVATE)
        .map_err(|e| ActError(format!("{}: {e}", index.display())))?;
    saved.push(index);
    let manifest = backup::create(ctx.state, ctx.step_id, &saved)?;
    for f in &saved {
        let _ = std::fs::remove_file(f);
    }
    let mut removed = Vec::new();
    for (store, alias) in &targets {
        vecs(
            ctx,
            &["entry", "delete", "--store", store, "--alias", alias, "-y"],
        )?;
        if entry_exists(ctx, store, alias)? {
            return Err(ActError(format!(
                "vecs-cli entry delete --store {store} --alias {alias}: still listed"
            )));
        }
        removed.push(format!("{store}/{alias}"));
    }
    Ok(json!({
        "message": format!("removed {} replaced entr{} from {} (kept in agent backup {})",
            removed.len(), if removed.len() == 1 { "y" } else { "ies" },
            BACKUP_STORES.join("/"), manifest.id),
        "removed": removed,
        "backup_id": manifest.id,
    }))
}

// === solution users ===

/// Solution users of a VC/embedded node by version (§9.2); `hvc`/`wcp` only where VECS has them.
///
/// Order as documented (§9.2): every new certificate is issued and checked first; then per user
/// the vmdir service principal (`dir-cli service update`) and after it the VECS entry. Both are
/// then read back (vmdir with `ldapsearch` as the machine account, like vCert's MISMATCH check,
/// VECS with `vecs-cli entry getcert`) and must hold the new certificate. On any failure every
/// user already changed, and the failing one, gets its old certificate back in vmdir and VECS.
///
/// Idempotent by construction (resumed after an agent crash, see [`super::intent`]): each
/// user's new key and certificate live in the step's own work directory, and the certificate's
/// fingerprint and key are noted (`issued-<user>`) right after VMCA issued it, so a resumed step
/// reuses them: each user's certificate is issued once. The old VECS and vmdir certificates are
/// saved to files and an agent backup before the first change; once that backup exists a
/// resumed step reads them from it (never from the host, which may hold the new ones by then)
/// and never overwrites it. Per user, vmdir is written only unless it already holds the new
/// certificate (dir-cli refuses a certificate a principal holds) and VECS only unless its entry
/// already holds it (an entry deleted but not yet created is created); a finished user is noted
/// (`done-<user>`) and its key removed, VECS holding it. A resumed step therefore skips every
/// user whose vmdir `userCertificate` and VECS entry already hold the noted certificate and
/// continues with the rest; a user whose key is gone but whose host does not hold the new
/// certificate is refused (interrupted, needs operator). The `vpx_ext` rows come from their own
/// backup (`<step>-vpx_ext`) when the interrupted attempt took it, and setting them twice
/// changes nothing.
fn solution_users(ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    let pnid = pnid(ctx)?;
    let mid = machine_id(ctx)?;
    let stores = vecs(ctx, &["store", "list"])?.stdout;
    let wanted: Vec<String> = match args.get("users").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        None => [
            "machine",
            "vsphere-webclient",
            "vpxd",
            "vpxd-extension",
            "hvc",
            "wcp",
        ]
        .iter()
        .map(|u| u.to_string())
        .collect(),
    };
    let users: Vec<String> = wanted
        .into_iter()
        .filter(|u| stores.lines().any(|l| l.trim() == u))
        .collect();
    let sso = Sso::new(ctx)?;
    // fixcerts' precheck: the SSO password works and every principal exists (§9.0 step 4).
    let listed = sso.dir_cli(ctx, &["service", "list"])?;
    let principals: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once(". ").map(|(_, n)| n.trim()))
        .collect();
    let missing: Vec<String> = users
        .iter()
        .map(|u| format!("{u}-{mid}"))
        .filter(|n| !principals.contains(&n.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(ActError(format!(
            "dir-cli service list: no service principal {} in vmdir; not touching any solution user (lsdoctor will not recreate hvc/wcp, §9.2)",
            missing.join(", ")
        )));
    }
    let dir = workdir(ctx)?;
    // A resumed step whose first attempt completed its backup takes the old certificates from
    // there: the host may hold the new ones already.
    let earlier = ctx
        .resumed()
        .then(|| backup::find(ctx.state, ctx.step_id))
        .flatten();
    if let Some(m) = &earlier {
        (ctx.output)(format!(
            "backup {} of the interrupted attempt holds the solution users' old certificates",
            m.id
        ));
    }
    let mut backups = Vec::new();
    // One user: its new certificate (issued once per step) and its old ones saved. The key is
    // `None` when the interrupted attempt finished the user and removed it.
    let run = |u: &str,
               backups: &mut Vec<PathBuf>|
     -> Result<(PathBuf, Option<PathBuf>, i64), ActError> {
        let key = dir.join(format!("{u}.key"));
        let crt = dir.join(format!("{u}.crt"));
        let names = [
            format!("old-{u}.crt"),
            format!("old-{u}.key"),
            format!("old-{u}.vmdir.crt"),
        ];
        match &earlier {
            Some(m) => {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                restore_saved(ctx, m, &dir, &refs)?;
            }
            None => {
                export_entry(ctx, u, u, &dir, &format!("old-{u}"))?;
                // The old vmdir certificate (normally the same as VECS; kept separately for
                // rollback).
                let der = sso.principal_cert(ctx, &format!("{u}-{mid}"))?;
                write_file(
                    &dir.join(&names[2]),
                    certfleet_common::pem::encode("CERTIFICATE", &der).as_bytes(),
                    PRIVATE,
                )
                .map_err(|e| ActError(format!("{}: {e}", dir.join(&names[2]).display())))?;
            }
        }
        backups.extend(names.iter().map(|n| dir.join(n)));
        let key = match issued_earlier(ctx, u, &crt, &key)? {
            Earlier::Issued => Some(key),
            Earlier::KeyRemoved => None,
            Earlier::Nothing => {
                genkey(ctx, &dir, u)?;
                let ou = format!("--OrgUnit=mID-{mid}");
                let mut a = vec![
                    "--gencert".to_owned(),
                    "--server=localhost".into(),
                    format!("--Name={u}"),
                    "--genCIScert".into(),
                ];
                if u == "wcp" {
                    a.push("--dataencipherment".into());
                }
                a.extend([
                    format!("--privkey={}", s(&key)),
                    format!("--cert={}", s(&crt)),
                    "--config=/dev/null".into(),
                    "--Country=US".into(),
                    "--State=California".into(),
                    "--Locality=Palo Alto".into(),
                    "--Organization=VMware".into(),
                    ou,
                ]);
                if u != "wcp" {
                    a.push(format!("--FQDN={pnid}"));
                }
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                certool(ctx, &refs)?;
                note_issued(ctx, u, &crt)?;
                ctx.crash_point(&format!("after-issue-{u}"));
                Some(key)
            }
        };
        let not_after = check_cert(ctx, &crt, if u == "wcp" { None } else { Some(&pnid) })?;
        Ok((crt, key, not_after))
    };
    let mut issued = Vec::new();
    for u in &users {
        issued.push((u.clone(), run(u, &mut backups)?));
    }
    let manifest = match &earlier {
        Some(m) => m.clone(),
        None => backup::create(ctx.state, ctx.step_id, &backups)?,
    };
    ctx.crash_point("after-backup");
    // vmdir and VECS both hold `crt`?
    let check_both = |u: &str, crt: &Path| -> Result<(), ActError> {
        let want = read_cert(crt)?;
        let name = format!("{u}-{mid}");
        if sso.principal_cert(ctx, &name)? != want {
            return Err(ActError(format!(
                "vmdir cn={name},cn=ServicePrincipals does not hold {}",
                crt.display()
            )));
        }
        if entry_cert(ctx, u, u)? != want {
            return Err(ActError(format!(
                "VECS {u}/{u} does not hold {} (vmdir/VECS MISMATCH)",
                crt.display()
            )));
        }
        Ok(())
    };
    // Puts the old certificates back for `users`, skipping what already holds them: dir-cli
    // refuses to write a certificate a service principal already has (the same one included).
    let rollback = |users: &[String]| -> Vec<String> {
        let mut failed = Vec::new();
        for du in users {
            let old_vmdir = dir.join(format!("old-{du}.vmdir.crt"));
            let (oc, ok) = (
                dir.join(format!("old-{du}.crt")),
                dir.join(format!("old-{du}.key")),
            );
            let name = format!("{du}-{mid}");
            let r = read_cert(&old_vmdir).and_then(|want| {
                if sso.principal_cert(ctx, &name)? == want {
                    (ctx.output)(format!("vmdir {name} already holds the old certificate"));
                } else {
                    sso.dir_cli(
                        ctx,
                        &["service", "update", "--name", &name, "--cert", &s(&old_vmdir)],
                    )?;
                    if sso.principal_cert(ctx, &name)? != want {
                        return Err(ActError(format!(
                            "vmdir {name} does not hold the old certificate after dir-cli service update"
                        )));
                    }
                }
                let want = read_cert(&oc)?;
                if entry_cert(ctx, du, du).ok().as_deref() == Some(want.as_slice()) {
                    (ctx.output)(format!("VECS {du}/{du} already holds the old certificate"));
                    return Ok(());
                }
                replace_entry(ctx, du, du, &oc, &ok)?;
                expect_entry(ctx, du, du, &want)
            });
            if let Err(x) = r {
                failed.push(format!("{du}: {x}"));
            }
        }
        failed
    };
    // One user: vmdir first, VECS second, each skipped when it already holds the new
    // certificate (a resumed step), then both read back.
    let replace_user = |u: &str, crt: &Path, key: Option<&Path>| -> Result<(), ActError> {
        let want = read_cert(crt)?;
        let name = format!("{u}-{mid}");
        let in_vmdir = sso.principal_cert(ctx, &name)? == want;
        let in_vecs = entry_exists(ctx, u, u)? && entry_cert(ctx, u, u)? == want;
        if in_vmdir && in_vecs {
            (ctx.output)(format!(
                "solution user {u}: vmdir and VECS already hold the new certificate{}",
                if ctx.noted(&format!("done-{u}")).is_some() {
                    " (finished by the interrupted attempt)"
                } else {
                    ""
                }
            ));
            return check_both(u, crt);
        }
        let Some(key) = key else {
            return Err(ActError(format!(
                "solution user {u}: the key of {} is gone but vmdir/VECS do not hold it; \
                 interrupted, needs operator",
                crt.display()
            )));
        };
        if in_vmdir {
            (ctx.output)(format!("vmdir {name} already holds the new certificate"));
        } else {
            sso.dir_cli(
                ctx,
                &["service", "update", "--name", &name, "--cert", &s(crt)],
            )?;
        }
        ctx.crash_point(&format!("after-vmdir-{u}"));
        if in_vecs {
            (ctx.output)(format!("VECS {u}/{u} already holds the new certificate"));
        } else {
            if entry_exists(ctx, u, u)? {
                vecs(ctx, &["entry", "delete", "--store", u, "--alias", u, "-y"])?;
                ctx.crash_point(&format!("after-delete-{u}"));
            } else {
                (ctx.output)(format!("VECS {u} has no entry {u}; creating it"));
            }
            vecs(
                ctx,
                &[
                    "entry",
                    "create",
                    "--store",
                    u,
                    "--alias",
                    u,
                    "--cert",
                    &s(crt),
                    "--key",
                    &s(key),
                ],
            )?;
        }
        check_both(u, crt)
    };
    let mut done: Vec<String> = Vec::new();
    let mut result = serde_json::Map::new();
    for (u, (crt, key, not_after)) in &issued {
        if let Err(e) = replace_user(u, crt, key.as_deref()) {
            (ctx.output)(format!(
                "solution user {u}: {e}; restoring vmdir and VECS of {} user(s)",
                done.len() + 1
            ));
            let mut all = done.clone();
            all.push(u.clone());
            let undo = rollback(&all);
            return Err(ActError(format!(
                "solution user {u}: {e}; rolled back {} user(s) in vmdir and VECS{}",
                all.len(),
                if undo.is_empty() {
                    String::new()
                } else {
                    format!(" (ROLLBACK FAILED: {})", undo.join("; "))
                }
            )));
        }
        ctx.note(
            &format!("done-{u}"),
            json!(certfleet_common::pki::sha256_hex(&read_cert(crt)?)),
        )?;
        result.insert(u.clone(), json!(not_after));
        done.push(u.clone());
        if let Some(k) = key {
            let _ = std::fs::remove_file(k);
        }
        ctx.crash_point(&format!("after-user-{u}"));
    }
    // KB 57379: the extensions registered with the vpxd-extension certificate keep its old
    // thumbprint in VCDB vpx_ext until updated; EAM, Auto Deploy, Image Builder and vLCM break.
    let mut ext_rows = 0;
    if let Some((_, (crt, _, _))) = issued.iter().find(|(u, _)| u == "vpxd-extension")
        && let Some(db) = Vcdb::find(ctx)
    {
        let ext_backup = format!("{}-vpx_ext", ctx.step_id);
        let r = read_cert(crt).and_then(|der| {
            let tp = thumbprint(&der);
            let plan = match ctx
                .resumed()
                .then(|| backup::find(ctx.state, &ext_backup))
                .flatten()
            {
                Some(m) => saved_ext_plan(ctx, &m, &dir, VPXD_EXTENSION_EXTENSIONS, &tp)?,
                None => {
                    let plan = vpx_ext_plan(ctx, &db, &dir, VPXD_EXTENSION_EXTENSIONS, &tp)?;
                    if let Some(p) = &plan {
                        backup::create(ctx.state, &ext_backup, std::slice::from_ref(&p.backup))?;
                    }
                    plan
                }
            };
            if let Some(p) = &plan {
                if let Err(e) = vpx_ext_apply(ctx, &db, p) {
                    let back = vpx_ext_set(ctx, &db, &p.old_rows)
                        .err()
                        .map(|b| format!(" (vpx_ext ROLLBACK FAILED: {b})"))
                        .unwrap_or_default();
                    return Err(ActError(format!("{e}{back}")));
                }
                ext_rows = p.changed();
            }
            Ok(())
        });
        if let Err(e) = r {
            let undo = rollback(&done);
            return Err(ActError(format!(
                "VCDB vpx_ext: {e}; rolled back {} solution user(s) in vmdir and VECS{}",
                done.len(),
                if undo.is_empty() {
                    String::new()
                } else {
                    format!(" (ROLLBACK FAILED: {})", undo.join("; "))
                }
            )));
        }
    }
    Ok(json!({
        "message": format!(
            "replaced solution users {} in vmdir and VECS (both checked); {ext_rows} vpx_ext thumbprint(s) updated",
            users.join(", ")
        ),
        "not_after": result,
        "backup_id": manifest.id,
    }))
}

/// SSO access for solution users: `dir-cli` as the SSO administrator, `ldapsearch` as the
/// machine account (read-back of `cn=<user>-<machine-id>,cn=ServicePrincipals,<dn>`).
struct Sso {
    login: String,
    password: String,
    acct: MachineAccount,
    base: String,
    uri: String,
    pwfile: PathBuf,
}

impl Sso {
    fn new(ctx: &ActContext<'_>) -> Result<Self, ActError> {
        let password = sso_password(ctx)?;
        let acct = machine_account(ctx)?;
        let (domain, _) = ldap_bases(&acct.dn);
        let user = ctx
            .cfg
            .setting("vsphere.sso_user")
            .unwrap_or("administrator");
        let login = if user.contains('@') {
            user.to_owned()
        } else {
            format!("{user}@{domain}")
        };
        let dcs: Vec<&str> = acct
            .dn
            .split(',')
            .map(str::trim)
            .filter(|p| p.to_ascii_lowercase().starts_with("dc="))
            .collect();
        let base = format!("cn=ServicePrincipals,{}", dcs.join(","));
        let pwfile = workdir(ctx)?.join("machine-account.pw");
        write_private(&pwfile, acct.password.as_bytes())
            .map_err(|e| ActError(format!("{}: {e}", pwfile.display())))?;
        let uri = ctx
            .cfg
            .setting("vsphere.ldap_uri")
            .unwrap_or("ldap://localhost:389")
            .to_owned();
        Ok(Sso {
            login,
            password,
            acct,
            base,
            uri,
            pwfile,
        })
    }

    /// `dir-cli ARGS --login … --password …`, the password masked in the step output.
    fn dir_cli(&self, ctx: &ActContext<'_>, args: &[&str]) -> Result<String, ActError> {
        let bin = tool(ctx, "dir-cli", DIR_CLI);
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--login", &self.login, "--password", &self.password]);
        let shown = crate::exec::command_line(&bin, &a).replace(&self.password, "****");
        (ctx.output)(format!("$ {shown}"));
        let out = crate::exec::run_ok(&bin, &a, None, ctx.timeout)
            .map_err(|e| ActError(e.to_string().replace(&self.password, "****")))?;
        for l in out.stdout.lines() {
            (ctx.output)(l.to_owned());
        }
        Ok(out.stdout)
    }

    /// The `userCertificate` (DER) of service principal `name` in vmdir.
    fn principal_cert(&self, ctx: &ActContext<'_>, name: &str) -> Result<Vec<u8>, ActError> {
        let dn = format!("cn={name},{}", self.base);
        let out = ctx.run_ok(
            &crate::collect::vsphere::ldap_tool(ctx.cfg, "ldapsearch"),
            &[
                "-o",
                "ldif-wrap=no",
                "-LLL",
                "-x",
                "-H",
                &self.uri,
                "-D",
                &self.acct.dn,
                "-y",
                &s(&self.pwfile),
                "-b",
                &dn,
                "-s",
                "base",
                "(objectclass=*)",
                "userCertificate",
            ],
            None,
        )?;
        let entries =
            parse_ldif(&out.stdout).map_err(|e| ActError(format!("ldapsearch {dn}: {e}")))?;
        entries
            .into_iter()
            .flat_map(|(_, attrs)| attrs)
            .find(|(a, _)| a.eq_ignore_ascii_case("userCertificate"))
            .map(|(_, v)| v)
            .ok_or_else(|| ActError(format!("vmdir {dn}: no userCertificate")))
    }
}

impl Drop for Sso {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pwfile);
    }
}

// === STS ===

struct MachineAccount {
    dn: String,
    password: String,
}

fn machine_account(ctx: &ActContext<'_>) -> Result<MachineAccount, ActError> {
    let lw = tool(ctx, "lwregshell", LWREGSHELL);
    let key = r"[HKEY_THIS_MACHINE\services\vmdir]";
    (ctx.output)(format!(
        "$ {}",
        crate::exec::command_line(&lw, &["list_values", key])
    ));
    let out = crate::exec::run_ok(&lw, &["list_values", key], None, ctx.timeout)?;
    let v = parse_lwreg(&out.stdout);
    let get = |n: &str| {
        v.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, x)| x.clone())
    };
    match (get("dcAccountDN"), get("dcAccountPassword")) {
        (Some(dn), Some(password)) => Ok(MachineAccount { dn, password }),
        _ => Err(ActError(format!(
            "lwregshell {key}: no dcAccountDN/dcAccountPassword"
        ))),
    }
}

fn ldap_bases(dn: &str) -> (String, String) {
    let dcs: Vec<&str> = dn
        .split(',')
        .map(str::trim)
        .filter(|p| p.to_ascii_lowercase().starts_with("dc="))
        .collect();
    let domain = dcs.iter().map(|p| &p[3..]).collect::<Vec<_>>().join(".");
    (
        domain.clone(),
        format!(
            "cn={domain},cn=Tenants,cn=IdentityManager,cn=Services,{}",
            dcs.join(",")
        ),
    )
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `vsphere.sts`: replaces the STS signing certificate in vmdir the way fixsts.sh and vCert do.
///
/// Reads the tenant as the machine account; writes (one LDIF deleting every
/// `TenantCredential-N`/`TrustedCertChain-N` and adding `-1` with `objectClass: top`, as vCert
/// writes it) as the SSO administrator, as both scripts do. The old entries are saved as an LDIF
/// (and an agent backup) before the change; a failed check puts them back.
///
/// Idempotent by construction (resumed after an agent crash, see [`super::intent`]): the new
/// key and certificate live in the step's own work directory and the certificate's fingerprint
/// and key are noted in the intent journal right after VMCA issued it, so a resumed step reuses
/// them and never asks VMCA twice. Once the backup exists a resumed step takes the old entries
/// from it (never from vmdir, which may hold the new ones by then) and never overwrites it.
/// The LDIF is then built from what vmdir holds now ([`sts_converge_ldif`]): an entry
/// `TenantCredential-1`/`TrustedCertChain-1` that already holds this step's certificate is
/// kept, every other entry is deleted, and only what is missing is added, so a second
/// `TenantCredential` is never created (the "Amount of tenant credentials: 1" check of
/// fixsts.sh). An entry that is neither in the backup nor this step's (another node or an
/// operator wrote it meanwhile) makes the step refuse. The key leaves the work directory only
/// when the step ends; a resumed step that finds it gone and vmdir not holding the new
/// credential refuses (interrupted, needs operator).
fn sts(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let reader = Ldap::machine_account(ctx)?;
    let writer = Ldap::administrator(ctx)?;
    let (_domain, tenant) = ldap_bases(&reader.bind_dn);
    let pnid = pnid(ctx)?;
    let dir = workdir(ctx)?;
    let filter =
        "(|(objectclass=vmwSTSTenantCredential)(objectclass=vmwSTSTenantTrustedCertificateChain))";
    let search = || reader.search(ctx, &tenant, filter, &[]);

    // 1. key + VMCA-signed ssoserverSign certificate (vCert's certool.cfg, §5.3), once per step.
    let cfg = dir.join("certool.cfg");
    write_file(
        &cfg,
        format!(
            "Country = US\nName = ssoserverSign\nOrganization = VMware\nOrgUnit = VMware\n\
             State = California\nLocality = Palo Alto\nHostname = {pnid}\n"
        )
        .as_bytes(),
        0o600,
    )
    .map_err(|e| ActError(e.to_string()))?;
    let key = dir.join("sts.key");
    let crt = dir.join("sts.cer");
    let have_key = match issued_earlier(ctx, "sts", &crt, &key)? {
        Earlier::Issued => true,
        Earlier::KeyRemoved => false,
        Earlier::Nothing => {
            genkey(ctx, &dir, "sts")?;
            certool(
                ctx,
                &[
                    "--gencert",
                    &format!("--cert={}", s(&crt)),
                    &format!("--privkey={}", s(&key)),
                    &format!("--config={}", s(&cfg)),
                    "--server=localhost",
                ],
            )?;
            note_issued(ctx, "sts", &crt)?;
            true
        }
    };
    ctx.crash_point("after-issue");
    let not_after = check_cert(ctx, &crt, None)?;
    let sts_der = read_cert(&crt)?;
    let root_pem = std::fs::read(ctx.cfg.host_path(VMCA_ROOT))
        .map_err(|e| ActError(format!("{VMCA_ROOT}: {e}")))?;
    let chain = certfleet_common::pem::certificates(&root_pem)
        .map_err(|e| ActError(format!("{VMCA_ROOT}: {e}")))?;
    let key_der = if have_key {
        Some(
            certfleet_common::pem::decode_all(
                &std::fs::read(&key).map_err(|e| ActError(format!("{}: {e}", key.display())))?,
            )
            .map_err(|e| ActError(format!("{}: {e}", key.display())))?
            .into_iter()
            .find(|(l, _)| l == "PRIVATE KEY")
            .map(|(_, d)| d)
            .ok_or_else(|| ActError(format!("{}: not a PKCS#8 key", key.display())))?,
        )
    } else {
        None
    };

    // 2. back up every TenantCredential-N / TrustedCertChain-N (LDIF, as fixsts.sh step 8);
    // a resumed step keeps the first attempt's backup and reads the old entries from it.
    let backup_file = dir.join("sts-backup.ldif");
    let earlier = ctx
        .resumed()
        .then(|| backup::find(ctx.state, ctx.step_id))
        .flatten();
    let (old, manifest) = match earlier {
        Some(m) => {
            (ctx.output)(format!(
                "backup {} of the interrupted attempt holds the tenant credentials from before it",
                m.id
            ));
            restore_saved(ctx, &m, &dir, &["sts-backup.ldif"])?;
            let text = std::fs::read_to_string(&backup_file)
                .map_err(|e| ActError(format!("{}: {e}", backup_file.display())))?;
            let old = parse_ldif(&text)
                .map_err(|e| ActError(format!("{}: {e}", backup_file.display())))?;
            (old, m)
        }
        None => {
            let old = search()?;
            if old.is_empty() {
                return Err(ActError(format!(
                    "vmdir {tenant}: no STS tenant credentials found"
                )));
            }
            let mut backup_ldif = String::new();
            for (dn, attrs) in &old {
                backup_ldif.push_str(&format!("dn: {dn}\nchangetype: add\n"));
                for (a, v) in attrs {
                    backup_ldif.push_str(&format!("{a}:: {}\n", b64(v)));
                }
                backup_ldif.push('\n');
            }
            write_private(&backup_file, backup_ldif.as_bytes())
                .map_err(|e| ActError(e.to_string()))?;
            let m = backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&backup_file))?;
            (old, m)
        }
    };
    ctx.crash_point("after-backup");

    // 3. one LDIF: delete them all, add TenantCredential-1 and TrustedCertChain-1 (§5.3 step 9),
    // less what vmdir already holds of this step's change (a resumed step).
    let now = search()?;
    let ldif = sts_converge_ldif(
        &tenant,
        &now,
        &old,
        &sts_der,
        &chain,
        key_der.as_deref(),
        &manifest.id,
    )?;
    let applied = if ldif.is_empty() {
        (ctx.output)(format!(
            "vmdir {tenant} already holds only this step's TenantCredential-1 and TrustedCertChain-1"
        ));
        Ok(())
    } else {
        let ldif_file = dir.join("sso-sts.ldif");
        write_private(&ldif_file, ldif.as_bytes()).map_err(|e| ActError(e.to_string()))?;
        writer.modify(ctx, &ldif_file, false)
    };
    ctx.crash_point("after-modify");

    // 4. verify like checksts: the active signing certificate is the new one and valid, and it
    // is the only tenant credential and trusted chain.
    let verify = || -> Result<(), ActError> {
        applied.as_ref().map_err(|e| ActError(e.0.clone()))?;
        let now = search()?;
        let only_new = |prefix: &str| {
            let found: Vec<_> = now
                .iter()
                .filter(|(dn, _)| dn.to_ascii_lowercase().starts_with(prefix))
                .collect();
            found.len() == 1
                && found[0]
                    .1
                    .iter()
                    .any(|(a, v)| a.eq_ignore_ascii_case("userCertificate") && v == &sts_der)
        };
        if !only_new("cn=tenantcredential-") {
            return Err(ActError(format!(
                "vmdir {tenant}: the active TenantCredential does not hold the new ssoserverSign certificate"
            )));
        }
        if !only_new("cn=trustedcertchain-") {
            return Err(ActError(format!(
                "vmdir {tenant}: the TrustedCertChain does not hold the new ssoserverSign certificate"
            )));
        }
        Ok(())
    };
    let result = verify();
    let _ = std::fs::remove_file(&key);
    if let Err(e) = result {
        // Undo: remove whatever -1 entries exist, put the backed-up entries back.
        let mut undo = String::new();
        for dn in [
            format!("cn=TenantCredential-1,{tenant}"),
            format!("cn=TrustedCertChain-1,cn=TrustedCertificateChains,{tenant}"),
        ] {
            undo.push_str(&format!("dn: {dn}\nchangetype: delete\n\n"));
        }
        let undo_file = dir.join("sts-undo.ldif");
        let _ = write_file(&undo_file, undo.as_bytes(), PRIVATE);
        let _ = writer.modify(ctx, &undo_file, true);
        let restored = writer.modify(ctx, &backup_file, false);
        return Err(ActError(match restored {
            Ok(_) => format!("STS: {e}; restored the previous tenant credentials"),
            Err(r) => format!(
                "STS: {e}; RESTORE FAILED ({r}); backup LDIF {}",
                backup_file.display()
            ),
        }));
    }
    Ok(json!({
        "message": format!("STS signing certificate replaced in vmdir; valid until {not_after}; restart services on every node of the SSO domain"),
        "fingerprint": certfleet_common::pki::sha256_hex(&sts_der),
        "not_after": not_after,
        "backup_id": manifest.id,
    }))
}

/// The `userCertificate` values of an LDIF entry.
fn user_certs(attrs: &[(String, Vec<u8>)]) -> Vec<&[u8]> {
    attrs
        .iter()
        .filter(|(a, _)| a.eq_ignore_ascii_case("userCertificate"))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The LDIF that takes the STS tenant from what vmdir holds `now` to exactly one
/// `TenantCredential-1` and one `TrustedCertChain-1` holding `sts` (leaf, then `chain`):
/// every other entry deleted first, then only the missing `-1` entries added. Empty when vmdir
/// holds exactly that already. Refuses when `now` holds an entry that is neither this step's
/// nor in the backup `old` with the same certificates (someone else changed the tenant since
/// the backup), or when an entry must be added but the key is gone (`key` `None`).
fn sts_converge_ldif(
    tenant: &str,
    now: &[crate::collect::vsphere::LdifEntry],
    old: &[crate::collect::vsphere::LdifEntry],
    sts: &[u8],
    chain: &[Vec<u8>],
    key: Option<&[u8]>,
    backup_id: &str,
) -> Result<String, ActError> {
    let cred_dn = format!("cn=TenantCredential-1,{tenant}");
    let chain_dn = format!("cn=TrustedCertChain-1,cn=TrustedCertificateChains,{tenant}");
    let ours = |dn: &str, attrs: &[(String, Vec<u8>)]| {
        (dn.eq_ignore_ascii_case(&cred_dn) || dn.eq_ignore_ascii_case(&chain_dn))
            && user_certs(attrs).contains(&sts)
    };
    let mut ldif = String::new();
    let (mut have_cred, mut have_chain) = (false, false);
    for (dn, attrs) in now {
        if ours(dn, attrs) {
            have_cred |= dn.eq_ignore_ascii_case(&cred_dn);
            have_chain |= dn.eq_ignore_ascii_case(&chain_dn);
            continue;
        }
        let backed_up = old
            .iter()
            .any(|(o, oa)| o.eq_ignore_ascii_case(dn) && user_certs(oa) == user_certs(attrs));
        if !backed_up {
            return Err(ActError(format!(
                "vmdir {dn} holds a certificate that neither backup {backup_id} nor this step \
                 wrote: the STS tenant was changed by someone else meanwhile; interrupted, needs \
                 operator"
            )));
        }
        ldif.push_str(&format!("dn: {dn}\nchangetype: delete\n\n"));
    }
    if !have_cred {
        let Some(key) = key else {
            return Err(ActError(format!(
                "vmdir {tenant} does not hold this step's TenantCredential-1 and its key is gone \
                 (the interrupted attempt ended and removed it): interrupted, needs operator"
            )));
        };
        ldif.push_str(&format!(
            "dn: {cred_dn}\nchangetype: add\nobjectClass: vmwSTSTenantCredential\nobjectClass: top\ncn: TenantCredential-1\nuserCertificate:: {}\n",
            b64(sts)
        ));
        for c in chain {
            ldif.push_str(&format!("userCertificate:: {}\n", b64(c)));
        }
        ldif.push_str(&format!("vmwSTSPrivateKey:: {}\n\n", b64(key)));
    }
    if !have_chain {
        ldif.push_str(&format!(
            "dn: {chain_dn}\nchangetype: add\nobjectClass: vmwSTSTenantTrustedCertificateChain\nobjectClass: top\ncn: TrustedCertChain-1\nuserCertificate:: {}\n",
            b64(sts)
        ));
        for c in chain {
            ldif.push_str(&format!("userCertificate:: {}\n", b64(c)));
        }
    }
    Ok(ldif)
}

// === services ===

/// `service-control --status --all` parsed: heading (`Running`, `Stopped`, `StartPending`) by
/// service. The real layout puts each heading on its own line and the names on the next one(s),
/// sometimes indented (fixtures/real/vsphere/service-control-status_*.txt).
pub fn parse_service_status(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut heading = String::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(h) = t.strip_suffix(':').filter(|h| !h.contains(' ')) {
            heading = h.to_owned();
        } else if !heading.is_empty() {
            for n in t.split_whitespace() {
                out.insert(n.to_owned(), heading.clone());
            }
        }
    }
    out
}

/// Services vCert checks after a restart with `vmon-cli -s` (where the appliance has them) and
/// with systemd.
const VMON_MUST_RUN: [&str; 3] = ["envoy", "rhttpproxy", "vmware-vpostgres"];
const SYSTEMD_MUST_RUN: [&str; 2] = ["vmafdd", "vmdird"];
const DEFAULT_START_PROFILE: &str = "/storage/vmware-vmon/defaultStartProfile";
const VMON_CLI: &str = "/usr/lib/vmware-vmon/vmon-cli";
const SYSTEMCTL: &str = "/usr/bin/systemctl";

/// Restarts every service the way vCert does and checks the result against the status before.
///
/// `--status --all` first (what runs now), `--stop --all`, `--start --all` (with
/// `--vmon-profile HAActive` when `/storage/vmware-vmon/defaultStartProfile` says `HACore`, a
/// vCenter HA node). A failing `--start --all` can be transient (RC=5 while services are still
/// `StartPending`, a real capture), so it is not an error by itself: `--status --all` is polled
/// until every service that ran before runs again (manual-start services that were `Stopped:`
/// may stay stopped). Then vCert's checks: `vmon-cli -s` of envoy, rhttpproxy and
/// vmware-vpostgres (those vmon knows) must say `RunState: STARTED`, `systemctl is-active`
/// vmafdd and vmdird must say `active`. Idempotent: a restart can always be repeated (a
/// resumed `vsphere.restart_services` restarts again rather than guess whether the first
/// attempt's restart happened).
fn restart_services(ctx: &ActContext<'_>) -> Result<(), ActError> {
    let sc = tool(ctx, "service-control", SERVICE_CONTROL);
    let before = parse_service_status(&ctx.run_ok(&sc, &["--status", "--all"], None)?.stdout);
    let must_run: Vec<&String> = before
        .iter()
        .filter(|(_, h)| h.as_str() == "Running")
        .map(|(n, _)| n)
        .collect();
    if must_run.is_empty() {
        return Err(ActError(
            "service-control --status --all listed no running service; not restarting".into(),
        ));
    }
    let profile_file = ctx.cfg.host_path(DEFAULT_START_PROFILE);
    let hacore = std::fs::read_to_string(&profile_file).is_ok_and(|p| p.trim() == "HACore");
    ctx.run_ok(&sc, &["--stop", "--all"], None)?;
    let mut start = vec!["--start", "--all"];
    if hacore {
        (ctx.output)(format!(
            "{}: HACore (vCenter HA): starting with --vmon-profile HAActive",
            profile_file.display()
        ));
        start.extend(["--vmon-profile", "HAActive"]);
    }
    let started = ctx.run_ok(&sc, &start, None);
    if let Err(e) = &started {
        (ctx.output)(format!(
            "{e}: may be transient (services still starting); checking --status --all"
        ));
    }
    let deadline = std::time::Instant::now() + ctx.timeout.min(Duration::from_secs(120));
    loop {
        let st = crate::exec::run_ok(&sc, &["--status", "--all"], None, ctx.timeout)?;
        let now = parse_service_status(&st.stdout);
        let down: Vec<String> = must_run
            .iter()
            .filter(|n| now.get(n.as_str()).map(String::as_str) != Some("Running"))
            .map(|n| {
                format!(
                    "{n} ({})",
                    now.get(n.as_str()).map(String::as_str).unwrap_or("missing")
                )
            })
            .collect();
        if down.is_empty() {
            (ctx.output)(format!(
                "service-control --status --all: the {} services running before run again",
                must_run.len()
            ));
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(ActError(format!(
                "service-control: running before the restart, not running after --start --all: {}{}",
                down.join(" "),
                started
                    .as_ref()
                    .err()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    check_core_services(ctx)
}

/// vCert's post-restart checks: `vmon-cli -s` for envoy/rhttpproxy/vmware-vpostgres where vmon
/// has them, `systemctl is-active` for vmafdd and vmdird.
fn check_core_services(ctx: &ActContext<'_>) -> Result<(), ActError> {
    let vmon = tool(ctx, "vmon-cli", VMON_CLI);
    let known = crate::exec::run_ok(&vmon, &["--list"], None, ctx.timeout)?;
    let mut bad = Vec::new();
    for svc in VMON_MUST_RUN {
        if !known.stdout.lines().any(|l| l.trim() == svc) {
            continue;
        }
        let out = ctx.run_ok(&vmon, &["-s", svc], None)?;
        let state = out
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("RunState:").map(str::trim))
            .unwrap_or("");
        if state != "STARTED" {
            bad.push(format!("vmon-cli -s {svc}: RunState {state:?}"));
        }
    }
    let systemctl = tool(ctx, "systemctl", SYSTEMCTL);
    for unit in SYSTEMD_MUST_RUN {
        let out = crate::exec::run(&systemctl, &["is-active", unit], None, ctx.timeout)?;
        let state = out.stdout.trim();
        (ctx.output)(format!("$ systemctl is-active {unit}: {state}"));
        if state != "active" {
            bad.push(format!("systemctl is-active {unit}: {state:?}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ActError(format!("after the restart: {}", bad.join("; "))))
    }
}

/// The endpoint (`vsphere.https_address`) serves VECS `__MACHINE_CERT`; returns its fingerprint.
fn verify_served(ctx: &ActContext<'_>) -> Result<String, ActError> {
    let der = entry_cert(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT")?;
    let fp = certfleet_common::pki::sha256_hex(&der);
    let address = ctx
        .cfg
        .setting("vsphere.https_address")
        .unwrap_or("127.0.0.1:443")
        .to_owned();
    let mut last = None;
    for _ in 0..5 {
        match super::generic::verify_endpoint(ctx, &address, &fp) {
            Ok(()) => return Ok(fp),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| ActError("endpoint not checked".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The STS tenant from every state an interrupted replacement can leave (ldapmodify
    /// applies its LDIF entry by entry): what is missing is added, what is this step's is kept,
    /// a second credential is never written, and an entry nobody backed up is refused.
    #[test]
    fn sts_converge_ldif_finishes_any_partial_replacement_and_never_adds_a_second_credential() {
        let t = "cn=vsphere.local,cn=Tenants,cn=IdentityManager,cn=Services,dc=vsphere,dc=local";
        let cred = |n: u32, cert: &[u8]| -> crate::collect::vsphere::LdifEntry {
            (
                format!("cn=TenantCredential-{n},{t}"),
                vec![
                    ("cn".into(), format!("TenantCredential-{n}").into_bytes()),
                    ("userCertificate".into(), cert.to_vec()),
                    ("userCertificate".into(), b"root".to_vec()),
                ],
            )
        };
        let chain = |n: u32, cert: &[u8]| -> crate::collect::vsphere::LdifEntry {
            (
                format!("cn=TrustedCertChain-{n},cn=TrustedCertificateChains,{t}"),
                vec![
                    ("userCertificate".into(), cert.to_vec()),
                    ("userCertificate".into(), b"root".to_vec()),
                ],
            )
        };
        let (old1, old2, new) = (b"old-1".as_slice(), b"old-2".as_slice(), b"new".as_slice());
        let backup = vec![cred(1, old1), cred(2, old2), chain(1, old1), chain(2, old2)];
        let roots = vec![b"root".to_vec()];
        let conv = |now: &[crate::collect::vsphere::LdifEntry], key: Option<&[u8]>| {
            sts_converge_ldif(t, now, &backup, new, &roots, key, "p1-2")
        };
        let count = |l: &str, what: &str| l.matches(what).count();

        // Untouched: everything deleted, both -1 entries added.
        let l = conv(&backup, Some(b"key")).unwrap();
        assert_eq!(count(&l, "changetype: delete"), 4, "{l}");
        assert_eq!(count(&l, "changetype: add"), 2, "{l}");
        assert!(
            l.find("changetype: delete") < l.find("changetype: add"),
            "{l}"
        );
        assert_eq!(count(&l, "dn: cn=TenantCredential-1,"), 2, "{l}");
        assert_eq!(count(&l, "cn: TenantCredential-"), 1, "{l}");
        // Part of the deletes done.
        let l = conv(&[cred(2, old2), chain(2, old2)], Some(b"key")).unwrap();
        assert_eq!(count(&l, "changetype: delete"), 2, "{l}");
        assert_eq!(count(&l, "changetype: add"), 2, "{l}");
        // Every delete and the new credential done, the chain not yet: only the chain is added.
        let l = conv(&[cred(1, new)], Some(b"key")).unwrap();
        assert_eq!(count(&l, "changetype: delete"), 0, "{l}");
        assert_eq!(count(&l, "changetype: add"), 1, "{l}");
        assert!(l.contains("dn: cn=TrustedCertChain-1,"), "{l}");
        assert!(!l.contains("vmwSTSPrivateKey"), "{l}");
        // Done (the key already removed): nothing to write.
        assert_eq!(conv(&[cred(1, new), chain(1, new)], None).unwrap(), "");
        // Nothing of ours there and the key gone: refused, not a credential without its key.
        let e = conv(&backup, None).unwrap_err();
        assert!(e.0.contains("needs operator"), "{e}");
        // A credential someone else wrote since the backup: refused.
        let e = conv(&[cred(1, b"other"), chain(1, old1)], Some(b"key")).unwrap_err();
        assert!(e.0.contains("someone else") && e.0.contains("p1-2"), "{e}");
        let e = conv(&[cred(3, new), chain(1, new)], Some(b"key")).unwrap_err();
        assert!(e.0.contains("TenantCredential-3"), "{e}");
    }

    fn capture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../integration-tests/fixtures/real/vsphere")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn with(status: &std::collections::BTreeMap<String, String>, heading: &str) -> Vec<String> {
        status
            .iter()
            .filter(|(_, h)| h.as_str() == heading)
            .map(|(n, _)| n.clone())
            .collect()
    }

    const MANUAL: [&str; 7] = [
        "vmcam",
        "vmware-imagebuilder",
        "vmware-mbcs",
        "vmware-netdumper",
        "vmware-rbd-watchdog",
        "vmware-vcha",
        "vsan-dps",
    ];

    #[test]
    fn service_status_of_real_appliances() {
        // Indented names, Running first (6.7 vCenter).
        let st = parse_service_status(&capture("service-control-status_6.7_vcenter-dc1.txt"));
        assert_eq!(with(&st, "Stopped"), MANUAL);
        assert_eq!(with(&st, "Running").len(), 32);
        assert_eq!(st["vmware-vpxd"], "Running");
        // Stopped first (right after a restart).
        let st = parse_service_status(&capture(
            "service-control-status_after-restart_photon-machine.txt",
        ));
        assert_eq!(with(&st, "Stopped"), MANUAL);
        assert_eq!(st["vmware-rhttpproxy"], "Running");
        // The transient RC=5 capture: StartPending, names not indented.
        let text = capture("service-control-start-all-RC5_and_status-all_startpending.txt");
        let status = &text[text.find("StartPending:").unwrap()..];
        let st = parse_service_status(status);
        assert_eq!(
            with(&st, "StartPending"),
            ["vmware-content-library", "vmware-perfcharts"]
        );
        assert_eq!(with(&st, "Stopped"), MANUAL);
        assert_eq!(st["vmware-vpxd"], "Running");
        // 6.5 PSC: only Running.
        let text = capture("service-control_psc6.5_status_and_stop-vmdird.txt");
        let status: String = text
            .lines()
            .skip(1)
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect();
        let st = parse_service_status(&status);
        assert!(st.values().all(|h| h == "Running") && st.contains_key("vmdird"));
    }

    #[test]
    fn plain_vecs_listing_has_the_aliases() {
        let l = parse_entry_list(&capture("vecs-cli-entry-list_SMS_6.7_metasploit.txt"));
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.entries[0].alias, "sms_self_signed");
        assert_eq!(l.entries[0].entry_type, "Private Key");
    }

    #[test]
    fn thumbprint_is_uppercase_sha1_with_colons() {
        let pem = capture("vmca-root_photon-machine_metasploit.pem");
        let der = certfleet_common::pem::first_certificate(pem.as_bytes()).unwrap();
        let t = thumbprint(&der);
        assert_eq!(t.len(), 59);
        assert!(t.split(':').all(|b| {
            b.len() == 2
                && b.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        }));
    }

    #[test]
    fn lstool_list_of_a_real_vcenter() {
        let l = parse_lstool_list(&capture("lstool-list_vum-plugin_vc70_cunnie.txt")).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].service_id, "29f99f31-afd8-419b-8803-f899362209f6");
        assert_eq!(
            l[0].owner_id,
            "vpxd-extension-23be793a-68b2-4f05-993c-c38f9cb1f391@vsphere.local"
        );
        assert_eq!(l[0].endpoints.len(), 1);
        let ep = &l[0].endpoints[0];
        assert_eq!(ep.endpoint_type, "com.vmware.cis.vsphereclient.plugin");
        assert_eq!(
            ep.url,
            "https://vcenter-70.nono.io:9087/vci/downloads/vum-htmlclient.zip"
        );
        assert_eq!(ep.ssl_trust.len(), 1);
        let rec = certfleet_common::x509::parse_der(&ep.ssl_trust[0]).unwrap();
        assert!(
            rec.subject.contains("vcenter-70.nono.io"),
            "{}",
            rec.subject
        );
        assert_eq!(uri_host(&ep.url), Some("vcenter-70.nono.io"));
        // Without the TABs (as blogs print it) the same; a broken trust names where.
        let flat: String = capture("lstool-list_vum-plugin_vc70_cunnie.txt")
            .lines()
            .map(|l| format!("{}\n", l.trim_start()))
            .collect();
        assert_eq!(parse_lstool_list(&flat).unwrap(), l);
        let broken = flat.replace("SSL trust: MII", "SSL trust: *MII");
        let e = parse_lstool_list(&broken).unwrap_err();
        assert!(e.contains("29f99f31") && e.contains(":9087/vci"), "{e}");
    }

    #[test]
    fn uri_hosts() {
        assert_eq!(
            uri_host("https://vc.lab.local:443/sdk"),
            Some("vc.lab.local")
        );
        assert_eq!(
            uri_host("https://vc.lab.local/lookupservice/sdk"),
            Some("vc.lab.local")
        );
        assert_eq!(uri_host("http://192.0.2.10"), Some("192.0.2.10"));
        assert_eq!(uri_host("vc.lab.local"), None);
    }

    #[test]
    fn dc_part_keeps_the_domain() {
        assert_eq!(
            dc_part("cn=192.168.100.62,ou=Domain Controllers,dc=vsphere,dc=local"),
            "dc=vsphere,dc=local"
        );
    }
}
