//! Simulated `systemctl` for simulated hosts.
//!
//! Units live in `ROOT/.sim/systemd.json`. A unit can require certificate files: it refuses to
//! start when one is missing, unreadable or outside its validity period, the way libvirtd
//! refuses to start with an expired VDSM certificate. Output and exit codes follow systemd's:
//! `restart` is silent on success and exits 1 with the "Job for … failed" lines on failure, 5
//! for an unknown unit; `is-active` prints the state and exits 0 only when active (else 3).
//!
//! A unit can also run as an unprivileged account ([`Account`]) and need private keys it must
//! be able to read as that account: a start fails when the key's owner, group and mode do not
//! let that account read it (the kernel's rule: owner bits for the owner, group bits for the
//! primary or a supplementary group, else the other bits; root reads everything).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::SimHost;

/// One simulated unit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Unit {
    /// `active`, `failed`, `inactive`.
    pub state: String,
    /// Host paths of certificates it needs valid to start.
    pub requires_certs: Vec<String>,
    /// Fail every start regardless (a broken service).
    pub broken: bool,
    /// Successful (re)starts so far.
    pub starts: u32,
    /// Why the last start failed.
    pub last_error: String,
    /// A start takes this long (a slow service, for tests that interrupt a step).
    #[serde(default)]
    pub start_ms: u64,
    /// Host paths of private keys it reads at start.
    #[serde(default)]
    pub requires_keys: Vec<String>,
    /// The account it runs as (`None`: root).
    #[serde(default)]
    pub runs_as: Option<Account>,
}

/// A service account: uid and every group it has (primary first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Name, for messages (`openvswitch`).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
}

