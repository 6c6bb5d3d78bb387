//! `recover ovirt-hosted-engine`: the self-hosted engine VM is down because libvirtd refuses
//! the expired VDSM certificate (reference A12: `The server certificate
//! /etc/pki/vdsm/certs/vdsmcert.pem has expired`, libvirtd fails, vdsmd with it, the
//! HostedEngine VM cannot start), so there is no engine to sign a new certificate. Two ways to
//! get the VM up long enough, run on the hosted-engine host:
//!
//! - **`dropin`** (default): systemd drop-ins under `/run` take libvirtd's TLS listener away,
//!   in both ways vdsm's libvirt configurator (oVirt/vdsm
//!   `lib/vdsm/tool/configurators/libvirt.py`) sets one up:
//!   - vdsm ≥ 4.40 (oVirt 4.4 and 4.5) uses socket activation: libvirtd.service requires
//!     `libvirtd-tls.socket` (a symlink in `/etc/systemd/system/libvirtd.service.requires/`)
//!     and libvirtd loads the certificate for the TLS socket systemd passes it.
//!     [`SOCKET_DROPIN`] gives the socket `ConditionPathExists=!<the drop-in itself>`, so
//!     while it exists a start of the socket is skipped; the socket is stopped, and libvirtd,
//!     which still starts when a required unit is skipped by a condition (systemd.unit(5):
//!     "other units are still pulled in and ordered as if this unit was successfully
//!     activated"), gets no TLS socket. Written only on hosts where the socket is required or
//!     active.
//!   - older vdsm turns on `listen_tls` and puts `--listen` in `/etc/sysconfig/libvirtd`;
//!     [`DROPIN`] resets `ExecStart=` to `/usr/sbin/libvirtd` without `$LIBVIRTD_ARGS`, and
//!     `listen_tls` has no effect without `--listen` (libvirt's `libvirtd.conf`). Written on
//!     every host (harmless where `LIBVIRTD_ARGS` is already empty).
//!
//!   Either way libvirtd starts on its local UNIX sockets only and never loads the expired
//!   certificate. vdsmd and the HA agent then start the HostedEngine VM (`hosted-engine
//!   --vm-start`, then `--vm-status --json` until the engine's health is `good`). The clock is
//!   never touched. Risks: while the drop-ins are in place the host accepts no TLS connections
//!   (no migrations to or from it, the engine cannot manage it); they live under `/run`, so a
//!   reboot drops them by itself. Unverified on a real host: that a condition-skipped
//!   `libvirtd-tls.socket` lets a requiring libvirtd.service start (the man page's words).
//! - **`clock`** (the seed's way, seed 003): `systemctl stop chronyd`, `timedatectl set-time`
//!   inside the certificate's validity, libvirtd and vdsmd restarted, the VM started and
//!   waited for, then the clock and time sync restored. The clock change is journaled in the
//!   agent's state directory (`recover-clock.json`: the real time, the boot-time clock and
//!   whether chronyd ran) **before** it is made; every path out of the change restores it, and
//!   the agent undoes a pending change first thing when it starts again after a crash
//!   ([`undo_pending_clock`]), setting the time to the journaled real time plus the boot-time
//!   seconds elapsed since. Risks: everything on the host (logs, cron, Kerberos, other
//!   certificates, the VM's own clock at boot) sees a wrong time for the minutes the VM takes
//!   to start; a host reboot in that window loses the boot-time reference (the journal is then
//!   only a record, and chronyd must step the clock).
//!
//! Either way the first half (`--csr-out`) ends with the VM up and a CSR from the host's own
//! key ([`Local::ovirt_host_csr`]); the engine signs it (`certfleet-agent sign` on the engine
//! VM); the second half (`--cert-in`) checks the certificate without changing anything, then
//! (drop-in way) removes the drop-in and reloads systemd, and installs it with
//! [`Local::ovirt_host_install`] (backups, every copy, libvirtd restarted **with** its TLS
//! listener, vdsmd, verified). If that install fails the drop-in is put back so the VM's host
//! stays up. Decision: with the clock way the clock is restored before the CSR is even made,
//! so it is back at the real time for the minutes the operator needs on the engine; libvirtd
//! keeps running with the certificate it loaded at start.
//!
//! Every action is appended to `recover-audit.jsonl` in the state directory (time, command,
//! way, what was done, outcome).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Local, RecoverError, VDSM_CA, VDSM_CERT, audit};
use crate::config::AgentConfig;
use crate::state::StateDir;

