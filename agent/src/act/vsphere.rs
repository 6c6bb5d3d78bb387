//! vSphere (VCSA) renewal actions, following `shared/reference/vsphere.md` §9 (renewal without
//! certificate-manager) with the tools VMware's own scripts use:
//!
//! | action | does |
//! |---|---|
//! | `vsphere.replication_gate` | `vdcrepadmin -f showpartnerstatus`: refuses unless every partner is available and 0 changes behind (§9.0 step 5) |
//! | `vsphere.machine_ssl` | `certool --genkey/--gencert` for the PNID (§9.1), backs the old `__MACHINE_CERT` up to files and `BACKUP_STORE/bkp___MACHINE_CERT`, `vecs-cli entry delete/create`, checks the entry (not-after, PNID in SAN, chains to the VMCA root); with `restart` also restarts services and checks the endpoint; puts the old entry back if a check fails |
//! | `vsphere.solution_users` | `dir-cli service list` (SSO password and principals), then per solution user (wcp with `--dataencipherment` and no `--FQDN`, §7/§9.2): `certool --genkey`, `--gencert --genCIScert`; then per user vmdir first (`dir-cli service update --name <user>-<machine-id>`), VECS second (`vecs-cli entry delete/create`), both read back and compared; old vmdir and VECS certificates backed up and restored on failure |
//! | `vsphere.sts` | fixsts.sh/vCert (§5.3): new `ssoserverSign` cert from certool, LDIF backup of every `TenantCredential-N`/`TrustedCertChain-N`, one `ldapmodify` (machine account) deleting them and adding `-1`, then checks vmdir like checksts (the active signing cert is the new one and valid); re-adds the backup if the check fails |
//! | `vsphere.restart_services` | `service-control --stop --all` / `--start --all`, polls `--status --all` until nothing is stopped, checks the endpoint serves VECS `__MACHINE_CERT` |
//!
//! Host layout (defaults, override in `[tools]`): `certool` at `/usr/lib/vmware-vmca/bin/certool`,
//! `service-control` at `/bin/service-control`, `ldapmodify`/`ldapsearch` at
//! `/opt/likewise/bin/`, `vecs-cli`/`vmafd-cli` under `/usr/lib/vmware-vmafd/bin/`,
//! `vdcrepadmin` under `/usr/lib/vmware-vmdir/bin/`, `dir-cli` under `/usr/lib/vmware-vmafd/bin/`, `lwregshell` in `/opt/likewise/bin/`, the
//! VMCA root at `/var/lib/vmware/vmca/root.cer`. Settings: those of the vsphere collector
//! (`vsphere.ldap_uri`, `vsphere.https_address`, `vsphere.sso_user`,
//! `vsphere.sso_password_file`). Work files (new keys, exported old entries) live in
//! `STATE_DIR/vsphere/<step>/` (0700, keys 0600); the old entries are also kept as a backup
//! (`certfleet-agent backups`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use certfleet_common::atomic::{PRIVATE, create_private_dir, write_file};
use serde_json::{Value, json};

use super::{ActContext, ActError, backup};
use crate::collect::vsphere::{parse_ldif, parse_lwreg};

const VECS_CLI: &str = "/usr/lib/vmware-vmafd/bin/vecs-cli";
const VMAFD_CLI: &str = "/usr/lib/vmware-vmafd/bin/vmafd-cli";
const LWREGSHELL: &str = "/opt/likewise/bin/lwregshell";
const LDAPSEARCH: &str = "/opt/likewise/bin/ldapsearch";
const LDAPMODIFY: &str = "/opt/likewise/bin/ldapmodify";
const CERTOOL: &str = "/usr/lib/vmware-vmca/bin/certool";
const DIR_CLI: &str = "/usr/lib/vmware-vmafd/bin/dir-cli";
const SERVICE_CONTROL: &str = "/bin/service-control";
const VMCA_ROOT: &str = "/var/lib/vmware/vmca/root.cer";

