//! Simulated engine-side lifecycle tools (reference A5, A6, seed 003):
//!
//! - `hosted-engine` on a self-hosted-engine host: `--set-maintenance --mode=global|none|local`
//!   and `--vm-status [--json]` (`!! Cluster is in GLOBAL MAINTENANCE mode !!` /
//!   `"global_maintenance": true`). The flag is the engine's `ha_global_maintenance`, kept in
//!   the engine's simulator state (the host knows the engine root from
//!   `.sim/hosted-engine.json`, written by [`make_he_host`]).
//!   `--vm-start` and `--vm-status` report the HostedEngine VM (kept in that file): the
//!   `Engine status` values are those of ovirt-hosted-engine-ha's engine-health monitor
//!   (`{"vm": "down", "health": "bad", "detail": "unknown", "reason": "vm not running on this
//!   host"}`, `… "detail": "Powering up" …`, `{"vm": "up", "health": "good", "detail": "Up"}`);
//!   both need vdsmd running (the HA agent talks to VDSM). Unverified: the exact `--vm-start`
//!   messages, and that a started VM shows `Powering up` for exactly one look.
//! - `engine-setup [--offline] [--accept-defaults] [--config-append=FILE]` on the engine: reads
//!   the otopi answer file (`[environment:default]`, `KEY=type:value`), refuses to run on a
//!   hosted engine without global maintenance unless `OVESETUP_CONFIG/continueSetupOnHEVM`
//!   (`he.py`), asks `OVESETUP_PKI/renew` when something is due (fails non-interactively when
//!   it is not preset, A6 [L]), and renews exactly what A5's rules pick among
//!   `_COMMON_ENTITIES` (`engine` keeps its key): inside the window (shortLife 60 days, else
//!   `CertExpirationWarnPeriodInDays`) or without subjectAltName. It backs up the old files the
//!   way `common_backup` does (`<file>.<YYYYmmddHHMMSS>`), re-issues with the real `openssl ca`
//!   (`pki-enroll-pkcs12.sh` + `pki-pkcs12-extract.sh`), and restarts the engine services on
//!   the engine's simulated systemd. Like the 4.5 releases before 4.5.2.1 (A5, seed 003) it
//!   does **not** renew the OVN certificates (`ovirt-provider-ovn`, `ovn-ndb`, `ovn-sdb`).
//! - The CAs (`ca.pem`, `qemu-ca.pem`): as `ca.py` `_miscUpgrade` (oVirt/ovirt-engine
//!   `packaging/setup/plugins/ovirt-engine-setup/ovirt-engine/pki/ca.py`): a CA inside
//!   `pki_utils.cert_expires(cert, short_life=False)` (less than `CertExpirationWarnPeriodInDays`
//!   left) makes the renew question due, and with renew answered it is renewed with
//!   `pki-create-ca.sh --renew` (`[ INFO  ] Renewing CA: <file>`) before the entities; at
//!   closeup `[WARNING] CA <file> was renewed, please refresh manually distributed copies`.
//! - vmconsole (`vmconsole_proxy_helper/pki.py`, whatever the renew answer): the helper
//!   certificate, and the proxy's `vmconsole-proxy-{host,user}` X.509 + OpenSSH certificates
//!   with `/etc/pki/ovirt-vmconsole/{ca.pub,proxy-ssh_*}`, are re-issued when missing, older
//!   than `ca.pem` (a renewed CA) or inside the warning window (`_refresh_needed`; the 4.5.1
//!   behaviour, commits 35e8f51 / db1fe92 per reference A5). Old files are kept as
//!   `<file>.<ts>` (unverified: whether the real scripts back up the `.pub` files this way).
//! - OVN (`ovirtproviderovn.py`, when OVN is configured): `_upgrade` resets
//!   `keys/ovn-{ndb,sdb}.key.nopass` to 0640 group `openvswitch` on every run, and
//!   `openvswitch`, `ovn-northd` (`ENGINE_MACHINE_OVN_SERVICES`) and `ovirt-provider-ovn` are
//!   restarted. Unverified: the order of these restarts relative to the engine services.
//!
//! [`engine_services`] defines the engine's units with the certificates they need.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

