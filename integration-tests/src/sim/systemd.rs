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
//!
//! Units can also carry their `ExecStart=` line, drop-ins and dependencies, for the
//! hosted-engine recovery: the command line is the shipped one with `$VAR`s from
//! `/etc/sysconfig/<unit>` (the unit's `EnvironmentFile=`), overridden by drop-ins in
//! `/etc/systemd/system/<unit>.service.d/*.conf` and `/run/systemd/system/<unit>.service.d/*.conf`
//! (applied in file-name order; `ExecStart=` empty resets, a second one without a reset is
//! refused as systemd refuses it for a non-oneshot service), and only `daemon-reload` loads
//! them (a start with changed drop-ins prints systemd's "changed on disk" warning and uses the
//! loaded line, as systemd does). A unit whose certificates serve only a TLS listener
//! (`certs_only_with`: libvirtd's `--listen`, which makes `listen_tls` take effect, per
//! `libvirtd.conf`) needs them only when its loaded command line has that argument.
//! `requires` models `Requires=`: starting the unit starts the required ones first and fails
//! with "A dependency job … failed" when one cannot start. Requirements also come from
//! `/etc/systemd/system/<unit>.requires/` (and `/run/…`), the way vdsm ≥ 4.40
//! (`lib/vdsm/tool/configurators/libvirt.py`, `_inject_unit_requirement`) makes libvirtd.service
//! require `libvirtd-tls.socket`. A unit whose certificates serve a socket systemd passes it
//! (`certs_with_active`: libvirtd with socket activation loads them for the TLS socket) needs
//! them only when that socket unit is active at its start. `ConditionPathExists=` lines
//! (`!` negates) in `<unit>.d/*.conf` drop-ins are loaded by `daemon-reload`; a start whose
//! condition fails leaves the unit inactive and, as systemd.unit(5) says, "other units are still
//! pulled in and ordered as if this unit was successfully activated", so a requiring unit still
//! starts (from the man page; not tried on a real host). Certificate validity is checked
//! against the simulated host clock ([`super::clock::host_now`]). Unverified: the exact text
//! of the dependency failure, and that vdsmd's only hard start dependency here is libvirtd.

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
    /// `ExecStart=` as shipped (empty: not modelled).
    #[serde(default)]
    pub exec_start: String,
    /// `ExecStart=` as the last `daemon-reload` loaded it, drop-ins applied and `$VAR`s
    /// expanded (`Err` text when the drop-ins made it invalid).
    #[serde(default)]
    pub loaded_exec: Option<std::result::Result<String, String>>,
    /// The certificates are needed only when the loaded command line has this argument.
    #[serde(default)]
    pub certs_only_with: Option<String>,
    /// Units it `Requires=`.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The certificates are needed only when this (socket) unit is active at the start.
    #[serde(default)]
    pub certs_with_active: Option<String>,
    /// `ConditionPathExists=` values of its drop-ins, as the last `daemon-reload` loaded them.
    #[serde(default)]
    pub loaded_conditions: Vec<String>,
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

/// The unit's file name: `libvirtd` → `libvirtd.service`; `libvirtd-tls.socket` as it is.
fn unit_file(n: &str) -> String {
    if n.contains('.') {
        n.to_owned()
    } else {
        format!("{n}.service")
    }
}

/// Entries of `<unit file>.<suffix>` under `/run/systemd/system` and `/etc/systemd/system`,
/// by file name (the one in `/etc` masks the one in `/run`), sorted.
fn unit_dir_entries(host: &SimHost, n: &str, suffix: &str) -> Vec<(String, std::path::PathBuf)> {
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    for dir in ["/run/systemd/system", "/etc/systemd/system"] {
        let d = host.path(&format!("{dir}/{}.{suffix}", unit_file(n)));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                files.retain(|(f, _)| *f != name);
                files.push((name, e.path()));
            }
        }
    }
    files.sort();
    files
}

/// The unit's drop-in files (`<unit file>.d/*.conf`), in the order systemd applies them.
fn dropins(host: &SimHost, n: &str) -> Vec<std::path::PathBuf> {
    unit_dir_entries(host, n, "d")
        .into_iter()
        .filter(|(name, _)| name.ends_with(".conf"))
        .map(|(_, p)| p)
        .collect()
}

/// `ConditionPathExists=` values of the unit's drop-ins (an empty one resets the list).
fn conditions(host: &SimHost, n: &str) -> Vec<String> {
    let mut out = Vec::new();
    for path in dropins(host, n) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("ConditionPathExists=") {
                if v.trim().is_empty() {
                    out.clear();
                } else {
                    out.push(v.trim().to_owned());
                }
            }
        }
    }
    out
}

