//! The simulated host clock and its tools: `timedatectl` and the `chronyd` unit.
//!
//! The "clock" of a simulated host is never the real one: it is the real time plus an offset
//! kept in `ROOT/.sim/clock.json`. The simulated `systemctl` checks certificate validity
//! against it ([`host_now`]), so setting a simulated host's clock back makes its libvirtd
//! accept an expired VDSM certificate, as the seed's hosted-engine procedure relies on
//! (seed 003: `systemctl stop chronyd`, `timedatectl set-time "2023-01-01 12:00:00"`,
//! `systemctl restart libvirtd`). Certfleet's own processes and the real `openssl` keep the
//! real clock.
//!
//! `timedatectl set-time TIME` follows systemd's `timedatectl` (systemd/systemd
//! `src/timedate/timedatectl.c`, `timedated.c`): it refuses with `Failed to set time:
//! Automatic time synchronization is enabled` while the NTP service is active (on EL hosts
//! chrony registers `chronyd.service` in `/usr/lib/systemd/ntp-units.d/`), and takes the
//! `systemd.time(7)` forms `YYYY-MM-DD HH:MM:SS UTC` and `@EPOCH`. Unverified: the exact
//! wording of `timedatectl status` (only the lines used here are printed), and the other
//! timestamp forms (not accepted here). Starting `chronyd` does not step the clock back in
//! the simulator (EL's default `makestep 1.0 3` would, on a real host): the recovery must
//! restore the clock itself, which is what the tests check.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::SimHost;

/// The clock state file.
const STATE: &str = "clock.json";

fn load(host: &SimHost) -> Value {
    std::fs::read(host.state(STATE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"offset_secs": 0, "history": []}))
}

/// Seconds the host clock is ahead of the real one (negative: behind).
pub fn offset(host: &SimHost) -> i64 {
    load(host)["offset_secs"].as_i64().unwrap_or(0)
}

/// The simulated host's current time (Unix seconds).
pub fn host_now(host: &SimHost) -> i64 {
    certfleet_common::model::now() + offset(host)
}

/// Every `set-time` so far: `(real time when set, time set)`.
pub fn history(host: &SimHost) -> Vec<(i64, i64)> {
    load(host)["history"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e["at"].as_i64()?, e["set_to"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Installs `timedatectl` and an active `chronyd` unit on `host`.
pub fn install(host: &SimHost) -> Result<()> {
    host.install_tool("/usr/bin/timedatectl", "timedatectl")?;
    super::systemd::define_unit(host, "chronyd", &[])
}

/// Parses `YYYY-MM-DD HH:MM:SS UTC` or `@EPOCH`.
fn parse(s: &str) -> Option<i64> {
    if let Some(e) = s.strip_prefix('@') {
        return e.parse().ok();
    }
    let t = s.strip_suffix(" UTC")?;
    certfleet_common::model::parse_time(&format!("{}Z", t.replacen(' ', "T", 1)))
}

/// `timedatectl ARGS`; returns the exit code.
pub fn timedatectl(host: &SimHost, args: &[String]) -> Result<i32> {
    let ntp = super::systemd::unit(host, "chronyd")
        .map(|u| u.state == "active")
        .unwrap_or(false);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["set-time", t] => {
            if ntp {
                eprintln!("Failed to set time: Automatic time synchronization is enabled");
                return Ok(1);
            }
            let Some(to) = parse(t) else {
                eprintln!("Failed to parse time specification '{t}': Invalid argument");
                return Ok(1);
            };
            let mut st = load(host);
            let real = certfleet_common::model::now();
            st["offset_secs"] = json!(to - real);
            if let Some(h) = st["history"].as_array_mut() {
                h.push(json!({"at": real, "set_to": to}));
            }
            std::fs::write(host.state(STATE), serde_json::to_vec_pretty(&st)?)
                .context("writing the simulated clock")?;
            Ok(0)
        }
        [] | ["status"] => {
            let now = host_now(host);
            println!(
                "               Local time: {}",
                certfleet_common::model::format_time(now)
            );
            println!(
                "System clock synchronized: {}",
                if ntp && offset(host) == 0 {
                    "yes"
                } else {
                    "no"
                }
            );
            println!(
                "              NTP service: {}",
                if ntp { "active" } else { "inactive" }
            );
            Ok(0)
        }
        _ => {
            eprintln!("timedatectl: simulated: only `status` and `set-time TIME` are supported");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_forms() {
        assert_eq!(parse("@1700000000"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14 22:13:20 UTC"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14 22:13:20"), None);
        assert_eq!(parse("yesterday"), None);
    }
}
