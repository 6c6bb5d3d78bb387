//! Simulated oVirt: the engine PKI (`engine`), the VDSM hosts it enrolls (`node`), the
//! verbatim OpenSSL configuration they are made with (`conf`), and the engine-side tools.
//!
//! Layouts follow `shared/reference/ovirt_gke.md` A1–A4 (engine) and A8–A9 (hosts); every
//! certificate is signed by the real `openssl ca`.

pub mod api;
pub mod conf;
pub mod engine;
pub mod node;
pub mod setup;

use anyhow::{Context, Result};

pub use engine::{Ca, Engine, EngineSpec, OvirtVersion, build_engine};
pub use node::{Node, NodeSpec, build_node};

/// Runs simulated tool `tool` of this platform; returns the exit code.
///
/// `hosted-engine` and `engine-setup` are in [`setup`]. `engine-config -g KEY` answers from
/// the values engine-setup of the built version would have put in the database, in the real
/// tool's `KEY: VALUE version: general` format.
pub fn run_tool(host: &super::SimHost, tool: &str, args: &[String]) -> Result<i32> {
    match (tool, args) {
        ("hosted-engine", _) => setup::hosted_engine(host, args),
        ("engine-setup", _) => setup::engine_setup(host, args),
        ("engine-config", [flag, key]) if flag == "-g" => {
            let text = std::fs::read_to_string(host.state("ovirt-engine.json"))
                .context("no simulated engine on this host")?;
            let state: serde_json::Value = serde_json::from_str(&text)?;
            match state["config"][key.as_str()].as_str() {
                Some(v) => {
                    println!("{key}: {v} version: general");
                    Ok(0)
                }
                None => {
                    eprintln!(
                        "Error fetching {key} value: no such entry. Please verify key name and property file support."
                    );
                    Ok(1)
                }
            }
        }
        _ => anyhow::bail!("simulated ovirt tool {tool:?} does not support {args:?}"),
    }
}

/// `certfleet-sim --root ROOT build ovirt-engine --version 4.4|4.5 --fqdn FQDN` and
/// `certfleet-sim --root ROOT build ovirt-node --engine-root EROOT --fqdn FQDN [--vdsm-days N]`
/// (negative days: already expired).
pub fn build_cli(host: &super::SimHost, args: &[String]) -> Result<i32> {
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("ovirt-engine") => {
            let version = match opt("--version").as_deref() {
                Some("4.4") => OvirtVersion::V4_4,
                Some("4.5") | None => OvirtVersion::V4_5,
                Some(other) => anyhow::bail!("unknown oVirt version {other:?} (4.4 or 4.5)"),
            };
            let fqdn = opt("--fqdn").unwrap_or_else(|| "engine.example.test".into());
            let e = build_engine(host, &EngineSpec::new(version, &fqdn))?;
            println!(
                "engine {} ({}) at {}",
                fqdn,
                version.label(),
                e.pki.display()
            );
            Ok(0)
        }
        Some("ovirt-node") => {
            let eroot = opt("--engine-root").context("--engine-root is required")?;
            let engine = Engine::load(&super::SimHost::new(eroot, host.sim_bin.clone())?)?;
            let mut spec =
                NodeSpec::new(&opt("--fqdn").unwrap_or_else(|| "host1.example.test".into()));
            if let Some(d) = opt("--vdsm-days") {
                let days: i64 = d.parse().context("--vdsm-days")?;
                spec.vdsm = Some(super::Lifetime::days(400, days));
            }
            build_node(host, &spec, &engine)?;
            println!("node {} at {}", spec.fqdn, host.root.display());
            Ok(0)
        }
        _ => anyhow::bail!("usage: build ovirt-engine|ovirt-node [OPTIONS]"),
    }
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