/// The temporary drop-in (under `/run`: never survives a reboot).
pub const DROPIN: &str = "/run/systemd/system/libvirtd.service.d/50-certfleet-recover-no-tls.conf";
/// The temporary drop-in that keeps `libvirtd-tls.socket` from starting (socket activation).
pub const SOCKET_DROPIN: &str =
    "/run/systemd/system/libvirtd-tls.socket.d/50-certfleet-recover-no-tls.conf";
/// What it holds: a condition that fails while the drop-in itself exists.
const SOCKET_DROPIN_TEXT: &str = "# Written by `certfleet-agent recover ovirt-hosted-engine --way dropin`:\n\
# libvirtd-tls.socket skipped (libvirtd gets no TLS socket) while the VDSM certificate is expired.\n\
# Removed by `recover ovirt-hosted-engine --cert-in`; under /run, so gone at the next boot.\n\
[Unit]\nConditionPathExists=!/run/systemd/system/libvirtd-tls.socket.d/50-certfleet-recover-no-tls.conf\n";
/// vdsm ≥ 4.40's requirement of the TLS socket (`_inject_unit_requirement`).
const TLS_SOCKET_REQUIREMENT: &str =
    "/etc/systemd/system/libvirtd.service.requires/libvirtd-tls.socket";
/// The TLS socket unit.
const TLS_SOCKET: &str = "libvirtd-tls.socket";
/// What it holds: libvirtd without `$LIBVIRTD_ARGS` (so without `--listen`).
const DROPIN_TEXT: &str = "# Written by `certfleet-agent recover ovirt-hosted-engine --way dropin`:\n\
# libvirtd without --listen (no TLS listener) while the VDSM certificate is expired.\n\
# Removed by `recover ovirt-hosted-engine --cert-in`; under /run, so gone at the next boot.\n\
[Service]\nExecStart=\nExecStart=/usr/sbin/libvirtd\n";
/// The clock journal in the agent's state directory.
const CLOCK_JOURNAL: &str = "recover-clock.json";

/// How the VM is brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// libvirtd without its TLS listener (systemd drop-in).
    DropIn,
    /// The host clock set back inside the certificate's validity.
    Clock,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::DropIn => "dropin",
            Way::Clock => "clock",
        }
    }
}

/// A clock change made (or about to be made) by the clock way, journaled before it is made.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClockChange {
    /// Real time (Unix seconds) just before the change.
    pub real_before: i64,
    /// The boot-time clock (`/proc/uptime`, seconds) at that moment.
    pub uptime_before: f64,
    /// The time set.
    pub set_to: i64,
    /// Whether chronyd was active (started again on restore).
    pub chronyd_was_active: bool,
}

fn uptime() -> Result<f64, RecoverError> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|e| RecoverError::Input {
        path: PathBuf::from("/proc/uptime"),
        reason: e.to_string(),
    })?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RecoverError::Input {
            path: PathBuf::from("/proc/uptime"),
            reason: format!("unexpected content {text:?}"),
        })
}

/// `YYYY-MM-DD HH:MM:SS UTC`, a form `timedatectl set-time` takes (systemd.time(7)).
fn systemd_time(secs: i64) -> String {
    certfleet_common::model::format_time(secs)
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

/// Tool runner shared by the recovery and the start-up undo.
struct Host<'a> {
    cfg: &'a AgentConfig,
    timeout: Duration,
    out: &'a (dyn Fn(String) + Sync),
}