/// The first loaded condition that does not hold now.
fn failed_condition(host: &SimHost, u: &Unit) -> Option<String> {
    u.loaded_conditions.iter().find_map(|c| {
        let (negated, path) = match c.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, c.as_str()),
        };
        let exists = std::fs::symlink_metadata(host.path(path)).is_ok();
        (exists == negated).then(|| format!("ConditionPathExists={c}"))
    })
}

/// `Requires=` from the unit and from its `.requires/` directories.
fn requirements(host: &SimHost, n: &str, u: &Unit) -> Vec<String> {
    let mut all: Vec<String> = u.requires.iter().map(|r| canonical(r)).collect();
    for (name, _) in unit_dir_entries(host, n, "requires") {
        let name = canonical(&name);
        if !all.contains(&name) {
            all.push(name);
        }
    }
    all
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

/// Defines the socket unit `name` (`libvirtd-tls.socket`), active, needing nothing.
pub fn define_socket(host: &SimHost, name: &str) -> Result<()> {
    define_unit(host, name, &[])
}

/// The certificates of `unit` are needed only when the socket unit `socket` is active at its
/// start (libvirtd with socket activation).
pub fn certs_with_socket(host: &SimHost, unit: &str, socket: &str) -> Result<()> {
    let mut st = load(host)?;
    let u = st.units.get_mut(&canonical(unit)).context("no such unit")?;
    u.certs_with_active = Some(socket.to_owned());
    u.certs_only_with = None;
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

/// Gives `unit` its shipped `ExecStart=` line and `Requires=` list; its certificates are then
/// needed only when the loaded command line contains `certs_only_with` (if given). Loads it
/// as `daemon-reload` would.
pub fn define_exec(
    host: &SimHost,
    unit: &str,
    exec_start: &str,
    certs_only_with: Option<&str>,
    requires: &[&str],
) -> Result<()> {
    let mut st = load(host)?;
    let n = canonical(unit);
    let u = st.units.get_mut(&n).context("no such unit")?;
    u.exec_start = exec_start.to_owned();
    u.certs_only_with = certs_only_with.map(str::to_owned);
    u.requires = requires.iter().map(|s| s.to_string()).collect();
    u.loaded_exec = Some(effective_exec(host, &n, exec_start));
    save(host, &st)
}

/// The `ExecStart=` of `unit` as the files on disk give it now.
fn effective_exec(
    host: &SimHost,
    unit: &str,
    shipped: &str,
) -> std::result::Result<String, String> {
    let mut exec = Some(shipped.to_owned());
    for path in dropins(host, unit) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let Some(v) = line.trim().strip_prefix("ExecStart=") else {
                continue;
            };
            if v.trim().is_empty() {
                exec = None;
            } else if exec.is_some() {
                return Err(format!(
                    "{unit}.service has more than one ExecStart= setting, which is only \
                     allowed for Type=oneshot services. Refusing."
                ));
            } else {
                exec = Some(v.trim().to_owned());
            }
        }
    }
    let exec =
        exec.ok_or_else(|| format!("{unit}.service has no ExecStart= setting. Refusing."))?;
    // EnvironmentFile=-/etc/sysconfig/<unit>
    let env =
        std::fs::read_to_string(host.path(&format!("/etc/sysconfig/{unit}"))).unwrap_or_default();
    let vars: BTreeMap<String, String> = env
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    Ok(exec
        .split_whitespace()
        .map(|w| match w.strip_prefix('$') {
            Some(var) => vars
                .get(var.trim_start_matches('{').trim_end_matches('}'))
                .cloned()
                .unwrap_or_default(),
            None => w.to_owned(),
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" "))
}

/// A unit's current record.
pub fn unit(host: &SimHost, unit: &str) -> Result<Unit> {
    load(host)?
        .units
        .get(&canonical(unit))
        .cloned()
        .context("no such unit")
}

/// Whether `u` needs its certificates for this start: always, unless they serve only a TLS
/// listener (`--listen` on the loaded command line, or an active TLS socket unit).
fn certs_needed(st: &State, u: &Unit) -> bool {
    let by_arg = match (&u.certs_only_with, &u.loaded_exec) {
        (Some(arg), Some(Ok(line))) => Some(line.split_whitespace().any(|w| w == arg)),
        _ => None,
    };
    let by_socket = u.certs_with_active.as_ref().map(|s| {
        st.units
            .get(&canonical(s))
            .is_some_and(|d| d.state == "active")
    });
    match (by_arg, by_socket) {
        (None, None) => true,
        (a, b) => a.unwrap_or(false) || b.unwrap_or(false),
    }
}

fn check_certs(host: &SimHost, u: &Unit, certs_needed: bool) -> std::result::Result<(), String> {
    let now = super::clock::host_now(host);
    for c in u.requires_certs.iter().filter(|_| certs_needed) {
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

/// Starts unit `n` (its `Requires=` first); `Err(true)` when a dependency failed, `Err(false)`
/// when the unit itself did. The outcome is recorded in `st`.
fn start_unit(
    host: &SimHost,
    st: &mut State,
    n: &str,
    depth: u32,
) -> std::result::Result<(), bool> {
    let u = st.units.get(n).cloned().ok_or(false)?;
    if let Some(cond) = failed_condition(host, &u) {
        let entry = st.units.get_mut(n).expect("present");
        entry.state = "inactive".into();
        entry.last_error = format!("{n} was skipped because of an unmet condition check ({cond})");
        return Ok(());
    }
    for r in requirements(host, n, &u) {
        let active = st.units.get(&r).is_some_and(|d| d.state == "active");
        if !active && (depth > 8 || start_unit(host, st, &r, depth + 1).is_err()) {
            let entry = st.units.get_mut(n).expect("present");
            entry.state = "failed".into();
            entry.last_error = format!("dependency {} failed to start", unit_file(&r));
            return Err(true);
        }
    }
    if u.start_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(u.start_ms));
    }
    if !u.exec_start.is_empty() && Some(effective_exec(host, n, &u.exec_start)) != u.loaded_exec {
        eprintln!(
            "Warning: The unit file, source configuration file or drop-ins of {n}.service changed on disk. Run 'systemctl daemon-reload' to reload units."
        );
    }
    let outcome = if u.broken {
        Err("service is broken".to_owned())
    } else if let Some(Err(invalid)) = &u.loaded_exec {
        Err(invalid.clone())
    } else {
        check_certs(host, &u, certs_needed(st, &u))
    };
    let entry = st.units.get_mut(n).expect("present");
    match outcome {
        Ok(()) => {
            entry.state = "active".into();
            entry.starts += 1;
            entry.last_error.clear();
            Ok(())
        }
        Err(why) => {
            entry.state = "failed".into();
            entry.last_error = why;
            Err(false)
        }
    }
}

/// `systemctl show -p InvocationID --value UNIT` (also `--property=InvocationID`): the unit's
/// invocation id, which systemd.exec(5) says is "randomly generated each time the unit is
/// started" (here derived from the unit's name and its start count: it changes on every
/// start); empty while the unit is not active. Only this property is simulated; any other
/// prints an empty value. [UNV] the value systemd shows for a unit stopped after running (the
/// simulator prints nothing).
fn show(st: &State, args: &[String]) -> i32 {
    let mut props = Vec::new();
    let mut value_only = false;
    let mut units = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" | "--property" => props.extend(it.next().cloned()),
            "--value" => value_only = true,
            x if x.starts_with("--property=") => props.push(x["--property=".len()..].to_owned()),
            x if x.starts_with('-') => {}
            x => units.push(x.to_owned()),
        }
    }
    for name in units {
        let u = st.units.get(&canonical(&name));
        for p in &props {
            let v = match (p.as_str(), u) {
                ("InvocationID", Some(u)) if u.state == "active" => {
                    let d = ring::digest::digest(
                        &ring::digest::SHA256,
                        format!("{name}:{}", u.starts).as_bytes(),
                    );
                    hex::encode(&d.as_ref()[..16])
                }
                _ => String::new(),
            };
            if value_only {
                println!("{v}");
            } else {
                println!("{p}={v}");
            }
        }
    }
    0
}