use super::engine::{Ca, Engine, VMCONSOLE_HOST, VMCONSOLE_PKI, VMCONSOLE_USER, is_short_life};
use crate::sim::SimHost;

/// `_COMMON_ENTITIES` with `keepKey`.
const COMMON: &[(&str, bool)] = &[
    ("engine", true),
    ("jboss", false),
    ("websocket-proxy", false),
    ("apache", false),
    ("reports", false),
];

/// Engine units and the certificates they load.
pub const ENGINE_UNITS: &[(&str, &[&str])] = &[
    ("ovirt-engine", &["/etc/pki/ovirt-engine/certs/engine.cer"]),
    ("httpd", &["/etc/pki/ovirt-engine/certs/apache.cer"]),
    ("ovirt-imageio", &["/etc/pki/ovirt-engine/certs/apache.cer"]),
    (
        "ovirt-websocket-proxy",
        &["/etc/pki/ovirt-engine/certs/websocket-proxy.cer"],
    ),
    ("openvswitch", &[]),
];

/// OVN's units on the engine: `ovirt-provider-ovn` (root) reads its HTTPS key; `ovn-northd`
/// starts the northbound and southbound `ovsdb-server`s, which read the keys set by
/// `ovn-nbctl/ovn-sbctl set-ssl` as the OVN account ([`super::engine::ovn_account`]).
/// Unverified: that the NB/SB servers run under `ovn-northd.service` on the engine host (the
/// ovn-central packaging of EL8/EL9) rather than a separate unit.
pub const OVN_UNITS: &[(&str, &[&str], &[&str], bool)] = &[
    (
        "ovirt-provider-ovn",
        &["/etc/pki/ovirt-engine/certs/ovirt-provider-ovn.cer"],
        &["/etc/pki/ovirt-engine/keys/ovirt-provider-ovn.key.nopass"],
        false,
    ),
    (
        "ovn-northd",
        &[
            "/etc/pki/ovirt-engine/certs/ovn-ndb.cer",
            "/etc/pki/ovirt-engine/certs/ovn-sdb.cer",
        ],
        &[
            "/etc/pki/ovirt-engine/keys/ovn-ndb.key.nopass",
            "/etc/pki/ovirt-engine/keys/ovn-sdb.key.nopass",
        ],
        true,
    ),
];

/// What engine-setup restarts for OVN, in its order: `ENGINE_MACHINE_OVN_SERVICES`
/// (`openvswitch`, `ovn-northd`), then `OVIRT_PROVIDER_OVN_SERVICE`.
pub const OVN_RESTARTS: &[&str] = &["openvswitch", "ovn-northd", "ovirt-provider-ovn"];

/// Defines the engine's units (all active) and installs `engine-setup`.
pub fn engine_services(engine: &Engine) -> Result<()> {
    for (u, certs) in ENGINE_UNITS {
        crate::sim::systemd::define_unit(&engine.host, u, certs)?;
    }
    if has_ovn(engine) {
        for (u, certs, keys, as_ovn) in OVN_UNITS {
            let account = as_ovn.then(super::engine::ovn_account);
            crate::sim::systemd::define_unit_as(&engine.host, u, certs, keys, account)?;
        }
    }
    engine
        .host
        .install_tool("/usr/bin/engine-setup", "engine-setup")?;
    Ok(())
}

fn has_ovn(engine: &Engine) -> bool {
    engine.entities.iter().any(|e| e.name == "ovn-ndb")
}

/// Makes `host` a hosted-engine host of `engine` (marks the engine self-hosted) and installs
/// `hosted-engine`.
pub fn make_he_host(host: &SimHost, engine: &Engine) -> Result<()> {
    std::fs::write(
        host.state("hosted-engine.json"),
        serde_json::to_vec(&serde_json::json!({"engine_root": engine.host.root}))?,
    )?;
    update_engine(&engine.host, |st| {
        st["hosted_engine"] = Value::Bool(true);
        if st["ha_global_maintenance"].is_null() {
            st["ha_global_maintenance"] = Value::Bool(false);
        }
    })?;
    host.install_tool("/usr/sbin/hosted-engine", "hosted-engine")?;
    Ok(())
}