/// Runs `action` (`vsphere.*`).
pub fn dispatch(action: &str, ctx: &ActContext<'_>, args: &Value) -> Result<Value, ActError> {
    match action {
        "vsphere.replication_gate" => replication_gate(ctx),
        "vsphere.machine_ssl" => machine_ssl(ctx, args),
        "vsphere.solution_users" => solution_users(ctx, args),
        "vsphere.sts" => sts(ctx),
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

fn entry_exists(ctx: &ActContext<'_>, store: &str, alias: &str) -> Result<bool, ActError> {
    let out = vecs(ctx, &["entry", "list", "--store", store, "--aliases"])?;
    Ok(out.stdout.lines().skip(1).any(|l| l.trim() == alias))
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
    let key = genkey(ctx, &dir, "machine-ssl")?;
    let crt = dir.join("machine-ssl.crt");
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
    let not_after = check_cert(ctx, &crt, Some(&pnid))?;
    let new_pem = std::fs::read(&crt).map_err(|e| ActError(e.to_string()))?;
    let new_der = certfleet_common::pem::first_certificate(&new_pem)
        .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    let new_fp = certfleet_common::pki::sha256_hex(&new_der);

    // Back up: files (and an agent backup of them), then BACKUP_STORE as certificate-manager does.
    let (old_crt, old_key) = export_entry(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT", &dir, "old")?;
    let manifest = backup::create(ctx.state, ctx.step_id, &[old_crt.clone(), old_key.clone()])?;
    replace_entry(
        ctx,
        "BACKUP_STORE",
        "bkp___MACHINE_CERT",
        &old_crt,
        &old_key,
    )?;

    replace_entry(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT", &crt, &key)?;
    let verify = || -> Result<(), ActError> {
        let der = entry_cert(ctx, "MACHINE_SSL_CERT", "__MACHINE_CERT")?;
        let fp = certfleet_common::pki::sha256_hex(&der);
        if fp != new_fp {
            return Err(ActError(format!(
                "VECS MACHINE_SSL_CERT/__MACHINE_CERT holds {} instead of the new {}",
                &fp[..16],
                &new_fp[..16]
            )));
        }
        if restart {
            restart_services(ctx)?;
            verify_served(ctx)?;
        }
        Ok(())
    };
    if let Err(e) = verify() {
        (ctx.output)(format!(
            "verification failed: {e}; restoring the old __MACHINE_CERT"
        ));
        let undo = replace_entry(
            ctx,
            "MACHINE_SSL_CERT",
            "__MACHINE_CERT",
            &old_crt,
            &old_key,
        )
        .and_then(|_| {
            if restart {
                restart_services(ctx)
            } else {
                Ok(())
            }
        });
        let _ = std::fs::remove_file(&key);
        return Err(ActError(match undo {
            Ok(()) => format!("Machine SSL: {e}; rolled back to the previous certificate"),
            Err(u) => format!("Machine SSL: {e}; ROLLBACK FAILED: {u}"),
        }));
    }
    // VECS holds the new key now; no second copy stays in the work directory.
    let _ = std::fs::remove_file(&key);
    Ok(json!({
        "message": format!("Machine SSL for {pnid} replaced; valid until {not_after}"),
        "pnid": pnid,
        "fingerprint": new_fp,
        "not_after": not_after,
        "backup_id": manifest.id,
        "restart": if restart { json!(["service-control --all"]) } else { json!([]) },
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
    let mut backups = Vec::new();
    let run = |u: &str, backups: &mut Vec<PathBuf>| -> Result<(PathBuf, PathBuf, i64), ActError> {
        let key = genkey(ctx, &dir, u)?;
        let crt = dir.join(format!("{u}.crt"));
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
        let (old_crt, old_key) = export_entry(ctx, u, u, &dir, &format!("old-{u}"))?;
        // The old vmdir certificate (normally the same as VECS; kept separately for rollback).
        let old_vmdir = dir.join(format!("old-{u}.vmdir.crt"));
        let der = sso.principal_cert(ctx, &format!("{u}-{mid}"))?;
        write_file(
            &old_vmdir,
            certfleet_common::pem::encode("CERTIFICATE", &der).as_bytes(),
            PRIVATE,
        )
        .map_err(|e| ActError(format!("{}: {e}", old_vmdir.display())))?;
        backups.extend([old_crt, old_key, old_vmdir]);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        certool(ctx, &refs)?;
        let not_after = check_cert(ctx, &crt, if u == "wcp" { None } else { Some(&pnid) })?;
        Ok((crt, key, not_after))
    };
    let mut issued = Vec::new();
    for u in &users {
        issued.push((u.clone(), run(u, &mut backups)?));
    }
    let manifest = backup::create(ctx.state, ctx.step_id, &backups)?;
    // vmdir and VECS both hold `crt`?
    let check_both = |u: &str, crt: &Path| -> Result<(), ActError> {
        let want = certfleet_common::pem::first_certificate(
            &std::fs::read(crt).map_err(|e| ActError(format!("{}: {e}", crt.display())))?,
        )
        .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
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
    let mut done: Vec<String> = Vec::new();
    let mut result = serde_json::Map::new();
    for (u, (crt, key, not_after)) in &issued {
        let name = format!("{u}-{mid}");
        let r = sso
            .dir_cli(
                ctx,
                &["service", "update", "--name", &name, "--cert", &s(crt)],
            )
            .and_then(|_| replace_entry(ctx, u, u, crt, key))
            .and_then(|_| check_both(u, crt));
        if let Err(e) = r {
            (ctx.output)(format!(
                "solution user {u}: {e}; restoring vmdir and VECS of {} user(s)",
                done.len() + 1
            ));
            let mut undo = vec![];
            for du in done.iter().chain(std::iter::once(u)) {
                let old_vmdir = dir.join(format!("old-{du}.vmdir.crt"));
                let (oc, ok) = (
                    dir.join(format!("old-{du}.crt")),
                    dir.join(format!("old-{du}.key")),
                );
                let dn = format!("{du}-{mid}");
                let r = sso
                    .dir_cli(
                        ctx,
                        &["service", "update", "--name", &dn, "--cert", &s(&old_vmdir)],
                    )
                    .and_then(|_| replace_entry(ctx, du, du, &oc, &ok))
                    .and_then(|_| check_both(du, &oc));
                if let Err(x) = r {
                    undo.push(format!("{du}: {x}"));
                }
            }
            return Err(ActError(format!(
                "solution user {u}: {e}; rolled back {} user(s) in vmdir and VECS{}",
                done.len() + 1,
                if undo.is_empty() {
                    String::new()
                } else {
                    format!(" (ROLLBACK FAILED: {})", undo.join("; "))
                }
            )));
        }
        result.insert(u.clone(), json!(not_after));
        done.push(u.clone());
        let _ = std::fs::remove_file(key);
    }
    Ok(json!({
        "message": format!("replaced solution users {} in vmdir and VECS (both checked)", users.join(", ")),
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
        write_file(&pwfile, acct.password.as_bytes(), PRIVATE)
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
            &tool(ctx, "ldapsearch", LDAPSEARCH),
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

fn sts(ctx: &ActContext<'_>) -> Result<Value, ActError> {
    let acct = machine_account(ctx)?;
    let (_domain, tenant) = ldap_bases(&acct.dn);
    let pnid = pnid(ctx)?;
    let dir = workdir(ctx)?;
    let pwfile = dir.join("machine-account.pw");
    write_file(&pwfile, acct.password.as_bytes(), PRIVATE)
        .map_err(|e| ActError(format!("{}: {e}", pwfile.display())))?;
    let uri = ctx
        .cfg
        .setting("vsphere.ldap_uri")
        .unwrap_or("ldap://localhost:389")
        .to_owned();
    let ldapsearch = tool(ctx, "ldapsearch", LDAPSEARCH);
    let ldapmodify = tool(ctx, "ldapmodify", LDAPMODIFY);
    let search = |filter: &str| -> Result<Vec<crate::collect::vsphere::LdifEntry>, ActError> {
        let out = ctx.run_ok(
            &ldapsearch,
            &[
                "-o",
                "ldif-wrap=no",
                "-LLL",
                "-x",
                "-H",
                &uri,
                "-b",
                &tenant,
                "-D",
                &acct.dn,
                "-y",
                &s(&pwfile),
                filter,
            ],
            None,
        )?;
        parse_ldif(&out.stdout).map_err(|e| ActError(format!("ldapsearch {filter}: {e}")))
    };
    let filter =
        "(|(objectclass=vmwSTSTenantCredential)(objectclass=vmwSTSTenantTrustedCertificateChain))";

    // 1. key + VMCA-signed ssoserverSign certificate (vCert's certool.cfg, §5.3).
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
    let key = genkey(ctx, &dir, "sts")?;
    let crt = dir.join("sts.cer");
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
    let not_after = check_cert(ctx, &crt, None)?;
    let sts_der = certfleet_common::pem::first_certificate(
        &std::fs::read(&crt).map_err(|e| ActError(e.to_string()))?,
    )
    .map_err(|e| ActError(format!("{}: {e}", crt.display())))?;
    let root_pem = std::fs::read(ctx.cfg.host_path(VMCA_ROOT))
        .map_err(|e| ActError(format!("{VMCA_ROOT}: {e}")))?;
    let chain = certfleet_common::pem::certificates(&root_pem)
        .map_err(|e| ActError(format!("{VMCA_ROOT}: {e}")))?;
    let key_der = certfleet_common::pem::decode_all(
        &std::fs::read(&key).map_err(|e| ActError(e.to_string()))?,
    )
    .map_err(|e| ActError(e.to_string()))?
    .into_iter()
    .find(|(l, _)| l == "PRIVATE KEY")
    .map(|(_, d)| d)
    .ok_or_else(|| ActError(format!("{}: not a PKCS#8 key", key.display())))?;

    // 2. back up every TenantCredential-N / TrustedCertChain-N (LDIF, as fixsts.sh step 8).
    let old = search(filter)?;
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
    let backup_file = dir.join("sts-backup.ldif");
    write_file(&backup_file, backup_ldif.as_bytes(), PRIVATE)
        .map_err(|e| ActError(e.to_string()))?;
    let manifest = backup::create(ctx.state, ctx.step_id, std::slice::from_ref(&backup_file))?;

    // 3. one LDIF: delete them all, add TenantCredential-1 and TrustedCertChain-1 (§5.3 step 9).
    let mut ldif = String::new();
    for (dn, _) in &old {
        ldif.push_str(&format!("dn: {dn}\nchangetype: delete\n\n"));
    }
    ldif.push_str(&format!(
        "dn: cn=TenantCredential-1,{tenant}\nchangetype: add\nobjectClass: vmwSTSTenantCredential\ncn: TenantCredential-1\nuserCertificate:: {}\n",
        b64(&sts_der)
    ));
    for c in &chain {
        ldif.push_str(&format!("userCertificate:: {}\n", b64(c)));
    }
    ldif.push_str(&format!("vmwSTSPrivateKey:: {}\n\n", b64(&key_der)));
    ldif.push_str(&format!(
        "dn: cn=TrustedCertChain-1,cn=TrustedCertificateChains,{tenant}\nchangetype: add\nobjectClass: vmwSTSTenantTrustedCertificateChain\ncn: TrustedCertChain-1\nuserCertificate:: {}\n",
        b64(&sts_der)
    ));
    for c in &chain {
        ldif.push_str(&format!("userCertificate:: {}\n", b64(c)));
    }
    let ldif_file = dir.join("sso-sts.ldif");
    write_file(&ldif_file, ldif.as_bytes(), PRIVATE).map_err(|e| ActError(e.to_string()))?;
    let modify = |file: &Path| {
        ctx.run_ok(
            &ldapmodify,
            &[
                "-x",
                "-H",
                &uri,
                "-D",
                &acct.dn,
                "-y",
                &s(&pwfile),
                "-f",
                &s(file),
            ],
            None,
        )
    };
    let applied = modify(&ldif_file);

    // 4. verify like checksts: the active signing certificate is the new one and valid.
    let verify = || -> Result<(), ActError> {
        applied.as_ref().map_err(|e| ActError(e.0.clone()))?;
        let now = search(filter)?;
        let creds: Vec<_> = now
            .iter()
            .filter(|(dn, _)| dn.to_ascii_lowercase().starts_with("cn=tenantcredential-"))
            .collect();
        let ok = creds.len() == 1
            && creds[0]
                .1
                .iter()
                .any(|(a, v)| a.eq_ignore_ascii_case("userCertificate") && v == &sts_der);
        if !ok {
            return Err(ActError(format!(
                "vmdir {tenant}: the active TenantCredential does not hold the new ssoserverSign certificate"
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
        let _ = ctx.run_ok(
            &ldapmodify,
            &[
                "-x",
                "-c",
                "-H",
                &uri,
                "-D",
                &acct.dn,
                "-y",
                &s(&pwfile),
                "-f",
                &s(&undo_file),
            ],
            None,
        );
        let restored = modify(&backup_file);
        let _ = std::fs::remove_file(&pwfile);
        return Err(ActError(match restored {
            Ok(_) => format!("STS: {e}; restored the previous tenant credentials"),
            Err(r) => format!(
                "STS: {e}; RESTORE FAILED ({r}); backup LDIF {}",
                backup_file.display()
            ),
        }));
    }
    let _ = std::fs::remove_file(&pwfile);
    Ok(json!({
        "message": format!("STS signing certificate replaced in vmdir; valid until {not_after}; restart services on every node of the SSO domain"),
        "fingerprint": certfleet_common::pki::sha256_hex(&sts_der),
        "not_after": not_after,
        "backup_id": manifest.id,
    }))
}

// === services ===

/// `service-control --stop --all`, `--start --all`, then polls `--status --all` until no
/// service is stopped or start-pending (a failed `--start --all` can be transient, §8.1).
fn restart_services(ctx: &ActContext<'_>) -> Result<(), ActError> {
    let sc = tool(ctx, "service-control", SERVICE_CONTROL);
    ctx.run_ok(&sc, &["--stop", "--all"], None)?;
    let started = ctx.run_ok(&sc, &["--start", "--all"], None);
    let deadline = std::time::Instant::now() + ctx.timeout.min(Duration::from_secs(120));
    loop {
        let st = crate::exec::run_ok(&sc, &["--status", "--all"], None, ctx.timeout)?;
        let mut heading = "";
        let mut waiting = Vec::new();
        for l in st.stdout.lines() {
            if l.ends_with(':') {
                heading = l;
            } else if heading == "Stopped:" || heading == "StartPending:" {
                waiting.extend(l.split_whitespace().map(str::to_owned));
            }
        }
        if waiting.is_empty() {
            (ctx.output)("service-control --status --all: all services running".into());
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ActError(format!(
                "service-control: not running after --start --all: {}{}",
                waiting.join(" "),
                started
                    .as_ref()
                    .err()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
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
