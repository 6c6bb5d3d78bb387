//! `esxi-hosts`: ESXi host certificates renewed by vCenter (VMCA), driven by the certfleet
//! agent on the VCSA through vCenter's SOAP API — no agent runs on ESXi.
//!
//! Targets: agents running the `esxi` collector whose inventory holds host certificates
//! (role `vsphere.esxi_host`) at a `vcenter` location (path = host name). The collector writes
//! the host's facts and the agent's verdict into that location's detail (`cluster=…`,
//! `esxi-hosts=refresh|emergency|skip: <reason>`, see the agent's `act/esxi.rs`), so what is
//! safe is decided in one place, and decided again by the step at run time.
//!
//! Per vCenter, per cluster (in name order): a canary wave with the first host alone, then waves
//! of `--param wave_size=N` hosts (default 4), each wave one `esxi.refresh_hosts` step:
//! refresh (`CertMgrRefreshCertificates_Task`, one task per host, side by side), wait for the
//! tasks, verify the new certificate on the host's endpoint and in `config.certificate`, then
//! `CertMgrRefreshCACertificatesAndCRLs_Task` where the root changed. An expired host takes the
//! emergency path inside its wave (disconnect, reconnect accepting the thumbprint it serves,
//! refresh). Every wave waits for the one before it (clusters one after the other: one agent
//! does the work, one step at a time) and carries the failed-host count on:
//! `--param max_failures=N` (default 0) failed hosts are tolerated; one more fails the wave and
//! the rest of the plan is skipped. A canary wave fails on its own host's failure whatever the
//! budget. Hosts left alone are listed, with their reasons, in the first wave of the vCenter
//! (the step re-reads them at run time and reports their state then).
//!
//! Parameters: `wave_size`, `max_failures`, `task_timeout` (seconds per vCenter task, default
//! 600), `verify_timeout` (seconds a host may take to serve its new certificate, default 120).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Recipe, RecipeInput, StepSpec};
use crate::plan::Target;

/// Role of an ESXi host certificate (agent `collect/esxi.rs`).
pub const ROLE: &str = "vsphere.esxi_host";

/// `esxi-hosts`.
pub struct EsxiHosts;

/// One host as the inventory shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EsxiHost {
    pub name: String,
    pub moref: String,
    pub cluster: String,
    /// `refresh`, `emergency` or `skip: <reason>`.
    pub verdict: String,
    /// Authority key id (else issuer) of its certificate.
    pub root: String,
    pub not_after: i64,
}

/// Reads the facts the collector put in a `vcenter` location's detail.
fn parse_detail(detail: &str) -> Option<(String, String, String)> {
    let moref = detail
        .strip_prefix("HostSystem ")?
        .split_whitespace()
        .next()?
        .to_owned();
    let (facts, verdict) = detail.split_once("; esxi-hosts=")?;
    let cluster = facts
        .split("; ")
        .find_map(|p| p.strip_prefix("cluster="))
        .unwrap_or("")
        .to_owned();
    Some((moref, cluster, verdict.to_owned()))
}

/// ESXi hosts in scope per agent, in (cluster, name) order.
pub(crate) fn hosts_of<'a>(input: &RecipeInput<'a>) -> Vec<(&'a Target, Vec<EsxiHost>)> {
    let mut out = Vec::new();
    for agent in &input.targets {
        let Some(certs) = input.inventory.get(&agent.id) else {
            continue;
        };
        let mut hosts: BTreeMap<(String, String), EsxiHost> = BTreeMap::new();
        for c in certs.iter().filter(|c| c.role == ROLE) {
            if !input.roles.is_empty() && !input.roles.iter().any(|r| c.role.starts_with(r)) {
                continue;
            }
            let expired = c.not_after < certfleet_common::model::now();
            if !input.due(c.not_after) && !expired {
                continue;
            }
            for l in c.locations.iter().filter(|l| l.kind == "vcenter") {
                let Some((moref, cluster, verdict)) = parse_detail(&l.detail) else {
                    continue;
                };
                hosts.insert(
                    (cluster.clone(), l.path.clone()),
                    EsxiHost {
                        name: l.path.clone(),
                        moref,
                        cluster,
                        verdict,
                        root: if c.authority_key_id.is_empty() {
                            c.issuer.clone()
                        } else {
                            c.authority_key_id.clone()
                        },
                        not_after: c.not_after,
                    },
                );
            }
        }
        if !hosts.is_empty() {
            out.push((*agent, hosts.into_values().collect()));
        }
    }
    out
}