impl Account {
    /// Whether this account may read a file with `meta` (owner, group, mode).
    pub fn can_read(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        if self.uid == 0 {
            true
        } else if meta.uid() == self.uid {
            mode & 0o400 != 0
        } else if self.gids.contains(&meta.gid()) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    units: BTreeMap<String, Unit>,
}

fn load(host: &SimHost) -> Result<State> {
    match std::fs::read_to_string(host.state("systemd.json")) {
        Ok(s) => Ok(serde_json::from_str(&s)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e.into()),
    }
}

fn save(host: &SimHost, st: &State) -> Result<()> {
    std::fs::write(host.state("systemd.json"), serde_json::to_vec_pretty(st)?)
        .context("writing systemd state")
}

fn canonical(name: &str) -> String {
    name.trim_end_matches(".service").to_owned()
}

/// Installs `systemctl` at `/usr/bin/systemctl` and defines `unit` (active) needing `certs`.
pub fn define_unit(host: &SimHost, unit: &str, certs: &[&str]) -> Result<()> {
    host.install_tool("/usr/bin/systemctl", "systemctl")?;
    let mut st = load(host)?;
    st.units.insert(
        canonical(unit),
        Unit {
            state: "active".into(),
            requires_certs: certs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    save(host, &st)
}

/// Defines `unit` (active) running as `account`, needing `certs` valid and `keys` readable by
/// that account.
pub fn define_unit_as(
    host: &SimHost,
    unit: &str,
    certs: &[&str],
    keys: &[&str],
    account: Option<Account>,
) -> Result<()> {
    define_unit(host, unit, certs)?;
    let mut st = load(host)?;
    let u = st.units.get_mut(&canonical(unit)).expect("just defined");
    u.requires_keys = keys.iter().map(|s| s.to_string()).collect();
    u.runs_as = account;
    save(host, &st)
}

/// Makes a unit fail (or work again) on its next start.
pub fn set_broken(host: &SimHost, unit: &str, broken: bool) -> Result<()> {
    let mut st = load(host)?;
    st.units
        .get_mut(&canonical(unit))
        .context("no such unit")?
        .broken = broken;
    save(host, &st)
}

/// Makes starts of a unit take `ms` milliseconds.
pub fn set_start_delay(host: &SimHost, unit: &str, ms: u64) -> Result<()> {
    let mut st = load(host)?;
    st.units
        .get_mut(&canonical(unit))
        .context("no such unit")?
        .start_ms = ms;
    save(host, &st)
}

/// A unit's current record.
pub fn unit(host: &SimHost, unit: &str) -> Result<Unit> {
    load(host)?
        .units
        .get(&canonical(unit))
        .cloned()
        .context("no such unit")
}

fn check_certs(host: &SimHost, u: &Unit) -> std::result::Result<(), String> {
    let now = certfleet_common::model::now();
    for c in &u.requires_certs {
        let p = host.path(c);
        let bytes = std::fs::read(&p).map_err(|e| format!("{c}: {e}"))?;
        let der =
            certfleet_common::pem::first_certificate(&bytes).map_err(|e| format!("{c}: {e}"))?;
        let rec = certfleet_common::x509::parse_der(&der).map_err(|e| format!("{c}: {e}"))?;
        if rec.not_after <= now {
            return Err(format!(
                "{c}: certificate expired at {}",
                certfleet_common::model::format_time(rec.not_after)
            ));
        }
        if rec.not_before > now {
            return Err(format!("{c}: certificate not yet valid"));
        }
    }
    for k in &u.requires_keys {
        let p = host.path(k);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{k}: {e}"))?;
        if let Some(a) = &u.runs_as
            && !a.can_read(&meta)
        {
            use std::os::unix::fs::MetadataExt;
            return Err(format!(
                "{k}: Permission denied (running as {} uid {} groups {:?}; file {}:{} mode {:o})",
                a.name,
                a.uid,
                a.gids,
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777
            ));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{k}: {e}"))?;
        if !text.contains("PRIVATE KEY-----") {
            return Err(format!("{k}: not a PEM private key"));
        }
    }
    Ok(())
}

/// `systemctl ARGS`; returns the exit code.
pub fn run(host: &SimHost, args: &[String]) -> Result<i32> {
    let mut st = load(host)?;
    let (verb, units) = match args.iter().find(|a| !a.starts_with('-')) {
        Some(v) => (
            v.as_str(),
            args.iter()
                .skip_while(|a| *a != v)
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .cloned()
                .collect::<Vec<_>>(),
        ),
        None => {
            eprintln!("Too few arguments.");
            return Ok(1);
        }
    };
    match verb {
        "restart" | "start" | "try-restart" | "reload-or-restart" => {
            if units.is_empty() {
                eprintln!("Too few arguments.");
                return Ok(1);
            }
            let mut code = 0;
            for name in units {
                let n = canonical(&name);
                let Some(u) = st.units.get(&n).cloned() else {
                    eprintln!("Failed to {verb} {n}.service: Unit {n}.service not found.");
                    code = 5;
                    continue;
                };
                if u.start_ms > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(u.start_ms));
                }
                let outcome = if u.broken {
                    Err("service is broken".to_owned())
                } else {
                    check_certs(host, &u)
                };
                let entry = st.units.get_mut(&n).expect("present");
                match outcome {
                    Ok(()) => {
                        entry.state = "active".into();
                        entry.starts += 1;
                        entry.last_error.clear();
                    }
                    Err(why) => {
                        entry.state = "failed".into();
                        entry.last_error = why;
                        eprintln!(
                            "Job for {n}.service failed because the control process exited with error code."
                        );
                        eprintln!(
                            "See \"systemctl status {n}.service\" and \"journalctl -xeu {n}.service\" for details."
                        );
                        code = 1;
                    }
                }
            }
            save(host, &st)?;
            Ok(code)
        }
        "stop" => {
            for name in units {
                if let Some(u) = st.units.get_mut(&canonical(&name)) {
                    u.state = "inactive".into();
                }
            }
            save(host, &st)?;
            Ok(0)
        }
        "is-active" => {
            let mut code = 0;
            for name in units {
                let state = st
                    .units
                    .get(&canonical(&name))
                    .map(|u| u.state.clone())
                    .unwrap_or_else(|| "inactive".into());
                println!("{state}");
                if state != "active" {
                    code = 3;
                }
            }
            Ok(code)
        }
        "status" => {
            let mut code = 0;
            for name in units {
                let n = canonical(&name);
                match st.units.get(&n) {
                    Some(u) => {
                        let dot = if u.state == "active" { "●" } else { "×" };
                        println!("{dot} {n}.service");
                        println!(
                            "     Loaded: loaded (/usr/lib/systemd/system/{n}.service; enabled; preset: enabled)"
                        );
                        println!("     Active: {} ", u.state);
                        if !u.last_error.is_empty() {
                            println!("   {}", u.last_error);
                        }
                        if u.state != "active" {
                            code = 3;
                        }
                    }
                    None => {
                        eprintln!("Unit {n}.service could not be found.");
                        code = 4;
                    }
                }
            }
            Ok(code)
        }
        other => {
            eprintln!("Unknown command verb '{other}'.");
            Ok(1)
        }
    }
}
