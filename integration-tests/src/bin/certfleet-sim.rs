//! `certfleet-sim`: the simulated platform tools (`vecs-cli`, `gkectl`, `systemctl`, …) and the
//! builder of simulated hosts.
//!
//! Tools are called through wrappers installed at their real paths inside a simulated root:
//! `certfleet-sim --root ROOT TOOL ARGS...`. Hosts are built with
//! `certfleet-sim build PLATFORM --root ROOT [OPTIONS]`.

use std::process::ExitCode;

use certfleet_integration_tests::sim::{self, SimHost};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("certfleet-sim: {e:#}");
            ExitCode::from(70)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<i32> {
    if let [cmd, flag, dir] = args
        && cmd == "demo-fleet"
        && flag == "--dir"
    {
        for line in sim::demo::build(std::path::Path::new(dir), &sim::default_sim_bin())? {
            println!("{line}");
        }
        return Ok(0);
    }
    if let [build, platform, rest @ ..] = args
        && build == "build"
    {
        return match platform.as_str() {
            "vcsa" => sim::vcsa::cli_build(rest),
            other => anyhow::bail!("unknown platform {other:?} to build"),
        };
    }
    let (root, rest) = match args {
        [flag, root, rest @ ..] if flag == "--root" => (root, rest),
        _ => anyhow::bail!("usage: certfleet-sim --root ROOT TOOL [ARGS...]"),
    };
    let host = SimHost::new(root, sim::default_sim_bin())?;
    let (tool, targs) = rest
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no tool given"))?;
    let targs: Vec<String> = targs.to_vec();
    match tool.as_str() {
        "vecs-cli" | "vmafd-cli" | "vdcrepadmin" | "vmon-cli" | "lwregshell"
        | "service-control" | "certool" | "dir-cli" | "vcsa-https" | "vcsa-services"
        | "vcsa-login" | "lstool.py" => sim::vcsa::run_tool(&host, tool, &targs),
        "engine-config" | "hosted-engine" | "engine-setup" | "vdsm-tool" => {
            sim::ovirt::run_tool(&host, tool, &targs)
        }
        "ovirt-engine-api" => sim::ovirt::api::run(&host, &targs),
        "build" if targs.first().is_some_and(|p| p.starts_with("ovirt-")) => {
            sim::ovirt::build_cli(&host, &targs)
        }
        "gkectl" | "kubectl" | "kubeadm" | "crictl" => sim::gke::run_tool(&host, tool, &targs),
        "systemctl" => sim::systemd::run(&host, &targs),
        "timedatectl" => sim::clock::timedatectl(&host, &targs),
        other => anyhow::bail!("unknown simulated tool {other:?}"),
    }
}