/// The HostedEngine VM's state on `host`: `up` (also when never set), `down`, `powering_up`.
pub fn he_vm(host: &SimHost) -> String {
    std::fs::read(host.state("hosted-engine.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["vm"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "up".into())
}

/// Sets the HostedEngine VM's state on `host` (`down`: the outage, the VM stopped).
pub fn set_he_vm(host: &SimHost, state: &str) -> Result<()> {
    let p = host.state("hosted-engine.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    v["vm"] = Value::String(state.to_owned());
    std::fs::write(&p, serde_json::to_vec(&v)?)?;
    Ok(())
}

/// Whether the host's vdsmd (and so the HA agent's view of the VM) is up.
fn vdsm_up(host: &SimHost) -> bool {
    crate::sim::systemd::unit(host, "vdsmd").is_ok_and(|u| u.state == "active")
}

fn update_engine(engine: &SimHost, f: impl FnOnce(&mut Value)) -> Result<Value> {
    let p = engine.state("ovirt-engine.json");
    let mut st: Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("no simulated engine at {}", p.display()))?,
    )?;
    f(&mut st);
    std::fs::write(&p, serde_json::to_vec_pretty(&st)?)?;
    Ok(st)
}

/// `hosted-engine ARGS` on an HE host.
pub fn hosted_engine(host: &SimHost, args: &[String]) -> Result<i32> {
    let he: Value = serde_json::from_slice(
        &std::fs::read(host.state("hosted-engine.json"))
            .context("this host is not a hosted-engine host")?,
    )?;
    let engine = SimHost::new(
        he["engine_root"].as_str().context("engine_root")?,
        host.sim_bin.clone(),
    )?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["--set-maintenance", mode] | ["--set-maintenance", "--mode", mode]
            if mode.starts_with("--mode=") || !mode.starts_with('-') =>
        {
            let m = mode.trim_start_matches("--mode=");
            let on = match m {
                "global" => true,
                "none" => false,
                "local" => return Ok(0),
                other => {
                    eprintln!("Invalid value for --mode: {other} (global, local, none)");
                    return Ok(1);
                }
            };
            update_engine(&engine, |st| st["ha_global_maintenance"] = Value::Bool(on))?;
            Ok(0)
        }
        ["--vm-start"] => {
            if !vdsm_up(host) {
                eprintln!("Failed to start the VM: cannot connect to VDSM (is vdsmd running?)");
                return Ok(1);
            }
            if he_vm(host) == "up" {
                println!("VM exists and its status is Up");
            } else {
                set_he_vm(host, "powering_up")?;
                println!("VM exists and is down, cleaning up and restarting");
            }
            Ok(0)
        }
        ["--vm-status", rest @ ..] => {
            if !vdsm_up(host) {
                eprintln!(
                    "The hosted engine configuration has not been retrieved from shared storage. Please ensure that ovirt-ha-agent is running and the storage server is reachable."
                );
                return Ok(1);
            }
            let st: Value =
                serde_json::from_slice(&std::fs::read(engine.state("ovirt-engine.json"))?)?;
            let gm = st["ha_global_maintenance"].as_bool().unwrap_or(false);
            let status = match he_vm(host).as_str() {
                "down" => {
                    serde_json::json!({"vm": "down", "health": "bad", "detail": "unknown", "reason": "vm not running on this host"})
                }
                "powering_up" => {
                    // Up on the next look.
                    set_he_vm(host, "up")?;
                    serde_json::json!({"vm": "up", "health": "bad", "detail": "Powering up", "reason": "bad vm status"})
                }
                _ => serde_json::json!({"vm": "up", "health": "good", "detail": "Up"}),
            };
            if rest.contains(&"--json") {
                println!(
                    "{}",
                    serde_json::json!({"1": {"engine-status": status}, "global_maintenance": gm})
                );
            } else {
                if gm {
                    println!("\n\n!! Cluster is in GLOBAL MAINTENANCE mode !!\n");
                }
                println!("--== Host 1 status ==--\n\nEngine status : {status}");
            }
            Ok(0)
        }
        _ => {
            eprintln!(
                "Usage: hosted-engine --set-maintenance --mode=global|local|none | --vm-start | --vm-status [--json]"
            );
            Ok(1)
        }
    }
}