/// `systemctl ARGS`; returns the exit code.
pub fn run(host: &SimHost, args: &[String]) -> Result<i32> {
    let mut st = load(host)?;
    if args.first().map(String::as_str) == Some("show") {
        return Ok(show(&st, &args[1..]));
    }
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
                if !st.units.contains_key(&n) {
                    eprintln!("Failed to {verb} {n}.service: Unit {n}.service not found.");
                    code = 5;
                    continue;
                }
                if let Err(dependency) = start_unit(host, &mut st, &n, 0) {
                    if dependency {
                        eprintln!(
                            "A dependency job for {n}.service failed. See 'journalctl -xe' for details."
                        );
                    } else {
                        eprintln!(
                            "Job for {n}.service failed because the control process exited with error code."
                        );
                        eprintln!(
                            "See \"systemctl status {n}.service\" and \"journalctl -xeu {n}.service\" for details."
                        );
                    }
                    code = 1;
                }
            }
            save(host, &st)?;
            Ok(code)
        }
        "daemon-reload" => {
            let names: Vec<String> = st.units.keys().cloned().collect();
            for n in names {
                let conditions = conditions(host, &n);
                let u = st.units.get_mut(&n).expect("listed");
                u.loaded_conditions = conditions;
                if !u.exec_start.is_empty() {
                    u.loaded_exec = Some(effective_exec(host, &n, &u.exec_start));
                }
            }
            save(host, &st)?;
            Ok(0)
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