impl Host<'_> {
    fn run(&self, tool: &str, default: &str, args: &[&str]) -> Result<String, RecoverError> {
        let p = self.cfg.tool(tool, default);
        let shown = format!("{} {}", self.cfg.shown(&p), args.join(" "));
        (self.out)(format!("$ {shown}"));
        let o = crate::exec::run_ok(&p, args, None, self.timeout)
            .map_err(|e| RecoverError::Check(format!("`{shown}` failed: {e}")))?;
        Ok(o.stdout)
    }

    fn systemctl(&self, args: &[&str]) -> Result<String, RecoverError> {
        self.run("systemctl", "/usr/bin/systemctl", args)
    }

    fn is_active(&self, unit: &str) -> bool {
        let p = self.cfg.tool("systemctl", "/usr/bin/systemctl");
        crate::exec::run(&p, &["is-active", unit], None, self.timeout)
            .is_ok_and(|o| o.stdout.trim() == "active")
    }

    fn set_time(&self, secs: i64) -> Result<(), RecoverError> {
        self.run(
            "timedatectl",
            "/usr/bin/timedatectl",
            &["set-time", &systemd_time(secs)],
        )
        .map(|_| ())
    }

    /// Restores a journaled clock change: the real time now (journaled real time plus the
    /// boot-time seconds since), then chronyd if it ran; removes the journal last.
    ///
    /// Idempotent: setting the computed time again is harmless, and the journal is removed
    /// only after both steps succeeded, so an interrupted restore is redone.
    fn restore_clock(&self, state: &StateDir, c: &ClockChange) -> Result<String, RecoverError> {
        let elapsed = (uptime()? - c.uptime_before).max(0.0);
        let real_now = c.real_before + elapsed.round() as i64;
        self.set_time(real_now)?;
        if c.chronyd_was_active {
            self.systemctl(&["start", "chronyd"])?;
        }
        let p = state.path().join(CLOCK_JOURNAL);
        std::fs::remove_file(&p).map_err(|e| RecoverError::Input {
            path: p.clone(),
            reason: format!("clock restored but the journal could not be removed: {e}"),
        })?;
        audit(
            state,
            "clock restored",
            json!({"set_to": systemd_time(real_now), "chronyd_started": c.chronyd_was_active}),
        )?;
        tracing::info!(set_to = real_now, "restored the host clock");
        Ok(format!(
            "clock restored to {}{}",
            systemd_time(real_now),
            if c.chronyd_was_active {
                ", chronyd started"
            } else {
                ""
            }
        ))
    }
}

fn read_clock_journal(state: &StateDir) -> Result<Option<ClockChange>, RecoverError> {
    let p = state.path().join(CLOCK_JOURNAL);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RecoverError::Input {
                path: p,
                reason: format!("unreadable clock journal (restore the clock by hand): {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecoverError::Input {
            path: p,
            reason: e.to_string(),
        }),
    }
}

/// Run first whenever the agent starts (`run` and every `recover`): when a clock recovery was
/// interrupted (agent killed, host tool hung), its journaled clock change is undone before
/// anything else. Returns what was done, `None` when nothing was pending.
///
/// Idempotent: see [`Host::restore_clock`]; nothing pending is a no-op.
pub fn undo_pending_clock(
    cfg: &AgentConfig,
    state: &StateDir,
    timeout: Duration,
    out: &(dyn Fn(String) + Sync),
) -> Result<Option<String>, RecoverError> {
    let Some(c) = read_clock_journal(state)? else {
        return Ok(None);
    };
    tracing::warn!(
        set_to = c.set_to,
        "undoing the clock change of an interrupted hosted-engine recovery"
    );
    out("undoing the clock change of an interrupted hosted-engine recovery".into());
    audit(
        state,
        "undo pending clock change",
        json!({"set_to": systemd_time(c.set_to)}),
    )?;
    let host = Host { cfg, timeout, out };
    host.restore_clock(state, &c).map(Some)
}

/// Settings: how long to wait for the engine VM, and how often to look.
fn wait_settings(cfg: &AgentConfig) -> (Duration, Duration) {
    let get = |k: &str, d: u64| {
        cfg.setting(k)
            .and_then(|v| humantime::parse_duration(v).ok())
            .unwrap_or(Duration::from_secs(d))
    };
    (get("ovirt.he_vm_wait", 900), get("ovirt.he_vm_poll", 10))
}