impl Recipe for EsxiHosts {
    fn name(&self) -> &'static str {
        "esxi-hosts"
    }

    fn about(&self) -> &'static str {
        "ESXi hosts via vCenter: per cluster, canary then waves of CertMgrRefreshCertificates_Task, verified on each host's endpoint"
    }

    fn build(&self, input: &RecipeInput<'_>) -> Result<Vec<StepSpec>, String> {
        let wave_size: usize = input.param("wave_size", 4)?;
        if wave_size == 0 {
            return Err("--param wave_size must be at least 1".into());
        }
        let max_failures: u64 = input.param("max_failures", 0)?;
        let task_timeout: u64 = input.param("task_timeout", 600)?;
        let verify_timeout: u64 = input.param("verify_timeout", 120)?;
        let mut steps: Vec<StepSpec> = Vec::new();
        let mut skipped_all: Vec<String> = Vec::new();
        for (agent, hosts) in hosts_of(input) {
            let skipped: Vec<&EsxiHost> = hosts
                .iter()
                .filter(|h| h.verdict.starts_with("skip"))
                .collect();
            skipped_all.extend(skipped.iter().map(|h| {
                format!(
                    "{}: {}",
                    h.name,
                    h.verdict
                        .trim_start_matches("skip: ")
                        .trim_start_matches("skip")
                )
            }));
            let mut clusters: BTreeMap<&str, Vec<&EsxiHost>> = BTreeMap::new();
            for h in hosts.iter().filter(|h| !h.verdict.starts_with("skip")) {
                clusters.entry(h.cluster.as_str()).or_default().push(h);
            }
            let first_of_agent = steps.len();
            let mut prev: Option<String> = None;
            for (cluster, members) in clusters {
                let label = if cluster.is_empty() {
                    "(standalone)"
                } else {
                    cluster
                };
                // A normal host goes first (the canary proves the refresh on this cluster);
                // expired ones follow.
                let mut members = members;
                members.sort_by_key(|h| (h.verdict == "emergency", h.name.clone()));
                let mut waves: Vec<Vec<&EsxiHost>> = vec![vec![members[0]]];
                waves.extend(members[1..].chunks(wave_size).map(|c| c.to_vec()));
                for (n, wave) in waves.iter().enumerate() {
                    let canary = n == 0;
                    let key = format!(
                        "{}-{label}-{}",
                        agent.name,
                        if canary {
                            "canary".to_owned()
                        } else {
                            format!("wave{n}")
                        }
                    );
                    let names: Vec<&str> = wave.iter().map(|h| h.name.as_str()).collect();
                    let mut commands = Vec::new();
                    for h in wave {
                        if h.verdict == "emergency" {
                            commands.push(format!(
                                "DisconnectHost_Task {m}; ReconnectHost_Task {m} cnxSpec.sslThumbprint=<SHA-1 of the certificate {n} serves>  (certificate expired)",
                                m = h.moref,
                                n = h.name
                            ));
                        }
                        commands.push(format!(
                            "CertMgrRefreshCertificates_Task host={} ({}); poll info.state",
                            h.moref, h.name
                        ));
                    }
                    commands.push(format!(
                        "verify on each host's endpoint (esxi.endpoint.<host>, port 443) and in config.certificate: a new certificate, the same in both, valid now (up to {verify_timeout}s)"
                    ));
                    commands.push(
                        "CertMgrRefreshCACertificatesAndCRLs_Task for hosts whose new certificate comes from another root"
                            .into(),
                    );
                    let mut args = json!({
                        "cluster": label,
                        "canary": canary,
                        "hosts": wave.iter().map(|h| json!({
                            "name": h.name, "moref": h.moref, "old_root": h.root,
                        })).collect::<Vec<_>>(),
                        "max_failures": max_failures,
                        "task_timeout_secs": task_timeout,
                        "verify_timeout_secs": verify_timeout,
                    });
                    if let Some(p) = &prev {
                        args["failures"] = json!({"$ref": format!("{p}.failures")});
                    }
                    steps.push(StepSpec {
                        key: key.clone(),
                        name: format!(
                            "{label} {}: refresh {}",
                            if canary {
                                "canary".to_owned()
                            } else {
                                format!("wave {n}")
                            },
                            names.join(", ")
                        ),
                        stage: if canary {
                            "canary".into()
                        } else {
                            "wave".into()
                        },
                        target: format!(
                            "{}:esxi {label} {}",
                            agent.name,
                            if canary {
                                "canary".to_owned()
                            } else {
                                format!("wave {n}")
                            }
                        ),
                        agent: agent.id.clone(),
                        agent_name: agent.name.clone(),
                        action: "esxi.refresh_hosts".into(),
                        args,
                        depends_on: prev.iter().cloned().collect(),
                        commands,
                        files: vec![],
                        timeout_secs: u32::try_from(
                            wave.len() as u64 * 2 * task_timeout + verify_timeout + 120,
                        )
                        .unwrap_or(u32::MAX),
                    });
                    prev = Some(key);
                }
            }
            // Hosts left alone: listed (and re-read at run time) by this vCenter's first wave.
            if let Some(first) = steps.get_mut(first_of_agent) {
                first.args["skip"] = Value::Array(
                    skipped
                        .iter()
                        .map(|h| json!({"name": h.name, "moref": h.moref, "reason": h.verdict.trim_start_matches("skip: ")}))
                        .collect(),
                );
                for h in &skipped {
                    first.commands.push(format!(
                        "leave {} alone: {}",
                        h.name,
                        h.verdict.trim_start_matches("skip: ")
                    ));
                }
            }
        }
        if steps.is_empty() {
            return Err(super::nothing_in_scope(
                "no ESXi host certificate in scope can be refreshed",
                &skipped_all,
            ));
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_common::model::CertRecord;

    fn agent(id: &str) -> Target {
        serde_json::from_value(json!({"id": id, "name": id, "platforms": ["esxi"]})).unwrap()
    }

    fn cert(host: &str, cluster: &str, verdict: &str, days: i64) -> CertRecord {
        let now = certfleet_common::model::now();
        let t = |s: i64| certfleet_common::model::format_time(s);
        serde_json::from_value(json!({
            "fingerprint_sha256": format!("fp-{host}"), "subject": format!("CN={host}"),
            "issuer": "CN=CA", "serial": "1", "sans": [],
            "not_before": t(now - 86_400), "not_after": t(now + days * 86_400),
            "key_algorithm": "EC", "key_bits": 256, "is_ca": false,
            "subject_key_id": "", "authority_key_id": "aa:bb", "role": ROLE,
            "locations": [
                {"kind": "vcenter", "path": host, "detail": format!(
                    "HostSystem host-{host} config.certificate; cluster={cluster}; connection=connected; maintenance=false; ha=; vsan=false; mode=vmca; esxi-hosts={verdict}")},
                {"kind": "endpoint", "path": "127.0.0.1:1", "detail": format!("ESXi host {host}")},
            ],
        }))
        .unwrap()
    }

    fn input<'a>(
        agents: Vec<&'a Target>,
        certs: Vec<CertRecord>,
        params: &[(&str, &str)],
    ) -> RecipeInput<'a> {
        let mut inventory = BTreeMap::new();
        inventory.insert("vc".to_owned(), certs);
        let mut input = RecipeInput::for_test(agents, inventory);
        input.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        input
    }

    #[test]
    fn waves_per_cluster_with_canary_budget_chain_and_skips() {
        let vc = agent("vc");
        let certs = vec![
            cert("a1", "A", "refresh", 10),
            cert("a2", "A", "refresh", 10),
            cert("a3", "A", "emergency", -2),
            cert("a4", "A", "refresh", 20),
            cert("a5", "A", "skip: in maintenance mode", 10),
            cert("a6", "A", "refresh", 900), // not due
            cert("b1", "B", "refresh", 10),
            cert("b2", "B", "skip: disconnected (reconnect it first)", 10),
        ];
        let inp = input(
            vec![&vc],
            certs,
            &[("wave_size", "2"), ("max_failures", "1")],
        );
        let steps = EsxiHosts.build(&inp).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "A canary: refresh a1",
                "A wave 1: refresh a2, a4",
                "A wave 2: refresh a3",
                "B canary: refresh b1"
            ]
        );
        assert!(steps.iter().all(|s| s.action == "esxi.refresh_hosts"));
        assert_eq!(steps[0].args["canary"], true);
        assert_eq!(steps[1].args["canary"], false);
        assert!(steps[0].depends_on.is_empty() && steps[0].args.get("failures").is_none());
        for w in steps.windows(2) {
            assert_eq!(w[1].depends_on, vec![w[0].key.clone()]);
            assert_eq!(
                w[1].args["failures"]["$ref"],
                format!("{}.failures", w[0].key)
            );
        }
        assert_eq!(steps[3].args["max_failures"], 1);
        assert!(steps[2].commands[0].starts_with("DisconnectHost_Task host-a3"));
        let skip = steps[0].args["skip"].as_array().unwrap();
        assert_eq!(skip.len(), 2);
        assert_eq!(skip[0]["reason"], "in maintenance mode");
        assert!(
            steps[0]
                .commands
                .iter()
                .any(|c| c == "leave b2 alone: disconnected (reconnect it first)")
        );
        // Targets are distinct per wave (the engine's failure budget counts targets).
        let targets: std::collections::BTreeSet<&str> =
            steps.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(targets.len(), 4);
    }

    #[test]
    fn nothing_refreshable_names_every_reason() {
        let vc = agent("vc");
        let certs = vec![cert(
            "a1",
            "A",
            "skip: vCenter is in custom mode (vpxd.certmgmt.mode=custom): external CA",
            10,
        )];
        let err = EsxiHosts.build(&input(vec![&vc], certs, &[])).unwrap_err();
        assert!(err.contains("a1: vCenter is in custom mode"), "{err}");
        let err = EsxiHosts
            .build(&input(vec![&vc], vec![], &[("wave_size", "0")]))
            .unwrap_err();
        assert!(err.contains("wave_size"), "{err}");
    }
}