/// Parses an otopi answer file: `KEY=type:value` under `[environment:default]`.
fn answers(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('[') && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.split('#').next().unwrap_or(v).trim();
            let v = v.split_once(':').map(|(_, x)| x).unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

fn stamp() -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(super::unix_now())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Makes every later `engine-setup` run take `ms` longer (a real one runs for minutes), after
/// it was counted and before it changes anything, so a test can kill the agent while it runs.
pub fn set_engine_setup_delay(host: &SimHost, ms: u64) -> Result<()> {
    std::fs::write(host.state("engine-setup-delay-ms"), ms.to_string())?;
    Ok(())
}

/// How many times `engine-setup` was started on this engine.
pub fn engine_setup_runs(host: &SimHost) -> usize {
    std::fs::read_to_string(host.state("engine-setup.runs"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `engine-setup ARGS` on the engine.
pub fn engine_setup(host: &SimHost, args: &[String]) -> Result<i32> {
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.state("engine-setup.runs"))?;
        writeln!(f, "{}", std::process::id())?;
    }
    if let Some(ms) = std::fs::read_to_string(host.state("engine-setup-delay-ms"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let engine = Engine::load(host)?;
    let st: Value = serde_json::from_slice(&std::fs::read(host.state("ovirt-engine.json"))?)?;
    let mut env = BTreeMap::new();
    for a in args {
        if let Some(f) = a.strip_prefix("--config-append=") {
            // The agent passes the file as it exists (under a test root, or not).
            let p = if std::path::Path::new(f).starts_with(&host.root) {
                std::path::PathBuf::from(f)
            } else {
                host.path(f)
            };
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("answer file {f} ({})", p.display()))?;
            env.extend(answers(&text));
        } else if let Some(kv) = a.strip_prefix("--otopi-environment=") {
            env.extend(answers(kv));
        } else if !matches!(a.as_str(), "--offline" | "--accept-defaults") {
            eprintln!("engine-setup: unknown option {a}");
            return Ok(1);
        }
    }
    let truthy = |k: &str| env.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    println!("[ INFO  ] Stage: Initializing");
    println!("[ INFO  ] Stage: Environment setup");
    if st["hosted_engine"].as_bool() == Some(true)
        && st["ha_global_maintenance"].as_bool() != Some(true)
        && !truthy("OVESETUP_CONFIG/continueSetupOnHEVM")
    {
        println!("[ ERROR ] Hosted Engine setup detected, but Global Maintenance is not set.");
        println!(
            "[ ERROR ] Failed to execute stage 'Setup validation': Hosted Engine setup detected, but Global Maintenance is not set."
        );
        return Ok(1);
    }
    let warn_days: i64 = st["config"]["CertExpirationWarnPeriodInDays"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(365);
    let now = super::unix_now();
    let ca = engine.ca_pem()?;
    let mut due = Vec::new();
    // `_customization_upgrade`: a CA inside the (long-life) window also makes renewal due.
    let mut ca_due = Vec::new();
    for ca_kind in [Ca::Engine, Ca::Qemu] {
        let Ok(bytes) = std::fs::read(engine.path(&format!("{}.pem", ca_kind.file()))) else {
            continue;
        };
        let rec =
            certfleet_common::x509::parse_der(&certfleet_common::pem::first_certificate(&bytes)?)?;
        if rec.not_after - now < warn_days * 86_400 {
            ca_due.push(ca_kind);
        }
    }
    for (name, keep) in COMMON {
        let cer = engine.path(&format!("certs/{name}.cer"));
        let Ok(bytes) = std::fs::read(&cer) else {
            continue;
        };
        let der = certfleet_common::pem::first_certificate(&bytes)?;
        let rec = certfleet_common::x509::parse_der(&der)?;
        let window = if is_short_life(name) { 60 } else { warn_days };
        let expires = rec.not_after - now < window * 86_400;
        let no_san = rec.sans.is_empty();
        // "certificate is sane": signed by the engine CA (a third-party apache is never touched).
        let ca_rec = certfleet_common::x509::parse_der(&certfleet_common::pem::first_certificate(
            ca.as_bytes(),
        )?)?;
        if (expires || no_san) && rec.issuer == ca_rec.subject {
            due.push((*name, *keep));
        }
    }
    if !due.is_empty() || !ca_due.is_empty() {
        match env
            .get("OVESETUP_PKI/renew")
            .map(|v| v.to_ascii_lowercase())
        {
            Some(v) if v == "true" => {}
            Some(_) => {
                if env
                    .get("QUESTION/1/OVESETUP_SKIP_RENEW_PKI_CONFIRM")
                    .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
                {
                    due.clear();
                    ca_due.clear();
                } else {
                    println!(
                        "[ ERROR ] Failed to execute stage 'Environment customization': Aborted by user"
                    );
                    return Ok(1);
                }
            }
            None => {
                println!(
                    "          One or more of the certificates should be renewed, because they expire soon, or include an invalid expiry date, or do not include the subjectAltName extension, which can cause them to be rejected by recent browsers and up to date hosts.\n          Renew certificates? (Yes, No) [No]:"
                );
                println!(
                    "[ ERROR ] Failed to execute stage 'Environment customization': no answer for OVESETUP_PKI/renew and no default (non-interactive)"
                );
                return Ok(1);
            }
        }
    }
    println!("[ INFO  ] Stage: Transaction setup");
    let stop: Vec<String> = [
        "stop",
        "ovirt-engine",
        "ovirt-imageio",
        "ovirt-websocket-proxy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    crate::sim::systemd::run(host, &stop)?;
    println!("[ INFO  ] Upgrading CA");
    let ts = stamp();
    let mut renewed_cas = Vec::new();
    let mut ca_backups = Vec::new();
    for ca_kind in &ca_due {
        let file = format!("{}/{}.pem", super::engine::ENGINE_PKI, ca_kind.file());
        println!("[ INFO  ] Renewing CA: {file}");
        ca_backups.push(engine.renew_ca(*ca_kind, &ts)?);
        renewed_cas.push(file);
    }
    let subject = format!(
        "/C={}/O={}/CN={}",
        engine.spec.country, engine.organization, engine.spec.fqdn
    );
    let mut backups = Vec::new();
    for (name, keep) in &due {
        println!("[ INFO  ] Renewing {name} certificate");
        let extract = engine.entities.iter().any(|e| e.name == *name && e.extract);
        let mut set = vec![
            format!("certs/{name}.cer"),
            format!("keys/{name}.p12"),
            format!("requests/{name}.req"),
        ];
        if extract {
            set.push(format!("keys/{name}.key.nopass"));
        }
        for f in set {
            let to = format!("{f}.{ts}");
            std::fs::copy(engine.path(&f), engine.path(&to))
                .with_context(|| format!("backing up {f}"))?;
            backups.push(to);
        }
        let san = format!("DNS:{}", engine.spec.fqdn);
        engine.enroll_pkcs12_keep(
            name,
            &subject,
            Some(&san),
            None,
            engine.spec.version.engine_cert_days(name),
            None,
            *keep,
        )?;
        if extract {
            engine.extract_key(name)?;
        }
    }
    backups.extend(ca_backups);
    update_engine(host, |st| {
        if let Some(a) = st["backups"].as_array_mut() {
            a.extend(backups.into_iter().map(Value::String));
        }
    })?;
    let ca = engine.ca_pem()?;
    let fp = certfleet_common::pki::sha256_hex(&certfleet_common::pem::first_certificate(
        ca.as_bytes(),
    )?);
    let colons: Vec<String> = fp
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    // vmconsole_proxy_helper/pki.py (STAGE_MISC, independent of the renew answer).
    if engine
        .entities
        .iter()
        .any(|e| e.name == "vmconsole-proxy-helper")
        && engine.vmconsole_refresh_needed(
            &engine.path("certs/vmconsole-proxy-helper.cer"),
            true,
            warn_days,
        )?
    {
        println!("[ INFO  ] Setting up ovirt-vmconsole proxy helper PKI artifacts");
        for f in [
            "certs/vmconsole-proxy-helper.cer",
            "keys/vmconsole-proxy-helper.p12",
            "keys/vmconsole-proxy-helper.key.nopass",
        ] {
            if engine.path(f).exists() {
                std::fs::copy(engine.path(f), engine.path(&format!("{f}.{ts}")))?;
            }
        }
        engine.vmconsole_helper()?;
    }
    let proxy = [VMCONSOLE_HOST, VMCONSOLE_USER];
    if engine.entities.iter().any(|e| e.name == VMCONSOLE_HOST) {
        let key = engine
            .host
            .path(&format!("{VMCONSOLE_PKI}/proxy-ssh_host_rsa"));
        let mut needed = engine.vmconsole_refresh_needed(&key, false, warn_days)?;
        for n in proxy {
            needed |= engine.vmconsole_refresh_needed(
                &engine.path(&format!("certs/{n}.cer")),
                true,
                warn_days,
            )?;
        }
        if needed {
            println!("[ INFO  ] Setting up ovirt-vmconsole SSH PKI artifacts");
            for n in proxy {
                for f in [
                    format!("certs/{n}.cer"),
                    format!("keys/{n}.p12"),
                    format!("certs/{n}.pub"),
                    format!("certs/{n}-cert.pub"),
                ] {
                    if engine.path(&f).exists() {
                        std::fs::copy(engine.path(&f), engine.path(&format!("{f}.{ts}")))?;
                    }
                }
            }
            engine.vmconsole_proxy(&proxy)?;
        }
    }
    println!("[ INFO  ] Stage: Closing up");
    let start: Vec<String> = [
        "restart",
        "ovirt-engine",
        "httpd",
        "ovirt-imageio",
        "ovirt-websocket-proxy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if crate::sim::systemd::run(host, &start)? != 0 {
        println!(
            "[ ERROR ] Failed to execute stage 'Closing up': Failed to start service 'ovirt-engine'"
        );
        return Ok(1);
    }
    if has_ovn(&engine) {
        // `_upgrade` (STAGE_MISC, before the OVN restart): permissions back to what OVN needs.
        for k in super::engine::OVN_DB_KEYS {
            let p = engine.path(k);
            if p.exists() {
                super::engine::sanitize_ovn_key(&p)?;
            }
        }
        println!("[ INFO  ] Updating OVN SSL configuration");
        for unit in OVN_RESTARTS {
            if crate::sim::systemd::run(host, &["restart".to_owned(), unit.to_string()])? != 0 {
                println!(
                    "[ ERROR ] Failed to execute stage 'Misc configuration': Failed to start service '{unit}'"
                );
                return Ok(1);
            }
        }
    }
    println!(
        "          Internal CA fingerprint: SHA256: {}",
        colons.join(":")
    );
    for file in &renewed_cas {
        println!("[WARNING] CA {file} was renewed, please refresh manually distributed copies");
    }
    let answers_file = format!("/var/lib/ovirt-engine/setup/answers/{ts}-setup.conf");
    let mut text = String::from("[environment:default]\n");
    for (k, v) in &env {
        text.push_str(&format!("{k}={v}\n"));
    }
    host.write(&answers_file, text, 0o600)?;
    println!("[ INFO  ] Generating answer file '{answers_file}'");
    println!("[ INFO  ] Execution of setup completed successfully");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_files_parse() {
        let a = answers(
            "[environment:default]\nOVESETUP_PKI/renew=bool:True\nQUESTION/1/OVESETUP_SKIP_RENEW_PKI_CONFIRM=str:no\n",
        );
        assert_eq!(a["OVESETUP_PKI/renew"], "True");
        assert_eq!(a["QUESTION/1/OVESETUP_SKIP_RENEW_PKI_CONFIRM"], "no");
    }
}