/// The engine's health from `hosted-engine --vm-status --json`: `Some(detail)` of the first
/// host reporting the VM up and healthy, else `None`.
pub fn engine_up(status_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(status_json.trim()).ok()?;
    v.as_object()?.values().find_map(|h| {
        let s = &h["engine-status"];
        // Older ovirt-hosted-engine-ha prints engine-status as a JSON string.
        let s = match s.as_str() {
            Some(text) => serde_json::from_str(text).ok()?,
            None => s.clone(),
        };
        (s["vm"] == "up" && s["health"] == "good")
            .then(|| s["detail"].as_str().unwrap_or("up").to_owned())
    })
}

impl Local<'_> {
    fn host(&self) -> Host<'_> {
        Host {
            cfg: self.cfg,
            timeout: self.timeout,
            out: self.out,
        }
    }

    /// The time to set the clock to: one day before the VDSM certificate (or the host's CA,
    /// if earlier) expires, never before either became valid.
    fn clock_target(&self) -> Result<i64, RecoverError> {
        let mut lo = i64::MIN;
        let mut hi = i64::MAX;
        for rel in [VDSM_CERT, VDSM_CA] {
            let p = self.vdsm(rel);
            let rec = std::fs::read(&p)
                .ok()
                .and_then(|b| certfleet_common::pem::first_certificate(&b).ok())
                .and_then(|d| certfleet_common::x509::parse_der(&d).ok())
                .ok_or_else(|| RecoverError::Input {
                    path: p.clone(),
                    reason: "no readable certificate to take the validity from".into(),
                })?;
            lo = lo.max(rec.not_before);
            hi = hi.min(rec.not_after);
        }
        if hi - lo < 120 {
            return Err(RecoverError::Check(format!(
                "no time is inside the validity of both {} and {}",
                self.shown_vdsm(VDSM_CERT),
                self.shown_vdsm(VDSM_CA)
            )));
        }
        Ok((hi - 86_400).max(lo + (hi - lo) / 2))
    }

    /// What the first half will do, in order.
    fn start_plan(&self, way: Way, target: Option<i64>, csr_out: &Path) -> Vec<String> {
        let mut p = Vec::new();
        match way {
            Way::DropIn => {
                p.push(format!(
                    "write {} (libvirtd without --listen: no TLS listener)",
                    DROPIN
                ));
                if self.socket_activated() {
                    p.push(format!(
                        "write {SOCKET_DROPIN} (libvirtd is socket-activated: {TLS_SOCKET} \
                         skipped while it exists)"
                    ));
                }
                p.push("systemctl daemon-reload".into());
                if self.socket_activated() {
                    p.push(format!("systemctl stop {TLS_SOCKET}"));
                }
            }
            Way::Clock => {
                p.push(format!(
                    "journal the clock change in the agent state ({CLOCK_JOURNAL})"
                ));
                p.push("systemctl stop chronyd".into());
                p.push(format!(
                    "timedatectl set-time '{}'",
                    target.map(systemd_time).unwrap_or_default()
                ));
            }
        }
        p.push("systemctl restart libvirtd, then vdsmd".into());
        p.push("hosted-engine --vm-start; wait for --vm-status: health good".into());
        if way == Way::Clock {
            p.push("restore the clock (journaled time + elapsed) and start chronyd".into());
        }
        p.push(format!(
            "write a CSR from {} to {}",
            self.shown_vdsm(super::VDSM_KEY),
            csr_out.display()
        ));
        p
    }

    /// First half: brings the HostedEngine VM up with the expired certificate (see the module
    /// doc for the two ways) and writes the CSR for the engine to sign. Prints its plan first;
    /// `dry_run` prints only.
    ///
    /// Idempotent: the drop-in is written whole (same bytes on a repeat), restarts and
    /// `--vm-start` are safe to repeat (a running VM is left alone), the clock change is
    /// journaled before it is made and restored on every way out (or at the next agent start),
    /// and the CSR step is answered from the journal on a repeat.
    pub fn hosted_engine_start(
        &self,
        way: Way,
        csr_out: &Path,
        dry_run: bool,
    ) -> Result<String, RecoverError> {
        let current = self.current_vdsm().ok_or_else(|| RecoverError::Input {
            path: self.vdsm(VDSM_CERT),
            reason: "no readable VDSM certificate".into(),
        })?;
        let now = certfleet_common::model::now();
        (self.out)(format!(
            "{} : notAfter {}{}",
            self.shown_vdsm(VDSM_CERT),
            certfleet_common::model::format_time(current.not_after),
            if current.not_after <= now {
                " (EXPIRED)"
            } else {
                ""
            }
        ));
        let pending_dropin = self.cfg.host_path(DROPIN).exists();
        if current.not_after > now && !pending_dropin {
            return Err(RecoverError::Check(format!(
                "{} is valid until {}: libvirtd can start with it; use `recover ovirt-host` \
                 or the ovirt-hosts recipe instead",
                self.shown_vdsm(VDSM_CERT),
                certfleet_common::model::format_time(current.not_after)
            )));
        }
        let target = match way {
            Way::Clock => Some(self.clock_target()?),
            Way::DropIn => None,
        };
        (self.out)(format!(
            "plan (recover ovirt-hosted-engine --way {}):",
            way.name()
        ));
        for (i, line) in self.start_plan(way, target, csr_out).iter().enumerate() {
            (self.out)(format!("  {}. {line}", i + 1));
        }
        if dry_run {
            return Ok("dry run: nothing changed".into());
        }
        audit(
            self.state,
            "hosted-engine recovery started",
            json!({"way": way.name(), "csr_out": csr_out.display().to_string()}),
        )?;
        let host = self.host();
        match way {
            Way::DropIn => {
                self.write_dropin()?;
                self.vm_up(&host)?;
            }
            Way::Clock => {
                let target = target.expect("computed for the clock way");
                let change = ClockChange {
                    real_before: certfleet_common::model::now(),
                    uptime_before: uptime()?,
                    set_to: target,
                    chronyd_was_active: host.is_active("chronyd"),
                };
                let jp = self.state.path().join(CLOCK_JOURNAL);
                certfleet_common::atomic::write_file(
                    &jp,
                    &serde_json::to_vec_pretty(&change).expect("plain struct"),
                    certfleet_common::atomic::PRIVATE,
                )?;
                audit(
                    self.state,
                    "clock change journaled",
                    json!({"set_to": systemd_time(target), "chronyd_was_active": change.chronyd_was_active}),
                )?;
                let changed = (|| -> Result<(), RecoverError> {
                    if change.chronyd_was_active {
                        host.systemctl(&["stop", "chronyd"])?;
                    }
                    host.set_time(target)?;
                    crate::act::intent::crash_point("recover.hosted_engine:clock-set");
                    self.vm_up(&host)
                })();
                let restored = host.restore_clock(self.state, &change);
                match (changed, restored) {
                    (Ok(()), Ok(msg)) => (self.out)(msg),
                    (Ok(()), Err(e)) => return Err(e),
                    (Err(e), Ok(msg)) => {
                        (self.out)(msg);
                        audit(self.state, "failed", json!({"error": e.to_string()}))?;
                        return Err(RecoverError::Check(format!("{e} (the clock was restored)")));
                    }
                    (Err(e), Err(r)) => {
                        return Err(RecoverError::Check(format!(
                            "{e}; AND restoring the clock failed: {r} (the journal {} is kept; \
                             the agent retries at its next start)",
                            jp.display()
                        )));
                    }
                }
            }
        }
        let san = self.ovirt_host_csr(csr_out, None)?;
        audit(
            self.state,
            "engine VM up, CSR written",
            json!({"csr": csr_out.display().to_string(), "san": san}),
        )?;
        Ok(format!(
            "the HostedEngine VM is up; wrote {}\nnext, on the engine VM: certfleet-agent sign \
             --csr {} --out <host>.cer --san {san}\nthen here: certfleet-agent recover \
             ovirt-hosted-engine --way {} --cert-in <host>.cer",
            csr_out.display(),
            csr_out.display(),
            way.name()
        ))
    }

    /// Whether libvirtd gets its TLS listener from `libvirtd-tls.socket` (vdsm ≥ 4.40 requires
    /// it; or the socket is simply running), or a socket drop-in of ours is already in place.
    fn socket_activated(&self) -> bool {
        std::fs::symlink_metadata(self.cfg.host_path(TLS_SOCKET_REQUIREMENT)).is_ok()
            || self.cfg.host_path(SOCKET_DROPIN).exists()
            || self.host().is_active(TLS_SOCKET)
    }

    /// Writes the drop-ins (see the module doc), reloads systemd and stops the TLS socket.
    ///
    /// Idempotent: the files are written whole (same bytes on a repeat), and the socket is
    /// stopped only when it runs.
    fn write_dropin(&self) -> Result<(), RecoverError> {
        let socket = self.socket_activated();
        let mut written = vec![(DROPIN, DROPIN_TEXT)];
        if socket {
            written.push((SOCKET_DROPIN, SOCKET_DROPIN_TEXT));
        }
        for (path, text) in written {
            let p = self.cfg.host_path(path);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| RecoverError::Input {
                    path: dir.to_path_buf(),
                    reason: format!("cannot create the drop-in directory: {e}"),
                })?;
            }
            certfleet_common::atomic::write_file(
                &p,
                text.as_bytes(),
                certfleet_common::atomic::PUBLIC,
            )?;
            audit(self.state, "drop-in written", json!({"path": path}))?;
            (self.out)(format!("wrote {path}"));
        }
        let host = self.host();
        host.systemctl(&["daemon-reload"])?;
        if socket && host.is_active(TLS_SOCKET) {
            host.systemctl(&["stop", TLS_SOCKET])?;
            audit(
                self.state,
                "TLS socket stopped",
                json!({"unit": TLS_SOCKET}),
            )?;
        }
        Ok(())
    }

    /// Removes the drop-ins, reloads systemd and starts the TLS socket again where ours kept it
    /// from starting.
    ///
    /// Idempotent: absent drop-ins are skipped; starting a running socket is a no-op.
    fn remove_dropin(&self) -> Result<(), RecoverError> {
        let mut socket = false;
        for path in [DROPIN, SOCKET_DROPIN] {
            let p = self.cfg.host_path(path);
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    socket |= path == SOCKET_DROPIN;
                    audit(self.state, "drop-in removed", json!({"path": path}))?;
                    (self.out)(format!("removed {path}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RecoverError::Input {
                        path: p,
                        reason: format!("cannot remove the drop-in: {e}"),
                    });
                }
            }
        }
        let host = self.host();
        host.systemctl(&["daemon-reload"])?;
        if socket {
            host.systemctl(&["start", TLS_SOCKET])?;
            audit(
                self.state,
                "TLS socket started",
                json!({"unit": TLS_SOCKET}),
            )?;
        }
        Ok(())
    }

    /// libvirtd and vdsmd (re)started, the VM started and waited for.
    fn vm_up(&self, host: &Host<'_>) -> Result<(), RecoverError> {
        host.systemctl(&["restart", "libvirtd"])?;
        host.systemctl(&["restart", "vdsmd"])?;
        host.run("hosted-engine", "/usr/sbin/hosted-engine", &["--vm-start"])?;
        let (wait, poll) = wait_settings(self.cfg);
        let started = Instant::now();
        let he = self.cfg.tool("hosted-engine", "/usr/sbin/hosted-engine");
        loop {
            let o = crate::exec::run(&he, &["--vm-status", "--json"], None, self.timeout)
                .map_err(|e| RecoverError::Check(e.to_string()))?;
            if o.code == Some(0)
                && let Some(detail) = engine_up(&o.stdout)
            {
                (self.out)(format!(
                    "HostedEngine VM up ({detail}) after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                audit(self.state, "engine VM up", json!({"detail": detail}))?;
                return Ok(());
            }
            if started.elapsed() >= wait {
                return Err(RecoverError::Check(format!(
                    "the HostedEngine VM is not up after {}s (last `hosted-engine --vm-status \
                     --json`: {}{})",
                    wait.as_secs(),
                    o.stdout.trim(),
                    o.stderr.trim()
                )));
            }
            std::thread::sleep(poll);
        }
    }

    /// Second half: the certificate the engine signed is checked without changing anything,
    /// then (drop-in way) the drop-in is removed and systemd reloaded, and the certificate is
    /// installed by [`Local::ovirt_host_install`] (libvirtd restarted with its TLS listener).
    /// If the install fails, the drop-in is put back and libvirtd and vdsmd restarted, so the
    /// VM's host keeps running as after the first half.
    ///
    /// Idempotent: removing an absent drop-in is a no-op; the install is answered from the
    /// journal when it already happened (verification runs again).
    pub fn hosted_engine_finish(
        &self,
        way: Way,
        cert_in: &Path,
        dry_run: bool,
    ) -> Result<String, RecoverError> {
        (self.out)(format!(
            "plan (recover ovirt-hosted-engine --way {} --cert-in):",
            way.name()
        ));
        let mut steps = vec![format!("check {} against this host", cert_in.display())];
        if way == Way::DropIn {
            steps.push(format!(
                "remove {DROPIN} (and {SOCKET_DROPIN} where written); systemctl daemon-reload; \
                 systemctl start {TLS_SOCKET} where it was kept from starting"
            ));
        }
        steps.push(
            "install at every VDSM path with backups; restart libvirtd (with TLS) and vdsmd; verify"
                .into(),
        );
        for (i, s) in steps.iter().enumerate() {
            (self.out)(format!("  {}. {s}", i + 1));
        }
        // All checks, nothing changed.
        let checked = self.ovirt_host_install(cert_in, true)?;
        if dry_run {
            return Ok(checked);
        }
        audit(
            self.state,
            "hosted-engine recovery: install",
            json!({"way": way.name(), "cert_in": cert_in.display().to_string()}),
        )?;
        let had_dropin =
            self.cfg.host_path(DROPIN).exists() || self.cfg.host_path(SOCKET_DROPIN).exists();
        if way == Way::DropIn || had_dropin {
            self.remove_dropin()?;
        }
        match self.ovirt_host_install(cert_in, false) {
            Ok(msg) => {
                for path in [DROPIN, SOCKET_DROPIN] {
                    if self.cfg.host_path(path).exists() {
                        return Err(RecoverError::Check(format!("{path} is still present")));
                    }
                }
                audit(self.state, "recovered", json!({"result": msg}))?;
                Ok(format!("{msg}; libvirtd runs with its TLS listener again"))
            }
            Err(e) => {
                audit(
                    self.state,
                    "install failed",
                    json!({"error": e.to_string()}),
                )?;
                if had_dropin {
                    let back = self.write_dropin().and_then(|()| {
                        let h = self.host();
                        h.systemctl(&["restart", "libvirtd"])?;
                        h.systemctl(&["restart", "vdsmd"]).map(|_| ())
                    });
                    if let Err(b) = back {
                        return Err(RecoverError::Check(format!(
                            "{e}; AND putting the drop-in back failed: {b}"
                        )));
                    }
                    return Err(RecoverError::Check(format!(
                        "{e} (the drop-in is back: libvirtd runs without TLS as before)"
                    )));
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_health_from_vm_status_json() {
        let up = r#"{"1": {"engine-status": {"vm": "up", "health": "good", "detail": "Up"}}, "global_maintenance": false}"#;
        assert_eq!(engine_up(up).as_deref(), Some("Up"));
        let powering = r#"{"1": {"engine-status": {"vm": "up", "health": "bad", "detail": "Powering up", "reason": "bad vm status"}}, "global_maintenance": false}"#;
        assert_eq!(engine_up(powering), None);
        let as_string = r#"{"2": {"engine-status": "{\"vm\": \"up\", \"health\": \"good\", \"detail\": \"Up\"}"}, "global_maintenance": true}"#;
        assert_eq!(engine_up(as_string).as_deref(), Some("Up"));
        assert_eq!(engine_up("not json"), None);
        assert_eq!(engine_up(r#"{"global_maintenance": false}"#), None);
    }

    #[test]
    fn times_in_the_form_timedatectl_takes() {
        assert_eq!(systemd_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
